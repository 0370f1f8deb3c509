//! The main job: a collector and an agent; the agent enrolls and its host metrics appear on
//! /metrics within two intervals, in a form promtool accepts; the API is guarded.

use std::time::Duration;

use crate::harness::*;

#[test]
fn agent_enrolls_and_host_metrics_reach_prometheus() {
    let dir = tempfile::tempdir().expect("tempdir");
    let collector = spawn_collector(&dir.path().join("collector"));
    let token = enroll_token(&collector.data_dir, &[]);
    let agent_dir = dir.path().join("agent");
    let mut agent = spawn_agent(collector.quic, Some(&token), &agent_dir, "1s");

    // Within two intervals of enrolling, every always-present host metric is there.
    let text = wait_until(Duration::from_secs(20), "host metrics on /metrics", || {
        let text = metrics(&collector);
        let ok = [
            "vigil_host_cpu_usage_ratio{",
            "vigil_host_memory_total_bytes{",
            "vigil_host_uptime_seconds{",
            "vigil_host_filesystem_used_ratio{",
            "vigil_host_network_receive_bytes_total{",
        ]
        .iter()
        .all(|m| text.contains(m))
            && text.contains("vigil_host_up{");
        ok.then_some(text)
    });
    assert!(
        text.lines()
            .any(|l| l.starts_with("vigil_host_up{") && l.ends_with(" 1")),
        "{text}"
    );
    assert_eq!(metric_value(&text, "vigil_agents_connected"), Some(1.0));
    promtool_check(&text).unwrap_or_else(|e| panic!("promtool check metrics failed:\n{e}\n{text}"));

    // The key file is private; the API needs a token and a strong enough role.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(agent_dir.join("agent.key"))
        .expect("key")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let url = format!("http://{}/api/v1/agents", collector.http);
    assert_eq!(http_get(&url, None).0, 401);
    assert_eq!(http_get(&url, Some("vgl_nope_nope")).0, 401);
    let viewer = api_token(&collector.data_dir, "viewer");
    let (status, body) = http_get(&url, Some(&viewer));
    assert_eq!(status, 200, "{body}");
    let agents: serde_json::Value = serde_json::from_str(&body).expect("json");
    let id = agent_id(&agent_dir).expect("agent id");
    assert_eq!(agents[0]["id"], id.as_str(), "{body}");
    assert_eq!(agents[0]["connected"], true, "{body}");
    assert_eq!(
        http_get(
            &format!("http://{}/api/v1/tokens", collector.http),
            Some(&viewer)
        )
        .0,
        403
    );

    // A clean stop: the agent says goodbye and exits 0.
    assert!(
        agent.terminate(Duration::from_secs(15)).success(),
        "agent log:\n{}",
        agent.logs()
    );
    let text = wait_until(
        Duration::from_secs(10),
        "host down after agent stop",
        || {
            let text = metrics(&collector);
            text.lines()
                .any(|l| l.starts_with("vigil_host_up{") && l.ends_with(" 0"))
                .then_some(text)
        },
    );
    assert_eq!(metric_value(&text, "vigil_agents_connected"), Some(0.0));
}

/// `vigil-collector quickstart` itself: one command starts the collector and a local agent,
/// prints the URLs and the admin token; the local host shows up on /metrics; SIGTERM stops
/// everything cleanly; a second start reuses the CA and the admin token.
#[test]
fn quickstart_command_runs_the_main_job() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};

    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let start = |log: &str| -> (Proc, std::sync::mpsc::Receiver<String>) {
        let mut cmd = Command::new(bin("vigil-collector"));
        cmd.args([
            "quickstart",
            "--http",
            "127.0.0.1:0",
            "--quic",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(&data)
        .stdout(Stdio::piped());
        let mut proc = Proc::spawn("vigil-collector quickstart", cmd, dir.path().join(log));
        let stdout = proc.child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        (proc, rx)
    };
    let read_banner = |rx: &std::sync::mpsc::Receiver<String>, proc: &Proc| -> Vec<String> {
        let mut lines = Vec::new();
        while !lines.iter().any(|l: &String| l.starts_with("Press Ctrl-C")) {
            match rx.recv_timeout(Duration::from_secs(30)) {
                Ok(l) => lines.push(l),
                Err(_) => panic!("quickstart printed {lines:?}; log:\n{}", proc.logs()),
            }
        }
        lines
    };
    let field = |lines: &[String], label: &str| -> String {
        lines
            .iter()
            .find_map(|l| {
                l.trim_start()
                    .strip_prefix(label)
                    .map(|v| v.trim().to_string())
            })
            .unwrap_or_else(|| panic!("no {label:?} in {lines:?}"))
    };

    let (mut proc, rx) = start("quickstart-1.log");
    let banner = read_banner(&rx, &proc);
    let metrics_url = field(&banner, "Metrics:");
    assert!(
        banner
            .iter()
            .any(|l| l.contains("vigil-collector token create")),
        "{banner:?}"
    );
    let token = std::fs::read_to_string(data.join("admin-token")).expect("admin token file");
    assert!(
        field(&banner, "API (admin):").contains(token.trim()),
        "{banner:?}"
    );
    // The console URL it prints leads to the login form, and the admin it prints logs in
    // (the password is the one kept in the data dir) and sees the incident board.
    let console = field(&banner, "Console:");
    let (status, page) = http_get(&console, None);
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("name=\"password\""), "{page}");
    let password = std::fs::read_to_string(data.join("admin-password")).expect("password file");
    assert_eq!(
        field(&banner, "Log in as:"),
        format!("admin / {}", password.trim()),
        "{banner:?}"
    );
    let board = console_page(&console, "admin", password.trim());
    assert!(board.contains("<h1>Incidents</h1>"), "{board}");

    // The local agent enrolled by itself and its host metrics arrive.
    let text = wait_until(Duration::from_secs(30), "local host metrics", || {
        let (status, text) = http_get(&metrics_url, None);
        (status == 200
            && text
                .lines()
                .any(|l| l.starts_with("vigil_host_up{") && l.ends_with(" 1")))
        .then_some(text)
    });
    promtool_check(&text).unwrap_or_else(|e| panic!("promtool: {e}"));
    let agents_url = metrics_url.replace("/metrics", "/api/v1/agents");
    let (status, body) = http_get(&agents_url, Some(token.trim()));
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"connected\":true"), "{body}");
    // The example SLA is reported through the API and on /metrics, and promtool accepts it.
    let slas_url = metrics_url.replace("/metrics", "/api/v1/slas");
    let (status, body) = http_get(&slas_url, Some(token.trim()));
    assert_eq!(status, 200, "{body}");
    let slas: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(slas[0]["name"], "all-hosts", "{body}");
    assert_eq!(slas[0]["current"]["window"], "month", "{body}");
    let text = wait_until(Duration::from_secs(45), "SLA figures on /metrics", || {
        let (_, text) = http_get(&metrics_url, None);
        text.contains("vigil_sla_availability_ratio{kind=\"experienced\",sla=\"all-hosts\"")
            .then_some(text)
    });
    assert_eq!(
        metric_value(&text, "vigil_sla_target_ratio{sla=\"all-hosts\"}"),
        Some(0.995),
        "{text}"
    );
    promtool_check(&text).unwrap_or_else(|e| panic!("promtool: {e}"));
    assert!(
        proc.terminate(Duration::from_secs(20)).success(),
        "log:\n{}",
        proc.logs()
    );

    // Second start: same CA, same admin token, the agent does not enroll again.
    let pin = std::fs::read(data.join("ca.pem")).expect("ca");
    let (mut proc, rx) = start("quickstart-2.log");
    let banner = read_banner(&rx, &proc);
    assert!(
        field(&banner, "API (admin):").contains(token.trim()),
        "{banner:?}"
    );
    assert_eq!(std::fs::read(data.join("ca.pem")).expect("ca"), pin);
    let metrics_url = field(&banner, "Metrics:");
    wait_until(Duration::from_secs(30), "local host back", || {
        let (_, text) = http_get(&metrics_url, None);
        text.lines()
            .any(|l| l.starts_with("vigil_host_up{") && l.ends_with(" 1"))
            .then_some(())
    });
    assert_eq!(
        open_store(&data)
            .query_row("SELECT COUNT(*) FROM agents", [], |r| r.get::<_, i64>(0))
            .expect("count"),
        1
    );
    assert!(
        proc.terminate(Duration::from_secs(20)).success(),
        "log:\n{}",
        proc.logs()
    );
}

/// Logs in at `console` (its `/login`) and returns the page `console` shows with the session.
fn console_page(console: &str, user: &str, password: &str) -> String {
    let body = serde_json::json!({ "user": user, "password": password }).to_string();
    let (status, cookies, _) = http_with("POST", &format!("{console}login"), &[], Some(&body));
    assert_eq!(status, 200);
    let cookie = cookies
        .first()
        .and_then(|v| v.split(';').next())
        .unwrap_or("")
        .to_owned();
    http_with("GET", console, &[("cookie", &cookie)], None).2
}
