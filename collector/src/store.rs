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
mod schema;
mod tokens;
pub mod users;
mod writer;

use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension};
pub use schema::MIGRATIONS;

pub use checkpoint::{Checkpointer, Checkpoints, INLINE_PAGES, REQUEST_PAGES};
pub use tokens::{ApiTokenRow, EnrollTokenRow, TokenRefusal, API_TOKEN_PREFIX};
pub use writer::{
    AppendOutcome, CheckTally, NewBatch, Pending, Writer, WriterJoin, MAX_OPS_PER_TX,
    QUEUE_CAPACITY, SHUTDOWN_DEADLINE,
};

/// File name of the database inside the data directory.
pub const DB_FILE: &str = "vigil.db";

/// Bytes the WAL file is cut back to when it restarts after a checkpoint (64 MiB).
pub const WAL_SIZE_LIMIT: i64 = 64 << 20;

/// How long a connection waits for another writer's lock before failing with "database is locked".
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

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

impl StoreError {
    /// The store cannot take writes for now (the disk is full, the file system is read-only):
    /// a condition that clears by itself once an operator frees space, not a bug.
    pub fn is_unavailable(&self) -> bool {
        use rusqlite::ErrorCode::{DiskFull, ReadOnly, SystemIoFailure};
        let code = match self {
            StoreError::Sqlite(e) => e.sqlite_error_code(),
            StoreError::WriteFailed(e) => e.sqlite_error_code(),
            _ => None,
        };
        matches!(code, Some(DiskFull | ReadOnly | SystemIoFailure))
    }
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

/// Makes the data dir 0700 and the database file 0600 whatever the umask (creating the file
/// empty if it does not exist, so that SQLite, which gives its `-wal` and `-shm` files the
/// database's mode, never creates anything readable by others).
pub fn make_private(data_dir: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let path = db_path(data_dir)?;
    let io = |source| StoreError::CreateDir {
        path: data_dir.to_owned(),
        source,
    };
    std::fs::set_permissions(data_dir, std::fs::Permissions::from_mode(0o700)).map_err(io)?;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .map_err(io)?;
    for suffix in ["", "-wal", "-shm"] {
        let file = data_dir.join(format!("{DB_FILE}{suffix}"));
        match std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io(e)),
            _ => {}
        }
    }
    Ok(())
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

/// Reads the store on a fresh read-only connection (never creating a file): what `/readyz` uses
/// to notice a store that cannot be read (a damaged or vanished file) even while nothing
/// writes. Cheap: the header, the schema and the last page of a few tables.
pub fn probe(data_dir: &Path) -> Result<(), StoreError> {
    use rusqlite::OpenFlags;
    let conn = Connection::open_with_flags(
        data_dir.join(DB_FILE),
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.query_row(
        "SELECT (SELECT count(*) FROM sqlite_master), (SELECT max(rowid) FROM agents),
                (SELECT max(id) FROM cis), (SELECT max(id) FROM incidents)",
        [],
        |_| Ok(()),
    )?;
    Ok(())
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

    /// The connection, for modules that run their own transactions (the CMDB) and for the
    /// benchmarks that build a store and read it as the collector does (`examples/sla_bench.rs`).
    pub fn conn(&self) -> &Connection {
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
