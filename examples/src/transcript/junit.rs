//! JUnit XML for CI systems: one `<testsuite>` per `.chat` file, one `<testcase>` per
//! conversation, a `<failure>` with the report when it failed.

use std::fmt::Write as _;

use super::run::FileResult;

/// The JUnit XML document for `results`.
///
/// ```
/// use flowcore_examples::transcript::{junit_xml, CaseResult, FileResult};
/// let results = [FileResult { file: "a&b.chat".into(),
///     cases: vec![CaseResult { name: "conversation at line 1".into(), line: 1, failure: None }] }];
/// let xml = junit_xml(&results);
/// assert!(xml.contains(r#"<testsuite name="a&amp;b.chat" tests="1" failures="0">"#));
/// ```
pub fn junit_xml(results: &[FileResult]) -> String {
    let tests: usize = results.iter().map(|r| r.cases.len()).sum();
    let failures: usize = results.iter().map(|r| r.failures().count()).sum();
    let mut xml = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let _ = writeln!(xml, "<testsuites name=\"flowctl test\" tests=\"{tests}\" failures=\"{failures}\">");
    for result in results {
        let file = escape_xml(&result.file);
        let _ = writeln!(
            xml,
            "  <testsuite name=\"{file}\" tests=\"{}\" failures=\"{}\">",
            result.cases.len(),
            result.failures().count()
        );
        for case in &result.cases {
            let name = escape_xml(&case.name);
            match &case.failure {
                None => {
                    let _ = writeln!(xml, "    <testcase name=\"{name}\" classname=\"{file}\"/>");
                }
                Some(failure) => {
                    let message =
                        format!("line {}: expected {}, bot said {}", failure.line, failure.expected, failure.actual);
                    let _ = writeln!(xml, "    <testcase name=\"{name}\" classname=\"{file}\">");
                    let _ = writeln!(
                        xml,
                        "      <failure message=\"{}\">{}</failure>",
                        escape_xml(&message),
                        escape_xml(&failure.report())
                    );
                    xml.push_str("    </testcase>\n");
                }
            }
        }
        xml.push_str("  </testsuite>\n");
    }
    xml.push_str("</testsuites>\n");
    xml
}

/// Escapes text for an XML attribute or element. Characters XML 1.0 cannot hold at all
/// (most control characters) become U+FFFD, so a bot message can never break the document.
pub fn escape_xml(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&apos;"),
            '\t' | '\n' | '\r' => escaped.push(c),
            c if (c as u32) < 0x20 || c == '\u{FFFE}' || c == '\u{FFFF}' => escaped.push('\u{FFFD}'),
            c => escaped.push(c),
        }
    }
    escaped
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markup_and_control_characters_are_escaped() {
        let cases = [
            ("plain", "plain"),
            ("<a href=\"x\">&'", "&lt;a href=&quot;x&quot;&gt;&amp;&apos;"),
            ("tab\tnew\nline", "tab\tnew\nline"),
            ("bell\u{7}", "bell\u{FFFD}"),
            ("Olá ✓", "Olá ✓"),
        ];
        for (text, expected) in cases {
            assert_eq!(escape_xml(text), expected, "{text:?}");
        }
    }
}
