//! A small, safe arithmetic language for `set_variable`: numbers, variables, `+ - * / %`,
//! unary minus and parentheses. Parsed at compile time; bounded in size.

use serde_json::Value;

use crate::value::{number_value, value_number, Scope, VarPath};

const MAX_NODES: usize = 256;

#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Expr {
    Num(f64),
    Var(VarPath),
    Neg(Box<Expr>),
    Bin(u8, Box<Expr>, Box<Expr>),
}

#[derive(Clone, Debug, PartialEq)]
enum Tok {
    Num(f64),
    Var(String),
    Op(u8),
}

impl Expr {
    /// Parses an expression such as `{{count}} + 1` or `price * (1 - discount / 100)`.
    pub(crate) fn parse(text: &str) -> Result<Expr, String> {
        let toks = tokenize(text)?;
        if toks.len() > MAX_NODES {
            return Err(format!("the expression is longer than {MAX_NODES} tokens"));
        }
        let mut p = Parser { toks: &toks, pos: 0, depth: 0 };
        let e = p.sum()?;
        match p.toks.get(p.pos) {
            None => Ok(e),
            Some(t) => Err(format!("unexpected {} in expression", describe(t))),
        }
    }

    /// Evaluates to a JSON number (integer when whole), or null for a non-numeric
    /// operand or a division by zero. Missing variables count as 0.
    pub(crate) fn eval(&self, scope: &Scope<'_>) -> Value {
        number_value(self.num(scope))
    }

    fn num(&self, scope: &Scope<'_>) -> f64 {
        match self {
            Expr::Num(n) => *n,
            Expr::Var(p) => match scope.get(p) {
                None | Some(Value::Null) => 0.0,
                Some(v) => value_number(v).unwrap_or(f64::NAN),
            },
            Expr::Neg(e) => -e.num(scope),
            Expr::Bin(op, a, b) => {
                let (a, b) = (a.num(scope), b.num(scope));
                match op {
                    b'+' => a + b,
                    b'-' => a - b,
                    b'*' => a * b,
                    b'/' if b != 0.0 => a / b,
                    b'%' if b != 0.0 => a % b,
                    _ => f64::NAN,
                }
            }
        }
    }

    /// Calls `f` with every variable the expression reads.
    pub(crate) fn for_each_var<'a>(&'a self, f: &mut dyn FnMut(&'a VarPath)) {
        match self {
            Expr::Num(_) => {}
            Expr::Var(p) => f(p),
            Expr::Neg(e) => e.for_each_var(f),
            Expr::Bin(_, a, b) => {
                a.for_each_var(f);
                b.for_each_var(f);
            }
        }
    }
}

impl std::fmt::Display for Expr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Expr::Num(n) => write!(f, "{n}"),
            Expr::Var(p) => f.write_str(p.as_str()),
            Expr::Neg(e) => write!(f, "-{e}"),
            Expr::Bin(op, a, b) => write!(f, "({a} {} {b})", *op as char),
        }
    }
}

fn describe(t: &Tok) -> String {
    match t {
        Tok::Num(n) => format!("number {n}"),
        Tok::Var(v) => format!("variable {v:?}"),
        Tok::Op(o) => format!("{:?}", *o as char),
    }
}

fn tokenize(text: &str) -> Result<Vec<Tok>, String> {
    let mut toks = Vec::new();
    let mut rest = text;
    while let Some(c) = rest.chars().next() {
        if c.is_whitespace() {
            rest = &rest[c.len_utf8()..];
        } else if let Some(inner) = rest.strip_prefix("{{") {
            let close = inner.find("}}").ok_or("unclosed `{{` in expression")?;
            let name = inner[..close].trim();
            if name.is_empty() {
                return Err("empty `{{}}` in expression".into());
            }
            toks.push(Tok::Var(name.to_string()));
            rest = &inner[close + 2..];
        } else if c.is_ascii_digit() || c == '.' {
            let end = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
            let n = rest[..end].parse::<f64>().map_err(|_| format!("bad number {:?}", &rest[..end]))?;
            toks.push(Tok::Num(n));
            rest = &rest[end..];
        } else if c.is_alphabetic() || c == '_' {
            let end = rest.find(|c: char| !(c.is_alphanumeric() || c == '_' || c == '.')).unwrap_or(rest.len());
            toks.push(Tok::Var(rest[..end].to_string()));
            rest = &rest[end..];
        } else if "+-*/%()".contains(c) {
            toks.push(Tok::Op(c as u8));
            rest = &rest[1..];
        } else {
            return Err(format!("unexpected {c:?} in expression"));
        }
    }
    Ok(toks)
}

struct Parser<'a> {
    toks: &'a [Tok],
    pos: usize,
    depth: usize,
}

impl Parser<'_> {
    fn peek_op(&self) -> Option<u8> {
        match self.toks.get(self.pos) {
            Some(Tok::Op(o)) => Some(*o),
            _ => None,
        }
    }

    fn sum(&mut self) -> Result<Expr, String> {
        let mut e = self.product()?;
        while let Some(op @ (b'+' | b'-')) = self.peek_op() {
            self.pos += 1;
            e = Expr::Bin(op, Box::new(e), Box::new(self.product()?));
        }
        Ok(e)
    }

    fn product(&mut self) -> Result<Expr, String> {
        let mut e = self.unary()?;
        while let Some(op @ (b'*' | b'/' | b'%')) = self.peek_op() {
            self.pos += 1;
            e = Expr::Bin(op, Box::new(e), Box::new(self.unary()?));
        }
        Ok(e)
    }

    fn unary(&mut self) -> Result<Expr, String> {
        self.depth += 1;
        if self.depth > 64 {
            return Err("the expression nests too deeply".into());
        }
        let e = match self.toks.get(self.pos) {
            Some(Tok::Op(b'-')) => {
                self.pos += 1;
                Expr::Neg(Box::new(self.unary()?))
            }
            Some(Tok::Op(b'+')) => {
                self.pos += 1;
                self.unary()?
            }
            Some(Tok::Op(b'(')) => {
                self.pos += 1;
                let e = self.sum()?;
                if self.peek_op() != Some(b')') {
                    return Err("missing `)` in expression".into());
                }
                self.pos += 1;
                e
            }
            Some(Tok::Num(n)) => {
                self.pos += 1;
                Expr::Num(*n)
            }
            Some(Tok::Var(v)) => {
                self.pos += 1;
                Expr::Var(VarPath::parse(v))
            }
            Some(t) => return Err(format!("unexpected {} in expression", describe(t))),
            None => return Err("the expression ends too early".into()),
        };
        self.depth -= 1;
        Ok(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Map};

    #[test]
    fn evaluates_table() {
        let vars = json!({"count": 2, "price": "10.5", "name": "Ana", "o": {"qty": 3}});
        let empty = Map::new();
        let scope = Scope { vars: vars.as_object().unwrap(), defaults: &empty };
        let cases = [
            ("1 + 2 * 3", json!(7)),
            ("(1 + 2) * 3", json!(9)),
            ("{{count}} + 1", json!(3)),
            ("count * price", json!(21)),
            ("o.qty - -1", json!(4)),
            ("missing + 1", json!(1)),
            ("7 % 4", json!(3)),
            ("1 / 4", json!(0.25)),
            ("1 / 0", json!(null)),
            ("name + 1", json!(null)),
        ];
        for (text, expected) in cases {
            assert_eq!(Expr::parse(text).unwrap().eval(&scope), expected, "{text}");
        }
    }

    #[test]
    fn rejects_bad_expressions() {
        for text in ["1 +", "(1", "1 2", "a $ b", "{{x", "", &"(".repeat(100), &"1+".repeat(300)] {
            assert!(Expr::parse(text).is_err(), "{text}");
        }
    }
}
