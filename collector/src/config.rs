//! The collector's configuration: `collector.toml` plus the files its `include` globs name,
//! turned into a validated [`CollectorConfig`] before anything binds (`docs/reference.md`, section 4).
//!
//! Two layers: the private `Raw*` serde structs mirror the files with every
//! leaf [`Spanned`]; the conversion builds typed values ([`SocketAddr`], [`Duration`],
//! [`glob::Pattern`], [`SlaWindow`], ...) and reports **every** problem of every file at once as
//! `file:line:col: message`, an included file's errors under that file's own name. Raw structs do
//! not use `deny_unknown_fields`: `vigil_shared::config::parse` collects all unknown keys instead,
//! so they are reported together with the value errors.
//!
//! Included files (globs relative to the main file's directory) may hold only `[[rule]]`,
//! `[[sla]]` and `[[maintenance]]`; they cannot include further files. Rule and SLA names are
//! unique across all files.
//!
//! What it must never do: bind, open the store, read environment variables, or panic on any
//! input. Its only I/O is reading the configuration files.

mod includes;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use vigil_shared::config::{self as cfg, ConfigErrors, Diagnostics, SlaWindow, Spanned};

pub use includes::{Files, MemFiles};

use crate::incidents::maintenance::{convert_maintenance, Maintenance, RawMaintenance};
use crate::incidents::rule::{convert_rule, parse_priority, RawRule, Rule};
use crate::incidents::scope::{convert_scope, RawScope};

pub const DEFAULT_DATA_DIR: &str = "./vigil-data";
pub const DEFAULT_QUIC_LISTEN: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 4433);
pub const DEFAULT_HTTP_LISTEN: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 8080);
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(30 * 86_400);
pub const DEFAULT_DOWN_AFTER_INTERVALS: u32 = 3;
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(600);
pub const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(24 * 3600);
pub const DEFAULT_SLA_WINDOW: SlaWindow = SlaWindow::Rolling(Duration::from_secs(30 * 86_400));
/// Configuration files larger than this are refused unread.
pub const MAX_CONFIG_FILE_SIZE: u64 = 1024 * 1024;

/// The collector's validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct CollectorConfig {
    /// SQLite store, CA and server identity live here. A relative path is relative to the
    /// working directory.
    pub data_dir: PathBuf,
    pub quic: QuicConfig,
    pub http: HttpConfig,
    pub store: StoreConfig,
    pub agents: AgentsConfig,
    pub enroll: EnrollConfig,
    pub incidents: IncidentsConfig,
    /// `[[webhook]]`: where incident notifications go.
    pub webhooks: Vec<crate::notify::Webhook>,
    /// `[[rule]]` as written; the rules in force are [`CollectorConfig::effective_rules`].
    pub rules: Vec<Rule>,
    pub slas: Vec<Sla>,
    pub maintenance: Vec<Maintenance>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuicConfig {
    pub listen: SocketAddr,
    /// Extra DNS names / IPs for the server certificate (besides `vigil-collector`).
    pub server_names: Vec<String>,
    /// Bytes of frames in flight, over all connections (`crate::server::budget`).
    pub max_frame_memory: u64,
    /// Bytes of frames in flight on one connection.
    pub max_frame_memory_per_connection: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpConfig {
    pub listen: SocketAddr,
    /// Connection caps and timeouts (`crate::http::serve`).
    pub limits: crate::http::serve::HttpLimits,
    /// How long console sessions last (`session_idle`, `session_max`).
    pub sessions: crate::store::users::SessionPolicy,
    /// `tls_cert` and `tls_key`: the listener serves HTTPS with them (PEM files; relative paths
    /// are relative to the working directory, as `data_dir`).
    pub tls: Option<TlsFiles>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The certificate chain, leaf first.
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreConfig {
    /// How long raw batches are kept.
    pub retention: Duration,
    /// A discovered CI whose host has not reported for this long becomes `stale`.
    pub stale_after: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentsConfig {
    /// A host is down after this many sampling intervals without news from its agent.
    pub down_after_intervals: u32,
    /// Sampling interval pushed to every agent at connect (overrides the agent's own); `None`
    /// lets each agent keep its configured interval.
    pub interval: Option<Duration>,
    /// An agent that said goodbye (a deliberate stop) counts as unreachable only this long
    /// after it.
    pub shutdown_grace: Duration,
    /// Series one agent may have (`/metrics`, the incident engine, the store); samples of more
    /// are refused.
    pub max_series: usize,
    /// Distinct checks one agent may report.
    pub max_checks: usize,
    /// CIs one agent may have in the CMDB.
    pub max_cis: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnrollConfig {
    /// Default lifetime of enrollment tokens.
    pub token_ttl: Duration,
}

/// `[incidents]`: lifecycle and flap detection.
#[derive(Debug, Clone, PartialEq)]
pub struct IncidentsConfig {
    /// A recurrence within this long of resolution reopens the incident instead of a new one.
    pub reopen_within: Duration,
    /// A resolved incident is closed by the system after this long.
    pub close_after: Duration,
    /// Evaluations in the flap history (Nagios: 21).
    pub flap_window: usize,
    /// Percent state change (0..1) at which a series starts flapping.
    pub flap_start: f64,
    /// ... and below which it stops.
    pub flap_stop: f64,
    /// Built-in rules are on unless `builtin_rules = false`.
    pub builtin_rules: bool,
    /// Built-in rules switched off by name.
    pub disable: Vec<String>,
}

impl Default for IncidentsConfig {
    fn default() -> Self {
        IncidentsConfig {
            reopen_within: Duration::from_secs(3600),
            close_after: Duration::from_secs(24 * 3600),
            flap_window: 21,
            flap_start: 0.20,
            flap_stop: 0.05,
            builtin_rules: true,
            disable: Vec::new(),
        }
    }
}

pub use crate::sla::Sla;

impl CollectorConfig {
    /// The rules in force: the built-in ones not disabled nor replaced by a `[[rule]]` of the
    /// same name, then every `[[rule]]`.
    pub fn effective_rules(&self) -> Vec<Rule> {
        crate::incidents::builtin::effective(
            &self.rules,
            self.incidents.builtin_rules,
            &self.incidents.disable,
        )
    }

    /// Every default, with the store in `data_dir` (quickstart, `--data-dir`).
    pub fn defaults_in(data_dir: &Path) -> CollectorConfig {
        CollectorConfig {
            data_dir: data_dir.to_path_buf(),
            quic: QuicConfig {
                listen: DEFAULT_QUIC_LISTEN,
                server_names: Vec::new(),
                max_frame_memory: crate::server::budget::DEFAULT_GLOBAL,
                max_frame_memory_per_connection: crate::server::budget::DEFAULT_PER_CONNECTION,
            },
            http: HttpConfig {
                listen: DEFAULT_HTTP_LISTEN,
                limits: Default::default(),
                sessions: Default::default(),
                tls: None,
            },
            store: StoreConfig {
                retention: DEFAULT_RETENTION,
                stale_after: crate::cmdb::DEFAULT_STALE_AFTER,
            },
            agents: AgentsConfig {
                down_after_intervals: DEFAULT_DOWN_AFTER_INTERVALS,
                interval: None,
                shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
                max_series: crate::latest::MAX_SERIES_PER_HOST,
                max_checks: crate::latest::MAX_CHECKS_PER_HOST,
                max_cis: crate::server::session::DEFAULT_MAX_CIS,
            },
            enroll: EnrollConfig {
                token_ttl: DEFAULT_TOKEN_TTL,
            },
            incidents: IncidentsConfig::default(),
            webhooks: Vec::new(),
            rules: Vec::new(),
            slas: Vec::new(),
            maintenance: Vec::new(),
        }
    }
}

/// Reads and validates `path` and the files it includes from the disk. Every problem comes
/// back at once.
pub fn load(path: &Path) -> Result<CollectorConfig, ConfigErrors> {
    let name = path.display().to_string();
    let text = includes::DiskFiles
        .read(path)
        .map_err(|msg| ConfigErrors::whole_file(&name, msg))?;
    parse(&name, &text, &includes::DiskFiles)
}

/// Validates the text of a collector config that includes nothing (an `include` finds no file):
/// pure, no I/O. `file` names it in messages.
pub fn from_str(file: &str, text: &str) -> Result<CollectorConfig, ConfigErrors> {
    parse(file, text, &includes::NoFiles)
}

/// Validates the text of a collector config; `include` globs (relative to `file`'s directory)
/// are looked up and read through `files`.
pub fn parse(file: &str, text: &str, files: &dyn Files) -> Result<CollectorConfig, ConfigErrors> {
    let (raw, mut d) = cfg::parse::<RawCollector>(file, text)?;
    let mut config = convert_main(&raw, &mut d);
    let mut names = Names::default();
    convert_objects(
        &raw.rule,
        &raw.sla,
        &raw.maintenance,
        &mut config,
        &mut names,
        &mut d,
    );
    includes::load(
        Path::new(file),
        &raw.include,
        files,
        &mut |raw: &RawObjects, d: &mut Diagnostics| {
            convert_objects(
                &raw.rule,
                &raw.sla,
                &raw.maintenance,
                &mut config,
                &mut names,
                d,
            )
        },
        &mut d,
    );
    d.finish(config)
}

// ---------------------------------------------------------------------------------------------
// Raw layer

#[derive(Debug, Deserialize)]
struct RawCollector {
    data_dir: Option<Spanned<String>>,
    #[serde(default)]
    include: Vec<Spanned<String>>,
    quic: Option<RawQuic>,
    http: Option<RawHttp>,
    store: Option<RawStore>,
    agents: Option<RawAgents>,
    enroll: Option<RawEnroll>,
    incidents: Option<RawIncidents>,
    #[serde(default)]
    webhook: Vec<Spanned<RawWebhook>>,
    // The same three keys as `RawObjects`, not `#[serde(flatten)]`: flattening buffers the
    // values, which loses `Spanned` positions and hides unknown keys from `serde_ignored`.
    #[serde(default)]
    rule: Vec<Spanned<RawRule>>,
    #[serde(default)]
    sla: Vec<Spanned<RawSla>>,
    #[serde(default)]
    maintenance: Vec<Spanned<RawMaintenance>>,
}

/// What an included file may hold.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct RawObjects {
    #[serde(default)]
    rule: Vec<Spanned<RawRule>>,
    #[serde(default)]
    sla: Vec<Spanned<RawSla>>,
    #[serde(default)]
    maintenance: Vec<Spanned<RawMaintenance>>,
}

#[derive(Debug, Deserialize)]
struct RawQuic {
    listen: Option<Spanned<String>>,
    server_names: Option<Vec<Spanned<String>>>,
    max_frame_memory: Option<Spanned<String>>,
    max_frame_memory_per_connection: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
struct RawHttp {
    listen: Option<Spanned<String>>,
    max_connections: Option<Spanned<i64>>,
    max_connections_per_address: Option<Spanned<i64>>,
    header_timeout: Option<Spanned<String>>,
    idle_timeout: Option<Spanned<String>>,
    max_exports: Option<Spanned<i64>>,
    session_idle: Option<Spanned<String>>,
    session_max: Option<Spanned<String>>,
    tls_cert: Option<Spanned<String>>,
    tls_key: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
struct RawStore {
    retention: Option<Spanned<String>>,
    stale_after: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
struct RawAgents {
    down_after_intervals: Option<Spanned<i64>>,
    interval: Option<Spanned<String>>,
    shutdown_grace: Option<Spanned<String>>,
    max_series: Option<Spanned<i64>>,
    max_checks: Option<Spanned<i64>>,
    max_cis: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize)]
struct RawEnroll {
    token_ttl: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
struct RawIncidents {
    reopen_within: Option<Spanned<String>>,
    close_after: Option<Spanned<String>>,
    flap_window: Option<Spanned<i64>>,
    flap_start: Option<Spanned<f64>>,
    flap_stop: Option<Spanned<f64>>,
    builtin_rules: Option<bool>,
    #[serde(default)]
    disable: Vec<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
struct RawWebhook {
    name: Option<Spanned<String>>,
    url: Option<Spanned<String>>,
    secret: Option<Spanned<String>>,
    format: Option<Spanned<String>>,
    max_priority: Option<Spanned<String>>,
    #[serde(default)]
    rules: Vec<Spanned<String>>,
    #[serde(default)]
    labels: BTreeMap<String, Spanned<String>>,
    timeout: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
struct RawSla {
    name: Option<Spanned<String>>,
    target: Option<Spanned<f64>>,
    window: Option<Spanned<String>>,
    timezone: Option<Spanned<String>>,
    scope: Option<RawScope>,
    service: Option<Spanned<String>>,
    down_when: Option<Vec<Spanned<String>>>,
    #[serde(default)]
    degraded_when: Vec<Spanned<RawDegraded>>,
    quorum: Option<Spanned<i64>>,
    schedule: Option<Spanned<RawSchedule>>,
    incident_targets: Option<Spanned<BTreeMap<String, Spanned<RawTargetPair>>>>,
    alerts: Option<bool>,
}

#[derive(Debug, Deserialize)]
struct RawTargetPair {
    response: Option<Spanned<String>>,
    resolution: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
struct RawDegraded {
    when: Option<Spanned<String>>,
    weight: Option<Spanned<f64>>,
}

#[derive(Debug, Deserialize)]
struct RawSchedule {
    days: Option<Vec<Spanned<String>>>,
    hours: Option<Spanned<String>>,
    #[serde(default)]
    holidays: Vec<Spanned<String>>,
}

// ---------------------------------------------------------------------------------------------
// Typed layer

fn convert_main(raw: &RawCollector, d: &mut Diagnostics) -> CollectorConfig {
    let data_dir = match &raw.data_dir {
        Some(p) if p.get_ref().is_empty() => {
            d.error_at(p, "`data_dir` must not be empty");
            PathBuf::from(DEFAULT_DATA_DIR)
        }
        Some(p) => PathBuf::from(p.get_ref()),
        None => PathBuf::from(DEFAULT_DATA_DIR),
    };
    let mut config = CollectorConfig::defaults_in(&data_dir);

    if let Some(q) = &raw.quic {
        config.quic.listen = d.socket_addr_or(q.listen.as_ref(), DEFAULT_QUIC_LISTEN);
        for name in q.server_names.iter().flatten() {
            if let Some(n) = d.parse_value(name, |s| validate_server_name(s)) {
                config.quic.server_names.push(n);
            }
        }
        let (min, max) = (1u64 << 20, 64u64 << 30);
        let size = |d: &mut Diagnostics, v: Option<&Spanned<String>>, key: &str| {
            let v = v?;
            let n = d.byte_size(v)?;
            if (min..=max).contains(&n) {
                Some(n)
            } else {
                d.error_at(v, format!("`{key}` must be between 1MiB and 64GiB"));
                None
            }
        };
        if let Some(n) = size(d, q.max_frame_memory.as_ref(), "max_frame_memory") {
            config.quic.max_frame_memory = n;
        }
        if let Some(n) = size(
            d,
            q.max_frame_memory_per_connection.as_ref(),
            "max_frame_memory_per_connection",
        ) {
            config.quic.max_frame_memory_per_connection = n;
        }
        if let Some(v) = &q.max_frame_memory_per_connection {
            if config.quic.max_frame_memory_per_connection > config.quic.max_frame_memory {
                d.error_at(
                    v,
                    "`max_frame_memory_per_connection` must not be larger than `max_frame_memory`",
                );
            }
        }
    }
    if let Some(h) = &raw.http {
        config.http.listen = d.socket_addr_or(h.listen.as_ref(), DEFAULT_HTTP_LISTEN);
        let l = &mut config.http.limits;
        let second = Duration::from_secs(1);
        let hour = Duration::from_secs(3600);
        l.max_connections = count_in(
            d,
            h.max_connections.as_ref(),
            "max_connections",
            1..=1_000_000,
        )
        .unwrap_or(l.max_connections);
        l.max_connections_per_address = count_in(
            d,
            h.max_connections_per_address.as_ref(),
            "max_connections_per_address",
            1..=1_000_000,
        )
        .unwrap_or(l.max_connections_per_address);
        l.header_timeout = duration_in(
            d,
            h.header_timeout.as_ref(),
            "header_timeout",
            second..=hour,
        )
        .unwrap_or(l.header_timeout);
        l.idle_timeout = duration_in(d, h.idle_timeout.as_ref(), "idle_timeout", second..=hour)
            .unwrap_or(l.idle_timeout);
        l.max_exports =
            count_in(d, h.max_exports.as_ref(), "max_exports", 1..=64).unwrap_or(l.max_exports);
        let minute = Duration::from_secs(60);
        let s = &mut config.http.sessions;
        s.idle = duration_in(
            d,
            h.session_idle.as_ref(),
            "session_idle",
            minute..=Duration::from_secs(7 * 86_400),
        )
        .unwrap_or(s.idle);
        s.max = duration_in(
            d,
            h.session_max.as_ref(),
            "session_max",
            minute..=Duration::from_secs(30 * 86_400),
        )
        .unwrap_or(s.max);
        match (&h.tls_cert, &h.tls_key) {
            (None, None) => {}
            (Some(c), Some(k)) => {
                for (v, key) in [(c, "tls_cert"), (k, "tls_key")] {
                    if v.get_ref().is_empty() {
                        d.error_at(v, format!("`{key}` must not be empty"));
                    }
                }
                config.http.tls = Some(TlsFiles {
                    cert: PathBuf::from(c.get_ref()),
                    key: PathBuf::from(k.get_ref()),
                });
            }
            (Some(v), None) => d.error_at(
                v,
                "`tls_cert` needs `tls_key` (the certificate's private key)",
            ),
            (None, Some(v)) => d.error_at(
                v,
                "`tls_key` needs `tls_cert` (the certificate it belongs to)",
            ),
        }
    }
    if let Some(s) = &raw.store {
        config.store.retention =
            positive_duration(d, s.retention.as_ref(), "retention", DEFAULT_RETENTION);
        config.store.stale_after = positive_duration(
            d,
            s.stale_after.as_ref(),
            "stale_after",
            crate::cmdb::DEFAULT_STALE_AFTER,
        );
    }
    if let Some(v) = raw
        .agents
        .as_ref()
        .and_then(|a| a.down_after_intervals.as_ref())
    {
        if let Some(n) = d.parse_value(v, |&n| match u32::try_from(n) {
            Ok(n @ 1..=1000) => Ok(n),
            _ => Err(format!(
                "`down_after_intervals` must be between 1 and 1000, got {n}"
            )),
        }) {
            config.agents.down_after_intervals = n;
        }
    }
    if let Some(v) = raw.agents.as_ref().and_then(|a| a.interval.as_ref()) {
        if let Some(i) = d.duration(v) {
            if i < Duration::from_secs(1) || i > Duration::from_secs(3600) {
                d.error_at(v, "`interval` must be between 1s and 1h");
            } else {
                config.agents.interval = Some(i);
            }
        }
    }
    if let Some(v) = raw.agents.as_ref().and_then(|a| a.shutdown_grace.as_ref()) {
        if let Some(g) = d.duration(v) {
            config.agents.shutdown_grace = g;
        }
    }
    if let Some(a) = &raw.agents {
        let c = &mut config.agents;
        c.max_series =
            count_in(d, a.max_series.as_ref(), "max_series", 1..=1_000_000).unwrap_or(c.max_series);
        c.max_checks =
            count_in(d, a.max_checks.as_ref(), "max_checks", 1..=100_000).unwrap_or(c.max_checks);
        c.max_cis = count_in(d, a.max_cis.as_ref(), "max_cis", 1..=1_000_000).unwrap_or(c.max_cis);
    }
    if let Some(e) = &raw.enroll {
        config.enroll.token_ttl = duration_in(
            d,
            e.token_ttl.as_ref(),
            "token_ttl",
            Duration::from_secs(1)..=crate::admin::MAX_TOKEN_TTL,
        )
        .unwrap_or(DEFAULT_TOKEN_TTL);
    }
    if let Some(i) = &raw.incidents {
        convert_incidents(i, &mut config.incidents, d);
    }
    let mut webhook_names = BTreeMap::new();
    for w in &raw.webhook {
        if let Some(w) = convert_webhook(w, &mut webhook_names, d) {
            config.webhooks.push(w);
        }
    }
    config
}

fn convert_incidents(raw: &RawIncidents, c: &mut IncidentsConfig, d: &mut Diagnostics) {
    c.reopen_within = d.duration_or(raw.reopen_within.as_ref(), c.reopen_within);
    c.close_after = positive_duration(d, raw.close_after.as_ref(), "close_after", c.close_after);
    if let Some(v) = &raw.flap_window {
        if let Some(n) = d.parse_value(v, |&n| match usize::try_from(n) {
            Ok(n @ 3..=64) => Ok(n),
            _ => Err(format!("`flap_window` must be between 3 and 64, got {n}")),
        }) {
            c.flap_window = n;
        }
    }
    let ratio = |d: &mut Diagnostics, v: &Spanned<f64>, key: &str| {
        d.parse_value(v, |&x| {
            if x > 0.0 && x < 1.0 {
                Ok(x)
            } else {
                Err(format!(
                    "`{key}` must be a ratio strictly between 0 and 1, got {x}"
                ))
            }
        })
    };
    if let Some(x) = raw
        .flap_start
        .as_ref()
        .and_then(|v| ratio(d, v, "flap_start"))
    {
        c.flap_start = x;
    }
    if let Some(v) = &raw.flap_stop {
        if let Some(x) = ratio(d, v, "flap_stop") {
            if x >= c.flap_start {
                d.error_at(
                    v,
                    format!(
                        "`flap_stop` ({x}) must be below `flap_start` ({})",
                        c.flap_start
                    ),
                );
            } else {
                c.flap_stop = x;
            }
        }
    }
    if let Some(b) = raw.builtin_rules {
        c.builtin_rules = b;
    }
    for name in &raw.disable {
        if crate::incidents::builtin::NAMES.contains(&name.get_ref().as_str()) {
            c.disable.push(name.get_ref().clone());
        } else {
            d.error_at(
                name,
                format!(
                    "unknown built-in rule {:?}: expected one of {}",
                    name.get_ref(),
                    crate::incidents::builtin::NAMES.join(", ")
                ),
            );
        }
    }
}

fn convert_webhook(
    raw: &Spanned<RawWebhook>,
    names: &mut BTreeMap<String, String>,
    d: &mut Diagnostics,
) -> Option<crate::notify::Webhook> {
    use crate::notify::{Format, Webhook};
    let (span, w) = (raw.span(), raw.get_ref());
    let mut ok = true;
    let name = cfg::object_name(d, span.clone(), "webhook", w.name.as_ref());
    if let Some(n) = &name {
        ok &= unique(names, "webhook", n, d);
    }
    let url = match &w.url {
        Some(u) => d.parse_value(u, |s| match reqwest::Url::parse(s) {
            Ok(url) if matches!(url.scheme(), "http" | "https") && url.host().is_some() => {
                Ok(s.clone())
            }
            Ok(_) => Err(format!(
                "invalid webhook url {s:?}: expected http:// or https://"
            )),
            Err(e) => Err(format!("invalid webhook url {s:?}: {e}")),
        }),
        None => {
            d.missing(span.clone(), "url", "[[webhook]] is missing `url`");
            None
        }
    };
    let secret = match &w.secret {
        Some(s) if s.get_ref().is_empty() => {
            d.error_at(
                s,
                "`secret` must not be empty (leave it out for unsigned requests)",
            );
            ok = false;
            None
        }
        Some(s) => Some(s.get_ref().clone()),
        None => None,
    };
    let format = match &w.format {
        Some(f) => d.parse_value(f, |s| match s.as_str() {
            "json" => Ok(Format::Json),
            "slack" => Ok(Format::Slack),
            _ => Err(format!(
                "invalid format {s:?}: expected \"json\" or \"slack\""
            )),
        }),
        None => Some(Format::Json),
    };
    let max_priority = match &w.max_priority {
        Some(p) => d.parse_value(p, |s| parse_priority(s)),
        None => Some(5),
    };
    let timeout = positive_duration(
        d,
        w.timeout.as_ref(),
        "timeout",
        crate::notify::DEFAULT_TIMEOUT,
    );
    if let Some(t) = w
        .timeout
        .as_ref()
        .filter(|_| timeout > crate::notify::MAX_TIMEOUT)
    {
        d.error_at(t, "`timeout` must be at most 5m");
        ok = false;
    }
    let mut labels = BTreeMap::new();
    for (k, v) in &w.labels {
        if !cfg::is_label_name(k) {
            d.error_at(
                v,
                format!("invalid label name {k:?}: use [a-zA-Z_][a-zA-Z0-9_]*"),
            );
            ok = false;
        }
        labels.insert(k.clone(), v.get_ref().clone());
    }
    match (name, url, format, max_priority) {
        (Some(name), Some(url), Some(format), Some(max_priority)) if ok => Some(Webhook {
            name: name.into_inner(),
            url,
            secret,
            format,
            max_priority,
            rules: w.rules.iter().map(|r| r.get_ref().clone()).collect(),
            labels,
            timeout,
        }),
        _ => None,
    }
}

/// An optional whole number within `range` (an error at its position otherwise).
pub(crate) fn count_in(
    d: &mut Diagnostics,
    v: Option<&Spanned<i64>>,
    key: &str,
    range: std::ops::RangeInclusive<i64>,
) -> Option<usize> {
    d.parse_value(v?, |&n| {
        if range.contains(&n) {
            usize::try_from(n).map_err(|e| e.to_string())
        } else {
            Err(format!(
                "`{key}` must be between {} and {}, got {n}",
                range.start(),
                range.end()
            ))
        }
    })
}

/// An optional duration within `range` (an error at its position otherwise).
pub(crate) fn duration_in(
    d: &mut Diagnostics,
    v: Option<&Spanned<String>>,
    key: &str,
    range: std::ops::RangeInclusive<Duration>,
) -> Option<Duration> {
    let v = v?;
    let x = d.duration(v)?;
    if range.contains(&x) {
        Some(x)
    } else {
        d.error_at(
            v,
            format!(
                "`{key}` must be between {} and {}",
                humantime::format_duration(*range.start()),
                humantime::format_duration(*range.end())
            ),
        );
        None
    }
}

fn positive_duration(
    d: &mut Diagnostics,
    v: Option<&Spanned<String>>,
    key: &str,
    default: Duration,
) -> Duration {
    let Some(v) = v else { return default };
    match d.duration(v) {
        Some(x) if x.is_zero() => {
            d.error_at(v, format!("`{key}` must be positive"));
            default
        }
        Some(x) => x,
        None => default,
    }
}

/// A DNS name or IP address for the server certificate.
fn validate_server_name(s: &str) -> Result<String, String> {
    if s.parse::<std::net::IpAddr>().is_ok() {
        return Ok(s.to_string());
    }
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if s.len() <= 253 && s.split('.').all(label_ok) {
        Ok(s.to_string())
    } else {
        Err(format!(
            "invalid server name {s:?}: expected a DNS name or an IP address"
        ))
    }
}

/// Where each rule, SLA and maintenance window name was first defined (`file:line:col`),
/// across all files. Windows are kept by name in the store, so two of one name would be one.
#[derive(Default)]
struct Names {
    rules: BTreeMap<String, String>,
    slas: BTreeMap<String, String>,
    maintenance: BTreeMap<String, String>,
}

/// Registers `name`; records a duplicate error and returns false when it was taken.
fn unique(
    seen: &mut BTreeMap<String, String>,
    what: &str,
    name: &Spanned<String>,
    d: &mut Diagnostics,
) -> bool {
    if let Some(first) = seen.get(name.get_ref()) {
        d.error_at(
            name,
            format!(
                "duplicate {what} name `{}` (first defined at {first})",
                name.get_ref()
            ),
        );
        return false;
    }
    seen.insert(name.get_ref().clone(), d.location(name.span()));
    true
}

fn convert_objects(
    rules: &[Spanned<RawRule>],
    slas: &[Spanned<RawSla>],
    maintenance: &[Spanned<RawMaintenance>],
    config: &mut CollectorConfig,
    names: &mut Names,
    d: &mut Diagnostics,
) {
    for r in rules {
        let rules = &mut names.rules;
        let mut unique_rule =
            |n: &Spanned<String>, d: &mut Diagnostics| unique(rules, "rule", n, d);
        if let Some(rule) = convert_rule(r, &mut unique_rule, d) {
            config.rules.push(rule);
        }
    }
    for s in slas {
        if let Some(sla) = convert_sla(s, names, d) {
            config.slas.push(sla);
        }
    }
    for m in maintenance {
        let converted = convert_maintenance(m, d);
        let fresh = m
            .get_ref()
            .name
            .as_ref()
            .is_none_or(|n| unique(&mut names.maintenance, "maintenance", n, d));
        if let Some(m) = converted.filter(|_| fresh) {
            config.maintenance.push(m);
        }
    }
}

fn convert_sla(raw: &Spanned<RawSla>, names: &mut Names, d: &mut Diagnostics) -> Option<Sla> {
    let (span, s) = (raw.span(), raw.get_ref());
    let mut ok = true;
    let name = cfg::object_name(d, span.clone(), "sla", s.name.as_ref());
    if let Some(n) = &name {
        ok &= unique(&mut names.slas, "sla", n, d);
    }
    let target = match &s.target {
        Some(t) => d.parse_value(t, |&x| {
            if x > 0.0 && x < 1.0 {
                Ok(x)
            } else {
                Err(format!(
                    "`target` must be strictly between 0 and 1 (e.g. 0.999), got {x}"
                ))
            }
        }),
        None => {
            d.missing(
                span.clone(),
                "target",
                "[[sla]] is missing `target` (e.g. 0.999)",
            );
            None
        }
    };
    let window = match &s.window {
        Some(w) => d.parse_value(w, |w| SlaWindow::parse(w)),
        None => Some(DEFAULT_SLA_WINDOW),
    };
    let scope = convert_scope(d, s.scope.as_ref());
    let timezone = match &s.timezone {
        Some(z) => d.parse_value(z, |z| crate::sla::calendar::zone(z)),
        None => Some(jiff::tz::TimeZone::UTC),
    };
    let service = s.service.as_ref().and_then(|v| {
        let r = d.parse_value(v, |n| {
            if n.trim().is_empty() || n.len() > 256 {
                Err("`service` must name a business service of the CMDB (1-256 bytes)".to_string())
            } else {
                Ok(n.clone())
            }
        });
        ok &= r.is_some();
        r
    });
    let down_when = match &s.down_when {
        None => crate::sla::default_down_when(),
        Some(list) => {
            if list.is_empty() {
                d.error(
                    span.clone(),
                    "`down_when` must not be empty (omit it for the default)",
                );
                ok = false;
            }
            list.iter()
                .filter_map(|c| {
                    let r = d.parse_value(c, |c| crate::sla::Condition::parse(c));
                    ok &= r.is_some();
                    r
                })
                .collect()
        }
    };
    let mut degraded_when = Vec::new();
    for g in &s.degraded_when {
        let when = match &g.get_ref().when {
            Some(w) => d.parse_value(w, |w| crate::sla::Condition::parse(w)),
            None => {
                d.missing(
                    g.span(),
                    "when",
                    "a `degraded_when` entry is missing `when` (e.g. \"priority=P3\")",
                );
                None
            }
        };
        let weight = match &g.get_ref().weight {
            Some(w) => d.parse_value(w, |&x| {
                if x > 0.0 && x < 1.0 {
                    Ok(x)
                } else {
                    Err(format!(
                        "`weight` must be strictly between 0 and 1 (e.g. 0.5), got {x}"
                    ))
                }
            }),
            None => {
                d.missing(
                    g.span(),
                    "weight",
                    "a `degraded_when` entry is missing `weight` (e.g. 0.5)",
                );
                None
            }
        };
        match (when, weight) {
            (Some(c), Some(w)) => degraded_when.push((c, w)),
            _ => ok = false,
        }
    }
    let combine = match &s.quorum {
        None => Some(crate::sla::Combine::All),
        Some(q) => d.parse_value(q, |&n| match u32::try_from(n) {
            Ok(n @ 1..=100_000) => Ok(crate::sla::Combine::Quorum(n)),
            _ => Err(format!("`quorum` must be from 1 to 100000 CIs, got {n}")),
        }),
    };
    let schedule = match (&s.schedule, &timezone) {
        (Some(raw), Some(tz)) => convert_schedule(d, raw, tz).map(Some),
        (Some(_), None) => None,
        (None, _) => Some(None),
    };
    let incident_targets = match &s.incident_targets {
        None => None,
        Some(raw) => {
            let r = convert_incident_targets(d, raw);
            ok &= r.is_some();
            r
        }
    };
    match (name, target, window, scope, timezone, combine, schedule) {
        (
            Some(name),
            Some(target),
            Some(window),
            Some(scope),
            Some(timezone),
            Some(combine),
            Some(schedule),
        ) if ok => Some(Sla {
            name: name.into_inner(),
            target,
            window,
            timezone,
            scope,
            service,
            down_when,
            degraded_when,
            combine,
            schedule,
            incident_targets,
            alerts: s.alerts.unwrap_or(true),
        }),
        _ => None,
    }
}

/// `[sla.incident_targets]`: `P1 = { response = "15m", resolution = "4h" }`, …; what it leaves
/// out keeps the default.
fn convert_incident_targets(
    d: &mut Diagnostics,
    raw: &Spanned<BTreeMap<String, Spanned<RawTargetPair>>>,
) -> Option<crate::sla::targets::IncidentTargets> {
    use crate::sla::targets::{IncidentTargets, MAX_TARGET_MS};
    let mut out = IncidentTargets::DEFAULT;
    let mut ok = true;
    let max = Duration::from_millis(MAX_TARGET_MS.unsigned_abs());
    for (key, pair) in raw.get_ref() {
        let priority = match key
            .strip_prefix(['P', 'p'])
            .and_then(|n| n.parse::<usize>().ok())
        {
            Some(n @ 1..=5) => n - 1,
            _ => {
                d.error(
                    pair.span(),
                    format!("invalid priority {key:?} in `incident_targets`: expected P1..P5"),
                );
                ok = false;
                continue;
            }
        };
        let p = pair.get_ref();
        if p.response.is_none() && p.resolution.is_none() {
            d.error(
                pair.span(),
                format!("`incident_targets.{key}` sets neither `response` nor `resolution`"),
            );
            ok = false;
        }
        for (name, v, slot) in [
            ("response", &p.response, &mut out.response_ms[priority]),
            (
                "resolution",
                &p.resolution,
                &mut out.resolution_ms[priority],
            ),
        ] {
            let Some(v) = v else { continue };
            match d.duration(v) {
                Some(x) if (Duration::from_secs(60)..=max).contains(&x) => {
                    *slot = i64::try_from(x.as_millis()).unwrap_or(MAX_TARGET_MS);
                }
                Some(_) => {
                    d.error_at(v, format!("`{name}` must be between 1m and 90d"));
                    ok = false;
                }
                None => ok = false,
            }
        }
    }
    ok.then_some(out)
}

fn convert_schedule(
    d: &mut Diagnostics,
    raw: &Spanned<RawSchedule>,
    tz: &jiff::tz::TimeZone,
) -> Option<crate::sla::Schedule> {
    use crate::sla::calendar::{parse_date, parse_hours, parse_weekday};
    let r = raw.get_ref();
    let mut ok = true;
    let mut days = [false; 7];
    match &r.days {
        None => days = [true, true, true, true, true, false, false],
        Some(list) => {
            for day in list {
                match d.parse_value(day, |s| parse_weekday(s)) {
                    Some(i) => days[i] = true,
                    None => ok = false,
                }
            }
            if list.is_empty() {
                d.error(
                    raw.span(),
                    "`days` must name at least one day (e.g. [\"mon\", \"fri\"])",
                );
                ok = false;
            }
        }
    }
    let (start_min, end_min) = match &r.hours {
        None => (0, 1440),
        Some(h) => match d.parse_value(h, |h| parse_hours(h)) {
            Some(v) => v,
            None => {
                ok = false;
                (0, 1440)
            }
        },
    };
    if r.holidays.len() > 1000 {
        d.error(raw.span(), "at most 1000 `holidays`");
        ok = false;
    }
    let mut holidays = std::collections::BTreeSet::new();
    for h in r.holidays.iter().take(1000) {
        match d.parse_value(h, |s| parse_date(s)) {
            Some(date) => {
                holidays.insert(date);
            }
            None => ok = false,
        }
    }
    ok.then(|| crate::sla::Schedule {
        days,
        start_min,
        end_min,
        holidays,
        tz: tz.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::incidents::rule::{Level, Threshold};

    /// Error lines for `text` as file `c.toml`; empty when it is valid.
    fn errors_of(text: &str) -> Vec<String> {
        match from_str("c.toml", text) {
            Ok(_) => Vec::new(),
            Err(e) => e.0.iter().map(ToString::to_string).collect(),
        }
    }

    #[track_caller]
    fn check(text: &str, expected: &[&str]) {
        assert_eq!(errors_of(text), expected, "config:\n{text}");
    }

    fn valid(text: &str) -> CollectorConfig {
        from_str("c.toml", text).unwrap_or_else(|e| panic!("unexpected errors:\n{e}\nin:\n{text}"))
    }

    #[test]
    fn example_file_and_its_includes_load() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../config/collector.toml");
        let c = load(Path::new(path)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.data_dir, PathBuf::from("/var/lib/vigil"));
        assert_eq!(c.quic.listen, "0.0.0.0:4433".parse().expect("addr"));
        let rules: Vec<&str> = c.rules.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(
            rules,
            [
                "filesystem-almost-full",
                "host-unreachable",
                "cpu-saturated",
                "memory-pressure",
                "check-down",
                "db-load"
            ]
        );
        assert_eq!(c.webhooks.len(), 1);
        assert_eq!(c.webhooks[0].max_priority, 3);
        let effective: Vec<String> = c.effective_rules().into_iter().map(|r| r.name).collect();
        assert_eq!(
            effective,
            [
                "filesystem-full",
                "memory-full",
                "inventory-stale",
                "filesystem-almost-full",
                "host-unreachable",
                "cpu-saturated",
                "memory-pressure",
                "check-down",
                "db-load"
            ]
        );
        assert_eq!(c.slas.len(), 2);
        assert_eq!(c.maintenance.len(), 1);
    }

    #[test]
    fn example_rules_file_loads_on_its_own() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../config/rules.d/example.toml"
        );
        let c = load(Path::new(path)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((c.rules.len(), c.slas.len()), (4, 1));
    }

    #[test]
    fn defaults() {
        let c = valid("");
        assert_eq!(c, CollectorConfig::defaults_in(Path::new("./vigil-data")));
        assert_eq!(c.quic.listen, "127.0.0.1:4433".parse().expect("addr"));
        assert_eq!(c.http.listen, "127.0.0.1:8080".parse().expect("addr"));
        assert_eq!(c.store.retention, Duration::from_secs(30 * 86_400));
        assert_eq!(c.agents.down_after_intervals, 3);
        assert_eq!(c.enroll.token_ttl, Duration::from_secs(86_400));
    }

    #[test]
    fn typed_objects() {
        let c = valid(
            "[[rule]]\nname = \"r\"\nmetric = \"load1\"\nbelow = 0.5\nclear = 1\nfor = \"2m\"\n\
             urgency = \"low\"\nscope = { host = \"db-*\", tag = \"role=db\", type = \"host\", ci = \"x\" }\n\
             [[sla]]\nname = \"s\"\ntarget = 0.99\nwindow = \"month\"\n\
             [[maintenance]]\nname = \"m\"\nstart = 2026-12-01T02:00:00Z\nduration = \"2h\"\n",
        );
        let r = &c.rules[0];
        assert_eq!(
            (r.threshold, r.clear, r.hold),
            (Threshold::Below(0.5), 1.0, Duration::from_secs(120))
        );
        assert_eq!((r.impact, r.urgency), (Level::Medium, Level::Low));
        assert_eq!(r.scope.tag, Some(("role".into(), "db".into())));
        assert!(r
            .scope
            .host
            .as_ref()
            .is_some_and(|h| h.matches("db-01") && !h.matches("web-01")));
        assert!(r.breached(0.4) && !r.breached(0.5) && !r.cleared(0.9) && r.cleared(1.0));
        assert_eq!(
            (c.slas[0].target, c.slas[0].window),
            (0.99, SlaWindow::CalendarMonth)
        );
        let m = &c.maintenance[0];
        assert_eq!(
            (m.start_ms, m.duration, m.every),
            (1_796_090_400_000, Duration::from_secs(7200), None)
        );
    }

    #[test]
    fn unknown_key_and_bad_duration_are_both_reported() {
        check(
            "data_dir = \"/tmp/v\"\n[store]\nretention = \"30 dayz\"\nretain = \"1d\"\n",
            &[
                "c.toml:3:13: invalid duration \"30 dayz\": unknown unit \"dayz\" \
                 (use ms, s, m, h, d, e.g. \"10s\", \"5m\", \"2h\", \"30d\")",
                "c.toml:4:1: unknown key `retain` in `store`",
            ],
        );
    }

    #[test]
    fn several_unknown_keys_at_once() {
        check(
            "listen = \"x\"\n[quic]\nlisten = \"0.0.0.0:1\"\nport = 1\n[[rule]]\nname = \"a\"\n\
             metric = \"load1\"\nabove = 1\nseverity = \"high\"\n[rule.scope]\nhosts = \"a\"\n",
            &[
                "c.toml:1:1: unknown key `listen`",
                "c.toml:4:1: unknown key `port` in `quic`",
                "c.toml:9:1: unknown key `severity` in `rule[0]`",
                "c.toml:11:1: unknown key `hosts` in `rule[0].scope`",
            ],
        );
    }

    #[test]
    fn syntax_error_position() {
        check(
            "[http]\nlisten = 127.0.0.1:8080\n",
            &["c.toml:2:15: invalid float, expected nothing"],
        );
    }

    #[test]
    fn section_value_errors() {
        check(
            "[quic]\nlisten = \"localhost:4433\"\nserver_names = [\"ok.example\", \"bad name\"]\n\
             [http]\nlisten = \"1.2.3.4\"\n[agents]\ndown_after_intervals = 0\n[enroll]\ntoken_ttl = \"0s\"\n",
            &[
                "c.toml:2:10: invalid address \"localhost:4433\": expected IP:PORT, e.g. \"127.0.0.1:8080\"",
                "c.toml:3:31: invalid server name \"bad name\": expected a DNS name or an IP address",
                "c.toml:5:10: invalid address \"1.2.3.4\": expected IP:PORT, e.g. \"127.0.0.1:8080\"",
                "c.toml:7:24: `down_after_intervals` must be between 1 and 1000, got 0",
                "c.toml:9:13: `token_ttl` must be between 1s and 30days",
            ],
        );
    }

    #[test]
    fn clear_on_the_wrong_side() {
        check(
            "[[rule]]\nname = \"a\"\nmetric = \"load1\"\nabove = 0.9\nclear = 0.95\n\
             [[rule]]\nname = \"b\"\nmetric = \"load1\"\nbelow = 0.2\nclear = 0.1\n",
            &[
                "c.toml:5:9: `clear` (0.95) must be below `above` (0.9): it is where the incident resolves",
                "c.toml:10:9: `clear` (0.1) must be above `below` (0.2): it is where the incident resolves",
            ],
        );
    }

    #[test]
    fn rule_errors() {
        check(
            "[[rule]]\nname = \"a b\"\nmetric = \"cpu\"\nabove = 1\nbelow = 0\nimpact = \"huge\"\n\
             labels = { \"bad-label\" = \"x\" }\nscope = { host = \"[\", tag = \"role\", type = \"Host\" }\n\
             [[rule]]\nmetric = \"load1\"\n[[rule]]\nname = \"c\"\nmetric = \"load1\"\nabove = nan\n",
            &[
                "c.toml:2:8: invalid rule name \"a b\": use 1 to 64 letters, digits, '_', '-' or '.'",
                "c.toml:3:10: unknown metric \"cpu\": expected a host metric name without the vigil_host_ \
                 prefix (cpu_usage_ratio, load1, load5, load15, memory_used_bytes, memory_total_bytes, \
                 swap_used_bytes, filesystem_used_ratio, filesystem_size_bytes, network_receive_bytes_total, \
                 network_transmit_bytes_total, uptime_seconds), check_up, check_latency_seconds, or one \
                 the collector derives: up, memory_used_ratio, inventory_stale",
                "c.toml:5:9: give either `above` or `below`, not both",
                "c.toml:6:10: invalid level \"huge\": expected \"high\", \"medium\" or \"low\"",
                "c.toml:7:26: invalid label name \"bad-label\": use [a-zA-Z_][a-zA-Z0-9_]*, not starting with __",
                "c.toml:8:18: invalid host glob \"[\": invalid range pattern",
                "c.toml:8:29: invalid tag \"role\": expected \"key=value\", e.g. \"role=web\"",
                "c.toml:8:44: invalid CI type \"Host\": expected a name like \"host\" or \"filesystem\"",
                "c.toml:9:1: [[rule]] is missing `name`",
                "c.toml:9:1: [[rule]] needs a threshold: `above` or `below`",
                "c.toml:14:9: `above` must be a finite number",
            ],
        );
    }

    #[test]
    fn incidents_and_webhooks() {
        let c = valid(
            "[incidents]\nreopen_within = \"30m\"\nclose_after = \"2d\"\nflap_start = 0.3\n\
             flap_stop = 0.1\ndisable = [\"memory-full\"]\n\
             [[webhook]]\nname = \"ops\"\nurl = \"https://hooks.example.org/x\"\nsecret = \"s\"\n\
             format = \"slack\"\nmax_priority = \"P2\"\nrules = [\"check-down\"]\nlabels = { team = \"dba\" }\n",
        );
        assert_eq!(c.incidents.reopen_within, Duration::from_secs(1800));
        assert_eq!(c.incidents.close_after, Duration::from_secs(2 * 86_400));
        assert_eq!((c.incidents.flap_start, c.incidents.flap_stop), (0.3, 0.1));
        assert_eq!(c.incidents.disable, ["memory-full"]);
        assert!(!c.effective_rules().iter().any(|r| r.name == "memory-full"));
        let w = &c.webhooks[0];
        assert_eq!(
            (w.name.as_str(), w.max_priority, w.format),
            ("ops", 2, crate::notify::Format::Slack)
        );
        assert_eq!(w.secret.as_deref(), Some("s"));
        assert_eq!(w.rules, ["check-down"]);
        assert_eq!(w.labels.get("team").map(String::as_str), Some("dba"));
    }

    #[test]
    fn incident_and_webhook_errors() {
        check(
            "[incidents]\nflap_start = 2\nflap_stop = 0.3\ndisable = [\"nope\"]\nflap_window = 100\n\
             [[webhook]]\nname = \"a\"\nurl = \"ftp://x\"\nmax_priority = \"P9\"\nformat = \"xml\"\n\
             [[webhook]]\nname = \"a\"\n\
             [[rule]]\nname = \"r\"\nmetric = \"filesystem_used_ratio\"\nabove = 0.9\nclear = 0.95\n\
             scope = { type = \"host\" }\n",
            &[
                "c.toml:2:14: `flap_start` must be a ratio strictly between 0 and 1, got 2",
                "c.toml:3:13: `flap_stop` (0.3) must be below `flap_start` (0.2)",
                "c.toml:4:12: unknown built-in rule \"nope\": expected one of host-unreachable, check-down, \
                 filesystem-full, memory-full, inventory-stale",
                "c.toml:5:15: `flap_window` must be between 3 and 64, got 100",
                "c.toml:8:7: invalid webhook url \"ftp://x\": expected http:// or https://",
                "c.toml:9:16: invalid priority \"P9\": expected P1 (critical) .. P5 (planning)",
                "c.toml:10:10: invalid format \"xml\": expected \"json\" or \"slack\"",
                "c.toml:11:1: [[webhook]] is missing `url`",
                "c.toml:12:8: duplicate webhook name `a` (first defined at c.toml:7:8)",
                "c.toml:17:9: `clear` (0.95) must be below `above` (0.9): it is where the incident resolves",
                "c.toml:18:18: metric \"filesystem_used_ratio\" belongs to CIs of type \"filesystem\", so a \
                 rule scoped to type \"host\" would never fire",
            ],
        );
    }

    #[test]
    fn http_limits_are_read_and_bounded() {
        let c = valid(
            "[http]\nmax_connections = 100\nmax_connections_per_address = 10\n\
             header_timeout = \"5s\"\nidle_timeout = \"2m\"\nmax_exports = 2\n",
        );
        assert_eq!(
            c.http.limits,
            crate::http::serve::HttpLimits {
                max_connections: 100,
                max_connections_per_address: 10,
                header_timeout: Duration::from_secs(5),
                idle_timeout: Duration::from_secs(120),
                max_exports: 2,
            }
        );
        check(
            "[http]\nmax_connections = 0\nidle_timeout = \"2h\"\nmax_exports = 65\n",
            &[
                "c.toml:2:19: `max_connections` must be between 1 and 1000000, got 0",
                "c.toml:3:16: `idle_timeout` must be between 1s and 1h",
                "c.toml:4:15: `max_exports` must be between 1 and 64, got 65",
            ],
        );
        let c = valid("[http]\nsession_idle = \"30m\"\nsession_max = \"8h\"\n");
        assert_eq!(
            c.http.sessions,
            crate::store::users::SessionPolicy {
                idle: Duration::from_secs(1800),
                max: Duration::from_secs(8 * 3600),
            }
        );
        check(
            "[http]\nsession_idle = \"10s\"\nsession_max = \"90d\"\n",
            &[
                "c.toml:2:16: `session_idle` must be between 1m and 7days",
                "c.toml:3:15: `session_max` must be between 1m and 30days",
            ],
        );
        let c = valid("[http]\ntls_cert = \"c.pem\"\ntls_key = \"k.pem\"\n");
        assert_eq!(
            c.http.tls,
            Some(TlsFiles {
                cert: "c.pem".into(),
                key: "k.pem".into()
            })
        );
        check(
            "[http]\ntls_cert = \"c.pem\"\n",
            &["c.toml:2:12: `tls_cert` needs `tls_key` (the certificate's private key)"],
        );
    }

    #[test]
    fn agent_caps_and_frame_budgets_are_read_and_bounded() {
        let c = valid(
            "[quic]\nmax_frame_memory = \"64MiB\"\nmax_frame_memory_per_connection = \"20MiB\"\n\
             [agents]\nmax_series = 100\nmax_checks = 5\nmax_cis = 2000\n",
        );
        assert_eq!(
            (
                c.quic.max_frame_memory,
                c.quic.max_frame_memory_per_connection
            ),
            (64 << 20, 20 << 20)
        );
        assert_eq!(
            (c.agents.max_series, c.agents.max_checks, c.agents.max_cis),
            (100, 5, 2000)
        );
        let d = valid("");
        assert_eq!(
            (d.agents.max_series, d.agents.max_checks, d.agents.max_cis),
            (4096, 256, 100_000)
        );
        check(
            "[quic]\nmax_frame_memory = \"2MiB\"\nmax_frame_memory_per_connection = \"4MiB\"\n\
             [agents]\nmax_series = 0\nmax_checks = 100001\n",
            &[
                "c.toml:3:35: `max_frame_memory_per_connection` must not be larger than `max_frame_memory`",
                "c.toml:5:14: `max_series` must be between 1 and 1000000, got 0",
                "c.toml:6:14: `max_checks` must be between 1 and 100000, got 100001",
            ],
        );
        check(
            "[quic]\nmax_frame_memory = \"1KiB\"\n",
            &["c.toml:2:20: `max_frame_memory` must be between 1MiB and 64GiB"],
        );
    }

    #[test]
    fn webhook_timeouts_and_names_are_bounded() {
        let long = "n".repeat(65);
        check(
            &format!(
                "[[webhook]]\nname = \"slow\"\nurl = \"http://h/\"\ntimeout = \"6m\"\n\
                 [[webhook]]\nname = \"{long}\"\nurl = \"http://h/\"\n"
            ),
            &[
                "c.toml:4:11: `timeout` must be at most 5m".to_string(),
                format!(
                    "c.toml:6:8: invalid webhook name \"{long}\": use 1 to 64 letters, digits, '_', '-' or '.'"
                ),
            ]
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
        );
        let ok = valid("[[webhook]]\nname = \"edge\"\nurl = \"http://h/\"\ntimeout = \"5m\"\n");
        assert_eq!(ok.webhooks[0].timeout, Duration::from_secs(300));
    }

    #[test]
    fn an_sla_with_every_key() {
        let c = valid(
            "data_dir = \"/x\"\n[[sla]]\nname = \"web\"\ntarget = 0.9995\nwindow = \"quarter\"\n\
             timezone = \"Europe/Berlin\"\nservice = \"shop\"\nquorum = 2\n\
             down_when = [\"host-unreachable\", \"priority<=P1\"]\n\
             degraded_when = [{ when = \"priority=P3\", weight = 0.5 }]\n\
             [sla.scope]\ntag = \"role=web\"\n\
             [sla.schedule]\ndays = [\"mon\", \"tue\", \"wed\", \"thu\", \"fri\"]\nhours = \"08:00-18:00\"\n\
             holidays = [\"2026-12-25\"]\n\
             [sla.incident_targets]\nP1 = { response = \"10m\", resolution = \"2h\" }\n\
             P4 = { resolution = \"5d\" }\n",
        );
        let s = &c.slas[0];
        let t = s.incident_targets.expect("incident targets");
        let d = crate::sla::targets::IncidentTargets::DEFAULT;
        assert_eq!(
            (t.response_ms[0], t.resolution_ms[0], t.resolution_ms[3]),
            (600_000, 7_200_000, 5 * 86_400_000)
        );
        assert_eq!(
            (t.response_ms[1], t.response_ms[3], t.resolution_ms[4]),
            (d.response_ms[1], d.response_ms[3], d.resolution_ms[4])
        );
        assert_eq!(
            (s.name.as_str(), s.target, s.window),
            ("web", 0.9995, SlaWindow::CalendarQuarter)
        );
        assert_eq!(s.timezone.iana_name(), Some("Europe/Berlin"));
        assert_eq!(s.service.as_deref(), Some("shop"));
        assert_eq!(s.combine, crate::sla::Combine::Quorum(2));
        assert_eq!(s.effect("host-unreachable", 4), Some(1.0));
        assert_eq!(s.effect("cpu", 1), Some(1.0));
        assert_eq!(s.effect("cpu", 3), Some(0.5));
        assert_eq!(s.effect("cpu", 2), None);
        let sched = s.schedule.as_ref().expect("schedule");
        assert_eq!(
            (sched.days, sched.start_min, sched.end_min),
            ([true, true, true, true, true, false, false], 480, 1080)
        );
        assert_eq!(sched.holidays.len(), 1);
        // The defaults: UTC, every hour, down on host-unreachable, check-down and P1-P2.
        let d = valid("data_dir = \"/x\"\n[[sla]]\nname = \"d\"\ntarget = 0.99\n");
        let d = &d.slas[0];
        assert_eq!(d.timezone, jiff::tz::TimeZone::UTC);
        assert_eq!(d.down_when, crate::sla::default_down_when());
        assert_eq!(
            (d.combine, d.schedule.is_none()),
            (crate::sla::Combine::All, true)
        );
    }

    #[test]
    fn sla_schedule_and_condition_errors() {
        check(
            "[[sla]]\nname = \"s\"\ntarget = 0.9\ntimezone = \"Mars/Base\"\nquorum = 0\n\
             down_when = [\"priority<P2\"]\ndegraded_when = [{ when = \"priority=P3\", weight = 1.5 }]\n\
             [sla.schedule]\ndays = [\"monday\"]\nhours = \"18:00-08:00\"\nholidays = [\"2026-02-30\"]\n",
            &[
                "c.toml:4:12: unknown time zone \"Mars/Base\": expected an IANA name such as \"Europe/Berlin\" or \"UTC\"",
                "c.toml:5:10: `quorum` must be from 1 to 100000 CIs, got 0",
                "c.toml:6:14: invalid condition \"priority<P2\": expected \"priority<=Pn\" or \"priority=Pn\"",
                "c.toml:7:51: `weight` must be strictly between 0 and 1 (e.g. 0.5), got 1.5",
            ],
        );
        check(
            "[[sla]]\nname = \"s\"\ntarget = 0.9\n\
             [sla.schedule]\ndays = [\"monday\"]\nhours = \"18:00-08:00\"\nholidays = [\"2026-02-30\"]\n",
            &[
                "c.toml:5:9: invalid day \"monday\": expected one of mon, tue, wed, thu, fri, sat, sun",
                "c.toml:6:9: invalid hours \"18:00-08:00\": the start must be before the end",
                "c.toml:7:13: invalid date \"2026-02-30\": expected YYYY-MM-DD, e.g. \"2026-12-25\"",
            ],
        );
    }

    #[test]
    fn incident_target_errors() {
        check(
            "[[sla]]\nname = \"s\"\ntarget = 0.9\n[sla.incident_targets]\n\
             P7 = { response = \"1h\" }\nP1 = { response = \"10s\", resolution = \"91d\" }\nP2 = {}\n\
             P3 = { respond = \"1h\" }\n",
            &[
                "c.toml:5:6: invalid priority \"P7\" in `incident_targets`: expected P1..P5",
                "c.toml:6:19: `response` must be between 1m and 90d",
                "c.toml:6:39: `resolution` must be between 1m and 90d",
                "c.toml:7:6: `incident_targets.P2` sets neither `response` nor `resolution`",
                "c.toml:8:6: `incident_targets.P3` sets neither `response` nor `resolution`",
                "c.toml:8:8: unknown key `respond` in `sla[0].incident_targets.P3`",
            ],
        );
    }

    #[test]
    fn sla_and_maintenance_errors() {
        check(
            "[[sla]]\nname = \"s\"\ntarget = 1.0\nwindow = \"fortnight\"\n\
             [[maintenance]]\nname = \"m\"\nstart = \"tomorrow\"\nduration = \"8d\"\nevery = \"week\"\n\
             [[maintenance]]\nname = \"n\"\nstart = 2026-12-01T02:00:00\nduration = \"1h\"\nevery = \"month\"\n",
            &[
                "c.toml:3:10: `target` must be strictly between 0 and 1 (e.g. 0.999), got 1",
                "c.toml:4:10: invalid SLA window \"fortnight\": expected a duration such as \"30d\" (rolling), \
                 or \"week\", \"month\", \"quarter\", \"year\" (calendar)",
                "c.toml:7:9: invalid time \"tomorrow\": expected RFC 3339 with Z or an offset, e.g. \
                 \"2026-12-01T02:00:00Z\" or \"2026-12-01T03:00:00+01:00\"",
                "c.toml:8:12: `duration` (8d) must be shorter than the repeat period",
                "c.toml:12:9: invalid time \"2026-12-01T02:00:00\": expected RFC 3339 with Z or an offset, \
                 e.g. \"2026-12-01T02:00:00Z\" or \"2026-12-01T03:00:00+01:00\"",
                "c.toml:14:9: invalid `every` \"month\": expected \"day\" or \"week\"",
            ],
        );
    }

    #[test]
    fn duplicate_names() {
        check(
            "[[rule]]\nname = \"a\"\nmetric = \"up\"\nbelow = 1\n[[rule]]\nname = \"a\"\nmetric = \"up\"\nbelow = 1\n\
             [[sla]]\nname = \"a\"\ntarget = 0.9\n[[sla]]\nname = \"a\"\ntarget = 0.9\n\
             [[maintenance]]\nname = \"a\"\nstart = \"2026-12-01T02:00:00Z\"\nduration = \"1h\"\n\
             [[maintenance]]\nname = \"a\"\nstart = \"2026-12-02T02:00:00Z\"\nduration = \"1h\"\n",
            &[
                "c.toml:6:8: duplicate rule name `a` (first defined at c.toml:2:8)",
                "c.toml:13:8: duplicate sla name `a` (first defined at c.toml:10:8)",
                "c.toml:20:8: duplicate maintenance name `a` (first defined at c.toml:16:8)",
            ],
        );
    }

    /// Parses `collector.toml` of the in-memory tree `files` (relative path, text) under
    /// `/etc/vigil`: no disk involved.
    fn load_tree(files: &[(&str, &str)]) -> (&'static str, Result<CollectorConfig, ConfigErrors>) {
        const BASE: &str = "/etc/vigil";
        let mem = MemFiles(
            files
                .iter()
                .map(|(rel, text)| (Path::new(BASE).join(rel), text.to_string()))
                .collect(),
        );
        let main = format!("{BASE}/collector.toml");
        let text = mem.read(Path::new(&main)).expect("main file");
        (BASE, parse(&main, &text, &mem))
    }

    #[test]
    fn included_files_add_objects_and_report_errors_under_their_own_name() {
        let (base, result) = load_tree(&[
            (
                "collector.toml",
                "include = [\"rules.d/*.toml\", \"more.toml\", \"[\"]\n[[rule]]\nname = \"a\"\nmetric = \"up\"\nbelow = 1\n",
            ),
            ("rules.d/1.toml", "[[rule]]\nname = \"b\"\nmetric = \"up\"\nbelow = 1\n"),
            (
                "rules.d/2.toml",
                "data_dir = \"/x\"\n[[rule]]\nname = \"a\"\nmetric = \"up\"\nbelow = 1\n[[sla]]\nname = \"s\"\n\
                 target = 0.9\nwindow = \"1x\"\n",
            ),
            ("rules.d/3.toml", "[[rule]\n"),
        ]);
        let got: Vec<String> = result
            .expect_err("errors")
            .0
            .iter()
            .map(ToString::to_string)
            .collect();
        let main = format!("{base}/collector.toml");
        let two = format!("{base}/rules.d/2.toml");
        assert_eq!(
            got,
            [
                format!("{main}:1:30: included file \"{base}/more.toml\" does not exist"),
                format!("{main}:1:43: invalid include glob \"[\": invalid range pattern"),
                format!(
                    "{two}:1:1: unknown key `data_dir` (an included file may hold only `rule`, `sla` and `maintenance`)"
                ),
                format!("{two}:3:8: duplicate rule name `a` (first defined at {main}:3:8)"),
                format!(
                    "{two}:9:10: invalid SLA window \"1x\": expected a duration such as \"30d\" \
                     (rolling), or \"week\", \"month\", \"quarter\", \"year\" (calendar)"
                ),
                format!("{base}/rules.d/3.toml:1:8: unclosed array table, expected `]`"),
            ]
        );
    }

    #[test]
    fn includes_skip_the_main_file_and_duplicates() {
        let (_dir, result) = load_tree(&[
            ("collector.toml", "include = [\"*.toml\", \"r.toml\"]\n"),
            (
                "r.toml",
                "[[rule]]\nname = \"b\"\nmetric = \"up\"\nbelow = 1\n",
            ),
        ]);
        let c = result.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.rules.len(), 1);
    }
}
