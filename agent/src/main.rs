//! `vigil-agent`: parse arguments, load configuration, run. Everything else is in the library.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;
use vigil_agent::config::AgentConfig;
use vigil_agent::simulate::{self, SimulateOptions};
use vigil_runtime::logging::LogFormat;

#[derive(Parser)]
#[command(
    name = "vigil-agent",
    version,
    propagate_version = true,
    about = "Vigil agent: host metrics and checks, streamed to a Vigil collector over QUIC"
)]
struct Cli {
    /// Log line format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the agent: enroll on first start, then sample and stream to the collector.
    Run {
        /// Agent configuration file (TOML). Flags given as well override it.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Collector address, HOST:PORT.
        #[arg(long)]
        collector: Option<String>,
        /// Enrollment token from `vigil-collector token create` (first run only).
        #[arg(long, env = "VIGIL_TOKEN", hide_env_values = true)]
        token: Option<String>,
        /// Where the agent keeps its key, certificate and spool.
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Sampling interval (e.g. 10s; at least 1s).
        #[arg(long, value_parser = parse_duration)]
        interval: Option<Duration>,
        /// Discovery interval (e.g. 5m; at least 1s).
        #[arg(long, value_parser = parse_duration)]
        discovery_interval: Option<Duration>,
        /// Filesystem root discovery reads /proc, /sys, /etc and /var from (default /).
        #[arg(long)]
        root: Option<PathBuf>,
    },
    /// Run discovery once and print the configuration items this host would report.
    Inventory {
        /// Print the canonical inventory as JSON (otherwise a short table).
        #[arg(long)]
        json: bool,
        /// Filesystem root to read /proc, /sys, /etc and /var from (default: `root` of the
        /// config file, else /).
        #[arg(long)]
        root: Option<PathBuf>,
        /// Agent configuration file: its tags, hostname and root apply.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Load generator: N simulated agents over real mutually authenticated QUIC connections.
    Simulate {
        /// How many agents to simulate, each with its own identity and connection.
        #[arg(long, default_value_t = 10)]
        agents: usize,
        /// Collector address, HOST:PORT.
        #[arg(long)]
        collector: String,
        /// Enrollment token (not needed when --data-dir holds identities from an earlier run).
        #[arg(long, env = "VIGIL_TOKEN", hide_env_values = true)]
        token: Option<String>,
        /// Time between batches of one agent; 0s sends as fast as acknowledgements allow.
        #[arg(long, default_value = "10s", value_parser = parse_duration)]
        interval: Duration,
        /// Samples in each batch of one agent.
        #[arg(long, default_value_t = 100)]
        metrics_per_agent: usize,
        /// How long to send before printing the report.
        #[arg(long, default_value = "60s", value_parser = parse_duration)]
        duration: Duration,
        /// Keep the simulated agents' identities here and reuse them on later runs.
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Unacknowledged batches one simulated agent may have in flight.
        #[arg(long, default_value_t = 32)]
        window: u64,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    vigil_shared::config::parse_duration(s)
}

/// One malloc arena: the agent has a handful of threads (the runtime, the blocking pool that
/// runs discovery) and no allocation contention, and each extra glibc arena keeps its own
/// retained memory (measured: ~0.6 MiB of the agent's RSS).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn limit_malloc_arenas() {
    // SAFETY: mallopt only sets an allocator parameter; called first thing in main, before any
    // other thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn limit_malloc_arenas() {}

/// The exit status when the collector refused this agent for good (revoked, enrollment refused,
/// a collector that does not hold the pinned CA): restarting cannot help, so the systemd unit
/// names it in `RestartPreventExitStatus` (78 is `EX_CONFIG` of sysexits.h).
const REFUSED_EXIT_CODE: u8 = 78;

fn main() -> ExitCode {
    limit_malloc_arenas();
    let cli = Cli::parse();
    vigil_runtime::logging::init(cli.log_format);
    match real_main(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vigil-agent: {e:#}");
            let refused = e
                .chain()
                .filter_map(|c| c.downcast_ref::<vigil_agent::client::ClientError>())
                .any(|c| c.is_fatal());
            if refused {
                ExitCode::from(REFUSED_EXIT_CODE)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

fn real_main(command: Command) -> Result<()> {
    match command {
        Command::Run {
            config,
            collector,
            token,
            data_dir,
            interval,
            discovery_interval,
            root,
        } => {
            let mut cfg = match &config {
                Some(path) => {
                    vigil_agent::config::load(path).map_err(|e| anyhow::anyhow!("{e}"))?
                }
                None => {
                    let collector = collector
                        .clone()
                        .context("give --config FILE or --collector HOST:PORT")?;
                    AgentConfig::from_flags(&collector, token.clone(), data_dir.clone())
                        .map_err(|e| anyhow::anyhow!("{e}"))?
                }
            };
            if let Some(c) = collector {
                cfg.collector = c;
            }
            if token.is_some() {
                cfg.token = token;
            }
            if let Some(d) = data_dir {
                cfg.data_dir = d;
            }
            if let Some(i) = interval {
                anyhow::ensure!(
                    i >= Duration::from_secs(1),
                    "--interval must be at least 1s"
                );
                cfg.metrics_interval = i;
            }
            if let Some(i) = discovery_interval {
                anyhow::ensure!(
                    i >= Duration::from_secs(1),
                    "--discovery-interval must be at least 1s"
                );
                cfg.discovery_interval = i;
            }
            if let Some(r) = root {
                cfg.root = r;
            }
            // The agent is small: one thread is plenty and keeps its memory low.
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async {
                let mut signals = vigil_runtime::signal::listen()?;
                let shutdown = CancellationToken::new();
                let agent = tokio::spawn(vigil_agent::run::run(
                    cfg,
                    vigil_agent::Process::Own,
                    shutdown.clone(),
                ));
                tokio::pin!(agent);
                tokio::select! {
                    res = &mut agent => return res?,
                    _ = signals.recv() => {}
                }
                shutdown.cancel();
                match tokio::time::timeout(Duration::from_secs(10), agent).await {
                    Ok(res) => res?,
                    Err(_) => anyhow::bail!("agent did not stop within 10 s"),
                }
            })
        }
        Command::Inventory { json, root, config } => inventory(json, root, config),
        Command::Simulate {
            agents,
            collector,
            token,
            interval,
            metrics_per_agent,
            duration,
            data_dir,
            window,
            json,
        } => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            let report = rt.block_on(simulate::simulate(SimulateOptions {
                agents,
                collector,
                token,
                interval,
                metrics_per_agent,
                duration,
                data_dir,
                window,
            }))?;
            if json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                println!("{report}");
            }
            Ok(())
        }
    }
}

/// `vigil-agent inventory`: one discovery pass, problems as warnings on stderr.
fn inventory(json: bool, root: Option<PathBuf>, config: Option<PathBuf>) -> Result<()> {
    let cfg = config
        .as_deref()
        .map(vigil_agent::config::load)
        .transpose()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let opts = vigil_agent::discovery::Options {
        root: root
            .or_else(|| cfg.as_ref().map(|c| c.root.clone()))
            .unwrap_or_else(|| PathBuf::from("/")),
        tags: cfg.as_ref().map(|c| c.tags.clone()).unwrap_or_default(),
        hostname: cfg.as_ref().and_then(|c| c.hostname.clone()),
    };
    anyhow::ensure!(
        opts.root.is_dir(),
        "root {} is not a directory",
        opts.root.display()
    );
    let found = vigil_agent::discovery::discover(&opts);
    for p in &found.problems {
        eprintln!("warning: {}: {}", p.source, p.message);
    }
    match print_inventory(&found, json) {
        // `vigil-agent inventory | head` is not an error.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => Ok(other?),
    }
}

fn print_inventory(found: &vigil_agent::discovery::Discovered, json: bool) -> std::io::Result<()> {
    use std::io::Write;
    let inv = &found.inventory;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    if json {
        serde_json::to_writer_pretty(&mut out, inv)?;
        writeln!(out)?;
        return out.flush();
    }
    let width =
        |f: fn(&vigil_shared::inventory::Ci) -> usize| inv.cis.iter().map(f).max().unwrap_or(0);
    let (tw, kw) = (
        width(|c| c.ci_type.len()).max(4),
        width(|c| c.key.len()).clamp(3, 48),
    );
    writeln!(out, "{:tw$}  {:kw$}  NAME", "TYPE", "KEY")?;
    let mut per_type: std::collections::BTreeMap<&str, usize> = Default::default();
    for c in &inv.cis {
        writeln!(out, "{:tw$}  {:kw$}  {}", c.ci_type, c.key, c.name)?;
        *per_type.entry(c.ci_type.as_str()).or_default() += 1;
    }
    let counts: Vec<String> = per_type.iter().map(|(t, n)| format!("{t} {n}")).collect();
    writeln!(
        out,
        "{} CIs ({}), {} relations, {} outbound connections, {} problems",
        inv.cis.len(),
        counts.join(", "),
        inv.relations.len(),
        inv.connections.len(),
        found.problems.len()
    )?;
    out.flush()
}
