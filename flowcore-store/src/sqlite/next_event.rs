//! A conversation's next inbox event, claimed for the caller as a unit of work marks its
//! handled row done (see [`Commit::claim_next_until`](crate::Commit::claim_next_until)).
//!
//! It runs after the batch's units, in the same transaction: the insert trigger has handed
//! the conversation's head on by then, and the writer is the only one writing, so the
//! conversation's first unfinished row is the one a claim would find next. One statement
//! per asking unit, all in one query (one hop to sqlx's connection thread); each statement's
//! rows are its unit's.

use std::sync::LazyLock;

use sqlx::Either;

use super::{grouped_units::fetch_results, inbox_event, take_arguments, Tx};
use crate::error::{StoreError, StoreResult};
use crate::sql_rows::INBOX_COLS;
use crate::types::{Commit, InboxEvent};

/// One asking unit's statement: parameters the lease's end, the handled row, and the unit's
/// time twice.
static CLAIM_NEXT: LazyLock<String> = LazyLock::new(|| {
    format!(
        "UPDATE inbox SET status = 'claimed', attempts = attempts + 1, lease_until = ?
         WHERE id = (SELECT j.id FROM inbox h, inbox j INDEXED BY inbox_open_conversation
                     WHERE h.id = ? AND j.org_id = h.org_id AND j.business_number_id = h.business_number_id
                       AND j.contact_id = h.contact_id AND j.status IN ('pending', 'claimed')
                     ORDER BY j.due_at, j.id LIMIT 1)
           AND status = 'pending' AND due_at <= ? AND (retry_at IS NULL OR retry_at <= ?)
         RETURNING {INBOX_COLS};"
    )
});

/// Claims the next event of each asking unit's conversation when it is claimable at the
/// unit's time: pending, due, not waiting for a retry. A unit asks when it handled an inbox
/// row, set `claim_next_until` and schedules no wake-up (SQLite would insert one before
/// this runs, but a claim's order must see it first: left to a claim, as in PostgreSQL).
/// Answers, per unit of `commits`, its claimed event.
pub(super) async fn claim_next_events(
    tx: &mut Tx<'_>,
    commits: &[&Commit],
) -> StoreResult<Vec<Option<Box<InboxEvent>>>> {
    let asking: Vec<(usize, i64, i64, i64)> = commits
        .iter()
        .enumerate()
        .filter(|(_, commit)| commit.schedule.is_empty())
        .filter_map(|(i, commit)| {
            let (handled, until) = (commit.inbox_done?, commit.claim_next_until?);
            Some((i, handled.id, until.as_unix_millis(), commit.now.as_unix_millis()))
        })
        .collect();
    let mut claimed = vec![None; commits.len()];
    if asking.is_empty() {
        return Ok(claimed);
    }
    let sql = CLAIM_NEXT.repeat(asking.len());
    let mut query = sqlx::query::<sqlx::Sqlite>("");
    for &(_, handled, until, now) in &asking {
        query = query.bind(until).bind(handled).bind(now).bind(now);
    }
    let (items, failure) = fetch_results(tx, &sql, take_arguments(query)?).await;
    if let Some(e) = failure {
        // Some of the statements may have claimed their rows: the batch cannot go on.
        return Err(e.into());
    }
    let mut units = asking.into_iter().map(|(i, ..)| i);
    let mut current = units.next();
    for item in items {
        match item {
            Either::Right(row) => {
                let unit = current
                    .ok_or_else(|| StoreError::Database("next events: a row after the last statement".into()))?;
                claimed[unit] = Some(Box::new(inbox_event(&row)?));
            }
            Either::Left(_) => current = units.next(),
        }
    }
    Ok(claimed)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_json::json;

    use crate::traits::{Inbox, Organizations, Store};
    use crate::types::{ClaimRequest, Commit, NewInboxEvent, QueueStatus};
    use crate::unit_fixtures::{at, chat};
    use crate::{SqliteOptions, SqliteStore};

    /// A store with two messages of `c2` waiting, the first claimed: its claim.
    async fn prepared() -> (tempfile::TempDir, SqliteStore, crate::types::Claim) {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("next.db").display());
        let store = SqliteStore::open(&url, SqliteOptions::default()).await.unwrap();
        store.register_organization("o").await.unwrap();
        for message in ["m2", "m2-next"] {
            store.insert_inbox(NewInboxEvent::message(chat("c2"), message, json!({}), at(0))).await.unwrap();
        }
        let claimed = store.claim_inbox(&ClaimRequest::for_org("o", at(1), Duration::from_secs(60), 10)).await.unwrap();
        assert_eq!(claimed.len(), 1, "one per conversation");
        (dir, store, claimed[0].claim())
    }

    #[tokio::test]
    async fn the_next_event_is_claimed_as_the_turn_commits() {
        let (_dir, store, claim) = prepared().await;
        let lease = at(65);
        let commit = Commit { inbox_done: Some(claim), claim_next_until: Some(lease), ..Commit::new("o", at(5)) };
        let event = store.commit(commit).await.unwrap().claimed_next.expect("claimed");
        assert_eq!(
            (event.message_id.as_str(), event.status, event.attempts, event.lease_until),
            ("m2-next", QueueStatus::Claimed, 1, Some(lease))
        );
        assert_eq!(event.conversation, chat("c2"));
        assert_eq!(store.get_inbox("o", event.id).await.unwrap().as_ref(), Some(&*event), "as stored");
        // It is out with this caller: a claim passes over it, and its turn commits.
        let request = ClaimRequest::for_org("o", at(6), Duration::from_secs(60), 10);
        assert!(store.claim_inbox(&request).await.unwrap().is_empty());
        let last = Commit { inbox_done: Some(event.claim()), claim_next_until: Some(lease), ..Commit::new("o", at(7)) };
        assert_eq!(store.commit(last).await.unwrap().claimed_next, None, "nothing more to claim");
    }

    /// A unit that schedules a wake-up, or whose time is before the next event is due,
    /// leaves it to a claim.
    #[tokio::test]
    async fn the_next_event_is_left_to_a_claim_when_it_cannot_be_claimed_yet() {
        for case in 0..2 {
            let (_dir, store, claim) = prepared().await;
            let mut commit =
                Commit { inbox_done: Some(claim), claim_next_until: Some(at(65)), ..Commit::new("o", at(5)) };
            if case == 0 {
                commit.schedule.push(NewInboxEvent::wake_up(chat("c2"), "wake", json!({}), at(5), at(500)));
            } else {
                commit.now = at(-1);
            }
            assert_eq!(store.commit(commit).await.unwrap().claimed_next, None, "case {case}");
            let request = ClaimRequest::for_org("o", at(6), Duration::from_secs(60), 10);
            let found: Vec<String> =
                store.claim_inbox(&request).await.unwrap().into_iter().map(|e| e.message_id).collect();
            assert_eq!(found, ["m2-next"], "case {case}: left to a claim");
        }
    }
}
