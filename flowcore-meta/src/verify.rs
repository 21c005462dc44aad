//! The webhook subscription handshake (`GET` with `hub.mode`, `hub.verify_token`,
//! `hub.challenge`).

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The three query parameters of Meta's verification request, borrowed from the query.
///
/// Build it from decoded pairs ([`SubscriptionQuery::from_pairs`], e.g. axum's
/// `Query<HashMap<String, String>>`) or from a raw query string
/// ([`SubscriptionQuery::parse_query_string`], which percent-decodes).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct SubscriptionQuery {
    /// `hub.mode`; Meta sends `subscribe`.
    pub mode: Option<String>,
    /// `hub.verify_token`: the token configured in the App Dashboard.
    pub verify_token: Option<String>,
    /// `hub.challenge`: echoed back on success.
    pub challenge: Option<String>,
}

impl std::fmt::Debug for SubscriptionQuery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SubscriptionQuery")
            .field("mode", &self.mode)
            .field("verify_token", &self.verify_token.as_ref().map(|_| "<redacted>"))
            .field("challenge", &self.challenge)
            .finish()
    }
}

impl SubscriptionQuery {
    /// Picks `hub.mode`, `hub.verify_token` and `hub.challenge` out of decoded query pairs;
    /// other pairs are ignored. When a name repeats, the first one wins.
    pub fn from_pairs<I, K, V>(pairs: I) -> Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<str>,
        V: AsRef<str>,
    {
        let mut query = SubscriptionQuery::default();
        for (key, value) in pairs {
            let slot = match key.as_ref() {
                "hub.mode" => &mut query.mode,
                "hub.verify_token" => &mut query.verify_token,
                "hub.challenge" => &mut query.challenge,
                _ => continue,
            };
            if slot.is_none() {
                *slot = Some(value.as_ref().to_owned());
            }
        }
        query
    }

    /// Parses a raw query string (`hub.mode=subscribe&hub.challenge=1&…`, with or without
    /// a leading `?`), percent-decoding names and values and reading `+` as a space.
    pub fn parse_query_string(query: &str) -> Self {
        let query = query.strip_prefix('?').unwrap_or(query);
        Self::from_pairs(query.split('&').filter(|p| !p.is_empty()).map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k), percent_decode(v))
        }))
    }
}

/// Why a verification request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyError {
    /// A required parameter was absent. Answer `400`.
    #[error("missing query parameter {0}")]
    MissingParameter(&'static str),
    /// `hub.mode` was not `subscribe`. Answer `400`.
    #[error("hub.mode is not \"subscribe\"")]
    WrongMode,
    /// The token did not match the configured one. Answer `403`.
    #[error("verify token does not match")]
    TokenMismatch,
    /// The server has no (or a blank) verify token configured, so no request can pass.
    /// Answer `403`.
    #[error("no verify token configured")]
    TokenNotConfigured,
}

impl VerifyError {
    /// The HTTP status a server should answer with: `400` for a malformed request,
    /// `403` for a wrong or unconfigured token.
    pub fn http_status(&self) -> u16 {
        match self {
            VerifyError::MissingParameter(_) | VerifyError::WrongMode => 400,
            VerifyError::TokenMismatch | VerifyError::TokenNotConfigured => 403,
        }
    }
}

/// Answers Meta's webhook verification request.
///
/// Returns the challenge, which the server sends back as a plain-text `200`. The token
/// is compared in constant time (both sides are hashed first, so not even the length
/// leaks); a blank configured token refuses every request.
///
/// ```
/// use flowcore_meta::{verify_subscription, SubscriptionQuery, VerifyError};
///
/// let q = SubscriptionQuery::parse_query_string("hub.mode=subscribe&hub.verify_token=s3cret&hub.challenge=1158201444");
/// assert_eq!(verify_subscription(&q, "s3cret").as_deref(), Ok("1158201444"));
/// assert_eq!(verify_subscription(&q, "other"), Err(VerifyError::TokenMismatch));
/// assert_eq!(verify_subscription(&q, "other").unwrap_err().http_status(), 403);
/// ```
pub fn verify_subscription<'q>(query: &'q SubscriptionQuery, expected_token: &str) -> Result<&'q str, VerifyError> {
    let mode = query.mode.as_deref().ok_or(VerifyError::MissingParameter("hub.mode"))?;
    if mode != "subscribe" {
        return Err(VerifyError::WrongMode);
    }
    let token = query.verify_token.as_deref().ok_or(VerifyError::MissingParameter("hub.verify_token"))?;
    let challenge = query.challenge.as_deref().ok_or(VerifyError::MissingParameter("hub.challenge"))?;
    if expected_token.trim().is_empty() {
        return Err(VerifyError::TokenNotConfigured);
    }
    let given = Sha256::digest(token.as_bytes());
    let expected = Sha256::digest(expected_token.as_bytes());
    if bool::from(given.ct_eq(&expected)) {
        Ok(challenge)
    } else {
        Err(VerifyError::TokenMismatch)
    }
}

fn percent_decode(input: &str) -> String {
    let bytes = input.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let byte = bytes[i];
        if byte == b'+' {
            out.push(b' ');
        } else if byte == b'%' {
            let hi = bytes.get(i + 1).and_then(|b| (*b as char).to_digit(16));
            let lo = bytes.get(i + 2).and_then(|b| (*b as char).to_digit(16));
            if let (Some(hi), Some(lo)) = (hi, lo) {
                // Two hex digits make at most 255.
                out.push((hi * 16 + lo) as u8);
                i += 3;
                continue;
            }
            out.push(b'%');
        } else {
            out.push(byte);
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(mode: Option<&str>, token: Option<&str>, challenge: Option<&str>) -> SubscriptionQuery {
        SubscriptionQuery {
            mode: mode.map(str::to_owned),
            verify_token: token.map(str::to_owned),
            challenge: challenge.map(str::to_owned),
        }
    }

    #[test]
    fn handshake_table() {
        let cases = [
            (q(Some("subscribe"), Some("tok"), Some("42")), "tok", Ok("42")),
            (q(Some("subscribe"), Some("tok"), Some("42")), "tok ", Err(VerifyError::TokenMismatch)),
            (q(Some("subscribe"), Some("tok"), Some("42")), "to", Err(VerifyError::TokenMismatch)),
            (q(Some("unsubscribe"), Some("tok"), Some("42")), "tok", Err(VerifyError::WrongMode)),
            (q(Some("Subscribe"), Some("tok"), Some("42")), "tok", Err(VerifyError::WrongMode)),
            (q(None, Some("tok"), Some("42")), "tok", Err(VerifyError::MissingParameter("hub.mode"))),
            (q(Some("subscribe"), None, Some("42")), "tok", Err(VerifyError::MissingParameter("hub.verify_token"))),
            (q(Some("subscribe"), Some("tok"), None), "tok", Err(VerifyError::MissingParameter("hub.challenge"))),
            (q(Some("subscribe"), Some(""), Some("42")), "", Err(VerifyError::TokenNotConfigured)),
            (q(Some("subscribe"), Some(" "), Some("42")), "  ", Err(VerifyError::TokenNotConfigured)),
        ];
        for (query, expected_token, expected) in cases {
            assert_eq!(verify_subscription(&query, expected_token), expected, "{query:?} vs {expected_token:?}");
        }
    }

    #[test]
    fn statuses() {
        assert_eq!(VerifyError::WrongMode.http_status(), 400);
        assert_eq!(VerifyError::MissingParameter("hub.mode").http_status(), 400);
        assert_eq!(VerifyError::TokenMismatch.http_status(), 403);
        assert_eq!(VerifyError::TokenNotConfigured.http_status(), 403);
    }

    #[test]
    fn query_string_is_decoded() {
        let query = SubscriptionQuery::parse_query_string(
            "?hub.mode=subscribe&hub.verify_token=a%20b%2Bc+d&hub.challenge=9&x=%zz",
        );
        assert_eq!(query.verify_token.as_deref(), Some("a b+c d"));
        assert_eq!(verify_subscription(&query, "a b+c d"), Ok("9"));
        assert_eq!(percent_decode("%e2%82%ac%"), "€%");
        assert_eq!(percent_decode("%4"), "%4");
    }

    #[test]
    fn debug_hides_the_token() {
        let query = q(Some("subscribe"), Some("very-secret"), Some("1"));
        assert!(!format!("{query:?}").contains("very-secret"));
    }
}
