//! A verified webhook body into the runtime's inbox.

use flowcore_store::runtime::{InboundPayload, Runtime};
use flowcore_store::{ConversationKey, DeliveryStatus, StoreResult};
use tracing::{debug, info, warn};

use crate::webhook::MessageEvent;
use crate::Event;

/// What one webhook body wrote.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct IntakeReport {
    /// New inbox rows.
    pub inserted: u32,
    /// Messages already in the inbox.
    pub duplicates: u32,
    /// Statuses merged into sent replies.
    pub statuses: u32,
    /// Items ignored (unknown number, unreadable item, other fields).
    pub ignored: u32,
}

/// Writes a webhook body's messages to the runtime's inbox and merges its delivery statuses.
/// Verify the body's signature first ([`verify_signature`](crate::verify_signature)).
///
/// `organization_of` names the organization that owns a business number
/// (`metadata.phone_number_id`); items for a number it does not know are ignored. Answer
/// Meta's request with `200` only once this returned `Ok`: every message is durable then. On
/// `Err`, answer 5xx so that Meta delivers the body again; messages already written are
/// recognized as duplicates then.
///
/// A body that is not a WhatsApp webhook is reported as one ignored item: Meta would deliver
/// it again forever, and it never becomes one.
pub async fn accept_webhook(
    runtime: &Runtime,
    body: &[u8],
    organization_of: impl Fn(&str) -> Option<String>,
) -> StoreResult<IntakeReport> {
    let webhook = match crate::parse(body) {
        Ok(w) => w,
        Err(e) => {
            warn!(error = %e, "webhook body is not a WhatsApp webhook; ignored");
            return Ok(IntakeReport { ignored: 1, ..IntakeReport::default() });
        }
    };
    let mut report = IntakeReport::default();
    for event in webhook.events() {
        match event {
            Event::Message(m) => match conversation_of(m, &organization_of) {
                Some(conversation) => {
                    if runtime.accept(conversation, &payload_of(m)).await?.is_duplicate() {
                        report.duplicates += 1;
                    } else {
                        report.inserted += 1;
                    }
                }
                None => report.ignored += 1,
            },
            Event::Status(s) => {
                let number = s.business.phone_number_id.as_ref();
                let Some(org) = organization_of(number) else {
                    info!(phone_number_id = number, "status for an unknown business number ignored");
                    report.ignored += 1;
                    continue;
                };
                let Some(status) = DeliveryStatus::parse(s.status.status.as_str()) else {
                    // `played` and future statuses have no place in the merge order.
                    debug!(status = s.status.status.as_str(), "status kind not recorded");
                    report.ignored += 1;
                    continue;
                };
                if status == DeliveryStatus::Failed {
                    let codes: Vec<i64> = s.status.errors.iter().map(|e| e.code).collect();
                    warn!(wamid = %s.status.id, ?codes, "Meta reports a reply failed");
                }
                if runtime.accept_status(&org, &s.status.id, status, s.status.timestamp).await? {
                    report.statuses += 1;
                } else {
                    debug!(wamid = %s.status.id, "status for a message this store did not send");
                    report.ignored += 1;
                }
            }
            Event::Error(e) => {
                warn!(code = e.error.code, phone_number_id = %e.business.phone_number_id, "Meta reports an error");
                report.ignored += 1;
            }
            Event::Unparsed { item, error, .. } => {
                warn!(?item, %error, "webhook item could not be read; ignored");
                report.ignored += 1;
            }
            _ => report.ignored += 1,
        }
    }
    Ok(report)
}

fn conversation_of(m: &MessageEvent<'_>, organization_of: &impl Fn(&str) -> Option<String>) -> Option<ConversationKey> {
    let Some((number, contact)) = m.conversation_key() else {
        warn!(wamid = %m.message.id, "message without a sender id ignored");
        return None;
    };
    let Some(org) = organization_of(number) else {
        info!(phone_number_id = number, "message for an unknown business number ignored");
        return None;
    };
    Some(ConversationKey::new(org, number, contact))
}

fn payload_of(m: &MessageEvent<'_>) -> InboundPayload {
    InboundPayload {
        input: crate::to_input(m),
        wamid: m.message.id.to_string(),
        sent_at: m.message.timestamp,
        contact_name: m.contact.as_ref().and_then(|c| c.profile.name.as_ref()).map(|n| n.to_string()),
        kind: m.message.content.kind().to_owned(),
    }
}
