//! The incident tables (`incidents`, `incident_events`; schema in `store::MIGRATION_STEPS`):
//! opening and reopening by dedup key, system updates, operator transitions with their legality,
//! the timeline, and reads for the API.
//!
//! Every write function takes the caller's connection inside a transaction the caller owns, so an
//! incident change, its timeline row and its notification outbox rows commit together.
//!
//! This module must never: leave two active (open or acknowledged) incidents for one dedup key
//! (a partial unique index backs this), reopen an incident from a breach that began before the
//! incident's resolution (a late sample out of order), or change a closed incident's state.

use std::collections::BTreeMap;
use std::fmt;

use rusqlite::{params, Connection, OptionalExtension, Row};
use serde_json::json;

use super::rule::{priority, Level};

/// Incident states. `open -> acknowledged -> resolved -> closed`; `resolved -> open` again when
/// the condition recurs within `reopen_within`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum State {
    Open,
    Acknowledged,
    Resolved,
    Closed,
}

impl State {
    pub const ALL: [State; 4] = [
        State::Open,
        State::Acknowledged,
        State::Resolved,
        State::Closed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            State::Open => "open",
            State::Acknowledged => "acknowledged",
            State::Resolved => "resolved",
            State::Closed => "closed",
        }
    }

    pub fn parse(s: &str) -> Option<State> {
        State::ALL.into_iter().find(|st| st.as_str() == s)
    }

    /// Open or acknowledged: the condition is (believed to be) still there.
    pub fn is_active(self) -> bool {
        matches!(self, State::Open | State::Acknowledged)
    }

    /// What an operator may do in this state.
    pub fn allowed(self) -> &'static [Action] {
        use Action::*;
        match self {
            State::Open => &[Acknowledge, Assign, Comment, Resolve],
            State::Acknowledged => &[Assign, Comment, Resolve],
            State::Resolved => &[Comment, Close],
            State::Closed => &[Comment],
        }
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What an operator does to an incident through the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Acknowledge,
    Assign,
    Comment,
    Resolve,
    Close,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Acknowledge => "acknowledge",
            Action::Assign => "assign",
            Action::Comment => "comment",
            Action::Resolve => "resolve",
            Action::Close => "close",
        }
    }
}

/// Where an incident came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Rule,
    Alertmanager,
}

impl Origin {
    pub fn as_str(self) -> &'static str {
        match self {
            Origin::Rule => "rule",
            Origin::Alertmanager => "alertmanager",
        }
    }
}

/// Why an incident does not notify.
#[derive(Debug, Clone, PartialEq)]
pub enum Suppression {
    /// A symptom of `parent` (its host is unreachable, or a `depends_on` dependency is down).
    Parent { parent_id: i64 },
    /// Inside a maintenance window.
    Maintenance { window: String },
}

/// Everything needed to open (or reopen) an incident.
#[derive(Debug, Clone)]
pub struct Opening<'a> {
    pub dedup_key: &'a str,
    pub rule: &'a str,
    pub origin: Origin,
    pub agent_id: Option<&'a str>,
    pub ci_id: Option<i64>,
    pub ci_type: &'a str,
    pub ci_key: &'a str,
    pub title: &'a str,
    pub impact: Level,
    pub urgency: Level,
    pub metric: Option<&'a str>,
    /// `>` or `<`.
    pub op: Option<&'a str>,
    pub threshold: Option<f64>,
    pub value: Option<f64>,
    pub peak: Option<f64>,
    /// When the breach began (the incident's start; may lie in the past for replayed samples).
    pub first_breach_ms: i64,
    /// The sample that completed `for`.
    pub at_ms: i64,
    pub labels: &'a BTreeMap<String, String>,
    pub flapping: bool,
    pub suppression: Option<Suppression>,
    /// A `depends_on` dependency's incident named as the probable cause.
    pub probable_cause_id: Option<i64>,
}

/// What [`open`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opened {
    /// A new incident; `event_id` is its `opened` timeline row.
    New { id: i64, event_id: i64 },
    /// A resolved incident of the same key came back within `reopen_within`.
    Reopened { id: i64, event_id: i64 },
    /// Already active; nothing written.
    Active { id: i64 },
    /// The breach began before the last resolution of this key: a late sample, ignored.
    OutOfOrder { id: i64 },
}

/// An incident row.
#[derive(Debug, Clone, PartialEq)]
pub struct Incident {
    pub id: i64,
    pub dedup_key: String,
    pub rule: String,
    pub origin: String,
    pub agent_id: Option<String>,
    pub hostname: Option<String>,
    pub ci_id: Option<i64>,
    pub ci_type: String,
    pub ci_key: String,
    pub title: String,
    pub state: State,
    pub impact: String,
    pub urgency: String,
    pub priority: u8,
    pub metric: Option<String>,
    /// How a breaching value compares with `threshold`: `>` or `<`.
    pub op: Option<String>,
    pub threshold: Option<f64>,
    pub trigger_value: Option<f64>,
    pub peak_value: Option<f64>,
    pub last_value: Option<f64>,
    pub first_breach_ms: i64,
    pub last_breach_ms: i64,
    pub started_ms: i64,
    pub created_ms: i64,
    pub acknowledged_ms: Option<i64>,
    pub resolved_ms: Option<i64>,
    pub closed_ms: Option<i64>,
    pub assignee: Option<String>,
    pub resolution_code: Option<String>,
    pub resolution_note: Option<String>,
    pub resolved_by: Option<String>,
    pub flapping: bool,
    pub suppressed: Option<String>,
    pub parent_id: Option<i64>,
    pub probable_cause_id: Option<i64>,
    pub maintenance: Option<String>,
    pub reopen_count: i64,
    pub labels: BTreeMap<String, String>,
    /// An `opened` / `reopened` notification was queued for the current episode; only then are
    /// its acknowledge and resolve notified.
    pub announced: bool,
}

impl Incident {
    pub fn is_suppressed(&self) -> bool {
        self.suppressed.is_some()
    }
}

const COLUMNS: &str = "i.id, i.dedup_key, i.rule, i.origin, i.agent_id, a.hostname, i.ci_id, \
    i.ci_type, i.ci_key, i.title, i.state, i.impact, i.urgency, i.priority, i.metric, i.threshold, \
    i.trigger_value, i.peak_value, i.last_value, i.first_breach_ms, i.last_breach_ms, \
    i.started_ms, i.created_ms, i.acknowledged_ms, i.resolved_ms, i.closed_ms, i.assignee, \
    i.resolution_code, i.resolution_note, i.resolved_by, i.flapping, i.suppressed, i.parent_id, \
    i.probable_cause_id, i.maintenance, i.reopen_count, i.labels, i.announced, i.op";

const FROM: &str = "FROM incidents i LEFT JOIN agents a ON a.id = i.agent_id";

fn incident_row(r: &Row<'_>) -> rusqlite::Result<Incident> {
    let state: String = r.get(10)?;
    let labels: String = r.get(36)?;
    Ok(Incident {
        id: r.get(0)?,
        dedup_key: r.get(1)?,
        rule: r.get(2)?,
        origin: r.get(3)?,
        agent_id: r.get(4)?,
        hostname: r.get(5)?,
        ci_id: r.get(6)?,
        ci_type: r.get(7)?,
        ci_key: r.get(8)?,
        title: r.get(9)?,
        state: State::parse(&state).ok_or_else(|| corrupt(10, format!("state {state:?}")))?,
        impact: r.get(11)?,
        urgency: r.get(12)?,
        priority: r.get(13)?,
        metric: r.get(14)?,
        threshold: r.get(15)?,
        trigger_value: r.get(16)?,
        peak_value: r.get(17)?,
        last_value: r.get(18)?,
        first_breach_ms: r.get(19)?,
        last_breach_ms: r.get(20)?,
        started_ms: r.get(21)?,
        created_ms: r.get(22)?,
        acknowledged_ms: r.get(23)?,
        resolved_ms: r.get(24)?,
        closed_ms: r.get(25)?,
        assignee: r.get(26)?,
        resolution_code: r.get(27)?,
        resolution_note: r.get(28)?,
        resolved_by: r.get(29)?,
        flapping: r.get(30)?,
        suppressed: r.get(31)?,
        parent_id: r.get(32)?,
        probable_cause_id: r.get(33)?,
        maintenance: r.get(34)?,
        reopen_count: r.get(35)?,
        labels: serde_json::from_str(&labels).map_err(|e| corrupt(36, e.to_string()))?,
        announced: r.get(37)?,
        op: r.get(38)?,
    })
}

fn corrupt(col: usize, msg: String) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(
        col,
        rusqlite::types::Type::Text,
        format!("corrupt incident row: {msg}").into(),
    )
}

/// Appends a timeline row; returns its id.
pub fn add_event(
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

/// The actor of decisions the collector takes by itself.
pub const SYSTEM: &str = "system";

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
pub fn open(
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
pub fn set_announced(conn: &Connection, id: i64) -> rusqlite::Result<()> {
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
pub fn record_breach(
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
pub fn set_flapping(
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

/// Resolves an active incident as the system (its condition cleared). Returns the timeline row id,
/// or `None` when it was not active (an operator resolved it first).
pub fn auto_resolve(
    conn: &Connection,
    id: i64,
    at_ms: i64,
    value: Option<f64>,
    code: &str,
    now_ms: i64,
) -> rusqlite::Result<Option<i64>> {
    resolve_as(conn, id, at_ms, value, code, SYSTEM, now_ms)
}

/// [`auto_resolve`] on behalf of `by` (e.g. `alertmanager`).
pub fn resolve_as(
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
pub fn suppress_under(
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

/// Lifts the suppression of an active incident (its parent resolved but it persists). Returns the
/// timeline row id when it changed.
pub fn unsuppress(conn: &Connection, id: i64, now_ms: i64) -> rusqlite::Result<Option<i64>> {
    let n = conn
        .prepare_cached(
            "UPDATE incidents SET suppressed = NULL
             WHERE id = ?1 AND state IN ('open', 'acknowledged') AND suppressed IS NOT NULL",
        )?
        .execute([id])?;
    if n == 0 {
        return Ok(None);
    }
    add_event(conn, id, now_ms, "unsuppressed", SYSTEM, &json!({})).map(Some)
}

/// Closes incidents resolved before `resolved_before_ms`; returns their ids.
pub fn auto_close(
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
pub fn close_system(
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

/// An operator's request.
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    Acknowledge { note: Option<String> },
    Assign { assignee: String },
    Comment { text: String },
    Resolve { code: String, note: Option<String> },
    Close { note: Option<String> },
}

impl Request {
    pub fn action(&self) -> Action {
        match self {
            Request::Acknowledge { .. } => Action::Acknowledge,
            Request::Assign { .. } => Action::Assign,
            Request::Comment { .. } => Action::Comment,
            Request::Resolve { .. } => Action::Resolve,
            Request::Close { .. } => Action::Close,
        }
    }
}

/// Why an operator's request was refused.
#[derive(Debug, thiserror::Error)]
pub enum TransitionError {
    #[error("incident {0} not found")]
    NotFound(i64),
    #[error("cannot {action} an incident that is {state}")]
    Illegal {
        action: &'static str,
        state: State,
        allowed: &'static [Action],
    },
    #[error(transparent)]
    Sql(#[from] rusqlite::Error),
}

/// The result of an operator's request: the incident after it and the timeline row.
#[derive(Debug, Clone)]
pub struct Transitioned {
    pub incident: Incident,
    pub event_id: i64,
    /// The state before (for MTTA/MTTR and notifications).
    pub before: State,
}

/// Applies an operator's request by `actor` at `now_ms`, or refuses it (409 with the allowed
/// actions).
pub fn transition(
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

/// One incident.
pub fn get(conn: &Connection, id: i64) -> rusqlite::Result<Option<Incident>> {
    conn.prepare_cached(&format!("SELECT {COLUMNS} {FROM} WHERE i.id = ?1"))?
        .query_row([id], incident_row)
        .optional()
}

/// The active incident of a dedup key.
pub fn active_by_key(conn: &Connection, key: &str) -> rusqlite::Result<Option<Incident>> {
    conn.prepare_cached(&format!(
        "SELECT {COLUMNS} {FROM} WHERE i.dedup_key = ?1 AND i.state IN ('open', 'acknowledged')"
    ))?
    .query_row([key], incident_row)
    .optional()
}

/// Every active incident (the engine restores its series from these at start).
pub fn active(conn: &Connection) -> rusqlite::Result<Vec<Incident>> {
    conn.prepare(&format!(
        "SELECT {COLUMNS} {FROM} WHERE i.state IN ('open', 'acknowledged') ORDER BY i.id"
    ))?
    .query_map([], incident_row)?
    .collect()
}

/// Active incidents whose parent is `parent_id`.
pub fn children(conn: &Connection, parent_id: i64) -> rusqlite::Result<Vec<Incident>> {
    conn.prepare_cached(&format!(
        "SELECT {COLUMNS} {FROM} WHERE i.parent_id = ?1 ORDER BY i.id"
    ))?
    .query_map([parent_id], incident_row)?
    .collect()
}

/// List filters (all optional; every given one must match).
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub states: Vec<State>,
    pub priorities: Vec<u8>,
    pub ci_id: Option<i64>,
    /// Agent id or host name.
    pub host: Option<String>,
    pub rule: Option<String>,
    /// Started at or after.
    pub since_ms: Option<i64>,
    /// `Some(false)`: only notifying incidents; `Some(true)`: only suppressed ones.
    pub suppressed: Option<bool>,
    pub limit: u32,
    pub offset: u32,
}

/// A page of incidents, newest first, and the total that match.
pub fn list(conn: &Connection, f: &Filter) -> rusqlite::Result<(Vec<Incident>, u64)> {
    let mut clauses: Vec<String> = Vec::new();
    let mut args: Vec<rusqlite::types::Value> = Vec::new();
    let arg = |v: rusqlite::types::Value, args: &mut Vec<rusqlite::types::Value>| {
        args.push(v);
        format!("?{}", args.len())
    };
    if !f.states.is_empty() {
        let list: Vec<String> = f
            .states
            .iter()
            .map(|s| arg(s.as_str().to_string().into(), &mut args))
            .collect();
        clauses.push(format!("i.state IN ({})", list.join(", ")));
    }
    if !f.priorities.is_empty() {
        let list: Vec<String> = f
            .priorities
            .iter()
            .map(|&p| arg(i64::from(p).into(), &mut args))
            .collect();
        clauses.push(format!("i.priority IN ({})", list.join(", ")));
    }
    if let Some(ci) = f.ci_id {
        clauses.push(format!("i.ci_id = {}", arg(ci.into(), &mut args)));
    }
    if let Some(h) = &f.host {
        let p = arg(h.clone().into(), &mut args);
        clauses.push(format!("(i.agent_id = {p} OR a.hostname = {p})"));
    }
    if let Some(r) = &f.rule {
        clauses.push(format!("i.rule = {}", arg(r.clone().into(), &mut args)));
    }
    if let Some(s) = f.since_ms {
        clauses.push(format!("i.started_ms >= {}", arg(s.into(), &mut args)));
    }
    match f.suppressed {
        Some(true) => clauses.push("i.suppressed IS NOT NULL".into()),
        Some(false) => clauses.push("i.suppressed IS NULL".into()),
        None => {}
    }
    let filter = if clauses.is_empty() {
        String::new()
    } else {
        format!("WHERE {}", clauses.join(" AND "))
    };
    let total: i64 = conn.query_row(
        &format!("SELECT count(*) {FROM} {filter}"),
        rusqlite::params_from_iter(args.iter()),
        |r| r.get(0),
    )?;
    let lim = arg(i64::from(f.limit).into(), &mut args);
    let off = arg(i64::from(f.offset).into(), &mut args);
    let items = conn
        .prepare(&format!(
            "SELECT {COLUMNS} {FROM} {filter} ORDER BY i.id DESC LIMIT {lim} OFFSET {off}"
        ))?
        .query_map(rusqlite::params_from_iter(args.iter()), incident_row)?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok((items, u64::try_from(total).unwrap_or(0)))
}

/// A timeline row.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub id: i64,
    pub ts_ms: i64,
    pub kind: String,
    pub actor: String,
    pub detail: serde_json::Value,
}

pub fn timeline(conn: &Connection, id: i64) -> rusqlite::Result<Vec<Event>> {
    conn.prepare_cached(
        "SELECT id, ts_ms, kind, actor, detail FROM incident_events WHERE incident_id = ?1
         ORDER BY id",
    )?
    .query_map([id], |r| {
        let detail: String = r.get(4)?;
        Ok(Event {
            id: r.get(0)?,
            ts_ms: r.get(1)?,
            kind: r.get(2)?,
            actor: r.get(3)?,
            detail: serde_json::from_str(&detail).unwrap_or(serde_json::Value::Null),
        })
    })?
    .collect()
}

/// A CMDB change shown on an incident.
#[derive(Debug, Clone, PartialEq)]
pub struct RecentChange {
    pub ts_ms: i64,
    pub ci_id: i64,
    pub ci_type: String,
    pub ci_name: String,
    pub attribute: String,
    pub change: String,
    pub old_value: Option<String>,
    pub new_value: Option<String>,
    pub source: String,
}

/// How far back [`recent_changes`] looks before an incident started.
pub const RECENT_CHANGES_WINDOW_MS: i64 = 24 * 3600 * 1000;
/// At most this many recent changes are listed (newest first).
pub const RECENT_CHANGES_LIMIT: u32 = 200;

/// CMDB changes on the incident's CI and on every CI of its host in the 24 h before it started
/// (package upgrades, new listeners, unit state changes...), newest first.
pub fn recent_changes(conn: &Connection, inc: &Incident) -> rusqlite::Result<Vec<RecentChange>> {
    let from = inc.started_ms.saturating_sub(RECENT_CHANGES_WINDOW_MS);
    let to = inc.started_ms;
    conn.prepare_cached(
        // Each CI's history chain (`cmdb::history`) is walked back from its newest row until
        // a row older than the window: one row for most CIs of the host.
        "WITH RECURSIVE chain(id, n) AS (
             SELECT last_history_id, 1 FROM cis
             WHERE (agent_id = ?1 OR id = ?2) AND last_history_id IS NOT NULL
             UNION ALL
             SELECT h.prev_id, chain.n + 1 FROM chain JOIN ci_history h ON h.id = chain.id
             WHERE h.prev_id IS NOT NULL AND h.ts_ms >= ?3 AND chain.n < ?6
         )
         SELECT h.ts_ms, c.id, c.type, c.name, h.attribute, h.change, h.old_value, h.new_value,
                h.source
         FROM chain JOIN ci_history h ON h.id = chain.id JOIN cis c ON c.id = h.ci_id
         WHERE h.ts_ms BETWEEN ?3 AND ?4
         ORDER BY h.ts_ms DESC, h.id DESC LIMIT ?5",
    )?
    .query_map(
        params![
            inc.agent_id,
            inc.ci_id,
            from,
            to,
            RECENT_CHANGES_LIMIT,
            crate::cmdb::history::CHAIN_LIMIT
        ],
        |r| {
            Ok(RecentChange {
                ts_ms: r.get(0)?,
                ci_id: r.get(1)?,
                ci_type: r.get(2)?,
                ci_name: r.get(3)?,
                attribute: r.get(4)?,
                change: r.get(5)?,
                old_value: r.get(6)?,
                new_value: r.get(7)?,
                source: r.get(8)?,
            })
        },
    )?
    .collect()
}

/// Open incident counts by priority (index 0 = P1), for `vigil_incidents_open{priority}`.
/// Suppressed ones count too: they are open.
pub fn open_counts(conn: &Connection) -> rusqlite::Result<[u64; 5]> {
    let mut out = [0u64; 5];
    let mut stmt = conn.prepare_cached(
        "SELECT priority, count(*) FROM incidents WHERE state IN ('open', 'acknowledged')
         GROUP BY priority",
    )?;
    let rows = stmt.query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)))?;
    for row in rows {
        let (p, n) = row?;
        if let Some(slot) = usize::try_from(p - 1).ok().and_then(|i| out.get_mut(i)) {
            *slot = u64::try_from(n).unwrap_or(0);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: i64 = 60_000;
    const HOUR: i64 = 60 * MIN;

    fn db() -> (tempfile::TempDir, crate::store::Db) {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = crate::store::Db::open(dir.path()).expect("db");
        (dir, db)
    }

    fn opening<'a>(labels: &'a BTreeMap<String, String>, first: i64, at: i64) -> Opening<'a> {
        Opening {
            dedup_key: "check-down|a1|check|app",
            rule: "check-down",
            origin: Origin::Rule,
            agent_id: None,
            ci_id: None,
            ci_type: "check",
            ci_key: "app",
            title: "check-down on h app: check_up 0 < 1",
            impact: Level::Medium,
            urgency: Level::High,
            metric: Some("check_up"),
            op: Some("<"),
            threshold: Some(1.0),
            value: Some(0.0),
            peak: Some(0.0),
            first_breach_ms: first,
            at_ms: at,
            labels,
            flapping: false,
            suppression: None,
            probable_cause_id: None,
        }
    }

    fn state(c: &Connection, id: i64) -> State {
        get(c, id).expect("get").expect("exists").state
    }

    #[test]
    fn one_active_incident_per_key_and_the_reopen_window() {
        let (_d, db) = db();
        let c = db.conn();
        let labels = BTreeMap::new();
        let Opened::New { id, .. } = open(c, &opening(&labels, 0, 10), HOUR, 10).expect("open")
        else {
            panic!("expected a new incident");
        };
        let inc = get(c, id).expect("get").expect("row");
        assert_eq!(
            (inc.priority, inc.state, inc.started_ms),
            (2, State::Open, 0)
        );
        assert_eq!(
            open(c, &opening(&labels, 20, 30), HOUR, 30).expect("open"),
            Opened::Active { id }
        );
        auto_resolve(c, id, 100, Some(1.0), "cleared", 100).expect("resolve");
        assert_eq!(state(c, id), State::Resolved);

        // A breach that began before the resolution is a late sample: ignored.
        assert_eq!(
            open(c, &opening(&labels, 50, 150), HOUR, 150).expect("open"),
            Opened::OutOfOrder { id }
        );
        // Within the window: the same incident reopens.
        let Opened::Reopened { id: again, .. } =
            open(c, &opening(&labels, 200, 30 * MIN), HOUR, 30 * MIN).expect("reopen")
        else {
            panic!("expected a reopen");
        };
        assert_eq!(again, id);
        let inc = get(c, id).expect("get").expect("row");
        assert_eq!(
            (inc.state, inc.reopen_count, inc.resolved_ms),
            (State::Open, 1, None)
        );

        // Past the window: a new incident.
        auto_resolve(c, id, 31 * MIN, Some(1.0), "cleared", 31 * MIN).expect("resolve");
        let later = 31 * MIN + HOUR + 1;
        let Opened::New { id: new, .. } =
            open(c, &opening(&labels, later, later), HOUR, later).expect("open")
        else {
            panic!("expected a new incident after the window");
        };
        assert_ne!(new, id);
        let kinds: Vec<String> = timeline(c, id)
            .expect("timeline")
            .into_iter()
            .map(|e| e.kind)
            .collect();
        assert_eq!(kinds, ["opened", "resolved", "reopened", "resolved"]);
    }

    #[test]
    fn resolved_incidents_close_after_close_after() {
        let (_d, db) = db();
        let c = db.conn();
        let labels = BTreeMap::new();
        let Opened::New { id, .. } = open(c, &opening(&labels, 0, 0), HOUR, 0).expect("open")
        else {
            panic!("new");
        };
        auto_resolve(c, id, 10 * MIN, Some(1.0), "cleared", 10 * MIN).expect("resolve");
        let day = 24 * HOUR;
        assert!(auto_close(c, 10 * MIN + day - day, day)
            .expect("close")
            .is_empty());
        assert_eq!(auto_close(c, 10 * MIN + 1, day).expect("close"), [id]);
        let inc = get(c, id).expect("get").expect("row");
        assert_eq!((inc.state, inc.closed_ms), (State::Closed, Some(day)));
        let last = timeline(c, id).expect("timeline").pop().expect("event");
        assert_eq!(
            (last.kind.as_str(), last.actor.as_str()),
            ("closed", SYSTEM)
        );
    }

    #[test]
    fn a_closed_incident_is_never_reopened() {
        let (_d, db) = db();
        let c = db.conn();
        let labels = BTreeMap::new();
        let Opened::New { id, .. } = open(c, &opening(&labels, 0, 0), HOUR, 0).expect("open")
        else {
            panic!("new");
        };
        transition(
            c,
            id,
            &Request::Resolve {
                code: "solved".into(),
                note: None,
            },
            "api:t",
            10,
        )
        .expect("resolve");
        transition(c, id, &Request::Close { note: None }, "api:t", 20).expect("close");
        assert!(matches!(
            open(c, &opening(&labels, 30, 30), HOUR, 30).expect("open"),
            Opened::New { .. }
        ));
    }

    #[test]
    fn operator_transitions_follow_the_lifecycle() {
        let (_d, db) = db();
        let c = db.conn();
        let labels = BTreeMap::new();
        let Opened::New { id, .. } = open(c, &opening(&labels, 0, 0), HOUR, 0).expect("open")
        else {
            panic!("new");
        };
        let ack = Request::Acknowledge { note: None };
        let resolve = Request::Resolve {
            code: "solved".into(),
            note: Some("restarted".into()),
        };
        let close = Request::Close { note: None };
        let assign = Request::Assign {
            assignee: "dba".into(),
        };
        let comment = Request::Comment { text: "x".into() };
        let illegal = |c: &Connection, req: &Request, want: &[Action]| match transition(
            c, id, req, "api:t", 1,
        ) {
            Err(TransitionError::Illegal { allowed, .. }) => assert_eq!(allowed, want),
            other => panic!("expected a refusal, got {other:?}"),
        };
        illegal(
            c,
            &close,
            &[
                Action::Acknowledge,
                Action::Assign,
                Action::Comment,
                Action::Resolve,
            ],
        );
        let t = transition(c, id, &ack, "api:t", 5).expect("ack");
        assert_eq!(
            (t.before, t.incident.state, t.incident.acknowledged_ms),
            (State::Open, State::Acknowledged, Some(5))
        );
        illegal(c, &ack, &[Action::Assign, Action::Comment, Action::Resolve]);
        assert_eq!(
            transition(c, id, &assign, "api:t", 6)
                .expect("assign")
                .incident
                .assignee
                .as_deref(),
            Some("dba")
        );
        let t = transition(c, id, &resolve, "api:t", 7).expect("resolve");
        assert_eq!(t.incident.resolved_by.as_deref(), Some("api:t"));
        assert_eq!(t.incident.resolution_code.as_deref(), Some("solved"));
        illegal(c, &assign, &[Action::Comment, Action::Close]);
        transition(c, id, &close, "api:t", 8).expect("close");
        illegal(c, &resolve, &[Action::Comment]);
        transition(c, id, &comment, "api:t", 9).expect("comment on a closed incident");
        assert!(matches!(
            transition(c, 999, &ack, "api:t", 1),
            Err(TransitionError::NotFound(999))
        ));
        // The system cannot resolve what an operator closed.
        assert_eq!(
            auto_resolve(c, id, 10, None, "cleared", 10).expect("auto"),
            None
        );
    }

    #[test]
    fn recent_changes_cover_the_ci_and_its_host_in_the_day_before() {
        let (_d, db) = db();
        let c = db.conn();
        for (id, host) in [("a1", "web-1"), ("a2", "db-1")] {
            db.register_agent(
                &crate::store::NewAgent {
                    id: id.into(),
                    hostname: host.into(),
                    version: "t".into(),
                    cert_pin: format!("pin-{id}"),
                    token_id: "t".into(),
                },
                0,
            )
            .expect("agent");
        }
        for (agent, ty, key) in [
            ("a1", "package", "openssl:amd64"),
            ("a1", "listening_service", "tcp:8080"),
            ("a2", "package", "openssl:amd64"),
        ] {
            c.execute(
                "INSERT INTO cis (agent_id, type, key, name, source, first_seen_ms, last_seen_ms)
                 VALUES (?1, ?2, ?3, ?3, 'discovery', 0, 0)",
                params![agent, ty, key],
            )
            .expect("ci");
        }
        let start = 3 * HOUR * 24;
        // (agent, type, ts, attribute, change), written in time order as the CMDB writes them.
        let history = [
            ("a1", "package", start - 25 * HOUR, "version", "changed"),
            ("a1", "listening_service", start - 2 * HOUR, "*", "added"),
            ("a1", "package", start - HOUR, "version", "changed"),
            ("a2", "package", start - HOUR, "version", "changed"),
            ("a1", "package", start + HOUR, "version", "changed"),
        ];
        for (agent, ty, ts, attr, change) in history {
            let ci: i64 = c
                .query_row(
                    "SELECT id FROM cis WHERE agent_id = ?1 AND type = ?2",
                    params![agent, ty],
                    |r| r.get(0),
                )
                .expect("ci");
            crate::cmdb::history::append(
                c,
                ci,
                ts,
                attr,
                change,
                Some("\"3.0.1\""),
                Some("\"3.0.2\""),
                agent,
            )
            .expect("history");
        }
        let labels = BTreeMap::new();
        let mut o = opening(&labels, start, start);
        o.agent_id = Some("a1");
        let Opened::New { id, .. } = open(c, &o, HOUR, start).expect("open") else {
            panic!("new");
        };
        let inc = get(c, id).expect("get").expect("row");
        let got: Vec<(i64, String, String)> = recent_changes(c, &inc)
            .expect("changes")
            .into_iter()
            .map(|r| (start - r.ts_ms, r.ci_type, r.change))
            .collect();
        assert_eq!(
            got,
            [
                (HOUR, "package".to_string(), "changed".to_string()),
                (
                    2 * HOUR,
                    "listening_service".to_string(),
                    "added".to_string()
                ),
            ]
        );
    }

    #[test]
    fn lists_filter_and_count() {
        let (_d, db) = db();
        let c = db.conn();
        let labels = BTreeMap::new();
        let mut o = opening(&labels, 0, 0);
        open(c, &o, HOUR, 0).expect("open");
        o.dedup_key = "other";
        o.rule = "filesystem-full";
        o.impact = Level::Low;
        o.urgency = Level::Low;
        o.first_breach_ms = 100;
        open(c, &o, HOUR, 100).expect("open");
        let page = |f: Filter| list(c, &Filter { limit: 10, ..f }).expect("list");
        assert_eq!(page(Filter::default()).1, 2);
        let (items, total) = page(Filter {
            priorities: vec![5],
            ..Filter::default()
        });
        assert_eq!((total, items[0].rule.as_str()), (1, "filesystem-full"));
        assert_eq!(
            page(Filter {
                since_ms: Some(50),
                ..Filter::default()
            })
            .1,
            1
        );
        assert_eq!(
            page(Filter {
                states: vec![State::Resolved],
                ..Filter::default()
            })
            .1,
            0
        );
        assert_eq!(
            page(Filter {
                rule: Some("check-down".into()),
                ..Filter::default()
            })
            .1,
            1
        );
        assert_eq!(open_counts(c).expect("counts"), [0, 1, 0, 0, 1]);
    }
}
