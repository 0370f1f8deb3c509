//! Building and running a collector: bind the sockets, open the store, spawn the QUIC ingest
//! server, the HTTP server and the housekeeping tasks, and stop them all within a deadline.
//! Every long-lived thread and task is watched by a [`Supervisor`]: one that dies fails
//! `/readyz` and resolves [`Running::failed`], on which `serve` exits non-zero.
//!
//! `main` parses arguments and loads the configuration; everything that binds or opens lives
//! here, so tests and `quickstart` start a collector the same way `serve` does.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use vigil_shared::identity::{self, Pin};

use crate::ca;
use crate::config::CollectorConfig;
use crate::http::{self, HttpState};
use crate::latest::LatestTable;
use crate::metrics::Metrics;
use crate::presence::{Presence, Restored};
use crate::supervise::{Failure, Supervisor};
use vigil_runtime::clock::now_ms;

use crate::server::{Ingest, IngestParts};
use crate::store::{Db, Writer};

/// How long a stopping collector waits for connections to drain before it closes them.
const DRAIN_DEADLINE: Duration = Duration::from_secs(10);
/// How often housekeeping runs: pruning batches past retention, marking CIs stale.
const PRUNE_EVERY: Duration = Duration::from_secs(600);
/// How often `/readyz` learns whether the store can be read.
const STORE_PROBE_EVERY: Duration = Duration::from_secs(5);
/// The condition the store probe reports.
const STORE_READS: &str = "store reads";
/// Receive buffer asked for the QUIC socket (the kernel caps it at `net.core.rmem_max`). Every
/// agent shares this one socket; with the default (~208 KiB) bursts from many agents overflow
/// it, and the agents whose datagrams keep being dropped starve while others stream.
const QUIC_RECV_BUFFER: usize = 8 << 20;
/// Bytes quinn keeps unread per connection, over all its streams.
const QUIC_CONNECTION_RECEIVE_WINDOW: u32 = 4 << 20;

/// A running collector.
pub struct Running {
    pub quic_addr: SocketAddr,
    pub http_addr: SocketAddr,
    pub ca_pin: Pin,
    shutdown: CancellationToken,
    tracker: TaskTracker,
    endpoint: quinn::Endpoint,
    writer_join: crate::store::WriterJoin,
    engine_join: crate::incidents::engine::EngineJoin,
    supervisor: Supervisor,
    /// Held until the collector has stopped.
    _lock: crate::admin::DataDirLock,
}

/// Binds, opens and spawns everything `config` describes.
pub async fn start(config: &CollectorConfig) -> Result<Running> {
    // The HTTPS identity first: a bad file stops the start before anything runs.
    let tls_acceptor = match &config.http.tls {
        Some(files) => Some(
            http::serve::tls_acceptor(&files.cert, &files.key)
                .map_err(|e| anyhow::anyhow!("[http] tls: {e}"))?,
        ),
        None => None,
    };
    let data_dir = config.data_dir.clone();
    // First: a second collector on this data dir stops here, before it touches anything.
    let lock = crate::admin::lock_data_dir(&data_dir)?;
    crate::admin::refuse_lost_store(&data_dir)?;
    crate::store::make_private(&data_dir).context("cannot make the data dir private")?;
    // The store before the CA: a CA without a store reads as a lost store on the next start.
    let db = Db::open(&data_dir).context("cannot open the store")?;
    // The SLAs in force: the configuration's and those made through the API.
    let sla_set = Arc::new(
        crate::sla::api::SlaSet::load(config.slas.clone(), db.conn())
            .context("cannot read the API's SLAs")?,
    );
    let identity = ca::load_or_create(&data_dir, &config.quic.server_names, SystemTime::now())
        .context("cannot set up the collector CA")?;
    let supervisor = Supervisor::new();
    // Every enrolled agent, as it was when the collector last ran: none is connected now, a
    // host that was down stays down until heard from, a clean stop stays one.
    let presence = Arc::new(Presence::new(crate::presence::Policy {
        down_after_intervals: config.agents.down_after_intervals,
        shutdown_grace_ms: i64::try_from(config.agents.shutdown_grace.as_millis())
            .unwrap_or(i64::MAX),
    }));
    presence.restore(
        restored_agents(&db).context("cannot read the agents")?,
        now_ms(),
    );
    db.mark_all_disconnected()
        .context("cannot open the store")?;
    let (writer, writer_join) = Writer::spawn_supervised(&data_dir, &supervisor)
        .context("cannot start the store writer")?;

    let table = Arc::new(LatestTable::with_caps(crate::latest::Caps {
        max_series: config.agents.max_series,
        max_checks: config.agents.max_checks,
    }));
    let metrics = Arc::new(
        Metrics::new(table.clone(), presence.clone(), Arc::new(now_ms))
            .context("cannot register metrics")?,
    );
    // vigil_cmdb_items / vigil_cmdb_changes_total: shared by every connection to this store file.
    let cmdb_metrics = crate::cmdb::metrics_for(&db).context("cannot load the CMDB metrics")?;
    metrics
        .register_cmdb(&cmdb_metrics)
        .context("cannot register metrics")?;
    let incident_metrics =
        crate::incidents::IncidentMetrics::new().context("cannot register metrics")?;
    incident_metrics
        .register(metrics.registry())
        .context("cannot register metrics")?;
    let http_metrics =
        http::serve::HttpMetrics::new(metrics.registry()).context("cannot register metrics")?;
    let notify_metrics = crate::notify::NotifyMetrics::new().context("cannot register metrics")?;
    notify_metrics
        .register(metrics.registry())
        .context("cannot register metrics")?;

    let tls = identity::server_config(
        &identity.ca.cert_pem,
        &identity.server_cert_pem,
        &identity.server_key_pem,
    )?;
    let quic_tls =
        quinn::crypto::rustls::QuicServerConfig::try_from(tls).context("TLS 1.3 configuration")?;
    let mut server_config = quinn::ServerConfig::with_crypto(Arc::new(quic_tls));
    let mut transport = quinn::TransportConfig::default();
    transport
        .max_idle_timeout(Some(
            Duration::from_secs(30).try_into().context("idle timeout")?,
        ))
        .max_concurrent_bidi_streams(16u32.into())
        .max_concurrent_uni_streams(0u32.into())
        // What quinn buffers of one connection's streams that the collector has not read yet
        // (by default unbounded over all streams: 16 streams of 1.25 MB each). Frames the
        // collector has read are bounded by the frame memory budgets.
        .receive_window(QUIC_CONNECTION_RECEIVE_WINDOW.into())
        // The collector sends little (acks); with GSO every connection would keep a send
        // buffer for 10 datagrams (~13 KiB), 130 MB for 10,000 agents.
        .enable_segmentation_offload(false);
    server_config.transport_config(Arc::new(transport));
    // Endpoint::server with a reset key that survives restarts (see quic_endpoint_config).
    let endpoint = std::net::UdpSocket::bind(config.quic.listen)
        .and_then(|socket| {
            let state = quinn::udp::UdpSocketState::new((&socket).into())?;
            if let Err(e) = state.set_recv_buffer_size((&socket).into(), QUIC_RECV_BUFFER) {
                tracing::warn!(error = %e, "cannot enlarge the QUIC receive buffer");
            }
            let runtime = quinn::default_runtime()
                .ok_or_else(|| std::io::Error::other("no async runtime found"))?;
            quinn::Endpoint::new(
                identity.quic_endpoint_config(),
                Some(server_config),
                socket,
                runtime,
            )
        })
        .with_context(|| format!("cannot listen for QUIC on {}", config.quic.listen))?;
    let quic_addr = endpoint.local_addr()?;
    let http_listener = tokio::net::TcpListener::bind(config.http.listen)
        .await
        .with_context(|| format!("cannot listen for HTTP on {}", config.http.listen))?;
    let http_addr = http_listener.local_addr()?;

    let shutdown = CancellationToken::new();
    let tracker = TaskTracker::new();

    // Incidents: the notifier delivers what the engine and the API queue in the outbox.
    let webhooks = Arc::new(config.webhooks.clone());
    let notifier = crate::notify::Notifier::spawn(
        &data_dir,
        config.webhooks.clone(),
        notify_metrics,
        &tracker,
        shutdown.clone(),
        &supervisor,
    )
    .context("cannot start the notifier")?;
    let notifier = Arc::new(notifier);
    // Incidents changed: the notifier has work, and the SLA figures are out of date.
    let incidents_changed = Arc::new(tokio::sync::Notify::new());
    let wake: Arc<dyn Fn() + Send + Sync> = {
        let notifier = notifier.clone();
        let changed = incidents_changed.clone();
        Arc::new(move || {
            notifier.wake();
            changed.notify_one();
        })
    };
    let engine_config = engine_config(config, webhooks.clone(), sla_set.all().to_vec());
    let rules = Arc::new(engine_config.rules.clone());
    // Each configured and built-in rule's counter starts at 0, so that rate() sees its first
    // incident (Prometheus cannot tell a series born at 1 from one that was always 1).
    for rule in rules.iter() {
        incident_metrics.preset_rule(&rule.name);
    }
    let (engine, engine_join) = crate::incidents::engine::spawn(
        &data_dir,
        crate::incidents::engine::EngineParts {
            config: engine_config,
            metrics: incident_metrics.clone(),
            wake: wake.clone(),
            presence: presence.clone(),
            clock: Arc::new(now_ms),
            on_exit: supervisor.sentinel("incident engine").into_exit_hook(),
            checkpoints: Some(writer.checkpoints()),
        },
    )
    .context("cannot start the incident engine")?;
    let frame_budget = crate::server::budget::FrameBudget::new(
        config.quic.max_frame_memory,
        config.quic.max_frame_memory_per_connection,
    );
    frame_budget
        .register(metrics.registry())
        .context("cannot register metrics")?;
    let ingest = Arc::new(Ingest::new(IngestParts {
        data_dir: data_dir.clone(),
        writer: writer.clone(),
        table,
        presence: presence.clone(),
        metrics: metrics.clone(),
        identity: Arc::new(identity.clone()),
        max_frame: vigil_shared::codec::DEFAULT_MAX_FRAME,
        settings: vigil_shared::proto::Settings {
            interval_ms: config
                .agents
                .interval
                .map(|i| u64::try_from(i.as_millis()).unwrap_or(u64::MAX)),
        },
        engine: Some(engine.clone()),
        limits: crate::server::session::Limits {
            max_cis: config.agents.max_cis,
            ..Default::default()
        },
        budget: frame_budget,
    })?);
    let quic_sentinel = supervisor.sentinel("QUIC server");
    let quic_shutdown = shutdown.clone();
    let quic_endpoint = endpoint.clone();
    tracker.spawn(async move {
        let _sentinel = quic_sentinel;
        ingest.run(quic_endpoint, quic_shutdown).await
    });

    let metrics_text = {
        let metrics = metrics.clone();
        Arc::new(move || metrics.encode()) as Arc<dyn Fn() -> String + Send + Sync>
    };
    let mut http_state = HttpState::new(data_dir.clone(), metrics_text, supervisor.clone())?;
    http_state.presence = Some(presence);
    http_state.incidents = Arc::new(http::IncidentsApi {
        webhooks,
        wake,
        metrics: Some(incident_metrics),
        rules,
        reopen_within_ms: i64::try_from(config.incidents.reopen_within.as_millis())
            .unwrap_or(i64::MAX),
        engine: Some(engine.clone()),
        slas: sla_set.clone(),
        flaps: Arc::new(crate::incidents::alert_flaps::AlertFlaps::new(
            crate::incidents::eval::FlapParams {
                window: config.incidents.flap_window,
                high: config.incidents.flap_start,
                low: config.incidents.flap_stop,
            },
        )),
    });
    let http_limits = fit_to_open_files(config.http.limits.clone());
    http_state.http_metrics = http_metrics.clone();
    http_state.exports = Arc::new(tokio::sync::Semaphore::new(http_limits.max_exports));
    http_state.console = Arc::new(
        http::session::Console::new(
            Some(metrics.registry()),
            config.http.sessions,
            http::session::LoginLimits::default(),
            config.http.tls.is_some(),
        )
        .context("cannot register metrics")?,
    );
    let router = http::router(http_state);
    let http_shutdown = shutdown.clone();
    let http_sentinel = supervisor.sentinel("HTTP server");
    tracker.spawn(async move {
        let _sentinel = http_sentinel;
        let serve = http::serve::serve_tls(
            http_listener,
            router,
            http_limits,
            http_metrics,
            tls_acceptor,
            http_shutdown.cancelled_owned(),
        );
        if let Err(e) = serve.await {
            tracing::error!(error = %e, "HTTP server failed");
        }
    });

    // The store's health on /readyz when nothing writes: a fresh read every few seconds.
    let probe_dir = data_dir.clone();
    let probe_supervisor = supervisor.clone();
    let probe_shutdown = shutdown.clone();
    let probe_sentinel = supervisor.sentinel("store probe");
    tracker.spawn(async move {
        let _sentinel = probe_sentinel;
        let mut tick = tokio::time::interval(STORE_PROBE_EVERY);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = probe_shutdown.cancelled() => return,
            }
            let dir = probe_dir.clone();
            match tokio::task::spawn_blocking(move || crate::store::probe(&dir)).await {
                Ok(Ok(())) => probe_supervisor.recovered(STORE_READS),
                Ok(Err(e)) => probe_supervisor.degraded(STORE_READS, format!("cannot read: {e}")),
                Err(e) => probe_supervisor.degraded(STORE_READS, format!("probe failed: {e}")),
            }
        }
    });

    // SLA figures on /metrics, recomputed in the background so that a scrape only reads gauges.
    {
        let sla_metrics = Arc::new(
            crate::sla::metrics::SlaMetrics::new(metrics.registry())
                .context("cannot register metrics")?,
        );
        let slas = sla_set.clone();
        let sla_dir = data_dir.clone();
        let sla_shutdown = shutdown.clone();
        let sla_sentinel = supervisor.sentinel("SLA figures");
        let sla_engine = engine.clone();
        let changed = incidents_changed.clone();
        tracker.spawn(async move {
            let _sentinel = sla_sentinel;
            // One connection kept from one refresh to the next (no pragmas and migration check
            // each time; measured, that saves little); opened again after an error.
            let mut kept: Option<Db> = None;
            let mut tick = tokio::time::interval(crate::sla::metrics::REFRESH_EVERY);
            let mut last = tokio::time::Instant::now();
            loop {
                // Every REFRESH_EVERY, and soon after incidents change (at most once per
                // REFRESH_AFTER_CHANGE, so that churn cannot keep the task busy).
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = changed.notified() => {
                        let soonest = last + crate::sla::metrics::REFRESH_AFTER_CHANGE;
                        tokio::select! {
                            _ = tokio::time::sleep_until(soonest) => {}
                            _ = sla_shutdown.cancelled() => return,
                        }
                    }
                    _ = sla_shutdown.cancelled() => return,
                }
                last = tokio::time::Instant::now();
                let (dir, slas, m) = (sla_dir.clone(), slas.all(), sla_metrics.clone());
                let held = kept.take();
                let res = tokio::task::spawn_blocking(move || {
                    if slas.is_empty() {
                        m.refresh_none();
                        return (held, Ok(Vec::new()));
                    }
                    let (cpu, wall) = (
                        vigil_runtime::clock::thread_cpu(),
                        std::time::Instant::now(),
                    );
                    let db = match held.map_or_else(|| Db::open(&dir), Ok) {
                        Ok(db) => db,
                        Err(e) => return (None, Err(e)),
                    };
                    let burns = m
                        .refresh(db.conn(), &slas, now_ms())
                        .map_err(crate::store::StoreError::from);
                    m.record_cost(
                        vigil_runtime::clock::thread_cpu().saturating_sub(cpu),
                        wall.elapsed(),
                    );
                    // After an error the next refresh opens a connection afresh.
                    (burns.is_ok().then_some(db), burns)
                })
                .await;
                match res {
                    Ok((db, Ok(burns))) => {
                        kept = db;
                        // The error-budget alerts are incidents: the engine decides them.
                        let _ = sla_engine
                            .send(crate::incidents::engine::Input::SlaBurn(burns))
                            .await;
                    }
                    Ok((_, Err(e))) => tracing::warn!(error = %e, "SLA figures not refreshed"),
                    Err(e) => tracing::warn!(error = %e, "SLA figures task failed"),
                }
            }
        });
    }

    let retention = config.store.retention;
    let stale_after = config.store.stale_after;
    let sessions = config.http.sessions;
    let prune_shutdown = shutdown.clone();
    let prune_dir = data_dir.clone();
    let prune_sentinel = supervisor.sentinel("housekeeping");
    tracker.spawn(async move {
        let _sentinel = prune_sentinel;
        let mut tick = tokio::time::interval(PRUNE_EVERY);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = prune_shutdown.cancelled() => return,
            }
            let dir = prune_dir.clone();
            let now = now_ms();
            let cutoff =
                now.saturating_sub(i64::try_from(retention.as_millis()).unwrap_or(i64::MAX));
            let res = tokio::task::spawn_blocking(move || {
                let db = Db::open(&dir)?;
                let pruned = db.prune_batches(cutoff)?;
                // Check executions stay as long as a report can reach back, whatever the retention.
                crate::sla::occurrences::prune(db.conn(), now)?;
                crate::sla::cache::prune(db.conn(), crate::sla::cache::KEEP_CHANGES)?;
                crate::http::audit::prune(db.conn(), now)?;
                db.prune_sessions(sessions, now)?;
                // Delivered or failed notifications past retention (pending ones stay).
                crate::notify::prune(db.conn(), cutoff)?;
                let stale = crate::cmdb::mark_stale(&db, stale_after, now)?;
                Ok::<_, crate::store::StoreError>((pruned, stale))
            })
            .await;
            match res {
                Ok(Ok((pruned, stale))) => {
                    if pruned > 0 {
                        tracing::info!(batches = pruned, "pruned batches past retention");
                    }
                    if stale > 0 {
                        tracing::info!(cis = stale, "marked configuration items stale");
                    }
                }
                Ok(Err(e)) => tracing::warn!(error = %e, "housekeeping failed"),
                Err(e) => tracing::warn!(error = %e, "housekeeping task failed"),
            }
        }
    });
    supervisor.set_ready();
    tracing::info!(quic = %quic_addr, http = %http_addr, data_dir = %data_dir.display(), "collector started");
    Ok(Running {
        quic_addr,
        http_addr,
        ca_pin: identity.pin,
        shutdown,
        tracker,
        endpoint,
        writer_join,
        engine_join,
        supervisor,
        _lock: lock,
    })
}

/// The agents a restarted collector knows: every enrolled, unrevoked one, with what liveness
/// needs (its last interval and sighting, a goodbye, an outage still open).
fn restored_agents(db: &Db) -> Result<Vec<Restored>> {
    let outages: std::collections::HashSet<String> =
        crate::incidents::records::agents_with_open_outage(db.conn())?
            .into_iter()
            .collect();
    Ok(db
        .list_agents()?
        .into_iter()
        .filter(|a| !a.is_revoked())
        .map(|a| Restored {
            outage_open: outages.contains(&a.id),
            agent_id: a.id,
            hostname: a.hostname,
            interval_ms: a.interval_ms,
            last_seen_ms: a.last_seen_ms,
            stopped_ms: a.stopped_ms,
        })
        .collect())
}

/// What the incident engine takes from the configuration.
fn engine_config(
    c: &CollectorConfig,
    webhooks: Arc<Vec<crate::notify::Webhook>>,
    slas: Vec<crate::sla::Sla>,
) -> crate::incidents::engine::EngineConfig {
    let ms = |d: Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
    crate::incidents::engine::EngineConfig {
        rules: c.effective_rules(),
        flap: crate::incidents::eval::FlapParams {
            window: c.incidents.flap_window,
            high: c.incidents.flap_start,
            low: c.incidents.flap_stop,
        },
        reopen_within_ms: ms(c.incidents.reopen_within),
        close_after_ms: ms(c.incidents.close_after),
        webhooks,
        maintenance: c.maintenance.clone(),
        slas,
    }
}

impl Running {
    /// A token that stops the collector when cancelled (for `select!` with signals).
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Resolves when a component of the collector died (it is logged, and `/readyz` fails).
    pub async fn failed(&self) -> Failure {
        self.supervisor.failed().await
    }

    /// Stops accepting, lets connections acknowledge what they read, flushes the store.
    pub async fn stop(self) -> Result<()> {
        tracing::info!("collector stopping");
        self.supervisor.stopping();
        self.shutdown.cancel();
        self.tracker.close();
        if tokio::time::timeout(DRAIN_DEADLINE, self.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!("connections did not drain within {DRAIN_DEADLINE:?}; closing them");
        }
        self.endpoint.close(
            quinn::VarInt::from_u32(vigil_shared::proto::codes::SHUTDOWN),
            b"collector shutting down",
        );
        // Every engine handle lived in the ingest tasks, which are done: the engine drains and
        // stops.
        let engine_join = self.engine_join;
        let _ = tokio::time::timeout(
            Duration::from_secs(5),
            tokio::task::spawn_blocking(move || engine_join.join()),
        )
        .await;
        let flushed = tokio::task::spawn_blocking(move || self.writer_join.shutdown()).await;
        let _ = tokio::time::timeout(Duration::from_secs(2), self.endpoint.wait_idle()).await;
        match flushed {
            Ok(Ok(())) => {
                tracing::info!("collector stopped");
                Ok(())
            }
            Ok(Err(e)) => Err(e).context("store flush failed"),
            Err(e) => Err(e).context("store flush task failed"),
        }
    }
}

/// File descriptors kept for everything but HTTP connections (the store, QUIC, logs, exports).
const RESERVED_FDS: u64 = 256;

/// Raises the soft open-file limit to the hard one, and lowers `max_connections` (with a
/// warning) when even that leaves too few descriptors for it: the collector must run out of
/// connection slots before it runs out of file descriptors.
fn fit_to_open_files(mut limits: http::serve::HttpLimits) -> http::serve::HttpLimits {
    let available = match vigil_runtime::fs::raise_open_file_limit() {
        Ok(n) => n,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the open-file limit");
            return limits;
        }
    };
    let fit = usize::try_from(available.saturating_sub(RESERVED_FDS))
        .unwrap_or(usize::MAX)
        .max(1);
    if limits.max_connections > fit {
        tracing::warn!(
            configured = limits.max_connections,
            open_file_limit = available,
            using = fit,
            "[http] max_connections is above what the open-file limit allows; lowered"
        );
        limits.max_connections = fit;
    }
    limits
}
