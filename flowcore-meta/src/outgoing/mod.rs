//! Outgoing messages that cannot be invalid: every limit is checked when a value is built.
//!
//! Build a content value ([`Text`], [`MediaMessage`], [`ReplyButtons`], [`ListMessage`],
//! [`CtaUrl`], [`FlowMessage`], [`Template`], [`LocationMessage`], [`ContactsMessage`],
//! [`Reaction`]),
//! address it with [`OutgoingMessage::new`], and send it with
//! [`crate::MetaClient::send`]. Read receipts are [`MarkRead`].
//!
//! ```
//! use flowcore_meta::outgoing::{OutgoingMessage, Recipient, ReplyButton, ReplyButtons, Text};
//!
//! let to = Recipient::phone("+1 (202) 555-0101")?;
//! let hello = OutgoingMessage::new(to.clone(), Text::new("Olá!")?).reply_to("wamid.IN");
//! assert_eq!(hello.to_json()["to"], "12025550101");
//!
//! let menu = ReplyButtons::new("Como posso ajudar?", [
//!     ReplyButton::new("sales", "Vendas")?,
//!     ReplyButton::new("support", "Suporte")?,
//! ])?;
//! let msg = OutgoingMessage::new(to, menu).callback_data("conv=42;out=1")?;
//! assert_eq!(msg.to_json()["interactive"]["type"], "button");
//!
//! // Limits are checked at construction and name the field:
//! let err = ReplyButton::new("x", "A title that is far too long").unwrap_err();
//! assert_eq!(err.to_string(), "button title is 28 characters, the limit is 20");
//! # Ok::<(), flowcore_meta::outgoing::BuildError>(())
//! ```

mod basic;
mod interactive;
mod limits;
mod template;

use std::fmt;

use serde::ser::{Serialize, Serializer};
use serde_json::{json, Map, Value};

pub use basic::{ContactCard, ContactsMessage, LocationMessage, MarkRead, MediaMessage, MediaSource, Reaction, Text};
pub use interactive::{CtaUrl, FlowMessage, Header, ListMessage, ListRow, ListSection, ReplyButton, ReplyButtons};
pub use limits::*;
pub use template::{Template, TemplateComponent, TemplateParameter};

/// Who a message goes to.
///
/// Its `Debug` output hides all but the last two characters.
#[derive(Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Recipient {
    /// A phone number, digits only (normalised from `+55 (11) 9…`).
    Phone(String),
    /// A business-scoped user id (BSUID, `US.…`), for users known only by username.
    UserId(String),
    /// A WhatsApp group id.
    Group(String),
}

impl Recipient {
    /// A phone number: spaces, `+`, `-`, `.`, `(` and `)` are dropped; what remains must be
    /// 5 to 15 digits (E.164).
    ///
    /// ```
    /// use flowcore_meta::outgoing::Recipient;
    /// assert_eq!(Recipient::phone("+55 (11) 91234-5678").unwrap().as_str(), "5511912345678");
    /// assert!(Recipient::phone("call me").is_err());
    /// ```
    pub fn phone(number: &str) -> Result<Self, BuildError> {
        let digits: String = number.chars().filter(|c| !matches!(c, ' ' | '+' | '-' | '.' | '(' | ')')).collect();
        if digits.is_empty() || !digits.chars().all(|c| c.is_ascii_digit()) {
            return Err(BuildError::Invalid { field: "to".into(), reason: "a phone number has only digits" });
        }
        if !(5..=15).contains(&digits.len()) {
            return Err(BuildError::Invalid { field: "to".into(), reason: "a phone number has 5 to 15 digits" });
        }
        Ok(Recipient::Phone(digits))
    }

    /// A business-scoped user id: a two-letter country code, a dot, then letters, digits
    /// and dots (at most 160 characters).
    pub fn user_id(id: &str) -> Result<Self, BuildError> {
        let bytes = id.as_bytes();
        let well_formed = bytes.len() > 3
            && bytes.len() <= 160
            && bytes[..2].iter().all(u8::is_ascii_uppercase)
            && bytes[2] == b'.'
            && bytes[3..].iter().all(|b| b.is_ascii_alphanumeric() || *b == b'.');
        if !well_formed {
            return Err(BuildError::Invalid {
                field: "to".into(),
                reason: "a user id looks like CC.<letters and digits>",
            });
        }
        Ok(Recipient::UserId(id.to_owned()))
    }

    /// A group id.
    pub fn group(id: &str) -> Result<Self, BuildError> {
        limits::id("to", id, 256)?;
        Ok(Recipient::Group(id.to_owned()))
    }

    /// A user as webhooks identify them: a number (`wa_id` / `from`) or, failing that, a BSUID.
    pub fn parse(value: &str) -> Result<Self, BuildError> {
        if value.as_bytes().get(2) == Some(&b'.') {
            Recipient::user_id(value)
        } else {
            Recipient::phone(value)
        }
    }

    /// The value sent as `to`.
    pub fn as_str(&self) -> &str {
        match self {
            Recipient::Phone(v) | Recipient::UserId(v) | Recipient::Group(v) => v,
        }
    }

    fn recipient_type(&self) -> &'static str {
        match self {
            Recipient::Group(_) => "group",
            _ => "individual",
        }
    }
}

impl fmt::Debug for Recipient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self {
            Recipient::Phone(_) => "Phone",
            Recipient::UserId(_) => "UserId",
            Recipient::Group(_) => "Group",
        };
        write!(f, "{kind}(\"{}\")", crate::webhook::redact(self.as_str()))
    }
}

/// What an [`OutgoingMessage`] carries. Built only from validated values.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum Content {
    /// Text.
    Text(Text),
    /// Image, audio, video, document or sticker.
    Media(MediaMessage),
    /// A location pin.
    Location(LocationMessage),
    /// Contact cards.
    Contacts(ContactsMessage),
    /// Reply buttons.
    Buttons(ReplyButtons),
    /// A list.
    List(ListMessage),
    /// A call-to-action URL button.
    CtaUrl(CtaUrl),
    /// A button that opens a WhatsApp Flow.
    Flow(FlowMessage),
    /// A template.
    Template(Template),
    /// A reaction (or its removal).
    Reaction(Reaction),
}

macro_rules! content_from {
    ($($ty:ident => $variant:ident),* $(,)?) => {$(
        impl From<$ty> for Content {
            fn from(value: $ty) -> Self {
                Content::$variant(value)
            }
        }
    )*};
}

content_from!(
    Text => Text, MediaMessage => Media, LocationMessage => Location, ContactsMessage => Contacts,
    ReplyButtons => Buttons, ListMessage => List, CtaUrl => CtaUrl, FlowMessage => Flow, Template => Template,
    Reaction => Reaction,
);

impl Content {
    /// Meta's `type` for the content.
    pub fn kind(&self) -> &'static str {
        match self {
            Content::Text(_) => "text",
            Content::Media(m) => m.kind().as_str(),
            Content::Location(_) => "location",
            Content::Contacts(_) => "contacts",
            Content::Buttons(_) | Content::List(_) | Content::CtaUrl(_) | Content::Flow(_) => "interactive",
            Content::Template(_) => "template",
            Content::Reaction(_) => "reaction",
        }
    }

    fn payload(&self) -> Value {
        match self {
            Content::Text(v) => v.to_json(),
            Content::Media(v) => v.to_json(),
            Content::Location(v) => v.to_json(),
            Content::Contacts(v) => v.to_json(),
            Content::Buttons(v) => v.to_json(),
            Content::List(v) => v.to_json(),
            Content::CtaUrl(v) => v.to_json(),
            Content::Flow(v) => v.to_json(),
            Content::Template(v) => v.to_json(),
            Content::Reaction(v) => v.to_json(),
        }
    }
}

/// A message ready to send: recipient, content, and the optional reply-to and tracker.
///
/// Serialises to the body of `POST /{phone_number_id}/messages`.
#[derive(Clone, Debug, PartialEq)]
pub struct OutgoingMessage {
    to: Recipient,
    content: Content,
    reply_to: Option<String>,
    callback_data: Option<String>,
}

impl OutgoingMessage {
    /// Addresses `content` to `to`.
    pub fn new(to: Recipient, content: impl Into<Content>) -> Self {
        OutgoingMessage { to, content: content.into(), reply_to: None, callback_data: None }
    }

    /// Quotes the message with this id (`context.message_id`).
    pub fn reply_to(mut self, message_id: impl Into<String>) -> Self {
        self.reply_to = Some(message_id.into());
        self
    }

    /// Attaches `biz_opaque_callback_data` (≤ 512 characters), echoed back in status
    /// webhooks: put the outbox row's id here to reconcile sends.
    pub fn callback_data(mut self, data: impl Into<String>) -> Result<Self, BuildError> {
        let data = data.into();
        limits::required("biz_opaque_callback_data", &data, CALLBACK_DATA_MAX)?;
        self.callback_data = Some(data);
        Ok(self)
    }

    /// The recipient.
    pub fn recipient(&self) -> &Recipient {
        &self.to
    }

    /// The content.
    pub fn content(&self) -> &Content {
        &self.content
    }

    /// The request body Meta expects.
    pub fn to_json(&self) -> Value {
        let kind = self.content.kind();
        let mut body = Map::new();
        body.insert("messaging_product".into(), json!("whatsapp"));
        body.insert("recipient_type".into(), json!(self.to.recipient_type()));
        body.insert("to".into(), json!(self.to.as_str()));
        body.insert("type".into(), json!(kind));
        body.insert(kind.into(), self.content.payload());
        if let Some(id) = &self.reply_to {
            body.insert("context".into(), json!({ "message_id": id }));
        }
        if let Some(data) = &self.callback_data {
            body.insert("biz_opaque_callback_data".into(), json!(data));
        }
        Value::Object(body)
    }
}

impl Serialize for OutgoingMessage {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.to_json().serialize(serializer)
    }
}
