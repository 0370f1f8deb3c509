//! One agent's floods against the real collector, each against a low configured bound: stream
//! memory (frames announced and never finished), checks by the thousand, breaches dated back to
//! satisfy `for` at once, and more CIs than an agent may have.

use std::time::{Duration, Instant};

use quinn::VarInt;
use vigil_agent::client;
use vigil_shared::codec::FrameDecoder;
use vigil_shared::inventory::{Ci, Inventory, InventoryDelta};
use vigil_shared::proto::{
    codes, kind, Batch, InventoryDeltaMsg, InventorySnapshot, Message, Sample,
};

use crate::harness::*;
use crate::wire::{self, enroll, runtime, session, within};

fn rejected(c: &Collector, reason: &str) -> f64 {
    metric_value(
        &metrics(c),
        &format!("vigil_ingest_rejected_total{{reason=\"{reason}\"}}"),
    )
    .unwrap_or(0.0)
}

/// Resident memory of process `pid`, bytes.
fn rss(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .expect("VmRSS")
        * 1024
}

/// A frame header announcing a body of `body` bytes of kind `k`, and all of that body but its
/// last byte: the collector cannot decode it, and must hold or refuse it.
fn unfinished_frame(k: u8, body: usize) -> Vec<u8> {
    let mut bytes = u32::try_from(body + 1).expect("len").to_be_bytes().to_vec();
    bytes.push(k);
    bytes.resize(4 + body, 0x90);
    bytes
}

/// 12 inventory streams of one agent, each announcing a 1.9 MB snapshot and never finishing it,
/// against `max_frame_memory_per_connection = 2MiB` (`max_frame_memory = 4MiB`): one is held,
/// the other 11 are refused with BUSY and counted, a frame larger than the connection's whole
/// budget is refused at once, the collector's memory does not grow by the flood, and another
/// agent's batches are acknowledged all along.
#[test]
fn a_stream_memory_flood_is_held_to_the_budgets() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let c = spawn_collector_quic(
        &data,
        "max_frame_memory = \"4MiB\"\nmax_frame_memory_per_connection = \"2MiB\"\n",
        "",
    );
    let token = enroll_token(&data, &[]);
    let rt = runtime();
    let endpoint = wire::endpoint(&rt, c.quic);
    let (rogue, honest) = rt.block_on(async {
        let r = enroll(&endpoint, c.quic, &token, "e2e-rogue").await;
        let h = enroll(&endpoint, c.quic, &token, "e2e-honest").await;
        let rogue = session(&endpoint, c.quic, &r, wire::hello(&r, "e2e-rogue", 10_000)).await;
        let honest = session(&endpoint, c.quic, &h, wire::hello(&h, "e2e-honest", 10_000)).await;
        (rogue, honest)
    });
    let mut seq = 1;
    assert_eq!(rt.block_on(wire::valid_batch(&honest.conn, seq)), seq);
    let before = rss(c.proc.pid());

    // With the control stream and the oversized frame's, within the 16 streams an agent may
    // have open.
    const STREAMS: usize = 12;
    const BODY: usize = 1_900_000;
    let started = Instant::now();
    let flood: Vec<_> = (0..STREAMS)
        .map(|_| {
            let conn = rogue.conn.clone();
            rt.spawn(async move {
                let (mut send, _recv) = conn.open_bi().await.expect("stream");
                let bytes = unfinished_frame(kind::INVENTORY_SNAPSHOT, BODY);
                // Flow control may hold the write back: the stop ends it either way.
                let code = match send.write_all(&bytes).await {
                    Err(quinn::WriteError::Stopped(code)) => Some(code),
                    Ok(()) => send.stopped().await.ok().flatten(),
                    Err(_) => None,
                };
                // A refused stream is done with; the held one stays open until the end.
                let _ = send.reset(VarInt::from_u32(0));
                code
            })
        })
        .collect();
    // A frame larger than a connection's whole budget is refused at once.
    let too_large = rt.block_on(within("the oversized frame refused", async {
        let (mut send, _recv) = rogue.conn.open_bi().await.expect("stream");
        let bytes = unfinished_frame(kind::INVENTORY_SNAPSHOT, 3 << 20);
        let _ = send.write_all(&bytes[..64]).await;
        send.stopped().await.ok().flatten()
    }));
    assert_eq!(too_large, Some(VarInt::from_u32(codes::OVERSIZED)));

    // The honest agent is served while the flood waits for room.
    for _ in 0..5 {
        seq += 1;
        assert_eq!(rt.block_on(wire::valid_batch(&honest.conn, seq)), seq);
    }
    // All flood streams but one, and the oversized frame.
    wait_until(
        Duration::from_secs(60),
        "all streams but one refused",
        || {
            let n = rejected(&c, "memory_budget");
            (n >= STREAMS as f64).then_some(())
        },
    );
    let elapsed = started.elapsed();
    let gauge = metric_value(&metrics(&c), "vigil_ingest_frame_memory_bytes").expect("gauge");
    let after = rss(c.proc.pid());
    // The streams stopped were stopped with BUSY. (Not every stop reaches the flooding client:
    // one that crosses its last write can go unseen by its `stopped()`; the collector's count
    // above is what holds.)
    let mut busy = 0;
    for task in flood.into_iter().filter(|t| t.is_finished()) {
        let code = rt.block_on(task).expect("flood task");
        assert_eq!(code, Some(VarInt::from_u32(codes::BUSY)));
        busy += 1;
    }
    eprintln!(
        "flood: {busy} of {STREAMS} streams refused in {elapsed:?}; reserved {gauge} bytes; \
         collector RSS {} -> {} MiB",
        before >> 20,
        after >> 20
    );
    assert!(busy >= STREAMS / 2, "{busy} streams saw their stop");
    assert!(
        gauge <= f64::from(2u32 << 20),
        "no more than the connection's budget is reserved: {gauge}"
    );
    // 12 frames of 1.9 MB would be 22.8 MB held.
    assert!(
        after.saturating_sub(before) < 12 << 20,
        "the collector grew by {} MiB",
        (after.saturating_sub(before)) >> 20
    );
    seq += 1;
    assert_eq!(rt.block_on(wire::valid_batch(&honest.conn, seq)), seq);
}

fn sample(name: &str, check: Option<&str>, ts_ms: i64, value: f64) -> Sample {
    Sample {
        ts_ms,
        name: name.into(),
        labels: check
            .map(|c| vec![("check".to_string(), c.to_string())])
            .unwrap_or_default(),
        value,
    }
}

/// One agent reports 1,000 failing checks against `[agents] max_checks = 20`, and a breach
/// dated ten minutes back against a rule with `for = "20s"`: 20 check incidents open and no
/// more (the other checks are refused and counted, and not stored), and the back-dated breach
/// opens only once it has held on the collector's clock.
#[test]
fn checks_past_the_cap_and_back_dated_breaches_open_nothing_early() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let c = spawn_collector_with(
        &data,
        "127.0.0.1:0".parse().expect("addr"),
        "127.0.0.1:0".parse().expect("addr"),
        "[agents]\nmax_checks = 20\n\
         [[rule]]\nname = \"load-high\"\nmetric = \"load1\"\nabove = 5.0\nfor = \"20s\"\n",
    );
    let viewer = api_token(&data, "viewer");
    let token = enroll_token(&data, &[]);
    let rt = runtime();
    let endpoint = wire::endpoint(&rt, c.quic);
    let s = rt.block_on(async {
        let id = enroll(&endpoint, c.quic, &token, "e2e-flood").await;
        session(&endpoint, c.quic, &id, wire::hello(&id, "e2e-flood", 1_000)).await
    });
    const CHECKS: usize = 1_000;
    let batch = |seq: u64, now: i64, back: bool| {
        let mut samples: Vec<Sample> = (0..CHECKS)
            .map(|i| sample("check_up", Some(&format!("fake-{i:04}")), now, 0.0))
            .collect();
        if back {
            // Ten minutes of load 9, one sample every 10 s, all sent at once.
            samples
                .extend((0..=60).map(|i| sample("load1", None, now - 600_000 + i * 10_000, 9.0)));
        } else {
            samples.push(sample("load1", None, now, 9.0));
        }
        Message::Batch(Batch { seq, samples })
    };
    let start = now_ms();
    let mut seq = 1;
    assert_eq!(
        rt.block_on(wire::send_batch(&s.conn, &batch(seq, start, true))),
        Some(seq)
    );
    // Live breaches every second until load-high and the 20 check incidents are open.
    let mut load_opened_after = None;
    let checks_open = wait_until(Duration::from_secs(90), "20 check incidents", || {
        seq += 1;
        let sent = rt.block_on(wire::send_batch(&s.conn, &batch(seq, now_ms(), false)));
        assert_eq!(sent, Some(seq));
        if load_opened_after.is_none() {
            let load = incidents(&c, &viewer, "rule=load-high&host=e2e-flood");
            if !load.is_empty() {
                load_opened_after = Some(now_ms() - start);
            }
        }
        let open = incidents(&c, &viewer, "rule=check-down&host=e2e-flood");
        if open.len() >= 20 && load_opened_after.is_some() {
            return Some(open.len());
        }
        std::thread::sleep(Duration::from_secs(1));
        None
    });
    let load_after = load_opened_after.expect("load-high opened");
    eprintln!(
        "flood: load-high opened {load_after} ms after its back-dated breach arrived; \
         {checks_open} check incidents after {seq} batches"
    );
    // 20 s less the 2 s of arrival jitter allowed; dated back, it would have opened at once.
    assert!(
        load_after >= 18_000,
        "opened {load_after} ms after the breach arrived"
    );
    // Every check's samples arrived together: a 21st admitted check would have opened with them.
    assert_eq!(checks_open, 20);
    let refused = rejected(&c, "check_limit");
    assert_eq!(refused, ((CHECKS - 20) as u64 * seq) as f64);
    // What is stored is what was admitted: 20 checks and the load samples.
    let db = open_store(&data);
    let most: i64 = db
        .query_row("SELECT MAX(samples) FROM batches", [], |r| r.get(0))
        .expect("batches");
    assert_eq!(most, 20 + 61);
    let series = metrics(&c)
        .lines()
        .filter(|l| l.starts_with("vigil_check_up{"))
        .count();
    assert_eq!(series, 20, "check series on /metrics");
}

/// Sends an inventory message on its own stream: the answer, or the code the collector reset
/// the answer with.
async fn send_inventory(conn: &quinn::Connection, msg: &Message) -> Result<Message, VarInt> {
    let (mut send, mut recv) = conn.open_bi().await.expect("stream");
    client::write_message(&mut send, msg).await.expect("write");
    send.finish().expect("finish");
    let mut dec = FrameDecoder::new(1 << 20);
    loop {
        if let Some(m) = dec.next_message().expect("a decodable answer") {
            return Ok(m);
        }
        match recv.read_chunk(64 * 1024, true).await {
            Ok(Some(chunk)) => dec.push(&chunk.bytes),
            Ok(None) => panic!("inventory stream ended without an answer"),
            Err(quinn::ReadError::Reset(code)) => return Err(code),
            Err(e) => panic!("inventory stream failed: {e}"),
        }
    }
}

fn packages(range: std::ops::Range<usize>) -> Vec<Ci> {
    range
        .map(|i| Ci::new("package", format!("pkg-{i:03}"), format!("pkg-{i:03}")))
        .collect()
}

/// `[agents] max_cis = 50`: a snapshot of 60 CIs is refused (LIMIT) and stores nothing; one of
/// 40 is stored; a delta adding 20 more is refused and the CMDB keeps the 40.
#[test]
fn an_agent_cannot_have_more_cis_than_its_cap() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let c = spawn_collector_with(
        &data,
        "127.0.0.1:0".parse().expect("addr"),
        "127.0.0.1:0".parse().expect("addr"),
        "[agents]\nmax_cis = 50\n",
    );
    let token = enroll_token(&data, &[]);
    let rt = runtime();
    let endpoint = wire::endpoint(&rt, c.quic);
    let s = rt.block_on(async {
        let id = enroll(&endpoint, c.quic, &token, "e2e-cis").await;
        session(&endpoint, c.quic, &id, wire::hello(&id, "e2e-cis", 10_000)).await
    });
    let snapshot = |version: u64, cis: Vec<Ci>| {
        let mut inventory = Inventory {
            cis,
            ..Inventory::default()
        };
        inventory.canonicalize();
        Message::InventorySnapshot(InventorySnapshot {
            version,
            ts_ms: now_ms(),
            inventory,
        })
    };
    let stored = |db: &rusqlite::Connection| -> i64 {
        db.query_row(
            "SELECT COUNT(*) FROM cis WHERE type = 'package' AND state = 'active'",
            [],
            |r| r.get(0),
        )
        .expect("count")
    };
    let too_many = rt.block_on(within(
        "snapshot answered",
        send_inventory(&s.conn, &snapshot(1, packages(0..60))),
    ));
    assert_eq!(too_many.map(|_| ()), Err(VarInt::from_u32(codes::LIMIT)));
    assert_eq!(rejected(&c, "ci_limit"), 1.0);
    assert_eq!(stored(&open_store(&data)), 0);

    let fits = rt.block_on(within(
        "snapshot answered",
        send_inventory(&s.conn, &snapshot(2, packages(0..40))),
    ));
    assert!(matches!(fits, Ok(Message::InventoryAck(_))), "{fits:?}");
    assert_eq!(stored(&open_store(&data)), 40);

    let delta = Message::InventoryDelta(InventoryDeltaMsg {
        base_version: 2,
        version: 3,
        ts_ms: now_ms(),
        delta: InventoryDelta {
            added: packages(40..60),
            ..InventoryDelta::default()
        },
    });
    let past = rt.block_on(within("delta answered", send_inventory(&s.conn, &delta)));
    assert_eq!(past.map(|_| ()), Err(VarInt::from_u32(codes::LIMIT)));
    assert_eq!(rejected(&c, "ci_limit"), 2.0);
    assert_eq!(stored(&open_store(&data)), 40, "nothing of the delta kept");
    // A delta within the cap is still taken.
    let small = Message::InventoryDelta(InventoryDeltaMsg {
        base_version: 2,
        version: 4,
        ts_ms: now_ms(),
        delta: InventoryDelta {
            added: packages(40..50),
            ..InventoryDelta::default()
        },
    });
    let ok = rt.block_on(within("delta answered", send_inventory(&s.conn, &small)));
    assert!(matches!(ok, Ok(Message::InventoryAck(_))), "{ok:?}");
    assert_eq!(stored(&open_store(&data)), 50);
}
