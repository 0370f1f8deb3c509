//! Service levels end to end: an SLA made through the API, a check the test breaks for a
//! measured time, the availability the API reports against that time, a maintenance window added
//! afterwards, and data replayed after a collector outage correcting a past report.

use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use crate::harness::*;

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

const EXTRA: &str = "[agents]\ndown_after_intervals = 5\n\
     [[rule]]\nname = \"check-down\"\nmetric = \"check_up\"\nbelow = 1\nfor = \"1s\"\n\
     impact = \"high\"\nurgency = \"high\"\n[rule.scope]\ntype = \"check\"\n";

fn agent_config(dir: &Path, collector: SocketAddr, token: &str, port: u16) -> std::path::PathBuf {
    std::fs::create_dir_all(dir).expect("agent dir");
    let path = dir.join("agent.toml");
    std::fs::write(
        &path,
        format!(
            "collector = \"{collector}\"\ntoken = \"{token}\"\ndata_dir = {:?}\n\
             [metrics]\ninterval = \"1s\"\n\
             [[check]]\nname = \"app\"\ntype = \"tcp\"\ntarget = \"127.0.0.1:{port}\"\n",
            dir.display().to_string()
        ),
    )
    .expect("write agent config");
    path
}

fn check_up(c: &Collector) -> Option<f64> {
    metrics(c)
        .lines()
        .find(|l| l.starts_with("vigil_check_up{") && l.contains("check=\"app\""))
        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
}

/// Stops the listener for a measured time: `(when it stopped, how long)` in ms.
fn outage(listener: TcpListener, hold: Duration) -> (i64, i64, TcpListener) {
    let addr = listener.local_addr().expect("addr");
    let start_ms = now_ms();
    let start = Instant::now();
    drop(listener);
    std::thread::sleep(hold);
    let back = TcpListener::bind(addr).expect("bind the service again");
    (start_ms, start.elapsed().as_millis() as i64, back)
}

fn report(c: &Collector, token: &str, from: i64, to: i64) -> Value {
    api_get(c, token, &format!("/slas/app/report?from={from}&to={to}"))
}

fn down_seconds(r: &Value, kind: &str) -> f64 {
    r[kind]["down_seconds"].as_f64().unwrap_or(f64::NAN)
}

#[test]
fn availability_matches_a_measured_outage_and_is_recomputed_for_late_windows_and_replayed_data() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("collector");
    let any: SocketAddr = "127.0.0.1:0".parse().expect("addr");
    let mut c = spawn_collector_with(&dir, any, any, EXTRA);
    let admin = api_token(&c.data_dir, "admin");
    let operator = api_token(&c.data_dir, "operator");
    let api = format!("http://{}/api/v1", c.http);

    // The SLA, made through the API and checked like the configuration.
    let body = json!({"name": "app", "target": 0.99, "window": "1d",
                      "down_when": ["check-down"]});
    let (status, created) = http_json(
        "POST",
        &format!("{api}/slas"),
        &admin,
        Some(&body.to_string()),
    );
    assert_eq!(status, 201, "{created}");
    assert_eq!(
        (&created["origin"], &created["target"]),
        (&json!("api"), &json!(0.99))
    );
    let (status, _) = http_json(
        "POST",
        &format!("{api}/slas"),
        &admin,
        Some(&body.to_string()),
    );
    assert_eq!(status, 409, "a second SLA of that name");
    let (status, _) = http_json(
        "POST",
        &format!("{api}/slas"),
        &operator,
        Some(&body.to_string()),
    );
    assert_eq!(status, 403, "operators do not manage SLAs");
    let (status, bad) = http_json(
        "POST",
        &format!("{api}/slas"),
        &admin,
        Some(r#"{"name": "x", "target": 2, "window": "fortnight"}"#),
    );
    assert_eq!(status, 422, "{bad}");
    let message = bad["error"].as_str().unwrap_or("");
    assert!(
        message.contains("strictly between 0 and 1") && message.contains("fortnight"),
        "{bad}"
    );

    let token = enroll_token(&c.data_dir, &[]);
    let service = TcpListener::bind("127.0.0.1:0").expect("bind service");
    let port = service.local_addr().expect("addr").port();
    let agent_dir = tmp.path().join("agent");
    let mut agent = spawn_agent_config(&agent_config(&agent_dir, c.quic, &token, port), &agent_dir);
    wait_until(Duration::from_secs(30), "check_up 1", || {
        check_up(&c).filter(|v| *v == 1.0)
    });
    let t0 = now_ms() - 1_000;

    // Outage 1: the service stops for a measured time.
    let (start1, held1, service) = outage(service, Duration::from_secs(6));
    let first = wait_incident(&c, &operator, "rule=check-down", "outage 1 resolved", |i| {
        i["state"] == "resolved"
    });
    let r = report(&c, &operator, t0, now_ms());
    let measured1 = held1 as f64 / 1000.0;
    for kind in ["experienced", "contractual"] {
        let got = down_seconds(&r, kind);
        assert!(
            (got - measured1).abs() <= 1.0,
            "{kind} downtime {got} s, measured {measured1} s: {r}"
        );
    }
    assert_eq!(r["outages"][0]["incidents"][0], first["id"], "{r}");
    let availability = r["experienced"]["availability"]
        .as_f64()
        .expect("availability");
    assert!(availability < 1.0 && availability > 0.0, "{r}");
    // /metrics follows the incident within seconds, not at the next 30 s refresh.
    let series = "vigil_sla_availability_ratio{kind=\"experienced\",sla=\"app\",window=\"1d\"}";
    wait_until(Duration::from_secs(15), "the outage on /metrics", || {
        metric_value(&metrics(&c), series).filter(|v| *v < 1.0)
    });
    // What keeping the figures current costs is on /metrics too: the refresh at start and the
    // one after the incident (counted once it returned), with some CPU.
    wait_until(Duration::from_secs(15), "two refreshes counted", || {
        let text = metrics(&c);
        let refreshes =
            metric_value(&text, "vigil_sla_refresh_duration_seconds_count").unwrap_or(0.0);
        let cpu = metric_value(&text, "vigil_sla_refresh_cpu_seconds_total").unwrap_or(0.0);
        (refreshes >= 2.0 && cpu > 0.0).then_some(())
    });
    // Check executions next to the time-based figure: the runs during the outage failed (one a
    // second; the first and last may fall either side of it), the others passed.
    let runs = &r["occurrences"];
    let (ok, total) = (
        runs["ok"].as_f64().unwrap_or(f64::NAN),
        runs["total"].as_f64().unwrap_or(f64::NAN),
    );
    assert!(
        (total - ok - measured1).abs() <= 2.0 && ok >= 1.0,
        "{} failed runs of {total}, outage {measured1} s: {r}",
        total - ok
    );

    // A maintenance window over outage 1, added afterwards: the contract excludes it, the
    // experience does not.
    // It covers the incident's downtime exactly, so that it cannot reach outage 2.
    let (breach, resolved) = (
        first["first_breach_ms"].as_i64().expect("breach"),
        first["resolved_ms"].as_i64().expect("resolved"),
    );
    assert!(
        breach >= start1 && breach - start1 <= 1_500,
        "first breach {breach}, stopped {start1}"
    );
    let window =
        json!({"name": "late", "start": breach, "duration": format!("{}ms", resolved - breach)});
    let (status, w) = http_json(
        "POST",
        &format!("{api}/maintenance"),
        &operator,
        Some(&window.to_string()),
    );
    assert_eq!(status, 201, "{w}");
    let r = report(&c, &operator, t0, now_ms());
    assert_eq!(down_seconds(&r, "contractual"), 0.0, "{r}");
    assert!(
        (down_seconds(&r, "experienced") - measured1).abs() <= 1.0,
        "{r}"
    );

    // Outage 2 while the collector is down: the agent spools its samples and replays them when
    // the collector is back; the report for the past then holds outage 2 as well.
    let (quic, http) = (c.quic, c.http);
    assert!(c.proc.terminate(Duration::from_secs(20)).success());
    let (_start2, held2, service) = outage(service, Duration::from_secs(5));
    // The service is back before the collector is: only replayed data can tell of outage 2.
    std::thread::sleep(Duration::from_secs(2));
    c = spawn_collector_with(&dir, quic, http, EXTRA);
    // Within `reopen_within` of its resolution: the same incident, reopened for a second
    // episode in the past, and resolved again.
    let second = wait_incident(&c, &operator, "rule=check-down", "outage 2 replayed", |i| {
        i["id"] == first["id"] && i["reopen_count"] == 1 && i["state"] == "resolved"
    });
    let r = report(&c, &operator, t0, now_ms());
    let measured2 = held2 as f64 / 1000.0;
    let got = down_seconds(&r, "contractual");
    assert!(
        (got - measured2).abs() <= 1.0,
        "contractual downtime {got} s after the replay, measured {measured2} s: {r}"
    );
    let got = down_seconds(&r, "experienced");
    assert!(
        (got - measured1 - measured2).abs() <= 2.0,
        "experienced downtime {got} s, measured {measured1} + {measured2} s: {r}"
    );
    assert_eq!(r["outages"][0]["incidents"][0], second["id"], "{r}");

    // The API's SLA survived the restart; changed, then deleted.
    let listed = api_get(&c, &operator, "/slas");
    assert_eq!(listed[0]["name"], "app", "{listed}");
    let changed =
        json!({"name": "app", "target": 0.95, "window": "1d", "down_when": ["check-down"]});
    let (status, v) = http_json(
        "PUT",
        &format!("{api}/slas/app"),
        &admin,
        Some(&changed.to_string()),
    );
    assert_eq!((status, &v["target"]), (200, &json!(0.95)), "{v}");
    let (status, _) = http_json("DELETE", &format!("{api}/slas/app"), &admin, None);
    assert_eq!(status, 204);
    let (status, _) = http_get(&format!("{api}/slas/app"), Some(&operator));
    assert_eq!(status, 404);
    let (status, _) = http_json("DELETE", &format!("{api}/slas/app"), &admin, None);
    assert_eq!(status, 404);

    drop(service);
    agent.terminate(Duration::from_secs(15));
}
