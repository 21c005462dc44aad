//! Transcript tests: the `.chat` format that `flowctl test` runs against a flow, and the
//! writer that turns a logged conversation into one.
//!
//! A `.chat` file is line based:
//!
//! - `> text` is an inbound message; after `> ` the rule of `flowctl run` applies
//!   ([`parse_inbound`]), so `> {"type":"button_reply","id":"yes"}` is an event and
//!   `> {"type":"effect_result","result":{"ok":…}}` answers the effect the bot asked for.
//! - `< text` is the next bot output, compared exactly with its [`describe`]d, [`escape`]d
//!   text: buttons and lists are the body then ` [Title 1 | Title 2]`; `< (end)` is the
//!   session's end, `< (effect api_call)` an effect request, `< (handoff QUEUE)` a handoff.
//! - `<~ regex` is the next bot output, matching the regex (unescaped text).
//! - `# comment`; `---` starts a new conversation on a fresh session; `@now RFC3339`,
//!   `@seed N` and `@vars {json}` before a conversation's first line set its clock, seed
//!   and variables.
//!
//! Every bot output between two `>` lines must be listed, in order. The roles:
//! [`parse_chat`] reads a file into [`ChatFile`] (syntax errors carry the line),
//! [`Runner`] runs it against a compiled flow into [`FileResult`]s and a [`Coverage`],
//! [`junit_xml`] writes the results for CI, [`chat_from_log`] writes a logged conversation.
//!
//! ```
//! use flowcore::Flow;
//! use flowcore_examples::transcript::{parse_chat, Runner};
//! let flow = Flow::from_json(r#"{"id": "f", "nodes": [
//!     {"id": "s", "type": "start"},
//!     {"id": "ask", "type": "question", "data": {"content": "Nome?", "variableName": "name"}},
//!     {"id": "bye", "type": "end", "data": {"content": "Tchau, {{name}}!"}}],
//!   "edges": [{"id": "e1", "source": "s", "target": "ask"}, {"id": "e2", "source": "ask", "target": "bye"}]
//! }"#)?.compile().expect("valid flow");
//! let chat = parse_chat("> oi\n< Nome?\n> Ana\n<~ ^Tchau, A\n< (end)\n").expect("valid .chat");
//! let result = Runner::new(&flow).run("hello.chat", &chat);
//! assert!(result.passed());
//! # Ok::<(), flowcore::FlowError>(())
//! ```

mod clock;
mod coverage;
mod export;
mod inbound;
mod junit;
mod parse;
mod render;
mod run;

pub use clock::{awaited_effect, feed_skipping_delays, format_rfc3339, parse_rfc3339, VirtualClock};
pub use coverage::{Coverage, CoverageReport, Edge, Tally};
pub use export::{chat_from_log, ChatExport};
pub use inbound::{inbound_line, parse_inbound, Inbound, InboundError};
pub use junit::{escape_xml, junit_xml};
pub use parse::{parse_chat, ChatConversation, ChatFile, ParseError, Step, StepKind};
pub use render::{describe, describe_message, escape};
pub use run::{CaseFailure, CaseResult, FileResult, Runner};
