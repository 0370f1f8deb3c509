//! Prometheus Alertmanager's webhook payload (version 4) and how each of its alerts maps to an
//! incident. Pure: parsing and mapping only; `crate::http::alertmanager` does the store work
//! (host lookup, open/resolve, announce).
//!
//! # Mapping (`POST /api/v1/alertmanager`)
//! - Dedup key `am|<fingerprint>` (a `fingerprint` is required), `origin = alertmanager`,
//!   `rule` = the `alertname` label (`alertmanager` when absent).
//! - Title: `annotations.summary`, else `annotations.description`, else the alert name followed
//!   by its other labels (`HighLoad (instance=web1:9100, job=node)`); at most 500 characters.
//! - Labels: the alert's labels, at most 64 (the first in name order), names and values cut to
//!   1 KiB.
//! - `status: firing` opens the incident with `first_breach_ms = startsAt` (a recurrence within
//!   `reopen_within` of its resolution reopens it; an active one is left as is);
//!   `status: resolved` resolves the active one at `endsAt`. A missing or unreadable time, or one
//!   later than now, is taken as now (and logged). Times are RFC 3339 with any offset.
//! - Host: the `instance` label without its `:port` (`web1:9100`, `[::1]:9100`, and the host of a
//!   URL such as `https://web1/health`), then the `host` label, name the agent to attach to.
//! - `severity` label -> impact / urgency -> priority (ITIL matrix):
//!
//! | `severity` | impact | urgency | priority |
//! |---|---|---|---|
//! | `critical` | high | high | P1 |
//! | `error`, `major`, `high` | high | medium | P2 |
//! | `warning`, `warn`, `medium` | medium | medium | P3 |
//! | `minor`, `low` | medium | low | P4 |
//! | `info`, `informational`, `none` | low | low | P5 |
//! | missing or anything else | medium | low | P4 |
//!
//! (case-insensitive, surrounding blanks ignored)
//!
//! This module must never: panic on a payload, keep unbounded label sets or strings from one, or
//! read the clock (callers pass `now_ms`).

use std::collections::BTreeMap;

use serde::Deserialize;

use super::rule::Level;

/// The only payload version understood.
pub const VERSION: &str = "4";
/// Prefix of the dedup key of an Alertmanager incident.
pub const DEDUP_PREFIX: &str = "am|";
/// `ci_type` of an alert attached to no host.
pub const CI_TYPE_ALERT: &str = "alert";
/// Rule name of an alert without `alertname`.
pub const DEFAULT_RULE: &str = "alertmanager";
/// Labels kept per alert.
pub const MAX_LABELS: usize = 64;
/// Longest label name or value kept, in bytes.
pub const MAX_LABEL_BYTES: usize = 1024;
/// Longest title, in characters.
pub const MAX_TITLE_CHARS: usize = 500;
/// Longest rule (alert name), in characters.
pub const MAX_RULE_CHARS: usize = 200;
/// Longest fingerprint accepted, in bytes (Alertmanager's are 16 hex digits).
pub const MAX_FINGERPRINT_BYTES: usize = 128;

/// Why a body is refused as a whole.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PayloadError {
    /// Not JSON (400).
    #[error("the body is not valid JSON: {0}")]
    Syntax(String),
    /// `version` is not "4" (422).
    #[error("unsupported Alertmanager payload version {0}: expected \"4\"")]
    Version(String),
    /// JSON, but not the webhook shape (422).
    #[error("not an Alertmanager webhook payload: {0}")]
    Shape(String),
    /// An alert without a usable fingerprint (422).
    #[error("alert {index} has no fingerprint (or one longer than {MAX_FINGERPRINT_BYTES} bytes)")]
    Fingerprint { index: usize },
}

/// The webhook body (fields Vigil does not use are ignored).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Payload {
    pub version: String,
    #[serde(default)]
    pub group_key: Option<String>,
    #[serde(default)]
    pub receiver: Option<String>,
    #[serde(default)]
    pub status: Option<Status>,
    #[serde(default)]
    pub truncated_alerts: Option<u64>,
    pub alerts: Vec<Alert>,
}

/// `firing` or `resolved`.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Firing,
    Resolved,
}

/// One alert of the payload.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Alert {
    pub status: Status,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    #[serde(default)]
    pub starts_at: Option<String>,
    #[serde(default)]
    pub ends_at: Option<String>,
    #[serde(default, rename = "generatorURL")]
    pub generator_url: Option<String>,
    #[serde(default)]
    pub fingerprint: Option<String>,
}

/// Parses and checks a webhook body: JSON (else [`PayloadError::Syntax`]), `version` "4", the
/// webhook shape, a fingerprint on every alert.
pub fn parse(body: &[u8]) -> Result<Payload, PayloadError> {
    let value: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| PayloadError::Syntax(e.to_string()))?;
    match value.get("version") {
        Some(serde_json::Value::String(v)) if v == VERSION => {}
        Some(serde_json::Value::String(v)) => return Err(PayloadError::Version(format!("{v:?}"))),
        Some(other) => return Err(PayloadError::Version(other.to_string())),
        None => return Err(PayloadError::Version("(missing)".into())),
    }
    let payload: Payload =
        serde_json::from_value(value).map_err(|e| PayloadError::Shape(e.to_string()))?;
    for (index, a) in payload.alerts.iter().enumerate() {
        match a.fingerprint.as_deref().map(str::trim) {
            Some(f) if !f.is_empty() && f.len() <= MAX_FINGERPRINT_BYTES => {}
            _ => return Err(PayloadError::Fingerprint { index }),
        }
    }
    Ok(payload)
}

/// What one alert becomes.
#[derive(Debug, Clone, PartialEq)]
pub struct Mapped {
    pub fingerprint: String,
    pub dedup_key: String,
    pub rule: String,
    pub title: String,
    pub impact: Level,
    pub urgency: Level,
    pub labels: BTreeMap<String, String>,
    /// Host names to attach to, in order of preference (`instance` host, then `host`).
    pub hosts: Vec<String>,
    pub status: Status,
    /// `startsAt` (firing) or `endsAt` (resolved), at most `now_ms`.
    pub at_ms: i64,
    /// What was wrong with the alert but did not stop it (logged and counted by the caller).
    pub problems: Vec<String>,
}

/// Maps one alert (of a payload [`parse`] accepted) at `now_ms`.
pub fn map(alert: &Alert, now_ms: i64) -> Mapped {
    let fingerprint = alert
        .fingerprint
        .as_deref()
        .unwrap_or("")
        .trim()
        .to_string();
    let rule = alert
        .labels
        .get("alertname")
        .map(|n| n.trim())
        .filter(|n| !n.is_empty())
        .map_or_else(
            || DEFAULT_RULE.to_string(),
            |n| cut_chars(n, MAX_RULE_CHARS),
        );
    let (impact, urgency) = severity(alert.labels.get("severity").map(String::as_str));
    let hosts = alert
        .labels
        .get("instance")
        .and_then(|i| instance_host(i))
        .into_iter()
        .chain(
            alert
                .labels
                .get("host")
                .map(|h| h.trim().to_string())
                .filter(|h| !h.is_empty()),
        )
        .fold(Vec::new(), |mut v, h| {
            if !v.contains(&h) {
                v.push(h);
            }
            v
        });
    let mut problems = Vec::new();
    let (field, raw) = match alert.status {
        Status::Firing => ("startsAt", alert.starts_at.as_deref()),
        Status::Resolved => ("endsAt", alert.ends_at.as_deref()),
    };
    let at_ms = match raw.map(|t| (t, parse_time(t))) {
        Some((_, Some(ms))) if ms <= now_ms => ms,
        Some((_, Some(_))) => {
            problems.push(format!("{field} is in the future; using now"));
            now_ms
        }
        Some((t, None)) => {
            problems.push(format!(
                "{field} {:?} is not an RFC 3339 time after 1970; using now",
                cut_chars(t, 64)
            ));
            now_ms
        }
        None => {
            problems.push(format!("{field} is missing; using now"));
            now_ms
        }
    };
    Mapped {
        dedup_key: format!("{DEDUP_PREFIX}{fingerprint}"),
        title: title(&rule, &alert.labels, &alert.annotations),
        labels: bound_labels(&alert.labels),
        fingerprint,
        rule,
        impact,
        urgency,
        hosts,
        status: alert.status,
        at_ms,
        problems,
    }
}

/// `severity` label -> (impact, urgency); see the module table.
pub fn severity(label: Option<&str>) -> (Level, Level) {
    let s = label
        .map(|s| s.trim().to_ascii_lowercase())
        .unwrap_or_default();
    match s.as_str() {
        "critical" => (Level::High, Level::High),
        "error" | "major" | "high" => (Level::High, Level::Medium),
        "warning" | "warn" | "medium" => (Level::Medium, Level::Medium),
        "minor" | "low" => (Level::Medium, Level::Low),
        "info" | "informational" | "none" => (Level::Low, Level::Low),
        _ => (Level::Medium, Level::Low),
    }
}

/// The host part of an `instance` label: `host:9100` -> `host`, `[::1]:9100` -> `::1`,
/// `https://host:8443/path` -> `host`, `::1` and `host` as they are. `None` when empty.
pub fn instance_host(instance: &str) -> Option<String> {
    let mut s = instance.trim();
    if let Some((scheme, rest)) = s.split_once("://") {
        if !scheme.is_empty()
            && scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '+')
        {
            s = rest;
            s = s.split(['/', '?', '#']).next().unwrap_or("");
            s = s.rsplit_once('@').map_or(s, |(_, host)| host);
        }
    }
    let host = if let Some(rest) = s.strip_prefix('[') {
        match rest.split_once(']') {
            Some((inner, tail)) if tail.is_empty() || is_port(tail.strip_prefix(':')) => inner,
            _ => s,
        }
    } else {
        match s.rsplit_once(':') {
            Some((h, port)) if !h.contains(':') && is_port(Some(port)) => h,
            _ => s,
        }
    };
    let host = host.trim();
    (!host.is_empty()).then(|| host.to_string())
}

fn is_port(p: Option<&str>) -> bool {
    p.is_some_and(|p| !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()))
}

/// `summary`, else `description`, else the alert name and its other labels.
pub fn title(
    rule: &str,
    labels: &BTreeMap<String, String>,
    annotations: &BTreeMap<String, String>,
) -> String {
    let annotated = ["summary", "description"]
        .iter()
        .filter_map(|k| annotations.get(*k))
        .map(|t| t.trim())
        .find(|t| !t.is_empty());
    let text = match annotated {
        Some(t) => t.to_string(),
        None => {
            let rest: Vec<String> = labels
                .iter()
                .filter(|(k, _)| k.as_str() != "alertname")
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            if rest.is_empty() {
                rule.to_string()
            } else {
                format!("{rule} ({})", rest.join(", "))
            }
        }
    };
    cut_chars(&text, MAX_TITLE_CHARS)
}

/// At most [`MAX_LABELS`] labels (the first in name order), names and values cut to
/// [`MAX_LABEL_BYTES`].
pub fn bound_labels(labels: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    labels
        .iter()
        .take(MAX_LABELS)
        .map(|(k, v)| {
            (
                cut_bytes(k, MAX_LABEL_BYTES).to_string(),
                cut_bytes(v, MAX_LABEL_BYTES).to_string(),
            )
        })
        .collect()
}

/// The longest prefix of `s` of at most `max` bytes that ends on a character boundary.
fn cut_bytes(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

fn cut_chars(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => s[..i].to_string(),
        None => s.to_string(),
    }
}

/// An RFC 3339 time (`2024-05-01T12:00:00.123456789+02:00`, `Z` or an offset) as Unix ms;
/// `None` when malformed or before 1970 (Go's zero time `0001-01-01T00:00:00Z` means "unset").
pub fn parse_time(s: &str) -> Option<i64> {
    vigil_shared::time::parse_rfc3339_ms(s)
        .ok()
        .filter(|ms| *ms >= 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A body as Alertmanager 0.25 sends it (two alerts, one resolved).
    const SAMPLE: &str = r#"{
      "receiver": "vigil",
      "status": "firing",
      "alerts": [
        {
          "status": "firing",
          "labels": {"alertname": "HighLoad", "instance": "web1:9100", "job": "node",
                     "severity": "critical"},
          "annotations": {"summary": "Load is high on web1"},
          "startsAt": "2024-05-01T12:00:00.123456789Z",
          "endsAt": "0001-01-01T00:00:00Z",
          "generatorURL": "http://prometheus:9090/graph?g0.expr=up",
          "fingerprint": "c6f5ab0d6e3b7c3a"
        },
        {
          "status": "resolved",
          "labels": {"alertname": "DiskFull", "host": "db1", "severity": "warning"},
          "annotations": {},
          "startsAt": "2024-05-01T11:00:00+02:00",
          "endsAt": "2024-05-01T12:30:00.5+02:00",
          "generatorURL": "",
          "fingerprint": "0123456789abcdef"
        }
      ],
      "groupLabels": {"alertname": "HighLoad"},
      "commonLabels": {"alertname": "HighLoad"},
      "commonAnnotations": {},
      "externalURL": "http://alertmanager:9093",
      "version": "4",
      "groupKey": "{}:{alertname=\"HighLoad\"}",
      "truncatedAlerts": 0
    }"#;

    const NOW: i64 = 1_800_000_000_000;

    #[test]
    fn parses_a_real_sample() {
        let p = parse(SAMPLE.as_bytes()).expect("sample");
        assert_eq!(p.version, "4");
        assert_eq!(p.receiver.as_deref(), Some("vigil"));
        assert_eq!(p.status, Some(Status::Firing));
        assert_eq!(p.truncated_alerts, Some(0));
        assert_eq!(p.alerts.len(), 2);

        let a = map(&p.alerts[0], NOW);
        assert_eq!(a.dedup_key, "am|c6f5ab0d6e3b7c3a");
        assert_eq!(a.rule, "HighLoad");
        assert_eq!(a.title, "Load is high on web1");
        assert_eq!((a.impact, a.urgency), (Level::High, Level::High));
        assert_eq!(a.hosts, ["web1"]);
        assert_eq!(a.status, Status::Firing);
        assert_eq!(a.at_ms, 1_714_564_800_123);
        assert!(a.problems.is_empty(), "{:?}", a.problems);
        assert_eq!(a.labels.len(), 4);

        let b = map(&p.alerts[1], NOW);
        assert_eq!(b.status, Status::Resolved);
        assert_eq!(b.at_ms, 1_714_559_400_500);
        assert_eq!(b.hosts, ["db1"]);
        assert_eq!(b.title, "DiskFull (host=db1, severity=warning)");
        assert_eq!((b.impact, b.urgency), (Level::Medium, Level::Medium));
    }

    fn check_parse(body: &str, expected: Result<usize, PayloadError>) {
        assert_eq!(
            parse(body.as_bytes()).map(|p| p.alerts.len()),
            expected,
            "{body}"
        );
    }

    #[test]
    fn refuses_what_is_not_a_v4_payload() {
        let alert = r#"{"status":"firing","labels":{},"fingerprint":"f"}"#;
        check_parse(&format!(r#"{{"version":"4","alerts":[{alert}]}}"#), Ok(1));
        check_parse(r#"{"version":"4","alerts":[]}"#, Ok(0));
        assert!(matches!(parse(b"{not json"), Err(PayloadError::Syntax(_))));
        assert!(matches!(parse(b""), Err(PayloadError::Syntax(_))));
        check_parse(
            r#"{"version":"3","alerts":[]}"#,
            Err(PayloadError::Version("\"3\"".into())),
        );
        check_parse(
            r#"{"version":4,"alerts":[]}"#,
            Err(PayloadError::Version("4".into())),
        );
        check_parse(
            r#"{"alerts":[]}"#,
            Err(PayloadError::Version("(missing)".into())),
        );
        check_parse("[]", Err(PayloadError::Version("(missing)".into())));
        for bad in [
            r#"{"version":"4"}"#,
            r#"{"version":"4","alerts":{}}"#,
            r#"{"version":"4","alerts":[{"status":"pending","fingerprint":"f"}]}"#,
            r#"{"version":"4","alerts":[{"labels":{},"fingerprint":"f"}]}"#,
            r#"{"version":"4","alerts":[{"status":"firing","labels":{"a":1},"fingerprint":"f"}]}"#,
        ] {
            assert!(
                matches!(parse(bad.as_bytes()), Err(PayloadError::Shape(_))),
                "{bad}"
            );
        }
        let long = "f".repeat(MAX_FINGERPRINT_BYTES + 1);
        for (fp, index) in [("", 1), ("  ", 1), (long.as_str(), 1)] {
            let body = format!(
                r#"{{"version":"4","alerts":[{alert},{{"status":"firing","fingerprint":"{fp}"}}]}}"#
            );
            check_parse(&body, Err(PayloadError::Fingerprint { index }));
        }
        check_parse(
            r#"{"version":"4","alerts":[{"status":"resolved"}]}"#,
            Err(PayloadError::Fingerprint { index: 0 }),
        );
    }

    #[test]
    fn severity_table() {
        use Level::*;
        let check = |label: Option<&str>, expected: (Level, Level), p: u8| {
            let got = severity(label);
            assert_eq!(got, expected, "{label:?}");
            assert_eq!(
                crate::incidents::rule::priority(got.0, got.1),
                p,
                "{label:?}"
            );
        };
        check(Some("critical"), (High, High), 1);
        check(Some(" CRITICAL "), (High, High), 1);
        for s in ["error", "major", "high", "Error"] {
            check(Some(s), (High, Medium), 2);
        }
        for s in ["warning", "warn", "medium", "WARNING"] {
            check(Some(s), (Medium, Medium), 3);
        }
        for s in ["minor", "low"] {
            check(Some(s), (Medium, Low), 4);
        }
        for s in ["info", "informational", "none"] {
            check(Some(s), (Low, Low), 5);
        }
        for s in [None, Some(""), Some("page"), Some("sev1")] {
            check(s, (Medium, Low), 4);
        }
    }

    #[test]
    fn instance_parsing() {
        let check = |input: &str, expected: Option<&str>| {
            assert_eq!(instance_host(input).as_deref(), expected, "{input:?}");
        };
        check("host:9100", Some("host"));
        check("web1.example.com:9100", Some("web1.example.com"));
        check("[::1]:9100", Some("::1"));
        check("[fe80::1]", Some("fe80::1"));
        check("host", Some("host"));
        check(" host ", Some("host"));
        check("10.0.0.5:9100", Some("10.0.0.5"));
        check("::1", Some("::1"));
        check("fe80::1:9100", Some("fe80::1:9100"));
        check("host:http", Some("host:http"));
        check("host:123456", Some("host:123456"));
        check("https://web1:8443/health?x=1", Some("web1"));
        check("http://user@web2/", Some("web2"));
        check("http://[::1]:80/", Some("::1"));
        check("", None);
        check(":9100", None);
        check("  ", None);
    }

    #[test]
    fn hosts_come_from_instance_then_host() {
        let check = |labels: &[(&str, &str)], expected: &[&str]| {
            let alert = Alert {
                status: Status::Firing,
                labels: labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                annotations: BTreeMap::new(),
                starts_at: None,
                ends_at: None,
                generator_url: None,
                fingerprint: Some("f".into()),
            };
            assert_eq!(map(&alert, NOW).hosts, expected, "{labels:?}");
        };
        check(&[("instance", "a:1"), ("host", "b")], &["a", "b"]);
        check(&[("instance", "a:1"), ("host", "a")], &["a"]);
        check(&[("host", "b")], &["b"]);
        check(&[("instance", "")], &[]);
        check(&[], &[]);
    }

    #[test]
    fn title_choice() {
        let map_of = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let check = |labels: &[(&str, &str)], annotations: &[(&str, &str)], expected: &str| {
            assert_eq!(
                title("HighLoad", &map_of(labels), &map_of(annotations)),
                expected
            );
        };
        let labels = [("alertname", "HighLoad"), ("instance", "web1:9100")];
        check(&labels, &[("summary", "S"), ("description", "D")], "S");
        check(&labels, &[("description", " D ")], "D");
        check(&labels, &[("summary", "  "), ("description", "D")], "D");
        check(&labels, &[], "HighLoad (instance=web1:9100)");
        check(&[("alertname", "HighLoad")], &[], "HighLoad");
        let long = "é".repeat(MAX_TITLE_CHARS + 10);
        assert_eq!(
            title("x", &BTreeMap::new(), &map_of(&[("summary", &long)]))
                .chars()
                .count(),
            MAX_TITLE_CHARS
        );
    }

    #[test]
    fn labels_are_bounded() {
        let many: BTreeMap<String, String> = (0..100)
            .map(|i| (format!("l{i:03}"), "v".to_string()))
            .collect();
        let b = bound_labels(&many);
        assert_eq!(b.len(), MAX_LABELS);
        assert!(b.contains_key("l000") && b.contains_key("l063") && !b.contains_key("l064"));

        let check = |value: String, expected_len: usize| {
            let labels = BTreeMap::from([("k".to_string(), value)]);
            assert_eq!(bound_labels(&labels)["k"].len(), expected_len);
        };
        check("a".repeat(1024), 1024);
        check("a".repeat(5000), 1024);
        // A 2-byte character straddling the limit is dropped whole.
        check(format!("{}é", "a".repeat(1023)), 1023);
        let long_name = BTreeMap::from([("n".repeat(2000), "v".to_string())]);
        assert!(bound_labels(&long_name).keys().all(|k| k.len() == 1024));
    }

    #[test]
    fn rule_name() {
        let check = |labels: &[(&str, &str)], expected: &str| {
            let alert = Alert {
                status: Status::Firing,
                labels: labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                annotations: BTreeMap::new(),
                starts_at: Some("2024-05-01T12:00:00Z".into()),
                ends_at: None,
                generator_url: None,
                fingerprint: Some(" abc ".into()),
            };
            let m = map(&alert, NOW);
            assert_eq!(m.rule, expected);
            assert_eq!(m.dedup_key, "am|abc");
        };
        check(&[("alertname", "HighLoad")], "HighLoad");
        check(&[("alertname", " ")], DEFAULT_RULE);
        check(&[], DEFAULT_RULE);
        let long = "x".repeat(300);
        check(&[("alertname", &long)], &long[..MAX_RULE_CHARS]);
    }

    #[test]
    fn times() {
        let check = |s: &str, expected: Option<i64>| {
            assert_eq!(parse_time(s), expected, "{s:?}");
        };
        check("1970-01-01T00:00:00Z", Some(0));
        check("1970-01-01T00:00:01.5Z", Some(1500));
        check("1970-01-01T00:00:01.123456789Z", Some(1123));
        check("1970-01-01t00:00:01.05z", Some(1050));
        check("2024-05-01T12:00:00Z", Some(1_714_564_800_000));
        check("2024-05-01T14:00:00+02:00", Some(1_714_564_800_000));
        check("2024-05-01T10:30:00-01:30", Some(1_714_564_800_000));
        check("2024-02-29T00:00:00Z", Some(1_709_164_800_000));
        check("2026-12-01T02:00:00Z", Some(1_796_090_400_000));
        check("0001-01-01T00:00:00Z", None);
        check("2023-02-29T00:00:00Z", None);
        check("2024-13-01T00:00:00Z", None);
        check("2024-05-01T24:00:00Z", None);
        check("2024-05-01T12:00:00", None);
        check("2024-05-01T12:00:00.Z", None);
        check("2024-05-01T12:00:00+0200", None);
        check("2024-05-01", None);
        check("yesterday", None);
        check("", None);
    }

    #[test]
    fn bad_times_use_now_and_are_reported() {
        let check =
            |status: Status, starts: Option<&str>, ends: Option<&str>, at: i64, bad: bool| {
                let alert = Alert {
                    status,
                    labels: BTreeMap::new(),
                    annotations: BTreeMap::new(),
                    starts_at: starts.map(str::to_string),
                    ends_at: ends.map(str::to_string),
                    generator_url: None,
                    fingerprint: Some("f".into()),
                };
                let m = map(&alert, NOW);
                assert_eq!(
                    (m.at_ms, !m.problems.is_empty()),
                    (at, bad),
                    "{starts:?} {ends:?}"
                );
            };
        let t = "2024-05-01T12:00:00Z";
        let ms = 1_714_564_800_000;
        check(
            Status::Firing,
            Some(t),
            Some("0001-01-01T00:00:00Z"),
            ms,
            false,
        );
        check(Status::Firing, Some("garbage"), None, NOW, true);
        check(Status::Firing, None, None, NOW, true);
        check(
            Status::Firing,
            Some("2099-01-01T00:00:00Z"),
            None,
            NOW,
            true,
        );
        check(Status::Resolved, Some("garbage"), Some(t), ms, false);
        check(
            Status::Resolved,
            Some(t),
            Some("0001-01-01T00:00:00Z"),
            NOW,
            true,
        );
    }
}
