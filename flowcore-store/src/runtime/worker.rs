//! Inbox workers: claim events, run the engine, perform effects, and commit each event's
//! turn once ([`Unit::commit`]), keeping the [ordering rule](super#ordering).

use std::sync::Arc;

use flowcore::{CompiledFlow, EffectKind, FlowSet, Input, Message, Output, SessionError, Timestamp, Turn};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::{oneshot, watch, Notify, Semaphore};
use tokio::task::JoinSet;
use tracing::{debug, error, info, warn};

use super::flows::FlowLookupError;
use super::host::{input_text, EffectContext, FlowChoice, InboundPayload, OutboxPayload, WakePayload};
use super::sender::HandedOver;
use super::{later, redact_contact, Shared, Stats};
use crate::{
    ClaimRequest, Commit, Content, ConversationKey, Direction, InboxEvent, InboxKind, NewInboxEvent, NewLogEntry,
    NewOutboxMessage, SessionStatus, SessionWrite, StoreError, StoredSession, RATE_LIMITED,
};

/// How many effect round trips one inbound event may cause before the turn is cut
/// (the engine's own step budget bounds each call; this bounds the host loop).
const MAX_EFFECTS_PER_TURN: usize = 32;

/// Runs the inbox dispatcher until `shutdown` turns true; in-flight turns are finished
/// before it returns, unclaimed events stay in the inbox.
pub(super) async fn run(rt: Arc<Shared>, mut shutdown: watch::Receiver<bool>) {
    let permits = Arc::new(Semaphore::new(rt.options.workers));
    // Wakes the dispatcher when a turn gives its permit back while its task goes on with the
    // conversation's next event (the task has not finished, so joining it would not).
    let freed = Arc::new(Notify::new());
    let mut tasks = JoinSet::new();
    loop {
        while tasks.try_join_next().is_some() {}
        if *shutdown.borrow() {
            break;
        }
        let free = permits.available_permits();
        // Claims scan the queue, so they are batched: with turns in flight, wait until
        // half the workers are free before claiming again.
        if free == 0 || (free < (rt.options.workers / 2).max(1) && !tasks.is_empty()) {
            tokio::select! {
                _ = tasks.join_next() => {}
                _ = freed.notified() => {}
                _ = shutdown.changed() => {}
            }
            continue;
        }
        let request = ClaimRequest::any(rt.clock.now(), rt.options.lease, u32::try_from(free).unwrap_or(u32::MAX));
        let claimed = match rt.store.claim_inbox(&request).await {
            Ok(c) => c,
            Err(StoreError::Closed) => break,
            Err(e) => {
                error!(error = %e, "claiming the inbox failed");
                Vec::new()
            }
        };
        if claimed.is_empty() {
            tokio::select! {
                _ = rt.inbox_ready.notified() => {}
                _ = tokio::time::sleep(rt.options.poll_interval) => {}
                _ = shutdown.changed() => {}
            }
            continue;
        }
        let mut loaded = read_together(&rt, &claimed).await.into_iter();
        for event in claimed {
            let permit = permits.clone().acquire_owned().await.expect("the semaphore is never closed");
            let loaded = loaded.next().unwrap_or(Loaded { session: Prior::Unread, counted: None });
            let (rt, permits, freed, shutdown) = (rt.clone(), permits.clone(), freed.clone(), shutdown.clone());
            tasks.spawn(async move {
                let (mut event, mut loaded, mut permit) = (event, loaded, permit);
                loop {
                    // Once shutting down, no turn claims the next event: it stays in the inbox.
                    let chain = !*shutdown.borrow();
                    let next = handle_event(&rt, event, loaded, chain).await;
                    drop(permit);
                    let Some(next) = next else { return };
                    freed.notify_one();
                    // The ordering rule: the next turn waits for this one's handed-over
                    // replies, a bounded time.
                    if let Some(sent) = next.replies_sent {
                        let _ = tokio::time::timeout(rt.options.lease / 4, sent).await;
                    }
                    let Ok(p) = permits.clone().acquire_owned().await else { return };
                    (event, loaded, permit) = (next.event, next.loaded, p);
                }
            });
        }
    }
    // Graceful: every claimed event finishes its turn (bounded by the effect timeout).
    while tasks.join_next().await.is_some() {}
    debug!("inbox workers stopped");
}

/// A conversation's next event, claimed by the turn before it.
struct Next {
    event: InboxEvent,
    loaded: Loaded,
    /// Resolves once the sender is done with the turn before's replies.
    replies_sent: Option<oneshot::Receiver<()>>,
}

/// What was read for a claimed event before its turn.
struct Loaded {
    session: Prior,
    /// For a message under a rate limit: how many of the contact's messages counted in its
    /// window (`None`: the turn reads it).
    counted: Option<u64>,
}

/// Where a turn's session comes from.
enum Prior {
    /// Not read yet: the turn reads it.
    Unread,
    /// The conversation's active session as stored, read with the claim.
    Stored(Option<Box<StoredSession>>),
    /// As the turn before it in this worker saved it, active.
    Carried(Box<Running>),
}

/// The claimed conversations' sessions and rate-limit counts, each kind in one read; a read
/// that fails is left to each turn, so that one bad row fails only its own turn.
async fn read_together(rt: &Shared, claimed: &[InboxEvent]) -> Vec<Loaded> {
    let conversations: Vec<ConversationKey> = claimed.iter().map(|e| e.conversation.clone()).collect();
    let sessions = rt.store.active_sessions(&conversations).await.unwrap_or_else(|e| {
        debug!(error = %e, "reading the claimed conversations' sessions together failed; one by one");
        Vec::new()
    });
    let limit = &rt.options.rate_limit;
    let windows: Vec<_> = claimed.iter().filter_map(|e| limit.window_of(e)).collect();
    let counts = match windows.is_empty() {
        true => Vec::new(),
        false => rt.store.inbound_counts(&windows, u64::from(limit.limit)).await.unwrap_or_else(|e| {
            debug!(error = %e, "counting the claimed conversations' messages together failed; one by one");
            Vec::new()
        }),
    };
    let (mut sessions, mut counts) = (sessions.into_iter(), counts.into_iter());
    claimed
        .iter()
        .map(|e| Loaded {
            session: sessions.next().map_or(Prior::Unread, |s| Prior::Stored(s.map(Box::new))),
            counted: limit.window_of(e).and_then(|_| counts.next()),
        })
        .collect()
}

/// Runs `event`'s turn and commits it, or fails or reschedules the event; `chain`: the
/// commit may claim the conversation's next event, returned.
async fn handle_event(rt: &Shared, event: InboxEvent, loaded: Loaded, chain: bool) -> Option<Next> {
    let commit = Commit { inbox_done: Some(event.claim()), ..Commit::new(&event.conversation.org_id, rt.clock.now()) };
    let mut unit = Unit { rt, event: &event, commit };
    let result = match turn(&mut unit, loaded).await {
        Ok(ran) => unit.commit(chain, ran).await,
        Err(e) => Err(e),
    };
    let (reason, retry_at) = match result {
        Ok(next) => return next,
        Err(TurnError::LeaseLost) => {
            warn!(inbox_id = event.id, "inbox lease lost; another worker owns the event now");
            return None;
        }
        Err(TurnError::Retry(reason)) => {
            warn!(inbox_id = event.id, %reason, "turn failed; will retry");
            let wait = 250u64.saturating_mul(1 << event.attempts.clamp(0, 8));
            (reason, Some(rt.clock.now().saturating_add_millis(wait)))
        }
        Err(TurnError::Permanent(reason)) => {
            error!(inbox_id = event.id, %reason, "inbox event cannot be handled; marked failed");
            (reason, None)
        }
    };
    let org = &event.conversation.org_id;
    if let Err(e) = rt.store.fail_inbox(org, event.claim(), &reason, retry_at, rt.clock.now()).await {
        error!(inbox_id = event.id, error = %e, "could not fail or reschedule the inbox event");
    }
    None
}

/// Why a turn did not commit.
enum TurnError {
    LeaseLost,
    Retry(String),
    Permanent(String),
}

impl From<StoreError> for TurnError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::LeaseLost { .. } => TurnError::LeaseLost,
            StoreError::CorruptState { .. }
            | StoreError::UnsupportedStateVersion { .. }
            | StoreError::IncompatibleState { .. }
            | StoreError::InvalidInput(_) => TurnError::Permanent(e.to_string()),
            other => TurnError::Retry(other.to_string()),
        }
    }
}

impl From<FlowLookupError> for TurnError {
    fn from(e: FlowLookupError) -> Self {
        match e {
            FlowLookupError::Store(s) => s.into(),
            other => TurnError::Permanent(other.to_string()),
        }
    }
}

/// The session a turn runs on.
struct Running {
    flow_id: String,
    flow_version: i64,
    /// The A/B test cohort of a session this turn creates (see [`FlowChoice::Start`]); `None`
    /// for a resumed session, which keeps the cohort it was created in.
    cohort: Option<String>,
    expected_version: i64,
    flow: Arc<CompiledFlow>,
    /// The flow and the flows it calls, when it has `call_flow` nodes.
    calls: Option<FlowSet>,
    session: flowcore::Session,
}

impl Running {
    /// A session of `flow_id` on its `version` (the newest when `None`), with the flows it
    /// calls; `session` gets the session itself.
    async fn on(
        rt: &Shared,
        org: &str,
        flow_id: String,
        version: Option<i64>,
        session: impl FnOnce(&CompiledFlow) -> flowcore::Session,
    ) -> Result<Running, FlowLookupError> {
        let (flow_version, flow) = match version {
            Some(v) => (v, rt.flows.get(org, &flow_id, v).await?),
            None => rt.flows.latest(org, &flow_id).await?,
        };
        let calls = rt.flows.call_set(org, &flow).await?;
        let session = session(&flow);
        Ok(Running { flow_id, flow_version, cohort: None, expected_version: 0, flow, calls, session })
    }

    /// The stored session, on the flow version it names.
    async fn resume(rt: &Shared, stored: Option<StoredSession>) -> Result<Option<Running>, FlowLookupError> {
        let Some(s) = stored else { return Ok(None) };
        let running = Running::on(rt, &s.key.org_id, s.key.flow_id, Some(s.flow_version), |_| s.session).await?;
        Ok(Some(Running { expected_version: s.version, ..running }))
    }

    /// Feeds the engine one input, with the flows the session's flow calls.
    fn handle(&mut self, input: Input, now: Timestamp) -> Result<Turn, SessionError> {
        match &self.calls {
            Some(flows) => self.session.handle_in(flows, input, now),
            None => self.session.handle(&self.flow, input, now),
        }
    }

    /// The session on its flow's newest version, when the options move its flow's sessions
    /// and its state fits that version; otherwise as it was.
    async fn move_to_latest(self, rt: &Shared, org: &str) -> Running {
        if !rt.options.move_to_latest.applies(org, &self.flow_id) {
            return self;
        }
        let (version, flow) = match rt.flows.latest(org, &self.flow_id).await {
            Ok(latest) if latest.0 > self.flow_version => latest,
            Ok(_) => return self,
            Err(e) => {
                // The session can still run on its own version; the next turn tries again.
                warn!(org, flow = %self.flow_id, error = %e, "newest flow version unavailable; session stays on its version");
                return self;
            }
        };
        match self.session.check_flow(&flow) {
            Ok(()) => {
                info!(org, flow = %self.flow_id, from = self.flow_version, to = version, "session moved to the newest flow version");
                Running { flow_version: version, flow, ..self }
            }
            Err(e) => {
                debug!(org, flow = %self.flow_id, version = self.flow_version, newest = version, reason = %e,
                       "session does not fit the newest flow version; it stays on its version");
                self
            }
        }
    }
}

/// Fills the turn's unit of work; the session it ran, when the engine ran.
async fn turn(unit: &mut Unit<'_>, loaded: Loaded) -> Result<Option<Running>, TurnError> {
    let (rt, event, now) = (unit.rt, unit.event, unit.commit.now);
    let conv = &event.conversation;
    let org = conv.org_id.as_str();
    let inbound = match event.kind {
        InboxKind::Message => Some(
            InboundPayload::deserialize(&event.payload)
                .map_err(|e| TurnError::Permanent(format!("unreadable inbox payload: {e}")))?,
        ),
        InboxKind::WakeUp => None,
    };

    // The conversation's current session, if any (it keeps its flow, version and cohort).
    let running = match loaded.session {
        Prior::Carried(running) => Some(*running),
        Prior::Stored(stored) => Running::resume(rt, stored.map(|s| *s)).await?,
        Prior::Unread => Running::resume(rt, rt.store.active_session(conv).await?).await?,
    };
    let mut running = match running {
        Some(r) => Some(r.move_to_latest(rt, org).await),
        None => None,
    };
    if let Some(expired) = running.take_if(|r| r.session.is_expired(now)) {
        // Closed on its own, not as this turn: the event runs below, on a fresh session.
        debug!(inbox_id = event.id, "session expired; closing it before this turn");
        rt.store.close_session(&conv.session(&expired.flow_id), now).await?;
    }

    if let (Some(inbound), Some(window)) = (&inbound, rt.options.rate_limit.window_of(event)) {
        let counted = match loaded.counted {
            Some(counted) => counted,
            None => {
                let counts = rt.store.inbound_counts(&[window], u64::from(rt.options.rate_limit.limit)).await?;
                counts.first().copied().unwrap_or(0)
            }
        };
        if !rt.options.rate_limit.allows(counted) {
            Stats::add(&rt.stats.rate_limited, 1);
            info!(org, contact = %redact_contact(&conv.contact_id), "rate limit exceeded; message logged, not run");
            unit.log_inbound(running.as_ref().map(|r| r.flow_id.as_str()), inbound, json!({ RATE_LIMITED: true }));
            return Ok(None);
        }
    }

    if event.kind == InboxKind::WakeUp {
        let wake = WakePayload::deserialize(&event.payload)
            .map_err(|e| TurnError::Permanent(format!("unreadable wake-up payload: {e}")))?;
        if !running.as_ref().is_some_and(|r| r.flow_id == wake.flow_id && r.session.wake_at() == Some(wake.wake_at)) {
            // The session moved on (the contact answered, it ended or was closed).
            debug!(inbox_id = event.id, "stale wake-up ignored");
            return Ok(None);
        }
    }

    if let Some(r) = running.as_ref().filter(|r| r.session.status() == flowcore::SessionStatus::HandedOff) {
        // A human has the conversation: record the message, stay silent.
        if let Some(inbound) = &inbound {
            unit.log_inbound(Some(&r.flow_id), inbound, json!({"handoff": true}));
        }
        return Ok(None);
    }

    let mut running = match (running, &inbound) {
        (Some(running), _) => running,
        (None, None) => return Ok(None),
        (None, Some(inbound)) => match rt.chooser.choose(conv, inbound).await {
            FlowChoice::Start { flow_id, variables, cohort } => {
                debug!(org, flow = %flow_id, ?cohort, "new session");
                let session = |flow: &CompiledFlow| new_session(rt, flow, conv, inbound, variables);
                Running { cohort, ..Running::on(rt, org, flow_id, None, session).await? }
            }
            FlowChoice::Reply(reply) => {
                info!(org, phone_number_id = %conv.business_number_id, "no flow for this conversation; polite reply");
                unit.log_inbound(None, inbound, json!({"not_configured": true}));
                unit.reply(None, reply, None);
                return Ok(None);
            }
            FlowChoice::Ignore => {
                info!(phone_number_id = %conv.business_number_id, "no flow chosen; event dropped");
                return Ok(None);
            }
        },
    };

    if let Some(inbound) = &inbound {
        unit.log_inbound(Some(&running.flow_id), inbound, Value::Null);
    }
    let ctx = EffectContext {
        organization: org.to_owned(),
        flow_id: running.flow_id.clone(),
        contact: conv.contact_id.clone(),
    };
    let mut input = inbound.as_ref().map_or(Input::Tick, |m| m.input.clone());
    let (mut ended, mut wake_at) = (false, None);
    for effects in 0..=MAX_EFFECTS_PER_TURN {
        let turn = match running.handle(input, if effects == 0 { now } else { rt.clock.now() }) {
            Ok(turn) => turn,
            Err(e) if effects == 0 => {
                // An input the session cannot take (a stray event, say): logged, no reply.
                warn!(inbox_id = event.id, error = %e, "the engine refused the input");
                return Ok(None);
            }
            Err(e) => {
                warn!(inbox_id = event.id, error = %e, "the engine refused an effect result");
                break;
            }
        };
        wake_at = turn.wake_at.or(wake_at);
        let mut pending = None;
        for output in turn.outputs {
            match output {
                Output::Send { node, message } => unit.reply(Some(&running.flow_id), message, Some(node.to_string())),
                Output::Effect(request) => match &request.kind {
                    EffectKind::Analytics { event: name, properties } => {
                        debug!(org, event = %name, "analytics event");
                        let note = json!({"analytics": name, "properties": properties});
                        unit.log_system(&running.flow_id, request.node.to_string(), note);
                    }
                    _ if request.expects_result() => pending = Some(request),
                    _ => {}
                },
                Output::Handoff { node, queue } => {
                    info!(org, queue = ?queue, "conversation handed off to a human");
                    unit.log_system(&running.flow_id, node.to_string(), json!({"handoff": true, "queue": queue}));
                }
                Output::End { reason, .. } => {
                    debug!(org, ?reason, "session ended");
                    ended = true;
                }
                _ => {}
            }
        }
        let Some(request) = pending else { break };
        if effects == MAX_EFFECTS_PER_TURN {
            warn!(inbox_id = event.id, "too many effects in one turn; the turn is cut");
            break;
        }
        let outcome = rt.effects.perform(&ctx, &request.kind).await;
        debug!(org, node = %request.node, ok = matches!(outcome, flowcore::EffectOutcome::Success(_)), "effect performed");
        input = Input::EffectResult { id: request.id, result: outcome };
    }
    let active = !ended && running.session.status() != flowcore::SessionStatus::Ended;
    if let Some(at) = wake_at.or_else(|| running.session.wake_at()).filter(|_| active) {
        let key = format!("wake:{}:{}@{}", conv, running.flow_id, at.as_unix_millis());
        let payload = serde_json::to_value(WakePayload { flow_id: running.flow_id.clone(), wake_at: at });
        let wake = NewInboxEvent::wake_up(conv.clone(), key, payload.expect("plain data"), now, at);
        unit.commit.schedule.push(wake);
    }
    unit.commit.session = Some(SessionWrite {
        key: conv.session(&running.flow_id),
        expected_version: running.expected_version,
        flow_version: running.flow_version,
        cohort: running.cohort.clone(),
        session: running.session.clone(),
        status: if active { SessionStatus::Active } else { SessionStatus::Closed },
        now,
    });
    Ok(Some(running))
}

/// One event's unit of work as its turn builds it: everything it writes, committed once.
struct Unit<'a> {
    rt: &'a Shared,
    event: &'a InboxEvent,
    commit: Commit,
}

impl Unit<'_> {
    /// Commits the turn: the one place a turn's unit of work is written.
    ///
    /// Its replies are claimed as they are written when the store can, and handed to the
    /// sender (else left to the sender's next claim); with `chain`, the conversation's next
    /// event is claimed for this worker and returned, to run once the sender is done with
    /// the handed-over replies (the [ordering rule](super#ordering)). `ran` is the session
    /// the engine ran, carried into that next turn while it stays active.
    async fn commit(self, chain: bool, ran: Option<Running>) -> Result<Option<Next>, TurnError> {
        let Unit { rt, mut commit, .. } = self;
        let (replies, lease_until) = (commit.outbox.len(), later(commit.now, rt.options.lease));
        commit.claim_replies_until = (replies > 0).then_some(lease_until);
        commit.claim_next_until = chain.then_some(lease_until);
        let active = commit.session.as_ref().is_some_and(|s| s.status == SessionStatus::Active);
        let outcome = rt.store.commit(commit).await?;
        Stats::add(&rt.stats.turns, u64::from(ran.is_some()));
        let handed = outcome.claimed_replies.len();
        Stats::add(&rt.stats.handed_over, handed as u64);
        if handed < replies {
            rt.outbox_ready.notify_one();
        }
        let mut replies_sent = None;
        if handed > 0 {
            let (done, sent) = oneshot::channel();
            match rt.claimed_replies.send(HandedOver { replies: outcome.claimed_replies, done }) {
                Ok(()) => replies_sent = Some(sent),
                // The sender has stopped (shutting down): the claims lapse with their lease.
                Err(_) => debug!(claimed = handed, "sender stopped; claimed replies left to their lease"),
            }
        }
        let Some(event) = outcome.claimed_next else { return Ok(None) };
        let session = match (ran, outcome.session) {
            (Some(running), Some(saved)) if active => {
                Prior::Carried(Box::new(Running { expected_version: saved.version, cohort: None, ..running }))
            }
            // After a session ends, the next turn reads which one is active, as a claimed one does.
            _ => Prior::Unread,
        };
        Ok(Some(Next { event: *event, loaded: Loaded { session, counted: None }, replies_sent }))
    }

    /// Logs the event's inbound message, at our receive time (so the transcript interleaves
    /// with our replies as things happened; the channel's send time goes in the metadata).
    fn log_inbound(&mut self, flow_id: Option<&str>, inbound: &InboundPayload, mut metadata: Value) {
        if !metadata.is_object() {
            metadata = json!({});
        }
        metadata["sent_at"] = json!(inbound.sent_at.as_unix_millis());
        let at = self.event.received_at;
        let content = Content::Text(input_text(&inbound.input));
        self.log(flow_id, Direction::Inbound, content, None, Some(inbound.wamid.clone()), at, metadata);
    }

    /// Logs a system note (handoff, analytics): an outbound JSON row with no text of its own,
    /// shown by its metadata.
    fn log_system(&mut self, flow_id: &str, node: String, note: Value) {
        let content = Content::Json(json!({ "system": note.clone() }));
        self.log(Some(flow_id), Direction::Outbound, content, Some(node), None, self.commit.now, note);
    }

    /// Logs a reply and queues it, split as the delivery takes it.
    fn reply(&mut self, flow_id: Option<&str>, message: Message, node: Option<String>) {
        let content = match &message {
            Message::Text { text } => Content::Text(text.clone()),
            other => Content::Json(serde_json::to_value(other).expect("messages serialize")),
        };
        self.log(flow_id, Direction::Outbound, content, node.clone(), None, self.commit.now, Value::Null);
        for message in self.rt.delivery.split(message) {
            let payload = OutboxPayload { message, node: node.clone(), manual: false };
            self.commit.outbox.push(NewOutboxMessage {
                conversation: self.event.conversation.clone(),
                payload: serde_json::to_value(&payload).expect("plain data"),
                due_at: self.commit.now,
                inbox_id: Some(self.event.id),
            });
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn log(
        &mut self,
        flow_id: Option<&str>,
        direction: Direction,
        content: Content,
        node_id: Option<String>,
        wamid: Option<String>,
        at: Timestamp,
        metadata: Value,
    ) {
        let conversation = self.event.conversation.clone();
        let flow_id = flow_id.map(str::to_owned);
        self.commit.log.push(NewLogEntry { conversation, flow_id, direction, content, node_id, wamid, at, metadata });
    }
}

/// A new session on `flow`, with the runtime's variables and a seed per conversation (so
/// `random` nodes differ between contacts but replay exactly).
fn new_session(
    rt: &Shared,
    flow: &CompiledFlow,
    conv: &ConversationKey,
    inbound: &InboundPayload,
    mut variables: serde_json::Map<String, Value>,
) -> flowcore::Session {
    use sha2::{Digest, Sha256};
    variables.insert("phone_number".into(), json!(conv.contact_id));
    if let Some(name) = &inbound.contact_name {
        variables.insert("contact_name".into(), json!(name));
    }
    let digest = Sha256::digest(conv.to_string().as_bytes());
    let seed = u64::from_be_bytes(digest[..8].try_into().expect("a SHA-256 digest has 32 bytes"));
    let ttl_millis = u64::try_from(rt.options.session_ttl.as_millis()).unwrap_or(u64::MAX);
    let options = flowcore::SessionOptions { seed, variables, max_steps: rt.options.max_flow_iterations, ttl_millis };
    flowcore::Session::new(flow, options)
}
