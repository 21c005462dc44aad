//! The in-memory backend, the reference implementation: each table is a `Vec` of the rows the
//! traits return, behind one mutex, and each query a linear scan, so that every method reads
//! against its trait's docs.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Mutex, MutexGuard, PoisonError};

use async_trait::async_trait;
use flowcore::Timestamp;

use crate::error::{StoreError, StoreResult};
use crate::metrics_tally::MetricsTally;
use crate::state;
use crate::traits::*;
use crate::types::*;

/// The in-memory store: nothing survives the process. Share it as `Arc<dyn Store>`.
#[derive(Debug, Default)]
pub struct MemoryStore {
    tables: Mutex<Tables>,
}

/// Every organization's rows together; each call filters by the organization it names.
#[derive(Debug, Default)]
struct Tables {
    closed: bool,
    /// The last row id handed out: one sequence for rows of every kind, so ids are unique
    /// across the store and grow with insertion order.
    last_id: i64,
    orgs: BTreeSet<String>,
    sessions: Vec<(StoredSession, Option<String>)>,
    log: Vec<LogEntry>,
    inbox: Vec<Queued<InboxEvent>>,
    outbox: Vec<Queued<OutboxMessage>>,
    flows: Vec<StoredFlow>,
}

/// An inbox or outbox row and when it was finished for good (what retention is judged from).
#[derive(Debug)]
struct Queued<T> {
    row: T,
    finished_at: Option<Timestamp>,
}

/// The queue columns inbox and outbox rows share, borrowed so one claim and finish serve both.
struct Columns<'a> {
    id: i64,
    conversation: &'a ConversationKey,
    due_at: Timestamp,
    status: &'a mut QueueStatus,
    attempts: &'a mut i64,
    lease_until: &'a mut Option<Timestamp>,
    retry_at: &'a mut Option<Timestamp>,
    last_error: &'a mut Option<String>,
}

trait QueueRow: Clone {
    const WHAT: &'static str;
    fn id(&self) -> i64;
    fn org_id(&self) -> &str;
    fn columns(&mut self) -> Columns<'_>;
}

macro_rules! queue_row {
    ($row:ty, $what:literal) => {
        impl QueueRow for $row {
            const WHAT: &'static str = $what;
            fn id(&self) -> i64 {
                self.id
            }
            fn org_id(&self) -> &str {
                &self.conversation.org_id
            }
            fn columns(&mut self) -> Columns<'_> {
                Columns {
                    id: self.id,
                    conversation: &self.conversation,
                    due_at: self.due_at,
                    status: &mut self.status,
                    attempts: &mut self.attempts,
                    lease_until: &mut self.lease_until,
                    retry_at: &mut self.retry_at,
                    last_error: &mut self.last_error,
                }
            }
        }
    };
}
queue_row!(InboxEvent, "inbox event");
queue_row!(OutboxMessage, "outbox message");

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        MemoryStore::default()
    }

    /// The tables, unless the store is closed. No method awaits holding them (the guard is not `Send`).
    fn lock(&self) -> StoreResult<MutexGuard<'_, Tables>> {
        match self.tables.lock() {
            Ok(tables) if !tables.closed => Ok(tables),
            Ok(_) => Err(StoreError::Closed),
            Err(poisoned) if poisoned.get_ref().closed => Err(StoreError::Closed),
            // A call panicked holding the lock and may have left its writes half done: refuse
            // the tables rather than serve a commit that was not all or nothing.
            Err(_) => Err(StoreError::Database("an earlier call panicked inside the memory store".into())),
        }
    }

    /// The tables, once `org_id` is known to be registered.
    fn org(&self, org_id: &str) -> StoreResult<MutexGuard<'_, Tables>> {
        let tables = self.lock()?;
        tables.known(org_id)?;
        Ok(tables)
    }
}

impl Tables {
    fn known(&self, org_id: &str) -> StoreResult<()> {
        if self.orgs.contains(org_id) {
            return Ok(());
        }
        Err(StoreError::UnknownOrganization(org_id.to_owned()))
    }

    /// Checks the organization a claim or a reclaim names, if it names one.
    fn scope(&self, org_id: Option<&str>) -> StoreResult<()> {
        org_id.map_or(Ok(()), |org_id| self.known(org_id))
    }

    fn next_id(&mut self) -> i64 {
        self.last_id += 1;
        self.last_id
    }

    fn active(&mut self, key: &SessionKey) -> Option<&mut StoredSession> {
        let mut sessions = self.sessions.iter_mut().map(|(s, _)| s);
        sessions.find(|s| s.status == SessionStatus::Active && s.key == *key)
    }

    /// The active sessions whose key passes `keep`, most recently updated first.
    fn active_infos(&self, keep: impl Fn(&SessionKey) -> bool) -> Vec<SessionInfo> {
        let active = self.sessions.iter().filter(|(s, _)| s.status == SessionStatus::Active && keep(&s.key));
        let mut infos: Vec<SessionInfo> = active.map(|(s, _)| info(s)).collect();
        infos.sort_by_key(|info| std::cmp::Reverse((info.updated_at, info.id)));
        infos
    }

    /// A conflict unless the active session's version (0 for none) is the one expected.
    fn check_write(&mut self, write: &SessionWrite) -> StoreResult<()> {
        let found = self.active(&write.key).map(|s| s.version);
        if found.unwrap_or(0) == write.expected_version {
            return Ok(());
        }
        Err(StoreError::Conflict { key: write.key.to_string(), expected: write.expected_version, found })
    }

    /// Applies a checked write; an update keeps the cohort the session started in.
    fn apply_write(&mut self, w: SessionWrite) -> SavedSession {
        let closed_at = (w.status == SessionStatus::Closed).then_some(w.now);
        if let Some(s) = self.active(&w.key) {
            (s.version, s.flow_version, s.status, s.session) = (s.version + 1, w.flow_version, w.status, w.session);
            (s.updated_at, s.closed_at) = (w.now, closed_at);
            return SavedSession { id: s.id, version: s.version };
        }
        let id = self.next_id();
        let (key, flow_version, version, status, session) = (w.key, w.flow_version, 1, w.status, w.session);
        let (created_at, updated_at) = (w.now, w.now);
        let stored =
            StoredSession { id, key, flow_version, version, status, session, created_at, updated_at, closed_at };
        self.sessions.push((stored, w.cohort));
        SavedSession { id, version: 1 }
    }

    fn append_log(&mut self, entries: impl IntoIterator<Item = NewLogEntry>) -> Vec<i64> {
        let mut ids = Vec::new();
        for NewLogEntry { conversation, flow_id, direction, content, node_id, wamid, at, metadata } in entries {
            let id = self.next_id();
            self.log.push(LogEntry { id, conversation, flow_id, direction, content, node_id, wamid, at, metadata });
            ids.push(id);
        }
        ids
    }

    /// Inserts an event unless its message id is already in the organization's inbox.
    fn insert_inbox(&mut self, event: NewInboxEvent) -> InboxInsert {
        let org_id = &event.conversation.org_id;
        let mut same = self.inbox.iter().map(|q| &q.row);
        if let Some(row) = same.find(|r| r.conversation.org_id == *org_id && r.message_id == event.message_id) {
            return InboxInsert::Duplicate(row.id);
        }
        let NewInboxEvent { conversation, message_id, kind, payload, received_at, due_at } = event;
        let (id, status) = (self.next_id(), QueueStatus::Pending);
        let (attempts, lease_until, retry_at, last_error) = (0, None, None, None);
        let row = InboxEvent {
            id,
            conversation,
            message_id,
            kind,
            payload,
            received_at,
            due_at,
            status,
            attempts,
            lease_until,
            retry_at,
            last_error,
        };
        self.inbox.push(Queued { row, finished_at: None });
        InboxInsert::Inserted(id)
    }

    fn enqueue_outbox(&mut self, messages: impl IntoIterator<Item = NewOutboxMessage>) -> Vec<i64> {
        let mut ids = Vec::new();
        for message in messages {
            let id = self.next_id();
            self.outbox.push(Queued { row: OutboxMessage::pending(id, message), finished_at: None });
            ids.push(id);
        }
        ids
    }
}

fn info(s: &StoredSession) -> SessionInfo {
    let (current_node, wake_at) = state::meta(&s.session);
    let (id, key, flow_version, version, status) = (s.id, s.key.clone(), s.flow_version, s.version, s.status);
    let (created_at, updated_at, closed_at) = (s.created_at, s.updated_at, s.closed_at);
    SessionInfo { id, key, flow_version, version, status, current_node, wake_at, created_at, updated_at, closed_at }
}

/// Refuses a row of another organization than the call's.
fn same_org<'a>(org_id: &str, mut row_orgs: impl Iterator<Item = &'a String>) -> StoreResult<()> {
    let Some(other) = row_orgs.find(|row_org_id| *row_org_id != org_id) else { return Ok(()) };
    Err(StoreError::InvalidInput(format!("row of organization {other:?} passed to organization {org_id:?}")))
}

/// The rows of `page`, out of rows already in order.
fn page<T>(rows: impl Iterator<Item = T>, page: Page) -> Vec<T> {
    rows.skip(usize::try_from(page.offset).unwrap_or(usize::MAX))
        .take(page.limit.min(Page::MAX_LIMIT) as usize)
        .collect()
}

fn before(now: Timestamp, span: std::time::Duration) -> Timestamp {
    Timestamp::from_unix_millis(now.as_unix_millis().saturating_sub(duration_ms(span)))
}

fn in_scope(org_id: Option<&str>, conversation: &ConversationKey) -> bool {
    org_id.is_none_or(|org_id| conversation.org_id == org_id)
}

/// Claims what `request` may take, in `(due_at, id)` order: per conversation only its first
/// unfinished row, when that row is due, not waiting for a retry, and its conversation neither
/// has a row out under a live lease nor is in `busy` already.
fn claim<T: QueueRow>(rows: &mut [Queued<T>], request: &ClaimRequest, mut busy: BTreeSet<ConversationKey>) -> Vec<T> {
    let now = request.now;
    let mut open = Vec::new();
    for (i, q) in rows.iter_mut().enumerate() {
        let c = q.row.columns();
        if !in_scope(request.org_id.as_deref(), c.conversation) {
            continue;
        }
        // A lease ending at `now` still holds.
        if *c.status == QueueStatus::Claimed && c.lease_until.is_some_and(|until| until >= now) {
            busy.insert(c.conversation.clone());
        }
        if matches!(c.status, QueueStatus::Pending | QueueStatus::Claimed) {
            open.push((c.due_at, c.id, i));
        }
    }
    open.sort_unstable();
    let (mut heads, mut claimed) = (BTreeSet::new(), Vec::new());
    for (due_at, _, i) in open {
        let c = rows[i].row.columns();
        let head = heads.insert(c.conversation.clone());
        if !head || busy.contains(c.conversation) || due_at > now || c.retry_at.is_some_and(|at| at > now) {
            continue;
        }
        if claimed.len() >= request.limit.min(Page::MAX_LIMIT) as usize {
            break;
        }
        (*c.status, *c.attempts, *c.lease_until) = (QueueStatus::Claimed, *c.attempts + 1, Some(request.lease_until()));
        claimed.push(rows[i].row.clone());
    }
    claimed
}

/// The row `claim` names: `NotFound` if the organization has none, `LeaseLost` if the claim ended.
fn claimed<'a, T: QueueRow>(rows: &'a mut [Queued<T>], org_id: &str, claim: Claim) -> StoreResult<&'a mut Queued<T>> {
    let what = T::WHAT;
    // Rows are kept in id order (ids grow with insertion, purges keep the order).
    let found = rows.binary_search_by_key(&claim.id, |q| q.row.id()).ok();
    let ours = found.filter(|&i| rows[i].row.org_id() == org_id);
    let q = &mut rows[ours.ok_or_else(|| StoreError::NotFound { what, id: claim.id.to_string() })?];
    let c = q.row.columns();
    if *c.status != QueueStatus::Claimed || *c.attempts != claim.attempt {
        return Err(StoreError::LeaseLost { what, id: claim.id, attempt: claim.attempt });
    }
    Ok(q)
}

/// Finishes a claimed row for good (done or failed) at `now`.
fn finish<T: QueueRow>(q: &mut Queued<T>, status: QueueStatus, now: Timestamp, error: Option<&str>) {
    let c = q.row.columns();
    (*c.status, *c.lease_until) = (status, None);
    if let Some(error) = error {
        *c.last_error = Some(error.to_owned());
    }
    q.finished_at = Some(now);
}

/// Puts a claimed row back, not to be claimed before `retry_at`.
fn retry<T: QueueRow>(q: &mut Queued<T>, retry_at: Timestamp, error: &str) {
    let c = q.row.columns();
    (*c.status, *c.lease_until, *c.retry_at) = (QueueStatus::Pending, None, Some(retry_at));
    *c.last_error = Some(error.to_owned());
}

/// Returns rows whose lease ended before `now` to pending; the count.
fn reclaim<T: QueueRow>(rows: &mut [Queued<T>], org_id: Option<&str>, now: Timestamp) -> u64 {
    let mut reclaimed = 0;
    for q in rows {
        let c = q.row.columns();
        if in_scope(org_id, c.conversation)
            && *c.status == QueueStatus::Claimed
            && c.lease_until.is_some_and(|u| u < now)
        {
            (*c.status, *c.lease_until) = (QueueStatus::Pending, None);
            reclaimed += 1;
        }
    }
    reclaimed
}

/// Deletes the organization's rows finished before `cutoff`; the count.
fn purge_finished<T: QueueRow>(rows: &mut Vec<Queued<T>>, org_id: &str, cutoff: Timestamp) -> u64 {
    let before = rows.len();
    rows.retain_mut(|q| q.row.columns().conversation.org_id != org_id || q.finished_at.is_none_or(|at| at >= cutoff));
    (before - rows.len()) as u64
}

/// Records a delivery status unless a higher one is recorded already.
fn merge_delivery(row: &mut OutboxMessage, status: DeliveryStatus, at: Timestamp) {
    if row.delivery.is_none_or(|recorded| recorded.rank() < status.rank()) {
        (row.delivery, row.delivery_at) = (Some(status), Some(at));
    }
}

#[async_trait]
impl Organizations for MemoryStore {
    async fn register_organization(&self, org_id: &str) -> StoreResult<()> {
        self.lock()?.orgs.insert(org_id.to_owned());
        Ok(())
    }

    async fn organization_exists(&self, org_id: &str) -> StoreResult<bool> {
        Ok(self.lock()?.orgs.contains(org_id))
    }
}

#[async_trait]
impl SessionStore for MemoryStore {
    async fn load_session(&self, key: &SessionKey) -> StoreResult<Option<StoredSession>> {
        Ok(self.org(&key.org_id)?.active(key).cloned())
    }

    async fn conversation_sessions(&self, conversation: &ConversationKey) -> StoreResult<Vec<SessionInfo>> {
        Ok(self.org(&conversation.org_id)?.active_infos(|key| key.conversation() == *conversation))
    }

    async fn save_session(&self, write: SessionWrite) -> StoreResult<SavedSession> {
        let mut tables = self.org(&write.key.org_id)?;
        tables.check_write(&write)?;
        Ok(tables.apply_write(write))
    }

    async fn close_session(&self, key: &SessionKey, now: Timestamp) -> StoreResult<bool> {
        let mut tables = self.org(&key.org_id)?;
        let Some(s) = tables.active(key) else { return Ok(false) };
        (s.status, s.version, s.updated_at, s.closed_at) = (SessionStatus::Closed, s.version + 1, now, Some(now));
        Ok(true)
    }

    async fn list_active_sessions(&self, org_id: &str, page: Page) -> StoreResult<Vec<SessionInfo>> {
        Ok(self::page(self.org(org_id)?.active_infos(|key| key.org_id == org_id).into_iter(), page))
    }

    async fn purge(&self, org_id: &str, now: Timestamp, policy: PurgePolicy) -> StoreResult<PurgeReport> {
        let mut tables = self.org(org_id)?;
        let (expired_before, retained_after) = (before(now, policy.session_ttl), before(now, policy.retention));
        let mut report = PurgeReport::default();
        tables.sessions.retain(|(s, _)| {
            let ours = s.key.org_id == org_id;
            let expired = ours && s.status == SessionStatus::Active && s.updated_at < expired_before;
            let retired =
                ours && s.status == SessionStatus::Closed && s.closed_at.is_some_and(|at| at < retained_after);
            report.expired_sessions += u64::from(expired);
            report.closed_sessions += u64::from(retired);
            !(expired || retired)
        });
        report.inbox_rows = purge_finished(&mut tables.inbox, org_id, retained_after);
        report.outbox_rows = purge_finished(&mut tables.outbox, org_id, retained_after);
        Ok(report)
    }
}

#[async_trait]
impl MessageLog for MemoryStore {
    async fn append_log(&self, org_id: &str, entries: &[NewLogEntry]) -> StoreResult<Vec<i64>> {
        let mut tables = self.org(org_id)?;
        same_org(org_id, entries.iter().map(|e| &e.conversation.org_id))?;
        Ok(tables.append_log(entries.iter().cloned()))
    }

    async fn history(&self, conversation: &ConversationKey, page: Page) -> StoreResult<Vec<LogEntry>> {
        let tables = self.org(&conversation.org_id)?;
        Ok(self::page(tables.log.iter().filter(|e| e.conversation == *conversation).cloned(), page))
    }

    async fn inbound_counts(&self, windows: &[(ConversationKey, Timestamp)], at_most: u64) -> StoreResult<Vec<u64>> {
        let tables = self.lock()?;
        let count = |(conversation, since): &(ConversationKey, Timestamp)| {
            tables.known(&conversation.org_id)?;
            let refused = |e: &LogEntry| e.metadata.get(RATE_LIMITED) == Some(&serde_json::Value::Bool(true));
            let counted = tables.log.iter().filter(|e| {
                e.conversation == *conversation && e.direction == Direction::Inbound && e.at > *since && !refused(e)
            });
            Ok((counted.count() as u64).min(at_most))
        };
        windows.iter().map(count).collect()
    }

    async fn list_conversations(&self, org_id: &str, page: Page) -> StoreResult<Vec<ConversationSummary>> {
        let tables = self.org(org_id)?;
        let mut summaries: BTreeMap<&ConversationKey, ConversationSummary> = BTreeMap::new();
        for e in tables.log.iter().filter(|e| e.conversation.org_id == org_id) {
            let summary = summaries.entry(&e.conversation).or_insert_with(|| ConversationSummary {
                conversation: e.conversation.clone(),
                message_count: 0,
                first_message_at: e.at,
                last_message_at: e.at,
            });
            summary.message_count += 1;
            summary.first_message_at = summary.first_message_at.min(e.at);
            summary.last_message_at = summary.last_message_at.max(e.at);
        }
        // Latest activity first; the sort is stable, so ties stay in conversation order.
        let mut list: Vec<ConversationSummary> = summaries.into_values().collect();
        list.sort_by_key(|summary| std::cmp::Reverse(summary.last_message_at));
        Ok(self::page(list.into_iter(), page))
    }

    async fn metrics(&self, org_id: &str, query: MetricsQuery) -> StoreResult<Metrics> {
        let tables = self.org(org_id)?;
        let (from, to) = query.bounds();
        let in_window = |t: Timestamp| (from..to).contains(&t.as_unix_millis());
        let day_of = |t: Timestamp| t.as_unix_millis().div_euclid(DAY_MS);
        let mut tally = MetricsTally::default();
        for (s, cohort) in tables.sessions.iter().filter(|(s, _)| s.key.org_id == org_id && in_window(s.created_at)) {
            let active = s.status == SessionStatus::Active;
            tally.sessions(&s.key.flow_id, cohort.as_deref(), day_of(s.created_at), active, 1);
        }
        for e in tables.log.iter().filter(|e| e.conversation.org_id == org_id && in_window(e.at)) {
            tally.messages(e.flow_id.as_deref(), day_of(e.at), e.direction == Direction::Inbound, 1);
        }
        Ok(tally.finish())
    }
}

#[async_trait]
impl Inbox for MemoryStore {
    async fn insert_inbox(&self, event: NewInboxEvent) -> StoreResult<InboxInsert> {
        Ok(self.org(&event.conversation.org_id)?.insert_inbox(event))
    }

    async fn claim_inbox(&self, request: &ClaimRequest) -> StoreResult<Vec<InboxEvent>> {
        let mut tables = self.lock()?;
        tables.scope(request.org_id.as_deref())?;
        // A conversation waits while one of its replies is out with a sender.
        let out = tables.outbox.iter().map(|q| &q.row);
        let sending =
            out.filter(|m| m.status == QueueStatus::Claimed && m.lease_until.is_some_and(|u| u >= request.now));
        let busy = sending.map(|m| m.conversation.clone()).collect();
        Ok(claim(&mut tables.inbox, request, busy))
    }

    async fn complete_inbox(&self, org_id: &str, claim: Claim, now: Timestamp) -> StoreResult<()> {
        finish(claimed(&mut self.org(org_id)?.inbox, org_id, claim)?, QueueStatus::Done, now, None);
        Ok(())
    }

    async fn fail_inbox(
        &self,
        org_id: &str,
        claim: Claim,
        error: &str,
        retry_at: Option<Timestamp>,
        now: Timestamp,
    ) -> StoreResult<()> {
        let mut tables = self.org(org_id)?;
        let q = claimed(&mut tables.inbox, org_id, claim)?;
        match retry_at {
            Some(at) => retry(q, at, error),
            None => finish(q, QueueStatus::Failed, now, Some(error)),
        }
        Ok(())
    }

    async fn reclaim_inbox(&self, org_id: Option<&str>, now: Timestamp) -> StoreResult<u64> {
        let mut tables = self.lock()?;
        tables.scope(org_id)?;
        Ok(reclaim(&mut tables.inbox, org_id, now))
    }

    async fn get_inbox(&self, org_id: &str, id: i64) -> StoreResult<Option<InboxEvent>> {
        let tables = self.org(org_id)?;
        Ok(tables.inbox.iter().map(|q| &q.row).find(|r| r.id == id && r.conversation.org_id == org_id).cloned())
    }
}

#[async_trait]
impl Outbox for MemoryStore {
    async fn enqueue_outbox(&self, org_id: &str, messages: &[NewOutboxMessage]) -> StoreResult<Vec<i64>> {
        let mut tables = self.org(org_id)?;
        same_org(org_id, messages.iter().map(|m| &m.conversation.org_id))?;
        Ok(tables.enqueue_outbox(messages.iter().cloned()))
    }

    async fn claim_outbox(&self, request: &ClaimRequest) -> StoreResult<Vec<OutboxMessage>> {
        let mut tables = self.lock()?;
        tables.scope(request.org_id.as_deref())?;
        Ok(claim(&mut tables.outbox, request, BTreeSet::new()))
    }

    async fn mark_sent(&self, org_id: &str, claim: Claim, wamid: &str, now: Timestamp) -> StoreResult<()> {
        let mut tables = self.org(org_id)?;
        let q = claimed(&mut tables.outbox, org_id, claim)?;
        finish(q, QueueStatus::Done, now, None);
        (q.row.wamid, q.row.sent_at) = (Some(wamid.to_owned()), Some(now));
        merge_delivery(&mut q.row, DeliveryStatus::Sent, now);
        Ok(())
    }

    async fn reschedule_outbox(&self, org_id: &str, claim: Claim, retry_at: Timestamp, error: &str) -> StoreResult<()> {
        retry(claimed(&mut self.org(org_id)?.outbox, org_id, claim)?, retry_at, error);
        Ok(())
    }

    async fn fail_outbox(&self, org_id: &str, claim: Claim, error: &str, now: Timestamp) -> StoreResult<()> {
        finish(claimed(&mut self.org(org_id)?.outbox, org_id, claim)?, QueueStatus::Failed, now, Some(error));
        Ok(())
    }

    async fn reclaim_outbox(&self, org_id: Option<&str>, now: Timestamp) -> StoreResult<u64> {
        let mut tables = self.lock()?;
        tables.scope(org_id)?;
        Ok(reclaim(&mut tables.outbox, org_id, now))
    }

    async fn record_delivery(
        &self,
        org_id: &str,
        wamid: &str,
        status: DeliveryStatus,
        at: Timestamp,
    ) -> StoreResult<bool> {
        let mut tables = self.org(org_id)?;
        let mut found = false;
        for q in tables.outbox.iter_mut() {
            if q.row.conversation.org_id == org_id && q.row.wamid.as_deref() == Some(wamid) {
                merge_delivery(&mut q.row, status, at);
                found = true;
            }
        }
        Ok(found)
    }

    async fn get_outbox(&self, org_id: &str, id: i64) -> StoreResult<Option<OutboxMessage>> {
        let tables = self.org(org_id)?;
        Ok(tables.outbox.iter().map(|q| &q.row).find(|r| r.id == id && r.conversation.org_id == org_id).cloned())
    }
}

#[async_trait]
impl FlowStore for MemoryStore {
    async fn publish_flow(&self, org_id: &str, flow_id: &str, definition: &str, now: Timestamp) -> StoreResult<i64> {
        let mut tables = self.org(org_id)?;
        let versions = tables.flows.iter().filter(|f| f.org_id == org_id && f.flow_id == flow_id);
        let version = versions.map(|f| f.version).max().unwrap_or(0) + 1;
        let (org_id, flow_id, definition) = (org_id.to_owned(), flow_id.to_owned(), definition.to_owned());
        tables.flows.push(StoredFlow { org_id, flow_id, version, definition, published_at: now });
        Ok(version)
    }

    async fn get_flow(&self, org_id: &str, flow_id: &str, version: Option<i64>) -> StoreResult<Option<StoredFlow>> {
        let tables = self.org(org_id)?;
        let asked = tables.flows.iter().filter(|f| f.org_id == org_id && f.flow_id == flow_id);
        Ok(asked.filter(|f| version.is_none_or(|v| f.version == v)).max_by_key(|f| f.version).cloned())
    }

    async fn list_flows(&self, org_id: &str) -> StoreResult<Vec<StoredFlow>> {
        let tables = self.org(org_id)?;
        // Versions are published in order, so the last of each flow id is its latest.
        let mut latest: BTreeMap<&str, &StoredFlow> = BTreeMap::new();
        for flow in tables.flows.iter().filter(|f| f.org_id == org_id) {
            latest.insert(&flow.flow_id, flow);
        }
        Ok(latest.into_values().cloned().collect())
    }
}

#[async_trait]
impl Store for MemoryStore {
    /// Checks every part, then writes them all; replies and the next event are left to a claim.
    async fn commit(&self, commit: Commit) -> StoreResult<CommitOutcome> {
        let mut tables = self.org(&commit.org_id)?;
        let row_orgs = (commit.session.iter().map(|w| &w.key.org_id))
            .chain(commit.log.iter().map(|e| &e.conversation.org_id))
            .chain(commit.outbox.iter().map(|m| &m.conversation.org_id))
            .chain(commit.schedule.iter().map(|s| &s.conversation.org_id));
        same_org(&commit.org_id, row_orgs)?;
        if let Some(write) = &commit.session {
            tables.check_write(write)?;
        }
        if let Some(claim) = commit.inbox_done {
            // Everything else is checked: from here on nothing fails.
            finish(claimed(&mut tables.inbox, &commit.org_id, claim)?, QueueStatus::Done, commit.now, None);
        }
        Ok(CommitOutcome {
            session: commit.session.map(|write| tables.apply_write(write)),
            log_ids: tables.append_log(commit.log),
            outbox_ids: tables.enqueue_outbox(commit.outbox),
            scheduled: commit.schedule.into_iter().map(|event| tables.insert_inbox(event)).collect(),
            claimed_replies: Vec::new(),
            claimed_next: None,
        })
    }

    async fn ping(&self) -> StoreResult<()> {
        self.lock().map(drop)
    }

    async fn close(&self) {
        // Setting the flag is safe whatever state a panic left the tables in.
        self.tables.lock().unwrap_or_else(PoisonError::into_inner).closed = true;
    }

    fn backend(&self) -> &'static str {
        "memory"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn t(seconds: i64) -> Timestamp {
        Timestamp::from_unix_seconds(1_700_000_000 + seconds)
    }

    /// A claim for every organization takes the earliest due rows of all of them, in order.
    #[tokio::test]
    async fn claims_across_organizations_take_the_earliest() {
        let store = MemoryStore::new();
        for (org, contact, at) in [("a", "c1", 3), ("b", "c1", 1), ("a", "c2", 2), ("b", "c2", 4)] {
            store.register_organization(org).await.unwrap();
            let chat = ConversationKey::new(org, "biz", contact);
            let event = NewInboxEvent::message(chat, format!("m{at}"), serde_json::Value::Null, t(at));
            store.insert_inbox(event).await.unwrap();
        }
        let claimed = store.claim_inbox(&ClaimRequest::any(t(10), Duration::from_secs(30), 3)).await.unwrap();
        assert_eq!(claimed.iter().map(|e| e.message_id.as_str()).collect::<Vec<_>>(), ["m1", "m2", "m3"]);
    }

    /// After a panic under the lock the store refuses calls, and closing it still works.
    #[tokio::test]
    async fn a_poisoned_store_refuses_calls() {
        let store = MemoryStore::new();
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _tables = store.tables.lock();
            panic!("a bug under the lock");
        }));
        assert!(panicked.is_err());
        assert!(matches!(store.ping().await, Err(StoreError::Database(_))));
        store.close().await;
        assert!(matches!(store.register_organization("a").await, Err(StoreError::Closed)));
    }
}
