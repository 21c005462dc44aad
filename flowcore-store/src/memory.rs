//! The in-memory backend: the reference implementation of the store traits.
//!
//! Every table is a plain `Vec` of rows behind one mutex and every query is a linear scan,
//! so that each method can be checked against its trait's docs. Nothing survives the
//! process: it serves tests and single-process development, and passes the same
//! conformance kit as the SQL backends.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use flowcore::Timestamp;

use crate::error::{StoreError, StoreResult};
use crate::metrics_tally::MetricsTally;
use crate::state::{self, Session};
use crate::traits::*;
use crate::types::*;

/// The in-memory store. Cheap to create; share it as `Arc<MemoryStore>` or `Arc<dyn Store>`.
///
/// ```
/// use flowcore_store::{MemoryStore, Organizations};
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// let store = MemoryStore::new();
/// store.register_organization("acme").await?;
/// assert!(store.organization_exists("acme").await?);
/// # Ok::<(), flowcore_store::StoreError>(())
/// # }).unwrap();
/// ```
#[derive(Debug, Default)]
pub struct MemoryStore {
    tables: Mutex<Tables>,
}

#[derive(Debug, Default)]
struct Tables {
    closed: bool,
    /// The last row id handed out: one sequence for rows of every kind, so that ids only
    /// grow and are unique across the store.
    last_id: i64,
    orgs: BTreeMap<String, Org>,
}

/// One organization's rows, kept apart so that no call reaches another tenant's.
#[derive(Debug, Default)]
struct Org {
    sessions: Vec<SessionRow>,
    log: Vec<LogEntry>,
    inbox: Vec<Queued<InboxData>>,
    outbox: Vec<Queued<OutboxData>>,
    flows: Vec<StoredFlow>,
}

#[derive(Debug)]
struct SessionRow {
    info: SessionInfo,
    session: Session,
    cohort: Option<String>,
}

/// An inbox or outbox row: the queue's columns, then those of its kind.
#[derive(Debug)]
struct Queued<T> {
    id: i64,
    conversation: ConversationKey,
    due_at: Timestamp,
    status: QueueStatus,
    attempts: i64,
    lease_until: Option<Timestamp>,
    retry_at: Option<Timestamp>,
    last_error: Option<String>,
    /// When it was done or failed for good: what purge's retention is judged from.
    finished_at: Option<Timestamp>,
    data: T,
}

#[derive(Debug)]
struct InboxData {
    message_id: String,
    kind: InboxKind,
    payload: serde_json::Value,
    received_at: Timestamp,
}

#[derive(Debug)]
struct OutboxData {
    payload: serde_json::Value,
    inbox_id: Option<i64>,
    wamid: Option<String>,
    delivery: Option<DeliveryStatus>,
    delivery_at: Option<Timestamp>,
    sent_at: Option<Timestamp>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        MemoryStore::default()
    }

    /// The tables, unless the store is closed. No method awaits while it holds them (the
    /// guard is not `Send`, so the compiler would refuse one that did).
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
}

impl Tables {
    fn org(&self, org_id: &str) -> StoreResult<&Org> {
        self.orgs.get(org_id).ok_or_else(|| StoreError::UnknownOrganization(org_id.to_owned()))
    }

    fn org_mut(&mut self, org_id: &str) -> StoreResult<&mut Org> {
        self.orgs.get_mut(org_id).ok_or_else(|| StoreError::UnknownOrganization(org_id.to_owned()))
    }

    /// The organization's rows and the last id, to add rows with.
    fn org_and_ids(&mut self, org_id: &str) -> StoreResult<(&mut Org, &mut i64)> {
        let org = self.orgs.get_mut(org_id).ok_or_else(|| StoreError::UnknownOrganization(org_id.to_owned()))?;
        Ok((org, &mut self.last_id))
    }

    /// The organizations a claim or a reclaim covers: the one named, or every one.
    fn scope(&mut self, org_id: Option<&str>) -> StoreResult<Vec<&mut Org>> {
        match org_id {
            Some(org_id) => Ok(vec![self.org_mut(org_id)?]),
            None => Ok(self.orgs.values_mut().collect()),
        }
    }

    fn claimed_inbox(&mut self, org_id: &str, claim: Claim) -> StoreResult<&mut Queued<InboxData>> {
        claimed_row(&mut self.org_mut(org_id)?.inbox, "inbox event", claim)
    }

    fn claimed_outbox(&mut self, org_id: &str, claim: Claim) -> StoreResult<&mut Queued<OutboxData>> {
        claimed_row(&mut self.org_mut(org_id)?.outbox, "outbox message", claim)
    }
}

/// Refuses a row of another organization than the call's.
fn same_org(org_id: &str, row_org_id: &str) -> StoreResult<()> {
    if org_id == row_org_id {
        return Ok(());
    }
    Err(StoreError::InvalidInput(format!("row of organization {row_org_id:?} passed to organization {org_id:?}")))
}

/// The rows of `page`, out of rows already in order.
fn page<I: Iterator>(rows: I, page: Page) -> impl Iterator<Item = I::Item> {
    rows.skip(usize::try_from(page.offset).unwrap_or(usize::MAX)).take(page.limit.min(Page::MAX_LIMIT) as usize)
}

fn next_id(last_id: &mut i64) -> i64 {
    *last_id += 1;
    *last_id
}

fn before(now: Timestamp, span: Duration) -> Timestamp {
    Timestamp::from_unix_millis(now.as_unix_millis().saturating_sub(duration_ms(span)))
}

fn is_active(row: &SessionRow, key: &SessionKey) -> bool {
    row.info.status == SessionStatus::Active && row.info.key == *key
}

/// The active sessions whose key passes `keep`, most recently updated first.
fn active_infos(sessions: &[SessionRow], keep: impl Fn(&SessionKey) -> bool) -> Vec<SessionInfo> {
    let active = sessions.iter().filter(|row| row.info.status == SessionStatus::Active && keep(&row.info.key));
    let mut infos: Vec<SessionInfo> = active.map(|row| row.info.clone()).collect();
    infos.sort_by_key(|info| Reverse((info.updated_at, info.id)));
    infos
}

/// Checks a compare-and-set write: the id of the active row it replaces (none for a new
/// session), or a conflict when the stored version is not the one expected.
fn check_session_write(sessions: &[SessionRow], write: &SessionWrite) -> StoreResult<Option<i64>> {
    let current = sessions.iter().find(|row| is_active(row, &write.key));
    let found = current.map(|row| row.info.version);
    // Expecting 0 means "no active session yet"; stored versions start at 1.
    if found.unwrap_or(0) != write.expected_version {
        return Err(StoreError::Conflict { key: write.key.to_string(), expected: write.expected_version, found });
    }
    Ok(current.map(|row| row.info.id))
}

/// Applies a write that [`check_session_write`] passed, to the row it found or as a new one.
fn apply_session_write(
    rows: &mut Vec<SessionRow>,
    last_id: &mut i64,
    current: Option<i64>,
    w: SessionWrite,
) -> SavedSession {
    let (current_node, wake_at) = state::meta(&w.session);
    let closed_at = (w.status == SessionStatus::Closed).then_some(w.now);
    if let Some(row) = current.and_then(|id| rows.iter_mut().find(|row| row.info.id == id)) {
        // The cohort stays the one the session started in; the flow version is the write's
        // (a runtime may move a session to a newer version of its flow).
        let info = &mut row.info;
        (info.version, info.status, info.current_node, info.wake_at, info.flow_version) =
            (info.version + 1, w.status, current_node, wake_at, w.flow_version);
        (info.updated_at, info.closed_at, row.session) = (w.now, closed_at, w.session);
        return SavedSession { id: info.id, version: info.version };
    }
    let id = next_id(last_id);
    let (key, flow_version, status, created_at, updated_at) = (w.key, w.flow_version, w.status, w.now, w.now);
    let info = SessionInfo {
        id,
        key,
        flow_version,
        version: 1,
        status,
        current_node,
        wake_at,
        created_at,
        updated_at,
        closed_at,
    };
    rows.push(SessionRow { info, session: w.session, cohort: w.cohort });
    SavedSession { id, version: 1 }
}

fn stored_session(row: &SessionRow) -> StoredSession {
    let SessionInfo { id, ref key, flow_version, version, status, created_at, updated_at, closed_at, .. } = row.info;
    let (key, session) = (key.clone(), row.session.clone());
    StoredSession { id, key, flow_version, version, status, session, created_at, updated_at, closed_at }
}

fn append_log(log: &mut Vec<LogEntry>, last_id: &mut i64, entries: impl IntoIterator<Item = NewLogEntry>) -> Vec<i64> {
    let mut new_ids = Vec::new();
    for NewLogEntry { conversation, flow_id, direction, content, node_id, wamid, at, metadata } in entries {
        let id = next_id(last_id);
        new_ids.push(id);
        log.push(LogEntry { id, conversation, flow_id, direction, content, node_id, wamid, at, metadata });
    }
    new_ids
}

/// Whether `e` counts against `conversation`'s rate limit in a window opened at `since`.
fn counts_against_limit(e: &LogEntry, conversation: &ConversationKey, since: Timestamp) -> bool {
    let refused = e.metadata.get(RATE_LIMITED) == Some(&serde_json::Value::Bool(true));
    e.conversation == *conversation && e.direction == Direction::Inbound && e.at > since && !refused
}

impl<T> Queued<T> {
    fn new(id: i64, conversation: ConversationKey, due_at: Timestamp, data: T) -> Self {
        let status = QueueStatus::Pending;
        let (lease_until, retry_at, last_error, finished_at) = (None, None, None, None);
        Queued { id, conversation, due_at, status, attempts: 0, lease_until, retry_at, last_error, finished_at, data }
    }

    fn is_open(&self) -> bool {
        matches!(self.status, QueueStatus::Pending | QueueStatus::Claimed)
    }

    /// Out under a lease still live at `now` (a lease ending at `now` still holds).
    fn is_leased_at(&self, now: Timestamp) -> bool {
        self.status == QueueStatus::Claimed && self.lease_until.is_some_and(|until| until >= now)
    }

    /// Whether a claim at `now` may take it, were it the first open row of a free
    /// conversation: due, not waiting for a retry, not out under a live lease.
    fn is_claimable_at(&self, now: Timestamp) -> bool {
        self.due_at <= now
            && match self.status {
                QueueStatus::Pending => self.retry_at.is_none_or(|at| at <= now),
                QueueStatus::Claimed => !self.is_leased_at(now),
                QueueStatus::Done | QueueStatus::Failed => false,
            }
    }

    fn claim(&mut self, lease_until: Timestamp) {
        (self.status, self.attempts, self.lease_until) = (QueueStatus::Claimed, self.attempts + 1, Some(lease_until));
    }

    fn finish(&mut self, status: QueueStatus, now: Timestamp, error: Option<&str>) {
        (self.status, self.lease_until, self.finished_at) = (status, None, Some(now));
        if let Some(error) = error {
            self.last_error = Some(error.to_owned());
        }
    }

    fn retry(&mut self, retry_at: Timestamp, error: &str) {
        (self.status, self.lease_until, self.retry_at) = (QueueStatus::Pending, None, Some(retry_at));
        self.last_error = Some(error.to_owned());
    }
}

/// The conversations with a row out under a lease live at `now`.
fn leased_conversations<T>(rows: &[Queued<T>], now: Timestamp) -> BTreeSet<&ConversationKey> {
    rows.iter().filter(|row| row.is_leased_at(now)).map(|row| &row.conversation).collect()
}

/// What a claim at `now` may take, as `(due_at, id)`: each conversation's first open row in
/// `(due_at, id)` order, when it is claimable and its conversation neither has a row out
/// under a live lease nor is `held` back.
fn claimable<T>(rows: &[Queued<T>], now: Timestamp, held: &BTreeSet<&ConversationKey>) -> Vec<(Timestamp, i64)> {
    let busy = leased_conversations(rows, now);
    let mut heads: BTreeMap<&ConversationKey, &Queued<T>> = BTreeMap::new();
    for row in rows.iter().filter(|row| row.is_open()) {
        let head = heads.entry(&row.conversation).or_insert(row);
        if (row.due_at, row.id) < (head.due_at, head.id) {
            *head = row;
        }
    }
    let free = |head: &&Queued<T>| !busy.contains(&head.conversation) && !held.contains(&head.conversation);
    heads.into_values().filter(|head| head.is_claimable_at(now) && free(head)).map(|h| (h.due_at, h.id)).collect()
}

/// Claims the earliest `request.limit` rows, in `(due_at, id)` order, that [`claimable`]
/// finds in `queues` (each with the conversations it must pass over). Ids are unique across
/// the store, so they name the rows chosen whatever their organization.
fn claim<T, R>(
    queues: Vec<(&mut Vec<Queued<T>>, BTreeSet<&ConversationKey>)>,
    request: &ClaimRequest,
    output: impl Fn(&Queued<T>) -> R,
) -> Vec<R> {
    let mut candidates: Vec<(Timestamp, i64)> =
        queues.iter().flat_map(|(rows, held)| claimable(rows, request.now, held)).collect();
    candidates.sort_unstable();
    candidates.truncate(request.limit.min(Page::MAX_LIMIT) as usize);
    let chosen: BTreeSet<i64> = candidates.into_iter().map(|(_, id)| id).collect();
    let mut claimed = BTreeMap::new();
    for row in queues.into_iter().flat_map(|(rows, _)| rows.iter_mut()).filter(|row| chosen.contains(&row.id)) {
        row.claim(request.lease_until());
        claimed.insert((row.due_at, row.id), output(row));
    }
    claimed.into_values().collect()
}

/// The row `claim` names, if the claim still holds: `NotFound` when the organization has no
/// such row, `LeaseLost` when it was finished, reclaimed or claimed again since.
fn claimed_row<'a, T>(rows: &'a mut [Queued<T>], what: &'static str, claim: Claim) -> StoreResult<&'a mut Queued<T>> {
    let not_found = || StoreError::NotFound { what, id: claim.id.to_string() };
    let row = rows.iter_mut().find(|row| row.id == claim.id).ok_or_else(not_found)?;
    if row.status != QueueStatus::Claimed || row.attempts != claim.attempt {
        return Err(StoreError::LeaseLost { what, id: claim.id, attempt: claim.attempt });
    }
    Ok(row)
}

/// Returns rows whose lease ended before `now` to pending; the count.
fn reclaim<T>(rows: &mut [Queued<T>], now: Timestamp) -> u64 {
    let mut reclaimed = 0;
    for row in rows.iter_mut().filter(|row| row.status == QueueStatus::Claimed) {
        if row.lease_until.is_some_and(|until| until < now) {
            (row.status, row.lease_until) = (QueueStatus::Pending, None);
            reclaimed += 1;
        }
    }
    reclaimed
}

/// Deletes rows finished before `cutoff` (open rows have no finish time); the count.
fn purge_finished<T>(rows: &mut Vec<Queued<T>>, cutoff: Timestamp) -> u64 {
    let len = rows.len();
    rows.retain(|row| row.finished_at.is_none_or(|at| at >= cutoff));
    (len - rows.len()) as u64
}

/// Inserts an event unless its message id is already in the (organization's) inbox.
fn insert_inbox(inbox: &mut Vec<Queued<InboxData>>, last_id: &mut i64, event: NewInboxEvent) -> InboxInsert {
    if let Some(row) = inbox.iter().find(|row| row.data.message_id == event.message_id) {
        return InboxInsert::Duplicate(row.id);
    }
    let NewInboxEvent { conversation, message_id, kind, payload, received_at, due_at } = event;
    let id = next_id(last_id);
    inbox.push(Queued::new(id, conversation, due_at, InboxData { message_id, kind, payload, received_at }));
    InboxInsert::Inserted(id)
}

fn enqueue_outbox(
    outbox: &mut Vec<Queued<OutboxData>>,
    last_id: &mut i64,
    messages: impl IntoIterator<Item = NewOutboxMessage>,
) -> Vec<i64> {
    let mut new_ids = Vec::new();
    for NewOutboxMessage { conversation, payload, due_at, inbox_id } in messages {
        let id = next_id(last_id);
        new_ids.push(id);
        let data = OutboxData { payload, inbox_id, wamid: None, delivery: None, delivery_at: None, sent_at: None };
        outbox.push(Queued::new(id, conversation, due_at, data));
    }
    new_ids
}

/// Records a delivery status unless a higher one is recorded already.
fn merge_delivery(data: &mut OutboxData, status: DeliveryStatus, at: Timestamp) {
    if data.delivery.is_none_or(|recorded| recorded.rank() < status.rank()) {
        (data.delivery, data.delivery_at) = (Some(status), Some(at));
    }
}

fn inbox_event(row: &Queued<InboxData>) -> InboxEvent {
    InboxEvent {
        id: row.id,
        conversation: row.conversation.clone(),
        message_id: row.data.message_id.clone(),
        kind: row.data.kind,
        payload: row.data.payload.clone(),
        received_at: row.data.received_at,
        due_at: row.due_at,
        status: row.status,
        attempts: row.attempts,
        lease_until: row.lease_until,
        retry_at: row.retry_at,
        last_error: row.last_error.clone(),
    }
}

fn outbox_message(row: &Queued<OutboxData>) -> OutboxMessage {
    OutboxMessage {
        id: row.id,
        conversation: row.conversation.clone(),
        payload: row.data.payload.clone(),
        status: row.status,
        attempts: row.attempts,
        due_at: row.due_at,
        retry_at: row.retry_at,
        lease_until: row.lease_until,
        wamid: row.data.wamid.clone(),
        last_error: row.last_error.clone(),
        inbox_id: row.data.inbox_id,
        delivery: row.data.delivery,
        delivery_at: row.data.delivery_at,
        sent_at: row.data.sent_at,
    }
}

#[async_trait]
impl Organizations for MemoryStore {
    async fn register_organization(&self, org_id: &str) -> StoreResult<()> {
        self.lock()?.orgs.entry(org_id.to_owned()).or_default();
        Ok(())
    }

    async fn organization_exists(&self, org_id: &str) -> StoreResult<bool> {
        Ok(self.lock()?.orgs.contains_key(org_id))
    }
}

#[async_trait]
impl SessionStore for MemoryStore {
    async fn load_session(&self, key: &SessionKey) -> StoreResult<Option<StoredSession>> {
        let tables = self.lock()?;
        Ok(tables.org(&key.org_id)?.sessions.iter().find(|row| is_active(row, key)).map(stored_session))
    }

    async fn conversation_sessions(&self, conversation: &ConversationKey) -> StoreResult<Vec<SessionInfo>> {
        let tables = self.lock()?;
        Ok(active_infos(&tables.org(&conversation.org_id)?.sessions, |key| key.conversation() == *conversation))
    }

    async fn save_session(&self, write: SessionWrite) -> StoreResult<SavedSession> {
        let mut tables = self.lock()?;
        let (org, last_id) = tables.org_and_ids(&write.key.org_id)?;
        let current = check_session_write(&org.sessions, &write)?;
        Ok(apply_session_write(&mut org.sessions, last_id, current, write))
    }

    async fn close_session(&self, key: &SessionKey, now: Timestamp) -> StoreResult<bool> {
        let mut tables = self.lock()?;
        let Some(row) = tables.org_mut(&key.org_id)?.sessions.iter_mut().find(|row| is_active(row, key)) else {
            return Ok(false);
        };
        let info = &mut row.info;
        (info.status, info.version, info.updated_at, info.closed_at) =
            (SessionStatus::Closed, info.version + 1, now, Some(now));
        Ok(true)
    }

    async fn list_active_sessions(&self, org_id: &str, page: Page) -> StoreResult<Vec<SessionInfo>> {
        let tables = self.lock()?;
        Ok(self::page(active_infos(&tables.org(org_id)?.sessions, |_| true).into_iter(), page).collect())
    }

    async fn purge(&self, org_id: &str, now: Timestamp, policy: PurgePolicy) -> StoreResult<PurgeReport> {
        let mut tables = self.lock()?;
        let org = tables.org_mut(org_id)?;
        let (expired_before, retained_after) = (before(now, policy.session_ttl), before(now, policy.retention));
        let mut report = PurgeReport::default();
        org.sessions.retain(|SessionRow { info, .. }| {
            let expired = info.status == SessionStatus::Active && info.updated_at < expired_before;
            let retired = info.status == SessionStatus::Closed && info.closed_at.is_some_and(|at| at < retained_after);
            report.expired_sessions += u64::from(expired);
            report.closed_sessions += u64::from(retired);
            !(expired || retired)
        });
        report.inbox_rows = purge_finished(&mut org.inbox, retained_after);
        report.outbox_rows = purge_finished(&mut org.outbox, retained_after);
        Ok(report)
    }
}

#[async_trait]
impl MessageLog for MemoryStore {
    async fn append_log(&self, org_id: &str, entries: &[NewLogEntry]) -> StoreResult<Vec<i64>> {
        let mut tables = self.lock()?;
        let (org, last_id) = tables.org_and_ids(org_id)?;
        entries.iter().try_for_each(|e| same_org(org_id, &e.conversation.org_id))?;
        Ok(append_log(&mut org.log, last_id, entries.iter().cloned()))
    }

    async fn history(&self, conversation: &ConversationKey, page: Page) -> StoreResult<Vec<LogEntry>> {
        let tables = self.lock()?;
        let log = &tables.org(&conversation.org_id)?.log;
        Ok(self::page(log.iter().filter(|e| e.conversation == *conversation), page).cloned().collect())
    }

    async fn inbound_counts(&self, windows: &[(ConversationKey, Timestamp)], at_most: u64) -> StoreResult<Vec<u64>> {
        let tables = self.lock()?;
        let count = |(conversation, since): &(ConversationKey, Timestamp)| {
            let log = &tables.org(&conversation.org_id)?.log;
            Ok((log.iter().filter(|e| counts_against_limit(e, conversation, *since)).count() as u64).min(at_most))
        };
        windows.iter().map(count).collect()
    }

    async fn list_conversations(&self, org_id: &str, page: Page) -> StoreResult<Vec<ConversationSummary>> {
        let tables = self.lock()?;
        let mut summaries: BTreeMap<&ConversationKey, ConversationSummary> = BTreeMap::new();
        for e in &tables.org(org_id)?.log {
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
        list.sort_by_key(|summary| Reverse(summary.last_message_at));
        Ok(self::page(list.into_iter(), page).collect())
    }

    async fn metrics(&self, org_id: &str, query: MetricsQuery) -> StoreResult<Metrics> {
        let tables = self.lock()?;
        let org = tables.org(org_id)?;
        let (from, to) = query.bounds();
        let in_window = |t: Timestamp| (from..to).contains(&t.as_unix_millis());
        let day_of = |t: Timestamp| t.as_unix_millis().div_euclid(DAY_MS);
        let mut tally = MetricsTally::default();
        for SessionRow { info, cohort, .. } in org.sessions.iter().filter(|row| in_window(row.info.created_at)) {
            let active = info.status == SessionStatus::Active;
            tally.sessions(&info.key.flow_id, cohort.as_deref(), day_of(info.created_at), active, 1);
        }
        for e in org.log.iter().filter(|e| in_window(e.at)) {
            tally.messages(e.flow_id.as_deref(), day_of(e.at), e.direction == Direction::Inbound, 1);
        }
        Ok(tally.finish())
    }
}

#[async_trait]
impl Inbox for MemoryStore {
    async fn insert_inbox(&self, event: NewInboxEvent) -> StoreResult<InboxInsert> {
        let mut tables = self.lock()?;
        let (org, last_id) = tables.org_and_ids(&event.conversation.org_id)?;
        Ok(insert_inbox(&mut org.inbox, last_id, event))
    }

    async fn claim_inbox(&self, request: &ClaimRequest) -> StoreResult<Vec<InboxEvent>> {
        let mut tables = self.lock()?;
        // A conversation waits while one of its replies is out with a sender.
        let queues = tables.scope(request.org_id.as_deref())?.into_iter();
        let queues = queues.map(|org| (&mut org.inbox, leased_conversations(&org.outbox, request.now)));
        Ok(claim(queues.collect(), request, inbox_event))
    }

    async fn complete_inbox(&self, org_id: &str, claim: Claim, now: Timestamp) -> StoreResult<()> {
        self.lock()?.claimed_inbox(org_id, claim)?.finish(QueueStatus::Done, now, None);
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
        let mut tables = self.lock()?;
        let row = tables.claimed_inbox(org_id, claim)?;
        match retry_at {
            Some(at) => row.retry(at, error),
            None => row.finish(QueueStatus::Failed, now, Some(error)),
        }
        Ok(())
    }

    async fn reclaim_inbox(&self, org_id: Option<&str>, now: Timestamp) -> StoreResult<u64> {
        Ok(self.lock()?.scope(org_id)?.into_iter().map(|org| reclaim(&mut org.inbox, now)).sum())
    }

    async fn get_inbox(&self, org_id: &str, id: i64) -> StoreResult<Option<InboxEvent>> {
        Ok(self.lock()?.org(org_id)?.inbox.iter().find(|row| row.id == id).map(inbox_event))
    }
}

#[async_trait]
impl Outbox for MemoryStore {
    async fn enqueue_outbox(&self, org_id: &str, messages: &[NewOutboxMessage]) -> StoreResult<Vec<i64>> {
        let mut tables = self.lock()?;
        let (org, last_id) = tables.org_and_ids(org_id)?;
        messages.iter().try_for_each(|m| same_org(org_id, &m.conversation.org_id))?;
        Ok(enqueue_outbox(&mut org.outbox, last_id, messages.iter().cloned()))
    }

    async fn claim_outbox(&self, request: &ClaimRequest) -> StoreResult<Vec<OutboxMessage>> {
        let mut tables = self.lock()?;
        let queues = tables.scope(request.org_id.as_deref())?.into_iter();
        Ok(claim(queues.map(|org| (&mut org.outbox, BTreeSet::new())).collect(), request, outbox_message))
    }

    async fn mark_sent(&self, org_id: &str, claim: Claim, wamid: &str, now: Timestamp) -> StoreResult<()> {
        let mut tables = self.lock()?;
        let row = tables.claimed_outbox(org_id, claim)?;
        row.finish(QueueStatus::Done, now, None);
        (row.data.wamid, row.data.sent_at) = (Some(wamid.to_owned()), Some(now));
        merge_delivery(&mut row.data, DeliveryStatus::Sent, now);
        Ok(())
    }

    async fn reschedule_outbox(&self, org_id: &str, claim: Claim, retry_at: Timestamp, error: &str) -> StoreResult<()> {
        self.lock()?.claimed_outbox(org_id, claim)?.retry(retry_at, error);
        Ok(())
    }

    async fn fail_outbox(&self, org_id: &str, claim: Claim, error: &str, now: Timestamp) -> StoreResult<()> {
        self.lock()?.claimed_outbox(org_id, claim)?.finish(QueueStatus::Failed, now, Some(error));
        Ok(())
    }

    async fn reclaim_outbox(&self, org_id: Option<&str>, now: Timestamp) -> StoreResult<u64> {
        Ok(self.lock()?.scope(org_id)?.into_iter().map(|org| reclaim(&mut org.outbox, now)).sum())
    }

    async fn record_delivery(
        &self,
        org_id: &str,
        wamid: &str,
        status: DeliveryStatus,
        at: Timestamp,
    ) -> StoreResult<bool> {
        let mut tables = self.lock()?;
        let mut found = false;
        for row in tables.org_mut(org_id)?.outbox.iter_mut().filter(|row| row.data.wamid.as_deref() == Some(wamid)) {
            merge_delivery(&mut row.data, status, at);
            found = true;
        }
        Ok(found)
    }

    async fn get_outbox(&self, org_id: &str, id: i64) -> StoreResult<Option<OutboxMessage>> {
        Ok(self.lock()?.org(org_id)?.outbox.iter().find(|row| row.id == id).map(outbox_message))
    }
}

#[async_trait]
impl FlowStore for MemoryStore {
    async fn publish_flow(&self, org_id: &str, flow_id: &str, definition: &str, now: Timestamp) -> StoreResult<i64> {
        let mut tables = self.lock()?;
        let flows = &mut tables.org_mut(org_id)?.flows;
        let version = flows.iter().filter(|f| f.flow_id == flow_id).map(|f| f.version).max().unwrap_or(0) + 1;
        let (org_id, flow_id, definition) = (org_id.to_owned(), flow_id.to_owned(), definition.to_owned());
        flows.push(StoredFlow { org_id, flow_id, version, definition, published_at: now });
        Ok(version)
    }

    async fn get_flow(&self, org_id: &str, flow_id: &str, version: Option<i64>) -> StoreResult<Option<StoredFlow>> {
        let tables = self.lock()?;
        let flows = tables.org(org_id)?.flows.iter();
        let asked = flows.filter(|f| f.flow_id == flow_id && version.is_none_or(|v| f.version == v));
        Ok(asked.max_by_key(|f| f.version).cloned())
    }

    async fn list_flows(&self, org_id: &str) -> StoreResult<Vec<StoredFlow>> {
        let tables = self.lock()?;
        // Versions are published in order, so the last of each flow id is its latest.
        let mut latest: BTreeMap<&str, &StoredFlow> = BTreeMap::new();
        for flow in &tables.org(org_id)?.flows {
            latest.insert(&flow.flow_id, flow);
        }
        Ok(latest.into_values().cloned().collect())
    }
}

#[async_trait]
impl Store for MemoryStore {
    /// Checks every part first, then writes them all. Replies and the next inbox event are
    /// left to a claim (`claim_replies_until` and `claim_next_until` are ignored), as the
    /// trait allows.
    async fn commit(&self, commit: Commit) -> StoreResult<CommitOutcome> {
        let mut tables = self.lock()?;
        let (org, last_id) = tables.org_and_ids(&commit.org_id)?;
        let mut row_orgs = (commit.session.iter().map(|w| &w.key.org_id))
            .chain(commit.log.iter().map(|e| &e.conversation.org_id))
            .chain(commit.outbox.iter().map(|m| &m.conversation.org_id))
            .chain(commit.schedule.iter().map(|s| &s.conversation.org_id));
        row_orgs.try_for_each(|row_org_id| same_org(&commit.org_id, row_org_id))?;
        let current = match &commit.session {
            Some(write) => check_session_write(&org.sessions, write)?,
            None => None,
        };
        let done = commit.inbox_done.map(|claim| claimed_row(&mut org.inbox, "inbox event", claim)).transpose()?;
        // Everything checked: from here on nothing fails.
        if let Some(row) = done {
            row.finish(QueueStatus::Done, commit.now, None);
        }
        Ok(CommitOutcome {
            session: commit.session.map(|write| apply_session_write(&mut org.sessions, last_id, current, write)),
            log_ids: append_log(&mut org.log, last_id, commit.log),
            outbox_ids: enqueue_outbox(&mut org.outbox, last_id, commit.outbox),
            scheduled: commit.schedule.into_iter().map(|event| insert_inbox(&mut org.inbox, last_id, event)).collect(),
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

    /// After a panic under the lock the store refuses calls instead of serving half-done
    /// writes, and closing it still works.
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
