//! Question answer validation: text, number, email, phone, regex, options, and the
//! structured answers location, media and contact.

use regex::Regex;
use serde_json::{json, Map, Value};

use crate::value::number_value;
use crate::{Input, MediaKind};

/// How a question checks its answer.
#[derive(Clone, Debug)]
pub(crate) enum Validation {
    /// Any non-blank text.
    Text,
    /// A number (`30`, `-2.5`, `1,5`); stored as a JSON number.
    Number,
    /// An e-mail address; stored trimmed.
    Email,
    /// A phone number in E.164 (`+5511999999999`) or a national form such as
    /// `+55 11 99999-9999` or `(11) 99999-9999`; stored as `+` and digits, or digits.
    Phone,
    /// Text matching a pattern; stored trimmed.
    Regex(Regex),
    /// One of the listed options, by value, label or 1-based number; stored as the value.
    Options(Box<[QuestionOption]>),
    /// A shared location; stored as `{latitude, longitude, name?, address?}`.
    Location,
    /// A media item, of the listed kinds (any kind when empty); stored as
    /// `{kind, id, mime_type?, caption?, filename?}`.
    Media(Box<[MediaKind]>),
    /// A shared contact card; stored as the first card's `name`, `phone` and `wa_id`, with
    /// every card as the platform sent them in `cards`.
    Contact,
    /// A cart from the catalog; stored as `{catalog_id?, text?, items, total, currency?}`,
    /// `total` summing quantity × price (`currency` when every item shares one).
    Order,
}

/// An option of an `options` question.
#[derive(Clone, Debug)]
pub(crate) struct QuestionOption {
    pub(crate) value: Box<str>,
    pub(crate) label: Box<str>,
}

impl Validation {
    /// The value to store for `input`, or `None` when the question cannot take it.
    ///
    /// Text validations read the text of a message (a media caption or a place's name
    /// count as text); the structured ones take only their own kind of input.
    pub(crate) fn check_input(&self, input: &Input) -> Option<Value> {
        match (self, input) {
            (Validation::Location, Input::Location { latitude, longitude, name, address }) => {
                if !(-90.0..=90.0).contains(latitude) || !(-180.0..=180.0).contains(longitude) {
                    return None;
                }
                let mut map = Map::new();
                map.insert("latitude".into(), number_value(*latitude));
                map.insert("longitude".into(), number_value(*longitude));
                insert_some(&mut map, "name", name);
                insert_some(&mut map, "address", address);
                Some(Value::Object(map))
            }
            (Validation::Media(kinds), Input::Media { kind, id, mime_type, caption, filename }) => {
                if !kinds.is_empty() && !kinds.contains(kind) {
                    return None;
                }
                let mut map = Map::new();
                map.insert("kind".into(), Value::String(kind.as_str().into()));
                map.insert("id".into(), Value::String(id.clone()));
                insert_some(&mut map, "mime_type", mime_type);
                insert_some(&mut map, "caption", caption);
                insert_some(&mut map, "filename", filename);
                Some(Value::Object(map))
            }
            (Validation::Contact, Input::Contacts { contacts }) => contact_value(contacts),
            (Validation::Order, Input::Order { catalog_id, text, items }) if !items.is_empty() => {
                let mut map = Map::new();
                insert_some(&mut map, "catalog_id", catalog_id);
                insert_some(&mut map, "text", text);
                let total: f64 = items.iter().map(|i| i.quantity * i.item_price).sum();
                map.insert("items".into(), serde_json::to_value(items).unwrap_or(Value::Null));
                map.insert("total".into(), number_value((total * 100.0).round() / 100.0));
                let currency = items.first().map(|i| &i.currency).filter(|c| items.iter().all(|i| &i.currency == *c));
                insert_some(&mut map, "currency", &currency.cloned());
                Some(Value::Object(map))
            }
            (Validation::Location | Validation::Media(_) | Validation::Contact | Validation::Order, _) => None,
            (_, input) => text_of(input).and_then(|t| self.check(t)),
        }
    }

    /// The value to store for a text `answer`, or `None` when the answer is invalid.
    pub(crate) fn check(&self, answer: &str) -> Option<Value> {
        let t = answer.trim();
        match self {
            Validation::Text => (!t.is_empty()).then(|| Value::String(t.to_string())),
            Validation::Number => parse_answer_number(t).map(number_value),
            Validation::Email => is_email(t).then(|| Value::String(t.to_string())),
            Validation::Phone => normalize_phone(t).map(Value::String),
            Validation::Regex(re) => re.is_match(t).then(|| Value::String(t.to_string())),
            Validation::Location | Validation::Media(_) | Validation::Contact | Validation::Order => None,
            Validation::Options(options) => {
                let by_number = t.parse::<usize>().ok().and_then(|n| n.checked_sub(1)).and_then(|i| options.get(i));
                options
                    .iter()
                    .find(|o| o.value.eq_ignore_ascii_case(t) || o.label.to_lowercase() == t.to_lowercase())
                    .or(by_number)
                    .map(|o| Value::String(o.value.to_string()))
            }
        }
    }

    /// The message sent when an answer is invalid and the flow gives none.
    pub(crate) fn default_error(&self) -> String {
        match self {
            Validation::Text => "Por favor, digite uma resposta.".into(),
            Validation::Number => "Por favor, digite um número válido.".into(),
            Validation::Email => "Por favor, digite um e-mail válido, como nome@exemplo.com.".into(),
            Validation::Phone => "Por favor, digite um telefone válido, como +55 11 99999-9999.".into(),
            Validation::Regex(_) => "Resposta em formato inválido. Tente novamente.".into(),
            Validation::Options(options) => {
                let labels: Vec<&str> = options.iter().map(|o| &*o.label).collect();
                format!("Por favor, escolha uma das opções: {}.", labels.join(", "))
            }
            Validation::Location => "Por favor, envie uma localização pelo clipe 📎 → Localização.".into(),
            Validation::Media(kinds) if kinds.is_empty() => "Por favor, envie um arquivo ou uma foto.".into(),
            Validation::Media(kinds) => {
                let names: Vec<&str> = kinds.iter().map(|k| media_name_pt(*k)).collect();
                format!("Por favor, envie: {}.", names.join(", "))
            }
            Validation::Contact => "Por favor, compartilhe um contato.".into(),
            Validation::Order => "Por favor, envie seu pedido pelo catálogo.".into(),
        }
    }
}

/// The text a message carries, for text validations.
fn text_of(input: &Input) -> Option<&str> {
    match input {
        Input::Text { text } => Some(text),
        Input::Choice { id, title } => Some(title.as_deref().unwrap_or(id)),
        Input::Media { caption, .. } => caption.as_deref(),
        Input::Location { name, address, .. } => name.as_deref().or(address.as_deref()),
        _ => None,
    }
}

fn insert_some(map: &mut Map<String, Value>, key: &str, value: &Option<String>) {
    if let Some(v) = value {
        map.insert(key.into(), Value::String(v.clone()));
    }
}

/// `{name, phone, wa_id, cards}` from WhatsApp's contact cards; `None` when there is no
/// card (a card without a name or phone still counts: those fields are left out).
fn contact_value(contacts: &Value) -> Option<Value> {
    let cards: Vec<Value> = match contacts {
        Value::Array(items) => items.clone(),
        Value::Object(_) => vec![contacts.clone()],
        _ => Vec::new(),
    };
    let first = cards.first()?;
    let name = first.get("name").and_then(|n| n.get("formatted_name").or(Some(n))).and_then(Value::as_str);
    let phone = first.get("phones").and_then(|p| p.get(0));
    let mut map = Map::new();
    if let Some(name) = name {
        map.insert("name".into(), json!(name));
    }
    if let Some(number) = phone.and_then(|p| p.get("phone")).and_then(Value::as_str) {
        map.insert("phone".into(), json!(number));
    }
    if let Some(wa_id) = phone.and_then(|p| p.get("wa_id")).and_then(Value::as_str) {
        map.insert("wa_id".into(), json!(wa_id));
    }
    map.insert("cards".into(), Value::Array(cards));
    Some(Value::Object(map))
}

fn media_name_pt(kind: MediaKind) -> &'static str {
    match kind {
        MediaKind::Image => "uma foto",
        MediaKind::Video => "um vídeo",
        MediaKind::Audio => "um áudio",
        MediaKind::Document => "um documento",
        MediaKind::Sticker => "uma figurinha",
    }
}

/// Reads a `mediaTypes` entry (`"image"`, `"photo"`, `"file"`, …).
pub(crate) fn parse_media_kind(name: &str) -> Option<MediaKind> {
    Some(match name.trim().to_ascii_lowercase().as_str() {
        "image" | "photo" | "picture" | "imagem" | "foto" => MediaKind::Image,
        "video" | "vídeo" => MediaKind::Video,
        "audio" | "voice" | "áudio" => MediaKind::Audio,
        "document" | "file" | "documento" | "arquivo" => MediaKind::Document,
        "sticker" | "figurinha" => MediaKind::Sticker,
        _ => return None,
    })
}

fn parse_answer_number(t: &str) -> Option<f64> {
    let owned;
    let text = if t.contains(',') && !t.contains('.') && t.matches(',').count() == 1 {
        owned = t.replace(',', ".");
        &owned
    } else {
        t
    };
    crate::value::parse_number(text)
}

/// A pragmatic e-mail check: one `@`, a non-empty local part, a dotted domain with a
/// two-letter-or-longer last label, no spaces.
pub(crate) fn is_email(t: &str) -> bool {
    let Some((local, domain)) = t.split_once('@') else { return false };
    if local.is_empty() || domain.contains('@') || t.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return false;
    }
    // One pass over the labels, without collecting them: this runs on every e-mail answer.
    let mut labels = 0;
    let mut tld = "";
    for label in domain.split('.') {
        if label.is_empty() || label.starts_with('-') || label.ends_with('-') {
            return false;
        }
        labels += 1;
        tld = label;
    }
    labels >= 2
        && tld.chars().count() >= 2
        && tld.chars().all(char::is_alphabetic)
        && !local.starts_with('.')
        && !local.ends_with('.')
        && !local.contains("..")
}

/// Phone numbers: `+` and 8–15 digits (E.164), or 10–13 digits without `+` (national
/// forms such as `(11) 99999-9999`); spaces, dashes, dots and parentheses are ignored.
pub(crate) fn normalize_phone(t: &str) -> Option<String> {
    let (plus, body) = match t.strip_prefix('+') {
        Some(rest) => (true, rest),
        None => (false, t),
    };
    let mut digits = String::with_capacity(body.len() + 1);
    if plus {
        digits.push('+');
    }
    for c in body.chars() {
        match c {
            '0'..='9' => digits.push(c),
            ' ' | '-' | '.' | '(' | ')' => {}
            _ => return None,
        }
    }
    let n = digits.len() - usize::from(plus);
    let ok = if plus { (8..=15).contains(&n) && !digits[1..].starts_with('0') } else { (10..=13).contains(&n) };
    ok.then_some(digits)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn validation_table() {
        let options = Validation::Options(
            vec![
                QuestionOption { value: "a".into(), label: "Manhã".into() },
                QuestionOption { value: "b".into(), label: "Tarde".into() },
            ]
            .into(),
        );
        let regex = Validation::Regex(Regex::new("^[0-9]{6}$").unwrap());
        let cases: Vec<(&Validation, &str, Option<Value>)> = vec![
            (&Validation::Text, " Maria ", Some(json!("Maria"))),
            (&Validation::Text, "   ", None),
            (&Validation::Number, "30", Some(json!(30))),
            (&Validation::Number, " -2.5 ", Some(json!(-2.5))),
            (&Validation::Number, "1,5", Some(json!(1.5))),
            (&Validation::Number, "trinta", None),
            (&Validation::Number, "inf", None),
            (&Validation::Number, "", None),
            (&Validation::Email, "maria@example.com", Some(json!("maria@example.com"))),
            (&Validation::Email, "a.b+c@sub.example.com.br", Some(json!("a.b+c@sub.example.com.br"))),
            (&Validation::Email, "maria@example", None),
            (&Validation::Email, "maria example.com", None),
            (&Validation::Email, "@example.com", None),
            (&Validation::Email, "a@@b.com", None),
            (&Validation::Email, "a b@c.com", None),
            (&Validation::Email, "a@b.c", None),
            (&Validation::Phone, "+55 11 99999-9999", Some(json!("+5511999999999"))),
            (&Validation::Phone, "+5511999999999", Some(json!("+5511999999999"))),
            (&Validation::Phone, "(11) 99999-9999", Some(json!("11999999999"))),
            (&Validation::Phone, "+1 (415) 555-0100", Some(json!("+14155550100"))),
            (&Validation::Phone, "12345", None),
            (&Validation::Phone, "+0 11 9999 9999", None),
            (&Validation::Phone, "call me", None),
            (&Validation::Phone, "+55 11 9999x-9999", None),
            (&regex, "123456", Some(json!("123456"))),
            (&regex, "12345", None),
            (&options, "tarde", Some(json!("b"))),
            (&options, "A", Some(json!("a"))),
            (&options, "2", Some(json!("b"))),
            (&options, "3", None),
            (&options, "noite", None),
        ];
        for (validation, answer, expected) in cases {
            assert_eq!(validation.check(answer), expected, "{validation:?} {answer:?}");
        }
        assert!(options.default_error().contains("Manhã, Tarde"));
    }

    #[test]
    fn structured_validation_table() {
        let at = |latitude, longitude| Input::Location { latitude, longitude, name: None, address: None };
        let media = |kind| Input::Media { kind, id: "m".into(), mime_type: None, caption: None, filename: None };
        let photos = Validation::Media(vec![MediaKind::Image].into());
        let cards = |v: Value| Input::Contacts { contacts: v };
        let cases: Vec<(Validation, Input, Option<Value>)> = vec![
            (Validation::Location, at(-23.5, -46.6), Some(json!({"latitude": -23.5, "longitude": -46.6}))),
            (Validation::Location, at(91.0, 0.0), None),
            (Validation::Location, at(0.0, -180.5), None),
            (Validation::Location, Input::text("-23.5, -46.6"), None),
            (photos.clone(), media(MediaKind::Image), Some(json!({"kind": "image", "id": "m"}))),
            (photos, media(MediaKind::Video), None),
            (Validation::Media(Box::default()), media(MediaKind::Sticker), Some(json!({"kind": "sticker", "id": "m"}))),
            (Validation::Contact, cards(json!([])), None),
            (Validation::Contact, cards(json!("x")), None),
            (
                Validation::Contact,
                cards(json!({"name": {"formatted_name": "Ana"}})),
                Some(json!({"name": "Ana", "cards": [{"name": {"formatted_name": "Ana"}}]})),
            ),
            (Validation::Order, Input::Order { catalog_id: None, text: None, items: vec![] }, None),
            // Text validations read a place's name, not its coordinates.
            (
                Validation::Text,
                Input::Location { latitude: 0.0, longitude: 0.0, name: Some("Sé".into()), address: None },
                Some(json!("Sé")),
            ),
            (Validation::Text, Input::Reaction { message_id: "m".into(), emoji: Some("👍".into()) }, None),
        ];
        for (validation, input, expected) in cases {
            assert_eq!(validation.check_input(&input), expected, "{validation:?} {input:?}");
        }
    }
}
