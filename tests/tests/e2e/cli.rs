//! The command lines as an administrator meets them: every subcommand of both binaries answers
//! `--version` and documents each of its options; admin commands refuse a data dir that holds
//! no collector (a typo must not mint a token pinned to a CA no collector has); a second
//! collector on a data dir in use is refused before it takes anything from the first.

use std::process::Command;
use std::time::Duration;

use crate::harness::*;

/// Every subcommand path of each binary (as typed after the binary's name).
const COLLECTOR_COMMANDS: &[&[&str]] = &[
    &[],
    &["quickstart"],
    &["serve"],
    &["check-config"],
    &["token"],
    &["token", "create"],
    &["token", "revoke"],
    &["agent"],
    &["agent", "list"],
    &["agent", "revoke"],
    &["api-token"],
    &["api-token", "create"],
    &["api-token", "revoke"],
    &["user"],
    &["user", "create"],
    &["user", "passwd"],
    &["user", "disable"],
    &["user", "list"],
];
const AGENT_COMMANDS: &[&[&str]] = &[&[], &["run"], &["inventory"], &["simulate"]];

fn output(binary: &str, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(bin(binary))
        .args(args)
        .env("VIGIL_LOG", "warn")
        .output()
        .expect("run");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The options of a clap help text that have no description. An option is a line starting
/// with `-`; its description follows on the same line (after two spaces) or on the more
/// indented lines below it. `[default: …]`, `[env: …]` and `[possible values: …]` alone are
/// not a description.
fn undescribed_options(help: &str) -> Vec<String> {
    let lines: Vec<&str> = help.lines().collect();
    let indent = |l: &str| l.len() - l.trim_start().len();
    let mut bare = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        if !line.trim_start().starts_with('-') {
            continue;
        }
        let t = line.trim();
        let mut text = t.find("  ").map_or("", |at| t[at..].trim()).to_string();
        for next in &lines[i + 1..] {
            if next.trim().is_empty() || indent(next) <= indent(line) {
                break;
            }
            text.push(' ');
            text.push_str(next.trim());
        }
        let mut described = text.clone();
        for tag in ["[default: ", "[env: ", "[possible values: "] {
            while let Some(at) = described.find(tag) {
                let end = described[at..]
                    .find(']')
                    .map_or(described.len(), |e| at + e + 1);
                described.replace_range(at..end, "");
            }
        }
        if described.trim().is_empty() {
            bare.push(t.to_string());
        }
    }
    bare
}

#[test]
fn every_subcommand_answers_version_and_documents_its_options() {
    for (binary, commands) in [
        ("vigil-collector", COLLECTOR_COMMANDS),
        ("vigil-agent", AGENT_COMMANDS),
    ] {
        for path in commands {
            let mut args = path.to_vec();
            args.push("--version");
            let (ok, stdout, stderr) = output(binary, &args);
            assert!(
                // clap names a subcommand `binary-sub`: `vigil-collector-token-create 0.1.0`.
                ok && stdout.starts_with(binary)
                    && stdout
                        .trim()
                        .ends_with(&format!(" {}", env!("CARGO_PKG_VERSION"))),
                "`{binary} {}` should print the version; stdout {stdout:?}, stderr {stderr:?}",
                args.join(" ")
            );

            let mut args = path.to_vec();
            args.push("-h");
            let (ok, help, stderr) = output(binary, &args);
            assert!(ok, "`{binary} {} -h`: {stderr}", path.join(" "));
            let bare = undescribed_options(&help);
            assert!(
                bare.is_empty(),
                "`{binary} {} -h` has options without a description: {bare:?}\n{help}",
                path.join(" ")
            );
        }
    }
    // Options with a fixed set of values list them.
    let (_, help, _) = output("vigil-collector", &["api-token", "create", "-h"]);
    assert!(
        help.contains("viewer") && help.contains("operator") && help.contains("admin"),
        "{help}"
    );
    let (_, help, _) = output("vigil-agent", &["run", "-h"]);
    assert!(help.contains("[possible values: text, json]"), "{help}");
}

#[test]
fn admin_commands_refuse_a_data_dir_that_holds_no_collector() {
    let dir = tempfile::tempdir().expect("tempdir");
    let real = dir.path().join("vigil-data");
    init_collector_dir(&real);
    let typo = dir.path().join("vigil-dta");
    for args in [
        &["token", "create"][..],
        &["api-token", "create", "--role", "admin"],
        &["agent", "list"],
        &["agent", "revoke", "x"],
    ] {
        let out = admin(&typo, args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "`{}` on a mistyped data dir must fail; stdout {:?}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout)
        );
        assert!(
            stderr.contains("holds no Vigil collector") && stderr.contains("vigil-dta"),
            "`{}`: the error should name the directory: {stderr}",
            args.join(" ")
        );
        assert!(
            out.stdout.is_empty(),
            "nothing (no token) printed: {:?}",
            String::from_utf8_lossy(&out.stdout)
        );
        assert!(!typo.exists(), "`{}` created {typo:?}", args.join(" "));
    }
    // The same commands work on the collector's own data dir.
    let token = enroll_token(&real, &[]);
    assert!(token.starts_with("v1."), "{token}");
    assert!(api_token(&real, "viewer").starts_with("vgl_"));
}

#[test]
fn a_second_collector_on_a_data_dir_in_use_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let first = spawn_collector(&dir.path().join("c"));
    let agent_dir = dir.path().join("agent");
    let mut agent = spawn_agent(
        first.quic,
        Some(&enroll_token(&first.data_dir, &[])),
        &agent_dir,
        "1s",
    );
    let viewer = api_token(&first.data_dir, "viewer");
    let connected = || {
        let (_, body) = http_get(
            &format!("http://{}/api/v1/agents", first.http),
            Some(&viewer),
        );
        body.contains("\"connected\":true")
    };
    wait_until(Duration::from_secs(30), "the agent connected", || {
        connected().then_some(())
    });

    // `serve` with another config on the same data dir, and `quickstart` on it.
    let data_dir = first.data_dir.display().to_string();
    let other = dir.path().join("second.toml");
    std::fs::write(
        &other,
        format!(
            "data_dir = {data_dir:?}\n[quic]\nlisten = \"127.0.0.1:0\"\n\
             [http]\nlisten = \"127.0.0.1:0\"\n"
        ),
    )
    .expect("write config");
    let serve = ["serve", "--config", &other.display().to_string()].map(String::from);
    let quickstart = [
        "quickstart",
        "--no-agent",
        "--data-dir",
        &data_dir,
        "--http",
        "127.0.0.1:0",
        "--quic",
        "127.0.0.1:0",
    ]
    .map(String::from);
    for args in [&serve[..], &quickstart[..]] {
        let mut cmd = Command::new(bin("vigil-collector"));
        cmd.args(args);
        let (status, _, stderr) = run_bounded(cmd, dir.path(), Duration::from_secs(30));
        assert!(
            !status.success(),
            "`{}` on a data dir in use must fail",
            args.join(" ")
        );
        assert!(
            stderr.contains("another collector is running")
                && stderr.contains(&first.proc.pid().to_string()),
            "`{}`: the error should say which process holds the data dir: {stderr}",
            args.join(" ")
        );
    }
    // The first collector kept its agent: still ready, the agent still connected.
    let (status, _) = http_get(&format!("http://{}/readyz", first.http), None);
    assert_eq!(status, 200);
    assert!(connected());
    assert!(agent.is_running());
}

/// `slo export` writes the shipped SLAs as OpenSLO; a configuration including that file has
/// the same SLAs (`check-config` accepts it, and exporting it again gives the same text).
#[test]
fn slo_export_round_trips_through_include() {
    let shipped = concat!(env!("CARGO_MANIFEST_DIR"), "/../config/collector.toml");
    let (ok, yaml, err) = output("vigil-collector", &["slo", "export", "--config", shipped]);
    assert!(ok, "{err}");
    assert_eq!(yaml.matches("kind: SLO").count(), 2, "{yaml}");
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(dir.path().join("slo")).expect("mkdir");
    std::fs::write(dir.path().join("slo/shipped.yaml"), &yaml).expect("write");
    let config = dir.path().join("collector.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = {:?}\ninclude = [\"slo/*.yaml\"]\n",
            dir.path().join("data").display().to_string()
        ),
    )
    .expect("write");
    let path = config.to_str().expect("utf-8");
    let (ok, out, err) = output("vigil-collector", &["check-config", "--config", path]);
    assert!(ok, "{out}{err}");
    let (ok, again, err) = output("vigil-collector", &["slo", "export", "--config", path]);
    assert!(ok, "{err}");
    assert_eq!(again, yaml);
}
