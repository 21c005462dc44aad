//! Start-up, background tasks and graceful shutdown.

use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use flowcore_store::runtime::{Delivery, MoveToLatest, RateLimit, RunningRuntime, Runtime, RuntimeOptions};
use flowcore_store::Store;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{error, info, warn};

use super::config::{Config, ConfigError, FlowConfig};
use super::delivery::{self, LogDelivery};
use super::effects::{Effects, HostEffects, NoHostEffects};
use super::env::{self, EnvSettings, OutboundMode, DEFAULT_GRAPH_API_BASE, DEMO_APP_SECRET, DEMO_VERIFY_TOKEN};
use super::flows::compile_sources;
use super::http;
use super::state::{AppState, Shared, Tenants, WebhookSecurity};

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
    runtime: RunningRuntime,
    grace: Duration,
}

impl RunningServer {
    /// Graceful shutdown: stop accepting requests and claiming work, let in-flight
    /// requests and turns finish (up to `FLOWCORE_SHUTDOWN_GRACE_SECS`), then close the
    /// store. Unclaimed inbox events stay for the next start.
    pub async fn shutdown(self) {
        info!("shutting down: no new work is claimed; in-flight turns finish");
        let _ = self.shutdown.send(true);
        self.runtime.signal_shutdown();
        let abort = self.http.abort_handle();
        if tokio::time::timeout(self.grace, self.http).await.is_err() {
            warn!("the HTTP server did not finish within the shutdown grace period; aborted");
            abort.abort();
        }
        self.runtime.shutdown().await;
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
    let compiled = compile_sources(&config.flow_sources).map_err(StartError::Flows)?;
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
    let tenants = Tenants::new(&config);
    let delivery: Arc<dyn Delivery> = match outbound {
        OutboundMode::Log => Arc::new(LogDelivery),
        OutboundMode::Graph => Arc::new(delivery::graph(&tenants, &settings, &graph_api_base)),
    };
    let effects = Effects::new(
        settings.flow_execution_timeout,
        settings.ai.clone(),
        host_effects.unwrap_or_else(|| Arc::new(NoHostEffects)),
    );
    let mut options = runtime_options(&settings);
    options.move_to_latest = sessions_moving(&config.file.flows);
    let mut builder =
        Runtime::builder(store.clone(), delivery, tenants.router.clone()).effects(Arc::new(effects)).options(options);
    for org in &config.file.organizations {
        builder = builder.organization(org.id.clone());
    }
    let runtime = builder.build().await.map_err(store_err)?;
    for (source, flow) in compiled {
        let version =
            runtime.flows().install(&source.organization, &source.id, &source.text, flow).await.map_err(store_err)?;
        info!(org = %source.organization, flow = %source.id, version, "flow ready");
    }

    let state = AppState(Arc::new(Shared {
        store,
        runtime: runtime.clone(),
        tenants,
        webhook: WebhookSecurity {
            verify_token,
            app_secrets,
            insecure_skip_signature: settings.insecure_skip_signature,
            max_body_bytes: settings.max_body_bytes,
        },
        settings: settings.clone(),
        webhooks: AtomicU64::new(0),
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
    let running = runtime.start().map_err(|e| StartError::Store {
        url: env::redact_url(&settings.database_url),
        source: flowcore_store::StoreError::InvalidInput(e.to_string()),
    })?;
    info!(
        %addr,
        store = state.store.backend(),
        database = %env::redact_url(&settings.database_url),
        organizations = config.file.organizations.len(),
        numbers = config.file.numbers.len(),
        config = %settings.config_path.display(),
        "flowcore-server listening"
    );
    Ok(RunningServer { addr, state, shutdown: shutdown_tx, http, runtime: running, grace: settings.shutdown_grace })
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

/// The runtime's options from the environment.
fn runtime_options(settings: &EnvSettings) -> RuntimeOptions {
    let mut options = RuntimeOptions::default();
    options.workers = settings.workers;
    options.poll_interval = settings.poll_interval;
    options.lease = settings.lease;
    options.purge_interval = settings.purge_interval;
    options.max_flow_iterations = settings.max_flow_iterations;
    options.session_ttl = settings.session_ttl;
    options.send_max_attempts = settings.send_max_attempts;
    options.send_backoff = settings.send_backoff;
    options.rate_limit = RateLimit::new(settings.rate_limit_per_minute, Duration::from_secs(60));
    options.shutdown_grace = settings.shutdown_grace;
    options
}

/// The config's flows whose running sessions move to their newest version.
fn sessions_moving(flows: &[FlowConfig]) -> MoveToLatest {
    MoveToLatest::flows(flows.iter().filter(|f| f.move_sessions_to_latest).map(|f| (&f.organization, &f.id)))
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
