//! flowcore-meta: signature check + parse of webhook bodies, beside a plain
//! `serde_json::Value` parse of the same bytes.
//!
//! Run: `cargo bench -p flowcore-benches --bench webhook`

use std::time::Duration;

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use flowcore_meta::{parse, sign, verify_signature};
use serde_json::{json, Value};

const SECRET: &str = "flowcore-test-app-secret";

fn one_message() -> Vec<u8> {
    include_bytes!("../../flowcore-meta/tests/fixtures/01-text.json").to_vec()
}

/// A realistic busy delivery: 50 messages of mixed types from 10 contacts, as Meta
/// batches them (pretty-printed like the samples).
fn fifty_messages() -> Vec<u8> {
    let contacts: Vec<Value> = (0..10)
        .map(|i| {
            json!({ "profile": { "name": format!("Cliente {i}") }, "wa_id": format!("120255501{i:02}"),
                    "user_id": format!("US.10000000000000001{i:02}") })
        })
        .collect();
    let messages: Vec<Value> = (0..50)
        .map(|i| {
            let from = format!("120255501{:02}", i % 10);
            let base = json!({ "from": from, "id": format!("wamid.RkFLRS9pbi0w{i:04}"), "timestamp": format!("{}", 1_780_300_800 + i) });
            let mut m = base.as_object().unwrap().clone();
            match i % 5 {
                0 | 1 => {
                    m.insert("type".into(), json!("text"));
                    m.insert("text".into(), json!({ "body": format!("Olá, mensagem número {i}, quero falar com o suporte técnico") }));
                }
                2 => {
                    m.insert("type".into(), json!("interactive"));
                    m.insert("context".into(), json!({ "from": "13125550100", "id": "wamid.RkFLRS9vdXQtMDAwMQ==" }));
                    m.insert("interactive".into(), json!({ "type": "button_reply", "button_reply": { "id": "btn_suporte", "title": "Suporte" } }));
                }
                3 => {
                    m.insert("type".into(), json!("image"));
                    m.insert("image".into(), json!({ "caption": "Foto do produto", "mime_type": "image/jpeg",
                        "sha256": "TEj8/lrRJ88YKu3yyq81+4jgA7T2Lkm9gUg+IzGZX4w=", "id": format!("14500000000{i:05}") }));
                }
                _ => {
                    m.insert("type".into(), json!("location"));
                    m.insert("location".into(), json!({ "latitude": -23.5613991, "longitude": -46.6565712,
                        "name": "Loja Exemplo Centro", "address": "Av. Exemplo, 1000, São Paulo" }));
                }
            }
            Value::Object(m)
        })
        .collect();
    let body = json!({ "object": "whatsapp_business_account", "entry": [{ "id": "102000000000001", "changes": [{
        "field": "messages",
        "value": { "messaging_product": "whatsapp",
                   "metadata": { "display_phone_number": "13125550100", "phone_number_id": "106000000000001" },
                   "contacts": contacts, "messages": messages } }] }] });
    serde_json::to_vec_pretty(&body).unwrap()
}

fn webhook(c: &mut Criterion) {
    let bodies = [("1-message", one_message()), ("50-messages", fifty_messages())];
    let mut group = c.benchmark_group("webhook");
    group.warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3)).sample_size(30);
    for (name, body) in &bodies {
        let header = sign(body, SECRET.as_bytes());
        let expected = parse(body).unwrap().len();
        group.throughput(Throughput::Bytes(body.len() as u64));
        group.bench_with_input(BenchmarkId::new("verify+parse", name), body, |b, body| {
            b.iter(|| {
                verify_signature(black_box(body), Some(&header), &[SECRET]).unwrap();
                let webhook = parse(black_box(body)).unwrap();
                assert_eq!(webhook.len(), expected);
                webhook
            })
        });
        group.bench_with_input(BenchmarkId::new("parse", name), body, |b, body| {
            b.iter(|| parse(black_box(body)).unwrap())
        });
        group.bench_with_input(BenchmarkId::new("serde_json::Value", name), body, |b, body| {
            b.iter(|| serde_json::from_slice::<Value>(black_box(body)).unwrap())
        });
        group.bench_with_input(BenchmarkId::new("verify", name), body, |b, body| {
            b.iter(|| verify_signature(black_box(body), Some(&header), &[SECRET]).unwrap())
        });
    }
    group.finish();
}

criterion_group!(benches, webhook);
criterion_main!(benches);
