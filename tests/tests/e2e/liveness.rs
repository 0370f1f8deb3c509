//! Whether a host is up, as the collector decides it and tells it everywhere (`vigil_host_up`,
//! the `host-unreachable` incident, `GET /api/v1/agents`), against a hand-driven agent that says
//! what the real one never would, and against real agents that stop, crash and come back:
//!
//! - a hello's interval is clamped where it is decoded (and counted), so no interval can stop
//!   incident evaluation or make the engine and `/metrics` disagree;
//! - a clean stop (goodbye) counts as unreachable only after `agents.shutdown_grace`, and the
//!   agent's record says it stopped cleanly and when;
//! - a collector restart never reads as the recovery of a host that is still down;
//! - the end of a replaced connection never marks a reconnected agent disconnected;
//! - a collector thread that dies is loud: logged as an error, and `serve` exits non-zero.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use vigil_shared::proto::{Batch, Message};

use crate::harness::*;
use crate::wire::{self, runtime, within};

const WAIT: Duration = Duration::from_secs(60);

/// Two rules on failing checks: `probe-down` opens at once (an incident proves the engine is
/// alive); `probe-slow` needs the breach to hold 2 s, so its incident proves the engine also
/// ran at least two of its one-second ticks meanwhile (liveness is decided on ticks).
const CHECK_RULE: &str = "[[rule]]\nname = \"probe-down\"\nmetric = \"check_up\"\nbelow = 1\n\
                          impact = \"high\"\nurgency = \"high\"\n[rule.scope]\ntype = \"check\"\n\
                          [[rule]]\nname = \"probe-slow\"\nmetric = \"check_up\"\nbelow = 1\n\
                          for = \"2s\"\n[rule.scope]\ntype = \"check\"\n";

fn rejected(c: &Collector, reason: &str) -> f64 {
    metric_value(
        &metrics(c),
        &format!("vigil_ingest_rejected_total{{reason=\"{reason}\"}}"),
    )
    .unwrap_or(0.0)
}

fn host_up(c: &Collector, host: &str) -> Option<f64> {
    metric_value(&metrics(c), &format!("vigil_host_up{{host=\"{host}\"}}"))
}

fn agent_record(c: &Collector, token: &str, id: &str) -> Value {
    api_get(c, token, "/agents")
        .as_array()
        .and_then(|a| a.iter().find(|r| r["id"] == id).cloned())
        .unwrap_or_else(|| panic!("agent {id} not listed"))
}

/// Enrolls and starts an agent (1 s interval) in `dir`; returns it and its id once the
/// collector lists it connected and up.
fn start_agent(c: &Collector, api: &str, dir: &Path) -> (Proc, String) {
    let agent = spawn_agent(c.quic, Some(&enroll_token(&c.data_dir, &[])), dir, "1s");
    let id = wait_until(WAIT, "agent enrolled", || agent_id(dir));
    wait_until(WAIT, "agent connected and up", || {
        let r = agent_record(c, api, &id);
        (r["connected"] == true && r["state"] == "up").then_some(())
    });
    (agent, id)
}

fn failing_check(check: &str) -> Message {
    Message::Batch(Batch {
        seq: 0,
        samples: vec![wire::sample("check_up", &[("check", check)], 0.0)],
    })
}

fn with_seq(msg: Message, seq: u64) -> Message {
    match msg {
        Message::Batch(mut b) => {
            b.seq = seq;
            Message::Batch(b)
        }
        other => other,
    }
}

/// Sends a failing `check` every 300 ms from `*seq` on until the `probe-slow` incident of
/// `host` is open (at least 2 s of engine ticks later); returns it.
fn hold_a_failing_check(
    rt: &tokio::runtime::Runtime,
    conn: &quinn::Connection,
    seq: &mut u64,
    c: &Collector,
    token: &str,
    host: &str,
    check: &str,
) -> Value {
    wait_until(WAIT, "the probe-slow incident", || {
        *seq += 1;
        let ack = rt.block_on(wire::send_batch(
            conn,
            &with_seq(failing_check(check), *seq),
        ));
        assert_eq!(ack, Some(*seq), "batch {seq} acknowledged");
        let found = incidents(c, token, &format!("rule=probe-slow&host={host}"))
            .into_iter()
            .find(|i| i["state"] == "open");
        if found.is_none() {
            std::thread::sleep(Duration::from_millis(300));
        }
        found
    })
}

#[test]
fn no_hello_interval_can_stop_incident_evaluation_or_split_liveness() {
    let dir = tempfile::tempdir().expect("tempdir");
    let any = "127.0.0.1:0".parse().expect("addr");
    let c = spawn_collector_with(&dir.path().join("c"), any, any, CHECK_RULE);
    let api = api_token(&c.data_dir, "viewer");
    let rt = runtime();
    let addr = c.quic;

    // 1. An interval of 2^62 ms: the host goes unreachable (connection lost), then comes back;
    //    resolving its incident computed a grace of 2 x interval, which overflowed and killed
    //    the engine thread.
    let huge = 1u64 << 62;
    let token = enroll_token(&c.data_dir, &[]);
    let endpoint = wire::endpoint(&rt, addr);
    let rogue = rt.block_on(wire::enroll(&endpoint, addr, &token, "rogue-huge"));
    let before = rejected(&c, "bad_interval");
    let s = rt.block_on(wire::session(
        &endpoint,
        addr,
        &rogue,
        wire::hello(&rogue, "rogue-huge", huge),
    ));
    assert_eq!(rt.block_on(wire::valid_batch(&s.conn, 1)), 1);
    s.conn.close(0u32.into(), b"gone without a goodbye");
    wait_incident(
        &c,
        &api,
        "rule=host-unreachable&host=rogue-huge",
        "the lost connection opens host-unreachable",
        |i| i["state"] == "open",
    );
    let s = rt.block_on(wire::session(
        &endpoint,
        addr,
        &rogue,
        wire::hello(&rogue, "rogue-huge", huge),
    ));
    assert_eq!(rt.block_on(wire::valid_batch(&s.conn, 2)), 2);
    wait_incident(
        &c,
        &api,
        "rule=host-unreachable&host=rogue-huge",
        "host-unreachable resolves once the host is back",
        |i| i["state"] == "resolved",
    );
    // The engine still evaluates: a failing check opens its incident.
    let ack = rt.block_on(wire::send_batch(&s.conn, &with_seq(failing_check("x"), 3)));
    assert_eq!(ack, Some(3));
    wait_incident(
        &c,
        &api,
        "rule=probe-down&host=rogue-huge",
        "a failing check still opens an incident (the engine is alive)",
        |i| i["state"] == "open",
    );
    assert!(
        rejected(&c, "bad_interval") >= before + 2.0,
        "both out-of-range intervals are counted"
    );

    // 2. An interval of u64::MAX: as i64 it was -1, so the engine saw the host as down while
    //    /metrics (saturating) saw it up. The host must be up everywhere while it streams.
    let token = enroll_token(&c.data_dir, &[]);
    let rogue = rt.block_on(wire::enroll(&endpoint, addr, &token, "rogue-max"));
    let s = rt.block_on(wire::session(
        &endpoint,
        addr,
        &rogue,
        wire::hello(&rogue, "rogue-max", u64::MAX),
    ));
    assert_eq!(rt.block_on(wire::valid_batch(&s.conn, 1)), 1);
    assert_eq!(host_up(&c, "rogue-max"), Some(1.0));
    // The host streams a failing check for 2 s of engine ticks: its incident opens, and opens
    // unsuppressed, which it would not if the engine held the host for unreachable (inputs and
    // ticks run in order on the engine's thread).
    let mut seq = 1;
    let check = hold_a_failing_check(&rt, &s.conn, &mut seq, &c, &api, "rogue-max", "y");
    assert!(check["suppressed"].is_null(), "{check}");
    assert_eq!(host_up(&c, "rogue-max"), Some(1.0));
    assert!(
        incidents(&c, &api, "rule=host-unreachable&host=rogue-max").is_empty(),
        "a streaming host is never unreachable"
    );
    let record = agent_record(&c, &api, &rogue.agent_id);
    assert_eq!(record["connected"], true, "{record}");
    endpoint.close(0u32.into(), b"done");
    rt.block_on(within("close", endpoint.wait_idle()));
}

#[test]
fn a_clean_stop_is_unreachable_only_after_the_shutdown_grace() {
    let dir = tempfile::tempdir().expect("tempdir");
    let any = "127.0.0.1:0".parse().expect("addr");
    // Three silent intervals of 1 s would be 3 s; the grace is 8 s.
    let c = spawn_collector_with(
        &dir.path().join("c"),
        any,
        any,
        "[agents]\ndown_after_intervals = 3\nshutdown_grace = \"8s\"\n",
    );
    let api = api_token(&c.data_dir, "viewer");
    let agent_dir = dir.path().join("agent");
    let (mut agent, id) = start_agent(&c, &api, &agent_dir);
    let host = agent_record(&c, &api, &id)["hostname"]
        .as_str()
        .expect("hostname")
        .to_string();

    let stopped_at = now_ms();
    assert!(agent.terminate(Duration::from_secs(20)).success());
    let record = wait_until(WAIT, "the record says it stopped cleanly", || {
        let r = agent_record(&c, &api, &id);
        (r["state"] == "stopped").then_some(r)
    });
    let said = record["stopped_at_ms"].as_i64().expect("stopped_at_ms");
    assert!(
        (stopped_at - 1_000..=stopped_at + 5_000).contains(&said),
        "stopped at {said}, SIGTERM at {stopped_at}: {record}"
    );
    assert!(record["stopped_at"].is_string(), "{record}");
    assert_eq!(record["connected"], false);
    assert_eq!(host_up(&c, &host), Some(0.0), "a stopped host is not up");

    // After the grace it does count as unreachable, and not before.
    let inc = wait_incident(
        &c,
        &api,
        &format!("rule=host-unreachable&host={id}"),
        "host-unreachable once the grace is over",
        |i| i["state"] == "open",
    );
    let started = inc["started_ms"].as_i64().expect("started_ms");
    assert!(
        started >= said + 7_500,
        "opened {} ms after the goodbye, before the 8 s grace: {inc}",
        started - said
    );
    assert_eq!(inc["priority"], "P1");
    assert_eq!(agent_record(&c, &api, &id)["state"], "down");
}

#[test]
fn a_collector_restart_does_not_resolve_an_outage_that_goes_on() {
    let dir = tempfile::tempdir().expect("tempdir");
    let any = "127.0.0.1:0".parse().expect("addr");
    let cdir = dir.path().join("c");
    let mut c = spawn_collector_with(&cdir, any, any, CHECK_RULE);
    let api = api_token(&c.data_dir, "viewer");
    let down_dir = dir.path().join("down");
    let (mut down, down_id) = start_agent(&c, &api, &down_dir);
    let host = agent_record(&c, &api, &down_id)["hostname"]
        .as_str()
        .expect("hostname")
        .to_string();
    down.kill();
    let outage = wait_incident(
        &c,
        &api,
        &format!("rule=host-unreachable&host={down_id}"),
        "host-unreachable after kill -9",
        |i| i["state"] == "open",
    );

    // Restart the collector; the dead agent stays dead.
    let token = enroll_token(&c.data_dir, &[]);
    assert!(c.proc.terminate(Duration::from_secs(30)).success());
    let c = spawn_collector_with(&cdir, any, any, CHECK_RULE);
    // A later event the engine decides after the restart: a probe that connects now and holds
    // a failing check for 2 s. By the time its incident exists the engine has run at least two
    // ticks since the restart, each deciding every host's liveness.
    let rt = runtime();
    let endpoint = wire::endpoint(&rt, c.quic);
    let probe = rt.block_on(wire::enroll(&endpoint, c.quic, &token, "probe"));
    let s = rt.block_on(wire::session(
        &endpoint,
        c.quic,
        &probe,
        wire::hello(&probe, "probe", 1_000),
    ));
    let mut seq = 0;
    hold_a_failing_check(&rt, &s.conn, &mut seq, &c, &api, "probe", "p");
    let now = api_get(&c, &api, &format!("/incidents/{}", outage["id"]));
    assert_eq!(
        now["state"], "open",
        "the outage goes on, so it stays open: resolution {}, timeline {}",
        now["resolution"], now["timeline"]
    );
    // /metrics still knows the host, as down.
    assert_eq!(host_up(&c, &host), Some(0.0), "{}", metrics(&c));
    assert_eq!(agent_record(&c, &api, &down_id)["state"], "down");
}

#[test]
fn a_replaced_connections_end_does_not_mark_the_agent_disconnected() {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = spawn_collector(&dir.path().join("c"));
    let api = api_token(&c.data_dir, "viewer");
    let agent_dir = dir.path().join("agent");
    let (mut agent, id) = start_agent(&c, &api, &agent_dir);
    let ended = |c: &Collector| c.proc.logs().matches("replaced connection ended").count();
    let ended_before = ended(&c);

    // kill -9 and start again at once: the new connection replaces the old one, whose task
    // then ends.
    agent.kill();
    let _agent = spawn_agent(c.quic, None, &agent_dir, "1s");
    let deadline = std::time::Instant::now() + WAIT;
    while ended(&c) <= ended_before {
        if std::time::Instant::now() > deadline {
            panic!(
                "the old connection's end was not logged within {WAIT:?}; collector log:\n{}",
                c.proc.logs()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let seq_after = |c: &Collector| agent_record(c, &api, &id)["last_seq"].as_u64().unwrap_or(0);
    let seq = seq_after(&c);
    wait_until(WAIT, "new batches after the old connection ended", || {
        (seq_after(&c) >= seq + 2).then_some(())
    });
    let record = agent_record(&c, &api, &id);
    assert_eq!(record["connected"], true, "{record}");
    assert_eq!(record["state"], "up", "{record}");
    let host = record["hostname"].as_str().expect("hostname");
    assert_eq!(host_up(&c, host), Some(1.0));
    assert_eq!(
        metric_value(&metrics(&c), "vigil_agents_connected"),
        Some(1.0)
    );
}

#[test]
fn a_dead_engine_is_an_error_and_serve_exits_non_zero() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data_dir = dir.path().join("c");
    let config = collector_config(
        &data_dir,
        "127.0.0.1:0".parse().expect("addr"),
        "127.0.0.1:0".parse().expect("addr"),
        "",
    );
    let mut cmd = std::process::Command::new(bin("vigil-collector"));
    cmd.args(["serve", "--config"])
        .arg(&config)
        .env("VIGIL_FAILPOINTS", "engine-panic");
    let (status, _, stderr) = run_bounded(cmd, dir.path(), Duration::from_secs(60));
    assert!(
        !status.success(),
        "a collector whose engine died must exit non-zero; stderr:\n{stderr}"
    );
    assert!(
        stderr.contains("ERROR") && stderr.contains("incident engine"),
        "the death is logged as an error naming the component:\n{stderr}"
    );
    assert!(!Path::new(&data_dir).join("vigil.db-journal").exists());
}
