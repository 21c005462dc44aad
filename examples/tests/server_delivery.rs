//! The outbox against a misbehaving Graph API, and crash safety of the built binary
//! (kill -9 and SIGTERM, then restart on the same SQLite file).

mod server_support;

use std::collections::HashMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

use flowcore_store::QueueStatus;
use serde_json::json;
use server_support::*;
use wiremock::matchers::{method, path_regex};
use wiremock::{Mock, MockServer, ResponseTemplate};

async fn outbox_row(h: &Harness, org: &str) -> flowcore_store::OutboxMessage {
    h.server().state.store.get_outbox(org, 1).await.unwrap().expect("the reply is in the outbox")
}

#[tokio::test]
async fn meta_500_then_success_delivers_exactly_once() {
    let graph = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path_regex(r"/messages$"))
        .respond_with(ResponseTemplate::new(500).set_body_string("<html>oops</html>"))
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&graph)
        .await;
    Mock::given(method("POST"))
        .and(path_regex(r"/messages$"))
        .respond_with(GraphOk(Arc::new(AtomicU64::new(1))))
        .with_priority(2)
        .mount(&graph)
        .await;
    let h = Harness::start_with(graph, &[]).await;
    let c = "12025550401";
    h.post_webhook(&webhook(PNID_ECHO, vec![msg(c, "wamid.R1", "oi")])).await;
    let sent = h.wait_sent(2).await;
    assert_eq!(sent[0], sent[1], "the same message was retried");
    assert_settled(&h.graph, 2).await;
    let row = outbox_row(&h, "globex").await;
    assert_eq!(row.status, QueueStatus::Done);
    assert_eq!(row.wamid.as_deref(), Some("wamid.OUT-1"), "exactly one accepted delivery");
    assert_eq!(row.attempts, 2);
}

/// A reply longer than one WhatsApp text goes out in parts, each its own outbox row: when a
/// later part fails, its retry sends that part alone, not the parts already delivered.
#[tokio::test]
async fn a_long_reply_goes_out_in_parts_and_only_a_failed_part_is_retried() {
    let graph = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path_regex(r"/messages$"))
        .respond_with(FailNth::new(3, GraphOk(Arc::new(AtomicU64::new(1)))))
        .mount(&graph)
        .await;
    let h = Harness::start_with(graph, &[]).await;
    let c = "12025550409";
    h.post_webhook(&webhook(PNID_ECHO, vec![msg(c, "wamid.L1", "oi")])).await;
    h.wait_sent(1).await;
    let long = "palavra ".repeat(700).trim_end().to_owned();
    h.post_webhook(&webhook(PNID_ECHO, vec![msg(c, "wamid.L2", &long)])).await;
    // The question, the echo's two parts (the second refused once, then retried), the question.
    let texts: Vec<String> = h.wait_sent(5).await.iter().map(message_text).collect();
    assert_eq!(texts[0], "Diga algo");
    assert!(texts[1].chars().count() <= 4096 && texts[2].chars().count() <= 4096);
    assert_eq!(format!("{} {}", texts[1], texts[2]), format!("echo: {long}"));
    assert_eq!(texts[3], texts[2], "only the refused part is sent again");
    assert_eq!(texts[4], "Diga algo");
    assert_settled(&h.graph, 5).await;
}

#[tokio::test]
async fn a_permanent_meta_error_marks_the_reply_failed_without_retrying() {
    let graph = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path_regex(r"/messages$"))
        .respond_with(ResponseTemplate::new(400).set_body_json(json!({"error": {
            "message": "(#131026) Message Undeliverable.", "type": "OAuthException", "code": 131026,
            "error_data": {"messaging_product": "whatsapp", "details": "Message Undeliverable."},
            "fbtrace_id": "Az8or2yhqkZfEZ-_4Qn_Bam"}})))
        .mount(&graph)
        .await;
    let h = Harness::start_with(graph, &[]).await;
    h.post_webhook(&webhook(PNID_ECHO, vec![msg("12025550402", "wamid.R2", "oi")])).await;
    h.wait_sent(1).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    let row = loop {
        let row = outbox_row(&h, "globex").await;
        if row.status == QueueStatus::Failed || Instant::now() > deadline {
            break row;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(row.status, QueueStatus::Failed);
    assert!(row.last_error.as_deref().unwrap_or_default().contains("131026"), "{:?}", row.last_error);
    assert_settled(&h.graph, 1).await;
    let (_, metrics) = h.admin(reqwest::Method::GET, Some(GLOBEX_TOKEN), "/api/v1/analytics/metrics", None).await;
    assert_eq!(metrics["instance"]["replies_failed"], 1);
}

// ---- the built binary ------------------------------------------------------------

struct Proc {
    child: Child,
    base: String,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

async fn spawn_server(dir: &Path, graph_uri: &str, log: &str, extra: &[(&str, &str)]) -> Proc {
    let port = free_port();
    let mut env: HashMap<String, String> = base_env(dir, graph_uri);
    env.insert("FLOWCORE_ADDR".into(), format!("127.0.0.1:{port}"));
    env.insert("FLOWCORE_LEASE_MS".into(), "1000".into());
    env.insert("RUST_LOG".into(), "info".into());
    for (k, v) in extra {
        env.insert((*k).into(), (*v).into());
    }
    let logfile = std::fs::File::create(dir.join(log)).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_flowcore-server"))
        .envs(env)
        .stdout(Stdio::from(logfile.try_clone().unwrap()))
        .stderr(Stdio::from(logfile))
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(r) = http.get(format!("{base}/readyz")).send().await {
            if r.status().is_success() {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "server did not start: {}",
            std::fs::read_to_string(dir.join(log)).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Proc { child, base }
}

#[tokio::test]
async fn kill_9_with_a_reply_pending_then_restart_answers_exactly_once() {
    // First life: Meta throttles (130429 proves nothing was sent), so the reply stays
    // pending in the outbox, retried with backoff.
    let throttling = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path_regex(r"/messages$"))
        .respond_with(
            ResponseTemplate::new(400).set_body_json(json!({"error": {"message": "throughput", "code": 130429}})),
        )
        .mount(&throttling)
        .await;
    let dir = workdir("http://127.0.0.1:9");
    let mut first = spawn_server(&dir, &throttling.uri(), "first.log", &[("FLOWCORE_SEND_BACKOFF_MS", "100")]).await;
    let http = reqwest::Client::new();
    let body = webhook(PNID_LEAD, vec![msg("12025550403", "wamid.K1", "oi")]);
    assert_eq!(post_signed(&http, &first.base, &body, SECRET).await.status().as_u16(), 200);
    wait_sent(&throttling, 1, Duration::from_secs(10)).await;
    first.child.kill().unwrap(); // SIGKILL: no shutdown code runs.
    first.child.wait().unwrap();

    // Second life: Meta works.
    let graph = MockServer::start().await;
    mount_graph_ok(&graph).await;
    let mut second = spawn_server(&dir, &graph.uri(), "second.log", &[]).await;
    let sent = wait_sent(&graph, 2, Duration::from_secs(10)).await;
    let texts: Vec<String> = sent.iter().map(message_text).collect();
    assert_eq!(texts, ["Olá! Aqui é a Acme.", "Qual é o seu nome?"]);
    // Meta redelivers the webhook (it never saw our 200, say): still answered once.
    assert_eq!(post_signed(&http, &second.base, &body, SECRET).await.status().as_u16(), 200);
    assert_settled(&graph, 2).await;
    // And the conversation goes on from the state the first life committed.
    let next = webhook(PNID_LEAD, vec![msg("12025550403", "wamid.K2", "Maria")]);
    post_signed(&http, &second.base, &next, SECRET).await;
    let sent = wait_sent(&graph, 3, Duration::from_secs(10)).await;
    assert_eq!(message_text(&sent[2]), "Prazer, Maria! Quantos anos você tem?");
    second.child.kill().unwrap();
    second.child.wait().unwrap();
}

#[tokio::test]
async fn sigterm_shuts_down_gracefully_and_nothing_accepted_is_lost() {
    let graph = MockServer::start().await;
    mount_graph_ok(&graph).await;
    let dir = workdir("http://127.0.0.1:9");
    let mut first = spawn_server(&dir, &graph.uri(), "first.log", &[]).await;
    let http = reqwest::Client::new();
    let bodies: Vec<Vec<u8>> = (0..20)
        .map(|i| webhook(PNID_ECHO, vec![msg(&format!("120255505{i:02}"), &format!("wamid.G{i}"), "oi")]))
        .collect();
    for body in &bodies {
        assert_eq!(post_signed(&http, &first.base, body, SECRET).await.status().as_u16(), 200);
    }
    let status = Command::new("kill").args(["-TERM", &first.child.id().to_string()]).status().unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(15);
    let exit = loop {
        if let Some(exit) = first.child.try_wait().unwrap() {
            break exit;
        }
        assert!(Instant::now() < deadline, "the server did not stop on SIGTERM");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(exit.success(), "exit status {exit:?}");
    let log = std::fs::read_to_string(dir.join("first.log")).unwrap();
    assert!(log.contains("stopped"), "{log}");
    // Whatever was not handled before the shutdown is handled after a restart: every
    // contact gets exactly one greeting.
    let mut second = spawn_server(&dir, &graph.uri(), "second.log", &[]).await;
    let sent = wait_sent(&graph, 20, Duration::from_secs(10)).await;
    assert_settled(&graph, 20).await;
    let mut to: Vec<String> = sent.iter().map(|m| m["to"].as_str().unwrap().to_owned()).collect();
    to.sort();
    to.dedup();
    assert_eq!(to.len(), 20);
    second.child.kill().unwrap();
    second.child.wait().unwrap();
}
