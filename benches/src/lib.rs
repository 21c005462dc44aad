//! Shared helpers for flowcore's benchmarks: loading the sample flows and generating large ones.
#![forbid(unsafe_code)]

use std::path::PathBuf;

use flowcore::{CompiledFlow, Flow, Input, Session, SessionOptions, Timestamp};
use serde_json::{json, Value};

/// The customer's side of the lead sample's conversation: greeting, name, age, e-mail.
pub const LEAD_TURNS: [&str; 4] = ["oi", "Maria", "30", "maria@example.com"];

/// The lead sample flow, compiled.
///
/// # Panics
///
/// When the sample cannot be read or does not compile: benchmarks cannot run without it.
pub fn lead_flow() -> CompiledFlow {
    Flow::from_json(&sample_text("lead.json")).unwrap().compile().unwrap()
}

/// One whole lead conversation ([`LEAD_TURNS`]) from a new session, at `now`: the engine
/// bench's `lead_conversation/4_turns`, and the load bench's reference of the machine's speed.
///
/// ```
/// let flow = flowcore_benches::lead_flow();
/// let now = flowcore::Timestamp::from_unix_seconds(1_700_000_000);
/// let session = flowcore_benches::lead_conversation(&flow, now);
/// assert_eq!(session.variable("name").and_then(|v| v.as_str()), Some("Maria"));
/// ```
///
/// # Panics
///
/// When a turn fails: the sample's conversation is known to run.
pub fn lead_conversation(flow: &CompiledFlow, now: Timestamp) -> Session {
    let mut session = Session::new(flow, SessionOptions::default());
    for text in LEAD_TURNS {
        let turn = session.handle(flow, Input::text(text), now).unwrap();
        std::hint::black_box(turn);
    }
    session
}

/// The path of a sample flow in `flowcore/tests/flows/`, the engine's sample set.
pub fn sample_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../flowcore/tests/flows").join(name)
}

/// The text of a sample flow.
///
/// # Panics
///
/// When the file cannot be read: benchmarks cannot run without their inputs.
pub fn sample_text(name: &str) -> String {
    let path = sample_path(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// A generated flow of about `nodes` nodes, shaped like the builder's output: stages of
/// ten messages, a question, a condition and two branches of messages that meet again.
pub fn generated_flow(nodes: usize) -> Value {
    let mut ns = vec![json!({"id": "start", "type": "start", "position": {"x": 0, "y": 0}, "data": {}})];
    let mut es = Vec::new();
    let mut prev = "start".to_string();
    let mut stage = 0;
    let link = |es: &mut Vec<Value>, a: &str, b: &str, label: Option<&str>| {
        es.push(
            json!({"id": format!("e{}", es.len()), "source": a, "target": b, "label": label, "sourceHandle": label}),
        );
    };
    while ns.len() + 16 < nodes {
        for m in 0..10 {
            let id = format!("s{stage}_m{m}");
            ns.push(json!({"id": id, "type": "message", "position": {"x": 0, "y": ns.len() * 100},
                "data": {"content": format!("[{stage}.{m}] Mensagem {m} da etapa {stage}, {{{{name}}}}.")}}));
            link(&mut es, &prev, &id, None);
            prev = id;
        }
        let q = format!("s{stage}_q");
        ns.push(json!({"id": q, "type": "question", "data": {"content": "Seu nome?", "variableName": "name"}}));
        link(&mut es, &prev, &q, None);
        let c = format!("s{stage}_c");
        ns.push(json!({"id": c, "type": "condition",
            "data": {"condition": {"variableName": "name", "operator": "==", "value": "Maria"}}}));
        link(&mut es, &q, &c, None);
        let join = format!("s{stage}_j");
        for (branch, label) in [("t", "true"), ("f", "false")] {
            let a = format!("s{stage}_{branch}0");
            let b = format!("s{stage}_{branch}1");
            ns.push(json!({"id": a, "type": "message", "data": {"content": format!("{label} {{{{name}}}}")}}));
            ns.push(json!({"id": b, "type": "message", "data": {"content": "..."}}));
            link(&mut es, &c, &a, Some(label));
            link(&mut es, &a, &b, None);
            link(&mut es, &b, &join, None);
        }
        ns.push(json!({"id": join, "type": "message", "data": {"content": "Seguimos."}}));
        prev = join;
        stage += 1;
    }
    ns.push(json!({"id": "end", "type": "end", "data": {"content": "Fim, {{name}}."}}));
    link(&mut es, &prev, "end", None);
    json!({"id": format!("gen{nodes}"), "name": "generated", "nodes": ns, "edges": es})
}

#[cfg(test)]
mod tests {
    use flowcore::{Message, Output};

    use super::*;

    /// The texts a turn sends.
    fn texts(turn: &flowcore::Turn) -> Vec<String> {
        turn.outputs
            .iter()
            .map(|output| match output {
                Output::Send { message: Message::Text { text }, .. } => text.clone(),
                other => panic!("only texts expected, got {other:?}"),
            })
            .collect()
    }

    /// The load bench's flow answers each message once, after the first: what the bench
    /// counts as a message's reply.
    #[test]
    fn the_load_bench_flow_answers_each_message_once() {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("flows/echo_once.json");
        let flow = Flow::from_json(&std::fs::read_to_string(path).unwrap()).unwrap().compile().unwrap();
        let now = Timestamp::from_unix_seconds(1_700_000_000);
        let mut session = Session::new(&flow, SessionOptions::default());
        assert_eq!(texts(&session.handle(&flow, Input::text("oi"), now).unwrap()), ["Diga algo"]);
        for text in ["um", "dois", "três"] {
            assert_eq!(texts(&session.handle(&flow, Input::text(text), now).unwrap()), [format!("echo: {text}")]);
        }
    }
}
