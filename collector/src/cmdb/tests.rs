//! CMDB reconciliation against a real SQLite file in a temporary directory.

use rusqlite::params;
use tempfile::TempDir;
use vigil_shared::inventory::{
    ci_type, diff, relation, Ci, CiRef, Inventory, InventoryDelta, OutboundConnection, Relation,
};
use vigil_shared::proto::{InventoryDeltaMsg, InventorySnapshot};

use super::*;
use crate::store::NewAgent;

const T0: i64 = 1_700_000_000_000;

fn store(agents: &[&str]) -> (TempDir, Db) {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = Db::open(dir.path()).expect("open store");
    for id in agents {
        db.register_agent(
            &NewAgent {
                id: (*id).to_owned(),
                hostname: format!("{id}.example"),
                version: "0.1.0".into(),
                cert_pin: "00".repeat(32),
                token_id: "tok".into(),
            },
            T0,
        )
        .expect("register agent");
    }
    (dir, db)
}

fn host(machine_id: &str) -> Ci {
    Ci::new(ci_type::HOST, ci_type::HOST, "web1")
        .attr("hostname", "web1")
        .attr("machine_id", machine_id)
        .attr("dmi_uuid", "4c4c4544-0000-0000-0000-000000000001")
}

fn pkg(name: &str, version: &str) -> Ci {
    Ci::new(ci_type::PACKAGE, format!("{name}:amd64"), name)
        .attr("name", name)
        .attr("version", version)
        .attr("architecture", "amd64")
}

fn ip(addr: &str) -> Ci {
    Ci::new(ci_type::IP_ADDRESS, addr, addr).attr("family", "inet")
}

fn listener(proto: &str, address: &str, port: u16) -> Ci {
    let key = format!("{proto}:{port}");
    Ci::new(ci_type::LISTENING_SERVICE, key.clone(), key)
        .attr("protocol", proto)
        .attr("address", address)
        .attr("port", port)
}

fn conn(remote_ip: &str, port: u16, local_service: Option<&str>) -> OutboundConnection {
    OutboundConnection {
        proto: "tcp".into(),
        remote_ip: remote_ip.into(),
        remote_port: port,
        local_service: local_service.map(str::to_owned),
        process: Some("app".into()),
    }
}

fn rel(from: (&str, &str), kind: &str, to: (&str, &str)) -> Relation {
    Relation {
        from: CiRef::new(from.0, from.1),
        kind: kind.to_owned(),
        to: CiRef::new(to.0, to.1),
    }
}

fn inventory(cis: Vec<Ci>, relations: Vec<Relation>, conns: Vec<OutboundConnection>) -> Inventory {
    let mut inv = Inventory {
        cis,
        relations,
        connections: conns,
    };
    inv.canonicalize();
    inv
}

fn snapshot(db: &Db, agent: &str, version: u64, inv: &Inventory, now: i64) -> InventoryOutcome {
    let snap = InventorySnapshot {
        version,
        ts_ms: now,
        inventory: inv.clone(),
    };
    apply_snapshot(db, agent, &snap, now).expect("apply snapshot")
}

fn delta(
    db: &Db,
    agent: &str,
    base: u64,
    version: u64,
    d: InventoryDelta,
    now: i64,
) -> InventoryOutcome {
    let msg = InventoryDeltaMsg {
        base_version: base,
        version,
        ts_ms: now,
        delta: d,
    };
    apply_delta(db, agent, &msg, now).expect("apply delta")
}

fn stored(version: u64, added: usize, changed: usize, removed: usize) -> InventoryOutcome {
    InventoryOutcome::Stored {
        version,
        added,
        changed,
        removed,
    }
}

type HistoryRow = (String, String, String, Option<String>, Option<String>);

/// History of `agent`'s CIs after history id `after`: (key, attribute, change, old, new).
fn history_since(db: &Db, agent: &str, after: i64) -> Vec<HistoryRow> {
    let mut stmt = db
        .conn()
        .prepare(
            "SELECT c.key, h.attribute, h.change, h.old_value, h.new_value FROM ci_history h
             JOIN cis c ON c.id = h.ci_id WHERE c.agent_id = ?1 AND h.id > ?2 ORDER BY h.id",
        )
        .expect("prepare");
    let rows = stmt
        .query_map(params![agent, after], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
        })
        .expect("query");
    rows.collect::<rusqlite::Result<_>>().expect("rows")
}

fn last_history_id(db: &Db) -> i64 {
    db.conn()
        .query_row("SELECT COALESCE(MAX(id), 0) FROM ci_history", [], |r| {
            r.get(0)
        })
        .expect("max id")
}

fn h(key: &str, attr: &str, change: &str, old: Option<&str>, new: Option<&str>) -> HistoryRow {
    (
        key.to_owned(),
        attr.to_owned(),
        change.to_owned(),
        old.map(str::to_owned),
        new.map(str::to_owned),
    )
}

/// (id, state, retired_at_ms) of one CI.
fn ci(db: &Db, agent: &str, ty: &str, key: &str) -> (i64, String, Option<i64>) {
    db.conn()
        .query_row(
            "SELECT id, state, retired_at_ms FROM cis WHERE agent_id = ?1 AND type = ?2 AND key = ?3",
            params![agent, ty, key],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .expect("ci row")
}

fn count(db: &Db, sql: &str) -> i64 {
    db.conn().query_row(sql, [], |r| r.get(0)).expect("count")
}

fn stored_version(db: &Db, agent: &str) -> Option<i64> {
    db.conn()
        .query_row(
            "SELECT version FROM inventory_state WHERE agent_id = ?1",
            [agent],
            |r| r.get(0),
        )
        .ok()
}

/// `from_key -kind-> to_key` of every relation (with both ends' agents), sorted.
fn relations(db: &Db) -> Vec<String> {
    let mut stmt = db
        .conn()
        .prepare(
            "SELECT f.agent_id || '/' || f.key || ' ' || r.kind || ' ' || t.agent_id || '/' || t.key
             || ' (' || r.source || ')'
             FROM relations r JOIN cis f ON f.id = r.from_ci JOIN cis t ON t.id = r.to_ci
             ORDER BY 1",
        )
        .expect("prepare");
    let rows = stmt.query_map([], |r| r.get(0)).expect("query");
    rows.collect::<rusqlite::Result<_>>().expect("rows")
}

fn base() -> Inventory {
    inventory(
        vec![host("m-1"), pkg("openssl", "3.0.1"), pkg("curl", "7.88")],
        vec![],
        vec![],
    )
}

#[test]
fn identical_snapshot_writes_no_history() {
    let (_d, db) = store(&["agent-a"]);
    assert_eq!(snapshot(&db, "agent-a", 1, &base(), T0), stored(1, 3, 0, 0));
    assert_eq!(
        history_since(&db, "agent-a", 0),
        vec![
            h("host", "*", "added", None, None),
            h("curl:amd64", "*", "added", None, None),
            h("openssl:amd64", "*", "added", None, None),
        ]
    );
    let mark = last_history_id(&db);
    assert_eq!(
        snapshot(&db, "agent-a", 2, &base(), T0 + 60_000),
        stored(2, 0, 0, 0)
    );
    assert_eq!(history_since(&db, "agent-a", mark), vec![]);
    assert_eq!(stored_version(&db, "agent-a"), Some(2));
    // Last seen moves with the agent's report, without rewriting the rows.
    let seen: i64 = db
        .conn()
        .query_row(
            "SELECT last_seen_ms FROM ci_view WHERE agent_id = 'agent-a' AND key = 'curl:amd64'",
            [],
            |r| r.get(0),
        )
        .expect("view");
    assert_eq!(seen, T0 + 60_000);
}

#[test]
fn attribute_change_is_one_history_row_with_old_and_new() {
    let (_d, db) = store(&["agent-a"]);
    snapshot(&db, "agent-a", 1, &base(), T0);
    let (id, ..) = ci(&db, "agent-a", ci_type::PACKAGE, "openssl:amd64");
    let mark = last_history_id(&db);
    let next = inventory(
        vec![host("m-1"), pkg("openssl", "3.0.2"), pkg("curl", "7.88")],
        vec![],
        vec![],
    );
    assert_eq!(
        snapshot(&db, "agent-a", 2, &next, T0 + 1),
        stored(2, 0, 1, 0)
    );
    assert_eq!(
        history_since(&db, "agent-a", mark),
        vec![h(
            "openssl:amd64",
            "version",
            "changed",
            Some("\"3.0.1\""),
            Some("\"3.0.2\"")
        )]
    );
    assert_eq!(ci(&db, "agent-a", ci_type::PACKAGE, "openssl:amd64").0, id);
    let attrs: String = db
        .conn()
        .query_row("SELECT attrs FROM cis WHERE id = ?1", [id], |r| r.get(0))
        .expect("attrs");
    assert!(attrs.contains("\"3.0.2\""), "{attrs}");

    // Attribute added and removed, and a new display name: one row each.
    let mark = last_history_id(&db);
    let mut renamed = pkg("openssl", "3.0.2").attr("source", "openssl");
    renamed.name = "OpenSSL".into();
    renamed.attrs.remove("architecture");
    let next = inventory(
        vec![host("m-1"), renamed, pkg("curl", "7.88")],
        vec![],
        vec![],
    );
    assert_eq!(
        snapshot(&db, "agent-a", 3, &next, T0 + 2),
        stored(3, 0, 1, 0)
    );
    assert_eq!(
        history_since(&db, "agent-a", mark),
        vec![
            h(
                "openssl:amd64",
                "_name",
                "changed",
                Some("\"openssl\""),
                Some("\"OpenSSL\"")
            ),
            h(
                "openssl:amd64",
                "architecture",
                "changed",
                Some("\"amd64\""),
                None
            ),
            h(
                "openssl:amd64",
                "source",
                "changed",
                None,
                Some("\"openssl\"")
            ),
        ]
    );
}

/// Found by the `inventory_delta` fuzz target: a float attribute read back from its stored JSON
/// text came out one ULP off (serde_json's default float parsing), so the CMDB showed another
/// value than the agent reported and logged a change of it whenever a sibling attribute changed.
#[test]
fn float_attributes_survive_the_store_exactly() {
    let (_d, db) = store(&["agent-a"]);
    let x = 9.958105845592179e-37_f64;
    let with = |v: &str| inventory(vec![pkg("openssl", v).attr("x", x)], vec![], vec![]);
    snapshot(&db, "agent-a", 1, &with("3.0.1"), T0);
    let mark = last_history_id(&db);
    assert_eq!(
        snapshot(&db, "agent-a", 2, &with("3.0.2"), T0 + 1),
        stored(2, 0, 1, 0)
    );
    assert_eq!(
        history_since(&db, "agent-a", mark),
        vec![h(
            "openssl:amd64",
            "version",
            "changed",
            Some("\"3.0.1\""),
            Some("\"3.0.2\"")
        )],
        "an unchanged float attribute is not a change"
    );
    let id = ci(&db, "agent-a", ci_type::PACKAGE, "openssl:amd64").0;
    let got = query::get_ci(&db, id).expect("get").expect("the CI");
    assert_eq!(
        got.attrs["x"].as_f64(),
        Some(x),
        "the API shows what the agent sent"
    );
}

/// Found by the `inventory_delta` fuzz target: attributes nested deeper than serde_json reads
/// back were stored, and then the CI could not be read (the API answered 500). The deepest
/// attribute an agent's frame can carry (the decoder's nesting limit) is stored and read back.
#[test]
fn the_deepest_attributes_a_frame_carries_are_read_back() {
    use vigil_shared::codec::{decode_body, encode_body};
    use vigil_shared::proto::{kind, Message};
    let (_d, db) = store(&["agent-a"]);
    let snapshot_with = |levels: usize| {
        let mut v = serde_json::json!("deep");
        for _ in 0..levels {
            v = serde_json::json!([v]);
        }
        Message::InventorySnapshot(InventorySnapshot {
            version: 1,
            ts_ms: T0,
            inventory: inventory(vec![pkg("openssl", "3").attr("x", v)], vec![], vec![]),
        })
    };
    let mut deepest = None;
    for levels in 0..2000 {
        let body = encode_body(&snapshot_with(levels)).expect("encode");
        match decode_body(kind::INVENTORY_SNAPSHOT, &body) {
            Ok(Message::InventorySnapshot(s)) => deepest = Some(s),
            Ok(other) => panic!("decoded as {other:?}"),
            Err(_) => break,
        }
    }
    let snap = deepest.expect("a shallow snapshot decodes");
    apply_snapshot(&db, "agent-a", &snap, T0).expect("stored");
    let id = ci(&db, "agent-a", ci_type::PACKAGE, "openssl:amd64").0;
    let got = query::get_ci(&db, id)
        .expect("the CI reads back")
        .expect("the CI");
    assert_eq!(got.attrs["x"], snap.inventory.cis[0].attrs["x"]);
}

#[test]
fn removal_retires_and_reappearance_reactivates() {
    let (_d, db) = store(&["agent-a"]);
    snapshot(&db, "agent-a", 1, &base(), T0);
    let (id, ..) = ci(&db, "agent-a", ci_type::PACKAGE, "curl:amd64");
    let mark = last_history_id(&db);
    let without = inventory(vec![host("m-1"), pkg("openssl", "3.0.1")], vec![], vec![]);
    assert_eq!(
        snapshot(&db, "agent-a", 2, &without, T0 + 10),
        stored(2, 0, 0, 1)
    );
    assert_eq!(
        ci(&db, "agent-a", ci_type::PACKAGE, "curl:amd64"),
        (id, "retired".into(), Some(T0 + 10))
    );
    assert_eq!(
        history_since(&db, "agent-a", mark),
        vec![h("curl:amd64", "*", "removed", None, None)]
    );
    // Retired: last seen is the last report that had it, not the current one.
    let seen: i64 = db
        .conn()
        .query_row(
            "SELECT last_seen_ms FROM ci_view WHERE id = ?1",
            [id],
            |r| r.get(0),
        )
        .expect("view");
    assert_eq!(seen, T0);
    // Unchanged while absent.
    let mark = last_history_id(&db);
    assert_eq!(
        snapshot(&db, "agent-a", 3, &without, T0 + 20),
        stored(3, 0, 0, 0)
    );
    assert_eq!(history_since(&db, "agent-a", mark), vec![]);
    // Back, with a new version: same id, active, one `added` and one change row.
    let back = inventory(
        vec![host("m-1"), pkg("openssl", "3.0.1"), pkg("curl", "8.0")],
        vec![],
        vec![],
    );
    assert_eq!(
        snapshot(&db, "agent-a", 4, &back, T0 + 30),
        stored(4, 1, 0, 0)
    );
    assert_eq!(
        ci(&db, "agent-a", ci_type::PACKAGE, "curl:amd64"),
        (id, "active".into(), None)
    );
    assert_eq!(
        history_since(&db, "agent-a", mark),
        vec![
            h("curl:amd64", "*", "added", Some("\"retired\""), None),
            h(
                "curl:amd64",
                "version",
                "changed",
                Some("\"7.88\""),
                Some("\"8.0\"")
            ),
        ]
    );
}

#[test]
fn delta_with_a_wrong_base_asks_for_resync_and_writes_nothing() {
    let (_d, db) = store(&["agent-a"]);
    let added = InventoryDelta {
        added: vec![pkg("zlib", "1.3")],
        ..InventoryDelta::default()
    };
    // Nothing stored yet.
    assert_eq!(
        delta(&db, "agent-a", 0, 1, added.clone(), T0),
        InventoryOutcome::Resync { have: None }
    );
    assert_eq!(count(&db, "SELECT count(*) FROM inventory_state"), 0);
    assert_eq!(count(&db, "SELECT count(*) FROM cis"), 0);

    snapshot(&db, "agent-a", 5, &base(), T0);
    let before = (
        count(&db, "SELECT count(*) FROM cis"),
        last_history_id(&db),
        count(&db, "SELECT ts_ms FROM inventory_state"),
    );
    for wrong in [4, 6, 0] {
        assert_eq!(
            delta(&db, "agent-a", wrong, 7, added.clone(), T0 + 1),
            InventoryOutcome::Resync { have: Some(5) }
        );
    }
    let after = (
        count(&db, "SELECT count(*) FROM cis"),
        last_history_id(&db),
        count(&db, "SELECT ts_ms FROM inventory_state"),
    );
    assert_eq!(before, after);
    assert_eq!(stored_version(&db, "agent-a"), Some(5));
}

#[test]
fn delta_applies_added_changed_removed_and_relations() {
    let (_d, db) = store(&["agent-a"]);
    let old = inventory(
        vec![host("m-1"), pkg("openssl", "3.0.1"), pkg("curl", "7.88")],
        vec![rel(
            ("host", "host"),
            relation::RUNS,
            ("package", "curl:amd64"),
        )],
        vec![],
    );
    snapshot(&db, "agent-a", 1, &old, T0);
    let new = inventory(
        vec![
            host("m-1"),
            pkg("openssl", "3.0.2"),
            Ci::new(ci_type::FILESYSTEM, "/", "/").attr("fstype", "ext4"),
        ],
        vec![rel(("host", "host"), relation::HAS, ("filesystem", "/"))],
        vec![],
    );
    let d = diff(&old, &new);
    let mark = last_history_id(&db);
    assert_eq!(delta(&db, "agent-a", 1, 2, d, T0 + 5), stored(2, 1, 1, 1));
    assert_eq!(
        history_since(&db, "agent-a", mark),
        vec![
            h("curl:amd64", "*", "removed", None, None),
            h("/", "*", "added", None, None),
            h(
                "openssl:amd64",
                "version",
                "changed",
                Some("\"3.0.1\""),
                Some("\"3.0.2\"")
            ),
        ]
    );
    assert_eq!(stored_version(&db, "agent-a"), Some(2));
    assert_eq!(relations(&db), vec!["agent-a/host has agent-a// (agent-a)"]);
    // An empty delta only moves the version and the report time.
    let mark = last_history_id(&db);
    assert_eq!(
        delta(&db, "agent-a", 2, 3, InventoryDelta::default(), T0 + 9),
        stored(3, 0, 0, 0)
    );
    assert_eq!(history_since(&db, "agent-a", mark), vec![]);
    assert_eq!(count(&db, "SELECT ts_ms FROM inventory_state"), T0 + 9);
}

#[test]
fn snapshot_replaces_the_hosts_relations() {
    let (_d, db) = store(&["agent-a"]);
    let fs = Ci::new(ci_type::FILESYSTEM, "/", "/");
    let first = inventory(
        vec![host("m-1"), fs.clone(), pkg("curl", "7.88")],
        vec![
            rel(("host", "host"), relation::HAS, ("filesystem", "/")),
            rel(("host", "host"), relation::RUNS, ("package", "curl:amd64")),
            // Unknown ends and the collector's own kind are ignored.
            rel(("host", "host"), relation::HAS, ("disk", "sdz")),
            rel(("host", "host"), relation::DEPENDS_ON, ("filesystem", "/")),
        ],
        vec![],
    );
    snapshot(&db, "agent-a", 1, &first, T0);
    assert_eq!(
        relations(&db),
        vec![
            "agent-a/host has agent-a// (agent-a)",
            "agent-a/host runs agent-a/curl:amd64 (agent-a)",
        ]
    );
    let second = inventory(
        vec![host("m-1"), fs],
        vec![rel(("host", "host"), relation::HAS, ("filesystem", "/"))],
        vec![],
    );
    snapshot(&db, "agent-a", 2, &second, T0 + 1);
    assert_eq!(relations(&db), vec!["agent-a/host has agent-a// (agent-a)"]);
}

#[test]
fn duplicate_machine_id_is_flagged_not_merged() {
    let (_d, db) = store(&["agent-a", "agent-b", "agent-c"]);
    snapshot(&db, "agent-a", 1, &base(), T0);
    snapshot(&db, "agent-b", 1, &base(), T0 + 1_000);
    let other = inventory(vec![host("m-2")], vec![], vec![]);
    snapshot(&db, "agent-c", 1, &other, T0 + 2_000);
    // The first agent reports again: still the original.
    snapshot(&db, "agent-a", 2, &base(), T0 + 3_000);
    type Flags = (String, Option<String>, Option<String>, Option<String>);
    let flags: Vec<Flags> = {
        let mut stmt = db
            .conn()
            .prepare(
                "SELECT agent_id, machine_id, dmi_uuid, duplicate_of FROM inventory_state
                 ORDER BY agent_id",
            )
            .expect("prepare");
        let rows = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
            .expect("query");
        rows.collect::<rusqlite::Result<_>>().expect("rows")
    };
    let dmi = Some("4c4c4544-0000-0000-0000-000000000001".to_owned());
    assert_eq!(
        flags,
        vec![
            ("agent-a".into(), Some("m-1".into()), dmi.clone(), None),
            (
                "agent-b".into(),
                Some("m-1".into()),
                dmi.clone(),
                Some("agent-a".into())
            ),
            ("agent-c".into(), Some("m-2".into()), dmi, None),
        ]
    );
    // Not merged: each agent keeps its own CIs, and the flag shows on the duplicate's CIs.
    assert_eq!(
        count(&db, "SELECT count(*) FROM cis WHERE type = 'host'"),
        3
    );
    assert_eq!(
        count(&db, "SELECT count(*) FROM cis WHERE agent_id = 'agent-b'"),
        3
    );
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM ci_view WHERE duplicate_of = 'agent-a' AND agent_id = 'agent-b'"
        ),
        3
    );
    // A revoked original no longer makes the other a duplicate.
    db.revoke_agent("agent-a", T0 + 4_000).expect("revoke");
    snapshot(&db, "agent-b", 2, &base(), T0 + 5_000);
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM inventory_state WHERE duplicate_of IS NOT NULL"
        ),
        0
    );
}

#[test]
fn stale_marking_and_revival() {
    const DAY: i64 = 24 * 3600 * 1000;
    let check = |revive_by_snapshot: bool| {
        let (_d, db) = store(&["agent-a", "agent-b"]);
        snapshot(&db, "agent-a", 1, &base(), T0);
        snapshot(&db, "agent-b", 1, &base(), T0 + 6 * DAY);
        assert_eq!(
            mark_stale(&db, DEFAULT_STALE_AFTER, T0 + 7 * DAY).expect("mark"),
            0
        );
        let mark = last_history_id(&db);
        assert_eq!(
            mark_stale(&db, DEFAULT_STALE_AFTER, T0 + 7 * DAY + 1).expect("mark"),
            3
        );
        assert_eq!(
            mark_stale(&db, DEFAULT_STALE_AFTER, T0 + 7 * DAY + 2).expect("mark"),
            0
        );
        let stale = Some("\"stale\"");
        let active = Some("\"active\"");
        assert_eq!(
            history_since(&db, "agent-a", mark),
            vec![
                h("host", "*", "state", active, stale),
                h("curl:amd64", "*", "state", active, stale),
                h("openssl:amd64", "*", "state", active, stale),
            ]
        );
        assert_eq!(ci(&db, "agent-a", ci_type::HOST, "host").1, "stale");
        assert_eq!(ci(&db, "agent-b", ci_type::HOST, "host").1, "active");
        let m = metrics_for(&db).expect("metrics");
        assert_eq!(m.get(ci_type::PACKAGE), (2, 4 + 2));

        let mark = last_history_id(&db);
        let now = T0 + 8 * DAY;
        let outcome = if revive_by_snapshot {
            snapshot(&db, "agent-a", 2, &base(), now)
        } else {
            delta(&db, "agent-a", 1, 2, InventoryDelta::default(), now)
        };
        assert_eq!(outcome, stored(2, 0, 0, 0));
        let mut got = history_since(&db, "agent-a", mark);
        got.sort();
        assert_eq!(
            got,
            vec![
                h("curl:amd64", "*", "state", stale, active),
                h("host", "*", "state", stale, active),
                h("openssl:amd64", "*", "state", stale, active),
            ],
            "revived by snapshot: {revive_by_snapshot}"
        );
        assert_eq!(ci(&db, "agent-a", ci_type::HOST, "host").1, "active");
        assert_eq!(m.get(ci_type::PACKAGE), (4, 4 + 2 + 2));
        // Seen again: not stale until another stale_after has passed.
        assert_eq!(
            mark_stale(&db, DEFAULT_STALE_AFTER, now + 1).expect("mark"),
            0
        );
        let later = now + 7 * DAY + 1;
        assert_eq!(
            mark_stale(&db, DEFAULT_STALE_AFTER, later).expect("mark"),
            6
        );
        assert_eq!(m.get(ci_type::PACKAGE), (0, 4 + 2 + 2 + 4));
    };
    check(true);
    check(false);
}

#[test]
fn cross_host_depends_on() {
    let server = |listen_addr: &str| {
        inventory(
            vec![
                host("m-server"),
                ip("192.0.2.2/24"),
                ip("2001:db8::2/64"),
                listener("tcp", listen_addr, 5432),
                listener("tcp", "0.0.0.0", 22),
            ],
            vec![],
            vec![],
        )
    };
    let client = |conns: Vec<OutboundConnection>| {
        inventory(
            vec![host("m-client"), listener("tcp", "0.0.0.0", 8080)],
            vec![],
            conns,
        )
    };
    // Server first, then the client.
    let (_d, db) = store(&["srv", "cli", "other"]);
    snapshot(&db, "srv", 1, &server("0.0.0.0"), T0);
    snapshot(
        &db,
        "cli",
        1,
        &client(vec![conn("192.0.2.2", 5432, None)]),
        T0,
    );
    assert_eq!(
        relations(&db),
        vec!["cli/host depends_on srv/tcp:5432 (wire:cli)"]
    );
    // The client's connection moves to its service and an IPv4-mapped address.
    let c2 = client(vec![conn("::ffff:192.0.2.2", 5432, Some("tcp:8080"))]);
    assert_eq!(
        delta(
            &db,
            "cli",
            1,
            2,
            diff(&client(vec![conn("192.0.2.2", 5432, None)]), &c2),
            T0 + 1
        ),
        stored(2, 0, 0, 0)
    );
    assert_eq!(
        relations(&db),
        vec!["cli/tcp:8080 depends_on srv/tcp:5432 (wire:cli)"]
    );
    // The server now binds its database to another address only: the dependency goes.
    let d = diff(&server("0.0.0.0"), &server("198.51.100.9"));
    delta(&db, "srv", 1, 2, d, T0 + 2);
    assert_eq!(relations(&db), Vec::<String>::new());
    // ... and comes back when it listens on the address again.
    let d = diff(&server("198.51.100.9"), &server("192.0.2.2"));
    delta(&db, "srv", 2, 3, d, T0 + 3);
    assert_eq!(
        relations(&db),
        vec!["cli/tcp:8080 depends_on srv/tcp:5432 (wire:cli)"]
    );
    // The client stops connecting.
    let d = diff(&c2, &client(vec![]));
    delta(&db, "cli", 2, 3, d, T0 + 4);
    assert_eq!(relations(&db), Vec::<String>::new());

    // Client first: the server's snapshot completes the dependency; an unknown address and a
    // port nobody listens on give nothing.
    let (_d, db) = store(&["srv", "cli"]);
    snapshot(
        &db,
        "cli",
        1,
        &client(vec![
            conn("2001:db8::2", 5432, None),
            conn("192.0.2.99", 5432, None),
            conn("192.0.2.2", 6543, None),
        ]),
        T0,
    );
    assert_eq!(relations(&db), Vec::<String>::new());
    snapshot(&db, "srv", 1, &server("::"), T0 + 1);
    assert_eq!(
        relations(&db),
        vec!["cli/host depends_on srv/tcp:5432 (wire:cli)"]
    );
    // The server's address goes away: so does the dependency.
    let mut gone = server("::");
    gone.cis.retain(|c| c.ci_type != ci_type::IP_ADDRESS);
    snapshot(&db, "srv", 2, &gone, T0 + 2);
    assert_eq!(relations(&db), Vec::<String>::new());
}

#[test]
fn loopback_dependency_needs_the_same_machine() {
    let (_d, db) = store(&["srv", "cli", "far"]);
    let srv = inventory(
        vec![host("m-1"), listener("tcp", "127.0.0.1", 6379)],
        vec![],
        vec![],
    );
    let far = inventory(
        vec![host("m-9"), listener("tcp", "0.0.0.0", 6379)],
        vec![],
        vec![],
    );
    let cli = inventory(
        vec![host("m-1")],
        vec![],
        vec![conn("127.0.0.1", 6379, None)],
    );
    snapshot(&db, "srv", 1, &srv, T0);
    snapshot(&db, "far", 1, &far, T0);
    snapshot(&db, "cli", 1, &cli, T0 + 1);
    assert_eq!(
        relations(&db),
        vec!["cli/host depends_on srv/tcp:6379 (wire:cli)"]
    );
}

#[test]
fn an_address_every_host_has_stays_on_the_clients_machine() {
    let (_d, db) = store(&["a", "b"]);
    let bridge = |machine: &str, port: u16| {
        inventory(
            vec![
                host(machine),
                ip("198.51.100.1/24"),
                listener("tcp", "0.0.0.0", port),
            ],
            vec![],
            vec![conn("198.51.100.1", 5432, None)],
        )
    };
    // Both have the bridge address and listen on 5432; each connects to its own bridge.
    snapshot(&db, "a", 1, &bridge("m-a", 5432), T0);
    snapshot(&db, "b", 1, &bridge("m-b", 5432), T0);
    assert_eq!(
        relations(&db),
        vec![
            "a/host depends_on a/tcp:5432 (wire:a)",
            "b/host depends_on b/tcp:5432 (wire:b)",
        ]
    );
    // b no longer listens: a's dependency does not move to b, b has none.
    snapshot(&db, "b", 2, &bridge("m-b", 6000), T0 + 1);
    assert_eq!(
        relations(&db),
        vec!["a/host depends_on a/tcp:5432 (wire:a)"]
    );
}

#[test]
fn metrics_count_active_items_and_history_rows() {
    let (dir, db) = store(&["agent-a", "agent-b"]);
    let m = metrics_for(&db).expect("metrics");
    assert_eq!(m.get(ci_type::PACKAGE), (0, 0));
    snapshot(&db, "agent-a", 1, &base(), T0);
    snapshot(&db, "agent-b", 1, &base(), T0);
    let next = inventory(vec![host("m-1"), pkg("openssl", "3.1")], vec![], vec![]);
    snapshot(&db, "agent-a", 2, &next, T0 + 1);
    // packages: 4 added, 1 changed, 1 removed -> 6 rows; 3 active.
    assert_eq!(m.get(ci_type::PACKAGE), (3, 6));
    assert_eq!(m.get(ci_type::HOST), (2, 2));
    // A second handle on the same file shares the metrics; a fresh process would reload them.
    let again = Db::open(dir.path()).expect("reopen");
    assert!(std::sync::Arc::ptr_eq(
        &m,
        &metrics_for(&again).expect("metrics")
    ));
    let fresh = crate::metrics::CmdbMetrics::new().expect("metrics");
    stats::load_into(&db, &fresh).expect("load");
    assert_eq!(fresh.get(ci_type::PACKAGE), (3, 0));

    let table = std::sync::Arc::new(crate::latest::LatestTable::new());
    let presence = std::sync::Arc::new(crate::presence::Presence::new(crate::presence::Policy {
        down_after_intervals: 3,
        shutdown_grace_ms: 0,
    }));
    let metrics =
        crate::metrics::Metrics::new(table, presence, std::sync::Arc::new(|| 0)).expect("metrics");
    metrics.register_cmdb(&m).expect("register");
    let text = metrics.encode();
    for line in [
        "vigil_cmdb_items{type=\"package\"} 3",
        "vigil_cmdb_items{type=\"host\"} 2",
        "vigil_cmdb_items{type=\"business_service\"} 0",
        "vigil_cmdb_changes_total{type=\"package\"} 6",
        "vigil_cmdb_changes_total{type=\"systemd_unit\"} 0",
    ] {
        assert!(text.lines().any(|l| l == line), "{line} missing in\n{text}");
    }
}

#[test]
fn unknown_agents_types_and_api_types_are_refused_or_skipped() {
    let (_d, db) = store(&["agent-a"]);
    let snap = InventorySnapshot {
        version: 1,
        ts_ms: T0,
        inventory: base(),
    };
    assert!(matches!(
        apply_snapshot(&db, "nobody", &snap, T0),
        Err(StoreError::UnknownAgent(a)) if a == "nobody"
    ));
    assert_eq!(count(&db, "SELECT count(*) FROM cis"), 0);
    let odd = inventory(
        vec![
            host("m-1"),
            Ci::new("gpu", "0", "gpu0"),
            Ci::new(ci_type::BUSINESS_SERVICE, "shop", "shop"),
        ],
        vec![],
        vec![],
    );
    assert_eq!(snapshot(&db, "agent-a", 1, &odd, T0), stored(1, 1, 0, 0));
    assert_eq!(count(&db, "SELECT count(*) FROM cis"), 1);
    // A repeated identity in a non-canonical snapshot: the last one wins, nothing fails.
    let dup = Inventory {
        cis: vec![host("m-1"), pkg("a", "1"), pkg("a", "2")],
        relations: vec![],
        connections: vec![],
    };
    assert_eq!(
        snapshot(&db, "agent-a", 2, &dup, T0 + 1),
        stored(2, 1, 0, 0)
    );
    let attrs: String = db
        .conn()
        .query_row("SELECT attrs FROM cis WHERE key = 'a:amd64'", [], |r| {
            r.get(0)
        })
        .expect("attrs");
    assert!(attrs.contains("\"version\":\"2\""), "{attrs}");
}

#[test]
fn connection_settings_are_restored_after_every_outcome() {
    let (_d, db) = store(&["agent-a"]);
    let settings = |db: &Db| -> (i64, i64) {
        let get = |p: &str| {
            db.conn()
                .pragma_query_value(None, p, |r| r.get::<_, i64>(0))
                .expect("pragma")
        };
        (get("synchronous"), get("wal_autocheckpoint"))
    };
    let before = settings(&db);
    assert_eq!(before, (2, 1000), "the store's FULL and SQLite's default");
    snapshot(&db, "agent-a", 1, &base(), T0);
    assert_eq!(settings(&db), before);
    // Resync (rolled back) and an error (unknown agent) restore them too.
    delta(&db, "agent-a", 9, 10, InventoryDelta::default(), T0);
    assert_eq!(settings(&db), before);
    let snap = InventorySnapshot {
        version: 1,
        ts_ms: T0,
        inventory: base(),
    };
    assert!(apply_snapshot(&db, "nobody", &snap, T0).is_err());
    assert_eq!(settings(&db), before);
    assert!(db.conn().is_autocommit(), "no transaction left open");
}

#[test]
fn large_snapshots_go_through_multi_row_writes_intact() {
    let (_d, db) = store(&["agent-a", "agent-b"]);
    let big = |n: usize, bumped: usize| {
        let mut cis = vec![host("m-1")];
        let mut rels = vec![];
        for i in 0..n {
            let v = if i < bumped { "2" } else { "1" };
            cis.push(pkg(&format!("p{i:04}"), v));
            rels.push(rel(
                ("host", "host"),
                relation::RUNS,
                ("package", &format!("p{i:04}:amd64")),
            ));
        }
        inventory(cis, rels, vec![])
    };
    // Another agent first, so ids do not start at 1.
    snapshot(&db, "agent-b", 1, &big(3, 0), T0);
    assert_eq!(
        snapshot(&db, "agent-a", 1, &big(1_000, 0), T0),
        stored(1, 1_001, 0, 0)
    );
    let check = |sql: &str, expected: i64| assert_eq!(count(&db, sql), expected, "{sql}");
    check("SELECT count(*) FROM cis WHERE agent_id = 'agent-a'", 1_001);
    check(
        "SELECT count(*) FROM relations WHERE source = 'agent-a'",
        1_000,
    );
    check(
        "SELECT count(*) FROM ci_history h JOIN cis c ON c.id = h.ci_id
         WHERE c.agent_id = 'agent-a' AND h.change = 'added'",
        1_001,
    );
    check("SELECT count(DISTINCT id) FROM cis", 1_005);
    // Every relation points at the CI its key names.
    check(
        "SELECT count(*) FROM relations r JOIN cis f ON f.id = r.from_ci JOIN cis t ON t.id = r.to_ci
         WHERE r.source = 'agent-a' AND f.type = 'host' AND t.agent_id = 'agent-a'
           AND t.type = 'package'",
        1_000,
    );
    let mark = last_history_id(&db);
    assert_eq!(
        snapshot(&db, "agent-a", 2, &big(1_000, 300), T0 + 1),
        stored(2, 0, 300, 0)
    );
    assert_eq!(history_since(&db, "agent-a", mark).len(), 300);
    assert!(history_since(&db, "agent-a", mark)
        .iter()
        .all(|r| r.1 == "version" && r.3.as_deref() == Some("\"1\"")));
}

#[test]
fn commits_are_synchronous_full() {
    let (_d, db) = store(&["agent-a"]);
    let inside: i64 = in_reconcile_tx(&db, |tx| {
        let sync = tx.pragma_query_value(None, "synchronous", |r| r.get(0))?;
        Ok((sync, false))
    })
    .expect("in_reconcile_tx");
    assert_eq!(inside, 2, "synchronous=FULL inside the CMDB's transactions");
}

/// One transaction, each message on its own: a failing message and a delta on the wrong base
/// leave no trace, the others are stored as if applied one by one.
#[test]
fn batch_applies_each_message_alone() {
    let (_d, db) = store(&["agent-a", "agent-b"]);
    let snap = |version: u64, inv: Inventory| InventorySnapshot {
        version,
        ts_ms: T0,
        inventory: inv,
    };
    let zlib = InventoryDelta {
        added: vec![pkg("zlib", "1.3")],
        ..InventoryDelta::default()
    };
    let delta = |base_version: u64, version: u64| InventoryDeltaMsg {
        base_version,
        version,
        ts_ms: T0 + 1,
        delta: zlib.clone(),
    };
    let (a1, a2, b_wrong, nobody, b1) = (
        snap(1, base()),
        delta(1, 2),
        delta(7, 8),
        snap(1, base()),
        snap(3, base()),
    );
    let msgs = [
        ("agent-a", InventoryMsg::Snapshot(&a1), T0),
        ("agent-a", InventoryMsg::Delta(&a2), T0 + 1),
        ("agent-b", InventoryMsg::Delta(&b_wrong), T0 + 1),
        ("nobody", InventoryMsg::Snapshot(&nobody), T0 + 1),
        ("agent-b", InventoryMsg::Snapshot(&b1), T0 + 2),
    ];
    let before = metrics_for(&db).expect("metrics").get(ci_type::PACKAGE);
    let results = apply_batch(&db, &msgs).expect("batch");
    let summary: Vec<Result<InventoryOutcome, String>> = results
        .into_iter()
        .map(|r| r.map_err(|e| e.to_string()))
        .collect();
    assert_eq!(
        summary,
        [
            Ok(stored(1, 3, 0, 0)),
            Ok(stored(2, 1, 0, 0)),
            Ok(InventoryOutcome::Resync { have: None }),
            Err(StoreError::UnknownAgent("nobody".into()).to_string()),
            Ok(stored(3, 3, 0, 0)),
        ]
    );
    assert_eq!(stored_version(&db, "agent-a"), Some(2));
    assert_eq!(stored_version(&db, "agent-b"), Some(3));
    assert_eq!(
        count(&db, "SELECT count(*) FROM cis WHERE agent_id = 'agent-a'"),
        4
    );
    assert_eq!(
        count(&db, "SELECT count(*) FROM cis WHERE agent_id = 'agent-b'"),
        3
    );
    assert_eq!(
        count(&db, "SELECT count(*) FROM cis WHERE agent_id = 'nobody'"),
        0
    );
    // History and metrics of the stored messages only: 3 + 1 + 3 CIs added, 2 + 1 + 2 packages.
    assert_eq!(count(&db, "SELECT count(*) FROM ci_history"), 7);
    assert_eq!(
        metrics_for(&db).expect("metrics").get(ci_type::PACKAGE),
        (before.0 + 5, before.1 + 5)
    );
    assert!(db.conn().is_autocommit(), "no transaction left open");
}

/// Many threads at once: every message is applied exactly once, in each agent's order, and
/// each thread gets its own result.
#[test]
fn group_commit_gives_every_thread_its_result() {
    let agents: Vec<String> = (0..12).map(|i| format!("agent-{i:02}")).collect();
    let names: Vec<&str> = agents.iter().map(String::as_str).collect();
    let (dir, db) = store(&names);
    let gc = std::sync::Arc::new(GroupCommit::new(db));
    let threads: Vec<_> = agents
        .iter()
        .cloned()
        .map(|agent| {
            let gc = std::sync::Arc::clone(&gc);
            std::thread::spawn(move || {
                let mut outcomes = Vec::new();
                let snap = InventorySnapshot {
                    version: 1,
                    ts_ms: T0,
                    inventory: base(),
                };
                outcomes.push(gc.apply(&agent, InventoryMessage::Snapshot(snap), T0));
                for v in 2..=5u64 {
                    let d = InventoryDeltaMsg {
                        base_version: v - 1,
                        version: v,
                        ts_ms: T0,
                        delta: InventoryDelta {
                            added: vec![pkg(&format!("p{v}"), "1")],
                            ..InventoryDelta::default()
                        },
                    };
                    outcomes.push(gc.apply(&agent, InventoryMessage::Delta(d), T0));
                }
                // A delta on a base the collector does not hold.
                let wrong = InventoryDeltaMsg {
                    base_version: 2,
                    version: 6,
                    ts_ms: T0,
                    delta: InventoryDelta::default(),
                };
                outcomes.push(gc.apply(&agent, InventoryMessage::Delta(wrong), T0));
                outcomes
                    .into_iter()
                    .map(|r| r.map_err(|e| e.to_string()))
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    for t in threads {
        let outcomes = t.join().expect("thread");
        assert_eq!(
            outcomes,
            [
                Ok(stored(1, 3, 0, 0)),
                Ok(stored(2, 1, 0, 0)),
                Ok(stored(3, 1, 0, 0)),
                Ok(stored(4, 1, 0, 0)),
                Ok(stored(5, 1, 0, 0)),
                Ok(InventoryOutcome::Resync { have: Some(5) }),
            ]
        );
    }
    let db = Db::open(dir.path()).expect("open");
    for agent in &agents {
        assert_eq!(stored_version(&db, agent), Some(5), "{agent}");
    }
    assert_eq!(count(&db, "SELECT count(*) FROM cis"), 12 * 7);
    assert_eq!(count(&db, "SELECT count(*) FROM ci_history"), 12 * 7);
}

#[test]
fn with_a_checkpointer_the_commit_leaves_the_wal_to_its_thread() {
    let (dir, mut db) = store(&["agent-a"]);
    let checkpointer = crate::store::Checkpointer::spawn(dir.path()).expect("checkpointer");
    let checkpoints = checkpointer.handle();
    db.attach_checkpoints(checkpoints.clone());
    // Pages in the database file: only a checkpoint copies the snapshot there.
    let db_pages =
        || std::fs::metadata(dir.path().join(crate::store::DB_FILE)).map_or(0, |m| m.len()) / 4096;
    let before = db_pages();
    let mut cis = vec![host("m-1")];
    cis.extend((0..30_000).map(|i| pkg(&format!("package-with-a-long-name-{i:05}"), "1.0")));
    assert_eq!(
        snapshot(&db, "agent-a", 1, &inventory(cis, vec![], vec![]), T0),
        stored(1, 30_001, 0, 0)
    );
    // The commit (~2,800 WAL frames, past REQUEST_PAGES) asked the thread; it checkpoints once
    // the writers are quiet, and the snapshot is then in the database file.
    assert!(
        checkpoints.wait_idle(std::time::Duration::from_secs(30)),
        "checkpoint still under way"
    );
    assert_eq!(checkpoints.runs(), 1);
    assert!(db_pages() >= before + 2_400, "{} pages", db_pages());
    assert_eq!(
        count(&db, "SELECT count(*) FROM cis WHERE agent_id = 'agent-a'"),
        30_001
    );
    checkpointer.shutdown();
}

#[test]
fn every_writer_keeps_each_cis_history_chain() {
    use super::query::manual;
    const DAY: i64 = 24 * 3600 * 1000;
    let (_d, db) = store(&["agent-a", "agent-b"]);
    let check = |what: &str| {
        eprintln!("chains after {what}");
        history::assert_chains(db.conn());
    };
    snapshot(&db, "agent-a", 1, &base(), T0);
    check("a snapshot");
    // Changed (several attributes at once), removed, added.
    let d = InventoryDelta {
        added: vec![pkg("zlib", "1.3")],
        changed: vec![pkg("openssl", "3.0.2").attr("source", "openssl-src")],
        removed: vec![CiRef::new(ci_type::PACKAGE, "curl:amd64")],
        ..InventoryDelta::default()
    };
    assert_eq!(delta(&db, "agent-a", 1, 2, d, T0 + 1), stored(2, 1, 1, 1));
    check("a delta");
    // curl reappears in a snapshot, zlib goes.
    snapshot(&db, "agent-a", 3, &base(), T0 + 2);
    check("a snapshot with a reappearing CI");
    // Stale, then revived by a delta.
    assert!(mark_stale(&db, DEFAULT_STALE_AFTER, T0 + 8 * DAY).expect("mark") > 0);
    check("stale marking");
    let d = InventoryDelta {
        changed: vec![pkg("openssl", "3.0.3")],
        ..InventoryDelta::default()
    };
    assert_eq!(
        delta(&db, "agent-a", 3, 4, d, T0 + 9 * DAY),
        stored(4, 0, 1, 0)
    );
    check("a revival");
    // A batch: one message on the wrong base (rolled back alone) between two good ones.
    let bad = InventoryDeltaMsg {
        base_version: 99,
        version: 100,
        ts_ms: T0 + 10 * DAY,
        delta: InventoryDelta {
            added: vec![pkg("nope", "1")],
            ..InventoryDelta::default()
        },
    };
    let good = InventoryDeltaMsg {
        base_version: 4,
        version: 5,
        ts_ms: T0 + 10 * DAY,
        delta: InventoryDelta {
            changed: vec![pkg("openssl", "3.0.4")],
            ..InventoryDelta::default()
        },
    };
    let b = InventorySnapshot {
        version: 1,
        ts_ms: T0 + 10 * DAY,
        inventory: base(),
    };
    let results = apply_batch(
        &db,
        &[
            ("agent-a", InventoryMsg::Delta(&bad), T0 + 10 * DAY),
            ("agent-a", InventoryMsg::Delta(&good), T0 + 10 * DAY),
            ("agent-b", InventoryMsg::Snapshot(&b), T0 + 10 * DAY),
        ],
    )
    .expect("batch");
    assert_eq!(results.len(), 3);
    check("a batch");
    // The API's writes on a business service.
    let new: manual::NewCi =
        serde_json::from_value(serde_json::json!({"type": "business_service", "name": "shop"}))
            .expect("new");
    let id = manual::create_business_service(&db, &new, "api:tok", T0 + 11 * DAY).expect("create");
    let patch: manual::CiPatch =
        serde_json::from_value(serde_json::json!({"manual": {"owner": "ops", "criticality": 2}}))
            .expect("patch");
    manual::patch_ci(&db, id, &patch, "api:tok", T0 + 12 * DAY).expect("patch");
    assert!(manual::retire_ci(&db, id, "api:tok", T0 + 13 * DAY).expect("retire"));
    check("API writes");
    // And what the history endpoint returns is that chain, newest first.
    let openssl = ci(&db, "agent-a", ci_type::PACKAGE, "openssl:amd64").0;
    let page = query::HistoryPage {
        since_ms: None,
        before: None,
        limit: 100,
    };
    let got: Vec<(i64, String)> = query::history(&db, openssl, &page)
        .expect("history")
        .into_iter()
        .map(|h| (h.ts_ms, h.change))
        .collect();
    let want: Vec<(i64, String)> = [
        (T0 + 10 * DAY, "changed"),
        (T0 + 9 * DAY, "changed"),
        (T0 + 9 * DAY, "state"),
        (T0 + 8 * DAY, "state"),
        (T0 + 2, "changed"),
        (T0 + 2, "changed"),
        (T0 + 1, "changed"),
        (T0 + 1, "changed"),
        (T0, "added"),
    ]
    .into_iter()
    .map(|(t, c)| (t, c.to_owned()))
    .collect();
    assert_eq!(got, want);
}
