//! `vigil-agent run`: enroll if needed, then sample every interval into the spool and stream
//! the spool to the collector, reconnecting with exponential backoff and jitter.
//!
//! Two tasks: the sampler (never blocked by the network: it only appends to the spool) and the
//! sender (replays the spool oldest first, trims it on every ack). Nothing here exits on a
//! network error; only a refusal that retrying cannot fix (revoked, enrollment refused) ends
//! the agent.

use std::path::Path;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use vigil_runtime::clock::now_ms;
use vigil_shared::backoff::Backoff;
use vigil_shared::codec::FrameDecoder;
use vigil_shared::identity::EnrollToken;
use vigil_shared::proto::{self, Hello, Message};

use crate::checks;
use crate::client::{self, ClientError, Identity, Session};
use crate::config::AgentConfig;
use crate::discovery;
use crate::inventory_sync;
use crate::sampler::{self, Sampler};
use crate::spool::Spool;
use crate::Process;

/// Batches written to the stream but not yet acknowledged; the sender waits beyond this.
const MAX_IN_FLIGHT: u64 = 256;
/// Batches read from the spool per refill.
const REFILL: usize = 64;

fn lock(spool: &Mutex<Spool>) -> MutexGuard<'_, Spool> {
    spool.lock().unwrap_or_else(|p| p.into_inner())
}

/// Loads the identity, enrolling first when there is none.
pub async fn ensure_identity(
    config: &AgentConfig,
    hostname: &str,
    shutdown: &CancellationToken,
) -> Result<Identity> {
    if let Some(identity) = Identity::load(&config.data_dir)? {
        return Ok(identity);
    }
    let Some(token) = config.token.as_deref() else {
        bail!(
            "this agent is not enrolled yet: give it an enrollment token (--token or `token =` in the config); \
             create one with `vigil-collector token create`"
        );
    };
    let token = EnrollToken::from_str(token.trim()).context("bad enrollment token")?;
    let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
    loop {
        let attempt = async {
            let addr = client::resolve(&config.collector).await?;
            let endpoint = client::client_endpoint(addr)?;
            let res = client::enroll(&endpoint, addr, &token, hostname).await;
            endpoint.wait_idle().await;
            res
        };
        match attempt.await {
            Ok(identity) => {
                identity.save(&config.data_dir)?;
                info!(agent = %identity.agent_id, "enrolled with the collector");
                return Ok(identity);
            }
            Err(e) if e.is_fatal() => return Err(e).context("enrollment failed"),
            Err(e) => {
                let delay = backoff.next_delay(rand::random::<f64>());
                client::log_failure(&e, delay);
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown.cancelled() => bail!("stopped before enrollment completed"),
                }
            }
        }
    }
}

/// Runs the agent until `shutdown` is cancelled or the collector refuses it for good.
pub async fn run(config: AgentConfig, process: Process, shutdown: CancellationToken) -> Result<()> {
    client::create_private_dir(&config.data_dir)?;
    let hostname = config.hostname.clone().unwrap_or_else(sampler::hostname);
    let identity = ensure_identity(&config, &hostname, &shutdown).await?;
    let spool = Spool::open(&config.data_dir.join("spool"), config.spool_max_size)
        .with_context(|| format!("cannot open the spool in {}", config.data_dir.display()))?;
    let spool = Arc::new(Mutex::new(spool));
    let wake = Arc::new(Notify::new());
    // The sampling interval: the agent's own, until the collector pushes another.
    let (interval_tx, interval_rx) = watch::channel(config.metrics_interval);
    info!(agent = %identity.agent_id, host = %hostname, collector = %config.collector, "agent starting");

    let sampling = tokio::spawn(sample_loop(
        config.checks.clone(),
        spool.clone(),
        wake.clone(),
        interval_rx,
        shutdown.clone(),
    ));
    let (inventory_tx, inventory_rx) = watch::channel(None);
    let discovering = tokio::spawn(inventory_sync::discovery_loop(
        discovery::Options {
            root: config.root.clone(),
            tags: config.tags.clone(),
            // As `vigil-agent inventory` does: the config's override, else the root's own name.
            hostname: config.hostname.clone(),
        },
        config.discovery_interval,
        process,
        inventory_tx,
        shutdown.clone(),
    ));
    let inputs = SenderInputs {
        spool: spool.clone(),
        wake,
        interval: interval_tx,
        inventory: inventory_rx,
    };
    let result = send_loop(&config, &identity, &hostname, inputs, shutdown.clone()).await;
    shutdown.cancel();
    let _ = sampling.await;
    let _ = discovering.await;
    if let Ok(spool) = Arc::try_unwrap(spool) {
        if let Err(e) = spool
            .into_inner()
            .unwrap_or_else(|p| p.into_inner())
            .close()
        {
            warn!(error = %e, "cannot close the spool cleanly");
        }
    }
    result
}

async fn sample_loop(
    checks: Vec<crate::config::CheckSpec>,
    spool: Arc<Mutex<Spool>>,
    wake: Arc<Notify>,
    mut interval: watch::Receiver<Duration>,
    shutdown: CancellationToken,
) {
    let mut sampler = match Sampler::new() {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot start sampling");
            return;
        }
    };
    let mut dropped_seen = 0;
    loop {
        let started = tokio::time::Instant::now();
        let now = now_ms();
        let mut samples = sampler.sample(now);
        samples.extend(checks::run_checks(&checks, now).await);
        {
            let mut spool = lock(&spool);
            match spool.push(samples) {
                Ok(seq) => debug!(seq, "sampled"),
                Err(e) => warn!(error = %e, "cannot spool samples"),
            }
            let dropped = spool.dropped_total();
            if dropped > dropped_seen {
                warn!(
                    dropped = dropped - dropped_seen,
                    "spool full: dropped the oldest batches"
                );
                dropped_seen = dropped;
            }
        }
        wake.notify_one();
        // Sleep until the next cycle; a newly pushed interval takes effect at once.
        loop {
            let period = (*interval.borrow_and_update()).max(Duration::from_secs(1));
            tokio::select! {
                _ = tokio::time::sleep_until(started + period) => break,
                changed = interval.changed() => {
                    if changed.is_err() {
                        // The sender is gone (agent stopping): finish this period quietly.
                        tokio::select! {
                            _ = tokio::time::sleep_until(started + period) => break,
                            _ = shutdown.cancelled() => return,
                        }
                    }
                }
                _ = shutdown.cancelled() => return,
            }
        }
    }
}

/// What the sampling and discovery tasks hand to the sender.
struct SenderInputs {
    spool: Arc<Mutex<Spool>>,
    /// Notified when the spool has a new batch.
    wake: Arc<Notify>,
    /// The sampling interval; the sender updates it from the collector's settings.
    interval: watch::Sender<Duration>,
    inventory: inventory_sync::Latest,
}

async fn send_loop(
    config: &AgentConfig,
    identity: &Identity,
    hostname: &str,
    inputs: SenderInputs,
    shutdown: CancellationToken,
) -> Result<()> {
    let SenderInputs {
        spool,
        wake,
        interval,
        inventory,
    } = inputs;
    let client_config = identity.client_config()?;
    let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
    while !shutdown.is_cancelled() {
        let attempt = async {
            let addr = client::resolve(&config.collector).await?;
            let endpoint = client::client_endpoint(addr)?;
            let hello = Hello {
                agent_id: identity.agent_id.clone(),
                hostname: hostname.to_string(),
                version: env!("CARGO_PKG_VERSION").to_string(),
                capabilities: proto::CAPABILITIES.iter().map(|c| c.to_string()).collect(),
                interval_ms: interval.borrow().as_millis() as u64,
            };
            let session =
                client::open_session(&endpoint, client_config.clone(), addr, hello).await?;
            Ok::<_, ClientError>((endpoint, session))
        };
        let (endpoint, session) = match attempt.await {
            Ok(v) => v,
            Err(e) => {
                if e.is_fatal() {
                    client::log_failure(&e, Duration::ZERO);
                    return Err(e.into());
                }
                let delay =
                    e.retry_delay(backoff.next_delay(rand::random::<f64>()), rand::random());
                client::log_failure(&e, delay);
                tokio::select! {
                    _ = tokio::time::sleep(delay) => continue,
                    _ = shutdown.cancelled() => break,
                }
            }
        };
        backoff.reset();
        info!("connected to collector");
        if let Some(ms) = session
            .welcome
            .settings
            .interval_ms
            .filter(|ms| *ms >= 1000)
        {
            let pushed = Duration::from_millis(ms);
            if *interval.borrow() != pushed {
                info!(interval = ?pushed, "collector set the sampling interval");
                interval.send_replace(pushed);
            }
        }
        if let Some(seq) = session.welcome.last_seq {
            if let Err(e) = lock(&spool).observe_remote_last_seq(seq) {
                warn!(error = %e, "cannot update the spool");
            }
        }
        // Metrics and inventory share the connection; either failing ends the session.
        let result = {
            let batches = stream_spool(&session, &spool, &wake, &shutdown);
            let inventory = inventory_sync::sync(&session.conn, inventory.clone());
            tokio::pin!(batches, inventory);
            // A collector that does not speak inventory.v1 gets metrics only.
            let mut inventory_done = !session
                .welcome
                .capabilities
                .iter()
                .any(|c| c == "inventory.v1");
            loop {
                tokio::select! {
                    r = &mut batches => break r,
                    r = &mut inventory, if !inventory_done => match r {
                        Ok(()) => inventory_done = true,
                        Err(e) => break Err(e),
                    },
                }
            }
        };
        match result {
            Ok(()) => {
                session.goodbye("agent stopping").await;
                endpoint.wait_idle().await;
                break;
            }
            Err(e) if e.is_fatal() => {
                client::log_failure(&e, Duration::ZERO);
                return Err(e.into());
            }
            Err(e) => {
                let delay =
                    e.retry_delay(backoff.next_delay(rand::random::<f64>()), rand::random());
                client::log_failure(&e, delay);
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown.cancelled() => break,
                }
            }
        }
    }
    Ok(())
}

/// Streams the spool on one batch stream until the connection fails (`Err`) or shutdown (`Ok`).
async fn stream_spool(
    session: &Session,
    spool: &Arc<Mutex<Spool>>,
    wake: &Arc<Notify>,
    shutdown: &CancellationToken,
) -> Result<(), ClientError> {
    let (mut send, mut recv) = session
        .conn
        .open_bi()
        .await
        .map_err(ClientError::Connection)?;
    let acked = Arc::new(AtomicU64::new(lock(spool).acked()));
    let ack_wake = Arc::new(Notify::new());
    let reader = {
        let (spool, acked, ack_wake) = (spool.clone(), acked.clone(), ack_wake.clone());
        async move {
            let mut dec = FrameDecoder::new(64 * 1024);
            loop {
                match client::read_message(&mut recv, &mut dec).await? {
                    Some(Message::Ack(ack)) => {
                        if let Err(e) = lock(&spool).ack(ack.seq) {
                            warn!(error = %e, "cannot trim the spool");
                        }
                        acked.fetch_max(ack.seq, Ordering::SeqCst);
                        ack_wake.notify_waiters();
                    }
                    Some(other) => debug!(kind = other.kind(), "ignoring message on batch stream"),
                    None => {
                        return Err(ClientError::Protocol(
                            "collector closed the batch stream".into(),
                        ))
                    }
                }
            }
        }
    };
    tokio::pin!(reader);
    let mut sent = acked.load(Ordering::SeqCst);
    loop {
        // Fill the window from the spool.
        let in_flight = sent.saturating_sub(acked.load(Ordering::SeqCst));
        let batches = if in_flight < MAX_IN_FLIGHT {
            lock(spool)
                .pending(sent, REFILL)
                .map_err(|e| ClientError::Protocol(format!("spool: {e}")))?
        } else {
            Vec::new()
        };
        if batches.is_empty() {
            let acks = ack_wake.notified();
            tokio::select! {
                res = &mut reader => return res,
                _ = wake.notified() => {}
                _ = acks => {}
                _ = shutdown.cancelled() => {
                    // Give in-flight batches a moment to be acknowledged, then leave.
                    let _ = send.finish();
                    let deadline = tokio::time::sleep(Duration::from_secs(2));
                    tokio::pin!(deadline);
                    while acked.load(Ordering::SeqCst) < sent {
                        let acks = ack_wake.notified();
                        tokio::select! {
                            _ = &mut deadline => break,
                            _ = acks => {}
                            res = &mut reader => { res?; break; }
                        }
                    }
                    return Ok(());
                }
            }
            continue;
        }
        for (seq, frame) in batches {
            tokio::select! {
                res = client::write_bytes(&mut send, &frame) => res?,
                res = &mut reader => return res,
            }
            sent = seq;
        }
    }
}

/// For `vigil-agent run` without a config file: a data dir must exist or be creatable.
pub fn check_data_dir(dir: &Path) -> Result<()> {
    client::create_private_dir(dir)
        .with_context(|| format!("cannot use data dir {}", dir.display()))
}
