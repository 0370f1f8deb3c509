//! The shipped Grafana dashboards (config/grafana/) and Prometheus recording rules
//! (config/prometheus/vigil-rules.yml), proven against real data: a collector with an SLA, a
//! webhook and a check-down rule, an agent whose tcp check the test breaks so that an incident
//! opens, is acknowledged through the API and resolves; the real `prometheus` scraping it every
//! second with the shipped config and rules. tests/grafana_check.py validates every dashboard
//! against Grafana's own types (grafana-foundation-sdk) and lists their queries; each query, its
//! template variables filled in as Grafana would, must answer a non-empty result with finite
//! values only, and each variable query must list the SLA and the host.

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::harness::*;
use crate::incidents::Receiver;

const SLA: &str = "shop";
/// How long every query has to answer.
const WAIT: Duration = Duration::from_secs(90);
/// Grafana's own variables, as a dashboard over the last hour with a 1 s scrape would get them.
const BUILTINS: [(&str, &str); 7] = [
    ("__rate_interval", "1m"),
    ("__interval", "15s"),
    ("__interval_ms", "15000"),
    ("__range", "1h"),
    ("__range_s", "3600"),
    ("__range_ms", "3600000"),
    ("__auto", "15s"),
];

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
}

fn collector_extra(receiver: &Receiver) -> String {
    format!(
        "[agents]\ndown_after_intervals = 5\n\
         [[webhook]]\nname = \"ops\"\nurl = \"{}\"\n\
         [[rule]]\nname = \"check-down\"\nmetric = \"check_up\"\nbelow = 1\nfor = \"1s\"\n\
         impact = \"high\"\nurgency = \"high\"\n[rule.scope]\ntype = \"check\"\n\
         [[sla]]\nname = \"{SLA}\"\ntarget = 0.999\nwindow = \"1d\"\ndown_when = [\"check-down\"]\n\
         [sla.schedule]\ndays = [\"mon\", \"tue\", \"wed\", \"thu\", \"fri\", \"sat\", \"sun\"]\n",
        receiver.url()
    )
}

fn agent_config(dir: &Path, collector: SocketAddr, token: &str, port: u16) -> PathBuf {
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

/// Runs tests/grafana_check.py --json; installs the pinned SDK (tests/requirements-grafana.txt)
/// when it is missing or another version.
fn dashboards(dir: &Path) -> Value {
    let script = repo("tests/grafana_check.py");
    let run = || {
        let mut cmd = Command::new("python3");
        cmd.arg(script.as_path()).arg("--json");
        run_bounded(cmd, dir, Duration::from_secs(60))
    };
    let (mut status, mut out, mut err) = run();
    if status.code() == Some(2) {
        let mut pip = Command::new("python3");
        pip.args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "-r",
        ])
        .arg(repo("tests/requirements-grafana.txt"));
        let (st, o, e) = run_bounded(pip, dir, Duration::from_secs(300));
        assert!(
            st.success(),
            "pip install of the Grafana SDK failed: {o}{e}"
        );
        (status, out, err) = run();
    }
    assert!(
        status.success(),
        "tests/grafana_check.py found problems:\n{err}"
    );
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("checker output not JSON ({e}): {out}"))
}

/// Grafana's `$name`, `${name}`, `${name:format}` and `[[name]]`, filled in from `vars`; an
/// unknown variable is an error.
fn substitute(expr: &str, vars: &BTreeMap<&str, String>) -> Result<String, String> {
    let is_ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut out = String::new();
    let mut rest = expr;
    while let Some(i) = rest.find(['$', '[']) {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        let (name, len) = if let Some(t) = tail.strip_prefix("${") {
            let end = t
                .find('}')
                .ok_or_else(|| format!("unclosed ${{ in {expr}"))?;
            let name = t[..end].split(':').next().unwrap_or("");
            (name, end + 3)
        } else if let Some(t) = tail.strip_prefix("[[") {
            match t.find("]]") {
                Some(end) if t[..end].chars().all(|c| is_ident(c) || c == ':') => {
                    (t[..end].split(':').next().unwrap_or(""), end + 4)
                }
                _ => {
                    out.push('[');
                    rest = &tail[1..];
                    continue;
                }
            }
        } else if let Some(t) = tail.strip_prefix('$') {
            let end = t.find(|c: char| !is_ident(c)).unwrap_or(t.len());
            (&t[..end], end + 1)
        } else {
            out.push('[');
            rest = &tail[1..];
            continue;
        };
        let value = vars
            .get(name)
            .ok_or_else(|| format!("no value for ${name} in {expr}"))?;
        out.push_str(value);
        rest = &tail[len..];
    }
    out.push_str(rest);
    Ok(out)
}

/// A value for a `=~` matcher: the regex that matches exactly `s`.
fn regex_of(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars() {
        if "\\.+*?()|[]{}^$".contains(c) {
            // A backslash of the regex, written in a PromQL string.
            out.push_str("\\\\");
        }
        out.push(c);
    }
    out
}

fn urlencode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `GET /api/v1/query`: the parsed answer (an error answer too).
fn query(port: u16, expr: &str) -> Value {
    let url = format!(
        "http://127.0.0.1:{port}/api/v1/query?query={}",
        urlencode(expr)
    );
    let (status, body) = http_get(&url, None);
    serde_json::from_str(&body)
        .unwrap_or_else(|_| json!({"status": "error", "error": format!("HTTP {status}: {body}")}))
}

/// Why an instant query's answer does not count yet: no series, or a value that is not finite.
/// `Err` for an answer that waiting cannot fix (a bad expression).
fn not_yet(answer: &Value) -> Result<Option<String>, String> {
    if answer["status"] != "success" {
        return Err(answer["error"].as_str().unwrap_or("?").to_string());
    }
    let data = &answer["data"];
    let values: Vec<&Value> = match data["resultType"].as_str() {
        Some("vector") => data["result"]
            .as_array()
            .map(|r| r.iter().map(|s| &s["value"][1]).collect())
            .unwrap_or_default(),
        Some("scalar") => vec![&data["result"][1]],
        other => return Err(format!("result type {other:?}")),
    };
    if values.is_empty() {
        return Ok(Some("empty".to_string()));
    }
    let bad: Vec<String> = values
        .iter()
        .filter(|v| {
            !v.as_str()
                .and_then(|s| s.parse::<f64>().ok())
                .is_some_and(f64::is_finite)
        })
        .map(|v| v.to_string())
        .collect();
    Ok((!bad.is_empty()).then(|| format!("not finite: {}", bad.join(", "))))
}

/// The first series of an instant vector answer with label `label` = `value`: its value.
fn series_value(answer: &Value, label: &str, value: &str) -> Option<f64> {
    answer["data"]["result"]
        .as_array()?
        .iter()
        .find(|s| s["metric"][label] == value)?["value"][1]
        .as_str()?
        .parse()
        .ok()
}

#[test]
fn every_dashboard_query_and_recording_rule_answers_with_finite_values() {
    let started = Instant::now();
    let tmp = tempfile::tempdir().expect("tempdir");
    let checked = dashboards(tmp.path());

    let receiver = Receiver::start();
    let any: SocketAddr = "127.0.0.1:0".parse().expect("addr");
    let c = spawn_collector_with(
        &tmp.path().join("collector"),
        any,
        any,
        &collector_extra(&receiver),
    );
    let operator = api_token(&c.data_dir, "operator");

    // The shipped Prometheus config and rules, pointed at this collector, every second.
    let prom_dir = tmp.path().join("prometheus");
    std::fs::create_dir_all(&prom_dir).expect("prometheus dir");
    let shipped =
        std::fs::read_to_string(repo("config/prometheus/prometheus.yml")).expect("config");
    for s in [
        "127.0.0.1:8080",
        "scrape_interval: 15s",
        "evaluation_interval: 15s",
        "- vigil-rules.yml",
    ] {
        assert!(shipped.contains(s), "the shipped config has no {s:?}");
    }
    let config = shipped
        .replace("127.0.0.1:8080", &c.http.to_string())
        .replace("scrape_interval: 15s", "scrape_interval: 1s")
        .replace("evaluation_interval: 15s", "evaluation_interval: 1s");
    std::fs::write(prom_dir.join("prometheus.yml"), config).expect("write config");
    let rules_text =
        std::fs::read_to_string(repo("config/prometheus/vigil-rules.yml")).expect("rules");
    std::fs::write(prom_dir.join("vigil-rules.yml"), &rules_text).expect("write rules");
    let (prom, port) = spawn_on_free_port(
        "prometheus",
        &tmp.path().join("prometheus.log"),
        |port| {
            let mut cmd = Command::new("prometheus");
            cmd.arg(format!(
                "--config.file={}",
                prom_dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                prom_dir.join("tsdb").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(std::process::Stdio::null());
            cmd
        },
        |port| http_get(&format!("http://127.0.0.1:{port}/-/ready"), None).0 == 200,
    );

    // An agent with a tcp check on a port this test listens on.
    let token = enroll_token(&c.data_dir, &[]);
    let service = TcpListener::bind("127.0.0.1:0").expect("bind service");
    let service_addr = service.local_addr().expect("addr");
    let agent_dir = tmp.path().join("agent");
    let _agent = spawn_agent_config(
        &agent_config(&agent_dir, c.quic, &token, service_addr.port()),
        &agent_dir,
    );
    let host = wait_until(Duration::from_secs(30), "the agent's check up", || {
        let m = metrics(&c);
        let up = m
            .lines()
            .any(|l| l.starts_with("vigil_check_up{") && l.ends_with(" 1"));
        let host = m
            .lines()
            .find(|l| l.starts_with("vigil_host_up{") && l.ends_with(" 1"))
            .and_then(|l| l.split("host=\"").nth(1))
            .and_then(|l| l.split('"').next())
            .map(str::to_string);
        host.filter(|_| up)
    });
    // Prometheus holds the histograms before anything is observed, so that their rates see the
    // observations.
    wait_until(
        Duration::from_secs(30),
        "the histograms in Prometheus",
        || {
            let a = query(
                port,
                "count_over_time(vigil_incident_resolve_seconds_count[1m])",
            );
            a["data"]["result"][0]["value"][1]
                .as_str()
                .and_then(|v| v.parse::<f64>().ok())
                .filter(|n| *n >= 2.0)
        },
    );

    // The service stops: an incident opens; an operator acknowledges it; the service comes back
    // and the incident resolves by itself.
    drop(service);
    let incident = wait_incident(&c, &operator, "rule=check-down", "the incident", |i| {
        i["state"] == "open"
    });
    let id = incident["id"].as_i64().expect("id");
    let (status, acked) = api_post(
        &c,
        &operator,
        &format!("/incidents/{id}/acknowledge"),
        &json!({"note": "grafana e2e"}),
    );
    assert_eq!(status, 200, "{acked}");
    std::thread::sleep(Duration::from_secs(2));
    let _service = TcpListener::bind(service_addr).expect("bind the service again");
    let resolved = wait_incident(&c, &operator, "rule=check-down", "its resolution", |i| {
        i["id"] == id && i["state"] == "resolved"
    });
    let priority = resolved["priority"].as_str().expect("priority").to_string();
    let ms = |k: &str| {
        resolved[k]
            .as_i64()
            .unwrap_or_else(|| panic!("{k}: {resolved}"))
    };
    let tta = (ms("acknowledged_ms") - ms("started_ms")) as f64 / 1000.0;
    let ttr = (ms("resolved_ms") - ms("started_ms")) as f64 / 1000.0;

    // Every query of every panel, its variables filled in as Grafana would.
    let mut vars: BTreeMap<&str, String> =
        BUILTINS.iter().map(|(k, v)| (*k, v.to_string())).collect();
    vars.insert("sla", regex_of(SLA));
    vars.insert("host", regex_of(&host));
    vars.insert("datasource", "vigil-prometheus".to_string());
    let mut exprs: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut problems = Vec::new();
    let mut all_text = String::new();
    let boards = checked["dashboards"].as_array().expect("dashboards");
    assert_eq!(boards.len(), 3, "{checked}");
    for d in boards {
        let file = d["file"].as_str().unwrap_or("?");
        for q in d["queries"].as_array().expect("queries") {
            let expr = q["expr"].as_str().expect("expr");
            all_text.push_str(expr);
            all_text.push('\n');
            let place = format!(
                "{file} #{} {:?} [{}]",
                q["panel_id"],
                q["panel"].as_str().unwrap_or(""),
                q["ref_id"].as_str().unwrap_or("")
            );
            match substitute(expr, &vars) {
                Ok(e) => exprs.entry(e).or_default().push(place),
                Err(e) => problems.push(format!("{place}: {e}")),
            }
        }
        // A variable query `label_values(metric, label)` lists the SLA or the host.
        for v in d["variables"].as_array().expect("variables") {
            if v["type"] != "query" {
                continue;
            }
            let q = v["query"].as_str().unwrap_or("");
            let (metric, label) = q
                .strip_prefix("label_values(")
                .and_then(|s| s.strip_suffix(')'))
                .and_then(|s| s.split_once(','))
                .map(|(m, l)| (m.trim(), l.trim()))
                .unwrap_or_else(|| {
                    panic!("{file}: variable query {q:?} is not label_values(m, l)")
                });
            let want = match v["name"].as_str() {
                Some("sla") => SLA.to_string(),
                Some("host") => host.clone(),
                other => panic!("{file}: no expected value for variable {other:?}"),
            };
            exprs
                .entry(format!("group by ({label}) ({metric}{{{label}={want:?}}})"))
                .or_default()
                .push(format!(
                    "{file} variable ${}",
                    v["name"].as_str().unwrap_or("")
                ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));

    // Every recording rule is shown on a dashboard.
    let records: Vec<&str> = rules_text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- record:"))
        .map(str::trim)
        .collect();
    assert!(records.len() >= 10, "{records:?}");
    for r in &records {
        assert!(
            all_text.contains(r),
            "recording rule {r} is on no dashboard"
        );
    }

    // Each must answer with series and finite values: the SLA figures follow the incident within
    // 5 s (30 s at most, their refresh), the rules need one evaluation.
    let mut waiting: BTreeMap<String, String> = BTreeMap::new();
    let deadline = Instant::now() + WAIT;
    loop {
        waiting.clear();
        for expr in exprs.keys() {
            match not_yet(&query(port, expr)) {
                Ok(None) => {}
                Ok(Some(why)) => {
                    waiting.insert(expr.clone(), why);
                }
                Err(e) => panic!("Prometheus refused {expr} (from {:?}): {e}", exprs[expr]),
            }
        }
        if waiting.is_empty() || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    assert!(
        waiting.is_empty(),
        "{} of {} queries still without a finite answer after {WAIT:?}:\n{}\nPrometheus log:\n{}",
        waiting.len(),
        exprs.len(),
        waiting
            .iter()
            .map(|(e, why)| format!("  {e}  ({why}; {:?})", exprs[e]))
            .collect::<Vec<_>>()
            .join("\n"),
        prom.logs()
    );

    // The rules evaluate without error, and say what happened: one acknowledgement and one
    // resolution under the incident's priority, an outage of the SLA.
    let rules = http_get(&format!("http://127.0.0.1:{port}/api/v1/rules"), None).1;
    let rules: Value = serde_json::from_str(&rules).expect("rules JSON");
    let loaded: Vec<&Value> = rules["data"]["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .flat_map(|g| g["rules"].as_array().expect("rules").iter())
        .collect();
    assert_eq!(loaded.len(), records.len(), "{rules}");
    for r in &loaded {
        assert_eq!(r["health"], "ok", "{r}");
    }
    let mtta = query(port, "vigil:incident_acknowledge_seconds:mean_1d");
    let got = series_value(&mtta, "priority", &priority)
        .unwrap_or_else(|| panic!("no MTTA for {priority} (priority label missing?): {mtta}"));
    assert!(
        (got - tta).abs() < 0.5,
        "MTTA {got} s, acknowledged after {tta} s"
    );
    let mttr = query(port, "vigil:incident_resolve_seconds:mean_1d");
    let got = series_value(&mttr, "priority", &priority)
        .unwrap_or_else(|| panic!("no MTTR for {priority}: {mttr}"));
    assert!(
        (got - ttr).abs() < 0.5,
        "MTTR {got} s, resolved after {ttr} s"
    );
    for q in [
        "vigil:incident_acknowledge_seconds:mean_1d",
        "vigil:incident_resolve_seconds:p90_1d",
    ] {
        let a = query(port, q);
        assert_eq!(
            a["data"]["result"].as_array().map(Vec::len),
            Some(1),
            "only {priority} had an incident: {a}"
        );
    }
    let availability = query(
        port,
        &format!("vigil_sla_availability_ratio{{sla=\"{SLA}\", kind=\"contractual\"}}"),
    );
    let a = series_value(&availability, "sla", SLA).expect("availability");
    assert!(a > 0.0 && a < 1.0, "availability {a} after an outage");
    let outages = query(port, &format!("vigil_sla_outages_total{{sla=\"{SLA}\"}}"));
    assert!(
        series_value(&outages, "sla", SLA).is_some_and(|n| n >= 1.0),
        "{outages}"
    );
    eprintln!(
        "{} queries of {} dashboards answered (grafana-foundation-sdk {}), {:.1} s",
        exprs.len(),
        boards.len(),
        checked["sdk"].as_str().unwrap_or("?"),
        started.elapsed().as_secs_f64()
    );
}

#[test]
fn variables_are_filled_in_as_grafana_does() {
    let vars: BTreeMap<&str, String> = [
        ("sla", "a\\\\.b".to_string()),
        ("__rate_interval", "1m".to_string()),
        ("__range", "1h".to_string()),
        ("__range_s", "3600".to_string()),
    ]
    .into_iter()
    .collect();
    assert_eq!(
        substitute(
            r#"rate(x{sla=~"$sla"}[$__rate_interval]) + y{sla=~"${sla}"}[$__range] / ${__range_s} + z[[sla]] + v[5m]"#,
            &vars
        )
        .as_deref(),
        Ok(r#"rate(x{sla=~"a\\.b"}[1m]) + y{sla=~"a\\.b"}[1h] / 3600 + za\\.b + v[5m]"#)
    );
    assert!(substitute("x{h=~\"$host\"}", &vars).is_err());
    assert_eq!(regex_of("web-1.example"), "web-1\\\\.example");
}

#[test]
fn an_answer_counts_only_with_series_and_finite_values() {
    let vector = |values: &[&str]| {
        let result: Vec<Value> = values
            .iter()
            .map(|v| json!({"metric": {}, "value": [1.0, v]}))
            .collect();
        json!({"status": "success", "data": {"resultType": "vector", "result": result}})
    };
    assert_eq!(not_yet(&vector(&["0", "0.5"])), Ok(None));
    assert_eq!(not_yet(&vector(&[])), Ok(Some("empty".to_string())));
    for bad in ["NaN", "+Inf", "-Inf"] {
        assert!(
            matches!(not_yet(&vector(&["1", bad])), Ok(Some(_))),
            "{bad}"
        );
    }
    let scalar =
        json!({"status": "success", "data": {"resultType": "scalar", "result": [1.0, "2"]}});
    assert_eq!(not_yet(&scalar), Ok(None));
    let error = json!({"status": "error", "errorType": "bad_data", "error": "parse error"});
    assert_eq!(not_yet(&error), Err("parse error".to_string()));
}
