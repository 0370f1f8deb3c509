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
use crate::incidents::scope::{ci_matches, host_matches, matches, Target};

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
    /// Its host's index in `Snapshot::hosts` (`None`: revoked).
    host: Option<usize>,
}

/// Where an incident's time goes, resolved once per snapshot (not per SLA): the CI row of its
/// `(agent, type, key)` if the CMDB has one, else a check unit of its host.
#[derive(Clone, Copy)]
struct IncidentUnit {
    /// Index in `Snapshot::cis`.
    ci: Option<u32>,
    /// Index among the snapshot's distinct `(agent, type, key)` of incidents.
    check: u32,
    /// Index in `Snapshot::hosts` (`None`: revoked).
    host: Option<u32>,
}

/// One incident of a snapshot: what every SLA's timelines look at for every incident of its
/// period, in one contiguous array; the incident itself is read only for those it counts.
struct Entry {
    /// [`Incident::end_key`].
    end: i64,
    first_breach_ms: i64,
    /// Index in `Snapshot::effect_keys`: its rule and priority.
    effect: u32,
    unit: IncidentUnit,
    incident: Arc<Incident>,
}

/// What the store holds about one stretch of time, read once, from which the timelines and
/// check executions of any number of SLAs (and any periods within it) are derived in memory:
/// the collector's refresh of every SLA on `/metrics` reads the store once, not once per SLA.
/// Taken again for every report and refresh (`super::cache` keeps what did not change).
pub struct Snapshot {
    period: Span,
    now_ms: i64,
    hosts: Vec<crate::cmdb::lookup::HostRow>,
    services: BTreeMap<String, crate::cmdb::lookup::ServiceMembers>,
    /// Maintenance windows and the occurrences of each within `period`.
    windows: Vec<(Window, Spans)>,
    /// Per host (as `hosts`): the windows (indices in `windows`) whose host criteria match it.
    host_windows: Vec<Vec<usize>>,
    /// Per host (as `hosts`): its life, from its host CI's first report to its retirement (or
    /// now).
    host_known: Vec<Option<Span>>,
    cis: Vec<CiRow>,
    /// Incidents that overlap `period`, with the spans they were active and their unit, in
    /// order of their end (active ones last): a period's incidents are a suffix.
    incidents: Vec<Entry>,
    /// The number of distinct check units of `incidents`.
    checks: usize,
    /// The distinct `(rule, priority)` of `incidents`: what an SLA makes of each is looked up
    /// once per SLA.
    effect_keys: Vec<(Arc<str>, u8)>,
    /// Per host (as `hosts`): when its agent sent data.
    data: Vec<Spans>,
    /// Per host: when the collector knew its state (its life, with data), the `known` of its
    /// units.
    known: Vec<Arc<Spans>>,
    /// Per CI (as `cis`): the maintenance windows over it.
    ci_maintenance: Vec<Arc<Spans>>,
    /// Check executions per host (as `hosts`): `(UTC day, passed, ran)` in day order, over
    /// the whole UTC days `period` touches, as running sums (each day's counts and all before).
    runs: Vec<Vec<(i64, u64, u64)>>,
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
        let host_of: HashMap<&str, usize> = hosts
            .iter()
            .enumerate()
            .map(|(i, h)| (h.agent_id.as_str(), i))
            .collect();
        let windows: Vec<(Window, Spans)> = maintenance::load(conn, true)?
            .into_iter()
            .map(|w| {
                let occ = occurrences_of(&w, period);
                (w, occ)
            })
            .filter(|(_, occ)| !occ.is_empty())
            .collect();
        let host_windows: Vec<Vec<usize>> = hosts
            .iter()
            .map(|h| {
                (0..windows.len())
                    .filter(|&i| host_matches(&windows[i].0.scope, &h.hostname, &h.tags))
                    .collect()
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
                let agent: String = r.get(1)?;
                Ok(CiRow {
                    id: r.get(0)?,
                    host: host_of.get(agent.as_str()).copied(),
                    agent,
                    ty: r.get(2)?,
                    key: r.get(3)?,
                    first_seen_ms: r.get(4)?,
                    retired_ms: r.get(5)?,
                })
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        let mut host_known = vec![None; hosts.len()];
        for c in cis.iter().filter(|c| c.ty == "host" && c.key == "host") {
            if let Some(h) = c.host {
                host_known[h] = Some(Span::new(c.first_seen_ms, end_of(c.retired_ms)));
            }
        }
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
        let mut cumulative = vec![Vec::new(); hosts.len()];
        for (agent, days) in runs {
            if let Some(&h) = host_of.get(&*agent) {
                let (mut ok, mut total) = (0u64, 0u64);
                cumulative[h] = days
                    .into_iter()
                    .map(|(day, o, t)| {
                        ok = ok.saturating_add(o);
                        total = total.saturating_add(t);
                        (day, ok, total)
                    })
                    .collect();
            }
        }
        let runs = cumulative;
        let mut data = vec![Spans::new(); hosts.len()];
        for (agent, spans) in data_spans(conn, period)? {
            if let Some(&h) = host_of.get(agent.as_str()) {
                data[h] = spans;
            }
        }
        drop(tx);
        // Each incident's unit, found once here rather than by key in every SLA's timelines;
        // by the addresses of its (interned) strings first, by their text once per distinct
        // address triple.
        let ci_of: HashMap<UnitKey<'_>, usize> = cis
            .iter()
            .enumerate()
            .map(|(i, c)| ((c.agent.as_str(), c.ty.as_str(), c.key.as_str()), i))
            .collect();
        let mut check_of: HashMap<UnitKey<'_>, usize> = HashMap::new();
        let mut by_address: HashMap<[usize; 3], IncidentUnit> = HashMap::new();
        let mut effect_of: HashMap<(usize, u8), u32> = HashMap::new();
        let mut effect_keys: Vec<(Arc<str>, u8)> = Vec::new();
        let index = |i: usize| u32::try_from(i).unwrap_or(u32::MAX);
        let mut entries = Vec::with_capacity(incidents.len());
        for inc in &incidents {
            let address = [&inc.agent, &inc.ci_type, &inc.ci_key].map(|s| s.as_ptr() as usize);
            let unit = *by_address.entry(address).or_insert_with(|| {
                let key = (&*inc.agent, &*inc.ci_type, &*inc.ci_key);
                let next = check_of.len();
                IncidentUnit {
                    ci: ci_of.get(&key).map(|&c| index(c)),
                    check: index(*check_of.entry(key).or_insert(next)),
                    host: host_of.get(&*inc.agent).map(|&h| index(h)),
                }
            });
            let effect = *effect_of
                .entry((inc.rule.as_ptr() as usize, inc.priority))
                .or_insert_with(|| {
                    effect_keys.push((Arc::clone(&inc.rule), inc.priority));
                    index(effect_keys.len() - 1)
                });
            entries.push(Entry {
                end: inc.end_key(),
                first_breach_ms: inc.first_breach_ms,
                effect,
                unit,
                incident: Arc::clone(inc),
            });
        }
        let checks = check_of.len();
        drop((ci_of, check_of, by_address, host_of));
        debug_assert!(entries.is_sorted_by_key(|e| (e.end, e.incident.id)));
        let incidents = entries;
        let known = (0..hosts.len())
            .map(|h| Arc::new(Spans::one(host_known[h].unwrap_or_default()).intersect(&data[h])))
            .collect();
        let ci_maintenance = cis
            .iter()
            .map(|c| match c.host {
                Some(h) => maintenance_of(&windows, &host_windows[h], &c.ty, Some(c.id)),
                None => Spans::new(),
            })
            .map(Arc::new)
            .collect();
        Ok(Snapshot {
            period,
            now_ms,
            known,
            ci_maintenance,
            hosts,
            services,
            windows,
            host_windows,
            host_known,
            cis,
            incidents,
            checks,
            effect_keys,
            data,
            runs,
        })
    }

    /// The stretch of time read.
    pub fn period(&self) -> Span {
        self.period
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

    /// Whether host `h` (as [`Snapshot::hosts`]) ran checks on the days read.
    pub(super) fn has_runs(&self, h: usize) -> bool {
        !self.runs[h].is_empty()
    }

    /// Host `h`'s check executions on the UTC days of `days`: `(passed, ran)`, from the running
    /// sums (two binary searches, not a day-by-day sum).
    pub(super) fn runs_within(&self, h: usize, days: Span) -> (u64, u64) {
        let runs = &self.runs[h];
        let upto = |day: i64| {
            let i = runs.partition_point(|r| r.0 < day);
            i.checked_sub(1).map_or((0, 0), |i| (runs[i].1, runs[i].2))
        };
        let (ok_a, total_a) = upto(days.start);
        let (ok_b, total_b) = upto(days.end);
        (ok_b.saturating_sub(ok_a), total_b.saturating_sub(total_a))
    }

    /// The maintenance windows over a CI (or check) of host `h`, within what was read.
    fn maintenance(&self, h: usize, ci_type: &str, ci_id: Option<i64>) -> Spans {
        maintenance_of(&self.windows, &self.host_windows[h], ci_type, ci_id)
    }

    /// The timeline of every unit `sla` covers, within `period` (clipped to what was read):
    /// the CIs in the CMDB's order, then the checks in the order of their first incident. The
    /// spans a unit shares with others (its host's data, its maintenance) are those of the
    /// whole snapshot, reaching beyond `period`: what is outside it is never measured.
    pub fn timelines(&self, sla: &Sla, period: Span) -> Vec<CiTimeline> {
        let period = period.intersect(self.period);
        let now_ms = self.now_ms;
        let end_of = |retired: Option<i64>| retired.unwrap_or(now_ms).min(now_ms);
        // Per host: whether the host criteria of the SLA's scope match it (once each).
        let mut scoped: Vec<Option<bool>> = vec![None; self.hosts.len()];
        let mut host_in_scope = |h: usize| {
            *scoped[h].get_or_insert_with(|| {
                let host = &self.hosts[h];
                host_matches(&sla.scope, &host.hostname, &host.tags)
            })
        };
        let mut units: Vec<CiTimeline> = Vec::new();
        let mut unit_of_ci: Vec<Option<usize>> = vec![None; self.cis.len()];
        for (i, ci) in self.cis.iter().enumerate() {
            if ci.first_seen_ms >= period.end || ci.retired_ms.is_some_and(|r| r <= period.start) {
                continue;
            }
            let Some(h) = ci.host else {
                continue; // revoked
            };
            if !host_in_scope(h)
                || !ci_matches(&sla.scope, &ci.ty, Some(ci.id))
                || !self.in_service(sla, &ci.agent, Some(ci.id))
            {
                continue;
            }
            let lifetime = Span::new(ci.first_seen_ms, end_of(ci.retired_ms));
            unit_of_ci[i] = Some(units.len());
            units.push(CiTimeline {
                exists: Some(Spans::one(lifetime)),
                known: match self.host_known[h] {
                    Some(_) => self.known[h].clone(),
                    None => Arc::new(Spans::one(lifetime).intersect(&self.data[h])),
                },
                maintenance: self.ci_maintenance[i].clone(),
                ..CiTimeline::default()
            });
        }
        // Per check key: `None` not looked at yet, `Some(None)` not a unit of this SLA.
        let mut unit_of_check: Vec<Option<Option<usize>>> = vec![None; self.checks];
        // What each (rule, priority) does to this SLA.
        let effects: Vec<Option<f64>> = self
            .effect_keys
            .iter()
            .map(|(rule, priority)| sla.effect(rule, *priority))
            .collect();
        let first = self.incidents.partition_point(|e| e.end <= period.start);
        for entry in &self.incidents[first..] {
            if entry.first_breach_ms >= period.end {
                continue;
            }
            let Some(weight) = effects[entry.effect as usize] else {
                continue;
            };
            let (inc, unit) = (&entry.incident, entry.unit);
            let ci_unit = unit.ci.and_then(|c| unit_of_ci[c as usize]);
            let index = match (ci_unit, unit_of_check[unit.check as usize]) {
                (Some(u), _) | (None, Some(Some(u))) => u,
                (None, Some(None)) => continue,
                // A CI out of scope, or retired before the period, is not a check; whether the
                // key is one depends on the incident's `ci_id`, so it is asked again.
                (None, None) if inc.ci_id.is_some() => continue,
                (None, None) => {
                    // A check (not a CMDB item) of a host in scope, known as long as its host.
                    let in_scope = unit.host.map(|h| h as usize).filter(|&h| {
                        host_in_scope(h)
                            && ci_matches(&sla.scope, &inc.ci_type, None)
                            && self.in_service(sla, &inc.agent, None)
                    });
                    let Some(h) = in_scope else {
                        unit_of_check[unit.check as usize] = Some(None);
                        continue;
                    };
                    unit_of_check[unit.check as usize] = Some(Some(units.len()));
                    units.push(CiTimeline {
                        exists: Some(Spans::one(self.host_known[h].unwrap_or_default())),
                        known: self.known[h].clone(),
                        maintenance: Arc::new(self.maintenance(h, &inc.ci_type, None)),
                        ..CiTimeline::default()
                    });
                    units.len() - 1
                }
            };
            let timeline = &mut units[index];
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
        units
    }
}

/// The occurrences of the windows `of` (indices in `windows`) whose CI criteria match.
fn maintenance_of(
    windows: &[(Window, Spans)],
    of: &[usize],
    ci_type: &str,
    ci_id: Option<i64>,
) -> Spans {
    let mut out = Vec::new();
    for &w in of {
        let (window, occ) = &windows[w];
        if ci_matches(&window.scope, ci_type, ci_id) {
            out.extend(occ.iter().copied());
        }
    }
    if out.is_empty() {
        return Spans::new();
    }
    Spans::from_unsorted(out)
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
