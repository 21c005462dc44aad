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

/// A name question (node `ask`), a greeting and a second question; versions vary both.
fn hello(ask: &str, greeting: &str) -> String {
    serde_json::json!({"id": "hello", "name": "Hello", "nodes": [
        {"id": "s", "type": "start"},
        {"id": ask, "type": "question", "data": {"content": "Qual é o seu nome?", "variableName": "name"}},
        {"id": "hi", "type": "message", "data": {"content": greeting}},
        {"id": "ask2", "type": "question", "data": {"content": "Algo mais?", "variableName": "more"}}],
      "edges": [{"id": "e1", "source": "s", "target": ask}, {"id": "e2", "source": ask, "target": "hi"},
                {"id": "e3", "source": "hi", "target": "ask2"}]})
    .to_string()
}

fn hello_v1() -> String {
    hello("ask", "Olá, {{name}}!")
}

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

/// Records every delivery (text, virtual time, attempt, outbox row); answers as scripted, then `Sent`.
struct Recorder {
    clock: VirtualClock,
    script: Mutex<VecDeque<DeliveryOutcome>>,
    sent: Mutex<Vec<(String, Timestamp, i64, i64)>>,
}

impl Recorder {
    fn texts(&self) -> Vec<String> {
        self.sent.lock().unwrap().iter().map(|(text, ..)| text.clone()).collect()
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
}

async fn harness(flow: &str, script: Vec<DeliveryOutcome>) -> Harness {
    harness_with(Arc::new(MemoryStore::new()), flow, script, RuntimeOptions::default()).await
}

async fn harness_with(
    store: Arc<dyn Store>,
    flow: &str,
    script: Vec<DeliveryOutcome>,
    options: RuntimeOptions,
) -> Harness {
    let clock = VirtualClock::starting_at(START);
    let delivery = Arc::new(Recorder { clock, script: Mutex::new(script.into()), sent: Mutex::default() });
    let flow_id = declared_id(flow).unwrap();
    let runtime = Runtime::builder(store.clone(), delivery.clone(), Arc::new(OneFlow::new(flow_id.clone())))
        .clock(Arc::new(clock))
        .options(options)
        .organization("acme")
        .build()
        .await
        .unwrap();
    runtime.flows().install("acme", &flow_id, flow, compile(flow).unwrap()).await.unwrap();
    Harness { store, runtime, delivery }
}

fn chat() -> ConversationKey {
    ConversationKey::new("acme", "106000000000001", "5511999990000")
}

impl Harness {
    async fn say(&self, wamid: &str, text: &str) -> bool {
        let message = InboundPayload::text(wamid, text, self.delivery.clock.now());
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

    /// Lets a virtual minute pass, so anything that would still happen does.
    async fn settle(&self) {
        tokio::time::sleep(Duration::from_secs(60)).await;
    }
}

#[tokio::test(start_paused = true)]
async fn a_conversations_messages_are_answered_once_in_order_and_a_repeat_is_ignored() {
    let h = harness(&hello_v1(), vec![]).await;
    let running = h.runtime.start().unwrap();
    // All wait in the inbox before any turn runs.
    assert!(h.say("wamid.1", "oi").await);
    assert!(!h.say("wamid.1", "oi").await, "the same wamid again is a duplicate");
    assert!(h.say("wamid.2", "Ana").await);
    assert_eq!(h.deliveries(3).await, ["Qual é o seu nome?", "Olá, Ana!", "Algo mais?"]);
    h.settle().await;
    assert_eq!(h.delivery.texts().len(), 3, "nothing goes out twice");
    let stats = h.runtime.stats();
    assert_eq!((Stats::get(&stats.messages_accepted), Stats::get(&stats.duplicates)), (2, 1));
    let history = h.store.history(&chat(), Page::first(10)).await.unwrap();
    assert_eq!(history.len(), 5, "two inbound and three outbound rows: {history:?}");
    running.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_delay_wakes_its_session_on_the_virtual_clock() {
    let h = harness(DELAYED, vec![]).await;
    let running = h.runtime.start().unwrap();
    h.say("wamid.1", "oi").await;
    assert_eq!(h.deliveries(2).await, ["Um momento", "Pronto"]);
    let sent = h.delivery.sent.lock().unwrap().clone();
    let waited = sent[1].1.millis_since(sent[0].1);
    assert!((7_200_000..7_200_000 + 5_000).contains(&waited), "woken {waited} ms later");
    running.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_delivery_is_retried_as_it_was_told_until_sent_refused_or_out_of_attempts() {
    let after_30s = DeliveryOutcome::Retry { reason: "HTTP 503".into(), after: Some(Duration::from_secs(30)) };
    let refused = DeliveryOutcome::Failed("recipient not on WhatsApp".into());
    let retry = DeliveryOutcome::Retry { reason: "timeout".into(), after: None };
    // The limit is RuntimeOptions::send_max_attempts; without a wait of its own, the backoff.
    for (script, attempts, error, told) in [
        (vec![after_30s], 2, None, Some(Duration::from_secs(30))),
        (vec![refused], 1, Some("recipient not on WhatsApp"), None),
        (vec![retry; 20], 8, Some("gave up after 8 attempts: timeout"), None),
    ] {
        let h = harness(&hello_v1(), script).await;
        let running = h.runtime.start().unwrap();
        h.say("wamid.1", "oi").await;
        h.deliveries(attempts).await;
        tokio::time::sleep(Duration::from_secs(600)).await; // long after the last backoff
        let sent = h.delivery.sent.lock().unwrap().clone();
        assert_eq!(sent.len(), attempts, "never sent again once recorded: {sent:?}");
        for (i, pair) in sent.windows(2).enumerate() {
            assert_eq!((pair[0].2, pair[1].2), (i as i64 + 1, i as i64 + 2), "attempt numbers");
            let waited = pair[1].1.millis_since(pair[0].1);
            let wait = told.unwrap_or_else(|| RuntimeOptions::default().backoff(pair[0].2));
            assert!(waited >= wait.as_millis() as i64, "attempt {} after {waited} ms", pair[1].2);
        }
        let row = h.store.get_outbox("acme", sent[0].3).await.unwrap().expect("the reply's row");
        let (sent_as, failed_for) = (format!("wamid.out.{}", row.id), error.map(str::to_owned));
        match failed_for {
            None => assert_eq!((row.status, row.wamid), (QueueStatus::Done, Some(sent_as))),
            Some(_) => assert_eq!((row.status, row.last_error), (QueueStatus::Failed, failed_for)),
        }
        running.shutdown().await;
    }
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
    let first = harness_with(store.clone(), &hello_v1(), vec![], RuntimeOptions::default()).await;
    let running = first.runtime.start().unwrap();
    assert!(first.runtime.start().is_err(), "a runtime starts once");
    running.shutdown().await;
    first.say("wamid.1", "oi").await;
    first.settle().await;
    assert!(first.delivery.texts().is_empty(), "nothing runs after shutdown");

    let second = harness_with(store, &hello_v1(), vec![], RuntimeOptions::default()).await;
    let running = second.runtime.start().unwrap();
    assert_eq!(second.deliveries(1).await, ["Qual é o seu nome?"]);
    running.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_running_session_moves_to_a_newer_flow_version_only_when_named_and_its_node_is_there() {
    let greeting = hello("ask", "Oi de novo, {{name}}!");
    let renamed = hello("ask_name", "Oi de novo, {{name}}!");
    let cases = [
        (MoveToLatest::default(), &greeting, "Olá, Ana!", 1),
        (MoveToLatest::flows([("acme", "hello")]), &greeting, "Oi de novo, Ana!", 2),
        (MoveToLatest::All, &renamed, "Olá, Ana!", 1),
        (MoveToLatest::flows([("acme", "other")]), &greeting, "Olá, Ana!", 1),
    ];
    for (move_to_latest, v2, greeted, version) in cases {
        // A conversation waits at the name question while `v2` is published, then answers.
        let mut options = RuntimeOptions::default();
        options.move_to_latest = move_to_latest.clone();
        let h = harness_with(Arc::new(MemoryStore::new()), &hello_v1(), vec![], options).await;
        let running = h.runtime.start().unwrap();
        h.say("wamid.1", "oi").await;
        h.deliveries(1).await;
        assert_eq!(h.runtime.flows().publish("acme", "hello", v2, compile(v2).unwrap()).await.unwrap(), 2);
        h.say("wamid.2", "Ana").await;
        assert_eq!(h.deliveries(3).await, ["Qual é o seu nome?", greeted, "Algo mais?"], "{move_to_latest:?}");
        h.settle().await;
        let sessions = h.store.conversation_sessions(&chat()).await.unwrap();
        assert_eq!(sessions.len(), 1, "one active session, waiting at ask2: {sessions:?}");
        assert_eq!(sessions[0].current_node.as_deref(), Some("ask2"));
        assert_eq!(sessions[0].flow_version, version, "the version the turn's commit recorded: {move_to_latest:?}");
        running.shutdown().await;
    }
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
    let h = harness(&hello_v1(), vec![]).await;
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
