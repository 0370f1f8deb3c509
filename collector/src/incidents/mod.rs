//! Incident management: threshold rules evaluated on ingest open and resolve incidents by
//! themselves; operators acknowledge, assign, comment, resolve and close them through the API;
//! notifications go out through webhooks (`crate::notify`).
//!
//! - [`eval`]: the pure state machine of one (rule, CI) series (`for`, hysteresis, flapping,
//!   late samples) and the ITIL priority matrix.
//! - [`engine`]: the thread that owns every series, feeds derived metrics (`up`,
//!   `memory_used_ratio`, `inventory_stale`), decides suppression (parent host, `depends_on`,
//!   maintenance) and writes incident changes.
//! - [`store`]: the incident tables, lifecycle transitions and their legality, reads.
//! - [`builtin`]: the built-in rules. [`scope`]: which CI a sample belongs to, scope matching.
//! - [`maintenance`]: maintenance windows. [`announce`]: incident events into the outbox.
//!
//! # Lifecycle
//! `open -> acknowledged -> resolved -> closed`. The system resolves an incident when its
//! condition clears (`resolved_by = system`) and closes it `close_after` (default 24 h) later;
//! a recurrence within `reopen_within` (default 1 h) of resolution reopens the same incident.
//! One active incident per dedup key (rule, CI).

pub mod alert_flaps;
pub mod alertmanager;
pub mod api_rules;
pub mod builtin;
pub mod engine;
pub mod eval;
pub mod lifecycle;
pub mod maintenance;
pub mod records;
pub mod rule;
pub mod scope;

use prometheus::{
    HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry,
};

pub const INCIDENTS_OPEN: &str = "vigil_incidents_open";
pub const INCIDENTS_OPENED_TOTAL: &str = "vigil_incidents_opened_total";
/// Distinct `rule` label values of `vigil_incidents_opened_total` at most.
pub const MAX_RULE_LABELS: usize = 500;
/// The `rule` label of incidents past [`MAX_RULE_LABELS`].
pub const OTHER_RULE: &str = "_other";
pub const ACKNOWLEDGE_SECONDS: &str = "vigil_incident_acknowledge_seconds";
pub const RESOLVE_SECONDS: &str = "vigil_incident_resolve_seconds";
pub const SLA_BREACHES_TOTAL: &str = "vigil_incident_sla_breaches_total";

/// Buckets of the MTTA / MTTR histograms: 10 s to 3 days.
const DURATION_BUCKETS: &[f64] = &[
    10.0, 30.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0, 14400.0, 28800.0, 86400.0, 259200.0,
];

/// The incident metrics (`docs/reference.md`, section 3) plus the engine's own counters. Cheap to clone.
#[derive(Clone)]
pub struct IncidentMetrics {
    open: IntGaugeVec,
    opened_total: IntCounterVec,
    /// The `rule` label values given so far: at most [`MAX_RULE_LABELS`], the rest `_other`.
    rule_labels: std::sync::Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
    acknowledge_seconds: HistogramVec,
    resolve_seconds: HistogramVec,
    pub evaluations: IntCounter,
    pub late_samples: IntCounter,
    pub write_errors: IntCounter,
    /// Response and resolution targets missed, by priority and target (`crate::sla::targets`).
    pub sla_breaches: IntCounterVec,
}

impl IncidentMetrics {
    pub fn new() -> Result<IncidentMetrics, prometheus::Error> {
        let m = IncidentMetrics {
            open: IntGaugeVec::new(
                Opts::new(
                    INCIDENTS_OPEN,
                    "Open (or acknowledged) incidents by priority.",
                ),
                &["priority"],
            )?,
            opened_total: IntCounterVec::new(
                Opts::new(
                    INCIDENTS_OPENED_TOTAL,
                    "Incidents opened, by rule (past 500 distinct rules, `_other`).",
                ),
                &["rule"],
            )?,
            rule_labels: Default::default(),
            acknowledge_seconds: HistogramVec::new(
                HistogramOpts::new(
                    ACKNOWLEDGE_SECONDS,
                    "Time from an incident's start to its acknowledgement (MTTA), by priority.",
                )
                .buckets(DURATION_BUCKETS.to_vec()),
                &["priority"],
            )?,
            resolve_seconds: HistogramVec::new(
                HistogramOpts::new(
                    RESOLVE_SECONDS,
                    "Time from an incident's start to its resolution (MTTR), by priority.",
                )
                .buckets(DURATION_BUCKETS.to_vec()),
                &["priority"],
            )?,
            evaluations: IntCounter::new(
                "vigil_rule_evaluations_total",
                "Samples evaluated against rules.",
            )?,
            late_samples: IntCounter::new(
                "vigil_rule_late_samples_total",
                "Samples older than their series' last evaluated one (skipped).",
            )?,
            write_errors: IntCounter::new(
                "vigil_incident_write_errors_total",
                "Incident changes that failed to commit (retried on the next sample).",
            )?,
            sla_breaches: IntCounterVec::new(
                Opts::new(
                    SLA_BREACHES_TOTAL,
                    "Incident response and resolution targets missed, by priority and target.",
                ),
                &["priority", "target"],
            )?,
        };
        for p in 1..=5 {
            let p = format!("P{p}");
            m.open.with_label_values(&[&p]).set(0);
            m.acknowledge_seconds.with_label_values(&[&p]);
            m.resolve_seconds.with_label_values(&[&p]);
            for clock in crate::sla::targets::Clock::ALL {
                m.sla_breaches.with_label_values(&[&p, clock.as_str()]);
            }
        }
        Ok(m)
    }

    pub fn register(&self, registry: &Registry) -> Result<(), prometheus::Error> {
        registry.register(Box::new(self.open.clone()))?;
        registry.register(Box::new(self.opened_total.clone()))?;
        registry.register(Box::new(self.acknowledge_seconds.clone()))?;
        registry.register(Box::new(self.resolve_seconds.clone()))?;
        registry.register(Box::new(self.evaluations.clone()))?;
        registry.register(Box::new(self.late_samples.clone()))?;
        registry.register(Box::new(self.write_errors.clone()))?;
        registry.register(Box::new(self.sla_breaches.clone()))?;
        Ok(())
    }

    /// Shows `vigil_incidents_opened_total{rule}` at 0 before the rule's first incident (within
    /// the same [`MAX_RULE_LABELS`] cap).
    pub fn preset_rule(&self, rule: &str) {
        let mut seen = self
            .rule_labels
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if seen.contains(rule) || seen.len() < MAX_RULE_LABELS {
            seen.insert(rule.to_owned());
            self.opened_total.with_label_values(&[rule]);
        }
    }

    /// Counts an incident opened by `rule`. Rule names come from configs, the API and
    /// Alertmanager payloads (any alert name): past [`MAX_RULE_LABELS`] distinct names the rest
    /// count as `_other`, so that no sender can add series without end.
    pub fn opened(&self, rule: &str) {
        let label = {
            let mut seen = self
                .rule_labels
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if seen.contains(rule) {
                rule
            } else if seen.len() < MAX_RULE_LABELS {
                seen.insert(rule.to_owned());
                rule
            } else {
                OTHER_RULE
            }
        };
        self.opened_total.with_label_values(&[label]).inc();
    }

    /// Observes an acknowledgement `ms` after the incident's start (never negative).
    pub fn acknowledged(&self, priority: u8, ms: i64) {
        observe(&self.acknowledge_seconds, priority, ms);
    }

    /// Observes a resolution `ms` after the incident's start (never negative).
    pub fn resolved(&self, priority: u8, ms: i64) {
        observe(&self.resolve_seconds, priority, ms);
    }

    /// Sets `vigil_incidents_open{priority}` from counts (index 0 = P1).
    pub fn set_open(&self, counts: [u64; 5]) {
        for (i, n) in counts.iter().enumerate() {
            self.open
                .with_label_values(&[&format!("P{}", i + 1)])
                .set(i64::try_from(*n).unwrap_or(i64::MAX));
        }
    }
}

/// One observation in seconds under `priority` (`P1`..`P5`; anything else is clamped).
fn observe(h: &HistogramVec, priority: u8, ms: i64) {
    let label = format!("P{}", priority.clamp(1, 5));
    h.with_label_values(&[&label])
        .observe(ms.max(0) as f64 / 1000.0);
}

#[cfg(test)]
mod metric_tests {
    use super::*;

    #[test]
    fn rule_labels_are_capped() {
        let m = IncidentMetrics::new().expect("metrics");
        for i in 0..(MAX_RULE_LABELS + 100) {
            m.opened(&format!("alert-{i}"));
        }
        m.opened("alert-0");
        let families = {
            let r = Registry::new();
            m.register(&r).expect("register");
            r.gather()
        };
        let opened = families
            .iter()
            .find(|f| f.name() == INCIDENTS_OPENED_TOTAL)
            .expect("family");
        assert_eq!(opened.get_metric().len(), MAX_RULE_LABELS + 1);
        let other = opened
            .get_metric()
            .iter()
            .find(|s| s.get_label().iter().any(|l| l.value() == OTHER_RULE))
            .expect("_other");
        assert_eq!(other.get_counter().get_value(), 100.0);
    }

    #[test]
    fn a_preset_rule_shows_zero_then_counts() {
        let m = IncidentMetrics::new().expect("metrics");
        m.preset_rule("check-down");
        let r = Registry::new();
        m.register(&r).expect("register");
        let value = |r: &Registry| {
            r.gather()
                .iter()
                .find(|f| f.name() == INCIDENTS_OPENED_TOTAL)
                .map(|f| f.get_metric()[0].get_counter().get_value())
        };
        assert_eq!(value(&r), Some(0.0));
        m.opened("check-down");
        assert_eq!(value(&r), Some(1.0));
    }
}
