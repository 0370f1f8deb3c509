//! Bad input on the wire, against the real collector with a real agent streaming beside it.
//!
//! On an authenticated connection, each bad frame (junk body, zero length, garbage header,
//! truncated, oversized, unknown kind, a batch frame holding another message, a known message
//! in the wrong place) must close *its stream* with the error code of the case, move
//! `vigil_ingest_rejected_total{reason}` by exactly one for the right reason, and leave the
//! connection usable: the next stream's valid batch is acknowledged. Datagrams that are not
//! QUIC change nothing, a connection without a client certificate that sends anything but an
//! enrollment request is closed with `ENROLL_REFUSED`, and all along the real agent's batches
//! keep being stored, its host stays up and the collector never panics.

use std::collections::BTreeMap;
use std::net::UdpSocket;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use quinn::{Connection, ConnectionError, VarInt};
use vigil_agent::client::{self, ClientError, Identity};
use vigil_shared::codec::{self, FrameDecoder};
use vigil_shared::identity::{self, EnrollToken};
use vigil_shared::proto::{codes, kind, Ack, Enroll, Hello, Message};

use crate::harness::*;
use crate::wire::{self, batch, enroll, runtime, session, valid_batch, within};

/// Host name of the hand-driven test identity (distinct from the real agent's host).
const PROBER: &str = "e2e-bad-input-prober";
/// `[len][kind][body]` by hand, so the header can lie.
fn frame(kind_byte: u8, body: &[u8]) -> Vec<u8> {
    let mut out = ((body.len() + 1) as u32).to_be_bytes().to_vec();
    out.push(kind_byte);
    out.extend_from_slice(body);
    out
}

fn encoded(msg: &Message) -> Vec<u8> {
    codec::encode(msg).expect("encode")
}

fn prober_hello(identity: &Identity) -> Hello {
    wire::hello(identity, PROBER, 60_000)
}

/// What the collector did with one abusive stream.
#[derive(Debug, PartialEq)]
struct Outcome {
    /// Code of the collector's STOP_SENDING, `None` if it read our (finished) stream to its end.
    stop: Option<u32>,
    /// Everything the collector wrote back before finishing its side of the stream.
    reply: Vec<Message>,
}

/// Writes `bytes` on a fresh stream of `conn` (finishing it if `finish`), then waits for the
/// collector to stop our side and to finish its own.
async fn abuse(conn: &Connection, bytes: &[u8], finish: bool) -> Outcome {
    let (mut send, mut recv) = within("open stream", conn.open_bi())
        .await
        .expect("open stream");
    let mut stop = match send.write_all(bytes).await {
        Ok(()) => None,
        Err(quinn::WriteError::Stopped(code)) => Some(code),
        Err(e) => panic!("write failed: {e}"),
    };
    if stop.is_none() {
        if finish {
            send.finish().expect("finish");
        }
        stop = within("collector closes the stream", send.stopped())
            .await
            .expect("stream outcome (the connection must not be lost)");
    }
    let stop = stop.map(|c| u32::try_from(c.into_inner()).expect("code"));
    let raw = within("collector finishes its side", recv.read_to_end(64 * 1024))
        .await
        .expect("the collector's side ends cleanly");
    let mut dec = FrameDecoder::new(codec::DEFAULT_MAX_FRAME);
    dec.push(&raw);
    let mut reply = Vec::new();
    while let Some(m) = dec.next_message().expect("collector frames decode") {
        reply.push(m);
    }
    dec.finish().expect("no partial frame from the collector");
    Outcome { stop, reply }
}

/// `vigil_ingest_rejected_total` by reason.
fn rejected(c: &Collector) -> BTreeMap<String, u64> {
    let prefix = "vigil_ingest_rejected_total{reason=\"";
    metrics(c)
        .lines()
        .filter_map(|l| l.strip_prefix(prefix))
        .filter_map(|l| {
            let (reason, rest) = l.split_once("\"}")?;
            Some((reason.to_string(), rest.trim().parse::<f64>().ok()? as u64))
        })
        .collect()
}

/// Waits until the counters moved by `want`, then asserts no reason moved otherwise.
fn expect_rejections(
    c: &Collector,
    before: &BTreeMap<String, u64>,
    want: &[(&str, u64)],
    case: &str,
) -> BTreeMap<String, u64> {
    let mut expected = before.clone();
    for (reason, n) in want {
        assert!(
            before.contains_key(*reason),
            "{case}: reason {reason} not exported: {before:?}"
        );
        *expected.entry(reason.to_string()).or_default() += n;
    }
    let reached =
        |now: &BTreeMap<String, u64>| want.iter().all(|(r, _)| now.get(*r) >= expected.get(*r));
    let mut last = BTreeMap::new();
    let ok = wait_until_or(Duration::from_secs(20), || {
        last = rejected(c);
        reached(&last)
    });
    assert!(ok, "{case}: counters never reached {want:?}: {last:?}");
    let now = rejected(c);
    assert_eq!(
        now, expected,
        "{case}: vigil_ingest_rejected_total moved wrongly"
    );
    now
}

fn wait_until_or(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if std::time::Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// (stored batches, highest seq) of one agent.
fn stored(collector_dir: &Path, agent: &str) -> (u64, Option<u64>) {
    open_store(collector_dir)
        .query_row(
            "SELECT COUNT(*), MAX(seq) FROM batches WHERE agent_id = ?1",
            [agent],
            |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, Option<i64>>(1)?)),
        )
        .map(|(n, max)| (n, max.map(|m| m as u64)))
        .expect("query batches")
}

fn hostname_of(collector_dir: &Path, agent: &str) -> String {
    open_store(collector_dir)
        .query_row("SELECT hostname FROM agents WHERE id = ?1", [agent], |r| {
            r.get(0)
        })
        .expect("agent row")
}

fn host_up(text: &str, host: &str) -> Option<f64> {
    let label = format!("host=\"{host}\"");
    text.lines()
        .find(|l| l.starts_with("vigil_host_up{") && l.contains(&label))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// The real agent beside the test: enrolled, storing batches at 1 s.
struct RealAgent {
    proc: Proc,
    id: String,
    host: String,
}

fn start_real_agent(c: &Collector, dir: &Path) -> RealAgent {
    let token = enroll_token(&c.data_dir, &[]);
    let agent_dir = dir.join("agent");
    let proc = spawn_agent(c.quic, Some(&token), &agent_dir, "1s");
    let id = wait_until(Duration::from_secs(30), "agent enrolled", || {
        agent_id(&agent_dir)
    });
    wait_until(Duration::from_secs(30), "first batches stored", || {
        (stored(&c.data_dir, &id).0 >= 2).then_some(())
    });
    let host = hostname_of(&c.data_dir, &id);
    assert_ne!(host, PROBER);
    RealAgent { proc, id, host }
}

/// The real agent keeps storing batches and its host is up; both processes are alive and
/// neither log mentions a panic.
fn assert_still_serving(c: &mut Collector, agent: &mut RealAgent, stored_before: u64) {
    let (n, _) = wait_until(
        Duration::from_secs(30),
        "the real agent's batches keep being stored",
        || {
            let s = stored(&c.data_dir, &agent.id);
            (s.0 >= stored_before + 3).then_some(s)
        },
    );
    assert!(n >= stored_before + 3);
    let text = metrics(c);
    assert_eq!(host_up(&text, &agent.host), Some(1.0), "{text}");
    assert!(
        metric_value(&text, "vigil_ingest_batches_total").unwrap_or(0.0) >= n as f64,
        "{text}"
    );
    assert_eq!(http_get(&format!("http://{}/healthz", c.http), None).0, 200);
    assert!(c.proc.is_running(), "collector died:\n{}", c.proc.logs());
    assert!(
        agent.proc.is_running(),
        "agent died:\n{}",
        agent.proc.logs()
    );
    for (name, log) in [("collector", c.proc.logs()), ("agent", agent.proc.logs())] {
        assert!(!log.contains("panicked"), "{name} panicked:\n{log}");
    }
}

/// One abusive stream: what we send and what the collector must do.
struct Case {
    name: &'static str,
    bytes: Vec<u8>,
    finish: bool,
    /// Rejection reasons that must move by one.
    reasons: &'static [&'static str],
    stop: Option<u32>,
    /// Acknowledgements the collector still sends on that stream (for valid frames before
    /// the bad one).
    acks: Vec<u64>,
    /// Batches of this stream that end up stored.
    stores: u64,
}

#[test]
fn bad_frames_close_their_stream_and_the_connection_lives_on() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut collector = spawn_collector(&dir.path().join("collector"));
    let mut agent = start_real_agent(&collector, dir.path());
    let agent_stored = stored(&collector.data_dir, &agent.id).0;

    let rt = runtime();
    let addr = collector.quic;
    let token = enroll_token(&collector.data_dir, &[]);
    let (endpoint, identity, session) = rt.block_on(async {
        let endpoint = client::client_endpoint(addr).expect("endpoint");
        let identity = enroll(&endpoint, addr, &token, PROBER).await;
        let session = session(&endpoint, addr, &identity, prober_hello(&identity)).await;
        (endpoint, identity, session)
    });
    let conn = session.conn.clone();
    let mut seq = 0;
    seq += 1;
    assert_eq!(rt.block_on(valid_batch(&conn, seq)), seq);

    let ack_as_batch = {
        let mut b = encoded(&Message::Ack(Ack { seq: 7 }));
        b[4] = kind::BATCH;
        b
    };
    let hello_frame = encoded(&Message::Hello(prober_hello(&identity)));
    let mut oversized = ((codec::DEFAULT_MAX_FRAME + 2) as u32)
        .to_be_bytes()
        .to_vec();
    oversized.push(kind::BATCH);
    oversized.extend_from_slice(&[0x90; 1000]);
    let mut truncated = 100u32.to_be_bytes().to_vec();
    truncated.push(kind::BATCH);
    truncated.extend_from_slice(&[0x90; 9]);
    // Seq numbers used inside the cases are far above the ones `valid_batch` uses.
    let mut good_then_junk = encoded(&batch(1000));
    good_then_junk.extend_from_slice(&frame(kind::BATCH, &[0xC1; 8]));

    let cases = vec![
        Case {
            name: "valid header, junk MessagePack body",
            bytes: frame(kind::BATCH, &[0xC1; 32]),
            finish: false,
            reasons: &["malformed"],
            stop: Some(codes::MALFORMED),
            acks: vec![],
            stores: 0,
        },
        Case {
            name: "zero-length frame",
            bytes: vec![0, 0, 0, 0, kind::BATCH, 1, 2, 3],
            finish: false,
            reasons: &["malformed"],
            stop: Some(codes::MALFORMED),
            acks: vec![],
            stores: 0,
        },
        Case {
            name: "garbage 0xFF bytes (length 0xFFFFFFFF)",
            bytes: vec![0xFF; 100],
            finish: false,
            reasons: &["oversized"],
            stop: Some(codes::OVERSIZED),
            acks: vec![],
            stores: 0,
        },
        Case {
            name: "truncated frame (100 announced, 10 sent, stream finished)",
            bytes: truncated,
            finish: true,
            reasons: &["truncated"],
            // The collector can only see the truncation once it read our FIN: nothing to stop.
            stop: None,
            acks: vec![],
            stores: 0,
        },
        Case {
            name: "oversized frame (1 MiB + 1 announced)",
            bytes: oversized,
            finish: false,
            reasons: &["oversized"],
            stop: Some(codes::OVERSIZED),
            acks: vec![],
            stores: 0,
        },
        Case {
            name: "unknown kind 200",
            bytes: frame(200, &[0x80]),
            finish: false,
            reasons: &["unknown_kind"],
            stop: Some(codes::UNKNOWN_KIND),
            acks: vec![],
            stores: 0,
        },
        Case {
            name: "batch frame holding an ack",
            bytes: ack_as_batch,
            finish: false,
            reasons: &["malformed"],
            stop: Some(codes::MALFORMED),
            acks: vec![],
            stores: 0,
        },
        Case {
            name: "hello on a batch stream",
            bytes: hello_frame,
            finish: false,
            reasons: &["unexpected"],
            stop: Some(codes::UNEXPECTED),
            acks: vec![],
            stores: 0,
        },
        Case {
            name: "valid batch, then junk on the same stream",
            bytes: good_then_junk,
            finish: false,
            reasons: &["malformed"],
            stop: Some(codes::MALFORMED),
            acks: vec![1000],
            stores: 1,
        },
    ];

    let mut counters = rejected(&collector);
    let mut stored_by_cases = 0;
    for case in cases {
        let outcome = rt.block_on(abuse(&conn, &case.bytes, case.finish));
        let want = Outcome {
            stop: case.stop,
            reply: case
                .acks
                .iter()
                .map(|&seq| Message::Ack(Ack { seq }))
                .collect(),
        };
        assert_eq!(outcome, want, "{}", case.name);
        let moved: Vec<(&str, u64)> = case.reasons.iter().map(|r| (*r, 1)).collect();
        counters = expect_rejections(&collector, &counters, &moved, case.name);
        stored_by_cases += case.stores;

        // The same connection still carries a valid batch, acknowledged.
        seq += 1;
        assert_eq!(
            rt.block_on(valid_batch(&conn, seq)),
            seq,
            "after {}",
            case.name
        );
        assert!(
            conn.close_reason().is_none(),
            "connection closed after {}: {:?}",
            case.name,
            conn.close_reason()
        );
        // That batch came after the bad stream was dealt with: a server counting the case
        // twice would have done so by now.
        assert_eq!(
            rejected(&collector),
            counters,
            "{}: vigil_ingest_rejected_total moved again",
            case.name
        );
    }

    // Exactly the valid batches were stored for the test identity, nothing from the bad frames.
    let (n, max) = stored(&collector.data_dir, &identity.agent_id);
    assert_eq!(n, seq + stored_by_cases);
    assert_eq!(max, Some(1000));
    assert_eq!(
        counters.get("unauthenticated"),
        Some(&0),
        "no connection was refused: {counters:?}"
    );

    assert_still_serving(&mut collector, &mut agent, agent_stored);
    rt.block_on(async {
        session.goodbye("test done").await;
        endpoint.wait_idle().await;
    });
}

/// Datagrams that are not QUIC, sent to the QUIC port.
fn not_quic() -> Vec<Vec<u8>> {
    let mut initial_like = vec![0xC3, 0, 0, 0, 1, 8];
    initial_like.extend_from_slice(&[0xAB; 8]);
    initial_like.push(8);
    initial_like.extend_from_slice(&[0xCD; 8]);
    initial_like.extend_from_slice(&[0x00, 0x44, 0xB0]);
    initial_like.resize(1200, 0x5A);
    let mut unknown_version = vec![0xC0, 0x1A, 0x2A, 0x3A, 0x4A, 8];
    unknown_version.extend_from_slice(&[1; 8]);
    unknown_version.push(0);
    unknown_version.resize(1200, 0);
    let mut short_header = vec![0x40];
    short_header.extend((0..200u32).map(|i| (i * 37 % 251) as u8));
    vec![
        vec![],
        vec![0],
        vec![0xFF; 100],
        b"GET / HTTP/1.1\r\nHost: vigil\r\n\r\n".to_vec(),
        initial_like,
        unknown_version,
        short_header,
        (0..60_000u32).map(|i| (i * 7919 % 256) as u8).collect(),
    ]
}

#[test]
fn non_quic_datagrams_and_certless_or_helloless_misuse_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut collector = spawn_collector(&dir.path().join("collector"));
    let mut agent = start_real_agent(&collector, dir.path());
    let addr = collector.quic;

    // Not QUIC at all: nothing moves, nothing breaks.
    let counters = rejected(&collector);
    let before = stored(&collector.data_dir, &agent.id).0;
    let udp = UdpSocket::bind("127.0.0.1:0").expect("udp");
    for round in 0..5 {
        for d in not_quic() {
            udp.send_to(&d, addr)
                .unwrap_or_else(|e| panic!("send {} bytes (round {round}): {e}", d.len()));
        }
    }
    wait_until(Duration::from_secs(30), "batches after the garbage", || {
        (stored(&collector.data_dir, &agent.id).0 >= before + 2).then_some(())
    });
    assert_eq!(rejected(&collector), counters, "datagrams moved counters");
    assert!(collector.proc.is_running(), "{}", collector.proc.logs());

    let rt = runtime();
    let token = enroll_token(&collector.data_dir, &[]);
    let pin = EnrollToken::from_str(token.trim()).expect("token").ca_pin;
    let endpoint = rt.block_on(async { client::client_endpoint(addr).expect("endpoint") });

    // Without a client certificate the only thing allowed is an enrollment request.
    let certless = |first: Vec<u8>| {
        rt.block_on(within("certless connection", async {
            let tls = identity::enroll_client_config(pin).expect("tls");
            let config = client::quic_client_config(tls).expect("quic config");
            let conn = client::connect(&endpoint, config, addr)
                .await
                .expect("handshake without a client certificate");
            let (mut send, mut recv) = conn.open_bi().await.expect("stream");
            send.write_all(&first).await.expect("write");
            send.finish().expect("finish");
            let mut dec = FrameDecoder::new(codec::DEFAULT_MAX_FRAME);
            let reply = client::read_message(&mut recv, &mut dec).await;
            let closed = conn.closed().await;
            (reply, closed)
        }))
    };
    let check_refused = |what: &str, reply: Result<Option<Message>, ClientError>, closed| {
        match reply {
            Ok(Some(Message::Error(e))) => assert_eq!(e.code, "enroll_refused", "{what}: {e:?}"),
            // The close may overtake the error message; it carries the same verdict.
            Err(ClientError::EnrollRefused(_)) => {}
            other => panic!("{what}: expected a refusal, got {other:?}"),
        }
        match closed {
            ConnectionError::ApplicationClosed(c) => {
                assert_eq!(
                    c.error_code,
                    VarInt::from_u32(codes::ENROLL_REFUSED),
                    "{what}: {c:?}"
                )
            }
            other => panic!("{what}: expected an application close, got {other:?}"),
        }
    };
    let (reply, closed) = certless(encoded(&batch(1)));
    check_refused("batch without a certificate", reply, closed);
    let counters = expect_rejections(
        &collector,
        &counters,
        &[("unexpected", 1), ("enroll_refused", 1)],
        "batch without a certificate",
    );
    let (reply, closed) = certless(frame(kind::ENROLL, &[0xC1; 16]));
    check_refused("junk enrollment request", reply, closed);
    let counters = expect_rejections(
        &collector,
        &counters,
        &[("malformed", 1), ("enroll_refused", 1)],
        "junk enrollment request",
    );
    // A well-formed request with a token for nobody: refused, and nothing stored for it.
    let bogus = Message::Enroll(Enroll {
        token: "v1.nope.nope.nope".into(),
        csr_pem: "not a csr".into(),
        hostname: PROBER.into(),
        version: "0".into(),
    });
    let (reply, closed) = certless(encoded(&bogus));
    check_refused("bogus token", reply, closed);
    let counters = expect_rejections(
        &collector,
        &counters,
        &[("enroll_refused", 1)],
        "bogus token",
    );

    // With a certificate, the first stream must carry hello: a batch there closes the
    // connection with UNEXPECTED, and the identity still works afterwards.
    let identity = rt.block_on(enroll(&endpoint, addr, &token, PROBER));
    let closed = rt.block_on(within("batch before hello", async {
        let config = identity.client_config().expect("config");
        let conn = client::connect(&endpoint, config, addr)
            .await
            .expect("mutual TLS handshake");
        let (mut send, _recv) = conn.open_bi().await.expect("stream");
        send.write_all(&encoded(&batch(1))).await.expect("write");
        conn.closed().await
    }));
    match closed {
        ConnectionError::ApplicationClosed(c) => {
            assert_eq!(c.error_code, VarInt::from_u32(codes::UNEXPECTED), "{c:?}")
        }
        other => panic!("batch before hello: expected an application close, got {other:?}"),
    }
    expect_rejections(
        &collector,
        &counters,
        &[("unexpected", 1)],
        "batch before hello",
    );
    assert_eq!(stored(&collector.data_dir, &identity.agent_id), (0, None));
    let session = rt.block_on(session(&endpoint, addr, &identity, prober_hello(&identity)));
    assert_eq!(rt.block_on(valid_batch(&session.conn, 1)), 1);
    assert_eq!(
        stored(&collector.data_dir, &identity.agent_id),
        (1, Some(1))
    );

    let agent_stored = stored(&collector.data_dir, &agent.id).0;
    assert_still_serving(&mut collector, &mut agent, agent_stored);
    rt.block_on(async {
        session.goodbye("test done").await;
        endpoint.wait_idle().await;
    });
}
