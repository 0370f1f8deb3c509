//! The engine's clockwork. Every tick (1 s): each host's liveness into `up`, pending breach
//! updates, the symptoms of recovered hosts whose grace ended, and series that vanished. Every
//! [`REFRESH_EVERY_MS`]: host names and tags, maintenance windows (and the end of the
//! suppression of windows that no longer cover their incidents), stale inventories, incidents an
//! operator resolved behind the engine's back, the open-incident gauges. Every
//! [`CLOSE_EVERY_MS`]: resolved incidents past `close_after` are closed.

use std::collections::HashSet;
use std::sync::Arc;

use super::Engine;
use crate::cmdb::lookup;
use crate::incidents::builtin::INVENTORY_STALE;
use crate::incidents::lifecycle::Lifecycle;
use crate::incidents::maintenance;
use crate::incidents::records;
use crate::incidents::scope::{self, Target};
use crate::store::in_tx;

/// Host names, tags, windows, stale inventories and gauges are refreshed this often.
const REFRESH_EVERY_MS: i64 = 15_000;
/// Resolved incidents past `close_after` are closed this often.
const CLOSE_EVERY_MS: i64 = 60_000;

/// A symptom of a recovered parent waiting to clear.
pub(super) struct Reeval {
    pub incident: i64,
    pub deadline_ms: i64,
}

impl Engine {
    pub(super) fn tick(&mut self, now: i64) {
        let agents: Vec<Arc<str>> = self.agents.keys().cloned().collect();
        for agent in &agents {
            self.feed_up(agent, now);
        }
        self.flush(now, false);
        self.run_reeval(now);
        self.resolve_vanished(now);
        if now.saturating_sub(self.last_refresh_ms) >= REFRESH_EVERY_MS {
            self.last_refresh_ms = now;
            self.refresh(now);
        }
        if now.saturating_sub(self.last_clocks_ms) >= super::clocks::CLOCKS_EVERY_MS {
            self.last_clocks_ms = now;
            self.check_clocks(now);
        }
        if now.saturating_sub(self.last_close_ms) >= CLOSE_EVERY_MS {
            self.last_close_ms = now;
            let cutoff = now.saturating_sub(self.config.close_after_ms);
            let hooks = self.config.webhooks.clone();
            match in_tx(&self.conn, |c| {
                Lifecycle::new(c, &hooks, now).close_resolved_before(cutoff)
            }) {
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
        let hooks = self.config.webhooks.clone();
        for r in due {
            let res = in_tx(&self.conn, |c| {
                Lifecycle::new(c, &hooks, now)
                    .unsuppress(r.incident, "persists after its parent recovered")
            });
            match res {
                Ok(true) => {
                    self.notified = true;
                    tracing::info!(
                        incident = r.incident,
                        "symptom persists after its parent recovered; no longer suppressed"
                    );
                }
                Ok(false) => {}
                Err(e) => self.write_failed("unsuppress", &e),
            }
        }
    }

    /// Series with an active incident whose agent, while up, stopped sending them for the
    /// agent's series expiry (twice `down_after_intervals` intervals, as `/metrics` forgets
    /// them): a check removed from the agent's configuration (`check_removed`), a filesystem
    /// unmounted (`series_gone`). Derived series (`up`, `inventory_stale`) never vanish.
    fn resolve_vanished(&mut self, now: i64) {
        let mut gone = Vec::new();
        for (agent, state) in &self.agents {
            let Some(status) = self.presence.status(agent, now) else {
                continue;
            };
            if status.health != crate::presence::Health::Up {
                // A silent host is the host's incident, not its series'.
                continue;
            }
            let expiry = self.presence.series_expiry_ms(&status.observed);
            for (rule, (compiled, series)) in self.rules.iter().zip(&state.series).enumerate() {
                if compiled.derived_on_ticks {
                    continue;
                }
                for (key, entry) in series {
                    let Some(id) = entry.incident else { continue };
                    if now.saturating_sub(entry.last_sample_ms) > expiry {
                        let code = if entry.ci_type == scope::CHECK {
                            "check_removed"
                        } else {
                            "series_gone"
                        };
                        gone.push((agent.clone(), rule, key.clone(), id, code));
                    }
                }
            }
        }
        for (agent, rule, key, id, code) in gone {
            if let Some(series) = self
                .agents
                .get_mut(&agent)
                .and_then(|s| s.series.get_mut(rule))
            {
                series.remove(&key);
            }
            self.resolve_orphan(id, code, now);
        }
    }

    /// Host names and tags, maintenance windows, stale inventories, operator resolves,
    /// open-incident gauges.
    pub(super) fn refresh(&mut self, now: i64) {
        if let Err(e) = self.refresh_hosts() {
            tracing::warn!(error = %e, "cannot refresh host names and tags");
        }
        self.refresh_windows(now);
        match lookup::stale_inventories(&self.conn) {
            Ok(stale) => {
                for (agent, is_stale) in stale {
                    let Some((key, _)) = self.agents.get_key_value(agent.as_str()) else {
                        continue;
                    };
                    let key = key.clone();
                    let v = if is_stale { 1.0 } else { 0.0 };
                    self.derived(&key, INVENTORY_STALE, now, v, now);
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot read stale inventories"),
        }
        self.sync_active();
        self.count_open();
    }

    /// Reloads the maintenance windows, then lifts the suppression of incidents whose window no
    /// longer covers them (it ended, or was deleted): each becomes the symptom of its host's
    /// `host-unreachable` if that is active, else stands on its own and is announced.
    pub(super) fn refresh_windows(&mut self, now: i64) {
        match maintenance::load(&self.conn, true) {
            Ok(w) => self.windows = w,
            Err(e) => {
                tracing::warn!(error = %e, "cannot load maintenance windows");
                return;
            }
        }
        let suppressed = match records::maintenance_suppressed(&self.conn) {
            Ok(s) => s,
            Err(e) => return tracing::warn!(error = %e, "cannot read suppressed incidents"),
        };
        let hooks = self.config.webhooks.clone();
        for inc in suppressed {
            let (hostname, tags) = match inc.agent_id.as_deref().and_then(|a| self.agents.get(a)) {
                Some(state) => (state.hostname.clone(), state.tags.clone()),
                None => (inc.hostname.clone().unwrap_or_default(), Default::default()),
            };
            let target = Target {
                hostname: &hostname,
                tags: &tags,
                ci_type: &inc.ci_type,
                ci_id: inc.ci_id,
            };
            if maintenance::covering(&self.windows, now, &target).is_some() {
                continue;
            }
            let parent = inc
                .agent_id
                .as_deref()
                .and_then(|a| self.agents.get(a))
                .and_then(|s| s.host_incident)
                .filter(|p| *p != inc.id);
            let res = in_tx(&self.conn, |c| {
                let life = Lifecycle::new(c, &hooks, now);
                if !life.unsuppress(inc.id, "its maintenance window ended")? {
                    return Ok(false);
                }
                if let Some(parent) = parent {
                    life.suppress_under(inc.id, parent)?;
                }
                Ok::<_, rusqlite::Error>(true)
            });
            match res {
                Ok(true) => {
                    self.notified = true;
                    tracing::info!(incident = inc.id, window = ?inc.maintenance,
                        "maintenance window no longer covers the incident: no longer suppressed by it");
                }
                Ok(false) => {}
                Err(e) => self.write_failed("unsuppress", &e),
            }
        }
    }

    fn refresh_hosts(&mut self) -> rusqlite::Result<()> {
        let rows = lookup::hosts(&self.conn)?;
        let live: HashSet<&str> = rows.iter().map(|r| r.agent_id.as_str()).collect();
        let gone: Vec<Arc<str>> = self
            .agents
            .keys()
            .filter(|a| !live.contains(&***a))
            .cloned()
            .collect();
        for agent in gone {
            self.forget_agent(&agent);
        }
        for row in rows {
            let Some(state) = self.agents.get_mut(row.agent_id.as_str()) else {
                continue;
            };
            state.set_host(Some(row.hostname), row.ci_id, row.tags, &self.rules);
        }
        Ok(())
    }

    /// The series whose incident an operator resolved or closed (through the API, or another
    /// process) go back to idle: a breach that goes on opens again after a full `for`.
    fn sync_active(&mut self) {
        let active: HashSet<i64> = match records::active(&self.conn) {
            Ok(a) => a.into_iter().map(|i| i.id).collect(),
            Err(e) => return tracing::warn!(error = %e, "cannot read active incidents"),
        };
        for state in self.agents.values_mut() {
            for series in &mut state.series {
                for entry in series.values_mut() {
                    if entry.incident.is_some_and(|id| !active.contains(&id)) {
                        entry.incident = None;
                        entry.dirty = None;
                        entry.series.resolved_elsewhere();
                    }
                }
            }
            if state.host_incident.is_some_and(|id| !active.contains(&id)) {
                state.host_incident = None;
            }
        }
    }

    /// An operator changed incident `id`: when it is no longer active, its series goes idle.
    pub(super) fn incident_changed(&mut self, id: i64) {
        let active = match records::get(&self.conn, id) {
            Ok(Some(inc)) => inc.state.is_active(),
            Ok(None) => false,
            Err(e) => return tracing::warn!(error = %e, "cannot read an incident"),
        };
        if active {
            return;
        }
        for state in self.agents.values_mut() {
            for series in &mut state.series {
                for entry in series.values_mut() {
                    if entry.incident == Some(id) {
                        entry.incident = None;
                        entry.dirty = None;
                        entry.series.resolved_elsewhere();
                    }
                }
            }
            if state.host_incident == Some(id) {
                state.host_incident = None;
            }
        }
    }

    /// A revoked agent: its series go, its active incidents resolve (`agent_revoked`).
    pub(super) fn forget_agent(&mut self, agent: &Arc<str>) {
        let Some(state) = self.agents.remove(agent) else {
            return;
        };
        let now = self.now();
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

    pub(super) fn load_host(&mut self, agent: &Arc<str>) {
        let row = lookup::host(&self.conn, agent);
        let Some(state) = self.agents.get_mut(agent) else {
            return;
        };
        match row {
            Ok(Some(row)) if row.ci_id.is_some() => {
                state.set_host(None, row.ci_id, row.tags, &self.rules);
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "cannot read the host CI"),
        }
    }

    /// The agent's inventory was stored: incidents opened before their CI existed get it, and
    /// so do the series that looked it up in vain.
    pub(super) fn attach_cis(&mut self, agent: &Arc<str>) {
        let now = self.now();
        let hooks = self.config.webhooks.clone();
        match in_tx(&self.conn, |c| {
            Lifecycle::new(c, &hooks, now).attach_cis(agent)
        }) {
            Ok(0) => {}
            Ok(n) => tracing::info!(agent = %agent, incidents = n, "incidents got their CI"),
            Err(e) => self.write_failed("CI", &e),
        }
        if let Some(state) = self.agents.get_mut(agent) {
            for series in &mut state.series {
                for entry in series.values_mut() {
                    if entry.ci_id == Some(None) {
                        entry.ci_id = None;
                    }
                }
            }
        }
    }
}
