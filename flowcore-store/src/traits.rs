//! The storage traits. Every backend implements all of them; hosts can implement their own
//! and prove it with [`testkit`](crate#conformance-kit).

use async_trait::async_trait;
use flowcore::{CompiledFlow, Timestamp};

use crate::error::{StoreError, StoreResult};
use crate::types::*;

/// The organizations (tenants) the store knows. Every other call names one, and fails with
/// [`UnknownOrganization`](crate::StoreError::UnknownOrganization) for one never registered.
#[async_trait]
pub trait Organizations: Send + Sync {
    /// Registers an organization (idempotent).
    async fn register_organization(&self, org_id: &str) -> StoreResult<()>;

    /// True when the organization is registered.
    async fn organization_exists(&self, org_id: &str) -> StoreResult<bool>;
}

/// Conversation state: one active session per [`SessionKey`], saved with compare-and-set.
#[async_trait]
pub trait SessionStore: Send + Sync {
    /// The active session for `key`, if any. A row that cannot be decoded is a
    /// [`CorruptState`](crate::StoreError::CorruptState) error for this key only.
    async fn load_session(&self, key: &SessionKey) -> StoreResult<Option<StoredSession>>;

    /// [`load_session`](SessionStore::load_session), then [`check_session`] against `flow`, the
    /// compiled flow version the session runs on.
    async fn load_session_checked(&self, key: &SessionKey, flow: &CompiledFlow) -> StoreResult<Option<StoredSession>> {
        let Some(stored) = self.load_session(key).await? else { return Ok(None) };
        check_session(&stored, flow)?;
        Ok(Some(stored))
    }

    /// The conversation's most recently saved active session (of any flow), with its state:
    /// what a worker resumes when the contact writes again. Backends may read it at once.
    async fn active_session(&self, conversation: &ConversationKey) -> StoreResult<Option<StoredSession>> {
        let sessions = self.conversation_sessions(conversation).await?;
        let Some(newest) = sessions.into_iter().find(|s| s.status == SessionStatus::Active) else { return Ok(None) };
        self.load_session(&newest.key).await
    }

    /// [`active_session`](SessionStore::active_session) for each of `conversations`, in
    /// their order: what a batch of claimed events resumes. Backends may read them together.
    async fn active_sessions(&self, conversations: &[ConversationKey]) -> StoreResult<Vec<Option<StoredSession>>> {
        let mut sessions = Vec::with_capacity(conversations.len());
        for conversation in conversations {
            sessions.push(self.active_session(conversation).await?);
        }
        Ok(sessions)
    }

    /// The active sessions of one conversation (any flow), newest first, without state.
    async fn conversation_sessions(&self, conversation: &ConversationKey) -> StoreResult<Vec<SessionInfo>>;

    /// Saves a session if its stored version is still `write.expected_version` (0 = no active
    /// session yet); otherwise writes nothing: [`Conflict`](crate::StoreError::Conflict).
    async fn save_session(&self, write: SessionWrite) -> StoreResult<SavedSession>;

    /// Closes the active session for `key` (whatever its version). False when there was none.
    async fn close_session(&self, key: &SessionKey, now: Timestamp) -> StoreResult<bool>;

    /// The organization's active sessions, most recently updated first.
    async fn list_active_sessions(&self, org_id: &str, page: Page) -> StoreResult<Vec<SessionInfo>>;

    /// Deletes active sessions not saved within `policy.session_ttl` of `now`, and closed
    /// sessions and finished inbox and outbox rows older than `policy.retention`.
    async fn purge(&self, org_id: &str, now: Timestamp, policy: PurgePolicy) -> StoreResult<PurgeReport>;
}

/// The message log: every message in and out, for history, listings and metrics.
#[async_trait]
pub trait MessageLog: Send + Sync {
    /// Appends rows (all of `org_id`), returning their ids in order.
    async fn append_log(&self, org_id: &str, entries: &[NewLogEntry]) -> StoreResult<Vec<i64>>;

    /// A conversation's messages, oldest first.
    async fn history(&self, conversation: &ConversationKey, page: Page) -> StoreResult<Vec<LogEntry>>;

    /// For each `(conversation, since)`, in the order asked: how many inbound entries logged
    /// after `since` count against a rate limit (all but those marked
    /// [`RATE_LIMITED`](crate::RATE_LIMITED)), at most `at_most` (a limit only asks whether it
    /// is reached). Read from the shared log, it holds across instances and restarts.
    async fn inbound_counts(&self, windows: &[(ConversationKey, Timestamp)], at_most: u64) -> StoreResult<Vec<u64>>;

    /// The organization's conversations with message counts, latest activity first.
    async fn list_conversations(&self, org_id: &str, page: Page) -> StoreResult<Vec<ConversationSummary>>;

    /// Conversation and message counts, in total, per flow and per UTC day.
    async fn metrics(&self, org_id: &str, query: MetricsQuery) -> StoreResult<Metrics>;
}

/// The inbox: inbound events and wake-ups, deduplicated, handed out one conversation at a time.
#[async_trait]
pub trait Inbox: Send + Sync {
    /// Inserts an event unless its message id is already in the organization's inbox.
    async fn insert_inbox(&self, event: NewInboxEvent) -> StoreResult<InboxInsert>;

    /// Claims due events: per conversation only the first unfinished event in `(due_at, id)`
    /// order, and only if no other event of that conversation is claimed under a live lease.
    /// Claims whose lease expired are claimable again (with a new attempt number).
    ///
    /// A conversation also waits while one of its replies is claimed under a live lease (a
    /// sender has it), so its next turn runs after that reply is sent. A reply waiting for a
    /// retry does not hold it back.
    async fn claim_inbox(&self, request: &ClaimRequest) -> StoreResult<Vec<InboxEvent>>;

    /// Marks a claimed event done.
    async fn complete_inbox(&self, org_id: &str, claim: Claim, now: Timestamp) -> StoreResult<()>;

    /// Records a failed attempt: with `retry_at` the event is retried then (still blocking
    /// later events of its conversation, to keep order); without, it is failed for good at
    /// `now`, the time [`purge`](SessionStore::purge)'s retention is judged from.
    async fn fail_inbox(
        &self,
        org_id: &str,
        claim: Claim,
        error: &str,
        retry_at: Option<Timestamp>,
        now: Timestamp,
    ) -> StoreResult<()>;

    /// Returns claimed events whose lease ended before `now` to pending; the count.
    async fn reclaim_inbox(&self, org_id: Option<&str>, now: Timestamp) -> StoreResult<u64>;

    /// One inbox row by id.
    async fn get_inbox(&self, org_id: &str, id: i64) -> StoreResult<Option<InboxEvent>>;
}

/// The outbox: replies, claimed like the inbox, then marked sent, rescheduled or failed.
#[async_trait]
pub trait Outbox: Send + Sync {
    /// Enqueues replies (all of `org_id`), returning their ids in order.
    async fn enqueue_outbox(&self, org_id: &str, messages: &[NewOutboxMessage]) -> StoreResult<Vec<i64>>;

    /// Claims due replies, at most one per conversation, in order.
    async fn claim_outbox(&self, request: &ClaimRequest) -> StoreResult<Vec<OutboxMessage>>;

    /// Marks a claimed reply sent with Meta's message id.
    async fn mark_sent(&self, org_id: &str, claim: Claim, wamid: &str, now: Timestamp) -> StoreResult<()>;

    /// Puts a claimed reply back to be retried at `retry_at` (the caller's backoff).
    async fn reschedule_outbox(&self, org_id: &str, claim: Claim, retry_at: Timestamp, error: &str) -> StoreResult<()>;

    /// Marks a claimed reply permanently failed (never retried), finished at `now`.
    async fn fail_outbox(&self, org_id: &str, claim: Claim, error: &str, now: Timestamp) -> StoreResult<()>;

    /// Returns claimed replies whose lease ended before `now` to pending; the count.
    async fn reclaim_outbox(&self, org_id: Option<&str>, now: Timestamp) -> StoreResult<u64>;

    /// Merges a delivery status reported for `wamid` (a lower one never replaces a higher one);
    /// false when no reply of this organization has that wamid.
    async fn record_delivery(
        &self,
        org_id: &str,
        wamid: &str,
        status: DeliveryStatus,
        at: Timestamp,
    ) -> StoreResult<bool>;

    /// One outbox row by id.
    async fn get_outbox(&self, org_id: &str, id: i64) -> StoreResult<Option<OutboxMessage>>;
}

/// Flow definitions by id; each publish adds a version, and a session runs on the one it names.
#[async_trait]
pub trait FlowStore: Send + Sync {
    /// Publishes `definition` (JSON text) as the next version of `flow_id`; the new version.
    async fn publish_flow(&self, org_id: &str, flow_id: &str, definition: &str, now: Timestamp) -> StoreResult<i64>;

    /// A flow version, or the latest one when `version` is `None`.
    async fn get_flow(&self, org_id: &str, flow_id: &str, version: Option<i64>) -> StoreResult<Option<StoredFlow>>;

    /// The latest version of each of the organization's flows, by flow id.
    async fn list_flows(&self, org_id: &str) -> StoreResult<Vec<StoredFlow>>;

    /// Every version of `flow_id`, newest first; empty when the organization has no such
    /// flow. Backends may read them together.
    async fn list_flow_versions(&self, org_id: &str, flow_id: &str) -> StoreResult<Vec<StoredFlow>> {
        let Some(latest) = self.get_flow(org_id, flow_id, None).await? else { return Ok(Vec::new()) };
        let mut versions = vec![latest.clone()];
        for version in (1..latest.version).rev() {
            versions.extend(self.get_flow(org_id, flow_id, Some(version)).await?);
        }
        Ok(versions)
    }
}

/// A complete store: all the parts plus the atomic unit of work. Use it as `Arc<dyn Store>`.
#[async_trait]
pub trait Store: Organizations + SessionStore + MessageLog + Inbox + Outbox + FlowStore {
    /// Commits one engine turn atomically (see [`Commit`]).
    async fn commit(&self, commit: Commit) -> StoreResult<CommitOutcome>;

    /// Asks the backend for a trivial answer through the connections the other calls use (a
    /// readiness probe); an error says the database cannot be reached (or the store is closed).
    async fn ping(&self) -> StoreResult<()>;

    /// Closes the store; every later call fails with [`Closed`](crate::StoreError::Closed).
    async fn close(&self);

    /// The backend's name: `"memory"`, `"sqlite"`, `"postgres"` or a host's own.
    fn backend(&self) -> &'static str;
}

/// Checks that a stored session can run on `flow` (same flow id; the node it waits at exists
/// and still waits the same way), as [`StoreError::IncompatibleState`] when not.
///
/// ```
/// # use flowcore::{Flow, Input, Session, SessionOptions, Timestamp};
/// # use flowcore_store::*;
/// let v1 = Flow::from_json(r#"{"id":"f","name":"F","nodes":[{"id":"s","type":"start"},
///   {"id":"ask","type":"question","data":{"content":"?","variableName":"x"}}],
///   "edges":[{"id":"e","source":"s","target":"ask"}]}"#).unwrap().compile().unwrap();
/// let v2 = Flow::from_json(r#"{"id":"f","name":"F","nodes":[{"id":"s","type":"start"},
///   {"id":"ask2","type":"question","data":{"content":"?","variableName":"x"}}],
///   "edges":[{"id":"e","source":"s","target":"ask2"}]}"#).unwrap().compile().unwrap();
/// let now = Timestamp::from_unix_seconds(1);
/// let mut session = Session::new(&v1, SessionOptions::default());
/// session.handle(&v1, Input::text("oi"), now).unwrap();
/// let stored = StoredSession { id: 1, key: SessionKey::new("o", "b", "c", "f"), flow_version: 1, version: 1,
///     status: SessionStatus::Active, session, created_at: now, updated_at: now, closed_at: None };
/// assert!(check_session(&stored, &v1).is_ok());
/// assert!(matches!(check_session(&stored, &v2), Err(StoreError::IncompatibleState { .. })));
/// ```
pub fn check_session(stored: &StoredSession, flow: &CompiledFlow) -> StoreResult<()> {
    stored.session.check_flow(flow).map_err(|e| StoreError::IncompatibleState {
        session_id: stored.id,
        flow_id: stored.key.flow_id.clone(),
        flow_version: stored.flow_version,
        reason: e.to_string(),
    })
}
