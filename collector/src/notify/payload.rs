//! Rendering of notification bodies (JSON v1 and Slack text), idempotency keys and signatures.
//!
//! Pure functions: no I/O, no clock. What they produce is documented in the parent module's
//! docs, which receivers rely on; change both together and never remove or retype a JSON field
//! without bumping [`JSON_VERSION`](super::JSON_VERSION).

use std::collections::BTreeMap;

use hmac::{Hmac, Mac};
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::{EventKind, Format, Notification, JSON_VERSION};

/// `vigil-<incident>-<event>-<first 16 hex of SHA-256(webhook name)>`: stable for one
/// (incident, event, webhook), visible ASCII whatever the webhook name holds.
pub fn idempotency_key(incident_id: i64, event_id: i64, webhook: &str) -> String {
    let digest = Sha256::digest(webhook.as_bytes());
    let hex = hex::encode(digest);
    format!("vigil-{incident_id}-{event_id}-{}", &hex[..16])
}

/// The `X-Vigil-Signature` value: `sha256=<lowercase hex HMAC-SHA256(secret, body)>`.
pub fn signature(secret: &str, body: &[u8]) -> String {
    // HMAC accepts keys of any length, so this never fails; the fallback keeps it panic-free.
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret.as_bytes()) else {
        return String::from("sha256=");
    };
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// The body stored in the outbox for one webhook.
pub(super) fn render(format: Format, n: &Notification, key: &str, event_id: i64) -> String {
    let text = summary(n);
    let out = match format {
        Format::Json => serde_json::to_string(&JsonBody {
            version: JSON_VERSION,
            event: n.event.as_str(),
            idempotency_key: key,
            sent_by: "vigil",
            event_id,
            at_ms: n.at_ms,
            actor: &n.actor,
            summary: &text,
            incident: Incident {
                id: n.incident_id,
                rule: &n.rule,
                title: &n.title,
                state: &n.state,
                priority: n.priority,
                priority_name: format!("P{}", n.priority),
                impact: &n.impact,
                urgency: &n.urgency,
                host: n.host.as_deref(),
                agent_id: n.agent_id.as_deref(),
                ci: Ci {
                    id: n.ci_id,
                    r#type: &n.ci_type,
                    key: &n.ci_key,
                },
                metric: n.metric.as_deref(),
                op: n.op.as_deref(),
                value: n.value,
                last_value: n.last_value,
                threshold: n.threshold,
                peak: n.peak,
                started_ms: n.started_ms,
                acknowledged_ms: n.acknowledged_ms,
                resolved_ms: n.resolved_ms,
                assignee: n.assignee.as_deref(),
                resolution_code: n.resolution_code.as_deref(),
                resolution_note: n.resolution_note.as_deref(),
                reopen_count: n.reopen_count,
                labels: &n.labels,
            },
            service_level: n.service_level.as_ref().map(|l| ServiceLevelBody {
                target: l.target,
                percent: l.percent,
                target_seconds: l.target_ms / 1000,
                due_ms: l.due_ms,
                sla: l.sla.as_deref(),
            }),
        }),
        Format::Slack => serde_json::to_string(&SlackBody {
            text: &slack_escape(&text),
        }),
    };
    // Serializing these structs cannot fail (string keys, no custom serializers; non-finite
    // floats become null); an empty object is still a valid body if it ever did.
    out.unwrap_or_else(|_| String::from("{}"))
}

#[derive(Serialize)]
struct JsonBody<'a> {
    version: u32,
    event: &'static str,
    idempotency_key: &'a str,
    sent_by: &'static str,
    event_id: i64,
    at_ms: i64,
    actor: &'a str,
    summary: &'a str,
    incident: Incident<'a>,
    /// Only on `sla_warning` and `sla_breached`.
    #[serde(skip_serializing_if = "Option::is_none")]
    service_level: Option<ServiceLevelBody<'a>>,
}

#[derive(Serialize)]
struct ServiceLevelBody<'a> {
    target: &'static str,
    percent: u8,
    target_seconds: i64,
    due_ms: Option<i64>,
    sla: Option<&'a str>,
}

#[derive(Serialize)]
struct Incident<'a> {
    id: i64,
    rule: &'a str,
    title: &'a str,
    state: &'a str,
    priority: u8,
    /// `P1`..`P5`, as the API writes it (`priority` stays an integer: a version-1 field keeps
    /// its type).
    priority_name: String,
    impact: &'a str,
    urgency: &'a str,
    host: Option<&'a str>,
    agent_id: Option<&'a str>,
    ci: Ci<'a>,
    metric: Option<&'a str>,
    op: Option<&'a str>,
    value: Option<f64>,
    last_value: Option<f64>,
    threshold: Option<f64>,
    peak: Option<f64>,
    started_ms: i64,
    acknowledged_ms: Option<i64>,
    resolved_ms: Option<i64>,
    assignee: Option<&'a str>,
    resolution_code: Option<&'a str>,
    resolution_note: Option<&'a str>,
    reopen_count: u32,
    labels: &'a BTreeMap<String, String>,
}

#[derive(Serialize)]
struct Ci<'a> {
    id: Option<i64>,
    r#type: &'a str,
    key: &'a str,
}

#[derive(Serialize)]
struct SlackBody<'a> {
    text: &'a str,
}

/// Longest summary, in characters (titles and labels come from rules and Alertmanager).
const SUMMARY_MAX_CHARS: usize = 500;

/// The one-line human summary: `[P2] OPENED #12 filesystem-almost-full on web-1 /var: 0.93 > 0.90`.
pub fn summary(n: &Notification) -> String {
    let mut s = format!(
        "[P{}] {} #{} {}",
        n.priority,
        n.event.as_str().to_ascii_uppercase(),
        n.incident_id,
        n.rule
    );
    if let Some(target) = target(n) {
        s.push_str(" on ");
        s.push_str(&target);
    }
    match n.event {
        EventKind::Opened | EventKind::Reopened => {
            if let (Some(v), Some(t)) = (n.value, n.threshold) {
                let op = n.op.as_deref().unwrap_or("vs");
                s.push_str(&format!(": {} {op} {}", number(v), number(t)));
            } else if !n.title.is_empty() {
                s.push_str(": ");
                s.push_str(&n.title);
            }
        }
        EventKind::Acknowledged => {
            s.push_str(" by ");
            s.push_str(&n.actor);
            if let Some(a) = n.assignee.as_deref().filter(|a| *a != n.actor) {
                s.push_str(&format!(" (assigned to {a})"));
            }
        }
        EventKind::Resolved => {
            s.push_str(" by ");
            s.push_str(&n.actor);
            if let Some(code) = &n.resolution_code {
                s.push_str(&format!(" ({code})"));
            }
        }
        EventKind::SlaWarning | EventKind::SlaBreached => {
            if let Some(l) = &n.service_level {
                let target = humantime::format_duration(std::time::Duration::from_secs(
                    (l.target_ms / 1000).unsigned_abs(),
                ));
                if l.percent >= 100 {
                    s.push_str(&format!(": {} target of {target} missed", l.target));
                } else {
                    s.push_str(&format!(
                        ": {}% of the {} target of {target} spent",
                        l.percent, l.target
                    ));
                }
                if let Some(sla) = &l.sla {
                    s.push_str(&format!(" (SLA {sla})"));
                }
            }
        }
    }
    one_line(&s, SUMMARY_MAX_CHARS)
}

/// `web-1 /var`: the host, then the CI key when it says more than the host name.
fn target(n: &Notification) -> Option<String> {
    let host = n.host.as_deref().or(n.agent_id.as_deref());
    let key = Some(n.ci_key.as_str()).filter(|k| !k.is_empty() && Some(*k) != host);
    match (host, key) {
        (Some(h), Some(k)) if n.ci_type != "host" => Some(format!("{h} {k}")),
        (Some(h), _) => Some(h.to_owned()),
        (None, Some(k)) => Some(k.to_owned()),
        (None, None) => None,
    }
}

/// Integers without decimals, large values with one, the rest with two: `0.90`, `93.5`, `1024`.
fn number(v: f64) -> String {
    if !v.is_finite() {
        return v.to_string();
    }
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{v:.0}")
    } else if v.abs() >= 100.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// Control characters (newlines included) become spaces; cut at `max` characters with `...`.
fn one_line(s: &str, max: usize) -> String {
    let mut out: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(max)
        .collect();
    if s.chars().count() > max {
        out.push_str("...");
    }
    out
}

/// Slack's escaping for message text: only `&`, `<` and `>`.
fn slack_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::notify::tests::notification;

    #[test]
    fn hmac_sha256_matches_rfc4231_case_2() {
        assert_eq!(
            signature("Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn idempotency_key_is_stable_and_distinct() {
        let k = idempotency_key(12, 345, "ops");
        assert_eq!(k, idempotency_key(12, 345, "ops"));
        assert!(k.starts_with("vigil-12-345-"), "{k}");
        assert_eq!(k.len(), "vigil-12-345-".len() + 16);
        for other in [
            idempotency_key(12, 346, "ops"),
            idempotency_key(13, 345, "ops"),
            idempotency_key(12, 345, "ops2"),
        ] {
            assert_ne!(k, other);
        }
        // Any webhook name gives a header-safe key.
        let odd = idempotency_key(1, 2, "é\n\"x\"");
        assert!(odd.bytes().all(|b| b.is_ascii_graphic()), "{odd}");
    }

    fn check_summary(edit: impl FnOnce(&mut Notification), expected: &str) {
        let mut n = notification();
        edit(&mut n);
        assert_eq!(summary(&n), expected);
    }

    #[test]
    fn summaries() {
        check_summary(
            |_| {},
            "[P2] OPENED #12 filesystem-almost-full on web-1 /var: 0.93 > 0.90",
        );
        check_summary(
            |n| n.event = EventKind::Reopened,
            "[P2] REOPENED #12 filesystem-almost-full on web-1 /var: 0.93 > 0.90",
        );
        check_summary(
            |n| {
                n.event = EventKind::Acknowledged;
                n.actor = "alice".into();
                n.assignee = Some("storage-team".into());
            },
            "[P2] ACKNOWLEDGED #12 filesystem-almost-full on web-1 /var by alice \
             (assigned to storage-team)",
        );
        check_summary(
            |n| {
                n.event = EventKind::Resolved;
                n.actor = "system".into();
                n.resolution_code = Some("auto".into());
            },
            "[P2] RESOLVED #12 filesystem-almost-full on web-1 /var by system (auto)",
        );
        let level = |percent| crate::notify::ServiceLevel {
            target: "response",
            percent,
            target_ms: 3_600_000,
            due_ms: Some(1_718_003_300_000),
            sla: Some("web".into()),
        };
        check_summary(
            |n| {
                n.event = EventKind::SlaWarning;
                n.service_level = Some(level(75));
            },
            "[P2] SLA_WARNING #12 filesystem-almost-full on web-1 /var: 75% of the response \
             target of 1h spent (SLA web)",
        );
        check_summary(
            |n| {
                n.event = EventKind::SlaBreached;
                n.service_level = Some(crate::notify::ServiceLevel {
                    sla: None,
                    ..level(100)
                });
            },
            "[P2] SLA_BREACHED #12 filesystem-almost-full on web-1 /var: response target of 1h missed",
        );
        // No value: the title says what happened; a host CI is not repeated.
        check_summary(
            |n| {
                n.rule = "host-unreachable".into();
                n.ci_type = "host".into();
                n.ci_key = "machine-1234".into();
                n.value = None;
                n.title = "web-1 is unreachable".into();
                n.priority = 1;
            },
            "[P1] OPENED #12 host-unreachable on web-1: web-1 is unreachable",
        );
        // Large and integral numbers; no host known.
        check_summary(
            |n| {
                n.host = None;
                n.agent_id = None;
                n.value = Some(1536.25);
                n.threshold = Some(1024.0);
                n.op = None;
            },
            "[P2] OPENED #12 filesystem-almost-full on /var: 1536.2 vs 1024",
        );
        // Newlines from a title never split the line.
        check_summary(
            |n| {
                n.value = None;
                n.title = "a\nb".into();
            },
            "[P2] OPENED #12 filesystem-almost-full on web-1 /var: a b",
        );
    }

    #[test]
    fn summary_is_capped() {
        let mut n = notification();
        n.rule = "x".repeat(2000);
        let s = summary(&n);
        assert_eq!(s.chars().count(), SUMMARY_MAX_CHARS + 3);
        assert!(s.ends_with("..."));
    }

    #[test]
    fn slack_body_escapes_markup() {
        let mut n = notification();
        n.value = None;
        n.title = "<!channel> & <https://evil|click>".into();
        let body = render(Format::Slack, &n, "k", 1);
        let v: serde_json::Value = serde_json::from_str(&body).expect("json");
        assert_eq!(
            v,
            serde_json::json!({"text": "[P2] OPENED #12 filesystem-almost-full on web-1 /var: \
                &lt;!channel&gt; &amp; &lt;https://evil|click&gt;"})
        );
    }

    #[test]
    fn non_finite_values_become_null() {
        let mut n = notification();
        n.peak = Some(f64::NAN);
        let body = render(Format::Json, &n, "k", 1);
        let v: serde_json::Value = serde_json::from_str(&body).expect("json");
        assert_eq!(v["incident"]["peak"], serde_json::Value::Null);
    }
}
