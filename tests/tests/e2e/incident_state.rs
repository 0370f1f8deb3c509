//! Incident state that stays true while the world around it changes, with the real binaries:
//! - a check removed from an agent's configuration resolves its incident (`check_removed`) and
//!   its series leaves `/metrics`; a stopped host's series leave too, its `vigil_host_up`
//!   stays;
//! - an operator's resolve of a breach that still holds opens the incident again after `for`;
//! - maintenance suppression ends with its window (when it ends, or is deleted);
//! - an incident opened before the host's inventory arrived gets its CI once it does.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};
use vigil_agent::client;
use vigil_shared::inventory::{ci_type, Ci, Inventory};
use vigil_shared::proto::{Batch, InventorySnapshot, Message};

use crate::harness::*;
use crate::wire::{self, runtime, within};

const WAIT: Duration = Duration::from_secs(60);

/// Opens on a failing check after `for = 1s`; the collector notices a vanished series after
/// `2 × down_after_intervals` intervals (6 s at 1 s).
const EXTRA: &str = "[agents]\ndown_after_intervals = 3\n\
                     [[rule]]\nname = \"app-down\"\nmetric = \"check_up\"\nbelow = 1\nfor = \"1s\"\n\
                     impact = \"high\"\nurgency = \"medium\"\n[rule.scope]\ntype = \"check\"\n\
                     [[rule]]\nname = \"disk-full\"\nmetric = \"filesystem_used_ratio\"\nabove = 0.9\n\
                     [rule.scope]\ntype = \"filesystem\"\n";

fn collector(dir: &Path) -> Collector {
    let any = "127.0.0.1:0".parse().expect("addr");
    spawn_collector_with(&dir.join("c"), any, any, EXTRA)
}

/// An agent config with one tcp check per `(name, port)`.
fn agent_config(dir: &Path, c: &Collector, token: Option<&str>, checks: &[(&str, u16)]) -> PathBuf {
    std::fs::create_dir_all(dir).expect("agent dir");
    let mut text = format!(
        "collector = \"{}\"\ndata_dir = {:?}\nhostname = \"state-host\"\n\
         [metrics]\ninterval = \"1s\"\n",
        c.quic,
        dir.display().to_string()
    );
    if let Some(t) = token {
        text = format!("token = \"{t}\"\n{text}");
    }
    for (name, port) in checks {
        text.push_str(&format!(
            "[[check]]\nname = \"{name}\"\ntype = \"tcp\"\ntarget = \"127.0.0.1:{port}\"\n\
             timeout = \"500ms\"\n"
        ));
    }
    let path = dir.join("agent.toml");
    std::fs::write(&path, text).expect("write agent config");
    path
}

/// A port nothing listens on (bound, then closed: connections to it are refused).
fn closed_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("port")
}

fn series_line(c: &Collector, needle: &str) -> Option<String> {
    metrics(c)
        .lines()
        .find(|l| !l.starts_with('#') && l.contains(needle))
        .map(str::to_string)
}

#[test]
fn a_removed_check_resolves_and_vanished_series_leave_metrics() {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = collector(dir.path());
    let api = api_token(&c.data_dir, "viewer");
    let up = TcpListener::bind("127.0.0.1:0").expect("listen");
    let up_port = up.local_addr().expect("addr").port();
    let agent_dir = dir.path().join("agent");
    let token = enroll_token(&c.data_dir, &[]);
    let config = agent_config(
        &agent_dir,
        &c,
        Some(&token),
        &[("kept", up_port), ("gone", closed_port())],
    );
    let mut agent = spawn_agent_config(&config, &agent_dir);
    let inc = wait_incident(
        &c,
        &api,
        "rule=app-down",
        "the failing check's incident",
        |i| i["state"] == "open" && i["ci"]["key"] == "gone",
    );
    assert!(series_line(&c, "check=\"gone\"").is_some());

    // The check leaves the configuration; the agent restarts with the new one.
    assert!(agent.terminate(Duration::from_secs(20)).success());
    agent_config(&agent_dir, &c, None, &[("kept", up_port)]);
    let mut agent = spawn_agent_config(&config, &agent_dir);
    let resolved = wait_incident(&c, &api, "rule=app-down", "check_removed", |i| {
        i["id"] == inc["id"] && i["state"] == "resolved"
    });
    assert_eq!(
        resolved["resolution"]["code"], "check_removed",
        "{resolved}"
    );
    assert_eq!(resolved["resolution"]["by"], "system", "{resolved}");
    wait_until(WAIT, "the removed check's series leaves /metrics", || {
        series_line(&c, "check=\"gone\"").is_none().then_some(())
    });
    assert!(
        series_line(&c, "check=\"kept\"").is_some(),
        "the other check stays"
    );

    // The host stops: its series leave, vigil_host_up stays (as 0).
    assert!(agent.terminate(Duration::from_secs(20)).success());
    wait_until(WAIT, "the stopped host's series leave /metrics", || {
        series_line(&c, "vigil_host_load1{host=\"state-host\"}")
            .is_none()
            .then_some(())
    });
    assert!(series_line(&c, "check=\"kept\"").is_none());
    assert_eq!(
        metric_value(&metrics(&c), "vigil_host_up{host=\"state-host\"}"),
        Some(0.0)
    );
    drop(up);
}

#[test]
fn an_operator_resolve_of_a_breach_that_goes_on_opens_again_after_for() {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = collector(dir.path());
    let operator = api_token(&c.data_dir, "operator");
    let agent_dir = dir.path().join("agent");
    let token = enroll_token(&c.data_dir, &[]);
    let config = agent_config(&agent_dir, &c, Some(&token), &[("app", closed_port())]);
    let _agent = spawn_agent_config(&config, &agent_dir);
    let inc = wait_incident(&c, &operator, "rule=app-down", "incident", |i| {
        i["state"] == "open"
    });
    let id = inc["id"].as_i64().expect("id");
    let (status, body) = api_post(
        &c,
        &operator,
        &format!("/incidents/{id}/resolve"),
        &json!({"code": "solved", "note": "restarted it"}),
    );
    assert_eq!(status, 200, "{body}");
    let resolved_ms = body["resolved_ms"].as_i64().expect("resolved_ms");

    // The check keeps failing: after `for` (1 s) the incident is open again.
    let again = wait_incident(
        &c,
        &operator,
        "rule=app-down",
        "open again after the operator's resolve",
        |i| i["state"] == "open",
    );
    let started = again["started_ms"]
        .as_i64()
        .expect("started_ms")
        .max(again["last_breach_ms"].as_i64().unwrap_or(0));
    assert!(started >= resolved_ms, "{again}");
    assert!(
        again["id"] == id && again["reopen_count"] == 1 || again["id"] != id,
        "reopened or a new incident: {again}"
    );
}

#[test]
fn maintenance_suppression_ends_with_its_window() {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = collector(dir.path());
    let operator = api_token(&c.data_dir, "operator");
    // A window that ends 6 s from now.
    let (status, window) = api_post(
        &c,
        &operator,
        "/maintenance",
        &json!({"name": "short", "scope": {"host": "state-*"}, "start": now_ms() - 1_000,
                "duration": "7s"}),
    );
    assert_eq!(status, 201, "{window}");
    let ends = window["start_ms"].as_i64().expect("start") + 7_000;
    let agent_dir = dir.path().join("agent");
    let token = enroll_token(&c.data_dir, &[]);
    let config = agent_config(&agent_dir, &c, Some(&token), &[("app", closed_port())]);
    let _agent = spawn_agent_config(&config, &agent_dir);
    let inc = wait_incident(&c, &operator, "rule=app-down", "suppressed incident", |i| {
        i["state"] == "open"
    });
    if now_ms() < ends {
        assert_eq!(inc["suppressed"]["reason"], "maintenance", "{inc}");
    }
    let after = wait_incident(
        &c,
        &operator,
        "rule=app-down",
        "no longer suppressed once the window ended",
        |i| i["id"] == inc["id"] && i["suppressed"].is_null(),
    );
    assert_eq!(after["state"], "open", "{after}");
    let detail = api_get(&c, &operator, &format!("/incidents/{}", inc["id"]));
    let kinds = timeline_kinds(&detail);
    assert!(kinds.contains(&"unsuppressed"), "{kinds:?}");
}

#[test]
fn an_incident_opened_before_the_inventory_gets_its_ci() {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = collector(dir.path());
    let viewer = api_token(&c.data_dir, "viewer");
    let rt = runtime();
    let endpoint = wire::endpoint(&rt, c.quic);
    let token = enroll_token(&c.data_dir, &[]);
    let me = rt.block_on(wire::enroll(&endpoint, c.quic, &token, "early-host"));
    let s = rt.block_on(wire::session(
        &endpoint,
        c.quic,
        &me,
        wire::hello(&me, "early-host", 1_000),
    ));
    // The first samples, before any inventory: a full filesystem.
    let full = Message::Batch(Batch {
        seq: 1,
        samples: vec![wire::sample(
            "filesystem_used_ratio",
            &[("mountpoint", "/data"), ("device", "/dev/vdb")],
            0.97,
        )],
    });
    assert_eq!(rt.block_on(wire::send_batch(&s.conn, &full)), Some(1));
    let inc = wait_incident(
        &c,
        &viewer,
        "rule=disk-full&host=early-host",
        "incident",
        |i| i["state"] == "open",
    );
    assert!(inc["ci"]["id"].is_null(), "no CI yet: {inc}");

    // Now the inventory, holding that filesystem.
    let mut inventory = Inventory {
        cis: vec![
            Ci::new(ci_type::HOST, "host", "early-host").attr("machine_id", "e2e-early-host"),
            Ci::new(ci_type::FILESYSTEM, "/data", "/data").attr("device", "/dev/vdb"),
        ],
        ..Inventory::default()
    };
    inventory.canonicalize();
    let snapshot = Message::InventorySnapshot(InventorySnapshot {
        version: 1,
        ts_ms: now_ms(),
        inventory,
    });
    let reply = rt.block_on(within("inventory stored", async {
        let (mut send, mut recv) = s.conn.open_bi().await.expect("stream");
        client::write_message(&mut send, &snapshot)
            .await
            .expect("write");
        send.finish().expect("finish");
        let mut dec = vigil_shared::codec::FrameDecoder::new(1 << 20);
        client::read_message(&mut recv, &mut dec).await
    }));
    assert!(
        matches!(reply, Ok(Some(Message::InventoryAck(_)))),
        "{reply:?}"
    );
    let with_ci = wait_incident(
        &c,
        &viewer,
        "rule=disk-full&host=early-host",
        "the incident gets its CI",
        |i| i["ci"]["id"].is_i64(),
    );
    let ci = with_ci["ci"]["id"].as_i64().expect("ci id");
    let cis = api_get(&c, &viewer, "/cis?type=filesystem&host=early-host");
    let fs: Vec<&Value> = cis["items"].as_array().expect("items").iter().collect();
    assert_eq!(fs.len(), 1, "{cis}");
    assert_eq!(fs[0]["id"], ci);
    // `?ci=` finds it.
    let found = incidents(&c, &viewer, &format!("ci={ci}"));
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0]["id"], inc["id"]);
}
