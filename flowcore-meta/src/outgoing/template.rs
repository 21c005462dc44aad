//! Template messages (required outside the 24-hour customer-service window).

use serde_json::{json, Map, Value};

use super::basic::MediaSource;
use super::limits::{self, BuildError, TEMPLATE_NAME_MAX};

/// A pre-approved template with its parameters.
///
/// ```
/// use flowcore_meta::outgoing::{Template, TemplateComponent, TemplateParameter};
/// let t = Template::new("order_update", "pt_BR")?
///     .component(TemplateComponent::body([TemplateParameter::text("Ana")?, TemplateParameter::text("#1234")?]))
///     .component(TemplateComponent::quick_reply_button(0, "CONFIRMAR_PEDIDO")?);
/// assert!(Template::new("Bad Name", "pt_BR").is_err());
/// # Ok::<(), flowcore_meta::outgoing::BuildError>(())
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct Template {
    name: String,
    language: String,
    components: Vec<Value>,
}

impl Template {
    /// The template's name (lowercase letters, digits and `_`) and language code (`pt_BR`).
    pub fn new(name: impl Into<String>, language: impl Into<String>) -> Result<Self, BuildError> {
        let (name, language) = (name.into(), language.into());
        limits::required("template name", &name, TEMPLATE_NAME_MAX)?;
        if !name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_') {
            return Err(BuildError::Invalid {
                field: "template name".into(),
                reason: "only lowercase letters, digits and underscores",
            });
        }
        limits::required("template language", &language, 15)?;
        if !language.bytes().all(|b| b.is_ascii_alphabetic() || b == b'_') {
            return Err(BuildError::Invalid {
                field: "template language".into(),
                reason: "a code such as en or pt_BR",
            });
        }
        Ok(Template { name, language, components: Vec::new() })
    }

    /// Adds a component.
    pub fn component(mut self, component: TemplateComponent) -> Self {
        self.components.push(component.0);
        self
    }

    /// Adds components already in Meta's JSON shape (an array of objects, or `null` for
    /// none), as flows store them.
    pub fn raw_components(mut self, components: &Value) -> Result<Self, BuildError> {
        match components {
            Value::Null => Ok(self),
            Value::Array(items) if items.iter().all(Value::is_object) => {
                self.components.extend(items.iter().cloned());
                Ok(self)
            }
            _ => {
                Err(BuildError::Invalid { field: "template components".into(), reason: "must be an array of objects" })
            }
        }
    }

    pub(crate) fn to_json(&self) -> Value {
        let mut template = json!({ "name": self.name, "language": { "code": self.language } });
        if !self.components.is_empty() {
            template["components"] = Value::Array(self.components.clone());
        }
        template
    }
}

/// A template component: header or body parameters, or a button's parameter.
#[derive(Clone, Debug, PartialEq)]
pub struct TemplateComponent(Value);

impl TemplateComponent {
    /// Header parameters.
    pub fn header(parameters: impl IntoIterator<Item = TemplateParameter>) -> Self {
        Self::with_parameters("header", parameters)
    }

    /// Body parameters.
    pub fn body(parameters: impl IntoIterator<Item = TemplateParameter>) -> Self {
        Self::with_parameters("body", parameters)
    }

    fn with_parameters(kind: &str, parameters: impl IntoIterator<Item = TemplateParameter>) -> Self {
        let parameters: Vec<Value> = parameters.into_iter().map(|p| p.0).collect();
        TemplateComponent(json!({ "type": kind, "parameters": parameters }))
    }

    /// The payload of the quick-reply button at `index` (0–9), returned in the `button`
    /// webhook when tapped.
    pub fn quick_reply_button(index: u8, payload: impl Into<String>) -> Result<Self, BuildError> {
        let payload = payload.into();
        limits::required("button payload", &payload, 1000)?;
        Self::button(index, "quick_reply", json!({ "type": "payload", "payload": payload }))
    }

    /// The dynamic suffix of the URL button at `index` (0–9).
    pub fn url_button(index: u8, text: impl Into<String>) -> Result<Self, BuildError> {
        let text = text.into();
        limits::required("button url text", &text, 2000)?;
        Self::button(index, "url", json!({ "type": "text", "text": text }))
    }

    fn button(index: u8, sub_type: &str, parameter: Value) -> Result<Self, BuildError> {
        if index > 9 {
            return Err(BuildError::Invalid { field: "button index".into(), reason: "must be 0 to 9" });
        }
        Ok(TemplateComponent(json!({
            "type": "button", "sub_type": sub_type, "index": index.to_string(), "parameters": [parameter],
        })))
    }
}

/// A template parameter.
#[derive(Clone, Debug, PartialEq)]
pub struct TemplateParameter(Value);

impl TemplateParameter {
    /// A text parameter (non-blank, ≤ 32768 characters).
    pub fn text(text: impl Into<String>) -> Result<Self, BuildError> {
        let text = text.into();
        limits::required("template parameter", &text, 32_768)?;
        Ok(TemplateParameter(json!({ "type": "text", "text": text })))
    }

    /// A named text parameter (`{{customer_name}}` templates).
    pub fn named_text(name: impl Into<String>, text: impl Into<String>) -> Result<Self, BuildError> {
        let (name, text) = (name.into(), text.into());
        limits::id("template parameter_name", &name, 512)?;
        let mut parameter = Self::text(text)?;
        parameter.0["parameter_name"] = json!(name);
        Ok(parameter)
    }

    /// A currency amount: the text shown when the amount cannot be localised, the ISO
    /// 4217 code, and the amount times 1000.
    pub fn currency(fallback: impl Into<String>, code: &str, amount_1000: i64) -> Result<Self, BuildError> {
        let fallback = fallback.into();
        limits::required("currency fallback_value", &fallback, 1024)?;
        if code.len() != 3 || !code.bytes().all(|b| b.is_ascii_uppercase()) {
            return Err(BuildError::Invalid { field: "currency code".into(), reason: "an ISO 4217 code such as BRL" });
        }
        Ok(TemplateParameter(json!({
            "type": "currency",
            "currency": { "fallback_value": fallback, "code": code, "amount_1000": amount_1000 },
        })))
    }

    /// A date/time shown as `fallback`.
    pub fn date_time(fallback: impl Into<String>) -> Result<Self, BuildError> {
        let fallback = fallback.into();
        limits::required("date_time fallback_value", &fallback, 1024)?;
        Ok(TemplateParameter(json!({ "type": "date_time", "date_time": { "fallback_value": fallback } })))
    }

    /// An image (header).
    pub fn image(source: MediaSource) -> Self {
        Self::media("image", source, None)
    }

    /// A video (header).
    pub fn video(source: MediaSource) -> Self {
        Self::media("video", source, None)
    }

    /// A document (header), with an optional file name.
    pub fn document(source: MediaSource, filename: Option<&str>) -> Self {
        Self::media("document", source, filename)
    }

    fn media(kind: &str, source: MediaSource, filename: Option<&str>) -> Self {
        let mut media: Map<String, Value> = source.to_json();
        if let Some(filename) = filename {
            media.insert("filename".into(), json!(filename));
        }
        TemplateParameter(json!({ "type": kind, kind: media }))
    }
}
