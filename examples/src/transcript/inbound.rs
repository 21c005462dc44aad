//! The one rule that turns a line into an inbound event, shared by `flowctl run`, the
//! `> ` lines of a `.chat` file and the conversation export.
//!
//! A line whose first non-blank character is `{` is a JSON [`Input`]
//! (`{"type":"button_reply","id":"yes"}`, `{"type":"tick"}`, …) or an effect's result
//! (`{"type":"effect_result","result":{"ok":…}}`); any other line is a text message.

use flowcore::{EffectOutcome, Input};
use serde_json::Value;
use thiserror::Error;

/// One inbound line, read.
#[derive(Clone, Debug, PartialEq)]
pub enum Inbound {
    /// A message or event for the session.
    Input(Input),
    /// The answer to the effect the session waits for; the id is the awaited one.
    EffectResult(EffectOutcome),
}

/// Why a line is not an inbound event.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum InboundError {
    /// The line starts with `{` but is not a JSON event.
    #[error("invalid JSON event: {0}")]
    Json(#[from] serde_json::Error),
    /// An `effect_result` without its `"result"`.
    #[error("effect_result needs a \"result\"")]
    MissingResult,
}

/// Reads one line as an inbound event.
///
/// ```
/// use flowcore::{EffectOutcome, Input};
/// use flowcore_examples::transcript::{parse_inbound, Inbound};
/// assert_eq!(parse_inbound("oi").unwrap(), Inbound::Input(Input::text("oi")));
/// assert_eq!(parse_inbound(r#"{"type":"button_reply","id":"yes"}"#).unwrap(), Inbound::Input(Input::choice("yes")));
/// let result = parse_inbound(r#"{"type":"effect_result","result":{"error":"down"}}"#).unwrap();
/// assert_eq!(result, Inbound::EffectResult(EffectOutcome::Failure("down".into())));
/// assert!(parse_inbound("{oops").is_err());
/// ```
pub fn parse_inbound(line: &str) -> Result<Inbound, InboundError> {
    if !line.trim_start().starts_with('{') {
        return Ok(Inbound::Input(Input::text(line)));
    }
    let value: Value = serde_json::from_str(line)?;
    if value.get("type").and_then(Value::as_str) == Some("effect_result") {
        let result = value.get("result").cloned().ok_or(InboundError::MissingResult)?;
        return Ok(Inbound::EffectResult(serde_json::from_value(result)?));
    }
    Ok(Inbound::Input(serde_json::from_value(value)?))
}

/// The line that [`parse_inbound`] reads back as `input`: plain text when it can be,
/// JSON otherwise (text that starts with `{` or spans lines, and every other event).
///
/// ```
/// use flowcore::Input;
/// use flowcore_examples::transcript::inbound_line;
/// assert_eq!(inbound_line(&Input::text("Maria")), "Maria");
/// assert_eq!(inbound_line(&Input::text("{x}")), r#"{"type":"text","text":"{x}"}"#);
/// assert_eq!(inbound_line(&Input::choice("yes")), r#"{"type":"choice","id":"yes"}"#);
/// ```
pub fn inbound_line(input: &Input) -> String {
    if let Input::Text { text } = input {
        let plain = !text.trim_start().starts_with('{') && !text.contains(['\n', '\r']);
        if plain {
            return text.clone();
        }
    }
    serde_json::to_string(input).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inbound_lines_read_back_as_the_same_input() {
        let inputs = [
            Input::text("oi"),
            Input::text("  {not json"),
            Input::text("two\nlines"),
            Input::text(""),
            Input::Choice { id: "btn".into(), title: Some("Sim".into()) },
            Input::Tick,
        ];
        for input in inputs {
            let line = inbound_line(&input);
            assert_eq!(parse_inbound(&line).unwrap(), Inbound::Input(input.clone()), "{line}");
        }
    }

    #[test]
    fn an_effect_result_without_result_is_an_error() {
        assert!(matches!(parse_inbound(r#"{"type":"effect_result"}"#), Err(InboundError::MissingResult)));
    }
}
