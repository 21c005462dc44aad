//! Units of work as one call of `flowcore_commit_units` (defined in the schema), however many
//! a batch holds.
//!
//! Every part of every unit (handled inbox rows, session saves, log rows, replies) is bound
//! as a column array, so the call is one prepared statement, one round trip per batch, and
//! outside a transaction its own transaction. One statement per unit made a batch of eight
//! pay eight round trips, plannings and executor start-ups, and its commit (the WAL flush
//! every caller waits for) came that much later.
//!
//! The function checks before it writes (see its definition). If a check fails it writes
//! nothing and says so; the caller then runs the units one at a time (a batch of one is
//! this same call), where each refusal is diagnosed on its own. Refusals are rare (a lost
//! race, a lost lease), so the common batch costs one call. A write that falls short of what
//! the checks promised is an error: the transaction is rolled back, never half applied.

use std::collections::{HashMap, HashSet};

use flowcore::Timestamp;
use sqlx::postgres::PgRow;
use sqlx::Row;

use super::{ConversationLocks, LOCK_SPACE};
use crate::error::{StoreError, StoreResult};
use crate::sql_rows::{json_col, ReplyClaims};
use crate::state;
use crate::types::{
    Commit, CommitOutcome, ConversationKey, InboxEvent, InboxKind, OutboxMessage, QueueStatus, SavedSession,
    SessionStatus, SessionWrite,
};

/// The call; its parameters are in the order [`Columns::bind`] binds them.
const COMMIT_UNITS: &str = "SELECT * FROM flowcore_commit_units($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12,
    $13, $14, $15, $16, $17, $18, $19, $20, $21, $22, $23, $24, $25, $26, $27, $28, $29, $30, $31, $32, $33, $34, $35,
    $36, $37, $38, $39, $40, $41, $42, $43, $44, $45, $46, $47, $48, $49, $50, $51, $52)";

/// Whether `commits` can share one call: no two save the same session or handle the same
/// inbox row (one statement cannot apply two changes to one row).
pub(super) fn can_share_a_statement(commits: &[&Commit]) -> bool {
    let mut sessions = HashSet::with_capacity(commits.len());
    let mut claims = HashSet::with_capacity(commits.len());
    commits.iter().all(|c| {
        c.session.as_ref().is_none_or(|w| sessions.insert(&w.key)) && c.inbox_done.is_none_or(|k| claims.insert(k.id))
    })
}

/// What came of the call.
pub(super) enum UnitsWritten {
    /// Every check held: each unit's outcome, in order (without its wake-ups, which the
    /// caller schedules).
    Written(Vec<CommitOutcome>),
    /// A check failed and nothing was written. `claims_held`: every handled inbox row was
    /// still claimed as the units said.
    Refused { claims_held: bool },
}

/// Writes `commits` (see [`can_share_a_statement`]) in one call, on `executor`: a
/// transaction, or a connection of the pool (the call is then its own transaction).
pub(super) async fn commit_units<'e>(
    executor: impl sqlx::PgExecutor<'e>,
    commits: &[&Commit],
) -> Result<UnitsWritten, CallFailed> {
    let columns = Columns::of(commits);
    let counts = columns.counts();
    let mut locks = ConversationLocks::default();
    commits.iter().for_each(|commit| locks.commit_conversations(commit));
    let query = sqlx::query(COMMIT_UNITS).bind(LOCK_SPACE).bind(locks.orgs).bind(locks.numbers).bind(locks.contacts);
    let row = columns.bind(query).fetch_one(executor).await.map_err(CallFailed::from)?;
    // From here on the call went through: an error reading its answer leaves it unknown.
    let read = |e: sqlx::Error| CallFailed::Unknown(e.into());
    if !row.try_get::<Option<bool>, _>("units_ok").map_err(read)?.unwrap_or(false) {
        let claims_held = row.try_get::<i64, _>("claims_held").map_err(read)? == counts.claims as i64;
        return Ok(UnitsWritten::Refused { claims_held });
    }
    let written = Written {
        updated_ids: row.try_get("updated_ids").map_err(read)?,
        updated_versions: row.try_get("updated_versions").map_err(read)?,
        created_ids: row.try_get("created_ids").map_err(read)?,
        done: row.try_get("done_count").map_err(read)?,
        log_ids: row.try_get("log_ids").map_err(read)?,
        outbox_ids: row.try_get("outbox_ids").map_err(read)?,
        outbox_claimed: row.try_get("outbox_claimed").map_err(read)?,
        next: ClaimedNext::read(&row).map_err(read)?,
    };
    written.check(&counts).map_err(CallFailed::Unknown)?;
    Ok(UnitsWritten::Written(written.outcomes(commits)))
}

/// Why a call of `flowcore_commit_units` failed.
#[derive(Debug)]
pub(super) enum CallFailed {
    /// PostgreSQL refused it (and rolled it back), or it never reached PostgreSQL: nothing
    /// of it was written.
    NothingWritten(StoreError),
    /// The link failed on the way, or the answer made no sense: outside a transaction, it
    /// may have been committed.
    Unknown(StoreError),
}

impl From<sqlx::Error> for CallFailed {
    fn from(e: sqlx::Error) -> Self {
        match e {
            sqlx::Error::Database(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed => {
                CallFailed::NothingWritten(e.into())
            }
            other => CallFailed::Unknown(other.into()),
        }
    }
}

impl From<CallFailed> for StoreError {
    fn from(e: CallFailed) -> Self {
        match e {
            CallFailed::NothingWritten(e) | CallFailed::Unknown(e) => e,
        }
    }
}

/// How many rows of each kind the units write.
struct Counts {
    claims: usize,
    updates: usize,
    creates: usize,
    log: usize,
    outbox: usize,
}

/// What the call wrote, each kind of row in unit order.
struct Written {
    updated_ids: Vec<i64>,
    updated_versions: Vec<i64>,
    created_ids: Vec<i64>,
    done: i64,
    log_ids: Vec<i64>,
    outbox_ids: Vec<i64>,
    /// Whether each reply was claimed as it was written.
    outbox_claimed: Vec<bool>,
    /// The next inbox events claimed for the units, by the handled row each follows.
    next: ClaimedNext,
}

/// The next inbox events the call claimed (see [`Commit::claim_next_until`]), as the
/// function returns them: one column array per field, `after` the handled row each follows.
struct ClaimedNext {
    after: Vec<i64>,
    ids: Vec<i64>,
    numbers: Vec<String>,
    contacts: Vec<String>,
    messages: Vec<String>,
    kinds: Vec<String>,
    payloads: Vec<String>,
    received: Vec<i64>,
    due: Vec<i64>,
    attempts: Vec<i64>,
    leases: Vec<Option<i64>>,
    retry: Vec<Option<i64>>,
    errors: Vec<Option<String>>,
}

impl ClaimedNext {
    /// Reads the arrays, each as long as `next_after`.
    fn read(row: &PgRow) -> Result<ClaimedNext, sqlx::Error> {
        let after: Vec<i64> = row.try_get("next_after")?;
        let column = ColumnArrays { row, len: after.len() };
        Ok(ClaimedNext {
            ids: column.get("next_ids")?,
            numbers: column.get("next_numbers")?,
            contacts: column.get("next_contacts")?,
            messages: column.get("next_messages")?,
            kinds: column.get("next_kinds")?,
            payloads: column.get("next_payloads")?,
            received: column.get("next_received")?,
            due: column.get("next_due")?,
            attempts: column.get("next_attempts")?,
            leases: column.get("next_leases")?,
            retry: column.get("next_retry")?,
            errors: column.get("next_errors")?,
            after,
        })
    }

    /// The events by the handled row each follows, in the organization of that row's unit.
    /// Every array is as long as `after` (see [`ClaimedNext::read`]).
    fn into_events(mut self, commits: &[&Commit]) -> HashMap<i64, Box<InboxEvent>> {
        let org_of: HashMap<i64, &str> =
            commits.iter().filter_map(|c| c.inbox_done.map(|k| (k.id, c.org_id.as_str()))).collect();
        let mut events = HashMap::with_capacity(self.after.len());
        for (i, after) in self.after.iter().copied().enumerate() {
            let Some(org) = org_of.get(&after) else { continue };
            let event = InboxEvent {
                id: self.ids[i],
                conversation: ConversationKey::new(
                    *org,
                    std::mem::take(&mut self.numbers[i]),
                    std::mem::take(&mut self.contacts[i]),
                ),
                message_id: std::mem::take(&mut self.messages[i]),
                kind: InboxKind::parse(&self.kinds[i]),
                payload: json_col(&self.payloads[i]),
                received_at: Timestamp::from_unix_millis(self.received[i]),
                due_at: Timestamp::from_unix_millis(self.due[i]),
                status: QueueStatus::Claimed,
                attempts: self.attempts[i],
                lease_until: self.leases[i].map(Timestamp::from_unix_millis),
                retry_at: self.retry[i].map(Timestamp::from_unix_millis),
                last_error: self.errors[i].take(),
            };
            events.insert(after, Box::new(event));
        }
        events
    }
}

/// A row's column arrays that must all be `len` long.
struct ColumnArrays<'r> {
    row: &'r PgRow,
    len: usize,
}

impl ColumnArrays<'_> {
    fn get<T>(&self, name: &str) -> Result<Vec<T>, sqlx::Error>
    where
        for<'v> Vec<T>: sqlx::Decode<'v, sqlx::Postgres> + sqlx::Type<sqlx::Postgres>,
    {
        let values: Vec<T> = self.row.try_get(name)?;
        if values.len() == self.len {
            Ok(values)
        } else {
            Err(sqlx::Error::Decode(format!("{name}: {} values, expected {}", values.len(), self.len).into()))
        }
    }
}

impl Written {
    /// Every row the checks promised was written (the function raises an error otherwise;
    /// this guards the mapping of ids to units).
    fn check(&self, counts: &Counts) -> StoreResult<()> {
        let complete = self.updated_ids.len() == counts.updates
            && self.updated_versions.len() == counts.updates
            && self.created_ids.len() == counts.creates
            && self.done == counts.claims as i64
            && self.log_ids.len() == counts.log
            && self.outbox_ids.len() == counts.outbox
            && self.outbox_claimed.len() == counts.outbox
            && self.next.ids.len() <= counts.claims;
        if complete {
            Ok(())
        } else {
            Err(StoreError::Database(
                "units of work: a row the checks promised was not written (a session written outside the store?)"
                    .into(),
            ))
        }
    }

    /// Hands each unit its rows, in unit order.
    fn outcomes(self, commits: &[&Commit]) -> Vec<CommitOutcome> {
        let mut updated = self.updated_ids.into_iter().zip(self.updated_versions);
        let mut created = self.created_ids.into_iter();
        let mut log = self.log_ids.into_iter();
        let mut outbox = self.outbox_ids.into_iter().zip(self.outbox_claimed);
        let mut claimed_next = self.next.into_events(commits);
        commits
            .iter()
            .map(|commit| {
                let session = commit.session.as_ref().and_then(|w| {
                    if w.expected_version == 0 {
                        created.next().map(|id| SavedSession { id, version: 1 })
                    } else {
                        updated.next().map(|(id, version)| SavedSession { id, version })
                    }
                });
                let replies: Vec<(i64, bool)> = outbox.by_ref().take(commit.outbox.len()).collect();
                let claimed_replies = match commit.claim_replies_until {
                    Some(lease) => replies
                        .iter()
                        .zip(&commit.outbox)
                        .filter(|((_, claimed), _)| *claimed)
                        .map(|((id, _), reply)| OutboxMessage::claimed_on_insert(*id, reply, lease))
                        .collect(),
                    None => Vec::new(),
                };
                CommitOutcome {
                    session,
                    log_ids: log.by_ref().take(commit.log.len()).collect(),
                    outbox_ids: replies.iter().map(|(id, _)| *id).collect(),
                    scheduled: Vec::new(),
                    claimed_replies,
                    claimed_next: commit.inbox_done.and_then(|k| claimed_next.remove(&k.id)),
                }
            })
            .collect()
    }
}

/// The call's parameters after the locks'.
#[derive(Default)]
struct Columns<'c> {
    claim_org: Vec<&'c str>,
    claim_id: Vec<i64>,
    claim_attempt: Vec<i64>,
    claim_now: Vec<i64>,
    /// The lease's end for the next inbox event of a handled row's conversation, claimed as
    /// the row is done (see [`Commit::claim_next_until`]).
    claim_next_until: Vec<Option<i64>>,
    updates: SessionColumns<'c>,
    /// The flow version each update names, beside `updates`.
    update_flow_versions: Vec<i64>,
    creates: SessionColumns<'c>,
    /// The new sessions' cohorts, beside `creates`.
    create_cohorts: Vec<Option<&'c str>>,
    log: LogColumns<'c>,
    outbox: OutboxColumns<'c>,
}

/// Session saves; `version` is the expected version of an update, the flow version of a
/// new session.
#[derive(Default)]
struct SessionColumns<'c> {
    org: Vec<&'c str>,
    number: Vec<&'c str>,
    contact: Vec<&'c str>,
    flow: Vec<&'c str>,
    version: Vec<i64>,
    status: Vec<&'static str>,
    state: Vec<String>,
    node: Vec<Option<String>>,
    wake: Vec<Option<i64>>,
    now: Vec<i64>,
    closed: Vec<Option<i64>>,
}

#[derive(Default)]
struct LogColumns<'c> {
    org: Vec<&'c str>,
    number: Vec<&'c str>,
    contact: Vec<&'c str>,
    flow: Vec<Option<&'c str>>,
    direction: Vec<&'static str>,
    text: Vec<Option<&'c str>>,
    json: Vec<Option<String>>,
    node: Vec<Option<&'c str>>,
    wamid: Vec<Option<&'c str>>,
    at: Vec<i64>,
    metadata: Vec<String>,
}

#[derive(Default)]
struct OutboxColumns<'c> {
    org: Vec<&'c str>,
    number: Vec<&'c str>,
    contact: Vec<&'c str>,
    payload: Vec<String>,
    inbox_id: Vec<Option<i64>>,
    due_at: Vec<i64>,
    /// The lease's end for a reply claimed as it is written (see [`ReplyClaims::lease`]).
    claim_until: Vec<Option<i64>>,
}

impl<'c> SessionColumns<'c> {
    fn push(&mut self, w: &'c SessionWrite, version: i64) {
        let (node, wake) = state::meta(&w.session);
        let now = w.now.as_unix_millis();
        self.org.push(&w.key.org_id);
        self.number.push(&w.key.business_number_id);
        self.contact.push(&w.key.contact_id);
        self.flow.push(&w.key.flow_id);
        self.version.push(version);
        self.status.push(w.status.as_str());
        self.state.push(state::encode(&w.session));
        self.node.push(node);
        self.wake.push(wake.map(Timestamp::as_unix_millis));
        self.now.push(now);
        self.closed.push((w.status == SessionStatus::Closed).then_some(now));
    }
}

impl<'c> Columns<'c> {
    fn of(commits: &[&'c Commit]) -> Columns<'c> {
        let reply_claims = ReplyClaims::of(commits);
        let mut c = Columns::default();
        for commit in commits {
            if let Some(claim) = commit.inbox_done {
                c.claim_org.push(&commit.org_id);
                c.claim_id.push(claim.id);
                c.claim_attempt.push(claim.attempt);
                c.claim_now.push(commit.now.as_unix_millis());
                // A wake-up the unit schedules is inserted after the call, and could come
                // before the event the call would claim: that one is left to a claim.
                let next = commit.claim_next_until.filter(|_| commit.schedule.is_empty());
                c.claim_next_until.push(next.map(Timestamp::as_unix_millis));
            }
            match &commit.session {
                Some(w) if w.expected_version == 0 => {
                    c.creates.push(w, w.flow_version);
                    c.create_cohorts.push(w.cohort.as_deref());
                }
                Some(w) => {
                    c.updates.push(w, w.expected_version);
                    c.update_flow_versions.push(w.flow_version);
                }
                None => {}
            }
            for e in &commit.log {
                let (text, json) = e.content.to_columns();
                let l = &mut c.log;
                l.org.push(&commit.org_id);
                l.number.push(&e.conversation.business_number_id);
                l.contact.push(&e.conversation.contact_id);
                l.flow.push(e.flow_id.as_deref());
                l.direction.push(e.direction.as_str());
                l.text.push(text);
                l.json.push(json);
                l.node.push(e.node_id.as_deref());
                l.wamid.push(e.wamid.as_deref());
                l.at.push(e.at.as_unix_millis());
                l.metadata.push(e.metadata.to_string());
            }
            for m in &commit.outbox {
                let o = &mut c.outbox;
                o.org.push(&commit.org_id);
                o.number.push(&m.conversation.business_number_id);
                o.contact.push(&m.conversation.contact_id);
                o.payload.push(m.payload.to_string());
                o.inbox_id.push(m.inbox_id);
                o.due_at.push(m.due_at.as_unix_millis());
                let claim = reply_claims.lease(commit, m);
                o.claim_until.push(claim.map(Timestamp::as_unix_millis));
            }
        }
        c
    }

    fn counts(&self) -> Counts {
        Counts {
            claims: self.claim_id.len(),
            updates: self.updates.org.len(),
            creates: self.creates.org.len(),
            log: self.log.org.len(),
            outbox: self.outbox.org.len(),
        }
    }

    fn bind<'q>(self, query: PgQuery<'q>) -> PgQuery<'q>
    where
        'c: 'q,
    {
        let query = query.bind(self.claim_org).bind(self.claim_id).bind(self.claim_attempt).bind(self.claim_now);
        let query = self.updates.bind(query).bind(self.update_flow_versions);
        let query = self.creates.bind(query).bind(self.create_cohorts).bind(state::STATE_SCHEMA_VERSION);
        let l = self.log;
        let query = query
            .bind(l.org)
            .bind(l.number)
            .bind(l.contact)
            .bind(l.flow)
            .bind(l.direction)
            .bind(l.text)
            .bind(l.json)
            .bind(l.node)
            .bind(l.wamid)
            .bind(l.at)
            .bind(l.metadata);
        let o = self.outbox;
        query
            .bind(o.org)
            .bind(o.number)
            .bind(o.contact)
            .bind(o.payload)
            .bind(o.inbox_id)
            .bind(o.due_at)
            .bind(o.claim_until)
            .bind(self.claim_next_until)
    }
}

type PgQuery<'q> = sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>;

impl<'c> SessionColumns<'c> {
    fn bind<'q>(self, query: PgQuery<'q>) -> PgQuery<'q>
    where
        'c: 'q,
    {
        query
            .bind(self.org)
            .bind(self.number)
            .bind(self.contact)
            .bind(self.flow)
            .bind(self.version)
            .bind(self.status)
            .bind(self.state)
            .bind(self.node)
            .bind(self.wake)
            .bind(self.now)
            .bind(self.closed)
    }
}

/// Run when `FLOWCORE_TEST_POSTGRES_URL` is set, each store in a fresh schema dropped at the
/// end (see `tests/postgres.rs`).
#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use std::time::Duration;

    use crate::traits::{Inbox, MessageLog, Organizations, Outbox, SessionStore, Store};
    use crate::types::{Claim, ClaimRequest, NewInboxEvent, NewOutboxMessage, Page, QueueStatus};
    use crate::unit_fixtures::{at, chat, claims_in_contact_order, reply, save, units, FreshPostgres as Fresh};
    use crate::PostgresStore;

    /// A store where `c1` and `c3` have a session (version 1) and `c1`..`c3` one claimed
    /// message each, with a second message waiting behind `c2`'s; the claims in contact order.
    async fn prepared() -> Option<(Fresh, Vec<Claim>)> {
        let fresh = Fresh::open().await?;
        let store = &fresh.store;
        store.register_organization("o").await.unwrap();
        for contact in ["c1", "c3"] {
            store.save_session(save(contact, 0, SessionStatus::Active)).await.unwrap();
        }
        for (contact, message) in [("c1", "m1"), ("c2", "m2"), ("c3", "m3"), ("c2", "m2-next")] {
            store.insert_inbox(NewInboxEvent::message(chat(contact), message, json!({}), at(0))).await.unwrap();
        }
        let claims = claims_in_contact_order(store).await;
        Some((fresh, claims))
    }

    async fn grouped(store: &PostgresStore, commits: &[Commit]) -> UnitsWritten {
        let units: Vec<&Commit> = commits.iter().collect();
        assert!(can_share_a_statement(&units));
        commit_units(store.pool(), &units).await.unwrap()
    }

    /// Everything the units may have written, to compare two stores.
    async fn contents(store: &PostgresStore) -> Vec<String> {
        let mut out = Vec::new();
        for contact in ["c1", "c2", "c3"] {
            let log = store.history(&chat(contact), Page::first(100)).await.unwrap();
            out.push(format!("{contact} log {:?}", log.iter().map(|e| (e.id, &e.content)).collect::<Vec<_>>()));
            let session = store.load_session(&chat(contact).session("f")).await.unwrap();
            out.push(format!("{contact} {:?}", session.map(|s| (s.id, s.version, s.status, s.flow_version))));
        }
        let rows: Vec<(String, i64, String, bool)> =
            sqlx::query_as("SELECT 'inbox', id, status, head FROM inbox UNION ALL SELECT 'outbox', id, status, head FROM outbox ORDER BY 1, 2")
                .fetch_all(store.pool())
                .await
                .unwrap();
        out.extend(rows.iter().map(|row| format!("{row:?}")));
        let cohorts: Vec<(String, Option<String>)> =
            sqlx::query_as("SELECT contact_id, cohort FROM sessions ORDER BY contact_id, id")
                .fetch_all(store.pool())
                .await
                .unwrap();
        out.extend(cohorts.iter().map(|row| format!("cohort {row:?}")));
        out
    }

    #[tokio::test]
    async fn a_grouped_call_writes_what_units_one_by_one_write() {
        let Some((grouped_store, claims)) = prepared().await else { return };
        let (single_store, same_claims) = prepared().await.unwrap();
        assert_eq!(claims, same_claims);
        let UnitsWritten::Written(grouped_outcomes) = grouped(&grouped_store.store, &units(&claims)).await else {
            panic!("every check holds");
        };
        let mut single_outcomes = Vec::new();
        for commit in units(&claims) {
            single_outcomes.push(single_store.store.commit(commit).await.unwrap());
        }
        assert_eq!(grouped_outcomes, single_outcomes);
        assert_eq!(grouped_outcomes[1].outbox_ids.len(), 2);
        let written = contents(&grouped_store.store).await;
        assert_eq!(written, contents(&single_store.store).await);
        // c2's next message became its conversation's head; of c2's replies only the first is one.
        assert!(written.iter().any(|row| row.starts_with("(\"inbox\", 4, \"pending\", true)")), "{written:#?}");
        assert!(written.iter().any(|row| row.starts_with("(\"outbox\", 3, \"pending\", false)")), "{written:#?}");
        // c2's new session records its cohort, as one saved alone does.
        assert!(written.contains(&r#"cohort ("c2", Some("ab/f"))"#.to_owned()), "{written:#?}");
        grouped_store.drop_schema().await;
        single_store.drop_schema().await;
    }

    #[tokio::test]
    async fn a_refused_check_leaves_nothing_of_the_call() {
        for spoil in 0..3 {
            let Some((fresh, claims)) = prepared().await else { return };
            let store = &fresh.store;
            let before = contents(store).await;
            let mut commits = units(&claims);
            match spoil {
                // A stale version, a lost lease, a session created meanwhile.
                0 => commits[0].session.as_mut().unwrap().expected_version = 7,
                1 => commits[1].inbox_done = Some(Claim { attempt: 9, ..claims[1] }),
                _ => {
                    store.save_session(save("c2", 0, SessionStatus::Active)).await.unwrap();
                }
            }
            let before = if spoil == 2 { contents(store).await } else { before };
            let UnitsWritten::Refused { claims_held } = grouped(store, &commits).await else {
                panic!("spoiled unit {spoil} was written");
            };
            assert_eq!(claims_held, spoil != 1, "spoiled unit {spoil}");
            assert_eq!(contents(store).await, before, "spoiled unit {spoil}");
            // The same units through the store's group commit: the refused one alone fails.
            let results: Vec<_> = futures_util::future::join_all(commits.into_iter().map(|c| store.commit(c))).await;
            let refused = spoil.min(1);
            for (i, result) in results.iter().enumerate() {
                match result {
                    Err(StoreError::Conflict { .. }) if i == refused && spoil != 1 => {}
                    Err(StoreError::LeaseLost { .. }) if i == refused && spoil == 1 => {}
                    Ok(_) if i != refused => {}
                    other => panic!("unit {i} with unit {spoil} spoiled: {other:?}"),
                }
            }
            fresh.drop_schema().await;
        }
    }

    /// A turn's session update is a heap-only tuple (no index entry), so lookups do not walk
    /// one dead index entry per earlier turn; closing a session is not, its status is indexed.
    #[tokio::test]
    async fn a_turn_updates_its_session_in_place() {
        let Some((fresh, claims)) = prepared().await else { return };
        let mut commits = units(&claims);
        for commit in &mut commits {
            commit.session.as_mut().expect("each unit saves its session").now = at(6);
        }
        let units: Vec<&Commit> = commits.iter().collect();
        let mut tx = fresh.store.pool().begin().await.unwrap();
        let UnitsWritten::Written(_) = commit_units(&mut *tx, &units).await.unwrap() else { panic!("written") };
        let (updated, in_place): (i64, i64) = sqlx::query_as(
            "SELECT pg_stat_get_xact_tuples_updated('sessions'::regclass),
                    pg_stat_get_xact_tuples_hot_updated('sessions'::regclass)",
        )
        .fetch_one(&mut *tx)
        .await
        .unwrap();
        assert_eq!((updated, in_place), (2, 1), "c1's turn in place, c3's close not");
        tx.rollback().await.unwrap();
        fresh.drop_schema().await;
    }

    /// Whether a unit's replies are claimed as they are written is decided from their
    /// conversation's replies alone: however many replies other conversations have waiting,
    /// the call reads a few entries of `outbox_open_conversation`, not all of them (a `NOT
    /// EXISTS` planned as a hashed subplan would read every unfinished reply per call).
    #[tokio::test]
    async fn the_replies_claim_test_reads_only_their_conversation() {
        let Some((fresh, claims)) = prepared().await else { return };
        let store = &fresh.store;
        const WAITING: usize = 300;
        let waiting: Vec<NewOutboxMessage> = (0..WAITING).map(|i| reply(&format!("other-{i}"), "waiting")).collect();
        store.enqueue_outbox("o", &waiting).await.unwrap();
        let commits: Vec<Commit> =
            units(&claims).into_iter().map(|c| Commit { claim_replies_until: Some(at(65)), ..c }).collect();
        let units: Vec<&Commit> = commits.iter().collect();
        let mut tx = store.pool().begin().await.unwrap();
        let UnitsWritten::Written(outcomes) = commit_units(&mut *tx, &units).await.unwrap() else { panic!("written") };
        assert!(outcomes.iter().any(|o| !o.claimed_replies.is_empty()), "the test ran: some replies were claimed");
        // Entries this transaction's scans read off the index (its own counters: no wait for
        // the statistics to be flushed).
        let read: i64 =
            sqlx::query_scalar("SELECT pg_stat_get_xact_tuples_returned('outbox_open_conversation'::regclass)")
                .fetch_one(&mut *tx)
                .await
                .unwrap();
        assert!(read < 50, "{read} entries of outbox_open_conversation read for 3 units' replies");
        tx.rollback().await.unwrap();
        fresh.drop_schema().await;
    }

    /// Units that ask for it get their replies claimed as they are written, unless their
    /// conversation has an unfinished reply already or another unit of the call writes to it.
    #[tokio::test]
    async fn replies_are_claimed_as_written_when_they_go_first() {
        let Some((fresh, claims)) = prepared().await else { return };
        let store = &fresh.store;
        let functions: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_proc WHERE proname = 'flowcore_commit_units' AND pronamespace = current_schema()::regnamespace",
        )
        .fetch_one(store.pool())
        .await
        .unwrap();
        assert_eq!(functions, 1, "one definition of the function");
        // The claimed rows' lookups (the units' call's and the claim changes') test the status
        // in a form the partial index of claimed rows cannot serve.
        for (function, patched) in [
            ("flowcore_commit_units", "AND CASE WHEN i.status = 'claimed' THEN true END"),
            ("flowcore_finish_inbox_rows", "AND CASE WHEN q.status = 'claimed' THEN true END"),
            ("flowcore_finish_outbox_rows", "AND CASE WHEN q.status = 'claimed' THEN true END"),
        ] {
            let definition: String = sqlx::query_scalar(
                "SELECT pg_get_functiondef(p.oid) FROM pg_proc p
                 WHERE p.proname = $1 AND p.pronamespace = current_schema()::regnamespace",
            )
            .bind(function)
            .fetch_one(store.pool())
            .await
            .unwrap();
            assert_eq!(definition.matches(patched).count(), 1, "{function}");
            assert!(
                !definition.contains("AND i.status = 'claimed'") && !definition.contains("AND q.status = 'claimed'")
            );
        }
        let earlier = store.enqueue_outbox("o", &[reply("c1", "earlier")]).await.unwrap()[0];
        let lease = at(65);
        let commits: Vec<Commit> =
            units(&claims).into_iter().map(|c| Commit { claim_replies_until: Some(lease), ..c }).collect();
        let UnitsWritten::Written(outcomes) = grouped(store, &commits).await else { panic!("every check holds") };
        assert!(outcomes[0].claimed_replies.is_empty(), "c1 has an unfinished reply before these");
        let claimed: Vec<(i64, i64, Option<Timestamp>)> =
            outcomes[1].claimed_replies.iter().map(|m| (m.id, m.attempts, m.lease_until)).collect();
        let ids = &outcomes[1].outbox_ids;
        assert_eq!(claimed, [(ids[0], 1, Some(lease)), (ids[1], 1, Some(lease))], "both of c2's, in order");
        assert_eq!(outcomes[1].claimed_replies[1].payload, commits[1].outbox[1].payload);

        // A claim finds only c1's first reply: c2's are out with this caller.
        let request = ClaimRequest::for_org("o", at(6), Duration::from_secs(60), 10);
        let found: Vec<i64> = store.claim_outbox(&request).await.unwrap().iter().map(|m| m.id).collect();
        assert_eq!(found, [earlier]);
        for reply in &outcomes[1].claimed_replies {
            store.mark_sent("o", reply.claim(), "wamid", at(7)).await.unwrap();
            let request = ClaimRequest::for_org("o", at(7), Duration::from_secs(60), 10);
            assert!(store.claim_outbox(&request).await.unwrap().is_empty(), "the next one is still ours");
        }
        fresh.drop_schema().await;

        // Two units writing to one conversation: neither claims its replies there.
        let (fresh, claims) = prepared().await.unwrap();
        let mut commits: Vec<Commit> =
            units(&claims).into_iter().map(|c| Commit { claim_replies_until: Some(lease), ..c }).collect();
        commits[2].outbox.push(reply("c2", "from c3's turn"));
        let UnitsWritten::Written(outcomes) = grouped(&fresh.store, &commits).await else { panic!("written") };
        let claimed: Vec<usize> = outcomes.iter().map(|o| o.claimed_replies.len()).collect();
        assert_eq!(claimed, [1, 0, 0], "only c1's, alone in its conversation");
        fresh.drop_schema().await;
    }

    /// A unit that asks for it gets its conversation's next inbox event claimed as the head
    /// is handed on, when that event is claimable at the unit's time; else it is left to a
    /// claim, as the head.
    #[tokio::test]
    async fn the_next_event_is_claimed_as_the_head_is_handed_on() {
        let Some((fresh, claims)) = prepared().await else { return };
        let store = &fresh.store;
        let lease = at(65);
        let commits: Vec<Commit> =
            units(&claims).into_iter().map(|c| Commit { claim_next_until: Some(lease), ..c }).collect();
        let UnitsWritten::Written(outcomes) = grouped(store, &commits).await else { panic!("every check holds") };
        type Claimed<'a> = (i64, &'a str, QueueStatus, i64, Option<Timestamp>);
        let next: Vec<Option<Claimed<'_>>> = outcomes
            .iter()
            .map(|o| {
                o.claimed_next.as_ref().map(|e| (e.id, e.message_id.as_str(), e.status, e.attempts, e.lease_until))
            })
            .collect();
        assert_eq!(next, [None, Some((4, "m2-next", QueueStatus::Claimed, 1, Some(lease))), None]);
        let event = outcomes[1].claimed_next.clone().unwrap();
        assert_eq!(event.conversation, chat("c2"));
        assert_eq!(event.received_at, at(0));
        assert_eq!(store.get_inbox("o", 4).await.unwrap().as_ref(), Some(&*event), "as stored");
        // It is out with this caller: a claim passes over it, and its turn commits.
        let request = ClaimRequest::for_org("o", at(6), Duration::from_secs(60), 10);
        assert!(store.claim_inbox(&request).await.unwrap().is_empty());
        store.commit(Commit { inbox_done: Some(event.claim()), ..Commit::new("o", at(7)) }).await.unwrap();
        fresh.drop_schema().await;

        // A unit that schedules a wake-up, or whose time is before the next event is due,
        // leaves it to a claim.
        for spoil in 0..2 {
            let (fresh, claims) = prepared().await.unwrap();
            let store = &fresh.store;
            let mut commits: Vec<Commit> =
                units(&claims).into_iter().map(|c| Commit { claim_next_until: Some(lease), ..c }).collect();
            if spoil == 0 {
                let wake = NewInboxEvent::wake_up(chat("c2"), "wake", json!({}), at(5), at(500));
                commits[1].schedule.push(wake);
            } else {
                commits[1].now = at(-1);
            }
            let outcomes: Vec<CommitOutcome> =
                futures_util::future::try_join_all(commits.into_iter().map(|c| store.commit(c))).await.unwrap();
            assert!(outcomes.iter().all(|o| o.claimed_next.is_none()), "case {spoil}");
            let request = ClaimRequest::for_org("o", at(6), Duration::from_secs(60), 10);
            let found: Vec<String> =
                store.claim_inbox(&request).await.unwrap().into_iter().map(|e| e.message_id).collect();
            assert_eq!(found, ["m2-next"], "case {spoil}: the head, left to a claim");
            fresh.drop_schema().await;
        }
    }
}
