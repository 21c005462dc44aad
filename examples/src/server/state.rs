//! What every handler and background task shares.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use flowcore_store::Store;
use sha2::{Digest, Sha256};
use subtle_compare::ct_eq;
use tokio::sync::Notify;

use super::config::Config;
use super::effects::Effects;
use super::env::{EnvSettings, OutboundMode};
use super::flows::FlowRegistry;
use super::ratelimit::RateLimit;
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
    /// The store.
    pub store: Arc<dyn Store>,
    /// Organizations, numbers and routing.
    pub tenants: Tenants,
    /// Compiled flows.
    pub flows: FlowRegistry,
    /// Webhook verification and signature settings.
    pub webhook: WebhookSecurity,
    /// Effect handlers.
    pub effects: Effects,
    /// Per-contact inbound limit.
    pub rate_limit: RateLimit,
    /// How replies leave.
    pub outbound: OutboundMode,
    /// Graph API base URL (no trailing slash).
    pub graph_api_base: String,
    /// The environment settings.
    pub settings: EnvSettings,
    /// Wakes the inbox dispatcher after a webhook wrote rows.
    pub inbox_ready: Notify,
    /// Wakes the sender after a turn enqueued replies.
    pub outbox_ready: Notify,
    /// Replies a turn claimed as it committed them, for the sender to send in order.
    pub claimed_replies: tokio::sync::mpsc::UnboundedSender<HandedOver>,
    /// Counters for `/api/v1/analytics/metrics` and the load bench.
    pub stats: Stats,
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

/// Process-wide counters (this instance only).
#[derive(Default, Debug)]
pub struct Stats {
    /// Webhook deliveries accepted.
    pub webhooks: AtomicU64,
    /// Inbound messages written to the inbox.
    pub messages_accepted: AtomicU64,
    /// Duplicate deliveries ignored.
    pub duplicates: AtomicU64,
    /// Status updates recorded.
    pub statuses: AtomicU64,
    /// Messages dropped by the rate limiter.
    pub rate_limited: AtomicU64,
    /// Turns committed.
    pub turns: AtomicU64,
    /// Replies accepted by Meta (or logged).
    pub sent: AtomicU64,
    /// Replies a turn claimed as it committed them, handed to the sender without a claim.
    pub handed_over: AtomicU64,
    /// Send attempts that will be retried.
    pub send_retries: AtomicU64,
    /// Replies failed for good.
    pub send_failed: AtomicU64,
}

impl Stats {
    /// Adds one to a counter.
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// The counters as JSON.
    pub fn snapshot(&self) -> serde_json::Value {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        serde_json::json!({
            "webhooks": get(&self.webhooks),
            "messages_accepted": get(&self.messages_accepted),
            "duplicates_ignored": get(&self.duplicates),
            "statuses_recorded": get(&self.statuses),
            "rate_limited": get(&self.rate_limited),
            "turns": get(&self.turns),
            "replies_sent": get(&self.sent),
            "replies_handed_over": get(&self.handed_over),
            "send_retries": get(&self.send_retries),
            "replies_failed": get(&self.send_failed),
        })
    }
}

/// Organizations, their tokens and numbers.
pub struct Tenants {
    /// SHA-256 of each organization's API token, by organization.
    token_hashes: Vec<(String, [u8; 32])>,
    /// Business numbers by `phone_number_id`.
    pub numbers: HashMap<String, NumberInfo>,
    /// The router.
    pub router: Router,
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
                        },
                    )
                })
                .collect(),
            router: Router::new(file),
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

/// A turn's replies, claimed as they were committed, handed to the sender.
#[derive(Debug)]
pub struct HandedOver {
    /// The replies, in the order they must go.
    pub replies: Vec<flowcore_store::OutboxMessage>,
    /// Dropped once the sender is done with them (each sent and recorded, or given back to
    /// the queue): the turn that handed them over waits for it before its conversation's
    /// next turn.
    pub done: tokio::sync::oneshot::Sender<()>,
}
