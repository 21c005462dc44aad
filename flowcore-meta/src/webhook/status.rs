//! Delivery statuses of messages we sent (`value.statuses[]`).

use std::borrow::Cow;

use flowcore::Timestamp;
use serde::Deserialize;

use super::common::{Phone, WebhookError};
use super::de;

/// What happened to a message we sent.
///
/// Statuses can arrive out of order and `delivered` may be skipped when a message is read
/// at once: merge them with [`StatusKind::rank`], never moving backwards.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[non_exhaustive]
pub struct Status<'a> {
    /// Our message's id (`wamid.…`), as returned when we sent it.
    #[serde(borrow, deserialize_with = "de::cow")]
    pub id: Cow<'a, str>,
    /// The new status.
    #[serde(borrow)]
    pub status: StatusKind<'a>,
    /// When it happened.
    #[serde(deserialize_with = "de::timestamp")]
    pub timestamp: Timestamp,
    /// The recipient's number (or group id).
    #[serde(default, borrow)]
    pub recipient_id: Option<Phone<'a>>,
    /// `individual` or `group`.
    #[serde(default, borrow, deserialize_with = "de::opt_cow")]
    pub recipient_type: Option<Cow<'a, str>>,
    /// The recipient's BSUID.
    #[serde(default, borrow, deserialize_with = "de::opt_cow")]
    pub recipient_user_id: Option<Cow<'a, str>>,
    /// The recipient's parent BSUID.
    #[serde(default, borrow, deserialize_with = "de::opt_cow")]
    pub parent_recipient_user_id: Option<Cow<'a, str>>,
    /// The group participant the status is about (their number), for group messages.
    #[serde(default, borrow, deserialize_with = "de::opt_cow")]
    pub recipient_participant_id: Option<Cow<'a, str>>,
    /// The group participant's BSUID.
    #[serde(default, borrow, deserialize_with = "de::opt_cow")]
    pub recipient_participant_user_id: Option<Cow<'a, str>>,
    /// The group participant's parent BSUID.
    #[serde(default, borrow, deserialize_with = "de::opt_cow")]
    pub recipient_participant_parent_user_id: Option<Cow<'a, str>>,
    /// What we sent as `biz_opaque_callback_data`, echoed back: use it to reconcile the outbox.
    #[serde(default, borrow, deserialize_with = "de::opt_cow")]
    pub biz_opaque_callback_data: Option<Cow<'a, str>>,
    /// The conversation the message was billed in (older pricing).
    #[serde(default, borrow)]
    pub conversation: Option<Conversation<'a>>,
    /// Pricing information.
    #[serde(default, borrow)]
    pub pricing: Option<Pricing<'a>>,
    /// Why the message failed (`failed`).
    #[serde(default, borrow, deserialize_with = "de::null_default")]
    pub errors: Vec<WebhookError<'a>>,
}

impl Status<'_> {
    /// The recipient's key: the number when present, else the BSUID, else `""`.
    pub fn recipient(&self) -> &str {
        self.recipient_id.as_ref().map(Phone::as_str).or(self.recipient_user_id.as_deref()).unwrap_or("")
    }

    /// The group participant the status is about: their number when present, else their
    /// BSUID; `None` for statuses of one-to-one chats.
    ///
    /// In a group each participant reads a message separately, so the participant is part of
    /// a status's [`DedupKey`](crate::DedupKey).
    pub fn participant(&self) -> Option<&str> {
        self.recipient_participant_id.as_deref().or(self.recipient_participant_user_id.as_deref())
    }
}

/// A status value; unknown ones are kept as strings.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum StatusKind<'a> {
    /// Meta accepted the message and sent it.
    Sent,
    /// It reached the user's device.
    Delivered,
    /// The user read it (implies delivered).
    Read,
    /// The user played a voice message for the first time.
    Played,
    /// It could not be delivered; see [`Status::errors`].
    Failed,
    /// A status this crate does not know, as Meta wrote it.
    Other(Cow<'a, str>),
}

impl StatusKind<'_> {
    /// Meta's name for the status.
    pub fn as_str(&self) -> &str {
        match self {
            StatusKind::Sent => "sent",
            StatusKind::Delivered => "delivered",
            StatusKind::Read => "read",
            StatusKind::Played => "played",
            StatusKind::Failed => "failed",
            StatusKind::Other(other) => other,
        }
    }

    /// Progress order for monotonic merging: sent 1 < delivered 2 < read 3 < played 4;
    /// failed is terminal (5); unknown statuses 0 (never replace a known one).
    ///
    /// ```
    /// use flowcore_meta::webhook::StatusKind;
    /// assert!(StatusKind::Read.rank() > StatusKind::Delivered.rank());
    /// ```
    pub fn rank(&self) -> u8 {
        match self {
            StatusKind::Sent => 1,
            StatusKind::Delivered => 2,
            StatusKind::Read => 3,
            StatusKind::Played => 4,
            StatusKind::Failed => 5,
            StatusKind::Other(_) => 0,
        }
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for StatusKind<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let value = de::cow(d)?;
        Ok(match &*value {
            "sent" => StatusKind::Sent,
            "delivered" => StatusKind::Delivered,
            "read" => StatusKind::Read,
            "played" => StatusKind::Played,
            "failed" => StatusKind::Failed,
            _ => StatusKind::Other(value),
        })
    }
}

/// `statuses[].conversation`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[non_exhaustive]
pub struct Conversation<'a> {
    /// The conversation id.
    #[serde(default, borrow, deserialize_with = "de::opt_cow")]
    pub id: Option<Cow<'a, str>>,
    /// When the conversation window closes.
    #[serde(default, deserialize_with = "de::opt_timestamp")]
    pub expiration_timestamp: Option<Timestamp>,
    /// `origin.type`: `service`, `utility`, `marketing`, …
    #[serde(default, borrow, deserialize_with = "origin_type")]
    pub origin: Option<Cow<'a, str>>,
}

fn origin_type<'de: 'a, 'a, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Cow<'a, str>>, D::Error> {
    #[derive(Deserialize)]
    struct Origin<'a> {
        #[serde(default, rename = "type", borrow)]
        kind: Option<de::CowStr<'a>>,
    }
    Ok(Option::<Origin<'a>>::deserialize(d)?.and_then(|o| o.kind).map(|k| k.0))
}

/// `statuses[].pricing`. Strings are kept as Meta wrote them (categories change often).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[non_exhaustive]
pub struct Pricing<'a> {
    /// Deprecated billable flag.
    #[serde(default)]
    pub billable: Option<bool>,
    /// `PMP` (per-message pricing) or `CBP` (conversation-based, before 2025-07-01).
    #[serde(default, borrow, deserialize_with = "de::opt_cow")]
    pub pricing_model: Option<Cow<'a, str>>,
    /// `regular`, `free_customer_service`, `free_entry_point`, …
    #[serde(default, rename = "type", borrow, deserialize_with = "de::opt_cow")]
    pub kind: Option<Cow<'a, str>>,
    /// `service`, `utility`, `marketing`, `authentication`, …
    #[serde(default, borrow, deserialize_with = "de::opt_cow")]
    pub category: Option<Cow<'a, str>>,
}
