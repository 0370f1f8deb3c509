//! Console benchmark (issue "The operations console", budget): what each console page costs to
//! render with 10,000 CIs and 10,000 incidents in the store (1,000 of them active), through the
//! real router on loopback with a logged-in session.
//!
//! `cargo run --release -p vigil-collector --example console_bench [-- --runs N]`
//! (`bench/run.sh --console` does the same.)
//!
//! The store: 1,000 hosts (agents), each with a host CI and 9 CIs on it (filesystems, packages,
//! services; `runs_on` relations to the host) and a `depends_on` to the next host's service:
//! 10,000 CIs, 19,000 relations, 100 history rows per 10 hosts; 10,000 incidents opened through
//! the incident lifecycle (what the engine writes), 9,000 of them resolved; one SLA over all
//! hosts; 200 audit rows. Each page is fetched `--runs` times (default 21) after one warm-up;
//! the figure is the median wall time of the whole request on loopback (an upper bound of the
//! server's time), with the page's size. The budget is 50 ms.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use rusqlite::params;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use vigil_collector::http::{self, HttpState};
use vigil_collector::incidents::lifecycle::Lifecycle;
use vigil_collector::incidents::records::{Opened, Opening, Origin};
use vigil_collector::incidents::rule::Level;
use vigil_collector::store::{Db, Role};

const HOSTS: usize = 1_000;
const CIS_PER_HOST: usize = 10;
const INCIDENTS: usize = 10_000;
const ACTIVE: usize = 1_000;
const BUDGET_MS: f64 = 50.0;
const PASSWORD: &str = "console bench password";

fn main() -> Result<()> {
    let mut runs = 21usize;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--runs" => runs = args.next().context("--runs N")?.parse()?,
            other => bail!("unknown option {other} (options: --runs N)"),
        }
    }
    let dir = tempfile::tempdir()?;
    let t0 = Instant::now();
    let fixture = populate(dir.path())?;
    eprintln!(
        "console_bench: store filled in {:.1} s ({} CIs, {} incidents)",
        t0.elapsed().as_secs_f64(),
        HOSTS * CIS_PER_HOST,
        INCIDENTS
    );
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(measure(dir.path(), &fixture, runs))
}

struct Fixture {
    admin_token: String,
    incident: i64,
    host_ci: i64,
    service_ci: i64,
}

fn populate(dir: &std::path::Path) -> Result<Fixture> {
    let db = Db::open(dir)?;
    let now = now_ms();
    db.create_user("admin", Role::Admin, PASSWORD, now)?;
    let (_, admin_token) = db.create_api_token(Role::Admin, "bench", now)?;
    let conn = db.conn();
    conn.execute_batch("BEGIN IMMEDIATE")?;
    let mut host_cis = Vec::with_capacity(HOSTS);
    let mut service_cis = Vec::with_capacity(HOSTS);
    for h in 0..HOSTS {
        let agent = format!("agent-{h:04}");
        let hostname = format!("web-{h:04}");
        conn.execute(
            "INSERT INTO agents (id, hostname, version, cert_pin, enrolled_at_ms, connected,
                                 last_seen_ms)
             VALUES (?1, ?2, '0.1.0', 'bench', ?3, 1, ?4)",
            params![agent, hostname, now - 30 * 86_400_000, now],
        )?;
        let ci = |ty: &str, key: &str, attrs: &str| -> rusqlite::Result<i64> {
            conn.prepare_cached(
                "INSERT INTO cis (agent_id, type, key, name, attrs, source, state, first_seen_ms,
                    last_seen_ms)
                 VALUES (?1, ?2, ?3, ?3, ?4, 'discovery', 'active', ?5, ?6)",
            )?
            .execute(params![agent, ty, key, attrs, now - 30 * 86_400_000, now])?;
            Ok(conn.last_insert_rowid())
        };
        let host = ci(
            "host",
            &hostname,
            &format!(
                r#"{{"os":"debian 12","cpus":4,"memory_bytes":8589934592,"ip":"10.0.{}.{}"}}"#,
                h / 256,
                h % 256
            ),
        )?;
        host_cis.push(host);
        let mut on_host = Vec::new();
        for (ty, key) in [
            ("filesystem", "/"),
            ("filesystem", "/var"),
            ("package", "nginx"),
            ("package", "openssl"),
            ("package", "postgresql-client"),
            ("package", "curl"),
            ("service", "nginx"),
            ("service", "sshd"),
            ("service", "app"),
        ] {
            on_host.push(ci(ty, key, r#"{"version":"1.0"}"#)?);
        }
        service_cis.push(on_host[8]);
        for c in &on_host {
            conn.prepare_cached(
                "INSERT INTO relations (from_ci, kind, to_ci, source, first_seen_ms)
                 VALUES (?1, 'runs_on', ?2, 'discovery', ?3)",
            )?
            .execute(params![c, host, now])?;
        }
        if h % 10 == 0 {
            // History chained as the CMDB writes it: each row's `prev_id`, the CI's last.
            let mut prev: Option<i64> = None;
            for k in 0..100i64 {
                conn.prepare_cached(
                    "INSERT INTO ci_history (ci_id, ts_ms, attribute, change, old_value,
                                             new_value, source, prev_id)
                     VALUES (?1, ?2, 'version', 'changed', ?3, ?4, 'discovery', ?5)",
                )?
                .execute(params![
                    on_host[2],
                    now - (100 - k) * 3_600_000,
                    format!("1.{k}"),
                    format!("1.{}", k + 1),
                    prev
                ])?;
                prev = Some(conn.last_insert_rowid());
            }
            conn.execute(
                "UPDATE cis SET last_history_id = ?2 WHERE id = ?1",
                params![on_host[2], prev],
            )?;
        }
    }
    for h in 0..HOSTS {
        conn.prepare_cached(
            "INSERT INTO relations (from_ci, kind, to_ci, source, first_seen_ms)
             VALUES (?1, 'depends_on', ?2, 'derived', ?3)",
        )?
        .execute(params![service_cis[h], service_cis[(h + 1) % HOSTS], now])?;
    }
    let labels = BTreeMap::new();
    let mut incident = 0;
    for i in 0..INCIDENTS {
        let h = i % HOSTS;
        let agent = format!("agent-{h:04}");
        let key = format!("bench-{i}");
        let (impact, urgency) = match i % 5 {
            0 => (Level::High, Level::High),
            1 => (Level::High, Level::Medium),
            2 => (Level::Medium, Level::Medium),
            _ => (Level::Low, Level::Low),
        };
        let at = now - (INCIDENTS - i) as i64 * 60_000;
        let title = format!("load high on web-{h:04}");
        let o = Opening {
            dedup_key: &key,
            rule: "load-high",
            origin: Origin::Rule,
            agent_id: Some(&agent),
            ci_id: Some(host_cis[h]),
            ci_type: "host",
            ci_key: "host",
            title: &title,
            impact,
            urgency,
            metric: Some("load1"),
            op: Some(">"),
            threshold: Some(8.0),
            value: Some(9.5),
            peak: Some(12.0),
            first_breach_ms: at,
            at_ms: at,
            labels: &labels,
            flapping: false,
            suppression: None,
            probable_cause_id: None,
        };
        let id = match Lifecycle::new(conn, &[], at).open(&o, 0, None)?.0 {
            Opened::New { id, .. } => id,
            other => bail!("not opened: {other:?}"),
        };
        if i < INCIDENTS - ACTIVE {
            Lifecycle::new(conn, &[], at + 30_000).resolve(
                id,
                at + 30_000,
                Some(1.0),
                "recovered",
                true,
            )?;
        } else {
            incident = id;
        }
    }
    conn.execute_batch("COMMIT")?;
    Ok(Fixture {
        admin_token,
        incident,
        host_ci: host_cis[HOSTS / 2],
        service_ci: service_cis[HOSTS / 2],
    })
}

async fn measure(dir: &std::path::Path, f: &Fixture, runs: usize) -> Result<()> {
    let supervisor = vigil_collector::supervise::Supervisor::new();
    let state = HttpState::new(dir.to_owned(), Arc::new(String::new), supervisor)?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(http::serve::serve(
        listener,
        http::router(state),
        Default::default(),
        http::serve::HttpMetrics::unregistered(),
        async {
            let _ = stopped.await;
        },
    ));
    // One SLA over every host, and a few audited changes, through the API.
    let sla = r#"{"name":"all-hosts","target":0.999,"window":"month"}"#;
    let (status, body) = request(
        addr,
        "POST",
        "/api/v1/slas",
        &[
            ("Authorization", &format!("Bearer {}", f.admin_token)),
            ("Content-Type", "application/json"),
        ],
        sla,
    )
    .await?;
    if status != 201 {
        bail!(
            "creating the SLA: {status} {}",
            String::from_utf8_lossy(&body)
        );
    }
    let login = format!(r#"{{"user":"admin","password":"{PASSWORD}"}}"#);
    let (status, head, _) = request_head(
        addr,
        "POST",
        "/login",
        &[("Content-Type", "application/json")],
        &login,
    )
    .await?;
    if status != 200 {
        bail!("login: {status}");
    }
    let cookie = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .starts_with("set-cookie: vigil_session=")
                .then(|| {
                    l["set-cookie: ".len()..]
                        .split(';')
                        .next()
                        .unwrap_or("")
                        .to_owned()
                })
        })
        .ok_or_else(|| anyhow!("no session cookie"))?;
    let pages = [
        "/".to_owned(),
        "/?state=all&page=50".to_owned(),
        "/?q=web-0500".to_owned(),
        format!("/incidents/{}", f.incident),
        "/cmdb".to_owned(),
        "/cmdb?q=nginx&type=service".to_owned(),
        format!("/cmdb/{}", f.host_ci),
        format!("/cmdb/{}", f.service_ci),
        "/slas".to_owned(),
        "/slas/all-hosts".to_owned(),
        "/slas/all-hosts/report".to_owned(),
        "/agents".to_owned(),
        "/maintenance".to_owned(),
        "/rules".to_owned(),
        "/users".to_owned(),
        "/tokens".to_owned(),
        "/audit".to_owned(),
    ];
    println!("| page | status | median ms | max ms | bytes | within {BUDGET_MS} ms |");
    println!("|---|---|---|---|---|---|");
    let mut over = 0;
    for page in &pages {
        let headers = [("Cookie", cookie.as_str())];
        let (status, body) = request(addr, "GET", page, &headers, "").await?;
        let mut times = Vec::with_capacity(runs);
        for _ in 0..runs {
            let t = Instant::now();
            let _ = request(addr, "GET", page, &headers, "").await?;
            times.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        times.sort_by(f64::total_cmp);
        let median = times[times.len() / 2];
        let ok = status == 200 && median <= BUDGET_MS;
        if !ok {
            over += 1;
        }
        println!(
            "| `{page}` | {status} | {median:.1} | {:.1} | {} | {} |",
            times[times.len() - 1],
            body.len(),
            if ok { "yes" } else { "NO" }
        );
    }
    let _ = stop.send(());
    let _ = server.await;
    println!(
        "\n{} of {} pages within the budget ({runs} runs each, medians).",
        pages.len() - over,
        pages.len()
    );
    Ok(())
}

async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Result<(u16, Vec<u8>)> {
    let (status, _, body) = request_head(addr, method, path, headers, body).await?;
    Ok((status, body))
}

async fn request_head(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Result<(u16, String, Vec<u8>)> {
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    let mut req = format!(
        "{method} {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).await?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await?;
    let end = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| anyhow!("no HTTP header in the answer to {path}"))?;
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| anyhow!("no status in {head}"))?;
    Ok((status, head, buf[end + 4..].to_vec()))
}

fn now_ms() -> i64 {
    vigil_runtime::clock::now_ms()
}
