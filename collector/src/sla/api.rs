//! SLAs made through the API (`POST /api/v1/slas`, `PUT` and `DELETE /api/v1/slas/{name}`,
//! admin), stored in `api_slas` next to the configured ones. A body has the keys of `[[sla]]` and
//! is checked by the same validation ([`sla_from_json`]); names are unique across configured and
//! API SLAs, and a configured SLA cannot be changed or deleted through the API.
//!
//! [`SlaSet`] is the SLAs in force (configured, then API), shared by the HTTP API, the "SLA
//! figures" task and (through `Input::SlasChanged`) the incident engine; it is reloaded from the
//! store after every change.
//!
//! This module must never: fail the collector's start on a stored SLA that no longer validates
//! (it is skipped and logged).

use std::sync::{Arc, RwLock};

use rusqlite::{params, Connection, OptionalExtension};

use super::Sla;

/// One stored API SLA.
#[derive(Debug, Clone)]
pub struct ApiSla {
    pub sla: Sla,
    pub definition: serde_json::Value,
    pub created_ms: i64,
    pub created_by: String,
    pub updated_ms: i64,
    pub updated_by: String,
}

/// A JSON object with the keys of `[[sla]]`, checked as the configuration checks it.
pub fn sla_from_json(v: &serde_json::Value) -> Result<Sla, Vec<String>> {
    let serde_json::Value::Object(_) = v else {
        return Err(vec!["an SLA must be a JSON object".into()]);
    };
    let table = toml::Value::try_from(v).map_err(|e| vec![format!("not a valid SLA: {e}")])?;
    let doc = toml::Value::Table(toml::map::Map::from_iter([(
        "sla".to_string(),
        toml::Value::Array(vec![table]),
    )]));
    let text = toml::to_string(&doc).map_err(|e| vec![format!("not a valid SLA: {e}")])?;
    match crate::config::from_str("sla", &text) {
        Ok(c) => c
            .slas
            .into_iter()
            .next()
            .ok_or_else(|| vec!["not a valid SLA".to_string()]),
        Err(e) => Err(e.0.into_iter().map(|e| e.message).collect()),
    }
}

/// Every stored API SLA that still validates, by name.
pub fn load(conn: &Connection) -> rusqlite::Result<Vec<ApiSla>> {
    let mut out = Vec::new();
    let mut stmt = conn.prepare_cached(
        "SELECT name, definition, created_ms, created_by, updated_ms, updated_by
         FROM api_slas ORDER BY name",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, i64>(2)?,
            r.get::<_, String>(3)?,
            r.get::<_, i64>(4)?,
            r.get::<_, String>(5)?,
        ))
    })?;
    for row in rows {
        let (name, text, created_ms, created_by, updated_ms, updated_by) = row?;
        let parsed = serde_json::from_str::<serde_json::Value>(&text)
            .map_err(|e| vec![e.to_string()])
            .and_then(|v| sla_from_json(&v).map(|s| (v, s)));
        match parsed {
            Ok((definition, sla)) => out.push(ApiSla {
                sla,
                definition,
                created_ms,
                created_by,
                updated_ms,
                updated_by,
            }),
            Err(errors) => {
                tracing::warn!(sla = %name, errors = ?errors, "stored API SLA no longer validates; skipped");
            }
        }
    }
    Ok(out)
}

/// Stores a new SLA; false when an API SLA has the name.
pub fn create(
    conn: &Connection,
    sla: &Sla,
    definition: &serde_json::Value,
    by: &str,
    now_ms: i64,
) -> rusqlite::Result<bool> {
    let n = conn.execute(
        "INSERT INTO api_slas (name, definition, created_ms, created_by, updated_ms, updated_by)
         VALUES (?1, ?2, ?3, ?4, ?3, ?4) ON CONFLICT (name) DO NOTHING",
        params![sla.name, definition.to_string(), now_ms, by],
    )?;
    Ok(n > 0)
}

/// Replaces the definition of the API SLA `name`; false when there is none.
pub fn replace(
    conn: &Connection,
    name: &str,
    definition: &serde_json::Value,
    by: &str,
    now_ms: i64,
) -> rusqlite::Result<bool> {
    let n = conn.execute(
        "UPDATE api_slas SET definition = ?2, updated_ms = ?3, updated_by = ?4 WHERE name = ?1",
        params![name, definition.to_string(), now_ms, by],
    )?;
    Ok(n > 0)
}

/// Deletes an API SLA; false when there is none of that name.
pub fn delete(conn: &Connection, name: &str) -> rusqlite::Result<bool> {
    Ok(conn.execute("DELETE FROM api_slas WHERE name = ?1", [name])? > 0)
}

/// The stored row of `name`, if any.
pub fn get(conn: &Connection, name: &str) -> rusqlite::Result<Option<String>> {
    conn.query_row(
        "SELECT definition FROM api_slas WHERE name = ?1",
        [name],
        |r| r.get(0),
    )
    .optional()
}

/// The SLAs in force: the configured ones, then the API's.
pub struct SlaSet {
    config: Vec<Sla>,
    all: RwLock<Arc<Vec<Sla>>>,
}

impl SlaSet {
    /// The configured SLAs only (tests, or before the store is read).
    pub fn fixed(config: Vec<Sla>) -> SlaSet {
        let all = Arc::new(config.clone());
        SlaSet {
            config,
            all: RwLock::new(all),
        }
    }

    /// The configured SLAs and those stored in `conn`.
    pub fn load(config: Vec<Sla>, conn: &Connection) -> rusqlite::Result<SlaSet> {
        let set = SlaSet::fixed(config);
        set.reload(conn)?;
        Ok(set)
    }

    /// Every SLA in force.
    pub fn all(&self) -> Arc<Vec<Sla>> {
        self.all
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Whether `name` is an SLA of the configuration (not changeable through the API).
    pub fn is_configured(&self, name: &str) -> bool {
        self.config.iter().any(|s| s.name == name)
    }

    /// Reads the API SLAs again; returns every SLA now in force. An API SLA whose name the
    /// configuration took since is left out (logged).
    pub fn reload(&self, conn: &Connection) -> rusqlite::Result<Arc<Vec<Sla>>> {
        let mut all = self.config.clone();
        for a in load(conn)? {
            if self.is_configured(&a.sla.name) {
                tracing::warn!(sla = %a.sla.name, "API SLA shadowed by a configured SLA; ignored");
                continue;
            }
            all.push(a.sla);
        }
        let all = Arc::new(all);
        *self
            .all
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = all.clone();
        Ok(all)
    }
}

impl Default for SlaSet {
    fn default() -> Self {
        SlaSet::fixed(Vec::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn api_slas_round_trip_and_bad_bodies_get_the_configurations_messages() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = crate::store::Db::open(dir.path()).expect("db");
        let body = json!({"name": "api", "target": 0.999, "window": "month",
                          "timezone": "Europe/Berlin", "scope": {"tag": "role=web"},
                          "schedule": {"hours": "08:00-18:00"},
                          "incident_targets": {"P1": {"response": "10m"}}});
        let sla = sla_from_json(&body).expect("valid");
        assert_eq!(sla.window, vigil_shared::config::SlaWindow::CalendarMonth);
        assert!(create(db.conn(), &sla, &body, "api:t", 1).expect("create"));
        assert!(!create(db.conn(), &sla, &body, "api:t", 2).expect("taken"));
        let configured = sla_from_json(&json!({"name": "conf", "target": 0.99})).expect("valid");
        let set = SlaSet::load(vec![configured], db.conn()).expect("set");
        let names: Vec<String> = set.all().iter().map(|s| s.name.clone()).collect();
        assert_eq!(names, ["conf", "api"]);
        assert!(set.is_configured("conf") && !set.is_configured("api"));
        let changed = json!({"name": "api", "target": 0.95});
        assert!(replace(db.conn(), "api", &changed, "api:u", 3).expect("replace"));
        assert_eq!(set.reload(db.conn()).expect("reload")[1].target, 0.95);
        assert!(delete(db.conn(), "api").expect("delete"));
        assert!(!delete(db.conn(), "api").expect("gone"));
        assert_eq!(set.reload(db.conn()).expect("reload").len(), 1);

        let bad = json!({"name": "x", "target": 1.5, "window": "fortnight", "colour": "red"});
        let errors = sla_from_json(&bad).expect_err("invalid");
        assert!(
            errors
                .iter()
                .any(|e| e.contains("strictly between 0 and 1")),
            "{errors:?}"
        );
        assert!(errors.iter().any(|e| e.contains("fortnight")), "{errors:?}");
        assert!(errors.iter().any(|e| e.contains("colour")), "{errors:?}");
        assert!(sla_from_json(&json!([1])).is_err());
        assert!(sla_from_json(&json!({"name": "n", "target": null})).is_err());
    }
}
