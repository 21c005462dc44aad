//! The HTTP seam: [`Transport`] lets hosts bring their own HTTP stack.

use std::fmt;
use std::time::Duration;

/// An HTTP method.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Method {
    /// `GET`.
    Get,
    /// `POST`.
    Post,
}

impl Method {
    /// The method's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Post => "POST",
        }
    }
}

/// A request for a [`Transport`] to perform.
///
/// Its `Debug` output hides the `Authorization` header and the body (which holds phone
/// numbers and message text).
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct HttpRequest {
    /// The method.
    pub method: Method,
    /// The absolute URL.
    pub url: String,
    /// Headers, in order (names as written, e.g. `Authorization`, `Content-Type`).
    pub headers: Vec<(String, String)>,
    /// The body (empty for `GET`).
    pub body: Vec<u8>,
    /// How long the whole request may take.
    pub timeout: Option<Duration>,
}

impl HttpRequest {
    /// A request without headers or body.
    pub fn new(method: Method, url: impl Into<String>) -> Self {
        HttpRequest { method, url: url.into(), headers: Vec::new(), body: Vec::new(), timeout: None }
    }

    /// The first header with this name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

impl fmt::Debug for HttpRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let headers: Vec<(&str, &str)> = self
            .headers
            .iter()
            .map(|(n, v)| (n.as_str(), if n.eq_ignore_ascii_case("authorization") { "<redacted>" } else { v.as_str() }))
            .collect();
        f.debug_struct("HttpRequest")
            .field("method", &self.method)
            .field("url", &self.url)
            .field("headers", &headers)
            .field("body", &format_args!("<{} bytes>", self.body.len()))
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// What a [`Transport`] got back.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct HttpResponse {
    /// The status code.
    pub status: u16,
    /// Headers, in order.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// A response.
    pub fn new(status: u16, headers: Vec<(String, String)>, body: Vec<u8>) -> Self {
        HttpResponse { status, headers, body }
    }

    /// The first header with this name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

impl fmt::Debug for HttpResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpResponse")
            .field("status", &self.status)
            .field("headers", &self.headers)
            .field("body", &format_args!("<{} bytes>", self.body.len()))
            .finish()
    }
}

/// Why a request did not complete.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    /// No response in time. The request may have been processed.
    #[error("timed out")]
    Timeout,
    /// The connection could not be opened (DNS, refused, TLS handshake): nothing was sent.
    #[error("could not connect: {0}")]
    Connect(String),
    /// The exchange broke after the request may have been sent.
    #[error("i/o error: {0}")]
    Io(String),
}

impl TransportError {
    /// Whether the server may have received and processed the request.
    pub fn may_have_been_sent(&self) -> bool {
        !matches!(self, TransportError::Connect(_))
    }
}

/// Performs HTTP requests. Implement it over any HTTP client; the `reqwest` feature
/// provides [`ReqwestTransport`].
///
/// ```
/// use flowcore_meta::{HttpRequest, HttpResponse, Transport, TransportError};
///
/// /// A transport that answers every request with a canned success.
/// struct Canned;
///
/// #[async_trait::async_trait]
/// impl Transport for Canned {
///     async fn execute(&self, _request: HttpRequest) -> Result<HttpResponse, TransportError> {
///         Ok(HttpResponse::new(200, vec![], br#"{"messages":[{"id":"wamid.OUT"}]}"#.to_vec()))
///     }
/// }
/// ```
#[async_trait::async_trait]
pub trait Transport: Send + Sync {
    /// Performs one request. Non-success statuses are responses, not errors.
    async fn execute(&self, request: HttpRequest) -> Result<HttpResponse, TransportError>;
}

#[async_trait::async_trait]
impl<T: Transport + ?Sized> Transport for std::sync::Arc<T> {
    async fn execute(&self, request: HttpRequest) -> Result<HttpResponse, TransportError> {
        (**self).execute(request).await
    }
}

/// A [`Transport`] that sends nothing: it records every request and accepts each send with
/// a fresh message id (`wamid.recorded.1`, `.2`, …). Clones share the record, so a test
/// keeps one clone and hands the other to a client.
///
/// ```
/// use flowcore_meta::{HttpRequest, Method, RecordingTransport, Transport};
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// let transport = RecordingTransport::default();
/// let answer = transport.execute(HttpRequest::new(Method::Post, "https://example.invalid/106/messages")).await.unwrap();
/// assert_eq!(answer.status, 200);
/// assert_eq!(transport.requests().len(), 1);
/// # });
/// ```
#[derive(Clone, Debug, Default)]
pub struct RecordingTransport {
    requests: std::sync::Arc<std::sync::Mutex<Vec<HttpRequest>>>,
}

impl RecordingTransport {
    /// Every request so far, oldest first.
    pub fn requests(&self) -> Vec<HttpRequest> {
        self.requests.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

#[async_trait::async_trait]
impl Transport for RecordingTransport {
    async fn execute(&self, request: HttpRequest) -> Result<HttpResponse, TransportError> {
        let mut requests = self.requests.lock().unwrap_or_else(|p| p.into_inner());
        requests.push(request);
        let body = format!(r#"{{"messages":[{{"id":"wamid.recorded.{}"}}]}}"#, requests.len());
        Ok(HttpResponse::new(200, vec![("content-type".into(), "application/json".into())], body.into_bytes()))
    }
}

/// A [`Transport`] over reqwest (rustls). Feature `reqwest` (on by default).
#[cfg(feature = "reqwest")]
#[derive(Clone, Debug, Default)]
pub struct ReqwestTransport {
    client: reqwest::Client,
}

#[cfg(feature = "reqwest")]
impl ReqwestTransport {
    /// A transport with a default reqwest client.
    pub fn new() -> Self {
        Self::default()
    }

    /// A transport over a configured client (proxies, connection pools, …).
    pub fn with_client(client: reqwest::Client) -> Self {
        ReqwestTransport { client }
    }
}

#[cfg(feature = "reqwest")]
#[async_trait::async_trait]
impl Transport for ReqwestTransport {
    async fn execute(&self, request: HttpRequest) -> Result<HttpResponse, TransportError> {
        let method = match request.method {
            Method::Get => reqwest::Method::GET,
            Method::Post => reqwest::Method::POST,
        };
        let mut builder = self.client.request(method, &request.url);
        for (name, value) in &request.headers {
            builder = builder.header(name.as_str(), value.as_str());
        }
        if let Some(timeout) = request.timeout {
            builder = builder.timeout(timeout);
        }
        if !request.body.is_empty() {
            builder = builder.body(request.body);
        }
        let response = builder.send().await.map_err(map_reqwest_error)?;
        let status = response.status().as_u16();
        let headers = response
            .headers()
            .iter()
            .filter_map(|(n, v)| Some((n.as_str().to_owned(), v.to_str().ok()?.to_owned())))
            .collect();
        let body = response.bytes().await.map_err(map_reqwest_error)?.to_vec();
        Ok(HttpResponse { status, headers, body })
    }
}

#[cfg(feature = "reqwest")]
fn map_reqwest_error(error: reqwest::Error) -> TransportError {
    // Strip the URL: it can carry ids, and reqwest errors end up in logs.
    let error = error.without_url();
    if error.is_timeout() {
        TransportError::Timeout
    } else if error.is_connect() {
        TransportError::Connect(error.to_string())
    } else {
        TransportError::Io(error.to_string())
    }
}
