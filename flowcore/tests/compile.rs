//! Every compile-time diagnostic, error and warning, and the graph view.

mod common;

use flowcore::{Flow, Severity};
use serde_json::{json, Value};

/// A flow with a start node linked to `nodes[0]`, the nodes, and extra edges.
fn flow(nodes: Value, edges: Value) -> Flow {
    let mut all = vec![json!({"id": "start", "type": "start"})];
    all.extend(nodes.as_array().unwrap().iter().cloned());
    let mut es = vec![];
    if all.len() > 1 {
        es.push(json!({"id": "e0", "source": "start", "target": all[1]["id"]}));
    }
    es.extend(edges.as_array().unwrap().iter().cloned());
    serde_json::from_value(json!({"id": "t", "name": "t", "nodes": all, "edges": es})).unwrap()
}

/// The codes of all diagnostics (errors and warnings) of a flow.
fn codes(f: &Flow) -> Vec<(&'static str, Severity, Option<String>)> {
    let diags = match f.compile() {
        Ok(c) => c.warnings().to_vec(),
        Err(e) => e.diagnostics().to_vec(),
    };
    diags.into_iter().map(|d| (d.code, d.severity, d.node.clone())).collect()
}

fn has(f: &Flow, code: &str, severity: Severity, node: Option<&str>) {
    let found = codes(f);
    assert!(
        found.iter().any(|(c, s, n)| *c == code && *s == severity && n.as_deref() == node),
        "expected {severity:?} {code} at {node:?}, found {found:?}"
    );
}

fn end(id: &str) -> Value {
    json!({"id": id, "type": "end", "data": {"content": "fim"}})
}

#[test]
fn no_start_node() {
    let f: Flow = serde_json::from_value(json!({"nodes": [end("a")]})).unwrap();
    has(&f, "no-start-node", Severity::Error, None);
    let text = f.compile().unwrap_err().to_string();
    assert_eq!(text, "the flow has 1 error\n  error[no-start-node]: the flow has no start node");
}

#[test]
fn several_start_nodes() {
    let f = flow(json!([end("a"), {"id": "s2", "type": "start"}]), json!([{"id": "e", "source": "s2", "target": "a"}]));
    has(&f, "multiple-start-nodes", Severity::Error, Some("s2"));
}

#[test]
fn duplicate_node_ids() {
    let f = flow(json!([end("a"), end("a")]), json!([]));
    has(&f, "duplicate-node-id", Severity::Error, Some("a"));
}

#[test]
fn edges_to_and_from_missing_nodes() {
    let f = flow(
        json!([end("a")]),
        json!([{"id": "bad1", "source": "ghost", "target": "a"}, {"id": "bad2", "source": "a", "target": "nowhere"}]),
    );
    let err = f.compile().unwrap_err();
    let shown: Vec<String> = err.errors().map(|d| d.to_string()).collect();
    assert_eq!(
        shown,
        [
            r#"error[edge-unknown-source] edge "bad1": the edge leaves node "ghost", which does not exist"#,
            r#"error[edge-unknown-target] edge "bad2": the edge enters node "nowhere", which does not exist"#,
        ]
    );
}

#[test]
fn condition_without_both_branches() {
    let cond =
        json!({"id": "c", "type": "condition", "data": {"condition": {"variableName": "x", "operator": "exists"}}});
    let f = flow(json!([cond, end("a")]), json!([{"id": "e1", "source": "c", "target": "a", "label": "true"}]));
    has(&f, "condition-missing-branch", Severity::Error, Some("c"));
    // Branches from trueNodeId / falseNodeId are enough.
    let cond = json!({"id": "c", "type": "condition",
        "data": {"condition": {"variableName": "x", "operator": "exists"}, "trueNodeId": "a", "falseNodeId": "a"}});
    let f = flow(json!([cond, end("a")]), json!([]));
    assert!(f.compile().is_ok(), "{:?}", codes(&f));
    // ... and they must name real nodes.
    let cond = json!({"id": "c", "type": "condition",
        "data": {"condition": {"variableName": "x", "operator": "exists"}, "trueNodeId": "a", "falseNodeId": "zz"}});
    has(&flow(json!([cond, end("a")]), json!([])), "branch-target-missing", Severity::Error, Some("c"));
}

#[test]
fn question_and_interactive_without_variable_name() {
    let q = json!({"id": "q", "type": "question", "data": {"content": "?"}});
    has(
        &flow(json!([q, end("a")]), json!([{"id": "e", "source": "q", "target": "a"}])),
        "missing-variable-name",
        Severity::Error,
        Some("q"),
    );
    let b = json!({"id": "b", "type": "interactive_buttons", "data": {"content": "?", "buttons": [{"id": "x", "title": "X"}]}});
    has(
        &flow(json!([b, end("a")]), json!([{"id": "e", "source": "b", "target": "a"}])),
        "missing-variable-name",
        Severity::Error,
        Some("b"),
    );
}

#[test]
fn jump_to_missing_node() {
    let j = json!({"id": "j", "type": "jump", "data": {"targetNodeId": "nope"}});
    has(&flow(json!([j]), json!([])), "jump-target-missing", Severity::Error, Some("j"));
    let j = json!({"id": "j", "type": "jump", "data": {}});
    has(&flow(json!([j]), json!([])), "jump-target-missing", Severity::Error, Some("j"));
}

#[test]
fn invalid_regexes() {
    let q = json!({"id": "q", "type": "question", "data": {"content": "?", "variableName": "v", "validationType": "regex", "pattern": "([0-9"}});
    has(
        &flow(json!([q, end("a")]), json!([{"id": "e", "source": "q", "target": "a"}])),
        "invalid-regex",
        Severity::Error,
        Some("q"),
    );
    let c = json!({"id": "c", "type": "condition", "data": {"condition": {"variableName": "x", "operator": "matches", "value": "*"}, "trueNodeId": "a", "falseNodeId": "a"}});
    has(&flow(json!([c, end("a")]), json!([])), "invalid-regex", Severity::Error, Some("c"));
}

#[test]
fn whatsapp_interactive_limits() {
    let buttons = |items: Value| {
        let b = json!({"id": "b", "type": "interactive_buttons", "data": {"content": "?", "variableName": "v", "buttons": items}});
        flow(json!([b, end("a")]), json!([{"id": "e", "source": "b", "target": "a"}]))
    };
    let four: Vec<Value> = (0..4).map(|i| json!({"id": format!("b{i}"), "title": format!("B{i}")})).collect();
    has(&buttons(json!(four)), "too-many-buttons", Severity::Error, Some("b"));
    has(
        &buttons(json!([{"id": "x", "title": "a title that is far too long"}])),
        "button-title-too-long",
        Severity::Error,
        Some("b"),
    );
    has(
        &buttons(json!([{"id": "x", "title": "X"}, {"id": "x", "title": "Y"}])),
        "duplicate-option-id",
        Severity::Error,
        Some("b"),
    );
    has(&buttons(json!([])), "no-options", Severity::Error, Some("b"));
    assert!(buttons(json!([{"id": "x", "title": "exatamente vinte car"}])).compile().is_ok());

    let list = |sections: Value| {
        let l = json!({"id": "l", "type": "interactive_list", "data": {"content": "?", "variableName": "v", "sections": sections}});
        flow(json!([l, end("a")]), json!([{"id": "e", "source": "l", "target": "a"}]))
    };
    let rows = |n: usize, prefix: &str| -> Vec<Value> {
        (0..n).map(|i| json!({"id": format!("{prefix}{i}"), "title": format!("Row {i}")})).collect()
    };
    // Ten rows in total is the limit, across sections.
    assert!(list(json!([{"title": "A", "rows": rows(5, "a")}, {"title": "B", "rows": rows(5, "b")}]))
        .compile()
        .is_ok());
    has(
        &list(json!([{"title": "A", "rows": rows(6, "a")}, {"title": "B", "rows": rows(5, "b")}])),
        "too-many-list-rows",
        Severity::Error,
        Some("l"),
    );
    has(
        &list(json!([{"rows": [{"id": "r", "title": "a row title longer than 24"}]}])),
        "row-title-too-long",
        Severity::Error,
        Some("l"),
    );
    has(
        &list(json!([{"rows": [{"id": "r", "title": "ok", "description": "d".repeat(73)}]}])),
        "row-description-too-long",
        Severity::Error,
        Some("l"),
    );
}

#[test]
fn unknown_node_type() {
    has(&flow(json!([{"id": "x", "type": "teleport"}]), json!([])), "unknown-node-type", Severity::Error, Some("x"));
}

#[test]
fn other_field_errors() {
    let cases = [
        (json!({"id": "x", "type": "message", "data": {}}), "missing-content"),
        (json!({"id": "x", "type": "message", "data": {"content": 5, "mediaUrl": ["no"]}}), "invalid-field"),
        (
            json!({"id": "x", "type": "question", "data": {"variableName": "v", "validationType": "telepathy"}}),
            "unknown-validation-type",
        ),
        (
            json!({"id": "x", "type": "question", "data": {"variableName": "v", "validationType": "regex"}}),
            "missing-pattern",
        ),
        (json!({"id": "x", "type": "question", "data": {"variableName": "v", "maxRetries": -1}}), "invalid-field"),
        (
            json!({"id": "x", "type": "question", "data": {"variableName": "v", "validationType": "options"}}),
            "no-options",
        ),
        (json!({"id": "x", "type": "condition", "data": {}}), "invalid-condition"),
        (
            json!({"id": "x", "type": "condition", "data": {"condition": {"variableName": "a", "operator": "like"}}}),
            "invalid-condition",
        ),
        (
            json!({"id": "x", "type": "set_variable", "data": {"variableName": "v", "expression": "1 +"}}),
            "invalid-expression",
        ),
        (json!({"id": "x", "type": "set_variable", "data": {"value": 1}}), "missing-variable-name"),
        (json!({"id": "x", "type": "delay", "data": {}}), "missing-field"),
        (json!({"id": "x", "type": "api_call", "data": {}}), "missing-field"),
        (json!({"id": "x", "type": "ai_prompt", "data": {}}), "missing-field"),
        (json!({"id": "x", "type": "database_query", "data": {}}), "missing-field"),
        (json!({"id": "x", "type": "script", "data": {}}), "missing-field"),
        (json!({"id": "x", "type": "action", "data": {}}), "missing-field"),
        (json!({"id": "x", "type": "analytics", "data": {}}), "missing-field"),
        (json!({"id": "x", "type": "whatsapp_template", "data": {}}), "missing-field"),
        (json!({"id": "x", "type": "random", "data": {}}), "random-without-branches"),
        (json!({"id": "x", "type": "datetime", "data": {"utcOffset": "Mars"}}), "invalid-field"),
        (json!({"id": "x", "type": "datetime", "data": {"businessHours": {"open": "9h"}}}), "invalid-field"),
    ];
    for (node, code) in cases {
        let id = node["id"].as_str().unwrap().to_string();
        let f = flow(json!([node]), json!([]));
        let found = codes(&f);
        assert!(
            found.iter().any(|(c, s, n)| *c == code && *s == Severity::Error && n.as_deref() == Some(&id)),
            "{code}: {found:?}"
        );
    }
}

#[test]
fn warns_about_unreachable_nodes() {
    let f = flow(json!([end("a"), end("island")]), json!([]));
    let compiled = f.compile().unwrap();
    let w: Vec<String> = compiled.warnings().iter().map(|d| d.to_string()).collect();
    assert_eq!(w, [r#"warning[unreachable-node] node "island": no path from the start node reaches this node"#]);
}

#[test]
fn warns_about_cycles_that_never_wait_and_names_them() {
    let m = |id: &str| json!({"id": id, "type": "message", "data": {"content": id}});
    let f = flow(
        json!([m("a"), m("b"), {"id": "c", "type": "jump", "data": {"targetNodeId": "a"}}]),
        json!([{"id": "e1", "source": "a", "target": "b"}, {"id": "e2", "source": "b", "target": "c"}]),
    );
    let compiled = f.compile().unwrap();
    let loops: Vec<&str> =
        compiled.warnings().iter().filter(|d| d.code == "loop-without-input").map(|d| d.message.as_str()).collect();
    assert_eq!(loops.len(), 1);
    assert!(loops[0].contains("a → b → c"), "{}", loops[0]);
    // A cycle through a question waits for input: no warning.
    let q = json!({"id": "q", "type": "question", "data": {"content": "?", "variableName": "v"}});
    let f = flow(
        json!([m("a"), q]),
        json!([{"id": "e1", "source": "a", "target": "q"}, {"id": "e2", "source": "q", "target": "a"}]),
    );
    assert!(f.compile().unwrap().warnings().iter().all(|d| d.code != "loop-without-input"));
    // A node that jumps to itself.
    let f = flow(json!([{"id": "j", "type": "jump", "data": {"targetNodeId": "j"}}]), json!([]));
    has(&f, "loop-without-input", Severity::Warning, Some("j"));
}

#[test]
fn warns_about_variables_never_written() {
    let m = json!({"id": "m", "type": "message", "data": {"content": "{{ nick }} {{company}} {{order.status}}"}});
    let f: Flow = serde_json::from_value(json!({
        "id": "t", "variables": {"company": "Acme"},
        "nodes": [{"id": "start", "type": "start"}, m,
                  {"id": "api", "type": "api_call", "data": {"url": "https://x", "responseVariable": "order"}}],
        "edges": [{"id": "e0", "source": "start", "target": "api"}, {"id": "e1", "source": "api", "target": "m"}]
    }))
    .unwrap();
    let compiled = f.compile().unwrap();
    let w: Vec<String> = compiled.warnings().iter().map(|d| d.to_string()).collect();
    assert_eq!(
        w,
        [
            r#"warning[undefined-variable] node "m": reads {{nick}}, which no node sets and the flow's `variables` do not declare"#
        ]
    );
}

#[test]
fn warns_about_edges_the_engine_never_follows() {
    let f = flow(json!([end("a"), end("b")]), json!([{"id": "extra", "source": "a", "target": "b"}]));
    has(&f, "unused-edge", Severity::Warning, Some("a"));
}

#[test]
fn graph_lists_nodes_and_every_link_with_labels() {
    let flow = common::sample("support_menu.json");
    let g = flow.graph();
    assert_eq!(g.nodes.len(), 12);
    assert!(g.nodes.iter().any(|n| n.id.as_str() == "start" && n.is_start && n.kind == "start"));
    let ask = g.nodes.iter().find(|n| n.id.as_str() == "ask_order").unwrap();
    assert_eq!(ask.text, "Digite o número do pedido: → order_id");
    let found = g.nodes.iter().find(|n| n.id.as_str() == "found").unwrap();
    assert_eq!(found.text, "order.status exists");
    let links: Vec<(String, String, Option<String>)> =
        g.links.iter().map(|l| (l.from.to_string(), l.to.to_string(), l.label.clone())).collect();
    for expected in [
        ("menu", "support_list", Some("btn_suporte")),
        ("menu", "sales_tag", Some("btn_vendas")),
        ("ask_order", "give_up", Some("invalid")),
        ("ask_order", "lookup", None),
        ("lookup", "found", Some("success")),
        ("found", "status_msg", Some("true")),
        ("found", "not_found", Some("false")),
        ("not_found", "menu", None),
    ] {
        let e = (expected.0.to_string(), expected.1.to_string(), expected.2.map(str::to_string));
        assert!(links.contains(&e), "missing {e:?} in {links:?}");
    }
    // Links implied by trueNodeId / falseNodeId appear too.
    let cond = json!({"id": "c", "type": "condition",
        "data": {"condition": {"variableName": "x", "operator": "exists"}, "trueNodeId": "a", "falseNodeId": "b"}});
    let g = flow_graph(json!([cond, end("a"), end("b")]));
    assert!(g.contains(&("c".into(), "a".into(), Some("true".into()))));
    assert!(g.contains(&("c".into(), "b".into(), Some("false".into()))));
}

fn flow_graph(nodes: Value) -> Vec<(String, String, Option<String>)> {
    let f = flow(nodes, json!([])).compile().unwrap();
    f.graph().links.iter().map(|l| (l.from.to_string(), l.to.to_string(), l.label.clone())).collect()
}

#[test]
fn compiled_flow_is_cheap_to_share() {
    fn assert_send_sync<T: Send + Sync + Clone>() {}
    assert_send_sync::<flowcore::CompiledFlow>();
    let flow = common::sample("lead.json");
    let copy = flow.clone();
    assert_eq!(copy.id(), "lead");
    assert_eq!(copy.name(), "Qualificação de leads");
    assert_eq!(copy.node_count(), 8);
    assert!(copy.contains_node("bye") && !copy.contains_node("nope"));
    assert_eq!(copy.start_node().as_str(), "start");
}
