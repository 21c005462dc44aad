//! Pacing before sending: a per-number token bucket and a per-recipient pair limiter.
//!
//! Both are plain data structures: pass `now` in, get [`Pace::Ready`] (a token was
//! taken) or [`Pace::WaitUntil`] (nothing was taken; ask again then). No clock, no
//! sleeping, no locks — wrap them in a mutex if several tasks share one.

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use flowcore::Timestamp;

/// The answer of a pacer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[must_use]
pub enum Pace {
    /// Send now; the pacer has counted the message.
    Ready,
    /// Do not send before this time; nothing was counted.
    WaitUntil(Timestamp),
}

/// A token bucket for one business number: `rate` messages per second (80 by default;
/// Meta raises numbers up to 1,000/s, coexistence numbers are fixed at 20/s), with a
/// burst of one second's worth.
///
/// On 130429 ([`NumberPacer::on_throttled`]) the rate halves (down to 1/s); each minute
/// without another 130429 doubles it back towards the configured rate.
///
/// ```
/// use flowcore::Timestamp;
/// use flowcore_meta::{NumberPacer, Pace};
///
/// let mut pacer = NumberPacer::new(2);
/// let t0 = Timestamp::from_unix_seconds(1_000);
/// assert_eq!(pacer.try_acquire(t0), Pace::Ready);
/// assert_eq!(pacer.try_acquire(t0), Pace::Ready);
/// assert_eq!(pacer.try_acquire(t0), Pace::WaitUntil(t0.saturating_add_millis(500)));
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct NumberPacer {
    configured_rate: f64,
    rate: f64,
    tokens: f64,
    last: Option<Timestamp>,
    recover_at: Option<Timestamp>,
}

/// How long a slowed-down pacer waits without 130429 before doubling its rate.
const RECOVERY: Duration = Duration::from_secs(60);

impl Default for NumberPacer {
    fn default() -> Self {
        NumberPacer::new(80)
    }
}

impl NumberPacer {
    /// A pacer for `messages_per_second` (at least 1).
    pub fn new(messages_per_second: u32) -> Self {
        let rate = f64::from(messages_per_second.max(1));
        NumberPacer { configured_rate: rate, rate, tokens: rate, last: None, recover_at: None }
    }

    /// The current rate in messages per second.
    pub fn rate(&self) -> f64 {
        self.rate
    }

    fn refill(&mut self, now: Timestamp) {
        while let Some(at) = self.recover_at {
            if now < at {
                break;
            }
            self.rate = (self.rate * 2.0).min(self.configured_rate);
            self.recover_at =
                (self.rate < self.configured_rate).then(|| at.saturating_add_millis(RECOVERY.as_millis() as u64));
        }
        if let Some(last) = self.last {
            let elapsed = now.millis_since(last).max(0) as f64 / 1000.0;
            self.tokens = (self.tokens + elapsed * self.rate).min(self.rate);
        }
        if self.last.is_none_or(|last| now > last) {
            self.last = Some(now);
        }
    }

    /// Takes a token if one is available at `now`.
    pub fn try_acquire(&mut self, now: Timestamp) -> Pace {
        self.refill(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return Pace::Ready;
        }
        let wait_ms = ((1.0 - self.tokens) / self.rate * 1000.0).ceil() as u64;
        Pace::WaitUntil(now.saturating_add_millis(wait_ms.max(1)))
    }

    /// Reserves the next free slot, counted at once: the time this message may go (`now`
    /// when a token is free). Unlike [`try_acquire`](NumberPacer::try_acquire), callers
    /// that ask one after the other get increasing slots, so a queue of sends goes out in
    /// the order it asked and none is starved.
    ///
    /// ```
    /// use flowcore::Timestamp;
    /// use flowcore_meta::NumberPacer;
    ///
    /// let mut pacer = NumberPacer::new(2);
    /// let t0 = Timestamp::from_unix_seconds(1_000);
    /// assert_eq!(pacer.reserve(t0), t0);
    /// assert_eq!(pacer.reserve(t0), t0);
    /// assert_eq!(pacer.reserve(t0), t0.saturating_add_millis(500));
    /// assert_eq!(pacer.reserve(t0), t0.saturating_add_millis(1000));
    /// ```
    pub fn reserve(&mut self, now: Timestamp) -> Timestamp {
        self.refill(now);
        self.tokens -= 1.0;
        if self.tokens >= 0.0 {
            return now;
        }
        let wait_ms = (-self.tokens / self.rate * 1000.0).ceil() as u64;
        now.saturating_add_millis(wait_ms)
    }

    /// Meta answered 130429 (throughput reached): halve the rate and empty the bucket.
    pub fn on_throttled(&mut self, now: Timestamp) {
        self.refill(now);
        self.rate = (self.rate / 2.0).max(1.0);
        // Slots reserved before stay owed.
        self.tokens = self.tokens.min(0.0);
        self.recover_at = Some(now.saturating_add_millis(RECOVERY.as_millis() as u64));
    }
}

/// Per-recipient pacing for Meta's pair rate limit (about one message every 6 s from a
/// business number to one user; bursts borrow from later quota and end in 131056).
///
/// Each recipient has a small bucket (`burst`, default 3) refilled one message per
/// `interval` (default 6 s). After a 131056, [`PairLimiter::on_pair_limited`] blocks
/// that recipient for 1, 4, 16, then 64 s; other recipients are unaffected. Recipients
/// are keyed by any string (number or BSUID); `Debug` shows only how many are tracked.
///
/// ```
/// use flowcore::Timestamp;
/// use flowcore_meta::{Pace, PairLimiter};
///
/// let mut pairs = PairLimiter::default();
/// let t0 = Timestamp::from_unix_seconds(1_000);
/// for _ in 0..3 {
///     assert_eq!(pairs.try_acquire("5511999990000", t0), Pace::Ready);
/// }
/// assert_eq!(pairs.try_acquire("5511999990000", t0), Pace::WaitUntil(t0.saturating_add_seconds(6)));
/// assert_eq!(pairs.try_acquire("5511888880000", t0), Pace::Ready);
/// ```
#[derive(Clone)]
pub struct PairLimiter {
    interval_ms: u64,
    burst: u32,
    recipients: HashMap<String, PairState>,
}

#[derive(Clone, Debug, PartialEq)]
struct PairState {
    /// Tokens, in thousandths of a message.
    tokens_milli: u64,
    last: Timestamp,
    blocked_until: Option<Timestamp>,
    strikes: u32,
}

impl fmt::Debug for PairLimiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PairLimiter")
            .field("interval_ms", &self.interval_ms)
            .field("burst", &self.burst)
            .field("recipients", &self.recipients.len())
            .finish()
    }
}

impl Default for PairLimiter {
    fn default() -> Self {
        PairLimiter::new(Duration::from_secs(6), 3)
    }
}

impl PairLimiter {
    /// One message per `interval` per recipient, with bursts of up to `burst` (at least 1).
    pub fn new(interval: Duration, burst: u32) -> Self {
        PairLimiter {
            interval_ms: (interval.as_millis() as u64).max(1),
            burst: burst.max(1),
            recipients: HashMap::new(),
        }
    }

    fn capacity(&self) -> u64 {
        u64::from(self.burst) * 1000
    }

    fn state(&mut self, recipient: &str, now: Timestamp) -> &mut PairState {
        let capacity = self.capacity();
        let interval = self.interval_ms;
        if !self.recipients.contains_key(recipient) {
            self.recipients.insert(
                recipient.to_owned(),
                PairState { tokens_milli: capacity, last: now, blocked_until: None, strikes: 0 },
            );
        }
        // The entry was inserted just above when missing.
        let state = self.recipients.get_mut(recipient).expect("inserted above");
        let elapsed = now.millis_since(state.last).max(0) as u64;
        state.tokens_milli = (state.tokens_milli + elapsed.saturating_mul(1000) / interval).min(capacity);
        if now > state.last {
            state.last = now;
        }
        state
    }

    /// Takes this recipient's token if one is available at `now`.
    pub fn try_acquire(&mut self, recipient: &str, now: Timestamp) -> Pace {
        let interval = self.interval_ms;
        let state = self.state(recipient, now);
        if let Some(until) = state.blocked_until {
            if now < until {
                return Pace::WaitUntil(until);
            }
            state.blocked_until = None;
        }
        if state.tokens_milli >= 1000 {
            state.tokens_milli -= 1000;
            return Pace::Ready;
        }
        let missing = 1000 - state.tokens_milli;
        Pace::WaitUntil(now.saturating_add_millis((missing * interval).div_ceil(1000)))
    }

    /// Meta answered 131056 for this recipient: block them for 1, 4, 16, then 64 s
    /// (growing with consecutive strikes). Returns when they may be tried again.
    pub fn on_pair_limited(&mut self, recipient: &str, now: Timestamp) -> Timestamp {
        let state = self.state(recipient, now);
        let wait = 4u64.pow(state.strikes.min(3));
        state.strikes = state.strikes.saturating_add(1);
        state.tokens_milli = 0;
        let until = now.saturating_add_seconds(wait);
        state.blocked_until = Some(until);
        until
    }

    /// A send to this recipient succeeded: reset their strike count.
    pub fn on_sent(&mut self, recipient: &str) {
        if let Some(state) = self.recipients.get_mut(recipient) {
            state.strikes = 0;
        }
    }

    /// Forgets recipients whose bucket is full again and who are not blocked, bounding memory.
    pub fn prune(&mut self, now: Timestamp) {
        let capacity = self.capacity();
        let interval = self.interval_ms;
        self.recipients.retain(|_, s| {
            let elapsed = now.millis_since(s.last).max(0) as u64;
            let full = s.tokens_milli + elapsed.saturating_mul(1000) / interval >= capacity;
            let blocked = s.blocked_until.is_some_and(|until| now < until);
            !(full && !blocked && s.strikes == 0)
        });
    }

    /// How many recipients are tracked.
    pub fn len(&self) -> usize {
        self.recipients.len()
    }

    /// Whether no recipient is tracked.
    pub fn is_empty(&self) -> bool {
        self.recipients.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(ms: i64) -> Timestamp {
        Timestamp::from_unix_millis(1_000_000 + ms)
    }

    #[test]
    fn bucket_allows_the_rate_and_no_more() {
        let mut pacer = NumberPacer::default();
        let sent = (0..200).filter(|_| pacer.try_acquire(t(0)) == Pace::Ready).count();
        assert_eq!(sent, 80);
        // One second later, 80 more.
        let sent = (0..200).filter(|_| pacer.try_acquire(t(1000)) == Pace::Ready).count();
        assert_eq!(sent, 80);
        assert_eq!(pacer.try_acquire(t(1000)), Pace::WaitUntil(t(1013)));
    }

    #[test]
    fn throttling_halves_then_recovers() {
        let mut pacer = NumberPacer::new(80);
        pacer.on_throttled(t(0));
        assert_eq!(pacer.rate(), 40.0);
        pacer.on_throttled(t(10));
        assert_eq!(pacer.rate(), 20.0);
        assert!(matches!(pacer.try_acquire(t(10)), Pace::WaitUntil(_)));
        let _ = pacer.try_acquire(t(60_010));
        assert_eq!(pacer.rate(), 40.0);
        let _ = pacer.try_acquire(t(120_010));
        assert_eq!(pacer.rate(), 80.0);
        let _ = pacer.try_acquire(t(600_000));
        assert_eq!(pacer.rate(), 80.0);
        let mut slow = NumberPacer::new(1);
        slow.on_throttled(t(0));
        assert_eq!(slow.rate(), 1.0);
    }

    #[test]
    fn pair_limiter_refills_one_per_interval() {
        let mut pairs = PairLimiter::default();
        for _ in 0..3 {
            assert_eq!(pairs.try_acquire("a", t(0)), Pace::Ready);
        }
        assert_eq!(pairs.try_acquire("a", t(0)), Pace::WaitUntil(t(6000)));
        assert_eq!(pairs.try_acquire("a", t(3000)), Pace::WaitUntil(t(6000)));
        assert_eq!(pairs.try_acquire("a", t(6000)), Pace::Ready);
        assert_eq!(pairs.try_acquire("b", t(6000)), Pace::Ready);
    }

    #[test]
    fn pair_strikes_grow_1_4_16_64_and_reset() {
        let mut pairs = PairLimiter::default();
        let waits: Vec<i64> = (0..5).map(|_| pairs.on_pair_limited("a", t(0)).millis_since(t(0)) / 1000).collect();
        assert_eq!(waits, [1, 4, 16, 64, 64]);
        assert_eq!(pairs.try_acquire("a", t(1000)), Pace::WaitUntil(t(64_000)));
        assert_eq!(pairs.try_acquire("b", t(1000)), Pace::Ready);
        pairs.on_sent("a");
        assert_eq!(pairs.on_pair_limited("a", t(70_000)), t(71_000));
    }

    #[test]
    fn prune_forgets_idle_recipients_only() {
        let mut pairs = PairLimiter::default();
        let _ = pairs.try_acquire("idle", t(0));
        let _ = pairs.try_acquire("busy", t(0));
        pairs.on_pair_limited("busy", t(0));
        pairs.prune(t(7_000));
        assert_eq!(pairs.len(), 1);
        assert!(!format!("{pairs:?}").contains("busy"));
    }
}
