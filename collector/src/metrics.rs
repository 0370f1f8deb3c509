//! The collector's own metrics and the `/metrics` exposition.
//!
//! [`Metrics`] owns one `prometheus::Registry` (never the crate's global default registry) with
//! the ingest self metrics and the [`LatestCollector`] of host metrics; other components register
//! their collectors on [`Metrics::registry`]. Label values are bounded: rejection reasons are
//! `&'static str`s from [`reason`], enrollment results are `ok` / `refused`.
//!
//! This module never hand-writes the text format (the crate's `TextEncoder` does, escaping
//! included) and never reads the clock itself (the [`Clock`] is the caller's).

use std::sync::Arc;

use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder};

use vigil_runtime::clock::Clock;

use crate::latest::{LatestCollector, LatestTable};
use crate::presence::Presence;

pub const AGENTS_CONNECTED: &str = "vigil_agents_connected";
pub const INGEST_SAMPLES_TOTAL: &str = "vigil_ingest_samples_total";
pub const INGEST_BATCHES_TOTAL: &str = "vigil_ingest_batches_total";
pub const INGEST_DUPLICATE_BATCHES_TOTAL: &str = "vigil_ingest_duplicate_batches_total";
pub const INGEST_REJECTED_TOTAL: &str = "vigil_ingest_rejected_total";
pub const ENROLLMENTS_TOTAL: &str = "vigil_enrollments_total";
pub const CMDB_ITEMS: &str = "vigil_cmdb_items";
pub const CMDB_CHANGES_TOTAL: &str = "vigil_cmdb_changes_total";
pub const INVENTORY_MESSAGES_TOTAL: &str = "vigil_inventory_messages_total";

/// Values of `vigil_ingest_rejected_total{reason}`. The first four match
/// `vigil_shared::codec::DecodeError::reason()`.
pub mod reason {
    pub const MALFORMED: &str = "malformed";
    pub const OVERSIZED: &str = "oversized";
    pub const TRUNCATED: &str = "truncated";
    pub const UNKNOWN_KIND: &str = "unknown_kind";
    /// A message not allowed at this point (e.g. a batch before hello).
    pub const UNEXPECTED: &str = "unexpected";
    /// A batch or hello from a connection without a client certificate.
    pub const UNAUTHENTICATED: &str = "unauthenticated";
    pub const REVOKED: &str = "revoked";
    pub const ENROLL_REFUSED: &str = "enroll_refused";
    /// The store failed to persist the batch (it is not acknowledged).
    pub const STORE_ERROR: &str = "store_error";

    /// Every known reason; each is exposed from the start, at 0.
    pub const ALL: &[&str] = &[
        MALFORMED,
        OVERSIZED,
        TRUNCATED,
        UNKNOWN_KIND,
        UNEXPECTED,
        UNAUTHENTICATED,
        REVOKED,
        ENROLL_REFUSED,
        STORE_ERROR,
    ];
}

/// `vigil_cmdb_items{type}` and `vigil_cmdb_changes_total{type}`, kept in memory: the CMDB
/// updates them after each committed reconcile, so a scrape never queries SQLite. The `type`
/// label only takes the known CI types ([`CMDB_TYPES`]), each exposed from the start at 0.
#[derive(Debug, Clone)]
pub struct CmdbMetrics {
    items: IntGaugeVec,
    changes: IntCounterVec,
}

/// Every value of the CMDB metrics' `type` label.
pub fn cmdb_types() -> impl Iterator<Item = &'static str> {
    use vigil_shared::inventory::ci_type;
    ci_type::DISCOVERED
        .iter()
        .copied()
        .chain([ci_type::BUSINESS_SERVICE])
}

impl CmdbMetrics {
    pub fn new() -> Result<CmdbMetrics, prometheus::Error> {
        let items = IntGaugeVec::new(
            Opts::new(
                CMDB_ITEMS,
                "Active configuration items in the CMDB, by CI type.",
            ),
            &["type"],
        )?;
        let changes = IntCounterVec::new(
            Opts::new(
                CMDB_CHANGES_TOTAL,
                "CMDB history rows written (additions, attribute changes, removals, lifecycle \
                 changes), by CI type.",
            ),
            &["type"],
        )?;
        for t in cmdb_types() {
            items.with_label_values(&[t]);
            changes.with_label_values(&[t]);
        }
        Ok(CmdbMetrics { items, changes })
    }

    /// Sets the active-item gauge of `ci_type` (at load, from the store).
    pub fn set_items(&self, ci_type: &'static str, n: i64) {
        self.items.with_label_values(&[ci_type]).set(n);
    }

    /// Records a committed change: `items` active CIs more (or fewer), `changes` history rows.
    pub fn record(&self, ci_type: &'static str, items: i64, changes: u64) {
        if items != 0 {
            self.items.with_label_values(&[ci_type]).add(items);
        }
        if changes != 0 {
            self.changes.with_label_values(&[ci_type]).inc_by(changes);
        }
    }

    /// Current `(items, changes)` of `ci_type`.
    pub fn get(&self, ci_type: &str) -> (i64, u64) {
        (
            self.items.with_label_values(&[ci_type]).get(),
            self.changes.with_label_values(&[ci_type]).get(),
        )
    }
}

/// Self metrics plus the registry `/metrics` is rendered from.
pub struct Metrics {
    registry: Registry,
    presence: Arc<Presence>,
    /// Set from [`Presence`] at every [`encode`](Metrics::encode).
    pub agents_connected: IntGauge,
    /// Samples in accepted (durable, not duplicate) batches.
    pub samples: IntCounter,
    /// Accepted batches.
    pub batches: IntCounter,
    /// Batches dropped because their sequence number was already stored (replays).
    pub duplicate_batches: IntCounter,
    ingest_rejected: IntCounterVec,
    enrollments: IntCounterVec,
    inventory_messages: IntCounterVec,
}

impl Metrics {
    /// A fresh registry with the self metrics and the host metrics of `table` and `presence`.
    pub fn new(
        table: Arc<LatestTable>,
        presence: Arc<Presence>,
        clock: Clock,
    ) -> Result<Metrics, prometheus::Error> {
        Self::with_registry(Registry::new(), table, presence, clock)
    }

    /// As [`new`](Metrics::new), on a registry the caller made (e.g. with a prefix or labels).
    pub fn with_registry(
        registry: Registry,
        table: Arc<LatestTable>,
        presence: Arc<Presence>,
        clock: Clock,
    ) -> Result<Metrics, prometheus::Error> {
        let agents_connected = IntGauge::new(
            AGENTS_CONNECTED,
            "Agents with an open connection to this collector.",
        )?;
        let ingest_samples = IntCounter::new(
            INGEST_SAMPLES_TOTAL,
            "Samples received in accepted metric batches.",
        )?;
        let ingest_batches =
            IntCounter::new(INGEST_BATCHES_TOTAL, "Metric batches accepted and stored.")?;
        let ingest_duplicate_batches = IntCounter::new(
            INGEST_DUPLICATE_BATCHES_TOTAL,
            "Metric batches dropped as duplicates of an already stored sequence number.",
        )?;
        let ingest_rejected = IntCounterVec::new(
            Opts::new(
                INGEST_REJECTED_TOTAL,
                "Frames, messages or connections rejected, by reason.",
            ),
            &["reason"],
        )?;
        let enrollments = IntCounterVec::new(
            Opts::new(ENROLLMENTS_TOTAL, "Enrollment requests, by result."),
            &["result"],
        )?;
        for r in reason::ALL {
            ingest_rejected.with_label_values(&[*r]);
        }
        for r in ["ok", "refused", "rate_limited", "abandoned"] {
            enrollments.with_label_values(&[r]);
        }
        let inventory_messages = IntCounterVec::new(
            Opts::new(
                INVENTORY_MESSAGES_TOTAL,
                "Inventory messages reconciled (snapshot, delta) or answered with a resync request.",
            ),
            &["kind"],
        )?;
        for k in ["snapshot", "delta", "resync"] {
            inventory_messages.with_label_values(&[k]);
        }
        registry.register(Box::new(inventory_messages.clone()))?;

        registry.register(Box::new(agents_connected.clone()))?;
        registry.register(Box::new(ingest_samples.clone()))?;
        registry.register(Box::new(ingest_batches.clone()))?;
        registry.register(Box::new(ingest_duplicate_batches.clone()))?;
        registry.register(Box::new(ingest_rejected.clone()))?;
        registry.register(Box::new(enrollments.clone()))?;
        registry.register(Box::new(LatestCollector::new(
            table,
            Arc::clone(&presence),
            clock,
        )?))?;

        Ok(Metrics {
            registry,
            presence,
            agents_connected,
            samples: ingest_samples,
            batches: ingest_batches,
            duplicate_batches: ingest_duplicate_batches,
            ingest_rejected,
            enrollments,
            inventory_messages,
        })
    }

    /// The registry, for other components to register their collectors on.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Exposes the CMDB metrics (`crate::cmdb::metrics_for(&db)`) on this registry.
    pub fn register_cmdb(&self, cmdb: &CmdbMetrics) -> Result<(), prometheus::Error> {
        self.registry.register(Box::new(cmdb.items.clone()))?;
        self.registry.register(Box::new(cmdb.changes.clone()))?;
        Ok(())
    }

    /// Counts one rejection; `reason` should be one of [`reason::ALL`].
    pub fn reject(&self, reason: &'static str) {
        self.ingest_rejected.with_label_values(&[reason]).inc();
    }

    /// Counts one accepted batch of `samples` samples.
    pub fn batch(&self, samples: usize) {
        self.batches.inc();
        self.samples
            .inc_by(u64::try_from(samples).unwrap_or(u64::MAX));
    }

    /// Counts one enrollment request by its result.
    pub fn enrollment(&self, ok: bool) {
        let result = if ok { "ok" } else { "refused" };
        self.enrollments.with_label_values(&[result]).inc();
    }

    /// Counts an enrollment refused unread: its address failed too often lately.
    pub fn enrollment_rate_limited(&self) {
        self.enrollments.with_label_values(&["rate_limited"]).inc();
    }

    /// Counts an enrollment undone because its certificate never reached the client.
    pub fn enrollment_abandoned(&self) {
        self.enrollments.with_label_values(&["abandoned"]).inc();
    }

    /// Counts one inventory message: `snapshot`, `delta` or `resync`.
    pub fn inventory(&self, kind: &'static str) {
        self.inventory_messages.with_label_values(&[kind]).inc();
    }

    /// The whole registry in the Prometheus text format (`prometheus::TEXT_FORMAT`).
    pub fn encode(&self) -> String {
        self.agents_connected
            .set(i64::try_from(self.presence.connected_count()).unwrap_or(i64::MAX));
        let mut out = String::new();
        if let Err(e) = TextEncoder::new().encode_utf8(&self.registry.gather(), &mut out) {
            // Only an empty or unnamed family can fail, which gather() never yields.
            tracing::error!(error = %e, "encoding /metrics failed");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::process::{Command, Stdio};

    use vigil_shared::proto::Sample;

    fn s(name: &str, labels: &[(&str, &str)], value: f64) -> Sample {
        Sample {
            ts_ms: 1_000,
            name: name.to_owned(),
            labels: labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            value,
        }
    }

    /// A table and a registry of agents with the default policy; the clock says `now_ms`.
    fn parts(now_ms: i64) -> (Arc<LatestTable>, Arc<Presence>, Metrics) {
        let table = Arc::new(LatestTable::new());
        let presence = Arc::new(Presence::new(crate::presence::Policy {
            down_after_intervals: 3,
            shutdown_grace_ms: 600_000,
        }));
        let metrics = Metrics::new(
            Arc::clone(&table),
            Arc::clone(&presence),
            Arc::new(move || now_ms),
        )
        .expect("metrics");
        (table, presence, metrics)
    }

    fn connect(table: &LatestTable, presence: &Presence, agent: &str, host: &str) {
        presence.connected(agent, host, 10_000, 0);
        table.attach(agent);
    }

    /// Two hosts at t=0 with 10 s intervals; the clock says `now_ms`.
    fn two_hosts(now_ms: i64) -> (Arc<LatestTable>, Metrics) {
        let (table, presence, metrics) = parts(now_ms);
        connect(&table, &presence, "agent-a", "web1");
        connect(&table, &presence, "agent-b", "db1");
        let web = [
            s("cpu_usage_ratio", &[], 0.25),
            s(
                "filesystem_used_ratio",
                &[("device", "/dev/sda1"), ("mountpoint", "/")],
                0.5,
            ),
            s(
                "filesystem_used_ratio",
                &[("device", "/dev/sdb1"), ("mountpoint", "/var")],
                0.75,
            ),
            s(
                "network_receive_bytes_total",
                &[("interface", "eth0")],
                1234.0,
            ),
            s("check_up", &[("check", "nginx")], 1.0),
            s("check_latency_seconds", &[("check", "nginx")], 0.002),
            s("not_a_metric", &[], 1.0),
        ];
        let db = [
            s("cpu_usage_ratio", &[], 0.9),
            s(
                "filesystem_used_ratio",
                &[("device", "/dev/vda1"), ("mountpoint", "/")],
                0.95,
            ),
            s("network_receive_bytes_total", &[("interface", "ens3")], 5e9),
        ];
        assert_eq!(table.apply("agent-a", &web, 0), 6);
        assert_eq!(table.apply("agent-b", &db, 20_000), 3);
        presence.heard("agent-b", 20_000);
        metrics.batch(web.len());
        metrics.batch(db.len());
        (table, metrics)
    }

    /// The exposition's lines for `families` (HELP, TYPE and samples), in order.
    fn check_lines(text: &str, families: &[&str], expected: &str) {
        let got: Vec<&str> = text
            .lines()
            .filter(|l| {
                let name = l
                    .strip_prefix("# HELP ")
                    .or_else(|| l.strip_prefix("# TYPE "))
                    .unwrap_or(l);
                let name = name.split(['{', ' ']).next().unwrap_or("");
                families.contains(&name)
            })
            .collect();
        assert_eq!(got.join("\n"), expected.trim(), "\nfull text:\n{text}");
    }

    #[test]
    fn exposition_of_two_hosts() {
        // At 35 s web1 (last heard at 0) is down, db1 (batch at 20 s) is up.
        let (_table, metrics) = two_hosts(35_000);
        let text = metrics.encode();
        check_lines(
            &text,
            &[
                "vigil_host_filesystem_used_ratio",
                "vigil_host_network_receive_bytes_total",
            ],
            r#"
# HELP vigil_host_filesystem_used_ratio Filesystem space used ratio (0..1).
# TYPE vigil_host_filesystem_used_ratio gauge
vigil_host_filesystem_used_ratio{host="db1",mountpoint="/",device="/dev/vda1"} 0.95
vigil_host_filesystem_used_ratio{host="web1",mountpoint="/",device="/dev/sda1"} 0.5
vigil_host_filesystem_used_ratio{host="web1",mountpoint="/var",device="/dev/sdb1"} 0.75
# HELP vigil_host_network_receive_bytes_total Bytes received on the interface.
# TYPE vigil_host_network_receive_bytes_total counter
vigil_host_network_receive_bytes_total{host="db1",interface="ens3"} 5000000000
vigil_host_network_receive_bytes_total{host="web1",interface="eth0"} 1234
"#,
        );
        check_lines(
            &text,
            &["vigil_host_up", "vigil_host_cpu_usage_ratio"],
            r#"
# HELP vigil_host_cpu_usage_ratio CPU busy ratio over the last interval (0..1).
# TYPE vigil_host_cpu_usage_ratio gauge
vigil_host_cpu_usage_ratio{host="db1"} 0.9
vigil_host_cpu_usage_ratio{host="web1"} 0.25
# HELP vigil_host_up 1 if the host's agent is connected and was heard from within the last 3 intervals, else 0 (also 0 while it is stopped on purpose).
# TYPE vigil_host_up gauge
vigil_host_up{host="db1"} 1
vigil_host_up{host="web1"} 0
"#,
        );
        check_lines(
            &text,
            &["vigil_check_up", "vigil_check_latency_seconds"],
            r#"
# HELP vigil_check_latency_seconds Duration of the check's last run, seconds.
# TYPE vigil_check_latency_seconds gauge
vigil_check_latency_seconds{host="web1",check="nginx"} 0.002
# HELP vigil_check_up 1 if the check passed on its last run, else 0.
# TYPE vigil_check_up gauge
vigil_check_up{host="web1",check="nginx"} 1
"#,
        );
        check_lines(
            &text,
            &[
                AGENTS_CONNECTED,
                INGEST_SAMPLES_TOTAL,
                INGEST_BATCHES_TOTAL,
                crate::latest::INGEST_IGNORED_SAMPLES_TOTAL,
            ],
            r#"
# HELP vigil_agents_connected Agents with an open connection to this collector.
# TYPE vigil_agents_connected gauge
vigil_agents_connected 2
# HELP vigil_ingest_batches_total Metric batches accepted and stored.
# TYPE vigil_ingest_batches_total counter
vigil_ingest_batches_total 2
# HELP vigil_ingest_ignored_samples_total Samples received but not kept as latest values (unknown metric name, invalid value or label); they are still stored.
# TYPE vigil_ingest_ignored_samples_total counter
vigil_ingest_ignored_samples_total{reason="invalid"} 0
vigil_ingest_ignored_samples_total{reason="unknown_metric"} 1
# HELP vigil_ingest_samples_total Samples received in accepted metric batches.
# TYPE vigil_ingest_samples_total counter
vigil_ingest_samples_total 10
"#,
        );
    }

    #[test]
    fn rejections_and_enrollments_start_at_zero() {
        let (_table, metrics) = two_hosts(0);
        metrics.reject(reason::MALFORMED);
        metrics.reject(reason::MALFORMED);
        metrics.reject(reason::REVOKED);
        metrics.enrollment(true);
        metrics.duplicate_batches.inc();
        let text = metrics.encode();
        check_lines(
            &text,
            &[
                INGEST_REJECTED_TOTAL,
                ENROLLMENTS_TOTAL,
                INGEST_DUPLICATE_BATCHES_TOTAL,
            ],
            r#"
# HELP vigil_enrollments_total Enrollment requests, by result.
# TYPE vigil_enrollments_total counter
vigil_enrollments_total{result="abandoned"} 0
vigil_enrollments_total{result="ok"} 1
vigil_enrollments_total{result="rate_limited"} 0
vigil_enrollments_total{result="refused"} 0
# HELP vigil_ingest_duplicate_batches_total Metric batches dropped as duplicates of an already stored sequence number.
# TYPE vigil_ingest_duplicate_batches_total counter
vigil_ingest_duplicate_batches_total 1
# HELP vigil_ingest_rejected_total Frames, messages or connections rejected, by reason.
# TYPE vigil_ingest_rejected_total counter
vigil_ingest_rejected_total{reason="enroll_refused"} 0
vigil_ingest_rejected_total{reason="malformed"} 2
vigil_ingest_rejected_total{reason="oversized"} 0
vigil_ingest_rejected_total{reason="revoked"} 1
vigil_ingest_rejected_total{reason="store_error"} 0
vigil_ingest_rejected_total{reason="truncated"} 0
vigil_ingest_rejected_total{reason="unauthenticated"} 0
vigil_ingest_rejected_total{reason="unexpected"} 0
vigil_ingest_rejected_total{reason="unknown_kind"} 0
"#,
        );
    }

    #[test]
    fn label_values_are_escaped() {
        let (table, presence, metrics) = parts(0);
        connect(&table, &presence, "a1", "we\"b\\1\nx");
        let mp = "/mnt/a \"b\" c\\d\ne";
        table.apply(
            "a1",
            &[s("filesystem_used_ratio", &[("mountpoint", mp)], 0.5)],
            0,
        );
        let text = metrics.encode();
        check_lines(
            &text,
            &["vigil_host_filesystem_used_ratio"],
            r#"
# HELP vigil_host_filesystem_used_ratio Filesystem space used ratio (0..1).
# TYPE vigil_host_filesystem_used_ratio gauge
vigil_host_filesystem_used_ratio{host="we\"b\\1\nx",mountpoint="/mnt/a \"b\" c\\d\ne"} 0.5
"#,
        );
        promtool_check(&text);
    }

    #[test]
    fn empty_registry_exposes_self_metrics_only() {
        let (_table, _presence, metrics) = parts(0);
        let text = metrics.encode();
        assert!(!text.contains("vigil_host_"), "{text}");
        assert!(text.contains("vigil_agents_connected 0\n"), "{text}");
        promtool_check(&text);
    }

    #[test]
    fn exposition_passes_promtool() {
        let (_table, metrics) = two_hosts(35_000);
        metrics.reject(reason::OVERSIZED);
        promtool_check(&metrics.encode());
    }

    #[test]
    fn registering_twice_on_one_registry_fails() {
        let (table, presence, m) = parts(0);
        let again = Metrics::with_registry(m.registry().clone(), table, presence, Arc::new(|| 0));
        assert!(again.is_err());
    }

    /// Runs the real `promtool check metrics` on `text` (stdin): it must print nothing and
    /// exit 0.
    fn promtool_check(text: &str) {
        let child = Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn();
        let mut child = match child {
            Ok(c) => c,
            Err(e) => panic!(
                "promtool is not installed or not runnable ({e}); install it \
                 (Debian/Ubuntu: apt-get install prometheus) to run this test"
            ),
        };
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(text.as_bytes())
            .expect("write to promtool");
        let out = child.wait_with_output().expect("promtool output");
        let report = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success() && report.trim().is_empty(),
            "promtool check metrics failed ({}):\n{report}\n--- input ---\n{text}",
            out.status
        );
    }
}
