//! Compiled flows by (organization, flow id, version), backed by the store's flow versions.
//!
//! A session keeps the version it started on (unless
//! [`RuntimeOptions::move_to_latest`](super::RuntimeOptions::move_to_latest) moves it);
//! new sessions take the latest, which is re-read from the store at most every
//! [`LATEST_TTL`] so that instances sharing a database pick up each other's publishes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use flowcore::{CompiledFlow, Flow, FlowSet, Timestamp};
use serde_json::{json, Value};

use super::host::Clock;
use super::later;
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

/// Compiled flows, cached by version, read from the store on a miss.
pub struct Flows {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    cache: Mutex<Cache>,
}

#[derive(Default)]
struct Cache {
    compiled: HashMap<(String, String, i64), Arc<CompiledFlow>>,
    /// The latest version of each flow, and when it was read.
    latest: HashMap<(String, String), (i64, Timestamp)>,
}

impl Flows {
    pub(crate) fn new(store: Arc<dyn Store>, clock: Arc<dyn Clock>) -> Flows {
        Flows { store, clock, cache: Mutex::default() }
    }

    /// Publishes a flow when the store does not have this text of it yet, and caches it;
    /// the version that now runs.
    ///
    /// When the stored latest differs from `text` but an older version equals it, the latest
    /// was published (through an API, say) after the text was written, and stays the latest.
    pub async fn install(
        &self,
        org: &str,
        flow_id: &str,
        text: &str,
        compiled: CompiledFlow,
    ) -> Result<i64, StoreError> {
        let versions = self.store.list_flow_versions(org, flow_id).await?;
        match versions.split_first() {
            Some((latest, _)) if latest.definition == text => {
                self.cache(org, flow_id, latest.version, Arc::new(compiled), true);
                Ok(latest.version)
            }
            Some((latest, older)) if older.iter().any(|old| old.definition == text) => {
                // Compile the newer latest now, so a broken one shows at once.
                let flow = self.compiled(org, flow_id, latest.version, &latest.definition).map_err(|e| match e {
                    FlowLookupError::Store(s) => s,
                    other => StoreError::InvalidInput(other.to_string()),
                })?;
                self.cache(org, flow_id, latest.version, flow, true);
                Ok(latest.version)
            }
            _ => self.publish(org, flow_id, text, compiled).await,
        }
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
        self.cache(org, flow_id, version, Arc::new(compiled), true);
        Ok(version)
    }

    /// The latest version of a flow, compiled.
    pub async fn latest(&self, org: &str, flow_id: &str) -> Result<(i64, Arc<CompiledFlow>), FlowLookupError> {
        let now = self.clock.now();
        let cached = self.lock().latest.get(&(org.to_owned(), flow_id.to_owned())).copied();
        if let Some((version, _)) = cached.filter(|(_, at)| later(*at, LATEST_TTL) > now) {
            return Ok((version, self.get(org, flow_id, version).await?));
        }
        let stored = self.store.get_flow(org, flow_id, None).await?;
        let stored = stored.ok_or_else(|| FlowLookupError::NotFound(flow_id.to_owned()))?;
        let flow = self.compiled(org, flow_id, stored.version, &stored.definition)?;
        self.lock().latest.insert((org.to_owned(), flow_id.to_owned()), (stored.version, now));
        Ok((stored.version, flow))
    }

    /// One version of a flow, compiled (read from the store on a cache miss).
    pub async fn get(&self, org: &str, flow_id: &str, version: i64) -> Result<Arc<CompiledFlow>, FlowLookupError> {
        if let Some(flow) = self.lock().compiled.get(&(org.to_owned(), flow_id.to_owned(), version)) {
            return Ok(flow.clone());
        }
        let stored = self.store.get_flow(org, flow_id, Some(version)).await?;
        let stored = stored.ok_or_else(|| FlowLookupError::NotFound(format!("{flow_id} v{version}")))?;
        self.compiled(org, flow_id, version, &stored.definition)
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

    /// The cached compilation of a stored version, else `text` compiled and cached.
    fn compiled(
        &self,
        org: &str,
        flow_id: &str,
        version: i64,
        text: &str,
    ) -> Result<Arc<CompiledFlow>, FlowLookupError> {
        if let Some(flow) = self.lock().compiled.get(&(org.to_owned(), flow_id.to_owned(), version)) {
            return Ok(flow.clone());
        }
        let problems = |p: FlowProblems| FlowLookupError::Broken {
            flow: flow_id.to_owned(),
            version,
            problems: p.lines.join("; "),
        };
        let flow = Arc::new(compile(text).map_err(problems)?);
        self.cache(org, flow_id, version, flow.clone(), false);
        Ok(flow)
    }

    /// Caches `flow` as `version`, and as the flow's latest when `latest`.
    fn cache(&self, org: &str, flow_id: &str, version: i64, flow: Arc<CompiledFlow>, latest: bool) {
        let now = self.clock.now();
        let mut cache = self.lock();
        cache.compiled.insert((org.to_owned(), flow_id.to_owned(), version), flow);
        if latest {
            cache.latest.insert((org.to_owned(), flow_id.to_owned()), (version, now));
        }
    }

    fn lock(&self) -> MutexGuard<'_, Cache> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }
}
