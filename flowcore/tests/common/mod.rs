//! Shared test harness: a scripted contact, scripted effect results and a virtual clock.
#![allow(dead_code)]

use std::fmt::Write as _;
use std::path::PathBuf;

use flowcore::{CompiledFlow, EffectOutcome, Flow, Input, Message, Output, Session, SessionOptions, Timestamp, Turn};
use serde_json::Value;

/// `tests/flows/NAME`: the sample flows, inside this crate so its packaged tests find them.
pub fn sample_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/flows").join(name)
}

pub fn sample_text(name: &str) -> String {
    std::fs::read_to_string(sample_path(name)).unwrap_or_else(|e| panic!("read {name}: {e}"))
}

pub fn sample(name: &str) -> CompiledFlow {
    Flow::from_json(&sample_text(name)).unwrap().compile().unwrap()
}

pub fn compile(json: Value) -> CompiledFlow {
    let flow: Flow = serde_json::from_value(json).unwrap();
    match flow.compile() {
        Ok(f) => f,
        Err(e) => panic!("{e}"),
    }
}

/// 2023-11-14T22:13:20Z, a Tuesday.
pub const T0: i64 = 1_700_000_000_000;

/// A conversation driver with a virtual clock and a readable transcript.
pub struct Sim {
    pub flow: CompiledFlow,
    pub session: Session,
    pub now: Timestamp,
    pub transcript: String,
}

impl Sim {
    pub fn new(flow: CompiledFlow) -> Sim {
        Sim::with(flow, SessionOptions::default())
    }

    pub fn with(flow: CompiledFlow, options: SessionOptions) -> Sim {
        let session = Session::new(&flow, options);
        Sim { flow, session, now: Timestamp::from_unix_millis(T0), transcript: String::new() }
    }

    /// Feeds an input, records it and the outputs, returns the turn.
    pub fn feed(&mut self, input: Input) -> Turn {
        let _ = writeln!(self.transcript, "> {}", describe_input(&input));
        let turn = self.session.handle(&self.flow, input, self.now).unwrap_or_else(|e| panic!("handle: {e}"));
        for out in &turn.outputs {
            let _ = writeln!(self.transcript, "  {}", describe_output(out));
        }
        if let Some(w) = turn.wake_at {
            let _ = writeln!(self.transcript, "  (wake at +{}s)", w.millis_since(self.now) / 1000);
        }
        let _ = writeln!(self.transcript, "  [{:?} at {:?}]", self.session.status(), self.session.current_node());
        turn
    }

    pub fn say(&mut self, text: &str) -> Turn {
        self.feed(Input::text(text))
    }

    /// Texts sent in reply to `text`.
    pub fn texts(&mut self, text: &str) -> Vec<String> {
        texts(&self.say(text))
    }

    pub fn ok(&mut self, id: flowcore::EffectId, value: Value) -> Turn {
        self.feed(Input::EffectResult { id, result: EffectOutcome::Success(value) })
    }

    /// Moves the clock to the session's wake-up time and ticks.
    pub fn tick_to_wake(&mut self) -> Turn {
        let wake = self.session.wake_at().expect("the session wants waking");
        self.now = wake;
        self.feed(Input::Tick)
    }

    pub fn advance_secs(&mut self, secs: u64) {
        self.now = self.now.saturating_add_seconds(secs);
    }
}

pub fn texts(turn: &Turn) -> Vec<String> {
    turn.outputs
        .iter()
        .filter_map(|o| match o {
            Output::Send { message: Message::Text { text }, .. } => Some(text.clone()),
            _ => None,
        })
        .collect()
}

pub fn describe_input(input: &Input) -> String {
    match input {
        Input::Text { text } => format!("{text:?}"),
        other => serde_json::to_string(other).unwrap(),
    }
}

pub fn describe_output(out: &Output) -> String {
    match out {
        Output::Send { node, message: Message::Text { text } } => format!("[{node}] {text}"),
        Output::Send { node, message } => format!("[{node}] {}", serde_json::to_string(message).unwrap()),
        other => serde_json::to_string(other).unwrap(),
    }
}
