//! The `.chat` format, read into conversations with the line number of every step.

use flowcore::Timestamp;
use regex::Regex;
use serde_json::{Map, Value};
use thiserror::Error;

use super::clock::parse_rfc3339;
use super::inbound::{parse_inbound, Inbound, InboundError};

/// A parsed `.chat` file: its conversations, each run on a fresh session.
#[derive(Debug)]
pub struct ChatFile {
    /// The conversations, in file order; a conversation with no steps is left out.
    pub conversations: Vec<ChatConversation>,
}

/// One conversation of a `.chat` file.
#[derive(Debug)]
pub struct ChatConversation {
    /// The line of its first step.
    pub line: usize,
    /// The fixed clock from `@now`; the system clock when absent.
    pub now: Option<Timestamp>,
    /// The seed from `@seed` (0 when absent).
    pub seed: u64,
    /// The initial variables from `@vars`.
    pub vars: Map<String, Value>,
    /// The inbound and expected lines, in order.
    pub steps: Vec<Step>,
}

/// One `>`, `<` or `<~` line.
#[derive(Debug)]
pub struct Step {
    /// Its 1-based line number.
    pub line: usize,
    /// What it says.
    pub kind: StepKind,
}

/// What a step says.
#[derive(Debug)]
pub enum StepKind {
    /// `> …`: an inbound message or event, with the text as written.
    Send {
        /// The text after `> `.
        text: String,
        /// The event it reads as.
        inbound: Inbound,
    },
    /// `< …`: the next bot output, described and escaped, is exactly this.
    Exact(String),
    /// `<~ …`: the next bot output's description matches this regex.
    Matches(Regex),
}

/// A syntax error in a `.chat` file.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ParseError {
    /// A line none of the `.chat` forms starts.
    #[error("line {line}: not a .chat line (lines start with >, <, <~, #, ---, @now, @seed or @vars)")]
    UnknownLine {
        /// The line number.
        line: usize,
    },
    /// A `> ` line that is not an inbound event.
    #[error("line {line}: {source}")]
    Inbound {
        /// The line number.
        line: usize,
        /// Why.
        source: InboundError,
    },
    /// A `<~ ` line whose regex does not compile.
    #[error("line {line}: invalid regex: {source}")]
    Regex {
        /// The line number.
        line: usize,
        /// Why.
        source: regex::Error,
    },
    /// An `@` line after the conversation's first step.
    #[error("line {line}: @{name} must come before the conversation's first > or < line")]
    LateDirective {
        /// The line number.
        line: usize,
        /// The directive's name.
        name: &'static str,
    },
    /// An `@now`, `@seed` or `@vars` value that does not parse.
    #[error("line {line}: @{name} {message}")]
    BadDirective {
        /// The line number.
        line: usize,
        /// The directive's name.
        name: &'static str,
        /// What is wrong.
        message: String,
    },
}

impl ParseError {
    /// The line the error is on.
    pub fn line(&self) -> usize {
        match self {
            ParseError::UnknownLine { line }
            | ParseError::Inbound { line, .. }
            | ParseError::Regex { line, .. }
            | ParseError::LateDirective { line, .. }
            | ParseError::BadDirective { line, .. } => *line,
        }
    }
}

/// Parses a `.chat` file.
///
/// ```
/// use flowcore_examples::transcript::parse_chat;
/// let file = parse_chat("@seed 7\n> oi\n< Olá!\n---\n> tchau\n<~ ^Até\n").unwrap();
/// assert_eq!(file.conversations.len(), 2);
/// assert_eq!(file.conversations[0].seed, 7);
/// assert_eq!(file.conversations[1].steps[1].line, 6);
/// let err = parse_chat("> oi\nhello\n").unwrap_err();
/// assert_eq!(err.to_string(), "line 2: not a .chat line (lines start with >, <, <~, #, ---, @now, @seed or @vars)");
/// ```
pub fn parse_chat(text: &str) -> Result<ChatFile, ParseError> {
    let mut conversations = Vec::new();
    let mut current = ChatConversation::empty();
    for (index, raw) in text.lines().enumerate() {
        let line = index + 1;
        let content = raw.strip_suffix('\r').unwrap_or(raw);
        if content.trim().is_empty() || content.starts_with('#') {
            continue;
        }
        if content.trim_end() == "---" {
            conversations.push(std::mem::replace(&mut current, ChatConversation::empty()));
            continue;
        }
        if let Some(rest) = content.strip_prefix('@') {
            current.directive(line, rest)?;
            continue;
        }
        let kind = if let Some(pattern) = after(content, "<~") {
            StepKind::Matches(Regex::new(pattern).map_err(|source| ParseError::Regex { line, source })?)
        } else if let Some(expected) = after(content, "<") {
            StepKind::Exact(expected.to_string())
        } else if let Some(text) = after(content, ">") {
            let inbound = parse_inbound(text).map_err(|source| ParseError::Inbound { line, source })?;
            StepKind::Send { text: text.to_string(), inbound }
        } else {
            return Err(ParseError::UnknownLine { line });
        };
        if current.steps.is_empty() {
            current.line = line;
        }
        current.steps.push(Step { line, kind });
    }
    conversations.push(current);
    conversations.retain(|c| !c.steps.is_empty());
    Ok(ChatFile { conversations })
}

/// The rest of `line` after `marker` and one space, or `Some("")` for the bare marker.
fn after<'a>(line: &'a str, marker: &str) -> Option<&'a str> {
    let rest = line.strip_prefix(marker)?;
    if rest.is_empty() {
        return Some("");
    }
    rest.strip_prefix(' ')
}

impl ChatConversation {
    fn empty() -> Self {
        ChatConversation { line: 0, now: None, seed: 0, vars: Map::new(), steps: Vec::new() }
    }

    fn directive(&mut self, line: usize, rest: &str) -> Result<(), ParseError> {
        let (name, value) = rest.split_once(' ').unwrap_or((rest, ""));
        let value = value.trim();
        let name: &'static str = match name {
            "now" => "now",
            "seed" => "seed",
            "vars" => "vars",
            _ => return Err(ParseError::UnknownLine { line }),
        };
        if !self.steps.is_empty() {
            return Err(ParseError::LateDirective { line, name });
        }
        let bad = |message: String| ParseError::BadDirective { line, name, message };
        match name {
            "now" => self.now = Some(parse_rfc3339(value).map_err(bad)?),
            "seed" => self.seed = value.parse().map_err(|_| bad(format!("needs a whole number, not {value:?}")))?,
            _ => match serde_json::from_str(value) {
                Ok(Value::Object(vars)) => self.vars = vars,
                Ok(_) => return Err(bad("needs a JSON object".to_string())),
                Err(err) => return Err(bad(format!("is not valid JSON: {err}"))),
            },
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error_of(text: &str) -> String {
        parse_chat(text).unwrap_err().to_string()
    }

    #[test]
    fn steps_keep_their_line_numbers_and_directives_apply_per_conversation() {
        let text = "# a comment\n@now 2026-01-05T09:30:00-03:00\n@vars {\"k\":\"v\"}\n\n> oi\n< Olá\n---\n> {\"type\":\"tick\"}\n<\n";
        let file = parse_chat(text).unwrap();
        let [first, second] = &file.conversations[..] else { panic!("two conversations: {file:?}") };
        assert_eq!(first.line, 5);
        assert_eq!(first.now, Some(Timestamp::from_unix_seconds(1_767_616_200)));
        assert_eq!(first.vars.get("k"), Some(&Value::from("v")));
        assert!(matches!(&first.steps[1].kind, StepKind::Exact(text) if text == "Olá"));
        assert_eq!(second.now, None, "directives do not carry over");
        assert!(second.vars.is_empty());
        assert!(matches!(&second.steps[0].kind, StepKind::Send { inbound: Inbound::Input(flowcore::Input::Tick), .. }));
        assert!(matches!(&second.steps[1].kind, StepKind::Exact(text) if text.is_empty()), "a bare < is empty text");
    }

    #[test]
    fn syntax_errors_name_their_line() {
        let cases = [
            ("> oi\n<x\n", "line 2: not a .chat line"),
            ("> {\"type\":\n", "line 1: invalid JSON event"),
            ("> oi\n<~ (\n", "line 2: invalid regex"),
            ("> oi\n@seed 1\n", "line 2: @seed must come before"),
            ("@seed x\n", "line 1: @seed needs a whole number"),
            ("@vars [1]\n", "line 1: @vars needs a JSON object"),
            ("@now yesterday\n", "line 1: @now "),
            ("@later 1\n", "line 1: not a .chat line"),
        ];
        for (text, expected) in cases {
            let error = error_of(text);
            assert!(error.starts_with(expected), "{text:?}: {error}");
        }
    }

    #[test]
    fn empty_conversations_are_left_out() {
        let file = parse_chat("---\n# nothing\n---\n> oi\n---\n").unwrap();
        assert_eq!(file.conversations.len(), 1);
        assert_eq!(file.conversations[0].line, 4);
    }
}
