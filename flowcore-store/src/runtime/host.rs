//! What the host plugs into the runtime: how replies leave ([`Delivery`]), which flow a new
//! conversation runs ([`FlowChooser`]) and how effects are performed ([`EffectHandler`]).

use std::time::Duration;

use async_trait::async_trait;
use flowcore::{EffectKind, EffectOutcome, Message, Timestamp};
use serde_json::{Map, Value};

use super::payload::InboundPayload;
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
/// use flowcore_store::runtime::OneFlow;
/// let chooser = OneFlow::new("lead");
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
