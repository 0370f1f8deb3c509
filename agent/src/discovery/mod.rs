//! Discovery: what configuration items this host has, read from a configurable root (like
//! node_exporter's `--path.rootfs`) so tests can point it at fixture trees of /proc, /sys, /etc
//! and /var/lib/dpkg.
//!
//! Each source appends CIs and relations to one [`Inventory`]; a source that cannot read what it
//! needs records a [`Problem`] (reported once per source by the caller) and never fails the whole
//! discovery. Nothing here talks to the network.

use std::path::PathBuf;

use vigil_shared::inventory::Inventory;

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
}

/// The most discovery reads of one file (/proc tables of a busy host stay far below it); what
/// lies past it is not read.
pub const MAX_FILE: u64 = 64 << 20;

/// Reads a text file under the root (at most [`MAX_FILE`], invalid UTF-8 replaced), `None`
/// when missing or unreadable.
pub fn read(opts: &Options, abs: &str) -> Option<String> {
    vigil_runtime::fs::read_text_lossy_capped(&opts.path(abs), MAX_FILE).ok()
}
