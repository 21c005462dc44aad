//! flowcore engine benchmarks. Run: `cargo bench -p flowcore-benches --bench engine`.
//!
//! Throughput is reported in elements per second: turns for conversations, nodes for
//! compile.

use criterion::{black_box, criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use flowcore::{Flow, Input, Session, SessionOptions, Timestamp};
use flowcore_benches::{generated_flow, lead_conversation, lead_flow, sample_text, LEAD_TURNS};
use serde_json::Value;

fn conversation(c: &mut Criterion) {
    let flow = lead_flow();
    let now = Timestamp::from_unix_seconds(1_700_000_000);
    let mut group = c.benchmark_group("lead_conversation");
    group.throughput(Throughput::Elements(LEAD_TURNS.len() as u64));
    group.bench_function("4_turns", |b| b.iter(|| lead_conversation(&flow, now)));
    group.bench_function("4_turns_json_round_trip", |b| {
        b.iter(|| {
            let mut stored = serde_json::to_vec(&Session::new(&flow, SessionOptions::default())).unwrap();
            for text in LEAD_TURNS {
                let mut session: Session = serde_json::from_slice(&stored).unwrap();
                let turn = session.handle(&flow, Input::text(text), now).unwrap();
                black_box(turn);
                stored.clear();
                serde_json::to_writer(&mut stored, &session).unwrap();
            }
            stored
        })
    });
    group.finish();
}

fn big_script(c: &mut Criterion) {
    let flow = Flow::from_json(&sample_text("big.json")).unwrap().compile().unwrap();
    let script: Value = serde_json::from_str(&sample_text("big.script.json")).unwrap();
    let turns: Vec<String> =
        script["conversation"]["turns"].as_array().unwrap().iter().map(|t| t.as_str().unwrap().to_string()).collect();
    let now = Timestamp::from_unix_seconds(1_700_000_000);
    let mut group = c.benchmark_group("big_flow");
    group.throughput(Throughput::Elements(turns.len() as u64));
    group.bench_function("script_25_turns", |b| {
        b.iter(|| {
            let mut session = Session::new(&flow, SessionOptions::default());
            for text in &turns {
                let turn = session.handle(&flow, Input::text(text.as_str()), now).unwrap();
                black_box(turn);
            }
            session
        })
    });
    group.finish();
}

fn compile(c: &mut Criterion) {
    let mut group = c.benchmark_group("compile");
    for nodes in [1_000usize, 10_000, 100_000] {
        let flow: Flow = serde_json::from_value(generated_flow(nodes)).unwrap();
        assert!(flow.compile().is_ok());
        group.throughput(Throughput::Elements(flow.nodes.len() as u64));
        if nodes >= 10_000 {
            group.sample_size(10);
        }
        group.bench_function(format!("{nodes}_nodes"), |b| {
            b.iter_batched_ref(|| (), |_| flow.compile().unwrap(), BatchSize::SmallInput)
        });
    }
    group.finish();
}

criterion_group!(benches, conversation, big_script, compile);
criterion_main!(benches);
