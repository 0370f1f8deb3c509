//! The incident service-level clockwork (`crate::sla::targets`), every [`CLOCKS_EVERY_MS`]:
//! each incident whose clocks may still move gets its due times (from the strictest covering
//! SLA's targets and schedule, else the defaults), and each newly reached level of its response
//! and resolution clocks goes to its timeline and webhooks (`sla_warning`, `sla_breached`) and a
//! breach to `vigil_incident_sla_breaches_total`.
//!
//! The due time of every level is computed once per (incident, priority, SLA) and kept in
//! memory, so a round over thousands of open incidents is a read and comparisons. A level is
//! reported once (the store keeps the highest reached); when several are crossed at once (the
//! collector was down) only the highest is.

use std::collections::HashMap;

use super::Engine;
use crate::incidents::lifecycle::Lifecycle;
use crate::incidents::records::{self, ClockRow};
use crate::incidents::scope::{self, Target};
use crate::notify::ServiceLevel;
use crate::sla::targets::{self, Clock, IncidentTargets, LEVELS};
use crate::sla::Sla;
use crate::store::in_tx;

/// How often the clocks are checked.
pub(super) const CLOCKS_EVERY_MS: i64 = 5_000;
/// How long after its resolution an incident is still looked at (a resolution after its due
/// time is a breach even when no round saw it late).
const RESOLVED_LOOKBACK_MS: i64 = 10 * 60_000;

/// The due times of one incident's levels, for one (priority, SLA).
#[derive(Debug, Clone)]
pub(super) struct Dues {
    priority: u8,
    sla: Option<usize>,
    /// Per clock ([`Clock::ALL`] order), the time each of [`LEVELS`] is reached.
    at: [[Option<i64>; 3]; 2],
    target_ms: [i64; 2],
}

impl Engine {
    pub(super) fn check_clocks(&mut self, now: i64) {
        let rows = match records::clock_rows(&self.conn, now.saturating_sub(RESOLVED_LOOKBACK_MS)) {
            Ok(r) => r,
            Err(e) => return tracing::warn!(error = %e, "cannot read incident clocks"),
        };
        let mut cache = std::mem::take(&mut self.dues);
        let mut kept: HashMap<i64, Dues> = HashMap::with_capacity(rows.len());
        for row in rows {
            let sla = self.targets_sla(&row);
            let dues = match cache.remove(&row.id) {
                Some(d) if d.priority == row.priority && d.sla == sla => d,
                _ => self.dues_of(&row, sla),
            };
            self.advance(&row, &dues, now);
            kept.insert(row.id, dues);
        }
        self.dues = kept;
    }

    /// The index in `config.slas` of the SLA whose targets apply to `row`: among those with
    /// `incident_targets` covering its CI, the one with the shortest resolution target for its
    /// priority (the first of equals); `None` for the defaults.
    fn targets_sla(&self, row: &ClockRow) -> Option<usize> {
        let slas = &self.config.slas;
        if slas.is_empty() {
            return None;
        }
        let state = row.agent_id.as_deref().and_then(|a| self.agents.get(a));
        let empty = Default::default();
        let target = Target {
            hostname: state.map(|s| s.hostname.as_str()).unwrap_or(""),
            tags: state.map(|s| &s.tags).unwrap_or(&empty),
            ci_type: &row.ci_type,
            ci_id: row.ci_id,
        };
        slas.iter()
            .enumerate()
            .filter_map(|(i, s)| Some((i, s.incident_targets?, s)))
            .filter(|(_, _, s)| scope::matches(&s.scope, &target))
            .min_by_key(|(i, t, _)| (t.get(Clock::Resolution, row.priority), *i))
            .map(|(i, _, _)| i)
    }

    fn dues_of(&self, row: &ClockRow, sla: Option<usize>) -> Dues {
        let sla_ref: Option<&Sla> = sla.map(|i| &self.config.slas[i]);
        let t = sla_ref
            .and_then(|s| s.incident_targets)
            .unwrap_or(IncidentTargets::DEFAULT);
        let schedule = sla_ref.and_then(|s| s.schedule.as_ref());
        let mut at = [[None; 3]; 2];
        let mut target_ms = [0; 2];
        for (c, clock) in Clock::ALL.into_iter().enumerate() {
            let target = t.get(clock, row.priority);
            target_ms[c] = target;
            for (l, level) in LEVELS.into_iter().enumerate() {
                let part = target.saturating_mul(i64::from(level)) / 100;
                at[c][l] = targets::due_ms(schedule, row.created_ms, part);
            }
        }
        Dues {
            priority: row.priority,
            sla,
            at,
            target_ms,
        }
    }

    /// Writes what changed of one incident's clocks.
    fn advance(&mut self, row: &ClockRow, dues: &Dues, now: i64) {
        let sla_name = dues.sla.map(|i| self.config.slas[i].name.clone());
        let due_changed = row.response_due_ms != dues.at[0][2]
            || row.resolution_due_ms != dues.at[1][2]
            || row.targets_sla != sla_name;
        let mut reached = Vec::new();
        if !row.suppressed {
            for (c, clock) in Clock::ALL.into_iter().enumerate() {
                let (stop, stored) = match clock {
                    // Resolving also ends the wait for a response.
                    Clock::Response => (
                        match (row.acknowledged_ms, row.resolved_ms) {
                            (Some(a), Some(r)) => Some(a.min(r)),
                            (a, r) => a.or(r),
                        },
                        row.response_level,
                    ),
                    Clock::Resolution => (row.resolved_ms, row.resolution_level),
                };
                let end = stop.unwrap_or(now).min(now);
                let level = LEVELS
                    .iter()
                    .zip(dues.at[c])
                    .filter(|(_, at)| at.is_some_and(|at| end >= at))
                    .map(|(l, _)| *l)
                    .max()
                    .unwrap_or(0);
                if level > stored {
                    reached.push(ServiceLevel {
                        target: clock.as_str(),
                        percent: level,
                        target_ms: dues.target_ms[c],
                        due_ms: dues.at[c][2],
                        sla: sla_name.clone(),
                    });
                }
            }
        }
        if !due_changed && reached.is_empty() {
            return;
        }
        let hooks = self.config.webhooks.clone();
        let res = in_tx(&self.conn, |c| {
            let life = Lifecycle::new(c, &hooks, now);
            if due_changed {
                life.set_due(row.id, dues.at[0][2], dues.at[1][2], sla_name.as_deref())?;
            }
            for level in &reached {
                life.reach_level(row.id, level)?;
            }
            Ok(())
        });
        match res {
            Ok(()) => {
                for level in reached.iter().filter(|l| l.percent >= 100) {
                    self.metrics
                        .sla_breaches
                        .with_label_values(&[&format!("P{}", row.priority), level.target])
                        .inc();
                    tracing::info!(
                        incident = row.id,
                        target = level.target,
                        sla = level.sla.as_deref().unwrap_or("default"),
                        "incident {} target missed",
                        level.target
                    );
                }
                if !reached.is_empty() {
                    self.notified = true;
                }
            }
            Err(e) => self.write_failed("service level", &e),
        }
    }
}
