//! The CMDB: reconciles agents' inventory snapshots and deltas into configuration items with
//! stable ids, lifecycle (active -> stale -> retired), typed relations (also across hosts) and an
//! attribute-level change history, in the store's SQLite file.
//!
//! # Tables (schema in `store::MIGRATION_STEPS`, second step)
//! - `cis`: one row per CI, id stable for life. `agent_id` is the owning host (NULL for CIs made
//!   through the API), `attrs` the discovered attributes (JSON object, owned by discovery),
//!   `manual_attrs` the API-owned ones (owner, criticality, tags, vendor), `source` `discovery` |
//!   `api`, `state` `active` | `stale` | `retired`, `first_seen_ms`, `last_seen_ms`,
//!   `retired_at_ms`.
//! - `ci_history`: `(ci_id, ts_ms, attribute, change, old_value, new_value, source)`. `change` is
//!   `added` / `removed` / `state` (attribute [`ALL_ATTRIBUTES`]) or `changed` (one row per
//!   attribute; the display name is the pseudo-attribute [`NAME_ATTRIBUTE`]). Values are JSON
//!   text, NULL when absent. `source` is the agent id, [`SOURCE_COLLECTOR`] for lifecycle
//!   decisions the collector takes, or `api:<token id>` for API writes.
//! - `relations`: `(from_ci, kind, to_ci)` unique, with `source` and `first_seen_ms`. Relations an
//!   agent reports have `source` = its id and are replaced by each snapshot; `depends_on`
//!   relations derived from the wire have `source` = `wire:<client agent id>` ([`wire_source`]).
//! - `inventory_state`: per agent, the stored inventory `version`, `ts_ms` (when the collector
//!   last stored a message of it), `reported_ms` (the agent's discovery time), `machine_id`,
//!   `dmi_uuid`, `duplicate_of`, `stale`.
//! - `connections`: the outbound TCP connections of each agent's last report.
//! - view `ci_view`: `cis` with the effective `last_seen_ms` and the host's `duplicate_of`; what
//!   readers (the API) should query.
//!
//! # Identity rules
//! - A host is its agent: the agent id, bound to the agent's client certificate at enrollment.
//!   The host CI carries `machine_id` (/etc/machine-id) and `dmi_uuid` (DMI product UUID), stored
//!   in `inventory_state`. Two agents are never merged. When an agent reports a machine-id that an
//!   *earlier* active host CI of another, non-revoked agent already has (a cloned VM, or two
//!   agents on one machine), the later agent is flagged: `inventory_state.duplicate_of` = the
//!   earlier agent's id (shown on every CI of that host through `ci_view.duplicate_of`), with a
//!   warning in the log. The DMI UUID is recorded but does not decide (containers share their
//!   host's; a clone gets a new one but keeps the machine-id); without a machine-id there is no
//!   duplicate detection.
//! - A child CI is identified within its host by `(type, key)`; keys per type are documented in
//!   `vigil_shared::inventory::ci_type` (mountpoint, interface name, `name:arch`, `proto:port`...).
//!   CI types this collector does not know are skipped (the `type` label stays bounded), as are
//!   `business_service` CIs from agents (the API owns those).
//!
//! # Lifecycle
//! - New -> `active` (history `added`). A CI missing from a snapshot, or in a delta's `removed`,
//!   becomes `retired` with `retired_at_ms` (history `removed`); reported again, it is `active`
//!   again (history `added`, old value `"retired"`).
//! - [`mark_stale`]: active discovered CIs whose agent has not reported for `stale_after`
//!   (default [`DEFAULT_STALE_AFTER`]) become `stale` (history `state`); the agent's next message
//!   makes them `active` again (history `state`).
//! - Last seen: a report covers every CI of the host, so instead of rewriting every row on each
//!   delta the agent's report time is kept once (`inventory_state.ts_ms`); `cis.last_seen_ms` is
//!   the time of the last change written to the row. A non-retired discovered CI was last seen at
//!   the later of the two (`ci_view.last_seen_ms`); a retired one when it was last reported.
//!
//! # Cross-host dependencies
//! An agent's outbound connection `(remote_ip, remote_port)` yields `from depends_on to` where
//! `to` is a non-retired `listening_service` with key `tcp:<port>` or `tcp6:<port>` of a *target*
//! agent whose bound `address` is a wildcard (`0.0.0.0`, `::`) or equals the remote ip, and
//! `from` is the client's `listening_service` named by the connection's `local_service`, else the
//! client's host CI. Target agents: for a loopback remote ip (127.0.0.0/8, ::1), or one of the
//! client's own addresses (a bridge address every host has), the agents with the client's
//! machine-id (the client itself when it has none); otherwise the agents with a non-retired
//! `ip_address` CI of that address. Recomputed for the client whenever it reports
//! connections, and for every client of a host whose addresses or listening services change.
//!
//! # Cost
//! Each message is one `BEGIN IMMEDIATE` transaction (a concurrent writer waits for the busy
//! timeout instead of failing; see `in_tx` for its sync and checkpoint settings), with cached
//! prepared statements, one SELECT of the agent's CIs per snapshot (one per touched CI for a
//! delta), new CIs, history rows and relations written in multi-row INSERTs (new CI ids are
//! assigned under the write lock), and no write at all for an unchanged CI: last seen is the
//! agent's report time. `examples/cmdb_bench.rs` measures 1,000 hosts x 2,000 CIs. Metrics
//! ([`metrics_for`]) are updated only after the commit.
//!
//! This module must never: merge two agents' CIs, write anything for a delta whose base is not
//! the stored version, panic on what an agent sends or what it reads back (a corrupt row is an
//! error), or let an agent write API-owned data (`manual_attrs`, `business_service` CIs).

mod bulk;
mod deps;
pub mod query;
mod reconcile;
mod stats;

#[cfg(test)]
mod tests;

use std::time::Duration;

use rusqlite::{params, Transaction, TransactionBehavior};
use vigil_shared::proto::{InventoryDeltaMsg, InventorySnapshot};

use crate::store::{Db, StoreError};

pub use stats::metrics_for;

/// Default time without a report after which a host's CIs become `stale`.
pub const DEFAULT_STALE_AFTER: Duration = Duration::from_secs(7 * 24 * 3600);

/// `ci_history.attribute` of rows about the whole CI (`added`, `removed`, `state`).
pub const ALL_ATTRIBUTES: &str = "*";

/// `ci_history.attribute` of a change of the CI's display name (attributes may be called `name`).
pub const NAME_ATTRIBUTE: &str = "_name";

/// `ci_history.source` of lifecycle changes the collector decides (stale marking).
pub const SOURCE_COLLECTOR: &str = "collector";

/// Host CI attribute holding /etc/machine-id.
pub const MACHINE_ID_ATTR: &str = "machine_id";

/// Host CI attribute holding the DMI product UUID.
pub const DMI_UUID_ATTR: &str = "dmi_uuid";

/// `relations.source` of the `depends_on` relations derived from `agent_id`'s connections.
pub fn wire_source(agent_id: &str) -> String {
    format!("wire:{agent_id}")
}

/// Result of applying one inventory message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InventoryOutcome {
    /// Reconciled and committed; acknowledge `version`.
    Stored {
        version: u64,
        added: usize,
        changed: usize,
        removed: usize,
    },
    /// The delta's base is not what the CMDB holds for this agent: ask for a full snapshot.
    Resync { have: Option<u64> },
}

/// Lifecycle state of a CI (`cis.state`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CiState {
    Active,
    Stale,
    Retired,
}

impl CiState {
    pub fn as_str(self) -> &'static str {
        match self {
            CiState::Active => "active",
            CiState::Stale => "stale",
            CiState::Retired => "retired",
        }
    }

    /// Parses a stored state; anything else is a corrupt row.
    pub fn parse(s: &str) -> Result<CiState, StoreError> {
        match s {
            "active" => Ok(CiState::Active),
            "stale" => Ok(CiState::Stale),
            "retired" => Ok(CiState::Retired),
            other => Err(StoreError::Corrupt {
                column: "cis.state",
                value: other.to_owned(),
            }),
        }
    }

    /// The state as a JSON value for `ci_history` (`"active"`).
    fn json(self) -> String {
        format!("\"{}\"", self.as_str())
    }
}

/// WAL size (pages) at which a CMDB commit checkpoints. Bigger than SQLite's default 1,000: a
/// checkpoint costs two fsyncs, and pages that every commit rewrites (table ends, interior pages,
/// `inventory_state`) are copied once per checkpoint. Measured on the 1,000-host benchmark:
/// delta round 1.7 s -> 1.0 s wall, full round 16 s -> 14 s. Other connections keep their own
/// setting.
const CHECKPOINT_PAGES: i64 = 8192;

/// Runs `f` in the one write transaction of a message and commits if it returns `true` with its
/// value (rolls back on `false` or an error).
///
/// The transaction is IMMEDIATE, so the write lock is taken up front and a concurrent writer makes
/// us wait (busy timeout) rather than fail on a lock upgrade. It commits with
/// `synchronous=NORMAL` and [`CHECKPOINT_PAGES`], and restores the connection's settings
/// afterwards. In WAL mode NORMAL skips the fsync of each commit but never corrupts the file; a
/// power loss can only lose the last commits, and an agent sends a full snapshot on every
/// connect (and the collector asks for one when versions disagree), so the CMDB heals itself.
fn in_tx<T>(
    db: &Db,
    f: impl FnOnce(&Transaction<'_>) -> Result<(T, bool), StoreError>,
) -> Result<T, StoreError> {
    let conn = db.conn();
    conn.set_prepared_statement_cache_capacity(64);
    let sync: i64 = conn.pragma_query_value(None, "synchronous", |r| r.get(0))?;
    let checkpoint: i64 = conn.pragma_query_value(None, "wal_autocheckpoint", |r| r.get(0))?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.pragma_update(None, "wal_autocheckpoint", CHECKPOINT_PAGES)?;
    let result: Result<T, StoreError> = (|| {
        let tx = Transaction::new_unchecked(conn, TransactionBehavior::Immediate)?;
        let (out, commit) = f(&tx)?;
        if commit {
            tx.commit()?;
        }
        Ok(out)
    })();
    let restored = conn
        .pragma_update(None, "synchronous", sync)
        .and_then(|()| conn.pragma_update(None, "wal_autocheckpoint", checkpoint));
    let out = result?;
    restored?;
    Ok(out)
}

/// Reconciles a full snapshot from `agent_id` (one transaction).
pub fn apply_snapshot(
    db: &Db,
    agent_id: &str,
    snap: &InventorySnapshot,
    now_ms: i64,
) -> Result<InventoryOutcome, StoreError> {
    // Before the transaction: a first call loads the item counts, which must not include ours.
    let metrics = metrics_for(db)?;
    let (outcome, tally, duplicate) = in_tx(db, |tx| {
        let prev = reconcile::read_state(tx, agent_id)?;
        let mut s = reconcile::Session::new(tx, agent_id, now_ms);
        let outcome = s.snapshot(snap, prev.as_ref())?;
        Ok(((outcome, s.tally, s.duplicate_note), true))
    })?;
    tally.publish(&metrics);
    log_duplicate(agent_id, duplicate);
    Ok(outcome)
}

/// Applies a delta from `agent_id` if its base matches what is stored (one transaction).
pub fn apply_delta(
    db: &Db,
    agent_id: &str,
    msg: &InventoryDeltaMsg,
    now_ms: i64,
) -> Result<InventoryOutcome, StoreError> {
    let metrics = metrics_for(db)?;
    let (outcome, tally, duplicate) = in_tx(db, |tx| {
        let prev = reconcile::read_state(tx, agent_id)?;
        let prev = match prev {
            Some(p) if p.version == msg.base_version => p,
            other => {
                // Rolled back: nothing written.
                let have = other.map(|p| p.version);
                let outcome = InventoryOutcome::Resync { have };
                return Ok(((outcome, reconcile::Tally::default(), None), false));
            }
        };
        let mut s = reconcile::Session::new(tx, agent_id, now_ms);
        let outcome = s.delta(msg, &prev)?;
        Ok(((outcome, s.tally, s.duplicate_note), true))
    })?;
    tally.publish(&metrics);
    log_duplicate(agent_id, duplicate);
    Ok(outcome)
}

fn log_duplicate(agent_id: &str, note: Option<reconcile::DuplicateNote>) {
    if let Some(n) = note {
        tracing::warn!(
            agent = agent_id,
            duplicate_of = %n.other_agent,
            machine_id = %n.machine_id,
            "agent reports the machine-id of another enrolled agent (cloned VM or second agent \
             on one machine); flagged as duplicate, not merged"
        );
    }
}

/// Marks `stale` every active discovered CI whose agent has not reported for `stale_after`
/// (one transaction, history row `state` per CI). Returns how many CIs became stale.
pub fn mark_stale(db: &Db, stale_after: Duration, now_ms: i64) -> Result<usize, StoreError> {
    let metrics = metrics_for(db)?;
    let after_ms = i64::try_from(stale_after.as_millis()).unwrap_or(i64::MAX);
    let cutoff = now_ms.saturating_sub(after_ms);
    let (n, agents, tally) = in_tx(db, |tx| {
        let agents: Vec<String> = {
            let mut stmt = tx.prepare_cached(
                "UPDATE inventory_state SET stale = 1 WHERE ts_ms < ?1 AND stale = 0
                 RETURNING agent_id",
            )?;
            let rows = stmt.query_map([cutoff], |r| r.get(0))?;
            rows.collect::<rusqlite::Result<_>>()?
        };
        let mut tally = reconcile::Tally::default();
        let mut n = 0;
        for agent in &agents {
            let changed: Vec<(i64, String)> = {
                let mut stmt = tx.prepare_cached(
                    "UPDATE cis SET state = 'stale'
                     WHERE agent_id = ?1 AND state = 'active' AND source = 'discovery'
                       AND last_seen_ms < ?2
                     RETURNING id, type",
                )?;
                let rows =
                    stmt.query_map(params![agent, cutoff], |r| Ok((r.get(0)?, r.get(1)?)))?;
                rows.collect::<rusqlite::Result<_>>()?
            };
            let mut hist = tx.prepare_cached(reconcile::INSERT_HISTORY)?;
            for (id, ty) in &changed {
                hist.execute(params![
                    id,
                    now_ms,
                    ALL_ATTRIBUTES,
                    "state",
                    CiState::Active.json(),
                    CiState::Stale.json(),
                    SOURCE_COLLECTOR
                ])?;
                if let Some(t) = reconcile::known_type(ty) {
                    tally.add(t, -1, 1);
                }
            }
            n += changed.len();
        }
        Ok(((n, agents.len(), tally), true))
    })?;
    tally.publish(&metrics);
    if n > 0 {
        tracing::info!(cis = n, agents, "CMDB: CIs became stale");
    }
    Ok(n)
}
