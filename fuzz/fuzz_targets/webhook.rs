//! Webhook bodies from raw bytes: signature check, parse, and the bridge to flowcore inputs.
//! Every item must come out as an event (typed, unknown or unparsed); nothing panics.
#![no_main]

use flowcore_meta::{event_to_input, parse, sign, verify_signature};
use libfuzzer_sys::fuzz_target;

const SECRET: &[u8] = b"flowcore-test-app-secret";

fuzz_target!(|data: &[u8]| {
    let header = sign(data, SECRET);
    assert_eq!(verify_signature(data, Some(&header), &[SECRET]), Ok(0), "a correct signature was refused");
    assert!(verify_signature(data, Some(&header), &[b"another secret".as_slice()]).is_err());

    let Ok(webhook) = parse(data) else { return };
    for event in webhook.events() {
        let _ = event.dedup_key();
        let _ = event.business();
        let _ = event.raw();
        let _ = event_to_input(event);
    }
});
