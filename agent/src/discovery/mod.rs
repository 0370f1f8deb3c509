//! Discovery: what configuration items this host has, read from a configurable root (like
//! node_exporter's `--path.rootfs`) so tests can point it at fixture trees of /proc, /sys, /etc
//! and /var/lib/dpkg.
//!
//! Each source appends CIs and relations to one [`Inventory`]; a source that cannot read what it
//! needs records a [`Problem`] (reported once per source by the caller) and never fails the whole
//! discovery. A source that is absent (no dpkg on an rpm host: the file does not exist) reports
//! nothing and is empty; a source that exists but could not be read (out of file descriptors,
//! permission denied, an I/O error) marks its CI types [`Discovered::failed`], and
//! [`keep_failed`] puts back the CIs of those types from the last inventory, so that a
//! transient failure never retires CIs. Nothing here talks to the network.

use std::collections::BTreeSet;
use std::path::PathBuf;

use vigil_shared::inventory::{CiRef, Inventory};

pub mod hardware;
pub mod host;
pub mod network;
pub mod packages;
pub mod sockets;
pub mod storage;
pub mod systemd;
#[cfg(test)]
pub(crate) mod testing;

/// A source that could not be read (or only partly).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The source, e.g. `dpkg`, `dmi`, `proc-net`.
    pub source: &'static str,
    pub message: String,
}

/// Where to read from and what to add.
#[derive(Debug, Clone)]
pub struct Options {
    /// Filesystem root to read /proc, /sys, /etc, /var from ("/" on a real host).
    pub root: PathBuf,
    /// Tags from the agent config, attached to the host CI.
    pub tags: std::collections::BTreeMap<String, String>,
    /// Host name override from the agent config.
    pub hostname: Option<String>,
}

impl Options {
    /// `root` joined with an absolute path such as `/proc/net/tcp`.
    pub fn path(&self, abs: &str) -> PathBuf {
        self.root.join(abs.trim_start_matches('/'))
    }
}

/// Output of one discovery pass.
#[derive(Debug, Clone, Default)]
pub struct Discovered {
    pub inventory: Inventory,
    pub problems: Vec<Problem>,
    /// CI types whose source exists but could not be read this pass: what was found of them is
    /// not the truth ([`keep_failed`]).
    pub failed: BTreeSet<&'static str>,
}

/// Runs every source and returns the canonical inventory.
pub fn discover(opts: &Options) -> Discovered {
    let mut out = Discovered::default();
    host::discover(opts, &mut out);
    hardware::discover(opts, &mut out);
    storage::discover(opts, &mut out);
    network::discover(opts, &mut out);
    packages::discover(opts, &mut out);
    sockets::discover(opts, &mut out);
    systemd::discover(opts, &mut out);
    out.inventory.canonicalize();
    out
}

impl Discovered {
    pub fn problem(&mut self, source: &'static str, message: impl Into<String>) {
        self.problems.push(Problem {
            source,
            message: message.into(),
        });
    }

    /// A source that exists could not be read: a problem, and its CI types `failed`.
    pub fn unreadable(
        &mut self,
        ci_types: &[&'static str],
        source: &'static str,
        message: impl Into<String>,
    ) {
        self.failed.extend(ci_types);
        self.problem(source, message);
    }
}

/// Whether a read error means "there is no such source here" (the file or directory does not
/// exist) rather than "it could not be read".
pub fn is_absent(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
    )
}

/// Puts back, for every [`Discovered::failed`] type, the CIs of that type (and the relations
/// that touch them) from `previous`, the last inventory sent, in place of what this pass found
/// of them. Without a previous inventory (the first pass since the agent started) what was
/// found is all there is.
pub fn keep_failed(found: &mut Discovered, previous: Option<&Inventory>) {
    let (Some(previous), false) = (previous, found.failed.is_empty()) else {
        return;
    };
    let failed = |t: &str| found.failed.contains(t);
    let inv = &mut found.inventory;
    inv.cis.retain(|c| !failed(&c.ci_type));
    inv.relations
        .retain(|r| !failed(&r.from.ci_type) && !failed(&r.to.ci_type));
    inv.cis
        .extend(previous.cis.iter().filter(|c| failed(&c.ci_type)).cloned());
    if failed(vigil_shared::inventory::ci_type::LISTENING_SERVICE) {
        // The same tables give the outbound connections.
        inv.connections = previous.connections.clone();
    }
    let present: BTreeSet<CiRef> = inv.cis.iter().map(|c| c.id()).collect();
    inv.relations.extend(
        previous
            .relations
            .iter()
            .filter(|r| failed(&r.from.ci_type) || failed(&r.to.ci_type))
            .filter(|r| present.contains(&r.from) && present.contains(&r.to))
            .cloned(),
    );
    inv.canonicalize();
}

/// The most discovery reads of one file (/proc tables of a busy host stay far below it); what
/// lies past it is not read.
pub const MAX_FILE: u64 = 64 << 20;

/// Reads a text file under the root (at most [`MAX_FILE`], invalid UTF-8 replaced), `None`
/// when missing or unreadable.
pub fn read(opts: &Options, abs: &str) -> Option<String> {
    vigil_runtime::fs::read_text_lossy_capped(&opts.path(abs), MAX_FILE).ok()
}

/// [`read`], telling a file that is not there (`Ok(None)`) from one that could not be read.
pub fn read_existing(opts: &Options, abs: &str) -> std::io::Result<Option<String>> {
    match vigil_runtime::fs::read_text_lossy_capped(&opts.path(abs), MAX_FILE) {
        Ok(text) => Ok(Some(text)),
        Err(e) if is_absent(&e) => Ok(None),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vigil_shared::inventory::{ci_type, relation, Ci, Relation};

    fn rel(from: (&str, &str), kind: &str, to: (&str, &str)) -> Relation {
        Relation {
            from: CiRef::new(from.0, from.1),
            kind: kind.into(),
            to: CiRef::new(to.0, to.1),
        }
    }

    #[test]
    fn failed_types_come_back_from_the_last_inventory_with_their_relations() {
        let host = (ci_type::HOST, "host");
        let ssh = (ci_type::LISTENING_SERVICE, "tcp:22");
        let mut previous = Inventory {
            cis: vec![
                Ci::new(ci_type::HOST, "host", "web1"),
                Ci::new(ci_type::LISTENING_SERVICE, "tcp:22", "ssh"),
                Ci::new(ci_type::PACKAGE, "openssh-server:amd64", "openssh-server"),
                Ci::new(ci_type::PACKAGE, "gone:amd64", "gone"),
            ],
            relations: vec![
                rel(
                    ssh,
                    relation::PROVIDED_BY,
                    (ci_type::PACKAGE, "openssh-server:amd64"),
                ),
                rel(host, relation::RUNS, ssh),
            ],
            connections: vec![],
        };
        previous.canonicalize();
        // This pass: the packages could not be read (a partial list), and the listening
        // service that used `gone` is gone itself.
        let mut found = Discovered::default();
        found.inventory.cis = vec![
            Ci::new(ci_type::HOST, "host", "web1"),
            Ci::new(ci_type::PACKAGE, "half-read:amd64", "half-read"),
        ];
        found.unreadable(&[ci_type::PACKAGE], "dpkg", "EMFILE");
        keep_failed(&mut found, Some(&previous));
        let keys: Vec<_> = found
            .inventory
            .cis
            .iter()
            .map(|c| (c.ci_type.as_str(), c.key.as_str()))
            .collect();
        assert_eq!(
            keys,
            [
                (ci_type::HOST, "host"),
                (ci_type::PACKAGE, "gone:amd64"),
                (ci_type::PACKAGE, "openssh-server:amd64"),
            ]
        );
        // The provided_by relation lost its service this pass, so it goes.
        assert!(
            found.inventory.relations.is_empty(),
            "{:?}",
            found.inventory.relations
        );

        // Without a previous inventory, what was found is what is sent.
        let mut first = Discovered::default();
        first.inventory.cis = vec![Ci::new(ci_type::PACKAGE, "half-read:amd64", "x")];
        first.unreadable(&[ci_type::PACKAGE], "dpkg", "EMFILE");
        keep_failed(&mut first, None);
        assert_eq!(first.inventory.cis.len(), 1);
    }

    #[test]
    fn absent_is_not_found_and_unreadable_is_anything_else() {
        use std::io::{Error, ErrorKind};
        assert!(is_absent(&Error::from(ErrorKind::NotFound)));
        assert!(!is_absent(&Error::from_raw_os_error(libc::EMFILE)));
        assert!(!is_absent(&Error::from(ErrorKind::PermissionDenied)));
        assert!(!is_absent(&Error::from_raw_os_error(libc::EISDIR)));
    }
}
