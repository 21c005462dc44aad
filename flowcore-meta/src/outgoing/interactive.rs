//! Interactive messages: reply buttons, lists, call-to-action URLs and WhatsApp Flows.

use std::collections::HashSet;

use serde_json::{json, Value};

use super::basic::MediaSource;
use super::limits::{self, *};

/// The header of an interactive message: text (≤ 60 characters) or media.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Header {
    /// A text header.
    Text(String),
    /// An image header.
    Image(MediaSource),
    /// A video header.
    Video(MediaSource),
    /// A document header.
    Document(MediaSource),
}

impl Header {
    /// A text header (non-blank, ≤ [`HEADER_TEXT_MAX`] characters).
    pub fn text(text: impl Into<String>) -> Result<Self, BuildError> {
        let text = text.into();
        limits::required("header", &text, HEADER_TEXT_MAX)?;
        Ok(Header::Text(text))
    }

    fn to_json(&self) -> Value {
        match self {
            Header::Text(text) => json!({ "type": "text", "text": text }),
            Header::Image(source) => json!({ "type": "image", "image": source.to_json() }),
            Header::Video(source) => json!({ "type": "video", "video": source.to_json() }),
            Header::Document(source) => json!({ "type": "document", "document": source.to_json() }),
        }
    }
}

fn body_json(body: &str) -> Value {
    json!({ "text": body })
}

fn check_body(body: &str) -> Result<(), BuildError> {
    limits::required("body", body, INTERACTIVE_BODY_MAX)
}

fn check_footer(footer: &str) -> Result<(), BuildError> {
    limits::required("footer", footer, FOOTER_MAX)
}

fn put_header_footer(interactive: &mut Value, header: &Option<Header>, footer: &Option<String>) {
    if let Some(header) = header {
        interactive["header"] = header.to_json();
    }
    if let Some(footer) = footer {
        interactive["footer"] = json!({ "text": footer });
    }
}

/// A reply button: an id (≤ 256, no surrounding whitespace) and a title (≤ 20).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplyButton {
    id: String,
    title: String,
}

impl ReplyButton {
    /// A button.
    pub fn new(id: impl Into<String>, title: impl Into<String>) -> Result<Self, BuildError> {
        let (id, title) = (id.into(), title.into());
        limits::id("button id", &id, BUTTON_ID_MAX)?;
        limits::required("button title", &title, BUTTON_TITLE_MAX)?;
        Ok(ReplyButton { id, title })
    }

    /// The id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The title.
    pub fn title(&self) -> &str {
        &self.title
    }
}

/// A body (≤ 1024) with one to three reply buttons, unique in id and title.
///
/// ```
/// use flowcore_meta::outgoing::{ReplyButton, ReplyButtons, BuildError};
/// let dup = ReplyButtons::new("Pick", [ReplyButton::new("a", "Same")?, ReplyButton::new("b", "Same")?]);
/// assert_eq!(dup.unwrap_err(), BuildError::Duplicate { field: "buttons[1].title".into(), value: "Same".into() });
/// # Ok::<(), BuildError>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplyButtons {
    body: String,
    buttons: Vec<ReplyButton>,
    header: Option<Header>,
    footer: Option<String>,
}

impl ReplyButtons {
    /// The body and the buttons.
    pub fn new(body: impl Into<String>, buttons: impl IntoIterator<Item = ReplyButton>) -> Result<Self, BuildError> {
        let body = body.into();
        check_body(&body)?;
        let buttons: Vec<ReplyButton> = buttons.into_iter().collect();
        if buttons.is_empty() {
            return Err(BuildError::TooFew { field: "buttons".into(), min: 1 });
        }
        if buttons.len() > BUTTONS_MAX {
            return Err(BuildError::TooMany { field: "buttons".into(), max: BUTTONS_MAX, actual: buttons.len() });
        }
        let (mut ids, mut titles) = (HashSet::new(), HashSet::new());
        for (i, button) in buttons.iter().enumerate() {
            if !ids.insert(button.id.as_str()) {
                return Err(BuildError::Duplicate { field: format!("buttons[{i}].id"), value: button.id.clone() });
            }
            if !titles.insert(button.title.as_str()) {
                return Err(BuildError::Duplicate {
                    field: format!("buttons[{i}].title"),
                    value: button.title.clone(),
                });
            }
        }
        Ok(ReplyButtons { body, buttons, header: None, footer: None })
    }

    /// Adds a header.
    pub fn header(mut self, header: Header) -> Self {
        self.header = Some(header);
        self
    }

    /// Adds a footer (≤ 60).
    pub fn footer(mut self, footer: impl Into<String>) -> Result<Self, BuildError> {
        let footer = footer.into();
        check_footer(&footer)?;
        self.footer = Some(footer);
        Ok(self)
    }

    /// The buttons.
    pub fn buttons(&self) -> &[ReplyButton] {
        &self.buttons
    }

    pub(crate) fn to_json(&self) -> Value {
        let buttons: Vec<Value> = self
            .buttons
            .iter()
            .map(|b| json!({ "type": "reply", "reply": { "id": b.id, "title": b.title } }))
            .collect();
        let mut interactive =
            json!({ "type": "button", "body": body_json(&self.body), "action": { "buttons": buttons } });
        put_header_footer(&mut interactive, &self.header, &self.footer);
        interactive
    }
}

/// A row of a list: id (≤ 200), title (≤ 24), optional description (≤ 72).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListRow {
    id: String,
    title: String,
    description: Option<String>,
}

impl ListRow {
    /// A row.
    pub fn new(id: impl Into<String>, title: impl Into<String>) -> Result<Self, BuildError> {
        let (id, title) = (id.into(), title.into());
        limits::id("row id", &id, ROW_ID_MAX)?;
        limits::required("row title", &title, ROW_TITLE_MAX)?;
        Ok(ListRow { id, title, description: None })
    }

    /// Adds a description.
    pub fn description(mut self, description: impl Into<String>) -> Result<Self, BuildError> {
        let description = description.into();
        limits::required("row description", &description, ROW_DESCRIPTION_MAX)?;
        self.description = Some(description);
        Ok(self)
    }
}

/// A section of a list: an optional title (≤ 24; required when the list has several
/// sections) and at least one row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListSection {
    title: Option<String>,
    rows: Vec<ListRow>,
}

impl ListSection {
    /// A section.
    pub fn new(title: Option<String>, rows: impl IntoIterator<Item = ListRow>) -> Result<Self, BuildError> {
        if let Some(title) = &title {
            limits::required("section title", title, SECTION_TITLE_MAX)?;
        }
        let rows: Vec<ListRow> = rows.into_iter().collect();
        if rows.is_empty() {
            return Err(BuildError::TooFew { field: "section rows".into(), min: 1 });
        }
        if rows.len() > LIST_ROWS_MAX {
            return Err(BuildError::TooMany { field: "section rows".into(), max: LIST_ROWS_MAX, actual: rows.len() });
        }
        Ok(ListSection { title, rows })
    }
}

/// A body (≤ 1024) with a button (≤ 20) that opens up to 10 sections holding at most 10
/// rows in total, row ids unique across the list.
///
/// ```
/// use flowcore_meta::outgoing::{ListMessage, ListRow, ListSection};
/// let list = ListMessage::new("Escolha", "Ver opções", [
///     ListSection::new(Some("Suporte".into()), [ListRow::new("tech", "Técnico")?.description("Problemas")?])?,
///     ListSection::new(Some("Vendas".into()), [ListRow::new("buy", "Comprar")?])?,
/// ])?;
/// let untitled = ListMessage::new("Escolha", "Ver", [
///     ListSection::new(None, [ListRow::new("a", "A")?])?,
///     ListSection::new(None, [ListRow::new("b", "B")?])?,
/// ]);
/// assert_eq!(untitled.unwrap_err().field(), "sections[0].title");
/// # Ok::<(), flowcore_meta::outgoing::BuildError>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListMessage {
    body: String,
    button: String,
    sections: Vec<ListSection>,
    header: Option<String>,
    footer: Option<String>,
}

impl ListMessage {
    /// The body, the label of the button that opens the list, and the sections.
    pub fn new(
        body: impl Into<String>,
        button: impl Into<String>,
        sections: impl IntoIterator<Item = ListSection>,
    ) -> Result<Self, BuildError> {
        let (body, button) = (body.into(), button.into());
        check_body(&body)?;
        limits::required("list button", &button, LIST_BUTTON_MAX)?;
        let sections: Vec<ListSection> = sections.into_iter().collect();
        if sections.is_empty() {
            return Err(BuildError::TooFew { field: "sections".into(), min: 1 });
        }
        if sections.len() > LIST_SECTIONS_MAX {
            return Err(BuildError::TooMany {
                field: "sections".into(),
                max: LIST_SECTIONS_MAX,
                actual: sections.len(),
            });
        }
        if sections.len() > 1 {
            if let Some(i) = sections.iter().position(|s| s.title.is_none()) {
                return Err(BuildError::Empty { field: format!("sections[{i}].title") });
            }
        }
        let total: usize = sections.iter().map(|s| s.rows.len()).sum();
        if total > LIST_ROWS_MAX {
            return Err(BuildError::TooMany { field: "rows (all sections)".into(), max: LIST_ROWS_MAX, actual: total });
        }
        let mut ids = HashSet::new();
        for (s, section) in sections.iter().enumerate() {
            for (r, row) in section.rows.iter().enumerate() {
                if !ids.insert(row.id.as_str()) {
                    return Err(BuildError::Duplicate {
                        field: format!("sections[{s}].rows[{r}].id"),
                        value: row.id.clone(),
                    });
                }
            }
        }
        Ok(ListMessage { body, button, sections, header: None, footer: None })
    }

    /// Adds a text header (≤ 60; lists take text headers only).
    pub fn header(mut self, header: impl Into<String>) -> Result<Self, BuildError> {
        let header = header.into();
        limits::required("header", &header, HEADER_TEXT_MAX)?;
        self.header = Some(header);
        Ok(self)
    }

    /// Adds a footer (≤ 60).
    pub fn footer(mut self, footer: impl Into<String>) -> Result<Self, BuildError> {
        let footer = footer.into();
        check_footer(&footer)?;
        self.footer = Some(footer);
        Ok(self)
    }

    pub(crate) fn to_json(&self) -> Value {
        let sections: Vec<Value> = self
            .sections
            .iter()
            .map(|section| {
                let rows: Vec<Value> = section
                    .rows
                    .iter()
                    .map(|row| {
                        let mut r = json!({ "id": row.id, "title": row.title });
                        if let Some(d) = &row.description {
                            r["description"] = json!(d);
                        }
                        r
                    })
                    .collect();
                let mut s = json!({ "rows": rows });
                if let Some(title) = &section.title {
                    s["title"] = json!(title);
                }
                s
            })
            .collect();
        let mut interactive = json!({
            "type": "list",
            "body": body_json(&self.body),
            "action": { "button": self.button, "sections": sections },
        });
        let header = self.header.clone().map(Header::Text);
        put_header_footer(&mut interactive, &header, &self.footer);
        interactive
    }
}

/// A body (≤ 1024) with one button that opens a URL (button text ≤ 20).
///
/// ```
/// use flowcore_meta::outgoing::CtaUrl;
/// let cta = CtaUrl::new("Acompanhe seu pedido", "Rastrear", "https://example.com/track/1")?;
/// assert!(CtaUrl::new("x", "Rastrear", "javascript:alert(1)").is_err());
/// # Ok::<(), flowcore_meta::outgoing::BuildError>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CtaUrl {
    body: String,
    display_text: String,
    url: String,
    header: Option<Header>,
    footer: Option<String>,
}

impl CtaUrl {
    /// The body, the button text and the URL.
    pub fn new(
        body: impl Into<String>,
        display_text: impl Into<String>,
        url: impl Into<String>,
    ) -> Result<Self, BuildError> {
        let (body, display_text, url) = (body.into(), display_text.into(), url.into());
        check_body(&body)?;
        limits::required("display_text", &display_text, CTA_DISPLAY_TEXT_MAX)?;
        limits::link("url", &url)?;
        Ok(CtaUrl { body, display_text, url, header: None, footer: None })
    }

    /// Adds a header.
    pub fn header(mut self, header: Header) -> Self {
        self.header = Some(header);
        self
    }

    /// Adds a footer (≤ 60).
    pub fn footer(mut self, footer: impl Into<String>) -> Result<Self, BuildError> {
        let footer = footer.into();
        check_footer(&footer)?;
        self.footer = Some(footer);
        Ok(self)
    }

    pub(crate) fn to_json(&self) -> Value {
        let mut interactive = json!({
            "type": "cta_url",
            "body": body_json(&self.body),
            "action": { "name": "cta_url", "parameters": { "display_text": self.display_text, "url": self.url } },
        });
        put_header_footer(&mut interactive, &self.header, &self.footer);
        interactive
    }
}

/// A body (≤ 1024) with a button (≤ 20, no emoji) that opens a published WhatsApp Flow.
///
/// The reply comes back as an `nfm_reply` whose `response_json` carries `flow_token`.
/// Without [`navigate`](FlowMessage::navigate) the flow asks its endpoint for the first
/// screen (`data_exchange`).
///
/// ```
/// use flowcore_meta::outgoing::{FlowMessage, OutgoingMessage, Recipient};
/// let flow = FlowMessage::new("Agende sua visita", "1234567890", "Agendar", "flowcore-1")?
///     .navigate("AGENDA", &serde_json::json!({"cidade": "São Paulo"}))?;
/// let json = OutgoingMessage::new(Recipient::phone("12025550101")?, flow).to_json();
/// assert_eq!(json["interactive"]["action"]["parameters"]["flow_action_payload"]["screen"], "AGENDA");
/// assert!(FlowMessage::new("x", "1", "Agendar 📅", "t").is_err());
/// # Ok::<(), flowcore_meta::outgoing::BuildError>(())
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct FlowMessage {
    body: String,
    flow_id: String,
    cta: String,
    flow_token: String,
    screen: Option<String>,
    data: Option<Value>,
    header: Option<Header>,
    footer: Option<String>,
}

impl FlowMessage {
    /// The body, the flow's id, the button text and the token the reply will carry.
    pub fn new(
        body: impl Into<String>,
        flow_id: impl Into<String>,
        cta: impl Into<String>,
        flow_token: impl Into<String>,
    ) -> Result<Self, BuildError> {
        let (body, flow_id, cta, flow_token) = (body.into(), flow_id.into(), cta.into(), flow_token.into());
        check_body(&body)?;
        limits::id("flow_id", &flow_id, usize::MAX)?;
        limits::required("flow_cta", &cta, FLOW_CTA_MAX)?;
        limits::no_emoji("flow_cta", &cta)?;
        limits::id("flow_token", &flow_token, usize::MAX)?;
        Ok(FlowMessage { body, flow_id, cta, flow_token, screen: None, data: None, header: None, footer: None })
    }

    /// Opens the flow at `screen` with `data` (an object; `null` or `{}` sends none).
    pub fn navigate(mut self, screen: impl Into<String>, data: &Value) -> Result<Self, BuildError> {
        let screen = screen.into();
        limits::id("flow_action_payload.screen", &screen, usize::MAX)?;
        self.data = match data {
            Value::Null => None,
            Value::Object(map) if map.is_empty() => None,
            Value::Object(_) => Some(data.clone()),
            _ => {
                return Err(BuildError::Invalid {
                    field: "flow_action_payload.data".into(),
                    reason: "must be a JSON object",
                })
            }
        };
        self.screen = Some(screen);
        Ok(self)
    }

    /// Adds a header.
    pub fn header(mut self, header: Header) -> Self {
        self.header = Some(header);
        self
    }

    /// Adds a footer (≤ 60).
    pub fn footer(mut self, footer: impl Into<String>) -> Result<Self, BuildError> {
        let footer = footer.into();
        check_footer(&footer)?;
        self.footer = Some(footer);
        Ok(self)
    }

    /// The token the reply will carry.
    pub fn flow_token(&self) -> &str {
        &self.flow_token
    }

    pub(crate) fn to_json(&self) -> Value {
        let mut parameters = json!({
            "flow_message_version": FLOW_MESSAGE_VERSION,
            "flow_token": self.flow_token,
            "flow_id": self.flow_id,
            "flow_cta": self.cta,
            "flow_action": if self.screen.is_some() { "navigate" } else { "data_exchange" },
        });
        if let Some(screen) = &self.screen {
            let mut payload = json!({ "screen": screen });
            if let Some(data) = &self.data {
                payload["data"] = data.clone();
            }
            parameters["flow_action_payload"] = payload;
        }
        let mut interactive = json!({
            "type": "flow",
            "body": body_json(&self.body),
            "action": { "name": "flow", "parameters": parameters },
        });
        put_header_footer(&mut interactive, &self.header, &self.footer);
        interactive
    }
}
