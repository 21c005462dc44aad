//! flowcore on the peers' workload (a bench binary, not criterion):
//!
//! ```text
//! cargo bench -p flowcore-benches --bench peers -- 150000
//! cargo bench -p flowcore-benches --bench peers -- 2000 --flow big
//! cargo bench -p flowcore-benches --bench peers -- 1 --checks --show
//! ```
//!
//! The workload is the one python-seed and BuilderBot run (`benches/flows/lead.json` or
//! `big.json`, with their `*.script.json`): N conversations, one distinct phone each
//! (`55119` + 8 digits), the script's turns in order. Every turn does what a host with a
//! database row per phone does: read the row (JSON text), `Session::from_json`, `handle`,
//! compare the replies with the script's `expected`, `Session::to_json`, write the row.
//! The last line is the peers' format, which `benches/peers.py` reads:
//!
//! ```text
//! peer=flowcore-lead conversations=N turns=T seconds=S turns_per_s=X
//! ```
//!
//! `seconds` covers the conversation loop only, as with the peers. Any reply that differs
//! from the script makes the process exit non-zero.

use std::collections::HashMap;
use std::process::ExitCode;
use std::time::Instant;

use flowcore::{CompiledFlow, Flow, Input, Message, Output, Session, SessionOptions, Timestamp};
use serde_json::Value;

// The allocator flowcore-server ships with, so that the turn costs what it costs in the server.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// One scripted conversation: what the contact sends, and the replies each turn must give.
struct Script {
    name: String,
    turns: Vec<String>,
    expected: Vec<Vec<String>>,
}

struct Args {
    conversations: usize,
    flow: String,
    checks: bool,
    show: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args { conversations: 150_000, flow: "lead".to_string(), checks: false, show: false };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--flow" => args.flow = it.next().ok_or("--flow needs a name: lead or big")?,
            "--checks" => args.checks = true,
            "--show" => args.show = true,
            // cargo bench passes --bench to every bench binary.
            "--bench" => {}
            n if n.bytes().all(|b| b.is_ascii_digit()) && !n.is_empty() => {
                args.conversations = n.parse().map_err(|e| format!("bad N {n:?}: {e}"))?
            }
            other => {
                return Err(format!("unknown argument {other:?} (usage: [N] [--flow lead|big] [--checks] [--show])"))
            }
        }
    }
    if !matches!(args.flow.as_str(), "lead" | "big") {
        return Err(format!("unknown flow {:?}: lead or big", args.flow));
    }
    Ok(args)
}

fn flows_dir() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("flows")
}

fn read(name: &str) -> Result<String, String> {
    let path = flows_dir().join(name);
    std::fs::read_to_string(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

fn strings(value: &Value) -> Option<Vec<String>> {
    value.as_array()?.iter().map(|v| v.as_str().map(str::to_string)).collect()
}

fn script_of(name: &str, value: &Value) -> Result<Script, String> {
    let turns = strings(&value["turns"]).ok_or_else(|| format!("{name}: no turns"))?;
    let expected = value["expected"]
        .as_array()
        .and_then(|e| e.iter().map(strings).collect::<Option<Vec<_>>>())
        .ok_or_else(|| format!("{name}: no expected replies"))?;
    if turns.len() != expected.len() {
        return Err(format!("{name}: {} turns but {} expected replies", turns.len(), expected.len()));
    }
    Ok(Script { name: name.to_string(), turns, expected })
}

/// The conversation and the check conversations of `<flow>.script.json`.
fn load_scripts(flow: &str) -> Result<(Script, Vec<Script>), String> {
    let text = read(&format!("{flow}.script.json"))?;
    let value: Value = serde_json::from_str(&text).map_err(|e| format!("{flow}.script.json: {e}"))?;
    let conversation = script_of("conversation", &value["conversation"])?;
    let checks = match value["checks"].as_array() {
        Some(list) => {
            list.iter().map(|c| script_of(c["name"].as_str().unwrap_or("check"), c)).collect::<Result<Vec<_>, _>>()?
        }
        None => Vec::new(),
    };
    Ok((conversation, checks))
}

/// What a host keeps between turns: one JSON row per phone.
struct Bot<'a> {
    flow: &'a CompiledFlow,
    rows: HashMap<String, String>,
    now: Timestamp,
}

impl Bot<'_> {
    /// One inbound text from `phone`: load the row, handle, store the row (an update when
    /// the phone has one, an insert when not); the texts sent.
    fn handle(&mut self, phone: &str, text: &str) -> Result<Vec<String>, String> {
        let (flow, now) = (self.flow, self.now);
        match self.rows.get_mut(phone) {
            Some(row) => {
                let mut session = Session::from_json(row).map_err(|e| e.to_string())?;
                let replies = turn(flow, &mut session, text, now)?;
                *row = session.to_json();
                Ok(replies)
            }
            None => {
                let mut session = Session::new(flow, SessionOptions::default());
                let replies = turn(flow, &mut session, text, now)?;
                self.rows.insert(phone.to_string(), session.to_json());
                Ok(replies)
            }
        }
    }
}

/// Handles one text; the texts the bot sends back.
fn turn(flow: &CompiledFlow, session: &mut Session, text: &str, now: Timestamp) -> Result<Vec<String>, String> {
    let turn = session.handle(flow, Input::text(text), now).map_err(|e| e.to_string())?;
    Ok(turn
        .outputs
        .into_iter()
        .filter_map(|o| match o {
            Output::Send { message: Message::Text { text }, .. } => Some(text),
            _ => None,
        })
        .collect())
}

fn phone_of(i: usize) -> String {
    format!("55119{i:08}")
}

/// Runs each check conversation on a fresh store; the number that gave other replies.
fn run_checks(flow: &CompiledFlow, now: Timestamp, cases: &[&Script], show: bool) -> Result<usize, String> {
    let mut failures = 0;
    for case in cases {
        let mut bot = Bot { flow, rows: HashMap::new(), now };
        let got = case.turns.iter().map(|t| bot.handle("5500000000000", t)).collect::<Result<Vec<_>, _>>()?;
        let ok = got == case.expected;
        failures += usize::from(!ok);
        println!("[{}] {}", case.name, if ok { "ok" } else { "MISMATCH" });
        if show && (case.name == "conversation" || !ok) {
            for ((text, replies), want) in case.turns.iter().zip(&got).zip(&case.expected) {
                println!("  user> {text}");
                for r in replies {
                    println!("  bot > {r}");
                }
                if replies != want {
                    println!("  want> {want:?}");
                }
            }
        }
    }
    Ok(failures)
}

fn run() -> Result<bool, String> {
    let args = parse_args()?;
    let flow_text = read(&format!("{}.json", args.flow))?;
    let flow = Flow::from_json(&flow_text)
        .map_err(|e| e.to_string())?
        .compile()
        .map_err(|e| format!("{}.json does not compile: {e:?}", args.flow))?;
    let (conversation, checks) = load_scripts(&args.flow)?;
    let now = Timestamp::from_unix_seconds(1_700_000_000);

    let mut failures = 0;
    if args.checks || args.show {
        let mut cases = vec![&conversation];
        if args.checks {
            cases.extend(checks.iter());
        }
        failures += run_checks(&flow, now, &cases, args.show)?;
    }

    let mut bot = Bot { flow: &flow, rows: HashMap::new(), now };
    let mut turns = 0u64;
    let mut bad = 0u64;
    let started = Instant::now();
    for i in 0..args.conversations {
        let phone = phone_of(i);
        for (text, expected) in conversation.turns.iter().zip(&conversation.expected) {
            let replies = bot.handle(&phone, text)?;
            bad += u64::from(replies != *expected);
            turns += 1;
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    if bad > 0 {
        eprintln!("ERROR: {bad} turns gave unexpected replies");
    }
    println!(
        "peer=flowcore-{} conversations={} turns={turns} seconds={seconds:.3} turns_per_s={:.1}",
        args.flow,
        args.conversations,
        turns as f64 / seconds
    );
    Ok(bad == 0 && failures == 0)
}

fn main() -> ExitCode {
    match run() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
