//! Tests of the store's schema, agents, batches and connection pool.

use super::*;

pub(crate) fn agent(id: &str) -> NewAgent {
    NewAgent {
        id: id.to_owned(),
        hostname: format!("host-{id}"),
        version: "0.1.0".to_owned(),
        cert_pin: "ab".repeat(32),
        token_id: "tok".to_owned(),
    }
}

#[test]
fn migrations_validate() {
    MIGRATIONS.validate().expect("migrations are valid");
}

#[test]
fn open_sets_pragmas_and_private_dir() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("data");
    let db = Db::open(&dir).expect("open");
    let mode = std::fs::metadata(&dir).expect("meta").permissions().mode();
    assert_eq!(mode & 0o777, 0o700);
    let check = |pragma: &str, expected: i64| {
        let v: i64 = db
            .conn
            .query_row(&format!("PRAGMA {pragma}"), [], |r| r.get(0))
            .expect("pragma");
        assert_eq!(v, expected, "{pragma}");
    };
    check("synchronous", 2);
    check("foreign_keys", 1);
    check("busy_timeout", 5000);
    let mode: String = db
        .conn
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .expect("journal_mode");
    assert_eq!(mode, "wal");
    // Re-opening an up-to-date file is a no-op.
    drop(db);
    Db::open(&dir).expect("reopen");
}

#[test]
fn role_parse_display_order() {
    fn check(s: &str, expected: Option<Role>) {
        assert_eq!(s.parse::<Role>().ok(), expected, "{s}");
        if let Some(r) = expected {
            assert_eq!(r.to_string(), s);
        }
    }
    check("viewer", Some(Role::Viewer));
    check("operator", Some(Role::Operator));
    check("admin", Some(Role::Admin));
    check("Admin", None);
    check("", None);
    check("root", None);
    assert!(Role::Viewer < Role::Operator && Role::Operator < Role::Admin);
}

#[test]
fn agent_lifecycle() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let db = Db::open(tmp.path()).expect("open");
    db.register_agent(&agent("a1"), 1_000).expect("register");
    assert!(matches!(
        db.register_agent(&agent("a1"), 2_000),
        Err(StoreError::AgentExists(id)) if id == "a1"
    ));
    let row = db.agent("a1").expect("query").expect("exists");
    assert_eq!(row.enrolled_at_ms, 1_000);
    assert!(!row.connected && row.last_seq.is_none() && !row.is_revoked());

    assert!(db
        .agent_connected("a1", "10.0.0.1:5000", "web1", "0.2.0", 2_000, 3_000)
        .expect("set"));
    assert!(!db
        .agent_connected("nope", "x", "y", "z", 1_000, 3_000)
        .expect("set"));
    let row = db.agent("a1").expect("query").expect("exists");
    assert!(row.connected);
    assert_eq!(
        (row.hostname.as_str(), row.version.as_str()),
        ("web1", "0.2.0")
    );
    assert_eq!(row.last_addr.as_deref(), Some("10.0.0.1:5000"));
    assert_eq!(
        (row.last_seen_ms, row.interval_ms),
        (Some(3_000), Some(2_000))
    );
    // A clean stop is remembered (until the next connection); the address is kept.
    db.agent_disconnected("a1", true, 4_000).expect("set");
    let row = db.agent("a1").expect("query").expect("exists");
    assert_eq!(
        (
            row.connected,
            row.last_addr.as_deref(),
            row.hostname.as_str(),
            row.stopped_ms
        ),
        (false, Some("10.0.0.1:5000"), "web1", Some(4_000))
    );
    db.agent_connected("a1", "10.0.0.1:5001", "web1", "0.2.0", 2_000, 4_500)
        .expect("set");
    db.agent_disconnected("a1", false, 5_000).expect("set");
    let row = db.agent("a1").expect("query").expect("exists");
    assert_eq!(row.stopped_ms, None, "a lost connection is no clean stop");

    db.register_agent(&agent("a2"), 1_000).expect("register");
    db.agent_connected("a2", "x", "db1", "0.2.0", 1_000, 5_000)
        .expect("set");
    assert_eq!(db.mark_all_disconnected().expect("mark"), 1);
    assert!(db.list_agents().expect("list").iter().all(|a| !a.connected));

    assert!(db.revoke_agent("a2", 6_000).expect("revoke"));
    assert!(db.revoke_agent("a2", 7_000).expect("revoke again"));
    assert!(!db.revoke_agent("zz", 6_000).expect("revoke unknown"));
    assert_eq!(
        db.agent("a2").expect("q").expect("row").revoked_at_ms,
        Some(6_000)
    );
    assert_eq!(
        db.revoked_agent_ids().expect("ids"),
        HashSet::from(["a2".to_owned()])
    );
    let ids: Vec<String> = db
        .list_agents()
        .expect("list")
        .into_iter()
        .map(|a| a.id)
        .collect();
    // Ordered by hostname: "host-a2" before "web1" (a1 announced a new name).
    assert_eq!(ids, ["a2", "a1"]);
    assert!(db.agent("missing").expect("query").is_none());
}

#[test]
fn prune_deletes_only_old_batches() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let db = Db::open(tmp.path()).expect("open");
    db.register_agent(&agent("a1"), 0).expect("register");
    let tx = db.conn.unchecked_transaction().expect("tx");
    for seq in 0..12_000i64 {
        tx.execute(
            "INSERT INTO batches VALUES ('a1', ?1, ?1, 0, 0, 1, x'00')",
            [seq],
        )
        .expect("insert");
    }
    tx.commit().expect("commit");
    assert_eq!(db.prune_batches(11_000).expect("prune"), 11_000);
    assert_eq!(db.prune_batches(11_000).expect("prune"), 0);
    let left = db.batches_for("a1").expect("batches");
    assert_eq!(left.len(), 1_000);
    assert_eq!(left[0].seq, 11_000);
}

#[tokio::test]
async fn pool_reuses_connections() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let pool = DbPool::open(tmp.path(), 2).expect("pool");
    pool.run(|db| db.register_agent(&agent("a1"), 1))
        .await
        .expect("register");
    let rows = pool.run(|db| db.list_agents()).await.expect("list");
    assert_eq!(rows.len(), 1);
    let err = pool
        .run(|db| db.register_agent(&agent("a1"), 1))
        .await
        .expect_err("duplicate");
    assert!(matches!(err, StoreError::AgentExists(_)));
}
