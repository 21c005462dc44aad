//! Compiled flows by (organization, flow id, version), backed by the store's flow versions.
//!
//! Config flows are compiled at start (a broken one stops start-up) and published to the
//! store when their file changed; `POST /api/v1/flows` publishes new versions. A session
//! keeps the version it started on; new sessions take the latest, which this registry
//! re-reads from the store at most every [`LATEST_TTL`] so that instances sharing a
//! database pick up each other's publishes.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use flowcore::{CompiledFlow, Flow};
use flowcore_store::{Store, StoreError};
use serde_json::{json, Value};

use super::config::FlowSource;
use super::util;

/// How long the latest version number of a flow is trusted before re-reading it.
pub const LATEST_TTL: Duration = Duration::from_secs(2);

/// A flow that does not compile: one line per diagnostic, and JSON for the API.
#[derive(Debug, Clone)]
pub struct FlowProblems {
    /// Readable lines (`error[code] node "x": message`).
    pub lines: Vec<String>,
    /// The same as JSON objects (`severity`, `code`, `message`, `node`, `edge`).
    pub json: Vec<Value>,
}

/// Parses and compiles flow JSON.
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

/// Compiled flows, cached by version.
#[derive(Default)]
pub struct FlowRegistry {
    compiled: RwLock<HashMap<VersionKey, Arc<CompiledFlow>>>,
    latest: RwLock<HashMap<(String, String), (i64, Instant)>>,
}

/// Why a flow could not be had.
#[derive(Debug, thiserror::Error)]
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

impl FlowRegistry {
    /// Compiles every config flow, collecting every problem of every flow.
    pub fn compile_sources(sources: &[FlowSource]) -> Result<Vec<(FlowSource, CompiledFlow)>, Vec<String>> {
        let mut ok = Vec::new();
        let mut problems = Vec::new();
        for source in sources {
            match compile(&source.text) {
                Ok(flow) => ok.push((source.clone(), flow)),
                Err(p) => {
                    for line in p.lines {
                        problems.push(format!(
                            "flow `{}` of organization `{}` ({}): {line}",
                            source.id,
                            source.organization,
                            source.path.display()
                        ));
                    }
                }
            }
        }
        if problems.is_empty() {
            Ok(ok)
        } else {
            Err(problems)
        }
    }

    /// Publishes a config flow when the store does not have its text yet, and caches it.
    ///
    /// When the stored latest differs from the file but an older version equals it, the
    /// latest was published through the API after the file and stays the latest.
    pub async fn install(
        &self,
        store: &dyn Store,
        source: &FlowSource,
        compiled: CompiledFlow,
    ) -> Result<i64, StoreError> {
        let org = &source.organization;
        let latest = store.get_flow(org, &source.id, None).await?;
        let version = match latest {
            Some(l) if l.definition == source.text => l.version,
            Some(l) => {
                let mut known = None;
                let mut v = l.version - 1;
                while v >= 1 && l.version - v <= 50 {
                    if let Some(old) = store.get_flow(org, &source.id, Some(v)).await? {
                        if old.definition == source.text {
                            known = Some(v);
                            break;
                        }
                    }
                    v -= 1;
                }
                match known {
                    Some(_) => {
                        // Keep the API's newer version as latest; compile it so a broken one shows now.
                        self.get(store, org, &source.id, l.version).await.map_err(|e| match e {
                            FlowLookupError::Store(s) => s,
                            other => StoreError::InvalidInput(other.to_string()),
                        })?;
                        self.set_latest(org, &source.id, l.version);
                        return Ok(l.version);
                    }
                    None => store.publish_flow(org, &source.id, &source.text, util::now()).await?,
                }
            }
            None => store.publish_flow(org, &source.id, &source.text, util::now()).await?,
        };
        self.insert(org, &source.id, version, Arc::new(compiled));
        self.set_latest(org, &source.id, version);
        Ok(version)
    }

    /// Publishes a new version (from the API) and caches it.
    pub async fn publish(
        &self,
        store: &dyn Store,
        org: &str,
        flow_id: &str,
        text: &str,
        compiled: CompiledFlow,
    ) -> Result<i64, StoreError> {
        let version = store.publish_flow(org, flow_id, text, util::now()).await?;
        self.insert(org, flow_id, version, Arc::new(compiled));
        self.set_latest(org, flow_id, version);
        Ok(version)
    }

    /// The latest version of a flow, compiled.
    pub async fn latest(
        &self,
        store: &dyn Store,
        org: &str,
        flow_id: &str,
    ) -> Result<(i64, Arc<CompiledFlow>), FlowLookupError> {
        let key = (org.to_owned(), flow_id.to_owned());
        let cached = self.latest.read().unwrap_or_else(|p| p.into_inner()).get(&key).copied();
        let version = match cached {
            Some((v, at)) if at.elapsed() < LATEST_TTL => v,
            _ => {
                let stored = store
                    .get_flow(org, flow_id, None)
                    .await?
                    .ok_or_else(|| FlowLookupError::NotFound(flow_id.to_owned()))?;
                let v = stored.version;
                if !self.compiled.read().unwrap_or_else(|p| p.into_inner()).contains_key(&(
                    key.0.clone(),
                    key.1.clone(),
                    v,
                )) {
                    self.compile_stored(org, flow_id, v, &stored.definition)?;
                }
                self.set_latest(org, flow_id, v);
                v
            }
        };
        Ok((version, self.get(store, org, flow_id, version).await?))
    }

    /// One version of a flow, compiled (read from the store on a cache miss).
    pub async fn get(
        &self,
        store: &dyn Store,
        org: &str,
        flow_id: &str,
        version: i64,
    ) -> Result<Arc<CompiledFlow>, FlowLookupError> {
        let key = (org.to_owned(), flow_id.to_owned(), version);
        if let Some(f) = self.compiled.read().unwrap_or_else(|p| p.into_inner()).get(&key) {
            return Ok(f.clone());
        }
        let stored = store
            .get_flow(org, flow_id, Some(version))
            .await?
            .ok_or_else(|| FlowLookupError::NotFound(format!("{flow_id} v{version}")))?;
        self.compile_stored(org, flow_id, version, &stored.definition)
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
        self.latest
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert((org.to_owned(), flow_id.to_owned()), (version, Instant::now()));
    }
}
