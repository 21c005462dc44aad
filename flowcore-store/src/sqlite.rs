//! The SQLite backend: one file in WAL mode, the schema embedded and applied on open.
//!
//! SQLite runs one writer at a time, so every write of the store goes to one thread that owns
//! the write connection. It takes everything callers queued meanwhile and runs it as one
//! `BEGIN IMMEDIATE` transaction, each request in a savepoint of its own (a request that
//! fails is undone alone), with one commit for the batch: many callers share one fsync.
//! Results are handed out only once that commit returned. Reads run on reader threads, each
//! with its own read-only connection, which see committed data through the WAL.
//!
//! Claims go by conversation: the schema's `conversations` table says, per conversation and
//! queue, when its first unfinished row may run and until when a claim holds it, so a claim
//! reads only conversations that have work, and takes the head of each it finds free.

use std::collections::HashSet;
use std::sync::{mpsc, Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use flowcore::Timestamp;
use rusqlite::TransactionBehavior;
use rusqlite::{params, Connection, OpenFlags, OptionalExtension, Params, Result as SqlResult, Row, ToSql};
use tokio::sync::oneshot;

use crate::error::{StoreError, StoreResult};
use crate::metrics_tally::MetricsTally;
use crate::state::{self, STATE_SCHEMA_VERSION};
use crate::traits::*;
use crate::types::*;
use queries::*;

mod queries;

/// The most requests one write transaction takes: bounds how long a webhook's insert waits
/// behind the transaction running when it arrives.
const MAX_BATCH: usize = 128;

/// Settings for [`SqliteStore::open`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct SqliteOptions {
    /// Reader connections (default 4).
    pub read_connections: u32,
    /// How long a write waits for another process's lock (default 5 s).
    pub busy_timeout: Duration,
    /// `synchronous=FULL` (the default): a commit is on disk before it returns, so it survives
    /// a power loss, not only a crash of the process. `false` gives `synchronous=NORMAL`,
    /// faster, which in WAL mode may lose the last commits on a power loss (never corrupting).
    pub synchronous_full: bool,
    /// How often a background thread copies the WAL into the database file (a passive
    /// checkpoint on its own connection, which never makes a writer wait; default 50 ms).
    /// `None` leaves it to SQLite's automatic checkpoints, which run inside a committing
    /// write and stall it, and every write queued behind it, for the copy and its fsync.
    pub checkpoint_interval: Option<Duration>,
    /// Let a commit checkpoint the WAL itself once it holds this many pages: with background
    /// checkpoints, only a backstop for a WAL that outgrows them (default 10,000).
    pub wal_autocheckpoint_pages: u32,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        SqliteOptions {
            read_connections: 4,
            busy_timeout: Duration::from_secs(5),
            synchronous_full: true,
            checkpoint_interval: Some(Duration::from_millis(50)),
            wal_autocheckpoint_pages: 10_000,
        }
    }
}

/// The SQLite store.
///
/// ```
/// # tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap().block_on(async {
/// use flowcore_store::{Organizations, SqliteOptions, SqliteStore, Store};
/// let dir = tempfile::tempdir().unwrap();
/// let url = format!("sqlite://{}", dir.path().join("flowcore.db").display());
/// let store = SqliteStore::open(&url, SqliteOptions::default()).await?;
/// store.register_organization("acme").await?;
/// assert!(store.organization_exists("acme").await?);
/// store.close().await;
/// # Ok::<(), flowcore_store::StoreError>(())
/// # }).unwrap();
/// ```
#[derive(Debug)]
pub struct SqliteStore {
    writer: Lane,
    /// `None` for an in-memory database, which only the writer's connection sees.
    readers: Option<Lane>,
    checkpoints: Option<Lane>,
    known_orgs: RwLock<HashSet<String>>,
}

impl SqliteStore {
    /// Opens (creating if missing) the database at `url` (`sqlite://PATH`, `sqlite:PATH` or
    /// `sqlite::memory:`) and applies the schema to a new one.
    pub async fn open(url: &str, options: SqliteOptions) -> StoreResult<SqliteStore> {
        let rest = url.strip_prefix("sqlite://").or_else(|| url.strip_prefix("sqlite:"));
        let rest = rest.ok_or_else(|| StoreError::InvalidInput(format!("not a sqlite url: {url:?}")))?;
        let path = rest.split('?').next().unwrap_or_default().to_owned();
        let memory = path.is_empty() || path == ":memory:" || rest.contains("mode=memory");
        let mut writer = connect(&path, &options, memory, false)?;
        if !memory {
            writer.pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get::<_, String>(0))?;
        }
        migrate(&mut writer)?;
        let (queue, jobs) = mpsc::channel();
        spawn(move || write_loop(&writer, &jobs))?;
        let writer = Lane(Mutex::new(Some(queue)));
        let mut readers = None;
        if !memory {
            let (queue, jobs) = mpsc::channel();
            let jobs = Arc::new(Mutex::new(jobs));
            for _ in 0..options.read_connections.max(1) {
                let (reader, jobs) = (connect(&path, &options, false, true)?, jobs.clone());
                spawn(move || read_loop(&reader, &jobs))?;
            }
            readers = Some(Lane(Mutex::new(Some(queue))));
        }
        let mut checkpoints = None;
        if let Some(every) = options.checkpoint_interval.filter(|_| !memory) {
            let ((queue, stop), db) = (mpsc::channel(), connect(&path, &options, false, false)?);
            spawn(move || checkpoint_loop(&db, every, &stop))?;
            checkpoints = Some(Lane(Mutex::new(Some(queue))));
        }
        Ok(SqliteStore { writer, readers, checkpoints, known_orgs: RwLock::default() })
    }

    /// Where reads go.
    fn reader(&self) -> &Lane {
        self.readers.as_ref().unwrap_or(&self.writer)
    }

    /// Runs `work` on `lane` for organization `org_id`, once that is known to exist.
    async fn on<T: Send + 'static>(
        &self,
        lane: &Lane,
        org_id: &str,
        work: impl FnOnce(&Connection, &str) -> StoreResult<T> + Send + 'static,
    ) -> StoreResult<T> {
        self.check_org(org_id).await?;
        let org_id = org_id.to_owned();
        lane.run(move |db| work(db, &org_id)).await
    }

    async fn check_orgs<'a>(&self, conversations: impl Iterator<Item = &'a ConversationKey>) -> StoreResult<()> {
        for org_id in conversations.map(|c| &c.org_id).collect::<HashSet<_>>() {
            self.check_org(org_id).await?;
        }
        Ok(())
    }

    async fn check_org(&self, org_id: &str) -> StoreResult<()> {
        if self.known_orgs.read().unwrap_or_else(PoisonError::into_inner).contains(org_id) {
            return Ok(());
        }
        let id = org_id.to_owned();
        if !self.reader().run(move |db| Ok(db.prepare_cached(ORG_EXISTS)?.exists([id])?)).await? {
            return Err(StoreError::UnknownOrganization(org_id.to_owned()));
        }
        self.known_orgs.write().unwrap_or_else(PoisonError::into_inner).insert(org_id.to_owned());
        Ok(())
    }

    async fn claim<T: Send + 'static>(
        &self,
        queue: &'static Queue,
        request: &ClaimRequest,
        decode: fn(&Row) -> SqlResult<T>,
    ) -> StoreResult<Vec<T>> {
        if let Some(org) = &request.org_id {
            self.check_org(org).await?;
        }
        let (now, lease) = (request.now.as_unix_millis(), request.lease_until().as_unix_millis());
        let (org_id, limit) = (request.org_id.clone(), request.limit.min(Page::MAX_LIMIT));
        self.writer
            .run(move |db| {
                let mut claimed = Vec::new();
                for c in all(db, &queue.claimable, params![now, org_id, limit], conversation)? {
                    claimed.extend(claim_head(db, queue, &c, now, lease, decode)?);
                }
                Ok(claimed)
            })
            .await
    }

    async fn finish(
        &self,
        queue: &'static Queue,
        sql: &'static str,
        org: &str,
        claim: Claim,
        at: Timestamp,
        text: Option<&str>,
    ) -> StoreResult<()> {
        let text = text.map(str::to_owned);
        self.on(&self.writer, org, move |db, org| finish(db, queue, sql, org, claim, at, text.as_deref()).map(drop))
            .await
    }

    async fn reclaim(&self, queue: &'static Queue, org_id: Option<&str>, now: Timestamp) -> StoreResult<u64> {
        if let Some(org) = org_id {
            self.check_org(org).await?;
        }
        let org_id = org_id.map(str::to_owned);
        self.writer
            .run(move |db| {
                let freed = all(db, &queue.reclaim, params![now.as_unix_millis(), org_id], conversation)?;
                distinct(&freed).into_iter().try_for_each(|c| refresh(db, queue, c))?;
                Ok(freed.len() as u64)
            })
            .await
    }
}

/// Work for a connection's thread. Given the connection (or why the transaction could not
/// start), it runs and tells whether it succeeded; its caller hears once the transaction ended.
type Job = Box<dyn FnOnce(Result<&Connection, &StoreError>) -> Answer + Send>;

struct Answer {
    ok: bool,
    send: Reply,
}

/// Sends a job's result, or instead the error that kept its transaction from committing.
type Reply = Box<dyn FnOnce(Option<&StoreError>) + Send>;

/// The queue of threads with connections of their own; they end once it is closed and they
/// have run what it held.
#[derive(Debug)]
struct Lane(Mutex<Option<mpsc::Sender<Job>>>);

fn spawn(run: impl FnOnce() + Send + 'static) -> StoreResult<()> {
    let thread = std::thread::Builder::new().name("flowcore-sqlite".into()).spawn(run);
    thread.map(drop).map_err(|e| StoreError::Database(format!("cannot start a thread: {e}")))
}

impl Lane {
    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Connection) -> StoreResult<T> + Send + 'static,
    ) -> StoreResult<T> {
        let (reply, result) = oneshot::channel();
        let job: Job = Box::new(move |connection| {
            let result = connection.map_err(copy_error).and_then(work);
            let ok = result.is_ok();
            let send = move |failed: Option<&StoreError>| {
                // A caller that stopped waiting has nobody to tell.
                let _ = reply.send(match failed {
                    Some(e) if ok => Err(copy_error(e)),
                    _ => result,
                });
            };
            Answer { ok, send: Box::new(send) }
        });
        let queue = self.0.lock().unwrap_or_else(PoisonError::into_inner).clone();
        queue.ok_or(StoreError::Closed)?.send(job).map_err(|_| StoreError::Closed)?;
        result.await.unwrap_or(Err(StoreError::Closed))
    }

    fn close(&self) {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).take();
    }
}

/// The writer's thread: each batch of what was queued is one transaction.
fn write_loop(db: &Connection, jobs: &mpsc::Receiver<Job>) {
    while let Ok(first) = jobs.recv() {
        let batch: Vec<Job> = std::iter::once(first).chain(jobs.try_iter().take(MAX_BATCH - 1)).collect();
        let mut broken = db.execute_batch("BEGIN IMMEDIATE").err().map(StoreError::from);
        let mut answers = Vec::with_capacity(batch.len());
        for job in batch {
            if broken.is_none() {
                broken = db.execute_batch("SAVEPOINT job").err().map(StoreError::from);
            }
            if let Some(e) = &broken {
                answers.push(job(Err(e)));
                continue;
            }
            let answer = job(Ok(db));
            let end = if answer.ok { "RELEASE job" } else { "ROLLBACK TO job; RELEASE job" };
            broken = db.execute_batch(end).err().map(StoreError::from);
            answers.push(answer);
        }
        let failed = broken.or_else(|| db.execute_batch("COMMIT").err().map(StoreError::from));
        if failed.is_some() {
            // Nothing of the batch lands; the next one starts afresh.
            let _ = db.execute_batch("ROLLBACK");
        }
        answers.into_iter().for_each(|answer| (answer.send)(failed.as_ref()));
    }
}

fn read_loop(db: &Connection, jobs: &Mutex<mpsc::Receiver<Job>>) {
    loop {
        // The lock is let go before the job runs, so that the other readers take the next ones.
        let job = jobs.lock().unwrap_or_else(PoisonError::into_inner).recv();
        let Ok(job) = job else { return };
        (job(Ok(db)).send)(None);
    }
}

/// Passive checkpoints until the store closes. One that cannot finish (a reader still needs
/// old frames) goes on next time; SQLite's automatic ones remain the backstop.
fn checkpoint_loop(db: &Connection, every: Duration, stop: &mpsc::Receiver<Job>) {
    while let Err(mpsc::RecvTimeoutError::Timeout) = stop.recv_timeout(every) {
        let _ = db.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()));
    }
}

fn connect(path: &str, options: &SqliteOptions, memory: bool, read_only: bool) -> StoreResult<Connection> {
    let db = match (memory, read_only) {
        (true, _) => Connection::open_in_memory()?,
        (false, true) => {
            Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX)?
        }
        (false, false) => Connection::open(path)?,
    };
    db.busy_timeout(options.busy_timeout)?;
    db.pragma_update(None, "synchronous", if options.synchronous_full { "FULL" } else { "NORMAL" })?;
    db.pragma_update(None, "foreign_keys", true)?;
    db.pragma_update(None, "wal_autocheckpoint", options.wal_autocheckpoint_pages.max(1))?;
    // A WAL that grew under a burst is cut back once checkpointed.
    db.pragma_update(None, "journal_size_limit", 64 * 1024 * 1024)?;
    // Savepoints keep a journal of the pages they change, spilled to temporary files unless
    // kept in memory: files created and deleted many times a second under load.
    db.pragma_update(None, "temp_store", "MEMORY")?;
    db.set_prepared_statement_cache_capacity(64);
    Ok(db)
}

fn migrate(db: &mut Connection) -> StoreResult<()> {
    let tx = db.transaction_with_behavior(TransactionBehavior::Immediate)?;
    match tx.query_row("PRAGMA user_version", [], |row| row.get::<_, i64>(0))? {
        0 => tx.execute_batch(SCHEMA).map_err(|e| StoreError::Migration(e.to_string()))?,
        SCHEMA_VERSION => {}
        newer => return Err(StoreError::Migration(format!("schema {newer}, this release knows {SCHEMA_VERSION}"))),
    }
    Ok(tx.commit()?)
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError::Database(e.to_string())
    }
}

/// The same error again, for each request of a transaction that failed as a whole.
fn copy_error(error: &StoreError) -> StoreError {
    match error {
        StoreError::Closed => StoreError::Closed,
        other => StoreError::Database(other.to_string()),
    }
}

fn key(c: &ConversationKey) -> [&str; 3] {
    [&c.org_id, &c.business_number_id, &c.contact_id]
}

fn session_key(k: &SessionKey) -> [&str; 4] {
    [&k.org_id, &k.business_number_id, &k.contact_id, &k.flow_id]
}

/// Each conversation once, in the order first seen.
fn distinct<'a>(keys: impl IntoIterator<Item = &'a ConversationKey>) -> Vec<&'a ConversationKey> {
    let mut seen = HashSet::new();
    keys.into_iter().filter(|c| seen.insert(*c)).collect()
}

fn same_org<'a>(org_id: &str, mut keys: impl Iterator<Item = &'a ConversationKey>) -> StoreResult<()> {
    match keys.find(|c| c.org_id != org_id) {
        Some(c) => Err(StoreError::InvalidInput(format!("row for organization {:?} passed to {org_id:?}", c.org_id))),
        None => Ok(()),
    }
}

/// Every row `sql` answers for `values`, decoded by `row`.
fn all<T>(
    db: &Connection,
    sql: &str,
    values: impl Params,
    row: impl FnMut(&Row) -> SqlResult<T>,
) -> StoreResult<Vec<T>> {
    let mut query = db.prepare_cached(sql)?;
    let rows = query.query_map(values, row)?.collect::<SqlResult<_>>()?;
    Ok(rows)
}

/// The first row `sql` answers for `values`, if any.
fn one<T>(
    db: &Connection,
    sql: &str,
    values: impl Params,
    row: impl FnOnce(&Row) -> SqlResult<T>,
) -> StoreResult<Option<T>> {
    Ok(db.prepare_cached(sql)?.query_row(values, row).optional()?)
}

fn refresh(db: &Connection, queue: &Queue, c: &ConversationKey) -> StoreResult<()> {
    db.prepare_cached(&queue.refresh)?.execute(key(c))?;
    Ok(())
}

/// Claims the conversation's head until `lease` if it is claimable at `now`.
fn claim_head<T>(
    db: &Connection,
    queue: &Queue,
    c: &ConversationKey,
    now: i64,
    lease: i64,
    decode: fn(&Row) -> SqlResult<T>,
) -> StoreResult<Option<T>> {
    let [org, number, contact] = key(c);
    let row = one(db, &queue.claim_head, params![org, number, contact, now, lease], decode)?;
    if row.is_some() {
        refresh(db, queue, c)?;
    }
    Ok(row)
}

/// Applies a change (`sql`, see `queries::finish!`) at `at` to a claimed row if the claim
/// still holds; the row's conversation.
fn finish(
    db: &Connection,
    queue: &Queue,
    sql: &str,
    org: &str,
    claim: Claim,
    at: Timestamp,
    text: Option<&str>,
) -> StoreResult<ConversationKey> {
    let (id, attempt, at) = (claim.id, claim.attempt, at.as_unix_millis());
    let found = match text {
        Some(text) => one(db, sql, params![org, id, attempt, at, text], conversation)?,
        None => one(db, sql, params![org, id, attempt, at], conversation)?,
    };
    match found {
        Some(c) => refresh(db, queue, &c).map(|()| c),
        None if db.prepare_cached(&queue.exists)?.exists(params![org, id])? => {
            Err(StoreError::LeaseLost { what: queue.what, id, attempt })
        }
        None => Err(StoreError::NotFound { what: queue.what, id: id.to_string() }),
    }
}

fn insert_inbox(db: &Connection, e: &NewInboxEvent) -> StoreResult<InboxInsert> {
    let [org, number, contact] = key(&e.conversation);
    let (kind, payload, received, due) =
        (e.kind.as_str(), e.payload.to_string(), e.received_at.as_unix_millis(), e.due_at.as_unix_millis());
    match one(db, INSERT_INBOX, params![org, number, contact, e.message_id, kind, payload, received, due], |r| {
        r.get(0)
    })? {
        Some(id) => refresh(db, &INBOX, &e.conversation).map(|()| InboxInsert::Inserted(id)),
        None => Ok(InboxInsert::Duplicate(db.prepare_cached(INBOX_ID)?.query_row([org, &e.message_id], |r| r.get(0))?)),
    }
}

/// Writes replies, claimed until `lease(conversation)` where that is `Some`.
fn enqueue(
    db: &Connection,
    messages: &[NewOutboxMessage],
    lease: impl Fn(&ConversationKey) -> Option<Timestamp>,
) -> StoreResult<Vec<i64>> {
    let mut insert = db.prepare_cached(INSERT_OUTBOX)?;
    let mut ids = Vec::with_capacity(messages.len());
    for m in messages {
        let [org, number, contact] = key(&m.conversation);
        let (payload, due, until) =
            (m.payload.to_string(), m.due_at.as_unix_millis(), lease(&m.conversation).map(Timestamp::as_unix_millis));
        ids.push(insert.insert(params![org, number, contact, payload, m.inbox_id, due, until])?);
    }
    distinct(messages.iter().map(|m| &m.conversation)).into_iter().try_for_each(|c| refresh(db, &OUTBOX, c))?;
    Ok(ids)
}

fn append_log(db: &Connection, entries: &[NewLogEntry]) -> StoreResult<Vec<i64>> {
    let mut insert = db.prepare_cached(INSERT_LOG)?;
    let mut ids = Vec::with_capacity(entries.len());
    for e in entries {
        let [org, number, contact] = key(&e.conversation);
        let ((text, json), direction) = (e.content.to_columns(), e.direction.as_str());
        let (at, metadata) = (e.at.as_unix_millis(), e.metadata.to_string());
        ids.push(insert.insert(params![
            org, number, contact, e.flow_id, direction, text, json, e.node_id, e.wamid, at, metadata
        ])?);
    }
    Ok(ids)
}

fn save_session(db: &Connection, w: &SessionWrite) -> StoreResult<SavedSession> {
    let [org, number, contact, flow] = session_key(&w.key);
    let ((node, wake), now, state) = (state::meta(&w.session), w.now.as_unix_millis(), state::encode(&w.session));
    let (wake, closed, status) =
        (wake.map(Timestamp::as_unix_millis), (w.status == SessionStatus::Closed).then_some(now), w.status.as_str());
    // A new session records its cohort; a save of an existing one, the flow version it now runs on.
    let (sql, fifth, last): (_, _, &dyn ToSql) = match w.expected_version {
        0 => (INSERT_SESSION, w.flow_version, &w.cohort),
        expected => (UPDATE_SESSION, expected, &w.flow_version),
    };
    let values =
        params![org, number, contact, flow, fifth, status, STATE_SCHEMA_VERSION, state, node, wake, now, closed, last];
    match one(db, sql, values, |row| Ok(SavedSession { id: row.get(0)?, version: row.get(1)? }))? {
        Some(saved) => Ok(saved),
        None => {
            let found = one(db, SESSION_VERSION, session_key(&w.key), |r| r.get(0))?;
            Err(StoreError::Conflict { key: w.key.to_string(), expected: w.expected_version, found })
        }
    }
}

/// One unit of work, in the writer's transaction (its savepoint undoes it on any error).
fn commit(db: &Connection, commit: &Commit) -> StoreResult<CommitOutcome> {
    let mut outcome = CommitOutcome::default();
    if let Some(w) = &commit.session {
        outcome.session = Some(save_session(db, w)?);
    }
    let handled = match commit.inbox_done {
        Some(claim) => Some(finish(db, &INBOX, &INBOX.done, &commit.org_id, claim, commit.now, None)?),
        None => None,
    };
    outcome.log_ids = append_log(db, &commit.log)?;
    // Replies are claimed for the caller, as a claim would, where all of the unit's replies to
    // their conversation are due and none of its replies is unfinished before them.
    let mut claimed = Vec::new();
    let asked = if commit.claim_replies_until.is_some() { commit.outbox.as_slice() } else { &[] };
    for c in distinct(asked.iter().map(|m| &m.conversation)) {
        let due = commit.outbox.iter().filter(|m| &m.conversation == c).all(|m| m.due_at <= commit.now);
        if due && !db.prepare_cached(OUTBOX_UNFINISHED)?.exists(key(c))? {
            claimed.push(c);
        }
    }
    let lease = |c: &ConversationKey| commit.claim_replies_until.filter(|_| claimed.contains(&c));
    outcome.outbox_ids = enqueue(db, &commit.outbox, lease)?;
    for (reply, id) in commit.outbox.iter().zip(&outcome.outbox_ids) {
        outcome
            .claimed_replies
            .extend(lease(&reply.conversation).map(|until| OutboxMessage::claimed_on_insert(*id, reply, until)));
    }
    for event in &commit.schedule {
        outcome.scheduled.push(insert_inbox(db, event)?);
    }
    if let (Some(c), Some(until)) = (handled, commit.claim_next_until) {
        let (now, until) = (commit.now.as_unix_millis(), until.as_unix_millis());
        outcome.claimed_next = claim_head(db, &INBOX, &c, now, until, inbox_event)?.map(Box::new);
    }
    Ok(outcome)
}

fn ts(ms: i64) -> Timestamp {
    Timestamp::from_unix_millis(ms)
}

fn opt_ts(row: &Row, column: &str) -> SqlResult<Option<Timestamp>> {
    Ok(row.get::<_, Option<i64>>(column)?.map(ts))
}

fn text(row: &Row, column: &str) -> SqlResult<String> {
    row.get(column)
}

fn json(row: &Row, column: &str) -> SqlResult<serde_json::Value> {
    let text = text(row, column)?;
    Ok(serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)))
}

fn count(row: &Row, column: &str) -> SqlResult<u64> {
    Ok(row.get::<_, i64>(column)?.max(0) as u64)
}

fn conversation(row: &Row) -> SqlResult<ConversationKey> {
    Ok(ConversationKey::new(text(row, "org_id")?, text(row, "business_number_id")?, text(row, "contact_id")?))
}

fn inbox_event(row: &Row) -> SqlResult<InboxEvent> {
    Ok(InboxEvent {
        id: row.get("id")?,
        conversation: conversation(row)?,
        message_id: row.get("message_id")?,
        kind: InboxKind::parse(&text(row, "kind")?),
        payload: json(row, "payload")?,
        received_at: ts(row.get("received_at")?),
        due_at: ts(row.get("due_at")?),
        status: QueueStatus::parse(&text(row, "status")?),
        attempts: row.get("attempts")?,
        lease_until: opt_ts(row, "lease_until")?,
        retry_at: opt_ts(row, "retry_at")?,
        last_error: row.get("last_error")?,
    })
}

fn outbox_message(row: &Row) -> SqlResult<OutboxMessage> {
    Ok(OutboxMessage {
        id: row.get("id")?,
        conversation: conversation(row)?,
        payload: json(row, "payload")?,
        status: QueueStatus::parse(&text(row, "status")?),
        attempts: row.get("attempts")?,
        due_at: ts(row.get("due_at")?),
        retry_at: opt_ts(row, "retry_at")?,
        lease_until: opt_ts(row, "lease_until")?,
        wamid: row.get("wamid")?,
        last_error: row.get("last_error")?,
        inbox_id: row.get("inbox_id")?,
        delivery: row.get::<_, Option<String>>("delivery")?.as_deref().and_then(DeliveryStatus::parse),
        delivery_at: opt_ts(row, "delivery_at")?,
        sent_at: opt_ts(row, "sent_at")?,
    })
}

fn session_info(row: &Row) -> SqlResult<SessionInfo> {
    Ok(SessionInfo {
        id: row.get("id")?,
        key: conversation(row)?.session(text(row, "flow_id")?),
        flow_version: row.get("flow_version")?,
        version: row.get("version")?,
        status: SessionStatus::parse(&text(row, "status")?),
        current_node: row.get("current_node")?,
        wake_at: opt_ts(row, "wake_at")?,
        created_at: ts(row.get("created_at")?),
        updated_at: ts(row.get("updated_at")?),
        closed_at: opt_ts(row, "closed_at")?,
    })
}

/// A session row with its state; a state that does not decode is this session's error only.
fn stored_session(row: &Row) -> StoreResult<StoredSession> {
    let SessionInfo { id, key, flow_version, version, status, created_at, updated_at, closed_at, .. } =
        session_info(row)?;
    let session = state::decode(id, row.get("state_schema")?, &text(row, "state")?)?;
    Ok(StoredSession { id, key, flow_version, version, status, session, created_at, updated_at, closed_at })
}

/// The first session row `sql` answers, with its state.
fn first_session(db: &Connection, sql: &str, values: impl Params) -> StoreResult<Option<StoredSession>> {
    let mut query = db.prepare_cached(sql)?;
    let mut rows = query.query(values)?;
    rows.next()?.map(stored_session).transpose()
}

fn log_entry(row: &Row) -> SqlResult<LogEntry> {
    Ok(LogEntry {
        id: row.get("id")?,
        conversation: conversation(row)?,
        flow_id: row.get("flow_id")?,
        direction: Direction::parse(&text(row, "direction")?),
        content: Content::from_columns(row.get("content_text")?, row.get("content_json")?),
        node_id: row.get("node_id")?,
        wamid: row.get("wamid")?,
        at: ts(row.get("at")?),
        metadata: json(row, "metadata")?,
    })
}

fn stored_flow(row: &Row) -> SqlResult<StoredFlow> {
    Ok(StoredFlow {
        org_id: row.get("org_id")?,
        flow_id: row.get("flow_id")?,
        version: row.get("version")?,
        definition: row.get("definition")?,
        published_at: ts(row.get("published_at")?),
    })
}

#[async_trait]
impl Organizations for SqliteStore {
    async fn register_organization(&self, org_id: &str) -> StoreResult<()> {
        let id = org_id.to_owned();
        self.writer.run(move |db| Ok(db.prepare_cached(REGISTER_ORG)?.execute([id]).map(drop)?)).await?;
        self.known_orgs.write().unwrap_or_else(PoisonError::into_inner).insert(org_id.to_owned());
        Ok(())
    }

    async fn organization_exists(&self, org_id: &str) -> StoreResult<bool> {
        match self.check_org(org_id).await {
            Ok(()) => Ok(true),
            Err(StoreError::UnknownOrganization(_)) => Ok(false),
            Err(e) => Err(e),
        }
    }
}

#[async_trait]
impl SessionStore for SqliteStore {
    async fn load_session(&self, k: &SessionKey) -> StoreResult<Option<StoredSession>> {
        let k = k.clone();
        self.on(self.reader(), &k.org_id.clone(), move |db, _| first_session(db, LOAD_SESSION, session_key(&k))).await
    }

    async fn active_session(&self, c: &ConversationKey) -> StoreResult<Option<StoredSession>> {
        let c = c.clone();
        self.on(self.reader(), &c.org_id.clone(), move |db, _| first_session(db, CONVERSATION_SESSIONS, key(&c))).await
    }

    /// One read for the whole batch.
    async fn active_sessions(&self, conversations: &[ConversationKey]) -> StoreResult<Vec<Option<StoredSession>>> {
        self.check_orgs(conversations.iter()).await?;
        let conversations = conversations.to_vec();
        self.reader()
            .run(move |db| conversations.iter().map(|c| first_session(db, CONVERSATION_SESSIONS, key(c))).collect())
            .await
    }

    async fn conversation_sessions(&self, c: &ConversationKey) -> StoreResult<Vec<SessionInfo>> {
        let c = c.clone();
        self.on(self.reader(), &c.org_id.clone(), move |db, _| all(db, CONVERSATION_SESSIONS, key(&c), session_info))
            .await
    }

    async fn save_session(&self, write: SessionWrite) -> StoreResult<SavedSession> {
        self.on(&self.writer, &write.key.org_id.clone(), move |db, _| save_session(db, &write)).await
    }

    async fn close_session(&self, k: &SessionKey, now: Timestamp) -> StoreResult<bool> {
        let k = k.clone();
        self.on(&self.writer, &k.org_id.clone(), move |db, _| {
            let [org, number, contact, flow] = session_key(&k);
            Ok(db.prepare_cached(CLOSE_SESSION)?.execute(params![org, number, contact, flow, now.as_unix_millis()])?
                > 0)
        })
        .await
    }

    async fn list_active_sessions(&self, org_id: &str, page: Page) -> StoreResult<Vec<SessionInfo>> {
        self.on(self.reader(), org_id, move |db, org| {
            all(db, LIST_ACTIVE_SESSIONS, params![org, page.limit_i64(), page.offset_i64()], session_info)
        })
        .await
    }

    async fn purge(&self, org_id: &str, now: Timestamp, policy: PurgePolicy) -> StoreResult<PurgeReport> {
        let now = now.as_unix_millis();
        let expired_before = now.saturating_sub(duration_ms(policy.session_ttl));
        let retained_after = now.saturating_sub(duration_ms(policy.retention));
        self.on(&self.writer, org_id, move |db, org| {
            let delete = |sql, before: i64| -> StoreResult<u64> {
                Ok(db.prepare_cached(sql)?.execute(params![org, before])? as u64)
            };
            let report = PurgeReport {
                expired_sessions: delete(PURGE_EXPIRED, expired_before)?,
                closed_sessions: delete(PURGE_CLOSED, retained_after)?,
                inbox_rows: delete(PURGE_INBOX, retained_after)?,
                outbox_rows: delete(PURGE_OUTBOX, retained_after)?,
            };
            db.prepare_cached(PURGE_CONVERSATIONS)?.execute([org])?;
            Ok(report)
        })
        .await
    }
}

#[async_trait]
impl MessageLog for SqliteStore {
    async fn append_log(&self, org_id: &str, entries: &[NewLogEntry]) -> StoreResult<Vec<i64>> {
        same_org(org_id, entries.iter().map(|e| &e.conversation))?;
        let entries = entries.to_vec();
        self.on(&self.writer, org_id, move |db, _| append_log(db, &entries)).await
    }

    async fn history(&self, c: &ConversationKey, page: Page) -> StoreResult<Vec<LogEntry>> {
        let c = c.clone();
        self.on(self.reader(), &c.org_id.clone(), move |db, _| {
            let [org, number, contact] = key(&c);
            all(db, HISTORY, params![org, number, contact, page.limit_i64(), page.offset_i64()], log_entry)
        })
        .await
    }

    async fn inbound_counts(&self, windows: &[(ConversationKey, Timestamp)], at_most: u64) -> StoreResult<Vec<u64>> {
        self.check_orgs(windows.iter().map(|(c, _)| c)).await?;
        let (windows, at_most) = (windows.to_vec(), i64::try_from(at_most).unwrap_or(i64::MAX));
        self.reader()
            .run(move |db| {
                let mut query = db.prepare_cached(INBOUND_COUNT)?;
                let counted = |(c, since): &(ConversationKey, Timestamp)| {
                    let [org, number, contact] = key(c);
                    query.query_row(params![org, number, contact, since.as_unix_millis(), at_most], |row| {
                        count(row, "count(*)")
                    })
                };
                Ok(windows.iter().map(counted).collect::<SqlResult<_>>()?)
            })
            .await
    }

    async fn list_conversations(&self, org_id: &str, page: Page) -> StoreResult<Vec<ConversationSummary>> {
        let summary = |row: &Row| {
            Ok(ConversationSummary {
                conversation: conversation(row)?,
                message_count: count(row, "n")?,
                first_message_at: ts(row.get("first_at")?),
                last_message_at: ts(row.get("last_at")?),
            })
        };
        self.on(self.reader(), org_id, move |db, org| {
            all(db, LIST_CONVERSATIONS, params![org, page.limit_i64(), page.offset_i64()], summary)
        })
        .await
    }

    async fn metrics(&self, org_id: &str, query: MetricsQuery) -> StoreResult<Metrics> {
        let (from, to) = query.bounds();
        self.on(self.reader(), org_id, move |db, org| {
            let mut tally = MetricsTally::default();
            let mut sessions = db.prepare_cached(METRICS_SESSIONS)?;
            let mut rows = sessions.query(params![org, from, to, DAY_MS])?;
            while let Some(row) = rows.next()? {
                let (flow, cohort, day): (String, Option<String>, i64) =
                    (row.get("flow_id")?, row.get("cohort")?, row.get("day")?);
                tally.sessions(&flow, cohort.as_deref(), day, text(row, "status")? == "active", count(row, "n")?);
            }
            let mut messages = db.prepare_cached(METRICS_MESSAGES)?;
            let mut rows = messages.query(params![org, from, to, DAY_MS])?;
            while let Some(row) = rows.next()? {
                let (flow, day): (Option<String>, i64) = (row.get("flow_id")?, row.get("day")?);
                tally.messages(flow.as_deref(), day, text(row, "direction")? == "in", count(row, "n")?);
            }
            Ok(tally.finish())
        })
        .await
    }
}

#[async_trait]
impl Inbox for SqliteStore {
    async fn insert_inbox(&self, event: NewInboxEvent) -> StoreResult<InboxInsert> {
        self.on(&self.writer, &event.conversation.org_id.clone(), move |db, _| insert_inbox(db, &event)).await
    }

    async fn claim_inbox(&self, request: &ClaimRequest) -> StoreResult<Vec<InboxEvent>> {
        self.claim(&INBOX, request, inbox_event).await
    }

    async fn complete_inbox(&self, org_id: &str, claim: Claim, now: Timestamp) -> StoreResult<()> {
        self.finish(&INBOX, &INBOX.done, org_id, claim, now, None).await
    }

    async fn fail_inbox(
        &self,
        org_id: &str,
        claim: Claim,
        error: &str,
        retry: Option<Timestamp>,
        now: Timestamp,
    ) -> StoreResult<()> {
        match retry {
            Some(at) => self.finish(&INBOX, &INBOX.retry, org_id, claim, at, Some(error)).await,
            None => self.finish(&INBOX, &INBOX.failed, org_id, claim, now, Some(error)).await,
        }
    }

    async fn reclaim_inbox(&self, org_id: Option<&str>, now: Timestamp) -> StoreResult<u64> {
        self.reclaim(&INBOX, org_id, now).await
    }

    async fn get_inbox(&self, org_id: &str, id: i64) -> StoreResult<Option<InboxEvent>> {
        self.on(self.reader(), org_id, move |db, org| one(db, GET_INBOX, params![org, id], inbox_event)).await
    }
}

#[async_trait]
impl Outbox for SqliteStore {
    async fn enqueue_outbox(&self, org_id: &str, messages: &[NewOutboxMessage]) -> StoreResult<Vec<i64>> {
        same_org(org_id, messages.iter().map(|m| &m.conversation))?;
        let messages = messages.to_vec();
        self.on(&self.writer, org_id, move |db, _| enqueue(db, &messages, |_| None)).await
    }

    async fn claim_outbox(&self, request: &ClaimRequest) -> StoreResult<Vec<OutboxMessage>> {
        self.claim(&OUTBOX, request, outbox_message).await
    }

    async fn mark_sent(&self, org_id: &str, claim: Claim, wamid: &str, now: Timestamp) -> StoreResult<()> {
        self.finish(&OUTBOX, &OUTBOX.done, org_id, claim, now, Some(wamid)).await
    }

    async fn reschedule_outbox(&self, org_id: &str, claim: Claim, retry_at: Timestamp, error: &str) -> StoreResult<()> {
        self.finish(&OUTBOX, &OUTBOX.retry, org_id, claim, retry_at, Some(error)).await
    }

    async fn fail_outbox(&self, org_id: &str, claim: Claim, error: &str, now: Timestamp) -> StoreResult<()> {
        self.finish(&OUTBOX, &OUTBOX.failed, org_id, claim, now, Some(error)).await
    }

    async fn reclaim_outbox(&self, org_id: Option<&str>, now: Timestamp) -> StoreResult<u64> {
        self.reclaim(&OUTBOX, org_id, now).await
    }

    async fn record_delivery(
        &self,
        org_id: &str,
        wamid: &str,
        status: DeliveryStatus,
        at: Timestamp,
    ) -> StoreResult<bool> {
        let wamid = wamid.to_owned();
        self.on(&self.writer, org_id, move |db, org| {
            let values = params![org, wamid, status.as_str(), status.rank(), at.as_unix_millis()];
            Ok(db.prepare_cached(RECORD_DELIVERY)?.execute(values)? > 0
                || db.prepare_cached(OUTBOX_WAMID)?.exists([org, &wamid])?)
        })
        .await
    }

    async fn get_outbox(&self, org_id: &str, id: i64) -> StoreResult<Option<OutboxMessage>> {
        self.on(self.reader(), org_id, move |db, org| one(db, GET_OUTBOX, params![org, id], outbox_message)).await
    }
}

#[async_trait]
impl FlowStore for SqliteStore {
    async fn publish_flow(&self, org_id: &str, flow_id: &str, definition: &str, now: Timestamp) -> StoreResult<i64> {
        let (flow, definition, now) = (flow_id.to_owned(), definition.to_owned(), now.as_unix_millis());
        let published = move |db: &Connection, org: &str| {
            Ok(db.prepare_cached(PUBLISH_FLOW)?.query_row(params![org, flow, definition, now], |row| row.get(0))?)
        };
        self.on(&self.writer, org_id, published).await
    }

    async fn get_flow(&self, org_id: &str, flow_id: &str, version: Option<i64>) -> StoreResult<Option<StoredFlow>> {
        let flow = flow_id.to_owned();
        self.on(self.reader(), org_id, move |db, org| one(db, GET_FLOW, params![org, flow, version], stored_flow)).await
    }

    async fn list_flows(&self, org_id: &str) -> StoreResult<Vec<StoredFlow>> {
        self.on(self.reader(), org_id, move |db, org| all(db, LIST_FLOWS, [org], stored_flow)).await
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn commit(&self, unit: Commit) -> StoreResult<CommitOutcome> {
        let (log, outbox) = (unit.log.iter().map(|e| &e.conversation), unit.outbox.iter().map(|m| &m.conversation));
        let session = unit.session.as_ref().map(|w| w.key.conversation());
        same_org(&unit.org_id, log.chain(outbox).chain(unit.schedule.iter().map(|s| &s.conversation)).chain(&session))?;
        self.on(&self.writer, &unit.org_id.clone(), move |db, _| commit(db, &unit)).await
    }

    async fn ping(&self) -> StoreResult<()> {
        self.reader().run(|db| Ok(db.query_row("SELECT 1", [], |_| Ok(()))?)).await
    }

    async fn close(&self) {
        [Some(&self.writer), self.readers.as_ref(), self.checkpoints.as_ref()]
            .into_iter()
            .flatten()
            .for_each(Lane::close);
    }

    fn backend(&self) -> &'static str {
        "sqlite"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Settings live on each connection: the writer's must have them.
    #[test]
    fn connections_keep_temporary_data_in_memory_and_flush_as_asked() {
        for (synchronous_full, expected) in [(true, 2), (false, 1)] {
            let db = connect("", &SqliteOptions { synchronous_full, ..SqliteOptions::default() }, true, false).unwrap();
            let pragma = |name| db.pragma_query_value(None, name, |row| row.get::<_, i64>(0)).unwrap();
            // synchronous 2 is FULL, 1 NORMAL; temp_store 2 is MEMORY.
            assert_eq!((pragma("synchronous"), pragma("temp_store"), pragma("foreign_keys")), (expected, 2, 1));
        }
    }
}
