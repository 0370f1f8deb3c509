//! `vigil-collector`: parse arguments and load configuration (no I/O beyond reading the file),
//! then hand over to the library: `app::start` binds and spawns, `vigil_runtime::signal` waits,
//! `Running::stop` drains under a deadline.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use vigil_collector::admin::AdminStore;
use vigil_collector::config::{self, CollectorConfig};
use vigil_collector::quickstart;
use vigil_collector::store::Role;
use vigil_collector::{admin, app};
use vigil_runtime::clock::now_ms;
use vigil_runtime::logging::LogFormat;

#[derive(Parser)]
#[command(
    name = "vigil-collector",
    version,
    propagate_version = true,
    about = "Vigil collector: agents stream to it over QUIC; it keeps the CMDB, incidents and SLAs and serves /metrics"
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
    /// Everything in one command on embedded defaults: collector, CA, a local agent, example rules.
    Quickstart {
        /// Where the store, the CA, the admin token and the local agent's files live.
        #[arg(long, default_value = "./vigil-data")]
        data_dir: PathBuf,
        /// Address of the console, the API and /metrics (IP:PORT).
        #[arg(long, default_value = "127.0.0.1:8080")]
        http: SocketAddr,
        /// Address agents connect to over QUIC (IP:PORT, UDP); 0.0.0.0:4433 accepts other hosts.
        #[arg(long, default_value = "127.0.0.1:4433")]
        quic: SocketAddr,
        /// Don't start the local agent.
        #[arg(long)]
        no_agent: bool,
    },
    /// Run the collector from a configuration file.
    Serve {
        /// The collector's configuration file (TOML; see config/collector.toml).
        #[arg(long)]
        config: PathBuf,
    },
    /// Validate a configuration file: exit 0, or print every error as file:line:col: message.
    CheckConfig {
        /// The configuration file to check, with the files it includes.
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
    /// Console users (they log in at the console with a password).
    User {
        #[command(subcommand)]
        command: UserCommand,
    },
    /// Service level objectives.
    Slo {
        #[command(subcommand)]
        command: SloCommand,
    },
}

#[derive(Subcommand)]
enum SloCommand {
    /// Print every SLA of a configuration as OpenSLO v1 YAML (`kind: SLO` documents); a file of
    /// them can be included back (`include = ["slo/*.yaml"]`).
    Export {
        /// The collector's configuration file, with the files it includes.
        #[arg(long)]
        config: PathBuf,
        /// The output format.
        #[arg(long, value_enum, default_value = "openslo")]
        format: SloFormat,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum SloFormat {
    Openslo,
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
        /// How long the token can be used, e.g. 1h, 7d [default: `enroll.token_ttl` of --config,
        /// else 24h].
        #[arg(long, value_parser = parse_duration)]
        ttl: Option<Duration>,
        /// The token enrolls one agent only.
        #[arg(long)]
        single_use: bool,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// List enrollment tokens: id, created, expires, single use, used (and by which agent),
    /// revoked. Secrets are never shown (only their hash is stored).
    List {
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Revoke an enrollment token by id (the part after `v1.`).
    Revoke {
        /// The token's id: the second part of `v1.<id>.<secret>.<pin>`.
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
        /// The agent's id, as `agent list` shows it.
        id: String,
        #[command(flatten)]
        store: StoreArgs,
    },
}

#[derive(Subcommand)]
enum ApiTokenCommand {
    /// Print a new API bearer token.
    Create {
        /// What the token may do: viewer reads, operator also works incidents and maintenance,
        /// admin also manages rules, agents and tokens.
        #[arg(long, value_enum)]
        role: RoleArg,
        /// A name to recognise the token by in `GET /api/v1/tokens`.
        #[arg(long, default_value = "")]
        name: String,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Revoke an API token by id.
    Revoke {
        /// The token's id, as `GET /api/v1/tokens` shows it.
        id: String,
        #[command(flatten)]
        store: StoreArgs,
    },
}

#[derive(Subcommand)]
enum UserCommand {
    /// Add a user. The password is read from the terminal (twice), or else from the first line
    /// of standard input; it is stored as an argon2id hash.
    Create {
        /// Letters, digits, '.', '_', '-' or '@' (at most 64).
        name: String,
        /// What the user may do: viewer reads, operator also works incidents and maintenance,
        /// admin also manages rules, SLAs, agents, users and tokens.
        #[arg(long, value_enum)]
        role: RoleArg,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Set a user's password (read as for `create`), and its role with --role; every session it
    /// has ends.
    Passwd {
        /// The user's name.
        name: String,
        /// A new role for the user (else it keeps its role).
        #[arg(long, value_enum)]
        role: Option<RoleArg>,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Disable a user: it cannot log in, and its sessions end at once.
    Disable {
        /// The user's name.
        name: String,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// List users: name, role, created, last login, disabled.
    List {
        #[command(flatten)]
        store: StoreArgs,
    },
}

/// A new password: from the terminal (asked twice, not echoed), or the first line of stdin.
fn read_new_password() -> Result<String> {
    use std::io::IsTerminal;
    if std::io::stdin().is_terminal() {
        let first = rpassword::prompt_password("New password: ")?;
        let again = rpassword::prompt_password("Repeat it: ")?;
        anyhow::ensure!(first == again, "the passwords differ");
        return Ok(first);
    }
    let mut line = String::new();
    // Bounded: a password is at most MAX_PASSWORD bytes, so a longer line is refused anyway.
    std::io::Read::read_to_string(
        &mut std::io::Read::take(std::io::stdin().lock(), 4096),
        &mut line,
    )
    .context("cannot read the password from standard input")?;
    Ok(line.lines().next().unwrap_or("").to_owned())
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    vigil_shared::config::parse_duration(s)
}

/// `--role`: the roles of the API, for clap to list.
#[derive(Clone, Copy, ValueEnum)]
enum RoleArg {
    Viewer,
    Operator,
    Admin,
}

impl From<RoleArg> for Role {
    fn from(r: RoleArg) -> Role {
        match r {
            RoleArg::Viewer => Role::Viewer,
            RoleArg::Operator => Role::Operator,
            RoleArg::Admin => Role::Admin,
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    vigil_runtime::logging::init(cli.log_format);
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

/// The store an admin command names, and the token lifetime its configuration sets.
fn open_store(store: &StoreArgs) -> Result<(AdminStore, Duration)> {
    let (dir, ttl) = match (&store.config, &store.data_dir) {
        (Some(path), _) => {
            let c = load_config(path)?;
            (c.data_dir, c.enroll.token_ttl)
        }
        (None, Some(dir)) => (dir.clone(), config::DEFAULT_TOKEN_TTL),
        (None, None) => anyhow::bail!("give --config FILE or --data-dir DIR"),
    };
    Ok((admin::open_existing(&dir)?, ttl))
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
                let mut signals = vigil_runtime::signal::listen()?;
                let running = app::start(&config).await?;
                println!(
                    "vigil-collector listening: QUIC {}, HTTP {}://{}/",
                    running.quic_addr,
                    if config.http.tls.is_some() {
                        "https"
                    } else {
                        "http"
                    },
                    running.http_addr
                );
                let failure = tokio::select! {
                    _ = signals.recv() => None,
                    f = running.failed() => Some(f),
                };
                running.stop().await?;
                match failure {
                    // Exit non-zero, so that a supervisor restarts the collector.
                    Some(f) => anyhow::bail!(
                        "the {} {}: the collector stopped",
                        f.component,
                        if f.why == "panicked" {
                            "panicked"
                        } else {
                            "died"
                        }
                    ),
                    None => Ok(()),
                }
            })?;
        }
        Command::Slo {
            command: SloCommand::Export { config, format },
        } => {
            let config = load_config(&config)?;
            match format {
                SloFormat::Openslo => {
                    let yaml = vigil_collector::sla::openslo::export(&config.slas)
                        .map_err(|e| anyhow::anyhow!("cannot write OpenSLO: {e}"))?;
                    print!("{yaml}");
                }
            }
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
                let (store, default_ttl) = open_store(&store)?;
                let token = store.create_enroll_token(ttl.unwrap_or(default_ttl), single_use)?;
                println!("{token}");
            }
            TokenCommand::List { store } => {
                let (AdminStore { db, .. }, _) = open_store(&store)?;
                let time = |ms: Option<i64>| {
                    ms.and_then(vigil_shared::time::format_rfc3339_ms)
                        .unwrap_or_else(|| "-".into())
                };
                println!("id\tcreated\texpires\tsingle_use\tused\tused_by\trevoked");
                for t in db.list_enroll_tokens()? {
                    println!(
                        "{}\t{}\t{}\t{}\t{}\t{}\t{}",
                        t.id,
                        time(Some(t.created_at_ms)),
                        time(Some(t.expires_at_ms)),
                        t.single_use,
                        time(t.used_at_ms),
                        t.used_by.as_deref().unwrap_or("-"),
                        time(t.revoked_at_ms),
                    );
                }
            }
            TokenCommand::Revoke { id, store } => {
                let (AdminStore { db, .. }, _) = open_store(&store)?;
                admin::found(
                    db.revoke_enroll_token(&id, now_ms())?,
                    "enrollment token",
                    &id,
                )?;
                eprintln!("enrollment token {id} revoked");
            }
        },
        Command::Agent { command } => match command {
            AgentCommand::List { store } => {
                let (AdminStore { db, .. }, _) = open_store(&store)?;
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
                let (AdminStore { db, .. }, _) = open_store(&store)?;
                admin::found(db.revoke_agent(&id, now_ms())?, "agent", &id)?;
                eprintln!("agent {id} revoked");
            }
        },
        Command::User { command } => match command {
            UserCommand::Create { name, role, store } => {
                let (AdminStore { db, .. }, _) = open_store(&store)?;
                let password = read_new_password()?;
                let role = Role::from(role);
                db.create_user(&name, role, &password, now_ms())?;
                eprintln!("user {name} ({role}) created");
            }
            UserCommand::Passwd { name, role, store } => {
                let (AdminStore { db, .. }, _) = open_store(&store)?;
                let password = read_new_password()?;
                db.set_password(&name, &password, role.map(Role::from), now_ms())?;
                eprintln!("password of {name} set; its sessions ended");
            }
            UserCommand::Disable { name, store } => {
                let (AdminStore { db, .. }, _) = open_store(&store)?;
                if db.disable_user(&name, now_ms())? {
                    eprintln!("user {name} disabled; its sessions ended");
                } else {
                    eprintln!("user {name} was already disabled");
                }
            }
            UserCommand::List { store } => {
                let (AdminStore { db, .. }, _) = open_store(&store)?;
                let t = |ms: Option<i64>| {
                    ms.and_then(vigil_shared::time::format_rfc3339_ms)
                        .unwrap_or_else(|| "-".into())
                };
                println!("NAME\tROLE\tCREATED\tLAST LOGIN\tDISABLED");
                for u in db.list_users()? {
                    println!(
                        "{}\t{}\t{}\t{}\t{}",
                        u.name,
                        u.role,
                        t(Some(u.created_ms)),
                        t(u.last_login_ms),
                        t(u.disabled_ms)
                    );
                }
            }
        },
        Command::ApiToken { command } => match command {
            ApiTokenCommand::Create { role, name, store } => {
                let (AdminStore { db, .. }, _) = open_store(&store)?;
                let role = Role::from(role);
                let (id, token) = db.create_api_token(role, &name, now_ms())?;
                eprintln!("API token {id} ({role}) created; it is shown only once:");
                println!("{token}");
            }
            ApiTokenCommand::Revoke { id, store } => {
                let (AdminStore { db, .. }, _) = open_store(&store)?;
                admin::found(db.revoke_api_token(&id, now_ms())?, "API token", &id)?;
                eprintln!("API token {id} revoked");
            }
        },
    }
    Ok(ExitCode::SUCCESS)
}
