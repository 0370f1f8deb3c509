//! Occurrences: the share of check executions that passed, the model Uptime Kuma and Zabbix's
//! item-based SLAs report, shown next to Vigil's time-based figure so that the difference
//! between the two stays visible (a check that fails briefly between two runs, or one that runs
//! rarely, reads differently in each).
//!
//! Every `vigil_check_up` sample of a stored batch is one execution. The ingest writer adds each
//! batch's [`CheckTally`]s to `check_runs` (per agent, check and UTC day) in the transaction that
//! stores the batch, so a batch replayed after a lost ack counts once. A period's figure counts
//! the whole UTC days it touches (and says which: [`Occurrences::days`]), so that its counts
//! are real executions, not estimates. Schedules and maintenance do not apply: it counts every
//! execution, as the anchors do, and compares with the experienced view.

use std::collections::HashMap;
use std::sync::Arc;

use rusqlite::{params, Connection};
use vigil_shared::proto::Sample;

use super::load::Snapshot;
use super::spans::Span;
use super::Sla;
use crate::store::CheckTally;

/// Check executions per agent: `(UTC day, passed, ran)` in day order.
pub type Runs = HashMap<Arc<str>, Vec<(i64, u64, u64)>>;

/// Milliseconds in a UTC day, the bucket of `check_runs`.
pub const DAY_MS: i64 = 86_400_000;

/// The metric whose samples are check executions.
const CHECK_UP: &str = "check_up";

/// Check executions over the UTC days a period touches: how many ran, how many passed.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Occurrences {
    pub ok: u64,
    pub total: u64,
    /// The whole UTC days counted (from the start of the period's first day to the end of its
    /// last).
    pub days: Span,
}

impl Occurrences {
    /// Passed / run; `None` when nothing ran.
    pub fn ratio(&self) -> Option<f64> {
        (self.total > 0).then(|| self.ok as f64 / self.total as f64)
    }
}

/// The whole UTC days that `period` touches.
pub fn days_of(period: Span) -> Span {
    let start = period.start.div_euclid(DAY_MS).saturating_mul(DAY_MS);
    let end = period
        .end
        .saturating_add(DAY_MS - 1)
        .div_euclid(DAY_MS)
        .saturating_mul(DAY_MS);
    Span::new(start, end.max(start))
}

/// The executions in `samples` (one batch), per check and UTC day. A value of 1 (at least 0.5)
/// passed; a sample without a `check` label or with a non-finite value is not an execution.
pub fn tally(samples: &[Sample]) -> Vec<CheckTally> {
    let mut counts: HashMap<(&str, i64), (u32, u32)> = HashMap::new();
    for s in samples {
        if s.name != CHECK_UP || !s.value.is_finite() {
            continue;
        }
        let Some((_, check)) = s.labels.iter().find(|(k, _)| k == "check") else {
            continue;
        };
        let day = s.ts_ms.div_euclid(DAY_MS) * DAY_MS;
        let e = counts.entry((check.as_str(), day)).or_default();
        e.0 = e.0.saturating_add(u32::from(s.value >= 0.5));
        e.1 = e.1.saturating_add(1);
    }
    let mut out: Vec<CheckTally> = counts
        .into_iter()
        .map(|((check, day_ms), (ok, total))| CheckTally {
            check: check.to_owned(),
            day_ms,
            ok,
            total,
        })
        .collect();
    out.sort_by(|a, b| (&a.check, a.day_ms).cmp(&(&b.check, b.day_ms)));
    out
}

/// The executions of the checks `sla` covers (every check of a host in its scope, and in its
/// business service when it names one) within each of `periods`.
pub fn count(conn: &Connection, sla: &Sla, periods: &[Span]) -> rusqlite::Result<Vec<Occurrences>> {
    let (Some(start), Some(end)) = (
        periods.iter().map(|p| p.start).min(),
        periods.iter().map(|p| p.end).max(),
    ) else {
        return Ok(Vec::new());
    };
    let snapshot = Snapshot::read(conn, Span::new(start, end), end)?;
    Ok(of(&snapshot, sla, periods))
}

/// [`count`] from what `snapshot` read (periods beyond it count what it holds).
pub fn of(snapshot: &Snapshot, sla: &Sla, periods: &[Span]) -> Vec<Occurrences> {
    let mut out: Vec<Occurrences> = periods
        .iter()
        .map(|&p| Occurrences {
            days: days_of(p),
            ..Occurrences::default()
        })
        .collect();
    for (h, host) in snapshot.hosts().iter().enumerate() {
        if !snapshot.has_runs(h) || !snapshot.checks_in_scope(sla, host) {
            continue;
        }
        for o in &mut out {
            let (ok, total) = snapshot.runs_within(h, o.days);
            o.ok = o.ok.saturating_add(ok);
            o.total = o.total.saturating_add(total);
        }
    }
    out
}

/// The executions per agent within `days` (whole UTC days), summed over its checks: `(day,
/// passed, ran)` in day order. One pass over the covering index `check_runs_by_day` (day,
/// agent, counts): no table lookups, no sort.
pub fn read(conn: &Connection, days: Span) -> rusqlite::Result<Runs> {
    let mut out = Runs::new();
    let mut stmt = conn.prepare_cached(
        "SELECT agent_id, day_ms, SUM(ok), SUM(total) FROM check_runs
         WHERE day_ms >= ?1 AND day_ms < ?2
         GROUP BY day_ms, agent_id ORDER BY day_ms, agent_id",
    )?;
    let mut rows = stmt.query(params![days.start, days.end])?;
    while let Some(r) = rows.next()? {
        let agent = r.get_ref(0)?.as_str()?;
        let run = (
            r.get::<_, i64>(1)?,
            r.get::<_, i64>(2)?.max(0).unsigned_abs(),
            r.get::<_, i64>(3)?.max(0).unsigned_abs(),
        );
        match out.get_mut(agent) {
            Some(v) => v.push(run),
            None => {
                out.insert(Arc::from(agent), vec![run]);
            }
        }
    }
    Ok(out)
}

/// Deletes the counts of days that no report reaches any more ([`super::MAX_DAYS`] before
/// `now_ms`, plus one day for a period that starts within a day).
pub fn prune(conn: &Connection, now_ms: i64) -> rusqlite::Result<usize> {
    let keep = (super::MAX_DAYS as i64 + 1).saturating_mul(DAY_MS);
    let before = now_ms.saturating_sub(keep);
    conn.execute("DELETE FROM check_days WHERE day_ms < ?1", [before])?;
    conn.execute("DELETE FROM check_runs WHERE day_ms < ?1", [before])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn up(ts_ms: i64, check: &str, value: f64) -> Sample {
        Sample {
            ts_ms,
            name: CHECK_UP.into(),
            labels: vec![("check".into(), check.into())],
            value,
        }
    }

    #[test]
    fn a_batch_is_tallied_per_check_and_utc_day() {
        let d = 20_000 * DAY_MS;
        let samples = [
            up(d - 1, "web", 1.0),
            up(d, "web", 1.0),
            up(d + 1_000, "web", 0.0),
            up(d + 2_000, "db", 1.0),
            up(d + 3_000, "db", f64::NAN),
            Sample {
                labels: vec![],
                ..up(d, "x", 1.0)
            },
            Sample {
                name: "check_latency_seconds".into(),
                ..up(d, "web", 1.0)
            },
        ];
        let tally = |check: &str, day_ms, ok, total| CheckTally {
            check: check.into(),
            day_ms,
            ok,
            total,
        };
        assert_eq!(
            super::tally(&samples),
            [
                tally("db", d, 1, 1),
                tally("web", d - DAY_MS, 1, 1),
                tally("web", d, 1, 2),
            ]
        );
        assert_eq!(Occurrences::default().ratio(), None);
        let o = Occurrences {
            ok: 99_995,
            total: 100_000,
            days: Span::new(d, d + DAY_MS),
        };
        assert_eq!(o.ratio(), Some(0.99995));
        assert_eq!(days_of(Span::new(d + 1, d + 2)), Span::new(d, d + DAY_MS));
        assert_eq!(days_of(Span::new(d, d + DAY_MS)), Span::new(d, d + DAY_MS));
        assert_eq!(
            days_of(Span::new(d - 1, d + DAY_MS + 1)),
            Span::new(d - DAY_MS, d + 2 * DAY_MS)
        );
    }
}
