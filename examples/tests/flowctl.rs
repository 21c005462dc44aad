//! The `flowctl` contract, tested through the real binary: arguments, stdin, stdout, exit codes.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

struct Outcome {
    code: i32,
    stdout: String,
    stderr: String,
}

/// A flow of `examples/flows/`, the README's tour.
fn sample(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("flows").join(name)
}

/// A flow of `flowcore/tests/flows/`, the engine's sample set (`big.json` is only there).
fn engine_sample(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../flowcore/tests/flows").join(name)
}

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/flows").join(name)
}

fn flowctl(args: &[&str], stdin: &str) -> Outcome {
    let mut child = Command::new(env!("CARGO_BIN_EXE_flowctl"))
        .args(args)
        .env("NO_COLOR", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("flowctl starts");
    // flowctl may exit before it reads stdin (a bad flag), so a broken pipe is no failure.
    match child.stdin.take().expect("stdin is piped").write_all(stdin.as_bytes()) {
        Err(err) if err.kind() != std::io::ErrorKind::BrokenPipe => panic!("writing flowctl's stdin: {err}"),
        _ => {}
    }
    let output = child.wait_with_output().expect("flowctl finishes");
    Outcome {
        code: output.status.code().expect("flowctl exits normally, not by a signal"),
        stdout: String::from_utf8(output.stdout).expect("stdout is UTF-8"),
        stderr: String::from_utf8(output.stderr).expect("stderr is UTF-8"),
    }
}

fn path_arg(path: &std::path::Path) -> String {
    path.to_str().expect("test paths are UTF-8").to_string()
}

/// The JSON lines of a `run`, each parsed.
fn json_lines(stdout: &str) -> Vec<serde_json::Value> {
    stdout.lines().map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{line:?}: {e}"))).collect()
}

fn texts(lines: &[serde_json::Value]) -> Vec<String> {
    lines.iter().filter(|l| l["type"] == "text").map(|l| l["text"].as_str().unwrap_or_default().to_string()).collect()
}

#[test]
fn check_accepts_the_sample_flows() {
    for path in [sample("lead.json"), sample("support_menu.json"), engine_sample("big.json")] {
        let name = path.display();
        let outcome = flowctl(&["check", &path_arg(&path)], "");
        assert_eq!(outcome.code, 0, "{name}: {}{}", outcome.stdout, outcome.stderr);
        assert!(outcome.stdout.contains(": ok: 0 errors"), "{name}: {}", outcome.stdout);
    }
}

#[test]
fn the_tour_flows_are_the_engine_samples_byte_for_byte() {
    // The README's tour and the demo config use examples/flows/; the engine's tests, benches
    // and fuzz seeds use flowcore/tests/flows/ (inside the published crate). One flow, two copies.
    for name in ["lead.json", "support_menu.json"] {
        let tour = std::fs::read(sample(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        let engine = std::fs::read(engine_sample(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(tour == engine, "examples/flows/{name} differs from flowcore/tests/flows/{name}");
    }
}

#[test]
fn check_reports_errors_with_node_ids_and_exits_1() {
    let outcome = flowctl(&["check", &path_arg(&fixture("no_start.json"))], "");
    assert_eq!(outcome.code, 1, "{}", outcome.stdout);
    assert!(outcome.stdout.contains("no-start-node"), "{}", outcome.stdout);
    assert!(outcome.stdout.contains("hello"), "duplicate id is named: {}", outcome.stdout);
    assert!(outcome.stdout.contains("nowhere"), "dangling edge target is named: {}", outcome.stdout);
    assert!(outcome.stdout.contains("failed"), "{}", outcome.stdout);
}

#[test]
fn check_json_format_is_machine_readable() {
    let outcome = flowctl(&["check", "--format", "json", &path_arg(&fixture("no_start.json"))], "");
    assert_eq!(outcome.code, 1);
    let report: serde_json::Value = serde_json::from_str(&outcome.stdout).expect("one JSON document");
    assert!(report["errors"].as_u64().unwrap_or(0) >= 3, "{report}");
    let codes: Vec<&str> =
        report["diagnostics"].as_array().unwrap().iter().filter_map(|d| d["code"].as_str()).collect();
    assert!(codes.contains(&"no-start-node"), "{codes:?}");
}

#[test]
fn unreadable_input_exits_2_with_a_message() {
    let missing = flowctl(&["check", "/definitely/not/here.json"], "");
    assert_eq!(missing.code, 2);
    assert!(missing.stderr.contains("cannot read"), "{}", missing.stderr);

    let dir = std::env::temp_dir().join(format!("flowctl-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let garbage = dir.join("garbage.json");
    std::fs::write(&garbage, "{ \"nodes\": [ oops").unwrap();
    for command in ["check", "graph", "run", "chat"] {
        let outcome = flowctl(&[command, &path_arg(&garbage)], "");
        assert_eq!(outcome.code, 2, "{command}: {}", outcome.stderr);
        assert!(outcome.stderr.starts_with("flowctl: "), "{command}: {}", outcome.stderr);
        assert!(!outcome.stderr.contains("panicked"), "{command}: {}", outcome.stderr);
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn graph_draws_mermaid_and_dot() {
    let mermaid = flowctl(&["graph", &path_arg(&sample("lead.json"))], "");
    assert_eq!(mermaid.code, 0, "{}", mermaid.stderr);
    insta::assert_snapshot!("lead_mermaid", mermaid.stdout);

    let dot = flowctl(&["graph", "--format", "dot", &path_arg(&sample("support_menu.json"))], "");
    assert_eq!(dot.code, 0, "{}", dot.stderr);
    insta::assert_snapshot!("support_menu_dot", dot.stdout);
}

#[test]
fn run_plays_the_lead_conversation() {
    let outcome = flowctl(&["run", &path_arg(&sample("lead.json"))], "oi\nMaria\n30\nmaria@example.com\n");
    assert_eq!(outcome.code, 0, "{}", outcome.stderr);
    let lines = json_lines(&outcome.stdout);
    assert_eq!(
        texts(&lines),
        [
            "Olá! Aqui é a Acme.",
            "Qual é o seu nome?",
            "Prazer, Maria! Quantos anos você tem?",
            "Ótimo, Maria. Qual é o seu e-mail?",
            "Obrigado, Maria! Enviaremos a proposta para maria@example.com.",
        ]
    );
    assert_eq!(lines.last().unwrap()["type"], "end");
    insta::assert_snapshot!("lead_run", outcome.stdout);
}

#[test]
fn run_accepts_vars_and_rejects_bad_ones() {
    let outcome = flowctl(&["run", "--vars", r#"{"company":"Globex"}"#, &path_arg(&sample("lead.json"))], "oi\n");
    assert_eq!(outcome.code, 0, "{}", outcome.stderr);
    assert_eq!(texts(&json_lines(&outcome.stdout))[0], "Olá! Aqui é a Globex.");

    let bad = flowctl(&["run", "--vars", "[1,2]", &path_arg(&sample("lead.json"))], "oi\n");
    assert_eq!(bad.code, 2);
    assert!(bad.stderr.contains("--vars"), "{}", bad.stderr);
}

#[test]
fn run_routes_buttons_and_answers_effects_from_the_next_line() {
    let script = concat!(
        "oi\n",
        "{\"type\":\"button_reply\",\"id\":\"btn_status\"}\n",
        "123456\n",
        "{\"type\":\"effect_result\",\"result\":{\"ok\":{\"status\":\"enviado\"}}}\n",
    );
    let outcome = flowctl(&["run", &path_arg(&sample("support_menu.json"))], script);
    assert_eq!(outcome.code, 0, "{}", outcome.stderr);
    let lines = json_lines(&outcome.stdout);
    assert_eq!(lines[0]["type"], "buttons", "{lines:?}");
    let effect = lines.iter().find(|l| l["type"] == "effect").expect("the api_call is printed");
    assert_eq!(effect["effect"], "api_call");
    assert_eq!(effect["url"], "https://api.example.com/orders/123456");
    assert_eq!(effect["expects_result"], true);
    assert!(texts(&lines).contains(&"Pedido 123456: enviado.".to_string()), "{lines:?}");
    insta::assert_snapshot!("support_run", outcome.stdout);
}

#[test]
fn run_fails_an_unanswered_effect_and_reads_the_line_as_a_message() {
    let script = "oi\n{\"type\":\"button_reply\",\"id\":\"btn_status\"}\n123456\nolá de novo\n";
    let outcome = flowctl(&["run", &path_arg(&sample("support_menu.json"))], script);
    assert_eq!(outcome.code, 0, "{}", outcome.stderr);
    let lines = json_lines(&outcome.stdout);
    let after_effect: Vec<_> = lines.iter().skip_while(|l| l["type"] != "effect").skip(1).collect();
    assert!(!after_effect.is_empty(), "the failed effect moves the flow on: {lines:?}");
    assert!(!outcome.stdout.contains("Pedido 123456:"), "no success path without a result: {lines:?}");
}

#[test]
fn run_rejects_a_malformed_json_line_with_exit_2() {
    let outcome = flowctl(&["run", &path_arg(&sample("lead.json"))], "oi\n{\"type\": \n");
    assert_eq!(outcome.code, 2);
    assert!(outcome.stderr.contains("line 2"), "{}", outcome.stderr);
}

#[test]
fn run_skips_delays_and_ticks_to_timeouts_on_a_fixed_clock() {
    let args = ["run", "--now", "2026-01-05T09:30:00-03:00", &path_arg(&fixture("delay_and_timeout.json"))];
    let outcome = flowctl(&args, "oi\n{\"type\":\"tick\"}\n");
    assert_eq!(outcome.code, 0, "{}", outcome.stderr);
    assert_eq!(texts(&json_lines(&outcome.stdout)), ["Ainda está aí?", "Encerrando por inatividade."]);
}

/// The inbound lines that bring `visita.json` to its WhatsApp Flow: a location, a photo
/// and a contact card, each as the JSON line of its `Input`.
const VISITA_TO_FLOW: &str = concat!(
    "oi\n",
    r#"{"type":"location","latitude":-23.5505,"longitude":-46.6333,"name":"Sé"}"#,
    "\n",
    r#"{"type":"media","kind":"image","id":"m1","mime_type":"image/jpeg"}"#,
    "\n",
    r#"{"type":"contacts","contacts":[{"name":{"formatted_name":"João Silva"}}]}"#,
    "\n",
);

#[test]
fn run_sends_a_location_and_answers_a_whatsapp_flow() {
    let args = ["run", &path_arg(&engine_sample("visita.json")), "--seed", "7"];
    let first = flowctl(&args, VISITA_TO_FLOW);
    assert_eq!(first.code, 0, "{}", first.stderr);
    let lines = json_lines(&first.stdout);
    assert!(texts(&lines).contains(&"Recebemos: Sé (-23.5505, -46.6333).".to_string()), "{lines:?}");
    let flow = lines.iter().find(|l| l["type"] == "flow").expect("a flow message line");
    assert_eq!((flow["node"].as_str(), flow["cta"].as_str()), (Some("schedule"), Some("Agendar")));
    let token = flow["flow_token"].as_str().expect("the flow line carries its token");

    // Same seed, same token: a script can answer the flow it was sent.
    let reply = serde_json::json!({"type": "flow_reply", "flow_token": token,
        "response": {"dia": "12/12", "horario": "14:00"}});
    let second = flowctl(&args, &format!("{VISITA_TO_FLOW}{reply}\n"));
    assert_eq!(second.code, 0, "{}", second.stderr);
    let lines = json_lines(&second.stdout);
    assert_eq!(
        texts(&lines).last().map(String::as_str),
        Some("Visita agendada para 12/12 às 14:00. João Silva receberá o técnico. Até lá!")
    );
    assert_eq!(lines.last().map(|l| l["reason"].clone()), Some(serde_json::json!("completed")));
}

#[test]
fn chat_takes_json_events_and_answers_flows_with_their_token() {
    let script =
        format!("{VISITA_TO_FLOW}{{\"type\":\"oops\"}}\n/flow {{\"dia\": \"13/12\", \"horario\": \"9:00\"}}\n");
    let outcome = flowctl(&["chat", &path_arg(&engine_sample("visita.json"))], &script);
    assert_eq!(outcome.code, 0, "{}", outcome.stderr);
    assert!(outcome.stdout.contains("[Agendar] (WhatsApp Flow 1234567890, screen AGENDA)"), "{}", outcome.stdout);
    assert!(outcome.stdout.contains("(not an inbound event: unknown variant `oops`"), "{}", outcome.stdout);
    assert!(outcome.stdout.contains("Visita agendada para 13/12 às 9:00."), "{}", outcome.stdout);
}

#[test]
fn graph_draws_a_whatsapp_flow_as_a_waiting_node() {
    let outcome = flowctl(&["graph", &path_arg(&engine_sample("visita.json"))], "");
    assert_eq!(outcome.code, 0, "{}", outcome.stderr);
    assert!(
        outcome.stdout.contains(r#"[/"schedule (whatsapp_flow)<br/>flow 1234567890 → agenda"/]"#),
        "{}",
        outcome.stdout
    );
    assert!(outcome.stdout.contains(r#"-->|"timeout"|"#), "{}", outcome.stdout);
}

#[test]
fn chat_numbers_choices_for_a_person() {
    let outcome = flowctl(&["chat", &path_arg(&sample("support_menu.json"))], "oi\n1\n2\n");
    assert_eq!(outcome.code, 0, "{}", outcome.stderr);
    assert!(outcome.stdout.contains("[1] Suporte"), "{}", outcome.stdout);
    assert!(outcome.stdout.contains("[3] Meu pedido"), "{}", outcome.stdout);
    assert!(outcome.stdout.contains("[2] Financeiro — Boletos e notas"), "{}", outcome.stdout);
    assert!(outcome.stdout.contains("handed off"), "{}", outcome.stdout);
}

/// Runs flowctl in the package directory, so the paths in reports are the relative ones given.
fn flowctl_here(args: &[&str]) -> Outcome {
    let output = Command::new(env!("CARGO_BIN_EXE_flowctl"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .output()
        .expect("flowctl runs");
    Outcome {
        code: output.status.code().expect("flowctl exits normally, not by a signal"),
        stdout: String::from_utf8(output.stdout).expect("stdout is UTF-8"),
        stderr: String::from_utf8(output.stderr).expect("stderr is UTF-8"),
    }
}

#[test]
fn test_passes_the_sample_chat_files_with_full_coverage() {
    for name in ["lead", "support_menu"] {
        let flow = format!("flows/{name}.json");
        let chat = format!("flows/{name}.chat");
        let outcome = flowctl_here(&["test", &flow, &chat, "--coverage"]);
        assert_eq!(outcome.code, 0, "{name}: {}{}", outcome.stdout, outcome.stderr);
        assert!(outcome.stdout.contains("test result: ok."), "{name}: {}", outcome.stdout);
        assert!(outcome.stdout.contains("(100.0%), edges"), "{name}: {}", outcome.stdout);
        assert!(!outcome.stdout.contains("untested"), "{name}: {}", outcome.stdout);
    }
}

#[test]
fn test_reports_each_kind_of_failure_with_its_line_and_exit_1() {
    let cases = [
        ("unlisted", "tests/chats/unlisted.chat:4"),
        ("wrong_text", "tests/chats/wrong_text.chat:3"),
        ("regex_mismatch", "tests/chats/regex_mismatch.chat:5"),
        ("missing_end", "tests/chats/missing_end.chat:7"),
        ("stray_effect_result", "tests/chats/stray_effect_result.chat:4"),
    ];
    for (name, location) in cases {
        let chat = format!("tests/chats/{name}.chat");
        let outcome = flowctl_here(&["test", "flows/lead.json", &chat]);
        assert_eq!(outcome.code, 1, "{name}: {}{}", outcome.stdout, outcome.stderr);
        assert!(outcome.stdout.contains(&format!("FAIL {location}\n")), "{name}: {}", outcome.stdout);
        insta::assert_snapshot!(format!("test_failure_{name}"), outcome.stdout);
    }
}

#[test]
fn test_runs_every_file_and_fails_when_one_fails() {
    let outcome = flowctl_here(&["test", "flows/lead.json", "flows/lead.chat", "tests/chats/wrong_text.chat"]);
    assert_eq!(outcome.code, 1, "{}", outcome.stdout);
    assert!(outcome.stdout.contains("ok flows/lead.chat: 2 of 2 passed"), "{}", outcome.stdout);
    assert!(outcome.stdout.contains("FAILED tests/chats/wrong_text.chat: 0 of 1 passed"), "{}", outcome.stdout);
    assert!(outcome.stdout.contains("test result: FAILED. 2 passed; 1 failed"), "{}", outcome.stdout);
}

#[test]
fn test_exits_2_on_syntax_errors_and_unreadable_files() {
    let syntax = flowctl_here(&["test", "flows/lead.json", "flows/lead.chat", "tests/chats/syntax_error.chat"]);
    assert_eq!(syntax.code, 2, "{}{}", syntax.stdout, syntax.stderr);
    assert!(syntax.stderr.starts_with("flowctl: tests/chats/syntax_error.chat: line 3: "), "{}", syntax.stderr);
    assert!(syntax.stdout.is_empty(), "nothing runs before every file is read: {}", syntax.stdout);

    let missing_chat = flowctl_here(&["test", "flows/lead.json", "tests/chats/not_here.chat"]);
    assert_eq!(missing_chat.code, 2);
    assert!(missing_chat.stderr.contains("cannot read tests/chats/not_here.chat"), "{}", missing_chat.stderr);

    let missing_flow = flowctl_here(&["test", "flows/not_here.json", "flows/lead.chat"]);
    assert_eq!(missing_flow.code, 2);
    assert!(missing_flow.stderr.contains("cannot read flows/not_here.json"), "{}", missing_flow.stderr);

    let broken_flow = flowctl_here(&["test", "tests/flows/no_start.json", "flows/lead.chat"]);
    assert_eq!(broken_flow.code, 2, "a flow that does not compile cannot be tested: {}", broken_flow.stderr);

    let no_tests = flowctl_here(&["test", "flows/lead.json"]);
    assert_eq!(no_tests.code, 2, "{}", no_tests.stderr);
}

#[test]
fn test_writes_coverage_json_and_junit_and_graph_draws_untested_parts() {
    let dir = tempfile::tempdir().unwrap();
    let coverage = dir.path().join("coverage.json");
    let junit = dir.path().join("junit.xml");
    let args = [
        "test",
        "flows/lead.json",
        "tests/chats/minor_only.chat",
        "--coverage",
        "--coverage-json",
        &path_arg(&coverage),
        "--junit",
        &path_arg(&junit),
    ];
    let outcome = flowctl_here(&args);
    assert_eq!(outcome.code, 1, "the second conversation fails: {}{}", outcome.stdout, outcome.stderr);
    assert!(
        outcome.stdout.contains("coverage of flow lead: nodes 6/8 (75.0%), edges 5/7 (71.4%)"),
        "{}",
        outcome.stdout
    );
    assert!(outcome.stdout.contains("  untested nodes: ask_email, bye\n"), "{}", outcome.stdout);

    let json = std::fs::read_to_string(&coverage).unwrap();
    let report: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(report["nodes"]["untested"], serde_json::json!(["ask_email", "bye"]));
    insta::assert_snapshot!("test_coverage_json", json);
    insta::assert_snapshot!("test_junit", std::fs::read_to_string(&junit).unwrap());

    let mermaid = flowctl_here(&["graph", "flows/lead.json", "--coverage", &path_arg(&coverage)]);
    assert_eq!(mermaid.code, 0, "{}", mermaid.stderr);
    assert!(mermaid.stdout.contains("    n5 -.-> n6\n"), "the untested edge is dashed: {}", mermaid.stdout);
    assert!(mermaid.stdout.contains("    class n5,n6 untested;\n"), "{}", mermaid.stdout);
    insta::assert_snapshot!("test_coverage_mermaid", mermaid.stdout);
    let dot = flowctl_here(&["graph", "flows/lead.json", "--format", "dot", "--coverage", &path_arg(&coverage)]);
    assert_eq!(dot.code, 0, "{}", dot.stderr);
    insta::assert_snapshot!("test_coverage_dot", dot.stdout);

    let other_flow = flowctl_here(&["graph", "flows/support_menu.json", "--coverage", &path_arg(&coverage)]);
    assert_eq!(other_flow.code, 2, "a coverage file of another flow is refused: {}", other_flow.stderr);
}

#[test]
fn with_loads_the_flows_a_call_flow_node_calls() {
    let (caller, callee) = (path_arg(&engine_sample("cadastro.json")), path_arg(&engine_sample("endereco.json")));
    // Alone, the call has no flow to run: check says so and exits 1.
    let alone = flowctl(&["check", &caller], "");
    assert_eq!(alone.code, 1, "{}{}", alone.stdout, alone.stderr);
    assert!(alone.stdout.contains(r#"error[unknown-flow] node "endereco""#), "{}", alone.stdout);
    let checked = flowctl(&["check", &caller, "--with", &callee], "");
    assert_eq!(checked.code, 0, "{}{}", checked.stdout, checked.stderr);
    assert!(checked.stdout.contains(": ok: 0 errors, 0 warnings"), "{}", checked.stdout);

    let run = flowctl(&["run", &caller, "--with", &callee], "oi\nAna\n01310-100\nSão Paulo\n");
    assert_eq!(run.code, 0, "{}", run.stderr);
    let lines = json_lines(&run.stdout);
    assert_eq!(
        texts(&lines),
        [
            "Olá! Vamos fazer o seu cadastro.",
            "Qual é o seu nome?",
            "Ana, qual é o seu CEP?",
            "E a cidade? (Brasil)",
            "Endereço anotado.",
            "Obrigado, Ana! Endereço: São Paulo, CEP 01310-100."
        ]
    );
    assert_eq!(lines.last().map(|l| l["node"].clone()), Some(serde_json::json!("bye")));

    // Without --with the run stops at the call with the engine's error (exit 2).
    let stuck = flowctl(&["run", &caller], "oi\nAna\n");
    assert_eq!(stuck.code, 2, "{}", stuck.stdout);
    assert!(stuck.stderr.contains(r#"line 2: flow "endereco" is not in the set of flows"#), "{}", stuck.stderr);
    let chat = flowctl(&["chat", &caller, "--with", &callee], "oi\nAna\n");
    assert_eq!(chat.code, 0, "{}", chat.stderr);
    assert!(chat.stdout.contains("Ana, qual é o seu CEP?"), "{}", chat.stdout);
    // A --with file that cannot be read is unreadable input.
    let missing = flowctl(&["check", &caller, "--with", "no/such/flow.json"], "");
    assert_eq!(missing.code, 2, "{}", missing.stderr);

    // `test` runs a caller's transcript through the called flow too.
    let tested = flowctl_here(&["test", &caller, "tests/chats/cadastro.chat", "--with", &callee, "--coverage"]);
    assert_eq!(tested.code, 0, "{}{}", tested.stdout, tested.stderr);
    assert!(tested.stdout.contains("test result: ok. 1 passed; 0 failed"), "{}", tested.stdout);
    let without = flowctl_here(&["test", &caller, "tests/chats/cadastro.chat"]);
    assert_eq!(without.code, 1, "the call fails without its flow: {}", without.stdout);
}
