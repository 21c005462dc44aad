//! The admin API's error body: `{"error":{"code","message"}}` with a matching status.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

/// An API error; each variant knows its HTTP status and its stable `code`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApiError {
    /// No or a wrong bearer token.
    #[error("missing or invalid bearer token")]
    Unauthorized,
    /// Nothing with that id in this organization.
    #[error("{0} not found")]
    NotFound(String),
    /// The request is malformed.
    #[error("{0}")]
    BadRequest(String),
    /// A flow did not compile; the diagnostics are returned as `error.diagnostics`.
    #[error("flow has {} error(s)", .0.len())]
    InvalidFlow(Vec<serde_json::Value>),
    /// The body is larger than allowed.
    #[error("request body is larger than {0} bytes")]
    PayloadTooLarge(usize),
    /// The webhook signature did not verify.
    #[error("invalid webhook signature: {0}")]
    BadSignature(String),
    /// The conversation is in a state that does not allow this (e.g. nothing to close).
    #[error("{0}")]
    Conflict(String),
    /// The store is unavailable or failed; details go to the log, not the client.
    #[error("storage is unavailable")]
    Unavailable,
    /// A bug or unexpected failure; details go to the log.
    #[error("internal error")]
    Internal,
}

impl ApiError {
    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Unauthorized | ApiError::BadSignature(_) => StatusCode::UNAUTHORIZED,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::InvalidFlow(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::Unauthorized => "unauthorized",
            ApiError::NotFound(_) => "not_found",
            ApiError::BadRequest(_) => "bad_request",
            ApiError::InvalidFlow(_) => "invalid_flow",
            ApiError::PayloadTooLarge(_) => "payload_too_large",
            ApiError::BadSignature(_) => "invalid_signature",
            ApiError::Conflict(_) => "conflict",
            ApiError::Unavailable => "unavailable",
            ApiError::Internal => "internal",
        }
    }

    /// Logs a store failure and returns the client-facing error.
    pub fn store(err: impl std::fmt::Display) -> ApiError {
        tracing::error!(error = %err, "store operation failed");
        ApiError::Unavailable
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = json!({ "error": { "code": self.code(), "message": self.to_string() } });
        if let ApiError::InvalidFlow(diagnostics) = &self {
            body["error"]["diagnostics"] = serde_json::Value::Array(diagnostics.clone());
        }
        (self.status(), Json(body)).into_response()
    }
}

/// Turns axum's own rejections (bad JSON, bad query) into the same error shape.
pub fn rejection(rejection: impl std::fmt::Display) -> ApiError {
    ApiError::BadRequest(rejection.to_string())
}
