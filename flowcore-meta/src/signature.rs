//! `X-Hub-Signature-256`: HMAC-SHA256 of the raw webhook body with the app secret.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::{Choice, ConstantTimeEq};

type HmacSha256 = Hmac<Sha256>;

/// The name of the header Meta signs webhook deliveries with.
pub const SIGNATURE_HEADER: &str = "X-Hub-Signature-256";

const PREFIX: &str = "sha256=";
const DIGEST_LEN: usize = 32;

/// Why a webhook body's signature was refused.
///
/// Every variant means "do not trust this body"; a server answers `401` (or `403`) and
/// does not parse it. [`SignatureError::http_status`] gives the status to use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SignatureError {
    /// The request had no `X-Hub-Signature-256` header.
    #[error("missing X-Hub-Signature-256 header")]
    MissingHeader,
    /// The header does not start with `sha256=`.
    #[error("signature header does not start with \"sha256=\"")]
    MissingPrefix,
    /// The part after `sha256=` is not hexadecimal.
    #[error("signature is not hexadecimal")]
    BadHex,
    /// The signature decodes to the wrong number of bytes (HMAC-SHA256 has 32).
    #[error("signature is {len} bytes, expected 32")]
    WrongLength {
        /// How many bytes the header's hex decoded to.
        len: usize,
    },
    /// No usable secret was configured (the list was empty or every secret was blank).
    #[error("no app secret configured")]
    NoSecret,
    /// The signature is well formed but matches none of the secrets.
    #[error("signature does not match")]
    Mismatch,
}

impl SignatureError {
    /// The HTTP status a server should answer with: `500` when no secret is configured
    /// (a server misconfiguration), `401` otherwise.
    pub fn http_status(&self) -> u16 {
        match self {
            SignatureError::NoSecret => 500,
            _ => 401,
        }
    }
}

/// Checks a webhook body against its `X-Hub-Signature-256` header value.
///
/// `secrets` holds every app secret currently valid (during a rotation, the old and the
/// new one); blank secrets are ignored, so an unset secret can never validate anything.
/// Every secret is tried and the digests are compared in constant time. On success the
/// index of the matching secret is returned, so a host can tell when the old secret
/// stops being used.
///
/// The hex may be upper or lower case; whitespace around the header value is ignored.
/// This function never panics.
///
/// ```
/// use flowcore_meta::{sign, verify_signature, SignatureError};
///
/// let body = br#"{"object":"whatsapp_business_account","entry":[]}"#;
/// let header = sign(body, b"new-secret");
/// assert_eq!(verify_signature(body, Some(&header), &["old-secret", "new-secret"]), Ok(1));
/// assert_eq!(verify_signature(body, Some(&header), &["other"]), Err(SignatureError::Mismatch));
/// assert_eq!(verify_signature(body, None, &["new-secret"]), Err(SignatureError::MissingHeader));
/// ```
pub fn verify_signature<S: AsRef<[u8]>>(
    raw_body: &[u8],
    header_value: Option<&str>,
    secrets: &[S],
) -> Result<usize, SignatureError> {
    let header = header_value.ok_or(SignatureError::MissingHeader)?.trim();
    let hex_part = strip_prefix_ignore_case(header, PREFIX).ok_or(SignatureError::MissingPrefix)?;
    if hex_part.len() % 2 != 0 || !hex_part.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(SignatureError::BadHex);
    }
    if hex_part.len() != DIGEST_LEN * 2 {
        return Err(SignatureError::WrongLength { len: hex_part.len() / 2 });
    }
    let mut expected = [0u8; DIGEST_LEN];
    hex::decode_to_slice(hex_part, &mut expected).map_err(|_| SignatureError::BadHex)?;

    let mut matched: Option<usize> = None;
    let mut any_secret = false;
    for (index, secret) in secrets.iter().enumerate() {
        let secret = secret.as_ref();
        if secret.is_empty() || secret.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        any_secret = true;
        let digest = hmac_sha256(secret, raw_body);
        let equal: Choice = digest.ct_eq(&expected);
        if bool::from(equal) && matched.is_none() {
            matched = Some(index);
        }
    }
    if !any_secret {
        return Err(SignatureError::NoSecret);
    }
    matched.ok_or(SignatureError::Mismatch)
}

/// Computes the `X-Hub-Signature-256` header value (`sha256=<lowercase hex>`) for a body.
///
/// Useful for tests, fake servers and forwarding proxies.
///
/// ```
/// let header = flowcore_meta::sign(b"{}", b"secret");
/// assert!(header.starts_with("sha256=") && header.len() == 7 + 64);
/// ```
pub fn sign(raw_body: &[u8], secret: &[u8]) -> String {
    let mut out = String::with_capacity(PREFIX.len() + DIGEST_LEN * 2);
    out.push_str(PREFIX);
    out.push_str(&hex::encode(hmac_sha256(secret, raw_body)));
    out
}

fn hmac_sha256(secret: &[u8], body: &[u8]) -> [u8; DIGEST_LEN] {
    // HMAC accepts keys of any length, so `new_from_slice` cannot fail.
    let mut mac = match HmacSha256::new_from_slice(secret) {
        Ok(mac) => mac,
        Err(_) => return [0u8; DIGEST_LEN],
    };
    mac.update(body);
    mac.finalize().into_bytes().into()
}

fn strip_prefix_ignore_case<'a>(value: &'a str, prefix: &str) -> Option<&'a str> {
    let head = value.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix).then(|| &value[prefix.len()..])
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "flowcore-test-app-secret";

    #[test]
    fn refusals_are_typed() {
        let body = b"{}";
        let good = sign(body, SECRET.as_bytes());
        let cases: Vec<(Option<&str>, Result<usize, SignatureError>)> = vec![
            (None, Err(SignatureError::MissingHeader)),
            (Some(""), Err(SignatureError::MissingPrefix)),
            (Some("sha1=abcd"), Err(SignatureError::MissingPrefix)),
            (Some(&good[7..]), Err(SignatureError::MissingPrefix)),
            (Some("sha256=zz"), Err(SignatureError::BadHex)),
            (Some("sha256=abc"), Err(SignatureError::BadHex)),
            (Some("sha256=é"), Err(SignatureError::BadHex)),
            (Some("sha256=abcd"), Err(SignatureError::WrongLength { len: 2 })),
            (Some("sha256="), Err(SignatureError::WrongLength { len: 0 })),
            (Some(&good), Ok(0)),
        ];
        for (header, expected) in cases {
            assert_eq!(verify_signature(body, header, &[SECRET]), expected, "{header:?}");
        }
    }

    #[test]
    fn upper_case_hex_and_whitespace_accepted() {
        let body = b"payload";
        let good = sign(body, SECRET.as_bytes());
        let upper = format!("  SHA256={} ", good[7..].to_ascii_uppercase());
        assert_eq!(verify_signature(body, Some(&upper), &[SECRET]), Ok(0));
    }

    #[test]
    fn blank_secrets_never_validate() {
        let body = b"payload";
        let with_empty_key = sign(body, b"");
        let none: [&str; 0] = [];
        assert_eq!(verify_signature(body, Some(&with_empty_key), &[""]), Err(SignatureError::NoSecret));
        assert_eq!(verify_signature(body, Some(&with_empty_key), &["  "]), Err(SignatureError::NoSecret));
        assert_eq!(verify_signature(body, Some(&with_empty_key), &none), Err(SignatureError::NoSecret));
        assert_eq!(verify_signature(body, Some(&with_empty_key), &["", SECRET]), Err(SignatureError::Mismatch));
    }

    #[test]
    fn rotation_reports_which_secret_matched() {
        let body = b"payload";
        let header = sign(body, b"old");
        assert_eq!(verify_signature(body, Some(&header), &["new", "old"]), Ok(1));
        assert_eq!(verify_signature(body, Some(&header), &["old", "new"]), Ok(0));
        assert_eq!(verify_signature(b"payload ", Some(&header), &["old"]), Err(SignatureError::Mismatch));
    }
}
