//! The values the store traits take and return.

use std::fmt;
use std::time::Duration;

use flowcore::Timestamp;

use crate::state::Session;
use serde::{Deserialize, Serialize};

/// One conversation: a business number and a contact; inbox, log and outbox rows are keyed by it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ConversationKey {
    /// The organization (tenant).
    pub org_id: String,
    /// The business number that received the message (Meta's `phone_number_id`).
    pub business_number_id: String,
    /// The customer (Meta's `wa_id`).
    pub contact_id: String,
}

impl ConversationKey {
    /// A conversation key.
    pub fn new(
        org_id: impl Into<String>,
        business_number_id: impl Into<String>,
        contact_id: impl Into<String>,
    ) -> Self {
        let (org_id, business_number_id, contact_id) = (org_id.into(), business_number_id.into(), contact_id.into());
        ConversationKey { org_id, business_number_id, contact_id }
    }

    /// The key of this conversation's session in `flow_id`.
    pub fn session(&self, flow_id: impl Into<String>) -> SessionKey {
        SessionKey::new(&self.org_id, &self.business_number_id, &self.contact_id, flow_id)
    }
}

impl fmt::Display for ConversationKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.org_id, self.business_number_id, self.contact_id)
    }
}

/// A session's key: (organization, business number, contact, flow), with one *active* session at most.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SessionKey {
    /// The organization (tenant).
    pub org_id: String,
    /// The business number (Meta's `phone_number_id`).
    pub business_number_id: String,
    /// The customer (Meta's `wa_id`).
    pub contact_id: String,
    /// The flow the session runs.
    pub flow_id: String,
}

impl SessionKey {
    /// A session key.
    pub fn new(
        org_id: impl Into<String>,
        business_number_id: impl Into<String>,
        contact_id: impl Into<String>,
        flow_id: impl Into<String>,
    ) -> Self {
        let (org_id, business_number_id, contact_id) = (org_id.into(), business_number_id.into(), contact_id.into());
        SessionKey { org_id, business_number_id, contact_id, flow_id: flow_id.into() }
    }

    /// The conversation this session belongs to.
    pub fn conversation(&self) -> ConversationKey {
        ConversationKey::new(&self.org_id, &self.business_number_id, &self.contact_id)
    }
}

impl fmt::Display for SessionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}/{}", self.org_id, self.business_number_id, self.contact_id, self.flow_id)
    }
}

/// Whether a stored session still runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SessionStatus {
    /// The session runs; the next inbound message for its key resumes it.
    Active,
    /// The session ended (the flow finished, it was closed by an operator, or it expired).
    Closed,
}

/// `as_str` (the stored spelling) and `spelled` (its inverse) for the enums stored as text;
/// with `else`, also `parse`, which reads an unknown spelling as that variant.
macro_rules! spelled {
    ($enum:ident { $($variant:ident => $text:literal),+ } $(else $fallback:ident)?) => {
        impl $enum {
            /// The stored spelling.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($enum::$variant => $text),+
                }
            }

            fn spelled(s: &str) -> Option<$enum> {
                [$($enum::$variant),+].into_iter().find(|v| v.as_str() == s)
            }

            $(pub(crate) fn parse(s: &str) -> $enum {
                $enum::spelled(s).unwrap_or($enum::$fallback)
            })?
        }
    };
}

spelled!(SessionStatus { Active => "active", Closed => "closed" } else Closed);

/// A session as stored: the engine's state plus its bookkeeping.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredSession {
    /// The session row's id (unique across the store).
    pub id: i64,
    /// Its key.
    pub key: SessionKey,
    /// The flow version it runs on: the one it started on, unless a save moved it.
    pub flow_version: i64,
    /// The compare-and-set version: pass it as [`SessionWrite::expected_version`] to save.
    pub version: i64,
    /// Active or closed.
    pub status: SessionStatus,
    /// The engine's state.
    pub session: Session,
    /// When the session was first saved.
    pub created_at: Timestamp,
    /// When it was last saved.
    pub updated_at: Timestamp,
    /// When it was closed.
    pub closed_at: Option<Timestamp>,
}

/// A session's bookkeeping without its state: what listings return, so they never fail to decode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionInfo {
    /// The session row's id.
    pub id: i64,
    /// Its key.
    pub key: SessionKey,
    /// The flow version it runs on.
    pub flow_version: i64,
    /// The compare-and-set version.
    pub version: i64,
    /// Active or closed.
    pub status: SessionStatus,
    /// The node the session waits at, if any.
    pub current_node: Option<String>,
    /// When the session wants to be woken up, if it waits for a timer.
    pub wake_at: Option<Timestamp>,
    /// When the session was first saved.
    pub created_at: Timestamp,
    /// When it was last saved.
    pub updated_at: Timestamp,
    /// When it was closed.
    pub closed_at: Option<Timestamp>,
}

/// A compare-and-set save of one session.
#[derive(Clone, Debug, PartialEq)]
pub struct SessionWrite {
    /// The session's key.
    pub key: SessionKey,
    /// The version the caller loaded ([`StoredSession::version`]); `0` creates the session.
    pub expected_version: i64,
    /// The flow version from this save on: the loaded one keeps it, a newer one moves the session.
    pub flow_version: i64,
    /// The group [`Metrics::per_cohort`] counts the session in (an A/B test variant, say).
    /// Recorded on create, ignored on update: a session stays in the cohort it started in.
    pub cohort: Option<String>,
    /// The new state.
    pub session: Session,
    /// `Closed` ends the session with this save.
    pub status: SessionStatus,
    /// The caller's clock.
    pub now: Timestamp,
}

/// What a successful save produced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SavedSession {
    /// The session row's id.
    pub id: i64,
    /// The new version (pass it as `expected_version` next time).
    pub version: i64,
}

/// Offset pagination: skip `offset` rows, return at most `limit`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Page {
    /// Rows to skip.
    pub offset: u64,
    /// Rows to return at most (capped at [`Page::MAX_LIMIT`]).
    pub limit: u32,
}

impl Page {
    /// The largest page any backend returns.
    pub const MAX_LIMIT: u32 = 1000;

    /// The first `limit` rows.
    pub fn first(limit: u32) -> Page {
        Page { offset: 0, limit }
    }

    /// The page after this one.
    pub fn next(self) -> Page {
        Page { offset: self.offset.saturating_add(u64::from(self.limit)), limit: self.limit }
    }

    pub(crate) fn limit_i64(self) -> i64 {
        i64::from(self.limit.min(Self::MAX_LIMIT))
    }

    pub(crate) fn offset_i64(self) -> i64 {
        i64::try_from(self.offset).unwrap_or(i64::MAX)
    }
}

impl Default for Page {
    fn default() -> Self {
        Page { offset: 0, limit: 50 }
    }
}

/// How long sessions and finished rows are kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PurgePolicy {
    /// An active session not saved for this long is expired and deleted (default 24 h).
    pub session_ttl: Duration,
    /// Closed sessions and finished queue rows older than this are deleted (default 30 days).
    /// Inbox rows are the duplicate filter: keep it longer than Meta's webhook retries last.
    pub retention: Duration,
}

impl Default for PurgePolicy {
    fn default() -> Self {
        PurgePolicy { session_ttl: Duration::from_secs(24 * 3600), retention: Duration::from_secs(30 * 24 * 3600) }
    }
}

/// What a purge deleted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PurgeReport {
    /// Active sessions deleted because their TTL passed.
    pub expired_sessions: u64,
    /// Closed sessions deleted because their retention passed.
    pub closed_sessions: u64,
    /// Finished (done or failed) inbox rows deleted.
    pub inbox_rows: u64,
    /// Finished (sent or failed) outbox rows deleted.
    pub outbox_rows: u64,
}

/// Which way a logged message went.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// From the contact (a user message).
    Inbound,
    /// To the contact (a bot or operator message).
    Outbound,
}

spelled!(Direction { Inbound => "in", Outbound => "out" } else Outbound);

/// A logged message's content: plain text or structured JSON (buttons, lists, media, …).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "value", rename_all = "snake_case")]
pub enum Content {
    /// Plain text.
    Text(String),
    /// Structured content (for example a serialized `flowcore::Message`).
    Json(serde_json::Value),
}

impl Content {
    pub(crate) fn to_columns(&self) -> (Option<&str>, Option<String>) {
        match self {
            Content::Text(t) => (Some(t.as_str()), None),
            Content::Json(v) => (None, Some(v.to_string())),
        }
    }

    pub(crate) fn from_columns(text: Option<String>, json: Option<String>) -> Content {
        match (text, json) {
            (_, Some(j)) => match serde_json::from_str(&j) {
                Ok(v) => Content::Json(v),
                Err(_) => Content::Text(j),
            },
            (Some(t), None) => Content::Text(t),
            (None, None) => Content::Text(String::new()),
        }
    }
}

/// The metadata key (set to `true`) that marks an inbound message a rate limit refused: it stays
/// history but is not counted by [`MessageLog::inbound_counts`](crate::MessageLog::inbound_counts),
/// so a contact who keeps writing is let through once the counted messages leave the window.
pub const RATE_LIMITED: &str = "rate_limited";

/// A message-log row to append.
#[derive(Clone, Debug, PartialEq)]
pub struct NewLogEntry {
    /// The conversation.
    pub conversation: ConversationKey,
    /// The flow that handled or produced it, if any (used for per-flow metrics).
    pub flow_id: Option<String>,
    /// Inbound (user) or outbound (bot).
    pub direction: Direction,
    /// The content.
    pub content: Content,
    /// The flow node that produced (or received) it.
    pub node_id: Option<String>,
    /// Meta's message id, when known.
    pub wamid: Option<String>,
    /// When it happened.
    pub at: Timestamp,
    /// Free-form metadata (`null` when none).
    pub metadata: serde_json::Value,
}

/// A logged message.
#[derive(Clone, Debug, PartialEq)]
pub struct LogEntry {
    /// The row id (increases with insertion order).
    pub id: i64,
    /// The conversation.
    pub conversation: ConversationKey,
    /// The flow, if any.
    pub flow_id: Option<String>,
    /// Inbound or outbound.
    pub direction: Direction,
    /// The content.
    pub content: Content,
    /// The node id.
    pub node_id: Option<String>,
    /// Meta's message id.
    pub wamid: Option<String>,
    /// When it happened.
    pub at: Timestamp,
    /// Metadata.
    pub metadata: serde_json::Value,
}

/// One conversation in a listing, from the message log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConversationSummary {
    /// The conversation.
    pub conversation: ConversationKey,
    /// Logged messages, both directions.
    pub message_count: u64,
    /// The first message's time.
    pub first_message_at: Timestamp,
    /// The latest message's time (listings are ordered by it, newest first).
    pub last_message_at: Timestamp,
}

/// The time window of a metrics query (`from` inclusive, `to` exclusive; `None` = open).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MetricsQuery {
    /// Only count from this time.
    pub from: Option<Timestamp>,
    /// Only count before this time.
    pub to: Option<Timestamp>,
}

impl MetricsQuery {
    pub(crate) fn bounds(&self) -> (i64, i64) {
        (self.from.map_or(i64::MIN, Timestamp::as_unix_millis), self.to.map_or(i64::MAX, Timestamp::as_unix_millis))
    }
}

/// An organization's counts: of sessions created in the window, and of log rows in it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Metrics {
    /// Sessions created in the window.
    pub conversations_total: u64,
    /// Of those, the ones still active.
    pub conversations_active: u64,
    /// Inbound log rows.
    pub messages_in: u64,
    /// Outbound log rows.
    pub messages_out: u64,
    /// The same counts per flow, ordered by flow id (log rows without a flow are left out).
    pub per_flow: Vec<FlowMetrics>,
    /// Sessions per [`SessionWrite::cohort`], ordered by cohort (sessions without one left out).
    pub per_cohort: Vec<CohortMetrics>,
    /// Counts per UTC day, ordered by day.
    pub per_day: Vec<DayMetrics>,
}

/// Counts for one flow.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FlowMetrics {
    /// The flow id.
    pub flow_id: String,
    /// Sessions created in the window.
    pub conversations_total: u64,
    /// Of those, still active.
    pub conversations_active: u64,
    /// Inbound log rows.
    pub messages_in: u64,
    /// Outbound log rows.
    pub messages_out: u64,
}

/// Session counts for one cohort: what an A/B test compares.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CohortMetrics {
    /// The cohort ([`SessionWrite::cohort`]).
    pub cohort: String,
    /// Sessions created in the window.
    pub conversations_total: u64,
    /// Of those, still active.
    pub conversations_active: u64,
}

/// Counts for one UTC day.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DayMetrics {
    /// The day, `YYYY-MM-DD` (UTC).
    pub day: String,
    /// Sessions created that day.
    pub conversations_started: u64,
    /// Inbound log rows.
    pub messages_in: u64,
    /// Outbound log rows.
    pub messages_out: u64,
}

/// What an inbox row carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InboxKind {
    /// An inbound message (or other webhook event) from Meta.
    Message,
    /// A scheduled wake-up (a `delay` node's end, an idle timeout), due at a time.
    WakeUp,
}

spelled!(InboxKind { WakeUp => "wake_up", Message => "message" } else Message);

/// An inbound event to insert.
#[derive(Clone, Debug, PartialEq)]
pub struct NewInboxEvent {
    /// The conversation it belongs to.
    pub conversation: ConversationKey,
    /// The deduplication key, unique per organization: Meta's message id (`wamid`) for
    /// messages; for wake-ups a key the host derives (for example `wake:<session>:<version>`).
    pub message_id: String,
    /// Message or wake-up.
    pub kind: InboxKind,
    /// The event itself (for example a serialized `flowcore::Input`).
    pub payload: serde_json::Value,
    /// When it was received (or scheduled).
    pub received_at: Timestamp,
    /// When it may be handled: `received_at` for messages, the wake-up time for wake-ups.
    /// Rows of one conversation are delivered in `(due_at, id)` order.
    pub due_at: Timestamp,
}

impl NewInboxEvent {
    /// An inbound message, due at once.
    pub fn message(
        conversation: ConversationKey,
        message_id: impl Into<String>,
        payload: serde_json::Value,
        received_at: Timestamp,
    ) -> Self {
        NewInboxEvent {
            kind: InboxKind::Message,
            ..NewInboxEvent::wake_up(conversation, message_id, payload, received_at, received_at)
        }
    }

    /// A wake-up due at `due_at`.
    pub fn wake_up(
        conversation: ConversationKey,
        key: impl Into<String>,
        payload: serde_json::Value,
        now: Timestamp,
        due_at: Timestamp,
    ) -> Self {
        NewInboxEvent {
            conversation,
            message_id: key.into(),
            kind: InboxKind::WakeUp,
            payload,
            received_at: now,
            due_at,
        }
    }
}

/// The result of an inbox insert.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InboxInsert {
    /// A new row with this id.
    Inserted(i64),
    /// The message id was already in the inbox (as this row id); nothing was inserted.
    Duplicate(i64),
}

impl InboxInsert {
    /// The row id, new or existing.
    pub fn id(self) -> i64 {
        match self {
            InboxInsert::Inserted(id) | InboxInsert::Duplicate(id) => id,
        }
    }

    /// True when the event was already there.
    pub fn is_duplicate(self) -> bool {
        matches!(self, InboxInsert::Duplicate(_))
    }
}

/// Where a queue row (inbox or outbox) stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QueueStatus {
    /// Waiting to be claimed (possibly backing off until `retry_at`).
    Pending,
    /// Claimed by a worker until `lease_until`.
    Claimed,
    /// Finished (inbox: handled; outbox: sent).
    Done,
    /// Given up on; kept for inspection, never retried.
    Failed,
}

spelled!(QueueStatus { Pending => "pending", Claimed => "claimed", Done => "done", Failed => "failed" } else Failed);

/// A claim on an inbox or outbox row. A later claim of the row has a higher attempt, so a slow
/// worker's late `done` fails with [`StoreError::LeaseLost`](crate::StoreError::LeaseLost).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Claim {
    /// The row id.
    pub id: i64,
    /// The attempt number (1 for the first claim).
    pub attempt: i64,
}

/// A claim request for inbox or outbox rows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClaimRequest {
    /// Only this organization's rows; `None` claims for every organization (a shared worker).
    pub org_id: Option<String>,
    /// The caller's clock: rows due at or before it are eligible, leases end relative to it.
    pub now: Timestamp,
    /// How long the claim holds; after it, the row can be claimed again.
    pub lease: Duration,
    /// The most rows to claim (at most one per conversation).
    pub limit: u32,
}

impl ClaimRequest {
    /// A claim across all organizations.
    pub fn any(now: Timestamp, lease: Duration, limit: u32) -> Self {
        ClaimRequest { org_id: None, now, lease, limit }
    }

    /// A claim for one organization.
    pub fn for_org(org_id: impl Into<String>, now: Timestamp, lease: Duration, limit: u32) -> Self {
        ClaimRequest { org_id: Some(org_id.into()), now, lease, limit }
    }

    pub(crate) fn lease_until(&self) -> Timestamp {
        self.now.saturating_add_millis(u64::try_from(self.lease.as_millis()).unwrap_or(u64::MAX))
    }
}

/// An inbox row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InboxEvent {
    /// The row id.
    pub id: i64,
    /// The conversation.
    pub conversation: ConversationKey,
    /// The deduplication key.
    pub message_id: String,
    /// Message or wake-up.
    pub kind: InboxKind,
    /// The event.
    pub payload: serde_json::Value,
    /// When it was received.
    pub received_at: Timestamp,
    /// When it is due.
    pub due_at: Timestamp,
    /// Where it stands.
    pub status: QueueStatus,
    /// How many times it was claimed.
    pub attempts: i64,
    /// The current claim's end, when claimed.
    pub lease_until: Option<Timestamp>,
    /// Not claimable before this time (after a failed attempt with retry).
    pub retry_at: Option<Timestamp>,
    /// The last failure's message.
    pub last_error: Option<String>,
}

impl InboxEvent {
    /// The claim to pass to `complete_inbox` / `fail_inbox` (or a [`Commit`]).
    pub fn claim(&self) -> Claim {
        Claim { id: self.id, attempt: self.attempts }
    }
}

/// A reply to enqueue.
#[derive(Clone, Debug, PartialEq)]
pub struct NewOutboxMessage {
    /// The conversation (the reply goes to its contact from its business number).
    pub conversation: ConversationKey,
    /// What to send (for example a serialized `flowcore::Message` or a Meta payload).
    pub payload: serde_json::Value,
    /// Not sent before this time.
    pub due_at: Timestamp,
    /// The inbox row that caused it, if any.
    pub inbox_id: Option<i64>,
}

/// Meta's delivery statuses, merged monotonically (`sent < failed < delivered < read`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryStatus {
    /// Accepted by Meta.
    Sent,
    /// Meta could not deliver it.
    Failed,
    /// Delivered to the device.
    Delivered,
    /// Read by the contact.
    Read,
}

spelled!(DeliveryStatus { Sent => "sent", Failed => "failed", Delivered => "delivered", Read => "read" });

impl DeliveryStatus {
    /// The merge rank (higher wins): 1 for `Sent` up to 4 for `Read`, in declaration order.
    pub fn rank(self) -> i64 {
        self as i64 + 1
    }

    /// Parses Meta's spelling (`sent`, `delivered`, `read`, `failed`).
    pub fn parse(s: &str) -> Option<DeliveryStatus> {
        DeliveryStatus::spelled(s)
    }
}

/// An outbox row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutboxMessage {
    /// The row id.
    pub id: i64,
    /// The conversation.
    pub conversation: ConversationKey,
    /// What to send.
    pub payload: serde_json::Value,
    /// Where it stands (`Done` = sent).
    pub status: QueueStatus,
    /// How many times it was claimed.
    pub attempts: i64,
    /// Not sent before this time.
    pub due_at: Timestamp,
    /// Not retried before this time (after a reschedule).
    pub retry_at: Option<Timestamp>,
    /// The current claim's end.
    pub lease_until: Option<Timestamp>,
    /// Meta's message id once sent.
    pub wamid: Option<String>,
    /// The last error.
    pub last_error: Option<String>,
    /// The inbox row that caused it.
    pub inbox_id: Option<i64>,
    /// The best delivery status Meta reported.
    pub delivery: Option<DeliveryStatus>,
    /// When that status was reported.
    pub delivery_at: Option<Timestamp>,
    /// When it was sent.
    pub sent_at: Option<Timestamp>,
}

impl OutboxMessage {
    /// `reply`, just written as row `id`: pending, never claimed.
    pub(crate) fn pending(id: i64, reply: NewOutboxMessage) -> OutboxMessage {
        let NewOutboxMessage { conversation, payload, due_at, inbox_id } = reply;
        OutboxMessage {
            id,
            conversation,
            payload,
            status: QueueStatus::Pending,
            attempts: 0,
            due_at,
            retry_at: None,
            lease_until: None,
            wamid: None,
            last_error: None,
            inbox_id,
            delivery: None,
            delivery_at: None,
            sent_at: None,
        }
    }

    /// `reply`, just written as row `id` and claimed (its first attempt) until `lease_until`.
    pub(crate) fn claimed_on_insert(id: i64, reply: &NewOutboxMessage, lease_until: Timestamp) -> OutboxMessage {
        let (status, attempts, lease_until) = (QueueStatus::Claimed, 1, Some(lease_until));
        OutboxMessage { status, attempts, lease_until, ..OutboxMessage::pending(id, reply.clone()) }
    }

    /// The claim to pass to `mark_sent` / `reschedule_outbox` / `fail_outbox`.
    pub fn claim(&self) -> Claim {
        Claim { id: self.id, attempt: self.attempts }
    }
}

/// A published flow definition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredFlow {
    /// The organization.
    pub org_id: String,
    /// The flow id.
    pub flow_id: String,
    /// Its version (1, 2, …; each publish adds one).
    pub version: i64,
    /// The flow's JSON text, exactly as published.
    pub definition: String,
    /// When it was published.
    pub published_at: Timestamp,
}

/// Everything one engine turn produced, which [`Store::commit`](crate::Store::commit) writes all or none of.
///
/// No `Default`: `now` is the inbox row's finish time, which purging reads, so a default epoch
/// would purge the row that filters duplicates. Start from [`Commit::new`].
#[derive(Clone, Debug, PartialEq)]
pub struct Commit {
    /// The organization every part belongs to (parts of another organization are refused).
    pub org_id: String,
    /// The caller's clock (recorded as the inbox row's finish time).
    pub now: Timestamp,
    /// The session save, if the turn touched a session.
    pub session: Option<SessionWrite>,
    /// Log rows to append.
    pub log: Vec<NewLogEntry>,
    /// Replies to enqueue.
    pub outbox: Vec<NewOutboxMessage>,
    /// Wake-ups (or other events) to schedule; duplicates are ignored.
    pub schedule: Vec<NewInboxEvent>,
    /// The inbox row this turn handled, marked done.
    pub inbox_done: Option<Claim>,
    /// Claim the replies for the caller until this time, as a claim would: when their
    /// conversation has no earlier unfinished reply and all are due by `now`. The caller sends
    /// them in order ([`CommitOutcome::claimed_replies`]). A backend may leave them to a claim.
    pub claim_replies_until: Option<Timestamp>,
    /// Claim the conversation's next inbox event for the caller until this time, as a claim
    /// would, as `inbox_done` is marked done ([`CommitOutcome::claimed_next`]). Unlike a
    /// claim it does not wait for this turn's replies: the caller sends them before it runs
    /// the claimed event's turn. A backend may leave the event to a claim.
    pub claim_next_until: Option<Timestamp>,
}

impl Commit {
    /// An empty commit of `org_id` at `now`, to fill in with struct update syntax.
    pub fn new(org_id: impl Into<String>, now: Timestamp) -> Commit {
        Commit {
            org_id: org_id.into(),
            now,
            session: None,
            log: Vec::new(),
            outbox: Vec::new(),
            schedule: Vec::new(),
            inbox_done: None,
            claim_replies_until: None,
            claim_next_until: None,
        }
    }
}

/// What a commit wrote.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CommitOutcome {
    /// The saved session, when there was one.
    pub session: Option<SavedSession>,
    /// The new log row ids, in order.
    pub log_ids: Vec<i64>,
    /// The new outbox row ids, in order.
    pub outbox_ids: Vec<i64>,
    /// The scheduled inbox rows, in order.
    pub scheduled: Vec<InboxInsert>,
    /// The replies claimed for the caller ([`Commit::claim_replies_until`]), in sending order.
    pub claimed_replies: Vec<OutboxMessage>,
    /// The next inbox event, claimed for the caller ([`Commit::claim_next_until`]).
    pub claimed_next: Option<Box<InboxEvent>>,
}

pub(crate) const DAY_MS: i64 = 86_400_000;

/// `YYYY-MM-DD` of the UTC day that starts `days` days after the epoch.
pub(crate) fn civil_day(days: i64) -> String {
    // Howard Hinnant's days_from_civil inverse.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!("{y:04}-{m:02}-{d:02}")
}

pub(crate) fn duration_ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_days() {
        assert_eq!(civil_day(0), "1970-01-01");
        assert_eq!(civil_day(19_723), "2024-01-01");
        assert_eq!(civil_day(19_723 + 59), "2024-02-29");
        assert_eq!(civil_day(-1), "1969-12-31");
    }

    #[test]
    fn delivery_order_is_monotonic() {
        assert!(DeliveryStatus::Read > DeliveryStatus::Delivered);
        assert!(DeliveryStatus::Delivered > DeliveryStatus::Failed);
        assert!(DeliveryStatus::Failed > DeliveryStatus::Sent);
        assert_eq!(DeliveryStatus::parse("read"), Some(DeliveryStatus::Read));
        assert_eq!(DeliveryStatus::parse("bogus"), None);
        assert_eq!(DeliveryStatus::Read.rank(), 4);
        assert_eq!(QueueStatus::parse(QueueStatus::Claimed.as_str()), QueueStatus::Claimed);
        assert_eq!(QueueStatus::parse("bogus"), QueueStatus::Failed);
    }
}
