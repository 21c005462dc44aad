//! Compiled flows by (organization, flow id, version), backed by the store's flow versions.
//!
//! A session keeps the version it started on (unless
//! [`RuntimeOptions::move_to_latest`](super::RuntimeOptions::move_to_latest) moves it);
//! new sessions take the latest, which is re-read from the store at most every
//! [`LATEST_TTL`] so that instances sharing a database pick up each other's publishes.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use flowcore::{CompiledFlow, Flow, FlowSet, Timestamp};
use serde_json::{json, Value};

use super::clock::Clock;
use crate::{Store, StoreError};

/// How long the latest version number of a flow is trusted before re-reading it.
pub const LATEST_TTL: Duration = Duration::from_secs(2);

/// A flow that does not compile: one line per diagnostic, and JSON for an API.
#[derive(Debug, Clone)]
pub struct FlowProblems {
    /// Readable lines (`error[code] node "x": message`).
    pub lines: Vec<String>,
    /// The same as JSON objects (`severity`, `code`, `message`, `node`, `edge`).
    pub json: Vec<Value>,
}

/// Parses and compiles flow JSON.
///
/// ```
/// let problems = flowcore_store::runtime::compile("{").unwrap_err();
/// assert!(problems.lines[0].starts_with("error[invalid-json]"));
/// ```
pub fn compile(text: &str) -> Result<CompiledFlow, FlowProblems> {
    let flow = Flow::from_json(text).map_err(|e| FlowProblems {
        lines: vec![format!("error[invalid-json]: {e}")],
        json: vec![
            json!({"severity": "error", "code": "invalid-json", "message": e.to_string(), "node": null, "edge": null}),
        ],
    })?;
    flow.compile().map_err(|e| FlowProblems {
        lines: e.errors().map(ToString::to_string).collect(),
        json: e
            .diagnostics()
            .iter()
            .map(|d| {
                json!({"severity": d.severity.to_string(), "code": d.code, "message": d.message, "node": d.node, "edge": d.edge})
            })
            .collect(),
    })
}

/// The flow id a flow JSON declares (`"id"`), if any.
pub fn declared_id(text: &str) -> Option<String> {
    serde_json::from_str::<Value>(text).ok()?.get("id")?.as_str().map(str::to_owned)
}

type VersionKey = (String, String, i64);

/// Compiled flows, cached by version, read from the store on a miss.
pub struct Flows {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    compiled: RwLock<HashMap<VersionKey, Arc<CompiledFlow>>>,
    latest: RwLock<HashMap<(String, String), (i64, Timestamp)>>,
}

/// Why a flow could not be had.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FlowLookupError {
    /// No such flow (version) in the store.
    #[error("flow {0} not found")]
    NotFound(String),
    /// A stored version no longer compiles (published by an older release?).
    #[error("stored flow {flow} v{version} does not compile: {problems}")]
    Broken {
        /// The flow id.
        flow: String,
        /// The version.
        version: i64,
        /// The first problems.
        problems: String,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Flows {
    pub(crate) fn new(store: Arc<dyn Store>, clock: Arc<dyn Clock>) -> Flows {
        Flows { store, clock, compiled: RwLock::default(), latest: RwLock::default() }
    }

    /// Publishes a flow when the store does not have this text of it yet, and caches it;
    /// the version that now runs.
    ///
    /// When the stored latest differs from `text` but an older version equals it, the
    /// latest was published (through an API, say) after the text was written, and stays
    /// the latest.
    pub async fn install(
        &self,
        org: &str,
        flow_id: &str,
        text: &str,
        compiled: CompiledFlow,
    ) -> Result<i64, StoreError> {
        let store = self.store.as_ref();
        let version = match store.get_flow(org, flow_id, None).await? {
            Some(latest) if latest.definition == text => latest.version,
            Some(latest) => {
                if self.is_older_version(org, flow_id, text, latest.version).await? {
                    // Compile the newer latest now, so a broken one shows at once.
                    self.get(org, flow_id, latest.version).await.map_err(|e| match e {
                        FlowLookupError::Store(s) => s,
                        other => StoreError::InvalidInput(other.to_string()),
                    })?;
                    self.set_latest(org, flow_id, latest.version);
                    return Ok(latest.version);
                }
                store.publish_flow(org, flow_id, text, self.clock.now()).await?
            }
            None => store.publish_flow(org, flow_id, text, self.clock.now()).await?,
        };
        self.cache_latest(org, flow_id, version, compiled);
        Ok(version)
    }

    /// Whether one of the 50 versions before `latest` has exactly `text`.
    async fn is_older_version(&self, org: &str, flow_id: &str, text: &str, latest: i64) -> Result<bool, StoreError> {
        for version in (1.max(latest - 50)..latest).rev() {
            if let Some(old) = self.store.get_flow(org, flow_id, Some(version)).await? {
                if old.definition == text {
                    return Ok(true);
                }
            }
        }
        Ok(false)
    }

    /// Publishes a new version and caches it.
    pub async fn publish(
        &self,
        org: &str,
        flow_id: &str,
        text: &str,
        compiled: CompiledFlow,
    ) -> Result<i64, StoreError> {
        let version = self.store.publish_flow(org, flow_id, text, self.clock.now()).await?;
        self.cache_latest(org, flow_id, version, compiled);
        Ok(version)
    }

    /// The latest version of a flow, compiled.
    pub async fn latest(&self, org: &str, flow_id: &str) -> Result<(i64, Arc<CompiledFlow>), FlowLookupError> {
        let key = (org.to_owned(), flow_id.to_owned());
        let now = self.clock.now();
        let ttl = i64::try_from(LATEST_TTL.as_millis()).unwrap_or(i64::MAX);
        let cached = self.latest.read().unwrap_or_else(|p| p.into_inner()).get(&key).copied();
        let version = match cached {
            Some((version, at)) if now.millis_since(at) < ttl => version,
            _ => {
                let stored = self
                    .store
                    .get_flow(org, flow_id, None)
                    .await?
                    .ok_or_else(|| FlowLookupError::NotFound(flow_id.to_owned()))?;
                if !self.is_cached(org, flow_id, stored.version) {
                    self.compile_stored(org, flow_id, stored.version, &stored.definition)?;
                }
                self.set_latest(org, flow_id, stored.version);
                stored.version
            }
        };
        Ok((version, self.get(org, flow_id, version).await?))
    }

    /// One version of a flow, compiled (read from the store on a cache miss).
    pub async fn get(&self, org: &str, flow_id: &str, version: i64) -> Result<Arc<CompiledFlow>, FlowLookupError> {
        let key = (org.to_owned(), flow_id.to_owned(), version);
        if let Some(f) = self.compiled.read().unwrap_or_else(|p| p.into_inner()).get(&key) {
            return Ok(f.clone());
        }
        let stored = self
            .store
            .get_flow(org, flow_id, Some(version))
            .await?
            .ok_or_else(|| FlowLookupError::NotFound(format!("{flow_id} v{version}")))?;
        self.compile_stored(org, flow_id, version, &stored.definition)
    }

    /// The flows a session on `flow` runs in when `flow` has `call_flow` nodes: `flow`
    /// itself and, transitively, the latest version of every flow it calls; `None` when it
    /// calls none. A called flow the store lacks, or that no longer compiles, is left out:
    /// the engine's typed error at the call names it.
    pub async fn call_set(&self, org: &str, flow: &CompiledFlow) -> Result<Option<FlowSet>, FlowLookupError> {
        if flow.called_flows().next().is_none() {
            return Ok(None);
        }
        let mut set = FlowSet::new();
        set.insert(flow.clone());
        let mut wanted: Vec<String> = flow.called_flows().map(str::to_owned).collect();
        while let Some(id) = wanted.pop() {
            if set.contains(&id) {
                continue;
            }
            match self.latest(org, &id).await {
                Ok((_, called)) => {
                    if called.id() != id {
                        tracing::warn!(org, flow = %id, declared = called.id(), "a called flow's JSON declares another id; calls name flows by that id");
                    }
                    wanted.extend(called.called_flows().filter(|c| !set.contains(c)).map(str::to_owned));
                    set.insert(CompiledFlow::clone(&called));
                }
                Err(FlowLookupError::Store(e)) => return Err(FlowLookupError::Store(e)),
                Err(e) => tracing::debug!(org, flow = %id, error = %e, "a called flow is not available"),
            }
        }
        Ok(Some(set))
    }

    /// Caches `compiled` as the latest version of its flow.
    fn cache_latest(&self, org: &str, flow_id: &str, version: i64, compiled: CompiledFlow) {
        self.insert(org, flow_id, version, Arc::new(compiled));
        self.set_latest(org, flow_id, version);
    }

    fn is_cached(&self, org: &str, flow_id: &str, version: i64) -> bool {
        let key = (org.to_owned(), flow_id.to_owned(), version);
        self.compiled.read().unwrap_or_else(|p| p.into_inner()).contains_key(&key)
    }

    fn compile_stored(
        &self,
        org: &str,
        flow_id: &str,
        version: i64,
        text: &str,
    ) -> Result<Arc<CompiledFlow>, FlowLookupError> {
        let compiled = compile(text).map_err(|p| FlowLookupError::Broken {
            flow: flow_id.to_owned(),
            version,
            problems: p.lines.join("; "),
        })?;
        let compiled = Arc::new(compiled);
        self.insert(org, flow_id, version, compiled.clone());
        Ok(compiled)
    }

    fn insert(&self, org: &str, flow_id: &str, version: i64, flow: Arc<CompiledFlow>) {
        self.compiled
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert((org.to_owned(), flow_id.to_owned(), version), flow);
    }

    fn set_latest(&self, org: &str, flow_id: &str, version: i64) {
        let now = self.clock.now();
        self.latest
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert((org.to_owned(), flow_id.to_owned()), (version, now));
    }
}
