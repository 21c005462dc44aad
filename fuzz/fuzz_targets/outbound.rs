//! flowcore messages with arbitrary texts, buttons and rows through the bridge to Meta's
//! outgoing messages: each is built (every limit checked) or refused with a typed error.
#![no_main]

use arbitrary::Arbitrary;
use flowcore::{Choice, ListRow, ListSection, MediaKind, Message};
use flowcore_meta::outgoing::Recipient;
use flowcore_meta::to_outgoing;
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
enum Case {
    Text(String),
    Buttons { header: Option<String>, body: String, footer: Option<String>, buttons: Vec<(String, String)> },
    List { body: String, button: String, sections: Vec<(Option<String>, Vec<(String, String, Option<String>)>)> },
    Media { kind: u8, link: String, caption: Option<String>, filename: Option<String> },
    Template { name: String, language: String },
}

fuzz_target!(|case: Case| {
    let message = match case {
        Case::Text(text) => Message::Text { text },
        Case::Buttons { header, body, footer, buttons } => Message::Buttons {
            header,
            body,
            footer,
            buttons: buttons.into_iter().map(|(id, title)| Choice { id, title }).collect(),
        },
        Case::List { body, button, sections } => Message::List {
            header: None,
            body,
            footer: None,
            button,
            sections: sections
                .into_iter()
                .map(|(title, rows)| ListSection {
                    title,
                    rows: rows.into_iter().map(|(id, title, description)| ListRow { id, title, description }).collect(),
                })
                .collect(),
        },
        Case::Media { kind, link, caption, filename } => {
            let kinds = [MediaKind::Image, MediaKind::Video, MediaKind::Audio, MediaKind::Document, MediaKind::Sticker];
            Message::Media { kind: kinds[kind as usize % kinds.len()], link, caption, filename }
        }
        Case::Template { name, language } => Message::Template { name, language, components: serde_json::Value::Null },
    };
    let to = Recipient::Phone("5511999999999".into());
    if let Ok(messages) = to_outgoing(&to, &message) {
        for message in messages {
            let _ = message.to_json();
        }
    }
});
