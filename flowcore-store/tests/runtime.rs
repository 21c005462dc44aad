//! The runtime end to end on the memory store, on a virtual clock: tokio's time is paused,
//! so hours of delays and retry waits pass in microseconds and every timing is exact.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use flowcore::{Message, Timestamp};
use flowcore_store::runtime::*;
use flowcore_store::{ConversationKey, MemoryStore, Page, QueueStatus, Store};

const START: Timestamp = Timestamp::from_unix_seconds(1_780_300_800);

const HELLO: &str = r#"{"id": "hello", "name": "Hello", "nodes": [
  {"id": "s", "type": "start"},
  {"id": "ask", "type": "question", "data": {"content": "Qual é o seu nome?", "variableName": "name"}},
  {"id": "hi", "type": "message", "data": {"content": "Olá, {{name}}!"}},
  {"id": "ask2", "type": "question", "data": {"content": "Algo mais?", "variableName": "more"}}],
  "edges": [{"id": "e1", "source": "s", "target": "ask"}, {"id": "e2", "source": "ask", "target": "hi"},
            {"id": "e3", "source": "hi", "target": "ask2"}]}"#;

const DELAYED: &str = r#"{"id": "delayed", "name": "Delayed", "nodes": [
  {"id": "s", "type": "start"},
  {"id": "m1", "type": "message", "data": {"content": "Um momento"}},
  {"id": "d", "type": "delay", "data": {"hours": 2}},
  {"id": "m2", "type": "message", "data": {"content": "Pronto"}}],
  "edges": [{"id": "e1", "source": "s", "target": "m1"}, {"id": "e2", "source": "m1", "target": "d"},
            {"id": "e3", "source": "d", "target": "m2"}]}"#;

const HANDOFF: &str = r#"{"id": "human", "name": "Human", "nodes": [
  {"id": "s", "type": "start"},
  {"id": "h", "type": "handoff", "data": {"content": "Um atendente vai falar com você"}}],
  "edges": [{"id": "e1", "source": "s", "target": "h"}]}"#;

/// Records every delivery with the virtual time it happened; answers as scripted, then
/// `Sent`.
struct Recorder {
    clock: VirtualClock,
    script: Mutex<VecDeque<DeliveryOutcome>>,
    sent: Mutex<Vec<(String, Timestamp, i64, i64)>>,
}

impl Recorder {
    fn new(clock: VirtualClock, script: Vec<DeliveryOutcome>) -> Arc<Recorder> {
        Arc::new(Recorder { clock, script: Mutex::new(script.into()), sent: Mutex::default() })
    }

    fn texts(&self) -> Vec<String> {
        self.sent.lock().unwrap().iter().map(|(text, ..)| text.clone()).collect()
    }

    fn deliveries(&self) -> Vec<(String, Timestamp, i64, i64)> {
        self.sent.lock().unwrap().clone()
    }
}

#[async_trait]
impl Delivery for Recorder {
    async fn deliver(&self, reply: &Reply<'_>) -> DeliveryOutcome {
        let text = match reply.message {
            Message::Text { text } => text.clone(),
            other => format!("{other:?}"),
        };
        self.sent.lock().unwrap().push((text, self.clock.now(), reply.attempt, reply.outbox_id));
        let scripted = self.script.lock().unwrap().pop_front();
        scripted.unwrap_or_else(|| DeliveryOutcome::Sent(format!("wamid.out.{}", reply.outbox_id)))
    }
}

struct Harness {
    store: Arc<dyn Store>,
    runtime: Runtime,
    delivery: Arc<Recorder>,
    clock: VirtualClock,
}

async fn harness(flow: &str, script: Vec<DeliveryOutcome>) -> Harness {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    harness_on(store, flow, script).await
}

async fn harness_on(store: Arc<dyn Store>, flow: &str, script: Vec<DeliveryOutcome>) -> Harness {
    harness_with(store, flow, script, RuntimeOptions::default()).await
}

async fn harness_with(
    store: Arc<dyn Store>,
    flow: &str,
    script: Vec<DeliveryOutcome>,
    options: RuntimeOptions,
) -> Harness {
    let clock = VirtualClock::starting_at(START);
    let delivery = Recorder::new(clock, script);
    let flow_id = declared_id(flow).unwrap();
    let runtime = Runtime::builder(store.clone(), delivery.clone(), Arc::new(OneFlow::new(flow_id.clone())))
        .clock(Arc::new(clock))
        .options(options)
        .organization("acme")
        .build()
        .await
        .unwrap();
    runtime.flows().install("acme", &flow_id, flow, compile(flow).unwrap()).await.unwrap();
    Harness { store, runtime, delivery, clock }
}

fn chat() -> ConversationKey {
    ConversationKey::new("acme", "106000000000001", "5511999990000")
}

impl Harness {
    async fn say(&self, wamid: &str, text: &str) -> bool {
        let message = InboundPayload::text(wamid, text, self.clock.now());
        !self.runtime.accept(chat(), &message).await.unwrap().is_duplicate()
    }

    /// Waits (in virtual time, at most a day) until `n` deliveries happened.
    async fn deliveries(&self, n: usize) -> Vec<String> {
        for _ in 0..100_000 {
            if self.delivery.texts().len() >= n {
                return self.delivery.texts();
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        panic!("only {:?} were delivered", self.delivery.texts());
    }

    /// The outbox row of the first delivery.
    async fn first_reply(&self) -> flowcore_store::OutboxMessage {
        let id = self.delivery.deliveries()[0].3;
        self.store.get_outbox("acme", id).await.unwrap().expect("the reply's row")
    }

    /// Lets a virtual minute pass, so anything that would still happen does.
    async fn settle(&self) {
        tokio::time::sleep(Duration::from_secs(60)).await;
    }
}

#[tokio::test(start_paused = true)]
async fn a_message_is_answered_once_and_a_repeat_is_ignored() {
    let h = harness(HELLO, vec![]).await;
    let running = h.runtime.start().unwrap();
    assert!(h.say("wamid.1", "oi").await);
    assert!(!h.say("wamid.1", "oi").await, "the same wamid again is a duplicate");
    assert_eq!(h.deliveries(1).await, ["Qual é o seu nome?"]);
    h.settle().await;
    assert_eq!(h.delivery.texts(), ["Qual é o seu nome?"]);
    let stats = h.runtime.stats();
    assert_eq!((Stats::get(&stats.messages_accepted), Stats::get(&stats.duplicates)), (1, 1));
    running.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_conversations_turns_and_replies_keep_their_order() {
    let h = harness(HELLO, vec![]).await;
    let running = h.runtime.start().unwrap();
    // Both messages wait in the inbox before any turn runs.
    assert!(h.say("wamid.1", "oi").await);
    assert!(h.say("wamid.2", "Ana").await);
    assert_eq!(h.deliveries(3).await, ["Qual é o seu nome?", "Olá, Ana!", "Algo mais?"]);
    let history = h.store.history(&chat(), Page::first(10)).await.unwrap();
    assert_eq!(history.len(), 5, "two inbound and three outbound rows: {history:?}");
    running.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_delay_wakes_its_session_on_the_virtual_clock() {
    let h = harness(DELAYED, vec![]).await;
    let running = h.runtime.start().unwrap();
    h.say("wamid.1", "oi").await;
    h.deliveries(2).await;
    let deliveries = h.delivery.deliveries();
    assert_eq!(deliveries[0].0, "Um momento");
    assert_eq!(deliveries[1].0, "Pronto");
    let waited = deliveries[1].1.millis_since(deliveries[0].1);
    assert!((7_200_000..7_200_000 + 5_000).contains(&waited), "woken {waited} ms later");
    running.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_retried_delivery_waits_as_it_was_told_and_goes_out_once() {
    let retry = DeliveryOutcome::Retry { reason: "HTTP 503".into(), after: Some(Duration::from_secs(30)) };
    let h = harness(HELLO, vec![retry]).await;
    let running = h.runtime.start().unwrap();
    h.say("wamid.1", "oi").await;
    h.deliveries(2).await;
    h.settle().await;
    let deliveries = h.delivery.deliveries();
    assert_eq!(deliveries.len(), 2, "one failed attempt, one that went out: {deliveries:?}");
    assert_eq!((deliveries[0].2, deliveries[1].2), (1, 2), "attempt numbers");
    assert!(deliveries[1].1.millis_since(deliveries[0].1) >= 30_000);
    let row = h.first_reply().await;
    assert_eq!((row.status, row.wamid.as_deref()), (QueueStatus::Done, Some(format!("wamid.out.{}", row.id).as_str())));
    running.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_failed_delivery_is_never_retried() {
    let h = harness(HELLO, vec![DeliveryOutcome::Failed("recipient not on WhatsApp".into())]).await;
    let running = h.runtime.start().unwrap();
    h.say("wamid.1", "oi").await;
    h.deliveries(1).await;
    h.settle().await;
    assert_eq!(h.delivery.texts().len(), 1);
    let row = h.first_reply().await;
    assert_eq!(row.status, QueueStatus::Failed);
    assert_eq!(row.last_error.as_deref(), Some("recipient not on WhatsApp"));
    running.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_delivery_that_keeps_failing_gives_up_after_the_attempt_limit() {
    let retry = DeliveryOutcome::Retry { reason: "timeout".into(), after: None };
    let h = harness(HELLO, vec![retry; 20]).await;
    let running = h.runtime.start().unwrap();
    h.say("wamid.1", "oi").await;
    h.deliveries(8).await;
    for _ in 0..10 {
        h.settle().await;
    }
    assert_eq!(h.delivery.texts().len(), 8, "RuntimeOptions::send_max_attempts");
    let row = h.first_reply().await;
    assert_eq!(row.status, QueueStatus::Failed);
    running.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_handed_off_conversation_stays_silent_and_logs_what_comes_in() {
    let h = harness(HANDOFF, vec![]).await;
    let running = h.runtime.start().unwrap();
    h.say("wamid.1", "oi").await;
    assert_eq!(h.deliveries(1).await, ["Um atendente vai falar com você"]);
    h.say("wamid.2", "alô?").await;
    h.settle().await;
    assert_eq!(h.delivery.texts().len(), 1, "the bot does not talk over the human");
    let history = h.store.history(&chat(), Page::first(10)).await.unwrap();
    assert!(history.iter().any(|e| e.wamid.as_deref() == Some("wamid.2")), "the message is logged");
    running.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn after_shutdown_accepted_messages_wait_for_the_next_start() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let first = harness_on(store.clone(), HELLO, vec![]).await;
    let running = first.runtime.start().unwrap();
    assert!(first.runtime.start().is_err(), "a runtime starts once");
    running.shutdown().await;
    first.say("wamid.1", "oi").await;
    first.settle().await;
    assert!(first.delivery.texts().is_empty(), "nothing runs after shutdown");

    let second = harness_on(store, HELLO, vec![]).await;
    let running = second.runtime.start().unwrap();
    assert_eq!(second.deliveries(1).await, ["Qual é o seu nome?"]);
    running.shutdown().await;
}

/// `HELLO` with a new greeting after the name question (whose node is unchanged).
const HELLO_V2_GREETING: &str = r#"{"id": "hello", "name": "Hello", "nodes": [
  {"id": "s", "type": "start"},
  {"id": "ask", "type": "question", "data": {"content": "Qual é o seu nome?", "variableName": "name"}},
  {"id": "hi", "type": "message", "data": {"content": "Oi de novo, {{name}}!"}},
  {"id": "ask2", "type": "question", "data": {"content": "Algo mais?", "variableName": "more"}}],
  "edges": [{"id": "e1", "source": "s", "target": "ask"}, {"id": "e2", "source": "ask", "target": "hi"},
            {"id": "e3", "source": "hi", "target": "ask2"}]}"#;

/// `HELLO` with the name question renamed (`ask` → `ask_name`) and a new greeting.
const HELLO_V2_RENAMED: &str = r#"{"id": "hello", "name": "Hello", "nodes": [
  {"id": "s", "type": "start"},
  {"id": "ask_name", "type": "question", "data": {"content": "Seu nome?", "variableName": "name"}},
  {"id": "hi", "type": "message", "data": {"content": "Oi de novo, {{name}}!"}},
  {"id": "ask2", "type": "question", "data": {"content": "Algo mais?", "variableName": "more"}}],
  "edges": [{"id": "e1", "source": "s", "target": "ask_name"}, {"id": "e2", "source": "ask_name", "target": "hi"},
            {"id": "e3", "source": "hi", "target": "ask2"}]}"#;

/// Starts a `HELLO` conversation with `move_to_latest`, publishes `v2` while it waits at
/// the name question, answers it; the replies and the version the session row records.
async fn answer_across_a_publish(move_to_latest: MoveToLatest, v2: &str) -> (Vec<String>, i64) {
    let mut options = RuntimeOptions::default();
    options.move_to_latest = move_to_latest;
    let h = harness_with(Arc::new(MemoryStore::new()), HELLO, vec![], options).await;
    let running = h.runtime.start().unwrap();
    h.say("wamid.1", "oi").await;
    h.deliveries(1).await;
    assert_eq!(h.runtime.flows().publish("acme", "hello", v2, compile(v2).unwrap()).await.unwrap(), 2);
    h.say("wamid.2", "Ana").await;
    let texts = h.deliveries(3).await;
    h.settle().await;
    let sessions = h.store.conversation_sessions(&chat()).await.unwrap();
    assert_eq!(sessions.len(), 1, "one active session, waiting at ask2: {sessions:?}");
    assert_eq!(sessions[0].current_node.as_deref(), Some("ask2"));
    running.shutdown().await;
    (texts, sessions[0].flow_version)
}

#[tokio::test(start_paused = true)]
async fn a_running_session_keeps_its_flow_version_by_default() {
    let (texts, version) = answer_across_a_publish(MoveToLatest::default(), HELLO_V2_GREETING).await;
    assert_eq!(texts, ["Qual é o seu nome?", "Olá, Ana!", "Algo mais?"]);
    assert_eq!(version, 1);
}

#[tokio::test(start_paused = true)]
async fn a_running_session_moves_to_the_newest_version_when_its_node_is_there() {
    let (texts, version) = answer_across_a_publish(MoveToLatest::flows([("acme", "hello")]), HELLO_V2_GREETING).await;
    assert_eq!(texts, ["Qual é o seu nome?", "Oi de novo, Ana!", "Algo mais?"]);
    assert_eq!(version, 2, "the turn's commit records the version the session moved to");
}

#[tokio::test(start_paused = true)]
async fn a_running_session_stays_on_its_version_when_its_node_is_gone() {
    let (texts, version) = answer_across_a_publish(MoveToLatest::All, HELLO_V2_RENAMED).await;
    assert_eq!(texts, ["Qual é o seu nome?", "Olá, Ana!", "Algo mais?"]);
    assert_eq!(version, 1);
}

#[tokio::test(start_paused = true)]
async fn only_the_named_flows_sessions_move() {
    let (texts, version) = answer_across_a_publish(MoveToLatest::flows([("acme", "other")]), HELLO_V2_GREETING).await;
    assert_eq!(texts[1], "Olá, Ana!");
    assert_eq!(version, 1);
}

/// A flow `id` whose start runs a `call_flow` node per id in `calls`, one after the other.
fn calling(id: &str, calls: &[&str]) -> String {
    let mut nodes = vec![serde_json::json!({"id": "s", "type": "start"})];
    let mut edges = Vec::new();
    for (i, callee) in calls.iter().enumerate() {
        nodes.push(serde_json::json!({"id": format!("c{i}"), "type": "call_flow", "data": {"flowId": callee}}));
        let from = if i == 0 { "s".to_string() } else { format!("c{}", i - 1) };
        edges.push(serde_json::json!({"id": format!("e{i}"), "source": from, "target": format!("c{i}")}));
    }
    serde_json::json!({"id": id, "nodes": nodes, "edges": edges}).to_string()
}

#[tokio::test(start_paused = true)]
async fn call_set_gathers_the_called_flows_transitively() {
    let h = harness(HELLO, vec![]).await;
    let flows = h.runtime.flows();
    for (id, calls) in [("a", &["b", "missing"][..]), ("b", &["c", "a"][..]), ("c", &[][..])] {
        let text = calling(id, calls);
        flows.install("acme", id, &text, compile(&text).unwrap()).await.unwrap();
    }
    let (_, a) = flows.latest("acme", "a").await.unwrap();
    let set = flows.call_set("acme", &a).await.unwrap().expect("a calls others");
    let mut ids: Vec<&str> = set.iter().map(|f| f.id()).collect();
    ids.sort_unstable();
    // A flow the store lacks is left out; the engine's error at that call names it.
    assert_eq!(ids, ["a", "b", "c"]);
    let (_, hello) = flows.latest("acme", "hello").await.unwrap();
    assert!(flows.call_set("acme", &hello).await.unwrap().is_none());
}
