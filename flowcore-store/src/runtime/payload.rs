//! What the runtime's inbox and outbox rows carry.

use flowcore::{Input, Message, Timestamp};
use serde::{Deserialize, Serialize};

/// What an inbox row of kind `message` carries: one inbound message, as the channel
/// adapter read it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InboundPayload {
    /// The engine input.
    pub input: Input,
    /// The channel's message id (Meta's `wamid`): the inbox's duplicate filter.
    pub wamid: String,
    /// When the contact sent it (the channel's clock).
    pub sent_at: Timestamp,
    /// The contact's profile name, if the channel sent it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contact_name: Option<String>,
    /// The message type as the channel named it (`text`, `interactive`, …).
    pub kind: String,
}

impl InboundPayload {
    /// A text message.
    ///
    /// ```
    /// use flowcore::Timestamp;
    /// use flowcore_store::runtime::InboundPayload;
    /// let oi = InboundPayload::text("wamid.1", "oi", Timestamp::from_unix_seconds(1_700_000_000));
    /// assert_eq!(oi.kind, "text");
    /// ```
    pub fn text(wamid: impl Into<String>, text: impl Into<String>, sent_at: Timestamp) -> InboundPayload {
        InboundPayload {
            input: Input::text(text.into()),
            wamid: wamid.into(),
            sent_at,
            contact_name: None,
            kind: "text".to_owned(),
        }
    }
}

/// What an inbox row of kind `wake_up` carries.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WakePayload {
    /// The flow of the session to wake.
    pub flow_id: String,
    /// The wake-up time the session asked for; a session that no longer asks for it (it
    /// moved on) ignores the wake-up.
    pub wake_at: Timestamp,
}

/// What an outbox row carries.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OutboxPayload {
    /// The message, rendered.
    pub message: Message,
    /// The flow node that produced it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// Sent by an operator rather than the flow.
    #[serde(default)]
    pub manual: bool,
}

/// A readable one-line summary of an input, for the message log.
///
/// ```
/// use flowcore::Input;
/// use flowcore_store::runtime::input_text;
/// assert_eq!(input_text(&Input::text("oi")), "oi");
/// assert_eq!(input_text(&Input::Tick), "[timer]");
/// ```
pub fn input_text(input: &Input) -> String {
    match input {
        Input::Text { text } => text.clone(),
        Input::Choice { id, title } => title.clone().unwrap_or_else(|| id.clone()),
        Input::Media { kind, caption, .. } => match caption {
            Some(c) => format!("[{}] {c}", kind.as_str()),
            None => format!("[{}]", kind.as_str()),
        },
        Input::Location { latitude, longitude, name, .. } => match name {
            Some(n) => format!("[location] {n}"),
            None => format!("[location] {latitude},{longitude}"),
        },
        Input::Contacts { .. } => "[contacts]".to_owned(),
        Input::Unsupported { kind } => format!("[{kind}]"),
        Input::EffectResult { .. } => "[effect result]".to_owned(),
        Input::Tick => "[timer]".to_owned(),
        _ => "[event]".to_owned(),
    }
}
