//! CMDB reconciliation benchmark: 1,000 synthetic hosts x 2,000 CIs each as full snapshots into a
//! fresh store, then two delta rounds with 1 % of the CIs changed (added, changed, removed) each,
//! then the same full snapshots again unchanged (every agent reconnecting). Prints wall time,
//! process CPU time and the store size.
//!
//! The first delta round applies one message per transaction, one after the other (what the
//! QUIC server's inventory streams did through one locked connection); the second one sends
//! every host's delta at once from [`THREADS`] threads through `GroupCommit` (a burst of agents
//! reporting together), whose transactions take up to `MAX_MESSAGES_PER_TX` messages each. Both
//! commit with `synchronous=FULL`; "wall" is the sum of the per-message times for the first and
//! the elapsed time of the whole round for the second.
//!
//! As in the collector, WAL checkpoints run on the store's checkpointer thread (`Checkpointer`),
//! not in the commits; after each round the benchmark waits for that thread to catch up and
//! prints how long it took. `CMDB_BENCH_INLINE_CHECKPOINTS=1` checkpoints in the commits instead
//! (every 8,192 pages), as the collector did before the checkpointer.
//!
//! `cargo run --release -p vigil-collector --example cmdb_bench [-- HOSTS CIS_PER_HOST [DIR]]`
//!
//! To profile the delta rounds alone: `mkfifo ctl; PERF_CTL_FIFO=ctl perf record -g
//! --control=fifo:ctl -D -1 target/release/examples/cmdb_bench`.
//!
//! Synthetic data only; the addresses are from the documentation ranges and nothing is contacted.

use std::path::Path;
use std::time::{Duration, Instant};

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use vigil_collector::cmdb::{
    apply_delta, apply_snapshot, GroupCommit, InventoryMessage, InventoryOutcome,
};
use vigil_collector::store::{Checkpointer, Db, NewAgent};
use vigil_shared::inventory::{
    ci_type, diff, relation, Ci, CiRef, Inventory, OutboundConnection, Relation,
};
use vigil_shared::proto::{InventoryDeltaMsg, InventorySnapshot};

const NOW: i64 = 1_700_000_000_000;

/// Threads sending the second delta round (agents' streams reconcile on blocking threads).
const THREADS: usize = 32;

/// CPU time of this process, all threads (clock_gettime(CLOCK_PROCESS_CPUTIME_ID)).
#[allow(unsafe_code)]
fn cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec and the clock id is a Linux constant.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return Duration::ZERO;
    }
    Duration::new(
        u64::try_from(ts.tv_sec).unwrap_or(0),
        u32::try_from(ts.tv_nsec).unwrap_or(0),
    )
}

fn host_ip(h: usize) -> String {
    // 198.18.0.0/15 is reserved for benchmarks (RFC 2544).
    format!("198.18.{}.{}", h / 250, h % 250 + 1)
}

/// A plausible host: hardware, filesystems, interfaces, listeners, units, the rest packages.
fn synthetic(h: usize, n: usize, generation: usize) -> Inventory {
    let mut cis = Vec::with_capacity(n);
    let mut relations = Vec::with_capacity(n);
    let host_ref = CiRef::new(ci_type::HOST, ci_type::HOST);
    let child = |ci: Ci, kind: &str, cis: &mut Vec<Ci>, relations: &mut Vec<Relation>| {
        relations.push(Relation {
            from: host_ref.clone(),
            kind: kind.to_owned(),
            to: ci.id(),
        });
        cis.push(ci);
    };
    cis.push(
        Ci::new(ci_type::HOST, ci_type::HOST, format!("host{h:04}"))
            .attr("hostname", format!("host{h:04}"))
            .attr("fqdn", format!("host{h:04}.example.org"))
            .attr("machine_id", format!("{h:032x}"))
            .attr("dmi_uuid", format!("4c4c4544-0000-0000-0000-{h:012x}"))
            .attr("virtualization", "vm")
            .attr("boot_time", 1_699_000_000)
            .attr("tags", serde_json::json!({"env": "prod", "role": "web"})),
    );
    child(
        Ci::new(ci_type::OS, ci_type::OS, "Debian GNU/Linux 12")
            .attr("name", "Debian GNU/Linux")
            .attr("version", "12")
            .attr("kernel", "6.1.0-18-amd64")
            .attr("architecture", "x86_64"),
        relation::RUNS,
        &mut cis,
        &mut relations,
    );
    child(
        Ci::new(ci_type::CPU, ci_type::CPU, "Intel Xeon")
            .attr("model", "Intel(R) Xeon(R) Gold 6338 CPU @ 2.00GHz")
            .attr("cores", 8)
            .attr("threads", 16),
        relation::HAS,
        &mut cis,
        &mut relations,
    );
    child(
        Ci::new(ci_type::MEMORY, ci_type::MEMORY, "memory").attr("total_bytes", 34_359_738_368u64),
        relation::HAS,
        &mut cis,
        &mut relations,
    );
    for d in ["sda", "sdb"] {
        child(
            Ci::new(ci_type::DISK, d, d)
                .attr("model", "QEMU HARDDISK")
                .attr("size_bytes", 107_374_182_400u64)
                .attr("rotational", false),
            relation::HAS,
            &mut cis,
            &mut relations,
        );
    }
    for m in ["/", "/var", "/home", "/srv"] {
        child(
            Ci::new(ci_type::FILESYSTEM, m, m)
                .attr("device", "/dev/sda1")
                .attr("fstype", "ext4")
                .attr("size_bytes", 53_687_091_200u64),
            relation::HAS,
            &mut cis,
            &mut relations,
        );
    }
    child(
        Ci::new(ci_type::NETWORK_INTERFACE, "eth0", "eth0")
            .attr(
                "mac",
                format!("52:54:00:{:02x}:{:02x}:01", h / 256, h % 256),
            )
            .attr("mtu", 1500),
        relation::HAS,
        &mut cis,
        &mut relations,
    );
    let ip = format!("{}/15", host_ip(h));
    relations.push(Relation {
        from: CiRef::new(ci_type::NETWORK_INTERFACE, "eth0"),
        kind: relation::HAS.to_owned(),
        to: CiRef::new(ci_type::IP_ADDRESS, ip.clone()),
    });
    cis.push(Ci::new(ci_type::IP_ADDRESS, ip.clone(), ip).attr("interface", "eth0"));
    for port in [22u16, 80, 443, 5432, 6379, 8080, 9100, 9187] {
        let key = format!("tcp:{port}");
        child(
            Ci::new(ci_type::LISTENING_SERVICE, key.clone(), key)
                .attr("protocol", "tcp")
                .attr("address", "0.0.0.0")
                .attr("port", port)
                .attr("process", format!("svc{port}"))
                .attr("executable", format!("/usr/sbin/svc{port}")),
            relation::RUNS,
            &mut cis,
            &mut relations,
        );
    }
    for u in 0..60 {
        let name = format!("unit{u:02}.service");
        child(
            Ci::new(ci_type::SYSTEMD_UNIT, name.clone(), name)
                .attr("load", "loaded")
                .attr("active", "active")
                .attr("sub", "running")
                .attr("enabled", "enabled"),
            relation::RUNS,
            &mut cis,
            &mut relations,
        );
    }
    let mut p = 0;
    while cis.len() < n {
        // Generation g bumps the version of packages with (p + h) % 100 < g: 1 % per round.
        let bumped = (p + h) % 100 < generation;
        let name = format!("package-{p:04}");
        cis.push(
            Ci::new(ci_type::PACKAGE, format!("{name}:amd64"), name.clone())
                .attr("name", name)
                .attr(
                    "version",
                    if bumped { "1.2.4-1+deb12u1" } else { "1.2.3-1" },
                )
                .attr("architecture", "amd64")
                .attr("source", format!("src-{}", p / 3))
                .attr("manager", "dpkg")
                .attr("installed_size_kb", 1_000 + p),
        );
        p += 1;
    }
    let connections = (1..=5)
        .map(|k| OutboundConnection {
            proto: "tcp".into(),
            remote_ip: host_ip((h + k * 37) % 1_000),
            remote_port: [5432, 6379, 443, 80, 9100][k - 1],
            local_service: None,
            process: Some("app".into()),
        })
        .collect();
    let mut inv = Inventory {
        cis,
        relations,
        connections,
    };
    inv.canonicalize();
    inv
}

/// With `PERF_CTL_FIFO=PATH`, writes `cmd` ("enable", "disable") to a
/// `perf record --control=fifo:PATH -D -1` control fifo, so that a profile covers the delta
/// rounds only.
fn perf_ctl(cmd: &str) {
    let Ok(path) = std::env::var("PERF_CTL_FIFO") else {
        return;
    };
    use std::io::Write;
    let sent = std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .and_then(|mut f| writeln!(f, "{cmd}"));
    if let Err(e) = sent {
        eprintln!("cannot write {cmd:?} to {path}: {e}");
    }
}

fn store_size(dir: &Path) -> u64 {
    ["vigil.db", "vigil.db-wal", "vigil.db-shm"]
        .iter()
        .filter_map(|f| std::fs::metadata(dir.join(f)).ok())
        .map(|m| m.len())
        .sum()
}

struct Round {
    wall: Duration,
    cpu: Duration,
    added: usize,
    changed: usize,
    removed: usize,
    slowest: Duration,
}

impl Round {
    fn new() -> Round {
        Round {
            wall: Duration::ZERO,
            cpu: Duration::ZERO,
            added: 0,
            changed: 0,
            removed: 0,
            slowest: Duration::ZERO,
        }
    }

    /// Adds a message's outcome; a resync is an error here (every base is the stored one).
    fn count(&mut self, h: usize, outcome: InventoryOutcome) -> Result<(), String> {
        match outcome {
            InventoryOutcome::Stored {
                added,
                changed,
                removed,
                ..
            } => {
                self.added += added;
                self.changed += changed;
                self.removed += removed;
                Ok(())
            }
            InventoryOutcome::Resync { have } => {
                Err(format!("host {h}: unexpected resync (have {have:?})"))
            }
            InventoryOutcome::TooManyCis { cis, max } => {
                Err(format!("host {h}: {cis} CIs, more than {max}"))
            }
        }
    }

    fn print(&self, what: &str) {
        println!(
            "{what:<44} {:>8.2} s wall {:>8.2} s CPU   added {:>9} changed {:>7} removed {:>6}   slowest message {:.1} ms",
            self.wall.as_secs_f64(),
            self.cpu.as_secs_f64(),
            self.added,
            self.changed,
            self.removed,
            self.slowest.as_secs_f64() * 1e3
        );
    }
}

/// For every host, builds its message with `prepare` (not timed) and runs `apply` (timed).
fn round<M>(
    hosts: usize,
    mut prepare: impl FnMut(usize) -> M,
    mut apply: impl FnMut(usize, &M) -> Result<InventoryOutcome, Box<dyn std::error::Error>>,
) -> Result<Round, Box<dyn std::error::Error>> {
    let mut r = Round::new();
    for h in 0..hosts {
        let msg = prepare(h);
        let (t, c) = (Instant::now(), cpu_time());
        let outcome = apply(h, &msg)?;
        let took = t.elapsed();
        r.wall += took;
        r.cpu += cpu_time().saturating_sub(c);
        r.slowest = r.slowest.max(took);
        r.count(h, outcome)?;
    }
    Ok(r)
}

/// Sends every host's message at once from [`THREADS`] threads through `gc`.
fn burst(
    gc: &Arc<GroupCommit>,
    agent: impl Fn(usize) -> String + Sync,
    msgs: Vec<InventoryMessage>,
    now: i64,
) -> Result<Round, Box<dyn std::error::Error>> {
    let queue: Vec<Mutex<Option<InventoryMessage>>> =
        msgs.into_iter().map(|m| Mutex::new(Some(m))).collect();
    let next = AtomicUsize::new(0);
    let (t, c) = (Instant::now(), cpu_time());
    let results: Vec<Result<Round, String>> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..THREADS)
            .map(|_| {
                scope.spawn(|| {
                    let mut r = Round::new();
                    loop {
                        let h = next.fetch_add(1, Ordering::Relaxed);
                        let Some(slot) = queue.get(h) else {
                            return Ok(r);
                        };
                        let msg = slot
                            .lock()
                            .map_err(|e| e.to_string())?
                            .take()
                            .ok_or("message taken twice")?;
                        let sent = Instant::now();
                        let outcome = gc.apply(&agent(h), msg, now).map_err(|e| e.to_string())?;
                        r.slowest = r.slowest.max(sent.elapsed());
                        r.count(h, outcome)?;
                    }
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().unwrap_or_else(|_| Err("worker panicked".into())))
            .collect()
    });
    let mut total = Round::new();
    total.wall = t.elapsed();
    total.cpu = cpu_time().saturating_sub(c);
    for r in results {
        let r = r?;
        total.added += r.added;
        total.changed += r.changed;
        total.removed += r.removed;
        total.slowest = total.slowest.max(r.slowest);
    }
    Ok(total)
}

/// Host `h` after delta round `round` (1 or 2): ~16 packages bumped per round (1 % of the
/// packages, see [`synthetic`]), 2 units removed in round 1, 2 timers added in each round and
/// the previous round's removed.
fn after_round(h: usize, per_host: usize, round: usize) -> Inventory {
    let mut inv = synthetic(h, per_host, round);
    let units: Vec<Ci> = inv
        .cis
        .iter()
        .filter(|c| c.ci_type == ci_type::SYSTEMD_UNIT)
        .take(2)
        .cloned()
        .collect();
    inv.cis.retain(|c| !units.contains(c));
    inv.relations
        .retain(|r| !units.iter().any(|u| u.id() == r.to));
    for u in 0..2 {
        let name = format!("new{u}-{round}.timer");
        inv.cis
            .push(Ci::new(ci_type::SYSTEMD_UNIT, name.clone(), name).attr("load", "loaded"));
    }
    inv.canonicalize();
    inv
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let hosts = args
        .first()
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(1_000);
    let per_host = args.get(1).map(|a| a.parse()).transpose()?.unwrap_or(2_000);
    // A third argument keeps the store in that (new) directory for inspection.
    let temp = tempfile::tempdir()?;
    let dir = match args.get(2) {
        Some(keep) => std::path::PathBuf::from(keep),
        None => temp.path().to_owned(),
    };
    let checkpointer = match std::env::var("CMDB_BENCH_INLINE_CHECKPOINTS") {
        Ok(v) if v == "1" => None,
        _ => Some(Checkpointer::spawn(&dir)?),
    };
    let open = || -> Result<Db, Box<dyn std::error::Error>> {
        let mut db = Db::open(&dir)?;
        if let Some(c) = &checkpointer {
            db.attach_checkpoints(c.handle());
        }
        Ok(db)
    };
    let catch_up = || {
        if let Some(c) = &checkpointer {
            let (t, cpu) = (Instant::now(), cpu_time());
            let idle = c.handle().wait_idle(Duration::from_secs(600));
            println!(
                "{:<44} {:>8.2} s wall {:>8.2} s CPU{}",
                "  then the checkpointer catches up",
                t.elapsed().as_secs_f64(),
                cpu_time().saturating_sub(cpu).as_secs_f64(),
                if idle {
                    ""
                } else {
                    "   (still busy after 600 s)"
                }
            );
        }
    };
    let db = open()?;
    let agent = |h: usize| format!("agent-{h:04}");
    for h in 0..hosts {
        db.register_agent(
            &NewAgent {
                id: agent(h),
                hostname: format!("host{h:04}"),
                version: "bench".into(),
                cert_pin: "00".repeat(32),
                token_id: "bench".into(),
            },
            NOW,
        )?;
    }
    println!(
        "CMDB benchmark: {hosts} hosts x {per_host} CIs, store in {}",
        dir.display()
    );

    let full = round(
        hosts,
        |h| InventorySnapshot {
            version: 1,
            ts_ms: NOW,
            inventory: synthetic(h, per_host, 0),
        },
        |h, snap| Ok(apply_snapshot(&db, &agent(h), snap, NOW)?),
    )?;
    full.print("full round (new store)");
    catch_up();
    println!(
        "store size after full round: {:.1} MB",
        store_size(&dir) as f64 / 1e6
    );

    // 1 %: ~16 package upgrades, 2 units added and 2 removed per host, as deltas.
    let deltas: Vec<_> = (0..hosts)
        .map(|h| diff(&synthetic(h, per_host, 0), &after_round(h, per_host, 1)))
        .collect();
    let touched: usize = deltas
        .iter()
        .map(|d| d.added.len() + d.changed.len() + d.removed.len())
        .sum();
    perf_ctl("enable");
    let delta = round(
        hosts,
        |h| InventoryDeltaMsg {
            base_version: 1,
            version: 2,
            ts_ms: NOW + 300_000,
            delta: deltas[h].clone(),
        },
        |h, msg| Ok(apply_delta(&db, &agent(h), msg, NOW + 300_000)?),
    )?;
    perf_ctl("disable");
    delta.print(&format!("delta round ({touched} CIs)"));
    catch_up();

    // The next 1 %, every host at once through group commit.
    let msgs: Vec<InventoryMessage> = (0..hosts)
        .map(|h| {
            InventoryMessage::Delta(InventoryDeltaMsg {
                base_version: 2,
                version: 3,
                ts_ms: NOW + 600_000,
                delta: diff(&after_round(h, per_host, 1), &after_round(h, per_host, 2)),
            })
        })
        .collect();
    let touched: usize = msgs
        .iter()
        .map(|m| match m {
            InventoryMessage::Delta(d) => {
                d.delta.added.len() + d.delta.changed.len() + d.delta.removed.len()
            }
            InventoryMessage::Snapshot(_) => 0,
        })
        .sum();
    let gc = Arc::new(GroupCommit::new(open()?));
    perf_ctl("enable");
    let grouped = burst(&gc, agent, msgs, NOW + 600_000)?;
    perf_ctl("disable");
    grouped.print(&format!("delta round, group commit ({touched} CIs)"));
    catch_up();

    let again = round(
        hosts,
        |h| InventorySnapshot {
            version: 4,
            ts_ms: NOW + 900_000,
            inventory: after_round(h, per_host, 2),
        },
        |h, snap| Ok(apply_snapshot(&db, &agent(h), snap, NOW + 900_000)?),
    )?;
    again.print("full round again (unchanged)");
    catch_up();
    println!("store size: {:.1} MB", store_size(&dir) as f64 / 1e6);
    Ok(())
}
