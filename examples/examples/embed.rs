//! A host application that embeds flowcore's durable pipeline: a SQLite store, one flow, a
//! signed webhook in (delivered twice, as Meta may), the replies captured by a recording
//! transport instead of the Graph API. Exits 0 only when each reply went out exactly once.
//!
//! ```text
//! cargo run -p flowcore-examples --example embed
//! ```

use std::sync::Arc;
use std::time::Duration;

use flowcore_meta::runtime::{accept_webhook, WhatsAppDelivery};
use flowcore_meta::{sign, verify_signature, RecordingTransport, RetryPolicy};
use flowcore_store::runtime::{compile, OneFlow, Runtime, Stats};
use flowcore_store::{SqliteOptions, SqliteStore, Store};

const APP_SECRET: &str = "flowcore-test-app-secret";
const NUMBER: &str = "106000000000001";
const FLOW: &str = include_str!("../flows/lead.json");

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let url = format!("sqlite://{}", dir.path().join("embed.db").display());
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&url, SqliteOptions::default()).await?);

    // Replies go to a recording transport; in production, `ReqwestTransport::new()`.
    let transport = RecordingTransport::default();
    let delivery = WhatsAppDelivery::new(transport.clone(), RetryPolicy::default()).number(NUMBER, "token", 80);
    let runtime = Runtime::builder(store.clone(), Arc::new(delivery), Arc::new(OneFlow::new("lead")))
        .organization("acme")
        .build()
        .await?;
    runtime.flows().install("acme", "lead", FLOW, compile(FLOW).map_err(|p| p.lines.join("\n"))?).await?;
    let running = runtime.start()?;

    // What Meta posts to the webhook, signed with the app secret.
    let body = format!(
        r#"{{"object":"whatsapp_business_account","entry":[{{"id":"1","changes":[{{"field":"messages","value":{{
        "messaging_product":"whatsapp","metadata":{{"display_phone_number":"13125550100","phone_number_id":"{NUMBER}"}},
        "contacts":[{{"profile":{{"name":"Ana"}},"wa_id":"5511999990000"}}],
        "messages":[{{"from":"5511999990000","id":"wamid.EMBED1","timestamp":"1780300800","type":"text","text":{{"body":"oi"}}}}]}}}}]}}]}}"#
    );
    let signature = sign(body.as_bytes(), APP_SECRET.as_bytes());
    for _ in 0..2 {
        // Your HTTP handler: verify, accept, and only then answer 200.
        verify_signature(body.as_bytes(), Some(&signature), &[APP_SECRET])?;
        let report = accept_webhook(&runtime, body.as_bytes(), |_number| Some("acme".to_owned())).await?;
        println!("webhook: {} new, {} duplicate", report.inserted, report.duplicates);
    }

    // The flow answers "oi" with two messages; wait for them, then a little longer for any
    // that should not come.
    for _ in 0..500 {
        if Stats::get(&runtime.stats().sent) >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    running.shutdown().await;
    store.close().await;

    let mut texts = Vec::new();
    for request in transport.requests() {
        let sent: serde_json::Value = serde_json::from_slice(&request.body)?;
        let text = sent["text"]["body"].as_str().unwrap_or_default().to_owned();
        println!("reply to {}: {text}", sent["to"]);
        texts.push(text);
    }
    let mut unique = texts.clone();
    unique.sort();
    unique.dedup();
    if texts.len() != 2 || unique.len() != texts.len() {
        return Err(format!("expected two replies, each once; got {texts:?}").into());
    }
    println!("each reply went out exactly once");
    Ok(())
}
