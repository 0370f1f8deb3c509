//! Multi-row INSERTs: rows are buffered and written `VALUES (...), (...), ...` with cached
//! statements of 128, 32, 8 and 1 rows, so a snapshot of 2,000 new CIs costs a few dozen
//! statement executions instead of 6,000 (per-statement overhead dominated the profile).
//!
//! The caller orders flushes (a history row must not reach the table before its CI). Nothing
//! here decides what to write.

use rusqlite::types::Value;
use rusqlite::Connection;

use crate::store::StoreError;

/// Statement sizes, largest first; the last must be 1.
const SIZES: [usize; 4] = [128, 32, 8, 1];

pub(super) struct BulkInsert {
    /// `INSERT [OR IGNORE] INTO table (a, b, c)`.
    head: &'static str,
    cols: usize,
    /// The SQL of each size in [`SIZES`], built once.
    sql: [String; SIZES.len()],
    values: Vec<Value>,
}

impl BulkInsert {
    pub(super) fn new(head: &'static str, cols: usize) -> BulkInsert {
        let row = format!("({})", vec!["?"; cols].join(", "));
        let sql = SIZES.map(|n| format!("{head} VALUES {}", vec![row.as_str(); n].join(", ")));
        BulkInsert {
            head,
            cols,
            sql,
            values: Vec::new(),
        }
    }

    /// Buffers one row (`cols` values); returns whether a full largest chunk is waiting.
    pub(super) fn push(&mut self, row: impl IntoIterator<Item = Value>) -> bool {
        let before = self.values.len();
        self.values.extend(row);
        debug_assert_eq!(self.values.len() - before, self.cols, "{}", self.head);
        self.values.len() >= SIZES[0] * self.cols
    }

    /// Writes every buffered row.
    pub(super) fn flush(&mut self, conn: &Connection) -> Result<(), StoreError> {
        let values = std::mem::take(&mut self.values);
        let mut rest = values.as_slice();
        for (i, n) in SIZES.iter().enumerate() {
            let width = n * self.cols;
            while rest.len() >= width {
                let (chunk, tail) = rest.split_at(width);
                conn.prepare_cached(&self.sql[i])?
                    .execute(rusqlite::params_from_iter(chunk))?;
                rest = tail;
            }
        }
        // Keep the allocation for the next rows.
        self.values = values;
        self.values.clear();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_row_count_is_written_once() {
        let conn = Connection::open_in_memory().expect("db");
        conn.execute_batch("CREATE TABLE t (a INTEGER PRIMARY KEY, b TEXT)")
            .expect("table");
        let mut bulk = BulkInsert::new("INSERT INTO t (a, b)", 2);
        let mut next = 0i64;
        for n in [0usize, 1, 7, 8, 9, 128, 129, 300] {
            for _ in 0..n {
                next += 1;
                bulk.push([Value::Integer(next), Value::Text(format!("r{next}"))]);
            }
            bulk.flush(&conn).expect("flush");
            assert!(bulk.values.is_empty());
            let (count, max): (i64, i64) = conn
                .query_row("SELECT count(*), COALESCE(max(a), 0) FROM t", [], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })
                .expect("count");
            assert_eq!((count, max), (next, next), "after {n} rows");
        }
    }
}
