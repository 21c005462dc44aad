//! The clock a `run` or `chat` session sees: the system clock or a fixed `--now`, plus
//! virtual time that jumps forward to the session's wake-ups.

use std::time::{SystemTime, UNIX_EPOCH};

use flowcore::Timestamp;

use crate::Failure;

/// A clock that can be fixed and that only moves forward.
#[derive(Debug)]
pub(crate) struct Clock {
    fixed: Option<Timestamp>,
    /// Virtual time added by ticks, so waiting for a wake-up never sleeps for real.
    skipped_millis: i64,
}

impl Clock {
    /// A clock from the `--now` flag: fixed when given, the system clock otherwise.
    pub(crate) fn from_flag(now: Option<&str>) -> Result<Self, Failure> {
        let fixed = match now {
            None => None,
            Some(text) => Some(parse_rfc3339(text)?),
        };
        Ok(Clock { fixed, skipped_millis: 0 })
    }

    /// The current time.
    pub(crate) fn now(&self) -> Timestamp {
        let base = self.fixed.unwrap_or_else(system_now);
        Timestamp::from_unix_millis(base.as_unix_millis().saturating_add(self.skipped_millis))
    }

    /// Moves virtual time forward so that `now()` is at least `target`.
    pub(crate) fn advance_to(&mut self, target: Timestamp) {
        let gap = target.millis_since(self.now());
        if gap > 0 {
            self.skipped_millis = self.skipped_millis.saturating_add(gap);
        }
    }
}

fn parse_rfc3339(text: &str) -> Result<Timestamp, Failure> {
    flowcore_examples::transcript::parse_rfc3339(text)
        .map_err(|message| Failure::unreadable(format!("--now {message}")))
}

fn system_now() -> Timestamp {
    let millis = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0);
    Timestamp::from_unix_millis(i64::try_from(millis).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_clock_parses_offsets_and_advances() {
        let mut clock = Clock::from_flag(Some("2026-01-05T09:30:00-03:00")).unwrap();
        assert_eq!(clock.now(), Timestamp::from_unix_seconds(1_767_616_200));
        clock.advance_to(Timestamp::from_unix_seconds(1_767_616_260));
        assert_eq!(clock.now(), Timestamp::from_unix_seconds(1_767_616_260));
        clock.advance_to(Timestamp::from_unix_seconds(0));
        assert_eq!(clock.now(), Timestamp::from_unix_seconds(1_767_616_260), "time never goes back");
    }

    #[test]
    fn bad_now_is_unreadable_input() {
        let failure = Clock::from_flag(Some("yesterday")).unwrap_err();
        assert_eq!(failure.code, 2);
    }
}
