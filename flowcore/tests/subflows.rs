//! Sub-flows: the `call_flow` node, the `FlowSet` a host hands in, the call stack in the
//! session state, and the typed errors of calls that cannot be made.

mod common;

use std::fmt::Write as _;

use common::{compile, describe_input, describe_output, sample, texts, T0};
use flowcore::{
    CompiledFlow, EffectOutcome, EndReason, FlowSet, Input, Output, Session, SessionError, SessionOptions,
    SessionStatus, Timestamp, Turn, MAX_CALL_DEPTH,
};
use serde_json::{json, Value};

/// A conversation driver over a set of flows, with a transcript that shows the call stack.
struct SetSim {
    flows: FlowSet,
    session: Session,
    now: Timestamp,
    transcript: String,
}

impl SetSim {
    fn new(flows: &[CompiledFlow]) -> SetSim {
        let session = Session::new(&flows[0], SessionOptions::default());
        SetSim {
            flows: flows.iter().cloned().collect(),
            session,
            now: Timestamp::from_unix_millis(T0),
            transcript: String::new(),
        }
    }

    fn try_feed(&mut self, input: Input) -> Result<Turn, SessionError> {
        let _ = writeln!(self.transcript, "> {}", describe_input(&input));
        let turn = self.session.handle_in(&self.flows, input, self.now)?;
        for out in &turn.outputs {
            let _ = writeln!(self.transcript, "  {}", describe_output(out));
        }
        let calls: Vec<String> = self.session.call_stack().map(|(flow, node)| format!("{flow}/{node}")).collect();
        let _ = writeln!(
            self.transcript,
            "  [{:?} at {}/{} calls {calls:?}]",
            self.session.status(),
            self.session.current_flow_id(),
            self.session.current_node().unwrap_or("-"),
        );
        Ok(turn)
    }

    fn say(&mut self, text: &str) -> Turn {
        self.try_feed(Input::text(text)).unwrap_or_else(|e| panic!("handle_in: {e}"))
    }

    fn texts(&mut self, text: &str) -> Vec<String> {
        texts(&self.say(text))
    }
}

fn flow(id: &str, nodes: Value, edges: Value) -> CompiledFlow {
    compile(json!({"id": id, "nodes": nodes, "edges": edges}))
}

fn now() -> Timestamp {
    Timestamp::from_unix_millis(T0)
}

#[test]
fn cadastro_calls_endereco_and_returns_with_its_outputs() {
    let mut sim = SetSim::new(&[sample("cadastro.json"), sample("endereco.json")]);
    assert_eq!(sim.texts("oi"), ["Olá! Vamos fazer o seu cadastro.", "Qual é o seu nome?"]);
    // The answer leads into the sub-flow, whose first question renders its inputs.
    assert_eq!(sim.texts("Ana"), ["Ana, qual é o seu CEP?"]);
    assert_eq!(sim.session.call_stack().collect::<Vec<_>>(), [("cadastro", "endereco")]);
    // Inside the sub-flow only its inputs are variables; the caller's are kept aside.
    assert_eq!(sim.session.variable("nome"), Some(&json!("Ana")));
    assert_eq!(sim.session.variable("name"), None);
    assert_eq!(sim.texts("123"), ["CEP inválido. Digite como 01310-100."]);
    assert_eq!(sim.texts("01310-100"), ["E a cidade? (Brasil)"]);
    let turn = sim.say("São Paulo");
    // The sub-flow's end sends its message and returns; only the caller's end ends.
    assert_eq!(texts(&turn), ["Endereço anotado.", "Obrigado, Ana! Endereço: São Paulo, CEP 01310-100."]);
    let ends: Vec<&Output> = turn.outputs.iter().filter(|o| matches!(o, Output::End { .. })).collect();
    assert_eq!(ends, [&Output::End { node: Some("bye".into()), reason: EndReason::Completed }]);
    assert_eq!(sim.session.status(), SessionStatus::Ended);
    assert_eq!(sim.session.call_stack().count(), 0);
    assert_eq!(sim.session.variable("cidade"), Some(&json!("São Paulo")));
    assert_eq!(sim.session.variable("name"), Some(&json!("Ana")));
    assert_eq!(sim.session.variable("nome"), None, "sub-flow variables stay in the sub-flow");
    insta::assert_snapshot!("cadastro_endereco", sim.transcript);
}

#[test]
fn the_sample_flows_compile_cleanly_and_check_against_each_other() {
    let (caller, callee) = (sample("cadastro.json"), sample("endereco.json"));
    // `cidade` and `cep` are written by the call's outputs: no undefined-variable warning.
    assert_eq!(caller.warnings(), []);
    assert_eq!(callee.warnings(), []);
    let set: FlowSet = [caller.clone(), callee].into_iter().collect();
    assert_eq!(set.check(&caller), []);
    let diags = FlowSet::new().check(&caller);
    assert_eq!(diags.len(), 1);
    assert_eq!(
        diags[0].to_string(),
        r#"error[unknown-flow] node "endereco": calls flow "endereco", which is not in the set of flows"#
    );
}

#[test]
fn inputs_keep_json_types_and_outputs_copy_only_what_the_sub_flow_set() {
    let caller = flow(
        "caller",
        json!([
            {"id": "s", "type": "start"},
            {"id": "init", "type": "set_variable", "data": {"variableName": "kept", "value": "antes"}},
            {"id": "call", "type": "call_flow", "data": {"flowId": "callee",
                "inputs": {"idade": "{{age}}", "texto": "tem {{age}} anos", "fixo": 7},
                "outputs": {"dobro": "double", "kept": "never_set", "rua": "address.street"}}},
            {"id": "bye", "type": "end", "data": {"content": "{{dobro}} {{kept}} {{rua}}"}}]),
        json!([{"id": "e1", "source": "s", "target": "init"}, {"id": "e2", "source": "init", "target": "call"},
               {"id": "e3", "source": "call", "target": "bye"}]),
    );
    let callee = flow(
        "callee",
        json!([
            {"id": "s", "type": "start"},
            {"id": "show", "type": "message", "data": {"content": "{{idade}}|{{texto}}|{{fixo}}|{{age}}"}},
            {"id": "calc", "type": "set_variable", "data": {"variableName": "double", "expression": "{{idade}} * 2 + {{fixo}}"}},
            {"id": "addr", "type": "set_variable", "data": {"variableName": "address", "value": {"street": "Rua A"}}}]),
        json!([{"id": "e1", "source": "s", "target": "show"}, {"id": "e2", "source": "show", "target": "calc"},
               {"id": "e3", "source": "calc", "target": "addr"}]),
    );
    let mut variables = serde_json::Map::new();
    variables.insert("age".into(), json!(20));
    let flows: FlowSet = [caller.clone(), callee].into_iter().collect();
    let mut session = Session::new(&caller, SessionOptions { variables, ..Default::default() });
    let turn = session.handle_in(&flows, Input::text("oi"), now()).unwrap();
    // `addr` has no way on: the sub-flow ends there and returns.
    assert_eq!(texts(&turn), ["20|tem 20 anos|7|", "47 antes Rua A"]);
    assert_eq!(session.variable("dobro"), Some(&json!(47)));
    assert_eq!(session.variable("kept"), Some(&json!("antes")));
    assert_eq!(session.status(), SessionStatus::Ended);
}

/// `a` calls `b`, which calls `c`; each waits for an answer on the way.
fn nested() -> [CompiledFlow; 3] {
    let step = |id: &str, call: Option<&str>| {
        let mut nodes = vec![
            json!({"id": "s", "type": "start"}),
            json!({"id": "ask", "type": "question", "data": {"content": format!("{id}?"), "variableName": "x"}}),
        ];
        let mut edges = vec![json!({"id": "e1", "source": "s", "target": "ask"})];
        if let Some(callee) = call {
            nodes.push(json!({"id": "call", "type": "call_flow", "data": {"flowId": callee,
                "inputs": {"from": format!("{id}:{{{{x}}}}")}, "outputs": {"got": "x"}}}));
            nodes.push(json!({"id": "after", "type": "message", "data": {"content": format!("{id} got {{{{got}}}}")}}));
            edges.push(json!({"id": "e2", "source": "ask", "target": "call"}));
            edges.push(json!({"id": "e3", "source": "call", "target": "after", "sourceHandle": "return"}));
        }
        flow(id, json!(nodes), json!(edges))
    };
    [step("a", Some("b")), step("b", Some("c")), step("c", None)]
}

#[test]
fn nested_calls_return_in_order_and_the_state_round_trips_at_every_depth() {
    let mut sim = SetSim::new(&nested());
    assert_eq!(sim.texts("oi"), ["a?"]);
    assert_eq!(sim.texts("1"), ["b?"]);
    assert_eq!(sim.texts("2"), ["c?"]);
    assert_eq!(sim.session.call_stack().collect::<Vec<_>>(), [("a", "call"), ("b", "call")]);
    assert_eq!((sim.session.flow_id(), sim.session.current_flow_id()), ("a", "c"));
    let stored = sim.session.to_json();
    assert!(
        stored.contains(r#""c":[{"f":"b","n":"call","d":{"x":"1"}},{"f":"c","n":"call","d":{"from":"a:1","x":"2"}}]"#),
        "{stored}"
    );
    assert_eq!(Session::from_json(&stored).unwrap(), sim.session);
    // `c` ends with no way on after the answer; `b` copies it back and ends; then `a`.
    let turn = sim.say("3");
    assert_eq!(texts(&turn), ["b got 3", "a got 2"]);
    assert_eq!(turn.outputs.last(), Some(&Output::End { node: Some("after".into()), reason: EndReason::Completed }));
    assert_eq!(sim.session.current_flow_id(), "a");
    assert_eq!(sim.session.variable("got"), Some(&json!("2")));
    // A new message starts the session's own flow afresh.
    assert_eq!(sim.texts("de novo"), ["a?"]);
    insta::assert_snapshot!("nested_calls", sim.transcript);
}

#[test]
fn a_call_node_without_a_way_on_ends_the_session_on_return() {
    let caller = flow(
        "caller",
        json!([{"id": "s", "type": "start"}, {"id": "call", "type": "call_flow", "data": {"flowId": "callee"}}]),
        json!([{"id": "e1", "source": "s", "target": "call"}]),
    );
    let callee = flow(
        "callee",
        json!([{"id": "s", "type": "start"}, {"id": "hi", "type": "end", "data": {"content": "oi do sub-fluxo"}}]),
        json!([{"id": "e1", "source": "s", "target": "hi"}]),
    );
    let mut sim = SetSim::new(&[caller, callee]);
    let turn = sim.say("oi");
    assert_eq!(texts(&turn), ["oi do sub-fluxo"]);
    assert_eq!(turn.outputs.last(), Some(&Output::End { node: Some("call".into()), reason: EndReason::Completed }));
    assert_eq!(sim.session.current_flow_id(), "caller");
}

#[test]
fn other_endings_inside_a_sub_flow_end_the_whole_session() {
    let caller = flow(
        "caller",
        json!([{"id": "s", "type": "start"}, {"id": "call", "type": "call_flow", "data": {"flowId": "callee"}},
               {"id": "bye", "type": "end", "data": {"content": "voltou"}}]),
        json!([{"id": "e1", "source": "s", "target": "call"}, {"id": "e2", "source": "call", "target": "bye"}]),
    );
    let callee = flow(
        "callee",
        json!([{"id": "s", "type": "start"},
               {"id": "n", "type": "question", "data": {"content": "número?", "variableName": "n",
                 "validationType": "number", "maxRetries": 1}},
               {"id": "api", "type": "api_call", "data": {"url": "https://x.test/{{n}}", "responseVariable": "r"}}]),
        json!([{"id": "e1", "source": "s", "target": "n"}, {"id": "e2", "source": "n", "target": "api"}]),
    );
    let mut sim = SetSim::new(&[caller, callee]);
    sim.say("oi");
    let turn = sim.say("nada");
    assert!(matches!(turn.outputs.last(), Some(Output::End { reason: EndReason::RetriesExhausted, .. })));
    assert_eq!(sim.session.status(), SessionStatus::Ended);
    // The next message starts the session's own flow, not the sub-flow.
    assert_eq!(sim.texts("oi"), ["número?"]);
    assert_eq!(sim.session.call_stack().count(), 1);
    // An effect inside the sub-flow is awaited like any other; its failure ends it all.
    let turn = sim.say("5");
    let Some(Output::Effect(request)) = turn.outputs.first() else { panic!("{turn:?}") };
    assert_eq!(sim.session.status(), SessionStatus::WaitingForEffect);
    let done = sim.try_feed(Input::EffectResult { id: request.id, result: EffectOutcome::Success(json!(1)) }).unwrap();
    assert_eq!(texts(&done), ["voltou"]);
    sim.say("oi");
    let turn = sim.say("6");
    let Some(Output::Effect(request)) = turn.outputs.first() else { panic!("{turn:?}") };
    let failed = sim.try_feed(Input::EffectResult { id: request.id, result: EffectOutcome::Failure("503".into()) });
    let failed = failed.unwrap();
    assert!(matches!(failed.outputs.last(), Some(Output::End { reason: EndReason::EffectFailed { .. }, .. })));
    insta::assert_snapshot!("sub_flow_endings", sim.transcript);
}

#[test]
fn an_expired_session_inside_a_sub_flow_starts_its_own_flow_afresh() {
    let mut sim = SetSim::new(&[sample("cadastro.json"), sample("endereco.json")]);
    sim.say("oi");
    sim.say("Ana");
    sim.now = sim.now.saturating_add_seconds(25 * 60 * 60);
    let turn = sim.say("oi");
    assert_eq!(turn.outputs[0], Output::End { node: Some("ask_cep".into()), reason: EndReason::Expired });
    assert_eq!(texts(&turn), ["Olá! Vamos fazer o seu cadastro.", "Qual é o seu nome?"]);
    assert_eq!((sim.session.current_flow_id(), sim.session.call_stack().count()), ("cadastro", 0));
    assert_eq!(sim.session.variable("nome"), None);
}

#[test]
fn handle_without_a_set_refuses_a_call_and_changes_nothing() {
    let caller = sample("cadastro.json");
    let mut session = Session::new(&caller, SessionOptions::default());
    session.handle(&caller, Input::text("oi"), now()).unwrap();
    let before = session.clone();
    let err = session.handle(&caller, Input::text("Ana"), now()).unwrap_err();
    assert_eq!(err, SessionError::FlowSetRequired { node: "endereco".into(), flow: "endereco".into() });
    assert_eq!(session, before);
    assert_eq!(
        err.to_string(),
        r#"node "endereco" calls flow "endereco": run the session with a set of flows (handle_in)"#
    );
    // A set without the called flow: a typed error too, and still nothing changed.
    let only_caller: FlowSet = [caller.clone()].into_iter().collect();
    let err = session.handle_in(&only_caller, Input::text("Ana"), now()).unwrap_err();
    assert_eq!(err, SessionError::UnknownFlow { flow: "endereco".into() });
    assert_eq!(session, before);
    // A set without the session's own flow.
    let err = session.handle_in(&FlowSet::new(), Input::text("Ana"), now()).unwrap_err();
    assert_eq!(err, SessionError::UnknownFlow { flow: "cadastro".into() });
}

#[test]
fn recursion_beyond_the_bound_is_a_typed_error_naming_the_chain() {
    let ping = flow(
        "ping",
        json!([{"id": "s", "type": "start"}, {"id": "call", "type": "call_flow", "data": {"flowId": "pong"}}]),
        json!([{"id": "e1", "source": "s", "target": "call"}]),
    );
    let pong = flow(
        "pong",
        json!([{"id": "s", "type": "start"}, {"id": "m", "type": "message", "data": {"content": "pong"}},
               {"id": "call", "type": "call_flow", "data": {"flowId": "ping"}}]),
        json!([{"id": "e1", "source": "s", "target": "m"}, {"id": "e2", "source": "m", "target": "call"}]),
    );
    let flows: FlowSet = [ping.clone(), pong].into_iter().collect();
    let warnings = flows.check(&ping);
    assert_eq!(warnings.len(), 1);
    assert_eq!(warnings[0].code, "recursive-call");
    assert!(warnings[0].message.contains("ping → pong → ping"), "{}", warnings[0].message);

    let mut session = Session::new(&ping, SessionOptions::default());
    let before = session.clone();
    let err = session.handle_in(&flows, Input::text("oi"), now()).unwrap_err();
    let SessionError::CallDepthExceeded { chain, max } = &err else { panic!("{err:?}") };
    assert_eq!(*max, MAX_CALL_DEPTH);
    assert_eq!(chain.len(), MAX_CALL_DEPTH + 2);
    let expected: Vec<&str> = (0..MAX_CALL_DEPTH + 2).map(|i| if i % 2 == 0 { "ping" } else { "pong" }).collect();
    assert_eq!(chain, &expected);
    assert!(err.to_string().starts_with("sub-flow calls nest deeper than 8: ping → pong → ping → pong"), "{err}");
    assert_eq!(session, before, "a failed turn changes nothing");
}

#[test]
fn a_busy_loop_through_a_call_runs_out_of_steps_without_panicking() {
    let looping = flow(
        "loop",
        json!([{"id": "s", "type": "start"}, {"id": "call", "type": "call_flow", "data": {"flowId": "quick"}},
               {"id": "again", "type": "jump", "data": {"targetNodeId": "call"}}]),
        json!([{"id": "e1", "source": "s", "target": "call"}, {"id": "e2", "source": "call", "target": "again"}]),
    );
    // A call is not flagged as a loop without input: the called flow could wait.
    assert!(!looping.warnings().iter().any(|d| d.code == "loop-without-input"), "{:?}", looping.warnings());
    let quick = flow(
        "quick",
        json!([{"id": "s", "type": "start"}, {"id": "m", "type": "set_variable", "data": {"variableName": "v", "value": 1}}]),
        json!([{"id": "e1", "source": "s", "target": "m"}]),
    );
    let flows: FlowSet = [looping.clone(), quick].into_iter().collect();
    let mut session = Session::new(&looping, SessionOptions { max_steps: 50, ..Default::default() });
    let turn = session.handle_in(&flows, Input::text("oi"), now()).unwrap();
    let Some(Output::End { reason: EndReason::StepBudgetExceeded { nodes }, .. }) = turn.outputs.last() else {
        panic!("{turn:?}")
    };
    assert!(nodes.len() <= 3, "{nodes:?}");
    assert_eq!(session.status(), SessionStatus::Ended);
}

#[test]
fn check_in_detects_a_state_that_no_longer_fits_the_flows() {
    let (caller, callee) = (sample("cadastro.json"), sample("endereco.json"));
    let flows: FlowSet = [caller.clone(), callee].into_iter().collect();
    let mut session = Session::new(&caller, SessionOptions::default());
    session.handle_in(&flows, Input::text("oi"), now()).unwrap();
    session.handle_in(&flows, Input::text("Ana"), now()).unwrap();
    assert_eq!(session.check_in(&flows), Ok(()));
    assert_eq!(
        session.check_flow(&caller),
        Err(SessionError::FlowSetRequired { node: "endereco".into(), flow: "endereco".into() })
    );

    let replaced = |text: &str| -> FlowSet {
        let changed = flowcore::Flow::from_json(text).unwrap().compile().unwrap();
        let mut set = flows.clone();
        set.insert(changed);
        set
    };
    // The sub-flow lost the question the session waits at.
    let callee_text = common::sample_text("endereco.json").replace("ask_cep", "pergunta_cep");
    assert_eq!(session.check_in(&replaced(&callee_text)), Err(SessionError::MissingNode { node: "ask_cep".into() }));
    // The caller lost the call node the session will return to.
    let caller_text = common::sample_text("cadastro.json")
        .replace("\"endereco\", \"type\"", "\"chama\", \"type\"")
        .replace("\"ask_name\", \"target\": \"endereco\"", "\"ask_name\", \"target\": \"chama\"")
        .replace("\"source\": \"endereco\"", "\"source\": \"chama\"");
    assert_eq!(session.check_in(&replaced(&caller_text)), Err(SessionError::MissingNode { node: "endereco".into() }));
    // The call node is now another kind of node.
    let caller_text = common::sample_text("cadastro.json")
        .replace("\"type\": \"call_flow\"", "\"type\": \"message\", \"content\": \"x\"")
        .replace("\"flowId\"", "\"content\": \"x\", \"flowId\"");
    assert_eq!(
        session.check_in(&replaced(&caller_text)),
        Err(SessionError::NodeChanged { node: "endereco".into(), waiting: "a sub-flow", found: "message" })
    );
    // The same errors stop a turn, and leave the session as it was.
    let before = session.clone();
    let err = session.handle_in(&replaced(&callee_text), Input::text("01310-100"), now()).unwrap_err();
    assert_eq!(err, SessionError::MissingNode { node: "ask_cep".into() });
    assert_eq!(session, before);
}

#[test]
fn call_flow_node_errors_are_diagnostics() {
    let diagnose = |data: Value| -> Vec<(&'static str, String)> {
        let flow: flowcore::Flow = serde_json::from_value(json!({"id": "f", "nodes": [
            {"id": "s", "type": "start"}, {"id": "call", "type": "call_flow", "data": data}],
            "edges": [{"id": "e", "source": "s", "target": "call"}]}))
        .unwrap();
        match flow.compile() {
            Ok(compiled) => compiled.warnings().iter().map(|d| (d.code, d.message.clone())).collect(),
            Err(e) => e.diagnostics().iter().map(|d| (d.code, d.message.clone())).collect(),
        }
    };
    assert_eq!(diagnose(json!({})), [("missing-field", "the call_flow node has no `flowId`".to_string())]);
    assert_eq!(diagnose(json!({"flowId": ["x"]}))[0].0, "invalid-field");
    assert_eq!(
        diagnose(json!({"flowId": "x", "inputs": "nome"})),
        [("invalid-field", r#"`inputs` must be an object, found "nome""#.to_string())]
    );
    assert_eq!(diagnose(json!({"flowId": "x", "outputs": {"a": 3}}))[0].0, "invalid-field");
    // Inputs read the caller's variables like any template.
    assert_eq!(diagnose(json!({"flowId": "x", "inputs": {"a": "{{ghost}}"}}))[0].0, "undefined-variable");
    assert_eq!(diagnose(json!({"flowId": 42})), []);
    let graph = compile(json!({"id": "f", "nodes": [{"id": "s", "type": "start"},
        {"id": "call", "type": "subflow", "data": {"flowId": "x"}}], "edges": [{"id": "e", "source": "s", "target": "call"}]}))
    .graph();
    assert_eq!(graph.nodes[1].kind, "call_flow");
    assert_eq!(graph.nodes[1].text, "→ flow x");
}

mod properties {
    //! Random sets of flows that call each other (recursion included), driven by random
    //! inputs: replays are identical, state round-trips change nothing, failed turns change
    //! nothing, and the stored state always fits the flows.

    use super::*;
    use proptest::prelude::*;

    const FLOWS: usize = 3;

    /// One generated node: a type and small numbers that pick its settings and targets.
    type NodeSeed = (u8, u8, u8, u8);

    fn node_json(flow: usize, i: usize, n: usize, (kind, a, b, c): NodeSeed) -> (Value, Vec<Value>) {
        let id = format!("n{i}");
        let t = |x: u8| format!("n{}", 1 + x as usize % (n - 1));
        let var = format!("v{}", a % 3);
        let edge = |k: &str, target: String, handle: Option<&str>| json!({"id": format!("{id}-{k}"), "source": id, "target": target, "sourceHandle": handle});
        let mut edges = vec![];
        let node = match kind % 9 {
            0 => {
                edges.push(edge("d", t(b), None));
                json!({"type": "message", "data": {"content": format!("f{flow} {id} {{{{{var}}}}}")}})
            }
            1 => {
                if c % 4 != 0 {
                    edges.push(edge("d", t(b), None));
                }
                let validation = ["text", "number"][c as usize % 2];
                json!({"type": "question", "data": {"content": format!("f{flow} {id}?"), "variableName": var,
                    "validationType": validation, "maxRetries": 1 + a % 2}})
            }
            2 => {
                edges.push(edge("t", t(b), Some("true")));
                edges.push(edge("f", t(c), Some("false")));
                json!({"type": "condition", "data": {"condition": {"variableName": var, "operator": "==", "value": "1"}}})
            }
            3 => {
                if c % 3 != 0 {
                    edges.push(edge("r", t(b), Some("return")));
                }
                json!({"type": "call_flow", "data": {"flowId": format!("f{}", a as usize % FLOWS),
                    "inputs": {"v0": "{{v1}}", "v1": c % 5}, "outputs": {"v2": "v0", "v1": "v2"}}})
            }
            4 => json!({"type": "end", "data": {"content": format!("f{flow} fim {{{{v0}}}}")}}),
            5 => {
                edges.push(edge("d", t(b), None));
                json!({"type": "set_variable", "data": {"variableName": var, "expression": "v1 + 1"}})
            }
            6 => {
                edges.push(edge("s", t(b), Some("success")));
                json!({"type": "api_call", "data": {"url": "https://x.test/{{v0}}", "responseVariable": var}})
            }
            7 => json!({"type": "jump", "data": {"targetNodeId": t(b)}}),
            _ => {
                edges.push(edge("d", t(b), None));
                json!({"type": "delay", "data": {"seconds": 1 + c % 40}})
            }
        };
        let mut node = node;
        node["id"] = json!(id);
        (node, edges)
    }

    fn build_flow(flow: usize, seeds: &[NodeSeed]) -> Option<CompiledFlow> {
        let n = seeds.len() + 1;
        let mut nodes = vec![json!({"id": "n0", "type": "start"})];
        let mut edges = vec![json!({"id": "s", "source": "n0", "target": "n1"})];
        for (i, seed) in seeds.iter().enumerate() {
            let (node, es) = node_json(flow, i + 1, n, *seed);
            nodes.push(node);
            edges.extend(es);
        }
        let text = json!({"id": format!("f{flow}"), "nodes": nodes, "edges": edges}).to_string();
        flowcore::Flow::from_json(&text).ok()?.compile().ok()
    }

    fn input(kind: u8, param: u8, pending: Option<flowcore::EffectId>) -> Input {
        match (kind % 4, pending) {
            (3, Some(id)) => Input::EffectResult {
                id,
                result: if param % 4 == 0 {
                    EffectOutcome::Failure("boom".into())
                } else {
                    EffectOutcome::Success(json!(param % 3))
                },
            },
            (2, _) => Input::Tick,
            _ => Input::text(["1", "2", "oi", ""][param as usize % 4]),
        }
    }

    /// Runs the inputs; returns every result (outputs or error) and the final state.
    fn run(flows: &FlowSet, inputs: &[(u8, u8)], round_trip: bool) -> Result<(Vec<String>, Session), TestCaseError> {
        let root = flows.get("f0").expect("f0 is in the set");
        let mut session = Session::new(root, SessionOptions { max_steps: 60, ..Default::default() });
        let mut now = Timestamp::from_unix_millis(T0);
        let mut log = Vec::new();
        for &(kind, param) in inputs {
            now = now.saturating_add_seconds(30);
            let before = session.clone();
            let result = session.handle_in(flows, input(kind, param, session.pending_effect()), now);
            match &result {
                Err(_) => prop_assert_eq!(&session, &before, "a failed turn changed the state"),
                Ok(_) => {
                    prop_assert_eq!(session.check_in(flows), Ok(()));
                    prop_assert!(session.call_stack().count() <= MAX_CALL_DEPTH);
                    prop_assert!(flows.contains(session.current_flow_id()));
                }
            }
            log.push(format!("{result:?}"));
            if round_trip {
                let back = Session::from_json(&session.to_json()).map_err(|e| TestCaseError::fail(e.to_string()))?;
                prop_assert_eq!(&back, &session, "JSON round-trip changed the state");
                session = back;
            }
        }
        Ok((log, session))
    }

    fn flow_seeds() -> impl Strategy<Value = Vec<NodeSeed>> {
        prop::collection::vec((any::<u8>(), any::<u8>(), any::<u8>(), any::<u8>()), 1..8)
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

        #[test]
        fn sub_flow_replays_are_identical_and_round_trips_change_nothing(
            seeds in prop::collection::vec(flow_seeds(), FLOWS),
            inputs in prop::collection::vec((any::<u8>(), any::<u8>()), 1..30),
        ) {
            let Some(flows) = seeds.iter().enumerate().map(|(i, s)| build_flow(i, s)).collect::<Option<Vec<_>>>() else {
                return Ok(());
            };
            let flows: FlowSet = flows.into_iter().collect();
            let (log_a, state_a) = run(&flows, &inputs, false)?;
            let (log_b, state_b) = run(&flows, &inputs, false)?;
            prop_assert_eq!(&log_a, &log_b);
            prop_assert_eq!(&state_a, &state_b);
            let (log_c, state_c) = run(&flows, &inputs, true)?;
            prop_assert_eq!(&log_a, &log_c);
            prop_assert_eq!(&state_a, &state_c);
        }
    }

    /// The generator reaches the interesting states: calls that wait inside a sub-flow,
    /// returns, and the depth error.
    #[test]
    fn the_generator_reaches_sub_flows_returns_and_depth_errors() {
        use proptest::strategy::ValueTree;
        use proptest::test_runner::TestRunner;
        let mut runner = TestRunner::deterministic();
        let (mut waited_inside, mut depth_errors, mut returned) = (0, 0, 0);
        for _ in 0..400 {
            let seeds = prop::collection::vec(flow_seeds(), FLOWS).new_tree(&mut runner).unwrap().current();
            let Some(flows) = seeds.iter().enumerate().map(|(i, s)| build_flow(i, s)).collect::<Option<Vec<_>>>()
            else {
                continue;
            };
            let flows: FlowSet = flows.into_iter().collect();
            let mut session = Session::new(flows.get("f0").unwrap(), SessionOptions::default());
            for text in ["oi", "1", "2"] {
                let depth_before = session.call_stack().count();
                match session.handle_in(&flows, Input::text(text), now()) {
                    Err(SessionError::CallDepthExceeded { .. }) => depth_errors += 1,
                    Err(_) => {}
                    Ok(turn) => {
                        // Text after an end's message in one turn: a sub-flow returned.
                        let texts = texts(&turn);
                        let after_end =
                            texts.iter().position(|t| t.contains(" fim ")).is_some_and(|i| i + 1 < texts.len());
                        if after_end || session.call_stack().count() < depth_before {
                            returned += 1;
                        }
                        if session.status() == SessionStatus::WaitingForInput && session.call_stack().count() > 0 {
                            waited_inside += 1;
                        }
                    }
                }
            }
        }
        assert!(
            waited_inside >= 10 && depth_errors >= 10 && returned >= 10,
            "{waited_inside} {depth_errors} {returned}"
        );
    }
}
