//! From a verified webhook body to inbox rows and recorded statuses.
//!
//! `200` is answered only after every message of the body is durably in the inbox (a
//! duplicate wamid counts as already there); a store failure answers `503` so that Meta
//! delivers the body again later.

use flowcore::{Input, Timestamp};
use flowcore_meta::webhook::MessageEvent;
use flowcore_meta::Event;
use flowcore_store::{ConversationKey, DeliveryStatus, NewInboxEvent};
use serde::{Deserialize, Serialize};
use tracing::{debug, info, warn};

use super::error::ApiError;
use super::state::{AppState, Stats};
use super::util;

/// What an inbox row of kind `message` carries.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct InboundPayload {
    /// The engine input.
    pub input: Input,
    /// Meta's message id.
    pub wamid: String,
    /// When the contact sent it (Meta's clock).
    pub sent_at: Timestamp,
    /// The contact's profile name, if Meta sent it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contact_name: Option<String>,
    /// The message type as Meta named it.
    pub kind: String,
}

/// What an inbox row of kind `wake_up` carries.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WakePayload {
    /// The flow of the session to wake.
    pub flow_id: String,
    /// The wake-up time the session asked for; a session that no longer asks for it
    /// (it moved on) ignores the wake-up.
    pub wake_at: Timestamp,
}

/// What the webhook wrote.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct IntakeReport {
    /// New inbox rows.
    pub inserted: u32,
    /// Messages already in the inbox.
    pub duplicates: u32,
    /// Statuses merged into sent messages.
    pub statuses: u32,
    /// Items ignored (unknown number, unreadable item, other fields).
    pub ignored: u32,
}

/// Writes a verified body's events to the store.
pub async fn accept(state: &AppState, body: &[u8]) -> Result<IntakeReport, ApiError> {
    let webhook = match flowcore_meta::parse(body) {
        Ok(w) => w,
        Err(e) => {
            // Meta would redeliver a non-2xx forever; a body that is not a webhook never
            // becomes one, so it is acknowledged and logged.
            warn!(error = %e, "webhook body is not a WhatsApp webhook; ignored");
            return Ok(IntakeReport { ignored: 1, ..IntakeReport::default() });
        }
    };
    let now = util::now();
    let mut report = IntakeReport::default();
    let mut inserted_any = false;
    for event in webhook.events() {
        match event {
            Event::Message(m) => match inbox_event(state, m, now) {
                Some(row) => {
                    let result = state.store.insert_inbox(row).await.map_err(ApiError::store)?;
                    if result.is_duplicate() {
                        report.duplicates += 1;
                        Stats::bump(&state.stats.duplicates);
                        debug!(wamid = %m.message.id, "duplicate delivery ignored");
                    } else {
                        report.inserted += 1;
                        inserted_any = true;
                        Stats::bump(&state.stats.messages_accepted);
                    }
                }
                None => report.ignored += 1,
            },
            Event::Status(s) => {
                let pnid = s.business.phone_number_id.as_ref();
                let Some(org) = state.tenants.router.organization_of(pnid) else {
                    info!(phone_number_id = pnid, "status for an unknown business number ignored");
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
                let known = state
                    .store
                    .record_delivery(org, &s.status.id, status, s.status.timestamp)
                    .await
                    .map_err(ApiError::store)?;
                if known {
                    report.statuses += 1;
                    Stats::bump(&state.stats.statuses);
                } else {
                    debug!(wamid = %s.status.id, "status for a message this server did not send");
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
    if inserted_any {
        state.inbox_ready.notify_one();
    }
    Ok(report)
}

fn inbox_event(state: &AppState, m: &MessageEvent<'_>, now: Timestamp) -> Option<NewInboxEvent> {
    let Some((pnid, contact)) = m.conversation_key() else {
        warn!(wamid = %m.message.id, "message without a sender id ignored");
        return None;
    };
    let Some(org) = state.tenants.router.organization_of(pnid) else {
        info!(phone_number_id = pnid, "message for an unknown business number ignored");
        return None;
    };
    let payload = InboundPayload {
        input: flowcore_meta::to_input(m),
        wamid: m.message.id.to_string(),
        sent_at: m.message.timestamp,
        contact_name: m.contact.as_ref().and_then(|c| c.profile.name.as_ref()).map(|n| n.to_string()),
        kind: m.message.content.kind().to_owned(),
    };
    let conversation = ConversationKey::new(org, pnid, contact);
    Some(NewInboxEvent::message(
        conversation,
        m.message.id.to_string(),
        serde_json::to_value(&payload).expect("the payload is plain data"),
        now,
    ))
}

/// A readable one-line summary of an input, for the message log and the API.
pub fn input_text(input: &Input) -> String {
    match input {
        Input::Text { text } => text.clone(),
        Input::Choice { id, title } => title.clone().unwrap_or_else(|| id.clone()),
        Input::Media { kind, caption, .. } => match caption {
            Some(c) => format!("[{}] {c}", kind.as_str()),
            None => format!("[{}]", kind.as_str()),
        },
        Input::Location { latitude, longitude, name, .. } => match name {
            Some(n) => format!("[location] {n}"),
            None => format!("[location] {latitude},{longitude}"),
        },
        Input::Contacts { .. } => "[contacts]".to_owned(),
        Input::Unsupported { kind } => format!("[{kind}]"),
        Input::EffectResult { .. } => "[effect result]".to_owned(),
        Input::Tick => "[timer]".to_owned(),
        _ => "[event]".to_owned(),
    }
}
