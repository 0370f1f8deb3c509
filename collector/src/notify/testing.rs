//! What unit tests elsewhere in the crate share about notifications.

use std::collections::BTreeMap;
use std::time::Duration;

use rusqlite::Connection;

use super::{Format, Webhook};

/// A JSON webhook `ops` for every priority, rule and label, pointing at the discard port: the
/// outbox gets rows; nothing is delivered.
pub fn webhook() -> Webhook {
    Webhook {
        name: "ops".into(),
        url: "http://127.0.0.1:9/".into(),
        secret: None,
        format: Format::Json,
        max_priority: 5,
        rules: Vec::new(),
        labels: BTreeMap::new(),
        timeout: Duration::from_secs(1),
    }
}

/// The events queued in the outbox for incident `id`, oldest first.
pub fn events(conn: &Connection, id: i64) -> Vec<String> {
    conn.prepare("SELECT event FROM notifications WHERE incident_id = ?1 ORDER BY id")
        .expect("prepare")
        .query_map([id], |r| r.get(0))
        .expect("query")
        .collect::<rusqlite::Result<_>>()
        .expect("rows")
}
