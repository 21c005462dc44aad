//! The `X-Hub-Signature-256` check with arbitrary headers and secrets: never panics, and
//! accepts exactly the right HMAC.
#![no_main]

use arbitrary::Arbitrary;
use flowcore_meta::{sign, verify_signature};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
struct Case {
    body: Vec<u8>,
    header: Option<String>,
    secrets: Vec<Vec<u8>>,
}

fuzz_target!(|case: Case| {
    let result = verify_signature(&case.body, case.header.as_deref(), &case.secrets);
    if let Ok(index) = result {
        let header = case.header.as_deref().unwrap_or_default();
        let expected = sign(&case.body, &case.secrets[index]);
        assert!(
            header.trim().eq_ignore_ascii_case(&expected),
            "accepted {header:?}, but the right signature is {expected:?}"
        );
    }
    let usable = case.secrets.iter().position(|s| !s.is_empty() && !s.iter().all(u8::is_ascii_whitespace));
    if let Some(first) = usable {
        let right = sign(&case.body, &case.secrets[first]);
        assert!(verify_signature(&case.body, Some(&right), &case.secrets).is_ok());
    }
});
