//! Durable storage for flowcore conversations: nothing accepted is ever lost.
//!
//! The pipeline this crate serves:
//!
//! 1. a webhook's messages go into the **inbox**, deduplicated by Meta's message id, before
//!    the server answers `200 OK`;
//! 2. workers **claim** inbox rows: one conversation at a time, in order, under a lease;
//! 3. the engine runs; the new **session** state (version-checked), the **log** rows and the
//!    **outbox** replies are written, and the inbox row marked done, in one [`Store::commit`];
//! 4. a sender claims outbox rows and marks them sent, rescheduled or failed; delivery
//!    statuses are merged by wamid.
//!
//! # The traits
//!
//! | trait | role |
//! |---|---|
//! | [`Organizations`] | the tenants; every other call names one, and never sees another's rows |
//! | [`SessionStore`] | conversation state: load by (org, business number, contact, flow), compare-and-set save ([`StoreError::Conflict`] on a stale write), close, list, purge by TTL and retention |
//! | [`MessageLog`] | every message in and out: history, conversation listing, metrics per flow and per day |
//! | [`Inbox`] | inbound events and scheduled wake-ups: dedup by message id, claim with per-conversation exclusivity and order, done / failed, lease reclaim |
//! | [`Outbox`] | replies: enqueue, claim, sent / reschedule / failed, delivery statuses (monotonic) |
//! | [`FlowStore`] | flow definitions by id and version (sessions keep the version they started on unless a save moves them) |
//! | [`Store`] | all of the above plus the atomic unit of work [`Store::commit`]; use it as `Arc<dyn Store>` |
//!
//! All traits are `async_trait` and object-safe (SQLite runs on threads of its own through
//! rusqlite, PostgreSQL on tokio through sqlx).
//!
//! # Features
//!
//! | feature | default | what it adds |
//! |---|---|---|
//! | `memory` | yes | [`MemoryStore`]: everything in one process's memory |
//! | `sqlite` | no | [`SqliteStore`]: a file (WAL mode, busy timeout), its schema embedded and applied on open |
//! | `postgres` | no | [`PostgresStore`]: claims with `FOR UPDATE SKIP LOCKED`, so several processes share the inbox and outbox |
//! | `testkit` | no | [`testkit`]: the conformance suite every backend — also a host's own — must pass |
//! | `runtime` | no | [`runtime`]: the durable pipeline (workers, sender, janitor) over any [`Store`], for hosts that embed flowcore |
//!
//! [`open`] picks a backend from a URL: `memory`, `sqlite://PATH` (created if missing) or
//! `postgres://…`.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use flowcore::Timestamp;
//! use flowcore_store::*;
//!
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! let store: std::sync::Arc<dyn Store> = std::sync::Arc::new(MemoryStore::new());
//! store.register_organization("acme").await?;
//! let now = Timestamp::from_unix_seconds(1_700_000_000);
//! let chat = ConversationKey::new("acme", "15550001", "5511999990000");
//!
//! // 1. the webhook: insert, a repeat is reported as a duplicate
//! let event = NewInboxEvent::message(chat.clone(), "wamid.1", serde_json::json!({"text": "oi"}), now);
//! assert!(!store.insert_inbox(event.clone()).await?.is_duplicate());
//! assert!(store.insert_inbox(event).await?.is_duplicate());
//!
//! // 2. a worker claims it
//! let claimed = store.claim_inbox(&ClaimRequest::any(now, Duration::from_secs(30), 10)).await?;
//! let job = &claimed[0];
//!
//! // 3. the engine's turn, committed at once
//! let key = chat.session("lead");
//! let loaded = store.load_session(&key).await?; // None: a new conversation
//! let flow = flowcore::Flow::from_json(r#"{"id": "lead", "name": "Lead",
//!     "nodes": [{"id": "s", "type": "start"},
//!               {"id": "ask", "type": "question", "data": {"content": "Qual é o seu nome?", "variableName": "name"}}],
//!     "edges": [{"id": "e1", "source": "s", "target": "ask"}]}"#).unwrap().compile().unwrap();
//! let mut state = flowcore::Session::new(&flow, flowcore::SessionOptions::default());
//! let turn = state.handle(&flow, flowcore::Input::text("oi"), now).unwrap(); // asks the name
//! assert_eq!(state.current_node(), Some("ask"));
//! let expected_version = loaded.map_or(0, |s| s.version);
//! let status = SessionStatus::Active;
//! let session = SessionWrite { key, expected_version, flow_version: 1, cohort: None, session: state, status, now };
//! let payload = serde_json::to_value(&turn.outputs[0]).unwrap(); // Send(Text "Qual é o seu nome?")
//! let reply = NewOutboxMessage { conversation: chat.clone(), payload, due_at: now, inbox_id: Some(job.id) };
//! let commit = Commit {
//!     session: Some(session),
//!     outbox: vec![reply], // and `log`: the turn's messages for the history
//!     inbox_done: Some(job.claim()),
//!     ..Commit::new("acme", now)
//! };
//! assert_eq!(store.commit(commit).await?.session.map(|s| s.version), Some(1));
//!
//! // 4. the sender
//! let out = store.claim_outbox(&ClaimRequest::any(now, Duration::from_secs(30), 10)).await?;
//! store.mark_sent("acme", out[0].claim(), "wamid.reply.1", now).await?;
//! store.record_delivery("acme", "wamid.reply.1", DeliveryStatus::Read, now).await?;
//! # Ok::<(), StoreError>(())
//! # }).unwrap();
//! ```
//!
//! With the `testkit` feature, [`testkit::run_suite`] runs every contract check against a
//! store factory; this crate's tests run it on all three backends.
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_auto_cfg))]

mod error;
#[cfg(feature = "postgres")]
mod group_commit;
#[cfg(any(feature = "memory", feature = "sqlite", feature = "postgres"))]
mod metrics_tally;
mod open;
mod state;
mod traits;
#[cfg_attr(not(any(feature = "sqlite", feature = "postgres")), allow(dead_code))]
mod types;

#[cfg(feature = "memory")]
mod memory;
#[cfg(feature = "postgres")]
mod postgres;
#[cfg(feature = "runtime")]
pub mod runtime;
#[cfg(feature = "postgres")]
mod sql_rows;
#[cfg(feature = "sqlite")]
mod sqlite;
#[cfg(feature = "testkit")]
pub mod testkit;
#[cfg(all(test, feature = "postgres"))]
mod unit_fixtures;

pub use error::{StoreError, StoreResult};
#[cfg(feature = "memory")]
pub use memory::MemoryStore;
pub use open::open;
#[cfg(feature = "postgres")]
pub use postgres::{PostgresOptions, PostgresStore};
#[cfg(feature = "sqlite")]
pub use sqlite::{SqliteOptions, SqliteStore};
pub use state::{Session, STATE_SCHEMA_VERSION};
pub use traits::{check_session, FlowStore, Inbox, MessageLog, Organizations, Outbox, SessionStore, Store};
pub use types::{
    Claim, ClaimRequest, CohortMetrics, Commit, CommitOutcome, Content, ConversationKey, ConversationSummary,
    DayMetrics, DeliveryStatus, Direction, FlowMetrics, InboxEvent, InboxInsert, InboxKind, LogEntry, Metrics,
    MetricsQuery, NewInboxEvent, NewLogEntry, NewOutboxMessage, OutboxMessage, Page, PurgePolicy, PurgeReport,
    QueueStatus, SavedSession, SessionInfo, SessionKey, SessionStatus, SessionWrite, StoredFlow, StoredSession,
    RATE_LIMITED,
};
