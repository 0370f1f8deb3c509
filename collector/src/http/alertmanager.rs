//! `POST /api/v1/alertmanager`: Prometheus Alertmanager's webhook receiver (payload version 4).
//!
//! Point an Alertmanager receiver at it with an operator API token:
//!
//! ```yaml
//! receivers:
//!   - name: vigil
//!     webhook_configs:
//!       - url: http://collector:8080/api/v1/alertmanager
//!         send_resolved: true
//!         http_config:
//!           authorization: { credentials: vgl_... }   # role operator
//! ```
//!
//! Each alert becomes an incident (mapping, severity table and title rules in
//! [`crate::incidents::alertmanager`]): dedup key `am|<fingerprint>`, `origin = alertmanager`,
//! `rule` = `alertname`. A `firing` alert opens it (or reopens it within `reopen_within` of its
//! resolution; an active one is left as is; a firing alert that started before the incident's
//! last resolution, e.g. one an operator resolved, does not reopen it). A `resolved` alert
//! resolves the active one at `endsAt` (resolution code `alertmanager_resolved`; notification
//! actor `alertmanager`).
//!
//! Host: the `instance` label's host (port stripped), then the `host` label, are matched against
//! the host names of enrolled (not revoked) agents, case-insensitively, also as short name vs
//! FQDN (`web1` ~ `web1.example.com`); an IP address also matches the one agent that reported
//! it (`ip_address` CI; loopback and link-local never match). A match attaches the incident to
//! that agent and its host CI (`ci_type = host`, `ci_key = host`); otherwise `ci_type = alert`,
//! `ci_key = <fingerprint>`, no host. An alert on a host whose `host-unreachable` incident is
//! active opens as its suppressed symptom; one inside a maintenance window that covers it opens
//! suppressed by maintenance. Suppressed incidents never notify; a resolve is notified only
//! when the open was.
//!
//! Answers: 200 `{"received", "superseded", "opened", "reopened", "resolved", "unchanged",
//! "problems"}` (`superseded`: alerts given again later in the same payload; only the last of
//! each fingerprint is applied)
//! (`problems`: alerts processed with a missing, unreadable or future time, taken as now and
//! logged); 400 not JSON; 401 no or bad token; 403 a viewer token; 413 a body over 1 MiB; 422
//! `version` not "4", not the webhook shape, or an alert without `fingerprint`. The whole batch
//! commits in one transaction: a store failure is a 500 and Alertmanager retries (replaying a
//! batch changes nothing).
//!
//! This module must never: open two incidents for one fingerprint, notify for a suppressed
//! incident, trust a label's size, or run SQLite on the async runtime.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use rusqlite::Connection;
use serde::Serialize;
use vigil_shared::inventory::ci_type;

use super::{now_ms, ApiError, Auth, HttpState};
use crate::cmdb::lookup::{self, HostRow};
use crate::incidents::alert_flaps::Flap;
use crate::incidents::alertmanager::{self as am, Mapped, PayloadError, Status};
use crate::incidents::lifecycle::Lifecycle;
use crate::incidents::maintenance::{self, Window};
use crate::incidents::records::{self, Opened, Opening, Origin, Suppression};
use crate::incidents::scope::Target;
use crate::notify::Webhook;
use crate::store::{in_tx, Role, StoreError};

/// Largest webhook body.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;
/// Resolution code of an incident Alertmanager resolved.
pub const RESOLUTION_CODE: &str = "alertmanager_resolved";
/// The actor of notifications this receiver causes.
pub const ACTOR: &str = "alertmanager";
/// `[incidents] reopen_within`'s default, for the tests.
#[cfg(test)]
const DEFAULT_REOPEN_WITHIN_MS: i64 = 3600 * 1000;

pub(super) fn routes() -> Router<HttpState> {
    Router::new().route(
        "/alertmanager",
        post(receive).layer(DefaultBodyLimit::max(MAX_BODY_BYTES)),
    )
}

/// The answer: how many alerts came and what became of them.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct Summary {
    pub received: u64,
    /// Alerts of a fingerprint that the same payload gives again later: only the last of each
    /// fingerprint is applied (a payload is a state, not a history), so one request cannot
    /// flap an incident.
    pub superseded: u64,
    pub opened: u64,
    pub reopened: u64,
    pub resolved: u64,
    pub unchanged: u64,
    /// Resolved statuses held back because their fingerprint flaps (across requests, as the
    /// engine judges a series): the incident stays open, marked flapping.
    pub flapping: u64,
    pub problems: u64,
}

async fn receive(
    auth: Auth,
    State(state): State<HttpState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Summary>, ApiError> {
    auth.require(Role::Operator)?;
    let body = body.map_err(|r| {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::PayloadTooLarge(format!("the body is larger than {MAX_BODY_BYTES} bytes"))
        } else {
            ApiError::BadRequest(r.body_text())
        }
    })?;
    let payload = am::parse(&body).map_err(|e| match e {
        PayloadError::Syntax(_) => ApiError::BadRequest(e.to_string()),
        _ => ApiError::Unprocessable(e.to_string()),
    })?;
    let now = now_ms();
    let received = payload.alerts.len();
    let alerts = last_per_fingerprint(payload.alerts.iter().map(|a| am::map(a, now)).collect());
    let superseded = received - alerts.len();
    // One line per request, however many alerts had problems.
    let with_problems: Vec<&Mapped> = alerts.iter().filter(|a| !a.problems.is_empty()).collect();
    if let Some(first) = with_problems.first() {
        tracing::warn!(
            alerts = with_problems.len(),
            fingerprint = %first.fingerprint,
            rule = %first.rule,
            "Alertmanager alerts with problems; the first: {}",
            first.problems.join("; ")
        );
    }
    let flaps: Vec<Flap> = alerts
        .iter()
        .map(|a| {
            state
                .incidents
                .flaps
                .observe(&a.dedup_key, a.status == Status::Firing, a.at_ms)
        })
        .collect();
    let hooks = state.incidents.webhooks.clone();
    let reopen_within_ms = state.incidents.reopen_within_ms;
    let applied = state
        .db
        .run(move |db| {
            let c = db.conn();
            Ok::<_, StoreError>(in_tx(c, |c| {
                apply_flapping(c, &hooks, &alerts, &flaps, reopen_within_ms, now)
            })?)
        })
        .await?;
    // Committed: notify, and count.
    let mut summary = applied.summary;
    summary.received = received as u64;
    summary.superseded = superseded as u64;
    if summary.opened + summary.reopened + summary.resolved > 0 {
        (state.incidents.wake)();
    }
    if let Some(m) = &state.incidents.metrics {
        for rule in &applied.opened_rules {
            m.opened(rule);
        }
        for (priority, ms) in applied.resolved {
            m.resolved(priority, ms);
        }
    }
    tracing::debug!(?summary, group = ?payload.group_key, "Alertmanager webhook");
    Ok(Json(summary))
}

/// The last alert of each fingerprint, in the order of those last ones.
fn last_per_fingerprint(alerts: Vec<Mapped>) -> Vec<Mapped> {
    let mut last = std::collections::HashMap::new();
    for (i, a) in alerts.iter().enumerate() {
        last.insert(a.fingerprint.clone(), i);
    }
    alerts
        .into_iter()
        .enumerate()
        .filter(|(i, a)| last.get(&a.fingerprint) == Some(i))
        .map(|(_, a)| a)
        .collect()
}

/// What [`apply`] did: the answer, and what the metrics count once it committed.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Applied {
    pub summary: Summary,
    /// The rule of each new incident (`vigil_incidents_opened_total{rule}`).
    pub opened_rules: Vec<String>,
    /// The priority of each resolved incident and how long it was open in ms
    /// (`vigil_incident_resolve_seconds{priority}`).
    pub resolved: Vec<(u8, i64)>,
}

/// Applies a batch of mapped alerts inside the caller's transaction.
#[cfg(test)]
pub fn apply(
    c: &Connection,
    hooks: &[Webhook],
    alerts: &[Mapped],
    reopen_within_ms: i64,
    now: i64,
) -> rusqlite::Result<Applied> {
    apply_flapping(c, hooks, alerts, &[], reopen_within_ms, now)
}

/// [`apply`], with what each alert means for its fingerprint's flapping (`flaps[i]` for
/// `alerts[i]`; none past its end): while a fingerprint flaps a resolved status leaves its
/// incident open, and the incident's flapping flag follows the fingerprint's.
pub fn apply_flapping(
    c: &Connection,
    hooks: &[Webhook],
    alerts: &[Mapped],
    flaps: &[Flap],
    reopen_within_ms: i64,
    now: i64,
) -> rusqlite::Result<Applied> {
    let mut out = Applied::default();
    let s = &mut out.summary;
    s.received = alerts.len() as u64;
    let mut windows: Option<Vec<Window>> = None;
    for (i, a) in alerts.iter().enumerate() {
        if !a.problems.is_empty() {
            s.problems += 1;
        }
        let flap = flaps.get(i).copied();
        let mark = |c: &Connection, flapping: bool, percent: f64| -> rusqlite::Result<()> {
            if let Some(inc) = records::active_by_key(c, &a.dedup_key)? {
                Lifecycle::new(c, hooks, now)
                    .by(ACTOR)
                    .set_flapping(inc.id, flapping, percent)?;
            }
            Ok(())
        };
        if let Some(p) = flap.and_then(|f| f.stopped) {
            mark(c, false, p)?;
        }
        if a.status == Status::Resolved && flap.is_some_and(|f| f.flapping) {
            s.flapping += 1;
            if let Some(p) = flap.and_then(|f| f.started) {
                mark(c, true, p)?;
            }
            continue;
        }
        match a.status {
            Status::Firing => {
                let windows = match &mut windows {
                    Some(w) => &*w,
                    None => windows.insert(maintenance::load(c, false)?),
                };
                match fire(c, hooks, windows, a, reopen_within_ms, now)? {
                    Opened::New { id, .. } => {
                        s.opened += 1;
                        out.opened_rules.push(a.rule.clone());
                        tracing::info!(incident = id, rule = %a.rule, "incident opened by Alertmanager");
                    }
                    Opened::Reopened { id, .. } => {
                        s.reopened += 1;
                        tracing::info!(incident = id, rule = %a.rule, "incident reopened by Alertmanager");
                    }
                    Opened::Active { .. } | Opened::OutOfOrder { .. } => s.unchanged += 1,
                }
                if let Some(p) = flap.and_then(|f| f.started) {
                    mark(c, true, p)?;
                }
            }
            Status::Resolved => match resolve(c, hooks, a, now)? {
                Some((id, priority, ms)) => {
                    s.resolved += 1;
                    out.resolved.push((priority, ms));
                    tracing::info!(incident = id, rule = %a.rule, "incident resolved by Alertmanager");
                }
                None => s.unchanged += 1,
            },
        }
    }
    Ok(out)
}

fn fire(
    c: &Connection,
    hooks: &[Webhook],
    windows: &[Window],
    a: &Mapped,
    reopen_within_ms: i64,
    now: i64,
) -> rusqlite::Result<Opened> {
    let host: Option<HostRow> = lookup::agent_named(c, &a.hosts)?;
    let (ci_type, ci_key) = match host {
        Some(_) => (ci_type::HOST, ci_type::HOST),
        None => (am::CI_TYPE_ALERT, a.fingerprint.as_str()),
    };
    let no_tags = std::collections::BTreeMap::new();
    let target = Target {
        hostname: host.as_ref().map_or("", |h| h.hostname.as_str()),
        tags: host.as_ref().map_or(&no_tags, |h| &h.tags),
        ci_type,
        ci_id: host.as_ref().and_then(|h| h.ci_id),
    };
    let window = maintenance::covering(windows, a.at_ms, &target).map(|w| w.name.clone());
    let suppression = match (window, &host) {
        (Some(window), _) => Some(Suppression::Maintenance { window }),
        (None, Some(h)) => records::host_unreachable(c, &h.agent_id)?
            .map(|parent_id| Suppression::Parent { parent_id }),
        (None, None) => None,
    };
    let opening = Opening {
        dedup_key: &a.dedup_key,
        rule: &a.rule,
        origin: Origin::Alertmanager,
        agent_id: host.as_ref().map(|h| h.agent_id.as_str()),
        ci_id: host.as_ref().and_then(|h| h.ci_id),
        ci_type,
        ci_key,
        title: &a.title,
        impact: a.impact,
        urgency: a.urgency,
        metric: None,
        op: None,
        threshold: None,
        value: None,
        peak: None,
        first_breach_ms: a.at_ms,
        at_ms: a.at_ms,
        labels: &a.labels,
        flapping: false,
        suppression,
        probable_cause_id: None,
    };
    let (opened, _) =
        Lifecycle::new(c, hooks, now)
            .by(ACTOR)
            .open(&opening, reopen_within_ms, None)?;
    Ok(opened)
}

/// Resolves the active incident of `a`; returns its id and how long it was open (seconds).
fn resolve(
    c: &Connection,
    hooks: &[Webhook],
    a: &Mapped,
    now: i64,
) -> rusqlite::Result<Option<(i64, u8, i64)>> {
    let Some(inc) = records::active_by_key(c, &a.dedup_key)? else {
        return Ok(None);
    };
    let at = a.at_ms.max(inc.started_ms);
    let resolved =
        Lifecycle::new(c, hooks, now)
            .by(ACTOR)
            .resolve(inc.id, at, None, RESOLUTION_CODE, true)?;
    Ok(resolved.map(|r| (inc.id, r.before.priority, at - r.before.started_ms)))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::path::Path;
    use std::sync::Arc;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use rusqlite::params;

    use super::*;
    use crate::incidents::alertmanager::Alert;
    use crate::incidents::builtin::HOST_UNREACHABLE;
    use crate::incidents::records::Incident;
    use crate::incidents::scope::Scope;
    use crate::store::{Db, NewAgent};

    const NOW: i64 = 1_800_000_000_000;
    const MIN: i64 = 60_000;

    use crate::notify::testing::webhook as hook;

    /// Agents `a1` web1 (host CI, address 10.1.2.3), `a2` db1.example.com (no host CI), `a3`
    /// gone (revoked), `a4` and `a5` both with address 10.9.9.9.
    fn store(dir: &Path) -> Db {
        let db = Db::open(dir).expect("open");
        for (id, host) in [
            ("a1", "web1"),
            ("a2", "db1.example.com"),
            ("a3", "gone"),
            ("a4", "nat1"),
            ("a5", "nat2"),
        ] {
            db.register_agent(
                &NewAgent {
                    id: id.into(),
                    hostname: host.into(),
                    version: "0.1.0".into(),
                    cert_pin: "00".repeat(32),
                    token_id: "tok".into(),
                },
                1_000,
            )
            .expect("agent");
        }
        db.revoke_agent("a3", 2_000).expect("revoke");
        for (agent, ty, key) in [
            ("a1", "host", "host"),
            ("a3", "host", "host"),
            ("a1", "ip_address", "10.1.2.3/24"),
            ("a1", "ip_address", "127.0.0.1/8"),
            ("a4", "ip_address", "10.9.9.9/16"),
            ("a5", "ip_address", "10.9.9.9/16"),
        ] {
            db.conn()
                .execute(
                    "INSERT INTO cis (agent_id, type, key, name, source, first_seen_ms, last_seen_ms)
                     VALUES (?1, ?2, ?3, ?3, 'discovery', 0, 0)",
                    params![agent, ty, key],
                )
                .expect("ci");
        }
        db
    }

    fn alert(status: Status, fp: &str, labels: &[(&str, &str)], at: &str) -> Mapped {
        let a = Alert {
            status,
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            annotations: BTreeMap::new(),
            starts_at: Some(at.into()),
            ends_at: Some(at.into()),
            generator_url: None,
            fingerprint: Some(fp.into()),
        };
        am::map(&a, NOW)
    }

    fn run(db: &Db, alerts: &[Mapped], now: i64) -> Summary {
        apply_all(db, alerts, now).summary
    }

    fn apply_all(db: &Db, alerts: &[Mapped], now: i64) -> Applied {
        in_tx(db.conn(), |c| {
            apply(c, &[hook()], alerts, DEFAULT_REOPEN_WITHIN_MS, now)
        })
        .expect("apply")
    }

    fn incident(db: &Db, fp: &str) -> Incident {
        let id: i64 = db
            .conn()
            .query_row(
                "SELECT max(id) FROM incidents WHERE dedup_key = ?1",
                [format!("am|{fp}")],
                |r| r.get(0),
            )
            .expect("incident");
        records::get(db.conn(), id).expect("get").expect("row")
    }

    fn notifications(db: &Db, id: i64) -> Vec<String> {
        crate::notify::testing::events(db.conn(), id)
    }

    fn summary(opened: u64, reopened: u64, resolved: u64, unchanged: u64) -> Summary {
        Summary {
            received: opened + reopened + resolved + unchanged,
            superseded: 0,
            opened,
            reopened,
            resolved,
            unchanged,
            flapping: 0,
            problems: 0,
        }
    }

    const T: &str = "2027-01-15T07:00:00Z";
    const T_MS: i64 = NOW - 60 * MIN;

    #[test]
    fn firing_opens_once_and_resolved_resolves() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let db = store(tmp.path());
        let labels = [
            ("alertname", "HighLoad"),
            ("severity", "critical"),
            ("instance", "web1:9100"),
        ];
        let firing = alert(Status::Firing, "fp1", &labels, T);
        let applied = apply_all(&db, std::slice::from_ref(&firing), NOW);
        assert_eq!(applied.summary, summary(1, 0, 0, 0));
        assert_eq!(applied.opened_rules, ["HighLoad"]);
        // Alertmanager repeats a firing alert: nothing changes.
        assert_eq!(
            run(&db, std::slice::from_ref(&firing), NOW),
            summary(0, 0, 0, 1)
        );
        let inc = incident(&db, "fp1");
        assert_eq!(inc.origin, "alertmanager");
        assert_eq!(inc.rule, "HighLoad");
        assert_eq!(inc.priority, 1);
        assert_eq!(inc.first_breach_ms, T_MS);
        assert_eq!(inc.started_ms, T_MS);
        assert_eq!(
            inc.labels.get("severity").map(String::as_str),
            Some("critical")
        );
        assert_eq!(notifications(&db, inc.id), ["opened"]);

        let ended = "2027-01-15T07:05:00Z";
        let resolved = alert(Status::Resolved, "fp1", &labels, ended);
        let applied = apply_all(&db, std::slice::from_ref(&resolved), NOW);
        assert_eq!(applied.summary, summary(0, 0, 1, 0));
        assert_eq!(applied.resolved, [(1, 300_000)]);
        assert_eq!(
            run(&db, std::slice::from_ref(&resolved), NOW),
            summary(0, 0, 0, 1)
        );
        let inc = incident(&db, "fp1");
        assert_eq!(inc.state, records::State::Resolved);
        assert_eq!(inc.resolved_ms, Some(T_MS + 5 * MIN));
        assert_eq!(inc.resolution_code.as_deref(), Some(RESOLUTION_CODE));
        assert_eq!(notifications(&db, inc.id), ["opened", "resolved"]);

        // A new episode within reopen_within reopens it; a replay of the old one does not.
        assert_eq!(
            run(&db, std::slice::from_ref(&firing), NOW),
            summary(0, 0, 0, 1)
        );
        let again = alert(Status::Firing, "fp1", &labels, "2027-01-15T07:20:00Z");
        assert_eq!(run(&db, &[again], NOW), summary(0, 1, 0, 0));
        let inc = incident(&db, "fp1");
        assert_eq!((inc.state, inc.reopen_count), (records::State::Open, 1));
        assert_eq!(
            notifications(&db, inc.id),
            ["opened", "resolved", "reopened"]
        );
        // Resolved for an unknown fingerprint: nothing to do.
        let unknown = alert(Status::Resolved, "nope", &labels, ended);
        assert_eq!(run(&db, &[unknown], NOW), summary(0, 0, 0, 1));
    }

    #[test]
    fn hosts_attach_by_instance_host_or_address() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let db = store(tmp.path());
        let host_ci: i64 = db
            .conn()
            .query_row(
                "SELECT id FROM cis WHERE agent_id = 'a1' AND type = 'host'",
                [],
                |r| r.get(0),
            )
            .expect("host ci");
        let check = |fp: &str, labels: &[(&str, &str)], want: Option<(&str, Option<i64>)>| {
            let a = alert(Status::Firing, fp, labels, T);
            assert_eq!(run(&db, &[a], NOW), summary(1, 0, 0, 0), "{labels:?}");
            let inc = incident(&db, fp);
            let got = inc.agent_id.as_deref().map(|a| (a, inc.ci_id));
            assert_eq!(got, want, "{labels:?}");
            let (ty, key) = match want {
                Some(_) => ("host", "host"),
                None => ("alert", fp),
            };
            assert_eq!(
                (inc.ci_type.as_str(), inc.ci_key.as_str()),
                (ty, key),
                "{labels:?}"
            );
        };
        check(
            "i1",
            &[("instance", "web1:9100")],
            Some(("a1", Some(host_ci))),
        );
        check(
            "i2",
            &[("instance", "WEB1.example.com:9100")],
            Some(("a1", Some(host_ci))),
        );
        check("i3", &[("host", "web1")], Some(("a1", Some(host_ci))));
        check("i4", &[("instance", "db1:9100")], Some(("a2", None)));
        check("i5", &[("instance", "db1.example.com")], Some(("a2", None)));
        check(
            "i6",
            &[("instance", "10.1.2.3:9100")],
            Some(("a1", Some(host_ci))),
        );
        check(
            "i7",
            &[("instance", "other:9100"), ("host", "web1")],
            Some(("a1", Some(host_ci))),
        );
        check("i8", &[("instance", "gone:9100")], None);
        check("i9", &[("instance", "127.0.0.1:9100")], None);
        check("i10", &[("instance", "10.9.9.9:9100")], None);
        check("i11", &[("instance", "web10:9100")], None);
        check("i12", &[("job", "node")], None);
    }

    #[test]
    fn an_unreachable_host_or_a_maintenance_window_suppresses() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let db = store(tmp.path());
        let labels = BTreeMap::new();
        let parent = in_tx(db.conn(), |c| {
            Lifecycle::new(c, &[], NOW).open(
                &Opening {
                    dedup_key: "host-unreachable|a1|host|host",
                    rule: HOST_UNREACHABLE,
                    origin: Origin::Rule,
                    agent_id: Some("a1"),
                    ci_id: None,
                    ci_type: "host",
                    ci_key: "host",
                    title: "web1 unreachable",
                    impact: crate::incidents::rule::Level::High,
                    urgency: crate::incidents::rule::Level::High,
                    metric: Some("up"),
                    op: Some("<"),
                    threshold: Some(1.0),
                    value: Some(0.0),
                    peak: Some(0.0),
                    first_breach_ms: T_MS,
                    at_ms: T_MS,
                    labels: &labels,
                    flapping: false,
                    suppression: None,
                    probable_cause_id: None,
                },
                DEFAULT_REOPEN_WITHIN_MS,
                None,
            )
        })
        .expect("parent");
        let (Opened::New { id: parent_id, .. }, _) = parent else {
            panic!("{parent:?}");
        };
        let on_web1 = [("alertname", "Down"), ("instance", "web1:9100")];
        run(&db, &[alert(Status::Firing, "s1", &on_web1, T)], NOW);
        let child = incident(&db, "s1");
        assert_eq!(
            (child.suppressed.as_deref(), child.parent_id),
            (Some("parent"), Some(parent_id))
        );
        assert!(!child.announced);
        assert!(notifications(&db, child.id).is_empty());
        // Its resolve is not notified either, and the cleared symptom is closed.
        run(&db, &[alert(Status::Resolved, "s1", &on_web1, T)], NOW);
        let child = incident(&db, "s1");
        assert_eq!(child.state, records::State::Closed);
        assert!(notifications(&db, child.id).is_empty());

        // Another host: not suppressed.
        let on_db1 = [("alertname", "Down"), ("instance", "db1:9100")];
        run(&db, &[alert(Status::Firing, "s2", &on_db1, T)], NOW);
        assert!(!incident(&db, "s2").is_suppressed());

        // A maintenance window on db* hosts covers db1's next alert, not a host-less one.
        let scope = Scope {
            host: Some(glob::Pattern::new("db*").expect("glob")),
            ..Scope::default()
        };
        maintenance::create(db.conn(), "patch", &scope, T_MS - MIN, 3_600_000, None, NOW)
            .expect("window");
        run(&db, &[alert(Status::Firing, "s3", &on_db1, T)], NOW);
        let m = incident(&db, "s3");
        assert_eq!(
            (m.suppressed.as_deref(), m.maintenance.as_deref()),
            (Some("maintenance"), Some("patch"))
        );
        assert!(notifications(&db, m.id).is_empty());
        run(
            &db,
            &[alert(Status::Firing, "s4", &[("alertname", "X")], T)],
            NOW,
        );
        assert!(!incident(&db, "s4").is_suppressed());
    }

    /// A fingerprint alternating across requests flaps as an engine series does: once it flaps
    /// its incident stays open (marked flapping) instead of resolving and reopening with every
    /// alternation, and resolves once it has been resolved steadily for a window.
    #[test]
    fn a_fingerprint_flapping_across_requests_holds_its_incident_open() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let db = store(tmp.path());
        let flaps = crate::incidents::alert_flaps::AlertFlaps::default();
        let mut total = Summary::default();
        let send = |total: &mut Summary, status: Status, i: i64| {
            let at = format!("2027-01-01T00:{:02}:{:02}Z", i / 60, i % 60);
            let a = alert(status, "flap", &[], &at);
            let flap = [flaps.observe(&a.dedup_key, status == Status::Firing, a.at_ms)];
            let got = in_tx(db.conn(), |c| {
                apply_flapping(c, &[hook()], &[a], &flap, DEFAULT_REOPEN_WITHIN_MS, NOW + i)
            })
            .expect("apply")
            .summary;
            total.opened += got.opened;
            total.reopened += got.reopened;
            total.resolved += got.resolved;
            total.flapping += got.flapping;
        };
        for i in 0..40 {
            send(
                &mut total,
                if i % 2 == 0 {
                    Status::Firing
                } else {
                    Status::Resolved
                },
                i,
            );
        }
        let inc = incident(&db, "flap");
        assert_eq!(
            inc.state,
            crate::incidents::records::State::Open,
            "{total:?}"
        );
        assert!(inc.flapping, "marked flapping");
        assert_eq!(total.opened, 1);
        // A few alternations before flapping starts, then every resolve is held back.
        assert!(total.resolved + total.reopened <= 6, "{total:?}");
        assert!(total.flapping >= 15, "{total:?}");
        let sent = notifications(&db, inc.id).len();
        assert!(sent <= 10, "{sent} notifications for 40 alternations");
        // Steadily resolved: flapping stops, and the incident resolves.
        for i in 40..80 {
            send(&mut total, Status::Resolved, i);
        }
        let inc = incident(&db, "flap");
        assert_eq!(
            inc.state,
            crate::incidents::records::State::Resolved,
            "{total:?}"
        );
        assert!(!inc.flapping);
    }

    #[test]
    fn problems_are_counted_not_fatal() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let db = store(tmp.path());
        let alerts = [
            alert(Status::Firing, "p1", &[], "yesterday"),
            alert(Status::Firing, "p2", &[], T),
        ];
        let got = run(&db, &alerts, NOW);
        assert_eq!(
            (got.received, got.opened, got.problems),
            (2, 2, 1),
            "{got:?}"
        );
        assert_eq!(incident(&db, "p1").started_ms, NOW);
    }

    // ---- over HTTP ----

    struct Server {
        addr: std::net::SocketAddr,
        _tmp: tempfile::TempDir,
        operator: String,
        viewer: String,
    }

    async fn server() -> Server {
        let tmp = tempfile::tempdir().expect("tempdir");
        let db = store(tmp.path());
        let (_, operator) = db
            .create_api_token(Role::Operator, "am", 1_000)
            .expect("operator");
        let (_, viewer) = db
            .create_api_token(Role::Viewer, "ro", 1_000)
            .expect("viewer");
        let state = HttpState::new(tmp.path().to_owned(), Arc::new(String::new), {
            let s = crate::supervise::Supervisor::new();
            s.set_ready();
            s
        })
        .expect("state");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(super::super::serve(
            listener,
            super::super::router(state),
            std::future::pending(),
        ));
        Server {
            addr,
            _tmp: tmp,
            operator,
            viewer,
        }
    }

    /// `(status, JSON body)` of a POST with `body`.
    async fn post(s: &Server, token: Option<&str>, body: &[u8]) -> (u16, serde_json::Value) {
        let mut stream = tokio::net::TcpStream::connect(s.addr)
            .await
            .expect("connect");
        let auth = token
            .map(|t| format!("Authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        let head = format!(
            "POST /api/v1/alertmanager HTTP/1.1\r\nHost: t\r\n{auth}Content-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        stream.write_all(head.as_bytes()).await.expect("write");
        // A server that refuses early may close before reading the whole body.
        let _ = stream.write_all(body).await;
        let mut raw = Vec::new();
        let _ = stream.read_to_end(&mut raw).await;
        let text = String::from_utf8_lossy(&raw);
        let (head, body) = text.split_once("\r\n\r\n").expect("head/body");
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .expect("status");
        (
            status,
            serde_json::from_str(body).unwrap_or(serde_json::Value::Null),
        )
    }

    #[tokio::test]
    async fn http_answers() {
        const T: &str = "2024-05-01T12:00:00Z";
        let s = server().await;
        let op = Some(s.operator.as_str());
        let ok = format!(
            r#"{{"version":"4","status":"firing","receiver":"vigil","groupKey":"k","alerts":[
                {{"status":"firing","labels":{{"alertname":"A","severity":"warning","instance":"web1:9100"}},
                  "annotations":{{}},"startsAt":"{T}","endsAt":"0001-01-01T00:00:00Z",
                  "generatorURL":"","fingerprint":"h1"}},
                {{"status":"resolved","labels":{{"alertname":"B"}},"annotations":{{}},
                  "startsAt":"{T}","endsAt":"{T}","fingerprint":"h2"}}]}}"#
        );
        let check = |got: (u16, serde_json::Value), status: u16, code: &str| {
            assert_eq!(got.0, status, "{}", got.1);
            assert_eq!(got.1["code"], code, "{}", got.1);
            assert!(got.1["error"].is_string(), "{}", got.1);
        };
        check(post(&s, None, ok.as_bytes()).await, 401, "unauthorized");
        check(
            post(&s, Some("vgl_x_y"), ok.as_bytes()).await,
            401,
            "unauthorized",
        );
        check(
            post(&s, Some(&s.viewer), ok.as_bytes()).await,
            403,
            "forbidden",
        );
        check(post(&s, op, b"{not json").await, 400, "bad_request");
        check(
            post(&s, op, br#"{"version":"3","alerts":[]}"#).await,
            422,
            "unprocessable",
        );
        check(
            post(&s, op, br#"{"version":"4"}"#).await,
            422,
            "unprocessable",
        );
        check(
            post(
                &s,
                op,
                br#"{"version":"4","alerts":[{"status":"firing","labels":{}}]}"#,
            )
            .await,
            422,
            "unprocessable",
        );
        let big = format!(
            r#"{{"version":"4","alerts":[],"pad":"{}"}}"#,
            "x".repeat(MAX_BODY_BYTES)
        );
        check(post(&s, op, big.as_bytes()).await, 413, "payload_too_large");

        let (status, body) = post(&s, op, ok.as_bytes()).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(
            body,
            serde_json::json!({"received": 2, "superseded": 0, "opened": 1, "reopened": 0,
                               "resolved": 0, "unchanged": 1, "flapping": 0, "problems": 0})
        );
        let (status, body) = post(&s, op, ok.as_bytes()).await;
        assert_eq!(
            (status, &body["unchanged"]),
            (200, &serde_json::json!(2)),
            "{body}"
        );
    }

    /// One payload alternating a fingerprint 2,000 times is one state, not 2,000 changes: one
    /// incident, opened once (it took 84,006 webhook deliveries for 14,000 alternations).
    #[tokio::test]
    async fn one_payload_cannot_flap_an_incident() {
        let s = server().await;
        let alerts: Vec<serde_json::Value> = (0..2000)
            .map(|i| {
                let status = if i % 2 == 0 { "resolved" } else { "firing" };
                serde_json::json!({
                    "status": status, "labels": {"alertname": "Flap"}, "annotations": {},
                    "startsAt": "2024-05-01T12:00:00Z", "endsAt": "2024-05-01T12:00:01Z",
                    "fingerprint": "f1"
                })
            })
            .collect();
        let body = serde_json::json!({"version": "4", "status": "firing", "alerts": alerts});
        let (status, got) = post(&s, Some(&s.operator), body.to_string().as_bytes()).await;
        assert_eq!(status, 200, "{got}");
        assert_eq!(
            (
                &got["received"],
                &got["superseded"],
                &got["opened"],
                &got["resolved"]
            ),
            (
                &serde_json::json!(2000),
                &serde_json::json!(1999),
                &serde_json::json!(1),
                &serde_json::json!(0)
            ),
            "{got}"
        );
    }
}
