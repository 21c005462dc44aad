//! The HTTP surface: [`app`] builds the axum router (tests call it without a socket).

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, FromRequestParts, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Json;
use flowcore_meta::{verify_signature, verify_subscription, SubscriptionQuery, SIGNATURE_HEADER};
use serde_json::json;
use tracing::{error, warn};

use super::admin;
use super::error::ApiError;
use super::openapi;
use super::state::AppState;
use super::versions;

/// Every route the app serves, as (method, path) in OpenAPI's spelling. The OpenAPI
/// document is checked against this list, and this list against the router, by tests.
pub const ROUTES: &[(&str, &str)] = &[
    ("get", "/healthz"),
    ("get", "/readyz"),
    ("get", "/api/v1/openapi.json"),
    ("get", "/api/v1/whatsapp/webhook"),
    ("post", "/api/v1/whatsapp/webhook"),
    ("get", "/api/v1/conversations"),
    ("get", "/api/v1/conversations/{phone}"),
    ("post", "/api/v1/conversations/{phone}/send"),
    ("post", "/api/v1/conversations/{phone}/close"),
    ("get", "/api/v1/conversations/{phone}/export"),
    ("get", "/api/v1/analytics/conversations"),
    ("get", "/api/v1/analytics/metrics"),
    ("post", "/api/v1/flows"),
    ("get", "/api/v1/flows/{id}/versions"),
    ("get", "/api/v1/flows/{id}/versions/{n}"),
    ("post", "/api/v1/flows/{id}/rollback"),
    ("get", "/api/v1/flows/{id}/diff"),
];

/// The application router.
pub fn app(state: AppState) -> axum::Router {
    let max_body = state.webhook.max_body_bytes;
    axum::Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/api/v1/openapi.json", get(openapi_json))
        .route(
            "/api/v1/whatsapp/webhook",
            get(verify_webhook).post(receive_webhook).layer(DefaultBodyLimit::max(max_body)),
        )
        .route("/api/v1/conversations", get(admin::list_conversations))
        .route("/api/v1/conversations/{phone}", get(admin::get_conversation))
        .route("/api/v1/conversations/{phone}/send", post(admin::send_message))
        .route("/api/v1/conversations/{phone}/close", post(admin::close_conversation))
        .route("/api/v1/conversations/{phone}/export", get(admin::export_conversation))
        .route("/api/v1/analytics/conversations", get(admin::analytics_conversations))
        .route("/api/v1/analytics/metrics", get(admin::analytics_metrics))
        .route("/api/v1/flows", post(admin::publish_flow))
        .route("/api/v1/flows/{id}/versions", get(versions::list_versions))
        .route("/api/v1/flows/{id}/versions/{n}", get(versions::get_version))
        .route("/api/v1/flows/{id}/rollback", post(versions::rollback))
        .route("/api/v1/flows/{id}/diff", get(versions::diff))
        .fallback(|| async { ApiError::NotFound("route".to_owned()) })
        .method_not_allowed_fallback(|| async {
            let body = json!({"error": {"code": "method_not_allowed", "message": "method not allowed"}});
            (StatusCode::METHOD_NOT_ALLOWED, Json(body))
        })
        .with_state(state)
}

/// The organization a request's bearer token belongs to.
#[derive(Clone, Debug)]
pub struct Org(pub String);

impl FromRequestParts<AppState> for Org {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let header = parts.headers.get(axum::http::header::AUTHORIZATION).and_then(|v| v.to_str().ok());
        let token = header
            .and_then(|h| h.strip_prefix("Bearer ").or_else(|| h.strip_prefix("bearer ")))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or(ApiError::Unauthorized)?;
        state.tenants.organization_for_token(token).map(|o| Org(o.to_owned())).ok_or(ApiError::Unauthorized)
    }
}

async fn healthz() -> impl IntoResponse {
    Json(json!({"status": "ok"}))
}

async fn readyz(State(state): State<AppState>) -> Response {
    match state.store.ping().await {
        Ok(_) => Json(json!({"status": "ready", "store": state.store.backend()})).into_response(),
        Err(e) => {
            error!(error = %e, "readiness check: store unreachable");
            let body = json!({"error": {"code": "unavailable", "message": "store unreachable"}});
            (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
        }
    }
}

async fn openapi_json() -> impl IntoResponse {
    Json(openapi::document())
}

async fn verify_webhook(State(state): State<AppState>, Query(query): Query<HashMap<String, String>>) -> Response {
    let query = SubscriptionQuery::from_pairs(query);
    match verify_subscription(&query, &state.webhook.verify_token) {
        Ok(challenge) => {
            (StatusCode::OK, [("content-type", "text/plain; charset=utf-8")], challenge.to_owned()).into_response()
        }
        Err(e) => {
            warn!(error = %e, "webhook verification refused");
            let status = StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::FORBIDDEN);
            let code = if status == StatusCode::BAD_REQUEST { "bad_request" } else { "forbidden" };
            (status, Json(json!({"error": {"code": code, "message": e.to_string()}}))).into_response()
        }
    }
}

async fn receive_webhook(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = match body {
        Ok(b) => b,
        Err(BytesRejection::FailedToBufferBody(e)) if is_length_limit(&e) => {
            warn!(limit = state.webhook.max_body_bytes, "webhook body too large; refused");
            return Err(ApiError::PayloadTooLarge(state.webhook.max_body_bytes));
        }
        Err(e) => return Err(ApiError::BadRequest(e.body_text())),
    };
    if state.webhook.insecure_skip_signature {
        warn!("FLOWCORE_INSECURE_SKIP_SIGNATURE=1: webhook accepted WITHOUT signature verification");
    } else {
        let header = headers.get(SIGNATURE_HEADER).and_then(|v| v.to_str().ok());
        if let Err(e) = verify_signature(&body, header, &state.webhook.app_secrets) {
            warn!(error = %e, "webhook signature refused");
            return Err(ApiError::BadSignature(e.to_string()));
        }
    }
    state.webhooks.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let router = &state.tenants.router;
    let report = flowcore_meta::runtime::accept_webhook(&state.runtime, &body, |number| {
        router.organization_of(number).map(str::to_owned)
    })
    .await
    .map_err(ApiError::store)?;
    Ok(Json(json!({
        "status": "ok",
        "inserted": report.inserted,
        "duplicates": report.duplicates,
        "statuses": report.statuses,
        "ignored": report.ignored,
    }))
    .into_response())
}

fn is_length_limit(e: &axum::extract::rejection::FailedToBufferBody) -> bool {
    matches!(e, axum::extract::rejection::FailedToBufferBody::LengthLimitError(_))
}
