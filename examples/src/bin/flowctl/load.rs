//! Reading and compiling a flow file, with the exit codes of the flowctl contract.

use std::path::Path;

use std::path::PathBuf;

use flowcore::{CompileError, CompiledFlow, Flow, FlowSet};

use crate::Failure;

/// Reads and parses a flow file: any failure here is unreadable input (exit 2).
pub(crate) fn read_flow(path: &Path) -> Result<Flow, Failure> {
    let text = std::fs::read_to_string(path)
        .map_err(|err| Failure::unreadable(format!("cannot read {}: {err}", path.display())))?;
    Flow::from_json(&text).map_err(|err| Failure::unreadable(format!("{}: {err}", path.display())))
}

/// Reads, parses and compiles a flow; compile errors are printed and exit with 1.
pub(crate) fn compile_flow(path: &Path) -> Result<CompiledFlow, Failure> {
    let flow = read_flow(path)?;
    flow.compile().map_err(|err| Failure::invalid(describe_compile_error(path, &err)))
}

/// The set a flow runs in: the flow itself and each `--with` flow, compiled (a `--with`
/// flow that does not compile fails like the flow itself would).
pub(crate) fn flow_set(flow: &CompiledFlow, with: &[PathBuf]) -> Result<FlowSet, Failure> {
    let mut set = FlowSet::new();
    for path in with {
        set.insert(compile_flow(path)?);
    }
    set.insert(flow.clone());
    Ok(set)
}

/// All of a compile error's diagnostics, one per line, under a heading naming the file.
pub(crate) fn describe_compile_error(path: &Path, err: &CompileError) -> String {
    let mut text = format!("{} does not compile:", path.display());
    for diagnostic in err.diagnostics() {
        text.push_str("\n  ");
        text.push_str(&diagnostic.to_string());
    }
    text
}
