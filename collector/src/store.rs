//! The collector's SQLite store: agents, enrollment tokens, API tokens and received metric batches
//! in `<data_dir>/vigil.db`.
//!
//! Two ways in:
//! - [`Db`]: one synchronous connection for administrative reads and writes (CLI commands in
//!   another process, HTTP handlers through [`DbPool`] / `spawn_blocking`).
//! - [`Writer`]: the ingest path. One dedicated thread owns its own connection, drains whatever is
//!   queued into one transaction and answers each caller only **after** the commit, so an ack sent
//!   on the strength of [`AppendOutcome::Stored`] means the batch is on disk.
//!
//! Every connection runs in WAL mode with `synchronous=FULL`, a 5 s busy timeout and foreign keys
//! on, so readers never block the writer and a second process can write while a collector runs.
//! The connections that write a lot (the ingest writer's, the CMDB's) leave WAL checkpoints to
//! the [`Checkpointer`] thread that [`Writer::spawn`] starts, rather than checkpointing inside
//! their commits.
//!
//! This module must never: panic on what it reads back from the file, store a token secret in
//! clear (only SHA-256 hashes), block the async runtime (callers use the [`Writer`] channel or
//! `spawn_blocking`), or report a batch stored before its transaction committed.

mod checkpoint;
mod tokens;
mod writer;

use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension};
use rusqlite_migration::{Migrations, M};

pub use checkpoint::{Checkpointer, Checkpoints, INLINE_PAGES, REQUEST_PAGES};
pub use tokens::{ApiTokenRow, EnrollTokenRow, TokenRefusal, API_TOKEN_PREFIX};
pub use writer::{
    AppendOutcome, Pending, Writer, WriterJoin, MAX_OPS_PER_TX, QUEUE_CAPACITY, SHUTDOWN_DEADLINE,
};

/// File name of the database inside the data directory.
pub const DB_FILE: &str = "vigil.db";

/// Bytes the WAL file is cut back to when it restarts after a checkpoint (64 MiB).
pub const WAL_SIZE_LIMIT: i64 = 64 << 20;

/// How long a connection waits for another writer's lock before failing with "database is locked".
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Schema, oldest first. Never edit a released entry: append a new one.
///
/// `batches` is a rowid table with a `UNIQUE (agent_id, seq)` constraint rather than a
/// `WITHOUT ROWID` table: payloads are kilobytes, and SQLite advises against WITHOUT ROWID for rows
/// larger than ~1/20 of a page (each leaf would hold a handful of rows, every insert would split
/// pages). Measured with 200 agents, 2,000-row transactions, WAL + synchronous=FULL: 66k vs 28k
/// rows/s with 300-byte payloads, 16.5k vs 8.4k with 4 KB. The unique key is still the duplicate
/// filter (`ON CONFLICT DO NOTHING` -> Duplicate).
const MIGRATION_STEPS: &[M<'static>] = &[
    M::up(
        "CREATE TABLE agents (
        id             TEXT PRIMARY KEY NOT NULL,
        hostname       TEXT NOT NULL,
        version        TEXT NOT NULL,
        cert_pin       TEXT NOT NULL,
        enrolled_at_ms INTEGER NOT NULL,
        token_id       TEXT,
        last_seen_ms   INTEGER,
        last_addr      TEXT,
        last_seq       INTEGER,
        connected      INTEGER NOT NULL DEFAULT 0,
        revoked_at_ms  INTEGER
    ) STRICT;
    CREATE TABLE enroll_tokens (
        id            TEXT PRIMARY KEY NOT NULL,
        secret_hash   TEXT NOT NULL,
        created_at_ms INTEGER NOT NULL,
        expires_at_ms INTEGER NOT NULL,
        single_use    INTEGER NOT NULL,
        used_at_ms    INTEGER,
        used_by       TEXT,
        revoked_at_ms INTEGER
    ) STRICT;
    CREATE TABLE api_tokens (
        id            TEXT PRIMARY KEY NOT NULL,
        name          TEXT NOT NULL,
        role          TEXT NOT NULL CHECK (role IN ('viewer', 'operator', 'admin')),
        secret_hash   TEXT NOT NULL,
        created_at_ms INTEGER NOT NULL,
        last_used_ms  INTEGER,
        revoked_at_ms INTEGER
    ) STRICT;
    CREATE TABLE batches (
        agent_id    TEXT NOT NULL REFERENCES agents(id),
        seq         INTEGER NOT NULL,
        received_ms INTEGER NOT NULL,
        first_ts_ms INTEGER NOT NULL,
        last_ts_ms  INTEGER NOT NULL,
        samples     INTEGER NOT NULL,
        payload     BLOB NOT NULL,
        UNIQUE (agent_id, seq)
    ) STRICT;
    CREATE INDEX batches_received ON batches(received_ms);",
    ),
    // The CMDB (issue 3): see `crate::cmdb` for identity rules and lifecycle.
    // `relations` is WITHOUT ROWID (small rows, looked up by their key); every index on `cis`
    // and `ci_history` grows at its right edge or within one agent's range, so a snapshot
    // touches few pages. `ci_view` is what readers should query: a non-retired discovered CI was
    // last seen when its agent last reported (`inventory_state.ts_ms`), which deltas do not
    // write into every row.
    M::up(
        "CREATE TABLE cis (
        id            INTEGER PRIMARY KEY,
        agent_id      TEXT,
        type          TEXT NOT NULL,
        key           TEXT NOT NULL,
        name          TEXT NOT NULL,
        attrs         TEXT NOT NULL DEFAULT '{}',
        manual_attrs  TEXT,
        source        TEXT NOT NULL CHECK (source IN ('discovery', 'api')),
        state         TEXT NOT NULL DEFAULT 'active'
                      CHECK (state IN ('active', 'stale', 'retired')),
        first_seen_ms INTEGER NOT NULL,
        last_seen_ms  INTEGER NOT NULL,
        retired_at_ms INTEGER,
        UNIQUE (agent_id, type, key)
    ) STRICT;
    CREATE UNIQUE INDEX cis_api_identity ON cis(type, key) WHERE agent_id IS NULL;
    CREATE INDEX cis_type_state ON cis(type, state);
    CREATE INDEX cis_ip_address ON cis(key) WHERE type = 'ip_address';
    CREATE TABLE ci_history (
        id        INTEGER PRIMARY KEY,
        ci_id     INTEGER NOT NULL REFERENCES cis(id),
        ts_ms     INTEGER NOT NULL,
        attribute TEXT NOT NULL,
        change    TEXT NOT NULL CHECK (change IN ('added', 'changed', 'removed', 'state')),
        old_value TEXT,
        new_value TEXT,
        source    TEXT NOT NULL
    ) STRICT;
    CREATE INDEX ci_history_ci ON ci_history(ci_id, ts_ms);
    CREATE INDEX ci_history_ts ON ci_history(ts_ms);
    CREATE TABLE relations (
        from_ci       INTEGER NOT NULL REFERENCES cis(id),
        kind          TEXT NOT NULL,
        to_ci         INTEGER NOT NULL REFERENCES cis(id),
        source        TEXT NOT NULL,
        first_seen_ms INTEGER NOT NULL,
        PRIMARY KEY (from_ci, kind, to_ci)
    ) STRICT, WITHOUT ROWID;
    CREATE INDEX relations_to ON relations(to_ci);
    CREATE INDEX relations_source ON relations(source);
    CREATE TABLE inventory_state (
        agent_id     TEXT PRIMARY KEY NOT NULL REFERENCES agents(id),
        version      INTEGER NOT NULL,
        ts_ms        INTEGER NOT NULL,
        reported_ms  INTEGER NOT NULL,
        machine_id   TEXT,
        dmi_uuid     TEXT,
        duplicate_of TEXT,
        stale        INTEGER NOT NULL DEFAULT 0
    ) STRICT;
    CREATE INDEX inventory_state_machine ON inventory_state(machine_id)
        WHERE machine_id IS NOT NULL;
    CREATE TABLE connections (
        agent_id      TEXT NOT NULL REFERENCES agents(id),
        proto         TEXT NOT NULL,
        remote_ip     TEXT NOT NULL,
        remote_port   INTEGER NOT NULL,
        local_service TEXT,
        process       TEXT
    ) STRICT;
    CREATE INDEX connections_agent ON connections(agent_id);
    CREATE INDEX connections_remote ON connections(remote_ip, remote_port);
    CREATE VIEW ci_view AS
    SELECT c.id, c.agent_id, c.type, c.key, c.name, c.attrs, c.manual_attrs, c.source, c.state,
           c.first_seen_ms,
           CASE WHEN c.state != 'retired' AND s.ts_ms > c.last_seen_ms THEN s.ts_ms
                ELSE c.last_seen_ms END AS last_seen_ms,
           c.retired_at_ms, s.duplicate_of
    FROM cis c LEFT JOIN inventory_state s ON s.agent_id = c.agent_id;",
    ),
    // CMDB: type-filtered CI lists page by id (`WHERE type = ? AND id > ? ORDER BY id`).
    M::up("CREATE INDEX cis_type_id ON cis(type, id);"),
    // Incidents (issue 4): see `crate::incidents` for the lifecycle and `crate::notify` for the
    // outbox. At most one active (open or acknowledged) incident per dedup key.
    M::up(
        "CREATE TABLE incidents (
        id                INTEGER PRIMARY KEY,
        dedup_key         TEXT NOT NULL,
        rule              TEXT NOT NULL,
        origin            TEXT NOT NULL CHECK (origin IN ('rule', 'alertmanager')),
        agent_id          TEXT,
        ci_id             INTEGER REFERENCES cis(id),
        ci_type           TEXT NOT NULL,
        ci_key            TEXT NOT NULL,
        title             TEXT NOT NULL,
        state             TEXT NOT NULL
                          CHECK (state IN ('open', 'acknowledged', 'resolved', 'closed')),
        impact            TEXT NOT NULL CHECK (impact IN ('high', 'medium', 'low')),
        urgency           TEXT NOT NULL CHECK (urgency IN ('high', 'medium', 'low')),
        priority          INTEGER NOT NULL CHECK (priority BETWEEN 1 AND 5),
        metric            TEXT,
        op                TEXT CHECK (op IN ('>', '<')),
        threshold         REAL,
        trigger_value     REAL,
        peak_value        REAL,
        last_value        REAL,
        first_breach_ms   INTEGER NOT NULL,
        last_breach_ms    INTEGER NOT NULL,
        started_ms        INTEGER NOT NULL,
        created_ms        INTEGER NOT NULL,
        acknowledged_ms   INTEGER,
        resolved_ms       INTEGER,
        closed_ms         INTEGER,
        assignee          TEXT,
        resolution_code   TEXT,
        resolution_note   TEXT,
        resolved_by       TEXT,
        flapping          INTEGER NOT NULL DEFAULT 0,
        suppressed        TEXT CHECK (suppressed IN ('parent', 'maintenance')),
        parent_id         INTEGER REFERENCES incidents(id),
        probable_cause_id INTEGER REFERENCES incidents(id),
        maintenance       TEXT,
        reopen_count      INTEGER NOT NULL DEFAULT 0,
        announced         INTEGER NOT NULL DEFAULT 0,
        labels            TEXT NOT NULL DEFAULT '{}'
    ) STRICT;
    CREATE UNIQUE INDEX incidents_active_key ON incidents(dedup_key)
        WHERE state IN ('open', 'acknowledged');
    CREATE INDEX incidents_key ON incidents(dedup_key, id);
    CREATE INDEX incidents_state ON incidents(state, priority);
    CREATE INDEX incidents_agent ON incidents(agent_id, state);
    CREATE INDEX incidents_ci ON incidents(ci_id);
    CREATE INDEX incidents_parent ON incidents(parent_id) WHERE parent_id IS NOT NULL;
    CREATE TABLE incident_events (
        id          INTEGER PRIMARY KEY,
        incident_id INTEGER NOT NULL REFERENCES incidents(id),
        ts_ms       INTEGER NOT NULL,
        kind        TEXT NOT NULL,
        actor       TEXT NOT NULL,
        detail      TEXT NOT NULL DEFAULT '{}'
    ) STRICT;
    CREATE INDEX incident_events_incident ON incident_events(incident_id, id);
    CREATE TABLE notifications (
        id              INTEGER PRIMARY KEY,
        webhook         TEXT NOT NULL,
        incident_id     INTEGER NOT NULL REFERENCES incidents(id),
        event           TEXT NOT NULL,
        idempotency_key TEXT NOT NULL UNIQUE,
        body            TEXT NOT NULL,
        created_ms      INTEGER NOT NULL,
        attempts        INTEGER NOT NULL DEFAULT 0,
        next_attempt_ms INTEGER NOT NULL,
        last_error      TEXT,
        delivered_ms    INTEGER,
        failed_ms       INTEGER
    ) STRICT;
    CREATE INDEX notifications_due ON notifications(next_attempt_ms)
        WHERE delivered_ms IS NULL AND failed_ms IS NULL;
    CREATE TABLE maintenance_windows (
        id          INTEGER PRIMARY KEY,
        name        TEXT NOT NULL,
        scope       TEXT NOT NULL,
        start_ms    INTEGER NOT NULL,
        duration_ms INTEGER NOT NULL,
        every       TEXT CHECK (every IN ('day', 'week')),
        origin      TEXT NOT NULL CHECK (origin IN ('config', 'api')),
        created_ms  INTEGER NOT NULL,
        deleted_ms  INTEGER
    ) STRICT;
    CREATE UNIQUE INDEX maintenance_live_name ON maintenance_windows(name)
        WHERE deleted_ms IS NULL;",
    ),
    // Rules made through the API (`crate::incidents::api_rules`): the request body as JSON, checked
    // by the same validation as `[[rule]]` in collector.toml.
    M::up(
        "CREATE TABLE api_rules (
        name       TEXT PRIMARY KEY NOT NULL,
        definition TEXT NOT NULL,
        created_ms INTEGER NOT NULL,
        created_by TEXT NOT NULL
    ) STRICT;",
    ),
    // A CI's history as a chain instead of an index: `cis.last_history_id` is its newest
    // `ci_history` row and each row's `prev_id` the one before (by id). The `(ci_id, ts_ms)`
    // index made every delta rewrite about ten leaves per host (a host's entries span them
    // all, and a 1 % delta lands in nearly every one); a chained row is only appended. See
    // `cmdb::history` for writes and reads.
    M::up(
        "ALTER TABLE cis ADD COLUMN last_history_id INTEGER;
    ALTER TABLE ci_history ADD COLUMN prev_id INTEGER;
    UPDATE ci_history SET prev_id = p.prev
        FROM (SELECT id, LAG(id) OVER (PARTITION BY ci_id ORDER BY id) AS prev
              FROM ci_history) AS p
        WHERE p.id = ci_history.id AND p.prev IS NOT NULL;
    UPDATE cis SET last_history_id = (SELECT MAX(h.id) FROM ci_history h WHERE h.ci_id = cis.id);
    DROP INDEX ci_history_ci;",
    ),
    // Liveness across restarts: the interval an agent last said hello with, and when it last
    // said goodbye (NULL once it connects again), so a restarted collector knows a clean stop
    // from an outage (`crate::presence`).
    M::up(
        "ALTER TABLE agents ADD COLUMN interval_ms INTEGER;
    ALTER TABLE agents ADD COLUMN stopped_ms INTEGER;",
    ),
];

/// Runs `f` in a `BEGIN IMMEDIATE` transaction: the write lock is taken up front, so a
/// concurrent writer waits for the busy timeout instead of failing on a lock upgrade. Commits
/// when `f` returns `Ok`, rolls back otherwise (or when the commit fails).
pub fn in_tx<T, E: From<rusqlite::Error>>(
    conn: &Connection,
    f: impl FnOnce(&Connection) -> Result<T, E>,
) -> Result<T, E> {
    conn.execute_batch("BEGIN IMMEDIATE")?;
    match f(conn) {
        Ok(v) => {
            if let Err(e) = conn.execute_batch("COMMIT") {
                let _ = conn.execute_batch("ROLLBACK");
                return Err(e.into());
            }
            Ok(v)
        }
        Err(e) => {
            let _ = conn.execute_batch("ROLLBACK");
            Err(e)
        }
    }
}

/// The migrations applied by every [`Db::open`] and [`Writer::spawn`].
pub const MIGRATIONS: Migrations<'static> = Migrations::from_slice(MIGRATION_STEPS);

/// Everything that can go wrong in the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot create data directory {path}: {source}")]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("schema migration failed: {0}")]
    Migration(#[from] rusqlite_migration::Error),
    /// A write transaction failed; every operation batched into it failed with it.
    #[error("write transaction failed: {0}")]
    WriteFailed(Arc<rusqlite::Error>),
    #[error("cannot start the store writer thread: {0}")]
    Spawn(std::io::Error),
    #[error("the store writer has stopped")]
    WriterGone,
    /// A blocking store task panicked or was cancelled.
    #[error("store task failed: {0}")]
    Task(String),
    #[error("the store writer did not stop within {0:?}")]
    ShutdownTimeout(Duration),
    #[error("agent {0} already exists")]
    AgentExists(String),
    #[error("unknown agent {0}")]
    UnknownAgent(String),
    #[error("sequence number {0} is out of range")]
    SeqOutOfRange(u64),
    #[error("unexpected value in column {column}: {value}")]
    Corrupt { column: &'static str, value: String },
}

/// What an API token may do; ordered `Viewer < Operator < Admin`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    Viewer,
    Operator,
    Admin,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Viewer, Role::Operator, Role::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown role {0:?} (expected viewer, operator or admin)")]
pub struct UnknownRole(pub String);

impl FromStr for Role {
    type Err = UnknownRole;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| UnknownRole(s.to_owned()))
    }
}

impl serde::Serialize for Role {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// An agent to record at enrollment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewAgent {
    pub id: String,
    pub hostname: String,
    pub version: String,
    /// SHA-256 (hex) of the agent's client certificate.
    pub cert_pin: String,
    /// The enrollment token it used.
    pub token_id: String,
}

/// One row of `agents`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentRow {
    pub id: String,
    pub hostname: String,
    pub version: String,
    pub cert_pin: String,
    pub enrolled_at_ms: i64,
    pub token_id: Option<String>,
    pub last_seen_ms: Option<i64>,
    pub last_addr: Option<String>,
    /// Highest batch sequence number stored for this agent.
    pub last_seq: Option<u64>,
    pub connected: bool,
    pub revoked_at_ms: Option<i64>,
    /// The sampling interval of its last hello (ms).
    pub interval_ms: Option<u64>,
    /// When it last said goodbye, unless it connected since.
    pub stopped_ms: Option<i64>,
}

impl AgentRow {
    pub fn is_revoked(&self) -> bool {
        self.revoked_at_ms.is_some()
    }
}

/// Metadata of one stored batch (the payload stays in the file).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchRow {
    pub seq: u64,
    pub received_ms: i64,
    pub first_ts_ms: i64,
    pub last_ts_ms: i64,
    pub samples: u32,
}

/// Creates `data_dir` (mode 0700 when it is new) and returns the database path in it.
pub fn db_path(data_dir: &Path) -> Result<PathBuf, StoreError> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(data_dir)
        .map_err(|source| StoreError::CreateDir {
            path: data_dir.to_owned(),
            source,
        })?;
    Ok(data_dir.join(DB_FILE))
}

/// Opens (creating if needed) the database in `data_dir`, sets the connection pragmas and brings
/// the schema up to date.
pub(crate) fn open_connection(data_dir: &Path) -> Result<Connection, StoreError> {
    let path = db_path(data_dir)?;
    let mut conn = Connection::open(&path)?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    let mode: String =
        conn.pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::Corrupt {
            column: "journal_mode",
            value: mode,
        });
    }
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", true)?;
    // The WAL file keeps the size of its largest burst (a CMDB full round: hundreds of MB)
    // unless it is cut back when it restarts.
    conn.pragma_update(None, "journal_size_limit", WAL_SIZE_LIMIT)?;
    MIGRATIONS.to_latest(&mut conn)?;
    Ok(conn)
}

pub(crate) fn seq_to_sql(seq: u64) -> Result<i64, StoreError> {
    i64::try_from(seq).map_err(|_| StoreError::SeqOutOfRange(seq))
}

fn is_constraint(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::ConstraintViolation)
    )
}

/// A synchronous handle on the store (one connection). Not for the ingest hot path: use [`Writer`].
pub struct Db {
    conn: Connection,
    /// Set by [`Db::attach_checkpoints`]: commits leave WAL checkpoints to that thread.
    checkpoints: Option<Checkpoints>,
}

impl fmt::Debug for Db {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Db")
            .field("path", &self.conn.path())
            .finish()
    }
}

const AGENT_COLUMNS: &str = "id, hostname, version, cert_pin, enrolled_at_ms, token_id, \
     last_seen_ms, last_addr, last_seq, connected, revoked_at_ms, interval_ms, stopped_ms";

/// Reads column `idx` as a `u64` (SQLite integers are `i64`; negative means a corrupt file).
fn get_u64(row: &rusqlite::Row<'_>, idx: usize) -> rusqlite::Result<Option<u64>> {
    let v: Option<i64> = row.get(idx)?;
    v.map(|v| u64::try_from(v).map_err(|_| rusqlite::Error::IntegralValueOutOfRange(idx, v)))
        .transpose()
}

fn agent_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<AgentRow> {
    Ok(AgentRow {
        id: row.get(0)?,
        hostname: row.get(1)?,
        version: row.get(2)?,
        cert_pin: row.get(3)?,
        enrolled_at_ms: row.get(4)?,
        token_id: row.get(5)?,
        last_seen_ms: row.get(6)?,
        last_addr: row.get(7)?,
        last_seq: get_u64(row, 8)?,
        connected: row.get(9)?,
        revoked_at_ms: row.get(10)?,
        interval_ms: get_u64(row, 11)?,
        stopped_ms: row.get(12)?,
    })
}

impl Db {
    /// Opens `<data_dir>/vigil.db`, creating the directory (0700) and the schema as needed.
    pub fn open(data_dir: &Path) -> Result<Db, StoreError> {
        Ok(Db {
            conn: open_connection(data_dir)?,
            checkpoints: None,
        })
    }

    /// Leaves this connection's WAL checkpoints to the store's checkpointer thread (see
    /// [`Checkpoints`]): for a connection that writes a lot, the CMDB's. Only the CMDB's
    /// transactions report their commits ([`Db::checkpoints`]); other writes through this `Db`
    /// simply leave the WAL to the next checkpoint.
    pub fn attach_checkpoints(&mut self, checkpoints: Checkpoints) {
        checkpoints.attach(&self.conn);
        self.checkpoints = Some(checkpoints);
    }

    pub(crate) fn checkpoints(&self) -> Option<&Checkpoints> {
        self.checkpoints.as_ref()
    }

    /// The connection, for modules that run their own transactions (the CMDB).
    pub(crate) fn conn(&self) -> &Connection {
        &self.conn
    }

    /// Records a newly enrolled agent. Fails with [`StoreError::AgentExists`] if the id is taken.
    pub fn register_agent(&self, agent: &NewAgent, now_ms: i64) -> Result<(), StoreError> {
        insert_agent(&self.conn, agent, now_ms)
    }

    pub fn agent(&self, id: &str) -> Result<Option<AgentRow>, StoreError> {
        let sql = format!("SELECT {AGENT_COLUMNS} FROM agents WHERE id = ?1");
        Ok(self
            .conn
            .prepare_cached(&sql)?
            .query_row([id], agent_row)
            .optional()?)
    }

    /// All agents, ordered by hostname then id.
    pub fn list_agents(&self) -> Result<Vec<AgentRow>, StoreError> {
        let sql = format!("SELECT {AGENT_COLUMNS} FROM agents ORDER BY hostname, id");
        let mut stmt = self.conn.prepare_cached(&sql)?;
        let rows = stmt
            .query_map([], agent_row)?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }

    /// Marks the agent revoked (keeping the first revocation time). Returns whether it exists.
    pub fn revoke_agent(&self, id: &str, now_ms: i64) -> Result<bool, StoreError> {
        let n = self.conn.execute(
            "UPDATE agents SET revoked_at_ms = COALESCE(revoked_at_ms, ?2), connected = 0
             WHERE id = ?1",
            params![id, now_ms],
        )?;
        Ok(n > 0)
    }

    pub fn revoked_agent_ids(&self) -> Result<HashSet<String>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT id FROM agents WHERE revoked_at_ms IS NOT NULL")?;
        let ids = stmt
            .query_map([], |row| row.get(0))?
            .collect::<rusqlite::Result<HashSet<String>>>()?;
        Ok(ids)
    }

    /// An agent said hello from `addr` on a new connection: connected, seen now, its host name,
    /// version and interval recorded, any earlier goodbye forgotten.
    pub fn agent_connected(
        &self,
        id: &str,
        addr: &str,
        hostname: &str,
        version: &str,
        interval_ms: u64,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let n = self
            .conn
            .prepare_cached(
                "UPDATE agents SET connected = 1, last_addr = ?2, hostname = ?3, version = ?4,
                     interval_ms = ?5, stopped_ms = NULL,
                     last_seen_ms = MAX(COALESCE(last_seen_ms, ?6), ?6)
                 WHERE id = ?1",
            )?
            .execute(params![
                id,
                addr,
                hostname,
                version,
                i64::try_from(interval_ms).unwrap_or(i64::MAX),
                now_ms
            ])?;
        Ok(n > 0)
    }

    /// The agent's current connection ended; `goodbye` when it said so first (a clean stop at
    /// `now_ms`).
    pub fn agent_disconnected(
        &self,
        id: &str,
        goodbye: bool,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let n = self
            .conn
            .prepare_cached(
                "UPDATE agents SET connected = 0,
                     stopped_ms = CASE WHEN ?2 THEN ?3 ELSE NULL END,
                     last_seen_ms = MAX(COALESCE(last_seen_ms, ?3), ?3)
                 WHERE id = ?1",
            )?
            .execute(params![id, goodbye, now_ms])?;
        Ok(n > 0)
    }

    /// Marks every agent disconnected (at collector start: nothing is connected yet).
    pub fn mark_all_disconnected(&self) -> Result<usize, StoreError> {
        Ok(self
            .conn
            .execute("UPDATE agents SET connected = 0 WHERE connected != 0", [])?)
    }

    /// Metadata of the batches stored for `agent_id`, by sequence number.
    pub fn batches_for(&self, agent_id: &str) -> Result<Vec<BatchRow>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT seq, received_ms, first_ts_ms, last_ts_ms, samples FROM batches
             WHERE agent_id = ?1 ORDER BY seq",
        )?;
        let rows = stmt
            .query_map([agent_id], |row| {
                Ok(BatchRow {
                    seq: get_u64(row, 0)?.unwrap_or_default(),
                    received_ms: row.get(1)?,
                    first_ts_ms: row.get(2)?,
                    last_ts_ms: row.get(3)?,
                    samples: row.get(4)?,
                })
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }

    /// Deletes batches received before `older_than_ms`, in chunks so the ingest writer never
    /// waits long for the lock. Returns how many were deleted.
    pub fn prune_batches(&self, older_than_ms: i64) -> Result<usize, StoreError> {
        const CHUNK: i64 = 5_000;
        let mut total = 0;
        loop {
            let n = self.conn.execute(
                "DELETE FROM batches WHERE rowid IN
                 (SELECT rowid FROM batches WHERE received_ms < ?1 LIMIT ?2)",
                params![older_than_ms, CHUNK],
            )?;
            total += n;
            if (n as i64) < CHUNK {
                return Ok(total);
            }
        }
    }
}

pub(crate) fn insert_agent(
    conn: &Connection,
    agent: &NewAgent,
    now_ms: i64,
) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO agents (id, hostname, version, cert_pin, enrolled_at_ms, token_id)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![
            agent.id,
            agent.hostname,
            agent.version,
            agent.cert_pin,
            now_ms,
            agent.token_id
        ],
    )
    .map_err(|e| {
        if is_constraint(&e) {
            StoreError::AgentExists(agent.id.clone())
        } else {
            e.into()
        }
    })?;
    Ok(())
}

/// A few [`Db`] connections for async callers: [`DbPool::run`] borrows one on a blocking thread.
#[derive(Clone)]
pub struct DbPool {
    inner: Arc<PoolInner>,
}

struct PoolInner {
    data_dir: PathBuf,
    idle: Mutex<Vec<Db>>,
    max_idle: usize,
}

impl fmt::Debug for DbPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DbPool")
            .field("data_dir", &self.inner.data_dir)
            .finish()
    }
}

impl DbPool {
    /// Opens one connection now (so a bad data dir fails at startup) and keeps up to `max_idle`.
    pub fn open(data_dir: &Path, max_idle: usize) -> Result<DbPool, StoreError> {
        let first = Db::open(data_dir)?;
        Ok(DbPool {
            inner: Arc::new(PoolInner {
                data_dir: data_dir.to_owned(),
                idle: Mutex::new(vec![first]),
                max_idle: max_idle.max(1),
            }),
        })
    }

    pub fn data_dir(&self) -> &Path {
        &self.inner.data_dir
    }

    /// Runs `f` with a connection on tokio's blocking pool.
    pub async fn run<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        F: FnOnce(&Db) -> Result<T, StoreError> + Send + 'static,
        T: Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        let joined = tokio::task::spawn_blocking(move || {
            let pooled = inner.idle.lock().map(|mut idle| idle.pop()).ok().flatten();
            let db = match pooled {
                Some(db) => db,
                None => Db::open(&inner.data_dir)?,
            };
            let out = f(&db);
            if let Ok(mut idle) = inner.idle.lock() {
                if idle.len() < inner.max_idle {
                    idle.push(db);
                }
            }
            out
        })
        .await;
        // Err: the closure panicked or the runtime is shutting down.
        joined.unwrap_or_else(|e| Err(StoreError::Task(e.to_string())))
    }
}

#[cfg(test)]
pub(crate) mod tests;
