//! Durability of the agent -> collector path with the real binaries: a collector outage is
//! bridged by the agent's spool and replayed in order with the original sampling times, and a
//! collector killed with SIGKILL loses nothing it acknowledged.
//!
//! What the store must show afterwards, per agent: every sequence number from the first to the
//! last exactly once (an agent that is never killed leaves no gap in its numbering).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use vigil_shared::codec::decode_body;
use vigil_shared::proto::{kind, Message};

use crate::harness::*;

/// One row of the collector's `batches` table.
#[derive(Debug, Clone)]
struct Stored {
    seq: u64,
    received_ms: i64,
    first_ts_ms: i64,
    last_ts_ms: i64,
    samples: u32,
    payload: Vec<u8>,
}

/// Every batch stored for `agent`, by sequence number.
fn stored(collector_dir: &Path, agent: &str) -> Vec<Stored> {
    let conn = open_store(collector_dir);
    let mut stmt = conn
        .prepare(
            "SELECT seq, received_ms, first_ts_ms, last_ts_ms, samples, payload
             FROM batches WHERE agent_id = ?1 ORDER BY seq",
        )
        .expect("prepare");
    stmt.query_map([agent], |r| {
        Ok(Stored {
            seq: r.get::<_, i64>(0)? as u64,
            received_ms: r.get(1)?,
            first_ts_ms: r.get(2)?,
            last_ts_ms: r.get(3)?,
            samples: r.get(4)?,
            payload: r.get(5)?,
        })
    })
    .expect("query")
    .collect::<Result<_, _>>()
    .expect("rows")
}

/// Batches stored for `agent` (cheap: no payloads).
fn stored_count(collector_dir: &Path, agent: &str) -> u64 {
    let conn = open_store(collector_dir);
    conn.query_row(
        "SELECT COUNT(*) FROM batches WHERE agent_id = ?1",
        [agent],
        |r| r.get::<_, i64>(0),
    )
    .expect("count") as u64
}

/// The agent's spool watermark from `<agent_dir>/spool/state`: `(acked, next_seq)`.
pub(crate) fn spool_state(agent_dir: &Path) -> Option<(u64, u64)> {
    let text = std::fs::read_to_string(agent_dir.join("spool").join("state")).ok()?;
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
    };
    Some((field("acked")?, field("next_seq")?))
}

/// Sequence numbers must run `first..=last` without a gap or a repeat.
pub(crate) fn assert_contiguous(seqs: &[u64], who: &str) {
    let Some(&first) = seqs.first() else {
        panic!("{who}: nothing stored");
    };
    let expected: Vec<u64> = (first..first + seqs.len() as u64).collect();
    if seqs != expected.as_slice() {
        let mut problems = Vec::new();
        for w in seqs.windows(2) {
            if w[1] == w[0] {
                problems.push(format!("duplicate {}", w[0]));
            } else if w[1] != w[0] + 1 {
                problems.push(format!("gap {}..{}", w[0] + 1, w[1]));
            }
        }
        panic!("{who}: sequence numbers not contiguous: {problems:?} in {seqs:?}");
    }
}

/// Decodes a stored payload and checks it against its row: same sequence number and sample
/// count, and the sample times span exactly `first_ts_ms..=last_ts_ms`.
fn check_payload(b: &Stored) {
    let batch = match decode_body(kind::BATCH, &b.payload) {
        Ok(Message::Batch(batch)) => batch,
        other => panic!("seq {}: payload is not a batch: {other:?}", b.seq),
    };
    assert_eq!(batch.seq, b.seq);
    assert_eq!(batch.samples.len(), b.samples as usize, "seq {}", b.seq);
    let lo = batch.samples.iter().map(|s| s.ts_ms).min();
    let hi = batch.samples.iter().map(|s| s.ts_ms).max();
    assert_eq!(
        (lo, hi),
        (Some(b.first_ts_ms), Some(b.last_ts_ms)),
        "seq {}: sample times vs row",
        b.seq
    );
}

/// The collector goes away cleanly for > 10 s while the agent keeps sampling at 1 s: once the
/// collector is back on the same ports and data dir, the agent replays its spool oldest first;
/// every batch arrives exactly once and replayed samples keep their original times.
#[test]
fn collector_outage_is_bridged_by_the_spool() {
    let dir = tempfile::tempdir().expect("tempdir");
    let collector_dir = dir.path().join("collector");
    let mut collector = spawn_collector(&collector_dir);
    let (quic, http) = (collector.quic, collector.http);
    let token = enroll_token(&collector_dir, &[]);
    let agent_dir = dir.path().join("agent");
    let mut agent = spawn_agent(quic, Some(&token), &agent_dir, "1s");

    // A few batches acknowledged before the outage.
    let id = wait_until(Duration::from_secs(30), "agent enrolled", || {
        agent_id(&agent_dir)
    });
    wait_until(Duration::from_secs(30), "3 batches acknowledged", || {
        spool_state(&agent_dir).filter(|(acked, _)| *acked >= 3)
    });

    let status = collector.proc.terminate(Duration::from_secs(20));
    assert!(
        status.success(),
        "collector log:\n{}",
        collector.proc.logs()
    );
    let outage_start = now_ms();
    let before: Vec<u64> = stored(&collector_dir, &id).iter().map(|b| b.seq).collect();
    assert_contiguous(&before, "before the outage");

    // The agent keeps running (sampling into its spool, retrying) for the whole outage.
    let deadline = Instant::now() + Duration::from_millis(10_500);
    while Instant::now() < deadline {
        assert!(
            agent.is_running(),
            "agent exited during the outage; log:\n{}",
            agent.logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    let outage_end = now_ms();
    let collector = spawn_collector_at(&collector_dir, quic, http);
    assert_eq!((collector.quic, collector.http), (quic, http));

    // Caught up: a batch sampled after the restart is stored, and the stream is in order, so
    // everything spooled before it is stored too.
    wait_until(
        Duration::from_secs(40),
        "the agent to replay its spool and send fresh batches",
        || {
            stored(&collector_dir, &id)
                .last()
                .filter(|b| b.first_ts_ms > outage_end)
                .map(|_| ())
        },
    );
    assert!(
        agent.terminate(Duration::from_secs(15)).success(),
        "agent log:\n{}",
        agent.logs()
    );

    let batches = stored(&collector_dir, &id);
    let seqs: Vec<u64> = batches.iter().map(|b| b.seq).collect();
    assert_eq!(seqs.first(), Some(&1), "a new agent numbers from 1");
    assert_contiguous(&seqs, "agent after the outage");
    let last = *seqs.last().expect("some");
    let (acked, next_seq) = spool_state(&agent_dir).expect("spool state");
    assert!(
        acked <= last && last < next_seq,
        "acked {acked}, stored up to {last}, next_seq {next_seq}"
    );
    assert!(
        next_seq - 1 - acked <= 2,
        "a clean stop leaves at most the last batch or two unacknowledged: acked {acked}, next_seq {next_seq}"
    );

    // The batches sampled while the collector was down arrived after the restart, with their
    // original sampling times, about 1 s apart.
    let replayed: Vec<&Stored> = batches
        .iter()
        .filter(|b| b.first_ts_ms >= outage_start && b.first_ts_ms < outage_end)
        .collect();
    assert!(
        replayed.len() >= 8,
        "only {} batches sampled during the {} ms outage: {:?}",
        replayed.len(),
        outage_end - outage_start,
        replayed.iter().map(|b| b.seq).collect::<Vec<_>>()
    );
    for b in &replayed {
        assert!(
            b.received_ms >= outage_end,
            "seq {} sampled at {} during the outage but received at {} (restart at {outage_end})",
            b.seq,
            b.first_ts_ms,
            b.received_ms
        );
        assert!(b.last_ts_ms >= b.first_ts_ms && b.last_ts_ms < outage_end);
        check_payload(b);
    }
    let gaps: Vec<i64> = replayed
        .windows(2)
        .map(|w| w[1].first_ts_ms - w[0].first_ts_ms)
        .collect();
    assert!(
        gaps.iter().all(|g| (500..=2_000).contains(g)),
        "sampling times of replayed batches should be ~1 s apart: {gaps:?}"
    );
    let mean = gaps.iter().sum::<i64>() as f64 / gaps.len() as f64;
    assert!(
        (900.0..=1_200.0).contains(&mean),
        "mean spacing {mean} ms: {gaps:?}"
    );
    // Live batches too: every payload matches its row.
    for b in &batches {
        check_payload(b);
    }
}

/// Starts `vigil-agent simulate` with `args`; its report (JSON) goes to `<dir>/report.json`.
fn spawn_simulate(collector: std::net::SocketAddr, token: &str, dir: &Path, args: &[&str]) -> Proc {
    std::fs::create_dir_all(dir).expect("sim dir");
    let report = std::fs::File::create(dir.join("report.json")).expect("report file");
    let mut cmd = Command::new(bin("vigil-agent"));
    cmd.arg("simulate")
        .arg("--collector")
        .arg(collector.to_string())
        .arg("--token")
        .arg(token)
        .arg("--data-dir")
        .arg(dir)
        .arg("--json")
        .args(args)
        .stdout(Stdio::from(report));
    Proc::spawn("vigil-agent simulate", cmd, dir.join("simulate.log"))
}

/// SIGKILL the collector while a real agent and five fast simulated agents stream to it: every
/// batch it acknowledged is in the store after the restart, and the real agent then catches up
/// with no gap and no duplicate.
#[test]
fn collector_sigkill_loses_nothing_acknowledged() {
    const SIMS: usize = 5;
    const SIM_METRICS: u64 = 50;
    let dir = tempfile::tempdir().expect("tempdir");
    let collector_dir = dir.path().join("collector");
    let mut collector = spawn_collector(&collector_dir);
    let (quic, http) = (collector.quic, collector.http);
    let token = enroll_token(&collector_dir, &[]);
    let agent_dir = dir.path().join("agent");
    let mut agent = spawn_agent(quic, Some(&token), &agent_dir, "1s");
    let sim_dir = dir.path().join("sim");
    let mut sim = spawn_simulate(
        quic,
        &token,
        &sim_dir,
        &[
            "--agents",
            &SIMS.to_string(),
            "--interval",
            "0s",
            "--metrics-per-agent",
            &SIM_METRICS.to_string(),
            "--duration",
            "10s",
        ],
    );

    let id = wait_until(Duration::from_secs(30), "agent enrolled", || {
        agent_id(&agent_dir)
    });
    let sim_ids: Vec<String> =
        wait_until(Duration::from_secs(30), "simulated agents enrolled", || {
            (0..SIMS)
                .map(|i| agent_id(&sim_dir.join(format!("sim-{i}"))))
                .collect::<Option<Vec<_>>>()
        });
    // Streaming in earnest: the agent has acks, every simulated agent has stored batches.
    wait_until(Duration::from_secs(30), "acks flowing", || {
        let agent_ok = spool_state(&agent_dir).is_some_and(|(acked, _)| acked >= 3);
        let sims_ok = sim_ids
            .iter()
            .all(|s| stored_count(&collector_dir, s) >= 20);
        (agent_ok && sims_ok).then_some(())
    });

    let (acked_before, _) = spool_state(&agent_dir).expect("spool state");
    collector.proc.kill();
    let killed_at = now_ms();
    assert!(sim.is_running(), "the simulation ended before the kill");
    // Acks already on their way may still be processed; none can be sent after the kill.
    std::thread::sleep(Duration::from_millis(300));
    let (acked, _) = spool_state(&agent_dir).expect("spool state");
    assert!(acked >= acked_before);

    // Nothing acknowledged is lost: the store after the kill holds every acknowledged batch.
    let seqs: Vec<u64> = stored(&collector_dir, &id).iter().map(|b| b.seq).collect();
    assert_contiguous(&seqs, "agent after SIGKILL");
    assert_eq!(seqs.first(), Some(&1));
    assert!(
        seqs.last().is_some_and(|l| *l >= acked),
        "the agent saw {acked} acknowledged but the store holds only up to {:?}",
        seqs.last()
    );
    let mut sim_stored = 0;
    let mut sim_last_received = 0;
    for s in &sim_ids {
        let rows = stored(&collector_dir, s);
        let seqs: Vec<u64> = rows.iter().map(|b| b.seq).collect();
        assert_contiguous(&seqs, &format!("simulated agent {s}"));
        assert_eq!(seqs.first(), Some(&1));
        sim_stored += seqs.len() as u64;
        sim_last_received = rows
            .iter()
            .map(|b| b.received_ms)
            .max()
            .unwrap_or(0)
            .max(sim_last_received);
    }
    assert!(
        killed_at - sim_last_received < 3_000,
        "the simulated agents were still streaming when the collector died (last batch {} ms before)",
        killed_at - sim_last_received
    );

    // Back on the same ports and data dir.
    let restart = now_ms();
    let collector = spawn_collector_at(&collector_dir, quic, http);

    // The simulation's own count of acknowledged samples is covered by what is stored.
    let status = sim
        .wait_for(Duration::from_secs(40))
        .unwrap_or_else(|| panic!("simulate did not finish; log:\n{}", sim.logs()));
    assert!(status.success(), "simulate log:\n{}", sim.logs());
    let report: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(sim_dir.join("report.json")).expect("report"),
    )
    .unwrap_or_else(|e| panic!("simulate report: {e}; log:\n{}", sim.logs()));
    let samples_acked = report["samples_acked"].as_u64().expect("samples_acked");
    assert!(samples_acked > 0, "{report}");
    assert!(
        sim_stored * SIM_METRICS >= samples_acked,
        "simulate saw {samples_acked} samples acknowledged, the store holds {} ({report})",
        sim_stored * SIM_METRICS
    );

    // The real agent reconnects and catches up: no gap, no duplicate.
    wait_until(
        Duration::from_secs(45),
        "the agent to catch up after the restart",
        || {
            stored(&collector_dir, &id)
                .last()
                .filter(|b| b.first_ts_ms > restart)
                .map(|_| ())
        },
    );
    assert!(
        agent.terminate(Duration::from_secs(15)).success(),
        "agent log:\n{}",
        agent.logs()
    );
    let batches = stored(&collector_dir, &id);
    let seqs: Vec<u64> = batches.iter().map(|b| b.seq).collect();
    assert_eq!(seqs.first(), Some(&1));
    assert_contiguous(&seqs, "agent after catching up");
    for b in &batches {
        check_payload(b);
    }
    // The restarted collector resets the agent's stale connection (stateless reset with a key
    // that survives restarts), so the agent is back within seconds, not after its 30 s idle
    // timeout.
    let back = batches
        .iter()
        .map(|b| b.received_ms)
        .filter(|r| *r >= restart)
        .min()
        .expect("batches after the restart");
    assert!(
        back - restart < 15_000,
        "the agent took {} ms to reconnect after the restart; log:\n{}",
        back - restart,
        agent.logs()
    );
    drop(collector);
}
