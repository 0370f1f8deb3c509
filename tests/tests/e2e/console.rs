//! The console's users as an administrator and an operator meet them, through the real
//! binaries: `vigil-collector user create|passwd|disable|list` on a running collector's data
//! dir, a login over HTTP with the password given on standard input, and what each command
//! does to a session that is open.

use std::io::Write;
use std::process::{Command, Stdio};

use crate::harness::*;

/// `vigil-collector user <args> --data-dir DIR`, with `stdin` as its standard input.
fn user(data_dir: &std::path::Path, args: &[&str], stdin: &str) -> (bool, String) {
    let mut child = Command::new(bin("vigil-collector"))
        .arg("user")
        .args(args)
        .arg("--data-dir")
        .arg(data_dir)
        .env("VIGIL_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run vigil-collector user");
    if let Some(mut s) = child.stdin.take() {
        let _ = s.write_all(stdin.as_bytes());
    }
    let out = child.wait_with_output().expect("wait");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// A JSON login: the status, the session cookie's value (if set) and the body.
fn login(c: &Collector, name: &str, password: &str) -> (u16, Option<String>, String) {
    let body = serde_json::json!({ "user": name, "password": password }).to_string();
    let (status, cookies, body) = http_with(
        "POST",
        &format!("http://{}/login", c.http),
        &[],
        Some(&body),
    );
    let cookie = cookies
        .iter()
        .find_map(|v| v.strip_prefix("vigil_session="))
        .map(|v| v.split(';').next().unwrap_or("").to_owned())
        .filter(|v| !v.is_empty());
    (status, cookie, body)
}

/// `GET /api/v1/session` with a cookie: the status.
fn session_status(c: &Collector, cookie: &str) -> u16 {
    let cookie = format!("vigil_session={cookie}");
    http_with(
        "GET",
        &format!("http://{}/api/v1/session", c.http),
        &[("cookie", &cookie)],
        None,
    )
    .0
}

#[test]
fn users_made_on_the_command_line_log_in_and_lose_their_sessions_when_changed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut c = spawn_collector(&dir.path().join("c"));
    let data = c.data_dir.clone();
    let pw = "operator password one";

    // Refusals: a short password, a bad name, a duplicate.
    let (ok, text) = user(&data, &["create", "olga", "--role", "operator"], "short\n");
    assert!(!ok && text.contains("12 to 1024 characters"), "{text}");
    let (ok, text) = user(
        &data,
        &["create", "ol ga", "--role", "operator"],
        &format!("{pw}\n"),
    );
    assert!(!ok && text.contains("invalid user name"), "{text}");
    let (ok, text) = user(
        &data,
        &["create", "olga", "--role", "operator"],
        &format!("{pw}\n"),
    );
    assert!(ok, "{text}");
    let (ok, text) = user(
        &data,
        &["create", "olga", "--role", "admin"],
        &format!("{pw}\n"),
    );
    assert!(!ok && text.contains("already exists"), "{text}");

    // The running collector takes the new user at once.
    let (status, cookie, body) = login(&c, "olga", pw);
    assert_eq!(status, 200, "{body}");
    let cookie = cookie.expect("a session cookie");
    assert!(body.contains("\"role\":\"operator\""), "{body}");
    assert_eq!(session_status(&c, &cookie), 200);
    assert_eq!(login(&c, "olga", "operator password two").0, 401);

    // A restart keeps the session: it lives in the store, not in the process.
    let (quic, http) = (c.quic, c.http);
    let status = c.proc.terminate(std::time::Duration::from_secs(20));
    assert!(status.success(), "collector stopped uncleanly: {status}");
    let c = spawn_collector_at(&data, quic, http);
    assert_eq!(session_status(&c, &cookie), 200);

    // A new password ends the session; the old password no longer works, the new one does.
    let (ok, text) = user(
        &data,
        &["passwd", "olga", "--role", "admin"],
        "operator password two\n",
    );
    assert!(ok, "{text}");
    assert_eq!(session_status(&c, &cookie), 401);
    assert_eq!(login(&c, "olga", pw).0, 401);
    let (status, cookie, body) = login(&c, "olga", "operator password two");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"role\":\"admin\""), "{body}");
    let cookie = cookie.expect("cookie");

    // Disabling ends it too, and refuses the next login.
    let (ok, text) = user(&data, &["disable", "olga"], "");
    assert!(ok && text.contains("disabled"), "{text}");
    assert_eq!(session_status(&c, &cookie), 401);
    assert_eq!(login(&c, "olga", "operator password two").0, 401);
    let (ok, text) = user(&data, &["list"], "");
    assert!(ok, "{text}");
    let row = text
        .lines()
        .find(|l| l.starts_with("olga\t"))
        .unwrap_or_else(|| panic!("olga listed: {text}"));
    let fields: Vec<&str> = row.split('\t').collect();
    assert_eq!(fields[1], "admin", "{row}");
    assert_ne!(fields[3], "-", "a last login: {row}");
    assert_ne!(fields[4], "-", "disabled: {row}");
    let (ok, text) = user(&data, &["disable", "nobody"], "");
    assert!(!ok && text.contains("unknown user"), "{text}");
}

/// `[http] tls_cert`/`tls_key`: the console and the API over HTTPS with the operator's own
/// certificate; session cookies are `Secure` there; plain HTTP on that port gets no answer.
#[test]
fn the_listener_serves_https_with_secure_cookies() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("c");
    std::fs::create_dir_all(&data).expect("dir");
    let key = rcgen::KeyPair::generate().expect("key");
    let params =
        rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .expect("params");
    let cert = params.self_signed(&key).expect("cert");
    let (cert_path, key_path) = (dir.path().join("http.pem"), dir.path().join("http.key"));
    std::fs::write(&cert_path, cert.pem()).expect("cert file");
    std::fs::write(&key_path, key.serialize_pem()).expect("key file");
    let any: std::net::SocketAddr = "127.0.0.1:0".parse().expect("addr");
    let c = spawn_collector_with(
        &data,
        any,
        any,
        &format!(
            "tls_cert = {:?}\ntls_key = {:?}\n",
            cert_path.display().to_string(),
            key_path.display().to_string()
        ),
    );
    let (ok, text) = user(
        &c.data_dir,
        &["create", "tess", "--role", "viewer"],
        "a viewer password\n",
    );
    assert!(ok, "{text}");

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let root = reqwest::Certificate::from_pem(cert.pem().as_bytes()).expect("root");
        let client = http_client_builder()
            .tls_certs_only([root])
            .timeout(std::time::Duration::from_secs(10))
            .build()
            .expect("client");
        let port = c.http.port();
        let healthz = client
            .get(format!("https://localhost:{port}/healthz"))
            .send()
            .await
            .expect("https");
        assert_eq!(healthz.status().as_u16(), 200);
        let resp = client
            .post(format!("https://localhost:{port}/login"))
            .json(&serde_json::json!({ "user": "tess", "password": "a viewer password" }))
            .send()
            .await
            .expect("login");
        assert_eq!(resp.status().as_u16(), 200);
        let cookie = resp
            .headers()
            .get("set-cookie")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        assert!(
            cookie.starts_with("vigil_session=") && cookie.contains("; Secure"),
            "{cookie}"
        );
        // Plain HTTP to the TLS port: no HTTP answer.
        let plain = http_client_builder()
            .timeout(std::time::Duration::from_secs(10))
            .build()
            .expect("client")
            .get(format!("http://127.0.0.1:{port}/healthz"))
            .send()
            .await;
        assert!(
            plain.as_ref().map_or(true, |r| !r.status().is_success()),
            "{plain:?}"
        );
    });
}
