//! WhatsAppDelivery: paced per number, on a virtual clock (tokio's time is paused).

use std::sync::Arc;
use std::time::Duration;

use flowcore::{Message, Timestamp};
use flowcore_meta::runtime::WhatsAppDelivery;
use flowcore_meta::{RecordingTransport, RetryPolicy};
use flowcore_store::runtime::{Clock, Delivery, DeliveryOutcome, Reply, VirtualClock};
use flowcore_store::ConversationKey;

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
