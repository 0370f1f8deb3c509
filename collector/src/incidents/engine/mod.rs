//! The incident engine: one thread that evaluates every rule on ingest, per (rule, CI) series, in
//! the order samples arrive, and turns what it decides into incident changes through
//! [`crate::incidents::lifecycle`] (each change, its timeline and its notifications in one
//! transaction).
//!
//! The rooms:
//! - this file: the thread, its inputs ([`Input`], [`EngineHandle`]) and its loop;
//! - `series.rs`: per-agent and per-series state, rule sets, evaluation of samples and of the
//!   derived metrics (`up` from [`crate::presence`], `memory_used_ratio`, `inventory_stale`);
//! - `changes.rs`: what an evaluation event does to an incident (open with suppression and
//!   probable cause, breach updates, resolve, flapping) as lifecycle calls;
//! - `housekeeping.rs`: the tick (liveness, flushes, symptoms of recovered hosts, vanished
//!   series), refreshes (host names and tags, maintenance windows and the end of their
//!   suppression, stale inventories, incidents an operator resolved) and `close_after`;
//! - `clocks.rs`: the incidents' response and resolution clocks (due times, warnings, breaches);
//! - `sla_alerts.rs`: the SLAs' error-budget alerts (burn rates, budget exhausted) as incidents.
//!
//! CMDB reads go through [`crate::cmdb::lookup`]; incident reads through
//! [`crate::incidents::records`]; writes only through the lifecycle.
//!
//! Backpressure: the input channel is bounded; a full channel makes the sender wait (on a
//! blocking thread, never on the runtime), which slows acknowledgements rather than dropping
//! evaluations. A send to a dead engine is an error, logged once; the death itself is reported
//! by the collector's supervisor.
//!
//! This module must never: evaluate a series' samples out of timestamp order (late ones are
//! counted and skipped), notify for a suppressed or flapping incident, panic on agent data, or
//! block the async runtime.

mod changes;
mod clocks;
mod housekeeping;
mod series;
mod sla_alerts;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::Duration;

use rusqlite::Connection;
use vigil_runtime::clock::Clock;
use vigil_shared::proto::Sample;

use super::eval::{Event, FlapParams};
use super::maintenance::{self, Maintenance, Window};
use super::rule::Rule;
use super::IncidentMetrics;
use crate::notify::Webhook;
use crate::presence::Presence;
use crate::store::StoreError;
use series::{AgentState, CompiledRule};

/// Inputs queued before senders wait.
pub const QUEUE_CAPACITY: usize = 4096;
/// How often the tick runs.
const TICK: Duration = Duration::from_secs(1);

/// What the engine is told.
#[derive(Debug)]
pub enum Input {
    /// A batch as read from an agent (before it is stored; duplicates are late and skipped).
    /// `evaluated` is answered once its samples are evaluated and the incident changes they
    /// caused committed: the batch's ack waits for it, so that a crash cannot lose what an
    /// acknowledged batch opened or resolved (nothing evaluates a stored batch again).
    Samples {
        agent: Arc<str>,
        samples: Vec<Sample>,
        received_ms: i64,
        evaluated: Option<tokio::sync::oneshot::Sender<()>>,
    },
    /// A hello was accepted (the agent's liveness is in [`Presence`]).
    Connected {
        agent: Arc<str>,
        hostname: String,
        at_ms: i64,
    },
    /// The agent's current connection ended (cleanly or not: [`Presence`] knows).
    Disconnected { agent: Arc<str>, at_ms: i64 },
    /// The agent's inventory was stored (host name, tags or CIs may have changed).
    InventoryStored { agent: Arc<str> },
    /// API rules were created or deleted.
    RulesChanged,
    /// Maintenance windows were created or deleted through the API.
    WindowsChanged,
    /// An operator changed an incident (resolved or closed it, perhaps).
    IncidentChanged { id: i64 },
    /// SLAs were created, changed or deleted through the API: every SLA now in force.
    SlasChanged(Arc<Vec<crate::sla::Sla>>),
    /// The SLAs' figures were recomputed: open or resolve their error-budget alerts.
    SlaBurn(Vec<crate::sla::alerts::Burn>),
    /// The agent was revoked: forget it, resolve its incidents.
    Revoked { agent: Arc<str> },
    /// Answers once everything sent before it has been processed (tests, benchmarks).
    Sync(mpsc::Sender<()>),
}

/// The engine thread is gone: the input was not delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the incident engine is not running")]
pub struct EngineGone;

/// Sends inputs to the engine thread. Cheap to clone.
#[derive(Clone)]
pub struct EngineHandle {
    tx: SyncSender<Input>,
    /// Set at the first failed send, so the error is logged once, not per batch.
    gone_logged: Arc<AtomicBool>,
}

impl EngineHandle {
    /// Queues `input`, waiting for room on a blocking thread when the queue is full. A dead
    /// engine is an error (logged at the first one).
    pub async fn send(&self, input: Input) -> Result<(), EngineGone> {
        let result = match self.tx.try_send(input) {
            Ok(()) => Ok(()),
            Err(TrySendError::Disconnected(_)) => Err(EngineGone),
            Err(TrySendError::Full(input)) => {
                let tx = self.tx.clone();
                match tokio::task::spawn_blocking(move || tx.send(input)).await {
                    Ok(Ok(())) => Ok(()),
                    _ => Err(EngineGone),
                }
            }
        };
        if result.is_err() && !self.gone_logged.swap(true, Ordering::Relaxed) {
            tracing::error!("the incident engine is not running: incidents are not evaluated");
        }
        result
    }

    /// Waits until the engine has processed everything queued before this call.
    pub async fn sync(&self) -> Result<(), EngineGone> {
        let (tx, rx) = mpsc::channel();
        self.send(Input::Sync(tx)).await?;
        match tokio::task::spawn_blocking(move || rx.recv_timeout(Duration::from_secs(30))).await {
            Ok(Ok(())) => Ok(()),
            _ => Err(EngineGone),
        }
    }
}

/// The engine thread; [`EngineJoin::join`] waits for it after it drained its queue.
pub struct EngineJoin {
    thread: Option<std::thread::JoinHandle<()>>,
}

impl EngineJoin {
    /// Waits for the thread to finish (every [`EngineHandle`] must be dropped first).
    pub fn join(mut self) {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Everything the engine needs from the configuration.
#[derive(Clone)]
pub struct EngineConfig {
    pub rules: Vec<Rule>,
    pub flap: FlapParams,
    pub reopen_within_ms: i64,
    pub close_after_ms: i64,
    pub webhooks: Arc<Vec<Webhook>>,
    pub maintenance: Vec<Maintenance>,
    /// The SLAs: those with `incident_targets` run the clocks of the incidents they cover
    /// (scope, targets, schedule; the rest have the defaults); each has error-budget alerts
    /// unless `alerts = false`.
    pub slas: Vec<crate::sla::Sla>,
}

/// What the engine shares with the rest of the collector.
pub struct EngineParts {
    pub config: EngineConfig,
    pub metrics: IncidentMetrics,
    /// Called after a commit that queued notifications.
    pub wake: Arc<dyn Fn() + Send + Sync>,
    pub presence: Arc<Presence>,
    pub clock: Clock,
    /// Called on the engine thread when it ends, with `true` when by a panic (the supervisor's
    /// sentinel).
    pub on_exit: Box<dyn FnOnce(bool) + Send>,
    /// The store's WAL checkpointer: the engine's commits leave checkpoints to its thread, as
    /// the batch writer's do. Without it (`None`: unit tests) SQLite checkpoints in the commits,
    /// which at saturation, with the WAL always past 1,000 pages, ran a checkpoint in nearly
    /// every incident commit (~6 % of the collector's CPU).
    pub checkpoints: Option<crate::store::Checkpoints>,
}

/// Starts the engine thread on the store in `data_dir`.
pub fn spawn(
    data_dir: &Path,
    parts: EngineParts,
) -> Result<(EngineHandle, EngineJoin), StoreError> {
    let conn = crate::store::open_connection(data_dir)?;
    if let Some(c) = &parts.checkpoints {
        c.attach(&conn);
    }
    let checkpoints = parts.checkpoints;
    let now = (parts.clock)();
    maintenance::sync_config(&conn, &parts.config.maintenance, now)?;
    let on_exit = parts.on_exit;
    let mut engine = Engine::new(
        conn,
        parts.config,
        parts.metrics,
        parts.wake,
        parts.presence,
        parts.clock,
    )?;
    let (tx, rx) = mpsc::sync_channel(QUEUE_CAPACITY);
    let thread = std::thread::Builder::new()
        .name("vigil-incidents".into())
        .spawn(move || {
            struct Exit(Option<Box<dyn FnOnce(bool) + Send>>);
            impl Drop for Exit {
                fn drop(&mut self) {
                    if let Some(f) = self.0.take() {
                        f(std::thread::panicking());
                    }
                }
            }
            let _exit = Exit(Some(on_exit));
            engine.run(rx, checkpoints.as_ref());
        })
        .map_err(StoreError::Spawn)?;
    Ok((
        EngineHandle {
            tx,
            gone_logged: Arc::new(AtomicBool::new(false)),
        },
        EngineJoin {
            thread: Some(thread),
        },
    ))
}

struct Engine {
    conn: Connection,
    rules: Vec<CompiledRule>,
    by_metric: HashMap<String, Vec<usize>>,
    agents: HashMap<Arc<str>, AgentState>,
    config: EngineConfig,
    metrics: IncidentMetrics,
    wake: Arc<dyn Fn() + Send + Sync>,
    presence: Arc<Presence>,
    clock: Clock,
    windows: Vec<Window>,
    reeval: Vec<housekeeping::Reeval>,
    events: Vec<Event>,
    notified: bool,
    last_refresh_ms: i64,
    last_close_ms: i64,
    last_clocks_ms: i64,
    dues: HashMap<i64, clocks::Dues>,
}

impl Engine {
    fn new(
        conn: Connection,
        config: EngineConfig,
        metrics: IncidentMetrics,
        wake: Arc<dyn Fn() + Send + Sync>,
        presence: Arc<Presence>,
        clock: Clock,
    ) -> Result<Engine, StoreError> {
        let mut engine = Engine {
            conn,
            rules: Vec::new(),
            by_metric: HashMap::new(),
            agents: HashMap::new(),
            config,
            metrics,
            wake,
            presence,
            clock,
            windows: Vec::new(),
            reeval: Vec::new(),
            events: Vec::new(),
            notified: false,
            last_refresh_ms: i64::MIN,
            last_close_ms: i64::MIN,
            last_clocks_ms: i64::MIN,
            dues: HashMap::new(),
        };
        engine.load_rules();
        engine.restore()?;
        Ok(engine)
    }

    fn now(&self) -> i64 {
        (self.clock)()
    }

    fn run(&mut self, rx: Receiver<Input>, checkpoints: Option<&crate::store::Checkpoints>) {
        if vigil_runtime::failpoint::hit("engine-panic") {
            panic!("failpoint engine-panic");
        }
        let tick = i64::try_from(TICK.as_millis()).unwrap_or(1_000);
        let mut next_tick = self.now() + tick;
        loop {
            let wait = (next_tick - self.now()).clamp(0, tick);
            match rx.recv_timeout(Duration::from_millis(wait.unsigned_abs())) {
                Ok(input) => self.handle(input),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            let now = self.now();
            if now >= next_tick {
                self.tick(now);
                next_tick = now + tick;
            }
            // Tell the checkpointer how large the WAL is after what this input committed.
            if let Some(c) = checkpoints {
                c.after_commit();
            }
            // Something was written: wake the notifier, refresh the open-incident gauges.
            if std::mem::take(&mut self.notified) {
                (self.wake)();
                self.count_open();
            }
        }
        let now = self.now();
        self.flush(now, true);
        tracing::debug!("incident engine stopped");
    }

    fn handle(&mut self, input: Input) {
        match input {
            Input::Samples {
                agent,
                samples,
                received_ms,
                evaluated,
            } => {
                // An engine that lags behind the store writer (a test holds that window open).
                if vigil_runtime::failpoint::hit("engine-slow") {
                    std::thread::sleep(Duration::from_millis(300));
                }
                self.samples(&agent, &samples, received_ms);
                if let Some(done) = evaluated {
                    let _ = done.send(());
                }
            }
            Input::Connected {
                agent,
                hostname,
                at_ms,
            } => {
                self.connected(&agent, hostname);
                self.load_host(&agent);
                self.feed_up(&agent, at_ms);
            }
            Input::Disconnected { agent, at_ms } => self.feed_up(&agent, at_ms),
            Input::InventoryStored { agent } => {
                self.load_host(&agent);
                self.attach_cis(&agent);
            }
            Input::RulesChanged => self.load_rules(),
            Input::WindowsChanged => {
                let now = self.now();
                self.refresh_windows(now);
            }
            Input::IncidentChanged { id } => self.incident_changed(id),
            Input::Revoked { agent } => self.forget_agent(&agent),
            Input::SlasChanged(slas) => {
                self.config.slas = slas.to_vec();
                // Due times follow the SLAs' targets and schedules: compute them again.
                self.dues.clear();
                let now = self.now();
                self.check_clocks(now);
            }
            Input::SlaBurn(burns) => {
                let now = self.now();
                self.sla_alerts(&burns, now);
            }
            Input::Sync(done) => {
                let now = self.now();
                self.flush(now, true);
                let _ = done.send(());
            }
        }
    }

    fn count_open(&self) {
        match super::records::open_counts(&self.conn) {
            Ok(counts) => self.metrics.set_open(counts),
            Err(e) => tracing::warn!(error = %e, "cannot count open incidents"),
        }
    }

    fn write_failed(&self, what: &str, e: &rusqlite::Error) {
        self.metrics.write_errors.inc();
        tracing::warn!(error = %e, "incident {what} not written; will retry on the next sample");
    }
}
