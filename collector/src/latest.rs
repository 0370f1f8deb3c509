//! The latest-value table behind `/metrics`: the newest value of every host metric of every
//! agent, kept in memory.
//!
//! Ingest calls [`LatestTable::apply`] once per batch; the table takes the agent's entry once per
//! batch (a read lock on the agent map, then that agent's own mutex), so agents never contend
//! with each other and a known series costs a hash and a compare, no allocation.
//! [`LatestCollector`] turns the table into Prometheus metric families at scrape time, with
//! `vigil_host_up` for every agent [`Presence`] knows (every enrolled, unrevoked host, connected
//! or not), decided by [`crate::presence::health`].
//!
//! A series its agent no longer reports goes away, as Prometheus marks series stale: one not
//! updated for twice `down_after_intervals` of its agent's intervals
//! ([`Presence::series_expiry_ms`]) is left out of the exposition and dropped from the table. A
//! host that stopped keeps `vigil_host_up` (0) and loses its other series; a check removed from
//! an agent's configuration loses its `vigil_check_*` series.
//!
//! What gets exposed (and what is ignored, counted in
//! `vigil_ingest_ignored_samples_total{reason}`): only metric names of
//! [`vigil_shared::metric_names::HOST_METRICS`] plus `check_up` / `check_latency_seconds`
//! (`unknown_metric`); only the label names each metric declares, other labels are dropped;
//! values must be finite and label values at most [`MAX_LABEL_VALUE_BYTES`] (`invalid`). Ignored
//! samples are still stored by the store; they just have no latest value here.
//!
//! An agent has at most [`Caps::max_series`] series in the table (`[agents] max_series`), and at
//! most [`Caps::max_checks`] distinct checks among them (`[agents] max_checks`). A sample that
//! would start a series past a cap is *refused*: [`LatestTable::apply_admitting`] tells the
//! caller which, and ingest drops them from what it stores and evaluates too (counted as
//! `vigil_ingest_rejected_total{reason="series_limit"|"check_limit"}`). Known series always
//! update.
//!
//! This module never reads the clock (time is passed in, or comes from the caller's [`Clock`]),
//! never does I/O and never panics on agent data.

use std::collections::hash_map::RandomState;
use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};

use prometheus::core::{Collector, Desc};
use prometheus::proto::{self, LabelPair, MetricFamily, MetricType};
use vigil_shared::metric_names::{self, HOST_METRICS};
use vigil_shared::proto::Sample;

/// Most label names any exposed metric declares (checked at compile time below).
const MAX_LABELS: usize = 4;
const _: () = {
    let mut i = 0;
    while i < HOST_METRICS.len() {
        assert!(HOST_METRICS[i].labels.len() <= MAX_LABELS);
        i += 1;
    }
};

/// Default of [`Caps::max_series`] (`[agents] max_series`).
pub const MAX_SERIES_PER_HOST: usize = 4096;
/// Default of [`Caps::max_checks`] (`[agents] max_checks`).
pub const MAX_CHECKS_PER_HOST: usize = 256;

/// What one agent may hold in the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caps {
    /// Series in all.
    pub max_series: usize,
    /// Distinct checks (values of the `check` label of `check_up` / `check_latency_seconds`).
    pub max_checks: usize,
}

impl Default for Caps {
    fn default() -> Self {
        Caps {
            max_series: MAX_SERIES_PER_HOST,
            max_checks: MAX_CHECKS_PER_HOST,
        }
    }
}

/// Why a sample was refused by [`LatestTable::apply_admitting`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// It would start a series past [`Caps::max_series`].
    SeriesLimit,
    /// It would start a check past [`Caps::max_checks`].
    CheckLimit,
}

impl Refused {
    /// The reason counted under `vigil_ingest_rejected_total{reason}`.
    pub fn reason(self) -> &'static str {
        match self {
            Refused::SeriesLimit => "series_limit",
            Refused::CheckLimit => "check_limit",
        }
    }
}
/// Longest label value kept; samples with a longer one are ignored.
pub const MAX_LABEL_VALUE_BYTES: usize = 1024;

/// Family names exposed besides `vigil_host_<name>`.
pub const HOST_UP: &str = "vigil_host_up";
pub const CHECK_UP: &str = "vigil_check_up";
pub const CHECK_LATENCY_SECONDS: &str = "vigil_check_latency_seconds";
pub const INGEST_IGNORED_SAMPLES_TOTAL: &str = "vigil_ingest_ignored_samples_total";

/// Reasons of `vigil_ingest_ignored_samples_total{reason}`.
pub const IGNORED_REASONS: [&str; 2] = ["invalid", "unknown_metric"];
const INVALID: usize = 0;
const UNKNOWN_METRIC: usize = 1;

const CHECK_LABELS: &[&str] = &["check"];

use vigil_runtime::clock::Clock;

use crate::presence::{AgentStatus, Presence};

/// One metric the table keeps: its wire name, exposed family and declared labels.
struct MetricDef {
    wire: &'static str,
    family: String,
    help: &'static str,
    counter: bool,
    labels: &'static [&'static str],
}

fn metric_defs() -> Vec<MetricDef> {
    let mut defs: Vec<MetricDef> = HOST_METRICS
        .iter()
        .map(|m| MetricDef {
            wire: m.name,
            family: format!("vigil_host_{}", m.name),
            help: m.help,
            counter: m.counter,
            labels: m.labels,
        })
        .collect();
    defs.push(MetricDef {
        wire: metric_names::CHECK_UP,
        family: CHECK_UP.to_owned(),
        help: "1 if the check passed on its last run, else 0.",
        counter: false,
        labels: CHECK_LABELS,
    });
    defs.push(MetricDef {
        wire: metric_names::CHECK_LATENCY_SECONDS,
        family: CHECK_LATENCY_SECONDS.to_owned(),
        help: "Duration of the check's last run, seconds.",
        counter: false,
        labels: CHECK_LABELS,
    });
    defs
}

/// The latest value of one series, as [`LatestTable::get`] returns it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LatestValue {
    pub value: f64,
    pub ts_ms: i64,
}

struct Series {
    metric: u8,
    /// Values of the metric's declared labels, in declaration order; "" = absent.
    labels: Box<[Box<str>]>,
    value: f64,
    ts_ms: i64,
    /// When a sample of it last arrived (the collector's clock): what expiry looks at, so an
    /// agent's clock cannot keep a series alive or age it early.
    updated_ms: i64,
}

impl Series {
    fn matches(&self, metric: u8, values: &[&str]) -> bool {
        self.metric == metric
            && self.labels.len() == values.len()
            && self.labels.iter().zip(values).all(|(a, b)| &**a == *b)
    }
}

/// Series sharing one 64-bit key hash (almost always exactly one).
struct Slot {
    first: Series,
    more: Vec<Series>,
}

impl Slot {
    fn find_mut(&mut self, metric: u8, values: &[&str]) -> Option<&mut Series> {
        if self.first.matches(metric, values) {
            return Some(&mut self.first);
        }
        self.more.iter_mut().find(|s| s.matches(metric, values))
    }

    fn find(&self, metric: u8, values: &[&str]) -> Option<&Series> {
        std::iter::once(&self.first)
            .chain(&self.more)
            .find(|s| s.matches(metric, values))
    }

    fn iter(&self) -> impl Iterator<Item = &Series> {
        std::iter::once(&self.first).chain(&self.more)
    }
}

/// The map key is already a keyed SipHash of the series, so the map hashes it no further.
#[derive(Default)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8) | u64::from(b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

struct HostEntry {
    /// Set by [`LatestTable::remove`]: a batch racing the revocation changes nothing.
    removed: bool,
    series: HashMap<u64, Slot, BuildHasherDefault<IdHasher>>,
    series_count: usize,
    /// Series per check name (`check_up` and `check_latency_seconds`: at most 2 each).
    checks: HashMap<Box<str>, u8>,
}

impl HostEntry {
    /// Drops the series not updated since `before_ms`; returns how many went. `is_check` tells
    /// the metrics whose label is a check name.
    fn expire(&mut self, before_ms: i64, is_check: impl Fn(u8) -> bool) -> usize {
        let mut gone: Vec<(u8, Box<str>)> = Vec::new();
        let mut count = 0;
        let mut went = |s: &Series| {
            count += 1;
            if is_check(s.metric) {
                if let Some(name) = s.labels.first() {
                    gone.push((s.metric, name.clone()));
                }
            }
        };
        self.series.retain(|_, slot| {
            slot.more.retain(|s| {
                let keep = s.updated_ms >= before_ms;
                if !keep {
                    went(s);
                }
                keep
            });
            if slot.first.updated_ms >= before_ms {
                return true;
            }
            went(&slot.first);
            match slot.more.pop() {
                Some(next) => {
                    slot.first = next;
                    true
                }
                None => false,
            }
        });
        self.series_count -= count;
        for (_, name) in gone {
            if let Some(n) = self.checks.get_mut(&name) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    self.checks.remove(&name);
                }
            }
        }
        count
    }
}

/// The in-memory latest-value table. Share it as `Arc<LatestTable>`.
pub struct LatestTable {
    defs: Vec<MetricDef>,
    hasher: RandomState,
    hosts: RwLock<HashMap<Arc<str>, Arc<Mutex<HostEntry>>>>,
    ignored: [AtomicU64; 2],
    caps: Caps,
}

fn lock(entry: &Mutex<HostEntry>) -> MutexGuard<'_, HostEntry> {
    entry.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Default for LatestTable {
    fn default() -> Self {
        Self::new()
    }
}

impl LatestTable {
    pub fn new() -> Self {
        Self::with_caps(Caps::default())
    }

    /// A table holding at most `caps` per agent.
    pub fn with_caps(caps: Caps) -> Self {
        LatestTable {
            defs: metric_defs(),
            hasher: RandomState::new(),
            hosts: RwLock::new(HashMap::new()),
            ignored: Default::default(),
            caps,
        }
    }

    /// Whether metric `id` is labelled by a check name.
    fn is_check(&self, id: u8) -> bool {
        self.defs
            .get(usize::from(id))
            .is_some_and(|d| d.labels == CHECK_LABELS)
    }

    fn entry(&self, agent_id: &str) -> Option<Arc<Mutex<HostEntry>>> {
        let hosts = self.hosts.read().unwrap_or_else(PoisonError::into_inner);
        hosts.get(agent_id).cloned()
    }

    /// An agent said hello: its batches are kept from now on (idempotent).
    pub fn attach(&self, agent_id: &str) {
        if self.entry(agent_id).is_some() {
            return;
        }
        let mut hosts = self.hosts.write().unwrap_or_else(PoisonError::into_inner);
        hosts.entry(Arc::from(agent_id)).or_insert_with(|| {
            Arc::new(Mutex::new(HostEntry {
                removed: false,
                series: HashMap::default(),
                series_count: 0,
                checks: HashMap::new(),
            }))
        });
    }

    /// The agent is revoked: forget it and its series.
    pub fn remove(&self, agent_id: &str) {
        let mut hosts = self.hosts.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(entry) = hosts.remove(agent_id) {
            lock(&entry).removed = true;
        }
    }

    /// Resolves a sample's name and labels to (metric id, label values); `Err(reason)` if ignored.
    fn resolve<'a>(
        &self,
        name: &str,
        labels: impl Iterator<Item = (&'a str, &'a str)> + Clone,
        out: &mut [&'a str; MAX_LABELS],
    ) -> Result<(u8, usize), usize> {
        let Some(id) = self.defs.iter().position(|d| d.wire == name) else {
            return Err(UNKNOWN_METRIC);
        };
        let def = &self.defs[id];
        for (slot, want) in out.iter_mut().zip(def.labels) {
            *slot = labels
                .clone()
                .find(|(k, _)| k == want)
                .map_or("", |(_, v)| v);
            if slot.len() > MAX_LABEL_VALUE_BYTES {
                return Err(INVALID);
            }
        }
        // `defs` has fewer than 256 entries, so the cast is lossless.
        Ok((id as u8, def.labels.len()))
    }

    /// Applies one batch of the agent's samples received at `now_ms`. A sample older than the
    /// stored value of its series (late spool replay) does not overwrite it. Returns how many
    /// samples updated the table (late, ignored and refused ones do not count); samples of an
    /// agent never [`attach`](Self::attach)ed are dropped.
    pub fn apply(&self, agent_id: &str, samples: &[Sample], now_ms: i64) -> usize {
        self.apply_admitting(agent_id, samples, now_ms, &mut Vec::new())
    }

    /// [`apply`](Self::apply), pushing to `refused` the index of every sample refused by a cap
    /// (in order), with why.
    pub fn apply_admitting(
        &self,
        agent_id: &str,
        samples: &[Sample],
        now_ms: i64,
        refused: &mut Vec<(usize, Refused)>,
    ) -> usize {
        let Some(entry) = self.entry(agent_id) else {
            tracing::debug!(agent_id, "samples for an agent not in the table dropped");
            return 0;
        };
        let mut e = lock(&entry);
        if e.removed {
            return 0;
        }
        let mut applied = 0;
        let mut ignored = [0u64; 2];
        let mut buf = [""; MAX_LABELS];
        for (i, s) in samples.iter().enumerate() {
            let labels = s.labels.iter().map(|(k, v)| (k.as_str(), v.as_str()));
            let (metric, n) = match self.resolve(&s.name, labels, &mut buf) {
                Ok(r) => r,
                Err(reason) => {
                    ignored[reason] += 1;
                    continue;
                }
            };
            if !s.value.is_finite() {
                ignored[INVALID] += 1;
                continue;
            }
            let values = &buf[..n];
            let hash = self.hasher.hash_one((metric, values));
            let e = &mut *e;
            if let Some(slot) = e.series.get_mut(&hash) {
                if let Some(series) = slot.find_mut(metric, values) {
                    if s.ts_ms >= series.ts_ms {
                        series.value = s.value;
                        series.ts_ms = s.ts_ms;
                        series.updated_ms = now_ms;
                        applied += 1;
                    }
                    continue;
                }
            }
            if e.series_count >= self.caps.max_series {
                refused.push((i, Refused::SeriesLimit));
                continue;
            }
            if self.is_check(metric) {
                let name = values.first().copied().unwrap_or("");
                let full = e.checks.len() >= self.caps.max_checks;
                match e.checks.get_mut(name) {
                    Some(n) => *n = n.saturating_add(1),
                    None if full => {
                        refused.push((i, Refused::CheckLimit));
                        continue;
                    }
                    None => {
                        e.checks.insert(Box::from(name), 1);
                    }
                }
            }
            let series = Series {
                metric,
                labels: values.iter().map(|v| Box::from(*v)).collect(),
                value: s.value,
                ts_ms: s.ts_ms,
                updated_ms: now_ms,
            };
            match e.series.get_mut(&hash) {
                Some(slot) => slot.more.push(series),
                None => {
                    e.series.insert(
                        hash,
                        Slot {
                            first: series,
                            more: Vec::new(),
                        },
                    );
                }
            }
            e.series_count += 1;
            applied += 1;
        }
        drop(e);
        for (counter, n) in self.ignored.iter().zip(ignored) {
            if n > 0 {
                counter.fetch_add(n, Ordering::Relaxed);
            }
        }
        applied
    }

    /// Samples ignored so far, per reason of [`IGNORED_REASONS`].
    pub fn ignored_counts(&self) -> [u64; 2] {
        [0, 1].map(|i| self.ignored[i].load(Ordering::Relaxed))
    }

    /// The latest value of one series (`name` as on the wire, labels as the agent sends them).
    pub fn get(&self, agent_id: &str, name: &str, labels: &[(&str, &str)]) -> Option<LatestValue> {
        let mut buf = [""; MAX_LABELS];
        let (metric, n) = self.resolve(name, labels.iter().copied(), &mut buf).ok()?;
        let values = &buf[..n];
        let entry = self.entry(agent_id)?;
        let e = lock(&entry);
        let series = e
            .series
            .get(&self.hasher.hash_one((metric, values)))?
            .find(metric, values)?;
        Some(LatestValue {
            value: series.value,
            ts_ms: series.ts_ms,
        })
    }

    /// How many series the agent has in the table.
    pub fn series_count(&self, agent_id: &str) -> usize {
        self.entry(agent_id).map_or(0, |e| lock(&e).series_count)
    }
}

/// Builds the host metric families from a [`LatestTable`] at scrape time.
///
/// Several agents may report the same hostname (a reinstalled host, a cloned VM); the host
/// label must stay unique, so per hostname one agent is exposed: a connected one before a
/// disconnected one, then the most recently seen, then the smallest agent id.
pub struct LatestCollector {
    table: Arc<LatestTable>,
    presence: Arc<Presence>,
    clock: Clock,
    descs: Vec<Desc>,
    up_help: String,
}

fn label(name: &str, value: &str) -> LabelPair {
    let mut pair = LabelPair::default();
    pair.set_name(name.to_owned());
    pair.set_value(value.to_owned());
    pair
}

fn sample(labels: Vec<LabelPair>, value: f64, counter: bool) -> proto::Metric {
    let mut m = proto::Metric::from_label(labels);
    if counter {
        let mut c = proto::Counter::default();
        c.set_value(value);
        m.set_counter(c);
    } else {
        let mut g = proto::Gauge::default();
        g.set_value(value);
        m.set_gauge(g);
    }
    m
}

fn family(name: &str, help: &str, counter: bool, metrics: Vec<proto::Metric>) -> MetricFamily {
    let mut f = MetricFamily::default();
    f.set_name(name.to_owned());
    f.set_help(help.to_owned());
    f.set_field_type(if counter {
        MetricType::COUNTER
    } else {
        MetricType::GAUGE
    });
    f.set_metric(metrics);
    f
}

impl LatestCollector {
    pub fn new(
        table: Arc<LatestTable>,
        presence: Arc<Presence>,
        clock: Clock,
    ) -> Result<Self, prometheus::Error> {
        let up_help = format!(
            "1 if the host's agent is connected and was heard from within the last {} intervals, \
             else 0 (also 0 while it is stopped on purpose).",
            presence.policy().down_after_intervals
        );
        let strings = |l: &[&str]| l.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        let mut descs = Vec::with_capacity(table.defs.len() + 2);
        for d in &table.defs {
            let mut labels = vec!["host".to_owned()];
            labels.extend(strings(d.labels));
            descs.push(Desc::new(
                d.family.clone(),
                d.help.to_owned(),
                labels,
                HashMap::new(),
            )?);
        }
        descs.push(Desc::new(
            HOST_UP.to_owned(),
            up_help.clone(),
            strings(&["host"]),
            HashMap::new(),
        )?);
        descs.push(Desc::new(
            INGEST_IGNORED_SAMPLES_TOTAL.to_owned(),
            IGNORED_HELP.to_owned(),
            strings(&["reason"]),
            HashMap::new(),
        )?);
        Ok(LatestCollector {
            table,
            presence,
            clock,
            descs,
            up_help,
        })
    }
}

/// The rank of an agent competing to be exposed under its hostname: connected first, then the
/// most recently seen, then the smaller agent id.
fn rank(a: &AgentStatus) -> (bool, i64, std::cmp::Reverse<&str>) {
    (
        a.connected(),
        a.observed.last_seen_ms,
        std::cmp::Reverse(&*a.agent_id),
    )
}

const IGNORED_HELP: &str = "Samples received but not kept as latest values (unknown metric name, \
     invalid value or label); they are still stored.";

impl Collector for LatestCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let now_ms = (self.clock)();
        let table = &self.table;

        // One agent per hostname: the best by (connected, last seen, smaller agent id).
        let mut chosen: BTreeMap<Arc<str>, AgentStatus> = BTreeMap::new();
        for status in self.presence.all(now_ms) {
            if chosen
                .get(&status.hostname)
                .is_none_or(|best| rank(&status) > rank(best))
            {
                chosen.insert(Arc::clone(&status.hostname), status);
            }
        }

        let mut per_metric: Vec<Vec<proto::Metric>> =
            table.defs.iter().map(|_| Vec::new()).collect();
        let mut up = Vec::with_capacity(chosen.len());
        for (hostname, status) in &chosen {
            up.push(sample(
                vec![label("host", hostname)],
                status.health.metric(),
                false,
            ));
            let Some(entry) = table.entry(&status.agent_id) else {
                continue;
            };
            let mut e = lock(&entry);
            let expiry = self.presence.series_expiry_ms(&status.observed);
            e.expire(now_ms.saturating_sub(expiry), |id| table.is_check(id));
            let mut series: Vec<&Series> = e.series.values().flat_map(Slot::iter).collect();
            series.sort_unstable_by(|a, b| (a.metric, &a.labels).cmp(&(b.metric, &b.labels)));
            for s in &series {
                let def = &table.defs[usize::from(s.metric)];
                let mut labels = Vec::with_capacity(1 + def.labels.len());
                labels.push(label("host", hostname));
                for (name, value) in def.labels.iter().zip(s.labels.iter()) {
                    if !value.is_empty() {
                        labels.push(label(name, value));
                    }
                }
                per_metric[usize::from(s.metric)].push(sample(labels, s.value, def.counter));
            }
        }

        let mut out = Vec::with_capacity(table.defs.len() + 2);
        for (def, metrics) in table.defs.iter().zip(per_metric) {
            if !metrics.is_empty() {
                out.push(family(&def.family, def.help, def.counter, metrics));
            }
        }
        if !up.is_empty() {
            out.push(family(HOST_UP, &self.up_help, false, up));
        }
        let ignored = IGNORED_REASONS
            .iter()
            .zip(table.ignored_counts())
            .map(|(reason, count)| sample(vec![label("reason", reason)], count as f64, true))
            .collect();
        out.push(family(
            INGEST_IGNORED_SAMPLES_TOTAL,
            IGNORED_HELP,
            true,
            ignored,
        ));
        out.sort_by(|a, b| a.name().cmp(b.name()));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    use prometheus::{Registry, TextEncoder};

    pub(crate) fn s(name: &str, labels: &[(&str, &str)], ts_ms: i64, value: f64) -> Sample {
        Sample {
            ts_ms,
            name: name.to_owned(),
            labels: labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            value,
        }
    }

    const FS: &[(&str, &str)] = &[("device", "/dev/sda1"), ("mountpoint", "/")];

    /// Applies `batches` (each at its own receive time) to a fresh connected agent, then
    /// checks what `apply` returned per batch and the latest value of `probe`.
    fn check_apply(
        batches: &[(&[Sample], i64)],
        probe: (&str, &[(&str, &str)]),
        applied: &[usize],
        expected: Option<(f64, i64)>,
    ) {
        let t = LatestTable::new();
        t.attach("a1");
        let got: Vec<usize> = batches
            .iter()
            .map(|(b, now)| t.apply("a1", b, *now))
            .collect();
        assert_eq!(got, applied, "applied per batch");
        let latest = t.get("a1", probe.0, probe.1).map(|v| (v.value, v.ts_ms));
        assert_eq!(latest, expected, "latest value of {probe:?}");
    }

    #[test]
    fn apply_keeps_the_newest_value() {
        let first = [s("load1", &[], 1_000, 1.0)];
        let newer = [s("load1", &[], 2_000, 2.0)];
        let older = [s("load1", &[], 500, 0.5)];
        let same_ts = [s("load1", &[], 2_000, 3.0)];
        // Newer overwrites.
        check_apply(
            &[(&first, 1), (&newer, 2)],
            ("load1", &[]),
            &[1, 1],
            Some((2.0, 2_000)),
        );
        // A late (replayed) sample does not overwrite and does not count.
        check_apply(
            &[(&newer, 1), (&older, 2)],
            ("load1", &[]),
            &[1, 0],
            Some((2.0, 2_000)),
        );
        // The same timestamp again: last one received wins.
        check_apply(
            &[(&newer, 1), (&same_ts, 2)],
            ("load1", &[]),
            &[1, 1],
            Some((3.0, 2_000)),
        );
        // A late sample of a series never seen is still its latest value.
        check_apply(&[(&older, 1)], ("load1", &[]), &[1], Some((0.5, 500)));
        // Out of order inside one batch.
        let mixed = [s("load1", &[], 2_000, 2.0), s("load1", &[], 1_000, 1.0)];
        check_apply(&[(&mixed, 1)], ("load1", &[]), &[1], Some((2.0, 2_000)));
    }

    #[test]
    fn apply_keys_series_by_declared_labels() {
        let b = [
            s("filesystem_used_ratio", FS, 1, 0.5),
            s(
                "filesystem_used_ratio",
                &[("device", "/dev/sdb1"), ("mountpoint", "/data")],
                1,
                0.7,
            ),
            // Undeclared labels (and a forged `host`) are dropped: same series as the first.
            s(
                "filesystem_used_ratio",
                &[
                    ("device", "/dev/sda1"),
                    ("host", "x"),
                    ("mountpoint", "/"),
                    ("zz", "1"),
                ],
                2,
                0.6,
            ),
        ];
        check_apply(
            &[(&b, 1)],
            ("filesystem_used_ratio", FS),
            &[3],
            Some((0.6, 2)),
        );
        check_apply(
            &[(&b, 1)],
            (
                "filesystem_used_ratio",
                &[("mountpoint", "/data"), ("device", "/dev/sdb1")],
            ),
            &[3],
            Some((0.7, 1)),
        );
        check_apply(
            &[(&b, 1)],
            ("filesystem_used_ratio", &[("mountpoint", "/")]),
            &[3],
            None,
        );
        // Check metrics keep their `check` label.
        let c = [
            s("check_up", &[("check", "nginx")], 1, 1.0),
            s("check_up", &[("check", "ssh")], 1, 0.0),
        ];
        check_apply(
            &[(&c, 1)],
            ("check_up", &[("check", "ssh")]),
            &[2],
            Some((0.0, 1)),
        );
    }

    #[test]
    fn apply_ignores_and_counts_bad_samples() {
        let t = LatestTable::new();
        t.attach("a1");
        let long = "x".repeat(MAX_LABEL_VALUE_BYTES + 1);
        let b = [
            s("no_such_metric", &[], 1, 1.0),
            s("load1", &[], 1, f64::NAN),
            s("load1", &[], 1, f64::INFINITY),
            s("filesystem_used_ratio", &[("mountpoint", &long)], 1, 0.1),
            s("load1", &[], 1, 1.5),
        ];
        assert_eq!(t.apply("a1", &b, 1), 1);
        // [invalid, unknown_metric]
        assert_eq!(t.ignored_counts(), [3, 1]);
    }

    #[test]
    fn series_and_checks_past_the_caps_are_refused_and_known_ones_still_update() {
        let t = LatestTable::with_caps(Caps {
            max_series: 10,
            max_checks: 3,
        });
        t.attach("a1");
        let mut refused = Vec::new();
        // Two series per check: the fourth check is refused, not its first three.
        let checks: Vec<Sample> = (0..5)
            .flat_map(|i| {
                let c = format!("c{i}");
                [
                    s("check_up", &[("check", &c)], 1, 1.0),
                    s("check_latency_seconds", &[("check", &c)], 1, 0.1),
                ]
            })
            .collect();
        assert_eq!(t.apply_admitting("a1", &checks, 1, &mut refused), 6);
        assert_eq!(
            refused,
            (6..10)
                .map(|i| (i, Refused::CheckLimit))
                .collect::<Vec<_>>()
        );
        refused.clear();
        let many: Vec<Sample> = (0..8)
            .map(|i| {
                s(
                    "filesystem_used_ratio",
                    &[("mountpoint", &format!("/m{i}"))],
                    1,
                    0.1,
                )
            })
            .collect();
        assert_eq!(t.apply_admitting("a1", &many, 2, &mut refused), 4);
        assert_eq!(
            refused,
            (4..8)
                .map(|i| (i, Refused::SeriesLimit))
                .collect::<Vec<_>>()
        );
        assert_eq!(t.series_count("a1"), 10);
        // Known series still update at the limits; refusals are not "ignored".
        refused.clear();
        let known = [
            s("check_up", &[("check", "c0")], 5, 0.0),
            s("filesystem_used_ratio", &[("mountpoint", "/m0")], 5, 0.2),
        ];
        assert_eq!(t.apply_admitting("a1", &known, 3, &mut refused), 2);
        assert!(refused.is_empty());
        assert_eq!(t.ignored_counts(), [0, 0]);
        // Another agent has caps of its own.
        t.attach("a2");
        assert_eq!(t.apply_admitting("a2", &checks[6..], 3, &mut refused), 4);
        assert!(refused.is_empty());
    }

    #[test]
    fn an_expired_check_frees_its_place_under_the_cap() {
        let t = LatestTable::with_caps(Caps {
            max_series: 100,
            max_checks: 1,
        });
        t.attach("a1");
        let mut refused = Vec::new();
        t.apply_admitting(
            "a1",
            &[s("check_up", &[("check", "old")], 1, 1.0)],
            1_000,
            &mut refused,
        );
        t.apply_admitting(
            "a1",
            &[s("check_up", &[("check", "new")], 2, 1.0)],
            2_000,
            &mut refused,
        );
        assert_eq!(refused, [(0, Refused::CheckLimit)]);
        let entry = t.entry("a1").expect("attached");
        let mut e = lock(&entry);
        assert_eq!(e.expire(1_500, |id| t.is_check(id)), 1);
        drop(e);
        refused.clear();
        t.apply_admitting(
            "a1",
            &[s("check_up", &[("check", "new")], 3, 1.0)],
            3_000,
            &mut refused,
        );
        assert!(refused.is_empty(), "{refused:?}");
        assert!(t.get("a1", "check_up", &[("check", "new")]).is_some());
    }

    #[test]
    fn apply_for_unknown_or_removed_agent_is_dropped() {
        let t = LatestTable::new();
        assert_eq!(t.apply("ghost", &[s("load1", &[], 1, 1.0)], 1), 0);
        t.attach("a1");
        t.remove("a1");
        assert_eq!(t.apply("a1", &[s("load1", &[], 1, 1.0)], 1), 0);
        assert_eq!(t.series_count("a1"), 0);
        assert_eq!(t.get("a1", "load1", &[]), None);
    }

    fn presence() -> Arc<Presence> {
        Arc::new(Presence::new(crate::presence::Policy {
            down_after_intervals: 3,
            shutdown_grace_ms: 600_000,
        }))
    }

    /// Connects `agent` at `now` (interval 10 s) in both the registry and the table.
    fn connect(t: &LatestTable, p: &Presence, agent: &str, host: &str, now: i64) -> u64 {
        t.attach(agent);
        p.connected(agent, host, 10_000, now)
    }

    fn collect_text(t: &Arc<LatestTable>, p: &Arc<Presence>, now_ms: i64) -> String {
        let c = LatestCollector::new(Arc::clone(t), Arc::clone(p), Arc::new(move || now_ms))
            .expect("collector");
        let mut out = String::new();
        TextEncoder::new()
            .encode_utf8(&c.collect(), &mut out)
            .expect("encode");
        out
    }

    #[test]
    fn one_agent_per_hostname_is_exposed() {
        let t = Arc::new(LatestTable::new());
        let p = presence();
        // The old install of web1 disconnected; the new one is connected.
        let g = connect(&t, &p, "old", "web1", 0);
        t.apply("old", &[s("load1", &[], 1, 9.0)], 1);
        p.disconnected("old", g, false, 2);
        connect(&t, &p, "new", "web1", 5);
        t.apply("new", &[s("load1", &[], 6, 1.0)], 6);
        let text = collect_text(&t, &p, 10);
        assert!(
            text.contains("vigil_host_load1{host=\"web1\"} 1\n"),
            "{text}"
        );
        assert!(text.contains("vigil_host_up{host=\"web1\"} 1\n"), "{text}");
        assert_eq!(text.matches("host=\"web1\"").count(), 2, "{text}");
    }

    #[test]
    fn collect_is_deterministic_and_sorted() {
        let t = Arc::new(LatestTable::new());
        let p = presence();
        for (id, host) in [("b", "zeta"), ("a", "alpha"), ("c", "mid")] {
            connect(&t, &p, id, host, 0);
            let b = [
                s("filesystem_used_ratio", &[("mountpoint", "/var")], 1, 0.2),
                s("filesystem_used_ratio", &[("mountpoint", "/")], 1, 0.1),
                s("load1", &[], 1, 1.0),
            ];
            t.apply(id, &b, 1);
        }
        let text = collect_text(&t, &p, 1);
        assert_eq!(text, collect_text(&t, &p, 1));
        let fs: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("vigil_host_filesystem_used_ratio{"))
            .collect();
        assert_eq!(
            fs,
            [
                "vigil_host_filesystem_used_ratio{host=\"alpha\",mountpoint=\"/\"} 0.1",
                "vigil_host_filesystem_used_ratio{host=\"alpha\",mountpoint=\"/var\"} 0.2",
                "vigil_host_filesystem_used_ratio{host=\"mid\",mountpoint=\"/\"} 0.1",
                "vigil_host_filesystem_used_ratio{host=\"mid\",mountpoint=\"/var\"} 0.2",
                "vigil_host_filesystem_used_ratio{host=\"zeta\",mountpoint=\"/\"} 0.1",
                "vigil_host_filesystem_used_ratio{host=\"zeta\",mountpoint=\"/var\"} 0.2",
            ]
        );
        let families: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .collect();
        let mut sorted = families.clone();
        sorted.sort_unstable();
        assert_eq!(families, sorted);
    }

    #[test]
    fn series_an_agent_stops_sending_leave_the_exposition_host_up_stays() {
        let t = Arc::new(LatestTable::new());
        let p = presence();
        let g = connect(&t, &p, "a1", "web1", 0);
        let b = [
            s("load1", &[], 0, 1.0),
            s("check_up", &[("check", "gone")], 0, 1.0),
        ];
        t.apply("a1", &b, 0);
        // The check leaves the agent's configuration; load1 goes on.
        for now in (10_000..=70_000).step_by(10_000) {
            t.apply("a1", &[s("load1", &[], now, 1.0)], now);
        }
        // Expiry: 2 x 3 intervals of 10 s = 60 s without a sample.
        let text = collect_text(&t, &p, 60_000);
        assert!(text.contains("check=\"gone\""), "not yet: {text}");
        let text = collect_text(&t, &p, 60_001);
        assert!(!text.contains("check=\"gone\""), "{text}");
        assert!(
            text.contains("vigil_host_load1{host=\"web1\"} 1\n"),
            "{text}"
        );
        assert_eq!(t.series_count("a1"), 1, "dropped from the table too");
        // The host stops: its series go, vigil_host_up stays, as 0.
        p.disconnected("a1", g, true, 70_000);
        let text = collect_text(&t, &p, 130_001);
        assert!(!text.contains("vigil_host_load1"), "{text}");
        assert!(text.contains("vigil_host_up{host=\"web1\"} 0\n"), "{text}");
    }

    #[test]
    fn every_known_host_has_host_up() {
        let t = Arc::new(LatestTable::new());
        let p = presence();
        p.restore(
            vec![crate::presence::Restored {
                agent_id: "quiet".into(),
                hostname: "never-connected".into(),
                interval_ms: None,
                last_seen_ms: None,
                stopped_ms: None,
                outage_open: true,
            }],
            0,
        );
        let text = collect_text(&t, &p, 1);
        assert!(
            text.contains("vigil_host_up{host=\"never-connected\"} 0\n"),
            "{text}"
        );
    }

    /// 100 series per agent, as a real host might have them.
    fn host_batch(round: i64) -> Vec<Sample> {
        let mut b = Vec::with_capacity(100);
        let v = round as f64;
        for name in [
            "cpu_usage_ratio",
            "load1",
            "load5",
            "load15",
            "memory_used_bytes",
            "memory_total_bytes",
            "swap_used_bytes",
            "uptime_seconds",
        ] {
            b.push(s(name, &[], round, v));
        }
        for i in 0..20 {
            let mp = format!("/mnt/disk{i}");
            let dev = format!("/dev/sd{i}");
            let l = [("device", dev.as_str()), ("mountpoint", mp.as_str())];
            b.push(s("filesystem_used_ratio", &l, round, v));
            b.push(s("filesystem_size_bytes", &l, round, v));
        }
        for i in 0..20 {
            let nic = format!("eth{i}");
            b.push(s(
                "network_receive_bytes_total",
                &[("interface", &nic)],
                round,
                v,
            ));
            b.push(s(
                "network_transmit_bytes_total",
                &[("interface", &nic)],
                round,
                v,
            ));
        }
        for i in 0..6 {
            let c = format!("check{i}");
            b.push(s("check_up", &[("check", &c)], round, 1.0));
            b.push(s("check_latency_seconds", &[("check", &c)], round, 0.01));
        }
        assert_eq!(b.len(), 100);
        b
    }

    #[test]
    fn apply_throughput_smoke() {
        const AGENTS: usize = 1_000;
        const ROUNDS: i64 = 5;
        let t = Arc::new(LatestTable::new());
        let p = presence();
        let ids: Vec<String> = (0..AGENTS).map(|i| format!("agent-{i:04}")).collect();
        for (i, id) in ids.iter().enumerate() {
            connect(&t, &p, id, &format!("host-{i:04}"), 0);
        }
        // Round 0 creates the series; later rounds are the steady state being measured.
        let batches: Vec<Vec<Sample>> = (0..=ROUNDS).map(host_batch).collect();
        for id in &ids {
            assert_eq!(t.apply(id, &batches[0], 0), 100);
        }
        let start = Instant::now();
        std::thread::scope(|scope| {
            for half in ids.chunks(AGENTS / 2) {
                let (t, batches) = (&t, &batches);
                scope.spawn(move || {
                    for round in 1..=ROUNDS {
                        for id in half {
                            assert_eq!(t.apply(id, &batches[round as usize], round), 100);
                        }
                    }
                });
            }
        });
        let elapsed = start.elapsed();
        let total = AGENTS as f64 * ROUNDS as f64 * 100.0;
        println!(
            "apply: {} samples in {:?} on 2 threads = {:.0} samples/s",
            total,
            elapsed,
            total / elapsed.as_secs_f64()
        );
        assert!(ids.iter().all(|id| t.series_count(id) == 100));
        assert!(p
            .all(ROUNDS)
            .iter()
            .all(|a| a.health == crate::presence::Health::Up));
        let probe = t.get(
            "agent-0999",
            "filesystem_size_bytes",
            &[("device", "/dev/sd7"), ("mountpoint", "/mnt/disk7")],
        );
        assert_eq!(
            probe,
            Some(LatestValue {
                value: ROUNDS as f64,
                ts_ms: ROUNDS
            })
        );

        let registry = Registry::new();
        registry
            .register(Box::new(
                LatestCollector::new(Arc::clone(&t), Arc::clone(&p), Arc::new(|| ROUNDS))
                    .expect("collector"),
            ))
            .expect("register");
        let start = Instant::now();
        let mut text = String::new();
        TextEncoder::new()
            .encode_utf8(&registry.gather(), &mut text)
            .expect("encode");
        println!(
            "scrape: {} agents x 100 series -> {} bytes in {:?}",
            AGENTS,
            text.len(),
            start.elapsed()
        );
        // 100k series + 1k host_up + 2 ignored + HELP/TYPE lines.
        let samples = text.lines().filter(|l| !l.starts_with('#')).count();
        assert_eq!(samples, AGENTS * 100 + AGENTS + 2);
    }
}
