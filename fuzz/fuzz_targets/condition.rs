//! Condition compile + evaluation with arbitrary operators, values and variables, alone and
//! nested in groups.
#![no_main]

use arbitrary::Arbitrary;
use flowcore::fuzzing::eval_condition;
use flowcore_fuzz::{Json, OPERATORS};
use libfuzzer_sys::fuzz_target;
use serde_json::{json, Map, Value};

#[derive(Arbitrary, Debug)]
struct Leaf {
    variable: String,
    operator: u8,
    free_operator: Option<String>,
    value: Json,
    case_sensitive: Option<bool>,
}

#[derive(Arbitrary, Debug)]
struct Case {
    leaves: Vec<Leaf>,
    any: bool,
    vars: Vec<(String, Json)>,
    raw: Json,
}

fn leaf_json(leaf: &Leaf) -> Value {
    let operator =
        leaf.free_operator.clone().unwrap_or_else(|| OPERATORS[leaf.operator as usize % OPERATORS.len()].into());
    let mut value = json!({"variableName": leaf.variable, "operator": operator, "value": leaf.value.to_value()});
    if let Some(case_sensitive) = leaf.case_sensitive {
        value["caseSensitive"] = case_sensitive.into();
    }
    value
}

fuzz_target!(|case: Case| {
    let vars: Map<String, Value> = case.vars.iter().map(|(k, v)| (k.clone(), v.to_value())).collect();
    let leaves: Vec<Value> = case.leaves.iter().map(leaf_json).collect();
    for leaf in &leaves {
        let _ = eval_condition(leaf, &vars);
    }
    let group = json!({ if case.any { "any" } else { "all" }: leaves });
    let _ = eval_condition(&group, &vars);
    let _ = eval_condition(&case.raw.to_value(), &vars);
});
