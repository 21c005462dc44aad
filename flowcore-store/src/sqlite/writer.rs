//! The SQLite writer: runs a batch of queued writes in one `BEGIN IMMEDIATE` transaction.
//!
//! Each write is checked exactly as it would be alone. A failed single-statement write
//! (an insert, a claim change) leaves nothing behind on its own (SQLite rolls the statement
//! back); a unit of work runs inside a savepoint that is rolled back when any of its checks
//! fails, so the rest of the batch is unaffected. Results are handed out only after the
//! transaction committed: until then nothing is durable.

use sqlx::{Sqlite, SqlitePool, Transaction};

use super::{commit_batch_tx, commit_scheduled_tx, finish_claim_tx, insert_inbox_tx};
use crate::error::{StoreError, StoreResult};
use crate::group_commit::{Reply, Write};
use crate::types::{CommitOutcome, InboxInsert};

/// A write's result, waiting for the batch's commit.
enum Answer {
    Insert(Reply<InboxInsert>, StoreResult<InboxInsert>),
    Commit(Reply<CommitOutcome>, StoreResult<CommitOutcome>),
    Finish(Reply<()>, StoreResult<()>),
}

impl Answer {
    /// Sends the result, or `error` instead of a success that did not become durable.
    fn send(self, commit_error: Option<&StoreError>) {
        fn pick<T>(result: StoreResult<T>, commit_error: Option<&StoreError>) -> StoreResult<T> {
            match (result, commit_error) {
                (Ok(_), Some(e)) => Err(crate::group_commit::copy_error(e)),
                (result, _) => result,
            }
        }
        // A caller that stopped waiting has nobody to tell.
        match self {
            Answer::Insert(reply, result) => drop(reply.send(pick(result, commit_error))),
            Answer::Commit(reply, result) => drop(reply.send(pick(result, commit_error))),
            Answer::Finish(reply, result) => drop(reply.send(pick(result, commit_error))),
        }
    }
}

/// The savepoint a unit of work runs in. A successful unit's savepoint is released by the
/// next unit's first statement (or by the commit), saving a round trip per unit.
const SAVEPOINT: &str = "SAVEPOINT unit;";
const RELEASE_AND_SAVEPOINT: &str = "RELEASE unit; SAVEPOINT unit;";

/// Runs `batch` in one transaction on the writer pool and answers every write.
pub(super) async fn run(pool: SqlitePool, batch: Vec<Write>) {
    let mut tx = match pool.begin_with("BEGIN IMMEDIATE").await {
        Ok(tx) => tx,
        Err(e) => {
            let e = StoreError::from(e);
            batch.into_iter().for_each(|write| write.fail(&e));
            return;
        }
    };
    let mut answers = Vec::with_capacity(batch.len());
    let mut savepoint_open = false;
    let mut broken: Option<StoreError> = None;
    let mut writes = batch.into_iter();
    for write in writes.by_ref() {
        match write {
            Write::InsertInbox { event, reply } => {
                let result = insert_inbox_tx(&mut tx, &event).await;
                answers.push(Answer::Insert(reply, result));
            }
            Write::Finish { org_id, claim, change, reply } => {
                let result = finish_claim_tx(&mut tx, &org_id, claim, &change).await;
                answers.push(Answer::Finish(reply, result));
            }
            Write::Commit { commit, reply } => {
                let prefix = if savepoint_open { RELEASE_AND_SAVEPOINT } else { SAVEPOINT };
                let result = if commit.schedule.is_empty() {
                    commit_batch_tx(&mut tx, &commit, prefix).await
                } else {
                    commit_scheduled_tx(&mut tx, &commit, prefix).await
                };
                savepoint_open = true;
                if result.is_err() {
                    // Undo whatever part of the unit ran; the savepoint stays open (empty).
                    if let Err(e) = sqlx::query("ROLLBACK TO unit").execute(&mut *tx).await {
                        answers.push(Answer::Commit(reply, result));
                        broken = Some(e.into());
                        break;
                    }
                }
                answers.push(Answer::Commit(reply, result));
            }
        }
    }
    if let Some(e) = broken {
        // The transaction is in an unknown state: nothing of the batch lands.
        drop(tx);
        writes.for_each(|write| write.fail(&e));
        answers.into_iter().for_each(|answer| answer.send(Some(&e)));
        return;
    }
    let committed = commit(tx).await;
    answers.into_iter().for_each(|answer| answer.send(committed.as_ref().err()));
}

async fn commit(tx: Transaction<'static, Sqlite>) -> StoreResult<()> {
    Ok(tx.commit().await?)
}
