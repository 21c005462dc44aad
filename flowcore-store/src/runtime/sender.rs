//! The outbox sender: sends the replies turns handed over and the due replies it claims,
//! and records each attempt as the host's [`Delivery`](super::Delivery) classified it: sent,
//! rescheduled with backoff, or failed for good.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinSet;
use tracing::{debug, error, warn};

use super::host::{DeliveryOutcome, OutboxPayload, Reply};
use super::{later, Shared, Stats};
use crate::{ClaimRequest, OutboxMessage, StoreError};

/// A turn's replies, claimed as they were committed, handed to the sender.
#[derive(Debug)]
pub(super) struct HandedOver {
    /// The replies, in the order they must go.
    pub replies: Vec<OutboxMessage>,
    /// Dropped once the sender is done with them (each sent and recorded, or given back to
    /// the queue): the turn that handed them over waits for it before its conversation's
    /// next turn.
    pub done: oneshot::Sender<()>,
}

/// How many sends may be in flight at once (each to a different conversation).
const MAX_IN_FLIGHT: usize = 64;

/// Runs the sender until `shutdown` turns true: a pipeline rather than batches, so one slow
/// send never holds up the others.
pub(super) async fn run(
    rt: Arc<Shared>,
    mut handed_over: mpsc::UnboundedReceiver<HandedOver>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut tasks = JoinSet::new();
    let start = |tasks: &mut JoinSet<()>, handed: HandedOver| {
        let rt = rt.clone();
        tasks.spawn(async move {
            send_in_order(&rt, handed.replies).await;
            drop(handed.done);
        });
    };
    // Whether a claim may find something: a turn left replies to one, a claim came back
    // full, or the poll interval passed (retries fall due, leases lapse). Most replies are
    // handed over, and a claim that finds nothing still costs the store a round trip.
    let mut claim_wanted = true;
    let mut poll = tokio::time::interval(rt.options.poll_interval);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        while tasks.try_join_next().is_some() {}
        if *shutdown.borrow() {
            break;
        }
        // Handed-over replies are claimed already: they start at once, whatever is in flight.
        while let Ok(handed) = handed_over.try_recv() {
            start(&mut tasks, handed);
        }
        let free = MAX_IN_FLIGHT.saturating_sub(tasks.len());
        // Claims scan the queue, so they are batched: with sends in flight, claim again
        // only once a quarter of the slots are free.
        let mut batch = Vec::new();
        if claim_wanted && free > 0 && (free >= MAX_IN_FLIGHT / 4 || tasks.is_empty()) {
            let request = ClaimRequest::any(rt.clock.now(), rt.options.lease, u32::try_from(free).unwrap_or(1));
            match rt.store.claim_outbox(&request).await {
                Ok(claimed) => (claim_wanted, batch) = (claimed.len() >= free, claimed),
                Err(StoreError::Closed) => break,
                Err(e) => error!(error = %e, "claiming the outbox failed"),
            }
        }
        if batch.is_empty() {
            tokio::select! {
                Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
                Some(handed) = handed_over.recv() => start(&mut tasks, handed),
                _ = rt.outbox_ready.notified() => claim_wanted = true,
                _ = poll.tick() => claim_wanted = true,
                _ = shutdown.changed() => {}
            }
        }
        for row in batch {
            let rt = rt.clone();
            tasks.spawn(async move {
                send_one(&rt, row).await;
            });
        }
    }
    // A claimed send always finishes (its own timeout bounds it), even during shutdown,
    // so no reply is left half-done; replies handed over but not started go back to the
    // queue at once rather than after their lease.
    handed_over.close();
    while let Some(handed) = handed_over.recv().await {
        release(&rt, &handed.replies, "the sender stopped before sending it").await;
    }
    while tasks.join_next().await.is_some() {}
    debug!("sender stopped");
}

/// Sends a turn's claimed replies one after the other. Once one is not sent (it waits for
/// a retry, failed, or its claim lapsed), the rest go back to the queue: they must not
/// overtake it, and a claim takes them in order after it.
async fn send_in_order(rt: &Shared, replies: Vec<OutboxMessage>) {
    let mut replies = replies.into_iter();
    while let Some(reply) = replies.next() {
        if !send_one(rt, reply).await {
            release(rt, replies.as_slice(), "an earlier reply of its turn was not sent").await;
            rt.outbox_ready.notify_one();
            return;
        }
    }
}

/// Gives claimed, unsent replies back to the queue, due now.
async fn release(rt: &Shared, replies: &[OutboxMessage], why: &str) {
    for reply in replies {
        let org = &reply.conversation.org_id;
        if let Err(e) = rt.store.reschedule_outbox(org, reply.claim(), rt.clock.now(), why).await {
            // Its lease lapses instead.
            warn!(outbox_id = reply.id, error = %e, "could not give a claimed reply back");
        }
    }
}

/// Sends one claimed reply and records how it went; true when it was sent and so recorded.
async fn send_one(rt: &Shared, row: OutboxMessage) -> bool {
    let (org, claim) = (row.conversation.org_id.as_str(), row.claim());
    let payload = match serde_json::from_value::<OutboxPayload>(row.payload.clone()) {
        Ok(p) => p,
        Err(e) => {
            error!(outbox_id = row.id, error = %e, "unreadable outbox row; failed");
            let _ = rt.store.fail_outbox(org, claim, &format!("unreadable payload: {e}"), rt.clock.now()).await;
            return false;
        }
    };
    let reply = Reply {
        outbox_id: row.id,
        conversation: &row.conversation,
        message: &payload.message,
        attempt: row.attempts,
        lease_until: row.lease_until,
    };
    let outcome = rt.delivery.deliver(&reply).await;
    let now = rt.clock.now();
    let sent = matches!(outcome, DeliveryOutcome::Sent(_));
    let result = match outcome {
        DeliveryOutcome::Sent(wamid) => {
            Stats::add(&rt.stats.sent, 1);
            debug!(outbox_id = row.id, "reply sent");
            rt.store.mark_sent(org, claim, &wamid, now).await
        }
        DeliveryOutcome::Retry { reason, after } if row.attempts < i64::from(rt.options.send_max_attempts) => {
            Stats::add(&rt.stats.send_retries, 1);
            let wait = after.unwrap_or_else(|| rt.options.backoff(row.attempts));
            warn!(outbox_id = row.id, attempt = row.attempts, %reason, retry_in_ms = wait.as_millis() as u64, "send failed; will retry");
            rt.store.reschedule_outbox(org, claim, later(now, wait), &reason).await
        }
        DeliveryOutcome::Retry { reason, .. } => {
            Stats::add(&rt.stats.send_failed, 1);
            error!(outbox_id = row.id, attempts = row.attempts, %reason, "send failed too often; marked failed");
            rt.store.fail_outbox(org, claim, &format!("gave up after {} attempts: {reason}", row.attempts), now).await
        }
        DeliveryOutcome::Failed(reason) => {
            Stats::add(&rt.stats.send_failed, 1);
            error!(outbox_id = row.id, %reason, "the reply was refused for good; marked failed, not retried");
            rt.store.fail_outbox(org, claim, &reason, now).await
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
