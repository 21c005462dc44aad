//! `flowctl run`: a scripted conversation, JSON lines out.
//!
//! Each stdin line is one inbound event, read by the rule `.chat` files share
//! ([`parse_inbound`]): a line starting with `{` is a JSON [`Input`]
//! (`{"type":"button_reply","id":"yes"}`, `{"type":"tick"}`, …), any other line a text
//! message. Each output becomes one JSON object on stdout with a `"type"`.
//!
//! When the flow asks for an effect that returns a result, the next line answers it if it
//! is `{"type":"effect_result","result":{"ok":…}}` (or `{"error":"…"}`; `"id"` may be
//! left out). Any other line marks the effect failed and is then read as a message.

use std::io::{self, BufRead, Write};
use std::path::Path;

use flowcore::{EffectId, EffectKind, EffectOutcome, Input, Message, NodeId, Output};
use flowcore_examples::transcript::{awaited_effect, parse_inbound, Inbound};
use serde::Serialize;
use serde_json::json;

use crate::conversation::Conversation;
use crate::load::compile_flow;
use crate::{Failure, RunOptions};

/// The failure an effect gets when the script gives no result for it.
const NO_RESULT: &str = "flowctl: no effect_result line was given";

/// How many effects in a row one line may fail before it is read, bounding a flow whose
/// failure edges lead from effect to effect in a loop.
const MAX_UNANSWERED_EFFECTS: usize = 100;

/// Runs the conversation from stdin to stdout.
pub(crate) fn run(path: &Path, options: &RunOptions) -> Result<u8, Failure> {
    let flow = compile_flow(path)?;
    let mut conversation = Conversation::new(flow, options)?;
    let stdin = io::stdin();
    let stdout = io::stdout();
    let mut out = io::BufWriter::new(stdout.lock());
    let mut awaited: Option<EffectId> = None;
    for (index, line) in stdin.lock().lines().enumerate() {
        let line = line.map_err(|err| Failure::unreadable(format!("cannot read stdin: {err}")))?;
        let line_number = index + 1;
        let mut feed = |input: Input, awaited: &mut Option<EffectId>| -> Result<(), Failure> {
            let outputs =
                conversation.send(input).map_err(|err| Failure::unreadable(format!("line {line_number}: {err}")))?;
            write_outputs(&mut out, &outputs)?;
            *awaited = if conversation.waits_for_effect() { awaited_effect(&outputs) } else { None };
            Ok(())
        };
        let inbound = parse_inbound(line.trim_end_matches('\r'))
            .map_err(|err| Failure::unreadable(format!("line {line_number}: {err}")))?;
        match inbound {
            Inbound::EffectResult(result) => {
                let id = awaited.take().ok_or_else(|| {
                    Failure::unreadable(format!("line {line_number}: effect_result, but no effect is waiting"))
                })?;
                feed(Input::EffectResult { id, result }, &mut awaited)?;
            }
            Inbound::Input(input) => {
                // Every effect still waiting fails first (a failure may lead to another effect).
                for _ in 0..MAX_UNANSWERED_EFFECTS {
                    let Some(id) = awaited.take() else { break };
                    feed(Input::EffectResult { id, result: EffectOutcome::Failure(NO_RESULT.into()) }, &mut awaited)?;
                }
                feed(input, &mut awaited)?;
            }
        }
    }
    out.flush().map_err(|err| Failure::unreadable(format!("cannot write stdout: {err}")))?;
    Ok(0)
}

fn write_outputs(out: &mut impl Write, outputs: &[Output]) -> Result<(), Failure> {
    for output in outputs {
        let line = output_line(output);
        writeln!(out, "{line}").map_err(|err| Failure::unreadable(format!("cannot write stdout: {err}")))?;
    }
    Ok(())
}

/// A sent message: the message's own fields (`"type"` first), then the node that sent it.
#[derive(Serialize)]
struct SendLine<'a> {
    #[serde(flatten)]
    message: &'a Message,
    node: &'a NodeId,
}

/// An effect request, its kind's fields inlined.
#[derive(Serialize)]
struct EffectLine<'a> {
    r#type: &'static str,
    id: EffectId,
    node: &'a NodeId,
    expects_result: bool,
    #[serde(flatten)]
    kind: &'a EffectKind,
}

/// One output as a flat JSON object with `"type"` first: messages by their kind (`"text"`,
/// `"buttons"`, `"list"`, `"media"`, `"template"`), then `"effect"`, `"handoff"`, `"end"`.
pub(crate) fn output_line(output: &Output) -> String {
    let line = match output {
        Output::Send { node, message } => serde_json::to_string(&SendLine { message, node }),
        Output::Effect(request) => serde_json::to_string(&EffectLine {
            r#type: "effect",
            id: request.id,
            node: &request.node,
            expects_result: request.expects_result(),
            kind: &request.kind,
        }),
        other => serde_json::to_string(other),
    };
    line.unwrap_or_else(|err| json!({ "type": "error", "error": err.to_string() }).to_string())
}
