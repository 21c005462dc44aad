//! Other projects' webhook test data through `parse`: a conformance corpus we do not ship.
//!
//! The bodies come from the test suites of independent WhatsApp libraries (their README says
//! which). Set `FLOWCORE_PEER_WEBHOOKS` to the corpus directory (one folder per source, one
//! JSON body per file); CI does. Without it the test prints a skip line and passes.
//!
//! For every body: it parses (only a body that is not JSON may fail), every item comes out as
//! an event, and no item vanishes: the items counted in the JSON are matched one for one with
//! the events `parse` returned. A summary of what every file parses to is a snapshot, so any
//! change in how the corpus is read shows up in review.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use flowcore_meta::webhook::{Content, Interactive, Item};
use flowcore_meta::{event_to_input, parse, Event};
use serde_json::Value;

const CORPUS_VAR: &str = "FLOWCORE_PEER_WEBHOOKS";

/// The arrays of a `messages` value that hold items (`contacts` only describes senders).
const ITEM_ARRAYS: [&str; 3] = ["messages", "statuses", "errors"];

fn corpus_dir() -> Option<PathBuf> {
    match std::env::var_os(CORPUS_VAR) {
        Some(dir) if !dir.is_empty() => Some(PathBuf::from(dir)),
        _ => {
            eprintln!(
                "peer corpus test SKIPPED: set {CORPUS_VAR}=<directory of peer webhook bodies, one folder per source>"
            );
            None
        }
    }
}

/// Every `*.json` one folder deep, as (`folder/file.json`, bytes), sorted by name.
fn bodies(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut bodies = Vec::new();
    for folder in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let folder = folder.unwrap().path();
        if !folder.is_dir() {
            continue;
        }
        for file in std::fs::read_dir(&folder).unwrap() {
            let path = file.unwrap().path();
            if path.extension().is_some_and(|ext| ext == "json") {
                let name = path.strip_prefix(dir).unwrap().to_string_lossy().replace('\\', "/");
                let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{name}: {e}"));
                bodies.push((name, bytes));
            }
        }
    }
    bodies.sort();
    bodies
}

/// What the JSON holds, one slot per item an event must stand for: `message`, `status`,
/// `error`, `array:<name>` for another array inside a `messages` value, `field:<name>` for a
/// change of another field. Levels the parser cannot read (a non-array `entry`, a value
/// without metadata) count as one `level:<what>` slot.
fn expected_slots(body: &Value) -> Vec<String> {
    let mut slots = Vec::new();
    let Some(entries) = body.get("entry") else { return slots };
    let Some(entries) = entries.as_array() else {
        slots.push("level:entry".to_owned());
        return slots;
    };
    for entry in entries {
        let Some(changes) = entry.get("changes").and_then(Value::as_array) else {
            if entry.get("changes").is_some_and(|c| !c.is_null()) {
                slots.push("level:entry".to_owned());
            }
            continue;
        };
        for change in changes {
            let field = change.get("field").and_then(Value::as_str).unwrap_or("");
            let value = change.get("value");
            if field != "messages" {
                slots.push(format!("field:{field}"));
                continue;
            }
            let Some(value) = value.and_then(Value::as_object) else {
                slots.push("level:value".to_owned());
                continue;
            };
            if value.get("metadata").and_then(|m| m.get("phone_number_id")).and_then(Value::as_str).is_none() {
                slots.push("level:value".to_owned());
                continue;
            }
            for (key, items) in value {
                let Some(items) = items.as_array() else { continue };
                let slot = match key.as_str() {
                    "contacts" => continue,
                    "messages" => "message".to_owned(),
                    "statuses" => "status".to_owned(),
                    "errors" => "error".to_owned(),
                    other => format!("array:{other}"),
                };
                slots.extend(std::iter::repeat_n(slot, items.len()));
            }
        }
    }
    slots
}

/// The slot an event fills (`None` for an unreadable contact, which stands for no item).
fn slot_of(event: &Event<'_>) -> Option<String> {
    Some(match event {
        Event::Message(_) | Event::Unparsed { item: Item::Message, .. } => "message".to_owned(),
        Event::Status(_) | Event::Unparsed { item: Item::Status, .. } => "status".to_owned(),
        Event::Error(_) | Event::Unparsed { item: Item::Error, .. } => "error".to_owned(),
        Event::Unknown { array: Some(array), business: Some(_), .. } if !ITEM_ARRAYS.contains(&array.as_ref()) => {
            format!("array:{array}")
        }
        Event::Unknown { kind, array: None, .. } => format!("field:{kind}"),
        Event::Unparsed { item: Item::Contact, .. } => return None,
        Event::Unparsed { item: Item::Entry | Item::Change, .. } => "level:entry".to_owned(),
        Event::Unparsed { item: Item::Value, .. } => "level:value".to_owned(),
        other => panic!("an event kind this test does not know: {other:?}"),
    })
}

/// A compact line per event: what it is, and for unreadable items, why.
fn describe(event: &Event<'_>) -> String {
    match event {
        Event::Message(m) => {
            let kind = match &m.message.content {
                Content::Interactive(Interactive::ButtonReply { .. }) => "interactive/button_reply".to_owned(),
                Content::Interactive(Interactive::ListReply { .. }) => "interactive/list_reply".to_owned(),
                Content::Interactive(Interactive::NfmReply { .. }) => "interactive/nfm_reply".to_owned(),
                Content::Interactive(Interactive::Other { kind, .. }) => format!("interactive/other:{kind}"),
                Content::Unknown { kind, .. } => format!("unknown:{kind}"),
                content => content.kind().to_owned(),
            };
            format!("message {kind}")
        }
        Event::Status(s) if s.status.participant().is_some() => {
            format!("status {} of a group participant", s.status.status.as_str())
        }
        Event::Status(s) => format!("status {}", s.status.status.as_str()),
        Event::Error(e) => format!("error {}", e.error.code),
        Event::Unknown { array: Some(array), .. } => format!("unknown array {array}"),
        Event::Unknown { kind, .. } => format!("unknown field {kind}"),
        Event::Unparsed { item, error, .. } => format!("unparsed {item:?}: {error}"),
        other => format!("{other:?}"),
    }
}

#[test]
fn every_peer_body_parses_and_nothing_is_dropped() {
    let Some(dir) = corpus_dir() else { return };
    let bodies = bodies(&dir);
    assert!(bodies.len() >= 150, "{} bodies in {}: is {CORPUS_VAR} the corpus?", bodies.len(), dir.display());

    let mut summary = BTreeMap::new();
    let mut not_json = Vec::new();
    for (name, bytes) in &bodies {
        let json = serde_json::from_slice::<Value>(bytes);
        let webhook = match (parse(bytes), json) {
            (Ok(webhook), Ok(json)) => {
                let mut expected = expected_slots(&json);
                let mut found: Vec<String> = webhook.events().filter_map(slot_of).collect();
                expected.sort();
                found.sort();
                assert_eq!(found, expected, "{name}: the events do not match the items in the JSON");
                webhook
            }
            (Err(e), Err(_)) => {
                not_json.push(name.as_str());
                summary.insert(name.as_str(), vec![format!("body error: {e}")]);
                continue;
            }
            (Err(e), Ok(_)) => panic!("{name}: a JSON body failed as a whole: {e}"),
            (Ok(_), Err(e)) => panic!("{name}: parsed although it is not JSON ({e})"),
        };

        let text = std::str::from_utf8(bytes).unwrap();
        for event in &webhook {
            assert!(text.contains(event.raw().get()), "{name}: an event's raw JSON is not from the body");
            match event {
                Event::Message(m) => {
                    assert_eq!(event.dedup_key().unwrap().to_string(), format!("message:{}", m.message.id), "{name}");
                    assert!(event_to_input(event).is_some(), "{name}: a message with no input");
                }
                Event::Status(_) => assert!(event.dedup_key().is_some(), "{name}"),
                Event::Unparsed { error, .. } => {
                    assert!(!error.is_empty(), "{name}: an unparsed item without a reason")
                }
                _ => {}
            }
        }
        summary.insert(name.as_str(), webhook.events().map(describe).collect());
    }
    assert_eq!(not_json.len(), 1, "only one body of the corpus is not JSON: {not_json:?}");

    let lines: Vec<String> = summary.iter().map(|(name, events)| format!("{name}: {}", events.join(" | "))).collect();
    insta::assert_snapshot!("peer_corpus", lines.join("\n"));
}
