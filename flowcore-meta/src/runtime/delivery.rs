//! The runtime's replies through the Cloud API.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use flowcore::{Message, Timestamp};
use flowcore_store::runtime::{Clock, Delivery, DeliveryOutcome, Reply, SystemClock};

use crate::outgoing::{Recipient, TEXT_BODY_MAX};
use crate::{split_text, to_outgoing, ApiError, MetaClient, NumberPacer, RetryAdvice, RetryPolicy, Transport};

/// Sends replies through the Graph API: one [`MetaClient`] per business number (each with
/// its own access token), a [`NumberPacer`] per number so a burst never exceeds the number's
/// throughput, and [`outcome_of`] to classify each failure.
///
/// ```
/// use flowcore_meta::runtime::WhatsAppDelivery;
/// use flowcore_meta::{RecordingTransport, RetryPolicy};
///
/// let delivery = WhatsAppDelivery::new(RecordingTransport::default(), RetryPolicy::default())
///     .number("106000000000001", "token", 80);
/// # let _ = delivery;
/// ```
pub struct WhatsAppDelivery<T> {
    numbers: HashMap<String, Number<T>>,
    transport: T,
    policy: RetryPolicy,
    base_url: Option<String>,
    clock: Arc<dyn Clock>,
}

struct Number<T> {
    client: MetaClient<T>,
    pacer: Mutex<NumberPacer>,
}

impl<T: Transport + Clone + 'static> WhatsAppDelivery<T> {
    /// A delivery over `transport` that knows no number yet; failures are classified with
    /// `policy`.
    pub fn new(transport: T, policy: RetryPolicy) -> Self {
        WhatsAppDelivery { numbers: HashMap::new(), transport, policy, base_url: None, clock: Arc::new(SystemClock) }
    }

    /// Sends through this Graph API base, version included (`https://graph.facebook.com/v21.0`):
    /// numbers added after this call use it.
    pub fn base_url(mut self, base_url: impl Into<String>) -> Self {
        self.base_url = Some(base_url.into());
        self
    }

    /// Reads the time for pacing from `clock` (the runtime's, in tests).
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Sends the replies of `phone_number_id` with `access_token`, at most
    /// `messages_per_second` (Meta's default throughput is 80; upgraded numbers take up to
    /// 1,000).
    pub fn number(
        mut self,
        phone_number_id: impl Into<String>,
        access_token: impl Into<String>,
        messages_per_second: u32,
    ) -> Self {
        let mut client = MetaClient::new(self.transport.clone(), access_token).with_timeout(Duration::from_secs(15));
        if let Some(base) = &self.base_url {
            // The base carries the version (".../v21.0").
            client = client.with_base_url(base.clone()).with_api_version("");
        }
        self.numbers.insert(
            phone_number_id.into(),
            Number { client, pacer: Mutex::new(NumberPacer::new(messages_per_second)) },
        );
        self
    }

    /// Reserves the number's next `parts` slots, unless the last is later than half of
    /// what is left of the claim: then nothing is sent and the reply is handed back for
    /// later, so a long queue on one number never outlives its claims (another sender would
    /// send them again) and no part goes out without the others.
    fn reserve(&self, number: &Number<T>, reply: &Reply<'_>, parts: usize) -> Result<Vec<Timestamp>, DeliveryOutcome> {
        let now = self.clock.now();
        let slots: Vec<Timestamp> = {
            let mut pacer = number.pacer.lock().unwrap_or_else(|p| p.into_inner());
            (0..parts).map(|_| pacer.reserve(now)).collect()
        };
        let wait = slots.last().map_or(0, |last| last.millis_since(now));
        if wait > 0 && reply.lease_until.is_some_and(|until| wait > until.millis_since(now) / 2) {
            let after = Duration::from_millis(u64::try_from(wait).unwrap_or(u64::MAX));
            return Err(DeliveryOutcome::Retry {
                reason: "paced: the number's throughput is taken".to_owned(),
                after: Some(after),
            });
        }
        Ok(slots)
    }

    async fn wait_until(&self, slot: Timestamp) {
        let wait = slot.millis_since(self.clock.now());
        if wait > 0 {
            tokio::time::sleep(Duration::from_millis(u64::try_from(wait).unwrap_or(0))).await;
        }
    }
}

#[async_trait]
impl<T: Transport + Clone + 'static> Delivery for WhatsAppDelivery<T> {
    async fn deliver(&self, reply: &Reply<'_>) -> DeliveryOutcome {
        let number_id = &reply.conversation.business_number_id;
        let Some(number) = self.numbers.get(number_id) else {
            return DeliveryOutcome::Failed(format!("no access token for business number {number_id}"));
        };
        let to = match Recipient::parse(&reply.conversation.contact_id) {
            Ok(to) => to,
            Err(e) => return DeliveryOutcome::Failed(format!("invalid recipient: {e}")),
        };
        let parts = match to_outgoing(&to, reply.message) {
            Ok(parts) => parts,
            Err(e) => return DeliveryOutcome::Failed(format!("message cannot be sent to WhatsApp: {e}")),
        };
        let slots = match self.reserve(number, reply, parts.len()) {
            Ok(slots) => slots,
            Err(later) => return later,
        };
        let mut last = None;
        for (part, slot) in parts.into_iter().zip(slots) {
            // Echoed back in status webhooks: lets an operator reconcile a send that may have
            // gone out (a timeout or a 5xx) with the outbox row.
            let part = match part.callback_data(format!("outbox:{}", reply.outbox_id)) {
                Ok(p) => p,
                Err(e) => return DeliveryOutcome::Failed(format!("message cannot be sent to WhatsApp: {e}")),
            };
            self.wait_until(slot).await;
            match number.client.send(number_id, &part).await {
                Ok(receipt) => last = Some(receipt.wamid),
                Err(error) => {
                    if error.is_throughput_limit() {
                        number.pacer.lock().unwrap_or_else(|p| p.into_inner()).on_throttled(self.clock.now());
                    }
                    return outcome_of(&self.policy, &error, reply.attempt);
                }
            }
        }
        DeliveryOutcome::Sent(last.unwrap_or_default())
    }

    fn split(&self, message: Message) -> Vec<Message> {
        split_message(message)
    }
}

/// The messages WhatsApp takes for `message`: a text longer than a text message may be is
/// split (at whitespace where it can), each part its own outbox row, so a retry never sends
/// a part that already went out. A text with nothing to send stays whole, for the delivery
/// to fail with the reason.
///
/// ```
/// use flowcore::{Message, Timestamp};
/// let long = Message::Text { text: "palavra ".repeat(1_200) };
/// assert_eq!(flowcore_meta::runtime::split_message(long).len(), 3);
/// ```
pub fn split_message(message: Message) -> Vec<Message> {
    let parts = match &message {
        Message::Text { text } if text.chars().count() > TEXT_BODY_MAX => split_text(text, TEXT_BODY_MAX),
        _ => Vec::new(),
    };
    if parts.is_empty() {
        return vec![message];
    }
    parts.into_iter().map(|part| Message::Text { text: part.to_owned() }).collect()
}

/// What one failed send means for its outbox row, from the retry table (META-FACTS §5):
/// throttling and maintenance are retried after Meta's wait; a failure that may have
/// delivered the message (5xx, timeout, 131000) is retried a bounded number of times, tagged
/// with `biz_opaque_callback_data` for reconciliation; everything permanent (bad request,
/// recipient, spam hold, token or account) fails the row at once.
///
/// ```
/// use flowcore_meta::runtime::outcome_of;
/// use flowcore_meta::{ApiError, RetryPolicy};
/// use flowcore_store::runtime::DeliveryOutcome;
/// let http500 = ApiError::Http { status: 500, retry_after: None, body_start: String::new() };
/// assert!(matches!(outcome_of(&RetryPolicy::default(), &http500, 1), DeliveryOutcome::Retry { .. }));
/// ```
pub fn outcome_of(policy: &RetryPolicy, error: &ApiError, attempts: i64) -> DeliveryOutcome {
    let attempt = u32::try_from(attempts.saturating_sub(1).max(0)).unwrap_or(u32::MAX);
    let reason = error.to_string();
    match policy.advise(error, attempt, false) {
        RetryAdvice::RetryAfter { after, .. } => DeliveryOutcome::Retry { reason, after: Some(after) },
        RetryAdvice::Reconcile => DeliveryOutcome::Retry {
            reason: format!("{reason} (may have been sent; retrying with callback data outbox:<id>)"),
            after: Some(policy.backoff(attempt)),
        },
        RetryAdvice::Pause { scope, hold } => DeliveryOutcome::Failed(format!(
            "{reason}: Meta requires a pause ({scope:?}, {hold:?}); an operator must act"
        )),
        _ => DeliveryOutcome::Failed(reason),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{GraphError, RecordingTransport};

    fn graph(code: i64) -> ApiError {
        let body = format!(r#"{{"error":{{"code":{code},"message":"m"}}}}"#);
        ApiError::Graph {
            status: 400,
            error: Box::new(GraphError::from_body(body.as_bytes()).unwrap()),
            retry_after: None,
        }
    }

    #[test]
    fn outcomes_follow_the_retry_table() {
        let policy = RetryPolicy::default();
        assert!(matches!(outcome_of(&policy, &graph(130429), 1), DeliveryOutcome::Retry { .. }));
        let http500 = ApiError::Http { status: 500, retry_after: None, body_start: String::new() };
        assert!(matches!(outcome_of(&policy, &http500, 1), DeliveryOutcome::Retry { .. }), "5xx: bounded retry");
        for permanent in [131026, 131048, 190, 100, 424242] {
            assert!(matches!(outcome_of(&policy, &graph(permanent), 1), DeliveryOutcome::Failed(_)), "{permanent}");
        }
        match outcome_of(&policy, &graph(131056), 3) {
            DeliveryOutcome::Retry { after, .. } => assert_eq!(after, Some(Duration::from_secs(16))),
            other => panic!("{other:?}"),
        }
    }

    fn text(text: &str) -> Message {
        Message::Text { text: text.to_owned() }
    }

    #[test]
    fn only_a_text_longer_than_whatsapp_takes_is_split() {
        let delivery = WhatsAppDelivery::new(RecordingTransport::default(), RetryPolicy::default());
        assert_eq!(delivery.split(text("oi")), [text("oi")]);
        let long = "palavra ".repeat(1_200);
        let parts = delivery.split(text(&long));
        assert_eq!(parts.len(), 3);
        let texts: Vec<&str> = parts
            .iter()
            .map(|p| match p {
                Message::Text { text } => text.as_str(),
                other => panic!("a text part, not {other:?}"),
            })
            .collect();
        assert!(texts.iter().all(|t| t.chars().count() <= TEXT_BODY_MAX));
        assert_eq!(texts.join(" "), long.trim_end());
        // Nothing to send: left whole for the delivery to refuse with its reason.
        let blank = " ".repeat(TEXT_BODY_MAX + 1);
        assert_eq!(delivery.split(text(&blank)), [text(&blank)]);
    }
}
