//! Storage discovery: `disk` CIs (whole block devices from `/sys/block`) and `filesystem` CIs
//! (real mounts from `/proc/self/mounts`, falling back to `/proc/mounts`), each related
//! `host has ...`.
//!
//! Filesystems use the metrics' filter ([`crate::sampler::is_real_filesystem`]) and the same
//! bind-mount rule (one filesystem mounted twice is reported once, at its shortest mountpoint),
//! so the CMDB and the `vigil_filesystem_*` metrics list the same mounts. Sizes need `statvfs`:
//! on the real root (`/`) they come from sysinfo's disk list; under a fixture root they are
//! omitted (a fixture has no filesystems to ask). ZFS datasets carry no size: their capacity is
//! the pool's free space and would change at every pass.
//!
//! Reads only under the configured root; never fails (an unreadable source records one problem
//! and yields nothing), never touches a filesystem it does not report.
//!
//! Attributes of `disk`: `model` (when the device has one; virtio disks do not), `size_bytes`,
//! `rotational`, `removable`.
//! Attributes of `filesystem`: `mountpoint`, `device`, `fs_type`, `size_bytes` (real root only).

use std::collections::BTreeMap;
use std::path::Path;

use vigil_shared::inventory::{ci_type, relation, Ci, CiRef, Relation};

use super::{read, Discovered, Options};
use crate::sampler::is_real_filesystem;

/// Block devices that are not disks: loop images, RAM disks, compressed swap, device-mapper
/// volumes (logical views of real disks), optical drives and unused network block devices.
const SKIPPED_BLOCK_PREFIXES: &[&str] = &["loop", "ram", "zram", "dm-", "sr", "nbd"];

/// Adds `disk` and `filesystem` CIs and `host has` each.
pub fn discover(opts: &Options, out: &mut Discovered) {
    disks(opts, out);
    filesystems(opts, out);
}

fn push_with_host_has(out: &mut Discovered, ci: Ci) {
    out.inventory.relations.push(Relation {
        from: CiRef::new(ci_type::HOST, ci_type::HOST),
        kind: relation::HAS.to_string(),
        to: ci.id(),
    });
    out.inventory.cis.push(ci);
}

fn disks(opts: &Options, out: &mut Discovered) {
    let dir = opts.path("/sys/block");
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if super::is_absent(&e) => {
            out.problem("sysfs-block", format!("/sys/block is not readable: {e}"));
            return;
        }
        Err(e) => {
            out.unreadable(
                &[ci_type::DISK],
                "sysfs-block",
                format!("/sys/block is not readable: {e}"),
            );
            return;
        }
    };
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| !SKIPPED_BLOCK_PREFIXES.iter().any(|p| n.starts_with(p)))
        .collect();
    names.sort();
    for name in names {
        if let Some(ci) = disk_ci(opts, &name) {
            push_with_host_has(out, ci);
        }
    }
}

/// One whole disk; `None` when its size is unreadable or zero (an empty card reader).
fn disk_ci(opts: &Options, name: &str) -> Option<Ci> {
    let file = |rel: &str| {
        read(opts, &format!("/sys/block/{name}/{rel}"))
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
    };
    // `size` counts 512-byte sectors whatever the device's logical block size.
    let sectors: u64 = file("size")?.parse().ok()?;
    let size = sectors.checked_mul(512).filter(|s| *s > 0)?;
    let mut ci = Ci::new(ci_type::DISK, name, name);
    if let Some(model) = file("device/model") {
        ci = ci.attr("model", model);
    }
    ci = ci
        .attr("size_bytes", size)
        .attr(
            "rotational",
            file("queue/rotational").as_deref() == Some("1"),
        )
        .attr("removable", file("removable").as_deref() == Some("1"));
    Some(ci)
}

/// One line of the mount table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub device: String,
    pub mountpoint: String,
    pub fs_type: String,
}

/// Parses a mounts table (`device mountpoint type options dump pass`), decoding the octal
/// escapes (`\040` for a space) of the first two fields. Malformed lines are skipped.
pub fn parse_mounts(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|line| {
            let mut f = line.split_ascii_whitespace();
            Some(Mount {
                device: unescape(f.next()?),
                mountpoint: unescape(f.next()?),
                fs_type: f.next()?.to_string(),
            })
        })
        .collect()
}

/// Decodes `\NNN` octal escapes; anything else is kept as is.
fn unescape(s: &str) -> String {
    if !s.contains('\\') {
        return s.to_string();
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 3 < bytes.len() {
            let digits = &bytes[i + 1..i + 4];
            if digits.iter().all(|d| (b'0'..=b'7').contains(d)) {
                let v = digits
                    .iter()
                    .fold(0u32, |acc, d| acc * 8 + u32::from(d - b'0'));
                if let Ok(b) = u8::try_from(v) {
                    out.push(b);
                    i += 4;
                    continue;
                }
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// What the real root adds to a mount: its `st_dev` (bind mounts share it) and total size.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MountStat {
    pub dev_id: Option<u64>,
    pub size_bytes: Option<u64>,
}

/// The filesystems to report, sorted by mountpoint: real filesystems only; a mountpoint listed
/// twice counts once (the last mount hides the earlier); bind mounts (same `st_dev`, or same
/// block device when `st_dev` is unknown) collapse to the shortest mountpoint, as the sampler
/// does.
pub fn select_filesystems(
    mounts: Vec<Mount>,
    stat: &BTreeMap<String, MountStat>,
) -> Vec<(Mount, MountStat)> {
    let mut by_mountpoint: BTreeMap<String, Mount> = BTreeMap::new();
    for m in mounts {
        by_mountpoint.insert(m.mountpoint.clone(), m);
    }
    let mut candidates: Vec<(Mount, MountStat)> = by_mountpoint
        .into_values()
        .filter(|m| is_real_filesystem(&m.fs_type, &m.mountpoint))
        .map(|m| {
            let s = stat.get(&m.mountpoint).copied().unwrap_or_default();
            (m, s)
        })
        .collect();
    #[derive(PartialEq)]
    enum Key<'a> {
        Dev(u64),
        Device(&'a str),
        Unique,
    }
    fn key<'a>(c: &'a (Mount, MountStat)) -> Key<'a> {
        match c.1.dev_id {
            Some(id) => Key::Dev(id),
            None if c.0.device.starts_with('/') => Key::Device(&c.0.device),
            None => Key::Unique,
        }
    }
    candidates.sort_by(|a, b| {
        (a.0.mountpoint.len(), &a.0.mountpoint).cmp(&(b.0.mountpoint.len(), &b.0.mountpoint))
    });
    let mut kept: Vec<(Mount, MountStat)> = Vec::with_capacity(candidates.len());
    for c in candidates {
        let k = key(&c);
        if k == Key::Unique || !kept.iter().any(|k2| key(k2) == k) {
            kept.push(c);
        }
    }
    kept.sort_by(|a, b| a.0.mountpoint.cmp(&b.0.mountpoint));
    kept
}

fn filesystems(opts: &Options, out: &mut Discovered) {
    let mounts = match super::read_existing(opts, "/proc/self/mounts") {
        Ok(None) => super::read_existing(opts, "/proc/mounts"),
        other => other,
    };
    let text = match mounts {
        Ok(Some(text)) => text,
        Ok(None) => {
            out.problem(
                "mounts",
                "neither /proc/self/mounts nor /proc/mounts exists",
            );
            return;
        }
        Err(e) => {
            out.unreadable(
                &[ci_type::FILESYSTEM],
                "mounts",
                format!("the mount table is not readable: {e}"),
            );
            return;
        }
    };
    let stat = if opts.root == Path::new("/") {
        real_root_stats()
    } else {
        BTreeMap::new()
    };
    for (m, s) in select_filesystems(parse_mounts(&text), &stat) {
        let mut ci = Ci::new(
            ci_type::FILESYSTEM,
            m.mountpoint.as_str(),
            m.mountpoint.as_str(),
        )
        .attr("mountpoint", m.mountpoint.as_str())
        .attr("device", m.device)
        .attr("fs_type", m.fs_type.as_str());
        if let Some(size) = s.size_bytes.filter(|_| m.fs_type != "zfs") {
            ci = ci.attr("size_bytes", size);
        }
        push_with_host_has(out, ci);
    }
}

/// `st_dev` and total size of every mount of this host, from sysinfo (stat + statvfs of each
/// mountpoint it lists; no sysfs or I/O counter reads).
fn real_root_stats() -> BTreeMap<String, MountStat> {
    use sysinfo::{DiskRefreshKind, Disks};
    let Ok(disks) =
        Disks::new_with_refreshed_list_specifics(DiskRefreshKind::nothing().with_storage())
    else {
        return BTreeMap::new();
    };
    disks
        .iter()
        .map(|d| {
            (
                d.mount_point().to_string_lossy().into_owned(),
                MountStat {
                    dev_id: d.id(),
                    size_bytes: Some(d.total_space()).filter(|s| *s > 0),
                },
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::super::testing;
    use super::*;
    use serde_json::json;

    /// A CI named by its key.
    fn ci(t: &str, key: &str, attrs: serde_json::Value) -> Ci {
        testing::ci(t, key, key, attrs)
    }

    fn check(root: &str, expected: &[Ci], problems: &[(&str, &str)]) {
        testing::check_host_children(discover, root, "has", expected, problems);
    }

    #[test]
    fn server_disks_and_mounts() {
        let fs = |mp: &str, dev: &str, ty: &str| {
            ci(
                "filesystem",
                mp,
                json!({"mountpoint": mp, "device": dev, "fs_type": ty}),
            )
        };
        check(
            "storage-basic",
            &[
                ci(
                    "disk",
                    "nvme0n1",
                    json!({"model": "Samsung SSD 980 PRO 1TB", "size_bytes": 1_000_204_886_016u64,
                           "rotational": false, "removable": false}),
                ),
                ci(
                    "disk",
                    "sda",
                    json!({"model": "ST4000NM0035-1V4", "size_bytes": 4_000_787_030_016u64,
                           "rotational": true, "removable": false}),
                ),
                ci(
                    "disk",
                    "sdb",
                    json!({"model": "Ultra Fit", "size_bytes": 30_765_219_840u64,
                           "rotational": false, "removable": true}),
                ),
                ci(
                    "disk",
                    "vda",
                    json!({"size_bytes": 21_474_836_480u64, "rotational": true, "removable": false}),
                ),
                fs("/", "/dev/nvme0n1p2", "ext4"),
                fs("/boot/efi", "/dev/nvme0n1p1", "vfat"),
                fs("/srv/data", "/dev/sda1", "xfs"),
                fs("/mnt/my disk", "/dev/sdb1", "exfat"),
                fs("/run/media/alice/USB", "/dev/sdb2", "vfat"),
                fs("/tank/home", "tank/home", "zfs"),
                fs("/var/lib/docker/overlay2/4b1d/merged", "overlay", "overlay"),
            ],
            &[],
        );
    }

    #[test]
    fn mounts_fallback_and_missing_sysfs() {
        check(
            "storage-fallback",
            &[ci(
                "filesystem",
                "/",
                json!({"mountpoint": "/", "device": "/dev/vda1", "fs_type": "ext4"}),
            )],
            &[(
                "sysfs-block",
                "/sys/block is not readable: No such file or directory (os error 2)",
            )],
        );
    }

    #[test]
    fn nothing_readable() {
        let dir = tempfile::tempdir().expect("tempdir");
        let opts = Options {
            root: dir.path().to_path_buf(),
            tags: BTreeMap::new(),
            hostname: None,
        };
        let mut got = Discovered::default();
        discover(&opts, &mut got);
        assert!(got.inventory.cis.is_empty());
        let sources: Vec<&str> = got.problems.iter().map(|p| p.source).collect();
        assert_eq!(sources, ["sysfs-block", "mounts"]);
    }

    #[test]
    fn mount_table_parsing() {
        fn check(text: &str, expected: &[(&str, &str, &str)]) {
            let got = parse_mounts(text);
            let got: Vec<(&str, &str, &str)> = got
                .iter()
                .map(|m| (m.device.as_str(), m.mountpoint.as_str(), m.fs_type.as_str()))
                .collect();
            assert_eq!(got, expected, "{text:?}");
        }
        check("/dev/sda1 / ext4 rw 0 0\n", &[("/dev/sda1", "/", "ext4")]);
        check(
            "/dev/sdb1 /mnt/a\\040b\\011c vfat rw 0 0\n",
            &[("/dev/sdb1", "/mnt/a b\tc", "vfat")],
        );
        // Bad or truncated escapes stay literal; short lines are skipped.
        check(
            "x /m\\9 t\nx /m\\04 t\nx /m\\ t\nonly two\n\n",
            &[
                ("x", "/m\\9", "t"),
                ("x", "/m\\04", "t"),
                ("x", "/m\\", "t"),
            ],
        );
        check("x /m\\777 t\n", &[("x", "/m\\777", "t")]);
    }

    #[test]
    fn bind_mounts_collapse_by_dev_id_or_device() {
        fn m(dev: &str, mp: &str) -> Mount {
            Mount {
                device: dev.into(),
                mountpoint: mp.into(),
                fs_type: "ext4".into(),
            }
        }
        fn check(mounts: Vec<Mount>, stat: &[(&str, u64)], expected: &[&str]) {
            let stat: BTreeMap<String, MountStat> = stat
                .iter()
                .map(|(mp, id)| {
                    (
                        mp.to_string(),
                        MountStat {
                            dev_id: Some(*id),
                            size_bytes: Some(1),
                        },
                    )
                })
                .collect();
            let got: Vec<String> = select_filesystems(mounts, &stat)
                .into_iter()
                .map(|(m, _)| m.mountpoint)
                .collect();
            assert_eq!(got, expected);
        }
        // Same device, no st_dev: shortest mountpoint wins.
        check(
            vec![m("/dev/sda1", "/srv/data/x"), m("/dev/sda1", "/srv")],
            &[],
            &["/srv"],
        );
        // Btrfs subvolumes: one device, different st_dev: both kept.
        check(
            vec![m("/dev/sda2", "/"), m("/dev/sda2", "/home")],
            &[("/", 40), ("/home", 41)],
            &["/", "/home"],
        );
        // Bind mount seen through st_dev although the device names differ.
        check(
            vec![m("/dev/root", "/"), m("/dev/sda1", "/var/lib/x")],
            &[("/", 7), ("/var/lib/x", 7)],
            &["/"],
        );
        // Non-path devices never collapse.
        check(
            vec![m("overlay", "/a"), m("overlay", "/b")],
            &[],
            &["/a", "/b"],
        );
        // Over-mount: the later line wins at one mountpoint.
        let mut over = m("tmpfs", "/data");
        over.fs_type = "tmpfs".into();
        check(vec![m("/dev/sdc1", "/data"), over], &[], &[]);
    }
}
