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
