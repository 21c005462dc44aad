//! What goes into a session ([`Input`]) and what comes out of it ([`Output`]).
//!
//! These types are the engine's whole surface towards the world: adapters (such as
//! `flowcore-meta`) convert their platform's events into [`Input`]s and turn
//! [`Message`]s into platform messages; hosts perform [`EffectRequest`]s and answer them
//! with [`Input::EffectResult`].

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::Timestamp;

/// The id of a node in a flow, as the builder wrote it.
///
/// Cheap to clone: outputs share the compiled flow's copy of the id.
///
/// ```
/// use flowcore::NodeId;
/// let id = NodeId::from("ask_name");
/// assert_eq!(id.as_str(), "ask_name");
/// assert_eq!(id.to_string(), "ask_name");
/// ```
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct NodeId(Arc<str>);

impl<'de> Deserialize<'de> for NodeId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        /// Reads a string into an `Arc<str>` with one allocation (serde's own impl makes two).
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = NodeId;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a node id")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<NodeId, E> {
                Ok(NodeId(Arc::from(v)))
            }
        }
        d.deserialize_str(Visitor)
    }
}

impl NodeId {
    /// The id as written in the flow.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<&str> for NodeId {
    fn from(id: &str) -> Self {
        NodeId(Arc::from(id))
    }
}

impl From<String> for NodeId {
    fn from(id: String) -> Self {
        NodeId(Arc::from(id))
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::borrow::Borrow<str> for NodeId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for NodeId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// The id of an effect request, unique within one session.
///
/// The host answers a request by feeding back [`Input::EffectResult`] with the same id;
/// an unknown or already answered id is a typed error, never a silent no-op.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct EffectId(pub u64);

impl fmt::Display for EffectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// One inbound event for a session.
///
/// Serialised with a `"type"` tag, so hosts and tools can write inputs as JSON lines:
///
/// ```
/// use flowcore::Input;
/// let input: Input = serde_json::from_str(r#"{"type":"button_reply","id":"yes"}"#).unwrap();
/// assert_eq!(input, Input::Choice { id: "yes".into(), title: None });
/// assert_eq!(Input::text("oi"), Input::Text { text: "oi".into() });
/// let place: Input = serde_json::from_str(r#"{"type":"location","latitude":-23.5,"longitude":-46.6}"#).unwrap();
/// assert_eq!(place, Input::Location { latitude: -23.5, longitude: -46.6, name: None, address: None });
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Input {
    /// A text message from the contact.
    Text {
        /// The message body.
        text: String,
    },
    /// The contact chose an option: an interactive button or list row, or a template's
    /// quick-reply button. Routed by `id`; `title` is what the contact saw.
    #[serde(alias = "button_reply", alias = "list_reply", alias = "button")]
    Choice {
        /// The option id the flow gave the button or row.
        id: String,
        /// The option's visible title, when the platform reports it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        title: Option<String>,
    },
    /// The contact sent media.
    Media {
        /// What kind of media.
        kind: MediaKind,
        /// The platform's media id (for WhatsApp, valid 7 days).
        id: String,
        /// The MIME type, when known.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        mime_type: Option<String>,
        /// The caption the contact wrote, if any.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        caption: Option<String>,
        /// The file name (documents).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        filename: Option<String>,
    },
    /// The contact shared a location.
    Location {
        /// Latitude in degrees.
        latitude: f64,
        /// Longitude in degrees.
        longitude: f64,
        /// The place's name, for a chosen place.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        name: Option<String>,
        /// The place's address, for a chosen place.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        address: Option<String>,
    },
    /// The contact shared one or more contact cards, kept as the platform's JSON.
    Contacts {
        /// The shared cards.
        contacts: serde_json::Value,
    },
    /// The contact reacted to a message with an emoji, or removed a reaction.
    Reaction {
        /// The message reacted to (the platform's id).
        message_id: String,
        /// The emoji; `None` when the reaction was removed.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        emoji: Option<String>,
    },
    /// The contact sent a cart from a catalog.
    Order {
        /// The catalog the products come from.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        catalog_id: Option<String>,
        /// A note the contact wrote with the order.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        text: Option<String>,
        /// The products, in the contact's order.
        #[serde(default)]
        items: Vec<OrderItem>,
    },
    /// The contact edited an earlier message.
    Edit {
        /// The edited message's id.
        message_id: String,
        /// The message as it reads now, when the platform says.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        message: Option<Box<Input>>,
    },
    /// The contact deleted an earlier message.
    Revoke {
        /// The deleted message's id.
        message_id: String,
    },
    /// The contact submitted a WhatsApp Flow (Meta's `nfm_reply`).
    ///
    /// A `whatsapp_flow` node takes it only when `flow_token` is the token of the flow
    /// message the node sent; `response` holds the flow's answers.
    #[serde(alias = "nfm_reply")]
    FlowReply {
        /// The token the flow message carried (`response_json.flow_token`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        flow_token: Option<String>,
        /// The answers: the flow's `response_json` (a `whatsapp_flow` node stores them
        /// without `flow_token`).
        #[serde(default)]
        response: serde_json::Value,
    },
    /// An event the engine has no dedicated input for (a system notice, a poll, a type
    /// the adapter does not know, …). It never starts a session; a waiting question
    /// takes it as an invalid answer.
    Unsupported {
        /// The platform's name for the event type, such as `"reaction"`.
        kind: String,
    },
    /// The result of an effect the session requested.
    EffectResult {
        /// The id from the [`EffectRequest`].
        id: EffectId,
        /// What happened.
        result: EffectOutcome,
    },
    /// Time passed. Feed one when `now` reaches the session's wake-up time
    /// (a `delay` node or a question's idle timeout).
    Tick,
}

impl Input {
    /// A text message.
    pub fn text(text: impl Into<String>) -> Self {
        Input::Text { text: text.into() }
    }

    /// A chosen button or list row, by option id.
    pub fn choice(id: impl Into<String>) -> Self {
        Input::Choice { id: id.into(), title: None }
    }
}

/// One product of an [`Input::Order`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OrderItem {
    /// The product's id in the catalog.
    pub product_retailer_id: String,
    /// How many.
    pub quantity: f64,
    /// The price of one.
    pub item_price: f64,
    /// The ISO 4217 currency of the price.
    pub currency: String,
}

/// The kind of a media item, in either direction.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MediaKind {
    /// A picture (JPEG, PNG).
    Image,
    /// A video.
    Video,
    /// An audio file or voice note.
    Audio,
    /// A document of any kind.
    Document,
    /// A sticker (WebP).
    Sticker,
}

impl MediaKind {
    /// The lowercase name, as WhatsApp spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            MediaKind::Image => "image",
            MediaKind::Video => "video",
            MediaKind::Audio => "audio",
            MediaKind::Document => "document",
            MediaKind::Sticker => "sticker",
        }
    }
}

/// How an effect ended, as reported by the host.
///
/// Serialised as `{"ok": <value>}` or `{"error": "<message>"}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum EffectOutcome {
    /// The effect succeeded; the value is stored in the node's result variable.
    #[serde(rename = "ok")]
    Success(serde_json::Value),
    /// The effect failed; the session follows the node's `failure` edge if it has one.
    #[serde(rename = "error")]
    Failure(String),
}

/// Everything one call to the engine produced.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Turn {
    /// What the host must do, in order: send messages, perform effects, hand off, end.
    pub outputs: Vec<Output>,
    /// When the session wants a [`Input::Tick`]: a `delay` node, or a waiting node's
    /// `timeoutSeconds`. `None` when nothing is scheduled.
    pub wake_at: Option<Timestamp>,
}

/// One thing the engine asks the host to do.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Output {
    /// Send a message to the contact.
    Send {
        /// The node that produced the message.
        node: NodeId,
        /// The message, with every template already rendered.
        message: Message,
    },
    /// Perform an effect. When [`EffectRequest::expects_result`] is true the session
    /// waits for the matching [`Input::EffectResult`].
    Effect(EffectRequest),
    /// Pass the conversation to a human; the bot stays silent until the host closes it.
    Handoff {
        /// The handoff node.
        node: NodeId,
        /// The queue or team to hand off to, if the flow named one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        queue: Option<String>,
    },
    /// The session ended; the next inbound message starts a fresh one.
    End {
        /// The node where the session ended, if it ended at a node.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        node: Option<NodeId>,
        /// Why it ended (flattened: `{"type":"end","reason":"completed"}`).
        #[serde(flatten)]
        reason: EndReason,
    },
}

/// Why a session ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
#[non_exhaustive]
pub enum EndReason {
    /// The flow reached an `end` node (or a node with no way on).
    Completed,
    /// A question was answered invalidly more than `maxRetries` times and had no
    /// `invalid` edge.
    RetriesExhausted,
    /// The flow ran more steps than the budget allows without waiting for input: a loop.
    StepBudgetExceeded {
        /// The nodes of the loop, in the order they ran.
        nodes: Vec<NodeId>,
    },
    /// The session was idle for longer than its time-to-live.
    Expired,
    /// A waiting node's `timeoutSeconds` passed and it had no `timeout` edge.
    IdleTimeout,
    /// An effect failed and the node had no `failure` edge.
    EffectFailed {
        /// The error the host reported.
        error: String,
    },
}

/// A message for the contact, every template already rendered.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Message {
    /// Plain text.
    Text {
        /// The text.
        text: String,
    },
    /// Text with up to three reply buttons.
    Buttons {
        /// Optional header text.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        header: Option<String>,
        /// The body text.
        body: String,
        /// Optional footer text.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        footer: Option<String>,
        /// The buttons, in order.
        buttons: Vec<Choice>,
    },
    /// Text with a button that opens a list of rows in sections.
    List {
        /// Optional header text.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        header: Option<String>,
        /// The body text.
        body: String,
        /// Optional footer text.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        footer: Option<String>,
        /// The label of the button that opens the list.
        button: String,
        /// The sections, in order.
        sections: Vec<ListSection>,
    },
    /// A media item by URL.
    Media {
        /// What kind of media.
        kind: MediaKind,
        /// Where the platform can fetch it.
        link: String,
        /// Optional caption.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        caption: Option<String>,
        /// Optional file name (documents).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        filename: Option<String>,
    },
    /// A WhatsApp Flow: a button (`cta`) that opens the flow `flow_id`; the contact's
    /// answers come back as an [`Input::FlowReply`] carrying `flow_token`.
    Flow {
        /// Optional header text.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        header: Option<String>,
        /// The body text.
        body: String,
        /// Optional footer text.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        footer: Option<String>,
        /// The published flow's id.
        flow_id: String,
        /// The label of the button that opens the flow.
        cta: String,
        /// The token the reply must carry; generated from the session's seed.
        flow_token: String,
        /// The screen the flow opens at; `None` lets the flow's endpoint decide
        /// (`data_exchange`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        screen: Option<String>,
        /// The initial data for the screen, templates rendered.
        #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
        data: serde_json::Value,
    },
    /// A pre-approved template (WhatsApp requires one outside the 24-hour window).
    Template {
        /// The template's name.
        name: String,
        /// The template's language code, such as `pt_BR`.
        language: String,
        /// The template's components (header/body/button parameters) in WhatsApp's
        /// shape, templates rendered.
        #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
        components: serde_json::Value,
    },
}

/// A reply button, or any option with an id and a title.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Choice {
    /// The id the reply comes back with.
    pub id: String,
    /// What the contact sees.
    pub title: String,
}

/// A section of a list message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListSection {
    /// The section's title (required by WhatsApp when there are several sections).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    /// The rows.
    pub rows: Vec<ListRow>,
}

/// A row of a list message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListRow {
    /// The id the reply comes back with.
    pub id: String,
    /// What the contact sees.
    pub title: String,
    /// An optional second line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// A request for the host to do something in the world.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EffectRequest {
    /// Answer with [`Input::EffectResult`] carrying this id.
    pub id: EffectId,
    /// The node that asked.
    pub node: NodeId,
    /// What to do.
    pub kind: EffectKind,
}

impl EffectRequest {
    /// Whether the session waits for a result. Fire-and-forget effects (analytics) do not.
    pub fn expects_result(&self) -> bool {
        !matches!(self.kind, EffectKind::Analytics { .. })
    }
}

/// What an effect asks for. Every string is already rendered from its template.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "effect", rename_all = "snake_case")]
#[non_exhaustive]
pub enum EffectKind {
    /// An HTTP call; the response body (JSON if it parses, else a string) is the result.
    ApiCall {
        /// The HTTP method, upper case.
        method: String,
        /// The URL.
        url: String,
        /// Request headers, in order.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        headers: Vec<(String, String)>,
        /// The request body, if any.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        body: Option<String>,
        /// How long the host should wait, if the flow says.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        timeout_ms: Option<u64>,
    },
    /// A prompt for a language model; the completion text is the result.
    AiPrompt {
        /// The user prompt.
        prompt: String,
        /// An optional system prompt.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        system: Option<String>,
        /// An optional model name.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        model: Option<String>,
    },
    /// A database query run by the host; the rows are the result.
    DatabaseQuery {
        /// The query text.
        query: String,
        /// Named parameters.
        #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
        params: serde_json::Value,
    },
    /// A script run by the host in its sandbox; its return value is the result.
    Script {
        /// The script's language, if the flow says.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        language: Option<String>,
        /// The source code.
        code: String,
    },
    /// A named action the host implements (tagging a contact, calling a webhook, …).
    Action {
        /// The action's name.
        action: String,
        /// Its parameters.
        #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
        params: serde_json::Value,
    },
    /// An analytics event. Fire and forget: the session does not wait.
    Analytics {
        /// The event name.
        event: String,
        /// Its properties.
        #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
        properties: serde_json::Value,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inputs_read_from_json_lines() {
        let cases = [
            (r#"{"type":"text","text":"oi"}"#, Input::text("oi")),
            (
                r#"{"type":"list_reply","id":"tech","title":"Suporte"}"#,
                Input::Choice { id: "tech".into(), title: Some("Suporte".into()) },
            ),
            (r#"{"type":"tick"}"#, Input::Tick),
            (
                r#"{"type":"effect_result","id":3,"result":{"error":"timeout"}}"#,
                Input::EffectResult { id: EffectId(3), result: EffectOutcome::Failure("timeout".into()) },
            ),
        ];
        for (line, expected) in cases {
            assert_eq!(serde_json::from_str::<Input>(line).unwrap(), expected, "{line}");
        }
    }

    #[test]
    fn outputs_round_trip_through_json() {
        let outputs = vec![
            Output::Send { node: "hello".into(), message: Message::Text { text: "Olá".into() } },
            Output::Effect(EffectRequest {
                id: EffectId(1),
                node: "lookup".into(),
                kind: EffectKind::ApiCall {
                    method: "GET".into(),
                    url: "https://x.test/1".into(),
                    headers: vec![],
                    body: None,
                    timeout_ms: Some(5000),
                },
            }),
            Output::End { node: None, reason: EndReason::StepBudgetExceeded { nodes: vec!["a".into(), "b".into()] } },
            Output::End { node: Some("bye".into()), reason: EndReason::Completed },
        ];
        let json = serde_json::to_string(&outputs).unwrap();
        let back: Vec<Output> = serde_json::from_str(&json).unwrap();
        assert_eq!(back, outputs);
        assert!(json.contains(r#"{"type":"end","node":"bye","reason":"completed"}"#), "{json}");
    }
}
