//! Retries as data: what to do after an error, with exponential backoff and full jitter.

use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::error::{ApiError, ErrorClass};

/// What to do after a failed call.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RetryAdvice {
    /// Send again after `after`: the error proves nothing went out (or the call is
    /// idempotent). `scope` says what to hold back meanwhile.
    RetryAfter {
        /// How long to wait.
        after: Duration,
        /// What the wait applies to.
        scope: Scope,
    },
    /// The message may have been sent: do not resend blindly. Let the outbox reconcile
    /// through status webhooks (`biz_opaque_callback_data`) or an operator decide.
    Reconcile,
    /// Permanent for this message: record it as failed.
    Fail,
    /// Stop sending on `scope` (for `hold`, when known), and alert: the number is held
    /// back for quality, or an operator must fix the token, permissions or account.
    Pause {
        /// What to stop.
        scope: Scope,
        /// For how long, when the rule says.
        hold: Option<Duration>,
    },
}

/// What a [`RetryAdvice`] applies to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Scope {
    /// Only this message's recipient (pair rate limit); other recipients keep flowing.
    Recipient,
    /// The sending business number.
    Number,
    /// The whole WhatsApp Business Account / tenant.
    Account,
}

/// A source of randomness in `[0, 1)` for jitter. Inject a fixed one in tests.
pub trait Jitter: Send + Sync {
    /// A number in `[0, 1)`.
    fn sample(&self) -> f64;
}

/// Jitter from the standard library's randomly seeded hasher (no extra dependency).
#[derive(Debug, Default)]
pub struct StdJitter {
    counter: AtomicU64,
}

impl Jitter for StdJitter {
    fn sample(&self) -> f64 {
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u64(self.counter.fetch_add(1, Ordering::Relaxed));
        (hasher.finish() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Always the same sample (clamped to `[0, 1)`): deterministic backoff for tests.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FixedJitter(pub f64);

impl Jitter for FixedJitter {
    fn sample(&self) -> f64 {
        self.0.clamp(0.0, 1.0 - f64::EPSILON)
    }
}

/// Waits. Inject a recording one in tests so they never sleep for real.
#[async_trait::async_trait]
pub trait Sleeper: Send + Sync {
    /// Resolves after `duration`.
    async fn sleep(&self, duration: Duration);
}

/// A [`Sleeper`] over `tokio::time::sleep`. Feature `reqwest` (which brings tokio).
#[cfg(feature = "reqwest")]
#[derive(Clone, Copy, Debug, Default)]
pub struct TokioSleeper;

#[cfg(feature = "reqwest")]
#[async_trait::async_trait]
impl Sleeper for TokioSleeper {
    async fn sleep(&self, duration: Duration) {
        tokio::time::sleep(duration).await;
    }
}

/// The retry rules, one per [`ErrorClass`]:
///
/// | class | advice |
/// |---|---|
/// | rate-limited (4, 80007, 130429, HTTP 429) | retry after `Retry-After`, else full-jitter backoff; scope number |
/// | pair-limited (131056) | retry that recipient only after 1, 4, 16, 64 s (or `Retry-After` if longer) |
/// | maintenance (131057) | retry every `maintenance_interval` (20 s) |
/// | transient (timeouts, 5xx, 131000, …) | idempotent calls: backoff; sends: [`RetryAdvice::Reconcile`] |
/// | hold (131048, 131049, …) | [`RetryAdvice::Pause`]; 131049 holds the recipient 24 h |
/// | fix-request, recipient, unknown | [`RetryAdvice::Fail`] |
/// | auth/account | [`RetryAdvice::Pause`] the account |
///
/// A connection that never opened is always safe to retry with backoff. Retries stop
/// after `max_attempts` attempts in all ([`crate::MetaClient::send_with_retry`]).
///
/// ```
/// use std::time::Duration;
/// use flowcore_meta::{ApiError, FixedJitter, GraphError, RetryAdvice, RetryPolicy, Scope};
///
/// let policy = RetryPolicy::default().with_jitter(FixedJitter(0.5));
/// let pair = ApiError::Graph { status: 400, error: Box::new(GraphError::from_body(br#"{"error":{"code":131056}}"#).unwrap()), retry_after: None };
/// assert_eq!(policy.advise(&pair, 1, false), RetryAdvice::RetryAfter { after: Duration::from_secs(4), scope: Scope::Recipient });
/// let timeout = ApiError::Transport(flowcore_meta::TransportError::Timeout);
/// assert_eq!(policy.advise(&timeout, 0, false), RetryAdvice::Reconcile);
/// ```
#[derive(Clone)]
pub struct RetryPolicy {
    /// Attempts in all, the first included (default 5).
    pub max_attempts: u32,
    /// The first backoff ceiling (default 1 s); doubles each attempt.
    pub base_delay: Duration,
    /// The largest backoff ceiling (default 60 s).
    pub max_delay: Duration,
    /// The longest `Retry-After` honoured (default 10 minutes).
    pub max_retry_after: Duration,
    /// The wait between attempts while the number is in maintenance (default 20 s).
    pub maintenance_interval: Duration,
    jitter: Arc<dyn Jitter>,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 5,
            base_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(60),
            max_retry_after: Duration::from_secs(600),
            maintenance_interval: Duration::from_secs(20),
            jitter: Arc::new(StdJitter::default()),
        }
    }
}

impl fmt::Debug for RetryPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryPolicy")
            .field("max_attempts", &self.max_attempts)
            .field("base_delay", &self.base_delay)
            .field("max_delay", &self.max_delay)
            .field("max_retry_after", &self.max_retry_after)
            .field("maintenance_interval", &self.maintenance_interval)
            .finish_non_exhaustive()
    }
}

impl RetryPolicy {
    /// Replaces the jitter source.
    pub fn with_jitter(mut self, jitter: impl Jitter + 'static) -> Self {
        self.jitter = Arc::new(jitter);
        self
    }

    /// Full-jitter exponential backoff: a random delay in
    /// `[0, min(max_delay, base_delay · 2^attempt)]`, `attempt` counting from 0.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let ceiling = self.base_delay.saturating_mul(1u32 << attempt.min(20)).min(self.max_delay);
        ceiling.mul_f64(self.jitter.sample())
    }

    /// What to do after `error` on attempt number `attempt` (0 for the first failure).
    /// `idempotent` is `true` for calls that are harmless to repeat (reads, mark-as-read,
    /// downloads) and `false` for sends.
    pub fn advise(&self, error: &ApiError, attempt: u32, idempotent: bool) -> RetryAdvice {
        let honour = |computed: Duration| match error.retry_after() {
            Some(after) => after.min(self.max_retry_after).max(computed.min(self.max_retry_after)),
            None => computed,
        };
        if let ApiError::Transport(e) = error {
            if !e.may_have_been_sent() || idempotent {
                return RetryAdvice::RetryAfter { after: self.backoff(attempt), scope: Scope::Number };
            }
            return RetryAdvice::Reconcile;
        }
        match error.class() {
            ErrorClass::RateLimited => {
                let after = match error.retry_after() {
                    Some(after) => after.min(self.max_retry_after),
                    None => self.backoff(attempt),
                };
                RetryAdvice::RetryAfter { after, scope: Scope::Number }
            }
            ErrorClass::PairLimited => {
                let after = honour(Duration::from_secs(4u64.pow(attempt.min(3))));
                RetryAdvice::RetryAfter { after, scope: Scope::Recipient }
            }
            ErrorClass::Maintenance => {
                RetryAdvice::RetryAfter { after: honour(self.maintenance_interval), scope: Scope::Number }
            }
            ErrorClass::Transient if idempotent => {
                RetryAdvice::RetryAfter { after: honour(self.backoff(attempt)), scope: Scope::Number }
            }
            ErrorClass::Transient => RetryAdvice::Reconcile,
            ErrorClass::Hold => match error.code() {
                Some(131049) => {
                    RetryAdvice::Pause { scope: Scope::Recipient, hold: Some(Duration::from_secs(24 * 3600)) }
                }
                Some(133016) => RetryAdvice::Pause { scope: Scope::Number, hold: Some(Duration::from_secs(72 * 3600)) },
                Some(132069) => RetryAdvice::Pause { scope: Scope::Number, hold: Some(Duration::from_secs(3600)) },
                _ => RetryAdvice::Pause { scope: Scope::Number, hold: None },
            },
            ErrorClass::AuthOrAccount => RetryAdvice::Pause { scope: Scope::Account, hold: None },
            ErrorClass::FixRequest | ErrorClass::Recipient | ErrorClass::Unknown => RetryAdvice::Fail,
        }
    }
}

/// Reads a `Retry-After` header: a number of seconds, or an HTTP date (RFC 9110 §10.2.3),
/// which is taken relative to `now`. Pass the response's own `Date` as `now` when it has
/// one ([`response_date`]): a date the server wrote is best measured against the server's
/// clock, not against a local clock that may be off. A date already past means retry now;
/// anything else unreadable is `None`.
///
/// ```
/// use std::time::{Duration, SystemTime};
/// use flowcore_meta::parse_retry_after;
///
/// let now = flowcore_meta::response_date("Sun, 22 Nov 2026 15:00:00 GMT").unwrap();
/// assert_eq!(parse_retry_after("120", now), Some(Duration::from_secs(120)));
/// assert_eq!(parse_retry_after("Sun, 22 Nov 2026 15:00:30 GMT", now), Some(Duration::from_secs(30)));
/// assert_eq!(parse_retry_after("Sun, 22 Nov 2026 14:00:00 GMT", now), Some(Duration::ZERO));
/// assert_eq!(parse_retry_after("soon", SystemTime::now()), None);
/// ```
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// Reads a response's `Date` header (an HTTP date), the reference for a `Retry-After`
/// given as a date.
pub fn response_date(value: &str) -> Option<SystemTime> {
    httpdate::parse_http_date(value.trim()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::GraphError;
    use crate::transport::TransportError;

    fn graph(code: i64, retry_after: Option<u64>) -> ApiError {
        ApiError::Graph {
            status: 400,
            error: Box::new(GraphError { code, ..GraphError::default() }),
            retry_after: retry_after.map(Duration::from_secs),
        }
    }

    fn policy(sample: f64) -> RetryPolicy {
        RetryPolicy::default().with_jitter(FixedJitter(sample))
    }

    #[test]
    fn backoff_is_full_jitter_and_capped() {
        let top = policy(1.0);
        let ceiling = |attempt| top.backoff(attempt).as_secs_f64().round() as u64;
        assert_eq!([ceiling(0), ceiling(1), ceiling(2), ceiling(5), ceiling(6), ceiling(40)], [1, 2, 4, 32, 60, 60]);
        assert_eq!(policy(0.0).backoff(3), Duration::ZERO);
        assert_eq!(policy(0.5).backoff(2), Duration::from_secs(2));
    }

    #[test]
    fn pair_limit_waits_1_4_16_64() {
        let p = policy(0.5);
        let waits: Vec<_> = (0..5)
            .map(|attempt| match p.advise(&graph(131056, None), attempt, false) {
                RetryAdvice::RetryAfter { after, scope: Scope::Recipient } => after.as_secs(),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(waits, [1, 4, 16, 64, 64]);
    }

    #[test]
    fn retry_after_is_honoured_and_capped() {
        let p = policy(0.5);
        assert_eq!(
            p.advise(&graph(130429, Some(7)), 0, false),
            RetryAdvice::RetryAfter { after: Duration::from_secs(7), scope: Scope::Number }
        );
        assert_eq!(
            p.advise(&graph(4, Some(100_000)), 0, false),
            RetryAdvice::RetryAfter { after: Duration::from_secs(600), scope: Scope::Number }
        );
        let http = ApiError::Http { status: 429, retry_after: Some(Duration::from_secs(3)), body_start: String::new() };
        assert_eq!(
            p.advise(&http, 2, false),
            RetryAdvice::RetryAfter { after: Duration::from_secs(3), scope: Scope::Number }
        );
    }

    #[test]
    fn rules_per_class() {
        let p = policy(0.5);
        assert_eq!(p.advise(&graph(131048, None), 0, false), RetryAdvice::Pause { scope: Scope::Number, hold: None });
        assert!(matches!(p.advise(&graph(131049, None), 0, false), RetryAdvice::Pause { scope: Scope::Recipient, .. }));
        assert_eq!(p.advise(&graph(131000, None), 0, false), RetryAdvice::Reconcile);
        assert!(matches!(p.advise(&graph(131000, None), 0, true), RetryAdvice::RetryAfter { .. }));
        assert_eq!(
            p.advise(&graph(131057, None), 3, false),
            RetryAdvice::RetryAfter { after: Duration::from_secs(20), scope: Scope::Number }
        );
        assert_eq!(p.advise(&graph(131026, None), 0, false), RetryAdvice::Fail);
        assert_eq!(p.advise(&graph(100, None), 0, false), RetryAdvice::Fail);
        assert_eq!(p.advise(&graph(424_242, None), 0, false), RetryAdvice::Fail);
        assert_eq!(p.advise(&graph(190, None), 0, false), RetryAdvice::Pause { scope: Scope::Account, hold: None });
        assert_eq!(p.advise(&ApiError::Transport(TransportError::Timeout), 0, false), RetryAdvice::Reconcile);
        assert!(matches!(
            p.advise(&ApiError::Transport(TransportError::Connect("x".into())), 0, false),
            RetryAdvice::RetryAfter { .. }
        ));
        let html = ApiError::Http { status: 502, retry_after: None, body_start: "<html>".into() };
        assert_eq!(p.advise(&html, 0, false), RetryAdvice::Reconcile);
    }

    #[test]
    fn std_jitter_is_in_range() {
        let j = StdJitter::default();
        for _ in 0..1000 {
            let s = j.sample();
            assert!((0.0..1.0).contains(&s));
        }
    }

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        let now = response_date("Wed, 21 Oct 2015 07:28:00 GMT").unwrap();
        assert_eq!(parse_retry_after(" 12 ", now), Some(Duration::from_secs(12)));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:30:00 GMT", now), Some(Duration::from_secs(120)));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:27:00 GMT", now), Some(Duration::ZERO), "already past");
        for unreadable in ["", "-5", "1.5", "tomorrow", "Wed, 21 Oct 2015 25:00:00 GMT"] {
            assert_eq!(parse_retry_after(unreadable, now), None, "{unreadable:?}");
        }
    }
}
