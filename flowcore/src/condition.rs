//! Conditions: operators, numeric-or-text comparison, `all`/`any` groups.

use std::borrow::Cow;
use std::cmp::Ordering;
use std::fmt;

use regex::{Regex, RegexBuilder};
use serde_json::Value;

use crate::template::Template;
use crate::value::{is_empty_value, value_number, value_text, Scope, VarPath};

/// Regexes from templates are compiled at run time with this size limit.
const RUNTIME_REGEX_LIMIT: usize = 1 << 18;

#[derive(Clone, Debug)]
pub(crate) enum Cond {
    Leaf(Box<Leaf>),
    All(Box<[Cond]>),
    Any(Box<[Cond]>),
}

#[derive(Clone, Debug)]
pub(crate) struct Leaf {
    left: Left,
    op: Op,
    right: Right,
    case_sensitive: bool,
}

#[derive(Clone, Debug)]
enum Left {
    Path(VarPath),
    Template(Template),
}

#[derive(Clone, Debug)]
enum Right {
    None,
    Lit(Value),
    Template(Template),
    Regex(Regex),
    List(Box<[Value]>),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Eq,
    Ne,
    Gt,
    Ge,
    Lt,
    Le,
    Contains,
    NotContains,
    StartsWith,
    EndsWith,
    Matches,
    Exists,
    NotExists,
    IsEmpty,
    NotEmpty,
    In,
    NotIn,
}

impl Op {
    fn parse(name: &str) -> Option<Op> {
        let lower = name.trim().to_ascii_lowercase().replace(['-', ' '], "_");
        Some(match lower.as_str() {
            "==" | "=" | "===" | "eq" | "equals" | "equal" | "is" => Op::Eq,
            "!=" | "!==" | "<>" | "ne" | "neq" | "not_equals" | "not_equal" | "is_not" => Op::Ne,
            ">" | "gt" | "greater_than" => Op::Gt,
            ">=" | "gte" | "ge" | "greater_than_or_equal" | "greater_or_equal" => Op::Ge,
            "<" | "lt" | "less_than" => Op::Lt,
            "<=" | "lte" | "le" | "less_than_or_equal" | "less_or_equal" => Op::Le,
            "contains" => Op::Contains,
            "not_contains" | "does_not_contain" | "notcontains" => Op::NotContains,
            "starts_with" | "startswith" => Op::StartsWith,
            "ends_with" | "endswith" => Op::EndsWith,
            "matches" | "regex" | "match" => Op::Matches,
            "exists" | "is_set" | "defined" => Op::Exists,
            "not_exists" | "is_not_set" | "undefined" => Op::NotExists,
            "is_empty" | "isempty" | "empty" => Op::IsEmpty,
            "not_empty" | "is_not_empty" | "isnotempty" => Op::NotEmpty,
            "in" => Op::In,
            "not_in" | "notin" => Op::NotIn,
            _ => return None,
        })
    }

    fn needs_value(self) -> bool {
        !matches!(self, Op::Exists | Op::NotExists | Op::IsEmpty | Op::NotEmpty)
    }
}

/// Why a condition could not be compiled: a diagnostic code and a message.
pub(crate) type CondError = (&'static str, String);

const MAX_DEPTH: usize = 32;

impl Cond {
    /// Compiles a condition: a leaf `{variableName, operator, value, caseSensitive}` or a
    /// group `{"all": [...]}` / `{"any": [...]}`.
    pub(crate) fn parse(value: &Value) -> Result<Cond, CondError> {
        Cond::parse_at(value, 0)
    }

    fn parse_at(value: &Value, depth: usize) -> Result<Cond, CondError> {
        if depth > MAX_DEPTH {
            return Err(("invalid-condition", format!("conditions nest deeper than {MAX_DEPTH} levels")));
        }
        let Some(map) = value.as_object() else {
            return Err(("invalid-condition", format!("a condition must be an object, found {value}")));
        };
        for (key, all) in [("all", true), ("any", false), ("and", true), ("or", false)] {
            if let Some(items) = map.get(key) {
                let Some(items) = items.as_array() else {
                    return Err(("invalid-condition", format!("\"{key}\" must be a list of conditions")));
                };
                let parts = items.iter().map(|i| Cond::parse_at(i, depth + 1)).collect::<Result<Vec<_>, _>>()?.into();
                return Ok(if all { Cond::All(parts) } else { Cond::Any(parts) });
            }
        }
        Leaf::parse(map).map(|leaf| Cond::Leaf(Box::new(leaf)))
    }

    /// Evaluates against the variables.
    pub(crate) fn eval(&self, scope: &Scope<'_>) -> bool {
        match self {
            Cond::Leaf(leaf) => leaf.eval(scope),
            Cond::All(items) => items.iter().all(|c| c.eval(scope)),
            Cond::Any(items) => items.iter().any(|c| c.eval(scope)),
        }
    }

    /// Calls `f` with every variable path the condition reads.
    pub(crate) fn for_each_var<'a>(&'a self, f: &mut dyn FnMut(&'a VarPath)) {
        match self {
            Cond::Leaf(leaf) => {
                match &leaf.left {
                    Left::Path(p) => f(p),
                    Left::Template(t) => t.vars().for_each(&mut *f),
                }
                if let Right::Template(t) = &leaf.right {
                    t.vars().for_each(f);
                }
            }
            Cond::All(items) | Cond::Any(items) => items.iter().for_each(|c| c.for_each_var(f)),
        }
    }
}

impl Leaf {
    fn parse(map: &serde_json::Map<String, Value>) -> Result<Leaf, CondError> {
        let left = ["variableName", "variable", "field", "left"]
            .iter()
            .find_map(|k| map.get(*k).and_then(Value::as_str))
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .ok_or(("invalid-condition", "the condition names no variable (`variableName`)".to_string()))?;
        let left =
            if left.contains("{{") { Left::Template(Template::parse(left)) } else { Left::Path(VarPath::parse(left)) };
        let op_name = map.get("operator").or_else(|| map.get("op")).and_then(Value::as_str).unwrap_or("==");
        let op = Op::parse(op_name).ok_or(("invalid-condition", format!("unknown condition operator {op_name:?}")))?;
        let case_sensitive = map.get("caseSensitive").and_then(Value::as_bool).unwrap_or(false);
        let raw = map.get("value").or_else(|| map.get("right"));
        let right = match (op, raw) {
            (op, _) if !op.needs_value() => Right::None,
            (_, None) => Right::Lit(Value::String(String::new())),
            (Op::Matches, Some(Value::String(pattern))) => {
                let t = Template::parse(pattern);
                match t.literal() {
                    Some(p) => Right::Regex(
                        build_regex(p, case_sensitive, 10 << 20)
                            .map_err(|e| ("invalid-regex", format!("invalid regular expression {pattern:?}: {e}")))?,
                    ),
                    None => Right::Template(t),
                }
            }
            (Op::Matches, Some(other)) => {
                return Err(("invalid-regex", format!("a `matches` value must be a pattern string, found {other}")))
            }
            (Op::In | Op::NotIn, Some(Value::Array(items))) => Right::List(items.clone().into()),
            (Op::In | Op::NotIn, Some(Value::String(s))) if !s.contains("{{") => {
                Right::List(s.split(',').map(|p| Value::String(p.trim().to_string())).collect())
            }
            (_, Some(Value::String(s))) => {
                let t = Template::parse(s);
                if t.literal().is_some() {
                    Right::Lit(Value::String(s.clone()))
                } else {
                    Right::Template(t)
                }
            }
            (_, Some(v)) => Right::Lit(v.clone()),
        };
        Ok(Leaf { left, op, right, case_sensitive })
    }

    fn eval(&self, scope: &Scope<'_>) -> bool {
        let rendered;
        let left: Option<&Value> = match &self.left {
            Left::Path(p) => scope.get(p),
            Left::Template(t) => {
                rendered = Value::String(t.render(scope));
                Some(&rendered)
            }
        };
        let right_owned;
        let right: &Value = match &self.right {
            Right::None => return self.unary(left),
            Right::Lit(v) => v,
            Right::Template(t) => {
                right_owned = Value::String(t.render(scope));
                &right_owned
            }
            Right::Regex(re) => return left.is_some_and(|l| re.is_match(&value_text(l))),
            Right::List(items) => {
                let found = left.is_some_and(|l| items.iter().any(|i| self.equal(l, i)));
                return found == (self.op == Op::In);
            }
        };
        let Some(left) = left else {
            return match self.op {
                Op::Ne | Op::NotContains | Op::NotIn => true,
                Op::Eq => value_text(right).is_empty(),
                _ => false,
            };
        };
        match self.op {
            Op::Eq => self.equal(left, right),
            Op::Ne => !self.equal(left, right),
            Op::Gt => self.compare(left, right) == Some(Ordering::Greater),
            Op::Ge => matches!(self.compare(left, right), Some(Ordering::Greater | Ordering::Equal)),
            Op::Lt => self.compare(left, right) == Some(Ordering::Less),
            Op::Le => matches!(self.compare(left, right), Some(Ordering::Less | Ordering::Equal)),
            Op::Contains => self.contains(left, right),
            Op::NotContains => !self.contains(left, right),
            Op::StartsWith => self.text_test(left, right, |a, b| a.starts_with(b)),
            Op::EndsWith => self.text_test(left, right, |a, b| a.ends_with(b)),
            Op::Matches => {
                let pattern = value_text(right);
                build_regex(&pattern, self.case_sensitive, RUNTIME_REGEX_LIMIT)
                    .is_ok_and(|re| re.is_match(&value_text(left)))
            }
            Op::In | Op::NotIn => {
                let list: Vec<&str> = match right {
                    Value::String(s) => s.split(',').map(str::trim).collect(),
                    _ => Vec::new(),
                };
                let found = match right {
                    Value::Array(items) => items.iter().any(|i| self.equal(left, i)),
                    _ => list.iter().any(|i| self.equal(left, &Value::String((*i).to_string()))),
                };
                found == (self.op == Op::In)
            }
            Op::Exists | Op::NotExists | Op::IsEmpty | Op::NotEmpty => self.unary(Some(left)),
        }
    }

    fn unary(&self, left: Option<&Value>) -> bool {
        match self.op {
            Op::Exists => !matches!(left, None | Some(Value::Null)),
            Op::NotExists => matches!(left, None | Some(Value::Null)),
            Op::IsEmpty => is_empty_value(left),
            Op::NotEmpty => !is_empty_value(left),
            _ => false,
        }
    }

    fn equal(&self, a: &Value, b: &Value) -> bool {
        if let (Some(x), Some(y)) = (value_number(a), value_number(b)) {
            return x == y;
        }
        let (a, b) = (value_text(a), value_text(b));
        if self.case_sensitive {
            a == b
        } else {
            eq_ignore_case(&a, &b)
        }
    }

    fn compare(&self, a: &Value, b: &Value) -> Option<Ordering> {
        if let (Some(x), Some(y)) = (value_number(a), value_number(b)) {
            return x.partial_cmp(&y);
        }
        let (a, b) = (value_text(a), value_text(b));
        if self.case_sensitive {
            Some(a.cmp(&b))
        } else {
            Some(a.to_lowercase().cmp(&b.to_lowercase()))
        }
    }

    fn contains(&self, left: &Value, right: &Value) -> bool {
        match left {
            Value::Array(items) => items.iter().any(|i| self.equal(i, right)),
            Value::Object(map) => map.contains_key(&*value_text(right)),
            _ => self.text_test(left, right, |a, b| a.contains(b)),
        }
    }

    fn text_test(&self, left: &Value, right: &Value, test: fn(&str, &str) -> bool) -> bool {
        let (a, b) = (value_text(left), value_text(right));
        if self.case_sensitive {
            test(&a, &b)
        } else {
            test(&fold(a), &fold(b))
        }
    }
}

fn fold(text: Cow<'_, str>) -> Cow<'_, str> {
    if text.chars().any(char::is_uppercase) {
        Cow::Owned(text.to_lowercase())
    } else {
        text
    }
}

fn eq_ignore_case(a: &str, b: &str) -> bool {
    if a.is_ascii() && b.is_ascii() {
        a.eq_ignore_ascii_case(b)
    } else {
        a.chars().flat_map(char::to_lowercase).eq(b.chars().flat_map(char::to_lowercase))
    }
}

/// Compiles a user pattern with a size limit; case-insensitive unless asked otherwise.
pub(crate) fn build_regex(pattern: &str, case_sensitive: bool, limit: usize) -> Result<Regex, regex::Error> {
    RegexBuilder::new(pattern).case_insensitive(!case_sensitive).size_limit(limit).dfa_size_limit(limit).build()
}

impl Op {
    fn symbol(self) -> &'static str {
        match self {
            Op::Eq => "==",
            Op::Ne => "!=",
            Op::Gt => ">",
            Op::Ge => ">=",
            Op::Lt => "<",
            Op::Le => "<=",
            Op::Contains => "contains",
            Op::NotContains => "not_contains",
            Op::StartsWith => "starts_with",
            Op::EndsWith => "ends_with",
            Op::Matches => "matches",
            Op::Exists => "exists",
            Op::NotExists => "not_exists",
            Op::IsEmpty => "is_empty",
            Op::NotEmpty => "not_empty",
            Op::In => "in",
            Op::NotIn => "not_in",
        }
    }
}

impl fmt::Display for Cond {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Cond::Leaf(leaf) => {
                match &leaf.left {
                    Left::Path(p) => f.write_str(p.as_str())?,
                    Left::Template(t) => write!(f, "{t:?}", t = t.to_string())?,
                }
                write!(f, " {}", leaf.op.symbol())?;
                match &leaf.right {
                    Right::None => Ok(()),
                    Right::Lit(Value::String(s)) => write!(f, " {s:?}"),
                    Right::Lit(v) => write!(f, " {v}"),
                    Right::Template(t) => write!(f, " {:?}", t.to_string()),
                    Right::Regex(r) => write!(f, " /{}/", r.as_str()),
                    Right::List(items) => write!(f, " {}", Value::Array(items.to_vec())),
                }
            }
            Cond::All(items) | Cond::Any(items) => {
                let joiner = if matches!(self, Cond::All(_)) { " and " } else { " or " };
                f.write_str("(")?;
                for (i, c) in items.iter().enumerate() {
                    if i > 0 {
                        f.write_str(joiner)?;
                    }
                    write!(f, "{c}")?;
                }
                f.write_str(")")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Map};

    fn check(cond: Value, vars: &Value) -> bool {
        let empty = Map::new();
        let scope = Scope { vars: vars.as_object().unwrap(), defaults: &empty };
        Cond::parse(&cond).unwrap().eval(&scope)
    }

    #[test]
    fn operators_table() {
        let vars = json!({
            "age": 30, "n": "9", "name": "Maria", "email": "Maria@Example.com", "empty": "", "blank": "  ",
            "nul": null, "tags": ["vip", "new"], "order": {"status": "shipped"}, "limit": "50", "city": "São Paulo",
        });
        let cases: &[(Value, bool)] = &[
            (json!({"variableName": "age", "operator": ">=", "value": 18}), true),
            (json!({"variableName": "age", "operator": ">=", "value": "30"}), true),
            (json!({"variableName": "age", "operator": ">", "value": 30}), false),
            (json!({"variableName": "n", "operator": "<", "value": "50"}), true),
            (json!({"variableName": "n", "operator": "<", "value": "{{limit}}"}), true),
            (json!({"variableName": "n", "operator": "<=", "value": 9}), true),
            (json!({"variableName": "name", "operator": ">", "value": "ana"}), true),
            (json!({"variableName": "age", "operator": "==", "value": "30.0"}), true),
            (json!({"variableName": "name", "operator": "==", "value": "maria"}), true),
            (json!({"variableName": "name", "operator": "==", "value": "maria", "caseSensitive": true}), false),
            (json!({"variableName": "name", "operator": "!=", "value": "Pedro"}), true),
            (json!({"variableName": "missing", "operator": "!=", "value": "x"}), true),
            (json!({"variableName": "missing", "operator": "==", "value": ""}), true),
            (json!({"variableName": "missing", "operator": ">", "value": 1}), false),
            (json!({"variableName": "email", "operator": "contains", "value": "@example.com"}), true),
            (
                json!({"variableName": "email", "operator": "contains", "value": "@example.com", "caseSensitive": true}),
                false,
            ),
            (json!({"variableName": "email", "operator": "not_contains", "value": "gmail"}), true),
            (json!({"variableName": "city", "operator": "contains", "value": "SÃO"}), true),
            (json!({"variableName": "name", "operator": "starts_with", "value": "MA"}), true),
            (json!({"variableName": "name", "operator": "ends_with", "value": "ia"}), true),
            (json!({"variableName": "email", "operator": "matches", "value": "^[a-z]+@"}), true),
            (
                json!({"variableName": "email", "operator": "matches", "value": "^[a-z]+@", "caseSensitive": true}),
                false,
            ),
            (json!({"variableName": "name", "operator": "matches", "value": "^{{name}}$"}), true),
            (json!({"variableName": "order.status", "operator": "exists"}), true),
            (json!({"variableName": "order.missing", "operator": "exists"}), false),
            (json!({"variableName": "nul", "operator": "exists"}), false),
            (json!({"variableName": "empty", "operator": "is_empty"}), true),
            (json!({"variableName": "blank", "operator": "is_empty"}), true),
            (json!({"variableName": "missing", "operator": "is_empty"}), true),
            (json!({"variableName": "name", "operator": "not_empty"}), true),
            (json!({"variableName": "name", "operator": "in", "value": ["ana", "maria"]}), true),
            (json!({"variableName": "name", "operator": "in", "value": "Ana, Maria"}), true),
            (json!({"variableName": "age", "operator": "in", "value": [18, 30]}), true),
            (json!({"variableName": "name", "operator": "not_in", "value": "ana,bia"}), true),
            (json!({"variableName": "tags", "operator": "contains", "value": "VIP"}), true),
            (json!({"variableName": "order", "operator": "contains", "value": "status"}), true),
            (json!({"variableName": "{{name}} {{age}}", "operator": "==", "value": "maria 30"}), true),
            (
                json!({"all": [{"variableName": "age", "operator": ">", "value": 18}, {"variableName": "name", "operator": "==", "value": "Maria"}]}),
                true,
            ),
            (
                json!({"all": [{"variableName": "age", "operator": ">", "value": 18}, {"variableName": "name", "operator": "==", "value": "Ana"}]}),
                false,
            ),
            (
                json!({"any": [{"variableName": "age", "operator": "<", "value": 18}, {"variableName": "name", "operator": "==", "value": "Maria"}]}),
                true,
            ),
            (json!({"any": []}), false),
            (json!({"all": []}), true),
        ];
        for (cond, expected) in cases {
            assert_eq!(check(cond.clone(), &vars), *expected, "{cond}");
        }
    }

    #[test]
    fn bad_conditions_are_compile_errors() {
        let cases = [
            (json!({"variableName": "a", "operator": "like"}), "invalid-condition"),
            (json!({"operator": "=="}), "invalid-condition"),
            (json!({"variableName": "a", "operator": "matches", "value": "(unclosed"}), "invalid-regex"),
            (json!({"all": 3}), "invalid-condition"),
            (json!([1]), "invalid-condition"),
        ];
        for (cond, code) in cases {
            assert_eq!(Cond::parse(&cond).unwrap_err().0, code, "{cond}");
        }
        let shown = Cond::parse(&json!({"all": [{"variableName": "age", "operator": ">=", "value": 18},
            {"variableName": "name", "operator": "in", "value": ["a"]}]}))
        .unwrap()
        .to_string();
        assert_eq!(shown, r#"(age >= 18 and name in ["a"])"#);
    }
}
