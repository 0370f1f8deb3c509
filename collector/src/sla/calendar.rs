//! SLA windows and service hours in a time zone, on `jiff` and its bundled tz database.
//!
//! A calendar window resets at the real boundary in its zone (a month is 28 to 31 days, a day
//! 23 to 25 hours across a DST change); a rolling window is the last fixed duration. Service
//! hours are civil times of each weekday in the zone, so "08:00-18:00" stays 08:00 local time
//! on both sides of a DST change. Nothing here reads the clock.

use std::collections::BTreeSet;

use jiff::civil::{Date, Weekday};
use jiff::tz::TimeZone;
use jiff::{Timestamp, ToSpan};
use vigil_shared::config::SlaWindow;

use super::spans::{Span, Spans};

/// A time zone by IANA name (`Europe/Berlin`, `UTC`), from the bundled database.
pub fn zone(name: &str) -> Result<TimeZone, String> {
    TimeZone::get(name).map_err(|_| {
        format!("unknown time zone {name:?}: expected an IANA name such as \"Europe/Berlin\" or \"UTC\"")
    })
}

/// The civil date of `ms` in `tz`; `None` outside jiff's range (years -9999..9999).
fn date_of(ms: i64, tz: &TimeZone) -> Option<Date> {
    Some(
        Timestamp::from_millisecond(ms)
            .ok()?
            .to_zoned(tz.clone())
            .date(),
    )
}

/// The first instant of `date` in `tz` (00:00, or the first existing time after a gap).
fn start_of(date: Date, tz: &TimeZone) -> Option<i64> {
    Some(date.to_zoned(tz.clone()).ok()?.timestamp().as_millisecond())
}

/// The window's span that ends at `now_ms`: `[now - d, now)` for a rolling window; for a calendar
/// window the whole current period `[start, next start)` (its end may lie after `now`).
pub fn period(window: SlaWindow, now_ms: i64, tz: &TimeZone) -> Option<Span> {
    let first = |d: Date| -> Option<Date> {
        Some(match window {
            SlaWindow::Rolling(_) => d,
            SlaWindow::CalendarWeek => d
                .checked_sub((d.weekday().to_monday_zero_offset() as i64).days())
                .ok()?,
            SlaWindow::CalendarMonth => d.first_of_month(),
            SlaWindow::CalendarQuarter => {
                let m = (d.month() - 1) / 3 * 3 + 1;
                Date::new(d.year(), m, 1).ok()?
            }
            SlaWindow::CalendarYear => d.first_of_year(),
        })
    };
    let next = |d: Date| -> Option<Date> {
        match window {
            SlaWindow::Rolling(_) => None,
            SlaWindow::CalendarWeek => d.checked_add(1.week()).ok(),
            SlaWindow::CalendarMonth => d.checked_add(1.month()).ok(),
            SlaWindow::CalendarQuarter => d.checked_add(3.months()).ok(),
            SlaWindow::CalendarYear => d.checked_add(1.year()).ok(),
        }
    };
    match window {
        SlaWindow::Rolling(d) => {
            let len = i64::try_from(d.as_millis()).ok()?;
            Some(Span::new(now_ms.checked_sub(len)?, now_ms))
        }
        _ => {
            let start = first(date_of(now_ms, tz)?)?;
            Some(Span::new(start_of(start, tz)?, start_of(next(start)?, tz)?))
        }
    }
}

/// The calendar days (in `tz`) that `span` touches, each as its span clipped to `span`: the
/// daily series of a report. At most `max` days.
pub fn days(span: Span, tz: &TimeZone, max: usize) -> Vec<(Date, Span)> {
    let mut out = Vec::new();
    let Some(mut d) = date_of(span.start, tz) else {
        return out;
    };
    while out.len() < max {
        let (Some(a), Some(b)) = (
            start_of(d, tz),
            d.tomorrow().ok().and_then(|n| start_of(n, tz)),
        ) else {
            break;
        };
        if a >= span.end {
            break;
        }
        let s = Span::new(a, b).intersect(span);
        if !s.is_empty() {
            out.push((d, s));
        }
        match d.tomorrow() {
            Ok(n) => d = n,
            Err(_) => break,
        }
    }
    out
}

/// Service hours: the weekdays and the time of day they cover, holidays excluded, in a zone.
#[derive(Debug, Clone, PartialEq)]
pub struct Schedule {
    /// Monday first.
    pub days: [bool; 7],
    /// Minutes after local midnight, `start < end <= 1440`.
    pub start_min: u16,
    pub end_min: u16,
    pub holidays: BTreeSet<Date>,
    pub tz: TimeZone,
}

impl Schedule {
    /// Every day, all day (in UTC): what an SLA without `[sla.schedule]` has.
    pub fn always() -> Schedule {
        Schedule {
            days: [true; 7],
            start_min: 0,
            end_min: 1440,
            holidays: BTreeSet::new(),
            tz: TimeZone::UTC,
        }
    }

    pub fn is_always(&self) -> bool {
        self.days == [true; 7]
            && self.start_min == 0
            && self.end_min == 1440
            && self.holidays.is_empty()
    }

    /// The service time within `span`.
    pub fn within(&self, span: Span) -> Spans {
        if span.is_empty() {
            return Spans::new();
        }
        if self.is_always() {
            return Spans::one(span);
        }
        let mut out = Vec::new();
        // A day before and after: a zone's day may start before `span` and reach into it.
        for (date, _) in days(
            Span::new(span.start.saturating_sub(86_400_000), span.end),
            &self.tz,
            100_000,
        ) {
            if !self.days[weekday_index(date.weekday())] || self.holidays.contains(&date) {
                continue;
            }
            let at = |min: u16| -> Option<i64> {
                if min == 1440 {
                    return start_of(date.tomorrow().ok()?, &self.tz);
                }
                let dt = date.at((min / 60) as i8, (min % 60) as i8, 0, 0);
                Some(
                    dt.to_zoned(self.tz.clone())
                        .ok()?
                        .timestamp()
                        .as_millisecond(),
                )
            };
            if let (Some(a), Some(b)) = (at(self.start_min), at(self.end_min)) {
                out.push(Span::new(a, b).intersect(span));
            }
        }
        Spans::from_unsorted(out)
    }
}

fn weekday_index(w: Weekday) -> usize {
    w.to_monday_zero_offset() as usize
}

/// `"mon"`..`"sun"` as a Monday-first index.
pub fn parse_weekday(s: &str) -> Result<usize, String> {
    const NAMES: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];
    NAMES
        .iter()
        .position(|n| n.eq_ignore_ascii_case(s.trim()))
        .ok_or_else(|| {
            format!("invalid day {s:?}: expected one of mon, tue, wed, thu, fri, sat, sun")
        })
}

/// `"08:00-18:00"` as minutes after midnight; `"00:00-24:00"` is the whole day.
pub fn parse_hours(s: &str) -> Result<(u16, u16), String> {
    let bad = || format!("invalid hours {s:?}: expected \"HH:MM-HH:MM\", e.g. \"08:00-18:00\"");
    let (a, b) = s.trim().split_once('-').ok_or_else(bad)?;
    let minutes = |t: &str| -> Option<u16> {
        let (h, m) = t.trim().split_once(':')?;
        if h.len() != 2 || m.len() != 2 {
            return None;
        }
        let (h, m): (u16, u16) = (h.parse().ok()?, m.parse().ok()?);
        (m < 60 && (h < 24 || (h == 24 && m == 0))).then_some(h * 60 + m)
    };
    let (a, b) = (minutes(a).ok_or_else(bad)?, minutes(b).ok_or_else(bad)?);
    if a >= b {
        return Err(format!(
            "invalid hours {s:?}: the start must be before the end"
        ));
    }
    Ok((a, b))
}

/// `"2026-12-25"` as a civil date.
pub fn parse_date(s: &str) -> Result<Date, String> {
    s.trim()
        .parse::<Date>()
        .map_err(|_| format!("invalid date {s:?}: expected YYYY-MM-DD, e.g. \"2026-12-25\""))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn ms(s: &str) -> i64 {
        vigil_shared::time::parse_rfc3339_ms(s).expect("time")
    }

    fn berlin() -> TimeZone {
        zone("Europe/Berlin").expect("bundled tz database")
    }

    #[test]
    fn calendar_months_reset_at_the_boundary_in_the_zone() {
        let tz = berlin();
        // 2026-02-28T23:30Z is already March 1st in Berlin (UTC+1).
        let p = period(SlaWindow::CalendarMonth, ms("2026-02-28T23:30:00Z"), &tz).expect("period");
        assert_eq!(
            p,
            Span::new(ms("2026-02-28T23:00:00Z"), ms("2026-03-31T22:00:00Z"))
        );
        // 31 days minus the hour lost to summer time on March 29th.
        assert_eq!(p.len(), 31 * 86_400_000 - 3_600_000);
        let utc = period(
            SlaWindow::CalendarMonth,
            ms("2026-02-28T23:30:00Z"),
            &TimeZone::UTC,
        )
        .expect("utc");
        assert_eq!(
            utc,
            Span::new(ms("2026-02-01T00:00:00Z"), ms("2026-03-01T00:00:00Z"))
        );
    }

    #[test]
    fn weeks_quarters_years_and_rolling_windows() {
        let tz = berlin();
        let now = ms("2026-12-03T12:00:00Z"); // a Thursday
        assert_eq!(
            period(SlaWindow::CalendarWeek, now, &tz),
            Some(Span::new(
                ms("2026-11-29T23:00:00Z"),
                ms("2026-12-06T23:00:00Z")
            ))
        );
        assert_eq!(
            period(SlaWindow::CalendarQuarter, now, &tz),
            Some(Span::new(
                ms("2026-09-30T22:00:00Z"),
                ms("2026-12-31T23:00:00Z")
            ))
        );
        assert_eq!(
            period(SlaWindow::CalendarYear, now, &tz),
            Some(Span::new(
                ms("2025-12-31T23:00:00Z"),
                ms("2026-12-31T23:00:00Z")
            ))
        );
        assert_eq!(
            period(
                SlaWindow::Rolling(Duration::from_secs(7 * 86_400)),
                now,
                &tz
            ),
            Some(Span::new(now - 7 * 86_400_000, now))
        );
        assert_eq!(
            period(SlaWindow::Rolling(Duration::from_secs(60)), i64::MIN, &tz),
            None
        );
        assert_eq!(period(SlaWindow::CalendarYear, i64::MAX, &tz), None);
    }

    #[test]
    fn service_hours_stay_local_across_a_dst_change() {
        let tz = berlin();
        let s = Schedule {
            days: [true, true, true, true, true, false, false],
            start_min: 8 * 60,
            end_min: 18 * 60,
            holidays: BTreeSet::from([parse_date("2026-03-27").expect("date")]),
            tz,
        };
        // Week of the change to summer time (Sunday 2026-03-29): Mon-Thu at UTC+1, Friday a
        // holiday; the next Monday at UTC+2.
        let span = Span::new(ms("2026-03-23T00:00:00Z"), ms("2026-03-31T00:00:00Z"));
        let within = s.within(span);
        assert_eq!(within.total(), 5 * 10 * 3_600_000);
        let got: Vec<Span> = within.iter().copied().collect();
        assert_eq!(
            got[0],
            Span::new(ms("2026-03-23T07:00:00Z"), ms("2026-03-23T17:00:00Z"))
        );
        assert_eq!(
            got[4],
            Span::new(ms("2026-03-30T06:00:00Z"), ms("2026-03-30T16:00:00Z"))
        );
        // A span that starts inside a service day is clipped, not widened.
        let part = s.within(Span::new(
            ms("2026-03-23T12:00:00Z"),
            ms("2026-03-23T13:00:00Z"),
        ));
        assert_eq!(part.total(), 3_600_000);
    }

    #[test]
    fn days_follow_the_zone_and_are_23_or_25_hours_at_dst_changes() {
        let tz = berlin();
        let span = Span::new(ms("2026-10-24T22:00:00Z"), ms("2026-10-26T23:00:00Z"));
        let d = days(span, &tz, 10);
        let lens: Vec<i64> = d.iter().map(|(_, s)| s.len() / 3_600_000).collect();
        assert_eq!(lens, vec![25, 24], "Oct 25th has 25 hours in Berlin");
        assert_eq!(days(span, &tz, 1).len(), 1, "bounded");
    }

    #[test]
    fn parsers_reject_what_they_cannot_read() {
        assert_eq!(parse_hours("08:00-18:00"), Ok((480, 1080)));
        assert_eq!(parse_hours("00:00-24:00"), Ok((0, 1440)));
        for bad in [
            "18:00-08:00",
            "8:00-18:00",
            "08:00",
            "24:30-25:00",
            "08:60-09:00",
        ] {
            assert!(parse_hours(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_weekday("Fri"), Ok(4));
        assert!(parse_weekday("friday").is_err());
        assert!(parse_date("2026-02-30").is_err());
        assert!(zone("Mars/Olympus").is_err());
    }
}
