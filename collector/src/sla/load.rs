//! The timelines of an SLA's CIs, read from what the store holds: the CMDB (which CIs, since
//! when), the incidents and their episodes (down and degraded time), the maintenance windows.
//!
//! Derived on every call, never cached: late data that opened incidents in the past, an
//! incident resolved later, a maintenance window added afterwards or a changed SLA all show in
//! the next report.
//!
//! A unit of the service is a CI of the CMDB in scope, or a check of a host in scope (checks
//! are not CMDB items; their incidents name them by key). A CI exists from when it was first
//! seen until it was retired (outside that it is not part of the service); a check as long as
//! its host. The collector knows a CI's state while its host is there (from the host's first
//! report until it is retired) and its agent sent data (`agent_data`: a batch covers its
//! samples' times and two intervals after; a stopped agent, or one the collector never heard
//! from while it was down itself, is unknown then, unless an incident decided it was down).

use std::collections::{BTreeMap, HashMap};

use rusqlite::{params, Connection};

use super::spans::{Span, Spans};
use super::{CiTimeline, Sla};
use crate::incidents::maintenance::{self, Window};
use crate::incidents::scope::{matches, Target};

/// One unit: `(agent id, CI type, CI key)`.
type UnitKey = (String, String, String);

/// The timeline of every unit the SLA covers, within `period`, as of `now_ms`.
pub fn timelines(
    conn: &Connection,
    sla: &Sla,
    period: Span,
    now_ms: i64,
) -> rusqlite::Result<Vec<CiTimeline>> {
    let hosts = crate::cmdb::lookup::hosts(conn)?;
    let host_of: HashMap<&str, &crate::cmdb::lookup::HostRow> =
        hosts.iter().map(|h| (h.agent_id.as_str(), h)).collect();
    let windows = maintenance::load(conn, true)?;
    // `service`: only the CIs of that business service (none while it does not exist).
    let members = match &sla.service {
        Some(name) => Some(
            crate::cmdb::lookup::services(conn)?
                .remove(name)
                .unwrap_or_default(),
        ),
        None => None,
    };
    let in_service = |agent: &str, ci_id: Option<i64>| {
        members
            .as_ref()
            .is_none_or(|m| m.contains(Some(agent), ci_id))
    };
    let end_of = |retired: Option<i64>| retired.unwrap_or(now_ms).min(now_ms);

    let data = data_spans(conn, period)?;
    let no_data = Spans::new();
    let data_of = |agent: &str| data.get(agent).unwrap_or(&no_data);
    let mut units: BTreeMap<UnitKey, (Option<i64>, CiTimeline)> = BTreeMap::new();
    let mut host_known: HashMap<String, Span> = HashMap::new();
    let mut stmt = conn.prepare_cached(
        "SELECT id, agent_id, type, key, first_seen_ms, retired_at_ms FROM cis
         WHERE agent_id IS NOT NULL AND first_seen_ms < ?1
           AND (retired_at_ms IS NULL OR retired_at_ms > ?2)",
    )?;
    let rows = stmt
        .query_map(params![period.end, period.start], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, i64>(4)?,
                r.get::<_, Option<i64>>(5)?,
            ))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    for (_, agent, ty, key, first, retired) in &rows {
        if ty == "host" && key == "host" {
            host_known.insert(agent.clone(), Span::new(*first, end_of(*retired)));
        }
    }
    for (id, agent, ty, key, first, retired) in rows {
        let Some(host) = host_of.get(agent.as_str()) else {
            continue; // revoked
        };
        let target = Target {
            hostname: &host.hostname,
            tags: &host.tags,
            ci_type: &ty,
            ci_id: Some(id),
        };
        if !matches(&sla.scope, &target) || !in_service(&agent, Some(id)) {
            continue;
        }
        let lifetime = Span::new(first, end_of(retired));
        let timeline = CiTimeline {
            exists: Some(Spans::one(lifetime)),
            known: Spans::one(host_known.get(&agent).copied().unwrap_or(lifetime))
                .intersect(data_of(&agent)),
            maintenance: maintenance_spans(&windows, &target, period),
            ..CiTimeline::default()
        };
        units.insert((agent, ty, key), (Some(id), timeline));
    }

    // Incidents that overlap the period; the episodes of reopened ones from their events.
    let mut stmt = conn.prepare_cached(
        "SELECT id, agent_id, ci_id, ci_type, ci_key, rule, priority, first_breach_ms,
                resolved_ms, reopen_count
         FROM incidents
         WHERE agent_id IS NOT NULL AND first_breach_ms < ?1
           AND (resolved_ms IS NULL OR resolved_ms > ?2)",
    )?;
    let rows = stmt.query_map(params![period.end, period.start], |r| {
        Ok(IncidentRow {
            id: r.get(0)?,
            agent: r.get(1)?,
            ci_id: r.get(2)?,
            ci_type: r.get(3)?,
            ci_key: r.get(4)?,
            rule: r.get(5)?,
            priority: r.get(6)?,
            first_breach_ms: r.get(7)?,
            resolved_ms: r.get(8)?,
            reopen_count: r.get(9)?,
        })
    })?;
    for row in rows {
        let inc = row?;
        let Some(weight) = sla.effect(&inc.rule, inc.priority) else {
            continue;
        };
        let key = (inc.agent.clone(), inc.ci_type.clone(), inc.ci_key.clone());
        if !units.contains_key(&key) {
            // A check (not a CMDB item) of a host in scope, known as long as its host.
            let Some(host) = host_of.get(inc.agent.as_str()) else {
                continue;
            };
            let target = Target {
                hostname: &host.hostname,
                tags: &host.tags,
                ci_type: &inc.ci_type,
                ci_id: inc.ci_id,
            };
            if inc.ci_id.is_some() || !matches(&sla.scope, &target) || !in_service(&inc.agent, None)
            {
                continue; // a CI out of scope, or retired before the period
            }
            let known = host_known.get(&inc.agent).copied().unwrap_or_default();
            let timeline = CiTimeline {
                exists: Some(Spans::one(known)),
                known: Spans::one(known).intersect(data_of(&inc.agent)),
                maintenance: maintenance_spans(&windows, &target, period),
                ..CiTimeline::default()
            };
            units.insert(key.clone(), (None, timeline));
        }
        let Some((_, timeline)) = units.get_mut(&key) else {
            continue;
        };
        for span in episodes(conn, &inc, now_ms)? {
            if weight >= 1.0 {
                timeline.down.push((span, inc.id));
            } else {
                timeline.degraded.push((span, weight, inc.id));
            }
        }
    }
    Ok(units.into_values().map(|(_, t)| t).collect())
}

/// When each agent sent data, within `period` (`agent_data`, written by the ingest writer).
fn data_spans(conn: &Connection, period: Span) -> rusqlite::Result<HashMap<String, Spans>> {
    let mut stmt = conn.prepare_cached(
        "SELECT agent_id, start_ms, end_ms FROM agent_data WHERE start_ms < ?1 AND end_ms > ?2",
    )?;
    let mut raw: HashMap<String, Vec<Span>> = HashMap::new();
    let rows = stmt.query_map(params![period.end, period.start], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, i64>(1)?,
            r.get::<_, i64>(2)?,
        ))
    })?;
    for row in rows {
        let (agent, start, end) = row?;
        raw.entry(agent)
            .or_default()
            .push(Span::new(start, end).intersect(period));
    }
    Ok(raw
        .into_iter()
        .map(|(agent, spans)| (agent, Spans::from_unsorted(spans)))
        .collect())
}

struct IncidentRow {
    id: i64,
    agent: String,
    ci_id: Option<i64>,
    ci_type: String,
    ci_key: String,
    rule: String,
    priority: u8,
    first_breach_ms: i64,
    resolved_ms: Option<i64>,
    reopen_count: i64,
}

/// The spans an incident was active: from its first breach to its resolution, or, once
/// reopened, each episode from (re)opening to the next resolution. An active one runs to now.
fn episodes(conn: &Connection, inc: &IncidentRow, now_ms: i64) -> rusqlite::Result<Vec<Span>> {
    if inc.reopen_count == 0 {
        let end = inc.resolved_ms.unwrap_or(now_ms);
        return Ok(vec![Span::new(inc.first_breach_ms, end)]);
    }
    // An episode runs from its breach (`first_breach_ms` of the reopen; the sample's time, which
    // lies in the past for data replayed after an outage) to the time of the sample that
    // resolved it (`at_ms`), not to when the collector wrote the events.
    let mut stmt = conn.prepare_cached(
        "SELECT ts_ms, kind, detail FROM incident_events
         WHERE incident_id = ?1 AND kind IN ('reopened', 'resolved') ORDER BY id",
    )?;
    let events = stmt
        .query_map([inc.id], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
            ))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let mut out = Vec::new();
    let mut start = Some(inc.first_breach_ms);
    for (ts, kind, detail) in events {
        let detail: serde_json::Value = serde_json::from_str(&detail).unwrap_or_default();
        let at = |key: &str| detail[key].as_i64().unwrap_or(ts);
        match (kind.as_str(), start) {
            ("resolved", Some(s)) => {
                out.push(Span::new(s, at("at_ms").max(s)));
                start = None;
            }
            ("reopened", None) => start = Some(at("first_breach_ms")),
            _ => {}
        }
    }
    if let Some(s) = start {
        out.push(Span::new(s, inc.resolved_ms.unwrap_or(now_ms)));
    }
    Ok(out)
}

/// The occurrences of every maintenance window over `target` within `period`.
fn maintenance_spans(windows: &[Window], target: &Target<'_>, period: Span) -> Spans {
    /// Occurrences of one recurring window looked at, at most (a year of daily windows).
    const MAX_OCCURRENCES: i64 = 400;
    let mut out = Vec::new();
    for w in windows.iter().filter(|w| matches(&w.scope, target)) {
        let until = w.deleted_ms.unwrap_or(i64::MAX);
        let occurrence = |start: i64| {
            Span::new(start, start.saturating_add(w.duration_ms).min(until)).intersect(period)
        };
        match w.every {
            None => out.push(occurrence(w.start_ms)),
            Some(r) => {
                let step = i64::try_from(r.period().as_millis()).unwrap_or(i64::MAX);
                // The first occurrence that may reach into the period.
                let skip = (period
                    .start
                    .saturating_sub(w.start_ms)
                    .saturating_sub(w.duration_ms))
                .max(0)
                    / step;
                let mut start = w.start_ms.saturating_add(skip.saturating_mul(step));
                for _ in 0..MAX_OCCURRENCES {
                    if start >= period.end || start >= until {
                        break;
                    }
                    out.push(occurrence(start));
                    start = start.saturating_add(step);
                }
            }
        }
    }
    Spans::from_unsorted(out)
}
