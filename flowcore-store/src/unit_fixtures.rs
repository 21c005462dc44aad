//! Parts of units of work for the SQL backends' grouped-units tests: organization `o`,
//! business number `b`, flow `f`, everything at one time.

use flowcore::Timestamp;
use serde_json::json;

use crate::testkit::sample_state;
use crate::types::{Content, ConversationKey, Direction, NewLogEntry, NewOutboxMessage, SessionStatus, SessionWrite};

pub(crate) fn at(seconds: i64) -> Timestamp {
    Timestamp::from_unix_seconds(1_700_000_000 + seconds)
}

pub(crate) fn chat(contact: &str) -> ConversationKey {
    ConversationKey::new("o", "b", contact)
}

/// An outbound log row of `text`.
pub(crate) fn log(contact: &str, text: &str) -> NewLogEntry {
    NewLogEntry {
        conversation: chat(contact),
        flow_id: Some("f".into()),
        direction: Direction::Outbound,
        content: Content::Text(text.into()),
        node_id: Some("n".into()),
        wamid: None,
        at: at(5),
        metadata: json!({"k": text}),
    }
}

pub(crate) fn reply(contact: &str, text: &str) -> NewOutboxMessage {
    NewOutboxMessage { conversation: chat(contact), payload: json!({"text": text}), due_at: at(5), inbox_id: None }
}

/// A save of `contact`'s session over version `expected` (0: a new session, on flow version 3).
pub(crate) fn save(contact: &str, expected: i64, status: SessionStatus) -> SessionWrite {
    SessionWrite {
        key: chat(contact).session("f"),
        expected_version: expected,
        flow_version: 3,
        session: sample_state(contact),
        status,
        now: at(5),
    }
}
