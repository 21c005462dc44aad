//! Template parse + render with arbitrary text and variables; a value is never rendered
//! again as a template.
#![no_main]

use arbitrary::Arbitrary;
use flowcore::fuzzing::{render_template, MAX_RENDERED};
use flowcore_fuzz::Json;
use libfuzzer_sys::fuzz_target;
use serde_json::{Map, Value};

#[derive(Arbitrary, Debug)]
struct Case {
    template: String,
    vars: Vec<(String, Json)>,
}

fuzz_target!(|case: Case| {
    let vars: Map<String, Value> = case.vars.iter().map(|(k, v)| (k.clone(), v.to_value())).collect();
    let _ = render_template(&case.template, &vars);

    // A value that looks like a template comes out verbatim.
    if let Some((name, Json::String(text))) = case.vars.first() {
        // `secret` is the decoy the value may name; the variable under test must not be it.
        let plain_name = name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !name.is_empty() && plain_name && name != "secret" {
            let mut one = Map::new();
            one.insert("secret".into(), Value::String("s3cr3t".into()));
            one.insert(name.clone(), Value::String(text.clone()));
            let rendered = render_template(&format!("{{{{{name}}}}}"), &one);
            if text.len() <= MAX_RENDERED {
                assert_eq!(rendered, *text, "a variable's value was rendered again");
            } else {
                // Over the bound the output is cut, never substituted: still a prefix.
                assert!(text.starts_with(&rendered) && rendered.len() <= MAX_RENDERED, "cut output is not a prefix");
            }
        }
    }
});
