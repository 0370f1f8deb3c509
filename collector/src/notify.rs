//! Outbound webhook notifications for incidents, through a durable outbox in SQLite.
//!
//! The incident engine calls [`enqueue`] inside the transaction that opens, acknowledges,
//! resolves or reopens an incident: one `notifications` row per matching [`Webhook`], with the
//! body rendered once, so the notification commits (or rolls back) with the incident change and
//! every retry sends identical bytes. After the commit it calls [`Notifier::wake`]. The
//! [`Notifier`] runs one delivery task per configured webhook, each owning its queue: it reads
//! due rows oldest first through a [`DbPool`](crate::store::DbPool) (never blocking the runtime
//! on SQLite), POSTs them, and records the outcome. A slow or dead receiver only delays its own
//! webhook. Delivery is **at least once**: a row stays pending until a 2xx is recorded, across
//! collector restarts; receivers deduplicate on the idempotency key.
//!
//! # Which webhooks get an event
//! A webhook matches an incident when all of these hold: `priority <= max_priority` (1 = P1
//! critical ... 5 = all), `rules` is empty or names the incident's rule, and every pair of
//! `labels` is among the incident's labels (same key, same value). Suppressed incidents are never
//! notified (the caller does not enqueue them).
//!
//! # HTTP request
//! `POST <url>` with the stored body and these headers:
//! - `Content-Type: application/json` (both formats are JSON);
//! - `Idempotency-Key: vigil-<incident id>-<event id>-<16 hex>` where the hex is the start of
//!   SHA-256(webhook name): the same for every retry of one notification, different for each
//!   event and webhook. It is also the body's `idempotency_key`;
//! - `X-Vigil-Event: opened | acknowledged | resolved | reopened`;
//! - `X-Vigil-Attempt: <n>`, 1 for the first try;
//! - `User-Agent: vigil-collector/<version>`;
//! - when the webhook has a `secret`: `X-Vigil-Signature: sha256=<hex>`, the lowercase hex
//!   HMAC-SHA256 of the exact body bytes keyed with the secret's UTF-8 bytes. A receiver
//!   recomputes it over the raw body it received (before any JSON parsing) and compares in
//!   constant time. A replayed request carries the same idempotency key, so deduplicating on the
//!   key also defeats replays.
//!
//! Redirects are not followed. TLS uses rustls with the ring provider and the system's root
//! certificates (`/etc/ssl/certs` and friends); `HTTPS_PROXY`/`HTTP_PROXY`/`NO_PROXY` are honoured.
//!
//! # Outcome and retries
//! - `2xx`: delivered (`delivered_ms` set).
//! - Connection error, timeout (the webhook's `timeout` covers the whole exchange), `408`, `429`,
//!   `5xx`: retried. The n-th retry waits a random time between d/2 and d, d = min(1 s x 2^(n-1),
//!   5 min); a `Retry-After: <seconds>` header on the response replaces that wait (at least 1 s,
//!   at most 5 min; the HTTP-date form is ignored). A notification still failing 24 h after it
//!   was created is marked failed; it is always tried at least once, even after a long outage of
//!   the collector itself.
//! - Any other status (other `4xx`, `3xx`): permanent failure (`failed_ms` set, logged once).
//! - A pending row whose webhook is no longer in the configuration is marked failed at start (and
//!   checked again every minute) with `last_error` saying so.
//!
//! `last_error` holds the latest reason (`HTTP 503: <first 200 bytes of the body>`, `connection
//! failed: ...`); it never contains the webhook URL, which for Slack-style hooks is a secret.
//! Metrics: `vigil_notifications_total{webhook,outcome}` with outcome `delivered`, `retried`
//! (one per failed attempt that will be retried) or `failed`, and `vigil_notifications_pending`.
//!
//! # JSON body, version 1 (`format = "json"`)
//! ```json
//! {"version": 1, "event": "opened", "idempotency_key": "vigil-12-345-3fa2c1d0e9b87a65",
//!  "sent_by": "vigil", "at_ms": 1718000000000, "actor": "system",
//!  "summary": "[P2] OPENED #12 filesystem-almost-full on web-1 /var: 0.93 > 0.90",
//!  "incident": {"id": 12, "rule": "filesystem-almost-full", "title": "...", "state": "open",
//!   "priority": 2, "priority_name": "P2", "impact": "high", "urgency": "medium", "host": "web-1", "agent_id": "...",
//!   "ci": {"id": 7, "type": "filesystem", "key": "/var"}, "metric": "filesystem_used_ratio",
//!   "op": ">", "value": 0.93, "last_value": 0.93, "threshold": 0.9, "peak": 0.95,
//!   "started_ms": 1717999700000, "acknowledged_ms": null, "resolved_ms": null,
//!   "assignee": null, "resolution_code": null, "resolution_note": null, "reopen_count": 0,
//!   "labels": {"team": "ops"}}}
//! ```
//! Every field is always present; an unknown value is `null`. Times are Unix milliseconds (UTC).
//! - `version`: 1. New fields may be added within a version (receivers must ignore fields they
//!   do not know); removing, renaming or retyping a field bumps it.
//! - `event`: `opened`, `acknowledged`, `resolved` or `reopened`.
//! - `idempotency_key`: as the header; the same for every retry of this notification.
//! - `sent_by`: always `"vigil"`.
//! - `at_ms`: when the event happened; `actor`: who caused it (`system` for the rule engine, an
//!   `api:<token id>` for an operator, `alertmanager` for the receiver).
//! - `summary`: the one-line text of the Slack format, unescaped.
//! - `incident.id`: the incident number (`/api/v1/incidents/<id>`); `rule`: the rule name;
//!   `title`: human title; `state`: `open`, `acknowledged`, `resolved` or `closed` after the event;
//!   `priority`: 1..=5 (P1 critical ... P5 planning), and `priority_name` the same as the API
//!   writes it (`"P2"`; added in 0.1, the integer keeps its type within version 1); `impact`,
//!   `urgency`: `high`, `medium`, `low`.
//! - `host`: host name of the CI's agent; `agent_id`: that agent; `ci.id`: CMDB id (null when the
//!   CI is not in the CMDB); `ci.type`, `ci.key`: the CI's type and key (e.g. `filesystem`, `/var`).
//! - `metric`: the metric or check name; `op`: how `value` compared with `threshold` when the
//!   incident fired (`>=`, `<=`, ...); `value`: the triggering value; `last_value`: the latest
//!   value seen (for `resolved`, the one that cleared it); `threshold`; `peak`: the worst value
//!   while active.
//! - `started_ms`: start of the breach; `acknowledged_ms`, `resolved_ms`: when (null if not).
//! - `assignee`: user or group; `resolution_code`, `resolution_note`: set by a resolve;
//!   `reopen_count`: times reopened; `labels`: the rule's and incident's labels (string map).
//!
//! # Slack-compatible body (`format = "slack"`)
//! `{"text": "<summary>"}`, signed the same way. The summary is one line, e.g.
//! `[P2] OPENED #12 filesystem-almost-full on web-1 /var: 0.93 >= 0.90`,
//! `[P2] ACKNOWLEDGED #12 ... by alice`, `[P2] RESOLVED #12 ... by system (auto)`. In the Slack
//! text `&`, `<` and `>` are escaped as `&amp;`, `&lt;`, `&gt;` (Slack's rule; it displays them
//! as typed) so no label or title can inject a mention or a link.
//!
//! This module must never: send a notification for an event whose transaction did not commit,
//! block the async runtime on SQLite, log or store a webhook URL or secret, drop a pending row on
//! shutdown (a cancelled attempt is simply tried again after the next start), or panic on what
//! a receiver sends back.

mod outbox;
mod payload;
mod worker;

#[cfg(test)]
pub(crate) mod testing;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use rusqlite::{params, Connection};

pub use outbox::{list_for_incident, prune, OutboxEntry};
pub use payload::{idempotency_key, signature, summary};
pub use worker::{outcome, Notifier, NotifyMetrics, NOTIFICATIONS_PENDING, NOTIFICATIONS_TOTAL};

/// Payload version of the JSON format (the `version` field).
pub const JSON_VERSION: u32 = 1;

/// Header names sent with every delivery.
pub mod header {
    pub const IDEMPOTENCY_KEY: &str = "Idempotency-Key";
    pub const EVENT: &str = "X-Vigil-Event";
    pub const SIGNATURE: &str = "X-Vigil-Signature";
    pub const ATTEMPT: &str = "X-Vigil-Attempt";
}

/// Body format of a webhook.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    /// The documented, versioned JSON document.
    Json,
    /// `{"text": "..."}` for Slack incoming webhooks and compatible chat tools.
    Slack,
}

impl Format {
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Json => "json",
            Format::Slack => "slack",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown webhook format {0:?} (expected json or slack)")]
pub struct UnknownFormat(pub String);

impl FromStr for Format {
    type Err = UnknownFormat;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "json" => Ok(Format::Json),
            "slack" => Ok(Format::Slack),
            _ => Err(UnknownFormat(s.to_owned())),
        }
    }
}

/// One `[[webhook]]` of collector.toml.
#[derive(Clone, PartialEq, Eq)]
pub struct Webhook {
    /// Unique; `[A-Za-z0-9_.-]`, at most 64 characters (it is a metric label value).
    pub name: String,
    /// `http://` or `https://`.
    pub url: String,
    /// HMAC key; no signature header without one.
    pub secret: Option<String>,
    pub format: Format,
    /// Notify incidents with priority <= this (1..=5; 5 = all).
    pub max_priority: u8,
    /// Empty = every rule.
    pub rules: Vec<String>,
    /// Every pair must be among the incident's labels.
    pub labels: BTreeMap<String, String>,
    /// Limit on one whole HTTP exchange (connect, send, response).
    pub timeout: Duration,
}

/// Never prints the URL (Slack-style URLs are credentials) or the secret.
impl fmt::Debug for Webhook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Webhook")
            .field("name", &self.name)
            .field("url", &"<redacted>")
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .field("format", &self.format)
            .field("max_priority", &self.max_priority)
            .field("rules", &self.rules)
            .field("labels", &self.labels)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// Default of [`Webhook::timeout`] for config parsers.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest accepted [`Webhook::timeout`].
pub const MAX_TIMEOUT: Duration = Duration::from_secs(300);

/// What happened to an incident.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    Opened,
    Acknowledged,
    Resolved,
    Reopened,
    /// 50 % or 75 % of a response or resolution target spent (`crate::sla::targets`).
    SlaWarning,
    /// A response or resolution target missed.
    SlaBreached,
}

impl EventKind {
    pub const ALL: [EventKind; 6] = [
        EventKind::Opened,
        EventKind::Acknowledged,
        EventKind::Resolved,
        EventKind::Reopened,
        EventKind::SlaWarning,
        EventKind::SlaBreached,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Opened => "opened",
            EventKind::Acknowledged => "acknowledged",
            EventKind::Resolved => "resolved",
            EventKind::Reopened => "reopened",
            EventKind::SlaWarning => "sla_warning",
            EventKind::SlaBreached => "sla_breached",
        }
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown event kind {0:?}")]
pub struct UnknownEvent(pub String);

impl FromStr for EventKind {
    type Err = UnknownEvent;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        EventKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| UnknownEvent(s.to_owned()))
    }
}

/// What happened, as the payload shows it (see the module docs for each field's meaning).
#[derive(Debug, Clone, PartialEq)]
pub struct Notification {
    pub event: EventKind,
    /// When the event happened (Unix ms).
    pub at_ms: i64,
    /// Who caused it: `system`, an operator's token name, `alertmanager`.
    pub actor: String,
    pub incident_id: i64,
    pub rule: String,
    pub title: String,
    /// State after the event: `open`, `acknowledged`, `resolved`, `closed`.
    pub state: String,
    /// 1..=5.
    pub priority: u8,
    /// `high`, `medium`, `low`.
    pub impact: String,
    pub urgency: String,
    pub host: Option<String>,
    pub agent_id: Option<String>,
    pub ci_id: Option<i64>,
    pub ci_type: String,
    pub ci_key: String,
    pub metric: Option<String>,
    /// How `value` compared with `threshold` when it fired: `>=`, `>`, `<=`, `<`.
    pub op: Option<String>,
    /// The triggering value.
    pub value: Option<f64>,
    /// The latest value seen (for a resolve: the value that cleared it).
    pub last_value: Option<f64>,
    pub threshold: Option<f64>,
    pub peak: Option<f64>,
    pub started_ms: i64,
    pub acknowledged_ms: Option<i64>,
    pub resolved_ms: Option<i64>,
    pub assignee: Option<String>,
    pub resolution_code: Option<String>,
    pub resolution_note: Option<String>,
    pub reopen_count: u32,
    pub labels: BTreeMap<String, String>,
    /// For `sla_warning` and `sla_breached`: which target, how much of it is spent.
    pub service_level: Option<ServiceLevel>,
}

/// What an `sla_warning` / `sla_breached` event says.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceLevel {
    /// `response` or `resolution`.
    pub target: &'static str,
    /// 50, 75 or 100.
    pub percent: u8,
    /// The target, in milliseconds of service time.
    pub target_ms: i64,
    /// When it falls (or fell) due.
    pub due_ms: Option<i64>,
    /// The SLA whose targets apply; `None`: the defaults.
    pub sla: Option<String>,
}

/// Whether `hook` wants notifications about `n` (priority, rules, labels).
pub fn matches(hook: &Webhook, n: &Notification) -> bool {
    n.priority <= hook.max_priority
        && (hook.rules.is_empty() || hook.rules.contains(&n.rule))
        && hook
            .labels
            .iter()
            .all(|(k, v)| n.labels.get(k).is_some_and(|have| have == v))
}

/// Inserts one outbox row per matching webhook, inside the caller's transaction; returns how
/// many were inserted. `event_id` is the incident timeline row id: with the incident id and the
/// webhook name it makes the idempotency key, so calling this again for the same event inserts
/// nothing. The body is rendered now, so every retry sends identical bytes. Call
/// [`Notifier::wake`] after the transaction commits.
pub fn enqueue(
    conn: &Connection,
    hooks: &[Webhook],
    n: &Notification,
    event_id: i64,
    now_ms: i64,
) -> rusqlite::Result<usize> {
    let mut inserted = 0;
    for hook in hooks.iter().filter(|h| matches(h, n)) {
        let key = idempotency_key(n.incident_id, event_id, &hook.name);
        let body = payload::render(hook.format, n, &key, event_id);
        inserted += conn
            .prepare_cached(
                "INSERT INTO notifications
                     (webhook, incident_id, event, idempotency_key, body, created_ms, next_attempt_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6)
                 ON CONFLICT (idempotency_key) DO NOTHING",
            )?
            .execute(params![
                hook.name,
                n.incident_id,
                n.event.as_str(),
                key,
                body,
                now_ms
            ])?;
    }
    Ok(inserted)
}
