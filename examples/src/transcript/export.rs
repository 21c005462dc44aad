//! A logged conversation written as a `.chat` file, so a real conversation becomes a test.

use std::collections::HashSet;

use flowcore::{Choice, CompiledFlow, Message};
use flowcore_store::{Content, Direction, LogEntry, RATE_LIMITED};
use serde_json::{json, Map, Value};

use super::clock::format_rfc3339;
use super::inbound::inbound_line;
use super::render::{describe_message, escape};

/// What the message log does not hold but a replay needs.
#[derive(Debug, Clone, Default)]
pub struct ChatExport<'a> {
    /// `# ` lines written first (the flow and its version, say).
    pub comments: Vec<String>,
    /// The flow the conversation ran on: messages from its `end` nodes are followed by
    /// `< (end)`.
    pub flow: Option<&'a CompiledFlow>,
    /// The session's initial variables, written as `@vars`.
    pub vars: Map<String, Value>,
    /// Whether the last session has ended, so the file closes with `< (end)`.
    pub ended: bool,
}

/// Writes `entries` (one conversation's log, oldest first) as `.chat` text.
///
/// `@now` is the first message's time. A contact's tap on a button or list row is logged
/// as its title; it is written as the JSON reply of the option with that title in the
/// latest buttons or list, so it replays by id. Operator messages and messages the bot
/// did not run (rate limited, no flow) become comments. Effects other than analytics are
/// not in the log, so a conversation that ran one does not replay as it happened.
///
/// ```
/// use flowcore::Timestamp;
/// use flowcore_examples::transcript::{chat_from_log, ChatExport};
/// use flowcore_store::{Content, ConversationKey, Direction, LogEntry};
/// let entry = |id, direction, text: &str| LogEntry {
///     id, conversation: ConversationKey::new("org", "100", "5511"), flow_id: Some("lead".into()), direction,
///     content: Content::Text(text.into()), node_id: None, wamid: None,
///     at: Timestamp::from_unix_seconds(1_767_616_200), metadata: serde_json::Value::Null,
/// };
/// let log = [entry(1, Direction::Inbound, "oi"), entry(2, Direction::Outbound, "Olá!\nTudo bem?")];
/// let chat = chat_from_log(&log, &ChatExport { ended: true, ..ChatExport::default() });
/// assert_eq!(chat, "@now 2026-01-05T12:30:00Z\n> oi\n< Olá!\\nTudo bem?\n< (end)\n");
/// ```
pub fn chat_from_log(entries: &[LogEntry], export: &ChatExport<'_>) -> String {
    let end_nodes: HashSet<String> = export
        .flow
        .map(|flow| {
            flow.graph().nodes.into_iter().filter(|n| n.kind == "end").map(|n| n.id.as_str().to_string()).collect()
        })
        .unwrap_or_default();
    let mut lines: Vec<String> = export.comments.iter().map(|c| format!("# {c}")).collect();
    if let Some(first) = entries.first() {
        lines.push(format!("@now {}", format_rfc3339(first.at)));
    }
    if !export.vars.is_empty() {
        lines.push(format!("@vars {}", Value::Object(export.vars.clone())));
    }
    let mut choices: Option<(&'static str, Vec<Choice>)> = None;
    for entry in entries {
        match entry.direction {
            Direction::Inbound => {
                let text = content_text(&entry.content);
                if !was_run(entry) {
                    lines.push(format!("# not run: > {}", escape(&text)));
                    continue;
                }
                let picked = choices
                    .as_ref()
                    .and_then(|(kind, options)| options.iter().find(|c| c.title == text).map(|c| (kind, c)));
                lines.push(match picked {
                    Some((kind, choice)) => {
                        format!("> {}", json!({"type": kind, "id": choice.id, "title": choice.title}))
                    }
                    None => format!("> {}", inbound_line(&flowcore::Input::text(text))),
                });
            }
            Direction::Outbound => {
                if entry.metadata.get("manual").and_then(Value::as_bool) == Some(true) {
                    lines.push(format!("# operator: {}", escape(&content_text(&entry.content))));
                    continue;
                }
                if entry.flow_id.is_none() {
                    lines.push(format!("# not from a flow: {}", escape(&content_text(&entry.content))));
                    continue;
                }
                let said = match &entry.content {
                    Content::Text(text) => text.clone(),
                    Content::Json(value) => match system_note(value) {
                        Some(note) => note,
                        None => match serde_json::from_value::<Message>(value.clone()) {
                            Ok(message) => {
                                choices = options_of(&message);
                                describe_message(&message)
                            }
                            Err(_) => value.to_string(),
                        },
                    },
                };
                lines.push(format!("< {}", escape(&said)));
                if entry.node_id.as_deref().is_some_and(|node| end_nodes.contains(node)) {
                    lines.push("< (end)".to_string());
                }
            }
        }
    }
    if export.ended && lines.last().map(String::as_str) != Some("< (end)") {
        lines.push("< (end)".to_string());
    }
    let mut text = lines.join("\n");
    text.push('\n');
    text
}

/// Whether the engine ran this inbound message (rate-limited ones and ones no flow took
/// were only logged).
fn was_run(entry: &LogEntry) -> bool {
    let flag = |key: &str| entry.metadata.get(key).and_then(Value::as_bool) == Some(true);
    entry.flow_id.is_some() && !flag(RATE_LIMITED) && !flag("not_configured")
}

fn content_text(content: &Content) -> String {
    match content {
        Content::Text(text) => text.clone(),
        Content::Json(value) => {
            value.get("text").and_then(Value::as_str).map_or_else(|| value.to_string(), str::to_string)
        }
    }
}

/// The `(handoff …)` or `(effect analytics)` line of a system note.
fn system_note(value: &Value) -> Option<String> {
    let note = value.get("system")?;
    if note.get("handoff").is_some() {
        return Some(match note.get("queue").and_then(Value::as_str) {
            Some(queue) if !queue.is_empty() => format!("(handoff {queue})"),
            _ => "(handoff)".to_string(),
        });
    }
    if note.get("analytics").is_some() {
        return Some("(effect analytics)".to_string());
    }
    Some(format!("(note {note})"))
}

/// The options of a buttons or list message, with the reply type a tap on one sends.
fn options_of(message: &Message) -> Option<(&'static str, Vec<Choice>)> {
    match message {
        Message::Buttons { buttons, .. } => Some(("button_reply", buttons.clone())),
        Message::List { sections, .. } => Some((
            "list_reply",
            sections
                .iter()
                .flat_map(|s| &s.rows)
                .map(|r| Choice { id: r.id.clone(), title: r.title.clone() })
                .collect(),
        )),
        _ => None,
    }
}
