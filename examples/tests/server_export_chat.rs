//! `GET /api/v1/conversations/{phone}/export?format=chat`: real conversations, driven by
//! signed webhooks, exported as `.chat` files that pass against the flow they ran on.

mod server_support;

use flowcore::Flow;
use flowcore_examples::transcript::{parse_chat, Runner};
use reqwest::Method;
use serde_json::json;
use server_support::*;

/// The exported `.chat` text, fetched as the organization.
async fn export_chat(h: &Harness, contact: &str) -> String {
    let path = format!("/api/v1/conversations/{contact}/export?format=chat");
    let response = h.http.get(format!("{}{path}", h.base)).bearer_auth(ACME_TOKEN).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let content_type = response.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(content_type.starts_with("text/plain"), "{content_type}");
    response.text().await.unwrap()
}

/// Runs `chat` against the flow file the server loaded, asserting every conversation passes.
fn assert_replays(h: &Harness, flow_file: &str, chat: &str) {
    let text = std::fs::read_to_string(h.dir.join("flows").join(flow_file)).unwrap();
    let flow = Flow::from_json(&text).unwrap().compile().unwrap();
    let parsed = parse_chat(chat).unwrap_or_else(|e| panic!("the export parses: {e}\n{chat}"));
    let result = Runner::new(&flow).run("export.chat", &parsed);
    let reports: Vec<String> = result.failures().map(|f| f.report()).collect();
    assert!(result.passed(), "the export replays:\n{chat}\n{}", reports.join("\n"));
    assert!(!result.cases.is_empty());
}

/// The export with its `@now` (the server's clock) replaced, for the snapshot.
fn without_clock(chat: &str) -> String {
    chat.lines()
        .map(|line| if line.starts_with("@now ") { "@now [time of the first message]" } else { line })
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test]
async fn a_finished_lead_conversation_exports_as_a_passing_test() {
    let h = Harness::start(&[]).await;
    let c = "12025550301";
    let answers = ["oi", "Maria", "abc", "30", "maria@example.com"];
    let mut sent = 0;
    for (i, (answer, replies)) in answers.iter().zip([2, 1, 1, 1, 1]).enumerate() {
        h.post_webhook(&webhook(PNID_LEAD, vec![msg(c, &format!("wamid.X{i}"), answer)])).await;
        sent += replies;
        h.wait_sent(sent).await;
    }
    let chat = export_chat(&h, c).await;
    assert!(chat.contains("\n< Resposta inválida. Digite um número.\n"), "{chat}");
    assert!(chat.ends_with("< Obrigado, Maria! Enviaremos a proposta para maria@example.com.\n< (end)\n"), "{chat}");
    assert!(chat.contains("# flow lead, version 1 (the latest: the session has ended)\n"), "{chat}");
    assert_replays(&h, "lead.json", &chat);
    insta::assert_snapshot!("export_chat_lead", without_clock(&chat));
}

#[tokio::test]
async fn button_and_list_taps_export_as_events_and_an_operator_as_a_comment() {
    let h = Harness::start(&[]).await;
    let c = "12025550302";
    h.post_webhook(&webhook(PNID_SUPPORT, vec![msg(c, "wamid.Y1", "oi")])).await;
    h.wait_sent(1).await;
    h.post_webhook(&webhook(PNID_SUPPORT, vec![button(c, "wamid.Y2", "btn_suporte", "Suporte")])).await;
    h.wait_sent(2).await;
    let list_reply = json!({"from": c, "id": "wamid.Y3", "timestamp": "1780300900", "type": "interactive",
        "interactive": {"type": "list_reply", "list_reply": {"id": "billing", "title": "Financeiro"}}});
    h.post_webhook(&webhook(PNID_SUPPORT, vec![list_reply])).await;
    h.wait_sent(3).await;
    let path = format!("/api/v1/conversations/{c}/send");
    let (status, _) = h.admin(Method::POST, Some(ACME_TOKEN), &path, Some(json!({"text": "Oi, sou a Ana."}))).await;
    assert_eq!(status, 202);
    h.wait_sent(4).await;

    let chat = export_chat(&h, c).await;
    assert!(chat.contains("\n> {\"type\":\"button_reply\",\"id\":\"btn_suporte\",\"title\":\"Suporte\"}\n"), "{chat}");
    assert!(chat.contains("\n< (handoff billing)\n"), "{chat}");
    assert!(chat.contains("\n# operator: Oi, sou a Ana.\n"), "{chat}");
    assert!(chat.contains("# flow support, version 1 (the active session's)\n"), "{chat}");
    assert_replays(&h, "support_menu.json", &chat);
    insta::assert_snapshot!("export_chat_support", without_clock(&chat));
}

#[tokio::test]
async fn the_chat_export_is_scoped_to_the_organization() {
    let h = Harness::start(&[]).await;
    let c = "12025550303";
    h.post_webhook(&webhook(PNID_LEAD, vec![msg(c, "wamid.Z1", "oi")])).await;
    h.wait_sent(2).await;
    let path = format!("/api/v1/conversations/{c}/export?format=chat");
    assert_eq!(h.admin(Method::GET, None, &path, None).await.0, 401);
    let (status, body) = h.admin(Method::GET, Some(GLOBEX_TOKEN), &path, None).await;
    assert_eq!((status, body["error"]["code"].as_str()), (404, Some("not_found")), "{body}");
    let unknown = "/api/v1/conversations/19999999999/export?format=chat";
    assert_eq!(h.admin(Method::GET, Some(ACME_TOKEN), unknown, None).await.0, 404);
    let (status, body) =
        h.admin(Method::GET, Some(ACME_TOKEN), &format!("/api/v1/conversations/{c}/export?format=xml"), None).await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["message"], "format must be json, csv or chat");
}
