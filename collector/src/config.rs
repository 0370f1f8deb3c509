//! The collector's configuration: `collector.toml` plus the files its `include` globs name,
//! turned into a validated [`CollectorConfig`] before anything binds (SPEC "Configuration").
//!
//! Two layers (STYLE.md item 5): the private `Raw*` serde structs mirror the files with every
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

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use vigil_shared::config::{self as cfg, ConfigErrors, Diagnostics, RawTime, SlaWindow, Spanned};
use vigil_shared::metric_names;

pub const DEFAULT_DATA_DIR: &str = "./vigil-data";
pub const DEFAULT_QUIC_LISTEN: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 4433);
pub const DEFAULT_HTTP_LISTEN: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 8080);
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(30 * 86_400);
pub const DEFAULT_DOWN_AFTER_INTERVALS: u32 = 3;
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
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpConfig {
    pub listen: SocketAddr,
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

/// ITIL impact or urgency.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Level {
    High,
    Medium,
    Low,
}

impl Level {
    pub fn as_str(self) -> &'static str {
        match self {
            Level::High => "high",
            Level::Medium => "medium",
            Level::Low => "low",
        }
    }

    pub fn parse(s: &str) -> Result<Level, String> {
        match s {
            "high" => Ok(Level::High),
            "medium" => Ok(Level::Medium),
            "low" => Ok(Level::Low),
            _ => Err(format!(
                "invalid level {s:?}: expected \"high\", \"medium\" or \"low\""
            )),
        }
    }
}

/// Which CIs something applies to. Every given criterion must match; an empty scope matches all.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Scope {
    /// CI type (`host`, `filesystem`, ...).
    pub ci_type: Option<String>,
    /// A tag the CI's host carries, `(key, value)` from `tag = "key=value"`.
    pub tag: Option<(String, String)>,
    /// Host name glob (`db-*`).
    pub host: Option<glob::Pattern>,
    /// One CI by id.
    pub ci: Option<String>,
}

/// Which side of the threshold is the bad one.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Threshold {
    Above(f64),
    Below(f64),
}

/// A threshold rule (`[[rule]]`).
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    pub name: String,
    /// Host metric name without the `vigil_host_` prefix, or `check_up` / `check_latency_seconds`.
    pub metric: String,
    pub threshold: Threshold,
    /// Hysteresis: an open incident resolves only once the value is back past this. Always on
    /// the good side of the threshold (equal to it when `clear` was not given).
    pub clear: f64,
    /// The breach must hold this long before an incident opens (`for`).
    pub hold: Duration,
    pub impact: Level,
    pub urgency: Level,
    pub scope: Scope,
    pub labels: BTreeMap<String, String>,
}

impl Rule {
    /// True when `value` is on the bad side of the threshold.
    pub fn breached(&self, value: f64) -> bool {
        match self.threshold {
            Threshold::Above(t) => value > t,
            Threshold::Below(t) => value < t,
        }
    }

    /// True when `value` is back past `clear` (an open incident may resolve).
    pub fn cleared(&self, value: f64) -> bool {
        match self.threshold {
            Threshold::Above(_) => value <= self.clear,
            Threshold::Below(_) => value >= self.clear,
        }
    }
}

/// An availability objective (`[[sla]]`).
#[derive(Debug, Clone, PartialEq)]
pub struct Sla {
    pub name: String,
    /// Availability target, strictly between 0 and 1.
    pub target: f64,
    pub window: SlaWindow,
    pub scope: Scope,
}

/// How often a maintenance window repeats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recurrence {
    Daily,
    Weekly,
}

impl Recurrence {
    pub fn period(self) -> Duration {
        match self {
            Recurrence::Daily => Duration::from_secs(86_400),
            Recurrence::Weekly => Duration::from_secs(7 * 86_400),
        }
    }
}

/// A maintenance window (`[[maintenance]]`): suppresses incidents in its scope and is excluded
/// from SLA downtime.
#[derive(Debug, Clone, PartialEq)]
pub struct Maintenance {
    pub name: String,
    pub scope: Scope,
    /// First start, milliseconds since the Unix epoch (UTC).
    pub start_ms: i64,
    pub duration: Duration,
    /// Repeats every day or week from `start_ms` when set (`every = "day" | "week"`).
    pub every: Option<Recurrence>,
}

impl CollectorConfig {
    /// Every default, with the store in `data_dir` (quickstart, `--data-dir`).
    pub fn defaults_in(data_dir: &Path) -> CollectorConfig {
        CollectorConfig {
            data_dir: data_dir.to_path_buf(),
            quic: QuicConfig {
                listen: DEFAULT_QUIC_LISTEN,
                server_names: Vec::new(),
            },
            http: HttpConfig {
                listen: DEFAULT_HTTP_LISTEN,
            },
            store: StoreConfig {
                retention: DEFAULT_RETENTION,
                stale_after: crate::cmdb::DEFAULT_STALE_AFTER,
            },
            agents: AgentsConfig {
                down_after_intervals: DEFAULT_DOWN_AFTER_INTERVALS,
                interval: None,
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

/// Reads and validates `path` and the files it includes. Every problem comes back at once.
pub fn load(path: &Path) -> Result<CollectorConfig, ConfigErrors> {
    let name = path.display().to_string();
    let text = vigil_runtime::fs::read_text_capped(path, MAX_CONFIG_FILE_SIZE)
        .map_err(|e| ConfigErrors::whole_file(&name, e.to_string()))?;
    from_str(&name, &text)
}

/// Validates the text of a collector config. `file` names it in messages and is the path
/// `include` globs are resolved against (its directory), so includes are read from disk.
pub fn from_str(file: &str, text: &str) -> Result<CollectorConfig, ConfigErrors> {
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
    load_includes(
        Path::new(file),
        &raw.include,
        &mut config,
        &mut names,
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
struct RawObjects {
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
}

#[derive(Debug, Deserialize)]
struct RawHttp {
    listen: Option<Spanned<String>>,
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

#[derive(Debug, Default, Deserialize)]
struct RawScope {
    #[serde(rename = "type")]
    ci_type: Option<Spanned<String>>,
    tag: Option<Spanned<String>>,
    host: Option<Spanned<String>>,
    ci: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
struct RawRule {
    name: Option<Spanned<String>>,
    metric: Option<Spanned<String>>,
    above: Option<Spanned<f64>>,
    below: Option<Spanned<f64>>,
    clear: Option<Spanned<f64>>,
    #[serde(rename = "for")]
    hold: Option<Spanned<String>>,
    impact: Option<Spanned<String>>,
    urgency: Option<Spanned<String>>,
    scope: Option<RawScope>,
    #[serde(default)]
    // Keys cannot be `Spanned` (serde_ignored reads map keys as plain strings); key errors are
    // reported at the value.
    labels: BTreeMap<String, Spanned<String>>,
}

#[derive(Debug, Deserialize)]
struct RawSla {
    name: Option<Spanned<String>>,
    target: Option<Spanned<f64>>,
    window: Option<Spanned<String>>,
    scope: Option<RawScope>,
}

#[derive(Debug, Deserialize)]
struct RawMaintenance {
    name: Option<Spanned<String>>,
    scope: Option<RawScope>,
    start: Option<Spanned<RawTime>>,
    duration: Option<Spanned<String>>,
    every: Option<Spanned<String>>,
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
    }
    if let Some(h) = &raw.http {
        config.http.listen = d.socket_addr_or(h.listen.as_ref(), DEFAULT_HTTP_LISTEN);
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
            if i < Duration::from_secs(1) {
                d.error_at(v, "`interval` must be at least 1s");
            } else {
                config.agents.interval = Some(i);
            }
        }
    }
    if let Some(e) = &raw.enroll {
        config.enroll.token_ttl =
            positive_duration(d, e.token_ttl.as_ref(), "token_ttl", DEFAULT_TOKEN_TTL);
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
    let name = object_name(d, span.clone(), "webhook", w.name.as_ref());
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
    let timeout = positive_duration(d, w.timeout.as_ref(), "timeout", Duration::from_secs(10));
    let mut labels = BTreeMap::new();
    for (k, v) in &w.labels {
        if !is_label_name(k) {
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

/// Validates one rule given as JSON (the API's body, the same keys as `[[rule]]`) with exactly the
/// checks of the configuration file. Errors come back as messages without positions.
pub fn rule_from_json(v: &serde_json::Value) -> Result<Rule, Vec<String>> {
    let serde_json::Value::Object(_) = v else {
        return Err(vec!["a rule must be a JSON object".into()]);
    };
    let table = toml::Value::try_from(v).map_err(|e| vec![format!("not a valid rule: {e}")])?;
    let doc = toml::Value::Table(toml::map::Map::from_iter([(
        "rule".to_string(),
        toml::Value::Array(vec![table]),
    )]));
    let text = toml::to_string(&doc).map_err(|e| vec![format!("not a valid rule: {e}")])?;
    match from_str("rule", &text) {
        Ok(mut c) if c.rules.len() == 1 => Ok(c.rules.remove(0)),
        Ok(_) => Err(vec!["a rule must be a JSON object".into()]),
        Err(errors) => Err(errors.0.into_iter().map(|e| e.message).collect()),
    }
}

/// `P1`..`P5` (or `1`..`5`).
pub fn parse_priority(s: &str) -> Result<u8, String> {
    let digits = s.strip_prefix(['P', 'p']).unwrap_or(s);
    match digits.parse::<u8>() {
        Ok(p @ 1..=5) => Ok(p),
        _ => Err(format!(
            "invalid priority {s:?}: expected P1 (critical) .. P5 (planning)"
        )),
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

/// Where each rule and SLA name was first defined (`file:line:col`), across all files.
#[derive(Default)]
struct Names {
    rules: BTreeMap<String, String>,
    slas: BTreeMap<String, String>,
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
        if let Some(rule) = convert_rule(r, names, d) {
            config.rules.push(rule);
        }
    }
    for s in slas {
        if let Some(sla) = convert_sla(s, names, d) {
            config.slas.push(sla);
        }
    }
    for m in maintenance {
        if let Some(m) = convert_maintenance(m, d) {
            config.maintenance.push(m);
        }
    }
}

/// A required name: present, `[A-Za-z0-9_.-]+` (it appears in URLs and label values).
fn object_name(
    d: &mut Diagnostics,
    table: std::ops::Range<usize>,
    what: &str,
    name: Option<&Spanned<String>>,
) -> Option<Spanned<String>> {
    let Some(name) = name else {
        d.missing(table, "name", format!("[[{what}]] is missing `name`"));
        return None;
    };
    let s = name.get_ref();
    if s.is_empty()
        || !s
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
    {
        d.error_at(
            name,
            format!("invalid {what} name {s:?}: use letters, digits, '_', '-' or '.'"),
        );
        return None;
    }
    Some(name.clone())
}

/// The CI type the samples of `metric` belong to (see `crate::incidents::scope::ci_of`).
pub fn metric_ci_type(metric: &str) -> &'static str {
    let labels = metric_names::host_metric(metric).map_or(&[][..], |m| m.labels);
    if labels.contains(&"mountpoint") {
        "filesystem"
    } else if labels.contains(&"interface") {
        "network_interface"
    } else if labels.contains(&"device") {
        "disk"
    } else if metric.starts_with("check_") {
        crate::incidents::scope::CHECK
    } else {
        "host"
    }
}

/// Names a metric a rule may watch.
fn known_metric(name: &str) -> bool {
    metric_names::host_metric(name).is_some()
        || [
            metric_names::CHECK_UP,
            metric_names::CHECK_LATENCY_SECONDS,
            crate::incidents::builtin::UP,
            crate::incidents::builtin::MEMORY_USED_RATIO,
            crate::incidents::builtin::INVENTORY_STALE,
        ]
        .contains(&name)
}

fn finite(d: &mut Diagnostics, v: &Spanned<f64>, key: &str) -> Option<f64> {
    d.parse_value(v, |&x| {
        if x.is_finite() {
            Ok(x)
        } else {
            Err(format!("`{key}` must be a finite number"))
        }
    })
}

fn convert_rule(raw: &Spanned<RawRule>, names: &mut Names, d: &mut Diagnostics) -> Option<Rule> {
    let (span, r) = (raw.span(), raw.get_ref());
    let mut ok = true;
    let name = object_name(d, span.clone(), "rule", r.name.as_ref());
    if let Some(n) = &name {
        ok &= unique(&mut names.rules, "rule", n, d);
    }

    let metric = match &r.metric {
        Some(m) if known_metric(m.get_ref()) => Some(m.get_ref().clone()),
        Some(m) => {
            let known: Vec<&str> = metric_names::HOST_METRICS.iter().map(|m| m.name).collect();
            d.error_at(
                m,
                format!(
                    "unknown metric {:?}: expected a host metric name without the vigil_host_ prefix \
                     ({}), check_up, check_latency_seconds, or one the collector derives: up, \
                     memory_used_ratio, inventory_stale",
                    m.get_ref(),
                    known.join(", ")
                ),
            );
            None
        }
        None => {
            d.missing(span.clone(), "metric", "[[rule]] is missing `metric`");
            None
        }
    };

    let threshold = match (&r.above, &r.below) {
        (Some(a), None) => finite(d, a, "above").map(Threshold::Above),
        (None, Some(b)) => finite(d, b, "below").map(Threshold::Below),
        (Some(_), Some(b)) => {
            d.error_at(b, "give either `above` or `below`, not both");
            None
        }
        (None, None) => {
            if !d.mistyped(&span, "above") && !d.mistyped(&span, "below") {
                d.error(
                    span.clone(),
                    "[[rule]] needs a threshold: `above` or `below`",
                );
            }
            None
        }
    };

    let clear = match (&r.clear, threshold) {
        (None, Some(Threshold::Above(t) | Threshold::Below(t))) => Some(t),
        (Some(raw_clear), Some(t)) => finite(d, raw_clear, "clear").and_then(|c| match t {
            Threshold::Above(a) if c >= a => {
                d.error_at(raw_clear, format!("`clear` ({c}) must be below `above` ({a}): it is where the incident resolves"));
                None
            }
            Threshold::Below(b) if c <= b => {
                d.error_at(raw_clear, format!("`clear` ({c}) must be above `below` ({b}): it is where the incident resolves"));
                None
            }
            _ => Some(c),
        }),
        (_, None) => None,
    };

    let hold = d.duration_or(r.hold.as_ref(), Duration::ZERO);
    let impact = level(d, r.impact.as_ref());
    let urgency = level(d, r.urgency.as_ref());
    let scope = convert_scope(d, r.scope.as_ref());
    // A metric belongs to one CI type; a scope naming another could never match.
    if let (Some(m), Some(t)) = (&metric, r.scope.as_ref().and_then(|s| s.ci_type.as_ref())) {
        let natural = metric_ci_type(m);
        if t.get_ref() != natural {
            d.error_at(
                t,
                format!(
                    "metric {m:?} belongs to CIs of type \"{natural}\", so a rule scoped to type {:?} would never fire",
                    t.get_ref()
                ),
            );
            ok = false;
        }
    }

    let mut labels = BTreeMap::new();
    for (k, v) in &r.labels {
        if !is_label_name(k) {
            d.error_at(
                v,
                format!(
                    "invalid label name {k:?}: use [a-zA-Z_][a-zA-Z0-9_]*, not starting with __"
                ),
            );
            ok = false;
        }
        labels.insert(k.clone(), v.get_ref().clone());
    }

    match (name, metric, threshold, clear, impact, urgency, scope) {
        (
            Some(name),
            Some(metric),
            Some(threshold),
            Some(clear),
            Some(impact),
            Some(urgency),
            Some(scope),
        ) if ok => Some(Rule {
            name: name.into_inner(),
            metric,
            threshold,
            clear,
            hold,
            impact,
            urgency,
            scope,
            labels,
        }),
        _ => None,
    }
}

fn is_label_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !s.starts_with("__")
}

fn level(d: &mut Diagnostics, v: Option<&Spanned<String>>) -> Option<Level> {
    match v {
        Some(v) => d.parse_value(v, |s| Level::parse(s)),
        None => Some(Level::Medium),
    }
}

/// `None` when a criterion is invalid (errors recorded).
fn convert_scope(d: &mut Diagnostics, raw: Option<&RawScope>) -> Option<Scope> {
    let Some(raw) = raw else {
        return Some(Scope::default());
    };
    let mut ok = true;
    let ci_type = raw.ci_type.as_ref().and_then(|t| {
        let v = d.parse_value(t, |s| {
            if !s.is_empty()
                && s.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
            {
                Ok(s.clone())
            } else {
                Err(format!(
                    "invalid CI type {s:?}: expected a name like \"host\" or \"filesystem\""
                ))
            }
        });
        ok &= v.is_some();
        v
    });
    let tag = raw.tag.as_ref().and_then(|t| {
        let v = d.parse_value(t, |s| match s.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() && !v.trim().is_empty() => {
                Ok((k.trim().to_string(), v.trim().to_string()))
            }
            _ => Err(format!(
                "invalid tag {s:?}: expected \"key=value\", e.g. \"role=web\""
            )),
        });
        ok &= v.is_some();
        v
    });
    let host = raw.host.as_ref().and_then(|h| {
        let v = d.parse_value(h, |s| {
            glob::Pattern::new(s).map_err(|e| format!("invalid host glob {s:?}: {}", e.msg))
        });
        ok &= v.is_some();
        v
    });
    let ci = raw.ci.as_ref().and_then(|c| {
        let v = d.parse_value(c, |s| {
            if s.trim().is_empty() {
                Err("`ci` must not be empty".to_string())
            } else {
                Ok(s.clone())
            }
        });
        ok &= v.is_some();
        v
    });
    ok.then_some(Scope {
        ci_type,
        tag,
        host,
        ci,
    })
}

fn convert_sla(raw: &Spanned<RawSla>, names: &mut Names, d: &mut Diagnostics) -> Option<Sla> {
    let (span, s) = (raw.span(), raw.get_ref());
    let mut ok = true;
    let name = object_name(d, span.clone(), "sla", s.name.as_ref());
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
            d.missing(span, "target", "[[sla]] is missing `target` (e.g. 0.999)");
            None
        }
    };
    let window = match &s.window {
        Some(w) => d.parse_value(w, |w| SlaWindow::parse(w)),
        None => Some(DEFAULT_SLA_WINDOW),
    };
    let scope = convert_scope(d, s.scope.as_ref());
    match (name, target, window, scope) {
        (Some(name), Some(target), Some(window), Some(scope)) if ok => Some(Sla {
            name: name.into_inner(),
            target,
            window,
            scope,
        }),
        _ => None,
    }
}

fn convert_maintenance(raw: &Spanned<RawMaintenance>, d: &mut Diagnostics) -> Option<Maintenance> {
    let (span, m) = (raw.span(), raw.get_ref());
    let name = object_name(d, span.clone(), "maintenance", m.name.as_ref());
    let scope = convert_scope(d, m.scope.as_ref());
    let start_ms = match &m.start {
        Some(t) => d.parse_value(t, |t| vigil_shared::time::parse_rfc3339_ms(&t.0)),
        None => {
            d.missing(
                span.clone(),
                "start",
                "[[maintenance]] is missing `start` (e.g. \"2026-12-01T02:00:00Z\")",
            );
            None
        }
    };
    let every = m.every.as_ref().map(|e| {
        d.parse_value(e, |s| match s.as_str() {
            "day" => Ok(Recurrence::Daily),
            "week" => Ok(Recurrence::Weekly),
            _ => Err(format!(
                "invalid `every` {s:?}: expected \"day\" or \"week\""
            )),
        })
    });
    let duration = match &m.duration {
        Some(v) => d.duration(v).and_then(|x| {
            let period = every.flatten().map(Recurrence::period);
            if x.is_zero() {
                d.error_at(v, "`duration` must be positive");
                None
            } else if period.is_some_and(|p| x >= p) {
                d.error_at(
                    v,
                    format!(
                        "`duration` ({}) must be shorter than the repeat period",
                        v.get_ref()
                    ),
                );
                None
            } else {
                Some(x)
            }
        }),
        None => {
            d.missing(
                span,
                "duration",
                "[[maintenance]] is missing `duration` (e.g. \"2h\")",
            );
            None
        }
    };
    match (name, scope, start_ms, duration, every) {
        (Some(name), Some(scope), Some(start_ms), Some(duration), None | Some(Some(_))) => {
            Some(Maintenance {
                name: name.into_inner(),
                scope,
                start_ms,
                duration,
                every: every.flatten(),
            })
        }
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------------
// Includes

const INCLUDE_HINT: &str = "an included file may hold only `rule`, `sla` and `maintenance`";

/// Reads every file the `include` globs match (relative to `main`'s directory, sorted, each
/// once, never `main` itself) and adds their objects; their errors carry their own file name.
fn load_includes(
    main: &Path,
    patterns: &[Spanned<String>],
    config: &mut CollectorConfig,
    names: &mut Names,
    d: &mut Diagnostics,
) {
    let base = main.parent().unwrap_or(Path::new(""));
    let main_canonical = std::fs::canonicalize(main).ok();
    let mut done: BTreeSet<PathBuf> = BTreeSet::new();
    for pattern in patterns {
        let text = pattern.get_ref();
        if let Err(e) = glob::Pattern::new(text) {
            d.error_at(pattern, format!("invalid include glob {text:?}: {}", e.msg));
            continue;
        }
        let full = if Path::new(text).is_absolute() || base.as_os_str().is_empty() {
            text.clone()
        } else {
            format!("{}/{text}", glob::Pattern::escape(&base.to_string_lossy()))
        };
        let paths = match glob::glob(&full) {
            Ok(paths) => paths,
            Err(e) => {
                d.error_at(pattern, format!("invalid include glob {text:?}: {}", e.msg));
                continue;
            }
        };
        let mut matched = 0;
        for entry in paths {
            let path = match entry {
                Ok(p) => p,
                Err(e) => {
                    d.error_at(
                        pattern,
                        format!("cannot read {}: {}", e.path().display(), e.error()),
                    );
                    continue;
                }
            };
            matched += 1;
            let canonical = std::fs::canonicalize(&path).unwrap_or_else(|_| path.clone());
            if Some(&canonical) == main_canonical.as_ref() || !done.insert(canonical) {
                continue;
            }
            include_file(&path, config, names, d);
        }
        let literal = !text.contains(['*', '?', '[']);
        if matched == 0 && literal {
            d.error_at(pattern, format!("included file {full:?} does not exist"));
        }
    }
}

fn include_file(path: &Path, config: &mut CollectorConfig, names: &mut Names, d: &mut Diagnostics) {
    let name = path.display().to_string();
    let text = match vigil_runtime::fs::read_text_capped(path, MAX_CONFIG_FILE_SIZE) {
        Ok(t) => t,
        Err(e) => {
            d.extend(ConfigErrors::whole_file(&name, e.to_string()).0);
            return;
        }
    };
    match cfg::parse_with_hint::<RawObjects>(&name, &text, Some(INCLUDE_HINT)) {
        Ok((raw, mut inner)) => {
            convert_objects(
                &raw.rule,
                &raw.sla,
                &raw.maintenance,
                config,
                names,
                &mut inner,
            );
            d.extend(inner.into_errors());
        }
        Err(errors) => d.extend(errors.0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
                "c.toml:9:13: `token_ttl` must be positive",
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
                "c.toml:2:8: invalid rule name \"a b\": use letters, digits, '_', '-' or '.'",
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
    fn sla_and_maintenance_errors() {
        check(
            "[[sla]]\nname = \"s\"\ntarget = 1.0\nwindow = \"quarter\"\n\
             [[maintenance]]\nname = \"m\"\nstart = \"tomorrow\"\nduration = \"8d\"\nevery = \"week\"\n\
             [[maintenance]]\nname = \"n\"\nstart = 2026-12-01T02:00:00\nduration = \"1h\"\nevery = \"month\"\n",
            &[
                "c.toml:3:10: `target` must be strictly between 0 and 1 (e.g. 0.999), got 1",
                "c.toml:4:10: invalid SLA window \"quarter\": expected a duration such as \"30d\", or \"month\"",
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
             [[sla]]\nname = \"a\"\ntarget = 0.9\n[[sla]]\nname = \"a\"\ntarget = 0.9\n",
            &[
                "c.toml:6:8: duplicate rule name `a` (first defined at c.toml:2:8)",
                "c.toml:13:8: duplicate sla name `a` (first defined at c.toml:10:8)",
            ],
        );
    }

    /// Writes `files` (relative path, text) under a fresh directory and loads `collector.toml`.
    fn load_tree(
        files: &[(&str, &str)],
    ) -> (tempfile::TempDir, Result<CollectorConfig, ConfigErrors>) {
        let dir = tempfile::tempdir().expect("tempdir");
        for (rel, text) in files {
            let path = dir.path().join(rel);
            std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
            std::fs::write(&path, text).expect("write");
        }
        let result = load(&dir.path().join("collector.toml"));
        (dir, result)
    }

    #[test]
    fn included_files_add_objects_and_report_errors_under_their_own_name() {
        let (dir, result) = load_tree(&[
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
        let base = dir.path().display().to_string();
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
                format!("{two}:9:10: invalid SLA window \"1x\": expected a duration such as \"30d\", or \"month\""),
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
