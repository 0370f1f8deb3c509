//! Configuration errors with the real binaries: every mistake is reported at once as
//! `file:line:col: message` at its exact position, with a non-zero exit, before anything binds
//! or connects. `vigil-collector check-config` validates without starting; `vigil-collector
//! serve` and `vigil-agent run` (the agent has no separate check command: `run --config`
//! validates first) refuse a bad file before touching the network or the data dir.

use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::Duration;

use crate::harness::*;

/// Asserts that `stderr` reports exactly `expected` — `(file, line, col, message prefix)` — as
/// `file:line:col: message` lines, in this order, and nothing else positioned.
fn check_errors(what: &str, stderr: &str, expected: &[(&Path, usize, usize, &str)]) {
    let files: Vec<String> = expected
        .iter()
        .map(|(f, ..)| f.display().to_string())
        .collect();
    // Error lines start with the file name (the first may carry a "program: " prefix).
    let reported: Vec<&str> = stderr
        .lines()
        .filter_map(|l| {
            files
                .iter()
                .filter_map(|f| l.find(&format!("{f}:")))
                .min()
                .map(|i| &l[i..])
        })
        .collect();
    assert_eq!(
        reported.len(),
        expected.len(),
        "{what}: expected {} errors, stderr:\n{stderr}",
        expected.len()
    );
    for (got, (file, line, col, message)) in reported.iter().zip(expected) {
        let want = format!("{}:{line}:{col}: {message}", file.display());
        assert!(
            got.starts_with(&want),
            "{what}: expected {want:?}, got {got:?}; stderr:\n{stderr}"
        );
    }
}

/// Port 0: these configurations are refused before anything binds, or only checked.
fn any_port() -> SocketAddr {
    "127.0.0.1:0".parse().expect("addr")
}

fn write(path: &Path, text: &str) -> PathBuf {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).expect("dir");
    }
    std::fs::write(path, text).expect("write config");
    path.to_path_buf()
}

fn collector(args: &[&str], config: &Path, dir: &Path) -> (ExitStatus, String, String) {
    let mut cmd = Command::new(bin("vigil-collector"));
    cmd.args(args).arg("--config").arg(config);
    run_bounded(cmd, dir, Duration::from_secs(60))
}

/// A collector config with an unknown key (line 2) and a bad duration (line 8), plus the
/// errors it must produce.
fn bad_collector_config(dir: &Path, data_dir: &Path, http: SocketAddr) -> PathBuf {
    write(
        &dir.join("bad-collector.toml"),
        &format!(
            "data_dir = {:?}\n\
             colour = \"blue\"\n\
             [quic]\n\
             listen = \"{}\"\n\
             [http]\n\
             listen = \"{http}\"\n\
             [store]\n\
             retention = \"3 fortnights\"\n",
            data_dir.display().to_string(),
            any_port(),
        ),
    )
}

#[test]
fn collector_check_config_reports_every_error_at_its_position() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let data_dir = d.join("data");

    // Unknown key and bad duration on different lines: both, at their exact positions.
    let bad = bad_collector_config(d, &data_dir, any_port());
    let (status, _, stderr) = collector(&["check-config"], &bad, d);
    assert!(!status.success(), "{stderr}");
    check_errors(
        "top level",
        &stderr,
        &[
            (&bad, 2, 1, "unknown key `colour`"),
            (&bad, 8, 13, "invalid duration \"3 fortnights\""),
        ],
    );

    // Nested tables, indentation, arrays of tables and an included file.
    let rules = write(
        &d.join("rules.d/extra.toml"),
        "[[rule]]\n\
         name = \"cpu\"\n\
         metric = \"cpu_usage_ratio\"\n\
         above = 0.9\n\
         \x20   treshold = 1\n",
    );
    let nested = write(
        &d.join("nested.toml"),
        &format!(
            "data_dir = {:?}\n\
             include = [\"rules.d/*.toml\"]\n\
             [http]\n\
             \x20 listne = \"127.0.0.1:1\"\n\
             \n\
             [[rule]]\n\
             name = \"disk\"\n\
             metric = \"filesystem_used_ratio\"\n\
             above = 0.9\n\
             for = \"soon\"\n",
            data_dir.display().to_string()
        ),
    );
    let (status, _, stderr) = collector(&["check-config"], &nested, d);
    assert!(!status.success(), "{stderr}");
    check_errors(
        "nested and included",
        &stderr,
        &[
            (&nested, 4, 3, "unknown key `listne`"),
            (&nested, 10, 7, "invalid duration \"soon\""),
            (&rules, 5, 5, "unknown key `treshold`"),
        ],
    );

    // A valid file passes, and says so.
    let good = collector_config(&data_dir, any_port(), any_port(), "");
    let (status, stdout, stderr) = collector(&["check-config"], &good, d);
    assert!(status.success(), "{stderr}");
    assert_eq!(stdout.trim(), format!("{}: ok", good.display()));
    assert!(
        !data_dir.join("vigil.db").exists(),
        "check-config must not create the store"
    );

    // The shipped example passes (with its rules.d include).
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/collector.toml");
    let (status, _, stderr) = collector(&["check-config"], &example, d);
    assert!(status.success(), "config/collector.toml: {stderr}");
}

#[test]
fn type_errors_are_reported_with_every_other_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let rules = write(
        &d.join("rules.d/typed.toml"),
        "[[rule]]\n\
         name = \"cpu\"\n\
         metric = \"cpu_usage_ratio\"\n\
         above = \"high\"\n",
    );
    let main = write(
        &d.join("typed.toml"),
        &format!(
            "data_dir = {:?}\n\
             include = [\"rules.d/*.toml\"]\n\
             colour = \"blue\"\n\
             [agents]\n\
             down_after_intervals = \"three\"\n\
             [store]\n\
             retention = \"3 fortnights\"\n\
             [[rule]]\n\
             name = \"disk\"\n\
             metric = \"filesystem_used_ratio\"\n\
             above = 0.9\n\
             for = 5\n",
            d.join("data").display().to_string()
        ),
    );
    let (status, _, stderr) = collector(&["check-config"], &main, d);
    assert!(!status.success(), "{stderr}");
    check_errors(
        "type errors among the rest",
        &stderr,
        &[
            (&main, 3, 1, "unknown key `colour`"),
            (&main, 5, 24, "invalid type: string \"three\", expected i64"),
            (&main, 7, 13, "invalid duration \"3 fortnights\""),
            (&main, 12, 7, "invalid type: integer `5`, expected a string"),
            (&rules, 4, 9, "invalid type: string \"high\", expected f64"),
        ],
    );
}

#[test]
fn collector_serve_refuses_a_bad_config_before_binding() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let data_dir = d.join("data");
    let http = any_port();
    let bad = bad_collector_config(d, &data_dir, http);
    let (status, stdout, stderr) = collector(&["serve"], &bad, d);
    assert!(!status.success(), "{stderr}");
    check_errors(
        "serve",
        &stderr,
        &[
            (&bad, 2, 1, "unknown key `colour`"),
            (&bad, 8, 13, "invalid duration \"3 fortnights\""),
        ],
    );
    assert!(!stdout.contains("listening"), "{stdout}");
    // Nothing was created: the data dir's lock, the CA and the store all come before the
    // sockets.
    assert!(!data_dir.exists(), "serve touched the data dir");
}

#[test]
fn agent_run_refuses_a_bad_config_before_connecting() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    // A silent "collector": it records any datagram and never answers.
    let silent = UdpSocket::bind("127.0.0.1:0").expect("udp");
    silent
        .set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    let addr = silent.local_addr().expect("addr");
    init_collector_dir(&d.join("collector"));
    let token = enroll_token(&d.join("collector"), &[]);
    let agent_data = d.join("agent-data");

    let bad = write(
        &d.join("bad-agent.toml"),
        &format!(
            "collector = \"{addr}\"\n\
             token = \"{token}\"\n\
             data_dir = {:?}\n\
             colour = \"blue\"\n\
             [metrics]\n\
             interval = \"10 parsecs\"\n",
            agent_data.display().to_string()
        ),
    );
    let mut cmd = Command::new(bin("vigil-agent"));
    cmd.arg("run").arg("--config").arg(&bad);
    let (status, _, stderr) = run_bounded(cmd, d, Duration::from_secs(30));
    assert!(!status.success(), "{stderr}");
    check_errors(
        "agent",
        &stderr,
        &[
            (&bad, 4, 1, "unknown key `colour`"),
            (&bad, 6, 12, "invalid duration \"10 parsecs\""),
        ],
    );
    let mut buf = [0u8; 2048];
    assert!(
        silent.recv_from(&mut buf).is_err(),
        "the agent sent a packet to the collector despite a bad config"
    );

    // The same file without the mistakes does contact the collector (so the check above can
    // fail): the first Initial packet arrives.
    let good = write(
        &d.join("good-agent.toml"),
        &format!(
            "collector = \"{addr}\"\n\
             token = \"{token}\"\n\
             data_dir = {:?}\n\
             [metrics]\n\
             interval = \"10s\"\n",
            agent_data.display().to_string()
        ),
    );
    let mut cmd = Command::new(bin("vigil-agent"));
    cmd.arg("run")
        .arg("--config")
        .arg(&good)
        .stdout(Stdio::null());
    let mut agent = Proc::spawn("vigil-agent", cmd, d.join("agent.log"));
    let got = wait_until(Duration::from_secs(30), "a packet from the agent", || {
        silent.recv_from(&mut buf).ok().map(|(n, _)| n)
    });
    assert!(got >= 1200, "a QUIC Initial is padded to 1200 bytes: {got}");
    assert!(agent.is_running(), "{}", agent.logs());
    agent.kill();
}
