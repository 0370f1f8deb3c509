//! The delivery worker: one task per configured webhook reads its due outbox rows, POSTs them and
//! records each outcome; a janitor task fails rows of webhooks that are no longer configured.
//!
//! Every SQLite access goes through [`DbPool::run`] (a blocking thread); no lock or guard is held
//! across an `.await`. Cancelling the shutdown token stops the tasks at once: an attempt in
//! flight is abandoned without being recorded, so its row is sent again after the next start.

use std::error::Error as _;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use prometheus::{IntCounterVec, IntGauge, Opts, Registry};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use super::outbox::{self, Attempt, Backoff, DueRow, Update};
use super::{header, payload, Webhook};
use crate::store::{DbPool, StoreError};
use vigil_runtime::clock::now_ms;

pub const NOTIFICATIONS_TOTAL: &str = "vigil_notifications_total";
pub const NOTIFICATIONS_PENDING: &str = "vigil_notifications_pending";

/// Values of the `outcome` label of `vigil_notifications_total`.
pub mod outcome {
    pub const DELIVERED: &str = "delivered";
    /// One failed attempt that will be retried.
    pub const RETRIED: &str = "retried";
    pub const FAILED: &str = "failed";
    pub const ALL: [&str; 3] = [DELIVERED, RETRIED, FAILED];
}

/// `vigil_notifications_total{webhook,outcome}` and `vigil_notifications_pending`. The `webhook`
/// label takes configured names (plus, once, the name of a removed webhook whose rows were
/// failed at start), so it stays bounded.
#[derive(Debug, Clone)]
pub struct NotifyMetrics {
    total: IntCounterVec,
    pending: IntGauge,
}

impl NotifyMetrics {
    pub fn new() -> Result<NotifyMetrics, prometheus::Error> {
        let total = IntCounterVec::new(
            Opts::new(
                NOTIFICATIONS_TOTAL,
                "Webhook notification attempts by webhook and outcome (delivered, retried, failed).",
            ),
            &["webhook", "outcome"],
        )?;
        let pending = IntGauge::new(
            NOTIFICATIONS_PENDING,
            "Notifications in the outbox not yet delivered or failed.",
        )?;
        Ok(NotifyMetrics { total, pending })
    }

    pub fn register(&self, registry: &Registry) -> Result<(), prometheus::Error> {
        registry.register(Box::new(self.total.clone()))?;
        registry.register(Box::new(self.pending.clone()))?;
        Ok(())
    }

    /// Current value of `vigil_notifications_total{webhook,outcome}`.
    pub fn count(&self, webhook: &str, outcome: &str) -> u64 {
        self.total.with_label_values(&[webhook, outcome]).get()
    }

    /// Current value of `vigil_notifications_pending`.
    pub fn pending(&self) -> i64 {
        self.pending.get()
    }

    /// Exposes every outcome of `webhook` from the start, at 0.
    fn init(&self, webhook: &str) {
        for o in outcome::ALL {
            self.total.with_label_values(&[webhook, o]);
        }
    }

    fn add(&self, webhook: &str, outcome: &str, n: u64) {
        self.total.with_label_values(&[webhook, outcome]).inc_by(n);
    }
}

/// Knobs with production defaults; tests shorten the waits.
#[derive(Debug, Clone)]
pub(crate) struct Tuning {
    pub backoff: Backoff,
    /// Longest sleep between two looks at the outbox without a wake.
    pub poll: Duration,
    /// How often rows of unconfigured webhooks are looked for.
    pub orphan_check: Duration,
    /// Rows read per query.
    pub batch: usize,
    /// Honour `HTTP(S)_PROXY` / `NO_PROXY`.
    pub env_proxy: bool,
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            backoff: Backoff::DEFAULT,
            poll: Duration::from_secs(1),
            orphan_check: Duration::from_secs(60),
            batch: 32,
            env_proxy: true,
        }
    }
}

/// Handle on the delivery tasks; cheap to clone.
#[derive(Debug, Clone)]
pub struct Notifier {
    wakers: Arc<[Arc<Notify>]>,
}

/// Everything the tasks share.
struct Ctx {
    pool: DbPool,
    client: reqwest::Client,
    metrics: NotifyMetrics,
    tuning: Tuning,
    shutdown: CancellationToken,
}

impl Notifier {
    /// Opens the store in `data_dir` and spawns the delivery tasks on `tracker` (call from within
    /// a tokio runtime), each watched by `supervisor`. They stop when `shutdown` is cancelled;
    /// pending rows stay in the outbox.
    pub fn spawn(
        data_dir: &Path,
        hooks: Vec<Webhook>,
        metrics: NotifyMetrics,
        tracker: &TaskTracker,
        shutdown: CancellationToken,
        supervisor: &crate::supervise::Supervisor,
    ) -> Result<Notifier, StoreError> {
        Self::spawn_tuned(
            data_dir,
            hooks,
            metrics,
            tracker,
            shutdown,
            Tuning::default(),
            Some(supervisor),
        )
    }

    /// [`Notifier::spawn`] with test timings, and a supervisor only when given.
    pub(crate) fn spawn_tuned(
        data_dir: &Path,
        hooks: Vec<Webhook>,
        metrics: NotifyMetrics,
        tracker: &TaskTracker,
        shutdown: CancellationToken,
        tuning: Tuning,
        supervisor: Option<&crate::supervise::Supervisor>,
    ) -> Result<Notifier, StoreError> {
        let pool = DbPool::open(data_dir, hooks.len() + 1)?;
        let client = http_client(&hooks, tuning.env_proxy)
            .map_err(|e| StoreError::Task(format!("cannot build the webhook HTTP client: {e}")))?;
        let ctx = Arc::new(Ctx {
            pool,
            client,
            metrics,
            tuning,
            shutdown,
        });
        let names: Vec<String> = hooks.iter().map(|h| h.name.clone()).collect();
        let sentinel = || supervisor.map(|s| s.sentinel("notifier"));
        let janitor_sentinel = sentinel();
        let janitor_ctx = Arc::clone(&ctx);
        tracker.spawn(async move {
            let _sentinel = janitor_sentinel;
            if vigil_runtime::failpoint::hit("notifier-exit") {
                return;
            }
            janitor(janitor_ctx, names).await
        });
        let mut wakers = Vec::with_capacity(hooks.len());
        for hook in hooks {
            ctx.metrics.init(&hook.name);
            let wake = Arc::new(Notify::new());
            wakers.push(Arc::clone(&wake));
            let span = tracing::info_span!("webhook", name = %hook.name);
            let deliver = deliver_loop(Arc::clone(&ctx), Arc::new(hook), wake).instrument(span);
            let task_sentinel = sentinel();
            tracker.spawn(async move {
                let _sentinel = task_sentinel;
                deliver.await
            });
        }
        Ok(Notifier {
            wakers: wakers.into(),
        })
    }

    /// Tells every webhook task to look at the outbox now (after a commit that enqueued rows).
    /// Cheap, never blocks, callable from any thread; a wake with no task waiting is kept for the
    /// next wait, so none is lost.
    pub fn wake(&self) {
        for w in self.wakers.iter() {
            w.notify_one();
        }
    }
}

/// A reqwest client on rustls + ring with the system's root certificates, no redirects.
fn http_client(hooks: &[Webhook], env_proxy: bool) -> Result<reqwest::Client, String> {
    let provider = vigil_shared::identity::provider();
    let builder = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?;
    let mut tls = match rustls_platform_verifier::Verifier::new(provider) {
        Ok(verifier) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_no_client_auth(),
        Err(e) => {
            // No CA certificates on this system: http:// hooks still work, https:// ones fail
            // their handshake (and are retried) until certificates exist and the collector
            // restarts.
            if hooks.iter().any(|h| h.url.starts_with("https:")) {
                tracing::error!(error = %e, "cannot load the system's CA certificates; \
                     https webhooks will fail (install ca-certificates and restart)");
            }
            builder
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth()
        }
    };
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    // Always a preconfigured TLS backend: reqwest's own would look for a process-wide crypto
    // provider, and this project installs none.
    let mut builder = reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("vigil-collector/", env!("CARGO_PKG_VERSION")));
    if !env_proxy {
        builder = builder.no_proxy();
    }
    builder.build().map_err(|e| e.to_string())
}

/// Sleeps `d` unless shutdown comes first; returns false on shutdown.
async fn nap(ctx: &Ctx, d: Duration) -> bool {
    tokio::select! {
        _ = ctx.shutdown.cancelled() => false,
        _ = tokio::time::sleep(d) => true,
    }
}

/// At start and every `orphan_check`: fails rows of webhooks that are not configured, refreshes
/// the pending gauge.
async fn janitor(ctx: Arc<Ctx>, names: Vec<String>) {
    let names = Arc::new(names);
    loop {
        let names2 = Arc::clone(&names);
        let res = ctx
            .pool
            .run(move |db| {
                let failed = outbox::fail_orphans(db.conn(), &names2, now_ms())?;
                Ok((failed, outbox::pending(db.conn())?))
            })
            .await;
        match res {
            Ok((failed, pending)) => {
                for (name, n) in failed {
                    tracing::warn!(webhook = %name, notifications = n,
                        "webhook is no longer configured; its pending notifications are marked failed");
                    ctx.metrics.add(&name, outcome::FAILED, n);
                }
                ctx.metrics.pending.set(pending);
            }
            Err(e) => tracing::warn!(error = %e, "cannot check the notification outbox"),
        }
        if !nap(&ctx, ctx.tuning.orphan_check).await {
            return;
        }
    }
}

/// Delivers `hook`'s due rows until shutdown.
async fn deliver_loop(ctx: Arc<Ctx>, hook: Arc<Webhook>, wake: Arc<Notify>) {
    loop {
        if ctx.shutdown.is_cancelled() {
            return;
        }
        let now = now_ms();
        let name = hook.name.clone();
        let batch = ctx.tuning.batch;
        let due = match ctx
            .pool
            .run(move |db| Ok(outbox::due(db.conn(), &name, now, batch)?))
            .await
        {
            Ok(due) => due,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the notification outbox");
                if !nap(&ctx, ctx.tuning.poll).await {
                    return;
                }
                continue;
            }
        };
        ctx.metrics.pending.set(due.pending);
        let sent = !due.rows.is_empty();
        let mut recorded = true;
        for row in due.rows {
            let attempt = tokio::select! {
                biased;
                _ = ctx.shutdown.cancelled() => return,
                a = attempt(&ctx.client, &hook, &row) => a,
            };
            recorded &= record(&ctx, &hook, row, attempt).await;
        }
        if !recorded {
            // The store refused an update: those rows are still due. Pause rather than resend
            // them in a tight loop.
            if !nap(&ctx, ctx.tuning.poll).await {
                return;
            }
            continue;
        }
        if sent {
            // Look again at once: more may be due, and the next wake-up time has changed.
            continue;
        }
        // Wait for a wake, the next due row, the poll interval or shutdown, whichever is first.
        // A wake sent since the query above is stored in `wake`, so it is not lost.
        let mut wait = ctx.tuning.poll;
        if let Some(next) = due.next_ms {
            let until = Duration::from_millis(u64::try_from(next - now_ms()).unwrap_or(0));
            wait = wait.min(until);
        }
        tokio::select! {
            _ = ctx.shutdown.cancelled() => return,
            _ = wake.notified() => {}
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// Applies the policy to one attempt, writes it back, counts and logs it. Returns false if the
/// outcome could not be stored.
async fn record(ctx: &Ctx, hook: &Webhook, row: DueRow, attempt: Attempt) -> bool {
    let n = row.attempts.saturating_add(1);
    let update = outbox::decide(
        attempt,
        row.attempts,
        row.created_ms,
        now_ms(),
        &ctx.tuning.backoff,
        rand::random::<f64>(),
    );
    let id = row.id;
    let stored = update.clone();
    if let Err(e) = ctx
        .pool
        .run(move |db| Ok(outbox::record(db.conn(), id, &stored)?))
        .await
    {
        // The row stays as it was: it is sent again (at least once), the receiver deduplicates.
        tracing::warn!(error = %e, key = %row.key, "cannot record a notification attempt");
        return false;
    }
    match update {
        Update::Delivered { .. } => {
            ctx.metrics.add(&hook.name, outcome::DELIVERED, 1);
            if n > 1 {
                tracing::info!(key = %row.key, attempts = n, "notification delivered after retries");
            } else {
                tracing::debug!(key = %row.key, "notification delivered");
            }
        }
        Update::Retry { next_ms, error } => {
            ctx.metrics.add(&hook.name, outcome::RETRIED, 1);
            let in_ms = next_ms - now_ms();
            if n == 1 || n % 10 == 0 {
                tracing::warn!(key = %row.key, attempts = n, retry_in_ms = in_ms, %error,
                    "notification not delivered; will retry");
            } else {
                tracing::debug!(key = %row.key, attempts = n, retry_in_ms = in_ms, %error,
                    "notification not delivered; will retry");
            }
        }
        Update::Failed { error, .. } => {
            ctx.metrics.add(&hook.name, outcome::FAILED, 1);
            tracing::warn!(key = %row.key, attempts = n, %error, "notification failed; not retried");
        }
    }
    true
}

/// Bytes of a non-2xx response body kept in `last_error`.
const ERROR_BODY_BYTES: usize = 200;

/// One POST of `row` to `hook`.
async fn attempt(client: &reqwest::Client, hook: &Webhook, row: &DueRow) -> Attempt {
    let mut req = client
        .post(&hook.url)
        .timeout(hook.timeout)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header(header::IDEMPOTENCY_KEY, row.key.as_str())
        .header(header::EVENT, row.event.as_str())
        .header(header::ATTEMPT, row.attempts.saturating_add(1).to_string())
        .body(row.body.clone());
    if let Some(secret) = &hook.secret {
        req = req.header(
            header::SIGNATURE,
            payload::signature(secret, row.body.as_bytes()),
        );
    }
    let mut resp = match req.send().await {
        Ok(resp) => resp,
        Err(e) => return classify_error(e, hook.timeout),
    };
    let status = resp.status().as_u16();
    if resp.status().is_success() {
        return Attempt::Delivered;
    }
    let retry_after = resp
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    let mut excerpt = Vec::new();
    let read = async {
        while excerpt.len() < ERROR_BODY_BYTES {
            match resp.chunk().await {
                Ok(Some(chunk)) => excerpt.extend_from_slice(&chunk),
                _ => break,
            }
        }
    };
    // The request timeout covers the body too; this bounds it even if it did not.
    let _ = tokio::time::timeout(hook.timeout, read).await;
    classify_status(status, retry_after, &excerpt)
}

/// 408, 429 and 5xx are retried; every other non-2xx status is final.
fn classify_status(status: u16, retry_after: Option<Duration>, body: &[u8]) -> Attempt {
    let mut error = format!("HTTP {status}");
    let text = printable(body, ERROR_BODY_BYTES);
    if !text.is_empty() {
        error.push_str(": ");
        error.push_str(&text);
    }
    match status {
        200..=299 => Attempt::Delivered,
        408 | 429 | 500..=599 => Attempt::Retry { error, retry_after },
        300..=399 => Attempt::Permanent {
            error: format!("{error} (redirects are not followed; fix the webhook url)"),
        },
        _ => Attempt::Permanent { error },
    }
}

/// A request that got no response: retried, except a request that could not even be built.
/// The URL is stripped from the message (it may hold a token).
fn classify_error(e: reqwest::Error, timeout: Duration) -> Attempt {
    let e = e.without_url();
    let mut error = if e.is_timeout() {
        format!("timed out after {}", humantime::format_duration(timeout))
    } else if e.is_connect() {
        String::from("connection failed")
    } else {
        e.to_string()
    };
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !error.contains(&text) {
            error.push_str(": ");
            error.push_str(&text);
        }
        source = s.source();
    }
    let error = printable(error.as_bytes(), 300);
    if e.is_builder() {
        Attempt::Permanent { error }
    } else {
        Attempt::Retry {
            error,
            retry_after: None,
        }
    }
}

/// At most `max` bytes as text, control characters replaced, trimmed.
fn printable(bytes: &[u8], max: usize) -> String {
    let cut = &bytes[..bytes.len().min(max)];
    String::from_utf8_lossy(cut)
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect::<String>()
        .trim()
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_status(status: u16, retry_after: Option<u64>, body: &str, expected: Attempt) {
        assert_eq!(
            classify_status(
                status,
                retry_after.map(Duration::from_secs),
                body.as_bytes()
            ),
            expected,
            "status {status}"
        );
    }

    fn retry(error: &str, secs: Option<u64>) -> Attempt {
        Attempt::Retry {
            error: error.into(),
            retry_after: secs.map(Duration::from_secs),
        }
    }

    fn permanent(error: &str) -> Attempt {
        Attempt::Permanent {
            error: error.into(),
        }
    }

    #[test]
    fn statuses() {
        check_status(200, None, "", Attempt::Delivered);
        check_status(204, None, "", Attempt::Delivered);
        check_status(500, None, "", retry("HTTP 500", None));
        check_status(503, Some(7), "busy\n", retry("HTTP 503: busy", Some(7)));
        check_status(429, Some(2), "", retry("HTTP 429", Some(2)));
        check_status(408, None, "", retry("HTTP 408", None));
        check_status(
            400,
            None,
            "{\"error\":\"bad\"}",
            permanent("HTTP 400: {\"error\":\"bad\"}"),
        );
        check_status(401, None, "", permanent("HTTP 401"));
        check_status(404, None, "", permanent("HTTP 404"));
        check_status(
            302,
            None,
            "",
            permanent("HTTP 302 (redirects are not followed; fix the webhook url)"),
        );
        let long = "x".repeat(5000);
        let Attempt::Permanent { error } = classify_status(400, None, long.as_bytes()) else {
            panic!("400 is permanent");
        };
        assert_eq!(error.len(), "HTTP 400: ".len() + ERROR_BODY_BYTES);
        // Binary garbage is not a reason to panic.
        check_status(502, None, "\u{0}\u{7f}ok", retry("HTTP 502: ok", None));
    }
}
