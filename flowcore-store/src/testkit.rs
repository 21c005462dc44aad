//! The conformance kit: one suite every [`Store`] must pass — the bundled backends and any
//! host's own implementation.
//!
//! Each case gets a fresh, empty store from your factory, registers the organizations
//! `org-a` and `org-b`, and checks one part of the contract, the concurrent parts included
//! (racing writers, parallel duplicate inserts, many workers on one queue). Cases need a
//! multi-threaded tokio runtime and panic (like `assert!`) on a violation.
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

use crate::StoreError::{Closed, Conflict, InvalidInput, LeaseLost, NotFound, UnknownOrganization};
use crate::*;

/// A boxed conformance case.
pub type CaseFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

/// One conformance case: a name and the check, run on a fresh store.
#[derive(Clone, Copy, Debug)]
pub struct Case {
    /// The case's name.
    pub name: &'static str,
    /// The check.
    pub run: fn(Arc<dyn Store>) -> CaseFuture,
}

macro_rules! cases {
    ($($name:ident),* $(,)?) => {
        /// Every case of the suite.
        pub const CASES: &[Case] = &[$(Case { name: stringify!($name), run: |s| Box::pin($name(s)) }),*];
    };
}

cases! {
    unknown_organization, tenant_isolation, closed_store,
    session_compare_and_set, session_writers_race, session_listing_and_close, active_session_is_the_newest,
    active_sessions_read_many_conversations_at_once, session_purge, purge_failed_rows_by_failure_time,
    message_log_history_and_listing, message_log_metrics, session_cohorts_in_metrics, message_log_inbound_counts,
    inbox_deduplicates, inbox_parallel_duplicate_inserts, inbox_order_and_exclusivity, inbox_wake_ups,
    inbox_failures_and_retries, inbox_lease_expiry_and_reclaim, inbox_waits_for_replies_out,
    inbox_many_workers_in_order,
    outbox_lifecycle, outbox_delivery_statuses, outbox_many_senders,
    flows_versions, flows_concurrent_publish, flows_version_listing, session_on_changed_flow,
    commit_all_or_nothing, commit_conflict_leaves_nothing, commit_lost_lease_leaves_nothing, commit_races_one_winner,
    commit_without_wake_ups, commit_claims_replies_for_the_caller, commit_claims_the_next_event_for_the_caller,
    concurrent_writes_keep_their_own_results,
}

/// Runs every case, each on a fresh store from `make`, printing one line per case.
/// Returns the number of cases passed (all of them: a failing case panics).
pub async fn run_suite<F, Fut>(make: F) -> usize
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn Store>>,
{
    for case in CASES {
        let store = make().await;
        let backend = store.backend();
        println!("testkit [{backend}] {} ...", case.name);
        run_case(case, store).await;
        println!("testkit [{backend}] {} ok", case.name);
    }
    CASES.len()
}

/// Runs one case on `store` (after registering `org-a` and `org-b`).
pub async fn run_case(case: &Case, store: Arc<dyn Store>) {
    store.register_organization(ORG_A).await.expect("register org-a");
    store.register_organization(ORG_B).await.expect("register org-b");
    (case.run)(store).await;
}

/// The flow the suite's sessions run on (version 1 of `lead`): start → ask (question) → bye.
pub const SAMPLE_FLOW: &str = r#"{"id": "lead", "name": "Lead",
  "nodes": [{"id": "s", "type": "start"},
            {"id": "ask", "type": "question", "data": {"content": "Nome?", "variableName": "name"}},
            {"id": "bye", "type": "end", "data": {"content": "Tchau, {{name}}!"}}],
  "edges": [{"id": "e1", "source": "s", "target": "ask"}, {"id": "e2", "source": "ask", "target": "bye"}]}"#;

/// [`SAMPLE_FLOW`] compiled.
pub fn sample_flow() -> flowcore::CompiledFlow {
    static FLOW: std::sync::OnceLock<flowcore::CompiledFlow> = std::sync::OnceLock::new();
    FLOW.get_or_init(|| compile(SAMPLE_FLOW)).clone()
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

const ORG_A: &str = "org-a";
const ORG_B: &str = "org-b";
const LEASE: Duration = Duration::from_secs(30);
const DAY: i64 = 24 * 3600;

/// Asserts that a call failed with an error matching the pattern.
macro_rules! fails {
    ($call:expr, $pattern:pat) => {{
        let err = $call.err().expect("the call should fail");
        assert!(matches!(err, $pattern), "{err:?}");
    }};
}

fn t(seconds: i64) -> Timestamp {
    Timestamp::from_unix_seconds(1_700_000_000 + seconds)
}

fn chat(org: &str, contact: &str) -> ConversationKey {
    ConversationKey::new(org, "biz-1", contact)
}

fn compile(text: &str) -> flowcore::CompiledFlow {
    flowcore::Flow::from_json(text).expect("flow parses").compile().expect("flow compiles")
}

fn write(key: &SessionKey, expected: i64, tag: &str, now: Timestamp) -> SessionWrite {
    let (key, session, status) = (key.clone(), sample_state(tag), SessionStatus::Active);
    SessionWrite { key, expected_version: expected, flow_version: 1, cohort: None, session, status, now }
}

fn log_entry(c: &ConversationKey, direction: Direction, text: &str, at: Timestamp, flow: Option<&str>) -> NewLogEntry {
    let (conversation, flow_id, content) = (c.clone(), flow.map(str::to_owned), Content::Text(text.to_owned()));
    let (node_id, metadata) = (Some("n1".into()), json!({"k": text}));
    NewLogEntry { conversation, flow_id, direction, content, node_id, wamid: None, at, metadata }
}

fn reply(c: &ConversationKey, text: &str, due: Timestamp) -> NewOutboxMessage {
    NewOutboxMessage { conversation: c.clone(), payload: json!({"text": text}), due_at: due, inbox_id: None }
}

fn message(c: &ConversationKey, id: &str, at: Timestamp) -> NewInboxEvent {
    NewInboxEvent::message(c.clone(), id, json!({"id": id}), at)
}

/// org-a's `c1` and its `lead` session: the conversation most cases use.
fn c1() -> (ConversationKey, SessionKey) {
    let c = chat(ORG_A, "c1");
    let key = c.session("lead");
    (c, key)
}

fn texts(texts: &[&str]) -> Vec<Content> {
    texts.iter().map(|text| Content::Text((*text).to_owned())).collect()
}

fn message_ids(events: &[InboxEvent]) -> Vec<&str> {
    events.iter().map(|e| e.message_id.as_str()).collect()
}

/// Claims org-a's due inbox events under the suite's lease.
async fn claim_in(store: &dyn Store, now: Timestamp) -> Vec<InboxEvent> {
    store.claim_inbox(&ClaimRequest::for_org(ORG_A, now, LEASE, 100)).await.expect("claim inbox")
}

/// Claims org-a's due replies, each for `lease`.
async fn claim_out(store: &dyn Store, now: Timestamp, lease: Duration) -> Vec<OutboxMessage> {
    store.claim_outbox(&ClaimRequest::for_org(ORG_A, now, lease, 100)).await.expect("claim outbox")
}

/// Inserts the messages `(conversation, message id, at)`.
async fn insert(store: &dyn Store, messages: &[(&ConversationKey, &str, i64)]) {
    for (c, id, at) in messages {
        store.insert_inbox(message(c, id, t(*at))).await.expect("insert");
    }
}

/// Claims org-a's due inbox events, asserts their message ids and marks them done, all at `now`.
async fn handle(store: &dyn Store, now: Timestamp, expected: &[&str]) {
    let got = claim_in(store, now).await;
    assert_eq!(message_ids(&got), expected);
    for event in got {
        store.complete_inbox(ORG_A, event.claim(), now).await.expect("complete");
    }
}

/// Inserts a message of org-a's and claims it (the only one due): the claimed row.
async fn claimed(store: &dyn Store, c: &ConversationKey, id: &str, now: Timestamp) -> InboxEvent {
    store.insert_inbox(message(c, id, now)).await.expect("insert");
    let mut claimed = claim_in(store, now).await;
    assert_eq!(claimed.len(), 1, "{claimed:?}");
    claimed.remove(0)
}

/// Enqueues a reply of org-a's and claims it (the only one due) for `lease`: the claimed row.
async fn claimed_reply(store: &dyn Store, c: &ConversationKey, now: Timestamp, lease: Duration) -> OutboxMessage {
    store.enqueue_outbox(ORG_A, &[reply(c, "r", now)]).await.expect("enqueue");
    let mut claimed = claim_out(store, now, lease).await;
    assert_eq!(claimed.len(), 1, "{claimed:?}");
    claimed.remove(0)
}

async fn inbox_row(store: &dyn Store, id: i64) -> InboxEvent {
    store.get_inbox(ORG_A, id).await.unwrap().expect("inbox row")
}

async fn outbox_row(store: &dyn Store, id: i64) -> OutboxMessage {
    store.get_outbox(ORG_A, id).await.unwrap().expect("outbox row")
}

/// Runs the tasks at once; their outputs, in the order they finished.
async fn together<F>(tasks: impl IntoIterator<Item = F>) -> Vec<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    tasks.into_iter().collect::<tokio::task::JoinSet<_>>().join_all().await
}

fn saving(store: &Arc<dyn Store>, w: SessionWrite) -> impl Future<Output = StoreResult<SavedSession>> + Send + 'static {
    let store = store.clone();
    async move { store.save_session(w).await }
}

fn committing(
    store: &Arc<dyn Store>,
    unit: Commit,
) -> impl Future<Output = StoreResult<CommitOutcome>> + Send + 'static {
    let store = store.clone();
    async move { store.commit(unit).await }
}

/// One engine turn on `key`: the session save, two log rows, a reply and a wake-up.
fn turn(c: &ConversationKey, key: &SessionKey, expected: i64, claim: Option<Claim>, now: Timestamp) -> Commit {
    let flow = Some(key.flow_id.as_str());
    let wake_key = format!("wake:{}:{expected}", key.flow_id);
    Commit {
        session: Some(write(key, expected, "turn", now)),
        log: vec![
            log_entry(c, Direction::Inbound, "user", now, flow),
            log_entry(c, Direction::Outbound, "bot", now, flow),
        ],
        outbox: vec![reply(c, "bot", now)],
        schedule: vec![NewInboxEvent::wake_up(c.clone(), wake_key, json!({}), now, now.saturating_add_seconds(600))],
        inbox_done: claim,
        ..Commit::new(c.org_id.clone(), now)
    }
}

/// Runs `workers` tasks that claim with `request` from the inbox (or the outbox) until it stays
/// empty, finishing each row; asserts that no two of them ever hold one conversation, and
/// returns each conversation's message ids (reply texts), in the order they were handled.
async fn drain(
    store: &Arc<dyn Store>,
    workers: usize,
    outbox: bool,
    request: ClaimRequest,
) -> HashMap<ConversationKey, Vec<String>> {
    let in_flight: Arc<Mutex<HashSet<ConversationKey>>> = Arc::default();
    let seen: Arc<Mutex<HashMap<ConversationKey, Vec<String>>>> = Arc::default();
    let worker = |w: usize| {
        let (store, in_flight, seen, request) = (store.clone(), in_flight.clone(), seen.clone(), request.clone());
        async move {
            let mut idle = 0;
            while idle < 50 {
                let batch: Vec<(ConversationKey, String, Claim)> = if outbox {
                    let text = |m: &OutboxMessage| m.payload["text"].as_str().unwrap_or_default().to_owned();
                    let batch = store.claim_outbox(&request).await.expect("claim").into_iter();
                    batch.map(|m| (m.conversation.clone(), text(&m), m.claim())).collect()
                } else {
                    let batch = store.claim_inbox(&request).await.expect("claim").into_iter();
                    batch.map(|e| (e.conversation.clone(), e.message_id.clone(), e.claim())).collect()
                };
                if batch.is_empty() {
                    idle += 1;
                    tokio::task::yield_now().await;
                    continue;
                }
                idle = 0;
                for (c, id, claim) in batch {
                    assert!(in_flight.lock().unwrap().insert(c.clone()), "worker {w}: two workers on {c}");
                    seen.lock().unwrap().entry(c.clone()).or_default().push(id);
                    tokio::task::yield_now().await;
                    in_flight.lock().unwrap().remove(&c);
                    let (org, now) = (c.org_id.as_str(), request.now);
                    let done = if outbox {
                        store.mark_sent(org, claim, &format!("wamid.{}", claim.id), now).await
                    } else {
                        store.complete_inbox(org, claim, now).await
                    };
                    done.expect("finish");
                }
            }
        }
    };
    together((0..workers).map(worker)).await;
    let seen = seen.lock().unwrap().clone();
    seen
}

/// Every method naming an unregistered organization fails with `UnknownOrganization`.
async fn unknown_organization(store: Arc<dyn Store>) {
    let c = chat("nobody", "c1");
    let key = c.session("f");
    let claim = Claim { id: 1, attempt: 1 };
    let unknown = |r: StoreError| assert!(matches!(r, UnknownOrganization(ref o) if o == "nobody"), "{r:?}");
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
    unknown(store.complete_inbox("nobody", claim, t(0)).await.unwrap_err());
    unknown(store.fail_inbox("nobody", claim, "e", None, t(0)).await.unwrap_err());
    unknown(store.reclaim_inbox(Some("nobody"), t(0)).await.unwrap_err());
    unknown(store.get_inbox("nobody", 1).await.unwrap_err());
    unknown(store.enqueue_outbox("nobody", &[reply(&c, "x", t(0))]).await.unwrap_err());
    unknown(store.claim_outbox(&ClaimRequest::for_org("nobody", t(0), LEASE, 1)).await.unwrap_err());
    unknown(store.mark_sent("nobody", claim, "w", t(0)).await.unwrap_err());
    unknown(store.reschedule_outbox("nobody", claim, t(1), "e").await.unwrap_err());
    unknown(store.fail_outbox("nobody", claim, "e", t(0)).await.unwrap_err());
    unknown(store.reclaim_outbox(Some("nobody"), t(0)).await.unwrap_err());
    unknown(store.record_delivery("nobody", "w", DeliveryStatus::Read, t(0)).await.unwrap_err());
    unknown(store.get_outbox("nobody", 1).await.unwrap_err());
    unknown(store.publish_flow("nobody", "f", "{}", t(0)).await.unwrap_err());
    unknown(store.get_flow("nobody", "f", None).await.unwrap_err());
    unknown(store.list_flows("nobody").await.unwrap_err());
    unknown(store.list_flow_versions("nobody", "f").await.unwrap_err());
    unknown(store.commit(Commit::new("nobody", t(0))).await.unwrap_err());
    // Registering makes it known; registering twice is fine.
    store.register_organization("nobody").await.unwrap();
    store.register_organization("nobody").await.unwrap();
    assert!(store.organization_exists("nobody").await.unwrap());
    assert!(store.load_session(&key).await.unwrap().is_none());
}

/// Organization B never sees or touches organization A's rows, through any method.
async fn tenant_isolation(store: Arc<dyn Store>) {
    let (a, b) = (chat(ORG_A, "c1"), chat(ORG_B, "c1")); // same business number and contact, other tenant
    let (key_a, key_b) = (a.session("lead"), b.session("lead"));
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

    // Writes under B's name do not reach A's rows; the same message id is B's own.
    assert!(!store.close_session(&key_b, t(1)).await.unwrap());
    fails!(store.save_session(write(&key_b, 1, "b", t(1))).await, Conflict { .. });
    assert!(!store.insert_inbox(message(&b, "wamid.same", t(0))).await.unwrap().is_duplicate());
    let claimed_a = claim_in(&*store, t(1)).await;
    assert_eq!(claimed_a.len(), 1);
    assert_eq!(claimed_a[0].conversation, a);
    let (in_claim, out_claim) = (claimed_a[0].claim(), claim_out(&*store, t(1), LEASE).await[0].claim());
    fails!(store.complete_inbox(ORG_B, in_claim, t(1)).await, NotFound { .. });
    fails!(store.fail_inbox(ORG_B, in_claim, "x", None, t(0)).await, NotFound { .. });
    assert_eq!(store.reclaim_inbox(Some(ORG_B), t(10_000)).await.unwrap(), 0);
    fails!(store.mark_sent(ORG_B, out_claim, "w", t(1)).await, NotFound { .. });
    fails!(store.reschedule_outbox(ORG_B, out_claim, t(5), "x").await, NotFound { .. });
    fails!(store.fail_outbox(ORG_B, out_claim, "x", t(0)).await, NotFound { .. });
    assert_eq!(store.reclaim_outbox(Some(ORG_B), t(10_000)).await.unwrap(), 0);
    store.mark_sent(ORG_A, out_claim, "wamid.a", t(2)).await.unwrap();
    assert!(!store.record_delivery(ORG_B, "wamid.a", DeliveryStatus::Read, t(3)).await.unwrap());
    let purge = store.purge(ORG_B, t(1_000_000_000), PurgePolicy::default()).await.unwrap();
    assert_eq!(purge, PurgeReport::default());
    assert_eq!(store.publish_flow(ORG_B, "lead", "{}", t(0)).await.unwrap(), 1, "B's versions start at 1");
    // A commit in B's name cannot finish A's inbox row.
    fails!(store.commit(Commit { inbox_done: Some(in_claim), ..Commit::new(ORG_B, t(2)) }).await, NotFound { .. });

    // A's rows are intact.
    let loaded = store.load_session(&key_a).await.unwrap().unwrap();
    assert_eq!((loaded.id, loaded.version), (saved.id, 1));
    assert_eq!(inbox_row(&*store, ins.id()).await.status, QueueStatus::Claimed);
    assert_eq!(store.history(&a, Page::default()).await.unwrap().len(), 1);
    let out = outbox_row(&*store, out_ids[0]).await;
    assert_eq!((out.status, out.delivery), (QueueStatus::Done, Some(DeliveryStatus::Sent)));
    store.complete_inbox(ORG_A, in_claim, t(3)).await.unwrap();
}

/// After `close`, every call fails with `Closed`, and nothing panics.
async fn closed_store(store: Arc<dyn Store>) {
    let c = chat(ORG_A, "c1");
    store.insert_inbox(message(&c, "m1", t(0))).await.unwrap();
    store.ping().await.unwrap();
    store.close().await;
    fails!(store.ping().await, Closed);
    fails!(store.register_organization("x").await, Closed);
    fails!(store.load_session(&c.session("f")).await, Closed);
    fails!(store.save_session(write(&c.session("f"), 0, "s", t(0))).await, Closed);
    fails!(store.insert_inbox(message(&c, "m2", t(0))).await, Closed);
    fails!(store.claim_inbox(&ClaimRequest::any(t(0), LEASE, 1)).await, Closed);
    fails!(store.history(&c, Page::default()).await, Closed);
    fails!(store.inbound_counts(&[(c.clone(), t(0))], 5).await, Closed);
    fails!(store.enqueue_outbox(ORG_A, &[reply(&c, "x", t(0))]).await, Closed);
    fails!(store.publish_flow(ORG_A, "f", "{}", t(0)).await, Closed);
    fails!(store.commit(Commit::new(ORG_A, t(0))).await, Closed);
    store.close().await; // closing twice is harmless
}

/// Compare-and-set: creates at version 1, bumps by one, refuses stale and duplicate writes.
async fn session_compare_and_set(store: Arc<dyn Store>) {
    let key = chat(ORG_A, "c1").session("lead");
    assert!(store.load_session(&key).await.unwrap().is_none());
    let saved = store.save_session(write(&key, 0, "one", t(0))).await.unwrap();
    assert_eq!(saved.version, 1);
    let loaded = store.load_session(&key).await.unwrap().expect("saved session loads");
    assert_eq!((loaded.id, loaded.version, loaded.flow_version, &loaded.key), (saved.id, 1, 1, &key));
    assert_eq!((&loaded.session, loaded.status), (&sample_state("one"), SessionStatus::Active));
    assert_eq!((loaded.created_at, loaded.updated_at, loaded.closed_at), (t(0), t(0), None));
    // A second create is a conflict, not an overwrite.
    fails!(store.save_session(write(&key, 0, "dup", t(1))).await, Conflict { expected: 0, found: Some(1), .. });
    // Update: the flow version is the write's (a session moved to a newer flow version).
    let saved2 = store.save_session(SessionWrite { flow_version: 7, ..write(&key, 1, "two", t(2)) }).await.unwrap();
    assert_eq!((saved2.id, saved2.version), (saved.id, 2));
    // A stale write fails and changes nothing.
    let stale = store.save_session(write(&key, 1, "stale", t(3))).await.unwrap_err();
    assert!(stale.is_conflict() && matches!(stale, Conflict { expected: 1, found: Some(2), .. }), "{stale:?}");
    fails!(store.save_session(write(&key, 5, "future", t(3))).await, Conflict { .. });
    let loaded = store.load_session(&key).await.unwrap().unwrap();
    assert_eq!((loaded.version, loaded.flow_version, loaded.session), (2, 7, sample_state("two")));
    assert_eq!((loaded.created_at, loaded.updated_at), (t(0), t(2)));
    // Updating a session that does not exist is a conflict too.
    let other = chat(ORG_A, "c2").session("lead");
    fails!(store.save_session(write(&other, 3, "x", t(0))).await, Conflict { expected: 3, found: None, .. });
    // Closing through a save; a new conversation on the same key then starts over.
    let close = SessionWrite { status: SessionStatus::Closed, ..write(&key, 2, "end", t(4)) };
    assert_eq!(store.save_session(close).await.unwrap().version, 3);
    assert!(store.load_session(&key).await.unwrap().is_none());
    let fresh = store.save_session(write(&key, 0, "again", t(5))).await.unwrap();
    assert_eq!(fresh.version, 1);
    assert_ne!(fresh.id, saved.id);
}

/// Many writers racing on one session version (or on its creation): one wins, the rest conflict.
async fn session_writers_race(store: Arc<dyn Store>) {
    let key = chat(ORG_A, "race").session("lead");
    store.save_session(write(&key, 0, "start", t(0))).await.unwrap();
    for round in 1..=5i64 {
        let writes = (0..8).map(|w| saving(&store, write(&key, round, &format!("r{round}w{w}"), t(round))));
        let results = together(writes).await;
        for r in &results {
            assert!(r.as_ref().map_or_else(StoreError::is_conflict, |s| s.version == round + 1), "{r:?}");
        }
        assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 1, "round {round}");
    }
    assert_eq!(store.load_session(&key).await.unwrap().unwrap().version, 6);
    let key = chat(ORG_A, "race-create").session("lead");
    let results = together((0..8).map(|w| saving(&store, write(&key, 0, &format!("w{w}"), t(0))))).await;
    assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 1);
}

/// Listing active sessions (paginated, newest first), per conversation, and closing.
async fn session_listing_and_close(store: Arc<dyn Store>) {
    for i in 0..5 {
        store.save_session(write(&chat(ORG_A, &format!("c{i}")).session("lead"), 0, "s", t(i))).await.unwrap();
    }
    let survey = chat(ORG_A, "c0").session("survey");
    store.save_session(write(&survey, 0, "s", t(10))).await.unwrap();
    let first = store.list_active_sessions(ORG_A, Page::first(4)).await.unwrap();
    assert_eq!((first.len(), &first[0].key, first[1].key.contact_id.as_str()), (4, &survey, "c4"));
    let second = store.list_active_sessions(ORG_A, Page::first(4).next()).await.unwrap();
    assert_eq!((second.len(), second[1].key.contact_id.as_str()), (2, "c0"));
    assert!(second.iter().all(|s| s.status == SessionStatus::Active && s.version == 1));
    let in_c0 = store.conversation_sessions(&chat(ORG_A, "c0")).await.unwrap();
    assert_eq!(in_c0.iter().map(|s| s.key.flow_id.as_str()).collect::<Vec<_>>(), ["survey", "lead"]);

    assert!(store.close_session(&survey, t(11)).await.unwrap());
    assert!(!store.close_session(&survey, t(12)).await.unwrap());
    assert!(store.load_session(&survey).await.unwrap().is_none());
    assert_eq!(store.list_active_sessions(ORG_A, Page::first(100)).await.unwrap().len(), 5);
    assert_eq!(store.conversation_sessions(&chat(ORG_A, "c0")).await.unwrap().len(), 1);
    // A stale write after a close is a conflict (it must not resurrect the session).
    fails!(store.save_session(write(&survey, 1, "late", t(13))).await, Conflict { .. });
    assert!(store.load_session(&survey).await.unwrap().is_none());
}

/// `active_session` is the conversation's most recently saved active session, with its state.
async fn active_session_is_the_newest(store: Arc<dyn Store>) {
    let c = chat(ORG_A, "c1");
    let active = || {
        let (store, c) = (store.clone(), c.clone());
        async move { store.active_session(&c).await.unwrap().map(|s| (s.key.flow_id.clone(), s.version, s.session)) }
    };
    let (lead, other) = (c.session("lead"), c.session("other"));
    assert!(active().await.is_none());
    store.save_session(write(&lead, 0, "lead-1", t(1))).await.unwrap();
    store.save_session(write(&other, 0, "other-1", t(2))).await.unwrap();
    assert_eq!(active().await, Some(("other".into(), 1, sample_state("other-1"))));
    store.save_session(write(&lead, 1, "lead-2", t(3))).await.unwrap();
    assert_eq!(active().await, Some(("lead".into(), 2, sample_state("lead-2"))));
    store.close_session(&lead, t(4)).await.unwrap();
    assert_eq!(active().await.map(|(flow_id, ..)| flow_id).as_deref(), Some("other"));
    store.close_session(&other, t(5)).await.unwrap();
    assert!(active().await.is_none());
    store.save_session(write(&lead, 0, "again", t(6))).await.unwrap();
    assert!(store.active_session(&chat(ORG_A, "c2")).await.unwrap().is_none());
    assert!(store.active_session(&chat(ORG_B, "c1")).await.unwrap().is_none());
    fails!(store.active_session(&chat("nobody", "c1")).await, UnknownOrganization(_));
}

/// `active_sessions` answers, in the order asked (repeats included), what `active_session` does.
async fn active_sessions_read_many_conversations_at_once(store: Arc<dyn Store>) {
    let (a1, a2, a3, b1) = (chat(ORG_A, "c1"), chat(ORG_A, "c2"), chat(ORG_A, "c3"), chat(ORG_B, "c1"));
    let saves = [(&a1, "lead", "a1-lead", 1), (&a1, "other", "a1-other", 2), (&a2, "lead", "a2-lead", 3)];
    for (c, flow, tag, at) in saves.into_iter().chain([(&b1, "lead", "b1-lead", 4)]) {
        store.save_session(write(&c.session(flow), 0, tag, t(at))).await.unwrap();
    }
    store.close_session(&a2.session("lead"), t(5)).await.unwrap();
    store.save_session(write(&a3.session("lead"), 0, "a3-lead", t(6))).await.unwrap();
    let asked = [b1.clone(), a1.clone(), a2.clone(), a3.clone(), a1.clone(), chat(ORG_A, "nobody")];
    let batch = store.active_sessions(&asked).await.unwrap();
    assert_eq!(batch.len(), asked.len());
    for (conversation, found) in asked.iter().zip(&batch) {
        assert_eq!(found, &store.active_session(conversation).await.unwrap(), "{conversation}");
    }
    let states: Vec<Option<Session>> = batch.into_iter().map(|s| s.map(|s| s.session)).collect();
    let tags = [Some("b1-lead"), Some("a1-other"), None, Some("a3-lead"), Some("a1-other"), None];
    assert_eq!(states, tags.map(|tag| tag.map(sample_state)));
    assert!(store.active_sessions(&[]).await.unwrap().is_empty());
    fails!(store.active_sessions(&[a1, chat("nobody", "c1")]).await, UnknownOrganization(_));
}

/// Purge: expired active sessions (TTL from `now`), old closed sessions, old finished rows.
async fn session_purge(store: Arc<dyn Store>) {
    let key = |contact| chat(ORG_A, contact).session("lead");
    let (old, fresh, closed_old, closed_new) = (key("old"), key("fresh"), key("closed-old"), key("closed-new"));
    let b = chat(ORG_B, "old").session("lead");
    for (key, at) in [(&old, 0), (&fresh, DAY), (&closed_old, 0), (&closed_new, 0), (&b, 0)] {
        store.save_session(write(key, 0, "s", t(at))).await.unwrap();
    }
    store.close_session(&closed_old, t(1)).await.unwrap();
    store.close_session(&closed_new, t(25 * DAY)).await.unwrap();
    // Finished inbox and outbox rows.
    let c = chat(ORG_A, "old");
    store.complete_inbox(ORG_A, claimed(&*store, &c, "m-old", t(0)).await.claim(), t(0)).await.unwrap();
    let out = claimed_reply(&*store, &c, t(0), LEASE).await;
    store.mark_sent(ORG_A, out.claim(), "w-old", t(0)).await.unwrap();

    // Nothing expired yet: 23 h after the old session's last save.
    assert_eq!(store.purge(ORG_A, t(23 * 3600), PurgePolicy::default()).await.unwrap(), PurgeReport::default());
    let policy =
        PurgePolicy { session_ttl: Duration::from_secs(DAY as u64 * 30 + DAY as u64 / 2), ..Default::default() };
    let report = store.purge(ORG_A, t(31 * DAY), policy).await.unwrap();
    assert_eq!(report, PurgeReport { expired_sessions: 1, closed_sessions: 1, inbox_rows: 1, outbox_rows: 1 });
    assert!(store.load_session(&old).await.unwrap().is_none());
    assert!(store.load_session(&fresh).await.unwrap().is_some());
    assert!(store.load_session(&b).await.unwrap().is_some(), "org-b untouched");
    // The default TTL is 24 h.
    assert_eq!(store.purge(ORG_A, t(2 * DAY + 1), PurgePolicy::default()).await.unwrap().expired_sessions, 1);
    assert!(store.load_session(&fresh).await.unwrap().is_none());
}

/// Retention of a row failed for good is judged from when it failed, not from its lease's end.
async fn purge_failed_rows_by_failure_time(store: Arc<dyn Store>) {
    let long_lease = Duration::from_secs(60 * DAY as u64);
    let c = chat(ORG_A, "c1");
    store.insert_inbox(message(&c, "m1", t(0))).await.unwrap();
    let ev = store.claim_inbox(&ClaimRequest::for_org(ORG_A, t(0), long_lease, 1)).await.unwrap();
    store.fail_inbox(ORG_A, ev[0].claim(), "poison", None, t(1)).await.unwrap();
    let out = claimed_reply(&*store, &c, t(0), long_lease).await;
    store.fail_outbox(ORG_A, out.claim(), "invalid recipient", t(2)).await.unwrap();
    // Within the retention (30 days from the failure), both stay.
    let report = store.purge(ORG_A, t(29 * DAY), PurgePolicy::default()).await.unwrap();
    assert_eq!((report.inbox_rows, report.outbox_rows), (0, 0));
    assert_eq!(inbox_row(&*store, ev[0].id).await.status, QueueStatus::Failed);
    // 31 days after the failure (but long before the 60-day lease would end), both go.
    let report = store.purge(ORG_A, t(31 * DAY), PurgePolicy::default()).await.unwrap();
    assert_eq!((report.inbox_rows, report.outbox_rows), (1, 1));
    assert!(store.get_inbox(ORG_A, ev[0].id).await.unwrap().is_none());
    assert!(store.get_outbox(ORG_A, out.id).await.unwrap().is_none());
}

/// History is per conversation, oldest first, paginated; listings count and order.
async fn message_log_history_and_listing(store: Arc<dyn Store>) {
    let (c1, c2) = (chat(ORG_A, "c1"), chat(ORG_A, "c2"));
    let entries = (0..5).flat_map(|i| {
        let lead = Some("lead");
        [(Direction::Inbound, "u"), (Direction::Outbound, "b")]
            .map(|(d, p)| log_entry(&c1, d, &format!("{p}{i}"), t(i), lead))
    });
    let ids = store.append_log(ORG_A, &entries.collect::<Vec<_>>()).await.unwrap();
    assert_eq!(ids.len(), 10);
    assert!(ids.windows(2).all(|w| w[0] < w[1]));
    let structured = NewLogEntry {
        content: Content::Json(json!({"type": "buttons", "body": "ok?", "choices": [{"id": "y"}]})),
        wamid: Some("wamid.x".into()),
        node_id: None,
        ..log_entry(&c2, Direction::Outbound, "", t(100), None)
    };
    store.append_log(ORG_A, std::slice::from_ref(&structured)).await.unwrap();

    let page1 = store.history(&c1, Page::first(4)).await.unwrap();
    assert_eq!(page1.iter().map(|e| e.content.clone()).collect::<Vec<_>>(), texts(&["u0", "b0", "u1", "b1"]));
    let first = (page1[0].id, page1[0].direction, &page1[0].metadata);
    assert_eq!(first, (ids[0], Direction::Inbound, &json!({"k": "u0"})));
    assert_eq!((page1[0].node_id.as_deref(), page1[0].flow_id.as_deref()), (Some("n1"), Some("lead")));
    assert_eq!(store.history(&c1, Page { offset: 8, limit: 4 }).await.unwrap().len(), 2);
    let h2 = store.history(&c2, Page::default()).await.unwrap();
    assert_eq!(h2.len(), 1);
    assert_eq!((&h2[0].content, h2[0].wamid.as_deref(), &h2[0].node_id), (&structured.content, Some("wamid.x"), &None));
    assert_eq!(h2[0].metadata, json!({"k": ""}));

    let list = store.list_conversations(ORG_A, Page::default()).await.unwrap();
    assert_eq!(list.len(), 2);
    assert_eq!((&list[0].conversation, list[0].message_count, list[0].last_message_at), (&c2, 1, t(100)));
    let summary = (&list[1].conversation, list[1].message_count, list[1].first_message_at, list[1].last_message_at);
    assert_eq!(summary, (&c1, 10, t(0), t(4)));
    let second = store.list_conversations(ORG_A, Page { offset: 1, limit: 1 }).await.unwrap();
    assert_eq!(second.iter().map(|s| &s.conversation).collect::<Vec<_>>(), [&c1]);
    assert!(store.history(&chat(ORG_A, "nobody"), Page::default()).await.unwrap().is_empty());
}

/// Metrics: totals, per flow and per UTC day, in a time window.
async fn message_log_metrics(store: Arc<dyn Store>) {
    // 2023-11-14 22:13:20 UTC is t(0); t(DAY) is the 15th, t(2 * DAY) the 16th.
    let (c1, c2) = (chat(ORG_A, "c1"), chat(ORG_A, "c2"));
    store.save_session(write(&c1.session("lead"), 0, "s", t(0))).await.unwrap();
    store.save_session(write(&c2.session("lead"), 0, "s", t(DAY))).await.unwrap();
    store.save_session(write(&c2.session("survey"), 0, "s", t(DAY))).await.unwrap();
    store.close_session(&c2.session("survey"), t(DAY + 1)).await.unwrap();
    let (inbound, outbound) = (Direction::Inbound, Direction::Outbound);
    let log = [
        (&c1, inbound, t(0), Some("lead")),
        (&c1, outbound, t(0), Some("lead")),
        (&c1, outbound, t(0), Some("lead")),
        (&c2, inbound, t(DAY), Some("survey")),
        (&c2, outbound, t(DAY), None),
        (&c2, inbound, t(2 * DAY), Some("lead")),
    ];
    let log = log.map(|(c, direction, at, flow)| log_entry(c, direction, "x", at, flow));
    store.append_log(ORG_A, &log).await.unwrap();
    let m = store.metrics(ORG_A, MetricsQuery::default()).await.unwrap();
    assert_eq!((m.conversations_total, m.conversations_active, m.messages_in, m.messages_out), (3, 2, 3, 3));
    let flow = |f: &FlowMetrics| (f.flow_id.clone(), f.conversations_total, f.conversations_active, f.messages_in);
    let per_flow = m.per_flow.iter().map(|f| (flow(f), f.messages_out));
    let flows = [(("lead".to_owned(), 2, 2, 2), 2), (("survey".to_owned(), 1, 0, 1), 0)];
    assert_eq!(per_flow.collect::<Vec<_>>(), flows);
    let per_day = m.per_day.iter().map(|d| (d.day.as_str(), d.conversations_started, d.messages_in, d.messages_out));
    let days = [("2023-11-14", 1, 1, 2), ("2023-11-15", 2, 1, 1), ("2023-11-16", 0, 1, 0)];
    assert_eq!(per_day.collect::<Vec<_>>(), days);
    let window = store.metrics(ORG_A, MetricsQuery { from: Some(t(DAY)), to: Some(t(2 * DAY)) }).await.unwrap();
    let counts = (window.conversations_total, window.conversations_active, window.messages_in, window.messages_out);
    assert_eq!((counts, window.per_day.len()), ((2, 1, 1, 1), 1));
    assert_eq!(store.metrics(ORG_B, MetricsQuery::default()).await.unwrap(), Metrics::default());
}

/// Sessions are counted in the cohort they were created in, however they were saved, and
/// windowed by creation time like every session count.
async fn session_cohorts_in_metrics(store: Arc<dyn Store>) {
    let cohort_write = |c: &ConversationKey, flow: &str, cohort: Option<&str>, now: Timestamp| SessionWrite {
        cohort: cohort.map(str::to_owned),
        ..write(&c.session(flow), 0, "s", now)
    };
    let (c1, c2, c3, c4) = (chat(ORG_A, "c1"), chat(ORG_A, "c2"), chat(ORG_A, "c3"), chat(ORG_A, "c4"));
    // c1 saved alone in the test's first arm; c2 runs the same flow outside the test.
    store.save_session(cohort_write(&c1, "lead", Some("ab/lead"), t(0))).await.unwrap();
    store.save_session(cohort_write(&c2, "lead", None, t(0))).await.unwrap();
    // c3 and c4 start in the second arm through units of work committed at once.
    let units = [&c3, &c4].map(|c| Commit {
        session: Some(cohort_write(c, "survey", Some("ab/survey"), t(DAY))),
        ..Commit::new(ORG_A, t(DAY))
    });
    for done in together(units.map(|unit| committing(&store, unit))).await {
        done.unwrap();
    }
    // An update names no cohort; the session keeps its own. c3 closes.
    store.save_session(write(&c1.session("lead"), 1, "s2", t(DAY))).await.unwrap();
    store.close_session(&c3.session("survey"), t(DAY + 1)).await.unwrap();
    // Another organization's test is not counted here.
    store.save_session(cohort_write(&chat(ORG_B, "c1"), "lead", Some("ab/lead"), t(0))).await.unwrap();

    let per_cohort = |m: Metrics| {
        let cohorts = m.per_cohort.into_iter().map(|c| (c.cohort, c.conversations_total, c.conversations_active));
        cohorts.collect::<Vec<_>>()
    };
    let m = store.metrics(ORG_A, MetricsQuery::default()).await.unwrap();
    assert_eq!((m.conversations_total, m.conversations_active), (4, 3), "sessions without a cohort still count");
    assert_eq!(per_cohort(m), [("ab/lead".to_owned(), 1, 1), ("ab/survey".to_owned(), 2, 1)]);
    let window = store.metrics(ORG_A, MetricsQuery { from: Some(t(DAY)), to: None }).await.unwrap();
    assert_eq!(per_cohort(window), [("ab/survey".to_owned(), 2, 1)]);
}

/// Inbound counts for a rate limit, per window in the order asked; refused entries do not count.
async fn message_log_inbound_counts(store: Arc<dyn Store>) {
    let (c1, c2) = (chat(ORG_A, "c1"), chat(ORG_A, "c2"));
    let marked = |at, refused| NewLogEntry {
        metadata: json!({ RATE_LIMITED: refused }),
        ..log_entry(&c1, Direction::Inbound, "flood", at, Some("lead"))
    };
    let entries = [
        log_entry(&c1, Direction::Inbound, "a", t(0), Some("lead")),
        log_entry(&c1, Direction::Inbound, "b", t(10), Some("lead")),
        log_entry(&c1, Direction::Outbound, "reply", t(12), Some("lead")),
        marked(t(15), true),
        log_entry(&c1, Direction::Inbound, "c", t(20), None),
        marked(t(22), true),
        marked(t(25), false),
        log_entry(&c2, Direction::Inbound, "other", t(20), Some("lead")),
    ];
    store.append_log(ORG_A, &entries).await.unwrap();
    let b1 = chat(ORG_B, "c1"); // same ids, other tenant
    store.append_log(ORG_B, &[log_entry(&b1, Direction::Inbound, "b", t(30), None)]).await.unwrap();

    let since = [(&c1, 5), (&c1, 20), (&c2, 0), (&chat(ORG_A, "nobody"), -100), (&c1, -100), (&b1, 0), (&c1, 25)];
    let windows = since.map(|(c, at)| (c.clone(), t(at)));
    // c1 after t(5): b, c and the entry marked not refused; after t(20) (strictly): that one.
    assert_eq!(store.inbound_counts(&windows, 100).await.unwrap(), [3, 1, 1, 0, 4, 1, 0]);
    assert_eq!(store.inbound_counts(&windows, 2).await.unwrap(), [2, 1, 1, 0, 2, 1, 0], "capped");
    assert_eq!(store.inbound_counts(&windows, 0).await.unwrap(), [0; 7]);
    assert!(store.inbound_counts(&[], 5).await.unwrap().is_empty());
}

/// A repeated message id is a duplicate of the first row, also after that row was handled.
async fn inbox_deduplicates(store: Arc<dyn Store>) {
    let c = chat(ORG_A, "c1");
    let first = store.insert_inbox(message(&c, "wamid.1", t(0))).await.unwrap();
    assert!(matches!(first, InboxInsert::Inserted(_)));
    assert_eq!(store.insert_inbox(message(&c, "wamid.1", t(5))).await.unwrap(), InboxInsert::Duplicate(first.id()));
    let row = inbox_row(&*store, first.id()).await;
    assert_eq!((row.received_at, row.message_id.as_str(), row.kind), (t(0), "wamid.1", InboxKind::Message));
    assert_eq!((row.payload, row.status, row.attempts), (json!({"id": "wamid.1"}), QueueStatus::Pending, 0));
    let ev = claim_in(&*store, t(1)).await;
    assert_eq!(ev.len(), 1);
    store.complete_inbox(ORG_A, ev[0].claim(), t(1)).await.unwrap();
    assert!(store.insert_inbox(message(&c, "wamid.1", t(9))).await.unwrap().is_duplicate());
    assert!(claim_in(&*store, t(10)).await.is_empty());
    assert_eq!(inbox_row(&*store, first.id()).await.status, QueueStatus::Done);
    assert!(store.get_inbox(ORG_A, first.id() + 1000).await.unwrap().is_none());
}

/// Parallel inserts of one message id: exactly one row.
async fn inbox_parallel_duplicate_inserts(store: Arc<dyn Store>) {
    let c = chat(ORG_A, "c1");
    for round in 0..5 {
        let insert = |_| {
            let (store, event) = (store.clone(), message(&c, &format!("dup-{round}"), t(round)));
            async move { store.insert_inbox(event).await.expect("insert never fails on a duplicate") }
        };
        let inserts = together((0..12).map(insert)).await;
        assert_eq!(inserts.iter().filter(|r| !r.is_duplicate()).count(), 1, "round {round}");
        let rows: HashSet<i64> = inserts.iter().map(|r| r.id()).collect();
        assert_eq!(rows.len(), 1, "every duplicate names the one row");
    }
    assert_eq!(claim_in(&*store, t(10)).await.len(), 1, "one conversation: one claim at a time");
}

/// Claims hand out the head of each conversation only, never two of one conversation.
async fn inbox_order_and_exclusivity(store: Arc<dyn Store>) {
    let (c1, c2, c3) = (chat(ORG_A, "c1"), chat(ORG_A, "c2"), chat(ORG_A, "c3"));
    insert(&*store, &[(&c1, "a1", 0), (&c1, "a2", 1), (&c1, "a3", 2), (&c2, "b1", 1)]).await;
    assert!(claim_in(&*store, t(-1)).await.is_empty(), "not yet due");
    let first = claim_in(&*store, t(5)).await;
    assert_eq!(message_ids(&first), ["a1", "b1"]);
    assert!(first.iter().all(|e| e.status == QueueStatus::Claimed && e.attempts == 1));
    assert_eq!(first[0].lease_until, Some(t(5 + 30)));
    assert!(claim_in(&*store, t(6)).await.is_empty(), "both conversations are busy");
    store.complete_inbox(ORG_A, first[0].claim(), t(6)).await.unwrap();
    // Done twice is a lost lease, not a silent success.
    fails!(store.complete_inbox(ORG_A, first[0].claim(), t(6)).await, LeaseLost { .. });
    let next = claim_in(&*store, t(7)).await;
    assert_eq!(message_ids(&next), ["a2"]);
    // The limit is respected, earliest due first.
    store.complete_inbox(ORG_A, next[0].claim(), t(7)).await.unwrap();
    store.complete_inbox(ORG_A, first[1].claim(), t(7)).await.unwrap();
    store.insert_inbox(message(&c3, "c1", t(0))).await.unwrap();
    let one = store.claim_inbox(&ClaimRequest::for_org(ORG_A, t(8), LEASE, 1)).await.unwrap();
    assert_eq!(message_ids(&one), ["c1"], "earliest due first");
    fails!(store.complete_inbox(ORG_A, Claim { id: i64::MAX - 1, attempt: 1 }, t(8)).await, NotFound { .. });
}

/// Wake-ups are inbox rows due at a time: not claimed before, not blocking messages before.
async fn inbox_wake_ups(store: Arc<dyn Store>) {
    let c = chat(ORG_A, "c1");
    let wake = NewInboxEvent::wake_up(c.clone(), "wake:1", json!({"wake": 1}), t(0), t(3600));
    let w = store.insert_inbox(wake.clone()).await.unwrap();
    assert!(store.insert_inbox(wake).await.unwrap().is_duplicate());
    store.insert_inbox(message(&c, "m1", t(10))).await.unwrap();
    handle(&*store, t(20), &["m1"]).await;
    assert!(claim_in(&*store, t(3599)).await.is_empty());
    let got = claim_in(&*store, t(3600)).await;
    assert_eq!(got.len(), 1);
    assert_eq!((got[0].id, got[0].kind, got[0].due_at), (w.id(), InboxKind::WakeUp, t(3600)));
    assert_eq!(got[0].payload, json!({"wake": 1}));
    // A message arriving after the wake-up became due waits behind it.
    store.insert_inbox(message(&c, "m2", t(3601))).await.unwrap();
    assert!(claim_in(&*store, t(3602)).await.is_empty());
    store.complete_inbox(ORG_A, got[0].claim(), t(3602)).await.unwrap();
    assert_eq!(claim_in(&*store, t(3603)).await[0].message_id, "m2");
}

/// Failures: retry later (blocking the conversation meanwhile, to keep order) or give up.
async fn inbox_failures_and_retries(store: Arc<dyn Store>) {
    let c = chat(ORG_A, "c1");
    insert(&*store, &[(&c, "m1", 0), (&c, "m2", 1)]).await;
    let got = claim_in(&*store, t(2)).await;
    assert_eq!(got[0].message_id, "m1");
    store.fail_inbox(ORG_A, got[0].claim(), "engine busy", Some(t(60)), t(2)).await.unwrap();
    let row = inbox_row(&*store, got[0].id).await;
    assert_eq!((row.status, row.attempts, row.retry_at), (QueueStatus::Pending, 1, Some(t(60))));
    assert_eq!(row.last_error.as_deref(), Some("engine busy"));
    assert!(claim_in(&*store, t(30)).await.is_empty(), "m2 must not overtake m1 while m1 backs off");
    let again = claim_in(&*store, t(60)).await;
    assert_eq!((again[0].message_id.as_str(), again[0].attempts), ("m1", 2));
    fails!(store.fail_inbox(ORG_A, got[0].claim(), "late", None, t(60)).await, LeaseLost { .. });
    store.fail_inbox(ORG_A, again[0].claim(), "poison", None, t(60)).await.unwrap();
    let row = inbox_row(&*store, again[0].id).await;
    assert_eq!((row.status, row.attempts, row.last_error.as_deref()), (QueueStatus::Failed, 2, Some("poison")));
    // A failed row no longer blocks the conversation.
    assert_eq!(claim_in(&*store, t(61)).await[0].message_id, "m2");
}

/// An expired lease makes the row claimable again; the old claim is then refused.
async fn inbox_lease_expiry_and_reclaim(store: Arc<dyn Store>) {
    let c = chat(ORG_A, "c1");
    insert(&*store, &[(&c, "m1", 0), (&c, "m2", 0)]).await;
    let first = store.claim_inbox(&ClaimRequest::for_org(ORG_A, t(0), Duration::from_secs(10), 10)).await.unwrap();
    assert_eq!(first.len(), 1);
    assert!(claim_in(&*store, t(10)).await.is_empty(), "within the lease nobody else gets the conversation");
    assert_eq!(store.reclaim_inbox(Some(ORG_A), t(10)).await.unwrap(), 0);
    // After it, the same row (not m2: order is kept) goes to the next worker.
    let second = claim_in(&*store, t(11)).await;
    assert_eq!((second.len(), second[0].id, second[0].attempts), (1, first[0].id, 2));
    fails!(store.complete_inbox(ORG_A, first[0].claim(), t(12)).await, LeaseLost { attempt: 1, .. });
    // An explicit reclaim returns expired claims to pending.
    assert_eq!(store.reclaim_inbox(None, t(100)).await.unwrap(), 1);
    let row = inbox_row(&*store, first[0].id).await;
    assert_eq!((row.status, row.lease_until), (QueueStatus::Pending, None));
    fails!(store.complete_inbox(ORG_A, second[0].claim(), t(101)).await, LeaseLost { .. });
    let third = claim_in(&*store, t(101)).await;
    assert_eq!((third[0].id, third[0].attempts), (first[0].id, 3));
    store.complete_inbox(ORG_A, third[0].claim(), t(102)).await.unwrap();
    assert_eq!(claim_in(&*store, t(103)).await[0].message_id, "m2");
}

/// A conversation's next event waits while a sender has one of its replies out, not for retries.
async fn inbox_waits_for_replies_out(store: Arc<dyn Store>) {
    let (c1, c2) = (chat(ORG_A, "c1"), chat(ORG_A, "c2"));
    let out = claimed_reply(&*store, &c1, t(0), Duration::from_secs(10)).await;
    insert(&*store, &[(&c1, "m1", 0), (&c2, "m2", 0)]).await;
    // c1 waits for its reply; c2 has none out. Claims across organizations hold it back too.
    let got = store.claim_inbox(&ClaimRequest::any(t(1), LEASE, 10)).await.unwrap();
    assert_eq!(message_ids(&got), ["m2"]);
    store.complete_inbox(ORG_A, got[0].claim(), t(1)).await.unwrap();
    assert!(claim_in(&*store, t(10)).await.is_empty(), "the reply's lease lasts until t(10)");
    // Once the lease ran out, the sender is presumed gone: the turn goes ahead.
    handle(&*store, t(11), &["m1"]).await;
    // The next event goes as soon as the reply is marked sent.
    store.insert_inbox(message(&c1, "m3", t(12))).await.unwrap();
    let again = claim_out(&*store, t(12), LEASE).await;
    assert_eq!(again.iter().map(|m| m.id).collect::<Vec<_>>(), [out.id]);
    assert!(claim_in(&*store, t(13)).await.is_empty());
    store.mark_sent(ORG_A, again[0].claim(), "wamid.r1", t(14)).await.unwrap();
    handle(&*store, t(14), &["m3"]).await;
    // A reply backing off after a failure does not hold the conversation back.
    let backing_off = claimed_reply(&*store, &c1, t(20), LEASE).await;
    store.reschedule_outbox(ORG_A, backing_off.claim(), t(100), "429").await.unwrap();
    store.insert_inbox(message(&c1, "m4", t(21))).await.unwrap();
    assert_eq!(message_ids(&claim_in(&*store, t(21)).await), ["m4"]);
}

/// Many workers on one inbox: each event once, one at a time per conversation, in order.
async fn inbox_many_workers_in_order(store: Arc<dyn Store>) {
    for i in 0..15 {
        for c in 0..6 {
            let conversation = chat(if c % 3 == 2 { ORG_B } else { ORG_A }, &format!("c{c}"));
            store.insert_inbox(message(&conversation, &format!("c{c}-{i:03}"), t(i))).await.unwrap();
        }
    }
    let seen = drain(&store, 8, false, ClaimRequest::any(t(1000), LEASE, 2)).await;
    assert_eq!(seen.len(), 6);
    for (c, ids) in &seen {
        let expected: Vec<String> = (0..15).map(|i| format!("{}-{i:03}", c.contact_id)).collect();
        assert_eq!(ids, &expected, "{c}: each event exactly once, in order");
    }
}

/// Outbox: claim in order per conversation, sent with wamid, backoff, permanent failure.
async fn outbox_lifecycle(store: Arc<dyn Store>) {
    let (c1, c2) = (chat(ORG_A, "c1"), chat(ORG_A, "c2"));
    let replies = [reply(&c1, "one", t(0)), reply(&c1, "two", t(0)), reply(&c2, "later", t(100))];
    let ids = store.enqueue_outbox(ORG_A, &replies).await.unwrap();
    assert_eq!(ids.len(), 3);
    let got = claim_out(&*store, t(1), LEASE).await;
    assert_eq!(got.iter().map(|m| m.payload["text"].as_str().unwrap()).collect::<Vec<_>>(), ["one"]);
    assert_eq!((got[0].status, got[0].attempts), (QueueStatus::Claimed, 1));
    assert!(claim_out(&*store, t(2), LEASE).await.is_empty());
    // Transient failure: back off; "two" waits behind "one".
    store.reschedule_outbox(ORG_A, got[0].claim(), t(20), "429").await.unwrap();
    assert!(claim_out(&*store, t(10), LEASE).await.is_empty());
    let got = claim_out(&*store, t(20), LEASE).await;
    assert_eq!((got[0].id, got[0].attempts, got[0].last_error.as_deref()), (ids[0], 2, Some("429")));
    store.mark_sent(ORG_A, got[0].claim(), "wamid.one", t(21)).await.unwrap();
    let sent = outbox_row(&*store, ids[0]).await;
    assert_eq!((sent.status, sent.wamid.as_deref(), sent.sent_at), (QueueStatus::Done, Some("wamid.one"), Some(t(21))));
    assert_eq!(sent.delivery, Some(DeliveryStatus::Sent));
    fails!(store.mark_sent(ORG_A, got[0].claim(), "wamid.again", t(22)).await, LeaseLost { .. });
    let got = claim_out(&*store, t(22), LEASE).await;
    assert_eq!(got.iter().map(|m| m.id).collect::<Vec<_>>(), [ids[1]]);
    store.fail_outbox(ORG_A, got[0].claim(), "invalid recipient", t(22)).await.unwrap();
    let failed = outbox_row(&*store, ids[1]).await;
    assert_eq!((failed.status, failed.last_error.as_deref()), (QueueStatus::Failed, Some("invalid recipient")));
    assert!(claim_out(&*store, t(99), LEASE).await.is_empty());
    // Lease expiry on the outbox too.
    let got = claim_out(&*store, t(100), Duration::from_secs(5)).await;
    assert_eq!(got[0].id, ids[2]);
    assert_eq!(store.reclaim_outbox(Some(ORG_A), t(104)).await.unwrap(), 0);
    assert_eq!(store.reclaim_outbox(Some(ORG_A), t(106)).await.unwrap(), 1);
    let again = claim_out(&*store, t(106), LEASE).await;
    assert_eq!((again[0].id, again[0].attempts), (ids[2], 2));
    fails!(store.fail_outbox(ORG_A, got[0].claim(), "late", t(106)).await, LeaseLost { .. });
}

/// Delivery statuses merge monotonically: read never regresses to delivered.
async fn outbox_delivery_statuses(store: Arc<dyn Store>) {
    let c = chat(ORG_A, "c1");
    let hi = claimed_reply(&*store, &c, t(0), LEASE).await;
    store.mark_sent(ORG_A, hi.claim(), "wamid.hi", t(1)).await.unwrap();
    assert!(!store.record_delivery(ORG_A, "wamid.unknown", DeliveryStatus::Read, t(2)).await.unwrap());
    assert!(store.record_delivery(ORG_A, "wamid.hi", DeliveryStatus::Delivered, t(2)).await.unwrap());
    assert_eq!(outbox_row(&*store, hi.id).await.delivery, Some(DeliveryStatus::Delivered));
    let later = [DeliveryStatus::Read, DeliveryStatus::Delivered, DeliveryStatus::Sent, DeliveryStatus::Failed];
    for (status, at) in later.into_iter().zip(3..) {
        assert!(store.record_delivery(ORG_A, "wamid.hi", status, t(at)).await.unwrap(), "{status:?}");
    }
    let row = outbox_row(&*store, hi.id).await;
    assert_eq!((row.delivery, row.delivery_at), (Some(DeliveryStatus::Read), Some(t(3))));
    assert!(!store.record_delivery(ORG_B, "wamid.hi", DeliveryStatus::Failed, t(7)).await.unwrap(), "other org");
    // Failed after sent is recorded.
    let again = claimed_reply(&*store, &c, t(10), LEASE).await;
    store.mark_sent(ORG_A, again.claim(), "wamid.again", t(10)).await.unwrap();
    store.record_delivery(ORG_A, "wamid.again", DeliveryStatus::Failed, t(11)).await.unwrap();
    assert_eq!(outbox_row(&*store, again.id).await.delivery, Some(DeliveryStatus::Failed));
}

/// Parallel senders: every reply sent once, in order per conversation.
async fn outbox_many_senders(store: Arc<dyn Store>) {
    for i in 0..12 {
        let replies: Vec<_> = (0..5).map(|c| reply(&chat(ORG_A, &format!("c{c}")), &format!("{i:03}"), t(0))).collect();
        store.enqueue_outbox(ORG_A, &replies).await.unwrap();
    }
    let sent = drain(&store, 6, true, ClaimRequest::for_org(ORG_A, t(1), LEASE, 3)).await;
    assert_eq!(sent.len(), 5);
    for (c, texts) in &sent {
        assert_eq!(texts, &(0..12).map(|i| format!("{i:03}")).collect::<Vec<_>>(), "{c}");
    }
}

/// Flows: each publish adds a version; a session runs on the version its last save named.
async fn flows_versions(store: Arc<dyn Store>) {
    assert!(store.get_flow(ORG_A, "lead", None).await.unwrap().is_none());
    assert_eq!(store.publish_flow(ORG_A, "lead", r#"{"v":1}"#, t(0)).await.unwrap(), 1);
    assert_eq!(store.publish_flow(ORG_A, "lead", r#"{"v":2}"#, t(1)).await.unwrap(), 2);
    assert_eq!(store.publish_flow(ORG_A, "survey", r#"{"s":1}"#, t(2)).await.unwrap(), 1);
    let latest = store.get_flow(ORG_A, "lead", None).await.unwrap().unwrap();
    assert_eq!((latest.version, latest.definition.as_str(), latest.published_at), (2, r#"{"v":2}"#, t(1)));
    assert_eq!((latest.org_id.as_str(), latest.flow_id.as_str()), (ORG_A, "lead"));
    assert_eq!(store.get_flow(ORG_A, "lead", Some(1)).await.unwrap().unwrap().definition, r#"{"v":1}"#);
    assert!(store.get_flow(ORG_A, "lead", Some(3)).await.unwrap().is_none());
    let list = store.list_flows(ORG_A).await.unwrap();
    assert_eq!(list.iter().map(|f| (f.flow_id.as_str(), f.version)).collect::<Vec<_>>(), [("lead", 2), ("survey", 1)]);

    // A session started on v1 keeps v1 after v3 is published, until a save moves it, in a
    // commit as in a plain save.
    let key = chat(ORG_A, "c1").session("lead");
    store.save_session(write(&key, 0, "s", t(3))).await.unwrap();
    store.publish_flow(ORG_A, "lead", r#"{"v":3}"#, t(4)).await.unwrap();
    store.save_session(write(&key, 1, "s2", t(5))).await.unwrap();
    assert_eq!(store.load_session(&key).await.unwrap().unwrap().flow_version, 1);
    let moved = SessionWrite { flow_version: 3, ..write(&key, 2, "s3", t(6)) };
    store.commit(Commit { session: Some(moved), ..Commit::new(ORG_A, t(6)) }).await.unwrap();
    let moved = store.load_session(&key).await.unwrap().unwrap();
    assert_eq!((moved.version, moved.flow_version, moved.session), (3, 3, sample_state("s3")));
    let listed = store.conversation_sessions(&key.conversation()).await.unwrap();
    assert_eq!(listed.iter().map(|s| s.flow_version).collect::<Vec<_>>(), [3]);
    // The definition text is stored exactly, unicode included.
    let text = "{\"name\":\"Olá — ✓\"}";
    let v = store.publish_flow(ORG_A, "unicode", text, t(6)).await.unwrap();
    assert_eq!(store.get_flow(ORG_A, "unicode", Some(v)).await.unwrap().unwrap().definition, text);
}

/// Concurrent publishes of one flow id all succeed, each with its own next version.
async fn flows_concurrent_publish(store: Arc<dyn Store>) {
    let publish = |i: i64| {
        let store = store.clone();
        async move { store.publish_flow(ORG_A, "lead", &format!("{{\"v\":{i}}}"), t(i)).await }
    };
    let published = together((0..16).map(publish)).await.into_iter();
    let mut versions: Vec<i64> = published.map(|r| r.expect("a concurrent publish gets the next version")).collect();
    versions.sort_unstable();
    assert_eq!(versions, (1..=16).collect::<Vec<i64>>());
    assert_eq!(store.get_flow(ORG_A, "lead", None).await.unwrap().unwrap().version, 16);
    assert_eq!(store.list_flows(ORG_A).await.unwrap().len(), 1);
}

/// A flow's versions: all of them, newest first, exactly as published, of this organization only.
async fn flows_version_listing(store: Arc<dyn Store>) {
    assert!(store.list_flow_versions(ORG_A, "lead").await.unwrap().is_empty());
    for (i, text) in [r#"{"v":1}"#, r#"{"v":2}"#, r#"{"v":1}"#].iter().enumerate() {
        store.publish_flow(ORG_A, "lead", text, t(i as i64)).await.unwrap();
    }
    store.publish_flow(ORG_A, "survey", r#"{"s":1}"#, t(9)).await.unwrap();
    store.publish_flow(ORG_B, "lead", r#"{"b":1}"#, t(9)).await.unwrap();
    let versions = store.list_flow_versions(ORG_A, "lead").await.unwrap();
    let listed: Vec<_> = versions.iter().map(|f| (f.version, f.definition.as_str(), f.published_at)).collect();
    assert_eq!(listed, [(3, r#"{"v":1}"#, t(2)), (2, r#"{"v":2}"#, t(1)), (1, r#"{"v":1}"#, t(0))]);
    assert!(versions.iter().all(|f| f.org_id == ORG_A && f.flow_id == "lead"));
    let theirs = store.list_flow_versions(ORG_B, "lead").await.unwrap();
    assert_eq!(theirs.iter().map(|f| f.definition.as_str()).collect::<Vec<_>>(), [r#"{"b":1}"#]);
    assert!(store.list_flow_versions(ORG_B, "survey").await.unwrap().is_empty());
}

/// A session whose node is gone from the flow it is checked against is a typed error for it alone.
async fn session_on_changed_flow(store: Arc<dyn Store>) {
    let v1 = store.publish_flow(ORG_A, "lead", SAMPLE_FLOW, t(0)).await.unwrap();
    let (key, other) = (chat(ORG_A, "c1").session("lead"), chat(ORG_A, "c2").session("lead"));
    store.save_session(SessionWrite { flow_version: v1, ..write(&key, 0, "s", t(1)) }).await.unwrap();
    let info = &store.conversation_sessions(&key.conversation()).await.unwrap()[0];
    assert_eq!(info.current_node.as_deref(), Some("ask"));
    // An edit renames the question node (`ask` → `ask_name`) and its edges.
    let edited = SAMPLE_FLOW.replace(r#""ask""#, r#""ask_name""#);
    let v2 = store.publish_flow(ORG_A, "lead", &edited, t(2)).await.unwrap();
    let stored = |v| {
        let store = store.clone();
        async move { compile(&store.get_flow(ORG_A, "lead", Some(v)).await.unwrap().unwrap().definition) }
    };
    let (flow_v1, flow_v2) = (stored(v1).await, stored(v2).await);
    // On the version it started on, it loads.
    let ok = store.load_session_checked(&key, &flow_v1).await.unwrap().unwrap();
    assert_eq!(ok.flow_version, v1);
    // On the edited flow, its node is gone: a typed error naming the session.
    let err = store.load_session_checked(&key, &flow_v2).await.unwrap_err();
    let named = matches!(&err, StoreError::IncompatibleState { session_id, flow_id, .. } if *session_id == ok.id && flow_id == "lead");
    assert!(named, "expected IncompatibleState naming the session, got {err:?}");
    // Nothing else is affected: the raw load works, the session can be closed and restarted.
    assert!(store.load_session(&key).await.unwrap().is_some());
    assert!(store.load_session_checked(&other, &flow_v2).await.unwrap().is_none());
    assert!(store.close_session(&key, t(3)).await.unwrap());
    store.save_session(SessionWrite { flow_version: v2, ..write(&key, 0, "fresh", t(4)) }).await.unwrap();
}

/// A successful commit writes every part; one with a part of another organization, none.
async fn commit_all_or_nothing(store: Arc<dyn Store>) {
    let (c, key) = c1();
    let ev = claimed(&*store, &c, "m1", t(1)).await;
    let out = store.commit(turn(&c, &key, 0, Some(ev.claim()), t(2))).await.unwrap();
    assert_eq!(out.session.map(|s| s.version), Some(1));
    assert_eq!((out.log_ids.len(), out.outbox_ids.len(), out.scheduled.len()), (2, 1, 1));
    assert!(!out.scheduled[0].is_duplicate());
    assert_eq!(store.load_session(&key).await.unwrap().unwrap().session, sample_state("turn"));
    assert_eq!(store.history(&c, Page::default()).await.unwrap().len(), 2);
    assert!(store.get_outbox(ORG_A, out.outbox_ids[0]).await.unwrap().is_some());
    assert_eq!(inbox_row(&*store, ev.id).await.status, QueueStatus::Done);
    let wake = inbox_row(&*store, out.scheduled[0].id()).await;
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
    fails!(store.commit(bad).await, InvalidInput(_));
    assert_eq!(store.load_session(&key).await.unwrap().unwrap().version, 1);
    assert_eq!(store.history(&c, Page::default()).await.unwrap().len(), 3);
}

/// A version conflict leaves the inbox row claimed, and no log, outbox or wake-up rows.
async fn commit_conflict_leaves_nothing(store: Arc<dyn Store>) {
    let (c, key) = c1();
    store.save_session(write(&key, 0, "other-writer", t(0))).await.unwrap();
    store.save_session(write(&key, 1, "other-writer", t(0))).await.unwrap();
    let ev = claimed(&*store, &c, "m1", t(1)).await;
    fails!(store.commit(turn(&c, &key, 1, Some(ev.claim()), t(2))).await, Conflict { expected: 1, found: Some(2), .. });
    let row = inbox_row(&*store, ev.id).await;
    assert_eq!((row.status, row.attempts), (QueueStatus::Claimed, 1));
    assert!(store.history(&c, Page::default()).await.unwrap().is_empty());
    assert!(claim_out(&*store, t(10_000), LEASE).await.is_empty());
    let loaded = store.load_session(&key).await.unwrap().unwrap();
    assert_eq!((loaded.version, loaded.session), (2, sample_state("other-writer")));
    // Nothing was scheduled either: after the lease ends only m1 comes back.
    let later = claim_in(&*store, t(10_000)).await;
    assert_eq!(message_ids(&later), ["m1"]);
    // Retried with the right version, the turn lands.
    let out = store.commit(turn(&c, &key, 2, Some(later[0].claim()), t(10_001))).await.unwrap();
    assert_eq!(out.session.map(|s| s.version), Some(3));
}

/// A lost inbox lease also refuses the whole commit (the session stays as it was).
async fn commit_lost_lease_leaves_nothing(store: Arc<dyn Store>) {
    let (c, key) = c1();
    store.insert_inbox(message(&c, "m1", t(0))).await.unwrap();
    let first = store.claim_inbox(&ClaimRequest::for_org(ORG_A, t(0), Duration::from_secs(1), 1)).await.unwrap();
    let second = claim_in(&*store, t(5)).await;
    assert_eq!(second[0].attempts, 2);
    fails!(store.commit(turn(&c, &key, 0, Some(first[0].claim()), t(6))).await, LeaseLost { .. });
    assert!(store.load_session(&key).await.unwrap().is_none());
    assert!(store.history(&c, Page::default()).await.unwrap().is_empty());
    let row = inbox_row(&*store, first[0].id).await;
    assert_eq!((row.status, row.attempts), (QueueStatus::Claimed, 2));
    store.commit(turn(&c, &key, 0, Some(second[0].claim()), t(7))).await.unwrap();
}

/// Racing commits on one session version: one lands, the rest leave no trace.
async fn commit_races_one_winner(store: Arc<dyn Store>) {
    let (c, key) = c1();
    store.save_session(write(&key, 0, "s", t(0))).await.unwrap();
    let commits = (0..8).map(|i| committing(&store, Commit { schedule: vec![], ..turn(&c, &key, 1, None, t(i)) }));
    let results = together(commits).await;
    assert!(results.iter().all(|r| r.as_ref().err().is_none_or(StoreError::is_conflict)), "{results:?}");
    assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 1);
    assert_eq!(store.history(&c, Page::default()).await.unwrap().len(), 2);
    assert_eq!(claim_out(&*store, t(100), LEASE).await.len(), 1);
}

/// The common turn (no wake-ups; backends may take a faster path for it): every part lands in
/// order, and a stale version, a "new" session that exists or a lost lease leaves nothing.
async fn commit_without_wake_ups(store: Arc<dyn Store>) {
    let (c, key) = c1();
    let plain = |expected, claim, now| {
        let mut commit = Commit { schedule: vec![], ..turn(&c, &key, expected, claim, now) };
        commit.log.push(log_entry(&c, Direction::Outbound, "bot-2", now, Some("lead")));
        commit.outbox.push(reply(&c, "bot-2", now));
        commit
    };
    let ev = claimed(&*store, &c, "m1", t(1)).await;
    let out = store.commit(plain(0, Some(ev.claim()), t(2))).await.unwrap();
    assert_eq!(out.session.map(|s| s.version), Some(1));
    assert_eq!((out.log_ids.len(), out.outbox_ids.len(), out.scheduled.len()), (3, 2, 0));
    assert!(out.log_ids.windows(2).all(|w| w[0] < w[1]) && out.outbox_ids.windows(2).all(|w| w[0] < w[1]));
    let history = store.history(&c, Page::default()).await.unwrap();
    assert_eq!(history.iter().map(|e| e.id).collect::<Vec<_>>(), out.log_ids);
    assert_eq!(history.iter().map(|e| e.content.clone()).collect::<Vec<_>>(), texts(&["user", "bot", "bot-2"]));
    assert_eq!((&history[0].metadata, history[0].flow_id.as_deref()), (&json!({"k": "user"}), Some("lead")));
    let first = outbox_row(&*store, out.outbox_ids[0]).await;
    assert_eq!((first.payload, first.inbox_id), (json!({"text": "bot"}), None));
    assert_eq!(inbox_row(&*store, ev.id).await.status, QueueStatus::Done);
    let loaded = store.load_session(&key).await.unwrap().unwrap();
    assert_eq!((loaded.version, loaded.session), (1, sample_state("turn")));

    // With a valid claim, a stale version or a "new" session where one is active is a
    // conflict; a claim of another attempt a lost lease, a claim of no row not found.
    let ev = claimed(&*store, &c, "m2", t(3)).await;
    fails!(store.commit(plain(5, Some(ev.claim()), t(4))).await, Conflict { expected: 5, found: Some(1), .. });
    fails!(store.commit(plain(0, Some(ev.claim()), t(4))).await, Conflict { expected: 0, found: Some(1), .. });
    let stale = Claim { id: ev.id, attempt: ev.attempts + 1 };
    fails!(store.commit(plain(1, Some(stale), t(4))).await, LeaseLost { .. });
    fails!(store.commit(plain(1, Some(Claim { id: 999_999, attempt: 1 }), t(4))).await, NotFound { .. });
    // None of them wrote anything, and the claim stays.
    assert_eq!(store.history(&c, Page::default()).await.unwrap().len(), 3);
    assert_eq!(store.load_session(&key).await.unwrap().unwrap().version, 1);
    let row = inbox_row(&*store, ev.id).await;
    assert_eq!((row.status, row.attempts), (QueueStatus::Claimed, 1));

    // Closing in a commit: the session leaves the active set.
    let mut close = plain(1, Some(ev.claim()), t(5));
    close.session.as_mut().expect("a turn saves its session").status = SessionStatus::Closed;
    assert_eq!(store.commit(close).await.unwrap().session.map(|s| s.version), Some(2));
    assert!(store.load_session(&key).await.unwrap().is_none());
    assert_eq!(store.history(&c, Page::default()).await.unwrap().len(), 6);
}

/// Replies a commit claims for its caller ([`Commit::claim_replies_until`]) are claimed as a
/// claim would claim them, and not again while the lease holds. The commits run at once, so
/// that grouping backends write them together.
async fn commit_claims_replies_for_the_caller(store: Arc<dyn Store>) {
    let lease = t(70);
    let chats: Vec<ConversationKey> = (0..6).map(|i| chat(ORG_A, &format!("c{i}"))).collect();
    // Odd conversations have an unfinished reply already.
    let mut earlier = HashMap::new();
    for c in chats.iter().skip(1).step_by(2) {
        earlier.insert(c.clone(), store.enqueue_outbox(ORG_A, &[reply(c, "earlier", t(0))]).await.unwrap()[0]);
    }
    let commits = chats.iter().map(|c| {
        let written = vec![reply(c, "first", t(1)), reply(c, "second", t(1))];
        let commit = Commit { outbox: written.clone(), claim_replies_until: Some(lease), ..Commit::new(ORG_A, t(1)) };
        let (c, committed) = (c.clone(), committing(&store, commit));
        async move { (c, written, committed.await.unwrap()) }
    });
    let mut ours = HashSet::new();
    for (c, written, outcome) in together(commits.collect::<Vec<_>>()).await {
        let claimed = &outcome.claimed_replies;
        assert!(claimed.is_empty() || !earlier.contains_key(&c), "{c}: an earlier reply is unfinished: {claimed:?}");
        if claimed.is_empty() {
            continue;
        }
        assert_eq!(claimed.iter().map(|m| m.id).collect::<Vec<_>>(), outcome.outbox_ids, "{c}: all of them, in order");
        for (m, w) in claimed.iter().zip(&written) {
            assert_eq!((m.status, m.attempts, m.lease_until), (QueueStatus::Claimed, 1, Some(lease)), "{c}");
            assert_eq!((&m.conversation, &m.payload, m.due_at), (&w.conversation, &w.payload, w.due_at), "{c}");
            let stored = outbox_row(&*store, m.id).await;
            assert_eq!((stored.status, stored.attempts, stored.lease_until), (QueueStatus::Claimed, 1, Some(lease)));
            ours.insert(m.id);
        }
    }
    // A claim while the leases hold takes none of ours: each conversation's first reply that
    // is not out with this caller.
    let found = claim_out(&*store, t(2), LEASE).await;
    assert!(found.iter().all(|m| !ours.contains(&m.id)), "claimed twice: {found:?}");
    let found_earlier: HashSet<i64> =
        found.iter().map(|m| m.id).filter(|id| earlier.values().any(|e| e == id)).collect();
    assert_eq!(found_earlier, earlier.values().copied().collect(), "each earlier reply goes first");
    // Ours finish with their claims.
    for id in ours {
        store.mark_sent(ORG_A, Claim { id, attempt: 1 }, "wamid.x", t(3)).await.unwrap();
    }
}

/// The next event a commit claims for its caller ([`Commit::claim_next_until`]) is claimed as
/// a claim would claim it, passed over while the lease holds, and its own turn commits.
async fn commit_claims_the_next_event_for_the_caller(store: Arc<dyn Store>) {
    let lease = t(70);
    let chats: Vec<ConversationKey> = (0..4).map(|i| chat(ORG_A, &format!("c{i}"))).collect();
    let last = &chats[3];
    for c in &chats {
        store.insert_inbox(message(c, &format!("{c}-first"), t(0))).await.unwrap();
        // The last conversation's next event is a wake-up, not due when the first is handled.
        let next = if c == last {
            NewInboxEvent::wake_up(c.clone(), format!("{c}-next"), json!({}), t(0), t(500))
        } else {
            message(c, &format!("{c}-next"), t(0))
        };
        store.insert_inbox(next).await.unwrap();
    }
    let claimed = claim_in(&*store, t(1)).await;
    assert_eq!(claimed.len(), chats.len(), "one per conversation");
    let commits = claimed.iter().map(|event| {
        let commit =
            Commit { inbox_done: Some(event.claim()), claim_next_until: Some(lease), ..Commit::new(ORG_A, t(5)) };
        let (c, committed) = (event.conversation.clone(), committing(&store, commit));
        async move { (c, committed.await.unwrap().claimed_next) }
    });
    let (mut ours, mut left) = (Vec::new(), HashSet::new());
    for (c, next) in together(commits.collect::<Vec<_>>()).await {
        let Some(next) = next else {
            if c != *last {
                left.insert(format!("{c}-next"));
            }
            continue;
        };
        assert_ne!(&c, last, "a wake-up not due yet was claimed: {next:?}");
        assert_eq!((&next.conversation, next.message_id.as_str()), (&c, format!("{c}-next").as_str()));
        assert_eq!((next.status, next.attempts, next.lease_until), (QueueStatus::Claimed, 1, Some(lease)), "{c}");
        assert_eq!(inbox_row(&*store, next.id).await, *next, "{c}: as stored");
        ours.push(next);
    }
    // A claim while the leases hold finds only what no commit claimed (the wake-up is not due).
    let found: HashSet<String> = claim_in(&*store, t(6)).await.into_iter().map(|e| e.message_id).collect();
    assert_eq!(found, left);
    for next in ours {
        store.commit(Commit { inbox_done: Some(next.claim()), ..Commit::new(ORG_A, t(7)) }).await.unwrap();
    }
}

/// Many writes at once (a backend may group them): each gets its own result, failures alone.
async fn concurrent_writes_keep_their_own_results(store: Arc<dyn Store>) {
    const CHATS: usize = 12;
    for i in 0..CHATS {
        let c = chat(ORG_A, &format!("c{i}"));
        store.save_session(write(&c.session("lead"), 0, "s", t(0))).await.unwrap();
        store.insert_inbox(message(&c, &format!("m{i}"), t(0))).await.unwrap();
    }
    let claimed = claim_in(&*store, t(1)).await;
    assert_eq!(claimed.len(), CHATS);
    let mut tasks = tokio::task::JoinSet::new();
    for event in claimed {
        let (c, claim) = (event.conversation.clone(), event.claim());
        let key = c.session("lead");
        let i: usize = c.contact_id.trim_start_matches('c').parse().unwrap();
        // The turn that holds the claim and the version lands (half of them with wake-ups).
        let mut landing = turn(&c, &key, 1, Some(claim), t(2));
        if i % 2 == 1 {
            landing.schedule.clear();
        }
        let landed = committing(&store, landing);
        tasks.spawn(async move { ("turn", i, landed.await.map(|o| o.log_ids.len() + o.outbox_ids.len())) });
        // A stale writer: a conflict, nothing written.
        let stale = committing(&store, turn(&c, &key, 7, None, t(2)));
        tasks.spawn(async move {
            let result = stale.await;
            assert!(matches!(result, Err(Conflict { expected: 7, .. })), "{result:?}");
            ("stale", i, Ok(0))
        });
        // The same message delivered twice at once: one insert, one duplicate.
        for _ in 0..2 {
            let (s, again) = (store.clone(), message(&c, &format!("again-{i}"), t(3)));
            tasks.spawn(
                async move { ("insert", i, Ok(usize::from(!s.insert_inbox(again).await.unwrap().is_duplicate()))) },
            );
        }
        // A claim change with an attempt nobody holds: refused.
        let s = store.clone();
        tasks.spawn(async move {
            fails!(s.complete_inbox(ORG_A, Claim { id: claim.id, attempt: 99 }, t(2)).await, LeaseLost { .. });
            ("bogus", i, Ok(0))
        });
    }
    let mut inserted = vec![0; CHATS];
    for done in tasks.join_all().await {
        match done {
            ("turn", i, result) => assert_eq!(result.map_err(|e| e.to_string()), Ok(3), "turn of c{i}"),
            ("insert", i, Ok(n)) => inserted[i] += n,
            _ => {}
        }
    }
    assert_eq!(inserted, vec![1; CHATS], "each duplicate pair inserted exactly once");
    for i in 0..CHATS {
        let c = chat(ORG_A, &format!("c{i}"));
        assert_eq!(store.load_session(&c.session("lead")).await.unwrap().unwrap().version, 2, "c{i}");
        assert_eq!(store.history(&c, Page::default()).await.unwrap().len(), 2, "c{i}: only the landed turn's rows");
    }
    assert_eq!(claim_out(&*store, t(10), LEASE).await.len(), CHATS);
}
