//! Which organization and flow answer an inbound message.
//!
//! By `metadata.phone_number_id` → the business number → its `default_chatbot` → that
//! chatbot's flow (or its A/B variant for this contact); else the organization's fallback
//! chatbot; else the "not configured" reply. An unknown `phone_number_id` is ignored.

use std::collections::HashMap;

use async_trait::async_trait;
use flowcore::Message;
use flowcore_store::runtime::{FlowChoice, FlowChooser, InboundPayload};
use flowcore_store::ConversationKey;
use serde_json::json;
use sha2::{Digest, Sha256};
use tracing::debug;

use super::config::{ConfigFile, DEFAULT_NOT_CONFIGURED_REPLY};

/// The routing table, built once from the config.
#[derive(Clone, Debug)]
pub struct Router {
    numbers: HashMap<String, NumberRoute>,
    chatbots: HashMap<(String, String), ChatbotRoute>,
    fallbacks: HashMap<String, String>,
    not_configured_reply: String,
}

#[derive(Clone, Debug)]
struct NumberRoute {
    organization: String,
    default_chatbot: Option<String>,
}

#[derive(Clone, Debug)]
struct ChatbotRoute {
    flow: String,
    variants: Vec<(String, u32)>,
}

/// Where a message goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Route {
    /// Run this flow.
    Flow {
        /// The organization.
        organization: String,
        /// The chatbot that was chosen.
        chatbot: String,
        /// The flow id (the A/B variant when the chatbot has a test).
        flow: String,
        /// The A/B variant name (the flow id) when the chatbot runs a test.
        variant: Option<String>,
        /// Whether the organization's fallback chatbot was used.
        fallback: bool,
    },
    /// The number is known but nothing answers it: send this reply.
    NotConfigured {
        /// The organization.
        organization: String,
        /// The polite reply.
        reply: String,
    },
    /// The `phone_number_id` is not in the config: log and ignore.
    UnknownNumber,
}

impl Router {
    /// Builds the table from a validated config.
    pub fn new(file: &ConfigFile) -> Self {
        let numbers = file
            .numbers
            .iter()
            .map(|n| {
                (
                    n.phone_number_id.clone(),
                    NumberRoute { organization: n.organization.clone(), default_chatbot: n.default_chatbot.clone() },
                )
            })
            .collect();
        let chatbots = file
            .chatbots
            .iter()
            .map(|b| {
                (
                    (b.organization.clone(), b.id.clone()),
                    ChatbotRoute {
                        flow: b.flow.clone(),
                        variants: b.ab_test_flows.iter().map(|v| (v.flow.clone(), v.weight)).collect(),
                    },
                )
            })
            .collect();
        let fallbacks =
            file.chatbots.iter().filter(|b| b.is_fallback).map(|b| (b.organization.clone(), b.id.clone())).collect();
        Router {
            numbers,
            chatbots,
            fallbacks,
            not_configured_reply: file
                .not_configured_reply
                .clone()
                .unwrap_or_else(|| DEFAULT_NOT_CONFIGURED_REPLY.to_owned()),
        }
    }

    /// The organization owning a business number.
    pub fn organization_of(&self, phone_number_id: &str) -> Option<&str> {
        self.numbers.get(phone_number_id).map(|n| n.organization.as_str())
    }

    /// Routes a message that arrived on `phone_number_id` from `contact`.
    pub fn route(&self, phone_number_id: &str, contact: &str) -> Route {
        let Some(number) = self.numbers.get(phone_number_id) else {
            return Route::UnknownNumber;
        };
        let org = &number.organization;
        let (chatbot, fallback) = match &number.default_chatbot {
            Some(bot) => (Some(bot), false),
            None => (self.fallbacks.get(org), true),
        };
        let Some(chatbot) = chatbot else {
            return Route::NotConfigured { organization: org.clone(), reply: self.not_configured_reply.clone() };
        };
        let bot = self.chatbots.get(&(org.clone(), chatbot.clone())).expect("config validation resolved every chatbot");
        let (flow, variant) = if bot.variants.is_empty() {
            (bot.flow.clone(), None)
        } else {
            let v = pick_variant(&bot.variants, &[org.as_str(), chatbot.as_str(), contact]);
            (v.clone(), Some(v.clone()))
        };
        Route::Flow { organization: org.clone(), chatbot: chatbot.clone(), flow, variant, fallback }
    }
}

/// The runtime's flow for a new conversation: the route of its business number, with the
/// chatbot (and its A/B variant) as session variables and the variant as the cohort.
#[async_trait]
impl FlowChooser for Router {
    async fn choose(&self, conversation: &ConversationKey, _first: &InboundPayload) -> FlowChoice {
        match self.route(&conversation.business_number_id, &conversation.contact_id) {
            Route::Flow { flow, variant, fallback, chatbot, .. } => {
                debug!(org = %conversation.org_id, chatbot = %chatbot, flow = %flow, ?variant, fallback, "route");
                let mut variables = serde_json::Map::new();
                variables.insert("chatbot".into(), json!(chatbot));
                if let Some(v) = &variant {
                    variables.insert("ab_variant".into(), json!(v));
                }
                let cohort = variant.as_deref().map(|v| ab_cohort(&chatbot, v));
                FlowChoice::Start { flow_id: flow, variables, cohort }
            }
            Route::NotConfigured { reply, .. } => FlowChoice::Reply(Message::Text { text: reply }),
            Route::UnknownNumber => FlowChoice::Ignore,
        }
    }
}

/// The store cohort of an A/B test's variant: the chatbot and the variant's flow, as a JSON
/// array (unambiguous whatever the ids contain). Analytics count sessions per cohort.
pub fn ab_cohort(chatbot: &str, variant_flow: &str) -> String {
    serde_json::to_string(&[chatbot, variant_flow]).expect("two strings")
}

/// A weighted choice by a stable hash of `key`: the same contact gets the same variant in
/// every process and release (SHA-256, not the std hasher, whose seed is random).
pub fn pick_variant<'v>(variants: &'v [(String, u32)], key: &[&str]) -> &'v String {
    let total: u64 = variants.iter().map(|(_, w)| u64::from(*w)).sum();
    let mut hasher = Sha256::new();
    for part in key {
        hasher.update(part.as_bytes());
        hasher.update([0u8]);
    }
    let digest = hasher.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    let mut point = u64::from_be_bytes(first) % total.max(1);
    for (flow, weight) in variants {
        if point < u64::from(*weight) {
            return flow;
        }
        point -= u64::from(*weight);
    }
    &variants.last().expect("a test has at least one variant").0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn router() -> Router {
        let file: ConfigFile = toml::from_str(
            r#"
            not_configured_reply = "not yet"
            [[organizations]]
            id = "acme"
            api_token = "acme-token"
            [[organizations]]
            id = "globex"
            api_token = "globex-token"
            [[organizations]]
            id = "initech"
            api_token = "initech-token"
            [[flows]]
            id = "a"
            organization = "acme"
            path = "a.json"
            [[flows]]
            id = "b"
            organization = "acme"
            path = "b.json"
            [[chatbots]]
            id = "main"
            organization = "acme"
            flow = "a"
            [[chatbots]]
            id = "ab"
            organization = "acme"
            flow = "a"
            is_fallback = true
            ab_test_flows = [{ flow = "a", weight = 1 }, { flow = "b", weight = 1 }]
            [[numbers]]
            phone_number_id = "1"
            display_phone_number = "1"
            organization = "acme"
            default_chatbot = "main"
            [[numbers]]
            phone_number_id = "2"
            display_phone_number = "2"
            organization = "acme"
            [[numbers]]
            phone_number_id = "3"
            display_phone_number = "3"
            organization = "initech"
            "#,
        )
        .unwrap();
        Router::new(&file)
    }

    #[test]
    fn routes_by_business_number_then_fallback_then_reply() {
        let r = router();
        assert_eq!(
            r.route("1", "5511"),
            Route::Flow {
                organization: "acme".into(),
                chatbot: "main".into(),
                flow: "a".into(),
                variant: None,
                fallback: false
            }
        );
        match r.route("2", "5511") {
            Route::Flow { chatbot, fallback: true, variant: Some(_), .. } => assert_eq!(chatbot, "ab"),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            r.route("3", "5511"),
            Route::NotConfigured { organization: "initech".into(), reply: "not yet".into() }
        );
        assert_eq!(r.route("9", "5511"), Route::UnknownNumber);
    }

    #[test]
    fn ab_variant_is_stable_and_splits_by_weight() {
        let r = router();
        let flow_of = |contact: &str| match r.route("2", contact) {
            Route::Flow { flow, .. } => flow,
            other => panic!("{other:?}"),
        };
        assert_eq!(flow_of("5511999"), flow_of("5511999"));
        let b = (0..1000).filter(|i| flow_of(&format!("55{i}")) == "b").count();
        assert!((400..600).contains(&b), "{b} of 1000 got b");
        // Pinned so that a change of hash (which would reshuffle live tests) fails here.
        let variants = vec![("x".to_owned(), 1), ("y".to_owned(), 3)];
        let picks: String = (0..8).map(|i| pick_variant(&variants, &["org", "bot", &i.to_string()]).clone()).collect();
        assert_eq!(picks, "yyyyyxyy");
    }
}
