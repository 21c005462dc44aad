//! `flowctl chat`: a conversation with the flow for a person at a terminal.
//!
//! Buttons and list rows are shown as numbered choices: type the number (or the title) to
//! pick one. `/tick` lets idle time pass (timeouts fire), `/restart` starts over, `/quit` or
//! Ctrl-D leaves. Effects ask for their result at the prompt.
//!
//! Any other inbound event is typed as the JSON line `flowctl run` reads, such as
//! `{"type":"location","latitude":-23.5,"longitude":-46.6}`, an image
//! `{"type":"media","kind":"image","id":"m1"}`, a contact card, a reaction or an order.
//! `/flow {"field":"value"}` submits the last WhatsApp Flow shown, with its token.

use std::io::{self, BufRead, IsTerminal, Write};
use std::path::Path;

use flowcore::{Choice, EffectKind, EffectOutcome, EffectRequest, Input, Message, Output};
use serde_json::Value;

use crate::conversation::Conversation;
use crate::load::compile_flow;
use crate::{Failure, RunOptions};

/// Runs the interactive chat until end of input.
pub(crate) fn run(path: &Path, options: &RunOptions) -> Result<u8, Failure> {
    let flow = compile_flow(path)?;
    let title = if flow.name().is_empty() { flow.id().to_string() } else { format!("{} ({})", flow.name(), flow.id()) };
    let mut chat = Chat {
        conversation: Conversation::new(flow.clone(), options)?,
        choices: Vec::new(),
        flow_token: None,
        style: Style::detect(),
        echo_input: !io::stdin().is_terminal(),
        input: io::stdin().lock(),
    };
    println!("{}", chat.style.dim(&format!("flowctl chat — {title}")));
    println!(
        "{}",
        chat.style.dim("Type a message to start. Numbers pick a choice; /tick lets time pass, /restart, /quit.")
    );
    println!(
        "{}",
        chat.style.dim(
            r#"Other events as JSON: {"type":"location","latitude":-23.5,"longitude":-46.6}; /flow {…} answers a flow."#
        )
    );
    while let Some(line) = chat.prompt("you> ")? {
        let input = match line.trim() {
            "/quit" | "/exit" => break,
            "/restart" => {
                chat.conversation = Conversation::new(flow.clone(), options)?;
                chat.choices.clear();
                chat.flow_token = None;
                println!("{}", chat.style.dim("— new conversation —"));
                continue;
            }
            "/tick" => None,
            _ => match chat.read_input(&line) {
                Ok(input) => Some(input),
                Err(problem) => {
                    println!("{}", chat.style.dim(&format!("({problem})")));
                    continue;
                }
            },
        };
        let result = match input {
            Some(input) => chat.conversation.send(input),
            None => chat.conversation.tick(),
        };
        match result {
            Ok(outputs) => chat.show(outputs)?,
            Err(err) => println!("{}", chat.style.dim(&format!("(the engine refused that: {err})"))),
        }
    }
    println!();
    Ok(0)
}

struct Chat<R> {
    conversation: Conversation,
    /// The choices of the last buttons or list message, numbered from 1.
    choices: Vec<Choice>,
    /// The token of the last WhatsApp Flow shown, for `/flow`.
    flow_token: Option<String>,
    style: Style,
    /// Piped input is not shown by the terminal, so the chat prints it after the prompt.
    echo_input: bool,
    input: R,
}

impl<R: BufRead> Chat<R> {
    fn prompt(&mut self, prompt: &str) -> Result<Option<String>, Failure> {
        print!("{}", self.style.bold(prompt));
        io::stdout().flush().map_err(|err| Failure::unreadable(format!("cannot write stdout: {err}")))?;
        let mut line = String::new();
        match self.input.read_line(&mut line) {
            Ok(0) => Ok(None),
            Ok(_) => {
                let line = line.trim_end_matches(['\n', '\r']).to_string();
                if self.echo_input {
                    println!("{line}");
                }
                Ok(Some(line))
            }
            Err(err) => Err(Failure::unreadable(format!("cannot read stdin: {err}"))),
        }
    }

    /// A typed line: a number picks a shown choice, `/flow {…}` answers the last flow, a
    /// line starting with `{` is a JSON event, anything else is text.
    fn read_input(&self, line: &str) -> Result<Input, String> {
        let trimmed = line.trim();
        if let Some(answers) = trimmed.strip_prefix("/flow").filter(|rest| rest.is_empty() || rest.starts_with(' ')) {
            let token = self.flow_token.clone().ok_or("no WhatsApp Flow was shown yet")?;
            let answers = answers.trim();
            let response: Value = if answers.is_empty() {
                Value::Object(serde_json::Map::new())
            } else {
                serde_json::from_str(answers).map_err(|err| format!("/flow needs a JSON object: {err}"))?
            };
            return Ok(Input::FlowReply { flow_token: Some(token), response });
        }
        if trimmed.starts_with('{') {
            return serde_json::from_str(trimmed).map_err(|err| format!("not an inbound event: {err}"));
        }
        let picked = trimmed.parse::<usize>().ok().and_then(|n| n.checked_sub(1)).and_then(|i| self.choices.get(i));
        Ok(match picked {
            Some(choice) => Input::Choice { id: choice.id.clone(), title: Some(choice.title.clone()) },
            None => Input::text(line),
        })
    }

    /// Prints outputs; effects are answered at the prompt, which may produce more outputs.
    fn show(&mut self, outputs: Vec<Output>) -> Result<(), Failure> {
        let mut pending = outputs;
        while !pending.is_empty() {
            let mut next = Vec::new();
            for output in std::mem::take(&mut pending) {
                if let Output::Effect(request) = &output {
                    println!("{}", self.style.dim(&format!("⚙ {}", describe_effect(request))));
                    if request.expects_result() && self.conversation.waits_for_effect() {
                        let result = self.ask_effect_result()?;
                        match self.conversation.send(Input::EffectResult { id: request.id, result }) {
                            Ok(more) => next.extend(more),
                            Err(err) => println!("{}", self.style.dim(&format!("(the engine refused that: {err})"))),
                        }
                    }
                    continue;
                }
                self.show_one(&output);
            }
            pending = next;
        }
        Ok(())
    }

    fn ask_effect_result(&mut self) -> Result<EffectOutcome, Failure> {
        let answer = self.prompt("  result (JSON or text; empty = fail)> ")?.unwrap_or_default();
        if answer.trim().is_empty() {
            return Ok(EffectOutcome::Failure("no result given in flowctl chat".into()));
        }
        Ok(EffectOutcome::Success(serde_json::from_str(&answer).unwrap_or(serde_json::Value::String(answer))))
    }

    fn show_one(&mut self, output: &Output) {
        match output {
            Output::Send { message, .. } => self.show_message(message),
            Output::Handoff { queue, .. } => {
                let queue = queue.as_deref().map(|q| format!(" (queue: {q})")).unwrap_or_default();
                println!(
                    "{}",
                    self.style.dim(&format!(
                        "↪ handed off to a person{queue}; the bot is silent now. /restart to begin again."
                    ))
                );
            }
            Output::End { reason, .. } => {
                let reason = serde_json::to_value(reason)
                    .ok()
                    .and_then(|v| v.get("reason").and_then(|r| r.as_str()).map(str::to_string))
                    .unwrap_or_else(|| "ended".into());
                println!("{}", self.style.dim(&format!("— conversation ended ({}) —", reason.replace('_', " "))));
                self.choices.clear();
            }
            other => println!("{}", self.style.dim(&format!("{other:?}"))),
        }
    }

    fn show_message(&mut self, message: &Message) {
        let bot = self.style.bold("bot> ");
        match message {
            Message::Text { text } => println!("{bot}{}", indent(text)),
            Message::Buttons { header, body, footer, buttons } => {
                if let Some(header) = header {
                    println!("{bot}{}", self.style.bold(header));
                }
                println!("{bot}{}", indent(body));
                for (number, button) in buttons.iter().enumerate() {
                    println!("     [{}] {}", number + 1, button.title);
                }
                if let Some(footer) = footer {
                    println!("     {}", self.style.dim(footer));
                }
                self.choices = buttons.clone();
            }
            Message::List { header, body, footer, button, sections } => {
                if let Some(header) = header {
                    println!("{bot}{}", self.style.bold(header));
                }
                println!("{bot}{}", indent(body));
                println!("     {}", self.style.dim(&format!("({button})")));
                self.choices.clear();
                for section in sections {
                    if let Some(title) = &section.title {
                        println!("     {}", self.style.bold(title));
                    }
                    for row in &section.rows {
                        self.choices.push(Choice { id: row.id.clone(), title: row.title.clone() });
                        let description = row.description.as_deref().map(|d| format!(" — {d}")).unwrap_or_default();
                        println!("     [{}] {}{description}", self.choices.len(), row.title);
                    }
                }
                if let Some(footer) = footer {
                    println!("     {}", self.style.dim(footer));
                }
            }
            Message::Media { kind, link, caption, .. } => {
                let caption = caption.as_deref().map(|c| format!(" {c}")).unwrap_or_default();
                println!("{bot}[{}: {link}]{caption}", kind.as_str());
            }
            Message::Template { name, language, .. } => println!("{bot}[template {name} ({language})]"),
            Message::Flow { header, body, footer, flow_id, cta, flow_token, screen, .. } => {
                if let Some(header) = header {
                    println!("{bot}{}", self.style.bold(header));
                }
                println!("{bot}{}", indent(body));
                let screen = screen.as_deref().map(|s| format!(", screen {s}")).unwrap_or_default();
                println!("     [{cta}] {}", self.style.dim(&format!("(WhatsApp Flow {flow_id}{screen})")));
                if let Some(footer) = footer {
                    println!("     {}", self.style.dim(footer));
                }
                println!("     {}", self.style.dim(r#"answer with /flow {"field": "value"}"#));
                self.flow_token = Some(flow_token.clone());
            }
            other => println!("{bot}{other:?}"),
        }
    }
}

fn describe_effect(request: &EffectRequest) -> String {
    match &request.kind {
        EffectKind::ApiCall { method, url, .. } => format!("api_call {method} {url}"),
        EffectKind::AiPrompt { prompt, .. } => format!("ai_prompt: {prompt}"),
        EffectKind::DatabaseQuery { query, .. } => format!("database_query: {query}"),
        EffectKind::Script { .. } => "script".to_string(),
        EffectKind::Action { action, .. } => format!("action {action}"),
        EffectKind::Analytics { event, .. } => format!("analytics event {event}"),
        other => format!("{other:?}"),
    }
}

/// Continuation lines of a multi-line message line up under the first.
fn indent(text: &str) -> String {
    text.replace('\n', "\n     ")
}

/// ANSI styling, only when stdout is a terminal.
#[derive(Clone, Copy)]
struct Style {
    enabled: bool,
}

impl Style {
    fn detect() -> Self {
        Style { enabled: io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none() }
    }

    fn bold(&self, text: &str) -> String {
        self.wrap("1", text)
    }

    fn dim(&self, text: &str) -> String {
        self.wrap("2", text)
    }

    fn wrap(&self, code: &str, text: &str) -> String {
        if self.enabled {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_string()
        }
    }
}
