//! The durable pipeline as a library: inbound message → inbox → worker → engine → effects →
//! commit → outbox → sender, with wake-ups, the janitor, the handoff silence and graceful
//! shutdown (feature `runtime`).
//!
//! It lives in `flowcore-store` because everything it guarantees is a property of the
//! store's unit of work: the engine stays pure, and the channel adapter (`flowcore-meta`,
//! feature `runtime`) plugs in from the other side, so the dependency arrows stay one way.
//!
//! # What the host passes in
//!
//! | part | what | default |
//! |---|---|---|
//! | [`Store`] | where everything durable lives | — |
//! | [`Delivery`] | sends a reply and classifies the result | — (`flowcore_meta::runtime::WhatsAppDelivery` for WhatsApp) |
//! | [`FlowChooser`] | the flow of a conversation without an active session | — ([`OneFlow`] for one flow) |
//! | [`EffectHandler`] | performs `api_call`, `ai_prompt`, … | [`NoEffects`]: each fails cleanly |
//! | [`Clock`] | every time the runtime reads | [`SystemClock`]; [`VirtualClock`] in tests |
//! | [`RuntimeOptions`] | workers, leases, retries, rate limit, TTLs, [`MoveToLatest`] | [`RuntimeOptions::default`] |
//!
//! # Driving it
//!
//! [`Runtime::builder`] → [`RuntimeBuilder::build`] (it registers the organizations), install
//! the flows ([`Runtime::flows`]), then [`Runtime::start`] the workers, the sender and the
//! janitor on the current tokio runtime. Feed each inbound message to [`Runtime::accept`] and
//! answer the channel once it returned `Ok`: the message is durable then. Delivery statuses
//! go to [`Runtime::accept_status`]. [`RunningRuntime::shutdown`] stops claiming and lets
//! claimed work finish; unclaimed events wait in the inbox for the next start.
//!
//! # The guarantees
//!
//! - **Nothing accepted is lost.** A turn's session state, log rows, replies, wake-ups and
//!   the inbox row's completion are one [`Commit`](crate::Commit), written once and guarded
//!   by the session's version. A crash before it leaves the event claimed; its lease lapses
//!   and another worker runs it again.
//! - **No reply goes out twice** that the channel's answer recorded: a reply is marked sent
//!   with the channel's id, and retried only as its [`DeliveryOutcome`] says.
//! - **Handoff.** While a session is handed off to a human, inbound messages are logged and
//!   the bot stays silent.
//! - **Flow versions.** A session keeps the flow version it started on, unless
//!   [`MoveToLatest`] names its flow.
//!
//! # Ordering
//!
//! A conversation's events are handled one at a time, in `(due_at, id)` order, and **a
//! turn's replies are handed to the sender before the conversation's next turn runs**, the
//! same way on every backend:
//!
//! - the commit that finishes a turn's inbox row writes its replies, so no next turn can
//!   see the row done without them;
//! - the store does not hand out a conversation's next event while one of its replies is
//!   claimed by a sender ([`Inbox::claim_inbox`](crate::Inbox::claim_inbox));
//! - a worker that got the next event with its commit
//!   ([`Commit::claim_next_until`](crate::Commit::claim_next_until)) waits for the sender to
//!   finish the replies it claimed with that commit, for at most a quarter of the lease (a
//!   reply stuck in a slow send is then left to the outbox);
//! - the sender sends a conversation's replies one at a time, in order: once one is not
//!   sent, the rest of its turn go back to the outbox, behind it.
//!
//! # Example
//!
//! ```
//! use std::sync::Arc;
//! use flowcore_store::runtime::*;
//! use flowcore_store::{ConversationKey, MemoryStore, Store};
//!
//! struct Print;
//! #[async_trait::async_trait]
//! impl Delivery for Print {
//!     async fn deliver(&self, reply: &Reply<'_>) -> DeliveryOutcome {
//!         println!("{:?}", reply.message);
//!         DeliveryOutcome::Sent(format!("sent-{}", reply.outbox_id))
//!     }
//! }
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
//! let runtime = Runtime::builder(store.clone(), Arc::new(Print), Arc::new(OneFlow::new("hello")))
//!     .organization("acme")
//!     .build()
//!     .await?;
//! let flow = r#"{"id": "hello", "name": "Hello", "nodes": [{"id": "s", "type": "start"},
//!     {"id": "m", "type": "message", "data": {"content": "Olá!"}}],
//!     "edges": [{"id": "e", "source": "s", "target": "m"}]}"#;
//! runtime.flows().install("acme", "hello", flow, compile(flow).unwrap()).await?;
//! let running = runtime.start().expect("started once");
//! let chat = ConversationKey::new("acme", "15550001", "5511999990000");
//! let now = runtime.clock().now();
//! runtime.accept(chat, &InboundPayload::text("wamid.1", "oi", now)).await?;
//! while Stats::get(&runtime.stats().sent) == 0 {
//!     tokio::time::sleep(std::time::Duration::from_millis(5)).await;
//! }
//! running.shutdown().await;
//! store.close().await;
//! # Ok::<(), flowcore_store::StoreError>(())
//! # }).unwrap();
//! ```

mod flows;
mod host;
mod sender;
mod worker;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flowcore::Timestamp;
use tokio::sync::{mpsc, watch, Notify};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

pub use flows::{compile, declared_id, FlowLookupError, FlowProblems, Flows, LATEST_TTL};
pub use host::{
    input_text, Clock, Delivery, DeliveryOutcome, EffectContext, EffectHandler, FlowChoice, FlowChooser,
    InboundPayload, NoEffects, OneFlow, OutboxPayload, Reply, SystemClock, VirtualClock, WakePayload,
};

use crate::{
    ConversationKey, DeliveryStatus, InboxEvent, InboxInsert, InboxKind, NewInboxEvent, PurgePolicy, Store, StoreError,
    StoreResult,
};
use sender::HandedOver;

/// How the runtime works; every field has a default.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct RuntimeOptions {
    /// Turns in flight at once (each on its own conversation). Turns wait on the store and
    /// on effects, so one core keeps many in flight.
    pub workers: usize,
    /// How often idle workers and the sender look for work they were not woken for
    /// (retries falling due, wake-ups, other instances' rows).
    pub poll_interval: Duration,
    /// How long a claimed inbox or outbox row stays invisible to other workers.
    pub lease: Duration,
    /// How often the janitor purges expired sessions and old rows.
    pub purge_interval: Duration,
    /// The engine's step budget per turn.
    pub max_flow_iterations: u32,
    /// Idle sessions expire after this.
    pub session_ttl: Duration,
    /// Delivery attempts before a reply is failed for good.
    pub send_max_attempts: u32,
    /// The first retry's wait when the delivery names none; it doubles each attempt, up to a
    /// minute.
    pub send_backoff: Duration,
    /// The per-contact inbound limit.
    pub rate_limit: RateLimit,
    /// How long [`RunningRuntime::shutdown`] waits for claimed work.
    pub shutdown_grace: Duration,
    /// Which flows' running sessions move to the flow's newest version (see
    /// [`MoveToLatest`]); by default every session keeps the version it started on.
    pub move_to_latest: MoveToLatest,
}

impl Default for RuntimeOptions {
    fn default() -> Self {
        RuntimeOptions {
            workers: 32,
            poll_interval: Duration::from_millis(200),
            lease: Duration::from_secs(30),
            purge_interval: Duration::from_secs(300),
            max_flow_iterations: 100,
            session_ttl: Duration::from_secs(24 * 3600),
            send_max_attempts: 8,
            send_backoff: Duration::from_secs(1),
            rate_limit: RateLimit::new(5, Duration::from_secs(60)),
            shutdown_grace: Duration::from_secs(20),
            move_to_latest: MoveToLatest::None,
        }
    }
}

impl RuntimeOptions {
    /// The wait before retrying a reply after its `attempt`-th failed attempt, when the
    /// delivery named none.
    ///
    /// ```
    /// use std::time::Duration;
    /// let options = flowcore_store::runtime::RuntimeOptions::default();
    /// assert_eq!(options.backoff(1), Duration::from_secs(1));
    /// assert_eq!(options.backoff(3), Duration::from_secs(4));
    /// assert_eq!(options.backoff(30), Duration::from_secs(60));
    /// ```
    pub fn backoff(&self, attempt: i64) -> Duration {
        let doublings = u32::try_from(attempt.saturating_sub(1).clamp(0, 16)).unwrap_or(16);
        self.send_backoff.saturating_mul(1 << doublings).min(Duration::from_secs(60))
    }
}

/// A per-contact limit on inbound messages per window.
///
/// A message runs through the flow only if fewer than `limit` of the contact's earlier
/// messages were logged in the window before it was received (a backlog handled late is
/// judged as the contact sent it); one over the limit is logged, marked
/// [`RATE_LIMITED`](crate::RATE_LIMITED) so it does not count itself, and not run. The count
/// comes from the store's log ([`inbound_counts`](crate::MessageLog::inbound_counts)): a
/// conversation's turns commit one after the other, so every instance sees the same count.
///
/// ```
/// use std::time::Duration;
/// use flowcore::Timestamp;
/// use flowcore_store::runtime::RateLimit;
/// let limit = RateLimit::new(5, Duration::from_secs(60));
/// assert!(limit.allows(4) && !limit.allows(5));
/// let received = Timestamp::from_unix_seconds(1_700_000_100);
/// assert_eq!(limit.window_start(received), Timestamp::from_unix_seconds(1_700_000_040));
/// assert!(RateLimit::new(0, Duration::from_secs(60)).allows(u64::MAX), "0 disables it");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimit {
    limit: u32,
    window: Duration,
}

impl RateLimit {
    /// At most `limit` messages per `window` per contact; `limit == 0` disables the limit.
    pub fn new(limit: u32, window: Duration) -> Self {
        RateLimit { limit, window }
    }

    /// The start of the window a message received at `received_at` is judged in.
    pub fn window_start(&self, received_at: Timestamp) -> Timestamp {
        let window = i64::try_from(self.window.as_millis()).unwrap_or(i64::MAX);
        Timestamp::from_unix_millis(received_at.as_unix_millis().saturating_sub(window))
    }

    /// The window `event` is judged in, when the limit judges it (a message, the limit on).
    fn window_of(&self, event: &InboxEvent) -> Option<(ConversationKey, Timestamp)> {
        let judged = self.limit > 0 && event.kind == InboxKind::Message;
        judged.then(|| (event.conversation.clone(), self.window_start(event.received_at)))
    }

    /// Whether a message may run, given how many of the contact's messages already counted
    /// in its window.
    pub fn allows(&self, counted: u64) -> bool {
        self.limit == 0 || counted < u64::from(self.limit)
    }
}

/// Which running sessions move to their flow's newest version.
///
/// A session keeps the flow version it started on, so publishing a flow never changes a
/// conversation under a contact's feet. For the flows this names, a session whose flow has
/// a newer version moves to it at its next turn, when its state fits there
/// ([`Session::check_flow`](flowcore::Session::check_flow): the node it waits at exists
/// and waits the same way); the turn's commit records the version it now runs on. A session
/// whose node is gone stays on its version until it ends.
///
/// ```
/// use flowcore_store::runtime::MoveToLatest;
/// let some = MoveToLatest::flows([("acme", "lead")]);
/// assert!(some.applies("acme", "lead"));
/// assert!(!some.applies("globex", "lead"));
/// assert!(MoveToLatest::All.applies("globex", "lead"));
/// assert!(!MoveToLatest::default().applies("acme", "lead"));
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum MoveToLatest {
    /// Every session keeps the version it started on.
    #[default]
    None,
    /// Every flow's sessions move.
    All,
    /// The sessions of these (organization, flow id) pairs move.
    Flows(std::collections::BTreeSet<(String, String)>),
}

impl MoveToLatest {
    /// The sessions of these (organization, flow id) pairs move.
    pub fn flows<O: Into<String>, F: Into<String>>(flows: impl IntoIterator<Item = (O, F)>) -> MoveToLatest {
        MoveToLatest::Flows(flows.into_iter().map(|(o, f)| (o.into(), f.into())).collect())
    }

    /// Whether the sessions of `org`'s flow `flow_id` move to its newest version.
    pub fn applies(&self, org: &str, flow_id: &str) -> bool {
        match self {
            MoveToLatest::None => false,
            MoveToLatest::All => true,
            MoveToLatest::Flows(flows) => flows.contains(&(org.to_owned(), flow_id.to_owned())),
        }
    }
}

/// What one runtime (this process only) did since it was built; read with [`Stats::get`].
#[derive(Default, Debug)]
pub struct Stats {
    /// Inbound messages written to the inbox.
    pub messages_accepted: AtomicU64,
    /// Duplicate deliveries ignored.
    pub duplicates: AtomicU64,
    /// Delivery statuses recorded.
    pub statuses: AtomicU64,
    /// Messages logged but not run because of the rate limit.
    pub rate_limited: AtomicU64,
    /// Turns committed.
    pub turns: AtomicU64,
    /// Replies accepted by the delivery.
    pub sent: AtomicU64,
    /// Replies a turn claimed as it committed them, handed to the sender without a claim.
    pub handed_over: AtomicU64,
    /// Send attempts that will be retried.
    pub send_retries: AtomicU64,
    /// Replies failed for good.
    pub send_failed: AtomicU64,
}

impl Stats {
    /// Reads a counter.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

/// Builds a [`Runtime`].
pub struct RuntimeBuilder(Shared);

impl RuntimeBuilder {
    /// Performs effects with `effects` (default [`NoEffects`]).
    pub fn effects(mut self, effects: Arc<dyn EffectHandler>) -> Self {
        self.0.effects = effects;
        self
    }

    /// Reads the time from `clock` (default [`SystemClock`]).
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.0.flows = Flows::new(self.0.store.clone(), clock.clone());
        self.0.clock = clock;
        self
    }

    /// Works with `options`.
    pub fn options(mut self, options: RuntimeOptions) -> Self {
        self.0.options = options;
        self
    }

    /// Registers an organization in the store on [`build`](RuntimeBuilder::build); the
    /// janitor purges its expired sessions.
    pub fn organization(mut self, org_id: impl Into<String>) -> Self {
        self.0.organizations.push(org_id.into());
        self
    }

    /// Registers the organizations and builds the runtime (nothing runs until
    /// [`Runtime::start`]).
    pub async fn build(self) -> StoreResult<Runtime> {
        for org in &self.0.organizations {
            self.0.store.register_organization(org).await?;
        }
        Ok(Runtime(Arc::new(self.0)))
    }
}

/// The durable pipeline; cheap to clone (every clone is the same runtime).
#[derive(Clone)]
pub struct Runtime(Arc<Shared>);

/// What the runtime's tasks share.
struct Shared {
    store: Arc<dyn Store>,
    delivery: Arc<dyn Delivery>,
    chooser: Arc<dyn FlowChooser>,
    effects: Arc<dyn EffectHandler>,
    clock: Arc<dyn Clock>,
    options: RuntimeOptions,
    organizations: Vec<String>,
    flows: Flows,
    /// Wakes the workers after an accepted message.
    inbox_ready: Notify,
    /// Wakes the sender after replies were queued for its claims.
    outbox_ready: Notify,
    /// Replies a turn claimed as it committed them, for the sender to send in order.
    claimed_replies: mpsc::UnboundedSender<HandedOver>,
    /// The sender's end of `claimed_replies`, until started.
    handed_over: Mutex<Option<mpsc::UnboundedReceiver<HandedOver>>>,
    stats: Stats,
}

/// `at` plus `wait`, saturating.
fn later(at: Timestamp, wait: Duration) -> Timestamp {
    at.saturating_add_millis(u64::try_from(wait.as_millis()).unwrap_or(u64::MAX))
}

/// [`Runtime::start`] was called before on this runtime.
#[derive(Debug, thiserror::Error)]
#[error("the runtime was started already")]
pub struct AlreadyStarted;

impl Runtime {
    /// A builder over the three parts every host provides.
    pub fn builder(
        store: Arc<dyn Store>,
        delivery: Arc<dyn Delivery>,
        chooser: Arc<dyn FlowChooser>,
    ) -> RuntimeBuilder {
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        let (claimed_replies, handed_over) = mpsc::unbounded_channel();
        RuntimeBuilder(Shared {
            flows: Flows::new(store.clone(), clock.clone()),
            store,
            delivery,
            chooser,
            effects: Arc::new(NoEffects),
            clock,
            options: RuntimeOptions::default(),
            organizations: Vec::new(),
            inbox_ready: Notify::new(),
            outbox_ready: Notify::new(),
            claimed_replies,
            handed_over: Mutex::new(Some(handed_over)),
            stats: Stats::default(),
        })
    }

    /// Spawns the workers, the sender and the janitor on the current tokio runtime.
    pub fn start(&self) -> Result<RunningRuntime, AlreadyStarted> {
        let handed_over = self.0.handed_over.lock().unwrap_or_else(|p| p.into_inner()).take().ok_or(AlreadyStarted)?;
        let (shutdown, stop) = watch::channel(false);
        let tasks = vec![
            tokio::spawn(worker::run(self.0.clone(), stop.clone())),
            tokio::spawn(sender::run(self.0.clone(), handed_over, stop.clone())),
            tokio::spawn(janitor(self.0.clone(), stop)),
        ];
        Ok(RunningRuntime { shutdown, tasks, grace: self.0.options.shutdown_grace })
    }

    /// Writes one inbound message to the inbox, keyed by its `wamid` (a repeat is reported
    /// as a duplicate and written nowhere), and wakes a worker. Answer the channel (Meta's
    /// `200`) only once every message of a delivery returned `Ok`: from then on nothing is
    /// lost, whatever crashes.
    pub async fn accept(&self, conversation: ConversationKey, message: &InboundPayload) -> StoreResult<InboxInsert> {
        let payload = serde_json::to_value(message).map_err(|e| StoreError::InvalidInput(e.to_string()))?;
        let row = NewInboxEvent::message(conversation, message.wamid.clone(), payload, self.0.clock.now());
        let inserted = self.0.store.insert_inbox(row).await?;
        if inserted.is_duplicate() {
            Stats::add(&self.0.stats.duplicates, 1);
            debug!(wamid = %message.wamid, "duplicate delivery ignored");
        } else {
            Stats::add(&self.0.stats.messages_accepted, 1);
            self.0.inbox_ready.notify_one();
        }
        Ok(inserted)
    }

    /// Merges a delivery status the channel reported for one of the organization's replies
    /// (a lower status never replaces a higher one); false when no reply has that id.
    pub async fn accept_status(
        &self,
        org_id: &str,
        message_id: &str,
        status: DeliveryStatus,
        at: Timestamp,
    ) -> StoreResult<bool> {
        let known = self.0.store.record_delivery(org_id, message_id, status, at).await?;
        Stats::add(&self.0.stats.statuses, u64::from(known));
        Ok(known)
    }

    /// The compiled flows: install and publish flows here so the workers find them.
    pub fn flows(&self) -> &Flows {
        &self.0.flows
    }

    /// The clock every part of the runtime reads.
    pub fn clock(&self) -> &dyn Clock {
        self.0.clock.as_ref()
    }

    /// This runtime's counters.
    pub fn stats(&self) -> &Stats {
        &self.0.stats
    }

    /// Wakes the sender: call it after writing replies to the outbox yourself (an operator's
    /// message, say), so they go out without waiting for the next poll.
    pub fn notify_outbox(&self) {
        self.0.outbox_ready.notify_one();
    }
}

/// A started runtime; [`shutdown`](RunningRuntime::shutdown) it to stop.
pub struct RunningRuntime {
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    grace: Duration,
}

impl RunningRuntime {
    /// Graceful shutdown: no new work is claimed; claimed turns and sends finish, for up to
    /// the grace period, after which they are aborted (their leases lapse and another
    /// worker takes them). The store stays open.
    pub async fn shutdown(self) {
        self.signal_shutdown();
        let deadline = tokio::time::Instant::now() + self.grace;
        for task in self.tasks {
            let abort = task.abort_handle();
            if tokio::time::timeout_at(deadline, task).await.is_err() {
                warn!("a runtime task did not finish within the shutdown grace period; aborted");
                abort.abort();
            }
        }
    }

    /// Starts a graceful shutdown without waiting for it.
    pub fn signal_shutdown(&self) {
        let _ = self.shutdown.send(true);
    }
}

/// Housekeeping: the leases of a crashed process's claims return their rows to pending
/// (often, so its work resumes soon), expired sessions and old finished rows are purged
/// (every `purge_interval`).
async fn janitor(rt: Arc<Shared>, mut shutdown: watch::Receiver<bool>) {
    let policy = PurgePolicy { session_ttl: rt.options.session_ttl, ..PurgePolicy::default() };
    let reclaim_every = rt.options.lease.clamp(Duration::from_millis(100), Duration::from_secs(5));
    let mut last_purge: Option<Timestamp> = None;
    loop {
        let now = rt.clock.now();
        if let Err(e) = rt.store.reclaim_inbox(None, now).await {
            warn!(error = %e, "reclaiming inbox leases failed");
        }
        if let Err(e) = rt.store.reclaim_outbox(None, now).await {
            warn!(error = %e, "reclaiming outbox leases failed");
        }
        if last_purge.is_none_or(|at| later(at, rt.options.purge_interval) <= now) {
            last_purge = Some(now);
            for org in &rt.organizations {
                match rt.store.purge(org, now, policy).await {
                    Ok(report) if report.expired_sessions > 0 => {
                        info!(org = %org, expired = report.expired_sessions, "expired sessions purged")
                    }
                    Ok(_) => {}
                    Err(e) => warn!(org = %org, error = %e, "purge failed"),
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(reclaim_every) => {}
            _ = shutdown.wait_for(|stop| *stop) => break,
        }
    }
}

/// A contact id for logs: enough to correlate lines, not enough to dial the number.
///
/// ```
/// use flowcore_store::runtime::redact_contact;
/// assert_eq!(redact_contact("12025550101"), "***0101");
/// assert_eq!(redact_contact("12"), "***");
/// ```
pub fn redact_contact(contact: &str) -> String {
    let chars: Vec<char> = contact.chars().collect();
    match chars.len() {
        0..=4 => "***".to_owned(),
        n => format!("***{}", chars[n - 4..].iter().collect::<String>()),
    }
}
