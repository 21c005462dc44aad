//! What the SQL backends share: both keep the same columns with the same types, so the
//! row decoders are written once (a macro, because sqlx's row types differ per database
//! and generic bounds over every decoded type would say less than the code), and the
//! helpers around them are plain functions.

use std::collections::HashSet;

use flowcore::Timestamp;

use crate::error::{StoreError, StoreResult};
use crate::types::{Commit, ConversationKey, NewOutboxMessage, SessionInfo};

pub(crate) fn ts(ms: i64) -> Timestamp {
    Timestamp::from_unix_millis(ms)
}

pub(crate) fn json_col(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or(serde_json::Value::String(text.to_owned()))
}

pub(crate) const SESSION_INFO_COLS: &str = "id, org_id, business_number_id, contact_id, flow_id, flow_version, version, status, current_node, wake_at, created_at, updated_at, closed_at";

pub(crate) const INBOX_COLS: &str = "id, org_id, business_number_id, contact_id, message_id, kind, payload, received_at, due_at, status, attempts, lease_until, retry_at, last_error";

pub(crate) const OUTBOX_COLS: &str = "id, org_id, business_number_id, contact_id, payload, inbox_id, due_at, status, attempts, lease_until, retry_at, last_error, wamid, sent_at, delivery, delivery_at";

/// Orders a conversation's sessions newest first: most recently saved, then highest id.
///
/// The queries for one conversation's active sessions leave the order to this function on
/// purpose. With `ORDER BY updated_at` in the query, both SQLite and PostgreSQL (the latter
/// without statistics, as on new tables) chose an index on `(org_id, status, updated_at)`
/// (the schema has none now, so that turns update sessions in place): a walk over every
/// active session of the organization, where `sessions_active_key` holds only the
/// conversation's few rows (one per flow).
pub(crate) fn newest_first(sessions: &mut [SessionInfo]) {
    sessions.sort_by_key(|s| std::cmp::Reverse((s.updated_at, s.id)));
}

/// Which replies of a batch of units of work may be claimed for their callers as they are
/// written (see [`Commit::claim_replies_until`]).
pub(crate) struct ReplyClaims<'c> {
    /// Conversations that more than one unit writes replies to: two callers would each send
    /// theirs, so neither claims them.
    shared: HashSet<&'c ConversationKey>,
}

impl<'c> ReplyClaims<'c> {
    pub(crate) fn of(commits: &[&'c Commit]) -> ReplyClaims<'c> {
        let mut seen = HashSet::new();
        let mut shared = HashSet::new();
        for commit in commits {
            let own: HashSet<&ConversationKey> = commit.outbox.iter().map(|m| &m.conversation).collect();
            for conversation in own {
                if !seen.insert(conversation) {
                    shared.insert(conversation);
                }
            }
        }
        ReplyClaims { shared }
    }

    /// The lease `commit` asks for on `reply`, when the reply may be claimed as it is
    /// written: every reply of the unit to that conversation is due (one claim covers them
    /// all, sent in order) and no other unit of the batch writes to it. The database adds
    /// the last condition as it writes: the conversation has no stored unfinished reply.
    pub(crate) fn lease(&self, commit: &Commit, reply: &NewOutboxMessage) -> Option<Timestamp> {
        let conversation = &reply.conversation;
        commit.claim_replies_until.filter(|_| {
            !self.shared.contains(conversation)
                && commit.outbox.iter().filter(|m| &m.conversation == conversation).all(|m| m.due_at <= commit.now)
        })
    }
}

/// Each of `conversations` once, in the order first asked.
pub(crate) fn distinct_conversations(conversations: &[ConversationKey]) -> Vec<&ConversationKey> {
    let mut seen = std::collections::HashSet::with_capacity(conversations.len());
    conversations.iter().filter(|c| seen.insert(*c)).collect()
}

/// [`SESSION_INFO_COLS`] of the table aliased `s`.
pub(crate) fn session_info_cols_of_s() -> String {
    SESSION_INFO_COLS.split(", ").map(|c| format!("s.{c}")).collect::<Vec<_>>().join(", ")
}

pub(crate) fn same_org(org_id: &str, conversation: &ConversationKey) -> StoreResult<()> {
    if conversation.org_id == org_id {
        Ok(())
    } else {
        Err(StoreError::InvalidInput(format!(
            "row for organization {:?} passed to organization {:?}",
            conversation.org_id, org_id
        )))
    }
}

/// Defines `conversation_of`, `session_info`, `stored_session`, `inbox_event`,
/// `outbox_message` and `log_entry` over the backend's row type.
macro_rules! row_decoders {
    ($row:ty) => {
        fn conversation_of(row: &$row) -> StoreResult<ConversationKey> {
            Ok(ConversationKey {
                org_id: row.try_get("org_id")?,
                business_number_id: row.try_get("business_number_id")?,
                contact_id: row.try_get("contact_id")?,
            })
        }

        fn session_info(row: &$row) -> StoreResult<SessionInfo> {
            Ok(SessionInfo {
                id: row.try_get("id")?,
                key: SessionKey {
                    org_id: row.try_get("org_id")?,
                    business_number_id: row.try_get("business_number_id")?,
                    contact_id: row.try_get("contact_id")?,
                    flow_id: row.try_get("flow_id")?,
                },
                flow_version: row.try_get("flow_version")?,
                version: row.try_get("version")?,
                status: SessionStatus::parse(row.try_get::<&str, _>("status")?),
                current_node: row.try_get("current_node")?,
                wake_at: row.try_get::<Option<i64>, _>("wake_at")?.map(ts),
                created_at: ts(row.try_get("created_at")?),
                updated_at: ts(row.try_get("updated_at")?),
                closed_at: row.try_get::<Option<i64>, _>("closed_at")?.map(ts),
            })
        }

        /// A session row selected with `SESSION_INFO_COLS`, `state_schema` and `state`.
        fn stored_session(row: &$row) -> StoreResult<StoredSession> {
            let info = session_info(row)?;
            let text: &str = row.try_get("state")?;
            let session = state::decode(info.id, row.try_get("state_schema")?, text)?;
            Ok(StoredSession {
                id: info.id,
                key: info.key,
                flow_version: info.flow_version,
                version: info.version,
                status: info.status,
                session,
                created_at: info.created_at,
                updated_at: info.updated_at,
                closed_at: info.closed_at,
            })
        }

        /// The newest of a conversation's active session rows (see `newest_first`), decoded.
        fn newest_stored_session(rows: &[$row]) -> StoreResult<Option<StoredSession>> {
            let mut newest: Option<((i64, i64), &$row)> = None;
            for row in rows {
                let key = (row.try_get::<i64, _>("updated_at")?, row.try_get::<i64, _>("id")?);
                if newest.as_ref().is_none_or(|(newest_key, _)| key > *newest_key) {
                    newest = Some((key, row));
                }
            }
            newest.map(|(_, row)| stored_session(row)).transpose()
        }

        /// Adds to `found` the newest active session of each of `asked`, from rows whose
        /// `asked` column holds the position in `asked` of the conversation they belong to.
        fn newest_of_each<'k>(
            asked: &[&'k ConversationKey],
            rows: Vec<$row>,
            found: &mut std::collections::HashMap<&'k ConversationKey, StoredSession>,
        ) -> StoreResult<()> {
            let mut by_conversation: Vec<Vec<$row>> = asked.iter().map(|_| Vec::new()).collect();
            for row in rows {
                let position = usize::try_from(row.try_get::<i64, _>("asked")?).ok();
                match position.and_then(|i| by_conversation.get_mut(i)) {
                    Some(rows) => rows.push(row),
                    None => return Err(StoreError::Database("active sessions: a row for no conversation".into())),
                }
            }
            for (c, rows) in asked.iter().zip(by_conversation) {
                if let Some(session) = newest_stored_session(&rows)? {
                    found.insert(c, session);
                }
            }
            Ok(())
        }

        fn inbox_event(row: &$row) -> StoreResult<InboxEvent> {
            Ok(InboxEvent {
                id: row.try_get("id")?,
                conversation: conversation_of(row)?,
                message_id: row.try_get("message_id")?,
                kind: InboxKind::parse(row.try_get::<&str, _>("kind")?),
                payload: json_col(row.try_get::<&str, _>("payload")?),
                received_at: ts(row.try_get("received_at")?),
                due_at: ts(row.try_get("due_at")?),
                status: QueueStatus::parse(row.try_get::<&str, _>("status")?),
                attempts: row.try_get("attempts")?,
                lease_until: row.try_get::<Option<i64>, _>("lease_until")?.map(ts),
                retry_at: row.try_get::<Option<i64>, _>("retry_at")?.map(ts),
                last_error: row.try_get("last_error")?,
            })
        }

        fn outbox_message(row: &$row) -> StoreResult<OutboxMessage> {
            Ok(OutboxMessage {
                id: row.try_get("id")?,
                conversation: conversation_of(row)?,
                payload: json_col(row.try_get::<&str, _>("payload")?),
                status: QueueStatus::parse(row.try_get::<&str, _>("status")?),
                attempts: row.try_get("attempts")?,
                due_at: ts(row.try_get("due_at")?),
                retry_at: row.try_get::<Option<i64>, _>("retry_at")?.map(ts),
                lease_until: row.try_get::<Option<i64>, _>("lease_until")?.map(ts),
                wamid: row.try_get("wamid")?,
                last_error: row.try_get("last_error")?,
                inbox_id: row.try_get("inbox_id")?,
                delivery: row.try_get::<Option<&str>, _>("delivery")?.and_then(DeliveryStatus::parse),
                delivery_at: row.try_get::<Option<i64>, _>("delivery_at")?.map(ts),
                sent_at: row.try_get::<Option<i64>, _>("sent_at")?.map(ts),
            })
        }

        fn log_entry(row: &$row) -> StoreResult<LogEntry> {
            Ok(LogEntry {
                id: row.try_get("id")?,
                conversation: conversation_of(row)?,
                flow_id: row.try_get("flow_id")?,
                direction: Direction::parse(row.try_get::<&str, _>("direction")?),
                content: Content::from_columns(row.try_get("content_text")?, row.try_get("content_json")?),
                node_id: row.try_get("node_id")?,
                wamid: row.try_get("wamid")?,
                at: ts(row.try_get("at")?),
                metadata: json_col(row.try_get::<&str, _>("metadata")?),
            })
        }

        /// Metrics from the metrics query's counted rows: sessions (`flow_id`, `cohort`,
        /// `day`, `status`, `n`) and log rows (`flow_id`, `day`, `direction`, `n`).
        fn tally_metrics(sessions: &[$row], messages: &[$row]) -> StoreResult<Metrics> {
            let mut tally = crate::metrics_tally::MetricsTally::default();
            for row in sessions {
                tally.sessions(
                    row.try_get("flow_id")?,
                    row.try_get("cohort")?,
                    row.try_get("day")?,
                    row.try_get::<&str, _>("status")? == "active",
                    row.try_get::<i64, _>("n")?.max(0) as u64,
                );
            }
            for row in messages {
                tally.messages(
                    row.try_get("flow_id")?,
                    row.try_get("day")?,
                    row.try_get::<&str, _>("direction")? == "in",
                    row.try_get::<i64, _>("n")?.max(0) as u64,
                );
            }
            Ok(tally.finish())
        }
    };
}
pub(crate) use row_decoders;
