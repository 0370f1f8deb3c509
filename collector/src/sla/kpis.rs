//! ITSM KPIs over a period (`GET /api/v1/kpis`), from the incidents as stored: counts, MTTA,
//! MTTR, MTBF, the share responded to and resolved within target (`super::targets`), the share
//! reopened, and the backlog open at the period's end by age; overall or by priority, rule,
//! host, SLA (incidents on CIs in its scope) or business service (on CIs related to it).
//!
//! - Counted: incidents created within the period. MTTA: creation → acknowledgement; MTTR:
//!   start (first breach) → resolution, of those acknowledged / resolved (by the end of the
//!   period). MTBF: the period's time outside these incidents / their number.
//! - Within target: of the incidents whose clock stopped (acknowledged or resolved; resolved) or
//!   that missed the target, the share that did not miss it.
//! - Backlog: incidents created before the period's end and not resolved by then, by age then.
//!
//! Recomputed on every call; nothing is cached.

use std::collections::{BTreeMap, HashMap};

use rusqlite::{params, Connection};

use super::spans::{Span, Spans};
use super::Sla;
use crate::cmdb::lookup;
use crate::incidents::scope::{matches, Target};

/// How incidents are grouped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum By {
    All,
    Priority,
    Rule,
    Host,
    Sla,
    Service,
}

impl By {
    pub fn parse(s: &str) -> Result<By, String> {
        Ok(match s {
            "" | "all" => By::All,
            "priority" => By::Priority,
            "rule" => By::Rule,
            "host" => By::Host,
            "sla" => By::Sla,
            "service" => By::Service,
            _ => {
                return Err(format!(
                    "invalid by {s:?}: expected priority, rule, host, sla or service"
                ))
            }
        })
    }
}

/// The backlog's age buckets: under 1 h, 1 h – 1 d, 1 d – 7 d, older.
pub const BACKLOG_BUCKETS: [(&str, i64); 4] = [
    ("lt_1h", 3_600_000),
    ("lt_1d", 86_400_000),
    ("lt_7d", 7 * 86_400_000),
    ("older", i64::MAX),
];

/// The KPIs of one group.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Kpis {
    pub key: String,
    pub incidents: u64,
    pub acknowledged: u64,
    pub resolved: u64,
    pub reopened: u64,
    pub mtta_ms: Option<f64>,
    pub mttr_ms: Option<f64>,
    pub mtbf_ms: Option<f64>,
    /// `None` when no incident's response (resolution) was decided.
    pub responded_within_target: Option<f64>,
    pub resolved_within_target: Option<f64>,
    pub response_breaches: u64,
    pub resolution_breaches: u64,
    pub reopened_ratio: Option<f64>,
    /// Open at the period's end, per [`BACKLOG_BUCKETS`].
    pub backlog: [u64; 4],
}

struct Row {
    agent: Option<String>,
    hostname: Option<String>,
    ci_id: Option<i64>,
    ci_type: String,
    rule: String,
    priority: u8,
    started_ms: i64,
    created_ms: i64,
    acknowledged_ms: Option<i64>,
    resolved_ms: Option<i64>,
    reopen_count: i64,
    response_level: u8,
    resolution_level: u8,
}

/// The KPIs over `period` grouped `by`; groups sorted by key. `slas` are the configured ones.
pub fn kpis(conn: &Connection, period: Span, by: By, slas: &[Sla]) -> rusqlite::Result<Vec<Kpis>> {
    let mut stmt = conn.prepare_cached(
        "SELECT i.agent_id, a.hostname, i.ci_id, i.ci_type, i.rule, i.priority, i.started_ms,
                i.created_ms, i.acknowledged_ms, i.resolved_ms, i.reopen_count,
                i.response_level, i.resolution_level
         FROM incidents i LEFT JOIN agents a ON a.id = i.agent_id
         WHERE i.created_ms < ?2
           AND (i.created_ms >= ?1 OR i.resolved_ms IS NULL OR i.resolved_ms > ?2)",
    )?;
    let rows = stmt
        .query_map(params![period.start, period.end], |r| {
            Ok(Row {
                agent: r.get(0)?,
                hostname: r.get(1)?,
                ci_id: r.get(2)?,
                ci_type: r.get(3)?,
                rule: r.get(4)?,
                priority: r.get(5)?,
                started_ms: r.get(6)?,
                created_ms: r.get(7)?,
                acknowledged_ms: r.get(8)?,
                resolved_ms: r.get(9)?,
                reopen_count: r.get(10)?,
                response_level: r.get(11)?,
                resolution_level: r.get(12)?,
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;

    // Which groups each incident is in.
    let hosts = lookup::hosts(conn)?;
    let tags: HashMap<&str, &BTreeMap<String, String>> = hosts
        .iter()
        .map(|h| (h.agent_id.as_str(), &h.tags))
        .collect();
    let services = match by {
        By::Service => lookup::services(conn)?,
        By::Sla if slas.iter().any(|s| s.service.is_some()) => lookup::services(conn)?,
        _ => BTreeMap::new(),
    };
    let empty = BTreeMap::new();
    let mut groups: BTreeMap<String, Vec<&Row>> = BTreeMap::new();
    for row in &rows {
        let keys: Vec<String> = match by {
            By::All => vec!["all".into()],
            By::Priority => vec![format!("P{}", row.priority)],
            By::Rule => vec![row.rule.clone()],
            By::Host => vec![row
                .hostname
                .clone()
                .or_else(|| row.agent.clone())
                .unwrap_or_else(|| "(none)".into())],
            By::Sla => {
                let target = Target {
                    hostname: row.hostname.as_deref().unwrap_or(""),
                    tags: row
                        .agent
                        .as_deref()
                        .and_then(|a| tags.get(a).copied())
                        .unwrap_or(&empty),
                    ci_type: &row.ci_type,
                    ci_id: row.ci_id,
                };
                slas.iter()
                    .filter(|s| row.agent.is_some() && matches(&s.scope, &target))
                    .filter(|s| {
                        s.service.as_ref().is_none_or(|name| {
                            services
                                .get(name)
                                .is_some_and(|m| m.contains(row.agent.as_deref(), row.ci_id))
                        })
                    })
                    .map(|s| s.name.clone())
                    .collect()
            }
            By::Service => services
                .iter()
                .filter(|(_, m)| m.contains(row.agent.as_deref(), row.ci_id))
                .map(|(name, _)| name.clone())
                .collect(),
        };
        for k in keys {
            groups.entry(k).or_default().push(row);
        }
    }
    // Every SLA or service is listed, with or without incidents.
    match by {
        By::Sla => {
            for s in slas {
                groups.entry(s.name.clone()).or_default();
            }
        }
        By::Service => {
            for name in services.keys() {
                groups.entry(name.clone()).or_default();
            }
        }
        By::All => {
            groups.entry("all".into()).or_default();
        }
        _ => {}
    }
    Ok(groups
        .into_iter()
        .map(|(key, rows)| group(key, &rows, period))
        .collect())
}

fn mean(v: &[i64]) -> Option<f64> {
    (!v.is_empty()).then(|| v.iter().map(|&x| x as f64).sum::<f64>() / v.len() as f64)
}

fn share(good: u64, all: u64) -> Option<f64> {
    (all > 0).then(|| good as f64 / all as f64)
}

fn group(key: String, rows: &[&Row], period: Span) -> Kpis {
    let end = period.end;
    let mut k = Kpis {
        key,
        ..Kpis::default()
    };
    let (mut tta, mut ttr, mut down) = (Vec::new(), Vec::new(), Vec::new());
    let (mut resp_decided, mut resp_ok, mut res_decided, mut res_ok) = (0, 0, 0, 0);
    for r in rows {
        // Open at the end of the period: the backlog.
        if r.resolved_ms.is_none_or(|t| t > end) {
            let age = end.saturating_sub(r.created_ms);
            if let Some(i) = BACKLOG_BUCKETS.iter().position(|&(_, lim)| age < lim) {
                k.backlog[i] += 1;
            }
        }
        down.push(Span::new(
            r.started_ms.max(period.start),
            r.resolved_ms.unwrap_or(end).min(end),
        ));
        if r.created_ms < period.start {
            continue;
        }
        k.incidents += 1;
        if r.reopen_count > 0 {
            k.reopened += 1;
        }
        let acked = r.acknowledged_ms.filter(|&t| t <= end);
        let resolved = r.resolved_ms.filter(|&t| t <= end);
        if let Some(a) = acked {
            k.acknowledged += 1;
            tta.push(a.saturating_sub(r.created_ms).max(0));
        }
        if let Some(t) = resolved {
            k.resolved += 1;
            ttr.push(t.saturating_sub(r.started_ms).max(0));
        }
        let resp_missed = r.response_level >= 100;
        if acked.is_some() || resolved.is_some() || resp_missed {
            resp_decided += 1;
            resp_ok += u64::from(!resp_missed);
        }
        let res_missed = r.resolution_level >= 100;
        if resolved.is_some() || res_missed {
            res_decided += 1;
            res_ok += u64::from(!res_missed);
        }
        k.response_breaches += u64::from(resp_missed);
        k.resolution_breaches += u64::from(res_missed);
    }
    k.mtta_ms = mean(&tta);
    k.mttr_ms = mean(&ttr);
    let up = period.len() - Spans::from_unsorted(down).total();
    k.mtbf_ms = (k.incidents > 0).then(|| up.max(0) as f64 / k.incidents as f64);
    k.responded_within_target = share(resp_ok, resp_decided);
    k.resolved_within_target = share(res_ok, res_decided);
    k.reopened_ratio = share(k.reopened, k.incidents);
    k
}
