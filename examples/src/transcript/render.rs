//! How a bot output reads in a `.chat` file: the text a `< ` line compares with.

use flowcore::{Message, Output};

/// The one-line description of an output, before [`escape`].
///
/// A text message is its text; buttons and lists are the body followed by
/// ` [Title 1 | Title 2]`; media `[image: URL] caption`; a template `[template NAME]`;
/// an effect `(effect KIND)`; a handoff `(handoff)` or `(handoff QUEUE)`; the end `(end)`.
///
/// ```
/// use flowcore::{Choice, Message, NodeId, Output};
/// use flowcore_examples::transcript::describe;
/// let buttons = Message::Buttons { header: None, body: "Pronto?".into(), footer: None,
///     buttons: vec![Choice { id: "y".into(), title: "Sim".into() }, Choice { id: "n".into(), title: "Não".into() }] };
/// let output = Output::Send { node: NodeId::from("ask"), message: buttons };
/// assert_eq!(describe(&output), "Pronto? [Sim | Não]");
/// ```
pub fn describe(output: &Output) -> String {
    match output {
        Output::Send { message, .. } => describe_message(message),
        Output::Effect(request) => {
            let kind = serde_json::to_value(&request.kind).ok();
            let kind = kind.as_ref().and_then(|v| v.get("effect")).and_then(|v| v.as_str()).unwrap_or("unknown");
            format!("(effect {kind})")
        }
        Output::Handoff { queue: Some(queue), .. } if !queue.is_empty() => format!("(handoff {queue})"),
        Output::Handoff { .. } => "(handoff)".to_string(),
        Output::End { .. } => "(end)".to_string(),
        other => serde_json::to_string(other).unwrap_or_default(),
    }
}

/// The description of a message, as [`describe`] gives it.
pub fn describe_message(message: &Message) -> String {
    match message {
        Message::Text { text } => text.clone(),
        Message::Buttons { body, buttons, .. } => with_titles(body, buttons.iter().map(|b| b.title.as_str())),
        Message::List { body, sections, .. } => {
            with_titles(body, sections.iter().flat_map(|s| &s.rows).map(|r| r.title.as_str()))
        }
        Message::Media { kind, link, caption, .. } => match caption {
            Some(caption) => format!("[{}: {link}] {caption}", kind.as_str()),
            None => format!("[{}: {link}]", kind.as_str()),
        },
        Message::Template { name, .. } => format!("[template {name}]"),
        other => serde_json::to_string(other).unwrap_or_default(),
    }
}

fn with_titles<'a>(body: &str, titles: impl Iterator<Item = &'a str>) -> String {
    format!("{body} [{}]", titles.collect::<Vec<_>>().join(" | "))
}

/// Escapes a description for one line: `\` becomes `\\`, a newline `\n`, a carriage
/// return `\r`. An exact `< ` line holds the escaped text.
///
/// ```
/// use flowcore_examples::transcript::escape;
/// assert_eq!(escape("a\nb\\c"), r"a\nb\\c");
/// ```
pub fn escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\\' => escaped.push_str("\\\\"),
            '\n' => escaped.push_str("\\n"),
            '\r' => escaped.push_str("\\r"),
            c => escaped.push(c),
        }
    }
    escaped
}

#[cfg(test)]
mod tests {
    use super::*;
    use flowcore::{EffectId, EffectKind, EffectRequest, EndReason, ListRow, ListSection, MediaKind, NodeId};

    #[test]
    fn every_output_kind_has_a_description() {
        let node = NodeId::from("n");
        let send = |message| Output::Send { node: node.clone(), message };
        let row = |id: &str, title: &str| ListRow { id: id.into(), title: title.into(), description: None };
        let list = Message::List {
            header: None,
            body: "Escolha:".into(),
            footer: None,
            button: "Ver".into(),
            sections: vec![
                ListSection { title: None, rows: vec![row("a", "A")] },
                ListSection { title: Some("S".into()), rows: vec![row("b", "B")] },
            ],
        };
        let media =
            Message::Media { kind: MediaKind::Image, link: "https://x/y.png".into(), caption: None, filename: None };
        let effect = Output::Effect(EffectRequest {
            id: EffectId(1),
            node: node.clone(),
            kind: EffectKind::Analytics { event: "e".into(), properties: serde_json::Value::Null },
        });
        let cases = [
            (send(Message::Text { text: "oi".into() }), "oi"),
            (send(list), "Escolha: [A | B]"),
            (send(media), "[image: https://x/y.png]"),
            (effect, "(effect analytics)"),
            (Output::Handoff { node: node.clone(), queue: Some("tech".into()) }, "(handoff tech)"),
            (Output::Handoff { node: node.clone(), queue: None }, "(handoff)"),
            (Output::End { node: None, reason: EndReason::Completed }, "(end)"),
        ];
        for (output, expected) in cases {
            assert_eq!(describe(&output), expected);
        }
    }
}
