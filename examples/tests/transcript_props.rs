//! Invariants of the `.chat` format: lines read back as written, the parser refuses
//! rather than panics, and a transcript written from a real run passes (and fails once
//! one bot line is changed).

use flowcore::{CompiledFlow, EffectOutcome, Flow, Input, Session, SessionOptions, SessionStatus, Timestamp};
use flowcore_examples::transcript::{
    describe, escape, format_rfc3339, inbound_line, parse_chat, parse_inbound, Inbound, Runner,
};
use proptest::prelude::*;

fn support_flow() -> CompiledFlow {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/flows/support_menu.json")).unwrap();
    Flow::from_json(&text).unwrap().compile().unwrap()
}

/// What a contact of the support menu may send.
fn inputs() -> impl Strategy<Value = Input> {
    prop_oneof![
        Just(Input::choice("btn_suporte")),
        Just(Input::choice("btn_vendas")),
        Just(Input::choice("btn_status")),
        Just(Input::choice("tech")),
        Just(Input::text("123456")),
        Just(Input::text("12")),
        "[a-zA-Z0-9 {}\\\\\n]{0,12}".prop_map(Input::text),
    ]
}

/// A `.chat` conversation written from driving the engine directly with `script`; effects
/// are answered with `result` as they come.
fn transcript_of(flow: &CompiledFlow, script: &[Input], result: &serde_json::Value) -> String {
    let now = Timestamp::from_unix_seconds(1_767_616_200);
    let mut session = Session::new(flow, SessionOptions::default());
    let mut chat = format!("@now {}\n", format_rfc3339(now));
    for input in script {
        let input = if session.status() == SessionStatus::WaitingForEffect {
            let id = session.pending_effect().expect("a waiting session has a pending effect");
            chat.push_str(&format!("> {}\n", serde_json::json!({"type": "effect_result", "result": {"ok": result}})));
            Input::EffectResult { id, result: EffectOutcome::Success(result.clone()) }
        } else {
            chat.push_str(&format!("> {}\n", inbound_line(input)));
            input.clone()
        };
        let Ok(turn) = session.handle(flow, input, now) else { continue };
        for output in &turn.outputs {
            chat.push_str(&format!("< {}\n", escape(&describe(output))));
        }
    }
    chat
}

proptest! {
    #[test]
    fn any_text_reads_back_as_the_same_message(text in "\\PC*|[ {}\\r\\n\\\\a]{0,8}") {
        let input = Input::text(text);
        prop_assert_eq!(parse_inbound(&inbound_line(&input)).unwrap(), Inbound::Input(input));
    }

    #[test]
    fn the_parser_refuses_but_never_panics(lines in prop::collection::vec("[<>~@#{} a-z0-9\"-]{0,10}", 0..8)) {
        let text = lines.join("\n");
        if let Err(err) = parse_chat(&text) {
            prop_assert!(err.line() >= 1 && err.line() <= lines.len(), "{}", err);
        }
    }

    #[test]
    fn a_transcript_of_a_real_run_passes_and_fails_when_changed(
        script in prop::collection::vec(inputs(), 1..10),
        status in "[a-z]{0,6}",
    ) {
        let flow = support_flow();
        let result = if status.is_empty() { serde_json::json!({}) } else { serde_json::json!({"status": status}) };
        let chat = transcript_of(&flow, &script, &result);
        let passed = Runner::new(&flow).run("run.chat", &parse_chat(&chat).unwrap());
        prop_assert!(passed.passed(), "{}\n{:?}", chat, passed.failures().next());

        // Change the last bot line: the same run now fails there.
        let lines: Vec<&str> = chat.lines().collect();
        if let Some(last) = lines.iter().rposition(|l| l.starts_with("< ")) {
            let mut changed: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
            changed[last].push_str(" (changed)");
            let failed = Runner::new(&flow).run("changed.chat", &parse_chat(&changed.join("\n")).unwrap());
            let failure = failed.failures().next().cloned();
            prop_assert_eq!(failure.map(|f| f.line), Some(last + 1), "{}", chat);
        }
    }
}
