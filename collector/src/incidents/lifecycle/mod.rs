//! The one writer of incident rows: opening (with the suppression and probable cause its caller
//! decided), breach updates, flapping, resolving, reopening, suppression and its end, closing,
//! operator transitions and CI attachment. Each change writes its timeline row and its
//! notification outbox rows in the caller's transaction, so they commit together. The engine,
//! the Alertmanager receiver and the incident API all come here; none of them writes incident
//! rows itself (the SQL is in the private `rows` module).
//!
//! Callers decide *what* (this breach opens an incident, suppressed under that parent; this
//! alert resolves); this module decides *how*, and applies the one notification policy:
//!
//! # Notification policy
//! - `opened` / `reopened` is notified when the incident's episode opens neither suppressed nor
//!   flapping; an episode that opened suppressed or flapping is notified (once) when it stops
//!   being either while still active ([`Lifecycle::announce_if_quiet`]).
//! - `acknowledged` and `resolved` are notified exactly when the current episode was notified
//!   (`announced`): whoever was told it opened hears what became of it, suppressed since or
//!   not; nobody hears of the end of what they were never told began.
//! - Nothing else (assign, comment, close, suppression changes) is notified.
//!
//! [`notifies`] is that policy as code; every path calls it.
//!
//! This module must never: leave two active incidents for one dedup key (a partial unique index
//! backs this), reopen an incident from a breach that began before its resolution, change a
//! closed incident's state, or notify against the policy above.

mod rows;

use rusqlite::Connection;
use serde_json::json;

use super::records::{
    self, Incident, Opened, Opening, Request, Suppression, TransitionError, Transitioned, SYSTEM,
};
use crate::notify::{self, EventKind, Notification, ServiceLevel, Webhook};

/// Whether `kind` of `inc` (as it is now, after the change) is notified: the policy of the
/// module docs.
pub fn notifies(inc: &Incident, kind: EventKind) -> bool {
    match kind {
        EventKind::Opened | EventKind::Reopened => {
            inc.state.is_active() && !inc.is_suppressed() && !inc.flapping && !inc.announced
        }
        EventKind::Acknowledged | EventKind::Resolved => inc.announced,
        // Warnings about an incident nobody was told of would come out of nowhere.
        EventKind::SlaWarning | EventKind::SlaBreached => inc.announced && !inc.is_suppressed(),
    }
}

/// The payload of `kind` for `inc`, caused by `actor` at `at_ms`.
pub fn notification(inc: &Incident, kind: EventKind, actor: &str, at_ms: i64) -> Notification {
    Notification {
        event: kind,
        at_ms,
        actor: actor.to_string(),
        incident_id: inc.id,
        rule: inc.rule.clone(),
        title: inc.title.clone(),
        state: inc.state.as_str().to_string(),
        priority: inc.priority,
        impact: inc.impact.clone(),
        urgency: inc.urgency.clone(),
        host: inc.hostname.clone(),
        agent_id: inc.agent_id.clone(),
        ci_id: inc.ci_id,
        ci_type: inc.ci_type.clone(),
        ci_key: inc.ci_key.clone(),
        metric: inc.metric.clone(),
        op: inc.op.clone(),
        value: inc.trigger_value,
        last_value: inc.last_value,
        threshold: inc.threshold,
        peak: inc.peak_value,
        started_ms: inc.started_ms,
        acknowledged_ms: inc.acknowledged_ms,
        resolved_ms: inc.resolved_ms,
        assignee: inc.assignee.clone(),
        resolution_code: inc.resolution_code.clone(),
        resolution_note: inc.resolution_note.clone(),
        reopen_count: u32::try_from(inc.reopen_count).unwrap_or(u32::MAX),
        labels: inc.labels.clone(),
        service_level: None,
    }
}

/// What a system resolve did.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// The incident as it was before.
    pub before: Incident,
    /// Its active children (symptoms), when it was a parent.
    pub children: Vec<i64>,
}

/// Incident changes in the caller's transaction, at one time, by one actor.
pub struct Lifecycle<'a> {
    conn: &'a Connection,
    hooks: &'a [Webhook],
    now_ms: i64,
    actor: &'a str,
}

impl<'a> Lifecycle<'a> {
    /// Changes made by the system (the actor of the timeline rows) at `now_ms`, notifying
    /// `hooks`.
    pub fn new(conn: &'a Connection, hooks: &'a [Webhook], now_ms: i64) -> Lifecycle<'a> {
        Lifecycle {
            conn,
            hooks,
            now_ms,
            actor: SYSTEM,
        }
    }

    /// The same, on behalf of `actor` (`api:<token>`, `alertmanager`).
    pub fn by(self, actor: &'a str) -> Lifecycle<'a> {
        Lifecycle { actor, ..self }
    }

    /// Queues `kind` of incident `id` for every matching webhook when the policy says so;
    /// `event_id` is the timeline row of the event (part of the idempotency key). Opened and
    /// reopened mark the episode announced. Returns whether anything was announced.
    fn announce(&self, id: i64, kind: EventKind, event_id: i64) -> rusqlite::Result<bool> {
        self.announce_with(id, kind, event_id, None)
    }

    /// [`Self::announce`] with the service level an `sla_warning` / `sla_breached` is about.
    fn announce_with(
        &self,
        id: i64,
        kind: EventKind,
        event_id: i64,
        level: Option<&ServiceLevel>,
    ) -> rusqlite::Result<bool> {
        let Some(inc) = records::get(self.conn, id)? else {
            return Ok(false);
        };
        if !notifies(&inc, kind) {
            return Ok(false);
        }
        if matches!(kind, EventKind::Opened | EventKind::Reopened) {
            rows::set_announced(self.conn, id)?;
        }
        let mut n = notification(&inc, kind, self.actor, self.now_ms);
        n.service_level = level.cloned();
        let queued = notify::enqueue(self.conn, self.hooks, &n, event_id, self.now_ms)?;
        if queued > 0 {
            let names: Vec<&str> = self
                .hooks
                .iter()
                .filter(|h| notify::matches(h, &n))
                .map(|h| h.name.as_str())
                .collect();
            rows::add_event(
                self.conn,
                id,
                self.now_ms,
                "notification",
                SYSTEM,
                &json!({"event": kind.as_str(), "webhooks": names}),
            )?;
        }
        Ok(true)
    }

    /// Opens an incident for `o.dedup_key`, or reopens the last one of that key when it was
    /// resolved (not closed) within `reopen_within_ms`. When `o` is a host's
    /// `host-unreachable` (`symptoms_of` = its agent), the host's other active incidents become
    /// its suppressed symptoms.
    pub fn open(
        &self,
        o: &Opening<'_>,
        reopen_within_ms: i64,
        symptoms_of: Option<&str>,
    ) -> rusqlite::Result<(Opened, usize)> {
        let opened = rows::open(self.conn, o, reopen_within_ms, self.now_ms)?;
        let (id, event_id, kind) = match opened {
            Opened::New { id, event_id } => (id, event_id, EventKind::Opened),
            Opened::Reopened { id, event_id } => (id, event_id, EventKind::Reopened),
            Opened::Active { .. } | Opened::OutOfOrder { .. } => return Ok((opened, 0)),
        };
        self.announce(id, kind, event_id)?;
        let mut symptoms = 0;
        if let Some(agent) = symptoms_of {
            for child in records::host_symptoms(self.conn, agent, id)? {
                if rows::suppress_under(self.conn, child, id, self.now_ms)? {
                    symptoms += 1;
                }
            }
        }
        Ok((opened, symptoms))
    }

    /// Records the latest breach of an active incident (time, value, peak).
    pub fn record_breach(
        &self,
        id: i64,
        at_ms: i64,
        value: f64,
        peak: f64,
    ) -> rusqlite::Result<()> {
        rows::record_breach(self.conn, id, at_ms, value, peak)
    }

    /// Marks an active incident flapping or not; once it settles, what was held back is
    /// announced.
    pub fn set_flapping(&self, id: i64, flapping: bool, percent: f64) -> rusqlite::Result<()> {
        if rows::set_flapping(self.conn, id, flapping, percent, self.now_ms)? && !flapping {
            self.announce_if_quiet(id, "no longer flapping")?;
        }
        Ok(())
    }

    /// Resolves an active incident; `code` says why (`cleared`, `alertmanager_resolved`,
    /// `rule_deleted`, `check_removed`, `agent_revoked`, ...). When its condition `cleared`, a
    /// suppressed symptom of a parent is closed at once (`symptom_cleared`): done with it.
    /// `None` when it was not active (an operator resolved it first).
    pub fn resolve(
        &self,
        id: i64,
        at_ms: i64,
        value: Option<f64>,
        code: &str,
        cleared: bool,
    ) -> rusqlite::Result<Option<Resolved>> {
        let Some(before) = records::get(self.conn, id)? else {
            return Ok(None);
        };
        let Some(event_id) =
            rows::resolve(self.conn, id, at_ms, value, code, self.actor, self.now_ms)?
        else {
            return Ok(None);
        };
        self.announce(id, EventKind::Resolved, event_id)?;
        if cleared && before.suppressed.as_deref() == Some("parent") {
            rows::close_system(self.conn, id, "symptom_cleared", self.now_ms)?;
        }
        let children = records::children(self.conn, id)?
            .into_iter()
            .filter(|c| c.state.is_active())
            .map(|c| c.id)
            .collect();
        Ok(Some(Resolved { before, children }))
    }

    /// Makes an active incident a suppressed symptom of `parent_id`.
    pub fn suppress_under(&self, id: i64, parent_id: i64) -> rusqlite::Result<bool> {
        rows::suppress_under(self.conn, id, parent_id, self.now_ms)
    }

    /// Lifts an active incident's suppression (`why` goes on the timeline) and announces it if
    /// it was never announced and is not flapping. True when it was suppressed.
    pub fn unsuppress(&self, id: i64, why: &str) -> rusqlite::Result<bool> {
        if rows::unsuppress(self.conn, id, why, self.now_ms)?.is_none() {
            return Ok(false);
        }
        self.announce_if_quiet(id, why)?;
        Ok(true)
    }

    /// Announces an active incident that is neither suppressed nor flapping and was not yet
    /// (with an `announced` timeline row saying why now). True when it did.
    pub fn announce_if_quiet(&self, id: i64, why: &str) -> rusqlite::Result<bool> {
        let Some(inc) = records::get(self.conn, id)? else {
            return Ok(false);
        };
        let kind = if inc.reopen_count > 0 {
            EventKind::Reopened
        } else {
            EventKind::Opened
        };
        if !notifies(&inc, kind) {
            return Ok(false);
        }
        let event_id = rows::add_event(
            self.conn,
            id,
            self.now_ms,
            "announced",
            SYSTEM,
            &json!({"reason": why}),
        )?;
        self.announce(id, kind, event_id)
    }

    /// Closes the incidents resolved before `before_ms` (`close_after`); returns their ids.
    pub fn close_resolved_before(&self, before_ms: i64) -> rusqlite::Result<Vec<i64>> {
        rows::close_resolved_before(self.conn, before_ms, self.now_ms)
    }

    /// Applies an operator's request (by this lifecycle's actor) or refuses it (409 with the
    /// allowed actions), notifying acknowledge and resolve as the policy says.
    pub fn operator(&self, id: i64, req: &Request) -> Result<Transitioned, TransitionError> {
        let t = rows::transition(self.conn, id, req, self.actor, self.now_ms)?;
        let kind = match req {
            Request::Acknowledge { .. } => Some(EventKind::Acknowledged),
            Request::Resolve { .. } => Some(EventKind::Resolved),
            _ => None,
        };
        if let Some(kind) = kind {
            self.announce(id, kind, t.event_id)?;
        }
        Ok(t)
    }

    /// Writes when the incident's response and resolution fall due and whose targets apply
    /// (the engine's clockwork, when they changed).
    pub fn set_due(
        &self,
        id: i64,
        response_due_ms: Option<i64>,
        resolution_due_ms: Option<i64>,
        sla: Option<&str>,
    ) -> rusqlite::Result<()> {
        rows::set_due(self.conn, id, response_due_ms, resolution_due_ms, sla)
    }

    /// A clock of the incident reached `level.percent` of its target: the level is kept (each
    /// level is reported once), the timeline gets `sla_warning` (50, 75 %) or `sla_breached`
    /// (100 %) and the webhooks hear of it as the policy says.
    pub fn reach_level(&self, id: i64, level: &ServiceLevel) -> rusqlite::Result<()> {
        let kind = if level.percent >= 100 {
            EventKind::SlaBreached
        } else {
            EventKind::SlaWarning
        };
        rows::set_level(self.conn, id, level.target, level.percent)?;
        let event_id = rows::add_event(
            self.conn,
            id,
            self.now_ms,
            kind.as_str(),
            SYSTEM,
            &json!({
                "target": level.target,
                "percent": level.percent,
                "target_ms": level.target_ms,
                "due_ms": level.due_ms,
                "sla": level.sla,
            }),
        )?;
        self.announce_with(id, kind, event_id, Some(level))?;
        Ok(())
    }

    /// Gives the agent's incidents without a CI the id of their CI, now that the CMDB has it.
    pub fn attach_cis(&self, agent: &str) -> rusqlite::Result<usize> {
        rows::attach_cis(self.conn, agent)
    }
}

/// The [`Suppression`] of an incident row as it is.
pub fn suppression_of(inc: &Incident) -> Option<Suppression> {
    match (inc.suppressed.as_deref(), inc.parent_id, &inc.maintenance) {
        (Some("parent"), Some(parent_id), _) => Some(Suppression::Parent { parent_id }),
        (Some("maintenance"), _, Some(window)) => Some(Suppression::Maintenance {
            window: window.clone(),
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests;
