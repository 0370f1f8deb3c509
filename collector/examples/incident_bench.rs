//! Incident benchmark (issue 4, "Metrics and latency"): how fast a breach becomes an incident and
//! a webhook while 1,000 simulated agents stream, and what rule evaluation costs the ingest rate.
//!
//! `cargo run --release -p vigil-collector --example incident_bench [-- OPTIONS]`
//! (or `bench/run.sh --incidents`). Options: `--agents N` (1000), `--metrics N` (100 per agent),
//! `--probes N` (300), `--probe-every-ms N` (500), `--sat-secs N` (30), `--sat-interval-ms N`
//! (1), `--rounds N` (3), `--only latency|ingest`, `--keep` (keep the temp dir).
//!
//! Everything runs in this process on loopback, each part on its own runtime so it gets its own
//! threads, as separate processes would: a real collector (`app::start`, runtime threads
//! `vigil-rt`), the load generator (`vigil_agent::simulate`: real mTLS QUIC connections,
//! runtime threads `bench-load`), a probe agent and a webhook receiver (also on `bench-load`).
//!
//! 0. Enrollment: the simulated agents enroll once against a template data dir; every later
//!    collector starts on a fresh copy of it, so each run starts from the same store.
//! 1. Latency: rules on (built-ins, `config/rules.d/example.toml`, and the probe rule
//!    `bench-probe`: `filesystem_used_ratio` above 0.9 for 1 s on host `vigil-probe`), a
//!    `[[webhook]]` (signed) to the local receiver. With the agents streaming every second, the
//!    probe agent (one more enrolled mTLS connection) starts a breach on a fresh filesystem
//!    (`/probe-N`) every `--probe-every-ms` and sends the sample that completes `for` once the
//!    breach is 1 s old. Measured from that sample's timestamp: the incident row visible to a
//!    reader polling the store every 5 ms (committed), its `created_ms` (the engine's decision,
//!    stamped before the commit), and the receiver's arrival time of the `opened` webhook.
//! 2. Ingest cost of rules: a saturation run like `bench/run.sh` phase 3 (32 batches in flight
//!    per agent, as fast as acknowledgements allow), alternately with no rules
//!    (`builtin_rules = false`) and with the rules of step 1, `--rounds` times each (ABBA order):
//!    simulate's acknowledged rate over the streaming phase, and the collector's CPU per million
//!    samples (process CPU minus the `bench-*` threads and the main thread, /proc/self/task).
//!    The agents run with a 1 ms interval rather than `0s`: at `0s` a simulated agent stamps a
//!    burst of batches with the same millisecond, and the engine skips every repeat of a series'
//!    timestamp as late, so most samples would never be evaluated. At 1 ms (far above what an
//!    agent gets acknowledged at saturation, a few batches per second) nearly every sample is
//!    evaluated; the run prints how many were skipped as late.
//!
//! It prints every figure on the way (stderr) and a markdown table at the end (stdout).
//! It never contacts anything but 127.0.0.1 and never writes outside its temp dir.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::runtime::Runtime;
use vigil_agent::client;
use vigil_agent::simulate::{simulate, Report, SimulateOptions};
use vigil_collector::{admin, app, config, store};
use vigil_shared::codec::{self, FrameDecoder};
use vigil_shared::identity::EnrollToken;
use vigil_shared::metric_names as m;
use vigil_shared::proto::{self, Batch, Hello, Message, Sample};

const PROBE_RULE: &str = "bench-probe";
const PROBE_HOST: &str = "vigil-probe";
/// The probe rule's `for`.
const HOLD_MS: i64 = 1_000;
/// How often the store is polled for new probe incidents.
const POLL_EVERY: Duration = Duration::from_millis(5);
const EXAMPLE_RULES: &str = include_str!("../../config/rules.d/example.toml");

/// Set right before this program interrupts simulate itself (SIGINT is how simulate stops).
static STOPPING_SIM: AtomicBool = AtomicBool::new(false);
static WORK_DIR: OnceLock<(PathBuf, bool)> = OnceLock::new();
static START: OnceLock<Instant> = OnceLock::new();

macro_rules! say {
    ($($arg:tt)*) => {
        eprintln!(
            "[{:4.0}s] {}",
            START.get().map_or(0.0, |s| s.elapsed().as_secs_f64()),
            format!($($arg)*)
        )
    };
}

struct Args {
    agents: usize,
    metrics: usize,
    probes: usize,
    probe_every: Duration,
    sat_secs: u64,
    /// simulate's `--interval` in the ingest runs (see the module docs).
    sat_interval: Duration,
    rounds: usize,
    latency: bool,
    ingest: bool,
    keep: bool,
}

fn parse_args() -> Result<Args> {
    let mut a = Args {
        agents: 1_000,
        metrics: 100,
        probes: 300,
        probe_every: Duration::from_millis(500),
        sat_secs: 30,
        sat_interval: Duration::from_millis(1),
        rounds: 3,
        latency: true,
        ingest: true,
        keep: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--keep" {
            a.keep = true;
            continue;
        }
        let value = it.next().ok_or_else(|| anyhow!("{flag} needs a value"))?;
        let num = || {
            value
                .parse::<u64>()
                .with_context(|| format!("{flag} {value}: not a number"))
        };
        match flag.as_str() {
            "--agents" => a.agents = num()? as usize,
            "--metrics" => a.metrics = num()? as usize,
            "--probes" => a.probes = num()? as usize,
            "--probe-every-ms" => a.probe_every = Duration::from_millis(num()?.max(1)),
            "--sat-secs" => a.sat_secs = num()?,
            "--sat-interval-ms" => a.sat_interval = Duration::from_millis(num()?),
            "--rounds" => a.rounds = (num()? as usize).max(1),
            "--only" => match value.as_str() {
                "latency" => a.ingest = false,
                "ingest" => a.latency = false,
                _ => bail!("--only latency|ingest"),
            },
            _ => bail!(
                "unknown option {flag}; options: --agents N --metrics N --probes N \
                 --probe-every-ms N --sat-secs N --sat-interval-ms N --rounds N --only latency|ingest --keep"
            ),
        }
    }
    Ok(a)
}

fn now_ms() -> i64 {
    vigil_runtime::clock::now_ms()
}

// --- CPU accounting --------------------------------------------------------------------------

fn clock_ticks_per_second() -> f64 {
    #[allow(unsafe_code)]
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz > 0 {
        hz as f64
    } else {
        100.0
    }
}

/// utime + stime from a /proc stat line.
fn stat_ticks(stat: &str) -> Option<u64> {
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

#[derive(Clone, Copy, Default)]
struct Cpu {
    /// The collector: the whole process minus the bench threads.
    collector: u64,
    /// The incident engine thread alone.
    engine: u64,
}

fn cpu_now() -> Cpu {
    let read = |p: &Path| std::fs::read_to_string(p).ok();
    let total = read(Path::new("/proc/self/stat"))
        .and_then(|s| stat_ticks(&s))
        .unwrap_or(0);
    let pid = std::process::id().to_string();
    let (mut bench, mut engine) = (0, 0);
    if let Ok(tasks) = std::fs::read_dir("/proc/self/task") {
        for t in tasks.flatten() {
            let comm = read(&t.path().join("comm")).unwrap_or_default();
            let ticks = read(&t.path().join("stat"))
                .and_then(|s| stat_ticks(&s))
                .unwrap_or(0);
            if t.file_name().to_string_lossy() == pid || comm.starts_with("bench-") {
                bench += ticks;
            }
            if comm.trim() == "vigil-incidents" {
                engine += ticks;
            }
        }
    }
    Cpu {
        collector: total.saturating_sub(bench),
        engine,
    }
}

// --- collectors, data dirs, configs ----------------------------------------------------------

struct Bench {
    args: Args,
    work: PathBuf,
    template: PathBuf,
    sims: PathBuf,
    token: String,
    crt: Runtime,
    lrt: Runtime,
    hz: f64,
}

#[derive(Clone, Copy, PartialEq)]
enum Rules {
    /// `builtin_rules = false`, no `[[rule]]`.
    None,
    /// Built-in rules, `config/rules.d/example.toml` and the probe rule.
    All,
}

fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to)?;
    for e in std::fs::read_dir(from)? {
        let e = e?;
        let dest = to.join(e.file_name());
        if e.file_type()?.is_dir() {
            copy_dir(&e.path(), &dest)?;
        } else {
            std::fs::copy(e.path(), &dest)?;
        }
    }
    Ok(())
}

impl Bench {
    fn config(
        &self,
        name: &str,
        data: &Path,
        rules: Rules,
        hook: Option<SocketAddr>,
    ) -> Result<config::CollectorConfig> {
        let mut t = format!("data_dir = \"{}\"\n", data.display());
        if rules == Rules::All {
            t.push_str("include = [\"rules.d/*.toml\"]\n");
        }
        t.push_str("[quic]\nlisten = \"127.0.0.1:0\"\n[http]\nlisten = \"127.0.0.1:0\"\n");
        if rules == Rules::None {
            t.push_str("[incidents]\nbuiltin_rules = false\n");
        }
        if let Some(addr) = hook {
            t.push_str(&format!(
                "[[webhook]]\nname = \"bench\"\nurl = \"http://{addr}/hook\"\nsecret = \"bench-secret\"\n"
            ));
        }
        if rules == Rules::All {
            t.push_str(&format!(
                "[[rule]]\nname = \"{PROBE_RULE}\"\nmetric = \"{}\"\nabove = 0.9\nfor = \"{HOLD_MS}ms\"\n\
                 impact = \"high\"\nurgency = \"high\"\n[rule.scope]\ntype = \"filesystem\"\n\
                 host = \"{PROBE_HOST}\"\n",
                m::FILESYSTEM_USED_RATIO
            ));
        }
        let path = self.work.join(format!("{name}.toml"));
        std::fs::write(&path, t)?;
        config::load(&path).map_err(|e| anyhow!("{e}"))
    }

    /// A fresh copy of the template store (CA and enrolled agents).
    fn fresh_data(&self, name: &str) -> Result<PathBuf> {
        let dir = self.work.join(name);
        copy_dir(&self.template, &dir)?;
        Ok(dir)
    }

    fn start(&self, cfg: &config::CollectorConfig) -> Result<app::Running> {
        self.crt.block_on(app::start(cfg))
    }

    fn stop(&self, running: app::Running) -> Result<()> {
        self.crt.block_on(running.stop())
    }

    fn spawn_sim(
        &self,
        quic: SocketAddr,
        interval: Duration,
    ) -> tokio::task::JoinHandle<Result<Report>> {
        self.lrt.spawn(simulate(SimulateOptions {
            agents: self.args.agents,
            collector: quic.to_string(),
            token: Some(self.token.clone()),
            interval,
            metrics_per_agent: self.args.metrics,
            duration: Duration::from_secs(24 * 3600),
            data_dir: Some(self.sims.clone()),
            window: 32,
        }))
    }

    /// Stops simulate the way a user does (SIGINT): its agents say goodbye after their last acks.
    fn stop_sim(&self, sim: tokio::task::JoinHandle<Result<Report>>) -> Result<Report> {
        STOPPING_SIM.store(true, Ordering::SeqCst);
        #[allow(unsafe_code)]
        // SAFETY: kill(2) on our own pid; tokio's handler (installed by simulate) catches it.
        unsafe {
            libc::kill(libc::getpid(), libc::SIGINT);
        }
        self.lrt.block_on(sim).context("simulate panicked")?
    }

    /// Waits until the collector counts `n` connected agents; the seconds it took.
    fn wait_connected(&self, http: SocketAddr, n: usize) -> Result<f64> {
        let t0 = Instant::now();
        let want = n as f64;
        loop {
            let got = self
                .lrt
                .block_on(metric(http, "vigil_agents_connected"))
                .unwrap_or(0.0);
            if got >= want {
                return Ok(t0.elapsed().as_secs_f64());
            }
            if t0.elapsed() > Duration::from_secs(600) {
                bail!("only {got} of {n} agents connected after 600 s");
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

/// GETs `path` over HTTP/1.0 (the connection closes after the answer).
async fn http_get(addr: SocketAddr, path: &str) -> Result<String> {
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await?;
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(60), s.read_to_end(&mut out)).await??;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// Sum of the samples of `name` (any labels) on the collector's /metrics.
async fn metric(http: SocketAddr, name: &str) -> Result<f64> {
    let text = http_get(http, "/metrics").await?;
    Ok(metric_sum(&text, name))
}

fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

// --- the probe agent, the receiver, the store poller -----------------------------------------

fn probe_sample(k: usize, ts_ms: i64) -> Sample {
    Sample {
        ts_ms,
        name: m::FILESYSTEM_USED_RATIO.to_string(),
        // The agent's label order.
        labels: vec![
            ("device".into(), format!("/dev/probe{k}")),
            ("mountpoint".into(), format!("/probe-{k}")),
        ],
        value: 0.95,
    }
}

/// Enrolls and connects the probe agent, then every `every` starts a breach on a fresh
/// filesystem and completes `for` on those whose breach is `HOLD_MS` old. Returns, per probe
/// key, the timestamp of the sample that completed `for`.
async fn run_probe(
    addr: SocketAddr,
    token: EnrollToken,
    count: usize,
    every: Duration,
) -> Result<HashMap<String, i64>> {
    let endpoint = client::client_endpoint(addr)?;
    let identity = client::enroll(&endpoint, addr, &token, PROBE_HOST).await?;
    let hello = Hello {
        agent_id: identity.agent_id.clone(),
        hostname: PROBE_HOST.to_string(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        capabilities: proto::CAPABILITIES.iter().map(|c| c.to_string()).collect(),
        interval_ms: 1_000,
    };
    let session = client::open_session(&endpoint, identity.client_config()?, addr, hello).await?;
    let mut seq = session.welcome.last_seq.unwrap_or(0);
    let (mut send, mut recv) = session.conn.open_bi().await?;
    let reader = tokio::spawn(async move {
        let mut dec = FrameDecoder::new(64 * 1024);
        while let Ok(Some(_)) = client::read_message(&mut recv, &mut dec).await {}
    });
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut pending = std::collections::VecDeque::new();
    let mut completed = HashMap::new();
    let mut started = 0;
    while completed.len() < count {
        tick.tick().await;
        let now = now_ms();
        let mut samples = Vec::new();
        while let Some(&(k, t0)) = pending.front() {
            if now - t0 < HOLD_MS {
                break;
            }
            samples.push(probe_sample(k, now));
            completed.insert(format!("/probe-{k}"), now);
            pending.pop_front();
        }
        if started < count {
            samples.push(probe_sample(started, now));
            pending.push_back((started, now));
            started += 1;
        }
        seq += 1;
        let bytes = codec::encode(&Message::Batch(Batch { seq, samples }))?;
        client::write_bytes(&mut send, &bytes).await?;
    }
    let _ = send.finish();
    tokio::time::sleep(Duration::from_millis(500)).await;
    session.goodbye("probe done").await;
    reader.abort();
    Ok(completed)
}

type Received = Arc<Mutex<Vec<(i64, Bytes)>>>;

async fn receive(State(log): State<Received>, body: Bytes) -> StatusCode {
    let at = now_ms();
    if let Ok(mut log) = log.lock() {
        log.push((at, body));
    }
    StatusCode::NO_CONTENT
}

/// `(ci key, created_ms, seen_ms)` of every probe incident, as a reader of the store sees them.
fn poll_store(db: PathBuf, stop: Arc<AtomicBool>) -> Result<HashMap<String, (i64, i64)>> {
    let conn = rusqlite::Connection::open(db)?;
    conn.busy_timeout(Duration::from_secs(5))?;
    let mut stmt = conn.prepare(
        "SELECT id, ci_key, created_ms FROM incidents WHERE id > ?1 AND rule = ?2 ORDER BY id",
    )?;
    let mut last = 0i64;
    let mut seen = HashMap::new();
    while !stop.load(Ordering::SeqCst) {
        let rows: Vec<(i64, String, i64)> = stmt
            .query_map(rusqlite::params![last, PROBE_RULE], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })?
            .collect::<rusqlite::Result<_>>()?;
        let at = now_ms();
        for (id, key, created) in rows {
            last = last.max(id);
            seen.entry(key).or_insert((created, at));
        }
        std::thread::sleep(POLL_EVERY);
    }
    Ok(seen)
}

// --- statistics ----------------------------------------------------------------------------------

struct Dist {
    n: usize,
    p50: i64,
    p90: i64,
    p99: i64,
    max: i64,
}

fn dist(mut v: Vec<i64>) -> Option<Dist> {
    if v.is_empty() {
        return None;
    }
    v.sort_unstable();
    let rank = |p: f64| v[((p * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1];
    Some(Dist {
        n: v.len(),
        p50: rank(0.50),
        p90: rank(0.90),
        p99: rank(0.99),
        max: v[v.len() - 1],
    })
}

impl std::fmt::Display for Dist {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "n {}, p50 {} ms, p90 {} ms, p99 {} ms, max {} ms",
            self.n, self.p50, self.p90, self.p99, self.max
        )
    }
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn thousands(x: f64) -> String {
    let s = format!("{:.0}", x.max(0.0));
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "pass"
    } else {
        "**miss**"
    }
}

// --- phases ------------------------------------------------------------------------------------

/// Phase 0: every simulated agent enrolls against the template store.
fn enroll(b: &Bench) -> Result<()> {
    let cfg = b.config("enroll", &b.template, Rules::None, None)?;
    let running = b.start(&cfg)?;
    say!(
        "enrollment: {} simulated agents enroll once (identities kept for every run)",
        b.args.agents
    );
    let sim = b.spawn_sim(running.quic_addr, Duration::from_secs(10));
    let secs = b.wait_connected(running.http_addr, b.args.agents)?;
    let report = b.stop_sim(sim)?;
    say!(
        "enrollment: all connected after {secs:.1} s; simulate errors {}",
        report.errors
    );
    b.stop(running)
}

struct Latency {
    committed: Option<Dist>,
    created: Option<Dist>,
    webhook: Option<Dist>,
    probes: usize,
    lost_commit: usize,
    lost_hook: usize,
    evaluations: f64,
    ingest_rate: f64,
}

fn latency(b: &Bench) -> Result<Latency> {
    let data = b.fresh_data("latency")?;
    let received: Received = Arc::new(Mutex::new(Vec::new()));
    let listener = b
        .lrt
        .block_on(tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)))?;
    let hook_addr = listener.local_addr()?;
    let router = axum::Router::new()
        .route("/hook", axum::routing::post(receive))
        .with_state(received.clone());
    let receiver = b
        .lrt
        .spawn(async move { axum::serve(listener, router).await });
    let cfg = b.config("latency", &data, Rules::All, Some(hook_addr))?;
    let running = b.start(&cfg)?;
    let sim = b.spawn_sim(running.quic_addr, Duration::from_secs(1));
    let secs = b.wait_connected(running.http_addr, b.args.agents)?;
    say!(
        "latency: {} agents reconnected in {secs:.1} s, streaming {} metrics every 1 s; 10 s warm-up",
        b.args.agents,
        b.args.metrics
    );
    std::thread::sleep(Duration::from_secs(10));

    let stop_poll = Arc::new(AtomicBool::new(false));
    let poller = {
        let (db, stop) = (store::db_path(&data)?, stop_poll.clone());
        std::thread::Builder::new()
            .name("bench-poll".into())
            .spawn(move || poll_store(db, stop))?
    };
    say!(
        "latency: probe agent enrolls, then completes `for` on {} fresh filesystems, one every {} ms",
        b.args.probes,
        b.args.probe_every.as_millis()
    );
    let samples0 = b
        .lrt
        .block_on(metric(running.http_addr, "vigil_ingest_samples_total"))
        .unwrap_or(0.0);
    let t0 = Instant::now();
    let token: EnrollToken = b.token.parse().context("token")?;
    let sent = b.lrt.block_on(run_probe(
        running.quic_addr,
        token,
        b.args.probes,
        b.args.probe_every,
    ))?;
    let probe_secs = t0.elapsed().as_secs_f64();
    let samples1 = b
        .lrt
        .block_on(metric(running.http_addr, "vigil_ingest_samples_total"))
        .unwrap_or(0.0);
    // Let the last incidents commit and their webhooks arrive.
    let deadline = Instant::now() + Duration::from_secs(15);
    let hooks_for = |received: &Received| -> HashMap<String, i64> {
        let mut out = HashMap::new();
        let log = received.lock().map(|l| l.clone()).unwrap_or_default();
        for (at, body) in log {
            let Ok(v) = serde_json::from_slice::<serde_json::Value>(&body) else {
                continue;
            };
            let inc = &v["incident"];
            if v["event"] == "opened" && inc["rule"] == PROBE_RULE {
                if let Some(key) = inc["ci"]["key"].as_str() {
                    out.entry(key.to_string()).or_insert(at);
                }
            }
        }
        out
    };
    while Instant::now() < deadline && hooks_for(&received).len() < sent.len() {
        std::thread::sleep(Duration::from_millis(100));
    }
    stop_poll.store(true, Ordering::SeqCst);
    let seen = poller
        .join()
        .map_err(|_| anyhow!("store poller panicked"))??;
    let hooks = hooks_for(&received);
    let text = b.lrt.block_on(http_get(running.http_addr, "/metrics"))?;
    let evaluations = metric_sum(&text, "vigil_rule_evaluations_total");
    let report = b.stop_sim(sim)?;
    b.stop(running)?;
    receiver.abort();
    let _ = std::fs::remove_dir_all(&data);

    let (mut committed, mut created, mut webhook) = (Vec::new(), Vec::new(), Vec::new());
    for (key, ts) in &sent {
        if let Some((c, s)) = seen.get(key) {
            committed.push(s - ts);
            created.push(c - ts);
        }
        if let Some(at) = hooks.get(key) {
            webhook.push(at - ts);
        }
    }
    let l = Latency {
        probes: sent.len(),
        lost_commit: sent.len() - committed.len(),
        lost_hook: sent.len() - webhook.len(),
        committed: dist(committed),
        created: dist(created),
        webhook: dist(webhook),
        evaluations,
        ingest_rate: (samples1 - samples0) / probe_secs.max(1e-9),
    };
    let show = |d: &Option<Dist>| d.as_ref().map_or("none".to_string(), |d| d.to_string());
    say!(
        "latency: sample -> incident committed (store poll): {}",
        show(&l.committed)
    );
    say!(
        "latency: sample -> incident created_ms (engine):    {}",
        show(&l.created)
    );
    say!(
        "latency: sample -> webhook received:                {}",
        show(&l.webhook)
    );
    say!(
        "latency: {} probes, {} without an incident, {} without a webhook; ingest during probes {} samples/s; \
         rule evaluations {}; simulate errors {}",
        l.probes,
        l.lost_commit,
        l.lost_hook,
        thousands(l.ingest_rate),
        thousands(l.evaluations),
        report.errors
    );
    Ok(l)
}

struct IngestRun {
    rate: f64,
    cpu_per_m: f64,
    cores: f64,
    engine_cores: f64,
    evaluations: f64,
    late: f64,
}

fn ingest_run(b: &Bench, rules: Rules, n: usize) -> Result<IngestRun> {
    let label = if rules == Rules::All {
        "rules"
    } else {
        "no rules"
    };
    let data = b.fresh_data(&format!("ingest-{n}"))?;
    let cfg = b.config(&format!("ingest-{n}"), &data, rules, None)?;
    let running = b.start(&cfg)?;
    let sim = b.spawn_sim(running.quic_addr, b.args.sat_interval);
    let ramp = b.wait_connected(running.http_addr, b.args.agents)?;
    let (c0, t0) = (cpu_now(), Instant::now());
    std::thread::sleep(Duration::from_secs(b.args.sat_secs));
    let (c1, wall) = (cpu_now(), t0.elapsed().as_secs_f64());
    let report = b.stop_sim(sim)?;
    let text = b.lrt.block_on(http_get(running.http_addr, "/metrics"))?;
    b.stop(running)?;
    let _ = std::fs::remove_dir_all(&data);
    let cpu = (c1.collector - c0.collector) as f64 / b.hz;
    let rate = report.load_acked_per_second;
    let r = IngestRun {
        rate,
        cpu_per_m: cpu / (rate * wall / 1e6).max(1e-9),
        cores: cpu / wall,
        engine_cores: (c1.engine.saturating_sub(c0.engine)) as f64 / b.hz / wall,
        evaluations: metric_sum(&text, "vigil_rule_evaluations_total"),
        late: metric_sum(&text, "vigil_rule_late_samples_total"),
    };
    say!(
        "ingest {n} ({label}): ramp {ramp:.1} s, {} samples/s acknowledged over {:.1} s; collector {:.2} cores, \
         {:.2} s CPU per million samples, engine thread {:.2} cores; {} rule evaluations, {} skipped as late; \
         simulate errors {}",
        thousands(r.rate),
        report.load_seconds,
        r.cores,
        r.cpu_per_m,
        r.engine_cores,
        thousands(r.evaluations),
        thousands(r.late),
        report.errors
    );
    Ok(r)
}

fn main() -> Result<()> {
    START.get_or_init(Instant::now);
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("VIGIL_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = parse_args()?;
    let runtime = |name: &str| {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .thread_name(name)
            // Idle blocking threads stay, so their CPU stays attributed to their side.
            .thread_keep_alive(Duration::from_secs(24 * 3600))
            .build()
    };
    let temp = tempfile::Builder::new()
        .prefix("vigil-incident-bench.")
        .tempdir()?;
    let work = temp.path().to_path_buf();
    WORK_DIR.get_or_init(|| (work.clone(), args.keep));
    let template = work.join("template");
    let token = {
        // The store first, then the CA (as a collector's first start makes them); a token pins
        // the CA, which admin commands never create.
        let db = store::Db::open(&template)?;
        vigil_collector::ca::load_or_create_ca(&template, std::time::SystemTime::now())?;
        admin::create_enroll_token(&template, &db, Duration::from_secs(6 * 3600), false)?
            .to_string()
    };
    std::fs::create_dir_all(work.join("rules.d"))?;
    std::fs::write(work.join("rules.d/example.toml"), EXAMPLE_RULES)?;
    let b = Bench {
        sims: work.join("sims"),
        template,
        work,
        token,
        crt: runtime("vigil-rt")?,
        lrt: runtime("bench-load")?,
        hz: clock_ticks_per_second(),
        args,
    };
    // A Ctrl-C from the user (not our own SIGINT to simulate) ends the benchmark.
    b.lrt.spawn(async {
        while tokio::signal::ctrl_c().await.is_ok() {
            if !STOPPING_SIM.swap(false, Ordering::SeqCst) {
                eprintln!("incident_bench: interrupted");
                if let Some((dir, false)) = WORK_DIR.get() {
                    let _ = std::fs::remove_dir_all(dir);
                }
                std::process::exit(130);
            }
        }
    });
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let load_before = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    say!(
        "incident benchmark: {cores} cores, load average {}; work dir {}",
        load_before.split(' ').take(3).collect::<Vec<_>>().join(" "),
        b.work.display()
    );
    enroll(&b)?;

    let lat = if b.args.latency {
        Some(latency(&b)?)
    } else {
        None
    };

    let mut with = Vec::new();
    let mut without = Vec::new();
    if b.args.ingest {
        say!(
            "ingest: saturation (--interval {} ms, window 32), {} s each, {} rounds, order ABBA",
            b.args.sat_interval.as_millis(),
            b.args.sat_secs,
            b.args.rounds
        );
        let mut n = 0;
        for round in 0..b.args.rounds {
            let order = if round % 2 == 0 {
                [Rules::None, Rules::All]
            } else {
                [Rules::All, Rules::None]
            };
            for rules in order {
                n += 1;
                let r = ingest_run(&b, rules, n)?;
                if rules == Rules::All {
                    with.push(r);
                } else {
                    without.push(r);
                }
            }
        }
    }
    let load_after = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();

    // --- report ----------------------------------------------------------------------------------
    let a = &b.args;
    println!();
    println!(
        "## Incident benchmark ({cores} cores, load average {} before, {} after)",
        load_before.split(' ').take(3).collect::<Vec<_>>().join(" "),
        load_after.split(' ').take(3).collect::<Vec<_>>().join(" ")
    );
    println!();
    println!("`cargo run --release -p vigil-collector --example incident_bench` (or `bench/run.sh --incidents`); collector, load generator, probe and receiver in one process, each on its own threads, on the same {cores} cores.");
    println!();
    println!("| figure | measured | target | result |");
    println!("|---|---|---|---|");
    if let Some(l) = &lat {
        let row = |what: &str, d: &Option<Dist>, target_ms: i64, lost: usize| {
            match d {
            Some(d) => println!(
                "| {what} | p50 {} ms, p99 {} ms (p90 {}, max {}; {} probes{}) | p99 <= {} s | {} |",
                d.p50,
                d.p99,
                d.p90,
                d.max,
                d.n,
                if lost > 0 { format!(", {lost} missing") } else { String::new() },
                target_ms / 1000,
                verdict(d.p99 <= target_ms && lost == 0)
            ),
            None => println!("| {what} | no measurement | p99 <= {} s | **miss** |", target_ms / 1000),
        }
        };
        let load = format!(
            "{} agents x {} metrics at 1 s",
            thousands(a.agents as f64),
            a.metrics
        );
        row(
            &format!("sample completing `for` -> incident committed ({load})"),
            &l.committed,
            1_000,
            l.lost_commit,
        );
        row(
            &format!("sample completing `for` -> webhook received by a local receiver ({load})"),
            &l.webhook,
            2_000,
            l.lost_hook,
        );
        if let Some(d) = &l.created {
            println!(
                "| sample completing `for` -> incident `created_ms` (engine decision, before the commit) | p50 {} ms, p99 {} ms | - | - |",
                d.p50, d.p99
            );
        }
    }
    if !with.is_empty() && !without.is_empty() {
        let rate = |v: &[IngestRun]| median(&v.iter().map(|r| r.rate).collect::<Vec<_>>());
        let cpu = |v: &[IngestRun]| median(&v.iter().map(|r| r.cpu_per_m).collect::<Vec<_>>());
        let eng = |v: &[IngestRun]| median(&v.iter().map(|r| r.engine_cores).collect::<Vec<_>>());
        let list = |v: &[IngestRun]| {
            v.iter()
                .map(|r| format!("{:.0}k", r.rate / 1e3))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let (r0, r1) = (rate(&without), rate(&with));
        let change = (r1 - r0) / r0 * 100.0;
        println!(
            "| ingest at saturation, no rules (`builtin_rules = false`) | {} samples/s acknowledged (median of {}: {}) | - | - |",
            thousands(r0),
            without.len(),
            list(&without)
        );
        println!(
            "| ingest at saturation, built-in + example rules + probe rule | {} samples/s acknowledged (median of {}: {}) | - | - |",
            thousands(r1),
            with.len(),
            list(&with)
        );
        println!(
            "| ingest rate change from rule evaluation | {change:+.1} % | >= -15 % | {} |",
            verdict(change >= -15.0)
        );
        println!(
            "| collector CPU per million samples at saturation, no rules / rules | {:.2} s / {:.2} s ({:+.1} %); engine thread {:.2} / {:.2} cores | - | - |",
            cpu(&without),
            cpu(&with),
            (cpu(&with) - cpu(&without)) / cpu(&without) * 100.0,
            eng(&without),
            eng(&with)
        );
    }
    if let Some(l) = &lat {
        println!();
        println!(
            "Latency: {} probes, one every {} ms, each on a fresh filesystem of host `{PROBE_HOST}`, rule `filesystem_used_ratio > 0.9 for 1s`; \
             measured from the timestamp of the sample that completes `for`. Committed = first seen by a reader polling the store every {} ms; \
             webhook = arrival at an HTTP receiver in this process (signed JSON v1). Ingest during the probes {} samples/s; {} rule evaluations in the run.",
            l.probes,
            a.probe_every.as_millis(),
            POLL_EVERY.as_millis(),
            thousands(l.ingest_rate),
            thousands(l.evaluations)
        );
    }
    if !with.is_empty() {
        let ev = median(&with.iter().map(|r| r.evaluations).collect::<Vec<_>>());
        let late = median(&with.iter().map(|r| r.late).collect::<Vec<_>>());
        println!();
        println!(
            "Ingest: {} agents x {} metrics, simulate `--interval {}ms` (see the example's docs), 32 batches in flight each, {} s per run, \
             runs alternated (ABBA), medians; each run on a fresh copy of the same store. Per rules run (median): {} rule evaluations, \
             {} samples skipped as late (same timestamp as the series' previous one).",
            thousands(a.agents as f64),
            a.metrics,
            a.sat_interval.as_millis(),
            a.sat_secs,
            thousands(ev),
            thousands(late)
        );
    }
    if b.args.keep {
        let kept = temp.keep();
        say!("kept {}", kept.display());
    }
    Ok(())
}
