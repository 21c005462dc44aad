//! Calendar arithmetic for the `datetime` node (proleptic Gregorian, fixed UTC offsets).

use crate::Timestamp;

/// The English weekday names, Monday first (ISO 8601 numbering 1–7).
pub(crate) const WEEKDAYS: [&str; 7] = ["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"];

/// A local date and time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Local {
    pub(crate) year: i64,
    pub(crate) month: u32,
    pub(crate) day: u32,
    /// Minutes since local midnight.
    pub(crate) minute_of_day: u32,
    /// 0 = Monday … 6 = Sunday.
    pub(crate) weekday: usize,
}

impl Local {
    /// `now` shifted by `offset_minutes` from UTC.
    pub(crate) fn at(now: Timestamp, offset_minutes: i32) -> Local {
        let secs = now.as_unix_seconds().saturating_add(i64::from(offset_minutes) * 60);
        let days = secs.div_euclid(86_400);
        let minute_of_day = (secs.rem_euclid(86_400) / 60) as u32;
        let (year, month, day) = civil_from_days(days);
        // 1970-01-01 was a Thursday (index 3).
        let weekday = (days + 3).rem_euclid(7) as usize;
        Local { year, month, day, minute_of_day, weekday }
    }

    /// `YYYY-MM-DD`.
    pub(crate) fn date(&self) -> String {
        format!("{:04}-{:02}-{:02}", self.year, self.month, self.day)
    }

    /// `HH:MM`.
    pub(crate) fn time(&self) -> String {
        format!("{:02}:{:02}", self.minute_of_day / 60, self.minute_of_day % 60)
    }
}

/// Howard Hinnant's `civil_from_days`.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Parses `HH:MM` (24-hour; `24:00` allowed) into minutes since midnight.
pub(crate) fn parse_hhmm(text: &str) -> Option<u32> {
    let (h, m) = text.trim().split_once(':')?;
    let (h, m): (u32, u32) = (h.parse().ok()?, m.parse().ok()?);
    (m < 60 && (h < 24 || (h == 24 && m == 0))).then_some(h * 60 + m)
}

/// Parses a UTC offset: `"-03:00"`, `"+0530"`, `"UTC-3"`, or a number of hours.
pub(crate) fn parse_offset(value: &serde_json::Value) -> Option<i32> {
    if let Some(h) = value.as_f64() {
        return (h.abs() <= 14.0).then(|| (h * 60.0).round() as i32);
    }
    let text = value.as_str()?.trim();
    let text = text.strip_prefix("UTC").or_else(|| text.strip_prefix("GMT")).unwrap_or(text);
    if text.is_empty() || text == "Z" {
        return Some(0);
    }
    let (sign, rest) = match text.as_bytes().first()? {
        b'+' => (1, &text[1..]),
        b'-' => (-1, &text[1..]),
        _ => (1, text),
    };
    let (h, m) = match rest.split_once(':') {
        Some((h, m)) => (h.parse::<i32>().ok()?, m.parse::<i32>().ok()?),
        None if rest.len() == 4 => (rest[..2].parse().ok()?, rest[2..].parse().ok()?),
        None => (rest.parse().ok()?, 0),
    };
    (h <= 14 && m < 60).then_some(sign * (h * 60 + m))
}

/// Parses a weekday name (English or Portuguese, full or three letters) or number
/// (1 = Monday … 7 = Sunday; 0 = Sunday) into 0 = Monday … 6 = Sunday.
pub(crate) fn parse_weekday(value: &serde_json::Value) -> Option<usize> {
    if let Some(n) = value.as_u64() {
        return match n {
            0 | 7 => Some(6),
            1..=6 => Some(n as usize - 1),
            _ => None,
        };
    }
    let t = value.as_str()?.trim().to_lowercase();
    let names: [&[&str]; 7] = [
        &["mon", "monday", "seg", "segunda", "segunda-feira"],
        &["tue", "tuesday", "ter", "terça", "terca", "terça-feira"],
        &["wed", "wednesday", "qua", "quarta", "quarta-feira"],
        &["thu", "thursday", "qui", "quinta", "quinta-feira"],
        &["fri", "friday", "sex", "sexta", "sexta-feira"],
        &["sat", "saturday", "sab", "sáb", "sábado", "sabado"],
        &["sun", "sunday", "dom", "domingo"],
    ];
    names.iter().position(|n| n.contains(&t.as_str()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn calendar_table() {
        let cases = [
            (0, 0, "1970-01-01", "00:00", "thursday"),
            (1_700_000_000, 0, "2023-11-14", "22:13", "tuesday"),
            (1_700_000_000, -180, "2023-11-14", "19:13", "tuesday"),
            (1_700_000_000, 120, "2023-11-15", "00:13", "wednesday"),
            (951_782_400, 0, "2000-02-29", "00:00", "tuesday"),
            (-1, 0, "1969-12-31", "23:59", "wednesday"),
        ];
        for (secs, offset, date, time, weekday) in cases {
            let l = Local::at(Timestamp::from_unix_seconds(secs), offset);
            assert_eq!((l.date().as_str(), l.time().as_str(), WEEKDAYS[l.weekday]), (date, time, weekday), "{secs}");
        }
    }

    #[test]
    fn parses_settings() {
        assert_eq!(parse_hhmm("09:30"), Some(570));
        assert_eq!(parse_hhmm("24:00"), Some(1440));
        assert_eq!(parse_hhmm("25:00"), None);
        assert_eq!(parse_offset(&json!("-03:00")), Some(-180));
        assert_eq!(parse_offset(&json!("UTC+0530")), Some(330));
        assert_eq!(parse_offset(&json!(-3)), Some(-180));
        assert_eq!(parse_offset(&json!("nope")), None);
        assert_eq!(parse_weekday(&json!("Seg")), Some(0));
        assert_eq!(parse_weekday(&json!("sunday")), Some(6));
        assert_eq!(parse_weekday(&json!(7)), Some(6));
        assert_eq!(parse_weekday(&json!(9)), None);
    }
}
