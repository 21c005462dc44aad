//! Variable scopes, dotted paths and how JSON values read as text and numbers.

use std::borrow::Cow;
use std::fmt::Write as _;

use serde_json::{Map, Value};

/// A pre-parsed dotted path into the variables: `order.items.0.name`.
///
/// One allocation for a plain name (`name`): the segments are ranges into `full`, and
/// the list of segments after the first stays empty (unallocated) when there are none.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct VarPath {
    /// The path as written (trimmed), used for flat lookups and display.
    full: Box<str>,
    /// The first segment (the variable's name), trimmed: a range of `full`.
    root: Seg,
    /// The segments after the first, trimmed.
    rest: Box<[Seg]>,
}

#[derive(Clone, Debug, PartialEq)]
struct Seg {
    start: usize,
    end: usize,
    index: Option<usize>,
}

impl VarPath {
    /// Parses `a.b.0`; whitespace around segments is ignored.
    pub(crate) fn parse(text: &str) -> VarPath {
        let full = text.trim();
        let mut root = None;
        let mut rest = Vec::new();
        let mut start = 0;
        loop {
            let end = full.get(start..).and_then(|s| s.find('.')).map_or(full.len(), |i| start + i);
            let raw = full.get(start..end).unwrap_or_default();
            let lead = raw.len() - raw.trim_start().len();
            let key = raw.trim();
            let seg = Seg { start: start + lead, end: start + lead + key.len(), index: key.parse::<usize>().ok() };
            match root {
                None => root = Some(seg),
                Some(_) => rest.push(seg),
            }
            if end >= full.len() {
                break;
            }
            start = end + 1;
        }
        let root = root.unwrap_or(Seg { start: 0, end: 0, index: None });
        VarPath { full: full.into(), root, rest: rest.into_boxed_slice() }
    }

    fn key(&self, seg: &Seg) -> &str {
        self.full.get(seg.start..seg.end).unwrap_or_default()
    }

    /// The first segment: the variable's name.
    pub(crate) fn root(&self) -> &str {
        self.key(&self.root)
    }

    /// The path as written.
    pub(crate) fn as_str(&self) -> &str {
        &self.full
    }
}

/// Where templates and conditions read variables: the session's own, then the flow's
/// declared defaults.
#[derive(Clone, Copy)]
pub(crate) struct Scope<'a> {
    pub(crate) vars: &'a Map<String, Value>,
    pub(crate) defaults: &'a Map<String, Value>,
}

impl<'a> Scope<'a> {
    /// The variable named exactly `name`.
    pub(crate) fn var(&self, name: &str) -> Option<&'a Value> {
        self.vars.get(name).or_else(|| self.defaults.get(name))
    }

    /// Follows a dotted path; a flat variable whose name contains dots is a fallback.
    pub(crate) fn get(&self, path: &VarPath) -> Option<&'a Value> {
        if path.rest.is_empty() {
            // A plain name: the trimmed text is the name.
            return self.var(&path.full);
        }
        let mut cur = self.var(path.root());
        for seg in path.rest.iter() {
            cur = match cur {
                Some(Value::Object(map)) => map.get(path.key(seg)),
                Some(Value::Array(items)) => seg.index.and_then(|i| items.get(i)),
                _ => None,
            };
            if cur.is_none() {
                break;
            }
        }
        match cur {
            None if !path.rest.is_empty() => self.var(&path.full),
            found => found,
        }
    }
}

/// Appends a value as text: strings unquoted, numbers as written, null as nothing,
/// arrays and objects as compact JSON.
pub(crate) fn write_value(out: &mut String, value: &Value) {
    match value {
        Value::String(s) => out.push_str(s),
        Value::Null => {}
        Value::Bool(true) => out.push_str("true"),
        Value::Bool(false) => out.push_str("false"),
        Value::Number(n) => {
            let _ = write!(out, "{n}");
        }
        other => {
            let _ = write!(out, "{other}");
        }
    }
}

/// A value as text (see [`write_value`]).
pub(crate) fn value_text(value: &Value) -> Cow<'_, str> {
    match value {
        Value::String(s) => Cow::Borrowed(s),
        Value::Null => Cow::Borrowed(""),
        Value::Bool(true) => Cow::Borrowed("true"),
        Value::Bool(false) => Cow::Borrowed("false"),
        other => {
            let mut s = String::new();
            write_value(&mut s, other);
            Cow::Owned(s)
        }
    }
}

/// Parses a finite number from text (surrounding whitespace ignored; `inf`/`NaN` are not numbers).
pub(crate) fn parse_number(text: &str) -> Option<f64> {
    let t = text.trim();
    let first = *t.as_bytes().first()?;
    if !(first.is_ascii_digit() || matches!(first, b'-' | b'+' | b'.')) {
        return None;
    }
    t.parse::<f64>().ok().filter(|f| f.is_finite())
}

/// A value as a number: numbers, and strings that parse as one.
pub(crate) fn value_number(value: &Value) -> Option<f64> {
    match value {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => parse_number(s),
        _ => None,
    }
}

/// A JSON number for `f`: an integer when it is whole and fits, null when not finite.
pub(crate) fn number_value(f: f64) -> Value {
    if !f.is_finite() {
        return Value::Null;
    }
    if f.fract() == 0.0 && f.abs() < 9.0e15 {
        return Value::from(f as i64);
    }
    serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)
}

/// Whether a value counts as empty: missing, null, blank text, `[]` or `{}`.
pub(crate) fn is_empty_value(value: Option<&Value>) -> bool {
    match value {
        None | Some(Value::Null) => true,
        Some(Value::String(s)) => s.trim().is_empty(),
        Some(Value::Array(a)) => a.is_empty(),
        Some(Value::Object(o)) => o.is_empty(),
        Some(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn paths_follow_objects_and_arrays() {
        let vars = json!({"order": {"status": "sent", "items": [{"name": "pen"}]}, "a.b": 1});
        let defaults = json!({"company": "Acme"});
        let scope = Scope { vars: vars.as_object().unwrap(), defaults: defaults.as_object().unwrap() };
        let cases = [
            ("order.status", Some(json!("sent"))),
            ("order.items.0.name", Some(json!("pen"))),
            ("order.items.1.name", None),
            ("order.missing", None),
            (" company ", Some(json!("Acme"))),
            ("a.b", Some(json!(1))),
            ("nope", None),
        ];
        for (path, expected) in cases {
            assert_eq!(scope.get(&VarPath::parse(path)).cloned(), expected, "{path}");
        }
    }

    #[test]
    fn values_read_as_text_and_numbers() {
        let cases = [
            (json!("x"), "x", None),
            (json!(30), "30", Some(30.0)),
            (json!(1.5), "1.5", Some(1.5)),
            (json!("  9 "), "  9 ", Some(9.0)),
            (json!(null), "", None),
            (json!(true), "true", None),
            (json!({"a": [1, "b"]}), r#"{"a":[1,"b"]}"#, None),
            (json!("inf"), "inf", None),
            (json!("NaN"), "NaN", None),
        ];
        for (value, text, number) in cases {
            assert_eq!(value_text(&value), text);
            assert_eq!(value_number(&value), number, "{value}");
        }
        assert_eq!(number_value(3.0), json!(3));
        assert_eq!(number_value(0.5), json!(0.5));
        assert_eq!(number_value(f64::NAN), json!(null));
    }
}
