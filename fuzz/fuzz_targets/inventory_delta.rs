//! Inventory snapshots and deltas, built from a small vocabulary (so identities, machine-ids,
//! addresses and ports collide), passed through the wire codec as an agent's frames are (a
//! message the decoder refuses never reaches the CMDB), applied by the collector's CMDB onto a
//! real SQLite store, and
//! by `InventoryDelta::apply` onto a model inventory per agent. After every message:
//! - the outcome is what the model says (stored at the new version, or a resync with the stored
//!   version; an error only for a version SQLite cannot hold);
//! - the agent's CIs that are not retired are exactly the model's CIs of discovered types;
//! - no CI of an agent that just reported is stale; every CI's history chain is whole;
//!   relations an agent reported join two CIs of that agent;
//! - `diff(before, after).apply(before) == after` for the model (the shared applier's law).
//!
//! Two agents share the store (cross-host dependencies, duplicate machine-ids); every iteration
//! starts from an empty CMDB.
#![no_main]

use std::collections::{BTreeMap, HashMap};
use std::sync::{LazyLock, Mutex};
use std::time::Duration;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use rusqlite::Connection;
use tempfile::TempDir;
use vigil_collector::cmdb::{apply_delta, apply_snapshot, mark_stale, InventoryOutcome};
use vigil_collector::store::{Db, StoreError};
use vigil_fuzz::{lock, register, side_connection, temp_dir, T0};
use vigil_shared::codec::{decode_body, encode_body};
use vigil_shared::inventory::{
    ci_type, diff, Attrs, Ci, CiRef, Inventory, InventoryDelta, OutboundConnection, Relation,
};
use vigil_shared::proto::{InventoryDeltaMsg, InventorySnapshot, Message};

const AGENTS: [&str; 2] = ["agent-a", "agent-b"];

struct Env {
    _dir: TempDir,
    db: Db,
    side: Connection,
}

static ENV: LazyLock<Mutex<Env>> = LazyLock::new(|| {
    let dir = temp_dir();
    let db = Db::open(dir.path()).expect("open store");
    for a in AGENTS {
        register(&db, a, &format!("{a}.example"));
    }
    let side = side_connection(&dir);
    Mutex::new(Env {
        _dir: dir,
        db,
        side,
    })
});

// ---------------------------------------------------------------------------------------------
// The input

const TYPES: &[&str] = &[
    ci_type::HOST,
    ci_type::OS,
    ci_type::DISK,
    ci_type::FILESYSTEM,
    ci_type::NETWORK_INTERFACE,
    ci_type::IP_ADDRESS,
    ci_type::LISTENING_SERVICE,
    ci_type::PACKAGE,
    ci_type::SYSTEMD_UNIT,
    ci_type::CPU,
    ci_type::MEMORY,
    ci_type::BUSINESS_SERVICE,
    "gpu",
];
const KEYS: &[&str] = &[
    "host",
    "os",
    "eth0",
    "/",
    "10.0.0.1/24",
    "10.0.0.2/24",
    "127.0.0.1/8",
    "tcp:5432",
    "tcp6:5432",
    "tcp:80",
    "openssl:amd64",
    "",
];
const ATTR_NAMES: &[&str] = &[
    "machine_id",
    "dmi_uuid",
    "address",
    "port",
    "protocol",
    "hostname",
    "version",
    "name",
];
const STRINGS: &[&str] = &[
    "m1",
    "m2",
    " ",
    "0.0.0.0",
    "::",
    "10.0.0.1",
    "10.0.0.2",
    "127.0.0.1",
    "tcp",
    "tcp6",
    "",
];
const RELATION_KINDS: &[&str] = &["runs", "has", "provided_by", "depends_on", "owns"];

fn pick<'a>(list: &[&'a str], i: u8) -> &'a str {
    list[usize::from(i) % list.len()]
}

#[derive(Debug, Arbitrary)]
enum Text {
    Known(u8),
    Other(String),
}

impl Text {
    fn get(&self, list: &[&str]) -> String {
        match self {
            Text::Known(i) => pick(list, *i).to_owned(),
            Text::Other(s) => s.clone(),
        }
    }
}

#[derive(Debug, Arbitrary)]
enum Val {
    Null,
    Bool(bool),
    Int(i64),
    Uint(u64),
    Float(f64),
    Str(Text),
    List(Vec<u8>),
    /// `levels` arrays around a value.
    Nested(u8, Box<Val>),
}

impl Val {
    fn get(&self) -> serde_json::Value {
        match self {
            Val::Null => serde_json::Value::Null,
            Val::Bool(b) => (*b).into(),
            Val::Int(i) => (*i).into(),
            Val::Uint(u) => (*u).into(),
            // NaN and infinities are not JSON: they travel as null.
            Val::Float(f) => {
                serde_json::Number::from_f64(*f).map_or(serde_json::Value::Null, Into::into)
            }
            Val::Str(t) => t.get(STRINGS).into(),
            Val::List(l) => l.iter().map(|b| serde_json::Value::from(*b)).collect(),
            Val::Nested(levels, v) => {
                let mut v = v.get();
                for _ in 0..*levels {
                    v = serde_json::Value::Array(vec![v]);
                }
                v
            }
        }
    }
}

#[derive(Debug, Arbitrary)]
struct FRef {
    ty: u8,
    key: Text,
}

impl FRef {
    fn get(&self) -> CiRef {
        CiRef::new(pick(TYPES, self.ty), self.key.get(KEYS))
    }
}

#[derive(Debug, Arbitrary)]
struct FCi {
    id: FRef,
    name: Text,
    attrs: Vec<(Text, Val)>,
}

impl FCi {
    fn get(&self) -> Ci {
        let id = self.id.get();
        let attrs: Attrs = self
            .attrs
            .iter()
            .map(|(k, v)| (k.get(ATTR_NAMES), v.get()))
            .collect();
        Ci {
            ci_type: id.ci_type,
            key: id.key,
            name: self.name.get(STRINGS),
            attrs,
        }
    }
}

#[derive(Debug, Arbitrary)]
struct FRel {
    from: FRef,
    kind: u8,
    to: FRef,
}

impl FRel {
    fn get(&self) -> Relation {
        Relation {
            from: self.from.get(),
            kind: pick(RELATION_KINDS, self.kind).to_owned(),
            to: self.to.get(),
        }
    }
}

#[derive(Debug, Arbitrary)]
struct FConn {
    proto: Text,
    remote_ip: Text,
    port: Option<u16>,
    local_service: Option<Text>,
    process: Option<String>,
}

impl FConn {
    fn get(&self) -> OutboundConnection {
        OutboundConnection {
            proto: self.proto.get(&["tcp", "tcp6", "udp"]),
            remote_ip: self.remote_ip.get(STRINGS),
            remote_port: self.port.unwrap_or(5432),
            local_service: self.local_service.as_ref().map(|t| t.get(KEYS)),
            process: self.process.clone(),
        }
    }
}

/// A version relative to what the model holds (so that most deltas apply).
#[derive(Debug, Arbitrary)]
enum Ver {
    Next,
    Same,
    Back,
    Exact(u64),
}

impl Ver {
    fn get(&self, have: Option<u64>) -> u64 {
        let have = have.unwrap_or(0);
        match self {
            Ver::Next => have.wrapping_add(1),
            Ver::Same => have,
            Ver::Back => have.wrapping_sub(1),
            Ver::Exact(v) => *v,
        }
    }
}

#[derive(Debug, Arbitrary)]
enum Step {
    Snapshot {
        agent: bool,
        version: Ver,
        ts_ms: i64,
        cis: Vec<FCi>,
        relations: Vec<FRel>,
        connections: Vec<FConn>,
    },
    Delta {
        agent: bool,
        base: Ver,
        version: Ver,
        ts_ms: i64,
        added: Vec<FCi>,
        changed: Vec<FCi>,
        removed: Vec<FRef>,
        relations_added: Vec<FRel>,
        relations_removed: Vec<FRel>,
        connections: Option<Vec<FConn>>,
    },
    /// The stale sweep, `after` seconds of silence.
    MarkStale { after: u16 },
}

/// The message as the collector gets it: through the wire codec. `None` when the decoder
/// refuses it (too deep): then the CMDB never sees it.
fn over_the_wire(m: Message) -> Option<Message> {
    let body = encode_body(&m).expect("encode");
    decode_body(m.kind(), &body).ok()
}

// ---------------------------------------------------------------------------------------------
// The checks

fn wipe(c: &Connection) {
    c.execute_batch(
        "DELETE FROM relations; DELETE FROM ci_history; DELETE FROM connections;
         DELETE FROM inventory_state; DELETE FROM cis;",
    )
    .expect("wipe the CMDB");
}

type CiView = (String, String, String, Attrs);

/// The agent's CIs that are not retired, as `(type, key, name, attrs)`, sorted.
fn stored_cis(c: &Connection, agent: &str) -> Vec<CiView> {
    let mut stmt = c
        .prepare(
            "SELECT type, key, name, attrs FROM cis
             WHERE agent_id = ?1 AND state != 'retired' ORDER BY type, key",
        )
        .expect("prepare");
    let rows = stmt
        .query_map([agent], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get::<_, String>(3)?))
        })
        .expect("query");
    rows.map(|r| {
        let (t, k, n, a) = r.expect("row");
        let attrs: Attrs = serde_json::from_str(&a).expect("stored attrs are a JSON object");
        (t, k, n, attrs)
    })
    .collect()
}

fn model_cis(inv: &Inventory) -> Vec<CiView> {
    inv.cis
        .iter()
        .filter(|c| ci_type::DISCOVERED.contains(&c.ci_type.as_str()))
        .map(|c| {
            (
                c.ci_type.clone(),
                c.key.clone(),
                c.name.clone(),
                c.attrs.clone(),
            )
        })
        .collect()
}

/// Every CI's history is one chain from `cis.last_history_id` through `prev_id`, covering all
/// of its rows; relations an agent reported join two CIs of that agent.
fn check_store(c: &Connection) {
    let heads: Vec<(i64, Option<i64>)> = c
        .prepare("SELECT id, last_history_id FROM cis")
        .and_then(|mut s| s.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?.collect())
        .expect("heads");
    let rows: HashMap<i64, (i64, Option<i64>)> = c
        .prepare("SELECT id, ci_id, prev_id FROM ci_history")
        .and_then(|mut s| {
            s.query_map([], |r| Ok((r.get(0)?, (r.get(1)?, r.get(2)?))))?
                .collect()
        })
        .expect("history");
    let mut per_ci: BTreeMap<i64, usize> = BTreeMap::new();
    for (ci, _) in rows.values() {
        *per_ci.entry(*ci).or_default() += 1;
    }
    for (id, head) in heads {
        let mut n = 0;
        let mut at = head;
        while let Some(h) = at {
            let (ci, prev) = rows
                .get(&h)
                .unwrap_or_else(|| panic!("CI {id}: history row {h} is missing"));
            assert_eq!(*ci, id, "CI {id}: history row {h} belongs to CI {ci}");
            n += 1;
            assert!(n <= rows.len(), "CI {id}: its history chain loops");
            at = *prev;
        }
        assert!(n > 0, "CI {id} has no history");
        assert_eq!(
            n,
            per_ci.get(&id).copied().unwrap_or(0),
            "CI {id}: the chain does not cover its history rows"
        );
    }
    let foreign: i64 = c
        .query_row(
            "SELECT count(*) FROM relations r
             JOIN cis f ON f.id = r.from_ci JOIN cis t ON t.id = r.to_ci
             WHERE r.source NOT LIKE 'wire:%' AND r.source NOT LIKE 'api:%'
               AND NOT (f.agent_id IS r.source AND t.agent_id IS r.source)",
            [],
            |r| r.get(0),
        )
        .expect("relations");
    assert_eq!(foreign, 0, "an agent's relation joins CIs of another agent");
}

/// Whether `agent` has stale CIs.
fn has_stale(c: &Connection, agent: &str) -> bool {
    c.query_row(
        "SELECT EXISTS (SELECT 1 FROM cis WHERE agent_id = ?1 AND state = 'stale')",
        [agent],
        |r| r.get(0),
    )
    .expect("stale CIs")
}

/// Checks an outcome against the model; whether the message was stored.
fn check_outcome(
    got: Result<InventoryOutcome, StoreError>,
    version: u64,
    applies: bool,
    have: Option<u64>,
) -> bool {
    match got {
        Ok(InventoryOutcome::Stored { version: v, .. }) => {
            assert!(applies, "stored a message the model says is a resync");
            assert_eq!(v, version);
            true
        }
        Ok(InventoryOutcome::Resync { have: h }) => {
            assert!(!applies, "asked for a resync of a message that applies");
            assert_eq!(h, have);
            false
        }
        Err(StoreError::SeqOutOfRange(v)) => {
            assert!(applies && version > i64::MAX as u64, "{v}");
            false
        }
        Ok(InventoryOutcome::TooManyCis { cis, max }) => {
            panic!("refused {cis} CIs over a cap of {max}, but this target sets no cap")
        }
        Err(e) => panic!("the CMDB failed on an agent's message: {e}"),
    }
}

fuzz_target!(|steps: Vec<Step>| {
    let env = lock(&ENV);
    wipe(&env.side);
    let mut model: [Option<(u64, Inventory)>; 2] = [None, None];
    for (i, step) in steps.iter().take(16).enumerate() {
        let now = T0 + 1000 * i as i64;
        let (agent, before) = match step {
            Step::Snapshot {
                agent,
                version,
                ts_ms,
                cis,
                relations,
                connections,
            } => {
                let a = usize::from(*agent);
                let have = model[a].as_ref().map(|m| m.0);
                let snap = InventorySnapshot {
                    version: version.get(have),
                    ts_ms: *ts_ms,
                    inventory: Inventory {
                        cis: cis.iter().map(FCi::get).collect(),
                        relations: relations.iter().map(FRel::get).collect(),
                        connections: connections.iter().map(FConn::get).collect(),
                    },
                };
                let Some(Message::InventorySnapshot(snap)) =
                    over_the_wire(Message::InventorySnapshot(snap))
                else {
                    continue;
                };
                let got = apply_snapshot(&env.db, AGENTS[a], &snap, now);
                let before = model[a].as_ref().map(|m| m.1.clone());
                if check_outcome(got, snap.version, true, have) {
                    assert!(
                        !has_stale(&env.side, AGENTS[a]),
                        "a snapshot left stale CIs"
                    );
                    let mut inv = snap.inventory.clone();
                    inv.canonicalize();
                    model[a] = Some((snap.version, inv));
                }
                (a, before)
            }
            Step::Delta {
                agent,
                base,
                version,
                ts_ms,
                added,
                changed,
                removed,
                relations_added,
                relations_removed,
                connections,
            } => {
                let a = usize::from(*agent);
                let have = model[a].as_ref().map(|m| m.0);
                let msg = InventoryDeltaMsg {
                    base_version: base.get(have),
                    version: version.get(have),
                    ts_ms: *ts_ms,
                    delta: InventoryDelta {
                        added: added.iter().map(FCi::get).collect(),
                        changed: changed.iter().map(FCi::get).collect(),
                        removed: removed.iter().map(FRef::get).collect(),
                        relations_added: relations_added.iter().map(FRel::get).collect(),
                        relations_removed: relations_removed.iter().map(FRel::get).collect(),
                        connections: connections
                            .as_ref()
                            .map(|c| c.iter().map(FConn::get).collect()),
                    },
                };
                let Some(Message::InventoryDelta(msg)) =
                    over_the_wire(Message::InventoryDelta(msg))
                else {
                    continue;
                };
                let applies = have == Some(msg.base_version);
                let got = apply_delta(&env.db, AGENTS[a], &msg, now);
                let before = model[a].as_ref().map(|m| m.1.clone());
                if check_outcome(got, msg.version, applies, have) {
                    assert!(!has_stale(&env.side, AGENTS[a]), "a delta left stale CIs");
                    let m = model[a]
                        .as_mut()
                        .expect("a delta applies onto a stored inventory");
                    msg.delta.apply(&mut m.1);
                    m.0 = msg.version;
                }
                (a, before)
            }
            Step::MarkStale { after } => {
                mark_stale(&env.db, Duration::from_secs(u64::from(*after)), now)
                    .expect("the stale sweep");
                check_store(&env.side);
                continue;
            }
        };
        check_store(&env.side);
        for (a, m) in model.iter().enumerate() {
            let want = m.as_ref().map(|m| model_cis(&m.1)).unwrap_or_default();
            assert_eq!(
                stored_cis(&env.side, AGENTS[a]),
                want,
                "{}: the stored CIs differ from the model",
                AGENTS[a]
            );
        }
        if let (Some(before), Some((_, after))) = (before, &model[agent]) {
            let mut again = before.clone();
            diff(&before, after).apply(&mut again);
            assert_eq!(&again, after, "diff(before, after).apply(before) == after");
        }
    }
});
