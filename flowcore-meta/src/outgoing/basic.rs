//! Text, media, location, contacts, reactions and read receipts.

use flowcore::MediaKind;
use serde_json::{json, Map, Value};

use super::limits::{self, BuildError, CAPTION_MAX, CONTACTS_MAX, TEXT_BODY_MAX};
use super::Recipient;

/// A text message (≤ 4096 characters).
///
/// ```
/// use flowcore_meta::outgoing::Text;
/// let text = Text::new("see https://example.com")?.preview_url(true);
/// assert_eq!(text.body(), "see https://example.com");
/// assert!(Text::new("").is_err());
/// # Ok::<(), flowcore_meta::outgoing::BuildError>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Text {
    body: String,
    preview_url: bool,
}

impl Text {
    /// A text; non-blank, at most [`TEXT_BODY_MAX`] characters.
    pub fn new(body: impl Into<String>) -> Result<Self, BuildError> {
        let body = body.into();
        limits::required("text body", &body, TEXT_BODY_MAX)?;
        Ok(Text { body, preview_url: false })
    }

    /// Whether WhatsApp should render a preview of the first URL.
    pub fn preview_url(mut self, preview: bool) -> Self {
        self.preview_url = preview;
        self
    }

    /// The text.
    pub fn body(&self) -> &str {
        &self.body
    }

    pub(crate) fn to_json(&self) -> Value {
        let mut text = json!({ "body": self.body });
        if self.preview_url {
            text["preview_url"] = json!(true);
        }
        text
    }
}

/// Where Meta gets a media item: an uploaded media id, or a public link.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum MediaSource {
    /// A media id from [`crate::MetaClient::upload_media`] (valid 30 days).
    Id(String),
    /// An `http(s)` URL Meta fetches.
    Link(String),
}

impl MediaSource {
    /// An uploaded media id.
    pub fn id(id: impl Into<String>) -> Result<Self, BuildError> {
        let id = id.into();
        limits::id("media id", &id, 256)?;
        Ok(MediaSource::Id(id))
    }

    /// A public `http(s)` link.
    pub fn link(url: impl Into<String>) -> Result<Self, BuildError> {
        let url = url.into();
        limits::link("media link", &url)?;
        Ok(MediaSource::Link(url))
    }

    pub(crate) fn to_json(&self) -> Map<String, Value> {
        let mut map = Map::new();
        match self {
            MediaSource::Id(id) => map.insert("id".into(), json!(id)),
            MediaSource::Link(link) => map.insert("link".into(), json!(link)),
        };
        map
    }
}

/// An image, video, audio, document or sticker.
///
/// Captions are for images, videos and documents (≤ 1024 characters); file names for
/// documents only.
///
/// ```
/// use flowcore_meta::outgoing::{MediaMessage, MediaSource};
/// let doc = MediaMessage::document(MediaSource::id("1450000000000003")?)
///     .caption("Nota fiscal")?
///     .filename("nota.pdf")?;
/// assert!(MediaMessage::audio(MediaSource::id("1")?).caption("no").is_err());
/// # Ok::<(), flowcore_meta::outgoing::BuildError>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MediaMessage {
    kind: MediaKind,
    source: MediaSource,
    caption: Option<String>,
    filename: Option<String>,
}

impl MediaMessage {
    /// A media message of any kind.
    pub fn new(kind: MediaKind, source: MediaSource) -> Self {
        MediaMessage { kind, source, caption: None, filename: None }
    }

    /// An image.
    pub fn image(source: MediaSource) -> Self {
        Self::new(MediaKind::Image, source)
    }

    /// A video.
    pub fn video(source: MediaSource) -> Self {
        Self::new(MediaKind::Video, source)
    }

    /// An audio file.
    pub fn audio(source: MediaSource) -> Self {
        Self::new(MediaKind::Audio, source)
    }

    /// A document.
    pub fn document(source: MediaSource) -> Self {
        Self::new(MediaKind::Document, source)
    }

    /// A sticker (WebP).
    pub fn sticker(source: MediaSource) -> Self {
        Self::new(MediaKind::Sticker, source)
    }

    /// Adds a caption (images, videos, documents; ≤ 1024 characters).
    pub fn caption(mut self, caption: impl Into<String>) -> Result<Self, BuildError> {
        let caption = caption.into();
        if matches!(self.kind, MediaKind::Audio | MediaKind::Sticker) {
            return Err(BuildError::Invalid { field: "caption".into(), reason: "audio and stickers have no caption" });
        }
        limits::required("caption", &caption, CAPTION_MAX)?;
        self.caption = Some(caption);
        Ok(self)
    }

    /// Adds a file name (documents only; ≤ 240 characters).
    pub fn filename(mut self, filename: impl Into<String>) -> Result<Self, BuildError> {
        let filename = filename.into();
        if self.kind != MediaKind::Document {
            return Err(BuildError::Invalid { field: "filename".into(), reason: "only documents have a file name" });
        }
        limits::required("filename", &filename, 240)?;
        self.filename = Some(filename);
        Ok(self)
    }

    /// The kind of media.
    pub fn kind(&self) -> MediaKind {
        self.kind
    }

    pub(crate) fn to_json(&self) -> Value {
        let mut map = self.source.to_json();
        if let Some(caption) = &self.caption {
            map.insert("caption".into(), json!(caption));
        }
        if let Some(filename) = &self.filename {
            map.insert("filename".into(), json!(filename));
        }
        Value::Object(map)
    }
}

/// A location pin.
///
/// ```
/// use flowcore_meta::outgoing::LocationMessage;
/// let pin = LocationMessage::new(-23.56, -46.65)?.name("Loja Centro")?.address("Av. Exemplo, 1000")?;
/// assert!(LocationMessage::new(91.0, 0.0).is_err());
/// # Ok::<(), flowcore_meta::outgoing::BuildError>(())
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct LocationMessage {
    latitude: f64,
    longitude: f64,
    name: Option<String>,
    address: Option<String>,
}

impl LocationMessage {
    /// A pin at `latitude` (−90…90) and `longitude` (−180…180).
    pub fn new(latitude: f64, longitude: f64) -> Result<Self, BuildError> {
        if !(-90.0..=90.0).contains(&latitude) {
            return Err(BuildError::Invalid { field: "latitude".into(), reason: "must be between -90 and 90" });
        }
        if !(-180.0..=180.0).contains(&longitude) {
            return Err(BuildError::Invalid { field: "longitude".into(), reason: "must be between -180 and 180" });
        }
        Ok(LocationMessage { latitude, longitude, name: None, address: None })
    }

    /// The place's name (≤ 1000 characters).
    pub fn name(mut self, name: impl Into<String>) -> Result<Self, BuildError> {
        let name = name.into();
        limits::required("location name", &name, 1000)?;
        self.name = Some(name);
        Ok(self)
    }

    /// The place's address (≤ 1000 characters).
    pub fn address(mut self, address: impl Into<String>) -> Result<Self, BuildError> {
        let address = address.into();
        limits::required("location address", &address, 1000)?;
        self.address = Some(address);
        Ok(self)
    }

    pub(crate) fn to_json(&self) -> Value {
        let mut value = json!({ "latitude": self.latitude, "longitude": self.longitude });
        if let Some(name) = &self.name {
            value["name"] = json!(name);
        }
        if let Some(address) = &self.address {
            value["address"] = json!(address);
        }
        value
    }
}

/// A contact card to share.
///
/// ```
/// use flowcore_meta::outgoing::{ContactCard, ContactsMessage};
/// let card = ContactCard::new("Central Exemplo")?.phone("+1 202-555-0188", "WORK", None)?.email("a@example.com", "WORK")?;
/// let message = ContactsMessage::new([card])?;
/// # Ok::<(), flowcore_meta::outgoing::BuildError>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContactCard {
    formatted_name: String,
    first_name: Option<String>,
    last_name: Option<String>,
    company: Option<String>,
    phones: Vec<(String, String, Option<String>)>,
    emails: Vec<(String, String)>,
    urls: Vec<(String, String)>,
}

impl ContactCard {
    /// A card with the name as displayed (required).
    pub fn new(formatted_name: impl Into<String>) -> Result<Self, BuildError> {
        let formatted_name = formatted_name.into();
        limits::required("contact formatted_name", &formatted_name, 1024)?;
        Ok(ContactCard {
            formatted_name,
            first_name: None,
            last_name: None,
            company: None,
            phones: Vec::new(),
            emails: Vec::new(),
            urls: Vec::new(),
        })
    }

    /// First and last name.
    pub fn names(mut self, first: impl Into<String>, last: impl Into<String>) -> Result<Self, BuildError> {
        let (first, last) = (first.into(), last.into());
        limits::max_len("contact first_name", &first, 1024)?;
        limits::max_len("contact last_name", &last, 1024)?;
        self.first_name = Some(first).filter(|s| !s.is_empty());
        self.last_name = Some(last).filter(|s| !s.is_empty());
        Ok(self)
    }

    /// The company.
    pub fn company(mut self, company: impl Into<String>) -> Result<Self, BuildError> {
        let company = company.into();
        limits::required("contact org.company", &company, 1024)?;
        self.company = Some(company);
        Ok(self)
    }

    /// Adds a phone (`kind` such as `CELL`, `WORK`), with its WhatsApp id when known.
    pub fn phone(
        mut self,
        phone: impl Into<String>,
        kind: impl Into<String>,
        wa_id: Option<&str>,
    ) -> Result<Self, BuildError> {
        let phone = phone.into();
        limits::required("contact phone", &phone, 64)?;
        let wa_id = match wa_id {
            Some(wa_id) => Some(Recipient::phone(wa_id)?.as_str().to_owned()),
            None => None,
        };
        self.phones.push((phone, kind.into(), wa_id));
        Ok(self)
    }

    /// Adds an e-mail address.
    pub fn email(mut self, email: impl Into<String>, kind: impl Into<String>) -> Result<Self, BuildError> {
        let email = email.into();
        limits::required("contact email", &email, 320)?;
        self.emails.push((email, kind.into()));
        Ok(self)
    }

    /// Adds a web site.
    pub fn url(mut self, url: impl Into<String>, kind: impl Into<String>) -> Result<Self, BuildError> {
        let url = url.into();
        limits::link("contact url", &url)?;
        self.urls.push((url, kind.into()));
        Ok(self)
    }

    fn to_json(&self) -> Value {
        let mut name = json!({ "formatted_name": self.formatted_name });
        if let Some(first) = &self.first_name {
            name["first_name"] = json!(first);
        }
        if let Some(last) = &self.last_name {
            name["last_name"] = json!(last);
        }
        let mut card = json!({ "name": name });
        if let Some(company) = &self.company {
            card["org"] = json!({ "company": company });
        }
        if !self.phones.is_empty() {
            card["phones"] = self
                .phones
                .iter()
                .map(|(phone, kind, wa_id)| {
                    let mut p = json!({ "phone": phone, "type": kind });
                    if let Some(wa_id) = wa_id {
                        p["wa_id"] = json!(wa_id);
                    }
                    p
                })
                .collect();
        }
        if !self.emails.is_empty() {
            card["emails"] = self.emails.iter().map(|(email, kind)| json!({ "email": email, "type": kind })).collect();
        }
        if !self.urls.is_empty() {
            card["urls"] = self.urls.iter().map(|(url, kind)| json!({ "url": url, "type": kind })).collect();
        }
        card
    }
}

/// One to 257 contact cards.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContactsMessage {
    cards: Vec<ContactCard>,
}

impl ContactsMessage {
    /// The cards to share (1 to [`CONTACTS_MAX`]).
    pub fn new(cards: impl IntoIterator<Item = ContactCard>) -> Result<Self, BuildError> {
        let cards: Vec<_> = cards.into_iter().collect();
        if cards.is_empty() {
            return Err(BuildError::TooFew { field: "contacts".into(), min: 1 });
        }
        if cards.len() > CONTACTS_MAX {
            return Err(BuildError::TooMany { field: "contacts".into(), max: CONTACTS_MAX, actual: cards.len() });
        }
        Ok(ContactsMessage { cards })
    }

    pub(crate) fn to_json(&self) -> Value {
        self.cards.iter().map(ContactCard::to_json).collect()
    }
}

/// An emoji reaction to a message, or the removal of ours.
///
/// ```
/// use flowcore_meta::outgoing::Reaction;
/// let like = Reaction::new("wamid.IN", "👍")?;
/// let undo = Reaction::remove("wamid.IN")?;
/// # Ok::<(), flowcore_meta::outgoing::BuildError>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reaction {
    message_id: String,
    emoji: String,
}

impl Reaction {
    /// Reacts to `message_id` with `emoji` (one emoji, at most 10 scalar values for
    /// sequences such as flags and skin tones).
    pub fn new(message_id: impl Into<String>, emoji: impl Into<String>) -> Result<Self, BuildError> {
        let (message_id, emoji) = (message_id.into(), emoji.into());
        limits::id("reaction message_id", &message_id, 512)?;
        limits::required("reaction emoji", &emoji, 10)?;
        Ok(Reaction { message_id, emoji })
    }

    /// Removes our reaction from `message_id` (an empty emoji).
    pub fn remove(message_id: impl Into<String>) -> Result<Self, BuildError> {
        let message_id = message_id.into();
        limits::id("reaction message_id", &message_id, 512)?;
        Ok(Reaction { message_id, emoji: String::new() })
    }

    pub(crate) fn to_json(&self) -> Value {
        json!({ "message_id": self.message_id, "emoji": self.emoji })
    }
}

/// Marks a received message (and every earlier one) as read, optionally showing a typing
/// indicator until we reply (or for up to 25 seconds).
///
/// ```
/// use flowcore_meta::outgoing::MarkRead;
/// let body = MarkRead::new("wamid.IN")?.typing_indicator().to_json();
/// assert_eq!(body["status"], "read");
/// assert_eq!(body["typing_indicator"]["type"], "text");
/// # Ok::<(), flowcore_meta::outgoing::BuildError>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MarkRead {
    message_id: String,
    typing: bool,
}

impl MarkRead {
    /// Marks `message_id` read.
    pub fn new(message_id: impl Into<String>) -> Result<Self, BuildError> {
        let message_id = message_id.into();
        limits::id("message_id", &message_id, 512)?;
        Ok(MarkRead { message_id, typing: false })
    }

    /// Also shows a typing indicator.
    pub fn typing_indicator(mut self) -> Self {
        self.typing = true;
        self
    }

    /// The request body.
    pub fn to_json(&self) -> Value {
        let mut body = json!({ "messaging_product": "whatsapp", "status": "read", "message_id": self.message_id });
        if self.typing {
            body["typing_indicator"] = json!({ "type": "text" });
        }
        body
    }
}
