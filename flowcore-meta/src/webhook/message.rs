//! Inbound messages (`value.messages[]`).

use std::borrow::Cow;

use super::common::Raw;
use flowcore::Timestamp;
use serde::Deserialize;

use super::common::{Phone, WebhookError};
use super::de;

/// One message a user sent to the business.
///
/// The fields every message has, plus its [`Content`]. Identity survives usernames:
/// `from` may be absent when `from_user_id` (a BSUID) is present.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct Message<'a> {
    /// Meta's message id (`wamid.…`): the dedup key, and what replies and reactions point at.
    pub id: Cow<'a, str>,
    /// The sender's WhatsApp id (their number); absent for username-only users.
    pub from: Option<Phone<'a>>,
    /// The sender's business-scoped user id (BSUID).
    pub from_user_id: Option<Cow<'a, str>>,
    /// The sender's parent BSUID.
    pub from_parent_user_id: Option<Cow<'a, str>>,
    /// The group the message was sent in, for group messages.
    pub group_id: Option<Cow<'a, str>>,
    /// When the user sent it.
    pub timestamp: Timestamp,
    /// What the message replies to, or whether it was forwarded.
    pub context: Option<Context<'a>>,
    /// The ad or post the user came from (click-to-WhatsApp).
    pub referral: Option<Referral<'a>>,
    /// Errors Meta attached (on `unsupported` messages).
    pub errors: Vec<WebhookError<'a>>,
    /// The legacy identity-change object, raw.
    pub identity: Option<Raw<'a>>,
    /// What was sent.
    pub content: Content<'a>,
}

impl Message<'_> {
    /// The sender's key for a conversation: `from` (the number) when present, else the BSUID.
    pub fn sender_id(&self) -> Option<&str> {
        self.from.as_ref().map(Phone::as_str).or(self.from_user_id.as_deref())
    }
}

/// What a message carries, by its `type`.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum Content<'a> {
    /// `text`.
    Text {
        /// The text.
        body: Cow<'a, str>,
    },
    /// `image`.
    Image(Media<'a>),
    /// `video`.
    Video(Media<'a>),
    /// `audio` (see [`Media::voice`] for voice notes).
    Audio(Media<'a>),
    /// `document`.
    Document(Media<'a>),
    /// `sticker` (see [`Media::animated`]).
    Sticker(Media<'a>),
    /// `location`.
    Location(Location<'a>),
    /// `contacts`: shared contact cards.
    Contacts {
        /// The cards, typed.
        cards: Vec<SharedContact<'a>>,
        /// The `contacts` array as Meta sent it.
        raw: Raw<'a>,
    },
    /// `interactive`: a reply to one of our interactive messages.
    Interactive(Interactive<'a>),
    /// `button`: a template's quick-reply button.
    Button {
        /// The payload the template defined for the button.
        payload: Option<Cow<'a, str>>,
        /// The button's text.
        text: Option<Cow<'a, str>>,
    },
    /// `reaction`: an emoji reaction, or its removal.
    Reaction {
        /// The message reacted to.
        message_id: Cow<'a, str>,
        /// The emoji; `None` (or empty in the payload) means the reaction was removed.
        emoji: Option<Cow<'a, str>>,
    },
    /// `order`: a cart sent from a catalog.
    Order(Order<'a>),
    /// `system`: a number or identity change.
    System(System<'a>),
    /// `request_welcome`: the user opened the chat for the first time.
    RequestWelcome,
    /// `edit`: the user edited an earlier message.
    Edit {
        /// The edited message's id.
        original_message_id: Option<Cow<'a, str>>,
        /// The new message, raw.
        message: Option<Raw<'a>>,
    },
    /// `revoke`: the user deleted an earlier message.
    Revoke {
        /// The deleted message's id.
        original_message_id: Option<Cow<'a, str>>,
    },
    /// `unsupported` (or legacy `unknown`): a type Meta does not deliver (polls, …);
    /// see [`Message::errors`].
    Unsupported {
        /// `unsupported.type`, when Meta says.
        kind: Option<Cow<'a, str>>,
    },
    /// A message whose content this crate cannot read: a `type` it does not know yet, or a
    /// known `type` without its object (Meta has sent `interactive` messages with no
    /// `interactive`). The whole message is kept raw.
    Unknown {
        /// The `type`.
        kind: Cow<'a, str>,
        /// The message as Meta sent it.
        raw: Raw<'a>,
    },
}

impl Content<'_> {
    /// Meta's name for the content type (`"text"`, `"image"`, …; the raw `type` for
    /// [`Content::Unknown`]).
    pub fn kind(&self) -> &str {
        match self {
            Content::Text { .. } => "text",
            Content::Image(_) => "image",
            Content::Video(_) => "video",
            Content::Audio(_) => "audio",
            Content::Document(_) => "document",
            Content::Sticker(_) => "sticker",
            Content::Location(_) => "location",
            Content::Contacts { .. } => "contacts",
            Content::Interactive(_) => "interactive",
            Content::Button { .. } => "button",
            Content::Reaction { .. } => "reaction",
            Content::Order(_) => "order",
            Content::System(_) => "system",
            Content::RequestWelcome => "request_welcome",
            Content::Edit { .. } => "edit",
            Content::Revoke { .. } => "revoke",
            Content::Unsupported { .. } => "unsupported",
            Content::Unknown { kind, .. } => kind,
        }
    }
}

/// A media item a user sent.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[non_exhaustive]
pub struct Media<'a> {
    /// The media id (valid 7 days); fetch it with [`crate::MetaClient::media_info`].
    #[serde(borrow, deserialize_with = "de::cow")]
    pub id: Cow<'a, str>,
    /// The MIME type.
    #[serde(default, borrow, deserialize_with = "de::opt_cow")]
    pub mime_type: Option<Cow<'a, str>>,
    /// The base64 SHA-256 of the file.
    #[serde(default, borrow, deserialize_with = "de::opt_cow")]
    pub sha256: Option<Cow<'a, str>>,
    /// The caption.
    #[serde(default, borrow, deserialize_with = "de::opt_cow")]
    pub caption: Option<Cow<'a, str>>,
    /// The file name (documents).
    #[serde(default, borrow, deserialize_with = "de::opt_cow")]
    pub filename: Option<Cow<'a, str>>,
    /// Audio: `true` for a voice note.
    #[serde(default)]
    pub voice: Option<bool>,
    /// Sticker: `true` for an animated sticker.
    #[serde(default)]
    pub animated: Option<bool>,
    /// A short-lived download URL, when Meta includes one.
    #[serde(default, borrow, deserialize_with = "de::opt_cow")]
    pub url: Option<Cow<'a, str>>,
}

/// A shared location.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[non_exhaustive]
pub struct Location<'a> {
    /// Latitude in degrees.
    pub latitude: f64,
    /// Longitude in degrees.
    pub longitude: f64,
    /// The place's name (a chosen place).
    #[serde(default, borrow, deserialize_with = "de::opt_cow")]
    pub name: Option<Cow<'a, str>>,
    /// The place's address (a chosen place).
    #[serde(default, borrow, deserialize_with = "de::opt_cow")]
    pub address: Option<Cow<'a, str>>,
    /// A map URL.
    #[serde(default, borrow, deserialize_with = "de::opt_cow")]
    pub url: Option<Cow<'a, str>>,
}

/// A contact card a user shared.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[non_exhaustive]
pub struct SharedContact<'a> {
    /// The name.
    #[serde(borrow)]
    pub name: ContactName<'a>,
    /// Phone numbers.
    #[serde(default, borrow, deserialize_with = "de::null_default")]
    pub phones: Vec<ContactPhone<'a>>,
    /// E-mail addresses.
    #[serde(default, borrow, deserialize_with = "de::null_default")]
    pub emails: Vec<ContactEmail<'a>>,
    /// Postal addresses.
    #[serde(default, borrow, deserialize_with = "de::null_default")]
    pub addresses: Vec<ContactAddress<'a>>,
    /// Web sites.
    #[serde(default, borrow, deserialize_with = "de::null_default")]
    pub urls: Vec<ContactUrl<'a>>,
    /// Organisation.
    #[serde(default, borrow)]
    pub org: Option<ContactOrg<'a>>,
    /// Birthday, `YYYY-MM-DD`.
    #[serde(default, borrow, deserialize_with = "de::opt_cow")]
    pub birthday: Option<Cow<'a, str>>,
}

/// A shared contact's name.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[non_exhaustive]
pub struct ContactName<'a> {
    /// The full name as displayed.
    #[serde(borrow, deserialize_with = "de::cow")]
    pub formatted_name: Cow<'a, str>,
    /// First name.
    #[serde(default, borrow, deserialize_with = "de::opt_cow")]
    pub first_name: Option<Cow<'a, str>>,
    /// Last name.
    #[serde(default, borrow, deserialize_with = "de::opt_cow")]
    pub last_name: Option<Cow<'a, str>>,
    /// Middle name.
    #[serde(default, borrow, deserialize_with = "de::opt_cow")]
    pub middle_name: Option<Cow<'a, str>>,
    /// Name prefix.
    #[serde(default, borrow, deserialize_with = "de::opt_cow")]
    pub prefix: Option<Cow<'a, str>>,
    /// Name suffix.
    #[serde(default, borrow, deserialize_with = "de::opt_cow")]
    pub suffix: Option<Cow<'a, str>>,
}

/// A shared contact's phone.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[non_exhaustive]
pub struct ContactPhone<'a> {
    /// The number as written on the card.
    #[serde(default, borrow)]
    pub phone: Option<Phone<'a>>,
    /// Its WhatsApp id, when it has one.
    #[serde(default, borrow)]
    pub wa_id: Option<Phone<'a>>,
    /// `CELL`, `HOME`, `WORK`, …
    #[serde(default, borrow, rename = "type", deserialize_with = "de::opt_cow")]
    pub kind: Option<Cow<'a, str>>,
}

/// A shared contact's e-mail.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[non_exhaustive]
pub struct ContactEmail<'a> {
    /// The address.
    #[serde(default, borrow, deserialize_with = "de::opt_cow")]
    pub email: Option<Cow<'a, str>>,
    /// `HOME`, `WORK`, …
    #[serde(default, borrow, rename = "type", deserialize_with = "de::opt_cow")]
    pub kind: Option<Cow<'a, str>>,
}

/// A shared contact's postal address.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[non_exhaustive]
pub struct ContactAddress<'a> {
    /// Street.
    #[serde(default, borrow, deserialize_with = "de::opt_cow")]
    pub street: Option<Cow<'a, str>>,
    /// City.
    #[serde(default, borrow, deserialize_with = "de::opt_cow")]
    pub city: Option<Cow<'a, str>>,
    /// State.
    #[serde(default, borrow, deserialize_with = "de::opt_cow")]
    pub state: Option<Cow<'a, str>>,
    /// Postal code.
    #[serde(default, borrow, deserialize_with = "de::opt_cow")]
    pub zip: Option<Cow<'a, str>>,
    /// Country name.
    #[serde(default, borrow, deserialize_with = "de::opt_cow")]
    pub country: Option<Cow<'a, str>>,
    /// ISO country code.
    #[serde(default, borrow, deserialize_with = "de::opt_cow")]
    pub country_code: Option<Cow<'a, str>>,
    /// `HOME`, `WORK`, …
    #[serde(default, borrow, rename = "type", deserialize_with = "de::opt_cow")]
    pub kind: Option<Cow<'a, str>>,
}

/// A shared contact's web site.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[non_exhaustive]
pub struct ContactUrl<'a> {
    /// The URL.
    #[serde(default, borrow, deserialize_with = "de::opt_cow")]
    pub url: Option<Cow<'a, str>>,
    /// `HOME`, `WORK`, …
    #[serde(default, borrow, rename = "type", deserialize_with = "de::opt_cow")]
    pub kind: Option<Cow<'a, str>>,
}

/// A shared contact's organisation.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[non_exhaustive]
pub struct ContactOrg<'a> {
    /// Company.
    #[serde(default, borrow, deserialize_with = "de::opt_cow")]
    pub company: Option<Cow<'a, str>>,
    /// Department.
    #[serde(default, borrow, deserialize_with = "de::opt_cow")]
    pub department: Option<Cow<'a, str>>,
    /// Job title.
    #[serde(default, borrow, deserialize_with = "de::opt_cow")]
    pub title: Option<Cow<'a, str>>,
}

/// A reply to one of our interactive messages.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Interactive<'a> {
    /// A reply button was tapped.
    ButtonReply {
        /// The button's id.
        id: Cow<'a, str>,
        /// The button's title.
        title: Cow<'a, str>,
    },
    /// A list row was chosen.
    ListReply {
        /// The row's id.
        id: Cow<'a, str>,
        /// The row's title.
        title: Cow<'a, str>,
        /// The row's description.
        description: Option<Cow<'a, str>>,
    },
    /// A WhatsApp Flow (or address message) was submitted.
    NfmReply {
        /// `flow` or `address_message`.
        name: Option<Cow<'a, str>>,
        /// The body text.
        body: Option<Cow<'a, str>>,
        /// The answers: a JSON document inside a string.
        response_json: Cow<'a, str>,
    },
    /// An interactive reply type this crate does not know.
    Other {
        /// `interactive.type`.
        kind: Cow<'a, str>,
        /// The `interactive` object.
        raw: Raw<'a>,
    },
}

/// A cart sent from a catalog.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[non_exhaustive]
pub struct Order<'a> {
    /// The catalog.
    #[serde(default, borrow, deserialize_with = "de::opt_cow")]
    pub catalog_id: Option<Cow<'a, str>>,
    /// A note from the user.
    #[serde(default, borrow, deserialize_with = "de::opt_cow")]
    pub text: Option<Cow<'a, str>>,
    /// The items.
    #[serde(default, borrow, deserialize_with = "de::null_default")]
    pub product_items: Vec<ProductItem<'a>>,
}

/// One item of an order.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[non_exhaustive]
pub struct ProductItem<'a> {
    /// The product's id in the catalog.
    #[serde(borrow, deserialize_with = "de::cow")]
    pub product_retailer_id: Cow<'a, str>,
    /// How many (a numeric string is read too).
    #[serde(deserialize_with = "de::number")]
    pub quantity: f64,
    /// Unit price (a numeric string is read too).
    #[serde(deserialize_with = "de::number")]
    pub item_price: f64,
    /// ISO 4217 currency.
    #[serde(borrow, deserialize_with = "de::cow")]
    pub currency: Cow<'a, str>,
}

/// A system notice (number or identity change).
///
/// `Debug` shows the length of `body` only: Meta writes phone numbers into it.
///
/// ```
/// let body = br#"{"object":"whatsapp_business_account","entry":[{"id":"1","changes":[{"field":"messages",
///   "value":{"metadata":{"phone_number_id":"106"},"messages":[{"from":"12025550101","id":"wamid.S",
///   "timestamp":"1780300800","type":"system","system":{"body":"Ana changed her number",
///   "new_wa_id":"12025550199","customer":"12025550101","type":"user_changed_number"}}]}}]}]}"#;
/// let webhook = flowcore_meta::parse(body).unwrap();
/// let Some(flowcore_meta::Event::Message(m)) = webhook.events().next() else { panic!() };
/// let flowcore_meta::webhook::Content::System(system) = &m.message.content else { panic!() };
/// assert_eq!(system.wa_id.as_ref().unwrap().as_str(), "12025550199");
/// assert_eq!(system.customer.as_ref().unwrap().as_str(), "12025550101");
/// ```
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct System<'a> {
    /// A human-readable description.
    pub body: Option<Cow<'a, str>>,
    /// What changed.
    pub kind: SystemKind<'a>,
    /// The user's new WhatsApp id (`wa_id`, or the legacy `new_wa_id`).
    pub wa_id: Option<Phone<'a>>,
    /// The user the notice is about, in legacy payloads (`customer`: their WhatsApp id).
    pub customer: Option<Phone<'a>>,
    /// The user's new BSUID.
    pub user_id: Option<Cow<'a, str>>,
    /// The user's new parent BSUID.
    pub parent_user_id: Option<Cow<'a, str>>,
    /// The user's BSUID before the change (`user_changed_user_id`).
    pub previous_user_id: Option<Cow<'a, str>>,
    /// The user's parent BSUID before the change (`user_changed_user_id`).
    pub previous_parent_user_id: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct WireSystem<'a> {
    #[serde(default, borrow, deserialize_with = "de::opt_cow")]
    body: Option<Cow<'a, str>>,
    #[serde(rename = "type", borrow, default)]
    kind: SystemKind<'a>,
    #[serde(default, borrow)]
    wa_id: Option<Phone<'a>>,
    #[serde(default, borrow)]
    new_wa_id: Option<Phone<'a>>,
    #[serde(default, borrow)]
    customer: Option<Phone<'a>>,
    #[serde(default, borrow, deserialize_with = "de::opt_cow")]
    user_id: Option<Cow<'a, str>>,
    #[serde(default, borrow, deserialize_with = "de::opt_cow")]
    parent_user_id: Option<Cow<'a, str>>,
    #[serde(default, borrow, deserialize_with = "de::opt_cow")]
    previous_user_id: Option<Cow<'a, str>>,
    #[serde(default, borrow, deserialize_with = "de::opt_cow")]
    previous_parent_user_id: Option<Cow<'a, str>>,
}

impl<'de: 'a, 'a> Deserialize<'de> for System<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let wire = WireSystem::deserialize(d)?;
        Ok(System {
            body: wire.body,
            kind: wire.kind,
            // Older payloads name the new number `new_wa_id`; both mean the same.
            wa_id: wire.wa_id.or(wire.new_wa_id),
            customer: wire.customer,
            user_id: wire.user_id,
            parent_user_id: wire.parent_user_id,
            previous_user_id: wire.previous_user_id,
            previous_parent_user_id: wire.previous_parent_user_id,
        })
    }
}

impl std::fmt::Debug for System<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("System")
            .field("body", &self.body.as_ref().map(|b| format!("<{} chars>", b.chars().count())))
            .field("kind", &self.kind)
            .field("wa_id", &self.wa_id)
            .field("customer", &self.customer)
            .field("user_id", &self.user_id)
            .field("parent_user_id", &self.parent_user_id)
            .field("previous_user_id", &self.previous_user_id)
            .field("previous_parent_user_id", &self.previous_parent_user_id)
            .finish()
    }
}

/// The kind of a system notice; unknown kinds are kept as strings.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum SystemKind<'a> {
    /// `user_changed_number`.
    UserChangedNumber,
    /// `customer_changed_number`.
    CustomerChangedNumber,
    /// `user_changed_user_id`.
    UserChangedUserId,
    /// `customer_identity_changed`.
    CustomerIdentityChanged,
    /// Any other kind (or none), as Meta wrote it.
    #[default]
    Unspecified,
    /// A kind this crate does not know.
    Other(Cow<'a, str>),
}

impl<'de: 'a, 'a> Deserialize<'de> for SystemKind<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let value = de::cow(d)?;
        Ok(match &*value {
            "user_changed_number" => SystemKind::UserChangedNumber,
            "customer_changed_number" => SystemKind::CustomerChangedNumber,
            "user_changed_user_id" => SystemKind::UserChangedUserId,
            "customer_identity_changed" => SystemKind::CustomerIdentityChanged,
            _ => SystemKind::Other(value),
        })
    }
}

/// `context`: what a message refers to.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[non_exhaustive]
pub struct Context<'a> {
    /// The sender of the quoted message (our business number, for replies to us).
    #[serde(default, borrow)]
    pub from: Option<Phone<'a>>,
    /// The quoted message's id.
    #[serde(default, borrow, deserialize_with = "de::opt_cow")]
    pub id: Option<Cow<'a, str>>,
    /// The message was forwarded.
    #[serde(default)]
    pub forwarded: bool,
    /// The message was forwarded more than five times.
    #[serde(default)]
    pub frequently_forwarded: bool,
    /// The product the user asked about.
    #[serde(default, borrow)]
    pub referred_product: Option<ReferredProduct<'a>>,
}

/// `context.referred_product`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[non_exhaustive]
pub struct ReferredProduct<'a> {
    /// The catalog.
    #[serde(default, borrow, deserialize_with = "de::opt_cow")]
    pub catalog_id: Option<Cow<'a, str>>,
    /// The product.
    #[serde(default, borrow, deserialize_with = "de::opt_cow")]
    pub product_retailer_id: Option<Cow<'a, str>>,
}

/// `referral`: the click-to-WhatsApp ad or post the user came from.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[non_exhaustive]
pub struct Referral<'a> {
    /// The ad's or post's URL.
    #[serde(default, borrow, deserialize_with = "de::opt_cow")]
    pub source_url: Option<Cow<'a, str>>,
    /// The ad's or post's id.
    #[serde(default, borrow, deserialize_with = "de::opt_cow")]
    pub source_id: Option<Cow<'a, str>>,
    /// `ad` or `post`.
    #[serde(default, borrow, deserialize_with = "de::opt_cow")]
    pub source_type: Option<Cow<'a, str>>,
    /// The headline.
    #[serde(default, borrow, deserialize_with = "de::opt_cow")]
    pub headline: Option<Cow<'a, str>>,
    /// The body.
    #[serde(default, borrow, deserialize_with = "de::opt_cow")]
    pub body: Option<Cow<'a, str>>,
    /// `image` or `video`.
    #[serde(default, borrow, deserialize_with = "de::opt_cow")]
    pub media_type: Option<Cow<'a, str>>,
    /// The image's URL.
    #[serde(default, borrow, deserialize_with = "de::opt_cow")]
    pub image_url: Option<Cow<'a, str>>,
    /// The video's URL.
    #[serde(default, borrow, deserialize_with = "de::opt_cow")]
    pub video_url: Option<Cow<'a, str>>,
    /// The video's thumbnail.
    #[serde(default, borrow, deserialize_with = "de::opt_cow")]
    pub thumbnail_url: Option<Cow<'a, str>>,
    /// The click id for conversion tracking.
    #[serde(default, borrow, deserialize_with = "de::opt_cow")]
    pub ctwa_clid: Option<Cow<'a, str>>,
    /// The ad's prefilled welcome message, `welcome_message.text`.
    #[serde(default, borrow, deserialize_with = "welcome_text")]
    pub welcome_message: Option<Cow<'a, str>>,
}

fn welcome_text<'de: 'a, 'a, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Cow<'a, str>>, D::Error> {
    #[derive(Deserialize)]
    struct Welcome<'a> {
        #[serde(default, borrow)]
        text: Option<de::CowStr<'a>>,
    }
    Ok(Option::<Welcome<'a>>::deserialize(d)?.and_then(|w| w.text).map(|t| t.0))
}

// ---- the wire shape ---------------------------------------------------------------

#[derive(Deserialize)]
struct WireMessage<'a> {
    #[serde(borrow, deserialize_with = "de::cow")]
    id: Cow<'a, str>,
    #[serde(default, borrow)]
    from: Option<Phone<'a>>,
    #[serde(default, borrow, deserialize_with = "de::opt_cow")]
    from_user_id: Option<Cow<'a, str>>,
    #[serde(default, borrow, deserialize_with = "de::opt_cow")]
    from_parent_user_id: Option<Cow<'a, str>>,
    #[serde(default, borrow, deserialize_with = "de::opt_cow")]
    group_id: Option<Cow<'a, str>>,
    #[serde(deserialize_with = "de::timestamp")]
    timestamp: Timestamp,
    #[serde(rename = "type", borrow, deserialize_with = "de::cow")]
    kind: Cow<'a, str>,
    #[serde(default, borrow)]
    context: Option<Context<'a>>,
    #[serde(default, borrow)]
    referral: Option<Referral<'a>>,
    #[serde(default, borrow, deserialize_with = "de::null_default")]
    errors: Vec<WebhookError<'a>>,
    #[serde(default, borrow)]
    identity: Option<Raw<'a>>,

    #[serde(default, borrow)]
    text: Option<WireText<'a>>,
    #[serde(default, borrow)]
    image: Option<Media<'a>>,
    #[serde(default, borrow)]
    video: Option<Media<'a>>,
    #[serde(default, borrow)]
    audio: Option<Media<'a>>,
    #[serde(default, borrow)]
    document: Option<Media<'a>>,
    #[serde(default, borrow)]
    sticker: Option<Media<'a>>,
    #[serde(default, borrow)]
    location: Option<Location<'a>>,
    #[serde(default, borrow)]
    contacts: Option<Raw<'a>>,
    #[serde(default, borrow)]
    interactive: Option<Raw<'a>>,
    #[serde(default, borrow)]
    button: Option<WireButton<'a>>,
    #[serde(default, borrow)]
    reaction: Option<WireReaction<'a>>,
    #[serde(default, borrow)]
    order: Option<Order<'a>>,
    #[serde(default, borrow)]
    system: Option<System<'a>>,
    #[serde(default, borrow)]
    edit: Option<WireEdit<'a>>,
    #[serde(default, borrow)]
    revoke: Option<WireEdit<'a>>,
    #[serde(default, borrow)]
    unsupported: Option<WireUnsupported<'a>>,
}

#[derive(Deserialize)]
struct WireText<'a> {
    #[serde(borrow, deserialize_with = "de::cow")]
    body: Cow<'a, str>,
}

#[derive(Deserialize)]
struct WireButton<'a> {
    #[serde(default, borrow, deserialize_with = "de::opt_cow")]
    payload: Option<Cow<'a, str>>,
    #[serde(default, borrow, deserialize_with = "de::opt_cow")]
    text: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct WireReaction<'a> {
    #[serde(borrow, deserialize_with = "de::cow")]
    message_id: Cow<'a, str>,
    #[serde(default, borrow, deserialize_with = "de::opt_cow")]
    emoji: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct WireEdit<'a> {
    #[serde(default, borrow, deserialize_with = "de::opt_cow")]
    original_message_id: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    message: Option<Raw<'a>>,
}

#[derive(Deserialize)]
struct WireUnsupported<'a> {
    #[serde(default, rename = "type", borrow, deserialize_with = "de::opt_cow")]
    kind: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct WireInteractive<'a> {
    #[serde(rename = "type", borrow, deserialize_with = "de::cow")]
    kind: Cow<'a, str>,
    #[serde(default, borrow)]
    button_reply: Option<WireReply<'a>>,
    #[serde(default, borrow)]
    list_reply: Option<WireReply<'a>>,
    #[serde(default, borrow)]
    nfm_reply: Option<WireNfm<'a>>,
}

#[derive(Deserialize)]
struct WireReply<'a> {
    #[serde(borrow, deserialize_with = "de::cow")]
    id: Cow<'a, str>,
    #[serde(borrow, deserialize_with = "de::cow")]
    title: Cow<'a, str>,
    #[serde(default, borrow, deserialize_with = "de::opt_cow")]
    description: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct WireNfm<'a> {
    #[serde(default, borrow, deserialize_with = "de::opt_cow")]
    name: Option<Cow<'a, str>>,
    #[serde(default, borrow, deserialize_with = "de::opt_cow")]
    body: Option<Cow<'a, str>>,
    #[serde(borrow, deserialize_with = "de::cow")]
    response_json: Cow<'a, str>,
}

/// Parses one `messages[]` item from its raw JSON.
///
/// A message whose type's object is missing is still a message ([`Content::Unknown`]): its
/// id, sender and context are readable, so it keeps its dedup key and reaches the
/// conversation instead of only the log.
pub(crate) fn parse_message(raw: Raw<'_>) -> Result<Message<'_>, String> {
    let wire: WireMessage<'_> = serde_json::from_str(raw.get()).map_err(|e| e.to_string())?;
    let content = match &*wire.kind {
        "text" => wire.text.map(|text| Content::Text { body: text.body }),
        "image" => wire.image.map(Content::Image),
        "video" => wire.video.map(Content::Video),
        "audio" => wire.audio.map(Content::Audio),
        "document" => wire.document.map(Content::Document),
        "sticker" => wire.sticker.map(Content::Sticker),
        "location" => wire.location.map(Content::Location),
        "contacts" => match wire.contacts {
            Some(raw) => {
                let cards = serde_json::from_str(raw.get()).map_err(|e| format!("contacts: {e}"))?;
                Some(Content::Contacts { cards, raw })
            }
            None => None,
        },
        "interactive" => wire.interactive.map(parse_interactive).transpose()?.map(Content::Interactive),
        "button" => wire.button.map(|button| Content::Button { payload: button.payload, text: button.text }),
        "reaction" => wire.reaction.map(|reaction| Content::Reaction {
            message_id: reaction.message_id,
            emoji: reaction.emoji.filter(|e| !e.is_empty()),
        }),
        "order" => wire.order.map(Content::Order),
        "system" => wire.system.map(Content::System),
        "request_welcome" => Some(Content::RequestWelcome),
        "edit" => {
            wire.edit.map(|edit| Content::Edit { original_message_id: edit.original_message_id, message: edit.message })
        }
        "revoke" => wire.revoke.map(|revoke| Content::Revoke { original_message_id: revoke.original_message_id }),
        "unsupported" | "unknown" => Some(Content::Unsupported { kind: wire.unsupported.and_then(|u| u.kind) }),
        _ => None,
    }
    .unwrap_or(Content::Unknown { kind: wire.kind, raw });
    Ok(Message {
        id: wire.id,
        from: wire.from,
        from_user_id: wire.from_user_id,
        from_parent_user_id: wire.from_parent_user_id,
        group_id: wire.group_id,
        timestamp: wire.timestamp,
        context: wire.context,
        referral: wire.referral,
        errors: wire.errors,
        identity: wire.identity,
        content,
    })
}

fn parse_interactive(raw: Raw<'_>) -> Result<Interactive<'_>, String> {
    let wire: WireInteractive<'_> = serde_json::from_str(raw.get()).map_err(|e| format!("interactive: {e}"))?;
    let missing = |kind: &str| format!("interactive of type {kind:?} has no {kind:?} object");
    Ok(match &*wire.kind {
        "button_reply" => {
            let reply = wire.button_reply.ok_or_else(|| missing("button_reply"))?;
            Interactive::ButtonReply { id: reply.id, title: reply.title }
        }
        "list_reply" => {
            let reply = wire.list_reply.ok_or_else(|| missing("list_reply"))?;
            Interactive::ListReply { id: reply.id, title: reply.title, description: reply.description }
        }
        "nfm_reply" => {
            let reply = wire.nfm_reply.ok_or_else(|| missing("nfm_reply"))?;
            Interactive::NfmReply { name: reply.name, body: reply.body, response_json: reply.response_json }
        }
        _ => Interactive::Other { kind: wire.kind, raw },
    })
}
