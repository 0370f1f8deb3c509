//! Host and operating-system discovery: the `host` CI (names, machine-id, DMI, virtualization,
//! boot time, tags) and the `os` CI (os-release, kernel, architecture), related `host runs os`.
//!
//! Reads only under the configured root (`/etc/hostname`, `/etc/hosts`, `/etc/machine-id`,
//! `/etc/os-release`, `/proc/sys/kernel/*`, `/proc/stat`, `/proc/cpuinfo`, `/proc/1/cgroup`,
//! `/sys/class/dmi/id/*`, container marker files). It must never read the real `/` directly,
//! never fail: the host CI is always emitted (a missing source only drops its attributes and
//! records one problem), and never resolve names over the network (the FQDN comes from
//! `/etc/hosts`, not DNS).
//!
//! Attributes of `host` (absent when the source is missing):
//! `hostname`, `fqdn`, `machine_id`, `dmi_vendor`, `dmi_product`, `dmi_serial`, `dmi_uuid`,
//! `dmi_board_vendor`, `virtualization` (`container` | `vm` | `bare_metal`),
//! `virtualization_type` (`docker`, `podman`, `kubernetes`, `lxc`, `kvm`, `qemu`, `vmware`, ...;
//! only when known), `boot_time` (RFC 3339, UTC, seconds), `tags` (object, always present).
//! Attributes of `os`: `name`, `pretty_name`, `version`, `id`, `kernel`, `architecture`.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use vigil_shared::inventory::{ci_type, relation, Ci, CiRef, Relation};

use super::{read, Discovered, Options};

/// DMI files read from `/sys/class/dmi/id`, with the attribute each fills.
const DMI_FIELDS: &[(&str, &str)] = &[
    ("sys_vendor", "dmi_vendor"),
    ("product_name", "dmi_product"),
    ("product_serial", "dmi_serial"),
    ("product_uuid", "dmi_uuid"),
    ("board_vendor", "dmi_board_vendor"),
];

/// Lower-case fragments of DMI `sys_vendor product_name` that mean a virtual machine, and the
/// hypervisor each names. Checked in order.
const VM_VENDORS: &[(&str, &str)] = &[
    ("qemu", "qemu"),
    ("kvm", "kvm"),
    ("vmware", "vmware"),
    ("virtualbox", "virtualbox"),
    ("innotek", "virtualbox"),
    ("xen", "xen"),
    ("amazon ec2", "amazon"),
    ("google compute engine", "google"),
    ("firecracker", "firecracker"),
    ("openstack", "openstack"),
    ("bochs", "bochs"),
    ("parallels", "parallels"),
    ("microsoft corporation virtual machine", "hyperv"),
];

/// Fragments of `/proc/1/cgroup` that mean PID 1 runs in a container.
const CGROUP_MARKERS: &[(&str, &str)] = &[
    ("kubepods", "kubernetes"),
    ("docker", "docker"),
    ("libpod", "podman"),
    ("lxc", "lxc"),
];

/// Adds the `host` and `os` CIs and `host runs os`.
pub fn discover(opts: &Options, out: &mut Discovered) {
    let host = host_ci(opts, out);
    out.inventory.cis.push(host);
    let os = os_ci(opts, out);
    out.inventory.relations.push(Relation {
        from: CiRef::new(ci_type::HOST, ci_type::HOST),
        kind: relation::RUNS.to_string(),
        to: os.id(),
    });
    out.inventory.cis.push(os);
}

fn host_ci(opts: &Options, out: &mut Discovered) -> Ci {
    let hostname = opts
        .hostname
        .clone()
        .or_else(|| read_trimmed(opts, "/proc/sys/kernel/hostname"))
        .or_else(|| read_trimmed(opts, "/etc/hostname"))
        .unwrap_or_else(|| {
            let exists = |abs: &str| opts.path(abs).exists();
            let message = "neither /proc/sys/kernel/hostname nor /etc/hostname is readable; \
                           using localhost";
            if exists("/proc/sys/kernel/hostname") || exists("/etc/hostname") {
                // There but unreadable (out of file descriptors?): not a rename.
                out.unreadable(&[ci_type::HOST], "hostname", message);
            } else {
                out.problem("hostname", message);
            }
            "localhost".to_string()
        });
    let fqdn = read(opts, "/etc/hosts")
        .and_then(|hosts| fqdn_from_hosts(&hosts, &hostname))
        .unwrap_or_else(|| hostname.clone());
    let mut ci = Ci::new(ci_type::HOST, ci_type::HOST, hostname.clone())
        .attr("hostname", hostname.as_str())
        .attr("fqdn", fqdn);

    match read_trimmed(opts, "/etc/machine-id") {
        Some(id) => ci = ci.attr("machine_id", id),
        None => out.problem("machine-id", "/etc/machine-id is not readable"),
    }

    let dmi = read_dmi(opts, out);
    for (attr, value) in &dmi {
        ci = ci.attr(attr, value.as_str());
    }

    let cgroup = read(opts, "/proc/1/cgroup").unwrap_or_default();
    let markers = ContainerMarkers {
        dockerenv: opts.path("/.dockerenv").exists(),
        containerenv: opts.path("/run/.containerenv").exists(),
        systemd_container: read_trimmed(opts, "/run/systemd/container"),
        cgroup: &cgroup,
    };
    let cpuinfo_hypervisor = read(opts, "/proc/cpuinfo").is_some_and(|c| has_hypervisor_flag(&c));
    let virt = virtualization(
        &markers,
        dmi.get("dmi_vendor").map(String::as_str),
        dmi.get("dmi_product").map(String::as_str),
        cpuinfo_hypervisor,
    );
    ci = ci.attr("virtualization", virt.kind);
    if let Some(t) = virt.detail {
        ci = ci.attr("virtualization_type", t);
    }

    match read(opts, "/proc/stat").as_deref().and_then(boot_time) {
        Some(t) => ci = ci.attr("boot_time", t),
        None => out.problem("proc-stat", "no btime in /proc/stat"),
    }

    let tags: serde_json::Map<String, serde_json::Value> = opts
        .tags
        .iter()
        .map(|(k, v)| (k.clone(), serde_json::Value::from(v.as_str())))
        .collect();
    ci.attr("tags", serde_json::Value::Object(tags))
}

/// Reads the DMI identity files that exist and are readable. Records at most one problem: the
/// whole directory missing (containers, some ARM boards) or the files that could not be read
/// (serial and UUID are root-only on most distributions).
fn read_dmi(opts: &Options, out: &mut Discovered) -> BTreeMap<&'static str, String> {
    let dir = opts.path("/sys/class/dmi/id");
    if !dir.is_dir() {
        out.problem("dmi", "/sys/class/dmi/id is not available");
        return BTreeMap::new();
    }
    let mut found = BTreeMap::new();
    let mut unreadable = Vec::new();
    for (file, attr) in DMI_FIELDS {
        match vigil_runtime::fs::read_text_lossy_capped(&dir.join(file), 4096) {
            Ok(v) if !v.trim().is_empty() => {
                found.insert(*attr, v.trim().to_string());
            }
            Ok(_) => {}
            Err(_) => unreadable.push(*file),
        }
    }
    if !unreadable.is_empty() {
        out.problem(
            "dmi",
            format!(
                "unreadable in /sys/class/dmi/id: {} (root-only?)",
                unreadable.join(", ")
            ),
        );
    }
    found
}

fn os_ci(opts: &Options, out: &mut Discovered) -> Ci {
    let release = read(opts, "/etc/os-release")
        .or_else(|| read(opts, "/usr/lib/os-release"))
        .map(|t| parse_os_release(&t));
    if release.is_none() {
        out.problem(
            "os-release",
            "neither /etc/os-release nor /usr/lib/os-release is readable",
        );
    }
    let release = release.unwrap_or_default();
    let get = |k: &str| release.get(k).filter(|v| !v.is_empty()).cloned();
    let name = get("NAME").unwrap_or_else(|| "Linux".to_string());
    let pretty = get("PRETTY_NAME").unwrap_or_else(|| name.clone());
    let mut ci = Ci::new(ci_type::OS, ci_type::OS, pretty.clone())
        .attr("name", name)
        .attr("pretty_name", pretty);
    if let Some(v) = get("VERSION_ID").or_else(|| get("VERSION")) {
        ci = ci.attr("version", v);
    }
    if let Some(v) = get("ID") {
        ci = ci.attr("id", v);
    }
    match read_trimmed(opts, "/proc/sys/kernel/osrelease") {
        Some(k) => ci = ci.attr("kernel", k),
        None => out.problem("kernel", "/proc/sys/kernel/osrelease is not readable"),
    }
    ci.attr("architecture", std::env::consts::ARCH)
}

fn read_trimmed(opts: &Options, abs: &str) -> Option<String> {
    read(opts, abs)
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

/// The first dotted name on an `/etc/hosts` line that also names `hostname`, whose first label
/// is the short host name (`127.0.1.1 web1.example.org web1` gives `web1.example.org`). A
/// dotted `hostname` is its own FQDN.
pub fn fqdn_from_hosts(hosts: &str, hostname: &str) -> Option<String> {
    if hostname.contains('.') {
        return Some(hostname.to_string());
    }
    for line in hosts.lines() {
        let line = line.split('#').next().unwrap_or("");
        let names: Vec<&str> = line.split_whitespace().skip(1).collect();
        let names_host = names.iter().any(|n| {
            n.eq_ignore_ascii_case(hostname)
                || n.split('.')
                    .next()
                    .is_some_and(|l| l.eq_ignore_ascii_case(hostname))
        });
        if !names_host {
            continue;
        }
        let dotted = names.iter().find(|n| {
            n.contains('.')
                && !n.ends_with('.')
                && n.split('.')
                    .next()
                    .is_some_and(|l| l.eq_ignore_ascii_case(hostname))
        });
        if let Some(d) = dotted {
            return Some((*d).to_string());
        }
    }
    None
}

/// `KEY=value` lines of os-release(5); values may be double- or single-quoted, with `\`
/// escapes inside double quotes. Comments and malformed lines are skipped.
pub fn parse_os_release(text: &str) -> BTreeMap<String, String> {
    let mut map = BTreeMap::new();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') {
            continue;
        }
        let Some((key, raw)) = line.split_once('=') else {
            continue;
        };
        let value = if let Some(inner) = raw.strip_prefix('"').and_then(|r| r.strip_suffix('"')) {
            let mut v = String::with_capacity(inner.len());
            let mut chars = inner.chars();
            while let Some(c) = chars.next() {
                if c == '\\' {
                    if let Some(n) = chars.next() {
                        v.push(n);
                    }
                } else {
                    v.push(c);
                }
            }
            v
        } else if let Some(inner) = raw.strip_prefix('\'').and_then(|r| r.strip_suffix('\'')) {
            inner.to_string()
        } else {
            raw.to_string()
        };
        map.insert(key.trim().to_string(), value);
    }
    map
}

/// Whether the first `flags` line of /proc/cpuinfo has the `hypervisor` bit (x86 guests).
pub fn has_hypervisor_flag(cpuinfo: &str) -> bool {
    cpuinfo
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            (k.trim() == "flags").then_some(v)
        })
        .is_some_and(|flags| flags.split_whitespace().any(|f| f == "hypervisor"))
}

/// The `btime` line of /proc/stat as RFC 3339 UTC (`2026-11-24T10:14:09Z`).
pub fn boot_time(stat: &str) -> Option<String> {
    let secs: u64 = stat
        .lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()?;
    let t = SystemTime::UNIX_EPOCH.checked_add(Duration::from_secs(secs))?;
    // humantime formats years up to 9999 only; later times are not boot times.
    (secs < 253_402_300_800).then(|| humantime::format_rfc3339_seconds(t).to_string())
}

/// What the container detection looks at.
#[derive(Debug, Default)]
pub struct ContainerMarkers<'a> {
    /// `/.dockerenv` exists.
    pub dockerenv: bool,
    /// `/run/.containerenv` exists (podman).
    pub containerenv: bool,
    /// Contents of `/run/systemd/container` (`lxc`, `systemd-nspawn`, `docker`, ...).
    pub systemd_container: Option<String>,
    /// Contents of `/proc/1/cgroup`.
    pub cgroup: &'a str,
}

/// Result of [`virtualization`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Virtualization {
    /// `container`, `vm` or `bare_metal`.
    pub kind: &'static str,
    pub detail: Option<&'static str>,
}

/// Container markers win over VM signs (a container in a VM reports `container`); then a DMI
/// vendor/product naming a hypervisor, then the cpuinfo `hypervisor` flag; else bare metal.
/// EC2 bare-metal instances (`*.metal` products) are not VMs.
pub fn virtualization(
    markers: &ContainerMarkers<'_>,
    dmi_vendor: Option<&str>,
    dmi_product: Option<&str>,
    hypervisor_flag: bool,
) -> Virtualization {
    let container = |detail| Virtualization {
        kind: "container",
        detail: Some(detail),
    };
    if markers.dockerenv {
        return container("docker");
    }
    if markers.containerenv {
        return container("podman");
    }
    if let Some(s) = markers.systemd_container.as_deref() {
        let detail = match s {
            "docker" => "docker",
            "podman" => "podman",
            "lxc" | "lxc-libvirt" => "lxc",
            "systemd-nspawn" => "systemd-nspawn",
            _ => "other",
        };
        return container(detail);
    }
    if let Some((_, d)) = CGROUP_MARKERS
        .iter()
        .find(|(needle, _)| markers.cgroup.contains(needle))
    {
        return container(d);
    }
    let product = dmi_product.unwrap_or("");
    let dmi = format!("{} {}", dmi_vendor.unwrap_or(""), product).to_ascii_lowercase();
    if !product.ends_with(".metal") {
        if let Some((_, d)) = VM_VENDORS.iter().find(|(needle, _)| dmi.contains(needle)) {
            return Virtualization {
                kind: "vm",
                detail: Some(d),
            };
        }
        if hypervisor_flag {
            return Virtualization {
                kind: "vm",
                detail: None,
            };
        }
    }
    Virtualization {
        kind: "bare_metal",
        detail: None,
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{self, ci, fixture};
    use super::*;
    use serde_json::json;

    /// Options reading fixture `name`.
    fn opts(name: &str) -> Options {
        testing::opts(&fixture(name))
    }

    /// Runs this source on `opts` and compares every CI, the relations and the problems.
    fn check(opts: &Options, expected: &[Ci], problems: &[(&str, &str)]) {
        let got = testing::run(discover, opts);
        let mut want = expected.to_vec();
        want.sort_by_key(Ci::id);
        assert_eq!(got.inventory.cis, want, "{}", opts.root.display());
        assert_eq!(
            got.inventory.relations,
            vec![Relation {
                from: CiRef::new("host", "host"),
                kind: "runs".into(),
                to: CiRef::new("os", "os"),
            }]
        );
        assert_eq!(testing::problems(&got), problems, "{}", opts.root.display());
    }

    fn debian_os() -> Ci {
        ci(
            "os",
            "os",
            "Debian GNU/Linux 12 (bookworm)",
            json!({"name": "Debian GNU/Linux", "pretty_name": "Debian GNU/Linux 12 (bookworm)",
                   "version": "12", "id": "debian", "kernel": "6.1.0-26-amd64",
                   "architecture": std::env::consts::ARCH}),
        )
    }

    #[test]
    fn bare_metal_server_with_full_dmi_and_tags() {
        let mut o = opts("host-basic");
        o.tags = [("role", "web"), ("env", "prod")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        check(
            &o,
            &[
                ci(
                    "host",
                    "host",
                    "web1",
                    json!({"hostname": "web1", "fqdn": "web1.example.org",
                           "machine_id": "5f1c0e4a9b2d4e6f8a7b3c2d1e0f9a8b",
                           "dmi_vendor": "Dell Inc.", "dmi_product": "PowerEdge R640",
                           "dmi_serial": "8XKQ2Y2", "dmi_uuid": "4c4c4544-0058-4b10-8051-b8c04f325932",
                           "dmi_board_vendor": "Dell Inc.", "virtualization": "bare_metal",
                           "boot_time": "2024-11-01T08:00:00Z",
                           "tags": {"env": "prod", "role": "web"}}),
                ),
                debian_os(),
            ],
            &[],
        );
    }

    #[test]
    fn vm_with_root_only_dmi_files_and_hostname_override() {
        let mut o = opts("host-vm");
        o.hostname = Some("db-primary".into());
        check(
            &o,
            &[
                ci(
                    "host",
                    "host",
                    "db-primary",
                    json!({"hostname": "db-primary", "fqdn": "db-primary.prod.example.net",
                           "machine_id": "0123456789abcdef0123456789abcdef",
                           "dmi_vendor": "QEMU", "dmi_product": "Standard PC (Q35 + ICH9, 2009)",
                           "virtualization": "vm", "virtualization_type": "qemu",
                           "boot_time": "2025-03-02T12:30:45Z", "tags": {}}),
                ),
                ci(
                    "os",
                    "os",
                    "Rocky Linux 9.4 (Blue Onyx)",
                    json!({"name": "Rocky Linux", "pretty_name": "Rocky Linux 9.4 (Blue Onyx)",
                           "version": "9.4", "id": "rocky", "kernel": "5.14.0-427.13.1.el9_4.x86_64",
                           "architecture": std::env::consts::ARCH}),
                ),
            ],
            &[(
                "dmi",
                "unreadable in /sys/class/dmi/id: product_serial, product_uuid, board_vendor (root-only?)",
            )],
        );
    }

    #[test]
    fn container_without_dmi_stat_or_machine_id() {
        check(
            &opts("host-container"),
            &[
                ci(
                    "host",
                    "host",
                    "3f2a9c1d7b4e",
                    json!({"hostname": "3f2a9c1d7b4e", "fqdn": "3f2a9c1d7b4e",
                           "virtualization": "container", "virtualization_type": "docker",
                           "tags": {}}),
                ),
                ci(
                    "os",
                    "os",
                    "Alpine Linux v3.20",
                    json!({"name": "Alpine Linux", "pretty_name": "Alpine Linux v3.20",
                           "version": "3.20.3", "id": "alpine", "kernel": "6.8.0-45-generic",
                           "architecture": std::env::consts::ARCH}),
                ),
            ],
            &[
                ("machine-id", "/etc/machine-id is not readable"),
                ("dmi", "/sys/class/dmi/id is not available"),
                ("proc-stat", "no btime in /proc/stat"),
            ],
        );
    }

    #[test]
    fn empty_root_still_yields_host_and_os() {
        let dir = tempfile::tempdir().expect("tempdir");
        let o = Options {
            root: dir.path().to_path_buf(),
            tags: BTreeMap::new(),
            hostname: None,
        };
        check(
            &o,
            &[
                ci(
                    "host",
                    "host",
                    "localhost",
                    json!({"hostname": "localhost", "fqdn": "localhost",
                           "virtualization": "bare_metal", "tags": {}}),
                ),
                ci(
                    "os",
                    "os",
                    "Linux",
                    json!({"name": "Linux", "pretty_name": "Linux",
                           "architecture": std::env::consts::ARCH}),
                ),
            ],
            &[
                (
                    "hostname",
                    "neither /proc/sys/kernel/hostname nor /etc/hostname is readable; using localhost",
                ),
                ("machine-id", "/etc/machine-id is not readable"),
                ("dmi", "/sys/class/dmi/id is not available"),
                ("proc-stat", "no btime in /proc/stat"),
                (
                    "os-release",
                    "neither /etc/os-release nor /usr/lib/os-release is readable",
                ),
                ("kernel", "/proc/sys/kernel/osrelease is not readable"),
            ],
        );
    }

    /// This machine through the real root: the host-level CIs of all four of this crate's
    /// hardware-facing sources exist and hang off the host.
    #[test]
    fn real_root_has_host_os_cpu_memory_filesystem_and_interface() {
        let o = Options {
            root: "/".into(),
            tags: BTreeMap::new(),
            hostname: None,
        };
        let mut out = Discovered::default();
        discover(&o, &mut out);
        super::super::hardware::discover(&o, &mut out);
        super::super::storage::discover(&o, &mut out);
        super::super::network::discover(&o, &mut out);
        out.inventory.canonicalize();
        let inv = &out.inventory;
        let host = inv.get(&CiRef::new("host", "host")).expect("host CI");
        assert_eq!(
            host.attrs.get("hostname").and_then(|h| h.as_str()),
            Some(crate::sampler::hostname().as_str())
        );
        assert!(host.attrs.contains_key("virtualization"), "{host:?}");
        let os = inv.get(&CiRef::new("os", "os")).expect("os CI");
        assert!(os.attrs.contains_key("kernel"), "{os:?}");
        let cpu = inv.get(&CiRef::new("cpu", "cpu")).expect("cpu CI");
        assert!(cpu.attrs["threads"].as_u64().is_some_and(|t| t >= 1));
        let mem = inv.get(&CiRef::new("memory", "memory")).expect("memory CI");
        assert!(mem.attrs["total_bytes"].as_u64().is_some_and(|t| t > 0));
        let count = |t: &str| inv.cis.iter().filter(|c| c.ci_type == t).count();
        assert!(count("filesystem") >= 1, "{:?}", inv.cis);
        assert!(count("network_interface") >= 1, "{:?}", inv.cis);
        // On the real root, filesystem sizes come from statvfs.
        assert!(inv
            .cis
            .iter()
            .filter(|c| c.ci_type == "filesystem")
            .all(
                |c| c.attrs.get("size_bytes").and_then(|s| s.as_u64()).is_some()
                    || c.attrs.get("fs_type").and_then(|t| t.as_str()) == Some("zfs")
            ));
        // Every relation starts and ends at a reported CI.
        for r in &inv.relations {
            assert!(
                inv.get(&r.from).is_some() && inv.get(&r.to).is_some(),
                "{r:?}"
            );
        }
    }

    #[test]
    fn fqdn_rules() {
        fn check(hosts: &str, hostname: &str, expected: Option<&str>) {
            assert_eq!(
                fqdn_from_hosts(hosts, hostname).as_deref(),
                expected,
                "{hosts:?} {hostname}"
            );
        }
        let hosts = "127.0.0.1 localhost localhost.localdomain\n\
                     # 10.0.0.9 web1.old.example web1\n\
                     127.0.1.1 web1.example.org web1 # main\n";
        check(hosts, "web1", Some("web1.example.org"));
        check(hosts, "WEB1", Some("web1.example.org"));
        check(hosts, "web2", None);
        check(hosts, "localhost", Some("localhost.localdomain"));
        check("10.0.0.1 web1\n", "web1", None);
        check("10.0.0.1 web10.example.org web1\n", "web1", None);
        check(
            "10.0.0.1 web1.example.org\n",
            "web1",
            Some("web1.example.org"),
        );
        check("", "db.example.com", Some("db.example.com"));
        check("garbage line without names\n\n", "web1", None);
    }

    #[test]
    fn os_release_quoting() {
        let m = parse_os_release(
            "# comment\nNAME=\"Fedora Linux\"\nID=fedora\nVERSION_ID='40'\n\
             PRETTY_NAME=\"A \\\"quoted\\\" name\"\nnonsense\nEMPTY=\n",
        );
        let got: Vec<(&str, &str)> = m.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(
            got,
            [
                ("EMPTY", ""),
                ("ID", "fedora"),
                ("NAME", "Fedora Linux"),
                ("PRETTY_NAME", "A \"quoted\" name"),
                ("VERSION_ID", "40"),
            ]
        );
    }

    #[test]
    fn boot_time_parsing() {
        fn check(stat: &str, expected: Option<&str>) {
            assert_eq!(boot_time(stat).as_deref(), expected, "{stat:?}");
        }
        check("cpu 1 2 3\nbtime 0\n", Some("1970-01-01T00:00:00Z"));
        check(
            "btime 1730448000\nprocesses 5\n",
            Some("2024-11-01T08:00:00Z"),
        );
        check("btime -5\n", None);
        check("btime 99999999999999999\n", None);
        check("btime\n", None);
        check("", None);
    }

    #[test]
    fn virtualization_rules() {
        fn check(
            markers: ContainerMarkers<'_>,
            vendor: Option<&str>,
            product: Option<&str>,
            flag: bool,
            expected: (&str, Option<&str>),
        ) {
            let got = virtualization(&markers, vendor, product, flag);
            assert_eq!(
                (got.kind, got.detail),
                expected,
                "{markers:?} {vendor:?} {product:?} {flag}"
            );
        }
        let none = ContainerMarkers::default;
        check(
            none(),
            Some("Dell Inc."),
            Some("PowerEdge R640"),
            false,
            ("bare_metal", None),
        );
        check(none(), None, None, false, ("bare_metal", None));
        check(none(), None, None, true, ("vm", None));
        check(
            none(),
            Some("QEMU"),
            Some("Standard PC (i440FX + PIIX, 1996)"),
            true,
            ("vm", Some("qemu")),
        );
        check(
            none(),
            Some("Red Hat"),
            Some("KVM"),
            false,
            ("vm", Some("kvm")),
        );
        check(
            none(),
            Some("VMware, Inc."),
            Some("VMware Virtual Platform"),
            false,
            ("vm", Some("vmware")),
        );
        check(
            none(),
            Some("innotek GmbH"),
            Some("VirtualBox"),
            false,
            ("vm", Some("virtualbox")),
        );
        check(
            none(),
            Some("Xen"),
            Some("HVM domU"),
            false,
            ("vm", Some("xen")),
        );
        check(
            none(),
            Some("Amazon EC2"),
            Some("m5.large"),
            true,
            ("vm", Some("amazon")),
        );
        check(
            none(),
            Some("Amazon EC2"),
            Some("i3.metal"),
            false,
            ("bare_metal", None),
        );
        check(
            none(),
            Some("Google"),
            Some("Google Compute Engine"),
            false,
            ("vm", Some("google")),
        );
        check(
            none(),
            Some("Microsoft Corporation"),
            Some("Virtual Machine"),
            false,
            ("vm", Some("hyperv")),
        );
        check(
            none(),
            Some("Microsoft Corporation"),
            Some("Surface Laptop 5"),
            false,
            ("bare_metal", None),
        );
        check(
            none(),
            Some("Google"),
            Some("Eve"),
            false,
            ("bare_metal", None),
        );
        let docker = ContainerMarkers {
            dockerenv: true,
            ..none()
        };
        check(
            docker,
            Some("QEMU"),
            None,
            true,
            ("container", Some("docker")),
        );
        let podman = ContainerMarkers {
            containerenv: true,
            ..none()
        };
        check(podman, None, None, false, ("container", Some("podman")));
        let nspawn = ContainerMarkers {
            systemd_container: Some("systemd-nspawn".into()),
            ..none()
        };
        check(
            nspawn,
            None,
            None,
            false,
            ("container", Some("systemd-nspawn")),
        );
        let k8s = ContainerMarkers {
            cgroup: "0::/kubepods/burstable/pod1/abc\n",
            ..none()
        };
        check(k8s, None, None, true, ("container", Some("kubernetes")));
        let lxc = ContainerMarkers {
            cgroup: "12:pids:/lxc/c1\n",
            ..none()
        };
        check(lxc, None, None, false, ("container", Some("lxc")));
        let host_cgroup = ContainerMarkers {
            cgroup: "0::/init.scope\n",
            ..none()
        };
        check(host_cgroup, None, None, false, ("bare_metal", None));
    }

    #[test]
    fn hypervisor_flag_is_read_from_flags_only() {
        assert!(has_hypervisor_flag(
            "processor : 0\nflags\t\t: fpu hypervisor sse\n"
        ));
        assert!(!has_hypervisor_flag(
            "processor : 0\nflags\t\t: fpu sse\nmodel name: hypervisor\n"
        ));
        assert!(!has_hypervisor_flag(""));
    }
}
