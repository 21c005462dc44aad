//! Meta's error object, the code → class table, and the client's error type.

use std::time::Duration;

use serde::Deserialize;

use crate::transport::TransportError;

/// Meta's Graph API error object (`{"error": {…}}` in an API response).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct GraphError {
    /// The error code: branch on this (see [`classify`]).
    pub code: i64,
    /// The deprecated subcode.
    pub error_subcode: Option<i64>,
    /// Graph's `type` (`OAuthException`, …).
    pub kind: Option<String>,
    /// The message.
    pub message: Option<String>,
    /// `error_data.details` (or `error_data` itself when it is a bare string): the most
    /// useful text for an operator.
    pub details: Option<String>,
    /// A title meant for end users.
    pub error_user_title: Option<String>,
    /// A message meant for end users.
    pub error_user_msg: Option<String>,
    /// Graph's hint that retrying may work.
    pub is_transient: Option<bool>,
    /// Meta's trace id, for support requests.
    pub fbtrace_id: Option<String>,
}

#[derive(Deserialize)]
struct Envelope {
    error: WireGraphError,
}

#[derive(Deserialize)]
struct WireGraphError {
    #[serde(deserialize_with = "crate::error::code")]
    code: i64,
    #[serde(default, deserialize_with = "crate::error::opt_code")]
    error_subcode: Option<i64>,
    #[serde(default, rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    error_data: Option<serde_json::Value>,
    #[serde(default)]
    error_user_title: Option<String>,
    #[serde(default)]
    error_user_msg: Option<String>,
    #[serde(default)]
    is_transient: Option<bool>,
    #[serde(default)]
    fbtrace_id: Option<String>,
}

fn code<'de, D: serde::Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    match serde_json::Value::deserialize(d)? {
        serde_json::Value::Number(n) => n.as_i64().ok_or_else(|| serde::de::Error::custom("code out of range")),
        serde_json::Value::String(s) => s.trim().parse().map_err(serde::de::Error::custom),
        _ => Err(serde::de::Error::custom("code is not an integer")),
    }
}

fn opt_code<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    Ok(match Option::<serde_json::Value>::deserialize(d)? {
        Some(serde_json::Value::Number(n)) => n.as_i64(),
        Some(serde_json::Value::String(s)) => s.trim().parse().ok(),
        _ => None,
    })
}

impl GraphError {
    /// Reads `{"error": {…}}` from a response body; `None` when the body is not a Graph
    /// error (an HTML page, empty, other JSON).
    ///
    /// ```
    /// let body = br#"{"error":{"message":"(#131056) Pair rate limit hit","type":"OAuthException","code":131056,
    ///   "error_data":{"messaging_product":"whatsapp","details":"Too many messages"},"fbtrace_id":"Az"}}"#;
    /// let e = flowcore_meta::GraphError::from_body(body).unwrap();
    /// assert_eq!((e.code, e.details.as_deref()), (131056, Some("Too many messages")));
    /// ```
    pub fn from_body(body: &[u8]) -> Option<GraphError> {
        let wire = serde_json::from_slice::<Envelope>(body).ok()?.error;
        let details = match wire.error_data {
            Some(serde_json::Value::String(s)) => Some(s),
            Some(serde_json::Value::Object(map)) => map.get("details").and_then(|d| d.as_str()).map(str::to_owned),
            _ => None,
        };
        Some(GraphError {
            code: wire.code,
            error_subcode: wire.error_subcode,
            kind: wire.kind,
            message: wire.message,
            details,
            error_user_title: wire.error_user_title,
            error_user_msg: wire.error_user_msg,
            is_transient: wire.is_transient,
            fbtrace_id: wire.fbtrace_id,
        })
    }

    /// The error's class (by code; an unknown code with `is_transient: true` counts as
    /// [`ErrorClass::Transient`]).
    pub fn class(&self) -> ErrorClass {
        match classify(self.code) {
            ErrorClass::Unknown if self.is_transient == Some(true) => ErrorClass::Transient,
            class => class,
        }
    }
}

/// What kind of failure an error is, and so how to treat it. See [`classify`] and
/// [`crate::RetryPolicy::advise`] for each class's rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorClass {
    /// Refused before processing because a budget was hit (4, 80007, 130429, HTTP 429):
    /// resending after a backoff is safe.
    RateLimited,
    /// Too many messages to one user (131056): delay only that recipient, 1, 4, 16, 64 s.
    PairLimited,
    /// The number is in maintenance (131057, during a throughput upgrade): resend every
    /// ~20 s for up to ~2 minutes.
    Maintenance,
    /// A Meta-side failure that may have been processed (1, 2, 131000, 131016, 133004,
    /// 5xx, timeouts): retry idempotent calls; a send may have gone out.
    Transient,
    /// Do not retry automatically; slow down or wait long (131048 spam limit, 131049,
    /// 131064, 133016, 132069).
    Hold,
    /// Permanent for this request: change it (invalid parameters, templates, media).
    FixRequest,
    /// Permanent for this recipient or message (not on WhatsApp, 24-hour window closed,
    /// opted out, …).
    Recipient,
    /// Permanent until an operator acts: token, permissions, account, payment, number
    /// registration. Stop the queue for that account.
    AuthOrAccount,
    /// A code not in the table: never resent automatically.
    Unknown,
}

/// The code → class table (META-FACTS §5).
///
/// ```
/// use flowcore_meta::{classify, ErrorClass};
/// assert_eq!(classify(130429), ErrorClass::RateLimited);
/// assert_eq!(classify(131056), ErrorClass::PairLimited);
/// assert_eq!(classify(131048), ErrorClass::Hold);
/// assert_eq!(classify(424242), ErrorClass::Unknown);
/// ```
pub fn classify(code: i64) -> ErrorClass {
    use ErrorClass::*;
    match code {
        4 | 80007 | 130429 => RateLimited,
        131056 => PairLimited,
        131057 => Maintenance,
        1 | 2 | 131000 | 131016 | 133004 => Transient,
        131048 | 131049 | 131064 | 133016 | 132069 => Hold,
        100 | 131008 | 131009 | 135000 | 33 | 131051 | 131053 | 132000 | 132001 | 132005 | 132007 | 132012 | 132015
        | 132016 | 132068 => FixRequest,
        131026 | 131047 | 131050 | 131021 | 131030 | 130472 | 131062 | 130497 | 131052 => Recipient,
        0 | 190 | 3 | 10 | 200..=299 | 131005 | 368 | 131031 | 131042 | 131045 | 133010 | 131037 => AuthOrAccount,
        _ => Unknown,
    }
}

/// Why a call to Meta failed.
///
/// Every error can say what it means for a retry: [`ApiError::class`],
/// [`ApiError::may_have_been_sent`] (so an outbox never double-sends blindly) and
/// [`ApiError::retry_after`].
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ApiError {
    /// Meta answered with a Graph error object.
    #[error("meta error {} (http {status}): {}", error.code, error.message.as_deref().unwrap_or("no message"))]
    Graph {
        /// The HTTP status.
        status: u16,
        /// The error object (boxed to keep `Result`s small).
        error: Box<GraphError>,
        /// The `Retry-After` header, when present.
        retry_after: Option<Duration>,
    },
    /// A non-success status without a Graph error body (a proxy's HTML page, an empty 502, …).
    #[error("http {status} without a graph error body")]
    Http {
        /// The HTTP status.
        status: u16,
        /// The `Retry-After` header, when present.
        retry_after: Option<Duration>,
        /// The start of the body (at most 256 characters), for the log.
        body_start: String,
    },
    /// A success status whose body could not be read (malformed JSON, no message id).
    /// The request was probably processed.
    #[error("unexpected response (http {status}): {reason}")]
    UnexpectedResponse {
        /// The HTTP status.
        status: u16,
        /// What was wrong.
        reason: String,
    },
    /// The request did not complete.
    #[error("transport: {0}")]
    Transport(#[from] TransportError),
    /// A media URL is not on one of Meta's hosts, so the access token was not sent.
    #[error("refusing to send the access token to host {host:?}")]
    UntrustedHost {
        /// The host of the URL.
        host: String,
    },
    /// An argument would have produced a wrong request (a phone number id that is not
    /// digits, …); nothing was sent.
    #[error("invalid {field}: {reason}")]
    InvalidArgument {
        /// The argument.
        field: &'static str,
        /// What is wrong.
        reason: &'static str,
    },
}

impl ApiError {
    /// Meta's error code, for [`ApiError::Graph`].
    pub fn code(&self) -> Option<i64> {
        match self {
            ApiError::Graph { error, .. } => Some(error.code),
            _ => None,
        }
    }

    /// The error's class.
    pub fn class(&self) -> ErrorClass {
        match self {
            ApiError::Graph { error, .. } => error.class(),
            ApiError::Http { status: 429, .. } => ErrorClass::RateLimited,
            ApiError::Http { status: 401 | 403, .. } => ErrorClass::AuthOrAccount,
            ApiError::Http { status, .. } if *status >= 500 => ErrorClass::Transient,
            ApiError::Http { .. } => ErrorClass::Unknown,
            ApiError::UnexpectedResponse { .. } | ApiError::Transport(_) => ErrorClass::Transient,
            ApiError::UntrustedHost { .. } | ApiError::InvalidArgument { .. } => ErrorClass::FixRequest,
        }
    }

    /// Whether the message may have gone out despite the error: timeouts, 5xx, 131000
    /// and other transient failures, unreadable success responses. When `true`, do not
    /// resend blindly: reconcile through status webhooks and `biz_opaque_callback_data`.
    pub fn may_have_been_sent(&self) -> bool {
        match self {
            ApiError::Transport(e) => e.may_have_been_sent(),
            ApiError::UnexpectedResponse { .. } => true,
            ApiError::UntrustedHost { .. } | ApiError::InvalidArgument { .. } => false,
            ApiError::Graph { .. } | ApiError::Http { .. } => self.class() == ErrorClass::Transient,
        }
    }

    /// Whether the error proves nothing was sent *and* a resend may succeed: throttling
    /// (4, 80007, 130429, 131056, HTTP 429) and maintenance (131057), or a connection that
    /// never opened.
    pub fn resend_is_safe(&self) -> bool {
        match self {
            ApiError::Transport(e) => !e.may_have_been_sent(),
            _ => matches!(self.class(), ErrorClass::RateLimited | ErrorClass::PairLimited | ErrorClass::Maintenance),
        }
    }

    /// The `Retry-After` the response carried.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            ApiError::Graph { retry_after, .. } | ApiError::Http { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// Whether this is the number's throughput limit (130429): slow the
    /// [`crate::NumberPacer`] down.
    pub fn is_throughput_limit(&self) -> bool {
        self.code() == Some(130429)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table() {
        use ErrorClass::*;
        let cases = [
            (4, RateLimited),
            (80007, RateLimited),
            (130429, RateLimited),
            (131056, PairLimited),
            (131057, Maintenance),
            (1, Transient),
            (2, Transient),
            (131000, Transient),
            (131016, Transient),
            (133004, Transient),
            (131048, Hold),
            (131049, Hold),
            (131064, Hold),
            (133016, Hold),
            (100, FixRequest),
            (131008, FixRequest),
            (131009, FixRequest),
            (132000, FixRequest),
            (132001, FixRequest),
            (131053, FixRequest),
            (131026, Recipient),
            (131047, Recipient),
            (131050, Recipient),
            (131062, Recipient),
            (0, AuthOrAccount),
            (190, AuthOrAccount),
            (10, AuthOrAccount),
            (250, AuthOrAccount),
            (368, AuthOrAccount),
            (131042, AuthOrAccount),
            (-1, Unknown),
            (999_999, Unknown),
        ];
        for (code, class) in cases {
            assert_eq!(classify(code), class, "code {code}");
        }
    }

    #[test]
    fn error_data_may_be_a_bare_string_and_codes_strings() {
        let e = GraphError::from_body(br#"{"error":{"code":"100","error_data":"bad param","is_transient":false}}"#)
            .unwrap();
        assert_eq!((e.code, e.details.as_deref(), e.is_transient), (100, Some("bad param"), Some(false)));
        assert!(GraphError::from_body(b"<html>502</html>").is_none());
        assert!(GraphError::from_body(br#"{"messages":[]}"#).is_none());
    }

    #[test]
    fn unknown_transient_codes_are_transient() {
        let e = GraphError { code: 777, is_transient: Some(true), ..GraphError::default() };
        assert_eq!(e.class(), ErrorClass::Transient);
        let e = GraphError { code: 777, ..GraphError::default() };
        assert_eq!(e.class(), ErrorClass::Unknown);
    }

    #[test]
    fn send_safety() {
        let graph = |code| ApiError::Graph {
            status: 400,
            error: Box::new(GraphError { code, ..GraphError::default() }),
            retry_after: None,
        };
        for code in [4, 80007, 130429, 131056, 131057] {
            assert!(graph(code).resend_is_safe(), "{code}");
            assert!(!graph(code).may_have_been_sent(), "{code}");
        }
        for code in [131000, 1, 2] {
            assert!(!graph(code).resend_is_safe(), "{code}");
            assert!(graph(code).may_have_been_sent(), "{code}");
        }
        for code in [131048, 131026, 100, 190, 555_555] {
            assert!(!graph(code).resend_is_safe(), "{code}");
            assert!(!graph(code).may_have_been_sent(), "{code}");
        }
        let http = |status| ApiError::Http { status, retry_after: None, body_start: String::new() };
        assert!(http(429).resend_is_safe() && !http(429).may_have_been_sent());
        assert!(!http(502).resend_is_safe() && http(502).may_have_been_sent());
        assert!(ApiError::Transport(TransportError::Timeout).may_have_been_sent());
        assert!(ApiError::Transport(TransportError::Connect("refused".into())).resend_is_safe());
    }
}
