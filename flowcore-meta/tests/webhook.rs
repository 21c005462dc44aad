//! The fixture corpus through `parse`, the signature vectors, and the bridge.

use std::borrow::Cow;
use std::path::PathBuf;

use flowcore::{Input, MediaKind, Timestamp};
use flowcore_meta::webhook::{Content, Interactive, Item, StatusKind, SystemKind};
use flowcore_meta::{event_to_input, parse, to_input, verify_signature, Event, MessageEvent, SignatureError};

fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(fixture_dir().join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn messages<'a, 'w>(events: &'w [Event<'a>]) -> Vec<&'w MessageEvent<'a>> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Message(m) => Some(m),
            _ => None,
        })
        .collect()
}

fn only_message(body: &[u8]) -> MessageEvent<'_> {
    let events = parse(body).unwrap().into_events();
    assert_eq!(events.len(), 1, "{events:#?}");
    match events.into_iter().next().unwrap() {
        Event::Message(m) => m,
        other => panic!("not a message: {other:?}"),
    }
}

const SECRET: &str = "flowcore-test-app-secret";

#[test]
fn signature_vectors_from_signatures_md() {
    let table = std::fs::read_to_string(fixture_dir().join("SIGNATURES.md")).unwrap();
    let vectors: Vec<(&str, &str)> = table
        .lines()
        .filter_map(|line| {
            let cells: Vec<&str> = line.split('|').map(|c| c.trim().trim_matches('`')).collect();
            (cells.len() >= 3 && cells[1].ends_with(".json")).then(|| (cells[1], cells[2]))
        })
        .collect();
    assert_eq!(vectors.len(), 3);
    for (file, header) in vectors {
        let body = fixture(file);
        assert_eq!(verify_signature(&body, Some(header), &[SECRET]), Ok(0), "{file}");
        assert_eq!(verify_signature(&body, Some(header), &["old-secret", SECRET]), Ok(1), "{file}");
        assert_eq!(verify_signature(&body, Some(header), &["wrong"]), Err(SignatureError::Mismatch), "{file}");
        let mut tampered = body.clone();
        tampered.pop();
        assert_eq!(verify_signature(&tampered, Some(header), &[SECRET]), Err(SignatureError::Mismatch), "{file}");
        assert_eq!(flowcore_meta::sign(&body, SECRET.as_bytes()), header);
    }
}

#[test]
fn every_fixture_parses_and_every_event_has_context() {
    let mut names: Vec<String> = std::fs::read_dir(fixture_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".json"))
        .collect();
    names.sort();
    assert!(names.len() >= 20, "{names:?}");
    for name in names {
        let body = fixture(&name);
        let webhook = parse(&body).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(!webhook.is_empty(), "{name}");
        for event in &webhook {
            // Raw JSON of every item is valid JSON taken verbatim from the body.
            let raw = event.raw().get();
            serde_json::from_str::<serde_json::Value>(raw).unwrap();
            assert!(std::str::from_utf8(&body).unwrap().contains(raw), "{name}");
            match event {
                Event::Message(m) => {
                    assert!(m.business.phone_number_id.starts_with("106"), "{name}");
                    assert!(event.dedup_key().unwrap().to_string().starts_with("message:wamid."), "{name}");
                }
                Event::Status(_) => assert!(event.dedup_key().unwrap().to_string().starts_with("status:wamid.")),
                _ => assert!(event.dedup_key().is_none()),
            }
        }
        insta::with_settings!({ snapshot_suffix => name.trim_end_matches(".json"), prepend_module_to_snapshot => false }, {
            insta::assert_debug_snapshot!("events", webhook.into_events());
        });
    }
}

#[test]
fn text_borrows_and_joins_its_contact() {
    let body = fixture("01-text.json");
    let m = only_message(&body);
    assert_eq!(m.business.phone_number_id, "106000000000001");
    assert_eq!(m.business.display_phone_number.as_ref().unwrap().as_str(), "13125550100");
    assert_eq!(m.business.waba_id.as_deref(), Some("102000000000001"));
    assert_eq!(m.message.id, "wamid.RkFLRS9pbi0wMDAx");
    assert!(matches!(m.message.id, Cow::Borrowed(_)), "ids borrow from the body");
    assert_eq!(m.message.timestamp, Timestamp::from_unix_seconds(1_780_300_800));
    assert_eq!(m.contact.as_ref().unwrap().profile.name.as_deref(), Some("Ana Teste"));
    assert_eq!(m.conversation_key(), Some(("106000000000001", "12025550101")));
    let Content::Text { body: text } = &m.message.content else { panic!() };
    assert_eq!(text, "Olá, quero falar com o suporte");
    assert_eq!(to_input(&m), Input::text("Olá, quero falar com o suporte"));
}

#[test]
fn media_types_become_media_inputs() {
    let cases = [
        ("02-image-caption.json", MediaKind::Image, Some("Foto do produto com defeito"), None),
        ("14-video.json", MediaKind::Video, Some("Vídeo do problema"), None),
        ("15-audio-voice.json", MediaKind::Audio, None, None),
        ("16-document.json", MediaKind::Document, Some("Contrato"), Some("contrato.pdf")),
        ("17-sticker-animated.json", MediaKind::Sticker, None, None),
    ];
    for (file, kind, caption, filename) in cases {
        let body = fixture(file);
        let m = only_message(&body);
        let Input::Media { kind: k, id, mime_type, caption: c, filename: f } = to_input(&m) else { panic!("{file}") };
        assert_eq!((k, c.as_deref(), f.as_deref()), (kind, caption, filename), "{file}");
        assert!(id.starts_with("14500000000000"), "{file}");
        assert!(mime_type.is_some(), "{file}");
    }
    let body = fixture("15-audio-voice.json");
    let Content::Audio(audio) = only_message(&body).message.content else { panic!() };
    assert_eq!(audio.voice, Some(true));
    let body = fixture("17-sticker-animated.json");
    let Content::Sticker(sticker) = only_message(&body).message.content else { panic!() };
    assert_eq!(sticker.animated, Some(true));
    let body = fixture("02-image-caption.json");
    let Content::Image(image) = only_message(&body).message.content else { panic!() };
    assert!(image.url.as_deref().unwrap().starts_with("https://lookaside.fbsbx.com/"));
}

#[test]
fn replies_become_choices() {
    let body = fixture("03-interactive-button-reply.json");
    let m = only_message(&body);
    assert_eq!(to_input(&m), Input::Choice { id: "btn_suporte".into(), title: Some("Suporte".into()) });
    assert_eq!(m.message.context.as_ref().unwrap().id.as_deref(), Some("wamid.RkFLRS9vdXQtMDAwMQ=="));

    let body = fixture("04-interactive-list-reply.json");
    let m = only_message(&body);
    assert_eq!(to_input(&m), Input::Choice { id: "tech".into(), title: Some("Suporte técnico".into()) });
    let Content::Interactive(Interactive::ListReply { description, .. }) = &m.message.content else { panic!() };
    assert_eq!(description.as_deref(), Some("Problemas técnicos"));

    let body = fixture("18-template-quick-reply.json");
    assert_eq!(
        to_input(&only_message(&body)),
        Input::Choice { id: "CONFIRMAR_PEDIDO".into(), title: Some("Confirmar".into()) }
    );
}

#[test]
fn location_contacts_and_the_rest() {
    let body = fixture("05-location.json");
    let Input::Location { latitude, longitude, name, address } = to_input(&only_message(&body)) else { panic!() };
    assert_eq!((latitude, longitude), (-23.5613991, -46.6565712));
    assert_eq!(name.as_deref(), Some("Loja Exemplo Centro"));
    assert_eq!(address.as_deref(), Some("Av. Exemplo, 1000, São Paulo"));

    let body = fixture("06-contacts.json");
    let m = only_message(&body);
    let Content::Contacts { cards, .. } = &m.message.content else { panic!() };
    assert_eq!(cards.len(), 2);
    assert_eq!(cards[0].name.formatted_name, "Maria Exemplo");
    assert_eq!(cards[0].phones[0].wa_id.as_ref().unwrap().as_str(), "12025550177");
    assert_eq!(cards[0].org.as_ref().unwrap().company.as_deref(), Some("Exemplo Ltda"));
    assert_eq!(cards[1].urls[0].url.as_deref(), Some("https://example.com"));
    let Input::Contacts { contacts } = to_input(&m) else { panic!() };
    assert_eq!(contacts[1]["name"]["formatted_name"], "Central Exemplo");

    let unsupported = |file: &str| {
        let body = fixture(file);
        let events = parse(&body).unwrap().into_events();
        events.iter().filter_map(event_to_input).collect::<Vec<_>>()
    };
    let kind = |k: &str| Input::Unsupported { kind: k.into() };
    // Reactions, orders, flow replies, edits and revokes are typed: tests/bridge.rs.
    assert_eq!(unsupported("22-request-welcome.json"), [kind("request_welcome")]);
    assert_eq!(unsupported("24-unsupported-with-errors.json"), [kind("unsupported")]);
    assert_eq!(unsupported("37-interactive-unknown-kind.json"), [kind("call_permission_reply")]);
    assert_eq!(unsupported("29-unknown-message-type.json"), [kind("hologram"), Input::text("depois do desconhecido")]);
    assert!(unsupported("13-statuses-only.json").is_empty());
}

#[test]
fn reactions_and_their_removal() {
    let body = fixture("07-reaction.json");
    let Content::Reaction { message_id, emoji } = only_message(&body).message.content else { panic!() };
    assert_eq!((message_id.as_ref(), emoji.as_deref()), ("wamid.RkFLRS9vdXQtMDAwMw==", Some("👍")));
    let body = fixture("19-reaction-removed.json");
    let Content::Reaction { emoji, .. } = only_message(&body).message.content else { panic!() };
    assert_eq!(emoji, None);
}

#[test]
fn order_system_referral_unsupported_nfm_edit() {
    let body = fixture("20-order.json");
    let Content::Order(order) = only_message(&body).message.content else { panic!() };
    assert_eq!(order.product_items[0].quantity, 3.0);
    assert_eq!(order.product_items[0].item_price, 10.5);

    let body = fixture("21-system-changed-number.json");
    let events = parse(&body).unwrap().into_events();
    let kinds: Vec<SystemKind<'_>> = messages(&events)
        .iter()
        .map(|m| match &m.message.content {
            Content::System(s) => s.kind.clone(),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(
        kinds,
        [
            SystemKind::UserChangedNumber,
            SystemKind::CustomerIdentityChanged,
            SystemKind::Other("brand_new_system_kind".into())
        ]
    );

    let body = fixture("23-referral-ad.json");
    let m = only_message(&body);
    let referral = m.message.referral.as_ref().unwrap();
    assert_eq!(referral.source_type.as_deref(), Some("ad"));
    assert_eq!(referral.ctwa_clid.as_deref(), Some("ARAkLkA0clid"));
    assert_eq!(referral.welcome_message.as_deref(), Some("Olá! Como podemos ajudar?"));

    let body = fixture("24-unsupported-with-errors.json");
    let m = only_message(&body);
    assert_eq!(m.message.content, Content::Unsupported { kind: Some("poll_creation".into()) });
    assert_eq!(m.message.errors[0].code, 131051);
    assert_eq!(m.message.errors[0].details.as_deref(), Some("Message type is currently not supported."));

    let body = fixture("25-nfm-reply.json");
    let Content::Interactive(Interactive::NfmReply { name, response_json, .. }) = only_message(&body).message.content
    else {
        panic!()
    };
    assert_eq!(name.as_deref(), Some("flow"));
    let answers: serde_json::Value = serde_json::from_str(&response_json).unwrap();
    assert_eq!(answers["rating"], "5");

    let body = fixture("26-edit-revoke.json");
    let events = parse(&body).unwrap().into_events();
    let Content::Edit { original_message_id, message } = &messages(&events)[0].message.content else { panic!() };
    assert_eq!(original_message_id.as_deref(), Some("wamid.RkFLRS9pbi0wMjU5"));
    assert!(message.unwrap().get().contains("corrigido"));
}

#[test]
fn context_flags() {
    let body = fixture("33-forwarded-and-product.json");
    let events = parse(&body).unwrap().into_events();
    let contexts: Vec<_> = messages(&events).iter().map(|m| m.message.context.clone().unwrap()).collect();
    assert!(contexts[0].forwarded && !contexts[0].frequently_forwarded);
    assert!(contexts[1].frequently_forwarded);
    let product = contexts[2].referred_product.as_ref().unwrap();
    assert_eq!(product.product_retailer_id.as_deref(), Some("SKU-007"));
}

#[test]
fn statuses_with_everything_optional() {
    let body = fixture("10-status-delivered.json");
    let events = parse(&body).unwrap().into_events();
    let Event::Status(s) = &events[0] else { panic!() };
    assert_eq!(s.status.status, StatusKind::Delivered);
    assert_eq!(s.status.pricing.as_ref().unwrap().category.as_deref(), Some("service"));
    assert_eq!(s.status.conversation.as_ref().unwrap().origin.as_deref(), Some("service"));
    assert_eq!(events[0].dedup_key().unwrap().to_string(), "status:wamid.RkFLRS9vdXQtMDAwNQ==:delivered:12025550101");

    let body = fixture("13-statuses-only.json");
    let events = parse(&body).unwrap().into_events();
    let kinds: Vec<_> = events
        .iter()
        .map(|e| match e {
            Event::Status(s) => s.status.status.clone(),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(kinds, [StatusKind::Sent, StatusKind::Read, StatusKind::Played]);
    let Event::Status(sent) = &events[0] else { panic!() };
    assert_eq!(sent.status.biz_opaque_callback_data.as_deref(), Some("org=acme;conv=c-0003;out=1"));
    assert_eq!(
        sent.status.conversation.as_ref().unwrap().expiration_timestamp,
        Some(Timestamp::from_unix_seconds(1_780_387_920))
    );

    let body = fixture("27-status-failed.json");
    let events = parse(&body).unwrap().into_events();
    let Event::Status(failed) = &events[0] else { panic!() };
    assert_eq!(failed.status.status, StatusKind::Failed);
    assert_eq!(failed.status.errors[0].code, 131047);
    assert!(failed.status.pricing.is_none() && failed.status.conversation.is_none());

    let body = fixture("35-unknown-status-and-pricing.json");
    let events = parse(&body).unwrap().into_events();
    let Event::Status(deleted) = &events[0] else { panic!() };
    assert_eq!(deleted.status.status, StatusKind::Other("deleted".into()));
    assert_eq!(deleted.status.pricing.as_ref().unwrap().kind.as_deref(), Some("some_future_type"));
    let Event::Status(group) = &events[1] else { panic!() };
    assert_eq!(group.status.recipient_type.as_deref(), Some("group"));
    assert_eq!(group.status.timestamp, Timestamp::from_unix_seconds(1_780_302_351));
}

#[test]
fn bsuid_only_users() {
    let body = fixture("28-bsuid-only-user.json");
    let events = parse(&body).unwrap().into_events();
    let Event::Message(m) = &events[0] else { panic!() };
    assert!(m.message.from.is_none());
    assert_eq!(m.message.from_user_id.as_deref(), Some("US.1000000000000000777"));
    let contact = m.contact.as_ref().expect("joined by user_id");
    assert_eq!(contact.profile.username.as_deref(), Some("dora.demo"));
    assert!(contact.wa_id.is_none());
    assert_eq!(m.conversation_key(), Some(("106000000000001", "US.1000000000000000777")));
    assert_eq!(
        events[1].dedup_key().unwrap().to_string(),
        "status:wamid.RkFLRS9vdXQtMDI4:delivered:US.1000000000000000777"
    );
}

#[test]
fn contacts_are_joined_by_id_not_position() {
    let body = fixture("34-contacts-out-of-order.json");
    let events = parse(&body).unwrap().into_events();
    let names: Vec<Option<&str>> =
        messages(&events).iter().map(|m| m.contact.as_ref().and_then(|c| c.profile.name.as_deref())).collect();
    assert_eq!(names, [Some("Bruno Exemplo"), Some("Ana Teste"), None]);

    // In the batch, Bruno appears in both entries with different BSUIDs; each entry joins its own.
    let body = fixture("12-batch-two-entries.json");
    let events = parse(&body).unwrap().into_events();
    let ids: Vec<(&str, &str, Option<&str>)> = messages(&events)
        .iter()
        .map(|m| {
            (
                m.business.phone_number_id.as_ref(),
                m.message.content.kind(),
                m.contact.as_ref().and_then(|c| c.user_id.as_deref()),
            )
        })
        .collect();
    assert_eq!(
        ids,
        [
            ("106000000000001", "text", Some("US.1000000000000000101")),
            ("106000000000001", "button", Some("US.1000000000000000102")),
            ("106000000000001", "audio", Some("US.1000000000000000101")),
            ("106000000000001", "document", Some("US.1000000000000000102")),
            ("106000000000002", "sticker", Some("US.1000000000000000103")),
            ("106000000000002", "reaction", Some("US.1000000000000000103")),
            ("106000000000002", "order", Some("US.1000000000000000103")),
            ("106000000000002", "system", Some("US.1000000000000000902")),
        ]
    );
    assert!(matches!(&events[8], Event::Status(s) if s.business.phone_number_id == "106000000000002"));
    assert_eq!(events.len(), 9);
}

#[test]
fn one_bad_item_does_not_sink_the_rest() {
    let body = fixture("30-bad-item-among-good.json");
    let events = parse(&body).unwrap().into_events();
    let summary: Vec<String> = events
        .iter()
        .map(|e| match e {
            Event::Message(m) => format!("message {}", m.message.id),
            Event::Status(s) => format!("status {}", s.status.id),
            Event::Unparsed { item, business, .. } => {
                assert!(business.is_some());
                format!("unparsed {item:?}")
            }
            other => format!("{other:?}"),
        })
        .collect();
    assert_eq!(
        summary,
        [
            "unparsed Contact",
            "message wamid.RkFLRS9pbi0w300",
            "unparsed Message",
            "unparsed Message",
            "message wamid.RkFLRS9pbi0w303",
            "status wamid.RkFLRS9vdXQtMDMw",
            "unparsed Status",
        ]
    );
    let Event::Unparsed { raw, error, .. } = &events[2] else { panic!() };
    assert!(raw.get().contains("not-a-time"), "the raw item is kept");
    assert!(error.contains("timestamp"), "{error}");
    let Event::Unparsed { error, .. } = &events[3] else { panic!() };
    assert!(error.contains("id"), "{error}");
}

#[test]
fn a_malformed_skeleton_loses_only_the_broken_parts() {
    let body = fixture("36-malformed-skeleton.json");
    let events = parse(&body).unwrap().into_events();
    let summary: Vec<String> = events
        .iter()
        .map(|e| match e {
            Event::Message(m) => format!("message {}", m.message.id),
            Event::Unparsed { item, raw, .. } => format!("unparsed {item:?} {}", raw.get().len()),
            other => format!("{other:?}"),
        })
        .collect();
    assert_eq!(summary.len(), 5, "{summary:?}");
    assert_eq!(summary[0], "message wamid.RkFLRS9pbi0w360");
    assert!(summary[1].starts_with("unparsed Entry"));
    assert!(summary[2].starts_with("unparsed Entry"));
    assert_eq!(summary[3], "unparsed Change 1");
    assert_eq!(summary[4], "message wamid.RkFLRS9pbi0w361");
}

#[test]
fn other_fields_and_value_errors_are_events() {
    let body = fixture("32-other-fields.json");
    let events = parse(&body).unwrap().into_events();
    let Event::Unknown { kind, raw, waba_id, business, array } = &events[0] else { panic!() };
    assert_eq!((kind.as_ref(), waba_id.as_deref()), ("account_update", Some("102000000000001")));
    assert_eq!((business, array), (&None, &None), "another field's value has no common shape");
    assert!(raw.get().contains("VERIFIED_ACCOUNT"));
    assert!(matches!(&events[1], Event::Unknown { kind, .. } if kind == "message_template_status_update"));
    assert!(matches!(&events[2], Event::Message(_)));

    let body = fixture("31-value-errors.json");
    let events = parse(&body).unwrap().into_events();
    let codes: Vec<(i64, Option<&str>)> = events
        .iter()
        .map(|e| match e {
            Event::Error(e) => (e.error.code, e.error.details.as_deref()),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(codes, [(131000, Some("Unknown error")), (130472, Some("bare string details"))]);
}

#[test]
fn whole_body_failures() {
    assert!(matches!(parse(b"not json"), Err(flowcore_meta::ParseError::Malformed(_))));
    assert!(matches!(parse(b"[]"), Err(flowcore_meta::ParseError::Malformed(_))));
    assert!(matches!(
        parse(br#"{"object":"page","entry":[]}"#),
        Err(flowcore_meta::ParseError::WrongObject(o)) if o == "page"
    ));
    assert!(parse(br#"{"object":"whatsapp_business_account"}"#).unwrap().is_empty());
    let body = br#"{"object":"whatsapp_business_account","entry":"x"}"#;
    let events = parse(body).unwrap().into_events();
    assert!(matches!(events.as_slice(), [Event::Unparsed { item: Item::Entry, .. }]));
    let body = br#"{"object":"whatsapp_business_account","entry":[{"changes":[{"field":"messages","value":{"messages":[]}}]}]}"#;
    let events = parse(body).unwrap().into_events();
    assert!(matches!(events.as_slice(), [Event::Unparsed { item: Item::Value, business: None, .. }]));
}

#[test]
fn debug_output_does_not_leak_numbers() {
    let body = fixture("12-batch-two-entries.json");
    let debug = format!("{:?}", parse(&body).unwrap());
    for number in ["12025550101", "12025550102", "12025550103", "12025550199", "13125550100"] {
        assert!(!debug.contains(number), "{number} leaked");
    }
}

// ---- what the peer corpus (tests/peer_corpus.rs) found, pinned down by our own fixtures ----

#[test]
fn an_interactive_message_without_its_object_is_still_a_message() {
    let body = fixture("50-interactive-without-object.json");
    let events = parse(&body).unwrap().into_events();
    assert_eq!(events.len(), 2, "{events:#?}");
    let Event::Message(m) = &events[0] else { panic!("{:?}", events[0]) };
    assert_eq!(m.message.id, "wamid.RkFLRS9pbi0w500");
    assert_eq!(m.conversation_key(), Some(("106000000000001", "12025550101")));
    assert_eq!(m.contact.as_ref().unwrap().profile.name.as_deref(), Some("Ana Teste"));
    assert_eq!(m.message.context.as_ref().unwrap().id.as_deref(), Some("wamid.RkFLRS9vdXQtMDUwMA=="));
    let Content::Unknown { kind, raw } = &m.message.content else { panic!("{:?}", m.message.content) };
    assert_eq!(kind, "interactive");
    assert_eq!(raw.get(), events[0].raw().get(), "the whole message is kept");
    assert_eq!(events[0].dedup_key().unwrap().to_string(), "message:wamid.RkFLRS9pbi0w500");
    assert_eq!(event_to_input(&events[0]), Some(Input::Unsupported { kind: "interactive".into() }));
    let Event::Error(e) = &events[1] else { panic!("{:?}", events[1]) };
    assert_eq!((e.error.code, e.error.details.as_deref()), (131000, Some("Unsupported webhook payload")));

    // The same for any type whose object is missing or null.
    let body = br#"{"object":"whatsapp_business_account","entry":[{"changes":[{"field":"messages","value":{
        "metadata":{"phone_number_id":"106000000000001"},"messages":[
        {"from":"12025550101","id":"wamid.RkFLRS9pbi0w501","timestamp":"1780305001","type":"text"},
        {"from":"12025550101","id":"wamid.RkFLRS9pbi0w502","timestamp":"1780305002","type":"image","image":null}]}}]}]}"#;
    let kinds: Vec<(String, String)> = parse(body)
        .unwrap()
        .into_events()
        .iter()
        .map(|e| match e {
            Event::Message(m) => match &m.message.content {
                Content::Unknown { kind, .. } => (m.message.id.to_string(), kind.to_string()),
                other => panic!("{other:?}"),
            },
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(
        kinds,
        [("wamid.RkFLRS9pbi0w501".into(), "text".into()), ("wamid.RkFLRS9pbi0w502".into(), "image".into())]
    );

    // A known type whose object is there but broken is still an unparsed item.
    let broken = fixture("30-bad-item-among-good.json");
    let events = parse(&broken).unwrap().into_events();
    assert!(matches!(&events[3], Event::Unparsed { item: Item::Message, raw, .. } if raw.get().contains("sem id")));
}

#[test]
fn each_group_participant_status_is_its_own_event() {
    let body = fixture("51-group-statuses.json");
    let events = parse(&body).unwrap().into_events();
    let keys: Vec<String> = events.iter().map(|e| e.dedup_key().unwrap().to_string()).collect();
    assert_eq!(
        keys,
        [
            "status:wamid.RkFLRS9vdXQtMDUxMA==:read:120363025550100001:12025550101",
            "status:wamid.RkFLRS9vdXQtMDUxMA==:read:120363025550100001:12025550102",
            "status:wamid.RkFLRS9vdXQtMDUxMA==:read:120363025550100001:US.1000000000000000103",
            // Meta delivering the first status again: the same key, so the inbox ignores it.
            "status:wamid.RkFLRS9vdXQtMDUxMA==:read:120363025550100001:12025550101",
            // One-to-one chats keep the key they always had.
            "status:wamid.RkFLRS9vdXQtMDUxMQ==:read:12025550101",
        ]
    );
    let Event::Status(first) = &events[0] else { panic!() };
    assert_eq!(first.status.recipient_type.as_deref(), Some("group"));
    assert_eq!(first.status.participant(), Some("12025550101"));
    assert_eq!(first.status.recipient_participant_user_id.as_deref(), Some("US.1000000000000000101"));
    assert_eq!(first.status.recipient_participant_parent_user_id.as_deref(), Some("US.ENT.1000000000000000901"));
    let Event::Status(one_to_one) = &events[4] else { panic!() };
    assert_eq!(one_to_one.status.participant(), None);
    assert_eq!(events[0].dedup_key(), events[3].dedup_key());
}

#[test]
fn error_details_beside_the_code_are_read() {
    let body = fixture("52-error-details-top-level.json");
    let events = parse(&body).unwrap().into_events();
    let Event::Message(m) = &events[0] else { panic!("{:?}", events[0]) };
    assert_eq!(m.message.errors[0].details.as_deref(), Some("Message type is not currently supported"));
    let details: Vec<Option<&str>> = events[1..]
        .iter()
        .map(|e| match e {
            Event::Error(e) => e.error.details.as_deref(),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(
        details,
        [Some("details beside the code"), Some("details in error_data"), Some("details beside the code")],
        "error_data.details wins when both are there"
    );
}

#[test]
fn system_messages_read_legacy_and_user_id_fields() {
    let body = fixture("53-system-legacy-and-user-id.json");
    let events = parse(&body).unwrap().into_events();
    let systems: Vec<_> = messages(&events)
        .into_iter()
        .map(|m| match &m.message.content {
            Content::System(s) => s.clone(),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(systems.len(), 4, "{events:#?}");

    assert_eq!(systems[0].kind, SystemKind::CustomerChangedNumber);
    assert_eq!(systems[0].wa_id.as_ref().map(|p| p.as_str()), Some("12025550199"), "legacy new_wa_id");
    assert_eq!(systems[0].customer.as_ref().map(|p| p.as_str()), Some("12025550101"));

    assert_eq!(systems[1].kind, SystemKind::CustomerIdentityChanged);
    assert_eq!(systems[1].customer.as_ref().map(|p| p.as_str()), Some("12025550101"));
    assert_eq!(systems[1].wa_id, None);

    assert_eq!(systems[2].kind, SystemKind::UserChangedUserId);
    assert_eq!(systems[2].user_id.as_deref(), Some("US.1000000000000000201"));
    assert_eq!(systems[2].parent_user_id.as_deref(), Some("US.ENT.1000000000000000902"));
    assert_eq!(systems[2].previous_user_id.as_deref(), Some("US.1000000000000000101"));
    assert_eq!(systems[2].previous_parent_user_id.as_deref(), Some("US.ENT.1000000000000000901"));

    assert_eq!(systems[3].wa_id.as_ref().map(|p| p.as_str()), Some("12025550198"), "wa_id wins over new_wa_id");
    let debug = format!("{systems:?}");
    assert!(!debug.contains("12025550101") && !debug.contains("12025550199"), "{debug}");
}

#[test]
fn arrays_the_crate_does_not_model_become_unknown_events() {
    let body = fixture("54-unknown-arrays.json");
    let events = parse(&body).unwrap().into_events();
    let summary: Vec<String> = events
        .iter()
        .map(|e| match e {
            Event::Message(m) => format!("message {}", m.message.id),
            Event::Unknown { kind, array, business, waba_id, raw } => {
                assert_eq!(business.as_ref().map(|b| b.phone_number_id.as_ref()), Some("106000000000001"));
                assert_eq!(e.business(), business.as_ref());
                assert_eq!(waba_id.as_deref(), Some("102000000000001"));
                assert!(raw.get().starts_with('{'), "one event per item: {}", raw.get());
                assert!(e.dedup_key().is_none());
                format!("{kind}.{}", array.as_deref().unwrap())
            }
            other => panic!("{other:?}"),
        })
        .collect();
    // The object and the null beside the arrays describe the value and hold no items.
    assert_eq!(
        summary,
        ["message wamid.RkFLRS9pbi0w540", "messages.calls", "messages.calls", "messages.message_echoes"]
    );
    assert!(events[2].raw().get().contains("terminate"));
    assert!(events[3].raw().get().contains("sent from the app"));
}

#[test]
fn order_quantities_and_prices_may_be_numeric_strings() {
    let body = fixture("55-order-numeric-strings.json");
    let events = parse(&body).unwrap().into_events();
    let Event::Message(m) = &events[0] else { panic!("{:?}", events[0]) };
    let Content::Order(order) = &m.message.content else { panic!() };
    let items: Vec<(f64, f64)> = order.product_items.iter().map(|i| (i.quantity, i.item_price)).collect();
    assert_eq!(items, [(2.0, 10.5), (1.0, 3.0)]);
    let Event::Unparsed { item: Item::Message, error, .. } = &events[1] else { panic!("{:?}", events[1]) };
    assert!(error.contains("\"two\" is not a number"), "{error}");
    assert_eq!(events.len(), 2);
}

#[test]
fn a_change_without_a_value_is_an_unparsed_item() {
    let body = br#"{"object":"whatsapp_business_account","entry":[{"id":"102000000000001","changes":[
        {"field":"messages"},
        {"field":"account_update","value":null},
        {"field":"messages","value":{"metadata":{"phone_number_id":"106000000000001"},
          "messages":[{"from":"12025550101","id":"wamid.RkFLRS9pbi0w560","timestamp":"1780305600","type":"text","text":{"body":"oi"}}]}}]}]}"#;
    let events = parse(body).unwrap().into_events();
    let summary: Vec<String> = events
        .iter()
        .map(|e| match e {
            Event::Message(m) => format!("message {}", m.message.id),
            Event::Unparsed { item, raw, error, .. } => format!("unparsed {item:?} {} ({error})", raw.get()),
            other => format!("{other:?}"),
        })
        .collect();
    assert_eq!(
        summary,
        [
            r#"unparsed Change {"field":"messages"} (change has no value)"#,
            r#"unparsed Change {"field":"account_update","value":null} (change has no value)"#,
            "message wamid.RkFLRS9pbi0w560",
        ]
    );
}
