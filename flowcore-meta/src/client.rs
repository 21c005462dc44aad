//! [`MetaClient`]: sends messages, marks them read, uploads and downloads media.

use std::fmt;
use std::time::{Duration, SystemTime};

use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::error::{ApiError, GraphError};
use crate::outgoing::{MarkRead, OutgoingMessage};
use crate::retry::{parse_retry_after, response_date, RetryAdvice, RetryPolicy, Sleeper};
use crate::transport::{HttpRequest, HttpResponse, Method, Transport};

/// Meta's Graph API host.
pub const DEFAULT_BASE_URL: &str = "https://graph.facebook.com";
/// The Graph API version used unless configured.
pub const DEFAULT_API_VERSION: &str = "v21.0";

/// Host suffixes Meta serves media from; the access token is sent only to these (and to
/// the configured base URL's host).
const META_HOST_SUFFIXES: &[&str] = &["facebook.com", "fbsbx.com", "whatsapp.net", "fbcdn.net"];

/// A client for the WhatsApp Cloud API over any [`Transport`].
///
/// Sans policy: [`MetaClient::send`] makes one attempt and returns a typed
/// [`ApiError`]; [`MetaClient::send_with_retry`] applies a [`RetryPolicy`] with an
/// injected [`Sleeper`]. The access token never appears in `Debug` output.
///
/// ```no_run
/// # #[cfg(feature = "reqwest")]
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use flowcore_meta::outgoing::{OutgoingMessage, Recipient, Text};
/// use flowcore_meta::{MetaClient, ReqwestTransport};
///
/// let client = MetaClient::new(ReqwestTransport::new(), "EAAG…token").with_api_version("v21.0");
/// let message = OutgoingMessage::new(Recipient::phone("+1 202 555 0101")?, Text::new("Olá!")?);
/// let receipt = client.send("106000000000001", &message).await?;
/// println!("sent {}", receipt.wamid);
/// # Ok(()) }
/// ```
pub struct MetaClient<T> {
    transport: T,
    access_token: String,
    base_url: String,
    api_version: String,
    timeout: Duration,
}

impl<T> fmt::Debug for MetaClient<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MetaClient")
            .field("access_token", &"<redacted>")
            .field("base_url", &self.base_url)
            .field("api_version", &self.api_version)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// Meta's answer to an accepted send.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct SendReceipt {
    /// The id of the message we sent (`wamid.…`); statuses refer to it.
    pub wamid: String,
    /// `accepted`, `held_for_quality_assessment`, … when Meta says.
    pub message_status: Option<String>,
}

/// A send that failed for good (or needs a decision), with what to do next.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{error} (after {attempts} attempt(s))")]
#[non_exhaustive]
pub struct SendFailure {
    /// The last error.
    pub error: ApiError,
    /// Attempts made.
    pub attempts: u32,
    /// The policy's advice for the last error; [`RetryAdvice::RetryAfter`] when the
    /// attempts ran out on a retryable error (the outbox can reschedule).
    pub advice: RetryAdvice,
}

/// A media item's metadata, from [`MetaClient::media_info`].
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[non_exhaustive]
pub struct MediaInfo {
    /// The media id.
    pub id: String,
    /// The download URL (valid 5 minutes); pass it to [`MetaClient::download_media`].
    pub url: String,
    /// The MIME type.
    #[serde(default)]
    pub mime_type: Option<String>,
    /// Base64 SHA-256 of the file.
    #[serde(default)]
    pub sha256: Option<String>,
    /// Size in bytes.
    #[serde(default)]
    pub file_size: Option<u64>,
}

#[derive(Deserialize)]
struct WireSend {
    #[serde(default)]
    messages: Vec<WireSent>,
}

#[derive(Deserialize)]
struct WireSent {
    id: String,
    #[serde(default)]
    message_status: Option<String>,
}

#[derive(Deserialize)]
struct WireUpload {
    id: String,
}

impl<T: Transport> MetaClient<T> {
    /// A client with the default base URL and API version, and a 30 s timeout.
    pub fn new(transport: T, access_token: impl Into<String>) -> Self {
        MetaClient {
            transport,
            access_token: access_token.into(),
            base_url: DEFAULT_BASE_URL.to_owned(),
            api_version: DEFAULT_API_VERSION.to_owned(),
            timeout: Duration::from_secs(30),
        }
    }

    /// Sets the base URL (`META_GRAPH_API_BASE`), e.g. a fake Graph server in tests.
    pub fn with_base_url(mut self, base_url: impl Into<String>) -> Self {
        self.base_url = base_url.into().trim_end_matches('/').to_owned();
        self
    }

    /// Sets the API version path segment (`v21.0`); empty when the base URL already
    /// contains it.
    pub fn with_api_version(mut self, version: impl Into<String>) -> Self {
        self.api_version = version.into().trim_matches('/').to_owned();
        self
    }

    /// Sets the per-request timeout.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The transport.
    pub fn transport(&self) -> &T {
        &self.transport
    }

    fn url(&self, path: &str) -> String {
        if self.api_version.is_empty() {
            format!("{}/{path}", self.base_url)
        } else {
            format!("{}/{}/{path}", self.base_url, self.api_version)
        }
    }

    fn request(&self, method: Method, url: String) -> HttpRequest {
        let mut request = HttpRequest::new(method, url);
        request.headers.push(("Authorization".into(), format!("Bearer {}", self.access_token)));
        request.timeout = Some(self.timeout);
        request
    }

    fn json_request(&self, url: String, body: &serde_json::Value) -> HttpRequest {
        let mut request = self.request(Method::Post, url);
        request.headers.push(("Content-Type".into(), "application/json".into()));
        request.body = body.to_string().into_bytes();
        request
    }

    async fn execute(&self, request: HttpRequest) -> Result<HttpResponse, ApiError> {
        let response = self.transport.execute(request).await?;
        if (200..300).contains(&response.status) {
            return Ok(response);
        }
        let retry_after = response.header("retry-after").and_then(|value| {
            let now = response.header("date").and_then(response_date).unwrap_or_else(SystemTime::now);
            parse_retry_after(value, now)
        });
        Err(match GraphError::from_body(&response.body) {
            Some(error) => ApiError::Graph { status: response.status, error: Box::new(error), retry_after },
            None => ApiError::Http {
                status: response.status,
                retry_after,
                body_start: String::from_utf8_lossy(&response.body).chars().take(256).collect(),
            },
        })
    }

    /// Sends one message from the business number `phone_number_id`; one attempt.
    pub async fn send(&self, phone_number_id: &str, message: &OutgoingMessage) -> Result<SendReceipt, ApiError> {
        check_numeric_id("phone_number_id", phone_number_id)?;
        let request = self.json_request(self.url(&format!("{phone_number_id}/messages")), &message.to_json());
        let response = self.execute(request).await?;
        let unexpected = |reason: String| ApiError::UnexpectedResponse { status: response.status, reason };
        let wire: WireSend = serde_json::from_slice(&response.body).map_err(|e| unexpected(e.to_string()))?;
        let sent =
            wire.messages.into_iter().next().ok_or_else(|| unexpected("no message id in the response".into()))?;
        Ok(SendReceipt { wamid: sent.id, message_status: sent.message_status })
    }

    /// Sends with retries: resends only when the policy says it is safe, sleeping with
    /// `sleeper` in between, for at most `policy.max_attempts` attempts. Errors that may
    /// have sent the message come back at once with [`RetryAdvice::Reconcile`].
    pub async fn send_with_retry(
        &self,
        phone_number_id: &str,
        message: &OutgoingMessage,
        policy: &RetryPolicy,
        sleeper: &dyn Sleeper,
    ) -> Result<SendReceipt, SendFailure> {
        let mut attempt = 0u32;
        loop {
            let error = match self.send(phone_number_id, message).await {
                Ok(receipt) => return Ok(receipt),
                Err(error) => error,
            };
            let advice = policy.advise(&error, attempt, false);
            attempt += 1;
            match advice {
                RetryAdvice::RetryAfter { after, .. } if attempt < policy.max_attempts.max(1) => {
                    sleeper.sleep(after).await;
                }
                advice => return Err(SendFailure { error, attempts: attempt, advice }),
            }
        }
    }

    /// Marks a received message (and earlier ones) read, optionally with a typing indicator.
    pub async fn mark_read(&self, phone_number_id: &str, mark: &MarkRead) -> Result<(), ApiError> {
        check_numeric_id("phone_number_id", phone_number_id)?;
        let request = self.json_request(self.url(&format!("{phone_number_id}/messages")), &mark.to_json());
        self.execute(request).await.map(|_| ())
    }

    /// Uploads media (multipart) for the business number; returns the media id (valid 30 days).
    pub async fn upload_media(
        &self,
        phone_number_id: &str,
        data: &[u8],
        mime_type: &str,
        filename: &str,
    ) -> Result<String, ApiError> {
        check_numeric_id("phone_number_id", phone_number_id)?;
        if mime_type.is_empty() || !mime_type.bytes().all(|b| b.is_ascii_graphic() || b == b' ') {
            return Err(ApiError::InvalidArgument { field: "mime_type", reason: "must be a printable MIME type" });
        }
        let (boundary, body) = multipart(data, mime_type, filename);
        let mut request = self.request(Method::Post, self.url(&format!("{phone_number_id}/media")));
        request.headers.push(("Content-Type".into(), format!("multipart/form-data; boundary={boundary}")));
        request.body = body;
        let response = self.execute(request).await?;
        let wire: WireUpload = serde_json::from_slice(&response.body)
            .map_err(|e| ApiError::UnexpectedResponse { status: response.status, reason: e.to_string() })?;
        Ok(wire.id)
    }

    /// Looks up a media id (from a webhook or an upload): its short-lived URL and type.
    pub async fn media_info(&self, media_id: &str) -> Result<MediaInfo, ApiError> {
        if media_id.is_empty() || !media_id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') {
            return Err(ApiError::InvalidArgument { field: "media_id", reason: "letters, digits, '_' and '-' only" });
        }
        let response = self.execute(self.request(Method::Get, self.url(media_id))).await?;
        serde_json::from_slice(&response.body)
            .map_err(|e| ApiError::UnexpectedResponse { status: response.status, reason: e.to_string() })
    }

    /// Downloads media from a URL returned by [`MetaClient::media_info`].
    ///
    /// The access token is attached only when the URL's host is one of Meta's (or the
    /// configured base URL's host); any other URL is refused with
    /// [`ApiError::UntrustedHost`] and nothing is requested.
    pub async fn download_media(&self, url: &str) -> Result<Vec<u8>, ApiError> {
        let target = split_url(url).ok_or(ApiError::InvalidArgument { field: "url", reason: "not an absolute URL" })?;
        let base = split_url(&self.base_url);
        let same_as_base = base.as_ref().is_some_and(|b| b.host == target.host && b.scheme == target.scheme);
        let meta_host = target.scheme == "https"
            && META_HOST_SUFFIXES.iter().any(|s| target.host == *s || target.host.ends_with(&format!(".{s}")));
        if !(same_as_base || meta_host) {
            return Err(ApiError::UntrustedHost { host: target.host });
        }
        Ok(self.execute(self.request(Method::Get, url.to_owned())).await?.body)
    }
}

fn check_numeric_id(field: &'static str, id: &str) -> Result<(), ApiError> {
    if id.is_empty() || id.len() > 32 || !id.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ApiError::InvalidArgument { field, reason: "must be Meta's numeric id" });
    }
    Ok(())
}

struct UrlParts {
    scheme: String,
    host: String,
}

/// Scheme and lowercase host of an absolute URL; `None` for anything odd (userinfo,
/// backslashes, no host), which download then refuses.
fn split_url(url: &str) -> Option<UrlParts> {
    let (scheme, rest) = url.split_once("://")?;
    let scheme = scheme.to_ascii_lowercase();
    if scheme != "https" && scheme != "http" {
        return None;
    }
    let authority = rest.split(['/', '?', '#']).next()?;
    if authority.contains(['@', '\\']) || authority.is_empty() {
        return None;
    }
    let host = if authority.starts_with('[') {
        authority.split(']').next()?.to_owned() + "]"
    } else {
        authority.split(':').next()?.to_owned()
    };
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    (!host.is_empty()).then_some(UrlParts { scheme, host })
}

/// Encodes the upload form: `messaging_product`, `type` and `file`.
fn multipart(data: &[u8], mime_type: &str, filename: &str) -> (String, Vec<u8>) {
    let digest = hex::encode(&Sha256::digest(data)[..12]);
    let boundary = format!("flowcore-{digest}");
    let filename: String = filename.chars().filter(|c| !matches!(c, '"' | '\r' | '\n' | '\\')).collect();
    let mut body = Vec::with_capacity(data.len() + 512);
    let mut field = |name: &str, value: &str| {
        body.extend_from_slice(
            format!("--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n").as_bytes(),
        );
    };
    field("messaging_product", "whatsapp");
    field("type", mime_type);
    body.extend_from_slice(
        format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{filename}\"\r\nContent-Type: {mime_type}\r\n\r\n"
        )
        .as_bytes(),
    );
    body.extend_from_slice(data);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    (boundary, body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_split_safely() {
        let host = |u: &str| split_url(u).map(|p| p.host);
        assert_eq!(host("https://lookaside.fbsbx.com/whatsapp?mid=1").as_deref(), Some("lookaside.fbsbx.com"));
        assert_eq!(host("https://Graph.Facebook.com:443/v21.0").as_deref(), Some("graph.facebook.com"));
        assert_eq!(host("https://graph.facebook.com@evil.test/"), None);
        assert_eq!(host("https://evil.test\\@graph.facebook.com/"), None);
        assert_eq!(host("ftp://graph.facebook.com/"), None);
        assert_eq!(host("graph.facebook.com/x"), None);
    }

    #[test]
    fn multipart_has_the_three_fields() {
        let (boundary, body) = multipart(b"PNGDATA", "image/png", "a\"b.png");
        let text = String::from_utf8(body).unwrap();
        assert!(text.starts_with(&format!("--{boundary}\r\n")));
        assert!(text.contains("name=\"messaging_product\"\r\n\r\nwhatsapp\r\n"));
        assert!(text.contains("name=\"type\"\r\n\r\nimage/png\r\n"));
        assert!(text.contains("name=\"file\"; filename=\"ab.png\"\r\nContent-Type: image/png\r\n\r\nPNGDATA\r\n"));
        assert!(text.ends_with(&format!("--{boundary}--\r\n")));
    }
}
