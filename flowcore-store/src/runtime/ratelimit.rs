//! The per-contact inbound rate limit (the original design's "5 messages per minute").
//!
//! A message is run through the flow only if fewer than `limit` of the contact's earlier
//! messages were counted in the minute before it was received; one over the limit is logged
//! (marked [`RATE_LIMITED`](flowcore_store::RATE_LIMITED), so it does not count itself) and
//! not run. The count comes from the store's message log
//! ([`inbound_counts`](flowcore_store::MessageLog::inbound_counts)), not from process memory:
//! a conversation's messages are handled one at a time, in order, by whichever instance
//! claims them, and each turn's log rows commit before the next message can be claimed, so
//! every instance sees the same count and the limit holds across instances and restarts.
//!
//! The window is measured from the time each message was received, not from when it is
//! handled: a backlog handled late is judged as the contact sent it.

use std::time::Duration;

use flowcore::Timestamp;

/// A per-contact limit on inbound messages per window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimit {
    limit: u32,
    window: Duration,
}

impl RateLimit {
    /// At most `limit` messages per `window` per contact; `limit == 0` disables the limit.
    pub fn new(limit: u32, window: Duration) -> Self {
        RateLimit { limit, window }
    }

    /// False when the limit is disabled (nothing to count).
    pub fn is_enabled(&self) -> bool {
        self.limit > 0
    }

    /// Messages allowed per window (0: no limit).
    pub fn limit(&self) -> u64 {
        u64::from(self.limit)
    }

    /// The start of the window a message received at `received_at` is judged in: the
    /// messages logged after it count.
    pub fn window_start(&self, received_at: Timestamp) -> Timestamp {
        let window = i64::try_from(self.window.as_millis()).unwrap_or(i64::MAX);
        Timestamp::from_unix_millis(received_at.as_unix_millis().saturating_sub(window))
    }

    /// Whether a message may run, given how many of the contact's messages already counted
    /// in its window.
    pub fn allows(&self, counted: u64) -> bool {
        !self.is_enabled() || counted < u64::from(self.limit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn five_counted_in_the_window_refuse_the_sixth() {
        let limit = RateLimit::new(5, Duration::from_secs(60));
        assert!(limit.is_enabled());
        assert!((0..5).all(|counted| limit.allows(counted)));
        assert!(!limit.allows(5));
        assert!(!limit.allows(6));
    }

    #[test]
    fn the_window_is_the_minute_before_the_message_was_received() {
        let limit = RateLimit::new(5, Duration::from_secs(60));
        let received = Timestamp::from_unix_seconds(1_700_000_100);
        assert_eq!(limit.window_start(received), Timestamp::from_unix_seconds(1_700_000_040));
        let early = Timestamp::from_unix_millis(i64::MIN + 5);
        assert_eq!(limit.window_start(early), Timestamp::from_unix_millis(i64::MIN), "saturates");
    }

    #[test]
    fn zero_disables_the_limit() {
        let limit = RateLimit::new(0, Duration::from_secs(60));
        assert!(!limit.is_enabled());
        assert!(limit.allows(u64::MAX));
    }
}
