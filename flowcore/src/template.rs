//! `{{var}}` templates, parsed once at compile time and rendered without re-substitution.

use std::fmt;

use serde_json::{Map, Value};

use crate::value::{write_value, Scope, VarPath};

/// The most bytes one rendering produces; longer output is cut at a character boundary.
/// Bounds memory and stored state when a flow feeds a variable back into itself.
pub(crate) const MAX_RENDERED: usize = 64 * 1024;

/// A parsed template: literal text and variable references, in order.
///
/// Rendering writes each variable's value once; a value that itself contains `{{x}}` is
/// written as is, never substituted again.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Template {
    /// The source text; literal parts are ranges of it (no allocation per part).
    text: Box<str>,
    /// The parts; empty (unallocated) when the text has no references, so a literal
    /// template is one allocation.
    parts: Box<[Part]>,
    /// The literal bytes plus [`VAR_HINT`] per reference.
    len_hint: usize,
}

/// The bytes a rendering reserves per reference (a name, a number, a short answer).
const VAR_HINT: usize = 16;

#[derive(Clone, Debug, PartialEq)]
enum Part {
    /// `text[start..end]`.
    Lit(usize, usize),
    Var(VarPath),
}

/// The first `pat` byte pair at or after `from` (`pat` is ASCII, so the index is a
/// character boundary).
fn find_pair(bytes: &[u8], from: usize, pat: u8) -> Option<usize> {
    let rest = bytes.get(from..)?;
    let mut i = 0;
    while let Some(j) = rest.get(i..).and_then(|r| r.iter().position(|b| *b == pat)) {
        let at = i + j;
        if rest.get(at + 1) == Some(&pat) {
            return Some(from + at);
        }
        i = at + 1;
    }
    None
}

impl Template {
    /// Parses `text`. Never fails: an unclosed or empty `{{` stays literal text.
    pub(crate) fn parse(text: &str) -> Template {
        let bytes = text.as_bytes();
        // At most two parts per `{{` and one after the last: sized once.
        let opens = bytes.windows(2).filter(|w| w == b"{{").count();
        let mut parts = Vec::with_capacity(if opens == 0 { 0 } else { 2 * opens + 1 });
        // The current literal run is text[lit_start..pos].
        let mut lit_start = 0;
        let mut pos = 0;
        while let Some(open) = find_pair(bytes, pos, b'{') {
            let after = open + 2;
            let Some(close) = find_pair(bytes, after, b'}') else { break };
            let inner = text.get(after..close).unwrap_or_default().trim();
            if inner.is_empty() || inner.contains(['{', '}']) {
                // Not a reference: keep one brace as text and look again from the next one.
                pos = open + 1;
                continue;
            }
            if open > lit_start {
                parts.push(Part::Lit(lit_start, open));
            }
            parts.push(Part::Var(VarPath::parse(inner)));
            pos = close + 2;
            lit_start = pos;
        }
        if text.len() > lit_start {
            parts.push(Part::Lit(lit_start, text.len()));
        }
        let len_hint = parts.iter().map(|p| if let Part::Lit(a, b) = p { b - a } else { VAR_HINT }).sum();
        if let [Part::Lit(..)] = parts.as_slice() {
            // The whole text, literally: no parts needed.
            parts.clear();
        }
        Template { text: text.into(), parts: parts.into_boxed_slice(), len_hint }
    }

    fn lit(&self, start: usize, end: usize) -> &str {
        self.text.get(start..end).unwrap_or_default()
    }

    /// Renders into `out`, appending at most [`MAX_RENDERED`] bytes.
    pub(crate) fn render_into(&self, scope: &Scope<'_>, out: &mut String) {
        if self.parts.is_empty() {
            // A literal (or empty) template: the text is the output, bounded like any.
            let mut cut = self.text.len().min(MAX_RENDERED);
            while !self.text.is_char_boundary(cut) {
                cut -= 1;
            }
            out.push_str(self.text.get(..cut).unwrap_or_default());
            return;
        }
        let limit = out.len().saturating_add(MAX_RENDERED);
        for part in self.parts.iter() {
            match part {
                Part::Lit(a, b) => out.push_str(self.lit(*a, *b)),
                Part::Var(path) => {
                    if let Some(v) = scope.get(path) {
                        write_value(out, v);
                    }
                }
            }
            if out.len() > limit {
                let mut cut = limit;
                while !out.is_char_boundary(cut) {
                    cut -= 1;
                }
                out.truncate(cut);
                return;
            }
        }
    }

    /// Renders into a new string, sized for the literal text and [`VAR_HINT`] bytes per
    /// reference: one allocation for typical values.
    pub(crate) fn render(&self, scope: &Scope<'_>) -> String {
        if let Some(s) = self.literal() {
            return String::from(s);
        }
        let mut out = String::with_capacity(self.len_hint);
        self.render_into(scope, &mut out);
        out
    }

    /// The variables the template reads.
    pub(crate) fn vars(&self) -> impl Iterator<Item = &VarPath> {
        self.parts.iter().filter_map(|p| if let Part::Var(v) = p { Some(v) } else { None })
    }

    /// The path when the template is exactly one reference, such as `{{order}}`.
    pub(crate) fn single_var(&self) -> Option<&VarPath> {
        match &*self.parts {
            [Part::Var(v)] => Some(v),
            _ => None,
        }
    }

    /// The text when the template has no references.
    pub(crate) fn literal(&self) -> Option<&str> {
        self.parts.is_empty().then_some(&*self.text)
    }

    /// Whether the template renders to nothing whatever the variables.
    pub(crate) fn is_empty(&self) -> bool {
        self.text.is_empty()
    }
}

impl fmt::Display for Template {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.parts.is_empty() {
            return f.write_str(&self.text);
        }
        for part in self.parts.iter() {
            match part {
                Part::Lit(a, b) => f.write_str(self.lit(*a, *b))?,
                Part::Var(v) => write!(f, "{{{{{}}}}}", v.as_str())?,
            }
        }
        Ok(())
    }
}

/// A JSON value whose strings are templates (effect parameters, template components,
/// `set_variable` values).
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum JsonTemplate {
    /// No templates inside: cloned as is.
    Lit(Value),
    /// A string that is exactly one reference: the variable's JSON value is copied.
    Var(VarPath),
    /// A string with references: rendered to a string.
    Str(Template),
    /// An array with templates inside.
    Array(Box<[JsonTemplate]>),
    /// An object with templates inside.
    Object(Box<[(String, JsonTemplate)]>),
}

impl JsonTemplate {
    /// Parses every string inside `value` as a template.
    pub(crate) fn parse(value: &Value) -> JsonTemplate {
        match value {
            Value::String(s) => {
                let t = Template::parse(s);
                if t.literal().is_some() {
                    JsonTemplate::Lit(value.clone())
                } else if let Some(v) = t.single_var() {
                    JsonTemplate::Var(v.clone())
                } else {
                    JsonTemplate::Str(t)
                }
            }
            Value::Array(items) => {
                let items: Vec<_> = items.iter().map(JsonTemplate::parse).collect();
                if items.iter().all(|i| matches!(i, JsonTemplate::Lit(_))) {
                    JsonTemplate::Lit(value.clone())
                } else {
                    JsonTemplate::Array(items.into_boxed_slice())
                }
            }
            Value::Object(map) => {
                let items: Vec<_> = map.iter().map(|(k, v)| (k.clone(), JsonTemplate::parse(v))).collect();
                if items.iter().all(|(_, i)| matches!(i, JsonTemplate::Lit(_))) {
                    JsonTemplate::Lit(value.clone())
                } else {
                    JsonTemplate::Object(items.into_boxed_slice())
                }
            }
            other => JsonTemplate::Lit(other.clone()),
        }
    }

    /// Renders to a JSON value; a missing single reference renders as `""`.
    pub(crate) fn render(&self, scope: &Scope<'_>) -> Value {
        match self {
            JsonTemplate::Lit(v) => v.clone(),
            JsonTemplate::Var(path) => scope.get(path).cloned().unwrap_or_else(|| Value::String(String::new())),
            JsonTemplate::Str(t) => Value::String(t.render(scope)),
            JsonTemplate::Array(items) => Value::Array(items.iter().map(|i| i.render(scope)).collect()),
            JsonTemplate::Object(items) => {
                let mut map = Map::new();
                for (k, v) in items.iter() {
                    map.insert(k.clone(), v.render(scope));
                }
                Value::Object(map)
            }
        }
    }

    /// Calls `f` with every variable path the value reads.
    pub(crate) fn for_each_var<'a>(&'a self, f: &mut dyn FnMut(&'a VarPath)) {
        match self {
            JsonTemplate::Lit(_) => {}
            JsonTemplate::Var(v) => f(v),
            JsonTemplate::Str(t) => t.vars().for_each(f),
            JsonTemplate::Array(items) => items.iter().for_each(|i| i.for_each_var(f)),
            JsonTemplate::Object(items) => items.iter().for_each(|(_, i)| i.for_each_var(f)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn render(template: &str, vars: Value) -> String {
        let empty = Map::new();
        Template::parse(template).render(&Scope { vars: vars.as_object().unwrap(), defaults: &empty })
    }

    #[test]
    fn renders_table() {
        let vars = json!({
            "nick": "Ana", "age": 30, "price": 9.5, "ok": true, "none": null,
            "order": {"status": "shipped", "items": [{"name": "pen"}, {"name": "ink"}]},
            "secret": "s3cr3t", "answer": "{{secret}}", "list": [1, 2],
        });
        let cases = [
            ("plain text", "plain text"),
            ("", ""),
            ("Hi {{nick}}!", "Hi Ana!"),
            ("Hi {{ nick }}!", "Hi Ana!"),
            ("{{nick}}{{nick}}", "AnaAna"),
            ("{{age}} anos", "30 anos"),
            ("R$ {{price}}", "R$ 9.5"),
            ("{{ok}}", "true"),
            ("[{{none}}]", "[]"),
            ("[{{missing}}]", "[]"),
            ("{{order.status}}", "shipped"),
            ("{{ order.items.1.name }}", "ink"),
            ("{{order.items.9.name}}", ""),
            ("{{order.items.0}}", r#"{"name":"pen"}"#),
            ("{{list}}", "[1,2]"),
            ("{{answer}}", "{{secret}}"),
            ("{{ unclosed", "{{ unclosed"),
            ("{{}} and {{ }}", "{{}} and {{ }}"),
            ("{{{nick}}}", "{Ana}"),
            ("a }} b {{", "a }} b {{"),
            ("{{nick}", "{{nick}"),
            ("Olá, {{nick}} 👋", "Olá, Ana 👋"),
        ];
        for (template, expected) in cases {
            assert_eq!(render(template, vars.clone()), expected, "template {template:?}");
        }
    }

    #[test]
    fn output_is_bounded() {
        let big = "é".repeat(MAX_RENDERED);
        let out = render("{{a}}{{a}}!", json!({ "a": big }));
        assert!(out.len() <= MAX_RENDERED && out.len() > MAX_RENDERED - 4, "{}", out.len());
        assert!(out.chars().all(|c| c == 'é'));
    }

    #[test]
    fn display_reconstructs_the_template() {
        assert_eq!(Template::parse("Hi {{ nick }}, {{a.b}}").to_string(), "Hi {{nick}}, {{a.b}}");
    }

    #[test]
    fn json_templates_keep_types_of_single_references() {
        let vars = json!({"order": {"id": 7}, "name": "Ana"});
        let empty = Map::new();
        let scope = Scope { vars: vars.as_object().unwrap(), defaults: &empty };
        let t = JsonTemplate::parse(&json!({"o": "{{order}}", "greet": "hi {{name}}", "n": [1, "{{name}}"], "k": 2}));
        assert_eq!(t.render(&scope), json!({"o": {"id": 7}, "greet": "hi Ana", "n": [1, "Ana"], "k": 2}));
        assert_eq!(JsonTemplate::parse(&json!({"a": "b"})), JsonTemplate::Lit(json!({"a": "b"})));
    }
}
