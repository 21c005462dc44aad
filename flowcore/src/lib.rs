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
//! # Node types
//!
//! `start`, `message` (text, or media with `mediaUrl`/`mediaType`), `question`
//! (`validationType` text, number, email, phone, regex with `pattern`, options),
//! `interactive_buttons`, `interactive_list`, `condition`, `jump`, `random` (weighted
//! edges: `weight`, `data.weight` or a numeric label such as `"70%"`), `set_variable`
//! (`value`, a literal or template; or `expression`, safe arithmetic such as
//! `{{count}} + 1`), `datetime` (writes `date`, `time`, `weekday`; optional
//! `businessHours {days, open, close, utcOffset}` routes by `open`/`closed` edges),
//! `whatsapp_template`, `handoff`, `delay`, `end`, and the effects `api_call`,
//! `ai_prompt`, `database_query`, `script`, `action` (wait for a result: stored in
//! `responseVariable`, routed by `success`/`failure` edges; on a followed failure the
//! error text is stored in `last_error`) and `analytics` (fire and forget).
#![forbid(unsafe_code)]

mod compile;
mod condition;
mod datetime;
mod diagnostic;
mod expr;
mod flow;
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
pub use flow::{Flow, FlowEdge, FlowError, FlowNode};
pub use io::{
    Choice, EffectId, EffectKind, EffectOutcome, EffectRequest, EndReason, Input, ListRow, ListSection, MediaKind,
    Message, NodeId, Output, Turn,
};
pub use session::{Session, SessionError, SessionOptions, SessionStatus, PATH_MAX_BYTES, STATE_VERSION};
pub use time::Timestamp;
