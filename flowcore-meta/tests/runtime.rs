//! WhatsAppDelivery: paced per number, on a virtual clock (tokio's time is paused); and
//! accept_webhook writing a body's messages to the inbox.

use std::sync::Arc;
use std::time::Duration;

use flowcore::{Input, Message, Timestamp};
use flowcore_meta::runtime::{accept_webhook, IntakeReport, WhatsAppDelivery};
use flowcore_meta::{RecordingTransport, RetryPolicy};
use flowcore_store::runtime::{
    Clock, Delivery, DeliveryOutcome, InboundPayload, OneFlow, Reply, Runtime, VirtualClock,
};
use flowcore_store::{ClaimRequest, ConversationKey, Inbox, MemoryStore};

const NUMBER: &str = "106000000000001";

fn delivery(
    clock: VirtualClock,
    transport: RecordingTransport,
    rate: u32,
) -> Arc<WhatsAppDelivery<RecordingTransport>> {
    Arc::new(
        WhatsAppDelivery::new(transport, RetryPolicy::default()).clock(Arc::new(clock)).number(NUMBER, "token", rate),
    )
}

async fn send(
    delivery: &WhatsAppDelivery<RecordingTransport>,
    id: i64,
    lease_until: Option<Timestamp>,
) -> DeliveryOutcome {
    let conversation = ConversationKey::new("acme", NUMBER, "5511999990000");
    let message = Message::Text { text: format!("m{id}") };
    let reply = Reply { outbox_id: id, conversation: &conversation, message: &message, attempt: 1, lease_until };
    delivery.deliver(&reply).await
}

#[tokio::test(start_paused = true)]
async fn a_burst_on_one_number_goes_out_at_its_rate_in_order() {
    let clock = VirtualClock::starting_at(Timestamp::from_unix_seconds(1_780_300_800));
    let start = clock.now();
    let transport = RecordingTransport::default();
    let delivery = delivery(clock, transport.clone(), 2);
    let mut sends = Vec::new();
    for id in 1..=6 {
        let delivery = delivery.clone();
        sends.push(tokio::spawn(async move {
            let outcome = send(&delivery, id, None).await;
            (outcome, clock.now())
        }));
        // The tasks ask in this order.
        tokio::task::yield_now().await;
    }
    let mut times = Vec::new();
    for send in sends {
        let (outcome, at) = send.await.unwrap();
        assert!(matches!(outcome, DeliveryOutcome::Sent(_)), "{outcome:?}");
        times.push(at.millis_since(start));
    }
    // A burst of one second's worth (2), then one every 500 ms.
    assert_eq!(times, [0, 0, 500, 1000, 1500, 2000]);
    let bodies: Vec<String> =
        transport.requests().iter().map(|r| String::from_utf8_lossy(&r.body).into_owned()).collect();
    for (i, body) in bodies.iter().enumerate() {
        assert!(body.contains(&format!("\"m{}\"", i + 1)), "in the order asked: {body}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_wait_longer_than_the_claim_hands_the_reply_back() {
    let clock = VirtualClock::starting_at(Timestamp::from_unix_seconds(1_780_300_800));
    let transport = RecordingTransport::default();
    let delivery = delivery(clock, transport.clone(), 1);
    let lease_until = clock.now().saturating_add_millis(1_000);
    assert!(matches!(send(&delivery, 1, Some(lease_until)).await, DeliveryOutcome::Sent(_)));
    // The next slot is a second away: more than half of what is left of a one-second claim.
    match send(&delivery, 2, Some(lease_until)).await {
        DeliveryOutcome::Retry { after, .. } => assert_eq!(after, Some(Duration::from_secs(1))),
        other => panic!("{other:?}"),
    }
    assert_eq!(transport.requests().len(), 1, "nothing was sent for the reply handed back");
}

#[tokio::test(start_paused = true)]
async fn a_number_without_a_token_fails_its_replies() {
    let clock = VirtualClock::starting_at(Timestamp::from_unix_seconds(1_780_300_800));
    let delivery = WhatsAppDelivery::new(RecordingTransport::default(), RetryPolicy::default()).clock(Arc::new(clock));
    assert!(matches!(send(&delivery, 1, None).await, DeliveryOutcome::Failed(_)));
}

#[tokio::test(start_paused = true)]
async fn a_message_without_its_object_reaches_the_inbox_once_as_an_unsupported_input() {
    let clock = VirtualClock::starting_at(Timestamp::from_unix_seconds(1_780_305_000));
    let store = Arc::new(MemoryStore::new());
    let delivery = delivery(clock, RecordingTransport::default(), 80);
    let runtime = Runtime::builder(store.clone(), delivery, Arc::new(OneFlow::new("lead")))
        .clock(Arc::new(clock))
        .organization("acme")
        .build()
        .await
        .unwrap();
    let body = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/50-interactive-without-object.json"))
        .unwrap();
    let organization_of = |number: &str| (number == NUMBER).then(|| "acme".to_owned());

    // The message is written; the value-level error beside it is logged and ignored.
    let first = accept_webhook(&runtime, &body, organization_of).await.unwrap();
    assert_eq!(first, IntakeReport { inserted: 1, duplicates: 0, statuses: 0, ignored: 1 });
    // Meta delivering the body again: the message's dedup key finds it.
    let again = accept_webhook(&runtime, &body, organization_of).await.unwrap();
    assert_eq!(again, IntakeReport { inserted: 0, duplicates: 1, statuses: 0, ignored: 1 });

    let rows = store.claim_inbox(&ClaimRequest::any(clock.now(), Duration::from_secs(60), 10)).await.unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].message_id, "wamid.RkFLRS9pbi0w500");
    assert_eq!(rows[0].conversation, ConversationKey::new("acme", NUMBER, "12025550101"));
    let payload: InboundPayload = serde_json::from_value(rows[0].payload.clone()).unwrap();
    assert_eq!(payload.input, Input::Unsupported { kind: "interactive".into() });
    assert_eq!(payload.kind, "interactive");
}
