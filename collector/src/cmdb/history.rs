//! A CI's history rows form a chain: `cis.last_history_id` is its newest `ci_history` row and
//! each row's `prev_id` the CI's row before it (by id, i.e. in the order they were written).
//! There is no `(ci_id, ...)` index: a host's entries in one would span ~10 leaves, and a 1 %
//! delta landed in nearly every one of them, a third of the pages a delta round wrote. A chained
//! row is appended at the end of `ci_history` and the CI's row, rewritten anyway for the change,
//! points at it.
//!
//! Every writer keeps the chain: reconciliation assigns ids itself for its multi-row INSERTs
//! (`reconcile::Reconciliation`), every other writer goes through [`append`]. Readers walk it with a
//! recursive query capped at [`CHAIN_LIMIT`] rows per CI, so a corrupt file (a cycle) cannot
//! hang them.

use rusqlite::{params, Connection};

/// Most rows walked along one CI's chain (a year of a change every 5 minutes is ~105,000).
pub(crate) const CHAIN_LIMIT: i64 = 1_000_000;

/// Appends one history row for `ci_id` and makes it the CI's newest; returns its id.
#[allow(clippy::too_many_arguments)] // one row's columns, named at every call site
pub(crate) fn append(
    conn: &Connection,
    ci_id: i64,
    ts_ms: i64,
    attribute: &str,
    change: &str,
    old_value: Option<&str>,
    new_value: Option<&str>,
    source: &str,
) -> rusqlite::Result<i64> {
    conn.prepare_cached(
        "INSERT INTO ci_history
             (ci_id, ts_ms, attribute, change, old_value, new_value, source, prev_id)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, (SELECT last_history_id FROM cis WHERE id = ?1))",
    )?
    .execute(params![
        ci_id, ts_ms, attribute, change, old_value, new_value, source
    ])?;
    let id = conn.last_insert_rowid();
    conn.prepare_cached("UPDATE cis SET last_history_id = ?2 WHERE id = ?1")?
        .execute(params![ci_id, id])?;
    Ok(id)
}

/// The chain of `ci_id`, newest first, as the readers walk it (at most `limit` rows).
#[cfg(test)]
pub(crate) fn walk(conn: &Connection, ci_id: i64, limit: i64) -> Vec<i64> {
    conn.prepare(
        "WITH RECURSIVE chain(id, n) AS (
             SELECT last_history_id, 1 FROM cis WHERE id = ?1 AND last_history_id IS NOT NULL
             UNION ALL
             SELECT h.prev_id, chain.n + 1 FROM chain JOIN ci_history h ON h.id = chain.id
             WHERE h.prev_id IS NOT NULL AND chain.n < ?2
         )
         SELECT id FROM chain",
    )
    .expect("prepare")
    .query_map(params![ci_id, limit], |r| r.get(0))
    .expect("query")
    .collect::<rusqlite::Result<_>>()
    .expect("rows")
}

/// Asserts that every CI's chain holds exactly its history rows, newest (highest id) first.
#[cfg(test)]
pub(crate) fn assert_chains(conn: &Connection) {
    let cis: Vec<i64> = conn
        .prepare("SELECT id FROM cis")
        .expect("prepare")
        .query_map([], |r| r.get(0))
        .expect("query")
        .collect::<rusqlite::Result<_>>()
        .expect("rows");
    for ci in cis {
        let rows: Vec<i64> = conn
            .prepare("SELECT id FROM ci_history WHERE ci_id = ?1 ORDER BY id DESC")
            .expect("prepare")
            .query_map([ci], |r| r.get(0))
            .expect("query")
            .collect::<rusqlite::Result<_>>()
            .expect("rows");
        assert_eq!(
            walk(conn, ci, CHAIN_LIMIT),
            rows,
            "history chain of CI {ci}"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cycle_in_a_corrupt_file_ends_at_the_limit() {
        let conn = Connection::open_in_memory().expect("db");
        conn.execute_batch(
            "CREATE TABLE cis (id INTEGER PRIMARY KEY, last_history_id INTEGER);
             CREATE TABLE ci_history (id INTEGER PRIMARY KEY, ci_id INTEGER, prev_id INTEGER);
             INSERT INTO cis VALUES (1, 11);
             INSERT INTO ci_history VALUES (10, 1, 11), (11, 1, 10);",
        )
        .expect("schema");
        assert_eq!(walk(&conn, 1, 1_000), [11, 10].repeat(500));
    }

    #[test]
    fn the_migration_chains_existing_history_and_drops_the_index() {
        let dir = tempfile::tempdir().expect("tmp");
        let mut conn = Connection::open(dir.path().join("vigil.db")).expect("db");
        crate::store::MIGRATIONS
            .to_version(&mut conn, 5)
            .expect("schema before the chain");
        conn.execute_batch(
            "INSERT INTO cis (id, agent_id, type, key, name, source, first_seen_ms, last_seen_ms)
             VALUES (1, NULL, 'business_service', 'a', 'a', 'api', 0, 0),
                    (2, NULL, 'business_service', 'b', 'b', 'api', 0, 0),
                    (3, NULL, 'business_service', 'c', 'c', 'api', 0, 0);
             INSERT INTO ci_history (id, ci_id, ts_ms, attribute, change, source)
             VALUES (1, 1, 10, '*', 'added', 'x'), (2, 2, 10, '*', 'added', 'x'),
                    (3, 1, 20, 'owner', 'changed', 'x'), (4, 1, 30, 'owner', 'changed', 'x'),
                    (5, 2, 40, '*', 'removed', 'x');",
        )
        .expect("rows");
        crate::store::MIGRATIONS
            .to_latest(&mut conn)
            .expect("migrate");
        assert_eq!(walk(&conn, 1, CHAIN_LIMIT), [4, 3, 1]);
        assert_eq!(walk(&conn, 2, CHAIN_LIMIT), [5, 2]);
        assert_eq!(walk(&conn, 3, CHAIN_LIMIT), Vec::<i64>::new());
        assert_chains(&conn);
        let index: i64 = conn
            .query_row(
                "SELECT count(*) FROM sqlite_schema WHERE name = 'ci_history_ci'",
                [],
                |r| r.get(0),
            )
            .expect("schema");
        assert_eq!(index, 0);
        // New rows continue the chains.
        append(&conn, 1, 50, "owner", "changed", None, None, "x").expect("append");
        append(&conn, 3, 50, "*", "added", None, None, "x").expect("append");
        assert_eq!(walk(&conn, 1, CHAIN_LIMIT), [6, 4, 3, 1]);
        assert_eq!(walk(&conn, 3, CHAIN_LIMIT), [7]);
    }
}
