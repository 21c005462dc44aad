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
    /// The flow the conversation ran on: a message from an `end` node, or from a
    /// `message` node with no way on, is followed by `< (end)`.
    pub flow: Option<&'a CompiledFlow>,
    /// The session's initial variables, written as `@vars`.
    pub vars: Map<String, Value>,
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
/// let chat = chat_from_log(&log, &ChatExport::default());
/// assert_eq!(chat, "@now 2026-01-05T12:30:00Z\n> oi\n< Olá!\\nTudo bem?\n");
/// ```
pub fn chat_from_log(entries: &[LogEntry], export: &ChatExport<'_>) -> String {
    let end_nodes = export.flow.map(ending_nodes).unwrap_or_default();
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
                    Some((kind, choice)) => format!("> {}", reply_line(kind, choice)),
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
    let mut text = lines.join("\n");
    text.push('\n');
    text
}

/// The JSON reply a tap on `choice` sends, `"type"` first so the line reads like the
/// `.chat` examples.
fn reply_line(kind: &str, choice: &Choice) -> String {
    format!(r#"{{"type":"{kind}","id":{},"title":{}}}"#, json!(choice.id), json!(choice.title))
}

/// The nodes whose message ends the session: `end` nodes, and `message` nodes with no
/// way on.
fn ending_nodes(flow: &CompiledFlow) -> HashSet<String> {
    let graph = flow.graph();
    let leads_on: HashSet<&str> = graph.links.iter().map(|l| l.from.as_str()).collect();
    graph
        .nodes
        .iter()
        .filter(|n| n.kind == "end" || (n.kind == "message" && !leads_on.contains(n.id.as_str())))
        .map(|n| n.id.as_str().to_string())
        .collect()
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

#[cfg(test)]
mod tests {
    use super::*;
    use flowcore::{Flow, Timestamp};
    use flowcore_store::ConversationKey;

    fn entry(direction: Direction, content: Content, node: Option<&str>, metadata: Value) -> LogEntry {
        LogEntry {
            id: 0,
            conversation: ConversationKey::new("org", "100", "5511"),
            flow_id: Some("f".into()),
            direction,
            content,
            node_id: node.map(str::to_string),
            wamid: None,
            at: Timestamp::from_unix_seconds(0),
            metadata,
        }
    }

    #[test]
    fn taps_become_events_ends_are_inferred_and_unrun_messages_are_comments() {
        let flow = Flow::from_json(
            r#"{"id": "f", "nodes": [{"id": "s", "type": "start"},
                {"id": "ask", "type": "interactive_buttons", "data": {"content": "Pronto?", "variableName": "x",
                 "buttons": [{"id": "y", "title": "Sim"}]}},
                {"id": "done", "type": "message", "data": {"content": "Feito"}}],
              "edges": [{"id": "e1", "source": "s", "target": "ask"}, {"id": "e2", "source": "ask", "target": "done"}]}"#,
        )
        .unwrap()
        .compile()
        .unwrap();
        let buttons = json!({"type": "buttons", "body": "Pronto?", "buttons": [{"id": "y", "title": "Sim"}]});
        let log = [
            entry(Direction::Inbound, Content::Text("{oi".into()), None, Value::Null),
            entry(Direction::Outbound, Content::Json(buttons), Some("ask"), Value::Null),
            entry(Direction::Inbound, Content::Text("spam".into()), None, json!({RATE_LIMITED: true})),
            entry(Direction::Inbound, Content::Text("Sim".into()), None, Value::Null),
            entry(Direction::Outbound, Content::Text("Feito".into()), Some("done"), Value::Null),
        ];
        let chat = chat_from_log(&log, &ChatExport { flow: Some(&flow), ..ChatExport::default() });
        let expected = concat!(
            "@now 1970-01-01T00:00:00Z\n",
            "> {\"type\":\"text\",\"text\":\"{oi\"}\n",
            "< Pronto? [Sim]\n",
            "# not run: > spam\n",
            "> {\"type\":\"button_reply\",\"id\":\"y\",\"title\":\"Sim\"}\n",
            "< Feito\n",
            "< (end)\n",
        );
        assert_eq!(chat, expected);
    }
}
