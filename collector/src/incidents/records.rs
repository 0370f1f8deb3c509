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

use super::rule::Level;

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
    /// When the response and the resolution fall due (`crate::sla::targets`; `None` until the
    /// engine's clockwork first saw the incident).
    pub response_due_ms: Option<i64>,
    pub resolution_due_ms: Option<i64>,
    /// The highest warning level each clock reached: 0, 50, 75 or 100 (breached).
    pub response_level: u8,
    pub resolution_level: u8,
    /// The SLA whose incident targets apply; `None`: the defaults.
    pub targets_sla: Option<String>,
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
    i.probable_cause_id, i.maintenance, i.reopen_count, i.labels, i.announced, i.op, \
    i.response_due_ms, i.resolution_due_ms, i.response_level, i.resolution_level, i.targets_sla";

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
        response_due_ms: r.get(39)?,
        resolution_due_ms: r.get(40)?,
        response_level: r.get(41)?,
        resolution_level: r.get(42)?,
        targets_sla: r.get(43)?,
    })
}

fn corrupt(col: usize, msg: String) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(
        col,
        rusqlite::types::Type::Text,
        format!("corrupt incident row: {msg}").into(),
    )
}

/// The actor of decisions the collector takes by itself.
pub const SYSTEM: &str = "system";

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

/// Active incidents of an agent other than `except` that are not suppressed (the symptoms a
/// new `host-unreachable` incident takes under it).
pub fn host_symptoms(conn: &Connection, agent: &str, except: i64) -> rusqlite::Result<Vec<i64>> {
    conn.prepare_cached(
        "SELECT id FROM incidents WHERE agent_id = ?1 AND id != ?2
            AND state IN ('open', 'acknowledged') AND suppressed IS NULL",
    )?
    .query_map(params![agent, except], |r| r.get(0))?
    .collect()
}

/// The active `host-unreachable` incident of an agent, if any.
pub fn host_unreachable(conn: &Connection, agent: &str) -> rusqlite::Result<Option<i64>> {
    conn.prepare_cached(
        "SELECT id FROM incidents WHERE agent_id = ?1 AND rule = ?2 AND origin = 'rule'
            AND state IN ('open', 'acknowledged')
         ORDER BY id DESC LIMIT 1",
    )?
    .query_row(params![agent, super::builtin::HOST_UNREACHABLE], |r| {
        r.get(0)
    })
    .optional()
}

/// Agents whose `host-unreachable` incident is active (a restarted collector keeps them down
/// until they are heard from).
pub fn agents_with_open_outage(conn: &Connection) -> rusqlite::Result<Vec<String>> {
    conn.prepare_cached(
        "SELECT DISTINCT agent_id FROM incidents WHERE rule = ?1 AND origin = 'rule'
            AND state IN ('open', 'acknowledged') AND agent_id IS NOT NULL",
    )?
    .query_map([super::builtin::HOST_UNREACHABLE], |r| r.get(0))?
    .collect()
}

/// An active incident on one of `targets` (agent, CI id): the agent's `host-unreachable` first,
/// else one on the CI itself (the probable cause of a dependent host's incident).
pub fn active_on_any(
    conn: &Connection,
    targets: &[(String, i64)],
) -> rusqlite::Result<Option<i64>> {
    let mut found: Option<(bool, i64)> = None;
    for (agent, ci) in targets {
        let hit: Option<(bool, i64)> = conn
            .prepare_cached(
                "SELECT rule = ?3, id FROM incidents
                 WHERE agent_id = ?1 AND state IN ('open', 'acknowledged')
                    AND (rule = ?3 OR ci_id = ?2)
                 ORDER BY (rule = ?3) DESC, id LIMIT 1",
            )?
            .query_row(params![agent, ci, super::builtin::HOST_UNREACHABLE], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .optional()?;
        // A host-unreachable beats an incident on a CI; among equals the older one.
        found = match (found, hit) {
            (None, h) => h,
            (f, None) => f,
            (Some(f), Some(h)) => Some(
                if (h.0, std::cmp::Reverse(h.1)) > (f.0, std::cmp::Reverse(f.1)) {
                    h
                } else {
                    f
                },
            ),
        };
    }
    Ok(found.map(|(_, id)| id))
}

/// The active incidents suppressed by a maintenance window (to lift once it no longer covers
/// them).
pub fn maintenance_suppressed(conn: &Connection) -> rusqlite::Result<Vec<Incident>> {
    conn.prepare_cached(&format!(
        "SELECT {COLUMNS} {FROM} WHERE i.suppressed = 'maintenance'
            AND i.state IN ('open', 'acknowledged') ORDER BY i.id"
    ))?
    .query_map([], incident_row)?
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
    /// Words that must all appear (case-insensitively) in the title, rule, CI key or host name.
    pub text: Option<String>,
    /// Most urgent first (priority, then oldest), as the console's board shows them; else
    /// newest first.
    pub by_priority: bool,
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
    // At most 8 words, each a LIKE pattern with its wildcards escaped.
    for word in f.text.iter().flat_map(|t| t.split_whitespace()).take(8) {
        let escaped = word
            .replace('\\', "\\\\")
            .replace('%', "\\%")
            .replace('_', "\\_");
        let p = arg(format!("%{escaped}%").into(), &mut args);
        clauses.push(format!(
            "(i.title LIKE {p} ESCAPE '\\' OR i.rule LIKE {p} ESCAPE '\\' \
             OR i.ci_key LIKE {p} ESCAPE '\\' OR a.hostname LIKE {p} ESCAPE '\\')"
        ));
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
            "SELECT {COLUMNS} {FROM} {filter} ORDER BY {order} LIMIT {lim} OFFSET {off}",
            order = if f.by_priority {
                "i.priority ASC, i.started_ms ASC, i.id ASC"
            } else {
                "i.id DESC"
            }
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

/// What the service-level clockwork needs of one incident.
#[derive(Debug, Clone, PartialEq)]
pub struct ClockRow {
    pub id: i64,
    pub agent_id: Option<String>,
    pub ci_id: Option<i64>,
    pub ci_type: String,
    pub priority: u8,
    pub created_ms: i64,
    pub acknowledged_ms: Option<i64>,
    pub resolved_ms: Option<i64>,
    pub response_due_ms: Option<i64>,
    pub resolution_due_ms: Option<i64>,
    pub response_level: u8,
    pub resolution_level: u8,
    pub targets_sla: Option<String>,
    pub suppressed: bool,
}

/// The incidents whose clocks may still move: every active one, and those resolved after
/// `resolved_after_ms` with the resolution target not yet missed (a resolution that came after
/// its due time, between two rounds of the clockwork, is still a breach).
pub fn clock_rows(conn: &Connection, resolved_after_ms: i64) -> rusqlite::Result<Vec<ClockRow>> {
    const COLS: &str = "id, agent_id, ci_id, ci_type, priority, created_ms, acknowledged_ms, \
        resolved_ms, response_due_ms, resolution_due_ms, response_level, resolution_level, \
        targets_sla, suppressed IS NOT NULL";
    let sql = format!(
        "SELECT {COLS} FROM incidents WHERE state IN ('open', 'acknowledged')
         UNION ALL
         SELECT {COLS} FROM incidents
         WHERE resolution_level < 100 AND resolved_ms > ?1
           AND state IN ('resolved', 'closed')"
    );
    let mut stmt = conn.prepare_cached(&sql)?;
    let rows = stmt.query_map(params![resolved_after_ms], |r| {
        Ok(ClockRow {
            id: r.get(0)?,
            agent_id: r.get(1)?,
            ci_id: r.get(2)?,
            ci_type: r.get(3)?,
            priority: r.get(4)?,
            created_ms: r.get(5)?,
            acknowledged_ms: r.get(6)?,
            resolved_ms: r.get(7)?,
            response_due_ms: r.get(8)?,
            resolution_due_ms: r.get(9)?,
            response_level: r.get(10)?,
            resolution_level: r.get(11)?,
            targets_sla: r.get(12)?,
            suppressed: r.get(13)?,
        })
    })?;
    rows.collect()
}
