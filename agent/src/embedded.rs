//! The one way to run an agent inside another program: the collector's `quickstart` runs an
//! agent for its own host in its own process, so that one command gives a working system.
//!
//! Narrow on purpose: the caller says where the collector is, where the agent keeps its
//! identity and spool, how often it samples, and when to stop; nothing else of the agent's
//! configuration or loops is reachable from here. The agent leaves the host program's
//! allocator alone ([`crate::Process::Embedded`]).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use tokio_util::sync::CancellationToken;

use crate::config::AgentConfig;
use crate::run;
use crate::Process;

/// An agent for this host, run in the caller's process.
#[derive(Debug, Clone)]
pub struct LocalAgent {
    /// The collector's QUIC address.
    pub collector: SocketAddr,
    /// An enrollment token, needed only when `data_dir` holds no identity yet.
    pub token: Option<String>,
    /// Where the agent keeps its key, certificate and spool.
    pub data_dir: PathBuf,
    /// Sampling interval (at least 1 s).
    pub interval: Duration,
}

/// Runs the agent until `shutdown` is cancelled (it says goodbye first) or the collector
/// refuses it for good (an error).
pub async fn run(agent: LocalAgent, shutdown: CancellationToken) -> Result<()> {
    let mut config = AgentConfig::from_flags(
        &agent.collector.to_string(),
        agent.token,
        Some(agent.data_dir),
    )
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    config.metrics_interval = agent.interval.max(Duration::from_secs(1));
    run::run(config, Process::Embedded, shutdown).await
}
