//! Maintenance windows: one-off or recurring (daily, weekly) periods during which breaches in the
//! window's scope open only suppressed incidents (no notifications). Windows come from
//! `[[maintenance]]` in the config (synced into `maintenance_windows` at start, origin `config`)
//! and from the API (origin `api`). Deleted windows keep their row (`deleted_ms`) so SLA reports
//! can still exclude the downtime they covered.
//!
//! This module must never: forget a window that was in force (rows are only marked deleted), or
//! panic on a scope stored by an older version (an unreadable scope matches nothing, logged).

use rusqlite::{params, Connection};
use serde::Deserialize;

use std::time::Duration;

use vigil_shared::config::{self as cfg, Diagnostics, RawTime, Spanned};

use super::scope::{Scope, ScopeJson};

/// How often a maintenance window repeats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recurrence {
    Daily,
    Weekly,
}

impl Recurrence {
    pub fn period(self) -> Duration {
        match self {
            Recurrence::Daily => Duration::from_secs(86_400),
            Recurrence::Weekly => Duration::from_secs(7 * 86_400),
        }
    }
}

/// A maintenance window (`[[maintenance]]`): suppresses incidents in its scope and is excluded
/// from SLA downtime.
#[derive(Debug, Clone, PartialEq)]
pub struct Maintenance {
    pub name: String,
    pub scope: Scope,
    /// First start, milliseconds since the Unix epoch (UTC).
    pub start_ms: i64,
    pub duration: Duration,
    /// Repeats every day or week from `start_ms` when set (`every = "day" | "week"`).
    pub every: Option<Recurrence>,
}

/// `[[maintenance]]` as written.
#[derive(Debug, Deserialize)]
pub(crate) struct RawMaintenance {
    pub(crate) name: Option<Spanned<String>>,
    scope: Option<super::scope::RawScope>,
    start: Option<Spanned<RawTime>>,
    duration: Option<Spanned<String>>,
    every: Option<Spanned<String>>,
}

/// Validates one `[[maintenance]]`.
pub(crate) fn convert_maintenance(
    raw: &Spanned<RawMaintenance>,
    d: &mut Diagnostics,
) -> Option<Maintenance> {
    let (span, m) = (raw.span(), raw.get_ref());
    let name = cfg::object_name(d, span.clone(), "maintenance", m.name.as_ref());
    let scope = super::scope::convert_scope(d, m.scope.as_ref());
    let start_ms = match &m.start {
        Some(t) => d.parse_value(t, |t| vigil_shared::time::parse_rfc3339_ms(&t.0)),
        None => {
            d.missing(
                span.clone(),
                "start",
                "[[maintenance]] is missing `start` (e.g. \"2026-12-01T02:00:00Z\")",
            );
            None
        }
    };
    let every = m.every.as_ref().map(|e| {
        d.parse_value(e, |s| match s.as_str() {
            "day" => Ok(Recurrence::Daily),
            "week" => Ok(Recurrence::Weekly),
            _ => Err(format!(
                "invalid `every` {s:?}: expected \"day\" or \"week\""
            )),
        })
    });
    let duration = match &m.duration {
        Some(v) => d.duration(v).and_then(|x| {
            let period = every.flatten().map(Recurrence::period);
            if x.is_zero() {
                d.error_at(v, "`duration` must be positive");
                None
            } else if period.is_some_and(|p| x >= p) {
                d.error_at(
                    v,
                    format!(
                        "`duration` ({}) must be shorter than the repeat period",
                        v.get_ref()
                    ),
                );
                None
            } else {
                Some(x)
            }
        }),
        None => {
            d.missing(
                span,
                "duration",
                "[[maintenance]] is missing `duration` (e.g. \"2h\")",
            );
            None
        }
    };
    match (name, scope, start_ms, duration, every) {
        (Some(name), Some(scope), Some(start_ms), Some(duration), None | Some(Some(_))) => {
            Some(Maintenance {
                name: name.into_inner(),
                scope,
                start_ms,
                duration,
                every: every.flatten(),
            })
        }
        _ => None,
    }
}

/// A window as the engine matches it.
#[derive(Debug, Clone, PartialEq)]
pub struct Window {
    pub id: i64,
    pub name: String,
    pub scope: Scope,
    pub start_ms: i64,
    pub duration_ms: i64,
    pub every: Option<Recurrence>,
    pub origin: String,
    pub deleted_ms: Option<i64>,
}

impl Window {
    /// Is `at_ms` inside an occurrence of this window?
    pub fn covers(&self, at_ms: i64) -> bool {
        if at_ms < self.start_ms || self.deleted_ms.is_some_and(|d| at_ms >= d) {
            return false;
        }
        // Checked: a stored start far from `at_ms` (either way) is "not now", never an overflow.
        let Some(since) = at_ms.checked_sub(self.start_ms) else {
            return false;
        };
        match self.every {
            None => since < self.duration_ms,
            Some(r) => {
                let period = i64::try_from(r.period().as_millis()).unwrap_or(i64::MAX);
                since.checked_rem(period).unwrap_or(since) < self.duration_ms
            }
        }
    }
}

/// The first window in force at `at_ms` whose scope covers `target`: a breach there opens a
/// suppressed incident.
pub fn covering<'a>(
    windows: &'a [Window],
    at_ms: i64,
    target: &crate::incidents::scope::Target<'_>,
) -> Option<&'a Window> {
    windows
        .iter()
        .find(|w| w.covers(at_ms) && crate::incidents::scope::matches(&w.scope, target))
}

fn every_str(r: Option<Recurrence>) -> Option<&'static str> {
    r.map(|r| match r {
        Recurrence::Daily => "day",
        Recurrence::Weekly => "week",
    })
}

/// Makes the `config` windows in the table those of the configuration: new ones added, changed
/// ones updated, removed ones marked deleted (kept for SLA history).
pub fn sync_config(
    conn: &Connection,
    windows: &[Maintenance],
    now_ms: i64,
) -> rusqlite::Result<()> {
    let tx = conn.unchecked_transaction()?;
    let names: Vec<&str> = windows.iter().map(|w| w.name.as_str()).collect();
    let live: Vec<(i64, String)> = tx
        .prepare("SELECT id, name FROM maintenance_windows WHERE origin = 'config' AND deleted_ms IS NULL")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<_>>()?;
    for (id, name) in &live {
        if !names.contains(&name.as_str()) {
            tx.execute(
                "UPDATE maintenance_windows SET deleted_ms = ?2 WHERE id = ?1",
                params![id, now_ms],
            )?;
        }
    }
    for w in windows {
        let scope =
            serde_json::to_string(&ScopeJson::from_scope(&w.scope)).unwrap_or_else(|_| "{}".into());
        let duration_ms = i64::try_from(w.duration.as_millis()).unwrap_or(i64::MAX);
        let updated = tx.execute(
            "UPDATE maintenance_windows SET scope = ?2, start_ms = ?3, duration_ms = ?4, every = ?5
             WHERE name = ?1 AND origin = 'config' AND deleted_ms IS NULL",
            params![w.name, scope, w.start_ms, duration_ms, every_str(w.every)],
        )?;
        if updated == 0 {
            // An API window of the same name gives way to the configuration.
            tx.execute(
                "UPDATE maintenance_windows SET deleted_ms = ?2 WHERE name = ?1 AND deleted_ms IS NULL",
                params![w.name, now_ms],
            )?;
            tx.execute(
                "INSERT INTO maintenance_windows (name, scope, start_ms, duration_ms, every, origin,
                    created_ms) VALUES (?1, ?2, ?3, ?4, ?5, 'config', ?6)",
                params![w.name, scope, w.start_ms, duration_ms, every_str(w.every), now_ms],
            )?;
        }
    }
    tx.commit()
}

/// Every window, deleted ones included when `with_deleted`.
pub fn load(conn: &Connection, with_deleted: bool) -> rusqlite::Result<Vec<Window>> {
    let sql = if with_deleted {
        "SELECT id, name, scope, start_ms, duration_ms, every, origin, deleted_ms
         FROM maintenance_windows ORDER BY id"
    } else {
        "SELECT id, name, scope, start_ms, duration_ms, every, origin, deleted_ms
         FROM maintenance_windows WHERE deleted_ms IS NULL ORDER BY id"
    };
    let mut out = Vec::new();
    let mut stmt = conn.prepare_cached(sql)?;
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, i64>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, i64>(3)?,
            r.get::<_, i64>(4)?,
            r.get::<_, Option<String>>(5)?,
            r.get::<_, String>(6)?,
            r.get::<_, Option<i64>>(7)?,
        ))
    })?;
    for row in rows {
        let (id, name, scope, start_ms, duration_ms, every, origin, deleted_ms) = row?;
        let scope = match serde_json::from_str::<ScopeJson>(&scope)
            .map_err(|e| e.to_string())
            .and_then(|s| s.to_scope())
        {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(window = %name, error = %e, "unreadable maintenance scope; skipped");
                continue;
            }
        };
        let every = match every.as_deref() {
            Some("day") => Some(Recurrence::Daily),
            Some("week") => Some(Recurrence::Weekly),
            _ => None,
        };
        out.push(Window {
            id,
            name,
            scope,
            start_ms,
            duration_ms,
            every,
            origin,
            deleted_ms,
        });
    }
    Ok(out)
}

/// A window created through the API.
pub fn create(
    conn: &Connection,
    name: &str,
    scope: &Scope,
    start_ms: i64,
    duration_ms: i64,
    every: Option<Recurrence>,
    now_ms: i64,
) -> rusqlite::Result<i64> {
    let scope =
        serde_json::to_string(&ScopeJson::from_scope(scope)).unwrap_or_else(|_| "{}".into());
    conn.execute(
        "INSERT INTO maintenance_windows (name, scope, start_ms, duration_ms, every, origin,
            created_ms) VALUES (?1, ?2, ?3, ?4, ?5, 'api', ?6)",
        params![name, scope, start_ms, duration_ms, every_str(every), now_ms],
    )?;
    Ok(conn.last_insert_rowid())
}

/// Marks an API window deleted; false when there is no live API window with that id.
pub fn delete(conn: &Connection, id: i64, now_ms: i64) -> rusqlite::Result<bool> {
    Ok(conn.execute(
        "UPDATE maintenance_windows SET deleted_ms = ?2
         WHERE id = ?1 AND origin = 'api' AND deleted_ms IS NULL",
        params![id, now_ms],
    )? > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: i64 = 3_600_000;

    fn window(every: Option<Recurrence>) -> Window {
        Window {
            id: 1,
            name: "w".into(),
            scope: Scope::default(),
            start_ms: 100 * H,
            duration_ms: 2 * H,
            every,
            origin: "config".into(),
            deleted_ms: None,
        }
    }

    #[test]
    fn one_off_and_recurring_windows_cover_their_occurrences() {
        let w = window(None);
        for (at, want) in [
            (99 * H, false),
            (100 * H, true),
            (101 * H, true),
            (102 * H, false),
            (124 * H, false),
        ] {
            assert_eq!(w.covers(at), want, "one-off at {at}");
        }
        let d = window(Some(Recurrence::Daily));
        for (at, want) in [
            (99 * H, false),
            (100 * H, true),
            (102 * H, false),
            (124 * H, true),
            (125 * H + H / 2, true),
            (126 * H, false),
        ] {
            assert_eq!(d.covers(at), want, "daily at {at}");
        }
        let wk = window(Some(Recurrence::Weekly));
        assert!(!wk.covers(124 * H));
        assert!(wk.covers(100 * H + 7 * 24 * H + 1));
        let mut gone = window(Some(Recurrence::Daily));
        gone.deleted_ms = Some(110 * H);
        assert!(gone.covers(100 * H));
        assert!(!gone.covers(124 * H));
    }

    #[test]
    fn extreme_starts_are_never_active_and_never_overflow() {
        for every in [None, Some(Recurrence::Daily), Some(Recurrence::Weekly)] {
            let mut w = window(every);
            w.start_ms = i64::MIN;
            assert!(
                !w.covers(100 * H),
                "{every:?}: a start at i64::MIN is not active now"
            );
            assert!(!w.covers(i64::MAX));
            w.start_ms = i64::MAX;
            assert!(!w.covers(100 * H));
            assert!(w.covers(i64::MAX), "{every:?}");
        }
    }

    #[test]
    fn config_windows_sync_and_keep_history() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = crate::store::Db::open(dir.path()).expect("db");
        let conn = db.conn();
        let m = |name: &str, hours: u64| Maintenance {
            name: name.into(),
            scope: Scope {
                host: Some(glob::Pattern::new("db-*").expect("glob")),
                ..Scope::default()
            },
            start_ms: 100 * H,
            duration: std::time::Duration::from_secs(hours * 3600),
            every: Some(Recurrence::Weekly),
        };
        sync_config(conn, &[m("a", 2), m("b", 1)], 1).expect("sync");
        sync_config(conn, &[m("a", 3)], 2).expect("sync again");
        let live = load(conn, false).expect("load");
        assert_eq!(live.len(), 1);
        assert_eq!(live[0].name, "a");
        assert_eq!(live[0].duration_ms, 3 * H);
        assert_eq!(
            live[0].scope.host.as_ref().map(|g| g.as_str()),
            Some("db-*")
        );
        let all = load(conn, true).expect("load all");
        assert_eq!(all.len(), 2);
        assert_eq!(all[1].deleted_ms, Some(2));
        let id = create(conn, "api-one", &Scope::default(), 5, 10, None, 3).expect("create");
        assert!(delete(conn, id, 4).expect("delete"));
        assert!(!delete(conn, id, 5).expect("delete twice"));
        assert!(!delete(conn, live[0].id, 5).expect("config windows are not API-deletable"));
    }
}
