use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, Ordering};

use rusqlite::params;

use super::*;
use crate::incidents::builtin::{self, HOST_UNREACHABLE};
use crate::incidents::records::{self, State};
use crate::incidents::rule::{Level, Threshold};
use crate::incidents::scope::Scope;
use crate::presence::Policy;
use crate::store::{Db, NewAgent};

/// Three silent intervals make a host down; a clean stop has a 60 s grace.
const POLICY: Policy = Policy {
    down_after_intervals: 3,
    shutdown_grace_ms: 60_000,
};

const T0: i64 = 1_800_000_000_000;

struct Fixture {
    _dir: tempfile::TempDir,
    db: Db,
    now: Arc<AtomicI64>,
    presence: Arc<Presence>,
    /// The current connection of each agent, as the QUIC server keeps it.
    generations: std::collections::HashMap<String, u64>,
    engine: Engine,
}

fn rule(name: &str, metric: &str, threshold: Threshold, clear: f64, ci_type: &str) -> Rule {
    Rule {
        name: name.into(),
        metric: metric.into(),
        threshold,
        clear,
        hold: Duration::ZERO,
        impact: Level::High,
        urgency: Level::Medium,
        scope: Scope {
            ci_type: Some(ci_type.into()),
            ..Scope::default()
        },
        labels: BTreeMap::new(),
    }
}

fn config(windows: Vec<Maintenance>) -> EngineConfig {
    let mut rules: Vec<Rule> = builtin::rules()
        .into_iter()
        .filter(|r| r.name == HOST_UNREACHABLE || r.name == builtin::MEMORY_FULL)
        .map(|mut r| {
            r.hold = Duration::ZERO;
            r
        })
        .collect();
    rules.push(rule(
        "check",
        "check_up",
        Threshold::Below(1.0),
        1.0,
        "check",
    ));
    rules.push(rule(
        "fs",
        "filesystem_used_ratio",
        Threshold::Above(0.9),
        0.85,
        "filesystem",
    ));
    EngineConfig {
        rules,
        flap: FlapParams::default(),
        reopen_within_ms: 3_600_000,
        close_after_ms: 86_400_000,
        webhooks: Arc::new(vec![crate::notify::testing::webhook()]),
        maintenance: windows,
        slas: Vec::new(),
    }
}

fn fixture(windows: Vec<Maintenance>) -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = Db::open(dir.path()).expect("db");
    for (id, host) in [("a1", "web-1"), ("a2", "db-1")] {
        db.register_agent(
            &NewAgent {
                id: id.into(),
                hostname: host.into(),
                version: "test".into(),
                cert_pin: format!("pin-{id}"),
                token_id: "t".into(),
            },
            T0,
        )
        .expect("agent");
    }
    let now = Arc::new(AtomicI64::new(T0));
    let presence = Arc::new(Presence::new(POLICY));
    let engine = start(dir.path(), &now, &presence, windows);
    Fixture {
        _dir: dir,
        db,
        now,
        presence,
        generations: Default::default(),
        engine,
    }
}

fn start(
    dir: &Path,
    now: &Arc<AtomicI64>,
    presence: &Arc<Presence>,
    windows: Vec<Maintenance>,
) -> Engine {
    let conn = crate::store::open_connection(dir).expect("conn");
    let clock_now = now.clone();
    let clock: Clock = Arc::new(move || clock_now.load(Ordering::SeqCst));
    maintenance::sync_config(&conn, &windows, now.load(Ordering::SeqCst)).expect("windows");
    Engine::new(
        conn,
        config(windows),
        IncidentMetrics::new().expect("metrics"),
        Arc::new(|| {}),
        presence.clone(),
        clock,
    )
    .expect("engine")
}

impl Fixture {
    fn at(&self, ms: i64) -> i64 {
        self.now.store(T0 + ms, Ordering::SeqCst);
        T0 + ms
    }

    /// A hello at `ms` (interval 1 s), as the QUIC server reports it.
    fn connect(&mut self, agent: &str, ms: i64) {
        let at = self.at(ms);
        let hostname = if agent == "a1" { "web-1" } else { "db-1" };
        let g = self.presence.connected(agent, hostname, 1_000, at);
        self.generations.insert(agent.to_string(), g);
        self.engine.handle(Input::Connected {
            agent: Arc::from(agent),
            hostname: hostname.into(),
            at_ms: at,
        });
    }

    /// The agent's connection ends at `ms`, after a goodbye or not.
    fn disconnect(&mut self, agent: &str, goodbye: bool, ms: i64) {
        let at = self.at(ms);
        let g = self.generations.get(agent).copied().unwrap_or(0);
        if self.presence.disconnected(agent, g, goodbye, at) {
            self.engine.handle(Input::Disconnected {
                agent: Arc::from(agent),
                at_ms: at,
            });
        }
    }

    fn sample(&mut self, agent: &str, name: &str, label: Option<(&str, &str)>, ms: i64, v: f64) {
        let at = self.at(ms);
        self.presence.heard(agent, at);
        self.engine.handle(Input::Samples {
            agent: Arc::from(agent),
            samples: vec![Sample {
                ts_ms: at,
                name: name.into(),
                labels: label
                    .map(|(k, v)| vec![(k.to_string(), v.to_string())])
                    .unwrap_or_default(),
                value: v,
            }],
            received_ms: at,
            evaluated: None,
        });
    }

    fn tick(&mut self, ms: i64) {
        let at = self.at(ms);
        self.engine.tick(at);
    }

    fn incident(&self, rule: &str, agent: &str) -> records::Incident {
        let (items, _) = records::list(
            self.db.conn(),
            &records::Filter {
                rule: Some(rule.into()),
                host: Some(agent.into()),
                limit: 10,
                ..records::Filter::default()
            },
        )
        .expect("list");
        items
            .into_iter()
            .next()
            .unwrap_or_else(|| panic!("no {rule} incident on {agent}"))
    }

    fn notifications(&self, id: i64) -> Vec<String> {
        crate::notify::testing::events(self.db.conn(), id)
    }
}

#[test]
fn an_unreachable_host_suppresses_its_symptoms_and_recovered_ones_close() {
    let mut f = fixture(Vec::new());
    f.connect("a1", 0);
    f.sample("a1", "check_up", Some(("check", "app")), 100, 0.0);
    let check = f.incident("check", "a1");
    assert_eq!((check.state, check.is_suppressed()), (State::Open, false));
    assert_eq!(f.notifications(check.id), ["opened"]);

    // The connection is lost without a goodbye: the host is unreachable at once.
    f.disconnect("a1", false, 1_000);
    let host = f.incident(HOST_UNREACHABLE, "a1");
    assert_eq!((host.state, host.priority), (State::Open, 1));
    let check = f.incident("check", "a1");
    assert_eq!(
        (check.suppressed.as_deref(), check.parent_id),
        (Some("parent"), Some(host.id))
    );

    // A new symptom while the host is down opens suppressed and does not notify.
    f.sample(
        "a1",
        "filesystem_used_ratio",
        Some(("mountpoint", "/var")),
        1_500,
        0.95,
    );
    let fs = f.incident("fs", "a1");
    assert_eq!(
        (fs.suppressed.as_deref(), fs.parent_id),
        (Some("parent"), Some(host.id))
    );
    assert!(f.notifications(fs.id).is_empty());

    // Back: the host resolves; the check clears within the grace period and closes; the
    // filesystem stays full, so after the grace it stands on its own and is announced.
    f.connect("a1", 2_000);
    f.tick(2_100);
    assert_eq!(f.incident(HOST_UNREACHABLE, "a1").state, State::Resolved);
    f.sample("a1", "check_up", Some(("check", "app")), 2_500, 1.0);
    let check = f.incident("check", "a1");
    assert_eq!(check.state, State::Closed);
    assert_eq!(f.notifications(check.id), ["opened", "resolved"]);
    for ms in [3_000, 5_000, 7_000] {
        f.sample(
            "a1",
            "filesystem_used_ratio",
            Some(("mountpoint", "/var")),
            ms,
            0.96,
        );
    }
    f.tick(7_100);
    let fs = f.incident("fs", "a1");
    assert_eq!((fs.state, fs.is_suppressed()), (State::Open, false));
    assert_eq!(f.notifications(fs.id), ["opened"]);
    assert_eq!(f.notifications(host.id), ["opened", "resolved"]);
}

#[test]
fn a_silent_agent_becomes_unreachable_after_three_intervals() {
    let mut f = fixture(Vec::new());
    f.connect("a1", 0);
    f.sample("a1", "check_up", Some(("check", "app")), 1_000, 1.0);
    f.tick(3_900);
    assert!(records::active(f.db.conn()).expect("active").is_empty());
    f.tick(4_100);
    assert_eq!(f.incident(HOST_UNREACHABLE, "a1").state, State::Open);
}

#[test]
fn maintenance_windows_suppress_matching_breaches_only() {
    let window = Maintenance {
        name: "patch-night".into(),
        scope: Scope {
            host: Some(glob::Pattern::new("db-*").expect("glob")),
            ..Scope::default()
        },
        start_ms: T0 - 1_000,
        duration: Duration::from_secs(3600),
        every: None,
    };
    let mut f = fixture(vec![window]);
    f.connect("a1", 0);
    f.connect("a2", 0);
    f.sample(
        "a2",
        "filesystem_used_ratio",
        Some(("mountpoint", "/")),
        100,
        0.99,
    );
    f.sample(
        "a1",
        "filesystem_used_ratio",
        Some(("mountpoint", "/")),
        100,
        0.99,
    );
    let db = f.incident("fs", "a2");
    assert_eq!(
        (db.suppressed.as_deref(), db.maintenance.as_deref()),
        (Some("maintenance"), Some("patch-night"))
    );
    assert!(f.notifications(db.id).is_empty());
    let web = f.incident("fs", "a1");
    assert!(!web.is_suppressed());
    assert_eq!(f.notifications(web.id), ["opened"]);
}

#[test]
fn a_dependency_down_is_named_the_probable_cause() {
    let mut f = fixture(Vec::new());
    let c = f.db.conn();
    for (agent, ty, key) in [
        ("a1", "host", "host"),
        ("a2", "listening_service", "tcp:5432"),
    ] {
        c.execute(
            "INSERT INTO cis (agent_id, type, key, name, source, first_seen_ms, last_seen_ms)
             VALUES (?1, ?2, ?3, ?3, 'discovery', 0, 0)",
            params![agent, ty, key],
        )
        .expect("ci");
    }
    c.execute(
        "INSERT INTO relations (from_ci, kind, to_ci, source, first_seen_ms)
         SELECT f.id, 'depends_on', t.id, 'wire:a1', 0 FROM cis f, cis t
         WHERE f.agent_id = 'a1' AND t.agent_id = 'a2'",
        [],
    )
    .expect("relation");
    f.connect("a1", 0);
    f.connect("a2", 0);
    f.disconnect("a2", false, 500);
    let db_down = f.incident(HOST_UNREACHABLE, "a2");
    f.sample("a1", "check_up", Some(("check", "orders")), 1_000, 0.0);
    let app = f.incident("check", "a1");
    assert_eq!(app.probable_cause_id, Some(db_down.id));
    assert_eq!(app.parent_id, Some(db_down.id));
    assert!(f.notifications(app.id).is_empty());
}

#[test]
fn api_rules_take_effect_at_once_and_their_incidents_resolve_when_deleted() {
    let mut f = fixture(Vec::new());
    f.connect("a1", 0);
    let body = serde_json::json!({"name": "api-load", "metric": "load1", "above": 4});
    let rule = crate::incidents::rule::rule_from_json(&body).expect("rule");
    crate::incidents::api_rules::create(f.db.conn(), &rule, &body, "api:t", T0).expect("create");
    f.engine.handle(Input::RulesChanged);
    f.sample("a1", "load1", None, 100, 9.0);
    let inc = f.incident("api-load", "a1");
    assert_eq!(inc.state, State::Open);
    // Series of the other rules survive the reload.
    f.sample("a1", "check_up", Some(("check", "app")), 200, 0.0);
    f.engine.handle(Input::RulesChanged);
    f.sample("a1", "check_up", Some(("check", "app")), 300, 1.0);
    assert_eq!(f.incident("check", "a1").state, State::Resolved);

    crate::incidents::api_rules::delete(f.db.conn(), "api-load").expect("delete");
    f.engine.handle(Input::RulesChanged);
    let inc = f.incident("api-load", "a1");
    assert_eq!(
        (inc.state, inc.resolution_code.as_deref()),
        (State::Resolved, Some("rule_deleted"))
    );
    assert_eq!(f.notifications(inc.id), ["opened", "resolved"]);
}

#[test]
fn a_revoked_agent_is_forgotten_and_its_incidents_resolve() {
    let mut f = fixture(Vec::new());
    f.connect("a1", 0);
    f.sample("a1", "check_up", Some(("check", "app")), 100, 0.0);
    assert!(f.db.revoke_agent("a1", T0 + 200).expect("revoke"));
    f.tick(20_000);
    let inc = f.incident("check", "a1");
    assert_eq!(
        (inc.state, inc.resolution_code.as_deref()),
        (State::Resolved, Some("agent_revoked"))
    );
    // Silent from now on, yet never unreachable: it is gone. (a2, which never connected
    // since the start, is: not checked here.)
    f.tick(60_000);
    let active: Vec<(String, String)> = records::active(f.db.conn())
        .expect("active")
        .into_iter()
        .filter(|i| i.agent_id.as_deref() == Some("a1"))
        .map(|i| (i.rule, i.state.to_string()))
        .collect();
    assert!(active.is_empty(), "{active:?}");
}

#[test]
fn a_stale_inventory_opens_an_incident_until_the_host_reports_again() {
    let mut f = fixture(Vec::new());
    let rules: Vec<Rule> = builtin::rules()
        .into_iter()
        .filter(|r| r.name == builtin::INVENTORY_STALE_RULE)
        .collect();
    f.engine.config.rules.extend(rules);
    f.engine.load_rules();
    f.connect("a1", 0);
    f.db.conn()
        .execute(
            "INSERT INTO inventory_state (agent_id, version, ts_ms, reported_ms, stale)
             VALUES ('a1', 1, 0, 0, 1)",
            [],
        )
        .expect("state");
    f.sample("a1", "check_up", Some(("check", "app")), 500, 1.0);
    f.tick(1_000);
    let inc = f.incident(builtin::INVENTORY_STALE_RULE, "a1");
    assert_eq!((inc.state, inc.priority), (State::Open, 4));
    f.db.conn()
        .execute("UPDATE inventory_state SET stale = 0", [])
        .expect("fresh");
    for ms in [2_000, 4_000, 6_000, 8_000, 10_000, 12_000, 14_000] {
        f.sample("a1", "check_up", Some(("check", "app")), ms - 500, 1.0);
        f.tick(ms);
    }
    assert_eq!(
        f.incident(builtin::INVENTORY_STALE_RULE, "a1").state,
        State::Open
    );
    f.sample("a1", "check_up", Some(("check", "app")), 16_000, 1.0);
    f.tick(16_500);
    assert_eq!(
        f.incident(builtin::INVENTORY_STALE_RULE, "a1").state,
        State::Resolved,
        "resolved at the next refresh (every 15 s)"
    );
}

#[test]
fn a_flapping_series_keeps_one_incident_and_notifies_once_it_settles() {
    let mut f = fixture(Vec::new());
    f.connect("a1", 0);
    let mut ms = 0;
    let mut next = |f: &mut Fixture, v: f64| {
        ms += 100;
        f.sample("a1", "check_up", Some(("check", "app")), ms, v);
    };
    // Fail and recover in turns: open, resolve, reopen... until flapping is detected.
    for i in 0..12 {
        next(&mut f, if i % 2 == 0 { 0.0 } else { 1.0 });
    }
    let inc = f.incident("check", "a1");
    assert!(inc.flapping, "{inc:?}");
    let before = f.notifications(inc.id);
    // While flapping: one incident, nothing more notified.
    for i in 0..6 {
        next(&mut f, if i % 2 == 0 { 0.0 } else { 1.0 });
    }
    let during = f.incident("check", "a1");
    assert_eq!(during.id, inc.id);
    assert_eq!(f.notifications(inc.id), before);
    // It settles failing: still open, no longer flapping.
    for _ in 0..25 {
        next(&mut f, 0.0);
    }
    let settled = f.incident("check", "a1");
    assert_eq!(
        (settled.id, settled.state, settled.flapping),
        (inc.id, State::Open, false)
    );
    let count = |f: &Fixture| {
        records::list(
            f.db.conn(),
            &records::Filter {
                limit: 100,
                ..records::Filter::default()
            },
        )
        .expect("list")
        .1
    };
    assert_eq!(count(&f), 1, "one incident for the whole episode");
    // The last word operators got is that it is open (held back while flapping, sent once
    // it settled if the flapping episode hid a reopen).
    let after = f.notifications(inc.id);
    assert!(settled.announced);
    assert!(
        matches!(
            after.last().map(String::as_str),
            Some("opened" | "reopened")
        ),
        "{after:?}"
    );
}

#[test]
fn only_series_with_something_going_on_are_kept() {
    let mut f = fixture(Vec::new());
    f.connect("a1", 0);
    let kept = |f: &Fixture| -> usize {
        f.engine
            .agents
            .get("a1")
            .map_or(0, |a| a.series.iter().map(HashMap::len).sum())
    };
    for i in 0..100 {
        f.sample(
            "a1",
            "filesystem_used_ratio",
            Some(("mountpoint", "/")),
            100 + i,
            0.5,
        );
    }
    assert_eq!(kept(&f), 0, "a fine series is not kept");
    f.sample(
        "a1",
        "filesystem_used_ratio",
        Some(("mountpoint", "/")),
        300,
        0.95,
    );
    assert_eq!(kept(&f), 1);
    f.sample(
        "a1",
        "filesystem_used_ratio",
        Some(("mountpoint", "/")),
        400,
        0.5,
    );
    assert_eq!(f.incident("fs", "a1").state, State::Resolved);
    assert_eq!(kept(&f), 1, "kept while its flap history has a change");
    for i in 0..25 {
        f.sample(
            "a1",
            "filesystem_used_ratio",
            Some(("mountpoint", "/")),
            500 + i,
            0.5,
        );
    }
    assert_eq!(kept(&f), 0, "forgotten once nothing is going on");
    // A late breach of the forgotten series cannot reopen the incident out of order.
    f.sample(
        "a1",
        "filesystem_used_ratio",
        Some(("mountpoint", "/")),
        350,
        0.99,
    );
    assert_eq!(f.incident("fs", "a1").state, State::Resolved);
}

#[test]
fn memory_ratio_is_derived_and_series_survive_a_restart() {
    let mut f = fixture(Vec::new());
    f.connect("a1", 0);
    let at = f.at(100);
    let batch = |used: f64, at: i64| Input::Samples {
        agent: Arc::from("a1"),
        samples: vec![
            Sample {
                ts_ms: at,
                name: "memory_used_bytes".into(),
                labels: Vec::new(),
                value: used,
            },
            Sample {
                ts_ms: at,
                name: "memory_total_bytes".into(),
                labels: Vec::new(),
                value: 100.0,
            },
        ],
        received_ms: at,
        evaluated: None,
    };
    f.engine.handle(batch(97.0, at));
    let inc = f.incident(builtin::MEMORY_FULL, "a1");
    assert_eq!((inc.state, inc.trigger_value), (State::Open, Some(0.97)));

    // A new engine on the same store (a collector restart) picks the series up.
    let presence = Arc::new(Presence::new(POLICY));
    let mut restarted = start(f._dir.path(), &f.now, &presence, Vec::new());
    presence.connected("a1", "web-1", 1_000, f.at(200));
    restarted.handle(Input::Connected {
        agent: Arc::from("a1"),
        hostname: "web-1".into(),
        at_ms: f.at(200),
    });
    restarted.handle(batch(50.0, f.at(300)));
    let after = f.incident(builtin::MEMORY_FULL, "a1");
    assert_eq!((after.id, after.state), (inc.id, State::Resolved));
}

/// The engine thread answers a batch's `evaluated` only once the incident its samples opened has
/// committed (the QUIC server acknowledges the batch after that answer, so an acknowledged
/// breach cannot lose its incident to a crash).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_is_answered_once_the_incident_it_opened_is_committed() {
    let f = fixture(Vec::new());
    let clock_now = f.now.clone();
    let (engine, join) = spawn(
        f._dir.path(),
        EngineParts {
            config: config(Vec::new()),
            metrics: IncidentMetrics::new().expect("metrics"),
            wake: Arc::new(|| {}),
            presence: f.presence.clone(),
            clock: Arc::new(move || clock_now.load(Ordering::SeqCst)),
            on_exit: Box::new(|_| {}),
            checkpoints: None,
        },
    )
    .expect("engine thread");
    let at = f.at(100);
    f.presence.connected("a1", "web-1", 1_000, at);
    engine
        .send(Input::Connected {
            agent: Arc::from("a1"),
            hostname: "web-1".into(),
            at_ms: at,
        })
        .await
        .expect("send");
    let (evaluated, answered) = tokio::sync::oneshot::channel();
    engine
        .send(Input::Samples {
            agent: Arc::from("a1"),
            samples: vec![Sample {
                ts_ms: at,
                name: "filesystem_used_ratio".into(),
                labels: vec![("mountpoint".into(), "/".into())],
                value: 0.97,
            }],
            received_ms: at,
            evaluated: Some(evaluated),
        })
        .await
        .expect("send");
    answered.await.expect("answered");
    // Read on another connection at once: committed, not merely decided.
    let inc = f.incident("fs", "a1");
    assert_eq!(inc.state, State::Open);
    assert_eq!(f.notifications(inc.id), ["opened"]);
    drop(engine);
    tokio::task::spawn_blocking(move || join.join())
        .await
        .expect("engine stopped");
}

const MIN: i64 = 60_000;
const HOUR: i64 = 60 * MIN;

/// A failing check on `a1` at `ms`, keeping the host heard from, then a tick.
fn failing_check_at(f: &mut Fixture, ms: i64) {
    f.sample("a1", "check_up", Some(("check", "app")), ms, 0.0);
    f.tick(ms + 1);
}

fn timeline_kinds(f: &Fixture, id: i64, prefix: &str) -> Vec<(String, String)> {
    f.db.conn()
        .prepare("SELECT kind, detail FROM incident_events WHERE incident_id = ?1 ORDER BY id")
        .expect("prepare")
        .query_map([id], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
        })
        .expect("query")
        .collect::<rusqlite::Result<Vec<_>>>()
        .expect("rows")
        .into_iter()
        .filter(|(k, _)| k.starts_with(prefix))
        .collect()
}

fn breaches(f: &Fixture, priority: &str, target: &str) -> u64 {
    f.engine
        .metrics
        .sla_breaches
        .with_label_values(&[priority, target])
        .get()
}

#[test]
fn default_targets_warn_at_half_and_three_quarters_and_count_a_breach_once() {
    let mut f = fixture(Vec::new());
    f.connect("a1", 0);
    failing_check_at(&mut f, 100);
    let inc = f.incident("check", "a1");
    // impact high, urgency medium: P2, 1 h to respond and 8 h to resolve by default.
    assert_eq!(inc.priority, 2);
    f.tick(CLOCKS_TICK);
    let inc = f.incident("check", "a1");
    assert_eq!(
        (
            inc.response_due_ms,
            inc.resolution_due_ms,
            inc.targets_sla.as_deref()
        ),
        (
            Some(inc.created_ms + HOUR),
            Some(inc.created_ms + 8 * HOUR),
            None
        )
    );
    let created = inc.created_ms - T0;

    // Just short of half the response target: nothing yet.
    failing_check_at(&mut f, created + 30 * MIN - 2_000);
    assert!(timeline_kinds(&f, inc.id, "sla_").is_empty());
    failing_check_at(&mut f, created + 30 * MIN + CLOCKS_TICK);
    failing_check_at(&mut f, created + 45 * MIN + CLOCKS_TICK);
    let kinds = timeline_kinds(&f, inc.id, "sla_");
    assert_eq!(kinds.len(), 2, "{kinds:?}");
    assert!(
        kinds[0].1.contains("\"percent\":50") && kinds[0].1.contains("\"target\":\"response\"")
    );
    assert!(kinds[1].1.contains("\"percent\":75"));
    assert_eq!(
        f.notifications(inc.id),
        ["opened", "sla_warning", "sla_warning"]
    );

    // Acknowledged at 50 min: the response clock stops short of the target.
    let at = f.at(created + 50 * MIN);
    crate::incidents::lifecycle::Lifecycle::new(f.db.conn(), &[], at)
        .by("api:alice")
        .operator(inc.id, &records::Request::Acknowledge { note: None })
        .expect("acknowledge");
    // Past 4 h (half the resolution target) and past the response target: one more warning.
    failing_check_at(&mut f, created + 4 * HOUR + CLOCKS_TICK);
    assert_eq!(breaches(&f, "P2", "response"), 0);
    let kinds = timeline_kinds(&f, inc.id, "sla_");
    assert_eq!(kinds.len(), 3, "{kinds:?}");
    assert!(
        kinds[2].1.contains("\"target\":\"resolution\"") && kinds[2].1.contains("\"percent\":50")
    );

    // The collector missed the 75 % and 100 % marks (it was down): only the breach is told.
    failing_check_at(&mut f, created + 9 * HOUR);
    let kinds = timeline_kinds(&f, inc.id, "sla_");
    assert_eq!(kinds.len(), 4, "{kinds:?}");
    assert_eq!(kinds[3].0, "sla_breached");
    assert!(kinds[3].1.contains("\"percent\":100"));
    assert_eq!(breaches(&f, "P2", "resolution"), 1);
    // Counted once, however long it stays open.
    failing_check_at(&mut f, created + 10 * HOUR);
    assert_eq!(breaches(&f, "P2", "resolution"), 1);
    let inc = f.incident("check", "a1");
    assert_eq!((inc.response_level, inc.resolution_level), (75, 100));
}

#[test]
fn a_resolution_after_its_due_time_is_a_breach_even_between_two_rounds() {
    let mut f = fixture(Vec::new());
    f.connect("a1", 0);
    failing_check_at(&mut f, 100);
    let inc = f.incident("check", "a1");
    let created = inc.created_ms - T0;
    // Resolved 8 h + 1 s after it opened, before any round saw it past its due time.
    f.sample(
        "a1",
        "check_up",
        Some(("check", "app")),
        created + 8 * HOUR + 1_000,
        1.0,
    );
    assert_eq!(f.incident("check", "a1").state, State::Resolved);
    f.tick(created + 8 * HOUR + 1_000 + CLOCKS_TICK);
    assert_eq!(breaches(&f, "P2", "resolution"), 1);
    // Resolving also answered it, late: the response target was missed too.
    assert_eq!(breaches(&f, "P2", "response"), 1);
}

#[test]
fn an_sla_with_service_hours_runs_the_clocks_of_its_incidents_only_inside_them() {
    // T0 is Friday 2027-01-15 08:00 UTC; service Mon-Fri 09:00-10:00 UTC, P2 resolved in 2 h.
    let c = crate::config::from_str(
        "c.toml",
        "data_dir = \"/x\"\n[[sla]]\nname = \"web\"\ntarget = 0.99\n\
         [sla.scope]\nhost = \"web-*\"\n\
         [sla.schedule]\nhours = \"09:00-10:00\"\n\
         [sla.incident_targets]\nP2 = { response = \"30m\", resolution = \"2h\" }\n",
    )
    .expect("config");
    let mut f = fixture(Vec::new());
    f.engine.config.slas = c.slas;
    f.connect("a1", 0);
    f.connect("a2", 0);
    failing_check_at(&mut f, 100);
    f.sample("a2", "check_up", Some(("check", "app")), 200, 0.0);
    f.tick(2 * CLOCKS_TICK);
    let web = f.incident("check", "a1");
    let db = f.incident("check", "a2");
    let day = 24 * HOUR;
    // 30 min of service time: Friday 09:30. 2 h: Friday's hour, then Monday's (3 days later).
    assert_eq!(web.targets_sla.as_deref(), Some("web"));
    assert_eq!(web.response_due_ms, Some(T0 + HOUR + 30 * MIN));
    assert_eq!(web.resolution_due_ms, Some(T0 + 3 * day + 2 * HOUR));
    // db-1 is outside the SLA's scope: the defaults, around the clock.
    assert_eq!(db.targets_sla, None);
    assert_eq!(db.response_due_ms, Some(db.created_ms + HOUR));
}

const CLOCKS_TICK: i64 = super::clocks::CLOCKS_EVERY_MS + 1;

fn sla_config(text: &str) -> Vec<crate::sla::Sla> {
    crate::config::from_str("c.toml", &format!("data_dir = \"/x\"\n{text}"))
        .expect("config")
        .slas
}

fn burn(rates: [Option<f64>; 7], budget: f64) -> crate::sla::alerts::Burn {
    crate::sla::alerts::Burn {
        sla: "web".into(),
        rates,
        budget_remaining: Some(budget),
        window_ms: 30 * 24 * HOUR,
    }
}

fn sla_incidents(f: &Fixture) -> Vec<records::Incident> {
    let (items, _) = records::list(
        f.db.conn(),
        &records::Filter {
            limit: 100,
            ..records::Filter::default()
        },
    )
    .expect("list");
    items.into_iter().filter(|i| i.ci_type == "sla").collect()
}

#[test]
fn burn_rate_alerts_open_one_incident_per_sla_and_severity_and_resolve_on_the_short_window() {
    let mut f = fixture(Vec::new());
    f.engine.config.slas = sla_config("[[sla]]\nname = \"web\"\ntarget = 0.999\n");
    //                 5m          30m   1h          2h    6h    1d    3d
    let fast = [Some(20.0), None, Some(15.0), None, None, None, None];
    f.at(1_000);
    f.engine.handle(Input::SlaBurn(vec![burn(fast, 0.5)]));
    // The next figures say the same: still one incident.
    f.at(31_000);
    f.engine.handle(Input::SlaBurn(vec![burn(fast, 0.5)]));
    let incs = sla_incidents(&f);
    assert_eq!(incs.len(), 1, "{incs:?}");
    let page = &incs[0];
    assert_eq!(
        (
            page.rule.as_str(),
            page.ci_key.as_str(),
            page.priority,
            page.state
        ),
        ("sla-burn-page", "web", 2, State::Open)
    );
    assert_eq!(page.labels.get("sla").map(String::as_str), Some("web"));
    assert_eq!(
        (page.trigger_value, page.threshold),
        (Some(20.0), Some(14.4))
    );
    assert_eq!(f.notifications(page.id), ["opened"]);

    // The 5m window recovers while the 1h one is still high: resolved. The budget is now
    // spent: the exhausted alert opens.
    f.at(61_000);
    let recovered = [Some(0.0), None, Some(15.0), None, None, None, None];
    f.engine.handle(Input::SlaBurn(vec![burn(recovered, -0.2)]));
    let incs = sla_incidents(&f);
    let page = incs
        .iter()
        .find(|i| i.rule == "sla-burn-page")
        .expect("page");
    assert_eq!(page.state, State::Resolved);
    assert_eq!(f.notifications(page.id), ["opened", "resolved"]);
    let spent = incs
        .iter()
        .find(|i| i.rule == "sla-budget-exhausted")
        .expect("spent");
    assert_eq!((spent.state, spent.priority), (State::Open, 3));

    // alerts = false: what is open resolves, nothing new opens.
    f.engine.config.slas = sla_config("[[sla]]\nname = \"web\"\ntarget = 0.999\nalerts = false\n");
    f.at(91_000);
    f.engine.handle(Input::SlaBurn(vec![burn(fast, -0.2)]));
    let incs = sla_incidents(&f);
    assert!(incs.iter().all(|i| i.state == State::Resolved), "{incs:?}");
    assert_eq!(incs.len(), 2);
}

#[test]
fn the_alerts_of_an_sla_removed_from_the_configuration_resolve_at_start() {
    let mut f = fixture(Vec::new());
    f.engine.config.slas = sla_config("[[sla]]\nname = \"web\"\ntarget = 0.999\n");
    f.at(1_000);
    f.engine.handle(Input::SlaBurn(vec![burn([None; 7], -1.0)]));
    assert_eq!(sla_incidents(&f)[0].state, State::Open);
    // Restarted without the SLA (the fixture's configuration has none).
    let presence = f.presence.clone();
    let restarted = start(f._dir.path(), &f.now, &presence, Vec::new());
    drop(restarted);
    let inc = &sla_incidents(&f)[0];
    assert_eq!(inc.state, State::Resolved);
    assert_eq!(inc.resolution_code.as_deref(), Some("sla_removed"));
}
