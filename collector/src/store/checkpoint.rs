//! WAL checkpoints off the writers' commit paths, and out of their bursts.
//!
//! Left to itself, SQLite checkpoints inside the commit that takes the WAL past
//! `wal_autocheckpoint`: that writer copies every page the WAL holds back into the database file
//! and fsyncs it before its caller hears that the commit is done. On the CMDB benchmark that was
//! ~0.3 s of a 1 s delta round (1,000 hosts, 35,000 distinct pages), and an ingest transaction
//! that happens to cross the threshold makes every agent in it wait just as long for its ack.
//! Running the same checkpoints on another thread *during* the burst does not help much: its
//! fsyncs of the database file queue on the disk in front of the writers' WAL fsyncs.
//!
//! So a connection [`Checkpoints::attach`]ed to the store's [`Checkpointer`] no longer
//! checkpoints in its commits. Each commit notes how many frames the WAL holds (SQLite's WAL
//! hook, called on the committing thread; a thread-local carries the count to
//! [`Checkpoints::after_commit`]). Past [`REQUEST_PAGES`] the checkpointer's thread is asked for
//! a checkpoint, which it runs once the attached writers have been quiet for [`QUIET`], or at
//! once past [`EAGER_PAGES`] (a writer that never pauses). The checkpoint is PASSIVE, on the
//! thread's own connection: it never waits for, nor blocks, a reader or a writer. The pages are
//! on disk in the WAL either way (`synchronous=FULL`): this moves work, it skips no fsync.
//!
//! This must never: let the WAL grow without bound (past [`INLINE_PAGES`] a writer checkpoints
//! in its commit after all, as SQLite would, in case the thread is behind or gone), fail a commit
//! because a checkpoint failed (a checkpoint is retried on the next request), or keep its thread
//! running after [`Checkpointer::shutdown`] or drop.

use std::cell::Cell;
use std::ffi::c_int;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rusqlite::hooks::{CheckpointMode, Wal};
use rusqlite::Connection;

use super::{open_connection, StoreError};

/// Uncopied WAL frames (pages) from which a commit asks for a checkpoint. SQLite's own threshold
/// is 1,000 frames;
/// larger means fewer copies of pages that every commit rewrites (table ends, interior pages).
pub const REQUEST_PAGES: i32 = 2_048;

/// How long the attached writers must have been quiet before a requested checkpoint runs.
pub const QUIET: Duration = Duration::from_millis(200);

/// Uncopied WAL frames (128 MiB of 4 KiB pages) from which a requested checkpoint runs without
/// waiting for [`QUIET`]: with metrics flowing, the ingest writer commits several times a second
/// and the store is never quiet.
pub const EAGER_PAGES: i32 = 32_768;

/// WAL frames at which a writer checkpoints in its own commit after all (256 MiB of 4 KiB pages):
/// only reached when the checkpointer has fallen far behind or is gone. (Unit tests use a
/// smaller figure, to write less.)
pub const INLINE_PAGES: i32 = if cfg!(test) { 4_096 } else { 65_536 };

thread_local! {
    /// Frames in the WAL after the last commit on this thread of an attached connection.
    static WAL_PAGES: Cell<Option<i32>> = const { Cell::new(None) };
}

/// The WAL hook of an attached connection (a plain `fn`: SQLite keeps no closure state for it).
fn on_commit(wal: &Wal, pages: c_int) -> rusqlite::Result<()> {
    WAL_PAGES.set(Some(pages));
    if pages >= INLINE_PAGES {
        // As SQLite's own hook would; a busy checkpointer just means someone else is on it.
        if let Err(e) = wal.checkpoint_v2(CheckpointMode::PASSIVE) {
            tracing::debug!(error = %e, pages, "inline WAL checkpoint did not run");
        }
    }
    Ok(())
}

struct State {
    requested: bool,
    /// A checkpoint is under way.
    running: bool,
    stop: bool,
    /// When an attached writer last committed, and the WAL's frames then.
    last_commit: Instant,
    pages: i32,
    /// Frames of the current WAL the last checkpoint copied (0 after the WAL restarted).
    backfilled: i32,
}

impl State {
    /// Frames not yet copied into the database (the WAL restarts from frame 1 once a writer
    /// finds everything copied, so the frame count alone stays high under a steady writer).
    fn backlog(&self) -> i32 {
        self.pages - self.backfilled.min(self.pages)
    }
}

struct Shared {
    state: Mutex<State>,
    wake: Condvar,
    /// Checkpoints run by the thread (completed or not).
    runs: AtomicU64,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A cloneable handle for the writers of one store: attach connections, report commits.
#[derive(Clone)]
pub struct Checkpoints {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Checkpoints {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checkpoints")
            .field("runs", &self.runs())
            .finish()
    }
}

impl Checkpoints {
    /// From now on `conn`'s commits leave checkpoints to the checkpointer thread (below
    /// [`INLINE_PAGES`]). Replaces the connection's `wal_autocheckpoint`; setting that pragma
    /// again detaches it.
    pub fn attach(&self, conn: &Connection) {
        conn.wal_hook(Some(on_commit));
    }

    /// Call after each transaction on an attached connection, on the thread that ran it (a
    /// rollback reports nothing): notes the commit, and asks for a checkpoint from
    /// [`REQUEST_PAGES`] on.
    pub fn after_commit(&self) {
        let Some(pages) = WAL_PAGES.take() else {
            return;
        };
        let mut state = self.shared.lock();
        state.last_commit = Instant::now();
        if pages < state.pages {
            state.backfilled = 0; // the WAL restarted
        }
        state.pages = pages;
        if state.backlog() >= REQUEST_PAGES {
            state.requested = true;
            drop(state);
            self.shared.wake.notify_all();
        }
    }

    /// Asks for a checkpoint, run as soon as the writers are quiet (never blocks).
    pub fn request(&self) {
        self.shared.lock().requested = true;
        self.shared.wake.notify_all();
    }

    /// Waits (at most `timeout`) until no checkpoint is requested or under way; `false` on
    /// timeout. For benchmarks and tests: how long the thread takes to catch up.
    pub fn wait_idle(&self, timeout: Duration) -> bool {
        let state = self.shared.lock();
        let (_state, result) = self
            .shared
            .wake
            .wait_timeout_while(state, timeout, |s| (s.requested || s.running) && !s.stop)
            .unwrap_or_else(PoisonError::into_inner);
        !result.timed_out()
    }

    /// Checkpoints the thread has run so far.
    pub fn runs(&self) -> u64 {
        self.shared.runs.load(Ordering::Relaxed)
    }
}

/// The store's checkpointer thread; [`Checkpointer::shutdown`] (or drop) stops and joins it.
pub struct Checkpointer {
    handle: Checkpoints,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Checkpointer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checkpointer")
            .field("handle", &self.handle)
            .finish()
    }
}

impl Checkpointer {
    /// Opens its own connection to `<data_dir>/vigil.db` and starts the thread.
    pub fn spawn(data_dir: &Path) -> Result<Checkpointer, StoreError> {
        Self::spawn_watched(data_dir, None)
    }

    /// [`Checkpointer::spawn`], the thread holding `sentinel` (its end is reported).
    pub fn spawn_watched(
        data_dir: &Path,
        sentinel: Option<crate::supervise::Sentinel>,
    ) -> Result<Checkpointer, StoreError> {
        let conn = open_connection(data_dir)?;
        let handle = Checkpoints {
            shared: Arc::new(Shared {
                state: Mutex::new(State {
                    requested: false,
                    running: false,
                    stop: false,
                    last_commit: Instant::now(),
                    pages: 0,
                    backfilled: 0,
                }),
                wake: Condvar::new(),
                runs: AtomicU64::new(0),
            }),
        };
        let shared = handle.shared.clone();
        let thread = std::thread::Builder::new()
            .name("vigil-checkpoint".into())
            .spawn(move || {
                let _sentinel = sentinel;
                run(&conn, &shared)
            })
            .map_err(StoreError::Spawn)?;
        Ok(Checkpointer {
            handle,
            thread: Some(thread),
        })
    }

    pub fn handle(&self) -> Checkpoints {
        self.handle.clone()
    }

    /// Runs a last checkpoint and joins the thread.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        let Some(thread) = self.thread.take() else {
            return;
        };
        self.handle.shared.lock().stop = true;
        self.handle.shared.wake.notify_all();
        if thread.join().is_err() {
            tracing::error!("the WAL checkpointer thread panicked");
        }
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn run(conn: &Connection, shared: &Shared) {
    loop {
        let stop = {
            let mut state = shared.lock();
            loop {
                if state.stop {
                    break;
                }
                if !state.requested {
                    state = shared
                        .wake
                        .wait(state)
                        .unwrap_or_else(PoisonError::into_inner);
                    continue;
                }
                let quiet_for = state.last_commit.elapsed();
                if quiet_for >= QUIET || state.backlog() >= EAGER_PAGES {
                    break;
                }
                state = shared
                    .wake
                    .wait_timeout(state, QUIET - quiet_for)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
            }
            state.requested = false;
            state.running = true;
            state.stop
        };
        let copied = checkpoint(conn);
        shared.runs.fetch_add(1, Ordering::Relaxed);
        let mut state = shared.lock();
        state.running = false;
        if let Some(copied) = copied {
            state.backfilled = copied;
        }
        drop(state);
        shared.wake.notify_all();
        if stop {
            return;
        }
    }
}

/// One PASSIVE checkpoint (copies what no reader still needs, waits for nobody); returns how
/// many frames of the WAL are now copied.
fn checkpoint(conn: &Connection) -> Option<i32> {
    let r = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
        Ok((
            r.get::<_, i64>(0)?,
            r.get::<_, i64>(1)?,
            r.get::<_, i64>(2)?,
        ))
    });
    match r {
        Ok((busy, log, done)) => {
            tracing::trace!(busy, log, done, "WAL checkpoint");
            i32::try_from(done).ok().filter(|d| *d >= 0)
        }
        Err(e) => {
            tracing::warn!(error = %e, "WAL checkpoint failed; retried on the next request");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn write_pages(conn: &Connection, n: usize) {
        let tx = conn.unchecked_transaction().expect("tx");
        tx.execute_batch("CREATE TABLE IF NOT EXISTS filler (b BLOB)")
            .expect("table");
        for _ in 0..n {
            tx.execute("INSERT INTO filler VALUES (zeroblob(4000))", [])
                .expect("insert");
        }
        tx.commit().expect("commit");
    }

    /// Pages in the database file: a checkpoint is what copies the filler pages there.
    fn db_pages(dir: &Path) -> u64 {
        std::fs::metadata(dir.join(super::super::DB_FILE)).map_or(0, |m| m.len()) / 4096
    }

    #[test]
    fn attached_commits_leave_checkpoints_to_the_thread() {
        let dir = tempfile::tempdir().expect("tmp");
        let cp = Checkpointer::spawn(dir.path()).expect("spawn");
        let conn = open_connection(dir.path()).expect("conn");
        let handle = cp.handle();
        handle.attach(&conn);
        let schema = db_pages(dir.path());
        // Past SQLite's own 1,000-page threshold, below ours: nobody checkpoints.
        write_pages(&conn, 1_200);
        handle.after_commit();
        assert_eq!(db_pages(dir.path()), schema, "nothing copied back yet");
        assert_eq!(handle.runs(), 0, "no checkpoint requested yet");
        // Past REQUEST_PAGES the commit wakes the thread, which copies the WAL back.
        write_pages(&conn, 1_200);
        handle.after_commit();
        assert!(
            handle.wait_idle(Duration::from_secs(20)),
            "still checkpointing"
        );
        assert_eq!(handle.runs(), 1);
        assert!(
            db_pages(dir.path()) >= 2_400,
            "{} pages",
            db_pages(dir.path())
        );
        cp.shutdown();
    }

    #[test]
    fn a_detached_connection_checkpoints_itself() {
        let dir = tempfile::tempdir().expect("tmp");
        let conn = open_connection(dir.path()).expect("conn");
        write_pages(&conn, 1_200);
        // SQLite's autocheckpoint (1,000 pages) ran in the commit.
        assert!(
            db_pages(dir.path()) >= 1_200,
            "{} pages",
            db_pages(dir.path())
        );
        // Not attached: nothing is recorded for after_commit to act on.
        assert_eq!(WAL_PAGES.get(), None);
    }

    #[test]
    fn a_writer_checkpoints_inline_when_the_thread_is_gone() {
        let dir = tempfile::tempdir().expect("tmp");
        let cp = Checkpointer::spawn(dir.path()).expect("spawn");
        let handle = cp.handle();
        cp.shutdown();
        let runs = handle.runs();
        let conn = open_connection(dir.path()).expect("conn");
        handle.attach(&conn);
        write_pages(&conn, INLINE_PAGES as usize / 2);
        handle.after_commit();
        assert!(db_pages(dir.path()) < INLINE_PAGES as u64 / 2);
        // The commit that takes the WAL past INLINE_PAGES copies it back itself.
        write_pages(&conn, INLINE_PAGES as usize / 2 + 10);
        handle.after_commit();
        assert!(
            db_pages(dir.path()) >= INLINE_PAGES as u64,
            "{} pages",
            db_pages(dir.path())
        );
        assert_eq!(handle.runs(), runs, "the thread is gone");
    }

    #[test]
    fn shutdown_checkpoints_and_joins() {
        let dir = tempfile::tempdir().expect("tmp");
        let cp = Checkpointer::spawn(dir.path()).expect("spawn");
        let conn = open_connection(dir.path()).expect("conn");
        let handle = cp.handle();
        handle.attach(&conn);
        write_pages(&conn, 500);
        handle.after_commit();
        assert!(db_pages(dir.path()) < 500);
        cp.shutdown();
        assert_eq!(handle.runs(), 1, "one last checkpoint");
        assert!(
            db_pages(dir.path()) >= 500,
            "{} pages",
            db_pages(dir.path())
        );
        // Requests after shutdown go nowhere and do not block.
        handle.request();
    }
}
