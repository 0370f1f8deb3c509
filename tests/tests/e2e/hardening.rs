//! Hostile clients and lost state, against the real collector: a connection flood against a
//! low cap, times no calendar has, a host name another agent already uses, control characters
//! meant for the log, a viewer sending bodies, a lost store, an agent the store does not know,
//! and file modes.

use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::json;
use vigil_shared::proto::{Batch, Message};

use crate::harness::*;
use crate::wire::{self, enroll, runtime, session, within};

const WAIT: Duration = Duration::from_secs(30);

fn rejected(c: &Collector, reason: &str) -> f64 {
    metric_value(
        &metrics(c),
        &format!("vigil_ingest_rejected_total{{reason=\"{reason}\"}}"),
    )
    .unwrap_or(0.0)
}

/// A TCP connection to `to` from the loopback address `from` (so that its per-address count is
/// not the test client's own).
fn connect_from(
    rt: &tokio::runtime::Runtime,
    from: &str,
    to: SocketAddr,
) -> std::io::Result<TcpStream> {
    rt.block_on(async {
        let sock = tokio::net::TcpSocket::new_v4()?;
        sock.bind(format!("{from}:0").parse().expect("addr"))?;
        let stream = tokio::time::timeout(Duration::from_secs(5), sock.connect(to))
            .await
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
        stream.into_std()
    })
}

/// 100 idle connections from one address against `max_connections_per_address = 40`: 60 are
/// closed at once and counted, the collector keeps answering everyone else, and a stop with 40
/// idle connections open does not wait for them.
#[test]
fn an_idle_connection_flood_is_capped_and_does_not_slow_a_stop() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut c = spawn_collector_with(
        dir.path(),
        "127.0.0.1:0".parse().expect("addr"),
        "127.0.0.1:0".parse().expect("addr"),
        // Right after the harness's `[http] listen`: these are `[http]` keys.
        "max_connections = 60\nmax_connections_per_address = 40\nidle_timeout = \"5m\"\n",
    );
    let rt = runtime();
    let mut flood = Vec::new();
    for _ in 0..100 {
        if let Ok(s) = connect_from(&rt, "127.0.0.2", c.http) {
            flood.push(s);
        }
    }
    assert_eq!(
        flood.len(),
        100,
        "the kernel accepts them all; the collector decides"
    );
    let text = wait_until(WAIT, "60 connections refused", || {
        let text = metrics(&c);
        let refused = metric_value(
            &text,
            "vigil_http_connections_refused_total{reason=\"max_connections_per_address\"}",
        )?;
        (refused >= 60.0).then_some(text)
    });
    let open = metric_value(&text, "vigil_http_connections").expect("gauge");
    assert!((1.0..=41.0).contains(&open), "{open} open connections");
    let (status, _) = http_get(&format!("http://{}/readyz", c.http), None);
    assert_eq!(status, 200);
    let started = Instant::now();
    let status = c.proc.terminate(Duration::from_secs(30));
    assert!(status.success(), "{status}");
    // Idle connections are closed at once, not waited for (it took 16 s for 50 before).
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "stopping took {:?} with 40 idle connections",
        started.elapsed()
    );
    drop(flood);
}

/// A sample from year 10000 is dropped and counted, and the incident list still answers; a
/// maintenance window starting at i64::MAX or i64::MIN is refused (422), and the window list
/// still answers.
#[test]
fn times_no_calendar_has_are_refused_and_listings_keep_answering() {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = spawn_collector(dir.path());
    let operator = api_token(dir.path(), "operator");
    let token = enroll_token(dir.path(), &[]);
    let rt = runtime();
    let endpoint = wire::endpoint(&rt, c.quic);
    let before = rejected(&c, "bad_timestamp");
    rt.block_on(async {
        let identity = enroll(&endpoint, c.quic, &token, "e2e-far-future").await;
        let s = session(
            &endpoint,
            c.quic,
            &identity,
            wire::hello(&identity, "e2e-far-future", 1_000),
        )
        .await;
        let mut far = wire::sample("filesystem_used_ratio", &[("mountpoint", "/")], 0.99);
        far.ts_ms = 253_402_300_800_000; // 10000-01-01
        let msg = Message::Batch(Batch {
            seq: 1,
            samples: vec![far, wire::sample("load1", &[], 0.1)],
        });
        assert_eq!(wire::send_batch(&s.conn, &msg).await, Some(1));
        within("close", async { s.conn.close(0u32.into(), b"done") }).await;
    });
    wait_until(WAIT, "the far sample counted", || {
        (rejected(&c, "bad_timestamp") > before).then_some(())
    });
    let (status, body) = http_get(
        &format!("http://{}/api/v1/incidents", c.http),
        Some(&operator),
    );
    assert_eq!(status, 200, "{body}");
    for start in [
        json!(i64::MAX),
        json!(i64::MIN),
        json!("10000-01-01T00:00:00Z"),
    ] {
        let (status, body) = api_post(
            &c,
            &operator,
            "/maintenance",
            &json!({ "name": "forever", "start": start, "duration": "1h" }),
        );
        assert_eq!(status, 422, "start {start}: {body}");
    }
    let (status, body) = api_post(
        &c,
        &operator,
        "/maintenance",
        &json!({ "name": "ten-years", "start": "2026-01-01T00:00:00Z", "duration": "3650d" }),
    );
    assert_eq!(status, 422, "{body}");
    let (status, body) = http_get(
        &format!("http://{}/api/v1/maintenance", c.http),
        Some(&operator),
    );
    assert_eq!(status, 200, "{body}");
}

/// A second agent that says it is "vm" is renamed, counted and logged; the real vm keeps its
/// name, its series and the alerts that name it.
#[test]
fn a_host_name_another_agent_uses_is_renamed_never_merged() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut c = spawn_collector(dir.path());
    let operator = api_token(dir.path(), "operator");
    let rt = runtime();
    let endpoint = wire::endpoint(&rt, c.quic);
    // The sessions stay open (connected) until the end of the test.
    let (first, second, _sessions) = rt.block_on(async {
        let mut ids = Vec::new();
        let mut sessions = Vec::new();
        for _ in 0..2 {
            let token = enroll_token(dir.path(), &[]);
            let identity = enroll(&endpoint, c.quic, &token, "vm").await;
            let s = session(
                &endpoint,
                c.quic,
                &identity,
                wire::hello(&identity, "vm", 60_000),
            )
            .await;
            assert_eq!(wire::send_batch(&s.conn, &wire::batch(1)).await, Some(1));
            ids.push(identity.agent_id.clone());
            sessions.push(s);
        }
        (ids[0].clone(), ids[1].clone(), sessions)
    });
    let agents = api_get(&c, &operator, "/agents");
    let name_of = |id: &str| {
        agents
            .as_array()
            .expect("agents")
            .iter()
            .find(|a| a["id"] == id)
            .map(|a| a["hostname"].as_str().unwrap_or_default().to_owned())
    };
    let short: String = second.chars().take(8).collect();
    assert_eq!(name_of(&first).as_deref(), Some("vm"), "{agents}");
    assert_eq!(name_of(&second), Some(format!("vm~{short}")), "{agents}");
    assert_eq!(rejected(&c, "hostname_clash"), 1.0);
    let text = metrics(&c);
    assert_eq!(metric_value(&text, "vigil_host_up{host=\"vm\"}"), Some(1.0));
    assert!(c.proc.logs().contains("renamed"), "the clash is logged");
    // An Alertmanager alert for vm attaches to the first agent's host, not the newcomer's.
    let alert = json!({
        "version": "4", "status": "firing", "receiver": "vigil", "groupKey": "{}:{}",
        "alerts": [{
            "status": "firing", "labels": { "alertname": "NodeDown", "instance": "vm:9100" },
            "annotations": {}, "startsAt": "2026-01-01T00:00:00Z",
            "endsAt": "0001-01-01T00:00:00Z", "fingerprint": "f00d"
        }]
    });
    let (status, body) = api_post(&c, &operator, "/alertmanager", &alert);
    assert_eq!(status, 200, "{body}");
    let incident = wait_until(WAIT, "the alert's incident", || {
        incidents(&c, &operator, "")
            .into_iter()
            .find(|i| i["origin"] == "alertmanager")
    });
    assert_eq!(incident["host"]["agent_id"], json!(first), "{incident}");
    c.proc.kill();
}

/// A host name with a newline and an escape sequence reaches the log escaped: no forged line,
/// nothing for a terminal to obey.
#[test]
fn control_characters_an_agent_sends_are_escaped_in_the_log() {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = spawn_collector(dir.path());
    let token = enroll_token(dir.path(), &[]);
    let rt = runtime();
    let endpoint = wire::endpoint(&rt, c.quic);
    let evil = "evil\nERROR forged line\u{1b}[2J";
    rt.block_on(async {
        let identity = enroll(&endpoint, c.quic, &token, "evil").await;
        let s = session(
            &endpoint,
            c.quic,
            &identity,
            wire::hello(&identity, evil, 60_000),
        )
        .await;
        assert_eq!(wire::send_batch(&s.conn, &wire::batch(1)).await, Some(1));
    });
    let log = wait_until(WAIT, "the connection logged", || {
        let log = c.proc.logs();
        log.contains("evil\\x0aERROR forged line").then_some(log)
    });
    assert!(!log.lines().any(|l| l.starts_with("ERROR forged")), "{log}");
    assert!(
        !log.contains('\u{1b}'),
        "an escape sequence reached the log"
    );
}

/// A viewer gets 403 for a write whatever its body (not 400 or 422: it is not told what a
/// valid body would be); an operator with the same body gets the validation error.
#[test]
fn a_viewer_is_refused_before_its_body_is_read() {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = spawn_collector(dir.path());
    let viewer = api_token(dir.path(), "viewer");
    let operator = api_token(dir.path(), "operator");
    for path in [
        "/maintenance",
        "/rules",
        "/incidents/1/resolve",
        "/incidents/1/assign",
        "/incidents/1/comment",
    ] {
        let url = format!("http://{}/api/v1{path}", c.http);
        for body in ["{", "{\"unknown\": 1}"] {
            let (status, _) = http_json("POST", &url, &viewer, Some(body));
            assert_eq!(status, 403, "viewer POST {path} {body}");
        }
        let (status, _) = http_json("POST", &url, &operator, Some("{"));
        assert!(
            [400, 403, 422].contains(&status),
            "operator POST {path}: {status}"
        );
    }
}

/// A data dir that has the collector's CA but lost its store is refused with how to restore
/// it (a missing file, an empty one); admin commands refuse it too.
#[test]
fn a_lost_store_is_refused_with_how_to_restore_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    init_collector_dir(dir.path());
    let serve = || {
        let config = collector_config(
            dir.path(),
            "127.0.0.1:0".parse().expect("addr"),
            "127.0.0.1:0".parse().expect("addr"),
            "",
        );
        let mut cmd = Command::new(bin("vigil-collector"));
        cmd.arg("serve").arg("--config").arg(config);
        run_bounded(cmd, dir.path(), WAIT)
    };
    for f in ["vigil.db", "vigil.db-wal", "vigil.db-shm"] {
        let _ = std::fs::remove_file(dir.path().join(f));
    }
    let (status, _, err) = serve();
    assert!(!status.success());
    assert!(
        err.contains("vigil.db is missing") && err.contains("Restore"),
        "{err}"
    );
    assert!(!dir.path().join("vigil.db").exists(), "nothing was created");
    std::fs::write(dir.path().join("vigil.db"), b"").expect("empty store");
    let (status, _, err) = serve();
    assert!(!status.success());
    assert!(err.contains("vigil.db is empty"), "{err}");
}

/// An agent the store has no record of (the store was replaced by an older one) keeps running,
/// says why, and retries later instead of exiting for good.
#[test]
fn an_agent_the_store_does_not_know_retries_and_says_why() {
    let dir = tempfile::tempdir().expect("tempdir");
    let agent_dir = dir.path().join("agent");
    let data = dir.path().join("collector");
    let mut c = spawn_collector(&data);
    let api = api_token(&data, "viewer");
    let mut agent = spawn_agent(c.quic, Some(&enroll_token(&data, &[])), &agent_dir, "1s");
    let id = wait_until(WAIT, "agent enrolled", || agent_id(&agent_dir));
    wait_until(WAIT, "agent connected", || {
        api_get(&c, &api, "/agents")
            .as_array()
            .and_then(|a| {
                a.iter()
                    .find(|r| r["id"] == id.as_str() && r["connected"] == true)
            })
            .map(|_| ())
    });
    let (quic, http) = (c.quic, c.http);
    assert!(c.proc.terminate(WAIT).success());
    // The store forgets the agent (as a store restored from before its enrollment would).
    let db = open_store_rw(&data);
    db.execute_batch("PRAGMA foreign_keys = OFF")
        .expect("pragma");
    db.execute("DELETE FROM agents WHERE id = ?1", [&id])
        .expect("forget the agent");
    drop(db);
    let c = spawn_collector_at(&data, quic, http);
    wait_until(Duration::from_secs(60), "the agent says why", || {
        agent
            .logs()
            .contains("the collector does not know this agent")
            .then_some(())
    });
    assert!(agent.is_running(), "the agent exited:\n{}", agent.logs());
    assert!(c.proc.logs().contains("unknown agent"), "{}", c.proc.logs());
    agent.kill();
}

/// Whatever the umask, the data dir is 0700 and the store's files 0600.
#[test]
fn the_data_dir_and_the_store_are_private() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let c = spawn_collector(&data);
    let mode = |p: &Path| std::fs::metadata(p).expect("stat").permissions().mode() & 0o777;
    assert_eq!(mode(&data), 0o700, "data dir");
    for f in ["vigil.db", "vigil.db-wal", "vigil.db-shm"] {
        let p = data.join(f);
        if p.exists() {
            assert_eq!(mode(&p), 0o600, "{f}");
        }
    }
    assert!(
        data.join("vigil.db-wal").exists(),
        "a running store has its WAL"
    );
    drop(c);
}

/// Unmounts a tmpfs when dropped.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(at).expect("mount point");
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(at)
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "this test mounts a tmpfs (it needs root): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs(at.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// A batch of `n` samples (big enough to grow the WAL).
fn big_batch(seq: u64, n: usize) -> Message {
    Message::Batch(Batch {
        seq,
        samples: (0..n)
            .map(|i| wire::sample("load1", &[("core", &i.to_string())], i as f64))
            .collect(),
    })
}

/// The collector's data dir on a small tmpfs that fills up: the batch that could not be stored
/// is not acknowledged, `/readyz` says why, an API write answers 503 (not 500), and once space is
/// freed the same batch is stored and acknowledged, and `/readyz` is ready again.
#[test]
fn a_full_disk_is_reported_and_ingest_resumes_once_space_is_freed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let _fs = Tmpfs::mount(&data, "24m");
    let c = spawn_collector(&data);
    let operator = api_token(&data, "operator");
    let token = enroll_token(&data, &[]);
    let rt = runtime();
    let endpoint = wire::endpoint(&rt, c.quic);
    let readyz = || http_get(&format!("http://{}/readyz", c.http), None);
    let s = rt.block_on(async {
        let identity = enroll(&endpoint, c.quic, &token, "e2e-disk-full").await;
        session(
            &endpoint,
            c.quic,
            &identity,
            wire::hello(&identity, "e2e-disk-full", 60_000),
        )
        .await
    });
    let send = |seq: u64| rt.block_on(wire::send_batch(&s.conn, &big_batch(seq, 500)));
    assert_eq!(send(1), Some(1));
    // Fill the file system, leaving the store no room to grow.
    let filler = data.join("filler");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&filler).expect("filler");
        let chunk = vec![0u8; 64 * 1024];
        while f.write_all(&chunk).is_ok() {}
        let _ = f.sync_all();
    }
    // Batches until one is not acknowledged (the WAL has to grow for it).
    let mut seq = 2;
    let refused = loop {
        assert!(seq < 500, "the store never ran out of space");
        match send(seq) {
            Some(acked) => assert_eq!(acked, seq),
            None => break seq,
        }
        seq += 1;
    };
    let (status, body) = readyz();
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("store (cannot write"), "{body}");
    let (status, body) = api_post(
        &c,
        &operator,
        "/maintenance",
        &json!({ "name": "full", "start": "2030-01-01T00:00:00Z", "duration": "1h" }),
    );
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["code"], "unavailable", "{body}");
    // Space again: the batch that was refused is stored now (the agent replays it).
    std::fs::remove_file(&filler).expect("free space");
    assert_eq!(send(refused), Some(refused));
    assert_eq!(send(refused + 1), Some(refused + 1));
    let (status, body) = readyz();
    assert_eq!(status, 200, "{body}");
    // Every sequence number stored exactly once, none missing.
    let (count, max): (i64, i64) = open_store(&data)
        .query_row("SELECT COUNT(*), MAX(seq) FROM batches", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .expect("count");
    assert_eq!((count, max), (refused as i64 + 1, refused as i64 + 1));
}

/// A webhook receiver's answer is its own text: an operator sees it in the incident's
/// notifications, a viewer only the status.
#[test]
fn a_webhook_receivers_answer_is_shown_to_operators_not_viewers() {
    use std::io::{Read, Write};
    let receiver = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = receiver.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for stream in receiver.incoming() {
            let Ok(mut s) = stream else { return };
            let mut buf = [0u8; 65536];
            let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
            let _ = s.read(&mut buf);
            let body = "internal receiver detail 7f3a";
            let _ = write!(
                s,
                "HTTP/1.1 400 Bad Request\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    let dir = tempfile::tempdir().expect("tempdir");
    let c = spawn_collector_with(
        dir.path(),
        "127.0.0.1:0".parse().expect("addr"),
        "127.0.0.1:0".parse().expect("addr"),
        &format!("[[webhook]]\nname = \"hook\"\nurl = \"http://127.0.0.1:{port}/\"\n"),
    );
    let operator = api_token(dir.path(), "operator");
    let viewer = api_token(dir.path(), "viewer");
    let alert = json!({
        "version": "4", "status": "firing", "receiver": "vigil", "groupKey": "{}:{}",
        "alerts": [{
            "status": "firing",
            "labels": { "alertname": "DiskDown", "severity": "critical" },
            "annotations": {}, "startsAt": "2026-01-01T00:00:00Z",
            "endsAt": "0001-01-01T00:00:00Z", "fingerprint": "beef"
        }]
    });
    let (status, body) = api_post(&c, &operator, "/alertmanager", &alert);
    assert_eq!(status, 200, "{body}");
    let id = wait_until(WAIT, "the alert's incident", || {
        incidents(&c, &operator, "")
            .into_iter()
            .find(|i| i["origin"] == "alertmanager")
            .and_then(|i| i["id"].as_i64())
    });
    let error_as = |token: &str| {
        api_get(&c, token, &format!("/incidents/{id}"))["notifications"][0]["last_error"]
            .as_str()
            .map(str::to_owned)
    };
    let full = wait_until(WAIT, "the delivery failed", || error_as(&operator));
    assert!(full.contains("internal receiver detail 7f3a"), "{full}");
    assert_eq!(error_as(&viewer).as_deref(), Some("HTTP 400"));
}
