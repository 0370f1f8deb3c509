//! What an evaluation event does to an incident, as lifecycle calls in one transaction each:
//! open (deciding its suppression: maintenance window, the host's own `host-unreachable`, a
//! `depends_on` dependency's incident as its probable cause), breach updates (batched, at most
//! every [`FLUSH_EVERY_MS`] per incident), resolve (with the grace its symptoms get when it was
//! a host's), flapping.

use super::housekeeping::Reeval;
use super::series::{ci_id_of, SeriesRef};
use super::Engine;
use crate::cmdb::lookup;
use crate::incidents::eval::Event;
use crate::incidents::lifecycle::Lifecycle;
use crate::incidents::maintenance;
use crate::incidents::records::{self, Opened, Opening, Origin, Suppression};
use crate::incidents::rule::{Rule, Threshold};
use crate::incidents::scope::Target;
use crate::store::in_tx;
use vigil_shared::inventory::ci_type;

/// Breach updates (last breach time, peak) are written at most this often per incident.
pub(super) const FLUSH_EVERY_MS: i64 = 5_000;
/// The least time a recovered host's symptoms get to clear before they stand on their own.
const SYMPTOM_GRACE_MIN_MS: i64 = 5_000;

impl Engine {
    pub(super) fn apply(&mut self, s: &SeriesRef<'_>, ev: &Event) {
        let now = self.now();
        match *ev {
            Event::Opened {
                first_breach_ms,
                at_ms,
                value,
                peak,
                flapping,
            } => self.open(s, first_breach_ms, at_ms, value, peak, flapping, now),
            Event::Breach { at_ms, value, peak } => {
                let Some(entry) = self.entry_mut(s) else {
                    return;
                };
                if entry.incident.is_none() {
                    // The open failed to commit earlier: open again, starting now.
                    let flapping = entry.series.is_flapping();
                    self.open(s, at_ms, at_ms, value, peak, flapping, now);
                    return;
                }
                entry.dirty = Some((at_ms, value, peak));
                if at_ms - entry.last_flush_ms >= FLUSH_EVERY_MS {
                    self.flush_entry(s, now);
                }
            }
            Event::Resolved { at_ms, value } => self.resolve(s, at_ms, value, now),
            Event::FlappingStarted { percent, .. } | Event::FlappingStopped { percent, .. } => {
                let flapping = matches!(ev, Event::FlappingStarted { .. });
                let Some(id) = self.entry_mut(s).and_then(|e| e.incident) else {
                    return;
                };
                let hooks = self.config.webhooks.clone();
                let res = in_tx(&self.conn, |c| {
                    Lifecycle::new(c, &hooks, now).set_flapping(id, flapping, percent)
                });
                match res {
                    Ok(()) => self.notified = true,
                    Err(e) => self.write_failed("flapping", &e),
                }
            }
        }
    }

    /// Why an incident of this series opening at `at_ms` is suppressed, and what probably caused
    /// it: a maintenance window covering it, else (for a symptom) its host's `host-unreachable`,
    /// else an incident on what the host `depends_on`.
    fn suppression(
        &self,
        s: &SeriesRef<'_>,
        ci_type: &str,
        ci_id: Option<i64>,
        at_ms: i64,
    ) -> (Option<Suppression>, Option<i64>) {
        let Some(state) = self.agents.get(s.agent) else {
            return (None, None);
        };
        let target = Target {
            hostname: &state.hostname,
            tags: &state.tags,
            ci_type,
            ci_id,
        };
        if let Some(w) = maintenance::covering(&self.windows, at_ms, &target) {
            return (
                Some(Suppression::Maintenance {
                    window: w.name.clone(),
                }),
                None,
            );
        }
        if self.rules[s.rule].is_host_unreachable {
            return (None, None);
        }
        if let Some(parent_id) = state.host_incident {
            return (Some(Suppression::Parent { parent_id }), None);
        }
        let cause = lookup::dependencies(&self.conn, s.agent)
            .and_then(|targets| records::active_on_any(&self.conn, &targets))
            .unwrap_or_else(|e| {
                tracing::warn!(error = %e, "cannot look up dependencies");
                None
            });
        (
            cause.map(|parent_id| Suppression::Parent { parent_id }),
            cause,
        )
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn open(
        &mut self,
        s: &SeriesRef<'_>,
        first_breach_ms: i64,
        at_ms: i64,
        value: f64,
        peak: f64,
        flapping: bool,
        now: i64,
    ) {
        let Some(state) = self.agents.get(s.agent) else {
            return;
        };
        let Some(entry) = state.series[s.rule].get(s.key) else {
            return;
        };
        let ci_type = entry.ci_type;
        let ci_id = match entry.ci_id {
            Some(id) => id,
            None => ci_id_of(&self.conn, s.agent, ci_type, s.key, state.host_ci),
        };
        let (suppression, probable_cause) = self.suppression(s, ci_type, ci_id, at_ms);
        let Some(state) = self.agents.get(s.agent) else {
            return;
        };
        let rule = &self.rules[s.rule];
        let dedup_key = dedup_key(&rule.rule.name, s.agent, ci_type, s.key);
        let title = title(&rule.rule, &state.hostname, ci_type, s.key, value);
        let opening = Opening {
            dedup_key: &dedup_key,
            rule: &rule.rule.name,
            origin: Origin::Rule,
            agent_id: Some(s.agent),
            ci_id,
            ci_type,
            ci_key: s.key,
            title: &title,
            impact: rule.rule.impact,
            urgency: rule.rule.urgency,
            metric: Some(&rule.rule.metric),
            op: Some(match rule.rule.threshold {
                Threshold::Above(_) => ">",
                Threshold::Below(_) => "<",
            }),
            threshold: Some(rule.cond.threshold_value()),
            value: Some(value),
            peak: Some(peak),
            first_breach_ms,
            at_ms,
            labels: &rule.rule.labels,
            flapping,
            suppression: suppression.clone(),
            probable_cause_id: probable_cause,
        };
        let is_host = rule.is_host_unreachable;
        let hooks = self.config.webhooks.clone();
        let reopen_within = self.config.reopen_within_ms;
        let agent_id: &str = s.agent;
        let res = in_tx(&self.conn, |c| {
            Lifecycle::new(c, &hooks, now).open(
                &opening,
                reopen_within,
                is_host.then_some(agent_id),
            )
        });
        let (opened, symptoms) = match res {
            Ok(v) => v,
            Err(e) => return self.write_failed("open", &e),
        };
        let id = match opened {
            Opened::OutOfOrder { id } => {
                self.metrics.late_samples.inc();
                tracing::debug!(
                    incident = id,
                    "breach older than the last resolution; ignored"
                );
                return;
            }
            Opened::New { id, .. } => {
                self.metrics.opened(&self.rules[s.rule].rule.name);
                id
            }
            Opened::Reopened { id, .. } | Opened::Active { id } => id,
        };
        if !matches!(opened, Opened::Active { .. }) {
            tracing::info!(incident = id, rule = %self.rules[s.rule].rule.name,
                agent = %s.agent, ci = %s.key, suppressed = suppression.is_some(),
                symptoms, "incident {}", if matches!(opened, Opened::Reopened { .. }) { "reopened" } else { "opened" });
        }
        self.notified = true;
        if let Some(entry) = self.entry_mut(s) {
            entry.incident = Some(id);
            entry.ci_id = Some(ci_id);
            entry.last_flush_ms = now;
        }
        if is_host {
            if let Some(state) = self.agents.get_mut(s.agent) {
                state.host_incident = Some(id);
            }
        }
    }

    fn resolve(&mut self, s: &SeriesRef<'_>, at_ms: i64, value: f64, now: i64) {
        self.flush_entry(s, now);
        let Some(entry) = self.entry_mut(s) else {
            return;
        };
        let Some(id) = entry.incident.take() else {
            return;
        };
        let is_host = self.rules[s.rule].is_host_unreachable;
        let hooks = self.config.webhooks.clone();
        let res = in_tx(&self.conn, |c| {
            Lifecycle::new(c, &hooks, now).resolve(id, at_ms, Some(value), "cleared", true)
        });
        let resolved = match res {
            Ok(Some(r)) => r,
            Ok(None) => return,
            Err(e) => return self.write_failed("resolve", &e),
        };
        self.notified = true;
        self.metrics.resolved(
            resolved.before.priority,
            at_ms.saturating_sub(resolved.before.started_ms),
        );
        tracing::info!(incident = id, rule = %resolved.before.rule, agent = %s.agent, ci = %s.key,
            "incident resolved by the system");
        if !is_host {
            return;
        }
        let interval = self
            .presence
            .status(s.agent, now)
            .map_or(crate::presence::DEFAULT_INTERVAL_MS, |a| {
                a.observed.interval_ms
            });
        // Intervals are clamped to an hour where they are decoded; saturate anyway.
        let grace = i64::try_from(interval)
            .unwrap_or(i64::MAX)
            .saturating_mul(2)
            .max(SYMPTOM_GRACE_MIN_MS);
        if let Some(state) = self.agents.get_mut(s.agent) {
            state.host_incident = None;
        }
        for child in resolved.children {
            self.reeval.push(Reeval {
                incident: child,
                deadline_ms: now.saturating_add(grace),
            });
        }
    }

    /// Resolves an active incident whose series is gone (its rule removed or deleted, its agent
    /// revoked, its check removed): `code` says which.
    pub(super) fn resolve_orphan(&mut self, id: i64, code: &str, now: i64) {
        let hooks = self.config.webhooks.clone();
        let res = in_tx(&self.conn, |c| {
            Lifecycle::new(c, &hooks, now).resolve(id, now, None, code, false)
        });
        match res {
            Ok(Some(_)) => {
                self.notified = true;
                tracing::info!(incident = id, code, "incident resolved: its series is gone");
            }
            Ok(None) => {}
            Err(e) => self.write_failed("resolve", &e),
        }
    }

    pub(super) fn flush_entry(&mut self, s: &SeriesRef<'_>, now: i64) {
        let Some(entry) = self.entry_mut(s) else {
            return;
        };
        let (Some(id), Some((at, value, peak))) = (entry.incident, entry.dirty.take()) else {
            return;
        };
        entry.last_flush_ms = now;
        let hooks = self.config.webhooks.clone();
        let res = in_tx(&self.conn, |c| {
            Lifecycle::new(c, &hooks, now).record_breach(id, at, value, peak)
        });
        if let Err(e) = res {
            self.write_failed("breach", &e);
        }
    }

    /// Writes pending breach updates older than [`FLUSH_EVERY_MS`] (all when `all`).
    pub(super) fn flush(&mut self, now: i64, all: bool) {
        let mut updates = Vec::new();
        for state in self.agents.values_mut() {
            for series in &mut state.series {
                for entry in series.values_mut() {
                    if entry.dirty.is_some() && (all || now - entry.last_flush_ms >= FLUSH_EVERY_MS)
                    {
                        if let (Some(id), Some(d)) = (entry.incident, entry.dirty.take()) {
                            updates.push((id, d));
                        }
                        entry.last_flush_ms = now;
                    }
                }
            }
        }
        if updates.is_empty() {
            return;
        }
        let hooks = self.config.webhooks.clone();
        let res = in_tx(&self.conn, |c| {
            let life = Lifecycle::new(c, &hooks, now);
            for (id, (at, value, peak)) in &updates {
                life.record_breach(*id, *at, *value, *peak)?;
            }
            Ok::<_, rusqlite::Error>(())
        });
        if let Err(e) = res {
            self.write_failed("breach", &e);
        }
    }
}

/// The stable dedup key of a rule series.
pub fn dedup_key(rule: &str, agent: &str, ci_type: &str, ci_key: &str) -> String {
    format!("{rule}|{agent}|{ci_type}|{ci_key}")
}

fn title(rule: &Rule, hostname: &str, ci_type: &str, key: &str, value: f64) -> String {
    let (op, t) = match rule.threshold {
        Threshold::Above(t) => (">", t),
        Threshold::Below(t) => ("<", t),
    };
    let on = if ci_type == ci_type::HOST {
        hostname.to_string()
    } else {
        format!("{hostname} {key}")
    };
    format!(
        "{} on {on}: {} {} {op} {}",
        rule.name,
        rule.metric,
        short(value),
        short(t)
    )
}

fn short(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{v:.0}")
    } else {
        format!("{v:.3}")
            .trim_end_matches('0')
            .trim_end_matches('.')
            .to_string()
    }
}
