//! Test harness: starts the real `vigil-collector` and `vigil-agent` binaries on loopback with
//! their own temporary data dirs, and talks to them as a user would (CLI, HTTP, QUIC).
//!
//! Every process started here is killed when its handle drops, so a failing test leaves nothing
//! running. Every wait is bounded.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

pub use vigil_runtime::clock::now_ms;

/// Path of a workspace binary. `cargo test --workspace` builds them next to the test binary's
/// `deps/` folder; run `cargo build --bins` first when testing this package alone.
/// `VIGIL_E2E_BIN_DIR` points the tests at other binaries (e.g. an older build, to show that a
/// new test fails on it).
pub fn bin(name: &str) -> PathBuf {
    let dir = match std::env::var_os("VIGIL_E2E_BIN_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => {
            let exe = std::env::current_exe().expect("current_exe");
            exe.parent()
                .and_then(Path::parent)
                .expect("target dir")
                .to_path_buf()
        }
    };
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} not built: run `cargo build --bins` (or `cargo test --workspace`)",
        path.display()
    );
    path
}

/// A child process that is killed (SIGKILL) when dropped; its stderr goes to a log file.
pub struct Proc {
    pub name: String,
    pub child: Child,
    pub log: PathBuf,
}

impl Proc {
    pub fn spawn(name: &str, mut cmd: Command, log: PathBuf) -> Proc {
        let file = std::fs::File::create(&log).expect("log file");
        cmd.stderr(file).stdin(Stdio::null());
        if !cmd.get_envs().any(|(k, _)| k == "VIGIL_LOG") {
            // The agent's discovery passes are logged at debug: tests count them
            // ([`discovery_passes`]) to know that discovery ran and found nothing new.
            cmd.env(
                "VIGIL_LOG",
                "info,quinn=warn,vigil_agent::inventory_sync=debug",
            );
        }
        if cmd.get_program().to_string_lossy().is_empty() {
            panic!("no program");
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Proc {
            name: name.to_string(),
            child,
            log,
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends signal `sig` (e.g. `libc::SIGINT`) to the process.
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) with a pid we own; no memory is touched.
        #[allow(unsafe_code)]
        unsafe {
            libc::kill(self.pid(), sig);
        }
    }

    /// SIGTERM, then wait up to `timeout` for a clean exit (SIGKILL after that).
    pub fn terminate(&mut self, timeout: Duration) -> ExitStatus {
        self.signal(libc::SIGTERM);
        self.wait_for(timeout).unwrap_or_else(|| {
            self.kill();
            panic!(
                "{} did not exit within {timeout:?} of SIGTERM; log:\n{}",
                self.name,
                self.logs()
            )
        })
    }

    /// SIGKILL: no chance to flush anything.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn wait_for(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A running collector started from a config file in its data dir.
pub struct Collector {
    pub proc: Proc,
    pub data_dir: PathBuf,
    pub quic: SocketAddr,
    pub http: SocketAddr,
}

/// Writes a collector config for `data_dir` listening on the given addresses (port 0 = any).
pub fn collector_config(
    data_dir: &Path,
    quic: SocketAddr,
    http: SocketAddr,
    extra: &str,
) -> PathBuf {
    collector_config_quic(data_dir, quic, http, "", extra)
}

/// [`collector_config`] with `quic_extra` in the `[quic]` table.
pub fn collector_config_quic(
    data_dir: &Path,
    quic: SocketAddr,
    http: SocketAddr,
    quic_extra: &str,
    extra: &str,
) -> PathBuf {
    std::fs::create_dir_all(data_dir).expect("data dir");
    let path = data_dir.join("collector.toml");
    let text = format!(
        "data_dir = {:?}\n[quic]\nlisten = \"{quic}\"\n{quic_extra}\n[http]\nlisten = \"{http}\"\n{extra}\n",
        data_dir.display().to_string()
    );
    std::fs::write(&path, text).expect("write config");
    path
}

/// Starts `vigil-collector serve` on loopback ports chosen by the OS.
pub fn spawn_collector(data_dir: &Path) -> Collector {
    spawn_collector_at(
        data_dir,
        "127.0.0.1:0".parse().expect("addr"),
        "127.0.0.1:0".parse().expect("addr"),
    )
}

/// Starts `vigil-collector serve` on the given addresses (to restart on the same ports).
pub fn spawn_collector_at(data_dir: &Path, quic: SocketAddr, http: SocketAddr) -> Collector {
    spawn_collector_with(data_dir, quic, http, "")
}

/// Starts `vigil-collector serve` with `extra` appended to its config file.
pub fn spawn_collector_with(
    data_dir: &Path,
    quic: SocketAddr,
    http: SocketAddr,
    extra: &str,
) -> Collector {
    spawn_collector_env(data_dir, quic, http, extra, &[])
}

/// [`spawn_collector_with`], with environment variables for the collector (e.g.
/// `VIGIL_FAILPOINTS`).
pub fn spawn_collector_env(
    data_dir: &Path,
    quic: SocketAddr,
    http: SocketAddr,
    extra: &str,
    env: &[(&str, &str)],
) -> Collector {
    let config = collector_config(data_dir, quic, http, extra);
    spawn_collector_config_env(data_dir, &config, env)
}

/// Starts `vigil-collector serve` on loopback ports chosen by the OS, with `quic_extra` in its
/// `[quic]` table and `extra` after `[http] listen`.
pub fn spawn_collector_quic(data_dir: &Path, quic_extra: &str, extra: &str) -> Collector {
    let any: SocketAddr = "127.0.0.1:0".parse().expect("addr");
    let config = collector_config_quic(data_dir, any, any, quic_extra, extra);
    spawn_collector_config_env(data_dir, &config, &[])
}

/// Starts `vigil-collector serve --config CONFIG`, its store in `data_dir`.
pub fn spawn_collector_config_env(
    data_dir: &Path,
    config: &Path,
    env: &[(&str, &str)],
) -> Collector {
    let mut cmd = Command::new(bin("vigil-collector"));
    cmd.arg("serve")
        .arg("--config")
        .arg(config)
        .envs(env.iter().copied())
        .stdout(Stdio::piped());
    let log = data_dir.join(format!("collector-{}.log", unique()));
    let mut proc = Proc::spawn("vigil-collector", cmd, log);
    let stdout = proc.child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        if let Some(Ok(line)) = lines.next() {
            let _ = tx.send(line);
        }
        for _ in lines {}
    });
    let line = rx
        .recv_timeout(Duration::from_secs(30))
        .unwrap_or_else(|_| panic!("collector did not start; log:\n{}", proc.logs()));
    // "vigil-collector listening: QUIC 127.0.0.1:4433, HTTP http://127.0.0.1:8080/" (https://
    // with `[http] tls_cert`)
    let quic = line
        .split("QUIC ")
        .nth(1)
        .and_then(|s| s.split(',').next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("unexpected start line {line:?}"));
    let http = line
        .split("://")
        .nth(1)
        .and_then(|s| s.trim_end_matches('/').parse().ok())
        .unwrap_or_else(|| panic!("unexpected start line {line:?}"));
    Collector {
        proc,
        data_dir: data_dir.to_path_buf(),
        quic,
        http,
    }
}

fn unique() -> u128 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    u128::from(std::process::id()) << 32 | u128::from(NEXT.fetch_add(1, Ordering::Relaxed))
}

/// Sets up a collector's data dir (store and CA) without leaving a collector running: starts
/// one there and stops it. Admin commands refuse a directory no collector has set up.
pub fn init_collector_dir(data_dir: &Path) {
    let mut c = spawn_collector(data_dir);
    let status = c.proc.terminate(Duration::from_secs(20));
    assert!(status.success(), "collector stopped uncleanly: {status}");
}

/// Runs `vigil-collector <args> --data-dir DIR` and returns its output.
pub fn admin(data_dir: &Path, args: &[&str]) -> Output {
    Command::new(bin("vigil-collector"))
        .args(args)
        .arg("--data-dir")
        .arg(data_dir)
        .env("VIGIL_LOG", "warn")
        .output()
        .expect("run vigil-collector")
}

fn stdout_line(out: Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A fresh enrollment token (`extra` e.g. `["--ttl", "1s"]`).
pub fn enroll_token(data_dir: &Path, extra: &[&str]) -> String {
    let mut args = vec!["token", "create"];
    args.extend_from_slice(extra);
    stdout_line(admin(data_dir, &args), "token create")
}

/// A fresh API token with `role`.
pub fn api_token(data_dir: &Path, role: &str) -> String {
    stdout_line(
        admin(
            data_dir,
            &["api-token", "create", "--role", role, "--name", "e2e"],
        ),
        "api-token create",
    )
}

/// Starts `vigil-agent run` with flags.
pub fn spawn_agent(
    collector: SocketAddr,
    token: Option<&str>,
    data_dir: &Path,
    interval: &str,
) -> Proc {
    spawn_agent_with(collector, token, data_dir, interval, &[])
}

/// Runs `cmd` to completion within `timeout` (killed and failed otherwise); returns its exit
/// status, stdout and stderr.
pub fn run_bounded(
    mut cmd: Command,
    dir: &Path,
    timeout: Duration,
) -> (ExitStatus, String, String) {
    let out_path = dir.join(format!("out-{}", std::process::id()));
    let err_path = dir.join(format!("err-{}", std::process::id()));
    cmd.stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path).expect("stdout file"))
        .stderr(std::fs::File::create(&err_path).expect("stderr file"))
        .env("VIGIL_LOG", "warn");
    let mut child = cmd.spawn().expect("spawn");
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{cmd:?} still running after {timeout:?}; stderr:\n{}",
                std::fs::read_to_string(&err_path).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
    (status, read(&out_path), read(&err_path))
}

/// Starts a program that must be told its listening port (one that cannot take port 0 and say
/// which port it got): picks a free port, starts `make(port)`, and waits until `ready(port)`.
/// A port taken between the pick and the program's bind makes the program exit; it is then
/// started again on another port (at most 5 tries), so a race with another test never fails a
/// test.
pub fn spawn_on_free_port(
    name: &str,
    log: &Path,
    make: impl Fn(u16) -> Command,
    ready: impl Fn(u16) -> bool,
) -> (Proc, u16) {
    for attempt in 1..=5 {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("free port");
        let mut proc = Proc::spawn(name, make(port), log.to_path_buf());
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if ready(port) {
                return (proc, port);
            }
            if !proc.is_running() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{name} not ready within 30 s; log:\n{}",
                proc.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        assert!(attempt < 5, "{name} exited 5 times; log:\n{}", proc.logs());
    }
    unreachable!("the loop returns or fails")
}

/// How many discovery passes an agent has logged so far.
pub fn discovery_passes(agent: &Proc) -> usize {
    agent.logs().matches("discovery pass done").count()
}

/// Waits until `agent` ran `n` more discovery passes than `since` (a [`discovery_passes`]
/// count): the positive signal that lets a test say "discovery ran and nothing followed".
pub fn wait_discovery_passes(agent: &mut Proc, since: usize, n: usize) {
    wait_until(Duration::from_secs(60), "discovery passes", || {
        assert!(agent.is_running(), "agent exited; log:\n{}", agent.logs());
        (discovery_passes(agent) >= since + n).then_some(())
    });
}

/// Polls `f` every 100 ms until it returns `Some`, for at most `timeout`.
pub fn wait_until<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A reqwest client builder. The workspace builds reqwest without a crypto provider (the
/// collector brings rustls with ring only), so the ring provider is installed first.
pub fn http_client_builder() -> reqwest::ClientBuilder {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
}

/// A blocking HTTP request (the tests are synchronous; the runtime lives here): the status
/// (0 when the request failed) and the body text. `body` is sent as JSON.
pub fn http(method: &str, url: &str, bearer: Option<&str>, body: Option<&str>) -> (u16, String) {
    let auth = bearer.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("authorization", a.as_str())).collect();
    let (status, _, body) = http_with(method, url, &headers, body);
    (status, body)
}

/// [`http`] with any request headers: the status, the response's `Set-Cookie` values and the
/// body text.
pub fn http_with(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> (u16, Vec<String>, String) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let client = http_client_builder()
            .timeout(Duration::from_secs(10))
            .build()
            .expect("client");
        let mut req = client.request(method.parse().expect("method"), url);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        if let Some(b) = body {
            req = req
                .header("content-type", "application/json")
                .body(b.to_string());
        }
        match req.send().await {
            Ok(resp) => {
                let status = resp.status().as_u16();
                let cookies = resp
                    .headers()
                    .get_all("set-cookie")
                    .iter()
                    .filter_map(|v| v.to_str().ok().map(str::to_owned))
                    .collect();
                (status, cookies, resp.text().await.unwrap_or_default())
            }
            Err(e) => (0, Vec::new(), e.to_string()),
        }
    })
}

/// A blocking HTTP GET.
pub fn http_get(url: &str, bearer: Option<&str>) -> (u16, String) {
    http("GET", url, bearer, None)
}

/// An authenticated request with an optional JSON (or raw) body: the status and the JSON
/// answer (`Null` when the body is not JSON).
pub fn http_json(
    method: &str,
    url: &str,
    bearer: &str,
    body: Option<&str>,
) -> (u16, serde_json::Value) {
    let (status, text) = http(method, url, Some(bearer), body);
    (status, serde_json::from_str(&text).unwrap_or_default())
}

/// `POST /api/v1{path}` with a JSON body: the status and the JSON answer.
pub fn api_post(
    c: &Collector,
    token: &str,
    path: &str,
    body: &serde_json::Value,
) -> (u16, serde_json::Value) {
    http_json(
        "POST",
        &format!("http://{}/api/v1{path}", c.http),
        token,
        Some(&body.to_string()),
    )
}

/// `GET /api/v1{path}`, which must answer 200 with JSON.
pub fn api_get(c: &Collector, token: &str, path: &str) -> serde_json::Value {
    let (status, body) = http_get(&format!("http://{}/api/v1{path}", c.http), Some(token));
    assert_eq!(status, 200, "GET {path}: {body}");
    serde_json::from_str(&body).expect("JSON")
}

/// The incidents `GET /api/v1/incidents?{query}` lists, newest first.
pub fn incidents(c: &Collector, token: &str, query: &str) -> Vec<serde_json::Value> {
    api_get(c, token, &format!("/incidents?{query}"))["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// The kinds of an incident's timeline entries (`opened`, `suppressed`, ...), oldest first.
pub fn timeline_kinds(incident: &serde_json::Value) -> Vec<&str> {
    incident["timeline"]
        .as_array()
        .expect("timeline")
        .iter()
        .filter_map(|e| e["kind"].as_str())
        .collect()
}

/// The first incident of `GET /api/v1/incidents?{query}` for which `pred` holds, waiting up to
/// a minute for it.
pub fn wait_incident(
    c: &Collector,
    token: &str,
    query: &str,
    what: &str,
    pred: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    wait_until(Duration::from_secs(60), what, || {
        incidents(c, token, query).into_iter().find(|i| pred(i))
    })
}

pub fn metrics(c: &Collector) -> String {
    let (status, body) = http_get(&format!("http://{}/metrics", c.http), None);
    assert_eq!(status, 200, "/metrics: {body}");
    body
}

/// The value of the first exposition line starting with `series` (name plus labels).
pub fn metric_value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| {
            l.starts_with(series) && l[series.len()..].starts_with([' ', '{'])
                || l.starts_with(&format!("{series} "))
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Runs `promtool check metrics` on `text`; returns its combined output on failure.
pub fn promtool_check(text: &str) -> Result<(), String> {
    use std::io::Write;
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            format!("promtool not runnable ({e}); install the Debian package prometheus")
        })?;
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .map_err(|e| e.to_string())?;
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() && all.trim().is_empty() {
        Ok(())
    } else {
        Err(all)
    }
}

/// Opens the collector's SQLite file read-only (WAL lets us read while it runs).
pub fn open_store(data_dir: &Path) -> rusqlite::Connection {
    let conn = rusqlite::Connection::open_with_flags(
        data_dir.join("vigil.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .expect("open store");
    conn.busy_timeout(Duration::from_secs(5))
        .expect("busy timeout");
    conn
}

/// The agent id an enrolled agent saved in its data dir.
pub fn agent_id(agent_dir: &Path) -> Option<String> {
    std::fs::read_to_string(agent_dir.join("agent-id"))
        .ok()
        .map(|s| s.trim().to_string())
}

/// A fixture tree of this package (`tests/fixtures/<name>`), e.g. a filesystem root for discovery.
pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name)
}

/// Copies the tree `src` into `dst` (created), symlinks as symlinks (a fixture's
/// `/proc/<pid>/fd/N -> socket:[INODE]` links point nowhere and must stay links).
pub fn copy_tree(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).expect("create copy dir");
    for entry in std::fs::read_dir(src).expect("read fixture dir") {
        let entry = entry.expect("dir entry");
        let (from, to) = (entry.path(), dst.join(entry.file_name()));
        let kind = entry.file_type().expect("file type");
        if kind.is_symlink() {
            let target = std::fs::read_link(&from).expect("read link");
            std::os::unix::fs::symlink(target, &to).expect("copy symlink");
        } else if kind.is_dir() {
            copy_tree(&from, &to);
        } else {
            std::fs::copy(&from, &to).expect("copy file");
        }
    }
}

/// Starts `vigil-agent run` with the flags of [`spawn_agent`] plus `extra` (e.g.
/// `["--root", DIR, "--discovery-interval", "1s"]`).
pub fn spawn_agent_with(
    collector: SocketAddr,
    token: Option<&str>,
    data_dir: &Path,
    interval: &str,
    extra: &[&str],
) -> Proc {
    std::fs::create_dir_all(data_dir).expect("agent dir");
    let mut cmd = Command::new(bin("vigil-agent"));
    cmd.arg("run")
        .arg("--collector")
        .arg(collector.to_string())
        .arg("--data-dir")
        .arg(data_dir)
        .arg("--interval")
        .arg(interval)
        .args(extra)
        .stdout(Stdio::null());
    if let Some(t) = token {
        cmd.arg("--token").arg(t);
    }
    Proc::spawn(
        "vigil-agent",
        cmd,
        data_dir.join(format!("agent-{}.log", unique())),
    )
}

/// Starts `vigil-agent run --config FILE`; its log goes to `log_dir`.
pub fn spawn_agent_config(config: &Path, log_dir: &Path) -> Proc {
    std::fs::create_dir_all(log_dir).expect("log dir");
    let mut cmd = Command::new(bin("vigil-agent"));
    cmd.arg("run")
        .arg("--config")
        .arg(config)
        .stdout(Stdio::null());
    Proc::spawn(
        "vigil-agent",
        cmd,
        log_dir.join(format!("agent-{}.log", unique())),
    )
}

/// `vigil-agent inventory --json <args>`: what the agent would report, as JSON.
pub fn agent_inventory(args: &[&str]) -> serde_json::Value {
    let out = Command::new(bin("vigil-agent"))
        .arg("inventory")
        .arg("--json")
        .args(args)
        .env("VIGIL_LOG", "warn")
        .output()
        .expect("run vigil-agent inventory");
    assert!(
        out.status.success(),
        "vigil-agent inventory failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("inventory JSON")
}

/// Opens the collector's SQLite file read-write (a second writer next to the running collector,
/// which WAL and the busy timeout allow), e.g. to make the stored state disagree with an agent.
pub fn open_store_rw(data_dir: &Path) -> rusqlite::Connection {
    let conn = rusqlite::Connection::open_with_flags(
        data_dir.join("vigil.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE,
    )
    .expect("open store read-write");
    conn.busy_timeout(Duration::from_secs(5))
        .expect("busy timeout");
    conn
}
