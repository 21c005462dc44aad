//! What the host plugs in — how replies leave ([`Delivery`]), which flow a new conversation
//! runs ([`FlowChooser`]), how effects are performed ([`EffectHandler`]), where the time
//! comes from ([`Clock`]) — and what the inbox and outbox rows carry.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use flowcore::{EffectKind, EffectOutcome, Input, Message, Timestamp};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::ConversationKey;

/// One reply the sender hands to a [`Delivery`].
#[derive(Clone, Copy, Debug)]
pub struct Reply<'a> {
    /// The outbox row (stable across attempts: a delivery may tag the send with it, so a
    /// send that may have gone out can be reconciled).
    pub outbox_id: i64,
    /// The conversation: the reply goes to its contact from its business number.
    pub conversation: &'a ConversationKey,
    /// What to send.
    pub message: &'a Message,
    /// This attempt's number, 1 for the first.
    pub attempt: i64,
    /// When the sender's claim on the reply ends: after it another sender may take the
    /// reply, so a delivery that would wait (pacing) until after it should answer
    /// [`DeliveryOutcome::Retry`] instead.
    pub lease_until: Option<Timestamp>,
}

/// How one delivery attempt ended; the sender records it in the outbox.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeliveryOutcome {
    /// Accepted by the channel, with its message id (what delivery statuses refer to).
    Sent(String),
    /// Not delivered this time; try again after `after` (the channel's own wait, when it
    /// gave one, else the runtime's backoff), up to the runtime's attempt limit.
    Retry {
        /// Why, for the outbox row and the log.
        reason: String,
        /// The channel's wait, when it named one.
        after: Option<Duration>,
    },
    /// Never retry: the reply is failed for good.
    Failed(String),
}

/// Delivers replies and classifies the result.
///
/// `flowcore-meta` implements it for the WhatsApp Cloud API (feature `runtime`); a test or a
/// demo can record or log replies instead.
///
/// ```
/// use flowcore_store::runtime::{Delivery, DeliveryOutcome, Reply};
///
/// struct Log;
///
/// #[async_trait::async_trait]
/// impl Delivery for Log {
///     async fn deliver(&self, reply: &Reply<'_>) -> DeliveryOutcome {
///         println!("to {}: {:?}", reply.conversation.contact_id, reply.message);
///         DeliveryOutcome::Sent(format!("log-{}", reply.outbox_id))
///     }
/// }
/// ```
#[async_trait]
pub trait Delivery: Send + Sync + 'static {
    /// Sends one reply. Called for one conversation's replies one at a time, in order.
    async fn deliver(&self, reply: &Reply<'_>) -> DeliveryOutcome;

    /// The messages the channel takes for `message`, each written as its own outbox row so
    /// that each is sent, retried and recorded on its own (a long text split in parts, say).
    /// By default the message as it is.
    fn split(&self, message: Message) -> Vec<Message> {
        vec![message]
    }
}

/// What a new conversation runs.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum FlowChoice {
    /// Start the latest version of this flow.
    Start {
        /// The flow id (published in the store's flows).
        flow_id: String,
        /// Variables the session starts with, besides the runtime's own (`phone_number`,
        /// `contact_name`).
        variables: Map<String, Value>,
        /// The group analytics count the session in (an A/B test's variant), if any.
        cohort: Option<String>,
    },
    /// No flow answers: send this reply and start no session.
    Reply(Message),
    /// Drop the message (it is logged nowhere).
    Ignore,
}

impl FlowChoice {
    /// Start `flow_id` with no extra variables and no cohort.
    pub fn start(flow_id: impl Into<String>) -> FlowChoice {
        FlowChoice::Start { flow_id: flow_id.into(), variables: Map::new(), cohort: None }
    }
}

/// Chooses the flow of a conversation that has no active session.
#[async_trait]
pub trait FlowChooser: Send + Sync + 'static {
    /// The flow for `conversation`, whose first message is `first`.
    async fn choose(&self, conversation: &ConversationKey, first: &InboundPayload) -> FlowChoice;
}

/// One flow for every conversation.
///
/// ```
/// let chooser = flowcore_store::runtime::OneFlow::new("lead");
/// # let _ = chooser;
/// ```
#[derive(Clone, Debug)]
pub struct OneFlow(String);

impl OneFlow {
    /// Every new conversation starts `flow_id`.
    pub fn new(flow_id: impl Into<String>) -> OneFlow {
        OneFlow(flow_id.into())
    }
}

#[async_trait]
impl FlowChooser for OneFlow {
    async fn choose(&self, _conversation: &ConversationKey, _first: &InboundPayload) -> FlowChoice {
        FlowChoice::start(self.0.clone())
    }
}

/// Who asked for an effect: handlers can scope their work (and their data) by tenant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EffectContext {
    /// The organization.
    pub organization: String,
    /// The flow id.
    pub flow_id: String,
    /// The conversation's contact id (`wa_id` or BSUID).
    pub contact: String,
}

/// Performs the engine's effects (`api_call`, `ai_prompt`, `database_query`, …).
///
/// Every effect ends as an [`EffectOutcome`]: a failure is a value the flow can route on (its
/// `failure` edge), never an error that stops the worker. `analytics` is recorded in the
/// message log by the runtime and never reaches the handler.
#[async_trait]
pub trait EffectHandler: Send + Sync + 'static {
    /// Performs one effect.
    async fn perform(&self, ctx: &EffectContext, kind: &EffectKind) -> EffectOutcome;
}

/// The default handler: every effect fails cleanly, naming itself, so a flow with a
/// `failure` edge takes it and one without ends its session — the contact is never left
/// waiting.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoEffects;

#[async_trait]
impl EffectHandler for NoEffects {
    async fn perform(&self, _ctx: &EffectContext, kind: &EffectKind) -> EffectOutcome {
        EffectOutcome::Failure(format!("effect {kind:?} is not supported by this host"))
    }
}

/// The time as the runtime sees it. Every timestamp the runtime writes (receive times,
/// leases, retries, wake-ups) comes from here; its waits use tokio's timer, so a test that
/// pauses tokio's time and uses [`VirtualClock`] runs hours of timeouts in microseconds.
pub trait Clock: Send + Sync + 'static {
    /// Now.
    fn now(&self) -> Timestamp;
}

/// The wall clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        let millis = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0);
        Timestamp::from_unix_millis(i64::try_from(millis).unwrap_or(i64::MAX))
    }
}

/// A clock that starts at a chosen time and moves with tokio's timer: under
/// `tokio::time::pause()` (or `#[tokio::test(start_paused = true)]`) it jumps straight to
/// the next timer the runtime waits for.
///
/// ```
/// use flowcore::Timestamp;
/// use flowcore_store::runtime::{Clock, VirtualClock};
/// # tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().unwrap().block_on(async {
/// let clock = VirtualClock::starting_at(Timestamp::from_unix_seconds(1_700_000_000));
/// tokio::time::sleep(std::time::Duration::from_secs(3600)).await; // instant: time is paused
/// assert_eq!(clock.now(), Timestamp::from_unix_seconds(1_700_003_600));
/// # });
/// ```
#[derive(Clone, Copy, Debug)]
pub struct VirtualClock {
    start: Timestamp,
    started: tokio::time::Instant,
}

impl VirtualClock {
    /// A clock that reads `start` now. Call it inside a tokio runtime.
    pub fn starting_at(start: Timestamp) -> VirtualClock {
        VirtualClock { start, started: tokio::time::Instant::now() }
    }
}

impl Clock for VirtualClock {
    fn now(&self) -> Timestamp {
        self.start.saturating_add_millis(u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX))
    }
}

/// What an inbox row of kind `message` carries: one inbound message, as the channel
/// adapter read it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InboundPayload {
    /// The engine input.
    pub input: Input,
    /// The channel's message id (Meta's `wamid`): the inbox's duplicate filter.
    pub wamid: String,
    /// When the contact sent it (the channel's clock).
    pub sent_at: Timestamp,
    /// The contact's profile name, if the channel sent it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contact_name: Option<String>,
    /// The message type as the channel named it (`text`, `interactive`, …).
    pub kind: String,
}

impl InboundPayload {
    /// A text message.
    ///
    /// ```
    /// use flowcore::Timestamp;
    /// use flowcore_store::runtime::InboundPayload;
    /// let oi = InboundPayload::text("wamid.1", "oi", Timestamp::from_unix_seconds(1_700_000_000));
    /// assert_eq!(oi.kind, "text");
    /// ```
    pub fn text(wamid: impl Into<String>, text: impl Into<String>, sent_at: Timestamp) -> InboundPayload {
        let (input, wamid, kind) = (Input::text(text.into()), wamid.into(), "text".to_owned());
        InboundPayload { input, wamid, sent_at, contact_name: None, kind }
    }
}

/// What an inbox row of kind `wake_up` carries.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WakePayload {
    /// The flow of the session to wake.
    pub flow_id: String,
    /// The wake-up time the session asked for; a session that no longer asks for it (it
    /// moved on) ignores the wake-up.
    pub wake_at: Timestamp,
}

/// What an outbox row carries.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OutboxPayload {
    /// The message, rendered.
    pub message: Message,
    /// The flow node that produced it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// Sent by an operator rather than the flow.
    #[serde(default)]
    pub manual: bool,
}

/// A readable one-line summary of an input, for the message log.
///
/// ```
/// use flowcore::Input;
/// use flowcore_store::runtime::input_text;
/// assert_eq!(input_text(&Input::text("oi")), "oi");
/// assert_eq!(input_text(&Input::Tick), "[timer]");
/// ```
pub fn input_text(input: &Input) -> String {
    match input {
        Input::Text { text } => text.clone(),
        Input::Choice { id, title } => title.clone().unwrap_or_else(|| id.clone()),
        Input::Media { kind, caption: Some(c), .. } => format!("[{}] {c}", kind.as_str()),
        Input::Media { kind, caption: None, .. } => format!("[{}]", kind.as_str()),
        Input::Location { name: Some(n), .. } => format!("[location] {n}"),
        Input::Location { latitude, longitude, .. } => format!("[location] {latitude},{longitude}"),
        Input::Contacts { .. } => "[contacts]".to_owned(),
        Input::Unsupported { kind } => format!("[{kind}]"),
        Input::EffectResult { .. } => "[effect result]".to_owned(),
        Input::Tick => "[timer]".to_owned(),
        _ => "[event]".to_owned(),
    }
}
