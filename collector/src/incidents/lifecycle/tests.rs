//! The lifecycle against a real store: opening, reopening and the order of breaches; closing;
//! operator transitions and their legality; the reads of `records`; and the notification
//! policy on every path (system, operator, Alertmanager).

use std::collections::BTreeMap;

use rusqlite::{params, Connection};

use super::*;
use crate::incidents::records::*;
use crate::incidents::rule::Level;

fn open(c: &Connection, o: &Opening<'_>, within: i64, now: i64) -> rusqlite::Result<Opened> {
    Lifecycle::new(c, &[], now)
        .open(o, within, None)
        .map(|(o, _)| o)
}

fn auto_resolve(
    c: &Connection,
    id: i64,
    at: i64,
    value: Option<f64>,
    code: &str,
    now: i64,
) -> rusqlite::Result<Option<()>> {
    Lifecycle::new(c, &[], now)
        .resolve(id, at, value, code, true)
        .map(|r| r.map(|_| ()))
}

fn auto_close(c: &Connection, before: i64, now: i64) -> rusqlite::Result<Vec<i64>> {
    Lifecycle::new(c, &[], now).close_resolved_before(before)
}

fn transition(
    c: &Connection,
    id: i64,
    req: &Request,
    actor: &str,
    now: i64,
) -> Result<Transitioned, TransitionError> {
    Lifecycle::new(c, &[], now).by(actor).operator(id, req)
}

const MIN: i64 = 60_000;
const HOUR: i64 = 60 * MIN;

fn db() -> (tempfile::TempDir, crate::store::Db) {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = crate::store::Db::open(dir.path()).expect("db");
    (dir, db)
}

fn opening<'a>(labels: &'a BTreeMap<String, String>, first: i64, at: i64) -> Opening<'a> {
    Opening {
        dedup_key: "check-down|a1|check|app",
        rule: "check-down",
        origin: Origin::Rule,
        agent_id: None,
        ci_id: None,
        ci_type: "check",
        ci_key: "app",
        title: "check-down on h app: check_up 0 < 1",
        impact: Level::Medium,
        urgency: Level::High,
        metric: Some("check_up"),
        op: Some("<"),
        threshold: Some(1.0),
        value: Some(0.0),
        peak: Some(0.0),
        first_breach_ms: first,
        at_ms: at,
        labels,
        flapping: false,
        suppression: None,
        probable_cause_id: None,
    }
}

fn state(c: &Connection, id: i64) -> State {
    get(c, id).expect("get").expect("exists").state
}

#[test]
fn one_active_incident_per_key_and_the_reopen_window() {
    let (_d, db) = db();
    let c = db.conn();
    let labels = BTreeMap::new();
    let Opened::New { id, .. } = open(c, &opening(&labels, 0, 10), HOUR, 10).expect("open") else {
        panic!("expected a new incident");
    };
    let inc = get(c, id).expect("get").expect("row");
    assert_eq!(
        (inc.priority, inc.state, inc.started_ms),
        (2, State::Open, 0)
    );
    assert_eq!(
        open(c, &opening(&labels, 20, 30), HOUR, 30).expect("open"),
        Opened::Active { id }
    );
    auto_resolve(c, id, 100, Some(1.0), "cleared", 100).expect("resolve");
    assert_eq!(state(c, id), State::Resolved);

    // A breach that began before the resolution is a late sample: ignored.
    assert_eq!(
        open(c, &opening(&labels, 50, 150), HOUR, 150).expect("open"),
        Opened::OutOfOrder { id }
    );
    // Within the window: the same incident reopens.
    let Opened::Reopened { id: again, .. } =
        open(c, &opening(&labels, 200, 30 * MIN), HOUR, 30 * MIN).expect("reopen")
    else {
        panic!("expected a reopen");
    };
    assert_eq!(again, id);
    let inc = get(c, id).expect("get").expect("row");
    assert_eq!(
        (inc.state, inc.reopen_count, inc.resolved_ms),
        (State::Open, 1, None)
    );

    // Past the window: a new incident.
    auto_resolve(c, id, 31 * MIN, Some(1.0), "cleared", 31 * MIN).expect("resolve");
    let later = 31 * MIN + HOUR + 1;
    let Opened::New { id: new, .. } =
        open(c, &opening(&labels, later, later), HOUR, later).expect("open")
    else {
        panic!("expected a new incident after the window");
    };
    assert_ne!(new, id);
    let kinds: Vec<String> = timeline(c, id)
        .expect("timeline")
        .into_iter()
        .map(|e| e.kind)
        .collect();
    assert_eq!(kinds, ["opened", "resolved", "reopened", "resolved"]);
}

#[test]
fn resolved_incidents_close_after_close_after() {
    let (_d, db) = db();
    let c = db.conn();
    let labels = BTreeMap::new();
    let Opened::New { id, .. } = open(c, &opening(&labels, 0, 0), HOUR, 0).expect("open") else {
        panic!("new");
    };
    auto_resolve(c, id, 10 * MIN, Some(1.0), "cleared", 10 * MIN).expect("resolve");
    let day = 24 * HOUR;
    assert!(auto_close(c, 10 * MIN + day - day, day)
        .expect("close")
        .is_empty());
    assert_eq!(auto_close(c, 10 * MIN + 1, day).expect("close"), [id]);
    let inc = get(c, id).expect("get").expect("row");
    assert_eq!((inc.state, inc.closed_ms), (State::Closed, Some(day)));
    let last = timeline(c, id).expect("timeline").pop().expect("event");
    assert_eq!(
        (last.kind.as_str(), last.actor.as_str()),
        ("closed", SYSTEM)
    );
}

#[test]
fn a_closed_incident_is_never_reopened() {
    let (_d, db) = db();
    let c = db.conn();
    let labels = BTreeMap::new();
    let Opened::New { id, .. } = open(c, &opening(&labels, 0, 0), HOUR, 0).expect("open") else {
        panic!("new");
    };
    transition(
        c,
        id,
        &Request::Resolve {
            code: "solved".into(),
            note: None,
        },
        "api:t",
        10,
    )
    .expect("resolve");
    transition(c, id, &Request::Close { note: None }, "api:t", 20).expect("close");
    assert!(matches!(
        open(c, &opening(&labels, 30, 30), HOUR, 30).expect("open"),
        Opened::New { .. }
    ));
}

#[test]
fn operator_transitions_follow_the_lifecycle() {
    let (_d, db) = db();
    let c = db.conn();
    let labels = BTreeMap::new();
    let Opened::New { id, .. } = open(c, &opening(&labels, 0, 0), HOUR, 0).expect("open") else {
        panic!("new");
    };
    let ack = Request::Acknowledge { note: None };
    let resolve = Request::Resolve {
        code: "solved".into(),
        note: Some("restarted".into()),
    };
    let close = Request::Close { note: None };
    let assign = Request::Assign {
        assignee: "dba".into(),
    };
    let comment = Request::Comment { text: "x".into() };
    let illegal =
        |c: &Connection, req: &Request, want: &[Action]| match transition(c, id, req, "api:t", 1) {
            Err(TransitionError::Illegal { allowed, .. }) => assert_eq!(allowed, want),
            other => panic!("expected a refusal, got {other:?}"),
        };
    illegal(
        c,
        &close,
        &[
            Action::Acknowledge,
            Action::Assign,
            Action::Comment,
            Action::Resolve,
        ],
    );
    let t = transition(c, id, &ack, "api:t", 5).expect("ack");
    assert_eq!(
        (t.before, t.incident.state, t.incident.acknowledged_ms),
        (State::Open, State::Acknowledged, Some(5))
    );
    illegal(c, &ack, &[Action::Assign, Action::Comment, Action::Resolve]);
    assert_eq!(
        transition(c, id, &assign, "api:t", 6)
            .expect("assign")
            .incident
            .assignee
            .as_deref(),
        Some("dba")
    );
    let t = transition(c, id, &resolve, "api:t", 7).expect("resolve");
    assert_eq!(t.incident.resolved_by.as_deref(), Some("api:t"));
    assert_eq!(t.incident.resolution_code.as_deref(), Some("solved"));
    illegal(c, &assign, &[Action::Comment, Action::Close]);
    transition(c, id, &close, "api:t", 8).expect("close");
    illegal(c, &resolve, &[Action::Comment]);
    transition(c, id, &comment, "api:t", 9).expect("comment on a closed incident");
    assert!(matches!(
        transition(c, 999, &ack, "api:t", 1),
        Err(TransitionError::NotFound(999))
    ));
    // The system cannot resolve what an operator closed.
    assert_eq!(
        auto_resolve(c, id, 10, None, "cleared", 10).expect("auto"),
        None
    );
}

#[test]
fn recent_changes_cover_the_ci_and_its_host_in_the_day_before() {
    let (_d, db) = db();
    let c = db.conn();
    for (id, host) in [("a1", "web-1"), ("a2", "db-1")] {
        db.register_agent(
            &crate::store::NewAgent {
                id: id.into(),
                hostname: host.into(),
                version: "t".into(),
                cert_pin: format!("pin-{id}"),
                token_id: "t".into(),
            },
            0,
        )
        .expect("agent");
    }
    for (agent, ty, key) in [
        ("a1", "package", "openssl:amd64"),
        ("a1", "listening_service", "tcp:8080"),
        ("a2", "package", "openssl:amd64"),
    ] {
        c.execute(
            "INSERT INTO cis (agent_id, type, key, name, source, first_seen_ms, last_seen_ms)
             VALUES (?1, ?2, ?3, ?3, 'discovery', 0, 0)",
            params![agent, ty, key],
        )
        .expect("ci");
    }
    let start = 3 * HOUR * 24;
    // (agent, type, ts, attribute, change), written in time order as the CMDB writes them.
    let history = [
        ("a1", "package", start - 25 * HOUR, "version", "changed"),
        ("a1", "listening_service", start - 2 * HOUR, "*", "added"),
        ("a1", "package", start - HOUR, "version", "changed"),
        ("a2", "package", start - HOUR, "version", "changed"),
        ("a1", "package", start + HOUR, "version", "changed"),
    ];
    for (agent, ty, ts, attr, change) in history {
        let ci: i64 = c
            .query_row(
                "SELECT id FROM cis WHERE agent_id = ?1 AND type = ?2",
                params![agent, ty],
                |r| r.get(0),
            )
            .expect("ci");
        crate::cmdb::history::append(
            c,
            ci,
            ts,
            attr,
            change,
            Some("\"3.0.1\""),
            Some("\"3.0.2\""),
            agent,
        )
        .expect("history");
    }
    let labels = BTreeMap::new();
    let mut o = opening(&labels, start, start);
    o.agent_id = Some("a1");
    let Opened::New { id, .. } = open(c, &o, HOUR, start).expect("open") else {
        panic!("new");
    };
    let inc = get(c, id).expect("get").expect("row");
    let got: Vec<(i64, String, String)> = recent_changes(c, &inc)
        .expect("changes")
        .into_iter()
        .map(|r| (start - r.ts_ms, r.ci_type, r.change))
        .collect();
    assert_eq!(
        got,
        [
            (HOUR, "package".to_string(), "changed".to_string()),
            (
                2 * HOUR,
                "listening_service".to_string(),
                "added".to_string()
            ),
        ]
    );
}

#[test]
fn lists_filter_and_count() {
    let (_d, db) = db();
    let c = db.conn();
    let labels = BTreeMap::new();
    let mut o = opening(&labels, 0, 0);
    open(c, &o, HOUR, 0).expect("open");
    o.dedup_key = "other";
    o.rule = "filesystem-full";
    o.impact = Level::Low;
    o.urgency = Level::Low;
    o.first_breach_ms = 100;
    open(c, &o, HOUR, 100).expect("open");
    let page = |f: Filter| list(c, &Filter { limit: 10, ..f }).expect("list");
    assert_eq!(page(Filter::default()).1, 2);
    let (items, total) = page(Filter {
        priorities: vec![5],
        ..Filter::default()
    });
    assert_eq!((total, items[0].rule.as_str()), (1, "filesystem-full"));
    assert_eq!(
        page(Filter {
            since_ms: Some(50),
            ..Filter::default()
        })
        .1,
        1
    );
    assert_eq!(
        page(Filter {
            states: vec![State::Resolved],
            ..Filter::default()
        })
        .1,
        0
    );
    assert_eq!(
        page(Filter {
            rule: Some("check-down".into()),
            ..Filter::default()
        })
        .1,
        1
    );
    assert_eq!(open_counts(c).expect("counts"), [0, 1, 0, 0, 1]);
}

use crate::notify::testing::webhook as hook;

use crate::notify::testing::events as notified;

/// The one policy, on each path that ends an incident: an announced incident that became
/// suppressed since is still notified when it resolves (or is acknowledged), by the system, by
/// an operator or by Alertmanager; an incident never announced is notified of nothing.
#[test]
fn the_notification_policy_is_the_same_on_every_path() {
    let hooks = [hook()];
    type End = fn(&Lifecycle<'_>, i64) -> bool;
    let system: End = |l, id| {
        l.resolve(id, 100, Some(1.0), "cleared", true)
            .expect("resolve")
            .is_some()
    };
    let operator: End = |l, id| {
        l.operator(
            id,
            &Request::Resolve {
                code: "solved".into(),
                note: None,
            },
        )
        .is_ok()
    };
    let acknowledge: End = |l, id| l.operator(id, &Request::Acknowledge { note: None }).is_ok();
    for (path, actor, end, kind) in [
        ("system", SYSTEM, system, "resolved"),
        ("operator", "api:t", operator, "resolved"),
        ("alertmanager", "alertmanager", system, "resolved"),
        ("acknowledge", "api:t", acknowledge, "acknowledged"),
    ] {
        let (_d, db) = db();
        let c = db.conn();
        let labels = BTreeMap::new();
        // Announced at open, then suppressed under a parent (its host went unreachable).
        let mut o = opening(&labels, 0, 0);
        o.dedup_key = "announced";
        let (Opened::New { id: announced, .. }, _) = Lifecycle::new(c, &hooks, 0)
            .open(&o, 0, None)
            .expect("open")
        else {
            panic!("new");
        };
        o.dedup_key = "parent";
        let (Opened::New { id: parent, .. }, _) = Lifecycle::new(c, &hooks, 0)
            .open(&o, 0, None)
            .expect("open")
        else {
            panic!("new");
        };
        assert!(Lifecycle::new(c, &hooks, 1)
            .suppress_under(announced, parent)
            .expect("suppress"));
        // Suppressed from the start: never announced.
        o.dedup_key = "quiet";
        o.suppression = Some(Suppression::Maintenance { window: "w".into() });
        let (Opened::New { id: quiet, .. }, _) = Lifecycle::new(c, &hooks, 0)
            .open(&o, 0, None)
            .expect("open")
        else {
            panic!("new");
        };
        for id in [announced, quiet] {
            let life = Lifecycle::new(c, &hooks, 50).by(actor);
            assert!(end(&life, id), "{path}: the change applies");
        }
        assert_eq!(
            notified(c, announced),
            ["opened", kind],
            "{path}: whoever heard it opened hears it {kind}"
        );
        assert!(
            notified(c, quiet).is_empty(),
            "{path}: nothing about an incident never announced"
        );
    }
}

#[test]
fn a_suppression_that_ends_announces_what_it_held_back() {
    let hooks = [hook()];
    let (_d, db) = db();
    let c = db.conn();
    let labels = BTreeMap::new();
    let mut o = opening(&labels, 0, 0);
    o.suppression = Some(Suppression::Maintenance { window: "w".into() });
    let (Opened::New { id, .. }, _) = Lifecycle::new(c, &hooks, 0)
        .open(&o, 0, None)
        .expect("open")
    else {
        panic!("new");
    };
    assert!(notified(c, id).is_empty());
    let life = Lifecycle::new(c, &hooks, 10);
    assert!(life
        .unsuppress(id, "its maintenance window ended")
        .expect("lift"));
    assert!(!life.unsuppress(id, "again").expect("nothing to lift"));
    assert_eq!(notified(c, id), ["opened"]);
    let inc = get(c, id).expect("get").expect("row");
    assert!(!inc.is_suppressed() && inc.announced);
    let kinds: Vec<String> = timeline(c, id)
        .expect("timeline")
        .into_iter()
        .map(|e| e.kind)
        .collect();
    assert_eq!(
        kinds,
        [
            "opened",
            "suppressed",
            "unsuppressed",
            "announced",
            "notification"
        ]
    );
}
