//! Group commit for the SQL backends: writes from many tasks share one transaction.
//!
//! Every durable write costs a transaction commit (a WAL append, on PostgreSQL a flush the
//! caller waits for), and SQLite has one writer, so under load the commits, not the
//! statements, set the pace. Callers hand their write to a queue and wait for its own
//! result; a writer task takes everything queued so far (up to a bound) and runs it as one
//! transaction, each write checked on its own exactly as it would be alone. When the queue
//! is idle a write goes through on its own, so a lone caller waits no longer than before
//! (one task hop).
//!
//! A caller that stops waiting (its future dropped) does not cancel its write: the write
//! either lands with its batch or not at all, and re-sending it is safe (inserts are
//! deduplicated by message id, claims are checked by attempt, sessions by version).

use std::future::Future;
use std::sync::Arc;

use flowcore::Timestamp;
use tokio::sync::{mpsc, oneshot, Mutex};

use crate::error::{StoreError, StoreResult};
use crate::types::{Claim, Commit, CommitOutcome, InboxInsert, NewInboxEvent};

/// Where a write's result goes.
pub(crate) type Reply<T> = oneshot::Sender<StoreResult<T>>;

/// A write waiting for its batch. The caller has validated it (organization known, rows of
/// the same organization); the writer only runs it.
#[derive(Debug)]
pub(crate) enum Write {
    /// [`Inbox::insert_inbox`](crate::Inbox::insert_inbox).
    InsertInbox { event: NewInboxEvent, reply: Reply<InboxInsert> },
    /// [`Store::commit`](crate::Store::commit).
    Commit { commit: Box<Commit>, reply: Reply<CommitOutcome> },
    /// A change to a claimed inbox or outbox row (done, retried, failed, sent).
    Finish { org_id: String, claim: Claim, change: ClaimChange, reply: Reply<()> },
}

/// What happens to a claimed row, if the claim still holds.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum ClaimChange {
    /// Inbox event handled.
    InboxDone { now: Timestamp },
    /// Inbox event back to pending, retried at `at`.
    InboxRetry { at: Timestamp, error: String },
    /// Inbox event failed for good.
    InboxFailed { now: Timestamp, error: String },
    /// Reply accepted by Meta with `wamid`.
    OutboxSent { wamid: String, now: Timestamp },
    /// Reply back to pending, retried at `at`.
    OutboxRetry { at: Timestamp, error: String },
    /// Reply failed for good.
    OutboxFailed { now: Timestamp, error: String },
}

impl ClaimChange {
    /// True for the outbox's changes, false for the inbox's.
    pub(crate) fn is_outbox(&self) -> bool {
        matches!(
            self,
            ClaimChange::OutboxSent { .. } | ClaimChange::OutboxRetry { .. } | ClaimChange::OutboxFailed { .. }
        )
    }

    /// True when the row leaves the queue (done, sent or failed for good), false when it
    /// waits for a retry.
    pub(crate) fn leaves_queue(&self) -> bool {
        !matches!(self, ClaimChange::InboxRetry { .. } | ClaimChange::OutboxRetry { .. })
    }

    /// The row kind, as errors name it.
    pub(crate) fn what(&self) -> &'static str {
        if self.is_outbox() {
            "outbox message"
        } else {
            "inbox event"
        }
    }
}

impl Write {
    /// Answers this write with `result` (of the right type) — used when a whole batch fails
    /// before any write ran.
    pub(crate) fn fail(self, error: &StoreError) {
        let error = || copy_error(error);
        // A caller that stopped waiting has nobody to tell.
        match self {
            Write::InsertInbox { reply, .. } => drop(reply.send(Err(error()))),
            Write::Commit { reply, .. } => drop(reply.send(Err(error()))),
            Write::Finish { reply, .. } => drop(reply.send(Err(error()))),
        }
    }
}

/// The same error again, for each write of a batch that failed as a whole.
pub(crate) fn copy_error(error: &StoreError) -> StoreError {
    match error {
        StoreError::Closed => StoreError::Closed,
        other => StoreError::Database(other.to_string()),
    }
}

/// Which queue a write waits in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Queue {
    /// Runs on its own, before anything else waiting (rare writes that manage their own
    /// transaction). Only the old SQLite backend queued these; this module goes with the
    /// PostgreSQL rewrite.
    #[allow(dead_code)]
    Alone,
    /// Joins the next batch whatever its size: what a webhook's `200` waits for.
    Urgent,
    /// Joins a batch up to its cost bound.
    Batched,
}

/// A write the group commit can queue.
pub(crate) trait Queued: Send + 'static {
    /// Its queue.
    fn queue(&self) -> Queue;
    /// What it counts for against a batch's bound.
    fn cost(&self) -> usize;
}

impl Queued for Write {
    /// Inbox inserts are what a webhook's `200` waits for; they go first.
    fn queue(&self) -> Queue {
        match self {
            Write::InsertInbox { .. } => Queue::Urgent,
            _ => Queue::Batched,
        }
    }

    /// A unit of work is several statements; the rest are one row each.
    fn cost(&self) -> usize {
        match self {
            Write::Commit { .. } => UNIT_OF_WORK_COST,
            _ => 1,
        }
    }
}

/// What a unit of work counts for against a batch's `max_batch`.
pub(crate) const UNIT_OF_WORK_COST: usize = 8;

/// The queues writes wait in, and the writer tasks that drain them.
#[derive(Debug)]
pub(crate) struct GroupCommit<W> {
    alone: mpsc::UnboundedSender<W>,
    urgent: mpsc::UnboundedSender<W>,
    batched: mpsc::UnboundedSender<W>,
}

/// The queues, read by one writer at a time.
struct Queues<W> {
    alone: mpsc::UnboundedReceiver<W>,
    urgent: mpsc::UnboundedReceiver<W>,
    batched: mpsc::UnboundedReceiver<W>,
}

impl<W: Queued> GroupCommit<W> {
    /// Starts `lanes` writer tasks on the current tokio runtime; each takes a write that runs
    /// alone, or else every queued urgent write plus batched ones up to a cost of `max_batch`,
    /// and hands them to `run`. Small batches keep a webhook's wait for its insert short
    /// even when many units of work are queued. The tasks end when this value is dropped.
    pub(crate) fn start<F, Fut>(lanes: usize, max_batch: usize, run: F) -> GroupCommit<W>
    where
        F: Fn(Vec<W>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let (alone, alone_receiver) = mpsc::unbounded_channel();
        let (urgent, urgent_receiver) = mpsc::unbounded_channel();
        let (batched, batched_receiver) = mpsc::unbounded_channel();
        let receiver =
            Arc::new(Mutex::new(Queues { alone: alone_receiver, urgent: urgent_receiver, batched: batched_receiver }));
        let run = Arc::new(run);
        let max_batch = max_batch.max(1);
        for _ in 0..lanes.max(1) {
            let receiver = receiver.clone();
            let run = run.clone();
            tokio::spawn(async move {
                while let Some(batch) = next_batch(&receiver, max_batch).await {
                    run(batch).await;
                }
            });
        }
        GroupCommit { alone, urgent, batched }
    }

    /// Queues a write built around its reply channel and waits for the result.
    pub(crate) async fn submit<T>(&self, write: impl FnOnce(Reply<T>) -> W) -> StoreResult<T> {
        let (reply, result) = oneshot::channel();
        let write = write(reply);
        let queue = match write.queue() {
            Queue::Alone => &self.alone,
            Queue::Urgent => &self.urgent,
            Queue::Batched => &self.batched,
        };
        queue.send(write).map_err(|_| StoreError::Closed)?;
        // The writer drops the reply only when its runtime is shutting down.
        result.await.unwrap_or(Err(StoreError::Closed))
    }
}

/// Waits for a write. One that runs alone is a batch of its own (they are rare, and go
/// first so that a steady stream of batches cannot hold them back); otherwise every queued
/// urgent write and batched ones up to a cost of `max`. `None` once every sender is gone.
async fn next_batch<W: Queued>(queues: &Mutex<Queues<W>>, max: usize) -> Option<Vec<W>> {
    let mut queues = queues.lock().await;
    let queues = &mut *queues;
    let first = tokio::select! {
        biased;
        Some(write) = queues.alone.recv() => return Some(vec![write]),
        Some(write) = queues.urgent.recv() => write,
        Some(write) = queues.batched.recv() => write,
        else => return None,
    };
    // Callers answered together (by the batch before) write again together: let the others
    // queue up behind the first, so that their writes share this batch instead of each
    // taking one of its own. A lone caller loses one turn of the scheduler.
    tokio::task::yield_now().await;
    let mut cost = first.cost();
    let mut batch = Vec::with_capacity(64);
    batch.push(first);
    while let Ok(write) = queues.urgent.try_recv() {
        batch.push(write);
    }
    while cost < max {
        match queues.batched.try_recv() {
            Ok(write) => {
                cost += write.cost();
                batch.push(write);
            }
            Err(_) => break,
        }
    }
    Some(batch)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn done(now: i64) -> ClaimChange {
        ClaimChange::InboxDone { now: Timestamp::from_unix_millis(now) }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn queued_writes_share_a_batch_and_each_gets_its_own_result() {
        let batches = Arc::new(AtomicUsize::new(0));
        let counted = batches.clone();
        let queue = Arc::new(GroupCommit::start(1, 100, move |batch: Vec<Write>| {
            counted.fetch_add(1, Ordering::SeqCst);
            async move {
                // Slow enough that the other writes queue up behind the first batch.
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                for write in batch {
                    if let Write::Finish { claim, reply, .. } = write {
                        let result = if claim.id % 2 == 0 { Ok(()) } else { Err(StoreError::Closed) };
                        let _ = reply.send(result);
                    }
                }
            }
        }));
        let mut tasks = Vec::new();
        for id in 0..20 {
            let queue = queue.clone();
            tasks.push(tokio::spawn(async move {
                let claim = Claim { id, attempt: 1 };
                queue.submit(|reply| Write::Finish { org_id: "o".into(), claim, change: done(id), reply }).await
            }));
        }
        for (id, task) in tasks.into_iter().enumerate() {
            let result = task.await.unwrap();
            assert_eq!(result.is_ok(), id % 2 == 0, "write {id} got another write's result");
        }
        let batches = batches.load(Ordering::SeqCst);
        assert!(batches < 20, "20 concurrent writes ran in {batches} batches: nothing was grouped");
    }

    #[tokio::test]
    async fn a_batch_that_fails_as_a_whole_answers_every_write() {
        let queue = GroupCommit::start(1, 10, |batch: Vec<Write>| async move {
            for write in batch {
                write.fail(&StoreError::Database("disk full".into()));
            }
        });
        let claim = Claim { id: 1, attempt: 1 };
        let result = queue.submit(|reply| Write::Finish { org_id: "o".into(), claim, change: done(1), reply }).await;
        assert!(matches!(result, Err(StoreError::Database(m)) if m.contains("disk full")));
    }

    /// On a current-thread runtime, so that the order things queue in is deterministic.
    #[tokio::test]
    async fn inserts_jump_the_queue_and_batches_are_capped() {
        use crate::types::{ConversationKey, NewInboxEvent};
        let batches = Arc::new(std::sync::Mutex::new(Vec::<Vec<&'static str>>::new()));
        let (started, release) = (Arc::new(tokio::sync::Notify::new()), Arc::new(tokio::sync::Notify::new()));
        let (seen, started_in, release_in) = (batches.clone(), started.clone(), release.clone());
        let queue = Arc::new(GroupCommit::start(1, 16, move |batch: Vec<Write>| {
            let (seen, started, release) = (seen.clone(), started_in.clone(), release_in.clone());
            async move {
                let kinds = batch
                    .iter()
                    .map(|w| match w {
                        Write::InsertInbox { .. } => "insert",
                        Write::Commit { .. } => "commit",
                        Write::Finish { .. } => "finish",
                    })
                    .collect();
                let first_batch = {
                    let mut seen = seen.lock().unwrap();
                    seen.push(kinds);
                    seen.len() == 1
                };
                if first_batch {
                    // Hold the writer until everything below has queued up.
                    started.notify_one();
                    release.notified().await;
                }
                batch.into_iter().for_each(|write| write.fail(&StoreError::Closed));
            }
        }));
        let now = Timestamp::from_unix_millis(1);
        let mut tasks = Vec::new();
        let q = queue.clone();
        let claim = Claim { id: 0, attempt: 1 };
        tasks.push(tokio::spawn(async move {
            q.submit(|reply| Write::Finish { org_id: "o".into(), claim, change: done(0), reply }).await
        }));
        started.notified().await;
        for _ in 0..4 {
            let q = queue.clone();
            tasks.push(tokio::spawn(async move {
                q.submit(|reply| Write::Commit { commit: Box::new(Commit::new("o", now)), reply }).await.map(drop)
            }));
        }
        let q = queue.clone();
        tasks.push(tokio::spawn(async move {
            let event = NewInboxEvent::message(ConversationKey::new("o", "b", "c"), "m", serde_json::json!({}), now);
            q.submit(|reply| Write::InsertInbox { event, reply }).await.map(drop)
        }));
        // Let every spawned task run up to its wait for a result (it has queued its write).
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        release.notify_one();
        for task in tasks {
            let _ = task.await.unwrap();
        }
        let batches = batches.lock().unwrap().clone();
        // Queued last, the insert runs first; two units of work (cost 8 each) fill a batch.
        assert_eq!(batches, vec![vec!["finish"], vec!["insert", "commit", "commit"], vec!["commit", "commit"]]);
    }

    #[test]
    fn changes_name_their_queue() {
        assert!(!done(1).is_outbox());
        assert_eq!(done(1).what(), "inbox event");
        let sent = ClaimChange::OutboxSent { wamid: "w".into(), now: Timestamp::from_unix_millis(1) };
        assert!(sent.is_outbox());
        assert_eq!(sent.what(), "outbox message");
    }
}
