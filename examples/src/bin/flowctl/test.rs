//! `flowctl test`: runs `.chat` transcript files against a flow (the format is in
//! [`flowcore_examples::transcript`]).
//!
//! Exit codes: `0` every conversation passed, `1` one failed, `2` the flow or a test file
//! is unreadable, the flow does not compile, or a test file has a syntax error (named by
//! its line). Every file is read before any runs, so a syntax error runs nothing.

use std::path::{Path, PathBuf};

use flowcore_examples::transcript::{junit_xml, parse_chat, ChatFile, FileResult, Runner};

use crate::load::{compile_flow, flow_set};
use crate::Failure;

/// What to write besides the pass/fail report.
#[derive(Debug, Default)]
pub(crate) struct TestReports {
    /// Print the untested nodes and edges with percentages.
    pub(crate) coverage: bool,
    /// Write the coverage as JSON to this file.
    pub(crate) coverage_json: Option<PathBuf>,
    /// Write JUnit XML to this file.
    pub(crate) junit: Option<PathBuf>,
}

/// Runs every test file and prints each failure, a summary and the asked-for reports.
pub(crate) fn run(flow_path: &Path, with: &[PathBuf], tests: &[PathBuf], reports: &TestReports) -> Result<u8, Failure> {
    // A flow that does not compile cannot be tested: that is unreadable input here.
    let flow = compile_flow(flow_path).map_err(|failure| Failure::unreadable(failure.message))?;
    let flows = flow_set(&flow, with).map_err(|failure| Failure::unreadable(failure.message))?;
    let files = tests.iter().map(|path| read_chat(path)).collect::<Result<Vec<_>, _>>()?;
    let mut runner = Runner::with_flows(&flow, &flows);
    let results: Vec<FileResult> =
        files.iter().map(|(path, chat)| runner.run(&path.display().to_string(), chat)).collect();

    let mut out = String::new();
    for result in &results {
        for failure in result.failures() {
            out.push_str(&failure.report());
            out.push('\n');
        }
    }
    let total: usize = results.iter().map(|r| r.cases.len()).sum();
    let failed: usize = results.iter().map(|r| r.failures().count()).sum();
    for result in &results {
        let status = if result.passed() { "ok" } else { "FAILED" };
        let failures = result.failures().count();
        out.push_str(&format!(
            "{status} {}: {} of {} passed\n",
            result.file,
            result.cases.len() - failures,
            result.cases.len()
        ));
    }
    let verdict = if failed == 0 { "ok" } else { "FAILED" };
    out.push_str(&format!("test result: {verdict}. {} passed; {failed} failed\n", total - failed));

    let coverage = runner.coverage().report();
    if reports.coverage {
        out.push('\n');
        out.push_str(&coverage.to_text());
    }
    print!("{out}");
    if let Some(path) = &reports.coverage_json {
        let json = serde_json::to_string_pretty(&coverage).expect("the coverage report is plain data");
        write(path, &(json + "\n"))?;
    }
    if let Some(path) = &reports.junit {
        write(path, &junit_xml(&results))?;
    }
    Ok(if failed == 0 { 0 } else { 1 })
}

fn read_chat(path: &Path) -> Result<(&Path, ChatFile), Failure> {
    let text = std::fs::read_to_string(path)
        .map_err(|err| Failure::unreadable(format!("cannot read {}: {err}", path.display())))?;
    let chat = parse_chat(&text).map_err(|err| Failure::unreadable(format!("{}: {err}", path.display())))?;
    Ok((path, chat))
}

fn write(path: &Path, text: &str) -> Result<(), Failure> {
    std::fs::write(path, text).map_err(|err| Failure::unreadable(format!("cannot write {}: {err}", path.display())))
}
