//! The real Prometheus scrapes a collector with the shipped scrape config
//! (config/prometheus/prometheus.yml) and can query the host metrics an agent sent; `promtool`
//! accepts the shipped config and recording rules (config/prometheus/vigil-rules.yml) and runs
//! the rules' unit tests (evaluated against real data in grafana.rs).

use std::net::TcpListener;
use std::process::Command;
use std::time::Duration;

use crate::harness::*;

/// `promtool <args>` must succeed and warn about nothing.
fn promtool(args: &[&str]) {
    let out = Command::new("promtool")
        .args(args)
        .output()
        .expect("promtool (Debian package prometheus)");
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?}: {all}");
    assert!(!all.contains("WARNING"), "promtool {args:?} warns: {all}");
}

#[test]
fn shipped_scrape_config_is_valid() {
    // Checks the rule files it names too.
    promtool(&[
        "check",
        "config",
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../config/prometheus/prometheus.yml"
        ),
    ]);
}

#[test]
fn shipped_recording_rules_are_valid() {
    promtool(&[
        "check",
        "rules",
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../config/prometheus/vigil-rules.yml"
        ),
    ]);
}

/// The recording rules compute what they say on made-up series (quantiles and means of the
/// incident histograms per priority, none for a priority without observations, the fleet
/// aggregates): tests/fixtures/prometheus/vigil-rules.test.yml.
#[test]
fn shipped_recording_rules_pass_their_unit_tests() {
    promtool(&[
        "test",
        "rules",
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/fixtures/prometheus/vigil-rules.test.yml"
        ),
    ]);
}

#[test]
fn prometheus_scrapes_host_metrics() {
    let dir = tempfile::tempdir().expect("tempdir");
    let collector = spawn_collector(&dir.path().join("c"));
    let token = enroll_token(&collector.data_dir, &[]);
    let _agent = spawn_agent(collector.quic, Some(&token), &dir.path().join("a"), "1s");

    // The shipped config, pointed at this collector and scraping every second.
    let shipped = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../config/prometheus/prometheus.yml"
    ))
    .expect("config");
    let config = shipped
        .replace("127.0.0.1:8080", &collector.http.to_string())
        .replace("scrape_interval: 15s", "scrape_interval: 1s");
    let config_path = dir.path().join("prometheus.yml");
    std::fs::write(&config_path, config).expect("write");
    // The rule files it names, relative to it.
    std::fs::copy(
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../config/prometheus/vigil-rules.yml"
        ),
        dir.path().join("vigil-rules.yml"),
    )
    .expect("copy the rules");
    let port = TcpListener::bind("127.0.0.1:0")
        .expect("port")
        .local_addr()
        .expect("addr")
        .port();
    let mut cmd = Command::new("prometheus");
    cmd.arg(format!("--config.file={}", config_path.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("tsdb").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(std::process::Stdio::null());
    let prom = Proc::spawn("prometheus", cmd, dir.path().join("prometheus.log"));

    let url = format!("http://127.0.0.1:{port}/api/v1/query?query=vigil_host_up");
    let body = wait_until(
        Duration::from_secs(60),
        "vigil_host_up in Prometheus",
        || {
            let (status, body) = http_get(&url, None);
            (status == 200 && body.contains("\"vigil_host_up\"") && body.contains("\"1\"]"))
                .then_some(body)
        },
    );
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(v["data"]["result"][0]["metric"]["job"], "vigil", "{body}");
    let url = format!("http://127.0.0.1:{port}/api/v1/query?query=up%7Bjob%3D%22vigil%22%7D");
    let (_, body) = http_get(&url, None);
    assert!(
        body.contains("\"1\"]"),
        "scrape target not up: {body}\n{}",
        prom.logs()
    );
}
