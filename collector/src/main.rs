//! `vigil-collector`: parse arguments and load configuration (no I/O beyond reading the file),
//! then hand over to the library: `app::start` binds and spawns, `wait_for_signal` waits,
//! `Running::stop` drains under a deadline.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use vigil_collector::config::{self, CollectorConfig};
use vigil_collector::quickstart;
use vigil_collector::store::{Db, Role};
use vigil_collector::{admin, app};

#[derive(Parser)]
#[command(
    name = "vigil-collector",
    version,
    about = "Vigil collector: agents stream to it over QUIC; it keeps the CMDB, incidents and SLAs and serves /metrics"
)]
struct Cli {
    /// Log line format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Everything in one command on embedded defaults: collector, CA, a local agent, example rules.
    Quickstart {
        #[arg(long, default_value = "./vigil-data")]
        data_dir: PathBuf,
        #[arg(long, default_value = "127.0.0.1:8080")]
        http: SocketAddr,
        #[arg(long, default_value = "127.0.0.1:4433")]
        quic: SocketAddr,
        /// Don't start the local agent.
        #[arg(long)]
        no_agent: bool,
    },
    /// Run the collector from a configuration file.
    Serve {
        #[arg(long)]
        config: PathBuf,
    },
    /// Validate a configuration file: exit 0, or print every error as file:line:col: message.
    CheckConfig {
        #[arg(long)]
        config: PathBuf,
    },
    /// Enrollment tokens for agents.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Enrolled agents.
    Agent {
        #[command(subcommand)]
        command: AgentCommand,
    },
    /// Bearer tokens for the HTTP API.
    ApiToken {
        #[command(subcommand)]
        command: ApiTokenCommand,
    },
}

/// Which store an admin command works on (it may be in use by a running collector).
#[derive(Args, Clone)]
#[group(required = true, multiple = false)]
struct StoreArgs {
    /// The collector's configuration file (its data_dir is used).
    #[arg(long)]
    config: Option<PathBuf>,
    /// The collector's data directory.
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Print a new enrollment token (it pins this collector's CA).
    Create {
        /// How long the token can be used, e.g. 1h, 7d.
        #[arg(long, default_value = "24h", value_parser = parse_duration)]
        ttl: Duration,
        /// The token enrolls one agent only.
        #[arg(long)]
        single_use: bool,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Revoke an enrollment token by id (the part after `v1.`).
    Revoke {
        id: String,
        #[command(flatten)]
        store: StoreArgs,
    },
}

#[derive(Subcommand)]
enum AgentCommand {
    /// List enrolled agents.
    List {
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Revoke an agent's certificate: a running collector drops its connection within a second.
    Revoke {
        id: String,
        #[command(flatten)]
        store: StoreArgs,
    },
}

#[derive(Subcommand)]
enum ApiTokenCommand {
    /// Print a new API bearer token.
    Create {
        #[arg(long, value_parser = parse_role)]
        role: Role,
        #[arg(long, default_value = "")]
        name: String,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Revoke an API token by id.
    Revoke {
        id: String,
        #[command(flatten)]
        store: StoreArgs,
    },
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    vigil_shared::config::parse_duration(s)
}

fn parse_role(s: &str) -> Result<Role, String> {
    s.parse()
        .map_err(|_| format!("unknown role {s:?}: viewer, operator or admin"))
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("VIGIL_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,quinn=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    match real_main(cli.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("vigil-collector: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn load_config(path: &Path) -> Result<CollectorConfig> {
    config::load(path).map_err(|errors| anyhow::anyhow!("invalid configuration:\n{errors}"))
}

fn data_dir(store: &StoreArgs) -> Result<PathBuf> {
    match (&store.config, &store.data_dir) {
        (Some(path), _) => Ok(load_config(path)?.data_dir),
        (None, Some(dir)) => Ok(dir.clone()),
        (None, None) => anyhow::bail!("give --config FILE or --data-dir DIR"),
    }
}

fn open_db(store: &StoreArgs) -> Result<(PathBuf, Db)> {
    let dir = data_dir(store)?;
    let db =
        Db::open(&dir).with_context(|| format!("cannot open the store in {}", dir.display()))?;
    Ok((dir, db))
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

fn real_main(command: Command) -> Result<ExitCode> {
    match command {
        Command::Quickstart {
            data_dir,
            http,
            quic,
            no_agent,
        } => {
            runtime()?.block_on(quickstart::run(quickstart::Options {
                data_dir,
                http,
                quic,
                agent: !no_agent,
            }))?;
        }
        Command::Serve { config } => {
            let config = load_config(&config)?;
            runtime()?.block_on(async {
                let running = app::start(&config).await?;
                println!(
                    "vigil-collector listening: QUIC {}, HTTP http://{}/",
                    running.quic_addr, running.http_addr
                );
                app::wait_for_signal().await;
                running.stop().await
            })?;
        }
        Command::CheckConfig { config } => match config::load(&config) {
            Ok(_) => println!("{}: ok", config.display()),
            Err(errors) => {
                eprintln!("{errors}");
                return Ok(ExitCode::FAILURE);
            }
        },
        Command::Token { command } => match command {
            TokenCommand::Create {
                ttl,
                single_use,
                store,
            } => {
                let (dir, db) = open_db(&store)?;
                let token = admin::create_enroll_token(&dir, &db, ttl, single_use)?;
                println!("{token}");
            }
            TokenCommand::Revoke { id, store } => {
                let (_, db) = open_db(&store)?;
                admin::found(
                    db.revoke_enroll_token(&id, admin::now_ms())?,
                    "enrollment token",
                    &id,
                )?;
                eprintln!("enrollment token {id} revoked");
            }
        },
        Command::Agent { command } => match command {
            AgentCommand::List { store } => {
                let (_, db) = open_db(&store)?;
                for a in db.list_agents()? {
                    println!(
                        "{}\t{}\t{}\t{}",
                        a.id,
                        a.hostname,
                        if a.is_revoked() {
                            "revoked"
                        } else if a.connected {
                            "connected"
                        } else {
                            "disconnected"
                        },
                        a.last_seq
                            .map(|s| s.to_string())
                            .unwrap_or_else(|| "-".into())
                    );
                }
            }
            AgentCommand::Revoke { id, store } => {
                let (_, db) = open_db(&store)?;
                admin::found(db.revoke_agent(&id, admin::now_ms())?, "agent", &id)?;
                eprintln!("agent {id} revoked");
            }
        },
        Command::ApiToken { command } => match command {
            ApiTokenCommand::Create { role, name, store } => {
                let (_, db) = open_db(&store)?;
                let (id, token) = db.create_api_token(role, &name, admin::now_ms())?;
                eprintln!("API token {id} ({role}) created; it is shown only once:");
                println!("{token}");
            }
            ApiTokenCommand::Revoke { id, store } => {
                let (_, db) = open_db(&store)?;
                admin::found(db.revoke_api_token(&id, admin::now_ms())?, "API token", &id)?;
                eprintln!("API token {id} revoked");
            }
        },
    }
    Ok(ExitCode::SUCCESS)
}
