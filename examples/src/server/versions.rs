//! The flow versions API: list a flow's versions, read one, diff two, and roll back to an
//! older one — always within the organization whose bearer token the request carries
//! (another organization's flow is 404, as an unknown one is).
//!
//! Every publish (through `POST /api/v1/flows`, a changed config file at start, or a
//! rollback) adds a version; a rollback publishes the old version's exact text again as
//! the newest, so new conversations start on it at once while running ones keep theirs
//! (unless their flow sets `move_sessions_to_latest`, see [`super::config`]).

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use flowcore::{Flow, Severity};
use flowcore_store::runtime::compile;
use flowcore_store::StoredFlow;
use serde::Deserialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tracing::info;

use super::error::{rejection, ApiError};
use super::http::Org;
use super::state::AppState;
use super::util;

/// `GET /api/v1/flows/{id}/versions`: every version, newest first, with its publish time,
/// content hash and diagnostics counts.
pub async fn list_versions(
    State(state): State<AppState>,
    Org(org): Org,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<Value>, ApiError> {
    let Path(flow_id) = path.map_err(rejection)?;
    let versions = state.store.list_flow_versions(&org, &flow_id).await.map_err(ApiError::store)?;
    let Some(latest) = versions.first().map(|v| v.version) else {
        return Err(ApiError::NotFound("flow".to_owned()));
    };
    let items: Vec<Value> = versions.iter().map(version_summary).collect();
    Ok(Json(json!({"flow_id": flow_id, "latest": latest, "versions": items})))
}

/// `GET /api/v1/flows/{id}/versions/{n}`: the version's flow JSON, exactly as published.
pub async fn get_version(
    State(state): State<AppState>,
    Org(org): Org,
    path: Result<Path<(String, i64)>, PathRejection>,
) -> Result<Response, ApiError> {
    let Path((flow_id, version)) = path.map_err(rejection)?;
    let stored = stored_version(&state, &org, &flow_id, version).await?;
    Ok(([(header::CONTENT_TYPE, "application/json")], stored.definition).into_response())
}

/// The body of `POST /api/v1/flows/{id}/rollback`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RollbackBody {
    version: i64,
}

/// `POST /api/v1/flows/{id}/rollback {"version": n}`: publishes version `n`'s text again as
/// the newest version, which new conversations then start on.
pub async fn rollback(
    State(state): State<AppState>,
    Org(org): Org,
    path: Result<Path<String>, PathRejection>,
    body: Result<Json<RollbackBody>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Path(flow_id) = path.map_err(rejection)?;
    let Json(body) = body.map_err(rejection)?;
    let old = stored_version(&state, &org, &flow_id, body.version).await?;
    // A version published by an older release may no longer compile: refuse it, as a
    // publish of that text would be refused.
    let compiled = compile(&old.definition).map_err(|p| ApiError::InvalidFlow(p.json))?;
    let version =
        state.runtime.flows().publish(&org, &flow_id, &old.definition, compiled).await.map_err(ApiError::store)?;
    info!(org = %org, flow_id = %flow_id, from = old.version, version, "flow rolled back");
    let body = json!({
        "flow_id": flow_id,
        "version": version,
        "rolled_back_to": old.version,
        "content_hash": content_hash(&old.definition),
    });
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

/// `from` / `to` of `GET /api/v1/flows/{id}/diff`.
#[derive(Debug, Deserialize)]
pub struct DiffQuery {
    from: i64,
    to: i64,
}

/// `GET /api/v1/flows/{id}/diff?from=n&to=m`: the nodes and edges version `to` adds,
/// removes and changes against version `from` (see [`flowcore::FlowDiff`]: a node that
/// only moved on the builder's canvas is unchanged).
pub async fn diff(
    State(state): State<AppState>,
    Org(org): Org,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<DiffQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Path(flow_id) = path.map_err(rejection)?;
    let Query(query) = query.map_err(rejection)?;
    let from = parsed(&stored_version(&state, &org, &flow_id, query.from).await?)?;
    let to = parsed(&stored_version(&state, &org, &flow_id, query.to).await?)?;
    let diff = from.diff(&to);
    Ok(Json(json!({"flow_id": flow_id, "from": query.from, "to": query.to, "nodes": diff.nodes, "edges": diff.edges})))
}

/// The hex SHA-256 of a version's definition text, as stored: equal hashes, same text.
///
/// ```
/// use flowcore_examples::server::versions::content_hash;
/// assert_eq!(content_hash("{}"), "44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a");
/// ```
pub fn content_hash(text: &str) -> String {
    Sha256::digest(text.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

/// How many errors and warnings the engine reports for a definition (a text that is not
/// a flow at all counts as one error).
///
/// ```
/// use flowcore_examples::server::versions::diagnostics_counts;
/// assert_eq!(diagnostics_counts("not json"), (1, 0));
/// ```
pub fn diagnostics_counts(text: &str) -> (usize, usize) {
    let diagnostics = match Flow::from_json(text).map(|f| f.compile()) {
        Err(_) => return (1, 0),
        Ok(Ok(compiled)) => compiled.warnings().to_vec(),
        Ok(Err(e)) => e.diagnostics().to_vec(),
    };
    let errors = diagnostics.iter().filter(|d| d.severity == Severity::Error).count();
    (errors, diagnostics.len() - errors)
}

fn version_summary(v: &StoredFlow) -> Value {
    let (errors, warnings) = diagnostics_counts(&v.definition);
    json!({
        "version": v.version,
        "published_at": util::rfc3339(v.published_at),
        "content_hash": content_hash(&v.definition),
        "diagnostics": {"errors": errors, "warnings": warnings},
    })
}

/// One stored version of the caller's flow; an unknown flow and an unknown version are
/// both 404, each named.
async fn stored_version(state: &AppState, org: &str, flow_id: &str, version: i64) -> Result<StoredFlow, ApiError> {
    if let Some(stored) = state.store.get_flow(org, flow_id, Some(version)).await.map_err(ApiError::store)? {
        return Ok(stored);
    }
    let flow_exists = state.store.get_flow(org, flow_id, None).await.map_err(ApiError::store)?.is_some();
    Err(ApiError::NotFound(if flow_exists { format!("version {version}") } else { "flow".to_owned() }))
}

/// A stored version as a flow; one that no longer parses is reported like a publish of it.
fn parsed(stored: &StoredFlow) -> Result<Flow, ApiError> {
    Flow::from_json(&stored.definition).map_err(|e| {
        ApiError::InvalidFlow(vec![json!({"severity": "error", "code": "invalid-json", "message": e.to_string(),
                                          "node": null, "edge": null})])
    })
}
