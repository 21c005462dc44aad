//! Shared helpers for flowcore's benchmarks: loading the sample flows and generating large ones.
#![forbid(unsafe_code)]

use std::path::PathBuf;

use serde_json::{json, Value};

/// The path of a sample flow in `../shared/samples/flows/` (the repository is checked out
/// with `shared/` beside it).
pub fn sample_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/samples/flows").join(name)
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
