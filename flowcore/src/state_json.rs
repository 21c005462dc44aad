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
        let start = usize::from(self.empty);
        self.empty = false;
        if let &[k] = key.as_bytes() {
            // One letter, as every key of the state: five fixed bytes, copied inline.
            self.buf.extend_from_slice(&[b',', b'"', k, b'"', b':'][start..]);
        } else {
            self.buf.extend_from_slice(&b","[start..]);
            self.buf.push(b'"');
            self.buf.extend_from_slice(key.as_bytes());
            self.buf.extend_from_slice(b"\":");
        }
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

/// Reads the text [`ObjectWriter`] writes, strictly: no whitespace, strings without
/// escapes, integers only. Every method gives `None` for anything else, and the caller
/// then reads the text with serde_json, which has the last word (also on errors). So a
/// `Some` must always be what serde_json reads from the same text.
pub(crate) struct Reader<'a> {
    text: &'a str,
    at: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(text: &'a str) -> Reader<'a> {
        Reader { text, at: 0 }
    }

    fn peek(&self) -> Option<u8> {
        self.text.as_bytes().get(self.at).copied()
    }

    /// Takes `byte` if it comes next.
    pub(crate) fn eat(&mut self, byte: u8) -> Option<()> {
        (self.peek()? == byte).then(|| self.at += 1)
    }

    /// The end of the text.
    pub(crate) fn end(&self) -> Option<()> {
        (self.at == self.text.len()).then_some(())
    }

    /// A one-letter key and its colon: `"v":`.
    pub(crate) fn key(&mut self) -> Option<u8> {
        match self.text.as_bytes().get(self.at..self.at + 4)? {
            [b'"', key, b'"', b':'] if key.is_ascii_alphabetic() => {
                self.at += 4;
                Some(*key)
            }
            _ => None,
        }
    }

    /// A string without escapes or control characters.
    pub(crate) fn str(&mut self) -> Option<&'a str> {
        self.eat(b'"')?;
        let rest = self.text.as_bytes().get(self.at..)?;
        let len = plain_len(rest);
        if rest.get(len) != Some(&b'"') {
            return None;
        }
        // Both ends are ASCII bytes, so char boundaries.
        let s = self.text.get(self.at..self.at + len)?;
        self.at += len + 1;
        Some(s)
    }

    /// A non-negative integer that fits a `u64`, without leading zeros.
    pub(crate) fn uint(&mut self) -> Option<u64> {
        let digits = self.text.as_bytes().get(self.at..)?;
        let len = digits.iter().position(|b| !b.is_ascii_digit()).unwrap_or(digits.len());
        if len == 0 || (len > 1 && digits[0] == b'0') {
            return None;
        }
        let mut n = 0u64;
        for &d in &digits[..len] {
            n = n.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
        }
        self.at += len;
        Some(n)
    }

    /// An integer that fits an `i64` (not `-0`, nor `i64::MIN`).
    pub(crate) fn int(&mut self) -> Option<i64> {
        if self.eat(b'-').is_some() {
            let n = i64::try_from(self.uint()?).ok()?;
            (n != 0).then_some(-n)
        } else {
            i64::try_from(self.uint()?).ok()
        }
    }

    /// A map of variables whose values are strings, integers, booleans or null.
    pub(crate) fn map(&mut self) -> Option<Map<String, Value>> {
        self.eat(b'{')?;
        let mut map = Map::new();
        if self.eat(b'}').is_some() {
            return Some(map);
        }
        loop {
            let name = self.str()?;
            self.eat(b':')?;
            let value = self.value()?;
            map.insert(name.to_string(), value);
            if self.eat(b'}').is_some() {
                return Some(map);
            }
            self.eat(b',')?;
        }
    }

    fn value(&mut self) -> Option<Value> {
        let literal = |r: &mut Reader<'_>, word: &str, value: Value| {
            let end = r.at + word.len();
            (r.text.get(r.at..end)? == word).then(|| {
                r.at = end;
                value
            })
        };
        match self.peek()? {
            b'"' => Some(Value::String(self.str()?.to_string())),
            b't' => literal(self, "true", Value::Bool(true)),
            b'f' => literal(self, "false", Value::Bool(false)),
            b'n' => literal(self, "null", Value::Null),
            b'-' => Some(Value::from(self.int()?)),
            _ => Some(Value::from(self.uint()?)),
        }
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
    if needs_escape(s.as_bytes()) {
        write_serde(buf, &s);
    } else {
        buf.reserve(s.len() + 2);
        buf.push(b'"');
        buf.extend_from_slice(s.as_bytes());
        buf.push(b'"');
    }
}

/// Whether `bytes` has a byte serde_json escapes: a control character, `"` or `\\`.
fn needs_escape(bytes: &[u8]) -> bool {
    plain_len(bytes) < bytes.len()
}

/// The index of the first byte serde_json escapes (a control character, `"` or `\\`),
/// or the length when there is none. Eight bytes at a time (SWAR on a `u64`: the lowest
/// flagged byte is exact, as a borrow only runs upwards from a match), then the tail.
fn plain_len(bytes: &[u8]) -> usize {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    /// The high bit of each byte of `x` that is zero (the lowest one exactly).
    fn zero_bytes(x: u64) -> u64 {
        x.wrapping_sub(ONES) & !x & HIGHS
    }
    let mut chunks = bytes.chunks_exact(8);
    let mut at = 0;
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        let x = u64::from_le_bytes(word);
        // A byte below 0x20 (its high bit clear), `"` (0x22) or `\\` (0x5c).
        let found = (x.wrapping_sub(ONES * 0x20) & !x & HIGHS)
            | zero_bytes(x ^ (ONES * u64::from(b'"')))
            | zero_bytes(x ^ (ONES * u64::from(b'\\')));
        if found != 0 {
            return at + (found.trailing_zeros() / 8) as usize;
        }
        at += 8;
    }
    let tail = chunks.remainder();
    at + tail.iter().position(|&b| b < 0x20 || b == b'"' || b == b'\\').unwrap_or(tail.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_escape_check_finds_every_byte_that_needs_escaping_at_every_offset() {
        for len in 0..20 {
            let plain = "aé日~ !#[]{}".repeat(3);
            let base: Vec<u8> = plain.bytes().filter(|b| b.is_ascii()).cycle().take(len).collect();
            assert!(!needs_escape(&base), "{base:?}");
            for at in 0..len {
                for b in 0u8..=255 {
                    let mut bytes = base.clone();
                    bytes[at] = b;
                    let want = b < 0x20 || b == b'"' || b == b'\\';
                    assert_eq!(needs_escape(&bytes), want, "byte {b:#x} at {at} of {len}");
                }
            }
        }
    }

    #[test]
    fn the_plain_length_stops_at_the_first_byte_to_escape() {
        for len in 0..20 {
            for first in 0..len {
                for second in first..len {
                    let mut bytes = vec![b'a'; len];
                    bytes[second] = b'\\';
                    bytes[first] = b'"';
                    assert_eq!(plain_len(&bytes), first, "{bytes:?}");
                    bytes[first] = 0x1f;
                    assert_eq!(plain_len(&bytes), first, "{bytes:?}");
                }
            }
            assert_eq!(plain_len(&vec![0xffu8; len]), len);
        }
    }

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
