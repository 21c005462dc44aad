//! Shared harness of the `server_*` integration tests: a real flowcore-server on a
//! loopback port, a wiremock Graph API, signed webhooks and admin calls.
#![allow(dead_code, missing_docs)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use flowcore_examples::server::env::EnvSettings;
use flowcore_examples::server::run::{self, RunningServer};
use serde_json::{json, Value};
use wiremock::matchers::{method, path_regex};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

pub const SECRET: &str = "test-app-secret";
pub const VERIFY_TOKEN: &str = "verify-me";
pub const GRAPH_TOKEN: &str = "test-graph-token";
pub const ACME_TOKEN: &str = "acme-token-123";
pub const GLOBEX_TOKEN: &str = "globex-token-123";
pub const INITECH_TOKEN: &str = "initech-token-12";

/// acme: default chatbot = the support menu (sample flow).
pub const PNID_SUPPORT: &str = "106000000000001";
/// globex: default chatbot = echo.
pub const PNID_ECHO: &str = "106000000000002";
/// acme: no default chatbot → acme's fallback (the lead sample flow).
pub const PNID_FALLBACK: &str = "106000000000003";
/// acme: the delay flow.
pub const PNID_DELAY: &str = "106000000000004";
/// acme: the effects flow (api_call + ai_prompt).
pub const PNID_EFFECTS: &str = "106000000000005";
/// initech: no chatbot at all → the "not configured" reply.
pub const PNID_NOBOT: &str = "106000000000009";
/// acme: the lead flow as default chatbot.
pub const PNID_LEAD: &str = "106000000000006";

/// acme: an A/B test between the lead and the support flows.
pub const PNID_AB: &str = "106000000000007";

pub const NOT_CONFIGURED: &str = "Ainda não configurado.";

pub fn config_toml() -> String {
    format!(
        r#"
not_configured_reply = "{NOT_CONFIGURED}"

[[organizations]]
id = "acme"
api_token = "{ACME_TOKEN}"
[[organizations]]
id = "globex"
api_token = "{GLOBEX_TOKEN}"
[[organizations]]
id = "initech"
api_token = "{INITECH_TOKEN}"

[[flows]]
id = "support"
organization = "acme"
path = "flows/support_menu.json"
[[flows]]
id = "lead"
organization = "acme"
path = "flows/lead.json"
[[flows]]
id = "delay"
organization = "acme"
path = "flows/delay.json"
[[flows]]
id = "effects"
organization = "acme"
path = "flows/effects.json"
[[flows]]
id = "echo"
organization = "globex"
path = "flows/echo.json"

[[chatbots]]
id = "support-bot"
organization = "acme"
flow = "support"
[[chatbots]]
id = "lead-bot"
organization = "acme"
flow = "lead"
is_fallback = true
[[chatbots]]
id = "delay-bot"
organization = "acme"
flow = "delay"
[[chatbots]]
id = "effects-bot"
organization = "acme"
flow = "effects"
[[chatbots]]
id = "ab-bot"
organization = "acme"
flow = "lead"
ab_test_flows = [{{ flow = "lead", weight = 1 }}, {{ flow = "support", weight = 1 }}]
[[chatbots]]
id = "echo-bot"
organization = "globex"
flow = "echo"

[[numbers]]
phone_number_id = "{PNID_SUPPORT}"
display_phone_number = "13125550100"
organization = "acme"
default_chatbot = "support-bot"
[[numbers]]
phone_number_id = "{PNID_ECHO}"
display_phone_number = "13125550111"
organization = "globex"
default_chatbot = "echo-bot"
[[numbers]]
phone_number_id = "{PNID_FALLBACK}"
display_phone_number = "13125550122"
organization = "acme"
[[numbers]]
phone_number_id = "{PNID_DELAY}"
display_phone_number = "13125550133"
organization = "acme"
default_chatbot = "delay-bot"
[[numbers]]
phone_number_id = "{PNID_EFFECTS}"
display_phone_number = "13125550144"
organization = "acme"
default_chatbot = "effects-bot"
[[numbers]]
phone_number_id = "{PNID_LEAD}"
display_phone_number = "13125550155"
organization = "acme"
default_chatbot = "lead-bot"
[[numbers]]
phone_number_id = "{PNID_AB}"
display_phone_number = "13125550166"
organization = "acme"
default_chatbot = "ab-bot"
[[numbers]]
phone_number_id = "{PNID_NOBOT}"
display_phone_number = "13125550199"
organization = "initech"
"#
    )
}

/// A fresh temporary directory with the config and every flow.
pub fn workdir(api_base: &str) -> PathBuf {
    static N: AtomicU64 = AtomicU64::new(0);
    // The start time keeps a later run whose process id repeats off this run's database.
    let started = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    let dir = std::env::temp_dir().join(format!(
        "flowcore-server-test-{}-{}-{started}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let flows = dir.join("flows");
    std::fs::create_dir_all(&flows).unwrap();
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    for (from, name) in [
        (manifest.join("flows/support_menu.json"), "support_menu.json"),
        (manifest.join("flows/lead.json"), "lead.json"),
        (manifest.join("tests/server_flows/delay.json"), "delay.json"),
        (manifest.join("tests/server_flows/effects.json"), "effects.json"),
        (manifest.join("tests/server_flows/echo.json"), "echo.json"),
    ] {
        let text = std::fs::read_to_string(&from).unwrap().replace("http://127.0.0.1:9", api_base);
        std::fs::write(flows.join(name), text).unwrap();
    }
    std::fs::write(dir.join("config.toml"), config_toml()).unwrap();
    dir
}

/// A Graph API answer with a fresh wamid per call.
pub struct GraphOk(pub Arc<AtomicU64>);

impl Respond for GraphOk {
    fn respond(&self, _: &Request) -> ResponseTemplate {
        let n = self.0.fetch_add(1, Ordering::Relaxed);
        ResponseTemplate::new(200).set_body_json(json!({
            "messaging_product": "whatsapp",
            "contacts": [{"input": "x", "wa_id": "x"}],
            "messages": [{"id": format!("wamid.OUT-{n}")}]
        }))
    }
}

/// Fails the `n`th request (counting from 1) with a 500, answers the others as `ok` does.
pub struct FailNth {
    n: u64,
    seen: AtomicU64,
    ok: GraphOk,
}

impl FailNth {
    /// Fails request `n`.
    pub fn new(n: u64, ok: GraphOk) -> FailNth {
        FailNth { n, seen: AtomicU64::new(0), ok }
    }
}

impl Respond for FailNth {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        if self.seen.fetch_add(1, Ordering::Relaxed) + 1 == self.n {
            return ResponseTemplate::new(500).set_body_string("<html>oops</html>");
        }
        self.ok.respond(request)
    }
}

/// Mounts the default "accept everything" Graph API.
pub async fn mount_graph_ok(graph: &MockServer) {
    Mock::given(method("POST"))
        .and(path_regex(r"^/v21\.0/[0-9]+/messages$"))
        .respond_with(GraphOk(Arc::new(AtomicU64::new(1))))
        .mount(graph)
        .await;
}

pub struct Harness {
    pub graph: MockServer,
    pub dir: PathBuf,
    pub server: Option<RunningServer>,
    pub base: String,
    pub http: reqwest::Client,
}

pub fn base_env(dir: &Path, graph_uri: &str) -> HashMap<String, String> {
    let mut env = HashMap::new();
    for (k, v) in [
        ("FLOWCORE_ADDR", "127.0.0.1:0".to_owned()),
        ("FLOWCORE_CONFIG", dir.join("config.toml").display().to_string()),
        ("DATABASE_URL", format!("sqlite://{}", dir.join("flowcore.db").display())),
        ("WEBHOOK_VERIFY_TOKEN", VERIFY_TOKEN.to_owned()),
        ("META_APP_SECRET", SECRET.to_owned()),
        ("META_ACCESS_TOKEN", GRAPH_TOKEN.to_owned()),
        ("META_GRAPH_API_BASE", format!("{graph_uri}/v21.0")),
        ("FLOWCORE_POLL_INTERVAL_MS", "20".to_owned()),
        ("FLOWCORE_SEND_BACKOFF_MS", "30".to_owned()),
        ("FLOWCORE_LEASE_MS", "2000".to_owned()),
        ("FLOWCORE_RATE_LIMIT_PER_MINUTE", "0".to_owned()),
        ("FLOW_EXECUTION_TIMEOUT_MS", "2000".to_owned()),
        ("FLOWCORE_SHUTDOWN_GRACE_SECS", "5".to_owned()),
    ] {
        env.insert(k.to_owned(), v);
    }
    env
}

impl Harness {
    /// A server with the default Graph mock, SQLite in a temp dir, and `extra` env.
    pub async fn start(extra: &[(&str, &str)]) -> Harness {
        let graph = MockServer::start().await;
        mount_graph_ok(&graph).await;
        Harness::start_with(graph, extra).await
    }

    /// As [`Harness::start`] with a Graph mock the test set up.
    pub async fn start_with(graph: MockServer, extra: &[(&str, &str)]) -> Harness {
        let dir = workdir(&graph.uri());
        let mut env = base_env(&dir, &graph.uri());
        for (k, v) in extra {
            env.insert((*k).to_owned(), (*v).to_owned());
        }
        let server = start_server(env).await;
        let base = format!("http://{}", server.addr);
        Harness { graph, dir, server: Some(server), base, http: reqwest::Client::new() }
    }

    pub fn server(&self) -> &RunningServer {
        self.server.as_ref().expect("running")
    }

    pub async fn post_webhook(&self, body: &[u8]) -> reqwest::Response {
        post_signed(&self.http, &self.base, body, SECRET).await
    }

    pub async fn admin(
        &self,
        method: reqwest::Method,
        token: Option<&str>,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut req = self.http.request(method, format!("{}{}", self.base, path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    /// Every message body the Graph mock received, in arrival order.
    pub async fn sent(&self) -> Vec<Value> {
        sent_messages(&self.graph).await
    }

    /// Waits until the Graph mock received at least `n` messages.
    pub async fn wait_sent(&self, n: usize) -> Vec<Value> {
        wait_sent(&self.graph, n, Duration::from_secs(15)).await
    }

    /// The texts sent to `to`, in order.
    pub async fn texts_to(&self, to: &str) -> Vec<String> {
        self.sent().await.iter().filter(|m| m["to"] == to).map(message_text).collect()
    }

    pub async fn stop(&mut self) {
        if let Some(s) = self.server.take() {
            s.shutdown().await;
        }
    }
}

pub async fn start_server(env: HashMap<String, String>) -> RunningServer {
    let settings = EnvSettings::from_map(&env).expect("test env is valid");
    run::start(settings, None).await.unwrap_or_else(|e| panic!("server failed to start: {e}"))
}

pub async fn post_signed(http: &reqwest::Client, base: &str, body: &[u8], secret: &str) -> reqwest::Response {
    http.post(format!("{base}/api/v1/whatsapp/webhook"))
        .header("content-type", "application/json")
        .header("X-Hub-Signature-256", flowcore_meta::sign(body, secret.as_bytes()))
        .body(body.to_vec())
        .send()
        .await
        .unwrap()
}

pub async fn sent_messages(graph: &MockServer) -> Vec<Value> {
    graph
        .received_requests()
        .await
        .unwrap_or_default()
        .iter()
        .filter(|r| r.url.path().ends_with("/messages"))
        .filter_map(|r| serde_json::from_slice(&r.body).ok())
        .collect()
}

pub async fn wait_sent(graph: &MockServer, n: usize, timeout: Duration) -> Vec<Value> {
    let deadline = Instant::now() + timeout;
    loop {
        let sent = sent_messages(graph).await;
        if sent.len() >= n {
            return sent;
        }
        if Instant::now() > deadline {
            panic!(
                "expected {n} messages at the Graph API, got {}: {:#?}",
                sent.len(),
                sent.iter().map(message_text).collect::<Vec<_>>()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits a little and checks nothing more arrived (a reply sent twice would show here).
pub async fn assert_settled(graph: &MockServer, expected: usize) {
    tokio::time::sleep(Duration::from_millis(400)).await;
    let sent = sent_messages(graph).await;
    assert_eq!(
        sent.len(),
        expected,
        "unexpected extra messages: {:#?}",
        sent.iter().map(message_text).collect::<Vec<_>>()
    );
}

/// `GET /api/v1/conversations/{contact}` on `base` with `token`, as JSON.
pub async fn get_conversation(http: &reqwest::Client, base: &str, token: &str, contact: &str) -> Value {
    http.get(format!("{base}/api/v1/conversations/{contact}"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// The texts of a conversation (as the admin API shows it) of one `type`: `"user"` or `"bot"`.
pub fn texts_of(conversation: &Value, kind: &str) -> Vec<String> {
    let messages = conversation["messages"].as_array().expect("a conversation lists its messages");
    messages.iter().filter(|m| m["type"] == kind).map(|m| m["text"].as_str().unwrap_or_default().to_owned()).collect()
}

/// The visible text of an outgoing Graph message.
pub fn message_text(m: &Value) -> String {
    match m["type"].as_str() {
        Some("text") => m["text"]["body"].as_str().unwrap_or_default().to_owned(),
        Some("interactive") => m["interactive"]["body"]["text"].as_str().unwrap_or_default().to_owned(),
        _ => m.to_string(),
    }
}

/// One inbound message in Meta's webhook shape.
pub fn msg(from: &str, wamid: &str, text: &str) -> Value {
    json!({"from": from, "id": wamid, "timestamp": "1780300800", "type": "text", "text": {"body": text}})
}

/// A button reply.
pub fn button(from: &str, wamid: &str, id: &str, title: &str) -> Value {
    json!({"from": from, "id": wamid, "timestamp": "1780300800", "type": "interactive",
           "interactive": {"type": "button_reply", "button_reply": {"id": id, "title": title}}})
}

/// A webhook body with `messages` for one business number.
pub fn webhook(pnid: &str, messages: Vec<Value>) -> Vec<u8> {
    let contacts: Vec<Value> = {
        let mut seen = Vec::new();
        for m in &messages {
            let from = m["from"].as_str().unwrap().to_owned();
            if !seen.contains(&from) {
                seen.push(from);
            }
        }
        seen.iter().map(|f| json!({"profile": {"name": "Teste"}, "wa_id": f})).collect()
    };
    serde_json::to_vec(&json!({
        "object": "whatsapp_business_account",
        "entry": [{"id": "102000000000001", "changes": [{"field": "messages", "value": {
            "messaging_product": "whatsapp",
            "metadata": {"display_phone_number": "13125550100", "phone_number_id": pnid},
            "contacts": contacts,
            "messages": messages
        }}]}]
    }))
    .unwrap()
}

/// A status webhook for one of our messages.
pub fn status_webhook(pnid: &str, wamid: &str, status: &str, recipient: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "object": "whatsapp_business_account",
        "entry": [{"id": "102000000000001", "changes": [{"field": "messages", "value": {
            "messaging_product": "whatsapp",
            "metadata": {"display_phone_number": "13125550100", "phone_number_id": pnid},
            "statuses": [{"id": wamid, "status": status, "timestamp": "1780301340", "recipient_id": recipient}]
        }}]}]
    }))
    .unwrap()
}

/// Polls `check` until it returns true or `timeout` passes.
pub async fn eventually<F, Fut>(timeout: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !check().await {
        if Instant::now() > deadline {
            panic!("timed out waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

// ---- the built binary ------------------------------------------------------------

/// The built `flowcore-server` binary running as a child process, its stdout and stderr
/// in a log file (so a test can read what an operator would see). Killed on drop.
pub struct BinaryServer {
    pub child: std::process::Child,
    pub base: String,
    pub log: PathBuf,
}

impl BinaryServer {
    /// Starts the binary with exactly `env` (plus `PATH`; nothing else is inherited, so the
    /// test runner's own environment cannot change the server's settings) on a free
    /// loopback port, writing its output to `log`; returns once `/readyz` answers 200.
    pub async fn spawn(mut env: HashMap<String, String>, log: PathBuf) -> BinaryServer {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        env.insert("FLOWCORE_ADDR".into(), format!("127.0.0.1:{port}"));
        env.entry("RUST_LOG".into()).or_insert_with(|| "info".into());
        let logfile = std::fs::File::create(&log).unwrap();
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_flowcore-server"));
        command.env_clear();
        if let Some(path) = std::env::var_os("PATH") {
            command.env("PATH", path);
        }
        let child = command
            .envs(env)
            .stdout(std::process::Stdio::from(logfile.try_clone().unwrap()))
            .stderr(std::process::Stdio::from(logfile))
            .spawn()
            .unwrap();
        let mut server = BinaryServer { child, base: format!("http://127.0.0.1:{port}"), log };
        let http = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = http.get(format!("{}/readyz", server.base)).send().await {
                if r.status().is_success() {
                    return server;
                }
            }
            if let Some(exit) = server.child.try_wait().unwrap() {
                panic!("the server exited ({exit}) before it was ready:\n{}", server.log_text());
            }
            assert!(Instant::now() < deadline, "the server did not become ready:\n{}", server.log_text());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Everything the server wrote so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL: no shutdown code runs. Waits for the process to be gone.
    pub fn kill_9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for BinaryServer {
    fn drop(&mut self) {
        // A failed test must not leave its server running.
        self.kill_9();
    }
}
