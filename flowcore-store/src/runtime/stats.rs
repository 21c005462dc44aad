//! Counters of one runtime (this process only).

use std::sync::atomic::{AtomicU64, Ordering};

/// What one runtime did since it was built; read with [`Stats::get`].
#[derive(Default, Debug)]
pub struct Stats {
    /// Inbound messages written to the inbox.
    pub messages_accepted: AtomicU64,
    /// Duplicate deliveries ignored.
    pub duplicates: AtomicU64,
    /// Delivery statuses recorded.
    pub statuses: AtomicU64,
    /// Messages logged but not run because of the rate limit.
    pub rate_limited: AtomicU64,
    /// Turns committed.
    pub turns: AtomicU64,
    /// Replies accepted by the delivery.
    pub sent: AtomicU64,
    /// Replies a turn claimed as it committed them, handed to the sender without a claim.
    pub handed_over: AtomicU64,
    /// Send attempts that will be retried.
    pub send_retries: AtomicU64,
    /// Replies failed for good.
    pub send_failed: AtomicU64,
}

impl Stats {
    /// Reads a counter.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    pub(crate) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}
