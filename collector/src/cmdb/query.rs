//! The read side of the CMDB for the API: CI lists with filters and paging, one CI, relation
//! graphs (breadth-first, both directions), history of a CI, the changes feed across the CMDB,
//! and the whole CMDB for export. Manual data (the API's writes) is in [`manual`].
//!
//! Everything reads `ci_view` (effective `last_seen_ms`, the host's `duplicate_of`) joined with
//! `agents` for the host name, with one statement per request (per BFS level for graphs): never
//! one query per row. Filters are bound parameters; the only text spliced into SQL is the list of
//! `?` placeholders.
//!
//! This module must never: write to the store (see [`manual`]), build SQL from caller text, or
//! panic on a row it reads back (a corrupt `attrs`/`manual_attrs`/`state` is an error; a history
//! value that is not JSON is returned as a string, since history is display data).

pub mod manual;

#[cfg(test)]
mod tests;

use std::collections::{BTreeSet, HashSet};

use rusqlite::types::Value as SqlValue;
use rusqlite::{params, params_from_iter, Connection, OptionalExtension, Row};
use serde_json::Value;

pub use manual::{Manual, ManualPatch};

use super::CiState;
use crate::store::{Db, StoreError};

/// Page size when the caller gives none.
pub const DEFAULT_LIMIT: u32 = 100;
/// Largest page a caller may ask for.
pub const MAX_LIMIT: u32 = 1000;
/// Deepest relation graph a caller may ask for.
pub const MAX_DEPTH: u32 = 5;
/// A relation graph stops growing (and says `truncated`) after this many edges.
pub const MAX_GRAPH_EDGES: usize = 10_000;

/// One CI as the API shows it (all of `ci_view` plus the host name).
#[derive(Debug, Clone, PartialEq)]
pub struct CiRecord {
    pub id: i64,
    pub ci_type: String,
    pub key: String,
    pub name: String,
    /// Owning agent; `None` for CIs made through the API.
    pub agent_id: Option<String>,
    /// The owning agent's hostname.
    pub host: Option<String>,
    /// Discovered (or, for API CIs, API-written) attributes: a JSON object.
    pub attrs: Value,
    pub manual: Manual,
    /// `discovery` or `api`.
    pub source: String,
    pub state: CiState,
    pub first_seen_ms: i64,
    pub last_seen_ms: i64,
    pub retired_at_ms: Option<i64>,
    pub duplicate_of: Option<String>,
}

/// A CI named in a graph or a change: enough to show and link it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CiSummary {
    pub id: i64,
    pub ci_type: String,
    pub key: String,
    pub name: String,
    pub agent_id: Option<String>,
    pub host: Option<String>,
    pub state: CiState,
}

/// Which CIs a list returns; every given condition must hold.
#[derive(Debug, Clone, Default)]
pub struct CiFilter {
    /// Any of these types (empty: all).
    pub types: Vec<String>,
    /// Every `(key, value)` must be an effective tag of the CI: its own manual tag, else its
    /// own discovered `tags` attribute, else its host's manual tag, else its host's discovered
    /// `tags` (so a host's `role=web` covers its filesystems and packages too).
    pub tags: Vec<(String, String)>,
    /// Hostname glob (case-insensitive), or an exact agent id.
    pub host: Option<glob::Pattern>,
    /// Any of these states (empty: all).
    pub states: Vec<CiState>,
    /// Case-insensitive substring of the name, key, attributes or manual attributes.
    pub text: Option<String>,
}

/// A page of history, newest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryPage {
    /// Only rows at or after this time (ms).
    pub since_ms: Option<i64>,
    /// Only rows older than history row `before` (the cursor a previous page returned).
    pub before: Option<i64>,
    pub limit: u32,
}

/// One history row, values decoded from their JSON text.
#[derive(Debug, Clone, PartialEq)]
pub struct HistoryRecord {
    pub id: i64,
    pub ci_id: i64,
    pub ts_ms: i64,
    pub attribute: String,
    pub change: String,
    pub old_value: Option<Value>,
    pub new_value: Option<Value>,
    pub source: String,
}

/// Which way relations are followed from the root of a graph.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// `root -> ...`
    Out,
    /// `... -> root`
    In,
    Both,
}

impl Direction {
    pub fn parse(s: &str) -> Option<Direction> {
        match s {
            "out" => Some(Direction::Out),
            "in" => Some(Direction::In),
            "both" => Some(Direction::Both),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Out => "out",
            Direction::In => "in",
            Direction::Both => "both",
        }
    }
}

/// A relation found at `depth` hops from the root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Edge {
    pub from: i64,
    pub kind: String,
    pub to: i64,
    pub depth: u32,
    pub source: String,
}

/// The relations around a CI and every CI they touch (the root included).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Graph {
    /// By depth, then `(from, kind, to)`.
    pub edges: Vec<Edge>,
    /// By id.
    pub cis: Vec<CiSummary>,
    /// [`MAX_GRAPH_EDGES`] was reached: deeper edges were not followed.
    pub truncated: bool,
}

/// One row of `relations`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelationRecord {
    pub from: i64,
    pub kind: String,
    pub to: i64,
    pub source: String,
    pub first_seen_ms: i64,
}

const CI_COLUMNS: &str = "c.id, c.type, c.key, c.name, c.agent_id, a.hostname, c.attrs, \
     c.manual_attrs, c.source, c.state, c.first_seen_ms, c.last_seen_ms, c.retired_at_ms, \
     c.duplicate_of";

const CI_FROM: &str = "FROM ci_view c LEFT JOIN agents a ON a.id = c.agent_id";

fn corrupt(idx: usize, e: impl std::error::Error + Send + Sync + 'static) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(idx, rusqlite::types::Type::Text, Box::new(e))
}

fn state_at(row: &Row<'_>, idx: usize) -> rusqlite::Result<CiState> {
    let s: String = row.get(idx)?;
    CiState::parse(&s).map_err(|e| corrupt(idx, e))
}

fn ci_record(row: &Row<'_>) -> rusqlite::Result<CiRecord> {
    let attrs: String = row.get(6)?;
    let attrs: Value = serde_json::from_str(&attrs).map_err(|e| corrupt(6, e))?;
    let manual: Option<String> = row.get(7)?;
    let manual = match manual {
        Some(text) => serde_json::from_str(&text).map_err(|e| corrupt(7, e))?,
        None => Manual::default(),
    };
    Ok(CiRecord {
        id: row.get(0)?,
        ci_type: row.get(1)?,
        key: row.get(2)?,
        name: row.get(3)?,
        agent_id: row.get(4)?,
        host: row.get(5)?,
        attrs,
        manual,
        source: row.get(8)?,
        state: state_at(row, 9)?,
        first_seen_ms: row.get(10)?,
        last_seen_ms: row.get(11)?,
        retired_at_ms: row.get(12)?,
        duplicate_of: row.get(13)?,
    })
}

const SUMMARY_COLUMNS: &str = "c.id, c.type, c.key, c.name, c.agent_id, a.hostname, c.state";

fn ci_summary(row: &Row<'_>) -> rusqlite::Result<CiSummary> {
    Ok(CiSummary {
        id: row.get(0)?,
        ci_type: row.get(1)?,
        key: row.get(2)?,
        name: row.get(3)?,
        agent_id: row.get(4)?,
        host: row.get(5)?,
        state: state_at(row, 6)?,
    })
}

/// A JSON value stored as text; text that is not JSON is shown as the string it is.
fn decode_value(text: Option<String>) -> Option<Value> {
    text.map(|t| serde_json::from_str(&t).unwrap_or(Value::String(t)))
}

fn history_record(row: &Row<'_>) -> rusqlite::Result<HistoryRecord> {
    Ok(HistoryRecord {
        id: row.get(0)?,
        ci_id: row.get(1)?,
        ts_ms: row.get(2)?,
        attribute: row.get(3)?,
        change: row.get(4)?,
        old_value: decode_value(row.get(5)?),
        new_value: decode_value(row.get(6)?),
        source: row.get(7)?,
    })
}

/// A JSON array of ids or strings, bound as one parameter and read with `json_each`.
fn json_list<T: serde::Serialize>(items: &[T]) -> SqlValue {
    SqlValue::Text(serde_json::to_string(items).unwrap_or_else(|_| "[]".into()))
}

/// `LIKE` pattern for a substring, with `\` escaping `%`, `_` and itself.
fn like_pattern(text: &str) -> String {
    let mut p = String::with_capacity(text.len() + 2);
    p.push('%');
    for ch in text.chars() {
        if matches!(ch, '%' | '_' | '\\') {
            p.push('\\');
        }
        p.push(ch);
    }
    p.push('%');
    p
}

/// JSON path of tag `key` in a `tags` object. The key is a quoted label: callers reject keys
/// with `"` (see [`manual::valid_tag_key`]), so it cannot end the label early.
fn tag_path(key: &str) -> String {
    format!("$.tags.\"{key}\"")
}

/// The agents whose hostname matches `pattern` (case-insensitive) or whose id is the pattern.
pub fn matching_agents(
    conn: &Connection,
    pattern: &glob::Pattern,
) -> Result<Vec<String>, StoreError> {
    let opts = glob::MatchOptions {
        case_sensitive: false,
        require_literal_separator: false,
        require_literal_leading_dot: false,
    };
    let mut stmt = conn.prepare_cached("SELECT id, hostname FROM agents ORDER BY id")?;
    let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
    let mut out = Vec::new();
    for row in rows {
        let (id, hostname) = row?;
        if pattern.matches_with(&hostname, opts) || id == pattern.as_str() {
            out.push(id);
        }
    }
    Ok(out)
}

/// A WHERE clause under construction: conditions joined by AND, numbered parameters.
#[derive(Default)]
struct Where {
    conds: Vec<String>,
    params: Vec<SqlValue>,
}

impl Where {
    /// Adds a parameter and returns its placeholder (`?N`).
    fn param(&mut self, v: SqlValue) -> String {
        self.params.push(v);
        format!("?{}", self.params.len())
    }

    fn placeholders(&mut self, values: impl IntoIterator<Item = SqlValue>) -> String {
        let ps: Vec<String> = values.into_iter().map(|v| self.param(v)).collect();
        ps.join(", ")
    }

    fn sql(&self) -> String {
        if self.conds.is_empty() {
            String::new()
        } else {
            format!(" WHERE {}", self.conds.join(" AND "))
        }
    }
}

/// Conditions on `c` (a CI row) for `types` and `host`; shared by lists and the feed.
/// `by_time`: the query must be driven by the history time index, so these conditions are
/// written with SQLite's no-op unary `+`, which keeps the planner from starting at the CIs
/// (every package of every host) and sorting their history afterwards.
fn type_and_host(
    conn: &Connection,
    w: &mut Where,
    types: &[String],
    host: Option<&glob::Pattern>,
    by_time: bool,
) -> Result<(), StoreError> {
    let plus = if by_time { "+" } else { "" };
    if !types.is_empty() {
        let ps = w.placeholders(types.iter().map(|t| SqlValue::Text(t.clone())));
        w.conds.push(format!("{plus}c.type IN ({ps})"));
    }
    if let Some(pattern) = host {
        let agents = matching_agents(conn, pattern)?;
        let p = w.param(json_list(&agents));
        w.conds.push(format!(
            "{plus}c.agent_id IN (SELECT value FROM json_each({p}))"
        ));
    }
    Ok(())
}

/// Where a page of CIs starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Paging {
    /// Skips this many matches: the cost grows with the offset.
    Offset(u64),
    /// The matches with an id above this one (the last id of the previous page): every page
    /// costs the same, and a one-type list walks `cis_type_id` from there.
    After(i64),
}

/// The statements of one list request: the count (of every match, whatever the paging) and
/// the page, each with its parameters.
struct ListSql {
    count: String,
    count_params: Vec<SqlValue>,
    page: String,
    page_params: Vec<SqlValue>,
}

/// Builds the statements of [`list_cis`].
///
/// The count reads `cis`, not `ci_view`: the view's LEFT JOINs are on unique keys and never
/// change how many rows match, and every filtered column is a `cis` column, so the count of a
/// type is a covering scan of `cis_type_id` (or `cis_type_state`) instead of two joins per row.
/// The page is by id: for one type (with or without a state) the planner walks `cis_type_id`
/// or `cis_type_state` in id order and stops at the limit; several types are sorted.
fn list_sql(
    conn: &Connection,
    filter: &CiFilter,
    limit: u32,
    paging: Paging,
) -> Result<ListSql, StoreError> {
    let mut w = Where::default();
    type_and_host(conn, &mut w, &filter.types, filter.host.as_ref(), false)?;
    if !filter.states.is_empty() {
        let ps = w.placeholders(
            filter
                .states
                .iter()
                .map(|s| SqlValue::Text(s.as_str().to_owned())),
        );
        w.conds.push(format!("c.state IN ({ps})"));
    }
    for (k, v) in &filter.tags {
        let p = w.param(SqlValue::Text(tag_path(k)));
        let v = w.param(SqlValue::Text(v.clone()));
        w.conds.push(format!(
            "CAST(COALESCE(json_extract(c.manual_attrs, {p}), json_extract(c.attrs, {p}),
                           json_extract(h.manual_attrs, {p}), json_extract(h.attrs, {p}))
                  AS TEXT) = {v}"
        ));
    }
    if let Some(text) = &filter.text {
        let p = w.param(SqlValue::Text(like_pattern(text)));
        w.conds.push(format!(
            "(c.name LIKE {p} ESCAPE '\\' OR c.key LIKE {p} ESCAPE '\\'
              OR c.attrs LIKE {p} ESCAPE '\\' OR c.manual_attrs LIKE {p} ESCAPE '\\')"
        ));
    }
    let host_join = if filter.tags.is_empty() {
        ""
    } else {
        " LEFT JOIN cis h ON h.agent_id = c.agent_id AND h.type = 'host' AND h.key = 'host'"
    };
    let count = format!("SELECT count(*) FROM cis c{host_join}{}", w.sql());
    let count_params = w.params.clone();
    let tail = match paging {
        Paging::Offset(offset) => {
            let lim = w.param(SqlValue::Integer(i64::from(limit)));
            let off = w.param(SqlValue::Integer(i64::try_from(offset).unwrap_or(i64::MAX)));
            format!("ORDER BY c.id LIMIT {lim} OFFSET {off}")
        }
        Paging::After(after) => {
            let p = w.param(SqlValue::Integer(after));
            w.conds.push(format!("c.id > {p}"));
            let lim = w.param(SqlValue::Integer(i64::from(limit)));
            format!("ORDER BY c.id LIMIT {lim}")
        }
    };
    let page = format!("SELECT {CI_COLUMNS} {CI_FROM}{host_join}{} {tail}", w.sql());
    Ok(ListSql {
        count,
        count_params,
        page,
        page_params: w.params,
    })
}

/// A page of CIs matching `filter`, by id, and how many match in all (whatever the paging).
pub fn list_cis(
    db: &Db,
    filter: &CiFilter,
    limit: u32,
    paging: Paging,
) -> Result<(Vec<CiRecord>, u64), StoreError> {
    let conn = db.conn();
    let q = list_sql(conn, filter, limit, paging)?;
    let total: i64 = conn.query_row(&q.count, params_from_iter(&q.count_params), |r| r.get(0))?;
    let mut stmt = conn.prepare(&q.page)?;
    let items = stmt
        .query_map(params_from_iter(&q.page_params), ci_record)?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok((items, u64::try_from(total).unwrap_or(0)))
}

/// One CI by id.
pub fn get_ci(db: &Db, id: i64) -> Result<Option<CiRecord>, StoreError> {
    let sql = format!("SELECT {CI_COLUMNS} {CI_FROM} WHERE c.id = ?1");
    Ok(db
        .conn()
        .prepare_cached(&sql)?
        .query_row([id], ci_record)
        .optional()?)
}

/// `(outgoing, incoming)` relation counts of a CI.
pub fn relation_counts(db: &Db, id: i64) -> Result<(u64, u64), StoreError> {
    let (out, inc): (i64, i64) = db
        .conn()
        .prepare_cached(
            "SELECT (SELECT count(*) FROM relations WHERE from_ci = ?1),
                (SELECT count(*) FROM relations WHERE to_ci = ?1)",
        )?
        .query_row([id], |r| Ok((r.get(0)?, r.get(1)?)))?;
    Ok((
        u64::try_from(out).unwrap_or(0),
        u64::try_from(inc).unwrap_or(0),
    ))
}

/// Whether CI `id` exists.
pub fn ci_exists(db: &Db, id: i64) -> Result<bool, StoreError> {
    Ok(db
        .conn()
        .prepare_cached("SELECT 1 FROM cis WHERE id = ?1")?
        .exists([id])?)
}

/// Summaries of the CIs in `ids`, by id.
pub fn summaries(conn: &Connection, ids: &[i64]) -> Result<Vec<CiSummary>, StoreError> {
    let sql = format!(
        "SELECT {SUMMARY_COLUMNS} FROM cis c LEFT JOIN agents a ON a.id = c.agent_id
         WHERE c.id IN (SELECT value FROM json_each(?1)) ORDER BY c.id"
    );
    let mut stmt = conn.prepare_cached(&sql)?;
    let rows = stmt
        .query_map([json_list(ids)], ci_summary)?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(rows)
}

/// The relations within `depth` hops of `root` (breadth-first; each CI is expanded once, so
/// cycles end), following `direction`. One query per level and direction.
pub fn relation_graph(
    db: &Db,
    root: i64,
    depth: u32,
    direction: Direction,
) -> Result<Graph, StoreError> {
    let conn = db.conn();
    let mut visited: HashSet<i64> = HashSet::from([root]);
    let mut seen: HashSet<(i64, String, i64)> = HashSet::new();
    let mut frontier = vec![root];
    let mut edges: Vec<Edge> = Vec::new();
    let mut truncated = false;
    let mut queries: Vec<&str> = Vec::new();
    if direction != Direction::In {
        queries.push(
            "SELECT from_ci, kind, to_ci, source FROM relations
             WHERE from_ci IN (SELECT value FROM json_each(?1))",
        );
    }
    if direction != Direction::Out {
        queries.push(
            "SELECT from_ci, kind, to_ci, source FROM relations
             WHERE to_ci IN (SELECT value FROM json_each(?1))",
        );
    }
    'levels: for level in 1..=depth {
        if frontier.is_empty() {
            break;
        }
        let list = json_list(&frontier);
        let mut found: BTreeSet<(i64, String, i64, String)> = BTreeSet::new();
        for sql in &queries {
            let mut stmt = conn.prepare_cached(sql)?;
            let rows = stmt.query_map([&list], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
            })?;
            for row in rows {
                found.insert(row?);
            }
        }
        let mut next = Vec::new();
        for (from, kind, to, source) in found {
            if !seen.insert((from, kind.clone(), to)) {
                continue;
            }
            if edges.len() >= MAX_GRAPH_EDGES {
                truncated = true;
                break 'levels;
            }
            for end in [from, to] {
                if visited.insert(end) {
                    next.push(end);
                }
            }
            edges.push(Edge {
                from,
                kind,
                to,
                depth: level,
                source,
            });
        }
        frontier = next;
    }
    let mut ids: Vec<i64> = visited.into_iter().collect();
    ids.sort_unstable();
    Ok(Graph {
        edges,
        cis: summaries(conn, &ids)?,
        truncated,
    })
}

/// History of CI `ci_id`, newest first: at most `page.limit + 1` rows (one more than asked, so
/// the caller knows whether another page follows).
pub fn history(db: &Db, ci_id: i64, page: &HistoryPage) -> Result<Vec<HistoryRecord>, StoreError> {
    // The CI's rows are found along its chain (`super::history`), then filtered and ordered.
    let mut stmt = db.conn().prepare_cached(
        "WITH RECURSIVE chain(id, n) AS (
             SELECT last_history_id, 1 FROM cis WHERE id = ?1 AND last_history_id IS NOT NULL
             UNION ALL
             SELECT h.prev_id, chain.n + 1 FROM chain JOIN ci_history h ON h.id = chain.id
             WHERE h.prev_id IS NOT NULL AND chain.n < ?5
         )
         SELECT h.id, h.ci_id, h.ts_ms, h.attribute, h.change, h.old_value, h.new_value, h.source
         FROM chain JOIN ci_history h ON h.id = chain.id
         WHERE h.ci_id = ?1 AND (?2 IS NULL OR h.ts_ms >= ?2)
           AND (?3 IS NULL OR (h.ts_ms, h.id) < (SELECT ts_ms, id FROM ci_history WHERE id = ?3))
         ORDER BY h.ts_ms DESC, h.id DESC LIMIT ?4",
    )?;
    let rows = stmt
        .query_map(
            params![
                ci_id,
                page.since_ms,
                page.before,
                i64::from(page.limit) + 1,
                super::history::CHAIN_LIMIT
            ],
            history_record,
        )?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(rows)
}

/// The changes feed: history across the CMDB, newest first, with the CI each row is about;
/// at most `page.limit + 1` rows.
pub fn changes(
    db: &Db,
    types: &[String],
    host: Option<&glob::Pattern>,
    page: &HistoryPage,
) -> Result<Vec<(HistoryRecord, CiSummary)>, StoreError> {
    let conn = db.conn();
    let mut w = Where::default();
    type_and_host(conn, &mut w, types, host, true)?;
    if let Some(since) = page.since_ms {
        let p = w.param(SqlValue::Integer(since));
        w.conds.push(format!("h.ts_ms >= {p}"));
    }
    if let Some(before) = page.before {
        let p = w.param(SqlValue::Integer(before));
        w.conds.push(format!(
            "(h.ts_ms, h.id) < (SELECT ts_ms, id FROM ci_history WHERE id = {p})"
        ));
    }
    let lim = w.param(SqlValue::Integer(i64::from(page.limit) + 1));
    let sql = format!(
        "SELECT h.id, h.ci_id, h.ts_ms, h.attribute, h.change, h.old_value, h.new_value,
                h.source, {SUMMARY_COLUMNS}
         FROM ci_history h JOIN cis c ON c.id = h.ci_id LEFT JOIN agents a ON a.id = c.agent_id
         {} ORDER BY h.ts_ms DESC, h.id DESC LIMIT {lim}",
        w.sql()
    );
    let mut stmt = conn.prepare(&sql)?;
    let rows = stmt
        .query_map(params_from_iter(&w.params), |r| {
            let h = history_record(r)?;
            let c = CiSummary {
                id: r.get(8)?,
                ci_type: r.get(9)?,
                key: r.get(10)?,
                name: r.get(11)?,
                agent_id: r.get(12)?,
                host: r.get(13)?,
                state: state_at(r, 14)?,
            };
            Ok((h, c))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(rows)
}

/// One row of an export, in the order [`export`] gives them: every CI, then every relation.
#[derive(Debug, Clone, Copy)]
pub enum ExportRow<'a> {
    Ci(&'a CiRecord),
    Relation(&'a RelationRecord),
}

/// Where the next page of an export starts: after a CI id, after a relation's key, or nowhere.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExportCursor {
    Cis { after: i64 },
    Relations { after: Option<(i64, String, i64)> },
    Done,
}

impl ExportCursor {
    pub const START: ExportCursor = ExportCursor::Cis { after: i64::MIN };
}

/// Up to `limit` rows of the export from `cursor` (every CI by id, then every relation by key),
/// each handed to `on_row` as it is read, in one short read transaction; returns where the next
/// page starts. An export is a series of pages, so no reader holds a transaction (and keeps
/// WAL checkpoints from completing) while it waits for a slow client; each page is consistent
/// in itself, and a row changed between pages appears as it was when its page was read.
pub fn export_page(
    db: &Db,
    cursor: &ExportCursor,
    limit: usize,
    mut on_row: impl FnMut(ExportRow<'_>) -> Result<(), StoreError>,
) -> Result<ExportCursor, StoreError> {
    let conn = db.conn();
    let limit_sql = i64::try_from(limit).unwrap_or(i64::MAX);
    let mut n = 0usize;
    match cursor {
        ExportCursor::Done => Ok(ExportCursor::Done),
        ExportCursor::Cis { after } => {
            let sql =
                format!("SELECT {CI_COLUMNS} {CI_FROM} WHERE c.id > ?1 ORDER BY c.id LIMIT ?2");
            let mut stmt = conn.prepare_cached(&sql)?;
            let mut rows = stmt.query(params![after, limit_sql])?;
            let mut last = *after;
            while let Some(row) = rows.next()? {
                let ci = ci_record(row)?;
                last = ci.id;
                n += 1;
                on_row(ExportRow::Ci(&ci))?;
            }
            Ok(if n < limit {
                ExportCursor::Relations { after: None }
            } else {
                ExportCursor::Cis { after: last }
            })
        }
        ExportCursor::Relations { after } => {
            let (f, k, t) = after.clone().unwrap_or((i64::MIN, String::new(), i64::MIN));
            let mut stmt = conn.prepare_cached(
                "SELECT from_ci, kind, to_ci, source, first_seen_ms FROM relations
                 WHERE (from_ci, kind, to_ci) > (?1, ?2, ?3)
                 ORDER BY from_ci, kind, to_ci LIMIT ?4",
            )?;
            let mut rows = stmt.query(params![f, k, t, limit_sql])?;
            let mut last = None;
            while let Some(r) = rows.next()? {
                let rel = RelationRecord {
                    from: r.get(0)?,
                    kind: r.get(1)?,
                    to: r.get(2)?,
                    source: r.get(3)?,
                    first_seen_ms: r.get(4)?,
                };
                n += 1;
                on_row(ExportRow::Relation(&rel))?;
                last = Some((rel.from, rel.kind, rel.to));
            }
            Ok(match last {
                Some(key) if n >= limit => ExportCursor::Relations { after: Some(key) },
                _ => ExportCursor::Done,
            })
        }
    }
}
