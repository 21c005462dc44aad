//! Start-up, background tasks and graceful shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use flowcore_store::{PurgePolicy, Store};
use tokio::net::TcpListener;
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;
use tracing::{error, info, warn};

use super::config::{Config, ConfigError};
use super::effects::{Effects, HostEffects, NoHostEffects};
use super::env::{self, EnvSettings, OutboundMode, DEFAULT_GRAPH_API_BASE, DEMO_APP_SECRET, DEMO_VERIFY_TOKEN};
use super::flows::FlowRegistry;
use super::http;
use super::ratelimit::RateLimit;
use super::state::{AppState, Shared, Stats, Tenants, WebhookSecurity};
use super::{sender, util, worker};

/// Why the server did not start. Each reads as a message for the operator.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// A bad environment variable.
    #[error(transparent)]
    Env(#[from] env::EnvError),
    /// The config file.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Flows that do not compile.
    #[error("{} flow problem(s):\n  - {}", .0.len(), .0.join("\n  - "))]
    Flows(Vec<String>),
    /// No app secret and no explicit opt-out.
    #[error(
        "META_APP_SECRET is not set: webhook signatures cannot be checked. Set it to your Meta app secret \
         (comma-separated for rotation), or set FLOWCORE_INSECURE_SKIP_SIGNATURE=1 for local experiments only"
    )]
    NoAppSecret,
    /// The store.
    #[error("cannot open the store at {url}: {source}")]
    Store {
        /// The URL (password redacted).
        url: String,
        /// Why.
        source: flowcore_store::StoreError,
    },
    /// The listen address.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// A started server.
pub struct RunningServer {
    /// The bound address (useful with port 0).
    pub addr: SocketAddr,
    /// The shared state (tests inspect the store through it).
    pub state: AppState,
    shutdown: watch::Sender<bool>,
    http: JoinHandle<()>,
    background: Vec<JoinHandle<()>>,
    grace: Duration,
}

impl RunningServer {
    /// Graceful shutdown: stop accepting requests and claiming work, let in-flight
    /// requests and turns finish (up to `FLOWCORE_SHUTDOWN_GRACE_SECS`), then close the
    /// store. Unclaimed inbox events stay for the next start.
    pub async fn shutdown(self) {
        info!("shutting down: no new work is claimed; in-flight turns finish");
        let _ = self.shutdown.send(true);
        let deadline = tokio::time::Instant::now() + self.grace;
        let mut handles = self.background;
        handles.push(self.http);
        for handle in handles {
            let abort = handle.abort_handle();
            if tokio::time::timeout_at(deadline, handle).await.is_err() {
                warn!("a task did not finish within the shutdown grace period; aborted");
                abort.abort();
            }
        }
        self.state.store.close().await;
        info!("stopped");
    }

    /// Whether the HTTP server task has ended (it only does on shutdown or a fatal error).
    pub fn is_finished(&self) -> bool {
        self.http.is_finished()
    }
}

/// Loads everything, opens the store, binds `settings.addr` and starts serving.
pub async fn start(
    settings: EnvSettings,
    host_effects: Option<Arc<dyn HostEffects>>,
) -> Result<RunningServer, StartError> {
    let config = Config::load(&settings.config_path)?;
    let compiled = FlowRegistry::compile_sources(&config.flow_sources).map_err(StartError::Flows)?;
    let demo = config.file.demo;

    let verify_token = match (&settings.verify_token, demo) {
        (Some(t), _) => t.clone(),
        (None, true) => {
            warn!("WEBHOOK_VERIFY_TOKEN is not set: using the demo config's token {DEMO_VERIFY_TOKEN:?}");
            DEMO_VERIFY_TOKEN.to_owned()
        }
        (None, false) => {
            warn!("WEBHOOK_VERIFY_TOKEN is not set: webhook verification requests will be refused (403)");
            String::new()
        }
    };
    let app_secrets = if !settings.app_secrets.is_empty() {
        settings.app_secrets.clone()
    } else if settings.insecure_skip_signature {
        Vec::new()
    } else if demo {
        warn!(
            "META_APP_SECRET is not set: the demo config accepts webhooks signed with the PUBLISHED sample secret \
             {DEMO_APP_SECRET:?}. Never expose this server to the internet like this."
        );
        vec![DEMO_APP_SECRET.to_owned()]
    } else {
        return Err(StartError::NoAppSecret);
    };
    if settings.insecure_skip_signature {
        warn!(
            "FLOWCORE_INSECURE_SKIP_SIGNATURE=1: webhook signatures are NOT checked; anyone can post messages as Meta"
        );
    }
    let outbound = match settings.outbound {
        Some(mode) => mode,
        None if demo && settings.access_token.is_none() && settings.graph_api_base.is_none() => OutboundMode::Log,
        None => OutboundMode::Graph,
    };
    if outbound == OutboundMode::Log {
        warn!("replies are written to this log, NOT sent to WhatsApp (log-only transport; set META_ACCESS_TOKEN or FLOWCORE_OUTBOUND=graph to send)");
    }
    let graph_api_base = settings.graph_api_base.clone().unwrap_or_else(|| DEFAULT_GRAPH_API_BASE.to_owned());

    let store = open_store(&settings.database_url, settings.sqlite_synchronous_full).await?;
    let store_err = |source| StartError::Store { url: env::redact_url(&settings.database_url), source };
    for org in &config.file.organizations {
        store.register_organization(&org.id).await.map_err(store_err)?;
    }
    let flows = FlowRegistry::default();
    for (source, flow) in compiled {
        let version = flows.install(store.as_ref(), &source, flow).await.map_err(store_err)?;
        info!(org = %source.organization, flow = %source.id, version, "flow ready");
    }

    let (claimed_replies, handed_over) = tokio::sync::mpsc::unbounded_channel();
    let state = AppState(Arc::new(Shared {
        store,
        tenants: Tenants::new(&config),
        flows,
        webhook: WebhookSecurity {
            verify_token,
            app_secrets,
            insecure_skip_signature: settings.insecure_skip_signature,
            max_body_bytes: settings.max_body_bytes,
        },
        effects: Effects::new(
            settings.flow_execution_timeout,
            settings.ai.clone(),
            host_effects.unwrap_or_else(|| Arc::new(NoHostEffects)),
        ),
        rate_limit: RateLimit::new(settings.rate_limit_per_minute, Duration::from_secs(60)),
        outbound,
        graph_api_base,
        settings: settings.clone(),
        inbox_ready: Notify::new(),
        outbox_ready: Notify::new(),
        claimed_replies,
        stats: Stats::default(),
    }));

    let listener =
        TcpListener::bind(settings.addr).await.map_err(|source| StartError::Bind { addr: settings.addr, source })?;
    let addr = listener.local_addr().map_err(|source| StartError::Bind { addr: settings.addr, source })?;
    let (shutdown_tx, shutdown_rx) = watch::channel(false);

    let app = http::app(state.clone());
    let mut http_shutdown = shutdown_rx.clone();
    let http = tokio::spawn(async move {
        let serve = axum::serve(listener, app).with_graceful_shutdown(async move {
            let _ = http_shutdown.wait_for(|stop| *stop).await;
        });
        if let Err(e) = serve.await {
            error!(error = %e, "HTTP server failed");
        }
    });
    let background = vec![
        tokio::spawn(worker::run(state.clone(), shutdown_rx.clone())),
        tokio::spawn(sender::run(state.clone(), handed_over, shutdown_rx.clone())),
        tokio::spawn(janitor(state.clone(), shutdown_rx.clone())),
    ];
    info!(
        %addr,
        store = state.store.backend(),
        database = %env::redact_url(&settings.database_url),
        organizations = config.file.organizations.len(),
        numbers = config.file.numbers.len(),
        config = %settings.config_path.display(),
        "flowcore-server listening"
    );
    Ok(RunningServer { addr, state, shutdown: shutdown_tx, http, background, grace: settings.shutdown_grace })
}

/// Opens the store at `url` (`sqlite://PATH`, created if missing, or `postgres://…`). A
/// SQLite store flushes every commit to disk unless `sqlite_synchronous_full` is false.
pub async fn open_store(url: &str, sqlite_synchronous_full: bool) -> Result<Arc<dyn Store>, StartError> {
    let opened = if url.to_ascii_lowercase().starts_with("sqlite:") {
        let mut options = flowcore_store::SqliteOptions::default();
        options.synchronous_full = sqlite_synchronous_full;
        flowcore_store::SqliteStore::open(url, options).await.map(|store| Arc::new(store) as Arc<dyn Store>)
    } else {
        flowcore_store::open(url).await
    };
    opened.map_err(|source| StartError::Store { url: env::redact_url(url), source })
}

/// Periodic housekeeping: purge expired sessions and old rows, return rows whose lease
/// ended (a crashed instance's claims) to pending, forget idle rate-limit windows.
async fn janitor(state: AppState, mut shutdown: watch::Receiver<bool>) {
    let policy = PurgePolicy { session_ttl: state.settings.session_ttl, ..PurgePolicy::default() };
    let reclaim_every = state.settings.lease.min(Duration::from_secs(5)).max(Duration::from_millis(100));
    let mut last_purge: Option<Instant> = None;
    loop {
        let now = util::now();
        if let Err(e) = state.store.reclaim_inbox(None, now).await {
            warn!(error = %e, "reclaiming inbox leases failed");
        }
        if let Err(e) = state.store.reclaim_outbox(None, now).await {
            warn!(error = %e, "reclaiming outbox leases failed");
        }
        if last_purge.is_none_or(|t| t.elapsed() >= state.settings.purge_interval) {
            last_purge = Some(Instant::now());
            for org in &state.tenants.organizations {
                match state.store.purge(org, now, policy).await {
                    Ok(report) if report.expired_sessions > 0 => {
                        info!(org = %org, expired = report.expired_sessions, "expired sessions purged")
                    }
                    Ok(_) => {}
                    Err(e) => warn!(org = %org, error = %e, "purge failed"),
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(reclaim_every) => {}
            _ = shutdown.wait_for(|stop| *stop) => break,
        }
    }
}

/// Waits for SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}
