//! The Alertmanager receiver end to end with the real `alertmanager` (Debian package
//! `prometheus-alertmanager`): an alert posted to Alertmanager's API reaches
//! `POST /api/v1/alertmanager` through a webhook receiver with an operator bearer token, opens an
//! incident attached to the enrolled agent named by its `instance` label (P1 from
//! `severity=critical`), and resolving it in Alertmanager resolves the incident. An alert on an
//! unknown host opens a host-less incident.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};
use vigil_shared::time::format_rfc3339_ms;

use crate::harness::*;

const HOSTNAME: &str = "am-e2e-web1";

/// The Alertmanager binary: Debian installs it as `prometheus-alertmanager`.
fn alertmanager_bin() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for name in ["prometheus-alertmanager", "alertmanager"] {
        for dir in std::env::split_paths(&path) {
            let candidate = dir.join(name);
            if candidate.is_file() {
                return candidate;
            }
        }
    }
    panic!(
        "Alertmanager is not installed (neither `prometheus-alertmanager` nor `alertmanager` on \
         PATH): install the Debian package prometheus-alertmanager (test.sh does)"
    );
}

/// Starts Alertmanager on loopback (clustering off) with one webhook receiver pointing at the
/// collector; returns the process and its base URL once `/-/ready` answers.
fn spawn_alertmanager(dir: &Path, collector: SocketAddr, token: &str) -> (Proc, String) {
    std::fs::create_dir_all(dir.join("data")).expect("alertmanager dir");
    let config = dir.join("alertmanager.yml");
    std::fs::write(
        &config,
        format!(
            "route:\n  receiver: vigil\n  group_by: ['alertname']\n  group_wait: 1s\n  \
             group_interval: 1s\n  repeat_interval: 1h\n\
             receivers:\n  - name: vigil\n    webhook_configs:\n      \
             - url: http://{collector}/api/v1/alertmanager\n        send_resolved: true\n        \
             http_config:\n          authorization:\n            credentials: {token}\n"
        ),
    )
    .expect("write alertmanager.yml");
    let (am, port) = spawn_on_free_port(
        "alertmanager",
        &dir.join("alertmanager.log"),
        |port| {
            let mut cmd = Command::new(alertmanager_bin());
            cmd.arg(format!("--config.file={}", config.display()))
                .arg(format!("--storage.path={}", dir.join("data").display()))
                .arg(format!("--web.listen-address=127.0.0.1:{port}"))
                .arg("--cluster.listen-address=")
                .stdout(Stdio::null());
            cmd
        },
        |port| http_get(&format!("http://127.0.0.1:{port}/-/ready"), None).0 == 200,
    );
    let base = format!("http://127.0.0.1:{port}");
    (am, base)
}

/// Posts alerts to Alertmanager's v2 API.
fn post_alerts(am: &str, alerts: Value) {
    let (status, body) = http(
        "POST",
        &format!("{am}/api/v2/alerts"),
        None,
        Some(&alerts.to_string()),
    );
    assert_eq!(status, 200, "POST /api/v2/alerts: {body}");
}

/// The incident of `rule` once `pred` holds for it (one incident per alert, ever).
fn incident_when(
    c: &Collector,
    token: &str,
    rule: &str,
    what: &str,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    let inc = wait_incident(c, token, &format!("rule={rule}"), what, pred);
    let all = incidents(c, token, &format!("rule={rule}"));
    assert_eq!(all.len(), 1, "one incident per alert: {all:?}");
    inc
}

#[test]
fn an_alert_through_the_real_alertmanager_opens_and_resolves_an_incident() {
    // Fail first, and clearly, when Alertmanager is missing.
    alertmanager_bin();
    let tmp = tempfile::tempdir().expect("tempdir");
    let c = spawn_collector(&tmp.path().join("collector"));
    let api = api_token(&c.data_dir, "operator");

    // An enrolled agent whose host name the alert's `instance` label names.
    let agent_dir = tmp.path().join("agent");
    std::fs::create_dir_all(&agent_dir).expect("agent dir");
    let agent_config = agent_dir.join("agent.toml");
    std::fs::write(
        &agent_config,
        format!(
            "collector = \"{}\"\ntoken = \"{}\"\ndata_dir = {:?}\nhostname = \"{HOSTNAME}\"\n\
             [metrics]\ninterval = \"1s\"\n",
            c.quic,
            enroll_token(&c.data_dir, &[]),
            agent_dir.display().to_string()
        ),
    )
    .expect("agent config");
    let mut agent = spawn_agent_config(&agent_config, &agent_dir);
    let store = open_store(&c.data_dir);
    let (agent_id, host_ci) = wait_until(Duration::from_secs(60), "agent and its host CI", || {
        store
            .query_row(
                "SELECT a.id, c.id FROM agents a JOIN cis c ON c.agent_id = a.id
                 WHERE a.hostname = ?1 AND c.type = 'host' AND c.key = 'host'",
                [HOSTNAME],
                |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)),
            )
            .ok()
    });

    let (_am, am) = spawn_alertmanager(&tmp.path().join("alertmanager"), c.http, &api);

    // Two alerts fire: one on the agent's host, one on a host Vigil does not know.
    let starts = format_rfc3339_ms(now_ms() - 5_000).expect("time");
    let starts_ms = vigil_shared::time::parse_rfc3339_ms(&starts).expect("parse");
    let on_host = json!({
        "labels": {"alertname": "VigilE2EHighLoad", "severity": "critical",
                   "instance": format!("{HOSTNAME}:9100"), "job": "node"},
        "annotations": {"summary": format!("Load is high on {HOSTNAME}")},
        "startsAt": starts,
    });
    let elsewhere = json!({
        "labels": {"alertname": "VigilE2EProbeFailed", "severity": "warning",
                   "instance": "https://unknown.example:443/health"},
        "annotations": {},
        "startsAt": starts,
    });
    post_alerts(&am, json!([on_host, elsewhere]));

    let opened = incident_when(&c, &api, "VigilE2EHighLoad", "incident opened", |i| {
        i["state"] == "open"
    });
    assert_eq!(opened["origin"], "alertmanager", "{opened}");
    assert_eq!(opened["priority"], "P1", "{opened}");
    assert_eq!(opened["title"], format!("Load is high on {HOSTNAME}"));
    assert_eq!(opened["host"]["agent_id"], agent_id.as_str(), "{opened}");
    assert_eq!(opened["host"]["hostname"], HOSTNAME);
    assert_eq!(
        opened["ci"],
        json!({"id": host_ci, "type": "host", "key": "host"})
    );
    assert_eq!(opened["first_breach_ms"], starts_ms, "{opened}");
    assert_eq!(opened["labels"]["job"], "node");
    assert!(opened["suppressed"].is_null(), "{opened}");
    let id = opened["id"].as_i64().expect("id");
    let fingerprint = store
        .query_row("SELECT dedup_key FROM incidents WHERE id = ?1", [id], |r| {
            r.get::<_, String>(0)
        })
        .expect("dedup key");
    assert!(
        fingerprint.starts_with("am|") && fingerprint.len() > 3,
        "{fingerprint}"
    );

    let other = incident_when(&c, &api, "VigilE2EProbeFailed", "host-less incident", |i| {
        i["state"] == "open"
    });
    assert_eq!(other["priority"], "P3", "{other}");
    assert!(other["host"].is_null(), "{other}");
    assert_eq!(other["ci"]["type"], "alert", "{other}");
    assert_eq!(
        other["title"],
        "VigilE2EProbeFailed (instance=https://unknown.example:443/health, severity=warning)"
    );

    // Resolve the first alert in Alertmanager: the incident resolves at its endsAt.
    let ends = format_rfc3339_ms(now_ms()).expect("time");
    let ends_ms = vigil_shared::time::parse_rfc3339_ms(&ends).expect("parse");
    let mut resolved_alert = on_host.clone();
    resolved_alert["endsAt"] = json!(ends);
    post_alerts(&am, json!([resolved_alert]));
    let resolved = incident_when(&c, &api, "VigilE2EHighLoad", "incident resolved", |i| {
        i["id"] == id && i["state"] == "resolved"
    });
    assert_eq!(
        resolved["resolution"]["code"], "alertmanager_resolved",
        "{resolved}"
    );
    assert_eq!(resolved["resolved_ms"], ends_ms, "{resolved}");

    // Alertmanager keeps sending the other alert's group: it stays one open incident.
    let other_now = incident_when(&c, &api, "VigilE2EProbeFailed", "still open", |i| {
        i["state"] == "open"
    });
    assert_eq!(other_now["id"], other["id"]);
    let detail: Value = {
        let (status, body) = http_get(
            &format!("http://{}/api/v1/incidents/{id}", c.http),
            Some(&api),
        );
        assert_eq!(status, 200, "{body}");
        serde_json::from_str(&body).expect("JSON")
    };
    let kinds = timeline_kinds(&detail);
    assert_eq!(kinds, ["opened", "resolved"], "{detail}");
    agent.terminate(Duration::from_secs(10));
}
