//! The in-memory CMDB metrics of each store file, shared by every connection of this process.
//!
//! `apply_snapshot` & co. only get a `&Db`, so the metrics live in a process-wide map keyed by
//! the database file's path: every connection to one file (the ingest path, the HTTP pool) updates
//! the same [`CmdbMetrics`], and tests with their own temporary stores stay apart. The first use
//! loads the active-item counts with one query; afterwards a scrape reads memory only.
//!
//! Never hold the map's lock longer than that first load, and never count a change before its
//! transaction committed (the callers publish their tally after `commit`).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};

use crate::metrics::{cmdb_types, CmdbMetrics};
use crate::store::{Db, StoreError};

static SHARED: Mutex<BTreeMap<String, Arc<CmdbMetrics>>> = Mutex::new(BTreeMap::new());

/// The CMDB metrics of `db`'s file (created and loaded from the store on first use). Register
/// them once on the `/metrics` registry with `Metrics::register_cmdb`.
pub fn metrics_for(db: &Db) -> Result<Arc<CmdbMetrics>, StoreError> {
    let path = db.conn().path().unwrap_or_default().to_owned();
    let mut map = SHARED.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(m) = map.get(&path) {
        return Ok(Arc::clone(m));
    }
    let m = Arc::new(CmdbMetrics::new().map_err(|e| StoreError::Task(e.to_string()))?);
    load_into(db, &m)?;
    // An in-memory database has no path: its metrics are not shared.
    if !path.is_empty() {
        map.insert(path, Arc::clone(&m));
    }
    Ok(m)
}

/// Sets the active-item gauges from the store.
pub(super) fn load_into(db: &Db, m: &CmdbMetrics) -> Result<(), StoreError> {
    let mut stmt = db
        .conn()
        .prepare("SELECT type, count(*) FROM cis WHERE state = 'active' GROUP BY type")?;
    let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
    for row in rows {
        let (ty, n) = row?;
        if let Some(t) = cmdb_types().find(|t| *t == ty) {
            m.set_items(t, n);
        }
    }
    Ok(())
}
