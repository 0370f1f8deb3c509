//! The `notifications` table (the outbox) and the retry policy.
//!
//! Synchronous functions over one connection, called by the delivery worker through a
//! [`DbPool`](crate::store::DbPool) on a blocking thread. The policy ([`decide`], [`backoff`]) is
//! pure: it takes `now` and a jitter draw, so tests need no clock.
//!
//! Nothing here deletes a pending row: only [`prune`] deletes, and only finished rows.

use std::time::Duration;

use rusqlite::{params, Connection};

/// One pending notification, as the worker sends it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct DueRow {
    pub id: i64,
    pub event: String,
    pub key: String,
    pub body: String,
    pub created_ms: i64,
    /// Attempts made before this one.
    pub attempts: i64,
}

/// What a [`due`] query found for one webhook.
#[derive(Debug, Default)]
pub(super) struct Due {
    /// Due rows, oldest first.
    pub rows: Vec<DueRow>,
    /// Earliest `next_attempt_ms` of this webhook's pending rows that are not due yet.
    pub next_ms: Option<i64>,
    /// Pending rows of every webhook (for the gauge).
    pub pending: i64,
}

/// Up to `limit` rows of `webhook` due at `now_ms`, oldest first.
pub(super) fn due(
    conn: &Connection,
    webhook: &str,
    now_ms: i64,
    limit: usize,
) -> rusqlite::Result<Due> {
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let rows = conn
        .prepare_cached(
            "SELECT id, event, idempotency_key, body, created_ms, attempts FROM notifications
             WHERE delivered_ms IS NULL AND failed_ms IS NULL
               AND next_attempt_ms <= ?2 AND webhook = ?1
             ORDER BY id LIMIT ?3",
        )?
        .query_map(params![webhook, now_ms, limit], |r| {
            Ok(DueRow {
                id: r.get(0)?,
                event: r.get(1)?,
                key: r.get(2)?,
                body: r.get(3)?,
                created_ms: r.get(4)?,
                attempts: r.get(5)?,
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let next_ms = conn
        .prepare_cached(
            "SELECT MIN(next_attempt_ms) FROM notifications
             WHERE delivered_ms IS NULL AND failed_ms IS NULL
               AND next_attempt_ms > ?2 AND webhook = ?1",
        )?
        .query_row(params![webhook, now_ms], |r| r.get(0))?;
    Ok(Due {
        rows,
        next_ms,
        pending: pending(conn)?,
    })
}

/// Rows neither delivered nor failed.
pub(super) fn pending(conn: &Connection) -> rusqlite::Result<i64> {
    conn.prepare_cached(
        "SELECT COUNT(*) FROM notifications WHERE delivered_ms IS NULL AND failed_ms IS NULL",
    )?
    .query_row([], |r| r.get(0))
}

/// How one attempt ended, before the policy is applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Attempt {
    Delivered,
    /// Worth trying again; `retry_after` is the receiver's `Retry-After`, if any.
    Retry {
        error: String,
        retry_after: Option<Duration>,
    },
    Permanent {
        error: String,
    },
}

/// What to write back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Update {
    Delivered { at_ms: i64 },
    Retry { next_ms: i64, error: String },
    Failed { at_ms: i64, error: String },
}

/// The retry schedule (production values in [`Backoff::DEFAULT`]; tests shorten them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Backoff {
    pub first: Duration,
    pub max: Duration,
    /// Retrying stops (failed) once a notification is this old.
    pub give_up_after: Duration,
}

impl Backoff {
    pub const DEFAULT: Backoff = Backoff {
        first: Duration::from_secs(1),
        max: Duration::from_secs(300),
        give_up_after: Duration::from_secs(24 * 3600),
    };
}

/// Wait before retry number `retry` (1 = first retry): a point between d/2 and d, placed by
/// `jitter` in [0, 1], with d = min(first x 2^(retry-1), max).
pub(super) fn backoff(retry: u32, b: &Backoff, jitter: f64) -> Duration {
    let doublings = retry.saturating_sub(1).min(31);
    let d = b
        .first
        .checked_mul(1u32 << doublings)
        .unwrap_or(b.max)
        .min(b.max);
    d / 2 + d.mul_f64(jitter.clamp(0.0, 1.0) / 2.0)
}

/// Applies the policy to one attempt of a row with `attempts_before` earlier attempts.
pub(super) fn decide(
    attempt: Attempt,
    attempts_before: i64,
    created_ms: i64,
    now_ms: i64,
    b: &Backoff,
    jitter: f64,
) -> Update {
    match attempt {
        Attempt::Delivered => Update::Delivered { at_ms: now_ms },
        Attempt::Permanent { error } => Update::Failed {
            at_ms: now_ms,
            error,
        },
        Attempt::Retry { error, retry_after } => {
            let age = Duration::from_millis(u64::try_from(now_ms - created_ms).unwrap_or(0));
            if age >= b.give_up_after {
                return Update::Failed {
                    at_ms: now_ms,
                    error: format!(
                        "gave up after {} attempts over {}: {error}",
                        attempts_before.saturating_add(1),
                        humantime::format_duration(b.give_up_after)
                    ),
                };
            }
            let retry = u32::try_from(attempts_before.saturating_add(1)).unwrap_or(u32::MAX);
            let wait = match retry_after {
                Some(ra) => ra.clamp(b.first.min(b.max), b.max),
                None => backoff(retry, b, jitter),
            };
            let wait_ms = i64::try_from(wait.as_millis()).unwrap_or(i64::MAX);
            Update::Retry {
                next_ms: now_ms.saturating_add(wait_ms),
                error,
            }
        }
    }
}

/// Writes the outcome of one attempt of row `id`. Returns false if the row was no longer
/// pending (then nothing changes).
pub(super) fn record(conn: &Connection, id: i64, update: &Update) -> rusqlite::Result<bool> {
    let n = match update {
        Update::Delivered { at_ms } => conn
            .prepare_cached(
                "UPDATE notifications SET attempts = attempts + 1, delivered_ms = ?2,
                     last_error = NULL
                 WHERE id = ?1 AND delivered_ms IS NULL AND failed_ms IS NULL",
            )?
            .execute(params![id, at_ms])?,
        Update::Retry { next_ms, error } => conn
            .prepare_cached(
                "UPDATE notifications SET attempts = attempts + 1, next_attempt_ms = ?2,
                     last_error = ?3
                 WHERE id = ?1 AND delivered_ms IS NULL AND failed_ms IS NULL",
            )?
            .execute(params![id, next_ms, error])?,
        Update::Failed { at_ms, error } => conn
            .prepare_cached(
                "UPDATE notifications SET attempts = attempts + 1, failed_ms = ?2,
                     last_error = ?3
                 WHERE id = ?1 AND delivered_ms IS NULL AND failed_ms IS NULL",
            )?
            .execute(params![id, at_ms, error])?,
    };
    Ok(n > 0)
}

/// Marks failed every pending row whose webhook is not in `configured`. Returns the count per
/// webhook name.
pub(super) fn fail_orphans(
    conn: &Connection,
    configured: &[String],
    now_ms: i64,
) -> rusqlite::Result<Vec<(String, u64)>> {
    let names = conn
        .prepare_cached(
            "SELECT DISTINCT webhook FROM notifications
             WHERE delivered_ms IS NULL AND failed_ms IS NULL",
        )?
        .query_map([], |r| r.get::<_, String>(0))?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let mut out = Vec::new();
    for name in names.into_iter().filter(|n| !configured.contains(n)) {
        let error = format!("webhook {name:?} is no longer configured; not sent");
        let n = conn
            .prepare_cached(
                "UPDATE notifications SET failed_ms = ?2, last_error = ?3
                 WHERE webhook = ?1 AND delivered_ms IS NULL AND failed_ms IS NULL",
            )?
            .execute(params![name, now_ms, error])?;
        out.push((name, n as u64));
    }
    Ok(out)
}

/// One outbox row, for an incident's detail view and for tests.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct OutboxEntry {
    pub id: i64,
    pub webhook: String,
    pub incident_id: i64,
    pub event: String,
    pub idempotency_key: String,
    pub created_ms: i64,
    pub attempts: i64,
    pub next_attempt_ms: i64,
    pub last_error: Option<String>,
    pub delivered_ms: Option<i64>,
    pub failed_ms: Option<i64>,
}

/// The outbox rows of one incident, oldest first (bodies left out).
pub fn list_for_incident(
    conn: &Connection,
    incident_id: i64,
) -> rusqlite::Result<Vec<OutboxEntry>> {
    conn.prepare_cached(
        "SELECT id, webhook, incident_id, event, idempotency_key, created_ms, attempts,
                next_attempt_ms, last_error, delivered_ms, failed_ms
         FROM notifications WHERE incident_id = ?1 ORDER BY id",
    )?
    .query_map([incident_id], |r| {
        Ok(OutboxEntry {
            id: r.get(0)?,
            webhook: r.get(1)?,
            incident_id: r.get(2)?,
            event: r.get(3)?,
            idempotency_key: r.get(4)?,
            created_ms: r.get(5)?,
            attempts: r.get(6)?,
            next_attempt_ms: r.get(7)?,
            last_error: r.get(8)?,
            delivered_ms: r.get(9)?,
            failed_ms: r.get(10)?,
        })
    })?
    .collect()
}

/// Deletes delivered or failed rows created before `older_than_ms` (housekeeping); pending rows
/// are never deleted. Returns how many were deleted.
pub fn prune(conn: &Connection, older_than_ms: i64) -> rusqlite::Result<usize> {
    conn.execute(
        "DELETE FROM notifications WHERE created_ms < ?1
           AND (delivered_ms IS NOT NULL OR failed_ms IS NOT NULL)",
        [older_than_ms],
    )
}

/// The body stored for row `id` (tests).
#[cfg(test)]
pub(super) fn body(conn: &Connection, id: i64) -> rusqlite::Result<Option<String>> {
    use rusqlite::OptionalExtension;
    conn.query_row("SELECT body FROM notifications WHERE id = ?1", [id], |r| {
        r.get(0)
    })
    .optional()
}

#[cfg(test)]
mod tests {
    use super::*;

    const B: Backoff = Backoff::DEFAULT;

    fn check_backoff(retry: u32, jitter: f64, expected_ms: u64) {
        assert_eq!(
            backoff(retry, &B, jitter),
            Duration::from_millis(expected_ms),
            "retry {retry} jitter {jitter}"
        );
    }

    #[test]
    fn backoff_doubles_from_one_second_with_jitter_and_cap() {
        check_backoff(1, 1.0, 1_000);
        check_backoff(1, 0.0, 500);
        check_backoff(2, 1.0, 2_000);
        check_backoff(3, 0.5, 3_000);
        check_backoff(9, 1.0, 256_000);
        check_backoff(10, 1.0, 300_000);
        check_backoff(10, 0.0, 150_000);
        check_backoff(u32::MAX, 1.0, 300_000);
        check_backoff(0, 1.0, 1_000);
        check_backoff(2, 7.0, 2_000);
    }

    fn retry(error: &str, retry_after: Option<u64>) -> Attempt {
        Attempt::Retry {
            error: error.into(),
            retry_after: retry_after.map(Duration::from_secs),
        }
    }

    fn check_decide(attempt: Attempt, before: i64, age_ms: i64, expected: Update) {
        let created = 1_000_000;
        assert_eq!(
            decide(attempt, before, created, created + age_ms, &B, 1.0),
            expected
        );
    }

    #[test]
    fn decisions() {
        let now = |age: i64| 1_000_000 + age;
        check_decide(
            Attempt::Delivered,
            3,
            10,
            Update::Delivered { at_ms: now(10) },
        );
        check_decide(
            Attempt::Permanent {
                error: "HTTP 404".into(),
            },
            0,
            0,
            Update::Failed {
                at_ms: now(0),
                error: "HTTP 404".into(),
            },
        );
        check_decide(
            retry("HTTP 500", None),
            0,
            0,
            Update::Retry {
                next_ms: now(1_000),
                error: "HTTP 500".into(),
            },
        );
        check_decide(
            retry("HTTP 500", None),
            3,
            0,
            Update::Retry {
                next_ms: now(8_000),
                error: "HTTP 500".into(),
            },
        );
        // Retry-After is honoured, capped at 5 min, at least 1 s.
        check_decide(
            retry("HTTP 429", Some(7)),
            5,
            0,
            Update::Retry {
                next_ms: now(7_000),
                error: "HTTP 429".into(),
            },
        );
        check_decide(
            retry("HTTP 503", Some(86_400)),
            0,
            0,
            Update::Retry {
                next_ms: now(300_000),
                error: "HTTP 503".into(),
            },
        );
        check_decide(
            retry("HTTP 503", Some(0)),
            0,
            0,
            Update::Retry {
                next_ms: now(1_000),
                error: "HTTP 503".into(),
            },
        );
        // 24 h after creation, a failure is final.
        let day = 24 * 3600 * 1000;
        check_decide(
            retry("connection failed", None),
            99,
            day - 1,
            Update::Retry {
                next_ms: now(day - 1 + 300_000),
                error: "connection failed".into(),
            },
        );
        check_decide(
            retry("connection failed", None),
            99,
            day,
            Update::Failed {
                at_ms: now(day),
                error: "gave up after 100 attempts over 1day: connection failed".into(),
            },
        );
    }
}
