//! A batch's inbox inserts and claim changes as one call of `flowcore_write_rows`, with the
//! conversation locks of the whole batch.
//!
//! Each row was a statement of its own, with BEGIN, a lock statement and COMMIT around them:
//! a round trip each, for a few microseconds of work. One call is one round trip; outside a
//! transaction (a batch without units of work) it is its own transaction too. Inside, the
//! inserts are one statement and each queue's changes another.

use sqlx::postgres::PgConnection;
use sqlx::Row;

use super::grouped_units::CallFailed;
use super::{ConversationLocks, LOCK_SPACE};
use crate::group_commit::{ClaimChange, Write};
use crate::types::{Claim, InboxInsert, NewInboxEvent};

/// The call; its parameters are in the order [`Rows::bind`] binds them.
const WRITE_ROWS: &str = "SELECT * FROM flowcore_write_rows($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13,
    $14, $15, $16, $17, $18, $19, $20, $21)";

/// The inserts and claim changes of a batch, as the call's column arrays, in batch order.
#[derive(Default)]
pub(super) struct Rows<'a> {
    in_org: Vec<&'a str>,
    in_number: Vec<&'a str>,
    in_contact: Vec<&'a str>,
    in_message: Vec<&'a str>,
    in_kind: Vec<&'a str>,
    in_payload: Vec<String>,
    in_received: Vec<i64>,
    in_due: Vec<i64>,
    fin_outbox: Vec<bool>,
    fin_change: Vec<&'static str>,
    fin_org: Vec<&'a str>,
    fin_id: Vec<i64>,
    fin_attempt: Vec<i64>,
    fin_time: Vec<i64>,
    fin_text: Vec<Option<&'a str>>,
}

impl<'a> Rows<'a> {
    /// The rows of `batch`'s inserts and claim changes (units of work are not rows here).
    pub(super) fn of(batch: &'a [Write]) -> Rows<'a> {
        let mut rows = Rows::default();
        for write in batch {
            match write {
                Write::InsertInbox { event, .. } => rows.insert(event),
                Write::Finish { org_id, claim, change, .. } => rows.finish(org_id, *claim, change),
                Write::Commit { .. } => {}
            }
        }
        rows
    }

    pub(super) fn is_empty(&self) -> bool {
        self.in_org.is_empty() && self.fin_id.is_empty()
    }

    fn insert(&mut self, event: &'a NewInboxEvent) {
        let c = &event.conversation;
        self.in_org.push(&c.org_id);
        self.in_number.push(&c.business_number_id);
        self.in_contact.push(&c.contact_id);
        self.in_message.push(&event.message_id);
        self.in_kind.push(event.kind.as_str());
        self.in_payload.push(event.payload.to_string());
        self.in_received.push(event.received_at.as_unix_millis());
        self.in_due.push(event.due_at.as_unix_millis());
    }

    fn finish(&mut self, org_id: &'a str, claim: Claim, change: &'a ClaimChange) {
        let (name, time, text) = match change {
            ClaimChange::InboxDone { now } => ("done", now, None),
            ClaimChange::OutboxSent { wamid, now } => ("sent", now, Some(wamid)),
            ClaimChange::InboxRetry { at, error } | ClaimChange::OutboxRetry { at, error } => {
                ("retry", at, Some(error))
            }
            ClaimChange::InboxFailed { now, error } | ClaimChange::OutboxFailed { now, error } => {
                ("failed", now, Some(error))
            }
        };
        self.fin_outbox.push(change.is_outbox());
        self.fin_change.push(name);
        self.fin_org.push(org_id);
        self.fin_id.push(claim.id);
        self.fin_attempt.push(claim.attempt);
        self.fin_time.push(time.as_unix_millis());
        self.fin_text.push(text.map(String::as_str));
    }

    fn bind<'q>(
        &'q self,
        query: sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>,
    ) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
        query
            .bind(&self.in_org)
            .bind(&self.in_number)
            .bind(&self.in_contact)
            .bind(&self.in_message)
            .bind(&self.in_kind)
            .bind(&self.in_payload)
            .bind(&self.in_received)
            .bind(&self.in_due)
            .bind(&self.fin_outbox)
            .bind(&self.fin_change)
            .bind(&self.fin_org)
            .bind(&self.fin_id)
            .bind(&self.fin_attempt)
            .bind(&self.fin_time)
            .bind(&self.fin_text)
    }
}

/// What the call wrote, in batch order of each kind.
pub(super) struct RowsWritten {
    /// Each insert's outcome.
    pub(super) inserts: Vec<InboxInsert>,
    /// Whether each claim change's claim held (false: it wrote nothing).
    pub(super) finished: Vec<bool>,
}

/// The call's parameters: `locks`, then `rows`.
fn bind<'q>(
    query: sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>,
    locks: &'q ConversationLocks<'_>,
    rows: &'q Rows<'_>,
) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
    let query = query
        .bind(LOCK_SPACE)
        .bind(&locks.inbox_rows)
        .bind(&locks.outbox_rows)
        .bind(&locks.orgs)
        .bind(&locks.numbers)
        .bind(&locks.contacts);
    rows.bind(query)
}

/// Takes `locks` and writes `rows` in one call on `connection` (in a transaction, or its own).
pub(super) async fn write_rows(
    connection: &mut PgConnection,
    locks: &ConversationLocks<'_>,
    rows: &Rows<'_>,
) -> Result<RowsWritten, CallFailed> {
    let row = bind(sqlx::query(WRITE_ROWS), locks, rows).fetch_one(connection).await.map_err(CallFailed::from)?;
    // From here on the call went through: an error reading its answer leaves it unknown.
    let read = |e: sqlx::Error| CallFailed::Unknown(e.into());
    let ids: Vec<i64> = row.try_get("inserted_ids").map_err(read)?;
    let new: Vec<bool> = row.try_get("inserted_new").map_err(read)?;
    let finished: Vec<bool> = row.try_get("finished").map_err(read)?;
    if ids.len() != rows.in_org.len() || new.len() != ids.len() || finished.len() != rows.fin_id.len() {
        return Err(CallFailed::Unknown(crate::StoreError::Database(
            "flowcore_write_rows: an answer of the wrong length".into(),
        )));
    }
    let inserts = ids
        .into_iter()
        .zip(new)
        .map(|(id, new)| if new { InboxInsert::Inserted(id) } else { InboxInsert::Duplicate(id) })
        .collect();
    Ok(RowsWritten { inserts, finished })
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use sqlx::postgres::PgConnection;
    use sqlx::Row;
    use tokio::sync::oneshot;

    use super::super::{write_batch, ConversationLocks, Outcome};
    use super::{bind, Rows, WRITE_ROWS};
    use crate::error::StoreError;
    use crate::group_commit::{ClaimChange, Write};
    use crate::traits::{Inbox, Organizations};
    use crate::types::{Claim, InboxInsert, NewInboxEvent};
    use crate::unit_fixtures::{at, chat, claims_in_contact_order, FreshPostgres};

    fn insert(contact: &str, message: &str) -> Write {
        let event = NewInboxEvent::message(chat(contact), message, json!({ "m": message }), at(0));
        Write::InsertInbox { event, reply: oneshot::channel().0 }
    }

    /// Every inbox row's message id, status and head mark, in id order.
    async fn inbox_rows(store: &crate::PostgresStore) -> Vec<(String, String, bool)> {
        sqlx::query_as("SELECT message_id, status, head FROM inbox ORDER BY id").fetch_all(store.pool()).await.unwrap()
    }

    fn sent(claim: Claim) -> Write {
        Write::Finish {
            org_id: "o".into(),
            claim,
            change: ClaimChange::OutboxSent { wamid: format!("wamid.{}", claim.id), now: at(2) },
            reply: oneshot::channel().0,
        }
    }

    /// A reply of `contact` claimed by a sender, written directly.
    async fn claimed_reply(connection: &mut PgConnection, contact: &str) -> Claim {
        let c = chat(contact);
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO outbox (org_id, business_number_id, contact_id, payload, due_at, status, attempts, head)
             VALUES ('o', $1, $2, '{}', 0, 'claimed', 1, true) RETURNING id",
        )
        .bind(&c.business_number_id)
        .bind(&c.contact_id)
        .fetch_one(connection)
        .await
        .unwrap();
        Claim { id, attempt: 1 }
    }

    fn done(claim: Claim) -> Write {
        Write::Finish {
            org_id: "o".into(),
            claim,
            change: ClaimChange::InboxDone { now: at(2) },
            reply: oneshot::channel().0,
        }
    }

    #[tokio::test]
    async fn a_batch_of_rows_is_one_call_with_each_row_answered_in_order() {
        let Some(fresh) = FreshPostgres::open().await else { return };
        let store = &fresh.store;
        store.register_organization("o").await.unwrap();
        let first = store.insert_inbox(NewInboxEvent::message(chat("c1"), "m1", json!({}), at(0))).await.unwrap();
        let claim = claims_in_contact_order(store).await[0];
        let stale = Claim { attempt: claim.attempt + 1, ..claim };

        // A new row, the same message again, a stored message, the claim's change, and a
        // change under a claim that does not hold.
        let batch = [insert("c1", "m2"), insert("c1", "m2"), insert("c1", "m1"), done(claim), done(stale)];
        let mut connection = store.pool().acquire().await.unwrap();
        let Ok(outcomes) = write_batch(&mut connection, &batch).await else { panic!("the batch is written") };
        let answers: Vec<String> = outcomes
            .into_iter()
            .map(|outcome| match outcome {
                Outcome::Inserted(Ok(InboxInsert::Inserted(_))) => "new".to_owned(),
                Outcome::Inserted(Ok(InboxInsert::Duplicate(id))) if id == first.id() => "stored m1".to_owned(),
                Outcome::Inserted(Ok(InboxInsert::Duplicate(_))) => "duplicate".to_owned(),
                Outcome::Finished(Ok(())) => "finished".to_owned(),
                Outcome::Finished(Err(StoreError::LeaseLost { .. })) => "lease lost".to_owned(),
                _ => "unexpected".to_owned(),
            })
            .collect();
        assert_eq!(answers, ["new", "duplicate", "stored m1", "finished", "lease lost"]);

        // m1 handed its conversation's head on to m2, inserted before it in the same call.
        let rows = inbox_rows(store).await;
        let rows: Vec<(&str, &str, bool)> = rows.iter().map(|(m, s, h)| (m.as_str(), s.as_str(), *h)).collect();
        assert_eq!(rows, [("m1", "done", true), ("m2", "pending", true)]);
        drop(connection);
        fresh.drop_schema().await;
    }

    /// The shared buffers one call of `batch` reads, as EXPLAIN ANALYZE counts them (the
    /// statements the call runs included), on `connection` and with its cached plans.
    async fn buffers_of_call(connection: &mut PgConnection, batch: &[Write]) -> i64 {
        let mut locks = ConversationLocks::default();
        batch.iter().for_each(|write| locks.write(write));
        let rows = Rows::of(batch);
        let explain = format!("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {WRITE_ROWS}");
        let row = bind(sqlx::query(&explain), &locks, &rows).fetch_one(connection).await.unwrap();
        let plan: serde_json::Value = row.get(0);
        let top = &plan[0]["Plan"];
        top["Shared Hit Blocks"].as_i64().unwrap() + top["Shared Read Blocks"].as_i64().unwrap()
    }

    #[tokio::test]
    async fn a_call_planned_on_empty_tables_stays_cheap_over_a_backlog() {
        let Some(fresh) = FreshPostgres::open().await else { return };
        let store = &fresh.store;
        store.register_organization("o").await.unwrap();
        let mut connection = store.pool().acquire().await.unwrap();
        // The connection plans the call's statements on empty tables...
        let first = claimed_reply(&mut connection, "c0").await;
        let Ok(_) = write_batch(&mut connection, &[insert("c0", "m0"), sent(first)]).await else {
            panic!("the batch is written")
        };
        // ...which then hold thousands of finished rows, of the same organization.
        for table in ["inbox", "outbox"] {
            let key = if table == "inbox" { "message_id, kind, received_at," } else { "" };
            let values = if table == "inbox" { "'old-' || g, 'message', g," } else { "" };
            sqlx::query(&format!(
                "INSERT INTO {table} (org_id, business_number_id, contact_id, {key} payload, due_at, status, attempts,
                                      finished_at)
                 SELECT 'o', 'n', 'old' || (g % 100), {values} '{{}}', g, 'done', 1, g
                 FROM generate_series(1, 20000) AS g"
            ))
            .execute(&mut *connection)
            .await
            .unwrap();
        }
        let reply = claimed_reply(&mut connection, "c1").await;
        let buffers = buffers_of_call(&mut connection, &[insert("c1", "m1"), sent(reply)]).await;
        // A few dozen: index probes and row writes. A plan that reads the outbox through
        // (a join planned on the empty table) reads hundreds here, thousands under load.
        assert!(buffers < 100, "{buffers} buffers for one insert and one finish");
        drop(connection);
        fresh.drop_schema().await;
    }

    #[tokio::test]
    async fn rows_of_one_conversation_in_one_batch_see_each_other_in_order() {
        let Some(fresh) = FreshPostgres::open().await else { return };
        let store = &fresh.store;
        store.register_organization("o").await.unwrap();
        store.insert_inbox(NewInboxEvent::message(chat("c1"), "m1", json!({}), at(0))).await.unwrap();
        let claim = claims_in_contact_order(store).await[0];
        let mut connection = store.pool().acquire().await.unwrap();

        // Two new rows of a conversation without rows, two behind a claimed row, and the
        // claimed row's change twice: the second finds it out of `claimed`.
        let batch =
            [insert("c2", "a"), insert("c2", "b"), insert("c1", "m2"), insert("c1", "m3"), done(claim), done(claim)];
        let Ok(outcomes) = write_batch(&mut connection, &batch).await else { panic!("the batch is written") };
        let finished: Vec<bool> = outcomes
            .into_iter()
            .filter_map(|outcome| match outcome {
                Outcome::Finished(result) => Some(result.is_ok()),
                _ => None,
            })
            .collect();
        assert_eq!(finished, [true, false]);

        // c2's first row is its head; c1's head moved past the finished m1 to m2 only.
        let rows = inbox_rows(store).await;
        let rows: Vec<(&str, &str, bool)> = rows.iter().map(|(m, s, h)| (m.as_str(), s.as_str(), *h)).collect();
        assert_eq!(
            rows,
            [
                ("m1", "done", true),
                ("a", "pending", true),
                ("b", "pending", false),
                ("m2", "pending", true),
                ("m3", "pending", false)
            ]
        );
        drop(connection);
        fresh.drop_schema().await;
    }
}
