//! The conversation state machine: one door in (`Session::handle`), outputs out.

use std::cell::Cell;
use std::ops::Deref;

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};

use crate::compile::{CallFlow, CompiledFlow, EffectSpec, Inner, Interactive, Kind, MessageSpec, Node, SetValue, Wait};
use crate::datetime::{Local, WEEKDAYS};
use crate::flow_set::{FlowSet, MAX_CALL_DEPTH};
use crate::state_json::{ObjectWriter, Reader};
use crate::template::Template;
use crate::value::Scope;
use crate::{
    Choice, EffectId, EffectKind, EffectOutcome, EffectRequest, EndReason, Input, ListRow, ListSection, Message,
    NodeId, Output, Timestamp, Turn,
};

/// The stored-state schema version this release writes and reads.
///
/// A new optional field that an absent value describes exactly (such as the call stack,
/// `c`, absent when no sub-flow runs) keeps the version: states written before it load
/// unchanged. A change to what an existing field means bumps it.
pub const STATE_VERSION: u32 = 1;
/// The most bytes of recent node ids a session keeps ([`Session::path`]); the oldest ids
/// drop out first, so the stored state stays bounded however long the conversation runs.
pub const PATH_MAX_BYTES: usize = 96;
/// Separates node ids in the stored path.
const PATH_SEPARATOR: char = '>';
const DEFAULT_MAX_STEPS: u32 = 100;
const DEFAULT_TTL_MILLIS: u64 = 24 * 60 * 60 * 1000;
/// How many of a turn's last steps are kept to name a loop when the step budget runs out.
const LOOP_WINDOW: usize = 64;
const RETRIES_EXHAUSTED_TEXT: &str =
    "Não consegui entender suas respostas. Vamos encerrar por aqui; envie uma nova mensagem para recomeçar.";
const CHOICE_ERROR_TEXT: &str = "Por favor, escolha uma das opções.";

/// How a new [`Session`] starts.
///
/// ```
/// use flowcore::SessionOptions;
/// let options = SessionOptions { seed: 7, ..SessionOptions::default() };
/// assert_eq!(options.max_steps, 100);
/// assert_eq!(options.ttl_millis, 24 * 60 * 60 * 1000);
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct SessionOptions {
    /// Seeds the session's random generator (`random` nodes). Same seed, same choices.
    pub seed: u64,
    /// Variables the session starts with (and starts with again after an end).
    pub variables: Map<String, Value>,
    /// How many nodes one input may run before the session ends with
    /// [`EndReason::StepBudgetExceeded`] (a loop that never waits). Default 100.
    pub max_steps: u32,
    /// How long a session may sit idle before it expires. Default 24 hours.
    pub ttl_millis: u64,
}

impl Default for SessionOptions {
    fn default() -> Self {
        SessionOptions { seed: 0, variables: Map::new(), max_steps: DEFAULT_MAX_STEPS, ttl_millis: DEFAULT_TTL_MILLIS }
    }
}

/// Where a session stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum SessionStatus {
    /// No input yet: the first inbound message starts the flow.
    #[serde(rename = "new")]
    NotStarted,
    /// Waiting for the contact's answer (a question or an interactive message).
    #[serde(rename = "input")]
    WaitingForInput,
    /// Waiting for [`Input::EffectResult`] for [`Session::pending_effect`].
    #[serde(rename = "effect")]
    WaitingForEffect,
    /// In a `delay`: waiting for an [`Input::Tick`] at or after [`Session::wake_at`].
    #[serde(rename = "sleep")]
    Sleeping,
    /// Handed off to a person: the session ignores inputs until the host closes it.
    #[serde(rename = "human")]
    HandedOff,
    /// The flow ended; the next inbound message starts it afresh.
    #[serde(rename = "end")]
    Ended,
}

impl SessionStatus {
    /// The name the stored state uses (the serde rename).
    fn stored_name(self) -> &'static str {
        match self {
            SessionStatus::NotStarted => "new",
            SessionStatus::WaitingForInput => "input",
            SessionStatus::WaitingForEffect => "effect",
            SessionStatus::Sleeping => "sleep",
            SessionStatus::HandedOff => "human",
            SessionStatus::Ended => "end",
        }
    }
}

/// Why [`Session::handle`] (or loading a state) refused an input. Nothing changed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SessionError {
    /// The session was started on another flow.
    #[error("the session belongs to flow {session:?}, not {flow:?}")]
    WrongFlow {
        /// The session's flow id.
        session: String,
        /// The id of the flow it was given.
        flow: String,
    },
    /// The session waits at a node the flow does not have (the flow changed).
    #[error("the session waits at node {node:?}, which the flow does not have")]
    MissingNode {
        /// The node id stored in the session.
        node: String,
    },
    /// The session waits at a node that no longer waits that way (the flow changed).
    #[error("the session waits at node {node:?} for {waiting}, but that node is now a {found} node")]
    NodeChanged {
        /// The node id stored in the session.
        node: String,
        /// What the session waits for (`"input"`, `"an effect"`, `"a delay"`).
        waiting: &'static str,
        /// The node's type in the given flow.
        found: &'static str,
    },
    /// An effect result for an id this session never issued.
    #[error("no effect with id {id} was requested")]
    UnknownEffect {
        /// The id in the input.
        id: EffectId,
    },
    /// An effect result for an id that was already answered (or never awaited).
    #[error("effect {id} is not awaited (already answered, or fire-and-forget)")]
    EffectNotAwaited {
        /// The id in the input.
        id: EffectId,
    },
    /// A message arrived while the session waits for an effect's result; feed the result
    /// first, then the message.
    #[error("the session is waiting for the result of effect {id}")]
    AwaitingEffect {
        /// The effect the session waits for.
        id: EffectId,
    },
    /// A stored state from a release this one cannot read.
    #[error("unsupported session state version {found} (this flowcore reads version {supported})")]
    UnsupportedVersion {
        /// The version in the stored state.
        found: u32,
        /// The version this release reads ([`STATE_VERSION`]).
        supported: u32,
    },
    /// A stored state that is not a session.
    #[error("invalid session state: {message}")]
    InvalidState {
        /// What the parser said.
        message: String,
    },
    /// A `call_flow` node ran (or the session is inside a sub-flow) without a set of flows
    /// to find the called flow in: use [`Session::handle_in`] or [`Session::check_in`].
    #[error("node {node:?} calls flow {flow:?}: run the session with a set of flows (handle_in)")]
    FlowSetRequired {
        /// The `call_flow` node.
        node: String,
        /// The flow it calls.
        flow: String,
    },
    /// The set of flows lacks a flow the session needs: its own, or one it calls.
    #[error("flow {flow:?} is not in the set of flows")]
    UnknownFlow {
        /// The missing flow's id.
        flow: String,
    },
    /// A `call_flow` node would nest more than [`MAX_CALL_DEPTH`] calls.
    #[error("sub-flow calls nest deeper than {max}: {}", chain.join(" → "))]
    CallDepthExceeded {
        /// The flow ids from the session's own flow to the one that could not be called.
        chain: Vec<String>,
        /// The bound ([`MAX_CALL_DEPTH`]).
        max: usize,
    },
}

/// One conversation's state: where it is in the flow, its variables, what it waits for.
///
/// A `Session` is plain data (serde, `Clone`, `PartialEq`): the host stores it between
/// inputs — as JSON it is a small object with short field names. It never does I/O and
/// never reads a clock; everything comes in through [`Session::handle`].
///
/// # Driving a session
///
/// 1. Create it with [`Session::new`]; the first inbound message starts the flow at its
///    start node (that message is not an answer) and runs until input is needed.
/// 2. Feed every event to [`handle`](Session::handle) with the current time (to
///    [`handle_in`](Session::handle_in) with a [`FlowSet`] when the flow has `call_flow`
///    nodes); do what the returned [`Turn`] says, in order: send [`Output::Send`]
///    messages, perform [`Output::Effect`]s, pass [`Output::Handoff`] to a person, note
///    [`Output::End`].
/// 3. An effect that [`expects_result`](EffectRequest::expects_result) must be answered
///    with [`Input::EffectResult`] carrying its id before any other message is fed
///    (other messages get [`SessionError::AwaitingEffect`]; keep them and feed them after).
/// 4. When [`Turn::wake_at`] is `Some(t)`, feed [`Input::Tick`] once `now >= t`
///    (a `delay`, or a question's `timeoutSeconds`). Early ticks do nothing.
/// 5. Persist the session after every call. The same flow, state, input and `now`
///    always give the same outputs and the same new state.
///
/// ```
/// use flowcore::{Flow, Input, Message, Output, Session, SessionOptions, SessionStatus, Timestamp};
/// let flow = Flow::from_json(include_str!("../tests/flows/lead.json"))?.compile().unwrap();
/// let now = Timestamp::from_unix_seconds(1_700_000_000);
/// let mut session = Session::new(&flow, SessionOptions::default());
/// let turn = session.handle(&flow, Input::text("oi"), now).unwrap();
/// let texts: Vec<&str> = turn.outputs.iter().filter_map(|o| match o {
///     Output::Send { message: Message::Text { text }, .. } => Some(text.as_str()),
///     _ => None,
/// }).collect();
/// assert_eq!(texts, ["Olá! Aqui é a Acme.", "Qual é o seu nome?"]);
/// assert_eq!(session.status(), SessionStatus::WaitingForInput);
/// session.handle(&flow, Input::text("Maria"), now).unwrap();
/// assert_eq!(session.variable("name"), Some(&serde_json::json!("Maria")));
///
/// // Store it and carry on later.
/// let stored = serde_json::to_string(&session).unwrap();
/// let mut session: Session = Session::from_json(&stored).unwrap();
/// session.handle(&flow, Input::text("30"), now).unwrap();
/// assert_eq!(session.current_node(), Some("ask_email"));
/// # Ok::<(), flowcore::FlowError>(())
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Session {
    #[serde(rename = "v", default = "default_version", deserialize_with = "de_version")]
    version: u32,
    #[serde(rename = "f")]
    flow: String,
    #[serde(rename = "s")]
    status: SessionStatus,
    #[serde(rename = "n", default, skip_serializing_if = "Option::is_none")]
    node: Option<NodeId>,
    #[serde(rename = "d", default, skip_serializing_if = "Map::is_empty")]
    vars: Map<String, Value>,
    #[serde(rename = "i", default, skip_serializing_if = "Map::is_empty")]
    initial: Map<String, Value>,
    #[serde(rename = "r", default, skip_serializing_if = "is_zero_u32")]
    retries: u32,
    #[serde(rename = "e", default, skip_serializing_if = "Option::is_none")]
    pending: Option<EffectId>,
    #[serde(rename = "k", default, skip_serializing_if = "is_zero_u64")]
    effects_issued: u64,
    #[serde(rename = "g", default, skip_serializing_if = "is_zero_u64")]
    rng: u64,
    #[serde(rename = "w", default, skip_serializing_if = "Option::is_none")]
    wake_at: Option<Timestamp>,
    #[serde(rename = "t", default, skip_serializing_if = "Option::is_none")]
    last_active: Option<Timestamp>,
    #[serde(rename = "p", default, skip_serializing_if = "String::is_empty", deserialize_with = "de_path")]
    path: String,
    #[serde(rename = "m", default = "default_max_steps", skip_serializing_if = "is_default_max_steps")]
    max_steps: u32,
    #[serde(rename = "x", default = "default_ttl", skip_serializing_if = "is_default_ttl")]
    ttl_millis: u64,
    /// The running `call_flow` calls, outermost first; empty outside sub-flows.
    #[serde(rename = "c", default, skip_serializing_if = "Vec::is_empty")]
    calls: Vec<CallFrame>,
}

/// One running `call_flow` call: the flow it runs, where the caller continues, and the
/// caller's variables, put back when the sub-flow ends.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct CallFrame {
    /// The called flow's id.
    #[serde(rename = "f")]
    flow: String,
    /// The caller's `call_flow` node.
    #[serde(rename = "n")]
    node: NodeId,
    /// The caller's variables while the sub-flow runs.
    #[serde(rename = "d", default, skip_serializing_if = "Map::is_empty")]
    vars: Map<String, Value>,
}

/// The flows one turn runs in: the running one (nodes are read through `Deref`, so node
/// code reads the same in a sub-flow), the session's own, the set calls look in, and the
/// first failure a call or return met (the turn is then undone).
#[derive(Clone, Copy)]
struct Flows<'a> {
    flow: &'a Inner,
    root: &'a Inner,
    set: Option<&'a FlowSet>,
    /// Boxed: the common turn, which calls nothing, only checks a pointer.
    failure: &'a Cell<Option<Box<SessionError>>>,
}

impl Deref for Flows<'_> {
    type Target = Inner;

    fn deref(&self) -> &Inner {
        self.flow
    }
}

impl<'a> Flows<'a> {
    fn running(&self, flow: &'a Inner) -> Flows<'a> {
        Flows { flow, ..*self }
    }

    /// The flow with this id: the session's own or one from the set.
    fn find(&self, id: &str) -> Option<&'a Inner> {
        if *self.root.id == *id {
            return Some(self.root);
        }
        self.set.and_then(|set| set.get(id)).map(|f| &*f.inner)
    }

    /// Records why the turn cannot go on (the first reason wins).
    fn fail<T>(&self, error: SessionError) -> Option<T> {
        let first = self.failure.take().unwrap_or_else(|| Box::new(error));
        self.failure.set(Some(first));
        None
    }
}

fn default_version() -> u32 {
    STATE_VERSION
}
fn default_max_steps() -> u32 {
    DEFAULT_MAX_STEPS
}
fn default_ttl() -> u64 {
    DEFAULT_TTL_MILLIS
}
fn is_zero_u32(v: &u32) -> bool {
    *v == 0
}
fn is_zero_u64(v: &u64) -> bool {
    *v == 0
}
fn is_default_max_steps(v: &u32) -> bool {
    *v == DEFAULT_MAX_STEPS
}
fn is_default_ttl(v: &u64) -> bool {
    *v == DEFAULT_TTL_MILLIS
}

fn de_version<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    let v = u32::deserialize(d)?;
    if v == STATE_VERSION {
        Ok(v)
    } else {
        Err(serde::de::Error::custom(format!(
            "unsupported session state version {v} (this flowcore reads version {STATE_VERSION})"
        )))
    }
}

/// Reads the path with room for a turn's new node ids, so appending them does not move it.
fn de_path<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    struct Visitor;
    impl serde::de::Visitor<'_> for Visitor {
        type Value = String;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a string")
        }

        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<String, E> {
            let mut path = String::with_capacity(v.len() + PATH_MAX_BYTES);
            path.push_str(v);
            Ok(path)
        }
    }
    d.deserialize_str(Visitor)
}

impl Session {
    /// A new session on `flow`, not started yet: the first inbound message starts it.
    pub fn new(flow: &CompiledFlow, options: SessionOptions) -> Session {
        Session {
            version: STATE_VERSION,
            flow: flow.id().to_string(),
            status: SessionStatus::NotStarted,
            node: None,
            vars: options.variables.clone(),
            initial: options.variables,
            retries: 0,
            pending: None,
            effects_issued: 0,
            rng: options.seed,
            wake_at: None,
            last_active: None,
            path: String::new(),
            max_steps: options.max_steps,
            ttl_millis: options.ttl_millis,
            calls: Vec::new(),
        }
    }

    /// Loads a stored session, with a typed error for a state version this release cannot
    /// read ([`SessionError::UnsupportedVersion`]).
    ///
    /// ```
    /// use flowcore::{Session, SessionError};
    /// let err = Session::from_json(r#"{"v":9,"f":"lead","s":"new","shape":"of the future"}"#).unwrap_err();
    /// assert_eq!(err, SessionError::UnsupportedVersion { found: 9, supported: 1 });
    /// ```
    pub fn from_json(text: &str) -> Result<Session, SessionError> {
        if let Some(session) = Session::from_compact(text) {
            return Ok(session);
        }
        serde_json::from_str(text).map_err(|e| {
            #[derive(Deserialize)]
            struct Peek {
                v: Option<u32>,
            }
            match serde_json::from_str::<Peek>(text) {
                Ok(Peek { v: Some(found) }) if found != STATE_VERSION => {
                    SessionError::UnsupportedVersion { found, supported: STATE_VERSION }
                }
                _ => SessionError::InvalidState { message: e.to_string() },
            }
        })
    }

    /// Reads the common state the way [`Session::to_json`] writes it, without serde: the
    /// keys in its order, no whitespace, strings without escapes, variables that are
    /// strings, integers, booleans or null, no call stack. `None` for anything else
    /// (including every malformed text), which serde_json then reads, or rejects.
    fn from_compact(text: &str) -> Option<Session> {
        let mut r = Reader::new(text);
        r.eat(b'{')?;
        if r.key()? != b'v' || r.uint()? != u64::from(STATE_VERSION) {
            return None;
        }
        r.eat(b',')?;
        if r.key()? != b'f' {
            return None;
        }
        let flow = r.str()?.to_string();
        r.eat(b',')?;
        if r.key()? != b's' {
            return None;
        }
        let status = match r.str()? {
            "new" => SessionStatus::NotStarted,
            "input" => SessionStatus::WaitingForInput,
            "effect" => SessionStatus::WaitingForEffect,
            "sleep" => SessionStatus::Sleeping,
            "human" => SessionStatus::HandedOff,
            "end" => SessionStatus::Ended,
            _ => return None,
        };
        let mut s = Session {
            version: STATE_VERSION,
            flow,
            status,
            node: None,
            vars: Map::new(),
            initial: Map::new(),
            retries: 0,
            pending: None,
            effects_issued: 0,
            rng: 0,
            wake_at: None,
            last_active: None,
            path: String::new(),
            max_steps: DEFAULT_MAX_STEPS,
            ttl_millis: DEFAULT_TTL_MILLIS,
            calls: Vec::new(),
        };
        // The optional keys, in the order `to_json` writes them; each at most once.
        const ORDER: &[u8] = b"ndirekgwtpmx";
        let mut next = 0;
        while r.eat(b',').is_some() {
            let key = r.key()?;
            next += ORDER.get(next..)?.iter().position(|&k| k == key)? + 1;
            match key {
                b'n' => s.node = Some(NodeId::from(r.str()?)),
                b'd' => s.vars = r.map()?,
                b'i' => s.initial = r.map()?,
                b'r' => s.retries = u32::try_from(r.uint()?).ok()?,
                b'e' => s.pending = Some(EffectId(r.uint()?)),
                b'k' => s.effects_issued = r.uint()?,
                b'g' => s.rng = r.uint()?,
                b'w' => s.wake_at = Some(Timestamp::from_unix_millis(r.int()?)),
                b't' => s.last_active = Some(Timestamp::from_unix_millis(r.int()?)),
                b'p' => {
                    let path = r.str()?;
                    s.path = String::with_capacity(path.len() + PATH_MAX_BYTES);
                    s.path.push_str(path);
                }
                b'm' => s.max_steps = u32::try_from(r.uint()?).ok()?,
                _ => s.ttl_millis = r.uint()?,
            }
        }
        r.eat(b'}')?;
        r.end()?;
        Some(s)
    }

    /// The state as compact JSON (what [`Session::from_json`] reads): the same text as
    /// `serde_json::to_string(&session)`, written faster.
    ///
    /// ```
    /// # use flowcore::{Flow, Input, Session, SessionOptions, Timestamp};
    /// # let flow = Flow::from_json(include_str!("../tests/flows/lead.json"))?.compile().unwrap();
    /// let mut session = Session::new(&flow, SessionOptions::default());
    /// session.handle(&flow, Input::text("oi"), Timestamp::from_unix_seconds(1_700_000_000)).unwrap();
    /// assert_eq!(session.to_json(), serde_json::to_string(&session).unwrap());
    /// assert_eq!(Session::from_json(&session.to_json()), Ok(session));
    /// # Ok::<(), flowcore::FlowError>(())
    /// ```
    pub fn to_json(&self) -> String {
        // Every field, by name: a new field does not compile until it is written here too,
        // in the order and with the skip rules of the serde attributes above.
        let Session {
            version,
            flow,
            status,
            node,
            vars,
            initial,
            retries,
            pending,
            effects_issued,
            rng,
            wake_at,
            last_active,
            path,
            max_steps,
            ttl_millis,
            calls,
        } = self;
        let mut w = ObjectWriter::with_capacity(128 + path.len() + 32 * vars.len());
        w.number("v", version);
        w.str("f", flow);
        w.str("s", status.stored_name());
        if let Some(node) = node {
            w.str("n", node.as_str());
        }
        if !vars.is_empty() {
            w.map("d", vars);
        }
        if !initial.is_empty() {
            w.map("i", initial);
        }
        if !is_zero_u32(retries) {
            w.number("r", retries);
        }
        if let Some(id) = pending {
            w.number("e", id.0);
        }
        if !is_zero_u64(effects_issued) {
            w.number("k", effects_issued);
        }
        if !is_zero_u64(rng) {
            w.number("g", rng);
        }
        if let Some(t) = wake_at {
            w.number("w", t.as_unix_millis());
        }
        if let Some(t) = last_active {
            w.number("t", t.as_unix_millis());
        }
        if !path.is_empty() {
            w.str("p", path);
        }
        if !is_default_max_steps(max_steps) {
            w.number("m", max_steps);
        }
        if !is_default_ttl(ttl_millis) {
            w.number("x", ttl_millis);
        }
        if !calls.is_empty() {
            w.value("c", calls);
        }
        // Serialising plain data with string keys cannot fail.
        w.finish().unwrap_or_else(|| serde_json::to_string(self).unwrap_or_default())
    }

    /// The stored-state schema version of this session.
    pub fn state_version(&self) -> u32 {
        self.version
    }

    /// Where the session stands.
    pub fn status(&self) -> SessionStatus {
        self.status
    }

    /// When the session wants an [`Input::Tick`], if ever.
    pub fn wake_at(&self) -> Option<Timestamp> {
        self.wake_at
    }

    /// The node the session waits at (or ended at), in the flow that runs: inside a
    /// sub-flow, a node of [`current_flow_id`](Session::current_flow_id).
    pub fn current_node(&self) -> Option<&str> {
        self.node.as_ref().map(NodeId::as_str)
    }

    /// A variable of the session (not the flow's declared defaults). Inside a sub-flow,
    /// the sub-flow's variables; the caller's come back when it returns.
    pub fn variable(&self, name: &str) -> Option<&Value> {
        self.vars.get(name)
    }

    /// The session's variables, by name.
    pub fn variables(&self) -> impl Iterator<Item = (&str, &Value)> {
        self.vars.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// Sets a variable from outside the flow (a contact's profile name, say).
    pub fn set_variable(&mut self, name: impl Into<String>, value: Value) {
        self.vars.insert(name.into(), value);
    }

    /// The id of the flow this session runs: the one it was created on, also while a
    /// sub-flow runs (see [`current_flow_id`](Session::current_flow_id)).
    pub fn flow_id(&self) -> &str {
        &self.flow
    }

    /// The id of the flow running now: the innermost called flow inside a sub-flow, else
    /// [`flow_id`](Session::flow_id). A session that ended inside a sub-flow (retries
    /// exhausted, say) keeps naming it, with [`call_stack`](Session::call_stack), until
    /// the next message starts its own flow afresh.
    pub fn current_flow_id(&self) -> &str {
        self.calls.last().map_or(&self.flow, |call| &call.flow)
    }

    /// The running `call_flow` calls, outermost first, each as the calling flow's id and
    /// its `call_flow` node's id. Empty outside sub-flows.
    ///
    /// ```
    /// use flowcore::{Flow, FlowSet, Input, Session, SessionOptions, Timestamp};
    /// let caller = Flow::from_json(include_str!("../tests/flows/cadastro.json"))?.compile().unwrap();
    /// let callee = Flow::from_json(include_str!("../tests/flows/endereco.json"))?.compile().unwrap();
    /// let flows = FlowSet::from_iter([caller.clone(), callee]);
    /// let now = Timestamp::from_unix_seconds(1_700_000_000);
    /// let mut session = Session::new(&caller, SessionOptions::default());
    /// session.handle_in(&flows, Input::text("oi"), now).unwrap();
    /// session.handle_in(&flows, Input::text("Ana"), now).unwrap();
    /// assert_eq!(session.call_stack().collect::<Vec<_>>(), [("cadastro", "endereco")]);
    /// assert_eq!((session.flow_id(), session.current_flow_id()), ("cadastro", "endereco"));
    /// assert_eq!(session.current_node(), Some("ask_cep"));
    /// # Ok::<(), flowcore::FlowError>(())
    /// ```
    pub fn call_stack(&self) -> impl Iterator<Item = (&str, &str)> {
        let callers = std::iter::once(self.flow.as_str()).chain(self.calls.iter().map(|c| c.flow.as_str()));
        callers.zip(self.calls.iter().map(|c| c.node.as_str()))
    }

    /// The effect the session waits for, if any.
    pub fn pending_effect(&self) -> Option<EffectId> {
        self.pending
    }

    /// The last visited node ids, oldest first: as many of the most recent as fit in
    /// [`PATH_MAX_BYTES`] (at least the last one). Diagnostic information: stored as one
    /// string joined by `>`, so an id that itself contains `>` reads as two.
    pub fn path(&self) -> impl Iterator<Item = &str> {
        self.path.split(PATH_SEPARATOR).filter(|s| !s.is_empty())
    }

    /// Forgets the visited node ids, so that after the next [`Session::handle`] the
    /// [`Session::path`] holds only that turn's nodes: how a test runner measures coverage.
    ///
    /// ```
    /// use flowcore::{Flow, Input, Session, SessionOptions, Timestamp};
    /// let flow = Flow::from_json(r#"{"id": "f", "nodes": [
    ///     {"id": "s", "type": "start"},
    ///     {"id": "ask", "type": "question", "data": {"content": "Nome?", "variableName": "name"}},
    ///     {"id": "bye", "type": "end", "data": {"content": "Tchau"}}],
    ///   "edges": [{"id": "e1", "source": "s", "target": "ask"}, {"id": "e2", "source": "ask", "target": "bye"}]
    /// }"#)?.compile().expect("valid flow");
    /// let mut session = Session::new(&flow, SessionOptions::default());
    /// let now = Timestamp::from_unix_seconds(1_700_000_000);
    /// session.handle(&flow, Input::text("oi"), now).unwrap();
    /// assert_eq!(session.path().collect::<Vec<_>>(), ["s", "ask"]);
    /// session.clear_path();
    /// assert_eq!(session.path().count(), 0);
    /// session.handle(&flow, Input::text("Ana"), now).unwrap();
    /// assert_eq!(session.path().collect::<Vec<_>>(), ["bye"]);
    /// # Ok::<(), flowcore::FlowError>(())
    /// ```
    pub fn clear_path(&mut self) {
        self.path.clear();
    }

    /// The `now` of the last input that did something.
    pub fn last_active(&self) -> Option<Timestamp> {
        self.last_active
    }

    /// When an active session (waiting, sleeping or handed off) expires: its TTL after the
    /// last activity, or after its wake-up time if that is later.
    pub fn expires_at(&self) -> Option<Timestamp> {
        if matches!(self.status, SessionStatus::NotStarted | SessionStatus::Ended) {
            return None;
        }
        let base = match (self.last_active, self.wake_at) {
            (Some(a), Some(w)) => a.max(w),
            (a, w) => a.or(w)?,
        };
        Some(base.saturating_add_millis(self.ttl_millis))
    }

    /// Whether the session has been idle past its TTL at `now`. An expired session ends
    /// with [`EndReason::Expired`] on its next message, which then starts the flow afresh.
    pub fn is_expired(&self, now: Timestamp) -> bool {
        self.expires_at().is_some_and(|t| now > t)
    }

    /// Ends the session from outside (a person closed a handed-off conversation, say).
    /// The next inbound message starts the flow afresh. Produces no output.
    pub fn close(&mut self) {
        self.status = SessionStatus::Ended;
        self.pending = None;
        self.wake_at = None;
        self.retries = 0;
        self.calls.clear();
    }

    /// Checks that this session can run on `flow`: same flow id, and the node it waits at
    /// exists and still waits the same way. Hosts call it when a flow's version changed.
    /// A session waiting inside a sub-flow needs the called flows:
    /// [`check_in`](Session::check_in) (here it gets [`SessionError::FlowSetRequired`]).
    pub fn check_flow(&self, flow: &CompiledFlow) -> Result<(), SessionError> {
        self.resolve(&flow.inner, None).map(|_| ())
    }

    /// [`check_flow`](Session::check_flow) with the flows it calls: the session's own flow
    /// from `flows`, then every running call's node and called flow, then the node the
    /// session waits at in the innermost flow.
    pub fn check_in(&self, flows: &FlowSet) -> Result<(), SessionError> {
        let root = flows.get(&self.flow).ok_or_else(|| SessionError::UnknownFlow { flow: self.flow.clone() })?;
        self.resolve(&root.inner, Some(flows)).map(|_| ())
    }

    /// [`handle`](Session::handle) for flows with `call_flow` nodes: the session's own flow
    /// and the flows it calls come from `flows`.
    ///
    /// A `call_flow` node renders its `data.inputs` templates in the caller's scope; they
    /// are all the variables the sub-flow starts with (its declared defaults apply). The
    /// sub-flow runs in the same turn, may wait for input and effects, and may call
    /// further, up to [`MAX_CALL_DEPTH`] nested calls. When it ends — an `end` node (whose
    /// message is still sent) or a node with no way on — it returns instead of ending the
    /// session: the caller's variables come back, each `data.outputs` entry copies a
    /// sub-flow variable into a caller variable (a variable the sub-flow never set leaves
    /// the caller's as it was), and the caller goes on by the node's `return` edge (the
    /// node's default edge). Other endings (retries exhausted, a failed effect, expiry)
    /// end the whole session.
    ///
    /// A call this turn cannot make fails the whole turn with a typed error, and the
    /// session is unchanged: [`SessionError::UnknownFlow`],
    /// [`SessionError::CallDepthExceeded`].
    ///
    /// ```
    /// use flowcore::{Flow, FlowSet, Input, Session, SessionOptions, Timestamp};
    /// let caller = Flow::from_json(include_str!("../tests/flows/cadastro.json"))?.compile().unwrap();
    /// let callee = Flow::from_json(include_str!("../tests/flows/endereco.json"))?.compile().unwrap();
    /// let flows = FlowSet::from_iter([caller.clone(), callee]);
    /// let now = Timestamp::from_unix_seconds(1_700_000_000);
    /// let mut session = Session::new(&caller, SessionOptions::default());
    /// for text in ["oi", "Ana", "01310-100", "São Paulo"] {
    ///     session.handle_in(&flows, Input::text(text), now).unwrap();
    /// }
    /// assert_eq!(session.current_flow_id(), "cadastro");
    /// assert_eq!(session.variable("cidade"), Some(&serde_json::json!("São Paulo")));
    /// # Ok::<(), flowcore::FlowError>(())
    /// ```
    pub fn handle_in(&mut self, flows: &FlowSet, input: Input, now: Timestamp) -> Result<Turn, SessionError> {
        let root = flows.get(&self.flow).ok_or_else(|| SessionError::UnknownFlow { flow: self.flow.clone() })?;
        self.handle_turn(&root.inner, Some(flows), input, now)
    }

    /// Feeds one input: the one door in. Returns what to do, and when to tick next.
    ///
    /// Errors are for inputs that do not fit the state (see [`SessionError`]); on an
    /// error the session is unchanged. A flow with `call_flow` nodes runs with
    /// [`handle_in`](Session::handle_in); here a call fails the turn with
    /// [`SessionError::FlowSetRequired`].
    #[inline]
    pub fn handle(&mut self, flow: &CompiledFlow, input: Input, now: Timestamp) -> Result<Turn, SessionError> {
        self.handle_turn(&flow.inner, None, input, now)
    }

    fn handle_turn(
        &mut self,
        root: &Inner,
        set: Option<&FlowSet>,
        input: Input,
        now: Timestamp,
    ) -> Result<Turn, SessionError> {
        let (running, current) = self.resolve(root, set)?;
        let failure = Cell::new(None);
        let flows = Flows { flow: running, root, set, failure: &failure };
        let f = &flows;
        // Only a turn that can call or return can fail midway; it keeps a copy to undo.
        let before = (!self.calls.is_empty() || !running.called_flows.is_empty()).then(|| self.clone());
        let mut out = Vec::new();
        match input {
            Input::EffectResult { id, result } => {
                let cur = match current {
                    Some(cur) if self.status == SessionStatus::WaitingForEffect && self.pending == Some(id) => cur,
                    _ if id.0 >= 1 && id.0 <= self.effects_issued => return Err(SessionError::EffectNotAwaited { id }),
                    _ => return Err(SessionError::UnknownEffect { id }),
                };
                self.pending = None;
                self.last_active = Some(now);
                self.effect_result(f, cur, result, now, &mut out);
            }
            Input::Tick => self.tick(f, current, now, &mut out),
            // Events about other messages (and unknown ones) start nothing; a waiting
            // node takes them as an invalid answer, below.
            ref event if is_side_event(event) && self.status != SessionStatus::WaitingForInput => {}
            message => {
                if self.status == SessionStatus::WaitingForEffect {
                    return Err(SessionError::AwaitingEffect { id: self.pending.unwrap_or(EffectId(0)) });
                }
                let mut current = current;
                if self.is_expired(now) {
                    let node = current.map(|c| f.node(c));
                    self.finish(node, EndReason::Expired, &mut out);
                    current = None;
                }
                match (self.status, current) {
                    // An expired session ends on a side event too, but does not start again.
                    (SessionStatus::NotStarted | SessionStatus::Ended, _) if !is_side_event(&message) => {
                        self.restart();
                        self.last_active = Some(now);
                        let f = &f.running(f.root);
                        self.run(f, f.start, now, &mut out);
                    }
                    (SessionStatus::WaitingForInput, Some(cur)) => {
                        self.last_active = Some(now);
                        self.answer(f, cur, &message, now, &mut out);
                    }
                    // Sleeping (a delay) and handed-off sessions ignore messages.
                    _ => {}
                }
            }
        }
        if let Some(error) = failure.take() {
            if let Some(before) = before {
                *self = before;
            }
            return Err(*error);
        }
        Ok(Turn { outputs: out, wake_at: self.wake_at })
    }

    /// Checks the flow id, follows the running calls and finds the flow that runs and the
    /// node an active session waits at in it.
    fn resolve<'a>(&self, root: &'a Inner, set: Option<&'a FlowSet>) -> Result<(&'a Inner, Option<u32>), SessionError> {
        if *self.flow != *root.id {
            return Err(SessionError::WrongFlow { session: self.flow.clone(), flow: root.id.to_string() });
        }
        let waiting = match self.status {
            SessionStatus::WaitingForInput => "input",
            SessionStatus::WaitingForEffect => "an effect",
            SessionStatus::Sleeping => "a delay",
            _ => return Ok((root, None)),
        };
        let mut f = root;
        for call in &self.calls {
            let index = f
                .lookup(call.node.as_str())
                .ok_or_else(|| SessionError::MissingNode { node: call.node.to_string() })?;
            let node = f.node(index);
            if !matches!(node.kind, Kind::CallFlow(_)) {
                return Err(SessionError::NodeChanged {
                    node: call.node.to_string(),
                    waiting: "a sub-flow",
                    found: node.type_name,
                });
            }
            let Some(set) = set else {
                return Err(SessionError::FlowSetRequired { node: call.node.to_string(), flow: call.flow.clone() });
            };
            f = set
                .get(&call.flow)
                .map(|c| &*c.inner)
                .ok_or_else(|| SessionError::UnknownFlow { flow: call.flow.clone() })?;
        }
        let Some(id) = &self.node else {
            return Err(SessionError::InvalidState { message: format!("the session waits for {waiting} at no node") });
        };
        let index = f.lookup(id.as_str()).ok_or_else(|| SessionError::MissingNode { node: id.to_string() })?;
        let node = f.node(index);
        let fits = match self.status {
            SessionStatus::WaitingForInput => {
                matches!(node.kind, Kind::Question(_) | Kind::Interactive(_) | Kind::WhatsappFlow(_))
            }
            SessionStatus::WaitingForEffect => matches!(node.kind, Kind::Effect(_)),
            _ => matches!(node.kind, Kind::Delay { .. }),
        };
        if !fits {
            return Err(SessionError::NodeChanged { node: id.to_string(), waiting, found: node.type_name });
        }
        Ok((f, Some(index)))
    }

    fn restart(&mut self) {
        self.vars.clone_from(&self.initial);
        self.retries = 0;
        self.pending = None;
        self.wake_at = None;
        self.node = None;
        self.path.clear();
        self.calls.clear();
    }

    fn scope<'a>(&'a self, f: &'a Inner) -> Scope<'a> {
        Scope { vars: &self.vars, defaults: &f.defaults }
    }

    fn set_var(&mut self, name: &str, value: Value) {
        match self.vars.get_mut(name) {
            Some(slot) => *slot = value,
            None => {
                self.vars.insert(name.to_string(), value);
            }
        }
    }

    fn next_random(&mut self) -> u64 {
        // splitmix64
        self.rng = self.rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    #[cfg(test)]
    fn record(&mut self, node: &Node) {
        let mut start = 0;
        self.record_from(node.id.as_str(), &mut start);
        self.path.drain(..start);
    }

    /// Appends `id` to the path, whose current value is `self.path[*start..]`: dropping
    /// ids from the front only moves `start`, so a turn's steps cost an append each and
    /// the caller removes the dropped prefix once (see [`Session::run`]).
    fn record_from(&mut self, id: &str, start: &mut usize) {
        if self.path.len() > *start {
            self.path.push(PATH_SEPARATOR);
        }
        let id_at = self.path.len();
        self.path.push_str(id);
        let len = self.path.len() - *start;
        if len > PATH_MAX_BYTES {
            let from = *start + (len - PATH_MAX_BYTES);
            // Drop whole ids from the front; keep at least the newest one.
            // (Plain byte loops: the strings are short, and `>` is ASCII.)
            let sep = PATH_SEPARATOR as u8;
            let cut = self.path.get(from..).and_then(|rest| rest.bytes().position(|b| b == sep)).map(|i| from + i + 1);
            // The last separator: inside the new id, else the one just before it (when
            // there was none, `id_at == *start`: nothing before the id to drop).
            let last = id.bytes().rposition(|b| b == sep).map_or(id_at, |i| id_at + i + 1);
            *start = cut.unwrap_or(last).min(last);
            if *start > 4 * PATH_MAX_BYTES {
                self.path.drain(..*start);
                *start = 0;
            }
        }
    }

    fn finish(&mut self, node: Option<&Node>, reason: EndReason, out: &mut Vec<Output>) {
        out.push(Output::End { node: node.map(|n| n.id.clone()), reason });
        self.status = SessionStatus::Ended;
        if let Some(n) = node {
            self.node = Some(n.id.clone());
        }
        self.pending = None;
        self.wake_at = None;
        self.retries = 0;
    }

    fn send(out: &mut Vec<Output>, node: &Node, message: Message) {
        out.push(Output::Send { node: node.id.clone(), message });
    }

    fn send_text(&self, f: &Inner, out: &mut Vec<Output>, node: &Node, t: &Template) {
        Session::send(out, node, Message::Text { text: t.render(&self.scope(f)) });
    }

    /// Goes on from `node` to `next`; when there is no way on, the running flow ends there.
    fn go(&mut self, f: &Flows<'_>, node: u32, next: Option<u32>, now: Timestamp, out: &mut Vec<Output>) {
        match next {
            Some(n) => self.run(f, n, now, out),
            None => {
                if let Some((caller, at)) = self.flow_completed(f, f.flow, node, out) {
                    self.run(&f.running(caller), at, now, out);
                }
            }
        }
    }

    /// Runs a `call_flow` node: enters the called flow with its inputs, and gives the
    /// flow to run on in; `None` when the call failed (recorded in `f`).
    fn enter_call<'a>(&mut self, f: &Flows<'a>, caller: &Inner, node: &Node, call: &CallFlow) -> Option<&'a Inner> {
        let Some(set) = f.set else {
            return f.fail(SessionError::FlowSetRequired { node: node.id.to_string(), flow: call.flow.to_string() });
        };
        let Some(callee) = set.get(&call.flow) else {
            return f.fail(SessionError::UnknownFlow { flow: call.flow.to_string() });
        };
        if self.calls.len() >= MAX_CALL_DEPTH {
            let mut chain: Vec<String> = self.call_stack().map(|(flow, _)| flow.to_string()).collect();
            chain.push(self.current_flow_id().to_string());
            chain.push(call.flow.to_string());
            return f.fail(SessionError::CallDepthExceeded { chain, max: MAX_CALL_DEPTH });
        }
        let scope = self.scope(caller);
        let inputs: Map<String, Value> =
            call.inputs.iter().map(|(name, t)| (name.to_string(), t.render(&scope))).collect();
        let vars = std::mem::replace(&mut self.vars, inputs);
        self.calls.push(CallFrame { flow: call.flow.to_string(), node: node.id.clone(), vars });
        Some(&callee.inner)
    }

    /// The running flow `f` ended at node `at`. In a sub-flow it returns: the caller's
    /// variables come back with the call's outputs copied in, and this gives the flow and
    /// node to go on at (returning further while a call node has no way on). Otherwise, or
    /// when a caller is gone (recorded in `flows`), the session ends.
    fn flow_completed<'a>(
        &mut self,
        flows: &Flows<'a>,
        mut f: &'a Inner,
        mut at: u32,
        out: &mut Vec<Output>,
    ) -> Option<(&'a Inner, u32)> {
        loop {
            let Some(frame) = self.calls.pop() else {
                self.finish(Some(f.node(at)), EndReason::Completed, out);
                return None;
            };
            let caller_id = self.current_flow_id();
            // `resolve` checked every running call's node at the turn's start.
            let Some((caller, index, call)) = flows.find(caller_id).and_then(|caller| {
                let index = caller.lookup(frame.node.as_str())?;
                match &caller.node(index).kind {
                    Kind::CallFlow(call) => Some((caller, index, call)),
                    _ => None,
                }
            }) else {
                return flows.fail(SessionError::MissingNode { node: frame.node.to_string() });
            };
            let mut vars = frame.vars;
            let scope = self.scope(f);
            for (name, path) in call.outputs.iter() {
                if let Some(value) = scope.get(path) {
                    vars.insert(name.to_string(), value.clone());
                }
            }
            self.vars = vars;
            f = caller;
            at = index;
            if let Some(next) = caller.node(index).next {
                return Some((caller, next));
            }
        }
    }

    fn tick(&mut self, f: &Flows<'_>, current: Option<u32>, now: Timestamp, out: &mut Vec<Output>) {
        let (Some(wake), Some(cur)) = (self.wake_at, current) else { return };
        if now < wake {
            return;
        }
        self.wake_at = None;
        self.last_active = Some(now);
        let node = f.node(cur);
        match (&node.kind, self.status) {
            (Kind::Delay { .. }, SessionStatus::Sleeping) => self.go(f, cur, node.next, now, out),
            (Kind::Question(q), SessionStatus::WaitingForInput) => self.timed_out(f, cur, &q.wait, now, out),
            (Kind::Interactive(i), SessionStatus::WaitingForInput) => self.timed_out(f, cur, &i.wait, now, out),
            (Kind::WhatsappFlow(w), SessionStatus::WaitingForInput) => self.timed_out(f, cur, &w.wait, now, out),
            _ => {}
        }
    }

    fn timed_out(&mut self, f: &Flows<'_>, cur: u32, wait: &Wait, now: Timestamp, out: &mut Vec<Output>) {
        self.retries = 0;
        match wait.timeout.as_ref().and_then(|t| t.target) {
            Some(target) => self.run(f, target, now, out),
            None => self.finish(Some(f.node(cur)), EndReason::IdleTimeout, out),
        }
    }

    fn answer(&mut self, f: &Flows<'_>, cur: u32, input: &Input, now: Timestamp, out: &mut Vec<Output>) {
        let node = f.node(cur);
        match &node.kind {
            Kind::Question(q) => match q.validation.check_input(input) {
                Some(value) => {
                    self.set_var(&q.wait.var, value);
                    self.retries = 0;
                    self.wake_at = None;
                    self.go(f, cur, node.next, now, out);
                }
                None => {
                    let default = || q.validation.default_error();
                    self.invalid(f, cur, &q.wait, default, now, out);
                }
            },
            Kind::Interactive(i) => match pick_option(i, input) {
                Some(opt) => {
                    self.set_var(&i.wait.var, Value::String(opt.id.to_string()));
                    self.retries = 0;
                    self.wake_at = None;
                    self.go(f, cur, opt.target.or(node.next), now, out);
                }
                None => self.invalid(f, cur, &i.wait, || CHOICE_ERROR_TEXT.to_string(), now, out),
            },
            Kind::WhatsappFlow(w) => {
                use crate::compile::whatsapp_flow::{accept_reply, flow_token, FLOW_ERROR_TEXT};
                match accept_reply(input, &flow_token(self.rng)) {
                    Some(value) => {
                        self.set_var(&w.wait.var, value);
                        self.retries = 0;
                        self.wake_at = None;
                        self.go(f, cur, node.next, now, out);
                    }
                    None => self.invalid(f, cur, &w.wait, || FLOW_ERROR_TEXT.to_string(), now, out),
                }
            }
            // `resolve` checked that the node waits for input.
            _ => {}
        }
    }

    fn invalid(
        &mut self,
        f: &Flows<'_>,
        cur: u32,
        wait: &Wait,
        default_error: impl FnOnce() -> String,
        now: Timestamp,
        out: &mut Vec<Output>,
    ) {
        let node = f.node(cur);
        self.retries = self.retries.saturating_add(1);
        if self.retries >= wait.max_retries {
            self.retries = 0;
            self.wake_at = None;
            match wait.invalid {
                Some(target) => self.run(f, target, now, out),
                None => {
                    Session::send(out, node, Message::Text { text: RETRIES_EXHAUSTED_TEXT.to_string() });
                    self.finish(Some(node), EndReason::RetriesExhausted, out);
                }
            }
            return;
        }
        let text = match &wait.error {
            Some(t) => t.render(&self.scope(f)),
            None => default_error(),
        };
        Session::send(out, node, Message::Text { text });
        self.wake_at = wait.timeout.as_ref().map(|t| now.saturating_add_millis(t.millis));
    }

    fn effect_result(&mut self, f: &Flows<'_>, cur: u32, result: EffectOutcome, now: Timestamp, out: &mut Vec<Output>) {
        let node = f.node(cur);
        let Kind::Effect(e) = &node.kind else { return };
        match result {
            EffectOutcome::Success(value) => {
                if let Some(var) = &e.var {
                    self.set_var(var, value);
                }
                self.go(f, cur, e.success, now, out);
            }
            EffectOutcome::Failure(error) => match e.failure {
                Some(target) => {
                    self.set_var("last_error", Value::String(error));
                    self.run(f, target, now, out);
                }
                None => self.finish(Some(node), EndReason::EffectFailed { error }, out),
            },
        }
    }

    fn new_effect_id(&mut self) -> EffectId {
        self.effects_issued = self.effects_issued.saturating_add(1);
        EffectId(self.effects_issued)
    }

    fn wait_here(&mut self, node: &Node, status: SessionStatus, wake_at: Option<Timestamp>) {
        self.status = status;
        self.node = Some(node.id.clone());
        self.wake_at = wake_at;
        self.retries = 0;
    }

    /// Runs from node `at` until the session must wait or ends.
    fn run(&mut self, f: &Flows<'_>, at: u32, now: Timestamp, out: &mut Vec<Output>) {
        let mut path_start = 0;
        self.run_steps(f, at, now, out, &mut path_start);
        if path_start > 0 {
            self.path.drain(..path_start);
        }
    }

    fn run_steps(
        &mut self,
        flows: &Flows<'_>,
        mut at: u32,
        now: Timestamp,
        out: &mut Vec<Output>,
        path_start: &mut usize,
    ) {
        let mut f: &Inner = flows.flow;
        let mut window = [0u32; LOOP_WINDOW];
        let mut steps: u32 = 0;
        // Steps in the running flow: the window holds its node indices only.
        let mut window_steps: u32 = 0;
        loop {
            if steps >= self.max_steps {
                let nodes = loop_nodes(f, &window, window_steps, at);
                self.finish(Some(f.node(at)), EndReason::StepBudgetExceeded { nodes }, out);
                return;
            }
            window[window_steps as usize % LOOP_WINDOW] = at;
            steps += 1;
            window_steps += 1;
            let node = f.node(at);
            self.record_from(node.id.as_str(), path_start);
            match &node.kind {
                Kind::Start { content } => {
                    if let Some(t) = content {
                        self.send_text(f, out, node, t);
                    }
                }
                Kind::Message(spec) => {
                    let scope = self.scope(f);
                    let message = match spec {
                        MessageSpec::Text(t) => Message::Text { text: t.render(&scope) },
                        MessageSpec::Media { kind, link, caption, filename } => Message::Media {
                            kind: *kind,
                            link: link.render(&scope),
                            caption: caption.as_ref().map(|t| t.render(&scope)),
                            filename: filename.as_ref().map(|t| t.render(&scope)),
                        },
                    };
                    Session::send(out, node, message);
                }
                Kind::Question(q) => {
                    if let Some(p) = &q.prompt {
                        self.send_text(f, out, node, p);
                    }
                    let wake = q.wait.timeout.as_ref().map(|t| now.saturating_add_millis(t.millis));
                    self.wait_here(node, SessionStatus::WaitingForInput, wake);
                    return;
                }
                Kind::Interactive(i) => {
                    let message = interactive_message(i, &self.scope(f));
                    Session::send(out, node, message);
                    let wake = i.wait.timeout.as_ref().map(|t| now.saturating_add_millis(t.millis));
                    self.wait_here(node, SessionStatus::WaitingForInput, wake);
                    return;
                }
                Kind::WhatsappFlow(w) => {
                    // The generator stays here until the reply: `answer` recomputes the token.
                    self.next_random();
                    let token = crate::compile::whatsapp_flow::flow_token(self.rng);
                    let message = w.message(&self.scope(f), token);
                    Session::send(out, node, message);
                    let wake = w.wait.timeout.as_ref().map(|t| now.saturating_add_millis(t.millis));
                    self.wait_here(node, SessionStatus::WaitingForInput, wake);
                    return;
                }
                Kind::End { content } => {
                    if let Some(t) = content {
                        self.send_text(f, out, node, t);
                    }
                    let Some((caller, next)) = self.flow_completed(flows, f, at, out) else { return };
                    (f, at, window_steps) = (caller, next, 0);
                    continue;
                }
                Kind::CallFlow(call) => {
                    let Some(callee) = self.enter_call(flows, f, node, call) else { return };
                    (f, at, window_steps) = (callee, callee.start, 0);
                    continue;
                }
                Kind::Condition { cond, yes, no } => {
                    at = if cond.eval(&self.scope(f)) { *yes } else { *no };
                    continue;
                }
                Kind::Jump { target } => {
                    at = *target;
                    continue;
                }
                Kind::Random { branches, total } => {
                    let mut roll = self.next_random() % (*total).max(1);
                    let mut chosen = None;
                    for (weight, target) in branches.iter() {
                        if roll < *weight {
                            chosen = Some(*target);
                            break;
                        }
                        roll -= weight;
                    }
                    match chosen.or_else(|| branches.last().map(|b| b.1)) {
                        Some(t) => {
                            at = t;
                            continue;
                        }
                        None => {
                            self.finish(Some(node), EndReason::Completed, out);
                            return;
                        }
                    }
                }
                Kind::SetVariable { var, value } => {
                    let scope = self.scope(f);
                    let v = match value {
                        SetValue::Json(t) => t.render(&scope),
                        SetValue::Expr(e) => e.eval(&scope),
                    };
                    self.set_var(var, v);
                }
                Kind::Effect(e) => {
                    let kind = effect_kind(&e.spec, &self.scope(f));
                    let id = self.new_effect_id();
                    out.push(Output::Effect(EffectRequest { id, node: node.id.clone(), kind }));
                    self.wait_here(node, SessionStatus::WaitingForEffect, None);
                    self.pending = Some(id);
                    return;
                }
                Kind::Handoff { content, queue } => {
                    if let Some(t) = content {
                        self.send_text(f, out, node, t);
                    }
                    let queue = queue.as_ref().map(|q| q.render(&self.scope(f))).filter(|q| !q.is_empty());
                    out.push(Output::Handoff { node: node.id.clone(), queue });
                    self.wait_here(node, SessionStatus::HandedOff, None);
                    return;
                }
                Kind::Delay { millis } => {
                    self.wait_here(node, SessionStatus::Sleeping, Some(now.saturating_add_millis(*millis)));
                    return;
                }
                Kind::WhatsappTemplate(t) => {
                    let scope = self.scope(f);
                    let message = Message::Template {
                        name: t.name.render(&scope),
                        language: t.language.to_string(),
                        components: t.components.render(&scope),
                    };
                    Session::send(out, node, message);
                }
                Kind::Analytics { event, properties } => {
                    let scope = self.scope(f);
                    let kind =
                        EffectKind::Analytics { event: event.render(&scope), properties: properties.render(&scope) };
                    let id = self.new_effect_id();
                    out.push(Output::Effect(EffectRequest { id, node: node.id.clone(), kind }));
                }
                Kind::Datetime(d) => {
                    let local = Local::at(now, d.offset_minutes);
                    let (date, time) = (Value::String(local.date()), Value::String(local.time()));
                    let weekday = Value::String(WEEKDAYS[local.weekday % 7].to_string());
                    match &d.var {
                        Some(var) => {
                            let mut map = Map::new();
                            map.insert("date".into(), date);
                            map.insert("time".into(), time);
                            map.insert("weekday".into(), weekday);
                            self.set_var(var, Value::Object(map));
                        }
                        None => {
                            self.set_var("date", date);
                            self.set_var("time", time);
                            self.set_var("weekday", weekday);
                        }
                    }
                    if let Some(hours) = &d.hours {
                        let branch = if hours.is_open(local.weekday, local.minute_of_day) { d.open } else { d.closed };
                        if let Some(t) = branch.or(node.next) {
                            at = t;
                            continue;
                        }
                    }
                }
                // Compile never produces a flow with invalid nodes.
                Kind::Invalid => {
                    self.finish(Some(node), EndReason::Completed, out);
                    return;
                }
            }
            match node.next {
                Some(n) => at = n,
                None => {
                    let Some((caller, next)) = self.flow_completed(flows, f, at, out) else { return };
                    (f, at, window_steps) = (caller, next, 0);
                }
            }
        }
    }
}

/// The nodes of the loop that ran out the step budget, in the order they ran, starting
/// where the turn entered the loop.
fn loop_nodes(f: &Inner, window: &[u32; LOOP_WINDOW], steps: u32, next: u32) -> Vec<NodeId> {
    let kept = (steps as usize).min(LOOP_WINDOW);
    let first = steps as usize - kept;
    let ran: Vec<u32> = (first..steps as usize).map(|s| window[s % LOOP_WINDOW]).collect();
    let start = ran.iter().rposition(|n| *n == next).unwrap_or(0);
    let cycle = ran.get(start..).unwrap_or_default();
    let entry = ran.iter().position(|n| cycle.contains(n)).unwrap_or(start);
    let end = (entry + cycle.len()).min(ran.len());
    ran.get(entry..end).unwrap_or_default().iter().map(|i| f.node(*i).id.clone()).collect()
}

/// Inputs about other messages, or of no known kind: they never start a session.
fn is_side_event(input: &Input) -> bool {
    matches!(
        input,
        Input::Unsupported { .. }
            | Input::Reaction { .. }
            | Input::Edit { .. }
            | Input::Revoke { .. }
            | Input::FlowReply { .. }
    )
}

fn pick_option<'a>(i: &'a Interactive, input: &Input) -> Option<&'a crate::compile::Opt> {
    let by_title = |t: &str| {
        let t = t.trim();
        i.options
            .iter()
            .find(|o| &*o.id == t)
            .or_else(|| i.options.iter().find(|o| o.title.trim().to_lowercase() == t.to_lowercase()))
    };
    match input {
        Input::Choice { id, title } => i
            .options
            .iter()
            .find(|o| *o.id == **id)
            .or_else(|| title.as_deref().and_then(by_title))
            .or_else(|| by_title(id)),
        Input::Text { text } => by_title(text).or_else(|| {
            let n: usize = text.trim().parse().ok()?;
            i.options.get(n.checked_sub(1)?)
        }),
        _ => None,
    }
}

fn interactive_message(i: &Interactive, scope: &Scope<'_>) -> Message {
    let header = i.header.as_ref().map(|t| t.render(scope));
    let footer = i.footer.as_ref().map(|t| t.render(scope));
    let body = i.body.render(scope);
    match &i.list {
        None => Message::Buttons {
            header,
            body,
            footer,
            buttons: i.options.iter().map(|o| Choice { id: o.id.to_string(), title: o.title.to_string() }).collect(),
        },
        Some((button, sections)) => {
            let mut rows = i.options.iter();
            let sections = sections
                .iter()
                .map(|(title, count)| ListSection {
                    title: title.as_deref().map(str::to_string),
                    rows: rows
                        .by_ref()
                        .take(*count)
                        .map(|o| ListRow {
                            id: o.id.to_string(),
                            title: o.title.to_string(),
                            description: o.description.as_deref().map(str::to_string),
                        })
                        .collect(),
                })
                .collect();
            Message::List { header, body, footer, button: button.to_string(), sections }
        }
    }
}

fn effect_kind(spec: &EffectSpec, scope: &Scope<'_>) -> EffectKind {
    match spec {
        EffectSpec::ApiCall { method, url, headers, body, timeout_ms } => EffectKind::ApiCall {
            method: method.to_string(),
            url: url.render(scope),
            headers: headers.iter().map(|(k, v)| (k.to_string(), v.render(scope))).collect(),
            body: body.as_ref().map(|b| match b.render(scope) {
                Value::String(s) => s,
                other => other.to_string(),
            }),
            timeout_ms: *timeout_ms,
        },
        EffectSpec::AiPrompt { prompt, system, model } => EffectKind::AiPrompt {
            prompt: prompt.render(scope),
            system: system.as_ref().map(|t| t.render(scope)),
            model: model.as_deref().map(str::to_string),
        },
        EffectSpec::DatabaseQuery { query, params } => {
            EffectKind::DatabaseQuery { query: query.render(scope), params: params.render(scope) }
        }
        EffectSpec::Script { language, code } => {
            EffectKind::Script { language: language.as_deref().map(str::to_string), code: code.to_string() }
        }
        EffectSpec::Action { action, params } => {
            EffectKind::Action { action: action.render(scope), params: params.render(scope) }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// States `from_compact` reads: every optional field, each kind of variable it takes.
    fn compact_states() -> Vec<String> {
        let flow =
            crate::Flow::from_json(r#"{"id":"lead","nodes":[{"id":"s","type":"start"}]}"#).unwrap().compile().unwrap();
        let vars = serde_json::json!({"a": "x", "b": 0, "c": -12, "d": 18446744073709551615u64, "e": true,
            "f": false, "g": null, "h": "", "ação": "日本"});
        let options =
            SessionOptions { seed: 9, variables: vars.as_object().unwrap().clone(), max_steps: 7, ttl_millis: 5 };
        let mut full = Session::new(&flow, options);
        full.node = Some(NodeId::from("ask_1"));
        full.retries = 2;
        full.pending = Some(EffectId(3));
        full.effects_issued = 4;
        full.wake_at = Some(Timestamp::from_unix_millis(-5));
        full.last_active = Some(Timestamp::from_unix_millis(1_700_000_000_123));
        full.path = "s>ask_1".into();
        let plain = Session::new(&flow, SessionOptions::default());
        let mut states = vec![full.to_json(), plain.to_json()];
        for status in [SessionStatus::WaitingForInput, SessionStatus::Ended, SessionStatus::HandedOff] {
            full.status = status;
            states.push(full.to_json());
        }
        states
    }

    /// The fast reader and serde agree on what it reads, and it reads what `to_json` writes.
    #[test]
    fn the_compact_reader_reads_what_to_json_writes() {
        for text in compact_states() {
            let session = Session::from_compact(&text).unwrap_or_else(|| panic!("not read: {text}"));
            assert_eq!(serde_json::from_str::<Session>(&text).unwrap(), session, "{text}");
            assert_eq!(session.to_json(), text);
        }
    }

    /// Every one-byte change or cut of a compact state: whatever the fast reader accepts,
    /// serde_json reads the same; what it refuses, `from_json` still decides as before.
    #[test]
    fn the_compact_reader_never_accepts_what_serde_reads_otherwise() {
        let bytes = b"{}[]\",: \t\n-+.0123456789eEvfsndirekgwtpmxcztruefalsenul\x01\x7f";
        for text in compact_states() {
            for at in 0..=text.len() {
                let mut variants = vec![String::from_utf8_lossy(&text.as_bytes()[..at]).into_owned()];
                for &b in bytes.iter() {
                    let mut v = text.as_bytes().to_vec();
                    if at < v.len() {
                        v[at] = b;
                    } else {
                        v.push(b);
                    }
                    variants.push(String::from_utf8_lossy(&v).into_owned());
                    let mut inserted = text.as_bytes().to_vec();
                    inserted.insert(at, b);
                    variants.push(String::from_utf8_lossy(&inserted).into_owned());
                }
                if at < text.len() {
                    let mut removed = text.as_bytes().to_vec();
                    removed.remove(at);
                    variants.push(String::from_utf8_lossy(&removed).into_owned());
                }
                for v in variants {
                    if let Some(session) = Session::from_compact(&v) {
                        assert_eq!(serde_json::from_str::<Session>(&v).ok(), Some(session), "{v}");
                    }
                }
            }
        }
    }

    /// `to_json` writes each field itself; with every field set away from its default,
    /// it must still write what the serde attributes write.
    #[test]
    fn to_json_writes_what_serde_writes_for_every_field() {
        let flow =
            crate::Flow::from_json(r#"{"id":"f\"1","nodes":[{"id":"s","type":"start"}]}"#).unwrap().compile().unwrap();
        let mut vars = Map::new();
        vars.insert("name".into(), Value::String("Jo\u{e3}o \"J\"\n".into()));
        vars.insert("n".into(), serde_json::json!(1.5));
        vars.insert("o".into(), serde_json::json!({"a": [1, null, true]}));
        let options = SessionOptions { seed: 9, variables: vars, max_steps: 7, ttl_millis: 5 };
        let mut session = Session::new(&flow, options);
        assert_eq!(session.to_json(), serde_json::to_string(&session).unwrap());
        session.node = Some(NodeId::from("ask>1"));
        session.retries = 2;
        session.pending = Some(EffectId(3));
        session.effects_issued = 4;
        session.wake_at = Some(Timestamp::from_unix_millis(-5));
        session.last_active = Some(Timestamp::from_unix_millis(1_700_000_000_123));
        session.path = "s>ask>1\u{7f}".into();
        let caller_vars = Map::from_iter([("x".to_string(), Value::String("\"y\"".into()))]);
        session.calls = vec![CallFrame { flow: "sub\"1".into(), node: NodeId::from("call"), vars: caller_vars }];
        for status in [
            SessionStatus::NotStarted,
            SessionStatus::WaitingForInput,
            SessionStatus::WaitingForEffect,
            SessionStatus::Sleeping,
            SessionStatus::HandedOff,
            SessionStatus::Ended,
        ] {
            session.status = status;
            let json = session.to_json();
            assert_eq!(json, serde_json::to_string(&session).unwrap());
            assert_eq!(Session::from_json(&json).as_ref(), Ok(&session));
        }
    }

    #[test]
    fn the_path_keeps_the_newest_ids_within_its_byte_budget() {
        let flow =
            crate::Flow::from_json(r#"{"id":"f","nodes":[{"id":"s","type":"start"}]}"#).unwrap().compile().unwrap();
        let mut session = Session::new(&flow, SessionOptions::default());
        let node = |id: &str| Node { id: NodeId::from(id), type_name: "message", kind: Kind::Invalid, next: None };
        for i in 0..100 {
            session.record(&node(&format!("node_{i}")));
        }
        let path: Vec<&str> = session.path().collect();
        assert_eq!(path.last(), Some(&"node_99"));
        assert_eq!(path.first(), Some(&"node_88"));
        assert!(session.path.len() <= PATH_MAX_BYTES);
        // An id longer than the budget is kept alone.
        session.record(&node(&"x".repeat(200)));
        assert_eq!(session.path().count(), 1);
        session.record(&node("y"));
        assert_eq!(session.path().collect::<Vec<_>>(), ["y"]);
    }

    /// The path recorded with a moving start (one drain per turn) equals the path
    /// trimmed after every step, for ids with separators, multi-byte text and empty ids.
    #[test]
    fn deferred_trimming_matches_trimming_every_step() {
        fn reference(path: &mut String, id: &str) {
            if !path.is_empty() {
                path.push(PATH_SEPARATOR);
            }
            path.push_str(id);
            if path.len() > PATH_MAX_BYTES {
                let excess = path.len() - PATH_MAX_BYTES;
                let cut = path.get(excess..).and_then(|rest| rest.find(PATH_SEPARATOR)).map(|i| excess + i + 1);
                let last = path.rfind(PATH_SEPARATOR).map_or(0, |i| i + 1);
                path.drain(..cut.unwrap_or(last).min(last));
            }
        }
        let flow =
            crate::Flow::from_json(r#"{"id":"f","nodes":[{"id":"s","type":"start"}]}"#).unwrap().compile().unwrap();
        let pieces = ["a", "node_1", "", "x>y", "ação", "é>", ">", "long_node_identifier_number_7", "ü"];
        let mut rng = 12345u64;
        for round in 0..300 {
            let mut session = Session::new(&flow, SessionOptions::default());
            let mut expected = String::new();
            for _turn in 0..4 {
                let mut start = 0;
                let steps = 1 + round % 60;
                for _ in 0..steps {
                    rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    let mut id = pieces[(rng >> 33) as usize % pieces.len()].to_string();
                    if (rng >> 20) % 7 == 0 {
                        id = id.repeat(1 + (rng >> 40) as usize % 9);
                    }
                    reference(&mut expected, &id);
                    session.record_from(&id, &mut start);
                }
                session.path.drain(..start);
                assert_eq!(session.path, expected, "round {round}");
            }
        }
    }
}
