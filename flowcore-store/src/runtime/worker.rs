//! Inbox workers: claim events (one per conversation at a time, in order), run the engine,
//! perform effects, and commit the turn — new state, log rows, replies, wake-ups and the
//! inbox row's completion — as one unit of work.

use std::sync::Arc;

use flowcore::{CompiledFlow, EffectKind, FlowSet, Input, Message, Output, SessionError, Timestamp, Turn};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::{oneshot, watch, Notify, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tracing::{debug, error, info, warn};

use super::flows::FlowLookupError;
use super::host::{EffectContext, FlowChoice};
use super::payload::{input_text, InboundPayload, OutboxPayload, WakePayload};
use super::sender::HandedOver;
use super::stats::Stats;
use super::Shared;
use crate::{
    ClaimRequest, Commit, CommitOutcome, Content, ConversationKey, Direction, InboxEvent, InboxKind, NewInboxEvent,
    NewLogEntry, NewOutboxMessage, SessionStatus, SessionWrite, StoreError, StoredSession, RATE_LIMITED,
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
        let batch_from = (rt.options.workers / 2).max(1);
        if free == 0 || (free < batch_from && !tasks.is_empty()) {
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
        // Every claimed conversation's session in one read; if that read fails, each turn
        // reads its own (so that one unreadable session fails only its own turn).
        let conversations: Vec<ConversationKey> = claimed.iter().map(|e| e.conversation.clone()).collect();
        let mut sessions = match rt.store.active_sessions(&conversations).await {
            Ok(sessions) => sessions.into_iter().map(|s| Read::Done(s.map(Box::new))).collect(),
            Err(e) => {
                debug!(error = %e, "reading the claimed conversations' sessions together failed; one by one");
                Vec::new()
            }
        }
        .into_iter();
        let mut counted = counted_messages(&rt, &claimed).await.into_iter();
        for event in claimed {
            let permit = permits.clone().acquire_owned().await.expect("the semaphore is never closed");
            let session = SessionSource::Stored(sessions.next().unwrap_or(Read::NotYet));
            let loaded = Loaded { session, counted: counted.next().flatten() };
            let conversation = Conversation {
                rt: rt.clone(),
                permits: permits.clone(),
                freed: freed.clone(),
                shutdown: shutdown.clone(),
            };
            tasks.spawn(conversation.run(event, loaded, permit));
        }
    }
    // Graceful: every claimed event finishes its turn (bounded by the effect timeout).
    while tasks.join_next().await.is_some() {}
    debug!("inbox workers stopped");
}

/// A worker's run through one conversation: the claimed event's turn, then each next event
/// its turn claimed as it committed (see [`Commit::claim_next_until`]), one after the other.
struct Conversation {
    rt: Arc<Shared>,
    permits: Arc<Semaphore>,
    freed: Arc<Notify>,
    shutdown: watch::Receiver<bool>,
}

impl Conversation {
    async fn run(self, mut event: InboxEvent, mut loaded: Loaded, mut permit: OwnedSemaphorePermit) {
        loop {
            // Once shutting down, no turn claims the next event: it stays in the inbox.
            let chain = !*self.shutdown.borrow();
            let next = handle_event(&self.rt, event, loaded, chain).await;
            drop(permit);
            let Some(next) = next else { return };
            self.freed.notify_one();
            // The next turn's replies are claimed as they are written only when this turn's
            // are sent (a conversation's replies go in order), so it waits for them; a
            // reply stuck in a slow send holds it back a bounded time, its replies then
            // left to the sender's claims.
            if let Some(sent) = next.replies_sent {
                let _ = tokio::time::timeout(self.rt.options.lease / 4, sent).await;
            }
            permit = match self.permits.clone().acquire_owned().await {
                Ok(permit) => permit,
                Err(_) => return,
            };
            (event, loaded) = (next.event, next.loaded);
        }
    }
}

/// A conversation's next event, claimed by the turn before it.
struct Next {
    event: InboxEvent,
    loaded: Loaded,
    /// Resolves once the sender is done with the turn before's replies.
    replies_sent: Option<oneshot::Receiver<()>>,
}

/// What was read for a claimed event together with the claim.
struct Loaded {
    /// The conversation's active session.
    session: SessionSource,
    /// For a message under a rate limit: how many of the contact's messages counted in its
    /// window (`None`: not read yet, the turn reads it).
    counted: Option<u64>,
}

/// A value read with the claim, or not read yet (the turn reads it).
enum Read<T> {
    Done(T),
    NotYet,
}

/// Where a turn's session comes from.
enum SessionSource {
    /// As stored.
    Stored(Read<Option<Box<StoredSession>>>),
    /// As the turn before it in this worker saved it, active.
    Carried(Box<Running>),
}

/// For each claimed event, in order: the count the rate limit judges it by, if it is a
/// message under a limit — all read together; if that read fails, each turn reads its own.
async fn counted_messages(rt: &Shared, claimed: &[InboxEvent]) -> Vec<Option<u64>> {
    let limited: Vec<&InboxEvent> = claimed.iter().filter(|e| is_rate_limited(rt, e)).collect();
    if limited.is_empty() {
        return Vec::new();
    }
    let windows: Vec<_> =
        limited.iter().map(|e| (e.conversation.clone(), rt.options.rate_limit.window_start(e.received_at))).collect();
    let counts = match rt.store.inbound_counts(&windows, rt.options.rate_limit.limit()).await {
        Ok(counts) => counts,
        Err(e) => {
            debug!(error = %e, "counting the claimed conversations' recent messages together failed; one by one");
            return Vec::new();
        }
    };
    let mut counts = counts.into_iter();
    claimed.iter().map(|e| if is_rate_limited(rt, e) { counts.next() } else { None }).collect()
}

/// Whether `event` is a message the rate limit judges.
fn is_rate_limited(rt: &Shared, event: &InboxEvent) -> bool {
    rt.options.rate_limit.is_enabled() && event.kind == InboxKind::Message
}

/// Runs `event`'s turn; `chain`: the turn may claim its conversation's next event, returned.
async fn handle_event(rt: &Shared, event: InboxEvent, loaded: Loaded, chain: bool) -> Option<Next> {
    let org = event.conversation.org_id.clone();
    let claim = event.claim();
    let mut turn = TurnCommit { rt, chain, next: None };
    match process(&mut turn, &event, loaded).await {
        Ok(()) => return turn.next,
        Err(TurnError::LeaseLost) => warn!(inbox_id = event.id, "inbox lease lost; another worker owns the event now"),
        Err(TurnError::Retry(reason)) => {
            warn!(inbox_id = event.id, %reason, "turn failed; will retry");
            let retry_at = rt.clock.now().saturating_add_millis(250u64.saturating_mul(1 << event.attempts.clamp(0, 8)));
            if let Err(e) = rt.store.fail_inbox(&org, claim, &reason, Some(retry_at), rt.clock.now()).await {
                error!(inbox_id = event.id, error = %e, "could not reschedule the inbox event");
            }
        }
        Err(TurnError::Permanent(reason)) => {
            error!(inbox_id = event.id, %reason, "inbox event cannot be handled; marked failed");
            if let Err(e) = rt.store.fail_inbox(&org, claim, &reason, None, rt.clock.now()).await {
                error!(inbox_id = event.id, error = %e, "could not fail the inbox event");
            }
        }
    }
    None
}

enum TurnError {
    LeaseLost,
    Retry(String),
    Permanent(String),
}

impl From<StoreError> for TurnError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::LeaseLost { .. } => TurnError::LeaseLost,
            StoreError::Conflict { .. } => TurnError::Retry(e.to_string()),
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
    /// The A/B test cohort of a session this turn creates (see [`FlowChoice::Start`]); `None` for a
    /// resumed session, which keeps the cohort it was created in.
    cohort: Option<String>,
    expected_version: i64,
    flow: Arc<CompiledFlow>,
    /// The flow and the flows it calls, when it has `call_flow` nodes.
    calls: Option<FlowSet>,
    session: flowcore::Session,
}

impl Running {
    /// Feeds the engine one input, with the flows the session's flow calls.
    fn handle(&mut self, input: Input, now: Timestamp) -> Result<Turn, SessionError> {
        match &self.calls {
            Some(flows) => self.session.handle_in(flows, input, now),
            None => self.session.handle(&self.flow, input, now),
        }
    }
}

async fn process(unit: &mut TurnCommit<'_>, event: &InboxEvent, loaded: Loaded) -> Result<(), TurnError> {
    let rt = unit.rt;
    let conv = &event.conversation;
    let org = conv.org_id.as_str();
    let now = rt.clock.now();
    let mut commit = Commit { inbox_done: Some(event.claim()), ..Commit::new(org, now) };

    let (input, inbound) = match event.kind {
        InboxKind::Message => {
            let payload = InboundPayload::deserialize(&event.payload)
                .map_err(|e| TurnError::Permanent(format!("unreadable inbox payload: {e}")))?;
            (payload.input.clone(), Some(payload))
        }
        InboxKind::WakeUp => (Input::Tick, None),
    };

    // The conversation's current session, if any (it keeps its flow, version and variant).
    let mut running = match loaded.session {
        SessionSource::Carried(running) => Some(*running),
        SessionSource::Stored(read) => {
            let stored = match read {
                Read::Done(stored) => stored.map(|s| *s),
                Read::NotYet => rt.store.active_session(conv).await?,
            };
            resume(rt, conv, stored).await?
        }
    };
    if let Some(r) = running.take() {
        running = Some(move_to_latest(rt, org, r).await);
    }
    if let Some(r) = &running {
        if r.session.is_expired(now) {
            debug!(inbox_id = event.id, "session expired; closing it before this turn");
            // Its own unit of work, without the inbox row: the event itself is handled
            // below, on a fresh session.
            let close = Commit {
                session: Some(SessionWrite {
                    key: conv.session(&r.flow_id),
                    expected_version: r.expected_version,
                    flow_version: r.flow_version,
                    cohort: None,
                    session: r.session.clone(),
                    status: SessionStatus::Closed,
                    now,
                }),
                ..Commit::new(org, now)
            };
            rt.store.commit(close).await?;
            running = None;
        }
    }

    if let Some(inbound) = inbound.as_ref().filter(|_| is_rate_limited(rt, event)) {
        // Per-contact rate limit: logged, not run through the flow (and not counted).
        let counted = match loaded.counted {
            Some(counted) => counted,
            None => {
                let window = (conv.clone(), rt.options.rate_limit.window_start(event.received_at));
                rt.store.inbound_counts(&[window], rt.options.rate_limit.limit()).await?.first().copied().unwrap_or(0)
            }
        };
        if !rt.options.rate_limit.allows(counted) {
            Stats::bump(&rt.stats.rate_limited);
            info!(org, contact = %super::redact_contact(&conv.contact_id), "rate limit exceeded; message logged, not run");
            commit.log.push(inbound_log(
                conv,
                running.as_ref().map(|r| r.flow_id.clone()),
                inbound,
                event.received_at,
                json!({ RATE_LIMITED: true }),
            ));
            unit.finish(commit).await?;
            return Ok(());
        }
    }

    if let InboxKind::WakeUp = event.kind {
        let wake = WakePayload::deserialize(&event.payload)
            .map_err(|e| TurnError::Permanent(format!("unreadable wake-up payload: {e}")))?;
        let current =
            running.as_ref().filter(|r| r.flow_id == wake.flow_id && r.session.wake_at() == Some(wake.wake_at));
        if current.is_none() {
            // The session moved on (the contact answered, it ended or was closed).
            debug!(inbox_id = event.id, "stale wake-up ignored");
            unit.finish(commit).await?;
            return Ok(());
        }
    }

    if let Some(r) = &running {
        if r.session.status() == flowcore::SessionStatus::HandedOff {
            // A human has the conversation: record the message, stay silent.
            if let Some(inbound) = &inbound {
                commit.log.push(inbound_log(
                    conv,
                    Some(r.flow_id.clone()),
                    inbound,
                    event.received_at,
                    json!({"handoff": true}),
                ));
            }
            unit.finish(commit).await?;
            return Ok(());
        }
    }

    let mut running = match running {
        Some(r) => r,
        None => {
            let Some(inbound) = &inbound else {
                unit.finish(commit).await?;
                return Ok(());
            };
            match rt.chooser.choose(conv, inbound).await {
                FlowChoice::Start { flow_id, variables, cohort } => {
                    let (version, compiled) = rt.flows.latest(org, &flow_id).await?;
                    debug!(org, flow = %flow_id, ?cohort, "new session");
                    let session = new_session(rt, &compiled, conv, inbound, variables);
                    let calls = rt.flows.call_set(org, &compiled).await?;
                    Running {
                        flow_id,
                        flow_version: version,
                        cohort,
                        expected_version: 0,
                        flow: compiled,
                        calls,
                        session,
                    }
                }
                FlowChoice::Reply(reply) => {
                    info!(org, phone_number_id = %conv.business_number_id, "no flow for this conversation; polite reply");
                    commit.log.push(inbound_log(
                        conv,
                        None,
                        inbound,
                        event.received_at,
                        json!({"not_configured": true}),
                    ));
                    push_reply(rt, &mut commit, conv, None, reply, None, event.id, now);
                    unit.finish(commit).await?;
                    return Ok(());
                }
                FlowChoice::Ignore => {
                    info!(phone_number_id = %conv.business_number_id, "no flow chosen; event dropped");
                    unit.finish(commit).await?;
                    return Ok(());
                }
            }
        }
    };

    if let Some(inbound) = &inbound {
        commit.log.push(inbound_log(conv, Some(running.flow_id.clone()), inbound, event.received_at, Value::Null));
    }
    let ctx = EffectContext {
        organization: org.to_owned(),
        flow_id: running.flow_id.clone(),
        contact: conv.contact_id.clone(),
    };
    let mut turn = match running.handle(input, now) {
        Ok(t) => t,
        Err(e) => {
            // An input the session cannot take (for example a stray event): logged, no reply.
            warn!(inbox_id = event.id, error = %e, "the engine refused the input");
            unit.finish(commit).await?;
            return Ok(());
        }
    };
    let mut ended = false;
    let mut effects = 0;
    let mut wake_at = None;
    loop {
        let Turn { outputs, wake_at: w, .. } = turn;
        wake_at = w.or(wake_at);
        let mut pending = None;
        for output in outputs {
            match output {
                Output::Send { node, message } => push_reply(
                    rt,
                    &mut commit,
                    conv,
                    Some(&running.flow_id),
                    message,
                    Some(node.to_string()),
                    event.id,
                    now,
                ),
                Output::Effect(request) => {
                    if let EffectKind::Analytics { event: name, properties } = &request.kind {
                        debug!(org, event = %name, "analytics event");
                        commit.log.push(system_log(
                            conv,
                            &running.flow_id,
                            Some(request.node.to_string()),
                            json!({"analytics": name, "properties": properties}),
                            now,
                        ));
                    } else if request.expects_result() {
                        pending = Some(request);
                    }
                }
                Output::Handoff { node, queue } => {
                    info!(org, queue = ?queue, "conversation handed off to a human");
                    commit.log.push(system_log(
                        conv,
                        &running.flow_id,
                        Some(node.to_string()),
                        json!({"handoff": true, "queue": queue}),
                        now,
                    ));
                }
                Output::End { reason, .. } => {
                    debug!(org, ?reason, "session ended");
                    ended = true;
                }
                _ => {}
            }
        }
        let Some(request) = pending else { break };
        effects += 1;
        if effects > MAX_EFFECTS_PER_TURN {
            warn!(inbox_id = event.id, "too many effects in one turn; the turn is cut");
            break;
        }
        let outcome = rt.effects.perform(&ctx, &request.kind).await;
        debug!(org, node = %request.node, ok = matches!(outcome, flowcore::EffectOutcome::Success(_)), "effect performed");
        let result = Input::EffectResult { id: request.id, result: outcome };
        turn = match running.handle(result, rt.clock.now()) {
            Ok(t) => t,
            Err(e) => {
                warn!(inbox_id = event.id, error = %e, "the engine refused an effect result");
                Turn::default()
            }
        };
    }
    let status = if ended || is_finished(&running.session) { SessionStatus::Closed } else { SessionStatus::Active };
    if status == SessionStatus::Active {
        if let Some(at) = wake_at.or_else(|| running.session.wake_at()) {
            let key = format!("wake:{}:{}@{}", conv, running.flow_id, at.as_unix_millis());
            let payload = serde_json::to_value(WakePayload { flow_id: running.flow_id.clone(), wake_at: at })
                .expect("plain data");
            commit.schedule.push(NewInboxEvent::wake_up(conv.clone(), key, payload, now, at));
        }
    }
    commit.session = Some(SessionWrite {
        key: conv.session(&running.flow_id),
        expected_version: running.expected_version,
        flow_version: running.flow_version,
        cohort: running.cohort.clone(),
        session: running.session.clone(),
        status,
        now,
    });
    let outcome = unit.finish(commit).await?;
    Stats::bump(&rt.stats.turns);
    // The conversation's next turn, if this worker runs it, starts from the session as saved.
    // After a session ends, it reads which one is active, as a claimed turn does.
    if let (Some(saved), SessionStatus::Active) = (outcome.session, status) {
        unit.carry(SessionSource::Carried(Box::new(Running {
            expected_version: saved.version,
            cohort: None,
            ..running
        })));
    }
    Ok(())
}

/// Commits a turn's unit of work (the handled inbox row with everything the turn wrote)
/// and hands what it claimed on: its replies to the sender, the conversation's next event to
/// the worker that runs this conversation.
struct TurnCommit<'a> {
    rt: &'a Shared,
    /// Whether the turn may claim its conversation's next event.
    chain: bool,
    next: Option<Next>,
}

impl TurnCommit<'_> {
    /// Commits `commit`: its replies claimed as they are written when the store can (the
    /// sender then sends them without a claim of its own), else queued for the sender's next
    /// claim; and, when it handles an inbox row and `chain` allows, the conversation's next
    /// event claimed for this worker.
    async fn finish(&mut self, mut commit: Commit) -> Result<CommitOutcome, TurnError> {
        let rt = self.rt;
        let lease = u64::try_from(rt.options.lease.as_millis()).unwrap_or(u64::MAX);
        let lease_until = commit.now.saturating_add_millis(lease);
        let replies = commit.outbox.len();
        if replies > 0 {
            commit.claim_replies_until = Some(lease_until);
        }
        if self.chain && commit.inbox_done.is_some() {
            commit.claim_next_until = Some(lease_until);
        }
        let mut outcome = rt.store.commit(commit).await?;
        let claimed = std::mem::take(&mut outcome.claimed_replies);
        let handed = claimed.len();
        rt.stats.handed_over.fetch_add(handed as u64, std::sync::atomic::Ordering::Relaxed);
        let mut replies_sent = None;
        if handed > 0 {
            let (done, sent) = oneshot::channel();
            match rt.claimed_replies.send(HandedOver { replies: claimed, done }) {
                Ok(()) => replies_sent = Some(sent),
                // The sender has stopped (shutting down): the claims lapse with their lease,
                // and a claim sends them then.
                Err(_) => debug!(claimed = handed, "sender stopped; claimed replies left to their lease"),
            }
        }
        if handed < replies {
            rt.outbox_ready.notify_one();
        }
        if let Some(event) = outcome.claimed_next.take() {
            let loaded = Loaded { session: SessionSource::Stored(Read::NotYet), counted: None };
            self.next = Some(Next { event: *event, loaded, replies_sent });
        }
        Ok(outcome)
    }

    /// The session the conversation's next turn starts from, if this turn claimed it.
    fn carry(&mut self, session: SessionSource) {
        if let Some(next) = &mut self.next {
            next.loaded.session = session;
        }
    }
}

fn is_finished(session: &flowcore::Session) -> bool {
    matches!(session.status(), flowcore::SessionStatus::Ended)
}

/// The turn's session from the stored one, with the flow version it runs on.
async fn resume(
    rt: &Shared,
    conv: &ConversationKey,
    stored: Option<StoredSession>,
) -> Result<Option<Running>, TurnError> {
    let Some(stored) = stored else {
        return Ok(None);
    };
    let flow = rt.flows.get(&conv.org_id, &stored.key.flow_id, stored.flow_version).await?;
    let calls = rt.flows.call_set(&conv.org_id, &flow).await?;
    let session = stored.session;
    Ok(Some(Running {
        flow_id: stored.key.flow_id,
        flow_version: stored.flow_version,
        cohort: None,
        expected_version: stored.version,
        flow,
        calls,
        session,
    }))
}

/// The session on its flow's newest version, when the options move its flow's sessions and
/// its state fits that version; otherwise as it was. The turn's commit records the version.
async fn move_to_latest(rt: &Shared, org: &str, running: Running) -> Running {
    if !rt.options.move_to_latest.applies(org, &running.flow_id) {
        return running;
    }
    let (version, flow) = match rt.flows.latest(org, &running.flow_id).await {
        Ok(latest) => latest,
        Err(e) => {
            // The session can still run on its own version; the next turn tries again.
            warn!(org, flow = %running.flow_id, error = %e, "newest flow version unavailable; session stays on its version");
            return running;
        }
    };
    if version <= running.flow_version {
        return running;
    }
    match running.session.check_flow(&flow) {
        Ok(()) => {
            info!(org, flow = %running.flow_id, from = running.flow_version, to = version, "session moved to the newest flow version");
            Running { flow_version: version, flow, ..running }
        }
        Err(e) => {
            debug!(org, flow = %running.flow_id, version = running.flow_version, newest = version, reason = %e,
                   "session does not fit the newest flow version; it stays on its version");
            running
        }
    }
}

fn new_session(
    rt: &Shared,
    flow: &CompiledFlow,
    conv: &ConversationKey,
    inbound: &InboundPayload,
    mut variables: serde_json::Map<String, Value>,
) -> flowcore::Session {
    variables.insert("phone_number".into(), json!(conv.contact_id));
    if let Some(name) = &inbound.contact_name {
        variables.insert("contact_name".into(), json!(name));
    }
    // A seed per conversation: `random` nodes differ between contacts but replay exactly.
    let seed = seed_of(&conv.to_string());
    flowcore::Session::new(
        flow,
        flowcore::SessionOptions {
            seed,
            variables,
            max_steps: rt.options.max_flow_iterations,
            ttl_millis: u64::try_from(rt.options.session_ttl.as_millis()).unwrap_or(u64::MAX),
        },
    )
}

fn seed_of(s: &str) -> u64 {
    use sha2::{Digest, Sha256};
    let d = Sha256::digest(s.as_bytes());
    let mut b = [0u8; 8];
    b.copy_from_slice(&d[..8]);
    u64::from_be_bytes(b)
}

fn inbound_log(
    conv: &ConversationKey,
    flow_id: Option<String>,
    inbound: &InboundPayload,
    received_at: Timestamp,
    mut metadata: Value,
) -> NewLogEntry {
    // Logged at our receive time, so the transcript interleaves with our replies in the
    // order things happened; Meta's own send time is kept in the metadata.
    if !metadata.is_object() {
        metadata = json!({});
    }
    metadata["sent_at"] = json!(inbound.sent_at.as_unix_millis());
    NewLogEntry {
        conversation: conv.clone(),
        flow_id,
        direction: Direction::Inbound,
        content: Content::Text(input_text(&inbound.input)),
        node_id: None,
        wamid: Some(inbound.wamid.clone()),
        at: received_at,
        metadata,
    }
}

fn system_log(
    conv: &ConversationKey,
    flow_id: &str,
    node: Option<String>,
    metadata: Value,
    now: Timestamp,
) -> NewLogEntry {
    // System notes are kept as outbound JSON rows with no text of their own; the API
    // shows them by their metadata.
    NewLogEntry {
        conversation: conv.clone(),
        flow_id: Some(flow_id.to_owned()),
        direction: Direction::Outbound,
        content: Content::Json(json!({"system": metadata.clone()})),
        node_id: node,
        wamid: None,
        at: now,
        metadata,
    }
}

#[allow(clippy::too_many_arguments)]
fn push_reply(
    rt: &Shared,
    commit: &mut Commit,
    conv: &ConversationKey,
    flow_id: Option<&str>,
    message: Message,
    node: Option<String>,
    inbox_id: i64,
    now: Timestamp,
) {
    let content = match &message {
        Message::Text { text } => Content::Text(text.clone()),
        other => Content::Json(serde_json::to_value(other).expect("messages serialize")),
    };
    commit.log.push(NewLogEntry {
        conversation: conv.clone(),
        flow_id: flow_id.map(str::to_owned),
        direction: Direction::Outbound,
        content,
        node_id: node.clone(),
        wamid: None,
        at: now,
        metadata: Value::Null,
    });
    for message in rt.delivery.split(message) {
        let payload = OutboxPayload { message, node: node.clone(), manual: false };
        commit.outbox.push(NewOutboxMessage {
            conversation: conv.clone(),
            payload: serde_json::to_value(&payload).expect("plain data"),
            due_at: now,
            inbox_id: Some(inbox_id),
        });
    }
}
