//! Service level management: what an SLA is (`[[sla]]`), and its figures computed from time.
//!
//! - [`spans`]: half-open time spans and sets of them (union, intersection, difference).
//! - [`calendar`]: rolling and calendar windows and service hours in a time zone (jiff, with
//!   its tz database bundled into the binary).
//! - [`availability`]: one sweep over the state changes of every scoped CI gives up, down,
//!   degraded, unknown and excluded time, the outages and the coverage of a period, in the
//!   contractual view (maintenance excluded, schedule applied) and the experienced one.
//!
//! Nothing here reads the clock or the store: the caller gives "now" and the CIs' timelines.

pub mod alerts;
pub mod api;
pub mod availability;
pub mod cache;
pub mod calendar;
pub mod kpis;
pub mod load;
pub mod metrics;
pub mod occurrences;
pub mod openslo;
pub mod spans;
pub mod targets;
#[cfg(test)]
mod tests_store;

use jiff::tz::TimeZone;
use vigil_shared::config::SlaWindow;

use crate::incidents::scope::Scope;

pub use availability::{compute, CiTimeline, Combine, Figures, Kind, Outage};
pub use calendar::Schedule;
pub use spans::{Span, Spans};

/// What makes a scoped CI down (or degraded): one term of `down_when` / `degraded_when`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Condition {
    /// Any incident of this rule (`"host-unreachable"`, `"check-down"`, or any rule name).
    Rule(String),
    /// Any incident of this priority or a more urgent one (`"priority<=P2"`).
    PriorityAtMost(u8),
    /// Any incident of exactly this priority (`"priority=P3"`).
    Priority(u8),
}

impl Condition {
    pub fn parse(s: &str) -> Result<Condition, String> {
        let t = s.trim();
        let prio = |p: &str| -> Result<u8, String> {
            match p
                .trim()
                .strip_prefix(['P', 'p'])
                .and_then(|n| n.parse::<u8>().ok())
            {
                Some(n @ 1..=5) => Ok(n),
                _ => Err(format!("invalid priority in {s:?}: expected P1..P5")),
            }
        };
        if let Some(p) = t.strip_prefix("priority<=") {
            return Ok(Condition::PriorityAtMost(prio(p)?));
        }
        if let Some(p) = t.strip_prefix("priority=") {
            return Ok(Condition::Priority(prio(p)?));
        }
        if t.starts_with("priority") {
            return Err(format!(
                "invalid condition {s:?}: expected \"priority<=Pn\" or \"priority=Pn\""
            ));
        }
        let name_ok = !t.is_empty()
            && t.len() <= 128
            && t.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
        if name_ok {
            Ok(Condition::Rule(t.to_string()))
        } else {
            Err(format!(
                "invalid condition {s:?}: expected a rule name or \"priority<=Pn\" / \"priority=Pn\""
            ))
        }
    }

    /// Whether an incident of `rule` at `priority` (1..=5) meets the condition.
    pub fn matches(&self, rule: &str, priority: u8) -> bool {
        match self {
            Condition::Rule(r) => r == rule,
            Condition::PriorityAtMost(p) => priority <= *p,
            Condition::Priority(p) => priority == *p,
        }
    }
}

impl std::fmt::Display for Condition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Condition::Rule(r) => f.write_str(r),
            Condition::PriorityAtMost(p) => write!(f, "priority<=P{p}"),
            Condition::Priority(p) => write!(f, "priority=P{p}"),
        }
    }
}

/// `host-unreachable`, `check-down` and any incident of priority P1-P2: the default `down_when`.
pub fn default_down_when() -> Vec<Condition> {
    vec![
        Condition::Rule("host-unreachable".into()),
        Condition::Rule("check-down".into()),
        Condition::PriorityAtMost(2),
    ]
}

/// An availability objective (`[[sla]]`).
#[derive(Debug, Clone, PartialEq)]
pub struct Sla {
    pub name: String,
    /// Availability target, strictly between 0 and 1.
    pub target: f64,
    pub window: SlaWindow,
    /// The zone of calendar windows, the schedule and the daily series (default UTC).
    pub timezone: TimeZone,
    /// Which CIs the service is made of.
    pub scope: Scope,
    /// A business service of the CMDB: its CIs are those related to it (with `scope`, both
    /// must match).
    pub service: Option<String>,
    pub down_when: Vec<Condition>,
    /// Conditions that degrade a CI, each with the share of its time that counts as down.
    pub degraded_when: Vec<(Condition, f64)>,
    pub combine: Combine,
    /// Service hours; `None` is every hour of every day.
    pub schedule: Option<Schedule>,
    /// Response and resolution targets of the incidents on its CIs (`[sla.incident_targets]`;
    /// `None`: the SLA sets none, and its schedule does not run their clocks).
    pub incident_targets: Option<targets::IncidentTargets>,
    /// Error-budget alerts ([`alerts`]) open incidents (`alerts = false` turns them off).
    pub alerts: bool,
}

impl Sla {
    /// Whether an incident of `rule` at `priority` makes a scoped CI down; else the weight with
    /// which it degrades it, if any.
    pub fn effect(&self, rule: &str, priority: u8) -> Option<f64> {
        if self.down_when.iter().any(|c| c.matches(rule, priority)) {
            return Some(1.0);
        }
        self.degraded_when
            .iter()
            .filter(|(c, _)| c.matches(rule, priority))
            .map(|&(_, w)| w)
            .reduce(f64::max)
    }

    /// Error budget of one window: `(1 - target) x scheduled time`, in milliseconds.
    pub fn budget_ms(&self, scheduled_ms: i64) -> f64 {
        (1.0 - self.target) * scheduled_ms as f64
    }
}

/// One SLA over one period: both views and the error budget.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    /// The whole period (a calendar period may end after now).
    pub period: Span,
    /// What has been measured: the period up to now.
    pub measured: Span,
    pub contractual: Figures,
    pub experienced: Figures,
    /// `(1 - target)` x the scheduled time of the whole period, in milliseconds.
    pub budget_ms: f64,
    /// The budget minus the contractual downtime (negative once overspent).
    pub budget_remaining_ms: f64,
    /// Check executions in the measured period and how many passed.
    pub occurrences: occurrences::Occurrences,
}

impl Report {
    /// Remaining budget as a share of the budget (1 untouched, 0 spent, below 0 overspent).
    pub fn budget_remaining_ratio(&self) -> Option<f64> {
        (self.budget_ms > 0.0).then(|| self.budget_remaining_ms / self.budget_ms)
    }
}

/// The report of `sla` over `period`, as of `now_ms`, from the store.
pub fn report(
    conn: &rusqlite::Connection,
    sla: &Sla,
    period: Span,
    now_ms: i64,
) -> rusqlite::Result<Report> {
    let mut all = reports(conn, sla, &[period], now_ms)?;
    Ok(all.pop().expect("one report per period"))
}

/// Reports of several periods from one read of the store (the union of the periods).
pub fn reports(
    conn: &rusqlite::Connection,
    sla: &Sla,
    periods: &[Span],
    now_ms: i64,
) -> rusqlite::Result<Vec<Report>> {
    let Some(span) = measured_union(periods, now_ms) else {
        return Ok(Vec::new());
    };
    let snapshot = load::Snapshot::read(conn, span, now_ms)?;
    Ok(reports_from(&snapshot, sla, periods, now_ms))
}

/// The measured part of all `periods`, from the earliest start to the latest end (up to now).
pub fn measured_union(periods: &[Span], now_ms: i64) -> Option<Span> {
    let start = periods.iter().map(|p| p.start).min()?;
    let end = periods.iter().map(|p| p.end.min(now_ms)).max()?;
    Some(Span::new(start, end))
}

/// [`reports`] from what `snapshot` read (which should cover the periods up to now): one
/// sweep per view over their union, each period's figures read from it.
pub fn reports_from(
    snapshot: &load::Snapshot,
    sla: &Sla,
    periods: &[Span],
    now_ms: i64,
) -> Vec<Report> {
    let Some(span) = measured_union(periods, now_ms) else {
        return Vec::new();
    };
    let cis = snapshot.timelines(sla, span);
    let measured: Vec<Span> = periods
        .iter()
        .map(|p| Span::new(p.start, p.end.min(now_ms)))
        .collect();
    let runs = occurrences::of(snapshot, sla, &measured);
    let views = Views::sweep(&cis, sla, span);
    periods
        .iter()
        .zip(runs)
        .map(|(&p, runs)| views.report(&cis, sla, p, now_ms, runs))
        .collect()
}

/// One calendar day (in the SLA's zone) of a report's daily series.
#[derive(Debug, Clone, PartialEq)]
pub struct Day {
    pub date: jiff::civil::Date,
    pub contractual: Figures,
    pub experienced: Figures,
}

/// The most days a daily series holds (a report is at most this long).
pub const MAX_DAYS: usize = 400;

/// [`report`] and its daily series (at most [`MAX_DAYS`] days), from one read of the store and
/// one sweep per view: each day's figures are read from the sweep of the whole period.
pub fn report_with_days(
    conn: &rusqlite::Connection,
    sla: &Sla,
    period: Span,
    now_ms: i64,
) -> rusqlite::Result<(Report, Vec<Day>)> {
    let measured = Span::new(period.start, period.end.min(now_ms));
    let snapshot = load::Snapshot::read(conn, measured, now_ms)?;
    let cis = snapshot.timelines(sla, measured);
    let runs = occurrences::of(&snapshot, sla, &[measured]);
    let views = Views::sweep(&cis, sla, measured);
    let report = views.report(&cis, sla, period, now_ms, runs[0]);
    let days = calendar::days(measured, &sla.timezone, MAX_DAYS)
        .into_iter()
        .map(|(date, span)| Day {
            date,
            contractual: views
                .contractual
                .figures(&cis, span, &views.service_time, false),
            experienced: views
                .experienced
                .figures(&cis, span, &Spans::one(span), false),
        })
        .collect();
    Ok((report, days))
}

/// Both views of one stretch of time, swept once; the figures of any period within it.
struct Views {
    contractual: availability::States,
    experienced: availability::States,
    /// The service time of the swept stretch (the schedule applied).
    service_time: Spans,
}

impl Views {
    fn sweep(cis: &[CiTimeline], sla: &Sla, span: Span) -> Views {
        let experienced = availability::States::sweep(cis, span, Kind::Experienced, sla.combine);
        // The views differ only in maintenance: without any in the span they are one sweep.
        let maintenance = cis
            .iter()
            .any(|c| c.maintenance.within(span).next().is_some());
        Views {
            contractual: if maintenance {
                availability::States::sweep(cis, span, Kind::Contractual, sla.combine)
            } else {
                experienced.clone()
            },
            experienced,
            service_time: service_time(sla, span),
        }
    }

    fn report(
        &self,
        cis: &[CiTimeline],
        sla: &Sla,
        period: Span,
        now_ms: i64,
        occurrences: occurrences::Occurrences,
    ) -> Report {
        let measured = Span::new(period.start, period.end.min(now_ms));
        let contractual = self
            .contractual
            .figures(cis, measured, &self.service_time, true);
        let experienced = self
            .experienced
            .figures(cis, measured, &Spans::one(measured), true);
        let budget_ms = sla.budget_ms(service_time(sla, period).total());
        Report {
            period,
            measured,
            budget_remaining_ms: budget_ms - contractual.down_ms,
            contractual,
            experienced,
            budget_ms,
            occurrences,
        }
    }
}

/// The service time of `span`: its schedule's hours, or all of it.
fn service_time(sla: &Sla, span: Span) -> Spans {
    match &sla.schedule {
        Some(s) => s.within(span),
        None => Spans::one(span),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conditions_parse_match_and_print_back() {
        for text in [
            "host-unreachable",
            "priority<=P2",
            "priority=P3",
            "check-down",
        ] {
            let c = Condition::parse(text).expect(text);
            assert_eq!(c.to_string(), text);
        }
        let p2 = Condition::parse("priority<=p2").expect("lower-case p");
        assert!(p2.matches("cpu", 1) && p2.matches("cpu", 2) && !p2.matches("cpu", 3));
        assert!(Condition::parse("priority=P3").expect("=").matches("x", 3));
        for bad in [
            "priority<=P0",
            "priority<P2",
            "priority=P6",
            "",
            "a b",
            "priority",
        ] {
            assert!(Condition::parse(bad).is_err(), "{bad:?}");
        }
    }
}
