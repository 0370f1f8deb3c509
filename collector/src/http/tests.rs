//! End-to-end tests of the router over real loopback TCP (HTTP/1.1 by hand, `Connection: close`).

use std::path::Path;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;

use super::*;
use crate::store::{Db, NewAgent};

pub(crate) struct Server {
    addr: std::net::SocketAddr,
    supervisor: crate::supervise::Supervisor,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Server {
    pub(crate) async fn start(data_dir: &Path) -> Server {
        Server::start_with(data_dir, |_| {}).await
    }

    /// With `setup` applied to the state first.
    pub(crate) async fn start_with(data_dir: &Path, setup: impl FnOnce(&mut HttpState)) -> Server {
        let supervisor = crate::supervise::Supervisor::new();
        let metrics_text: Arc<dyn Fn() -> String + Send + Sync> =
            Arc::new(|| "# TYPE vigil_agents_connected gauge\nvigil_agents_connected 2\n".into());
        let mut state =
            HttpState::new(data_dir.to_owned(), metrics_text, supervisor.clone()).expect("state");
        setup(&mut state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(serve(listener, router(state), async {
            let _ = stopped.await;
        }));
        Server {
            addr,
            supervisor,
            stop: Some(stop),
            task,
        }
    }

    /// `(status, content-type, body)`.
    pub(crate) async fn get(&self, path: &str, token: Option<&str>) -> (u16, String, String) {
        self.request("GET", path, token).await
    }

    pub(crate) async fn request(
        &self,
        method: &str,
        path: &str,
        auth: Option<&str>,
    ) -> (u16, String, String) {
        let auth = auth
            .map(|a| format!("\r\nAuthorization: {a}"))
            .unwrap_or_default();
        let (status, head, body) = self
            .raw(&format!("{method} {path} HTTP/1.1{auth}"), "")
            .await;
        let content_type = head
            .lines()
            .find_map(|l| l.strip_prefix("content-type:").map(|v| v.trim().to_owned()))
            .unwrap_or_default();
        (status, content_type, body)
    }

    pub(crate) async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(Duration::from_secs(5), self.task)
            .await
            .expect("graceful shutdown within 5 s")
            .expect("join")
            .expect("serve");
    }
}

pub(crate) fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// Asserts a JSON API error: status, `code`, and that `error` is a string.
pub(crate) fn check_error(got: (u16, String, String), status: u16, code: &str) {
    let (s, ct, body) = got;
    assert_eq!(s, status, "{body}");
    assert!(ct.starts_with("application/json"), "{ct}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("json body");
    assert_eq!(v["code"], code, "{body}");
    assert!(v["error"].is_string(), "{body}");
    assert_eq!(v.as_object().map(|o| o.len()), Some(2), "{body}");
}

struct Fixture {
    _tmp: tempfile::TempDir,
    server: Server,
    viewer: String,
    admin: String,
    revoked: String,
}

async fn fixture() -> Fixture {
    let tmp = tempfile::tempdir().expect("tempdir");
    let db = Db::open(tmp.path()).expect("open");
    let (_, viewer) = db
        .create_api_token(Role::Viewer, "grafana", 1_000)
        .expect("viewer");
    let (_, admin) = db
        .create_api_token(Role::Admin, "root", 1_000)
        .expect("admin");
    let (rid, revoked) = db.create_api_token(Role::Admin, "old", 1_000).expect("old");
    db.revoke_api_token(&rid, 2_000).expect("revoke");
    db.register_agent(
        &NewAgent {
            id: "a1b2".into(),
            hostname: "web1".into(),
            version: "0.1.0".into(),
            cert_pin: "00".repeat(32),
            token_id: "tok".into(),
        },
        1_700_000_000_000,
    )
    .expect("agent");
    db.agent_connected(
        "a1b2",
        "10.0.0.7:40000",
        "web1",
        "0.1.0",
        10_000,
        1_700_000_001_000,
    )
    .expect("connected");
    let server = Server::start(tmp.path()).await;
    Fixture {
        _tmp: tmp,
        server,
        viewer,
        admin,
        revoked,
    }
}

#[tokio::test]
async fn auth_failures_are_json_401_and_403() {
    let f = fixture().await;
    let s = &f.server;
    check_error(s.get("/api/v1/agents", None).await, 401, "unauthorized");
    check_error(
        s.get("/api/v1/agents", Some("Basic dXNlcjpwYXNz")).await,
        401,
        "unauthorized",
    );
    check_error(
        s.get("/api/v1/agents", Some("Bearer")).await,
        401,
        "unauthorized",
    );
    let unknown = bearer("vgl_000000000000_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA");
    check_error(
        s.get("/api/v1/agents", Some(&unknown)).await,
        401,
        "unauthorized",
    );
    let wrong_secret = format!("{}x", bearer(&f.viewer));
    check_error(
        s.get("/api/v1/agents", Some(&wrong_secret)).await,
        401,
        "unauthorized",
    );
    check_error(
        s.get("/api/v1/agents", Some(&bearer(&f.revoked))).await,
        401,
        "unauthorized",
    );
    check_error(
        s.get("/api/v1/tokens", Some(&bearer(&f.viewer))).await,
        403,
        "forbidden",
    );
    // The message never echoes the token.
    let (_, _, body) = s.get("/api/v1/agents", Some(&wrong_secret)).await;
    assert!(!body.contains(&f.viewer), "{body}");
    f.server.stop().await;
}

#[tokio::test]
async fn agents_list_for_viewer() {
    let f = fixture().await;
    let (status, ct, body) = f
        .server
        .get("/api/v1/agents", Some(&bearer(&f.viewer)))
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(ct.starts_with("application/json"), "{ct}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    let expected = serde_json::json!([{
        "id": "a1b2",
        "hostname": "web1",
        "version": "0.1.0",
        "address": "10.0.0.7:40000",
        "connected": true,
        "state": "up",
        "stopped_at_ms": null,
        "stopped_at": null,
        "last_seen_ms": 1_700_000_001_000i64,
        "last_seen": "2023-11-14T22:13:21.000Z",
        "last_seq": null,
        "interval_ms": 10_000,
        "enrolled_at_ms": 1_700_000_000_000i64,
        "enrolled_at": "2023-11-14T22:13:20.000Z",
        "revoked": false,
        "revoked_at": null,
    }]);
    assert_eq!(v, expected);
    f.server.stop().await;
}

#[tokio::test]
async fn tokens_list_for_admin_has_no_secrets() {
    let f = fixture().await;
    let (status, _, body) = f
        .server
        .get("/api/v1/tokens", Some(&bearer(&f.admin)))
        .await;
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    let names: Vec<(&str, &str, bool)> = v
        .as_array()
        .expect("array")
        .iter()
        .map(|t| {
            (
                t["name"].as_str().unwrap_or_default(),
                t["role"].as_str().unwrap_or_default(),
                t["revoked"].as_bool().unwrap_or_default(),
            )
        })
        .collect();
    let mut names = names;
    names.sort();
    assert_eq!(
        names,
        [
            ("grafana", "viewer", false),
            ("old", "admin", true),
            ("root", "admin", false)
        ]
    );
    for token in [&f.viewer, &f.admin, &f.revoked] {
        let secret = token.rsplit('_').next().expect("secret");
        assert!(!body.contains(secret), "secret leaked: {body}");
    }
    assert!(!body.contains("hash"), "{body}");
    f.server.stop().await;
}

#[tokio::test]
async fn probes_metrics_and_fallbacks() {
    let f = fixture().await;
    let s = &f.server;
    assert_eq!(s.get("/healthz", None).await.2, "ok");
    let (status, _, body) = s.get("/readyz", None).await;
    assert_eq!((status, body.as_str()), (503, "not ready: starting\n"));
    s.supervisor.set_ready();
    let (status, _, body) = s.get("/readyz", None).await;
    assert_eq!((status, body.as_str()), (200, "ready\n"));
    // A component that dies fails readiness, naming it.
    drop(s.supervisor.sentinel("incident engine"));
    let (status, _, body) = s.get("/readyz", None).await;
    assert_eq!(
        (status, body.as_str()),
        (503, "not ready: failed: incident engine (stopped)\n")
    );

    let (status, ct, body) = s.get("/metrics", None).await;
    assert_eq!(status, 200);
    assert_eq!(ct, METRICS_CONTENT_TYPE);
    assert!(body.contains("vigil_agents_connected 2"), "{body}");

    check_error(s.get("/api/v1/nope", None).await, 404, "not_found");
    check_error(s.get("/api/v2/agents", None).await, 404, "not_found");
    check_error(
        s.request("POST", "/api/v1/agents", None).await,
        405,
        "method_not_allowed",
    );
    let (status, ct, _) = s.get("/nowhere", None).await;
    assert_eq!(status, 404);
    assert!(!ct.starts_with("application/json"), "{ct}");
    f.server.stop().await;
}

#[test]
fn rfc3339() {
    fn check(ms: i64, expected: Option<&str>) {
        assert_eq!(format_rfc3339_ms(ms).as_deref(), expected, "{ms}");
    }
    check(0, Some("1970-01-01T00:00:00.000Z"));
    check(1_700_000_000_123, Some("2023-11-14T22:13:20.123Z"));
    check(-1, None);
}

/// `/api/v1/slas`: figures from the store's incidents, a report over a given period as JSON and
/// CSV, and the errors of bad requests.
#[tokio::test]
async fn slas_report_availability_from_incidents() {
    const H: i64 = 3_600_000;
    let tmp = tempfile::tempdir().expect("tempdir");
    let db = Db::open(tmp.path()).expect("open");
    let (_, viewer) = db
        .create_api_token(Role::Viewer, "v", 1_000)
        .expect("viewer");
    db.register_agent(
        &NewAgent {
            id: "a1".into(),
            hostname: "web1".into(),
            version: "0.1.0".into(),
            cert_pin: "00".repeat(32),
            token_id: "tok".into(),
        },
        1_000,
    )
    .expect("agent");
    // 2026-11-02T00:00:00Z; the host known from then, down 01:00-01:30 (an hour's P1 incident
    // resolved after 30 min).
    let t0: i64 = 1_793_577_600_000;
    db.conn()
        .execute(
            "INSERT INTO cis (agent_id, type, key, name, source, first_seen_ms, last_seen_ms)
             VALUES ('a1', 'host', 'host', 'web1', 'discovery', ?1, ?1)",
            [t0],
        )
        .expect("ci");
    let ci = db.conn().last_insert_rowid();
    db.conn()
        .execute(
            "INSERT INTO incidents (dedup_key, rule, origin, agent_id, ci_id, ci_type, ci_key, title,
                 state, impact, urgency, priority, first_breach_ms, last_breach_ms, started_ms,
                 created_ms, resolved_ms)
             VALUES ('k', 'host-unreachable', 'rule', 'a1', ?1, 'host', 'host', 't', 'resolved',
                 'high', 'high', 1, ?2, ?2, ?2, ?2, ?3)",
            rusqlite::params![ci, t0 + H, t0 + H + H / 2],
        )
        .expect("incident");
    let incident = db.conn().last_insert_rowid();
    // The agent sent data all along (the ingest writer keeps these stretches).
    db.conn()
        .execute(
            "INSERT INTO agent_data VALUES ('a1', ?1, ?2)",
            rusqlite::params![t0 - H, t0 + 100 * H],
        )
        .expect("data");
    let config = crate::config::from_str(
        "c.toml",
        "data_dir = \"/x\"\n[[sla]]\nname = \"web\"\ntarget = 0.999\nwindow = \"month\"\n",
    )
    .expect("config");
    let slas = Arc::new(crate::sla::api::SlaSet::fixed(config.slas));
    let server = Server::start_with(tmp.path(), |st| {
        st.incidents = Arc::new(IncidentsApi {
            slas,
            ..IncidentsApi::default()
        })
    })
    .await;
    let auth = bearer(&viewer);

    let (status, _, body) = server.get("/api/v1/slas", Some(&auth)).await;
    assert_eq!(status, 200, "{body}");
    let list: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(list[0]["name"], "web");
    assert_eq!(list[0]["target"], 0.999);
    assert_eq!(list[0]["down_when"][2], "priority<=P2");
    assert_eq!(list[0]["current"]["window"], "month");

    let from = t0;
    let to = t0 + 10 * H;
    let path = format!("/api/v1/slas/web/report?from={from}&to={to}");
    let (status, _, body) = server.get(&path, Some(&auth)).await;
    assert_eq!(status, 200, "{body}");
    let r: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(r["experienced"]["down_seconds"], 1800.0, "{body}");
    assert_eq!(r["contractual"]["availability"], 0.95, "{body}");
    assert_eq!(r["outages"][0]["incidents"][0], incident);
    assert_eq!(r["outages"][0]["duration_seconds"], 1800.0);
    let allowed = r["error_budget"]["allowed_seconds"]
        .as_f64()
        .expect("budget");
    assert!((allowed - 36.0).abs() < 1e-9, "0.1 % of 10 h: {body}");
    assert_eq!(r["daily"][0]["date"], "2026-11-02");

    let (status, ct, csv) = server.get(&format!("{path}&format=csv"), Some(&auth)).await;
    assert_eq!(status, 200);
    assert!(ct.starts_with("text/csv"), "{ct}");
    let rows: Vec<&str> = csv.lines().collect();
    assert_eq!(rows.len(), 2, "{csv}");
    assert!(
        rows[1].starts_with("2026-11-02,0.95,0.95,1800,1800,0,1"),
        "{csv}"
    );

    let (status, _, body) = server.get("/api/v1/slas/web", Some(&auth)).await;
    assert_eq!(status, 200, "{body}");
    let one: serde_json::Value = serde_json::from_str(&body).expect("json");
    let windows: Vec<&str> = one["windows"]
        .as_array()
        .expect("windows")
        .iter()
        .map(|w| w["window"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(windows, ["1d", "7d", "30d"]);

    check_error(
        server.get("/api/v1/slas/none", Some(&auth)).await,
        404,
        "not_found",
    );
    check_error(
        server.get(&format!("{path}&format=xml"), Some(&auth)).await,
        400,
        "bad_request",
    );
    check_error(
        server
            .get(
                &format!("/api/v1/slas/web/report?from={to}&to={from}"),
                Some(&auth),
            )
            .await,
        400,
        "bad_request",
    );
    check_error(
        server
            .get(
                "/api/v1/slas/web/report?from=0&to=253402207200000",
                Some(&auth),
            )
            .await,
        400,
        "bad_request",
    );
    check_error(server.get("/api/v1/slas", None).await, 401, "unauthorized");

    // KPIs of the same incident: resolved 30 min after its start, by priority and by SLA.
    let kpi = format!("/api/v1/kpis?from={from}&to={to}&by=priority");
    let (status, _, body) = server.get(&kpi, Some(&auth)).await;
    assert_eq!(status, 200, "{body}");
    let k: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(k["by"], "priority");
    assert_eq!(k["groups"][0]["key"], "P1", "{body}");
    assert_eq!(k["groups"][0]["incidents"], 1);
    assert_eq!(k["groups"][0]["mttr_seconds"], 1800.0);
    assert_eq!(k["groups"][0]["resolved_within_target"], 1.0);
    assert_eq!(k["groups"][0]["backlog"]["lt_1h"], 0);
    let (status, _, body) = server
        .get(
            &format!("/api/v1/kpis?from={from}&to={to}&by=sla"),
            Some(&auth),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let k: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(
        (&k["groups"][0]["key"], &k["groups"][0]["incidents"]),
        (&"web".into(), &1.into())
    );
    check_error(
        server.get("/api/v1/kpis?by=team", Some(&auth)).await,
        400,
        "bad_request",
    );
    check_error(
        server
            .get("/api/v1/kpis?from=0&to=253402207200000", Some(&auth))
            .await,
        400,
        "bad_request",
    );
    check_error(server.get("/api/v1/kpis", None).await, 401, "unauthorized");
    server.stop().await;
}

/// Every state-changing request is in the audit log, refused ones included, with who, what,
/// the status and the client's address; reads are not; only admins read it.
#[tokio::test]
async fn state_changing_requests_are_audited() {
    let f = fixture().await;
    let s = &f.server;
    let (viewer, admin) = (bearer(&f.viewer), bearer(&f.admin));
    // A viewer may not delete (403), an admin deletes what does not exist (404), nobody (401).
    assert_eq!(
        s.request("DELETE", "/api/v1/slas/shop", Some(&viewer))
            .await
            .0,
        403
    );
    assert_eq!(
        s.request("DELETE", "/api/v1/maintenance/77", Some(&admin))
            .await
            .0,
        404
    );
    assert_eq!(s.request("POST", "/api/v1/rules", None).await.0, 401);
    assert_eq!(s.get("/api/v1/agents", Some(&admin)).await.0, 200);

    check_error(
        s.get("/api/v1/audit", Some(&viewer)).await,
        403,
        "forbidden",
    );
    let (status, _, body) = s.get("/api/v1/audit", Some(&admin)).await;
    assert_eq!(status, 200, "{body}");
    let rows: serde_json::Value = serde_json::from_str(&body).expect("json");
    let got: Vec<(String, String, u64, Option<String>)> = rows
        .as_array()
        .expect("rows")
        .iter()
        .map(|r| {
            assert_eq!(r["remote"], "127.0.0.1", "{r}");
            assert!(r["at_ms"].as_i64().is_some_and(|t| t > 0), "{r}");
            (
                r["method"].as_str().unwrap_or("").to_owned(),
                r["path"].as_str().unwrap_or("").to_owned(),
                r["status"].as_u64().unwrap_or(0),
                r["role"].as_str().map(str::to_owned),
            )
        })
        .collect();
    let row = |m: &str, p: &str, s: u64, r: Option<&str>| {
        (m.to_owned(), p.to_owned(), s, r.map(str::to_owned))
    };
    assert_eq!(
        got,
        [
            row("POST", "/api/v1/rules", 401, None),
            row("DELETE", "/api/v1/maintenance/77", 404, Some("admin")),
            row("DELETE", "/api/v1/slas/shop", 403, Some("viewer")),
        ],
        "newest first, reads left out: {body}"
    );
    let one = rows[1]["token_id"].as_str().expect("token id").to_owned();
    let (_, _, body) = s
        .get(
            &format!("/api/v1/audit?token_id={one}&limit=5"),
            Some(&admin),
        )
        .await;
    let only: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(only.as_array().map(Vec::len), Some(1), "{body}");
    check_error(
        s.get("/api/v1/audit?limit=0", Some(&admin)).await,
        400,
        "bad_request",
    );
}

impl Server {
    /// Sends `head` (request line and headers, without the blank line) and `body`; returns
    /// `(status, headers with their names in lower case, body)`.
    pub(crate) async fn raw(&self, head: &str, body: &str) -> (u16, String, String) {
        let mut stream = tokio::net::TcpStream::connect(self.addr)
            .await
            .expect("connect");
        let req = format!(
            "{head}\r\nHost: test\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(req.as_bytes()).await.expect("write");
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await.expect("read");
        let text = String::from_utf8(raw).expect("utf8");
        let (head, body) = text.split_once("\r\n\r\n").expect("head/body");
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .expect("status");
        assert!(
            !head
                .to_ascii_lowercase()
                .contains("transfer-encoding: chunked"),
            "test client reads only sized bodies"
        );
        let head = head
            .lines()
            .map(|l| match l.split_once(':') {
                Some((k, v)) => format!("{}:{v}", k.to_ascii_lowercase()),
                None => l.to_owned(),
            })
            .collect::<Vec<_>>()
            .join("\r\n");
        (status, head, body.to_owned())
    }
}

impl Server {
    /// `GET path` with a session cookie (as `log_in` returned it): `(status, head, body)`.
    pub(crate) async fn page(&self, path: &str, cookie: &str) -> (u16, String, String) {
        self.raw(
            &format!("GET {path} HTTP/1.1\r\nCookie: vigil_session={cookie}"),
            "",
        )
        .await
    }

    /// A JSON request with a session cookie and its CSRF token: `(status, body)`.
    pub(crate) async fn act(
        &self,
        method: &str,
        path: &str,
        cookie: &str,
        csrf: &str,
        body: &str,
    ) -> (u16, String) {
        let (status, _, body) = self
            .raw(
                &format!(
                    "{method} {path} HTTP/1.1\r\nCookie: vigil_session={cookie}\r\n\
                     X-CSRF-Token: {csrf}\r\nOrigin: http://test\r\nContent-Type: application/json"
                ),
                body,
            )
            .await;
        (status, body)
    }
}

/// The `vigil_session` value a response set.
pub(crate) fn set_cookie(head: &str) -> Option<String> {
    head.lines()
        .find_map(|l| l.strip_prefix("set-cookie: vigil_session="))
        .map(|v| v.split(';').next().unwrap_or("").to_owned())
}

pub(crate) const PASSWORD: &str = "a long enough password";

/// The console's sessions, end to end over the router: a form login sets a cookie with the
/// right attributes, the cookie reads the API as its user's role, a state-changing request
/// with it needs the session's CSRF token (and this origin), a viewer's cookie cannot act,
/// logout ends it, and each of these is in the audit log under the user's name.
#[tokio::test]
async fn console_sessions_log_in_act_with_csrf_and_log_out() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let db = Db::open(tmp.path()).expect("open");
    db.create_user("olga", Role::Operator, PASSWORD, 1_000)
        .expect("operator");
    db.create_user("vic", Role::Viewer, PASSWORD, 1_000)
        .expect("viewer");
    let (_, admin) = db.create_api_token(Role::Admin, "a", 1_000).expect("admin");
    drop(db);
    let server = Server::start(tmp.path()).await;
    let s = &server;
    let form = "Content-Type: application/x-www-form-urlencoded";

    // The form, then a wrong password (401, the form again, no cookie), then the right one.
    let (status, _, page) = s.raw("GET /login HTTP/1.1", "").await;
    assert_eq!(status, 200);
    assert!(page.contains("name=\"password\""), "{page}");
    let (status, head, _) = s
        .raw(
            &format!("POST /login HTTP/1.1\r\n{form}"),
            "user=olga&password=wrong+password+here",
        )
        .await;
    assert_eq!(status, 401);
    assert_eq!(set_cookie(&head), None);
    let (status, head, _) = s
        .raw(
            &format!("POST /login HTTP/1.1\r\n{form}"),
            "user=olga&password=a+long+enough+password",
        )
        .await;
    assert_eq!(status, 303, "{head}");
    assert!(
        head.contains("location: /\r\n") || head.ends_with("location: /"),
        "{head}"
    );
    let line = head
        .lines()
        .find(|l| l.starts_with("set-cookie:"))
        .expect("a cookie");
    for attr in ["HttpOnly", "SameSite=Strict", "Path=/", "Max-Age=43200"] {
        assert!(line.contains(attr), "{attr} in {line}");
    }
    assert!(!line.contains("Secure"), "plain HTTP: {line}");
    let cookie = set_cookie(&head).expect("cookie");

    // The cookie reads as its user; the session names the CSRF token.
    let with = |extra: &str| format!("Cookie: vigil_session={cookie}{extra}");
    let (status, _, body) = s
        .raw(&format!("GET /api/v1/session HTTP/1.1\r\n{}", with("")), "")
        .await;
    assert_eq!(status, 200, "{body}");
    let me: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(
        (me["user"].as_str(), me["role"].as_str()),
        (Some("olga"), Some("operator"))
    );
    let csrf = me["csrf"].as_str().expect("csrf").to_owned();
    let (status, _, _) = s
        .raw(
            &format!("GET /api/v1/incidents HTTP/1.1\r\n{}", with("")),
            "",
        )
        .await;
    assert_eq!(status, 200);

    // A state-changing request with the cookie: without the token 403 `csrf`, with a wrong
    // one too, from another origin too; with it the handler runs (no such window: 404).
    let delete = |extra: String| async move {
        s.raw(
            &format!("DELETE /api/v1/maintenance/77 HTTP/1.1\r\n{extra}"),
            "",
        )
        .await
    };
    let (status, _, body) = delete(with("")).await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("\"csrf\""), "{body}");
    assert_eq!(delete(with("\r\nX-CSRF-Token: nope")).await.0, 403);
    assert_eq!(
        delete(with(&format!(
            "\r\nX-CSRF-Token: {csrf}\r\nOrigin: http://evil.example"
        )))
        .await
        .0,
        403
    );
    let (status, _, body) = delete(with(&format!("\r\nX-CSRF-Token: {csrf}"))).await;
    assert_eq!(status, 404, "{body}");

    // A viewer's cookie with its own token: the role decides (403 forbidden, not csrf).
    let (_, head, body) = s
        .raw(
            "POST /login HTTP/1.1\r\nContent-Type: application/json",
            &format!(r#"{{"user":"vic","password":"{PASSWORD}"}}"#),
        )
        .await;
    let vcookie = set_cookie(&head).expect("viewer cookie");
    let vcsrf = serde_json::from_str::<serde_json::Value>(&body).expect("json")["csrf"]
        .as_str()
        .expect("csrf")
        .to_owned();
    let (status, _, body) = s
        .raw(
            &format!(
                "DELETE /api/v1/maintenance/77 HTTP/1.1\r\nCookie: vigil_session={vcookie}\r\nX-CSRF-Token: {vcsrf}"
            ),
            "",
        )
        .await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("\"forbidden\""), "{body}");

    // Logout needs the token too; then the cookie is cleared and dead.
    let (status, _, _) = s
        .raw(
            &format!("POST /logout HTTP/1.1\r\n{}\r\n{form}", with("")),
            "",
        )
        .await;
    assert_eq!(status, 403);
    let (status, head, _) = s
        .raw(
            &format!("POST /logout HTTP/1.1\r\n{}\r\n{form}", with("")),
            &format!("_csrf={csrf}"),
        )
        .await;
    assert_eq!(status, 303, "{head}");
    assert!(head.contains("set-cookie: vigil_session=;"), "{head}");
    let (status, _, _) = s
        .raw(&format!("GET /api/v1/session HTTP/1.1\r\n{}", with("")), "")
        .await;
    assert_eq!(status, 401);

    // The audit log names the user of each state-changing request, logins included.
    let (status, _, body) = s
        .get("/api/v1/audit?user=olga", Some(&bearer(&admin)))
        .await;
    assert_eq!(status, 200, "{body}");
    let rows: Vec<serde_json::Value> = serde_json::from_str(&body).expect("json");
    let got: Vec<(String, String, u64)> = rows
        .iter()
        .map(|r| {
            (
                r["method"].as_str().unwrap_or("").to_owned(),
                r["path"].as_str().unwrap_or("").to_owned(),
                r["status"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    let row = |m: &str, p: &str, st: u64| (m.to_owned(), p.to_owned(), st);
    assert_eq!(
        got,
        [
            row("POST", "/logout", 303),
            row("POST", "/logout", 403),
            row("DELETE", "/api/v1/maintenance/77", 404),
            row("DELETE", "/api/v1/maintenance/77", 403),
            row("DELETE", "/api/v1/maintenance/77", 403),
            row("DELETE", "/api/v1/maintenance/77", 403),
            row("POST", "/login", 303),
            row("POST", "/login", 401),
        ],
        "{body}"
    );
    let (status, _, body) = s.get("/api/v1/users", Some(&bearer(&admin))).await;
    assert_eq!(status, 200);
    assert!(
        body.contains("\"olga\"") && !body.contains("argon2"),
        "{body}"
    );
    server.stop().await;
}

/// Failed logins are limited per user and per address, counted by outcome; past the limit a
/// login is refused before its password is checked, even the right one.
#[tokio::test]
async fn failed_logins_are_rate_limited_and_counted() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let db = Db::open(tmp.path()).expect("open");
    db.create_user("olga", Role::Operator, PASSWORD, 1_000)
        .expect("user");
    drop(db);
    let registry = prometheus::Registry::new();
    let console = Arc::new(
        session::Console::new(
            Some(&registry),
            Default::default(),
            session::LoginLimits {
                per_user: 3,
                per_address: 5,
                window: Duration::from_secs(600),
            },
            false,
        )
        .expect("console"),
    );
    let server = Server::start_with(tmp.path(), |st| st.console = console).await;
    let s = &server;
    let login = |user: &str, pw: &str| {
        let body = format!(r#"{{"user":"{user}","password":"{pw}"}}"#);
        async move {
            s.raw(
                "POST /login HTTP/1.1\r\nContent-Type: application/json",
                &body,
            )
            .await
        }
    };
    for _ in 0..3 {
        assert_eq!(login("olga", "not the password").await.0, 401);
    }
    let (status, head, body) = login("olga", PASSWORD).await;
    assert_eq!(status, 429, "{body}");
    let retry: u64 = head
        .lines()
        .find_map(|l| l.strip_prefix("retry-after: "))
        .and_then(|v| v.trim().parse().ok())
        .expect("retry-after");
    assert!((590..=600).contains(&retry), "{retry}");
    // Another name from the same address: two more failures reach the address's limit.
    assert_eq!(login("ghost", "whatever it is").await.0, 401);
    assert_eq!(login("ghost", "whatever it is").await.0, 401);
    assert_eq!(login("ghost", "whatever it is").await.0, 429);
    // Malformed bodies are refused and counted, without touching the limits' keys.
    assert_eq!(
        s.raw(
            "POST /login HTTP/1.1\r\nContent-Type: application/json",
            "{"
        )
        .await
        .0,
        400
    );
    let text = prometheus::TextEncoder::new()
        .encode_to_string(&registry.gather())
        .expect("encode");
    let value = |o: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("vigil_http_logins_total{{outcome=\"{o}\"}} ")))
            .and_then(|v| v.parse::<u64>().ok())
    };
    assert_eq!(value("bad_credentials"), Some(5), "{text}");
    assert_eq!(value("rate_limited_user"), Some(1), "{text}");
    assert_eq!(value("rate_limited_address"), Some(1), "{text}");
    assert_eq!(value("malformed"), Some(1), "{text}");
    assert_eq!(value("success"), Some(0), "{text}");
    server.stop().await;
}

/// Opens an incident as the engine would, through the lifecycle (rows, timeline).
pub(crate) fn open_incident(
    c: &rusqlite::Connection,
    key: &str,
    title: &str,
    impact: crate::incidents::rule::Level,
    urgency: crate::incidents::rule::Level,
    at: i64,
) -> i64 {
    use crate::incidents::lifecycle::Lifecycle;
    use crate::incidents::records::{Opened, Opening, Origin};
    let labels = std::collections::BTreeMap::new();
    let o = Opening {
        dedup_key: key,
        rule: "check-down",
        origin: Origin::Rule,
        agent_id: None,
        ci_id: None,
        ci_type: "check",
        ci_key: key,
        title,
        impact,
        urgency,
        metric: Some("check_up"),
        op: Some("<"),
        threshold: Some(1.0),
        value: Some(0.0),
        peak: Some(0.0),
        first_breach_ms: at,
        at_ms: at,
        labels: &labels,
        flapping: false,
        suppression: None,
        probable_cause_id: None,
    };
    match Lifecycle::new(c, &[], at)
        .open(&o, 0, None)
        .expect("open")
        .0
    {
        Opened::New { id, .. } => id,
        other => panic!("not opened: {other:?}"),
    }
}

/// Logs `user` in with JSON; returns the cookie and the CSRF token.
pub(crate) async fn log_in(s: &Server, user: &str) -> (String, String) {
    let (status, head, body) = s
        .raw(
            "POST /login HTTP/1.1\r\nContent-Type: application/json",
            &format!(r#"{{"user":"{user}","password":"{PASSWORD}"}}"#),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let csrf = serde_json::from_str::<serde_json::Value>(&body).expect("json")["csrf"]
        .as_str()
        .expect("csrf")
        .to_owned();
    (set_cookie(&head).expect("cookie"), csrf)
}

/// The board: only for a session (else to the login form), most urgent first, filters from
/// the URL, markup escaped, the P1/P2 count in the title, action controls for operators and
/// none for viewers, and the rows alone for the live poll.
#[tokio::test]
async fn the_board_lists_active_incidents_most_urgent_first() {
    use crate::incidents::rule::Level;
    let tmp = tempfile::tempdir().expect("tempdir");
    let db = Db::open(tmp.path()).expect("open");
    db.create_user("olga", Role::Operator, PASSWORD, 1_000)
        .expect("operator");
    db.create_user("vic", Role::Viewer, PASSWORD, 1_000)
        .expect("viewer");
    let now = now_ms();
    let low = open_incident(
        db.conn(),
        "disk",
        "disk slow",
        Level::Low,
        Level::Low,
        now - 60_000,
    );
    let p1 = open_incident(
        db.conn(),
        "app",
        "app <script>alert(1)</script> down",
        Level::High,
        Level::High,
        now - 3_600_000,
    );
    let _ = (low, p1);
    drop(db);
    let server = Server::start(tmp.path()).await;
    let s = &server;

    let (status, head, _) = s.raw("GET / HTTP/1.1", "").await;
    assert_eq!(status, 303);
    assert!(head.contains("location: /login"), "{head}");

    let (cookie, _) = log_in(s, "olga").await;
    let get = |path: &str, cookie: &str, extra: &str| {
        let head = format!("GET {path} HTTP/1.1\r\nCookie: vigil_session={cookie}{extra}");
        async move { s.raw(&head, "").await }
    };
    let (status, head, page) = get("/", &cookie, "").await;
    assert_eq!(status, 200, "{page}");
    assert!(head.contains("content-security-policy:"), "{head}");
    assert!(
        page.contains("<title>(1) Incidents · Vigil</title>"),
        "{page}"
    );
    assert!(!page.contains("<script>alert(1)"), "escaped: {page}");
    assert!(
        page.contains("app &#60;script&#62;alert(1)&#60;/script&#62; down")
            || page.contains("app &lt;script&gt;alert(1)&lt;/script&gt; down"),
        "{page}"
    );
    let (a, b) = (
        page.find("data-id=\"2\"").expect("the P1 row"),
        page.find("data-id=\"1\"").expect("the P5 row"),
    );
    assert!(a < b, "most urgent first");
    assert!(
        page.contains("value=\"acknowledge\""),
        "an operator can act"
    );
    assert!(page.contains("name=\"_csrf\""), "logout carries the token");

    // Filters come from the URL and go back into the form and the live URL.
    let (_, _, page) = get("/?q=disk&priority=p5", &cookie, "").await;
    assert!(
        page.contains("data-id=\"1\"") && !page.contains("data-id=\"2\""),
        "{page}"
    );
    assert!(page.contains("value=\"disk\""), "{page}");
    assert!(
        page.contains("data-live=\"/?state=active&#38;priority=P5&#38;q=disk\""),
        "{page}"
    );
    // Nonsense in the URL falls back to the defaults instead of failing the page.
    let (status, _, _) = get("/?state=bogus&priority=P9&page=999999", &cookie, "").await;
    assert_eq!(status, 200);

    // The live poll gets the rows alone, with the counts in headers.
    let (status, head, rows) = get("/", &cookie, "\r\nX-Vigil-Fragment: rows").await;
    assert_eq!(status, 200);
    assert!(
        head.contains("x-vigil-hot: 1") && head.contains("x-vigil-total: 2"),
        "{head}"
    );
    assert!(
        rows.trim_start().starts_with("<tr") && !rows.contains("<html"),
        "{rows}"
    );

    // A viewer sees the same incidents and no action control.
    let (vcookie, vcsrf) = log_in(s, "vic").await;
    let (_, _, page) = s.page("/", &vcookie).await;
    assert!(page.contains("data-id=\"2\""), "{page}");
    assert!(
        !page.contains("value=\"acknowledge\"") && !page.contains("type=\"checkbox\""),
        "{page}"
    );

    // Not even with the CSRF token can a viewer act.
    let (status, body) = s
        .act(
            "POST",
            "/api/v1/incidents/2/acknowledge",
            &vcookie,
            &vcsrf,
            "{}",
        )
        .await;
    assert_eq!(status, 403, "{body}");

    // The assets are embedded.
    let (status, head, css) = s.raw("GET /assets/console.css HTTP/1.1", "").await;
    assert_eq!(status, 200);
    assert!(
        head.contains("content-type: text/css") && css.contains("prefers-color-scheme"),
        "{head}"
    );
    server.stop().await;
}

/// A pasted API token opens a session with the token's role: its requests are the token's in
/// the audit log (no user), a wrong token is a counted failure, and revoking the token ends
/// the session at once.
#[tokio::test]
async fn a_pasted_api_token_opens_a_session_that_lasts_while_the_token_does() {
    use crate::incidents::rule::Level;
    let tmp = tempfile::tempdir().expect("tempdir");
    let db = Db::open(tmp.path()).expect("open");
    let (tid, token) = db
        .create_api_token(Role::Operator, "night-shift", 1_000)
        .expect("token");
    let (_, admin) = db.create_api_token(Role::Admin, "a", 1_000).expect("admin");
    let id = open_incident(
        db.conn(),
        "k",
        "disk full",
        Level::High,
        Level::High,
        now_ms(),
    );
    let registry = prometheus::Registry::new();
    let console = Arc::new(
        session::Console::new(
            Some(&registry),
            Default::default(),
            Default::default(),
            false,
        )
        .expect("console"),
    );
    let server = Server::start_with(tmp.path(), |st| st.console = console).await;
    let s = &server;
    let form = "POST /login HTTP/1.1\r\nContent-Type: application/x-www-form-urlencoded";

    let (status, _, page) = s.raw("GET /login HTTP/1.1", "").await;
    assert_eq!(status, 200);
    assert!(page.contains("name=\"token\""), "{page}");
    let (status, head, _) = s.raw(form, "token=vgl_nope_nope").await;
    assert_eq!(status, 401);
    assert!(set_cookie(&head).is_none(), "{head}");

    let (status, head, _) = s.raw(form, &format!("token={token}")).await;
    assert_eq!(status, 303, "{head}");
    let cookie = set_cookie(&head).expect("cookie");
    let (status, _, page) = s.page("/", &cookie).await;
    assert_eq!(status, 200);
    assert!(page.contains("token night-shift"), "{page}");
    let csrf = page
        .split("name=\"csrf-token\" content=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .expect("csrf meta")
        .to_owned();
    let (status, body) = s
        .act(
            "POST",
            &format!("/api/v1/incidents/{id}/acknowledge"),
            &cookie,
            &csrf,
            "{}",
        )
        .await;
    assert_eq!(status, 200, "{body}");

    let (_, _, audit) = s.get("/api/v1/audit", Some(&bearer(&admin))).await;
    let rows: serde_json::Value = serde_json::from_str(&audit).expect("json");
    let ack = rows
        .as_array()
        .expect("rows")
        .iter()
        .find(|r| {
            r["path"]
                .as_str()
                .is_some_and(|p| p.ends_with("/acknowledge"))
        })
        .expect("the acknowledgement is audited");
    assert_eq!(ack["token_id"], tid.as_str(), "{ack}");
    assert!(ack["user"].is_null(), "{ack}");
    let metrics = prometheus::TextEncoder::new()
        .encode_to_string(&registry.gather())
        .expect("encode");
    for counted in ["{outcome=\"bad_credentials\"} 1", "{outcome=\"success\"} 1"] {
        assert!(
            metrics.contains(&format!("vigil_http_logins_total{counted}")),
            "{metrics}"
        );
    }

    db.revoke_api_token(&tid, now_ms()).expect("revoke");
    let (status, head, _) = s.page("/", &cookie).await;
    assert_eq!(status, 303, "{head}");
    server.stop().await;
}
