//! The SLAs' error-budget alerts (`crate::sla::alerts`) as incidents: one per (SLA, alert),
//! deduplicated by `<rule>:<sla>`, opened when the alert fires and resolved (`cleared`) when it
//! stops; an SLA removed from the configuration, or with `alerts = false`, has its alerts
//! resolved (`sla_removed`) at the next figures.

use std::collections::BTreeMap;

use super::Engine;
use crate::incidents::lifecycle::Lifecycle;
use crate::incidents::records::{self, Opened, Opening, Origin};
use crate::sla::alerts::{self, Burn, Decision, CI_TYPE, NAMES};
use crate::store::in_tx;

impl Engine {
    pub(super) fn sla_alerts(&mut self, burns: &[Burn], now: i64) {
        for burn in burns {
            let Some(sla) = self.config.slas.iter().find(|s| s.name == burn.sla) else {
                continue;
            };
            let enabled = sla.alerts;
            let mut active = [None; 3];
            for (slot, rule) in active.iter_mut().zip(NAMES) {
                match records::active_by_key(&self.conn, &dedup_key(rule, &burn.sla)) {
                    Ok(inc) => *slot = inc.map(|i| i.id),
                    Err(e) => return tracing::warn!(error = %e, "cannot read SLA alerts"),
                }
            }
            let decisions = alerts::evaluate(burn, active.map(|a| a.is_some()));
            for (decision, id) in decisions.iter().zip(active) {
                match (decision.firing && enabled, id) {
                    (true, None) => self.open_sla_alert(&burn.sla, decision, now),
                    (false, Some(id)) => {
                        let code = if enabled { "cleared" } else { "sla_removed" };
                        self.resolve_sla_alert(id, decision.value, code, now);
                    }
                    _ => {}
                }
            }
        }
        self.resolve_removed_slas(now);
    }

    fn open_sla_alert(&mut self, sla: &str, d: &Decision, now: i64) {
        let key = dedup_key(d.rule, sla);
        let labels = BTreeMap::from([
            ("builtin".to_string(), "true".to_string()),
            ("sla".to_string(), sla.to_string()),
        ]);
        let opening = Opening {
            dedup_key: &key,
            rule: d.rule,
            origin: Origin::Rule,
            agent_id: None,
            ci_id: None,
            ci_type: CI_TYPE,
            ci_key: sla,
            title: &d.title,
            impact: d.impact,
            urgency: d.urgency,
            metric: Some(if d.rule == alerts::EXHAUSTED {
                "sla_error_budget_remaining_ratio"
            } else {
                "sla_burn_rate"
            }),
            op: Some(if d.rule == alerts::EXHAUSTED {
                "<"
            } else {
                ">"
            }),
            threshold: Some(d.threshold),
            value: d.value,
            peak: d.value,
            first_breach_ms: now,
            at_ms: now,
            labels: &labels,
            flapping: false,
            suppression: None,
            probable_cause_id: None,
        };
        let hooks = self.config.webhooks.clone();
        let reopen = self.config.reopen_within_ms;
        let res = in_tx(&self.conn, |c| {
            Lifecycle::new(c, &hooks, now).open(&opening, reopen, None)
        });
        match res {
            Ok((opened, _)) => {
                if let Opened::New { .. } = opened {
                    self.metrics.opened(d.rule);
                }
                if matches!(opened, Opened::New { .. } | Opened::Reopened { .. }) {
                    tracing::info!(sla, rule = d.rule, "SLA alert opened: {}", d.title);
                }
                self.notified = true;
            }
            Err(e) => self.write_failed("SLA alert", &e),
        }
    }

    fn resolve_sla_alert(&mut self, id: i64, value: Option<f64>, code: &str, now: i64) {
        let hooks = self.config.webhooks.clone();
        let res = in_tx(&self.conn, |c| {
            Lifecycle::new(c, &hooks, now).resolve(id, now, value, code, true)
        });
        match res {
            Ok(Some(r)) => {
                self.notified = true;
                self.metrics
                    .resolved(r.before.priority, now.saturating_sub(r.before.started_ms));
                tracing::info!(incident = id, rule = %r.before.rule, sla = %r.before.ci_key,
                    "SLA alert resolved ({code})");
            }
            Ok(None) => {}
            Err(e) => self.write_failed("SLA alert resolve", &e),
        }
    }

    /// Alerts of SLAs no longer configured never get figures again: resolve them.
    pub(super) fn resolve_removed_slas(&mut self, now: i64) {
        let active = match records::active(&self.conn) {
            Ok(a) => a,
            Err(e) => return tracing::warn!(error = %e, "cannot read active incidents"),
        };
        let gone: Vec<i64> = active
            .into_iter()
            .filter(|i| i.ci_type == CI_TYPE && i.agent_id.is_none())
            .filter(|i| NAMES.contains(&i.rule.as_str()))
            .filter(|i| !self.config.slas.iter().any(|s| s.name == i.ci_key))
            .map(|i| i.id)
            .collect();
        for id in gone {
            self.resolve_sla_alert(id, None, "sla_removed", now);
        }
    }
}

fn dedup_key(rule: &str, sla: &str) -> String {
    format!("{rule}:{sla}")
}
