//! `vigil-agent simulate`: a load generator. N simulated agents, each enrolled once (or reusing
//! a certificate saved in `--data-dir`), each on its own mutually authenticated QUIC connection,
//! each streaming a synthetic batch of M samples every interval, with real sequence numbers and
//! acknowledgements. Prints what was sent and acknowledged.
//!
//! It measures the collector, not itself: batches are encoded once per tick and nothing is
//! spooled to disk. Every agent connects first and waits; streaming starts when all of them are
//! connected (or have failed), so the load phase is measured on its own (`load_*` in the report)
//! and early agents do not starve the handshakes of later ones. With an interval, agent `i` of
//! `N` starts `i/N` of an interval late, so the load is spread, not in lock-step bursts.

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use vigil_shared::codec::{self, FrameDecoder, DEFAULT_MAX_FRAME};
use vigil_shared::identity::EnrollToken;
use vigil_shared::metric_names as m;
use vigil_shared::proto::{self, Batch, Hello, Message, Sample};

use crate::client::{self, Identity};
use vigil_runtime::clock::now_ms;

/// Agents per client endpoint (UDP socket).
const AGENTS_PER_ENDPOINT: usize = 100;
/// Concurrent enrollments / handshakes while ramping up.
const RAMP_CONCURRENCY: usize = 64;

pub struct SimulateOptions {
    pub agents: usize,
    pub collector: String,
    pub token: Option<String>,
    /// Zero means "as fast as acknowledgements allow".
    pub interval: Duration,
    pub metrics_per_agent: usize,
    pub duration: Duration,
    /// Where simulated identities are kept between runs (enroll once, reuse after).
    pub data_dir: Option<PathBuf>,
    /// Batches a simulated agent may have unacknowledged.
    pub window: u64,
}

#[derive(Default)]
struct Counters {
    connected: AtomicU64,
    /// Agents connected or failed before connecting.
    settled: AtomicU64,
    /// Cancelled once every agent has settled: the signal to start streaming.
    go: CancellationToken,
    batches_sent: AtomicU64,
    samples_sent: AtomicU64,
    samples_acked: AtomicU64,
    errors: AtomicU64,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Report {
    pub agents: usize,
    pub connected: u64,
    pub batches_sent: u64,
    pub samples_sent: u64,
    pub samples_acked: u64,
    pub errors: u64,
    pub seconds: f64,
    pub acked_per_second: f64,
    /// Seconds until every agent was connected (or had failed); `None` if the duration ended first.
    pub ramp_seconds: Option<f64>,
    /// Seconds of streaming after the ramp, and the samples acknowledged per second in them.
    pub load_seconds: f64,
    pub load_acked_per_second: f64,
}

impl Counters {
    /// Counts an agent as settled (once: `done` remembers), releasing everyone when it is the last.
    fn settle(&self, done: &mut bool, agents: usize) {
        if !*done {
            *done = true;
            if self.settled.fetch_add(1, Ordering::SeqCst) + 1 >= agents as u64 {
                self.go.cancel();
            }
        }
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "agents {} (connected {}), batches sent {}, samples sent {}, samples acked {}, errors {}, \
             {:.1} s, {:.0} samples/s acknowledged",
            self.agents,
            self.connected,
            self.batches_sent,
            self.samples_sent,
            self.samples_acked,
            self.errors,
            self.seconds,
            self.acked_per_second
        )?;
        match self.ramp_seconds {
            Some(ramp) => write!(
                f,
                "; all connected after {ramp:.1} s, then {:.0} samples/s acknowledged over {:.1} s",
                self.load_acked_per_second, self.load_seconds
            ),
            None => write!(f, "; the ramp-up did not finish within the duration"),
        }
    }
}

/// The synthetic series of one simulated host: the real host metric names, then as many
/// filesystems as it takes to reach `count`.
fn synthetic_series(count: usize) -> Vec<(String, Vec<(String, String)>)> {
    let base = [
        m::CPU_USAGE_RATIO,
        m::LOAD1,
        m::LOAD5,
        m::LOAD15,
        m::MEMORY_USED_BYTES,
        m::MEMORY_TOTAL_BYTES,
        m::SWAP_USED_BYTES,
        m::UPTIME_SECONDS,
    ];
    let mut out: Vec<_> = base
        .iter()
        .take(count)
        .map(|n| (n.to_string(), Vec::new()))
        .collect();
    let mut k = 0;
    while out.len() < count {
        let name = if k % 2 == 0 {
            m::FILESYSTEM_USED_RATIO
        } else {
            m::FILESYSTEM_SIZE_BYTES
        };
        out.push((
            name.to_string(),
            vec![
                ("device".into(), format!("/dev/sim{}", k / 2)),
                ("mountpoint".into(), format!("/data{}", k / 2)),
            ],
        ));
        k += 1;
    }
    out
}

pub async fn simulate(opts: SimulateOptions) -> Result<Report> {
    let addr = client::resolve(&opts.collector).await?;
    let token = opts
        .token
        .as_deref()
        .map(|t| EnrollToken::from_str(t.trim()))
        .transpose()
        .context("bad enrollment token")?;
    let endpoints: Vec<_> = (0..opts.agents.div_ceil(AGENTS_PER_ENDPOINT).max(1))
        .map(|_| client::client_endpoint(addr))
        .collect::<Result<_, _>>()?;
    let counters = Arc::new(Counters::default());
    let stop = CancellationToken::new();
    let ramp = Arc::new(Semaphore::new(RAMP_CONCURRENCY));
    let series = Arc::new(synthetic_series(opts.metrics_per_agent));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..opts.agents {
        let endpoint = endpoints[i / AGENTS_PER_ENDPOINT].clone();
        let (token, counters, stop, ramp, series) = (
            token.clone(),
            counters.clone(),
            stop.clone(),
            ramp.clone(),
            series.clone(),
        );
        let dir = opts.data_dir.as_ref().map(|d| d.join(format!("sim-{i}")));
        let (interval, window, agents) = (opts.interval, opts.window.max(1), opts.agents);
        let phase = interval.mul_f64(i as f64 / agents as f64);
        tasks.spawn(async move {
            let hostname = format!("sim-{i:05}");
            let mut settled = false;
            let res = sim_agent(
                &endpoint,
                addr,
                token.as_ref(),
                dir,
                &hostname,
                (interval, phase),
                window,
                &series,
                (&counters, &mut settled, agents),
                &ramp,
                &stop,
            )
            .await;
            counters.settle(&mut settled, agents);
            if let Err(e) = res {
                counters.errors.fetch_add(1, Ordering::Relaxed);
                warn!(host = %hostname, error = %e, "simulated agent failed");
            }
        });
    }
    let deadline = tokio::time::Instant::from_std(started + opts.duration);
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let mut ramp_seconds = None;
    tokio::select! {
        _ = counters.go.cancelled() => {
            let ramp = started.elapsed().as_secs_f64();
            ramp_seconds = Some(ramp);
            info!(
                agents = opts.agents,
                connected = counters.connected.load(Ordering::Relaxed),
                failed = counters.errors.load(Ordering::Relaxed),
                "all simulated agents connected after {ramp:.1} s; streaming"
            );
        }
        _ = tokio::time::sleep_until(deadline) => {}
        _ = &mut ctrl_c => {}
    }
    let load_started = Instant::now();
    let acked_at_go = counters.samples_acked.load(Ordering::Relaxed);
    if ramp_seconds.is_some() {
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => {}
            _ = &mut ctrl_c => {}
        }
    }
    stop.cancel();
    // Releases agents still waiting for the ramp, so they leave.
    counters.go.cancel();
    let seconds = started.elapsed().as_secs_f64();
    let load_seconds = load_started.elapsed().as_secs_f64();
    let acked_at_stop = counters.samples_acked.load(Ordering::Relaxed);
    while tasks.join_next().await.is_some() {}
    for e in &endpoints {
        e.close(
            quinn::VarInt::from_u32(proto::codes::OK),
            b"simulation over",
        );
    }
    let c = &counters;
    Ok(Report {
        agents: opts.agents,
        connected: c.connected.load(Ordering::Relaxed),
        batches_sent: c.batches_sent.load(Ordering::Relaxed),
        samples_sent: c.samples_sent.load(Ordering::Relaxed),
        samples_acked: c.samples_acked.load(Ordering::Relaxed),
        errors: c.errors.load(Ordering::Relaxed),
        seconds,
        acked_per_second: acked_at_stop as f64 / seconds.max(1e-9),
        ramp_seconds,
        load_seconds,
        load_acked_per_second: if ramp_seconds.is_some() {
            acked_at_stop.saturating_sub(acked_at_go) as f64 / load_seconds.max(1e-9)
        } else {
            0.0
        },
    })
}

#[allow(clippy::too_many_arguments)]
async fn sim_agent(
    endpoint: &quinn::Endpoint,
    addr: std::net::SocketAddr,
    token: Option<&EnrollToken>,
    dir: Option<PathBuf>,
    hostname: &str,
    (interval, phase): (Duration, Duration),
    window: u64,
    series: &[(String, Vec<(String, String)>)],
    (counters, settled, agents): (&Counters, &mut bool, usize),
    ramp: &Semaphore,
    stop: &CancellationToken,
) -> Result<()> {
    let permit = tokio::select! {
        permit = ramp.acquire() => permit?,
        // The simulation ended before this agent's turn to connect.
        _ = stop.cancelled() => return Ok(()),
    };
    let identity = match dir.as_deref().map(Identity::load).transpose()?.flatten() {
        Some(identity) => identity,
        None => {
            let token = token.context("no saved identity and no --token to enroll with")?;
            let identity = client::enroll(endpoint, addr, token, hostname).await?;
            if let Some(dir) = &dir {
                identity.save(dir)?;
            }
            identity
        }
    };
    let hello = Hello {
        agent_id: identity.agent_id.clone(),
        hostname: hostname.to_string(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        capabilities: proto::CAPABILITIES.iter().map(|c| c.to_string()).collect(),
        interval_ms: interval.as_millis().max(1000) as u64,
    };
    let session = client::open_session(endpoint, identity.client_config()?, addr, hello).await?;
    drop(permit);
    counters.connected.fetch_add(1, Ordering::Relaxed);
    counters.settle(settled, agents);
    // Everyone streams only once everyone is connected.
    tokio::select! {
        _ = counters.go.cancelled() => {}
        _ = stop.cancelled() => {}
    }
    if stop.is_cancelled() {
        session.goodbye("simulation over").await;
        return Ok(());
    }
    let mut seq = session.welcome.last_seq.unwrap_or(0);
    let (mut send, mut recv) = session.conn.open_bi().await?;
    let acked = Arc::new(AtomicU64::new(seq));
    let ack_wake = Arc::new(Notify::new());
    let per_batch = series.len() as u64;
    let reader = {
        let (acked, ack_wake) = (acked.clone(), ack_wake.clone());
        async move {
            let mut dec = FrameDecoder::new(64 * 1024);
            while let Some(msg) = client::read_message(&mut recv, &mut dec).await? {
                if let Message::Ack(a) = msg {
                    let prev = acked.fetch_max(a.seq, Ordering::SeqCst);
                    if a.seq > prev {
                        counters
                            .samples_acked
                            .fetch_add((a.seq - prev) * per_batch, Ordering::Relaxed);
                    }
                    ack_wake.notify_waiters();
                }
            }
            Ok::<_, client::ClientError>(())
        }
    };
    tokio::pin!(reader);
    let mut tick = tokio::time::interval_at(
        tokio::time::Instant::now() + phase,
        if interval.is_zero() {
            Duration::from_millis(1)
        } else {
            interval
        },
    );
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut buf = Vec::new();
    let mut value = 0.0f64;
    let mut last_ts = 0i64;
    // Built once; each batch only updates timestamps and values (the generator's own allocations
    // would otherwise take CPU from the collector it measures on a shared machine).
    let mut samples: Vec<Sample> = series
        .iter()
        .map(|(name, labels)| Sample {
            ts_ms: 0,
            name: name.clone(),
            labels: labels.clone(),
            value: 0.0,
        })
        .collect();
    // The reader future must not be polled again once it has finished.
    let mut reader_done = false;
    'send: loop {
        if !interval.is_zero() {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.cancelled() => break 'send,
                res = &mut reader => { reader_done = true; res?; break 'send; }
            }
        }
        loop {
            // Created before the check, so an ack landing in between still wakes us.
            let acks = ack_wake.notified();
            if seq - acked.load(Ordering::SeqCst) < window {
                break;
            }
            tokio::select! {
                _ = acks => {}
                _ = stop.cancelled() => break 'send,
                res = &mut reader => { reader_done = true; res?; break 'send; }
            }
        }
        if stop.is_cancelled() {
            break;
        }
        seq += 1;
        // Strictly increasing, as a real agent's samples are: at `--interval 0s` several batches
        // fall in one millisecond, and the collector skips a sample no newer than its series'
        // last one (a late sample) instead of evaluating rules on it.
        let ts = now_ms().max(last_ts + 1);
        last_ts = ts;
        value += 0.001;
        for s in &mut samples {
            s.ts_ms = ts;
            s.value = value % 1.0;
        }
        let msg = Message::Batch(Batch {
            seq,
            samples: std::mem::take(&mut samples),
        });
        buf.clear();
        let encoded = codec::encode_into(&msg, &mut buf, DEFAULT_MAX_FRAME);
        if let Message::Batch(b) = msg {
            samples = b.samples;
        }
        encoded?;
        tokio::select! {
            res = client::write_bytes(&mut send, &buf) => res?,
            res = &mut reader => { reader_done = true; res?; break; }
        }
        counters.batches_sent.fetch_add(1, Ordering::Relaxed);
        counters
            .samples_sent
            .fetch_add(per_batch, Ordering::Relaxed);
    }
    // Wait briefly for the last acknowledgements, then leave politely.
    let _ = send.finish();
    let deadline = tokio::time::sleep(Duration::from_secs(5));
    tokio::pin!(deadline);
    while !reader_done {
        let acks = ack_wake.notified();
        if acked.load(Ordering::SeqCst) >= seq {
            break;
        }
        tokio::select! {
            _ = &mut deadline => break,
            _ = acks => {}
            _ = &mut reader => reader_done = true,
        }
    }
    session.goodbye("simulation over").await;
    Ok(())
}
