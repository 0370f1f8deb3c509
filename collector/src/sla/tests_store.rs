//! SLA reports against a real store: CIs from the CMDB tables, incidents through the
//! lifecycle (opened, resolved, reopened), maintenance windows added after the fact.

use std::collections::BTreeMap;

use rusqlite::{params, Connection};

use super::*;
use crate::incidents::lifecycle::Lifecycle;
use crate::incidents::records::{Opened, Opening, Origin};
use crate::incidents::rule::Level;

const MIN: i64 = 60_000;
const HOUR: i64 = 60 * MIN;
/// 2026-11-02T00:00:00Z, a Monday.
const T0: i64 = 1_793_577_600_000;

fn db() -> (tempfile::TempDir, crate::store::Db) {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = crate::store::Db::open(dir.path()).expect("db");
    (dir, db)
}

/// An enrolled agent whose host CI (tag role=`role`) was first seen at `since`.
fn host(c: &Connection, agent: &str, role: &str, since: i64) -> i64 {
    c.execute(
        "INSERT INTO agents (id, hostname, version, cert_pin, enrolled_at_ms) VALUES (?1, ?1, '0', 'pin', ?2)",
        params![agent, since],
    )
    .expect("agent");
    c.execute(
        "INSERT INTO cis (agent_id, type, key, name, attrs, source, first_seen_ms, last_seen_ms)
         VALUES (?1, 'host', 'host', ?1, ?2, 'discovery', ?3, ?3)",
        params![agent, format!(r#"{{"tags":{{"role":"{role}"}}}}"#), since],
    )
    .expect("host CI");
    let ci = c.last_insert_rowid();
    // It sends data from then on (the ingest writer keeps these stretches; see
    // `coverage_is_the_time_the_agent_sent_data` for gaps).
    c.execute(
        "INSERT INTO agent_data VALUES (?1, ?2, ?3)",
        params![agent, since, T0 + 1_000 * 86_400_000],
    )
    .expect("data");
    ci
}

/// Opens (at `first`) and, with `until`, resolves an incident of `rule` on the host CI.
fn incident(
    c: &Connection,
    agent: &str,
    ci: i64,
    rule: &str,
    urgency: Level,
    first: i64,
    until: Option<i64>,
) -> i64 {
    incident_on(
        c,
        agent,
        (Some(ci), "host", "host"),
        rule,
        urgency,
        first,
        until,
    )
}

/// A P2 `check-down` incident on check `check` of `agent` (not a CMDB item: no CI id).
fn check_down(c: &Connection, agent: &str, check: &str, first: i64, until: Option<i64>) -> i64 {
    let unit = (None, "check", check);
    incident_on(c, agent, unit, "check-down", Level::High, first, until)
}

/// [`incident`] on the unit `(CI id, type, key)`.
fn incident_on(
    c: &Connection,
    agent: &str,
    (ci_id, ci_type, ci_key): (Option<i64>, &str, &str),
    rule: &str,
    urgency: Level,
    first: i64,
    until: Option<i64>,
) -> i64 {
    let labels = BTreeMap::new();
    let key = format!("{rule}|{agent}|{ci_type}|{ci_key}");
    let o = Opening {
        dedup_key: &key,
        rule,
        origin: Origin::Rule,
        agent_id: Some(agent),
        ci_id,
        ci_type,
        ci_key,
        title: "t",
        impact: Level::High,
        urgency,
        metric: Some("up"),
        op: Some("<"),
        threshold: Some(1.0),
        value: Some(0.0),
        peak: Some(0.0),
        first_breach_ms: first,
        // The incident opens a minute after the first breach (`for`): downtime still counts
        // from the first breach.
        at_ms: first + MIN,
        labels: &labels,
        flapping: false,
        suppression: None,
        probable_cause_id: None,
    };
    let (opened, _) = Lifecycle::new(c, &[], first + MIN)
        .open(&o, HOUR, None)
        .expect("open");
    let id = match opened {
        Opened::New { id, .. } | Opened::Reopened { id, .. } => id,
        other => panic!("not opened: {other:?}"),
    };
    if let Some(t) = until {
        Lifecycle::new(c, &[], t)
            .resolve(id, t, Some(1.0), "recovered", true)
            .expect("resolve");
    }
    id
}

/// A P1 `host-unreachable` incident on the host CI from `first`, resolved at `until`.
fn down(c: &Connection, agent: &str, ci: i64, first: i64, until: Option<i64>) -> i64 {
    incident(c, agent, ci, "host-unreachable", Level::High, first, until)
}

fn sla(text: &str) -> Sla {
    let c = crate::config::from_str(
        "c.toml",
        &format!("data_dir = \"/x\"\n[[sla]]\nname = \"s\"\n{text}"),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    c.slas.into_iter().next().expect("one SLA")
}

#[test]
fn availability_follows_incidents_in_scope_from_their_first_breach() {
    let (_dir, db) = db();
    let c = db.conn();
    let web = host(c, "web1", "web", T0 - HOUR);
    let db1 = host(c, "db1", "db", T0 - HOUR);
    let outage = down(c, "web1", web, T0 + 2 * HOUR, Some(T0 + 3 * HOUR));
    // Out of scope (role=db), and a P4 rule down_when does not name: neither counts.
    down(c, "db1", db1, T0, Some(T0 + 5 * HOUR));
    incident(
        c,
        "web1",
        web,
        "cpu-busy",
        Level::Low,
        T0 + 4 * HOUR,
        Some(T0 + 5 * HOUR),
    );
    let s = sla("target = 0.99\n[sla.scope]\ntag = \"role=web\"\n");
    let r = report(c, &s, Span::new(T0, T0 + 10 * HOUR), T0 + 10 * HOUR).expect("report");
    assert_eq!(r.experienced.down_ms, HOUR as f64);
    assert_eq!(r.experienced.availability, Some(0.9));
    assert_eq!(r.contractual, r.experienced, "no schedule, no maintenance");
    assert_eq!(
        r.experienced.outages,
        vec![Outage {
            span: Span::new(T0 + 2 * HOUR, T0 + 3 * HOUR),
            incidents: vec![outage]
        }]
    );
    assert!((r.budget_ms - 0.01 * 10.0 * HOUR as f64).abs() < 1e-6);
    let left = r.budget_remaining_ratio().expect("budget");
    assert!((left + 9.0).abs() < 1e-9, "spent ten budgets: {left}");
}

#[test]
fn a_maintenance_window_added_afterwards_changes_the_contractual_figure_only() {
    let (_dir, db) = db();
    let c = db.conn();
    let web = host(c, "web1", "web", T0 - HOUR);
    down(c, "web1", web, T0 + 2 * HOUR, Some(T0 + 3 * HOUR));
    let s = sla("target = 0.99\n");
    let period = Span::new(T0, T0 + 10 * HOUR);
    let before = report(c, &s, period, T0 + 20 * HOUR).expect("before");
    assert_eq!(before.contractual.down_ms, HOUR as f64);
    // Recomputed, never cached: the window added now covers the outage's first half hour.
    crate::incidents::maintenance::create(
        c,
        "late",
        &crate::incidents::scope::Scope::default(),
        T0 + 2 * HOUR,
        30 * MIN,
        None,
        T0 + 20 * HOUR,
    )
    .expect("window");
    let after = report(c, &s, period, T0 + 20 * HOUR).expect("after");
    assert_eq!(after.contractual.down_ms, (30 * MIN) as f64);
    assert_eq!(after.contractual.excluded_ms, 30 * MIN);
    assert_eq!(
        after.experienced, before.experienced,
        "the customer saw the whole hour"
    );
}

#[test]
fn a_reopened_incident_is_down_only_in_its_episodes_and_an_open_one_runs_to_now() {
    let (_dir, db) = db();
    let c = db.conn();
    let web = host(c, "web1", "web", T0 - HOUR);
    down(c, "web1", web, T0 + HOUR, Some(T0 + 2 * HOUR));
    // The same key breaches again within the reopen window: the incident reopens.
    let id = down(c, "web1", web, T0 + 2 * HOUR + 10 * MIN, None);
    let reopens: i64 = c
        .query_row(
            "SELECT reopen_count FROM incidents WHERE id = ?1",
            [id],
            |r| r.get(0),
        )
        .expect("row");
    assert_eq!(reopens, 1, "the second breach reopened the first incident");
    let s = sla("target = 0.99\n");
    let now = T0 + 4 * HOUR;
    let r = report(c, &s, Span::new(T0, T0 + 10 * HOUR), now).expect("report");
    // 1 h, then from the second breach (02:10; reopened a minute later, after `for`) to now
    // (04:00): a reopened episode, like a new incident, is down from its first breach.
    assert_eq!(r.measured, Span::new(T0, now));
    assert_eq!(r.experienced.down_ms, (HOUR + 110 * MIN) as f64);
    assert_eq!(r.experienced.outages.len(), 2);
}

#[test]
fn service_hours_in_a_zone_and_coverage_before_enrollment() {
    let (_dir, db) = db();
    let c = db.conn();
    // Enrolled on Monday 12:00 UTC; down Tuesday 06:00-08:00 UTC (07:00-09:00 in Berlin).
    let web = host(c, "web1", "web", T0 + 12 * HOUR);
    down(c, "web1", web, T0 + 30 * HOUR, Some(T0 + 32 * HOUR));
    let s = sla(
        "target = 0.999\ntimezone = \"Europe/Berlin\"\n[sla.schedule]\ndays = [\"mon\", \"tue\"]\nhours = \"08:00-18:00\"\n",
    );
    let r = report(c, &s, Span::new(T0, T0 + 7 * 24 * HOUR), T0 + 7 * 24 * HOUR).expect("report");
    // Service hours: Mon and Tue 07:00-17:00 UTC = 20 h; Monday before 12:00 UTC is unknown (5 h).
    assert_eq!(r.contractual.scheduled_ms, 20 * HOUR);
    assert_eq!(r.contractual.unknown_ms, 5 * HOUR);
    assert_eq!(
        r.contractual.down_ms, HOUR as f64,
        "only 08:00-09:00 Berlin is in service hours"
    );
    assert_eq!(r.contractual.coverage, Some(0.75));
    assert_eq!(r.experienced.down_ms, (2 * HOUR) as f64);
    assert_eq!(r.experienced.unknown_ms, 12 * HOUR);
}

#[test]
fn a_ci_discovered_later_does_not_make_the_time_before_unknown() {
    let (_dir, db) = db();
    let c = db.conn();
    host(c, "web1", "web", T0 - HOUR);
    c.execute(
        "INSERT INTO cis (agent_id, type, key, name, source, first_seen_ms, last_seen_ms)
         VALUES ('web1', 'package', 'nginx', 'nginx', 'discovery', ?1, ?1)",
        [T0 + 5 * HOUR],
    )
    .expect("package CI");
    let s = sla("target = 0.99\n");
    let r = report(c, &s, Span::new(T0, T0 + 10 * HOUR), T0 + 10 * HOUR).expect("report");
    assert_eq!(r.experienced.unknown_ms, 0);
    assert_eq!(r.experienced.availability, Some(1.0));
    // Before the host was first seen, nothing was known.
    let early = report(c, &s, Span::new(T0 - 2 * HOUR, T0), T0 + 10 * HOUR).expect("report");
    assert_eq!(early.experienced.unknown_ms, HOUR);
    assert_eq!(early.experienced.coverage, Some(0.5));
}

#[test]
fn metrics_show_the_figures_and_count_each_outage_once() {
    let (_dir, db) = db();
    let c = db.conn();
    let now = T0 + 10 * HOUR;
    let web = host(c, "web1", "web", T0 - 10 * 24 * HOUR);
    down(c, "web1", web, now - 2 * HOUR, Some(now - HOUR));
    let s = sla("target = 0.99\nwindow = \"7d\"\n");
    let registry = prometheus::Registry::new();
    let m = metrics::SlaMetrics::new(&registry).expect("metrics");
    let slas = [s];
    m.refresh(c, &slas, now).expect("refresh");
    m.refresh(c, &slas, now).expect("refresh again");
    let text = prometheus::TextEncoder::new()
        .encode_to_string(&registry.gather())
        .expect("encode");
    let value = |series: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
            .unwrap_or_else(|| panic!("no {series} in\n{text}"))
    };
    let want = 1.0 - 1.0 / (7.0 * 24.0);
    let got = value(r#"vigil_sla_availability_ratio{kind="contractual",sla="s",window="7d"}"#);
    assert!((got - want).abs() < 1e-12, "{got}");
    assert_eq!(value(r#"vigil_sla_target_ratio{sla="s"}"#), 0.99);
    assert_eq!(
        value(r#"vigil_sla_outages_total{sla="s"}"#),
        1.0,
        "counted once over two refreshes"
    );
    // The last 6 h were 1/6 down: a burn rate of (1/6) / 0.01.
    let burn = value(r#"vigil_sla_burn_rate{sla="s",window="6h"}"#);
    assert!((burn - 100.0 / 6.0).abs() < 1e-9, "{burn}");
    assert_eq!(value(r#"vigil_sla_burn_rate{sla="s",window="30m"}"#), 0.0);
    assert_eq!(
        value(r#"vigil_sla_data_coverage_ratio{sla="s",window="7d"}"#),
        1.0
    );
    let left = value(r#"vigil_sla_error_budget_remaining_ratio{sla="s",window="7d"}"#);
    assert!(
        (left - (1.0 - 1.0 / (0.01 * 7.0 * 24.0))).abs() < 1e-9,
        "{left}"
    );
}

#[test]
fn a_business_service_scopes_its_sla_to_the_hosts_related_to_it() {
    let (_dir, db) = db();
    let c = db.conn();
    let web = host(c, "web1", "web", T0 - HOUR);
    let other = host(c, "web2", "web", T0 - HOUR);
    c.execute(
        "INSERT INTO cis (agent_id, type, key, name, source, first_seen_ms, last_seen_ms)
         VALUES (NULL, 'business_service', 'shop', 'shop', 'api', ?1, ?1)",
        params![T0 - HOUR],
    )
    .expect("service");
    let shop = c.last_insert_rowid();
    c.execute(
        "INSERT INTO relations (from_ci, kind, to_ci, source, first_seen_ms)
         VALUES (?1, 'depends_on', ?2, 'api', ?3)",
        params![shop, web, T0 - HOUR],
    )
    .expect("relation");
    down(c, "web1", web, T0 + HOUR, Some(T0 + 2 * HOUR));
    down(c, "web2", other, T0 + 3 * HOUR, Some(T0 + 5 * HOUR));
    let period = Span::new(T0, T0 + 10 * HOUR);
    let s = sla("target = 0.99\nservice = \"shop\"\n");
    let r = report(c, &s, period, T0 + 10 * HOUR).expect("report");
    // Only web1 is part of the shop: web2's two hours do not count.
    assert_eq!(r.experienced.down_ms, HOUR as f64);
    // A service that does not exist (yet) has no CIs: nothing measured.
    let none = sla("target = 0.99\nservice = \"nope\"\n");
    let r = report(c, &none, period, T0 + 10 * HOUR).expect("report");
    assert_eq!(r.experienced.availability, None);
}

#[test]
fn kpis_count_mtta_mttr_mtbf_targets_and_backlog_by_group() {
    use super::kpis::{kpis, By};
    let (_dir, db) = db();
    let c = db.conn();
    let web = host(c, "web1", "web", T0 - HOUR);
    let db1 = host(c, "db1", "db", T0 - HOUR);
    // P1 on web1, 01:00-02:00 (created 01:01); P3 on web1 from 03:00, acknowledged 10 min after
    // it was created, still open; P1 on db1 04:00-04:30, resolved past its target.
    down(c, "web1", web, T0 + HOUR, Some(T0 + 2 * HOUR));
    let busy = incident(c, "web1", web, "cpu-busy", Level::Low, T0 + 3 * HOUR, None);
    Lifecycle::new(c, &[], T0 + 3 * HOUR + 11 * MIN)
        .by("api:alice")
        .operator(
            busy,
            &crate::incidents::records::Request::Acknowledge { note: None },
        )
        .expect("ack");
    // Before the period and resolved before it: not counted anywhere.
    down(c, "db1", db1, T0 - 50 * MIN, Some(T0 - 40 * MIN));
    let late = down(c, "db1", db1, T0 + 4 * HOUR, Some(T0 + 4 * HOUR + 30 * MIN));
    c.execute(
        "UPDATE incidents SET resolution_level = 100 WHERE id = ?1",
        [late],
    )
    .expect("breach");

    let period = Span::new(T0, T0 + 10 * HOUR);
    let all = kpis(c, period, By::All, &[]).expect("kpis");
    assert_eq!(all.len(), 1);
    let k = &all[0];
    assert_eq!(
        (k.incidents, k.acknowledged, k.resolved, k.reopened),
        (3, 1, 2, 0)
    );
    assert_eq!(k.mtta_ms, Some((10 * MIN) as f64));
    // Start (first breach) to resolution: 1 h and 30 min.
    assert_eq!(k.mttr_ms, Some((45 * MIN) as f64));
    // Outside incidents: 00:00-01:00 and 02:00-03:00 (the P3 runs to the end): 2 h over 3.
    assert_eq!(k.mtbf_ms, Some((40 * MIN) as f64));
    assert_eq!(k.resolved_within_target, Some(0.5));
    assert_eq!(k.responded_within_target, Some(1.0));
    assert_eq!((k.response_breaches, k.resolution_breaches), (0, 1));
    // The P3 is open at 10:00, created at 03:01: in the 1 h - 1 d bucket.
    assert_eq!(k.backlog, [0, 1, 0, 0]);
    assert_eq!(k.reopened_ratio, Some(0.0));

    let by_priority = kpis(c, period, By::Priority, &[]).expect("kpis");
    let keys: Vec<(&str, u64)> = by_priority
        .iter()
        .map(|k| (k.key.as_str(), k.incidents))
        .collect();
    assert_eq!(keys, [("P1", 2), ("P3", 1)]);
    let by_host = kpis(c, period, By::Host, &[]).expect("kpis");
    let keys: Vec<(&str, u64)> = by_host
        .iter()
        .map(|k| (k.key.as_str(), k.incidents))
        .collect();
    assert_eq!(keys, [("db1", 1), ("web1", 2)]);
    let slas = vec![sla("target = 0.99\n[sla.scope]\ntag = \"role=web\"\n"), {
        let mut d = sla("target = 0.99\n[sla.scope]\ntag = \"role=db\"\n");
        d.name = "t".into();
        d
    }];
    let by_sla = kpis(c, period, By::Sla, &slas).expect("kpis");
    let keys: Vec<(&str, u64)> = by_sla
        .iter()
        .map(|k| (k.key.as_str(), k.incidents))
        .collect();
    assert_eq!(keys, [("s", 2), ("t", 1)]);
    // No business service in the CMDB: no groups.
    assert!(kpis(c, period, By::Service, &[]).expect("kpis").is_empty());
}

/// Check executions counted by the real ingest writer as batches are stored (a replayed batch
/// once), reported per SLA scope, whole days exactly and a partial day pro rata.
#[tokio::test]
async fn occurrences_count_each_stored_check_execution_once() {
    use crate::sla::occurrences::{tally, DAY_MS};
    use vigil_shared::proto::Sample;

    let (dir, db) = db();
    host(db.conn(), "web1", "web", T0 - HOUR);
    host(db.conn(), "db1", "db", T0 - HOUR);
    let (writer, join) = crate::store::Writer::spawn(dir.path()).expect("writer");
    let up = |ts_ms: i64, check: &str, value: f64| Sample {
        ts_ms,
        name: "check_up".into(),
        labels: vec![("check".into(), check.into())],
        value,
    };
    // web1: day 1, 8 runs of `http`, 6 passed, and 2 runs of `tls`, both passed; day 2, 10 runs,
    // 1 failed. db1 (out of scope): 5 failures.
    let mut day1: Vec<Sample> = (0..8)
        .map(|i| up(T0 + i * HOUR, "http", if i < 6 { 1.0 } else { 0.0 }))
        .collect();
    day1.extend([up(T0, "tls", 1.0), up(T0 + HOUR, "tls", 1.0)]);
    let day2: Vec<Sample> = (0..10)
        .map(|i| {
            up(
                T0 + DAY_MS + i * HOUR,
                "http",
                if i == 0 { 0.0 } else { 1.0 },
            )
        })
        .collect();
    let db_runs: Vec<Sample> = (0..5).map(|i| up(T0 + i * MIN, "pg", 0.0)).collect();
    // One more run of `http` on day 1, in a later batch: added to that day's row.
    let more = vec![up(T0 + 9 * HOUR, "http", 1.0)];
    for (agent, seq, samples) in [
        ("web1", 1, &day1),
        ("web1", 2, &day2),
        ("web1", 2, &day2), // replayed after a lost ack: a duplicate, not counted again
        ("db1", 1, &db_runs),
        ("web1", 3, &more),
    ] {
        let n = u32::try_from(samples.len()).expect("len");
        writer
            .submit_batch(crate::store::NewBatch {
                agent_id: agent.into(),
                seq,
                first_ts_ms: T0,
                last_ts_ms: T0,
                samples: n,
                payload: vec![0],
                checks: tally(samples),
                interval_ms: 0,
            })
            .await
            .expect("stored");
    }
    join.shutdown().expect("writer stops");

    let c = db.conn();
    let s = sla("target = 0.99\n[sla.scope]\ntag = \"role=web\"\n");
    let now = T0 + 3 * DAY_MS;
    let whole = report(c, &s, Span::new(T0, T0 + 2 * DAY_MS), now).expect("report");
    assert_eq!((whole.occurrences.ok, whole.occurrences.total), (18, 21));
    // An hour of day 2: its whole day counts, and the report says so.
    let part = report(
        c,
        &s,
        Span::new(T0 + DAY_MS + HOUR, T0 + DAY_MS + 2 * HOUR),
        now,
    )
    .expect("report");
    assert_eq!((part.occurrences.ok, part.occurrences.total), (9, 10));
    assert_eq!(
        part.occurrences.days,
        Span::new(T0 + DAY_MS, T0 + 2 * DAY_MS)
    );
    // The db SLA sees only db1's failures; one with no host in scope sees nothing.
    let dbs = sla("target = 0.99\n[sla.scope]\ntag = \"role=db\"\n");
    let r = report(c, &dbs, Span::new(T0, T0 + DAY_MS), now).expect("report");
    assert_eq!((r.occurrences.ok, r.occurrences.total), (0, 5));
    let none = sla("target = 0.99\n[sla.scope]\ntag = \"role=none\"\n");
    let r = report(c, &none, Span::new(T0, T0 + DAY_MS), now).expect("report");
    assert_eq!(r.occurrences.ratio(), None);
    // Pruned once no report reaches the days any more.
    assert_eq!(
        crate::sla::occurrences::prune(c, T0 + 500 * DAY_MS).expect("prune"),
        4
    );
}

/// Coverage follows the stretches the agent sent data for, as the real ingest writer records
/// them: a gap between batches (a stopped agent, a collector that was down) is unknown, and
/// data replayed later for that gap makes it known again.
#[tokio::test]
async fn coverage_is_the_time_the_agent_sent_data() {
    let (dir, db) = db();
    host(db.conn(), "web1", "web", T0 - HOUR);
    // This host's data comes only from the writer below, not from the helper's stretch.
    db.conn()
        .execute("DELETE FROM agent_data", [])
        .expect("clear");
    let (writer, join) = crate::store::Writer::spawn(dir.path()).expect("writer");
    let batch = |seq: u64, ts: i64| crate::store::NewBatch {
        agent_id: "web1".into(),
        seq,
        first_ts_ms: ts,
        last_ts_ms: ts,
        samples: 1,
        payload: vec![0],
        checks: Vec::new(),
        interval_ms: MIN as u64,
    };
    // Every minute for the first hour, then silence for an hour, then every minute again.
    let mut seq = 0;
    for ts in (0..60)
        .map(|i| T0 + i * MIN)
        .chain((120..180).map(|i| T0 + i * MIN))
    {
        seq += 1;
        writer.submit_batch(batch(seq, ts)).await.expect("stored");
    }
    let s = sla("target = 0.99\n");
    let period = Span::new(T0, T0 + 3 * HOUR);
    let unknown = |c: &Connection| {
        report(c, &s, period, T0 + 3 * HOUR)
            .expect("report")
            .experienced
            .unknown_ms
    };
    // The first stretch runs two intervals past its last batch (T0 + 61 min): 59 min unknown.
    assert_eq!(unknown(db.conn()), 59 * MIN);
    // The silent hour's data arrives late (spooled, replayed): known after all.
    for ts in (60..120).map(|i| T0 + i * MIN) {
        seq += 1;
        writer.submit_batch(batch(seq, ts)).await.expect("stored");
    }
    join.shutdown().expect("writer stops");
    assert_eq!(unknown(db.conn()), 0);
    let rows: i64 = db
        .conn()
        .query_row("SELECT COUNT(*) FROM agent_data", [], |r| r.get(0))
        .expect("rows");
    assert!(rows <= 3, "one row per stretch, not per batch: {rows}");
}

/// A check is not a CMDB item: its incidents name it by key, without a CI id. Each check of a
/// host in scope is a unit of the service, known as long as its host; the checks of a host out
/// of scope are not.
#[test]
fn check_incidents_count_as_units_of_hosts_in_scope() {
    let (_dir, db) = db();
    let c = db.conn();
    host(c, "web1", "web", T0 - HOUR);
    host(c, "db1", "db", T0 - HOUR);
    let http = check_down(c, "web1", "http", T0 + HOUR, Some(T0 + 2 * HOUR));
    let dns = check_down(c, "web1", "dns", T0 + HOUR + 30 * MIN, Some(T0 + 150 * MIN));
    check_down(c, "db1", "http", T0, Some(T0 + 5 * HOUR));
    let s = sla("target = 0.99\n[sla.scope]\ntag = \"role=web\"\n");
    let now = T0 + 6 * HOUR;
    let r = report(c, &s, Span::new(T0, now), now).expect("report");
    // Down while either check of web1 is: 1 h 30 min, one outage of both incidents.
    assert_eq!(r.experienced.down_ms, (90 * MIN) as f64);
    assert_eq!(r.experienced.outages.len(), 1);
    assert_eq!(r.experienced.outages[0].incidents, [http, dns]);
    // Host CIs only: the checks are not in scope.
    let hosts = sla("target = 0.99\n[sla.scope]\ntag = \"role=web\"\ntype = \"host\"\n");
    let r = report(c, &hosts, Span::new(T0, now), now).expect("report");
    assert_eq!(r.experienced.down_ms, 0.0);
}

/// A read through the cache (`super::cache`, warm from the read before) gives what a read of
/// everything gives, after each kind of write an SLA figure depends on: an incident opened,
/// resolved, reopened, one opened late in the past, check executions added to a past day, the
/// change log pruned behind the cache, days pruned; and a read reaching behind what the cache
/// let go of. Each step moves the figures, so a stale cache would differ.
#[test]
fn the_cache_reads_what_the_store_holds() {
    use crate::sla::occurrences::DAY_MS;

    let (_dir, db) = db();
    let c = db.conn();
    let web1 = host(c, "web1", "web", T0 - HOUR);
    let web2 = host(c, "web2", "web", T0 - HOUR);
    let s = sla("target = 0.99\n[sla.scope]\ntag = \"role=web\"\n");
    let now = T0 + 3 * DAY_MS;
    let period = Span::new(T0, now);
    let read = |snapshot: load::Snapshot| reports_from(&snapshot, &s, &[period], now).remove(0);
    let mut last = read(load::Snapshot::read(c, period, now).expect("read"));
    let mut step = |what: &str, change: &dyn Fn()| {
        change();
        let cached = read(load::Snapshot::read(c, period, now).expect("cached read"));
        let fresh = read(load::Snapshot::read_uncached(c, period, now).expect("read"));
        assert_eq!(cached, fresh, "{what}");
        assert_ne!(cached, last, "{what}: the figures move");
        last = cached;
    };
    let id = std::cell::Cell::new(0);
    step("an incident opens", &|| {
        id.set(down(c, "web1", web1, T0 + HOUR, None));
    });
    step("it is resolved", &|| {
        let t = T0 + 2 * HOUR;
        Lifecycle::new(c, &[], t)
            .resolve(id.get(), t, Some(1.0), "recovered", true)
            .expect("resolve");
    });
    step("it reopens and is resolved again", &|| {
        let again = down(
            c,
            "web1",
            web1,
            T0 + 2 * HOUR + 10 * MIN,
            Some(T0 + 3 * HOUR),
        );
        assert_eq!(again, id.get(), "reopened, not new");
    });
    step("late data opens an incident in the past", &|| {
        down(c, "web2", web2, T0 + 10 * HOUR, Some(T0 + 11 * HOUR));
    });
    step("check executions on a past day", &|| {
        c.execute(
            "INSERT INTO check_runs VALUES ('web1', 'http', ?1, 5, 10)",
            [T0],
        )
        .expect("runs");
    });
    step("more of them, a batch replayed late", &|| {
        c.execute(
            "UPDATE check_runs SET ok = ok + 10, total = total + 10 WHERE day_ms = ?1",
            [T0],
        )
        .expect("runs");
    });
    step("check executions of the hosts on different days", &|| {
        for (agent, day) in [
            ("web2", T0 + DAY_MS),
            ("web1", T0 + 2 * DAY_MS),
            ("web2", T0),
        ] {
            c.execute(
                "INSERT INTO check_runs VALUES (?1, 'http', ?2, 3, 4)",
                rusqlite::params![agent, day],
            )
            .expect("runs");
        }
    });
    step("the change log pruned behind the cache", &|| {
        crate::sla::cache::prune(c, 0).expect("prune");
        down(c, "web2", web2, T0 + 20 * HOUR, Some(T0 + 21 * HOUR));
    });
    step("the days pruned", &|| {
        crate::sla::occurrences::prune(c, T0 + 500 * DAY_MS).expect("prune");
    });
    // A read as of a year later lets go of these incidents; a read of the old period then
    // reads them from the store.
    let later = T0 + 500 * DAY_MS;
    let recent = Span::new(later - 30 * DAY_MS, later);
    load::Snapshot::read(c, recent, later).expect("later read");
    let cached = read(load::Snapshot::read(c, period, now).expect("cached read"));
    assert_eq!(cached, last, "behind the cache's horizon");
}
