//! The ingest writer: one std thread owning one SQLite connection, fed by a bounded tokio channel.
//!
//! The thread takes everything queued (up to [`MAX_OPS_PER_TX`]) into one `BEGIN IMMEDIATE`
//! transaction, commits, and only then answers each caller. One fsync therefore covers a whole
//! burst of batches, and a caller that sees [`AppendOutcome::Stored`] may ack: the batch is durable.
//!
//! It must never panic on a store error (the ops of a failed transaction get
//! [`StoreError::WriteFailed`] and callers simply do not ack), nor answer before the commit.

use std::collections::HashMap;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::{mpsc as std_mpsc, Arc};
use std::task::{Context, Poll};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use vigil_runtime::clock::now_ms;

use rusqlite::{params, Connection, TransactionBehavior};
use tokio::sync::{mpsc, oneshot};

use super::{
    is_constraint, open_connection, seq_to_sql, Checkpointer, Checkpoints, StoreError, BUSY_TIMEOUT,
};

/// Most operations committed in one transaction.
pub const MAX_OPS_PER_TX: usize = 2_000;
/// Operations that may wait in the queue; beyond that a [`Pending`] waits for space.
pub const QUEUE_CAPACITY: usize = 4_096;
/// How long [`WriterJoin::shutdown`] waits for the queue to be committed.
pub const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(10);

/// What happened to an appended batch. Both mean "durable": ack it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppendOutcome {
    Stored,
    /// `(agent_id, seq)` was already stored (a replay after a lost ack).
    Duplicate,
}

type Reply = oneshot::Sender<Result<AppendOutcome, StoreError>>;

struct Append {
    agent_id: Arc<str>,
    seq: i64,
    received_ms: i64,
    first_ts_ms: i64,
    last_ts_ms: i64,
    samples: u32,
    payload: Vec<u8>,
    checks: Vec<CheckTally>,
    interval_ms: i64,
}

/// One batch for [`Writer::submit_batch`].
#[derive(Debug, Clone)]
pub struct NewBatch {
    pub agent_id: Arc<str>,
    /// The agent's sequence number.
    pub seq: u64,
    pub first_ts_ms: i64,
    pub last_ts_ms: i64,
    /// Samples in it.
    pub samples: u32,
    /// The encoded batch as stored.
    pub payload: Vec<u8>,
    /// Its check executions, counted only if the batch is stored (not a duplicate).
    pub checks: Vec<CheckTally>,
    /// The agent's interval: a batch stands for data from its first sample to two intervals
    /// after its last (`agent_data`, the SLAs' coverage). 0: just its samples' times.
    pub interval_ms: u64,
}

/// The runs of one check within one UTC day, as counted in one batch (`vigil_check_up`
/// samples; `crate::sla::occurrences`). Added to `check_runs` when the batch is stored, in its
/// transaction, so that a replayed duplicate never counts twice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckTally {
    pub check: String,
    /// Start of the UTC day, ms since the epoch.
    pub day_ms: i64,
    pub ok: u32,
    pub total: u32,
}

enum Op {
    Append(Append, Reply),
    /// Sent by [`WriterJoin::shutdown`]: stop accepting, commit what is queued, exit.
    Shutdown,
}

/// Cheap, cloneable handle for async code to write through the writer thread.
#[derive(Clone, Debug)]
pub struct Writer {
    tx: mpsc::Sender<Op>,
    checkpoints: Checkpoints,
}

/// A submitted batch: resolves once its transaction has committed (or failed).
pub struct Pending {
    state: PendingState,
}

type BoxedWait = Pin<Box<dyn Future<Output = Result<AppendOutcome, StoreError>> + Send>>;

enum PendingState {
    Queued(oneshot::Receiver<Result<AppendOutcome, StoreError>>),
    /// The queue was full at submission: the batch is queued when this is first polled.
    Waiting(BoxedWait),
    Failed(Option<StoreError>),
}

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match &self.state {
            PendingState::Queued(_) => "queued",
            PendingState::Waiting(_) => "waiting for queue space",
            PendingState::Failed(_) => "failed",
        };
        f.debug_struct("Pending").field("state", &state).finish()
    }
}

impl Future for Pending {
    type Output = Result<AppendOutcome, StoreError>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.state {
            PendingState::Queued(rx) => Pin::new(rx)
                .poll(cx)
                .map(|r| r.unwrap_or(Err(StoreError::WriterGone))),
            PendingState::Waiting(fut) => fut.as_mut().poll(cx),
            PendingState::Failed(e) => Poll::Ready(Err(e.take().unwrap_or(StoreError::WriterGone))),
        }
    }
}

/// Owns the writer thread and the store's WAL checkpointer; [`WriterJoin::shutdown`] flushes and
/// joins both.
#[derive(Debug)]
pub struct WriterJoin {
    tx: mpsc::WeakSender<Op>,
    done: std_mpsc::Receiver<()>,
    thread: JoinHandle<()>,
    checkpointer: Checkpointer,
}

impl Writer {
    /// Opens `<data_dir>/vigil.db` (running migrations) and starts the writer thread and the
    /// store's WAL checkpointer (see [`Writer::checkpoints`]).
    pub fn spawn(data_dir: &Path) -> Result<(Writer, WriterJoin), StoreError> {
        Self::spawn_with(data_dir, BUSY_TIMEOUT, None)
    }

    /// [`Writer::spawn`], with the writer and checkpointer threads watched by `supervisor`.
    pub fn spawn_supervised(
        data_dir: &Path,
        supervisor: &crate::supervise::Supervisor,
    ) -> Result<(Writer, WriterJoin), StoreError> {
        Self::spawn_with(data_dir, BUSY_TIMEOUT, Some(supervisor))
    }

    pub(crate) fn spawn_with(
        data_dir: &Path,
        busy_timeout: Duration,
        supervisor: Option<&crate::supervise::Supervisor>,
    ) -> Result<(Writer, WriterJoin), StoreError> {
        let conn = open_connection(data_dir)?;
        conn.busy_timeout(busy_timeout)?;
        let checkpointer = Checkpointer::spawn_watched(
            data_dir,
            supervisor.map(|s| s.sentinel("WAL checkpointer")),
        )?;
        let sentinel = supervisor.map(|s| s.sentinel("store writer"));
        let health = supervisor.cloned();
        let checkpoints = checkpointer.handle();
        checkpoints.attach(&conn);
        let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
        let (done_tx, done) = std_mpsc::channel();
        let thread_checkpoints = checkpoints.clone();
        let thread = std::thread::Builder::new()
            .name("vigil-store-writer".into())
            .spawn(move || {
                let _sentinel = sentinel;
                if vigil_runtime::failpoint::hit("writer-panic") {
                    panic!("failpoint writer-panic");
                }
                run(conn, rx, &thread_checkpoints, health.as_ref());
                let _ = done_tx.send(());
            })
            .map_err(StoreError::Spawn)?;
        let join = WriterJoin {
            tx: tx.downgrade(),
            done,
            thread,
            checkpointer,
        };
        Ok((Writer { tx, checkpoints }, join))
    }

    /// The store's WAL checkpointer, for other connections that write a lot (the CMDB's) to
    /// [`Checkpoints::attach`] to: their commits then leave checkpoints to its thread too.
    pub fn checkpoints(&self) -> Checkpoints {
        self.checkpoints.clone()
    }

    /// Queues one batch without waiting and returns a [`Pending`] that resolves after its
    /// commit, so a reader can keep reading while earlier batches are committed. If the queue is
    /// full the batch joins it when the `Pending` is first polled; await `Pending`s in submission
    /// order (as an in-order acker does) and an ack for N still implies every batch before N.
    pub fn submit_batch(&self, batch: NewBatch) -> Pending {
        let NewBatch {
            agent_id,
            seq,
            first_ts_ms,
            last_ts_ms,
            samples,
            payload,
            checks,
            interval_ms,
        } = batch;
        let failed = |e| Pending {
            state: PendingState::Failed(Some(e)),
        };
        let seq = match seq_to_sql(seq) {
            Ok(seq) => seq,
            Err(e) => return failed(e),
        };
        let (reply, rx) = oneshot::channel();
        let append = Append {
            agent_id,
            seq,
            received_ms: now_ms(),
            first_ts_ms,
            last_ts_ms,
            samples,
            payload,
            checks,
            interval_ms: i64::try_from(interval_ms).unwrap_or(i64::MAX),
        };
        match self.tx.try_send(Op::Append(append, reply)) {
            Ok(()) => Pending {
                state: PendingState::Queued(rx),
            },
            Err(mpsc::error::TrySendError::Full(op)) => {
                let tx = self.tx.clone();
                Pending {
                    state: PendingState::Waiting(Box::pin(async move {
                        tx.send(op).await.map_err(|_| StoreError::WriterGone)?;
                        rx.await.unwrap_or(Err(StoreError::WriterGone))
                    })),
                }
            }
            Err(mpsc::error::TrySendError::Closed(_)) => failed(StoreError::WriterGone),
        }
    }

    /// Stores one batch and resolves once its transaction has committed.
    pub async fn append_batch(
        &self,
        agent_id: Arc<str>,
        seq: u64,
        first_ts_ms: i64,
        last_ts_ms: i64,
        samples: u32,
        payload: Vec<u8>,
    ) -> Result<AppendOutcome, StoreError> {
        self.submit_batch(NewBatch {
            agent_id,
            seq,
            first_ts_ms,
            last_ts_ms,
            samples,
            payload,
            checks: Vec::new(),
            interval_ms: 0,
        })
        .await
    }
}

impl WriterJoin {
    /// [`WriterJoin::shutdown_within`] [`SHUTDOWN_DEADLINE`].
    pub fn shutdown(self) -> Result<(), StoreError> {
        self.shutdown_within(SHUTDOWN_DEADLINE)
    }

    /// Stops accepting new operations, commits everything already queued and joins the thread.
    /// Later submissions on any [`Writer`] fail with [`StoreError::WriterGone`]. Blocks the
    /// calling thread (use `spawn_blocking` from async code); never panics inside a runtime.
    pub fn shutdown_within(self, deadline: Duration) -> Result<(), StoreError> {
        let WriterJoin {
            tx,
            done,
            thread,
            checkpointer,
        } = self;
        let until = Instant::now() + deadline;
        // None: every Writer is gone already, so the thread is draining on its own.
        if let Some(tx) = tx.upgrade() {
            let mut op = Op::Shutdown;
            loop {
                match tx.try_send(op) {
                    Ok(()) | Err(mpsc::error::TrySendError::Closed(_)) => break,
                    Err(mpsc::error::TrySendError::Full(back)) => {
                        if Instant::now() >= until {
                            return Err(StoreError::ShutdownTimeout(deadline));
                        }
                        op = back;
                        std::thread::sleep(Duration::from_millis(5));
                    }
                }
            }
        }
        match done.recv_timeout(until.saturating_duration_since(Instant::now())) {
            Ok(()) | Err(std_mpsc::RecvTimeoutError::Disconnected) => {}
            Err(std_mpsc::RecvTimeoutError::Timeout) => {
                return Err(StoreError::ShutdownTimeout(deadline))
            }
        }
        thread.join().map_err(|_| StoreError::WriterGone)?;
        checkpointer.shutdown();
        Ok(())
    }
}

/// The condition the writer reports while its transactions fail (`/readyz`).
pub const STORE_CONDITION: &str = "store";

fn run(
    mut conn: Connection,
    mut rx: mpsc::Receiver<Op>,
    checkpoints: &Checkpoints,
    health: Option<&crate::supervise::Supervisor>,
) {
    let mut ops = Vec::with_capacity(MAX_OPS_PER_TX);
    let mut data = DataSpans::default();
    let mut failures = vigil_runtime::logging::LogEvery::new(Duration::from_secs(10));
    loop {
        ops.clear();
        if rx.blocking_recv_many(&mut ops, MAX_OPS_PER_TX) == 0 {
            return; // closed and drained
        }
        let mut appends = Vec::with_capacity(ops.len());
        let mut replies = Vec::with_capacity(ops.len());
        for op in ops.drain(..) {
            match op {
                Op::Append(a, reply) => {
                    appends.push(a);
                    replies.push(reply);
                }
                // Refuse new work; what is already queued is still received and committed.
                Op::Shutdown => rx.close(),
            }
        }
        if appends.is_empty() {
            continue;
        }
        let written = write_all(&mut conn, &appends, &mut data);
        checkpoints.after_commit();
        match written {
            Ok(results) => {
                if let Some(h) = health {
                    h.recovered(STORE_CONDITION);
                }
                for (reply, r) in replies.into_iter().zip(results) {
                    // A caller that went away no longer needs the answer.
                    let _ = reply.send(r);
                }
            }
            Err(e) => {
                if let Some(skipped) = failures.ready() {
                    tracing::error!(
                        error = %e,
                        ops = replies.len(),
                        failed_since_last_line = skipped,
                        "store write transaction failed; nothing in it is acknowledged"
                    );
                }
                if let Some(h) = health {
                    h.degraded(STORE_CONDITION, format!("cannot write: {e}"));
                }
                let e = Arc::new(e);
                for reply in replies {
                    let _ = reply.send(Err(StoreError::WriteFailed(e.clone())));
                }
            }
        }
    }
}

/// Writes all `appends` in one transaction and returns one result per append. An error that
/// concerns one batch (its agent is unknown) stays with it; any other error aborts (rolls back)
/// the whole transaction.
fn write_all(
    conn: &mut Connection,
    appends: &[Append],
    data: &mut DataSpans,
) -> Result<Vec<Result<AppendOutcome, StoreError>>, rusqlite::Error> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let mut results = Vec::with_capacity(appends.len());
    // Highest (seq, received_ms) per agent among this transaction's batches.
    let mut seen: HashMap<&str, (i64, i64)> = HashMap::new();
    {
        let mut insert = tx.prepare_cached(
            "INSERT INTO batches
                 (agent_id, seq, received_ms, first_ts_ms, last_ts_ms, samples, payload)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
             ON CONFLICT (agent_id, seq) DO NOTHING",
        )?;
        let mut count = tx.prepare_cached(
            "INSERT INTO check_runs (agent_id, check_name, day_ms, ok, total)
             VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (agent_id, check_name, day_ms)
             DO UPDATE SET ok = ok + excluded.ok, total = total + excluded.total",
        )?;
        for a in appends {
            let r = insert.execute(params![
                &*a.agent_id,
                a.seq,
                a.received_ms,
                a.first_ts_ms,
                a.last_ts_ms,
                a.samples,
                a.payload
            ]);
            results.push(match r {
                Ok(n) => {
                    let e = seen.entry(&a.agent_id).or_insert((a.seq, a.received_ms));
                    *e = (e.0.max(a.seq), e.1.max(a.received_ms));
                    if n == 1 {
                        data.add(a);
                        for c in &a.checks {
                            count.execute(params![
                                &*a.agent_id,
                                c.check,
                                c.day_ms,
                                c.ok,
                                c.total
                            ])?;
                        }
                    }
                    Ok(if n == 1 {
                        AppendOutcome::Stored
                    } else {
                        AppendOutcome::Duplicate
                    })
                }
                // The only constraint left after ON CONFLICT DO NOTHING is the foreign key.
                Err(e) if is_constraint(&e) => {
                    Err(StoreError::UnknownAgent(a.agent_id.to_string()))
                }
                Err(e) => return Err(e),
            });
        }
        let mut update = tx.prepare_cached(
            "UPDATE agents SET
                 last_seq = CASE WHEN last_seq IS NULL OR last_seq < ?2 THEN ?2 ELSE last_seq END,
                 last_seen_ms = MAX(COALESCE(last_seen_ms, ?3), ?3)
             WHERE id = ?1",
        )?;
        for (agent_id, (seq, received_ms)) in &seen {
            update.execute(params![agent_id, seq, received_ms])?;
        }
        let mut span = tx.prepare_cached(
            "INSERT INTO agent_data (agent_id, start_ms, end_ms) VALUES (?1, ?2, ?3)
             ON CONFLICT (agent_id, start_ms) DO UPDATE SET end_ms = MAX(end_ms, excluded.end_ms)",
        )?;
        for (agent_id, (start, end)) in data.take_written() {
            span.execute(params![&*agent_id, start, end])?;
        }
    }
    tx.commit()?;
    Ok(results)
}

/// The stretches of time each agent sent data for, kept as rows of `agent_data` (an SLA's
/// coverage: time without data from a CI is unknown, not up). A stored batch extends its agent's
/// current stretch when it starts inside it, else starts a new one (after a gap, or a replay of
/// older data); readers take the union. Kept in memory between transactions, so a stretch is one
/// row however many batches it spans. A rolled-back transaction leaves the memory ahead of the
/// table; the next commit of that agent writes the stretch whole again, which covers at most the
/// time of the batch that was not stored (and will be replayed, not being acknowledged).
#[derive(Default)]
struct DataSpans {
    current: HashMap<Arc<str>, (i64, i64)>,
    /// Rows to write in this transaction: stretches replaced and the current ones touched.
    written: Vec<(Arc<str>, (i64, i64))>,
    touched: std::collections::HashSet<Arc<str>>,
}

impl DataSpans {
    fn add(&mut self, a: &Append) {
        let start = a.first_ts_ms.min(a.last_ts_ms);
        let end = a
            .last_ts_ms
            .max(a.first_ts_ms)
            .saturating_add(a.interval_ms.saturating_mul(2))
            .max(start.saturating_add(1));
        match self.current.get_mut(&a.agent_id) {
            Some(cur) if start >= cur.0 && start <= cur.1 => cur.1 = cur.1.max(end),
            Some(cur) => {
                let old = std::mem::replace(cur, (start, end));
                if self.touched.contains(&a.agent_id) {
                    self.written.push((a.agent_id.clone(), old));
                }
            }
            None => {
                self.current.insert(a.agent_id.clone(), (start, end));
            }
        }
        self.touched.insert(a.agent_id.clone());
    }

    fn take_written(&mut self) -> Vec<(Arc<str>, (i64, i64))> {
        let mut out = std::mem::take(&mut self.written);
        for agent in self.touched.drain() {
            if let Some(&span) = self.current.get(&agent) {
                out.push((agent, span));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::agent;
    use crate::store::Db;

    fn arc(s: &str) -> Arc<str> {
        Arc::from(s)
    }

    fn batch(agent_id: &str, seq: u64, bytes: usize) -> NewBatch {
        NewBatch {
            agent_id: arc(agent_id),
            seq,
            first_ts_ms: 0,
            last_ts_ms: 0,
            samples: 1,
            payload: vec![0; bytes],
            checks: Vec::new(),
            interval_ms: 0,
        }
    }

    async fn append(w: &Writer, agent_id: &str, seq: u64) -> Result<AppendOutcome, StoreError> {
        w.append_batch(arc(agent_id), seq, 10, 20, 3, vec![1, 2, 3])
            .await
    }

    #[tokio::test]
    async fn append_stored_duplicate_and_last_seq() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let db = Db::open(tmp.path()).expect("open");
        db.register_agent(&agent("a1"), 0).expect("register");
        let (w, join) = Writer::spawn(tmp.path()).expect("spawn");

        let check = |got: Result<AppendOutcome, StoreError>, expected: &str| {
            let got = match got {
                Ok(AppendOutcome::Stored) => "stored".to_owned(),
                Ok(AppendOutcome::Duplicate) => "duplicate".to_owned(),
                Err(StoreError::UnknownAgent(id)) => format!("unknown:{id}"),
                Err(e) => format!("error:{e}"),
            };
            assert_eq!(got, expected);
        };
        check(append(&w, "a1", 5).await, "stored");
        check(append(&w, "a1", 5).await, "duplicate");
        check(append(&w, "a1", 3).await, "stored");
        check(append(&w, "ghost", 1).await, "unknown:ghost");
        check(
            append(&w, "a1", u64::MAX).await,
            &format!("error:sequence number {} is out of range", u64::MAX),
        );
        // The last_seq is the highest stored, not the last received.
        let row = db.agent("a1").expect("q").expect("row");
        assert_eq!(row.last_seq, Some(5));
        assert!(row.last_seen_ms.is_some_and(|t| t > 0));
        let seqs: Vec<u64> = db
            .batches_for("a1")
            .expect("batches")
            .iter()
            .map(|b| b.seq)
            .collect();
        assert_eq!(seqs, [3, 5]);
        let b = db.batches_for("a1").expect("batches")[0];
        assert_eq!((b.first_ts_ms, b.last_ts_ms, b.samples), (10, 20, 3));
        join.shutdown().expect("shutdown");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn pipelined_submits_and_reopen_after_shutdown() {
        let tmp = tempfile::tempdir().expect("tempdir");
        {
            let db = Db::open(tmp.path()).expect("open");
            db.register_agent(&agent("a1"), 0).expect("register");
            db.register_agent(&agent("a2"), 0).expect("register");
        }
        let (w, join) = Writer::spawn(tmp.path()).expect("spawn");
        let mut pending = Vec::new();
        for seq in 0..500u64 {
            for id in ["a1", "a2"] {
                pending.push(w.submit_batch(batch(id, seq, 64)));
            }
        }
        // Queued but not awaited: shutdown must still commit them.
        let w2 = w.clone();
        let blocking = tokio::task::spawn_blocking(move || join.shutdown());
        for p in pending {
            assert_eq!(p.await.expect("stored"), AppendOutcome::Stored);
        }
        blocking.await.expect("join").expect("shutdown");
        assert!(matches!(
            append(&w2, "a1", 1_000).await,
            Err(StoreError::WriterGone)
        ));

        let db = Db::open(tmp.path()).expect("reopen");
        for id in ["a1", "a2"] {
            assert_eq!(db.batches_for(id).expect("batches").len(), 500);
            assert_eq!(db.agent(id).expect("q").expect("row").last_seq, Some(499));
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn submits_beyond_queue_capacity_wait_and_store() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let db = Db::open(tmp.path()).expect("open");
        db.register_agent(&agent("a1"), 0).expect("register");
        let (w, join) = Writer::spawn(tmp.path()).expect("spawn");
        // Stall the writer on the lock (within its busy timeout) so the queue fills up.
        db.conn.execute_batch("BEGIN IMMEDIATE").expect("lock");
        let n = (QUEUE_CAPACITY + MAX_OPS_PER_TX + 100) as u64;
        let pending: Vec<Pending> = (0..n)
            .map(|seq| w.submit_batch(batch("a1", seq, 16)))
            .collect();
        let waiting = pending
            .iter()
            .filter(|p| format!("{p:?}").contains("waiting"))
            .count();
        assert!(waiting >= 100, "{waiting} waiting");
        db.conn.execute_batch("COMMIT").expect("unlock");
        for p in pending {
            assert_eq!(p.await.expect("stored"), AppendOutcome::Stored);
        }
        tokio::task::spawn_blocking(move || join.shutdown())
            .await
            .expect("join")
            .expect("shutdown");
        assert_eq!(db.batches_for("a1").expect("batches").len() as u64, n);
        assert_eq!(
            db.agent("a1").expect("q").expect("row").last_seq,
            Some(n - 1)
        );
    }

    #[tokio::test]
    async fn dropping_all_writers_stops_the_thread() {
        let tmp = tempfile::tempdir().expect("tempdir");
        Db::open(tmp.path())
            .expect("open")
            .register_agent(&agent("a1"), 0)
            .expect("register");
        let (w, join) = Writer::spawn(tmp.path()).expect("spawn");
        append(&w, "a1", 1).await.expect("stored");
        drop(w);
        join.shutdown_within(Duration::from_secs(5)).expect("stops");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn second_connection_writes_while_writer_runs() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().to_owned();
        Db::open(&dir)
            .expect("open")
            .register_agent(&agent("a1"), 0)
            .expect("register");
        let (w, join) = Writer::spawn(&dir).expect("spawn");
        let admin = tokio::task::spawn_blocking(move || {
            let db = Db::open(&dir).expect("open second");
            for i in 0..200 {
                db.create_api_token(crate::store::Role::Viewer, &format!("t{i}"), i)
                    .expect("no 'database is locked' within busy_timeout");
                if i % 2 == 0 {
                    db.agent_connected("a1", "127.0.0.1:1", "h", "v", 1_000, i)
                } else {
                    db.agent_disconnected("a1", false, i)
                }
                .expect("connected or not");
            }
        });
        for seq in 0..400u64 {
            append(&w, "a1", seq).await.expect("append");
        }
        admin.await.expect("admin thread");
        tokio::task::spawn_blocking(move || join.shutdown())
            .await
            .expect("join")
            .expect("shutdown");
        let db = Db::open(tmp.path()).expect("reopen");
        assert_eq!(db.list_api_tokens().expect("tokens").len(), 200);
        assert_eq!(db.batches_for("a1").expect("batches").len(), 400);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn locked_database_fails_the_transaction_not_the_thread() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let db = Db::open(tmp.path()).expect("open");
        db.register_agent(&agent("a1"), 0).expect("register");
        let (w, join) =
            Writer::spawn_with(tmp.path(), Duration::from_millis(50), None).expect("spawn");
        // Another connection holds the write lock longer than the writer's busy timeout.
        db.conn.execute_batch("BEGIN IMMEDIATE").expect("lock");
        let err = append(&w, "a1", 1).await.expect_err("locked");
        assert!(matches!(err, StoreError::WriteFailed(_)), "{err}");
        db.conn.execute_batch("COMMIT").expect("unlock");
        // Nothing was stored, and the thread still serves.
        assert!(db.batches_for("a1").expect("batches").is_empty());
        assert_eq!(
            append(&w, "a1", 1).await.expect("retry"),
            AppendOutcome::Stored
        );
        tokio::task::spawn_blocking(move || join.shutdown())
            .await
            .expect("join")
            .expect("shutdown");
    }
}
