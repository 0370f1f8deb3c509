//! Reconciliation of one inventory message inside its transaction: CI rows, history rows,
//! relations reported by the agent, the host's identity and duplicate flag.
//!
//! Nothing here commits, logs a change as done or touches the metrics: the caller commits, then
//! publishes the [`Tally`]. Never a per-CI SELECT for a snapshot (one SELECT of the agent's CIs).

mod relations;
mod state;

pub(super) use state::{read_state, DuplicateNote, PrevState};

use std::collections::{BTreeMap, HashMap, HashSet};

use rusqlite::types::Value;
use rusqlite::{params, Connection, OptionalExtension};
use vigil_shared::inventory::{ci_type, relation, Attrs, Ci, CiRef, Relation};
use vigil_shared::proto::{InventoryDeltaMsg, InventorySnapshot};

use super::bulk::BulkInsert;
use super::{
    deps, CiState, InventoryOutcome, ALL_ATTRIBUTES, DMI_UUID_ATTR, MACHINE_ID_ATTR, NAME_ATTRIBUTE,
};
use crate::metrics::{cmdb_types, CmdbMetrics};
use crate::store::{seq_to_sql, StoreError};

/// Relation kinds an agent may report (`depends_on` is the collector's to derive).
const AGENT_RELATION_KINDS: &[&str] = &[relation::RUNS, relation::HAS, relation::PROVIDED_BY];

/// The known CI type equal to `t`, as a `'static` label value.
pub(super) fn known_type(t: &str) -> Option<&'static str> {
    cmdb_types().find(|k| *k == t)
}

/// The type of a CI an agent may report: discovered types only.
fn agent_type(t: &str) -> Option<&'static str> {
    ci_type::DISCOVERED.iter().copied().find(|k| *k == t)
}

/// Types whose changes can change cross-host dependencies (addresses, services, machine-id).
fn affects_dependencies(t: &str) -> bool {
    t == ci_type::IP_ADDRESS || t == ci_type::LISTENING_SERVICE || t == ci_type::HOST
}

/// Per-type effect of one transaction on the metrics: active items +/- and history rows.
#[derive(Debug, Default)]
pub(super) struct Tally(BTreeMap<&'static str, (i64, u64)>);

impl Tally {
    pub(super) fn add(&mut self, ci_type: &'static str, items: i64, changes: u64) {
        let e = self.0.entry(ci_type).or_default();
        e.0 += items;
        e.1 += changes;
    }

    /// Applies the tally to the metrics (after the commit).
    pub(super) fn publish(&self, m: &CmdbMetrics) {
        for (t, (items, changes)) in &self.0 {
            m.record(t, *items, *changes);
        }
    }
}

/// A stored CI of the agent.
struct Row {
    id: i64,
    name: String,
    attrs: String,
    state: CiState,
    /// Its newest history row (see [`super::history`]).
    last_history: Option<i64>,
}

/// How a delta touches the host CI.
enum HostChange<'a> {
    Unchanged,
    Set(&'a Ci),
    Removed,
}

/// One message's reconciliation.
pub(super) struct Reconciliation<'c> {
    conn: &'c Connection,
    agent: &'c str,
    now: i64,
    pub tally: Tally,
    pub duplicate_note: Option<DuplicateNote>,
    added: usize,
    changed: usize,
    removed: usize,
    /// Id of the next new CI: assigned here (we hold the write lock) so that new CIs, their
    /// history and relations can be written in multi-row statements.
    next_id: Option<i64>,
    /// Id of the next history row, likewise: each row's `prev_id` is known before it is written.
    next_history_id: Option<i64>,
    /// Newest history row written by this session, per CI (the head of its chain).
    chain: HashMap<i64, i64>,
    new_cis: BulkInsert,
    new_history: BulkInsert,
    new_relations: BulkInsert,
}

/// The next id from `slot`, first read with `first_sql` (the table's highest id + 1; we hold the
/// write lock, so nobody else takes ids meanwhile).
fn next_id(conn: &Connection, slot: &mut Option<i64>, first_sql: &str) -> Result<i64, StoreError> {
    let next = match *slot {
        Some(n) => n,
        None => conn
            .prepare_cached(first_sql)?
            .query_row([], |r| r.get(0))?,
    };
    *slot = Some(next + 1);
    Ok(next)
}

fn json_text(v: &impl serde::Serialize) -> Result<String, StoreError> {
    serde_json::to_string(v).map_err(|e| StoreError::Corrupt {
        column: "cis.attrs",
        value: e.to_string(),
    })
}

fn string_attr(ci: &Ci, name: &str) -> Option<String> {
    ci.attrs
        .get(name)
        .and_then(|v| v.as_str())
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
}

impl<'c> Reconciliation<'c> {
    pub(super) fn new(conn: &'c Connection, agent: &'c str, now: i64) -> Reconciliation<'c> {
        Reconciliation {
            conn,
            agent,
            now,
            tally: Tally::default(),
            duplicate_note: None,
            added: 0,
            changed: 0,
            removed: 0,
            next_id: None,
            next_history_id: None,
            chain: HashMap::new(),
            new_cis: BulkInsert::new(
                "INSERT INTO cis (id, agent_id, type, key, name, attrs, source, state,
                                  first_seen_ms, last_seen_ms, last_history_id)",
                11,
            ),
            new_history: BulkInsert::new(
                "INSERT INTO ci_history
                     (id, ci_id, ts_ms, attribute, change, old_value, new_value, source, prev_id)",
                9,
            ),
            new_relations: BulkInsert::new(
                "INSERT OR IGNORE INTO relations (from_ci, kind, to_ci, source, first_seen_ms)",
                5,
            ),
        }
    }

    fn alloc_id(&mut self) -> Result<i64, StoreError> {
        next_id(
            self.conn,
            &mut self.next_id,
            "SELECT COALESCE(MAX(id), 0) + 1 FROM cis",
        )
    }

    fn alloc_history_id(&mut self) -> Result<i64, StoreError> {
        next_id(
            self.conn,
            &mut self.next_history_id,
            "SELECT COALESCE(MAX(id), 0) + 1 FROM ci_history",
        )
    }

    /// The head of `ci`'s history chain after this session's rows so far.
    fn last_history(&self, row: &Row) -> Option<i64> {
        self.chain.get(&row.id).copied().or(row.last_history)
    }

    /// Writes buffered rows in dependency order: CIs, then their history and relations.
    fn flush(&mut self) -> Result<(), StoreError> {
        self.new_cis.flush(self.conn)?;
        self.new_history.flush(self.conn)?;
        self.new_relations.flush(self.conn)
    }

    fn outcome(&self, version: u64) -> InventoryOutcome {
        InventoryOutcome::Stored {
            version,
            added: self.added,
            changed: self.changed,
            removed: self.removed,
        }
    }

    fn check_agent(&self) -> Result<(), StoreError> {
        let known = self
            .conn
            .prepare_cached("SELECT 1 FROM agents WHERE id = ?1")?
            .exists([self.agent])?;
        if known {
            Ok(())
        } else {
            Err(StoreError::UnknownAgent(self.agent.to_owned()))
        }
    }

    /// Reconciles a full snapshot: everything the agent has, the rest is retired.
    pub(super) fn snapshot(
        &mut self,
        snap: &InventorySnapshot,
        prev: Option<&PrevState>,
    ) -> Result<InventoryOutcome, StoreError> {
        self.check_agent()?;
        let version = seq_to_sql(snap.version)?;
        let prev_seen = prev.map_or(self.now, |p| p.ts_ms);
        let mut existing = self.load_all()?;
        let cis = &snap.inventory.cis;
        // For a repeated identity the last one wins (as `Inventory::canonicalize` does).
        let last: HashMap<(&str, &str), usize> = cis
            .iter()
            .enumerate()
            .map(|(i, c)| ((c.ci_type.as_str(), c.key.as_str()), i))
            .collect();
        let mut ids: HashMap<(&str, &str), i64> = HashMap::with_capacity(cis.len());
        let mut host = None;
        let mut skipped = 0usize;
        for (i, ci) in cis.iter().enumerate() {
            if last.get(&(ci.ci_type.as_str(), ci.key.as_str())) != Some(&i) {
                continue;
            }
            let Some(ty) = agent_type(&ci.ci_type) else {
                skipped += 1;
                continue;
            };
            let row = existing.get_mut(ty).and_then(|m| m.remove(ci.key.as_str()));
            let id = self.put(ci, ty, row.as_ref())?;
            ids.insert((ty, ci.key.as_str()), id);
            if ty == ci_type::HOST && ci.key == ci_type::HOST {
                host = Some(ci);
            }
        }
        if skipped > 0 {
            tracing::debug!(agent = self.agent, skipped, "CIs of unknown types skipped");
        }
        for (ty, rows) in &existing {
            let Some(t) = known_type(ty) else { continue };
            for row in rows.values() {
                if row.state != CiState::Retired {
                    self.retire(t, row, prev_seen)?;
                }
            }
        }
        self.replace_relations(&snap.inventory.relations, &ids)?;
        self.flush()?;
        deps::store_connections(self.conn, self.agent, &snap.inventory.connections)?;
        let machine_id = host.and_then(|h| string_attr(h, MACHINE_ID_ATTR));
        let dmi_uuid = host.and_then(|h| string_attr(h, DMI_UUID_ATTR));
        self.write_state(version, snap.ts_ms, machine_id, dmi_uuid, prev)?;
        deps::recompute_around(self.conn, self.agent, self.now, true, true)?;
        Ok(self.outcome(snap.version))
    }

    /// Applies a delta whose base the caller checked against `prev`.
    pub(super) fn delta(
        &mut self,
        msg: &InventoryDeltaMsg,
        prev: &PrevState,
    ) -> Result<InventoryOutcome, StoreError> {
        self.check_agent()?;
        let version = seq_to_sql(msg.version)?;
        if prev.stale {
            self.revive_all()?;
        }
        let d = &msg.delta;
        let mut net = false;
        let mut host = HostChange::Unchanged;
        for r in &d.removed {
            let Some(ty) = agent_type(&r.ci_type) else {
                continue;
            };
            if let Some(row) = self.load_one(ty, &r.key)? {
                if row.state != CiState::Retired {
                    self.retire(ty, &row, prev.ts_ms)?;
                }
            }
            net |= affects_dependencies(ty);
            if ty == ci_type::HOST && r.key == ci_type::HOST {
                host = HostChange::Removed;
            }
        }
        let mut ids: HashMap<(&str, &str), i64> = HashMap::new();
        // For a repeated identity the last one wins; earlier ones are not written (a new CI is
        // only buffered, so a second INSERT of it would fail).
        let last: HashMap<(&str, &str), usize> = d
            .added
            .iter()
            .chain(&d.changed)
            .enumerate()
            .map(|(i, c)| ((c.ci_type.as_str(), c.key.as_str()), i))
            .collect();
        for (i, ci) in d.added.iter().chain(&d.changed).enumerate() {
            if last.get(&(ci.ci_type.as_str(), ci.key.as_str())) != Some(&i) {
                continue;
            }
            let Some(ty) = agent_type(&ci.ci_type) else {
                continue;
            };
            let row = self.load_one(ty, &ci.key)?;
            let id = self.put(ci, ty, row.as_ref())?;
            ids.insert((ty, ci.key.as_str()), id);
            net |= affects_dependencies(ty);
            if ty == ci_type::HOST && ci.key == ci_type::HOST {
                host = HostChange::Set(ci);
            }
        }
        let del_sql = "DELETE FROM relations
             WHERE from_ci = ?1 AND kind = ?2 AND to_ci = ?3 AND source = ?4";
        for rel in &d.relations_removed {
            if let Some((from, to)) = self.resolve_pair(rel, &ids, true)? {
                self.conn
                    .prepare_cached(del_sql)?
                    .execute(params![from, rel.kind, to, self.agent])?;
            }
        }
        for rel in &d.relations_added {
            if !AGENT_RELATION_KINDS.contains(&rel.kind.as_str()) {
                continue;
            }
            if let Some((from, to)) = self.resolve_pair(rel, &ids, false)? {
                self.insert_relation(from, &rel.kind, to)?;
            }
        }
        self.flush()?;
        if let Some(conns) = &d.connections {
            deps::store_connections(self.conn, self.agent, conns)?;
        }
        let (machine_id, dmi_uuid) = match host {
            HostChange::Set(ci) => (
                string_attr(ci, MACHINE_ID_ATTR),
                string_attr(ci, DMI_UUID_ATTR),
            ),
            HostChange::Removed => (None, None),
            HostChange::Unchanged => (prev.machine_id.clone(), prev.dmi_uuid.clone()),
        };
        self.write_state(version, msg.ts_ms, machine_id, dmi_uuid, Some(prev))?;
        if d.connections.is_some() || net {
            deps::recompute_around(self.conn, self.agent, self.now, true, net)?;
        }
        Ok(self.outcome(msg.version))
    }

    /// Every CI of the agent (retired ones too, to notice reappearance), by type then key.
    fn load_all(&self) -> Result<HashMap<String, HashMap<String, Row>>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT id, type, key, name, attrs, state, last_history_id FROM cis WHERE agent_id = ?1",
        )?;
        let mut rows = stmt.query([self.agent])?;
        let mut out: HashMap<String, HashMap<String, Row>> = HashMap::new();
        while let Some(r) = rows.next()? {
            let ty: String = r.get(1)?;
            let state: String = r.get(5)?;
            let row = Row {
                id: r.get(0)?,
                name: r.get(3)?,
                attrs: r.get(4)?,
                state: CiState::parse(&state)?,
                last_history: r.get(6)?,
            };
            out.entry(ty).or_default().insert(r.get(2)?, row);
        }
        Ok(out)
    }

    fn load_one(&self, ty: &str, key: &str) -> Result<Option<Row>, StoreError> {
        let row = self
            .conn
            .prepare_cached(
                "SELECT id, name, attrs, state, last_history_id FROM cis
                 WHERE agent_id = ?1 AND type = ?2 AND key = ?3",
            )?
            .query_row(params![self.agent, ty, key], |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get::<_, String>(3)?,
                    r.get(4)?,
                ))
            })
            .optional()?;
        row.map(|(id, name, attrs, state, last_history)| {
            Ok(Row {
                id,
                name,
                attrs,
                state: CiState::parse(&state)?,
                last_history,
            })
        })
        .transpose()
    }

    /// Buffers a history row for CI `ci_id` whose chain head before this session was
    /// `stored_last`; returns the row's id (the CI's new head).
    #[allow(clippy::too_many_arguments)] // one row's columns
    fn history(
        &mut self,
        ci_id: i64,
        stored_last: Option<i64>,
        ty: &'static str,
        attribute: &str,
        change: &str,
        old: Option<&str>,
        new: Option<&str>,
    ) -> Result<i64, StoreError> {
        let id = self.alloc_history_id()?;
        self.push_history(id, ci_id, stored_last, ty, attribute, change, old, new)?;
        Ok(id)
    }

    /// [`Reconciliation::history`] with the row's id already allocated.
    #[allow(clippy::too_many_arguments)]
    fn push_history(
        &mut self,
        id: i64,
        ci_id: i64,
        stored_last: Option<i64>,
        ty: &'static str,
        attribute: &str,
        change: &str,
        old: Option<&str>,
        new: Option<&str>,
    ) -> Result<(), StoreError> {
        let prev = self.chain.insert(ci_id, id).or(stored_last);
        let text = |v: Option<&str>| v.map_or(Value::Null, |s| Value::Text(s.to_owned()));
        let full = self.new_history.push([
            Value::Integer(id),
            Value::Integer(ci_id),
            Value::Integer(self.now),
            Value::Text(attribute.to_owned()),
            Value::Text(change.to_owned()),
            text(old),
            text(new),
            Value::Text(self.agent.to_owned()),
            prev.map_or(Value::Null, Value::Integer),
        ]);
        self.tally.add(ty, 0, 1);
        if full {
            self.flush()?;
        }
        Ok(())
    }

    /// Writes `ci` (new, changed, reappearing or unchanged) and returns its id.
    fn put(&mut self, ci: &Ci, ty: &'static str, row: Option<&Row>) -> Result<i64, StoreError> {
        let attrs = json_text(&ci.attrs)?;
        let Some(row) = row else {
            let id = self.alloc_id()?;
            // The CI's first history row ("added") is its chain's head from the start.
            let history_id = self.alloc_history_id()?;
            let full = self.new_cis.push([
                Value::Integer(id),
                Value::Text(self.agent.to_owned()),
                Value::Text(ty.to_owned()),
                Value::Text(ci.key.clone()),
                Value::Text(ci.name.clone()),
                Value::Text(attrs),
                Value::Text("discovery".to_owned()),
                Value::Text(CiState::Active.as_str().to_owned()),
                Value::Integer(self.now),
                Value::Integer(self.now),
                Value::Integer(history_id),
            ]);
            if full {
                self.flush()?;
            }
            self.push_history(
                history_id,
                id,
                None,
                ty,
                ALL_ATTRIBUTES,
                "added",
                None,
                None,
            )?;
            self.tally.add(ty, 1, 0);
            self.added += 1;
            return Ok(id);
        };
        let mut touched = false;
        match row.state {
            CiState::Retired => {
                let old = CiState::Retired.json();
                let last = row.last_history;
                self.history(row.id, last, ty, ALL_ATTRIBUTES, "added", Some(&old), None)?;
                self.tally.add(ty, 1, 0);
                self.added += 1;
                touched = true;
            }
            CiState::Stale => {
                let (old, new) = (CiState::Stale.json(), CiState::Active.json());
                let last = row.last_history;
                self.history(
                    row.id,
                    last,
                    ty,
                    ALL_ATTRIBUTES,
                    "state",
                    Some(&old),
                    Some(&new),
                )?;
                self.tally.add(ty, 1, 0);
                touched = true;
            }
            CiState::Active => {}
        }
        if row.name != ci.name || row.attrs != attrs {
            // Text that differs without a differing attribute (formatting) is rewritten quietly.
            touched = true;
            if self.attribute_history(row, ci, ty)? > 0 && row.state != CiState::Retired {
                self.changed += 1;
            }
        }
        if touched {
            // Only a state change names `state`: SQLite rewrites the `cis_type_state` entry of
            // every row whose UPDATE sets an indexed column, changed or not.
            let sql = if row.state == CiState::Active {
                "UPDATE cis SET name = ?2, attrs = ?3, last_seen_ms = ?4, last_history_id = ?5
                 WHERE id = ?1"
            } else {
                "UPDATE cis SET name = ?2, attrs = ?3, state = 'active', retired_at_ms = NULL,
                     last_seen_ms = ?4, last_history_id = ?5
                 WHERE id = ?1"
            };
            let last = self.last_history(row);
            self.conn
                .prepare_cached(sql)?
                .execute(params![row.id, ci.name, attrs, self.now, last])?;
        }
        Ok(row.id)
    }

    /// One `changed` row per differing attribute (and the name); returns how many.
    fn attribute_history(
        &mut self,
        row: &Row,
        ci: &Ci,
        ty: &'static str,
    ) -> Result<usize, StoreError> {
        let mut n = 0;
        if row.name != ci.name {
            let (old, new) = (json_text(&row.name)?, json_text(&ci.name)?);
            self.history(
                row.id,
                self.last_history(row),
                ty,
                NAME_ATTRIBUTE,
                "changed",
                Some(&old),
                Some(&new),
            )?;
            n += 1;
        }
        // A stored value that does not parse is treated as empty: every attribute is reported
        // as changed from null, and the row is healed by the update.
        let old_attrs: Attrs = serde_json::from_str(&row.attrs).unwrap_or_default();
        let names: std::collections::BTreeSet<&String> =
            old_attrs.keys().chain(ci.attrs.keys()).collect();
        for name in names {
            let (old, new) = (old_attrs.get(name), ci.attrs.get(name));
            if old == new {
                continue;
            }
            let old = old.map(json_text).transpose()?;
            let new = new.map(json_text).transpose()?;
            let last = self.last_history(row);
            self.history(
                row.id,
                last,
                ty,
                name,
                "changed",
                old.as_deref(),
                new.as_deref(),
            )?;
            n += 1;
        }
        Ok(n)
    }

    /// Retires a CI the agent no longer reports; it was last seen in the previous report.
    fn retire(&mut self, ty: &'static str, row: &Row, prev_seen: i64) -> Result<(), StoreError> {
        let last = self.last_history(row);
        let history_id = self.history(row.id, last, ty, ALL_ATTRIBUTES, "removed", None, None)?;
        self.conn
            .prepare_cached(
                "UPDATE cis SET state = 'retired', retired_at_ms = ?2,
                     last_seen_ms = MAX(last_seen_ms, ?3), last_history_id = ?4
                 WHERE id = ?1",
            )?
            .execute(params![row.id, self.now, prev_seen, history_id])?;
        if row.state == CiState::Active {
            self.tally.add(ty, -1, 0);
        }
        self.removed += 1;
        Ok(())
    }

    /// The agent reports again after its CIs went stale: all of them are active again.
    fn revive_all(&mut self) -> Result<(), StoreError> {
        let rows: Vec<(i64, String, Option<i64>)> = {
            let mut stmt = self.conn.prepare_cached(
                "UPDATE cis SET state = 'active', last_seen_ms = ?2
                 WHERE agent_id = ?1 AND state = 'stale'
                 RETURNING id, type, last_history_id",
            )?;
            let rows = stmt.query_map(params![self.agent, self.now], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })?;
            rows.collect::<rusqlite::Result<_>>()?
        };
        let (old, new) = (CiState::Stale.json(), CiState::Active.json());
        for (id, ty, last) in rows {
            if let Some(t) = known_type(&ty) {
                let history_id =
                    self.history(id, last, t, ALL_ATTRIBUTES, "state", Some(&old), Some(&new))?;
                self.conn
                    .prepare_cached("UPDATE cis SET last_history_id = ?2 WHERE id = ?1")?
                    .execute(params![id, history_id])?;
                self.tally.add(t, 1, 0);
            }
        }
        Ok(())
    }
}
