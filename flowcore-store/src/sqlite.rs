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
use rusqlite::{params, Connection, OpenFlags, OptionalExtension, Row, TransactionBehavior};
use tokio::sync::oneshot;

use crate::error::{StoreError, StoreResult};
use crate::metrics_tally::MetricsTally;
use crate::state::{self, STATE_SCHEMA_VERSION};
use crate::traits::*;
use crate::types::*;
use queries::*;

mod queries;

/// The schema version [`SCHEMA`] writes.
const SCHEMA_VERSION: i64 = 1;

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
    /// which in WAL mode may lose the last commits on a power loss (never corrupting the file)
    /// and is faster: see BENCHMARKS.md.
    pub synchronous_full: bool,
    /// How often a background thread copies the WAL into the database file (a passive
    /// checkpoint on its own connection, which never makes a writer wait). `None` leaves it to
    /// SQLite's automatic checkpoints, which run inside a committing write and stall it, and
    /// every write queued behind it, for the copy and its fsync.
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
        let (queue, jobs) = mpsc::channel::<Job>();
        let writer = Lane::start(queue, vec![Box::new(move || write_loop(&writer, &jobs))])?;
        let readers = if memory {
            None
        } else {
            let (queue, jobs) = mpsc::channel::<Job>();
            let jobs = Arc::new(Mutex::new(jobs));
            let mut threads: Vec<Box<dyn FnOnce() + Send>> = Vec::new();
            for _ in 0..options.read_connections.max(1) {
                let (connection, jobs) = (connect(&path, &options, false, true)?, jobs.clone());
                threads.push(Box::new(move || read_loop(&connection, &jobs)));
            }
            Some(Lane::start(queue, threads)?)
        };
        let checkpoints = match options.checkpoint_interval {
            Some(every) if !memory => {
                let (queue, stop) = mpsc::channel::<Job>();
                let connection = connect(&path, &options, false, false)?;
                Some(Lane::start(queue, vec![Box::new(move || checkpoint_loop(&connection, every, &stop))])?)
            }
            _ => None,
        };
        Ok(SqliteStore { writer, readers, checkpoints, known_orgs: RwLock::default() })
    }

    async fn read<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Connection) -> StoreResult<T> + Send + 'static,
    ) -> StoreResult<T> {
        self.readers.as_ref().unwrap_or(&self.writer).run(work).await
    }

    async fn write<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Connection) -> StoreResult<T> + Send + 'static,
    ) -> StoreResult<T> {
        self.writer.run(work).await
    }

    async fn check_org(&self, org_id: &str) -> StoreResult<()> {
        if self.known_orgs.read().unwrap_or_else(PoisonError::into_inner).contains(org_id) {
            return Ok(());
        }
        let id = org_id.to_owned();
        if !self.read(move |db| Ok(db.prepare_cached(ORG_EXISTS)?.exists([id])?)).await? {
            return Err(StoreError::UnknownOrganization(org_id.to_owned()));
        }
        self.known_orgs.write().unwrap_or_else(PoisonError::into_inner).insert(org_id.to_owned());
        Ok(())
    }

    async fn claim<T: Send + 'static>(
        &self,
        queue: &'static Queue,
        request: &ClaimRequest,
        decode: fn(&Row<'_>) -> rusqlite::Result<T>,
    ) -> StoreResult<Vec<T>> {
        if let Some(org) = &request.org_id {
            self.check_org(org).await?;
        }
        let request = request.clone();
        self.write(move |db| {
            let (now, lease) = (request.now.as_unix_millis(), request.lease_until().as_unix_millis());
            let limit = request.limit.min(Page::MAX_LIMIT);
            let mut claimed = Vec::new();
            for c in all(db, queue.claimable, params![now, request.org_id, limit], conversation)? {
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
        org_id: &str,
        claim: Claim,
        at: Timestamp,
        text: Option<&str>,
    ) -> StoreResult<()> {
        self.check_org(org_id).await?;
        let (org_id, text) = (org_id.to_owned(), text.map(str::to_owned));
        self.write(move |db| finish(db, queue, sql, &org_id, claim, at, text.as_deref()).map(drop)).await
    }

    async fn reclaim(&self, queue: &'static Queue, org_id: Option<&str>, now: Timestamp) -> StoreResult<u64> {
        if let Some(org) = org_id {
            self.check_org(org).await?;
        }
        let org_id = org_id.map(str::to_owned);
        self.write(move |db| {
            let freed = all(db, queue.reclaim, params![now.as_unix_millis(), org_id], conversation)?;
            for c in distinct(&freed) {
                refresh(db, queue, c)?;
            }
            Ok(freed.len() as u64)
        })
        .await
    }
}

/// Work for a connection's thread. Given the connection (or why the transaction could not
/// start), it runs and tells whether it succeeded; its caller hears the result once the
/// transaction ended.
type Job = Box<dyn FnOnce(Result<&Connection, &StoreError>) -> Answer + Send>;

struct Answer {
    ok: bool,
    /// Sends the result, or instead the error that kept the transaction from committing.
    send: Box<dyn FnOnce(Option<&StoreError>) + Send>,
}

/// Threads with connections of their own, fed by one queue; closed when the queue goes.
#[derive(Debug)]
struct Lane {
    queue: Mutex<Option<mpsc::Sender<Job>>>,
    /// One per thread: resolves when the thread has ended.
    ended: Mutex<Vec<oneshot::Receiver<()>>>,
}

impl Lane {
    fn start(queue: mpsc::Sender<Job>, threads: Vec<Box<dyn FnOnce() + Send>>) -> StoreResult<Lane> {
        let mut ended = Vec::new();
        for run in threads {
            let (end, on_end) = oneshot::channel::<()>();
            std::thread::Builder::new()
                .name("flowcore-sqlite".into())
                .spawn(move || {
                    run();
                    drop(end);
                })
                .map_err(|e| StoreError::Database(format!("cannot start a sqlite thread: {e}")))?;
            ended.push(on_end);
        }
        Ok(Lane { queue: Mutex::new(Some(queue)), ended: Mutex::new(ended) })
    }

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
        let sent = match &*self.queue.lock().unwrap_or_else(PoisonError::into_inner) {
            Some(queue) => queue.send(job).is_ok(),
            None => false,
        };
        if !sent {
            return Err(StoreError::Closed);
        }
        result.await.unwrap_or(Err(StoreError::Closed))
    }

    /// Lets the threads finish what is queued, and waits for them.
    async fn close(&self) {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner).take();
        let ended = std::mem::take(&mut *self.ended.lock().unwrap_or_else(PoisonError::into_inner));
        for thread in ended {
            let _ = thread.await;
        }
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
        let job = jobs.lock().unwrap_or_else(PoisonError::into_inner).recv();
        let Ok(job) = job else { return };
        (job(Ok(db)).send)(None);
    }
}

/// Passive checkpoints until the store closes. A checkpoint that cannot finish (a reader
/// still needs old frames) continues next time; SQLite's own remain the backstop.
fn checkpoint_loop(db: &Connection, every: Duration, stop: &mpsc::Receiver<Job>) {
    while let Err(mpsc::RecvTimeoutError::Timeout) = stop.recv_timeout(every) {
        let _ = db.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()));
    }
}

fn connect(path: &str, options: &SqliteOptions, memory: bool, read_only: bool) -> StoreResult<Connection> {
    let db = match (memory, read_only) {
        (true, _) => Connection::open_in_memory()?,
        (false, true) => Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX | OpenFlags::SQLITE_OPEN_URI,
        )?,
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
        0 => tx
            .execute_batch(SCHEMA)
            .and_then(|()| tx.pragma_update(None, "user_version", SCHEMA_VERSION))
            .map_err(|e| StoreError::Migration(e.to_string()))?,
        SCHEMA_VERSION => {}
        newer => {
            return Err(StoreError::Migration(format!("schema version {newer}, this release knows {SCHEMA_VERSION}")))
        }
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

/// Each conversation once, in the order first seen.
fn distinct<'a>(keys: impl IntoIterator<Item = &'a ConversationKey>) -> Vec<&'a ConversationKey> {
    let mut seen = HashSet::new();
    keys.into_iter().filter(|c| seen.insert(*c)).collect()
}

fn same_org<'a>(org_id: &str, mut keys: impl Iterator<Item = &'a ConversationKey>) -> StoreResult<()> {
    match keys.find(|c| c.org_id != org_id) {
        Some(c) => Err(StoreError::InvalidInput(format!(
            "row for organization {:?} passed to organization {org_id:?}",
            c.org_id
        ))),
        None => Ok(()),
    }
}

/// Every row `sql` answers for `values`.
fn all<T>(
    db: &Connection,
    sql: &str,
    values: impl rusqlite::Params,
    decode: impl FnMut(&Row<'_>) -> rusqlite::Result<T>,
) -> StoreResult<Vec<T>> {
    let mut query = db.prepare_cached(sql)?;
    let rows = query.query_map(values, decode)?.collect::<rusqlite::Result<_>>()?;
    Ok(rows)
}

fn refresh(db: &Connection, queue: &Queue, c: &ConversationKey) -> StoreResult<()> {
    db.prepare_cached(queue.refresh)?.execute(key(c))?;
    Ok(())
}

/// Claims the conversation's head until `lease` if it is claimable at `now`.
fn claim_head<T>(
    db: &Connection,
    queue: &Queue,
    c: &ConversationKey,
    now: i64,
    lease: i64,
    decode: fn(&Row<'_>) -> rusqlite::Result<T>,
) -> StoreResult<Option<T>> {
    let [org, number, contact] = key(c);
    let row = db.prepare_cached(queue.claim_head)?.query_row(params![org, number, contact, now, lease], decode);
    let row = row.optional()?;
    if row.is_some() {
        refresh(db, queue, c)?;
    }
    Ok(row)
}

/// Applies a change (`sql`, see `queries::finish!`) to a claimed row if the claim still holds;
/// the row's conversation.
fn finish(
    db: &Connection,
    queue: &Queue,
    sql: &str,
    org_id: &str,
    claim: Claim,
    at: Timestamp,
    text: Option<&str>,
) -> StoreResult<ConversationKey> {
    let mut change = db.prepare_cached(sql)?;
    let at = at.as_unix_millis();
    let found = match text {
        Some(text) => change.query_row(params![org_id, claim.id, claim.attempt, at, text], conversation),
        None => change.query_row(params![org_id, claim.id, claim.attempt, at], conversation),
    };
    match found.optional()? {
        Some(c) => refresh(db, queue, &c).map(|()| c),
        None if db.prepare_cached(queue.exists)?.exists(params![org_id, claim.id])? => {
            Err(StoreError::LeaseLost { what: queue.what, id: claim.id, attempt: claim.attempt })
        }
        None => Err(StoreError::NotFound { what: queue.what, id: claim.id.to_string() }),
    }
}

fn insert_inbox(db: &Connection, e: &NewInboxEvent) -> StoreResult<InboxInsert> {
    let [org, number, contact] = key(&e.conversation);
    let (payload, received, due) = (e.payload.to_string(), e.received_at.as_unix_millis(), e.due_at.as_unix_millis());
    let values = params![org, number, contact, e.message_id, e.kind.as_str(), payload, received, due];
    match db.prepare_cached(INSERT_INBOX)?.query_row(values, |row| row.get(0)).optional()? {
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
        let until = lease(&m.conversation).map(Timestamp::as_unix_millis);
        let payload = m.payload.to_string();
        ids.push(insert.insert(params![
            org,
            number,
            contact,
            payload,
            m.inbox_id,
            m.due_at.as_unix_millis(),
            until
        ])?);
    }
    for c in distinct(messages.iter().map(|m| &m.conversation)) {
        refresh(db, &OUTBOX, c)?;
    }
    Ok(ids)
}

fn append_log(db: &Connection, entries: &[NewLogEntry]) -> StoreResult<Vec<i64>> {
    let mut insert = db.prepare_cached(INSERT_LOG)?;
    let mut ids = Vec::with_capacity(entries.len());
    for e in entries {
        let [org, number, contact] = key(&e.conversation);
        let (text, json) = e.content.to_columns();
        let (direction, at, metadata) = (e.direction.as_str(), e.at.as_unix_millis(), e.metadata.to_string());
        ids.push(insert.insert(params![
            org, number, contact, e.flow_id, direction, text, json, e.node_id, e.wamid, at, metadata
        ])?);
    }
    Ok(ids)
}

fn save_session(db: &Connection, w: &SessionWrite) -> StoreResult<SavedSession> {
    let k = &w.key;
    let (org, number, contact) = (&k.org_id, &k.business_number_id, &k.contact_id);
    let (node, wake_at) = state::meta(&w.session);
    let (now, state) = (w.now.as_unix_millis(), state::encode(&w.session));
    let (wake_at, closed_at) =
        (wake_at.map(Timestamp::as_unix_millis), (w.status == SessionStatus::Closed).then_some(now));
    let saved = |row: &Row<'_>| Ok(SavedSession { id: row.get(0)?, version: row.get(1)? });
    let (status, flow) = (w.status.as_str(), &k.flow_id);
    let saved = if w.expected_version == 0 {
        db.prepare_cached(INSERT_SESSION)?.query_row(
            params![
                org,
                number,
                contact,
                flow,
                w.flow_version,
                status,
                STATE_SCHEMA_VERSION,
                state,
                node,
                wake_at,
                now,
                closed_at,
                w.cohort
            ],
            saved,
        )
    } else {
        db.prepare_cached(UPDATE_SESSION)?.query_row(
            params![
                org,
                number,
                contact,
                flow,
                w.expected_version,
                status,
                STATE_SCHEMA_VERSION,
                state,
                node,
                wake_at,
                now,
                closed_at,
                w.flow_version
            ],
            saved,
        )
    };
    match saved.optional()? {
        Some(saved) => Ok(saved),
        None => {
            let found = db.prepare_cached(SESSION_VERSION)?.query_row([org, number, contact, flow], |r| r.get(0));
            Err(StoreError::Conflict { key: k.to_string(), expected: w.expected_version, found: found.optional()? })
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
        Some(claim) => Some(finish(db, &INBOX, INBOX_DONE, &commit.org_id, claim, commit.now, None)?),
        None => None,
    };
    outcome.log_ids = append_log(db, &commit.log)?;
    // Replies are claimed for the caller, as a claim would, where all of the unit's replies to
    // their conversation are due and none of its replies is unfinished before them.
    let mut claimed = Vec::new();
    if commit.claim_replies_until.is_some() {
        for c in distinct(commit.outbox.iter().map(|m| &m.conversation)) {
            let due = commit.outbox.iter().filter(|m| &m.conversation == c).all(|m| m.due_at <= commit.now);
            if due && !db.prepare_cached(OUTBOX_UNFINISHED)?.exists(key(c))? {
                claimed.push(c);
            }
        }
    }
    let lease = |c: &ConversationKey| commit.claim_replies_until.filter(|_| claimed.contains(&c));
    outcome.outbox_ids = enqueue(db, &commit.outbox, lease)?;
    for (reply, id) in commit.outbox.iter().zip(&outcome.outbox_ids) {
        if let Some(until) = lease(&reply.conversation) {
            outcome.claimed_replies.push(OutboxMessage::claimed_on_insert(*id, reply, until));
        }
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

fn opt_ts(row: &Row<'_>, column: &str) -> rusqlite::Result<Option<Timestamp>> {
    Ok(row.get::<_, Option<i64>>(column)?.map(ts))
}

fn json(row: &Row<'_>, column: &str) -> rusqlite::Result<serde_json::Value> {
    let text: String = row.get(column)?;
    Ok(serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)))
}

fn conversation(row: &Row<'_>) -> rusqlite::Result<ConversationKey> {
    Ok(ConversationKey::new(
        row.get::<_, String>("org_id")?,
        row.get::<_, String>("business_number_id")?,
        row.get::<_, String>("contact_id")?,
    ))
}

fn inbox_event(row: &Row<'_>) -> rusqlite::Result<InboxEvent> {
    Ok(InboxEvent {
        id: row.get("id")?,
        conversation: conversation(row)?,
        message_id: row.get("message_id")?,
        kind: InboxKind::parse(&row.get::<_, String>("kind")?),
        payload: json(row, "payload")?,
        received_at: ts(row.get("received_at")?),
        due_at: ts(row.get("due_at")?),
        status: QueueStatus::parse(&row.get::<_, String>("status")?),
        attempts: row.get("attempts")?,
        lease_until: opt_ts(row, "lease_until")?,
        retry_at: opt_ts(row, "retry_at")?,
        last_error: row.get("last_error")?,
    })
}

fn outbox_message(row: &Row<'_>) -> rusqlite::Result<OutboxMessage> {
    Ok(OutboxMessage {
        id: row.get("id")?,
        conversation: conversation(row)?,
        payload: json(row, "payload")?,
        status: QueueStatus::parse(&row.get::<_, String>("status")?),
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

fn session_info(row: &Row<'_>) -> rusqlite::Result<SessionInfo> {
    let c = conversation(row)?;
    Ok(SessionInfo {
        id: row.get("id")?,
        key: c.session(row.get::<_, String>("flow_id")?),
        flow_version: row.get("flow_version")?,
        version: row.get("version")?,
        status: SessionStatus::parse(&row.get::<_, String>("status")?),
        current_node: row.get("current_node")?,
        wake_at: opt_ts(row, "wake_at")?,
        created_at: ts(row.get("created_at")?),
        updated_at: ts(row.get("updated_at")?),
        closed_at: opt_ts(row, "closed_at")?,
    })
}

/// A session row with its state; a state that does not decode is this session's error only.
fn stored_session(row: &Row<'_>) -> StoreResult<StoredSession> {
    let info = session_info(row)?;
    let session = state::decode(info.id, row.get("state_schema")?, &row.get::<_, String>("state")?)?;
    let SessionInfo { id, key, flow_version, version, status, created_at, updated_at, closed_at, .. } = info;
    Ok(StoredSession { id, key, flow_version, version, status, session, created_at, updated_at, closed_at })
}

fn newest_session(db: &Connection, c: &ConversationKey) -> StoreResult<Option<StoredSession>> {
    let mut query = db.prepare_cached(CONVERSATION_SESSIONS)?;
    let mut rows = query.query(key(c))?;
    rows.next()?.map(stored_session).transpose()
}

fn log_entry(row: &Row<'_>) -> rusqlite::Result<LogEntry> {
    Ok(LogEntry {
        id: row.get("id")?,
        conversation: conversation(row)?,
        flow_id: row.get("flow_id")?,
        direction: Direction::parse(&row.get::<_, String>("direction")?),
        content: Content::from_columns(row.get("content_text")?, row.get("content_json")?),
        node_id: row.get("node_id")?,
        wamid: row.get("wamid")?,
        at: ts(row.get("at")?),
        metadata: json(row, "metadata")?,
    })
}

fn stored_flow(row: &Row<'_>) -> rusqlite::Result<StoredFlow> {
    Ok(StoredFlow {
        org_id: row.get("org_id")?,
        flow_id: row.get("flow_id")?,
        version: row.get("version")?,
        definition: row.get("definition")?,
        published_at: ts(row.get("published_at")?),
    })
}

fn count(row: &Row<'_>, column: &str) -> rusqlite::Result<u64> {
    Ok(row.get::<_, i64>(column)?.max(0) as u64)
}

#[async_trait]
impl Organizations for SqliteStore {
    async fn register_organization(&self, org_id: &str) -> StoreResult<()> {
        let id = org_id.to_owned();
        self.write(move |db| Ok(db.prepare_cached(REGISTER_ORG)?.execute([id]).map(drop)?)).await?;
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
        self.check_org(&k.org_id).await?;
        let k = k.clone();
        self.read(move |db| {
            let mut query = db.prepare_cached(LOAD_SESSION)?;
            let mut rows = query.query([&k.org_id, &k.business_number_id, &k.contact_id, &k.flow_id])?;
            rows.next()?.map(stored_session).transpose()
        })
        .await
    }

    async fn active_session(&self, c: &ConversationKey) -> StoreResult<Option<StoredSession>> {
        self.check_org(&c.org_id).await?;
        let c = c.clone();
        self.read(move |db| newest_session(db, &c)).await
    }

    /// One read for the whole batch.
    async fn active_sessions(&self, conversations: &[ConversationKey]) -> StoreResult<Vec<Option<StoredSession>>> {
        for org_id in distinct(conversations).iter().map(|c| &c.org_id).collect::<HashSet<_>>() {
            self.check_org(org_id).await?;
        }
        let conversations = conversations.to_vec();
        self.read(move |db| conversations.iter().map(|c| newest_session(db, c)).collect()).await
    }

    async fn conversation_sessions(&self, c: &ConversationKey) -> StoreResult<Vec<SessionInfo>> {
        self.check_org(&c.org_id).await?;
        let c = c.clone();
        self.read(move |db| all(db, CONVERSATION_SESSIONS, key(&c), session_info)).await
    }

    async fn save_session(&self, write: SessionWrite) -> StoreResult<SavedSession> {
        self.check_org(&write.key.org_id).await?;
        self.write(move |db| save_session(db, &write)).await
    }

    async fn close_session(&self, k: &SessionKey, now: Timestamp) -> StoreResult<bool> {
        self.check_org(&k.org_id).await?;
        let k = k.clone();
        self.write(move |db| {
            let values = params![k.org_id, k.business_number_id, k.contact_id, k.flow_id, now.as_unix_millis()];
            Ok(db.prepare_cached(CLOSE_SESSION)?.execute(values)? > 0)
        })
        .await
    }

    async fn list_active_sessions(&self, org_id: &str, page: Page) -> StoreResult<Vec<SessionInfo>> {
        self.check_org(org_id).await?;
        let org_id = org_id.to_owned();
        self.read(move |db| {
            let values = params![org_id, page.limit_i64(), page.offset_i64()];
            all(db, LIST_ACTIVE_SESSIONS, values, session_info)
        })
        .await
    }

    async fn purge(&self, org_id: &str, now: Timestamp, policy: PurgePolicy) -> StoreResult<PurgeReport> {
        self.check_org(org_id).await?;
        let now = now.as_unix_millis();
        let expired_before = now.saturating_sub(duration_ms(policy.session_ttl));
        let retained_after = now.saturating_sub(duration_ms(policy.retention));
        let org_id = org_id.to_owned();
        self.write(move |db| {
            let delete = |sql, before: i64| -> StoreResult<u64> {
                Ok(db.prepare_cached(sql)?.execute(params![org_id, before])? as u64)
            };
            let report = PurgeReport {
                expired_sessions: delete(PURGE_EXPIRED, expired_before)?,
                closed_sessions: delete(PURGE_CLOSED, retained_after)?,
                inbox_rows: delete(PURGE_INBOX, retained_after)?,
                outbox_rows: delete(PURGE_OUTBOX, retained_after)?,
            };
            db.prepare_cached(PURGE_CONVERSATIONS)?.execute([&org_id])?;
            Ok(report)
        })
        .await
    }
}

#[async_trait]
impl MessageLog for SqliteStore {
    async fn append_log(&self, org_id: &str, entries: &[NewLogEntry]) -> StoreResult<Vec<i64>> {
        self.check_org(org_id).await?;
        same_org(org_id, entries.iter().map(|e| &e.conversation))?;
        let entries = entries.to_vec();
        self.write(move |db| append_log(db, &entries)).await
    }

    async fn history(&self, c: &ConversationKey, page: Page) -> StoreResult<Vec<LogEntry>> {
        self.check_org(&c.org_id).await?;
        let c = c.clone();
        self.read(move |db| {
            let values = params![c.org_id, c.business_number_id, c.contact_id, page.limit_i64(), page.offset_i64()];
            all(db, HISTORY, values, log_entry)
        })
        .await
    }

    async fn inbound_counts(&self, windows: &[(ConversationKey, Timestamp)], at_most: u64) -> StoreResult<Vec<u64>> {
        for org_id in windows.iter().map(|(c, _)| &c.org_id).collect::<HashSet<_>>() {
            self.check_org(org_id).await?;
        }
        let (windows, at_most) = (windows.to_vec(), i64::try_from(at_most).unwrap_or(i64::MAX));
        self.read(move |db| {
            let mut query = db.prepare_cached(INBOUND_COUNT)?;
            let mut counts = Vec::with_capacity(windows.len());
            for (c, since) in &windows {
                let values = params![c.org_id, c.business_number_id, c.contact_id, since.as_unix_millis(), at_most];
                counts.push(query.query_row(values, |row| count(row, "count(*)"))?);
            }
            Ok(counts)
        })
        .await
    }

    async fn list_conversations(&self, org_id: &str, page: Page) -> StoreResult<Vec<ConversationSummary>> {
        self.check_org(org_id).await?;
        let org_id = org_id.to_owned();
        self.read(move |db| {
            let summary = |row: &Row<'_>| {
                Ok(ConversationSummary {
                    conversation: conversation(row)?,
                    message_count: count(row, "n")?,
                    first_message_at: ts(row.get("first_at")?),
                    last_message_at: ts(row.get("last_at")?),
                })
            };
            let values = params![org_id, page.limit_i64(), page.offset_i64()];
            all(db, LIST_CONVERSATIONS, values, summary)
        })
        .await
    }

    async fn metrics(&self, org_id: &str, query: MetricsQuery) -> StoreResult<Metrics> {
        self.check_org(org_id).await?;
        let org_id = org_id.to_owned();
        self.read(move |db| {
            let (from, to) = query.bounds();
            let mut tally = MetricsTally::default();
            let mut sessions = db.prepare_cached(METRICS_SESSIONS)?;
            let mut rows = sessions.query(params![org_id, from, to, DAY_MS])?;
            while let Some(row) = rows.next()? {
                let (flow, cohort): (String, Option<String>) = (row.get("flow_id")?, row.get("cohort")?);
                let active = row.get::<_, String>("status")? == "active";
                tally.sessions(&flow, cohort.as_deref(), row.get("day")?, active, count(row, "n")?);
            }
            let mut messages = db.prepare_cached(METRICS_MESSAGES)?;
            let mut rows = messages.query(params![org_id, from, to, DAY_MS])?;
            while let Some(row) = rows.next()? {
                let (flow, inbound): (Option<String>, bool) =
                    (row.get("flow_id")?, row.get::<_, String>("direction")? == "in");
                tally.messages(flow.as_deref(), row.get("day")?, inbound, count(row, "n")?);
            }
            Ok(tally.finish())
        })
        .await
    }
}

#[async_trait]
impl Inbox for SqliteStore {
    async fn insert_inbox(&self, event: NewInboxEvent) -> StoreResult<InboxInsert> {
        self.check_org(&event.conversation.org_id).await?;
        self.write(move |db| insert_inbox(db, &event)).await
    }

    async fn claim_inbox(&self, request: &ClaimRequest) -> StoreResult<Vec<InboxEvent>> {
        self.claim(&INBOX, request, inbox_event).await
    }

    async fn complete_inbox(&self, org_id: &str, claim: Claim, now: Timestamp) -> StoreResult<()> {
        self.finish(&INBOX, INBOX_DONE, org_id, claim, now, None).await
    }

    async fn fail_inbox(
        &self,
        org_id: &str,
        claim: Claim,
        error: &str,
        retry_at: Option<Timestamp>,
        now: Timestamp,
    ) -> StoreResult<()> {
        match retry_at {
            Some(at) => self.finish(&INBOX, INBOX_RETRY, org_id, claim, at, Some(error)).await,
            None => self.finish(&INBOX, INBOX_FAILED, org_id, claim, now, Some(error)).await,
        }
    }

    async fn reclaim_inbox(&self, org_id: Option<&str>, now: Timestamp) -> StoreResult<u64> {
        self.reclaim(&INBOX, org_id, now).await
    }

    async fn get_inbox(&self, org_id: &str, id: i64) -> StoreResult<Option<InboxEvent>> {
        self.check_org(org_id).await?;
        let org_id = org_id.to_owned();
        self.read(move |db| Ok(db.prepare_cached(GET_INBOX)?.query_row(params![org_id, id], inbox_event).optional()?))
            .await
    }
}

#[async_trait]
impl Outbox for SqliteStore {
    async fn enqueue_outbox(&self, org_id: &str, messages: &[NewOutboxMessage]) -> StoreResult<Vec<i64>> {
        self.check_org(org_id).await?;
        same_org(org_id, messages.iter().map(|m| &m.conversation))?;
        let messages = messages.to_vec();
        self.write(move |db| enqueue(db, &messages, |_| None)).await
    }

    async fn claim_outbox(&self, request: &ClaimRequest) -> StoreResult<Vec<OutboxMessage>> {
        self.claim(&OUTBOX, request, outbox_message).await
    }

    async fn mark_sent(&self, org_id: &str, claim: Claim, wamid: &str, now: Timestamp) -> StoreResult<()> {
        self.finish(&OUTBOX, OUTBOX_SENT, org_id, claim, now, Some(wamid)).await
    }

    async fn reschedule_outbox(&self, org_id: &str, claim: Claim, retry_at: Timestamp, error: &str) -> StoreResult<()> {
        self.finish(&OUTBOX, OUTBOX_RETRY, org_id, claim, retry_at, Some(error)).await
    }

    async fn fail_outbox(&self, org_id: &str, claim: Claim, error: &str, now: Timestamp) -> StoreResult<()> {
        self.finish(&OUTBOX, OUTBOX_FAILED, org_id, claim, now, Some(error)).await
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
        self.check_org(org_id).await?;
        let (org_id, wamid) = (org_id.to_owned(), wamid.to_owned());
        self.write(move |db| {
            let values = params![org_id, wamid, status.as_str(), status.rank(), at.as_unix_millis()];
            Ok(db.prepare_cached(RECORD_DELIVERY)?.execute(values)? > 0
                || db.prepare_cached(OUTBOX_WAMID)?.exists([&org_id, &wamid])?)
        })
        .await
    }

    async fn get_outbox(&self, org_id: &str, id: i64) -> StoreResult<Option<OutboxMessage>> {
        self.check_org(org_id).await?;
        let org_id = org_id.to_owned();
        self.read(move |db| {
            Ok(db.prepare_cached(GET_OUTBOX)?.query_row(params![org_id, id], outbox_message).optional()?)
        })
        .await
    }
}

#[async_trait]
impl FlowStore for SqliteStore {
    async fn publish_flow(&self, org_id: &str, flow_id: &str, definition: &str, now: Timestamp) -> StoreResult<i64> {
        self.check_org(org_id).await?;
        let values = (org_id.to_owned(), flow_id.to_owned(), definition.to_owned(), now.as_unix_millis());
        self.write(move |db| Ok(db.prepare_cached(PUBLISH_FLOW)?.query_row(values, |row| row.get(0))?)).await
    }

    async fn get_flow(&self, org_id: &str, flow_id: &str, version: Option<i64>) -> StoreResult<Option<StoredFlow>> {
        self.check_org(org_id).await?;
        let (org_id, flow_id) = (org_id.to_owned(), flow_id.to_owned());
        self.read(move |db| {
            Ok(db.prepare_cached(GET_FLOW)?.query_row(params![org_id, flow_id, version], stored_flow).optional()?)
        })
        .await
    }

    async fn list_flows(&self, org_id: &str) -> StoreResult<Vec<StoredFlow>> {
        self.check_org(org_id).await?;
        let org_id = org_id.to_owned();
        self.read(move |db| all(db, LIST_FLOWS, [org_id], stored_flow)).await
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn commit(&self, unit: Commit) -> StoreResult<CommitOutcome> {
        let org_id = unit.org_id.as_str();
        self.check_org(org_id).await?;
        let parts = unit.log.iter().map(|e| &e.conversation).chain(unit.outbox.iter().map(|m| &m.conversation));
        let session = unit.session.as_ref().map(|w| w.key.conversation());
        same_org(org_id, parts.chain(unit.schedule.iter().map(|s| &s.conversation)).chain(session.as_ref()))?;
        self.write(move |db| commit(db, &unit)).await
    }

    async fn ping(&self) -> StoreResult<()> {
        self.read(|db| Ok(db.query_row("SELECT 1", [], |_| Ok(()))?)).await
    }

    async fn close(&self) {
        self.writer.close().await;
        for lane in [&self.readers, &self.checkpoints].into_iter().flatten() {
            lane.close().await;
        }
    }

    fn backend(&self) -> &'static str {
        "sqlite"
    }
}
