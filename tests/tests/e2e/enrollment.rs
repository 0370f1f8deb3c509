//! Enrollment and identity, end to end. A wrong CA pin, an expired or reused single-use token, a
//! revoked agent and a client certificate from another CA are each refused, with a clear log
//! line on both sides, and nothing is stored: no identity in the agent's data dir, no agent row,
//! no batch, no spent token.

use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitStatus;
use std::time::{Duration, SystemTime};

use quinn::{ConnectionError, VarInt};
use vigil_shared::identity::{self, CaBundle};
use vigil_shared::proto::{self, Batch, Hello, Message, Sample};

use crate::harness::*;

/// Generous bound for anything that should take a second or two on an idle machine.
const WAIT: Duration = Duration::from_secs(30);
/// The agent's exit status when the collector refused it for good.
const REFUSED_EXIT_CODE: i32 = 78;

/// The log with terminal colour codes removed, so messages and fields read as one string.
fn plain_log(p: &Proc) -> String {
    let raw = p.logs();
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ params final-byte (a letter).
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Waits for `p` to exit, failing with its log if it is still running after `WAIT`.
fn wait_exit(p: &mut Proc) -> ExitStatus {
    match p.wait_for(WAIT) {
        Some(status) => status,
        None => panic!(
            "{} still running after {WAIT:?}; log:\n{}",
            p.name,
            plain_log(p)
        ),
    }
}

/// Waits until `p`'s log contains every one of `needles`; returns the log.
fn wait_log(p: &Proc, needles: &[&str]) -> String {
    let what = format!("{} log to contain {needles:?}", p.name);
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let log = plain_log(p);
        if needles.iter().all(|n| log.contains(n)) {
            return log;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}; log:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn metric(c: &Collector, series: &str) -> f64 {
    let text = metrics(c);
    metric_value(&text, series).unwrap_or_else(|| panic!("{series} missing from:\n{text}"))
}

fn rejected(c: &Collector, reason: &str) -> f64 {
    metric(
        c,
        &format!("vigil_ingest_rejected_total{{reason=\"{reason}\"}}"),
    )
}

fn enrollments(c: &Collector, result: &str) -> f64 {
    metric(
        c,
        &format!("vigil_enrollments_total{{result=\"{result}\"}}"),
    )
}

fn count(data_dir: &Path, sql: &str) -> i64 {
    open_store(data_dir)
        .query_row(sql, [], |r| r.get(0))
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

fn agent_ids(data_dir: &Path) -> Vec<String> {
    let conn = open_store(data_dir);
    let mut stmt = conn
        .prepare("SELECT id FROM agents ORDER BY id")
        .expect("prepare");
    let ids = stmt
        .query_map([], |r| r.get(0))
        .expect("query")
        .collect::<Result<Vec<String>, _>>()
        .expect("rows");
    ids
}

fn batches_of(data_dir: &Path, agent: &str) -> i64 {
    open_store(data_dir)
        .query_row(
            "SELECT COUNT(*) FROM batches WHERE agent_id = ?1",
            [agent],
            |r| r.get(0),
        )
        .expect("count batches")
}

/// Enrollment tokens the collector has marked used.
fn spent_tokens(data_dir: &Path) -> i64 {
    count(
        data_dir,
        "SELECT COUNT(*) FROM enroll_tokens WHERE used_at_ms IS NOT NULL",
    )
}

/// A refused agent leaves nothing behind: no id, no key, no certificate, no CA.
fn assert_no_identity(agent_dir: &Path) {
    for f in ["agent-id", "agent.key", "agent.pem", "ca.pem"] {
        assert!(
            !agent_dir.join(f).exists(),
            "{} exists after a refused enrollment",
            agent_dir.join(f).display()
        );
    }
}

/// `token` with its CA pin replaced by `pin_of`'s pin.
fn with_pin_of(token: &str, pin_of: &str) -> String {
    let (head, _) = token.rsplit_once('.').expect("token has a pin");
    let (_, pin) = pin_of.rsplit_once('.').expect("token has a pin");
    format!("{head}.{pin}")
}

/// Starts an agent with `token` and waits until it has enrolled; returns it and its id.
fn enrolled_agent(c: &Collector, token: &str, dir: &Path) -> (Proc, String) {
    let mut agent = spawn_agent(c.quic, Some(token), dir, "1s");
    let id = wait_until(WAIT, "agent enrollment", || {
        assert!(
            agent.is_running(),
            "agent exited while enrolling; log:\n{}",
            plain_log(&agent)
        );
        agent_id(dir)
    });
    (agent, id)
}

#[test]
fn wrong_ca_pin_is_refused_and_nothing_is_stored() {
    let dir = tempfile::tempdir().expect("tempdir");
    let collector = spawn_collector(&dir.path().join("collector"));
    let token = enroll_token(&collector.data_dir, &[]);
    // Another collector's CA, in a data dir of its own.
    init_collector_dir(&dir.path().join("other"));
    let other = enroll_token(&dir.path().join("other"), &[]);
    let bad = with_pin_of(&token, &other);
    assert_ne!(bad, token);

    let agent_dir = dir.path().join("agent");
    let mut agent = spawn_agent(collector.quic, Some(&bad), &agent_dir, "1s");
    let status = wait_exit(&mut agent);
    let log = plain_log(&agent);
    assert!(
        !status.success(),
        "an agent with a wrong pin must fail; log:\n{log}"
    );
    assert!(
        log.contains("does not hold the CA pinned by the enrollment token"),
        "agent log must say the pin does not match:\n{log}"
    );
    let clog = wait_log(
        &collector.proc,
        &["connection refused during TLS handshake", "PinMismatch"],
    );
    assert!(!clog.contains("agent enrolled"), "collector log:\n{clog}");
    assert_no_identity(&agent_dir);
    assert!(agent_ids(&collector.data_dir).is_empty());
    assert_eq!(spent_tokens(&collector.data_dir), 0);
    wait_until(WAIT, "unauthenticated rejection counted", || {
        (rejected(&collector, "unauthenticated") >= 1.0).then_some(())
    });
    assert_eq!(enrollments(&collector, "ok"), 0.0);

    // The same token with its real pin works: the pin alone was the problem.
    let (_agent, id) = enrolled_agent(&collector, &token, &agent_dir);
    assert_eq!(agent_ids(&collector.data_dir), vec![id]);
}

#[test]
fn expired_token_is_refused_and_nothing_is_stored() {
    let dir = tempfile::tempdir().expect("tempdir");
    let collector = spawn_collector(&dir.path().join("collector"));
    let token = enroll_token(&collector.data_dir, &["--ttl", "1s"]);
    std::thread::sleep(Duration::from_millis(2100));

    let agent_dir = dir.path().join("agent");
    let mut agent = spawn_agent(collector.quic, Some(&token), &agent_dir, "1s");
    let status = wait_exit(&mut agent);
    let log = plain_log(&agent);
    assert!(
        !status.success(),
        "an agent with an expired token must fail; log:\n{log}"
    );
    assert!(
        log.contains("the collector refused enrollment: enrollment token expired"),
        "agent log:\n{log}"
    );
    wait_log(
        &collector.proc,
        &["enrollment refused", "enrollment token expired"],
    );
    assert_no_identity(&agent_dir);
    assert!(agent_ids(&collector.data_dir).is_empty());
    assert_eq!(spent_tokens(&collector.data_dir), 0);
    // One attempt, one refusal: the agent does not hammer the collector with a dead token.
    assert_eq!(enrollments(&collector, "refused"), 1.0);
    assert_eq!(enrollments(&collector, "ok"), 0.0);
}

#[test]
fn single_use_token_enrolls_one_agent_only() {
    let dir = tempfile::tempdir().expect("tempdir");
    let collector = spawn_collector(&dir.path().join("collector"));
    let token = enroll_token(&collector.data_dir, &["--single-use"]);

    let first_dir = dir.path().join("first");
    let (mut first, first_id) = enrolled_agent(&collector, &token, &first_dir);

    let second_dir = dir.path().join("second");
    let mut second = spawn_agent(collector.quic, Some(&token), &second_dir, "1s");
    let status = wait_exit(&mut second);
    let log = plain_log(&second);
    assert!(
        !status.success(),
        "a reused single-use token must fail; log:\n{log}"
    );
    assert!(
        log.contains("the collector refused enrollment: enrollment token already used"),
        "agent log:\n{log}"
    );
    wait_log(
        &collector.proc,
        &["enrollment refused", "enrollment token already used"],
    );
    assert_no_identity(&second_dir);
    assert_eq!(agent_ids(&collector.data_dir), vec![first_id.clone()]);
    let used_by: Option<String> = open_store(&collector.data_dir)
        .query_row("SELECT used_by FROM enroll_tokens", [], |r| r.get(0))
        .expect("token row");
    assert_eq!(used_by.as_deref(), Some(first_id.as_str()));
    assert_eq!(enrollments(&collector, "ok"), 1.0);
    assert_eq!(enrollments(&collector, "refused"), 1.0);

    // The first agent is unaffected.
    wait_until(WAIT, "first agent connected", || {
        (metric(&collector, "vigil_agents_connected") == 1.0).then_some(())
    });
    assert!(first.is_running(), "log:\n{}", plain_log(&first));
}

#[test]
fn revoked_agent_is_cut_off_and_stays_out() {
    let dir = tempfile::tempdir().expect("tempdir");
    let collector = spawn_collector(&dir.path().join("collector"));
    let token = enroll_token(&collector.data_dir, &[]);
    let agent_dir = dir.path().join("agent");
    let (mut agent, id) = enrolled_agent(&collector, &token, &agent_dir);
    wait_until(WAIT, "agent connected and storing batches", || {
        (metric(&collector, "vigil_agents_connected") == 1.0
            && batches_of(&collector.data_dir, &id) > 0)
            .then_some(())
    });
    let revoked_before = rejected(&collector, "revoked");

    let out = admin(&collector.data_dir, &["agent", "revoke", &id]);
    assert!(
        out.status.success(),
        "agent revoke: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The running agent is cut off and stops for good.
    let status = wait_exit(&mut agent);
    let log = plain_log(&agent);
    assert!(!status.success(), "a revoked agent must fail; log:\n{log}");
    // A distinct status, so a supervisor does not restart it forever
    // (RestartPreventExitStatus in config/systemd/vigil-agent.service).
    assert_eq!(status.code(), Some(REFUSED_EXIT_CODE), "log:\n{log}");
    let unit = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/systemd/vigil-agent.service"),
    )
    .expect("unit file");
    assert!(
        unit.contains(&format!("RestartPreventExitStatus={REFUSED_EXIT_CODE}")),
        "the systemd unit must not restart a refused agent"
    );
    assert!(log.contains("certificate revoked"), "agent log:\n{log}");
    wait_until(WAIT, "agents_connected back to 0", || {
        (metric(&collector, "vigil_agents_connected") == 0.0).then_some(())
    });
    wait_log(&collector.proc, &["agent revoked: closing its connection"]);
    assert!(rejected(&collector, "revoked") > revoked_before);
    let stored = batches_of(&collector.data_dir, &id);
    let revoked_at: Option<i64> = open_store(&collector.data_dir)
        .query_row(
            "SELECT revoked_at_ms FROM agents WHERE id = ?1",
            [&id],
            |r| r.get(0),
        )
        .expect("agent row");
    assert!(revoked_at.is_some());

    // A restart with the same identity is refused at once, and stores nothing.
    let revoked_mid = rejected(&collector, "revoked");
    let mut again = spawn_agent(collector.quic, None, &agent_dir, "1s");
    let status = wait_exit(&mut again);
    let log = plain_log(&again);
    assert!(
        !status.success(),
        "a revoked agent must not start; log:\n{log}"
    );
    assert_eq!(status.code(), Some(REFUSED_EXIT_CODE), "log:\n{log}");
    assert!(log.contains("certificate revoked"), "agent log:\n{log}");
    wait_log(&collector.proc, &["refused: agent certificate revoked"]);
    assert!(rejected(&collector, "revoked") > revoked_mid);
    assert_eq!(batches_of(&collector.data_dir, &id), stored);
    assert_eq!(metric(&collector, "vigil_agents_connected"), 0.0);
    assert_eq!(
        count(
            &collector.data_dir,
            "SELECT COUNT(*) FROM agents WHERE connected != 0"
        ),
        0
    );
}

#[test]
fn agent_enrolled_with_another_collector_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = spawn_collector(&dir.path().join("a"));
    let b = spawn_collector(&dir.path().join("b"));
    let agent_dir = dir.path().join("agent");
    let (mut agent, id) = enrolled_agent(&b, &enroll_token(&b.data_dir, &[]), &agent_dir);
    assert!(
        agent.terminate(WAIT).success(),
        "log:\n{}",
        plain_log(&agent)
    );
    let unauthenticated_before = rejected(&a, "unauthenticated");

    // Same identity, pointed at A: the handshake fails on both sides; the agent keeps trying
    // (an enrolled agent keeps sampling into its spool) and says why.
    let mut agent = spawn_agent(a.quic, None, &agent_dir, "1s");
    wait_log(
        &agent,
        &[
            "collector not trusted",
            "not signed by the CA this agent enrolled with",
        ],
    );
    wait_log(&a.proc, &["connection refused during TLS handshake"]);
    wait_until(WAIT, "unauthenticated rejection counted on A", || {
        (rejected(&a, "unauthenticated") > unauthenticated_before).then_some(())
    });
    assert!(agent.is_running(), "log:\n{}", plain_log(&agent));
    agent.kill();
    assert!(agent_ids(&a.data_dir).is_empty());
    assert_eq!(count(&a.data_dir, "SELECT COUNT(*) FROM batches"), 0);
    assert_eq!(agent_ids(&b.data_dir), vec![id]);
}

/// What a hand-built client got from the server: the connection error that ended it.
async fn forged_attempt(
    addr: SocketAddr,
    tls: rustls::ClientConfig,
    agent: &str,
) -> ConnectionError {
    let endpoint = vigil_agent::client::client_endpoint(addr).expect("endpoint");
    let config = vigil_agent::client::quic_client_config(tls).expect("quic config");
    let connecting = endpoint
        .connect_with(config, addr, proto::SERVER_NAME)
        .expect("connect");
    let conn = match tokio::time::timeout(WAIT, connecting).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => return e,
        Err(_) => panic!("handshake with {addr} neither completed nor failed"),
    };
    // If the handshake looked complete from here, talk as an agent would: hello, then a batch.
    if let Ok((mut send, mut recv)) = conn.open_bi().await {
        let hello = Message::Hello(Hello {
            agent_id: agent.to_string(),
            hostname: "forged".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            capabilities: Vec::new(),
            interval_ms: 1000,
        });
        let _ = send
            .write_all(&vigil_shared::codec::encode(&hello).expect("encode"))
            .await;
        let read = tokio::time::timeout(WAIT, recv.read_to_end(64 * 1024)).await;
        assert!(
            !matches!(read, Ok(Ok(_))),
            "the collector answered a client with a foreign certificate"
        );
    }
    if let Ok((mut send, _recv)) = conn.open_bi().await {
        let batch = Message::Batch(Batch {
            seq: 1,
            samples: vec![Sample {
                ts_ms: 1,
                name: "host_up".into(),
                labels: Vec::new(),
                value: 1.0,
            }],
        });
        let _ = send
            .write_all(&vigil_shared::codec::encode(&batch).expect("encode"))
            .await;
        let _ = send.finish();
    }
    let err = tokio::time::timeout(WAIT, conn.closed())
        .await
        .expect("connection still open");
    conn.close(VarInt::from_u32(0), b"");
    endpoint.wait_idle().await;
    err
}

/// Whether the peer closed the connection with a TLS alert (QUIC crypto error 0x100-0x1ff).
fn refused_by_tls(e: &ConnectionError) -> bool {
    matches!(e, ConnectionError::ConnectionClosed(c)
        if (0x100..0x200).contains(&u64::from(c.error_code)))
}

#[test]
fn client_certificate_from_another_ca_is_refused_by_the_collector() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = spawn_collector(&dir.path().join("a"));
    // A real agent of A, stopped, so its id exists on A and has stored batches.
    let agent_dir = dir.path().join("agent");
    let (mut agent, id) = enrolled_agent(&a, &enroll_token(&a.data_dir, &[]), &agent_dir);
    wait_until(WAIT, "batches stored", || {
        (batches_of(&a.data_dir, &id) > 0).then_some(())
    });
    assert!(
        agent.terminate(WAIT).success(),
        "log:\n{}",
        plain_log(&agent)
    );
    wait_until(WAIT, "agent disconnected", || {
        (metric(&a, "vigil_agents_connected") == 0.0).then_some(())
    });
    let stored = batches_of(&a.data_dir, &id);
    let unauthenticated_before = rejected(&a, "unauthenticated");
    let connected_lines = plain_log(&a.proc).matches("agent connected").count();

    let a_ca = std::fs::read_to_string(a.data_dir.join("ca.pem")).expect("A's ca.pem");
    let now = SystemTime::now();
    let validity = Duration::from_secs(24 * 3600);
    // 1. A rogue CA forging the real agent's id.
    let rogue = identity::generate_ca("rogue", now).expect("rogue CA");
    let (key1, csr1) = identity::new_key_and_csr("forged").expect("csr");
    let cert1 = identity::sign_agent_csr(&rogue, &csr1, &id, validity, now).expect("sign");
    // 2. Another collector's real CA (B's own data dir).
    let b_dir = dir.path().join("b");
    init_collector_dir(&b_dir);
    let b_ca = CaBundle {
        cert_pem: std::fs::read_to_string(b_dir.join("ca.pem")).expect("B's ca.pem"),
        key_pem: std::fs::read_to_string(b_dir.join("ca.key")).expect("B's ca.key"),
    };
    let (key2, csr2) = identity::new_key_and_csr("other").expect("csr");
    let other_id = identity::new_agent_id();
    let cert2 = identity::sign_agent_csr(&b_ca, &csr2, &other_id, validity, now).expect("sign");

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    for (cert, key, who) in [
        (&cert1, &key1, id.as_str()),
        (&cert2, &key2, other_id.as_str()),
    ] {
        let tls = identity::mtls_client_config(&a_ca, cert, key).expect("client config");
        let err = rt.block_on(forged_attempt(a.quic, tls, who));
        assert!(
            refused_by_tls(&err),
            "expected the collector to abort the TLS handshake for {who}, got: {err}"
        );
    }

    let log = wait_log(
        &a.proc,
        &["connection refused during TLS handshake", "UnknownIssuer"],
    );
    assert_eq!(
        log.matches("connection refused during TLS handshake")
            .count(),
        2,
        "collector log:\n{log}"
    );
    assert_eq!(
        log.matches("agent connected").count(),
        connected_lines,
        "collector log:\n{log}"
    );
    wait_until(WAIT, "two unauthenticated rejections counted", || {
        (rejected(&a, "unauthenticated") >= unauthenticated_before + 2.0).then_some(())
    });
    assert_eq!(
        rejected(&a, "unauthenticated"),
        unauthenticated_before + 2.0
    );
    assert_eq!(agent_ids(&a.data_dir), vec![id.clone()]);
    assert_eq!(batches_of(&a.data_dir, &id), stored);
    assert_eq!(count(&a.data_dir, "SELECT COUNT(*) FROM batches"), stored);
    assert_eq!(metric(&a, "vigil_agents_connected"), 0.0);
}

/// An unknown token id and a wrong secret read the same; ten failures from one address in a
/// minute refuse the next enrollment unread, even with a valid token (which stays unspent);
/// `token list` shows every token and `--ttl` past 30 days is refused.
#[test]
fn failed_enrollments_are_rate_limited_and_tokens_are_listed() {
    use std::str::FromStr;
    use vigil_agent::client;
    use vigil_shared::identity::EnrollToken;

    let dir = tempfile::tempdir().expect("tempdir");
    let c = spawn_collector(dir.path());
    let good = enroll_token(dir.path(), &["--single-use"]);
    let parsed = EnrollToken::from_str(&good).expect("token");
    let pin = good.rsplit('.').next().expect("pin").to_owned();
    let wrong_secret = format!("v1.{}.{}.{pin}", parsed.id, "x".repeat(32));
    let unknown_id = format!("v1.0badf00d.{}.{pin}", parsed.secret);
    let rt = crate::wire::runtime();
    let endpoint = crate::wire::endpoint(&rt, c.quic);
    let refusal = |token: &str| {
        let token = EnrollToken::from_str(token).expect("token");
        rt.block_on(crate::wire::within(
            "an enrollment answer",
            client::enroll(&endpoint, c.quic, &token, "e2e-guesser"),
        ))
        .map(|_| ())
        .expect_err("refused")
        .to_string()
    };
    let (a, b) = (refusal(&unknown_id), refusal(&wrong_secret));
    assert!(
        a.contains("unknown enrollment token or wrong secret"),
        "{a}"
    );
    assert_eq!(a, b, "an unknown id and a wrong secret must read the same");
    for _ in 2..10 {
        refusal(&unknown_id);
    }
    assert_eq!(enrollments(&c, "refused"), 10.0);
    let limited = refusal(&good);
    assert!(limited.contains("too many failed enrollments"), "{limited}");
    assert_eq!(enrollments(&c, "rate_limited"), 1.0);
    assert_eq!(spent_tokens(dir.path()), 0, "the valid token was not spent");

    let out = admin(dir.path(), &["token", "list"]);
    assert!(out.status.success());
    let list = String::from_utf8_lossy(&out.stdout);
    let row = list
        .lines()
        .find(|l| l.starts_with(&parsed.id))
        .unwrap_or_else(|| panic!("token {} not listed:\n{list}", parsed.id));
    assert!(
        row.contains("\ttrue\t-\t-\t-"),
        "single use, unused, not revoked: {row}"
    );
    let out = admin(dir.path(), &["token", "create", "--ttl", "31d"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("at most 30d"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A client that sends its enrollment request and leaves before the answer reaches it (the
/// collector holds the answer back 2 s, `enroll-slow`): the enrollment is undone, the
/// single-use token is not spent, and a real enrollment with it succeeds afterwards.
#[test]
fn an_enrollment_the_client_gave_up_on_does_not_spend_its_token() {
    use std::str::FromStr;
    use vigil_agent::client;
    use vigil_shared::identity::EnrollToken;

    let dir = tempfile::tempdir().expect("tempdir");
    let any: SocketAddr = "127.0.0.1:0".parse().expect("addr");
    let c = spawn_collector_env(
        dir.path(),
        any,
        any,
        "",
        &[("VIGIL_FAILPOINTS", "enroll-slow")],
    );
    let text = enroll_token(dir.path(), &["--single-use"]);
    let token = EnrollToken::from_str(text.trim()).expect("token");
    let rt = crate::wire::runtime();
    let endpoint = crate::wire::endpoint(&rt, c.quic);
    let agents = || -> i64 {
        open_store(dir.path())
            .query_row("SELECT COUNT(*) FROM agents", [], |r| r.get(0))
            .expect("agents")
    };
    let used = || -> Option<i64> {
        open_store(dir.path())
            .query_row(
                "SELECT used_at_ms FROM enroll_tokens WHERE id = ?1",
                [&token.id],
                |r| r.get(0),
            )
            .expect("token row")
    };
    let conn = rt.block_on(crate::wire::within("request sent", async {
        let (_key, csr_pem) = identity::new_key_and_csr("e2e-quitter").expect("csr");
        let tls = identity::enroll_client_config(token.ca_pin).expect("tls");
        let config = client::quic_client_config(tls).expect("quic config");
        let conn = client::connect(&endpoint, config, c.quic)
            .await
            .expect("connect");
        let (mut send, _recv) = conn.open_bi().await.expect("stream");
        let req = Message::Enroll(proto::Enroll {
            token: token.to_string(),
            csr_pem,
            hostname: "e2e-quitter".into(),
            version: "e2e".into(),
        });
        client::write_message(&mut send, &req).await.expect("write");
        send.finish().expect("finish");
        conn
    }));
    // The collector stored the enrollment and spent the token; the client leaves before the
    // answer comes.
    wait_until(WAIT, "the enrollment stored", || {
        (agents() == 1 && used().is_some()).then_some(())
    });
    conn.close(VarInt::from_u32(1), b"gave up");
    wait_until(WAIT, "the enrollment undone", || {
        (agents() == 0 && used().is_none()).then_some(())
    });
    assert_eq!(
        metric_value(
            &metrics(&c),
            "vigil_enrollments_total{result=\"abandoned\"}"
        ),
        Some(1.0)
    );
    // The token still enrolls an agent, once.
    let id = rt.block_on(crate::wire::enroll(&endpoint, c.quic, &text, "e2e-stayer"));
    assert_eq!(agents(), 1);
    assert!(used().is_some(), "spent by the agent that has it");
    let by: String = open_store(dir.path())
        .query_row(
            "SELECT used_by FROM enroll_tokens WHERE id = ?1",
            [&token.id],
            |r| r.get(0),
        )
        .expect("used by");
    assert_eq!(by, id.agent_id);
    assert_eq!(
        metric_value(&metrics(&c), "vigil_enrollments_total{result=\"ok\"}"),
        Some(1.0)
    );
}
