//! The SQLite writer: the one task that writes. It owns the store's write connection and
//! runs each batch of queued writes in one `BEGIN IMMEDIATE` transaction.
//!
//! SQLite has one writer at a time. Two write connections would take turns through
//! SQLite's lock, and a writer that finds it taken sleeps (1 ms, then longer) before it
//! tries again. So every write of the store comes here: inserts, units of work, claim
//! changes and claims share batches, and rare writes (an operator's close, a purge) run
//! alone between batches, each in a transaction of its own.
//!
//! Every statement is a round trip to sqlx's connection thread (two thread wake-ups), which
//! costs more than SQLite's own work for these small writes. So a batch's inbox inserts go
//! in one multi-row statement, its claim changes in one statement per kind of change, and
//! its units of work in one grouped query. Owning the connection also spares each batch
//! sqlx's pool round trips: taking a connection from a pool and its test on the way back.
//!
//! Each write is still checked exactly as it would be alone: an insert that hits an existing
//! message id is a duplicate, a claim change whose claim no longer holds changes nothing and
//! is diagnosed on its own, and units of work are grouped only behind a check of every
//! unit, else run one by one, each in a savepoint that is rolled back when any of its checks
//! fails. Writes of one batch were issued concurrently, so running them
//! grouped by kind does not reorder anything a caller could have ordered; claims run last, so
//! they see the rows the batch inserted and the conversations it freed. Results are handed
//! out only after the transaction committed: until then nothing is durable.

use std::collections::HashMap;

use futures_util::future::BoxFuture;
use sqlx::sqlite::{SqliteConnection, SqliteRow};
use sqlx::{Connection, Row, Sqlite};
use tokio::sync::Mutex;

use super::{
    bind_inbox_event, commit_batch_tx, commit_scheduled_tx, finish_claim_tx, grouped_units, insert_inbox_tx,
    next_event, take_arguments, Tx,
};
use crate::error::{StoreError, StoreResult};
use crate::group_commit::{copy_error, ClaimChange, Queue, Queued, Reply, Write, UNIT_OF_WORK_COST};
use crate::types::{Claim, ClaimRequest, Commit, CommitOutcome, InboxInsert, NewInboxEvent, Page};

/// A write for SQLite's writer.
pub(super) enum SqliteWrite {
    /// An insert, a unit of work or a claim change.
    Shared(Write),
    /// A claim of the inbox or the outbox: `UPDATE … RETURNING` the claimed rows.
    Claim { sql: String, request: ClaimRequest, reply: Reply<Vec<SqliteRow>> },
    /// A rare write with its own transaction; it answers its caller itself (dropped
    /// unanswered, the caller sees [`StoreError::Closed`]).
    Alone(Job),
}

/// A write that runs alone on the write connection.
pub(super) type Job = Box<dyn for<'c> FnOnce(&'c mut SqliteConnection) -> BoxFuture<'c, ()> + Send>;

/// Wraps `job` so that its result goes to `reply`.
pub(super) fn job<T, F>(job: F, reply: Reply<T>) -> Job
where
    T: Send + 'static,
    F: for<'c> FnOnce(&'c mut SqliteConnection) -> BoxFuture<'c, StoreResult<T>> + Send + 'static,
{
    Box::new(move |connection: &mut SqliteConnection| {
        let answered: BoxFuture<'_, ()> = Box::pin(async move {
            // A caller that stopped waiting has nobody to tell.
            let _ = reply.send(job(connection).await);
        });
        answered
    })
}

impl std::fmt::Debug for SqliteWrite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SqliteWrite::Shared(write) => write.fmt(f),
            SqliteWrite::Claim { request, .. } => f.debug_struct("Claim").field("request", request).finish(),
            SqliteWrite::Alone(_) => f.write_str("Alone"),
        }
    }
}

impl Queued for SqliteWrite {
    fn queue(&self) -> Queue {
        match self {
            SqliteWrite::Shared(write) => write.queue(),
            SqliteWrite::Claim { .. } => Queue::Batched,
            SqliteWrite::Alone(_) => Queue::Alone,
        }
    }

    /// A claim walks the waiting conversations and updates each row it takes: about a unit
    /// of work's worth.
    fn cost(&self) -> usize {
        match self {
            SqliteWrite::Shared(write) => write.cost(),
            SqliteWrite::Claim { .. } => UNIT_OF_WORK_COST,
            SqliteWrite::Alone(_) => 1,
        }
    }
}

impl SqliteWrite {
    fn fail(self, error: &StoreError) {
        match self {
            SqliteWrite::Shared(write) => write.fail(error),
            SqliteWrite::Claim { reply, .. } => drop(reply.send(Err(copy_error(error)))),
            SqliteWrite::Alone(job) => drop(job),
        }
    }
}

/// The write connection; `None` once the store is closed.
pub(super) type WriteConnection = Mutex<Option<SqliteConnection>>;

/// Makes `connection` the writer's: sets up what the grouped units' check needs.
pub(super) async fn write_connection(mut connection: SqliteConnection) -> StoreResult<WriteConnection> {
    sqlx::raw_sql(grouped_units::CHECK_SETUP).execute(&mut connection).await?;
    Ok(Mutex::new(Some(connection)))
}

/// Runs `batch` (one job that runs alone, or writes that share a transaction) and answers
/// every write.
pub(super) async fn run(connection: &WriteConnection, batch: Vec<SqliteWrite>) {
    let mut connection = connection.lock().await;
    let Some(connection) = connection.as_mut() else {
        batch.into_iter().for_each(|write| write.fail(&StoreError::Closed));
        return;
    };
    let mut batch = batch.into_iter();
    match (batch.next(), batch.len()) {
        (Some(SqliteWrite::Alone(job)), 0) => job(connection).await,
        (first, _) => run_batch(connection, first.into_iter().chain(batch).collect()).await,
    }
}

/// A write's result, waiting for the batch's commit.
enum Answer {
    Insert(Reply<InboxInsert>, StoreResult<InboxInsert>),
    Commit(Reply<CommitOutcome>, StoreResult<CommitOutcome>),
    Finish(Reply<()>, StoreResult<()>),
    Claim(Reply<Vec<SqliteRow>>, StoreResult<Vec<SqliteRow>>),
}

impl Answer {
    /// Sends the result, or the commit's error instead of a success that did not become durable.
    fn send(self, commit_error: Option<&StoreError>) {
        fn pick<T>(result: StoreResult<T>, commit_error: Option<&StoreError>) -> StoreResult<T> {
            match (result, commit_error) {
                (Ok(_), Some(e)) => Err(copy_error(e)),
                (result, _) => result,
            }
        }
        // A caller that stopped waiting has nobody to tell.
        match self {
            Answer::Insert(reply, result) => drop(reply.send(pick(result, commit_error))),
            Answer::Commit(reply, result) => drop(reply.send(pick(result, commit_error))),
            Answer::Finish(reply, result) => drop(reply.send(pick(result, commit_error))),
            Answer::Claim(reply, result) => drop(reply.send(pick(result, commit_error))),
        }
    }
}

/// A claim change waiting for its statement: organization, claim, change, reply.
type PendingFinish = (String, Claim, ClaimChange, Reply<()>);

/// The savepoint a unit of work runs in. A successful unit's savepoint is released by the
/// next unit's first statement (or by the commit), saving a round trip per unit.
const SAVEPOINT: &str = "SAVEPOINT unit;";
const RELEASE_AND_SAVEPOINT: &str = "RELEASE unit; SAVEPOINT unit;";

/// Rows per multi-row statement: well under SQLite's 32,766 bound parameters.
const ROWS_PER_STATEMENT: usize = 500;

/// Runs `batch` in one transaction and answers every write.
async fn run_batch(connection: &mut SqliteConnection, batch: Vec<SqliteWrite>) {
    let mut tx = match connection.begin_with("BEGIN IMMEDIATE").await {
        Ok(tx) => tx,
        Err(e) => {
            let e = StoreError::from(e);
            batch.into_iter().for_each(|write| write.fail(&e));
            return;
        }
    };
    let mut inserts = Vec::new();
    let mut finishes = Vec::new();
    let mut commits = Vec::new();
    let mut claims = Vec::new();
    for write in batch {
        match write {
            SqliteWrite::Shared(Write::InsertInbox { event, reply }) => inserts.push((event, reply)),
            SqliteWrite::Shared(Write::Finish { org_id, claim, change, reply }) => {
                finishes.push((org_id, claim, change, reply))
            }
            SqliteWrite::Shared(Write::Commit { commit, reply }) => commits.push((commit, reply)),
            SqliteWrite::Claim { sql, request, reply } => claims.push((sql, request, reply)),
            // The group commit hands a job that runs alone over as a batch of its own; one
            // that ever arrived here would be dropped, which answers its caller `Closed`.
            SqliteWrite::Alone(job) => drop(job),
        }
    }
    let mut answers = Vec::with_capacity(inserts.len() + finishes.len() + commits.len() + claims.len());
    let ran = async {
        insert_all(&mut tx, inserts, &mut answers).await?;
        finish_all(&mut tx, finishes, &mut answers).await?;
        commit_all(&mut tx, commits, &mut answers).await?;
        claim_all(&mut tx, claims, &mut answers).await
    }
    .await;
    let outcome = match ran {
        // The transaction is in an unknown state: nothing of the batch lands.
        Err(e) => Err(e),
        Ok(()) => tx.commit().await.map_err(StoreError::from),
    };
    answers.into_iter().for_each(|answer| answer.send(outcome.as_ref().err()));
}

/// The batch's claims, in the order they were queued.
///
/// `Err` only when the transaction cannot go on; the claims it names are answered already.
async fn claim_all(
    tx: &mut Tx<'_>,
    claims: Vec<(String, ClaimRequest, Reply<Vec<SqliteRow>>)>,
    answers: &mut Vec<Answer>,
) -> StoreResult<()> {
    let mut claims = claims.into_iter();
    while let Some((sql, request, reply)) = claims.next() {
        let result = sqlx::query(&sql)
            .bind(request.now.as_unix_millis())
            .bind(request.org_id.as_deref())
            .bind(i64::from(request.limit.min(Page::MAX_LIMIT)))
            .bind(request.lease_until().as_unix_millis())
            .fetch_all(&mut **tx)
            .await
            .map_err(StoreError::from);
        if let Err(StoreError::Closed) = result {
            answers.push(Answer::Claim(reply, Err(StoreError::Closed)));
            claims.for_each(|(_, _, reply)| answers.push(Answer::Claim(reply, Err(StoreError::Closed))));
            return Err(StoreError::Closed);
        }
        // A claim that failed changed nothing (SQLite undoes the statement), and the
        // transaction goes on.
        answers.push(Answer::Claim(reply, result));
    }
    Ok(())
}

/// The batch's inbox inserts, as multi-row `INSERT … ON CONFLICT DO NOTHING` statements.
///
/// `Err` only when the transaction cannot go on; the writes it names are answered already.
async fn insert_all(
    tx: &mut Tx<'_>,
    inserts: Vec<(NewInboxEvent, Reply<InboxInsert>)>,
    answers: &mut Vec<Answer>,
) -> StoreResult<()> {
    let mut inserts = inserts.into_iter().peekable();
    while inserts.peek().is_some() {
        let chunk: Vec<_> = inserts.by_ref().take(ROWS_PER_STATEMENT).collect();
        if chunk.len() == 1 {
            let (event, reply) = chunk.into_iter().next().expect("one write");
            let result = insert_inbox_tx(tx, &event).await;
            answers.push(Answer::Insert(reply, result));
            continue;
        }
        let mut sql = String::from(
            "INSERT INTO inbox (org_id, business_number_id, contact_id, message_id, kind, payload, received_at, due_at, status) VALUES ",
        );
        let mut query = sqlx::query::<Sqlite>("");
        for (i, (e, _)) in chunk.iter().enumerate() {
            sql.push_str(if i == 0 {
                "(?, ?, ?, ?, ?, ?, ?, ?, 'pending')"
            } else {
                ", (?, ?, ?, ?, ?, ?, ?, ?, 'pending')"
            });
            query = bind_inbox_event(query, e);
        }
        sql.push_str(" ON CONFLICT (org_id, message_id) DO NOTHING RETURNING id, org_id, message_id");
        let args = take_arguments(query)?;
        let rows = match sqlx::query_with::<Sqlite, _>(&sql, args).fetch_all(&mut **tx).await {
            Ok(rows) => rows,
            Err(e) => {
                // The statement changed nothing; each insert is tried on its own.
                let e = StoreError::from(e);
                if matches!(e, StoreError::Closed) {
                    chunk
                        .into_iter()
                        .for_each(|(_, reply)| answers.push(Answer::Insert(reply, Err(StoreError::Closed))));
                    return Err(e);
                }
                for (event, reply) in chunk {
                    let result = insert_inbox_tx(tx, &event).await;
                    answers.push(Answer::Insert(reply, result));
                }
                continue;
            }
        };
        let mut inserted: HashMap<(String, String), i64> = HashMap::with_capacity(rows.len());
        for row in &rows {
            inserted.insert((row.try_get(1)?, row.try_get(2)?), row.try_get(0)?);
        }
        for (event, reply) in chunk {
            let key = (event.conversation.org_id.clone(), event.message_id.clone());
            // The first write of a message id inserted it; a second one in the same batch,
            // or one whose id was already stored, is a duplicate.
            let result = match inserted.get_mut(&key) {
                Some(id) if *id > 0 => {
                    let fresh = *id;
                    *id = -fresh;
                    Ok(InboxInsert::Inserted(fresh))
                }
                Some(id) => Ok(InboxInsert::Duplicate(-*id)),
                None => insert_inbox_tx(tx, &event).await,
            };
            answers.push(Answer::Insert(reply, result));
        }
    }
    Ok(())
}

/// The batch's claim changes: one `UPDATE … FROM (VALUES …)` per kind of change; a change
/// whose claim did not hold (or that names a row twice) is then run and diagnosed alone.
async fn finish_all(tx: &mut Tx<'_>, finishes: Vec<PendingFinish>, answers: &mut Vec<Answer>) -> StoreResult<()> {
    let mut by_kind: Vec<Vec<PendingFinish>> = Vec::new();
    for finish in finishes {
        match by_kind.iter_mut().find(|group| same_kind(&group[0].2, &finish.2)) {
            Some(group) => group.push(finish),
            None => by_kind.push(vec![finish]),
        }
    }
    for group in by_kind {
        let mut alone = Vec::new();
        let mut grouped = Vec::with_capacity(group.len());
        let mut seen = std::collections::HashSet::with_capacity(group.len());
        for finish in group {
            if seen.insert(finish.1.id) {
                grouped.push(finish);
            } else {
                alone.push(finish);
            }
        }
        if grouped.len() == 1 {
            alone.append(&mut grouped);
        }
        for chunk in chunks(grouped, ROWS_PER_STATEMENT) {
            let changed = match finish_statement(tx, &chunk).await {
                Ok(changed) => changed,
                Err(StoreError::Closed) => {
                    chunk.into_iter().for_each(|f| answers.push(Answer::Finish(f.3, Err(StoreError::Closed))));
                    return Err(StoreError::Closed);
                }
                // Changed nothing: every change of the chunk runs alone.
                Err(_) => Default::default(),
            };
            for finish in chunk {
                if changed.contains(&finish.1.id) {
                    answers.push(Answer::Finish(finish.3, Ok(())));
                } else {
                    alone.push(finish);
                }
            }
        }
        for (org_id, claim, change, reply) in alone {
            let result = finish_claim_tx(tx, &org_id, claim, &change).await;
            answers.push(Answer::Finish(reply, result));
        }
    }
    Ok(())
}

fn same_kind(a: &ClaimChange, b: &ClaimChange) -> bool {
    std::mem::discriminant(a) == std::mem::discriminant(b)
}

fn chunks<T>(items: Vec<T>, size: usize) -> Vec<Vec<T>> {
    let mut out = Vec::new();
    let mut items = items.into_iter().peekable();
    while items.peek().is_some() {
        out.push(items.by_ref().take(size).collect());
    }
    out
}

/// One kind of claim change for several rows; the ids of the rows it changed.
async fn finish_statement(tx: &mut Tx<'_>, chunk: &[PendingFinish]) -> StoreResult<std::collections::HashSet<i64>> {
    let Some(first) = chunk.first() else { return Ok(Default::default()) };
    let (table, set) = grouped_set_clause(&first.2);
    let mut sql = format!(
        "UPDATE {table} SET {set} FROM (SELECT column1 AS org_id, column2 AS id, column3 AS attempt, column4 AS at, column5 AS text FROM (VALUES "
    );
    let mut query = sqlx::query::<Sqlite>("");
    for (i, (org_id, claim, change, _)) in chunk.iter().enumerate() {
        sql.push_str(if i == 0 { "(?, ?, ?, ?, ?)" } else { ", (?, ?, ?, ?, ?)" });
        let (at, text) = change_values(change);
        query = query.bind(org_id.clone()).bind(claim.id).bind(claim.attempt).bind(at).bind(text);
    }
    sql.push_str(&format!(
        ")) AS v WHERE {table}.org_id = v.org_id AND {table}.id = v.id AND {table}.status = 'claimed' AND {table}.attempts = v.attempt RETURNING {table}.id"
    ));
    let args = take_arguments(query)?;
    let rows = sqlx::query_with::<Sqlite, _>(&sql, args).fetch_all(&mut **tx).await?;
    rows.iter().map(|row| row.try_get::<i64, _>(0).map_err(StoreError::from)).collect()
}

/// The table and `SET` clause of a grouped change, reading `v.at` and `v.text`.
fn grouped_set_clause(change: &ClaimChange) -> (&'static str, &'static str) {
    match change {
        ClaimChange::InboxDone { .. } => ("inbox", "status = 'done', lease_until = NULL, finished_at = v.at"),
        ClaimChange::InboxRetry { .. } => {
            ("inbox", "status = 'pending', lease_until = NULL, retry_at = v.at, last_error = v.text")
        }
        ClaimChange::InboxFailed { .. } => {
            ("inbox", "status = 'failed', finished_at = v.at, lease_until = NULL, last_error = v.text")
        }
        ClaimChange::OutboxSent { .. } => (
            "outbox",
            "status = 'done', lease_until = NULL, finished_at = v.at, sent_at = v.at, wamid = v.text,
             delivery = CASE WHEN delivery_rank < 1 THEN 'sent' ELSE delivery END,
             delivery_at = CASE WHEN delivery_rank < 1 THEN v.at ELSE delivery_at END,
             delivery_rank = MAX(delivery_rank, 1)",
        ),
        ClaimChange::OutboxRetry { .. } => {
            ("outbox", "status = 'pending', lease_until = NULL, retry_at = v.at, last_error = v.text")
        }
        ClaimChange::OutboxFailed { .. } => {
            ("outbox", "status = 'failed', finished_at = v.at, lease_until = NULL, last_error = v.text")
        }
    }
}

/// A change's time and text (error or wamid) columns.
fn change_values(change: &ClaimChange) -> (i64, Option<String>) {
    match change {
        ClaimChange::InboxDone { now } => (now.as_unix_millis(), None),
        ClaimChange::InboxRetry { at, error } | ClaimChange::OutboxRetry { at, error } => {
            (at.as_unix_millis(), Some(error.clone()))
        }
        ClaimChange::InboxFailed { now, error } | ClaimChange::OutboxFailed { now, error } => {
            (now.as_unix_millis(), Some(error.clone()))
        }
        ClaimChange::OutboxSent { wamid, now } => (now.as_unix_millis(), Some(wamid.clone())),
    }
}

/// The batch's units of work: grouped into one query when every unit's checks hold (see
/// `grouped_units.rs`), else each in its savepoint; then the next inbox events the committed
/// units asked for (see `next_event.rs`).
async fn commit_all(
    tx: &mut Tx<'_>,
    commits: Vec<(Box<Commit>, Reply<CommitOutcome>)>,
    answers: &mut Vec<Answer>,
) -> StoreResult<()> {
    let (commits, replies): (Vec<Box<Commit>>, Vec<Reply<CommitOutcome>>) = commits.into_iter().unzip();
    let units: Vec<&Commit> = commits.iter().map(|commit| &**commit).collect();
    let (mut results, failure) = write_units(tx, &units).await;
    let failure = match failure {
        Some(e) => Some(e),
        None => claim_next_events(tx, &units, &mut results).await.err(),
    };
    answers.extend(replies.into_iter().zip(results).map(|(reply, result)| Answer::Commit(reply, result)));
    failure.map_or(Ok(()), Err)
}

/// Each unit's result, and the error that stopped the transaction, if one did.
async fn write_units(tx: &mut Tx<'_>, units: &[&Commit]) -> (Vec<StoreResult<CommitOutcome>>, Option<StoreError>) {
    if grouped_units::worth_grouping(units) {
        match grouped_units::commit_grouped(tx, units).await {
            Ok(Some(outcomes)) => return (outcomes.into_iter().map(Ok).collect(), None),
            // A check did not hold: one by one below, each refusal diagnosed on its own.
            Ok(None) => {}
            Err(e) => return (units.iter().map(|_| Err(copy_error(&e))).collect(), Some(e)),
        }
    }
    one_by_one(tx, units).await
}

/// Units of work, each in its savepoint.
async fn one_by_one(tx: &mut Tx<'_>, units: &[&Commit]) -> (Vec<StoreResult<CommitOutcome>>, Option<StoreError>) {
    let mut results = Vec::with_capacity(units.len());
    let mut savepoint_open = false;
    for commit in units {
        let prefix = if savepoint_open { RELEASE_AND_SAVEPOINT } else { SAVEPOINT };
        let result = if commit.schedule.is_empty() {
            commit_batch_tx(tx, commit, prefix).await
        } else {
            commit_scheduled_tx(tx, commit, prefix).await
        };
        savepoint_open = true;
        if result.is_err() {
            // Undo whatever part of the unit ran; the savepoint stays open (empty).
            if let Err(e) = sqlx::query("ROLLBACK TO unit").execute(&mut **tx).await {
                let e = StoreError::from(e);
                results.push(result);
                results.extend(units[results.len()..].iter().map(|_| Err(copy_error(&e))));
                return (results, Some(e));
            }
        }
        results.push(result);
    }
    (results, None)
}

/// Claims the next inbox event of each committed unit that asked, into its outcome. `Err`
/// when the transaction cannot go on.
async fn claim_next_events(
    tx: &mut Tx<'_>,
    units: &[&Commit],
    results: &mut [StoreResult<CommitOutcome>],
) -> StoreResult<()> {
    let committed: Vec<usize> = (0..units.len()).filter(|&i| results[i].is_ok()).collect();
    let asking: Vec<&Commit> = committed.iter().map(|&i| units[i]).collect();
    let claimed = next_event::claim_next_events(tx, &asking).await?;
    for (i, event) in committed.into_iter().zip(claimed) {
        if let Ok(outcome) = &mut results[i] {
            outcome.claimed_next = event;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use flowcore::Timestamp;
    use serde_json::json;
    use tokio::sync::oneshot;

    use super::*;
    use crate::traits::{Inbox, Organizations, Outbox};
    use crate::types::{ClaimRequest, ConversationKey, QueueStatus};
    use crate::{SqliteOptions, SqliteStore};

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_unix_seconds(1_700_000_000 + seconds)
    }

    fn message(contact: &str, id: &str) -> NewInboxEvent {
        NewInboxEvent::message(ConversationKey::new("o", "b", contact), id, json!({}), at(0))
    }

    async fn store() -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("w.db").display());
        let store = SqliteStore::open(&url, SqliteOptions::default()).await.unwrap();
        store.register_organization("o").await.unwrap();
        (dir, store)
    }

    #[tokio::test]
    async fn grouped_inserts_tell_new_rows_from_duplicates() {
        let (_dir, store) = store().await;
        let stored = store.insert_inbox(message("c1", "old")).await.unwrap().id();
        let mut batch = Vec::new();
        let mut results = Vec::new();
        for id in ["new-1", "old", "new-2", "new-1"] {
            let (reply, result) = oneshot::channel();
            batch.push(Write::InsertInbox { event: message("c1", id), reply });
            results.push(result);
        }
        run_shared(&store, batch).await;
        let results: Vec<InboxInsert> = futures_results(results).await;
        assert!(matches!(results[0], InboxInsert::Inserted(_)), "{results:?}");
        assert_eq!(results[1], InboxInsert::Duplicate(stored));
        assert!(matches!(results[2], InboxInsert::Inserted(_)), "{results:?}");
        assert_eq!(results[3], InboxInsert::Duplicate(results[0].id()), "same id twice in one batch");
        let claimed = store.claim_inbox(&ClaimRequest::for_org("o", at(1), Duration::from_secs(60), 10)).await.unwrap();
        assert_eq!(claimed.len(), 1, "one conversation, one claim");
    }

    #[tokio::test]
    async fn grouped_claim_changes_apply_only_where_the_claim_holds() {
        let (_dir, store) = store().await;
        for contact in ["c1", "c2", "c3"] {
            store.insert_inbox(message(contact, &format!("m-{contact}"))).await.unwrap();
        }
        let claims: Vec<Claim> = store
            .claim_inbox(&ClaimRequest::for_org("o", at(1), Duration::from_secs(60), 10))
            .await
            .unwrap()
            .iter()
            .map(|e| e.claim())
            .collect();
        assert_eq!(claims.len(), 3);
        let stale = Claim { id: claims[2].id, attempt: 7 };
        let missing = Claim { id: 999_999, attempt: 1 };
        let done = ClaimChange::InboxDone { now: at(2) };
        let mut batch = Vec::new();
        let mut results = Vec::new();
        for claim in [claims[0], claims[1], stale, missing, claims[0]] {
            let (reply, result) = oneshot::channel();
            batch.push(Write::Finish { org_id: "o".into(), claim, change: done.clone(), reply });
            results.push(result);
        }
        run_shared(&store, batch).await;
        let mut results = results.into_iter();
        for _ in 0..2 {
            results.next().unwrap().await.unwrap().unwrap();
        }
        let third = results.next().unwrap().await.unwrap();
        assert!(matches!(third, Err(StoreError::LeaseLost { attempt: 7, .. })), "{third:?}");
        let fourth = results.next().unwrap().await.unwrap();
        assert!(matches!(fourth, Err(StoreError::NotFound { .. })), "{fourth:?}");
        let again = results.next().unwrap().await.unwrap();
        assert!(matches!(again, Err(StoreError::LeaseLost { .. })), "a row finished twice: {again:?}");
        for (claim, status) in
            [(claims[0], QueueStatus::Done), (claims[1], QueueStatus::Done), (claims[2], QueueStatus::Claimed)]
        {
            assert_eq!(store.get_inbox("o", claim.id).await.unwrap().unwrap().status, status);
        }
        // Sent replies record their wamid through the same grouped path.
        let ids = store
            .enqueue_outbox(
                "o",
                &[crate::types::NewOutboxMessage {
                    conversation: ConversationKey::new("o", "b", "c1"),
                    payload: json!({}),
                    due_at: at(0),
                    inbox_id: None,
                }],
            )
            .await
            .unwrap();
        let reply_claim =
            store.claim_outbox(&ClaimRequest::for_org("o", at(1), Duration::from_secs(60), 10)).await.unwrap()[0]
                .claim();
        assert_eq!(reply_claim.id, ids[0]);
        let (r1, w1) = oneshot::channel();
        let (r2, w2) = oneshot::channel();
        let sent = ClaimChange::OutboxSent { wamid: "wamid.X".into(), now: at(3) };
        run_shared(
            &store,
            vec![
                Write::Finish { org_id: "o".into(), claim: reply_claim, change: sent.clone(), reply: r1 },
                Write::Finish { org_id: "o".into(), claim: Claim { id: ids[0], attempt: 5 }, change: sent, reply: r2 },
            ],
        )
        .await;
        w1.await.unwrap().unwrap();
        assert!(matches!(w2.await.unwrap(), Err(StoreError::LeaseLost { .. })));
        assert_eq!(store.get_outbox("o", ids[0]).await.unwrap().unwrap().wamid.as_deref(), Some("wamid.X"));
    }

    /// Runs `batch` as the writer would, on a write connection of the test's own.
    async fn run_shared(store: &SqliteStore, batch: Vec<Write>) {
        let connection = write_connection(store.pool().acquire().await.unwrap().detach()).await.unwrap();
        run(&connection, batch.into_iter().map(SqliteWrite::Shared).collect()).await;
    }

    async fn futures_results<T: std::fmt::Debug>(results: Vec<oneshot::Receiver<StoreResult<T>>>) -> Vec<T> {
        let mut out = Vec::new();
        for result in results {
            out.push(result.await.expect("answered").expect("succeeded"));
        }
        out
    }
}
