//! Flow JSON from raw bytes: parse, compile, then run a short scripted conversation.
//! The bytes before the first NUL are the flow; the rest drives the script.
#![no_main]

use arbitrary::Unstructured;
use flowcore::Flow;
use flowcore_fuzz::{run_script, Driver};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (flow_bytes, script) = match data.iter().position(|&b| b == 0) {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (data, &[][..]),
    };
    let Ok(text) = std::str::from_utf8(flow_bytes) else { return };
    let Ok(flow) = Flow::from_json(text) else { return };
    let Ok(compiled) = flow.compile() else { return };
    let mut u = Unstructured::new(script);
    let seed = u.arbitrary::<u64>().unwrap_or(0);
    let mut driver = Driver::new(&compiled, seed);
    run_script(&mut driver, &mut u, 12);
});
