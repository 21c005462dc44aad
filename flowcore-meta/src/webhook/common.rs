//! Types shared by messages and statuses: phone numbers, contacts, error objects.

use std::borrow::Cow;
use std::fmt;

use serde::de::{Deserialize, Deserializer};

use super::de;

/// A phone number (or WhatsApp id) as Meta wrote it, digits only in practice.
///
/// Its `Debug` output shows only the last two characters, so events can be logged without
/// leaking numbers. Use [`Phone::as_str`] for the full value.
///
/// ```
/// use flowcore_meta::webhook::Phone;
/// let phone = Phone::from("12025550101");
/// assert_eq!(phone.as_str(), "12025550101");
/// assert_eq!(format!("{phone:?}"), "Phone(\"…01\")");
/// ```
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Phone<'a>(Cow<'a, str>);

impl<'a> Phone<'a> {
    /// The number as Meta wrote it.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The number, detached from the input buffer.
    pub fn into_owned(self) -> Phone<'static> {
        Phone(Cow::Owned(self.0.into_owned()))
    }
}

impl<'a> From<&'a str> for Phone<'a> {
    fn from(value: &'a str) -> Self {
        Phone(Cow::Borrowed(value))
    }
}

impl From<String> for Phone<'static> {
    fn from(value: String) -> Self {
        Phone(Cow::Owned(value))
    }
}

impl fmt::Debug for Phone<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Phone(\"{}\")", redact(&self.0))
    }
}

/// Keeps the last two characters of a number: `"…01"`.
pub(crate) fn redact(value: &str) -> String {
    let count = value.chars().count();
    let tail: String = value.chars().skip(count.saturating_sub(2)).collect();
    format!("…{tail}")
}

impl<'de: 'a, 'a> Deserialize<'de> for Phone<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        de::cow(d).map(Phone)
    }
}

/// The business number that received (or sent) the item: `value.metadata`, plus the
/// WhatsApp Business Account id of the entry. Route by [`Business::phone_number_id`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Business<'a> {
    /// The WhatsApp Business Account id (`entry[].id`), when present.
    pub waba_id: Option<Cow<'a, str>>,
    /// Meta's id of the business number: the key to route and to send with.
    pub phone_number_id: Cow<'a, str>,
    /// The business number as displayed to users.
    pub display_phone_number: Option<Phone<'a>>,
}

/// `value.metadata`.
#[derive(serde::Deserialize)]
pub(crate) struct Metadata<'a> {
    #[serde(default, borrow)]
    pub(crate) display_phone_number: Option<Phone<'a>>,
    #[serde(borrow, deserialize_with = "de::cow")]
    pub(crate) phone_number_id: Cow<'a, str>,
}

/// The sender of messages in a change (`value.contacts[]`): their profile and ids.
///
/// Joined to messages by id (`wa_id == from` or `user_id == from_user_id`), never by
/// position.
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize)]
#[non_exhaustive]
pub struct Contact<'a> {
    /// The profile the user shows.
    #[serde(default, borrow)]
    pub profile: Profile<'a>,
    /// The user's WhatsApp id (their number); absent for users who adopted a username.
    #[serde(default, borrow)]
    pub wa_id: Option<Phone<'a>>,
    /// The business-scoped user id (BSUID, `CC.` + alphanumerics).
    #[serde(default, borrow, deserialize_with = "de::opt_cow")]
    pub user_id: Option<Cow<'a, str>>,
    /// The parent BSUID (`CC.ENT.…`), for managed businesses.
    #[serde(default, borrow, deserialize_with = "de::opt_cow")]
    pub parent_user_id: Option<Cow<'a, str>>,
    /// A hash that changes when the user's identity key changes.
    #[serde(default, borrow, deserialize_with = "de::opt_cow")]
    pub identity_key_hash: Option<Cow<'a, str>>,
}

/// A contact's profile.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[non_exhaustive]
pub struct Profile<'a> {
    /// The display name.
    #[serde(default, borrow, deserialize_with = "de::opt_cow")]
    pub name: Option<Cow<'a, str>>,
    /// The username, for users who adopted one.
    #[serde(default, borrow, deserialize_with = "de::opt_cow")]
    pub username: Option<Cow<'a, str>>,
}

/// An error object as webhooks carry it (`value.errors[]`, `statuses[].errors[]`,
/// `messages[].errors[]`).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct WebhookError<'a> {
    /// Meta's error code (see [`crate::classify`]).
    pub code: i64,
    /// A short title.
    pub title: Option<Cow<'a, str>>,
    /// The message.
    pub message: Option<Cow<'a, str>>,
    /// `error_data.details` (or `error_data` itself when it is a bare string); a top-level
    /// `details` when `error_data` has none.
    pub details: Option<Cow<'a, str>>,
    /// A link to Meta's documentation.
    pub href: Option<Cow<'a, str>>,
}

#[derive(serde::Deserialize)]
struct RawWebhookError<'a> {
    #[serde(deserialize_with = "de::code")]
    code: i64,
    #[serde(default, borrow, deserialize_with = "de::opt_cow")]
    title: Option<Cow<'a, str>>,
    #[serde(default, borrow, deserialize_with = "de::opt_cow")]
    message: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    error_data: Option<ErrorData<'a>>,
    #[serde(default, borrow, deserialize_with = "de::opt_cow")]
    details: Option<Cow<'a, str>>,
    #[serde(default, borrow, deserialize_with = "de::opt_cow")]
    href: Option<Cow<'a, str>>,
}

impl<'de: 'a, 'a> Deserialize<'de> for WebhookError<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = RawWebhookError::deserialize(d)?;
        Ok(WebhookError {
            code: raw.code,
            title: raw.title,
            message: raw.message,
            // Some senders put `details` beside `code` instead of inside `error_data`.
            details: raw.error_data.and_then(|data| data.0).or(raw.details),
            href: raw.href,
        })
    }
}

/// `error_data`: `{ "details": "…" }`, or occasionally a bare string.
pub(crate) struct ErrorData<'a>(pub(crate) Option<Cow<'a, str>>);

impl<'de: 'a, 'a> Deserialize<'de> for ErrorData<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> serde::de::Visitor<'de> for V<'a> {
            type Value = ErrorData<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an error_data object or string")
            }
            fn visit_borrowed_str<E: serde::de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(ErrorData(Some(Cow::Borrowed(v))))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(ErrorData(Some(Cow::Owned(v.to_owned()))))
            }
            fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
                Ok(ErrorData(None))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut details = None;
                while let Some(key) = map.next_key::<Cow<'de, str>>()? {
                    if key == "details" && details.is_none() {
                        details = map.next_value::<Option<de::CowStr<'a>>>()?.map(|s| s.0);
                    } else {
                        map.next_value::<serde::de::IgnoredAny>()?;
                    }
                }
                Ok(ErrorData(details))
            }
        }
        d.deserialize_any(V(std::marker::PhantomData))
    }
}

/// An item's JSON exactly as Meta sent it, borrowed from the body.
///
/// Compared by its text. Its `Debug` output shows only the length, so logging an event
/// does not leak phone numbers or message bodies; use [`Raw::get`] to store it.
#[derive(Clone, Copy)]
pub struct Raw<'a>(&'a serde_json::value::RawValue);

impl<'a> Raw<'a> {
    /// The JSON text.
    pub fn get(&self) -> &'a str {
        self.0.get()
    }

    /// The underlying `serde_json` raw value.
    pub fn as_raw_value(&self) -> &'a serde_json::value::RawValue {
        self.0
    }
}

impl PartialEq for Raw<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.get() == other.get()
    }
}

impl Eq for Raw<'_> {}

impl fmt::Debug for Raw<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Raw(<{} bytes>)", self.get().len())
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Raw<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        <&'a serde_json::value::RawValue>::deserialize(d).map(Raw)
    }
}
