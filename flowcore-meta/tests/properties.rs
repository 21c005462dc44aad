//! Property tests: the parser never panics; the signature check accepts exactly the right HMAC.

use flowcore_meta::{parse, sign, to_input, verify_signature, Event, SignatureError};
use proptest::prelude::*;
use serde_json::{json, Value};

fn arbitrary_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(|f| json!(f)),
        ".{0,12}".prop_map(Value::String),
        prop::sample::select(vec![
            "messages",
            "statuses",
            "text",
            "image",
            "interactive",
            "button_reply",
            "whatsapp_business_account",
            "wamid.X",
            "1780300800",
            "read",
            "failed",
            "metadata",
            "phone_number_id",
        ])
        .prop_map(|s| Value::String(s.to_owned())),
    ];
    leaf.prop_recursive(5, 64, 8, |inner| {
        let key = prop::sample::select(vec![
            "object",
            "entry",
            "id",
            "changes",
            "field",
            "value",
            "metadata",
            "phone_number_id",
            "contacts",
            "messages",
            "statuses",
            "errors",
            "from",
            "from_user_id",
            "type",
            "text",
            "body",
            "timestamp",
            "interactive",
            "button_reply",
            "list_reply",
            "title",
            "status",
            "recipient_id",
            "code",
            "error_data",
            "image",
            "caption",
            "context",
            "referral",
            "wa_id",
            "user_id",
            "profile",
            "name",
            "reaction",
            "emoji",
        ]);
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(key, inner, 0..8)
                .prop_map(|m| Value::Object(m.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())),
        ]
    })
}

/// A well-formed envelope around arbitrary items, so the item parsers get exercised.
fn envelope_with(messages: Vec<Value>, statuses: Vec<Value>) -> Value {
    json!({
        "object": "whatsapp_business_account",
        "entry": [{ "id": "1", "changes": [{ "field": "messages", "value": {
            "messaging_product": "whatsapp",
            "metadata": { "display_phone_number": "1", "phone_number_id": "106" },
            "messages": messages, "statuses": statuses,
        }}]}]
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        if let Ok(webhook) = parse(&bytes) {
            for event in &webhook {
                let _ = event.dedup_key().map(|k| k.to_string());
                if let Event::Message(m) = event { let _ = to_input(m); }
            }
        }
    }

    #[test]
    fn arbitrary_json_never_panics(value in arbitrary_json()) {
        let bytes = serde_json::to_vec(&value).unwrap();
        if let Ok(webhook) = parse(&bytes) {
            for event in &webhook {
                let _ = event.dedup_key();
                if let Event::Message(m) = event { let _ = to_input(m); }
            }
        }
    }

    #[test]
    fn arbitrary_items_never_panic_and_are_all_accounted_for(
        messages in prop::collection::vec(arbitrary_json(), 0..6),
        statuses in prop::collection::vec(arbitrary_json(), 0..6),
    ) {
        let (m, s) = (messages.len(), statuses.len());
        let bytes = serde_json::to_vec(&envelope_with(messages, statuses)).unwrap();
        let webhook = parse(&bytes).unwrap();
        // Every item becomes exactly one event: typed or unparsed, never dropped.
        prop_assert_eq!(webhook.len(), m + s);
        for event in &webhook {
            if let Event::Message(m) = event { let _ = to_input(m); }
        }
    }

    #[test]
    fn items_of_arrays_the_crate_does_not_model_are_all_accounted_for(
        messages in prop::collection::vec(arbitrary_json(), 0..4),
        others in prop::collection::btree_map(
            "[a-z_]{1,14}".prop_filter("an array the crate models", |name| {
                !["messages", "statuses", "errors", "contacts", "metadata"].contains(&name.as_str())
            }),
            prop::collection::vec(arbitrary_json(), 0..4),
            0..4,
        ),
    ) {
        let expected = messages.len() + others.values().map(Vec::len).sum::<usize>();
        let mut body = envelope_with(messages, Vec::new());
        let value = &mut body["entry"][0]["changes"][0]["value"];
        for (name, items) in &others {
            value[name.as_str()] = Value::Array(items.clone());
        }
        let bytes = serde_json::to_vec(&body).unwrap();
        let webhook = parse(&bytes).unwrap();
        prop_assert_eq!(webhook.len(), expected);
        let text = std::str::from_utf8(&bytes).unwrap();
        let mut per_array = std::collections::BTreeMap::new();
        for event in &webhook {
            if let Event::Unknown { array, raw, .. } = event {
                prop_assert!(text.contains(raw.get()), "raw JSON not from the body");
                *per_array.entry(array.as_deref().unwrap_or_default().to_owned()).or_insert(0) += 1;
            }
        }
        let wanted: std::collections::BTreeMap<String, usize> =
            others.iter().filter(|(_, items)| !items.is_empty()).map(|(name, items)| (name.clone(), items.len())).collect();
        prop_assert_eq!(per_array, wanted);
    }

    #[test]
    fn the_right_hmac_is_accepted(body in prop::collection::vec(any::<u8>(), 0..256), secret in "[ -~]{1,40}") {
        prop_assume!(!secret.trim().is_empty());
        let header = sign(&body, secret.as_bytes());
        prop_assert_eq!(verify_signature(&body, Some(&header), &[&secret]), Ok(0));
        prop_assert_eq!(verify_signature(&body, Some(&header.to_uppercase().replacen("SHA256", "sha256", 1)), &[&secret]), Ok(0));
    }

    #[test]
    fn anything_else_is_refused(
        body in prop::collection::vec(any::<u8>(), 0..256),
        secret in "[a-z]{8,16}",
        flip_byte in 0usize..32,
        flip_bit in 0u8..8,
    ) {
        let header = sign(&body, secret.as_bytes());
        let mut digest = hex::decode(&header[7..]).unwrap();
        digest[flip_byte] ^= 1 << flip_bit;
        let forged = format!("sha256={}", hex::encode(&digest));
        prop_assert_eq!(verify_signature(&body, Some(&forged), &[&secret]), Err(SignatureError::Mismatch));
        let other_secret = format!("{secret}x");
        prop_assert_eq!(verify_signature(&body, Some(&header), &[&other_secret]), Err(SignatureError::Mismatch));
        let mut other_body = body.clone();
        other_body.push(0);
        prop_assert_eq!(verify_signature(&other_body, Some(&header), &[&secret]), Err(SignatureError::Mismatch));
    }

    #[test]
    fn arbitrary_headers_never_panic_or_pass(header in ".{0,80}", body in prop::collection::vec(any::<u8>(), 0..64)) {
        let result = verify_signature(&body, Some(&header), &["secret"]);
        if result.is_ok() {
            prop_assert_eq!(header.trim().to_lowercase(), sign(&body, b"secret"));
        }
    }
}
