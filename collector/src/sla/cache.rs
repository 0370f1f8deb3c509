//! What SLA reads keep between reads of one store: the incidents an SLA figure is made of and
//! the check executions per UTC day. Both are most of what a year's report reads (100,000
//! incidents, 700,000 `check_runs` rows at 1,000 hosts) and almost none of it changes from one
//! read to the next, so a read asks the store what changed since the last one and reads only
//! that:
//!
//! - `incident_changes` logs every incident written in a way an SLA figure depends on (a
//!   trigger on insert and on update of its rule, priority, CI, breach, resolution and reopen
//!   count); a read re-reads the incidents logged since the sequence number it saw last. A gap
//!   in the log (pruned before this process read it) or a log that went backwards (another
//!   store at the same path) reads every incident again.
//! - `check_days` holds a version per UTC day, raised by a trigger on every write to that day of
//!   `check_runs`; a read re-reads the days whose version moved (today's, and a day a replayed
//!   batch reached) and drops the days the store no longer has.
//!
//! Both reads run in the read transaction of the snapshot, so a snapshot from the cache is what
//! reading everything would have given at that moment (`tests_store::the_cache_reads_what_the_store_holds`).
//! Kept per database file, for the life of the process; memory, estimated from the layout (not
//! measured): about 200 bytes per incident within [`KEEP_MS`] and 32 bytes per (agent, day)
//! with check executions.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, OnceLock};

use rusqlite::{params, Connection, OptionalExtension};

use super::occurrences::{Runs, DAY_MS};
use super::spans::Span;

/// How far back the cache holds incidents: the longest report ([`super::MAX_DAYS`]) and two
/// days for a period that starts within a day and for the clock. A read reaching further back
/// reads the store directly.
pub const KEEP_MS: i64 = (super::MAX_DAYS as i64 + 2) * DAY_MS;

/// Entries of `incident_changes` the housekeeping keeps ([`prune`]): many more than change
/// between two refreshes of the SLA figures (every 5 to 30 s).
pub const KEEP_CHANGES: i64 = 100_000;

/// Stores with a cache in this process, at most (tests open many; a collector one).
const MAX_STORES: usize = 32;

/// One incident as an SLA sees it, and the spans it was active (an active one's last span ends
/// at `i64::MAX`: it runs to whatever "now" a snapshot is taken at).
#[derive(Debug, PartialEq)]
pub(super) struct Incident {
    pub id: i64,
    pub agent: Arc<str>,
    pub ci_id: Option<i64>,
    pub ci_type: Arc<str>,
    pub ci_key: Arc<str>,
    pub rule: Arc<str>,
    pub priority: u8,
    pub first_breach_ms: i64,
    pub resolved_ms: Option<i64>,
    pub reopen_count: i64,
    pub episodes: Box<[Span]>,
}

impl Incident {
    /// When it ended, for ordering: its resolution, `i64::MAX` while active.
    pub fn end_key(&self) -> i64 {
        self.resolved_ms.unwrap_or(i64::MAX)
    }

    /// Whether it was active at some time within `period`.
    pub fn overlaps(&self, period: Span) -> bool {
        self.first_breach_ms < period.end && self.resolved_ms.is_none_or(|r| r > period.start)
    }
}

/// The cache of one store.
#[derive(Default)]
pub(super) struct StoreCache {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    strings: Strings,
    incidents: Option<Incidents>,
    /// `check_runs` per UTC day: its version and the executions per agent.
    days: BTreeMap<i64, Day>,
}

struct Incidents {
    /// The last `incident_changes` sequence number read.
    seq: i64,
    /// Incidents that ended before this are not held.
    horizon: i64,
    /// By `(end, id)` ([`Incident::end_key`]): a period's incidents are a range, in order.
    by_end: BTreeMap<(i64, i64), Arc<Incident>>,
    /// Each held incident's `end_key`.
    end_of: HashMap<i64, i64>,
}

impl Incidents {
    fn insert(&mut self, inc: Arc<Incident>) {
        let key = inc.end_key();
        if let Some(old) = self.end_of.insert(inc.id, key) {
            self.by_end.remove(&(old, inc.id));
        }
        self.by_end.insert((key, inc.id), inc);
    }

    fn remove(&mut self, id: i64) {
        if let Some(old) = self.end_of.remove(&id) {
            self.by_end.remove(&(old, id));
        }
    }
}

/// One agent's `(UTC day, passed, ran)` in day order.
type DayRuns = Vec<(i64, u64, u64)>;

struct Day {
    version: i64,
    /// `(agent, passed, ran)` in agent order.
    runs: Vec<(Arc<str>, u64, u64)>,
}

/// One copy of each agent id, rule, CI type and key.
#[derive(Default)]
struct Strings(HashSet<Arc<str>>);

impl Strings {
    fn get(&mut self, s: &str) -> Arc<str> {
        if let Some(a) = self.0.get(s) {
            return Arc::clone(a);
        }
        let a: Arc<str> = Arc::from(s);
        self.0.insert(Arc::clone(&a));
        a
    }

    /// Drops the strings nothing else holds any more.
    fn collect(&mut self) {
        self.0.retain(|s| Arc::strong_count(s) > 1);
    }
}

/// The cache of the store `conn` is open on (none for an in-memory database).
pub(super) fn of(conn: &Connection) -> Option<Arc<StoreCache>> {
    static STORES: OnceLock<Mutex<HashMap<String, Arc<StoreCache>>>> = OnceLock::new();
    let path = conn.path().filter(|p| !p.is_empty())?;
    let mut stores = STORES
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    if !stores.contains_key(path) && stores.len() >= MAX_STORES {
        // Another store's cache goes; it is read again if asked for.
        let victim = stores.keys().next().cloned();
        if let Some(victim) = victim {
            stores.remove(&victim);
        }
    }
    Some(Arc::clone(stores.entry(path.to_owned()).or_default()))
}

/// Forgets what is cached of the store `conn` is open on (the benchmark's cold reads).
pub fn forget(conn: &Connection) {
    if let Some(cache) = of(conn) {
        *cache.inner.lock().unwrap_or_else(|p| p.into_inner()) = Inner::default();
    }
}

impl StoreCache {
    /// The incidents active at some time within `period`, as of the read transaction `conn` is
    /// in, in order of their end and id ([`Incident::end_key`]); `None` when `period` reaches
    /// back further than the cache holds.
    pub fn incidents(
        &self,
        conn: &Connection,
        period: Span,
        now_ms: i64,
    ) -> rusqlite::Result<Option<Vec<Arc<Incident>>>> {
        let horizon = now_ms.saturating_sub(KEEP_MS);
        if period.start < horizon {
            return Ok(None);
        }
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let Inner {
            strings, incidents, ..
        } = &mut *inner;
        let (first, last): (Option<i64>, Option<i64>) = conn
            .prepare_cached("SELECT MIN(seq), MAX(seq) FROM incident_changes")?
            .query_row([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        let last = last.unwrap_or(0);
        let current = incidents
            .as_ref()
            .is_some_and(|c| c.seq <= last && first.is_none_or(|f| f <= c.seq.saturating_add(1)));
        if !current {
            *incidents = Some(read_all(conn, strings, horizon, last)?);
        }
        let cached = incidents.as_mut().expect("read above");
        if period.start < cached.horizon {
            return Ok(None); // read as of a later now, which let go of older incidents
        }
        if cached.seq < last {
            let mut ids = conn.prepare_cached(
                "SELECT DISTINCT incident_id FROM incident_changes WHERE seq > ?1",
            )?;
            let ids = ids
                .query_map([cached.seq], |r| r.get::<_, i64>(0))?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            for id in ids {
                match read_one(conn, strings, id)? {
                    Some(inc) if inc.resolved_ms.is_none_or(|r| r > cached.horizon) => {
                        cached.insert(Arc::new(inc));
                    }
                    _ => cached.remove(id),
                }
            }
            cached.seq = last;
        }
        // Incidents that ended before any report reaches leave, a day at a time.
        if horizon.saturating_sub(cached.horizon) > DAY_MS {
            cached.horizon = horizon;
            let kept = cached
                .by_end
                .split_off(&(horizon.saturating_add(1), i64::MIN));
            for &(_, id) in cached.by_end.keys() {
                cached.end_of.remove(&id);
            }
            cached.by_end = kept;
            strings.collect();
        }
        // Those that ended after the period's start, in order of their end.
        let out = cached
            .by_end
            .range((period.start.saturating_add(1), i64::MIN)..)
            .map(|(_, i)| i)
            .filter(|i| i.overlaps(period))
            .cloned()
            .collect();
        Ok(Some(out))
    }

    /// The check executions per agent on the UTC days `days` covers, as of the read
    /// transaction `conn` is in.
    pub fn runs(&self, conn: &Connection, days: Span) -> rusqlite::Result<Runs> {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let Inner {
            strings,
            days: cached,
            ..
        } = &mut *inner;
        let versions = conn
            .prepare_cached(
                "SELECT day_ms, version FROM check_days WHERE day_ms >= ?1 AND day_ms < ?2",
            )?
            .query_map(params![days.start, days.end], |r| {
                Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?))
            })?
            .collect::<rusqlite::Result<BTreeMap<_, _>>>()?;
        // Days the store no longer has (pruned) go; days outside `days` stay for other reads.
        cached.retain(|d, _| *d < days.start || *d >= days.end || versions.contains_key(d));
        let mut read_day = conn.prepare_cached(
            "SELECT agent_id, SUM(ok), SUM(total) FROM check_runs
             WHERE day_ms = ?1 GROUP BY agent_id ORDER BY agent_id",
        )?;
        for (&day, &version) in &versions {
            if cached.get(&day).is_some_and(|d| d.version == version) {
                continue;
            }
            let mut runs = Vec::new();
            let mut rows = read_day.query([day])?;
            while let Some(r) = rows.next()? {
                runs.push((
                    strings.get(r.get_ref(0)?.as_str()?),
                    r.get::<_, i64>(1)?.max(0).unsigned_abs(),
                    r.get::<_, i64>(2)?.max(0).unsigned_abs(),
                ));
            }
            runs.sort_by(|a, b| a.0.cmp(&b.0)); // in agent order already (ORDER BY)
            cached.insert(day, Day { version, runs });
        }
        // Days no report reaches any more leave.
        if let Some(&newest) = versions.keys().next_back() {
            let oldest = newest.saturating_sub(KEEP_MS);
            cached.retain(|d, _| *d >= oldest);
        }
        // Each day's runs are in agent order, and mostly of the same agents: merged day by day
        // into a list in agent order (interned ids compare by pointer), not hashed per day.
        let mut agents: Vec<(Arc<str>, DayRuns)> = Vec::new();
        let mut joined = Vec::new();
        for (&day, d) in cached.range(days.start..days.end) {
            let mut i = 0;
            for (agent, ok, total) in &d.runs {
                while agents
                    .get(i)
                    .is_some_and(|(a, _)| !Arc::ptr_eq(a, agent) && **a < **agent)
                {
                    i += 1;
                }
                match agents.get_mut(i) {
                    Some((a, v)) if Arc::ptr_eq(a, agent) || **a == **agent => {
                        v.push((day, *ok, *total))
                    }
                    _ => joined.push((Arc::clone(agent), vec![(day, *ok, *total)])),
                }
            }
            if !joined.is_empty() {
                agents.append(&mut joined);
                agents.sort_by(|a, b| a.0.cmp(&b.0));
            }
        }
        Ok(agents.into_iter().collect())
    }
}

/// The columns of an incident an SLA reads.
const COLUMNS: &str = "id, agent_id, ci_id, ci_type, ci_key, rule, priority, first_breach_ms, \
     resolved_ms, reopen_count";

/// Every incident that ended after `horizon` (or has not), read at `incident_changes` `seq`.
fn read_all(
    conn: &Connection,
    strings: &mut Strings,
    horizon: i64,
    seq: i64,
) -> rusqlite::Result<Incidents> {
    let mut out = Incidents {
        seq,
        horizon,
        by_end: BTreeMap::new(),
        end_of: HashMap::new(),
    };
    for inc in read_overlapping(conn, strings, Span::new(horizon, i64::MAX))? {
        out.insert(Arc::new(inc));
    }
    Ok(out)
}

/// The incidents active at some time within `period` (of an agent), with their episodes.
fn read_overlapping(
    conn: &Connection,
    strings: &mut Strings,
    period: Span,
) -> rusqlite::Result<Vec<Incident>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM incidents
         WHERE agent_id IS NOT NULL AND first_breach_ms < ?1
           AND (resolved_ms IS NULL OR resolved_ms > ?2)"
    ))?;
    let mut rows = stmt.query(params![period.end, period.start])?;
    let mut out = Vec::new();
    while let Some(r) = rows.next()? {
        out.push(row(r, strings)?);
    }
    drop(rows);
    for inc in out.iter_mut().filter(|i| i.reopen_count > 0) {
        inc.episodes = episodes(conn, inc)?;
    }
    Ok(out)
}

/// One incident by id (none when it has no agent: an SLA does not count it).
fn read_one(
    conn: &Connection,
    strings: &mut Strings,
    id: i64,
) -> rusqlite::Result<Option<Incident>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM incidents WHERE id = ?1 AND agent_id IS NOT NULL"
    ))?;
    let Some(mut inc) = stmt.query_row([id], |r| row(r, strings)).optional()? else {
        return Ok(None);
    };
    if inc.reopen_count > 0 {
        inc.episodes = episodes(conn, &inc)?;
    }
    Ok(Some(inc))
}

/// An incident from a row of [`COLUMNS`], with the one episode of an incident never reopened.
fn row(r: &rusqlite::Row<'_>, strings: &mut Strings) -> rusqlite::Result<Incident> {
    let first_breach_ms: i64 = r.get(7)?;
    let resolved_ms: Option<i64> = r.get(8)?;
    Ok(Incident {
        id: r.get(0)?,
        agent: strings.get(r.get_ref(1)?.as_str()?),
        ci_id: r.get(2)?,
        ci_type: strings.get(r.get_ref(3)?.as_str()?),
        ci_key: strings.get(r.get_ref(4)?.as_str()?),
        rule: strings.get(r.get_ref(5)?.as_str()?),
        priority: r.get(6)?,
        first_breach_ms,
        resolved_ms,
        reopen_count: r.get(9)?,
        episodes: Box::new([Span::new(first_breach_ms, resolved_ms.unwrap_or(i64::MAX))]),
    })
}

/// The spans a reopened incident was active: each episode from (re)opening to the next
/// resolution; one still active runs to `i64::MAX`.
fn episodes(conn: &Connection, inc: &Incident) -> rusqlite::Result<Box<[Span]>> {
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
        out.push(Span::new(s, inc.resolved_ms.unwrap_or(i64::MAX)));
    }
    Ok(out.into_boxed_slice())
}

/// Reads without a cache: what [`StoreCache::incidents`] gives, from the store alone.
pub(super) fn incidents_uncached(
    conn: &Connection,
    period: Span,
) -> rusqlite::Result<Vec<Arc<Incident>>> {
    let mut strings = Strings::default();
    let mut out: Vec<Arc<Incident>> = read_overlapping(conn, &mut strings, period)?
        .into_iter()
        .map(Arc::new)
        .collect();
    out.sort_unstable_by_key(|i| (i.end_key(), i.id));
    Ok(out)
}

/// Deletes the change log but for its last `keep` entries (a reader further behind reads every
/// incident again).
pub fn prune(conn: &Connection, keep: i64) -> rusqlite::Result<usize> {
    conn.execute(
        "DELETE FROM incident_changes
         WHERE seq <= (SELECT MAX(seq) FROM incident_changes) - ?1",
        [keep],
    )
}
