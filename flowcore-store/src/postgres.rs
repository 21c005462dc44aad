//! The PostgreSQL backend: several processes share one database; claims on the inbox and
//! outbox use `FOR UPDATE SKIP LOCKED`, so no row is handed to two workers, and a
//! conversation's rows go to one worker at a time, in order.
//!
//! The schema (`migrations/postgres/0001_schema.sql`: the tables and the functions the hot
//! paths call) is embedded and applied on open under an advisory lock (several instances may
//! start at once). [`PostgresOptions::schema`] puts every table in one schema (tests use a
//! fresh schema per run).

use std::collections::{HashMap, HashSet};
use std::str::FromStr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use flowcore::Timestamp;
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPoolOptions, PgRow};
use sqlx::{Connection, PgPool, Postgres, Row, Transaction};

use crate::error::{StoreError, StoreResult};
use crate::group_commit::{ClaimChange, GroupCommit, Write};
use crate::sql_rows::{
    distinct_conversations, json_col, newest_first, same_org, session_info_cols_of_s, ts, INBOX_COLS, OUTBOX_COLS,
    SESSION_INFO_COLS,
};
use crate::state;
use crate::traits::*;
use crate::types::*;

mod grouped_units;
mod warm;
mod write_rows;

use grouped_units::{CallFailed, UnitsWritten};
use warm::WarmConnections;
use write_rows::{write_rows, Rows, RowsWritten};

/// The schema's versions, applied in order, each once (recorded in `flowcore_migrations`).
/// A later change to the schema is a new version here, with its own file.
const MIGRATIONS: &[(i64, &str, &str)] = &[(1, "schema", include_str!("../migrations/postgres/0001_schema.sql"))];

/// Connections idle this long are pinged before use.
const IDLE_PING_AFTER: Duration = Duration::from_secs(1);

/// Settings for [`PostgresStore::open`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct PostgresOptions {
    /// Pool size (default 10).
    pub max_connections: u32,
    /// How long to wait for a free connection (default 10 s).
    pub acquire_timeout: Duration,
    /// Put the tables in this schema (set as `search_path` on every connection; created if
    /// missing). `None` uses the connection's default (`public`).
    pub schema: Option<String>,
    /// `synchronous_commit = off` on the store's connections: commits return before their
    /// WAL is flushed, so many more per second on a slow disk, but a PostgreSQL crash can
    /// lose the last fraction of a second of commits (never corrupt them). Default false:
    /// an accepted webhook is durable before the server answers `200 OK`.
    pub asynchronous_commit: bool,
}

impl Default for PostgresOptions {
    fn default() -> Self {
        PostgresOptions {
            max_connections: 10,
            acquire_timeout: Duration::from_secs(10),
            schema: None,
            asynchronous_commit: false,
        }
    }
}

impl PostgresOptions {
    /// The same options with tables in `schema`.
    pub fn with_schema(mut self, schema: impl Into<String>) -> Self {
        self.schema = Some(schema.into());
        self
    }

    /// The same options with a different acquire timeout (also bounds how long `open` tries
    /// to connect).
    pub fn with_acquire_timeout(mut self, timeout: Duration) -> Self {
        self.acquire_timeout = timeout;
        self
    }

    /// The same options with [`asynchronous_commit`](PostgresOptions::asynchronous_commit) set.
    pub fn with_asynchronous_commit(mut self, on: bool) -> Self {
        self.asynchronous_commit = on;
        self
    }

    /// The same options with a pool of `n` connections.
    pub fn with_max_connections(mut self, n: u32) -> Self {
        self.max_connections = n.max(1);
        self
    }
}

/// The PostgreSQL store.
///
/// ```no_run
/// # tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap().block_on(async {
/// use flowcore_store::{Organizations, PostgresOptions, PostgresStore};
/// let store = PostgresStore::open("postgres://postgres@127.0.0.1:5432/test", PostgresOptions::default()).await?;
/// store.register_organization("acme").await?;
/// # Ok::<(), flowcore_store::StoreError>(())
/// # }).unwrap();
/// ```
#[derive(Debug)]
pub struct PostgresStore {
    writer: PgPool,
    reader: PgPool,
    known_orgs: RwLock<HashSet<String>>,
    /// Inbox inserts, commits and changes to claimed rows, several per transaction.
    writes: GroupCommit<Write>,
    /// The connections the write lanes keep, given back on close.
    lanes: Arc<LaneConnections>,
    /// Inbox inserts, several per call: apart from the other writes, so that a webhook's
    /// `200` never waits behind units of work (and their conversation locks).
    inserts: GroupCommit<Write>,
    /// The connections the insert lanes keep, given back on close.
    insert_lanes: Arc<LaneConnections>,
    /// Connections kept for inserts, claims and session reads, given back on close.
    warm: WarmConnections,
}

impl PostgresStore {
    /// Connects to `url` (`postgres://…`) and applies the embedded migrations.
    pub async fn open(url: &str, options: PostgresOptions) -> StoreResult<PostgresStore> {
        let mut connect =
            PgConnectOptions::from_str(url).map_err(|e| StoreError::InvalidInput(format!("postgres url: {e}")))?;
        if let Some(schema) = &options.schema {
            if schema.is_empty() || !schema.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(StoreError::InvalidInput(format!("schema name {schema:?}: use letters, digits and _")));
            }
            connect = connect.options([("search_path", schema.as_str())]);
        }
        if options.asynchronous_commit {
            connect = connect.options([("synchronous_commit", "off")]);
        }
        // The store's statements look rows up by key: a plan made once per connection serves
        // every call. By default PostgreSQL planned the batch session read afresh for most
        // calls (its arrays made each custom plan look cheaper than the generic one).
        connect = connect.options([("plan_cache_mode", "force_generic_plan")]);
        let pool = PgPoolOptions::new()
            .max_connections(options.max_connections.max(1))
            .acquire_timeout(options.acquire_timeout)
            // sqlx pings every connection it hands out by default: one more round trip per
            // call. Ping only connections that sat idle for a while (a restarted server or a
            // dropped link is still noticed before use).
            .test_before_acquire(false)
            .before_acquire(|conn, meta| {
                Box::pin(async move {
                    if meta.idle_for >= IDLE_PING_AFTER {
                        sqlx::Connection::ping(conn).await?;
                    }
                    Ok(true)
                })
            })
            .connect_with(connect)
            .await?;
        if let Some(schema) = &options.schema {
            sqlx::raw_sql(&format!("CREATE SCHEMA IF NOT EXISTS {schema}")).execute(&pool).await?;
        }
        let (writes, lanes) = write_lanes(&pool, WRITE_LANES, MAX_WRITES_PER_TRANSACTION);
        let (inserts, insert_lanes) = write_lanes(&pool, INSERT_LANES, MAX_WRITES_PER_TRANSACTION);
        // The rest of the pool, but for two connections left to everything else.
        let keep = (options.max_connections as usize).saturating_sub(WRITE_LANES + INSERT_LANES + 2).max(1);
        let warm = WarmConnections::new(pool.clone(), keep, IDLE_PING_AFTER);
        let store = PostgresStore {
            writer: pool.clone(),
            reader: pool,
            known_orgs: RwLock::default(),
            writes,
            lanes,
            inserts,
            insert_lanes,
            warm,
        };
        store.migrate().await?;
        Ok(store)
    }

    async fn migrate(&self) -> StoreResult<()> {
        let mut tx = self.writer.begin().await?;
        // Serialize concurrent openers (several server instances starting at once).
        sqlx::query("SELECT pg_advisory_xact_lock(7307357105)").execute(&mut *tx).await?;
        sqlx::raw_sql(
            "CREATE TABLE IF NOT EXISTS flowcore_migrations (version BIGINT PRIMARY KEY, name TEXT NOT NULL, applied_at BIGINT NOT NULL)",
        )
        .execute(&mut *tx)
        .await?;
        for (version, name, sql) in MIGRATIONS {
            let done: Option<i64> = sqlx::query_scalar("SELECT version FROM flowcore_migrations WHERE version = $1")
                .bind(version)
                .fetch_optional(&mut *tx)
                .await?;
            if done.is_some() {
                continue;
            }
            sqlx::raw_sql(sql).execute(&mut *tx).await.map_err(|e| StoreError::Migration(format!("{name}: {e}")))?;
            sqlx::query("INSERT INTO flowcore_migrations (version, name, applied_at) VALUES ($1, $2, 0)")
                .bind(version)
                .bind(name)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// The connection pool, for hosts that add their own tables.
    pub fn pool(&self) -> &PgPool {
        &self.writer
    }

    async fn check_org(&self, org_id: &str) -> StoreResult<()> {
        if self.writer.is_closed() {
            return Err(StoreError::Closed);
        }
        if self.known_orgs.read().unwrap_or_else(|p| p.into_inner()).contains(org_id) {
            return Ok(());
        }
        let found: Option<String> = sqlx::query_scalar("SELECT id FROM organizations WHERE id = $1")
            .bind(org_id)
            .fetch_optional(&self.reader)
            .await?;
        if found.is_none() {
            return Err(StoreError::UnknownOrganization(org_id.to_owned()));
        }
        self.known_orgs.write().unwrap_or_else(|p| p.into_inner()).insert(org_id.to_owned());
        Ok(())
    }

    async fn begin(&self) -> StoreResult<Transaction<'static, Postgres>> {
        Ok(self.writer.begin().await?)
    }
}

type Tx<'c> = Transaction<'c, Postgres>;

/// A conversation's active sessions (organization, business number and contact as
/// parameters 1 to 3), in no particular order: see `newest_first`.
fn conversation_sessions_sql(cols: &str) -> String {
    format!(
        "SELECT {cols} FROM sessions
         WHERE org_id = $1 AND business_number_id = $2 AND contact_id = $3 AND status = 'active'"
    )
}

/// Many conversations' active sessions (parameters: the position each conversation was
/// asked at, then organizations, business numbers and contacts, as arrays), in no order.
/// A nested loop of probes of `sessions_active_key`, whatever the statistics say: the
/// arrays are joined laterally, and `OFFSET 0` keeps the planner from flattening the
/// subquery (without statistics it then read every active session of the table once and
/// filtered them).
fn active_sessions_sql() -> String {
    let cols = session_info_cols_of_s();
    format!(
        "SELECT v.asked, {cols}, s.state_schema, s.state
         FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[]) AS v(asked, org_id, business_number_id, contact_id)
         CROSS JOIN LATERAL (
           SELECT * FROM sessions
           WHERE org_id = v.org_id AND business_number_id = v.business_number_id AND contact_id = v.contact_id
             AND status = 'active'
           OFFSET 0
         ) AS s"
    )
}

crate::sql_rows::row_decoders!(PgRow);

/// The version of the active session for `key`, if any: what a refused compare-and-set found.
async fn active_version(tx: &mut Tx<'_>, k: &SessionKey) -> StoreResult<Option<i64>> {
    Ok(sqlx::query_scalar("SELECT version FROM sessions WHERE org_id = $1 AND business_number_id = $2 AND contact_id = $3 AND flow_id = $4 AND status = 'active'")
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
             VALUES ($1, $2, $3, $4, $5, 1, $6, $7, $8, $9, $10, $11, $11, $12, $13)
             ON CONFLICT (org_id, business_number_id, contact_id, flow_id) WHERE status = 'active' DO NOTHING
             RETURNING id, version",
            write.flow_version,
        )
    } else {
        (
            "UPDATE sessions SET version = version + 1, status = $6, state_schema = $7, state = $8, current_node = $9, wake_at = $10, updated_at = $11, closed_at = $12, flow_version = $13
             WHERE org_id = $1 AND business_number_id = $2 AND contact_id = $3 AND flow_id = $4 AND status = 'active' AND version = $5
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
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) RETURNING id",
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

/// SQL: does the conversation already hold an unfinished row that comes before a row being
/// inserted (given as SQL expressions)? Every stored row has a smaller id than the new one,
/// so it comes first when its due time is not later.
fn earlier_unfinished(table: &str, org: &str, number: &str, contact: &str, due: &str) -> String {
    format!(
        "EXISTS (SELECT 1 FROM {table} e WHERE e.org_id = {org} AND e.business_number_id = {number} AND e.contact_id = {contact}
                   AND e.status IN ('pending', 'claimed') AND e.due_at <= {due})"
    )
}

async fn enqueue_tx(tx: &mut Tx<'_>, org_id: &str, messages: &[NewOutboxMessage]) -> StoreResult<Vec<i64>> {
    let sql = format!(
        "INSERT INTO outbox (org_id, business_number_id, contact_id, payload, inbox_id, due_at, status, head)
         VALUES ($1, $2, $3, $4, $5, $6, 'pending', NOT {}) RETURNING id",
        earlier_unfinished("outbox", "$1", "$2", "$3", "$6")
    );
    let mut ids = Vec::with_capacity(messages.len());
    // One row per statement: each sees the ones before it (same transaction) when it
    // decides whether it is its conversation's first.
    for m in messages {
        let id: i64 = sqlx::query_scalar(&sql)
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

/// Inserts `e` unless its message id is in the inbox already: one call of
/// `flowcore_insert_inbox_row` (its definition in the schema tells how it finds the row's
/// head), its own transaction when `connection` is not in one.
async fn insert_inbox_row(connection: &mut PgConnection, e: &NewInboxEvent) -> StoreResult<InboxInsert> {
    let c = &e.conversation;
    let (id, inserted): (i64, bool) =
        sqlx::query_as("SELECT id, inserted FROM flowcore_insert_inbox_row($1, $2, $3, $4, $5, $6, $7, $8)")
            .bind(&c.org_id)
            .bind(&c.business_number_id)
            .bind(&c.contact_id)
            .bind(&e.message_id)
            .bind(e.kind.as_str())
            .bind(e.payload.to_string())
            .bind(e.received_at.as_unix_millis())
            .bind(e.due_at.as_unix_millis())
            .fetch_one(connection)
            .await?;
    Ok(if inserted { InboxInsert::Inserted(id) } else { InboxInsert::Duplicate(id) })
}

/// Why a claim did not hold: the row is gone, or it was claimed again (or finished) since.
async fn claim_refused<T>(
    connection: &mut PgConnection,
    table: &str,
    what: &'static str,
    org_id: &str,
    claim: Claim,
) -> StoreResult<T> {
    let exists: Option<i64> = sqlx::query_scalar(&format!("SELECT id FROM {table} WHERE org_id = $1 AND id = $2"))
        .bind(org_id)
        .bind(claim.id)
        .fetch_optional(connection)
        .await?;
    Err(match exists {
        None => StoreError::NotFound { what, id: claim.id.to_string() },
        Some(_) => StoreError::LeaseLost { what, id: claim.id, attempt: claim.attempt },
    })
}

/// First key of the two-key advisory lock space (ASCII "flow"), apart from the migration
/// lock and other applications' one-key locks. `flowcore_lock_conversations` takes a
/// transaction's conversation locks in it.
const LOCK_SPACE: i32 = 0x666c_6f77;

/// The conversations whose unfinished rows a transaction adds or removes, locked before it
/// reads any of them.
///
/// `head` must mark every conversation's first unfinished row. An insert computes it for
/// the new row, a finish hands it to the next row; two of them racing on one conversation
/// could each miss the other's uncommitted row (the insert sees the old first row still
/// open, the finish does not see the insert) and leave the conversation without a head,
/// never claimed again. Under the lock, READ COMMITTED's next statement sees everything
/// the previous holder committed. Claims, retries and reclaims leave the set of unfinished
/// rows as it is and take no lock; inbox inserts lean on a row lock instead (see
/// `flowcore_insert_inbox_row`).
#[derive(Default)]
struct ConversationLocks<'a> {
    inbox_rows: Vec<i64>,
    outbox_rows: Vec<i64>,
    orgs: Vec<&'a str>,
    numbers: Vec<&'a str>,
    contacts: Vec<&'a str>,
}

impl<'a> ConversationLocks<'a> {
    fn conversation(&mut self, org_id: &'a str, business_number_id: &'a str, contact_id: &'a str) {
        self.orgs.push(org_id);
        self.numbers.push(business_number_id);
        self.contacts.push(contact_id);
    }

    fn commit(&mut self, commit: &'a Commit) {
        if let Some(claim) = commit.inbox_done {
            self.inbox_rows.push(claim.id);
        }
        self.commit_conversations(commit);
    }

    /// The conversations of a unit of work, but for its handled inbox row's.
    fn commit_conversations(&mut self, commit: &'a Commit) {
        if let Some(w) = &commit.session {
            // Not for `head`: batches touching one session then never wait on each other's
            // row locks in a cycle.
            self.conversation(&w.key.org_id, &w.key.business_number_id, &w.key.contact_id);
        }
        for c in commit.outbox.iter().map(|m| &m.conversation).chain(commit.schedule.iter().map(|e| &e.conversation)) {
            self.conversation(&c.org_id, &c.business_number_id, &c.contact_id);
        }
    }

    fn write(&mut self, write: &'a Write) {
        match write {
            // An insert leans on a row lock instead (see `flowcore_insert_inbox_row`).
            Write::InsertInbox { .. } => {}
            Write::Commit { commit, .. } => self.commit(commit),
            Write::Finish { claim, change, .. } => {
                if change.leaves_queue() {
                    if change.is_outbox() {
                        self.outbox_rows.push(claim.id);
                    } else {
                        self.inbox_rows.push(claim.id);
                    }
                }
            }
        }
    }

    async fn take(&self, tx: &mut Tx<'_>) -> StoreResult<()> {
        if self.inbox_rows.is_empty() && self.outbox_rows.is_empty() && self.orgs.is_empty() {
            return Ok(());
        }
        sqlx::query("SELECT flowcore_lock_conversations($1, $2, $3, $4, $5, $6)")
            .bind(LOCK_SPACE)
            .bind(&self.inbox_rows)
            .bind(&self.outbox_rows)
            .bind(&self.orgs)
            .bind(&self.numbers)
            .bind(&self.contacts)
            .execute(&mut **tx)
            .await?;
        Ok(())
    }
}

impl PostgresStore {
    async fn claim<T>(
        &self,
        table: &str,
        cols: &str,
        request: &ClaimRequest,
        map: fn(&PgRow) -> StoreResult<T>,
    ) -> StoreResult<Vec<(i64, i64, T)>> {
        if let Some(org) = &request.org_id {
            self.check_org(org).await?;
        }
        // One call of `flowcore_claim_{table}`: its own transaction, one round trip.
        let mut connection = self.warm.get().await?;
        let rows = sqlx::query(&format!("SELECT {cols} FROM flowcore_claim_{table}($1, $2, $3, $4)"))
            .bind(request.now.as_unix_millis())
            .bind(request.org_id.as_deref())
            .bind(i64::from(request.limit.min(Page::MAX_LIMIT)))
            .bind(request.lease_until().as_unix_millis())
            .fetch_all(&mut *connection)
            .await;
        let rows = connection.keep_if_ok(rows.map_err(StoreError::from))?;
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
            "UPDATE {table} SET status = 'pending', lease_until = NULL WHERE status = 'claimed' AND lease_until < $1 AND ($2::text IS NULL OR org_id = $2)"
        );
        let r = sqlx::query(&sql).bind(now.as_unix_millis()).bind(org_id).execute(&self.writer).await?;
        Ok(r.rows_affected())
    }

    /// Applies `change` to a claimed row, through the group commit.
    async fn finish(&self, org_id: &str, claim: Claim, change: ClaimChange) -> StoreResult<()> {
        self.check_org(org_id).await?;
        self.writes.submit(|reply| Write::Finish { org_id: org_id.to_owned(), claim, change, reply }).await
    }
}

/// [`Store::commit`] in `tx`: the unit of work in one call (see `grouped_units.rs`), then
/// its wake-ups; a refused check is diagnosed.
async fn commit_tx(tx: &mut Tx<'_>, commit: &Commit) -> StoreResult<CommitOutcome> {
    match grouped_units::commit_units(&mut **tx, &[commit]).await? {
        UnitsWritten::Written(outcomes) => {
            let mut outcome = outcomes
                .into_iter()
                .next()
                .ok_or_else(|| StoreError::Database("commit: a unit of work without an outcome".into()))?;
            outcome.scheduled = schedule_tx(tx, commit).await?;
            Ok(outcome)
        }
        UnitsWritten::Refused { claims_held } => commit_refused(tx, commit, claims_held).await,
    }
}

/// A batch's units of work: one call for all of them when every check holds (unless
/// `grouped_refused`: that call was refused already), else each on its own. `Err` only when
/// the transaction cannot go on; a refused unit's error is its own result.
async fn commit_batch_tx(
    tx: &mut Tx<'_>,
    commits: &[&Commit],
    grouped_refused: bool,
) -> StoreResult<Vec<StoreResult<CommitOutcome>>> {
    let mut results = Vec::with_capacity(commits.len());
    if !grouped_refused && commits.len() > 1 && grouped_units::can_share_a_statement(commits) {
        if let UnitsWritten::Written(outcomes) = grouped_units::commit_units(&mut **tx, commits).await? {
            for (commit, mut outcome) in commits.iter().zip(outcomes) {
                outcome.scheduled = schedule_tx(tx, commit).await?;
                results.push(Ok(outcome));
            }
            return Ok(results);
        }
    }
    for commit in commits {
        match commit_tx(tx, commit).await {
            Err(e) if !is_refusal(&e) => return Err(e),
            result => results.push(result),
        }
    }
    Ok(results)
}

/// A unit's wake-ups, once the rest of it is written.
async fn schedule_tx(tx: &mut Tx<'_>, commit: &Commit) -> StoreResult<Vec<InboxInsert>> {
    let mut scheduled = Vec::with_capacity(commit.schedule.len());
    for event in &commit.schedule {
        scheduled.push(insert_inbox_row(tx, event).await?);
    }
    Ok(scheduled)
}

/// Why a unit of work wrote nothing: a stale session version first (as the other backends
/// tell it), then the claim.
async fn commit_refused<T>(tx: &mut Tx<'_>, commit: &Commit, claims_held: bool) -> StoreResult<T> {
    if let Some(w) = &commit.session {
        let found = active_version(tx, &w.key).await?;
        if claims_held || found.unwrap_or(0) != w.expected_version {
            return Err(StoreError::Conflict { key: w.key.to_string(), expected: w.expected_version, found });
        }
    }
    let claim = commit.inbox_done.unwrap_or(Claim { id: 0, attempt: 0 });
    claim_refused(tx, "inbox", "inbox event", &commit.org_id, claim).await
}

/// A write refused on its own (stale version, lost lease, row gone): it wrote nothing and
/// left the transaction usable.
fn is_refusal(e: &StoreError) -> bool {
    matches!(e, StoreError::Conflict { .. } | StoreError::LeaseLost { .. } | StoreError::NotFound { .. })
}

/// Writes waiting for the same writer task share a transaction (see `group_commit.rs`): one
/// commit, one WAL flush for all of them. Counted in the group commit's cost (a unit of work
/// counts several writes): up to 32 units of work. Each call of the units' function, and of
/// the rows' one, costs PostgreSQL a fixed share (executor start-up of a large statement,
/// the function's entry, the locks' statement) whatever the batch holds, so the bound is set
/// by what is queued, not by a small cap: under the server load bench 64 (8 units) averaged
/// 6 units a call, and 256 took about a tenth off PostgreSQL's CPU per message. With 8
/// busy callers (the store bench) 64 and 256 measured alike.
const MAX_WRITES_PER_TRANSACTION: usize = 256;

/// Writer tasks for units of work and claim changes, each with its own connection while it
/// runs a batch. One: what queues while a batch runs goes into the next one, so PostgreSQL
/// sees fewer, larger commits. Every commit waits for a WAL flush, and flushes run one at
/// a time; a second lane added commits competing for them with the webhooks' inserts (which
/// have lanes of their own, [`INSERT_LANES`]), and more conversation locks held at once.
/// Under the server load bench one lane took the webhook ack p99 at 1,000 msg/s from
/// 10.7–11.7 ms to 6.8–8.0 ms, with throughput a little higher; the store bench with 8 busy
/// callers went from about 4,300 to 4,800 units/s.
const WRITE_LANES: usize = 1;

/// Lanes of their own for inbox inserts: concurrent webhooks' rows share a call and a
/// commit (a WAL flush) instead of paying one each.
const INSERT_LANES: usize = 2;

/// A group commit of `lanes` writer tasks over `pool`, each keeping its connection.
fn write_lanes(pool: &PgPool, lanes: usize, max_batch: usize) -> (GroupCommit<Write>, Arc<LaneConnections>) {
    let connections = Arc::new(LaneConnections::new(pool.clone(), lanes));
    let running = connections.clone();
    let commit = GroupCommit::start(lanes, max_batch, move |batch| {
        let connections = running.clone();
        async move { connections.run(batch).await }
    });
    (commit, connections)
}

/// What one write of a batch came to, sent to its caller once the batch committed.
enum Outcome {
    Inserted(StoreResult<InboxInsert>),
    Committed(StoreResult<CommitOutcome>),
    Finished(StoreResult<()>),
}

impl Outcome {
    /// The error that aborted the transaction, if this write's statement failed. A refused
    /// write (stale version, lost lease, row gone) wrote nothing and left the transaction
    /// usable: that is the write's own answer.
    fn failure(self) -> Result<Outcome, StoreError> {
        match self {
            Outcome::Inserted(Err(e)) if !is_refusal(&e) => Err(e),
            Outcome::Committed(Err(e)) if !is_refusal(&e) => Err(e),
            Outcome::Finished(Err(e)) if !is_refusal(&e) => Err(e),
            outcome => Ok(outcome),
        }
    }
}

/// Sends `outcome` to the caller waiting for `write` (one that stopped waiting has nobody
/// to tell).
fn answer(write: Write, outcome: Outcome) {
    match (write, outcome) {
        (Write::InsertInbox { reply, .. }, Outcome::Inserted(result)) => drop(reply.send(result)),
        (Write::Commit { reply, .. }, Outcome::Committed(result)) => drop(reply.send(result)),
        (Write::Finish { reply, .. }, Outcome::Finished(result)) => drop(reply.send(result)),
        (write, _) => answer_error(write, StoreError::Database("group commit: a result of the wrong kind".into())),
    }
}

fn answer_error(write: Write, error: StoreError) {
    match write {
        Write::InsertInbox { reply, .. } => drop(reply.send(Err(error))),
        Write::Commit { reply, .. } => drop(reply.send(Err(error))),
        Write::Finish { reply, .. } => drop(reply.send(Err(error))),
    }
}

/// Why a batch did not commit.
enum BatchFailed {
    /// A statement failed: the transaction was rolled back, nothing of it was written.
    BeforeCommit(StoreError),
    /// The commit itself failed: whether it landed is unknown.
    AtCommit(StoreError),
}

/// The connections of the write lanes, one per lane, each kept from batch to batch.
///
/// sqlx's pool tests a connection with a round trip to the server each time it is given
/// back; a lane that took one per batch paid that round trip (and the server's wake-up) for
/// every batch. A connection that saw an error goes back to the pool, which tests it, and
/// the lane takes a fresh one for its next batch.
#[derive(Debug)]
struct LaneConnections {
    pool: PgPool,
    slots: Vec<tokio::sync::Mutex<Option<PoolConnection<Postgres>>>>,
}

impl LaneConnections {
    fn new(pool: PgPool, lanes: usize) -> LaneConnections {
        LaneConnections { pool, slots: (0..lanes.max(1)).map(|_| tokio::sync::Mutex::new(None)).collect() }
    }

    /// Runs `batch` on a lane's connection (as many slots as lanes, so one is free).
    async fn run(&self, batch: Vec<Write>) {
        let mut slot = match self.slots.iter().find_map(|slot| slot.try_lock().ok()) {
            Some(slot) => slot,
            None => self.slots[0].lock().await,
        };
        let connection = match slot.as_mut() {
            Some(connection) => connection,
            None => match self.pool.acquire().await {
                Ok(connection) => slot.insert(connection),
                Err(e) => {
                    let e = StoreError::from(e);
                    batch.into_iter().for_each(|write| write.fail(&e));
                    return;
                }
            },
        };
        if let Health::Suspect = run_batch(connection, batch).await {
            *slot = None;
        }
    }

    /// Gives every kept connection back to the pool (after the batches in progress).
    async fn release(&self) {
        for slot in &self.slots {
            slot.lock().await.take();
        }
    }
}

/// Whether a lane's connection can run the next batch.
enum Health {
    Good,
    /// A statement or the commit failed: the pool tests the connection before anyone else
    /// uses it.
    Suspect,
}

/// The group commit's writer: runs `batch` in one transaction. If a statement fails,
/// nothing of the batch was written and each write runs again alone, so one write's
/// database error is its own and never fails or half-writes the others.
async fn run_batch(connection: &mut PgConnection, batch: Vec<Write>) -> Health {
    if batch.len() > 1 {
        match write_batch(connection, &batch).await {
            Ok(outcomes) => {
                batch.into_iter().zip(outcomes).for_each(|(write, outcome)| answer(write, outcome));
                return Health::Good;
            }
            Err(BatchFailed::BeforeCommit(_)) => {}
            Err(BatchFailed::AtCommit(error)) => {
                // Running them again could apply one twice; each gets the error it would
                // have got alone.
                batch.into_iter().for_each(|write| write.fail(&error));
                return Health::Suspect;
            }
        }
    }
    let mut health = Health::Good;
    for write in batch {
        match write_batch(connection, std::slice::from_ref(&write)).await.map(|mut outcomes| outcomes.pop()) {
            Ok(Some(outcome)) => answer(write, outcome),
            Ok(None) => answer_error(write, StoreError::Database("group commit: a write without a result".into())),
            Err(BatchFailed::BeforeCommit(error) | BatchFailed::AtCommit(error)) => {
                health = Health::Suspect;
                answer_error(write, error)
            }
        }
    }
    health
}

/// Runs `batch`: units of work without wake-ups in one call, which is its own transaction;
/// inserts and claim changes in one call too (see `write_rows.rs`), its own transaction when
/// there are no units of work; anything else in one transaction (the conversation locks and
/// the rows in one call, then the units of work together, the commit). The writes of a
/// batch come from different callers, so their order is free.
async fn write_batch(connection: &mut PgConnection, batch: &[Write]) -> Result<Vec<Outcome>, BatchFailed> {
    let grouped_refused = match units_alone(connection, batch).await? {
        UnitsAlone::Written(outcomes) => return Ok(outcomes),
        UnitsAlone::NotAlone => false,
        UnitsAlone::Refused => true,
    };
    let mut locks = ConversationLocks::default();
    batch.iter().for_each(|write| locks.write(write));
    let rows = Rows::of(batch);
    let commits: Vec<&Commit> = batch
        .iter()
        .filter_map(|write| match write {
            Write::Commit { commit, .. } => Some(&**commit),
            _ => None,
        })
        .collect();
    if commits.is_empty() {
        let written = write_rows(connection, &locks, &rows).await.map_err(|e| match e {
            CallFailed::NothingWritten(e) => BatchFailed::BeforeCommit(e),
            CallFailed::Unknown(e) => BatchFailed::AtCommit(e),
        })?;
        // Committed: a refused change is diagnosed afterwards, outside the transaction.
        return row_outcomes(connection, batch, written, Vec::new()).await.map_err(BatchFailed::AtCommit);
    }
    let before_commit = |e: StoreError| BatchFailed::BeforeCommit(e);
    let mut tx = connection.begin().await.map_err(|e| before_commit(e.into()))?;
    // Dropping `tx` on the way out rolls the batch back.
    let written = if rows.is_empty() {
        locks.take(&mut tx).await.map_err(before_commit)?;
        RowsWritten { inserts: Vec::new(), finished: Vec::new() }
    } else {
        write_rows(&mut tx, &locks, &rows).await.map_err(|e| before_commit(e.into()))?
    };
    let results = commit_batch_tx(&mut tx, &commits, grouped_refused).await.map_err(before_commit)?;
    let outcomes = row_outcomes(&mut tx, batch, written, results).await.map_err(before_commit)?;
    tx.commit().await.map_err(|e| BatchFailed::AtCommit(e.into()))?;
    Ok(outcomes)
}

/// Each write's outcome, in batch order, from what the calls wrote: a claim change that
/// did not hold is told why (a row gone or claimed again), read on `connection`.
async fn row_outcomes(
    connection: &mut PgConnection,
    batch: &[Write],
    written: RowsWritten,
    units: Vec<StoreResult<CommitOutcome>>,
) -> StoreResult<Vec<Outcome>> {
    let mut inserts = written.inserts.into_iter();
    let mut finished = written.finished.into_iter();
    let mut units = units.into_iter();
    let missing = || StoreError::Database("group commit: a write without a result".into());
    let mut outcomes = Vec::with_capacity(batch.len());
    for write in batch {
        let outcome = match write {
            Write::InsertInbox { .. } => Outcome::Inserted(Ok(inserts.next().ok_or_else(missing)?)),
            Write::Finish { org_id, claim, change, .. } => {
                if finished.next().ok_or_else(missing)? {
                    Outcome::Finished(Ok(()))
                } else {
                    let table = if change.is_outbox() { "outbox" } else { "inbox" };
                    Outcome::Finished(claim_refused(connection, table, change.what(), org_id, *claim).await)
                }
            }
            Write::Commit { .. } => Outcome::Committed(units.next().ok_or_else(missing)?),
        };
        outcomes.push(outcome.failure()?);
    }
    Ok(outcomes)
}

/// What came of a batch tried as units of work alone.
enum UnitsAlone {
    Written(Vec<Outcome>),
    /// Not only units of work without wake-ups, or not able to share a call.
    NotAlone,
    /// A unit's check failed: nothing was written, the transaction path tells which.
    Refused,
}

/// A batch of units of work without wake-ups, written by one call outside a transaction:
/// one round trip.
async fn units_alone(connection: &mut PgConnection, batch: &[Write]) -> Result<UnitsAlone, BatchFailed> {
    let mut commits = Vec::with_capacity(batch.len());
    for write in batch {
        match write {
            Write::Commit { commit, .. } if commit.schedule.is_empty() => commits.push(&**commit),
            _ => return Ok(UnitsAlone::NotAlone),
        }
    }
    if !grouped_units::can_share_a_statement(&commits) {
        return Ok(UnitsAlone::NotAlone);
    }
    match grouped_units::commit_units(connection, &commits).await {
        Ok(UnitsWritten::Written(outcomes)) => {
            Ok(UnitsAlone::Written(outcomes.into_iter().map(|outcome| Outcome::Committed(Ok(outcome))).collect()))
        }
        Ok(UnitsWritten::Refused { .. }) => Ok(UnitsAlone::Refused),
        Err(CallFailed::NothingWritten(e)) => Err(BatchFailed::BeforeCommit(e)),
        Err(CallFailed::Unknown(e)) => Err(BatchFailed::AtCommit(e)),
    }
}

#[async_trait]
impl Organizations for PostgresStore {
    async fn register_organization(&self, org_id: &str) -> StoreResult<()> {
        sqlx::query("INSERT INTO organizations (id, created_at) VALUES ($1, 0) ON CONFLICT (id) DO NOTHING")
            .bind(org_id)
            .execute(&self.writer)
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
impl SessionStore for PostgresStore {
    async fn load_session(&self, key: &SessionKey) -> StoreResult<Option<StoredSession>> {
        self.check_org(&key.org_id).await?;
        let row = sqlx::query(&format!(
            "SELECT {SESSION_INFO_COLS}, state_schema, state FROM sessions
             WHERE org_id = $1 AND business_number_id = $2 AND contact_id = $3 AND flow_id = $4 AND status = 'active'"
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
        // One read for what the default method does in two.
        let mut connection = self.warm.get().await?;
        let rows = sqlx::query(&conversation_sessions_sql(&format!("{SESSION_INFO_COLS}, state_schema, state")))
            .bind(&c.org_id)
            .bind(&c.business_number_id)
            .bind(&c.contact_id)
            .fetch_all(&mut *connection)
            .await;
        let rows = connection.keep_if_ok(rows.map_err(StoreError::from))?;
        newest_stored_session(&rows)
    }

    /// One read for the whole batch.
    async fn active_sessions(&self, conversations: &[ConversationKey]) -> StoreResult<Vec<Option<StoredSession>>> {
        let distinct = distinct_conversations(conversations);
        for c in &distinct {
            self.check_org(&c.org_id).await?;
        }
        if distinct.is_empty() {
            return Ok(Vec::new());
        }
        let mut connection = self.warm.get().await?;
        let rows = sqlx::query(&active_sessions_sql())
            .bind((0..distinct.len() as i64).collect::<Vec<i64>>())
            .bind(distinct.iter().map(|c| c.org_id.as_str()).collect::<Vec<_>>())
            .bind(distinct.iter().map(|c| c.business_number_id.as_str()).collect::<Vec<_>>())
            .bind(distinct.iter().map(|c| c.contact_id.as_str()).collect::<Vec<_>>())
            .fetch_all(&mut *connection)
            .await;
        let rows = connection.keep_if_ok(rows.map_err(StoreError::from))?;
        let mut found = HashMap::with_capacity(distinct.len());
        newest_of_each(&distinct, rows, &mut found)?;
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
        let mut tx = self.begin().await?;
        let saved = save_session_tx(&mut tx, &write).await?;
        tx.commit().await?;
        Ok(saved)
    }

    async fn close_session(&self, key: &SessionKey, now: Timestamp) -> StoreResult<bool> {
        self.check_org(&key.org_id).await?;
        let r = sqlx::query(
            "UPDATE sessions SET status = 'closed', version = version + 1, updated_at = $5, closed_at = $5
             WHERE org_id = $1 AND business_number_id = $2 AND contact_id = $3 AND flow_id = $4 AND status = 'active'",
        )
        .bind(&key.org_id)
        .bind(&key.business_number_id)
        .bind(&key.contact_id)
        .bind(&key.flow_id)
        .bind(now.as_unix_millis())
        .execute(&self.writer)
        .await?;
        Ok(r.rows_affected() > 0)
    }

    async fn list_active_sessions(&self, org_id: &str, page: Page) -> StoreResult<Vec<SessionInfo>> {
        self.check_org(org_id).await?;
        let rows = sqlx::query(&format!(
            "SELECT {SESSION_INFO_COLS} FROM sessions WHERE org_id = $1 AND status = 'active'
             ORDER BY updated_at DESC, id DESC LIMIT $2 OFFSET $3"
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
        let mut tx = self.begin().await?;
        let expired = sqlx::query("DELETE FROM sessions WHERE org_id = $1 AND status = 'active' AND updated_at < $2")
            .bind(org_id)
            .bind(expired_before)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        let closed = sqlx::query("DELETE FROM sessions WHERE org_id = $1 AND status = 'closed' AND closed_at < $2")
            .bind(org_id)
            .bind(retained_after)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        let inbox =
            sqlx::query("DELETE FROM inbox WHERE org_id = $1 AND status IN ('done', 'failed') AND finished_at < $2")
                .bind(org_id)
                .bind(retained_after)
                .execute(&mut *tx)
                .await?
                .rows_affected();
        let outbox =
            sqlx::query("DELETE FROM outbox WHERE org_id = $1 AND status IN ('done', 'failed') AND finished_at < $2")
                .bind(org_id)
                .bind(retained_after)
                .execute(&mut *tx)
                .await?
                .rows_affected();
        tx.commit().await?;
        Ok(PurgeReport { expired_sessions: expired, closed_sessions: closed, inbox_rows: inbox, outbox_rows: outbox })
    }
}

#[async_trait]
impl MessageLog for PostgresStore {
    async fn append_log(&self, org_id: &str, entries: &[NewLogEntry]) -> StoreResult<Vec<i64>> {
        self.check_org(org_id).await?;
        for e in entries {
            same_org(org_id, &e.conversation)?;
        }
        let mut tx = self.begin().await?;
        let ids = append_log_tx(&mut tx, org_id, entries).await?;
        tx.commit().await?;
        Ok(ids)
    }

    async fn history(&self, c: &ConversationKey, page: Page) -> StoreResult<Vec<LogEntry>> {
        self.check_org(&c.org_id).await?;
        let rows = sqlx::query(
            "SELECT id, org_id, business_number_id, contact_id, flow_id, direction, content_text, content_json, node_id, wamid, at, metadata
             FROM message_log WHERE org_id = $1 AND business_number_id = $2 AND contact_id = $3
             ORDER BY id LIMIT $4 OFFSET $5",
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
        if windows.is_empty() {
            return Ok(Vec::new());
        }
        let counts: Vec<i64> = sqlx::query_scalar(&format!(
            "SELECT (SELECT count(*) FROM (SELECT 1 FROM message_log m
                     WHERE m.org_id = v.org_id AND m.business_number_id = v.business_number_id
                       AND m.contact_id = v.contact_id AND m.direction = 'in' AND m.at > v.since
                       AND (m.metadata::jsonb -> '{RATE_LIMITED}') IS DISTINCT FROM 'true'::jsonb
                     LIMIT $5) AS counted)
             FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[])
                  WITH ORDINALITY AS v(org_id, business_number_id, contact_id, since, asked)
             ORDER BY v.asked"
        ))
        .bind(windows.iter().map(|(c, _)| c.org_id.as_str()).collect::<Vec<_>>())
        .bind(windows.iter().map(|(c, _)| c.business_number_id.as_str()).collect::<Vec<_>>())
        .bind(windows.iter().map(|(c, _)| c.contact_id.as_str()).collect::<Vec<_>>())
        .bind(windows.iter().map(|(_, since)| since.as_unix_millis()).collect::<Vec<_>>())
        .bind(i64::try_from(at_most).unwrap_or(i64::MAX))
        .fetch_all(&self.reader)
        .await?;
        Ok(counts.into_iter().map(|n| n.max(0) as u64).collect())
    }

    async fn list_conversations(&self, org_id: &str, page: Page) -> StoreResult<Vec<ConversationSummary>> {
        self.check_org(org_id).await?;
        let rows = sqlx::query(
            "SELECT org_id, business_number_id, contact_id, COUNT(*) AS n, MIN(at) AS first_at, MAX(at) AS last_at
             FROM message_log WHERE org_id = $1
             GROUP BY org_id, business_number_id, contact_id
             ORDER BY last_at DESC, business_number_id, contact_id LIMIT $2 OFFSET $3",
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
            "SELECT flow_id, cohort, (created_at - (((created_at % $4) + $4) % $4)) / $4 AS day, status, COUNT(*) AS n
             FROM sessions
             WHERE org_id = $1 AND created_at >= $2 AND created_at < $3 GROUP BY flow_id, cohort, day, status",
        )
        .bind(org_id)
        .bind(from)
        .bind(to)
        .bind(DAY_MS)
        .fetch_all(&self.reader)
        .await?;
        let messages = sqlx::query(
            "SELECT flow_id, (at - (((at % $4) + $4) % $4)) / $4 AS day, direction, COUNT(*) AS n FROM message_log
             WHERE org_id = $1 AND at >= $2 AND at < $3 GROUP BY flow_id, day, direction",
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
impl Inbox for PostgresStore {
    async fn insert_inbox(&self, event: NewInboxEvent) -> StoreResult<InboxInsert> {
        self.check_org(&event.conversation.org_id).await?;
        // Not behind the other writes, and without a conversation lock: a webhook's `200`
        // waits for this, and waiting behind units of work (and their conversation locks)
        // made that wait several times longer under load.
        self.inserts.submit(|reply| Write::InsertInbox { event, reply }).await
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
        let row = sqlx::query(&format!("SELECT {INBOX_COLS} FROM inbox WHERE org_id = $1 AND id = $2"))
            .bind(org_id)
            .bind(id)
            .fetch_optional(&self.reader)
            .await?;
        row.as_ref().map(inbox_event).transpose()
    }
}

#[async_trait]
impl Outbox for PostgresStore {
    async fn enqueue_outbox(&self, org_id: &str, messages: &[NewOutboxMessage]) -> StoreResult<Vec<i64>> {
        self.check_org(org_id).await?;
        for m in messages {
            same_org(org_id, &m.conversation)?;
        }
        let mut tx = self.begin().await?;
        let mut locks = ConversationLocks::default();
        messages
            .iter()
            .for_each(|m| locks.conversation(org_id, &m.conversation.business_number_id, &m.conversation.contact_id));
        locks.take(&mut tx).await?;
        let ids = enqueue_tx(&mut tx, org_id, messages).await?;
        tx.commit().await?;
        Ok(ids)
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
        let mut tx = self.begin().await?;
        let found: Option<i64> = sqlx::query_scalar("SELECT id FROM outbox WHERE org_id = $1 AND wamid = $2 LIMIT 1")
            .bind(org_id)
            .bind(wamid)
            .fetch_optional(&mut *tx)
            .await?;
        if found.is_none() {
            return Ok(false);
        }
        sqlx::query(
            "UPDATE outbox SET delivery = $3, delivery_rank = $4, delivery_at = $5
             WHERE org_id = $1 AND wamid = $2 AND delivery_rank < $4",
        )
        .bind(org_id)
        .bind(wamid)
        .bind(status.as_str())
        .bind(status.rank())
        .bind(at.as_unix_millis())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn get_outbox(&self, org_id: &str, id: i64) -> StoreResult<Option<OutboxMessage>> {
        self.check_org(org_id).await?;
        let row = sqlx::query(&format!("SELECT {OUTBOX_COLS} FROM outbox WHERE org_id = $1 AND id = $2"))
            .bind(org_id)
            .bind(id)
            .fetch_optional(&self.reader)
            .await?;
        row.as_ref().map(outbox_message).transpose()
    }
}

/// How often `publish_flow` retries after losing a race for the next version.
const PUBLISH_RETRIES: u32 = 64;

fn stored_flow(row: &PgRow) -> StoreResult<StoredFlow> {
    Ok(StoredFlow {
        org_id: row.try_get("org_id")?,
        flow_id: row.try_get("flow_id")?,
        version: row.try_get("version")?,
        definition: row.try_get("definition")?,
        published_at: ts(row.try_get("published_at")?),
    })
}

#[async_trait]
impl FlowStore for PostgresStore {
    async fn publish_flow(&self, org_id: &str, flow_id: &str, definition: &str, now: Timestamp) -> StoreResult<i64> {
        self.check_org(org_id).await?;
        // Two publishers can read the same MAX(version); the loser's INSERT then violates the
        // primary key (23505) and simply tries again with a fresh snapshot (one statement,
        // its own transaction, so nothing half-done is left behind).
        let mut attempt = 0u32;
        loop {
            let r = sqlx::query_scalar::<_, i64>(
                "INSERT INTO flows (org_id, flow_id, version, definition, published_at)
                 VALUES ($1, $2, (SELECT COALESCE(MAX(version), 0) + 1 FROM flows WHERE org_id = $1 AND flow_id = $2), $3, $4)
                 RETURNING version",
            )
            .bind(org_id)
            .bind(flow_id)
            .bind(definition)
            .bind(now.as_unix_millis())
            .fetch_one(&self.writer)
            .await;
            match r {
                Ok(version) => return Ok(version),
                Err(sqlx::Error::Database(e)) if e.is_unique_violation() && attempt < PUBLISH_RETRIES => {
                    attempt += 1;
                    tokio::task::yield_now().await;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    async fn get_flow(&self, org_id: &str, flow_id: &str, version: Option<i64>) -> StoreResult<Option<StoredFlow>> {
        self.check_org(org_id).await?;
        let row = sqlx::query(
            "SELECT org_id, flow_id, version, definition, published_at FROM flows
             WHERE org_id = $1 AND flow_id = $2 AND ($3::bigint IS NULL OR version = $3)
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
             WHERE f.org_id = $1 AND f.version = (SELECT MAX(g.version) FROM flows g WHERE g.org_id = f.org_id AND g.flow_id = f.flow_id)
             ORDER BY f.flow_id",
        )
        .bind(org_id)
        .fetch_all(&self.reader)
        .await?;
        rows.iter().map(stored_flow).collect()
    }
}

#[async_trait]
impl Store for PostgresStore {
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
        self.writes.submit(|reply| Write::Commit { commit: Box::new(commit), reply }).await
    }

    async fn ping(&self) -> StoreResult<()> {
        sqlx::query("SELECT 1").execute(&self.reader).await?;
        Ok(())
    }

    async fn close(&self) {
        // The pool's close waits for every connection to come back.
        self.lanes.release().await;
        self.insert_lanes.release().await;
        self.warm.release();
        self.writer.close().await;
        self.reader.close().await;
    }

    fn backend(&self) -> &'static str {
        "postgres"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::unit_fixtures::FreshPostgres;

    #[tokio::test]
    async fn a_conversations_sessions_are_found_through_its_own_key() {
        let Some(fresh) = FreshPostgres::open().await else { return };
        let store = &fresh.store;
        store.register_organization("o").await.unwrap();
        // Many active sessions in one organization and no statistics (as in a new schema, or
        // on a server without autovacuum): walking them all for each turn is
        // what this guards against.
        sqlx::raw_sql(
            "INSERT INTO sessions (org_id, business_number_id, contact_id, flow_id, flow_version, version, status,
                                   state_schema, state, created_at, updated_at)
             SELECT 'o', 'b', 'c' || i, 'f', 1, 1, 'active', 1, '{}', i, i FROM generate_series(1, 2000) AS i",
        )
        .execute(store.pool())
        .await
        .unwrap();
        let explain = format!("EXPLAIN {}", conversation_sessions_sql(SESSION_INFO_COLS));
        let plan: Vec<String> =
            sqlx::query_scalar(&explain).bind("o").bind("b").bind("c7").fetch_all(store.pool()).await.unwrap();
        let plan = plan.join("\n");
        assert!(plan.contains("Index Scan using sessions_active_key on sessions"), "{plan}");
        let explain = format!("EXPLAIN {}", active_sessions_sql());
        let plan: Vec<String> = sqlx::query_scalar(&explain)
            .bind(vec![0_i64, 1])
            .bind(vec!["o", "o"])
            .bind(vec!["b", "b"])
            .bind(vec!["c7", "c8"])
            .fetch_all(store.pool())
            .await
            .unwrap();
        let plan = plan.join("\n");
        assert!(plan.contains("Nested Loop"), "{plan}");
        assert!(plan.contains("Index Scan using sessions_active_key on sessions"), "{plan}");
        assert!(!plan.contains("Seq Scan on sessions"), "{plan}");
        fresh.drop_schema().await;
    }

    /// The claim functions' statement, planned as they plan it (a generic plan under their
    /// own settings): the first lines of `EXPLAIN`.
    async fn claim_plan(pool: &PgPool, queue: &str) -> String {
        let (body, settings): (String, Vec<String>) =
            sqlx::query_as("SELECT prosrc, proconfig FROM pg_proc WHERE proname = $1 AND pronamespace = current_schema()::regnamespace")
                .bind(format!("flowcore_claim_{queue}"))
                .fetch_one(pool)
                .await
                .unwrap();
        let statement = body.split("RETURN QUERY").nth(1).unwrap().rsplit_once(';').unwrap().0;
        let mut connection = pool.acquire().await.unwrap();
        let mut tx = connection.begin().await.unwrap();
        for setting in settings {
            let (name, value) = setting.split_once('=').unwrap();
            sqlx::raw_sql(&format!("SET LOCAL {name} = {value}")).execute(&mut *tx).await.unwrap();
        }
        sqlx::raw_sql(&format!("PREPARE claim (int8, text, int8, int8) AS {statement}"))
            .execute(&mut *tx)
            .await
            .unwrap();
        let plan: Vec<String> =
            sqlx::query_scalar("EXPLAIN EXECUTE claim (1000, NULL, 8, 2000)").fetch_all(&mut *tx).await.unwrap();
        sqlx::raw_sql("DEALLOCATE claim").execute(&mut *tx).await.unwrap();
        plan.join("\n")
    }

    #[tokio::test]
    async fn claims_walk_the_heads_in_order_and_stop_at_the_limit() {
        let Some(fresh) = FreshPostgres::open().await else { return };
        let store = &fresh.store;
        store.register_organization("o").await.unwrap();
        // A backlog of 50 rows in each of 200 conversations, no statistics: the load bench's
        // queues, where a plain statement read every head through a bitmap scan and sorted
        // them all.
        sqlx::raw_sql(
            "INSERT INTO inbox (org_id, business_number_id, contact_id, message_id, kind, payload, received_at, due_at,
                                status, head)
             SELECT 'o', 'b', 'c' || (i % 200), 'm' || i, 'message', repeat('x', 200), i, i, 'pending', i <= 200
             FROM generate_series(1, 10000) AS i;
             INSERT INTO outbox (org_id, business_number_id, contact_id, payload, due_at, status, head)
             SELECT 'o', 'b', 'c' || (i % 200), repeat('x', 200), i, 'pending', i <= 200
             FROM generate_series(1, 10000) AS i",
        )
        .execute(store.pool())
        .await
        .unwrap();
        for queue in ["inbox", "outbox"] {
            let plan = claim_plan(store.pool(), queue).await;
            assert!(plan.contains(&format!("Index Scan using {queue}_heads on {queue} i")), "{plan}");
            assert!(!plan.contains("Bitmap"), "{plan}");
            assert!(!plan.contains("Sort"), "{plan}");
        }
        let request = ClaimRequest::any(Timestamp::from_unix_millis(5000), Duration::from_secs(30), 3);
        let ids: Vec<i64> = store.claim_inbox(&request).await.unwrap().iter().map(|e| e.id).collect();
        assert_eq!(ids, [1, 2, 3], "the first heads in order");
        fresh.drop_schema().await;
    }

    /// The queues' statements are planned once per connection, often on nearly empty tables:
    /// an index that leads with the organization and holds unfinished rows is a way in by
    /// organization that such a plan may take for a conversation's rows (hence the inbox's
    /// message key leads with the message id).
    #[tokio::test]
    async fn no_queue_index_reaches_unfinished_rows_by_organization_alone() {
        let Some(fresh) = FreshPostgres::open().await else { return };
        let indexes: Vec<(String, String)> = sqlx::query_as(
            "SELECT indexname, indexdef FROM pg_indexes
             WHERE schemaname = current_schema() AND tablename IN ('inbox', 'outbox')",
        )
        .fetch_all(fresh.store.pool())
        .await
        .unwrap();
        assert!(indexes.len() >= 10, "{indexes:?}");
        for (name, definition) in &indexes {
            let columns = definition.split_once(" (").unwrap().1;
            if columns.starts_with("org_id") {
                let predicate = definition.split_once(" WHERE ").map(|(_, p)| p).unwrap_or("");
                assert!(
                    !predicate.is_empty() && !predicate.contains("pending"),
                    "{name} leads with org_id and holds unfinished rows: {definition}"
                );
            }
        }
        fresh.drop_schema().await;
    }
}
