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
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let client = http_client_builder()
            .timeout(std::time::Duration::from_secs(10))
            .build()
            .expect("client");
        let resp = client
            .post(format!("http://{}/login", c.http))
            .json(&serde_json::json!({ "user": name, "password": password }))
            .send()
            .await
            .expect("login");
        let status = resp.status().as_u16();
        let cookie = resp
            .headers()
            .get_all("set-cookie")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find_map(|v| v.strip_prefix("vigil_session="))
            .map(|v| v.split(';').next().unwrap_or("").to_owned())
            .filter(|v| !v.is_empty());
        (status, cookie, resp.text().await.unwrap_or_default())
    })
}

/// `GET /api/v1/session` with a cookie: the status.
fn session_status(c: &Collector, cookie: &str) -> u16 {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let client = http_client_builder()
            .timeout(std::time::Duration::from_secs(10))
            .build()
            .expect("client");
        client
            .get(format!("http://{}/api/v1/session", c.http))
            .header("cookie", format!("vigil_session={cookie}"))
            .send()
            .await
            .map(|r| r.status().as_u16())
            .unwrap_or(0)
    })
}

#[test]
fn users_made_on_the_command_line_log_in_and_lose_their_sessions_when_changed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = spawn_collector(&dir.path().join("c"));
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
