//! Every node type and every session rule, one conversation at a time.

mod common;

use common::{compile, texts, Sim, T0};
use flowcore::{
    EffectId, EffectKind, EffectOutcome, EndReason, Input, MediaKind, Message, NodeId, Output, Session, SessionError,
    SessionOptions, SessionStatus, Timestamp,
};
use serde_json::{json, Value};

/// A linear flow: start → nodes[0] → nodes[1] → … plus extra edges.
fn chain(nodes: Value, extra: Value) -> flowcore::CompiledFlow {
    let mut all = vec![json!({"id": "start", "type": "start"})];
    all.extend(nodes.as_array().unwrap().iter().cloned());
    let mut edges = vec![];
    for pair in all.windows(2) {
        let (a, b) = (pair[0]["id"].as_str().unwrap(), pair[1]["id"].as_str().unwrap());
        let linear = !matches!(pair[0]["type"].as_str(), Some("end" | "condition" | "random" | "jump" | "handoff"));
        if linear {
            edges.push(json!({"id": format!("{a}->{b}"), "source": a, "target": b}));
        }
    }
    edges.extend(extra.as_array().unwrap().iter().cloned());
    compile(json!({"id": "t", "name": "t", "nodes": all, "edges": edges}))
}

fn msg(id: &str, content: &str) -> Value {
    json!({"id": id, "type": "message", "data": {"content": content}})
}

fn end(id: &str, content: &str) -> Value {
    json!({"id": id, "type": "end", "data": {"content": content}})
}

fn effect(turn: &flowcore::Turn) -> &flowcore::EffectRequest {
    turn.outputs.iter().find_map(|o| if let Output::Effect(r) = o { Some(r) } else { None }).expect("an effect")
}

#[test]
fn start_message_end() {
    let mut sim = Sim::new(chain(json!([msg("m", "Olá {{who}}"), end("z", "Fim")]), json!([])));
    let turn = sim.say("oi");
    assert_eq!(texts(&turn), ["Olá ", "Fim"]);
    assert_eq!(turn.outputs.last(), Some(&Output::End { node: Some("z".into()), reason: EndReason::Completed }));
}

#[test]
fn a_node_without_a_way_on_ends_the_session() {
    let mut sim = Sim::new(chain(json!([msg("m", "só isso")]), json!([])));
    let turn = sim.say("oi");
    assert_eq!(turn.outputs[1], Output::End { node: Some("m".into()), reason: EndReason::Completed });
}

#[test]
fn media_messages() {
    let m = json!({"id": "m", "type": "message", "data": {"mediaUrl": "https://x.test/{{f}}.pdf", "mediaType": "document", "content": "Seu boleto", "filename": "boleto.pdf"}});
    let mut sim = Sim::with(
        chain(json!([m]), json!([])),
        SessionOptions { variables: json!({"f": "b1"}).as_object().unwrap().clone(), ..Default::default() },
    );
    let turn = sim.say("oi");
    assert_eq!(
        turn.outputs[0],
        Output::Send {
            node: "m".into(),
            message: Message::Media {
                kind: MediaKind::Document,
                link: "https://x.test/b1.pdf".into(),
                caption: Some("Seu boleto".into()),
                filename: Some("boleto.pdf".into())
            }
        }
    );
}

#[test]
fn question_validation_types() {
    let cases: &[(&str, Value, &[&str], &str, Value)] = &[
        ("text", json!({}), &["   "], "Ana", json!("Ana")),
        ("number", json!({}), &["abc", "12a"], "1,5", json!(1.5)),
        ("email", json!({}), &["ana@", "ana.example.com"], "ana@example.com.br", json!("ana@example.com.br")),
        ("phone", json!({}), &["12", "+55 abc"], "+55 11 99999-9999", json!("+5511999999999")),
        ("regex", json!({"pattern": "^[A-Z]{3}-[0-9]{4}$"}), &["abc-1234"], "ABC-1234", json!("ABC-1234")),
        ("options", json!({"options": ["manhã", {"value": "pm", "label": "tarde"}]}), &["noite"], "Tarde", json!("pm")),
    ];
    for (kind, extra, bad, good, stored) in cases {
        let mut data = json!({"content": "?", "variableName": "v", "validationType": kind, "maxRetries": 5});
        for (k, v) in extra.as_object().unwrap() {
            data[k] = v.clone();
        }
        let flow = chain(json!([{"id": "q", "type": "question", "data": data}, end("z", "ok {{v}}")]), json!([]));
        let mut sim = Sim::new(flow);
        sim.say("oi");
        for b in *bad {
            let t = sim.texts(b);
            assert_eq!(t.len(), 1, "{kind} {b:?}");
            assert!(t[0].starts_with("Por favor") || t[0].starts_with("Resposta"), "{kind}: default error {t:?}");
            assert_eq!(sim.session.status(), SessionStatus::WaitingForInput);
        }
        sim.say(good);
        assert_eq!(sim.session.variable("v"), Some(stored), "{kind}");
        assert_eq!(sim.session.status(), SessionStatus::Ended, "{kind}");
    }
}

#[test]
fn retries_exhausted_without_invalid_edge_ends_with_a_message() {
    let q = json!({"id": "q", "type": "question", "data": {"content": "Idade?", "variableName": "age", "validationType": "number", "maxRetries": 2, "errorMessage": "Número, {{name}}!"}});
    let mut sim = Sim::with(
        chain(json!([q, end("z", "ok")]), json!([])),
        SessionOptions { variables: json!({"name": "Ana"}).as_object().unwrap().clone(), ..Default::default() },
    );
    sim.say("oi");
    assert_eq!(sim.texts("x"), ["Número, Ana!"]);
    let turn = sim.say("y");
    assert!(texts(&turn)[0].contains("Vamos encerrar"), "{:?}", texts(&turn));
    assert_eq!(turn.outputs.last(), Some(&Output::End { node: Some("q".into()), reason: EndReason::RetriesExhausted }));
    // The host's initial variables come back on a fresh start.
    sim.say("oi");
    assert_eq!(sim.session.variable("name"), Some(&json!("Ana")));
}

#[test]
fn question_idle_timeout_follows_the_timeout_edge() {
    let q = json!({"id": "q", "type": "question", "data": {"content": "Nome?", "variableName": "n", "timeoutSeconds": 3600}});
    let flow = chain(
        json!([q, end("z", "ok"), end("late", "Ainda está aí? Encerrando.")]),
        json!([{"id": "t", "source": "q", "target": "late", "sourceHandle": "timeout"}]),
    );
    let mut sim = Sim::new(flow);
    let turn = sim.say("oi");
    assert_eq!(turn.wake_at, Some(Timestamp::from_unix_millis(T0 + 3_600_000)));
    // An early tick changes nothing.
    sim.advance_secs(10);
    let early = sim.feed(Input::Tick);
    assert!(early.outputs.is_empty());
    assert_eq!(early.wake_at, Some(Timestamp::from_unix_millis(T0 + 3_600_000)));
    let turn = sim.tick_to_wake();
    assert_eq!(texts(&turn), ["Ainda está aí? Encerrando."]);
    assert_eq!(sim.session.wake_at(), None);
    insta::assert_snapshot!("question_timeout", sim.transcript);
}

#[test]
fn question_idle_timeout_without_edge_ends_the_session() {
    let q =
        json!({"id": "q", "type": "question", "data": {"content": "Nome?", "variableName": "n", "timeoutSeconds": 60}});
    let mut sim = Sim::new(chain(json!([q, end("z", "ok")]), json!([])));
    sim.say("oi");
    let turn = sim.tick_to_wake();
    assert_eq!(turn.outputs, [Output::End { node: Some("q".into()), reason: EndReason::IdleTimeout }]);
}

#[test]
fn condition_from_edges_and_groups_with_template_values() {
    let q = json!({"id": "q", "type": "question", "data": {"content": "?", "variableName": "age", "validationType": "number"}});
    let c = json!({"id": "c", "type": "condition", "data": {"condition": {"any": [
        {"variableName": "age", "operator": ">=", "value": "{{limit}}"},
        {"variableName": "vip", "operator": "==", "value": true}]}}});
    let flow = compile(json!({"id": "t", "variables": {"limit": 18, "vip": false},
        "nodes": [{"id": "s", "type": "start"}, q, c, end("yes", "sim"), end("no", "não")],
        "edges": [{"id": "1", "source": "s", "target": "q"}, {"id": "2", "source": "q", "target": "c"},
                  {"id": "3", "source": "c", "target": "yes", "sourceHandle": "true"},
                  {"id": "4", "source": "c", "target": "no", "sourceHandle": "false"}]}));
    for (age, want) in [("9", "não"), ("18", "sim"), ("50", "sim")] {
        let mut sim = Sim::new(flow.clone());
        sim.say("oi");
        assert_eq!(sim.texts(age), [want], "age {age}");
    }
}

#[test]
fn jump_goes_to_its_target() {
    let flow = chain(
        json!([msg("a", "A"), {"id": "j", "type": "jump", "data": {"targetNodeId": "c"}}, msg("b", "B"), end("c", "C")]),
        json!([]),
    );
    let mut sim = Sim::new(flow);
    assert_eq!(sim.texts("oi"), ["A", "C"]);
}

#[test]
fn random_is_weighted_and_deterministic_from_the_seed() {
    let r = json!({"id": "r", "type": "random", "data": {}});
    let flow = chain(
        json!([r, end("a", "A"), end("b", "B")]),
        json!([{"id": "ra", "source": "r", "target": "a", "label": "80%"},
               {"id": "rb", "source": "r", "target": "b", "data": {"weight": 20}}]),
    );
    let run = |seed: u64| -> Vec<String> {
        let mut sim = Sim::with(flow.clone(), SessionOptions { seed, ..Default::default() });
        (0..200).map(|_| sim.texts("oi").join("")).collect()
    };
    let first = run(42);
    assert_eq!(first, run(42), "same seed, same choices");
    assert_ne!(first, run(43), "another seed, other choices");
    let a = first.iter().filter(|t| *t == "A").count();
    assert!((140..=185).contains(&a), "about 80% A, got {a}/200");
    let g = flow.graph();
    assert!(g.links.iter().any(|l| l.label.as_deref() == Some("80%")));
}

#[test]
fn set_variable_literal_template_and_expression() {
    let flow = chain(
        json!([
            {"id": "s1", "type": "set_variable", "data": {"variableName": "count", "value": 2}},
            {"id": "s2", "type": "set_variable", "data": {"variableName": "count", "expression": "{{count}} * 10 + 1"}},
            {"id": "s3", "type": "set_variable", "data": {"variableName": "greeting", "value": "Olá {{name}} ({{count}})"}},
            {"id": "s4", "type": "set_variable", "data": {"variableName": "copy", "value": "{{profile}}"}},
            {"id": "s5", "type": "set_variable", "data": {"variableName": "half", "value": "count / 2", "valueType": "expression"}},
            end("z", "{{greeting}} {{copy.city}} {{half}}")
        ]),
        json!([]),
    );
    let vars = json!({"name": "{{secret}}", "secret": "xyz", "profile": {"city": "Recife"}});
    let mut sim =
        Sim::with(flow, SessionOptions { variables: vars.as_object().unwrap().clone(), ..Default::default() });
    // A value is never substituted again: the literal "{{secret}}" stays literal.
    assert_eq!(sim.texts("oi"), ["Olá {{secret}} (21) Recife 10.5"]);
    assert_eq!(sim.session.variable("count"), Some(&json!(21)));
    assert_eq!(sim.session.variable("copy"), Some(&json!({"city": "Recife"})));
}

#[test]
fn effects_wait_for_results_and_route_by_success_and_failure() {
    let nodes = json!([
        {"id": "ai", "type": "ai_prompt", "data": {"prompt": "Resuma: {{text}}", "systemPrompt": "Seja breve", "model": "m1", "responseVariable": "summary"}},
        {"id": "db", "type": "database_query", "data": {"query": "select * from t where id = :id", "params": {"id": "{{id}}"}, "responseVariable": "rows"}},
        {"id": "sc", "type": "script", "data": {"code": "return 1 + 1", "language": "js", "responseVariable": "two"}},
        {"id": "ac", "type": "action", "data": {"action": "tag_contact", "params": {"tag": "lead-{{id}}"}, "responseVariable": "tagged"}},
        {"id": "api", "type": "api_call", "data": {"method": "post", "url": "https://x.test/{{id}}", "headers": {"Authorization": "Bearer {{token}}"}, "body": {"summary": "{{summary}}"}}},
        end("ok", "{{summary}} / {{rows.0.n}} / {{two}} / {{tagged}}"),
        end("bad", "Falhou: {{last_error}}"),
    ]);
    let flow = chain(nodes, json!([{"id": "f", "source": "api", "target": "bad", "sourceHandle": "failure"}]));
    let vars = json!({"text": "longo", "id": 7, "token": "tk"});
    let options = SessionOptions { variables: vars.as_object().unwrap().clone(), ..Default::default() };

    let mut sim = Sim::with(flow.clone(), options.clone());
    let t = sim.say("oi");
    assert_eq!(
        effect(&t).kind,
        EffectKind::AiPrompt {
            prompt: "Resuma: longo".into(),
            system: Some("Seja breve".into()),
            model: Some("m1".into())
        }
    );
    assert_eq!(sim.session.pending_effect(), Some(EffectId(1)));
    let t = sim.ok(EffectId(1), json!("curto"));
    assert_eq!(
        effect(&t).kind,
        EffectKind::DatabaseQuery { query: "select * from t where id = :id".into(), params: json!({"id": 7}) }
    );
    let t = sim.ok(EffectId(2), json!([{"n": 5}]));
    assert_eq!(effect(&t).kind, EffectKind::Script { language: Some("js".into()), code: "return 1 + 1".into() });
    let t = sim.ok(EffectId(3), json!(2));
    assert_eq!(effect(&t).kind, EffectKind::Action { action: "tag_contact".into(), params: json!({"tag": "lead-7"}) });
    let t = sim.ok(EffectId(4), json!(true));
    match &effect(&t).kind {
        EffectKind::ApiCall { method, url, headers, body, .. } => {
            assert_eq!(method, "POST");
            assert_eq!(url, "https://x.test/7");
            assert_eq!(headers, &[("Authorization".to_string(), "Bearer tk".to_string())]);
            assert_eq!(body.as_deref(), Some(r#"{"summary":"curto"}"#));
        }
        other => panic!("{other:?}"),
    }
    let t = sim.ok(EffectId(5), json!({}));
    assert_eq!(texts(&t), ["curto / 5 / 2 / true"]);

    // The failure edge.
    let mut sim = Sim::with(flow.clone(), options.clone());
    sim.say("oi");
    for id in 1..=4 {
        sim.ok(EffectId(id), json!(null));
    }
    let t = sim.feed(Input::EffectResult { id: EffectId(5), result: EffectOutcome::Failure("HTTP 500".into()) });
    assert_eq!(texts(&t), ["Falhou: HTTP 500"]);

    // A failure without a failure edge ends the session.
    let mut sim = Sim::with(flow, options);
    sim.say("oi");
    let t = sim.feed(Input::EffectResult { id: EffectId(1), result: EffectOutcome::Failure("quota".into()) });
    assert_eq!(
        t.outputs,
        [Output::End { node: Some("ai".into()), reason: EndReason::EffectFailed { error: "quota".into() } }]
    );
    insta::assert_snapshot!("effect_failed", sim.transcript);
}

#[test]
fn effect_result_errors_leave_the_session_unchanged() {
    let flow =
        chain(json!([{"id": "api", "type": "api_call", "data": {"url": "https://x.test"}}, end("z", "ok")]), json!([]));
    let mut sim = Sim::new(flow.clone());
    let now = sim.now;
    assert_eq!(
        sim.session.handle(
            &flow,
            Input::EffectResult { id: EffectId(1), result: EffectOutcome::Success(json!(1)) },
            now
        ),
        Err(SessionError::UnknownEffect { id: EffectId(1) })
    );
    sim.say("oi");
    let before = sim.session.clone();
    assert_eq!(
        sim.session.handle(&flow, Input::text("hello?"), now),
        Err(SessionError::AwaitingEffect { id: EffectId(1) })
    );
    assert_eq!(
        sim.session.handle(
            &flow,
            Input::EffectResult { id: EffectId(9), result: EffectOutcome::Success(json!(1)) },
            now
        ),
        Err(SessionError::UnknownEffect { id: EffectId(9) })
    );
    assert_eq!(sim.session, before);
    sim.ok(EffectId(1), json!(1));
    assert_eq!(
        sim.session.handle(
            &flow,
            Input::EffectResult { id: EffectId(1), result: EffectOutcome::Success(json!(1)) },
            now
        ),
        Err(SessionError::EffectNotAwaited { id: EffectId(1) })
    );
}

#[test]
fn analytics_is_fire_and_forget() {
    let a = json!({"id": "a", "type": "analytics", "data": {"event": "lead_{{kind}}", "properties": {"step": 1}}});
    let mut sim = Sim::with(
        chain(json!([a, end("z", "ok")]), json!([])),
        SessionOptions { variables: json!({"kind": "hot"}).as_object().unwrap().clone(), ..Default::default() },
    );
    let turn = sim.say("oi");
    let req = effect(&turn);
    assert!(!req.expects_result());
    assert_eq!(req.kind, EffectKind::Analytics { event: "lead_hot".into(), properties: json!({"step": 1}) });
    assert_eq!(texts(&turn), ["ok"]);
    assert_eq!(sim.session.status(), SessionStatus::Ended);
}

#[test]
fn handoff_emits_output_and_ignores_inputs() {
    let h = json!({"id": "h", "type": "handoff", "data": {"queue": "vendas"}});
    let mut sim = Sim::new(chain(json!([h]), json!([])));
    let turn = sim.say("oi");
    assert_eq!(turn.outputs, [Output::Handoff { node: "h".into(), queue: Some("vendas".into()) }]);
    assert_eq!(sim.session.status(), SessionStatus::HandedOff);
    assert!(sim.say("?").outputs.is_empty());
    assert!(sim.feed(Input::Tick).outputs.is_empty());
}

#[test]
fn delay_sleeps_until_a_tick() {
    let d = json!({"id": "d", "type": "delay", "data": {"seconds": 30}});
    let mut sim = Sim::new(chain(json!([msg("a", "Um momento…"), d, end("z", "Pronto!")]), json!([])));
    let turn = sim.say("oi");
    assert_eq!(texts(&turn), ["Um momento…"]);
    assert_eq!(turn.wake_at, Some(Timestamp::from_unix_millis(T0 + 30_000)));
    assert_eq!(sim.session.status(), SessionStatus::Sleeping);
    // Messages while sleeping are ignored; early ticks too.
    assert!(sim.say("e aí?").outputs.is_empty());
    sim.advance_secs(29);
    assert!(sim.feed(Input::Tick).outputs.is_empty());
    let turn = sim.tick_to_wake();
    assert_eq!(texts(&turn), ["Pronto!"]);
    insta::assert_snapshot!("delay", sim.transcript);
}

#[test]
fn whatsapp_template_message() {
    let t = json!({"id": "t", "type": "whatsapp_template", "data": {"templateName": "pedido_enviado", "language": "pt_BR",
        "components": [{"type": "body", "parameters": [{"type": "text", "text": "{{name}}"}]}]}});
    let mut sim = Sim::with(
        chain(json!([t]), json!([])),
        SessionOptions { variables: json!({"name": "Ana"}).as_object().unwrap().clone(), ..Default::default() },
    );
    let turn = sim.say("oi");
    assert_eq!(
        turn.outputs[0],
        Output::Send {
            node: "t".into(),
            message: Message::Template {
                name: "pedido_enviado".into(),
                language: "pt_BR".into(),
                components: json!([{"type": "body", "parameters": [{"type": "text", "text": "Ana"}]}]),
            }
        }
    );
}

#[test]
fn interactive_buttons_route_by_id_title_number_and_default() {
    let b = json!({"id": "b", "type": "interactive_buttons", "data": {"content": "Escolha", "variableName": "c",
        "buttons": [{"id": "y", "title": "Sim"}, {"id": "n", "title": "Não"}, {"id": "m", "title": "Talvez"}]}});
    let flow = chain(
        json!([b, end("yes", "S"), end("no", "N"), end("other", "O")]),
        json!([{"id": "ey", "source": "b", "target": "yes", "sourceHandle": "y"},
               {"id": "en", "source": "b", "target": "no", "sourceHandle": "n"}]),
    );
    // chain() linked b → yes without a handle: that is the default edge; re-point it.
    let _ = flow;
    let flow = compile(json!({"id": "t", "nodes": [{"id": "s", "type": "start"},
        {"id": "b", "type": "interactive_buttons", "data": {"content": "Escolha", "variableName": "c",
         "buttons": [{"id": "y", "title": "Sim"}, {"id": "n", "title": "Não"}, {"id": "m", "title": "Talvez"}]}},
        end("yes", "S"), end("no", "N"), end("other", "O")],
        "edges": [{"id": "1", "source": "s", "target": "b"},
                  {"id": "ey", "source": "b", "target": "yes", "sourceHandle": "y"},
                  {"id": "en", "source": "b", "target": "no", "sourceHandle": "n"},
                  {"id": "ed", "source": "b", "target": "other"}]}));
    let cases: Vec<(Input, &str, &str)> = vec![
        (Input::choice("y"), "S", "y"),
        (Input::Choice { id: "unknown".into(), title: Some("Não".into()) }, "N", "n"),
        (Input::text("não"), "N", "n"),
        (Input::text("1"), "S", "y"),
        (Input::choice("m"), "O", "m"),
    ];
    for (input, want, stored) in cases {
        let mut sim = Sim::new(flow.clone());
        sim.say("oi");
        let turn = sim.feed(input.clone());
        assert_eq!(texts(&turn), [want], "{input:?}");
        assert_eq!(sim.session.variable("c"), Some(&json!(stored)));
    }
    let mut sim = Sim::new(flow);
    sim.say("oi");
    assert_eq!(sim.texts("nenhum"), ["Por favor, escolha uma das opções."]);
    assert_eq!(sim.session.current_node(), Some("b"));
}

#[test]
fn datetime_sets_variables_and_routes_by_business_hours() {
    let d = json!({"id": "d", "type": "datetime", "data": {"businessHours": {"utcOffset": "-03:00", "days": ["seg", "ter", "qua", "qui", "sex"], "open": "09:00", "close": "18:00"}}});
    let flow = chain(
        json!([
            d,
            end("open", "Aberto: {{weekday}} {{date}} {{time}}"),
            end("closed", "Fechado: {{weekday}} {{time}}")
        ]),
        json!([{"id": "o", "source": "d", "target": "open", "sourceHandle": "open"},
               {"id": "c", "source": "d", "target": "closed", "sourceHandle": "closed"}]),
    );
    let at = |iso_secs: i64| {
        let mut sim = Sim::new(flow.clone());
        sim.now = Timestamp::from_unix_seconds(iso_secs);
        sim.texts("oi")
    };
    // 2023-11-14 22:13:20Z is Tuesday 19:13 in UTC-3: closed.
    assert_eq!(at(1_700_000_000), ["Fechado: tuesday 19:13"]);
    // At 13:13Z it is 10:13 in UTC-3: open.
    assert_eq!(at(1_700_000_000 - 9 * 3600), ["Aberto: tuesday 2023-11-14 10:13"]);
    // Saturday 2023-11-18 at 12:00 local (15:00Z): closed.
    assert_eq!(at(1_700_265_600 + 15 * 3600), ["Fechado: saturday 12:00"]);

    let plain = chain(
        json!([{"id": "d", "type": "datetime", "data": {"variableName": "now"}}, end("z", "{{now.date}} {{now.weekday}}")]),
        json!([]),
    );
    let mut sim = Sim::new(plain);
    assert_eq!(sim.texts("oi"), ["2023-11-14 tuesday"]);
}

#[test]
fn step_budget_ends_a_loop_and_names_its_nodes() {
    let flow = compile(json!({"id": "t", "nodes": [
        {"id": "s", "type": "start"},
        {"id": "a", "type": "set_variable", "data": {"variableName": "n", "expression": "n + 1"}},
        {"id": "b", "type": "jump", "data": {"targetNodeId": "a"}}],
        "edges": [{"id": "1", "source": "s", "target": "a"}, {"id": "2", "source": "a", "target": "b"}]}));
    assert!(flow.warnings().iter().any(|w| w.code == "loop-without-input"));
    let mut sim = Sim::with(flow, SessionOptions { max_steps: 10, ..Default::default() });
    let turn = sim.say("oi");
    assert_eq!(
        turn.outputs,
        [Output::End {
            node: Some("b".into()),
            reason: EndReason::StepBudgetExceeded { nodes: vec![NodeId::from("a"), NodeId::from("b")] }
        }]
    );
    assert_eq!(sim.session.variable("n"), Some(&json!(5)));
}

#[test]
fn sessions_expire_after_their_ttl_judged_from_now() {
    let flow = common::sample("lead.json");
    let mut sim = Sim::with(flow, SessionOptions { ttl_millis: 60_000, ..Default::default() });
    sim.say("oi");
    assert!(!sim.session.is_expired(sim.now));
    sim.advance_secs(61);
    assert!(sim.session.is_expired(sim.now));
    let turn = sim.say("Maria");
    assert_eq!(turn.outputs[0], Output::End { node: Some("ask_name".into()), reason: EndReason::Expired });
    // The message then starts the flow afresh; it is not an answer.
    assert_eq!(texts(&turn), ["Olá! Aqui é a Acme.", "Qual é o seu nome?"]);
    assert_eq!(sim.session.variable("name"), None);
}

#[test]
fn wrong_flow_missing_node_and_changed_node_are_typed_errors() {
    let lead = common::sample("lead.json");
    let support = common::sample("support_menu.json");
    let mut session = Session::new(&lead, SessionOptions::default());
    let now = Timestamp::from_unix_millis(T0);
    assert_eq!(
        session.handle(&support, Input::text("oi"), now),
        Err(SessionError::WrongFlow { session: "lead".into(), flow: "support".into() })
    );
    session.handle(&lead, Input::text("oi"), now).unwrap();
    assert_eq!(session.check_flow(&lead), Ok(()));

    // A new version of the flow without the node the session waits at.
    let mut v2: Value = serde_json::from_str(&common::sample_text("lead.json")).unwrap();
    v2["nodes"].as_array_mut().unwrap().retain(|n| n["id"] != "ask_name");
    v2["edges"].as_array_mut().unwrap().retain(|e| e["id"] != "e2" && e["id"] != "e3");
    v2["edges"].as_array_mut().unwrap().push(json!({"id": "e2b", "source": "hello", "target": "ask_age"}));
    let v2 = compile(v2);
    assert_eq!(session.check_flow(&v2), Err(SessionError::MissingNode { node: "ask_name".into() }));
    assert_eq!(session.handle(&v2, Input::text("x"), now), Err(SessionError::MissingNode { node: "ask_name".into() }));

    // ... or where that node no longer waits for input.
    let mut v3: Value = serde_json::from_str(&common::sample_text("lead.json")).unwrap();
    v3["nodes"][2] = json!({"id": "ask_name", "type": "message", "data": {"content": "hi"}});
    let v3 = compile(v3);
    assert_eq!(
        session.check_flow(&v3),
        Err(SessionError::NodeChanged { node: "ask_name".into(), waiting: "input", found: "message" })
    );
}

#[test]
fn stored_state_is_compact_versioned_and_bounded() {
    let flow = common::sample("lead.json");
    let mut sim = Sim::new(flow.clone());
    for text in ["oi", "Maria", "30"] {
        sim.say(text);
    }
    let json = sim.session.to_json();
    assert!(json.starts_with(r#"{"v":1,"f":"lead","s":"input","n":"ask_email""#), "{json}");
    assert_eq!(Session::from_json(&json).unwrap(), sim.session);
    // A long conversation keeps the state bounded: loop through the flow many times.
    let mut sim = Sim::new(flow.clone());
    let mut sizes = vec![];
    for i in 0..200 {
        for text in ["oi", "Maria", "30", "maria@example.com"] {
            sim.say(text);
        }
        if i % 50 == 0 {
            sizes.push(sim.session.to_json().len());
        }
    }
    assert!(sizes.windows(2).all(|w| w[0] == w[1]), "{sizes:?}");
    assert!(sizes[0] <= 300, "{sizes:?}");
    assert_eq!(sim.session.path().last(), Some("bye"));
    assert!(sim.session.path().map(str::len).sum::<usize>() <= flowcore::PATH_MAX_BYTES);

    let json = sim.session.to_json();
    let future = json.replacen(r#""v":1"#, r#""v":2"#, 1);
    assert_eq!(Session::from_json(&future), Err(SessionError::UnsupportedVersion { found: 2, supported: 1 }));
    assert!(serde_json::from_str::<Session>(&future).unwrap_err().to_string().contains("version 2"));
    assert!(matches!(Session::from_json("{\"v\":1}"), Err(SessionError::InvalidState { .. })));
}

#[test]
fn ticks_and_unsupported_inputs_do_not_start_a_session() {
    let flow = common::sample("lead.json");
    let mut sim = Sim::new(flow);
    assert!(sim.feed(Input::Tick).outputs.is_empty());
    assert!(sim.feed(Input::Unsupported { kind: "reaction".into() }).outputs.is_empty());
    assert_eq!(sim.session.status(), SessionStatus::NotStarted);
}
