//! `kill -9` under load: the collector is SIGKILLed while 200 simulated agents stream, real
//! agents and hand-driven ones reconcile inventory deltas, and incidents open, resolve and are
//! acknowledged; after a restart on the same data dir and ports nothing it acknowledged is
//! missing and nothing is duplicated.
//!
//! The observers whose acknowledgements the test records:
//! - [`WIRE_AGENTS`] hand-driven agents over real QUIC with mutual TLS (the agent crate's client
//!   functions, as in the `wire` module): numbered batches, one every [`BATCH_EVERY`], every ack
//!   kept with the connection it came on; an inventory snapshot per connection, then a delta
//!   every [`INVENTORY_EVERY`] (a package added, one removed every third version, the host's
//!   `rev` attribute set to the version), every inventory ack kept. Their
//!   `filesystem_used_ratio` samples breach the test's rule on a fresh mountpoint every
//!   [`BLOCK`] batches (half the block above the threshold, half below), so incidents open and
//!   resolve all the time and the webhook gets `opened` and `resolved`. After a reconnect they
//!   replay *every* unacknowledged batch (not only those above the welcome's `last_seq`, as the
//!   real agent does): a batch stored whose ack was lost comes again and must be dropped as a
//!   duplicate, and its samples must not reopen anything.
//! - two real `vigil-agent run` processes on fixture roots the test keeps adding packages to
//!   (their spool watermark and their logged inventory acks);
//! - the 200 simulated agents of `vigil-agent simulate` (the samples its report says were
//!   acknowledged);
//! - the API: incidents listed and acknowledged through it before the kill, and the webhook
//!   receiver's deliveries.
//!
//! Until the kill the test checks, as fast as it can poll, that every batch and inventory
//! version a wire agent saw acknowledged is already in the store. The kill comes at a moment it
//! picks (see [`kill_with_work_in_flight`]): a wire agent has a batch committed whose ack it has
//! not got, and an inventory message is unanswered. After the restart the agents reconnect and
//! the load goes on for a while; then everything is checked from the store, the API and the
//! webhook receiver, and the figures are printed (`kill9 figures: ...`).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use quinn::{Connection, Endpoint};
use rusqlite::{params, Connection as Store};
use serde_json::{json, Value};
use vigil_agent::client::{self, Identity};
use vigil_shared::codec::{
    self, decode_body, FrameDecoder, DEFAULT_MAX_FRAME, MAX_INVENTORY_FRAME,
};
use vigil_shared::identity::EnrollToken;
use vigil_shared::inventory::{self, ci_type, relation, Ci, CiRef, Inventory, Relation};
use vigil_shared::proto::{
    self, kind, Batch, Hello, InventoryDeltaMsg, InventorySnapshot, Message, Sample,
};

use crate::cmdb::{inventory_maps, stored_maps, CiMap, RelSet};
use crate::durability::{assert_contiguous, spool_state};
use crate::harness::*;
use crate::incidents::{Received, Receiver};
use crate::wire;

const SIMS: usize = 200;
const SIM_METRICS: u64 = 100;
const WIRE_AGENTS: usize = 4;
const REAL_AGENTS: usize = 2;
const BATCH_EVERY: Duration = Duration::from_millis(100);
/// Batches per mountpoint: the first half breach the rule, the second half clear it.
const BLOCK: u64 = 20;
/// Unacknowledged batches a wire agent may have in flight.
const WINDOW: usize = 32;
const INVENTORY_EVERY: Duration = Duration::from_millis(250);
const RULE: &str = "kill9-fs";
const WEBHOOK: &str = "kill9";
/// Bound of the waits for load to build up, for reconnection and for catching up.
const PHASE: Duration = Duration::from_secs(90);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

// ---------------------------------------------------------------------------------------------
// The hand-driven agents.

/// What the test records of one wire agent; shared with its task.
#[derive(Default)]
struct WireLog {
    agent_id: String,
    /// When each connection got its welcome, and the welcome's `last_seq`.
    conns: Vec<(Instant, Option<u64>)>,
    /// Highest sequence number handed to a stream.
    sent: u64,
    /// Every ack: (connection index, cumulative sequence number).
    acks: Vec<(usize, u64)>,
    /// Batches written again after a reconnect.
    replayed: u64,
    /// The inventory message written and not answered yet: (connection, version).
    inv_in_flight: Option<(usize, u64)>,
    /// Every inventory ack: (connection, version).
    inv_acks: Vec<(usize, u64)>,
    inv_resyncs: u64,
    /// The agent's inventory at every version it made.
    versions: BTreeMap<u64, Inventory>,
    /// Why connections ended.
    lost: Vec<String>,
    /// Stopped cleanly (everything acknowledged, goodbye said).
    done: bool,
}

impl WireLog {
    fn acked_max(&self, conns: impl Fn(usize) -> bool) -> u64 {
        self.acks
            .iter()
            .filter(|(c, _)| conns(*c))
            .map(|(_, s)| *s)
            .max()
            .unwrap_or(0)
    }

    fn inv_acked(&self, conns: impl Fn(usize) -> bool) -> Vec<u64> {
        self.inv_acks
            .iter()
            .filter(|(c, _)| conns(*c))
            .map(|(_, v)| *v)
            .collect()
    }

    /// How many of the agent's connections were opened before `t`.
    fn conns_before(&self, t: Instant) -> usize {
        self.conns.iter().filter(|(at, _)| *at < t).count()
    }

    fn version(&self) -> u64 {
        self.versions.keys().next_back().copied().unwrap_or(0)
    }

    /// The agent's "discovery": a new version with one package more, every third version one
    /// package fewer, and the host's `rev` attribute set to the version.
    fn step(&mut self, host: &str, machine_id: &str) {
        let v = self.version() + 1;
        let mut inv = match self.versions.get(&(v - 1)) {
            Some(prev) => prev.clone(),
            None => base_inventory(host, machine_id),
        };
        for ci in &mut inv.cis {
            if ci.ci_type == ci_type::HOST {
                ci.attrs.insert("rev".into(), json!(v));
            }
        }
        if v > 1 {
            inv.cis.push(
                Ci::new(ci_type::PACKAGE, package_key(v), format!("k9pkg-{v}"))
                    .attr("version", "1.0"),
            );
        }
        if v.is_multiple_of(3) {
            let gone = package_key(v - 1);
            inv.cis
                .retain(|c| !(c.ci_type == ci_type::PACKAGE && c.key == gone));
        }
        inv.canonicalize();
        self.versions.insert(v, inv);
    }
}

fn package_key(v: u64) -> String {
    format!("k9pkg-{v}:amd64")
}

fn base_inventory(host: &str, machine_id: &str) -> Inventory {
    let mut inv = Inventory {
        cis: vec![
            Ci::new(ci_type::HOST, ci_type::HOST, host)
                .attr("machine_id", machine_id)
                .attr("rev", 1),
            Ci::new(ci_type::CPU, ci_type::CPU, "cpu").attr("cores", 4),
            Ci::new(ci_type::MEMORY, ci_type::MEMORY, "memory").attr("total_bytes", 1u64 << 33),
        ],
        relations: vec![
            Relation {
                from: CiRef::new(ci_type::HOST, ci_type::HOST),
                kind: relation::HAS.into(),
                to: CiRef::new(ci_type::CPU, ci_type::CPU),
            },
            Relation {
                from: CiRef::new(ci_type::HOST, ci_type::HOST),
                kind: relation::HAS.into(),
                to: CiRef::new(ci_type::MEMORY, ci_type::MEMORY),
            },
        ],
        connections: vec![],
    };
    inv.canonicalize();
    inv
}

/// The mountpoint batch `seq` reports and whether its value breaches the rule.
fn mountpoint(seq: u64) -> (String, bool) {
    let n = (seq - 1) / BLOCK;
    (format!("/k9/{n}"), (seq - 1) % BLOCK < BLOCK / 2)
}

fn wire_batch(seq: u64, ts_ms: i64) -> Vec<u8> {
    let (mount, breach) = mountpoint(seq);
    let device = format!("/dev/k9{}", (seq - 1) / BLOCK);
    let samples = vec![
        Sample {
            ts_ms,
            name: "load1".into(),
            labels: vec![],
            value: 0.25,
        },
        Sample {
            ts_ms,
            name: "filesystem_used_ratio".into(),
            labels: vec![("device".into(), device), ("mountpoint".into(), mount)],
            value: if breach { 0.95 } else { 0.40 },
        },
    ];
    let mut buf = Vec::new();
    codec::encode_into(
        &Message::Batch(Batch { seq, samples }),
        &mut buf,
        DEFAULT_MAX_FRAME,
    )
    .expect("encode batch");
    buf
}

struct Wire {
    host: String,
    log: Arc<Mutex<WireLog>>,
}

/// One wire agent: connects (again and again), replays what is unacknowledged, streams batches
/// and inventory until `stop`, then stops at the end of a block once everything is acknowledged.
async fn wire_agent(
    endpoint: Endpoint,
    addr: SocketAddr,
    identity: Identity,
    host: String,
    log: Arc<Mutex<WireLog>>,
    stop: Arc<AtomicBool>,
) {
    let mut unacked: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
    let mut last_ts = 0i64;
    loop {
        let hello = Hello {
            agent_id: identity.agent_id.clone(),
            hostname: host.clone(),
            version: env!("CARGO_PKG_VERSION").into(),
            capabilities: proto::CAPABILITIES.iter().map(|c| c.to_string()).collect(),
            interval_ms: 1_000,
        };
        let config = identity.client_config().expect("client config");
        let session = match tokio::time::timeout(
            Duration::from_secs(5),
            client::open_session(&endpoint, config, addr, hello),
        )
        .await
        {
            Ok(Ok(s)) => s,
            _ => {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let idx = {
            let mut l = lock(&log);
            l.conns.push((Instant::now(), session.welcome.last_seq));
            l.conns.len() - 1
        };
        let res = connection(
            &session.conn,
            idx,
            &host,
            &mut unacked,
            &mut last_ts,
            &log,
            &stop,
        )
        .await;
        match res {
            Ok(()) => {
                session.goodbye("test over").await;
                lock(&log).done = true;
                return;
            }
            Err(e) => lock(&log).lost.push(e),
        }
    }
}

async fn connection(
    conn: &Connection,
    idx: usize,
    host: &str,
    unacked: &mut BTreeMap<u64, Vec<u8>>,
    last_ts: &mut i64,
    log: &Arc<Mutex<WireLog>>,
    stop: &Arc<AtomicBool>,
) -> Result<(), String> {
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
    for bytes in unacked.values() {
        client::write_bytes(&mut send, bytes)
            .await
            .map_err(|e| e.to_string())?;
        lock(log).replayed += 1;
    }
    let (ack_tx, mut ack_rx) = tokio::sync::mpsc::unbounded_channel::<Result<u64, String>>();
    let reader = tokio::spawn(async move {
        let mut dec = FrameDecoder::new(64 * 1024);
        loop {
            let r = match client::read_message(&mut recv, &mut dec).await {
                Ok(Some(Message::Ack(a))) => Ok(a.seq),
                Ok(Some(other)) => Err(format!("kind {} on the batch stream", other.kind())),
                Ok(None) => Err("batch stream ended".into()),
                Err(e) => Err(e.to_string()),
            };
            let end = r.is_err();
            if ack_tx.send(r).is_err() || end {
                return;
            }
        }
    });
    let machine_id = format!("{:0>32}", hex::encode(host));
    let inventory = tokio::spawn(inventory_loop(
        conn.clone(),
        idx,
        host.to_string(),
        machine_id,
        log.clone(),
        stop.clone(),
    ));
    let mut tick = tokio::time::interval(BATCH_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let result = loop {
        tokio::select! {
            _ = tick.tick() => {
                let next = {
                    let mut l = lock(log);
                    // Stop only at the end of a block: every mountpoint ends cleared.
                    if stop.load(Ordering::SeqCst) && l.sent.is_multiple_of(BLOCK) {
                        None
                    } else if unacked.len() >= WINDOW {
                        Some(None)
                    } else {
                        l.sent += 1;
                        Some(Some(l.sent))
                    }
                };
                match next {
                    None if unacked.is_empty() => break Ok(()),
                    None | Some(None) => continue,
                    Some(Some(seq)) => {
                        let ts = vigil_runtime::clock::now_ms().max(*last_ts + 1);
                        *last_ts = ts;
                        let bytes = wire_batch(seq, ts);
                        unacked.insert(seq, bytes.clone());
                        if let Err(e) = client::write_bytes(&mut send, &bytes).await {
                            break Err(e.to_string());
                        }
                    }
                }
            }
            ack = ack_rx.recv() => match ack {
                Some(Ok(seq)) => {
                    lock(log).acks.push((idx, seq));
                    *unacked = unacked.split_off(&(seq + 1));
                }
                Some(Err(e)) => break Err(e),
                None => break Err("ack reader gone".into()),
            },
        }
    };
    reader.abort();
    match result {
        Ok(()) => {
            let _ = send.finish();
            match inventory.await {
                Ok(r) => r,
                Err(e) => Err(e.to_string()),
            }
        }
        Err(e) => {
            inventory.abort();
            Err(e)
        }
    }
}

/// A snapshot first on every connection, then a delta per new version; stops once the last
/// version is acknowledged after `stop`.
async fn inventory_loop(
    conn: Connection,
    idx: usize,
    host: String,
    machine_id: String,
    log: Arc<Mutex<WireLog>>,
    stop: Arc<AtomicBool>,
) -> Result<(), String> {
    let mut acked: Option<(u64, Inventory)> = None;
    loop {
        let stopping = stop.load(Ordering::SeqCst);
        let (version, current) = {
            let mut l = lock(&log);
            if !stopping || l.versions.is_empty() {
                l.step(&host, &machine_id);
            }
            let v = l.version();
            (v, l.versions[&v].clone())
        };
        if acked.as_ref().is_some_and(|(v, _)| *v == version) {
            return Ok(());
        }
        let msg = match &acked {
            None => Message::InventorySnapshot(InventorySnapshot {
                version,
                ts_ms: now_ms(),
                inventory: current.clone(),
            }),
            Some((base, inv)) => Message::InventoryDelta(InventoryDeltaMsg {
                base_version: *base,
                version,
                ts_ms: now_ms(),
                delta: inventory::diff(inv, &current),
            }),
        };
        lock(&log).inv_in_flight = Some((idx, version));
        let answer = exchange(&conn, &msg).await?;
        lock(&log).inv_in_flight = None;
        match answer {
            Message::InventoryAck(a) if a.version == version => {
                lock(&log).inv_acks.push((idx, version));
                acked = Some((version, current));
                if stopping {
                    return Ok(());
                }
            }
            Message::InventoryResync(_) => {
                lock(&log).inv_resyncs += 1;
                acked = None;
                continue;
            }
            other => return Err(format!("unexpected inventory answer {other:?}")),
        }
        tokio::time::sleep(INVENTORY_EVERY).await;
    }
}

async fn exchange(conn: &Connection, msg: &Message) -> Result<Message, String> {
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
    let mut bytes = Vec::new();
    codec::encode_into(msg, &mut bytes, MAX_INVENTORY_FRAME).map_err(|e| e.to_string())?;
    client::write_bytes(&mut send, &bytes)
        .await
        .map_err(|e| e.to_string())?;
    let _ = send.finish();
    let mut dec = FrameDecoder::new(64 * 1024);
    client::read_message(&mut recv, &mut dec)
        .await
        .map_err(|e| e.to_string())?
        .ok_or_else(|| "inventory stream closed without an answer".to_string())
}

// ---------------------------------------------------------------------------------------------
// Reading the store.

/// `(seq, payload)` of every batch stored for `agent`, by sequence number.
fn batches(store: &Store, agent: &str) -> Vec<(u64, Vec<u8>)> {
    let mut stmt = store
        .prepare("SELECT seq, payload FROM batches WHERE agent_id = ?1 ORDER BY seq")
        .expect("prepare");
    stmt.query_map([agent], |r| Ok((r.get::<_, i64>(0)? as u64, r.get(1)?)))
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("rows")
}

fn seqs(store: &Store, agent: &str) -> Vec<u64> {
    let mut stmt = store
        .prepare("SELECT seq FROM batches WHERE agent_id = ?1 ORDER BY seq")
        .expect("prepare");
    stmt.query_map([agent], |r| r.get::<_, i64>(0).map(|s| s as u64))
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("rows")
}

/// The samples of `payloads` that appear more than once (name, labels, time): none may.
fn duplicate_samples(payloads: &[(u64, Vec<u8>)]) -> Vec<String> {
    let mut seen = HashSet::new();
    let mut dups = Vec::new();
    for (seq, p) in payloads {
        let batch = match decode_body(kind::BATCH, p) {
            Ok(Message::Batch(b)) => b,
            other => panic!("seq {seq}: payload is not a batch: {other:?}"),
        };
        assert_eq!(batch.seq, *seq, "payload of seq {seq}");
        for s in batch.samples {
            let key = format!("{}{:?}@{}", s.name, s.labels, s.ts_ms);
            if !seen.insert(key.clone()) {
                dups.push(format!("seq {seq}: {key}"));
            }
        }
    }
    dups
}

fn stored_version(store: &Store, agent: &str) -> Option<u64> {
    store
        .query_row(
            "SELECT version FROM inventory_state WHERE agent_id = ?1",
            [agent],
            |r| r.get::<_, i64>(0),
        )
        .ok()
        .map(|v| v as u64)
}

/// What `inv` is as the CMDB keeps it: active CIs and relations.
fn expected_maps(inv: &Inventory) -> (CiMap, RelSet) {
    inventory_maps(&serde_json::to_value(inv).expect("inventory JSON"))
}

/// One `ci_history` row: (id, attribute, change, old, new).
type HistRow = (i64, String, String, Option<String>, Option<String>);

/// The history of the CI `agent`/`ty`/`key`, oldest first.
fn history(store: &Store, agent: &str, ty: &str, key: &str) -> Vec<HistRow> {
    let mut stmt = store
        .prepare(
            "SELECT h.id, h.attribute, h.change, h.old_value, h.new_value
             FROM ci_history h JOIN cis c ON c.id = h.ci_id
             WHERE c.agent_id = ?1 AND c.type = ?2 AND c.key = ?3 ORDER BY h.id",
        )
        .expect("prepare");
    stmt.query_map(params![agent, ty, key], |r| {
        Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
    })
    .expect("query")
    .collect::<Result<_, _>>()
    .expect("rows")
}

/// Every CI's history chain (`cis.last_history_id`, then `prev_id`) must hold exactly its
/// `ci_history` rows, newest first: no row missing from it (a gap), none twice, no stray link.
/// Returns (CIs, history rows).
fn check_chains(store: &Store) -> (u64, u64) {
    let mut rows: HashMap<i64, Vec<(i64, Option<i64>)>> = HashMap::new();
    let mut stmt = store
        .prepare("SELECT id, ci_id, prev_id FROM ci_history ORDER BY id DESC")
        .expect("prepare");
    let mut n_rows = 0u64;
    for r in stmt
        .query_map([], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, Option<i64>>(2)?,
            ))
        })
        .expect("query")
    {
        let (id, ci, prev) = r.expect("row");
        rows.entry(ci).or_default().push((id, prev));
        n_rows += 1;
    }
    let mut stmt = store
        .prepare("SELECT id, last_history_id FROM cis")
        .expect("prepare");
    let cis: Vec<(i64, Option<i64>)> = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("rows");
    for (ci, last) in &cis {
        let own = rows.remove(ci).unwrap_or_default();
        let by_id: HashMap<i64, Option<i64>> = own.iter().copied().collect();
        let mut walked = Vec::new();
        let mut at = *last;
        while let Some(id) = at {
            assert!(
                walked.len() <= own.len(),
                "CI {ci}: history chain longer than its rows (a cycle?): {walked:?}"
            );
            let prev = by_id.get(&id).unwrap_or_else(|| {
                panic!("CI {ci}: chain reaches row {id}, not one of its rows; walked {walked:?}")
            });
            walked.push(id);
            at = *prev;
        }
        let want: Vec<i64> = own.iter().map(|(id, _)| *id).collect();
        assert_eq!(
            walked, want,
            "CI {ci}: history chain vs its rows (newest first)"
        );
    }
    assert!(
        rows.is_empty(),
        "history rows of CIs that do not exist: {:?}",
        rows.keys().collect::<Vec<_>>()
    );
    (cis.len() as u64, n_rows)
}

/// SQLite's own checks of the file, foreign keys included, and no relation to a missing CI.
fn integrity(store: &Store) {
    let ok: String = store
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .expect("integrity_check");
    assert_eq!(ok, "ok", "PRAGMA integrity_check");
    let mut stmt = store.prepare("PRAGMA foreign_key_check").expect("prepare");
    let violations: Vec<String> = stmt
        .query_map([], |r| {
            Ok(format!(
                "{}: rowid {:?}",
                r.get::<_, String>(0)?,
                r.get::<_, Option<i64>>(1)?
            ))
        })
        .expect("foreign_key_check")
        .collect::<Result<_, _>>()
        .expect("rows");
    assert!(
        violations.is_empty(),
        "foreign key violations: {violations:?}"
    );
    let dangling = count(
        store,
        "SELECT COUNT(*) FROM relations r WHERE NOT EXISTS (SELECT 1 FROM cis WHERE id = r.from_ci)
         OR NOT EXISTS (SELECT 1 FROM cis WHERE id = r.to_ci)",
    );
    assert_eq!(dangling, 0, "relations to CIs that do not exist");
}

fn count(store: &Store, sql: &str) -> u64 {
    store
        .query_row(sql, [], |r| r.get::<_, i64>(0))
        .unwrap_or_else(|e| panic!("{sql}: {e}")) as u64
}

/// One incident of the store.
#[derive(Debug, Clone)]
struct Inc {
    id: i64,
    dedup_key: String,
    rule: String,
    agent: Option<String>,
    ci_key: String,
    state: String,
    reopen_count: i64,
    announced: bool,
}

fn store_incidents(store: &Store) -> BTreeMap<i64, Inc> {
    let mut stmt = store
        .prepare(
            "SELECT id, dedup_key, rule, agent_id, ci_key, state, reopen_count, announced
             FROM incidents",
        )
        .expect("prepare");
    stmt.query_map([], |r| {
        Ok(Inc {
            id: r.get(0)?,
            dedup_key: r.get(1)?,
            rule: r.get(2)?,
            agent: r.get(3)?,
            ci_key: r.get(4)?,
            state: r.get(5)?,
            reopen_count: r.get(6)?,
            announced: r.get::<_, i64>(7)? != 0,
        })
    })
    .expect("query")
    .map(|r| r.map(|i| (i.id, i)))
    .collect::<Result<_, _>>()
    .expect("rows")
}

/// Timeline kinds of incident `id`, oldest first.
fn timeline(store: &Store, id: i64) -> Vec<String> {
    let mut stmt = store
        .prepare("SELECT kind FROM incident_events WHERE incident_id = ?1 ORDER BY id")
        .expect("prepare");
    stmt.query_map([id], |r| r.get(0))
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("rows")
}

/// One outbox row: (incident, event, idempotency key, delivered).
type OutRow = (i64, String, String, bool);

fn outbox(store: &Store) -> Vec<OutRow> {
    let mut stmt = store
        .prepare(
            "SELECT incident_id, event, idempotency_key, delivered_ms IS NOT NULL
             FROM notifications WHERE webhook = ?1 ORDER BY id",
        )
        .expect("prepare");
    stmt.query_map([WEBHOOK], |r| {
        Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
    })
    .expect("query")
    .collect::<Result<_, _>>()
    .expect("rows")
}

/// Incidents of the rule through the API (every page).
fn api_incidents(c: &Collector, token: &str) -> Vec<Value> {
    let mut all = Vec::new();
    loop {
        let page = incidents(
            c,
            token,
            &format!("rule={RULE}&limit=500&offset={}", all.len()),
        );
        if page.is_empty() {
            return all;
        }
        all.extend(page);
    }
}

/// `inventory … stored version=N` lines of a real agent's log: the versions it saw acknowledged.
fn logged_inventory_acks(log: &str) -> Vec<u64> {
    log.lines()
        .filter(|l| l.contains("inventory snapshot stored") || l.contains("inventory delta stored"))
        .filter_map(|l| {
            l.split_whitespace()
                .find_map(|w| w.strip_prefix("version="))
                .and_then(|v| v.parse().ok())
        })
        .collect()
}

/// Adds package `name` to a fixture root's dpkg status file, replaced atomically as dpkg does.
fn add_package(root: &Path, name: &str) {
    let status = root.join("var/lib/dpkg/status");
    let mut text = std::fs::read_to_string(&status).expect("read status");
    text.push_str(&format!(
        "\nPackage: {name}\nStatus: install ok installed\nArchitecture: amd64\n\
         Version: 1.0\nDescription: kill9 test package\n"
    ));
    let tmp = root.join("var/lib/dpkg/status-new");
    std::fs::write(&tmp, text).expect("write status");
    std::fs::rename(&tmp, &status).expect("replace status");
}

/// Starts `vigil-agent simulate --json` with identities in `dir` and its report in `dir/report`.
fn simulate(collector: SocketAddr, token: &str, dir: &Path, report: &str, args: &[&str]) -> Proc {
    std::fs::create_dir_all(dir).expect("sim dir");
    let out = std::fs::File::create(dir.join(report)).expect("report file");
    let mut cmd = std::process::Command::new(bin("vigil-agent"));
    cmd.arg("simulate")
        .arg("--collector")
        .arg(collector.to_string())
        .arg("--token")
        .arg(token)
        .arg("--data-dir")
        .arg(dir)
        .arg("--json")
        .args(args)
        .stdout(std::process::Stdio::from(out));
    Proc::spawn(
        "vigil-agent simulate",
        cmd,
        dir.join(report.replace(".json", ".log")),
    )
}

/// The collector's configuration: the rule (a fresh mountpoint above 0.9 opens an incident at
/// once), the webhook (that rule only) and a liveness bound loose enough for a loaded machine to
/// reconnect 206 agents within it.
fn collector_extra(webhook_url: &str) -> String {
    format!(
        "[agents]\ndown_after_intervals = 10\n\
         [[webhook]]\nname = \"{WEBHOOK}\"\nurl = \"{webhook_url}\"\nrules = [\"{RULE}\"]\n\
         [[rule]]\nname = \"{RULE}\"\nmetric = \"filesystem_used_ratio\"\nabove = 0.9\n\
         clear = 0.6\nfor = \"0s\"\nimpact = \"high\"\nurgency = \"medium\"\n\
         [rule.scope]\ntype = \"filesystem\"\nhost = \"kill9-*\"\n"
    )
}

fn connected(c: &Collector) -> u64 {
    metric_value(&metrics(c), "vigil_agents_connected").unwrap_or(0.0) as u64
}

/// A real agent discovering a copy of a fixture root every second.
struct Real {
    root: PathBuf,
    dir: PathBuf,
    proc: Proc,
}

impl Real {
    fn id(&self) -> String {
        agent_id(&self.dir).expect("agent id")
    }
}

/// Adds package `k9real-<n>` to every real agent's root every 700 ms, when ticked.
struct Packages {
    n: usize,
    last: Instant,
}

impl Packages {
    fn tick(&mut self, reals: &[Real]) {
        if self.last.elapsed() > Duration::from_millis(700) {
            self.n += 1;
            for r in reals {
                add_package(&r.root, &format!("k9real-{}", self.n));
            }
            self.last = Instant::now();
        }
    }
}

fn start_real_agents(tmp: &Path, quic: SocketAddr, token: &str) -> Vec<Real> {
    ["host-a", "host-b"]
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let root = tmp.join(format!("root-{i}"));
            copy_tree(&fixture(name), &root);
            let dir = tmp.join(format!("agent-{i}"));
            let proc = spawn_agent_with(
                quic,
                Some(token),
                &dir,
                "1s",
                &[
                    "--root",
                    root.to_str().expect("path"),
                    "--discovery-interval",
                    "1s",
                ],
            );
            Real { root, dir, proc }
        })
        .collect()
}

fn start_wire_agents(
    rt: &tokio::runtime::Runtime,
    quic: SocketAddr,
    token: &str,
    stop: &Arc<AtomicBool>,
) -> (Vec<Wire>, Vec<tokio::task::JoinHandle<()>>) {
    let endpoint = {
        let _in = rt.enter();
        client::client_endpoint(quic).expect("endpoint")
    };
    let token = EnrollToken::from_str(token.trim()).expect("token");
    let mut wires = Vec::new();
    let mut tasks = Vec::new();
    for i in 0..WIRE_AGENTS {
        let host = format!("kill9-w{i}");
        let identity = rt
            .block_on(async {
                tokio::time::timeout(
                    Duration::from_secs(60),
                    client::enroll(&endpoint, quic, &token, &host),
                )
                .await
            })
            .expect("enrollment in time")
            .expect("enrollment");
        let log = Arc::new(Mutex::new(WireLog {
            agent_id: identity.agent_id.clone(),
            ..Default::default()
        }));
        tasks.push(rt.spawn(wire_agent(
            endpoint.clone(),
            quic,
            identity,
            host.clone(),
            log.clone(),
            stop.clone(),
        )));
        wires.push(Wire { host, log });
    }
    (wires, tasks)
}

/// Acknowledges open incidents of the rule through the API until `n` were (the system may
/// resolve one first: 409). Returns the ids acknowledged and how many were refused.
fn acknowledge_open_incidents(c: &Collector, token: &str, n: usize) -> (Vec<i64>, usize) {
    let mut acked = Vec::new();
    let mut refused = 0;
    wait_until(PHASE, "incidents acknowledged through the API", || {
        for inc in api_incidents(c, token) {
            let id = inc["id"].as_i64().expect("id");
            if inc["state"] != "open" || acked.contains(&id) {
                continue;
            }
            let (status, body) = api_post(
                c,
                token,
                &format!("/incidents/{id}/acknowledge"),
                &json!({"note": "kill9"}),
            );
            match status {
                200 => acked.push(id),
                409 => refused += 1,
                _ => panic!("acknowledge {id}: {status} {body}"),
            }
        }
        (acked.len() >= n).then_some(())
    });
    (acked, refused)
}

/// The instant of the kill and what the wire agents had then.
struct Kill {
    at: Instant,
    /// How long the test looked for the moment.
    picked_after: Duration,
    /// Per wire agent: the highest sequence number sent and acknowledged, the inventory version
    /// unanswered.
    sent: Vec<u64>,
    acked: Vec<u64>,
    inv_in_flight: Vec<Option<u64>>,
}

/// SIGKILLs the collector at a moment with work in flight, checking until then that whatever a
/// wire agent saw acknowledged is in the store.
///
/// Best is a moment when a wire agent has a batch committed whose ack it has not got yet (it
/// comes again after the restart and must be dropped as a duplicate) while an inventory message
/// is unanswered; after 10 s without one, a committed unacknowledged batch alone; after 20 s,
/// any batch and inventory message in flight. The logs are held while the collector dies, so
/// what they say then is what was sent before it.
fn kill_with_work_in_flight(collector: &mut Collector, wires: &[Wire]) -> Kill {
    let store = open_store(&collector.data_dir);
    let mut max_seq = store
        .prepare(&format!(
            "SELECT agent_id, MAX(seq) FROM batches WHERE agent_id IN ({}) GROUP BY agent_id",
            vec!["?"; wires.len()].join(", ")
        ))
        .expect("prepare");
    let picking = Instant::now();
    loop {
        let logs: Vec<MutexGuard<'_, WireLog>> = wires.iter().map(|w| lock(&w.log)).collect();
        let acked: Vec<u64> = logs.iter().map(|l| l.acked_max(|_| true)).collect();
        // Read after the acks: whatever an agent saw acknowledged must be stored already.
        let max: HashMap<String, u64> = max_seq
            .query_map(
                rusqlite::params_from_iter(logs.iter().map(|l| l.agent_id.as_str())),
                |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64)),
            )
            .expect("max seq")
            .collect::<Result<_, _>>()
            .expect("rows");
        let stored: Vec<u64> = logs
            .iter()
            .map(|l| max.get(&l.agent_id).copied().unwrap_or(0))
            .collect();
        for (((w, l), a), s) in wires.iter().zip(&logs).zip(&acked).zip(&stored) {
            assert!(
                s >= a,
                "{}: batch {a} acknowledged, the store holds up to {s}",
                w.host
            );
            let v = l.inv_acks.last().map_or(0, |(_, v)| *v);
            let stored_v = stored_version(&store, &l.agent_id).unwrap_or(0);
            assert!(
                stored_v >= v,
                "{}: inventory version {v} acknowledged, {stored_v} stored",
                w.host
            );
        }
        let in_flight = logs.iter().zip(&acked).any(|(l, a)| l.sent > *a);
        let inv_in_flight = logs.iter().any(|l| l.inv_in_flight.is_some());
        let committed_unacked = stored.iter().zip(&acked).any(|(s, a)| s > a);
        let waited = picking.elapsed();
        let now = if waited < Duration::from_secs(10) {
            inv_in_flight && committed_unacked
        } else if waited < Duration::from_secs(20) {
            committed_unacked
        } else {
            in_flight && inv_in_flight
        };
        if now {
            collector.proc.kill();
            return Kill {
                at: Instant::now(),
                picked_after: waited,
                sent: logs.iter().map(|l| l.sent).collect(),
                acked,
                inv_in_flight: logs
                    .iter()
                    .map(|l| l.inv_in_flight.map(|(_, v)| v))
                    .collect(),
            };
        }
        drop(logs);
        assert!(
            waited < Duration::from_secs(40),
            "no moment with batches and inventory in flight within 40 s"
        );
        // Polled as fast as it goes: a batch is committed and not yet acknowledged for well
        // under a millisecond.
        std::thread::yield_now();
    }
}

/// What the test saw acknowledged or visible before the kill, besides the wire agents' logs.
struct Before {
    /// Per real agent: its spool's acknowledged sequence number and the inventory versions its
    /// log says were stored.
    real: Vec<(u64, Vec<u64>)>,
    /// Incidents of the rule listed through the API.
    incidents: Vec<Value>,
    /// Incidents acknowledged through the API (200).
    acked_by_api: Vec<i64>,
    /// Webhook deliveries received.
    delivered: Vec<Received>,
}

/// The figures printed at the end (the README's reliability section quotes them).
#[derive(Default)]
struct Figures {
    ramp: Duration,
    load: Duration,
    picked_after: Duration,
    batches_acked_before: u64,
    in_flight_at_kill: u64,
    acked_late: u64,
    stored_unacked: u64,
    inv_in_flight_at_kill: usize,
    sim_samples_acked: u64,
    sim_samples_stored: u64,
    reconnected: Duration,
    replayed: u64,
    duplicates_dropped: u64,
    acked_after: u64,
    sim_batches: usize,
    cis: u64,
    history_rows: u64,
    incidents_before: usize,
    incidents: usize,
    incidents_active: usize,
    acked_by_api: usize,
    acks_refused: usize,
    builtin_incidents: usize,
    outbox_before: usize,
    outbox: usize,
    redelivered: usize,
}

impl Figures {
    fn print(&self, started: Instant) {
        let all = SIMS + WIRE_AGENTS + REAL_AGENTS;
        eprintln!(
            "kill9 figures: agents {all} ({SIMS} simulated x {SIM_METRICS} metrics at 1 s, \
             {WIRE_AGENTS} wire, {REAL_AGENTS} real); all connected {:.1} s after start; \
             SIGKILL after {:.1} s (the moment found in {:.1} s)",
            self.ramp.as_secs_f64(),
            self.load.as_secs_f64(),
            self.picked_after.as_secs_f64()
        );
        eprintln!(
            "kill9 figures: wire batches acknowledged before the kill {}, in flight at the kill {} \
             (acks of {} already on their way, {} stored without their ack); inventory messages \
             in flight {}; simulated samples acknowledged {} <= stored {}",
            self.batches_acked_before,
            self.in_flight_at_kill,
            self.acked_late,
            self.stored_unacked,
            self.inv_in_flight_at_kill,
            self.sim_samples_acked,
            self.sim_samples_stored
        );
        eprintln!(
            "kill9 figures: restart to all {all} reconnected {:.1} s; wire batches replayed {}, \
             dropped as duplicates {}, acknowledged after the restart {}; simulated batches \
             stored in all {}",
            self.reconnected.as_secs_f64(),
            self.replayed,
            self.duplicates_dropped,
            self.acked_after,
            self.sim_batches
        );
        eprintln!(
            "kill9 figures: CMDB {} CIs, {} history rows, every chain whole; incidents of {RULE}: \
             {} before the kill, {} in all ({} still active), {} acknowledged through the API \
             ({} refused: resolved first), built-in incidents {}; outbox rows {} before the \
             kill, {} in all, {} delivered twice (at least once)",
            self.cis,
            self.history_rows,
            self.incidents_before,
            self.incidents,
            self.incidents_active,
            self.acked_by_api,
            self.acks_refused,
            self.builtin_incidents,
            self.outbox_before,
            self.outbox,
            self.redelivered
        );
        eprintln!(
            "kill9 figures: missing nothing, duplicated nothing; whole run {:.1} s",
            started.elapsed().as_secs_f64()
        );
    }
}

/// The store the dead collector left holds everything it acknowledged: the wire agents' batches
/// and inventory versions, the real agents' spool watermark and logged inventory acks, the
/// simulation's acknowledged samples (checked later, from its report), the incidents seen
/// through the API with their timelines and outbox rows, and the deliveries made.
///
/// Returns each wire agent's highest stored sequence number.
fn check_after_kill(
    dir: &Path,
    wires: &[Wire],
    reals: &[Real],
    sim_ids: &[String],
    kill: &Kill,
    before: &Before,
    fig: &mut Figures,
) -> Vec<u64> {
    let mut stored_last = Vec::new();
    let store = open_store(dir);
    integrity(&store);
    for (i, w) in wires.iter().enumerate() {
        let l = lock(&w.log);
        let n = l.conns_before(kill.at);
        assert_eq!(
            n, 1,
            "{}: reconnected before the kill: {:?}",
            w.host, l.lost
        );
        // Acks the dying collector had sent that arrived after the kill count as before it.
        let acked = l.acked_max(|c| c < n);
        fig.batches_acked_before += acked;
        fig.in_flight_at_kill += kill.sent[i] - kill.acked[i];
        fig.acked_late += acked - kill.acked[i];
        let stored = seqs(&store, &l.agent_id);
        assert_contiguous(&stored, &format!("{} after SIGKILL", w.host));
        let last = stored.last().copied().unwrap_or(0);
        assert!(
            last >= acked,
            "{}: acknowledged up to {acked}, stored up to {last}",
            w.host
        );
        assert!(last <= kill.sent[i], "{}: stored {last} > sent", w.host);
        fig.stored_unacked += last - acked;
        stored_last.push(last);
        // Inventory: the stored version is the last acknowledged one or the one in flight, and
        // the CMDB holds exactly that version.
        let v_acked = l
            .inv_acked(|c| c < n)
            .last()
            .copied()
            .expect("inventory acks before the kill");
        let v = stored_version(&store, &l.agent_id).expect("inventory state");
        let in_flight = kill.inv_in_flight[i];
        fig.inv_in_flight_at_kill += usize::from(in_flight.is_some());
        assert!(
            v == v_acked || Some(v) == in_flight,
            "{}: stored inventory version {v}, acknowledged {v_acked}, in flight {in_flight:?}",
            w.host
        );
        assert_eq!(
            stored_maps(&store, &l.agent_id),
            expected_maps(&l.versions[&v]),
            "{}: the CMDB after SIGKILL vs version {v}",
            w.host
        );
    }
    for (r, (spool_acked, inv_acks)) in reals.iter().zip(&before.real) {
        let id = r.id();
        let stored = seqs(&store, &id);
        assert_contiguous(&stored, &format!("real agent {id} after SIGKILL"));
        assert!(
            stored.last().is_some_and(|l| l >= spool_acked),
            "real agent {id}: spool acknowledged {spool_acked}, stored {:?}",
            stored.last()
        );
        let v = stored_version(&store, &id).expect("inventory state");
        let acked = inv_acks.iter().max().copied().unwrap_or(0);
        assert!(
            v >= acked,
            "real agent {id}: inventory version {acked} acknowledged, {v} stored"
        );
    }
    // Simulated agents stream in order: what is stored of each is a prefix.
    fig.sim_samples_stored = SIM_METRICS
        * sim_ids
            .iter()
            .map(|s| {
                let stored = seqs(&store, s);
                assert_contiguous(&stored, &format!("simulated agent {s} after SIGKILL"));
                stored.len() as u64
            })
            .sum::<u64>();
    let incidents = store_incidents(&store);
    let out = outbox(&store);
    for inc in &before.incidents {
        let id = inc["id"].as_i64().expect("id");
        let s = incidents
            .get(&id)
            .unwrap_or_else(|| panic!("incident {id} seen through the API is gone: {inc}"));
        assert_eq!(s.rule, RULE);
        let kinds = timeline(&store, id);
        assert!(kinds.contains(&"opened".to_string()), "{id}: {kinds:?}");
        if s.announced {
            assert!(
                out.iter().any(|(i, e, _, _)| *i == id && e == "opened"),
                "incident {id} announced but no `opened` outbox row"
            );
        }
    }
    for id in &before.acked_by_api {
        let kinds = timeline(&store, *id);
        assert!(
            kinds.contains(&"acknowledged".to_string()),
            "{id}: {kinds:?}"
        );
        assert!(
            out.iter()
                .any(|(i, e, _, _)| i == id && e == "acknowledged"),
            "incident {id} acknowledged through the API: no outbox row"
        );
    }
    let keys: HashSet<&str> = out.iter().map(|(_, _, k, _)| k.as_str()).collect();
    for r in &before.delivered {
        let key = r.header("Idempotency-Key").expect("key");
        assert!(
            keys.contains(key),
            "{key} delivered before the kill is not in the outbox"
        );
    }
    fig.incidents_before = incidents.values().filter(|i| i.rule == RULE).count();
    fig.outbox_before = out.len();
    stored_last
}

/// Every batch of every agent stored once (no gap, no repeat) with no sample twice; the
/// restarted collector's welcome said what the dead one had stored; the wire agents' stored
/// batches replayed were dropped as duplicates, one for one; no inventory resync was needed.
#[allow(clippy::too_many_arguments)]
fn check_batches(
    store: &Store,
    collector: &Collector,
    wires: &[Wire],
    reals: &[Real],
    sim_ids: &[String],
    kill: &Kill,
    stored_at_kill: &[u64],
    fig: &mut Figures,
) {
    for (w, stored_then) in wires.iter().zip(stored_at_kill) {
        let l = lock(&w.log);
        let n = l.conns_before(kill.at);
        assert_eq!(
            l.conns[n].1,
            Some(*stored_then).filter(|s| *s > 0),
            "{}: the welcome after the restart vs what was stored at the kill",
            w.host
        );
        assert_eq!(l.inv_resyncs, 0, "{}: inventory resync requests", w.host);
        fig.replayed += l.replayed;
        fig.acked_after += l.acked_max(|_| true) - l.acked_max(|c| c < n);
        let stored = batches(store, &l.agent_id);
        let s: Vec<u64> = stored.iter().map(|(s, _)| *s).collect();
        assert_eq!(s.first(), Some(&1), "{}", w.host);
        assert_contiguous(&s, &w.host);
        assert_eq!(
            s.last(),
            Some(&l.sent),
            "{}: every batch sent is stored",
            w.host
        );
        assert_eq!(
            duplicate_samples(&stored),
            Vec::<String>::new(),
            "{}",
            w.host
        );
    }
    for r in reals {
        let id = r.id();
        let stored = batches(store, &id);
        let s: Vec<u64> = stored.iter().map(|(s, _)| *s).collect();
        assert_eq!(s.first(), Some(&1), "real agent {id}");
        assert_contiguous(&s, &format!("real agent {id}"));
        let (acked, _) = spool_state(&r.dir).expect("spool state");
        assert!(s.last().is_some_and(|l| *l >= acked), "real agent {id}");
        assert_eq!(
            duplicate_samples(&stored),
            Vec::<String>::new(),
            "real agent {id}"
        );
    }
    for s in sim_ids {
        let stored = batches(store, s);
        let seqs: Vec<u64> = stored.iter().map(|(s, _)| *s).collect();
        assert_eq!(seqs.first(), Some(&1), "simulated agent {s}");
        assert_contiguous(&seqs, &format!("simulated agent {s}"));
        assert_eq!(
            duplicate_samples(&stored),
            Vec::<String>::new(),
            "simulated agent {s}"
        );
        fig.sim_batches += seqs.len();
    }
    fig.duplicates_dropped =
        metric_value(&metrics(collector), "vigil_ingest_duplicate_batches_total")
            .expect("duplicate counter") as u64;
    // Only the wire agents send stored batches again (a real agent drops what the welcome says
    // is stored, a simulated one numbers on from it).
    assert_eq!(
        fig.duplicates_dropped, fig.stored_unacked,
        "batches dropped as duplicates vs wire batches stored without their ack"
    );
}

/// Every history chain whole; each wire agent's CMDB is its last version, each package added
/// once (and removed at most once), the host's `rev` one `changed` row per stored version
/// without a gap or a repeat, each acknowledged version among them; each real agent's CMDB is
/// what `vigil-agent inventory` sees on its root, each added package added once.
fn check_cmdb(store: &Store, wires: &[Wire], reals: &[Real], packages: usize, fig: &mut Figures) {
    (fig.cis, fig.history_rows) = check_chains(store);
    for w in wires {
        let l = lock(&w.log);
        let last = l.version();
        assert_eq!(stored_version(store, &l.agent_id), Some(last), "{}", w.host);
        assert_eq!(
            stored_maps(store, &l.agent_id),
            expected_maps(&l.versions[&last]),
            "{}: the CMDB vs version {last}",
            w.host
        );
        for v in 2..=last {
            let h = history(store, &l.agent_id, ci_type::PACKAGE, &package_key(v));
            let changes: Vec<&str> = h.iter().map(|(_, _, c, _, _)| c.as_str()).collect();
            let removed = l.versions[&last]
                .get(&CiRef::new(ci_type::PACKAGE, package_key(v)))
                .is_none();
            // A package added and removed by versions the collector never got (a delta lost
            // in the kill, its successor folded into the reconnect's snapshot) never existed
            // there.
            if !(h.is_empty() && removed) {
                let want: &[&str] = if removed {
                    &["added", "removed"]
                } else {
                    &["added"]
                };
                assert_eq!(changes, want, "{}: history of {}", w.host, package_key(v));
            }
        }
        let revs: Vec<(Option<u64>, u64)> = history(store, &l.agent_id, ci_type::HOST, "host")
            .into_iter()
            .filter(|(_, a, c, _, _)| a == "rev" && c == "changed")
            .map(|(_, _, _, o, n)| {
                (
                    o.and_then(|o| o.parse().ok()),
                    n.and_then(|n| n.parse().ok()).expect("rev value"),
                )
            })
            .collect();
        for pair in revs.windows(2) {
            assert_eq!(
                pair[1].0,
                Some(pair[0].1),
                "{}: `rev` history has a gap or a repeat: {revs:?}",
                w.host
            );
            assert!(
                pair[1].1 > pair[0].1,
                "{}: `rev` went back: {revs:?}",
                w.host
            );
        }
        let first = l.inv_acks.first().map_or(0, |(_, v)| *v);
        for (_, v) in &l.inv_acks {
            assert!(
                *v == first || revs.iter().any(|(_, n)| n == v),
                "{}: acknowledged version {v} has no history row: {revs:?}",
                w.host
            );
        }
    }
    for r in reals {
        let id = r.id();
        let seen = inventory_maps(&agent_inventory(&[
            "--root",
            r.root.to_str().expect("path"),
        ]));
        assert_eq!(
            stored_maps(store, &id),
            seen,
            "real agent {id}: the CMDB vs its root"
        );
        for n in 1..=packages {
            let h = history(store, &id, ci_type::PACKAGE, &format!("k9real-{n}:amd64"));
            let changes: Vec<&str> = h.iter().map(|(_, _, c, _, _)| c.as_str()).collect();
            assert_eq!(changes, ["added"], "real agent {id}: k9real-{n}");
        }
    }
}

/// Every incident seen before the kill is there (its state moved on only forward), every
/// mountpoint that breached has one, none twice for one (rule, CI), none reopened by a replayed
/// sample, each timeline event once, each notification once in the outbox, and the receiver got
/// every outbox row (and nothing else).
#[allow(clippy::too_many_arguments)]
fn check_incidents(
    store: &Store,
    collector: &Collector,
    token: &str,
    wires: &[Wire],
    before: &Before,
    receiver: &Receiver,
    out: &[OutRow],
    fig: &mut Figures,
) {
    let incidents = store_incidents(store);
    let active_twice = count(
        store,
        "SELECT COUNT(*) FROM (SELECT dedup_key FROM incidents
         WHERE state IN ('open', 'acknowledged') GROUP BY dedup_key HAVING COUNT(*) > 1)",
    );
    assert_eq!(active_twice, 0, "two active incidents for one (rule, CI)");
    let mut per_key: HashMap<&str, usize> = HashMap::new();
    for i in incidents.values() {
        *per_key.entry(i.dedup_key.as_str()).or_default() += 1;
    }
    let wire_ids: Vec<String> = wires
        .iter()
        .map(|w| lock(&w.log).agent_id.clone())
        .collect();
    let ours: Vec<&Inc> = incidents.values().filter(|i| i.rule == RULE).collect();
    for i in &ours {
        assert_eq!(
            per_key[i.dedup_key.as_str()],
            1,
            "{i:?}: two incidents, one mountpoint"
        );
        assert_eq!(
            i.reopen_count, 0,
            "{i:?} reopened: a replayed sample counted twice?"
        );
        assert!(wire_ids.contains(i.agent.as_ref().expect("agent")), "{i:?}");
        let kinds = timeline(store, i.id);
        assert_eq!(kinds.first().map(String::as_str), Some("opened"), "{i:?}");
        for k in ["opened", "resolved", "acknowledged", "reopened"] {
            assert!(
                kinds.iter().filter(|x| *x == k).count() <= 1,
                "{i:?}: `{k}` twice in {kinds:?}"
            );
        }
    }
    for inc in &before.incidents {
        let id = inc["id"].as_i64().expect("id");
        let now = incidents
            .get(&id)
            .unwrap_or_else(|| panic!("incident {id} gone"));
        let then = inc["state"].as_str().expect("state");
        let allowed: &[&str] = match then {
            "open" => &["open", "acknowledged", "resolved", "closed"],
            "acknowledged" => &["acknowledged", "resolved", "closed"],
            _ => &["resolved", "closed"],
        };
        assert!(
            allowed.contains(&now.state.as_str()),
            "incident {id}: {then} before the kill, {} after",
            now.state
        );
        assert_eq!(inc["ci"]["key"], now.ci_key.as_str());
        let detail = api_get(collector, token, &format!("/incidents/{id}"));
        assert!(timeline_kinds(&detail).contains(&"opened"), "{detail}");
    }
    let mut events: HashMap<(i64, &str), usize> = HashMap::new();
    for (i, e, _, _) in out {
        *events.entry((*i, e.as_str())).or_default() += 1;
    }
    let twice: Vec<_> = events.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "outbox rows twice: {twice:?}");
    for i in ours.iter().filter(|i| i.announced) {
        assert_eq!(events.get(&(i.id, "opened")), Some(&1), "{i:?}");
        if matches!(i.state.as_str(), "resolved" | "closed") {
            assert_eq!(events.get(&(i.id, "resolved")), Some(&1), "{i:?}");
        }
    }
    for id in &before.acked_by_api {
        assert_eq!(
            events.get(&(*id, "acknowledged")),
            Some(&1),
            "incident {id}"
        );
    }
    let mut received: HashMap<String, usize> = HashMap::new();
    for r in receiver.received() {
        *received
            .entry(r.header("Idempotency-Key").expect("key").to_string())
            .or_default() += 1;
    }
    let keys: HashSet<&str> = out.iter().map(|(_, _, k, _)| k.as_str()).collect();
    for k in received.keys() {
        assert!(keys.contains(k.as_str()), "received {k}, not in the outbox");
    }
    for k in &keys {
        assert!(received.contains_key(*k), "outbox row {k} never received");
    }
    // Every mountpoint that breached has its incident: a batch is acknowledged only once the
    // engine has evaluated it (see `an_acknowledged_breach_keeps_its_incident_through_a_sigkill`),
    // and one not acknowledged is sent again.
    let mut breached: BTreeSet<(String, String)> = BTreeSet::new();
    for w in wires {
        let l = lock(&w.log);
        for seq in 1..=l.sent {
            if let (mount, true) = mountpoint(seq) {
                breached.insert((l.agent_id.clone(), mount));
            }
        }
    }
    let with_incident: BTreeSet<(String, String)> = ours
        .iter()
        .map(|i| (i.agent.clone().expect("agent"), i.ci_key.clone()))
        .collect();
    let missing: Vec<_> = breached.difference(&with_incident).collect();
    assert!(
        missing.is_empty(),
        "breaches stored without an incident: {missing:?}"
    );
    fig.incidents = ours.len();
    fig.incidents_active = ours
        .iter()
        .filter(|i| matches!(i.state.as_str(), "open" | "acknowledged"))
        .count();
    fig.builtin_incidents = incidents.len() - ours.len();
    fig.outbox = out.len();
    fig.redelivered = received.values().filter(|n| **n > 1).count();
}

// ---------------------------------------------------------------------------------------------

#[test]
fn collector_sigkill_under_load_loses_nothing_acknowledged_and_duplicates_nothing() {
    let started = Instant::now();
    let mut fig = Figures::default();
    let tmp = tempfile::tempdir().expect("tempdir");
    let receiver = Receiver::start();
    let any: SocketAddr = "127.0.0.1:0".parse().expect("addr");
    let dir = tmp.path().join("collector");
    let extra = collector_extra(&receiver.url());
    let mut collector = spawn_collector_with(&dir, any, any, &extra);
    let (quic, http) = (collector.quic, collector.http);
    let token = enroll_token(&dir, &[]);
    let operator = api_token(&dir, "operator");

    let mut reals = start_real_agents(tmp.path(), quic, &token);
    let sim_dir = tmp.path().join("sim");
    let sim_args = [
        "--agents".to_string(),
        SIMS.to_string(),
        "--interval".into(),
        "1s".into(),
        "--metrics-per-agent".into(),
        SIM_METRICS.to_string(),
        "--duration".into(),
        "600s".into(),
    ];
    let sim_args: Vec<&str> = sim_args.iter().map(String::as_str).collect();
    let mut sim = simulate(quic, &token, &sim_dir, "report-1.json", &sim_args);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let stop = Arc::new(AtomicBool::new(false));
    let (wires, tasks) = start_wire_agents(&rt, quic, &token, &stop);

    // Load builds up: every agent connected for 5 s, every one with batches stored, the wire
    // agents through five mountpoints and ten inventory versions, incidents opened and
    // delivered, the real agents' packages reconciled.
    let all = (SIMS + WIRE_AGENTS + REAL_AGENTS) as u64;
    let mut packages = Packages {
        n: 0,
        last: Instant::now(),
    };
    let store = open_store(&dir);
    let mut ramp = None;
    let sim_ids: Vec<String> = wait_until(PHASE, "load to build up", || {
        packages.tick(&reals);
        for r in &mut reals {
            assert!(r.proc.is_running(), "agent exited; log:\n{}", r.proc.logs());
        }
        assert!(sim.is_running(), "simulate exited; log:\n{}", sim.logs());
        if ramp.is_none() && connected(&collector) >= all {
            ramp = Some(started.elapsed());
        }
        if ramp.is_none_or(|r| started.elapsed() < r + Duration::from_secs(5)) {
            return None;
        }
        let sim_ids: Vec<String> = (0..SIMS)
            .map(|i| agent_id(&sim_dir.join(format!("sim-{i}"))))
            .collect::<Option<_>>()?;
        let streaming = count(
            &store,
            "SELECT COUNT(*) FROM agents a
             WHERE EXISTS (SELECT 1 FROM batches b WHERE b.agent_id = a.id)",
        );
        let wires_ok = wires.iter().all(|w| {
            let l = lock(&w.log);
            l.acked_max(|_| true) >= 5 * BLOCK && l.inv_acks.len() >= 10
        });
        let reals_ok = reals.iter().all(|r| {
            spool_state(&r.dir).is_some_and(|(a, _)| a >= 3)
                && logged_inventory_acks(&r.proc.logs()).len() >= 2
        });
        let opened = count(
            &store,
            &format!("SELECT COUNT(*) FROM incidents WHERE rule = '{RULE}'"),
        );
        (streaming >= all && wires_ok && reals_ok && opened >= 8 && receiver.received().len() >= 8)
            .then_some(sim_ids)
    });
    drop(store);
    fig.ramp = ramp.expect("all connected");
    let (acked_by_api, refused) = acknowledge_open_incidents(&collector, &operator, 3);
    (fig.acked_by_api, fig.acks_refused) = (acked_by_api.len(), refused);
    let incidents_before = api_incidents(&collector, &operator);

    let kill = kill_with_work_in_flight(&mut collector, &wires);
    fig.load = kill.at - started;
    fig.picked_after = kill.picked_after;
    // The simulation stops (its agents do not reconnect); its report counts what the dead
    // collector acknowledged.
    sim.signal(libc::SIGINT);
    let before = Before {
        real: reals
            .iter()
            .map(|r| {
                (
                    spool_state(&r.dir).expect("spool state").0,
                    logged_inventory_acks(&r.proc.logs()),
                )
            })
            .collect(),
        incidents: incidents_before,
        acked_by_api,
        delivered: receiver.received(),
    };
    let stored_at_kill = check_after_kill(&dir, &wires, &reals, &sim_ids, &kill, &before, &mut fig);

    // Back on the same data dir and ports; the agents reconnect, a second simulation takes up
    // the simulated identities (numbering on from each welcome).
    let restart = Instant::now();
    let collector = spawn_collector_with(&dir, quic, http, &extra);
    assert_eq!((collector.quic, collector.http), (quic, http));
    let mut sim2 = simulate(quic, &token, &sim_dir, "report-2.json", &sim_args);
    let status = sim
        .wait_for(Duration::from_secs(30))
        .unwrap_or_else(|| panic!("simulate did not stop on SIGINT; log:\n{}", sim.logs()));
    assert!(status.success(), "simulate log:\n{}", sim.logs());
    let report: Value = serde_json::from_str(
        &std::fs::read_to_string(sim_dir.join("report-1.json")).expect("report"),
    )
    .unwrap_or_else(|e| panic!("simulate report: {e}; log:\n{}", sim.logs()));
    fig.sim_samples_acked = report["samples_acked"].as_u64().expect("samples_acked");
    assert!(
        fig.sim_samples_stored >= fig.sim_samples_acked,
        "simulate saw {} samples acknowledged, the store held {}",
        fig.sim_samples_acked,
        fig.sim_samples_stored
    );
    fig.reconnected = wait_until(PHASE, "every agent reconnected", || {
        (connected(&collector) >= all
            && wires
                .iter()
                .all(|w| lock(&w.log).conns.iter().any(|(t, _)| *t > restart)))
        .then(|| restart.elapsed())
    });

    // Load after the restart: new mountpoints (incidents), inventory versions and packages.
    let acks_at_restart: Vec<u64> = wires
        .iter()
        .map(|w| lock(&w.log).acked_max(|_| true))
        .collect();
    let packages_at_restart = packages.n;
    wait_until(PHASE, "load after the restart", || {
        packages.tick(&reals);
        let wires_ok = wires.iter().zip(&acks_at_restart).all(|(w, a)| {
            let l = lock(&w.log);
            let n = l.conns_before(restart);
            l.acked_max(|_| true) >= a + 2 * BLOCK && l.inv_acked(|c| c >= n).len() >= 3
        });
        (wires_ok && packages.n >= packages_at_restart + 3).then_some(())
    });

    // Wind down: the real agents get their last package in and stop; the wire agents finish
    // their block, wait for every ack and say goodbye; the simulation stops; every
    // notification is delivered.
    stop.store(true, Ordering::SeqCst);
    let last_package = format!("k9real-{}:amd64", packages.n);
    let store = open_store(&dir);
    for r in &mut reals {
        let id = r.id();
        wait_until(PHASE, "the real agents' last package reconciled", || {
            assert!(r.proc.is_running(), "agent exited; log:\n{}", r.proc.logs());
            let n = store
                .query_row(
                    "SELECT COUNT(*) FROM cis WHERE agent_id = ?1 AND type = 'package'
                     AND key = ?2 AND state = 'active'",
                    params![id, last_package],
                    |r| r.get::<_, i64>(0),
                )
                .expect("count");
            (n == 1).then_some(())
        });
        assert!(
            r.proc.terminate(Duration::from_secs(15)).success(),
            "agent log:\n{}",
            r.proc.logs()
        );
    }
    wait_until(PHASE, "wire agents done", || {
        wires.iter().all(|w| lock(&w.log).done).then_some(())
    });
    for t in tasks {
        rt.block_on(t).expect("wire agent task");
    }
    sim2.signal(libc::SIGINT);
    let status = sim2
        .wait_for(Duration::from_secs(30))
        .unwrap_or_else(|| panic!("simulate did not stop; log:\n{}", sim2.logs()));
    assert!(status.success(), "simulate log:\n{}", sim2.logs());
    let out = wait_until(PHASE, "every notification delivered", || {
        let out = outbox(&store);
        out.iter()
            .all(|(_, _, _, delivered)| *delivered)
            .then_some(out)
    });

    integrity(&store);
    check_batches(
        &store,
        &collector,
        &wires,
        &reals,
        &sim_ids,
        &kill,
        &stored_at_kill,
        &mut fig,
    );
    check_cmdb(&store, &wires, &reals, packages.n, &mut fig);
    check_incidents(
        &store, &collector, &operator, &wires, &before, &receiver, &out, &mut fig,
    );
    fig.print(started);
}

/// An acknowledged breach keeps its incident through a SIGKILL, even when the incident engine
/// lags behind the store writer (failpoint `engine-slow`: 300 ms over each batch): a batch is
/// acknowledged only once the engine has evaluated it and committed the incident it opened, with
/// its timeline and outbox rows. Nothing evaluates a stored batch again, so an ack sent on the
/// batch's commit alone, before the engine's, let a kill in between lose the incident for good.
#[test]
fn an_acknowledged_breach_keeps_its_incident_through_a_sigkill() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("collector");
    let any: SocketAddr = "127.0.0.1:0".parse().expect("addr");
    // Nothing listens there: the outbox row stays pending.
    let extra = collector_extra("http://127.0.0.1:9/hook");
    let mut c = spawn_collector_env(
        &dir,
        any,
        any,
        &extra,
        &[(vigil_runtime::failpoint::ENV, "engine-slow")],
    );
    let (quic, http) = (c.quic, c.http);
    let token = enroll_token(&dir, &[]);
    let viewer = api_token(&dir, "viewer");
    let rt = wire::runtime();
    let endpoint = wire::endpoint(&rt, quic);
    let identity = rt.block_on(wire::enroll(&endpoint, quic, &token, "kill9-spike"));
    let session = rt.block_on(wire::session(
        &endpoint,
        quic,
        &identity,
        wire::hello(&identity, "kill9-spike", 1_000),
    ));

    // One batch, one sample of a fresh filesystem over the threshold; the collector dies the
    // moment its ack arrives.
    let breach = Message::Batch(Batch {
        seq: 1,
        samples: vec![wire::sample(
            "filesystem_used_ratio",
            &[("device", "/dev/spike"), ("mountpoint", "/spike")],
            0.97,
        )],
    });
    let acked = rt.block_on(wire::send_batch(&session.conn, &breach));
    c.proc.kill();
    assert_eq!(acked, Some(1));

    let store = open_store(&dir);
    assert_eq!(seqs(&store, &identity.agent_id), [1]);
    let incidents: Vec<Inc> = store_incidents(&store).into_values().collect();
    assert_eq!(
        incidents.len(),
        1,
        "the acknowledged breach has no incident: {incidents:?}"
    );
    let id = incidents[0].id;
    assert_eq!(incidents[0].ci_key, "/spike");
    assert_eq!(
        timeline(&store, id).first().map(String::as_str),
        Some("opened")
    );
    assert!(
        outbox(&store)
            .iter()
            .any(|(i, e, _, _)| *i == id && e == "opened"),
        "no outbox row for the incident"
    );
    drop(store);

    // The restarted collector shows it.
    let c = spawn_collector_with(&dir, quic, http, &extra);
    let listed = api_incidents(&c, &viewer);
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(
        (&listed[0]["id"], &listed[0]["state"]),
        (&json!(id), &json!("open"))
    );
}
