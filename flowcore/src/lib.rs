//! flowcore: a deterministic, I/O-free chatbot flow engine.
//!
//! The roles, top down:
//!
//! - [`Flow`] is the visual builder's JSON, as data ([`Flow::from_json`]).
//! - [`Flow::compile`] checks it and returns a [`CompiledFlow`] (immutable, cheap to
//!   clone, shareable between threads) or a [`CompileError`] listing [`Diagnostic`]s
//!   with node and edge ids. Node ids become indices, templates and regexes are parsed
//!   once, edges are resolved: running a compiled flow cannot fail on the flow's shape.
//! - [`Session`] is one conversation's state, plain serde data. Its one door in is
//!   [`Session::handle`]`(flow, `[`Input`]`, now)`, which returns a [`Turn`]: the
//!   [`Output`]s to carry out (messages, effect requests, handoff, end) and when to wake
//!   the session with [`Input::Tick`].
//!
//! The engine never does I/O and never reads a clock or the OS's randomness: `now` comes
//! with every input, `random` nodes draw from a generator seeded by
//! [`SessionOptions::seed`] and kept in the state. Same flow + same state + same input +
//! same `now` ⇒ same outputs and same new state.
//!
//! ```
//! use flowcore::{Flow, Input, Output, Session, SessionOptions, Timestamp};
//! let flow = Flow::from_json(r#"{
//!   "id": "hello", "name": "Hello",
//!   "nodes": [{"id": "s", "type": "start"},
//!             {"id": "ask", "type": "question", "data": {"content": "Nome?", "variableName": "name"}},
//!             {"id": "bye", "type": "end", "data": {"content": "Tchau, {{ name }}!"}}],
//!   "edges": [{"id": "e1", "source": "s", "target": "ask"}, {"id": "e2", "source": "ask", "target": "bye"}]
//! }"#)?.compile().expect("valid flow");
//! let mut session = Session::new(&flow, SessionOptions::default());
//! let now = Timestamp::from_unix_seconds(1_700_000_000);
//! session.handle(&flow, Input::text("oi"), now).unwrap();            // starts: asks "Nome?"
//! let turn = session.handle(&flow, Input::text("Ana"), now).unwrap(); // answers
//! assert!(matches!(&turn.outputs[1], Output::End { .. }));
//! # Ok::<(), flowcore::FlowError>(())
//! ```
//!
//! A waiting node (question, interactive message, `whatsapp_flow`) answers anything it
//! cannot take (text where a location was asked, a reaction, a flow reply with another
//! token) with its error message, as it does an invalid answer. Reactions, edits,
//! revokes, flow replies and unsupported events never start a session.
//!
//! # Node types
//!
//! `start`, `message` (text, or media with `mediaUrl`/`mediaType`), `question`
//! (`validationType` text, number, email, phone, regex with `pattern`, options; and the
//! structured `location`, `media` with optional `mediaTypes`, `contact` and `order`, stored as
//! objects templates read by path, such as `{{where.latitude}}`), `whatsapp_flow`
//! (`flowId`, `cta`, `content`, optional `screen` and `data`: sends
//! [`Message::Flow`] with a `flow_token` drawn from the session's seed, and stores the
//! answers of the [`Input::FlowReply`] carrying that token in `variableName`),
//! `interactive_buttons`, `interactive_list`, `condition`, `jump`, `random` (weighted
//! edges: `weight`, `data.weight` or a numeric label such as `"70%"`), `set_variable`
//! (`value`, a literal or template; or `expression`, safe arithmetic such as
//! `{{count}} + 1`), `datetime` (writes `date`, `time`, `weekday`; optional
//! `businessHours {days, open, close, utcOffset}` routes by `open`/`closed` edges),
//! `whatsapp_template`, `handoff`, `delay`, `end`, and the effects `api_call`,
//! `ai_prompt`, `database_query`, `script`, `action` (wait for a result: stored in
//! `responseVariable`, routed by `success`/`failure` edges; on a followed failure the
//! error text is stored in `last_error`) and `analytics` (fire and forget).
//!
//! `call_flow` runs another flow of the same organization, named by `flowId`. Its
//! `inputs` {sub-flow variable: template} are rendered in the caller's scope and are the
//! only variables the sub-flow starts with (its declared defaults apply; a template that
//! is exactly `{{var}}` copies the JSON value). When the sub-flow ends — at an `end` node,
//! whose message is still sent, or at a node with no way on — it returns rather than
//! ending the session: the caller's variables come back, `outputs` {caller variable:
//! sub-flow variable or dotted path} copy values in (one the sub-flow never set leaves the
//! caller's as it was), and the caller goes on by the node's `return` edge (or its default
//! edge). Other endings (retries exhausted, a failed effect, expiry) end the session. The
//! host hands the flows in as a [`FlowSet`] ([`Session::handle_in`]); [`FlowSet::check`]
//! reports calls to flows the set lacks, call cycles and chains deeper than
//! [`MAX_CALL_DEPTH`]; a call beyond that bound fails the turn with
//! [`SessionError::CallDepthExceeded`], which names the chain.
#![forbid(unsafe_code)]

mod compile;
mod condition;
mod datetime;
mod diagnostic;
mod diff;
mod expr;
mod flow;
mod flow_set;
#[cfg(fuzzing)]
#[doc(hidden)]
pub mod fuzzing;
mod io;
mod session;
mod state_json;
mod template;
mod time;
mod validate;
mod value;

pub use compile::{CompiledFlow, FlowGraph, GraphLink, GraphNode};
pub use diagnostic::{CompileError, Diagnostic, Severity};
pub use diff::{Changes, FlowDiff};
pub use flow::{Flow, FlowEdge, FlowError, FlowNode};
pub use flow_set::{FlowSet, MAX_CALL_DEPTH};
pub use io::{
    Choice, EffectId, EffectKind, EffectOutcome, EffectRequest, EndReason, Input, ListRow, ListSection, MediaKind,
    Message, NodeId, OrderItem, Output, Turn,
};
pub use session::{Session, SessionError, SessionOptions, SessionStatus, PATH_MAX_BYTES, STATE_VERSION};
pub use time::Timestamp;
