//! Keeps the collector's copy of this host's inventory current with as little traffic as
//! possible: discovery runs at start and every `[discovery] interval`; each connection begins
//! with a full snapshot, then sends only deltas, and only when something changed. An unchanged
//! host sends nothing at all. The collector answers every message with an ack, or asks for a
//! full snapshot when its version and the delta's base disagree.
//!
//! Each inventory message travels on its own bidirectional stream (`docs/reference.md`,
//! section 5).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use quinn::Connection;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use vigil_shared::codec::{self, FrameDecoder, MAX_INVENTORY_FRAME};
use vigil_shared::inventory::{self, Inventory};
use vigil_shared::proto::{InventoryDeltaMsg, InventorySnapshot, Message};

use crate::client::{self, ClientError};
use crate::discovery::{self, Options};
use crate::Process;
use vigil_runtime::clock::now_ms;

/// One discovery result with the version the agent gave it.
#[derive(Debug)]
pub struct Versioned {
    pub version: u64,
    pub ts_ms: i64,
    pub inventory: Inventory,
}

pub type Latest = watch::Receiver<Option<Arc<Versioned>>>;

/// Discovers now and every `interval` until `shutdown`, publishing a new version whenever the
/// inventory differs from the last one. Problems are logged once per source.
pub async fn discovery_loop(
    opts: Options,
    interval: Duration,
    process: Process,
    tx: watch::Sender<Option<Arc<Versioned>>>,
    shutdown: CancellationToken,
) {
    let mut version = 0u64;
    let mut passes = 0u64;
    let mut reported: HashSet<&'static str> = HashSet::new();
    loop {
        let o = opts.clone();
        let previous = tx.borrow().clone();
        match tokio::task::spawn_blocking(move || {
            discovery_pass(&o, previous.as_ref().map(|v| &v.inventory), process)
        })
        .await
        {
            Ok(pass) => {
                for p in &pass.problems {
                    if reported.insert(p.source) {
                        warn!(
                            source = p.source,
                            "discovery: {} (reported once)", p.message
                        );
                    }
                }
                passes += 1;
                let changed = pass.changed.is_some();
                if let Some(inventory) = pass.changed {
                    version += 1;
                    debug!(version, cis = inventory.cis.len(), "inventory changed");
                    tx.send_replace(Some(Arc::new(Versioned {
                        version,
                        ts_ms: now_ms(),
                        inventory,
                    })));
                }
                // What tests count to know that discovery ran (and found nothing new).
                debug!(pass = passes, changed, "discovery pass done");
            }
            Err(e) => warn!(error = %e, "discovery task failed"),
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}

/// Runs for one connection: a snapshot first, then a delta per change. Returns `Ok` only when
/// discovery has stopped (the agent is shutting down); connection failures are `Err`.
pub async fn sync(conn: &Connection, mut latest: Latest) -> Result<(), ClientError> {
    let mut acked: Option<Arc<Versioned>> = None;
    loop {
        let current = latest.borrow_and_update().clone();
        if let Some(cur) = current {
            let msg = match &acked {
                Some(a) if a.version == cur.version => None,
                Some(a) => Some(Message::InventoryDelta(InventoryDeltaMsg {
                    base_version: a.version,
                    version: cur.version,
                    ts_ms: cur.ts_ms,
                    delta: inventory::diff(&a.inventory, &cur.inventory),
                })),
                None => Some(Message::InventorySnapshot(InventorySnapshot {
                    version: cur.version,
                    ts_ms: cur.ts_ms,
                    inventory: cur.inventory.clone(),
                })),
            };
            if let Some(msg) = msg {
                let snapshot = matches!(msg, Message::InventorySnapshot(_));
                match exchange(conn, &msg).await? {
                    Message::InventoryAck(ack) if ack.version == cur.version => {
                        if snapshot {
                            info!(
                                version = cur.version,
                                cis = cur.inventory.cis.len(),
                                "inventory snapshot stored"
                            );
                        } else {
                            debug!(version = cur.version, "inventory delta stored");
                        }
                        acked = Some(cur);
                    }
                    Message::InventoryResync(r) => {
                        info!(have = ?r.have, "collector asked for a full inventory snapshot");
                        acked = None;
                        continue;
                    }
                    other => {
                        return Err(ClientError::Protocol(format!(
                            "unexpected answer to inventory: kind {}",
                            other.kind()
                        )));
                    }
                }
            }
        }
        if latest.changed().await.is_err() {
            return Ok(());
        }
    }
}

/// Sends one inventory message on its own stream and reads the answer.
async fn exchange(conn: &Connection, msg: &Message) -> Result<Message, ClientError> {
    let (mut send, mut recv) = conn.open_bi().await.map_err(ClientError::Connection)?;
    let mut bytes = Vec::new();
    codec::encode_into(msg, &mut bytes, MAX_INVENTORY_FRAME)
        .map_err(|e| ClientError::Protocol(e.to_string()))?;
    client::write_bytes(&mut send, &bytes).await?;
    let _ = send.finish();
    let mut dec = FrameDecoder::new(64 * 1024);
    client::read_message(&mut recv, &mut dec)
        .await?
        .ok_or_else(|| {
            ClientError::Protocol("collector closed the inventory stream without an answer".into())
        })
}

/// What one discovery pass found.
#[derive(Debug)]
pub struct Pass {
    /// The new inventory, when it differs from the previous one.
    pub changed: Option<Inventory>,
    pub problems: Vec<discovery::Problem>,
}

/// One discovery pass as the agent runs it (blocking: call it off the async runtime), leaving
/// the agent's memory as it found it: a pass reads and frees megabytes, and only the new
/// inventory, if it changed, outlives it.
///
/// An unchanged inventory is dropped before the allocator is trimmed, so the pass leaves
/// nothing behind. A changed one was allocated in among the pass's buffers; it is copied once
/// they are freed (the copy lands in the lowest free memory, ~0.3 ms for 850 CIs) and the
/// original dropped, so that it does not pin scattered pages of the heap for as long as it is
/// kept. Measured with `agent/examples/discovery_cost.rs`, which calls this. Inside another
/// program's process ([`Process::Embedded`]) the allocator is that program's: nothing is trimmed.
pub fn discovery_pass(opts: &Options, previous: Option<&Inventory>, process: Process) -> Pass {
    let mut found = discovery::discover(opts);
    discovery::keep_failed(&mut found, previous);
    let problems = found.problems;
    let changed = if previous.is_some_and(|p| *p == found.inventory) {
        drop(found.inventory);
        None
    } else {
        let compact = found.inventory.clone();
        drop(found.inventory);
        Some(compact)
    };
    if process == Process::Own {
        release_freed_memory();
    }
    Pass { changed, problems }
}

/// A discovery pass reads and frees megabytes (the dpkg status file, /proc); glibc keeps freed
/// memory for reuse, which shows as RSS that never comes back. Hand it back after each pass
/// (measured with `agent/examples/discovery_cost.rs`: +2.3 MiB after the first passes without
/// this, ~0.35 MiB with it).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn release_freed_memory() {
    // SAFETY: malloc_trim only returns free heap pages to the kernel; it is thread-safe and
    // touches no memory the program owns.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn release_freed_memory() {}

#[cfg(test)]
mod pass_tests {
    use super::*;

    fn opts(role: &str) -> Options {
        Options {
            root: discovery::testing::fixture("dpkg-basic"),
            tags: [("role".to_owned(), role.to_owned())].into(),
            hostname: Some("fixture-host".into()),
        }
    }

    fn copy_tree(from: &std::path::Path, to: &std::path::Path) {
        std::fs::create_dir_all(to).expect("mkdir");
        for e in std::fs::read_dir(from).expect("read_dir") {
            let e = e.expect("entry");
            let dest = to.join(e.file_name());
            if e.file_type().expect("type").is_dir() {
                copy_tree(&e.path(), &dest);
            } else {
                std::fs::copy(e.path(), &dest).expect("copy");
            }
        }
    }

    /// A dpkg status file that is there but cannot be read (here: a directory, which even root
    /// cannot read as a file; under fd exhaustion it is EMFILE) keeps the packages sent last
    /// time; one that is gone (no dpkg any more) retires them.
    #[test]
    fn an_unreadable_source_keeps_its_cis_and_an_absent_one_retires_them() {
        let tmp = tempfile::tempdir().expect("tempdir");
        copy_tree(&discovery::testing::fixture("dpkg-basic"), tmp.path());
        let o = Options {
            root: tmp.path().to_path_buf(),
            ..opts("web")
        };
        let packages = |inv: &Inventory| inv.cis.iter().filter(|c| c.ci_type == "package").count();
        let first = discovery_pass(&o, None, Process::Own)
            .changed
            .expect("first pass");
        assert!(packages(&first) > 0);
        let status = tmp.path().join("var/lib/dpkg/status");
        std::fs::remove_file(&status).expect("rm");
        std::fs::create_dir(&status).expect("mkdir");
        let pass = discovery_pass(&o, Some(&first), Process::Own);
        assert!(
            pass.problems.iter().any(|p| p.source == "dpkg"),
            "{:?}",
            pass.problems
        );
        assert!(
            pass.changed.is_none(),
            "an unreadable source changed the inventory: {:?}",
            pass.changed.map(|i| packages(&i))
        );
        std::fs::remove_dir(&status).expect("rmdir");
        let gone = discovery_pass(&o, Some(&first), Process::Own)
            .changed
            .expect("no dpkg: a change");
        assert_eq!(packages(&gone), 0);
    }

    #[test]
    fn a_pass_returns_an_inventory_only_when_it_changed() {
        let first = discovery_pass(&opts("web"), None, Process::Own)
            .changed
            .expect("no previous inventory: the first pass is a change");
        // The kept copy is the inventory discover() finds, intact.
        assert_eq!(first, discovery::discover(&opts("web")).inventory);
        assert!(first.cis.iter().any(|c| c.ci_type == "package"));
        assert!(discovery_pass(&opts("web"), Some(&first), Process::Own)
            .changed
            .is_none());
        let retagged = discovery_pass(&opts("db"), Some(&first), Process::Embedded)
            .changed
            .expect("a tag changed");
        assert_ne!(retagged, first);
    }
}
