//! Typed webhook payloads: [`parse`] a verified body into [`Event`]s.
//!
//! Every entry × change × message / status / error becomes one event, in payload order.
//! One malformed item becomes [`Event::Unparsed`] and the rest still come through; a change
//! whose `field` is not `messages`, and each item of an array of a `messages` value that this
//! crate does not model (`calls`, `message_echoes`, …), becomes [`Event::Unknown`], kept raw.
//! Nothing in a body is dropped without an event. Strings borrow from
//! the body wherever JSON escapes allow, and every item keeps its raw JSON for the log.

mod common;
mod de;
mod message;
mod status;

use std::borrow::Cow;
use std::fmt;

use serde::Deserialize;

pub(crate) use common::redact;
pub use common::{Business, Contact, Phone, Profile, Raw, WebhookError};
pub use message::{
    ContactAddress, ContactEmail, ContactName, ContactOrg, ContactPhone, ContactUrl, Content, Context, Interactive,
    Location, Media, Message, Order, ProductItem, Referral, ReferredProduct, SharedContact, System, SystemKind,
};
pub use status::{Conversation, Pricing, Status, StatusKind};

/// The `object` of WhatsApp Business webhooks.
pub const WHATSAPP_OBJECT: &str = "whatsapp_business_account";

/// A parsed webhook body: its events, in payload order.
///
/// ```
/// let body = br#"{"object":"whatsapp_business_account","entry":[{"id":"1","changes":[{"field":"messages",
///   "value":{"messaging_product":"whatsapp","metadata":{"display_phone_number":"15550100","phone_number_id":"106"},
///   "contacts":[{"profile":{"name":"Ana"},"wa_id":"12025550101"}],
///   "messages":[{"from":"12025550101","id":"wamid.A","timestamp":"1780300800","type":"text","text":{"body":"oi"}}]}}]}]}"#;
/// let webhook = flowcore_meta::parse(body).unwrap();
/// for event in &webhook {
///     let flowcore_meta::Event::Message(m) = event else { continue };
///     assert_eq!(m.business.phone_number_id, "106");
///     assert_eq!(m.contact.as_ref().unwrap().profile.name.as_deref(), Some("Ana"));
///     assert_eq!(event.dedup_key().unwrap().to_string(), "message:wamid.A");
///     assert_eq!(flowcore_meta::to_input(m), flowcore::Input::text("oi"));
/// }
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct Webhook<'a> {
    events: Vec<Event<'a>>,
}

impl<'a> Webhook<'a> {
    /// The events, in payload order.
    pub fn events(&self) -> std::slice::Iter<'_, Event<'a>> {
        self.events.iter()
    }

    /// How many events the body held.
    pub fn len(&self) -> usize {
        self.events.len()
    }

    /// Whether the body held no events.
    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    /// The events, by value.
    pub fn into_events(self) -> Vec<Event<'a>> {
        self.events
    }
}

impl<'a> IntoIterator for Webhook<'a> {
    type Item = Event<'a>;
    type IntoIter = std::vec::IntoIter<Event<'a>>;
    fn into_iter(self) -> Self::IntoIter {
        self.events.into_iter()
    }
}

impl<'w, 'a> IntoIterator for &'w Webhook<'a> {
    type Item = &'w Event<'a>;
    type IntoIter = std::slice::Iter<'w, Event<'a>>;
    fn into_iter(self) -> Self::IntoIter {
        self.events.iter()
    }
}

/// One thing a webhook told us.
// Most events are messages, the largest variant: boxing it would add an allocation to the
// common case without saving memory.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum Event<'a> {
    /// A user sent a message (of any type, including types this crate does not know:
    /// [`Content::Unknown`]).
    Message(MessageEvent<'a>),
    /// A message we sent changed status.
    Status(StatusEvent<'a>),
    /// A system- or app-level problem (`value.errors[]`), not tied to a message.
    Error(ErrorEvent<'a>),
    /// Something this crate does not model, kept raw: a change whose `field` is not
    /// `messages` (`account_update`, `message_template_status_update`, …), or one item of an
    /// array inside a `messages` value other than `messages`, `statuses`, `errors` and
    /// `contacts` (`calls`, `message_echoes`, and whatever Meta adds next).
    Unknown {
        /// The WhatsApp Business Account id of the entry.
        waba_id: Option<Cow<'a, str>>,
        /// The business number, for an item of an array inside a `messages` value; `None`
        /// for changes of other fields, whose values have no common shape.
        business: Option<Business<'a>>,
        /// The change's `field`.
        kind: Cow<'a, str>,
        /// The array the item came from, for an item of an array inside a `messages` value
        /// (`kind` is then `messages`).
        array: Option<Cow<'a, str>>,
        /// The change's `value`, or the array item.
        raw: Raw<'a>,
    },
    /// An item that could not be read. Log it; the other items are unaffected.
    Unparsed {
        /// The business number, when the item's change could be read that far.
        business: Option<Business<'a>>,
        /// Which level of the payload the item was at.
        item: Item,
        /// The item as Meta sent it.
        raw: Raw<'a>,
        /// Why it could not be read.
        error: String,
    },
}

/// Where in the payload an [`Event::Unparsed`] item sat.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Item {
    /// `entry[]`.
    Entry,
    /// `entry[].changes[]`.
    Change,
    /// `changes[].value` (a `messages` change whose value has no usable metadata).
    Value,
    /// `value.contacts[]`.
    Contact,
    /// `value.messages[]`.
    Message,
    /// `value.statuses[]`.
    Status,
    /// `value.errors[]`.
    Error,
}

/// A message with where it arrived and who sent it.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct MessageEvent<'a> {
    /// The business number that received it: route by `business.phone_number_id`.
    pub business: Business<'a>,
    /// The sender, joined from `value.contacts` by id (`wa_id == from` or
    /// `user_id == from_user_id`).
    pub contact: Option<Contact<'a>>,
    /// The message.
    pub message: Message<'a>,
    /// The message as Meta sent it.
    pub raw: Raw<'a>,
}

impl MessageEvent<'_> {
    /// The conversation key within the organisation: the business number's id and the
    /// user's id (their number, or their BSUID for username-only users).
    pub fn conversation_key(&self) -> Option<(&str, &str)> {
        let user = self
            .message
            .sender_id()
            .or_else(|| self.contact.as_ref().and_then(|c| c.wa_id.as_ref().map(Phone::as_str)))?;
        Some((&self.business.phone_number_id, user))
    }
}

/// A status with the business number it concerns.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct StatusEvent<'a> {
    /// The business number that sent the message.
    pub business: Business<'a>,
    /// The status.
    pub status: Status<'a>,
    /// The status as Meta sent it.
    pub raw: Raw<'a>,
}

/// A `value.errors[]` item with the business number it concerns.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct ErrorEvent<'a> {
    /// The business number concerned.
    pub business: Business<'a>,
    /// The error.
    pub error: WebhookError<'a>,
    /// The error as Meta sent it.
    pub raw: Raw<'a>,
}

/// The key under which an inbox stores an event, so that redeliveries are ignored.
///
/// Its `Display` form is stable: `message:<wamid>`, `status:<wamid>:<status>:<recipient>`,
/// and for a group participant's status `status:<wamid>:<status>:<recipient>:<participant>`.
///
/// ```
/// use flowcore_meta::DedupKey;
/// let one_to_one = DedupKey::Status { wamid: "wamid.A", status: "read", recipient: "12025550101", participant: None };
/// assert_eq!(one_to_one.to_string(), "status:wamid.A:read:12025550101");
/// let group = DedupKey::Status { wamid: "wamid.A", status: "read", recipient: "G1", participant: Some("12025550102") };
/// assert_eq!(group.to_string(), "status:wamid.A:read:G1:12025550102");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DedupKey<'e> {
    /// A message, by its wamid.
    Message {
        /// The message id.
        wamid: &'e str,
    },
    /// A status, by our message's wamid, the status and the recipient.
    Status {
        /// Our message's id.
        wamid: &'e str,
        /// The status name.
        status: &'e str,
        /// The recipient (number, else BSUID; the group id for group messages).
        recipient: &'e str,
        /// The group participant the status is about (number, else BSUID), for group
        /// messages: each participant's `read` is its own event.
        participant: Option<&'e str>,
    },
}

impl fmt::Display for DedupKey<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DedupKey::Message { wamid } => write!(f, "message:{wamid}"),
            DedupKey::Status { wamid, status, recipient, participant: None } => {
                write!(f, "status:{wamid}:{status}:{recipient}")
            }
            DedupKey::Status { wamid, status, recipient, participant: Some(participant) } => {
                write!(f, "status:{wamid}:{status}:{recipient}:{participant}")
            }
        }
    }
}

impl<'a> Event<'a> {
    /// The dedup key: message → wamid; status → wamid + status + recipient (+ the group
    /// participant, for group messages); `None` for
    /// errors, other fields and unparsed items (key those by a hash of the raw JSON).
    pub fn dedup_key(&self) -> Option<DedupKey<'_>> {
        match self {
            Event::Message(m) => Some(DedupKey::Message { wamid: &m.message.id }),
            Event::Status(s) => Some(DedupKey::Status {
                wamid: &s.status.id,
                status: s.status.status.as_str(),
                recipient: s.status.recipient(),
                participant: s.status.participant(),
            }),
            _ => None,
        }
    }

    /// The business number the event concerns, when known.
    pub fn business(&self) -> Option<&Business<'a>> {
        match self {
            Event::Message(m) => Some(&m.business),
            Event::Status(s) => Some(&s.business),
            Event::Error(e) => Some(&e.business),
            Event::Unparsed { business, .. } | Event::Unknown { business, .. } => business.as_ref(),
        }
    }

    /// The item's JSON exactly as Meta sent it.
    pub fn raw(&self) -> Raw<'a> {
        match self {
            Event::Message(m) => m.raw,
            Event::Status(s) => s.raw,
            Event::Error(e) => e.raw,
            Event::Unknown { raw, .. } | Event::Unparsed { raw, .. } => *raw,
        }
    }
}

/// Why a whole body could not be read (individual items never fail the body).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ParseError {
    /// The body is not a JSON object.
    #[error("webhook body is not a JSON object: {0}")]
    Malformed(String),
    /// The body's `object` is not `whatsapp_business_account`.
    #[error("webhook object is {0:?}, not \"whatsapp_business_account\"")]
    WrongObject(String),
}

// ---- the envelope ------------------------------------------------------------------

#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(default, borrow, deserialize_with = "de::opt_cow")]
    object: Option<Cow<'a, str>>,
    #[serde(default, borrow, deserialize_with = "de::null_default")]
    entry: Vec<WireEntry<'a>>,
}

#[derive(Deserialize)]
struct WireEntry<'a> {
    #[serde(default, borrow, deserialize_with = "de::opt_cow")]
    id: Option<Cow<'a, str>>,
    #[serde(default, borrow, deserialize_with = "de::null_default")]
    changes: Vec<WireChange<'a>>,
}

impl WireEntry<'_> {
    fn has_values(&self) -> bool {
        self.changes.iter().all(|change| change.value.is_some())
    }
}

#[derive(Deserialize)]
struct WireChange<'a> {
    #[serde(default, borrow, deserialize_with = "de::opt_cow")]
    field: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    value: Option<Raw<'a>>,
}

/// The resilient path's envelope: entries kept raw.
#[derive(Deserialize)]
struct LooseEnvelope<'a> {
    #[serde(default, borrow, deserialize_with = "de::opt_cow")]
    object: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    entry: Option<Raw<'a>>,
}

#[derive(Deserialize)]
struct LooseEntry<'a> {
    #[serde(default, borrow, deserialize_with = "de::opt_cow")]
    id: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    changes: Option<Raw<'a>>,
}

/// A `messages` change's value: the arrays it holds, each item kept raw.
#[derive(Default)]
struct WireValue<'a> {
    metadata: Option<common::Metadata<'a>>,
    contacts: Vec<Raw<'a>>,
    messages: Vec<Raw<'a>>,
    statuses: Vec<Raw<'a>>,
    errors: Vec<Raw<'a>>,
    /// Arrays this crate does not model, by name, in payload order.
    other_arrays: Vec<(Cow<'a, str>, Vec<Raw<'a>>)>,
}

impl<'de: 'a, 'a> Deserialize<'de> for WireValue<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(WireValueVisitor(std::marker::PhantomData))
    }
}

// A hand-written visitor rather than a derive: the derive cannot keep the keys it does not
// know, and those arrays must become events.
struct WireValueVisitor<'a>(std::marker::PhantomData<&'a ()>);

impl<'de: 'a, 'a> serde::de::Visitor<'de> for WireValueVisitor<'a> {
    type Value = WireValue<'a>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a webhook value object")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        use serde::de::Error;
        fn items<'de: 'a, 'a, A: serde::de::MapAccess<'de>>(
            map: &mut A,
            slot: &mut Option<Vec<Raw<'a>>>,
            name: &'static str,
        ) -> Result<(), A::Error> {
            if slot.is_some() {
                return Err(A::Error::duplicate_field(name));
            }
            *slot = Some(map.next_value::<Option<Vec<Raw<'a>>>>()?.unwrap_or_default());
            Ok(())
        }
        let mut value = WireValue::default();
        let (mut contacts, mut messages, mut statuses, mut errors) = (None, None, None, None);
        while let Some(key) = map.next_key::<de::CowStr<'a>>()? {
            match &*key.0 {
                "metadata" => {
                    if value.metadata.is_some() {
                        return Err(A::Error::duplicate_field("metadata"));
                    }
                    value.metadata = map.next_value()?;
                }
                "contacts" => items(&mut map, &mut contacts, "contacts")?,
                "messages" => items(&mut map, &mut messages, "messages")?,
                "statuses" => items(&mut map, &mut statuses, "statuses")?,
                "errors" => items(&mut map, &mut errors, "errors")?,
                _ => {
                    let raw: Raw<'a> = map.next_value()?;
                    // Scalars and objects (`messaging_product`, …) describe the value; only
                    // arrays hold items.
                    if raw.get().starts_with('[') {
                        let array = serde_json::from_str(raw.get()).map_err(A::Error::custom)?;
                        value.other_arrays.push((key.0, array));
                    }
                }
            }
        }
        value.contacts = contacts.unwrap_or_default();
        value.messages = messages.unwrap_or_default();
        value.statuses = statuses.unwrap_or_default();
        value.errors = errors.unwrap_or_default();
        Ok(value)
    }
}

/// Parses a webhook body (after [`crate::verify_signature`]) into events.
///
/// Fails only when the body is not a JSON object or is for another `object`; a malformed
/// entry, change or item becomes [`Event::Unparsed`] and everything else still comes
/// through. Never panics, whatever the bytes.
pub fn parse(body: &[u8]) -> Result<Webhook<'_>, ParseError> {
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(ParseError::Malformed("expected a JSON object".into()));
    }
    let mut events = Vec::new();
    match serde_json::from_slice::<Envelope<'_>>(body) {
        // A change without a value has no raw JSON of its own here: the slow path has it.
        Ok(envelope) if envelope.entry.iter().all(WireEntry::has_values) => {
            check_object(envelope.object.as_deref())?;
            for entry in envelope.entry {
                push_changes(&mut events, entry);
            }
        }
        Ok(_) | Err(_) => parse_loose(body, &mut events)?,
    }
    Ok(Webhook { events })
}

fn check_object(object: Option<&str>) -> Result<(), ParseError> {
    match object {
        Some(object) if object != WHATSAPP_OBJECT => Err(ParseError::WrongObject(object.to_owned())),
        _ => Ok(()),
    }
}

/// The slow path, for bodies whose skeleton is malformed somewhere: read level by level
/// so that only the broken part is lost.
fn parse_loose<'a>(body: &'a [u8], events: &mut Vec<Event<'a>>) -> Result<(), ParseError> {
    let envelope: LooseEnvelope<'a> = serde_json::from_slice(body).map_err(|e| ParseError::Malformed(e.to_string()))?;
    check_object(envelope.object.as_deref())?;
    let Some(entries_raw) = envelope.entry else { return Ok(()) };
    let entries: Vec<Raw<'a>> = match serde_json::from_str(entries_raw.get()) {
        Ok(entries) => entries,
        Err(e) => {
            events.push(unparsed(None, Item::Entry, entries_raw, e));
            return Ok(());
        }
    };
    for entry_raw in entries {
        let whole = serde_json::from_str::<WireEntry<'a>>(entry_raw.get()).ok().filter(WireEntry::has_values);
        if let Some(entry) = whole {
            push_changes(events, entry);
            continue;
        }
        let entry = match serde_json::from_str::<LooseEntry<'a>>(entry_raw.get()) {
            Ok(entry) => entry,
            Err(e) => {
                events.push(unparsed(None, Item::Entry, entry_raw, e));
                continue;
            }
        };
        let Some(changes_raw) = entry.changes else { continue };
        let changes: Vec<Raw<'a>> = match serde_json::from_str(changes_raw.get()) {
            Ok(changes) => changes,
            Err(e) => {
                events.push(unparsed(None, Item::Entry, entry_raw, e));
                continue;
            }
        };
        for change_raw in changes {
            match serde_json::from_str::<WireChange<'a>>(change_raw.get()) {
                Ok(WireChange { field, value: Some(value) }) => push_change(events, entry.id.clone(), field, value),
                Ok(WireChange { value: None, .. }) => {
                    events.push(unparsed(None, Item::Change, change_raw, "change has no value"))
                }
                Err(e) => events.push(unparsed(None, Item::Change, change_raw, e)),
            }
        }
    }
    Ok(())
}

fn unparsed<'a>(business: Option<Business<'a>>, item: Item, raw: Raw<'a>, error: impl ToString) -> Event<'a> {
    Event::Unparsed { business, item, raw, error: error.to_string() }
}

/// The events of an entry whose changes all have a value ([`WireEntry::has_values`]).
fn push_changes<'a>(events: &mut Vec<Event<'a>>, entry: WireEntry<'a>) {
    for change in entry.changes {
        if let Some(value) = change.value {
            push_change(events, entry.id.clone(), change.field, value);
        }
    }
}

fn push_change<'a>(
    events: &mut Vec<Event<'a>>,
    waba_id: Option<Cow<'a, str>>,
    field: Option<Cow<'a, str>>,
    raw: Raw<'a>,
) {
    let field = field.unwrap_or(Cow::Borrowed(""));
    if field != "messages" {
        events.push(Event::Unknown { waba_id, business: None, kind: field, array: None, raw });
        return;
    }
    let value = match serde_json::from_str::<WireValue<'a>>(raw.get()) {
        Ok(value) => value,
        Err(e) => return events.push(unparsed(None, Item::Value, raw, e)),
    };
    let Some(metadata) = value.metadata else {
        return events.push(unparsed(None, Item::Value, raw, "value has no metadata.phone_number_id"));
    };
    let business = Business {
        waba_id,
        phone_number_id: metadata.phone_number_id,
        display_phone_number: metadata.display_phone_number,
    };

    let mut contacts = Vec::with_capacity(value.contacts.len());
    for contact_raw in value.contacts {
        match serde_json::from_str::<Contact<'a>>(contact_raw.get()) {
            Ok(contact) => contacts.push(contact),
            Err(e) => events.push(unparsed(Some(business.clone()), Item::Contact, contact_raw, e)),
        }
    }
    for message_raw in value.messages {
        match message::parse_message(message_raw) {
            Ok(message) => {
                let contact = find_contact(&contacts, &message).cloned();
                events.push(Event::Message(MessageEvent {
                    business: business.clone(),
                    contact,
                    message,
                    raw: message_raw,
                }));
            }
            Err(e) => events.push(unparsed(Some(business.clone()), Item::Message, message_raw, e)),
        }
    }
    for status_raw in value.statuses {
        match serde_json::from_str::<Status<'a>>(status_raw.get()) {
            Ok(status) => {
                events.push(Event::Status(StatusEvent { business: business.clone(), status, raw: status_raw }))
            }
            Err(e) => events.push(unparsed(Some(business.clone()), Item::Status, status_raw, e)),
        }
    }
    for error_raw in value.errors {
        match serde_json::from_str::<WebhookError<'a>>(error_raw.get()) {
            Ok(error) => events.push(Event::Error(ErrorEvent { business: business.clone(), error, raw: error_raw })),
            Err(e) => events.push(unparsed(Some(business.clone()), Item::Error, error_raw, e)),
        }
    }
    for (array, items) in value.other_arrays {
        for item_raw in items {
            events.push(Event::Unknown {
                waba_id: business.waba_id.clone(),
                business: Some(business.clone()),
                kind: Cow::Borrowed("messages"),
                array: Some(array.clone()),
                raw: item_raw,
            });
        }
    }
}

fn find_contact<'c, 'a>(contacts: &'c [Contact<'a>], message: &Message<'_>) -> Option<&'c Contact<'a>> {
    contacts.iter().find(|c| {
        let by_number =
            matches!((&message.from, &c.wa_id), (Some(from), Some(wa_id)) if from.as_str() == wa_id.as_str());
        let by_user_id = matches!((&message.from_user_id, &c.user_id), (Some(from), Some(user)) if from == user);
        by_number || by_user_id
    })
}
