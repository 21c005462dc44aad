//! `flowctl`: check, draw, run and chat with a flowcore flow from the terminal.
//!
//! ```text
//! cargo run -p flowcore-examples --bin flowctl -- check examples/flows/lead.json
//! cargo run -p flowcore-examples --bin flowctl -- graph examples/flows/lead.json --format dot
//! printf 'oi\nMaria\n30\nmaria@example.com\n' | cargo run -p flowcore-examples --bin flowctl -- run examples/flows/lead.json
//! cargo run -p flowcore-examples --bin flowctl -- chat examples/flows/lead.json
//! cargo run -p flowcore-examples --bin flowctl -- test examples/flows/lead.json examples/flows/lead.chat --coverage
//! cargo run -p flowcore-examples --bin flowctl -- check flowcore/tests/flows/cadastro.json --with flowcore/tests/flows/endereco.json
//! ```
//!
//! Exit codes: `0` success (for `check`: no errors), `1` the flow has errors (for `test`: a
//! test failed), `2` unreadable input (a missing file, invalid JSON, a bad flag value, a
//! `.chat` syntax error).
#![forbid(unsafe_code)]

mod chat;
mod check;
mod clock;
mod conversation;
mod graph;
mod load;
mod run;
mod test;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Check, draw, run, chat with and test a flowcore flow.
#[derive(Parser, Debug)]
#[command(name = "flowctl", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Compile a flow and print its diagnostics (exit 0: no errors, 1: errors, 2: unreadable).
    Check {
        /// The flow JSON file.
        flow: PathBuf,
        /// Print diagnostics as text (default) or as one JSON document.
        #[arg(long, value_enum, default_value_t = CheckFormat::Text)]
        format: CheckFormat,
        /// A flow the checked flow calls (`call_flow`); repeat for each. Calls to flows
        /// neither this nor `--with` gives are errors.
        #[arg(long = "with", value_name = "FLOW")]
        with: Vec<PathBuf>,
    },
    /// Print a diagram of the flow.
    Graph {
        /// The flow JSON file.
        flow: PathBuf,
        /// The diagram language.
        #[arg(long, value_enum, default_value_t = GraphFormat::Mermaid)]
        format: GraphFormat,
        /// A coverage JSON file from `flowctl test --coverage-json`: untested nodes and
        /// edges are drawn dashed.
        #[arg(long, value_name = "FILE")]
        coverage: Option<PathBuf>,
    },
    /// Run a conversation: inbound messages on stdin (one per line), outputs as JSON lines on stdout.
    Run {
        /// The flow JSON file.
        flow: PathBuf,
        #[command(flatten)]
        options: RunOptions,
    },
    /// Chat with the flow in the terminal.
    Chat {
        /// The flow JSON file.
        flow: PathBuf,
        #[command(flatten)]
        options: RunOptions,
    },
    /// Run .chat transcript tests against the flow (exit 0: all pass, 1: one fails, 2: unreadable).
    Test {
        /// The flow JSON file.
        flow: PathBuf,
        /// The .chat files.
        #[arg(required = true)]
        tests: Vec<PathBuf>,
        /// Print the nodes and edges no test reached, with percentages.
        #[arg(long)]
        coverage: bool,
        /// Write the coverage as JSON to FILE.
        #[arg(long, value_name = "FILE")]
        coverage_json: Option<PathBuf>,
        /// Write JUnit XML to FILE.
        #[arg(long, value_name = "FILE")]
        junit: Option<PathBuf>,
        /// Another flow that `call_flow` nodes may call (repeatable).
        #[arg(long = "with", value_name = "FLOW")]
        with: Vec<PathBuf>,
    },
}

/// Options shared by `run` and `chat`.
#[derive(Args, Debug, Clone)]
struct RunOptions {
    /// A fixed clock (RFC 3339, e.g. 2026-01-05T09:30:00-03:00) instead of the system clock.
    #[arg(long)]
    now: Option<String>,
    /// The seed of the session's random generator (random nodes).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Initial variables, as a JSON object.
    #[arg(long)]
    vars: Option<String>,
    /// A flow the flow calls (`call_flow`); repeat for each.
    #[arg(long = "with", value_name = "FLOW")]
    with: Vec<PathBuf>,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
enum CheckFormat {
    Text,
    Json,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
enum GraphFormat {
    Mermaid,
    Dot,
}

/// A failure that ends the command with a message and an exit code.
#[derive(Debug)]
pub(crate) struct Failure {
    code: u8,
    message: String,
}

impl Failure {
    /// Unreadable input: exit code 2.
    pub(crate) fn unreadable(message: impl Into<String>) -> Self {
        Failure { code: 2, message: message.into() }
    }

    /// The flow has errors: exit code 1.
    pub(crate) fn invalid(message: impl Into<String>) -> Self {
        Failure { code: 1, message: message.into() }
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => {
            let _ = err.print();
            // clap uses 0 for --help/--version and 2 for usage errors, which matches ours.
            return ExitCode::from(err.exit_code().clamp(0, 255) as u8);
        }
    };
    let result = match cli.command {
        Command::Check { flow, format, with } => check::run(&flow, format, &with),
        Command::Graph { flow, format, coverage } => graph::run(&flow, format, coverage.as_deref()),
        Command::Run { flow, options } => run::run(&flow, &options),
        Command::Chat { flow, options } => chat::run(&flow, &options),
        Command::Test { flow, tests, coverage, coverage_json, junit, with } => {
            test::run(&flow, &with, &tests, &test::TestReports { coverage, coverage_json, junit })
        }
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(failure) => {
            eprintln!("flowctl: {}", failure.message);
            ExitCode::from(failure.code)
        }
    }
}
