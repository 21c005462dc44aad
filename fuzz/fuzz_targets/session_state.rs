//! Stored session state as a corrupted database row would give it: a real state of the lead
//! flow, serialised, then damaged by the fuzzer's edits (or raw bytes that start with `{`);
//! load it, check it against the flow, then take a few steps.
#![no_main]

use std::sync::OnceLock;

use arbitrary::{Arbitrary, Unstructured};
use flowcore::{Flow, Session};
use flowcore_fuzz::{run_script, Driver, ScriptedInput};
use libfuzzer_sys::fuzz_target;

const LEAD: &str = include_str!("../../flowcore/tests/flows/lead.json");

#[derive(Arbitrary, Debug)]
enum Edit {
    Set(u16, u8),
    Insert(u16, u8),
    Remove(u16),
    Splice(u16, String),
}

fn flow() -> &'static flowcore::CompiledFlow {
    static FLOW: OnceLock<flowcore::CompiledFlow> = OnceLock::new();
    FLOW.get_or_init(|| Flow::from_json(LEAD).expect("lead.json parses").compile().expect("lead.json compiles"))
}

fuzz_target!(|data: &[u8]| {
    let flow = flow();
    let mut u = Unstructured::new(data);
    let state: Vec<u8> = if data.first() == Some(&b'{') {
        let end = data.iter().position(|&b| b == 0).unwrap_or(data.len());
        u = Unstructured::new(&data[end.min(data.len())..]);
        data[..end].to_vec()
    } else {
        // A genuine state first: a few steps of the lead conversation.
        let mut driver = Driver::new(flow, 7);
        let prefix: Vec<ScriptedInput> = u.arbitrary().unwrap_or_default();
        for input in prefix.iter().take(6) {
            driver.step(input);
        }
        let mut bytes = serde_json::to_vec(driver.session()).expect("a session state always serialises");
        let edits: Vec<Edit> = u.arbitrary().unwrap_or_default();
        for edit in edits.iter().take(8) {
            let at = |pos: u16, len: usize| if len == 0 { 0 } else { pos as usize % len };
            match edit {
                Edit::Set(pos, byte) if !bytes.is_empty() => {
                    let i = at(*pos, bytes.len());
                    bytes[i] = *byte;
                }
                Edit::Insert(pos, byte) => {
                    let i = at(*pos, bytes.len() + 1);
                    bytes.insert(i, *byte);
                }
                Edit::Remove(pos) if !bytes.is_empty() => {
                    let i = at(*pos, bytes.len());
                    bytes.remove(i);
                }
                Edit::Splice(pos, text) => {
                    let i = at(*pos, bytes.len() + 1);
                    bytes.splice(i..i, text.bytes());
                }
                _ => {}
            }
        }
        bytes
    };
    let Ok(session) = serde_json::from_slice::<Session>(&state) else { return };
    if session.check_flow(flow).is_err() {
        return;
    }
    let mut driver = Driver::resume(flow, session);
    run_script(&mut driver, &mut u, 8);
});
