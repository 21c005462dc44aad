//! Several instances on one PostgreSQL database split the work with no double replies.
//!
//! Needs `FLOWCORE_TEST_POSTGRES_URL` (e.g. `postgres://postgres@127.0.0.1:5432/test`);
//! each run creates and drops its own database. Without the variable the test prints a
//! skip line and passes.

mod server_support;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use server_support::*;
use sqlx::Connection;

/// `FLOWCORE_TEST_POSTGRES_URL`, or a skip line.
fn admin_url() -> Option<String> {
    let url = std::env::var("FLOWCORE_TEST_POSTGRES_URL").ok();
    if url.is_none() {
        println!("skipped: set FLOWCORE_TEST_POSTGRES_URL=postgres://… to run the PostgreSQL test");
    }
    url
}

/// Creates a fresh database next to the one `admin_url` names; returns its URL.
async fn fresh_database(admin_url: &str) -> (String, String) {
    // The counter keeps names apart when two tests start within the same microsecond.
    static CREATED: AtomicU64 = AtomicU64::new(0);
    let name = format!(
        "flowcore_server_{}_{}_{}",
        std::process::id(),
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_micros(),
        CREATED.fetch_add(1, Ordering::Relaxed)
    );
    let mut conn = sqlx::PgConnection::connect(admin_url).await.expect("FLOWCORE_TEST_POSTGRES_URL connects");
    sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut conn).await.unwrap();
    conn.close().await.unwrap();
    let (base, _) = admin_url.rsplit_once('/').expect("a URL with a database path");
    let base = base.split('?').next().unwrap();
    (format!("{base}/{name}"), name)
}

async fn drop_database(admin_url: &str, name: &str) {
    if let Ok(mut conn) = sqlx::PgConnection::connect(admin_url).await {
        let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).execute(&mut conn).await;
    }
}

/// A server environment on a fresh database, with a Graph API that accepts every reply;
/// the database's name, to drop it.
async fn fresh_database_and_graph(admin_url: &str) -> (HashMap<String, String>, wiremock::MockServer, String) {
    let (url, name) = fresh_database(admin_url).await;
    let graph = wiremock::MockServer::start().await;
    mount_graph_ok(&graph).await;
    let dir = workdir("http://127.0.0.1:9");
    let mut env: HashMap<String, String> = base_env(&dir, &graph.uri());
    env.insert("DATABASE_URL".into(), url);
    (env, graph, name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_over_two_instances_is_answered_exactly_once_in_order() {
    let Some(admin_url) = admin_url() else { return };
    let (env, graph, name) = fresh_database_and_graph(&admin_url).await;
    let a = start_server(env.clone()).await;
    let b = start_server(env).await;
    let bases = [format!("http://{}", a.addr), format!("http://{}", b.addr)];

    const CONVERSATIONS: usize = 100;
    const PER_CONVERSATION: usize = 10;
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..CONVERSATIONS {
        let bases = bases.clone();
        tasks.spawn(async move {
            let http = reqwest::Client::new();
            let contact = format!("55119{c:06}");
            // One conversation's messages arrive one after the other (each acknowledged
            // before the next, as Meta does), alternating between the instances.
            for m in 0..PER_CONVERSATION {
                let body = webhook(PNID_ECHO, vec![msg(&contact, &format!("wamid.PG-{c}-{m}"), &format!("c{c}-m{m}"))]);
                let r = post_signed(&http, &bases[(c + m) % 2], &body, SECRET).await;
                assert_eq!(r.status().as_u16(), 200);
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
    }
    // m0 starts the flow ("Diga algo"); each later message gets its echo and the question again.
    let expected = CONVERSATIONS * (1 + 2 * (PER_CONVERSATION - 1));
    let sent = wait_sent(&graph, expected, Duration::from_secs(120)).await;
    println!("{} inbound → {} replies in {:?}", CONVERSATIONS * PER_CONVERSATION, sent.len(), started.elapsed());
    assert_settled(&graph, expected).await;

    let mut per: HashMap<String, Vec<String>> = HashMap::new();
    for m in &sent {
        per.entry(m["to"].as_str().unwrap().to_owned()).or_default().push(message_text(m));
    }
    assert_eq!(per.len(), CONVERSATIONS);
    for (contact, texts) in &per {
        let c: usize = contact[5..].parse().unwrap();
        let mut want = vec!["Diga algo".to_owned()];
        for m in 1..PER_CONVERSATION {
            want.push(format!("echo: c{c}-m{m}"));
            want.push("Diga algo".to_owned());
        }
        assert_eq!(texts, &want, "conversation {contact}");
    }
    // Both instances did part of the work.
    let turns =
        |s: &flowcore_examples::server::run::RunningServer| s.state.runtime.stats().turns.load(Ordering::Relaxed);
    let (ta, tb) = (turns(&a), turns(&b));
    println!("turns: instance a {ta}, instance b {tb}");
    assert_eq!(ta + tb, (CONVERSATIONS * PER_CONVERSATION) as u64);
    assert!(ta > 0 && tb > 0, "one instance did all the work: {ta} / {tb}");
    a.shutdown().await;
    b.shutdown().await;
    drop_database(&admin_url, &name).await;
}

/// On PostgreSQL a turn's replies are claimed as they are written and sent one after the
/// other: when the first fails, the second waits for its retry instead of overtaking it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_reply_holds_back_the_rest_of_its_turn() {
    let Some(admin_url) = admin_url() else { return };
    let (url, name) = fresh_database(&admin_url).await;
    let graph = wiremock::MockServer::start().await;
    let ok = GraphOk(Arc::new(AtomicU64::new(1)));
    wiremock::Mock::given(wiremock::matchers::method("POST"))
        .and(wiremock::matchers::path_regex(r"^/v21\.0/[0-9]+/messages$"))
        .respond_with(FailNth::new(2, ok))
        .mount(&graph)
        .await;
    let dir = workdir("http://127.0.0.1:9");
    let mut env: HashMap<String, String> = base_env(&dir, &graph.uri());
    env.insert("DATABASE_URL".into(), url);
    let server = start_server(env).await;
    let base = format!("http://{}", server.addr);
    let http = reqwest::Client::new();
    let contact = "5511900000001";
    for (wamid, text) in [("wamid.H1", "oi"), ("wamid.H2", "tudo bem")] {
        let r = post_signed(&http, &base, &webhook(PNID_ECHO, vec![msg(contact, wamid, text)]), SECRET).await;
        assert_eq!(r.status().as_u16(), 200);
        // The first turn's reply goes out before the second message arrives.
        wait_sent(&graph, 1, Duration::from_secs(10)).await;
    }
    // The echo fails once (the second request), is retried, and only then the question.
    let sent = wait_sent(&graph, 4, Duration::from_secs(20)).await;
    let texts: Vec<String> = sent.iter().map(message_text).collect();
    assert_eq!(texts, ["Diga algo", "echo: tudo bem", "echo: tudo bem", "Diga algo"]);
    assert_settled(&graph, 4).await;
    // All three replies went the handed-over way, none through a claim of the sender's.
    let handed_over = server.state.runtime.stats().handed_over.load(Ordering::Relaxed);
    assert_eq!(handed_over, 3);
    server.shutdown().await;
    drop_database(&admin_url, &name).await;
}

/// `/readyz` asks the database itself: when PostgreSQL stops taking connections it answers
/// 503, and ready again once the database is back, with no restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_follows_the_database() {
    let Some(admin_url) = admin_url() else { return };
    let (env, _graph, name) = fresh_database_and_graph(&admin_url).await;
    let server = start_server(env).await;
    let readyz = format!("http://{}/readyz", server.addr);
    let http = reqwest::Client::new();
    let status = |r: reqwest::Response| r.status().as_u16();
    assert_eq!(status(http.get(&readyz).send().await.unwrap()), 200);

    let mut admin = sqlx::PgConnection::connect(&admin_url).await.unwrap();
    let set_connections = |allowed: bool| format!("ALTER DATABASE {name} WITH ALLOW_CONNECTIONS {allowed}");
    sqlx::query(&set_connections(false)).execute(&mut admin).await.unwrap();
    sqlx::query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1")
        .bind(&name)
        .execute(&mut admin)
        .await
        .unwrap();
    let r = http.get(&readyz).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 503);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "unavailable", "{body}");

    sqlx::query(&set_connections(true)).execute(&mut admin).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while status(http.get(&readyz).send().await.unwrap()) != 200 {
        assert!(Instant::now() < deadline, "/readyz stays unavailable with the database back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    admin.close().await.unwrap();
    server.shutdown().await;
    drop_database(&admin_url, &name).await;
}
