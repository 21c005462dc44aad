//! Determinism, proven by property tests: random flows × random inputs replay exactly,
//! a JSON round-trip of the state between any two inputs changes nothing, and nothing
//! panics.

use flowcore::{EffectId, EffectOutcome, Flow, Input, MediaKind, Session, SessionOptions, Timestamp};
use proptest::prelude::*;
use serde_json::{json, Value};

const TEXTS: &[&str] = &["oi", "Maria", "30", "9", "a@b.com", "+55 11 99999-9999", "1", "x", "ABC-1234", "{{v0}}", ""];
const OPS: &[&str] =
    &["==", "!=", ">", ">=", "<", "<=", "contains", "starts_with", "matches", "exists", "is_empty", "in"];
const VALIDATIONS: &[&str] = &["text", "number", "email", "phone", "regex", "options"];

/// One generated node: a type and some small numbers that pick its settings and targets.
type NodeSeed = (u8, u8, u8, u8, u8);

fn node_json(i: usize, n: usize, (kind, a, b, c, d): NodeSeed) -> (Value, Vec<Value>) {
    let id = format!("n{i}");
    let t = |x: u8| format!("n{}", 1 + x as usize % (n - 1));
    let var = format!("v{}", a % 3);
    let edge = |k: &str, target: String, handle: Option<&str>| json!({"id": format!("{id}-{k}"), "source": id, "target": target, "sourceHandle": handle});
    let mut edges = vec![];
    let data = match kind % 15 {
        0 => {
            edges.push(edge("d", t(b), None));
            json!({"type": "message", "data": {"content": format!("m{i} {{{{{var}}}}} {{{{v1.k}}}}")}})
        }
        1 => {
            edges.push(edge("d", t(b), None));
            if c % 2 == 0 {
                edges.push(edge("i", t(c), Some("invalid")));
            }
            if d % 3 == 0 {
                edges.push(edge("t", t(d), Some("timeout")));
            }
            let validation = VALIDATIONS[a as usize % VALIDATIONS.len()];
            let timeout = if d % 2 == 0 { Some(60 * (1 + d as u64)) } else { None };
            json!({"type": "question", "data": {"content": format!("q{i}?"), "variableName": var,
                "validationType": validation, "pattern": "^[A-Z]{3}-[0-9]{4}$",
                "options": ["Maria", {"value": "o1", "label": "x"}], "maxRetries": c % 4,
                "timeoutSeconds": timeout}})
        }
        2 => {
            edges.push(edge("t", t(b), Some("true")));
            edges.push(edge("f", t(c), Some("false")));
            let (op, value) = (OPS[d as usize % OPS.len()], TEXTS[b as usize % TEXTS.len()]);
            json!({"type": "condition", "data": {"condition": {"any": [
                {"variableName": var, "operator": op, "value": value},
                {"variableName": "v2", "operator": "==", "value": "{{v0}}", "caseSensitive": c % 2 == 0}]}}})
        }
        3 => json!({"type": "jump", "data": {"targetNodeId": t(b)}}),
        4 => {
            edges.push(
                json!({"id": format!("{id}-a"), "source": id, "target": t(b), "label": format!("{}%", 1 + c % 90)}),
            );
            edges.push(json!({"id": format!("{id}-b"), "source": id, "target": t(d), "weight": 1 + a % 5}));
            json!({"type": "random"})
        }
        5 => {
            edges.push(edge("d", t(b), None));
            if c % 2 == 0 {
                json!({"type": "set_variable", "data": {"variableName": var, "expression": "v0 * 2 + v1 - 3 / v2"}})
            } else {
                json!({"type": "set_variable", "data": {"variableName": var, "value": {"k": "{{v0}}-{{v2}}"}}})
            }
        }
        6 => {
            edges.push(edge("s", t(b), Some("success")));
            if c % 2 == 0 {
                edges.push(edge("f", t(c), Some("failure")));
            }
            let kinds = ["api_call", "ai_prompt", "database_query", "script", "action"];
            let kind = kinds[d as usize % 5];
            json!({"type": kind, "data": {"url": "https://x.test/{{v0}}", "prompt": "p {{v1}}",
                "query": "q", "code": "c", "action": "a{{v2}}", "responseVariable": var}})
        }
        7 | 13 => {
            edges.push(edge("o0", t(b), Some("o0")));
            if c % 2 == 0 {
                edges.push(edge("d", t(c), None));
            }
            if d % 2 == 0 {
                edges.push(edge("i", t(d), Some("invalid")));
            }
            let options = json!([{"id": "o0", "title": "Maria"}, {"id": "o1", "title": "Outro"}]);
            if kind % 15 == 7 {
                json!({"type": "interactive_buttons", "data": {"content": "b {{v0}}", "variableName": var, "buttons": options, "maxRetries": a % 3}})
            } else {
                json!({"type": "interactive_list", "data": {"content": "l", "variableName": var, "sections": [{"title": "S", "rows": options}],
                    "timeoutSeconds": 30}})
            }
        }
        8 => {
            edges.push(edge("d", t(b), None));
            json!({"type": "delay", "data": {"seconds": 1 + c as u64 * 10}})
        }
        9 => {
            edges.push(edge("o", t(b), Some("open")));
            edges.push(edge("c", t(c), Some("closed")));
            json!({"type": "datetime", "data": {"variableName": var, "businessHours": {"utcOffset": -3, "open": "09:00", "close": "18:00"}}})
        }
        10 => {
            edges.push(edge("d", t(b), None));
            json!({"type": "analytics", "data": {"event": "e{{v0}}"}})
        }
        11 => json!({"type": "end", "data": {"content": "fim {{v0}}"}}),
        12 => json!({"type": "handoff", "data": {"queue": "{{v1}}"}}),
        _ => {
            edges.push(edge("d", t(b), None));
            json!({"type": "whatsapp_template", "data": {"templateName": "t", "components": [{"text": "{{v0}}"}]}})
        }
    };
    let mut node = data;
    node["id"] = json!(id);
    (node, edges)
}

fn build_flow(seeds: &[NodeSeed]) -> Option<flowcore::CompiledFlow> {
    let n = seeds.len() + 1;
    let mut nodes = vec![json!({"id": "n0", "type": "start"})];
    let mut edges = vec![json!({"id": "s", "source": "n0", "target": "n1"})];
    for (i, seed) in seeds.iter().enumerate() {
        let (node, es) = node_json(i + 1, n, *seed);
        nodes.push(node);
        edges.extend(es);
    }
    let flow: Flow = serde_json::from_value(json!({"id": "p", "nodes": nodes, "edges": edges})).ok()?;
    flow.compile().ok()
}

fn input(kind: u8, param: u8) -> Input {
    match kind % 6 {
        0 | 1 => Input::text(TEXTS[param as usize % TEXTS.len()]),
        2 => Input::Choice { id: ["o0", "o1", "zz"][param as usize % 3].into(), title: None },
        3 => Input::Tick,
        4 => Input::EffectResult {
            id: EffectId(u64::from(param % 6)),
            result: if param % 3 == 0 {
                EffectOutcome::Failure("boom".into())
            } else {
                EffectOutcome::Success(json!({"k": param, "list": [1, 2]}))
            },
        },
        _ => Input::Media {
            kind: MediaKind::Image,
            id: "m".into(),
            mime_type: None,
            caption: Some("Maria".into()),
            filename: None,
        },
    }
}

/// Runs the inputs; returns every result (outputs or error) and the final state.
fn run(flow: &flowcore::CompiledFlow, seed: u64, inputs: &[(u8, u8, u16)], round_trip: bool) -> (Vec<String>, Session) {
    let options = SessionOptions { seed, max_steps: 40, ttl_millis: 3_600_000, ..Default::default() };
    let mut session = Session::new(flow, options);
    let mut now = Timestamp::from_unix_seconds(1_700_000_000);
    let mut log = Vec::new();
    for &(kind, param, dt) in inputs {
        now = now.saturating_add_seconds(u64::from(dt) * 7);
        // Often feed the effect the session waits for, so flows get past effects.
        let input = match (kind % 6, session.pending_effect()) {
            (4, Some(id)) if param % 2 == 0 => Input::EffectResult { id, result: EffectOutcome::Success(json!(param)) },
            _ => input(kind, param),
        };
        let result = session.handle(flow, input, now);
        log.push(format!("{result:?}"));
        if round_trip {
            let json = serde_json::to_string(&session).unwrap();
            let back: Session = serde_json::from_str(&json).unwrap();
            assert_eq!(back, session, "JSON round-trip changed the state");
            session = back;
        }
    }
    (log, session)
}

fn node_seed() -> impl Strategy<Value = NodeSeed> {
    (any::<u8>(), any::<u8>(), any::<u8>(), any::<u8>(), any::<u8>())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn replays_are_identical_and_round_trips_change_nothing(
        seeds in prop::collection::vec(node_seed(), 1..14),
        inputs in prop::collection::vec((any::<u8>(), any::<u8>(), 0u16..600), 1..40),
        rng_seed in any::<u64>(),
    ) {
        let Some(flow) = build_flow(&seeds) else { return Ok(()) };
        let (log_a, state_a) = run(&flow, rng_seed, &inputs, false);
        let (log_b, state_b) = run(&flow, rng_seed, &inputs, false);
        prop_assert_eq!(&log_a, &log_b);
        prop_assert_eq!(&state_a, &state_b);
        let (log_c, state_c) = run(&flow, rng_seed, &inputs, true);
        prop_assert_eq!(&log_a, &log_c);
        prop_assert_eq!(&state_a, &state_c);
        // The stored state stays bounded whatever happened.
        prop_assert!(state_a.path().map(|p| p.len() + 1).sum::<usize>() <= flowcore::PATH_MAX_BYTES + 1 || state_a.path().count() == 1);
    }

    #[test]
    fn arbitrary_flow_json_never_panics_compile_or_run(
        nodes in prop::collection::vec((0usize..22, any::<u8>(), "[a-z{} .0-9]{0,12}"), 0..8),
        edges in prop::collection::vec((0usize..8, 0usize..8, prop::option::of("(true|false|invalid|timeout|success|failure|open|[0-9]{1,2}%|o0)")), 0..12),
        texts in prop::collection::vec("\\PC{0,12}", 1..8),
    ) {
        let types = ["start", "message", "question", "end", "condition", "jump", "random", "set_variable", "action",
            "handoff", "delay", "api_call", "ai_prompt", "database_query", "script", "whatsapp_template",
            "interactive_buttons", "interactive_list", "analytics", "datetime", "bogus", "start"];
        let node_values: Vec<Value> = nodes.iter().enumerate().map(|(i, (t, p, text))| {
            let validation = ["text", "number", "regex", "options", "phone"][*p as usize % 5];
            let op = OPS[*p as usize % OPS.len()];
            let id = if i == 0 { "n0".to_string() } else { format!("n{}", i) };
            json!({"id": id, "type": types[*t], "data": {
                "content": text, "variableName": text, "value": text, "expression": text, "pattern": text,
                "validationType": validation,
                "targetNodeId": format!("n{}", p % 8), "trueNodeId": format!("n{}", p % 7), "falseNodeId": format!("n{}", p % 5),
                "condition": {"variableName": text, "operator": op, "value": text},
                "buttons": [{"id": "o0", "title": text}], "sections": [{"rows": [{"id": "o0", "title": text}]}],
                "seconds": p, "url": text, "prompt": text, "query": text, "code": text, "action": text, "event": text,
                "templateName": text, "timeoutSeconds": p % 3, "maxRetries": p % 3,
                "businessHours": {"open": "09:00", "close": "08:00", "days": [p % 8]}}})
        }).collect();
        let edge_values: Vec<Value> = edges.iter().enumerate().map(|(i, (s, t, h))| {
            json!({"id": format!("e{i}"), "source": format!("n{s}"), "target": format!("n{t}"), "sourceHandle": h})
        }).collect();
        let text = json!({"id": "x", "nodes": node_values, "edges": edge_values}).to_string();
        let Ok(flow) = Flow::from_json(&text) else { return Ok(()) };
        let Ok(compiled) = flow.compile() else { return Ok(()) };
        let _ = compiled.graph();
        let mut session = Session::new(&compiled, SessionOptions { max_steps: 30, ..Default::default() });
        let mut now = Timestamp::from_unix_seconds(1_700_000_000);
        for (i, t) in texts.iter().enumerate() {
            now = now.saturating_add_seconds(3_600);
            let input = match i % 3 { 0 => Input::text(t.as_str()), 1 => Input::Tick,
                _ => Input::EffectResult { id: session.pending_effect().unwrap_or(EffectId(1)), result: EffectOutcome::Success(json!(t)) } };
            let _ = session.handle(&compiled, input, now);
            let back = Session::from_json(&session.to_json()).unwrap();
            prop_assert_eq!(&back, &session);
        }
    }
}

#[test]
fn garbage_text_never_panics_the_parsers() {
    for text in ["", "{", "[]", "null", "{\"nodes\":[{\"id\":null}]}", "{\"nodes\":{}}", "\u{0}"] {
        let _ = Flow::from_json(text);
        let _ = Session::from_json(text);
    }
}
