//! The in-memory backend: everything behind one mutex, nothing survives the process.
//!
//! Good for tests, `flowctl` and single-process development. It follows exactly the same
//! contract as the SQL backends (the conformance kit runs on it too).

mod queue;

use std::collections::BTreeMap;
use std::hash::{BuildHasher, Hasher};
use std::sync::{Mutex, MutexGuard};

use async_trait::async_trait;
use flowcore::Timestamp;

use crate::error::{StoreError, StoreResult};
use crate::metrics_tally::MetricsTally;
use crate::state::{self, Session};
use crate::traits::*;
use crate::types::*;
use queue::{Queue, QueueRow};

/// A fast keyed hasher for the store's maps (folded multiply, 8 bytes at a time), seeded
/// per map from the standard library's random keys so that key layouts cannot be chosen to
/// collide. SipHash over the string keys was most of a commit's cost.
#[derive(Clone, Copy, Debug)]
struct Seeded(u64);

impl Default for Seeded {
    fn default() -> Self {
        Seeded(std::collections::hash_map::RandomState::new().hash_one(0x5eed_u64) | 1)
    }
}

impl BuildHasher for Seeded {
    type Hasher = Fold;
    fn build_hasher(&self) -> Fold {
        Fold(self.0)
    }
}

#[derive(Clone, Copy, Debug)]
struct Fold(u64);

const K1: u64 = 0x243f_6a88_85a3_08d3;
const K2: u64 = 0x1319_8a2e_0370_7344;

#[inline]
fn folded_mul(a: u64, b: u64) -> u64 {
    let p = u128::from(a) * u128::from(b);
    (p as u64) ^ ((p >> 64) as u64)
}

impl Hasher for Fold {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let len = bytes.len();
        // Short inputs (the store's keys are mostly short strings) in one multiply, from
        // two reads that overlap when the length is not 8 or 16; no copy loop.
        let (a, b) = if len > 16 {
            let mut h = self.0;
            let mut chunks = bytes.chunks_exact(16);
            for c in &mut chunks {
                h = folded_mul(h ^ read_u64(c, 0), K1 ^ read_u64(c, 8));
            }
            // The last 16 bytes (overlapping the chunks already taken when not a multiple).
            self.0 = h;
            (read_u64(bytes, len - 16), read_u64(bytes, len - 8))
        } else if len >= 8 {
            (read_u64(bytes, 0), read_u64(bytes, len - 8))
        } else if len >= 4 {
            (u64::from(read_u32(bytes, 0)), u64::from(read_u32(bytes, len - 4)))
        } else if len > 0 {
            (u64::from(bytes[0]) | u64::from(bytes[len / 2]) << 8, u64::from(bytes[len - 1]))
        } else {
            (0, 0)
        };
        self.0 = folded_mul(self.0 ^ a, K1 ^ b ^ ((len as u64) << 40));
    }

    #[inline]
    fn write_u8(&mut self, i: u8) {
        self.write_u64(u64::from(i));
    }

    #[inline]
    fn write_u64(&mut self, i: u64) {
        self.0 = folded_mul(self.0 ^ i, K1);
    }

    #[inline]
    fn write_i64(&mut self, i: i64) {
        self.write_u64(i as u64);
    }

    #[inline]
    fn write_usize(&mut self, i: usize) {
        self.write_u64(i as u64);
    }

    #[inline]
    fn finish(&self) -> u64 {
        folded_mul(self.0, K2)
    }
}

#[inline]
fn read_u64(bytes: &[u8], at: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(w)
}

#[inline]
fn read_u32(bytes: &[u8], at: usize) -> u32 {
    let mut w = [0u8; 4];
    w.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(w)
}

type HashMap<K, V> = std::collections::HashMap<K, V, Seeded>;

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
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    closed: bool,
    orgs: BTreeMap<String, OrgData>,
    next_session: i64,
    next_log: i64,
    next_inbox: i64,
    next_outbox: i64,
}

#[derive(Debug, Default)]
struct OrgData {
    sessions: HashMap<i64, SessionRow>,
    active: HashMap<SessionKey, i64>,
    log: Vec<LogEntry>,
    inbox: Queue<InboxData>,
    inbox_by_message: HashMap<String, i64>,
    outbox: Queue<OutboxData>,
    outbox_by_wamid: HashMap<String, i64>,
    flows: BTreeMap<String, Vec<StoredFlow>>,
}

#[derive(Debug, Clone)]
struct SessionRow {
    info: SessionInfo,
    session: Session,
    cohort: Option<String>,
}

#[derive(Debug, Clone)]
struct InboxData {
    message_id: String,
    kind: InboxKind,
    payload: serde_json::Value,
    received_at: Timestamp,
}

#[derive(Debug, Clone)]
struct OutboxData {
    payload: serde_json::Value,
    inbox_id: Option<i64>,
    wamid: Option<String>,
    delivery: Option<DeliveryStatus>,
    delivery_at: Option<Timestamp>,
    sent_at: Option<Timestamp>,
}

fn ts(ms: i64) -> Timestamp {
    Timestamp::from_unix_millis(ms)
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        MemoryStore::default()
    }

    fn lock(&self) -> StoreResult<MutexGuard<'_, Inner>> {
        // A poisoned lock only means another task panicked mid-call; the data is still
        // consistent because every mutation is validated before it starts.
        let guard = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if guard.closed {
            return Err(StoreError::Closed);
        }
        Ok(guard)
    }
}

impl Inner {
    fn org(&mut self, org_id: &str) -> StoreResult<&mut OrgData> {
        self.orgs.get_mut(org_id).ok_or_else(|| StoreError::UnknownOrganization(org_id.to_owned()))
    }

    fn org_ref(&self, org_id: &str) -> StoreResult<&OrgData> {
        self.orgs.get(org_id).ok_or_else(|| StoreError::UnknownOrganization(org_id.to_owned()))
    }

    fn org_ids(&self, scope: Option<&str>) -> StoreResult<Vec<String>> {
        match scope {
            Some(org) => {
                self.org_ref(org)?;
                Ok(vec![org.to_owned()])
            }
            None => Ok(self.orgs.keys().cloned().collect()),
        }
    }
}

fn same_org(org_id: &str, conversation: &ConversationKey) -> StoreResult<()> {
    if conversation.org_id == org_id {
        Ok(())
    } else {
        Err(StoreError::InvalidInput(format!(
            "row for organization {:?} passed to organization {:?}",
            conversation.org_id, org_id
        )))
    }
}

/// Checks that every part of a commit belongs to its organization.
fn check_commit_rows(
    org_id: &str,
    session: Option<&SessionWrite>,
    log: &[NewLogEntry],
    outbox: &[NewOutboxMessage],
    schedule: &[NewInboxEvent],
) -> StoreResult<()> {
    if let Some(write) = session {
        if write.key.org_id != org_id {
            return Err(StoreError::InvalidInput(format!(
                "session of organization {:?} in a commit of {:?}",
                write.key.org_id, org_id
            )));
        }
    }
    log.iter().try_for_each(|e| same_org(org_id, &e.conversation))?;
    outbox.iter().try_for_each(|m| same_org(org_id, &m.conversation))?;
    schedule.iter().try_for_each(|s| same_org(org_id, &s.conversation))
}

/// Checks a session write against the stored state without changing anything.
/// Returns the id of the active row the write replaces, if any.
fn check_session_write(org: &OrgData, write: &SessionWrite) -> StoreResult<Option<i64>> {
    let row = org.active.get(&write.key).and_then(|id| org.sessions.get(id));
    let found = row.map(|r| r.info.version);
    if found.unwrap_or(0) == write.expected_version && (write.expected_version == 0) == found.is_none() {
        Ok(row.map(|r| r.info.id))
    } else {
        Err(StoreError::Conflict { key: write.key.to_string(), expected: write.expected_version, found })
    }
}

/// What a write replaced or did not keep, for the caller to drop after releasing the lock:
/// freeing memory under the lock makes every other caller wait for it.
#[derive(Default)]
#[allow(dead_code, reason = "only held, to be dropped")]
struct Leftovers {
    session: Option<Session>,
    key: Option<SessionKey>,
}

/// Applies a checked write. `current` is the active row's id that `check_session_write`
/// found.
fn apply_session_write(
    org: &mut OrgData,
    next_id: &mut i64,
    current: Option<i64>,
    write: SessionWrite,
) -> (SavedSession, Leftovers) {
    let now = write.now;
    let closed_at = (write.status == SessionStatus::Closed).then_some(now);
    if let Some(row) = current.and_then(|id| org.sessions.get_mut(&id)) {
        row.info.version += 1;
        row.info.status = write.status;
        // Keep the recorded node's text when it did not change (no allocation per save).
        let node = write.session.current_node();
        if row.info.current_node.as_deref() != node {
            row.info.current_node = node.map(str::to_owned);
        }
        row.info.wake_at = write.session.wake_at();
        row.info.updated_at = now;
        row.info.closed_at = closed_at;
        let old = std::mem::replace(&mut row.session, write.session);
        let saved = SavedSession { id: row.info.id, version: row.info.version };
        if write.status == SessionStatus::Closed {
            org.active.remove(&write.key);
        }
        return (saved, Leftovers { session: Some(old), key: Some(write.key) });
    }
    let (current_node, wake_at) = state::meta(&write.session);
    *next_id += 1;
    let id = *next_id;
    let info = SessionInfo {
        id,
        key: write.key.clone(),
        flow_version: write.flow_version,
        version: 1,
        status: write.status,
        current_node,
        wake_at,
        created_at: now,
        updated_at: now,
        closed_at,
    };
    org.sessions.insert(id, SessionRow { info, session: write.session, cohort: write.cohort });
    let mut leftovers = Leftovers::default();
    if write.status == SessionStatus::Active {
        org.active.insert(write.key, id);
    } else {
        leftovers.key = Some(write.key);
    }
    (SavedSession { id, version: 1 }, leftovers)
}

fn insert_inbox_row(org: &mut OrgData, next_id: &mut i64, event: NewInboxEvent) -> InboxInsert {
    if let Some(&id) = org.inbox_by_message.get(&event.message_id) {
        return InboxInsert::Duplicate(id);
    }
    *next_id += 1;
    let id = *next_id;
    org.inbox_by_message.insert(event.message_id.clone(), id);
    org.inbox.push(
        id,
        event.conversation,
        event.due_at.as_unix_millis(),
        InboxData {
            message_id: event.message_id,
            kind: event.kind,
            payload: event.payload,
            received_at: event.received_at,
        },
    );
    InboxInsert::Inserted(id)
}

fn inbox_event(id: i64, row: &QueueRow<InboxData>) -> InboxEvent {
    InboxEvent {
        id,
        conversation: row.conversation.clone(),
        message_id: row.data.message_id.clone(),
        kind: row.data.kind,
        payload: row.data.payload.clone(),
        received_at: row.data.received_at,
        due_at: ts(row.due_at),
        status: row.status,
        attempts: row.attempts,
        lease_until: row.lease_until.map(ts),
        retry_at: row.retry_at.map(ts),
        last_error: row.last_error.clone(),
    }
}

fn outbox_message(id: i64, row: &QueueRow<OutboxData>) -> OutboxMessage {
    OutboxMessage {
        id,
        conversation: row.conversation.clone(),
        payload: row.data.payload.clone(),
        status: row.status,
        attempts: row.attempts,
        due_at: ts(row.due_at),
        retry_at: row.retry_at.map(ts),
        lease_until: row.lease_until.map(ts),
        wamid: row.data.wamid.clone(),
        last_error: row.last_error.clone(),
        inbox_id: row.data.inbox_id,
        delivery: row.data.delivery,
        delivery_at: row.data.delivery_at,
        sent_at: row.data.sent_at,
    }
}

/// Appends log rows, their ids to `ids`.
fn append_log_rows(
    org: &mut OrgData,
    next_id: &mut i64,
    entries: impl Iterator<Item = NewLogEntry>,
    ids: &mut Vec<i64>,
) {
    for e in entries {
        *next_id += 1;
        ids.push(*next_id);
        org.log.push(LogEntry {
            id: *next_id,
            conversation: e.conversation,
            flow_id: e.flow_id,
            direction: e.direction,
            content: e.content,
            node_id: e.node_id,
            wamid: e.wamid,
            at: e.at,
            metadata: e.metadata,
        });
    }
}

/// Enqueues outbox rows, their ids to `ids`.
fn enqueue_rows(
    org: &mut OrgData,
    next_id: &mut i64,
    messages: impl Iterator<Item = NewOutboxMessage>,
    ids: &mut Vec<i64>,
) {
    for m in messages {
        *next_id += 1;
        ids.push(*next_id);
        org.outbox.push(
            *next_id,
            m.conversation,
            m.due_at.as_unix_millis(),
            OutboxData {
                payload: m.payload,
                inbox_id: m.inbox_id,
                wamid: None,
                delivery: None,
                delivery_at: None,
                sent_at: None,
            },
        );
    }
}

/// Claims from the inbox or the outbox (`queue` picks which, with the outbox whose live
/// claims hold the inbox's conversations back, see [`Inbox::claim_inbox`]) of the request's
/// organization, or of all: the due heads of free conversations, earliest first, at most
/// `limit`.
fn claim<T, R>(
    inner: &mut Inner,
    request: &ClaimRequest,
    queue: impl Fn(&mut OrgData) -> (&mut Queue<T>, Option<&Queue<OutboxData>>),
    output: impl Fn(i64, &QueueRow<T>) -> R,
) -> StoreResult<Vec<R>> {
    let now = request.now.as_unix_millis();
    let limit = request.limit.min(Page::MAX_LIMIT) as usize;
    let lease_until = request.lease_until().as_unix_millis();
    let Some(org_id) = request.org_id.as_deref() else {
        return Ok(claim_across(inner.orgs.values_mut().map(queue).collect(), now, limit, lease_until, output));
    };
    let mut out = Vec::with_capacity(limit.min(64));
    let (queue, holding) = queue(inner.org(org_id)?);
    queue.pick(now, limit, held_back(holding, now), |queue, (_, id)| {
        queue.take_claim(id, lease_until);
        if let Some(row) = queue.rows.get(id) {
            out.push(output(id, row));
        }
    });
    Ok(out)
}

/// Whether a conversation has a reply claimed in `holding` under a lease live at `now`: an
/// inbox claim then passes it over.
fn held_back(holding: Option<&Queue<OutboxData>>, now: i64) -> impl Fn(&ConversationKey) -> bool + '_ {
    move |conversation| holding.is_some_and(|outbox| outbox.has_live_claim(conversation, now))
}

/// [`claim`] for every organization: each queue's picks are in order and at most `limit`;
/// the earliest `limit` of all win and the rest go back. Ids are unique across
/// organizations.
fn claim_across<T, R>(
    mut queues: Vec<(&mut Queue<T>, Option<&Queue<OutboxData>>)>,
    now: i64,
    limit: usize,
    lease_until: i64,
    output: impl Fn(i64, &QueueRow<T>) -> R,
) -> Vec<R> {
    let mut candidates: Vec<((i64, i64), usize)> = Vec::new();
    for (q, (queue, holding)) in queues.iter_mut().enumerate() {
        queue.pick(now, limit, held_back(*holding, now), |_, candidate| candidates.push((candidate, q)));
    }
    candidates.sort_unstable();
    let mut out = Vec::with_capacity(candidates.len().min(limit));
    for (n, ((_, id), q)) in candidates.into_iter().enumerate() {
        let queue = &mut queues[q].0;
        if n < limit {
            queue.take_claim(id, lease_until);
            if let Some(row) = queue.rows.get(id) {
                out.push(output(id, row));
            }
        } else {
            queue.release(id);
        }
    }
    out
}

#[async_trait]
impl Organizations for MemoryStore {
    async fn register_organization(&self, org_id: &str) -> StoreResult<()> {
        let mut inner = self.lock()?;
        inner.orgs.entry(org_id.to_owned()).or_default();
        Ok(())
    }

    async fn organization_exists(&self, org_id: &str) -> StoreResult<bool> {
        Ok(self.lock()?.orgs.contains_key(org_id))
    }
}

#[async_trait]
impl SessionStore for MemoryStore {
    async fn load_session(&self, key: &SessionKey) -> StoreResult<Option<StoredSession>> {
        let inner = self.lock()?;
        let org = inner.org_ref(&key.org_id)?;
        Ok(org.active.get(key).and_then(|id| org.sessions.get(id)).map(|row| StoredSession {
            id: row.info.id,
            key: row.info.key.clone(),
            flow_version: row.info.flow_version,
            version: row.info.version,
            status: row.info.status,
            session: row.session.clone(),
            created_at: row.info.created_at,
            updated_at: row.info.updated_at,
            closed_at: row.info.closed_at,
        }))
    }

    async fn conversation_sessions(&self, conversation: &ConversationKey) -> StoreResult<Vec<SessionInfo>> {
        let inner = self.lock()?;
        let org = inner.org_ref(&conversation.org_id)?;
        let mut out: Vec<SessionInfo> = org
            .active
            .iter()
            .filter(|(k, _)| {
                k.business_number_id == conversation.business_number_id && k.contact_id == conversation.contact_id
            })
            .filter_map(|(_, id)| org.sessions.get(id).map(|r| r.info.clone()))
            .collect();
        out.sort_by(|a, b| b.updated_at.cmp(&a.updated_at).then(b.id.cmp(&a.id)));
        Ok(out)
    }

    async fn save_session(&self, write: SessionWrite) -> StoreResult<SavedSession> {
        let mut guard = self.lock()?;
        let inner = &mut *guard;
        let org = inner
            .orgs
            .get_mut(&write.key.org_id)
            .ok_or_else(|| StoreError::UnknownOrganization(write.key.org_id.clone()))?;
        let current = check_session_write(org, &write)?;
        let (saved, leftovers) = apply_session_write(org, &mut inner.next_session, current, write);
        drop(guard);
        drop(leftovers);
        Ok(saved)
    }

    async fn close_session(&self, key: &SessionKey, now: Timestamp) -> StoreResult<bool> {
        let mut inner = self.lock()?;
        let org = inner.org(&key.org_id)?;
        let Some(id) = org.active.remove(key) else { return Ok(false) };
        if let Some(row) = org.sessions.get_mut(&id) {
            row.info.status = SessionStatus::Closed;
            row.info.version += 1;
            row.info.updated_at = now;
            row.info.closed_at = Some(now);
        }
        Ok(true)
    }

    async fn list_active_sessions(&self, org_id: &str, page: Page) -> StoreResult<Vec<SessionInfo>> {
        let inner = self.lock()?;
        let org = inner.org_ref(org_id)?;
        let mut out: Vec<SessionInfo> =
            org.active.values().filter_map(|id| org.sessions.get(id).map(|r| r.info.clone())).collect();
        out.sort_by(|a, b| b.updated_at.cmp(&a.updated_at).then(b.id.cmp(&a.id)));
        Ok(out.into_iter().skip(page.offset_i64() as usize).take(page.limit_i64() as usize).collect())
    }

    async fn purge(&self, org_id: &str, now: Timestamp, policy: PurgePolicy) -> StoreResult<PurgeReport> {
        let mut inner = self.lock()?;
        let org = inner.org(org_id)?;
        let now = now.as_unix_millis();
        let expired_before = now.saturating_sub(duration_ms(policy.session_ttl));
        let closed_before = now.saturating_sub(duration_ms(policy.retention));
        let mut report = PurgeReport::default();
        let mut remove = Vec::new();
        for (id, row) in &org.sessions {
            match row.info.status {
                SessionStatus::Active if row.info.updated_at.as_unix_millis() < expired_before => {
                    report.expired_sessions += 1;
                    remove.push(*id);
                }
                SessionStatus::Closed if row.info.closed_at.is_some_and(|c| c.as_unix_millis() < closed_before) => {
                    report.closed_sessions += 1;
                    remove.push(*id);
                }
                _ => {}
            }
        }
        for id in remove {
            if let Some(row) = org.sessions.remove(&id) {
                if org.active.get(&row.info.key) == Some(&id) {
                    org.active.remove(&row.info.key);
                }
            }
        }
        report.inbox_rows = org.inbox.purge_finished(closed_before);
        let inbox = &org.inbox;
        org.inbox_by_message.retain(|_, id| inbox.rows.contains_key(*id));
        report.outbox_rows = org.outbox.purge_finished(closed_before);
        let outbox = &org.outbox;
        org.outbox_by_wamid.retain(|_, id| outbox.rows.contains_key(*id));
        Ok(report)
    }
}

#[async_trait]
impl MessageLog for MemoryStore {
    async fn append_log(&self, org_id: &str, entries: &[NewLogEntry]) -> StoreResult<Vec<i64>> {
        // Copied before the lock is taken, so that other callers need not wait for it.
        let rows_of_org = entries.iter().try_for_each(|e| same_org(org_id, &e.conversation));
        let mut entries = entries.to_vec();
        let mut ids = Vec::with_capacity(entries.len());
        let mut guard = self.lock()?;
        let inner = &mut *guard;
        let org = inner.orgs.get_mut(org_id).ok_or_else(|| StoreError::UnknownOrganization(org_id.to_owned()))?;
        rows_of_org?;
        append_log_rows(org, &mut inner.next_log, entries.drain(..), &mut ids);
        drop(guard);
        Ok(ids)
    }

    async fn history(&self, conversation: &ConversationKey, page: Page) -> StoreResult<Vec<LogEntry>> {
        let inner = self.lock()?;
        let org = inner.org_ref(&conversation.org_id)?;
        Ok(org
            .log
            .iter()
            .filter(|e| &e.conversation == conversation)
            .skip(page.offset_i64() as usize)
            .take(page.limit_i64() as usize)
            .cloned()
            .collect())
    }

    async fn inbound_counts(&self, windows: &[(ConversationKey, Timestamp)], at_most: u64) -> StoreResult<Vec<u64>> {
        let inner = self.lock()?;
        windows
            .iter()
            .map(|(conversation, since)| {
                let org = inner.org_ref(&conversation.org_id)?;
                let counted = org
                    .log
                    .iter()
                    .filter(|e| &e.conversation == conversation && e.direction == Direction::Inbound && e.at > *since)
                    .filter(|e| e.metadata.get(RATE_LIMITED) != Some(&serde_json::Value::Bool(true)))
                    .count();
                Ok((counted as u64).min(at_most))
            })
            .collect()
    }

    async fn list_conversations(&self, org_id: &str, page: Page) -> StoreResult<Vec<ConversationSummary>> {
        let inner = self.lock()?;
        let org = inner.org_ref(org_id)?;
        let mut map: HashMap<&ConversationKey, ConversationSummary> = HashMap::default();
        for e in &org.log {
            let s = map.entry(&e.conversation).or_insert_with(|| ConversationSummary {
                conversation: e.conversation.clone(),
                message_count: 0,
                first_message_at: e.at,
                last_message_at: e.at,
            });
            s.message_count += 1;
            s.first_message_at = s.first_message_at.min(e.at);
            s.last_message_at = s.last_message_at.max(e.at);
        }
        let mut out: Vec<ConversationSummary> = map.into_values().collect();
        out.sort_by(|a, b| b.last_message_at.cmp(&a.last_message_at).then_with(|| a.conversation.cmp(&b.conversation)));
        Ok(out.into_iter().skip(page.offset_i64() as usize).take(page.limit_i64() as usize).collect())
    }

    async fn metrics(&self, org_id: &str, query: MetricsQuery) -> StoreResult<Metrics> {
        let inner = self.lock()?;
        let org = inner.org_ref(org_id)?;
        let (from, to) = query.bounds();
        let in_window = |t: Timestamp| t.as_unix_millis() >= from && t.as_unix_millis() < to;
        let day_of = |t: Timestamp| t.as_unix_millis().div_euclid(DAY_MS);
        let mut tally = MetricsTally::default();
        for row in org.sessions.values().filter(|row| in_window(row.info.created_at)) {
            let active = row.info.status == SessionStatus::Active;
            tally.sessions(&row.info.key.flow_id, row.cohort.as_deref(), day_of(row.info.created_at), active, 1);
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
        let mut inner = self.lock()?;
        let inner = &mut *inner;
        let org = inner
            .orgs
            .get_mut(&event.conversation.org_id)
            .ok_or_else(|| StoreError::UnknownOrganization(event.conversation.org_id.clone()))?;
        Ok(insert_inbox_row(org, &mut inner.next_inbox, event))
    }

    async fn claim_inbox(&self, request: &ClaimRequest) -> StoreResult<Vec<InboxEvent>> {
        let mut inner = self.lock()?;
        claim(&mut inner, request, |org| (&mut org.inbox, Some(&org.outbox)), inbox_event)
    }

    async fn complete_inbox(&self, org_id: &str, claim: Claim, now: Timestamp) -> StoreResult<()> {
        let mut inner = self.lock()?;
        let org = inner.org(org_id)?;
        org.inbox.check_claim("inbox event", claim)?;
        org.inbox.finish(claim.id, QueueStatus::Done, Some(now.as_unix_millis()), None);
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
        let mut inner = self.lock()?;
        let org = inner.org(org_id)?;
        org.inbox.check_claim("inbox event", claim)?;
        match retry_at {
            Some(at) => org.inbox.retry(claim.id, at.as_unix_millis(), error),
            None => org.inbox.finish(claim.id, QueueStatus::Failed, Some(now.as_unix_millis()), Some(error)),
        }
        Ok(())
    }

    async fn reclaim_inbox(&self, org_id: Option<&str>, now: Timestamp) -> StoreResult<u64> {
        let mut inner = self.lock()?;
        let mut n = 0;
        for org in inner.org_ids(org_id)? {
            n += inner.org(&org)?.inbox.reclaim(now.as_unix_millis());
        }
        Ok(n)
    }

    async fn get_inbox(&self, org_id: &str, id: i64) -> StoreResult<Option<InboxEvent>> {
        let inner = self.lock()?;
        let org = inner.org_ref(org_id)?;
        Ok(org.inbox.rows.get(id).map(|row| inbox_event(id, row)))
    }
}

#[async_trait]
impl Outbox for MemoryStore {
    async fn enqueue_outbox(&self, org_id: &str, messages: &[NewOutboxMessage]) -> StoreResult<Vec<i64>> {
        // Copied before the lock is taken, so that other callers need not wait for it.
        let rows_of_org = messages.iter().try_for_each(|m| same_org(org_id, &m.conversation));
        let mut messages = messages.to_vec();
        let mut ids = Vec::with_capacity(messages.len());
        let mut guard = self.lock()?;
        let inner = &mut *guard;
        let org = inner.orgs.get_mut(org_id).ok_or_else(|| StoreError::UnknownOrganization(org_id.to_owned()))?;
        rows_of_org?;
        enqueue_rows(org, &mut inner.next_outbox, messages.drain(..), &mut ids);
        drop(guard);
        Ok(ids)
    }

    async fn claim_outbox(&self, request: &ClaimRequest) -> StoreResult<Vec<OutboxMessage>> {
        let mut inner = self.lock()?;
        claim(&mut inner, request, |org| (&mut org.outbox, None), outbox_message)
    }

    async fn mark_sent(&self, org_id: &str, claim: Claim, wamid: &str, now: Timestamp) -> StoreResult<()> {
        let mut inner = self.lock()?;
        let org = inner.org(org_id)?;
        org.outbox.check_claim("outbox message", claim)?;
        org.outbox.finish(claim.id, QueueStatus::Done, Some(now.as_unix_millis()), None);
        if let Some(row) = org.outbox.rows.get_mut(claim.id) {
            row.data.wamid = Some(wamid.to_owned());
            row.data.sent_at = Some(now);
            if row.data.delivery.is_none() {
                row.data.delivery = Some(DeliveryStatus::Sent);
                row.data.delivery_at = Some(now);
            }
        }
        org.outbox_by_wamid.insert(wamid.to_owned(), claim.id);
        Ok(())
    }

    async fn reschedule_outbox(&self, org_id: &str, claim: Claim, retry_at: Timestamp, error: &str) -> StoreResult<()> {
        let mut inner = self.lock()?;
        let org = inner.org(org_id)?;
        org.outbox.check_claim("outbox message", claim)?;
        org.outbox.retry(claim.id, retry_at.as_unix_millis(), error);
        Ok(())
    }

    async fn fail_outbox(&self, org_id: &str, claim: Claim, error: &str, now: Timestamp) -> StoreResult<()> {
        let mut inner = self.lock()?;
        let org = inner.org(org_id)?;
        org.outbox.check_claim("outbox message", claim)?;
        org.outbox.finish(claim.id, QueueStatus::Failed, Some(now.as_unix_millis()), Some(error));
        Ok(())
    }

    async fn reclaim_outbox(&self, org_id: Option<&str>, now: Timestamp) -> StoreResult<u64> {
        let mut inner = self.lock()?;
        let mut n = 0;
        for org in inner.org_ids(org_id)? {
            n += inner.org(&org)?.outbox.reclaim(now.as_unix_millis());
        }
        Ok(n)
    }

    async fn record_delivery(
        &self,
        org_id: &str,
        wamid: &str,
        status: DeliveryStatus,
        at: Timestamp,
    ) -> StoreResult<bool> {
        let mut inner = self.lock()?;
        let org = inner.org(org_id)?;
        let Some(id) = org.outbox_by_wamid.get(wamid).copied() else { return Ok(false) };
        let Some(row) = org.outbox.rows.get_mut(id) else { return Ok(false) };
        if row.data.delivery.is_none_or(|d| d.rank() < status.rank()) {
            row.data.delivery = Some(status);
            row.data.delivery_at = Some(at);
        }
        Ok(true)
    }

    async fn get_outbox(&self, org_id: &str, id: i64) -> StoreResult<Option<OutboxMessage>> {
        let inner = self.lock()?;
        let org = inner.org_ref(org_id)?;
        Ok(org.outbox.rows.get(id).map(|row| outbox_message(id, row)))
    }
}

#[async_trait]
impl FlowStore for MemoryStore {
    async fn publish_flow(&self, org_id: &str, flow_id: &str, definition: &str, now: Timestamp) -> StoreResult<i64> {
        let mut inner = self.lock()?;
        let org = inner.org(org_id)?;
        let versions = org.flows.entry(flow_id.to_owned()).or_default();
        let version = versions.last().map_or(1, |f| f.version + 1);
        versions.push(StoredFlow {
            org_id: org_id.to_owned(),
            flow_id: flow_id.to_owned(),
            version,
            definition: definition.to_owned(),
            published_at: now,
        });
        Ok(version)
    }

    async fn get_flow(&self, org_id: &str, flow_id: &str, version: Option<i64>) -> StoreResult<Option<StoredFlow>> {
        let inner = self.lock()?;
        let org = inner.org_ref(org_id)?;
        let Some(versions) = org.flows.get(flow_id) else { return Ok(None) };
        Ok(match version {
            None => versions.last().cloned(),
            Some(v) => versions.iter().find(|f| f.version == v).cloned(),
        })
    }

    async fn list_flows(&self, org_id: &str) -> StoreResult<Vec<StoredFlow>> {
        let inner = self.lock()?;
        let org = inner.org_ref(org_id)?;
        Ok(org.flows.values().filter_map(|v| v.last().cloned()).collect())
    }
}

#[async_trait]
impl Store for MemoryStore {
    async fn commit(&self, commit: Commit) -> StoreResult<CommitOutcome> {
        // Replies and the next inbox event are left for a claim: `claim_replies_until` and
        // `claim_next_until` are savings this backend has no use for.
        let Commit {
            org_id,
            now,
            session,
            mut log,
            mut outbox,
            mut schedule,
            inbox_done,
            claim_replies_until: _,
            claim_next_until: _,
        } = commit;
        // What needs no lock happens before it is taken, what can be dropped after it is let
        // go: every other caller waits while it is held.
        let rows_of_org = check_commit_rows(&org_id, session.as_ref(), &log, &outbox, &schedule);
        let mut outcome = CommitOutcome {
            session: None,
            log_ids: Vec::with_capacity(log.len()),
            outbox_ids: Vec::with_capacity(outbox.len()),
            scheduled: Vec::with_capacity(schedule.len()),
            claimed_replies: Vec::new(),
            claimed_next: None,
        };
        let mut guard = self.lock()?;
        let inner = &mut *guard;
        let org = inner.orgs.get_mut(&org_id).ok_or_else(|| StoreError::UnknownOrganization(org_id.clone()))?;
        // Validate everything first, then apply: all or nothing.
        rows_of_org?;
        let current = match &session {
            Some(write) => check_session_write(org, write)?,
            None => None,
        };
        if let Some(claim) = inbox_done {
            org.inbox.check_claim("inbox event", claim)?;
        }
        let mut leftovers = Leftovers::default();
        if let Some(write) = session {
            let (saved, left) = apply_session_write(org, &mut inner.next_session, current, write);
            outcome.session = Some(saved);
            leftovers = left;
        }
        if let Some(claim) = inbox_done {
            org.inbox.finish(claim.id, QueueStatus::Done, Some(now.as_unix_millis()), None);
        }
        append_log_rows(org, &mut inner.next_log, log.drain(..), &mut outcome.log_ids);
        enqueue_rows(org, &mut inner.next_outbox, outbox.drain(..), &mut outcome.outbox_ids);
        for event in schedule.drain(..) {
            outcome.scheduled.push(insert_inbox_row(org, &mut inner.next_inbox, event));
        }
        drop(guard);
        drop((leftovers, log, outbox, schedule, org_id));
        Ok(outcome)
    }

    async fn ping(&self) -> StoreResult<()> {
        self.lock().map(drop)
    }

    async fn close(&self) {
        let mut guard = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        guard.closed = true;
    }

    fn backend(&self) -> &'static str {
        "memory"
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::hash::BuildHasher;

    use super::*;

    /// Strings of every length up to 40 (each read path of `Fold::write`), differing in one
    /// byte at any position, and the conversation keys the store hashes: no collisions.
    #[test]
    fn hasher_separates_keys() {
        let seeded = Seeded::default();
        let mut hashes = HashSet::new();
        let mut inputs = 0;
        for len in 0..=40usize {
            for at in 0..len.max(1) {
                for byte in [b'a', b'b', b'\xff'] {
                    let mut s = vec![b'x'; len];
                    if len > 0 {
                        s[at] = byte;
                    }
                    if hashes.insert((seeded.hash_one(&s), s.clone())) {
                        inputs += 1;
                    }
                }
            }
        }
        let distinct: HashSet<u64> = hashes.iter().map(|(h, _)| *h).collect();
        assert_eq!(distinct.len(), inputs);
        let keys: HashSet<u64> =
            (0..20_000).map(|i| seeded.hash_one(ConversationKey::new("org", "biz", format!("c{i}")))).collect();
        assert_eq!(keys.len(), 20_000);
    }
}
