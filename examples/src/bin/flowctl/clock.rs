//! The clock a `run` or `chat` session sees: the system clock or a fixed `--now`, plus
//! virtual time that jumps forward to the session's wake-ups (the transcript runner's).

use flowcore_examples::transcript::{parse_rfc3339, VirtualClock};

use crate::Failure;

/// A clock from the `--now` flag: fixed when given, the system clock otherwise.
pub(crate) fn from_flag(now: Option<&str>) -> Result<VirtualClock, Failure> {
    let fixed = match now {
        None => None,
        Some(text) => Some(parse_rfc3339(text).map_err(|message| Failure::unreadable(format!("--now {message}")))?),
    };
    Ok(VirtualClock::new(fixed))
}

#[cfg(test)]
mod tests {
    use flowcore::Timestamp;

    use super::*;

    #[test]
    fn fixed_clock_parses_offsets_and_advances() {
        let mut clock = from_flag(Some("2026-01-05T09:30:00-03:00")).unwrap();
        assert_eq!(clock.now(), Timestamp::from_unix_seconds(1_767_616_200));
        clock.advance_to(Timestamp::from_unix_seconds(1_767_616_260));
        assert_eq!(clock.now(), Timestamp::from_unix_seconds(1_767_616_260));
        clock.advance_to(Timestamp::from_unix_seconds(0));
        assert_eq!(clock.now(), Timestamp::from_unix_seconds(1_767_616_260), "time never goes back");
    }

    #[test]
    fn bad_now_is_unreadable_input() {
        let failure = from_flag(Some("yesterday")).unwrap_err();
        assert_eq!(failure.code, 2);
    }
}
