//! The flow versions API: listing, reading, diffing and rolling back a flow's versions,
//! each scoped to the caller's organization.

mod server_support;

use reqwest::Method;
use serde_json::{json, Value};
use server_support::*;
use sha2::{Digest, Sha256};

/// The lead flow as the config ships it (version 1 at start).
fn lead_v1(h: &Harness) -> String {
    std::fs::read_to_string(h.dir.join("flows/lead.json")).unwrap()
}

/// Version 2: a new greeting, the name question moved on the canvas only, the age
/// question gone (its edges rerouted or removed) and an unreachable node (a warning).
fn lead_v2(h: &Harness) -> Value {
    let mut lead: Value = serde_json::from_str(&lead_v1(h)).unwrap();
    lead["nodes"][1]["data"]["content"] = json!("Bem-vindo à {{company}}!");
    lead["nodes"][2]["position"] = json!({"x": 300, "y": 300});
    let nodes = lead["nodes"].as_array_mut().unwrap();
    nodes.retain(|n| n["id"] != "ask_age");
    nodes.push(json!({"id": "orphan", "type": "message", "data": {"content": "Ninguém chega aqui."}}));
    let edges = lead["edges"].as_array_mut().unwrap();
    edges.retain(|e| e["id"] != "e4");
    for e in edges.iter_mut().filter(|e| e["id"] == "e3") {
        e["target"] = json!("adult");
    }
    edges.push(json!({"id": "e8", "source": "minor", "target": "bye"}));
    lead
}

fn sha256_hex(text: &str) -> String {
    Sha256::digest(text.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

/// GET as text (the version endpoint returns the stored JSON text itself).
async fn get_text(h: &Harness, token: &str, path: &str) -> (u16, String) {
    let resp = h.http.get(format!("{}{path}", h.base)).bearer_auth(token).send().await.unwrap();
    (resp.status().as_u16(), resp.text().await.unwrap())
}

/// The version list with its publish times checked and replaced by a placeholder (they
/// come from the wall clock), ready for a snapshot.
fn without_times(mut list: Value) -> Value {
    for v in list["versions"].as_array_mut().unwrap() {
        let at = v["published_at"].as_str().unwrap();
        assert!(at.len() == 24 && at.ends_with('Z') && at.as_bytes()[10] == b'T', "{at}");
        v["published_at"] = json!("[time]");
    }
    list
}

#[tokio::test]
async fn versions_are_listed_read_diffed_and_rolled_back() {
    let h = Harness::start(&[]).await;
    let (status, published) = h.admin(Method::POST, Some(ACME_TOKEN), "/api/v1/flows", Some(lead_v2(&h))).await;
    assert_eq!((status, published["version"].as_i64()), (201, Some(2)), "{published}");

    // The list: newest first, each with its hash and diagnostics counts.
    let (status, list) = h.admin(Method::GET, Some(ACME_TOKEN), "/api/v1/flows/lead/versions", None).await;
    assert_eq!(status, 200, "{list}");
    let (_, v1_text) = get_text(&h, ACME_TOKEN, "/api/v1/flows/lead/versions/1").await;
    let (status, v2_text) = get_text(&h, ACME_TOKEN, "/api/v1/flows/lead/versions/2").await;
    assert_eq!(status, 200);
    // Version 1 is the config file, byte for byte; version 2 what the API received.
    assert_eq!(v1_text, lead_v1(&h));
    assert_eq!(serde_json::from_str::<Value>(&v2_text).unwrap(), lead_v2(&h));
    assert_eq!(list["versions"][0]["content_hash"], sha256_hex(&v2_text));
    assert_eq!(list["versions"][1]["content_hash"], sha256_hex(&v1_text));
    insta::assert_json_snapshot!("lead_versions", without_times(list));

    let (status, diff) = h.admin(Method::GET, Some(ACME_TOKEN), "/api/v1/flows/lead/diff?from=1&to=2", None).await;
    assert_eq!(status, 200, "{diff}");
    insta::assert_json_snapshot!("lead_diff_1_2", diff);
    let (_, same) = h.admin(Method::GET, Some(ACME_TOKEN), "/api/v1/flows/lead/diff?from=2&to=2", None).await;
    assert_eq!(same["nodes"], json!({"added": [], "removed": [], "changed": []}));
    assert_eq!(same["edges"], json!({"added": [], "removed": [], "changed": []}));

    // New conversations start on version 2 ...
    h.post_webhook(&webhook(PNID_LEAD, vec![msg("12025550401", "wamid.V1", "oi")])).await;
    h.wait_sent(2).await;
    assert_eq!(h.texts_to("12025550401").await[0], "Bem-vindo à Acme!");

    // ... until version 1 is published again, as version 3, which they then start on.
    let (status, rolled) =
        h.admin(Method::POST, Some(ACME_TOKEN), "/api/v1/flows/lead/rollback", Some(json!({"version": 1}))).await;
    assert_eq!(status, 201, "{rolled}");
    assert_eq!(
        rolled,
        json!({"flow_id": "lead", "version": 3, "rolled_back_to": 1, "content_hash": sha256_hex(&v1_text)})
    );
    let (_, v3_text) = get_text(&h, ACME_TOKEN, "/api/v1/flows/lead/versions/3").await;
    assert_eq!(v3_text, v1_text);
    let (_, list) = h.admin(Method::GET, Some(ACME_TOKEN), "/api/v1/flows/lead/versions", None).await;
    let hashes: Vec<&str> =
        list["versions"].as_array().unwrap().iter().map(|v| v["content_hash"].as_str().unwrap()).collect();
    assert_eq!(list["latest"], 3);
    assert_eq!(hashes, [hashes[2], hashes[1], hashes[2]]);
    h.post_webhook(&webhook(PNID_LEAD, vec![msg("12025550402", "wamid.V2", "oi")])).await;
    h.wait_sent(4).await;
    assert_eq!(h.texts_to("12025550402").await[0], "Olá! Aqui é a Acme.");
    let (_, back) = h.admin(Method::GET, Some(ACME_TOKEN), "/api/v1/flows/lead/diff?from=2&to=3", None).await;
    assert_eq!(back["nodes"]["added"], diff["nodes"]["removed"]);
    assert_eq!(back["nodes"]["removed"], diff["nodes"]["added"]);
}

#[tokio::test]
async fn unknown_flows_versions_and_bad_requests_have_the_error_shape() {
    let h = Harness::start(&[]).await;
    let cases: &[(Method, &str, Option<Value>, u16, &str)] = &[
        (Method::GET, "/api/v1/flows/nope/versions", None, 404, "flow not found"),
        (Method::GET, "/api/v1/flows/nope/versions/1", None, 404, "flow not found"),
        (Method::GET, "/api/v1/flows/lead/versions/2", None, 404, "version 2 not found"),
        (Method::GET, "/api/v1/flows/lead/versions/0", None, 404, "version 0 not found"),
        (Method::GET, "/api/v1/flows/lead/versions/latest", None, 400, ""),
        (Method::GET, "/api/v1/flows/lead/diff?from=1", None, 400, ""),
        (Method::GET, "/api/v1/flows/lead/diff?from=1&to=x", None, 400, ""),
        (Method::GET, "/api/v1/flows/lead/diff?from=1&to=5", None, 404, "version 5 not found"),
        (Method::GET, "/api/v1/flows/nope/diff?from=1&to=1", None, 404, "flow not found"),
        (Method::POST, "/api/v1/flows/lead/rollback", Some(json!({"version": 7})), 404, "version 7 not found"),
        (Method::POST, "/api/v1/flows/nope/rollback", Some(json!({"version": 1})), 404, "flow not found"),
        (Method::POST, "/api/v1/flows/lead/rollback", Some(json!({"version": "1"})), 400, ""),
        (Method::POST, "/api/v1/flows/lead/rollback", Some(json!({"to": 1})), 400, ""),
        (Method::POST, "/api/v1/flows/lead/rollback", None, 400, ""),
    ];
    for (method, path, body, status, message) in cases {
        let (got, err) = h.admin(method.clone(), Some(ACME_TOKEN), path, body.clone()).await;
        assert_eq!(got, *status, "{method} {path}: {err}");
        let code = if *status == 404 { "not_found" } else { "bad_request" };
        assert_eq!(err["error"]["code"], code, "{method} {path}: {err}");
        assert!(err["error"]["message"].as_str().is_some_and(|m| m.contains(message)), "{method} {path}: {err}");
    }
    // Nothing above published a version.
    let (_, list) = h.admin(Method::GET, Some(ACME_TOKEN), "/api/v1/flows/lead/versions", None).await;
    assert_eq!(list["latest"], 1);
}

#[tokio::test]
async fn another_organization_sees_none_of_a_flows_versions() {
    let h = Harness::start(&[]).await;
    let own: &[(Method, &str, Option<Value>)] = &[
        (Method::GET, "/api/v1/flows/lead/versions", None),
        (Method::GET, "/api/v1/flows/lead/versions/1", None),
        (Method::GET, "/api/v1/flows/lead/diff?from=1&to=1", None),
        (Method::POST, "/api/v1/flows/lead/rollback", Some(json!({"version": 1}))),
    ];
    for (method, path, body) in own {
        for token in [None, Some("not-a-token")] {
            let (status, err) = h.admin(method.clone(), token, path, body.clone()).await;
            assert_eq!((status, err["error"]["code"].as_str()), (401, Some("unauthorized")), "{method} {path}");
        }
        // acme's flow does not exist for globex.
        let (status, err) = h.admin(method.clone(), Some(GLOBEX_TOKEN), path, body.clone()).await;
        assert_eq!((status, err["error"]["code"].as_str()), (404, Some("not_found")), "{method} {path}: {err}");
    }
    // globex's own flow of the same id is its own: one version, not acme's.
    let echo: Value = serde_json::from_str(&std::fs::read_to_string(h.dir.join("flows/echo.json")).unwrap()).unwrap();
    let (status, _) = h.admin(Method::POST, Some(GLOBEX_TOKEN), "/api/v1/flows?flow_id=lead", Some(echo)).await;
    assert_eq!(status, 201);
    let (_, theirs) = h.admin(Method::GET, Some(GLOBEX_TOKEN), "/api/v1/flows/lead/versions", None).await;
    let (_, ours) = h.admin(Method::GET, Some(ACME_TOKEN), "/api/v1/flows/lead/versions", None).await;
    assert_eq!((theirs["latest"].as_i64(), ours["latest"].as_i64()), (Some(1), Some(1)));
    assert_ne!(theirs["versions"][0]["content_hash"], ours["versions"][0]["content_hash"]);
    // Rolling back globex's flow leaves acme's alone.
    let (status, _) =
        h.admin(Method::POST, Some(GLOBEX_TOKEN), "/api/v1/flows/lead/rollback", Some(json!({"version": 1}))).await;
    assert_eq!(status, 201);
    let (_, ours) = h.admin(Method::GET, Some(ACME_TOKEN), "/api/v1/flows/lead/versions", None).await;
    assert_eq!(ours["latest"], 1);
}

/// A server whose config sets `move_sessions_to_latest = true` on acme's lead flow.
async fn moving_lead_server() -> Harness {
    let graph = wiremock::MockServer::start().await;
    mount_graph_ok(&graph).await;
    let dir = workdir(&graph.uri());
    let config = config_toml()
        .replace("path = \"flows/lead.json\"\n", "path = \"flows/lead.json\"\nmove_sessions_to_latest = true\n");
    assert!(config.contains("move_sessions_to_latest"));
    std::fs::write(dir.join("config.toml"), config).unwrap();
    let server = start_server(base_env(&dir, &graph.uri())).await;
    let base = format!("http://{}", server.addr);
    Harness { graph, dir, server: Some(server), base, http: reqwest::Client::new() }
}

#[tokio::test]
async fn with_the_option_running_conversations_move_to_the_newest_version_that_fits() {
    let h = moving_lead_server().await;
    let (ana, bia) = ("12025550411", "12025550412");
    h.post_webhook(&webhook(PNID_LEAD, vec![msg(ana, "wamid.M1", "oi"), msg(bia, "wamid.M2", "oi")])).await;
    h.wait_sent(4).await; // each: the greeting and the name question

    // v2 rewords the age question: Ana, waiting at the name question, moves to it.
    let mut lead: Value = serde_json::from_str(&lead_v1(&h)).unwrap();
    lead["nodes"][3]["data"]["content"] = json!("Prazer, {{name}}! Qual é a sua idade?");
    let (status, _) = h.admin(Method::POST, Some(ACME_TOKEN), "/api/v1/flows", Some(lead.clone())).await;
    assert_eq!(status, 201);
    h.post_webhook(&webhook(PNID_LEAD, vec![msg(ana, "wamid.M3", "Ana")])).await;
    h.wait_sent(5).await;
    assert_eq!(h.texts_to(ana).await.last().unwrap(), "Prazer, Ana! Qual é a sua idade?");

    // v3 renames the name question: Bia waits at a node v3 no longer has, so she stays on
    // the version she started on.
    lead["nodes"][2]["id"] = json!("ask_first_name");
    for e in lead["edges"].as_array_mut().unwrap() {
        for end in ["source", "target"] {
            if e[end] == "ask_name" {
                e[end] = json!("ask_first_name");
            }
        }
    }
    let (status, _) = h.admin(Method::POST, Some(ACME_TOKEN), "/api/v1/flows", Some(lead)).await;
    assert_eq!(status, 201);
    h.post_webhook(&webhook(PNID_LEAD, vec![msg(bia, "wamid.M4", "Bia")])).await;
    h.wait_sent(6).await;
    assert_eq!(h.texts_to(bia).await.last().unwrap(), "Prazer, Bia! Quantos anos você tem?");
}
