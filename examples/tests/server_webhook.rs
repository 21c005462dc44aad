//! The webhook end to end: verification, signatures, inbox dedup, routing, conversations,
//! statuses and limits — against a real server on a loopback port and a wiremock Graph API.

mod server_support;

use std::time::Duration;

use flowcore_store::{ClaimRequest, DeliveryStatus};
use serde_json::Value;
use server_support::*;

#[tokio::test]
async fn verification_answers_the_challenge_only_with_the_right_token() {
    let h = Harness::start(&[]).await;
    let get = |q: &str| {
        let url = format!("{}/api/v1/whatsapp/webhook?{q}", h.base);
        let http = h.http.clone();
        async move {
            let r = http.get(url).send().await.unwrap();
            let ct = r.headers().get("content-type").map(|v| v.to_str().unwrap().to_owned());
            (r.status().as_u16(), ct, r.text().await.unwrap())
        }
    };
    let (status, ct, body) =
        get(&format!("hub.mode=subscribe&hub.verify_token={VERIFY_TOKEN}&hub.challenge=1158201444")).await;
    assert_eq!((status, body.as_str()), (200, "1158201444"));
    assert!(ct.unwrap().starts_with("text/plain"));
    assert_eq!(get("hub.mode=subscribe&hub.verify_token=wrong&hub.challenge=1").await.0, 403);
    assert_eq!(get(&format!("hub.mode=unsubscribe&hub.verify_token={VERIFY_TOKEN}&hub.challenge=1")).await.0, 400);
}

#[tokio::test]
async fn forged_or_missing_signatures_are_refused_and_nothing_is_stored() {
    let h = Harness::start(&[]).await;
    let body = webhook(PNID_SUPPORT, vec![msg("12025550101", "wamid.FORGED", "oi")]);
    let forged = post_signed(&h.http, &h.base, &body, "not-the-secret").await;
    assert_eq!(forged.status().as_u16(), 401);
    let err: Value = forged.json().await.unwrap();
    assert_eq!(err["error"]["code"], "invalid_signature");
    let unsigned = h.http.post(format!("{}/api/v1/whatsapp/webhook", h.base)).body(body.clone()).send().await.unwrap();
    assert_eq!(unsigned.status().as_u16(), 401);
    // A body altered after signing fails too.
    let mut tampered = body.clone();
    let sig = flowcore_meta::sign(&body, SECRET.as_bytes());
    tampered.extend_from_slice(b" ");
    let r = h
        .http
        .post(format!("{}/api/v1/whatsapp/webhook", h.base))
        .header("X-Hub-Signature-256", sig)
        .body(tampered)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    assert_settled(&h.graph, 0).await;
    let store = &h.server().state.store;
    let claimed = store
        .claim_inbox(&ClaimRequest::any(
            flowcore::Timestamp::from_unix_seconds(i64::from(u32::MAX)),
            Duration::from_secs(1),
            10,
        ))
        .await
        .unwrap();
    assert!(claimed.is_empty(), "a refused body reached the inbox");
}

#[tokio::test]
async fn oversized_bodies_get_413() {
    let h = Harness::start(&[("FLOWCORE_MAX_BODY_BYTES", "1024")]).await;
    let big = webhook(PNID_SUPPORT, vec![msg("12025550101", "wamid.BIG", &"x".repeat(2000))]);
    let r = h.post_webhook(&big).await;
    assert_eq!(r.status().as_u16(), 413);
    let err: Value = r.json().await.unwrap();
    assert_eq!(err["error"]["code"], "payload_too_large");
}

#[tokio::test]
async fn a_signed_text_is_answered_with_the_right_token_path_and_recipient() {
    let h = Harness::start(&[]).await;
    let r = h.post_webhook(&webhook(PNID_LEAD, vec![msg("12025550101", "wamid.A1", "oi")])).await;
    assert_eq!(r.status().as_u16(), 200);
    h.wait_sent(2).await;
    let requests = h.graph.received_requests().await.unwrap();
    for req in &requests {
        assert_eq!(req.url.path(), format!("/v21.0/{PNID_LEAD}/messages"));
        assert_eq!(req.headers.get("authorization").unwrap().to_str().unwrap(), format!("Bearer {GRAPH_TOKEN}"));
        let body: Value = serde_json::from_slice(&req.body).unwrap();
        assert_eq!(body["messaging_product"], "whatsapp");
        assert_eq!(body["to"], "12025550101");
    }
    assert_eq!(h.texts_to("12025550101").await, vec!["Olá! Aqui é a Acme.", "Qual é o seu nome?"]);
    assert_settled(&h.graph, 2).await;
}

#[tokio::test]
async fn the_sample_webhook_with_its_published_signature_is_accepted() {
    // The exact bytes and signature of the sample webhook corpus.
    let h = Harness::start(&[("META_APP_SECRET", "flowcore-test-app-secret")]).await;
    // flowcore-meta's fixture 01-text.json (its signature is in SIGNATURES.md beside it).
    let body =
        std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/../flowcore-meta/tests/fixtures/01-text.json")).unwrap();
    let r = h
        .http
        .post(format!("{}/api/v1/whatsapp/webhook", h.base))
        .header("X-Hub-Signature-256", "sha256=d6b69b878dcfc25e3fcad544c22102614e8fbbb82822f05c648f93ad855ab493")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let sent = h.wait_sent(1).await;
    assert_eq!(sent[0]["type"], "interactive", "the support menu answers with buttons");
}

#[tokio::test]
async fn a_duplicate_delivery_is_answered_once() {
    // The purge job runs continuously here: handled inbox rows are the duplicate filter
    // and must survive it.
    let h = Harness::start(&[("FLOWCORE_PURGE_INTERVAL_SECS", "0"), ("FLOWCORE_LEASE_MS", "200")]).await;
    let body = webhook(PNID_LEAD, vec![msg("12025550102", "wamid.DUP", "oi")]);
    assert_eq!(h.post_webhook(&body).await.status().as_u16(), 200);
    let second = h.post_webhook(&body).await;
    assert_eq!(second.status().as_u16(), 200);
    h.wait_sent(2).await;
    // Redelivered again after the first was processed (and a few purge runs).
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(h.post_webhook(&body).await.status().as_u16(), 200);
    assert_settled(&h.graph, 2).await;
}

#[tokio::test]
async fn multi_turn_state_carries_variables_across_messages() {
    let h = Harness::start(&[]).await;
    let c = "12025550103";
    let turns = [("oi", 2), ("Maria", 3), ("30", 4), ("maria@example.com", 5)];
    for (i, (text, total)) in turns.iter().enumerate() {
        h.post_webhook(&webhook(PNID_LEAD, vec![msg(c, &format!("wamid.MT{i}"), text)])).await;
        h.wait_sent(*total).await;
    }
    assert_eq!(
        h.texts_to(c).await,
        vec![
            "Olá! Aqui é a Acme.",
            "Qual é o seu nome?",
            "Prazer, Maria! Quantos anos você tem?",
            "Ótimo, Maria. Qual é o seu e-mail?",
            "Obrigado, Maria! Enviaremos a proposta para maria@example.com.",
        ]
    );
    // The flow ended: the next message starts it again.
    h.post_webhook(&webhook(PNID_LEAD, vec![msg(c, "wamid.MT9", "oi de novo")])).await;
    h.wait_sent(7).await;
    assert_eq!(h.texts_to(c).await[5], "Olá! Aqui é a Acme.");
}

#[tokio::test]
async fn three_messages_in_one_payload_are_answered_in_order() {
    let h = Harness::start(&[]).await;
    let c = "12025550104";
    let body =
        webhook(PNID_ECHO, vec![msg(c, "wamid.B1", "um"), msg(c, "wamid.B2", "dois"), msg(c, "wamid.B3", "tres")]);
    assert_eq!(h.post_webhook(&body).await.status().as_u16(), 200);
    h.wait_sent(5).await;
    assert_eq!(h.texts_to(c).await, vec!["Diga algo", "echo: dois", "Diga algo", "echo: tres", "Diga algo"]);
    assert_settled(&h.graph, 5).await;
}

#[tokio::test]
async fn routing_falls_back_then_replies_not_configured_and_ignores_unknown_numbers() {
    let h = Harness::start(&[]).await;
    // No default chatbot: acme's fallback chatbot (the lead flow) answers.
    h.post_webhook(&webhook(PNID_FALLBACK, vec![msg("12025550105", "wamid.F1", "oi")])).await;
    // An organization without chatbots: the polite reply.
    h.post_webhook(&webhook(PNID_NOBOT, vec![msg("12025550106", "wamid.F2", "oi")])).await;
    // Unknown business number: acknowledged (Meta must not retry) and ignored.
    let r = h.post_webhook(&webhook("999999999", vec![msg("12025550107", "wamid.F3", "oi")])).await;
    assert_eq!(r.status().as_u16(), 200);
    h.wait_sent(3).await;
    assert_eq!(h.texts_to("12025550105").await, vec!["Olá! Aqui é a Acme.", "Qual é o seu nome?"]);
    assert_eq!(h.texts_to("12025550106").await, vec![NOT_CONFIGURED]);
    let sent = h.sent().await;
    let nobot = sent.iter().position(|m| m["to"] == "12025550106").unwrap();
    let req = &h.graph.received_requests().await.unwrap()[nobot];
    assert_eq!(req.url.path(), format!("/v21.0/{PNID_NOBOT}/messages"), "the reply leaves from the number written to");
    assert!(h.texts_to("12025550107").await.is_empty());
    assert_settled(&h.graph, 3).await;
}

#[tokio::test]
async fn interactive_buttons_round_trip() {
    let h = Harness::start(&[]).await;
    let c = "12025550108";
    h.post_webhook(&webhook(PNID_SUPPORT, vec![msg(c, "wamid.I1", "Olá")])).await;
    let sent = h.wait_sent(1).await;
    let menu = &sent[0];
    assert_eq!(menu["type"], "interactive");
    assert_eq!(menu["interactive"]["type"], "button");
    assert_eq!(menu["interactive"]["body"]["text"], "Como podemos ajudar?");
    assert_eq!(menu["interactive"]["header"]["text"], "Atendimento");
    assert_eq!(menu["interactive"]["footer"]["text"], "Atendimento 24h");
    let ids: Vec<&str> = menu["interactive"]["action"]["buttons"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["reply"]["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["btn_suporte", "btn_vendas", "btn_status"]);
    // The contact taps "Vendas".
    h.post_webhook(&webhook(PNID_SUPPORT, vec![button(c, "wamid.I2", "btn_vendas", "Vendas")])).await;
    h.wait_sent(2).await;
    assert_eq!(h.texts_to(c).await[1], "Um consultor de vendas vai falar com você.");
}

#[tokio::test]
async fn delivery_statuses_are_recorded_against_the_sent_reply() {
    let h = Harness::start(&[]).await;
    let c = "12025550109";
    h.post_webhook(&webhook(PNID_ECHO, vec![msg(c, "wamid.S1", "oi")])).await;
    h.wait_sent(1).await;
    let store = h.server().state.store.clone();
    // The reply's wamid, as the Graph mock answered it.
    let mut outbox = None;
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while outbox.is_none() {
        assert!(std::time::Instant::now() < deadline, "the reply was never marked sent");
        for id in 1..20 {
            if let Ok(Some(row)) = store.get_outbox("globex", id).await {
                if row.wamid.is_some() {
                    outbox = Some(row);
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let row = outbox.unwrap();
    let wamid = row.wamid.clone().unwrap();
    assert!(wamid.starts_with("wamid.OUT-"));
    h.post_webhook(&status_webhook(PNID_ECHO, &wamid, "read", c)).await;
    h.post_webhook(&status_webhook(PNID_ECHO, &wamid, "delivered", c)).await;
    let row = store.get_outbox("globex", row.id).await.unwrap().unwrap();
    assert_eq!(row.delivery, Some(DeliveryStatus::Read), "statuses merge monotonically");
}

#[tokio::test]
async fn the_per_contact_rate_limit_drops_excess_messages() {
    let h = Harness::start(&[("FLOWCORE_RATE_LIMIT_PER_MINUTE", "2")]).await;
    let c = "12025550110";
    let body = webhook(PNID_ECHO, (0..4).map(|i| msg(c, &format!("wamid.RL{i}"), &format!("m{i}"))).collect());
    h.post_webhook(&body).await;
    h.wait_sent(3).await;
    assert_settled(&h.graph, 3).await;
    assert_eq!(h.texts_to(c).await, vec!["Diga algo", "echo: m1", "Diga algo"]);
    // Excess messages are still in the conversation's log, marked.
    let (status, conv) =
        h.admin(reqwest::Method::GET, Some(GLOBEX_TOKEN), &format!("/api/v1/conversations/{c}"), None).await;
    assert_eq!(status, 200);
    assert_eq!(texts_of(&conv, "user"), ["m0", "m1", "m2", "m3"]);
}

#[tokio::test]
async fn the_rate_limit_is_counted_in_the_shared_store_not_per_instance() {
    // Instance A runs two messages; instance B, on the same database, never saw them, and
    // still refuses the contact's next two within the minute.
    let mut h = Harness::start(&[("FLOWCORE_RATE_LIMIT_PER_MINUTE", "2")]).await;
    let c = "12025550112";
    h.post_webhook(&webhook(PNID_ECHO, vec![msg(c, "wamid.RS0", "m0"), msg(c, "wamid.RS1", "m1")])).await;
    h.wait_sent(3).await;
    h.stop().await;

    let mut env = base_env(&h.dir, &h.graph.uri());
    env.insert("FLOWCORE_RATE_LIMIT_PER_MINUTE".into(), "2".into());
    let b = start_server(env).await;
    let base_b = format!("http://{}", b.addr);
    let later = webhook(PNID_ECHO, vec![msg(c, "wamid.RS2", "m2"), msg(c, "wamid.RS3", "m3")]);
    assert_eq!(post_signed(&h.http, &base_b, &later, SECRET).await.status(), 200);
    let user_messages = || async {
        let conv = get_conversation(&h.http, &base_b, GLOBEX_TOKEN, c).await;
        conv["messages"].as_array().unwrap().iter().filter(|m| m["type"] == "user").count()
    };
    eventually(Duration::from_secs(15), "both later messages logged", || async { user_messages().await == 4 }).await;
    assert_settled(&h.graph, 3).await;
    assert_eq!(h.texts_to(c).await, vec!["Diga algo", "echo: m1", "Diga algo"]);
    b.shutdown().await;
}

#[tokio::test]
async fn an_idle_session_expires_after_the_ttl_and_the_flow_starts_again() {
    // A TTL of 0 hours: every session is expired by the time the next message comes, and
    // the purge job (running continuously here) deletes expired sessions.
    let h = Harness::start(&[
        ("CONVERSATION_SESSION_TTL_HOURS", "0"),
        ("FLOWCORE_PURGE_INTERVAL_SECS", "0"),
        ("FLOWCORE_LEASE_MS", "200"),
    ])
    .await;
    let c = "12025550111";
    h.post_webhook(&webhook(PNID_LEAD, vec![msg(c, "wamid.TTL1", "oi")])).await;
    h.wait_sent(2).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    h.post_webhook(&webhook(PNID_LEAD, vec![msg(c, "wamid.TTL2", "Maria")])).await;
    h.wait_sent(4).await;
    assert_eq!(
        h.texts_to(c).await,
        ["Olá! Aqui é a Acme.", "Qual é o seu nome?", "Olá! Aqui é a Acme.", "Qual é o seu nome?"],
        "the expired session did not carry on"
    );
}

#[tokio::test]
async fn with_the_insecure_opt_out_unsigned_webhooks_are_answered_and_each_logs_a_warning() {
    // The built binary, so the test reads the log an operator would see.
    let graph = wiremock::MockServer::start().await;
    mount_graph_ok(&graph).await;
    let dir = workdir(&graph.uri());
    let mut env = base_env(&dir, &graph.uri());
    env.remove("META_APP_SECRET");
    env.insert("FLOWCORE_INSECURE_SKIP_SIGNATURE".into(), "1".into());
    let server = BinaryServer::spawn(env, dir.join("insecure.log")).await;
    const AT_START: &str = "webhook signatures are NOT checked";
    const PER_REQUEST: &str = "webhook accepted WITHOUT signature verification";
    let warnings = |log: &str, what: &str| log.lines().filter(|l| l.contains(what) && l.contains("WARN")).count();
    let log = server.log_text();
    assert_eq!(warnings(&log, AT_START), 1, "no start-up warning:\n{log}");
    assert_eq!(warnings(&log, PER_REQUEST), 0, "{log}");

    let http = reqwest::Client::new();
    let c = "12025550113";
    let unsigned = |wamid: &str, text: &str| {
        http.post(format!("{}/api/v1/whatsapp/webhook", server.base))
            .header("content-type", "application/json")
            .body(webhook(PNID_ECHO, vec![msg(c, wamid, text)]))
            .send()
    };
    let r = unsigned("wamid.U1", "oi").await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let ack: Value = r.json().await.unwrap();
    assert_eq!(ack["inserted"], 1);
    wait_sent(&graph, 1, Duration::from_secs(15)).await;
    assert_eq!(unsigned("wamid.U2", "sem assinatura").await.unwrap().status().as_u16(), 200);
    let sent = wait_sent(&graph, 3, Duration::from_secs(15)).await;
    let texts: Vec<String> = sent.iter().map(message_text).collect();
    assert_eq!(texts, ["Diga algo", "echo: sem assinatura", "Diga algo"]);
    assert!(sent.iter().all(|m| m["to"] == c));

    // One warning per accepted request, at WARN level; the start-up one is not repeated.
    eventually(Duration::from_secs(10), "a warning for each unsigned request", || {
        let log = server.log_text();
        async move { warnings(&log, PER_REQUEST) >= 2 }
    })
    .await;
    let log = server.log_text();
    assert_eq!(warnings(&log, PER_REQUEST), 2, "{log}");
    assert_eq!(warnings(&log, AT_START), 1, "{log}");
    assert_settled(&graph, 3).await;
}

/// The active sessions of `contact` in acme, straight from the store.
async fn active_sessions_of(store: &std::sync::Arc<dyn flowcore_store::Store>, contact: &str) -> usize {
    let page = flowcore_store::Page::first(flowcore_store::Page::MAX_LIMIT);
    store.list_active_sessions("acme", page).await.unwrap().iter().filter(|s| s.key.contact_id == contact).count()
}

#[tokio::test]
async fn the_purge_job_deletes_expired_sessions_with_no_message_arriving() {
    // First life, default TTL (24 h): the lead flow leaves a session waiting at its question.
    let mut h = Harness::start(&[]).await;
    let old = "12025550114";
    h.post_webhook(&webhook(PNID_LEAD, vec![msg(old, "wamid.PJ1", "oi")])).await;
    h.wait_sent(2).await;
    let store = h.server().state.store.clone();
    eventually(Duration::from_secs(10), "the session is saved", || async {
        active_sessions_of(&store, old).await == 1
    })
    .await;
    h.stop().await;

    // Second life on the same database, with a TTL of 0 hours (every session is expired)
    // and a short purge interval. Nothing is sent to the server: only its periodic job can
    // delete the session (the worker closes an expired session only when a message comes).
    let mut env = base_env(&h.dir, &h.graph.uri());
    env.insert("CONVERSATION_SESSION_TTL_HOURS".into(), "0".into());
    env.insert("FLOWCORE_PURGE_INTERVAL_SECS".into(), "1".into());
    let server = start_server(env).await;
    let store = server.state.store.clone();
    eventually(Duration::from_secs(20), "the expired session is purged", || async {
        active_sessions_of(&store, old).await == 0
    })
    .await;

    // The job keeps running: a session saved after the purge at start-up expires (TTL 0)
    // and is deleted by a later run, again with no further message.
    let base = format!("http://{}", server.addr);
    let new = "12025550115";
    post_signed(&h.http, &base, &webhook(PNID_LEAD, vec![msg(new, "wamid.PJ2", "oi")]), SECRET).await;
    h.wait_sent(4).await;
    assert_eq!(h.texts_to(new).await, ["Olá! Aqui é a Acme.", "Qual é o seu nome?"], "the flow waits at a question");
    eventually(Duration::from_secs(20), "the later session is purged too", || async {
        active_sessions_of(&store, new).await == 0
    })
    .await;

    // Nothing was sent to either contact meanwhile, and the history is kept: only the
    // sessions went.
    assert_settled(&h.graph, 4).await;
    for contact in [old, new] {
        let conv = get_conversation(&h.http, &base, ACME_TOKEN, contact).await;
        let kinds: Vec<&str> =
            conv["messages"].as_array().unwrap().iter().map(|m| m["type"].as_str().unwrap()).collect();
        assert_eq!(kinds, ["user", "bot", "bot"], "{conv}");
    }
    server.shutdown().await;
}
