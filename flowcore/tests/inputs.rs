//! The structured inputs (location, media, contact, reactions, orders, edits, flow
//! replies) and the `whatsapp_flow` node, end to end on `tests/flows/visita.json`.

mod common;

use common::{compile, sample, texts, Sim};
use flowcore::{Flow, Input, MediaKind, Message, OrderItem, Output, Session, SessionOptions, SessionStatus, Timestamp};
use proptest::prelude::*;
use serde_json::{json, Value};

fn location() -> Input {
    Input::Location {
        latitude: -23.5505,
        longitude: -46.6333,
        name: Some("Sé".into()),
        address: Some("Praça da Sé, São Paulo".into()),
    }
}

fn media(kind: MediaKind) -> Input {
    Input::Media {
        kind,
        id: "media-1".into(),
        mime_type: Some("image/jpeg".into()),
        caption: Some("o equipamento".into()),
        filename: None,
    }
}

fn contact() -> Input {
    Input::Contacts {
        contacts: json!([{"name": {"formatted_name": "João Silva", "first_name": "João"},
                           "phones": [{"phone": "+55 11 98888-7777", "wa_id": "5511988887777", "type": "CELL"}]}]),
    }
}

/// The flow message a turn sent, if any.
fn flow_message(outputs: &[Output]) -> Option<&Message> {
    outputs.iter().find_map(|o| match o {
        Output::Send { message: m @ Message::Flow { .. }, .. } => Some(m),
        _ => None,
    })
}

fn token_of(message: &Message) -> String {
    match message {
        Message::Flow { flow_token, .. } => flow_token.clone(),
        other => panic!("not a flow message: {other:?}"),
    }
}

/// Drives visita.json to the `whatsapp_flow` node; returns the token it sent.
fn to_schedule(sim: &mut Sim) -> String {
    sim.say("oi");
    sim.feed(location());
    sim.feed(media(MediaKind::Image));
    let turn = sim.feed(contact());
    token_of(flow_message(&turn.outputs).expect("the flow message is sent"))
}

#[test]
fn visita_takes_a_location_a_photo_a_contact_and_a_flow_reply() {
    let mut sim = Sim::with(sample("visita.json"), SessionOptions { seed: 42, ..SessionOptions::default() });
    assert_eq!(
        sim.texts("oi"),
        ["Olá! Vamos agendar a visita do nosso técnico.", "Envie a localização do imóvel pelo clipe 📎 → Localização."]
    );
    // Text, and an event about another message, are not a location: the question's error.
    assert_eq!(sim.texts("Rua Augusta, 100"), ["Preciso da localização do imóvel (📎 → Localização)."]);
    let reaction = sim.feed(Input::Reaction { message_id: "wamid.X".into(), emoji: Some("👍".into()) });
    assert_eq!(texts(&reaction), ["Preciso da localização do imóvel (📎 → Localização)."]);
    let turn = sim.feed(location());
    assert_eq!(
        texts(&turn),
        ["Recebemos: Sé (-23.5505, -46.6333).", "Agora mande uma foto do equipamento ou a nota fiscal em PDF."]
    );
    assert_eq!(
        sim.session.variable("where"),
        Some(&json!({"latitude": -23.5505, "longitude": -46.6333, "name": "Sé", "address": "Praça da Sé, São Paulo"}))
    );
    // An audio is media, but not of the kinds asked for.
    assert_eq!(texts(&sim.feed(media(MediaKind::Audio))), ["Por favor, envie: uma foto, um documento."]);
    let turn = sim.feed(media(MediaKind::Image));
    assert_eq!(texts(&turn), ["Quem vai receber o técnico? Compartilhe o contato."]);
    assert_eq!(sim.session.variable("photo").and_then(|p| p.get("id")), Some(&json!("media-1")));

    let turn = sim.feed(contact());
    let message = flow_message(&turn.outputs).expect("the flow message is sent").clone();
    let token = token_of(&message);
    assert_eq!(
        message,
        Message::Flow {
            header: Some("Agendamento".into()),
            body: "João Silva, escolha o dia e o horário da visita.".into(),
            footer: Some("Leva menos de um minuto".into()),
            flow_id: "1234567890".into(),
            cta: "Agendar".into(),
            flow_token: token.clone(),
            screen: Some("AGENDA".into()),
            data: json!({"endereco": "Praça da Sé, São Paulo", "contato": "João Silva"}),
        }
    );
    assert_eq!(sim.session.variable("contato").and_then(|c| c.get("wa_id")), Some(&json!("5511988887777")));

    // A reply to another flow message is refused; the right token is taken.
    let stale =
        Input::FlowReply { flow_token: Some("flowcore-0000000000000000".into()), response: json!({"dia": "?"}) };
    assert_eq!(texts(&sim.feed(stale)), ["Por favor, toque no botão da mensagem para preencher o formulário."]);
    assert_eq!(sim.session.status(), SessionStatus::WaitingForInput);
    let reply = Input::FlowReply {
        flow_token: Some(token.clone()),
        response: json!({"flow_token": token, "dia": "12/12", "horario": "14:00"}),
    };
    let turn = sim.feed(reply);
    assert_eq!(texts(&turn), ["Visita agendada para 12/12 às 14:00. João Silva receberá o técnico. Até lá!"]);
    assert_eq!(sim.session.variable("agenda"), Some(&json!({"dia": "12/12", "horario": "14:00"})));
    assert_eq!(sim.session.status(), SessionStatus::Ended);
    insta::assert_snapshot!("visita", sim.transcript);
}

#[test]
fn flow_tokens_come_from_the_seed() {
    let token =
        |seed| to_schedule(&mut Sim::with(sample("visita.json"), SessionOptions { seed, ..Default::default() }));
    assert_eq!(token(1), token(1));
    assert_ne!(token(1), token(2));
    // A stored session still expects the token it sent.
    let mut sim = Sim::with(sample("visita.json"), SessionOptions { seed: 9, ..Default::default() });
    let sent = to_schedule(&mut sim);
    sim.session = Session::from_json(&sim.session.to_json()).unwrap();
    let reply = Input::FlowReply { flow_token: Some(sent), response: json!({"dia": "1", "horario": "2"}) };
    assert_eq!(sim.feed(reply).outputs.last().map(|o| matches!(o, Output::End { .. })), Some(true));
}

#[test]
fn an_unanswered_flow_times_out_by_its_edge() {
    let mut sim = Sim::new(sample("visita.json"));
    to_schedule(&mut sim);
    let turn = sim.tick_to_wake();
    assert_eq!(texts(&turn), ["Não recebemos o agendamento. Envie uma mensagem quando quiser retomar."]);
    assert_eq!(sim.session.current_node(), Some("late"));
}

#[test]
fn events_about_other_messages_start_nothing() {
    let mut sim = Sim::new(sample("visita.json"));
    for input in [
        Input::Reaction { message_id: "wamid.A".into(), emoji: None },
        Input::Edit { message_id: "wamid.B".into(), message: Some(Box::new(Input::text("oi"))) },
        Input::Revoke { message_id: "wamid.C".into() },
        Input::FlowReply { flow_token: Some("t".into()), response: json!({}) },
        Input::Unsupported { kind: "system".into() },
    ] {
        assert!(sim.feed(input).outputs.is_empty());
        assert_eq!(sim.session.status(), SessionStatus::NotStarted);
    }
    // An order is a message: it starts the flow (and is not an answer).
    let order = Input::Order { catalog_id: None, text: None, items: vec![] };
    assert_eq!(sim.feed(order).outputs.len(), 2);
}

#[test]
fn a_side_event_ends_an_expired_session_without_starting_it_again() {
    let mut sim = Sim::with(sample("visita.json"), SessionOptions { ttl_millis: 60_000, ..Default::default() });
    sim.say("oi");
    sim.advance_secs(120);
    let turn = sim.feed(Input::Reaction { message_id: "wamid.A".into(), emoji: Some("👍".into()) });
    assert_eq!(turn.outputs.len(), 1, "{:?}", turn.outputs);
    assert!(matches!(&turn.outputs[0], Output::End { reason: flowcore::EndReason::Expired, .. }), "{:?}", turn.outputs);
    assert_eq!(sim.session.status(), SessionStatus::Ended);
    // The next message starts afresh.
    assert_eq!(sim.say("oi").outputs.len(), 2);
}

#[test]
fn text_questions_still_read_captions_and_contacts_can_have_no_phone() {
    let flow = compile(json!({"id": "q", "nodes": [
        {"id": "s", "type": "start"},
        {"id": "name", "type": "question", "data": {"content": "Nome?", "variableName": "name"}},
        {"id": "who", "type": "question", "data": {"content": "Contato?", "variableName": "who", "validationType": "contact"}},
        {"id": "any", "type": "question", "data": {"content": "Arquivo?", "variableName": "file", "validationType": "media"}},
        {"id": "bye", "type": "end", "data": {"content": "{{name}} / {{who.name}} / {{file.kind}}"}}],
      "edges": [{"id": "1", "source": "s", "target": "name"}, {"id": "2", "source": "name", "target": "who"},
                {"id": "3", "source": "who", "target": "any"}, {"id": "4", "source": "any", "target": "bye"}]}));
    let mut sim = Sim::new(flow);
    sim.say("oi");
    sim.feed(media(MediaKind::Image));
    assert_eq!(sim.session.variable("name"), Some(&json!("o equipamento")));
    assert_eq!(texts(&sim.feed(Input::Contacts { contacts: json!([]) })), ["Por favor, compartilhe um contato."]);
    sim.feed(Input::Contacts { contacts: json!([{"name": {"formatted_name": "Ana"}}]) });
    let turn = sim.feed(media(MediaKind::Sticker));
    assert_eq!(texts(&turn), ["o equipamento / Ana / sticker"]);
}

#[test]
fn order_questions_store_the_cart_and_its_total() {
    let flow = compile(json!({"id": "o", "nodes": [
        {"id": "s", "type": "start"},
        {"id": "cart", "type": "question", "data": {"content": "Monte seu pedido no catálogo.", "variableName": "pedido", "validationType": "order"}},
        {"id": "bye", "type": "end", "data": {"content": "Total: {{pedido.total}} {{pedido.currency}} ({{pedido.items.0.product_retailer_id}})"}}],
      "edges": [{"id": "1", "source": "s", "target": "cart"}, {"id": "2", "source": "cart", "target": "bye"}]}));
    let mut sim = Sim::new(flow);
    sim.say("oi");
    let item = |id: &str, quantity, item_price| OrderItem {
        product_retailer_id: id.into(),
        quantity,
        item_price,
        currency: "BRL".into(),
    };
    let empty = Input::Order { catalog_id: None, text: None, items: vec![] };
    assert_eq!(texts(&sim.feed(empty)), ["Por favor, envie seu pedido pelo catálogo."]);
    let order = Input::Order {
        catalog_id: Some("c1".into()),
        text: None,
        items: vec![item("SKU-1", 3.0, 10.5), item("SKU-2", 1.0, 0.1)],
    };
    assert_eq!(texts(&sim.feed(order)), ["Total: 31.6 BRL (SKU-1)"]);
}

fn diagnostics(data: Value) -> Vec<String> {
    let flow: Flow = serde_json::from_value(json!({"id": "d", "nodes": [
        {"id": "s", "type": "start"}, {"id": "f", "type": "whatsapp_flow", "data": data}],
        "edges": [{"id": "1", "source": "s", "target": "f"}]}))
    .unwrap();
    match flow.compile() {
        Ok(compiled) => compiled.warnings().iter().map(|d| d.code.to_string()).collect(),
        Err(err) => err.diagnostics().iter().filter(|d| d.is_error()).map(|d| d.code.to_string()).collect(),
    }
}

#[test]
fn the_compiler_checks_metas_limits_for_flow_messages() {
    let good = json!({"content": "Agende", "flowId": "1", "cta": "Agendar", "variableName": "a", "screen": "S"});
    assert_eq!(diagnostics(good.clone()), Vec::<String>::new());
    let with = |key: &str, value: Value| {
        let mut data = good.clone();
        data[key] = value;
        diagnostics(data)
    };
    let without = |key: &str| {
        let mut data = good.clone();
        data.as_object_mut().unwrap().remove(key);
        diagnostics(data)
    };
    assert_eq!(without("flowId"), ["missing-field"]);
    assert_eq!(without("cta"), ["missing-field"]);
    assert_eq!(without("content"), ["missing-content"]);
    assert_eq!(without("variableName"), ["missing-variable-name"]);
    assert_eq!(with("cta", json!("Agendar a minha visita")), ["flow-cta-too-long"]);
    assert_eq!(with("cta", json!("Agendar 📅")), ["flow-cta-emoji"]);
    assert_eq!(with("content", json!("x".repeat(1025))), ["body-too-long"]);
    assert_eq!(with("footer", json!("y".repeat(61))), ["footer-too-long"]);
    assert_eq!(with("data", json!(["not", "an", "object"])), ["invalid-field"]);
    // Data opens a screen: without one there is nowhere to send it.
    let mut no_screen = good.clone();
    no_screen.as_object_mut().unwrap().remove("screen");
    no_screen["data"] = json!({"a": 1});
    assert_eq!(diagnostics(no_screen), ["flow-data-without-screen"]);
    // A templated button is checked once rendered, by the adapter.
    assert_eq!(with("cta", json!("{{nome}} muito longo para um botão")), ["undefined-variable"]);
}

#[test]
fn media_questions_name_unknown_media_types() {
    let flow: Flow = serde_json::from_value(json!({"id": "m", "nodes": [{"id": "s", "type": "start"},
        {"id": "q", "type": "question", "data": {"variableName": "f", "validationType": "media", "mediaTypes": ["image", "hologram"]}}],
        "edges": [{"id": "1", "source": "s", "target": "q"}]}))
    .unwrap();
    let err = flow.compile().unwrap_err();
    assert_eq!(err.diagnostics().iter().map(|d| d.code).collect::<Vec<_>>(), ["unknown-media-type"]);
}

#[test]
fn new_inputs_read_from_json_lines() {
    let cases = [
        (
            r#"{"type":"location","latitude":-23.5,"longitude":-46.6}"#,
            Input::Location { latitude: -23.5, longitude: -46.6, name: None, address: None },
        ),
        (
            r#"{"type":"reaction","message_id":"wamid.1","emoji":"❤️"}"#,
            Input::Reaction { message_id: "wamid.1".into(), emoji: Some("❤️".into()) },
        ),
        (
            r#"{"type":"nfm_reply","flow_token":"t","response":{"a":1}}"#,
            Input::FlowReply { flow_token: Some("t".into()), response: json!({"a": 1}) },
        ),
        (
            r#"{"type":"flow_reply","response":{"a":1}}"#,
            Input::FlowReply { flow_token: None, response: json!({"a": 1}) },
        ),
        (
            r#"{"type":"edit","message_id":"m","message":{"type":"text","text":"novo"}}"#,
            Input::Edit { message_id: "m".into(), message: Some(Box::new(Input::text("novo"))) },
        ),
        (r#"{"type":"revoke","message_id":"m"}"#, Input::Revoke { message_id: "m".into() }),
        (
            r#"{"type":"order","items":[{"product_retailer_id":"SKU","quantity":2,"item_price":9.9,"currency":"BRL"}]}"#,
            Input::Order {
                catalog_id: None,
                text: None,
                items: vec![OrderItem {
                    product_retailer_id: "SKU".into(),
                    quantity: 2.0,
                    item_price: 9.9,
                    currency: "BRL".into(),
                }],
            },
        ),
    ];
    for (line, expected) in cases {
        assert_eq!(serde_json::from_str::<Input>(line).unwrap(), expected, "{line}");
    }
}

// ---------------------------------------------------------------------------------------
// Properties.

fn short_text() -> impl Strategy<Value = String> {
    "\\PC{0,8}"
}

fn leaf_input() -> impl Strategy<Value = Input> {
    let kind = prop_oneof![
        Just(MediaKind::Image),
        Just(MediaKind::Video),
        Just(MediaKind::Audio),
        Just(MediaKind::Document),
        Just(MediaKind::Sticker)
    ];
    prop_oneof![
        short_text().prop_map(Input::text),
        (-100.0f64..100.0, -200.0f64..200.0, prop::option::of(short_text()), prop::option::of(short_text()))
            .prop_map(|(latitude, longitude, name, address)| Input::Location { latitude, longitude, name, address }),
        (
            kind,
            short_text(),
            prop::option::of("image/[a-z]{1,5}"),
            prop::option::of(short_text()),
            prop::option::of(short_text())
        )
            .prop_map(|(kind, id, mime_type, caption, filename)| Input::Media {
                kind,
                id,
                mime_type,
                caption,
                filename
            }),
        prop::collection::vec((short_text(), prop::option::of("\\+?[0-9]{0,13}")), 0..3).prop_map(|cards| {
            Input::Contacts {
                contacts: Value::Array(
                    cards
                        .into_iter()
                        .map(|(name, phone)| json!({"name": {"formatted_name": name}, "phones": [{"phone": phone}]}))
                        .collect(),
                ),
            }
        }),
        (short_text(), prop::option::of("[👍❤️😂]{0,1}"))
            .prop_map(|(message_id, emoji)| Input::Reaction { message_id, emoji }),
        (prop::option::of(short_text()), prop::collection::vec((short_text(), 0.0f64..1e6, -1e6f64..1e6), 0..3))
            .prop_map(|(text, items)| {
                Input::Order {
                    catalog_id: Some("c".into()),
                    text,
                    items: items
                        .into_iter()
                        .map(|(id, quantity, item_price)| OrderItem {
                            product_retailer_id: id,
                            quantity,
                            item_price,
                            currency: "BRL".into(),
                        })
                        .collect(),
                }
            }),
        short_text().prop_map(|message_id| Input::Revoke { message_id }),
        (prop::option::of(prop_oneof![Just("live".to_string()), short_text()]), any::<u8>(), short_text())
            .prop_map(|(flow_token, n, s)| Input::FlowReply { flow_token, response: json!({"dia": s, "n": n}) }),
        short_text().prop_map(|kind| Input::Unsupported { kind }),
        Just(Input::Tick),
    ]
}

fn any_input() -> impl Strategy<Value = Input> {
    prop_oneof![
        4 => leaf_input(),
        1 => (short_text(), prop::option::of(leaf_input()))
            .prop_map(|(message_id, message)| Input::Edit { message_id, message: message.map(Box::new) }),
    ]
}

/// Feeds `inputs` with the session's live flow token swapped in for `"live"`, so replies
/// sometimes carry the right token. Returns every turn's result and the final state.
fn replay(inputs: &[Input], seed: u64, round_trip: bool) -> (Vec<String>, Session) {
    let flow = sample("visita.json");
    let mut session = Session::new(&flow, SessionOptions { seed, ..Default::default() });
    let mut now = Timestamp::from_unix_seconds(1_700_000_000);
    let mut live = String::new();
    let mut log = Vec::new();
    for input in inputs {
        now = now.saturating_add_seconds(600);
        let input = match input {
            Input::FlowReply { flow_token: Some(t), response } if t == "live" => {
                Input::FlowReply { flow_token: Some(live.clone()), response: response.clone() }
            }
            other => other.clone(),
        };
        let result = session.handle(&flow, input, now);
        if let Ok(turn) = &result {
            if let Some(message) = flow_message(&turn.outputs) {
                live = token_of(message);
            }
        }
        log.push(format!("{result:?}"));
        if round_trip {
            session = Session::from_json(&session.to_json()).expect("a stored session loads");
        }
    }
    (log, session)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn every_new_input_round_trips_through_serde(input in any_input()) {
        let line = serde_json::to_string(&input).unwrap();
        let back: Input = serde_json::from_str(&line).unwrap();
        prop_assert_eq!(back, input, "{}", line);
    }

    #[test]
    fn no_input_panics_the_engine_and_replays_are_identical(
        inputs in prop::collection::vec(any_input(), 1..24),
        seed in any::<u64>(),
    ) {
        let (log_a, state_a) = replay(&inputs, seed, false);
        let (log_b, state_b) = replay(&inputs, seed, false);
        prop_assert_eq!(&log_a, &log_b);
        prop_assert_eq!(&state_a, &state_b);
        // Storing and loading the session between inputs changes nothing.
        let (log_c, state_c) = replay(&inputs, seed, true);
        prop_assert_eq!(&log_a, &log_c);
        prop_assert_eq!(&state_a, &state_c);
        // Side events never fail: only effect results can be refused.
        prop_assert!(log_a.iter().all(|r| r.starts_with("Ok(")), "{:?}", log_a);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    /// Whatever a builder writes into a `whatsapp_flow` node or a structured question,
    /// compile answers with diagnostics or a flow that runs any input without panicking.
    #[test]
    fn arbitrary_flow_nodes_and_structured_questions_never_panic(
        texts in ("[a-z]{0,8}", "[0-9]{0,10}", "\\PC{0,24}", "\\PC{0,40}", "[A-Z_]{0,8}", "\\PC{0,70}"),
        validation in prop_oneof![3 => Just("location"), 3 => Just("media"), 3 => Just("contact"), 2 => Just("order"), 1 => Just("bogus")],
        media_types in prop::collection::vec(prop_oneof![4 => Just(json!("image")), 4 => Just(json!("file")), 1 => Just(json!(3))], 0..3),
        data in prop_oneof![3 => Just(json!(null)), 3 => Just(json!({"a": "{{q}}"})), 1 => Just(json!([1]))],
        inputs in prop::collection::vec(any_input(), 0..10),
    ) {
        let flow = json!({"id": "p", "nodes": [
            {"id": "s", "type": "start"},
            {"id": "q", "type": "question", "data": {"variableName": "q", "validationType": validation, "mediaTypes": media_types}},
            {"id": "f", "type": "whatsapp_flow", "data": {"variableName": texts.0, "flowId": texts.1, "cta": texts.2,
                "content": texts.3, "screen": texts.4, "footer": texts.5, "data": data, "timeoutSeconds": 5}}],
            "edges": [{"id": "1", "source": "s", "target": "q"}, {"id": "2", "source": "q", "target": "f"}]});
        let Ok(flow) = serde_json::from_value::<Flow>(flow) else { return Ok(()) };
        let Ok(compiled) = flow.compile() else { return Ok(()) };
        let mut session = Session::new(&compiled, SessionOptions::default());
        let mut now = Timestamp::from_unix_seconds(1_700_000_000);
        for input in inputs {
            now = now.saturating_add_seconds(60);
            prop_assert!(session.handle(&compiled, input, now).is_ok());
        }
    }
}
