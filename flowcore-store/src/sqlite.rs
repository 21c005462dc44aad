//! The SQLite backend: one file, WAL mode, a busy timeout, migrations embedded and run on open.
//!
//! Every write goes through one task that owns the write connection (see `writer`): SQLite
//! has one writer at a time anyway, and queuing the writes in this process avoids
//! `SQLITE_BUSY` between its own tasks. Reads use a pool of connections that see committed
//! data through WAL. The hot writes (inbox inserts, units of work, claim changes, claims)
//! are grouped: what many tasks queue while a transaction runs goes into the next one
//! together (see `group_commit`). Other processes on the same file wait up to the busy
//! timeout.

use std::collections::{HashMap, HashSet};
use std::str::FromStr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use flowcore::Timestamp;
use futures_util::future::BoxFuture;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePoolOptions, SqliteRow, SqliteSynchronous,
};
use sqlx::{Connection, Row, Sqlite, SqlitePool, Transaction};

use crate::error::{StoreError, StoreResult};
use crate::group_commit::{ClaimChange, GroupCommit, Write};
use crate::sql_rows::{
    distinct_conversations, json_col, newest_first, same_org, session_info_cols_of_s, ts, ReplyClaims, INBOX_COLS,
    OUTBOX_COLS, SESSION_INFO_COLS,
};
use crate::state;
use crate::traits::*;
use crate::types::*;
use writer::{SqliteWrite, WriteConnection};

mod grouped_units;
mod next_event;
mod replies;
mod writer;

/// The schema's versions, applied in order, each once (recorded in `flowcore_migrations`).
/// A later change to the schema is a new version here, with its own file.
const MIGRATIONS: &[(i64, &str, &str)] = &[(1, "schema", include_str!("../migrations/sqlite/0001_schema.sql"))];

/// Conversations per read of `active_sessions` and `inbound_counts` (at most five
/// parameters each, well under SQLite's 32,766).
const CONVERSATIONS_PER_READ: usize = 1000;

/// How much one transaction takes besides the queued inbox inserts (32 units of work or
/// claims, or 256 claim changes): bounds how long a webhook's insert waits behind a running
/// transaction. Since claims joined the batches, a backlog fills 64 at once, and the
/// writer then ran at a fixed batch size with a third of the machine idle: in the server
/// load bench (10,000 messages, alternated) 256 gave 2,074–2,545 msg/s against 1,456–2,046
/// for 64, with the ack p99 at 1,000 msg/s unchanged in all but one run (6.1–7.8 ms against
/// 5.8–9.3; one run of 256 had 45 ms).
const MAX_BATCH_COST: usize = 256;

/// Settings for [`SqliteStore::open`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct SqliteOptions {
    /// Reader connections (default 4).
    pub read_connections: u32,
    /// How long a write waits for another process's lock (default 5 s).
    pub busy_timeout: Duration,
    /// `synchronous=FULL` (the default): a commit is flushed to disk before it returns, so it
    /// survives power loss, not only a crash of the process, at the cost of an fsync per
    /// commit (the group commit shares one among every write of a batch). `false` gives
    /// `synchronous=NORMAL`: in WAL mode the last commits before a power loss may be lost
    /// (never corrupted). The server's load bench measured 3,297–3,429 msg/s with `FULL`
    /// against 3,826–4,353 with `NORMAL` (BENCHMARKS.md, session 16).
    pub synchronous_full: bool,
    /// How often a background task copies the WAL into the database file (a passive
    /// checkpoint, on its own connection: writers do not wait for its lock). Default 50 ms;
    /// `None` leaves checkpoints to SQLite's automatic ones, which run inside a committing
    /// write and stall it (and every write queued behind it) for the copy and its fsync — the
    /// main cause of slow webhook acknowledgements in the server's load bench. Small, frequent
    /// checkpoints also slow concurrent writes least: in that bench (1,000 msg/s) the ack p99
    /// was 9.5 ms checkpointing every 50 ms, 14.6 ms every 100 ms, 25 ms every 500 ms and
    /// 43 ms every 5 s.
    pub checkpoint_interval: Option<Duration>,
    /// Let a commit checkpoint the WAL itself once it holds this many pages (default 10,000
    /// ≈ 40 MB; SQLite's own default is 1,000). With background checkpoints this is only a
    /// backstop for a WAL that outgrows them. Commits are exactly as durable either way.
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
    /// For hosts' own tables ([`SqliteStore::pool`]); the store writes through `writes`.
    writer: SqlitePool,
    reader: SqlitePool,
    known_orgs: RwLock<HashSet<String>>,
    /// Every write of the store, run by the task that owns the write connection.
    writes: GroupCommit<SqliteWrite>,
    /// That connection, closed with the store.
    write_connection: Arc<WriteConnection>,
    /// The background checkpointer, stopped with the store.
    checkpoints: Option<BackgroundTask>,
}

/// A spawned task that ends when its owner is dropped.
#[derive(Debug)]
struct BackgroundTask(tokio::task::JoinHandle<()>);

impl Drop for BackgroundTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Copies committed WAL frames into the database file every `every`, until the store closes.
/// Passive: it never blocks a writer, and a checkpoint that cannot finish (a reader still
/// needs old frames) simply continues next time.
async fn checkpoint_regularly(connection: SqlitePool, every: Duration) {
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        match sqlx::query("PRAGMA wal_checkpoint(PASSIVE)").execute(&connection).await {
            Err(sqlx::Error::PoolClosed) => break,
            // Best effort: SQLite's automatic checkpoint remains the backstop.
            _ => continue,
        }
    }
}

impl SqliteStore {
    /// Opens (creating if missing) the database at `url` (`sqlite://PATH`, `sqlite:PATH` or
    /// `sqlite::memory:`) and applies the embedded migrations.
    pub async fn open(url: &str, options: SqliteOptions) -> StoreResult<SqliteStore> {
        let in_memory = url.contains(":memory:") || url.contains("mode=memory");
        let connect = SqliteConnectOptions::from_str(url)
            .map_err(|e| StoreError::InvalidInput(format!("sqlite url: {e}")))?
            .create_if_missing(true)
            .journal_mode(if in_memory { SqliteJournalMode::Memory } else { SqliteJournalMode::Wal })
            .synchronous(if options.synchronous_full { SqliteSynchronous::Full } else { SqliteSynchronous::Normal })
            .busy_timeout(options.busy_timeout)
            .foreign_keys(true)
            .pragma("wal_autocheckpoint", options.wal_autocheckpoint_pages.max(1).to_string())
            // A WAL that grew under a burst is cut back once checkpointed (64 MiB).
            .pragma("journal_size_limit", (64 * 1024 * 1024).to_string())
            // Temporary files in memory. Each multi-row statement of the writer, and each
            // unit of work run in its savepoint, keeps a sub-journal (the pages it changes, to
            // undo it alone), which SQLite spills to a temporary file past 64 KiB: under load,
            // files created, written page by page and deleted many times a second (see
            // BENCHMARKS.md, session 15). A sub-journal lives only as long as its statement
            // or savepoint.
            .pragma("temp_store", "MEMORY");
        // A local file's connection does not go away: skip sqlx's ping on every acquire (one
        // more hop to the connection's worker thread per call).
        let writer = SqlitePoolOptions::new()
            .test_before_acquire(false)
            .max_connections(1)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_with(connect.clone())
            .await?;
        let checkpoints = match options.checkpoint_interval {
            Some(every) if !in_memory => {
                let connection = SqlitePoolOptions::new()
                    .test_before_acquire(false)
                    .max_connections(1)
                    .connect_with(connect.clone())
                    .await?;
                Some(BackgroundTask(tokio::spawn(checkpoint_regularly(connection, every))))
            }
            _ => None,
        };
        let reader = if in_memory {
            // Every connection to `:memory:` is its own database: share the writer.
            writer.clone()
        } else {
            SqlitePoolOptions::new()
                .test_before_acquire(false)
                .max_connections(options.read_connections.max(1))
                .connect_with(connect.read_only(true))
                .await?
        };
        migrate(&writer).await?;
        // The writer task's own connection, out of the pool for good: no pool round trips
        // per batch, and the pool stays free for hosts' own tables.
        let write_connection = Arc::new(writer::write_connection(writer.acquire().await?.detach()).await?);
        let connection = write_connection.clone();
        let writes = GroupCommit::start(1, MAX_BATCH_COST, move |batch| {
            let connection = connection.clone();
            async move { writer::run(&connection, batch).await }
        });
        Ok(SqliteStore { writer, reader, known_orgs: RwLock::default(), writes, write_connection, checkpoints })
    }
}

async fn migrate(writer: &SqlitePool) -> StoreResult<()> {
    {
        let mut tx = writer.begin_with("BEGIN IMMEDIATE").await?;
        sqlx::raw_sql(
            "CREATE TABLE IF NOT EXISTS flowcore_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at INTEGER NOT NULL)",
        )
        .execute(&mut *tx)
        .await?;
        for (version, name, sql) in MIGRATIONS {
            let done: Option<i64> = sqlx::query_scalar("SELECT version FROM flowcore_migrations WHERE version = ?1")
                .bind(version)
                .fetch_optional(&mut *tx)
                .await?;
            if done.is_some() {
                continue;
            }
            sqlx::raw_sql(sql).execute(&mut *tx).await.map_err(|e| StoreError::Migration(format!("{name}: {e}")))?;
            sqlx::query("INSERT INTO flowcore_migrations (version, name, applied_at) VALUES (?1, ?2, 0)")
                .bind(version)
                .bind(name)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }
}

impl SqliteStore {
    /// A pool of one write connection, for hosts that add their own tables. The store's own
    /// writes use another connection: writes through this pool take turns with them through
    /// SQLite's lock (waiting up to the busy timeout).
    pub fn pool(&self) -> &SqlitePool {
        &self.writer
    }

    async fn check_org(&self, org_id: &str) -> StoreResult<()> {
        if self.writer.is_closed() {
            return Err(StoreError::Closed);
        }
        if self.known_orgs.read().unwrap_or_else(|p| p.into_inner()).contains(org_id) {
            return Ok(());
        }
        let found: Option<String> = sqlx::query_scalar("SELECT id FROM organizations WHERE id = ?1")
            .bind(org_id)
            .fetch_optional(&self.reader)
            .await?;
        if found.is_none() {
            return Err(StoreError::UnknownOrganization(org_id.to_owned()));
        }
        self.known_orgs.write().unwrap_or_else(|p| p.into_inner()).insert(org_id.to_owned());
        Ok(())
    }

    /// Runs `job` on the write connection, alone between batches (rare writes).
    async fn alone<T, F>(&self, job: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: for<'c> FnOnce(&'c mut SqliteConnection) -> BoxFuture<'c, StoreResult<T>> + Send + 'static,
    {
        self.writes.submit(|reply| SqliteWrite::Alone(writer::job(job, reply))).await
    }

    /// Runs `work` in a `BEGIN IMMEDIATE` transaction of its own on the write connection.
    async fn in_transaction<T, F>(&self, work: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: for<'t, 'c> FnOnce(&'t mut Tx<'c>) -> BoxFuture<'t, StoreResult<T>> + Send + 'static,
    {
        self.alone(move |connection| {
            Box::pin(async move {
                let mut tx = connection.begin_with("BEGIN IMMEDIATE").await?;
                let result = work(&mut tx).await?;
                tx.commit().await?;
                Ok(result)
            })
        })
        .await
    }
}

type Tx<'c> = Transaction<'c, Sqlite>;

/// A conversation's active sessions (organization, business number and contact as
/// parameters 1 to 3), in no particular order: see `newest_first`.
fn conversation_sessions_sql(cols: &str) -> String {
    format!(
        "SELECT {cols} FROM sessions
         WHERE org_id = ?1 AND business_number_id = ?2 AND contact_id = ?3 AND status = 'active'"
    )
}

crate::sql_rows::row_decoders!(SqliteRow);

/// The version of the active session for `key`, if any: what a refused compare-and-set found.
async fn active_version(tx: &mut Tx<'_>, k: &SessionKey) -> StoreResult<Option<i64>> {
    Ok(sqlx::query_scalar("SELECT version FROM sessions WHERE org_id = ?1 AND business_number_id = ?2 AND contact_id = ?3 AND flow_id = ?4 AND status = 'active'")
        .bind(&k.org_id)
        .bind(&k.business_number_id)
        .bind(&k.contact_id)
        .bind(&k.flow_id)
        .fetch_optional(&mut **tx)
        .await?)
}

async fn save_session_tx(tx: &mut Tx<'_>, write: &SessionWrite) -> StoreResult<SavedSession> {
    let state_text = state::encode(&write.session);
    let (current_node, wake_at) = state::meta(&write.session);
    let now = write.now.as_unix_millis();
    let closed_at = (write.status == SessionStatus::Closed).then_some(now);
    let k = &write.key;
    // The fifth parameter: the new session's flow version, or the version being replaced.
    let (sql, fifth) = if write.expected_version == 0 {
        (
            "INSERT INTO sessions (org_id, business_number_id, contact_id, flow_id, flow_version, version, status, state_schema, state, current_node, wake_at, created_at, updated_at, closed_at, cohort)
             VALUES (?1, ?2, ?3, ?4, ?5, 1, ?6, ?7, ?8, ?9, ?10, ?11, ?11, ?12, ?13)
             ON CONFLICT (org_id, business_number_id, contact_id, flow_id) WHERE status = 'active' DO NOTHING
             RETURNING id, version",
            write.flow_version,
        )
    } else {
        (
            "UPDATE sessions SET version = version + 1, status = ?6, state_schema = ?7, state = ?8, current_node = ?9, wake_at = ?10, updated_at = ?11, closed_at = ?12, flow_version = ?13
             WHERE org_id = ?1 AND business_number_id = ?2 AND contact_id = ?3 AND flow_id = ?4 AND status = 'active' AND version = ?5
             RETURNING id, version",
            write.expected_version,
        )
    };
    let query = sqlx::query(sql)
        .bind(&k.org_id)
        .bind(&k.business_number_id)
        .bind(&k.contact_id)
        .bind(&k.flow_id)
        .bind(fifth)
        .bind(write.status.as_str())
        .bind(state::STATE_SCHEMA_VERSION)
        .bind(&state_text)
        .bind(current_node)
        .bind(wake_at.map(Timestamp::as_unix_millis))
        .bind(now)
        .bind(closed_at);
    // A new session records its cohort (kept for good); an update, the flow version it
    // now runs on.
    let query =
        if write.expected_version == 0 { query.bind(write.cohort.as_deref()) } else { query.bind(write.flow_version) };
    let row = query.fetch_optional(&mut **tx).await?;
    match row {
        Some(row) => Ok(SavedSession { id: row.try_get(0)?, version: row.try_get(1)? }),
        None => {
            let found = active_version(tx, k).await?;
            Err(StoreError::Conflict { key: k.to_string(), expected: write.expected_version, found })
        }
    }
}

async fn append_log_tx(tx: &mut Tx<'_>, org_id: &str, entries: &[NewLogEntry]) -> StoreResult<Vec<i64>> {
    let mut ids = Vec::with_capacity(entries.len());
    for e in entries {
        let (text, json) = e.content.to_columns();
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO message_log (org_id, business_number_id, contact_id, flow_id, direction, content_text, content_json, node_id, wamid, at, metadata)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11) RETURNING id",
        )
        .bind(org_id)
        .bind(&e.conversation.business_number_id)
        .bind(&e.conversation.contact_id)
        .bind(&e.flow_id)
        .bind(e.direction.as_str())
        .bind(text)
        .bind(json)
        .bind(&e.node_id)
        .bind(&e.wamid)
        .bind(e.at.as_unix_millis())
        .bind(e.metadata.to_string())
        .fetch_one(&mut **tx)
        .await?;
        ids.push(id);
    }
    Ok(ids)
}

async fn enqueue_tx(tx: &mut Tx<'_>, org_id: &str, messages: &[NewOutboxMessage]) -> StoreResult<Vec<i64>> {
    let mut ids = Vec::with_capacity(messages.len());
    for m in messages {
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO outbox (org_id, business_number_id, contact_id, payload, inbox_id, due_at, status)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'pending') RETURNING id",
        )
        .bind(org_id)
        .bind(&m.conversation.business_number_id)
        .bind(&m.conversation.contact_id)
        .bind(m.payload.to_string())
        .bind(m.inbox_id)
        .bind(m.due_at.as_unix_millis())
        .fetch_one(&mut **tx)
        .await?;
        ids.push(id);
    }
    Ok(ids)
}

/// A query's bound arguments, to run with a text built after the binds.
fn take_arguments<'q>(
    mut query: sqlx::query::Query<'q, Sqlite, sqlx::sqlite::SqliteArguments<'q>>,
) -> StoreResult<sqlx::sqlite::SqliteArguments<'q>> {
    Ok(sqlx::Execute::take_arguments(&mut query).map_err(|e| StoreError::Database(e.to_string()))?.unwrap_or_default())
}

/// Binds a new inbox row's values in the column order `org_id, business_number_id,
/// contact_id, message_id, kind, payload, received_at, due_at` (one row of a multi-row insert).
fn bind_inbox_event<'q>(
    query: sqlx::query::Query<'q, Sqlite, sqlx::sqlite::SqliteArguments<'q>>,
    e: &NewInboxEvent,
) -> sqlx::query::Query<'q, Sqlite, sqlx::sqlite::SqliteArguments<'q>> {
    let c = &e.conversation;
    query
        .bind(c.org_id.clone())
        .bind(c.business_number_id.clone())
        .bind(c.contact_id.clone())
        .bind(e.message_id.clone())
        .bind(e.kind.as_str())
        .bind(e.payload.to_string())
        .bind(e.received_at.as_unix_millis())
        .bind(e.due_at.as_unix_millis())
}

async fn insert_inbox_tx(tx: &mut Tx<'_>, e: &NewInboxEvent) -> StoreResult<InboxInsert> {
    let c = &e.conversation;
    let id: Option<i64> = sqlx::query_scalar(
        "INSERT INTO inbox (org_id, business_number_id, contact_id, message_id, kind, payload, received_at, due_at, status)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, 'pending')
         ON CONFLICT (org_id, message_id) DO NOTHING RETURNING id",
    )
    .bind(&c.org_id)
    .bind(&c.business_number_id)
    .bind(&c.contact_id)
    .bind(&e.message_id)
    .bind(e.kind.as_str())
    .bind(e.payload.to_string())
    .bind(e.received_at.as_unix_millis())
    .bind(e.due_at.as_unix_millis())
    .fetch_optional(&mut **tx)
    .await?;
    if let Some(id) = id {
        return Ok(InboxInsert::Inserted(id));
    }
    let existing: i64 = sqlx::query_scalar("SELECT id FROM inbox WHERE org_id = ?1 AND message_id = ?2")
        .bind(&c.org_id)
        .bind(&e.message_id)
        .fetch_one(&mut **tx)
        .await?;
    Ok(InboxInsert::Duplicate(existing))
}

/// Applies `change` to a claimed row if the claim still holds; otherwise tells why not.
async fn finish_claim_tx(tx: &mut Tx<'_>, org_id: &str, claim: Claim, change: &ClaimChange) -> StoreResult<()> {
    let (table, set, at, text) = match change {
        ClaimChange::InboxDone { now } => ("inbox", INBOX_DONE, now, None),
        ClaimChange::InboxRetry { at, error } => {
            ("inbox", "status = 'pending', lease_until = NULL, retry_at = ?4, last_error = ?5", at, Some(error))
        }
        ClaimChange::InboxFailed { now, error } => {
            ("inbox", "status = 'failed', finished_at = ?4, lease_until = NULL, last_error = ?5", now, Some(error))
        }
        ClaimChange::OutboxSent { wamid, now } => ("outbox", OUTBOX_SENT, now, Some(wamid)),
        ClaimChange::OutboxRetry { at, error } => {
            ("outbox", "status = 'pending', lease_until = NULL, retry_at = ?4, last_error = ?5", at, Some(error))
        }
        ClaimChange::OutboxFailed { now, error } => {
            ("outbox", "status = 'failed', finished_at = ?4, lease_until = NULL, last_error = ?5", now, Some(error))
        }
    };
    let sql =
        format!("UPDATE {table} SET {set} WHERE org_id = ?1 AND id = ?2 AND status = 'claimed' AND attempts = ?3");
    let mut query = sqlx::query(&sql).bind(org_id).bind(claim.id).bind(claim.attempt).bind(at.as_unix_millis());
    // Only the changes that record a text (an error, a wamid) have a fifth parameter.
    if let Some(text) = text {
        query = query.bind(text);
    }
    let done = query.execute(&mut **tx).await?;
    if done.rows_affected() == 1 {
        return Ok(());
    }
    let what = change.what();
    let exists: Option<i64> = sqlx::query_scalar(&format!("SELECT id FROM {table} WHERE org_id = ?1 AND id = ?2"))
        .bind(org_id)
        .bind(claim.id)
        .fetch_optional(&mut **tx)
        .await?;
    Err(match exists {
        None => StoreError::NotFound { what, id: claim.id.to_string() },
        Some(_) => StoreError::LeaseLost { what, id: claim.id, attempt: claim.attempt },
    })
}

const INBOX_DONE: &str = "status = 'done', lease_until = NULL, finished_at = ?4";
const OUTBOX_SENT: &str = "status = 'done', lease_until = NULL, finished_at = ?4, sent_at = ?4, wamid = ?5,
     delivery = CASE WHEN delivery_rank < 1 THEN 'sent' ELSE delivery END,
     delivery_at = CASE WHEN delivery_rank < 1 THEN ?4 ELSE delivery_at END,
     delivery_rank = MAX(delivery_rank, 1)";

/// Claims walk the heads (see the schema's header) in `(due_at, id)` order and take those
/// whose turn it is: due, not waiting for a retry, not out under a live lease, the first
/// unfinished row of their conversation (a head can be stale) and no other row of their
/// conversation out under a live lease. Each check is one probe of the conversation index
/// (named: SQLite's planner, without statistics, would otherwise walk the organization's
/// rows), so a claim costs about the number of waiting conversations it passes, not the
/// backlog.
fn claim_sql(table: &str, cols: &str) -> String {
    // An inbox head waits while a reply of its conversation is out with a sender (see
    // `Inbox::claim_inbox`).
    let held_back = if table == "inbox" {
        "AND NOT EXISTS (
               SELECT 1 FROM outbox o INDEXED BY outbox_open_conversation
               WHERE o.org_id = i.org_id AND o.business_number_id = i.business_number_id AND o.contact_id = i.contact_id
                 AND o.status IN ('pending', 'claimed') AND o.status = 'claimed' AND o.lease_until >= ?1)"
    } else {
        ""
    };
    format!(
        "UPDATE {table} SET status = 'claimed', attempts = attempts + 1, lease_until = ?4
         WHERE id IN (
           SELECT i.id FROM {table} i INDEXED BY {table}_heads
           WHERE i.head = 1 AND i.status IN ('pending', 'claimed') AND i.due_at <= ?1 AND (?2 IS NULL OR i.org_id = ?2)
             AND ((i.status = 'pending' AND (i.retry_at IS NULL OR i.retry_at <= ?1))
                  OR (i.status = 'claimed' AND i.lease_until < ?1))
             AND i.id = (
               SELECT j.id FROM {table} j INDEXED BY {table}_open_conversation
               WHERE j.org_id = i.org_id AND j.business_number_id = i.business_number_id AND j.contact_id = i.contact_id
                 AND j.status IN ('pending', 'claimed')
               ORDER BY j.due_at, j.id LIMIT 1)
             AND NOT EXISTS (
               SELECT 1 FROM {table} j INDEXED BY {table}_open_conversation
               WHERE j.org_id = i.org_id AND j.business_number_id = i.business_number_id AND j.contact_id = i.contact_id
                 AND j.status IN ('pending', 'claimed') AND j.status = 'claimed' AND j.lease_until >= ?1 AND j.id <> i.id)
             {held_back}
           ORDER BY i.due_at, i.id
           LIMIT ?3)
         RETURNING {cols}"
    )
}

/// The unit of work's writes as one multi-statement query (one hop to sqlx's worker thread
/// instead of one per statement): the session save, the inbox row done, the log rows and the
/// replies (claimed for the caller when they can be, see `replies`), each statement tagging
/// the rows it returns. Runs inside the caller's `BEGIN IMMEDIATE` transaction; when the
/// session or the claim did not match, the caller's transaction is dropped (rolled back) with
/// the error, so nothing of the unit lands.
async fn commit_batch_tx(tx: &mut Tx<'_>, commit: &Commit, prefix: &str) -> StoreResult<CommitOutcome> {
    // Plain `?` parameters only: sqlx hands each statement of a multi-statement query the
    // next arguments in order (numbered `?N` would be bound wrongly past the first statement).
    let org_id = commit.org_id.as_str();
    let mut sql = String::with_capacity(1024);
    sql.push_str(prefix);
    let mut q = sqlx::query::<Sqlite>("");
    if let Some(w) = &commit.session {
        let (current_node, wake_at) = state::meta(&w.session);
        let now = w.now.as_unix_millis();
        let closed_at = (w.status == SessionStatus::Closed).then_some(now);
        let k = &w.key;
        let state_text = state::encode(&w.session);
        let wake_at = wake_at.map(Timestamp::as_unix_millis);
        if w.expected_version == 0 {
            sql.push_str(
                "INSERT INTO sessions (org_id, business_number_id, contact_id, flow_id, flow_version, version, status, state_schema, state, current_node, wake_at, created_at, updated_at, closed_at, cohort)
                 VALUES (?, ?, ?, ?, ?, 1, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                 ON CONFLICT (org_id, business_number_id, contact_id, flow_id) WHERE status = 'active' DO NOTHING
                 RETURNING 's', id, version;",
            );
            q = q
                .bind(&k.org_id)
                .bind(&k.business_number_id)
                .bind(&k.contact_id)
                .bind(&k.flow_id)
                .bind(w.flow_version)
                .bind(w.status.as_str())
                .bind(state::STATE_SCHEMA_VERSION)
                .bind(state_text)
                .bind(current_node)
                .bind(wake_at)
                .bind(now)
                .bind(now)
                .bind(closed_at)
                .bind(w.cohort.clone());
        } else {
            sql.push_str(
                "UPDATE sessions SET version = version + 1, status = ?, state_schema = ?, state = ?, current_node = ?, wake_at = ?, updated_at = ?, closed_at = ?, flow_version = ?
                 WHERE org_id = ? AND business_number_id = ? AND contact_id = ? AND flow_id = ? AND status = 'active' AND version = ?
                 RETURNING 's', id, version;",
            );
            q = q
                .bind(w.status.as_str())
                .bind(state::STATE_SCHEMA_VERSION)
                .bind(state_text)
                .bind(current_node)
                .bind(wake_at)
                .bind(now)
                .bind(closed_at)
                .bind(w.flow_version)
                .bind(&k.org_id)
                .bind(&k.business_number_id)
                .bind(&k.contact_id)
                .bind(&k.flow_id)
                .bind(w.expected_version);
        }
    }
    if let Some(claim) = commit.inbox_done {
        sql.push_str(
            "UPDATE inbox SET status = 'done', lease_until = NULL, finished_at = ?
             WHERE org_id = ? AND id = ? AND status = 'claimed' AND attempts = ? RETURNING 'i', id, 0;",
        );
        q = q.bind(commit.now.as_unix_millis()).bind(org_id).bind(claim.id).bind(claim.attempt);
    }
    if !commit.log.is_empty() {
        sql.push_str(
            "INSERT INTO message_log (org_id, business_number_id, contact_id, flow_id, direction, content_text, content_json, node_id, wamid, at, metadata) VALUES ",
        );
        for (i, e) in commit.log.iter().enumerate() {
            let (text, json) = e.content.to_columns();
            sql.push_str(if i == 0 {
                "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
            } else {
                ", (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
            });
            q = q
                .bind(org_id)
                .bind(&e.conversation.business_number_id)
                .bind(&e.conversation.contact_id)
                .bind(&e.flow_id)
                .bind(e.direction.as_str())
                .bind(text)
                .bind(json)
                .bind(&e.node_id)
                .bind(&e.wamid)
                .bind(e.at.as_unix_millis())
                .bind(e.metadata.to_string());
        }
        sql.push_str(" RETURNING 'l', id, 0;");
    }
    if !commit.outbox.is_empty() {
        let reply_claims = ReplyClaims::of(std::slice::from_ref(&commit));
        sql.push_str(replies::INSERT_HEAD);
        for (n, m) in commit.outbox.iter().enumerate() {
            if n > 0 {
                sql.push_str(", ");
            }
            sql.push_str(replies::REPLY_VALUES);
            q = replies::bind_reply(q, n, org_id, m, reply_claims.lease(commit, m));
        }
        sql.push_str(replies::INSERT_TAIL);
        sql.push_str(" RETURNING 'o', id, status = 'claimed';");
    }
    let mut outcome = CommitOutcome::default();
    // The text was built after the binds; a query's text is fixed at creation, so rebuild it
    // around the same arguments.
    let args = take_arguments(q)?;
    let rows = sqlx::query_with::<Sqlite, _>(&sql, args).fetch_all(&mut **tx).await?;
    let mut done = false;
    let mut claimed = HashSet::new();
    for row in &rows {
        let id: i64 = row.try_get(1)?;
        match row.try_get::<&str, _>(0)? {
            "s" => outcome.session = Some(SavedSession { id, version: row.try_get(2)? }),
            "i" => done = true,
            "l" => outcome.log_ids.push(id),
            _ => {
                outcome.outbox_ids.push(id);
                if row.try_get::<bool, _>(2)? {
                    claimed.insert(id);
                }
            }
        }
    }
    if let Some(w) = &commit.session {
        if outcome.session.is_none() {
            let k = &w.key;
            let found = active_version(tx, k).await?;
            return Err(StoreError::Conflict { key: k.to_string(), expected: w.expected_version, found });
        }
    }
    if let (Some(claim), false) = (commit.inbox_done, done) {
        let exists: Option<i64> = sqlx::query_scalar("SELECT id FROM inbox WHERE org_id = ?1 AND id = ?2")
            .bind(org_id)
            .bind(claim.id)
            .fetch_optional(&mut **tx)
            .await?;
        return Err(match exists {
            None => StoreError::NotFound { what: "inbox event", id: claim.id.to_string() },
            Some(_) => StoreError::LeaseLost { what: "inbox event", id: claim.id, attempt: claim.attempt },
        });
    }
    // RETURNING order is unspecified; ids grow in insertion order within one statement.
    outcome.log_ids.sort_unstable();
    outcome.outbox_ids.sort_unstable();
    outcome.claimed_replies = replies::claimed_replies(commit, &outcome.outbox_ids, |_, id| claimed.contains(&id));
    Ok(outcome)
}

/// The unit of work with scheduled wake-ups (rare: a `delay` or an idle timeout), statement by
/// statement after `prefix` (the savepoint the writer runs it in).
async fn commit_scheduled_tx(tx: &mut Tx<'_>, commit: &Commit, prefix: &str) -> StoreResult<CommitOutcome> {
    sqlx::query(prefix).execute(&mut **tx).await?;
    let mut outcome = CommitOutcome::default();
    if let Some(w) = &commit.session {
        outcome.session = Some(save_session_tx(tx, w).await?);
    }
    if let Some(claim) = commit.inbox_done {
        finish_claim_tx(tx, &commit.org_id, claim, &ClaimChange::InboxDone { now: commit.now }).await?;
    }
    outcome.log_ids = append_log_tx(tx, &commit.org_id, &commit.log).await?;
    outcome.outbox_ids = enqueue_tx(tx, &commit.org_id, &commit.outbox).await?;
    for event in &commit.schedule {
        outcome.scheduled.push(insert_inbox_tx(tx, event).await?);
    }
    Ok(outcome)
}

impl SqliteStore {
    async fn claim<T>(
        &self,
        table: &str,
        cols: &str,
        request: &ClaimRequest,
        map: fn(&SqliteRow) -> StoreResult<T>,
    ) -> StoreResult<Vec<(i64, i64, T)>> {
        if let Some(org) = &request.org_id {
            self.check_org(org).await?;
        }
        // In the writer's next batch: it reads the rows it updates at their latest, after the
        // batch's own inserts and finished rows.
        let sql = claim_sql(table, cols);
        let request = request.clone();
        let rows = self.writes.submit(|reply| SqliteWrite::Claim { sql, request, reply }).await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in &rows {
            out.push((row.try_get("due_at")?, row.try_get("id")?, map(row)?));
        }
        out.sort_by_key(|(due, id, _)| (*due, *id));
        Ok(out)
    }

    async fn reclaim(&self, table: &str, org_id: Option<&str>, now: Timestamp) -> StoreResult<u64> {
        if let Some(org) = org_id {
            self.check_org(org).await?;
        }
        let sql = format!(
            "UPDATE {table} SET status = 'pending', lease_until = NULL WHERE status = 'claimed' AND lease_until < ?1 AND (?2 IS NULL OR org_id = ?2)"
        );
        let org_id = org_id.map(str::to_owned);
        self.alone(move |connection| {
            Box::pin(async move {
                let r = sqlx::query(&sql).bind(now.as_unix_millis()).bind(org_id).execute(connection).await?;
                Ok(r.rows_affected())
            })
        })
        .await
    }

    async fn finish(&self, org_id: &str, claim: Claim, change: ClaimChange) -> StoreResult<()> {
        self.check_org(org_id).await?;
        let org_id = org_id.to_owned();
        self.writes.submit(|reply| SqliteWrite::Shared(Write::Finish { org_id, claim, change, reply })).await
    }
}

#[async_trait]
impl Organizations for SqliteStore {
    async fn register_organization(&self, org_id: &str) -> StoreResult<()> {
        let id = org_id.to_owned();
        self.alone(move |connection| {
            Box::pin(async move {
                sqlx::query("INSERT INTO organizations (id, created_at) VALUES (?1, 0) ON CONFLICT (id) DO NOTHING")
                    .bind(id)
                    .execute(connection)
                    .await?;
                Ok(())
            })
        })
        .await?;
        self.known_orgs.write().unwrap_or_else(|p| p.into_inner()).insert(org_id.to_owned());
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
    async fn load_session(&self, key: &SessionKey) -> StoreResult<Option<StoredSession>> {
        self.check_org(&key.org_id).await?;
        let row = sqlx::query(&format!(
            "SELECT {SESSION_INFO_COLS}, state_schema, state FROM sessions
             WHERE org_id = ?1 AND business_number_id = ?2 AND contact_id = ?3 AND flow_id = ?4 AND status = 'active'"
        ))
        .bind(&key.org_id)
        .bind(&key.business_number_id)
        .bind(&key.contact_id)
        .bind(&key.flow_id)
        .fetch_optional(&self.reader)
        .await?;
        row.as_ref().map(stored_session).transpose()
    }

    async fn active_session(&self, c: &ConversationKey) -> StoreResult<Option<StoredSession>> {
        self.check_org(&c.org_id).await?;
        let rows = sqlx::query(&conversation_sessions_sql(&format!("{SESSION_INFO_COLS}, state_schema, state")))
            .bind(&c.org_id)
            .bind(&c.business_number_id)
            .bind(&c.contact_id)
            .fetch_all(&self.reader)
            .await?;
        newest_stored_session(&rows)
    }

    /// One read (per thousand conversations) for the whole batch.
    async fn active_sessions(&self, conversations: &[ConversationKey]) -> StoreResult<Vec<Option<StoredSession>>> {
        let distinct = distinct_conversations(conversations);
        for c in &distinct {
            self.check_org(&c.org_id).await?;
        }
        let mut found = HashMap::with_capacity(distinct.len());
        for chunk in distinct.chunks(CONVERSATIONS_PER_READ) {
            let mut sql = format!(
                "SELECT v.column1 AS asked, {}, s.state_schema, s.state FROM (VALUES ",
                session_info_cols_of_s()
            );
            let mut query = sqlx::query::<Sqlite>("");
            for (i, c) in chunk.iter().enumerate() {
                sql.push_str(if i == 0 { "(?, ?, ?, ?)" } else { ", (?, ?, ?, ?)" });
                query = query.bind(i as i64).bind(&c.org_id).bind(&c.business_number_id).bind(&c.contact_id);
            }
            // Named, as in the claims: each conversation is one probe of its own key.
            sql.push_str(
                ") AS v JOIN sessions s INDEXED BY sessions_active_key
                 ON s.org_id = v.column2 AND s.business_number_id = v.column3 AND s.contact_id = v.column4
                 WHERE s.status = 'active'",
            );
            let rows = sqlx::query_with::<Sqlite, _>(&sql, take_arguments(query)?).fetch_all(&self.reader).await?;
            newest_of_each(chunk, rows, &mut found)?;
        }
        Ok(conversations.iter().map(|c| found.get(c).cloned()).collect())
    }

    async fn conversation_sessions(&self, c: &ConversationKey) -> StoreResult<Vec<SessionInfo>> {
        self.check_org(&c.org_id).await?;
        let rows = sqlx::query(&conversation_sessions_sql(SESSION_INFO_COLS))
            .bind(&c.org_id)
            .bind(&c.business_number_id)
            .bind(&c.contact_id)
            .fetch_all(&self.reader)
            .await?;
        let mut sessions = rows.iter().map(session_info).collect::<StoreResult<Vec<_>>>()?;
        newest_first(&mut sessions);
        Ok(sessions)
    }

    async fn save_session(&self, write: SessionWrite) -> StoreResult<SavedSession> {
        self.check_org(&write.key.org_id).await?;
        self.in_transaction(move |tx| Box::pin(async move { save_session_tx(tx, &write).await })).await
    }

    async fn close_session(&self, key: &SessionKey, now: Timestamp) -> StoreResult<bool> {
        self.check_org(&key.org_id).await?;
        let key = key.clone();
        self.alone(move |connection| {
            Box::pin(async move {
                let r = sqlx::query(
                    "UPDATE sessions SET status = 'closed', version = version + 1, updated_at = ?5, closed_at = ?5
                     WHERE org_id = ?1 AND business_number_id = ?2 AND contact_id = ?3 AND flow_id = ?4 AND status = 'active'",
                )
                .bind(&key.org_id)
                .bind(&key.business_number_id)
                .bind(&key.contact_id)
                .bind(&key.flow_id)
                .bind(now.as_unix_millis())
                .execute(connection)
                .await?;
                Ok(r.rows_affected() > 0)
            })
        })
        .await
    }

    async fn list_active_sessions(&self, org_id: &str, page: Page) -> StoreResult<Vec<SessionInfo>> {
        self.check_org(org_id).await?;
        let rows = sqlx::query(&format!(
            "SELECT {SESSION_INFO_COLS} FROM sessions WHERE org_id = ?1 AND status = 'active'
             ORDER BY updated_at DESC, id DESC LIMIT ?2 OFFSET ?3"
        ))
        .bind(org_id)
        .bind(page.limit_i64())
        .bind(page.offset_i64())
        .fetch_all(&self.reader)
        .await?;
        rows.iter().map(session_info).collect()
    }

    async fn purge(&self, org_id: &str, now: Timestamp, policy: PurgePolicy) -> StoreResult<PurgeReport> {
        self.check_org(org_id).await?;
        let now = now.as_unix_millis();
        let expired_before = now.saturating_sub(duration_ms(policy.session_ttl));
        let retained_after = now.saturating_sub(duration_ms(policy.retention));
        let org_id = org_id.to_owned();
        self.in_transaction(move |tx| {
            Box::pin(async move {
                let org_id = org_id.as_str();
                let expired =
                    sqlx::query("DELETE FROM sessions WHERE org_id = ?1 AND status = 'active' AND updated_at < ?2")
                        .bind(org_id)
                        .bind(expired_before)
                        .execute(&mut **tx)
                        .await?
                        .rows_affected();
                let closed =
                    sqlx::query("DELETE FROM sessions WHERE org_id = ?1 AND status = 'closed' AND closed_at < ?2")
                        .bind(org_id)
                        .bind(retained_after)
                        .execute(&mut **tx)
                        .await?
                        .rows_affected();
                let inbox = sqlx::query(
                    "DELETE FROM inbox WHERE org_id = ?1 AND status IN ('done', 'failed') AND finished_at < ?2",
                )
                .bind(org_id)
                .bind(retained_after)
                .execute(&mut **tx)
                .await?
                .rows_affected();
                let outbox = sqlx::query(
                    "DELETE FROM outbox WHERE org_id = ?1 AND status IN ('done', 'failed') AND finished_at < ?2",
                )
                .bind(org_id)
                .bind(retained_after)
                .execute(&mut **tx)
                .await?
                .rows_affected();
                Ok(PurgeReport {
                    expired_sessions: expired,
                    closed_sessions: closed,
                    inbox_rows: inbox,
                    outbox_rows: outbox,
                })
            })
        })
        .await
    }
}

#[async_trait]
impl MessageLog for SqliteStore {
    async fn append_log(&self, org_id: &str, entries: &[NewLogEntry]) -> StoreResult<Vec<i64>> {
        self.check_org(org_id).await?;
        for e in entries {
            same_org(org_id, &e.conversation)?;
        }
        let (org_id, entries) = (org_id.to_owned(), entries.to_vec());
        self.in_transaction(move |tx| Box::pin(async move { append_log_tx(tx, &org_id, &entries).await })).await
    }

    async fn history(&self, c: &ConversationKey, page: Page) -> StoreResult<Vec<LogEntry>> {
        self.check_org(&c.org_id).await?;
        let rows = sqlx::query(
            "SELECT id, org_id, business_number_id, contact_id, flow_id, direction, content_text, content_json, node_id, wamid, at, metadata
             FROM message_log WHERE org_id = ?1 AND business_number_id = ?2 AND contact_id = ?3
             ORDER BY id LIMIT ?4 OFFSET ?5",
        )
        .bind(&c.org_id)
        .bind(&c.business_number_id)
        .bind(&c.contact_id)
        .bind(page.limit_i64())
        .bind(page.offset_i64())
        .fetch_all(&self.reader)
        .await?;
        rows.iter().map(log_entry).collect()
    }

    async fn inbound_counts(&self, windows: &[(ConversationKey, Timestamp)], at_most: u64) -> StoreResult<Vec<u64>> {
        for org_id in windows.iter().map(|(c, _)| &c.org_id).collect::<HashSet<_>>() {
            self.check_org(org_id).await?;
        }
        let mut counts = Vec::with_capacity(windows.len());
        for chunk in windows.chunks(CONVERSATIONS_PER_READ) {
            let mut sql = format!(
                "SELECT (SELECT count(*) FROM (SELECT 1 FROM message_log m INDEXED BY message_log_inbound
                 WHERE m.org_id = v.column1 AND m.business_number_id = v.column2 AND m.contact_id = v.column3
                   AND m.direction = 'in' AND m.at > v.column4
                   AND json_extract(m.metadata, '$.{RATE_LIMITED}') IS NOT 1 LIMIT ?))
                 FROM (VALUES "
            );
            let mut query = sqlx::query::<Sqlite>("").bind(i64::try_from(at_most).unwrap_or(i64::MAX));
            for (i, (c, since)) in chunk.iter().enumerate() {
                sql.push_str(if i == 0 { "(?, ?, ?, ?, ?)" } else { ", (?, ?, ?, ?, ?)" });
                query = query
                    .bind(&c.org_id)
                    .bind(&c.business_number_id)
                    .bind(&c.contact_id)
                    .bind(since.as_unix_millis())
                    .bind(i as i64);
            }
            sql.push_str(") AS v ORDER BY v.column5");
            let rows = sqlx::query_with::<Sqlite, _>(&sql, take_arguments(query)?).fetch_all(&self.reader).await?;
            for row in rows {
                counts.push(row.try_get::<i64, _>(0)?.max(0) as u64);
            }
        }
        Ok(counts)
    }

    async fn list_conversations(&self, org_id: &str, page: Page) -> StoreResult<Vec<ConversationSummary>> {
        self.check_org(org_id).await?;
        let rows = sqlx::query(
            "SELECT org_id, business_number_id, contact_id, COUNT(*) AS n, MIN(at) AS first_at, MAX(at) AS last_at
             FROM message_log WHERE org_id = ?1
             GROUP BY org_id, business_number_id, contact_id
             ORDER BY last_at DESC, business_number_id, contact_id LIMIT ?2 OFFSET ?3",
        )
        .bind(org_id)
        .bind(page.limit_i64())
        .bind(page.offset_i64())
        .fetch_all(&self.reader)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(ConversationSummary {
                    conversation: conversation_of(row)?,
                    message_count: row.try_get::<i64, _>("n")?.max(0) as u64,
                    first_message_at: ts(row.try_get("first_at")?),
                    last_message_at: ts(row.try_get("last_at")?),
                })
            })
            .collect()
    }

    async fn metrics(&self, org_id: &str, query: MetricsQuery) -> StoreResult<Metrics> {
        self.check_org(org_id).await?;
        let (from, to) = query.bounds();
        let sessions = sqlx::query(
            "SELECT flow_id, cohort, (created_at - (((created_at % ?4) + ?4) % ?4)) / ?4 AS day, status, COUNT(*) AS n
             FROM sessions
             WHERE org_id = ?1 AND created_at >= ?2 AND created_at < ?3 GROUP BY flow_id, cohort, day, status",
        )
        .bind(org_id)
        .bind(from)
        .bind(to)
        .bind(DAY_MS)
        .fetch_all(&self.reader)
        .await?;
        let messages = sqlx::query(
            "SELECT flow_id, (at - (((at % ?4) + ?4) % ?4)) / ?4 AS day, direction, COUNT(*) AS n FROM message_log
             WHERE org_id = ?1 AND at >= ?2 AND at < ?3 GROUP BY flow_id, day, direction",
        )
        .bind(org_id)
        .bind(from)
        .bind(to)
        .bind(DAY_MS)
        .fetch_all(&self.reader)
        .await?;
        tally_metrics(&sessions, &messages)
    }
}

#[async_trait]
impl Inbox for SqliteStore {
    async fn insert_inbox(&self, event: NewInboxEvent) -> StoreResult<InboxInsert> {
        self.check_org(&event.conversation.org_id).await?;
        self.writes.submit(|reply| SqliteWrite::Shared(Write::InsertInbox { event, reply })).await
    }

    async fn claim_inbox(&self, request: &ClaimRequest) -> StoreResult<Vec<InboxEvent>> {
        let rows = self.claim("inbox", INBOX_COLS, request, inbox_event).await?;
        Ok(rows.into_iter().map(|(_, _, e)| e).collect())
    }

    async fn complete_inbox(&self, org_id: &str, claim: Claim, now: Timestamp) -> StoreResult<()> {
        self.finish(org_id, claim, ClaimChange::InboxDone { now }).await
    }

    async fn fail_inbox(
        &self,
        org_id: &str,
        claim: Claim,
        error: &str,
        retry_at: Option<Timestamp>,
        now: Timestamp,
    ) -> StoreResult<()> {
        let error = error.to_owned();
        let change = match retry_at {
            Some(at) => ClaimChange::InboxRetry { at, error },
            None => ClaimChange::InboxFailed { now, error },
        };
        self.finish(org_id, claim, change).await
    }

    async fn reclaim_inbox(&self, org_id: Option<&str>, now: Timestamp) -> StoreResult<u64> {
        self.reclaim("inbox", org_id, now).await
    }

    async fn get_inbox(&self, org_id: &str, id: i64) -> StoreResult<Option<InboxEvent>> {
        self.check_org(org_id).await?;
        let row = sqlx::query(&format!("SELECT {INBOX_COLS} FROM inbox WHERE org_id = ?1 AND id = ?2"))
            .bind(org_id)
            .bind(id)
            .fetch_optional(&self.reader)
            .await?;
        row.as_ref().map(inbox_event).transpose()
    }
}

#[async_trait]
impl Outbox for SqliteStore {
    async fn enqueue_outbox(&self, org_id: &str, messages: &[NewOutboxMessage]) -> StoreResult<Vec<i64>> {
        self.check_org(org_id).await?;
        for m in messages {
            same_org(org_id, &m.conversation)?;
        }
        let (org_id, messages) = (org_id.to_owned(), messages.to_vec());
        self.in_transaction(move |tx| Box::pin(async move { enqueue_tx(tx, &org_id, &messages).await })).await
    }

    async fn claim_outbox(&self, request: &ClaimRequest) -> StoreResult<Vec<OutboxMessage>> {
        let rows = self.claim("outbox", OUTBOX_COLS, request, outbox_message).await?;
        Ok(rows.into_iter().map(|(_, _, m)| m).collect())
    }

    async fn mark_sent(&self, org_id: &str, claim: Claim, wamid: &str, now: Timestamp) -> StoreResult<()> {
        self.finish(org_id, claim, ClaimChange::OutboxSent { wamid: wamid.to_owned(), now }).await
    }

    async fn reschedule_outbox(&self, org_id: &str, claim: Claim, retry_at: Timestamp, error: &str) -> StoreResult<()> {
        self.finish(org_id, claim, ClaimChange::OutboxRetry { at: retry_at, error: error.to_owned() }).await
    }

    async fn fail_outbox(&self, org_id: &str, claim: Claim, error: &str, now: Timestamp) -> StoreResult<()> {
        self.finish(org_id, claim, ClaimChange::OutboxFailed { now, error: error.to_owned() }).await
    }

    async fn reclaim_outbox(&self, org_id: Option<&str>, now: Timestamp) -> StoreResult<u64> {
        self.reclaim("outbox", org_id, now).await
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
        self.in_transaction(move |tx| {
            Box::pin(async move {
                let found: Option<i64> =
                    sqlx::query_scalar("SELECT id FROM outbox WHERE org_id = ?1 AND wamid = ?2 LIMIT 1")
                        .bind(&org_id)
                        .bind(&wamid)
                        .fetch_optional(&mut **tx)
                        .await?;
                if found.is_none() {
                    return Ok(false);
                }
                sqlx::query(
                    "UPDATE outbox SET delivery = ?3, delivery_rank = ?4, delivery_at = ?5
                     WHERE org_id = ?1 AND wamid = ?2 AND delivery_rank < ?4",
                )
                .bind(&org_id)
                .bind(&wamid)
                .bind(status.as_str())
                .bind(status.rank())
                .bind(at.as_unix_millis())
                .execute(&mut **tx)
                .await?;
                Ok(true)
            })
        })
        .await
    }

    async fn get_outbox(&self, org_id: &str, id: i64) -> StoreResult<Option<OutboxMessage>> {
        self.check_org(org_id).await?;
        let row = sqlx::query(&format!("SELECT {OUTBOX_COLS} FROM outbox WHERE org_id = ?1 AND id = ?2"))
            .bind(org_id)
            .bind(id)
            .fetch_optional(&self.reader)
            .await?;
        row.as_ref().map(outbox_message).transpose()
    }
}

fn stored_flow(row: &SqliteRow) -> StoreResult<StoredFlow> {
    Ok(StoredFlow {
        org_id: row.try_get("org_id")?,
        flow_id: row.try_get("flow_id")?,
        version: row.try_get("version")?,
        definition: row.try_get("definition")?,
        published_at: ts(row.try_get("published_at")?),
    })
}

#[async_trait]
impl FlowStore for SqliteStore {
    async fn publish_flow(&self, org_id: &str, flow_id: &str, definition: &str, now: Timestamp) -> StoreResult<i64> {
        self.check_org(org_id).await?;
        let (org_id, flow_id, definition) = (org_id.to_owned(), flow_id.to_owned(), definition.to_owned());
        self.alone(move |connection| {
            Box::pin(async move {
                Ok(sqlx::query_scalar(
                    "INSERT INTO flows (org_id, flow_id, version, definition, published_at)
                     VALUES (?1, ?2, (SELECT COALESCE(MAX(version), 0) + 1 FROM flows WHERE org_id = ?1 AND flow_id = ?2), ?3, ?4)
                     RETURNING version",
                )
                .bind(org_id)
                .bind(flow_id)
                .bind(definition)
                .bind(now.as_unix_millis())
                .fetch_one(connection)
                .await?)
            })
        })
        .await
    }

    async fn get_flow(&self, org_id: &str, flow_id: &str, version: Option<i64>) -> StoreResult<Option<StoredFlow>> {
        self.check_org(org_id).await?;
        let row = sqlx::query(
            "SELECT org_id, flow_id, version, definition, published_at FROM flows
             WHERE org_id = ?1 AND flow_id = ?2 AND (?3 IS NULL OR version = ?3)
             ORDER BY version DESC LIMIT 1",
        )
        .bind(org_id)
        .bind(flow_id)
        .bind(version)
        .fetch_optional(&self.reader)
        .await?;
        row.as_ref().map(stored_flow).transpose()
    }

    async fn list_flows(&self, org_id: &str) -> StoreResult<Vec<StoredFlow>> {
        self.check_org(org_id).await?;
        let rows = sqlx::query(
            "SELECT f.org_id, f.flow_id, f.version, f.definition, f.published_at FROM flows f
             WHERE f.org_id = ?1 AND f.version = (SELECT MAX(g.version) FROM flows g WHERE g.org_id = f.org_id AND g.flow_id = f.flow_id)
             ORDER BY f.flow_id",
        )
        .bind(org_id)
        .fetch_all(&self.reader)
        .await?;
        rows.iter().map(stored_flow).collect()
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn commit(&self, commit: Commit) -> StoreResult<CommitOutcome> {
        let org_id = commit.org_id.as_str();
        self.check_org(org_id).await?;
        if let Some(w) = &commit.session {
            if w.key.org_id != org_id {
                return Err(StoreError::InvalidInput(format!(
                    "session of organization {:?} in a commit of {:?}",
                    w.key.org_id, org_id
                )));
            }
        }
        for c in commit
            .log
            .iter()
            .map(|e| &e.conversation)
            .chain(commit.outbox.iter().map(|m| &m.conversation))
            .chain(commit.schedule.iter().map(|s| &s.conversation))
        {
            same_org(org_id, c)?;
        }
        self.writes.submit(|reply| SqliteWrite::Shared(Write::Commit { commit: Box::new(commit), reply })).await
    }

    async fn ping(&self) -> StoreResult<()> {
        sqlx::query("SELECT 1").execute(&self.reader).await?;
        Ok(())
    }

    async fn close(&self) {
        if let Some(checkpoints) = &self.checkpoints {
            checkpoints.0.abort();
        }
        self.writer.close().await;
        // Waits for the batch in progress; later writes find the connection gone.
        let connection = self.write_connection.lock().await.take();
        if let Some(connection) = connection {
            let _ = connection.close().await;
        }
        self.reader.close().await;
    }

    fn backend(&self) -> &'static str {
        "sqlite"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_conversations_sessions_are_found_through_its_own_key() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("plans.db").display());
        let store = SqliteStore::open(&url, SqliteOptions::default()).await.unwrap();
        store.register_organization("o").await.unwrap();
        // Many active sessions in one organization: walking them all for each turn is what
        // this guards against.
        sqlx::raw_sql(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 500)
             INSERT INTO sessions (org_id, business_number_id, contact_id, flow_id, flow_version, version, status,
                                   state_schema, state, created_at, updated_at)
             SELECT 'o', 'b', 'c' || i, 'f', 1, 1, 'active', 1, '{}', i, i FROM n",
        )
        .execute(store.pool())
        .await
        .unwrap();
        let explain = format!("EXPLAIN QUERY PLAN {}", conversation_sessions_sql(SESSION_INFO_COLS));
        let rows = sqlx::query(&explain).bind("o").bind("b").bind("c7").fetch_all(store.pool()).await.unwrap();
        let plan: Vec<String> = rows.iter().map(|r| r.get::<String, _>("detail")).collect();
        assert_eq!(
            plan,
            ["SEARCH sessions USING INDEX sessions_active_key (org_id=? AND business_number_id=? AND contact_id=?)"]
        );
        store.close().await;
    }

    #[tokio::test]
    async fn temporary_data_stays_in_memory() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("temp.db").display());
        let store = SqliteStore::open(&url, SqliteOptions::default()).await.unwrap();
        // 2 is MEMORY (0 would leave it to the build's default: files).
        for pool in [&store.writer, &store.reader] {
            let temp_store: i64 = sqlx::query_scalar("PRAGMA temp_store").fetch_one(pool).await.unwrap();
            assert_eq!(temp_store, 2);
        }
        let mut write_connection = store.write_connection.lock().await;
        let connection = write_connection.as_mut().expect("the store is open");
        let temp_store: i64 = sqlx::query_scalar("PRAGMA temp_store").fetch_one(&mut *connection).await.unwrap();
        assert_eq!(temp_store, 2);
        drop(write_connection);
        store.close().await;
    }
    #[tokio::test]
    async fn commits_are_flushed_to_disk_unless_asked_otherwise() {
        let dir = tempfile::tempdir().unwrap();
        for (options, expected) in [
            (SqliteOptions::default(), 2_i64),
            (SqliteOptions { synchronous_full: false, ..SqliteOptions::default() }, 1),
        ] {
            let url = format!("sqlite://{}", dir.path().join(format!("sync{expected}.db")).display());
            let store = SqliteStore::open(&url, options).await.unwrap();
            // 2 is FULL, 1 is NORMAL. The writer's own connection is the one that commits.
            let mut write_connection = store.write_connection.lock().await;
            let connection = write_connection.as_mut().expect("the store is open");
            let synchronous: i64 = sqlx::query_scalar("PRAGMA synchronous").fetch_one(&mut *connection).await.unwrap();
            assert_eq!(synchronous, expected);
            drop(write_connection);
            store.close().await;
        }
    }
}
