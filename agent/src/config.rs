//! The agent's configuration: `agent.toml` (`docs/reference.md`, section 4) or the `run` flags, turned into a
//! validated [`AgentConfig`] before anything connects.
//!
//! Two layers: the private `Raw*` serde structs mirror the file with every leaf
//! [`Spanned`]; [`from_str`] converts them into typed values and reports **every** problem at
//! once as `file:line:col: message` (see `vigil_shared::config`). Raw structs do not use
//! `deny_unknown_fields`: unknown keys are collected by `vigil_shared::config::parse` so that all
//! of them are reported together with the value errors.
//!
//! What it must never do: resolve names or open sockets (the collector address is only checked
//! for its `host:port` shape here), read environment variables, or panic on any input.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use vigil_shared::codec::DEFAULT_MAX_FRAME;
use vigil_shared::config::{self as cfg, ConfigErrors, Diagnostics, Spanned};

pub const DEFAULT_DATA_DIR: &str = "/var/lib/vigil-agent";
pub const DEFAULT_METRICS_INTERVAL: Duration = Duration::from_secs(10);
/// Sampling faster than this only burns CPU and bandwidth; smaller values are an error.
pub const MIN_INTERVAL: Duration = Duration::from_secs(1);
pub const DEFAULT_DISCOVERY_INTERVAL: Duration = Duration::from_secs(5 * 60);
pub const DEFAULT_SPOOL_MAX_SIZE: u64 = 64 * 1024 * 1024;
/// The spool must hold at least one largest frame.
pub const MIN_SPOOL_MAX_SIZE: u64 = DEFAULT_MAX_FRAME as u64;
pub const DEFAULT_CHECK_TIMEOUT: Duration = Duration::from_secs(5);
pub const DEFAULT_EXPECT_STATUS: u16 = 200;
/// Configuration files larger than this are refused unread.
pub const MAX_CONFIG_FILE_SIZE: u64 = 1024 * 1024;

/// The agent's validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentConfig {
    /// The collector's QUIC address, `host:port` (shape checked, not resolved).
    pub collector: String,
    /// Enrollment token, needed only for the first run.
    pub token: Option<String>,
    pub data_dir: PathBuf,
    /// Tags attached to this host's CIs (`role = "web"`), matched by rule scopes `tag = "k=v"`.
    pub tags: BTreeMap<String, String>,
    /// Overrides the host name reported to the collector.
    pub hostname: Option<String>,
    /// Filesystem root discovery reads /proc, /sys, /etc and /var from (default "/"; a fixture
    /// tree in tests, the host's root mounted elsewhere in a container).
    pub root: PathBuf,
    pub metrics_interval: Duration,
    pub discovery_interval: Duration,
    /// Upper bound of the on-disk spool, bytes.
    pub spool_max_size: u64,
    /// Local checks, run once per metrics interval.
    pub checks: Vec<CheckSpec>,
}

/// One local check (`[[check]]`), run every metrics interval.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckSpec {
    /// Unique among the checks; the `check` label of `vigil_check_up`.
    pub name: String,
    pub kind: CheckKind,
    /// Never longer than the metrics interval.
    pub timeout: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckKind {
    /// Up when a TCP connection to `target` (`host:port`) succeeds.
    Tcp { target: String },
    /// Up when a GET of `url` (`http://...`) answers `expect_status`.
    Http { url: String, expect_status: u16 },
    /// Up when a process with this name runs.
    Process { name: String },
}

impl AgentConfig {
    /// The configuration of `vigil-agent run --collector HOST:PORT [--token T] [--data-dir DIR]`:
    /// those values and defaults for everything else. Errors name the flag.
    pub fn from_flags(
        collector: &str,
        token: Option<String>,
        data_dir: Option<PathBuf>,
    ) -> Result<AgentConfig, ConfigErrors> {
        let mut errors = Vec::new();
        if let Err(msg) = cfg::parse_host_port(collector) {
            errors.extend(ConfigErrors::whole_file("--collector", msg).0);
        }
        if token.as_deref().is_some_and(|t| t.trim().is_empty()) {
            errors.extend(ConfigErrors::whole_file("--token", "must not be empty").0);
        }
        if data_dir.as_ref().is_some_and(|d| d.as_os_str().is_empty()) {
            errors.extend(ConfigErrors::whole_file("--data-dir", "must not be empty").0);
        }
        if !errors.is_empty() {
            return Err(ConfigErrors(errors));
        }
        Ok(AgentConfig {
            collector: collector.to_string(),
            token,
            data_dir: data_dir.unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR)),
            tags: BTreeMap::new(),
            hostname: None,
            root: PathBuf::from("/"),
            metrics_interval: DEFAULT_METRICS_INTERVAL,
            discovery_interval: DEFAULT_DISCOVERY_INTERVAL,
            spool_max_size: DEFAULT_SPOOL_MAX_SIZE,
            checks: Vec::new(),
        })
    }
}

/// Reads and validates `path`. Every problem comes back at once, each with its position.
pub fn load(path: &Path) -> Result<AgentConfig, ConfigErrors> {
    let name = path.display().to_string();
    let text = vigil_runtime::fs::read_text_capped(path, MAX_CONFIG_FILE_SIZE)
        .map_err(|e| ConfigErrors::whole_file(&name, e.to_string()))?;
    from_str(&name, &text)
}

/// Validates the text of an agent config; `file` names it in error messages.
pub fn from_str(file: &str, text: &str) -> Result<AgentConfig, ConfigErrors> {
    let (raw, mut d) = cfg::parse::<RawAgent>(file, text)?;
    let config = convert(raw, &mut d);
    d.finish(config)
}

#[derive(Debug, Deserialize)]
struct RawAgent {
    // Optional here so that a missing `collector` is reported with the other errors.
    collector: Option<Spanned<String>>,
    token: Option<Spanned<String>>,
    data_dir: Option<Spanned<String>>,
    #[serde(default)]
    // Keys cannot be `Spanned` (serde_ignored reads map keys as plain strings); key errors are
    // reported at the value.
    tags: BTreeMap<String, Spanned<String>>,
    hostname: Option<Spanned<String>>,
    root: Option<Spanned<String>>,
    metrics: Option<RawInterval>,
    discovery: Option<RawInterval>,
    spool: Option<RawSpool>,
    #[serde(default)]
    check: Vec<Spanned<RawCheck>>,
}

#[derive(Debug, Deserialize)]
struct RawInterval {
    interval: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
struct RawSpool {
    max_size: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
struct RawCheck {
    name: Option<Spanned<String>>,
    #[serde(rename = "type")]
    kind: Option<Spanned<String>>,
    target: Option<Spanned<String>>,
    expect_status: Option<Spanned<i64>>,
    timeout: Option<Spanned<String>>,
}

fn convert(raw: RawAgent, d: &mut Diagnostics) -> AgentConfig {
    let collector = match &raw.collector {
        Some(c) => {
            d.parse_value(c, |s| cfg::parse_host_port(s));
            c.get_ref().clone()
        }
        None => {
            d.missing_top_level(
                "collector",
                "missing key `collector` (the collector's HOST:PORT)",
            );
            String::new()
        }
    };
    let token = raw.token.as_ref().and_then(|t| {
        if t.get_ref().trim().is_empty() {
            d.error_at(t, "`token` must not be empty (leave it out once enrolled)");
            None
        } else {
            Some(t.get_ref().clone())
        }
    });
    let data_dir = match &raw.data_dir {
        Some(p) if p.get_ref().is_empty() => {
            d.error_at(p, "`data_dir` must not be empty");
            PathBuf::from(DEFAULT_DATA_DIR)
        }
        Some(p) => PathBuf::from(p.get_ref()),
        None => PathBuf::from(DEFAULT_DATA_DIR),
    };

    let mut tags = BTreeMap::new();
    for (k, v) in &raw.tags {
        if !is_tag_key(k) {
            d.error_at(
                v,
                format!("invalid tag name {k:?}: use letters, digits, '_', '-' or '.'"),
            );
        } else if v.get_ref().is_empty() || v.get_ref().chars().any(char::is_control) {
            d.error_at(
                v,
                format!("invalid value for tag `{k}`: must be non-empty text"),
            );
        }
        tags.insert(k.clone(), v.get_ref().clone());
    }

    let hostname = raw.hostname.as_ref().and_then(|h| {
        d.parse_value(h, |s| {
            if !s.is_empty()
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
            {
                Ok(s.clone())
            } else {
                Err(format!(
                    "invalid hostname {s:?}: use letters, digits, '.', '-' or '_'"
                ))
            }
        })
    });

    let root = match &raw.root {
        Some(r) if r.get_ref().is_empty() => {
            d.error_at(r, "`root` must not be empty");
            PathBuf::from("/")
        }
        Some(r) => PathBuf::from(r.get_ref()),
        None => PathBuf::from("/"),
    };

    let metrics_interval = interval(d, raw.metrics.as_ref(), "metrics", DEFAULT_METRICS_INTERVAL);
    let discovery_interval = interval(
        d,
        raw.discovery.as_ref(),
        "discovery",
        DEFAULT_DISCOVERY_INTERVAL,
    );

    let max_size = raw.spool.as_ref().and_then(|s| s.max_size.as_ref());
    let spool_max_size = match max_size {
        Some(v) => match d.byte_size(v) {
            Some(n) if n < MIN_SPOOL_MAX_SIZE => {
                d.error_at(
                    v,
                    format!("[spool] max_size must be at least {MIN_SPOOL_MAX_SIZE} bytes (1MiB)"),
                );
                DEFAULT_SPOOL_MAX_SIZE
            }
            Some(n) => n,
            None => DEFAULT_SPOOL_MAX_SIZE,
        },
        None => DEFAULT_SPOOL_MAX_SIZE,
    };

    let mut checks = Vec::new();
    let mut seen: BTreeMap<String, std::ops::Range<usize>> = BTreeMap::new();
    for check in &raw.check {
        if let Some(spec) = convert_check(check, metrics_interval, d) {
            if let Some(first) = seen.get(&spec.name) {
                let at = d.location(first.clone());
                let span = check
                    .get_ref()
                    .name
                    .as_ref()
                    .map_or(check.span(), Spanned::span);
                d.error(
                    span,
                    format!(
                        "duplicate check name `{}` (first defined at {at})",
                        spec.name
                    ),
                );
                continue;
            }
            let span = check
                .get_ref()
                .name
                .as_ref()
                .map_or(check.span(), Spanned::span);
            seen.insert(spec.name.clone(), span);
            checks.push(spec);
        }
    }

    AgentConfig {
        collector,
        token,
        data_dir,
        tags,
        hostname,
        root,
        metrics_interval,
        discovery_interval,
        spool_max_size,
        checks,
    }
}

fn is_tag_key(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

/// `[section] interval`, defaulted, at least [`MIN_INTERVAL`].
fn interval(
    d: &mut Diagnostics,
    raw: Option<&RawInterval>,
    section: &str,
    default: Duration,
) -> Duration {
    let Some(v) = raw.and_then(|r| r.interval.as_ref()) else {
        return default;
    };
    match d.duration(v) {
        Some(i) if i < MIN_INTERVAL => {
            d.error_at(
                v,
                format!(
                    "[{section}] interval must be at least 1s (got {:?})",
                    v.get_ref()
                ),
            );
            default
        }
        Some(i) => i,
        None => default,
    }
}

/// Validates one `[[check]]`; `None` (with errors recorded) when it is unusable.
fn convert_check(
    check: &Spanned<RawCheck>,
    metrics_interval: Duration,
    d: &mut Diagnostics,
) -> Option<CheckSpec> {
    let raw = check.get_ref();
    let mut ok = true;
    let missing = |d: &mut Diagnostics, key: &str| {
        d.missing(check.span(), key, format!("[[check]] is missing `{key}`"));
    };

    let name = match &raw.name {
        Some(n) if n.get_ref().trim().is_empty() || n.get_ref().chars().any(char::is_control) => {
            d.error_at(n, "check `name` must be non-empty text");
            ok = false;
            String::new()
        }
        Some(n) => n.get_ref().clone(),
        None => {
            missing(d, "name");
            ok = false;
            String::new()
        }
    };

    let timeout = match &raw.timeout {
        Some(t) => match d.duration(t) {
            Some(v) if v.is_zero() => {
                d.error_at(t, "check `timeout` must be positive");
                ok = false;
                DEFAULT_CHECK_TIMEOUT
            }
            Some(v) if v > metrics_interval => {
                d.error_at(
                    t,
                    format!(
                        "check `timeout` ({}) must not exceed the [metrics] interval ({:?}): \
                         checks run every interval",
                        t.get_ref(),
                        metrics_interval
                    ),
                );
                ok = false;
                v
            }
            Some(v) => v,
            None => {
                ok = false;
                DEFAULT_CHECK_TIMEOUT
            }
        },
        None => DEFAULT_CHECK_TIMEOUT.min(metrics_interval),
    };

    let Some(kind_text) = &raw.kind else {
        missing(d, "type");
        return None;
    };
    let Some(target) = &raw.target else {
        missing(d, "target");
        return None;
    };

    if let (Some(status), false) = (&raw.expect_status, kind_text.get_ref() == "http") {
        d.error_at(
            status,
            "`expect_status` applies only to checks with type = \"http\"",
        );
        ok = false;
    }

    let kind = match kind_text.get_ref().as_str() {
        "tcp" => d
            .parse_value(target, |t| cfg::parse_host_port(t).map(|_| t.clone()))
            .map(|target| CheckKind::Tcp { target }),
        "http" => {
            let url = d.parse_value(target, |t| validate_http_url(t).map(|()| t.clone()));
            let expect_status = match &raw.expect_status {
                Some(s) => d.parse_value(s, |&s| match u16::try_from(s) {
                    Ok(code @ 100..=599) => Ok(code),
                    _ => Err(format!(
                        "invalid `expect_status` {s}: expected an HTTP status 100-599"
                    )),
                }),
                None => Some(DEFAULT_EXPECT_STATUS),
            };
            match (url, expect_status) {
                (Some(url), Some(expect_status)) => Some(CheckKind::Http { url, expect_status }),
                _ => None,
            }
        }
        "process" => d
            .parse_value(target, |t| {
                if t.trim().is_empty() || t.contains('/') || t.chars().any(char::is_control) {
                    Err(format!(
                        "invalid process name {t:?}: give the executable's name, not a path"
                    ))
                } else {
                    Ok(t.clone())
                }
            })
            .map(|name| CheckKind::Process { name }),
        other => {
            d.error_at(
                kind_text,
                format!("unknown check type {other:?}: expected \"tcp\", \"http\" or \"process\""),
            );
            None
        }
    };

    match kind {
        Some(kind) if ok => Some(CheckSpec {
            name,
            kind,
            timeout,
        }),
        _ => None,
    }
}

/// `http://host[:port][/path]`. Only plain HTTP: the agent's checks speak no TLS.
fn validate_http_url(url: &str) -> Result<(), String> {
    let rest = match url.strip_prefix("http://") {
        Some(rest) => rest,
        None if url.starts_with("https://") => {
            return Err(format!(
                "invalid URL {url:?}: https is not supported by http checks (use an http:// URL or a tcp check)"
            ))
        }
        None => return Err(format!("invalid URL {url:?}: must start with http://")),
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let result = if authority.contains(':') && !authority.ends_with(']') {
        cfg::parse_host_port(authority).map(|_| ())
    } else {
        cfg::parse_host_port(&format!("{authority}:80")).map(|_| ())
    };
    result.map_err(|_| format!("invalid URL {url:?}: bad host or port"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Error lines for `text` as file `agent.toml`; empty when it is valid.
    fn errors_of(text: &str) -> Vec<String> {
        match from_str("agent.toml", text) {
            Ok(_) => Vec::new(),
            Err(e) => e.0.iter().map(ToString::to_string).collect(),
        }
    }

    #[track_caller]
    fn check(text: &str, expected: &[&str]) {
        assert_eq!(errors_of(text), expected, "config:\n{text}");
    }

    fn valid(text: &str) -> AgentConfig {
        match from_str("agent.toml", text) {
            Ok(c) => c,
            Err(e) => panic!("unexpected errors:\n{e}\nin:\n{text}"),
        }
    }

    const MINIMAL: &str = "collector = \"c.example:4433\"\n";

    #[test]
    fn example_file_loads() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../config/agent.toml");
        let config = load(Path::new(path)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(config.collector, "collector.example.org:4433");
        assert_eq!(config.checks.len(), 3);
        assert_eq!(config.tags.get("role").map(String::as_str), Some("web"));
    }

    #[test]
    fn defaults() {
        let c = valid(MINIMAL);
        assert_eq!(
            c,
            AgentConfig::from_flags("c.example:4433", None, None).expect("flags")
        );
        assert_eq!(c.data_dir, PathBuf::from("/var/lib/vigil-agent"));
        assert_eq!(c.metrics_interval, Duration::from_secs(10));
        assert_eq!(c.discovery_interval, Duration::from_secs(300));
        assert_eq!(c.spool_max_size, 64 << 20);
        assert!(c.checks.is_empty() && c.tags.is_empty() && c.token.is_none());
    }

    #[test]
    fn checks_are_typed() {
        let c = valid(
            "collector = \"c:1\"\n[metrics]\ninterval = \"3s\"\n\
             [[check]]\nname = \"a\"\ntype = \"tcp\"\ntarget = \"[::1]:22\"\n\
             [[check]]\nname = \"b\"\ntype = \"http\"\ntarget = \"http://h:8080/x\"\n\
             expect_status = 204\ntimeout = \"1s\"\n\
             [[check]]\nname = \"c\"\ntype = \"process\"\ntarget = \"sshd\"\n",
        );
        let three = Duration::from_secs(3);
        assert_eq!(
            c.checks,
            [
                CheckSpec {
                    name: "a".into(),
                    kind: CheckKind::Tcp {
                        target: "[::1]:22".into()
                    },
                    timeout: three
                },
                CheckSpec {
                    name: "b".into(),
                    kind: CheckKind::Http {
                        url: "http://h:8080/x".into(),
                        expect_status: 204
                    },
                    timeout: Duration::from_secs(1),
                },
                CheckSpec {
                    name: "c".into(),
                    kind: CheckKind::Process {
                        name: "sshd".into()
                    },
                    timeout: three
                },
            ]
        );
    }

    #[test]
    fn unknown_key_and_bad_duration_are_both_reported() {
        check(
            "collector = \"c:1\"\ncolour = \"blue\"\n[metrics]\ninterval = \"10q\"\n",
            &[
                "agent.toml:2:1: unknown key `colour`",
                "agent.toml:4:12: invalid duration \"10q\": unknown unit \"q\" \
                 (use ms, s, m, h, d, e.g. \"10s\", \"5m\", \"2h\", \"30d\")",
            ],
        );
    }

    #[test]
    fn value_errors() {
        check(
            "collector = \"nohost\"\n[metrics]\ninterval = \"500ms\"\n[spool]\nmax_size = \"1KiB\"\n",
            &[
                "agent.toml:1:13: invalid address \"nohost\": missing :PORT (expected HOST:PORT)",
                "agent.toml:3:12: [metrics] interval must be at least 1s (got \"500ms\")",
                "agent.toml:5:12: [spool] max_size must be at least 1048576 bytes (1MiB)",
            ],
        );
        check(
            "token = \"\"\ntags = { \"a b\" = \"x\", ok = \"\" }\nhostname = \"no/slash\"\n",
            &[
                "agent.toml: missing key `collector` (the collector's HOST:PORT)",
                "agent.toml:1:9: `token` must not be empty (leave it out once enrolled)",
                "agent.toml:2:18: invalid tag name \"a b\": use letters, digits, '_', '-' or '.'",
                "agent.toml:2:28: invalid value for tag `ok`: must be non-empty text",
                "agent.toml:3:12: invalid hostname \"no/slash\": use letters, digits, '.', '-' or '_'",
            ],
        );
    }

    #[test]
    fn check_errors() {
        check(
            "collector = \"c:1\"\n\
             [[check]]\nname = \"a\"\ntype = \"ping\"\ntarget = \"x\"\n\
             [[check]]\nname = \"b\"\ntype = \"tcp\"\ntarget = \"x\"\nexpect_status = 200\n\
             [[check]]\nname = \"c\"\ntype = \"http\"\ntarget = \"https://x/\"\nexpect_status = 700\n\
             [[check]]\nname = \"d\"\ntype = \"process\"\ntarget = \"/usr/sbin/sshd\"\ntimeout = \"20s\"\n\
             [[check]]\ntype = \"tcp\"\n",
            &[
                "agent.toml:4:8: unknown check type \"ping\": expected \"tcp\", \"http\" or \"process\"",
                "agent.toml:9:10: invalid address \"x\": missing :PORT (expected HOST:PORT)",
                "agent.toml:10:17: `expect_status` applies only to checks with type = \"http\"",
                "agent.toml:14:10: invalid URL \"https://x/\": https is not supported by http checks \
                 (use an http:// URL or a tcp check)",
                "agent.toml:15:17: invalid `expect_status` 700: expected an HTTP status 100-599",
                "agent.toml:19:10: invalid process name \"/usr/sbin/sshd\": give the executable's name, \
                 not a path",
                "agent.toml:20:11: check `timeout` (20s) must not exceed the [metrics] interval (10s): \
                 checks run every interval",
                "agent.toml:21:1: [[check]] is missing `name`",
                "agent.toml:21:1: [[check]] is missing `target`",
            ],
        );
    }

    #[test]
    fn duplicate_check_names() {
        check(
            "collector = \"c:1\"\n\
             [[check]]\nname = \"a\"\ntype = \"process\"\ntarget = \"x\"\n\
             [[check]]\nname = \"a\"\ntype = \"process\"\ntarget = \"y\"\n",
            &["agent.toml:7:8: duplicate check name `a` (first defined at agent.toml:3:8)"],
        );
    }

    #[test]
    fn http_urls() {
        for (url, ok) in [
            ("http://127.0.0.1/healthz", true),
            ("http://h:8080", true),
            ("http://[::1]:80/x?y", true),
            ("http://[::1]/x", true),
            ("http://", false),
            ("http://h:xx/", false),
            ("ftp://h/", false),
        ] {
            assert_eq!(validate_http_url(url).is_ok(), ok, "{url}");
        }
    }

    #[test]
    fn flags() {
        let c = AgentConfig::from_flags("c:4433", Some("tok".into()), Some("/tmp/a".into()))
            .expect("flags");
        assert_eq!(
            (c.token.as_deref(), c.data_dir),
            (Some("tok"), PathBuf::from("/tmp/a"))
        );
        let e = AgentConfig::from_flags("c", Some(String::new()), None).expect_err("bad flags");
        assert_eq!(
            e.to_string(),
            "--collector: invalid address \"c\": missing :PORT (expected HOST:PORT)\n--token: must not be empty"
        );
    }

    #[test]
    fn unreadable_file_is_one_error_without_position() {
        let e = load(Path::new("/nonexistent/agent.toml")).expect_err("missing file");
        assert_eq!(e.0.len(), 1);
        assert!(
            e.to_string()
                .starts_with("/nonexistent/agent.toml: cannot open:"),
            "{e}"
        );
    }
}
