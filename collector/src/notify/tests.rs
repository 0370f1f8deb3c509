//! End-to-end tests of the outbox and the worker: a real SQLite file, a real axum receiver on
//! 127.0.0.1, short backoffs through [`Tuning`].

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::outbox::{self, Backoff};
use super::worker::Tuning;
use super::*;
use crate::store::Db;

/// The incident every test notifies about (#12, P2, filesystem /var on web-1).
pub(crate) fn notification() -> Notification {
    Notification {
        event: EventKind::Opened,
        at_ms: 1_718_000_000_000,
        actor: "system".into(),
        incident_id: 12,
        rule: "filesystem-almost-full".into(),
        title: "/var on web-1 is 93% full".into(),
        state: "open".into(),
        priority: 2,
        impact: "high".into(),
        urgency: "medium".into(),
        host: Some("web-1".into()),
        agent_id: Some("agent-1".into()),
        ci_id: Some(7),
        ci_type: "filesystem".into(),
        ci_key: "/var".into(),
        metric: Some("fs.used_ratio".into()),
        op: Some(">".into()),
        value: Some(0.93),
        last_value: Some(0.94),
        threshold: Some(0.9),
        peak: Some(0.95),
        started_ms: 1_717_999_700_000,
        acknowledged_ms: None,
        resolved_ms: None,
        assignee: None,
        resolution_code: None,
        resolution_note: None,
        reopen_count: 0,
        labels: BTreeMap::from([("team".into(), "ops".into()), ("env".into(), "prod".into())]),
        service_level: None,
    }
}

fn hook(name: &str, url: &str) -> Webhook {
    Webhook {
        name: name.into(),
        url: url.into(),
        secret: Some("s3cret".into()),
        format: Format::Json,
        max_priority: 5,
        rules: Vec::new(),
        labels: BTreeMap::new(),
        timeout: Duration::from_secs(2),
    }
}

// ---- filters and enqueue (no network) ----

fn check_match(
    edit_hook: impl FnOnce(&mut Webhook),
    edit_n: impl FnOnce(&mut Notification),
    expected: bool,
) {
    let mut h = hook("h", "http://127.0.0.1:1/");
    let mut n = notification();
    edit_hook(&mut h);
    edit_n(&mut n);
    assert_eq!(matches(&h, &n), expected, "{h:?}\n{n:?}");
}

#[test]
fn filters_by_priority_rules_and_labels() {
    let label = |k: &str, v: &str| BTreeMap::from([(k.to_owned(), v.to_owned())]);
    check_match(|_| {}, |_| {}, true);
    // Priority: P2 goes to hooks taking P2 or lower urgency, not to P1-only hooks.
    check_match(|h| h.max_priority = 2, |_| {}, true);
    check_match(|h| h.max_priority = 1, |_| {}, false);
    check_match(|h| h.max_priority = 1, |n| n.priority = 1, true);
    check_match(|h| h.max_priority = 3, |n| n.priority = 5, false);
    // Rules.
    check_match(
        |h| h.rules = vec!["filesystem-almost-full".into()],
        |_| {},
        true,
    );
    check_match(
        |h| h.rules = vec!["a".into(), "filesystem-almost-full".into()],
        |_| {},
        true,
    );
    check_match(|h| h.rules = vec!["memory-high".into()], |_| {}, false);
    // Labels: every pair must be present with the same value.
    check_match(|h| h.labels = label("team", "ops"), |_| {}, true);
    check_match(|h| h.labels = label("team", "dba"), |_| {}, false);
    check_match(|h| h.labels = label("site", "ops"), |_| {}, false);
    check_match(
        |h| {
            h.labels = label("team", "ops");
            h.labels.insert("env".into(), "prod".into());
        },
        |_| {},
        true,
    );
    check_match(
        |h| {
            h.labels = label("team", "ops");
            h.labels.insert("env".into(), "dev".into());
        },
        |_| {},
        false,
    );
    check_match(
        |h| h.labels = label("team", "ops"),
        |n| n.labels.clear(),
        false,
    );
}

/// A store with incident #12 (the foreign key of every outbox row).
fn store(dir: &Path) -> Db {
    let db = Db::open(dir).expect("open store");
    db.conn()
        .execute(
            "INSERT INTO incidents (id, dedup_key, rule, origin, ci_type, ci_key, title, state,
                 impact, urgency, priority, first_breach_ms, last_breach_ms, started_ms, created_ms)
             VALUES (12, 'filesystem-almost-full/7', 'filesystem-almost-full', 'rule',
                 'filesystem', '/var', 't', 'open', 'high', 'medium', 2, 0, 0, 0, 0)",
            [],
        )
        .expect("insert incident");
    db
}

/// Enqueues in a transaction, as the incident engine does.
fn enqueue_tx(db: &Db, hooks: &[Webhook], n: &Notification, event_id: i64) -> usize {
    let tx = db.conn().unchecked_transaction().expect("tx");
    let count = enqueue(&tx, hooks, n, event_id, vigil_runtime::clock::now_ms()).expect("enqueue");
    tx.commit().expect("commit");
    count
}

fn rows(db: &Db) -> Vec<OutboxEntry> {
    list_for_incident(db.conn(), 12).expect("list")
}

#[test]
fn enqueue_inserts_one_row_per_matching_hook_once_per_event() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = store(dir.path());
    let mut p1_only = hook("p1-only", "http://127.0.0.1:1/");
    p1_only.max_priority = 1;
    let hooks = [
        hook("a", "http://127.0.0.1:1/"),
        p1_only,
        hook("b", "http://127.0.0.1:1/"),
    ];
    let n = notification();
    assert_eq!(enqueue_tx(&db, &hooks, &n, 345), 2);
    // The same event again (a retried transaction) adds nothing.
    assert_eq!(enqueue_tx(&db, &hooks, &n, 345), 0);
    assert_eq!(enqueue_tx(&db, &hooks, &n, 346), 2);
    let r = rows(&db);
    let keys: Vec<_> = r
        .iter()
        .map(|e| (e.webhook.as_str(), e.idempotency_key.clone()))
        .collect();
    assert_eq!(
        keys,
        [
            ("a", idempotency_key(12, 345, "a")),
            ("b", idempotency_key(12, 345, "b")),
            ("a", idempotency_key(12, 346, "a")),
            ("b", idempotency_key(12, 346, "b")),
        ]
    );
    assert!(r.iter().all(|e| e.event == "opened" && e.attempts == 0));
    // Rolled back with the caller's transaction.
    let tx = db.conn().unchecked_transaction().expect("tx");
    assert_eq!(enqueue(&tx, &hooks, &n, 347, 0).expect("enqueue"), 2);
    drop(tx);
    assert_eq!(rows(&db).len(), 4);
    assert_eq!(enqueue(db.conn(), &[], &n, 348, 0).expect("enqueue"), 0);
}

#[test]
fn debug_never_shows_the_url_or_the_secret() {
    let shown = format!(
        "{:?}",
        hook("a", "https://hooks.slack.com/services/T0/B0/token")
    );
    assert!(
        !shown.contains("token") && !shown.contains("s3cret"),
        "{shown}"
    );
}

// ---- the receiver ----

#[derive(Debug, Clone)]
struct Received {
    headers: HeaderMap,
    body: Bytes,
}

impl Received {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

#[derive(Clone, Default)]
struct Script {
    /// Statuses to answer, in order; 200 once empty.
    statuses: Arc<Mutex<VecDeque<u16>>>,
    received: Arc<Mutex<Vec<Received>>>,
    delay: Duration,
}

async fn receive(State(s): State<Script>, headers: HeaderMap, body: Bytes) -> StatusCode {
    s.received
        .lock()
        .expect("lock")
        .push(Received { headers, body });
    if !s.delay.is_zero() {
        tokio::time::sleep(s.delay).await;
    }
    let status = s.statuses.lock().expect("lock").pop_front().unwrap_or(200);
    StatusCode::from_u16(status).expect("status")
}

struct Receiver {
    addr: SocketAddr,
    script: Script,
    task: tokio::task::JoinHandle<()>,
}

impl Receiver {
    async fn start(statuses: &[u16]) -> Receiver {
        Self::start_on(
            "127.0.0.1:0".parse().expect("addr"),
            statuses,
            Duration::ZERO,
        )
        .await
    }

    async fn start_on(addr: SocketAddr, statuses: &[u16], delay: Duration) -> Receiver {
        let script = Script {
            statuses: Arc::new(Mutex::new(statuses.iter().copied().collect())),
            received: Arc::default(),
            delay,
        };
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .expect("bind receiver");
        let addr = listener.local_addr().expect("addr");
        let app = axum::Router::new()
            .route("/hook", axum::routing::post(receive))
            .with_state(script.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Receiver { addr, script, task }
    }

    fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    fn received(&self) -> Vec<Received> {
        self.script.received.lock().expect("lock").clone()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A port with nothing listening on it (bound, then released).
fn closed_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr")
}

// ---- the worker ----

fn fast() -> Tuning {
    Tuning {
        backoff: Backoff {
            first: Duration::from_millis(20),
            max: Duration::from_millis(100),
            give_up_after: Duration::from_secs(3600),
        },
        poll: Duration::from_millis(50),
        orphan_check: Duration::from_millis(50),
        batch: 32,
        env_proxy: false,
    }
}

struct Running {
    notifier: Notifier,
    metrics: NotifyMetrics,
    tracker: TaskTracker,
    shutdown: CancellationToken,
}

fn start(dir: &Path, hooks: Vec<Webhook>, tuning: Tuning) -> Running {
    let metrics = NotifyMetrics::new().expect("metrics");
    let tracker = TaskTracker::new();
    let shutdown = CancellationToken::new();
    let notifier = Notifier::spawn_tuned(
        dir,
        hooks,
        metrics.clone(),
        &tracker,
        shutdown.clone(),
        tuning,
        None,
    )
    .expect("spawn notifier");
    Running {
        notifier,
        metrics,
        tracker,
        shutdown,
    }
}

impl Running {
    async fn stop(self) {
        self.shutdown.cancel();
        self.tracker.close();
        tokio::time::timeout(Duration::from_secs(5), self.tracker.wait())
            .await
            .expect("notifier stops promptly");
    }
}

/// Polls `cond` every 10 ms for up to 5 s.
async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn verify(secret: &str, r: &Received) {
    let sig = r.header(header::SIGNATURE).expect("signature header");
    let hex_sig = sig.strip_prefix("sha256=").expect("sha256= prefix");
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("key");
    mac.update(&r.body);
    mac.verify_slice(&hex::decode(hex_sig).expect("hex"))
        .expect("signature verifies");
}

fn body_json(r: &Received) -> serde_json::Value {
    serde_json::from_slice(&r.body).expect("JSON body")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivers_signed_json_v1() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = store(dir.path());
    let rx = Receiver::start(&[]).await;
    let hooks = vec![hook("ops", &rx.url())];
    let run = start(dir.path(), hooks.clone(), fast());
    assert_eq!(enqueue_tx(&db, &hooks, &notification(), 345), 1);
    run.notifier.wake();
    wait_until("delivery", || rows(&db)[0].delivered_ms.is_some()).await;

    let got = rx.received();
    assert_eq!(got.len(), 1);
    let r = &got[0];
    let key = idempotency_key(12, 345, "ops");
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.header("idempotency-key"), Some(key.as_str()));
    assert_eq!(r.header("x-vigil-event"), Some("opened"));
    assert_eq!(r.header("x-vigil-attempt"), Some("1"));
    assert!(r
        .header("user-agent")
        .is_some_and(|u| u.starts_with("vigil-collector/")));
    verify("s3cret", r);
    assert_eq!(
        body_json(r),
        serde_json::json!({
            "version": 1,
            "event": "opened",
            "idempotency_key": key,
            "sent_by": "vigil",
            "event_id": 345,
            "at_ms": 1_718_000_000_000i64,
            "actor": "system",
            "summary": "[P2] OPENED #12 filesystem-almost-full on web-1 /var: 0.93 > 0.90",
            "incident": {
                "id": 12,
                "rule": "filesystem-almost-full",
                "title": "/var on web-1 is 93% full",
                "state": "open",
                "priority": 2,
                "priority_name": "P2",
                "impact": "high",
                "urgency": "medium",
                "host": "web-1",
                "agent_id": "agent-1",
                "ci": {"id": 7, "type": "filesystem", "key": "/var"},
                "metric": "fs.used_ratio",
                "op": ">",
                "value": 0.93,
                "last_value": 0.94,
                "threshold": 0.9,
                "peak": 0.95,
                "started_ms": 1_717_999_700_000i64,
                "acknowledged_ms": null,
                "resolved_ms": null,
                "assignee": null,
                "resolution_code": null,
                "resolution_note": null,
                "reopen_count": 0,
                "labels": {"env": "prod", "team": "ops"}
            }
        })
    );
    let row = &rows(&db)[0];
    assert_eq!(
        (row.attempts, row.failed_ms, row.last_error.as_deref()),
        (1, None, None)
    );
    assert_eq!(run.metrics.count("ops", outcome::DELIVERED), 1);
    wait_until("pending gauge at 0", || run.metrics.pending() == 0).await;

    // The metrics as /metrics shows them.
    let registry = prometheus::Registry::new();
    run.metrics.register(&registry).expect("register");
    let text = prometheus::TextEncoder::new()
        .encode_to_string(&registry.gather())
        .expect("encode");
    for line in [
        "vigil_notifications_total{outcome=\"delivered\",webhook=\"ops\"} 1",
        "vigil_notifications_total{outcome=\"retried\",webhook=\"ops\"} 0",
        "vigil_notifications_total{outcome=\"failed\",webhook=\"ops\"} 0",
        "vigil_notifications_pending 0",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing {line:?} in\n{text}"
        );
    }
    run.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slack_format_signed_and_unsigned() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = store(dir.path());
    let rx = Receiver::start(&[]).await;
    let mut signed = hook("chat-signed", &rx.url());
    signed.format = Format::Slack;
    let mut plain = signed.clone();
    plain.name = "chat-plain".into();
    plain.secret = None;
    let hooks = vec![signed, plain];
    let run = start(dir.path(), hooks.clone(), fast());
    let mut n = notification();
    n.event = EventKind::Resolved;
    n.state = "resolved".into();
    n.resolution_code = Some("auto".into());
    assert_eq!(enqueue_tx(&db, &hooks, &n, 400), 2);
    run.notifier.wake();
    wait_until("both delivered", || rx.received().len() == 2).await;

    for r in rx.received() {
        assert_eq!(
            body_json(&r),
            serde_json::json!({
                "text": "[P2] RESOLVED #12 filesystem-almost-full on web-1 /var by system (auto)"
            })
        );
        assert_eq!(r.header("x-vigil-event"), Some("resolved"));
        let key = r.header("idempotency-key").expect("key").to_owned();
        if key == idempotency_key(12, 400, "chat-signed") {
            verify("s3cret", &r);
        } else {
            assert_eq!(key, idempotency_key(12, 400, "chat-plain"));
            assert_eq!(r.header(header::SIGNATURE), None);
        }
    }
    run.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_5xx_then_delivers_once_with_the_same_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = store(dir.path());
    let rx = Receiver::start(&[500, 503]).await;
    let hooks = vec![hook("ops", &rx.url())];
    let run = start(dir.path(), hooks.clone(), fast());
    enqueue_tx(&db, &hooks, &notification(), 345);
    run.notifier.wake();
    wait_until("delivery", || rows(&db)[0].delivered_ms.is_some()).await;

    let got = rx.received();
    assert_eq!(got.len(), 3);
    let key = idempotency_key(12, 345, "ops");
    for (i, r) in got.iter().enumerate() {
        assert_eq!(r.header("idempotency-key"), Some(key.as_str()));
        assert_eq!(
            r.header("x-vigil-attempt"),
            Some((i + 1).to_string().as_str())
        );
        assert_eq!(r.body, got[0].body, "identical bytes on every attempt");
        verify("s3cret", r);
    }
    let row = &rows(&db)[0];
    assert_eq!((row.attempts, row.last_error.as_deref()), (3, None));
    // The worker counts an outcome just after committing it: wait for the count too.
    wait_until("delivery counted", || {
        run.metrics.count("ops", outcome::DELIVERED) >= 1
    })
    .await;
    assert_eq!(run.metrics.count("ops", outcome::RETRIED), 2);
    assert_eq!(run.metrics.count("ops", outcome::DELIVERED), 1);
    assert_eq!(run.metrics.count("ops", outcome::FAILED), 0);
    run.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permanent_4xx_fails_without_retry() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = store(dir.path());
    let rx = Receiver::start(&[400, 400, 400]).await;
    let hooks = vec![hook("ops", &rx.url())];
    let run = start(dir.path(), hooks.clone(), fast());
    enqueue_tx(&db, &hooks, &notification(), 345);
    run.notifier.wake();
    wait_until("failure", || rows(&db)[0].failed_ms.is_some()).await;
    // Several backoff periods later, still one request.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(rx.received().len(), 1);
    let row = &rows(&db)[0];
    assert_eq!((row.attempts, row.delivered_ms), (1, None));
    assert_eq!(row.last_error.as_deref(), Some("HTTP 400"));
    assert_eq!(run.metrics.count("ops", outcome::FAILED), 1);
    assert_eq!(run.metrics.count("ops", outcome::RETRIED), 0);
    run.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receiver_down_then_up_is_delivered() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = store(dir.path());
    let addr = closed_port();
    let hooks = vec![hook("ops", &format!("http://{addr}/hook"))];
    let run = start(dir.path(), hooks.clone(), fast());
    enqueue_tx(&db, &hooks, &notification(), 345);
    run.notifier.wake();
    wait_until("two failed attempts", || {
        run.metrics.count("ops", outcome::RETRIED) >= 2
    })
    .await;
    let row = &rows(&db)[0];
    assert!(row.delivered_ms.is_none() && row.failed_ms.is_none());
    let error = row.last_error.clone().unwrap_or_default();
    assert!(error.starts_with("connection failed"), "{error}");
    assert!(
        !error.contains(&addr.to_string()),
        "no URL in errors: {error}"
    );

    let rx = Receiver::start_on(addr, &[], Duration::ZERO).await;
    wait_until("delivery", || rows(&db)[0].delivered_ms.is_some()).await;
    assert_eq!(rx.received().len(), 1);
    wait_until("delivery counted", || {
        run.metrics.count("ops", outcome::DELIVERED) >= 1
    })
    .await;
    assert_eq!(run.metrics.count("ops", outcome::DELIVERED), 1);
    run.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_delivers_pending_once_and_never_resends() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = store(dir.path());
    let addr = closed_port();
    let hooks = vec![hook("ops", &format!("http://{addr}/hook"))];
    // First collector run: the receiver is down.
    let first = start(dir.path(), hooks.clone(), fast());
    enqueue_tx(&db, &hooks, &notification(), 345);
    first.notifier.wake();
    wait_until("a failed attempt", || {
        first.metrics.count("ops", outcome::RETRIED) >= 1
    })
    .await;
    first.stop().await;
    assert!(rows(&db)[0].delivered_ms.is_none());

    // Second run, receiver up: delivered once.
    let rx = Receiver::start_on(addr, &[], Duration::ZERO).await;
    let second = start(dir.path(), hooks.clone(), fast());
    wait_until("delivery after restart", || {
        rows(&db)[0].delivered_ms.is_some()
    })
    .await;
    second.stop().await;
    assert_eq!(rx.received().len(), 1);

    // Third run: nothing to send.
    let third = start(dir.path(), hooks, fast());
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        rx.received().len(),
        1,
        "a delivered notification is never re-sent"
    );
    assert_eq!(third.metrics.count("ops", outcome::DELIVERED), 0);
    third.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_receiver_blocks_only_its_webhook_and_shutdown_keeps_its_row() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = store(dir.path());
    let slow = Receiver::start_on(
        "127.0.0.1:0".parse().expect("addr"),
        &[],
        Duration::from_secs(30),
    )
    .await;
    let fast_rx = Receiver::start(&[]).await;
    let mut slow_hook = hook("slow", &slow.url());
    slow_hook.timeout = Duration::from_secs(60);
    let hooks = vec![slow_hook, hook("fast", &fast_rx.url())];
    let run = start(dir.path(), hooks.clone(), fast());
    enqueue_tx(&db, &hooks, &notification(), 345);
    run.notifier.wake();
    wait_until("fast webhook delivered", || fast_rx.received().len() == 1).await;
    wait_until("slow receiver got the request", || {
        slow.received().len() == 1
    })
    .await;
    // Stop while the slow attempt is in flight: its row stays pending, unrecorded.
    run.stop().await;
    let r = rows(&db);
    let slow_row = r.iter().find(|e| e.webhook == "slow").expect("slow row");
    assert_eq!(
        (slow_row.attempts, slow_row.delivered_ms, slow_row.failed_ms),
        (0, None, None)
    );
    assert!(r
        .iter()
        .any(|e| e.webhook == "fast" && e.delivered_ms.is_some()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wake_sends_without_waiting_for_the_poll() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = store(dir.path());
    let rx = Receiver::start(&[]).await;
    let hooks = vec![hook("ops", &rx.url())];
    let mut tuning = fast();
    tuning.poll = Duration::from_secs(60);
    let run = start(dir.path(), hooks.clone(), tuning);
    // Let the task reach its wait first.
    tokio::time::sleep(Duration::from_millis(100)).await;
    enqueue_tx(&db, &hooks, &notification(), 345);
    let t0 = Instant::now();
    run.notifier.wake();
    wait_until("delivery", || rx.received().len() == 1).await;
    assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
    run.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_of_unconfigured_webhooks_are_failed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = store(dir.path());
    let rx = Receiver::start(&[]).await;
    enqueue_tx(&db, &[hook("gone", &rx.url())], &notification(), 345);
    let run = start(dir.path(), vec![hook("ops", &rx.url())], fast());
    wait_until("orphan failed", || rows(&db)[0].failed_ms.is_some()).await;
    let row = &rows(&db)[0];
    assert_eq!(
        row.last_error.as_deref(),
        Some("webhook \"gone\" is no longer configured; not sent")
    );
    wait_until("failure counted", || {
        run.metrics.count("gone", outcome::FAILED) >= 1
    })
    .await;
    assert_eq!(run.metrics.count("gone", outcome::FAILED), 1);
    assert!(rx.received().is_empty());
    run.stop().await;
    // Housekeeping removes finished rows only.
    enqueue_tx(&db, &[hook("ops", &rx.url())], &notification(), 346);
    assert_eq!(prune(db.conn(), i64::MAX).expect("prune"), 1);
    assert_eq!(rows(&db).len(), 1);
    assert!(outbox::body(db.conn(), rows(&db)[0].id)
        .expect("body")
        .is_some());
}

/// The HTTPS path (rustls + ring, platform roots) runs and fails cleanly, and retryably, on a
/// certificate nobody trusts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_to_an_untrusted_certificate_is_retried() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = store(dir.path());
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("cert");
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(cert.signing_key.serialize_der().into());
    let config = rustls::ServerConfig::builder_with_provider(vigil_shared::identity::provider())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(vec![cert.cert.der().clone()], key)
        .expect("server config");
    let config = Arc::new(config);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(3) {
            let Ok(mut tcp) = stream else { continue };
            let _ = tcp.set_read_timeout(Some(Duration::from_secs(2)));
            if let Ok(mut conn) = rustls::ServerConnection::new(Arc::clone(&config)) {
                let _ = conn.complete_io(&mut tcp);
                let _ = conn.complete_io(&mut tcp);
            }
        }
    });
    let hooks = vec![hook("tls", &format!("https://localhost:{port}/hook"))];
    let run = start(dir.path(), hooks.clone(), fast());
    enqueue_tx(&db, &hooks, &notification(), 345);
    run.notifier.wake();
    wait_until("a retried attempt", || {
        run.metrics.count("tls", outcome::RETRIED) >= 1
    })
    .await;
    run.stop().await;
    let row = &rows(&db)[0];
    let error = row.last_error.clone().unwrap_or_default();
    assert!(row.failed_ms.is_none() && row.delivered_ms.is_none());
    assert!(error.to_lowercase().contains("certificate"), "{error}");
}
