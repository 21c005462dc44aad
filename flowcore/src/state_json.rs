//! A compact JSON object writer for the stored session state.
//!
//! It writes the same bytes as serde_json, with one difference in how: serde_json
//! escapes strings one byte at a time, while this writer first checks a whole string
//! and copies it at once when nothing in it needs escaping (node ids, the path, most
//! answers). Everything else is written by serde_json itself.

use serde::Serialize;
use serde_json::{Map, Value};

/// Builds one JSON object, field by field, in the order they are added.
pub(crate) struct ObjectWriter {
    buf: Vec<u8>,
    empty: bool,
}

impl ObjectWriter {
    /// An empty object, with room for about `capacity` bytes.
    pub(crate) fn with_capacity(capacity: usize) -> ObjectWriter {
        let mut buf = Vec::with_capacity(capacity);
        buf.push(b'{');
        ObjectWriter { buf, empty: true }
    }

    /// Starts a field; `key` must need no escaping (the state's keys are letters).
    fn key(&mut self, key: &str) {
        if !self.empty {
            self.buf.push(b',');
        }
        self.empty = false;
        self.buf.push(b'"');
        self.buf.extend_from_slice(key.as_bytes());
        self.buf.extend_from_slice(b"\":");
    }

    /// A string field.
    pub(crate) fn str(&mut self, key: &str, value: &str) {
        self.key(key);
        write_str(&mut self.buf, value);
    }

    /// A number (or any other value serde_json writes without strings to escape).
    pub(crate) fn number(&mut self, key: &str, value: impl Serialize) {
        self.key(key);
        write_serde(&mut self.buf, &value);
    }

    /// Any other value, written by serde_json.
    pub(crate) fn value(&mut self, key: &str, value: &impl Serialize) {
        self.key(key);
        write_serde(&mut self.buf, value);
    }

    /// A map of variables.
    pub(crate) fn map(&mut self, key: &str, map: &Map<String, Value>) {
        self.key(key);
        self.buf.push(b'{');
        for (i, (name, value)) in map.iter().enumerate() {
            if i > 0 {
                self.buf.push(b',');
            }
            write_str(&mut self.buf, name);
            self.buf.push(b':');
            match value {
                Value::String(s) => write_str(&mut self.buf, s),
                other => write_serde(&mut self.buf, other),
            }
        }
        self.buf.push(b'}');
    }

    /// Closes the object; the text, or `None` if it is not UTF-8 (it always is: every
    /// piece comes from a `str` or from serde_json).
    pub(crate) fn finish(mut self) -> Option<String> {
        self.buf.push(b'}');
        String::from_utf8(self.buf).ok()
    }
}

/// Appends `value` as serde_json writes it. Writing into a `Vec` cannot fail, and nothing
/// written here has map keys that are not strings.
fn write_serde(buf: &mut Vec<u8>, value: &impl Serialize) {
    let _ = serde_json::to_writer(&mut *buf, value);
}

/// Appends `s` as a JSON string: copied whole when it has nothing to escape, else
/// escaped by serde_json.
fn write_str(buf: &mut Vec<u8>, s: &str) {
    // The bytes serde_json escapes: control characters, `"` and `\`. A fold without an
    // early exit, so the compiler can check many bytes at a time.
    let needs_escape = s.bytes().fold(false, |acc, b| acc | (b < 0x20) | (b == b'"') | (b == b'\\'));
    if needs_escape {
        write_serde(buf, &s);
    } else {
        buf.reserve(s.len() + 2);
        buf.push(b'"');
        buf.extend_from_slice(s.as_bytes());
        buf.push(b'"');
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn strings_are_written_as_serde_json_writes_them() {
        let cases =
            ["", "plain", "ação ü 日本", "quote \" here", "back\\slash", "line\nbreak\ttab", "\u{1}\u{1f}", "\u{7f}/"];
        for s in cases {
            let mut buf = Vec::new();
            write_str(&mut buf, s);
            assert_eq!(String::from_utf8(buf).unwrap(), serde_json::to_string(s).unwrap(), "{s:?}");
        }
    }

    #[test]
    fn an_object_is_written_as_serde_json_writes_it() {
        let vars = json!({"b": 1.5, "a\"": "x\ny", "c": [1, {"d": null}], "e": true, "f": -3});
        let mut w = ObjectWriter::with_capacity(0);
        w.number("v", 1u32);
        w.str("f", "lead");
        w.map("d", vars.as_object().unwrap());
        w.number("t", -1_700_000_000_000i64);
        let expected = json!({"v": 1, "f": "lead", "d": vars, "t": -1_700_000_000_000i64});
        // serde_json's `Map` is ordered by key; the writer keeps the order of its calls.
        let text = w.finish().unwrap();
        assert_eq!(serde_json::from_str::<Value>(&text).unwrap(), expected);
        assert!(text.starts_with(r#"{"v":1,"f":"lead","d":{"a\"":"x\ny","b":1.5,"c":[1,{"d":null}],"e":true,"f":-3},"#));
        assert!(ObjectWriter::with_capacity(4).finish().is_some_and(|t| t == "{}"));
    }
}
