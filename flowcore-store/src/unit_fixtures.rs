//! Parts of units of work for the SQL backends' grouped-units tests: organization `o`,
//! business number `b`, flow `f`, everything at one time.

use std::time::Duration;

use flowcore::Timestamp;
use serde_json::json;

use crate::testkit::sample_state;
use crate::traits::Inbox;
use crate::types::{
    Claim, ClaimRequest, Commit, Content, ConversationKey, Direction, NewLogEntry, NewOutboxMessage, SessionStatus,
    SessionWrite,
};

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

/// A save of `contact`'s session over version `expected` (0: a new session, on flow version 3,
/// in cohort `ab/f`).
pub(crate) fn save(contact: &str, expected: i64, status: SessionStatus) -> SessionWrite {
    SessionWrite {
        key: chat(contact).session("f"),
        expected_version: expected,
        flow_version: 3,
        cohort: (expected == 0).then(|| "ab/f".to_owned()),
        session: sample_state(contact),
        status,
        now: at(5),
    }
}

/// An update of `c1` (moving it to flow version 4) with two log rows and a reply, a new session for `c2` with two
/// replies, and `c3`'s session closed; each handles its claimed message (`claims` in contact
/// order).
pub(crate) fn units(claims: &[Claim]) -> Vec<Commit> {
    vec![
        Commit {
            session: Some(SessionWrite { flow_version: 4, ..save("c1", 1, SessionStatus::Active) }),
            log: vec![log("c1", "a"), log("c1", "b")],
            outbox: vec![reply("c1", "a")],
            inbox_done: Some(claims[0]),
            ..Commit::new("o", at(5))
        },
        Commit {
            session: Some(save("c2", 0, SessionStatus::Active)),
            log: vec![log("c2", "c")],
            outbox: vec![reply("c2", "c"), reply("c2", "d")],
            inbox_done: Some(claims[1]),
            ..Commit::new("o", at(5))
        },
        Commit {
            session: Some(save("c3", 1, SessionStatus::Closed)),
            log: vec![log("c3", "e")],
            inbox_done: Some(claims[2]),
            ..Commit::new("o", at(5))
        },
    ]
}

/// Claims every due message of organization `o`, one per conversation, in contact order.
pub(crate) async fn claims_in_contact_order(store: &dyn Inbox) -> Vec<Claim> {
    let request = ClaimRequest::for_org("o", at(1), Duration::from_secs(60), 10);
    let mut claimed = store.claim_inbox(&request).await.unwrap();
    claimed.sort_by(|a, b| a.conversation.contact_id.cmp(&b.conversation.contact_id));
    claimed.iter().map(|e| e.claim()).collect()
}

/// A PostgreSQL store in a fresh schema (of `FLOWCORE_TEST_POSTGRES_URL`), dropped when the
/// test is done with it; `None`, with a skip line, when the variable is not set.
#[cfg(feature = "postgres")]
pub(crate) struct FreshPostgres {
    pub(crate) store: crate::PostgresStore,
    schema: String,
}

#[cfg(feature = "postgres")]
impl FreshPostgres {
    pub(crate) async fn open() -> Option<FreshPostgres> {
        let url = std::env::var("FLOWCORE_TEST_POSTGRES_URL").ok().filter(|u| !u.is_empty());
        let Some(url) = url else {
            eprintln!("SKIPPED: PostgreSQL tests need FLOWCORE_TEST_POSTGRES_URL");
            return None;
        };
        static COUNTER: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
        let schema = format!("flowcore_unit_{}_{nanos}_{n}", std::process::id());
        let options = crate::PostgresOptions::default().with_schema(schema.clone());
        let store = crate::PostgresStore::open(&url, options).await.unwrap();
        Some(FreshPostgres { store, schema })
    }

    pub(crate) async fn drop_schema(self) {
        let sql = format!("DROP SCHEMA IF EXISTS {} CASCADE", self.schema);
        sqlx::raw_sql(&sql).execute(self.store.pool()).await.unwrap();
        crate::traits::Store::close(&self.store).await;
    }
}
