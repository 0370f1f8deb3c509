//! The engine's state: rules compiled for evaluation, and per agent its host (name, tags, CI),
//! which rules' host scopes match it, and its (rule, CI) series. Evaluation of samples and of
//! the derived metrics happens here; what an evaluation event does to an incident is
//! `changes.rs`.
//!
//! Only series with something going on are kept (breaching, pending, with an incident, or with
//! a state change in their flap history): memory follows the breaching series, not every series
//! of every host.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use vigil_shared::inventory::ci_type;
use vigil_shared::metric_names;
use vigil_shared::proto::Sample;

use super::Engine;
use crate::cmdb::lookup;
use crate::incidents::builtin::{HOST_UNREACHABLE, MEMORY_USED_RATIO, UP};
use crate::incidents::eval::{Condition, Observed, Series};
use crate::incidents::records::{self, Origin};
use crate::incidents::rule::Rule;
use crate::incidents::scope;
use crate::store::StoreError;

pub(super) struct CompiledRule {
    pub rule: Rule,
    pub cond: Condition,
    pub is_host_unreachable: bool,
    /// Its metric is one the collector derives on ticks and refreshes (`up`,
    /// `inventory_stale`), not one agents send: its series never "vanish".
    pub derived_on_ticks: bool,
}

/// One (rule, CI) series.
pub(super) struct Entry {
    pub series: Series,
    pub ci_type: &'static str,
    /// Active incident of this series.
    pub incident: Option<i64>,
    /// CMDB id of the CI, looked up once (`None` inside: no such CI yet).
    pub ci_id: Option<Option<i64>>,
    /// Out of the rule's scope (by CI id): samples are skipped.
    pub excluded: bool,
    /// Breach not yet written: (at, value, peak).
    pub dirty: Option<(i64, f64, f64)>,
    pub last_flush_ms: i64,
    /// When its last sample arrived (the collector's clock): a series with an incident that
    /// its agent stopped sending is resolved (`check_removed`, `series_gone`).
    pub last_sample_ms: i64,
}

impl Entry {
    pub fn new(ci_type: &'static str, now_ms: i64) -> Entry {
        Entry {
            series: Series::new(),
            ci_type,
            incident: None,
            ci_id: None,
            excluded: false,
            dirty: None,
            last_flush_ms: now_ms,
            last_sample_ms: now_ms,
        }
    }
}

pub(super) struct AgentState {
    pub hostname: String,
    pub tags: BTreeMap<String, String>,
    pub host_ci: Option<i64>,
    /// Per rule: does the host part of its scope match this host?
    pub host_scope: Vec<bool>,
    /// Per rule: series by CI key.
    pub series: Vec<HashMap<String, Entry>>,
    /// Active `host-unreachable` incident.
    pub host_incident: Option<i64>,
}

impl AgentState {
    pub fn new(hostname: String, rules: &[CompiledRule]) -> AgentState {
        let tags = BTreeMap::new();
        AgentState {
            host_scope: rules
                .iter()
                .map(|r| scope::host_matches(&r.rule.scope, &hostname, &tags))
                .collect(),
            hostname,
            tags,
            host_ci: None,
            series: rules.iter().map(|_| HashMap::new()).collect(),
            host_incident: None,
        }
    }

    /// New host name (when given), host CI and tags; rule scopes are re-matched when any changed.
    pub fn set_host(
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

    pub fn rescope(&mut self, rules: &[CompiledRule]) {
        for (slot, r) in self.host_scope.iter_mut().zip(rules) {
            *slot = scope::host_matches(&r.rule.scope, &self.hostname, &self.tags);
        }
    }
}

/// What a series is, for opening its incident.
pub(super) struct SeriesRef<'a> {
    pub agent: &'a Arc<str>,
    pub rule: usize,
    pub key: &'a str,
}

impl Engine {
    /// Known agents and the series of active incidents.
    pub(super) fn restore(&mut self) -> Result<(), StoreError> {
        let now = self.now();
        for host in lookup::hosts(&self.conn)? {
            self.agents.insert(
                Arc::from(host.agent_id.as_str()),
                AgentState::new(host.hostname, &self.rules),
            );
        }
        self.refresh(now);
        for inc in records::active(&self.conn)? {
            if inc.origin != Origin::Rule.as_str() || inc.ci_type == crate::sla::alerts::CI_TYPE {
                // Alertmanager's are its own; an SLA's alerts are decided by `sla_alerts.rs`.
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
            let mut entry = Entry::new(scope::static_ci_type(&inc.ci_type), now);
            entry.series =
                Series::restore_open(inc.first_breach_ms, inc.last_breach_ms, peak, inc.flapping);
            entry.incident = Some(inc.id);
            entry.ci_id = Some(inc.ci_id);
            state.series[rule].insert(inc.ci_key.clone(), entry);
        }
        self.resolve_removed_slas(now);
        Ok(())
    }

    /// The configured (and built-in) rules plus the API's.
    pub(super) fn load_rules(&mut self) {
        let mut all = self.config.rules.clone();
        match crate::incidents::api_rules::load(&self.conn) {
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
                derived_on_ticks: r.metric == UP
                    || r.metric == crate::incidents::builtin::INVENTORY_STALE,
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
        let now = self.now();
        for id in orphans {
            self.resolve_orphan(id, "rule_deleted", now);
        }
    }

    /// An agent said hello: known from now on, under this host name.
    pub(super) fn connected(&mut self, agent: &Arc<str>, hostname: String) {
        let rules = &self.rules;
        let state = self
            .agents
            .entry(agent.clone())
            .or_insert_with(|| AgentState::new(hostname.clone(), rules));
        if state.hostname != hostname {
            state.hostname = hostname;
            state.rescope(rules);
        }
    }

    pub(super) fn samples(&mut self, agent: &Arc<str>, samples: &[Sample], received_ms: i64) {
        if !self.agents.contains_key(agent) {
            // Batches only come after a hello, which registered the agent.
            return;
        }
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
                self.observe(agent, rule, ci_type, key, s.ts_ms, s.value, received_ms);
            }
        }
        self.by_metric = by_metric;
        if let (Some((ts, used)), Some((_, total))) = (used, total) {
            if total > 0.0 {
                self.derived(agent, MEMORY_USED_RATIO, ts, used / total, received_ms);
            }
        }
    }

    /// Evaluates a collector-derived host metric.
    pub(super) fn derived(
        &mut self,
        agent: &Arc<str>,
        metric: &str,
        ts_ms: i64,
        value: f64,
        now_ms: i64,
    ) {
        let by_metric = std::mem::take(&mut self.by_metric);
        if let Some(rules) = by_metric.get(metric) {
            for &rule in rules {
                self.observe(
                    agent,
                    rule,
                    ci_type::HOST,
                    ci_type::HOST,
                    ts_ms,
                    value,
                    now_ms,
                );
            }
        }
        self.by_metric = by_metric;
    }

    /// The derived `up`: 0 while [`crate::presence::health`] says the host is down, else 1 (a
    /// host stopped on purpose is not unreachable during its grace).
    pub(super) fn feed_up(&mut self, agent: &Arc<str>, now: i64) {
        let Some(status) = self.presence.status(agent, now) else {
            return;
        };
        let up = if status.health.unreachable() {
            0.0
        } else {
            1.0
        };
        self.derived(agent, UP, now, up, now);
    }

    #[allow(clippy::too_many_arguments)]
    fn observe(
        &mut self,
        agent: &Arc<str>,
        rule: usize,
        ci_type: &'static str,
        key: &str,
        ts_ms: i64,
        value: f64,
        received_ms: i64,
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
            // Only series with something going on are kept (see `forget_if_idle`): most samples
            // are fine, and a fine sample of an unknown series changes nothing.
            if r.rule.scope.ci.is_none() && value.is_finite() && !r.cond.breached(value) {
                self.metrics.evaluations.inc();
                return;
            }
            let mut entry = Entry::new(ci_type, received_ms);
            if let Some(want) = &r.rule.scope.ci {
                let id = ci_id_of(&self.conn, agent, ci_type, key, state.host_ci);
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
        entry.last_sample_ms = entry.last_sample_ms.max(received_ms);
        self.events.clear();
        match entry.series.observe_arrived(
            &r.cond,
            &self.config.flap,
            ts_ms,
            received_ms,
            value,
            &mut self.events,
        ) {
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
    /// change in its flap history, nothing to write. A late sample of a forgotten series is
    /// caught by the lifecycle (a breach older than the last resolution never reopens an
    /// incident).
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

    pub(super) fn entry_mut(&mut self, s: &SeriesRef<'_>) -> Option<&mut Entry> {
        self.agents
            .get_mut(s.agent)?
            .series
            .get_mut(s.rule)?
            .get_mut(s.key)
    }
}

/// The CMDB id of the CI a series is about: the host's own, none for a check, else looked up.
pub(super) fn ci_id_of(
    conn: &rusqlite::Connection,
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
    lookup::ci_id(conn, agent, ci_type, key).unwrap_or_else(|e| {
        tracing::warn!(error = %e, "cannot look up a CI");
        None
    })
}
