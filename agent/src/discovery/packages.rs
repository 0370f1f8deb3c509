//! Installed packages as `package` CIs (key `name:arch`): dpkg from `/var/lib/dpkg/status`, rpm
//! through `rpm -qa` where an rpm database exists on the real root. Also answers "which package
//! owns this executable?" from `/var/lib/dpkg/info/*.list`, so the sockets source can relate a
//! listening service to the package that provides it.
//!
//! Must never: panic on a malformed status file (bad entries are skipped and counted), run a
//! command against a fixture root, or read every `.list` file on every pass (a host with 3,000
//! packages has ~30 MB of them; owner look-ups are cached until `/var/lib/dpkg/info` changes).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use vigil_shared::inventory::{ci_type, Ci};

use super::{Discovered, Options};

/// Problem source for the dpkg status file.
pub const SOURCE_DPKG: &str = "dpkg";
/// Problem source for the rpm query.
pub const SOURCE_RPM: &str = "rpm";

/// The dpkg status file is a few MB even with thousands of packages; anything past this is cut.
const MAX_STATUS_BYTES: u64 = 64 << 20;
/// `rpm -qa` output cap and time limit.
const MAX_RPM_OUTPUT: usize = 16 << 20;
const RPM_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound on the executable-owner cache (distinct executables seen listening).
const MAX_OWNER_CACHE: usize = 4096;

/// One installed package.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Package {
    pub name: String,
    pub version: String,
    pub arch: String,
    /// Source package; the package name when the status file names none.
    pub source: String,
    /// `Installed-Size` (KiB) where known.
    pub installed_size_kb: Option<u64>,
    /// `dpkg` or `rpm`.
    pub manager: &'static str,
}

impl Package {
    /// The CI key, `name:arch`.
    pub fn key(&self) -> String {
        format!("{}:{}", self.name, self.arch)
    }

    /// The `package` CI: attributes `name`, `version`, `architecture`, `source`, `manager` and,
    /// when known, `installed_size_kb`.
    pub fn to_ci(&self) -> Ci {
        let mut ci = Ci::new(ci_type::PACKAGE, self.key(), self.name.clone())
            .attr("name", self.name.clone())
            .attr("version", self.version.clone())
            .attr("architecture", self.arch.clone())
            .attr("source", self.source.clone())
            .attr("manager", self.manager);
        if let Some(kb) = self.installed_size_kb {
            ci = ci.attr("installed_size_kb", kb);
        }
        ci
    }
}

/// Parses a dpkg status file. Only installed packages (status word `installed`, whatever the
/// selection: `install`, `hold` or `deinstall` pending) are returned; `config-files`,
/// `half-installed` and the like are not. Returns the packages and the number of malformed lines
/// or entries skipped (a line that is neither `Field: value` nor a continuation, an installed
/// entry without Package/Version/Architecture).
pub fn parse_dpkg_status(text: &str) -> (Vec<Package>, usize) {
    let mut packages = Vec::new();
    let mut malformed = 0usize;
    let mut para = Paragraph::default();
    for line in text.lines() {
        if line.trim().is_empty() {
            para.finish(&mut packages, &mut malformed);
            continue;
        }
        if line.starts_with([' ', '\t']) {
            continue; // continuation of a multi-line field (Description, Conffiles)
        }
        let Some((field, value)) = line.split_once(':') else {
            malformed += 1;
            continue;
        };
        let value = value.trim();
        match field {
            "Package" => para.package = Some(value),
            "Status" => para.status = Some(value),
            "Version" => para.version = Some(value),
            "Architecture" => para.arch = Some(value),
            "Source" => para.source = Some(value),
            "Installed-Size" => para.size = Some(value),
            _ => {}
        }
    }
    para.finish(&mut packages, &mut malformed);
    (packages, malformed)
}

/// Fields of the dpkg paragraph being read.
#[derive(Default)]
struct Paragraph<'a> {
    package: Option<&'a str>,
    status: Option<&'a str>,
    version: Option<&'a str>,
    arch: Option<&'a str>,
    source: Option<&'a str>,
    size: Option<&'a str>,
}

impl Paragraph<'_> {
    fn finish(&mut self, out: &mut Vec<Package>, malformed: &mut usize) {
        let p = std::mem::take(self);
        let Some(status) = p.status else {
            if p.package.is_some() {
                *malformed += 1; // every status entry has a Status line
            }
            return;
        };
        // "want flag status": install ok installed, hold ok installed, deinstall ok config-files...
        let mut words = status.split_whitespace();
        let (_want, flag, state) = (words.next(), words.next(), words.next());
        if state != Some("installed") || flag != Some("ok") {
            return;
        }
        let (Some(name), Some(version), Some(arch)) = (p.package, p.version, p.arch) else {
            *malformed += 1;
            return;
        };
        if name.is_empty() || version.is_empty() || arch.is_empty() {
            *malformed += 1;
            return;
        }
        // "Source: openssl (3.0.11-1)" names the source version when it differs.
        let source = p
            .source
            .and_then(|s| s.split_whitespace().next())
            .unwrap_or(name);
        out.push(Package {
            name: name.to_string(),
            version: version.to_string(),
            arch: arch.to_string(),
            source: source.to_string(),
            installed_size_kb: p.size.and_then(|s| s.parse().ok()),
            manager: "dpkg",
        });
    }
}

/// Parses `rpm -qa --queryformat '%{NAME}\t%{VERSION}-%{RELEASE}\t%{ARCH}\n'` output. The
/// `gpg-pubkey` pseudo-packages (imported signing keys) are not packages and are left out.
pub fn parse_rpm_output(text: &str) -> (Vec<Package>, usize) {
    let mut packages = Vec::new();
    let mut malformed = 0usize;
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let fields: Vec<&str> = line.split('\t').map(str::trim).collect();
        let [name, version, arch] = fields[..] else {
            malformed += 1;
            continue;
        };
        if name.is_empty() || version.is_empty() || arch.is_empty() {
            malformed += 1;
            continue;
        }
        if name == "gpg-pubkey" {
            continue;
        }
        packages.push(Package {
            name: name.to_string(),
            version: version.to_string(),
            arch: arch.to_string(),
            source: name.to_string(),
            installed_size_kb: None,
            manager: "rpm",
        });
    }
    (packages, malformed)
}

/// Adds a `package` CI per installed dpkg package, and per rpm package where rpm is in use on
/// the real root.
pub fn discover(opts: &Options, out: &mut Discovered) {
    let status = opts.path("/var/lib/dpkg/status");
    match vigil_runtime::fs::read_text_lossy_capped(&status, MAX_STATUS_BYTES) {
        Ok(text) => {
            let (packages, malformed) = parse_dpkg_status(&text);
            if malformed > 0 {
                out.problem(
                    SOURCE_DPKG,
                    format!(
                        "{}: skipped {malformed} malformed lines or entries",
                        status.display()
                    ),
                );
            }
            out.inventory
                .cis
                .extend(packages.iter().map(Package::to_ci));
        }
        // No dpkg on this host (an rpm distribution, a container): nothing to report.
        Err(e) if super::is_absent(&e) => {}
        Err(e) => out.unreadable(
            &[ci_type::PACKAGE],
            SOURCE_DPKG,
            format!("{}: {e}", status.display()),
        ),
    }
    if opts.root == Path::new("/") && opts.path("/var/lib/rpm").is_dir() && on_path("rpm") {
        let format = "%{NAME}\t%{VERSION}-%{RELEASE}\t%{ARCH}\n";
        let args = ["-qa", "--queryformat", format];
        match super::systemd::run_command("rpm", &args, RPM_TIMEOUT, MAX_RPM_OUTPUT) {
            Ok(text) => {
                let (packages, malformed) = parse_rpm_output(&text);
                if malformed > 0 {
                    out.problem(
                        SOURCE_RPM,
                        format!("rpm -qa: skipped {malformed} malformed lines"),
                    );
                }
                out.inventory
                    .cis
                    .extend(packages.iter().map(Package::to_ci));
            }
            Err(e) => out.unreadable(&[ci_type::PACKAGE], SOURCE_RPM, format!("rpm -qa: {e}")),
        }
    }
}

/// Whether an executable file called `name` is in one of the `PATH` directories.
fn on_path(name: &str) -> bool {
    let Some(path) = std::env::var_os("PATH") else {
        return false;
    };
    std::env::split_paths(&path).any(|dir| dir.join(name).is_file())
}

/// Owner look-ups already answered for one `info` directory, valid while its mtime is unchanged
/// (dpkg renames `.list` files into place on every install, upgrade and removal).
struct OwnerCache {
    dir: PathBuf,
    mtime: SystemTime,
    /// Executable path -> owning `.list` stem (`openssh-server`, `libc-bin:amd64`) or `None`.
    owners: HashMap<String, Option<String>>,
}

static OWNER_CACHE: Mutex<Option<OwnerCache>> = Mutex::new(None);

/// Which dpkg package owns each of `exes` (absolute paths as `/proc/<pid>/exe` names them), from
/// `/var/lib/dpkg/info/*.list`. Values are `.list` file stems: `name` or `name:arch`; executables
/// no package owns are absent. With usrmerge an executable seen as `/usr/bin/x` may be listed as
/// `/bin/x`; both spellings are tried.
///
/// Cost: the first look-up of an executable reads the `.list` files until every wanted path is
/// found (all of them when one is not packaged); answers are cached until the directory changes,
/// so a steady host pays one `stat` per pass.
pub fn exe_owners(opts: &Options, exes: &BTreeSet<String>) -> BTreeMap<String, String> {
    let dir = opts.path("/var/lib/dpkg/info");
    let Ok(mtime) = std::fs::metadata(&dir).and_then(|m| m.modified()) else {
        return BTreeMap::new();
    };
    let mut guard = OWNER_CACHE.lock().unwrap_or_else(|e| e.into_inner());
    let stale = guard
        .as_ref()
        .is_none_or(|c| c.dir != dir || c.mtime != mtime || c.owners.len() > MAX_OWNER_CACHE);
    if stale {
        *guard = Some(OwnerCache {
            dir: dir.clone(),
            mtime,
            owners: HashMap::new(),
        });
    }
    let Some(cache) = guard.as_mut() else {
        return BTreeMap::new();
    };
    let missing: Vec<&String> = exes
        .iter()
        .filter(|e| may_be_packaged(e) && !cache.owners.contains_key(*e))
        .collect();
    if !missing.is_empty() {
        let found = scan_lists(&dir, &missing);
        for exe in missing {
            cache
                .owners
                .insert(exe.clone(), found.get(exe.as_str()).cloned());
        }
    }
    exes.iter()
        .filter_map(|e| Some((e.clone(), cache.owners.get(e)?.clone()?)))
        .collect()
}

/// Whether dpkg could own `exe`: packages install under /usr (never /usr/local, by policy),
/// /bin, /sbin, /lib* and /opt. Anything else (a binary in /home, /srv, /usr/local, a build
/// tree) is answered "no owner" without reading a single list file.
fn may_be_packaged(exe: &str) -> bool {
    const PREFIXES: &[&str] = &["/usr/", "/bin/", "/sbin/", "/lib", "/opt/"];
    PREFIXES.iter().any(|p| exe.starts_with(p)) && !exe.starts_with("/usr/local/")
}

/// Reads `.list` files in `dir` until each of `exes` has an owner; returns exe -> list stem.
fn scan_lists(dir: &Path, exes: &[&String]) -> HashMap<String, String> {
    // Every spelling of every wanted path -> the exe it stands for.
    let mut wanted: HashMap<Vec<u8>, &str> = HashMap::new();
    for exe in exes {
        wanted.insert(exe.as_bytes().to_vec(), exe.as_str());
        if let Some(rest) = exe.strip_prefix("/usr") {
            if rest.starts_with('/') {
                wanted.insert(rest.as_bytes().to_vec(), exe.as_str());
            }
        } else {
            wanted.insert(format!("/usr{exe}").into_bytes(), exe.as_str());
        }
    }
    let lengths: HashSet<usize> = wanted.keys().map(Vec::len).collect();
    let mut found: HashMap<String, String> = HashMap::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return found;
    };
    let mut buf = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(stem) = name.to_str().and_then(|n| n.strip_suffix(".list")) else {
            continue;
        };
        buf.clear();
        let read = std::fs::File::open(entry.path()).and_then(|mut f| f.read_to_end(&mut buf));
        if read.is_err() {
            continue;
        }
        for line in buf.split(|b| *b == b'\n') {
            if !lengths.contains(&line.len()) {
                continue;
            }
            if let Some(exe) = wanted.get(line) {
                found
                    .entry((*exe).to_string())
                    .or_insert_with(|| stem.to_string());
            }
        }
        if found.len() == exes.len() {
            break;
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::super::testing::{fixture, opts};
    use super::*;
    use std::fmt::Write as _;

    fn pkg(name: &str, version: &str, arch: &str, source: &str) -> Package {
        Package {
            name: name.into(),
            version: version.into(),
            arch: arch.into(),
            source: source.into(),
            installed_size_kb: None,
            manager: "dpkg",
        }
    }

    fn check_dpkg(text: &str, expected: &[Package], malformed: usize) {
        let (got, bad) = parse_dpkg_status(text);
        assert_eq!(got, expected, "packages of {text:?}");
        assert_eq!(bad, malformed, "malformed count of {text:?}");
    }

    #[test]
    fn dpkg_status_entries() {
        let mut sized = pkg("openssl", "3.0.11-1~deb12u2", "amd64", "openssl");
        sized.installed_size_kb = Some(2295);
        check_dpkg(
            "Package: openssl\nStatus: install ok installed\nPriority: optional\n\
             Installed-Size: 2295\nArchitecture: amd64\nVersion: 3.0.11-1~deb12u2\n\
             Description: Secure Sockets Layer toolkit\n This package contains\n .\n more\n",
            &[sized],
            0,
        );
        // Source with a version, held package, arch all; removed and half-installed are out.
        check_dpkg(
            "Package: libssl3\nStatus: hold ok installed\nArchitecture: amd64\n\
             Source: openssl (3.0.11-1)\nVersion: 3.0.11-1+b1\n\n\
             Package: gone\nStatus: deinstall ok config-files\nArchitecture: amd64\nVersion: 1\n\n\
             Package: half\nStatus: install reinstreq half-installed\nArchitecture: all\n\
             Version: 2\n\n\n\
             Package: tzdata\nStatus: install ok installed\nArchitecture: all\nVersion: 2024a\n",
            &[
                pkg("libssl3", "3.0.11-1+b1", "amd64", "openssl"),
                pkg("tzdata", "2024a", "all", "tzdata"),
            ],
            0,
        );
        // Garbage lines and an installed entry without a version are skipped and counted.
        check_dpkg(
            "garbage line\nPackage: a\nStatus: install ok installed\nArchitecture: amd64\n\n\
             Package: b\nStatus: install ok installed\nArchitecture: amd64\nVersion: 1\n\
             \u{0}\u{1}binary\n\nPackage: nostatus\nVersion: 1\n",
            &[pkg("b", "1", "amd64", "b")],
            4,
        );
        check_dpkg("", &[], 0);
    }

    #[test]
    fn rpm_output() {
        let (got, bad) = parse_rpm_output(
            "bash\t5.1.8-6.el9\tx86_64\ngpg-pubkey\tfd431d51-4ae0493b\t(none)\n\
             tzdata\t2024a-1.el9\tnoarch\nbroken line\n\n",
        );
        let mut bash = pkg("bash", "5.1.8-6.el9", "x86_64", "bash");
        bash.manager = "rpm";
        let mut tz = pkg("tzdata", "2024a-1.el9", "noarch", "tzdata");
        tz.manager = "rpm";
        assert_eq!(got, vec![bash, tz]);
        assert_eq!(bad, 1);
    }

    /// A status file of `n` installed packages (plus some removed ones), like a big server's.
    fn big_status(n: usize) -> String {
        let mut s = String::new();
        for i in 0..n {
            let _ = write!(
                s,
                "Package: pkg{i:04}\nStatus: install ok installed\nPriority: optional\n\
                 Section: misc\nInstalled-Size: {}\nMaintainer: Someone <a@b.c>\n\
                 Architecture: {}\nSource: src{}\nVersion: 1.{i}-1\nDepends: libc6 (>= 2.34)\n\
                 Description: package number {i}\n A longer description line that wraps\n \
                 over two lines like real ones do.\n\n",
                i + 1,
                if i % 10 == 0 { "all" } else { "amd64" },
                i / 3,
            );
            if i % 100 == 0 {
                let _ = write!(
                    s,
                    "Package: removed{i}\nStatus: deinstall ok config-files\n\
                     Architecture: amd64\nVersion: 0.{i}\n\n"
                );
            }
        }
        s
    }

    #[test]
    fn many_packages_from_a_fixture_root() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("var/lib/dpkg")).expect("mkdir");
        std::fs::write(dir.path().join("var/lib/dpkg/status"), big_status(3200)).expect("write");
        let mut out = Discovered::default();
        discover(&opts(dir.path()), &mut out);
        assert_eq!(out.problems, vec![]);
        let cis = &out.inventory.cis;
        assert_eq!(cis.len(), 3200);
        assert!(cis.iter().all(|c| c.ci_type == ci_type::PACKAGE));
        assert!(!cis.iter().any(|c| c.key.starts_with("removed")));
        let expected = Ci::new(ci_type::PACKAGE, "pkg0031:amd64", "pkg0031")
            .attr("name", "pkg0031")
            .attr("version", "1.31-1")
            .attr("architecture", "amd64")
            .attr("source", "src10")
            .attr("manager", "dpkg")
            .attr("installed_size_kb", 32);
        assert_eq!(
            cis.iter().find(|c| c.key == "pkg0031:amd64"),
            Some(&expected)
        );
        let all = cis
            .iter()
            .find(|c| c.key == "pkg3190:all")
            .expect("arch all");
        assert_eq!(all.attrs["version"], "1.3190-1");
    }

    #[test]
    fn fixture_dpkg_basic() {
        let root = fixture("dpkg-basic");
        let mut out = Discovered::default();
        discover(&opts(&root), &mut out);
        assert_eq!(out.problems, vec![]);
        let keys: Vec<&str> = out.inventory.cis.iter().map(|c| c.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "openssh-server:amd64",
                "nginx-core:amd64",
                "libc6:amd64",
                "libc6:i386"
            ]
        );
    }

    #[test]
    fn missing_and_unreadable_sources() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut out = Discovered::default();
        discover(&opts(dir.path()), &mut out);
        assert_eq!(out.problems, vec![], "no dpkg at all is not a problem");
        assert!(out.inventory.cis.is_empty());
        // A status path that is a directory cannot be read: one problem.
        std::fs::create_dir_all(dir.path().join("var/lib/dpkg/status")).expect("mkdir");
        discover(&opts(dir.path()), &mut out);
        assert_eq!(out.problems.len(), 1);
        assert_eq!(out.problems[0].source, SOURCE_DPKG);
    }

    #[test]
    fn executable_owners_from_list_files() {
        let root = fixture("dpkg-basic");
        let o = opts(&root);
        let exes: BTreeSet<String> = [
            "/usr/sbin/sshd",
            "/usr/sbin/nginx",
            "/usr/bin/ldd",
            "/opt/x",
            "/usr/local/sbin/nginx",
            "/home/u/app",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let expected: BTreeMap<String, String> = [
            ("/usr/sbin/sshd", "openssh-server"),
            ("/usr/sbin/nginx", "nginx-core"),
            // listed as /bin/ldd (before usrmerge), in a multi-arch list file
            ("/usr/bin/ldd", "libc6:amd64"),
        ]
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
        assert_eq!(exe_owners(&o, &exes), expected);
        assert!(!may_be_packaged("/usr/local/sbin/nginx") && !may_be_packaged("/srv/app/bin"));
        assert!(may_be_packaged("/usr/sbin/nginx") && may_be_packaged("/lib64/x"));
        // Answered again from the cache.
        assert_eq!(exe_owners(&o, &exes), expected);
        assert_eq!(exe_owners(&o, &BTreeSet::new()), BTreeMap::new());
        assert_eq!(
            exe_owners(&opts(Path::new("/nonexistent")), &exes),
            BTreeMap::new()
        );
    }
}
