//! Where the runtime reads the time: a [`Clock`] the host can replace.

use std::time::{SystemTime, UNIX_EPOCH};

use flowcore::Timestamp;

/// The time as the runtime sees it. Every timestamp the runtime writes (receive times,
/// leases, retries, wake-ups) comes from here; its waits use tokio's timer, so a test that
/// pauses tokio's time and uses [`VirtualClock`] runs hours of timeouts in microseconds.
pub trait Clock: Send + Sync + 'static {
    /// Now.
    fn now(&self) -> Timestamp;
}

/// The wall clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        let millis = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0);
        Timestamp::from_unix_millis(i64::try_from(millis).unwrap_or(i64::MAX))
    }
}

/// A clock that starts at a chosen time and moves with tokio's timer: under
/// `tokio::time::pause()` (or `#[tokio::test(start_paused = true)]`) it jumps straight to
/// the next timer the runtime waits for.
///
/// ```
/// use flowcore::Timestamp;
/// use flowcore_store::runtime::{Clock, VirtualClock};
/// # tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().unwrap().block_on(async {
/// let clock = VirtualClock::starting_at(Timestamp::from_unix_seconds(1_700_000_000));
/// tokio::time::sleep(std::time::Duration::from_secs(3600)).await; // instant: time is paused
/// assert_eq!(clock.now(), Timestamp::from_unix_seconds(1_700_003_600));
/// # });
/// ```
#[derive(Clone, Copy, Debug)]
pub struct VirtualClock {
    start: Timestamp,
    started: tokio::time::Instant,
}

impl VirtualClock {
    /// A clock that reads `start` now. Call it inside a tokio runtime.
    pub fn starting_at(start: Timestamp) -> VirtualClock {
        VirtualClock { start, started: tokio::time::Instant::now() }
    }
}

impl Clock for VirtualClock {
    fn now(&self) -> Timestamp {
        let elapsed = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.start.saturating_add_millis(elapsed)
    }
}
