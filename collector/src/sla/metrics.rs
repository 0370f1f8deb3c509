//! The `vigil_sla_*` metrics: kept current by a refresh every [`REFRESH_EVERY`] and within
//! [`REFRESH_AFTER_CHANGE`] of an incident change (the collector's "SLA figures" task), so that
//! a scrape only reads gauges and never recomputes a window of history.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use prometheus::{Counter, GaugeVec, Histogram, HistogramOpts, IntCounterVec, Opts, Registry};
use rusqlite::Connection;

use super::alerts::Burn;
use super::{calendar, reports_from, Kind, Sla, Span};

/// How often the figures on `/metrics` are recomputed.
pub const REFRESH_EVERY: Duration = Duration::from_secs(30);
/// The least time between two refreshes when incidents change: an outage shows within it.
pub const REFRESH_AFTER_CHANGE: Duration = Duration::from_secs(5);

/// The rolling windows of `vigil_sla_burn_rate{window}` (the SRE workbook's alert windows).
pub const BURN_WINDOWS: [(&str, u64); 7] = [
    ("5m", 300),
    ("30m", 1800),
    ("1h", 3600),
    ("2h", 7200),
    ("6h", 21_600),
    ("1d", 86_400),
    ("3d", 259_200),
];

pub struct SlaMetrics {
    target: GaugeVec,
    availability: GaugeVec,
    budget_remaining: GaugeVec,
    coverage: GaugeVec,
    burn_rate: GaugeVec,
    outages: IntCounterVec,
    /// What keeping the figures current costs: CPU of the refreshing thread, and each
    /// refresh's wall time.
    refresh_cpu: Counter,
    refresh_duration: Histogram,
    /// Per SLA: the start of the latest outage already counted.
    counted: Mutex<HashMap<String, i64>>,
    /// The SLAs (name, window label) whose series are on `/metrics`.
    shown: Mutex<Vec<(String, String)>>,
}

impl SlaMetrics {
    pub fn new(registry: &Registry) -> Result<SlaMetrics, prometheus::Error> {
        let gauge =
            |name: &str, help: &str, labels: &[&str]| -> Result<GaugeVec, prometheus::Error> {
                let g = GaugeVec::new(Opts::new(name, help), labels)?;
                registry.register(Box::new(g.clone()))?;
                Ok(g)
            };
        let outages = IntCounterVec::new(
            Opts::new(
                "vigil_sla_outages_total",
                "Outages of the service (contractual view), counted as they begin",
            ),
            &["sla"],
        )?;
        registry.register(Box::new(outages.clone()))?;
        let refresh_cpu = Counter::new(
            "vigil_sla_refresh_cpu_seconds_total",
            "CPU time spent recomputing the SLA figures on /metrics",
        )?;
        registry.register(Box::new(refresh_cpu.clone()))?;
        let refresh_duration = Histogram::with_opts(
            HistogramOpts::new(
                "vigil_sla_refresh_duration_seconds",
                "Wall time of one refresh of every SLA's figures (store read included)",
            )
            .buckets(vec![0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]),
        )?;
        registry.register(Box::new(refresh_duration.clone()))?;
        Ok(SlaMetrics {
            target: gauge(
                "vigil_sla_target_ratio",
                "The SLA's availability target",
                &["sla"],
            )?,
            availability: gauge(
                "vigil_sla_availability_ratio",
                "Availability over the SLA's window: up / (up + down) time",
                &["sla", "window", "kind"],
            )?,
            budget_remaining: gauge(
                "vigil_sla_error_budget_remaining_ratio",
                "Error budget left in the window (1 untouched, 0 spent, negative overspent)",
                &["sla", "window"],
            )?,
            coverage: gauge(
                "vigil_sla_data_coverage_ratio",
                "Share of the window's service time with data from the scoped CIs",
                &["sla", "window"],
            )?,
            burn_rate: gauge(
                "vigil_sla_burn_rate",
                "Error budget burn rate over a rolling window (1 spends the budget exactly)",
                &["sla", "window"],
            )?,
            outages,
            refresh_cpu,
            refresh_duration,
            counted: Mutex::new(HashMap::new()),
            shown: Mutex::new(Vec::new()),
        })
    }

    /// Recomputes every SLA's figures as of `now_ms`; returns what the error-budget alerts of
    /// each are decided from (`super::alerts`).
    pub fn refresh(
        &self,
        conn: &Connection,
        slas: &[Sla],
        now_ms: i64,
    ) -> rusqlite::Result<Vec<Burn>> {
        self.forget_except(slas);
        // One read of the store for every SLA: the union of their periods.
        let periods: Vec<Option<Vec<Span>>> = slas.iter().map(|s| periods(s, now_ms)).collect();
        let all: Vec<Span> = periods.iter().flatten().flatten().copied().collect();
        let Some(span) = super::measured_union(&all, now_ms) else {
            for sla in slas {
                self.target.with_label_values(&[&sla.name]).set(sla.target);
            }
            return Ok(Vec::new());
        };
        let snapshot = super::load::Snapshot::read(conn, span, now_ms)?;
        let mut out = Vec::with_capacity(slas.len());
        for (sla, periods) in slas.iter().zip(&periods) {
            out.extend(self.refresh_one(&snapshot, sla, periods.as_deref(), now_ms));
        }
        Ok(out)
    }

    /// Counts what one refresh (its store read included) cost: `cpu` of its thread, `wall`.
    pub fn record_cost(&self, cpu: Duration, wall: Duration) {
        self.refresh_cpu.inc_by(cpu.as_secs_f64());
        self.refresh_duration.observe(wall.as_secs_f64());
    }

    /// No SLA is in force (any more): their series leave `/metrics`.
    pub fn refresh_none(&self) {
        self.forget_except(&[]);
    }

    /// Removes the series of SLAs no longer in `slas` (deleted, or their window changed).
    fn forget_except(&self, slas: &[Sla]) {
        let now: Vec<(String, String)> = slas
            .iter()
            .map(|s| (s.name.clone(), s.window.to_string()))
            .collect();
        let mut shown = self.shown.lock().unwrap_or_else(|p| p.into_inner());
        for (name, window) in shown.iter().filter(|k| !now.contains(k)) {
            let (name, window) = (name.as_str(), window.as_str());
            let still_named = now.iter().any(|(n, _)| n == name);
            for kind in ["contractual", "experienced"] {
                let _ = self.availability.remove_label_values(&[name, window, kind]);
            }
            let _ = self.budget_remaining.remove_label_values(&[name, window]);
            let _ = self.coverage.remove_label_values(&[name, window]);
            if !still_named {
                let _ = self.target.remove_label_values(&[name]);
                let _ = self.outages.remove_label_values(&[name]);
                for (label, _) in BURN_WINDOWS {
                    let _ = self.burn_rate.remove_label_values(&[name, label]);
                }
                self.counted
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(name);
            }
        }
        *shown = now;
    }

    fn refresh_one(
        &self,
        snapshot: &super::load::Snapshot,
        sla: &Sla,
        periods: Option<&[Span]>,
        now_ms: i64,
    ) -> Option<Burn> {
        let name = sla.name.as_str();
        self.target.with_label_values(&[name]).set(sla.target);
        let periods = periods?;
        let period = periods[0];
        let window = sla.window.to_string();
        let all = reports_from(snapshot, sla, periods, now_ms);
        let (r, burns) = all.split_first()?;
        let mut burn = Burn {
            sla: name.to_string(),
            rates: [None; 7],
            budget_remaining: r.budget_remaining_ratio(),
            window_ms: period.len(),
        };
        for (kind, label, f) in [
            (Kind::Contractual, "contractual", &r.contractual),
            (Kind::Experienced, "experienced", &r.experienced),
        ] {
            let g = self.availability.with_label_values(&[name, &window, label]);
            match f.availability {
                Some(a) => g.set(a),
                None => {
                    let _ = self
                        .availability
                        .remove_label_values(&[name, &window, label]);
                }
            }
            if kind == Kind::Contractual {
                if let Some(c) = f.coverage {
                    self.coverage.with_label_values(&[name, &window]).set(c);
                }
            }
        }
        if let Some(left) = r.budget_remaining_ratio() {
            self.budget_remaining
                .with_label_values(&[name, &window])
                .set(left);
        }
        // Outages that began since the last refresh (all of the window's on the first).
        {
            let mut counted = self.counted.lock().unwrap_or_else(|p| p.into_inner());
            let last = counted.get(name).copied().unwrap_or(i64::MIN);
            let new: Vec<i64> = r
                .contractual
                .outages
                .iter()
                .map(|o| o.span.start)
                .filter(|&s| s > last)
                .collect();
            let counter = self.outages.with_label_values(&[name]);
            counter.inc_by(new.len() as u64);
            if let Some(&m) = new.iter().max() {
                counted.insert(name.to_string(), m);
            }
        }
        for (i, ((label, _), r)) in BURN_WINDOWS.iter().zip(burns).enumerate() {
            let measured = r.contractual.up_ms + r.contractual.down_ms;
            if measured > 0.0 {
                let bad = r.contractual.down_ms / measured;
                let rate = bad / (1.0 - sla.target);
                self.burn_rate.with_label_values(&[name, *label]).set(rate);
                burn.rates[i] = Some(rate);
            }
        }
        Some(burn)
    }
}

/// The periods of one SLA's figures: its window, then each of [`BURN_WINDOWS`] up to now
/// (`None` when its window has no period at `now_ms`).
fn periods(sla: &Sla, now_ms: i64) -> Option<Vec<Span>> {
    let period = calendar::period(sla.window, now_ms, &sla.timezone)?;
    let mut periods = vec![period];
    periods.extend(
        BURN_WINDOWS
            .iter()
            .map(|&(_, secs)| Span::new(now_ms.saturating_sub(secs as i64 * 1000), now_ms)),
    );
    Some(periods)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vigil_shared::config::SlaWindow;

    #[test]
    fn burn_window_labels_are_the_compact_durations() {
        for (label, secs) in BURN_WINDOWS {
            assert_eq!(
                SlaWindow::Rolling(Duration::from_secs(secs)).to_string(),
                label
            );
        }
    }
}
