//! Server settings from the environment (the names of DESIGN.md's contract, plus a few
//! `FLOWCORE_*` knobs for operations and tests).
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `FLOWCORE_ADDR` | `127.0.0.1:8080` | listen address |
//! | `FLOWCORE_CONFIG` | `examples/config/demo.toml` | tenant config (TOML) |
//! | `DATABASE_URL` | `sqlite://flowcore.db` | `sqlite://PATH` (created if missing) or `postgres://…` |
//! | `FLOWCORE_SQLITE_SYNCHRONOUS` | `full` | `full`: a webhook is acknowledged once its write is flushed to disk (survives power loss); `normal`: once it is in SQLite's WAL (survives a crash of the server, not of the machine) |
//! | `WEBHOOK_VERIFY_TOKEN` | demo config only: `flowcore-demo-verify-token` | webhook verification token |
//! | `META_APP_SECRET` | demo config only: `flowcore-test-app-secret` | `X-Hub-Signature-256` secret; comma-separated for rotation |
//! | `FLOWCORE_INSECURE_SKIP_SIGNATURE` | unset | `1` accepts unsigned webhooks (loud warnings) |
//! | `META_ACCESS_TOKEN` | none | Graph API token for numbers without their own |
//! | `META_GRAPH_API_BASE` | `https://graph.facebook.com/v21.0` | Graph API base (version included) |
//! | `FLOWCORE_OUTBOUND` | `graph`; `log` for the demo config when Meta is not configured | `log` writes replies to the log instead of sending them |
//! | `MAX_FLOW_ITERATIONS` | 100 | engine step budget per turn |
//! | `CONVERSATION_SESSION_TTL_HOURS` | 24 | idle sessions expire after this |
//! | `FLOW_EXECUTION_TIMEOUT_MS` | 10000 | timeout of `api_call` (and `ai_prompt`) effects |
//! | `FLOWCORE_MAX_BODY_BYTES` | 3145728 (3 MiB) | webhook bodies above are refused with 413 |
//! | `FLOWCORE_RATE_LIMIT_PER_MINUTE` | 5 | inbound messages per contact per minute run through a flow; 0 = unlimited |
//! | `FLOWCORE_WORKERS` | 32 | concurrent inbox workers (turns in flight); with 4 the load bench ran at under half the rate of 32 |
//! | `FLOWCORE_POLL_INTERVAL_MS` | 200 | idle poll interval of workers and sender |
//! | `FLOWCORE_LEASE_MS` | 30000 | how long a claimed inbox/outbox row stays invisible to others |
//! | `FLOWCORE_PURGE_INTERVAL_SECS` | 300 | period of the expired-session purge |
//! | `FLOWCORE_SEND_MAX_ATTEMPTS` | 8 | outbox attempts before a message is marked failed |
//! | `FLOWCORE_SEND_BACKOFF_MS` | 1000 | base of the outbox's exponential backoff |
//! | `FLOWCORE_SHUTDOWN_GRACE_SECS` | 20 | how long shutdown waits for in-flight turns |
//! | `OPENAI_BASE_URL`, `OPENAI_API_KEY`, `OPENAI_MODEL` | unset | enable the `ai_prompt` handler (chat completions) |
//! | `RUST_LOG` | `info` | log filter; `FLOWCORE_LOG_FORMAT=json` for JSON lines; colours only on a terminal without `NO_COLOR` |

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// The app secret published with the sample webhooks; accepted only for the demo config.
pub const DEMO_APP_SECRET: &str = "flowcore-test-app-secret";
/// The verify token of the demo config.
pub const DEMO_VERIFY_TOKEN: &str = "flowcore-demo-verify-token";
/// Meta's Graph API host with the version the server was written against.
pub const DEFAULT_GRAPH_API_BASE: &str = "https://graph.facebook.com/v21.0";
/// The bundled demo config, relative to the repository root.
pub const DEMO_CONFIG_PATH: &str = "examples/config/demo.toml";

/// Inbox workers by default. Turns wait on the store (and on effects), so one core keeps many
/// in flight; in the load bench both fewer and more workers than 32 were slower.
pub const DEFAULT_WORKERS: usize = 32;

/// How replies leave the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutboundMode {
    /// Through Meta's Graph API.
    Graph,
    /// Written to the log and recorded as sent (demo: nothing leaves the machine).
    Log,
}

/// Settings read from the environment, before the config file is consulted.
#[derive(Clone)]
pub struct EnvSettings {
    /// Listen address.
    pub addr: SocketAddr,
    /// Config path.
    pub config_path: PathBuf,
    /// Whether `FLOWCORE_CONFIG` was unset (so the bundled demo is used).
    pub config_is_default: bool,
    /// Store URL.
    pub database_url: String,
    /// `FLOWCORE_SQLITE_SYNCHRONOUS=full` (true, the default) or `normal`.
    pub sqlite_synchronous_full: bool,
    /// `WEBHOOK_VERIFY_TOKEN`, if set.
    pub verify_token: Option<String>,
    /// `META_APP_SECRET`, split on commas, if set.
    pub app_secrets: Vec<String>,
    /// `FLOWCORE_INSECURE_SKIP_SIGNATURE=1`.
    pub insecure_skip_signature: bool,
    /// `META_ACCESS_TOKEN`.
    pub access_token: Option<String>,
    /// `META_GRAPH_API_BASE`, if set.
    pub graph_api_base: Option<String>,
    /// `FLOWCORE_OUTBOUND`, if set.
    pub outbound: Option<OutboundMode>,
    /// `MAX_FLOW_ITERATIONS`.
    pub max_flow_iterations: u32,
    /// `CONVERSATION_SESSION_TTL_HOURS`.
    pub session_ttl: Duration,
    /// `FLOW_EXECUTION_TIMEOUT_MS`.
    pub flow_execution_timeout: Duration,
    /// `FLOWCORE_MAX_BODY_BYTES`.
    pub max_body_bytes: usize,
    /// `FLOWCORE_RATE_LIMIT_PER_MINUTE` (0 = unlimited).
    pub rate_limit_per_minute: u32,
    /// `FLOWCORE_WORKERS`.
    pub workers: usize,
    /// `FLOWCORE_POLL_INTERVAL_MS`.
    pub poll_interval: Duration,
    /// `FLOWCORE_LEASE_MS`.
    pub lease: Duration,
    /// `FLOWCORE_PURGE_INTERVAL_SECS`.
    pub purge_interval: Duration,
    /// `FLOWCORE_SEND_MAX_ATTEMPTS`.
    pub send_max_attempts: u32,
    /// `FLOWCORE_SEND_BACKOFF_MS`.
    pub send_backoff: Duration,
    /// `FLOWCORE_SHUTDOWN_GRACE_SECS`.
    pub shutdown_grace: Duration,
    /// The `ai_prompt` handler's endpoint, when configured.
    pub ai: Option<AiSettings>,
}

/// An OpenAI-compatible chat-completions endpoint.
#[derive(Clone)]
pub struct AiSettings {
    /// Base URL, such as `https://api.openai.com/v1` (`/chat/completions` is appended).
    pub base_url: String,
    /// Bearer key (may be empty for local servers).
    pub api_key: String,
    /// Default model when the flow names none.
    pub model: String,
}

impl std::fmt::Debug for EnvSettings {
    // Secrets never reach the log, even at debug level.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EnvSettings")
            .field("addr", &self.addr)
            .field("config_path", &self.config_path)
            .field("database_url", &redact_url(&self.database_url))
            .field("app_secrets", &self.app_secrets.len())
            .field("insecure_skip_signature", &self.insecure_skip_signature)
            .field("graph_api_base", &self.graph_api_base)
            .field("outbound", &self.outbound)
            .field("workers", &self.workers)
            .finish_non_exhaustive()
    }
}

/// A bad environment variable.
#[derive(Debug, thiserror::Error)]
#[error("environment variable {name}={value:?} is invalid: {reason}")]
pub struct EnvError {
    /// The variable.
    pub name: &'static str,
    /// Its value.
    pub value: String,
    /// What was expected.
    pub reason: &'static str,
}

impl EnvSettings {
    /// Reads the process environment.
    pub fn from_env() -> Result<EnvSettings, EnvError> {
        EnvSettings::from_map(&std::env::vars().collect())
    }

    /// Reads settings from a map of variables (tests pass their own).
    pub fn from_map(vars: &HashMap<String, String>) -> Result<EnvSettings, EnvError> {
        let get = |name: &str| vars.get(name).map(|v| v.trim().to_owned()).filter(|v| !v.is_empty());
        let addr = parse(
            &get,
            "FLOWCORE_ADDR",
            "127.0.0.1:8080".parse().expect("literal address"),
            "a socket address such as 127.0.0.1:8080",
        )?;
        let (config_path, config_is_default) = match get("FLOWCORE_CONFIG") {
            Some(p) => (PathBuf::from(p), false),
            None => (default_config_path(), true),
        };
        let outbound = match get("FLOWCORE_OUTBOUND").as_deref() {
            None => None,
            Some("graph") => Some(OutboundMode::Graph),
            Some("log") => Some(OutboundMode::Log),
            Some(other) => {
                return Err(EnvError {
                    name: "FLOWCORE_OUTBOUND",
                    value: other.into(),
                    reason: "expected `graph` or `log`",
                })
            }
        };
        let insecure_skip_signature = match get("FLOWCORE_INSECURE_SKIP_SIGNATURE").as_deref() {
            None | Some("0") | Some("false") => false,
            Some("1") | Some("true") => true,
            Some(other) => {
                return Err(EnvError {
                    name: "FLOWCORE_INSECURE_SKIP_SIGNATURE",
                    value: other.into(),
                    reason: "expected 1 or 0",
                })
            }
        };
        let sqlite_synchronous_full = match get("FLOWCORE_SQLITE_SYNCHRONOUS") {
            None => true,
            Some(v) if v.eq_ignore_ascii_case("full") => true,
            Some(v) if v.eq_ignore_ascii_case("normal") => false,
            Some(value) => {
                return Err(EnvError {
                    name: "FLOWCORE_SQLITE_SYNCHRONOUS",
                    value,
                    reason: "expected `full` or `normal`",
                })
            }
        };
        let ai = match (get("OPENAI_BASE_URL"), get("OPENAI_MODEL")) {
            (Some(base_url), model) => Some(AiSettings {
                base_url: base_url.trim_end_matches('/').to_owned(),
                api_key: get("OPENAI_API_KEY").unwrap_or_default(),
                model: model.unwrap_or_else(|| "gpt-4o-mini".to_owned()),
            }),
            // A key alone means the public OpenAI endpoint.
            (None, model) => get("OPENAI_API_KEY").map(|api_key| AiSettings {
                base_url: "https://api.openai.com/v1".to_owned(),
                api_key,
                model: model.unwrap_or_else(|| "gpt-4o-mini".to_owned()),
            }),
        };
        let ttl_hours: u64 = parse(&get, "CONVERSATION_SESSION_TTL_HOURS", 24, "a whole number of hours")?;
        Ok(EnvSettings {
            addr,
            config_path,
            config_is_default,
            database_url: get("DATABASE_URL").unwrap_or_else(|| "sqlite://flowcore.db".to_owned()),
            sqlite_synchronous_full,
            verify_token: get("WEBHOOK_VERIFY_TOKEN"),
            app_secrets: get("META_APP_SECRET")
                .map(|s| s.split(',').map(|p| p.trim().to_owned()).filter(|p| !p.is_empty()).collect())
                .unwrap_or_default(),
            insecure_skip_signature,
            access_token: get("META_ACCESS_TOKEN"),
            graph_api_base: get("META_GRAPH_API_BASE").map(|b| b.trim_end_matches('/').to_owned()),
            outbound,
            max_flow_iterations: parse(&get, "MAX_FLOW_ITERATIONS", 100, "a positive number")?,
            session_ttl: Duration::from_secs(ttl_hours.saturating_mul(3600)),
            flow_execution_timeout: Duration::from_millis(parse(
                &get,
                "FLOW_EXECUTION_TIMEOUT_MS",
                10_000,
                "milliseconds",
            )?),
            max_body_bytes: parse(&get, "FLOWCORE_MAX_BODY_BYTES", 3 * 1024 * 1024, "bytes")?,
            rate_limit_per_minute: parse(&get, "FLOWCORE_RATE_LIMIT_PER_MINUTE", 5, "a whole number (0 = unlimited)")?,
            workers: parse::<usize>(&get, "FLOWCORE_WORKERS", DEFAULT_WORKERS, "a positive number")?.max(1),
            poll_interval: Duration::from_millis(parse(&get, "FLOWCORE_POLL_INTERVAL_MS", 200, "milliseconds")?),
            lease: Duration::from_millis(parse(&get, "FLOWCORE_LEASE_MS", 30_000, "milliseconds")?),
            purge_interval: Duration::from_secs(parse(&get, "FLOWCORE_PURGE_INTERVAL_SECS", 300, "seconds")?),
            send_max_attempts: parse::<u32>(&get, "FLOWCORE_SEND_MAX_ATTEMPTS", 8, "a positive number")?.max(1),
            send_backoff: Duration::from_millis(parse(&get, "FLOWCORE_SEND_BACKOFF_MS", 1000, "milliseconds")?),
            shutdown_grace: Duration::from_secs(parse(&get, "FLOWCORE_SHUTDOWN_GRACE_SECS", 20, "seconds")?),
            ai,
        })
    }
}

fn parse<T: std::str::FromStr>(
    get: &impl Fn(&str) -> Option<String>,
    name: &'static str,
    default: T,
    reason: &'static str,
) -> Result<T, EnvError> {
    match get(name) {
        None => Ok(default),
        Some(v) => v.parse().map_err(|_| EnvError { name, value: v, reason }),
    }
}

/// The demo config: `examples/config/demo.toml` from the working directory when it
/// exists (a clone's root), else the copy next to this crate's sources.
fn default_config_path() -> PathBuf {
    let cwd = PathBuf::from(DEMO_CONFIG_PATH);
    if cwd.exists() {
        return cwd;
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("config").join("demo.toml")
}

/// A database URL with any password replaced, for logs.
pub fn redact_url(url: &str) -> String {
    // scheme://user:password@host/... → scheme://user:***@host/...
    if let Some((scheme, rest)) = url.split_once("://") {
        if let Some((creds, host)) = rest.split_once('@') {
            if let Some((user, _)) = creds.split_once(':') {
                return format!("{scheme}://{user}:***@{host}");
            }
        }
    }
    url.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn defaults_follow_the_contract() {
        let s = EnvSettings::from_map(&HashMap::new()).unwrap();
        assert_eq!(s.addr.to_string(), "127.0.0.1:8080");
        assert_eq!(s.database_url, "sqlite://flowcore.db");
        assert_eq!(s.max_flow_iterations, 100);
        assert_eq!(s.session_ttl, Duration::from_secs(24 * 3600));
        assert_eq!(s.max_body_bytes, 3 * 1024 * 1024);
        assert_eq!(s.rate_limit_per_minute, 5);
        assert_eq!(s.workers, DEFAULT_WORKERS);
        assert!(s.config_is_default);
        assert!(!s.insecure_skip_signature);
        assert!(s.ai.is_none());
        assert!(s.sqlite_synchronous_full, "acknowledged webhooks survive power loss by default");
    }

    #[test]
    fn sqlite_durability_can_be_traded_for_speed() {
        let s = EnvSettings::from_map(&vars(&[("FLOWCORE_SQLITE_SYNCHRONOUS", "NORMAL")])).unwrap();
        assert!(!s.sqlite_synchronous_full);
        let err = EnvSettings::from_map(&vars(&[("FLOWCORE_SQLITE_SYNCHRONOUS", "off")])).unwrap_err();
        assert_eq!(err.name, "FLOWCORE_SQLITE_SYNCHRONOUS");
    }

    #[test]
    fn secrets_rotate_and_values_are_checked() {
        let s =
            EnvSettings::from_map(&vars(&[("META_APP_SECRET", "new, old"), ("FLOWCORE_INSECURE_SKIP_SIGNATURE", "1")]))
                .unwrap();
        assert_eq!(s.app_secrets, vec!["new".to_owned(), "old".to_owned()]);
        assert!(s.insecure_skip_signature);
        let err = EnvSettings::from_map(&vars(&[("FLOW_EXECUTION_TIMEOUT_MS", "soon")])).unwrap_err();
        assert_eq!(err.name, "FLOW_EXECUTION_TIMEOUT_MS");
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(redact_url("postgres://u:pw@h:5432/db"), "postgres://u:***@h:5432/db");
        assert_eq!(redact_url("sqlite://flowcore.db"), "sqlite://flowcore.db");
    }
}
