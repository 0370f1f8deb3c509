//! Rules made through the API (`POST /api/v1/rules`, admin), stored in `api_rules` and evaluated
//! next to the built-in and configured ones. The body has the keys of `[[rule]]` and is checked
//! by the same validation ([`super::rule::rule_from_json`]); names are unique across built-in,
//! configured and API rules. Deleting an API rule resolves its open incidents
//! (`resolution_code = "rule_deleted"`).
//!
//! This module must never: let an API rule shadow a configured or built-in one, or fail the
//! engine's start on a stored rule that no longer validates (it is skipped and logged).

use rusqlite::{params, Connection, OptionalExtension};

use super::rule::{rule_from_json, Rule};

/// One stored API rule.
#[derive(Debug, Clone)]
pub struct ApiRule {
    pub rule: Rule,
    pub definition: serde_json::Value,
    pub created_ms: i64,
    pub created_by: String,
}

/// Every stored API rule that still validates, by name.
pub fn load(conn: &Connection) -> rusqlite::Result<Vec<ApiRule>> {
    let mut out = Vec::new();
    let mut stmt = conn.prepare_cached(
        "SELECT name, definition, created_ms, created_by FROM api_rules ORDER BY name",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, i64>(2)?,
            r.get::<_, String>(3)?,
        ))
    })?;
    for row in rows {
        let (name, text, created_ms, created_by) = row?;
        let parsed = serde_json::from_str::<serde_json::Value>(&text)
            .map_err(|e| vec![e.to_string()])
            .and_then(|v| rule_from_json(&v).map(|r| (v, r)));
        match parsed {
            Ok((definition, rule)) => out.push(ApiRule {
                rule,
                definition,
                created_ms,
                created_by,
            }),
            Err(errors) => {
                tracing::warn!(rule = %name, errors = ?errors, "stored API rule no longer validates; skipped");
            }
        }
    }
    Ok(out)
}

/// Stores a validated rule; false when the name is taken by another API rule.
pub fn create(
    conn: &Connection,
    rule: &Rule,
    definition: &serde_json::Value,
    by: &str,
    now_ms: i64,
) -> rusqlite::Result<bool> {
    let n = conn.execute(
        "INSERT INTO api_rules (name, definition, created_ms, created_by) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (name) DO NOTHING",
        params![rule.name, definition.to_string(), now_ms, by],
    )?;
    Ok(n > 0)
}

/// Deletes an API rule; false when there is none of that name.
pub fn delete(conn: &Connection, name: &str) -> rusqlite::Result<bool> {
    Ok(conn.execute("DELETE FROM api_rules WHERE name = ?1", [name])? > 0)
}

/// Is `name` an API rule?
pub fn exists(conn: &Connection, name: &str) -> rusqlite::Result<bool> {
    conn.query_row(
        "SELECT 1 FROM api_rules WHERE name = ?1",
        [name],
        |_| Ok(()),
    )
    .optional()
    .map(|r| r.is_some())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn rules_round_trip_and_invalid_bodies_are_refused_with_the_config_messages() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = crate::store::Db::open(dir.path()).expect("db");
        let body = json!({"name": "api-load", "metric": "load1", "above": 8, "clear": 6,
                          "for": "1m", "impact": "low", "scope": {"host": "web-*"},
                          "labels": {"team": "web"}});
        let rule = rule_from_json(&body).expect("valid");
        assert_eq!(rule.hold, std::time::Duration::from_secs(60));
        assert!(create(db.conn(), &rule, &body, "api:t", 1).expect("create"));
        assert!(!create(db.conn(), &rule, &body, "api:t", 2).expect("taken"));
        let loaded = load(db.conn()).expect("load");
        assert_eq!(loaded.len(), 1);
        assert_eq!(loaded[0].rule, rule);
        assert!(exists(db.conn(), "api-load").expect("exists"));
        assert!(delete(db.conn(), "api-load").expect("delete"));
        assert!(!delete(db.conn(), "api-load").expect("gone"));

        let bad = json!({"name": "x", "metric": "cpu", "above": 1, "below": 0, "colour": "red"});
        let errors = rule_from_json(&bad).expect_err("invalid");
        assert!(
            errors.iter().any(|e| e.contains("unknown metric \"cpu\"")),
            "{errors:?}"
        );
        assert!(errors.iter().any(|e| e.contains("not both")), "{errors:?}");
        assert!(errors.iter().any(|e| e.contains("colour")), "{errors:?}");
        assert!(rule_from_json(&json!([1])).is_err());
        assert!(rule_from_json(&json!({"name": "n", "metric": "load1", "above": null})).is_err());
    }
}
