//! Effects (api_call, ai_prompt, timeouts, failure edges), scheduled wake-ups that survive
//! a restart, and start-up refusals with readable messages.

mod server_support;

use std::time::{Duration, Instant};

use flowcore_examples::server::env::EnvSettings;
use flowcore_examples::server::run;
use serde_json::json;
use server_support::*;
use wiremock::matchers::{body_partial_json, header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

async fn graph_with_apis() -> MockServer {
    let graph = MockServer::start().await;
    mount_graph_ok(&graph).await;
    Mock::given(method("GET"))
        .and(path("/orders/123456"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"status": "enviado"})))
        .mount(&graph)
        .await;
    Mock::given(method("GET")).and(path("/orders/500")).respond_with(ResponseTemplate::new(500)).mount(&graph).await;
    Mock::given(method("GET"))
        .and(path("/orders/slow"))
        .respond_with(
            ResponseTemplate::new(200).set_delay(Duration::from_secs(5)).set_body_json(json!({"status": "tarde"})),
        )
        .mount(&graph)
        .await;
    Mock::given(method("POST"))
        .and(path("/v1/chat/completions"))
        .and(header("authorization", "Bearer sk-test"))
        .and(body_partial_json(json!({"model": "test-model", "messages": [
            {"role": "system", "content": "Seja breve"},
            {"role": "user", "content": "Resuma o pedido 123456"}]})))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "id": "chatcmpl-1", "object": "chat.completion",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "Pedido enviado."}, "finish_reason": "stop"}]})))
        .mount(&graph)
        .await;
    graph
}

#[tokio::test]
async fn api_call_and_ai_prompt_feed_their_results_into_the_flow() {
    let graph = graph_with_apis().await;
    let ai_base = format!("{}/v1", graph.uri());
    let h = Harness::start_with(
        graph,
        &[("OPENAI_BASE_URL", &ai_base), ("OPENAI_API_KEY", "sk-test"), ("OPENAI_MODEL", "test-model")],
    )
    .await;
    let c = "12025550601";
    h.post_webhook(&webhook(PNID_EFFECTS, vec![msg(c, "wamid.E1", "oi")])).await;
    h.wait_sent(1).await;
    h.post_webhook(&webhook(PNID_EFFECTS, vec![msg(c, "wamid.E2", "123456")])).await;
    h.wait_sent(3).await;
    assert_eq!(h.texts_to(c).await, ["Pedido?", "Status: enviado", "IA: Pedido enviado."]);
}

#[tokio::test]
async fn failing_and_slow_effects_take_the_failure_edge() {
    let graph = graph_with_apis().await;
    // No OPENAI_* set: ai_prompt goes to the default host handler, which fails cleanly.
    let h = Harness::start_with(graph, &[("FLOW_EXECUTION_TIMEOUT_MS", "300")]).await;
    for (i, (contact, order)) in
        [("12025550602", "500"), ("12025550603", "slow"), ("12025550604", "123456")].iter().enumerate()
    {
        h.post_webhook(&webhook(PNID_EFFECTS, vec![msg(contact, &format!("wamid.EF{i}a"), "oi")])).await;
        h.post_webhook(&webhook(PNID_EFFECTS, vec![msg(contact, &format!("wamid.EF{i}b"), order)])).await;
    }
    let started = Instant::now();
    h.wait_sent(7).await;
    assert!(started.elapsed() < Duration::from_secs(4), "the slow API was not cut at FLOW_EXECUTION_TIMEOUT_MS");
    assert_eq!(h.texts_to("12025550602").await, ["Pedido?", "Falhou: 500"]);
    assert_eq!(h.texts_to("12025550603").await, ["Pedido?", "Falhou: slow"]);
    assert_eq!(
        h.texts_to("12025550604").await,
        ["Pedido?", "Status: enviado", "Falhou: 123456"],
        "unconfigured ai_prompt fails"
    );
}

#[tokio::test]
async fn a_delay_is_a_scheduled_wake_up_that_survives_a_restart() {
    let mut h = Harness::start(&[]).await;
    let c = "12025550605";
    h.post_webhook(&webhook(PNID_DELAY, vec![msg(c, "wamid.D1", "oi")])).await;
    h.wait_sent(1).await;
    let first_at = Instant::now();
    // Stop before the 400 ms delay ends; the wake-up is in the database, not in memory.
    h.stop().await;
    assert_eq!(h.texts_to(c).await, ["antes"]);
    let server = start_server(base_env(&h.dir, &h.graph.uri())).await;
    h.wait_sent(2).await;
    assert!(first_at.elapsed() >= Duration::from_millis(350), "woke up too early");
    assert_eq!(h.texts_to(c).await, ["antes", "depois"]);
    assert_settled(&h.graph, 2).await;
    server.shutdown().await;
}

/// acme: the idle-timeout flow (a question with `timeoutSeconds`), added to a test's workdir
/// by [`add_timeout_bot`].
const PNID_TIMEOUT: &str = "106000000000008";
const TIMEOUT_SECONDS: i64 = 3;

/// Adds the idle-timeout flow, a chatbot and a business number for it to `dir`'s config.
fn add_timeout_bot(dir: &std::path::Path) {
    let flow =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/server_flows/timeout.json")).unwrap();
    assert!(flow.contains(&format!("\"timeoutSeconds\": {TIMEOUT_SECONDS}")));
    std::fs::write(dir.join("flows/timeout.json"), flow).unwrap();
    let mut config = std::fs::read_to_string(dir.join("config.toml")).unwrap();
    config.push_str(&format!(
        r#"
[[flows]]
id = "timeout"
organization = "acme"
path = "flows/timeout.json"
[[chatbots]]
id = "timeout-bot"
organization = "acme"
flow = "timeout"
[[numbers]]
phone_number_id = "{PNID_TIMEOUT}"
display_phone_number = "13125550177"
organization = "acme"
default_chatbot = "timeout-bot"
"#
    ));
    std::fs::write(dir.join("config.toml"), config).unwrap();
}

fn wall_clock() -> flowcore::Timestamp {
    let millis = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis();
    flowcore::Timestamp::from_unix_millis(i64::try_from(millis).unwrap())
}

#[tokio::test]
async fn an_idle_timeout_is_a_scheduled_wake_up_that_survives_kill_9() {
    let graph = MockServer::start().await;
    mount_graph_ok(&graph).await;
    let dir = workdir(&graph.uri());
    add_timeout_bot(&dir);
    let env = base_env(&dir, &graph.uri());
    let c = "12025550606";

    // First life: the contact writes, the question is asked and its timeout scheduled.
    let mut first = BinaryServer::spawn(env.clone(), dir.join("first.log")).await;
    let asked_from = wall_clock();
    let http = reqwest::Client::new();
    let body = webhook(PNID_TIMEOUT, vec![msg(c, "wamid.T1", "oi")]);
    assert_eq!(post_signed(&http, &first.base, &body, SECRET).await.status().as_u16(), 200);
    wait_sent(&graph, 1, Duration::from_secs(15)).await;
    // Killed between Meta's answer and the record of it, the server would send the question
    // again after its lease (the at-least-once window): wait until the reply is recorded.
    let file = env["DATABASE_URL"].trim_start_matches("sqlite://").to_owned();
    eventually(Duration::from_secs(15), "the question recorded as sent", || async {
        let db = rusqlite::Connection::open_with_flags(&file, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
        db.busy_timeout(Duration::from_secs(5)).unwrap();
        let sent: i64 = db.query_row("SELECT count(*) FROM outbox WHERE status = 'done'", [], |r| r.get(0)).unwrap();
        sent == 1
    })
    .await;
    // SIGKILL well before the timeout is due: the wake-up exists only in the database.
    first.kill_9();
    let texts: Vec<String> = sent_messages(&graph).await.iter().map(message_text).collect();
    assert_eq!(texts, ["Ainda está aí?"], "the timeout fired before the kill; the test proves nothing");

    // The killed server left the session waiting at the question, with its wake-up time.
    let store = run::open_store(&env["DATABASE_URL"], true).await.unwrap();
    let sessions = store.list_active_sessions("acme", flowcore_store::Page::first(10)).await.unwrap();
    let waiting = sessions.iter().find(|s| s.key.contact_id == c).expect("the session was committed");
    assert_eq!(waiting.current_node.as_deref(), Some("ask"));
    let wake_at = waiting.wake_at.expect("the question's timeout is scheduled");
    assert!(
        wake_at.as_unix_millis() >= asked_from.as_unix_millis() + TIMEOUT_SECONDS * 1000,
        "wake-up {wake_at:?} is earlier than {TIMEOUT_SECONDS} s after the message"
    );
    store.close().await;

    // Second life, same database: nothing arrives from the contact, the timeout still fires.
    let mut second = BinaryServer::spawn(env, dir.join("second.log")).await;
    let sent = wait_sent(&graph, 2, Duration::from_secs(30)).await;
    let observed_at = wall_clock();
    assert!(observed_at >= wake_at, "the timeout message was sent before its wake-up time");
    let texts: Vec<String> = sent.iter().map(message_text).collect();
    assert_eq!(texts, ["Ainda está aí?", "Encerrando por inatividade."]);
    assert!(sent.iter().all(|m| m["to"] == c));
    // Exactly once: no second copy from a re-run wake-up.
    assert_settled(&graph, 2).await;
    // The conversation's history has the timeout's reply once too.
    let (status, conv) = {
        let r =
            http.get(format!("{}/api/v1/conversations/{c}", second.base)).bearer_auth(ACME_TOKEN).send().await.unwrap();
        (r.status().as_u16(), r.json::<serde_json::Value>().await.unwrap())
    };
    assert_eq!(status, 200);
    assert_eq!(texts_of(&conv, "bot"), ["Ainda está aí?", "Encerrando por inatividade."]);
    second.kill_9();
}

#[tokio::test]
async fn start_up_refuses_broken_configs_with_readable_messages() {
    let dir = workdir("http://127.0.0.1:9");
    let env = base_env(&dir, "http://127.0.0.1:9");
    let start = |env: std::collections::HashMap<String, String>| async move {
        match run::start(EnvSettings::from_map(&env).unwrap(), None).await {
            Ok(s) => {
                s.shutdown().await;
                Ok(())
            }
            Err(e) => Err(e.to_string()),
        }
    };

    // No app secret and no opt-out.
    let mut no_secret = env.clone();
    no_secret.remove("META_APP_SECRET");
    let err = start(no_secret.clone()).await.unwrap_err();
    assert!(err.contains("META_APP_SECRET") && err.contains("FLOWCORE_INSECURE_SKIP_SIGNATURE"), "{err}");
    // The explicit opt-out starts.
    no_secret.insert("FLOWCORE_INSECURE_SKIP_SIGNATURE".into(), "1".into());
    start(no_secret).await.unwrap();

    // A flow that does not compile.
    std::fs::write(
        dir.join("flows/echo.json"),
        r#"{"id": "echo", "nodes": [{"id": "a", "type": "message", "data": {"content": "x"}}], "edges": []}"#,
    )
    .unwrap();
    let err = start(env.clone()).await.unwrap_err();
    assert!(err.contains("flow `echo` of organization `globex`") && err.contains("no-start-node"), "{err}");

    // A dangling reference.
    let config = config_toml().replace("default_chatbot = \"echo-bot\"", "default_chatbot = \"nope\"");
    std::fs::write(dir.join("config.toml"), config).unwrap();
    let err = start(env.clone()).await.unwrap_err();
    assert!(err.contains("default_chatbot `nope` is not a chatbot of organization `globex`"), "{err}");
}

#[tokio::test]
async fn the_bundled_demo_config_starts_with_nothing_set_and_logs_replies() {
    let dir = workdir("http://127.0.0.1:9");
    let mut env = std::collections::HashMap::new();
    env.insert("FLOWCORE_ADDR".to_owned(), "127.0.0.1:0".to_owned());
    env.insert("DATABASE_URL".to_owned(), format!("sqlite://{}", dir.join("demo.db").display()));
    let settings = EnvSettings::from_map(&env).unwrap();
    assert!(settings.config_is_default);
    let server = run::start(settings, None).await.unwrap();
    let base = format!("http://{}", server.addr);
    let http = reqwest::Client::new();
    // The sample webhook, signed with the published sample secret, is accepted...
    let body =
        std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/../flowcore-meta/tests/fixtures/01-text.json")).unwrap();
    let r = post_signed(&http, &base, &body, "flowcore-test-app-secret").await;
    assert_eq!(r.status().as_u16(), 200);
    // ...and the reply is "sent" through the log-only transport.
    let store = server.state.store.clone();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(row) = store.get_outbox("acme", 1).await.unwrap() {
            if let Some(wamid) = row.wamid {
                assert!(wamid.starts_with("wamid.log-"), "{wamid}");
                break;
            }
        }
        assert!(Instant::now() < deadline, "the demo reply was never logged");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let challenge = http
        .get(format!("{base}/api/v1/whatsapp/webhook?hub.mode=subscribe&hub.verify_token=flowcore-demo-verify-token&hub.challenge=42"))
        .send()
        .await
        .unwrap();
    assert_eq!(challenge.text().await.unwrap(), "42");
    server.shutdown().await;
}
