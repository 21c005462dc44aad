//! The embed example runs as its header says and proves what it claims.

use std::path::PathBuf;
use std::process::Command;

/// `cargo test` builds the examples next to the test binaries' directory.
fn example(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    let debug = exe.parent().and_then(|deps| deps.parent()).expect("target/<profile>/deps");
    debug.join("examples").join(format!("{name}{}", std::env::consts::EXE_SUFFIX))
}

#[test]
fn the_embed_example_answers_a_duplicated_webhook_once() {
    let path = example("embed");
    let output = Command::new(&path).output().unwrap_or_else(|e| panic!("cannot run {}: {e}", path.display()));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "exit {:?}\n{stdout}\n{}", output.status, String::from_utf8_lossy(&output.stderr));
    assert!(stdout.contains("webhook: 1 new, 0 duplicate\nwebhook: 0 new, 1 duplicate"), "{stdout}");
    assert_eq!(stdout.matches("reply to \"5511999990000\": ").count(), 2, "{stdout}");
    assert!(stdout.contains("Qual é o seu nome?"), "{stdout}");
    assert!(stdout.ends_with("each reply went out exactly once\n"), "{stdout}");
}
