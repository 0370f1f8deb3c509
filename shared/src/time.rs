//! Times as text: the one RFC 3339 parser and formatter of the workspace (configuration files,
//! API parameters, Alertmanager payloads, API answers), on `jiff`. Times travel as milliseconds
//! since the Unix epoch (`i64`) everywhere else.
//!
//! This module never reads the clock: "now" is always the caller's.

use jiff::Timestamp;

/// An RFC 3339 time, `Z` or any offset, fractional seconds optional
/// (`2026-12-01T02:00:00Z`, `2024-05-01T12:00:00.123+02:00`), as Unix milliseconds
/// (sub-millisecond digits are cut, not rounded). Years -9999 to 9999.
pub fn parse_rfc3339_ms(s: &str) -> Result<i64, String> {
    let text = s.trim();
    // jiff reads the wider Temporal grammar (`+0200`, `+25:00`, `[Europe/Berlin]`); RFC 3339
    // ends in `Z` or a `±HH:MM` offset of less than a day.
    match text.parse::<Timestamp>() {
        Ok(t) if has_rfc3339_offset(text) => Ok(t.as_millisecond()),
        _ => Err(format!(
            "invalid time {s:?}: expected RFC 3339 with Z or an offset, e.g. \
             \"2026-12-01T02:00:00Z\" or \"2026-12-01T03:00:00+01:00\""
        )),
    }
}

fn has_rfc3339_offset(s: &str) -> bool {
    if s.ends_with(['Z', 'z']) {
        return true;
    }
    let b = s.as_bytes();
    let Some(off) = b.len().checked_sub(6).and_then(|i| b.get(i..)) else {
        return false;
    };
    let digit = |i: usize| off[i].is_ascii_digit();
    matches!(off[0], b'+' | b'-')
        && digit(1)
        && digit(2)
        && off[3] == b':'
        && digit(4)
        && digit(5)
        && (off[1] - b'0') * 10 + (off[2] - b'0') <= 23
        && (off[4] - b'0') * 10 + (off[5] - b'0') <= 59
}

/// The latest time a request may carry: 9999-12-30T22:00:00Z, the last millisecond the
/// formatter can show (the last of jiff's range, which keeps every UTC offset within year 9999).
/// The earliest is the epoch. Every time the API takes is within `0..=MAX_MS`, so that window
/// and duration arithmetic on it cannot overflow and every stored time can be shown.
pub const MAX_MS: i64 = 253_402_207_200_000;

/// `ms` if it is within what the API takes (1970 to 9999, [`MAX_MS`]).
pub fn check_ms(ms: i64) -> Result<i64, String> {
    if (0..=MAX_MS).contains(&ms) {
        Ok(ms)
    } else {
        Err(format!(
            "time {ms} out of range: Unix milliseconds from 0 (1970) to {MAX_MS} (9999)"
        ))
    }
}

/// A time given as Unix milliseconds (digits only) or RFC 3339 ([`parse_rfc3339_ms`]), from 1970
/// to 9999 ([`check_ms`]): the form API parameters take.
pub fn parse_time_ms(s: &str) -> Result<i64, String> {
    let s = s.trim();
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        return match s.parse::<i64>() {
            Ok(ms) => check_ms(ms).map_err(|e| format!("invalid time {s:?}: {e}")),
            Err(_) => Err(format!(
                "invalid time {s:?}: Unix milliseconds out of range"
            )),
        };
    }
    match parse_rfc3339_ms(s) {
        Ok(ms) if ms >= 0 => Ok(ms),
        Ok(_) => Err(format!("invalid time {s:?}: before 1970")),
        Err(_) => Err(format!(
            "invalid time {s:?}: expected RFC 3339 (2026-01-31T12:00:00Z, or with an offset) or \
             Unix milliseconds"
        )),
    }
}

/// Unix milliseconds as RFC 3339 in UTC with milliseconds (`2026-01-31T12:00:00.000Z`);
/// `None` before 1970 or past year 9999.
pub fn format_rfc3339_ms(ms: i64) -> Option<String> {
    if ms < 0 {
        return None;
    }
    let t = Timestamp::from_millisecond(ms).ok()?;
    Some(t.strftime("%Y-%m-%dT%H:%M:%S%.3fZ").to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_utc_offsets_and_fractions() {
        let cases: &[(&str, Option<i64>)] = &[
            ("1970-01-01T00:00:01Z", Some(1000)),
            ("2026-12-01T02:00:00Z", Some(1_796_090_400_000)),
            ("2026-12-01T03:00:00+01:00", Some(1_796_090_400_000)),
            ("2026-12-01T01:30:00-00:30", Some(1_796_090_400_000)),
            ("2026-12-01T02:00:00.123456789Z", Some(1_796_090_400_123)),
            ("2026-12-01t02:00:00z", Some(1_796_090_400_000)),
            (" 2026-12-01T02:00:00Z ", Some(1_796_090_400_000)),
            ("1969-12-31T23:59:59Z", Some(-1000)),
            ("2024-02-29T00:00:00Z", Some(1_709_164_800_000)),
            ("2023-02-29T00:00:00Z", None),
            ("2026-12-01 02:00", None),
            ("2026-12-01T02:00:00", None),
            ("2026-13-01T02:00:00Z", None),
            ("2026-12-01T24:00:01Z", None),
            ("2026-12-01T02:00:00+01:60", None),
            ("2026-12-01T02:00:00+24:00", None),
            ("2026-12-01T02:00:00+0200", None),
            ("2026-12-01T02:00:00Z[Europe/Berlin]", None),
            ("10000-01-01T00:00:00Z", None),
            ("", None),
            ("yesterday", None),
        ];
        for (s, want) in cases {
            assert_eq!(parse_rfc3339_ms(s).ok(), *want, "{s:?}");
        }
    }

    #[test]
    fn api_times_take_milliseconds_too() {
        assert_eq!(parse_time_ms("1796090400000"), Ok(1_796_090_400_000));
        assert_eq!(parse_time_ms("2026-12-01T02:00:00Z"), Ok(1_796_090_400_000));
        assert!(parse_time_ms("99999999999999999999").is_err());
        assert!(parse_time_ms("-5").is_err());
        assert_eq!(parse_time_ms(&MAX_MS.to_string()), Ok(MAX_MS));
        assert!(parse_time_ms(&(MAX_MS + 1).to_string()).is_err());
        assert!(parse_time_ms(&i64::MAX.to_string()).is_err());
        assert!(parse_time_ms("1969-12-31T23:59:59Z").is_err());
        assert_eq!(
            parse_time_ms("9999-12-30T22:00:00Z"),
            Ok(MAX_MS),
            "the last time there is"
        );
        assert!(Timestamp::from_millisecond(MAX_MS + 1).is_err());
        assert_eq!(
            format_rfc3339_ms(MAX_MS).as_deref(),
            Some("9999-12-30T22:00:00.000Z")
        );
        assert!(parse_time_ms("9999-12-31T00:00:00Z").is_err());
        assert_eq!(check_ms(i64::MIN).ok(), None);
        assert!(parse_time_ms("").is_err());
    }

    #[test]
    fn formats_utc_with_milliseconds() {
        assert_eq!(
            format_rfc3339_ms(1_796_090_400_123).as_deref(),
            Some("2026-12-01T02:00:00.123Z")
        );
        assert_eq!(
            format_rfc3339_ms(0).as_deref(),
            Some("1970-01-01T00:00:00.000Z")
        );
        assert_eq!(format_rfc3339_ms(-1), None);
        assert_eq!(format_rfc3339_ms(i64::MAX), None);
        let back = parse_rfc3339_ms(&format_rfc3339_ms(1_234_567).expect("fmt")).expect("parse");
        assert_eq!(back, 1_234_567);
    }
}
