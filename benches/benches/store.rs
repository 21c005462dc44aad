//! flowcore-store throughput: the worker's unit of work and the inbox round trip, on the
//! memory, SQLite and PostgreSQL backends, with 1 and 8 concurrent tasks.
//!
//! Run: `cargo bench -p flowcore-benches --bench store`
//! (PostgreSQL runs when `FLOWCORE_TEST_POSTGRES_URL` is set, in a fresh schema that is
//! dropped at the end even when a run fails; `FLOWCORE_BENCH_SCALE=0.1` shortens every run;
//! `FLOWCORE_BENCH_ONLY=sqlite`, `FLOWCORE_BENCH_TASKS=8` and `FLOWCORE_BENCH_PARTS=units` pick
//! backends, concurrency and parts. `FLOWCORE_BENCH_CLAIM_REPLIES=1` has the units claim their
//! replies as they are written, as the server's worker does; nothing sends them, so the
//! unfinished replies pile up during the run, as they do while Meta is down.)
//!
//! - *unit of work*: one `Store::commit` = compare-and-set session save + 2 log rows +
//!   1 outbox row + the (already claimed) inbox row marked done;
//! - *inbox round trip*: `insert_inbox` + `claim_inbox` + `complete_inbox`.
//!
//! Only the store calls are timed: every task builds its inputs (commits, events) first,
//! then all tasks start together behind a barrier, and the clock stops when the last one
//! is done. The inbox rows the units finish are inserted and claimed before the clock starts.
//!
//! A bench binary rather than criterion: the numbers that matter are units per second with
//! N concurrent tasks sharing one store, which criterion's per-iteration model does not fit.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use flowcore::Timestamp;
use flowcore_store::*;
use serde_json::json;
use tokio::sync::Barrier;

const ORG: &str = "bench";
/// The concurrency levels measured.
const TASKS: [u64; 2] = [1, 8];

fn now() -> Timestamp {
    Timestamp::from_unix_seconds(1_700_000_000)
}

/// `FLOWCORE_BENCH_SCALE` (default 1; `cargo test --benches`, which passes no `--bench`,
/// runs at 0.01), at least 100 units.
fn scale(n: u64) -> u64 {
    let default = if std::env::args().any(|a| a == "--bench") { 1.0 } else { 0.01 };
    let s: f64 = std::env::var("FLOWCORE_BENCH_SCALE").ok().and_then(|v| v.parse().ok()).unwrap_or(default);
    ((n as f64 * s) as u64).max(100)
}

/// Pre-inserts and claims `n` inbox rows (one per conversation), for the units to finish.
async fn claimed_rows(store: &Arc<dyn Store>, n: u64, tag: &str) -> Vec<Claim> {
    for i in 0..n {
        let c = ConversationKey::new(ORG, "biz", format!("{tag}-{i}"));
        store
            .insert_inbox(NewInboxEvent::message(c, format!("{tag}-m{i}"), json!({"text": "oi"}), now()))
            .await
            .unwrap();
    }
    let mut claims = Vec::with_capacity(n as usize);
    loop {
        let batch =
            store.claim_inbox(&ClaimRequest::for_org(ORG, now(), Duration::from_secs(3600), 1000)).await.unwrap();
        if batch.is_empty() {
            break;
        }
        claims.extend(batch.iter().map(InboxEvent::claim));
    }
    assert_eq!(claims.len() as u64, n);
    claims
}

/// The worker's commit for one turn: version-checked session save, the inbound and the
/// outbound log rows, one reply, the claimed inbox row done.
fn unit(chat: &ConversationKey, key: &SessionKey, state: &Session, version: i64, claim: Claim) -> Commit {
    // Only the lease's presence matters: the clock of these units stands still.
    let claim_replies_until = claim_replies().then(|| now().saturating_add_seconds(60));
    let log = |direction, text: &str| NewLogEntry {
        conversation: chat.clone(),
        flow_id: Some("lead".into()),
        direction,
        content: Content::Text(text.to_owned()),
        node_id: Some("ask".into()),
        wamid: None,
        at: now(),
        metadata: serde_json::Value::Null,
    };
    Commit {
        org_id: ORG.into(),
        now: now(),
        session: Some(SessionWrite {
            key: key.clone(),
            expected_version: version,
            flow_version: 1,
            cohort: None,
            session: state.clone(),
            status: SessionStatus::Active,
            now: now(),
        }),
        log: vec![log(Direction::Inbound, "oi"), log(Direction::Outbound, "Nome?")],
        outbox: vec![NewOutboxMessage {
            conversation: chat.clone(),
            payload: json!({"type": "text", "text": "Nome?"}),
            due_at: now(),
            inbox_id: Some(claim.id),
        }],
        schedule: vec![],
        inbox_done: Some(claim),
        claim_replies_until,
        claim_next_until: None,
    }
}

/// `FLOWCORE_BENCH_CLAIM_REPLIES=1` (see the module docs).
fn claim_replies() -> bool {
    std::env::var("FLOWCORE_BENCH_CLAIM_REPLIES").is_ok_and(|v| v == "1")
}

/// Runs `tasks` tasks; each builds its inputs with `prepare`, waits for the others, then
/// runs `work` on them. Returns the wall time from the common start to the last finish.
async fn timed<I, P, W, F>(tasks: u64, prepare: P, work: W) -> Duration
where
    I: Send + 'static,
    P: Fn(u64) -> I,
    W: Fn(I) -> F,
    F: std::future::Future<Output = ()> + Send + 'static,
{
    let barrier = Arc::new(Barrier::new(tasks as usize + 1));
    let mut set = tokio::task::JoinSet::new();
    for t in 0..tasks {
        let fut = work(prepare(t));
        let barrier = barrier.clone();
        set.spawn(async move {
            barrier.wait().await;
            fut.await;
        });
    }
    barrier.wait().await;
    let (start, cpu) = (Instant::now(), cpu_time());
    while let Some(r) = set.join_next().await {
        r.unwrap();
    }
    let elapsed = start.elapsed();
    if let (Some(before), Some(after)) = (cpu, cpu_time()) {
        LAST_CPU_SHARE
            .store(((after - before).as_secs_f64() / elapsed.as_secs_f64() * 100.0) as u64, Ordering::Relaxed);
    }
    elapsed
}

/// The bench process's CPU time (user + system, all threads) from `/proc/self/stat`, where
/// there is one: how much of the wall time the bench actually ran on a loaded machine.
fn cpu_time() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(Duration::from_millis(ticks * 10)) // USER_HZ = 100 on Linux
}

/// The process's CPU time during the last timed section, in % of its wall time.
static LAST_CPU_SHARE: AtomicU64 = AtomicU64::new(0);

/// Units of work built ahead, per chunk, by the one-task run.
const CHUNK: u64 = 256;

async fn units_of_work(store: Arc<dyn Store>, tasks: u64, per_task: u64, tag: &str) -> f64 {
    let claims = claimed_rows(&store, tasks * per_task, tag).await;
    let state = testkit::sample_state("bench");
    if tasks == 1 {
        return units_of_work_in_chunks(&store, per_task, tag, &claims, &state).await;
    }
    let elapsed = timed(
        tasks,
        |t| {
            let chat = ConversationKey::new(ORG, "biz", format!("{tag}-task-{t}"));
            let key = chat.session("lead");
            (0..per_task)
                .map(|i| unit(&chat, &key, &state, i as i64, claims[(t * per_task + i) as usize]))
                .collect::<Vec<_>>()
        },
        |commits| {
            let store = store.clone();
            async move {
                for (i, commit) in commits.into_iter().enumerate() {
                    let saved = store.commit(commit).await.expect("commit").session.expect("saved");
                    debug_assert_eq!(saved.version, i as i64 + 1);
                }
            }
        },
    )
    .await;
    (tasks * per_task) as f64 / elapsed.as_secs_f64()
}

/// One task, its units built [`CHUNK`] at a time just before they are committed (outside the
/// clock), as a worker's unit comes straight from the engine, so that the bench's own memory
/// traffic stays out of the measurement.
async fn units_of_work_in_chunks(
    store: &Arc<dyn Store>,
    units: u64,
    tag: &str,
    claims: &[Claim],
    state: &Session,
) -> f64 {
    let chat = ConversationKey::new(ORG, "biz", format!("{tag}-task-0"));
    let key = chat.session("lead");
    let (mut elapsed, cpu, wall) = (Duration::ZERO, cpu_time(), Instant::now());
    let mut version = 0;
    for start in (0..units).step_by(CHUNK as usize) {
        let chunk: Vec<Commit> =
            (start..units.min(start + CHUNK)).map(|i| unit(&chat, &key, state, i as i64, claims[i as usize])).collect();
        let clock = Instant::now();
        for commit in chunk {
            version = store.commit(commit).await.expect("commit").session.expect("saved").version;
        }
        elapsed += clock.elapsed();
    }
    assert_eq!(version, units as i64);
    if let (Some(before), Some(after)) = (cpu, cpu_time()) {
        // Building included, of the loop's wall time.
        let share = (after - before).as_secs_f64() / wall.elapsed().as_secs_f64() * 100.0;
        LAST_CPU_SHARE.store(share as u64, Ordering::Relaxed);
    }
    units as f64 / elapsed.as_secs_f64()
}

async fn inbox_round_trips(store: Arc<dyn Store>, tasks: u64, per_task: u64, tag: &str) -> f64 {
    let done = Arc::new(AtomicU64::new(0));
    let elapsed = timed(
        tasks,
        |t| {
            let chat = ConversationKey::new(ORG, "biz", format!("{tag}-inbox-{t}"));
            (0..per_task)
                .map(|i| NewInboxEvent::message(chat.clone(), format!("{tag}-{t}-{i}"), json!({"text": "oi"}), now()))
                .collect::<Vec<_>>()
        },
        |events| {
            let (store, done) = (store.clone(), done.clone());
            async move {
                let req = ClaimRequest::for_org(ORG, now(), Duration::from_secs(60), 1);
                for e in events {
                    store.insert_inbox(e).await.unwrap();
                    for ev in store.claim_inbox(&req).await.unwrap() {
                        store.complete_inbox(ORG, ev.claim(), now()).await.unwrap();
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        },
    )
    .await;
    // Drain what the racing claims left behind (timed too), so every inserted row counts once.
    let drain = Instant::now();
    loop {
        let batch = store.claim_inbox(&ClaimRequest::for_org(ORG, now(), Duration::from_secs(60), 1000)).await.unwrap();
        if batch.is_empty() {
            break;
        }
        for ev in batch {
            store.complete_inbox(ORG, ev.claim(), now()).await.unwrap();
            done.fetch_add(1, Ordering::Relaxed);
        }
    }
    assert_eq!(done.load(Ordering::Relaxed), tasks * per_task);
    (tasks * per_task) as f64 / (elapsed + drain.elapsed()).as_secs_f64()
}

async fn run(name: &str, store: Arc<dyn Store>, units: u64) {
    store.register_organization(ORG).await.unwrap();
    for tasks in TASKS.into_iter().filter(|t| tasks_enabled(*t)) {
        let per_task = scale(units) / tasks;
        let u = units_of_work(store.clone(), tasks, per_task, &format!("u{tasks}")).await;
        let cpu = LAST_CPU_SHARE.load(Ordering::Relaxed);
        let r = if part_enabled("inbox") {
            inbox_round_trips(store.clone(), tasks, per_task, &format!("r{tasks}")).await
        } else {
            0.0
        };
        println!(
            "store/{name:<8} tasks={tasks}  unit of work: {u:>10.0} units/s (bench cpu {cpu:>3}% of wall)   inbox insert+claim+done: {r:>10.0} /s   ({} each)",
            tasks * per_task
        );
    }
}

/// Drops the bench's schemas when dropped — also while a failed run unwinds.
struct DropSchemas {
    url: String,
    schemas: Vec<String>,
}

impl Drop for DropSchemas {
    fn drop(&mut self) {
        let (url, schemas) = (self.url.clone(), std::mem::take(&mut self.schemas));
        // Its own thread and runtime: this may run inside (or while unwinding out of) the
        // bench's runtime.
        let dropped = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async {
                let admin = sqlx::PgPool::connect(&url).await.map_err(|e| e.to_string())?;
                for schema in schemas {
                    sqlx::raw_sql(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
                        .execute(&admin)
                        .await
                        .map_err(|e| format!("{schema}: {e}"))?;
                }
                admin.close().await;
                Ok::<(), String>(())
            })
        })
        .join();
        match dropped {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("store/postgres: could not drop the bench schemas: {e}"),
            Err(_) => eprintln!("store/postgres: could not drop the bench schemas"),
        }
    }
}

/// Runs the PostgreSQL benches, each configuration in a fresh schema; the schemas are dropped
/// at the end, also when a run fails.
async fn postgres(url: String) {
    let configs: Vec<_> =
        [("postgres", false), ("pg-async", true)].into_iter().filter(|(name, _)| enabled(name)).collect();
    let schemas: Vec<String> = configs
        .iter()
        .map(|(name, _)| format!("flowcore_bench_{}_{}", std::process::id(), name.replace('-', "_")))
        .collect();
    let _guard = DropSchemas { url: url.clone(), schemas: schemas.clone() };
    for ((name, asynchronous), schema) in configs.into_iter().zip(schemas) {
        let max = *TASKS.iter().max().unwrap() as u32 + 2;
        let options = PostgresOptions::default()
            .with_schema(schema)
            .with_max_connections(max)
            .with_asynchronous_commit(asynchronous);
        assert!(options.max_connections as u64 >= *TASKS.iter().max().unwrap(), "pool smaller than the tasks");
        let pg: Arc<dyn Store> = Arc::new(PostgresStore::open(&url, options).await.unwrap());
        run(name, pg.clone(), 4_000).await;
        pg.close().await;
    }
}

/// `FLOWCORE_BENCH_TASKS=1,8` (default all of [`TASKS`]) picks the concurrency levels.
fn tasks_enabled(tasks: u64) -> bool {
    std::env::var("FLOWCORE_BENCH_TASKS").map_or(true, |only| only.split(',').any(|t| t.trim() == tasks.to_string()))
}

/// `FLOWCORE_BENCH_PARTS=units` (default `units,inbox`) skips the inbox round trips, to
/// profile the units of work alone.
fn part_enabled(part: &str) -> bool {
    std::env::var("FLOWCORE_BENCH_PARTS").map_or(true, |only| only.split(',').any(|p| p.trim() == part))
}

/// `FLOWCORE_BENCH_ONLY=memory,sqlite,postgres,pg-async` (default all) picks the backends
/// (`pg-async`, PostgreSQL with asynchronous commit, runs with `postgres` only).
fn enabled(backend: &str) -> bool {
    std::env::var("FLOWCORE_BENCH_ONLY").map_or(true, |only| only.split(',').any(|b| b.trim() == backend))
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        if enabled("memory") {
            // The memory backend is the plain reference (every claim scans its tables), so it
            // runs a small load: its numbers show the contract's cost, not a target.
            run("memory", Arc::new(MemoryStore::new()), 4_000).await;
        }
        if enabled("sqlite") {
            let dir = tempfile::tempdir().unwrap();
            let url = format!("sqlite://{}", dir.path().join("bench.db").display());
            let sqlite = open(&url).await.unwrap();
            run("sqlite", sqlite.clone(), 40_000).await;
            sqlite.close().await;
        }
        if enabled("postgres") {
            match std::env::var("FLOWCORE_TEST_POSTGRES_URL") {
                Ok(url) if !url.is_empty() => postgres(url).await,
                _ => println!("store/postgres SKIPPED: set FLOWCORE_TEST_POSTGRES_URL to run it"),
            }
        }
    });
}
