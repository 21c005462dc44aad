//! Conversions between WhatsApp and flowcore: inbound events → [`flowcore::Input`],
//! [`flowcore::Message`] → [`OutgoingMessage`]s.

use flowcore::{Input, MediaKind, OrderItem};
use serde_json::Value;

use crate::outgoing::{
    BuildError, FlowMessage, Header, ListMessage, ListRow, ListSection, MediaMessage, MediaSource, OutgoingMessage,
    Recipient, ReplyButton, ReplyButtons, Template, Text, TEXT_BODY_MAX,
};
use crate::webhook::{Content, Event, Interactive, Media, Message, MessageEvent};

/// The flowcore input for a user's message.
///
/// | WhatsApp | flowcore |
/// |---|---|
/// | `text` | [`Input::Text`] |
/// | `interactive` `button_reply` / `list_reply` | [`Input::Choice`] by id, with the title |
/// | `button` (template quick reply) | [`Input::Choice`] by payload (the text when there is no payload), with the text |
/// | `image`, `video`, `audio`, `document`, `sticker` | [`Input::Media`] with id, MIME type, caption, file name |
/// | `location` | [`Input::Location`] |
/// | `contacts` | [`Input::Contacts`] with Meta's JSON |
/// | `reaction` | [`Input::Reaction`]; an empty or missing emoji (a removal) is `None` |
/// | `order` | [`Input::Order`] with catalog, note and items |
/// | `interactive` `nfm_reply` | [`Input::FlowReply`]: `response_json` parsed (a string when it is not JSON), its `flow_token` lifted out |
/// | `edit` | [`Input::Edit`] with the edited message's id and the new text or media |
/// | `revoke` | [`Input::Revoke`] with the deleted message's id |
/// | anything else | [`Input::Unsupported`] with its kind (`system`, `request_welcome`, `unsupported`, unknown types) |
pub fn to_input(event: &MessageEvent<'_>) -> Input {
    message_to_input(&event.message)
}

/// The flowcore input for an event: `Some` for user messages, `None` for statuses,
/// errors, other fields and unparsed items.
pub fn event_to_input(event: &Event<'_>) -> Option<Input> {
    match event {
        Event::Message(m) => Some(to_input(m)),
        _ => None,
    }
}

/// The flowcore input for a message (see [`to_input`]).
pub fn message_to_input(message: &Message<'_>) -> Input {
    let unsupported = |kind: &str| Input::Unsupported { kind: kind.to_owned() };
    match &message.content {
        Content::Text { body } => Input::Text { text: body.to_string() },
        Content::Interactive(Interactive::ButtonReply { id, title })
        | Content::Interactive(Interactive::ListReply { id, title, .. }) => {
            Input::Choice { id: id.to_string(), title: Some(title.to_string()) }
        }
        Content::Interactive(Interactive::NfmReply { response_json, .. }) => flow_reply(response_json),
        Content::Interactive(Interactive::Other { kind, .. }) => unsupported(kind),
        Content::Button { payload, text } => match payload.as_deref().or(text.as_deref()) {
            Some(id) => Input::Choice { id: id.to_owned(), title: text.as_deref().map(str::to_owned) },
            None => unsupported("button"),
        },
        Content::Image(media) => media_input(MediaKind::Image, media),
        Content::Video(media) => media_input(MediaKind::Video, media),
        Content::Audio(media) => media_input(MediaKind::Audio, media),
        Content::Document(media) => media_input(MediaKind::Document, media),
        Content::Sticker(media) => media_input(MediaKind::Sticker, media),
        Content::Location(location) => Input::Location {
            latitude: location.latitude,
            longitude: location.longitude,
            name: location.name.as_deref().map(str::to_owned),
            address: location.address.as_deref().map(str::to_owned),
        },
        Content::Contacts { raw, .. } => {
            Input::Contacts { contacts: serde_json::from_str(raw.get()).unwrap_or(serde_json::Value::Null) }
        }
        Content::Reaction { message_id, emoji } => Input::Reaction {
            message_id: message_id.to_string(),
            emoji: emoji.as_deref().filter(|e| !e.is_empty()).map(str::to_owned),
        },
        Content::Order(order) => Input::Order {
            catalog_id: order.catalog_id.as_deref().map(str::to_owned),
            text: order.text.as_deref().map(str::to_owned),
            items: order
                .product_items
                .iter()
                .map(|item| OrderItem {
                    product_retailer_id: item.product_retailer_id.to_string(),
                    quantity: item.quantity,
                    item_price: item.item_price,
                    currency: item.currency.to_string(),
                })
                .collect(),
        },
        Content::Edit { original_message_id, message } => Input::Edit {
            message_id: original_message_id.as_deref().unwrap_or_default().to_owned(),
            message: message
                .as_ref()
                .and_then(|raw| serde_json::from_str::<Value>(raw.get()).ok())
                .map(|value| Box::new(edited_input(&value))),
        },
        Content::Revoke { original_message_id } => {
            Input::Revoke { message_id: original_message_id.as_deref().unwrap_or_default().to_owned() }
        }
        other => unsupported(other.kind()),
    }
}

/// A flow reply from `response_json`: the answers, with the token lifted out. Text that
/// is not JSON is kept as a string, so nothing the contact sent is lost.
fn flow_reply(response_json: &str) -> Input {
    let response = serde_json::from_str::<Value>(response_json).unwrap_or_else(|_| Value::String(response_json.into()));
    let flow_token = response.get("flow_token").and_then(Value::as_str).map(str::to_owned);
    Input::FlowReply { flow_token, response }
}

/// The input an edit's new message stands for. Meta lets users edit texts and media
/// captions; other kinds are kept by their name.
fn edited_input(message: &Value) -> Input {
    let kind = message.get("type").and_then(Value::as_str).unwrap_or_default();
    let text = |v: Option<&Value>| v.and_then(Value::as_str).map(str::to_owned);
    let media_kind = match kind {
        "text" => return Input::Text { text: text(message.pointer("/text/body")).unwrap_or_default() },
        "image" => MediaKind::Image,
        "video" => MediaKind::Video,
        "audio" => MediaKind::Audio,
        "document" => MediaKind::Document,
        "sticker" => MediaKind::Sticker,
        other => return Input::Unsupported { kind: if other.is_empty() { "edit".into() } else { other.into() } },
    };
    let media = message.get(kind);
    Input::Media {
        kind: media_kind,
        id: text(media.and_then(|m| m.get("id"))).unwrap_or_default(),
        mime_type: text(media.and_then(|m| m.get("mime_type"))),
        caption: text(media.and_then(|m| m.get("caption"))),
        filename: text(media.and_then(|m| m.get("filename"))),
    }
}

fn media_input(kind: MediaKind, media: &Media<'_>) -> Input {
    Input::Media {
        kind,
        id: media.id.to_string(),
        mime_type: media.mime_type.as_deref().map(str::to_owned),
        caption: media.caption.as_deref().map(str::to_owned),
        filename: media.filename.as_deref().map(str::to_owned),
    }
}

/// The WhatsApp messages for one flowcore message, addressed to `to`.
///
/// Texts longer than 4096 characters become several messages, split on word boundaries
/// ([`split_text`]). Every builder limit still applies: a flow's too-long button title or
/// eleventh list row is a [`BuildError`] naming the field, never a panic or a truncation.
///
/// ```
/// use flowcore::{Choice, Message};
/// use flowcore_meta::{outgoing::Recipient, to_outgoing};
///
/// let to = Recipient::phone("12025550101")?;
/// let buttons = Message::Buttons {
///     header: None, body: "Continuar?".into(), footer: None,
///     buttons: vec![Choice { id: "yes".into(), title: "Sim".into() }, Choice { id: "no".into(), title: "Não".into() }],
/// };
/// let out = to_outgoing(&to, &buttons)?;
/// assert_eq!(out[0].to_json()["interactive"]["action"]["buttons"][1]["reply"]["id"], "no");
///
/// let long = Message::Text { text: "palavra ".repeat(1000) };
/// assert_eq!(to_outgoing(&to, &long)?.len(), 2);
///
/// let bad = Message::Buttons { header: None, body: "?".into(), footer: None,
///     buttons: vec![Choice { id: "a".into(), title: "a title much too long for whatsapp".into() }] };
/// assert_eq!(to_outgoing(&to, &bad).unwrap_err().field(), "button title");
/// # Ok::<(), flowcore_meta::outgoing::BuildError>(())
/// ```
pub fn to_outgoing(to: &Recipient, message: &flowcore::Message) -> Result<Vec<OutgoingMessage>, BuildError> {
    let single = |content: crate::outgoing::Content| Ok(vec![OutgoingMessage::new(to.clone(), content)]);
    match message {
        flowcore::Message::Text { text } => {
            let chunks = split_text(text, TEXT_BODY_MAX);
            if chunks.is_empty() {
                return Err(BuildError::Empty { field: "text body".into() });
            }
            chunks.into_iter().map(|chunk| Ok(OutgoingMessage::new(to.clone(), Text::new(chunk)?))).collect()
        }
        flowcore::Message::Buttons { header, body, footer, buttons } => {
            let buttons: Vec<ReplyButton> =
                buttons.iter().map(|b| ReplyButton::new(b.id.as_str(), b.title.as_str())).collect::<Result<_, _>>()?;
            let mut message = ReplyButtons::new(body.as_str(), buttons)?;
            if let Some(header) = header {
                message = message.header(Header::text(header.as_str())?);
            }
            if let Some(footer) = footer {
                message = message.footer(footer.as_str())?;
            }
            single(message.into())
        }
        flowcore::Message::List { header, body, footer, button, sections } => {
            let sections: Vec<ListSection> = sections
                .iter()
                .map(|section| {
                    let rows: Vec<ListRow> = section
                        .rows
                        .iter()
                        .map(|row| {
                            let r = ListRow::new(row.id.as_str(), row.title.as_str())?;
                            match &row.description {
                                Some(d) => r.description(d.as_str()),
                                None => Ok(r),
                            }
                        })
                        .collect::<Result<_, _>>()?;
                    ListSection::new(section.title.clone(), rows)
                })
                .collect::<Result<_, _>>()?;
            let mut message = ListMessage::new(body.as_str(), button.as_str(), sections)?;
            if let Some(header) = header {
                message = message.header(header.as_str())?;
            }
            if let Some(footer) = footer {
                message = message.footer(footer.as_str())?;
            }
            single(message.into())
        }
        flowcore::Message::Media { kind, link, caption, filename } => {
            let mut message = MediaMessage::new(*kind, MediaSource::link(link.as_str())?);
            if let Some(caption) = caption {
                message = message.caption(caption.as_str())?;
            }
            if let Some(filename) = filename {
                message = message.filename(filename.as_str())?;
            }
            single(message.into())
        }
        flowcore::Message::Flow { header, body, footer, flow_id, cta, flow_token, screen, data } => {
            let mut message = FlowMessage::new(body.as_str(), flow_id.as_str(), cta.as_str(), flow_token.as_str())?;
            if let Some(screen) = screen {
                message = message.navigate(screen.as_str(), data)?;
            }
            if let Some(header) = header {
                message = message.header(Header::text(header.as_str())?);
            }
            if let Some(footer) = footer {
                message = message.footer(footer.as_str())?;
            }
            single(message.into())
        }
        flowcore::Message::Template { name, language, components } => {
            single(Template::new(name.as_str(), language.as_str())?.raw_components(components)?.into())
        }
        _ => {
            Err(BuildError::Invalid { field: "message".into(), reason: "no WhatsApp equivalent for this message type" })
        }
    }
}

/// Splits `text` into pieces of at most `max_chars` characters, at the last whitespace
/// that fits (the whitespace at a split is dropped), or — for a word longer than a piece —
/// at a character boundary. Blank pieces are left out. Never splits inside a character.
///
/// ```
/// assert_eq!(flowcore_meta::split_text("uma frase curta", 9), ["uma frase", "curta"]);
/// assert_eq!(flowcore_meta::split_text("ééééé", 2), ["éé", "éé", "é"]);
/// ```
pub fn split_text(text: &str, max_chars: usize) -> Vec<&str> {
    let max_chars = max_chars.max(1);
    let mut pieces = Vec::new();
    let mut rest = text;
    loop {
        rest = rest.trim_start();
        if rest.is_empty() {
            break;
        }
        // Byte offset just past `max_chars` characters, or the end.
        let limit = rest.char_indices().nth(max_chars).map_or(rest.len(), |(i, _)| i);
        if limit == rest.len() {
            pieces.push(rest.trim_end());
            break;
        }
        // A whitespace right at the limit counts as a boundary too.
        let window = &rest[..limit];
        let at_space = rest[limit..].starts_with(char::is_whitespace);
        let cut = if at_space {
            limit
        } else {
            window.rfind(char::is_whitespace).filter(|&i| !window[..i].trim().is_empty()).unwrap_or(limit)
        };
        let piece = rest[..cut].trim_end();
        if !piece.is_empty() {
            pieces.push(piece);
        }
        rest = &rest[cut..];
    }
    pieces
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_table() {
        let cases: &[(&str, usize, &[&str])] = &[
            ("", 5, &[]),
            ("   ", 5, &[]),
            ("abc", 5, &["abc"]),
            ("abcde", 5, &["abcde"]),
            ("abcde fgh", 5, &["abcde", "fgh"]),
            ("ab cd ef", 5, &["ab cd", "ef"]),
            ("abcdefgh", 3, &["abc", "def", "gh"]),
            ("a\nb c", 3, &["a\nb", "c"]),
            ("👍👍👍 👍", 2, &["👍👍", "👍", "👍"]),
            ("  lead and trail  ", 100, &["lead and trail"]),
        ];
        for (text, max, expected) in cases {
            assert_eq!(split_text(text, *max), *expected, "{text:?} / {max}");
        }
    }

    #[test]
    fn split_pieces_respect_the_limit_and_lose_no_words() {
        let text = "Olá! ".repeat(2000) + &"x".repeat(5000);
        let pieces = split_text(&text, 4096);
        assert!(pieces.iter().all(|p| p.chars().count() <= 4096 && !p.is_empty()));
        let rejoined: String = pieces.concat();
        let original: String = text.split_whitespace().collect();
        assert_eq!(rejoined.split_whitespace().collect::<String>(), original);
    }
}
