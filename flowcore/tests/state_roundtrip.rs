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
