//! The admin API: tenant isolation on every endpoint, conversation shape, manual sends,
//! handoff and close, export, analytics, flow publishing, and the OpenAPI document.

mod server_support;

use std::collections::BTreeSet;

use axum::body::Body;
use axum::http::Request;
use flowcore_examples::server::http::{app, ROUTES};
use reqwest::Method;
use serde_json::{json, Value};
use server_support::*;
use tower::ServiceExt;

/// Every admin endpoint, with a `{phone}` to fill in.
const ADMIN: &[(&str, &str)] = &[
    ("GET", "/api/v1/conversations"),
    ("GET", "/api/v1/conversations/{phone}"),
    ("POST", "/api/v1/conversations/{phone}/send"),
    ("POST", "/api/v1/conversations/{phone}/close"),
    ("GET", "/api/v1/conversations/{phone}/export?format=json"),
    ("GET", "/api/v1/conversations/{phone}/export?format=csv"),
    ("GET", "/api/v1/analytics/conversations"),
    ("GET", "/api/v1/analytics/metrics"),
    ("POST", "/api/v1/flows"),
];

fn body_for(path: &str) -> Option<Value> {
    if path.ends_with("/send") {
        Some(json!({"text": "Olá, aqui é um atendente."}))
    } else if path.ends_with("/flows") {
        Some(
            serde_json::from_str(
                &std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/server_flows/echo.json")).unwrap(),
            )
            .unwrap(),
        )
    } else {
        None
    }
}

#[tokio::test]
async fn every_admin_endpoint_is_tenant_scoped() {
    let h = Harness::start(&[]).await;
    let acme_contact = "12025550201";
    let globex_contact = "12025550202";
    h.post_webhook(&webhook(PNID_LEAD, vec![msg(acme_contact, "wamid.T1", "oi")])).await;
    h.post_webhook(&webhook(PNID_ECHO, vec![msg(globex_contact, "wamid.T2", "oi")])).await;
    h.wait_sent(3).await;

    for (method, path) in ADMIN {
        let method = Method::from_bytes(method.as_bytes()).unwrap();
        let own = path.replace("{phone}", acme_contact);
        // No token, a wrong token: 401 with the error shape.
        for token in [None, Some("not-a-token")] {
            let (status, body) = h.admin(method.clone(), token, &own, body_for(path)).await;
            assert_eq!(status, 401, "{method} {own} with {token:?}");
            assert_eq!(body["error"]["code"], "unauthorized", "{method} {own}");
            assert!(body["error"]["message"].is_string());
        }
        if path.contains("{phone}") {
            // Another organization's conversation does not exist for globex.
            let (status, body) = h.admin(method.clone(), Some(GLOBEX_TOKEN), &own, body_for(path)).await;
            assert_eq!(status, 404, "{method} {own} as globex: {body}");
            assert_eq!(body["error"]["code"], "not_found");
        }
    }

    // Listings only show the caller's own conversations.
    let (_, acme) = h.admin(Method::GET, Some(ACME_TOKEN), "/api/v1/conversations", None).await;
    let (_, globex) = h.admin(Method::GET, Some(GLOBEX_TOKEN), "/api/v1/conversations", None).await;
    let phones = |v: &Value| {
        v["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["phone_number"].as_str().unwrap().to_owned())
            .collect::<Vec<_>>()
    };
    assert_eq!(phones(&acme), [acme_contact]);
    assert_eq!(phones(&globex), [globex_contact]);
    assert_eq!(acme["total"], 1);
    // Analytics count only the caller's messages.
    let (_, acme_m) = h.admin(Method::GET, Some(ACME_TOKEN), "/api/v1/analytics/metrics", None).await;
    let (_, globex_m) = h.admin(Method::GET, Some(GLOBEX_TOKEN), "/api/v1/analytics/metrics", None).await;
    assert_eq!((acme_m["messages_in"].as_u64(), acme_m["messages_out"].as_u64()), (Some(1), Some(2)));
    assert_eq!((globex_m["messages_in"].as_u64(), globex_m["messages_out"].as_u64()), (Some(1), Some(1)));
    let (_, acme_c) = h.admin(Method::GET, Some(ACME_TOKEN), "/api/v1/analytics/conversations", None).await;
    let flows: Vec<&str> =
        acme_c["per_flow"].as_array().unwrap().iter().map(|f| f["flow_id"].as_str().unwrap()).collect();
    assert_eq!(flows, ["lead"]);
    // A flow published by globex is not acme's.
    let (status, published) =
        h.admin(Method::POST, Some(GLOBEX_TOKEN), "/api/v1/flows?flow_id=shared", body_for("/flows")).await;
    assert_eq!(status, 201, "{published}");
    let store = &h.server().state.store;
    assert!(store.get_flow("globex", "shared", None).await.unwrap().is_some());
    assert!(store.get_flow("acme", "shared", None).await.unwrap().is_none());
    // The owner's own calls work.
    let (status, _) =
        h.admin(Method::GET, Some(ACME_TOKEN), &format!("/api/v1/conversations/{acme_contact}"), None).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn conversation_shape_send_handoff_close_and_export() {
    let h = Harness::start(&[]).await;
    let c = "12025550203";
    // Support menu → Suporte → list → "tech" → handoff.
    h.post_webhook(&webhook(PNID_SUPPORT, vec![msg(c, "wamid.H1", "oi")])).await;
    h.wait_sent(1).await;
    h.post_webhook(&webhook(PNID_SUPPORT, vec![button(c, "wamid.H2", "btn_suporte", "Suporte")])).await;
    h.wait_sent(2).await;
    let list_reply = json!({"from": c, "id": "wamid.H3", "timestamp": "1780300900", "type": "interactive",
        "interactive": {"type": "list_reply", "list_reply": {"id": "tech", "title": "Suporte técnico"}}});
    h.post_webhook(&webhook(PNID_SUPPORT, vec![list_reply])).await;
    h.wait_sent(3).await;
    assert_eq!(h.texts_to(c).await[2], "Vou te transferir para um atendente.");
    // Handed off: the bot stays silent.
    h.post_webhook(&webhook(PNID_SUPPORT, vec![msg(c, "wamid.H4", "alô?")])).await;
    assert_settled(&h.graph, 3).await;

    // A human answers through the API, via the outbox.
    let (status, queued) = h
        .admin(
            Method::POST,
            Some(ACME_TOKEN),
            &format!("/api/v1/conversations/{c}/send"),
            Some(json!({"text": "Oi, sou a Ana."})),
        )
        .await;
    assert_eq!(status, 202, "{queued}");
    h.wait_sent(4).await;
    assert_eq!(h.texts_to(c).await[3], "Oi, sou a Ana.");
    let (status, bad) = h
        .admin(Method::POST, Some(ACME_TOKEN), &format!("/api/v1/conversations/{c}/send"), Some(json!({"txt": 1})))
        .await;
    assert_eq!(status, 400);
    assert_eq!(bad["error"]["code"], "bad_request");

    let (status, conv) = h.admin(Method::GET, Some(ACME_TOKEN), &format!("/api/v1/conversations/{c}"), None).await;
    assert_eq!(status, 200);
    assert_eq!(conv["phone_number"], c);
    assert_eq!(conv["flow_id"], "support");
    let messages = conv["messages"].as_array().unwrap();
    let kinds: Vec<&str> = messages.iter().map(|m| m["type"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["user", "bot", "user", "bot", "user", "bot", "user", "bot"]);
    assert_eq!(messages[0]["text"], "oi");
    assert_eq!(messages[1]["text"], "Como podemos ajudar?");
    assert_eq!(messages[6]["text"], "alô?");
    assert_eq!(messages[7]["text"], "Oi, sou a Ana.");
    for m in messages {
        let ts = m["timestamp"].as_str().unwrap();
        assert!(ts.ends_with('Z') && ts.len() == 24, "{ts}");
    }

    // Export.
    let (status, json_export) =
        h.admin(Method::GET, Some(ACME_TOKEN), &format!("/api/v1/conversations/{c}/export?format=json"), None).await;
    assert_eq!(status, 200);
    assert_eq!(json_export, conv);
    let (status, csv) =
        h.admin(Method::GET, Some(ACME_TOKEN), &format!("/api/v1/conversations/{c}/export?format=csv"), None).await;
    assert_eq!(status, 200);
    let csv = csv.as_str().unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines[0], "timestamp,type,text,flow_id");
    assert_eq!(lines.len(), 9);
    assert!(lines[1].ends_with(",user,oi,support"), "{}", lines[1]);
    let (status, _) =
        h.admin(Method::GET, Some(ACME_TOKEN), &format!("/api/v1/conversations/{c}/export?format=xml"), None).await;
    assert_eq!(status, 400);

    // Close ends the handoff: the next message starts the flow again.
    let (status, closed) =
        h.admin(Method::POST, Some(ACME_TOKEN), &format!("/api/v1/conversations/{c}/close"), None).await;
    assert_eq!(status, 200);
    assert_eq!(closed["closed_sessions"], 1);
    h.post_webhook(&webhook(PNID_SUPPORT, vec![msg(c, "wamid.H5", "oi de novo")])).await;
    h.wait_sent(5).await;
    assert_eq!(h.texts_to(c).await[4], "Como podemos ajudar?");
}

#[tokio::test]
async fn publishing_a_flow_creates_a_version_or_returns_diagnostics() {
    let h = Harness::start(&[]).await;
    let broken =
        json!({"id": "broken", "nodes": [{"id": "a", "type": "message", "data": {"content": "x"}}], "edges": []});
    let (status, err) = h.admin(Method::POST, Some(ACME_TOKEN), "/api/v1/flows", Some(broken)).await;
    assert_eq!(status, 422);
    assert_eq!(err["error"]["code"], "invalid_flow");
    let diags = err["error"]["diagnostics"].as_array().unwrap();
    assert!(diags.iter().any(|d| d["code"] == "no-start-node"), "{err}");

    // A new version of the lead flow: new sessions use it.
    let mut lead: Value =
        serde_json::from_str(&std::fs::read_to_string(h.dir.join("flows/lead.json")).unwrap()).unwrap();
    lead["nodes"][1]["data"]["content"] = json!("Bem-vindo à {{company}}!");
    let (status, ok) = h.admin(Method::POST, Some(ACME_TOKEN), "/api/v1/flows", Some(lead)).await;
    assert_eq!(status, 201, "{ok}");
    assert_eq!(ok["flow_id"], "lead");
    assert_eq!(ok["version"], 2);
    h.post_webhook(&webhook(PNID_LEAD, vec![msg("12025550204", "wamid.P1", "oi")])).await;
    h.wait_sent(2).await;
    assert_eq!(h.texts_to("12025550204").await[0], "Bem-vindo à Acme!");
}

#[tokio::test]
async fn paging_and_errors_have_the_documented_shape() {
    let h = Harness::start(&[]).await;
    for i in 0..3 {
        h.post_webhook(&webhook(PNID_ECHO, vec![msg(&format!("1202555030{i}"), &format!("wamid.PG{i}"), "oi")])).await;
    }
    h.wait_sent(3).await;
    let (status, page) = h.admin(Method::GET, Some(GLOBEX_TOKEN), "/api/v1/conversations?skip=1&limit=1", None).await;
    assert_eq!(status, 200);
    assert_eq!(page["total"], 3);
    assert_eq!(page["items"].as_array().unwrap().len(), 1);
    assert_eq!((page["skip"].as_u64(), page["limit"].as_u64()), (Some(1), Some(1)));
    let (status, err) = h.admin(Method::GET, Some(GLOBEX_TOKEN), "/api/v1/conversations?limit=0", None).await;
    assert_eq!(status, 400);
    assert_eq!(err["error"]["code"], "bad_request");
    let (status, err) = h.admin(Method::GET, Some(GLOBEX_TOKEN), "/api/v1/nope", None).await;
    assert_eq!(status, 404);
    assert_eq!(err["error"]["code"], "not_found");
    let (status, _) = h.admin(Method::GET, None, "/healthz", None).await;
    assert_eq!(status, 200);
    let (status, ready) = h.admin(Method::GET, None, "/readyz", None).await;
    assert_eq!(status, 200);
    assert_eq!(ready["store"], "sqlite");
}

#[tokio::test]
async fn the_openapi_document_matches_the_router() {
    let h = Harness::start(&[]).await;
    let (status, doc) = h.admin(Method::GET, None, "/api/v1/openapi.json", None).await;
    assert_eq!(status, 200);
    let mut documented = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            documented.insert((method.clone(), path.clone()));
        }
    }
    let routes: BTreeSet<(String, String)> = ROUTES.iter().map(|(m, p)| (m.to_string(), p.to_string())).collect();
    assert_eq!(documented, routes, "the document lists exactly the routes");

    // Every documented route exists in the router (not 404/405), driven without a socket,
    // and a method the document does not list is refused with 405.
    let router = app(h.server().state.clone());
    for (method, path) in &routes {
        let uri = path.replace("{phone}", "12025550999");
        let req = Request::builder().method(method.to_uppercase().as_str()).uri(&uri).body(Body::empty()).unwrap();
        let status = router.clone().oneshot(req).await.unwrap().status().as_u16();
        assert!(status != 404 && status != 405, "{method} {uri} is documented but answers {status}");
        let other = if method == "get" { "DELETE" } else { "PUT" };
        let req = Request::builder().method(other).uri(&uri).body(Body::empty()).unwrap();
        let status = router.clone().oneshot(req).await.unwrap().status().as_u16();
        assert_eq!(status, 405, "{other} {uri} is not documented but answers {status}");
    }
}

#[tokio::test]
async fn ab_variants_are_stable_per_contact_and_reported_in_analytics() {
    let h = Harness::start(&[]).await;
    let contacts: Vec<String> = (0..20).map(|i| format!("120255507{i:02}")).collect();
    for (i, c) in contacts.iter().enumerate() {
        h.post_webhook(&webhook(PNID_AB, vec![msg(c, &format!("wamid.AB{i}a"), "oi")])).await;
    }
    // Every contact got the greeting of its variant; a second message stays on it.
    let mut lead = Vec::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let sent = h.sent().await;
        let answered = contacts.iter().filter(|c| sent.iter().any(|m| m["to"] == c.as_str())).count();
        if answered == contacts.len() {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "only {answered} contacts answered");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    for c in &contacts {
        let texts = h.texts_to(c).await;
        if texts[0] == "Olá! Aqui é a Acme." {
            lead.push(c.clone());
        } else {
            assert_eq!(texts[0], "Como podemos ajudar?", "{c}: {texts:?}");
        }
    }
    assert!(
        !lead.is_empty() && lead.len() < contacts.len(),
        "both variants are used: {} of {} on lead",
        lead.len(),
        contacts.len()
    );
    let c = &lead[0];
    h.post_webhook(&webhook(PNID_AB, vec![msg(c, "wamid.AB-again", "Maria")])).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while h.texts_to(c).await.len() < 3 {
        assert!(std::time::Instant::now() < deadline, "no answer to the second message");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(h.texts_to(c).await[2], "Prazer, Maria! Quantos anos você tem?", "the contact stayed on its variant");
    // The variants' flows also run for chatbots outside the test: those sessions are not
    // the test's.
    let outsiders = ["5511900000001", "5511900000002"];
    h.post_webhook(&webhook(PNID_LEAD, vec![msg(outsiders[0], "wamid.AB-out-lead", "oi")])).await;
    h.post_webhook(&webhook(PNID_SUPPORT, vec![msg(outsiders[1], "wamid.AB-out-support", "oi")])).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    for o in outsiders {
        while h.texts_to(o).await.is_empty() {
            assert!(std::time::Instant::now() < deadline, "{o} not answered");
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    let (status, analytics) = h.admin(Method::GET, Some(ACME_TOKEN), "/api/v1/analytics/conversations", None).await;
    assert_eq!(status, 200);
    let test = analytics["ab_tests"].as_array().unwrap().iter().find(|t| t["chatbot"] == "ab-bot").unwrap().clone();
    let count = |flow: &str| {
        test["variants"].as_array().unwrap().iter().find(|v| v["flow_id"] == flow).unwrap()["conversations"]
            .as_u64()
            .unwrap()
    };
    assert_eq!(count("lead") as usize, lead.len());
    assert_eq!(count("support") as usize, contacts.len() - lead.len());
    let variant =
        |flow: &str| test["variants"].as_array().unwrap().iter().find(|v| v["flow_id"] == flow).unwrap().clone();
    assert_eq!(
        (variant("lead")["active"].as_u64(), variant("lead")["closed"].as_u64()),
        (Some(lead.len() as u64), Some(0))
    );
    // Per flow, every session counts, the outsiders' too.
    let per_flow = |flow: &str| {
        analytics["per_flow"].as_array().unwrap().iter().find(|f| f["flow_id"] == flow).unwrap()["conversations"]
            .as_u64()
            .unwrap()
    };
    assert_eq!(per_flow("lead") as usize, lead.len() + 1);
    assert_eq!(per_flow("support") as usize, contacts.len() - lead.len() + 1);
}

#[tokio::test]
async fn readyz_answers_503_with_the_error_shape_when_the_store_is_unreachable() {
    let h = Harness::start(&[]).await;
    let (status, ready) = h.admin(Method::GET, None, "/readyz", None).await;
    assert_eq!((status, &ready["status"]), (200, &json!("ready")));
    // The store goes away under the running server (closed through the test's handle:
    // every later call fails as a store that cannot be reached does).
    h.server().state.store.close().await;
    let r = h.http.get(format!("{}/readyz", h.base)).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 503);
    assert!(r.headers()["content-type"].to_str().unwrap().starts_with("application/json"));
    let err: Value = r.json().await.unwrap();
    assert_eq!(err["error"]["code"], "unavailable", "{err}");
    assert!(!err["error"]["message"].as_str().unwrap().is_empty(), "{err}");
    assert_eq!(err.as_object().unwrap().len(), 1, "only the error object: {err}");
    // Liveness does not depend on the store: the process is up, just not ready.
    let (status, _) = h.admin(Method::GET, None, "/healthz", None).await;
    assert_eq!(status, 200);
    // And the API reports the store's absence the same way instead of failing obscurely.
    let (status, err) = h.admin(Method::GET, Some(ACME_TOKEN), "/api/v1/conversations", None).await;
    assert_eq!(status, 503, "{err}");
    assert_eq!(err["error"]["code"], "unavailable", "{err}");
}
