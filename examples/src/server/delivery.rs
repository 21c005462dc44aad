//! How the server's replies leave: through the Graph API, or into the log in demo mode.

use async_trait::async_trait;
use flowcore::Message;
use flowcore_meta::runtime::{split_message, WhatsAppDelivery};
use flowcore_meta::{ReqwestTransport, RetryPolicy};
use flowcore_store::runtime::{redact_contact, Delivery, DeliveryOutcome, Reply};
use tracing::info;

use super::env::EnvSettings;
use super::state::Tenants;

/// The Graph API delivery: one client per configured number (its own token, else
/// `META_ACCESS_TOKEN`; a number with neither fails its replies), paced at the number's
/// `messages_per_second`, failures retried as `FLOWCORE_SEND_BACKOFF_MS` and Meta's table say.
pub fn graph(tenants: &Tenants, settings: &EnvSettings, graph_api_base: &str) -> WhatsAppDelivery<ReqwestTransport> {
    let mut policy = RetryPolicy::default();
    policy.max_attempts = settings.send_max_attempts;
    policy.base_delay = settings.send_backoff;
    let mut delivery = WhatsAppDelivery::new(ReqwestTransport::new(), policy).base_url(graph_api_base);
    for (id, number) in &tenants.numbers {
        if let Some(token) = number.access_token.clone().or_else(|| settings.access_token.clone()) {
            delivery = delivery.number(id.clone(), token, number.messages_per_second);
        }
    }
    delivery
}

/// Demo delivery: the log is where a reply goes, so it shows the text; nothing leaves the
/// machine, and each reply is recorded as sent.
pub struct LogDelivery;

#[async_trait]
impl Delivery for LogDelivery {
    async fn deliver(&self, reply: &Reply<'_>) -> DeliveryOutcome {
        info!(
            to = %redact_contact(&reply.conversation.contact_id),
            phone_number_id = %reply.conversation.business_number_id,
            reply = %preview(reply.message),
            "reply (log-only transport, not sent to Meta)"
        );
        DeliveryOutcome::Sent(format!("wamid.log-{}", reply.outbox_id))
    }

    fn split(&self, message: Message) -> Vec<Message> {
        split_message(message)
    }
}

fn preview(message: &Message) -> String {
    let text = match message {
        Message::Text { text } => text.clone(),
        Message::Buttons { body, buttons, .. } => {
            format!("{body} [{}]", buttons.iter().map(|b| b.title.as_str()).collect::<Vec<_>>().join(" | "))
        }
        Message::List { body, button, .. } => format!("{body} [{button}]"),
        Message::Media { kind, caption, .. } => format!("[{}] {}", kind.as_str(), caption.as_deref().unwrap_or("")),
        Message::Template { name, .. } => format!("[template {name}]"),
        _ => "[message]".to_owned(),
    };
    text.chars().take(200).collect()
}
