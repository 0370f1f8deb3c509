//! The timelines of an SLA's CIs, read from what the store holds: the CMDB (which CIs, since
//! when), the incidents and their episodes (down and degraded time), the maintenance windows.
//!
//! Derived on every call from what the store holds at that moment: late data that opened
//! incidents in the past, an incident resolved later, a maintenance window added afterwards or
//! a changed SLA all show in the next report. The incidents and check executions come through
//! `super::cache`, which reads only what changed since the last read.
//!
//! A unit of the service is a CI of the CMDB in scope, or a check of a host in scope (checks
//! are not CMDB items; their incidents name them by key). A CI exists from when it was first
//! seen until it was retired (outside that it is not part of the service); a check as long as
//! its host. The collector knows a CI's state while its host is there (from the host's first
//! report until it is retired) and its agent sent data (`agent_data`: a batch covers its
//! samples' times and two intervals after; a stopped agent, or one the collector never heard
//! from while it was down itself, is unknown then, unless an incident decided it was down).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use rusqlite::{params, Connection};

use super::cache::Incident;
use super::occurrences::days_of;
use super::spans::{Span, Spans};
use super::{CiTimeline, Sla};
use crate::incidents::maintenance::{self, Window};
use crate::incidents::scope::{matches, Target};

/// One unit: `(agent id, CI type, CI key)`.
type UnitKey<'a> = (&'a str, &'a str, &'a str);

/// The timeline of every unit the SLA covers, within `period`, as of `now_ms`.
pub fn timelines(
    conn: &Connection,
    sla: &Sla,
    period: Span,
    now_ms: i64,
) -> rusqlite::Result<Vec<CiTimeline>> {
    Ok(Snapshot::read(conn, period, now_ms)?.timelines(sla, period))
}

/// One CI row of the CMDB.
struct CiRow {
    id: i64,
    agent: String,
    ty: String,
    key: String,
    first_seen_ms: i64,
    retired_ms: Option<i64>,
}

/// What the store holds about one stretch of time, read once, from which the timelines and
/// check executions of any number of SLAs (and any periods within it) are derived in memory:
/// the collector's refresh of every SLA on `/metrics` reads the store once, not once per SLA.
/// Taken again for every report and refresh (`super::cache` keeps what did not change).
pub struct Snapshot {
    period: Span,
    now_ms: i64,
    hosts: Vec<crate::cmdb::lookup::HostRow>,
    host_of: HashMap<String, usize>,
    services: BTreeMap<String, crate::cmdb::lookup::ServiceMembers>,
    /// Maintenance windows and the occurrences of each within `period`.
    windows: Vec<(Window, Spans)>,
    /// Each host's life: from its host CI's first report to its retirement (or now).
    host_known: HashMap<String, Span>,
    cis: Vec<CiRow>,
    /// Incidents that overlap `period`, with the spans they were active.
    incidents: Vec<Arc<Incident>>,
    data: HashMap<String, Spans>,
    /// Check executions per agent: `(UTC day, passed, ran)` in day order, over the whole
    /// UTC days `period` touches.
    runs: super::occurrences::Runs,
}

impl Snapshot {
    /// Everything that overlaps `period`, as of `now_ms`: the CMDB, maintenance and coverage
    /// read again, the incidents and check executions that changed since the last read of this
    /// store in this process (`super::cache`).
    pub fn read(conn: &Connection, period: Span, now_ms: i64) -> rusqlite::Result<Snapshot> {
        Snapshot::read_with(conn, period, now_ms, super::cache::of(conn).as_deref())
    }

    /// [`Snapshot::read`] of everything from the store, as the first read of a store does.
    pub fn read_uncached(
        conn: &Connection,
        period: Span,
        now_ms: i64,
    ) -> rusqlite::Result<Snapshot> {
        Snapshot::read_with(conn, period, now_ms, None)
    }

    fn read_with(
        conn: &Connection,
        period: Span,
        now_ms: i64,
        cache: Option<&super::cache::StoreCache>,
    ) -> rusqlite::Result<Snapshot> {
        // One read transaction: what the cache asks for changes is what the rows say.
        let tx = if conn.is_autocommit() {
            Some(conn.unchecked_transaction()?)
        } else {
            None
        };
        let hosts = crate::cmdb::lookup::hosts(conn)?;
        let host_of = hosts
            .iter()
            .enumerate()
            .map(|(i, h)| (h.agent_id.clone(), i))
            .collect();
        let windows = maintenance::load(conn, true)?
            .into_iter()
            .map(|w| {
                let occ = occurrences_of(&w, period);
                (w, occ)
            })
            .collect();
        let services = crate::cmdb::lookup::services(conn)?;
        let end_of = |retired: Option<i64>| retired.unwrap_or(now_ms).min(now_ms);
        let mut stmt = conn.prepare_cached(
            "SELECT id, agent_id, type, key, first_seen_ms, retired_at_ms FROM cis
             WHERE agent_id IS NOT NULL AND first_seen_ms < ?1
               AND (retired_at_ms IS NULL OR retired_at_ms > ?2)",
        )?;
        let cis = stmt
            .query_map(params![period.end, period.start], |r| {
                Ok(CiRow {
                    id: r.get(0)?,
                    agent: r.get(1)?,
                    ty: r.get(2)?,
                    key: r.get(3)?,
                    first_seen_ms: r.get(4)?,
                    retired_ms: r.get(5)?,
                })
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        let host_known = cis
            .iter()
            .filter(|c| c.ty == "host" && c.key == "host")
            .map(|c| {
                (
                    c.agent.clone(),
                    Span::new(c.first_seen_ms, end_of(c.retired_ms)),
                )
            })
            .collect();
        // The cache holds none of a period before its horizon: read from the store then.
        let cached = match cache {
            Some(c) => c.incidents(conn, period, now_ms)?,
            None => None,
        };
        let incidents = match cached {
            Some(i) => i,
            None => super::cache::incidents_uncached(conn, period)?,
        };
        let runs = match cache {
            Some(c) => c.runs(conn, days_of(period))?,
            None => super::occurrences::read(conn, days_of(period))?,
        };
        let data = data_spans(conn, period)?;
        drop(tx);
        Ok(Snapshot {
            period,
            now_ms,
            host_of,
            hosts,
            services,
            windows,
            host_known,
            cis,
            incidents,
            data,
            runs,
        })
    }

    /// The stretch of time read.
    pub fn period(&self) -> Span {
        self.period
    }

    fn host(&self, agent: &str) -> Option<&crate::cmdb::lookup::HostRow> {
        self.host_of.get(agent).map(|&i| &self.hosts[i])
    }

    /// Whether a unit of `agent` (its CI `ci_id`, or one of its checks) belongs to the business
    /// service `sla` names, if it names one (none while it does not exist).
    fn in_service(&self, sla: &Sla, agent: &str, ci_id: Option<i64>) -> bool {
        match &sla.service {
            None => true,
            Some(name) => self
                .services
                .get(name)
                .is_some_and(|m| m.contains(Some(agent), ci_id)),
        }
    }

    /// Whether the checks of `host` are in the scope of `sla`.
    pub(super) fn checks_in_scope(&self, sla: &Sla, host: &crate::cmdb::lookup::HostRow) -> bool {
        let target = Target {
            hostname: &host.hostname,
            tags: &host.tags,
            ci_type: "check",
            ci_id: None,
        };
        self.in_service(sla, &host.agent_id, None) && matches(&sla.scope, &target)
    }

    /// The hosts of agents that are not revoked.
    pub(super) fn hosts(&self) -> &[crate::cmdb::lookup::HostRow] {
        &self.hosts
    }

    /// One agent's check executions, `(UTC day, passed, ran)` in day order.
    pub(super) fn runs_of(&self, agent: &str) -> &[(i64, u64, u64)] {
        self.runs.get(agent).map_or(&[], Vec::as_slice)
    }

    /// The maintenance windows over `target`, within `period`.
    fn maintenance(&self, target: &Target<'_>, period: Span) -> Spans {
        let mut out = Vec::new();
        for (_, occ) in self
            .windows
            .iter()
            .filter(|(w, _)| matches(&w.scope, target))
        {
            out.extend(occ.clip(period).iter().copied());
        }
        Spans::from_unsorted(out)
    }

    /// The timeline of every unit `sla` covers, within `period` (clipped to what was read).
    pub fn timelines(&self, sla: &Sla, period: Span) -> Vec<CiTimeline> {
        let period = period.intersect(self.period);
        let now_ms = self.now_ms;
        let end_of = |retired: Option<i64>| retired.unwrap_or(now_ms).min(now_ms);
        let no_data = Spans::new();
        let data_of = |agent: &str| self.data.get(agent).unwrap_or(&no_data).clip(period);
        let mut units: BTreeMap<UnitKey<'_>, CiTimeline> = BTreeMap::new();
        for ci in &self.cis {
            if ci.first_seen_ms >= period.end || ci.retired_ms.is_some_and(|r| r <= period.start) {
                continue;
            }
            let Some(host) = self.host(&ci.agent) else {
                continue; // revoked
            };
            let target = Target {
                hostname: &host.hostname,
                tags: &host.tags,
                ci_type: &ci.ty,
                ci_id: Some(ci.id),
            };
            if !matches(&sla.scope, &target) || !self.in_service(sla, &ci.agent, Some(ci.id)) {
                continue;
            }
            let lifetime = Span::new(ci.first_seen_ms, end_of(ci.retired_ms));
            let timeline = CiTimeline {
                exists: Some(Spans::one(lifetime)),
                known: Spans::one(self.host_known.get(&ci.agent).copied().unwrap_or(lifetime))
                    .intersect(&data_of(&ci.agent)),
                maintenance: self.maintenance(&target, period),
                ..CiTimeline::default()
            };
            units.insert((&ci.agent, &ci.ty, &ci.key), timeline);
        }
        for inc in &self.incidents {
            if !inc.overlaps(period) {
                continue;
            }
            let Some(weight) = sla.effect(&inc.rule, inc.priority) else {
                continue;
            };
            let key = (&*inc.agent, &*inc.ci_type, &*inc.ci_key);
            let timeline = match units.entry(key) {
                std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::btree_map::Entry::Vacant(v) => {
                    // A check (not a CMDB item) of a host in scope, known as long as its host.
                    let Some(host) = self.host(&inc.agent) else {
                        continue;
                    };
                    let target = Target {
                        hostname: &host.hostname,
                        tags: &host.tags,
                        ci_type: &inc.ci_type,
                        ci_id: inc.ci_id,
                    };
                    if inc.ci_id.is_some()
                        || !matches(&sla.scope, &target)
                        || !self.in_service(sla, &inc.agent, None)
                    {
                        continue; // a CI out of scope, or retired before the period
                    }
                    let known = self
                        .host_known
                        .get(&*inc.agent)
                        .copied()
                        .unwrap_or_default();
                    v.insert(CiTimeline {
                        exists: Some(Spans::one(known)),
                        known: Spans::one(known).intersect(&data_of(&inc.agent)),
                        maintenance: self.maintenance(&target, period),
                        ..CiTimeline::default()
                    })
                }
            };
            for span in inc
                .episodes
                .iter()
                .map(|s| Span::new(s.start, s.end.min(now_ms)))
            {
                if weight >= 1.0 {
                    timeline.down.push((span, inc.id));
                } else {
                    timeline.degraded.push((span, weight, inc.id));
                }
            }
        }
        units.into_values().collect()
    }
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

/// The occurrences of one maintenance window within `period`.
fn occurrences_of(w: &Window, period: Span) -> Spans {
    /// Occurrences of one recurring window looked at, at most (a year of daily windows).
    const MAX_OCCURRENCES: i64 = 400;
    let mut out = Vec::new();
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
    Spans::from_unsorted(out)
}
