//! The conformance kit: one suite every [`Store`] must pass — the bundled backends and any
//! host's own implementation.
//!
//! Each case gets a fresh, empty store from your factory, registers the organizations
//! `org-a` and `org-b`, and checks one part of the contract, including the concurrent ones
//! (many workers on one inbox, writers racing on one session, parallel duplicate inserts,
//! lease expiry, per-conversation order under parallel workers) and tenant isolation on every
//! method. Cases need a multi-threaded tokio runtime and panic (like `assert!`) on a
//! violation, naming the case.
//!
//! ```
//! # tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap().block_on(async {
//! use std::sync::Arc;
//! use flowcore_store::{testkit, MemoryStore, Store};
//! let passed = testkit::run_suite(|| async { Arc::new(MemoryStore::new()) as Arc<dyn Store> }).await;
//! assert_eq!(passed, testkit::CASES.len());
//! # });
//! ```

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flowcore::Timestamp;
use serde_json::json;

use crate::*;

/// A boxed conformance case.
pub type CaseFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

/// One conformance case: a name and the check, run on a fresh store.
#[derive(Clone, Copy)]
pub struct Case {
    /// The case's name.
    pub name: &'static str,
    /// The check.
    pub run: fn(Arc<dyn Store>) -> CaseFuture,
}

impl std::fmt::Debug for Case {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Case").field("name", &self.name).finish()
    }
}

macro_rules! cases {
    ($($name:ident),* $(,)?) => {
        /// Every case of the suite.
        pub const CASES: &[Case] = &[$(Case { name: stringify!($name), run: |s| Box::pin($name(s)) }),*];
    };
}

cases!(
    unknown_organization,
    session_compare_and_set,
    session_writers_race,
    session_listing_and_close,
    active_session_is_the_newest,
    active_sessions_read_many_conversations_at_once,
    session_purge,
    purge_failed_rows_by_failure_time,
    message_log_history_and_listing,
    message_log_metrics,
    session_cohorts_in_metrics,
    message_log_inbound_counts,
    inbox_deduplicates,
    inbox_parallel_duplicate_inserts,
    inbox_order_and_exclusivity,
    inbox_wake_ups,
    inbox_failures_and_retries,
    inbox_lease_expiry_and_reclaim,
    inbox_waits_for_replies_out,
    inbox_many_workers_in_order,
    outbox_lifecycle,
    outbox_delivery_statuses,
    outbox_many_senders,
    flows_versions,
    flows_concurrent_publish,
    flows_version_listing,
    session_on_changed_flow,
    commit_all_or_nothing,
    commit_conflict_leaves_nothing,
    commit_lost_lease_leaves_nothing,
    commit_races_one_winner,
    commit_without_wake_ups,
    commit_claims_replies_for_the_caller,
    commit_claims_the_next_event_for_the_caller,
    concurrent_writes_keep_their_own_results,
    tenant_isolation,
    closed_store,
);

/// Runs every case, each on a fresh store from `make`, printing one line per case.
/// Returns the number of cases passed (all of them: a failing case panics).
pub async fn run_suite<F, Fut>(make: F) -> usize
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn Store>>,
{
    let mut passed = 0;
    for case in CASES {
        let store = make().await;
        let backend = store.backend();
        println!("testkit [{backend}] {} ...", case.name);
        run_case(case, store).await;
        println!("testkit [{backend}] {} ok", case.name);
        passed += 1;
    }
    passed
}

/// Runs one case on `store` (after registering `org-a` and `org-b`).
pub async fn run_case(case: &Case, store: Arc<dyn Store>) {
    store.register_organization(ORG_A).await.expect("register org-a");
    store.register_organization(ORG_B).await.expect("register org-b");
    (case.run)(store).await;
}

const ORG_A: &str = "org-a";
const ORG_B: &str = "org-b";
const LEASE: Duration = Duration::from_secs(30);

fn t(seconds: i64) -> Timestamp {
    Timestamp::from_unix_seconds(1_700_000_000 + seconds)
}

fn chat(org: &str, contact: &str) -> ConversationKey {
    ConversationKey::new(org, "biz-1", contact)
}

/// The flow the suite's sessions run on (version 1 of `lead`): start → ask (question) → bye.
pub const SAMPLE_FLOW: &str = r#"{"id": "lead", "name": "Lead",
  "nodes": [{"id": "s", "type": "start"},
            {"id": "ask", "type": "question", "data": {"content": "Nome?", "variableName": "name"}},
            {"id": "bye", "type": "end", "data": {"content": "Tchau, {{name}}!"}}],
  "edges": [{"id": "e1", "source": "s", "target": "ask"}, {"id": "e2", "source": "ask", "target": "bye"}]}"#;

/// The same flow after an edit that renamed the question node (`ask` → `ask_name`).
pub const SAMPLE_FLOW_V2: &str = r#"{"id": "lead", "name": "Lead",
  "nodes": [{"id": "s", "type": "start"},
            {"id": "ask_name", "type": "question", "data": {"content": "Nome?", "variableName": "name"}},
            {"id": "bye", "type": "end", "data": {"content": "Tchau, {{name}}!"}}],
  "edges": [{"id": "e1", "source": "s", "target": "ask_name"}, {"id": "e2", "source": "ask_name", "target": "bye"}]}"#;

/// [`SAMPLE_FLOW`] compiled.
pub fn sample_flow() -> flowcore::CompiledFlow {
    static FLOW: std::sync::OnceLock<flowcore::CompiledFlow> = std::sync::OnceLock::new();
    FLOW.get_or_init(|| {
        flowcore::Flow::from_json(SAMPLE_FLOW).expect("sample flow parses").compile().expect("sample flow compiles")
    })
    .clone()
}

/// A session state the suite saves: [`SAMPLE_FLOW`] waiting at `ask`, with the variable
/// `tag` set, so states are distinguishable.
pub fn sample_state(tag: &str) -> Session {
    let flow = sample_flow();
    let mut session = Session::new(&flow, flowcore::SessionOptions::default());
    session.set_variable("tag", json!(tag));
    session.handle(&flow, flowcore::Input::text("oi"), t(0)).expect("sample session starts");
    session
}

fn write(key: &SessionKey, expected: i64, tag: &str, now: Timestamp) -> SessionWrite {
    SessionWrite {
        key: key.clone(),
        expected_version: expected,
        flow_version: 1,
        cohort: None,
        session: sample_state(tag),
        status: SessionStatus::Active,
        now,
    }
}

fn log_entry(c: &ConversationKey, dir: Direction, text: &str, at: Timestamp, flow: Option<&str>) -> NewLogEntry {
    NewLogEntry {
        conversation: c.clone(),
        flow_id: flow.map(str::to_owned),
        direction: dir,
        content: Content::Text(text.to_owned()),
        node_id: Some("n1".into()),
        wamid: None,
        at,
        metadata: json!({"k": text}),
    }
}

fn reply(c: &ConversationKey, text: &str, due: Timestamp) -> NewOutboxMessage {
    NewOutboxMessage { conversation: c.clone(), payload: json!({"text": text}), due_at: due, inbox_id: None }
}

fn message(c: &ConversationKey, id: &str, at: Timestamp) -> NewInboxEvent {
    NewInboxEvent::message(c.clone(), id, json!({"id": id}), at)
}

async fn claim_one(store: &dyn Store, org: &str, now: Timestamp) -> Vec<InboxEvent> {
    store.claim_inbox(&ClaimRequest::for_org(org, now, LEASE, 100)).await.expect("claim inbox")
}

/// Every method naming an unregistered organization fails with `UnknownOrganization`.
pub async fn unknown_organization(store: Arc<dyn Store>) {
    let c = chat("nobody", "c1");
    let key = c.session("f");
    let unknown =
        |r: StoreError| assert!(matches!(r, StoreError::UnknownOrganization(ref o) if o == "nobody"), "{r:?}");
    assert!(!store.organization_exists("nobody").await.unwrap());
    unknown(store.load_session(&key).await.unwrap_err());
    unknown(store.conversation_sessions(&c).await.unwrap_err());
    unknown(store.save_session(write(&key, 0, "x", t(0))).await.unwrap_err());
    unknown(store.close_session(&key, t(0)).await.unwrap_err());
    unknown(store.list_active_sessions("nobody", Page::default()).await.unwrap_err());
    unknown(store.purge("nobody", t(0), PurgePolicy::default()).await.unwrap_err());
    unknown(store.append_log("nobody", &[log_entry(&c, Direction::Inbound, "x", t(0), None)]).await.unwrap_err());
    unknown(store.history(&c, Page::default()).await.unwrap_err());
    unknown(store.inbound_counts(&[(chat(ORG_A, "c1"), t(0)), (c.clone(), t(0))], 5).await.unwrap_err());
    unknown(store.list_conversations("nobody", Page::default()).await.unwrap_err());
    unknown(store.metrics("nobody", MetricsQuery::default()).await.unwrap_err());
    unknown(store.insert_inbox(message(&c, "m1", t(0))).await.unwrap_err());
    unknown(store.claim_inbox(&ClaimRequest::for_org("nobody", t(0), LEASE, 1)).await.unwrap_err());
    unknown(store.complete_inbox("nobody", Claim { id: 1, attempt: 1 }, t(0)).await.unwrap_err());
    unknown(store.fail_inbox("nobody", Claim { id: 1, attempt: 1 }, "e", None, t(0)).await.unwrap_err());
    unknown(store.reclaim_inbox(Some("nobody"), t(0)).await.unwrap_err());
    unknown(store.get_inbox("nobody", 1).await.unwrap_err());
    unknown(store.enqueue_outbox("nobody", &[reply(&c, "x", t(0))]).await.unwrap_err());
    unknown(store.claim_outbox(&ClaimRequest::for_org("nobody", t(0), LEASE, 1)).await.unwrap_err());
    unknown(store.mark_sent("nobody", Claim { id: 1, attempt: 1 }, "w", t(0)).await.unwrap_err());
    unknown(store.reschedule_outbox("nobody", Claim { id: 1, attempt: 1 }, t(1), "e").await.unwrap_err());
    unknown(store.fail_outbox("nobody", Claim { id: 1, attempt: 1 }, "e", t(0)).await.unwrap_err());
    unknown(store.reclaim_outbox(Some("nobody"), t(0)).await.unwrap_err());
    unknown(store.record_delivery("nobody", "w", DeliveryStatus::Read, t(0)).await.unwrap_err());
    unknown(store.get_outbox("nobody", 1).await.unwrap_err());
    unknown(store.publish_flow("nobody", "f", "{}", t(0)).await.unwrap_err());
    unknown(store.get_flow("nobody", "f", None).await.unwrap_err());
    unknown(store.list_flows("nobody").await.unwrap_err());
    unknown(store.list_flow_versions("nobody", "f").await.unwrap_err());
    let commit = Commit::new("nobody", t(0));
    unknown(store.commit(commit).await.unwrap_err());
    // Registering makes it known; registering twice is fine.
    store.register_organization("nobody").await.unwrap();
    store.register_organization("nobody").await.unwrap();
    assert!(store.organization_exists("nobody").await.unwrap());
    assert!(store.load_session(&key).await.unwrap().is_none());
}

/// Compare-and-set: creates at version 1, bumps by one, refuses stale and duplicate writes.
pub async fn session_compare_and_set(store: Arc<dyn Store>) {
    let key = chat(ORG_A, "c1").session("lead");
    assert!(store.load_session(&key).await.unwrap().is_none());
    let saved = store.save_session(write(&key, 0, "one", t(0))).await.unwrap();
    assert_eq!(saved.version, 1);
    let loaded = store.load_session(&key).await.unwrap().expect("saved session loads");
    assert_eq!((loaded.id, loaded.version, loaded.flow_version), (saved.id, 1, 1));
    assert_eq!(loaded.session, sample_state("one"));
    assert_eq!(loaded.status, SessionStatus::Active);
    assert_eq!((loaded.created_at, loaded.updated_at, loaded.closed_at), (t(0), t(0), None));
    assert_eq!(loaded.key, key);

    // A second create is a conflict, not an overwrite.
    let err = store.save_session(write(&key, 0, "dup", t(1))).await.unwrap_err();
    assert!(matches!(err, StoreError::Conflict { expected: 0, found: Some(1), .. }), "{err:?}");

    // Update: the flow version is the write's (a session moved to a newer flow version).
    let mut w = write(&key, 1, "two", t(2));
    w.flow_version = 7;
    let saved2 = store.save_session(w).await.unwrap();
    assert_eq!((saved2.id, saved2.version), (saved.id, 2));

    // A stale write fails and changes nothing.
    let err = store.save_session(write(&key, 1, "stale", t(3))).await.unwrap_err();
    assert!(err.is_conflict());
    assert!(matches!(err, StoreError::Conflict { expected: 1, found: Some(2), .. }), "{err:?}");
    let err = store.save_session(write(&key, 5, "future", t(3))).await.unwrap_err();
    assert!(err.is_conflict());
    let loaded = store.load_session(&key).await.unwrap().unwrap();
    assert_eq!((loaded.version, loaded.flow_version), (2, 7));
    assert_eq!(loaded.session, sample_state("two"));
    assert_eq!((loaded.created_at, loaded.updated_at), (t(0), t(2)));

    // Updating a session that does not exist is a conflict too.
    let other = chat(ORG_A, "c2").session("lead");
    let err = store.save_session(write(&other, 3, "x", t(0))).await.unwrap_err();
    assert!(matches!(err, StoreError::Conflict { expected: 3, found: None, .. }), "{err:?}");

    // Closing through a save.
    let mut w = write(&key, 2, "end", t(4));
    w.status = SessionStatus::Closed;
    assert_eq!(store.save_session(w).await.unwrap().version, 3);
    assert!(store.load_session(&key).await.unwrap().is_none());
    // A new conversation on the same key starts over.
    let fresh = store.save_session(write(&key, 0, "again", t(5))).await.unwrap();
    assert_eq!(fresh.version, 1);
    assert_ne!(fresh.id, saved.id);
}

/// Many writers racing on one session version: exactly one wins, the others conflict.
pub async fn session_writers_race(store: Arc<dyn Store>) {
    let key = chat(ORG_A, "race").session("lead");
    store.save_session(write(&key, 0, "start", t(0))).await.unwrap();
    for round in 1..=5i64 {
        let mut tasks = tokio::task::JoinSet::new();
        for w in 0..8 {
            let store = store.clone();
            let key = key.clone();
            tasks
                .spawn(async move { store.save_session(write(&key, round, &format!("r{round}w{w}"), t(round))).await });
        }
        let mut wins = 0;
        let mut conflicts = 0;
        while let Some(r) = tasks.join_next().await {
            match r.expect("task") {
                Ok(s) => {
                    assert_eq!(s.version, round + 1);
                    wins += 1;
                }
                Err(e) if e.is_conflict() => conflicts += 1,
                Err(e) => panic!("unexpected error {e:?}"),
            }
        }
        assert_eq!((wins, conflicts), (1, 7), "round {round}");
    }
    assert_eq!(store.load_session(&key).await.unwrap().unwrap().version, 6);

    // Racing creates: one wins.
    let key = chat(ORG_A, "race-create").session("lead");
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..8 {
        let store = store.clone();
        let key = key.clone();
        tasks.spawn(async move { store.save_session(write(&key, 0, &format!("w{w}"), t(0))).await.is_ok() });
    }
    let mut wins = 0;
    while let Some(r) = tasks.join_next().await {
        wins += usize::from(r.unwrap());
    }
    assert_eq!(wins, 1);
}

/// Listing active sessions (paginated, newest first), per conversation, and closing.
pub async fn session_listing_and_close(store: Arc<dyn Store>) {
    for i in 0..5 {
        let key = chat(ORG_A, &format!("c{i}")).session("lead");
        store.save_session(write(&key, 0, "s", t(i))).await.unwrap();
    }
    let survey = chat(ORG_A, "c0").session("survey");
    store.save_session(write(&survey, 0, "s", t(10))).await.unwrap();
    let first = store.list_active_sessions(ORG_A, Page::first(4)).await.unwrap();
    assert_eq!(first.len(), 4);
    assert_eq!(first[0].key, survey);
    assert_eq!(first[1].key.contact_id, "c4");
    let second = store.list_active_sessions(ORG_A, Page::first(4).next()).await.unwrap();
    assert_eq!(second.len(), 2);
    assert_eq!(second[1].key.contact_id, "c0");
    assert!(second.iter().all(|s| s.status == SessionStatus::Active && s.version == 1));

    let in_c0 = store.conversation_sessions(&chat(ORG_A, "c0")).await.unwrap();
    assert_eq!(in_c0.iter().map(|s| s.key.flow_id.as_str()).collect::<Vec<_>>(), vec!["survey", "lead"]);

    assert!(store.close_session(&survey, t(11)).await.unwrap());
    assert!(!store.close_session(&survey, t(12)).await.unwrap());
    assert!(store.load_session(&survey).await.unwrap().is_none());
    assert_eq!(store.list_active_sessions(ORG_A, Page::first(100)).await.unwrap().len(), 5);
    assert_eq!(store.conversation_sessions(&chat(ORG_A, "c0")).await.unwrap().len(), 1);
    // A stale write after a close is a conflict (it must not resurrect the session).
    let err = store.save_session(write(&survey, 1, "late", t(13))).await.unwrap_err();
    assert!(err.is_conflict(), "{err:?}");
    assert!(store.load_session(&survey).await.unwrap().is_none());
}

/// `active_session` returns the conversation's most recently saved active session, with
/// its state, and nothing of another conversation or organization.
pub async fn active_session_is_the_newest(store: Arc<dyn Store>) {
    let c = chat(ORG_A, "c1");
    assert!(store.active_session(&c).await.unwrap().is_none());
    let lead = c.session("lead");
    let other = c.session("other");
    store.save_session(write(&lead, 0, "lead-1", t(1))).await.unwrap();
    store.save_session(write(&other, 0, "other-1", t(2))).await.unwrap();
    let active = store.active_session(&c).await.unwrap().unwrap();
    assert_eq!((active.key.flow_id.as_str(), active.version), ("other", 1));
    assert_eq!(active.session, sample_state("other-1"));
    store.save_session(write(&lead, 1, "lead-2", t(3))).await.unwrap();
    let active = store.active_session(&c).await.unwrap().unwrap();
    assert_eq!((active.key.flow_id.as_str(), active.version), ("lead", 2));
    assert_eq!(active.session, sample_state("lead-2"));
    store.close_session(&lead, t(4)).await.unwrap();
    assert_eq!(store.active_session(&c).await.unwrap().unwrap().key.flow_id, "other");
    store.close_session(&other, t(5)).await.unwrap();
    assert!(store.active_session(&c).await.unwrap().is_none());
    store.save_session(write(&lead, 0, "again", t(6))).await.unwrap();
    assert!(store.active_session(&chat(ORG_A, "c2")).await.unwrap().is_none());
    assert!(store.active_session(&chat(ORG_B, "c1")).await.unwrap().is_none());
    let unknown = store.active_session(&ConversationKey::new("nobody", "biz-1", "c1")).await;
    assert!(matches!(unknown, Err(StoreError::UnknownOrganization(_))), "{unknown:?}");
}

/// `active_sessions` answers, for each conversation in the order given (repeats included),
/// what `active_session` answers, across organizations and never mixing them up.
pub async fn active_sessions_read_many_conversations_at_once(store: Arc<dyn Store>) {
    let (a1, a2, a3, b1) = (chat(ORG_A, "c1"), chat(ORG_A, "c2"), chat(ORG_A, "c3"), chat(ORG_B, "c1"));
    store.save_session(write(&a1.session("lead"), 0, "a1-lead", t(1))).await.unwrap();
    store.save_session(write(&a1.session("other"), 0, "a1-other", t(2))).await.unwrap();
    store.save_session(write(&a2.session("lead"), 0, "a2-lead", t(3))).await.unwrap();
    store.save_session(write(&b1.session("lead"), 0, "b1-lead", t(4))).await.unwrap();
    store.close_session(&a2.session("lead"), t(5)).await.unwrap();
    store.save_session(write(&a3.session("lead"), 0, "a3-lead", t(6))).await.unwrap();
    let asked = [b1.clone(), a1.clone(), a2.clone(), a3.clone(), a1.clone(), chat(ORG_A, "nobody")];
    let batch = store.active_sessions(&asked).await.unwrap();
    assert_eq!(batch.len(), asked.len());
    for (conversation, found) in asked.iter().zip(&batch) {
        assert_eq!(found, &store.active_session(conversation).await.unwrap(), "{conversation}");
    }
    let states: Vec<Option<flowcore::Session>> = batch.into_iter().map(|s| s.map(|s| s.session)).collect();
    assert_eq!(
        states,
        [
            Some(sample_state("b1-lead")),
            Some(sample_state("a1-other")),
            None,
            Some(sample_state("a3-lead")),
            Some(sample_state("a1-other")),
            None
        ]
    );
    assert!(store.active_sessions(&[]).await.unwrap().is_empty());
    let unknown = store.active_sessions(&[a1, ConversationKey::new("nobody", "biz-1", "c1")]).await;
    assert!(matches!(unknown, Err(StoreError::UnknownOrganization(_))), "{unknown:?}");
}

/// Purge: expired active sessions (TTL from `now`), old closed sessions, old finished rows.
pub async fn session_purge(store: Arc<dyn Store>) {
    let day = 24 * 3600;
    let old = chat(ORG_A, "old").session("lead");
    let fresh = chat(ORG_A, "fresh").session("lead");
    let closed_long_ago = chat(ORG_A, "closed-old").session("lead");
    let closed_recently = chat(ORG_A, "closed-new").session("lead");
    store.save_session(write(&old, 0, "s", t(0))).await.unwrap();
    store.save_session(write(&fresh, 0, "s", t(day))).await.unwrap();
    store.save_session(write(&closed_long_ago, 0, "s", t(0))).await.unwrap();
    store.close_session(&closed_long_ago, t(1)).await.unwrap();
    store.save_session(write(&closed_recently, 0, "s", t(0))).await.unwrap();
    store.close_session(&closed_recently, t(25 * day)).await.unwrap();
    let b = chat(ORG_B, "old").session("lead");
    store.save_session(write(&b, 0, "s", t(0))).await.unwrap();

    // Finished inbox / outbox rows.
    let c = chat(ORG_A, "old");
    store.insert_inbox(message(&c, "m-old", t(0))).await.unwrap();
    let ev = claim_one(&*store, ORG_A, t(0)).await;
    store.complete_inbox(ORG_A, ev[0].claim(), t(0)).await.unwrap();
    store.enqueue_outbox(ORG_A, &[reply(&c, "r", t(0))]).await.unwrap();
    let out = store.claim_outbox(&ClaimRequest::for_org(ORG_A, t(0), LEASE, 10)).await.unwrap();
    store.mark_sent(ORG_A, out[0].claim(), "w-old", t(0)).await.unwrap();

    // Nothing expired yet: 23 h after the old session's last save.
    let report = store.purge(ORG_A, t(23 * 3600), PurgePolicy::default()).await.unwrap();
    assert_eq!(report, PurgeReport::default());
    let now = t(31 * day);
    let policy =
        PurgePolicy { session_ttl: Duration::from_secs(day as u64 * 30 + day as u64 / 2), ..PurgePolicy::default() };
    let report = store.purge(ORG_A, now, policy).await.unwrap();
    assert_eq!(report, PurgeReport { expired_sessions: 1, closed_sessions: 1, inbox_rows: 1, outbox_rows: 1 });
    assert!(store.load_session(&old).await.unwrap().is_none());
    assert!(store.load_session(&fresh).await.unwrap().is_some());
    // org-b untouched.
    assert!(store.load_session(&b).await.unwrap().is_some());
    // The default TTL is 24 h.
    let report = store.purge(ORG_A, t(day + day + 1), PurgePolicy::default()).await.unwrap();
    assert_eq!(report.expired_sessions, 1);
    assert!(store.load_session(&fresh).await.unwrap().is_none());
}

/// A row failed for good is finished when it failed (the `now` passed), not when its lease
/// would have ended: retention purging is judged from that time.
pub async fn purge_failed_rows_by_failure_time(store: Arc<dyn Store>) {
    let day = 24 * 3600;
    let long_lease = Duration::from_secs(60 * day as u64);
    let c = chat(ORG_A, "c1");
    store.insert_inbox(message(&c, "m1", t(0))).await.unwrap();
    let ev = store.claim_inbox(&ClaimRequest::for_org(ORG_A, t(0), long_lease, 1)).await.unwrap();
    store.fail_inbox(ORG_A, ev[0].claim(), "poison", None, t(1)).await.unwrap();
    store.enqueue_outbox(ORG_A, &[reply(&c, "r", t(0))]).await.unwrap();
    let out = store.claim_outbox(&ClaimRequest::for_org(ORG_A, t(0), long_lease, 1)).await.unwrap();
    store.fail_outbox(ORG_A, out[0].claim(), "invalid recipient", t(2)).await.unwrap();
    // Within the retention (30 days from the failure), both stay.
    let report = store.purge(ORG_A, t(29 * day), PurgePolicy::default()).await.unwrap();
    assert_eq!((report.inbox_rows, report.outbox_rows), (0, 0));
    assert_eq!(store.get_inbox(ORG_A, ev[0].id).await.unwrap().unwrap().status, QueueStatus::Failed);
    // 31 days after the failure (but long before the 60-day lease would end), both go.
    let report = store.purge(ORG_A, t(31 * day), PurgePolicy::default()).await.unwrap();
    assert_eq!((report.inbox_rows, report.outbox_rows), (1, 1));
    assert!(store.get_inbox(ORG_A, ev[0].id).await.unwrap().is_none());
    assert!(store.get_outbox(ORG_A, out[0].id).await.unwrap().is_none());
}

/// History is per conversation, oldest first, paginated; listings count and order.
pub async fn message_log_history_and_listing(store: Arc<dyn Store>) {
    let c1 = chat(ORG_A, "c1");
    let c2 = chat(ORG_A, "c2");
    let mut entries = Vec::new();
    for i in 0..5 {
        entries.push(log_entry(&c1, Direction::Inbound, &format!("u{i}"), t(i), Some("lead")));
        entries.push(log_entry(&c1, Direction::Outbound, &format!("b{i}"), t(i), Some("lead")));
    }
    let ids = store.append_log(ORG_A, &entries).await.unwrap();
    assert_eq!(ids.len(), 10);
    assert!(ids.windows(2).all(|w| w[0] < w[1]));
    let mut structured = log_entry(&c2, Direction::Outbound, "", t(100), None);
    structured.content = Content::Json(json!({"type": "buttons", "body": "ok?", "choices": [{"id": "y"}]}));
    structured.wamid = Some("wamid.x".into());
    structured.node_id = None;
    store.append_log(ORG_A, &[structured.clone()]).await.unwrap();

    let page1 = store.history(&c1, Page::first(4)).await.unwrap();
    let texts: Vec<_> = page1.iter().map(|e| e.content.clone()).collect();
    assert_eq!(
        texts,
        vec![
            Content::Text("u0".into()),
            Content::Text("b0".into()),
            Content::Text("u1".into()),
            Content::Text("b1".into())
        ]
    );
    assert_eq!(page1[0].direction, Direction::Inbound);
    assert_eq!(page1[0].metadata, json!({"k": "u0"}));
    assert_eq!(page1[0].node_id.as_deref(), Some("n1"));
    assert_eq!(page1[0].flow_id.as_deref(), Some("lead"));
    assert_eq!(page1[0].id, ids[0]);
    let page3 = store.history(&c1, Page { offset: 8, limit: 4 }).await.unwrap();
    assert_eq!(page3.len(), 2);
    let h2 = store.history(&c2, Page::default()).await.unwrap();
    assert_eq!(h2.len(), 1);
    assert_eq!(h2[0].content, structured.content);
    assert_eq!(h2[0].wamid.as_deref(), Some("wamid.x"));
    assert_eq!(h2[0].node_id, None);
    assert_eq!(h2[0].metadata, json!({"k": ""}));

    let list = store.list_conversations(ORG_A, Page::default()).await.unwrap();
    assert_eq!(list.len(), 2);
    assert_eq!(list[0].conversation, c2);
    assert_eq!((list[0].message_count, list[0].last_message_at), (1, t(100)));
    assert_eq!(list[1].conversation, c1);
    assert_eq!((list[1].message_count, list[1].first_message_at, list[1].last_message_at), (10, t(0), t(4)));
    let second = store.list_conversations(ORG_A, Page { offset: 1, limit: 1 }).await.unwrap();
    assert_eq!(second.len(), 1);
    assert_eq!(second[0].conversation, c1);
    assert!(store.history(&chat(ORG_A, "nobody"), Page::default()).await.unwrap().is_empty());
}

/// Inbound counts for a rate limit: inbound entries after each window's start, per
/// conversation and in the order asked; outbound entries and refused ones do not count.
pub async fn message_log_inbound_counts(store: Arc<dyn Store>) {
    let c1 = chat(ORG_A, "c1");
    let c2 = chat(ORG_A, "c2");
    let refused = |at| NewLogEntry {
        metadata: json!({ RATE_LIMITED: true }),
        ..log_entry(&c1, Direction::Inbound, "flood", at, Some("lead"))
    };
    let not_refused = NewLogEntry {
        metadata: json!({ RATE_LIMITED: false }),
        ..log_entry(&c1, Direction::Inbound, "ok", t(25), Some("lead"))
    };
    let entries = vec![
        log_entry(&c1, Direction::Inbound, "a", t(0), Some("lead")),
        log_entry(&c1, Direction::Inbound, "b", t(10), Some("lead")),
        log_entry(&c1, Direction::Outbound, "reply", t(12), Some("lead")),
        refused(t(15)),
        log_entry(&c1, Direction::Inbound, "c", t(20), None),
        refused(t(22)),
        not_refused,
        log_entry(&c2, Direction::Inbound, "other", t(20), Some("lead")),
    ];
    store.append_log(ORG_A, &entries).await.unwrap();
    let b1 = chat(ORG_B, "c1"); // same ids, other tenant
    store.append_log(ORG_B, &[log_entry(&b1, Direction::Inbound, "b", t(30), None)]).await.unwrap();

    let windows = [
        (c1.clone(), t(5)),
        (c1.clone(), t(20)),
        (c2.clone(), t(0)),
        (chat(ORG_A, "nobody"), t(-100)),
        (c1.clone(), t(-100)),
        (b1.clone(), t(0)),
        (c1.clone(), t(25)),
    ];
    let counts = store.inbound_counts(&windows, 100).await.unwrap();
    // c1 after t(5): b, c and the entry marked not refused; after t(20) (strictly): that one.
    assert_eq!(counts, vec![3, 1, 1, 0, 4, 1, 0]);
    assert_eq!(store.inbound_counts(&windows, 2).await.unwrap(), vec![2, 1, 1, 0, 2, 1, 0], "capped");
    assert_eq!(store.inbound_counts(&windows, 0).await.unwrap(), vec![0; 7]);
    assert!(store.inbound_counts(&[], 5).await.unwrap().is_empty());
}

/// Metrics: totals, per flow and per UTC day, in a time window.
pub async fn message_log_metrics(store: Arc<dyn Store>) {
    let day = 24 * 3600;
    // 2023-11-14 22:13:20 UTC is t(0); t(day) is the 15th, t(2 * day) the 16th.
    let c1 = chat(ORG_A, "c1");
    let c2 = chat(ORG_A, "c2");
    store.save_session(write(&c1.session("lead"), 0, "s", t(0))).await.unwrap();
    store.save_session(write(&c2.session("lead"), 0, "s", t(day))).await.unwrap();
    store.save_session(write(&c2.session("survey"), 0, "s", t(day))).await.unwrap();
    store.close_session(&c2.session("survey"), t(day + 1)).await.unwrap();
    store
        .append_log(
            ORG_A,
            &[
                log_entry(&c1, Direction::Inbound, "a", t(0), Some("lead")),
                log_entry(&c1, Direction::Outbound, "b", t(0), Some("lead")),
                log_entry(&c1, Direction::Outbound, "c", t(0), Some("lead")),
                log_entry(&c2, Direction::Inbound, "d", t(day), Some("survey")),
                log_entry(&c2, Direction::Outbound, "e", t(day), None),
                log_entry(&c2, Direction::Inbound, "f", t(2 * day), Some("lead")),
            ],
        )
        .await
        .unwrap();
    let m = store.metrics(ORG_A, MetricsQuery::default()).await.unwrap();
    assert_eq!((m.conversations_total, m.conversations_active), (3, 2));
    assert_eq!((m.messages_in, m.messages_out), (3, 3));
    assert_eq!(
        m.per_flow,
        vec![
            FlowMetrics {
                flow_id: "lead".into(),
                conversations_total: 2,
                conversations_active: 2,
                messages_in: 2,
                messages_out: 2
            },
            FlowMetrics {
                flow_id: "survey".into(),
                conversations_total: 1,
                conversations_active: 0,
                messages_in: 1,
                messages_out: 0
            },
        ]
    );
    assert_eq!(
        m.per_day,
        vec![
            DayMetrics { day: "2023-11-14".into(), conversations_started: 1, messages_in: 1, messages_out: 2 },
            DayMetrics { day: "2023-11-15".into(), conversations_started: 2, messages_in: 1, messages_out: 1 },
            DayMetrics { day: "2023-11-16".into(), conversations_started: 0, messages_in: 1, messages_out: 0 },
        ]
    );
    let window = store.metrics(ORG_A, MetricsQuery { from: Some(t(day)), to: Some(t(2 * day)) }).await.unwrap();
    assert_eq!((window.conversations_total, window.conversations_active), (2, 1));
    assert_eq!((window.messages_in, window.messages_out), (1, 1));
    assert_eq!(window.per_day.len(), 1);
    let empty = store.metrics(ORG_B, MetricsQuery::default()).await.unwrap();
    assert_eq!(empty, Metrics::default());
}

/// Sessions are counted per cohort, the one each was created in: saved alone or in units of
/// work committed together, kept through updates that name none, left out when they have
/// none, and windowed by creation time like every session count.
pub async fn session_cohorts_in_metrics(store: Arc<dyn Store>) {
    let day = 24 * 3600;
    let cohort_write = |c: &ConversationKey, flow: &str, cohort: Option<&str>, now: Timestamp| SessionWrite {
        cohort: cohort.map(str::to_owned),
        ..write(&c.session(flow), 0, "s", now)
    };
    let (c1, c2, c3, c4) = (chat(ORG_A, "c1"), chat(ORG_A, "c2"), chat(ORG_A, "c3"), chat(ORG_A, "c4"));
    // c1 saved alone in the test's first arm; c2 runs the same flow outside the test.
    store.save_session(cohort_write(&c1, "lead", Some("ab/lead"), t(0))).await.unwrap();
    store.save_session(cohort_write(&c2, "lead", None, t(0))).await.unwrap();
    // c3 and c4 start in the second arm through units of work committed at once.
    let mut tasks = tokio::task::JoinSet::new();
    for c in [&c3, &c4] {
        let (s, w) = (store.clone(), cohort_write(c, "survey", Some("ab/survey"), t(day)));
        tasks.spawn(async move { s.commit(Commit { session: Some(w), ..Commit::new(ORG_A, t(day)) }).await });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap().unwrap();
    }
    // An update names no cohort; the session keeps its own. c3 closes.
    let c1_key = c1.session("lead");
    store.save_session(write(&c1_key, 1, "s2", t(day))).await.unwrap();
    store.close_session(&c3.session("survey"), t(day + 1)).await.unwrap();
    // Another organization's test is not counted here.
    store.save_session(cohort_write(&chat(ORG_B, "c1"), "lead", Some("ab/lead"), t(0))).await.unwrap();

    let m = store.metrics(ORG_A, MetricsQuery::default()).await.unwrap();
    let cohort = |name: &str, total, active| CohortMetrics {
        cohort: name.into(),
        conversations_total: total,
        conversations_active: active,
    };
    assert_eq!(m.per_cohort, vec![cohort("ab/lead", 1, 1), cohort("ab/survey", 2, 1)]);
    assert_eq!((m.conversations_total, m.conversations_active), (4, 3), "sessions without a cohort still count");
    let window = store.metrics(ORG_A, MetricsQuery { from: Some(t(day)), to: None }).await.unwrap();
    assert_eq!(window.per_cohort, vec![cohort("ab/survey", 2, 1)]);
}

/// A repeated message id is reported as a duplicate of the first row and not inserted.
pub async fn inbox_deduplicates(store: Arc<dyn Store>) {
    let c = chat(ORG_A, "c1");
    let first = store.insert_inbox(message(&c, "wamid.1", t(0))).await.unwrap();
    assert!(matches!(first, InboxInsert::Inserted(_)));
    let again = store.insert_inbox(message(&c, "wamid.1", t(5))).await.unwrap();
    assert_eq!(again, InboxInsert::Duplicate(first.id()));
    let row = store.get_inbox(ORG_A, first.id()).await.unwrap().unwrap();
    assert_eq!(row.received_at, t(0));
    assert_eq!(row.message_id, "wamid.1");
    assert_eq!(row.kind, InboxKind::Message);
    assert_eq!(row.payload, json!({"id": "wamid.1"}));
    assert_eq!((row.status, row.attempts), (QueueStatus::Pending, 0));
    // Still a duplicate after it was handled.
    let ev = claim_one(&*store, ORG_A, t(1)).await;
    assert_eq!(ev.len(), 1);
    store.complete_inbox(ORG_A, ev[0].claim(), t(1)).await.unwrap();
    assert!(store.insert_inbox(message(&c, "wamid.1", t(9))).await.unwrap().is_duplicate());
    assert!(claim_one(&*store, ORG_A, t(10)).await.is_empty());
    assert_eq!(store.get_inbox(ORG_A, first.id()).await.unwrap().unwrap().status, QueueStatus::Done);
    assert!(store.get_inbox(ORG_A, first.id() + 1000).await.unwrap().is_none());
}

/// Parallel inserts of one message id: exactly one row.
pub async fn inbox_parallel_duplicate_inserts(store: Arc<dyn Store>) {
    let c = chat(ORG_A, "c1");
    for round in 0..5 {
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..12 {
            let store = store.clone();
            let c = c.clone();
            tasks.spawn(async move { store.insert_inbox(message(&c, &format!("dup-{round}"), t(round))).await });
        }
        let mut inserted = 0;
        let mut ids = HashSet::new();
        while let Some(r) = tasks.join_next().await {
            let r = r.unwrap().expect("insert never fails on a duplicate");
            inserted += usize::from(!r.is_duplicate());
            ids.insert(r.id());
        }
        assert_eq!(inserted, 1, "round {round}");
        assert_eq!(ids.len(), 1, "every duplicate names the one row");
    }
    let ev = store.claim_inbox(&ClaimRequest::for_org(ORG_A, t(10), LEASE, 100)).await.unwrap();
    assert_eq!(ev.len(), 1, "one conversation: one claim at a time");
}

/// Claims hand out the head of each conversation only, never two of one conversation.
pub async fn inbox_order_and_exclusivity(store: Arc<dyn Store>) {
    let c1 = chat(ORG_A, "c1");
    let c2 = chat(ORG_A, "c2");
    for (i, id) in ["a1", "a2", "a3"].iter().enumerate() {
        store.insert_inbox(message(&c1, id, t(i as i64))).await.unwrap();
    }
    store.insert_inbox(message(&c2, "b1", t(1))).await.unwrap();
    // Not yet due: nothing.
    assert!(claim_one(&*store, ORG_A, t(-1)).await.is_empty());
    let first = claim_one(&*store, ORG_A, t(5)).await;
    let ids: Vec<_> = first.iter().map(|e| e.message_id.as_str()).collect();
    assert_eq!(ids, vec!["a1", "b1"]);
    assert!(first.iter().all(|e| e.status == QueueStatus::Claimed && e.attempts == 1));
    assert_eq!(first[0].lease_until, Some(t(5 + 30)));
    // Both conversations are busy.
    assert!(claim_one(&*store, ORG_A, t(6)).await.is_empty());
    store.complete_inbox(ORG_A, first[0].claim(), t(6)).await.unwrap();
    // Done twice is a lost lease, not a silent success.
    let err = store.complete_inbox(ORG_A, first[0].claim(), t(6)).await.unwrap_err();
    assert!(matches!(err, StoreError::LeaseLost { .. }), "{err:?}");
    let next = claim_one(&*store, ORG_A, t(7)).await;
    assert_eq!(next.iter().map(|e| e.message_id.as_str()).collect::<Vec<_>>(), vec!["a2"]);
    // limit is respected
    store.complete_inbox(ORG_A, next[0].claim(), t(7)).await.unwrap();
    store.complete_inbox(ORG_A, first[1].claim(), t(7)).await.unwrap();
    let c3 = chat(ORG_A, "c3");
    store.insert_inbox(message(&c3, "c1", t(0))).await.unwrap();
    let one = store.claim_inbox(&ClaimRequest::for_org(ORG_A, t(8), LEASE, 1)).await.unwrap();
    assert_eq!(one.len(), 1);
    assert_eq!(one[0].message_id, "c1", "earliest due first");
    let err = store.complete_inbox(ORG_A, Claim { id: i64::MAX - 1, attempt: 1 }, t(8)).await.unwrap_err();
    assert!(matches!(err, StoreError::NotFound { .. }), "{err:?}");
}

/// Wake-ups are inbox rows due at a time: not claimed before, not blocking messages before.
pub async fn inbox_wake_ups(store: Arc<dyn Store>) {
    let c = chat(ORG_A, "c1");
    let wake = NewInboxEvent::wake_up(c.clone(), "wake:1", json!({"wake": 1}), t(0), t(3600));
    let w = store.insert_inbox(wake.clone()).await.unwrap();
    assert!(store.insert_inbox(wake).await.unwrap().is_duplicate());
    store.insert_inbox(message(&c, "m1", t(10))).await.unwrap();
    let got = claim_one(&*store, ORG_A, t(20)).await;
    assert_eq!(got.iter().map(|e| e.message_id.as_str()).collect::<Vec<_>>(), vec!["m1"]);
    store.complete_inbox(ORG_A, got[0].claim(), t(20)).await.unwrap();
    assert!(claim_one(&*store, ORG_A, t(3599)).await.is_empty());
    let got = claim_one(&*store, ORG_A, t(3600)).await;
    assert_eq!(got.len(), 1);
    assert_eq!((got[0].id, got[0].kind, got[0].due_at), (w.id(), InboxKind::WakeUp, t(3600)));
    assert_eq!(got[0].payload, json!({"wake": 1}));
    // A message arriving after the wake-up became due waits behind it.
    store.insert_inbox(message(&c, "m2", t(3601))).await.unwrap();
    assert!(claim_one(&*store, ORG_A, t(3602)).await.is_empty());
    store.complete_inbox(ORG_A, got[0].claim(), t(3602)).await.unwrap();
    assert_eq!(claim_one(&*store, ORG_A, t(3603)).await[0].message_id, "m2");
}

/// Failures: retry later (blocking the conversation meanwhile, to keep order) or give up.
pub async fn inbox_failures_and_retries(store: Arc<dyn Store>) {
    let c = chat(ORG_A, "c1");
    store.insert_inbox(message(&c, "m1", t(0))).await.unwrap();
    store.insert_inbox(message(&c, "m2", t(1))).await.unwrap();
    let got = claim_one(&*store, ORG_A, t(2)).await;
    assert_eq!(got[0].message_id, "m1");
    store.fail_inbox(ORG_A, got[0].claim(), "engine busy", Some(t(60)), t(2)).await.unwrap();
    let row = store.get_inbox(ORG_A, got[0].id).await.unwrap().unwrap();
    assert_eq!((row.status, row.attempts, row.retry_at), (QueueStatus::Pending, 1, Some(t(60))));
    assert_eq!(row.last_error.as_deref(), Some("engine busy"));
    // m2 must not overtake m1 while m1 backs off.
    assert!(claim_one(&*store, ORG_A, t(30)).await.is_empty());
    let again = claim_one(&*store, ORG_A, t(60)).await;
    assert_eq!((again[0].message_id.as_str(), again[0].attempts), ("m1", 2));
    // The old claim is gone.
    let err = store.fail_inbox(ORG_A, got[0].claim(), "late", None, t(60)).await.unwrap_err();
    assert!(matches!(err, StoreError::LeaseLost { .. }), "{err:?}");
    store.fail_inbox(ORG_A, again[0].claim(), "poison", None, t(60)).await.unwrap();
    let row = store.get_inbox(ORG_A, again[0].id).await.unwrap().unwrap();
    assert_eq!((row.status, row.attempts), (QueueStatus::Failed, 2));
    assert_eq!(row.last_error.as_deref(), Some("poison"));
    // A failed row no longer blocks the conversation.
    let next = claim_one(&*store, ORG_A, t(61)).await;
    assert_eq!(next[0].message_id, "m2");
}

/// An expired lease makes the row claimable again; the old claim is then refused.
pub async fn inbox_lease_expiry_and_reclaim(store: Arc<dyn Store>) {
    let c = chat(ORG_A, "c1");
    store.insert_inbox(message(&c, "m1", t(0))).await.unwrap();
    store.insert_inbox(message(&c, "m2", t(0))).await.unwrap();
    let short = ClaimRequest::for_org(ORG_A, t(0), Duration::from_secs(10), 10);
    let first = store.claim_inbox(&short).await.unwrap();
    assert_eq!(first.len(), 1);
    // Within the lease nobody else gets the conversation.
    assert!(store.claim_inbox(&ClaimRequest::for_org(ORG_A, t(10), LEASE, 10)).await.unwrap().is_empty());
    assert_eq!(store.reclaim_inbox(Some(ORG_A), t(10)).await.unwrap(), 0);
    // After it, the same row (not m2: order is kept) goes to the next worker.
    let second = store.claim_inbox(&ClaimRequest::for_org(ORG_A, t(11), LEASE, 10)).await.unwrap();
    assert_eq!(second.len(), 1);
    assert_eq!((second[0].id, second[0].attempts), (first[0].id, 2));
    let err = store.complete_inbox(ORG_A, first[0].claim(), t(12)).await.unwrap_err();
    assert!(matches!(err, StoreError::LeaseLost { attempt: 1, .. }), "{err:?}");
    // Explicit reclaim returns expired claims to pending.
    assert_eq!(store.reclaim_inbox(None, t(100)).await.unwrap(), 1);
    let row = store.get_inbox(ORG_A, first[0].id).await.unwrap().unwrap();
    assert_eq!((row.status, row.lease_until), (QueueStatus::Pending, None));
    let err = store.complete_inbox(ORG_A, second[0].claim(), t(101)).await.unwrap_err();
    assert!(matches!(err, StoreError::LeaseLost { .. }), "{err:?}");
    let third = claim_one(&*store, ORG_A, t(101)).await;
    assert_eq!((third[0].id, third[0].attempts), (first[0].id, 3));
    store.complete_inbox(ORG_A, third[0].claim(), t(102)).await.unwrap();
    assert_eq!(claim_one(&*store, ORG_A, t(103)).await[0].message_id, "m2");
}

/// A conversation's next event waits while one of its replies is claimed under a live
/// lease (a sender has it out), not while one waits for a retry.
pub async fn inbox_waits_for_replies_out(store: Arc<dyn Store>) {
    let c1 = chat(ORG_A, "c1");
    let c2 = chat(ORG_A, "c2");
    let texts = |events: Vec<InboxEvent>| events.into_iter().map(|e| e.message_id).collect::<Vec<_>>();
    store.enqueue_outbox(ORG_A, &[reply(&c1, "r1", t(0))]).await.unwrap();
    let out = store.claim_outbox(&ClaimRequest::for_org(ORG_A, t(0), Duration::from_secs(10), 10)).await.unwrap();
    assert_eq!(out.len(), 1);
    store.insert_inbox(message(&c1, "m1", t(0))).await.unwrap();
    store.insert_inbox(message(&c2, "m2", t(0))).await.unwrap();
    // c1 waits for its reply; c2 has none out. Claims across organizations hold it back too.
    let got = store.claim_inbox(&ClaimRequest::any(t(1), LEASE, 10)).await.unwrap();
    assert_eq!(texts(got.clone()), vec!["m2"]);
    store.complete_inbox(ORG_A, got[0].claim(), t(1)).await.unwrap();
    assert!(claim_one(&*store, ORG_A, t(10)).await.is_empty(), "the reply's lease lasts until t(10)");
    // Once the lease ran out, the sender is presumed gone: the turn goes ahead.
    let got = claim_one(&*store, ORG_A, t(11)).await;
    assert_eq!(texts(got.clone()), vec!["m1"]);
    store.complete_inbox(ORG_A, got[0].claim(), t(11)).await.unwrap();
    // Sent: the next event goes as soon as the reply is marked sent.
    store.insert_inbox(message(&c1, "m3", t(12))).await.unwrap();
    let out = store.claim_outbox(&ClaimRequest::for_org(ORG_A, t(12), LEASE, 10)).await.unwrap();
    assert_eq!(out.len(), 1);
    assert!(claim_one(&*store, ORG_A, t(13)).await.is_empty());
    store.mark_sent(ORG_A, out[0].claim(), "wamid.r1", t(14)).await.unwrap();
    let got = claim_one(&*store, ORG_A, t(14)).await;
    assert_eq!(texts(got.clone()), vec!["m3"]);
    store.complete_inbox(ORG_A, got[0].claim(), t(14)).await.unwrap();
    // A reply backing off after a failure does not hold the conversation back.
    store.enqueue_outbox(ORG_A, &[reply(&c1, "r2", t(20))]).await.unwrap();
    let out = store.claim_outbox(&ClaimRequest::for_org(ORG_A, t(20), LEASE, 10)).await.unwrap();
    store.reschedule_outbox(ORG_A, out[0].claim(), t(100), "429").await.unwrap();
    store.insert_inbox(message(&c1, "m4", t(21))).await.unwrap();
    assert_eq!(texts(claim_one(&*store, ORG_A, t(21)).await), vec!["m4"]);
}

/// Many workers on one inbox: every event handled exactly once, one at a time per
/// conversation, in order.
pub async fn inbox_many_workers_in_order(store: Arc<dyn Store>) {
    const CONVERSATIONS: usize = 6;
    const PER_CONVERSATION: usize = 15;
    for i in 0..PER_CONVERSATION {
        for c in 0..CONVERSATIONS {
            let org = if c % 3 == 2 { ORG_B } else { ORG_A };
            let conv = chat(org, &format!("c{c}"));
            store.insert_inbox(message(&conv, &format!("c{c}-{i:03}"), t(i as i64))).await.unwrap();
        }
    }
    let in_flight: Arc<Mutex<HashSet<ConversationKey>>> = Arc::default();
    let seen: Arc<Mutex<HashMap<ConversationKey, Vec<String>>>> = Arc::default();
    let mut workers = tokio::task::JoinSet::new();
    for w in 0..8 {
        let store = store.clone();
        let in_flight = in_flight.clone();
        let seen = seen.clone();
        workers.spawn(async move {
            let mut idle = 0;
            while idle < 50 {
                let batch = store.claim_inbox(&ClaimRequest::any(t(1000), LEASE, 2)).await.expect("claim");
                if batch.is_empty() {
                    idle += 1;
                    tokio::task::yield_now().await;
                    continue;
                }
                idle = 0;
                for ev in batch {
                    assert!(
                        in_flight.lock().unwrap().insert(ev.conversation.clone()),
                        "worker {w}: two workers on {}",
                        ev.conversation
                    );
                    seen.lock().unwrap().entry(ev.conversation.clone()).or_default().push(ev.message_id.clone());
                    tokio::task::yield_now().await;
                    in_flight.lock().unwrap().remove(&ev.conversation);
                    store.complete_inbox(&ev.conversation.org_id, ev.claim(), t(1000)).await.expect("complete");
                }
            }
        });
    }
    while let Some(r) = workers.join_next().await {
        r.expect("worker");
    }
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), CONVERSATIONS);
    for (conv, ids) in seen.iter() {
        let mut sorted = ids.clone();
        sorted.sort();
        assert_eq!(ids, &sorted, "{conv}: out of order");
        assert_eq!(ids.len(), PER_CONVERSATION, "{conv}: each event exactly once");
    }
}

/// Outbox: claim in order per conversation, sent with wamid, backoff, permanent failure.
pub async fn outbox_lifecycle(store: Arc<dyn Store>) {
    let c1 = chat(ORG_A, "c1");
    let c2 = chat(ORG_A, "c2");
    let ids = store
        .enqueue_outbox(ORG_A, &[reply(&c1, "one", t(0)), reply(&c1, "two", t(0)), reply(&c2, "later", t(100))])
        .await
        .unwrap();
    assert_eq!(ids.len(), 3);
    let req = |now| ClaimRequest::for_org(ORG_A, now, LEASE, 10);
    let got = store.claim_outbox(&req(t(1))).await.unwrap();
    assert_eq!(got.iter().map(|m| m.payload["text"].as_str().unwrap()).collect::<Vec<_>>(), vec!["one"]);
    assert_eq!((got[0].status, got[0].attempts), (QueueStatus::Claimed, 1));
    assert!(store.claim_outbox(&req(t(2))).await.unwrap().is_empty());
    // Transient failure: back off; "two" waits behind "one".
    store.reschedule_outbox(ORG_A, got[0].claim(), t(20), "429").await.unwrap();
    assert!(store.claim_outbox(&req(t(10))).await.unwrap().is_empty());
    let got = store.claim_outbox(&req(t(20))).await.unwrap();
    assert_eq!((got[0].id, got[0].attempts), (ids[0], 2));
    assert_eq!(got[0].last_error.as_deref(), Some("429"));
    store.mark_sent(ORG_A, got[0].claim(), "wamid.one", t(21)).await.unwrap();
    let sent = store.get_outbox(ORG_A, ids[0]).await.unwrap().unwrap();
    assert_eq!(sent.status, QueueStatus::Done);
    assert_eq!(sent.wamid.as_deref(), Some("wamid.one"));
    assert_eq!(sent.sent_at, Some(t(21)));
    assert_eq!(sent.delivery, Some(DeliveryStatus::Sent));
    let err = store.mark_sent(ORG_A, got[0].claim(), "wamid.again", t(22)).await.unwrap_err();
    assert!(matches!(err, StoreError::LeaseLost { .. }), "{err:?}");
    let got = store.claim_outbox(&req(t(22))).await.unwrap();
    assert_eq!(got.iter().map(|m| m.id).collect::<Vec<_>>(), vec![ids[1]]);
    store.fail_outbox(ORG_A, got[0].claim(), "invalid recipient", t(22)).await.unwrap();
    let failed = store.get_outbox(ORG_A, ids[1]).await.unwrap().unwrap();
    assert_eq!((failed.status, failed.last_error.as_deref()), (QueueStatus::Failed, Some("invalid recipient")));
    assert!(store.claim_outbox(&req(t(99))).await.unwrap().is_empty());
    // Lease expiry on the outbox too.
    let got = store.claim_outbox(&ClaimRequest::for_org(ORG_A, t(100), Duration::from_secs(5), 10)).await.unwrap();
    assert_eq!(got[0].id, ids[2]);
    assert_eq!(store.reclaim_outbox(Some(ORG_A), t(104)).await.unwrap(), 0);
    assert_eq!(store.reclaim_outbox(Some(ORG_A), t(106)).await.unwrap(), 1);
    let again = store.claim_outbox(&req(t(106))).await.unwrap();
    assert_eq!((again[0].id, again[0].attempts), (ids[2], 2));
    let err = store.fail_outbox(ORG_A, got[0].claim(), "late", t(106)).await.unwrap_err();
    assert!(matches!(err, StoreError::LeaseLost { .. }), "{err:?}");
}

/// Delivery statuses merge monotonically: read never regresses to delivered.
pub async fn outbox_delivery_statuses(store: Arc<dyn Store>) {
    let c = chat(ORG_A, "c1");
    let ids = store.enqueue_outbox(ORG_A, &[reply(&c, "hi", t(0))]).await.unwrap();
    let got = store.claim_outbox(&ClaimRequest::for_org(ORG_A, t(0), LEASE, 10)).await.unwrap();
    store.mark_sent(ORG_A, got[0].claim(), "wamid.hi", t(1)).await.unwrap();
    assert!(!store.record_delivery(ORG_A, "wamid.unknown", DeliveryStatus::Read, t(2)).await.unwrap());
    let status = |s: Arc<dyn Store>| {
        let id = ids[0];
        async move { s.get_outbox(ORG_A, id).await.unwrap().unwrap() }
    };
    assert!(store.record_delivery(ORG_A, "wamid.hi", DeliveryStatus::Delivered, t(2)).await.unwrap());
    assert_eq!(status(store.clone()).await.delivery, Some(DeliveryStatus::Delivered));
    assert!(store.record_delivery(ORG_A, "wamid.hi", DeliveryStatus::Read, t(3)).await.unwrap());
    assert!(store.record_delivery(ORG_A, "wamid.hi", DeliveryStatus::Delivered, t(4)).await.unwrap());
    assert!(store.record_delivery(ORG_A, "wamid.hi", DeliveryStatus::Sent, t(5)).await.unwrap());
    assert!(store.record_delivery(ORG_A, "wamid.hi", DeliveryStatus::Failed, t(6)).await.unwrap());
    let row = status(store.clone()).await;
    assert_eq!((row.delivery, row.delivery_at), (Some(DeliveryStatus::Read), Some(t(3))));
    // Another organization cannot touch it.
    assert!(!store.record_delivery(ORG_B, "wamid.hi", DeliveryStatus::Failed, t(7)).await.unwrap());
    // Failed after sent is recorded.
    let ids2 = store.enqueue_outbox(ORG_A, &[reply(&c, "again", t(0))]).await.unwrap();
    let got = store.claim_outbox(&ClaimRequest::for_org(ORG_A, t(10), LEASE, 10)).await.unwrap();
    store.mark_sent(ORG_A, got[0].claim(), "wamid.again", t(10)).await.unwrap();
    store.record_delivery(ORG_A, "wamid.again", DeliveryStatus::Failed, t(11)).await.unwrap();
    assert_eq!(store.get_outbox(ORG_A, ids2[0]).await.unwrap().unwrap().delivery, Some(DeliveryStatus::Failed));
}

/// Parallel senders: every reply sent once, in order per conversation.
pub async fn outbox_many_senders(store: Arc<dyn Store>) {
    for i in 0..12 {
        for c in 0..5 {
            let conv = chat(ORG_A, &format!("c{c}"));
            store.enqueue_outbox(ORG_A, &[reply(&conv, &format!("{i:03}"), t(0))]).await.unwrap();
        }
    }
    let in_flight: Arc<Mutex<HashSet<ConversationKey>>> = Arc::default();
    let sent: Arc<Mutex<HashMap<ConversationKey, Vec<String>>>> = Arc::default();
    let mut workers = tokio::task::JoinSet::new();
    for w in 0..6 {
        let (store, in_flight, sent) = (store.clone(), in_flight.clone(), sent.clone());
        workers.spawn(async move {
            let mut idle = 0;
            while idle < 50 {
                let batch = store.claim_outbox(&ClaimRequest::for_org(ORG_A, t(1), LEASE, 3)).await.expect("claim");
                if batch.is_empty() {
                    idle += 1;
                    tokio::task::yield_now().await;
                    continue;
                }
                idle = 0;
                for m in batch {
                    assert!(in_flight.lock().unwrap().insert(m.conversation.clone()), "sender {w}: two on one chat");
                    let text = m.payload["text"].as_str().unwrap_or_default().to_owned();
                    sent.lock().unwrap().entry(m.conversation.clone()).or_default().push(text);
                    tokio::task::yield_now().await;
                    in_flight.lock().unwrap().remove(&m.conversation);
                    store.mark_sent(ORG_A, m.claim(), &format!("wamid.{}", m.id), t(1)).await.expect("sent");
                }
            }
        });
    }
    while let Some(r) = workers.join_next().await {
        r.expect("sender");
    }
    let sent = sent.lock().unwrap();
    assert_eq!(sent.len(), 5);
    for (conv, texts) in sent.iter() {
        let expected: Vec<String> = (0..12).map(|i| format!("{i:03}")).collect();
        assert_eq!(texts, &expected, "{conv}");
    }
}

/// Flows: each publish adds a version; a session runs on the version its last save named.
pub async fn flows_versions(store: Arc<dyn Store>) {
    assert!(store.get_flow(ORG_A, "lead", None).await.unwrap().is_none());
    assert_eq!(store.publish_flow(ORG_A, "lead", r#"{"v":1}"#, t(0)).await.unwrap(), 1);
    assert_eq!(store.publish_flow(ORG_A, "lead", r#"{"v":2}"#, t(1)).await.unwrap(), 2);
    assert_eq!(store.publish_flow(ORG_A, "survey", r#"{"s":1}"#, t(2)).await.unwrap(), 1);
    let latest = store.get_flow(ORG_A, "lead", None).await.unwrap().unwrap();
    assert_eq!((latest.version, latest.definition.as_str(), latest.published_at), (2, r#"{"v":2}"#, t(1)));
    assert_eq!((latest.org_id.as_str(), latest.flow_id.as_str()), (ORG_A, "lead"));
    let v1 = store.get_flow(ORG_A, "lead", Some(1)).await.unwrap().unwrap();
    assert_eq!(v1.definition, r#"{"v":1}"#);
    assert!(store.get_flow(ORG_A, "lead", Some(3)).await.unwrap().is_none());
    let list = store.list_flows(ORG_A).await.unwrap();
    assert_eq!(
        list.iter().map(|f| (f.flow_id.as_str(), f.version)).collect::<Vec<_>>(),
        vec![("lead", 2), ("survey", 1)]
    );

    // A session started on v1 keeps v1 after v3 is published, until a save moves it, in
    // a commit as in a plain save.
    let key = chat(ORG_A, "c1").session("lead");
    let mut w = write(&key, 0, "s", t(3));
    w.flow_version = 1;
    store.save_session(w).await.unwrap();
    store.publish_flow(ORG_A, "lead", r#"{"v":3}"#, t(4)).await.unwrap();
    let mut w = write(&key, 1, "s2", t(5));
    w.flow_version = 1;
    store.save_session(w).await.unwrap();
    assert_eq!(store.load_session(&key).await.unwrap().unwrap().flow_version, 1);
    let mut w = write(&key, 2, "s3", t(6));
    w.flow_version = 3;
    store.commit(Commit { session: Some(w), ..Commit::new(ORG_A, t(6)) }).await.unwrap();
    let moved = store.load_session(&key).await.unwrap().unwrap();
    assert_eq!((moved.version, moved.flow_version, moved.session.clone()), (3, 3, sample_state("s3")));
    let listed = store.conversation_sessions(&key.conversation()).await.unwrap();
    assert_eq!(listed.iter().map(|s| s.flow_version).collect::<Vec<_>>(), vec![3]);
    // The same definition text is stored exactly, unicode included.
    let text = "{\"name\":\"Olá — ✓\"}";
    let v = store.publish_flow(ORG_A, "unicode", text, t(6)).await.unwrap();
    assert_eq!(store.get_flow(ORG_A, "unicode", Some(v)).await.unwrap().unwrap().definition, text);
}

/// Listing a flow's versions: all of them, newest first, each exactly as published;
/// another organization's flow of the same id is not among them.
pub async fn flows_version_listing(store: Arc<dyn Store>) {
    assert!(store.list_flow_versions(ORG_A, "lead").await.unwrap().is_empty());
    for (i, text) in [r#"{"v":1}"#, r#"{"v":2}"#, r#"{"v":1}"#].iter().enumerate() {
        store.publish_flow(ORG_A, "lead", text, t(i as i64)).await.unwrap();
    }
    store.publish_flow(ORG_A, "survey", r#"{"s":1}"#, t(9)).await.unwrap();
    store.publish_flow(ORG_B, "lead", r#"{"b":1}"#, t(9)).await.unwrap();
    let versions = store.list_flow_versions(ORG_A, "lead").await.unwrap();
    assert_eq!(
        versions.iter().map(|f| (f.version, f.definition.as_str(), f.published_at)).collect::<Vec<_>>(),
        vec![(3, r#"{"v":1}"#, t(2)), (2, r#"{"v":2}"#, t(1)), (1, r#"{"v":1}"#, t(0))]
    );
    assert!(versions.iter().all(|f| f.org_id == ORG_A && f.flow_id == "lead"));
    let theirs = store.list_flow_versions(ORG_B, "lead").await.unwrap();
    assert_eq!(theirs.iter().map(|f| f.definition.as_str()).collect::<Vec<_>>(), vec![r#"{"b":1}"#]);
    assert!(store.list_flow_versions(ORG_B, "survey").await.unwrap().is_empty());
}

/// Concurrent publishes of one flow id all succeed, each with its own next version.
pub async fn flows_concurrent_publish(store: Arc<dyn Store>) {
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..16 {
        let store = store.clone();
        tasks.spawn(async move { store.publish_flow(ORG_A, "lead", &format!("{{\"v\":{i}}}"), t(i)).await });
    }
    let mut versions = Vec::new();
    while let Some(r) = tasks.join_next().await {
        versions.push(r.unwrap().expect("a concurrent publish gets the next version, not an error"));
    }
    versions.sort_unstable();
    assert_eq!(versions, (1..=16).collect::<Vec<i64>>());
    assert_eq!(store.get_flow(ORG_A, "lead", None).await.unwrap().unwrap().version, 16);
    assert_eq!(store.list_flows(ORG_A).await.unwrap().len(), 1);
}

/// A session whose node no longer exists in the flow it is checked against is a typed
/// error for that session only.
pub async fn session_on_changed_flow(store: Arc<dyn Store>) {
    let v1 = store.publish_flow(ORG_A, "lead", SAMPLE_FLOW, t(0)).await.unwrap();
    let key = chat(ORG_A, "c1").session("lead");
    let other = chat(ORG_A, "c2").session("lead");
    let mut w = write(&key, 0, "s", t(1));
    w.flow_version = v1;
    store.save_session(w).await.unwrap();
    let info = &store.conversation_sessions(&key.conversation()).await.unwrap()[0];
    assert_eq!(info.current_node.as_deref(), Some("ask"));
    let v2 = store.publish_flow(ORG_A, "lead", SAMPLE_FLOW_V2, t(2)).await.unwrap();
    let compile = |text: &str| flowcore::Flow::from_json(text).unwrap().compile().unwrap();
    let stored_v1 = store.get_flow(ORG_A, "lead", Some(v1)).await.unwrap().unwrap();
    let stored_v2 = store.get_flow(ORG_A, "lead", Some(v2)).await.unwrap().unwrap();
    // On the version it started on, it loads.
    let ok = store.load_session_checked(&key, &compile(&stored_v1.definition)).await.unwrap().unwrap();
    assert_eq!(ok.flow_version, v1);
    // On the edited flow, its node is gone: a typed error naming the session.
    let err = store.load_session_checked(&key, &compile(&stored_v2.definition)).await.unwrap_err();
    match &err {
        StoreError::IncompatibleState { session_id, flow_id, .. } => {
            assert_eq!((*session_id, flow_id.as_str()), (ok.id, "lead"));
        }
        other => panic!("expected IncompatibleState, got {other:?}"),
    }
    // Nothing else is affected: the raw load works, the session can be closed and restarted.
    assert!(store.load_session(&key).await.unwrap().is_some());
    assert!(store.load_session_checked(&other, &compile(&stored_v2.definition)).await.unwrap().is_none());
    assert!(store.close_session(&key, t(3)).await.unwrap());
    let mut w = write(&key, 0, "fresh", t(4));
    w.flow_version = v2;
    store.save_session(w).await.unwrap();
}

fn turn(c: &ConversationKey, key: &SessionKey, expected: i64, claim: Option<Claim>, now: Timestamp) -> Commit {
    Commit {
        org_id: c.org_id.clone(),
        now,
        session: Some(write(key, expected, "turn", now)),
        log: vec![
            log_entry(c, Direction::Inbound, "user", now, Some(&key.flow_id)),
            log_entry(c, Direction::Outbound, "bot", now, Some(&key.flow_id)),
        ],
        outbox: vec![reply(c, "bot", now)],
        schedule: vec![NewInboxEvent::wake_up(
            c.clone(),
            format!("wake:{}:{expected}", key.flow_id),
            json!({}),
            now,
            now.saturating_add_seconds(600),
        )],
        inbox_done: claim,
        claim_replies_until: None,
        claim_next_until: None,
    }
}

/// A successful commit writes every part.
pub async fn commit_all_or_nothing(store: Arc<dyn Store>) {
    let c = chat(ORG_A, "c1");
    let key = c.session("lead");
    store.insert_inbox(message(&c, "m1", t(0))).await.unwrap();
    let ev = claim_one(&*store, ORG_A, t(1)).await;
    let out = store.commit(turn(&c, &key, 0, Some(ev[0].claim()), t(2))).await.unwrap();
    assert_eq!(out.session.map(|s| s.version), Some(1));
    assert_eq!((out.log_ids.len(), out.outbox_ids.len(), out.scheduled.len()), (2, 1, 1));
    assert!(!out.scheduled[0].is_duplicate());
    assert_eq!(store.load_session(&key).await.unwrap().unwrap().session, sample_state("turn"));
    assert_eq!(store.history(&c, Page::default()).await.unwrap().len(), 2);
    assert!(store.get_outbox(ORG_A, out.outbox_ids[0]).await.unwrap().is_some());
    assert_eq!(store.get_inbox(ORG_A, ev[0].id).await.unwrap().unwrap().status, QueueStatus::Done);
    let wake = store.get_inbox(ORG_A, out.scheduled[0].id()).await.unwrap().unwrap();
    assert_eq!((wake.kind, wake.due_at), (InboxKind::WakeUp, t(602)));
    // A commit without a session (an operator's message) works too.
    let op = Commit {
        log: vec![log_entry(&c, Direction::Outbound, "operator", t(3), None)],
        outbox: vec![reply(&c, "operator", t(3))],
        ..Commit::new(ORG_A, t(3))
    };
    let out = store.commit(op).await.unwrap();
    assert_eq!((out.session, out.log_ids.len(), out.outbox_ids.len()), (None, 1, 1));
    // A part of another organization is refused, and nothing of the commit lands.
    let mut bad = turn(&c, &key, 1, None, t(4));
    bad.outbox.push(reply(&chat(ORG_B, "x"), "leak", t(4)));
    let err = store.commit(bad).await.unwrap_err();
    assert!(matches!(err, StoreError::InvalidInput(_)), "{err:?}");
    assert_eq!(store.load_session(&key).await.unwrap().unwrap().version, 1);
    assert_eq!(store.history(&c, Page::default()).await.unwrap().len(), 3);
}

/// Replies a commit claims for its caller ([`Commit::claim_replies_until`]; a backend may
/// leave them to a claim instead) are claimed as a claim would claim them: first attempt,
/// until the lease, in order, only where their conversation has no earlier unfinished reply,
/// and not claimed again while the lease holds. Commits run concurrently, so grouping
/// backends write them together.
pub async fn commit_claims_replies_for_the_caller(store: Arc<dyn Store>) {
    const CHATS: usize = 6;
    let lease = t(70);
    let chats: Vec<ConversationKey> = (0..CHATS).map(|i| chat(ORG_A, &format!("c{i}"))).collect();
    // Odd conversations have an unfinished reply already.
    let mut earlier = HashMap::new();
    for c in chats.iter().skip(1).step_by(2) {
        earlier
            .insert(c.contact_id.clone(), store.enqueue_outbox(ORG_A, &[reply(c, "earlier", t(0))]).await.unwrap()[0]);
    }
    let mut tasks = tokio::task::JoinSet::new();
    for c in chats.clone() {
        let store = store.clone();
        tasks.spawn(async move {
            let commit = Commit {
                outbox: vec![reply(&c, "first", t(1)), reply(&c, "second", t(1))],
                claim_replies_until: Some(lease),
                ..Commit::new(ORG_A, t(1))
            };
            (c, commit.outbox.clone(), store.commit(commit).await.unwrap())
        });
    }
    let mut ours = HashSet::new();
    while let Some(joined) = tasks.join_next().await {
        let (c, written, outcome) = joined.unwrap();
        let claimed = &outcome.claimed_replies;
        if earlier.contains_key(&c.contact_id) {
            assert!(claimed.is_empty(), "{c}: an earlier reply is unfinished: {claimed:?}");
        }
        if claimed.is_empty() {
            continue;
        }
        assert_eq!(claimed.iter().map(|m| m.id).collect::<Vec<_>>(), outcome.outbox_ids, "{c}: all of them, in order");
        for (m, w) in claimed.iter().zip(&written) {
            assert_eq!((m.status, m.attempts, m.lease_until), (QueueStatus::Claimed, 1, Some(lease)), "{c}");
            assert_eq!((&m.conversation, &m.payload, m.due_at), (&w.conversation, &w.payload, w.due_at), "{c}");
            let stored = store.get_outbox(ORG_A, m.id).await.unwrap().unwrap();
            assert_eq!((stored.status, stored.attempts, stored.lease_until), (QueueStatus::Claimed, 1, Some(lease)));
            ours.insert(m.id);
        }
    }
    // A claim while the leases hold takes none of ours: each conversation's first reply that
    // is not out with this caller.
    let found = store.claim_outbox(&ClaimRequest::for_org(ORG_A, t(2), LEASE, 100)).await.unwrap();
    assert!(found.iter().all(|m| !ours.contains(&m.id)), "claimed twice: {found:?}");
    let found_earlier: HashSet<i64> =
        found.iter().map(|m| m.id).filter(|id| earlier.values().any(|e| e == id)).collect();
    assert_eq!(found_earlier, earlier.values().copied().collect(), "each earlier reply goes first");
    // Ours finish with their claims, in order.
    for id in &ours {
        store.mark_sent(ORG_A, Claim { id: *id, attempt: 1 }, "wamid.x", t(3)).await.unwrap();
    }
}

/// The next inbox event a commit claims for its caller ([`Commit::claim_next_until`]; a
/// backend may leave it to a claim instead) is its conversation's next one, claimed as a
/// claim would claim it: first attempt, until the lease, and only once it is due. A claim
/// passes over it while the lease holds, and its own turn commits. Commits run
/// concurrently, so grouping backends write them together.
pub async fn commit_claims_the_next_event_for_the_caller(store: Arc<dyn Store>) {
    const CHATS: usize = 4;
    let lease = t(70);
    let chats: Vec<ConversationKey> = (0..CHATS).map(|i| chat(ORG_A, &format!("c{i}"))).collect();
    for (i, c) in chats.iter().enumerate() {
        store.insert_inbox(message(c, &format!("{c}-first"), t(0))).await.unwrap();
        // The last conversation's next event is a wake-up, not due when the first is handled.
        let next = if i == CHATS - 1 {
            NewInboxEvent::wake_up(c.clone(), format!("{c}-next"), json!({}), t(0), t(500))
        } else {
            message(c, &format!("{c}-next"), t(0))
        };
        store.insert_inbox(next).await.unwrap();
    }
    let claimed = store.claim_inbox(&ClaimRequest::for_org(ORG_A, t(1), LEASE, 100)).await.unwrap();
    assert_eq!(claimed.len(), CHATS, "one per conversation");
    let mut tasks = tokio::task::JoinSet::new();
    for event in claimed {
        let store = store.clone();
        tasks.spawn(async move {
            let commit =
                Commit { inbox_done: Some(event.claim()), claim_next_until: Some(lease), ..Commit::new(ORG_A, t(5)) };
            (event.conversation.clone(), store.commit(commit).await.unwrap().claimed_next)
        });
    }
    let mut ours = Vec::new();
    let mut left = HashSet::new();
    while let Some(joined) = tasks.join_next().await {
        let (c, next) = joined.unwrap();
        let Some(next) = next else {
            if c != chats[CHATS - 1] {
                left.insert(format!("{c}-next"));
            }
            continue;
        };
        assert_ne!(c, chats[CHATS - 1], "a wake-up not due yet was claimed: {next:?}");
        assert_eq!((&next.conversation, next.message_id.as_str()), (&c, format!("{c}-next").as_str()));
        assert_eq!((next.status, next.attempts, next.lease_until), (QueueStatus::Claimed, 1, Some(lease)), "{c}");
        assert_eq!(store.get_inbox(ORG_A, next.id).await.unwrap().as_ref(), Some(&*next), "{c}: as stored");
        ours.push(next);
    }
    // A claim while the leases hold finds only what no commit claimed (the wake-up is not due).
    let found = store.claim_inbox(&ClaimRequest::for_org(ORG_A, t(6), LEASE, 100)).await.unwrap();
    let found: HashSet<String> = found.into_iter().map(|e| e.message_id).collect();
    assert_eq!(found, left);
    for next in ours {
        store.commit(Commit { inbox_done: Some(next.claim()), ..Commit::new(ORG_A, t(7)) }).await.unwrap();
    }
}

/// A version conflict leaves the inbox row claimed, and no log, outbox or wake-up rows.
pub async fn commit_conflict_leaves_nothing(store: Arc<dyn Store>) {
    let c = chat(ORG_A, "c1");
    let key = c.session("lead");
    store.save_session(write(&key, 0, "other-writer", t(0))).await.unwrap();
    store.save_session(write(&key, 1, "other-writer", t(0))).await.unwrap();
    store.insert_inbox(message(&c, "m1", t(0))).await.unwrap();
    let ev = claim_one(&*store, ORG_A, t(1)).await;
    let err = store.commit(turn(&c, &key, 1, Some(ev[0].claim()), t(2))).await.unwrap_err();
    assert!(matches!(err, StoreError::Conflict { expected: 1, found: Some(2), .. }), "{err:?}");
    let row = store.get_inbox(ORG_A, ev[0].id).await.unwrap().unwrap();
    assert_eq!((row.status, row.attempts), (QueueStatus::Claimed, 1));
    assert!(store.history(&c, Page::default()).await.unwrap().is_empty());
    assert!(store.claim_outbox(&ClaimRequest::for_org(ORG_A, t(10_000), LEASE, 10)).await.unwrap().is_empty());
    let loaded = store.load_session(&key).await.unwrap().unwrap();
    assert_eq!((loaded.version, loaded.session), (2, sample_state("other-writer")));
    // Nothing was scheduled either: after the lease ends only m1 comes back.
    let later = claim_one(&*store, ORG_A, t(10_000)).await;
    assert_eq!(later.iter().map(|e| e.message_id.as_str()).collect::<Vec<_>>(), vec!["m1"]);
    // Retried with the right version, the turn lands.
    let out = store.commit(turn(&c, &key, 2, Some(later[0].claim()), t(10_001))).await.unwrap();
    assert_eq!(out.session.map(|s| s.version), Some(3));
}

/// A lost inbox lease also refuses the whole commit (the session stays as it was).
pub async fn commit_lost_lease_leaves_nothing(store: Arc<dyn Store>) {
    let c = chat(ORG_A, "c1");
    let key = c.session("lead");
    store.insert_inbox(message(&c, "m1", t(0))).await.unwrap();
    let first = store.claim_inbox(&ClaimRequest::for_org(ORG_A, t(0), Duration::from_secs(1), 1)).await.unwrap();
    let second = claim_one(&*store, ORG_A, t(5)).await;
    assert_eq!(second[0].attempts, 2);
    let err = store.commit(turn(&c, &key, 0, Some(first[0].claim()), t(6))).await.unwrap_err();
    assert!(matches!(err, StoreError::LeaseLost { .. }), "{err:?}");
    assert!(store.load_session(&key).await.unwrap().is_none());
    assert!(store.history(&c, Page::default()).await.unwrap().is_empty());
    let row = store.get_inbox(ORG_A, first[0].id).await.unwrap().unwrap();
    assert_eq!((row.status, row.attempts), (QueueStatus::Claimed, 2));
    store.commit(turn(&c, &key, 0, Some(second[0].claim()), t(7))).await.unwrap();
}

/// Racing commits on one session version: one lands, the rest leave no trace.
pub async fn commit_races_one_winner(store: Arc<dyn Store>) {
    let c = chat(ORG_A, "c1");
    let key = c.session("lead");
    store.save_session(write(&key, 0, "s", t(0))).await.unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..8 {
        let (store, c, key) = (store.clone(), c.clone(), key.clone());
        tasks.spawn(async move {
            let mut commit = turn(&c, &key, 1, None, t(i));
            commit.schedule.clear();
            store.commit(commit).await
        });
    }
    let mut wins = 0;
    while let Some(r) = tasks.join_next().await {
        match r.unwrap() {
            Ok(_) => wins += 1,
            Err(e) => assert!(e.is_conflict(), "{e:?}"),
        }
    }
    assert_eq!(wins, 1);
    assert_eq!(store.history(&c, Page::default()).await.unwrap().len(), 2);
    assert_eq!(store.claim_outbox(&ClaimRequest::for_org(ORG_A, t(100), LEASE, 10)).await.unwrap().len(), 1);
}

/// Many tasks' writes at once (a backend may group them into shared transactions): each
/// write gets its own result, and one that fails takes nothing else down with it.
pub async fn concurrent_writes_keep_their_own_results(store: Arc<dyn Store>) {
    const CHATS: usize = 12;
    for i in 0..CHATS {
        let c = chat(ORG_A, &format!("c{i}"));
        store.save_session(write(&c.session("lead"), 0, "s", t(0))).await.unwrap();
        store.insert_inbox(message(&c, &format!("m{i}"), t(0))).await.unwrap();
    }
    let claimed = store.claim_inbox(&ClaimRequest::for_org(ORG_A, t(1), LEASE, 100)).await.unwrap();
    assert_eq!(claimed.len(), CHATS);
    let mut tasks = tokio::task::JoinSet::new();
    for event in claimed {
        let c = event.conversation.clone();
        let key = c.session("lead");
        let i: usize = c.contact_id.trim_start_matches('c').parse().unwrap();
        let claim = event.claim();
        // The turn that holds the claim and the version: lands (half of them with wake-ups).
        let (s, (c1, k1)) = (store.clone(), (c.clone(), key.clone()));
        tasks.spawn(async move {
            let mut commit = turn(&c1, &k1, 1, Some(claim), t(2));
            if i % 2 == 1 {
                commit.schedule.clear();
            }
            ("turn", i, s.commit(commit).await.map(|o| o.log_ids.len() + o.outbox_ids.len()).map_err(|e| e.to_string()))
        });
        // A stale writer: a conflict, nothing written.
        let (s, (c2, k2)) = (store.clone(), (c.clone(), key.clone()));
        tasks.spawn(async move {
            let commit = turn(&c2, &k2, 7, None, t(2));
            let result = s.commit(commit).await;
            assert!(matches!(result, Err(StoreError::Conflict { expected: 7, .. })), "{result:?}");
            ("stale", i, Ok(0))
        });
        // The same message delivered twice at once: one insert, one duplicate.
        for _ in 0..2 {
            let (s, c3) = (store.clone(), c.clone());
            tasks.spawn(async move {
                let inserted = s.insert_inbox(message(&c3, &format!("again-{i}"), t(3))).await.unwrap();
                ("insert", i, Ok(usize::from(!inserted.is_duplicate())))
            });
        }
        // A claim change with an attempt nobody holds: refused.
        let s = store.clone();
        tasks.spawn(async move {
            let bogus = Claim { id: claim.id, attempt: 99 };
            let result = s.complete_inbox(ORG_A, bogus, t(2)).await;
            assert!(matches!(result, Err(StoreError::LeaseLost { .. })), "{result:?}");
            ("bogus", i, Ok(0))
        });
    }
    let mut inserted = vec![0; CHATS];
    while let Some(done) = tasks.join_next().await {
        match done.unwrap() {
            ("turn", i, result) => assert_eq!(result, Ok(3), "turn of c{i}"),
            ("insert", i, Ok(n)) => inserted[i] += n,
            _ => {}
        }
    }
    assert_eq!(inserted, vec![1; CHATS], "each duplicate pair inserted exactly once");
    for i in 0..CHATS {
        let c = chat(ORG_A, &format!("c{i}"));
        assert_eq!(store.load_session(&c.session("lead")).await.unwrap().unwrap().version, 2, "c{i}");
        let history = store.history(&c, Page::default()).await.unwrap();
        assert_eq!(history.len(), 2, "c{i}: only the landed turn's rows");
    }
    let replies = store.claim_outbox(&ClaimRequest::for_org(ORG_A, t(10), LEASE, 100)).await.unwrap();
    assert_eq!(replies.len(), CHATS);
}

/// The common turn (no wake-ups; backends may take a faster path for it): every part lands,
/// ids come back in order, and a stale version, an existing session for a "new" one or a lost
/// lease leaves nothing at all.
pub async fn commit_without_wake_ups(store: Arc<dyn Store>) {
    let c = chat(ORG_A, "c1");
    let key = c.session("lead");
    let plain = |expected, claim, now| {
        let mut commit = turn(&c, &key, expected, claim, now);
        commit.schedule.clear();
        commit.log.push(log_entry(&c, Direction::Outbound, "bot-2", now, Some("lead")));
        commit.outbox.push(reply(&c, "bot-2", now));
        commit
    };
    store.insert_inbox(message(&c, "m1", t(0))).await.unwrap();
    let ev = claim_one(&*store, ORG_A, t(1)).await;
    let out = store.commit(plain(0, Some(ev[0].claim()), t(2))).await.unwrap();
    assert_eq!(out.session.map(|s| s.version), Some(1));
    assert_eq!((out.log_ids.len(), out.outbox_ids.len(), out.scheduled.len()), (3, 2, 0));
    assert!(out.log_ids.windows(2).all(|w| w[0] < w[1]) && out.outbox_ids.windows(2).all(|w| w[0] < w[1]));
    let history = store.history(&c, Page::default()).await.unwrap();
    assert_eq!(history.iter().map(|e| e.id).collect::<Vec<_>>(), out.log_ids);
    assert_eq!(
        history.iter().map(|e| e.content.clone()).collect::<Vec<_>>(),
        vec![Content::Text("user".into()), Content::Text("bot".into()), Content::Text("bot-2".into())]
    );
    assert_eq!(history[0].metadata, json!({"k": "user"}));
    assert_eq!(history[0].flow_id.as_deref(), Some("lead"));
    let first = store.get_outbox(ORG_A, out.outbox_ids[0]).await.unwrap().unwrap();
    assert_eq!((first.payload, first.inbox_id), (json!({"text": "bot"}), None));
    let row = store.get_inbox(ORG_A, ev[0].id).await.unwrap().unwrap();
    assert_eq!(row.status, QueueStatus::Done);
    let loaded = store.load_session(&key).await.unwrap().unwrap();
    assert_eq!((loaded.version, loaded.session), (1, sample_state("turn")));

    // Stale version, with a valid claim: Conflict; the claim stays, nothing is written.
    store.insert_inbox(message(&c, "m2", t(3))).await.unwrap();
    let ev = claim_one(&*store, ORG_A, t(3)).await;
    let err = store.commit(plain(5, Some(ev[0].claim()), t(4))).await.unwrap_err();
    assert!(matches!(err, StoreError::Conflict { expected: 5, found: Some(1), .. }), "{err:?}");
    // "New" session where one is active: Conflict too.
    let err = store.commit(plain(0, Some(ev[0].claim()), t(4))).await.unwrap_err();
    assert!(matches!(err, StoreError::Conflict { expected: 0, found: Some(1), .. }), "{err:?}");
    // A claim of another attempt: LeaseLost; a claim of no row: NotFound.
    let stale = Claim { id: ev[0].id, attempt: ev[0].attempts + 1 };
    let err = store.commit(plain(1, Some(stale), t(4))).await.unwrap_err();
    assert!(matches!(err, StoreError::LeaseLost { .. }), "{err:?}");
    let err = store.commit(plain(1, Some(Claim { id: 999_999, attempt: 1 }), t(4))).await.unwrap_err();
    assert!(matches!(err, StoreError::NotFound { .. }), "{err:?}");
    assert_eq!(store.history(&c, Page::default()).await.unwrap().len(), 3);
    assert_eq!(store.load_session(&key).await.unwrap().unwrap().version, 1);
    let row = store.get_inbox(ORG_A, ev[0].id).await.unwrap().unwrap();
    assert_eq!((row.status, row.attempts), (QueueStatus::Claimed, 1));

    // Closing in a commit: the session leaves the active set.
    let mut close = plain(1, Some(ev[0].claim()), t(5));
    if let Some(w) = close.session.as_mut() {
        w.status = SessionStatus::Closed;
    }
    let out = store.commit(close).await.unwrap();
    assert_eq!(out.session.map(|s| s.version), Some(2));
    assert!(store.load_session(&key).await.unwrap().is_none());
    assert_eq!(store.history(&c, Page::default()).await.unwrap().len(), 6);
}

/// Organization B never sees or touches organization A's rows, through any method.
pub async fn tenant_isolation(store: Arc<dyn Store>) {
    let a = chat(ORG_A, "c1");
    let b = chat(ORG_B, "c1"); // same business number and contact ids, other tenant
    let key_a = a.session("lead");
    let key_b = b.session("lead");
    let saved = store.save_session(write(&key_a, 0, "a", t(0))).await.unwrap();
    store.append_log(ORG_A, &[log_entry(&a, Direction::Inbound, "secret", t(0), Some("lead"))]).await.unwrap();
    let ins = store.insert_inbox(message(&a, "wamid.same", t(0))).await.unwrap();
    let out_ids = store.enqueue_outbox(ORG_A, &[reply(&a, "secret", t(0))]).await.unwrap();
    store.publish_flow(ORG_A, "lead", "{}", t(0)).await.unwrap();

    // Reads.
    assert!(store.load_session(&key_b).await.unwrap().is_none());
    assert!(store.conversation_sessions(&b).await.unwrap().is_empty());
    assert!(store.list_active_sessions(ORG_B, Page::default()).await.unwrap().is_empty());
    assert!(store.history(&b, Page::default()).await.unwrap().is_empty());
    assert_eq!(store.inbound_counts(&[(b.clone(), t(-1))], 5).await.unwrap(), vec![0]);
    assert!(store.list_conversations(ORG_B, Page::default()).await.unwrap().is_empty());
    assert_eq!(store.metrics(ORG_B, MetricsQuery::default()).await.unwrap(), Metrics::default());
    assert!(store.get_inbox(ORG_B, ins.id()).await.unwrap().is_none());
    assert!(store.get_outbox(ORG_B, out_ids[0]).await.unwrap().is_none());
    assert!(store.get_flow(ORG_B, "lead", None).await.unwrap().is_none());
    assert!(store.list_flows(ORG_B).await.unwrap().is_empty());
    assert!(store.claim_inbox(&ClaimRequest::for_org(ORG_B, t(1), LEASE, 10)).await.unwrap().is_empty());
    assert!(store.claim_outbox(&ClaimRequest::for_org(ORG_B, t(1), LEASE, 10)).await.unwrap().is_empty());

    // Writes under B's name do not reach A's rows.
    assert!(!store.close_session(&key_b, t(1)).await.unwrap());
    let err = store.save_session(write(&key_b, 1, "b", t(1))).await.unwrap_err();
    assert!(err.is_conflict());
    // The same message id is independent per organization.
    assert!(!store.insert_inbox(message(&b, "wamid.same", t(0))).await.unwrap().is_duplicate());
    let claimed_a = store.claim_inbox(&ClaimRequest::for_org(ORG_A, t(1), LEASE, 10)).await.unwrap();
    assert_eq!(claimed_a.len(), 1);
    assert_eq!(claimed_a[0].conversation, a);
    let not_found = |e: StoreError| assert!(matches!(e, StoreError::NotFound { .. }), "{e:?}");
    not_found(store.complete_inbox(ORG_B, claimed_a[0].claim(), t(1)).await.unwrap_err());
    not_found(store.fail_inbox(ORG_B, claimed_a[0].claim(), "x", None, t(0)).await.unwrap_err());
    assert_eq!(store.reclaim_inbox(Some(ORG_B), t(10_000)).await.unwrap(), 0);
    let claimed_out = store.claim_outbox(&ClaimRequest::for_org(ORG_A, t(1), LEASE, 10)).await.unwrap();
    not_found(store.mark_sent(ORG_B, claimed_out[0].claim(), "w", t(1)).await.unwrap_err());
    not_found(store.reschedule_outbox(ORG_B, claimed_out[0].claim(), t(5), "x").await.unwrap_err());
    not_found(store.fail_outbox(ORG_B, claimed_out[0].claim(), "x", t(0)).await.unwrap_err());
    assert_eq!(store.reclaim_outbox(Some(ORG_B), t(10_000)).await.unwrap(), 0);
    store.mark_sent(ORG_A, claimed_out[0].claim(), "wamid.a", t(2)).await.unwrap();
    assert!(!store.record_delivery(ORG_B, "wamid.a", DeliveryStatus::Read, t(3)).await.unwrap());
    let purge = store.purge(ORG_B, t(1_000_000_000), PurgePolicy::default()).await.unwrap();
    assert_eq!(purge, PurgeReport::default());
    assert_eq!(store.publish_flow(ORG_B, "lead", "{}", t(0)).await.unwrap(), 1, "B's versions start at 1");
    // A commit in B's name cannot finish A's inbox row.
    let commit = Commit { inbox_done: Some(claimed_a[0].claim()), ..Commit::new(ORG_B, t(2)) };
    not_found(store.commit(commit).await.unwrap_err());

    // A's rows are intact.
    let loaded = store.load_session(&key_a).await.unwrap().unwrap();
    assert_eq!((loaded.id, loaded.version), (saved.id, 1));
    assert_eq!(store.get_inbox(ORG_A, ins.id()).await.unwrap().unwrap().status, QueueStatus::Claimed);
    assert_eq!(store.history(&a, Page::default()).await.unwrap().len(), 1);
    let out = store.get_outbox(ORG_A, out_ids[0]).await.unwrap().unwrap();
    assert_eq!((out.status, out.delivery), (QueueStatus::Done, Some(DeliveryStatus::Sent)));
    store.complete_inbox(ORG_A, claimed_a[0].claim(), t(3)).await.unwrap();
}

/// After `close`, every call fails with `Closed`, and nothing panics.
pub async fn closed_store(store: Arc<dyn Store>) {
    let c = chat(ORG_A, "c1");
    store.insert_inbox(message(&c, "m1", t(0))).await.unwrap();
    store.ping().await.unwrap();
    store.close().await;
    let closed = |e: StoreError| assert!(matches!(e, StoreError::Closed), "{e:?}");
    closed(store.ping().await.unwrap_err());
    closed(store.register_organization("x").await.unwrap_err());
    closed(store.load_session(&c.session("f")).await.unwrap_err());
    closed(store.save_session(write(&c.session("f"), 0, "s", t(0))).await.unwrap_err());
    closed(store.insert_inbox(message(&c, "m2", t(0))).await.unwrap_err());
    closed(store.claim_inbox(&ClaimRequest::any(t(0), LEASE, 1)).await.unwrap_err());
    closed(store.history(&c, Page::default()).await.unwrap_err());
    closed(store.inbound_counts(&[(c.clone(), t(0))], 5).await.unwrap_err());
    closed(store.enqueue_outbox(ORG_A, &[reply(&c, "x", t(0))]).await.unwrap_err());
    closed(store.publish_flow(ORG_A, "f", "{}", t(0)).await.unwrap_err());
    closed(store.commit(Commit::new(ORG_A, t(0))).await.unwrap_err());
    // Closing twice is harmless.
    store.close().await;
}
