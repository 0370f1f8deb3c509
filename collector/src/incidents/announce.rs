//! Turning an incident event into outbox rows: builds the [`Notification`] from the stored
//! incident, queues it for every matching webhook (inside the caller's transaction) and records
//! that on the timeline. The callers decide *whether* to announce (never for suppressed or
//! flapping incidents; acknowledge and resolve only for announced ones).

use rusqlite::Connection;
use serde_json::json;

use super::records::{self, Incident};
use crate::notify::{self, EventKind, Notification, Webhook};

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
    }
}

/// Queues `kind` of incident `id` for every matching webhook; `event_id` is the timeline row of
/// the event (part of the idempotency key). Opened/reopened mark the episode announced. Returns
/// how many outbox rows were queued.
pub fn announce(
    conn: &Connection,
    hooks: &[Webhook],
    id: i64,
    kind: EventKind,
    event_id: i64,
    actor: &str,
    now_ms: i64,
) -> rusqlite::Result<usize> {
    let Some(inc) = records::get(conn, id)? else {
        return Ok(0);
    };
    if matches!(kind, EventKind::Opened | EventKind::Reopened) {
        records::set_announced(conn, id)?;
    }
    let n = notification(&inc, kind, actor, now_ms);
    let queued = notify::enqueue(conn, hooks, &n, event_id, now_ms)?;
    if queued > 0 {
        let names: Vec<&str> = hooks
            .iter()
            .filter(|h| notify::matches(h, &n))
            .map(|h| h.name.as_str())
            .collect();
        records::add_event(
            conn,
            id,
            now_ms,
            "notification",
            records::SYSTEM,
            &json!({"event": kind.as_str(), "webhooks": names}),
        )?;
    }
    Ok(queued)
}
