//! The SQL that writes incident rows and their timeline: private to [`super`], the one writer.
//! Every function takes the caller's connection inside a transaction the caller owns.

use rusqlite::{params, Connection, OptionalExtension};
use serde_json::json;

use crate::incidents::records::{
    get, Opened, Opening, Request, State, Suppression, TransitionError, Transitioned, SYSTEM,
};
use crate::incidents::rule::priority;

/// Appends a timeline row; returns its id.
pub(super) fn add_event(
    conn: &Connection,
    incident_id: i64,
    ts_ms: i64,
    kind: &str,
    actor: &str,
    detail: &serde_json::Value,
) -> rusqlite::Result<i64> {
    conn.prepare_cached(
        "INSERT INTO incident_events (incident_id, ts_ms, kind, actor, detail)
         VALUES (?1, ?2, ?3, ?4, ?5)",
    )?
    .execute(params![incident_id, ts_ms, kind, actor, detail.to_string()])?;
    Ok(conn.last_insert_rowid())
}

fn suppression_columns(
    s: Option<&Suppression>,
) -> (Option<&'static str>, Option<i64>, Option<&str>) {
    match s {
        None => (None, None, None),
        Some(Suppression::Parent { parent_id }) => (Some("parent"), Some(*parent_id), None),
        Some(Suppression::Maintenance { window }) => {
            (Some("maintenance"), None, Some(window.as_str()))
        }
    }
}

fn suppression_detail(s: &Suppression) -> serde_json::Value {
    match s {
        Suppression::Parent { parent_id } => json!({"reason": "parent", "parent_id": parent_id}),
        Suppression::Maintenance { window } => {
            json!({"reason": "maintenance", "window": window})
        }
    }
}

/// Opens an incident for `o.dedup_key`, or reopens the last one of that key when it was
/// resolved (not closed) within `reopen_within_ms` of `o.at_ms`.
pub(super) fn open(
    conn: &Connection,
    o: &Opening<'_>,
    reopen_within_ms: i64,
    now_ms: i64,
) -> rusqlite::Result<Opened> {
    let last: Option<(i64, String, Option<i64>)> = conn
        .prepare_cached(
            "SELECT id, state, resolved_ms FROM incidents WHERE dedup_key = ?1
             ORDER BY id DESC LIMIT 1",
        )?
        .query_row([o.dedup_key], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .optional()?;
    let (suppressed, parent_id, maintenance) = suppression_columns(o.suppression.as_ref());
    if let Some((id, state, resolved_ms)) = last {
        match State::parse(&state) {
            Some(s) if s.is_active() => return Ok(Opened::Active { id }),
            _ => {}
        }
        if let Some(resolved) = resolved_ms {
            if o.first_breach_ms < resolved {
                return Ok(Opened::OutOfOrder { id });
            }
            if state == State::Resolved.as_str() && o.at_ms - resolved <= reopen_within_ms {
                conn.prepare_cached(
                    "UPDATE incidents SET state = 'open', reopen_count = reopen_count + 1, announced = 0,
                        acknowledged_ms = NULL, resolved_ms = NULL, resolution_code = NULL,
                        resolution_note = NULL, resolved_by = NULL, last_breach_ms = ?2,
                        trigger_value = ?3, peak_value = ?4, last_value = ?3, flapping = ?5,
                        suppressed = ?6, parent_id = ?7, maintenance = ?8,
                        probable_cause_id = ?9
                     WHERE id = ?1",
                )?
                .execute(params![
                    id,
                    o.at_ms,
                    o.value,
                    o.peak,
                    o.flapping,
                    suppressed,
                    parent_id,
                    maintenance,
                    o.probable_cause_id
                ])?;
                let event_id = add_event(
                    conn,
                    id,
                    now_ms,
                    "reopened",
                    SYSTEM,
                    &json!({"value": o.value, "first_breach_ms": o.first_breach_ms,
                            "at_ms": o.at_ms}),
                )?;
                record_context(conn, id, o, now_ms)?;
                return Ok(Opened::Reopened { id, event_id });
            }
        }
    }
    let labels = serde_json::to_string(o.labels).unwrap_or_else(|_| "{}".into());
    conn.prepare_cached(
        "INSERT INTO incidents (dedup_key, rule, origin, agent_id, ci_id, ci_type, ci_key, title,
            state, impact, urgency, priority, metric, threshold, trigger_value, peak_value,
            last_value, first_breach_ms, last_breach_ms, started_ms, created_ms, flapping,
            suppressed, parent_id, maintenance, probable_cause_id, labels, op)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, 'open', ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?14,
            ?16, ?17, ?16, ?18, ?19, ?20, ?21, ?22, ?23, ?24, ?25)",
    )?
    .execute(params![
        o.dedup_key,
        o.rule,
        o.origin.as_str(),
        o.agent_id,
        o.ci_id,
        o.ci_type,
        o.ci_key,
        o.title,
        o.impact.as_str(),
        o.urgency.as_str(),
        priority(o.impact, o.urgency),
        o.metric,
        o.threshold,
        o.value,
        o.peak,
        o.first_breach_ms,
        o.at_ms,
        now_ms,
        o.flapping,
        suppressed,
        parent_id,
        maintenance,
        o.probable_cause_id,
        labels,
        o.op,
    ])?;
    let id = conn.last_insert_rowid();
    let event_id = add_event(
        conn,
        id,
        now_ms,
        "opened",
        SYSTEM,
        &json!({"value": o.value, "threshold": o.threshold, "first_breach_ms": o.first_breach_ms,
                "at_ms": o.at_ms}),
    )?;
    record_context(conn, id, o, now_ms)?;
    Ok(Opened::New { id, event_id })
}

/// Marks the current episode as announced (an opened/reopened notification was queued).
pub(super) fn set_announced(conn: &Connection, id: i64) -> rusqlite::Result<()> {
    conn.prepare_cached("UPDATE incidents SET announced = 1 WHERE id = ?1")?
        .execute([id])?;
    Ok(())
}

/// Timeline rows for why a just opened (or reopened) incident is suppressed and what probably
/// caused it.
fn record_context(
    conn: &Connection,
    id: i64,
    o: &Opening<'_>,
    now_ms: i64,
) -> rusqlite::Result<()> {
    if let Some(s) = &o.suppression {
        add_event(
            conn,
            id,
            now_ms,
            "suppressed",
            SYSTEM,
            &suppression_detail(s),
        )?;
    }
    if let Some(cause) = o.probable_cause_id {
        add_event(
            conn,
            id,
            now_ms,
            "probable_cause",
            SYSTEM,
            &json!({"incident_id": cause}),
        )?;
    }
    Ok(())
}

/// Records the latest breach of an active incident (time, value, peak).
pub(super) fn record_breach(
    conn: &Connection,
    id: i64,
    at_ms: i64,
    value: f64,
    peak: f64,
) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "UPDATE incidents SET last_breach_ms = max(last_breach_ms, ?2), last_value = ?3,
            peak_value = ?4
         WHERE id = ?1 AND state IN ('open', 'acknowledged')",
    )?
    .execute(params![id, at_ms, value, peak])?;
    Ok(())
}

/// Sets the flapping mark of an active incident, with a timeline row. False when it was not
/// active.
pub(super) fn set_flapping(
    conn: &Connection,
    id: i64,
    flapping: bool,
    percent: f64,
    now_ms: i64,
) -> rusqlite::Result<bool> {
    let n = conn
        .prepare_cached(
            "UPDATE incidents SET flapping = ?2
             WHERE id = ?1 AND state IN ('open', 'acknowledged') AND flapping != ?2",
        )?
        .execute(params![id, flapping])?;
    if n > 0 {
        let kind = if flapping {
            "flapping_started"
        } else {
            "flapping_stopped"
        };
        add_event(
            conn,
            id,
            now_ms,
            kind,
            SYSTEM,
            &json!({"percent_state_change": percent}),
        )?;
    }
    Ok(n > 0)
}

/// Resolves an active incident on behalf of `by` (the system, `alertmanager`). Returns the
/// timeline row id, or `None` when it was not active (an operator resolved it first).
pub(super) fn resolve(
    conn: &Connection,
    id: i64,
    at_ms: i64,
    value: Option<f64>,
    code: &str,
    by: &str,
    now_ms: i64,
) -> rusqlite::Result<Option<i64>> {
    let n = conn
        .prepare_cached(
            "UPDATE incidents SET state = 'resolved', resolved_ms = ?2, resolved_by = ?5,
                resolution_code = ?3, last_value = coalesce(?4, last_value), flapping = 0
             WHERE id = ?1 AND state IN ('open', 'acknowledged')",
        )?
        .execute(params![id, at_ms, code, value, by])?;
    if n == 0 {
        return Ok(None);
    }
    add_event(
        conn,
        id,
        now_ms,
        "resolved",
        by,
        &json!({"code": code, "value": value, "at_ms": at_ms}),
    )
    .map(Some)
}

/// Marks an active incident as a suppressed symptom of `parent_id` (it may have notified before).
pub(super) fn suppress_under(
    conn: &Connection,
    id: i64,
    parent_id: i64,
    now_ms: i64,
) -> rusqlite::Result<bool> {
    let n = conn
        .prepare_cached(
            "UPDATE incidents SET suppressed = 'parent', parent_id = ?2
             WHERE id = ?1 AND state IN ('open', 'acknowledged') AND suppressed IS NULL",
        )?
        .execute(params![id, parent_id])?;
    if n > 0 {
        add_event(
            conn,
            id,
            now_ms,
            "suppressed",
            SYSTEM,
            &suppression_detail(&Suppression::Parent { parent_id }),
        )?;
    }
    Ok(n > 0)
}

/// Lifts the suppression of an active incident (`why` on the timeline). Returns the timeline row
/// id when it changed.
pub(super) fn unsuppress(
    conn: &Connection,
    id: i64,
    why: &str,
    now_ms: i64,
) -> rusqlite::Result<Option<i64>> {
    let n = conn
        .prepare_cached(
            "UPDATE incidents SET suppressed = NULL, parent_id = NULL, maintenance = NULL
             WHERE id = ?1 AND state IN ('open', 'acknowledged') AND suppressed IS NOT NULL",
        )?
        .execute([id])?;
    if n == 0 {
        return Ok(None);
    }
    add_event(
        conn,
        id,
        now_ms,
        "unsuppressed",
        SYSTEM,
        &json!({"reason": why}),
    )
    .map(Some)
}

/// Closes incidents resolved before `resolved_before_ms`; returns their ids.
pub(super) fn close_resolved_before(
    conn: &Connection,
    resolved_before_ms: i64,
    now_ms: i64,
) -> rusqlite::Result<Vec<i64>> {
    let ids: Vec<i64> = conn
        .prepare_cached(
            "SELECT id FROM incidents WHERE state = 'resolved' AND resolved_ms < ?1 LIMIT 10000",
        )?
        .query_map([resolved_before_ms], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    for &id in &ids {
        conn.prepare_cached("UPDATE incidents SET state = 'closed', closed_ms = ?2 WHERE id = ?1")?
            .execute(params![id, now_ms])?;
        add_event(
            conn,
            id,
            now_ms,
            "closed",
            SYSTEM,
            &json!({"reason": "close_after"}),
        )?;
    }
    Ok(ids)
}

/// Closes one resolved incident as the system (`reason` in the timeline).
pub(super) fn close_system(
    conn: &Connection,
    id: i64,
    reason: &str,
    now_ms: i64,
) -> rusqlite::Result<bool> {
    let n = conn
        .prepare_cached(
            "UPDATE incidents SET state = 'closed', closed_ms = ?2 WHERE id = ?1 AND state = 'resolved'",
        )?
        .execute(params![id, now_ms])?;
    if n > 0 {
        add_event(
            conn,
            id,
            now_ms,
            "closed",
            SYSTEM,
            &json!({"reason": reason}),
        )?;
    }
    Ok(n > 0)
}

/// Applies an operator's request by `actor` at `now_ms`, or refuses it (409 with the allowed
/// actions).
pub(super) fn transition(
    conn: &Connection,
    id: i64,
    req: &Request,
    actor: &str,
    now_ms: i64,
) -> Result<Transitioned, TransitionError> {
    let inc = get(conn, id)?.ok_or(TransitionError::NotFound(id))?;
    let action = req.action();
    if !inc.state.allowed().contains(&action) {
        return Err(TransitionError::Illegal {
            action: action.as_str(),
            state: inc.state,
            allowed: inc.state.allowed(),
        });
    }
    let (kind, detail) = match req {
        Request::Acknowledge { note } => {
            conn.execute(
                "UPDATE incidents SET state = 'acknowledged', acknowledged_ms = ?2 WHERE id = ?1",
                params![id, now_ms],
            )?;
            ("acknowledged", json!({"note": note}))
        }
        Request::Assign { assignee } => {
            conn.execute(
                "UPDATE incidents SET assignee = ?2 WHERE id = ?1",
                params![id, assignee],
            )?;
            (
                "assigned",
                json!({"assignee": assignee, "previous": inc.assignee}),
            )
        }
        Request::Comment { text } => ("commented", json!({"text": text})),
        Request::Resolve { code, note } => {
            conn.execute(
                "UPDATE incidents SET state = 'resolved', resolved_ms = ?2, resolved_by = ?3,
                    resolution_code = ?4, resolution_note = ?5, flapping = 0
                 WHERE id = ?1",
                params![id, now_ms, actor, code, note],
            )?;
            ("resolved", json!({"code": code, "note": note}))
        }
        Request::Close { note } => {
            conn.execute(
                "UPDATE incidents SET state = 'closed', closed_ms = ?2 WHERE id = ?1",
                params![id, now_ms],
            )?;
            ("closed", json!({"note": note}))
        }
    };
    let event_id = add_event(conn, id, now_ms, kind, actor, &detail)?;
    let incident = get(conn, id)?.ok_or(TransitionError::NotFound(id))?;
    Ok(Transitioned {
        incident,
        event_id,
        before: inc.state,
    })
}

/// Gives the incidents of `agent` that have no CI yet the id of their CI, now that the CMDB
/// holds it (an incident opened on a host's first samples, before its inventory arrived).
/// Returns how many changed.
pub(super) fn set_due(
    conn: &Connection,
    id: i64,
    response_due_ms: Option<i64>,
    resolution_due_ms: Option<i64>,
    sla: Option<&str>,
) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "UPDATE incidents SET response_due_ms = ?2, resolution_due_ms = ?3, targets_sla = ?4
         WHERE id = ?1",
    )?
    .execute(params![id, response_due_ms, resolution_due_ms, sla])?;
    Ok(())
}

/// Raises the level of the `target` clock (`response` / `resolution`); never lowers it.
pub(super) fn set_level(
    conn: &Connection,
    id: i64,
    target: &str,
    percent: u8,
) -> rusqlite::Result<()> {
    let sql = if target == "response" {
        "UPDATE incidents SET response_level = max(response_level, ?2) WHERE id = ?1"
    } else {
        "UPDATE incidents SET resolution_level = max(resolution_level, ?2) WHERE id = ?1"
    };
    conn.prepare_cached(sql)?.execute(params![id, percent])?;
    Ok(())
}

pub(super) fn attach_cis(conn: &Connection, agent: &str) -> rusqlite::Result<usize> {
    conn.prepare_cached(
        "UPDATE incidents SET ci_id = (
             SELECT c.id FROM cis c
             WHERE c.agent_id = incidents.agent_id AND c.type = incidents.ci_type
                 AND c.key = incidents.ci_key AND c.state != 'retired')
         WHERE agent_id = ?1 AND ci_id IS NULL AND ci_type != 'check' AND ci_type != 'alert'
             AND EXISTS (SELECT 1 FROM cis c
                 WHERE c.agent_id = incidents.agent_id AND c.type = incidents.ci_type
                     AND c.key = incidents.ci_key AND c.state != 'retired')",
    )?
    .execute([agent])
}
