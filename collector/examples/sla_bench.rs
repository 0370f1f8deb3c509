//! SLA benchmark (issue "Service levels", targets): what a year's report costs for an SLA over
//! 1,000 hosts with 100,000 incidents in the store, and what keeping 100 SLAs current on
//! `/metrics` costs the collector.
//!
//! `cargo run --release -p vigil-collector --example sla_bench [-- OPTIONS]`
//! (or `bench/run.sh --sla`). Options: `--hosts N` (1000), `--incidents N` (100000),
//! `--runs N` (11, reports per measurement), `--slas N` (100), `--rounds N` (5, isolated
//! refreshes), `--stream-rounds N` (2, ABBA pairs), `--stream-secs N` (120),
//! `--stream-interval-ms N` (10000, the agent's default interval), `--metrics N` (100 per
//! agent), `--extra-cis N` (0: package CIs per host besides the host and its two filesystems),
//! `--seed N`, `--only report|refresh|stream` (repeatable), `--no-http`, `--no-stream`, `--keep`
//! (keep the temp dir).
//!
//! 0. The store: a template data dir opened through `store::Db::open` (the store's migrations),
//!    a CA and an enrollment token as a collector's first start makes them. Unless `--no-stream`,
//!    the 1,000 simulated agents (`vigil_agent::simulate`: real mTLS QUIC connections) enroll
//!    once against a collector on it, so that the hosts of the history are the agents that
//!    stream later; with `--no-stream` the agents are rows written directly. Then, in one
//!    transaction: a host CI per agent (tags `fleet=bench`, `role` one of 10, `dc` one of 4,
//!    `env`), two filesystem CIs each; 5 % of the hosts joined during the year, 1 % were
//!    retired. 100,000 incidents spread over the last 365 days, written through
//!    `incidents::lifecycle::Lifecycle` (what the engine writes: rows, timeline, reopening) in
//!    time order: host-unreachable (P1, 15 %), check-down (P2, on one of two checks per host,
//!    15 %), a P2 rule `service-latency` (10 %) -- the three the default `down_when` counts --
//!    and filesystem-full, memory-full (P3), inventory-stale (P4), cpu-busy (P5); down-type
//!    outages last 1-20 min (85 %) or 20 min-4 h, the others up to 12 h; 6 % of the down-type
//!    ones reopen 2-30 min after their resolution; those still running at the end stay open.
//!    What the ingest writer keeps for coverage and occurrences is written too: `agent_data`
//!    (each agent's stretches of data, broken while its host was unreachable and at 8
//!    collector restarts of 1-3 min) and `check_runs` (per agent, check and UTC day, a run
//!    every 10 s, failed while the check was down). And 10 maintenance windows (weekly,
//!    daily, one-off, one deleted afterwards).
//! 1. Report: the SLA `fleet` (scope `tag = "fleet=bench"`: every host, its filesystems and
//!    checks; default `down_when`, combine "all") from now - 365 d to now through
//!    `sla::report_with_days`, the function `GET /api/v1/slas/{name}/report` calls, on a
//!    fresh `store::Db::open` each run (its pragmas and migrations; the file is in the page
//!    cache), alternately cold (`sla::cache::forget`: the first report after a start reads
//!    everything) and warm (after `churn`: what a running collector writes between two reads,
//!    today's check executions of every agent and 20 incidents, re-read through the cache's
//!    change log). Also timed, warm: opening it, `sla::load::timelines` alone (the store
//!    read), `sla::occurrences::count` (the check runs), one `sla::compute` of the year and
//!    `sla::report` (no daily series), so that the split between reading and computing shows.
//!    Unless `--no-http`, the same report through the real endpoint of an in-process collector
//!    (`app::start`, no agents connected, a viewer token; its cache warm after the first run).
//! 2. Refresh: 100 SLAs (scopes by role, data centre, host glob, the whole fleet, host CIs only;
//!    rolling 1 d / 7 d / 30 d / 90 d and calendar week / month / quarter windows in UTC,
//!    Europe/Berlin and America/New_York; service hours on a third, a quorum on some,
//!    `degraded_when` on a quarter) through `sla::metrics::SlaMetrics::refresh`, what the
//!    collector's "SLA figures" task runs every `REFRESH_EVERY` (30 s; within
//!    `REFRESH_AFTER_CHANGE`, 5 s, of an incident change), on one connection kept from round to
//!    round as the task keeps one (its opening counted in the first), alternately cold and warm (as for the report). CPU time of the refreshing thread (`CLOCK_THREAD_CPUTIME_ID`), and
//!    per SLA what its `sla::reports` costs, with the store read (`load::timelines`) apart.
//! 3. Streaming: the collector in this process (`app::start`, runtime threads `vigil-rt`) on a
//!    fresh copy of the store, 1,000 simulated agents x 100 metrics streaming every 10 s
//!    (runtime threads `bench-load`), alternately without and with the 100 SLAs in its
//!    configuration (ABBA, `--stream-rounds` pairs, built-in rules off in both so that no
//!    incident churns): the collector's CPU over `--stream-secs` (process CPU minus the
//!    `bench-*` threads and the main thread, /proc/self/task), medians. After each run without
//!    SLAs, while the agents still stream, three refreshes of the 100 SLAs on this thread: the
//!    refresh's CPU under load. In each run with SLAs, the collector's own count of what its SLA
//!    task spent (`vigil_sla_refresh_cpu_seconds_total` on `/metrics`, before and after): the
//!    target's figure, since the ABBA difference cannot resolve a share this small.
//!
//! It prints every figure on the way (stderr) and a markdown table at the end (stdout).
//! It never contacts anything but 127.0.0.1 and never writes outside its temp dir.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use rusqlite::params;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::runtime::Runtime;
use vigil_agent::simulate::{simulate, Report as SimReport, SimulateOptions};
use vigil_collector::incidents::lifecycle::Lifecycle;
use vigil_collector::incidents::maintenance::{self, Recurrence};
use vigil_collector::incidents::records::{Opened, Opening, Origin};
use vigil_collector::incidents::rule::Level;
use vigil_collector::incidents::scope::Scope;
use vigil_collector::sla::metrics::{
    SlaMetrics, BURN_WINDOWS, REFRESH_AFTER_CHANGE, REFRESH_EVERY,
};
use vigil_collector::sla::{self, Sla, Span};
use vigil_collector::{admin, app, config, store};
use vigil_runtime::clock::thread_cpu;

const MIN: i64 = 60_000;
const HOUR: i64 = 60 * MIN;
const DAY: i64 = 24 * HOUR;
/// `[incidents] reopen_within` the history is written with (the default).
const REOPEN_WITHIN: i64 = HOUR;
/// Checks run every 10 s (the agent's default interval).
const CHECK_EVERY: i64 = 10_000;
const ROLES: [&str; 10] = [
    "web", "api", "db", "cache", "queue", "search", "batch", "proxy", "auth", "storage",
];
const CHECKS: [&str; 4] = ["http", "tls-cert", "postgres", "redis"];
/// Refreshes of the 100 SLAs measured after each streaming run without them.
const REFRESHES_UNDER_LOAD: usize = 3;

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
    hosts: usize,
    incidents: usize,
    runs: usize,
    slas: usize,
    rounds: usize,
    stream_rounds: usize,
    stream_secs: u64,
    stream_interval: Duration,
    metrics: usize,
    extra_cis: usize,
    seed: u64,
    report: bool,
    refresh: bool,
    stream: bool,
    http: bool,
    keep: bool,
}

fn parse_args() -> Result<Args> {
    let mut a = Args {
        hosts: 1_000,
        incidents: 100_000,
        runs: 11,
        slas: 100,
        rounds: 5,
        stream_rounds: 2,
        stream_secs: 120,
        stream_interval: Duration::from_secs(10),
        metrics: 100,
        extra_cis: 0,
        seed: 1,
        report: true,
        refresh: true,
        stream: true,
        http: true,
        keep: false,
    };
    let mut only: Vec<String> = Vec::new();
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        match flag.as_str() {
            "--keep" => {
                a.keep = true;
                continue;
            }
            "--no-http" => {
                a.http = false;
                continue;
            }
            "--no-stream" => {
                a.stream = false;
                continue;
            }
            _ => {}
        }
        let value = it.next().ok_or_else(|| anyhow!("{flag} needs a value"))?;
        let num = || {
            value
                .parse::<u64>()
                .with_context(|| format!("{flag} {value}: not a number"))
        };
        match flag.as_str() {
            "--hosts" => a.hosts = (num()? as usize).max(1),
            "--incidents" => a.incidents = num()? as usize,
            "--runs" => a.runs = (num()? as usize).max(1),
            "--slas" => a.slas = (num()? as usize).max(1),
            "--rounds" => a.rounds = (num()? as usize).max(1),
            "--stream-rounds" => a.stream_rounds = (num()? as usize).max(1),
            "--stream-secs" => a.stream_secs = num()?.max(1),
            "--stream-interval-ms" => a.stream_interval = Duration::from_millis(num()?.max(1)),
            "--metrics" => a.metrics = num()? as usize,
            "--extra-cis" => a.extra_cis = num()? as usize,
            "--seed" => a.seed = num()?,
            "--only" => match value.as_str() {
                "report" | "refresh" | "stream" => only.push(value.clone()),
                _ => bail!("--only report|refresh|stream"),
            },
            _ => bail!(
                "unknown option {flag}; options: --hosts N --incidents N --runs N --slas N \
                 --rounds N --stream-rounds N --stream-secs N --stream-interval-ms N --metrics N \
                 --extra-cis N --seed N --only report|refresh|stream --no-http --no-stream --keep"
            ),
        }
    }
    if !only.is_empty() {
        a.report = only.iter().any(|o| o == "report");
        a.refresh = only.iter().any(|o| o == "refresh");
        a.stream &= only.iter().any(|o| o == "stream");
    }
    Ok(a)
}

fn now_ms() -> i64 {
    vigil_runtime::clock::now_ms()
}

// --- a small deterministic generator (splitmix64) ---------------------------------------------

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }

    /// Uniform in [lo, hi).
    fn range(&mut self, lo: i64, hi: i64) -> i64 {
        if hi <= lo {
            return lo;
        }
        lo + (self.unit() * (hi - lo) as f64) as i64
    }

    /// Log-uniform in [lo, hi): as many outages of 1-2 min as of 10-20 min.
    fn log_range(&mut self, lo: i64, hi: i64) -> i64 {
        let (l, h) = ((lo.max(1) as f64).ln(), (hi.max(lo + 1) as f64).ln());
        (l + (h - l) * self.unit()).exp() as i64
    }
}

// --- CPU accounting ----------------------------------------------------------------------------

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

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

/// The collector's CPU ticks: the whole process minus the `bench-*` threads and the main thread.
fn collector_ticks() -> u64 {
    let read = |p: &Path| std::fs::read_to_string(p).ok();
    let total = read(Path::new("/proc/self/stat"))
        .and_then(|s| stat_ticks(&s))
        .unwrap_or(0);
    let pid = std::process::id().to_string();
    let mut bench = 0;
    if let Ok(tasks) = std::fs::read_dir("/proc/self/task") {
        for t in tasks.flatten() {
            let comm = read(&t.path().join("comm")).unwrap_or_default();
            if t.file_name().to_string_lossy() == pid || comm.starts_with("bench-") {
                bench += read(&t.path().join("stat"))
                    .and_then(|s| stat_ticks(&s))
                    .unwrap_or(0);
            }
        }
    }
    total.saturating_sub(bench)
}

// --- the store ---------------------------------------------------------------------------------

/// The store opened as the collector opens it (`store::Db::open`: its pragmas, migrations).
fn open_store(dir: &Path) -> Result<store::Db> {
    Ok(store::Db::open(dir)?)
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

fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.metadata().ok())
                .filter(|m| m.is_file())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

// --- the history -------------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq)]
enum Unit {
    Host,
    Filesystem,
    Check,
}

struct RuleMix {
    rule: &'static str,
    share: f64,
    impact: Level,
    urgency: Level,
    unit: Unit,
    /// `for`: the incident opens this long after the first breach.
    hold_ms: i64,
    metric: &'static str,
    op: &'static str,
    threshold: f64,
    value: f64,
    /// Counted by the default `down_when` (host-unreachable, check-down, P1-P2).
    down: bool,
    title: &'static str,
}

const MIX: [RuleMix; 7] = [
    RuleMix {
        rule: "host-unreachable",
        share: 0.15,
        impact: Level::High,
        urgency: Level::High,
        unit: Unit::Host,
        hold_ms: 30_000,
        metric: "up",
        op: "<",
        threshold: 1.0,
        value: 0.0,
        down: true,
        title: "host unreachable",
    },
    RuleMix {
        rule: "check-down",
        share: 0.15,
        impact: Level::Medium,
        urgency: Level::High,
        unit: Unit::Check,
        hold_ms: 30_000,
        metric: "check_up",
        op: "<",
        threshold: 1.0,
        value: 0.0,
        down: true,
        title: "check down",
    },
    RuleMix {
        rule: "service-latency",
        share: 0.10,
        impact: Level::High,
        urgency: Level::Medium,
        unit: Unit::Host,
        hold_ms: 2 * MIN,
        metric: "http_latency_seconds",
        op: ">",
        threshold: 2.0,
        value: 3.1,
        down: true,
        title: "service latency above 2 s",
    },
    RuleMix {
        rule: "filesystem-full",
        share: 0.25,
        impact: Level::Medium,
        urgency: Level::Medium,
        unit: Unit::Filesystem,
        hold_ms: 5 * MIN,
        metric: "filesystem_used_ratio",
        op: ">",
        threshold: 0.9,
        value: 0.93,
        down: false,
        title: "filesystem almost full",
    },
    RuleMix {
        rule: "memory-full",
        share: 0.15,
        impact: Level::Medium,
        urgency: Level::Medium,
        unit: Unit::Host,
        hold_ms: 5 * MIN,
        metric: "memory_used_ratio",
        op: ">",
        threshold: 0.95,
        value: 0.97,
        down: false,
        title: "memory almost full",
    },
    RuleMix {
        rule: "inventory-stale",
        share: 0.10,
        impact: Level::Low,
        urgency: Level::Medium,
        unit: Unit::Host,
        hold_ms: 0,
        metric: "inventory_stale",
        op: ">",
        threshold: 0.5,
        value: 1.0,
        down: false,
        title: "inventory stale",
    },
    RuleMix {
        rule: "cpu-busy",
        share: 0.10,
        impact: Level::Low,
        urgency: Level::Low,
        unit: Unit::Host,
        hold_ms: 5 * MIN,
        metric: "cpu_usage_ratio",
        op: ">",
        threshold: 0.95,
        value: 0.99,
        down: false,
        title: "CPU busy",
    },
];

fn pick_rule(rng: &mut Rng) -> usize {
    let mut x = rng.unit();
    for (i, r) in MIX.iter().enumerate() {
        if x < r.share {
            return i;
        }
        x -= r.share;
    }
    MIX.len() - 1
}

/// How long one episode of `rule` lasts.
fn duration(rng: &mut Rng, rule: usize) -> i64 {
    let r = &MIX[rule];
    if r.down {
        if rng.chance(0.85) {
            rng.log_range(MIN, 20 * MIN)
        } else {
            rng.log_range(20 * MIN, 4 * HOUR)
        }
    } else {
        match r.rule {
            "filesystem-full" => rng.log_range(10 * MIN, 12 * HOUR),
            "inventory-stale" => rng.log_range(30 * MIN, 12 * HOUR),
            _ => rng.log_range(5 * MIN, 2 * HOUR),
        }
    }
}

struct Host {
    agent: String,
    first_seen: i64,
    retired: Option<i64>,
    ci: i64,
    fs: [i64; 2],
    checks: [&'static str; 2],
}

const FILESYSTEMS: [&str; 2] = ["/", "/var"];

struct Plan {
    host: usize,
    rule: usize,
    ci_type: &'static str,
    ci_key: &'static str,
    ci_id: Option<i64>,
    dedup_key: String,
    /// One episode, or two when it reopens.
    episodes: Vec<(i64, i64)>,
}

#[derive(Default)]
struct History {
    incidents: usize,
    reopened: usize,
    open_at_end: usize,
    down_type: usize,
    suppressed_symptoms: usize,
    windows: usize,
    agent_data_rows: usize,
    check_run_rows: usize,
    cis: usize,
    secs: f64,
}

fn host_attrs(i: usize, hostname: &str) -> String {
    let role = ROLES[i % ROLES.len()];
    let dc = format!("dc{}", (i / ROLES.len()) % 4 + 1);
    let env = if i % 20 == 19 { "staging" } else { "prod" };
    serde_json::json!({
        "hostname": hostname,
        "tags": {"fleet": "bench", "role": role, "dc": dc, "env": env},
    })
    .to_string()
}

/// Writes the year of history into the store at `dir` for `agents` (`(id, hostname)`; written
/// as rows first when `insert_agents`).
fn populate(
    dir: &Path,
    agents: &[(String, String)],
    insert_agents: bool,
    args: &Args,
    now: i64,
) -> Result<History> {
    let t0 = Instant::now();
    let mut rng = Rng(args.seed);
    let year_ago = now - 365 * DAY;
    let db = open_store(dir)?;
    let conn = db.conn();
    conn.execute_batch("BEGIN IMMEDIATE")?;
    let mut h = History::default();

    // Agents, host CIs, filesystems (and extra CIs).
    let mut hosts = Vec::with_capacity(agents.len());
    for (i, (agent, hostname)) in agents.iter().enumerate() {
        let first_seen = if rng.chance(0.05) {
            rng.range(year_ago, now - 30 * DAY)
        } else {
            now - 400 * DAY
        };
        let retired = rng
            .chance(0.01)
            .then(|| rng.range(now - 300 * DAY, now - 10 * DAY))
            .filter(|&r| r > first_seen + DAY);
        if insert_agents {
            conn.execute(
                "INSERT INTO agents (id, hostname, version, cert_pin, enrolled_at_ms)
                 VALUES (?1, ?2, '0.1.0', 'bench', ?3)",
                params![agent, hostname, first_seen],
            )?;
        } else {
            conn.execute(
                "UPDATE agents SET enrolled_at_ms = ?2 WHERE id = ?1",
                params![agent, first_seen],
            )?;
        }
        let state = if retired.is_some() {
            "retired"
        } else {
            "active"
        };
        let last_seen = retired.unwrap_or(now);
        let ci = |ty: &str, key: &str, attrs: &str| -> rusqlite::Result<i64> {
            conn.prepare_cached(
                "INSERT INTO cis (agent_id, type, key, name, attrs, source, state, first_seen_ms,
                    last_seen_ms, retired_at_ms)
                 VALUES (?1, ?2, ?3, ?3, ?4, 'discovery', ?5, ?6, ?7, ?8)",
            )?
            .execute(params![
                agent, ty, key, attrs, state, first_seen, last_seen, retired
            ])?;
            Ok(conn.last_insert_rowid())
        };
        let host_ci = ci("host", "host", &host_attrs(i, hostname))?;
        let fs = [
            ci("filesystem", FILESYSTEMS[0], r#"{"fstype":"ext4"}"#)?,
            ci("filesystem", FILESYSTEMS[1], r#"{"fstype":"xfs"}"#)?,
        ];
        for k in 0..args.extra_cis {
            ci("package", &format!("pkg-{k}"), r#"{"version":"1.0"}"#)?;
        }
        h.cis += 3 + args.extra_cis;
        hosts.push(Host {
            agent: agent.clone(),
            first_seen,
            retired,
            ci: host_ci,
            fs,
            checks: [CHECKS[0], CHECKS[1 + i % (CHECKS.len() - 1)]],
        });
    }

    // The plans: non-overlapping per dedup key, with a margin longer than `reopen_within` so
    // that only the planned reopenings reopen.
    let mut occupied: HashMap<String, Vec<(i64, i64)>> = HashMap::new();
    let mut plans: Vec<Plan> = Vec::with_capacity(args.incidents);
    let mut attempts = 0usize;
    while plans.len() < args.incidents && attempts < args.incidents * 20 {
        attempts += 1;
        // Every host gets its share first, then random hosts make up for refused draws.
        let host = if attempts <= args.incidents {
            (attempts - 1) % hosts.len()
        } else {
            rng.range(0, hosts.len() as i64) as usize
        };
        let ho = &hosts[host];
        let lo = ho.first_seen.max(year_ago);
        let hi = ho.retired.unwrap_or(now).min(now);
        let rule = pick_rule(&mut rng);
        let r = &MIX[rule];
        let (ci_type, ci_key, ci_id) = match r.unit {
            Unit::Host => ("host", "host", Some(ho.ci)),
            Unit::Filesystem => {
                let k = rng.range(0, 2) as usize;
                ("filesystem", FILESYSTEMS[k], Some(ho.fs[k]))
            }
            Unit::Check => ("check", ho.checks[rng.range(0, 2) as usize], None),
        };
        let start = rng.range(lo, hi);
        // A breach shorter than `for` opens no incident: every planned one outlasts it.
        let end = start + duration(&mut rng, rule).max(r.hold_ms + MIN);
        let mut episodes = vec![(start, end)];
        if r.down && end < now && rng.chance(0.06) {
            let s2 = end + rng.range(2 * MIN, 30 * MIN);
            if s2 + r.hold_ms < now {
                episodes.push((s2, s2 + duration(&mut rng, rule).max(r.hold_ms + MIN)));
            }
        }
        let last = episodes.last().map_or(end, |e| e.1);
        let dedup_key = format!("{}|{}|{ci_type}|{ci_key}", r.rule, ho.agent);
        let taken = occupied.entry(dedup_key.clone()).or_default();
        let margin = REOPEN_WITHIN + 2 * MIN;
        if taken
            .iter()
            .any(|&(s, e)| start < e + margin && s < last + margin)
        {
            continue;
        }
        // A retired host's last incident ends by its retirement.
        taken.push((start, last));
        plans.push(Plan {
            host,
            rule,
            ci_type,
            ci_key,
            ci_id,
            dedup_key,
            episodes,
        });
    }

    // Every open and resolve in time order, as the engine would have written them.
    #[derive(PartialEq, Eq, PartialOrd, Ord)]
    enum Op {
        Resolve,
        Open,
    }
    let mut ops: Vec<(i64, Op, usize, usize)> = Vec::with_capacity(plans.len() * 2 + 1000);
    for (p, plan) in plans.iter().enumerate() {
        let hold = MIX[plan.rule].hold_ms;
        for (e, &(s, end)) in plan.episodes.iter().enumerate() {
            ops.push((s + hold, Op::Open, p, e));
            if end < now {
                ops.push((end, Op::Resolve, p, e));
            }
        }
    }
    ops.sort();
    let labels = BTreeMap::new();
    let mut ids = vec![0i64; plans.len()];
    for (at, op, p, e) in ops {
        let plan = &plans[p];
        let r = &MIX[plan.rule];
        let ho = &hosts[plan.host];
        match op {
            Op::Open => {
                let o = Opening {
                    dedup_key: &plan.dedup_key,
                    rule: r.rule,
                    origin: Origin::Rule,
                    agent_id: Some(&ho.agent),
                    ci_id: plan.ci_id,
                    ci_type: plan.ci_type,
                    ci_key: plan.ci_key,
                    title: r.title,
                    impact: r.impact,
                    urgency: r.urgency,
                    metric: Some(r.metric),
                    op: Some(r.op),
                    threshold: Some(r.threshold),
                    value: Some(r.value),
                    peak: Some(r.value),
                    first_breach_ms: plan.episodes[e].0,
                    at_ms: at,
                    labels: &labels,
                    flapping: false,
                    suppression: None,
                    probable_cause_id: None,
                };
                let symptoms_of = (r.rule == "host-unreachable").then_some(ho.agent.as_str());
                let (opened, symptoms) =
                    Lifecycle::new(conn, &[], at).open(&o, REOPEN_WITHIN, symptoms_of)?;
                h.suppressed_symptoms += symptoms;
                match opened {
                    Opened::New { id, .. } => ids[p] = id,
                    Opened::Reopened { id, .. } => {
                        ids[p] = id;
                        h.reopened += 1;
                    }
                    other => bail!("{}: not opened: {other:?}", plan.dedup_key),
                }
            }
            Op::Resolve => {
                let value = if r.op == "<" { 1.0 } else { r.threshold * 0.8 };
                Lifecycle::new(conn, &[], at).resolve(
                    ids[p],
                    at,
                    Some(value),
                    "recovered",
                    true,
                )?;
            }
        }
    }
    h.incidents = plans.len();
    h.down_type = plans.iter().filter(|p| MIX[p.rule].down).count();
    h.open_at_end = plans
        .iter()
        .filter(|p| p.episodes.last().is_some_and(|e| e.1 >= now))
        .count();

    // Coverage: each agent's stretches of data, broken while its host was unreachable and
    // at the collector's restarts.
    let restarts: Vec<(i64, i64)> = (0..8)
        .map(|k| {
            let s = year_ago + (k * 45 + 10) * DAY + rng.range(0, DAY);
            (s, s + rng.range(MIN, 3 * MIN))
        })
        .collect();
    let mut gaps: Vec<Vec<(i64, i64)>> = vec![restarts.clone(); hosts.len()];
    // Check executions: per (host, check, UTC day) the seconds the check was down or not run.
    let mut failed: HashMap<(usize, usize, i64), (i64, i64)> = HashMap::new();
    let mut add_per_day = |host: usize, check: usize, s: i64, e: i64, missing: bool| {
        let mut t = s;
        while t < e {
            let day = t.div_euclid(DAY) * DAY;
            let until = e.min(day + DAY);
            let entry = failed.entry((host, check, day)).or_default();
            if missing {
                entry.1 += until - t;
            } else {
                entry.0 += until - t;
            }
            t = until;
        }
    };
    for plan in &plans {
        let rule = MIX[plan.rule].rule;
        for &(s, e) in &plan.episodes {
            let e = e.min(now);
            if rule == "host-unreachable" {
                gaps[plan.host].push((s, e));
                for c in 0..2 {
                    add_per_day(plan.host, c, s, e, true);
                }
            } else if rule == "check-down" {
                let c = usize::from(hosts[plan.host].checks[1] == plan.ci_key);
                add_per_day(plan.host, c, s, e, false);
            }
        }
    }
    conn.execute("DELETE FROM agent_data", [])?;
    for (i, ho) in hosts.iter().enumerate() {
        let end = ho.retired.unwrap_or(now).min(now);
        let mut g = std::mem::take(&mut gaps[i]);
        g.sort_unstable();
        let mut t = ho.first_seen;
        let mut insert = |s: i64, e: i64| -> rusqlite::Result<()> {
            if e > s {
                conn.prepare_cached(
                    "INSERT INTO agent_data (agent_id, start_ms, end_ms) VALUES (?1, ?2, ?3)",
                )?
                .execute(params![ho.agent, s, e])?;
                h.agent_data_rows += 1;
            }
            Ok(())
        };
        for (s, e) in g {
            if e <= t || s >= end {
                continue;
            }
            insert(t, s.max(t))?;
            t = t.max(e);
        }
        insert(t, end)?;
        // A run every 10 s of every whole day the host was there.
        let mut day = (ho.first_seen.max(now - 400 * DAY)).div_euclid(DAY) * DAY + DAY;
        while day + DAY <= end {
            for (c, check) in ho.checks.iter().enumerate() {
                let (down, missing) = failed.get(&(i, c, day)).copied().unwrap_or((0, 0));
                let total = (DAY - missing.min(DAY)) / CHECK_EVERY;
                let ok = (total - down / CHECK_EVERY).max(0);
                conn.prepare_cached(
                    "INSERT INTO check_runs (agent_id, check_name, day_ms, ok, total)
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                )?
                .execute(params![ho.agent, check, day, ok, total])?;
                h.check_run_rows += 1;
            }
            day += DAY;
        }
    }

    // Maintenance windows.
    let tag = |k: &str, v: &str| Scope {
        tag: Some((k.to_string(), v.to_string())),
        ..Scope::default()
    };
    let day0 = year_ago.div_euclid(DAY) * DAY;
    let windows: Vec<(&str, Scope, i64, i64, Option<Recurrence>)> = vec![
        (
            "db-patching",
            tag("role", "db"),
            day0 + 2 * HOUR,
            2 * HOUR,
            Some(Recurrence::Weekly),
        ),
        (
            "storage-backup",
            tag("role", "storage"),
            day0 + 3 * HOUR,
            30 * MIN,
            Some(Recurrence::Daily),
        ),
        (
            "web-deploy",
            tag("role", "web"),
            day0 + 3 * DAY + 20 * HOUR,
            15 * MIN,
            Some(Recurrence::Weekly),
        ),
        (
            "dc1-power",
            tag("dc", "dc1"),
            now - 200 * DAY,
            6 * HOUR,
            None,
        ),
        (
            "dc2-network",
            tag("dc", "dc2"),
            now - 120 * DAY,
            4 * HOUR,
            None,
        ),
        (
            "fleet-upgrade",
            Scope::default(),
            now - 100 * DAY,
            2 * HOUR,
            None,
        ),
        (
            "staging-rebuild",
            tag("env", "staging"),
            now - 60 * DAY,
            12 * HOUR,
            None,
        ),
        (
            "queue-migration",
            tag("role", "queue"),
            now - 45 * DAY,
            3 * HOUR,
            None,
        ),
        (
            "search-reindex",
            tag("role", "search"),
            now - 20 * DAY,
            5 * HOUR,
            None,
        ),
        (
            "dc3-cooling",
            tag("dc", "dc3"),
            now - 30 * DAY,
            4 * HOUR,
            None,
        ),
    ];
    for (name, scope, start, len, every) in &windows {
        let id = maintenance::create(conn, name, scope, *start, *len, *every, *start - DAY)?;
        if *name == "dc3-cooling" {
            // Deleted half-way through: what it covered until then stays excluded.
            maintenance::delete(conn, id, *start + 2 * HOUR)?;
        }
        h.windows += 1;
    }
    conn.execute_batch("COMMIT")?;
    conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE); ANALYZE;")?;
    h.secs = t0.elapsed().as_secs_f64();
    Ok(h)
}

// --- SLAs --------------------------------------------------------------------------------------

fn slas_of(toml: &str) -> Result<Vec<Sla>> {
    Ok(
        config::from_str("sla_bench.toml", &format!("data_dir = \"/x\"\n{toml}"))
            .map_err(|e| anyhow!("{e}"))?
            .slas,
    )
}

/// The report's SLA: every host of the fleet, its filesystems and checks.
const FLEET_SLA: &str =
    "[[sla]]\nname = \"fleet\"\ntarget = 0.999\n[sla.scope]\ntag = \"fleet=bench\"\n";

/// The same hosts' host CIs only, up while 99 % of them are.
fn quorum_sla(hosts: usize) -> String {
    format!(
        "[[sla]]\nname = \"fleet-hosts-quorum\"\ntarget = 0.999\nquorum = {}\n\
         [sla.scope]\ntag = \"fleet=bench\"\ntype = \"host\"\n",
        (hosts * 99 / 100).max(1)
    )
}

/// `n` SLAs of different scopes, windows, zones, schedules, quorums and degradations.
fn many_slas(n: usize) -> String {
    const WINDOWS: [&str; 10] = [
        "30d", "month", "7d", "30d", "quarter", "week", "1d", "90d", "month", "30d",
    ];
    const ZONES: [&str; 3] = ["UTC", "Europe/Berlin", "America/New_York"];
    const TARGETS: [f64; 4] = [0.99, 0.995, 0.999, 0.9995];
    let mut out = String::new();
    for i in 0..n {
        let window = WINDOWS[i % WINDOWS.len()];
        let zone = if window == "month" && i % 3 != 2 {
            "Europe/Berlin"
        } else {
            ZONES[(i / 10) % ZONES.len()]
        };
        out.push_str(&format!(
            "[[sla]]\nname = \"sla-{i:03}\"\ntarget = {}\nwindow = \"{window}\"\ntimezone = \"{zone}\"\n",
            TARGETS[i % TARGETS.len()]
        ));
        if i % 7 == 3 {
            out.push_str("quorum = 20\n");
        }
        if i % 4 == 1 {
            out.push_str("degraded_when = [{ when = \"priority=P3\", weight = 0.5 }]\n");
        }
        out.push_str("[sla.scope]\n");
        match i % 5 {
            0 => out.push_str(&format!(
                "tag = \"role={}\"\n",
                ROLES[(i / 5) % ROLES.len()]
            )),
            1 => out.push_str(&format!("tag = \"dc=dc{}\"\n", (i / 5) % 4 + 1)),
            2 => out.push_str(&format!("host = \"sim-00{}*\"\n", (i / 5) % 10)),
            3 => out.push_str("tag = \"fleet=bench\"\n"),
            _ => out.push_str(&format!(
                "tag = \"role={}\"\ntype = \"host\"\n",
                ROLES[(i / 5 + 3) % ROLES.len()]
            )),
        }
        if i % 3 == 0 {
            out.push_str(
                "[sla.schedule]\ndays = [\"mon\", \"tue\", \"wed\", \"thu\", \"fri\"]\n\
                 hours = \"08:00-18:00\"\nholidays = [\"2026-01-01\", \"2026-05-01\", \"2026-12-25\"]\n",
            );
        }
    }
    out
}

// --- statistics ----------------------------------------------------------------------------------

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn min_max(v: &[f64]) -> (f64, f64) {
    v.iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &x| {
            (lo.min(x), hi.max(x))
        })
}

/// `median X ms (min A, max B; N runs)`.
fn summary(v: &[f64]) -> String {
    let (lo, hi) = min_max(v);
    format!(
        "median {:.1} ms (min {lo:.1}, max {hi:.1}; {} runs)",
        median(v),
        v.len()
    )
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

fn ratio(x: Option<f64>) -> String {
    x.map_or("none".into(), |x| format!("{x:.6}"))
}

// --- HTTP --------------------------------------------------------------------------------------

/// GETs `path` over HTTP/1.0 (the connection closes after the answer): status and body.
async fn http_get(addr: SocketAddr, path: &str, bearer: Option<&str>) -> Result<(u16, Vec<u8>)> {
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    let auth = bearer.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n{auth}\r\n").as_bytes())
        .await?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await?;
    let head_end = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| anyhow!("no HTTP header in the answer to {path}"))?;
    let head = String::from_utf8_lossy(&buf[..head_end]);
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| anyhow!("no status in {head}"))?;
    Ok((status, buf[head_end + 4..].to_vec()))
}

/// The value of the unlabelled series `name` in a Prometheus text exposition.
fn metric_value(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

fn metric_lines(text: &str, name: &str) -> usize {
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .count()
}

// --- collectors and simulated agents -----------------------------------------------------------

struct Bench {
    args: Args,
    work: PathBuf,
    template: PathBuf,
    sims: PathBuf,
    token: String,
    crt: Runtime,
    lrt: Runtime,
}

impl Bench {
    fn config(&self, name: &str, data: &Path, extra: &str) -> Result<config::CollectorConfig> {
        let t = format!(
            "data_dir = \"{}\"\n[quic]\nlisten = \"127.0.0.1:0\"\n[http]\nlisten = \"127.0.0.1:0\"\n\
             [incidents]\nbuiltin_rules = false\n{extra}",
            data.display()
        );
        let path = self.work.join(format!("{name}.toml"));
        std::fs::write(&path, t)?;
        config::load(&path).map_err(|e| anyhow!("{e}"))
    }

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
    ) -> tokio::task::JoinHandle<Result<SimReport>> {
        self.lrt.spawn(simulate(SimulateOptions {
            agents: self.args.hosts,
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
    fn stop_sim(&self, sim: tokio::task::JoinHandle<Result<SimReport>>) -> Result<SimReport> {
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
        loop {
            let got = self
                .lrt
                .block_on(http_get(http, "/metrics", None))
                .map(|(_, body)| {
                    let text = String::from_utf8_lossy(&body).into_owned();
                    text.lines()
                        .find_map(|l| {
                            l.strip_prefix("vigil_agents_connected ")
                                .and_then(|v| v.trim().parse::<f64>().ok())
                        })
                        .unwrap_or(0.0)
                })
                .unwrap_or(0.0);
            if got >= n as f64 {
                return Ok(t0.elapsed().as_secs_f64());
            }
            if t0.elapsed() > Duration::from_secs(600) {
                bail!("only {got} of {n} agents connected after 600 s");
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

/// The simulated agents enroll once against the template store; their `(id, hostname)`.
fn enroll(b: &Bench) -> Result<Vec<(String, String)>> {
    let cfg = b.config("enroll", &b.template, "")?;
    let running = b.start(&cfg)?;
    say!(
        "store: {} simulated agents enroll once (identities kept for the streaming runs)",
        b.args.hosts
    );
    let sim = b.spawn_sim(running.quic_addr, Duration::from_secs(10));
    let secs = b.wait_connected(running.http_addr, b.args.hosts)?;
    let report = b.stop_sim(sim)?;
    b.stop(running)?;
    say!(
        "store: all connected after {secs:.1} s; simulate errors {}",
        report.errors
    );
    let db = open_store(&b.template)?;
    let conn = db.conn();
    let agents = conn
        .prepare("SELECT id, hostname FROM agents WHERE hostname LIKE 'sim-%' ORDER BY hostname")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<Vec<(String, String)>>>()?;
    if agents.len() != b.args.hosts {
        bail!(
            "{} agents enrolled, {} expected",
            agents.len(),
            b.args.hosts
        );
    }
    Ok(agents)
}

// --- phase 1: the year's report ----------------------------------------------------------------

struct ReportResult {
    /// `report_with_days` on a fresh connection, the store's cache warm (after `churn`).
    with_days: Vec<f64>,
    /// The same with the cache forgotten.
    cold: Vec<f64>,
    /// Opening that connection (pragmas, migrations).
    open: Vec<f64>,
    /// `load::timelines` alone.
    load: Vec<f64>,
    /// `sla::report` (no daily series).
    no_days: Vec<f64>,
    /// `occurrences::count` over the year.
    occ: Vec<f64>,
    /// One `sla::compute` of the year (experienced view).
    compute: Vec<f64>,
    units: usize,
    down_spans: usize,
    report: sla::Report,
    days: usize,
    quorum: Option<sla::Report>,
    http: Option<(Vec<f64>, usize)>,
}

fn report_phase(b: &Bench) -> Result<ReportResult> {
    let a = &b.args;
    let fleet = slas_of(FLEET_SLA)?.remove(0);
    let year = |now: i64| Span::new(now - 365 * DAY, now);
    say!(
        "report: SLA `fleet` over the last 365 days, {} runs of `sla::report_with_days` on a fresh connection each",
        a.runs
    );
    let (mut with_days, mut cold, mut open, mut last) = (Vec::new(), Vec::new(), Vec::new(), None);
    // Alternately cold (the cache of this store forgotten: the first report after a start)
    // and warm (after what a running collector writes in a refresh period: `churn`).
    for run in 0..a.runs * 2 {
        let warm = run % 2 == 1;
        let t0 = Instant::now();
        let db = open_store(&b.template)?;
        let conn = db.conn();
        if warm {
            churn(conn)?;
        } else {
            sla::cache::forget(conn);
        }
        let t1 = Instant::now();
        let now = now_ms();
        let (r, days) = sla::report_with_days(conn, &fleet, year(now), now)?;
        let t2 = Instant::now();
        open.push(ms(t1 - t0));
        if warm {
            with_days.push(ms(t2 - t1));
        } else {
            cold.push(ms(t2 - t1));
        }
        say!(
            "report: run {:2} ({}): {:7.1} ms (+ {:.1} ms opening the connection{}), {} days",
            run / 2 + 1,
            if warm { "warm" } else { "cold" },
            ms(t2 - t1),
            ms(t1 - t0),
            if warm { " and writing the changes" } else { "" },
            days.len()
        );
        last = Some((r, days.len()));
    }
    let (report, days) = last.ok_or_else(|| anyhow!("no run"))?;
    let (mut load, mut no_days, mut occ, mut compute) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut units, mut down_spans) = (0, 0);
    for _ in 0..a.runs.min(5) {
        let db = open_store(&b.template)?;
        let conn = db.conn();
        let now = now_ms();
        let period = year(now);
        let t0 = Instant::now();
        let cis = sla::load::timelines(conn, &fleet, period, now)?;
        load.push(ms(t0.elapsed()));
        units = cis.len();
        down_spans = cis.iter().map(|c| c.down.len()).sum();
        let t0 = Instant::now();
        sla::compute(
            &cis,
            period,
            &sla::Spans::one(period),
            sla::Kind::Experienced,
            fleet.combine,
        );
        compute.push(ms(t0.elapsed()));
        drop(cis);
        let t0 = Instant::now();
        sla::occurrences::count(conn, &fleet, &[period])?;
        occ.push(ms(t0.elapsed()));
        let db = open_store(&b.template)?;
        let conn = db.conn();
        let t0 = Instant::now();
        sla::report(conn, &fleet, period, now)?;
        no_days.push(ms(t0.elapsed()));
    }
    say!(
        "report: {units} units, {down_spans} down spans; store read (`load::timelines`) {}; \
         check runs (`occurrences::count`) {}; one view of the year (`sla::compute`, experienced) {}; \
         `sla::report` without the daily series {}",
        summary(&load),
        summary(&occ),
        summary(&compute),
        summary(&no_days)
    );
    let c = &report.contractual;
    let e = &report.experienced;
    say!(
        "report: contractual availability {} (coverage {}, down {:.1} h, excluded {:.1} h, {} outages), \
         experienced {} (down {:.1} h, unknown {:.1} h), budget left {}",
        ratio(c.availability),
        ratio(c.coverage),
        c.down_ms / HOUR as f64,
        c.excluded_ms as f64 / HOUR as f64,
        c.outages.len(),
        ratio(e.availability),
        e.down_ms / HOUR as f64,
        e.unknown_ms as f64 / HOUR as f64,
        ratio(report.budget_remaining_ratio())
    );
    say!(
        "report: occurrences {} of {} check runs passed ({})",
        thousands(report.occurrences.ok as f64),
        thousands(report.occurrences.total as f64),
        ratio(report.occurrences.ratio())
    );
    let quorum = {
        let s = slas_of(&quorum_sla(a.hosts))?.remove(0);
        let db = open_store(&b.template)?;
        let conn = db.conn();
        let now = now_ms();
        let t0 = Instant::now();
        let r = sla::report(conn, &s, year(now), now)?;
        say!(
            "report: `fleet-hosts-quorum` (host CIs, quorum {}): contractual {}, experienced {} ({:.1} ms)",
            (a.hosts * 99 / 100).max(1),
            ratio(r.contractual.availability),
            ratio(r.experienced.availability),
            ms(t0.elapsed())
        );
        Some(r)
    };
    let http = if a.http { Some(http_report(b)?) } else { None };
    Ok(ReportResult {
        with_days,
        cold,
        open,
        load,
        no_days,
        occ,
        compute,
        units,
        down_spans,
        report,
        days,
        quorum,
        http,
    })
}

/// What a running collector writes between two SLA reads, more or less, without changing a
/// figure: today's check executions of every agent (the ingest writer adds to them with every
/// batch) and 20 incidents (opened, resolved or reopened in 30 s at most at this fleet's rate of
/// one every 5 minutes). Through the triggers the cache reads, so that a warm read re-reads
/// them.
fn churn(conn: &rusqlite::Connection) -> Result<()> {
    conn.execute(
        "UPDATE check_runs SET ok = ok, total = total
         WHERE day_ms = (SELECT MAX(day_ms) FROM check_runs)",
        [],
    )?;
    conn.execute(
        "UPDATE incidents SET resolved_ms = resolved_ms
         WHERE id IN (SELECT id FROM incidents ORDER BY random() LIMIT 20)",
        [],
    )?;
    Ok(())
}

/// The same report through `GET /api/v1/slas/fleet/report` of a collector in this process.
fn http_report(b: &Bench) -> Result<(Vec<f64>, usize)> {
    let data = b.fresh_data("http")?;
    let token = store::Db::open(&data)?
        .create_api_token(store::Role::Viewer, "sla-bench", now_ms())?
        .1;
    let cfg = b.config("http", &data, FLEET_SLA)?;
    let running = b.start(&cfg)?;
    // Let the SLA figures task's first refresh (at start) pass.
    std::thread::sleep(Duration::from_secs(3));
    let (mut lat, mut bytes) = (Vec::new(), 0);
    for run in 0..b.args.runs {
        let now = now_ms();
        let path = format!(
            "/api/v1/slas/fleet/report?from={}&to={now}",
            now - 365 * DAY
        );
        let t0 = Instant::now();
        let (status, body) = b
            .lrt
            .block_on(http_get(running.http_addr, &path, Some(&token)))?;
        let took = ms(t0.elapsed());
        if status != 200 {
            bail!(
                "GET {path}: {status} {}",
                String::from_utf8_lossy(&body[..body.len().min(300)])
            );
        }
        bytes = body.len();
        let v: serde_json::Value = serde_json::from_slice(&body)?;
        say!(
            "report over HTTP: run {:2}: {took:7.1} ms, {} bytes, contractual {}",
            run + 1,
            thousands(bytes as f64),
            v["contractual"]["availability"]
        );
        lat.push(took);
    }
    b.stop(running)?;
    let _ = std::fs::remove_dir_all(&data);
    Ok((lat, bytes))
}

// --- phase 2: the refresh of 100 SLAs ----------------------------------------------------------

struct RefreshResult {
    /// CPU per refresh (ms), every warm round.
    cpu: Vec<f64>,
    /// CPU per refresh with the cache forgotten.
    cold: Vec<f64>,
    wall: Vec<f64>,
    series: usize,
    /// Sum over the SLAs of their `reports` CPU and of its store read.
    per_sla_total: f64,
    per_sla_load: f64,
    per_sla_occ: f64,
    by_window: BTreeMap<String, (usize, f64)>,
    /// `(name, window, units, reports CPU, store read CPU, check runs CPU)`, costliest first.
    top: Vec<(String, String, usize, f64, f64, f64)>,
}

/// One refresh of `slas` on the connection `kept` (opened here the first time, and counted,
/// as the collector's task keeps one from refresh to refresh): CPU and wall (ms).
fn refresh_once(
    dir: &Path,
    kept: &mut Option<store::Db>,
    m: &SlaMetrics,
    slas: &[Sla],
) -> Result<(f64, f64, usize)> {
    let (c0, w0) = (thread_cpu(), Instant::now());
    let db = match kept.take() {
        Some(db) => db,
        None => open_store(dir)?,
    };
    let burns = m.refresh(db.conn(), slas, now_ms())?;
    *kept = Some(db);
    Ok((ms(thread_cpu() - c0), ms(w0.elapsed()), burns.len()))
}

fn refresh_phase(b: &Bench, slas: &[Sla]) -> Result<RefreshResult> {
    let registry = prometheus::Registry::new();
    let m = SlaMetrics::new(&registry)?;
    let mut kept = None;
    say!(
        "refresh: {} SLAs through `SlaMetrics::refresh`, {} rounds (the first counts every outage of the windows)",
        slas.len(),
        b.args.rounds
    );
    let (mut cpu, mut wall, mut cold) = (Vec::new(), Vec::new(), Vec::new());
    // Alternately cold (the store's cache forgotten) and warm (after `churn`).
    for round in 0..b.args.rounds * 2 {
        let warm = round % 2 == 1;
        {
            let db = open_store(&b.template)?;
            if warm {
                churn(db.conn())?;
            } else {
                sla::cache::forget(db.conn());
            }
        }
        let (c, w, burns) = refresh_once(&b.template, &mut kept, &m, slas)?;
        say!(
            "refresh: round {} ({}): {c:.0} ms CPU, {w:.0} ms wall, {burns} burn records",
            round / 2 + 1,
            if warm { "warm" } else { "cold" },
        );
        if warm {
            cpu.push(c);
            wall.push(w);
        } else {
            cold.push(c);
        }
    }
    let text = prometheus::TextEncoder::new()
        .encode_to_string(&registry.gather())
        .map_err(|e| anyhow!("{e}"))?;
    let series = metric_lines(&text, "vigil_sla_availability_ratio");

    // Per SLA: what refresh_one asks of `reports` (its window and the burn windows).
    let db = open_store(&b.template)?;
    let conn = db.conn();
    let now = now_ms();
    let mut rows = Vec::new();
    for s in slas {
        let Some(window) = sla::calendar::period(s.window, now, &s.timezone) else {
            continue;
        };
        let mut periods = vec![window];
        periods.extend(
            BURN_WINDOWS
                .iter()
                .map(|&(_, secs)| Span::new(now - secs as i64 * 1000, now)),
        );
        let start = periods.iter().map(|p| p.start).min().unwrap_or(now);
        let c0 = thread_cpu();
        let cis = sla::load::timelines(conn, s, Span::new(start, now), now)?;
        let load = ms(thread_cpu() - c0);
        let units = cis.len();
        drop(cis);
        let measured: Vec<Span> = periods
            .iter()
            .map(|p| Span::new(p.start, p.end.min(now)))
            .collect();
        let c0 = thread_cpu();
        sla::occurrences::count(conn, s, &measured)?;
        let occ = ms(thread_cpu() - c0);
        let c0 = thread_cpu();
        sla::reports(conn, s, &periods, now)?;
        let total = ms(thread_cpu() - c0);
        rows.push((
            s.name.clone(),
            s.window.to_string(),
            units,
            total,
            load,
            occ,
        ));
    }
    let per_sla_total: f64 = rows.iter().map(|r| r.3).sum();
    let per_sla_load: f64 = rows.iter().map(|r| r.4).sum();
    let per_sla_occ: f64 = rows.iter().map(|r| r.5).sum();
    let mut by_window: BTreeMap<String, (usize, f64)> = BTreeMap::new();
    for r in &rows {
        let e = by_window.entry(r.1.clone()).or_default();
        e.0 += 1;
        e.1 += r.3;
    }
    rows.sort_by(|x, y| y.3.total_cmp(&x.3));
    rows.truncate(5);
    say!(
        "refresh: per SLA, `sla::reports` sums to {per_sla_total:.0} ms CPU, of which the store read \
         (`load::timelines`) {per_sla_load:.0} ms ({:.0} %), the check runs (`occurrences::count`) \
         {per_sla_occ:.0} ms ({:.0} %)",
        per_sla_load / per_sla_total.max(1e-9) * 100.0,
        per_sla_occ / per_sla_total.max(1e-9) * 100.0
    );
    for (w, (n, t)) in &by_window {
        say!(
            "refresh:   window {w:>8}: {n:3} SLAs, {t:7.1} ms CPU ({:.1} ms each)",
            t / *n as f64
        );
    }
    for (name, w, units, t, l, o) in &rows {
        say!(
            "refresh:   costliest: {name} ({w}, {units} units): {t:.1} ms CPU, store read {l:.1} ms, \
             check runs {o:.1} ms"
        );
    }
    Ok(RefreshResult {
        cpu,
        cold,
        wall,
        series,
        per_sla_total,
        per_sla_load,
        per_sla_occ,
        by_window,
        top: rows,
    })
}

// --- phase 3: the collector with agents streaming ----------------------------------------------

struct StreamRun {
    with_slas: bool,
    cores: f64,
    /// With SLAs: the collector's own count over the run (`vigil_sla_refresh_cpu_seconds_total`,
    /// `vigil_sla_refresh_duration_seconds_count`): CPU seconds of its SLA task, refreshes.
    sla_task: Option<(f64, f64)>,
    rate: f64,
    series: usize,
}

struct StreamResult {
    runs: Vec<StreamRun>,
    /// Refreshes of the SLAs while the agents stream (CPU ms, wall ms).
    under_load: Vec<(f64, f64)>,
}

fn stream_run(b: &Bench, slas: &[Sla], sla_toml: &str, with: bool, n: usize) -> Result<StreamRun> {
    let name = format!("stream-{n}");
    let data = b.fresh_data(&name)?;
    let cfg = b.config(&name, &data, if with { sla_toml } else { "" })?;
    let running = b.start(&cfg)?;
    let sim = b.spawn_sim(running.quic_addr, b.args.stream_interval);
    let ramp = b.wait_connected(running.http_addr, b.args.hosts)?;
    // Past the ramp, and the SLA task's first refresh (at start).
    std::thread::sleep(Duration::from_secs(15));
    let hz = clock_ticks_per_second();
    let scrape = || -> Result<String> {
        let (_, body) = b
            .lrt
            .block_on(http_get(running.http_addr, "/metrics", None))?;
        Ok(String::from_utf8_lossy(&body).into_owned())
    };
    let task = |text: &str| {
        (
            metric_value(text, "vigil_sla_refresh_cpu_seconds_total"),
            metric_value(text, "vigil_sla_refresh_duration_seconds_count"),
        )
    };
    let before = task(&scrape()?);
    let (c0, t0) = (collector_ticks(), Instant::now());
    std::thread::sleep(Duration::from_secs(b.args.stream_secs));
    let (c1, wall) = (collector_ticks(), t0.elapsed().as_secs_f64());
    let cores = (c1 - c0) as f64 / hz / wall;
    let text = scrape()?;
    let after = task(&text);
    let sla_task = match (before, after) {
        ((Some(c0), Some(n0)), (Some(c1), Some(n1))) if with => Some((c1 - c0, n1 - n0)),
        _ => None,
    };
    let series = metric_lines(&text, "vigil_sla_availability_ratio");
    let mut extra = Vec::new();
    if !with {
        let m = SlaMetrics::new(&prometheus::Registry::new())?;
        let mut kept = None;
        for k in 0..REFRESHES_UNDER_LOAD {
            let (c, w, _) = refresh_once(&data, &mut kept, &m, slas)?;
            say!(
                "stream {n}: refresh {} of the {} SLAs while the agents stream: {c:.0} ms CPU, {w:.0} ms wall",
                k + 1,
                slas.len()
            );
            extra.push((c, w));
        }
    }
    let report = b.stop_sim(sim)?;
    b.stop(running)?;
    let _ = std::fs::remove_dir_all(&data);
    let r = StreamRun {
        with_slas: with,
        cores,
        sla_task,
        rate: report.load_acked_per_second,
        series,
    };
    say!(
        "stream {n} ({}): ramp {ramp:.1} s; collector {:.4} cores over {wall:.0} s; {} samples/s acknowledged; \
         {} vigil_sla_availability_ratio series; simulate errors {}{}",
        if with { "100 SLAs" } else { "no SLAs" },
        r.cores,
        thousands(r.rate),
        r.series,
        report.errors,
        r.sla_task.map_or(String::new(), |(cpu, n)| format!(
            "; its SLA task {:.0} ms CPU in {n:.0} refreshes ({:.2} % of a core)",
            cpu * 1e3,
            cpu / wall * 100.0
        ))
    );
    UNDER_LOAD.with(|u| u.borrow_mut().extend(extra));
    Ok(r)
}

thread_local! {
    static UNDER_LOAD: std::cell::RefCell<Vec<(f64, f64)>> = const { std::cell::RefCell::new(Vec::new()) };
}

fn stream_phase(b: &Bench, slas: &[Sla], sla_toml: &str) -> Result<StreamResult> {
    say!(
        "stream: {} agents x {} metrics every {} ms, {} s per run, {} rounds, order ABBA (no SLAs / {} SLAs)",
        b.args.hosts,
        b.args.metrics,
        b.args.stream_interval.as_millis(),
        b.args.stream_secs,
        b.args.stream_rounds,
        slas.len()
    );
    let mut runs = Vec::new();
    let mut n = 0;
    for round in 0..b.args.stream_rounds {
        let order = if round % 2 == 0 {
            [false, true]
        } else {
            [true, false]
        };
        for with in order {
            n += 1;
            runs.push(stream_run(b, slas, sla_toml, with, n)?);
        }
    }
    let under_load = UNDER_LOAD.with(|u| u.borrow().clone());
    Ok(StreamResult { runs, under_load })
}

// --- main --------------------------------------------------------------------------------------

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
        .prefix("vigil-sla-bench.")
        .tempdir()?;
    let work = temp.path().to_path_buf();
    WORK_DIR.get_or_init(|| (work.clone(), args.keep));
    let template = work.join("template");
    let token = {
        let db = store::Db::open(&template)?;
        vigil_collector::ca::load_or_create_ca(&template, std::time::SystemTime::now())?;
        admin::create_enroll_token(&template, &db, Duration::from_secs(6 * 3600), false)?
            .to_string()
    };
    let b = Bench {
        sims: work.join("sims"),
        template,
        work,
        token,
        crt: runtime("vigil-rt")?,
        lrt: runtime("bench-load")?,
        args,
    };
    // A Ctrl-C from the user (not our own SIGINT to simulate) ends the benchmark.
    b.lrt.spawn(async {
        while tokio::signal::ctrl_c().await.is_ok() {
            if !STOPPING_SIM.swap(false, Ordering::SeqCst) {
                eprintln!("sla_bench: interrupted");
                if let Some((dir, false)) = WORK_DIR.get() {
                    let _ = std::fs::remove_dir_all(dir);
                }
                std::process::exit(130);
            }
        }
    });
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let load_avg = || {
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .split(' ')
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    };
    let load_before = load_avg();
    say!(
        "SLA benchmark: {cores} cores, load average {load_before}; work dir {}",
        b.work.display()
    );

    // 0. The store.
    let agents = if b.args.stream {
        enroll(&b)?
    } else {
        (0..b.args.hosts)
            .map(|i| (format!("bench-agent-{i:05}"), format!("sim-{i:05}")))
            .collect()
    };
    say!(
        "store: writing {} incidents over the last 365 days on {} hosts in one transaction",
        thousands(b.args.incidents as f64),
        thousands(agents.len() as f64)
    );
    let now = now_ms();
    let h = populate(&b.template, &agents, !b.args.stream, &b.args, now)?;
    say!(
        "store: {} incidents ({} of a down_when rule, {} reopened, {} still open, {} symptoms suppressed \
         under a host-unreachable), {} CIs, {} maintenance windows, {} agent_data rows, {} check_runs rows \
         in {:.1} s; store {:.0} MB",
        thousands(h.incidents as f64),
        thousands(h.down_type as f64),
        thousands(h.reopened as f64),
        h.open_at_end,
        h.suppressed_symptoms,
        thousands(h.cis as f64),
        h.windows,
        thousands(h.agent_data_rows as f64),
        thousands(h.check_run_rows as f64),
        h.secs,
        dir_bytes(&b.template) as f64 / 1e6
    );

    let rep = if b.args.report {
        Some(report_phase(&b)?)
    } else {
        None
    };
    let sla_toml = many_slas(b.args.slas);
    let slas = slas_of(&sla_toml)?;
    let refresh = if b.args.refresh {
        Some(refresh_phase(&b, &slas)?)
    } else {
        None
    };
    let stream = if b.args.stream {
        Some(stream_phase(&b, &slas, &sla_toml)?)
    } else {
        None
    };
    let load_after = load_avg();

    // --- the table -------------------------------------------------------------------------------
    let a = &b.args;
    let period_s = REFRESH_EVERY.as_secs_f64();
    let change_s = REFRESH_AFTER_CHANGE.as_secs_f64();
    println!();
    println!(
        "## SLA benchmark ({cores} cores, load average {load_before} before, {load_after} after)"
    );
    println!();
    println!(
        "`cargo run --release -p vigil-collector --example sla_bench` (or `bench/run.sh --sla`); \
         store: {} hosts, {} incidents over 365 days ({} of a `down_when` rule, {} reopened), {} CIs, \
         {} maintenance windows, {} `agent_data` and {} `check_runs` rows ({:.0} MB).",
        thousands(a.hosts as f64),
        thousands(h.incidents as f64),
        thousands(h.down_type as f64),
        thousands(h.reopened as f64),
        thousands(h.cis as f64),
        h.windows,
        thousands(h.agent_data_rows as f64),
        thousands(h.check_run_rows as f64),
        dir_bytes(&b.template) as f64 / 1e6
    );
    println!();
    println!("| figure | measured | target | result |");
    println!("|---|---|---|---|");
    if let Some(r) = &rep {
        println!(
            "| year report, SLA over {} hosts ({} units), `sla::report_with_days` (what `GET /api/v1/slas/{{name}}/report` runs), fresh connection per run, the store's cache warm (after a refresh period's writes) | {} | <= 200 ms | {} |",
            thousands(a.hosts as f64),
            thousands(r.units as f64),
            summary(&r.with_days),
            verdict(median(&r.with_days) <= 200.0)
        );
        println!(
            "| the same, cold (the first report after the collector starts) | {} | - | - |",
            summary(&r.cold)
        );
        if let Some((lat, bytes)) = &r.http {
            println!(
                "| the same through `GET /api/v1/slas/fleet/report?from=..&to=..` (in-process collector, loopback; {} bytes of JSON) | {} | <= 200 ms | {} |",
                thousands(*bytes as f64),
                summary(lat),
                verdict(median(lat) <= 200.0)
            );
        }
        println!(
            "| of which: the store read (`sla::load::timelines`: {} units, {} down spans) | {} | - | - |",
            thousands(r.units as f64),
            thousands(r.down_spans as f64),
            summary(&r.load)
        );
        println!(
            "| of which: the check runs of the year (`sla::occurrences::count`) | {} | - | - |",
            summary(&r.occ)
        );
        println!(
            "| of which: one view of the year (`sla::compute`, experienced) | {} | - | - |",
            summary(&r.compute)
        );
        println!(
            "| `sla::report` (read, check runs, both views; no daily series) | {} | - | - |",
            summary(&r.no_days)
        );
        println!(
            "| opening the connection (pragmas, migrations check) | {} | - | - |",
            summary(&r.open)
        );
        let c = &r.report.contractual;
        let e = &r.report.experienced;
        println!(
            "| report figures (sanity) | contractual {} (coverage {}, {} outages, excluded {:.1} h), experienced {}, occurrences {}; {} days | 0 < a < 1 | {} |",
            ratio(c.availability),
            ratio(c.coverage),
            thousands(c.outages.len() as f64),
            c.excluded_ms as f64 / HOUR as f64,
            ratio(e.availability),
            ratio(r.report.occurrences.ratio()),
            r.days,
            verdict(c.availability.is_some_and(|x| x > 0.0 && x < 1.0))
        );
        if let Some(q) = &r.quorum {
            println!(
                "| same hosts, host CIs only, quorum 99 % (sanity) | contractual {}, experienced {} | - | - |",
                ratio(q.contractual.availability),
                ratio(q.experienced.availability)
            );
        }
    }
    if let Some(f) = &refresh {
        let c = median(&f.cpu);
        let (lo, hi) = min_max(&f.cpu);
        let share = c / 1e3 / period_s * 100.0;
        println!(
            "| refresh of {} SLAs (`SlaMetrics::refresh`, isolated, fresh connection, cache warm): CPU per refresh | median {c:.0} ms (min {lo:.0}, max {hi:.0}; {} rounds), wall {:.0} ms; {} series | - | - |",
            a.slas,
            f.cpu.len(),
            median(&f.wall),
            f.series
        );
        println!(
            "| the same, cold (the first refresh after a start) | median {:.0} ms CPU ({} rounds) | - | - |",
            median(&f.cold),
            f.cold.len()
        );
        println!(
            "| {} SLAs kept current: CPU share of one core at the {period_s:.0} s refresh period (isolated) | {share:.2} % | <= 1 % | {} |",
            a.slas,
            verdict(share <= 1.0)
        );
        println!(
            "| the same while incidents change (a refresh every {change_s:.0} s, `REFRESH_AFTER_CHANGE`) | {:.2} % | - | - |",
            c / 1e3 / change_s * 100.0
        );
        println!(
            "| of the refresh (per SLA, summed): store read (`load::timelines`) / check runs (`occurrences::count`) / computing | {:.0} ms / {:.0} ms / {:.0} ms | - | - |",
            f.per_sla_load,
            f.per_sla_occ,
            (f.per_sla_total - f.per_sla_load - f.per_sla_occ).max(0.0)
        );
        let windows: Vec<String> = f
            .by_window
            .iter()
            .map(|(w, (n, t))| format!("{w} {:.1} ms x {n}", t / *n as f64))
            .collect();
        println!("| CPU per SLA by window | {} | - | - |", windows.join(", "));
        if let Some((name, w, units, t, _, _)) = f.top.first() {
            println!("| costliest SLA | {name} ({w}, {units} units): {t:.1} ms | - | - |");
        }
    }
    if let Some(s) = &stream {
        let pick = |with: bool| -> Vec<f64> {
            s.runs
                .iter()
                .filter(|r| r.with_slas == with)
                .map(|r| r.cores)
                .collect()
        };
        let (without, with) = (pick(false), pick(true));
        let list = |v: &[f64]| {
            v.iter()
                .map(|x| format!("{:.3}", x))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let diff = (median(&with) - median(&without)) * 100.0;
        println!(
            "| collector CPU, {} agents x {} metrics every {} s, no SLAs / {} SLAs (ABBA, medians) | {:.3} / {:.3} cores ({} / {}) | - | - |",
            thousands(a.hosts as f64),
            a.metrics,
            a.stream_interval.as_secs_f64(),
            a.slas,
            median(&without),
            median(&with),
            list(&without),
            list(&with)
        );
        let spread = |v: &[f64]| {
            let max = v.iter().copied().fold(f64::MIN, f64::max);
            let min = v.iter().copied().fold(f64::MAX, f64::min);
            (max - min) * 100.0
        };
        println!(
            "| {} SLAs with {} agents streaming: collector CPU with minus without (ABBA; runs of one kind differ by up to {:.2} % of a core, so this resolves no finer) | {diff:+.2} % of one core | - | - |",
            a.slas,
            thousands(a.hosts as f64),
            spread(&without).max(spread(&with)),
        );
        let task: Vec<(f64, f64)> = s.runs.iter().filter_map(|r| r.sla_task).collect();
        if !task.is_empty() {
            let shares: Vec<f64> = task
                .iter()
                .map(|(cpu, _)| cpu / a.stream_secs as f64 * 100.0)
                .collect();
            let share = median(&shares);
            let refreshes: f64 = task.iter().map(|t| t.1).sum();
            let cpu: f64 = task.iter().map(|t| t.0).sum();
            println!(
                "| {} SLAs kept current with {} agents streaming: the collector's SLA task, its own count (`vigil_sla_refresh_cpu_seconds_total` over each run with SLAs) | {share:.2} % of one core (median of {}; {refreshes:.0} refreshes, {:.0} ms CPU each) | <= 1 % | {} |",
                a.slas,
                thousands(a.hosts as f64),
                shares.len(),
                cpu / refreshes.max(1.0) * 1e3,
                verdict(share <= 1.0)
            );
        }
        if !s.under_load.is_empty() {
            let cpu: Vec<f64> = s.under_load.iter().map(|x| x.0).collect();
            let wall: Vec<f64> = s.under_load.iter().map(|x| x.1).collect();
            let c = median(&cpu);
            println!(
                "| refresh of {} SLAs while the agents stream: CPU per refresh, share at {period_s:.0} s | median {c:.0} ms (wall {:.0} ms; {} refreshes): {:.2} % | <= 1 % | {} |",
                a.slas,
                median(&wall),
                cpu.len(),
                c / 1e3 / period_s * 100.0,
                verdict(c / 1e3 / period_s * 100.0 <= 1.0)
            );
        }
    }
    println!();
    println!(
        "Report: SLA `fleet` (scope `tag = \"fleet=bench\"`: each host's host CI, two filesystems and two checks; default `down_when`; \
         any unit down is the service down), from now - 365 d to now; each run opens a new connection as the store does \
         (the file in the page cache) and reads everything again. Refresh: {} SLAs of different scopes (role, data centre, \
         host glob, the fleet, host CIs only), windows (1d-90d rolling, week, month, quarter), zones, service hours, quorums \
         and degradations; CPU of the refreshing thread. Streaming: the collector in this process on a fresh copy of the \
         store per run, built-in rules off in both runs of a pair; its CPU is the process's minus the load generator's threads.",
        a.slas
    );
    if b.args.keep {
        let kept = temp.keep();
        say!("kept {}", kept.display());
    }
    Ok(())
}
