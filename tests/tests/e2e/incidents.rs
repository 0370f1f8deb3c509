//! Incidents end to end with the real binaries: a `tcp` check on a port this test listens on
//! opens and resolves an incident by itself, a signed webhook receives open and resolve once
//! each; killing the agent opens `host-unreachable` with the check incident as its suppressed
//! symptom, and restarting it resolves both; operator actions through the API and their errors;
//! a notification queued while the receiver is down is delivered once after a collector
//! restart.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;

use crate::harness::*;

const SECRET: &str = "e2e-webhook-secret";

/// One request the receiver got.
#[derive(Debug, Clone)]
pub(crate) struct Received {
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Received {
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("webhook body is JSON")
    }
}

/// A minimal HTTP/1.1 webhook receiver on loopback: records every POST and answers with the
/// status in `status` (so a test can make it fail).
pub(crate) struct Receiver {
    addr: SocketAddr,
    got: Arc<Mutex<Vec<Received>>>,
    status: Arc<AtomicU16>,
    stop: Arc<AtomicBool>,
}

impl Receiver {
    pub(crate) fn start() -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind receiver");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("addr");
        let got = Arc::new(Mutex::new(Vec::new()));
        let status = Arc::new(AtomicU16::new(200));
        let stop = Arc::new(AtomicBool::new(false));
        let (g, s, st) = (got.clone(), status.clone(), stop.clone());
        std::thread::spawn(move || {
            while !st.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((conn, _)) => {
                        let _ = serve(conn, &g, s.load(Ordering::Relaxed));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        Receiver {
            addr,
            got,
            status,
            stop,
        }
    }

    pub(crate) fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    pub(crate) fn received(&self) -> Vec<Received> {
        self.got.lock().expect("lock").clone()
    }

    /// Received (2xx-answered) events for incident `id`, in order.
    fn events_for(&self, id: i64) -> Vec<String> {
        self.received()
            .iter()
            .filter(|r| r.json()["incident"]["id"] == id)
            .map(|r| r.json()["event"].as_str().unwrap_or("").to_string())
            .collect()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn serve(conn: TcpStream, got: &Mutex<Vec<Received>>, status: u16) -> std::io::Result<()> {
    conn.set_nonblocking(false)?;
    conn.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut headers = Vec::new();
    let mut len = 0usize;
    loop {
        let mut h = String::new();
        reader.read_line(&mut h)?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            let (k, v) = (k.trim().to_string(), v.trim().to_string());
            if k.eq_ignore_ascii_case("content-length") {
                len = v.parse().unwrap_or(0);
            }
            headers.push((k, v));
        }
    }
    let mut body = vec![0; len];
    reader.read_exact(&mut body)?;
    if (200..300).contains(&status) {
        got.lock().expect("lock").push(Received { headers, body });
    }
    let mut out = conn;
    write!(
        out,
        "HTTP/1.1 {status} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )?;
    out.flush()
}

fn verify_signature(r: &Received) {
    let sig = r
        .header("X-Vigil-Signature")
        .expect("signature header")
        .strip_prefix("sha256=")
        .expect("sha256= prefix")
        .to_string();
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).expect("key");
    mac.update(&r.body);
    let want = hex::encode(mac.finalize().into_bytes());
    assert_eq!(
        sig,
        want,
        "signature of {}",
        String::from_utf8_lossy(&r.body)
    );
    assert!(r.header("Idempotency-Key").is_some());
}

fn agent_config(
    dir: &Path,
    collector: SocketAddr,
    token: &str,
    check_port: u16,
) -> std::path::PathBuf {
    std::fs::create_dir_all(dir).expect("agent dir");
    let path = dir.join("agent.toml");
    std::fs::write(
        &path,
        format!(
            "collector = \"{collector}\"\ntoken = \"{token}\"\ndata_dir = {:?}\n\
             [metrics]\ninterval = \"1s\"\n\
             [[check]]\nname = \"app\"\ntype = \"tcp\"\ntarget = \"127.0.0.1:{check_port}\"\n",
            dir.display().to_string()
        ),
    )
    .expect("write agent config");
    path
}

fn collector_extra(receiver: &Receiver) -> String {
    format!(
        "[agents]\ndown_after_intervals = 3\n\
         [[webhook]]\nname = \"ops\"\nurl = \"{}\"\nsecret = \"{SECRET}\"\n\
         [[rule]]\nname = \"check-down\"\nmetric = \"check_up\"\nbelow = 1\nfor = \"2s\"\n\
         impact = \"medium\"\nurgency = \"high\"\n[rule.scope]\ntype = \"check\"\n",
        receiver.url()
    )
}

#[test]
fn a_failing_check_opens_and_resolves_an_incident_and_a_dead_agent_suppresses_it() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let receiver = Receiver::start();
    let any: SocketAddr = "127.0.0.1:0".parse().expect("addr");
    let c = spawn_collector_with(
        &tmp.path().join("collector"),
        any,
        any,
        &collector_extra(&receiver),
    );
    let token = enroll_token(&c.data_dir, &[]);
    let api = api_token(&c.data_dir, "operator");

    // The service the check watches.
    let service = TcpListener::bind("127.0.0.1:0").expect("bind service");
    let port = service.local_addr().expect("addr").port();
    let agent_dir = tmp.path().join("agent");
    let config = agent_config(&agent_dir, c.quic, &token, port);
    let mut agent = spawn_agent_config(&config, &agent_dir);
    wait_until(Duration::from_secs(30), "check_up 1", || {
        metrics(&c)
            .lines()
            .find(|l| l.starts_with("vigil_check_up{") && l.contains("check=\"app\""))
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .filter(|v| *v == 1.0)
    });

    // Stop listening: the check fails; after `for` (2 s) an incident opens.
    drop(service);
    let opened = wait_incident(&c, &api, "rule=check-down", "check-down incident", |i| {
        i["state"] == "open"
    });
    let id = opened["id"].as_i64().expect("id");
    assert_eq!(opened["priority"], "P2", "{opened}");
    assert_eq!(opened["ci"]["type"], "check");
    assert_eq!(opened["ci"]["key"], "app");
    assert_eq!(opened["trigger_value"], 0.0);
    assert!(opened["suppressed"].is_null(), "{opened}");
    assert!(
        opened["last_breach_ms"].as_i64() >= opened["first_breach_ms"].as_i64(),
        "{opened}"
    );
    let first = opened["first_breach_ms"].as_i64().expect("first breach");
    let created = opened["created_ms"].as_i64().expect("created");
    assert!(
        created - first >= 2_000,
        "opened {} ms after the first breach, before `for`",
        created - first
    );

    // Listen again: resolved by the system.
    let service = TcpListener::bind(("127.0.0.1", port)).expect("listen again");
    let resolved = wait_incident(&c, &api, "rule=check-down", "check-down resolved", |i| {
        i["id"] == id && i["state"] == "resolved"
    });
    assert_eq!(resolved["resolution"]["by"], "system", "{resolved}");
    wait_until(
        Duration::from_secs(20),
        "open and resolve delivered",
        || (receiver.events_for(id) == ["opened", "resolved"]).then_some(()),
    );
    for r in receiver.received() {
        verify_signature(&r);
    }

    // Operator actions on a resolved incident: acknowledging is illegal now.
    let base = format!("http://{}/api/v1/incidents", c.http);
    let (status, body) = http_json("POST", &format!("{base}/{id}/acknowledge"), &api, None);
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["code"], "illegal_transition");
    assert_eq!(body["state"], "resolved");
    assert_eq!(body["allowed"], serde_json::json!(["comment", "close"]));
    let (status, body) = http_json("POST", &format!("{base}/999999/acknowledge"), &api, None);
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["code"], "not_found");
    let (status, body) = http_json(
        "POST",
        &format!("{base}/{id}/comment"),
        &api,
        Some("{not json"),
    );
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["code"], "bad_request");
    let (status, body) = http_json(
        "POST",
        &format!("{base}/{id}/comment"),
        &api,
        Some(r#"{"txt": "x"}"#),
    );
    assert_eq!(status, 422, "{body}");
    let (status, body) = http_json(
        "POST",
        &format!("{base}/{id}/comment"),
        &api,
        Some(r#"{"text": "looked at it"}"#),
    );
    assert_eq!(status, 200, "{body}");
    let viewer = api_token(&c.data_dir, "viewer");
    let (status, _) = http_json("POST", &format!("{base}/{id}/close"), &viewer, None);
    assert_eq!(status, 403);

    // The check fails again within reopen_within: the same incident reopens.
    drop(service);
    let reopened = wait_incident(&c, &api, "rule=check-down", "check-down reopened", |i| {
        i["id"] == id && i["state"] == "open"
    });
    assert_eq!(reopened["reopen_count"], 1, "{reopened}");

    // An operator acknowledges and assigns it.
    let (status, body) = http_json(
        "POST",
        &format!("{base}/{id}/acknowledge"),
        &api,
        Some(r#"{"note": "on it"}"#),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["state"], "acknowledged");
    let (status, body) = http_json(
        "POST",
        &format!("{base}/{id}/assign"),
        &api,
        Some(r#"{"assignee": "team-db"}"#),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["assignee"], "team-db");

    // Kill the agent: the host is unreachable after 3 silent intervals; the check incident
    // becomes its suppressed symptom.
    agent.kill();
    let host = wait_incident(&c, &api, "rule=host-unreachable", "host-unreachable", |i| {
        i["state"] == "open"
    });
    let host_id = host["id"].as_i64().expect("id");
    assert_eq!(host["priority"], "P1");
    let child = wait_until(Duration::from_secs(10), "check incident suppressed", || {
        let d = api_get(&c, &api, &format!("/incidents/{id}"));
        (d["suppressed"]["parent_id"] == host_id).then_some(d)
    });
    assert_eq!(child["suppressed"]["reason"], "parent");
    let parent = api_get(&c, &api, &format!("/incidents/{host_id}"));
    assert_eq!(parent["children"][0]["id"], id, "{parent}");

    // Service back, agent back: both resolve by themselves.
    let _service = TcpListener::bind(("127.0.0.1", port)).expect("listen again");
    let mut agent = spawn_agent_config(&config, &agent_dir);
    wait_incident(&c, &api, "rule=host-unreachable", "host resolved", |i| {
        i["id"] == host_id && i["state"] == "resolved"
    });
    let child = wait_incident(&c, &api, "rule=check-down", "symptom cleared", |i| {
        i["id"] == id && matches!(i["state"].as_str(), Some("resolved" | "closed"))
    });
    assert_eq!(child["resolution"]["by"], "system", "{child}");

    // Notifications: the check's open, resolve, reopen, acknowledge and its final resolve; the
    // host's open and resolve. Each once, signed.
    wait_until(Duration::from_secs(20), "all notifications", || {
        (receiver.events_for(host_id) == ["opened", "resolved"]).then_some(())
    });
    wait_until(Duration::from_secs(20), "check notifications", || {
        (receiver.events_for(id) == ["opened", "resolved", "reopened", "acknowledged", "resolved"])
            .then_some(())
    });
    for r in receiver.received() {
        verify_signature(&r);
    }
    let detail = api_get(&c, &api, &format!("/incidents/{id}"));
    let kinds = timeline_kinds(&detail);
    for want in [
        "opened",
        "resolved",
        "commented",
        "reopened",
        "acknowledged",
        "assigned",
        "suppressed",
    ] {
        assert!(kinds.contains(&want), "timeline lacks {want}: {kinds:?}");
    }

    let m = metrics(&c);
    assert!(
        metric_value(&m, "vigil_incidents_opened_total{rule=\"check-down\"}")
            .is_some_and(|v| v >= 1.0),
        "{m}"
    );
    // One acknowledgement, observed under the incident's priority and no other.
    let acks: Vec<&str> = m
        .lines()
        .filter(|l| l.starts_with("vigil_incident_acknowledge_seconds_count{"))
        .filter(|l| !l.ends_with(" 0"))
        .collect();
    assert_eq!(
        acks,
        ["vigil_incident_acknowledge_seconds_count{priority=\"P2\"} 1"],
        "{m}"
    );
    promtool_check(&m).expect("promtool");
    agent.terminate(Duration::from_secs(10));
}

#[test]
fn a_notification_queued_while_the_receiver_is_down_is_delivered_once_after_a_restart() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let receiver = Receiver::start();
    receiver.status.store(503, Ordering::Relaxed);
    let any: SocketAddr = "127.0.0.1:0".parse().expect("addr");
    let dir = tmp.path().join("collector");
    let extra = collector_extra(&receiver);
    let mut c = spawn_collector_with(&dir, any, any, &extra);
    let token = enroll_token(&c.data_dir, &[]);
    let api = api_token(&c.data_dir, "operator");

    // A check on a port nobody listens on: the incident opens; its notification fails.
    let port = TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let agent_dir = tmp.path().join("agent");
    let mut agent = spawn_agent_config(&agent_config(&agent_dir, c.quic, &token, port), &agent_dir);
    let inc = wait_incident(&c, &api, "rule=check-down", "check-down incident", |i| {
        i["state"] == "open"
    });
    let id = inc["id"].as_i64().expect("id");
    wait_until(Duration::from_secs(20), "a failed attempt", || {
        let d = api_get(&c, &api, &format!("/incidents/{id}"));
        d["notifications"][0]["attempts"]
            .as_i64()
            .filter(|n| *n >= 1)
    });
    agent.terminate(Duration::from_secs(10));
    let (quic, http) = (c.quic, c.http);
    c.proc.terminate(Duration::from_secs(20));
    assert!(receiver.received().is_empty());

    // The receiver comes back, then the collector: the queued notification goes out, once.
    receiver.status.store(200, Ordering::Relaxed);
    let c = spawn_collector_with(&dir, quic, http, &extra);
    wait_until(Duration::from_secs(30), "delivery after restart", || {
        (receiver.events_for(id) == ["opened"]).then_some(())
    });
    // A later notification of the same incident, delivered after it (the outbox goes in
    // order): had the first one gone out twice, both copies would come before this one.
    let (status, body) = api_post(
        &c,
        &api,
        &format!("/incidents/{id}/acknowledge"),
        &serde_json::json!({}),
    );
    assert_eq!(status, 200, "{body}");
    wait_until(
        Duration::from_secs(30),
        "the acknowledgement delivered",
        || (receiver.events_for(id).len() >= 2).then_some(()),
    );
    assert_eq!(
        receiver.events_for(id),
        ["opened", "acknowledged"],
        "delivered more than once"
    );
    let r = &receiver.received()[0];
    verify_signature(r);
    let d = api_get(&c, &api, &format!("/incidents/{id}"));
    assert!(d["notifications"][0]["delivered_ms"].is_i64(), "{d}");
}

#[test]
fn rules_and_maintenance_windows_through_the_api() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let receiver = Receiver::start();
    let any: SocketAddr = "127.0.0.1:0".parse().expect("addr");
    let c = spawn_collector_with(
        &tmp.path().join("collector"),
        any,
        any,
        &collector_extra(&receiver),
    );
    let admin = api_token(&c.data_dir, "admin");
    let operator = api_token(&c.data_dir, "operator");
    let api = format!("http://{}/api/v1", c.http);

    // Rules: an API rule is checked like the configuration and listed with its origin.
    let (status, body) = http_json(
        "POST",
        &format!("{api}/rules"),
        &admin,
        Some(
            r#"{"name": "api-checks", "metric": "check_up", "below": 1, "for": "1s", "impact": "low", "urgency": "low", "scope": {"type": "check"}}"#,
        ),
    );
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["priority"], "P5");
    let (status, body) = http_json(
        "POST",
        &format!("{api}/rules"),
        &operator,
        Some(r#"{"name": "x"}"#),
    );
    assert_eq!(status, 403, "{body}");
    let (status, body) = http_json(
        "POST",
        &format!("{api}/rules"),
        &admin,
        Some(r#"{"name": "bad", "metric": "cpu", "above": 1, "clear": 2}"#),
    );
    assert_eq!(status, 422, "{body}");
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|e| e.contains("unknown metric")),
        "{body}"
    );
    let (status, body) = http_json(
        "POST",
        &format!("{api}/rules"),
        &admin,
        Some(r#"{"name": "check-down", "metric": "check_up", "below": 1}"#),
    );
    assert_eq!(status, 409, "{body}");
    let rules = api_get(&c, &operator, "/rules");
    let origin = |name: &str| {
        rules
            .as_array()
            .and_then(|a| a.iter().find(|r| r["name"] == name))
            .map(|r| r["origin"].clone())
    };
    assert_eq!(origin("api-checks"), Some(Value::from("api")));
    assert_eq!(origin("check-down"), Some(Value::from("config")));
    assert_eq!(origin("host-unreachable"), Some(Value::from("builtin")));

    // A maintenance window over this agent's host: its failing check opens suppressed incidents
    // and nothing is notified.
    let an_hour_ago = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as i64
        - 3_600_000;
    let body = format!(
        r#"{{"name": "patching", "scope": {{"host": "maint-*"}}, "start": {an_hour_ago}, "duration": "2h"}}"#
    );
    let (status, window) = http_json(
        "POST",
        &format!("{api}/maintenance"),
        &operator,
        Some(&body),
    );
    assert_eq!(status, 201, "{window}");
    assert_eq!(window["active_now"], true, "{window}");
    let (status, body) = http_json(
        "POST",
        &format!("{api}/maintenance"),
        &operator,
        Some(r#"{"name": "bad", "start": "soon", "duration": "1h"}"#),
    );
    assert_eq!(status, 422, "{body}");

    let token = enroll_token(&c.data_dir, &[]);
    let port = TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let agent_dir = tmp.path().join("agent");
    let config = agent_config(&agent_dir, c.quic, &token, port);
    let text = std::fs::read_to_string(&config).expect("config");
    std::fs::write(&config, format!("hostname = \"maint-web-1\"\n{text}")).expect("config");
    let mut agent = spawn_agent_config(&config, &agent_dir);
    for rule in ["check-down", "api-checks"] {
        let inc = wait_incident(
            &c,
            &operator,
            &format!("rule={rule}"),
            "a suppressed incident",
            |i| i["state"] == "open",
        );
        assert_eq!(inc["suppressed"]["reason"], "maintenance", "{inc}");
        assert_eq!(inc["suppressed"]["maintenance"], "patching", "{inc}");
    }
    assert!(
        receiver.received().is_empty(),
        "suppressed incidents were notified"
    );

    // Deleting the API rule resolves its incident; the window can be deleted, once.
    let (status, _) = http_json("DELETE", &format!("{api}/rules/api-checks"), &admin, None);
    assert_eq!(status, 204);
    let (status, _) = http_json("DELETE", &format!("{api}/rules/api-checks"), &admin, None);
    assert_eq!(status, 404);
    let gone = wait_incident(&c, &operator, "rule=api-checks", "rule_deleted", |i| {
        i["state"] == "resolved"
    });
    assert_eq!(gone["resolution"]["code"], "rule_deleted", "{gone}");
    let id = window["id"].as_i64().expect("id");
    let (status, body) = http_json(
        "DELETE",
        &format!("{api}/maintenance/{id}"),
        &operator,
        None,
    );
    assert_eq!(status, 200, "{body}");
    let (status, _) = http_json(
        "DELETE",
        &format!("{api}/maintenance/{id}"),
        &operator,
        None,
    );
    assert_eq!(status, 409);
    // The window is gone: the check-down incident (the check still fails) is no longer
    // suppressed and is announced now; the api-checks one, resolved while suppressed, never
    // was. The first notification the receiver ever got is that announcement: nothing was
    // notified while the window suppressed them.
    let check = wait_incident(
        &c,
        &operator,
        "rule=check-down",
        "check-down no longer suppressed",
        |i| i["state"] == "open" && i["suppressed"].is_null(),
    );
    wait_until(Duration::from_secs(30), "the announcement", || {
        (!receiver.received().is_empty()).then_some(())
    });
    let first = receiver.received()[0].json();
    assert_eq!(
        (&first["event"], &first["incident"]["id"]),
        (&Value::from("opened"), &check["id"]),
        "{first}"
    );
    assert!(receiver
        .events_for(gone["id"].as_i64().expect("id"))
        .is_empty());
    let kept = api_get(&c, &operator, "/maintenance?deleted=true");
    assert!(
        kept[0]["deleted_ms"].is_i64(),
        "deleted windows are kept: {kept}"
    );
    agent.terminate(Duration::from_secs(10));
}
