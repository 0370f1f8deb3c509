//! systemd units as `systemd_unit` CIs (key: the unit name), host `runs` each.
//!
//! Where systemd runs on the real root (`/run/systemd/system` exists), `systemctl list-units`
//! and `systemctl list-unit-files` give the load, active, sub and enabled states. Otherwise (no
//! systemd running, a container, a fixture root) the unit files under /etc/systemd/system,
//! /lib/systemd/system and /usr/lib/systemd/system give the enabled state alone. A host without
//! any of them has no units, and that is not a problem.
//!
//! Must never: run `systemctl` against a fixture root, wait on it without a time limit, report a
//! state it does not know (unknown states are left out, not guessed), or panic on odd output.
//! Also home of [`run_command`], the bounded command runner the package source shares.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use vigil_shared::inventory::{ci_type, relation, Ci, CiRef, Relation};

use super::{Discovered, Options};

/// Problem source for systemd units.
pub const SOURCE: &str = "systemd";

/// Unit types reported from systemctl; unit files are read for the first three only.
const SYSTEMCTL_TYPES: &[&str] = &["service", "socket", "timer", "mount"];
const FILE_TYPES: &[&str] = &["service", "socket", "timer"];
/// Unit directories, highest precedence first.
const UNIT_DIRS: &[&str] = &[
    "/etc/systemd/system",
    "/lib/systemd/system",
    "/usr/lib/systemd/system",
];
const SYSTEMCTL_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_SYSTEMCTL_OUTPUT: usize = 8 << 20;
/// Unit files are small; only the start is needed to find `[Install]` in any sane one.
const MAX_UNIT_FILE: u64 = 256 << 10;

/// What is known of one unit; `None` = unknown (the attribute is left out).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UnitState {
    pub load: Option<String>,
    pub active: Option<String>,
    pub sub: Option<String>,
    pub enabled: Option<String>,
}

impl UnitState {
    fn enabled(state: &str) -> UnitState {
        UnitState {
            enabled: Some(state.to_string()),
            ..UnitState::default()
        }
    }

    /// The `systemd_unit` CI: attributes `load_state`, `active_state`, `sub_state`,
    /// `enabled_state`, each only when known.
    pub fn to_ci(&self, name: &str) -> Ci {
        let mut ci = Ci::new(ci_type::SYSTEMD_UNIT, name, name);
        for (attr, value) in [
            ("load_state", &self.load),
            ("active_state", &self.active),
            ("sub_state", &self.sub),
            ("enabled_state", &self.enabled),
        ] {
            if let Some(v) = value {
                ci = ci.attr(attr, v.clone());
            }
        }
        ci
    }
}

/// `nginx.service` -> `Some("service")`; templates (`getty@.service`) and other types -> `None`.
fn unit_type<'a>(name: &str, types: &[&'a str]) -> Option<&'a str> {
    let (stem, suffix) = name.rsplit_once('.')?;
    if stem.is_empty() || stem.ends_with('@') {
        return None;
    }
    types.iter().find(|t| **t == suffix).copied()
}

/// Parses `systemctl list-units --all --no-legend --plain` output (`UNIT LOAD ACTIVE SUB
/// DESCRIPTION...`) into `units`. Units systemd only knows as missing (`not-found`) are not
/// units of this host and are left out. Returns the number of malformed lines.
pub fn parse_list_units(text: &str, units: &mut BTreeMap<String, UnitState>) -> usize {
    let mut malformed = 0;
    for line in text.lines() {
        let mut words = line
            .split_whitespace()
            .skip_while(|w| *w == "●" || *w == "*");
        let (Some(name), Some(load), Some(active), Some(sub)) =
            (words.next(), words.next(), words.next(), words.next())
        else {
            if !line.trim().is_empty() {
                malformed += 1;
            }
            continue;
        };
        if !name.contains('.') {
            malformed += 1;
            continue;
        }
        if load == "not-found" || unit_type(name, SYSTEMCTL_TYPES).is_none() {
            continue;
        }
        let unit = units.entry(name.to_string()).or_default();
        unit.load = Some(load.to_string());
        unit.active = Some(active.to_string());
        unit.sub = Some(sub.to_string());
    }
    malformed
}

/// Parses `systemctl list-unit-files --no-legend` output (`UNIT STATE [PRESET]`) into `units`,
/// setting the enabled state. Returns the number of malformed lines.
pub fn parse_list_unit_files(text: &str, units: &mut BTreeMap<String, UnitState>) -> usize {
    let mut malformed = 0;
    for line in text.lines() {
        let mut words = line.split_whitespace();
        let (Some(name), Some(state)) = (words.next(), words.next()) else {
            if !line.trim().is_empty() {
                malformed += 1;
            }
            continue;
        };
        if !name.contains('.') {
            malformed += 1;
            continue;
        }
        if unit_type(name, SYSTEMCTL_TYPES).is_none() {
            continue;
        }
        units.entry(name.to_string()).or_default().enabled = Some(state.to_string());
    }
    malformed
}

/// Asks the running systemd.
fn from_systemctl() -> Result<(BTreeMap<String, UnitState>, usize), CommandError> {
    let types = format!("--type={}", SYSTEMCTL_TYPES.join(","));
    let list = run_command(
        "systemctl",
        &[
            "list-units",
            "--all",
            "--no-legend",
            "--plain",
            "--no-pager",
            &types,
        ],
        SYSTEMCTL_TIMEOUT,
        MAX_SYSTEMCTL_OUTPUT,
    )?;
    let files = run_command(
        "systemctl",
        &["list-unit-files", "--no-legend", "--no-pager"],
        SYSTEMCTL_TIMEOUT,
        MAX_SYSTEMCTL_OUTPUT,
    )?;
    let mut units = BTreeMap::new();
    let malformed = parse_list_units(&list, &mut units) + parse_list_unit_files(&files, &mut units);
    Ok((units, malformed))
}

/// Reads the unit directories under the root: enabled state only (nothing runs to say more).
///
/// - `masked`: `/etc/systemd/system/<unit>` (or a vendor dir entry) is a symlink to /dev/null;
/// - `alias`: the entry is a symlink to a unit of another name; `linked`: to a file of the
///   same name elsewhere (`systemctl link`);
/// - `enabled`: a symlink named after the unit is in some `/etc/systemd/system/*.wants/` or
///   `*.requires/` (instances of templates, `getty@tty1.service`, are found this way too);
/// - otherwise `disabled` if the unit file has an `[Install]` section, else `static`.
///
/// Returns the units; unreadable directories are one problem.
pub fn from_unit_files(opts: &Options, out: &mut Discovered) -> BTreeMap<String, UnitState> {
    let mut units: BTreeMap<String, UnitState> = BTreeMap::new();
    // Unit name -> its file (highest precedence), for the [Install] check.
    let mut fragments: BTreeMap<String, std::path::PathBuf> = BTreeMap::new();
    let mut templates: BTreeSet<String> = BTreeSet::new();
    let mut wanted: BTreeSet<String> = BTreeSet::new();
    let mut errors = Vec::new();
    for (i, abs) in UNIT_DIRS.iter().enumerate() {
        let dir = opts.path(abs);
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if super::is_absent(&e) => continue,
            Err(e) => {
                errors.push(format!("{}: {e}", dir.display()));
                continue;
            }
        };
        for entry in entries.flatten() {
            let Some(name) = entry.file_name().to_str().map(str::to_string) else {
                continue;
            };
            let path = entry.path();
            let Ok(meta) = std::fs::symlink_metadata(&path) else {
                continue;
            };
            if i == 0 && meta.is_dir() && (name.ends_with(".wants") || name.ends_with(".requires"))
            {
                collect_wants(&path, &mut wanted);
                continue;
            }
            if unit_type(&name, FILE_TYPES).is_none() {
                if is_template(&name) {
                    templates.insert(name);
                }
                continue;
            }
            if units.contains_key(&name) || fragments.contains_key(&name) {
                continue; // a higher-precedence directory already has it
            }
            if meta.file_type().is_symlink() {
                let target = std::fs::read_link(&path).unwrap_or_default();
                let target_name = target.file_name().and_then(|n| n.to_str());
                let state = if target == Path::new("/dev/null") {
                    "masked"
                } else if target_name == Some(name.as_str()) {
                    "linked"
                } else {
                    // `systemctl enable` creates the Alias= links in /etc: the target is enabled.
                    if let (0, Some(t)) = (i, target_name) {
                        wanted.insert(t.to_string());
                    }
                    "alias"
                };
                units.insert(name, UnitState::enabled(state));
            } else if meta.is_file() {
                fragments.insert(name, path);
            }
        }
    }
    if !errors.is_empty() {
        out.unreadable(&[ci_type::SYSTEMD_UNIT], SOURCE, errors.join("; "));
    }
    for (name, path) in fragments {
        let state = if wanted.contains(&name) {
            "enabled"
        } else if has_install_section(&path) {
            "disabled"
        } else {
            "static"
        };
        units.insert(name, UnitState::enabled(state));
    }
    // Enabled instances of templates: `getty@tty1.service` -> `getty@.service`.
    for name in &wanted {
        if units.contains_key(name) || unit_type(name, FILE_TYPES).is_none() {
            continue;
        }
        let template = name
            .split_once('@')
            .and_then(|(prefix, rest)| Some(format!("{prefix}@.{}", rest.rsplit_once('.')?.1)));
        if template.is_some_and(|t| templates.contains(&t)) {
            units.insert(name.clone(), UnitState::enabled("enabled"));
        }
    }
    units
}

/// `getty@.service`: a template, a unit only through its instances.
fn is_template(name: &str) -> bool {
    name.rsplit_once('.')
        .is_some_and(|(stem, suffix)| stem.ends_with('@') && FILE_TYPES.contains(&suffix))
}

/// Names of the unit symlinks in one `.wants`/`.requires` directory.
fn collect_wants(dir: &Path, wanted: &mut BTreeSet<String>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if let Some(name) = entry.file_name().to_str() {
            wanted.insert(name.to_string());
        }
    }
}

/// Whether a unit file has an `[Install]` section (so it can be enabled).
fn has_install_section(path: &Path) -> bool {
    vigil_runtime::fs::read_text_lossy_capped(path, MAX_UNIT_FILE)
        .is_ok_and(|text| text.lines().any(|l| l.trim() == "[Install]"))
}

/// Adds a `systemd_unit` CI per unit, and host `runs` it.
pub fn discover(opts: &Options, out: &mut Discovered) {
    let running = opts.root == Path::new("/") && opts.path("/run/systemd/system").is_dir();
    let mut units = None;
    if running {
        match from_systemctl() {
            Ok((u, malformed)) => {
                if malformed > 0 {
                    out.problem(
                        SOURCE,
                        format!("systemctl: skipped {malformed} malformed lines"),
                    );
                }
                units = Some(u);
            }
            Err(e) => out.problem(
                SOURCE,
                format!("systemctl: {e}; reading unit files instead"),
            ),
        }
    }
    let units = match units {
        Some(u) => u,
        None => from_unit_files(opts, out),
    };
    let host = CiRef::new(ci_type::HOST, "host");
    for (name, state) in units {
        let ci = state.to_ci(&name);
        out.inventory.relations.push(Relation {
            from: host.clone(),
            kind: relation::RUNS.to_string(),
            to: ci.id(),
        });
        out.inventory.cis.push(ci);
    }
}

/// Why a command gave no output.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("cannot run {program}: {source}")]
    Spawn {
        program: String,
        source: std::io::Error,
    },
    #[error("{program} did not finish within {timeout:?}")]
    Timeout { program: String, timeout: Duration },
    #[error("{program} exited with {status}")]
    Failed {
        program: String,
        status: std::process::ExitStatus,
    },
    #[error("{program} printed more than {limit} bytes")]
    TooLarge { program: String, limit: usize },
}

/// Runs `program args` with stdin closed and stderr discarded, in the C locale, and returns its
/// standard output (invalid UTF-8 replaced). Killed after `timeout`; output beyond `max_output`
/// bytes is an error. Blocking: call it from discovery's blocking thread only.
pub fn run_command(
    program: &str,
    args: &[&str],
    timeout: Duration,
    max_output: usize,
) -> Result<String, CommandError> {
    let deadline = Instant::now() + timeout;
    let mut child = Command::new(program)
        .args(args)
        .env("LC_ALL", "C")
        .env("SYSTEMD_COLORS", "0")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|source| CommandError::Spawn {
            program: program.to_string(),
            source,
        })?;
    // Read on a thread so a full pipe cannot block the child while we watch the clock.
    let (tx, rx) = std::sync::mpsc::channel();
    if let Some(stdout) = child.stdout.take() {
        let limit = max_output as u64 + 1;
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            let res = stdout.take(limit).read_to_end(&mut bytes).map(|_| bytes);
            let _ = tx.send(res);
        });
    }
    let timed_out = || CommandError::Timeout {
        program: program.to_string(),
        timeout,
    };
    let output = rx.recv_timeout(timeout);
    if matches!(&output, Ok(Ok(bytes)) if bytes.len() > max_output) {
        let _ = child.kill();
        let _ = child.wait();
        return Err(CommandError::TooLarge {
            program: program.to_string(),
            limit: max_output,
        });
    }
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline && output.is_ok() => {
                std::thread::sleep(Duration::from_millis(2));
            }
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(timed_out());
            }
        }
    };
    let bytes = match output {
        Ok(Ok(bytes)) => bytes,
        _ => return Err(timed_out()),
    };
    if !status.success() {
        return Err(CommandError::Failed {
            program: program.to_string(),
            status,
        });
    }
    Ok(vigil_runtime::fs::text_lossy(bytes))
}

#[cfg(test)]
mod tests {
    use super::super::testing::{fixture, opts};
    use super::*;

    fn state(load: &str, active: &str, sub: &str, enabled: Option<&str>) -> UnitState {
        UnitState {
            load: Some(load.into()),
            active: Some(active.into()),
            sub: Some(sub.into()),
            enabled: enabled.map(str::to_string),
        }
    }

    /// Captured from `systemctl list-units --all --no-legend --plain
    /// --type=service,socket,timer,mount` (systemd 252), trimmed, plus odd lines.
    const LIST_UNITS: &str = "\
-.mount                                loaded    active   mounted   Root Mount
apt-daily.timer                        loaded    active   waiting   Daily apt download activities
auditd.service                         not-found inactive dead      auditd.service
cron.service                           loaded    active   running   Regular background program processing daemon
● nginx.service                        loaded    failed   failed    A high performance web server
getty@tty1.service                     loaded    active   running   Getty on tty1
ssh.socket                             loaded    inactive dead      OpenBSD Secure Shell server socket
x11-common.service                     masked    inactive dead      x11-common.service
garbage
nodot loaded active running
";

    /// Captured from `systemctl list-unit-files --no-legend` (systemd 252), trimmed.
    const LIST_UNIT_FILES: &str = "\
-.mount                                    generated       -
apt-daily.timer                            enabled         enabled
cron.service                               enabled         enabled
dbus-org.freedesktop.timesync1.service     alias           -
getty@.service                             enabled         enabled
nginx.service                              enabled         enabled
multi-user.target                          static          -
rescue.service                             static          -
ssh.socket                                 disabled        enabled
x11-common.service                         masked          enabled
lonely
";

    #[test]
    fn systemctl_output() {
        let mut units = BTreeMap::new();
        assert_eq!(parse_list_units(LIST_UNITS, &mut units), 2);
        assert_eq!(parse_list_unit_files(LIST_UNIT_FILES, &mut units), 1);
        let expected: BTreeMap<String, UnitState> = [
            (
                "-.mount",
                state("loaded", "active", "mounted", Some("generated")),
            ),
            (
                "apt-daily.timer",
                state("loaded", "active", "waiting", Some("enabled")),
            ),
            (
                "cron.service",
                state("loaded", "active", "running", Some("enabled")),
            ),
            (
                "dbus-org.freedesktop.timesync1.service",
                UnitState::enabled("alias"),
            ),
            (
                "getty@tty1.service",
                state("loaded", "active", "running", None),
            ),
            (
                "nginx.service",
                state("loaded", "failed", "failed", Some("enabled")),
            ),
            ("rescue.service", UnitState::enabled("static")),
            (
                "ssh.socket",
                state("loaded", "inactive", "dead", Some("disabled")),
            ),
            (
                "x11-common.service",
                state("masked", "inactive", "dead", Some("masked")),
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        assert_eq!(units, expected);
        assert_eq!(
            units["nginx.service"].to_ci("nginx.service"),
            Ci::new(ci_type::SYSTEMD_UNIT, "nginx.service", "nginx.service")
                .attr("load_state", "loaded")
                .attr("active_state", "failed")
                .attr("sub_state", "failed")
                .attr("enabled_state", "enabled")
        );
    }

    /// The `systemd-basic` fixture: vendor units in /lib and /usr/lib, a local override in /etc,
    /// wants symlinks (one for a template instance), a masked unit, an alias, a dangling want.
    #[test]
    fn fixture_unit_files() {
        let root = fixture("systemd-basic");
        let mut out = Discovered::default();
        discover(&opts(&root), &mut out);
        assert_eq!(out.problems, vec![]);
        let got: Vec<(&str, Option<&str>)> = out
            .inventory
            .cis
            .iter()
            .map(|c| {
                assert_eq!(c.ci_type, ci_type::SYSTEMD_UNIT);
                assert_eq!(c.attrs.len(), 1, "only the enabled state is known: {c:?}");
                (c.key.as_str(), c.attrs["enabled_state"].as_str())
            })
            .collect();
        assert_eq!(
            got,
            [
                ("apt-daily.service", Some("static")),
                ("apt-daily.timer", Some("enabled")),
                ("cron.service", Some("enabled")),
                ("dbus-org.freedesktop.timesync1.service", Some("alias")),
                ("getty@tty1.service", Some("enabled")),
                ("nginx.service", Some("disabled")),
                ("ssh.service", Some("enabled")),
                ("ssh.socket", Some("disabled")),
                ("systemd-timesyncd.service", Some("enabled")),
                ("x11-common.service", Some("masked")),
            ]
        );
        assert_eq!(out.inventory.relations.len(), got.len());
        assert!(out
            .inventory
            .relations
            .iter()
            .all(|r| r.kind == relation::RUNS
                && r.from == CiRef::new(ci_type::HOST, "host")
                && r.to.ci_type == ci_type::SYSTEMD_UNIT));
    }

    #[test]
    fn no_systemd_is_no_units_and_no_problem() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut out = Discovered::default();
        discover(&opts(dir.path()), &mut out);
        assert_eq!(out.problems, vec![]);
        assert!(out.inventory.cis.is_empty());
    }

    #[test]
    fn commands_are_bounded() {
        let ok = run_command("sh", &["-c", "echo hi"], Duration::from_secs(5), 100);
        assert_eq!(ok.expect("echo"), "hi\n");
        let started = Instant::now();
        let slow = run_command("sleep", &["5"], Duration::from_millis(200), 100);
        assert!(
            matches!(slow, Err(CommandError::Timeout { .. })),
            "{slow:?}"
        );
        assert!(started.elapsed() < Duration::from_secs(3));
        let big = run_command(
            "sh",
            &["-c", "yes | head -c 1000"],
            Duration::from_secs(5),
            100,
        );
        assert!(matches!(big, Err(CommandError::TooLarge { .. })), "{big:?}");
        let failed = run_command("false", &[], Duration::from_secs(5), 100);
        assert!(
            matches!(failed, Err(CommandError::Failed { .. })),
            "{failed:?}"
        );
        let missing = run_command("/nonexistent/cmd", &[], Duration::from_secs(5), 100);
        assert!(
            matches!(missing, Err(CommandError::Spawn { .. })),
            "{missing:?}"
        );
    }
}
