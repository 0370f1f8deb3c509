//! The CMDB end to end: agents discover (the real host, or fixture roots under
//! `tests/fixtures/`), send a snapshot per connection and then deltas only on change, and the
//! collector reconciles them into CIs, history rows and relations. Asserted through the SQLite
//! store and /metrics.
//!
//! Fixture roots: `host-a` is `db1` (10.0.0.2, postgres listening on 10.0.0.2:5432, sshd on
//! 0.0.0.0:22); `host-b` is `app1` (10.0.0.3, sshd, and an `app` process connected from
//! 10.0.0.3:40000 to 10.0.0.2:5432). Nothing is contacted: these are files. A test that changes
//! a root works on a copy.

use std::collections::{BTreeMap, BTreeSet};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rusqlite::{params, Connection, OptionalExtension};
use serde_json::{json, Value};

use crate::harness::*;

/// Bound for the first snapshot of a freshly started agent (enrollment, connect, discovery).
const FIRST_REPORT: Duration = Duration::from_secs(25);
/// Bound for a change to reach the store once the agent is connected (1 s discovery interval).
const CHANGE: Duration = Duration::from_secs(15);

#[derive(Debug, Clone, PartialEq)]
struct CiRow {
    id: i64,
    name: String,
    attrs: Value,
    state: String,
    retired_at_ms: Option<i64>,
}

#[derive(Debug, Clone, PartialEq)]
struct Hist {
    id: i64,
    ci_id: i64,
    ts_ms: i64,
    attribute: String,
    change: String,
    old: Option<Value>,
    new: Option<Value>,
    source: String,
}

fn json_col(s: Option<String>) -> Option<Value> {
    s.map(|s| serde_json::from_str(&s).unwrap_or_else(|e| panic!("bad JSON {s:?}: {e}")))
}

fn ci(store: &Connection, agent: &str, ty: &str, key: &str) -> Option<CiRow> {
    store
        .query_row(
            "SELECT id, name, attrs, state, retired_at_ms FROM cis
             WHERE agent_id = ?1 AND type = ?2 AND key = ?3",
            params![agent, ty, key],
            |r| {
                Ok(CiRow {
                    id: r.get(0)?,
                    name: r.get(1)?,
                    attrs: json_col(Some(r.get(2)?)).unwrap_or(Value::Null),
                    state: r.get(3)?,
                    retired_at_ms: r.get(4)?,
                })
            },
        )
        .optional()
        .expect("query cis")
}

fn host_ci(store: &Connection, agent: &str) -> Option<CiRow> {
    ci(store, agent, "host", "host")
}

/// History rows of the agent's CIs with an id above `after`, oldest first, with each CI's
/// `(type, key)`.
fn history_since(store: &Connection, agent: &str, after: i64) -> Vec<((String, String), Hist)> {
    let mut stmt = store
        .prepare(
            "SELECT c.type, c.key, h.id, h.ci_id, h.ts_ms, h.attribute, h.change, h.old_value,
                    h.new_value, h.source
             FROM ci_history h JOIN cis c ON c.id = h.ci_id
             WHERE c.agent_id = ?1 AND h.id > ?2 ORDER BY h.id",
        )
        .expect("prepare history");
    let rows = stmt
        .query_map(params![agent, after], |r| {
            Ok((
                (r.get(0)?, r.get(1)?),
                Hist {
                    id: r.get(2)?,
                    ci_id: r.get(3)?,
                    ts_ms: r.get(4)?,
                    attribute: r.get(5)?,
                    change: r.get(6)?,
                    old: json_col(r.get(7)?),
                    new: json_col(r.get(8)?),
                    source: r.get(9)?,
                },
            ))
        })
        .expect("query history");
    rows.collect::<rusqlite::Result<_>>().expect("history rows")
}

fn history_of(store: &Connection, ci_id: i64) -> Vec<Hist> {
    let mut stmt = store
        .prepare(
            "SELECT id, ci_id, ts_ms, attribute, change, old_value, new_value, source
             FROM ci_history WHERE ci_id = ?1 ORDER BY id",
        )
        .expect("prepare history");
    let rows = stmt
        .query_map([ci_id], |r| {
            Ok(Hist {
                id: r.get(0)?,
                ci_id: r.get(1)?,
                ts_ms: r.get(2)?,
                attribute: r.get(3)?,
                change: r.get(4)?,
                old: json_col(r.get(5)?),
                new: json_col(r.get(6)?),
                source: r.get(7)?,
            })
        })
        .expect("query history");
    rows.collect::<rusqlite::Result<_>>().expect("history rows")
}

fn max_history_id(store: &Connection) -> i64 {
    store
        .query_row("SELECT COALESCE(MAX(id), 0) FROM ci_history", [], |r| {
            r.get(0)
        })
        .expect("max history id")
}

/// `vigil_inventory_messages_total{kind}` on /metrics (absent counts as -1, a failure).
fn inventory_messages(text: &str, kind: &str) -> f64 {
    metric_value(
        text,
        &format!("vigil_inventory_messages_total{{kind=\"{kind}\"}}"),
    )
    .unwrap_or(-1.0)
}

fn cmdb_metric(text: &str, name: &str, ty: &str) -> f64 {
    metric_value(text, &format!("{name}{{type=\"{ty}\"}}")).unwrap_or(-1.0)
}

/// Waits for the agent enrolled from `agent_dir` to have its host CI stored; returns its id.
fn wait_for_host(store: &Connection, agent_dir: &Path, agent: &mut Proc) -> String {
    wait_until(FIRST_REPORT, "the agent's first inventory snapshot", || {
        if !agent.is_running() {
            panic!("agent exited; log:\n{}", agent.logs());
        }
        let id = agent_id(agent_dir)?;
        host_ci(store, &id).map(|_| id)
    })
}

/// What `vigil-agent inventory --json` reported, as the store keeps it: active CIs by
/// `(type, key)` with name and attributes, and relations.
pub(crate) type CiMap = BTreeMap<(String, String), (String, Value)>;
pub(crate) type RelSet = BTreeSet<(String, String, String, String, String)>;

/// A collector and an agent discovering a copy of the `host-b` fixture every second, after the
/// agent's first snapshot is stored.
struct HostB {
    collector: Collector,
    root: PathBuf,
    agent: Proc,
    store: Connection,
    id: String,
}

fn start_host_b(dir: &Path) -> HostB {
    let collector = spawn_collector(&dir.join("collector"));
    let token = enroll_token(&collector.data_dir, &[]);
    let root = dir.join("root");
    copy_tree(&fixture("host-b"), &root);
    let agent_dir = dir.join("agent");
    let mut agent = spawn_agent_with(
        collector.quic,
        Some(&token),
        &agent_dir,
        "1s",
        &[
            "--root",
            root.to_str().expect("path"),
            "--discovery-interval",
            "1s",
        ],
    );
    let store = open_store(&collector.data_dir);
    let id = wait_for_host(&store, &agent_dir, &mut agent);
    HostB {
        collector,
        root,
        agent,
        store,
        id,
    }
}

pub(crate) fn inventory_maps(inv: &Value) -> (CiMap, RelSet) {
    let s = |v: &Value| v.as_str().expect("string").to_string();
    let cis = inv["cis"]
        .as_array()
        .expect("cis")
        .iter()
        .map(|c| {
            (
                (s(&c["type"]), s(&c["key"])),
                (s(&c["name"]), c["attrs"].clone()),
            )
        })
        .collect();
    let rels = inv["relations"]
        .as_array()
        .expect("relations")
        .iter()
        .map(|r| {
            (
                s(&r["from"]["type"]),
                s(&r["from"]["key"]),
                s(&r["kind"]),
                s(&r["to"]["type"]),
                s(&r["to"]["key"]),
            )
        })
        .collect();
    (cis, rels)
}

pub(crate) fn stored_maps(store: &Connection, agent: &str) -> (CiMap, RelSet) {
    let mut stmt = store
        .prepare("SELECT type, key, name, attrs FROM cis WHERE agent_id = ?1 AND state = 'active'")
        .expect("prepare");
    let cis = stmt
        .query_map([agent], |r| {
            let attrs: String = r.get(3)?;
            Ok((
                (r.get(0)?, r.get(1)?),
                (r.get(2)?, json_col(Some(attrs)).unwrap_or(Value::Null)),
            ))
        })
        .expect("query")
        .collect::<rusqlite::Result<_>>()
        .expect("rows");
    let mut stmt = store
        .prepare(
            "SELECT f.type, f.key, r.kind, t.type, t.key FROM relations r
             JOIN cis f ON f.id = r.from_ci JOIN cis t ON t.id = r.to_ci
             WHERE r.source = ?1",
        )
        .expect("prepare");
    let rels = stmt
        .query_map([agent], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
        })
        .expect("query")
        .collect::<rusqlite::Result<_>>()
        .expect("rows");
    (cis, rels)
}

/// A TCP listener opened on this host after the agent's first snapshot appears as a
/// `listening_service` CI (history `added`) within a few discovery intervals; closed, the CI is
/// retired (history `removed`).
#[test]
fn listening_service_appears_and_retires_on_the_real_host() {
    let dir = tempfile::tempdir().expect("tempdir");
    let collector = spawn_collector(&dir.path().join("collector"));
    let token = enroll_token(&collector.data_dir, &[]);
    let agent_dir = dir.path().join("agent");
    let mut agent = spawn_agent_with(
        collector.quic,
        Some(&token),
        &agent_dir,
        "1s",
        &["--root", "/", "--discovery-interval", "1s"],
    );
    let store = open_store(&collector.data_dir);
    let id = wait_for_host(&store, &agent_dir, &mut agent);

    let opened_ms = now_ms();
    let opened = Instant::now();
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("local addr").port();
    let key = format!("tcp:{port}");
    let row = wait_until(CHANGE, &format!("{key} active in the CMDB"), || {
        ci(&store, &id, "listening_service", &key).filter(|c| c.state == "active")
    });
    let appeared = opened.elapsed();
    let exe = std::env::current_exe().expect("current exe");
    assert_eq!(row.name, key);
    assert_eq!(row.attrs["protocol"], "tcp", "{row:?}");
    assert_eq!(row.attrs["port"], json!(port), "{row:?}");
    assert_eq!(row.attrs["address"], "127.0.0.1", "{row:?}");
    // The owning process is this test (the agent runs as the same user, or root).
    assert_eq!(
        row.attrs["executable"],
        json!(exe.to_string_lossy()),
        "{row:?}"
    );
    // Earlier rows of the same key (a port another process used and closed) are not ours.
    let ours = |h: &Vec<Hist>| -> Vec<(String, String, String)> {
        h.iter()
            .filter(|h| h.ts_ms >= opened_ms)
            .map(|h| (h.attribute.clone(), h.change.clone(), h.source.clone()))
            .collect()
    };
    assert_eq!(
        ours(&history_of(&store, row.id)),
        [("*".to_string(), "added".to_string(), id.clone())]
    );
    let rel: i64 = store
        .query_row(
            "SELECT COUNT(*) FROM relations r JOIN cis h ON h.id = r.from_ci
             WHERE h.agent_id = ?1 AND h.type = 'host' AND r.kind = 'runs' AND r.to_ci = ?2",
            params![id, row.id],
            |r| r.get(0),
        )
        .expect("relation");
    assert_eq!(rel, 1, "host runs {key}");

    let closed = Instant::now();
    drop(listener);
    let retired = wait_until(CHANGE, &format!("{key} retired"), || {
        ci(&store, &id, "listening_service", &key).filter(|c| c.state == "retired")
    });
    let gone = closed.elapsed();
    assert_eq!(retired.id, row.id, "the same CI, not a new one");
    assert!(retired.retired_at_ms.is_some_and(|t| t >= opened_ms));
    assert_eq!(
        ours(&history_of(&store, row.id)),
        [
            ("*".to_string(), "added".to_string(), id.clone()),
            ("*".to_string(), "removed".to_string(), id.clone())
        ]
    );
    let text = metrics(&collector);
    assert_eq!(inventory_messages(&text, "snapshot"), 1.0, "{text}");
    assert_eq!(inventory_messages(&text, "resync"), 0.0, "{text}");
    assert!(agent.is_running(), "agent log:\n{}", agent.logs());
    eprintln!("listener appeared after {appeared:?}, retired after {gone:?}");
}

fn agent_config(
    quic: std::net::SocketAddr,
    token: &str,
    data_dir: &Path,
    root: &Path,
    role: &str,
) -> String {
    format!(
        "collector = \"{quic}\"\ntoken = \"{token}\"\ndata_dir = {:?}\ntags = {{ role = \"{role}\" }}\n\
         root = {:?}\n[metrics]\ninterval = \"1s\"\n[discovery]\ninterval = \"1s\"\n",
        data_dir.display().to_string(),
        root.display().to_string(),
    )
}

/// Changing a tag in the agent config and restarting yields exactly one attribute-change row
/// (`tags` of the host CI) and nothing else: the same root, the same CIs. What the agent stored
/// is what `vigil-agent inventory --json --config F` prints.
#[test]
fn tag_change_across_a_restart_is_one_history_row() {
    let dir = tempfile::tempdir().expect("tempdir");
    let collector = spawn_collector(&dir.path().join("collector"));
    let token = enroll_token(&collector.data_dir, &[]);
    let root = dir.path().join("root");
    copy_tree(&fixture("host-a"), &root);
    let agent_dir = dir.path().join("agent");
    let config = dir.path().join("agent.toml");
    std::fs::write(
        &config,
        agent_config(collector.quic, &token, &agent_dir, &root, "web"),
    )
    .expect("write config");
    let store = open_store(&collector.data_dir);

    let mut agent = spawn_agent_config(&config, &agent_dir);
    let id = wait_for_host(&store, &agent_dir, &mut agent);
    let host = host_ci(&store, &id).expect("host CI");
    assert_eq!(host.attrs["tags"], json!({"role": "web"}), "{host:?}");
    assert!(
        agent.terminate(Duration::from_secs(15)).success(),
        "agent log:\n{}",
        agent.logs()
    );
    let before = max_history_id(&store);

    std::fs::write(
        &config,
        agent_config(collector.quic, &token, &agent_dir, &root, "db"),
    )
    .expect("rewrite config");
    let mut agent = spawn_agent_config(&config, &agent_dir);
    wait_until(CHANGE, "the new tag in the CMDB", || {
        if !agent.is_running() {
            panic!("agent exited; log:\n{}", agent.logs());
        }
        host_ci(&store, &id).filter(|h| h.attrs["tags"] == json!({"role": "db"}))
    });
    // Three discovery passes more: nothing else may follow.
    let passes = discovery_passes(&agent);
    wait_discovery_passes(&mut agent, passes, 3);
    let rows = history_since(&store, &id, before);
    assert_eq!(rows.len(), 1, "{rows:#?}");
    let ((ty, key), h) = &rows[0];
    assert_eq!((ty.as_str(), key.as_str()), ("host", "host"));
    assert_eq!(h.ci_id, host.id);
    assert_eq!(
        (h.attribute.as_str(), h.change.as_str()),
        ("tags", "changed")
    );
    assert_eq!(h.old, Some(json!({"role": "web"})));
    assert_eq!(h.new, Some(json!({"role": "db"})));
    assert_eq!(h.source, id);
    let text = metrics(&collector);
    assert_eq!(inventory_messages(&text, "snapshot"), 2.0, "{text}");
    assert_eq!(inventory_messages(&text, "delta"), 0.0, "{text}");
    assert_eq!(inventory_messages(&text, "resync"), 0.0, "{text}");

    // The store holds exactly what the agent says it would report.
    let inv = agent_inventory(&["--config", config.to_str().expect("utf-8 path")]);
    let (want_cis, want_rels) = inventory_maps(&inv);
    let (have_cis, have_rels) = stored_maps(&store, &id);
    assert_eq!(have_cis, want_cis);
    assert_eq!(have_rels, want_rels);
    assert_eq!(host_ci(&store, &id).expect("host").name, "db1");
}

/// Two agents (two certificates) on one machine-id: both hosts are kept, each with its own CIs,
/// and the later one is flagged as a duplicate of the first.
#[test]
fn cloned_machine_id_is_flagged_not_merged() {
    let dir = tempfile::tempdir().expect("tempdir");
    let collector = spawn_collector(&dir.path().join("collector"));
    let token = enroll_token(&collector.data_dir, &[]);
    let root_a = fixture("host-a");
    // A clone of db1: same machine-id, new name and DMI UUID (as a VM clone gets).
    let root_clone = dir.path().join("clone");
    copy_tree(&root_a, &root_clone);
    for f in ["etc/hostname", "proc/sys/kernel/hostname"] {
        std::fs::write(root_clone.join(f), "db1-clone\n").expect("write hostname");
    }
    std::fs::write(
        root_clone.join("sys/class/dmi/id/product_uuid"),
        "2f0c1a52-6a4d-4f1e-9b1e-0a00000000c1\n",
    )
    .expect("write uuid");
    let store = open_store(&collector.data_dir);

    let dir_1 = dir.path().join("agent-1");
    let mut agent_1 = spawn_agent_with(
        collector.quic,
        Some(&token),
        &dir_1,
        "1s",
        &[
            "--root",
            root_a.to_str().expect("path"),
            "--discovery-interval",
            "1s",
        ],
    );
    let id_1 = wait_for_host(&store, &dir_1, &mut agent_1);
    let dir_2 = dir.path().join("agent-2");
    let mut agent_2 = spawn_agent_with(
        collector.quic,
        Some(&token),
        &dir_2,
        "1s",
        &[
            "--root",
            root_clone.to_str().expect("path"),
            "--discovery-interval",
            "1s",
        ],
    );
    let id_2 = wait_for_host(&store, &dir_2, &mut agent_2);
    assert_ne!(id_1, id_2);
    let cert = |d: &Path| std::fs::read(d.join("agent.pem")).expect("agent certificate");
    assert_ne!(cert(&dir_1), cert(&dir_2), "two identities");

    let state = |agent: &str| -> (Option<String>, Option<String>, Option<String>) {
        store
            .query_row(
                "SELECT machine_id, dmi_uuid, duplicate_of FROM inventory_state
                 WHERE agent_id = ?1",
                [agent],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .expect("inventory_state row")
    };
    let machine = "a1a2a3a4b5b6c7c8d9d0e1e2f3f4a5a6".to_string();
    assert_eq!(
        state(&id_1),
        (
            Some(machine.clone()),
            Some("2f0c1a52-6a4d-4f1e-9b1e-0a0000000002".into()),
            None
        )
    );
    assert_eq!(
        state(&id_2),
        (
            Some(machine),
            Some("2f0c1a52-6a4d-4f1e-9b1e-0a00000000c1".into()),
            Some(id_1.clone())
        )
    );
    // Not merged: two host CIs, each agent with its full set of CIs.
    let (host_1, host_2) = (
        host_ci(&store, &id_1).expect("host 1"),
        host_ci(&store, &id_2).expect("host 2"),
    );
    assert_ne!(host_1.id, host_2.id);
    assert_eq!(
        (host_1.name.as_str(), host_1.state.as_str()),
        ("db1", "active")
    );
    assert_eq!(
        (host_2.name.as_str(), host_2.state.as_str()),
        ("db1-clone", "active")
    );
    let per_agent = |agent: &str| -> (i64, i64, BTreeSet<Option<String>>) {
        let (n, active): (i64, i64) = store
            .query_row(
                "SELECT COUNT(*), SUM(state = 'active') FROM ci_view WHERE agent_id = ?1",
                [agent],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .expect("count");
        let mut stmt = store
            .prepare("SELECT DISTINCT duplicate_of FROM ci_view WHERE agent_id = ?1")
            .expect("prepare");
        let dups = stmt
            .query_map([agent], |r| r.get(0))
            .expect("query")
            .collect::<rusqlite::Result<_>>()
            .expect("rows");
        (n, active, dups)
    };
    let expected = inventory_maps(&agent_inventory(&[
        "--root",
        root_a.to_str().expect("path"),
    ]))
    .0
    .len() as i64;
    assert_eq!(
        per_agent(&id_1),
        (expected, expected, BTreeSet::from([None]))
    );
    assert_eq!(
        per_agent(&id_2),
        (expected, expected, BTreeSet::from([Some(id_1.clone())]))
    );
    let log = collector.proc.logs();
    assert!(
        log.contains("flagged as duplicate") && log.contains(&id_2),
        "collector log:\n{log}"
    );
    assert!(agent_1.is_running() && agent_2.is_running());
}

/// app1 (host-b) has an established connection to 10.0.0.2:5432, where db1 (host-a) listens:
/// the collector draws `app1 host depends_on db1 tcp:5432`, and nothing else.
#[test]
fn connection_to_another_hosts_listener_is_a_depends_on_relation() {
    let dir = tempfile::tempdir().expect("tempdir");
    let collector = spawn_collector(&dir.path().join("collector"));
    let token = enroll_token(&collector.data_dir, &[]);
    let store = open_store(&collector.data_dir);
    let start = |name: &str, root: &str| -> (std::path::PathBuf, Proc) {
        let agent_dir = dir.path().join(name);
        let root = fixture(root);
        let agent = spawn_agent_with(
            collector.quic,
            Some(&token),
            &agent_dir,
            "1s",
            &[
                "--root",
                root.to_str().expect("path"),
                "--discovery-interval",
                "1s",
            ],
        );
        (agent_dir, agent)
    };
    let (dir_a, mut agent_a) = start("agent-a", "host-a");
    let (dir_b, mut agent_b) = start("agent-b", "host-b");
    let id_a = wait_for_host(&store, &dir_a, &mut agent_a);
    let id_b = wait_for_host(&store, &dir_b, &mut agent_b);

    let depends = || -> Vec<(String, String, String, String, String, String, String)> {
        let mut stmt = store
            .prepare(
                "SELECT f.agent_id, f.type, f.key, t.agent_id, t.type, t.key, r.source
                 FROM relations r JOIN cis f ON f.id = r.from_ci JOIN cis t ON t.id = r.to_ci
                 WHERE r.kind = 'depends_on' ORDER BY 1, 2, 3, 4, 5, 6",
            )
            .expect("prepare");
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                    r.get(6)?,
                ))
            })
            .expect("query");
        rows.collect::<rusqlite::Result<_>>().expect("rows")
    };
    let found = wait_until(CHANGE, "a depends_on relation", || {
        let d = depends();
        (!d.is_empty()).then_some(d)
    });
    let s = |x: &str| x.to_string();
    assert_eq!(
        found,
        [(
            id_b.clone(),
            s("host"),
            s("host"),
            id_a.clone(),
            s("listening_service"),
            s("tcp:5432"),
            format!("wire:{id_b}")
        )]
    );
    // Only app1 reported an outbound connection (db1's side of it is an accepted one).
    let mut stmt = store
        .prepare(
            "SELECT agent_id, proto, remote_ip, remote_port, local_service, process
             FROM connections ORDER BY agent_id",
        )
        .expect("prepare");
    type Conn = (String, String, String, i64, Option<String>, Option<String>);
    let conns: Vec<Conn> = stmt
        .query_map([], |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
            ))
        })
        .expect("query")
        .collect::<rusqlite::Result<_>>()
        .expect("rows");
    assert_eq!(
        conns,
        [(
            id_b.clone(),
            s("tcp"),
            s("10.0.0.2"),
            5432,
            None,
            Some(s("app"))
        )]
    );
    // db1's postgres listener, with its process and package.
    let pg = ci(&store, &id_a, "listening_service", "tcp:5432").expect("tcp:5432");
    assert_eq!(pg.attrs["address"], "10.0.0.2");
    assert_eq!(pg.attrs["process"], "postgres");
    let provided: String = store
        .query_row(
            "SELECT t.key FROM relations r JOIN cis t ON t.id = r.to_ci
             WHERE r.from_ci = ?1 AND r.kind = 'provided_by'",
            [pg.id],
            |r| r.get(0),
        )
        .expect("provided_by");
    assert_eq!(provided, "postgresql-15:amd64");
    // Stable: more discovery passes change nothing.
    let (a, b) = (discovery_passes(&agent_a), discovery_passes(&agent_b));
    wait_discovery_passes(&mut agent_a, a, 2);
    wait_discovery_passes(&mut agent_b, b, 2);
    assert_eq!(depends(), found);
    assert!(agent_a.is_running() && agent_b.is_running());
}

/// After the first snapshot an unchanged host sends nothing; one new package is one delta with
/// one history row.
#[test]
fn unchanged_host_sends_nothing_and_a_change_is_one_delta() {
    let dir = tempfile::tempdir().expect("tempdir");
    let HostB {
        collector,
        root,
        mut agent,
        store,
        id,
    } = start_host_b(dir.path());
    let text = wait_until(CHANGE, "snapshot counted", || {
        let t = metrics(&collector);
        (inventory_messages(&t, "snapshot") == 1.0).then_some(t)
    });
    let before = max_history_id(&store);
    let changes_before = cmdb_metric(&text, "vigil_cmdb_changes_total", "package");
    assert_eq!(
        cmdb_metric(&text, "vigil_cmdb_items", "package"),
        3.0,
        "{text}"
    );

    // Five discovery passes more: no message, no history.
    let passes = discovery_passes(&agent);
    wait_discovery_passes(&mut agent, passes, 5);
    let text = metrics(&collector);
    assert_eq!(inventory_messages(&text, "snapshot"), 1.0, "{text}");
    assert_eq!(inventory_messages(&text, "delta"), 0.0, "{text}");
    assert_eq!(inventory_messages(&text, "resync"), 0.0, "{text}");
    assert_eq!(history_since(&store, &id, before), []);

    // One more package (the status file replaced atomically, as dpkg does).
    let status = root.join("var/lib/dpkg/status");
    let mut text = std::fs::read_to_string(&status).expect("read status");
    text.push_str(
        "\nPackage: jq\nStatus: install ok installed\nArchitecture: amd64\n\
         Version: 1.6-2.1\nDescription: lightweight and flexible command-line JSON processor\n",
    );
    let tmp = root.join("var/lib/dpkg/status-new");
    std::fs::write(&tmp, text).expect("write status");
    std::fs::rename(&tmp, &status).expect("replace status");
    wait_until(CHANGE, "one delta", || {
        (inventory_messages(&metrics(&collector), "delta") >= 1.0).then_some(())
    });
    // Further passes see nothing new.
    let passes = discovery_passes(&agent);
    wait_discovery_passes(&mut agent, passes, 2);
    let text = metrics(&collector);
    assert_eq!(inventory_messages(&text, "delta"), 1.0, "{text}");
    assert_eq!(inventory_messages(&text, "snapshot"), 1.0, "{text}");
    assert_eq!(inventory_messages(&text, "resync"), 0.0, "{text}");
    let rows = history_since(&store, &id, before);
    assert_eq!(rows.len(), 1, "{rows:#?}");
    let ((ty, key), h) = &rows[0];
    assert_eq!((ty.as_str(), key.as_str()), ("package", "jq:amd64"));
    assert_eq!((h.attribute.as_str(), h.change.as_str()), ("*", "added"));
    assert_eq!((h.old.as_ref(), h.new.as_ref()), (None, None));
    assert_eq!(h.source, id);
    let jq = ci(&store, &id, "package", "jq:amd64").expect("jq CI");
    assert_eq!(jq.state, "active");
    assert_eq!(jq.attrs["version"], "1.6-2.1");
    assert_eq!(
        cmdb_metric(&text, "vigil_cmdb_changes_total", "package"),
        changes_before + 1.0,
        "{text}"
    );
    assert_eq!(
        cmdb_metric(&text, "vigil_cmdb_items", "package"),
        4.0,
        "{text}"
    );
    assert!(agent.is_running(), "agent log:\n{}", agent.logs());
}

/// When the collector's stored version of a host's inventory is not the base of the agent's
/// next delta (here: changed behind its back through a second connection to the store), the
/// collector writes nothing for the delta, asks for a full resync, and the agent answers with a
/// full snapshot that carries the change: the new `listening_service` CI appears with one history
/// row `added`, and nothing else changes.
///
/// A fixture root (a copy of `host-b`), not `/`: other tests open and close listeners on this
/// host at any time, which would make the agent send deltas of its own.
#[test]
fn collector_asks_for_a_full_resync_when_versions_disagree() {
    let dir = tempfile::tempdir().expect("tempdir");
    let HostB {
        collector,
        root,
        mut agent,
        store,
        id,
    } = start_host_b(dir.path());
    wait_until(CHANGE, "snapshot counted", || {
        (inventory_messages(&metrics(&collector), "snapshot") == 1.0).then_some(())
    });
    let version = |store: &Connection| -> i64 {
        store
            .query_row(
                "SELECT version FROM inventory_state WHERE agent_id = ?1",
                [&id],
                |r| r.get(0),
            )
            .expect("inventory_state row")
    };
    assert_eq!(
        version(&store),
        1,
        "the agent's first discovery is version 1"
    );
    assert_eq!(ci(&store, &id, "listening_service", "tcp:8080"), None);

    // The collector now believes it holds version 1000: the agent's next delta (base 1) does
    // not match.
    let rw = open_store_rw(&collector.data_dir);
    let n = rw
        .execute(
            "UPDATE inventory_state SET version = 1000 WHERE agent_id = ?1",
            [&id],
        )
        .expect("tamper with the stored version");
    assert_eq!(n, 1);
    drop(rw);
    let before = max_history_id(&store);

    // A new listener on 0.0.0.0:8080 (no process owns its inode), the table replaced atomically.
    let tcp = root.join("proc/net/tcp");
    let mut table = std::fs::read_to_string(&tcp).expect("read tcp table");
    table.push_str(
        "   2: 00000000:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 8003 1 0000000000000000 100 0 0 10 0\n",
    );
    let tmp = root.join("proc/net/tcp-new");
    std::fs::write(&tmp, table).expect("write tcp table");
    std::fs::rename(&tmp, &tcp).expect("replace tcp table");

    let svc = wait_until(CHANGE, "tcp:8080 in the CMDB", || {
        if !agent.is_running() {
            panic!("agent exited; log:\n{}", agent.logs());
        }
        ci(&store, &id, "listening_service", "tcp:8080")
    });
    assert_eq!(svc.state, "active");
    assert_eq!(svc.attrs["address"], "0.0.0.0", "{svc:?}");
    assert_eq!(svc.attrs["port"], json!(8080), "{svc:?}");
    // Two discovery passes more: nothing else may follow.
    let passes = discovery_passes(&agent);
    wait_discovery_passes(&mut agent, passes, 2);
    let text = metrics(&collector);
    assert_eq!(inventory_messages(&text, "resync"), 1.0, "{text}");
    assert_eq!(inventory_messages(&text, "snapshot"), 2.0, "{text}");
    assert_eq!(inventory_messages(&text, "delta"), 0.0, "{text}");
    // Stored by the snapshot, which gives the agent's version, not the tampered one.
    assert_eq!(version(&store), 2);
    let rows = history_since(&store, &id, before);
    assert_eq!(rows.len(), 1, "{rows:#?}");
    let ((ty, key), h) = &rows[0];
    assert_eq!(
        (ty.as_str(), key.as_str()),
        ("listening_service", "tcp:8080")
    );
    assert_eq!(
        (h.ci_id, h.attribute.as_str(), h.change.as_str()),
        (svc.id, "*", "added")
    );
    assert_eq!(h.source, id);
    let rel: i64 = store
        .query_row(
            "SELECT COUNT(*) FROM relations r JOIN cis h ON h.id = r.from_ci
             WHERE h.agent_id = ?1 AND h.type = 'host' AND r.kind = 'runs' AND r.to_ci = ?2",
            params![id, svc.id],
            |r| r.get(0),
        )
        .expect("relation");
    assert_eq!(rel, 1, "host runs tcp:8080");
    let (clog, alog) = (collector.proc.logs(), agent.logs());
    assert!(
        clog.contains("asking for a snapshot") && clog.contains("1000"),
        "collector log:\n{clog}"
    );
    assert!(
        alog.contains("collector asked for a full inventory snapshot"),
        "agent log:\n{alog}"
    );
    assert!(agent.is_running(), "agent log:\n{alog}");
}
