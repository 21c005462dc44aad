//! Every SQL statement of the SQLite backend. A conversation is always `?1` (organization),
//! `?2` (business number) and `?3` (contact); rows are read with `*` and decoded by name.

use std::sync::LazyLock;

/// The schema, applied once to a new database; it records [`SCHEMA_VERSION`] as the
/// database's `user_version`.
pub(super) const SCHEMA: &str = include_str!("../../migrations/sqlite/0001_schema.sql");
pub(super) const SCHEMA_VERSION: i64 = 1;

/// What the inbox and the outbox share: both are queues claimed a conversation at a time, so
/// their statements are written once below, `$t` standing for the table.
#[derive(Debug)]
pub(super) struct Queue {
    /// The row kind, as errors name it.
    pub what: &'static str,
    /// Recomputes the conversation's row from its unfinished rows (creating it if needed).
    pub refresh: String,
    /// Conversations whose head is claimable at `?1` (organization `?2` or any), soonest
    /// first, at most `?3`.
    pub claimable: String,
    /// Claims the conversation's head until `?5` if it is claimable at `?4`.
    pub claim_head: String,
    /// Changes to claim `?2` (attempt `?3`) of organization `?1` at `?4` (text `?5`) while it
    /// holds, answering the row's conversation: finished (with the wamid `?5` for a reply),
    /// back to pending until `?4`, failed for good.
    pub done: String,
    pub retry: String,
    pub failed: String,
    /// Whether row `?2` of organization `?1` exists.
    pub exists: String,
    /// Returns claims whose lease ended before `?1` (organization `?2` or any) to pending.
    pub reclaim: String,
}

pub(super) static INBOX: LazyLock<Queue> = LazyLock::new(|| {
    // A conversation's next event also waits while one of its replies is out with a sender.
    let held = "AND coalesce(outbox_lease < ?1, true)";
    Queue::new("inbox", "inbox event", "status = 'done', lease_until = NULL, finished_at = ?4", held)
});

pub(super) static OUTBOX: LazyLock<Queue> = LazyLock::new(|| {
    let sent = "status = 'done', lease_until = NULL, finished_at = ?4, sent_at = ?4, wamid = ?5, delivery = 'sent',
                delivery_rank = 1, delivery_at = ?4";
    Queue::new("outbox", "outbox message", sent, "")
});

impl Queue {
    fn new(table: &str, what: &'static str, done: &str, held: &str) -> Queue {
        let sql = |template: &str| template.replace("$held", held).replace("$t", table);
        let change = |set: &str| sql(&CHANGE.replace("$set", set));
        Queue {
            what,
            refresh: sql(REFRESH),
            claimable: sql(CLAIMABLE),
            claim_head: sql(CLAIM_HEAD),
            done: change(done),
            retry: change("status = 'pending', lease_until = NULL, retry_at = ?4, last_error = ?5"),
            failed: change("status = 'failed', lease_until = NULL, finished_at = ?4, last_error = ?5"),
            exists: sql("SELECT 1 FROM $t WHERE org_id = ?1 AND id = ?2"),
            reclaim: sql(RECLAIM),
        }
    }
}

/// `$t_due` is when the head may run (its due or retry time), `$t_lease` the latest lease of
/// the claimed rows: each one seek, however many rows wait (the schema's partial indexes).
const REFRESH: &str = "INSERT INTO conversations (org_id, business_number_id, contact_id, $t_due, $t_lease)
     VALUES (?1, ?2, ?3,
       (SELECT max(due_at, coalesce(retry_at, due_at)) FROM $t WHERE org_id = ?1 AND business_number_id = ?2
          AND contact_id = ?3 AND status IN ('pending', 'claimed') ORDER BY due_at, id LIMIT 1),
       (SELECT max(lease_until) FROM $t WHERE org_id = ?1 AND business_number_id = ?2 AND contact_id = ?3
          AND status = 'claimed'))
     ON CONFLICT DO UPDATE SET $t_due = excluded.$t_due, $t_lease = excluded.$t_lease";
const CLAIMABLE: &str = "SELECT org_id, business_number_id, contact_id FROM conversations
     WHERE $t_due <= ?1 AND (?2 IS NULL OR org_id = ?2) AND coalesce($t_lease < ?1, true) $held
     ORDER BY $t_due LIMIT ?3";
const CLAIM_HEAD: &str = "UPDATE $t SET status = 'claimed', attempts = attempts + 1, lease_until = ?5
     WHERE id = (SELECT id FROM $t WHERE org_id = ?1 AND business_number_id = ?2 AND contact_id = ?3
                   AND status IN ('pending', 'claimed') ORDER BY due_at, id LIMIT 1)
       AND EXISTS (SELECT 1 FROM conversations WHERE org_id = ?1 AND business_number_id = ?2 AND contact_id = ?3
                     AND $t_due <= ?4 AND coalesce($t_lease < ?4, true))
     RETURNING *";
const CHANGE: &str = "UPDATE $t SET $set WHERE org_id = ?1 AND id = ?2 AND status = 'claimed' AND attempts = ?3
     RETURNING org_id, business_number_id, contact_id";
/// Walks only conversations with unfinished rows, not every row ever queued.
const RECLAIM: &str = "UPDATE $t SET status = 'pending', lease_until = NULL
     WHERE status IN ('pending', 'claimed') AND status = 'claimed' AND lease_until < ?1
       AND (org_id, business_number_id, contact_id) IN (SELECT org_id, business_number_id, contact_id
             FROM conversations WHERE $t_due IS NOT NULL AND (?2 IS NULL OR org_id = ?2))
     RETURNING org_id, business_number_id, contact_id";

pub(super) const INSERT_INBOX: &str =
    "INSERT INTO inbox (org_id, business_number_id, contact_id, message_id, kind, payload, received_at, due_at)
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) ON CONFLICT (org_id, message_id) DO NOTHING RETURNING id";
pub(super) const INBOX_ID: &str = "SELECT id FROM inbox WHERE org_id = ?1 AND message_id = ?2";
pub(super) const GET_INBOX: &str = "SELECT * FROM inbox WHERE org_id = ?1 AND id = ?2";

/// A reply, claimed until `?7` unless that is `NULL`.
pub(super) const INSERT_OUTBOX: &str =
    "INSERT INTO outbox (org_id, business_number_id, contact_id, payload, inbox_id, due_at, status, attempts, lease_until)
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, iif(?7 IS NULL, 'pending', 'claimed'), ?7 IS NOT NULL, ?7)";
pub(super) const OUTBOX_UNFINISHED: &str = "SELECT 1 FROM outbox
     WHERE org_id = ?1 AND business_number_id = ?2 AND contact_id = ?3 AND status IN ('pending', 'claimed')";
pub(super) const GET_OUTBOX: &str = "SELECT * FROM outbox WHERE org_id = ?1 AND id = ?2";
pub(super) const RECORD_DELIVERY: &str = "UPDATE outbox SET delivery = ?3, delivery_rank = ?4, delivery_at = ?5
     WHERE org_id = ?1 AND wamid = ?2 AND delivery_rank < ?4";
pub(super) const OUTBOX_WAMID: &str = "SELECT 1 FROM outbox WHERE org_id = ?1 AND wamid = ?2";

pub(super) const REGISTER_ORG: &str =
    "INSERT INTO organizations (id, created_at) VALUES (?1, 0) ON CONFLICT DO NOTHING";
pub(super) const ORG_EXISTS: &str = "SELECT 1 FROM organizations WHERE id = ?1";

/// Creates session `?1`–`?4` unless one is active: flow version `?5`, status `?6`, state
/// schema `?7`, state `?8`, node `?9`, wake-up `?10`, time `?11`, closed at `?12`, cohort `?13`.
pub(super) const INSERT_SESSION: &str =
    "INSERT INTO sessions (org_id, business_number_id, contact_id, flow_id, flow_version, version, status,
                           state_schema, state, current_node, wake_at, created_at, updated_at, closed_at, cohort)
     VALUES (?1, ?2, ?3, ?4, ?5, 1, ?6, ?7, ?8, ?9, ?10, ?11, ?11, ?12, ?13)
     ON CONFLICT (org_id, business_number_id, contact_id, flow_id) WHERE status = 'active' DO NOTHING
     RETURNING id, version";
/// Saves session `?1`–`?4` if its version is `?5`; the rest as above, `?13` the flow version.
pub(super) const UPDATE_SESSION: &str =
    "UPDATE sessions SET version = version + 1, status = ?6, state_schema = ?7, state = ?8, current_node = ?9,
                         wake_at = ?10, updated_at = ?11, closed_at = ?12, flow_version = ?13
     WHERE org_id = ?1 AND business_number_id = ?2 AND contact_id = ?3 AND flow_id = ?4 AND status = 'active'
       AND version = ?5
     RETURNING id, version";
pub(super) const SESSION_VERSION: &str = "SELECT version FROM sessions
     WHERE org_id = ?1 AND business_number_id = ?2 AND contact_id = ?3 AND flow_id = ?4 AND status = 'active'";
pub(super) const LOAD_SESSION: &str = "SELECT * FROM sessions
     WHERE org_id = ?1 AND business_number_id = ?2 AND contact_id = ?3 AND flow_id = ?4 AND status = 'active'";
/// A conversation's active sessions, newest first.
pub(super) const CONVERSATION_SESSIONS: &str = "SELECT * FROM sessions
     WHERE org_id = ?1 AND business_number_id = ?2 AND contact_id = ?3 AND status = 'active'
     ORDER BY updated_at DESC, id DESC";
pub(super) const CLOSE_SESSION: &str =
    "UPDATE sessions SET status = 'closed', version = version + 1, updated_at = ?5, closed_at = ?5
     WHERE org_id = ?1 AND business_number_id = ?2 AND contact_id = ?3 AND flow_id = ?4 AND status = 'active'";
pub(super) const LIST_ACTIVE_SESSIONS: &str = "SELECT * FROM sessions WHERE org_id = ?1 AND status = 'active'
     ORDER BY updated_at DESC, id DESC LIMIT ?2 OFFSET ?3";

/// Each deletes organization `?1`'s rows from before `?2`.
pub(super) const PURGE_EXPIRED: &str =
    "DELETE FROM sessions WHERE org_id = ?1 AND status = 'active' AND updated_at < ?2";
pub(super) const PURGE_CLOSED: &str = "DELETE FROM sessions WHERE org_id = ?1 AND status = 'closed' AND closed_at < ?2";
pub(super) const PURGE_INBOX: &str =
    "DELETE FROM inbox WHERE org_id = ?1 AND status IN ('done', 'failed') AND finished_at < ?2";
pub(super) const PURGE_OUTBOX: &str =
    "DELETE FROM outbox WHERE org_id = ?1 AND status IN ('done', 'failed') AND finished_at < ?2";
/// Conversations with nothing unfinished: a later row creates them again.
pub(super) const PURGE_CONVERSATIONS: &str =
    "DELETE FROM conversations WHERE org_id = ?1 AND inbox_due IS NULL AND outbox_due IS NULL";

pub(super) const INSERT_LOG: &str =
    "INSERT INTO message_log (org_id, business_number_id, contact_id, flow_id, direction, content_text, content_json,
                              node_id, wamid, at, metadata)
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)";
pub(super) const HISTORY: &str = "SELECT * FROM message_log
     WHERE org_id = ?1 AND business_number_id = ?2 AND contact_id = ?3 ORDER BY id LIMIT ?4 OFFSET ?5";
/// Inbound entries after `?4` that a rate limit counts, at most `?5`.
pub(super) const INBOUND_COUNT: &str = "SELECT count(*) FROM (SELECT 1 FROM message_log
     WHERE org_id = ?1 AND business_number_id = ?2 AND contact_id = ?3 AND direction = 'in' AND at > ?4
       AND json_extract(metadata, '$.rate_limited') IS NOT 1 LIMIT ?5)";
pub(super) const LIST_CONVERSATIONS: &str =
    "SELECT org_id, business_number_id, contact_id, count(*) AS n, min(at) AS first_at, max(at) AS last_at
     FROM message_log WHERE org_id = ?1 GROUP BY org_id, business_number_id, contact_id
     ORDER BY last_at DESC, business_number_id, contact_id LIMIT ?2 OFFSET ?3";
/// Sessions of organization `?1` created in `[?2, ?3)`, counted per flow, cohort, day (of
/// `?4` milliseconds) and status.
pub(super) const METRICS_SESSIONS: &str =
    "SELECT flow_id, cohort, (created_at - (((created_at % ?4) + ?4) % ?4)) / ?4 AS day, status, count(*) AS n
     FROM sessions WHERE org_id = ?1 AND created_at >= ?2 AND created_at < ?3 GROUP BY flow_id, cohort, day, status";
/// Log rows, counted likewise per flow, day and direction.
pub(super) const METRICS_MESSAGES: &str =
    "SELECT flow_id, (at - (((at % ?4) + ?4) % ?4)) / ?4 AS day, direction, count(*) AS n
     FROM message_log WHERE org_id = ?1 AND at >= ?2 AND at < ?3 GROUP BY flow_id, day, direction";

pub(super) const PUBLISH_FLOW: &str = "INSERT INTO flows (org_id, flow_id, version, definition, published_at)
     VALUES (?1, ?2, (SELECT coalesce(max(version), 0) + 1 FROM flows WHERE org_id = ?1 AND flow_id = ?2), ?3, ?4)
     RETURNING version";
pub(super) const GET_FLOW: &str = "SELECT * FROM flows
     WHERE org_id = ?1 AND flow_id = ?2 AND (?3 IS NULL OR version = ?3) ORDER BY version DESC LIMIT 1";
pub(super) const LIST_FLOWS: &str = "SELECT * FROM flows f WHERE org_id = ?1
       AND version = (SELECT max(version) FROM flows g WHERE g.org_id = f.org_id AND g.flow_id = f.flow_id)
     ORDER BY flow_id";
