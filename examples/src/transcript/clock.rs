//! RFC 3339 times for `@now`, the clock a conversation runs on, and how a driver feeds a
//! turn on it.

use std::time::{SystemTime, UNIX_EPOCH};

use flowcore::{EffectId, Input, Output, Session, SessionStatus, Timestamp};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// Parses an RFC 3339 time such as `2026-01-05T09:30:00-03:00`.
///
/// ```
/// use flowcore::Timestamp;
/// use flowcore_examples::transcript::parse_rfc3339;
/// assert_eq!(parse_rfc3339("1970-01-01T00:00:01Z"), Ok(Timestamp::from_unix_seconds(1)));
/// assert!(parse_rfc3339("yesterday").is_err());
/// ```
pub fn parse_rfc3339(text: &str) -> Result<Timestamp, String> {
    let parsed =
        OffsetDateTime::parse(text, &Rfc3339).map_err(|err| format!("{text:?} is not an RFC 3339 time: {err}"))?;
    let millis = parsed.unix_timestamp_nanos() / 1_000_000;
    i64::try_from(millis).map(Timestamp::from_unix_millis).map_err(|_| format!("{text:?} is out of range"))
}

/// Formats a time as RFC 3339 in UTC, with milliseconds when it has them.
///
/// ```
/// use flowcore::Timestamp;
/// use flowcore_examples::transcript::format_rfc3339;
/// assert_eq!(format_rfc3339(Timestamp::from_unix_seconds(1_767_616_200)), "2026-01-05T12:30:00Z");
/// ```
pub fn format_rfc3339(at: Timestamp) -> String {
    let nanos = i128::from(at.as_unix_millis()) * 1_000_000;
    OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| "1970-01-01T00:00:00Z".to_string())
}

/// A clock that is fixed or the system's, plus virtual time that jumps to wake-ups, so a
/// delay or an idle timeout never waits for real.
#[derive(Debug)]
pub struct VirtualClock {
    fixed: Option<Timestamp>,
    skipped_millis: i64,
}

impl VirtualClock {
    /// A clock at `fixed`, or at the system's time when `None`.
    ///
    /// ```
    /// use flowcore::Timestamp;
    /// use flowcore_examples::transcript::VirtualClock;
    /// let mut clock = VirtualClock::new(Some(Timestamp::from_unix_seconds(100)));
    /// clock.advance_to(Timestamp::from_unix_seconds(160));
    /// assert_eq!(clock.now(), Timestamp::from_unix_seconds(160));
    /// ```
    pub fn new(fixed: Option<Timestamp>) -> Self {
        VirtualClock { fixed, skipped_millis: 0 }
    }

    /// The current time: the fixed or system time plus the virtual time skipped so far.
    pub fn now(&self) -> Timestamp {
        let base = self.fixed.unwrap_or_else(system_now);
        Timestamp::from_unix_millis(base.as_unix_millis().saturating_add(self.skipped_millis))
    }

    /// Moves virtual time forward so that `now()` is at least `target`; never back.
    pub fn advance_to(&mut self, target: Timestamp) {
        let gap = target.millis_since(self.now());
        if gap > 0 {
            self.skipped_millis = self.skipped_millis.saturating_add(gap);
        }
    }
}

/// How many delays in a row are skipped before the driver stops and waits for input, so a
/// flow that only ever sleeps cannot spin forever.
const MAX_CONSECUTIVE_DELAYS: usize = 1_000;

/// Feeds `input` through `turn`, then a tick for each delay it leads to, skipped in virtual
/// time so their outputs follow at once; a tick first moves the clock to the session's
/// wake-up. `turn` is one call to the engine (`handle` or `handle_in`, plus whatever the
/// driver records about it). Every driver of `flowctl` and `.chat` files runs turns this way.
///
/// ```
/// use flowcore::{Flow, Input, Session, SessionOptions, Timestamp};
/// use flowcore_examples::transcript::{feed_skipping_delays, VirtualClock};
/// let flow = Flow::from_json(r#"{"id":"f","nodes":[{"id":"s","type":"start"},
///   {"id":"d","type":"delay","data":{"seconds":60}},{"id":"m","type":"message","data":{"content":"oi"}}],
///   "edges":[{"id":"a","source":"s","target":"d"},{"id":"b","source":"d","target":"m"}]}"#)?.compile().unwrap();
/// let mut session = Session::new(&flow, SessionOptions::default());
/// let mut clock = VirtualClock::new(Some(Timestamp::from_unix_seconds(0)));
/// let outputs = feed_skipping_delays(&mut session, &mut clock, Input::text("oi"), |session, input, now| {
///     session.handle(&flow, input, now).map(|turn| turn.outputs)
/// })?;
/// assert_eq!(outputs.len(), 2, "the message after the delay, then the end");
/// assert_eq!(clock.now(), Timestamp::from_unix_seconds(60));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn feed_skipping_delays<E>(
    session: &mut Session,
    clock: &mut VirtualClock,
    input: Input,
    mut turn: impl FnMut(&mut Session, Input, Timestamp) -> Result<Vec<Output>, E>,
) -> Result<Vec<Output>, E> {
    if input == Input::Tick {
        if let Some(wake_at) = session.wake_at() {
            clock.advance_to(wake_at);
        }
    }
    let mut outputs = turn(session, input, clock.now())?;
    for _ in 0..MAX_CONSECUTIVE_DELAYS {
        if session.status() != SessionStatus::Sleeping {
            break;
        }
        let Some(wake_at) = session.wake_at() else { break };
        clock.advance_to(wake_at);
        outputs.extend(turn(session, Input::Tick, clock.now())?);
    }
    Ok(outputs)
}

/// The effect a session waits for after `outputs`: the last one that expects a result.
pub fn awaited_effect(outputs: &[Output]) -> Option<EffectId> {
    outputs.iter().rev().find_map(|output| match output {
        Output::Effect(request) if request.expects_result() => Some(request.id),
        _ => None,
    })
}

fn system_now() -> Timestamp {
    let millis = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0);
    Timestamp::from_unix_millis(i64::try_from(millis).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn virtual_time_only_moves_forward() {
        let mut clock = VirtualClock::new(Some(Timestamp::from_unix_seconds(100)));
        clock.advance_to(Timestamp::from_unix_seconds(160));
        assert_eq!(clock.now(), Timestamp::from_unix_seconds(160));
        clock.advance_to(Timestamp::from_unix_seconds(0));
        assert_eq!(clock.now(), Timestamp::from_unix_seconds(160));
    }

    #[test]
    fn formatted_times_parse_back() {
        for millis in [0, 1_767_616_200_000, 1_767_616_200_123] {
            let at = Timestamp::from_unix_millis(millis);
            assert_eq!(parse_rfc3339(&format_rfc3339(at)), Ok(at));
        }
    }
}
