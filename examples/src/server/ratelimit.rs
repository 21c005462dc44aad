//! The per-contact inbound rate limit (the original design's "5 messages per minute").
//!
//! A sliding window per (organization, contact): a message over the limit is logged and
//! not run through the flow. The window lives in process memory, so with several server
//! instances each enforces the limit on the messages it processes; conversations are
//! spread over instances by claim, so a flood from one contact is still cut to at most
//! `limit × instances` per minute.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A sliding-window limiter keyed by conversation.
#[derive(Debug)]
pub struct RateLimiter {
    limit: u32,
    window: Duration,
    hits: Mutex<HashMap<String, VecDeque<Instant>>>,
}

impl RateLimiter {
    /// At most `limit` events per `window` per key; `limit == 0` disables the limit.
    pub fn new(limit: u32, window: Duration) -> Self {
        RateLimiter { limit, window, hits: Mutex::new(HashMap::new()) }
    }

    /// Records an event for `key` at `now`; false when it is over the limit (an event
    /// over the limit is not counted, so a contact who keeps writing is let through again
    /// once older messages leave the window).
    pub fn check(&self, key: &str, now: Instant) -> bool {
        if self.limit == 0 {
            return true;
        }
        let mut hits = self.hits.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let window = hits.entry(key.to_owned()).or_default();
        while window.front().is_some_and(|t| now.saturating_duration_since(*t) >= self.window) {
            window.pop_front();
        }
        if window.len() >= self.limit as usize {
            return false;
        }
        window.push_back(now);
        true
    }

    /// Drops keys whose window is empty at `now` (called by the periodic purge job so
    /// memory follows active contacts, not all contacts ever seen).
    pub fn prune(&self, now: Instant) {
        let mut hits = self.hits.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        hits.retain(|_, w| w.back().is_some_and(|t| now.saturating_duration_since(*t) < self.window));
    }

    /// How many keys are tracked.
    pub fn tracked(&self) -> usize {
        self.hits.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn five_per_minute_then_refused_then_allowed_again() {
        let rl = RateLimiter::new(5, Duration::from_secs(60));
        let t0 = Instant::now();
        for i in 0..5 {
            assert!(rl.check("a", t0 + Duration::from_secs(i)), "message {i}");
        }
        assert!(!rl.check("a", t0 + Duration::from_secs(10)));
        assert!(rl.check("b", t0 + Duration::from_secs(10)), "other contacts are unaffected");
        assert!(rl.check("a", t0 + Duration::from_secs(60)), "the first message left the window");
        assert!(!rl.check("a", t0 + Duration::from_secs(60)));
    }

    #[test]
    fn zero_disables_and_prune_forgets_idle_keys() {
        let rl = RateLimiter::new(0, Duration::from_secs(60));
        let t0 = Instant::now();
        assert!((0..100).all(|_| rl.check("a", t0)));
        let rl = RateLimiter::new(1, Duration::from_secs(60));
        rl.check("a", t0);
        rl.check("b", t0 + Duration::from_secs(30));
        rl.prune(t0 + Duration::from_secs(61));
        assert_eq!(rl.tracked(), 1);
    }
}
