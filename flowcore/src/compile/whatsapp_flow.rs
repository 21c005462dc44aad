//! The `whatsapp_flow` node: compiling it, the message it sends, the token that ties the
//! reply to the message, and the reply it takes.
//!
//! The node sends Meta's interactive `flow` message, then waits for the contact to submit
//! the flow. Its `flow_token` comes from the session's random generator, so a replay
//! sends the same token; the generator does not move while the node waits, so the token
//! the reply must carry is recomputed from the state instead of being stored. A reply
//! with another token (an older flow message, another node's) is an invalid answer.

use serde_json::{Map, Value};

use super::{Kind, Nx, Wait};
use crate::template::{JsonTemplate, Template};
use crate::value::Scope;
use crate::{Input, Message};

/// Meta's limit on the flow button's text (it may not hold emoji either).
pub(crate) const FLOW_CTA_MAX: usize = 20;
/// Meta's limit on an interactive message's body.
pub(crate) const BODY_MAX: usize = 1024;
/// Meta's limit on an interactive header or footer text.
pub(crate) const HEADER_FOOTER_MAX: usize = 60;
/// Sent when the contact answers a flow message with something else.
pub(crate) const FLOW_ERROR_TEXT: &str = "Por favor, toque no botão da mensagem para preencher o formulário.";

/// A compiled `whatsapp_flow` node.
pub(crate) struct WhatsappFlow {
    pub(crate) header: Option<Template>,
    pub(crate) body: Template,
    pub(crate) footer: Option<Template>,
    pub(crate) flow_id: Template,
    pub(crate) cta: Template,
    pub(crate) screen: Option<Template>,
    pub(crate) data: JsonTemplate,
    pub(crate) wait: Wait,
}

impl WhatsappFlow {
    /// The message to send, every template rendered, carrying `flow_token`.
    pub(crate) fn message(&self, scope: &Scope<'_>, flow_token: String) -> Message {
        Message::Flow {
            header: self.header.as_ref().map(|t| t.render(scope)).filter(|h| !h.is_empty()),
            body: self.body.render(scope),
            footer: self.footer.as_ref().map(|t| t.render(scope)).filter(|f| !f.is_empty()),
            flow_id: self.flow_id.render(scope),
            cta: self.cta.render(scope),
            flow_token,
            screen: self.screen.as_ref().map(|t| t.render(scope)),
            data: self.data.render(scope),
        }
    }

    /// A short description for diagrams.
    pub(crate) fn summary(&self) -> String {
        format!("flow {} → {}", self.flow_id, self.wait.var)
    }
}

/// The token for a flow message sent when the session's generator is at `state`.
///
/// Not a secret: it only ties a reply to the message that asked for it.
pub(crate) fn flow_token(state: u64) -> String {
    // The splitmix64 finaliser: neighbouring states give unrelated tokens.
    let mut z = state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    format!("flowcore-{:016x}", z ^ (z >> 31))
}

/// The value a node waiting with `expected` token stores for `input`: the reply's
/// answers. `None` for any other input, and for a reply with another or no token.
pub(crate) fn accept_reply(input: &Input, expected: &str) -> Option<Value> {
    let Input::FlowReply { flow_token: Some(token), response } = input else { return None };
    if token != expected {
        return None;
    }
    Some(match response {
        Value::Object(map) => {
            let answers: Map<String, Value> =
                map.iter().filter(|(k, _)| k.as_str() != "flow_token").map(|(k, v)| (k.clone(), v.clone())).collect();
            Value::Object(answers)
        }
        other => other.clone(),
    })
}

/// Whether `text` holds a character Meta refuses in a flow button (emoji and pictographs).
fn has_emoji(text: &str) -> bool {
    text.chars().any(|c| {
        matches!(u32::from(c),
            0x1F000..=0x1FAFF | 0x2600..=0x27BF | 0x2B00..=0x2BFF | 0xFE0F | 0x200D | 0x2300..=0x23FF)
    })
}

impl Nx<'_, '_> {
    /// Reads a `whatsapp_flow` node: `flowId`, `cta`, `content` (the body), optional
    /// `header`, `footer`, `screen` and `data`, and the waiting settings of a question.
    pub(super) fn whatsapp_flow(&mut self) -> (Kind, Option<u32>) {
        let var = self.required_var("whatsapp_flow node").unwrap_or_default();
        let flow_id = self.template(&["flowId", "flow_id", "id"]);
        if flow_id.is_none() {
            self.error("missing-field", "the whatsapp_flow node has no `flowId`");
        }
        let cta = self.template(&["cta", "flowCta", "buttonText", "button"]);
        match cta.as_ref().map(Template::literal) {
            None => self.error("missing-field", "the whatsapp_flow node has no `cta` (the button text)"),
            Some(Some(text)) if text.chars().count() > FLOW_CTA_MAX => {
                let text = text.to_string();
                self.error(
                    "flow-cta-too-long",
                    format!("the flow button {text:?} is longer than {FLOW_CTA_MAX} characters"),
                );
            }
            Some(Some(text)) if has_emoji(text) => {
                let text = text.to_string();
                self.error("flow-cta-emoji", format!("the flow button {text:?} has an emoji; WhatsApp refuses them"));
            }
            // A templated button is checked by the adapter once rendered.
            Some(_) => {}
        }
        let body = self.template(&["content", "body", "message", "text"]);
        if body.is_none() {
            self.error("missing-content", "the whatsapp_flow node has no `content` (WhatsApp requires a body)");
        }
        let header = self.template(&["header"]);
        let footer = self.template(&["footer"]);
        self.check_length(body.as_ref(), "body", "body-too-long", BODY_MAX);
        self.check_length(header.as_ref(), "header", "header-too-long", HEADER_FOOTER_MAX);
        self.check_length(footer.as_ref(), "footer", "footer-too-long", HEADER_FOOTER_MAX);
        let screen = self.template(&["screen", "screenId", "initialScreen"]);
        let data = match self.raw(&["data", "initialData", "flowData"]) {
            None => JsonTemplate::Lit(Value::Null),
            Some((_, Value::Object(_))) if screen.is_none() => {
                self.error("flow-data-without-screen", "the flow's `data` needs a `screen` to open with it");
                JsonTemplate::Lit(Value::Null)
            }
            Some((key, Value::Object(_))) => self.json_template(&[key]),
            Some((key, other)) => {
                self.error("invalid-field", format!("`{key}` must be an object, found {other}"));
                JsonTemplate::Lit(Value::Null)
            }
        };
        let wait = self.wait(var);
        let next = self.default_edge(&["invalid", "timeout"]);
        match (flow_id, cta, body) {
            (Some(flow_id), Some(cta), Some(body)) => {
                let node = WhatsappFlow { header, body, footer, flow_id, cta, screen, data, wait };
                (Kind::WhatsappFlow(Box::new(node)), next)
            }
            _ => (Kind::Invalid, None),
        }
    }

    /// Errors when a template without variables is longer than `max` characters (a
    /// template with variables is checked by the adapter once rendered).
    fn check_length(&mut self, t: Option<&Template>, field: &str, code: &'static str, max: usize) {
        let Some(text) = t.and_then(Template::literal) else { return };
        let count = text.chars().count();
        if count > max {
            self.error(code, format!("the {field} is {count} characters; WhatsApp allows {max}"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_stable_and_distinct() {
        assert_eq!(flow_token(7), flow_token(7));
        assert_ne!(flow_token(7), flow_token(8));
        assert!(flow_token(0).starts_with("flowcore-") && flow_token(0).len() == "flowcore-".len() + 16);
    }

    #[test]
    fn emoji_table() {
        for (text, expected) in
            [("Agendar", false), ("Ação já", false), ("Agendar 📅", true), ("OK ✅", true), ("❤️", true)]
        {
            assert_eq!(has_emoji(text), expected, "{text}");
        }
    }

    #[test]
    fn replies_count_only_with_the_expected_token() {
        let reply = |token: Option<&str>| Input::FlowReply {
            flow_token: token.map(str::to_string),
            response: serde_json::json!({"flow_token": "x", "nota": "5"}),
        };
        assert_eq!(accept_reply(&reply(Some("t")), "t"), Some(serde_json::json!({"nota": "5"})));
        assert_eq!(accept_reply(&reply(Some("u")), "t"), None);
        assert_eq!(accept_reply(&reply(None), "t"), None);
        assert_eq!(accept_reply(&Input::text("5"), "t"), None);
    }
}
