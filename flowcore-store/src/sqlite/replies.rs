//! A unit of work's replies, written claimed for the caller when they can be (see
//! [`Commit::claim_replies_until`] and the schema's `outbox_head_on_insert`).
//!
//! A reply the caller asked a lease for is written claimed (first attempt, marked as a head)
//! when its conversation has no stored unfinished reply; any other is written pending, for a
//! claim. The database decides the last condition as it writes, reading the outbox as it
//! was before the statement: SQLite runs an `INSERT … SELECT` whose source reads the target
//! table to completion before it inserts anything. A unit alone learns which were claimed
//! from the insert's `RETURNING`; grouped units, whose inserts return nothing, from a
//! statement right before the insert that reads the same condition, with nothing written in
//! between (the writer is the only one).

use flowcore::Timestamp;
use sqlx::sqlite::SqliteArguments;
use sqlx::Sqlite;

use crate::types::{Commit, NewOutboxMessage, OutboxMessage};

/// Whether the reply's conversation (`v.column2`–`v.column4`: organization, number,
/// contact) has a stored unfinished reply.
macro_rules! unfinished_reply {
    () => {
        "EXISTS (SELECT 1 FROM outbox e INDEXED BY outbox_open_conversation
                 WHERE e.org_id = v.column2 AND e.business_number_id = v.column3 AND e.contact_id = v.column4
                   AND e.status IN ('pending', 'claimed'))"
    };
}

/// Parameters per reply: position, organization, number, contact, payload, inbox row, due
/// time, and the lease asked for (`NULL`: written pending).
pub(super) const REPLY_WIDTH: usize = 8;

/// One reply's `VALUES` row.
pub(super) const REPLY_VALUES: &str = "(?, ?, ?, ?, ?, ?, ?, ?)";

/// Before the `VALUES` rows of an insert of replies (see [`bind_reply`]).
pub(super) const INSERT_HEAD: &str = concat!(
    "INSERT INTO outbox (org_id, business_number_id, contact_id, payload, inbox_id, due_at, status, attempts,
                         lease_until, head)
     SELECT r.column2, r.column3, r.column4, r.column5, r.column6, r.column7,
            CASE WHEN r.claimed THEN 'claimed' ELSE 'pending' END, r.claimed,
            CASE WHEN r.claimed THEN r.column8 END, r.claimed
     FROM (SELECT v.*, v.column8 IS NOT NULL AND NOT ",
    unfinished_reply!(),
    " AS claimed FROM (VALUES "
);

/// After the `VALUES` rows of an insert of replies: rows go in in position order, so their
/// ids follow it.
pub(super) const INSERT_TAIL: &str = ") AS v) AS r ORDER BY r.column1";

/// Before the `VALUES` rows (position, organization, number, contact) of the replies that
/// asked for a lease: one row, the positions of those the insert after it claims, separated
/// by commas (`NULL` for none).
pub(super) const CLAIMED_HEAD: &str = "SELECT group_concat(v.column1) FROM (VALUES ";

/// After the `VALUES` rows of [`CLAIMED_HEAD`].
pub(super) const CLAIMED_TAIL: &str = concat!(") AS v WHERE NOT ", unfinished_reply!());

/// Parameters per row of [`CLAIMED_HEAD`].
pub(super) const CLAIMED_WIDTH: usize = 4;

type Query<'q> = sqlx::query::Query<'q, Sqlite, SqliteArguments<'q>>;

/// Binds reply `m` of `org_id` at `position`, with the lease its caller may claim it until.
pub(super) fn bind_reply<'q>(
    query: Query<'q>,
    position: usize,
    org_id: &str,
    m: &NewOutboxMessage,
    lease: Option<Timestamp>,
) -> Query<'q> {
    query
        .bind(position as i64)
        .bind(org_id.to_owned())
        .bind(m.conversation.business_number_id.clone())
        .bind(m.conversation.contact_id.clone())
        .bind(m.payload.to_string())
        .bind(m.inbox_id)
        .bind(m.due_at.as_unix_millis())
        .bind(lease.map(Timestamp::as_unix_millis))
}

/// Binds the [`CLAIMED_HEAD`] row of reply `m` of `org_id` at `position`.
pub(super) fn bind_candidate<'q>(query: Query<'q>, position: usize, org_id: &str, m: &NewOutboxMessage) -> Query<'q> {
    query
        .bind(position as i64)
        .bind(org_id.to_owned())
        .bind(m.conversation.business_number_id.clone())
        .bind(m.conversation.contact_id.clone())
}

/// Parses the positions [`CLAIMED_HEAD`] reports.
pub(super) fn positions(list: Option<&str>) -> Result<Vec<usize>, std::num::ParseIntError> {
    list.unwrap_or_default().split(',').filter(|p| !p.is_empty()).map(str::parse).collect()
}

/// `commit`'s replies written claimed, in order: those of `ids` (the rows written for
/// `commit.outbox`, in order) that `claimed` says were.
pub(super) fn claimed_replies(
    commit: &Commit,
    ids: &[i64],
    claimed: impl Fn(usize, i64) -> bool,
) -> Vec<OutboxMessage> {
    let Some(lease) = commit.claim_replies_until else { return Vec::new() };
    ids.iter()
        .zip(&commit.outbox)
        .enumerate()
        .filter(|(n, (id, _))| claimed(*n, **id))
        .map(|(_, (id, reply))| OutboxMessage::claimed_on_insert(*id, reply, lease))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_values_rows_match_their_widths() {
        assert_eq!(REPLY_VALUES.matches('?').count(), REPLY_WIDTH);
        assert_eq!(INSERT_HEAD.matches('?').count() + INSERT_TAIL.matches('?').count(), 0);
        assert_eq!(CLAIMED_HEAD.matches('?').count() + CLAIMED_TAIL.matches('?').count(), 0);
    }

    #[test]
    fn claimed_positions_parse_from_the_reported_list() {
        assert_eq!(positions(Some("0,2,5")), Ok(vec![0, 2, 5]));
        assert_eq!(positions(None), Ok(vec![]));
        assert!(positions(Some("1,x")).is_err());
    }
}
