//! Host metric sampling: CPU, load, memory, swap, filesystems, network counters and uptime,
//! read through sysinfo (network counters from `/proc/net/dev`, see [`parse_net_dev`]) and
//! turned into wire [`Sample`]s named after [`vigil_shared::metric_names`].
//!
//! A [`Sampler`] is kept for the life of the agent and sampled once per interval. It must stay
//! cheap (target: at most 2 ms of CPU per cycle, small RSS), so it must never:
//! - refresh processes (a full process refresh costs 13-17 ms),
//! - read per-interface sysfs files (sysinfo's network refresh opens 9 files per interface plus
//!   a getifaddrs dump, ~90 us per interface: milliseconds on a host with many veths),
//! - rebuild the disk list when the mount table did not change (it refreshes usage in place),
//! - call `statvfs` each cycle on a mount it does not report (pseudo filesystems, bind mounts);
//!   NFS/CIFS/autofs mounts are never touched at all (sysinfo skips them: statvfs may hang),
//! - fail a cycle because one source is unreadable: that source is skipped with a debug log.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::Path;

use sysinfo::{CpuRefreshKind, DiskRefreshKind, Disks, MemoryRefreshKind, RefreshKind, System};
use vigil_shared::metric_names as m;
use vigil_shared::proto::Sample;

/// Where the kernel lists mounts; read each cycle only to notice that the list changed.
const PROC_MOUNTS: &str = "/proc/mounts";
/// Per-interface byte counters of this network namespace, all interfaces in one read.
const PROC_NET_DEV: &str = "/proc/net/dev";

/// Filesystem types that hold no user data (kernel interfaces, memory-backed or image mounts).
const PSEUDO_FS_TYPES: &[&str] = &[
    "autofs",
    "binfmt_misc",
    "bpf",
    "cgroup",
    "cgroup2",
    "configfs",
    "debugfs",
    "devpts",
    "devtmpfs",
    "efivarfs",
    "fuse.gvfsd-fuse",
    "fuse.lxcfs",
    "fuse.portal",
    "fuse.snapfuse",
    "fusectl",
    "hugetlbfs",
    "mqueue",
    "nsfs",
    "proc",
    "pstore",
    "ramfs",
    "rootfs",
    "rpc_pipefs",
    "securityfs",
    "selinuxfs",
    "squashfs",
    "sysfs",
    "tmpfs",
    "tracefs",
];

/// Mount trees that only hold kernel or runtime state (the roots themselves included).
const HIDDEN_MOUNT_ROOTS: &[&str] = &["/proc", "/sys", "/dev", "/run", "/snap"];

/// Under `/run`, udisks mounts removable media: those are real and stay reported.
const RUN_MEDIA: &str = "/run/media";

#[derive(Debug, thiserror::Error)]
pub enum SamplerError {
    #[error("cannot read system information: {0}")]
    System(#[source] sysinfo::Error),
    #[error("cannot read the disk list: {0}")]
    Disks(#[source] sysinfo::Error),
}

/// One filesystem the sampler reports: its index in the sysinfo disk list and its labels.
#[derive(Debug)]
struct Filesystem {
    index: usize,
    device: String,
    mountpoint: String,
}

/// Samples host metrics. Create once, call [`Sampler::sample`] every interval.
pub struct Sampler {
    system: System,
    disks: Disks,
    /// Reported filesystems (filtered, deduplicated), sorted by mountpoint.
    filesystems: Vec<Filesystem>,
    /// Hash of the last `/proc/mounts` content the disk list was built from.
    mounts_hash: u64,
    /// Reused read buffer for `/proc/mounts`.
    mounts_buf: Vec<u8>,
    /// Reused read buffer for `/proc/net/dev`.
    net_buf: String,
}

impl Sampler {
    /// Builds a sampler and primes the CPU counters, so that the first [`Sampler::sample`]
    /// already reports a usage ratio (averaged since boot if it comes less than 200 ms later,
    /// over the elapsed time otherwise).
    pub fn new() -> Result<Sampler, SamplerError> {
        let system = System::new_with_specifics(RefreshKind::nothing().with_cpu(cpu_kind()))
            .map_err(SamplerError::System)?;
        let disks = Disks::new().map_err(SamplerError::Disks)?;
        let mut sampler = Sampler {
            system,
            disks,
            filesystems: Vec::new(),
            mounts_hash: 0,
            mounts_buf: Vec::with_capacity(4096),
            net_buf: String::with_capacity(2048),
        };
        sampler.reload_disks();
        Ok(sampler)
    }

    /// Takes one sample of every host metric, stamped `now_ms`. Labels are sorted by name;
    /// filesystems come in mountpoint order and interfaces in name order.
    pub fn sample(&mut self, now_ms: i64) -> Vec<Sample> {
        self.system.refresh_cpu_specifics(cpu_kind());
        self.system
            .refresh_memory_specifics(MemoryRefreshKind::nothing().with_ram().with_swap());
        self.refresh_disks();
        let net_ok = self.read_net_dev();

        let mut out = Vec::with_capacity(16 + 2 * self.filesystems.len());
        let gauge = |out: &mut Vec<Sample>, name: &str, value: f64| {
            out.push(sample(now_ms, name, Vec::new(), value));
        };

        let cpu = f64::from(self.system.global_cpu_usage()) / 100.0;
        gauge(&mut out, m::CPU_USAGE_RATIO, clamp_ratio(cpu));

        match System::load_average() {
            Ok(load) => {
                gauge(&mut out, m::LOAD1, load.one);
                gauge(&mut out, m::LOAD5, load.five);
                gauge(&mut out, m::LOAD15, load.fifteen);
            }
            Err(e) => tracing::debug!(error = %e, "load average unavailable"),
        }

        let total = self.system.total_memory();
        let used = total.saturating_sub(self.system.available_memory());
        gauge(&mut out, m::MEMORY_USED_BYTES, used as f64);
        gauge(&mut out, m::MEMORY_TOTAL_BYTES, total as f64);
        gauge(&mut out, m::SWAP_USED_BYTES, self.system.used_swap() as f64);

        for fs in &self.filesystems {
            let Some(disk) = self.disks.get(fs.index) else {
                continue;
            };
            let size = disk.total_space();
            if size == 0 {
                continue; // statvfs never succeeded: nothing meaningful to report.
            }
            let used = size.saturating_sub(disk.available_space());
            let labels = || {
                vec![
                    ("device".to_owned(), fs.device.clone()),
                    ("mountpoint".to_owned(), fs.mountpoint.clone()),
                ]
            };
            out.push(sample(
                now_ms,
                m::FILESYSTEM_USED_RATIO,
                labels(),
                clamp_ratio(used as f64 / size as f64),
            ));
            out.push(sample(
                now_ms,
                m::FILESYSTEM_SIZE_BYTES,
                labels(),
                size as f64,
            ));
        }

        if net_ok {
            let mut interfaces: Vec<NetDev<'_>> = parse_net_dev(&self.net_buf).collect();
            interfaces.sort_unstable_by(|a, b| a.name.cmp(b.name));
            for dev in interfaces {
                let labels = || vec![("interface".to_owned(), dev.name.to_owned())];
                out.push(sample(
                    now_ms,
                    m::NETWORK_RECEIVE_BYTES_TOTAL,
                    labels(),
                    dev.rx_bytes as f64,
                ));
                out.push(sample(
                    now_ms,
                    m::NETWORK_TRANSMIT_BYTES_TOTAL,
                    labels(),
                    dev.tx_bytes as f64,
                ));
            }
        }

        match System::uptime() {
            Ok(secs) => gauge(&mut out, m::UPTIME_SECONDS, secs as f64),
            Err(e) => tracing::debug!(error = %e, "uptime unavailable"),
        }
        out
    }

    /// Refreshes filesystem usage in place, rebuilding the list only when the mount table changed.
    fn refresh_disks(&mut self) {
        if self.read_mounts_hash() != Some(self.mounts_hash) {
            self.reload_disks();
            return;
        }
        let storage = DiskRefreshKind::nothing().with_storage();
        for fs in &self.filesystems {
            if let Some(disk) = self.disks.get_mut(fs.index) {
                disk.refresh_specifics(storage);
            }
        }
    }

    /// Re-reads the mount table and recomputes which filesystems are reported.
    fn reload_disks(&mut self) {
        // An unreadable /proc/mounts yields hash 0 and an empty list; the next cycle retries.
        self.mounts_hash = self.read_mounts_hash().unwrap_or(0);
        // Only the mount list and sizes: no disk kind (sysfs reads) and no I/O counters.
        self.disks
            .refresh_specifics(true, DiskRefreshKind::nothing().with_storage());
        let candidates: Vec<FsCandidate> = self
            .disks
            .iter()
            .enumerate()
            .filter(|(_, d)| {
                is_real_filesystem(
                    &d.file_system().to_string_lossy(),
                    &mount_str(d.mount_point()),
                )
            })
            .map(|(index, d)| FsCandidate {
                index,
                device: d.name().to_string_lossy().into_owned(),
                mountpoint: mount_str(d.mount_point()),
                dev_id: d.id(),
            })
            .collect();
        self.filesystems = dedupe_filesystems(candidates)
            .into_iter()
            .map(|c| Filesystem {
                index: c.index,
                device: c.device,
                mountpoint: c.mountpoint,
            })
            .collect();
        tracing::debug!(
            filesystems = self.filesystems.len(),
            "filesystem list reloaded"
        );
    }

    /// Reads `/proc/net/dev` into the reused buffer; false (and a debug log) if unreadable.
    fn read_net_dev(&mut self) -> bool {
        use std::io::Read;
        self.net_buf.clear();
        let read =
            std::fs::File::open(PROC_NET_DEV).and_then(|mut f| f.read_to_string(&mut self.net_buf));
        match read {
            Ok(_) => true,
            Err(e) => {
                tracing::debug!(error = %e, "network counters unavailable");
                false
            }
        }
    }

    /// Hash of the current `/proc/mounts`, or `None` if it cannot be read.
    fn read_mounts_hash(&mut self) -> Option<u64> {
        use std::io::Read;
        self.mounts_buf.clear();
        let mut file = std::fs::File::open(PROC_MOUNTS).ok()?;
        file.read_to_end(&mut self.mounts_buf).ok()?;
        let mut hasher = DefaultHasher::new();
        self.mounts_buf.hash(&mut hasher);
        Some(hasher.finish())
    }
}

/// Whether a mount holds user data worth reporting: not a pseudo or memory-backed filesystem
/// type and not under `/proc`, `/sys`, `/dev`, `/run` (except removable media under
/// `/run/media`) or `/snap`. `overlay` (container roots) is kept.
pub fn is_real_filesystem(fs_type: &str, mountpoint: &str) -> bool {
    if PSEUDO_FS_TYPES.contains(&fs_type) {
        return false;
    }
    let path = Path::new(mountpoint);
    if path.starts_with(RUN_MEDIA) {
        return true;
    }
    !HIDDEN_MOUNT_ROOTS.iter().any(|root| path.starts_with(root))
}

/// This host's name: the kernel hostname, or `"localhost"` if it cannot be read.
pub fn hostname() -> String {
    let from_sysinfo = System::host_name().ok();
    let from_proc = || std::fs::read_to_string("/proc/sys/kernel/hostname").ok();
    from_sysinfo
        .into_iter()
        .chain(from_proc())
        .map(|name| name.trim().to_owned())
        .find(|name| !name.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}

/// One interface's cumulative byte counters, as listed in `/proc/net/dev`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NetDev<'a> {
    pub name: &'a str,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
}

/// Parses `/proc/net/dev`: two header lines, then `name: rx_bytes rx_packets ... (8 receive
/// fields) tx_bytes ...` per interface. Malformed lines are skipped, never a panic. Interface
/// names cannot contain `:`, and old kernels may glue the first number to the colon.
pub fn parse_net_dev(text: &str) -> impl Iterator<Item = NetDev<'_>> {
    text.lines().filter_map(|line| {
        let (name, rest) = line.split_once(':')?;
        let name = name.trim();
        if name.is_empty() || name.contains('|') {
            return None;
        }
        let mut fields = rest.split_ascii_whitespace();
        let rx_bytes = fields.next()?.parse().ok()?;
        let tx_bytes = fields.nth(7)?.parse().ok()?;
        Some(NetDev {
            name,
            rx_bytes,
            tx_bytes,
        })
    })
}

/// A real filesystem before deduplication.
#[derive(Debug, Clone, PartialEq)]
struct FsCandidate {
    index: usize,
    device: String,
    mountpoint: String,
    /// `st_dev` of the mountpoint: equal for bind mounts of one filesystem.
    dev_id: Option<u64>,
}

/// Keeps one entry per filesystem: bind mounts (same `st_dev`, or same block device when
/// `st_dev` is unknown) collapse to the shortest mountpoint. Output is sorted by mountpoint.
fn dedupe_filesystems(mut candidates: Vec<FsCandidate>) -> Vec<FsCandidate> {
    #[derive(PartialEq)]
    enum Key<'a> {
        Dev(u64),
        Device(&'a str),
        Unique,
    }
    fn key(c: &FsCandidate) -> Key<'_> {
        match c.dev_id {
            Some(id) => Key::Dev(id),
            None if c.device.starts_with('/') => Key::Device(&c.device),
            None => Key::Unique,
        }
    }
    // Shortest mountpoint first (ties: alphabetical), so the first of each key wins.
    candidates.sort_by(|a, b| {
        (a.mountpoint.len(), &a.mountpoint).cmp(&(b.mountpoint.len(), &b.mountpoint))
    });
    let mut kept: Vec<FsCandidate> = Vec::with_capacity(candidates.len());
    for c in candidates {
        let k = key(&c);
        if k == Key::Unique || !kept.iter().any(|k2| key(k2) == k) {
            kept.push(c);
        }
    }
    kept.sort_by(|a, b| a.mountpoint.cmp(&b.mountpoint));
    kept
}

fn cpu_kind() -> CpuRefreshKind {
    CpuRefreshKind::nothing().with_usage()
}

fn mount_str(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}

fn clamp_ratio(v: f64) -> f64 {
    if v.is_finite() {
        v.clamp(0.0, 1.0)
    } else {
        0.0
    }
}

fn sample(ts_ms: i64, name: &str, labels: Vec<(String, String)>, value: f64) -> Sample {
    Sample {
        ts_ms,
        name: name.to_owned(),
        labels,
        value,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn real_filesystem_filter() {
        #[track_caller]
        fn check(fs_type: &str, mountpoint: &str, expected: bool) {
            assert_eq!(
                is_real_filesystem(fs_type, mountpoint),
                expected,
                "{fs_type} on {mountpoint}"
            );
        }
        // Real data.
        check("ext4", "/", true);
        check("xfs", "/var/lib/data", true);
        check("btrfs", "/home", true);
        check("vfat", "/boot/efi", true);
        check("overlay", "/", true);
        check("overlay", "/var/lib/docker/overlay2/abc/merged", true);
        check("zfs", "/tank", true);
        check("ext4", "/run/media/alice/USB", true);
        check("ext4", "/process", true); // prefix of a name, not of a path
        check("ext4", "/devdata", true);
        check("ext4", "/runner", true);
        check("ext4", "/snapshots", true);
        // Pseudo types, wherever they are mounted.
        for t in PSEUDO_FS_TYPES {
            check(t, "/data", false);
        }
        check("tmpfs", "/tmp", false);
        check("squashfs", "/snap/core/123", false);
        check("fuse.lxcfs", "/var/lib/lxcfs", false);
        check("fuse.gvfsd-fuse", "/run/user/1000/gvfs", false);
        // Hidden trees, whatever the type.
        check("ext4", "/proc", false);
        check("ext4", "/proc/sys/fs/binfmt_misc", false);
        check("ext4", "/sys/fs/cgroup", false);
        check("ext4", "/dev", false);
        check("ext4", "/dev/shm", false);
        check("ext4", "/run", false);
        check("ext4", "/run/user/1000", false);
        check("ext4", "/run/docker/netns/x", false);
        check("ext4", "/snap", false);
        check("ext4", "/snap/firefox/1", false);
    }

    #[test]
    fn bind_mounts_are_deduplicated() {
        fn fs(index: usize, device: &str, mountpoint: &str, dev_id: Option<u64>) -> FsCandidate {
            FsCandidate {
                index,
                device: device.to_owned(),
                mountpoint: mountpoint.to_owned(),
                dev_id,
            }
        }
        #[track_caller]
        fn check(input: Vec<FsCandidate>, expected_mounts: &[&str]) {
            let got: Vec<String> = dedupe_filesystems(input)
                .into_iter()
                .map(|c| c.mountpoint)
                .collect();
            assert_eq!(got, expected_mounts);
        }
        check(vec![], &[]);
        // Same st_dev: the shortest mountpoint wins, whatever the list order.
        check(
            vec![
                fs(0, "/dev/vda", "/var/lib/kubelet/pods/x", Some(1)),
                fs(1, "/dev/vda", "/", Some(1)),
                fs(2, "/dev/vdb", "/data", Some(2)),
            ],
            &["/", "/data"],
        );
        // Equal lengths: alphabetical, so the choice is stable.
        check(
            vec![
                fs(0, "/dev/sda", "/b", Some(7)),
                fs(1, "/dev/sda", "/a", Some(7)),
            ],
            &["/a"],
        );
        // Btrfs subvolumes: one device name, distinct st_dev, both kept.
        check(
            vec![
                fs(0, "/dev/sda2", "/home", Some(40)),
                fs(1, "/dev/sda2", "/", Some(41)),
            ],
            &["/", "/home"],
        );
        // Overlays share the name "overlay" but are distinct filesystems.
        check(
            vec![
                fs(0, "overlay", "/var/lib/docker/a/merged", Some(50)),
                fs(1, "overlay", "/var/lib/docker/b/merged", Some(51)),
            ],
            &["/var/lib/docker/a/merged", "/var/lib/docker/b/merged"],
        );
        // Unknown st_dev: fall back to the block device name; non-devices are never merged.
        check(
            vec![
                fs(0, "/dev/vdc", "/srv/bind", None),
                fs(1, "/dev/vdc", "/srv", None),
                fs(2, "overlay", "/o1", None),
                fs(3, "overlay", "/o2", None),
            ],
            &["/o1", "/o2", "/srv"],
        );
        // The kept entry keeps its own index into the disk list.
        let kept = dedupe_filesystems(vec![
            fs(4, "/dev/vda", "/mnt/x", Some(1)),
            fs(9, "/dev/vda", "/mnt", Some(1)),
        ]);
        assert_eq!(kept.iter().map(|c| c.index).collect::<Vec<_>>(), [9]);
    }

    #[test]
    fn net_dev_parsing() {
        #[track_caller]
        fn check(text: &str, expected: &[(&str, u64, u64)]) {
            let got: Vec<(&str, u64, u64)> = parse_net_dev(text)
                .map(|d| (d.name, d.rx_bytes, d.tx_bytes))
                .collect();
            assert_eq!(got, expected);
        }
        const HEADER: &str = "Inter-|   Receive                                                |  Transmit\n face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n";
        check(HEADER, &[]);
        check("", &[]);
        check(
            &format!(
                "{HEADER}    lo:    3193      29    0    0    0     0          0         0     3193      29    0    0    0     0       0          0\n  eth0: 99189386    3972    0    0    0     0          0         0   297759    2467    0    0    0     0       0          0\n"
            ),
            &[("lo", 3193, 3193), ("eth0", 99_189_386, 297_759)],
        );
        // Old kernels glue a wide first number to the colon; counters near u64::MAX parse.
        check(
            "eth1:18446744073709551615 1 0 0 0 0 0 0 42 1 0 0 0 0 0 0",
            &[("eth1", u64::MAX, 42)],
        );
        // Names with dots and dashes are kept verbatim.
        check(
            "veth1a2b-c.3: 10 0 0 0 0 0 0 0 20 0 0 0 0 0 0 0",
            &[("veth1a2b-c.3", 10, 20)],
        );
        // Malformed lines are skipped: too few fields, non-numbers, no name, no colon.
        check("eth0: 1 2 3", &[]);
        check("eth0: x 0 0 0 0 0 0 0 20 0 0 0 0 0 0 0", &[]);
        check("eth0: 1 0 0 0 0 0 0 0 -5 0 0 0 0 0 0 0", &[]);
        check(": 1 0 0 0 0 0 0 0 2 0 0 0 0 0 0 0", &[]);
        check("eth0 1 0 0 0 0 0 0 0 2 0 0 0 0 0 0 0", &[]);
        check(
            "garbage\nwlan0: 5 0 0 0 0 0 0 0 6 0 0 0 0 0 0 0\n\u{0}\u{ff}:",
            &[("wlan0", 5, 6)],
        );
    }

    #[test]
    fn network_counters_match_sysfs() {
        // Cross-check the /proc/net/dev reading against sysinfo's sysfs reading for loopback,
        // whose counters only move when something on this host talks to itself.
        let mut sampler = Sampler::new().expect("sampler");
        let samples = sampler.sample(0);
        let lo_rx = samples
            .iter()
            .find(|s| {
                s.name == m::NETWORK_RECEIVE_BYTES_TOTAL
                    && s.labels == [("interface".to_owned(), "lo".to_owned())]
            })
            .map(|s| s.value)
            .expect("lo");
        let sysfs: f64 = std::fs::read_to_string("/sys/class/net/lo/statistics/rx_bytes")
            .expect("sysfs")
            .trim()
            .parse()
            .expect("number");
        assert!(sysfs >= lo_rx, "sysfs {sysfs} < proc {lo_rx}");
        assert!(
            sysfs - lo_rx < 10_000_000.0,
            "sysfs {sysfs} far from proc {lo_rx}"
        );
    }

    #[test]
    fn sample_reports_every_host_metric_on_this_host() {
        let mut sampler = Sampler::new().expect("sampler");
        for now in [1_000, 2_000] {
            let samples = sampler.sample(now);
            for always in [
                m::CPU_USAGE_RATIO,
                m::LOAD1,
                m::LOAD5,
                m::LOAD15,
                m::MEMORY_USED_BYTES,
                m::MEMORY_TOTAL_BYTES,
                m::SWAP_USED_BYTES,
                m::UPTIME_SECONDS,
            ] {
                let n = samples.iter().filter(|s| s.name == always).count();
                assert_eq!(n, 1, "{always} appears {n} times");
            }
            for s in &samples {
                assert_eq!(s.ts_ms, now);
                assert!(s.value.is_finite() && s.value >= 0.0, "{s:?}");
                assert!(m::host_metric(&s.name).is_some(), "unknown name {}", s.name);
                let names: Vec<&str> = s.labels.iter().map(|(k, _)| k.as_str()).collect();
                let mut sorted = names.clone();
                sorted.sort_unstable();
                assert_eq!(names, sorted, "labels not sorted: {s:?}");
                let expected: Vec<&str> = m::host_metric(&s.name)
                    .map(|h| h.labels.to_vec())
                    .unwrap_or_default();
                let mut expected_sorted = expected.clone();
                expected_sorted.sort_unstable();
                assert_eq!(names, expected_sorted, "labels of {s:?}");
            }
            let value = |name: &str| samples.iter().find(|s| s.name == name).map(|s| s.value);
            let cpu = value(m::CPU_USAGE_RATIO).expect("cpu");
            assert!((0.0..=1.0).contains(&cpu), "cpu {cpu}");
            let total = value(m::MEMORY_TOTAL_BYTES).expect("total");
            let used = value(m::MEMORY_USED_BYTES).expect("used");
            assert!(total > 0.0 && used <= total, "memory {used}/{total}");
            for s in samples
                .iter()
                .filter(|s| s.name == m::FILESYSTEM_USED_RATIO)
            {
                assert!((0.0..=1.0).contains(&s.value), "{s:?}");
            }
            // Every reported filesystem is real and reported once.
            let mut mounts: Vec<&str> = samples
                .iter()
                .filter(|s| s.name == m::FILESYSTEM_SIZE_BYTES)
                .filter_map(|s| s.labels.iter().find(|(k, _)| k == "mountpoint"))
                .map(|(_, v)| v.as_str())
                .collect();
            let n = mounts.len();
            mounts.dedup();
            assert_eq!(mounts.len(), n, "duplicate filesystems");
            // Loopback is kept (users filter), and exists on every Linux host.
            assert!(samples
                .iter()
                .any(|s| s.name == m::NETWORK_RECEIVE_BYTES_TOTAL
                    && s.labels == [("interface".to_owned(), "lo".to_owned())]));
        }
    }

    #[test]
    fn root_filesystem_is_reported_when_real() {
        // On this host / is a real filesystem unless the test runs in an odd sandbox; check
        // against /proc/mounts directly rather than assuming.
        let mounts = std::fs::read_to_string(PROC_MOUNTS).expect("mounts");
        let root_is_real = mounts.lines().any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() > 2 && f[1] == "/" && is_real_filesystem(f[2], f[1])
        });
        let mut sampler = Sampler::new().expect("sampler");
        let samples = sampler.sample(0);
        let has_root = samples.iter().any(|s| {
            s.name == m::FILESYSTEM_SIZE_BYTES
                && s.labels.iter().any(|(k, v)| k == "mountpoint" && v == "/")
        });
        assert_eq!(has_root, root_is_real);
    }

    #[test]
    fn hostname_is_not_empty() {
        let name = hostname();
        assert!(!name.is_empty() && name.trim() == name, "{name:?}");
    }
}
