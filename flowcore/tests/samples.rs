//! The sample flows in tests/flows, end to end, with transcript snapshots.

mod common;

use common::{sample, sample_text, texts, Sim};
use flowcore::{EffectId, EffectKind, EndReason, Input, Message, Output, Session, SessionOptions, SessionStatus};
use serde_json::{json, Value};

#[test]
fn lead_flow_qualifies_an_adult() {
    let mut sim = Sim::new(sample("lead.json"));
    assert_eq!(sim.texts("oi"), ["Olá! Aqui é a Acme.", "Qual é o seu nome?"]);
    assert_eq!(sim.texts("Maria"), ["Prazer, Maria! Quantos anos você tem?"]);
    assert_eq!(sim.texts("30"), ["Ótimo, Maria. Qual é o seu e-mail?"]);
    let turn = sim.say("maria@example.com");
    assert_eq!(texts(&turn), ["Obrigado, Maria! Enviaremos a proposta para maria@example.com."]);
    assert_eq!(turn.outputs.last(), Some(&Output::End { node: Some("bye".into()), reason: EndReason::Completed }));
    assert_eq!(sim.session.status(), SessionStatus::Ended);
    assert_eq!(sim.session.variable("age"), Some(&json!(30)));
    insta::assert_snapshot!("lead_adult", sim.transcript);
}

#[test]
fn lead_flow_retries_and_turns_away_a_minor_then_starts_afresh() {
    let mut sim = Sim::new(sample("lead.json"));
    sim.say("oi");
    sim.say("Maria");
    assert_eq!(sim.texts("trinta"), ["Resposta inválida. Digite um número."]);
    assert_eq!(sim.session.current_node(), Some("ask_age"));
    assert_eq!(sim.texts("9"), ["Desculpe, Maria, atendemos apenas maiores de 18 anos."]);
    assert_eq!(sim.session.status(), SessionStatus::Ended);
    // After an end, the next message starts a fresh conversation; it is not an answer.
    assert_eq!(sim.texts("oi de novo"), ["Olá! Aqui é a Acme.", "Qual é o seu nome?"]);
    assert_eq!(sim.session.variable("name"), None);
    insta::assert_snapshot!("lead_minor", sim.transcript);
}

#[test]
fn lead_flow_idle_state_is_small() {
    let flow = sample("lead.json");
    let mut sim = Sim::new(flow);
    let mut largest = 0;
    for text in ["oi", "Maria", "30"] {
        sim.say(text);
        largest = largest.max(sim.session.to_json().len());
    }
    assert!(largest <= 300, "{largest} bytes: {}", sim.session.to_json());
}

#[test]
fn support_menu_sales_path() {
    let mut sim = Sim::new(sample("support_menu.json"));
    let turn = sim.say("oi");
    match &turn.outputs[..] {
        [Output::Send { message: Message::Buttons { header, body, footer, buttons }, .. }] => {
            assert_eq!(header.as_deref(), Some("Atendimento"));
            assert_eq!(body, "Como podemos ajudar?");
            assert_eq!(footer.as_deref(), Some("Atendimento 24h"));
            assert_eq!(buttons.len(), 3);
            assert_eq!(buttons[1].id, "btn_vendas");
        }
        other => panic!("{other:?}"),
    }
    let turn = sim.feed(Input::choice("btn_vendas"));
    assert_eq!(texts(&turn), ["Um consultor de vendas vai falar com você."]);
    assert_eq!(sim.session.variable("choice"), Some(&json!("btn_vendas")));
    assert_eq!(sim.session.status(), SessionStatus::Ended);
    insta::assert_snapshot!("support_sales", sim.transcript);
}

#[test]
fn support_menu_list_then_handoff() {
    let mut sim = Sim::new(sample("support_menu.json"));
    sim.say("oi");
    // A typed title is accepted as well as the button id.
    let turn = sim.say("suporte");
    match &turn.outputs[..] {
        [Output::Send { message: Message::List { button, sections, .. }, .. }] => {
            assert_eq!(button, "Ver opções");
            assert_eq!(sections[0].rows[1].id, "billing");
            assert_eq!(sections[0].rows[0].description.as_deref(), Some("Problemas técnicos"));
        }
        other => panic!("{other:?}"),
    }
    let turn = sim.feed(Input::Choice { id: "tech".into(), title: Some("Suporte técnico".into()) });
    assert_eq!(texts(&turn), ["Vou te transferir para um atendente."]);
    assert_eq!(turn.outputs[1], Output::Handoff { node: "to_human".into(), queue: Some("tech".into()) });
    assert_eq!(sim.session.status(), SessionStatus::HandedOff);
    // Handed-off sessions ignore messages until the host closes them.
    assert!(sim.say("alô?").outputs.is_empty());
    sim.session.close();
    assert_eq!(sim.session.status(), SessionStatus::Ended);
    assert_eq!(sim.say("oi").outputs.len(), 1);
    insta::assert_snapshot!("support_handoff", sim.transcript);
}

#[test]
fn support_menu_order_lookup_found_and_not_found() {
    let mut sim = Sim::new(sample("support_menu.json"));
    sim.say("oi");
    sim.feed(Input::choice("btn_status"));
    assert_eq!(sim.texts("12345"), ["O pedido tem 6 dígitos."]);
    let turn = sim.say("123456");
    let Output::Effect(request) = &turn.outputs[0] else { panic!("{:?}", turn.outputs) };
    assert_eq!(request.id, EffectId(1));
    assert!(request.expects_result());
    match &request.kind {
        EffectKind::ApiCall { method, url, timeout_ms, .. } => {
            assert_eq!(
                (method.as_str(), url.as_str(), *timeout_ms),
                ("GET", "https://api.example.com/orders/123456", Some(5000))
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(sim.session.status(), SessionStatus::WaitingForEffect);
    let turn = sim.ok(EffectId(1), json!({"status": "enviado"}));
    assert_eq!(texts(&turn), ["Pedido 123456: enviado."]);

    // Not found: the condition's false branch jumps back to the menu.
    sim.say("oi");
    sim.feed(Input::choice("btn_status"));
    sim.say("654321");
    let turn = sim.ok(EffectId(2), json!({"error": "not found"}));
    assert!(matches!(&turn.outputs[..], [Output::Send { message: Message::Buttons { .. }, .. }]));
    assert_eq!(sim.session.current_node(), Some("menu"));
    insta::assert_snapshot!("support_order", sim.transcript);
}

#[test]
fn support_menu_invalid_edge_after_max_retries() {
    let mut sim = Sim::new(sample("support_menu.json"));
    sim.say("oi");
    sim.feed(Input::choice("btn_status"));
    assert_eq!(sim.texts("abc"), ["O pedido tem 6 dígitos."]);
    assert_eq!(sim.texts("def"), ["Não consegui validar o pedido. Tente mais tarde."]);
    assert_eq!(sim.session.status(), SessionStatus::Ended);
}

#[test]
fn big_flow_reproduces_its_script() {
    let script: Value = serde_json::from_str(&sample_text("big.script.json")).unwrap();
    let turns = script["conversation"]["turns"].as_array().unwrap();
    let expected = script["conversation"]["expected"].as_array().unwrap();
    assert_eq!(turns.len(), expected.len());
    let flow = sample("big.json");
    assert_eq!(flow.node_count(), 1010);
    let mut session = Session::new(&flow, SessionOptions::default());
    let now = flowcore::Timestamp::from_unix_seconds(1_700_000_000);
    for (i, (input, want)) in turns.iter().zip(expected).enumerate() {
        let turn = session.handle(&flow, Input::text(input.as_str().unwrap()), now).unwrap();
        let want: Vec<&str> = want.as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
        assert_eq!(texts(&turn), want, "turn {i} ({input})");
    }
    assert_eq!(session.status(), SessionStatus::Ended);
    assert!(session.to_json().contains(r#""p":""#) && session.path().count() >= 1);
}

#[test]
fn samples_compile_without_warnings() {
    for name in ["lead.json", "support_menu.json", "big.json"] {
        let flow = sample(name);
        assert_eq!(flow.warnings(), &[], "{name}");
    }
}
