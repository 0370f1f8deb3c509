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
//! - `ci_history`: `(ci_id, ts_ms, attribute, change, old_value, new_value, source, prev_id)`,
//!   each CI's rows chained from `cis.last_history_id` through `prev_id` ([`history`]). `change` is
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
//! Each message is one `BEGIN IMMEDIATE` transaction committed with `synchronous=FULL` (a
//! concurrent writer waits for the busy timeout instead of failing; see `in_reconcile_tx`), or a SAVEPOINT
//! in a transaction shared with other agents' messages ([`apply_batch`], [`GroupCommit`]: one WAL
//! fsync per batch, and the pages every message rewrites, such as table ends, written once).
//! Within it: cached prepared statements, one SELECT of the agent's CIs per snapshot (one per
//! touched CI for a delta), new CIs, history rows and relations written in multi-row INSERTs
//! (new CI ids are assigned under the write lock), no write at all for an unchanged CI (last
//! seen is the agent's report time), and `inventory_state`'s identity columns (indexed) written
//! only when they change. A 1 % delta rewrites ~21 pages per host in a batch (20,940 for 1,000 hosts, measured): one `cis` leaf
//! per changed CI (unavoidable: the rows are scattered) and a share of the table ends. A CI's
//! history is a chain ([`history`]), not an index, which had added ~10 leaves per host.
//! `examples/cmdb_bench.rs` measures 1,000 hosts x 2,000 CIs. Metrics ([`metrics_for`]) are
//! updated only after the commit.
//!
//! This module must never: merge two agents' CIs, write anything for a delta whose base is not
//! the stored version, panic on what an agent sends or what it reads back (a corrupt row is an
//! error), or let an agent write API-owned data (`manual_attrs`, `business_service` CIs).

mod bulk;
mod deps;
mod group;
pub(crate) mod history;
pub mod lookup;
pub mod query;
mod reconcile;
mod stats;

#[cfg(test)]
mod tests;

use std::time::Duration;

use rusqlite::{params, Connection, Transaction, TransactionBehavior};
use vigil_shared::proto::{InventoryDeltaMsg, InventorySnapshot};

use crate::store::{Db, StoreError};

pub use group::{GroupCommit, InventoryMessage};
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
    /// The delta would leave the agent more than `max` CIs (`[agents] max_cis`): nothing of
    /// it is kept.
    TooManyCis { cis: usize, max: usize },
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

/// WAL size (pages) at which a CMDB commit checkpoints when the connection has no checkpointer
/// thread ([`Db::attach_checkpoints`]; the collector attaches one). Bigger than SQLite's default
/// 1,000: a checkpoint costs two fsyncs, and pages that every commit rewrites (table ends,
/// interior pages, `inventory_state`) are copied once per checkpoint. Measured on the 1,000-host
/// benchmark (with NORMAL commits then): delta round 1.7 s -> 1.0 s wall, full round 16 s -> 14
/// s; with FULL commits and group commit, 2,000, 8,192 and 32,768 pages cost the same (~0.3 s of
/// checkpoint per delta round: the pages a round touches are distinct). Other connections keep
/// their own setting.
const CHECKPOINT_PAGES: i64 = 8192;

/// Most messages [`apply_batch`] callers should put in one transaction ([`GroupCommit`] does):
/// enough to share one fsync among a burst of agents, few enough that the write lock is not held
/// for long (a batch of deltas takes milliseconds; of full snapshots, a second or two).
pub const MAX_MESSAGES_PER_TX: usize = 64;

/// Runs `f` in one write transaction and commits if it returns `true` with its value (rolls back
/// on `false` or an error).
///
/// The transaction is IMMEDIATE, so the write lock is taken up front and a concurrent writer makes
/// us wait (busy timeout) rather than fail on a lock upgrade. It commits with the connection's
/// `synchronous=FULL` (the store's setting: a stored message is on disk before it is
/// acknowledged), so callers with several messages at hand share one WAL fsync through
/// [`apply_batch`]. The WAL is then checkpointed by the store's checkpointer thread if the `Db`
/// has one (woken here past its threshold), otherwise in the commit at [`CHECKPOINT_PAGES`]
/// (restoring the connection's checkpoint setting afterwards).
fn in_reconcile_tx<T>(
    db: &Db,
    f: impl FnOnce(&Transaction<'_>) -> Result<(T, bool), StoreError>,
) -> Result<T, StoreError> {
    let conn = db.conn();
    conn.set_prepared_statement_cache_capacity(64);
    // Each message's SAVEPOINT journals the pages it touches; past 64 KiB SQLite spills that
    // journal to a temporary file (pwrite, ~13 % of a delta round's CPU). Keep it in memory: it
    // holds at most the pages one message changes, and is gone at its RELEASE.
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    let run = || -> Result<T, StoreError> {
        let tx = Transaction::new_unchecked(conn, TransactionBehavior::Immediate)?;
        let (out, commit) = f(&tx)?;
        if commit {
            tx.commit()?;
        }
        Ok(out)
    };
    if let Some(checkpoints) = db.checkpoints() {
        let result = run();
        checkpoints.after_commit();
        return result;
    }
    let checkpoint: i64 = conn.pragma_query_value(None, "wal_autocheckpoint", |r| r.get(0))?;
    if checkpoint != CHECKPOINT_PAGES {
        conn.pragma_update(None, "wal_autocheckpoint", CHECKPOINT_PAGES)?;
    }
    let result = run();
    let restored = if checkpoint != CHECKPOINT_PAGES {
        conn.pragma_update(None, "wal_autocheckpoint", checkpoint)
    } else {
        Ok(())
    };
    let out = result?;
    restored?;
    Ok(out)
}

/// One inventory message of an agent, borrowed.
#[derive(Debug, Clone, Copy)]
pub enum InventoryMsg<'a> {
    Snapshot(&'a InventorySnapshot),
    Delta(&'a InventoryDeltaMsg),
}

/// What one message did inside its transaction; published once that has committed.
struct Applied {
    outcome: InventoryOutcome,
    tally: reconcile::Tally,
    duplicate: Option<reconcile::DuplicateNote>,
    /// `false`: nothing may be kept (a delta on the wrong base).
    keep: bool,
}

/// Reconciles one message inside the caller's transaction.
fn apply_in(
    conn: &Connection,
    agent_id: &str,
    msg: InventoryMsg<'_>,
    now_ms: i64,
    max_cis: usize,
) -> Result<Applied, StoreError> {
    let prev = reconcile::read_state(conn, agent_id)?;
    let mut s = reconcile::Reconciliation::new(conn, agent_id, now_ms);
    let outcome = match msg {
        InventoryMsg::Snapshot(snap) => s.snapshot(snap, prev.as_ref())?,
        InventoryMsg::Delta(d) => match prev {
            Some(p) if p.version == d.base_version => {
                let outcome = s.delta(d, &p)?;
                if !d.delta.added.is_empty() {
                    let cis = live_cis(conn, agent_id)?;
                    if cis > max_cis {
                        return Ok(Applied {
                            outcome: InventoryOutcome::TooManyCis { cis, max: max_cis },
                            tally: reconcile::Tally::default(),
                            duplicate: None,
                            keep: false,
                        });
                    }
                }
                outcome
            }
            other => {
                return Ok(Applied {
                    outcome: InventoryOutcome::Resync {
                        have: other.map(|p| p.version),
                    },
                    tally: reconcile::Tally::default(),
                    duplicate: None,
                    keep: false,
                })
            }
        },
    };
    Ok(Applied {
        outcome,
        tally: s.tally,
        duplicate: s.duplicate_note,
        keep: true,
    })
}

/// The agent's CIs that are not retired.
fn live_cis(conn: &Connection, agent_id: &str) -> Result<usize, StoreError> {
    let n: i64 = conn
        .prepare_cached("SELECT COUNT(*) FROM cis WHERE agent_id = ?1 AND state != 'retired'")?
        .query_row([agent_id], |r| r.get(0))?;
    Ok(usize::try_from(n).unwrap_or(usize::MAX))
}

/// Reconciles a full snapshot from `agent_id` (one transaction).
pub fn apply_snapshot(
    db: &Db,
    agent_id: &str,
    snap: &InventorySnapshot,
    now_ms: i64,
) -> Result<InventoryOutcome, StoreError> {
    apply(db, agent_id, InventoryMsg::Snapshot(snap), now_ms)
}

/// Applies a delta from `agent_id` if its base matches what is stored (one transaction; rolled
/// back, nothing written, when it does not).
pub fn apply_delta(
    db: &Db,
    agent_id: &str,
    msg: &InventoryDeltaMsg,
    now_ms: i64,
) -> Result<InventoryOutcome, StoreError> {
    apply(db, agent_id, InventoryMsg::Delta(msg), now_ms)
}

/// Applies one message of `agent_id` in its own transaction.
pub fn apply(
    db: &Db,
    agent_id: &str,
    msg: InventoryMsg<'_>,
    now_ms: i64,
) -> Result<InventoryOutcome, StoreError> {
    // Before the transaction: a first call loads the item counts, which must not include ours.
    let metrics = metrics_for(db)?;
    let applied = in_reconcile_tx(db, |tx| {
        let a = apply_in(tx, agent_id, msg, now_ms, usize::MAX)?;
        let keep = a.keep;
        Ok((a, keep))
    })?;
    applied.tally.publish(&metrics);
    log_duplicate(agent_id, applied.duplicate);
    Ok(applied.outcome)
}

/// Applies several messages `(agent, message, now)` in one transaction, in order (group commit:
/// one WAL fsync, and the pages every message touches are written once). Each message runs in
/// its own SAVEPOINT: one that fails is rolled back alone and gets its error, a delta on the
/// wrong base gets `Resync` with nothing written, and the others are stored. Returns one result
/// per message; `Err` only when the transaction itself failed, and then nothing is stored.
pub fn apply_batch(
    db: &Db,
    msgs: &[(&str, InventoryMsg<'_>, i64)],
) -> Result<Vec<Result<InventoryOutcome, StoreError>>, StoreError> {
    apply_batch_capped(db, msgs, usize::MAX)
}

/// [`apply_batch`], where a delta that would leave its agent more than `max_cis` CIs is kept
/// out ([`InventoryOutcome::TooManyCis`]).
pub fn apply_batch_capped(
    db: &Db,
    msgs: &[(&str, InventoryMsg<'_>, i64)],
    max_cis: usize,
) -> Result<Vec<Result<InventoryOutcome, StoreError>>, StoreError> {
    let metrics = metrics_for(db)?;
    let applied = in_reconcile_tx(db, |tx| {
        let mut out = Vec::with_capacity(msgs.len());
        for (agent, msg, now) in msgs {
            tx.execute_batch("SAVEPOINT inventory_message")?;
            let r = apply_in(tx, agent, *msg, *now, max_cis);
            if tx.is_autocommit() {
                // SQLite rolled the whole transaction back (I/O error, disk full...).
                return Err(r.err().unwrap_or_else(|| {
                    StoreError::Task("the inventory transaction was rolled back".into())
                }));
            }
            tx.execute_batch(if matches!(&r, Ok(a) if a.keep) {
                "RELEASE inventory_message"
            } else {
                "ROLLBACK TO inventory_message; RELEASE inventory_message"
            })?;
            out.push(r);
        }
        Ok((out, true))
    })?;
    Ok(applied
        .into_iter()
        .zip(msgs)
        .map(|(r, (agent, _, _))| {
            r.map(|a| {
                a.tally.publish(&metrics);
                log_duplicate(agent, a.duplicate);
                a.outcome
            })
        })
        .collect())
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
    let (n, agents, tally) = in_reconcile_tx(db, |tx| {
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
            let (active, stale) = (CiState::Active.json(), CiState::Stale.json());
            for (id, ty) in &changed {
                history::append(
                    tx,
                    *id,
                    now_ms,
                    ALL_ATTRIBUTES,
                    "state",
                    Some(&active),
                    Some(&stale),
                    SOURCE_COLLECTOR,
                )?;
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
