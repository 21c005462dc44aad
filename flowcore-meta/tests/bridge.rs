//! The bridge on the fixture corpus: every kind of user message becomes a typed engine
//! input, and the engine's WhatsApp Flow message becomes Meta's interactive `flow`.

use std::path::PathBuf;

use flowcore::{Input, MediaKind, Message, OrderItem};
use flowcore_meta::outgoing::{BuildError, Recipient};
use flowcore_meta::{event_to_input, parse, to_outgoing};
use serde_json::{json, Value};

fn inputs(name: &str) -> Vec<Input> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name);
    let body = std::fs::read(&path).unwrap_or_else(|e| panic!("{name}: {e}"));
    parse(&body).unwrap().into_events().iter().filter_map(event_to_input).collect()
}

#[test]
fn every_message_kind_becomes_a_typed_input() {
    assert_eq!(
        inputs("07-reaction.json"),
        [Input::Reaction { message_id: "wamid.RkFLRS9vdXQtMDAwMw==".into(), emoji: Some("👍".into()) }]
    );
    assert_eq!(
        inputs("19-reaction-removed.json"),
        [Input::Reaction { message_id: "wamid.RkFLRS9vdXQtMDE5".into(), emoji: None }]
    );
    assert_eq!(
        inputs("20-order.json"),
        [Input::Order {
            catalog_id: Some("400000000000001".into()),
            text: Some("Sem cebola".into()),
            items: vec![OrderItem {
                product_retailer_id: "SKU-001".into(),
                quantity: 3.0,
                item_price: 10.5,
                currency: "BRL".into(),
            }],
        }]
    );
    assert_eq!(
        inputs("25-nfm-reply.json"),
        [Input::FlowReply { flow_token: Some("t-1".into()), response: json!({"flow_token": "t-1", "rating": "5"}) }]
    );
    assert_eq!(
        inputs("26-edit-revoke.json"),
        [
            Input::Edit {
                message_id: "wamid.RkFLRS9pbi0wMjU5".into(),
                message: Some(Box::new(Input::text("corrigido")))
            },
            Input::Revoke { message_id: "wamid.RkFLRS9pbi0wMjU4".into() },
        ]
    );
    let [Input::Location { latitude, longitude, .. }] = inputs("05-location.json")[..] else {
        panic!("not a location")
    };
    assert!((-90.0..=90.0).contains(&latitude) && (-180.0..=180.0).contains(&longitude));
    let image = inputs("02-image-caption.json");
    let [Input::Media { kind: MediaKind::Image, id, mime_type, caption, .. }] = &image[..] else { panic!("{image:?}") };
    assert!(!id.is_empty() && mime_type.as_deref() == Some("image/jpeg") && caption.is_some(), "{image:?}");
}

/// A reply whose `response_json` is not JSON keeps the text, and has no token.
#[test]
fn a_flow_reply_that_is_not_json_is_kept_as_text() {
    let body =
        std::fs::read(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/25-nfm-reply.json")).unwrap();
    let text = String::from_utf8(body).unwrap().replace(r#"{\"flow_token\":\"t-1\",\"rating\":\"5\"}"#, "oops");
    let events = parse(text.as_bytes()).unwrap().into_events();
    let got: Vec<Input> = events.iter().filter_map(event_to_input).collect();
    assert_eq!(got, [Input::FlowReply { flow_token: None, response: json!("oops") }]);
}

fn flow_message(cta: &str, screen: Option<&str>) -> Message {
    Message::Flow {
        header: Some("Agendamento".into()),
        body: "Escolha o melhor horário para a visita.".into(),
        footer: None,
        flow_id: "1234567890".into(),
        cta: cta.into(),
        flow_token: "flowcore-00000000000000ff".into(),
        screen: screen.map(str::to_string),
        data: json!({"cidade": "São Paulo"}),
    }
}

#[test]
fn flow_messages_are_sent_as_interactive_flow() {
    let to = Recipient::phone("12025550101").unwrap();
    let sent = to_outgoing(&to, &flow_message("Agendar", Some("AGENDA"))).unwrap();
    assert_eq!(sent.len(), 1);
    insta::assert_json_snapshot!("flow_message", sent[0].to_json());

    // Without a screen the flow's endpoint picks it, and there is no payload to send.
    let json = to_outgoing(&to, &flow_message("Agendar", None)).unwrap()[0].to_json();
    let parameters = &json["interactive"]["action"]["parameters"];
    assert_eq!(parameters["flow_action"], "data_exchange");
    assert!(parameters.get("flow_action_payload").is_none(), "{parameters}");
}

#[test]
fn flow_messages_keep_metas_limits() {
    let to = Recipient::phone("12025550101").unwrap();
    let err = to_outgoing(&to, &flow_message("Agendar a minha visita", Some("A"))).unwrap_err();
    assert_eq!(err, BuildError::TooLong { field: "flow_cta".into(), max: 20, actual: 22 });
    assert_eq!(to_outgoing(&to, &flow_message("Agendar ✅", Some("A"))).unwrap_err().field(), "flow_cta");
    let Message::Flow { header, body, footer, flow_id, cta, flow_token, screen, .. } = flow_message("Ok", Some("A"))
    else {
        unreachable!()
    };
    let list = Message::Flow { header, body, footer, flow_id, cta, flow_token, screen, data: json!([1]) };
    assert_eq!(to_outgoing(&to, &list).unwrap_err().field(), "flow_action_payload.data");
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    fn envelope(message: Value) -> Vec<u8> {
        json!({"object": "whatsapp_business_account", "entry": [{"id": "1", "changes": [{"field": "messages",
            "value": {"messaging_product": "whatsapp",
                      "metadata": {"display_phone_number": "1", "phone_number_id": "106"},
                      "messages": [message]}}]}]})
        .to_string()
        .into_bytes()
    }

    fn text() -> impl Strategy<Value = String> {
        "\\PC{0,10}"
    }

    /// Messages of the newly typed kinds, with arbitrary contents where Meta puts text.
    fn new_kind_message() -> impl Strategy<Value = Value> {
        let base = |kind: &str, body: Value| {
            let mut m = json!({"from": "12025550101", "id": "wamid.P", "timestamp": "1780300800", "type": kind});
            m[kind] = body;
            m
        };
        prop_oneof![
            (text(), prop::option::of(text())).prop_map(move |(id, emoji)| base("reaction", json!({"message_id": id, "emoji": emoji}))),
            (prop::option::of(text()), prop::collection::vec((text(), 0u32..100, -1e6f64..1e6), 0..3)).prop_map(move |(note, items)| {
                let items: Vec<Value> = items
                    .into_iter()
                    .map(|(id, q, p)| json!({"product_retailer_id": id, "quantity": q, "item_price": p, "currency": "BRL"}))
                    .collect();
                base("order", json!({"catalog_id": "c", "text": note, "product_items": items}))
            }),
            (text(), prop::option::of(text())).prop_map(move |(response_json, token)| {
                let response = match token {
                    Some(t) => json!({"flow_token": t, "campo": response_json}).to_string(),
                    None => response_json,
                };
                base("interactive", json!({"type": "nfm_reply", "nfm_reply": {"name": "flow", "body": "Sent", "response_json": response}}))
            }),
            (text(), prop_oneof![Just("text"), Just("image"), Just("poll"), Just("")], text()).prop_map(move |(id, kind, body)| {
                let message = json!({"type": kind, "text": {"body": body}, "image": {"id": body, "caption": body}});
                base("edit", json!({"original_message_id": id, "message": message}))
            }),
            text().prop_map(move |id| base("revoke", json!({"original_message_id": id}))),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        /// The bridge never panics on the new kinds, none of them is left unsupported, and
        /// the input it makes survives a serde round trip (what the inbox stores).
        #[test]
        fn new_kinds_become_typed_inputs_that_round_trip(message in new_kind_message()) {
            let body = envelope(message);
            let parsed = parse(&body).unwrap().into_events();
            let inputs: Vec<Input> = parsed.iter().filter_map(event_to_input).collect();
            prop_assert_eq!(inputs.len(), 1, "{:?}", parsed);
            for input in inputs {
                prop_assert!(!matches!(input, Input::Unsupported { .. }), "{:?}", input);
                let back: Input = serde_json::from_str(&serde_json::to_string(&input).unwrap()).unwrap();
                prop_assert_eq!(back, input);
            }
        }
    }
}
