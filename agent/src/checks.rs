//! Local health checks (`[[check]]` in agent.toml): TCP connect, plain-HTTP GET and "is a
//! process with this name running", turned into `check_up` (1/0) and `check_latency_seconds`
//! samples labelled `check=<name>`.
//!
//! A check never returns an error and never panics: whatever goes wrong (bad target, refused
//! connection, timeout, unreadable /proc) is `check_up = 0` plus a `debug!` line with the reason.
//! Every check is bounded by its own timeout, including name resolution. This module never
//! leaves a task running past [`run_checks`] (the one exception: a /proc scan cut off by its
//! timeout finishes on the blocking pool by itself), never reads an HTTP body, and never buffers
//! more than 64 KiB of an HTTP response head.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Instant;

use bytes::Bytes;
use http_body_util::Empty;
use hyper::header::{HeaderValue, HOST, USER_AGENT};
use hyper::{Method, Request, Uri};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use vigil_shared::metric_names::{CHECK_LATENCY_SECONDS, CHECK_UP};
use vigil_shared::proto::Sample;

use crate::config::{CheckKind, CheckSpec};

/// Cap on what hyper buffers of an HTTP response head (status line and headers).
const MAX_HTTP_HEAD: usize = 64 * 1024;

/// Kernel limit on `/proc/<pid>/comm` (TASK_COMM_LEN - 1): longer names are truncated.
const COMM_MAX: usize = 15;

/// `User-Agent` of HTTP checks.
const AGENT: &str = concat!("vigil-agent/", env!("CARGO_PKG_VERSION"));

/// Why a check is down (only logged, at debug level).
type Reason = String;

/// Runs one check within its timeout and returns its `check_up` and `check_latency_seconds`
/// samples stamped `now_ms`. The latency is the time to the verdict: to the connection, to the
/// response head, or to the failure (about the timeout when it timed out).
pub async fn run_check(spec: &CheckSpec, now_ms: i64) -> Vec<Sample> {
    let started = Instant::now();
    let verdict = match tokio::time::timeout(spec.timeout, probe(&spec.kind)).await {
        Ok(verdict) => verdict,
        Err(_) => Err(format!("timed out after {:?}", spec.timeout)),
    };
    let latency = started.elapsed().as_secs_f64();
    let up = match verdict {
        Ok(()) => 1.0,
        Err(reason) => {
            tracing::debug!(check = %spec.name, %reason, "check down");
            0.0
        }
    };
    results(&spec.name, now_ms, up, latency)
}

/// Runs every check concurrently (each bounded by its own timeout) and returns their samples
/// in the order of `specs`.
pub async fn run_checks(specs: &[CheckSpec], now_ms: i64) -> Vec<Sample> {
    let mut set = JoinSet::new();
    for (index, spec) in specs.iter().enumerate() {
        let spec = spec.clone();
        set.spawn(async move { (index, run_check(&spec, now_ms).await) });
    }
    let mut done: Vec<Option<Vec<Sample>>> = vec![None; specs.len()];
    while let Some(joined) = set.join_next().await {
        match joined {
            Ok((index, samples)) => {
                if let Some(slot) = done.get_mut(index) {
                    *slot = Some(samples);
                }
            }
            Err(e) => tracing::warn!(error = %e, "check task failed"),
        }
    }
    specs
        .iter()
        .zip(done)
        .flat_map(|(spec, samples)| {
            samples.unwrap_or_else(|| results(&spec.name, now_ms, 0.0, 0.0))
        })
        .collect()
}

fn results(name: &str, now_ms: i64, up: f64, latency: f64) -> Vec<Sample> {
    let sample = |metric: &str, value: f64| Sample {
        ts_ms: now_ms,
        name: metric.to_owned(),
        labels: vec![("check".to_owned(), name.to_owned())],
        value,
    };
    vec![sample(CHECK_UP, up), sample(CHECK_LATENCY_SECONDS, latency)]
}

/// Ok when the check passes, otherwise the reason. Unbounded: the caller adds the timeout.
async fn probe(kind: &CheckKind) -> Result<(), Reason> {
    match kind {
        CheckKind::Tcp { target } => connect(target).await.map(drop),
        CheckKind::Http { url, expect_status } => {
            let status = http_get_status(url).await?;
            if status == *expect_status {
                Ok(())
            } else {
                Err(format!("status {status}, expected {expect_status}"))
            }
        }
        CheckKind::Process { name } => {
            let name = name.clone();
            // A /proc scan is blocking file I/O: keep it off the async workers.
            let scan =
                tokio::task::spawn_blocking(move || process_running(Path::new("/proc"), &name));
            match scan
                .await
                .map_err(|e| format!("process scan failed: {e}"))?
            {
                Ok(true) => Ok(()),
                Ok(false) => Err("no such process".to_owned()),
                Err(e) => Err(format!("cannot list processes: {e}")),
            }
        }
    }
}

/// Resolves `host:port` and connects to the first address that accepts.
async fn connect(target: &str) -> Result<TcpStream, Reason> {
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host(target)
        .await
        .map_err(|e| format!("cannot resolve {target:?}: {e}"))?
        .collect();
    let mut last = format!("{target:?} resolves to no address");
    for addr in addrs {
        match TcpStream::connect(addr).await {
            Ok(stream) => return Ok(stream),
            Err(e) => last = format!("connect {addr}: {e}"),
        }
    }
    Err(last)
}

/// The parts of an `http://` URL an HTTP/1.1 GET needs.
#[derive(Debug, PartialEq, Eq)]
struct HttpTarget {
    /// `host:port` to resolve and connect to.
    connect: String,
    /// `Host` header value: the host, plus the port when the URL names one.
    host_header: String,
    /// Request target: path and query, `/` when the URL has none.
    path: String,
}

fn parse_http_url(url: &str) -> Result<HttpTarget, Reason> {
    let uri: Uri = url
        .parse()
        .map_err(|e| format!("invalid URL {url:?}: {e}"))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => return Err("https not supported yet".to_owned()),
        _ => return Err(format!("invalid URL {url:?}: not http://")),
    }
    let authority = uri
        .authority()
        .ok_or_else(|| format!("invalid URL {url:?}: no host"))?;
    let host = authority.host();
    if host.is_empty() {
        return Err(format!("invalid URL {url:?}: no host"));
    }
    let port = authority.port_u16();
    Ok(HttpTarget {
        connect: format!("{host}:{}", port.unwrap_or(80)),
        host_header: match port {
            Some(port) => format!("{host}:{port}"),
            None => host.to_owned(),
        },
        path: uri
            .path_and_query()
            .map(|p| p.as_str())
            .filter(|p| !p.is_empty())
            .unwrap_or("/")
            .to_owned(),
    })
}

/// GETs `url` over HTTP/1.1 and returns the response status. The body is not read: the
/// connection is dropped once the head has arrived.
async fn http_get_status(url: &str) -> Result<u16, Reason> {
    let target = parse_http_url(url)?;
    let stream = connect(&target.connect).await?;
    let (mut sender, conn) = hyper::client::conn::http1::Builder::new()
        .max_buf_size(MAX_HTTP_HEAD)
        .handshake::<_, Empty<Bytes>>(TokioIo::new(stream))
        .await
        .map_err(|e| format!("HTTP handshake: {e}"))?;
    let host = HeaderValue::from_str(&target.host_header)
        .map_err(|e| format!("invalid Host header {:?}: {e}", target.host_header))?;
    let request = Request::builder()
        .method(Method::GET)
        .uri(&target.path)
        .header(HOST, host)
        .header(USER_AGENT, AGENT)
        .body(Empty::new())
        .map_err(|e| format!("cannot build request: {e}"))?;
    // The connection future drives the socket; it runs only while we wait for the response.
    // It may finish (server closed after answering) in the same poll that delivered the
    // response, so when it ends first the response is still collected from the request future.
    let response = sender.send_request(request);
    tokio::pin!(conn, response);
    let response = tokio::select! {
        response = &mut response => response,
        closed = &mut conn => match (response.await, closed) {
            (Ok(response), _) => Ok(response),
            (Err(_), Err(e)) => return Err(format!("HTTP connection: {e}")),
            (Err(e), Ok(())) => Err(e),
        },
    };
    response
        .map(|r| r.status().as_u16())
        .map_err(|e| format!("HTTP request: {e}"))
}

/// Whether a process named `name` runs, according to the procfs mounted at `proc_root`: its
/// `comm` equals `name`, or, for names longer than the kernel's 15-byte `comm`, the truncated
/// `comm` matches and the basename of the first `cmdline` argument equals `name`.
/// Processes that vanish or cannot be read during the scan are skipped.
fn process_running(proc_root: &Path, name: &str) -> std::io::Result<bool> {
    let truncated = truncate_comm(name);
    for entry in std::fs::read_dir(proc_root)? {
        let Ok(entry) = entry else { continue };
        let file_name = entry.file_name();
        let is_pid = file_name
            .to_str()
            .is_some_and(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()));
        if !is_pid {
            continue;
        }
        let dir = entry.path();
        let Ok(comm) = std::fs::read(dir.join("comm")) else {
            continue;
        };
        let comm = comm.strip_suffix(b"\n").unwrap_or(&comm);
        if comm == name.as_bytes() {
            return Ok(true);
        }
        if truncated.len() < name.len() && comm == truncated {
            let Ok(cmdline) = std::fs::read(dir.join("cmdline")) else {
                continue;
            };
            if argv0_basename(&cmdline) == name.as_bytes() {
                return Ok(true);
            }
        }
    }
    Ok(false)
}

/// What the kernel keeps of `name` in `comm`: its first 15 bytes.
fn truncate_comm(name: &str) -> &[u8] {
    let bytes = name.as_bytes();
    &bytes[..bytes.len().min(COMM_MAX)]
}

/// Basename of the first NUL-terminated argument of a `/proc/<pid>/cmdline`.
fn argv0_basename(cmdline: &[u8]) -> &[u8] {
    let argv0 = cmdline.split(|&b| b == 0).next().unwrap_or_default();
    argv0.rsplit(|&b| b == b'/').next().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    fn spec(name: &str, kind: CheckKind) -> CheckSpec {
        CheckSpec {
            name: name.to_owned(),
            kind,
            timeout: Duration::from_secs(2),
        }
    }

    fn tcp(target: &str) -> CheckKind {
        CheckKind::Tcp {
            target: target.to_owned(),
        }
    }

    fn http(url: &str, expect_status: u16) -> CheckKind {
        CheckKind::Http {
            url: url.to_owned(),
            expect_status,
        }
    }

    /// Runs `kind` and returns (up, latency), checking the shape of the samples on the way.
    async fn run(kind: CheckKind) -> (f64, f64) {
        let samples = run_check(&spec("c1", kind), 1234).await;
        assert_eq!(samples.len(), 2, "{samples:?}");
        for s in &samples {
            assert_eq!(s.ts_ms, 1234);
            assert_eq!(s.labels, [("check".to_owned(), "c1".to_owned())]);
        }
        assert_eq!(samples[0].name, CHECK_UP);
        assert_eq!(samples[1].name, CHECK_LATENCY_SECONDS);
        let (up, latency) = (samples[0].value, samples[1].value);
        assert!(up == 0.0 || up == 1.0, "up {up}");
        assert!(latency.is_finite() && latency >= 0.0, "latency {latency}");
        (up, latency)
    }

    #[tokio::test]
    async fn tcp_check_follows_the_listener() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        assert_eq!(run(tcp(&addr.to_string())).await.0, 1.0);
        assert_eq!(run(tcp(&format!("localhost:{}", addr.port()))).await.0, 1.0);
        drop(listener);
        assert_eq!(run(tcp(&addr.to_string())).await.0, 0.0);
    }

    #[tokio::test]
    async fn bad_tcp_targets_are_down_not_errors() {
        for target in [
            "",
            "no-port",
            "127.0.0.1:notaport",
            "127.0.0.1:99999",
            "[::1",
            ":80",
        ] {
            assert_eq!(run(tcp(target)).await.0, 0.0, "{target:?}");
        }
    }

    /// A one-connection-at-a-time HTTP server on 127.0.0.1 answering every request with
    /// `response`; returns its address and a receiver of the request heads it got.
    async fn http_server(
        response: &'static str,
    ) -> (SocketAddr, tokio::sync::mpsc::UnboundedReceiver<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match sock.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = tx.send(String::from_utf8_lossy(&head).into_owned());
                if !response.is_empty() {
                    let _ = sock.write_all(response.as_bytes()).await;
                    let _ = sock.shutdown().await;
                } else {
                    // Never answer: hold the socket until the client gives up.
                    let _ = sock.read(&mut buf).await;
                }
            }
        });
        (addr, rx)
    }

    #[tokio::test]
    async fn http_check_compares_the_status() {
        let (addr, mut heads) = http_server("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").await;
        let url = format!("http://{addr}/health?x=1");
        assert_eq!(run(http(&url, 200)).await.0, 1.0);
        let head = heads
            .recv()
            .await
            .expect("request head")
            .to_ascii_lowercase();
        assert!(head.starts_with("get /health?x=1 http/1.1\r\n"), "{head}");
        assert!(head.contains(&format!("\r\nhost: {addr}\r\n")), "{head}");
        // Same server, other expectation: down.
        assert_eq!(run(http(&url, 204)).await.0, 0.0);
        // No path: "/".
        assert_eq!(run(http(&format!("http://{addr}"), 200)).await.0, 1.0);
        let _ = heads.recv().await;
        let head = heads
            .recv()
            .await
            .expect("request head")
            .to_ascii_lowercase();
        assert!(head.starts_with("get / http/1.1\r\n"), "{head}");
    }

    #[tokio::test]
    async fn http_check_is_down_on_bad_answers() {
        let (garbage, _h1) = http_server("SSH-2.0-OpenSSH_9.6\r\n\r\n").await;
        assert_eq!(run(http(&format!("http://{garbage}/"), 200)).await.0, 0.0);
        let (closed, _h2) = http_server("\r\n").await;
        assert_eq!(run(http(&format!("http://{closed}/"), 200)).await.0, 0.0);
        // A server that never answers: down at the timeout, not later.
        let (silent, _h3) = http_server("").await;
        let mut slow = spec("c1", http(&format!("http://{silent}/"), 200));
        slow.timeout = Duration::from_millis(300);
        let started = Instant::now();
        let samples = run_check(&slow, 0).await;
        assert_eq!(samples[0].value, 0.0);
        assert!(samples[1].value >= 0.29, "latency {}", samples[1].value);
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
        // Nothing listening.
        let port = TcpListener::bind("127.0.0.1:0")
            .await
            .and_then(|l| l.local_addr())
            .expect("port")
            .port();
        assert_eq!(
            run(http(&format!("http://127.0.0.1:{port}/"), 200)).await.0,
            0.0
        );
    }

    #[tokio::test]
    async fn unsupported_or_malformed_urls_are_down() {
        for url in [
            "https://127.0.0.1:1/",
            "ftp://127.0.0.1/",
            "127.0.0.1:80",
            "http://",
            "http://user@/",
            "http:// spaces /",
            "",
        ] {
            assert_eq!(run(http(url, 200)).await.0, 0.0, "{url:?}");
        }
    }

    #[test]
    fn http_url_parts() {
        #[track_caller]
        fn check(url: &str, expected: Result<(&str, &str, &str), &str>) {
            let got = parse_http_url(url);
            match expected {
                Ok((connect, host, path)) => assert_eq!(
                    got,
                    Ok(HttpTarget {
                        connect: connect.to_owned(),
                        host_header: host.to_owned(),
                        path: path.to_owned(),
                    }),
                    "{url}"
                ),
                Err(fragment) => {
                    let err = got.expect_err(url);
                    assert!(err.contains(fragment), "{url}: {err}");
                }
            }
        }
        check(
            "http://example.org",
            Ok(("example.org:80", "example.org", "/")),
        );
        check(
            "http://example.org:8080/a/b?c=d",
            Ok(("example.org:8080", "example.org:8080", "/a/b?c=d")),
        );
        check(
            "http://user:pw@example.org/x",
            Ok(("example.org:80", "example.org", "/x")),
        );
        check("http://[::1]:9000/", Ok(("[::1]:9000", "[::1]:9000", "/")));
        check("https://example.org/", Err("https not supported yet"));
        check("ftp://example.org/", Err("not http://"));
        check("example.org/x", Err("invalid URL"));
        check("", Err("invalid URL"));
    }

    /// One fake /proc entry: (directory name, comm, cmdline); `None` leaves the file out.
    type FakeProcess<'a> = (&'a str, Option<&'a str>, Option<&'a [u8]>);

    fn fake_proc(entries: &[FakeProcess<'_>]) -> tempfile::TempDir {
        let root = tempfile::tempdir().expect("tempdir");
        for (dir, comm, cmdline) in entries {
            let dir = root.path().join(dir);
            std::fs::create_dir_all(&dir).expect("mkdir");
            if let Some(comm) = comm {
                std::fs::write(dir.join("comm"), format!("{comm}\n")).expect("comm");
            }
            if let Some(cmdline) = cmdline {
                std::fs::write(dir.join("cmdline"), cmdline).expect("cmdline");
            }
        }
        std::fs::write(root.path().join("uptime"), "1.0 1.0\n").expect("file");
        root
    }

    #[test]
    fn process_lookup_in_a_fixture_proc() {
        let proc_root = fake_proc(&[
            ("1", Some("systemd"), Some(b"/sbin/init\0splash\0")),
            ("42", Some("nginx"), Some(b"nginx: master process\0")),
            // 24-byte name: comm holds the first 15 bytes.
            (
                "77",
                Some("a-very-long-pro"),
                Some(b"/opt/x/a-very-long-process-name\0--flag\0"),
            ),
            (
                "78",
                Some("another-long-na"),
                Some(b"/usr/bin/another-long-name-x"),
            ),
            ("99", None, None),            // vanished while scanning
            ("self", Some("ghost"), None), // not a pid
            ("1x", Some("ghost2"), None),  // not a pid
        ]);
        #[track_caller]
        fn check(root: &Path, name: &str, expected: bool) {
            assert_eq!(
                process_running(root, name).expect("scan"),
                expected,
                "{name}"
            );
        }
        let root = proc_root.path();
        check(root, "nginx", true);
        check(root, "systemd", true);
        check(root, "ngin", false);
        check(root, "nginx:", false);
        check(root, "init", false); // comm is what counts for short names
        check(root, "a-very-long-process-name", true);
        check(root, "a-very-long-pro", true);
        check(root, "a-very-long-process-other", false);
        check(root, "another-long-name-x", true); // cmdline without trailing NUL
        check(root, "ghost", false);
        check(root, "ghost2", false);
        check(root, "", false);
        assert!(process_running(&root.join("missing"), "nginx").is_err());
    }

    #[test]
    fn cmdline_basename() {
        #[track_caller]
        fn check(cmdline: &[u8], expected: &[u8]) {
            assert_eq!(argv0_basename(cmdline), expected);
        }
        check(b"/usr/bin/python3\0-m\0http.server\0", b"python3");
        check(b"nginx\0", b"nginx");
        check(b"relative/dir/tool", b"tool");
        check(b"", b"");
        check(b"\0\0", b"");
        check(b"/trailing/\0", b"");
    }

    #[tokio::test]
    async fn process_check_on_this_host() {
        let comm = std::fs::read_to_string("/proc/self/comm").expect("comm");
        let comm = comm.trim_end_matches('\n');
        let process = |name: &str| CheckKind::Process {
            name: name.to_owned(),
        };
        assert_eq!(run(process(comm)).await.0, 1.0, "{comm}");
        // The test binary's name is longer than 15 bytes: found through its cmdline.
        let exe = std::env::current_exe().expect("exe");
        let exe_name = exe.file_name().and_then(|n| n.to_str()).expect("name");
        assert_eq!(run(process(exe_name)).await.0, 1.0, "{exe_name}");
        assert_eq!(run(process("surely-not-running-4242")).await.0, 0.0);
    }

    #[tokio::test]
    async fn run_checks_runs_all_concurrently_in_order() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (silent, _heads) = http_server("").await;
        let mut specs = vec![
            spec("slow", http(&format!("http://{silent}/"), 200)),
            spec("tcp", tcp(&addr.to_string())),
            spec(
                "proc",
                CheckKind::Process {
                    name: "surely-not-running-4242".to_owned(),
                },
            ),
        ];
        specs[0].timeout = Duration::from_millis(500);
        let slow2 = CheckSpec {
            name: "slow2".to_owned(),
            ..specs[0].clone()
        };
        specs.push(slow2);
        let started = Instant::now();
        let samples = run_checks(&specs, 7).await;
        // Two 500 ms timeouts in parallel, not in sequence.
        assert!(
            started.elapsed() < Duration::from_millis(950),
            "{:?}",
            started.elapsed()
        );
        let got: Vec<(&str, &str, f64)> = samples
            .iter()
            .filter(|s| s.name == CHECK_UP)
            .map(|s| (s.labels[0].1.as_str(), s.name.as_str(), s.value))
            .collect();
        assert_eq!(
            got,
            [
                ("slow", CHECK_UP, 0.0),
                ("tcp", CHECK_UP, 1.0),
                ("proc", CHECK_UP, 0.0),
                ("slow2", CHECK_UP, 0.0)
            ]
        );
        assert_eq!(samples.len(), 8);
        assert!(run_checks(&[], 7).await.is_empty());
    }
}
