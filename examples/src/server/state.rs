//! What every handler and background task shares.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use flowcore_store::runtime::{Runtime, Stats};
use flowcore_store::Store;
use sha2::{Digest, Sha256};
use subtle_compare::ct_eq;

use super::config::Config;
use super::env::EnvSettings;
use super::routing::Router;

/// The shared state; cheap to clone.
#[derive(Clone)]
pub struct AppState(pub Arc<Shared>);

impl std::ops::Deref for AppState {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// Everything behind [`AppState`].
pub struct Shared {
    /// The store (the runtime's).
    pub store: Arc<dyn Store>,
    /// The durable pipeline: inbox, workers, sender, janitor, flows.
    pub runtime: Runtime,
    /// Organizations, numbers and routing.
    pub tenants: Tenants,
    /// Webhook verification and signature settings.
    pub webhook: WebhookSecurity,
    /// The environment settings.
    pub settings: EnvSettings,
    /// Webhook deliveries accepted (the runtime counts the rest).
    pub webhooks: AtomicU64,
}

impl Shared {
    /// This instance's counters as JSON, for `/api/v1/analytics/metrics` and the load bench.
    pub fn stats_snapshot(&self) -> serde_json::Value {
        let stats = self.runtime.stats();
        serde_json::json!({
            "webhooks": self.webhooks.load(Ordering::Relaxed),
            "messages_accepted": Stats::get(&stats.messages_accepted),
            "duplicates_ignored": Stats::get(&stats.duplicates),
            "statuses_recorded": Stats::get(&stats.statuses),
            "rate_limited": Stats::get(&stats.rate_limited),
            "turns": Stats::get(&stats.turns),
            "replies_sent": Stats::get(&stats.sent),
            "replies_handed_over": Stats::get(&stats.handed_over),
            "send_retries": Stats::get(&stats.send_retries),
            "replies_failed": Stats::get(&stats.send_failed),
        })
    }

    /// Now, as the runtime reads it.
    pub fn now(&self) -> flowcore::Timestamp {
        self.runtime.clock().now()
    }
}

/// The webhook's security settings.
pub struct WebhookSecurity {
    /// `WEBHOOK_VERIFY_TOKEN` (or the demo token).
    pub verify_token: String,
    /// `META_APP_SECRET`s (or the demo secret).
    pub app_secrets: Vec<String>,
    /// `FLOWCORE_INSECURE_SKIP_SIGNATURE=1`.
    pub insecure_skip_signature: bool,
    /// Body cap in bytes.
    pub max_body_bytes: usize,
}

/// Organizations, their tokens and numbers.
pub struct Tenants {
    /// SHA-256 of each organization's API token, by organization.
    token_hashes: Vec<(String, [u8; 32])>,
    /// Business numbers by `phone_number_id`.
    pub numbers: HashMap<String, NumberInfo>,
    /// The router (also the runtime's flow chooser).
    pub router: Arc<Router>,
    /// Chatbots with A/B tests: (organization, chatbot) → variant flow ids.
    pub ab_tests: Vec<(String, String, Vec<String>)>,
    /// Organization ids, in config order.
    pub organizations: Vec<String>,
}

/// A business number.
#[derive(Clone)]
pub struct NumberInfo {
    /// The organization.
    pub organization: String,
    /// The number as displayed.
    pub display_phone_number: String,
    /// Its own Graph token, if configured.
    pub access_token: Option<String>,
    /// Its Meta throughput: replies per second.
    pub messages_per_second: u32,
}

impl Tenants {
    /// Builds the tenant tables from a validated config.
    pub fn new(config: &Config) -> Tenants {
        let file = &config.file;
        Tenants {
            token_hashes: file
                .organizations
                .iter()
                .map(|o| (o.id.clone(), Sha256::digest(o.api_token.as_bytes()).into()))
                .collect(),
            numbers: file
                .numbers
                .iter()
                .map(|n| {
                    (
                        n.phone_number_id.clone(),
                        NumberInfo {
                            organization: n.organization.clone(),
                            display_phone_number: n.display_phone_number.clone(),
                            access_token: n.access_token.clone(),
                            messages_per_second: n.messages_per_second,
                        },
                    )
                })
                .collect(),
            router: Arc::new(Router::new(file)),
            ab_tests: file
                .chatbots
                .iter()
                .filter(|b| !b.ab_test_flows.is_empty())
                .map(|b| {
                    (b.organization.clone(), b.id.clone(), b.ab_test_flows.iter().map(|v| v.flow.clone()).collect())
                })
                .collect(),
            organizations: file.organizations.iter().map(|o| o.id.clone()).collect(),
        }
    }

    /// The organization whose API token this is. Every token is compared (in constant
    /// time, on hashes) so the answer's timing says nothing about which one matched.
    pub fn organization_for_token(&self, token: &str) -> Option<&str> {
        let given: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let mut found = None;
        for (org, hash) in &self.token_hashes {
            if ct_eq(&given, hash) {
                found = Some(org.as_str());
            }
        }
        found
    }

    /// The business numbers of an organization.
    pub fn numbers_of<'a>(&'a self, org: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.numbers.iter().filter(move |(_, n)| n.organization == org).map(|(id, _)| id.as_str())
    }
}

mod subtle_compare {
    /// Constant-time equality of two digests.
    pub fn ct_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
        a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }
}
