//! Regression tests for the stored session state's JSON round-trip.

use flowcore::{Flow, Input, Session, SessionOptions, Timestamp};

/// Found by `fuzz/flow_generated`: without serde_json's `float_roundtrip`, a float such as
/// 1.0675333188716875e-259 came back as …876e-259, so a restored session differed from the
/// one that was saved.
#[test]
fn floats_in_variables_survive_the_round_trip_exactly() {
    let flow = Flow::from_json(
        r#"{"id": "f", "nodes": [
            {"id": "s", "type": "start"},
            {"id": "ask", "type": "question", "data": {"content": "?", "variableName": "answer"}}],
          "edges": [{"id": "e", "source": "s", "target": "ask"}]}"#,
    )
    .unwrap()
    .compile()
    .unwrap();
    let mut variables = serde_json::Map::new();
    for (name, value) in [("tiny", 1.0675333188716875e-259), ("pi", std::f64::consts::PI), ("third", 1.0 / 3.0)] {
        variables.insert(name.into(), serde_json::Number::from_f64(value).unwrap().into());
    }
    let mut session = Session::new(&flow, SessionOptions { variables, ..SessionOptions::default() });
    session.handle(&flow, Input::text("oi"), Timestamp::from_unix_seconds(1_780_000_000)).unwrap();

    let json = serde_json::to_string(&session).unwrap();
    let restored: Session = serde_json::from_str(&json).unwrap();
    assert_eq!(restored, session);
    assert_eq!(restored.variable("tiny").and_then(|v| v.as_f64()), Some(1.0675333188716875e-259));
}

proptest::proptest! {
    /// `Session::to_json` writes the state itself; whatever the variables hold (quotes,
    /// control characters, any text, numbers, nesting), it writes what serde_json writes,
    /// and the text loads back to the same session.
    #[test]
    fn to_json_is_serde_json_for_any_variables(
        texts in proptest::collection::btree_map("\\PC{0,8}|[\"\\\\\\x00-\\x1f]{0,3}", "\\PC{0,12}|[a\"\\\\\\n\\x01]{0,4}", 0..6),
        numbers in proptest::collection::btree_map("[a-z]{1,3}", proptest::num::i64::ANY, 0..3),
        seed in proptest::num::u64::ANY,
    ) {
        let flow = Flow::from_json(
            r#"{"id": "f\"low", "nodes": [
                {"id": "s", "type": "start"},
                {"id": "ask \"1\"", "type": "question", "data": {"content": "?", "variableName": "answer"}}],
              "edges": [{"id": "e", "source": "s", "target": "ask \"1\""}]}"#,
        )
        .unwrap()
        .compile()
        .unwrap();
        let mut variables = serde_json::Map::new();
        for (name, text) in texts {
            variables.insert(name, text.into());
        }
        for (name, n) in numbers {
            variables.insert(name, serde_json::json!([n, {"n": n}]));
        }
        let mut session = Session::new(&flow, SessionOptions { seed, variables, ..SessionOptions::default() });
        proptest::prop_assert_eq!(session.to_json(), serde_json::to_string(&session).unwrap());
        session.handle(&flow, Input::text("oi"), Timestamp::from_unix_seconds(1_780_000_000)).unwrap();
        let json = session.to_json();
        proptest::prop_assert_eq!(&json, &serde_json::to_string(&session).unwrap());
        proptest::prop_assert_eq!(Session::from_json(&json), Ok(session));
    }
}

proptest::proptest! {
    /// `Session::from_json` reads the common state (no escapes, scalar variables) without
    /// serde. Any such session loads back equal; any one-byte change of its text loads
    /// as serde_json loads it, or fails as it fails, and never panics.
    #[test]
    fn from_json_reads_what_serde_json_reads(
        texts in proptest::collection::btree_map("[a-z_]{1,6}|\\PC{0,4}", "\\PC{0,12}|[a\"\\\\\\n]{0,3}", 0..5),
        numbers in proptest::collection::btree_map("[a-z]{1,3}", proptest::num::i64::ANY, 0..3),
        flags in proptest::collection::btree_map("[A-Z]{1,2}", proptest::option::of(proptest::bool::ANY), 0..3),
        seed in proptest::num::u64::ANY,
        turns in 0usize..3,
        at in proptest::num::usize::ANY,
        byte in proptest::sample::select(b"{}[]\",:01-9 .etnfa\\x\x01".to_vec()),
        cut in proptest::bool::ANY,
    ) {
        let flow = Flow::from_json(
            r#"{"id": "lead", "nodes": [
                {"id": "s", "type": "start"},
                {"id": "ask", "type": "question", "data": {"content": "?", "variableName": "answer"}},
                {"id": "bye", "type": "end", "data": {"content": "{{answer}}"}}],
              "edges": [{"id": "e", "source": "s", "target": "ask"}, {"id": "e2", "source": "ask", "target": "bye"}]}"#,
        )
        .unwrap()
        .compile()
        .unwrap();
        let mut variables = serde_json::Map::new();
        for (name, text) in texts {
            variables.insert(name, text.into());
        }
        for (name, n) in numbers {
            variables.insert(name, n.into());
        }
        for (name, flag) in flags {
            variables.insert(name, flag.map_or(serde_json::Value::Null, Into::into));
        }
        let mut session = Session::new(&flow, SessionOptions { seed, variables, ..SessionOptions::default() });
        let now = Timestamp::from_unix_seconds(1_780_000_000);
        for text in ["oi", "Maria", "again"].into_iter().take(turns) {
            session.handle(&flow, Input::text(text), now).unwrap();
        }
        let json = session.to_json();
        proptest::prop_assert_eq!(Session::from_json(&json), Ok(session));

        let mut bytes = json.into_bytes();
        let at = at % (bytes.len() + 1);
        if cut {
            bytes.truncate(at);
        } else if at < bytes.len() {
            bytes[at] = byte;
        } else {
            bytes.push(byte);
        }
        let text = String::from_utf8_lossy(&bytes);
        match (Session::from_json(&text), serde_json::from_str::<Session>(&text)) {
            (Ok(ours), Ok(theirs)) => proptest::prop_assert_eq!(ours, theirs),
            (Err(_), Err(_)) => {}
            (ours, theirs) => proptest::prop_assert!(false, "{text}: from_json {ours:?}, serde_json {theirs:?}"),
        }
    }
}
