//! Shared pieces of the fuzz targets: scripted inputs and a driver that checks the engine's
//! invariants (no panic, JSON round-trip of the state, replay equality) on every step.
#![forbid(unsafe_code)]

use arbitrary::{Arbitrary, Unstructured};
use flowcore::{CompiledFlow, EffectId, EffectOutcome, Input, MediaKind, Session, SessionOptions, Timestamp, Turn};

/// One scripted inbound event, chosen by the fuzzer.
#[derive(Arbitrary, Debug, Clone)]
pub enum ScriptedInput {
    /// A text message.
    Text(String),
    /// A short text, more likely to hit options, numbers and ids.
    Word(u8),
    /// A chosen option by id.
    Choice(String),
    /// A chosen option by a common id.
    KnownChoice(u8),
    /// Time passes by this many seconds, then a tick.
    Tick(u32),
    /// A successful effect result for the pending effect (or an arbitrary id).
    EffectOk { id: Option<u64>, value: Json },
    /// A failed effect result.
    EffectErr { id: Option<u64>, error: String },
    /// A location.
    Location(f64, f64),
    /// Media.
    Media { id: String, caption: Option<String> },
    /// Something the engine has no input for.
    Unsupported(String),
}

/// A small JSON value the fuzzer can build.
#[derive(Arbitrary, Debug, Clone)]
pub enum Json {
    /// `null`.
    Null,
    /// A boolean.
    Bool(bool),
    /// A number.
    Number(f64),
    /// An integer.
    Integer(i64),
    /// A string.
    String(String),
    /// An array.
    Array(Vec<Json>),
    /// An object.
    Object(Vec<(String, Json)>),
}

impl Json {
    /// As a `serde_json::Value` (non-finite numbers become `null`).
    pub fn to_value(&self) -> serde_json::Value {
        match self {
            Json::Null => serde_json::Value::Null,
            Json::Bool(b) => (*b).into(),
            Json::Number(n) => serde_json::Number::from_f64(*n).map(Into::into).unwrap_or(serde_json::Value::Null),
            Json::Integer(i) => (*i).into(),
            Json::String(s) => s.clone().into(),
            Json::Array(items) => items.iter().map(Json::to_value).collect(),
            Json::Object(fields) => fields.iter().map(|(k, v)| (k.clone(), v.to_value())).collect(),
        }
    }
}

/// Every condition operator the engine knows.
pub const OPERATORS: &[&str] = &[
    "==",
    "!=",
    ">",
    ">=",
    "<",
    "<=",
    "contains",
    "not_contains",
    "starts_with",
    "ends_with",
    "matches",
    "exists",
    "is_empty",
    "not_empty",
    "in",
];

const WORDS: &[&str] = &[
    "oi",
    "sim",
    "não",
    "1",
    "2",
    "30",
    "9",
    "-4.5",
    "maria@example.com",
    "+55 11 99999-9999",
    "123456",
    "",
    " ",
    "true",
    "{{name}}",
];
const IDS: &[&str] = &[
    "yes",
    "no",
    "btn_suporte",
    "btn_vendas",
    "btn_status",
    "tech",
    "billing",
    "a",
    "b",
    "opt1",
    "true",
    "false",
    "invalid",
    "timeout",
];

/// Drives one session through a script, checking invariants after every step.
pub struct Driver<'f> {
    flow: &'f CompiledFlow,
    session: Session,
    now: Timestamp,
    last_effect: Option<EffectId>,
}

impl<'f> Driver<'f> {
    /// A new session on `flow`.
    pub fn new(flow: &'f CompiledFlow, seed: u64) -> Self {
        let session = Session::new(flow, SessionOptions { seed, ..SessionOptions::default() });
        Driver { flow, session, now: Timestamp::from_unix_seconds(1_780_000_000), last_effect: None }
    }

    /// A driver over an existing session state.
    pub fn resume(flow: &'f CompiledFlow, session: Session) -> Self {
        Driver { flow, session, now: Timestamp::from_unix_seconds(1_780_000_000), last_effect: None }
    }

    /// The session as it is now.
    pub fn session(&self) -> &Session {
        &self.session
    }

    /// Feeds one scripted input and checks the state survives a JSON round-trip, and that
    /// the same step from the restored state gives the same turn (replay equality).
    pub fn step(&mut self, input: &ScriptedInput) {
        let input = self.to_input(input);
        let before = self.session.clone();
        let now = self.now;
        let result = self.session.handle(self.flow, input.clone(), now);

        let json = serde_json::to_string(&before).expect("a session state always serialises");
        let mut restored: Session = serde_json::from_str(&json).expect("a serialised session state always loads");
        assert_eq!(restored, before, "the JSON round-trip changed the state; JSON: {json}");
        let replay = restored.handle(self.flow, input, now);
        assert_eq!(format!("{result:?}"), format!("{replay:?}"), "replay gave another result");
        assert_eq!(restored, self.session, "replay gave another state");

        if let Ok(Turn { outputs, .. }) = &result {
            for output in outputs {
                if let flowcore::Output::Effect(request) = output {
                    if request.expects_result() {
                        self.last_effect = Some(request.id);
                    }
                }
            }
        }
    }

    fn to_input(&mut self, input: &ScriptedInput) -> Input {
        match input {
            ScriptedInput::Text(text) => Input::text(text.clone()),
            ScriptedInput::Word(i) => Input::text(WORDS[*i as usize % WORDS.len()]),
            ScriptedInput::Choice(id) => Input::choice(id.clone()),
            ScriptedInput::KnownChoice(i) => Input::choice(IDS[*i as usize % IDS.len()]),
            ScriptedInput::Tick(seconds) => {
                self.now = self.now.saturating_add_seconds(u64::from(*seconds));
                Input::Tick
            }
            ScriptedInput::EffectOk { id, value } => Input::EffectResult {
                id: id.map(EffectId).or(self.last_effect).unwrap_or(EffectId(0)),
                result: EffectOutcome::Success(value.to_value()),
            },
            ScriptedInput::EffectErr { id, error } => Input::EffectResult {
                id: id.map(EffectId).or(self.last_effect).unwrap_or(EffectId(0)),
                result: EffectOutcome::Failure(error.clone()),
            },
            ScriptedInput::Location(latitude, longitude) => {
                Input::Location { latitude: *latitude, longitude: *longitude, name: None, address: None }
            }
            ScriptedInput::Media { id, caption } => Input::Media {
                kind: MediaKind::Image,
                id: id.clone(),
                mime_type: Some("image/jpeg".into()),
                caption: caption.clone(),
                filename: None,
            },
            ScriptedInput::Unsupported(kind) => Input::Unsupported { kind: kind.clone() },
        }
    }
}

/// Runs up to `max` scripted inputs drawn from `u` through the driver.
pub fn run_script(driver: &mut Driver<'_>, u: &mut Unstructured<'_>, max: usize) {
    for _ in 0..max {
        let Ok(input) = ScriptedInput::arbitrary(u) else { return };
        driver.step(&input);
    }
}
