//! Sub-flows in the server: a flow whose `call_flow` node runs another flow of the same
//! organization, over real signed webhooks, with the call stack surviving a restart.

mod server_support;

use std::path::{Path, PathBuf};

use server_support::*;
use wiremock::MockServer;

const PNID_CADASTRO: &str = "106000000000021";

/// A temporary directory with a config of one organization and two flows: `cadastro`,
/// which calls `endereco` (the engine's sample pair).
fn subflow_workdir() -> PathBuf {
    let dir = workdir("http://127.0.0.1:9");
    let samples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../flowcore/tests/flows");
    for name in ["cadastro.json", "endereco.json"] {
        std::fs::copy(samples.join(name), dir.join("flows").join(name)).unwrap();
    }
    let config = format!(
        r#"
[[organizations]]
id = "acme"
api_token = "{ACME_TOKEN}"

[[flows]]
id = "cadastro"
organization = "acme"
path = "flows/cadastro.json"
[[flows]]
id = "endereco"
organization = "acme"
path = "flows/endereco.json"

[[chatbots]]
id = "cadastro-bot"
organization = "acme"
flow = "cadastro"

[[numbers]]
phone_number_id = "{PNID_CADASTRO}"
display_phone_number = "13125550177"
organization = "acme"
default_chatbot = "cadastro-bot"
"#
    );
    std::fs::write(dir.join("config.toml"), config).unwrap();
    dir
}

async fn start(graph: MockServer, dir: PathBuf) -> Harness {
    let server = start_server(base_env(&dir, &graph.uri())).await;
    let base = format!("http://{}", server.addr);
    Harness { graph, dir, server: Some(server), base, http: reqwest::Client::new() }
}

#[tokio::test]
async fn a_call_flow_node_runs_the_other_flow_and_returns_across_a_restart() {
    let graph = MockServer::start().await;
    mount_graph_ok(&graph).await;
    let mut h = start(graph, subflow_workdir()).await;
    let c = "12025550701";
    h.post_webhook(&webhook(PNID_CADASTRO, vec![msg(c, "wamid.S1", "oi")])).await;
    h.wait_sent(2).await;
    // The answer leads into `endereco`, which asks with the input the call rendered.
    h.post_webhook(&webhook(PNID_CADASTRO, vec![msg(c, "wamid.S2", "Ana")])).await;
    h.wait_sent(3).await;
    assert_eq!(
        h.texts_to(c).await,
        ["Olá! Vamos fazer o seu cadastro.", "Qual é o seu nome?", "Ana, qual é o seu CEP?"]
    );

    // The session waits inside the sub-flow; a restart reads the call stack back.
    h.stop().await;
    let dir = h.dir.clone();
    let mut h = start(h.graph, dir).await;
    h.post_webhook(&webhook(PNID_CADASTRO, vec![msg(c, "wamid.S3", "01310-100")])).await;
    h.wait_sent(4).await;
    h.post_webhook(&webhook(PNID_CADASTRO, vec![msg(c, "wamid.S4", "São Paulo")])).await;
    h.wait_sent(6).await;
    assert_eq!(
        h.texts_to(c).await[3..],
        ["E a cidade? (Brasil)", "Endereço anotado.", "Obrigado, Ana! Endereço: São Paulo, CEP 01310-100."]
    );
    // The conversation is one session of the caller's flow, ended with the outputs copied.
    let conversation = get_conversation(&h.http, &h.base, ACME_TOKEN, c).await;
    assert_eq!(conversation["flow_id"], "cadastro", "{conversation:#}");
    assert_eq!(texts_of(&conversation, "user"), ["oi", "Ana", "01310-100", "São Paulo"]);
    // After the caller's end, the next message starts the caller's flow afresh.
    h.post_webhook(&webhook(PNID_CADASTRO, vec![msg(c, "wamid.S5", "oi de novo")])).await;
    h.wait_sent(8).await;
    assert_eq!(h.texts_to(c).await[6..], ["Olá! Vamos fazer o seu cadastro.", "Qual é o seu nome?"]);
    h.stop().await;
}

/// Starts a server on `dir` that must refuse to start; its message.
async fn start_up_error(dir: &Path) -> String {
    let settings = flowcore_examples::server::env::EnvSettings::from_map(&base_env(dir, "http://127.0.0.1:9")).unwrap();
    match flowcore_examples::server::run::start(settings, None).await {
        Ok(server) => {
            server.shutdown().await;
            panic!("the server started");
        }
        Err(e) => e.to_string(),
    }
}

#[tokio::test]
async fn start_up_refuses_a_call_to_a_flow_the_organization_lacks() {
    let dir = subflow_workdir();
    let config = std::fs::read_to_string(dir.join("config.toml")).unwrap();
    let without_callee =
        config.replace("[[flows]]\nid = \"endereco\"\norganization = \"acme\"\npath = \"flows/endereco.json\"\n", "");
    assert_ne!(config, without_callee);
    std::fs::write(dir.join("config.toml"), without_callee).unwrap();
    let err = start_up_error(&dir).await;
    assert!(
        err.contains(r#"flow `cadastro` of organization `acme`"#)
            && err.contains(r#"error[unknown-flow] node "endereco": calls flow "endereco""#),
        "{err}"
    );

    // A called flow whose JSON declares another id than the config's cannot be found either.
    std::fs::write(dir.join("config.toml"), config).unwrap();
    let callee = std::fs::read_to_string(dir.join("flows/endereco.json")).unwrap();
    std::fs::write(dir.join("flows/endereco.json"), callee.replace(r#""id": "endereco""#, r#""id": "address""#))
        .unwrap();
    let err = start_up_error(&dir).await;
    assert!(err.contains(r#"error[unknown-flow] node "endereco""#), "{err}");
}
