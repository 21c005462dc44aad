//! Flows built from the builder's vocabulary (every node type, plausible data, edges with
//! labels and handles), compiled and run: reaches deeper into the engine than mutated JSON.
#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use flowcore::Flow;
use flowcore_fuzz::{run_script, Driver, Json, OPERATORS};
use libfuzzer_sys::fuzz_target;
use serde_json::{json, Value};

const KINDS: &[&str] = &[
    "start",
    "message",
    "question",
    "end",
    "condition",
    "jump",
    "random",
    "set_variable",
    "action",
    "handoff",
    "delay",
    "api_call",
    "ai_prompt",
    "database_query",
    "script",
    "whatsapp_template",
    "interactive_buttons",
    "interactive_list",
    "analytics",
    "datetime",
];
const HANDLES: &[&str] =
    &["true", "false", "invalid", "timeout", "success", "failure", "open", "closed", "a", "b", "50%"];
const VARS: &[&str] = &["name", "age", "order", "order.status", "items.0.name", "count", "x"];
const VALIDATIONS: &[&str] = &["text", "number", "email", "phone", "regex", "options", "weird"];

#[derive(Arbitrary, Debug)]
struct GenNode {
    kind: u8,
    content: Option<String>,
    variable: Option<u8>,
    validation: Option<u8>,
    pattern: Option<String>,
    max_retries: Option<u8>,
    timeout_seconds: Option<u16>,
    operator: u8,
    value: Json,
    options: Vec<(u8, String)>,
    target: Option<u8>,
    seconds: Option<u16>,
    expression: Option<String>,
    extra: Vec<(String, Json)>,
}

#[derive(Arbitrary, Debug)]
struct GenEdge {
    source: u8,
    target: u8,
    handle: Option<u8>,
    label_only: bool,
}

#[derive(Arbitrary, Debug)]
struct GenFlow {
    nodes: Vec<GenNode>,
    edges: Vec<GenEdge>,
    variables: Vec<(u8, Json)>,
}

fn node_json(index: usize, node: &GenNode, count: usize) -> Value {
    let kind = if index == 0 { "start" } else { KINDS[node.kind as usize % KINDS.len()] };
    let var = node.variable.map(|v| VARS[v as usize % VARS.len()]);
    let mut data = serde_json::Map::new();
    if let Some(content) = &node.content {
        data.insert("content".into(), content.clone().into());
    }
    if let Some(var) = var {
        data.insert("variableName".into(), var.into());
        data.insert("responseVariable".into(), var.into());
    }
    if let Some(v) = node.validation {
        data.insert("validationType".into(), VALIDATIONS[v as usize % VALIDATIONS.len()].into());
    }
    if let Some(pattern) = &node.pattern {
        data.insert("pattern".into(), pattern.clone().into());
    }
    if let Some(retries) = node.max_retries {
        data.insert("maxRetries".into(), retries.into());
    }
    if let Some(timeout) = node.timeout_seconds {
        data.insert("timeoutSeconds".into(), timeout.into());
    }
    if let Some(seconds) = node.seconds {
        data.insert("seconds".into(), seconds.into());
    }
    if let Some(expression) = &node.expression {
        data.insert("expression".into(), expression.clone().into());
    }
    if let Some(target) = node.target {
        data.insert("targetNodeId".into(), format!("n{}", target as usize % count.max(1)).into());
    }
    data.insert(
        "condition".into(),
        json!({"variableName": var.unwrap_or("x"), "operator": OPERATORS.get(node.operator as usize % (OPERATORS.len() + 1)).copied().unwrap_or("bogus"), "value": node.value.to_value()}),
    );
    data.insert("value".into(), node.value.to_value());
    let options: Vec<Value> =
        node.options.iter().map(|(id, title)| json!({"id": format!("o{id}"), "title": title})).collect();
    data.insert("buttons".into(), Value::Array(options.clone()));
    data.insert("options".into(), Value::Array(options.clone()));
    data.insert("sections".into(), json!([{"title": "S", "rows": options}]));
    data.insert("url".into(), "https://api.example.test/{{name}}".into());
    for (key, value) in &node.extra {
        data.insert(key.clone(), value.to_value());
    }
    json!({"id": format!("n{index}"), "type": kind, "data": data})
}

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let Ok(generated) = GenFlow::arbitrary(&mut u) else { return };
    let count = generated.nodes.len().clamp(1, 64);
    let nodes: Vec<Value> = generated.nodes.iter().take(64).enumerate().map(|(i, n)| node_json(i, n, count)).collect();
    let edges: Vec<Value> = generated
        .edges
        .iter()
        .take(128)
        .enumerate()
        .map(|(i, e)| {
            let handle = e.handle.map(|h| {
                let h = h as usize;
                if h % 2 == 0 {
                    HANDLES[h / 2 % HANDLES.len()].to_string()
                } else {
                    format!("o{}", h / 2)
                }
            });
            let (label, source_handle) = if e.label_only { (handle, None) } else { (None, handle) };
            json!({"id": format!("e{i}"), "source": format!("n{}", e.source as usize % count),
                   "target": format!("n{}", e.target as usize % count), "label": label, "sourceHandle": source_handle})
        })
        .collect();
    let variables: serde_json::Map<String, Value> =
        generated.variables.iter().map(|(k, v)| (VARS[*k as usize % VARS.len()].to_string(), v.to_value())).collect();
    let flow = json!({"id": "generated", "name": "generated", "variables": variables, "nodes": nodes, "edges": edges});
    let Ok(flow) = Flow::from_json(&flow.to_string()) else { return };
    let Ok(compiled) = flow.compile() else { return };
    let seed = u.arbitrary::<u64>().unwrap_or(0);
    let mut driver = Driver::new(&compiled, seed);
    run_script(&mut driver, &mut u, 16);
});
