//! Question answer validation: text, number, email, phone, regex, options.

use regex::Regex;
use serde_json::Value;

use crate::value::number_value;

/// How a question checks its answer.
#[derive(Clone, Debug)]
pub(crate) enum Validation {
    /// Any non-blank text.
    Text,
    /// A number (`30`, `-2.5`, `1,5`); stored as a JSON number.
    Number,
    /// An e-mail address; stored trimmed.
    Email,
    /// A phone number in E.164 (`+5511999999999`) or a national form such as
    /// `+55 11 99999-9999` or `(11) 99999-9999`; stored as `+` and digits, or digits.
    Phone,
    /// Text matching a pattern; stored trimmed.
    Regex(Regex),
    /// One of the listed options, by value, label or 1-based number; stored as the value.
    Options(Box<[QuestionOption]>),
}

/// An option of an `options` question.
#[derive(Clone, Debug)]
pub(crate) struct QuestionOption {
    pub(crate) value: Box<str>,
    pub(crate) label: Box<str>,
}

impl Validation {
    /// The value to store for `answer`, or `None` when the answer is invalid.
    pub(crate) fn check(&self, answer: &str) -> Option<Value> {
        let t = answer.trim();
        match self {
            Validation::Text => (!t.is_empty()).then(|| Value::String(t.to_string())),
            Validation::Number => parse_answer_number(t).map(number_value),
            Validation::Email => is_email(t).then(|| Value::String(t.to_string())),
            Validation::Phone => normalize_phone(t).map(Value::String),
            Validation::Regex(re) => re.is_match(t).then(|| Value::String(t.to_string())),
            Validation::Options(options) => {
                let by_number = t.parse::<usize>().ok().and_then(|n| n.checked_sub(1)).and_then(|i| options.get(i));
                options
                    .iter()
                    .find(|o| o.value.eq_ignore_ascii_case(t) || o.label.to_lowercase() == t.to_lowercase())
                    .or(by_number)
                    .map(|o| Value::String(o.value.to_string()))
            }
        }
    }

    /// The message sent when an answer is invalid and the flow gives none.
    pub(crate) fn default_error(&self) -> String {
        match self {
            Validation::Text => "Por favor, digite uma resposta.".into(),
            Validation::Number => "Por favor, digite um número válido.".into(),
            Validation::Email => "Por favor, digite um e-mail válido, como nome@exemplo.com.".into(),
            Validation::Phone => "Por favor, digite um telefone válido, como +55 11 99999-9999.".into(),
            Validation::Regex(_) => "Resposta em formato inválido. Tente novamente.".into(),
            Validation::Options(options) => {
                let labels: Vec<&str> = options.iter().map(|o| &*o.label).collect();
                format!("Por favor, escolha uma das opções: {}.", labels.join(", "))
            }
        }
    }
}

fn parse_answer_number(t: &str) -> Option<f64> {
    let owned;
    let text = if t.contains(',') && !t.contains('.') && t.matches(',').count() == 1 {
        owned = t.replace(',', ".");
        &owned
    } else {
        t
    };
    crate::value::parse_number(text)
}

/// A pragmatic e-mail check: one `@`, a non-empty local part, a dotted domain with a
/// two-letter-or-longer last label, no spaces.
pub(crate) fn is_email(t: &str) -> bool {
    let Some((local, domain)) = t.split_once('@') else { return false };
    if local.is_empty() || domain.contains('@') || t.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return false;
    }
    // One pass over the labels, without collecting them: this runs on every e-mail answer.
    let mut labels = 0;
    let mut tld = "";
    for label in domain.split('.') {
        if label.is_empty() || label.starts_with('-') || label.ends_with('-') {
            return false;
        }
        labels += 1;
        tld = label;
    }
    labels >= 2
        && tld.chars().count() >= 2
        && tld.chars().all(char::is_alphabetic)
        && !local.starts_with('.')
        && !local.ends_with('.')
        && !local.contains("..")
}

/// Phone numbers: `+` and 8–15 digits (E.164), or 10–13 digits without `+` (national
/// forms such as `(11) 99999-9999`); spaces, dashes, dots and parentheses are ignored.
pub(crate) fn normalize_phone(t: &str) -> Option<String> {
    let (plus, body) = match t.strip_prefix('+') {
        Some(rest) => (true, rest),
        None => (false, t),
    };
    let mut digits = String::with_capacity(body.len() + 1);
    if plus {
        digits.push('+');
    }
    for c in body.chars() {
        match c {
            '0'..='9' => digits.push(c),
            ' ' | '-' | '.' | '(' | ')' => {}
            _ => return None,
        }
    }
    let n = digits.len() - usize::from(plus);
    let ok = if plus { (8..=15).contains(&n) && !digits[1..].starts_with('0') } else { (10..=13).contains(&n) };
    ok.then_some(digits)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn validation_table() {
        let options = Validation::Options(
            vec![
                QuestionOption { value: "a".into(), label: "Manhã".into() },
                QuestionOption { value: "b".into(), label: "Tarde".into() },
            ]
            .into(),
        );
        let regex = Validation::Regex(Regex::new("^[0-9]{6}$").unwrap());
        let cases: Vec<(&Validation, &str, Option<Value>)> = vec![
            (&Validation::Text, " Maria ", Some(json!("Maria"))),
            (&Validation::Text, "   ", None),
            (&Validation::Number, "30", Some(json!(30))),
            (&Validation::Number, " -2.5 ", Some(json!(-2.5))),
            (&Validation::Number, "1,5", Some(json!(1.5))),
            (&Validation::Number, "trinta", None),
            (&Validation::Number, "inf", None),
            (&Validation::Number, "", None),
            (&Validation::Email, "maria@example.com", Some(json!("maria@example.com"))),
            (&Validation::Email, "a.b+c@sub.example.com.br", Some(json!("a.b+c@sub.example.com.br"))),
            (&Validation::Email, "maria@example", None),
            (&Validation::Email, "maria example.com", None),
            (&Validation::Email, "@example.com", None),
            (&Validation::Email, "a@@b.com", None),
            (&Validation::Email, "a b@c.com", None),
            (&Validation::Email, "a@b.c", None),
            (&Validation::Phone, "+55 11 99999-9999", Some(json!("+5511999999999"))),
            (&Validation::Phone, "+5511999999999", Some(json!("+5511999999999"))),
            (&Validation::Phone, "(11) 99999-9999", Some(json!("11999999999"))),
            (&Validation::Phone, "+1 (415) 555-0100", Some(json!("+14155550100"))),
            (&Validation::Phone, "12345", None),
            (&Validation::Phone, "+0 11 9999 9999", None),
            (&Validation::Phone, "call me", None),
            (&Validation::Phone, "+55 11 9999x-9999", None),
            (&regex, "123456", Some(json!("123456"))),
            (&regex, "12345", None),
            (&options, "tarde", Some(json!("b"))),
            (&options, "A", Some(json!("a"))),
            (&options, "2", Some(json!("b"))),
            (&options, "3", None),
            (&options, "noite", None),
        ];
        for (validation, answer, expected) in cases {
            assert_eq!(validation.check(answer), expected, "{validation:?} {answer:?}");
        }
        assert!(options.default_error().contains("Manhã, Tarde"));
    }
}
