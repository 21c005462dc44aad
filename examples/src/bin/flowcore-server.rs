//! `flowcore-server`: the bundled WhatsApp bot server.
//!
//! Run it from the repository root, with nothing else set up, on the bundled demo config
//! and a SQLite file:
//!
//! ```text
//! cargo run --release -p flowcore-examples --bin flowcore-server
//! ```
//!
//! Configuration is by environment; see `flowcore_examples::server::env` for every
//! variable. Stops gracefully on SIGTERM or Ctrl-C.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use flowcore_examples::server::{env::EnvSettings, run};
use tracing_subscriber::EnvFilter;

// Every request allocates (bodies, JSON values, rows); mimalloc spends less CPU on that
// than the system allocator under the server load bench.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    if std::env::var("FLOWCORE_LOG_FORMAT").as_deref() == Ok("json") {
        tracing_subscriber::fmt().with_env_filter(filter).json().init();
    } else {
        // Colours only for a terminal: escape codes in a log file or a collector are noise.
        let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout()) && std::env::var_os("NO_COLOR").is_none();
        tracing_subscriber::fmt().with_env_filter(filter).with_ansi(ansi).init();
    }
    let settings = match EnvSettings::from_env() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("flowcore-server: {e}");
            return ExitCode::from(2);
        }
    };
    let server = match run::start(settings, None).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("flowcore-server: {e}");
            return ExitCode::from(1);
        }
    };
    run::shutdown_signal().await;
    server.shutdown().await;
    ExitCode::SUCCESS
}
