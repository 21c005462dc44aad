//! `flowctl check`: compile a flow and report its diagnostics.

use std::path::{Path, PathBuf};

use flowcore::{Diagnostic, Severity};
use serde_json::json;

use crate::load::{flow_set, read_flow};
use crate::{CheckFormat, Failure};

/// Prints the flow's diagnostics, its calls checked against itself and the `with` flows;
/// exit code 0 without errors, 1 with errors.
pub(crate) fn run(path: &Path, format: CheckFormat, with: &[PathBuf]) -> Result<u8, Failure> {
    let flow = read_flow(path)?;
    let (diagnostics, compiled) = match flow.compile() {
        Ok(compiled) => {
            let mut diagnostics = compiled.warnings().to_vec();
            diagnostics.extend(flow_set(&compiled, with)?.check(&compiled));
            (diagnostics, true)
        }
        Err(err) => (err.diagnostics().to_vec(), false),
    };
    let errors = diagnostics.iter().filter(|d| d.severity == Severity::Error).count();
    let warnings = diagnostics.len() - errors;
    match format {
        CheckFormat::Text => print!("{}", render_text(path, &diagnostics, errors, warnings)),
        CheckFormat::Json => println!("{}", render_json(path, &diagnostics, errors, warnings)),
    }
    // A compile failure always means an error, even if no diagnostic was marked as one.
    Ok(if errors > 0 || !compiled { 1 } else { 0 })
}

fn render_text(path: &Path, diagnostics: &[Diagnostic], errors: usize, warnings: usize) -> String {
    let mut text = String::new();
    for diagnostic in diagnostics {
        text.push_str(&diagnostic.to_string());
        text.push('\n');
    }
    let verdict = if errors == 0 { "ok" } else { "failed" };
    text.push_str(&format!(
        "{}: {verdict}: {errors} error{}, {warnings} warning{}\n",
        path.display(),
        plural(errors),
        plural(warnings)
    ));
    text
}

fn render_json(path: &Path, diagnostics: &[Diagnostic], errors: usize, warnings: usize) -> serde_json::Value {
    let items: Vec<_> = diagnostics
        .iter()
        .map(|d| {
            json!({
                "severity": match d.severity { Severity::Error => "error", _ => "warning" },
                "code": d.code,
                "message": d.message,
                "node": d.node,
                "edge": d.edge,
            })
        })
        .collect();
    json!({ "file": path.display().to_string(), "errors": errors, "warnings": warnings, "diagnostics": items })
}

fn plural(count: usize) -> &'static str {
    if count == 1 {
        ""
    } else {
        "s"
    }
}
