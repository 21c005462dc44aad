//! A batch's units of work as one query: every session save, handled inbox row, log row,
//! reply and wake-up of the batch in one multi-row statement per kind, behind one check.
//!
//! Run one by one, each unit is a query of its own, and each query and each row it returns
//! is a hand-off between the async side and sqlx's connection thread (a thread wake-up
//! each), which costs more than SQLite's own work. Grouped, a batch is one query and about
//! ten hand-offs, whatever its size.
//!
//! The query's first statement checks every unit at once, by counting: every
//! compare-and-set must match, every new session must be new, every claim must hold, every
//! wake-up must be new. If a count is off, it raises an error (through a trigger on a
//! temporary view, set up once per write connection), which stops the query before its first
//! write, and the caller runs the units one by one, where each refusal is diagnosed on its
//! own. Refusals are rare (a lost race, a lost lease), so the common batch costs one query.
//!
//! The check comes first, and not a savepoint around the writes with their counts read
//! afterwards, because a savepoint makes SQLite copy every page the writes touch into its
//! sub-journal: 16 % of the writer's CPU in the server load bench. A batch whose units share
//! a session, a claim or a wake-up goes one by one (the counts could not tell them apart).
//! After a check that held, every write changes exactly the rows it counted, since nothing
//! else writes in between; if one ever does not, the whole batch fails and nothing of it
//! lands.

use futures_util::future::BoxFuture;
use futures_util::TryStreamExt;
use sqlx::sqlite::{SqliteArguments, SqliteConnection, SqliteQueryResult, SqliteRow};
use sqlx::{Either, Row, Sqlite};

use super::{bind_inbox_event, replies, take_arguments, Tx};
use crate::error::{StoreError, StoreResult};
use crate::sql_rows::ReplyClaims;
use crate::state;
use crate::types::{Commit, CommitOutcome, InboxInsert, NewInboxEvent, SavedSession, SessionStatus};

/// SQLite's bound on parameters per statement is 32,766: batches that would need more run
/// one by one.
const MAX_PARAMETERS_PER_STATEMENT: usize = 30_000;

/// What a statement of the grouped query is, to read its result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// The check: raises an error when a count is off (see [`CHECK_SETUP`]).
    Check,
    /// One row: the ids of the active sessions about to be updated, in unit order.
    SessionIds,
    /// Compare-and-set updates; must change this many rows.
    SessionUpdates(usize),
    /// New sessions; must insert this many rows.
    SessionInserts(usize),
    /// Handled inbox rows marked done; must change this many rows.
    InboxDone(usize),
    LogRows(usize),
    /// One row: the positions of the replies the next statement writes claimed.
    ClaimedReplies,
    Replies(usize),
    /// Wake-ups; must insert this many rows (a duplicate is diagnosed one by one).
    WakeUps(usize),
}

impl Step {
    /// Rows the statement must change for the batch to stand.
    fn expected_changes(self) -> Option<usize> {
        match self {
            Step::Check | Step::SessionIds | Step::ClaimedReplies => None,
            Step::SessionUpdates(n)
            | Step::SessionInserts(n)
            | Step::InboxDone(n)
            | Step::LogRows(n)
            | Step::Replies(n)
            | Step::WakeUps(n) => Some(n),
        }
    }
}

/// The grouped query under construction: its text, its arguments in order, its statements.
struct GroupedQuery<'q> {
    /// One statement per line, `;`-terminated.
    sql: String,
    query: sqlx::query::Query<'q, Sqlite, SqliteArguments<'q>>,
    steps: Vec<Step>,
}

impl<'q> GroupedQuery<'q> {
    fn new() -> Self {
        GroupedQuery { sql: String::with_capacity(4096), query: sqlx::query(""), steps: Vec::with_capacity(8) }
    }

    /// Appends `head`, then `rows` tuples of `width` placeholders, then `tail`; `bind` binds
    /// each row's values in order.
    fn multi_row<T>(
        &mut self,
        step: Step,
        head: &str,
        rows: &[T],
        width: usize,
        tail: &str,
        mut bind: impl FnMut(
            sqlx::query::Query<'q, Sqlite, SqliteArguments<'q>>,
            &T,
        ) -> sqlx::query::Query<'q, Sqlite, SqliteArguments<'q>>,
    ) {
        if rows.is_empty() {
            return;
        }
        let tuple = format!("({})", vec!["?"; width].join(", "));
        self.sql.push_str(head);
        for (i, row) in rows.iter().enumerate() {
            if i > 0 {
                self.sql.push_str(", ");
            }
            self.sql.push_str(&tuple);
            let query = std::mem::replace(&mut self.query, sqlx::query(""));
            self.query = bind(query, row);
        }
        self.sql.push_str(tail);
        self.sql.push_str(";\n");
        self.steps.push(step);
    }

    /// The check statement (see the module): one count per kind of check, each over a
    /// `VALUES` list probed through an index. Nothing to check, no statement.
    fn check(&mut self, updates: &[&Commit], creates: &[&Commit], done: &[&Commit], wake_ups: &[&NewInboxEvent]) {
        let mut counts: Vec<String> = Vec::with_capacity(4);
        let mut count = |head: &str, width: usize, rows: usize, tail: &str, expected: usize| {
            if rows > 0 {
                let tuple = format!("({})", vec!["?"; width].join(", "));
                let values = vec![tuple; rows].join(", ");
                counts.push(format!("(SELECT count(*) FROM (VALUES {values}) AS v {head} {tail}) <> {expected}"));
            }
        };
        // The active session of each key: organization, number, contact and flow in columns 1–4.
        const ACTIVE_SESSION: &str = "JOIN sessions s INDEXED BY sessions_active_key
               ON s.org_id = v.column1 AND s.business_number_id = v.column2 AND s.contact_id = v.column3
              AND s.flow_id = v.column4 AND s.status = 'active'";
        count(ACTIVE_SESSION, 5, updates.len(), "WHERE s.version = v.column5", updates.len());
        count(ACTIVE_SESSION, 4, creates.len(), "", 0);
        count(
            "JOIN inbox i ON i.id = v.column2",
            3,
            done.len(),
            "WHERE i.org_id = v.column1 AND i.status = 'claimed' AND i.attempts = v.column3",
            done.len(),
        );
        count("JOIN inbox i ON i.org_id = v.column1 AND i.message_id = v.column2", 2, wake_ups.len(), "", 0);
        if counts.is_empty() {
            return;
        }
        self.sql.push_str("INSERT INTO temp.flowcore_grouped_check (refused) SELECT ");
        self.sql.push_str(&counts.join(" OR "));
        self.sql.push_str(";\n");
        let mut query = std::mem::replace(&mut self.query, sqlx::query(""));
        for c in updates {
            let w = c.session.as_ref().expect("an update");
            let k = &w.key;
            query = query
                .bind(k.org_id.clone())
                .bind(k.business_number_id.clone())
                .bind(k.contact_id.clone())
                .bind(k.flow_id.clone())
                .bind(w.expected_version);
        }
        for c in creates {
            let k = &c.session.as_ref().expect("a new session").key;
            query = query
                .bind(k.org_id.clone())
                .bind(k.business_number_id.clone())
                .bind(k.contact_id.clone())
                .bind(k.flow_id.clone());
        }
        for c in done {
            let claim = c.inbox_done.expect("a handled row");
            query = query.bind(c.org_id.clone()).bind(claim.id).bind(claim.attempt);
        }
        for e in wake_ups {
            query = query.bind(e.conversation.org_id.clone()).bind(e.message_id.clone());
        }
        self.query = query;
        self.steps.push(Step::Check);
    }
}

/// Parameters per row of each grouped statement.
const SESSION_ID_WIDTH: usize = 5;
const SESSION_UPDATE_WIDTH: usize = 13;
const SESSION_INSERT_WIDTH: usize = 15;
const INBOX_DONE_WIDTH: usize = 4;
const LOG_ROW_WIDTH: usize = 11;
const WAKE_UP_WIDTH: usize = 9;

/// Whether `commits` may run grouped: more than one, no statement over SQLite's bound, and
/// no session, claim or wake-up named twice.
pub(super) fn worth_grouping(commits: &[&Commit]) -> bool {
    let rows = |f: fn(&Commit) -> usize| commits.iter().map(|c| f(c)).sum::<usize>();
    commits.len() > 1
        && rows(|c| c.log.len()) * LOG_ROW_WIDTH <= MAX_PARAMETERS_PER_STATEMENT
        && rows(|c| c.outbox.len()) * replies::REPLY_WIDTH <= MAX_PARAMETERS_PER_STATEMENT
        && rows(|c| c.schedule.len()) * WAKE_UP_WIDTH <= MAX_PARAMETERS_PER_STATEMENT
        && commits.len() * SESSION_INSERT_WIDTH <= MAX_PARAMETERS_PER_STATEMENT
        && all_distinct(commits.iter().filter_map(|c| c.session.as_ref().map(|w| &w.key)))
        && all_distinct(commits.iter().filter_map(|c| c.inbox_done.map(|claim| claim.id)))
        && all_distinct(commits.iter().flat_map(|c| c.schedule.iter().map(|e| (&e.conversation.org_id, &e.message_id))))
}

fn all_distinct<T: std::hash::Hash + Eq>(items: impl Iterator<Item = T>) -> bool {
    let mut seen = std::collections::HashSet::new();
    items.into_iter().all(|item| seen.insert(item))
}

/// Sets up what the check raises its error through: inserting a true `refused` into this
/// temporary view fails. Run once on each write connection (temporary objects belong to
/// their connection).
pub(super) const CHECK_SETUP: &str = "
CREATE TEMP VIEW IF NOT EXISTS flowcore_grouped_check AS SELECT 0 AS refused;
CREATE TEMP TRIGGER IF NOT EXISTS flowcore_grouped_refused INSTEAD OF INSERT ON flowcore_grouped_check
WHEN NEW.refused BEGIN SELECT RAISE(ABORT, 'flowcore: grouped units refused'); END;";

/// Writes `commits` as one query. `Ok(None)`: some unit's check did not hold, or the query
/// failed before its first write; nothing of them was written and the caller runs them one
/// by one. `Err`: the transaction cannot go on (the caller drops it: nothing of the batch
/// lands).
pub(super) async fn commit_grouped(tx: &mut Tx<'_>, commits: &[&Commit]) -> StoreResult<Option<Vec<CommitOutcome>>> {
    let query = build(commits);
    match run(tx, query).await? {
        Some(results) => Ok(Some(outcomes(commits, &results)?)),
        None => Ok(None),
    }
}

/// The units whose session save updates an active session.
fn updates<'c>(commits: &[&'c Commit]) -> Vec<&'c Commit> {
    commits.iter().copied().filter(|c| c.session.as_ref().is_some_and(|w| w.expected_version > 0)).collect()
}

/// The units whose session save creates a session.
fn creates<'c>(commits: &[&'c Commit]) -> Vec<&'c Commit> {
    commits.iter().copied().filter(|c| c.session.as_ref().is_some_and(|w| w.expected_version == 0)).collect()
}

/// The grouped query, every value bound (owned): statements in a fixed order, each kind of
/// row in unit order.
fn build(commits: &[&Commit]) -> GroupedQuery<'static> {
    let (updates, creates) = (updates(commits), creates(commits));
    let done: Vec<&Commit> = commits.iter().copied().filter(|c| c.inbox_done.is_some()).collect();
    let log: Vec<_> = commits.iter().flat_map(|c| c.log.iter().map(move |e| (c.org_id.as_str(), e))).collect();
    let reply_claims = &ReplyClaims::of(commits);
    let outbox: Vec<_> = commits
        .iter()
        .flat_map(|c| c.outbox.iter().map(move |m| (c.org_id.as_str(), m, reply_claims.lease(c, m))))
        .enumerate()
        .collect();
    let candidates: Vec<_> = outbox.iter().filter(|(_, (_, _, lease))| lease.is_some()).collect();
    let schedule: Vec<_> = commits.iter().flat_map(|c| c.schedule.iter()).collect();

    let mut q = GroupedQuery::new();
    q.check(&updates, &creates, &done, &schedule);
    q.multi_row(
        Step::SessionIds,
        "SELECT group_concat(COALESCE((SELECT s.id FROM sessions s
                 WHERE s.org_id = v.column2 AND s.business_number_id = v.column3 AND s.contact_id = v.column4
                   AND s.flow_id = v.column5 AND s.status = 'active'), 0), ',' ORDER BY v.column1)
         FROM (VALUES ",
        &updates.iter().enumerate().collect::<Vec<_>>(),
        SESSION_ID_WIDTH,
        ") AS v",
        |query, (n, c)| {
            let k = &c.session.as_ref().expect("an update").key;
            query
                .bind(*n as i64)
                .bind(k.org_id.clone())
                .bind(k.business_number_id.clone())
                .bind(k.contact_id.clone())
                .bind(k.flow_id.clone())
        },
    );
    q.multi_row(
        Step::SessionUpdates(updates.len()),
        "UPDATE sessions SET version = sessions.version + 1, status = v.column6, state_schema = v.column7,
                state = v.column8, current_node = v.column9, wake_at = v.column10, updated_at = v.column11,
                closed_at = v.column12, flow_version = v.column13
         FROM (VALUES ",
        &updates,
        SESSION_UPDATE_WIDTH,
        ") AS v
         WHERE sessions.org_id = v.column1 AND sessions.business_number_id = v.column2
           AND sessions.contact_id = v.column3 AND sessions.flow_id = v.column4
           AND sessions.status = 'active' AND sessions.version = v.column5",
        |query, c| {
            let w = c.session.as_ref().expect("an update");
            let (current_node, wake_at) = state::meta(&w.session);
            let now = w.now.as_unix_millis();
            query
                .bind(w.key.org_id.clone())
                .bind(w.key.business_number_id.clone())
                .bind(w.key.contact_id.clone())
                .bind(w.key.flow_id.clone())
                .bind(w.expected_version)
                .bind(w.status.as_str())
                .bind(state::STATE_SCHEMA_VERSION)
                .bind(state::encode(&w.session))
                .bind(current_node)
                .bind(wake_at.map(|t| t.as_unix_millis()))
                .bind(now)
                .bind((w.status == SessionStatus::Closed).then_some(now))
                .bind(w.flow_version)
        },
    );
    q.multi_row(
        Step::SessionInserts(creates.len()),
        "INSERT INTO sessions (org_id, business_number_id, contact_id, flow_id, flow_version, version, status,
                               state_schema, state, current_node, wake_at, created_at, updated_at, closed_at, cohort)
         VALUES ",
        &creates,
        SESSION_INSERT_WIDTH,
        " ON CONFLICT (org_id, business_number_id, contact_id, flow_id) WHERE status = 'active' DO NOTHING",
        |query, c| {
            let w = c.session.as_ref().expect("a new session");
            let (current_node, wake_at) = state::meta(&w.session);
            let now = w.now.as_unix_millis();
            query
                .bind(w.key.org_id.clone())
                .bind(w.key.business_number_id.clone())
                .bind(w.key.contact_id.clone())
                .bind(w.key.flow_id.clone())
                .bind(w.flow_version)
                .bind(1_i64)
                .bind(w.status.as_str())
                .bind(state::STATE_SCHEMA_VERSION)
                .bind(state::encode(&w.session))
                .bind(current_node)
                .bind(wake_at.map(|t| t.as_unix_millis()))
                .bind(now)
                .bind(now)
                .bind((w.status == SessionStatus::Closed).then_some(now))
                .bind(w.cohort.clone())
        },
    );
    q.multi_row(
        Step::InboxDone(done.len()),
        "UPDATE inbox SET status = 'done', lease_until = NULL, finished_at = v.column4 FROM (VALUES ",
        &done,
        INBOX_DONE_WIDTH,
        ") AS v WHERE inbox.org_id = v.column1 AND inbox.id = v.column2 AND inbox.status = 'claimed'
                AND inbox.attempts = v.column3",
        |query, c| {
            let claim = c.inbox_done.expect("a handled row");
            query.bind(c.org_id.clone()).bind(claim.id).bind(claim.attempt).bind(c.now.as_unix_millis())
        },
    );
    q.multi_row(
        Step::LogRows(log.len()),
        "INSERT INTO message_log (org_id, business_number_id, contact_id, flow_id, direction, content_text,
                                  content_json, node_id, wamid, at, metadata)
         VALUES ",
        &log,
        LOG_ROW_WIDTH,
        "",
        |query, (org_id, e)| {
            let (text, json) = e.content.to_columns();
            query
                .bind(org_id.to_string())
                .bind(e.conversation.business_number_id.clone())
                .bind(e.conversation.contact_id.clone())
                .bind(e.flow_id.clone())
                .bind(e.direction.as_str())
                .bind(text.map(str::to_owned))
                .bind(json)
                .bind(e.node_id.clone())
                .bind(e.wamid.clone())
                .bind(e.at.as_unix_millis())
                .bind(e.metadata.to_string())
        },
    );
    q.multi_row(
        Step::ClaimedReplies,
        replies::CLAIMED_HEAD,
        &candidates,
        replies::CLAIMED_WIDTH,
        replies::CLAIMED_TAIL,
        |query, (n, (org_id, m, _))| replies::bind_candidate(query, *n, org_id, m),
    );
    q.multi_row(
        Step::Replies(outbox.len()),
        replies::INSERT_HEAD,
        &outbox,
        replies::REPLY_WIDTH,
        replies::INSERT_TAIL,
        |query, (n, (org_id, m, lease))| replies::bind_reply(query, *n, org_id, m, *lease),
    );
    q.multi_row(
        Step::WakeUps(schedule.len()),
        "INSERT INTO inbox (org_id, business_number_id, contact_id, message_id, kind, payload, received_at, due_at, status)
         VALUES ",
        &schedule,
        WAKE_UP_WIDTH,
        " ON CONFLICT (org_id, message_id) DO NOTHING",
        |query, e| bind_inbox_event(query, e).bind("pending"),
    );
    q
}

/// What the grouped statements reported: the session ids row, the claimed replies' positions,
/// and the last row id each insert wrote.
#[derive(Default)]
struct Results {
    updated_ids: Vec<i64>,
    claimed_replies: std::collections::HashSet<usize>,
    last_created_session: i64,
    last_log_row: i64,
    last_reply: i64,
    last_wake_up: i64,
}

/// Runs the grouped query: `None` if the check refused it, or if it failed before its first
/// write; an error if a write changed other rows than its checks promised, or if the query
/// failed after a write (the transaction cannot go on).
async fn run(tx: &mut Tx<'_>, q: GroupedQuery<'static>) -> StoreResult<Option<Results>> {
    let GroupedQuery { sql, query, steps } = q;
    let args = take_arguments(query)?;
    let (items, failure) = fetch_results(tx, &sql, args).await;
    let mut steps = steps.into_iter().peekable();
    let mut results = Results::default();
    let mut wrote = false;
    for item in items {
        match item {
            // A row of the statement running: the next step's.
            Either::Right(row) => {
                let list: Option<String> = row.try_get(0)?;
                match steps.peek() {
                    Some(Step::SessionIds) => {
                        results.updated_ids = list
                            .unwrap_or_default()
                            .split(',')
                            .filter(|id| !id.is_empty())
                            .map(|id| {
                                id.parse::<i64>().map_err(|e| StoreError::Database(format!("session id {id:?}: {e}")))
                            })
                            .collect::<StoreResult<_>>()?;
                    }
                    Some(Step::ClaimedReplies) => {
                        results.claimed_replies = replies::positions(list.as_deref())
                            .map_err(|e| StoreError::Database(format!("claimed replies {list:?}: {e}")))?
                            .into_iter()
                            .collect();
                    }
                    step => return Err(StoreError::Database(format!("grouped units: a row from {step:?}"))),
                }
            }
            Either::Left(done) => {
                let step =
                    steps.next().ok_or_else(|| StoreError::Database("grouped units: an extra statement".into()))?;
                if let Some(expected) = step.expected_changes() {
                    wrote = true;
                    if done.rows_affected() != expected as u64 {
                        return Err(StoreError::Database(format!(
                            "grouped units: {step:?} changed {} rows after a check that held",
                            done.rows_affected()
                        )));
                    }
                }
                record(&mut results, step, &done);
            }
        }
    }
    match failure {
        None if steps.next().is_some() => Err(StoreError::Database("grouped units: a statement did not run".into())),
        None => Ok(Some(results)),
        Some(e) => match StoreError::from(e) {
            StoreError::Closed => Err(StoreError::Closed),
            // Refused, or failed before writing (a failed statement leaves nothing behind):
            // each unit meets its own result one by one.
            _ if !wrote => Ok(None),
            e => Err(e),
        },
    }
}

/// What a multi-statement query yields: a statement's result or one of its rows.
type QueryItem = Either<SqliteQueryResult, SqliteRow>;

/// Every statement's rows and result, in order, up to the first error. Boxed: the stream's
/// borrows then meet the writer's `Send` bound at one concrete lifetime.
pub(super) fn fetch_results<'e>(
    conn: &'e mut SqliteConnection,
    sql: &'e str,
    args: SqliteArguments<'e>,
) -> BoxFuture<'e, (Vec<QueryItem>, Option<sqlx::Error>)> {
    Box::pin(async move {
        let mut items = Vec::new();
        let mut stream = sqlx::Executor::fetch_many(conn, sqlx::query_with::<Sqlite, _>(sql, args));
        loop {
            match stream.try_next().await {
                Ok(Some(item)) => items.push(item),
                Ok(None) => return (items, None),
                Err(e) => return (items, Some(e)),
            }
        }
    })
}

fn record(results: &mut Results, step: Step, done: &SqliteQueryResult) {
    let last = done.last_insert_rowid();
    match step {
        Step::SessionInserts(_) => results.last_created_session = last,
        Step::LogRows(_) => results.last_log_row = last,
        Step::Replies(_) => results.last_reply = last,
        Step::WakeUps(_) => results.last_wake_up = last,
        Step::Check | Step::SessionIds | Step::SessionUpdates(_) | Step::InboxDone(_) | Step::ClaimedReplies => {}
    }
}

/// Each unit's outcome. Rows one statement inserted have consecutive ids in the order of its
/// `VALUES` (SQLite gives each new row the largest id so far plus one), ending at the
/// statement's last inserted row id.
fn outcomes(commits: &[&Commit], results: &Results) -> StoreResult<Vec<CommitOutcome>> {
    let (updates, creates) = (updates(commits), creates(commits));
    if results.updated_ids.len() != updates.len() || results.updated_ids.contains(&0) {
        return Err(StoreError::Database("grouped units: a session id is missing".into()));
    }
    let first = |last: i64, count: usize| last - count as i64 + 1;
    let total = |f: fn(&Commit) -> usize| commits.iter().map(|c| f(c)).sum::<usize>();
    let mut next_updated = results.updated_ids.iter();
    let mut next_created = first(results.last_created_session, creates.len());
    let mut next_log = first(results.last_log_row, total(|c| c.log.len()));
    let mut next_reply = first(results.last_reply, total(|c| c.outbox.len()));
    let mut next_wake_up = first(results.last_wake_up, total(|c| c.schedule.len()));
    let take = |next: &mut i64, count: usize| {
        let ids: Vec<i64> = (*next..*next + count as i64).collect();
        *next += count as i64;
        ids
    };
    let mut out = Vec::with_capacity(commits.len());
    let mut first_reply = 0;
    for commit in commits {
        let session = match &commit.session {
            None => None,
            Some(w) if w.expected_version > 0 => {
                Some(SavedSession { id: *next_updated.next().expect("counted above"), version: w.expected_version + 1 })
            }
            Some(_) => Some(SavedSession { id: take(&mut next_created, 1)[0], version: 1 }),
        };
        let outbox_ids = take(&mut next_reply, commit.outbox.len());
        let claimed_replies =
            replies::claimed_replies(commit, &outbox_ids, |n, _| results.claimed_replies.contains(&(first_reply + n)));
        first_reply += commit.outbox.len();
        out.push(CommitOutcome {
            session,
            log_ids: take(&mut next_log, commit.log.len()),
            outbox_ids,
            scheduled: take(&mut next_wake_up, commit.schedule.len()).into_iter().map(InboxInsert::Inserted).collect(),
            claimed_replies,
            // Claimed after the batch's units, by the writer (see `next_event.rs`).
            claimed_next: None,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use std::time::Duration;

    use flowcore::Timestamp;

    use crate::traits::{Inbox, Organizations, Outbox, SessionStore, Store};
    use crate::types::{Claim, ClaimRequest, NewInboxEvent, Page, QueueStatus};
    use crate::unit_fixtures::{self, at, chat, claims_in_contact_order, reply, save};
    use crate::{MessageLog, SqliteOptions, SqliteStore};

    /// A store where `c1` and `c3` have a session (version 1) and `c1`..`c3` one claimed
    /// message each; the claims in contact order.
    async fn prepared() -> (tempfile::TempDir, SqliteStore, Vec<Claim>) {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("g.db").display());
        let store = SqliteStore::open(&url, SqliteOptions::default()).await.unwrap();
        store.register_organization("o").await.unwrap();
        for contact in ["c1", "c3"] {
            store.save_session(save(contact, 0, SessionStatus::Active)).await.unwrap();
        }
        for contact in ["c1", "c2", "c3"] {
            store
                .insert_inbox(NewInboxEvent::message(chat(contact), format!("m-{contact}"), json!({}), at(0)))
                .await
                .unwrap();
        }
        let claims = claims_in_contact_order(&store).await;
        (dir, store, claims)
    }

    /// The shared units, the new session's with a wake-up: every statement of the grouped
    /// query.
    fn units(claims: &[Claim]) -> Vec<Commit> {
        let mut units = unit_fixtures::units(claims);
        units[1].schedule.push(NewInboxEvent::wake_up(chat("c2"), "wake:c2:1", json!({}), at(5), at(60)));
        units
    }

    async fn grouped(store: &SqliteStore, commits: &[Commit]) -> Option<Vec<CommitOutcome>> {
        let mut connection = store.pool().acquire().await.unwrap();
        sqlx::raw_sql(CHECK_SETUP).execute(&mut *connection).await.unwrap();
        let mut tx = sqlx::Connection::begin_with(&mut *connection, "BEGIN IMMEDIATE").await.unwrap();
        let units: Vec<&Commit> = commits.iter().collect();
        assert!(worth_grouping(&units));
        let outcome = commit_grouped(&mut tx, &units).await.unwrap();
        tx.commit().await.unwrap();
        outcome
    }

    async fn log_rows(store: &SqliteStore, contact: &str) -> Vec<(String, i64)> {
        let rows = store.history(&chat(contact), Page::first(100)).await.unwrap();
        rows.iter().map(|e| (format!("{:?}", e.content), e.id)).collect()
    }

    #[tokio::test]
    async fn a_grouped_batch_writes_what_units_one_by_one_write() {
        let (_a, grouped_store, claims) = prepared().await;
        let (_b, single_store, same_claims) = prepared().await;
        assert_eq!(claims, same_claims);
        let grouped_outcomes = grouped(&grouped_store, &units(&claims)).await.expect("every check holds");
        let mut single_outcomes = Vec::new();
        for commit in units(&claims) {
            single_outcomes.push(single_store.commit(commit).await.unwrap());
        }
        assert_eq!(grouped_outcomes, single_outcomes);
        assert_eq!(grouped_outcomes[1].scheduled.len(), 1);
        for contact in ["c1", "c2", "c3"] {
            assert_eq!(log_rows(&grouped_store, contact).await, log_rows(&single_store, contact).await);
            let key = chat(contact).session("f");
            let (g, s) =
                (grouped_store.load_session(&key).await.unwrap(), single_store.load_session(&key).await.unwrap());
            assert_eq!(
                g.map(|s| (s.id, s.version, s.status, s.flow_version)),
                s.map(|s| (s.id, s.version, s.status, s.flow_version))
            );
        }
        let moved = grouped_store.load_session(&chat("c1").session("f")).await.unwrap().unwrap();
        assert_eq!(moved.flow_version, 4, "an update records the flow version it names");
        for claim in &claims {
            let (g, s) = (
                grouped_store.get_inbox("o", claim.id).await.unwrap(),
                single_store.get_inbox("o", claim.id).await.unwrap(),
            );
            assert_eq!(g.map(|e| e.status), s.map(|e| e.status));
        }
        let wake = grouped_outcomes[1].scheduled[0].id();
        assert_eq!(
            grouped_store.get_inbox("o", wake).await.unwrap().map(|e| e.message_id),
            Some("wake:c2:1".to_owned())
        ); // c2's new session records its cohort, as one saved alone does.
        for store in [&grouped_store, &single_store] {
            assert_eq!(
                session_cohorts(store).await,
                [("c1", Some("ab/f")), ("c2", Some("ab/f")), ("c3", Some("ab/f"))]
                    .map(|(c, k)| (c.to_owned(), k.map(str::to_owned)))
            );
        }
    }

    async fn session_cohorts(store: &SqliteStore) -> Vec<(String, Option<String>)> {
        sqlx::query_as("SELECT contact_id, cohort FROM sessions ORDER BY contact_id")
            .fetch_all(store.pool())
            .await
            .unwrap()
    }

    /// Claimed replies, grouped or one unit at a time: `c1` has an earlier unfinished reply,
    /// so only `c2`'s two are claimed, in order, until the lease.
    async fn claimed_as_written(grouped_batch: bool) {
        let (_dir, store, claims) = prepared().await;
        let earlier = store.enqueue_outbox("o", &[reply("c1", "earlier")]).await.unwrap()[0];
        let lease = at(65);
        // Without a wake-up: a unit that schedules one runs statement by statement, leaving
        // its replies to a claim.
        let commits: Vec<Commit> = unit_fixtures::units(&claims)
            .into_iter()
            .map(|c| Commit { claim_replies_until: Some(lease), ..c })
            .collect();
        let outcomes = if grouped_batch {
            grouped(&store, &commits).await.expect("every check holds")
        } else {
            let mut outcomes = Vec::new();
            for commit in commits.clone() {
                outcomes.push(store.commit(commit).await.unwrap());
            }
            outcomes
        };
        assert!(outcomes[0].claimed_replies.is_empty(), "c1 has an unfinished reply before these");
        let claimed: Vec<(i64, i64, Option<Timestamp>)> =
            outcomes[1].claimed_replies.iter().map(|m| (m.id, m.attempts, m.lease_until)).collect();
        let ids = &outcomes[1].outbox_ids;
        assert_eq!(claimed, [(ids[0], 1, Some(lease)), (ids[1], 1, Some(lease))], "both of c2's, in order");
        assert_eq!(outcomes[1].claimed_replies[1].payload, commits[1].outbox[1].payload);
        for (id, status) in [(outcomes[0].outbox_ids[0], QueueStatus::Pending), (ids[0], QueueStatus::Claimed)] {
            assert_eq!(store.get_outbox("o", id).await.unwrap().unwrap().status, status);
        }

        // A claim finds only c1's first reply: c2's are out with this caller.
        let request = ClaimRequest::for_org("o", at(6), Duration::from_secs(60), 10);
        let found = store.claim_outbox(&request).await.unwrap();
        assert_eq!(found.iter().map(|m| m.id).collect::<Vec<_>>(), [earlier]);
        for reply in &outcomes[1].claimed_replies {
            store.mark_sent("o", reply.claim(), "wamid", at(7)).await.unwrap();
            let request = ClaimRequest::for_org("o", at(7), Duration::from_secs(60), 10);
            assert!(store.claim_outbox(&request).await.unwrap().is_empty(), "the next one is still ours");
        }
        // c1's later reply is its conversation's head once the earlier one is sent.
        store.mark_sent("o", found[0].claim(), "wamid", at(8)).await.unwrap();
        let request = ClaimRequest::for_org("o", at(8), Duration::from_secs(60), 10);
        let found: Vec<i64> = store.claim_outbox(&request).await.unwrap().iter().map(|m| m.id).collect();
        assert_eq!(found, outcomes[0].outbox_ids);
    }

    #[tokio::test]
    async fn replies_are_claimed_as_written_when_they_go_first() {
        claimed_as_written(true).await;
        claimed_as_written(false).await;

        // Two units writing to one conversation: neither claims its replies there.
        let (_dir, store, claims) = prepared().await;
        let mut commits: Vec<Commit> =
            units(&claims).into_iter().map(|c| Commit { claim_replies_until: Some(at(65)), ..c }).collect();
        commits[2].outbox.push(reply("c2", "from c3's turn"));
        let outcomes = grouped(&store, &commits).await.expect("written");
        let claimed: Vec<usize> = outcomes.iter().map(|o| o.claimed_replies.len()).collect();
        assert_eq!(claimed, [1, 0, 0], "only c1's, alone in its conversation");
        // Not asked, not claimed.
        let (_dir, store, claims) = prepared().await;
        let outcomes = grouped(&store, &units(&claims)).await.expect("written");
        assert!(outcomes.iter().all(|o| o.claimed_replies.is_empty()));
    }

    #[test]
    fn units_that_share_a_session_a_claim_or_a_wake_up_are_not_grouped() {
        let claims = [Claim { id: 1, attempt: 1 }, Claim { id: 2, attempt: 1 }, Claim { id: 3, attempt: 1 }];
        let distinct = units(&claims);
        assert!(worth_grouping(&distinct.iter().collect::<Vec<_>>()));
        for share in 0..3 {
            let mut commits = units(&claims);
            match share {
                0 => commits[2].session = commits[0].session.clone(),
                1 => commits[2].inbox_done = commits[0].inbox_done,
                _ => commits[0].schedule = commits[1].schedule.clone(),
            }
            assert!(!worth_grouping(&commits.iter().collect::<Vec<_>>()), "sharing {share}");
        }
    }

    #[tokio::test]
    async fn a_refused_check_leaves_nothing_of_the_group() {
        for spoil in 0..4 {
            let (_dir, store, claims) = prepared().await;
            let mut commits = units(&claims);
            match spoil {
                // A stale version, a lost lease, a session created meanwhile, a wake-up
                // scheduled already.
                0 => commits[0].session.as_mut().unwrap().expected_version = 7,
                1 => commits[1].inbox_done = Some(Claim { attempt: 9, ..claims[1] }),
                2 => drop(store.save_session(save("c2", 0, SessionStatus::Active)).await.unwrap()),
                _ => {
                    store
                        .insert_inbox(NewInboxEvent::wake_up(chat("c2"), "wake:c2:1", json!({}), at(1), at(60)))
                        .await
                        .unwrap();
                }
            }
            assert_eq!(grouped(&store, &commits).await, None, "spoiled unit {spoil}");
            for contact in ["c1", "c2", "c3"] {
                assert_eq!(log_rows(&store, contact).await, vec![], "spoiled unit {spoil}");
            }
            assert_eq!(store.load_session(&chat("c1").session("f")).await.unwrap().unwrap().version, 1);
            let c2 = store.load_session(&chat("c2").session("f")).await.unwrap();
            assert_eq!(c2.map(|s| s.version), (spoil == 2).then_some(1));
            // The batch through the writer: the refused unit alone fails.
            let results: Vec<_> = futures_util::future::join_all(commits.into_iter().map(|c| store.commit(c))).await;
            match spoil {
                0 => assert!(matches!(results[0], Err(StoreError::Conflict { .. })), "{results:?}"),
                1 => assert!(matches!(results[1], Err(StoreError::LeaseLost { .. })), "{results:?}"),
                2 => assert!(matches!(results[1], Err(StoreError::Conflict { .. })), "{results:?}"),
                _ => assert!(matches!(results[1].as_ref().unwrap().scheduled[0], InboxInsert::Duplicate(_))),
            }
            let failed = match spoil {
                0 => Some(0),
                1 | 2 => Some(1),
                _ => None,
            };
            for (i, result) in results.iter().enumerate() {
                assert_eq!(result.is_ok(), Some(i) != failed, "unit {i} with unit {spoil} spoiled: {results:?}");
            }
        }
    }
}
