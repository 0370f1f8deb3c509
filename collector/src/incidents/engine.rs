//! The incident engine: one thread that evaluates every rule on ingest, per (rule, CI) series, in
//! the order samples arrive, and writes incident changes (with their timeline and notification
//! outbox rows) in one transaction each.
//!
//! Inputs come through [`EngineHandle`]: metric batches as the QUIC server reads them, agent
//! connects and disconnects (with or without a goodbye). A tick every second feeds the derived
//! `up` metric (host liveness), flushes breach updates, re-evaluates the symptoms of recovered
//! hosts, and less often refreshes host names and tags, maintenance windows, `inventory_stale`
//! and the open-incident gauges, and closes incidents resolved more than `close_after` ago.
//!
//! Suppression: an incident on a host whose `host-unreachable` incident is active opens as a
//! suppressed symptom of it (and active incidents of that host become symptoms when the host goes
//! unreachable); an incident on a host that `depends_on` a service of another host with an
//! active incident names that incident its probable cause and is suppressed under it; a breach
//! inside a maintenance window opens a suppressed incident. Suppressed incidents never notify.
//! When a parent resolves, each active symptom gets a grace period (two of its host's intervals,
//! at least 5 s) to clear: if it does, it is resolved and closed; if not, it stops being
//! suppressed and is announced.
//!
//! Backpressure: the input channel is bounded; a full channel makes the sender wait (on a
//! blocking thread, never on the runtime), which slows acknowledgements rather than dropping
//! evaluations.
//!
//! This module must never: evaluate a series' samples out of timestamp order (late ones are
//! counted and skipped), notify for a suppressed or flapping incident, panic on agent data, or
//! block the async runtime.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension};
use vigil_shared::inventory::ci_type;
use vigil_shared::metric_names;
use vigil_shared::proto::Sample;

use super::builtin::{HOST_UNREACHABLE, INVENTORY_STALE, MEMORY_USED_RATIO, UP};
use super::eval::{Condition, Event, FlapParams, Observed, Series};
use super::maintenance::Maintenance;
use super::maintenance::{self, Window};
use super::records::{self, Opened, Opening, Origin, Suppression};
use super::rule::{Rule, Threshold};
use super::scope::{self, Target};
use super::{announce, IncidentMetrics};
use crate::notify::{EventKind, Webhook};
use crate::store::StoreError;
use vigil_runtime::clock::Clock;

/// Inputs queued before senders wait.
pub const QUEUE_CAPACITY: usize = 4096;
/// How often the tick runs.
const TICK: Duration = Duration::from_secs(1);
/// Breach updates (last breach time, peak) are written at most this often per incident.
const FLUSH_EVERY_MS: i64 = 5_000;
/// Host names, tags, windows, stale inventories and gauges are refreshed this often.
const REFRESH_EVERY_MS: i64 = 15_000;
/// Resolved incidents past `close_after` are closed this often.
const CLOSE_EVERY_MS: i64 = 60_000;
/// Interval assumed for an agent not connected since the collector started.
const DEFAULT_INTERVAL_MS: u64 = 10_000;

/// What the engine is told.
#[derive(Debug)]
pub enum Input {
    /// A batch as read from an agent (before it is stored; duplicates are late and skipped).
    Samples {
        agent: Arc<str>,
        samples: Vec<Sample>,
        received_ms: i64,
    },
    Connected {
        agent: Arc<str>,
        hostname: String,
        interval_ms: u64,
        at_ms: i64,
    },
    /// A connection ended; `goodbye` when the agent said so first (a clean stop).
    Disconnected {
        agent: Arc<str>,
        goodbye: bool,
        at_ms: i64,
    },
    /// The agent's inventory was stored (host name or tags may have changed).
    InventoryStored { agent: Arc<str> },
    /// API rules were created or deleted.
    RulesChanged,
    /// The agent was revoked: forget it, resolve its incidents.
    Revoked { agent: Arc<str> },
    /// Answers once everything sent before it has been processed (tests, benchmarks).
    Sync(mpsc::Sender<()>),
}

/// Sends inputs to the engine thread. Cheap to clone.
#[derive(Clone)]
pub struct EngineHandle {
    tx: SyncSender<Input>,
}

impl EngineHandle {
    /// Queues `input`, waiting for room on a blocking thread when the queue is full.
    pub async fn send(&self, input: Input) {
        match self.tx.try_send(input) {
            Ok(()) | Err(TrySendError::Disconnected(_)) => {}
            Err(TrySendError::Full(input)) => {
                let tx = self.tx.clone();
                let _ = tokio::task::spawn_blocking(move || tx.send(input)).await;
            }
        }
    }

    /// Waits until the engine has processed everything queued before this call.
    pub async fn sync(&self) {
        let (tx, rx) = mpsc::channel();
        self.send(Input::Sync(tx)).await;
        let _ = tokio::task::spawn_blocking(move || rx.recv_timeout(Duration::from_secs(30))).await;
    }
}

/// The engine thread; [`EngineJoin::stop`] ends it after it drained its queue.
pub struct EngineJoin {
    thread: Option<std::thread::JoinHandle<()>>,
}

impl EngineJoin {
    /// Waits for the thread to finish (every [`EngineHandle`] must be dropped first).
    pub fn join(mut self) {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Everything the engine needs from the configuration.
#[derive(Clone)]
pub struct EngineConfig {
    pub rules: Vec<Rule>,
    pub flap: FlapParams,
    pub reopen_within_ms: i64,
    pub close_after_ms: i64,
    pub down_after_intervals: u32,
    pub webhooks: Arc<Vec<Webhook>>,
    pub maintenance: Vec<Maintenance>,
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Starts the engine thread on the store in `data_dir`. `wake` is called after a commit that
/// queued notifications.
pub fn spawn(
    data_dir: &Path,
    config: EngineConfig,
    metrics: IncidentMetrics,
    wake: Arc<dyn Fn() + Send + Sync>,
    clock: Clock,
) -> Result<(EngineHandle, EngineJoin), StoreError> {
    let conn = crate::store::open_connection(data_dir)?;
    let now = clock();
    maintenance::sync_config(&conn, &config.maintenance, now)?;
    let mut engine = Engine::new(conn, config, metrics, wake, clock)?;
    let (tx, rx) = mpsc::sync_channel(QUEUE_CAPACITY);
    let thread = std::thread::Builder::new()
        .name("vigil-incidents".into())
        .spawn(move || engine.run(rx))
        .map_err(StoreError::Spawn)?;
    Ok((
        EngineHandle { tx },
        EngineJoin {
            thread: Some(thread),
        },
    ))
}

struct CompiledRule {
    rule: Rule,
    cond: Condition,
    is_host_unreachable: bool,
}

/// One (rule, CI) series.
struct Entry {
    series: Series,
    ci_type: &'static str,
    /// Active incident of this series.
    incident: Option<i64>,
    /// CMDB id of the CI, looked up once (`None` inside: no such CI).
    ci_id: Option<Option<i64>>,
    /// Out of the rule's scope (by CI id): samples are skipped.
    excluded: bool,
    /// Breach not yet written: (at, value, peak).
    dirty: Option<(i64, f64, f64)>,
    last_flush_ms: i64,
}

struct AgentState {
    hostname: String,
    tags: BTreeMap<String, String>,
    host_ci: Option<i64>,
    /// Open connections (a reconnect may overlap the old connection's end).
    connections: u32,
    goodbye: bool,
    last_seen_ms: i64,
    interval_ms: u64,
    /// Per rule: does the host part of its scope match this host?
    host_scope: Vec<bool>,
    /// Per rule: series by CI key.
    series: Vec<HashMap<String, Entry>>,
    /// Active `host-unreachable` incident.
    host_incident: Option<i64>,
}

impl AgentState {
    fn new(hostname: String, rules: &[CompiledRule], now_ms: i64) -> AgentState {
        let tags = BTreeMap::new();
        AgentState {
            host_scope: rules
                .iter()
                .map(|r| scope::host_matches(&r.rule.scope, &hostname, &tags))
                .collect(),
            hostname,
            tags,
            host_ci: None,
            connections: 0,
            goodbye: true,
            last_seen_ms: now_ms,
            interval_ms: DEFAULT_INTERVAL_MS,
            series: rules.iter().map(|_| HashMap::new()).collect(),
            host_incident: None,
        }
    }

    /// New host name (when given), host CI and tags; rule scopes are re-matched when any changed.
    fn set_host(
        &mut self,
        hostname: Option<String>,
        host_ci: Option<i64>,
        tags: BTreeMap<String, String>,
        rules: &[CompiledRule],
    ) {
        let hostname = hostname.unwrap_or_else(|| self.hostname.clone());
        if self.hostname != hostname || self.tags != tags || self.host_ci != host_ci {
            self.hostname = hostname;
            self.tags = tags;
            self.host_ci = host_ci;
            self.rescope(rules);
        }
    }

    fn rescope(&mut self, rules: &[CompiledRule]) {
        for (slot, r) in self.host_scope.iter_mut().zip(rules) {
            *slot = scope::host_matches(&r.rule.scope, &self.hostname, &self.tags);
        }
    }

    fn up(&self, now_ms: i64, down_after: u32) -> bool {
        let fresh = now_ms - self.last_seen_ms
            <= i64::from(down_after).saturating_mul(self.interval_ms as i64);
        (self.connections > 0 || self.goodbye) && fresh
    }
}

/// Symptoms of a recovered parent waiting to clear.
struct Reeval {
    incident: i64,
    deadline_ms: i64,
}

struct Engine {
    conn: Connection,
    rules: Vec<CompiledRule>,
    by_metric: HashMap<String, Vec<usize>>,
    agents: HashMap<Arc<str>, AgentState>,
    config: EngineConfig,
    metrics: IncidentMetrics,
    wake: Arc<dyn Fn() + Send + Sync>,
    clock: Clock,
    windows: Vec<Window>,
    reeval: Vec<Reeval>,
    events: Vec<Event>,
    notified: bool,
    last_refresh_ms: i64,
    last_close_ms: i64,
}

/// What a series is, for opening its incident.
struct SeriesRef<'a> {
    agent: &'a Arc<str>,
    rule: usize,
    key: &'a str,
}

impl Engine {
    fn new(
        conn: Connection,
        config: EngineConfig,
        metrics: IncidentMetrics,
        wake: Arc<dyn Fn() + Send + Sync>,
        clock: Clock,
    ) -> Result<Engine, StoreError> {
        let mut engine = Engine {
            conn,
            rules: Vec::new(),
            by_metric: HashMap::new(),
            agents: HashMap::new(),
            config,
            metrics,
            wake,
            clock,
            windows: Vec::new(),
            reeval: Vec::new(),
            events: Vec::new(),
            notified: false,
            last_refresh_ms: i64::MIN,
            last_close_ms: i64::MIN,
        };
        engine.load_rules();
        engine.restore()?;
        Ok(engine)
    }

    /// Known agents (silent until they reconnect: down after `down_after_intervals` default
    /// intervals) and the series of active incidents.
    fn restore(&mut self) -> Result<(), StoreError> {
        let now = (self.clock)();
        let agents: Vec<(String, String)> = self
            .conn
            .prepare("SELECT id, hostname FROM agents WHERE revoked_at_ms IS NULL")?
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<rusqlite::Result<_>>()?;
        for (id, hostname) in agents {
            self.agents.insert(
                Arc::from(id.as_str()),
                AgentState::new(hostname, &self.rules, now),
            );
        }
        self.refresh(now);
        for inc in records::active(&self.conn)? {
            if inc.origin != records::Origin::Rule.as_str() {
                continue;
            }
            let Some(rule) = self.rules.iter().position(|r| r.rule.name == inc.rule) else {
                // Its rule is gone from the configuration: nothing will ever resolve it.
                self.resolve_orphan(inc.id, "rule_removed", now);
                continue;
            };
            let Some(agent_id) = inc.agent_id.as_deref() else {
                continue;
            };
            let Some(state) = self.agents.get_mut(agent_id) else {
                continue;
            };
            if self.rules[rule].is_host_unreachable {
                state.host_incident = Some(inc.id);
            }
            let peak = inc.peak_value.or(inc.trigger_value).unwrap_or(f64::NAN);
            state.series[rule].insert(
                inc.ci_key.clone(),
                Entry {
                    series: Series::restore_open(
                        inc.first_breach_ms,
                        inc.last_breach_ms,
                        peak,
                        inc.flapping,
                    ),
                    ci_type: scope::static_ci_type(&inc.ci_type),
                    incident: Some(inc.id),
                    ci_id: Some(inc.ci_id),
                    excluded: false,
                    dirty: None,
                    last_flush_ms: now,
                },
            );
        }
        Ok(())
    }

    /// The configured (and built-in) rules plus the API's.
    fn load_rules(&mut self) {
        let mut all = self.config.rules.clone();
        match super::api_rules::load(&self.conn) {
            Ok(api) => {
                for r in api {
                    if all.iter().any(|x| x.name == r.rule.name) {
                        tracing::warn!(rule = %r.rule.name, "API rule shadowed by a configured rule; ignored");
                    } else {
                        all.push(r.rule);
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot load API rules"),
        }
        self.set_rules(all);
    }

    /// Replaces the rule set, keeping the series of rules that stay (by name) and resolving the
    /// open incidents of rules that went away.
    fn set_rules(&mut self, rules: Vec<Rule>) {
        let new: Vec<CompiledRule> = rules
            .into_iter()
            .map(|r| CompiledRule {
                cond: Condition::from_rule(&r),
                is_host_unreachable: r.name == HOST_UNREACHABLE,
                rule: r,
            })
            .collect();
        let old_names: Vec<String> = self.rules.iter().map(|r| r.rule.name.clone()).collect();
        let mut orphans = Vec::new();
        for state in self.agents.values_mut() {
            let mut old = std::mem::take(&mut state.series);
            old.resize_with(old_names.len(), HashMap::new);
            state.series = new
                .iter()
                .map(|r| {
                    old_names
                        .iter()
                        .position(|n| *n == r.rule.name)
                        .map(|i| std::mem::take(&mut old[i]))
                        .unwrap_or_default()
                })
                .collect();
            for (i, series) in old.into_iter().enumerate() {
                if new.iter().all(|r| r.rule.name != old_names[i]) {
                    orphans.extend(series.values().filter_map(|e| e.incident));
                }
            }
            state.host_scope = vec![false; new.len()];
            state.rescope(&new);
        }
        let mut by_metric: HashMap<String, Vec<usize>> = HashMap::new();
        for (i, r) in new.iter().enumerate() {
            by_metric.entry(r.rule.metric.clone()).or_default().push(i);
        }
        self.rules = new;
        self.by_metric = by_metric;
        let now = (self.clock)();
        for id in orphans {
            self.resolve_orphan(id, "rule_deleted", now);
        }
    }

    /// Resolves an active incident whose rule no longer exists.
    fn resolve_orphan(&mut self, id: i64, code: &str, now: i64) {
        let hooks = self.config.webhooks.clone();
        let res = in_tx(&self.conn, |c| {
            let Some(event_id) = records::auto_resolve(c, id, now, None, code, now)? else {
                return Ok(());
            };
            if records::get(c, id)?.is_some_and(|i| i.announced) {
                announce::announce(
                    c,
                    &hooks,
                    id,
                    EventKind::Resolved,
                    event_id,
                    records::SYSTEM,
                    now,
                )?;
            }
            Ok(())
        });
        match res {
            Ok(()) => {
                self.notified = true;
                tracing::info!(incident = id, code, "incident resolved: its rule is gone");
            }
            Err(e) => self.write_failed("resolve", &e),
        }
    }

    fn run(&mut self, rx: Receiver<Input>) {
        let mut next_tick = (self.clock)() + ms(TICK);
        loop {
            let wait = (next_tick - (self.clock)()).clamp(0, ms(TICK));
            match rx.recv_timeout(Duration::from_millis(wait as u64)) {
                Ok(input) => self.handle(input),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            let now = (self.clock)();
            if now >= next_tick {
                self.tick(now);
                next_tick = now + ms(TICK);
            }
            // Something was written: wake the notifier, refresh the open-incident gauges.
            if std::mem::take(&mut self.notified) {
                (self.wake)();
                match records::open_counts(&self.conn) {
                    Ok(counts) => self.metrics.set_open(counts),
                    Err(e) => tracing::warn!(error = %e, "cannot count open incidents"),
                }
            }
        }
        let now = (self.clock)();
        self.flush(now, true);
        tracing::debug!("incident engine stopped");
    }

    fn handle(&mut self, input: Input) {
        match input {
            Input::Samples {
                agent,
                samples,
                received_ms,
            } => self.samples(&agent, &samples, received_ms),
            Input::Connected {
                agent,
                hostname,
                interval_ms,
                at_ms,
            } => {
                let rules = &self.rules;
                let state = self
                    .agents
                    .entry(agent.clone())
                    .or_insert_with(|| AgentState::new(hostname.clone(), rules, at_ms));
                state.connections = state.connections.saturating_add(1);
                state.goodbye = false;
                state.interval_ms = interval_ms.max(1);
                state.last_seen_ms = state.last_seen_ms.max(at_ms);
                if state.hostname != hostname {
                    state.hostname = hostname;
                    state.rescope(rules);
                }
                self.load_host(&agent);
                self.feed_up(&agent, at_ms);
            }
            Input::Disconnected {
                agent,
                goodbye,
                at_ms,
            } => {
                if let Some(state) = self.agents.get_mut(&agent) {
                    state.connections = state.connections.saturating_sub(1);
                    state.goodbye = goodbye;
                    if goodbye {
                        state.last_seen_ms = state.last_seen_ms.max(at_ms);
                    }
                }
                self.feed_up(&agent, at_ms);
            }
            Input::InventoryStored { agent } => self.load_host(&agent),
            Input::RulesChanged => self.load_rules(),
            Input::Revoked { agent } => self.forget_agent(&agent),
            Input::Sync(done) => {
                let now = (self.clock)();
                self.flush(now, true);
                let _ = done.send(());
            }
        }
    }

    fn samples(&mut self, agent: &Arc<str>, samples: &[Sample], received_ms: i64) {
        let Some(state) = self.agents.get_mut(agent) else {
            // Batches only come after a hello, which registered the agent.
            return;
        };
        state.last_seen_ms = state.last_seen_ms.max(received_ms);
        let (mut used, mut total) = (None, None);
        let by_metric = std::mem::take(&mut self.by_metric);
        for s in samples {
            if s.name == metric_names::MEMORY_USED_BYTES {
                used = Some((s.ts_ms, s.value));
            } else if s.name == metric_names::MEMORY_TOTAL_BYTES {
                total = Some((s.ts_ms, s.value));
            }
            let Some(rules) = by_metric.get(s.name.as_str()) else {
                continue;
            };
            let (ci_type, key) = scope::ci_of(&s.labels);
            for &rule in rules {
                self.observe(agent, rule, ci_type, key, s.ts_ms, s.value);
            }
        }
        self.by_metric = by_metric;
        if let (Some((ts, used)), Some((_, total))) = (used, total) {
            if total > 0.0 {
                self.derived(agent, MEMORY_USED_RATIO, ts, used / total);
            }
        }
    }

    /// Evaluates a collector-derived host metric.
    fn derived(&mut self, agent: &Arc<str>, metric: &str, ts_ms: i64, value: f64) {
        let by_metric = std::mem::take(&mut self.by_metric);
        if let Some(rules) = by_metric.get(metric) {
            for &rule in rules {
                self.observe(agent, rule, ci_type::HOST, ci_type::HOST, ts_ms, value);
            }
        }
        self.by_metric = by_metric;
    }

    fn feed_up(&mut self, agent: &Arc<str>, now: i64) {
        let Some(state) = self.agents.get(agent) else {
            return;
        };
        let up = if state.up(now, self.config.down_after_intervals) {
            1.0
        } else {
            0.0
        };
        self.derived(agent, UP, now, up);
    }

    fn observe(
        &mut self,
        agent: &Arc<str>,
        rule: usize,
        ci_type: &'static str,
        key: &str,
        ts_ms: i64,
        value: f64,
    ) {
        let Some(state) = self.agents.get_mut(agent) else {
            return;
        };
        let r = &self.rules[rule];
        if !state.host_scope[rule]
            || r.rule
                .scope
                .ci_type
                .as_deref()
                .is_some_and(|t| t != ci_type)
        {
            return;
        }
        let series = &mut state.series[rule];
        if !series.contains_key(key) {
            // Only series with something going on are kept (see `is_idle`): most samples are
            // fine, and a fine sample of an unknown series changes nothing.
            if r.rule.scope.ci.is_none() && value.is_finite() && !r.cond.breached(value) {
                self.metrics.evaluations.inc();
                return;
            }
            let mut entry = Entry {
                series: Series::new(),
                ci_type,
                incident: None,
                ci_id: None,
                excluded: false,
                dirty: None,
                last_flush_ms: ts_ms,
            };
            if let Some(want) = &r.rule.scope.ci {
                let id = lookup_ci(&self.conn, agent, ci_type, key, state.host_ci);
                entry.excluded = id.is_none_or(|id| id.to_string() != *want);
                entry.ci_id = Some(id);
            }
            series.insert(key.to_string(), entry);
        }
        let Some(entry) = series.get_mut(key) else {
            return;
        };
        if entry.excluded {
            return;
        }
        self.events.clear();
        match entry
            .series
            .observe(&r.cond, &self.config.flap, ts_ms, value, &mut self.events)
        {
            Observed::Evaluated => self.metrics.evaluations.inc(),
            Observed::Late => {
                self.metrics.late_samples.inc();
                return;
            }
            Observed::Invalid => return,
        }
        let at = SeriesRef { agent, rule, key };
        if !self.events.is_empty() {
            let events = std::mem::take(&mut self.events);
            for ev in &events {
                self.apply(&at, ev);
            }
            self.events = events;
        }
        self.forget_if_idle(&at);
    }

    /// Drops a series that is back to a fresh one's state: not open, not pending, no state
    /// change in its flap history, nothing to write. This keeps memory proportional to the
    /// series with something going on, not to every series of every host. A late sample of a
    /// forgotten series is caught by the store (a breach older than the last resolution never
    /// reopens an incident).
    fn forget_if_idle(&mut self, s: &SeriesRef<'_>) {
        let flap = self.config.flap;
        let Some(series) = self
            .agents
            .get_mut(s.agent)
            .and_then(|a| a.series.get_mut(s.rule))
        else {
            return;
        };
        let idle = series.get(s.key).is_some_and(|e| {
            !e.excluded
                && e.incident.is_none()
                && e.dirty.is_none()
                && !e.series.is_open()
                && !e.series.is_pending()
                && !e.series.is_flapping()
                && e.series.flap_percent(&flap) == 0.0
        });
        if idle {
            series.remove(s.key);
        }
    }

    fn entry_mut(&mut self, s: &SeriesRef<'_>) -> Option<&mut Entry> {
        self.agents
            .get_mut(s.agent)?
            .series
            .get_mut(s.rule)?
            .get_mut(s.key)
    }

    fn apply(&mut self, s: &SeriesRef<'_>, ev: &Event) {
        let now = (self.clock)();
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
                    // The open failed to commit earlier (or an operator resolved the incident
                    // while the breach goes on): open again, starting now.
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
                let res = in_tx(&self.conn, |c| {
                    records::set_flapping(c, id, flapping, percent, now)
                });
                if let Err(e) = res {
                    self.write_failed("flapping", &e);
                    return;
                }
                if !flapping {
                    // Settled while still open: announce what was held back.
                    self.announce_if_quiet(id, now);
                }
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn open(
        &mut self,
        s: &SeriesRef<'_>,
        first_breach_ms: i64,
        at_ms: i64,
        value: f64,
        peak: f64,
        flapping: bool,
        now: i64,
    ) {
        let rule = &self.rules[s.rule];
        let Some(state) = self.agents.get(s.agent) else {
            return;
        };
        let Some(entry) = state.series[s.rule].get(s.key) else {
            return;
        };
        let ci_type = entry.ci_type;
        let ci_id = match entry.ci_id {
            Some(id) => id,
            None => lookup_ci(&self.conn, s.agent, ci_type, s.key, state.host_ci),
        };
        let target = Target {
            hostname: &state.hostname,
            tags: &state.tags,
            ci_type,
            ci_id,
        };
        let window = maintenance::covering(&self.windows, at_ms, &target).map(|w| w.name.clone());
        let mut probable_cause = None;
        let suppression = if let Some(window) = window {
            Some(Suppression::Maintenance { window })
        } else if let (false, Some(parent)) = (rule.is_host_unreachable, state.host_incident) {
            Some(Suppression::Parent { parent_id: parent })
        } else if rule.is_host_unreachable {
            None
        } else {
            probable_cause = dependency_incident(&self.conn, s.agent).unwrap_or_else(|e| {
                tracing::warn!(error = %e, "cannot look up dependencies");
                None
            });
            probable_cause.map(|parent_id| Suppression::Parent { parent_id })
        };
        let dedup_key = dedup_key(&rule.rule.name, s.agent, ci_type, s.key);
        let title = title(&rule.rule, &state.hostname, ci_type, s.key, value);
        let threshold = rule.cond.threshold_value();
        let op = match rule.rule.threshold {
            Threshold::Above(_) => ">",
            Threshold::Below(_) => "<",
        };
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
            op: Some(op),
            threshold: Some(threshold),
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
            let opened = records::open(c, &opening, reopen_within, now)?;
            let (id, event_id, kind) = match opened {
                Opened::New { id, event_id } => (id, event_id, EventKind::Opened),
                Opened::Reopened { id, event_id } => (id, event_id, EventKind::Reopened),
                Opened::Active { id } => return Ok((opened, id, 0)),
                Opened::OutOfOrder { .. } => return Ok((opened, 0, 0)),
            };
            if suppression.is_none() && !flapping {
                announce::announce(c, &hooks, id, kind, event_id, records::SYSTEM, now)?;
            }
            let mut symptoms = 0;
            if is_host {
                for child in host_symptoms(c, agent_id, id)? {
                    if records::suppress_under(c, child, id, now)? {
                        symptoms += 1;
                    }
                }
            }
            Ok((opened, id, symptoms))
        });
        match res {
            Ok((Opened::OutOfOrder { id }, ..)) => {
                self.metrics.late_samples.inc();
                tracing::debug!(
                    incident = id,
                    "breach older than the last resolution; ignored"
                );
            }
            Ok((opened, id, symptoms)) => {
                if let Opened::New { .. } = opened {
                    self.metrics.opened(&self.rules[s.rule].rule.name);
                }
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
            Err(e) => self.write_failed("open", &e),
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
            let Some(inc) = records::get(c, id)? else {
                return Ok(None);
            };
            let Some(event_id) = records::auto_resolve(c, id, at_ms, Some(value), "cleared", now)?
            else {
                return Ok(None);
            };
            // Whoever was told it opened hears that it resolved, suppressed since or not.
            if inc.announced {
                announce::announce(
                    c,
                    &hooks,
                    id,
                    EventKind::Resolved,
                    event_id,
                    records::SYSTEM,
                    now,
                )?;
            }
            if inc.suppressed.as_deref() == Some("parent") {
                // A symptom whose condition cleared: done with it.
                records::close_system(c, id, "symptom_cleared", now)?;
            }
            let children = if is_host {
                records::children(c, id)?
                    .into_iter()
                    .filter(|ch| ch.state.is_active())
                    .map(|ch| ch.id)
                    .collect()
            } else {
                Vec::new()
            };
            Ok(Some((inc, children)))
        });
        match res {
            Ok(Some((inc, children))) => {
                self.notified = true;
                self.metrics
                    .resolve_seconds
                    .observe(((at_ms - inc.started_ms).max(0) as f64) / 1000.0);
                tracing::info!(incident = id, rule = %inc.rule, agent = %s.agent, ci = %s.key,
                    "incident resolved by the system");
                if is_host {
                    if let Some(state) = self.agents.get_mut(s.agent) {
                        state.host_incident = None;
                        let grace = (2 * state.interval_ms as i64).max(5_000);
                        for child in children {
                            self.reeval.push(Reeval {
                                incident: child,
                                deadline_ms: now + grace,
                            });
                        }
                    }
                }
            }
            Ok(None) => {}
            Err(e) => self.write_failed("resolve", &e),
        }
    }

    /// Announces an active incident that is neither suppressed nor flapping and was not yet.
    fn announce_if_quiet(&mut self, id: i64, now: i64) {
        let hooks = self.config.webhooks.clone();
        let res = in_tx(&self.conn, |c| {
            let Some(inc) = records::get(c, id)? else {
                return Ok(false);
            };
            if !inc.state.is_active() || inc.announced || inc.is_suppressed() || inc.flapping {
                return Ok(false);
            }
            let event_id = records::add_event(
                c,
                id,
                now,
                "announced",
                records::SYSTEM,
                &serde_json::json!({"reason": "no longer suppressed or flapping"}),
            )?;
            let kind = if inc.reopen_count > 0 {
                EventKind::Reopened
            } else {
                EventKind::Opened
            };
            announce::announce(c, &hooks, id, kind, event_id, records::SYSTEM, now)?;
            Ok(true)
        });
        match res {
            Ok(true) => self.notified = true,
            Ok(false) => {}
            Err(e) => self.write_failed("announce", &e),
        }
    }

    fn flush_entry(&mut self, s: &SeriesRef<'_>, now: i64) {
        let Some(entry) = self.entry_mut(s) else {
            return;
        };
        let (Some(id), Some((at, value, peak))) = (entry.incident, entry.dirty.take()) else {
            return;
        };
        entry.last_flush_ms = now;
        if let Err(e) = in_tx(&self.conn, |c| {
            records::record_breach(c, id, at, value, peak)
        }) {
            self.write_failed("breach", &e);
        }
    }

    /// Writes pending breach updates older than [`FLUSH_EVERY_MS`] (all when `all`).
    fn flush(&mut self, now: i64, all: bool) {
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
        let res = in_tx(&self.conn, |c| {
            for (id, (at, value, peak)) in &updates {
                records::record_breach(c, *id, *at, *value, *peak)?;
            }
            Ok(())
        });
        if let Err(e) = res {
            self.write_failed("breach", &e);
        }
    }

    fn tick(&mut self, now: i64) {
        let agents: Vec<Arc<str>> = self.agents.keys().cloned().collect();
        for agent in &agents {
            self.feed_up(agent, now);
        }
        self.flush(now, false);
        self.run_reeval(now);
        if now.saturating_sub(self.last_refresh_ms) >= REFRESH_EVERY_MS {
            self.last_refresh_ms = now;
            self.refresh(now);
        }
        if now.saturating_sub(self.last_close_ms) >= CLOSE_EVERY_MS {
            self.last_close_ms = now;
            let cutoff = now.saturating_sub(self.config.close_after_ms);
            match in_tx(&self.conn, |c| records::auto_close(c, cutoff, now)) {
                Ok(ids) if !ids.is_empty() => {
                    tracing::info!(
                        incidents = ids.len(),
                        "closed incidents resolved past close_after"
                    );
                }
                Ok(_) => {}
                Err(e) => self.write_failed("close", &e),
            }
        }
    }

    fn run_reeval(&mut self, now: i64) {
        if self.reeval.is_empty() {
            return;
        }
        let (due, later): (Vec<Reeval>, Vec<Reeval>) = std::mem::take(&mut self.reeval)
            .into_iter()
            .partition(|r| r.deadline_ms <= now);
        self.reeval = later;
        for r in due {
            let res = in_tx(&self.conn, |c| records::unsuppress(c, r.incident, now));
            match res {
                Ok(Some(_)) => {
                    tracing::info!(
                        incident = r.incident,
                        "symptom persists after its parent recovered; no longer suppressed"
                    );
                    self.announce_if_quiet(r.incident, now);
                }
                Ok(None) => {}
                Err(e) => self.write_failed("unsuppress", &e),
            }
        }
    }

    /// Host names and tags, maintenance windows, stale inventories, open-incident gauges.
    fn refresh(&mut self, now: i64) {
        if let Err(e) = self.refresh_hosts() {
            tracing::warn!(error = %e, "cannot refresh host names and tags");
        }
        match maintenance::load(&self.conn, true) {
            Ok(w) => self.windows = w,
            Err(e) => tracing::warn!(error = %e, "cannot load maintenance windows"),
        }
        match stale_agents(&self.conn) {
            Ok(stale) => {
                for (agent, is_stale) in stale {
                    let Some((key, _)) = self.agents.get_key_value(agent.as_str()) else {
                        continue;
                    };
                    let key = key.clone();
                    self.derived(&key, INVENTORY_STALE, now, if is_stale { 1.0 } else { 0.0 });
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot read stale inventories"),
        }
        match records::open_counts(&self.conn) {
            Ok(counts) => self.metrics.set_open(counts),
            Err(e) => tracing::warn!(error = %e, "cannot count open incidents"),
        }
    }

    fn refresh_hosts(&mut self) -> rusqlite::Result<()> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT a.id, a.hostname, c.id, c.attrs, c.manual_attrs
             FROM agents a LEFT JOIN cis c ON c.agent_id = a.id AND c.type = 'host'
             WHERE a.revoked_at_ms IS NULL",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, Option<i64>>(2)?,
                r.get::<_, Option<String>>(3)?,
                r.get::<_, Option<String>>(4)?,
            ))
        })?;
        let rows = rows.collect::<rusqlite::Result<Vec<_>>>()?;
        drop(stmt);
        let live: std::collections::HashSet<&str> = rows.iter().map(|r| r.0.as_str()).collect();
        let gone: Vec<Arc<str>> = self
            .agents
            .keys()
            .filter(|a| !live.contains(&***a))
            .cloned()
            .collect();
        for agent in gone {
            self.forget_agent(&agent);
        }
        for (id, hostname, host_ci, attrs, manual) in rows {
            let Some(state) = self.agents.get_mut(id.as_str()) else {
                continue;
            };
            let tags = attrs
                .as_deref()
                .map(|a| scope::host_tags(a, manual.as_deref()))
                .unwrap_or_default();
            state.set_host(Some(hostname), host_ci, tags, &self.rules);
        }
        Ok(())
    }

    /// A revoked agent: its series go, its active incidents resolve (`agent_revoked`).
    fn forget_agent(&mut self, agent: &Arc<str>) {
        let Some(state) = self.agents.remove(agent) else {
            return;
        };
        let now = (self.clock)();
        let ids: Vec<i64> = state
            .series
            .iter()
            .flat_map(|s| s.values().filter_map(|e| e.incident))
            .collect();
        tracing::info!(agent = %agent, incidents = ids.len(), "agent revoked: its incidents resolve");
        for id in ids {
            self.resolve_orphan(id, "agent_revoked", now);
        }
    }

    fn load_host(&mut self, agent: &Arc<str>) {
        let row = self
            .conn
            .prepare_cached(
                "SELECT c.id, c.attrs, c.manual_attrs FROM cis c
                 WHERE c.agent_id = ?1 AND c.type = 'host' AND c.key = 'host'",
            )
            .and_then(|mut s| {
                s.query_row([&**agent], |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, Option<String>>(2)?,
                    ))
                })
                .optional()
            });
        let Some(state) = self.agents.get_mut(agent) else {
            return;
        };
        match row {
            Ok(Some((id, attrs, manual))) => {
                let tags = scope::host_tags(&attrs, manual.as_deref());
                state.set_host(None, Some(id), tags, &self.rules);
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "cannot read the host CI"),
        }
    }

    fn write_failed(&self, what: &str, e: &rusqlite::Error) {
        self.metrics.write_errors.inc();
        tracing::warn!(error = %e, "incident {what} not written; will retry on the next sample");
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

fn lookup_ci(
    conn: &Connection,
    agent: &str,
    ci_type: &str,
    key: &str,
    host_ci: Option<i64>,
) -> Option<i64> {
    if ci_type == ci_type::HOST {
        return host_ci;
    }
    if ci_type == scope::CHECK {
        return None;
    }
    conn.prepare_cached("SELECT id FROM cis WHERE agent_id = ?1 AND type = ?2 AND key = ?3")
        .and_then(|mut s| {
            s.query_row(params![agent, ci_type, key], |r| r.get(0))
                .optional()
        })
        .unwrap_or_else(|e| {
            tracing::warn!(error = %e, "cannot look up a CI");
            None
        })
}

/// Active incidents of a host other than `except` that are not yet suppressed.
fn host_symptoms(conn: &Connection, agent: &str, except: i64) -> rusqlite::Result<Vec<i64>> {
    conn.prepare_cached(
        "SELECT id FROM incidents WHERE agent_id = ?1 AND id != ?2
            AND state IN ('open', 'acknowledged') AND suppressed IS NULL",
    )?
    .query_map(params![agent, except], |r| r.get(0))?
    .collect()
}

/// An active incident on another host that this host `depends_on` (its host unreachable first,
/// else one on the depended-on CI itself).
fn dependency_incident(conn: &Connection, agent: &str) -> rusqlite::Result<Option<i64>> {
    conn.prepare_cached(
        "SELECT i.id FROM relations r
            JOIN cis f ON f.id = r.from_ci
            JOIN cis t ON t.id = r.to_ci
            JOIN incidents i ON i.agent_id = t.agent_id
                AND i.state IN ('open', 'acknowledged')
                AND (i.rule = 'host-unreachable' OR i.ci_id = t.id)
         WHERE r.kind = 'depends_on' AND f.agent_id = ?1 AND t.agent_id != ?1
         ORDER BY (i.rule = 'host-unreachable') DESC, i.id LIMIT 1",
    )?
    .query_row([agent], |r| r.get(0))
    .optional()
}

fn stale_agents(conn: &Connection) -> rusqlite::Result<Vec<(String, bool)>> {
    conn.prepare_cached("SELECT agent_id, stale FROM inventory_state")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect()
}

/// Runs `f` in a `BEGIN IMMEDIATE` transaction (a concurrent writer waits for the busy timeout
/// instead of failing on the upgrade).
pub(crate) fn in_tx<T>(
    conn: &Connection,
    f: impl FnOnce(&Connection) -> rusqlite::Result<T>,
) -> rusqlite::Result<T> {
    conn.execute_batch("BEGIN IMMEDIATE")?;
    match f(conn) {
        Ok(v) => {
            if let Err(e) = conn.execute_batch("COMMIT") {
                let _ = conn.execute_batch("ROLLBACK");
                return Err(e);
            }
            Ok(v)
        }
        Err(e) => {
            let _ = conn.execute_batch("ROLLBACK");
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicI64, Ordering};

    use super::*;
    use crate::incidents::builtin;
    use crate::incidents::records::State;
    use crate::incidents::rule::Level;
    use crate::incidents::scope::Scope;
    use crate::store::{Db, NewAgent};

    const T0: i64 = 1_800_000_000_000;

    struct Fixture {
        _dir: tempfile::TempDir,
        db: Db,
        now: Arc<AtomicI64>,
        engine: Engine,
    }

    fn rule(name: &str, metric: &str, threshold: Threshold, clear: f64, ci_type: &str) -> Rule {
        Rule {
            name: name.into(),
            metric: metric.into(),
            threshold,
            clear,
            hold: Duration::ZERO,
            impact: Level::High,
            urgency: Level::Medium,
            scope: Scope {
                ci_type: Some(ci_type.into()),
                ..Scope::default()
            },
            labels: BTreeMap::new(),
        }
    }

    fn config(windows: Vec<Maintenance>) -> EngineConfig {
        let mut rules: Vec<Rule> = builtin::rules()
            .into_iter()
            .filter(|r| r.name == HOST_UNREACHABLE || r.name == builtin::MEMORY_FULL)
            .map(|mut r| {
                r.hold = Duration::ZERO;
                r
            })
            .collect();
        rules.push(rule(
            "check",
            "check_up",
            Threshold::Below(1.0),
            1.0,
            "check",
        ));
        rules.push(rule(
            "fs",
            "filesystem_used_ratio",
            Threshold::Above(0.9),
            0.85,
            "filesystem",
        ));
        EngineConfig {
            rules,
            flap: FlapParams::default(),
            reopen_within_ms: 3_600_000,
            close_after_ms: 86_400_000,
            down_after_intervals: 3,
            webhooks: Arc::new(vec![Webhook {
                name: "ops".into(),
                url: "http://127.0.0.1:9/".into(),
                secret: None,
                format: crate::notify::Format::Json,
                max_priority: 5,
                rules: Vec::new(),
                labels: BTreeMap::new(),
                timeout: Duration::from_secs(1),
            }]),
            maintenance: windows,
        }
    }

    fn fixture(windows: Vec<Maintenance>) -> Fixture {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = Db::open(dir.path()).expect("db");
        for (id, host) in [("a1", "web-1"), ("a2", "db-1")] {
            db.register_agent(
                &NewAgent {
                    id: id.into(),
                    hostname: host.into(),
                    version: "test".into(),
                    cert_pin: format!("pin-{id}"),
                    token_id: "t".into(),
                },
                T0,
            )
            .expect("agent");
        }
        let now = Arc::new(AtomicI64::new(T0));
        let engine = start(dir.path(), &now, windows);
        Fixture {
            _dir: dir,
            db,
            now,
            engine,
        }
    }

    fn start(dir: &Path, now: &Arc<AtomicI64>, windows: Vec<Maintenance>) -> Engine {
        let conn = crate::store::open_connection(dir).expect("conn");
        let clock_now = now.clone();
        let clock: Clock = Arc::new(move || clock_now.load(Ordering::SeqCst));
        maintenance::sync_config(&conn, &windows, now.load(Ordering::SeqCst)).expect("windows");
        Engine::new(
            conn,
            config(windows),
            IncidentMetrics::new().expect("metrics"),
            Arc::new(|| {}),
            clock,
        )
        .expect("engine")
    }

    impl Fixture {
        fn at(&self, ms: i64) -> i64 {
            self.now.store(T0 + ms, Ordering::SeqCst);
            T0 + ms
        }

        fn connect(&mut self, agent: &str, ms: i64) {
            let at = self.at(ms);
            self.engine.handle(Input::Connected {
                agent: Arc::from(agent),
                hostname: if agent == "a1" { "web-1" } else { "db-1" }.into(),
                interval_ms: 1000,
                at_ms: at,
            });
        }

        fn sample(
            &mut self,
            agent: &str,
            name: &str,
            label: Option<(&str, &str)>,
            ms: i64,
            v: f64,
        ) {
            let at = self.at(ms);
            self.engine.handle(Input::Samples {
                agent: Arc::from(agent),
                samples: vec![Sample {
                    ts_ms: at,
                    name: name.into(),
                    labels: label
                        .map(|(k, v)| vec![(k.to_string(), v.to_string())])
                        .unwrap_or_default(),
                    value: v,
                }],
                received_ms: at,
            });
        }

        fn tick(&mut self, ms: i64) {
            let at = self.at(ms);
            self.engine.tick(at);
        }

        fn incident(&self, rule: &str, agent: &str) -> records::Incident {
            let (items, _) = records::list(
                self.db.conn(),
                &records::Filter {
                    rule: Some(rule.into()),
                    host: Some(agent.into()),
                    limit: 10,
                    ..records::Filter::default()
                },
            )
            .expect("list");
            items
                .into_iter()
                .next()
                .unwrap_or_else(|| panic!("no {rule} incident on {agent}"))
        }

        fn notifications(&self, id: i64) -> Vec<String> {
            self.db
                .conn()
                .prepare("SELECT event FROM notifications WHERE incident_id = ?1 ORDER BY id")
                .expect("prepare")
                .query_map([id], |r| r.get(0))
                .expect("query")
                .collect::<rusqlite::Result<_>>()
                .expect("rows")
        }
    }

    #[test]
    fn an_unreachable_host_suppresses_its_symptoms_and_recovered_ones_close() {
        let mut f = fixture(Vec::new());
        f.connect("a1", 0);
        f.sample("a1", "check_up", Some(("check", "app")), 100, 0.0);
        let check = f.incident("check", "a1");
        assert_eq!((check.state, check.is_suppressed()), (State::Open, false));
        assert_eq!(f.notifications(check.id), ["opened"]);

        // The connection is lost without a goodbye: the host is unreachable at once.
        let at = f.at(1_000);
        f.engine.handle(Input::Disconnected {
            agent: Arc::from("a1"),
            goodbye: false,
            at_ms: at,
        });
        let host = f.incident(HOST_UNREACHABLE, "a1");
        assert_eq!((host.state, host.priority), (State::Open, 1));
        let check = f.incident("check", "a1");
        assert_eq!(
            (check.suppressed.as_deref(), check.parent_id),
            (Some("parent"), Some(host.id))
        );

        // A new symptom while the host is down opens suppressed and does not notify.
        f.sample(
            "a1",
            "filesystem_used_ratio",
            Some(("mountpoint", "/var")),
            1_500,
            0.95,
        );
        let fs = f.incident("fs", "a1");
        assert_eq!(
            (fs.suppressed.as_deref(), fs.parent_id),
            (Some("parent"), Some(host.id))
        );
        assert!(f.notifications(fs.id).is_empty());

        // Back: the host resolves; the check clears within the grace period and closes; the
        // filesystem stays full, so after the grace it stands on its own and is announced.
        f.connect("a1", 2_000);
        f.tick(2_100);
        assert_eq!(f.incident(HOST_UNREACHABLE, "a1").state, State::Resolved);
        f.sample("a1", "check_up", Some(("check", "app")), 2_500, 1.0);
        let check = f.incident("check", "a1");
        assert_eq!(check.state, State::Closed);
        assert_eq!(f.notifications(check.id), ["opened", "resolved"]);
        for ms in [3_000, 5_000, 7_000] {
            f.sample(
                "a1",
                "filesystem_used_ratio",
                Some(("mountpoint", "/var")),
                ms,
                0.96,
            );
        }
        f.tick(7_100);
        let fs = f.incident("fs", "a1");
        assert_eq!((fs.state, fs.is_suppressed()), (State::Open, false));
        assert_eq!(f.notifications(fs.id), ["opened"]);
        assert_eq!(f.notifications(host.id), ["opened", "resolved"]);
    }

    #[test]
    fn a_silent_agent_becomes_unreachable_after_three_intervals() {
        let mut f = fixture(Vec::new());
        f.connect("a1", 0);
        f.sample("a1", "check_up", Some(("check", "app")), 1_000, 1.0);
        f.tick(3_900);
        assert!(records::active(f.db.conn()).expect("active").is_empty());
        f.tick(4_100);
        assert_eq!(f.incident(HOST_UNREACHABLE, "a1").state, State::Open);
    }

    #[test]
    fn maintenance_windows_suppress_matching_breaches_only() {
        let window = Maintenance {
            name: "patch-night".into(),
            scope: Scope {
                host: Some(glob::Pattern::new("db-*").expect("glob")),
                ..Scope::default()
            },
            start_ms: T0 - 1_000,
            duration: Duration::from_secs(3600),
            every: None,
        };
        let mut f = fixture(vec![window]);
        f.connect("a1", 0);
        f.connect("a2", 0);
        f.sample(
            "a2",
            "filesystem_used_ratio",
            Some(("mountpoint", "/")),
            100,
            0.99,
        );
        f.sample(
            "a1",
            "filesystem_used_ratio",
            Some(("mountpoint", "/")),
            100,
            0.99,
        );
        let db = f.incident("fs", "a2");
        assert_eq!(
            (db.suppressed.as_deref(), db.maintenance.as_deref()),
            (Some("maintenance"), Some("patch-night"))
        );
        assert!(f.notifications(db.id).is_empty());
        let web = f.incident("fs", "a1");
        assert!(!web.is_suppressed());
        assert_eq!(f.notifications(web.id), ["opened"]);
    }

    #[test]
    fn a_dependency_down_is_named_the_probable_cause() {
        let mut f = fixture(Vec::new());
        let c = f.db.conn();
        for (agent, ty, key) in [
            ("a1", "host", "host"),
            ("a2", "listening_service", "tcp:5432"),
        ] {
            c.execute(
                "INSERT INTO cis (agent_id, type, key, name, source, first_seen_ms, last_seen_ms)
                 VALUES (?1, ?2, ?3, ?3, 'discovery', 0, 0)",
                params![agent, ty, key],
            )
            .expect("ci");
        }
        c.execute(
            "INSERT INTO relations (from_ci, kind, to_ci, source, first_seen_ms)
             SELECT f.id, 'depends_on', t.id, 'wire:a1', 0 FROM cis f, cis t
             WHERE f.agent_id = 'a1' AND t.agent_id = 'a2'",
            [],
        )
        .expect("relation");
        f.connect("a1", 0);
        f.connect("a2", 0);
        let at = f.at(500);
        f.engine.handle(Input::Disconnected {
            agent: Arc::from("a2"),
            goodbye: false,
            at_ms: at,
        });
        let db_down = f.incident(HOST_UNREACHABLE, "a2");
        f.sample("a1", "check_up", Some(("check", "orders")), 1_000, 0.0);
        let app = f.incident("check", "a1");
        assert_eq!(app.probable_cause_id, Some(db_down.id));
        assert_eq!(app.parent_id, Some(db_down.id));
        assert!(f.notifications(app.id).is_empty());
    }

    #[test]
    fn api_rules_take_effect_at_once_and_their_incidents_resolve_when_deleted() {
        let mut f = fixture(Vec::new());
        f.connect("a1", 0);
        let body = serde_json::json!({"name": "api-load", "metric": "load1", "above": 4});
        let rule = crate::incidents::rule::rule_from_json(&body).expect("rule");
        super::super::api_rules::create(f.db.conn(), &rule, &body, "api:t", T0).expect("create");
        f.engine.handle(Input::RulesChanged);
        f.sample("a1", "load1", None, 100, 9.0);
        let inc = f.incident("api-load", "a1");
        assert_eq!(inc.state, State::Open);
        // Series of the other rules survive the reload.
        f.sample("a1", "check_up", Some(("check", "app")), 200, 0.0);
        f.engine.handle(Input::RulesChanged);
        f.sample("a1", "check_up", Some(("check", "app")), 300, 1.0);
        assert_eq!(f.incident("check", "a1").state, State::Resolved);

        super::super::api_rules::delete(f.db.conn(), "api-load").expect("delete");
        f.engine.handle(Input::RulesChanged);
        let inc = f.incident("api-load", "a1");
        assert_eq!(
            (inc.state, inc.resolution_code.as_deref()),
            (State::Resolved, Some("rule_deleted"))
        );
        assert_eq!(f.notifications(inc.id), ["opened", "resolved"]);
    }

    #[test]
    fn a_revoked_agent_is_forgotten_and_its_incidents_resolve() {
        let mut f = fixture(Vec::new());
        f.connect("a1", 0);
        f.sample("a1", "check_up", Some(("check", "app")), 100, 0.0);
        assert!(f.db.revoke_agent("a1", T0 + 200).expect("revoke"));
        f.tick(20_000);
        let inc = f.incident("check", "a1");
        assert_eq!(
            (inc.state, inc.resolution_code.as_deref()),
            (State::Resolved, Some("agent_revoked"))
        );
        // Silent from now on, yet never unreachable: it is gone. (a2, which never connected
        // since the start, is: not checked here.)
        f.tick(60_000);
        let active: Vec<(String, String)> = records::active(f.db.conn())
            .expect("active")
            .into_iter()
            .filter(|i| i.agent_id.as_deref() == Some("a1"))
            .map(|i| (i.rule, i.state.to_string()))
            .collect();
        assert!(active.is_empty(), "{active:?}");
    }

    #[test]
    fn a_stale_inventory_opens_an_incident_until_the_host_reports_again() {
        let mut f = fixture(Vec::new());
        let rules: Vec<Rule> = builtin::rules()
            .into_iter()
            .filter(|r| r.name == builtin::INVENTORY_STALE_RULE)
            .collect();
        f.engine.config.rules.extend(rules);
        f.engine.load_rules();
        f.connect("a1", 0);
        f.db.conn()
            .execute(
                "INSERT INTO inventory_state (agent_id, version, ts_ms, reported_ms, stale)
                 VALUES ('a1', 1, 0, 0, 1)",
                [],
            )
            .expect("state");
        f.sample("a1", "check_up", Some(("check", "app")), 500, 1.0);
        f.tick(1_000);
        let inc = f.incident(builtin::INVENTORY_STALE_RULE, "a1");
        assert_eq!((inc.state, inc.priority), (State::Open, 4));
        f.db.conn()
            .execute("UPDATE inventory_state SET stale = 0", [])
            .expect("fresh");
        for ms in [2_000, 4_000, 6_000, 8_000, 10_000, 12_000, 14_000] {
            f.sample("a1", "check_up", Some(("check", "app")), ms - 500, 1.0);
            f.tick(ms);
        }
        assert_eq!(
            f.incident(builtin::INVENTORY_STALE_RULE, "a1").state,
            State::Open
        );
        f.sample("a1", "check_up", Some(("check", "app")), 16_000, 1.0);
        f.tick(16_500);
        assert_eq!(
            f.incident(builtin::INVENTORY_STALE_RULE, "a1").state,
            State::Resolved,
            "resolved at the next refresh (every 15 s)"
        );
    }

    #[test]
    fn a_flapping_series_keeps_one_incident_and_notifies_once_it_settles() {
        let mut f = fixture(Vec::new());
        f.connect("a1", 0);
        let mut ms = 0;
        let mut next = |f: &mut Fixture, v: f64| {
            ms += 100;
            f.sample("a1", "check_up", Some(("check", "app")), ms, v);
        };
        // Fail and recover in turns: open, resolve, reopen... until flapping is detected.
        for i in 0..12 {
            next(&mut f, if i % 2 == 0 { 0.0 } else { 1.0 });
        }
        let inc = f.incident("check", "a1");
        assert!(inc.flapping, "{inc:?}");
        let before = f.notifications(inc.id);
        // While flapping: one incident, nothing more notified.
        for i in 0..6 {
            next(&mut f, if i % 2 == 0 { 0.0 } else { 1.0 });
        }
        let during = f.incident("check", "a1");
        assert_eq!(during.id, inc.id);
        assert_eq!(f.notifications(inc.id), before);
        // It settles failing: still open, no longer flapping.
        for _ in 0..25 {
            next(&mut f, 0.0);
        }
        let settled = f.incident("check", "a1");
        assert_eq!(
            (settled.id, settled.state, settled.flapping),
            (inc.id, State::Open, false)
        );
        let count = |f: &Fixture| {
            records::list(
                f.db.conn(),
                &records::Filter {
                    limit: 100,
                    ..records::Filter::default()
                },
            )
            .expect("list")
            .1
        };
        assert_eq!(count(&f), 1, "one incident for the whole episode");
        // The last word operators got is that it is open (held back while flapping, sent once
        // it settled if the flapping episode hid a reopen).
        let after = f.notifications(inc.id);
        assert!(settled.announced);
        assert!(
            matches!(
                after.last().map(String::as_str),
                Some("opened" | "reopened")
            ),
            "{after:?}"
        );
    }

    #[test]
    fn only_series_with_something_going_on_are_kept() {
        let mut f = fixture(Vec::new());
        f.connect("a1", 0);
        let kept = |f: &Fixture| -> usize {
            f.engine
                .agents
                .get("a1")
                .map_or(0, |a| a.series.iter().map(HashMap::len).sum())
        };
        for i in 0..100 {
            f.sample(
                "a1",
                "filesystem_used_ratio",
                Some(("mountpoint", "/")),
                100 + i,
                0.5,
            );
        }
        assert_eq!(kept(&f), 0, "a fine series is not kept");
        f.sample(
            "a1",
            "filesystem_used_ratio",
            Some(("mountpoint", "/")),
            300,
            0.95,
        );
        assert_eq!(kept(&f), 1);
        f.sample(
            "a1",
            "filesystem_used_ratio",
            Some(("mountpoint", "/")),
            400,
            0.5,
        );
        assert_eq!(f.incident("fs", "a1").state, State::Resolved);
        assert_eq!(kept(&f), 1, "kept while its flap history has a change");
        for i in 0..25 {
            f.sample(
                "a1",
                "filesystem_used_ratio",
                Some(("mountpoint", "/")),
                500 + i,
                0.5,
            );
        }
        assert_eq!(kept(&f), 0, "forgotten once nothing is going on");
        // A late breach of the forgotten series cannot reopen the incident out of order.
        f.sample(
            "a1",
            "filesystem_used_ratio",
            Some(("mountpoint", "/")),
            350,
            0.99,
        );
        assert_eq!(f.incident("fs", "a1").state, State::Resolved);
    }

    #[test]
    fn memory_ratio_is_derived_and_series_survive_a_restart() {
        let mut f = fixture(Vec::new());
        f.connect("a1", 0);
        let at = f.at(100);
        let batch = |used: f64, at: i64| Input::Samples {
            agent: Arc::from("a1"),
            samples: vec![
                Sample {
                    ts_ms: at,
                    name: "memory_used_bytes".into(),
                    labels: Vec::new(),
                    value: used,
                },
                Sample {
                    ts_ms: at,
                    name: "memory_total_bytes".into(),
                    labels: Vec::new(),
                    value: 100.0,
                },
            ],
            received_ms: at,
        };
        f.engine.handle(batch(97.0, at));
        let inc = f.incident(builtin::MEMORY_FULL, "a1");
        assert_eq!((inc.state, inc.trigger_value), (State::Open, Some(0.97)));

        // A new engine on the same store (a collector restart) picks the series up.
        let mut restarted = start(f._dir.path(), &f.now, Vec::new());
        restarted.handle(Input::Connected {
            agent: Arc::from("a1"),
            hostname: "web-1".into(),
            interval_ms: 1000,
            at_ms: f.at(200),
        });
        restarted.handle(batch(50.0, f.at(300)));
        let after = f.incident(builtin::MEMORY_FULL, "a1");
        assert_eq!((after.id, after.state), (inc.id, State::Resolved));
    }
}
