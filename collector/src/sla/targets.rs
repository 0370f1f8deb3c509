//! Incident service levels (ITIL): how long an incident of each priority may wait for a response
//! (its acknowledgement) and for its resolution, the clocks that measure it (inside an SLA's
//! service hours when it has them), and the levels at which warnings go out.
//!
//! Every incident has targets: those of the strictest `[[sla]]` with `[sla.incident_targets]`
//! whose scope covers its CI (priorities or targets it leaves out take the defaults), else
//! [`IncidentTargets::DEFAULT`] around the clock. Both clocks start when the incident is created;
//! the response clock stops at its acknowledgement (or its resolution, whichever comes first),
//! the resolution clock at its resolution. Nothing here reads the clock or the store.

use super::calendar::Schedule;
use super::spans::Span;

/// The levels, in percent of a target, at which the timeline and webhooks hear of it.
pub const LEVELS: [u8; 3] = [50, 75, 100];

/// The two clocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Clock {
    Response,
    Resolution,
}

impl Clock {
    pub const ALL: [Clock; 2] = [Clock::Response, Clock::Resolution];

    /// The `target` label of `vigil_incident_sla_breaches_total` and the events' `target`.
    pub fn as_str(self) -> &'static str {
        match self {
            Clock::Response => "response",
            Clock::Resolution => "resolution",
        }
    }
}

const MIN: i64 = 60_000;
const HOUR: i64 = 60 * MIN;
const DAY: i64 = 24 * HOUR;

/// Response and resolution targets per priority (index 0 = P1), in milliseconds of service time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IncidentTargets {
    pub response_ms: [i64; 5],
    pub resolution_ms: [i64; 5],
}

impl IncidentTargets {
    /// P1 15m / 4h, P2 1h / 8h, P3 4h / 1d, P4 1d / 3d, P5 3d / 10d.
    pub const DEFAULT: IncidentTargets = IncidentTargets {
        response_ms: [15 * MIN, HOUR, 4 * HOUR, DAY, 3 * DAY],
        resolution_ms: [4 * HOUR, 8 * HOUR, DAY, 3 * DAY, 10 * DAY],
    };

    /// The target of `clock` for `priority` (1..=5; out of range is P5).
    pub fn get(&self, clock: Clock, priority: u8) -> i64 {
        let i = usize::from(priority.clamp(1, 5) - 1);
        match clock {
            Clock::Response => self.response_ms[i],
            Clock::Resolution => self.resolution_ms[i],
        }
    }
}

/// Longest target: 90 days.
pub const MAX_TARGET_MS: i64 = 90 * DAY;

/// Service time between `from` and `to` (0 when `to <= from`).
pub fn elapsed_ms(schedule: Option<&Schedule>, from: i64, to: i64) -> i64 {
    let span = Span::new(from, to.max(from));
    match schedule {
        None => span.len(),
        Some(s) => s.within(span).total(),
    }
}

/// When `target_ms` of service time since `from` are spent; `None` past [`MAX_TARGET_MS`] ×
/// 10 of wall time (a schedule with almost no service time).
pub fn due_ms(schedule: Option<&Schedule>, from: i64, target_ms: i64) -> Option<i64> {
    let Some(s) = schedule.filter(|s| !s.is_always()) else {
        return from.checked_add(target_ms);
    };
    // Week by week, then inside the week that crosses the target.
    let mut start = from;
    let mut spent = 0i64;
    let limit = from.checked_add(MAX_TARGET_MS.saturating_mul(10))?;
    while start < limit {
        let end = start.saturating_add(7 * DAY);
        for span in s.within(Span::new(start, end)).iter() {
            if spent + span.len() >= target_ms {
                return Some(span.start + (target_ms - spent));
            }
            spent += span.len();
        }
        start = end;
    }
    None
}

/// The highest level of [`LEVELS`] reached by `elapsed` of `target` (0 for none).
pub fn level(elapsed_ms: i64, target_ms: i64) -> u8 {
    if target_ms <= 0 {
        return 100;
    }
    let percent = (elapsed_ms as f64 / target_ms as f64) * 100.0;
    LEVELS
        .iter()
        .rev()
        .copied()
        .find(|&l| percent >= f64::from(l))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sla::calendar::{parse_date, zone};
    use std::collections::BTreeSet;

    fn ms(s: &str) -> i64 {
        s.parse::<jiff::Timestamp>().expect("time").as_millisecond()
    }

    fn office() -> Schedule {
        // Mon-Fri 08:00-18:00 Berlin, 2026-12-25 a holiday.
        Schedule {
            days: [true, true, true, true, true, false, false],
            start_min: 8 * 60,
            end_min: 18 * 60,
            holidays: BTreeSet::from([parse_date("2026-12-25").expect("date")]),
            tz: zone("Europe/Berlin").expect("zone"),
        }
    }

    #[test]
    fn levels_at_half_three_quarters_and_the_target() {
        assert_eq!(level(0, 1000), 0);
        assert_eq!(level(499, 1000), 0);
        assert_eq!(level(500, 1000), 50);
        assert_eq!(level(749, 1000), 50);
        assert_eq!(level(750, 1000), 75);
        assert_eq!(level(999, 1000), 75);
        assert_eq!(level(1000, 1000), 100);
        assert_eq!(level(5000, 1000), 100);
        assert_eq!(level(0, 0), 100);
    }

    #[test]
    fn without_a_schedule_the_clock_is_the_wall_clock() {
        let t0 = ms("2026-12-24T17:00:00Z");
        assert_eq!(elapsed_ms(None, t0, t0 + HOUR), HOUR);
        assert_eq!(elapsed_ms(None, t0, t0 - HOUR), 0);
        assert_eq!(due_ms(None, t0, 4 * HOUR), Some(t0 + 4 * HOUR));
        assert_eq!(due_ms(None, i64::MAX - 1, 4 * HOUR), None);
    }

    #[test]
    fn service_hours_stop_the_clock_overnight_on_weekends_and_holidays() {
        let s = office();
        // Thursday 2026-12-24 17:00 Berlin (16:00Z): one hour of service left that day; the 25th
        // is a holiday, the 26th and 27th a weekend: a 4 h target falls due Monday 11:00 Berlin.
        let opened = ms("2026-12-24T16:00:00Z");
        assert_eq!(
            due_ms(Some(&s), opened, 4 * HOUR),
            Some(ms("2026-12-28T10:00:00Z"))
        );
        assert_eq!(
            elapsed_ms(Some(&s), opened, ms("2026-12-28T10:00:00Z")),
            4 * HOUR
        );
        // Over the holiday and the weekend nothing is spent.
        assert_eq!(
            elapsed_ms(
                Some(&s),
                ms("2026-12-24T17:00:00Z"),
                ms("2026-12-28T07:00:00Z")
            ),
            0
        );
        // Opened at night: the clock starts at 08:00.
        let night = ms("2026-12-22T02:00:00Z");
        assert_eq!(
            due_ms(Some(&s), night, 15 * MIN),
            Some(ms("2026-12-22T07:15:00Z"))
        );
        // A target longer than a week of service time.
        assert_eq!(
            due_ms(Some(&s), ms("2026-11-30T07:00:00Z"), 60 * HOUR),
            // Mon 30 Nov 08:00 Berlin + 6 days of 10 h (Mon-Fri, Mon) = Mon 7 Dec 18:00 Berlin.
            Some(ms("2026-12-07T17:00:00Z"))
        );
    }

    #[test]
    fn service_hours_across_a_dst_change() {
        // Berlin leaves summer time on Sunday 2026-10-25; Friday 23rd 17:00 CEST (15:00Z) + 2 h
        // of service time is Monday 26th 09:00 CET (08:00Z).
        let s = office();
        assert_eq!(
            due_ms(Some(&s), ms("2026-10-23T15:00:00Z"), 2 * HOUR),
            Some(ms("2026-10-26T08:00:00Z"))
        );
    }

    #[test]
    fn defaults_per_priority() {
        let d = IncidentTargets::DEFAULT;
        assert_eq!(d.get(Clock::Response, 1), 15 * MIN);
        assert_eq!(d.get(Clock::Resolution, 1), 4 * HOUR);
        assert_eq!(d.get(Clock::Resolution, 5), 10 * DAY);
        assert_eq!(d.get(Clock::Response, 9), 3 * DAY);
    }
}
