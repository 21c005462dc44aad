//! flowcore-server end to end under load (a bench binary, not criterion):
//!
//! ```text
//! cargo bench -p flowcore-benches --bench server_load
//! FLOWCORE_BENCH_POSTGRES_URL=postgres://postgres@127.0.0.1:5432/test cargo bench -p flowcore-benches --bench server_load
//! ```
//!
//! Starts the real server (in this process, on its own tokio runtime) on a loopback port
//! with a fresh SQLite file — and, when `FLOWCORE_BENCH_POSTGRES_URL` is set, two instances
//! on a fresh PostgreSQL database — plus a fake Graph API that accepts every reply. Then:
//!
//! 1. **throughput**: `BENCH_MESSAGES` (default 20000) signed webhooks, one message each,
//!    over `BENCH_CONVERSATIONS` (200) conversations, `BENCH_CONCURRENCY` (64) in flight;
//!    measures inbound messages/s from the first webhook until the fake API has accepted
//!    every reply;
//! 2. **ack latency**: an open-loop load at `BENCH_RATE` (1000) messages/s for
//!    `BENCH_SECONDS` (10) s; reports the webhook acknowledgement latency percentiles.
//!
//! `BENCH_ONLY=sqlite` or `BENCH_ONLY=postgres` runs one backend. Each instance runs
//! `BENCH_WORKERS` inbox workers (the server's default, 32). The per-contact rate limit is off unless
//! `BENCH_RATE_LIMIT` sets one (messages per minute: 1000000 counts every message against
//! the store's log and refuses none). SQLite flushes every commit to disk, as the server
//! does by default; `BENCH_SQLITE_SYNCHRONOUS=normal` measures the faster, crash-safe but
//! not power-safe setting instead. The runtimes name their threads
//! (`server`, `bench-harness`) so that a profile tells the server from the load generator.
//!
//! The flow is an echo loop (`benches/flows/echo_once.json`): each message after the first
//! gets one reply, "echo: …", which asks again; "end to end" is a message's webhook until
//! its reply is accepted. `BENCH_REPLIES=2` runs the heavier loop the bench used before
//! (`examples/tests/server_flows/echo.json`): two replies per message, the echo and then the
//! question again, so twice the outbox rows, logged replies and sends.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::routing::post;
use flowcore_examples::server::env::{EnvSettings, DEFAULT_WORKERS};
use flowcore_examples::server::run::{self, RunningServer};
use serde_json::json;
use sqlx::Connection;

// The allocator flowcore-server ships with, so that the bench measures the server as shipped.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const SECRET: &str = "bench-app-secret";
const PNID: &str = "106000000000002";

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn main() {
    let messages = env_or("BENCH_MESSAGES", 20_000) as usize;
    let conversations = env_or("BENCH_CONVERSATIONS", 200) as usize;
    let concurrency = env_or("BENCH_CONCURRENCY", 64) as usize;
    let rate = env_or("BENCH_RATE", 1000);
    let seconds = env_or("BENCH_SECONDS", 10);
    let replies = env_or("BENCH_REPLIES", 1).clamp(1, 2);

    // The load generator and the fake Graph API run here; each server has its own runtime.
    let client_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("bench-harness")
        .enable_all()
        .build()
        .unwrap();
    let accepted = Arc::new(AtomicU64::new(0));
    let graph_uri = client_rt.block_on(fake_graph(accepted.clone()));
    let dir = workdir(replies);
    let bench = Bench {
        dir: &dir,
        graph_uri: &graph_uri,
        client_rt: &client_rt,
        accepted: &accepted,
        load: Load { messages, conversations, concurrency, rate, seconds, replies },
    };
    println!("flowcore-server load bench: {messages} messages over {conversations} conversations, {concurrency} in flight, {replies} repl{} per message; then {rate} msg/s for {seconds} s", if replies == 1 { "y" } else { "ies" });
    println!(
        "machine: {} logical CPUs (shared with other work: numbers vary)",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!("machine check: {}", machine_check(&dir));

    let only = std::env::var("BENCH_ONLY").unwrap_or_default();
    if only.is_empty() || only == "sqlite" {
        let sqlite_url = format!("sqlite://{}", dir.join("bench.db").display());
        run_backend("sqlite, 1 instance", &[sqlite_url], &bench);
    }

    if let (Ok(admin), true) = (std::env::var("FLOWCORE_BENCH_POSTGRES_URL"), only.is_empty() || only == "postgres") {
        let (url, name) = client_rt.block_on(fresh_pg(&admin));
        run_backend("postgres, 2 instances", &[url.clone(), url], &bench);
        client_rt.block_on(async {
            if let Ok(mut c) = sqlx::PgConnection::connect(&admin).await {
                let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).execute(&mut c).await;
            }
        });
    } else {
        println!("postgres: skipped (set FLOWCORE_BENCH_POSTGRES_URL=postgres://… to run it)");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// What every backend's run shares: the harness and the load.
struct Bench<'a> {
    dir: &'a std::path::Path,
    graph_uri: &'a str,
    client_rt: &'a tokio::runtime::Runtime,
    accepted: &'a Arc<AtomicU64>,
    load: Load,
}

/// The load's knobs (see the module docs).
#[derive(Clone, Copy)]
struct Load {
    messages: usize,
    conversations: usize,
    concurrency: usize,
    rate: u64,
    seconds: u64,
    /// Replies per message after the first (1 or 2, see the module docs).
    replies: u64,
}

fn run_backend(label: &str, urls: &[String], bench: &Bench<'_>) {
    let Bench { dir, graph_uri, client_rt, accepted, load } = *bench;
    let Load { messages, conversations, concurrency, rate, seconds, replies } = load;
    // One runtime per instance, two threads each: the machine has two cores, which the
    // instances, the load generator and the fake API all share.
    let servers: Vec<(tokio::runtime::Runtime, RunningServer)> = urls
        .iter()
        .map(|url| {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .thread_name("server")
                .enable_all()
                .build()
                .unwrap();
            let mut env = HashMap::new();
            for (k, v) in [
                ("FLOWCORE_ADDR", "127.0.0.1:0".to_owned()),
                ("FLOWCORE_CONFIG", dir.join("config.toml").display().to_string()),
                ("DATABASE_URL", url.clone()),
                ("WEBHOOK_VERIFY_TOKEN", "bench".to_owned()),
                ("META_APP_SECRET", SECRET.to_owned()),
                ("META_ACCESS_TOKEN", "bench-token".to_owned()),
                ("META_GRAPH_API_BASE", format!("{graph_uri}/v21.0")),
                ("FLOWCORE_RATE_LIMIT_PER_MINUTE", env_or("BENCH_RATE_LIMIT", 0).to_string()),
                ("FLOWCORE_POLL_INTERVAL_MS", "50".to_owned()),
                ("FLOWCORE_WORKERS", env_or("BENCH_WORKERS", DEFAULT_WORKERS as u64).to_string()),
                // The server's default (`full`) unless the run asks for `normal`.
                ("FLOWCORE_SQLITE_SYNCHRONOUS", std::env::var("BENCH_SQLITE_SYNCHRONOUS").unwrap_or_default()),
            ] {
                env.insert(k.to_owned(), v);
            }
            let settings = EnvSettings::from_map(&env).unwrap();
            let server = rt.block_on(run::start(settings, None)).unwrap_or_else(|e| panic!("server: {e}"));
            (rt, server)
        })
        .collect();
    let bases: Vec<String> = servers.iter().map(|(_, s)| format!("http://{}", s.addr)).collect();

    // Warm-up: start every conversation (its first message only gets the question).
    let start_count = accepted.load(Ordering::Relaxed);
    client_rt.block_on(send_all(&bases, conversations, conversations, concurrency, "warm", 0));
    client_rt.block_on(wait_for(accepted, start_count + conversations as u64, Duration::from_secs(120)));

    // 1. Throughput.
    let before = accepted.load(Ordering::Relaxed);
    let expected = before + replies * messages as u64;
    let (started, cpu_before, machine_before, pg_before) =
        (Instant::now(), process_cpu(), machine_cpu(), postgres_cpu());
    let acks = client_rt.block_on(send_all(&bases, messages, conversations, concurrency, "tp", 0));
    let webhooks_done = started.elapsed();
    let ok = client_rt.block_on(wait_for(accepted, expected, Duration::from_secs(600)));
    let total = started.elapsed();
    let cpu = match (cpu_before, process_cpu()) {
        (Some(before), Some(after)) => {
            format!("; cpu {:.0} µs per message", (after - before).as_secs_f64() * 1e6 / messages as f64)
        }
        _ => String::new(),
    };
    let machine = match (machine_before, machine_cpu()) {
        (Some((busy0, all0)), Some((busy1, all1))) if all1 > all0 => {
            format!("; machine {:.0} % busy", 100.0 * (busy1 - busy0) as f64 / (all1 - all0) as f64)
        }
        _ => String::new(),
    };
    let postgres = match (pg_before, postgres_cpu()) {
        (Some(before), Some(after)) if urls.iter().any(|u| u.starts_with("postgres")) => {
            format!("; postgres {:.0} µs per message", (after - before).as_secs_f64() * 1e6 / messages as f64)
        }
        _ => String::new(),
    };
    println!(
        "[{label}] throughput: {messages} inbound in {:.2} s end to end = {:.0} msg/s (webhooks acked at {:.0} msg/s; {} replies accepted{}); ack p50 {:.1} ms p99 {:.1} ms{cpu}{postgres}{machine}",
        total.as_secs_f64(),
        messages as f64 / total.as_secs_f64(),
        messages as f64 / webhooks_done.as_secs_f64(),
        accepted.load(Ordering::Relaxed) - before,
        if ok { "" } else { " — TIMED OUT" },
        pct(&acks, 0.50),
        pct(&acks, 0.99),
    );

    // 2. Ack latency at a fixed rate (open loop: requests leave on schedule).
    let before = accepted.load(Ordering::Relaxed);
    let n = (rate * seconds) as usize;
    let started = Instant::now();
    let acks = client_rt.block_on(open_loop(&bases, n, conversations, rate));
    let ok = client_rt.block_on(wait_for(accepted, before + replies * n as u64, Duration::from_secs(600)));
    println!(
        "[{label}] {rate} msg/s for {seconds} s: webhook ack p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; all {} replies accepted {:.2} s after the first webhook{}",
        pct(&acks, 0.50),
        pct(&acks, 0.99),
        pct(&acks, 1.0),
        replies * n as u64,
        started.elapsed().as_secs_f64(),
        if ok { "" } else { " — TIMED OUT" },
    );
    for (rt, server) in servers {
        rt.block_on(server.shutdown());
        rt.shutdown_timeout(Duration::from_secs(5));
    }
}

/// This process's CPU time (user + system, all threads: server, load generator and fake API)
/// from `/proc/self/stat`, where there is one. CPU per message compares runs on a machine
/// too noisy for wall times alone (the database server's own CPU is not included).
fn process_cpu() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(Duration::from_millis(ticks * 10)) // USER_HZ = 100 on Linux
}

/// CPU time of the machine's PostgreSQL processes (server and backends, with the exited
/// ones its postmaster reaped), when they can be read.
fn postgres_cpu() -> Option<Duration> {
    let mut ticks = 0u64;
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { continue };
        let Some((name, rest)) = stat.split_once(')') else { continue };
        if !name.ends_with("(postgres") {
            continue;
        }
        let fields: Vec<u64> = rest.split_whitespace().skip(11).take(4).filter_map(|f| f.parse().ok()).collect();
        ticks += fields.iter().sum::<u64>();
    }
    Some(Duration::from_millis(ticks * 10))
}

/// Busy and total jiffies of the whole machine (`/proc/stat`): whether a run was bound by
/// the two cores or by waiting (other processes, such as PostgreSQL, count as busy).
fn machine_cpu() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let fields: Vec<u64> = stat.lines().next()?.split_whitespace().skip(1).filter_map(|f| f.parse().ok()).collect();
    let all: u64 = fields.iter().take(8).sum();
    let idle = fields.get(3)? + fields.get(4)?; // idle + iowait
    Some((all - idle, all))
}

fn pct(samples: &[Duration], p: f64) -> f64 {
    if samples.is_empty() {
        return 0.0;
    }
    let mut v: Vec<Duration> = samples.to_vec();
    v.sort();
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i].as_secs_f64() * 1000.0
}

fn body(contact: usize, wamid: &str, text: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "object": "whatsapp_business_account",
        "entry": [{"id": "1", "changes": [{"field": "messages", "value": {
            "messaging_product": "whatsapp",
            "metadata": {"display_phone_number": "13125550111", "phone_number_id": PNID},
            "contacts": [{"profile": {"name": "Bench"}, "wa_id": format!("55119{contact:06}")}],
            "messages": [{"from": format!("55119{contact:06}"), "id": wamid, "timestamp": "1780300800", "type": "text", "text": {"body": text}}]
        }}]}]
    }))
    .unwrap()
}

async fn post_webhook(http: &reqwest::Client, base: &str, body: Vec<u8>) -> Duration {
    let sig = flowcore_meta::sign(&body, SECRET.as_bytes());
    let t = Instant::now();
    let r = http
        .post(format!("{base}/api/v1/whatsapp/webhook"))
        .header("content-type", "application/json")
        .header("X-Hub-Signature-256", sig)
        .body(body)
        .send()
        .await
        .expect("webhook request");
    assert!(r.status().is_success(), "webhook answered {}", r.status());
    t.elapsed()
}

/// Sends `n` messages, message `i` to conversation `i % conversations`, with at most
/// `concurrency` in flight; the ack latency of each.
async fn send_all(
    bases: &[String],
    n: usize,
    conversations: usize,
    concurrency: usize,
    tag: &str,
    offset: usize,
) -> Vec<Duration> {
    let http = reqwest::Client::new();
    let sem = Arc::new(tokio::sync::Semaphore::new(concurrency));
    let mut tasks = tokio::task::JoinSet::new();
    for i in offset..offset + n {
        let permit = sem.clone().acquire_owned().await.unwrap();
        let http = http.clone();
        let base = bases[i % bases.len()].clone();
        let b = body(i % conversations, &format!("wamid.{tag}-{i}"), &format!("m{i}"));
        tasks.spawn(async move {
            let d = post_webhook(&http, &base, b).await;
            drop(permit);
            d
        });
    }
    let mut out = Vec::with_capacity(n);
    while let Some(d) = tasks.join_next().await {
        out.push(d.unwrap());
    }
    out
}

async fn open_loop(bases: &[String], n: usize, conversations: usize, rate: u64) -> Vec<Duration> {
    let http = reqwest::Client::new();
    let mut tasks = tokio::task::JoinSet::new();
    let start = tokio::time::Instant::now();
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    for i in 0..n {
        tokio::time::sleep_until(start + interval.mul_f64(i as f64)).await;
        let http = http.clone();
        let base = bases[i % bases.len()].clone();
        let b = body(i % conversations, &format!("wamid.ol-{i}"), &format!("o{i}"));
        tasks.spawn(async move { post_webhook(&http, &base, b).await });
    }
    let mut out = Vec::with_capacity(n);
    while let Some(d) = tasks.join_next().await {
        out.push(d.unwrap());
    }
    out
}

async fn wait_for(counter: &AtomicU64, target: u64, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while counter.load(Ordering::Relaxed) < target {
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    true
}

/// A Graph API that accepts every message.
async fn fake_graph(accepted: Arc<AtomicU64>) -> String {
    let app = axum::Router::new().route(
        "/v21.0/{pnid}/messages",
        post(move || {
            let accepted = accepted.clone();
            async move {
                let n = accepted.fetch_add(1, Ordering::Relaxed);
                axum::Json(json!({"messaging_product": "whatsapp", "messages": [{"id": format!("wamid.BENCH-{n}")}]}))
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}")
}

/// How fast this machine does fixed work right now, so that a run's numbers can be read
/// against another session's: one build (dd63ee1) gave 3,391–3,694 msg/s on SQLite in one
/// session and 2,269 in the next, on another machine. Two probes, each taken several times
/// because the machine is shared:
/// - the engine's lead conversation on one core (the engine bench's
///   `lead_conversation/4_turns`): the CPU's speed;
/// - an 8 KiB write and `fdatasync` in the bench's directory: the disk flush a durable
///   commit waits for (PostgreSQL's on every commit; SQLite's at checkpoints).
fn machine_check(dir: &std::path::Path) -> String {
    let flow = flowcore_benches::lead_flow();
    let now = flowcore::Timestamp::from_unix_seconds(1_700_000_000);
    const ROUNDS: usize = 7;
    const CONVERSATIONS: u32 = 2_000;
    let mut rounds: Vec<Duration> = (0..ROUNDS)
        .map(|_| {
            let started = Instant::now();
            for _ in 0..CONVERSATIONS {
                std::hint::black_box(flowcore_benches::lead_conversation(&flow, now));
            }
            started.elapsed() / CONVERSATIONS
        })
        .collect();
    rounds.sort();
    let engine = format!(
        "lead conversation (4 turns) best {:.2} µs, median {:.2} µs",
        micros(rounds[0]),
        micros(rounds[ROUNDS / 2])
    );
    match flush_times(&dir.join("flush-probe"), 21) {
        Ok(flushes) => format!(
            "{engine}; 8 KiB write + fdatasync median {:.2} ms, max {:.2} ms ({} tries)",
            pct(&flushes, 0.5),
            pct(&flushes, 1.0),
            flushes.len()
        ),
        Err(e) => format!("{engine}; disk flush probe failed: {e}"),
    }
}

/// `tries` timings of an 8 KiB write at the start of `path` followed by `fdatasync`.
fn flush_times(path: &std::path::Path, tries: usize) -> std::io::Result<Vec<Duration>> {
    use std::io::{Seek, Write};
    let mut file = std::fs::File::create(path)?;
    let page = [0x5a_u8; 8192];
    let mut times = Vec::with_capacity(tries);
    for _ in 0..tries {
        let started = Instant::now();
        file.rewind()?;
        file.write_all(&page)?;
        file.sync_data()?;
        times.push(started.elapsed());
    }
    drop(file);
    std::fs::remove_file(path)?;
    Ok(times)
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// A directory with the config and the echo flow that answers each message with `replies`
/// messages.
fn workdir(replies: u64) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("flowcore-server-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let manifest = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let echo = match replies {
        1 => manifest.join("flows/echo_once.json"),
        _ => manifest.join("../examples/tests/server_flows/echo.json"),
    };
    std::fs::copy(echo, dir.join("echo.json")).unwrap();
    std::fs::write(
        dir.join("config.toml"),
        format!(
            r#"
[[organizations]]
id = "bench"
api_token = "bench-token-123"
[[flows]]
id = "echo"
organization = "bench"
path = "echo.json"
[[chatbots]]
id = "echo-bot"
organization = "bench"
flow = "echo"
[[numbers]]
phone_number_id = "{PNID}"
display_phone_number = "13125550111"
organization = "bench"
default_chatbot = "echo-bot"
# One number carries the whole load, far above any real number's throughput: the bench
# measures the server, not Meta's pacing.
messages_per_second = 1000000
"#
        ),
    )
    .unwrap();
    dir
}

async fn fresh_pg(admin: &str) -> (String, String) {
    let name = format!("flowcore_bench_{}", std::process::id());
    let mut c = sqlx::PgConnection::connect(admin).await.expect("FLOWCORE_BENCH_POSTGRES_URL connects");
    let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).execute(&mut c).await;
    sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut c).await.unwrap();
    let (base, _) = admin.rsplit_once('/').unwrap();
    (format!("{base}/{name}"), name)
}
