//! The tenant configuration: organizations, flows, chatbots and business numbers, read
//! from the TOML file at `FLOWCORE_CONFIG`.
//!
//! ```toml
//! not_configured_reply = "Sorry, this number is not set up yet."   # optional
//! demo = false                                                     # optional, see below
//!
//! [[organizations]]
//! id = "acme"
//! api_token = "acme-secret-token"
//!
//! [[flows]]
//! id = "lead"
//! organization = "acme"
//! path = "../flows/lead.json"          # relative to this file
//! move_sessions_to_latest = false       # optional, see below
//!
//! [[chatbots]]
//! id = "lead-bot"
//! organization = "acme"
//! flow = "lead"
//! is_fallback = true                    # optional, default false
//! ab_test_flows = [{ flow = "lead", weight = 1 }, { flow = "lead_v2", weight = 1 }]  # optional
//!
//! [[numbers]]
//! phone_number_id = "106000000000001"
//! display_phone_number = "13125550100"
//! organization = "acme"
//! default_chatbot = "lead-bot"          # optional
//! access_token = "EAAG..."              # optional, else META_ACCESS_TOKEN
//! messages_per_second = 80              # optional, default 80: the number's Meta throughput
//! ```
//!
//! Ids of flows and chatbots are scoped to their organization: two organizations may both
//! have a flow called `lead`, and a chatbot can only use a flow of its own organization.
//!
//! A running conversation keeps the flow version it started on. With a flow's
//! `move_sessions_to_latest = true`, its conversations move to the flow's newest version
//! (published through the API, or a changed file at the next start) at their next message,
//! when the node they wait at still exists there and waits the same way; the others stay on
//! their version until they end.
//!
//! `demo = true` marks the bundled demo config: only then may the server fall back to the
//! published sample app secret and verify token, and log replies instead of sending them,
//! when the environment does not configure Meta (see `server::env`).

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The reply sent when a number has no chatbot and its organization no fallback.
pub const DEFAULT_NOT_CONFIGURED_REPLY: &str =
    "Olá! Este número ainda não está configurado para atendimento automático. Tente novamente mais tarde.";

/// The whole config file, as written.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// The polite reply for messages no chatbot can answer.
    #[serde(default)]
    pub not_configured_reply: Option<String>,
    /// Whether this is the bundled demo config (enables demo fallbacks).
    #[serde(default)]
    pub demo: bool,
    /// Tenants.
    #[serde(default)]
    pub organizations: Vec<OrganizationConfig>,
    /// Flow files.
    #[serde(default)]
    pub flows: Vec<FlowConfig>,
    /// Chatbots (a flow, or an A/B test between flows).
    #[serde(default)]
    pub chatbots: Vec<ChatbotConfig>,
    /// Business numbers by Meta `phone_number_id`.
    #[serde(default)]
    pub numbers: Vec<NumberConfig>,
}

/// One tenant.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrganizationConfig {
    /// The organization's id.
    pub id: String,
    /// The bearer token of its admin API.
    pub api_token: String,
}

impl fmt::Debug for OrganizationConfig {
    // The token is a credential: never print it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OrganizationConfig").field("id", &self.id).field("api_token", &"<redacted>").finish()
    }
}

/// One flow file.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlowConfig {
    /// The flow's id within its organization.
    pub id: String,
    /// The owning organization.
    pub organization: String,
    /// The flow JSON, relative to the config file.
    pub path: PathBuf,
    /// Whether running sessions move to the flow's newest version when they fit it.
    #[serde(default)]
    pub move_sessions_to_latest: bool,
}

/// One chatbot.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChatbotConfig {
    /// The chatbot's id within its organization.
    pub id: String,
    /// The owning organization.
    pub organization: String,
    /// The flow it runs (the control when `ab_test_flows` is set and does not list it).
    pub flow: String,
    /// Whether it answers numbers of its organization without a `default_chatbot`.
    #[serde(default)]
    pub is_fallback: bool,
    /// An A/B test: each contact gets one variant by a stable hash.
    #[serde(default)]
    pub ab_test_flows: Vec<AbVariant>,
}

/// One A/B variant.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AbVariant {
    /// The flow id (same organization).
    pub flow: String,
    /// Relative weight, > 0.
    pub weight: u32,
}

/// One business number.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NumberConfig {
    /// Meta's id of the number (the webhook's `metadata.phone_number_id`).
    pub phone_number_id: String,
    /// The number as displayed.
    pub display_phone_number: String,
    /// The owning organization.
    pub organization: String,
    /// The chatbot that answers it.
    #[serde(default)]
    pub default_chatbot: Option<String>,
    /// The Graph API token for this number (else `META_ACCESS_TOKEN`).
    #[serde(default)]
    pub access_token: Option<String>,
    /// How many replies per second the number may send (Meta's throughput: 80 by default,
    /// up to 1,000 for upgraded numbers); sends beyond it wait their turn.
    #[serde(default = "default_messages_per_second")]
    pub messages_per_second: u32,
}

fn default_messages_per_second() -> u32 {
    80
}

impl fmt::Debug for NumberConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NumberConfig")
            .field("phone_number_id", &self.phone_number_id)
            .field("organization", &self.organization)
            .field("default_chatbot", &self.default_chatbot)
            .field("messages_per_second", &self.messages_per_second)
            .field("access_token", &self.access_token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// A config that parsed and whose references all resolve; flow files have been read
/// (not yet compiled: see `server::flows`).
#[derive(Clone, Debug)]
pub struct Config {
    /// Where it was read from.
    pub path: PathBuf,
    /// The parsed file.
    pub file: ConfigFile,
    /// The flow sources, in `file.flows` order.
    pub flow_sources: Vec<FlowSource>,
}

/// A flow file's text, with where it came from.
#[derive(Clone, Debug)]
pub struct FlowSource {
    /// The owning organization.
    pub organization: String,
    /// The flow id in the config.
    pub id: String,
    /// The resolved path.
    pub path: PathBuf,
    /// The JSON text.
    pub text: String,
}

/// Why a config could not be used. Every variant reads as one line for the operator.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config {path}: {source}")]
    Read {
        /// The path tried.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The TOML is malformed or has unknown/missing fields.
    #[error("config {path} is not valid: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// toml's message (with line and column).
        message: String,
    },
    /// References or ids are wrong; every problem is listed.
    #[error("config {path} has {} problem(s):\n  - {}", .problems.len(), .problems.join("\n  - "))]
    Invalid {
        /// The file.
        path: PathBuf,
        /// One line per problem.
        problems: Vec<String>,
    },
}

impl Config {
    /// Reads, parses and cross-checks the config at `path`, and reads every flow file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        Config::from_toml(path, &text)
    }

    /// Parses and cross-checks config text as if read from `path` (flow paths are
    /// resolved against `path`'s directory).
    pub fn from_toml(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let file: ConfigFile =
            toml::from_str(text).map_err(|e| ConfigError::Parse { path: path.to_owned(), message: e.to_string() })?;
        let mut problems = validate(&file);
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let mut flow_sources = Vec::new();
        for flow in &file.flows {
            let resolved = base.join(&flow.path);
            match std::fs::read_to_string(&resolved) {
                Ok(text) => flow_sources.push(FlowSource {
                    organization: flow.organization.clone(),
                    id: flow.id.clone(),
                    path: resolved,
                    text,
                }),
                Err(e) => problems.push(format!(
                    "flow `{}` of organization `{}`: cannot read {}: {e}",
                    flow.id,
                    flow.organization,
                    resolved.display()
                )),
            }
        }
        if problems.is_empty() {
            Ok(Config { path: path.to_owned(), file, flow_sources })
        } else {
            Err(ConfigError::Invalid { path: path.to_owned(), problems })
        }
    }
}

/// Every cross-reference problem of a parsed config, one line each.
fn validate(file: &ConfigFile) -> Vec<String> {
    let mut problems = Vec::new();
    let mut orgs = HashSet::new();
    let mut tokens = HashSet::new();
    for org in &file.organizations {
        if org.id.trim().is_empty() {
            problems.push("an organization has an empty id".to_owned());
        }
        if !orgs.insert(org.id.as_str()) {
            problems.push(format!("organization `{}` is defined twice", org.id));
        }
        if org.api_token.trim().len() < 8 {
            problems.push(format!("organization `{}`: api_token must be at least 8 characters", org.id));
        }
        // Tokens identify the tenant, so two tenants sharing one would see each other's data.
        if !tokens.insert(org.api_token.as_str()) {
            problems.push(format!("organization `{}`: api_token is shared with another organization", org.id));
        }
    }
    let mut flows = HashSet::new();
    for flow in &file.flows {
        if !orgs.contains(flow.organization.as_str()) {
            problems.push(format!("flow `{}`: unknown organization `{}`", flow.id, flow.organization));
        }
        if !flows.insert((flow.organization.as_str(), flow.id.as_str())) {
            problems.push(format!("flow `{}` is defined twice in organization `{}`", flow.id, flow.organization));
        }
    }
    let mut chatbots = HashSet::new();
    let mut fallbacks: HashMap<&str, &str> = HashMap::new();
    for bot in &file.chatbots {
        let org = bot.organization.as_str();
        if !orgs.contains(org) {
            problems.push(format!("chatbot `{}`: unknown organization `{}`", bot.id, org));
        }
        if !chatbots.insert((org, bot.id.as_str())) {
            problems.push(format!("chatbot `{}` is defined twice in organization `{}`", bot.id, org));
        }
        if !flows.contains(&(org, bot.flow.as_str())) {
            problems.push(format!("chatbot `{}`: flow `{}` is not a flow of organization `{}`", bot.id, bot.flow, org));
        }
        for variant in &bot.ab_test_flows {
            if !flows.contains(&(org, variant.flow.as_str())) {
                problems.push(format!(
                    "chatbot `{}`: A/B flow `{}` is not a flow of organization `{}`",
                    bot.id, variant.flow, org
                ));
            }
            if variant.weight == 0 {
                problems.push(format!("chatbot `{}`: A/B flow `{}` has weight 0", bot.id, variant.flow));
            }
        }
        if bot.is_fallback {
            if let Some(other) = fallbacks.insert(org, bot.id.as_str()) {
                problems.push(format!("organization `{org}` has two fallback chatbots: `{other}` and `{}`", bot.id));
            }
        }
    }
    let mut numbers = HashSet::new();
    for number in &file.numbers {
        let org = number.organization.as_str();
        if !numbers.insert(number.phone_number_id.as_str()) {
            problems.push(format!("number `{}` is defined twice", number.phone_number_id));
        }
        if !orgs.contains(org) {
            problems.push(format!("number `{}`: unknown organization `{}`", number.phone_number_id, org));
        }
        if let Some(bot) = &number.default_chatbot {
            if !chatbots.contains(&(org, bot.as_str())) {
                problems.push(format!(
                    "number `{}`: default_chatbot `{}` is not a chatbot of organization `{}`",
                    number.phone_number_id, bot, org
                ));
            }
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_flow(dir: &Path, name: &str) {
        std::fs::write(dir.join(name), "{}").unwrap();
    }

    #[test]
    fn dangling_references_are_all_listed() {
        let dir = std::env::temp_dir().join(format!("flowcore-config-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        write_flow(&dir, "a.json");
        let text = r#"
            [[organizations]]
            id = "acme"
            api_token = "acme-token-1"
            [[flows]]
            id = "a"
            organization = "acme"
            path = "a.json"
            [[flows]]
            id = "missing"
            organization = "acme"
            path = "nope.json"
            [[chatbots]]
            id = "bot"
            organization = "acme"
            flow = "b"
            [[numbers]]
            phone_number_id = "1"
            display_phone_number = "1"
            organization = "globex"
            default_chatbot = "bot"
        "#;
        let err = Config::from_toml(&dir.join("c.toml"), text).unwrap_err().to_string();
        for needle in [
            "chatbot `bot`: flow `b` is not a flow of organization `acme`",
            "number `1`: unknown organization `globex`",
            "default_chatbot `bot` is not a chatbot of organization `globex`",
            "nope.json",
        ] {
            assert!(err.contains(needle), "missing {needle:?} in {err}");
        }
    }

    #[test]
    fn unknown_fields_are_refused_with_a_position() {
        let err = Config::from_toml(Path::new("c.toml"), "[[organizations]]\nid = \"a\"\napi_tokn = \"x\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("api_tokn"), "{err}");
        assert!(err.contains("line"), "{err}");
    }

    #[test]
    fn move_sessions_to_latest_is_per_flow_and_off_by_default() {
        let text = r#"
            [[flows]]
            id = "moving"
            organization = "acme"
            path = "a.json"
            move_sessions_to_latest = true
            [[flows]]
            id = "keeping"
            organization = "acme"
            path = "b.json"
        "#;
        let file: ConfigFile = toml::from_str(text).unwrap();
        let moving: Vec<(&str, bool)> = file.flows.iter().map(|f| (f.id.as_str(), f.move_sessions_to_latest)).collect();
        assert_eq!(moving, [("moving", true), ("keeping", false)]);
    }

    #[test]
    fn debug_output_hides_tokens() {
        let org = OrganizationConfig { id: "acme".into(), api_token: "very-secret".into() };
        assert!(!format!("{org:?}").contains("very-secret"));
    }
}
