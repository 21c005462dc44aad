//! The config's flows, compiled at start: a broken one stops start-up with every problem of
//! every flow listed, and so does a `call_flow` node calling a flow its organization lacks. Running flows live in the runtime's [`Flows`](flowcore_store::runtime::Flows).

use std::collections::BTreeMap;

use flowcore::{CompiledFlow, FlowSet};
use flowcore_store::runtime::compile;

use super::config::FlowSource;

/// Compiles every config flow, collecting every problem of every flow.
pub fn compile_sources(sources: &[FlowSource]) -> Result<Vec<(FlowSource, CompiledFlow)>, Vec<String>> {
    let mut ok = Vec::new();
    let mut problems = Vec::new();
    for source in sources {
        match compile(&source.text) {
            Ok(flow) => ok.push((source.clone(), flow)),
            Err(p) => problems.extend(p.lines.into_iter().map(|line| {
                format!(
                    "flow `{}` of organization `{}` ({}): {line}",
                    source.id,
                    source.organization,
                    source.path.display()
                )
            })),
        }
    }
    problems.extend(call_problems(&ok));
    if problems.is_empty() {
        Ok(ok)
    } else {
        Err(problems)
    }
}

/// Each flow's calls checked against its organization's flows: the errors, one a line.
fn call_problems(flows: &[(FlowSource, CompiledFlow)]) -> Vec<String> {
    let mut sets: BTreeMap<&str, FlowSet> = BTreeMap::new();
    // The runtime finds a called flow by its config id and the engine by its JSON id: a
    // flow whose two ids differ cannot be called.
    for (source, flow) in flows.iter().filter(|(source, flow)| source.id == flow.id()) {
        sets.entry(source.organization.as_str()).or_default().insert(flow.clone());
    }
    let mut problems = Vec::new();
    for (source, flow) in flows {
        let set = sets.get(source.organization.as_str()).cloned().unwrap_or_default();
        for diagnostic in set.check(flow).iter().filter(|d| d.is_error()) {
            problems.push(format!(
                "flow `{}` of organization `{}` ({}): {diagnostic}",
                source.id,
                source.organization,
                source.path.display()
            ));
        }
    }
    problems
}
