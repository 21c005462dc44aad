//! The config's flows, compiled at start: a broken one stops start-up with every problem of
//! every flow listed. Running flows live in the runtime's [`Flows`](flowcore_store::runtime::Flows).

use flowcore::CompiledFlow;
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
    if problems.is_empty() {
        Ok(ok)
    } else {
        Err(problems)
    }
}
