//! A private door for the fuzzers in `fuzz/`: the template and condition internals, which
//! the public API only reaches through whole flows. Compiled only under `cfg(fuzzing)`.

use serde_json::{Map, Value};

use crate::condition::Cond;
use crate::template::Template;
use crate::value::Scope;

/// The most bytes one rendering produces; longer output is cut at a character boundary.
pub const MAX_RENDERED: usize = crate::template::MAX_RENDERED;

/// Parses `text` as a template and renders it with `vars`.
pub fn render_template(text: &str, vars: &Map<String, Value>) -> String {
    let defaults = Map::new();
    Template::parse(text).render(&Scope { vars, defaults: &defaults })
}

/// Compiles a condition from its JSON and evaluates it against `vars`; `None` when the
/// condition does not compile.
pub fn eval_condition(condition: &Value, vars: &Map<String, Value>) -> Option<bool> {
    let defaults = Map::new();
    Cond::parse(condition).ok().map(|cond| cond.eval(&Scope { vars, defaults: &defaults }))
}
