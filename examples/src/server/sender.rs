//! The outbox sender: claims due replies (one per conversation at a time, in order), sends
//! them through the Graph API (or the log, in demo mode), and marks them sent, reschedules
//! them with exponential backoff, or fails them for good on a permanent Meta error.

use std::time::Duration;

use std::collections::HashMap;

use flowcore::Message;
use flowcore_meta::outgoing::Recipient;
use flowcore_meta::{to_outgoing, ApiError as MetaApiError, MetaClient, ReqwestTransport, RetryAdvice, RetryPolicy};
use flowcore_store::{ClaimRequest, OutboxMessage, StoreError};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tracing::{debug, error, info, warn};

use super::env::OutboundMode;
use super::state::{AppState, HandedOver, Stats};
use super::util;

/// What an outbox row carries.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct OutboxPayload {
    /// The message, rendered.
    pub message: Message,
    /// The flow node that produced it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// Sent by an operator through the API.
    #[serde(default)]
    pub manual: bool,
}

/// How one send attempt ended.
#[derive(Debug, Clone, PartialEq)]
pub enum SendOutcome {
    /// Meta accepted it with this id.
    Sent(String),
    /// Try again (after at least `after`, when Meta said).
    Retry {
        /// Why.
        reason: String,
        /// Meta's own wait, when it gave one.
        after: Option<Duration>,
    },
    /// Never retry.
    Permanent(String),
}

/// How many sends may be in flight at once (each to a different conversation).
const MAX_IN_FLIGHT: usize = 64;

/// Runs the sender until `shutdown` turns true.
///
/// A pipeline rather than batches: whenever sends finish, more rows are claimed, so one
/// slow send never holds up the others. Replies a turn claimed as it committed them arrive
/// on `handed_over`, each turn's in the order they must go.
pub async fn run(
    state: AppState,
    mut handed_over: mpsc::UnboundedReceiver<HandedOver>,
    mut shutdown: watch::Receiver<bool>,
) {
    let clients = std::sync::Arc::new(Clients::new(&state));
    let policy = std::sync::Arc::new(retry_policy(&state));
    let mut tasks = JoinSet::new();
    let start_in_order = |tasks: &mut JoinSet<()>, handed: HandedOver| {
        let (state, clients, policy) = (state.clone(), clients.clone(), policy.clone());
        tasks.spawn(async move {
            send_in_order(&state, &clients, &policy, handed.replies).await;
            drop(handed.done);
        });
    };
    // Whether a claim may find something: a turn left replies to one, a claim came back
    // full, or the poll interval passed (retries fall due, leases lapse). Most replies are
    // handed over, and a claim that finds nothing still costs the database a round trip.
    let mut claim_wanted = true;
    let mut poll = tokio::time::interval(state.settings.poll_interval);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        while tasks.try_join_next().is_some() {}
        if *shutdown.borrow() {
            break;
        }
        // Handed-over replies are claimed already: they start at once, whatever is in flight.
        while let Ok(handed) = handed_over.try_recv() {
            start_in_order(&mut tasks, handed);
        }
        let free = MAX_IN_FLIGHT.saturating_sub(tasks.len());
        // Claims scan the queue, so they are batched: with sends in flight, claim again
        // only once a quarter of the slots are free.
        let batch = if !claim_wanted || free == 0 || (free < MAX_IN_FLIGHT / 4 && !tasks.is_empty()) {
            Vec::new()
        } else {
            let limit = u32::try_from(free).unwrap_or(1);
            let request = ClaimRequest::any(util::now(), state.settings.lease, limit);
            match state.store.claim_outbox(&request).await {
                Ok(b) => {
                    claim_wanted = b.len() >= free;
                    b
                }
                Err(StoreError::Closed) => break,
                Err(e) => {
                    error!(error = %e, "claiming the outbox failed");
                    Vec::new()
                }
            }
        };
        if batch.is_empty() {
            tokio::select! {
                Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
                Some(handed) = handed_over.recv() => start_in_order(&mut tasks, handed),
                _ = state.outbox_ready.notified() => claim_wanted = true,
                _ = poll.tick() => claim_wanted = true,
                _ = shutdown.changed() => {}
            }
            continue;
        }
        for row in batch {
            let state = state.clone();
            let clients = clients.clone();
            let policy = policy.clone();
            tasks.spawn(async move {
                send_one(&state, &clients, &policy, row).await;
            });
        }
    }
    // A claimed send always finishes (its own timeout bounds it), even during shutdown,
    // so no reply is left half-done; replies handed over but not started go back to the
    // queue at once rather than after their lease.
    handed_over.close();
    while let Some(handed) = handed_over.recv().await {
        release(&state, &handed.replies, "the sender stopped before sending it").await;
    }
    while tasks.join_next().await.is_some() {}
    debug!("sender stopped");
}

/// Sends a turn's claimed replies one after the other. Once one is not sent (it waits for
/// a retry, failed, or its claim lapsed), the rest go back to the queue: they must not
/// overtake it, and a claim takes them in order after it.
async fn send_in_order(state: &AppState, clients: &Clients, policy: &RetryPolicy, replies: Vec<OutboxMessage>) {
    let mut replies = replies.into_iter();
    while let Some(reply) = replies.next() {
        if !send_one(state, clients, policy, reply).await {
            release(state, replies.as_slice(), "an earlier reply of its turn was not sent").await;
            state.outbox_ready.notify_one();
            return;
        }
    }
}

/// Gives claimed, unsent replies back to the queue, due now.
async fn release(state: &AppState, replies: &[OutboxMessage], why: &str) {
    for reply in replies {
        let org = &reply.conversation.org_id;
        if let Err(e) = state.store.reschedule_outbox(org, reply.claim(), util::now(), why).await {
            // Its lease lapses instead.
            warn!(outbox_id = reply.id, error = %e, "could not give a claimed reply back");
        }
    }
}

/// The outbox's retry policy: `FLOWCORE_SEND_MAX_ATTEMPTS` attempts, backoff from
/// `FLOWCORE_SEND_BACKOFF_MS` (full jitter, doubling, capped at a minute).
pub fn retry_policy(state: &AppState) -> RetryPolicy {
    let mut policy = RetryPolicy::default();
    policy.max_attempts = state.settings.send_max_attempts;
    policy.base_delay = state.settings.send_backoff;
    policy
}

/// Sends one claimed reply and records how it went; true when it was sent and so recorded.
async fn send_one(state: &AppState, clients: &Clients, policy: &RetryPolicy, row: OutboxMessage) -> bool {
    let org = row.conversation.org_id.clone();
    let claim = row.claim();
    let payload = match OutboxPayload::deserialize(&row.payload) {
        Ok(p) => p,
        Err(e) => {
            error!(outbox_id = row.id, error = %e, "unreadable outbox row; failed");
            let _ = state.store.fail_outbox(&org, claim, &format!("unreadable payload: {e}"), util::now()).await;
            return false;
        }
    };
    let outcome = match state.outbound {
        OutboundMode::Log => {
            // Demo delivery channel: the log is where the reply goes, so it shows the text.
            info!(
                to = %util::redact_contact(&row.conversation.contact_id),
                phone_number_id = %row.conversation.business_number_id,
                reply = %preview(&payload.message),
                "reply (log-only transport, not sent to Meta)"
            );
            SendOutcome::Sent(format!("wamid.log-{}", row.id))
        }
        OutboundMode::Graph => send_graph(clients, policy, &row, &payload.message).await,
    };
    let now = util::now();
    let sent = matches!(outcome, SendOutcome::Sent(_));
    let result = match outcome {
        SendOutcome::Sent(wamid) => {
            Stats::bump(&state.stats.sent);
            debug!(outbox_id = row.id, "reply sent");
            state.store.mark_sent(&org, claim, &wamid, now).await
        }
        SendOutcome::Retry { reason, after } if (row.attempts as u64) < u64::from(state.settings.send_max_attempts) => {
            Stats::bump(&state.stats.send_retries);
            let wait = after.unwrap_or(state.settings.send_backoff);
            warn!(outbox_id = row.id, attempt = row.attempts, %reason, retry_in_ms = wait.as_millis() as u64, "send failed; will retry");
            let at = now.saturating_add_millis(u64::try_from(wait.as_millis()).unwrap_or(u64::MAX));
            state.store.reschedule_outbox(&org, claim, at, &reason).await
        }
        SendOutcome::Retry { reason, .. } => {
            Stats::bump(&state.stats.send_failed);
            error!(outbox_id = row.id, attempts = row.attempts, %reason, "send failed too often; marked failed");
            state
                .store
                .fail_outbox(&org, claim, &format!("gave up after {} attempts: {reason}", row.attempts), now)
                .await
        }
        SendOutcome::Permanent(reason) => {
            Stats::bump(&state.stats.send_failed);
            error!(outbox_id = row.id, %reason, "Meta refused the reply permanently; marked failed, not retried");
            state.store.fail_outbox(&org, claim, &reason, now).await
        }
    };
    match result {
        Ok(()) => sent,
        Err(StoreError::LeaseLost { .. }) => {
            warn!(outbox_id = row.id, "outbox lease lost while sending");
            false
        }
        Err(e) => {
            error!(outbox_id = row.id, error = %e, "recording the send result failed");
            false
        }
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

async fn send_graph(clients: &Clients, policy: &RetryPolicy, row: &OutboxMessage, message: &Message) -> SendOutcome {
    let number = &row.conversation.business_number_id;
    let Some(client) = clients.get(number) else {
        return SendOutcome::Permanent(format!("no access token for business number {number} (META_ACCESS_TOKEN)"));
    };
    let to = match Recipient::parse(&row.conversation.contact_id) {
        Ok(to) => to,
        Err(e) => return SendOutcome::Permanent(format!("invalid recipient: {e}")),
    };
    let parts = match to_outgoing(&to, message) {
        Ok(parts) => parts,
        Err(e) => return SendOutcome::Permanent(format!("message cannot be sent to WhatsApp: {e}")),
    };
    let mut last = None;
    for part in parts {
        // Echoed back in status webhooks: lets an operator reconcile a send that may have
        // gone out (a timeout or a 5xx) with the outbox row.
        let part = match part.callback_data(format!("outbox:{}", row.id)) {
            Ok(p) => p,
            Err(e) => return SendOutcome::Permanent(format!("message cannot be sent to WhatsApp: {e}")),
        };
        match client.send(number, &part).await {
            Ok(receipt) => last = Some(receipt.wamid),
            Err(error) => return outcome_of(policy, &error, row.attempts),
        }
    }
    SendOutcome::Sent(last.unwrap_or_default())
}

/// What one failed send means for the outbox row, from flowcore-meta's retry table
/// (META-FACTS §5): throttling and maintenance are retried after Meta's wait; a failure
/// that may have delivered the message (5xx, timeout, 131000) is retried a bounded number
/// of times, tagged with `biz_opaque_callback_data` for reconciliation; everything
/// permanent (bad request, recipient, spam hold, token or account) fails the row at once.
pub fn outcome_of(policy: &RetryPolicy, error: &MetaApiError, attempts: i64) -> SendOutcome {
    let attempt = u32::try_from(attempts.saturating_sub(1).max(0)).unwrap_or(u32::MAX);
    let reason = error.to_string();
    match policy.advise(error, attempt, false) {
        RetryAdvice::RetryAfter { after, .. } => SendOutcome::Retry { reason, after: Some(after) },
        RetryAdvice::Reconcile => SendOutcome::Retry {
            reason: format!("{reason} (may have been sent; retrying with callback data outbox:<id>)"),
            after: Some(policy.backoff(attempt)),
        },
        RetryAdvice::Pause { scope, hold } => SendOutcome::Permanent(format!(
            "{reason}: Meta requires a pause ({scope:?}, {hold:?}); an operator must act"
        )),
        _ => SendOutcome::Permanent(reason),
    }
}

/// One Graph client per business number (a number's own token, else `META_ACCESS_TOKEN`).
pub struct Clients(HashMap<String, MetaClient<ReqwestTransport>>);

impl Clients {
    /// Builds the clients of every configured number.
    pub fn new(state: &AppState) -> Clients {
        let transport = ReqwestTransport::new();
        let clients = state
            .tenants
            .numbers
            .iter()
            .filter_map(|(id, n)| {
                let token = n.access_token.clone().or_else(|| state.settings.access_token.clone())?;
                let client = MetaClient::new(transport.clone(), token)
                    .with_base_url(state.graph_api_base.clone())
                    // META_GRAPH_API_BASE carries the version (".../v21.0").
                    .with_api_version("")
                    .with_timeout(Duration::from_secs(15));
                Some((id.clone(), client))
            })
            .collect();
        Clients(clients)
    }

    fn get(&self, number: &str) -> Option<&MetaClient<ReqwestTransport>> {
        self.0.get(number)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flowcore_meta::GraphError;

    fn graph(code: i64) -> MetaApiError {
        let body = format!(r#"{{"error":{{"code":{code},"message":"m"}}}}"#);
        MetaApiError::Graph {
            status: 400,
            error: Box::new(GraphError::from_body(body.as_bytes()).unwrap()),
            retry_after: None,
        }
    }

    #[test]
    fn outcomes_follow_the_retry_table() {
        let policy = RetryPolicy::default();
        assert!(matches!(outcome_of(&policy, &graph(130429), 1), SendOutcome::Retry { .. }));
        let http500 = MetaApiError::Http { status: 500, retry_after: None, body_start: String::new() };
        assert!(matches!(outcome_of(&policy, &http500, 1), SendOutcome::Retry { .. }), "5xx: bounded retry");
        for permanent in [131026, 131048, 190, 100, 424242] {
            assert!(matches!(outcome_of(&policy, &graph(permanent), 1), SendOutcome::Permanent(_)), "{permanent}");
        }
        match outcome_of(&policy, &graph(131056), 3) {
            SendOutcome::Retry { after, .. } => assert_eq!(after, Some(Duration::from_secs(16))),
            other => panic!("{other:?}"),
        }
    }
}
