//! `vigil-collector quickstart`: the main job in one command. A collector on embedded defaults
//! (CA generated on first start, SQLite in the data dir), an admin API token, and an agent for
//! this host running in the same process, enrolled automatically. Prints where everything is.
//!
//! Idempotent: a second start reuses the CA, the admin token and the local agent's identity.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio_util::sync::CancellationToken;
use vigil_agent::embedded::LocalAgent;

use crate::admin;
use crate::app;
use crate::ca::write_file;
use crate::config::CollectorConfig;
use crate::store::{Db, Role};

pub struct Options {
    pub data_dir: PathBuf,
    pub http: SocketAddr,
    pub quic: SocketAddr,
    pub agent: bool,
}

/// Example rules and SLA loaded by quickstart (the same file `config/` ships).
const EXAMPLE_RULES: &str = include_str!("../../config/rules.d/example.toml");
const EXAMPLE_RULES_NAME: &str = "config/rules.d/example.toml";

/// How often the local agent samples this host.
const LOCAL_AGENT_INTERVAL: Duration = Duration::from_secs(10);

/// The admin API token quickstart prints, kept (0600) so later starts print the same one.
const ADMIN_TOKEN_FILE: &str = "admin-token";
/// The password of the console user `admin` quickstart makes, kept (0600) likewise.
const ADMIN_PASSWORD_FILE: &str = "admin-password";

pub async fn run(opts: Options) -> Result<()> {
    let mut signals = vigil_runtime::signal::listen()?;
    let mut config = CollectorConfig::defaults_in(&opts.data_dir);
    config.http.listen = opts.http;
    config.quic.listen = opts.quic;
    let examples = crate::config::from_str(EXAMPLE_RULES_NAME, EXAMPLE_RULES)
        .map_err(|e| anyhow::anyhow!("embedded example rules are invalid:\n{e}"))?;
    config.rules = examples.rules;
    config.slas = examples.slas;
    let running = app::start(&config).await?;

    let dir = opts.data_dir.clone();
    let (admin_token, admin_password, agent_token) =
        tokio::task::spawn_blocking(move || -> Result<_> {
            let db = Db::open(&dir)?;
            let path = dir.join(ADMIN_TOKEN_FILE);
            let admin_token = match std::fs::read_to_string(&path) {
                Ok(t) if !t.trim().is_empty() => t.trim().to_string(),
                _ => {
                    let (_, token) = db.create_api_token(
                        Role::Admin,
                        "quickstart",
                        vigil_runtime::clock::now_ms(),
                    )?;
                    write_file(&path, token.as_bytes(), true)?;
                    token
                }
            };
            // A console user `admin`, unless one was made by hand (then its password is the
            // administrator's, and not printed).
            let path = dir.join(ADMIN_PASSWORD_FILE);
            let admin_password = match std::fs::read_to_string(&path) {
                Ok(p) if !p.trim().is_empty() => Some(p.trim().to_string()),
                _ => {
                    let password = vigil_shared::identity::random_secret(20);
                    let now = vigil_runtime::clock::now_ms();
                    match db.create_user("admin", Role::Admin, &password, now) {
                        Ok(()) => {
                            write_file(&path, password.as_bytes(), true)?;
                            Some(password)
                        }
                        Err(crate::store::users::UserError::Exists(_)) => None,
                        Err(e) => return Err(e.into()),
                    }
                }
            };
            let agent_dir = dir.join("agent");
            let agent_token = if agent_dir.join("agent-id").exists() {
                None
            } else {
                Some(
                    admin::create_enroll_token(&dir, &db, Duration::from_secs(600), true)?
                        .to_string(),
                )
            };
            Ok((admin_token, admin_password, agent_token))
        })
        .await??;

    let shutdown = CancellationToken::new();
    let agent = opts.agent.then(|| {
        tokio::spawn(vigil_agent::embedded::run(
            LocalAgent {
                collector: running.quic_addr,
                token: agent_token,
                data_dir: opts.data_dir.join("agent"),
                interval: LOCAL_AGENT_INTERVAL,
            },
            shutdown.clone(),
        ))
    });

    let quic = running.quic_addr;
    let http = running.http_addr;
    let data_dir = std::fs::canonicalize(&opts.data_dir).unwrap_or(opts.data_dir.clone());
    println!("Vigil is running.");
    println!("  Console:      http://{http}/");
    match &admin_password {
        Some(p) => println!("  Log in as:    admin / {p}"),
        None => println!(
            "  Log in as:    admin (its password is yours: `vigil-collector user passwd admin`)"
        ),
    }
    println!("  Metrics:      http://{http}/metrics");
    println!(
        "  API (admin):  curl -H 'Authorization: Bearer {admin_token}' http://{http}/api/v1/agents"
    );
    println!("  Data:         {}", data_dir.display());
    if opts.agent {
        println!("  Local agent:  enrolled and streaming this host every 10s");
    }
    let rules: Vec<_> = config
        .effective_rules()
        .into_iter()
        .map(|r| r.name)
        .collect();
    let slas: Vec<_> = config.slas.iter().map(|s| s.name.as_str()).collect();
    println!(
        "  Rules:        {} (built-in and examples; SLA: {})",
        rules.join(", "),
        slas.join(", ")
    );
    println!();
    println!("Enroll another host (QUIC listens on {quic}; use --quic 0.0.0.0:4433 to accept other hosts):");
    println!(
        "  vigil-collector token create --data-dir {}",
        data_dir.display()
    );
    println!("  vigil-agent run --collector <this-host>:{} --token <TOKEN> --data-dir /var/lib/vigil-agent", quic.port());
    println!();
    println!("Press Ctrl-C to stop.");

    let mut agent = agent;
    let agent_ended = async {
        match agent.as_mut() {
            Some(handle) => handle.await,
            None => std::future::pending().await,
        }
    };
    let mut failure = None;
    tokio::select! {
        _ = signals.recv() => {}
        f = running.failed() => failure = Some(f),
        res = agent_ended => {
            agent = None;
            match res {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::error!(error = %format!("{e:#}"), "local agent stopped"),
                Err(e) => tracing::error!(error = %e, "local agent task failed"),
            }
            tokio::select! {
                _ = signals.recv() => {}
                f = running.failed() => failure = Some(f),
            }
        }
    }
    shutdown.cancel();
    // The agent says goodbye before the collector stops listening.
    if let Some(handle) = agent {
        if tokio::time::timeout(Duration::from_secs(10), handle)
            .await
            .is_err()
        {
            tracing::warn!("the local agent did not stop within 10 s");
        }
    }
    running
        .stop()
        .await
        .context("collector did not stop cleanly")?;
    match failure {
        Some(f) => anyhow::bail!("the {} {}: the collector stopped", f.component, f.why),
        None => Ok(()),
    }
}
