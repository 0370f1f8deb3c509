//! Listening services and outbound connections, from `/proc/net/{tcp,tcp6,udp,udp6}` and the
//! socket inodes behind `/proc/<pid>/fd/*`.
//!
//! One `listening_service` CI per (protocol, port), key `proto:port` (`tcp:22`, `udp6:53`), with
//! the bound address(es), the owning process name and its executable; host `runs` it, and it is
//! `provided_by` the dpkg package that owns the executable (packages are discovered first).
//! Established TCP connections whose local port is not a listening port of this host are client
//! connections: they go to `Inventory::connections` for the collector's dependency mapping.
//!
//! Must never: put a pid (or anything else that changes on a restart) in CI attributes, panic on
//! a malformed line (skipped and counted), or fail the pass because a process could not be read
//! (unreadable processes are counted in one problem).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;

use vigil_shared::inventory::{ci_type, relation, Ci, CiRef, OutboundConnection, Relation};

use super::{packages, Discovered, Options, MAX_FILE};

/// Problem source for the `/proc/net` tables.
pub const SOURCE_NET: &str = "proc-net";
/// Problem source for processes whose sockets could not be read (not running as root).
pub const SOURCE_FD: &str = "proc-fd";

/// TCP state `TCP_ESTABLISHED`.
const TCP_ESTABLISHED: u8 = 0x01;
/// TCP state `TCP_CLOSE`: what an unconnected UDP socket shows.
const TCP_CLOSE: u8 = 0x07;
/// TCP state `TCP_LISTEN`.
const TCP_LISTEN: u8 = 0x0A;

/// A socket table and the protocol name it gives its CIs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Proto {
    Tcp,
    Tcp6,
    Udp,
    Udp6,
}

impl Proto {
    pub const ALL: [Proto; 4] = [Proto::Tcp, Proto::Tcp6, Proto::Udp, Proto::Udp6];

    /// `tcp`, `tcp6`, `udp`, `udp6` (also the file name under /proc/net).
    pub fn name(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Tcp6 => "tcp6",
            Proto::Udp => "udp",
            Proto::Udp6 => "udp6",
        }
    }

    fn is_v6(self) -> bool {
        matches!(self, Proto::Tcp6 | Proto::Udp6)
    }

    fn is_tcp(self) -> bool {
        matches!(self, Proto::Tcp | Proto::Tcp6)
    }
}

/// One row of a /proc/net socket table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SocketEntry {
    pub proto: Proto,
    pub local_ip: IpAddr,
    pub local_port: u16,
    pub remote_ip: IpAddr,
    pub remote_port: u16,
    /// Kernel TCP state number (`0A` listen, `01` established, `07` close).
    pub state: u8,
    pub inode: u64,
}

impl SocketEntry {
    /// A TCP listener, or a UDP socket bound to a port with no remote (a UDP server).
    pub fn is_listening(&self) -> bool {
        if self.proto.is_tcp() {
            self.state == TCP_LISTEN
        } else {
            self.state == TCP_CLOSE
                && self.local_port != 0
                && self.remote_port == 0
                && self.remote_ip.is_unspecified()
        }
    }

    /// An established TCP connection.
    pub fn is_established_tcp(&self) -> bool {
        self.proto.is_tcp() && self.state == TCP_ESTABLISHED
    }
}

/// Parses one /proc/net/{tcp,tcp6,udp,udp6} table; returns its rows and the number of malformed
/// lines skipped (the header is not counted).
pub fn parse_table(proto: Proto, text: &str) -> (Vec<SocketEntry>, usize) {
    let mut entries = Vec::new();
    let mut malformed = 0usize;
    for line in text.lines().skip(1) {
        if line.trim().is_empty() {
            continue;
        }
        match parse_line(proto, line) {
            Some(e) => entries.push(e),
            None => malformed += 1,
        }
    }
    (entries, malformed)
}

/// `sl local rem st tx:rx tr:when retrnsmt uid timeout inode ...`
fn parse_line(proto: Proto, line: &str) -> Option<SocketEntry> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    if fields.len() < 10 || !fields[0].ends_with(':') {
        return None;
    }
    let (local_ip, local_port) = parse_addr(fields[1], proto.is_v6())?;
    let (remote_ip, remote_port) = parse_addr(fields[2], proto.is_v6())?;
    let state = u8::from_str_radix(fields[3], 16).ok()?;
    let inode = fields[9].parse().ok()?;
    Some(SocketEntry {
        proto,
        local_ip,
        local_port,
        remote_ip,
        remote_port,
        state,
        inode,
    })
}

/// `0100007F:0016` -> 127.0.0.1:22. The kernel prints each 32-bit word of the address as the
/// host reads it from memory (in network order): little-endian on the hosts Vigil targets
/// (x86_64, aarch64). The port is printed as a plain number.
fn parse_addr(s: &str, v6: bool) -> Option<(IpAddr, u16)> {
    let (addr, port) = s.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let word = |i: usize| -> Option<[u8; 4]> {
        let hex = addr.get(i * 8..i * 8 + 8)?;
        Some(u32::from_str_radix(hex, 16).ok()?.to_le_bytes())
    };
    let ip = if v6 {
        if addr.len() != 32 {
            return None;
        }
        let mut octets = [0u8; 16];
        for i in 0..4 {
            octets[i * 4..i * 4 + 4].copy_from_slice(&word(i)?);
        }
        IpAddr::V6(Ipv6Addr::from(octets))
    } else {
        if addr.len() != 8 {
            return None;
        }
        IpAddr::V4(Ipv4Addr::from(word(0)?))
    };
    Some((ip, port))
}

/// The process holding a socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    pub pid: u32,
    /// `/proc/<pid>/comm`.
    pub process: Option<String>,
    /// `/proc/<pid>/exe` link target, without a ` (deleted)` suffix.
    pub executable: Option<String>,
}

/// Maps each of `wanted` socket inodes to the lowest-numbered process holding it, by reading
/// the `socket:[INODE]` links in `/proc/<pid>/fd`. Stops as soon as every inode has an owner.
/// Returns the owners and how many processes could not be read (permission denied).
pub fn socket_owners(opts: &Options, wanted: &HashSet<u64>) -> (HashMap<u64, Owner>, usize) {
    let mut owners = HashMap::new();
    let mut unreadable = 0usize;
    if wanted.is_empty() {
        return (owners, unreadable);
    }
    let Ok(dir) = std::fs::read_dir(opts.path("/proc")) else {
        return (owners, unreadable);
    };
    let mut pids: Vec<u32> = dir
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    pids.sort_unstable();
    for pid in pids {
        let fd_dir = opts.path(&format!("/proc/{pid}/fd"));
        let fds = match std::fs::read_dir(&fd_dir) {
            Ok(fds) => fds,
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                unreadable += 1;
                continue;
            }
            Err(_) => continue, // the process exited meanwhile, or a fixture without fds
        };
        let mut holds = Vec::new();
        for fd in fds.flatten() {
            let Ok(target) = std::fs::read_link(fd.path()) else {
                continue;
            };
            let inode = target
                .to_str()
                .and_then(|t| t.strip_prefix("socket:["))
                .and_then(|t| t.strip_suffix(']'))
                .and_then(|t| t.parse::<u64>().ok());
            if let Some(inode) = inode {
                if wanted.contains(&inode) && !owners.contains_key(&inode) {
                    holds.push(inode);
                }
            }
        }
        if holds.is_empty() {
            continue;
        }
        let owner = Owner {
            pid,
            process: read_small(&opts.path(&format!("/proc/{pid}/comm")))
                .map(|s| s.trim_end_matches('\n').to_string())
                .filter(|s| !s.is_empty()),
            executable: std::fs::read_link(opts.path(&format!("/proc/{pid}/exe")))
                .ok()
                .and_then(|p| p.to_str().map(str::to_string))
                .map(|p| {
                    p.strip_suffix(" (deleted)")
                        .map(str::to_string)
                        .unwrap_or(p)
                })
                .filter(|p| !p.is_empty()),
        };
        for inode in holds {
            owners.insert(inode, owner.clone());
        }
        if owners.len() == wanted.len() {
            break;
        }
    }
    (owners, unreadable)
}

/// A short /proc file (comm), capped.
fn read_small(path: &Path) -> Option<String> {
    vigil_runtime::fs::read_text_lossy_capped(path, 4096).ok()
}

/// One listening service being assembled from its sockets.
#[derive(Default)]
struct Service {
    addresses: BTreeSet<String>,
    owner: Option<Owner>,
}

/// An address as CIs and connections show it; IPv4-mapped IPv6 (`::ffff:10.0.0.5`) as IPv4, so
/// the collector can match it with the other host's IPv4 address.
fn show_ip(ip: IpAddr) -> String {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => v6.to_string(),
        },
        IpAddr::V4(v4) => v4.to_string(),
    }
}

/// Local ports with a TCP listener (v4 or v6: a `::` listener also accepts IPv4).
fn listening_tcp_ports(entries: &[SocketEntry]) -> HashSet<u16> {
    entries
        .iter()
        .filter(|e| e.proto.is_tcp() && e.is_listening())
        .map(|e| e.local_port)
        .collect()
}

/// An established TCP connection from a local port nothing listens on: this host is the client.
fn is_outbound(e: &SocketEntry, listening_tcp_ports: &HashSet<u16>) -> bool {
    e.is_established_tcp() && e.remote_port != 0 && !listening_tcp_ports.contains(&e.local_port)
}

/// Builds the listening services and outbound connections of a set of socket rows, given their
/// owners. Pure: `discover` feeds it what it read.
pub fn assemble(
    entries: &[SocketEntry],
    owners: &HashMap<u64, Owner>,
) -> (Vec<Ci>, Vec<OutboundConnection>) {
    let listening = listening_tcp_ports(entries);
    let mut services: BTreeMap<(Proto, u16), Service> = BTreeMap::new();
    for e in entries.iter().filter(|e| e.is_listening()) {
        let svc = services.entry((e.proto, e.local_port)).or_default();
        svc.addresses.insert(show_ip(e.local_ip));
        if let Some(o) = owners.get(&e.inode) {
            if svc.owner.as_ref().is_none_or(|cur| o.pid < cur.pid) {
                svc.owner = Some(o.clone());
            }
        }
    }
    let cis = services
        .into_iter()
        .map(|((proto, port), svc)| {
            let key = format!("{}:{port}", proto.name());
            let address: serde_json::Value = if svc.addresses.len() == 1 {
                svc.addresses.into_iter().next().unwrap_or_default().into()
            } else {
                svc.addresses.into_iter().collect::<Vec<_>>().into()
            };
            let mut ci = Ci::new(ci_type::LISTENING_SERVICE, key.clone(), key)
                .attr("protocol", proto.name())
                .attr("address", address)
                .attr("port", port);
            if let Some(owner) = svc.owner {
                if let Some(p) = owner.process {
                    ci = ci.attr("process", p);
                }
                if let Some(x) = owner.executable {
                    ci = ci.attr("executable", x);
                }
            }
            ci
        })
        .collect();
    let connections: BTreeSet<OutboundConnection> = entries
        .iter()
        .filter(|e| is_outbound(e, &listening))
        .map(|e| OutboundConnection {
            proto: e.proto.name().to_string(),
            remote_ip: show_ip(e.remote_ip),
            remote_port: e.remote_port,
            local_service: None,
            process: owners.get(&e.inode).and_then(|o| o.process.clone()),
        })
        .collect();
    (cis, connections.into_iter().collect())
}

/// Adds `listening_service` CIs (host `runs` each; each `provided_by` its package where the
/// executable is packaged) and the host's outbound TCP connections.
pub fn discover(opts: &Options, out: &mut Discovered) {
    let mut entries = Vec::new();
    let mut missing = Vec::new();
    let mut unreadable = false;
    let mut malformed = 0usize;
    for proto in Proto::ALL {
        let path = opts.path(&format!("/proc/net/{}", proto.name()));
        match read_table(&path) {
            Ok(text) => {
                let (rows, bad) = parse_table(proto, &text);
                entries.extend(rows);
                malformed += bad;
            }
            Err(e) => {
                unreadable |= !super::is_absent(&e);
                missing.push(format!("{}: {e}", path.display()));
            }
        }
    }
    if unreadable {
        out.failed.insert(ci_type::LISTENING_SERVICE);
    }
    if !missing.is_empty() || malformed > 0 {
        let mut msg = missing.join("; ");
        if malformed > 0 {
            if !msg.is_empty() {
                msg.push_str("; ");
            }
            msg.push_str(&format!("skipped {malformed} malformed socket lines"));
        }
        out.problem(SOURCE_NET, msg);
    }
    // Owners matter for listeners and client connections, not for accepted ones.
    let listening = listening_tcp_ports(&entries);
    let wanted: HashSet<u64> = entries
        .iter()
        .filter(|e| e.is_listening() || is_outbound(e, &listening))
        .map(|e| e.inode)
        .filter(|i| *i != 0)
        .collect();
    let (owners, unreadable) = socket_owners(opts, &wanted);
    if unreadable > 0 {
        out.problem(
            SOURCE_FD,
            format!("could not read the open files of {unreadable} processes (not root?); their sockets have no process"),
        );
    }
    let (services, connections) = assemble(&entries, &owners);
    let host = CiRef::new(ci_type::HOST, "host");
    let provided_by = package_relations(opts, out, &services);
    for ci in services {
        out.inventory.relations.push(Relation {
            from: host.clone(),
            kind: relation::RUNS.to_string(),
            to: ci.id(),
        });
        out.inventory.cis.push(ci);
    }
    out.inventory.relations.extend(provided_by);
    out.inventory.connections.extend(connections);
}

/// `listening_service provided_by package` for services whose executable a discovered dpkg
/// package owns (the package CIs are already in `out`).
fn package_relations(opts: &Options, out: &Discovered, services: &[Ci]) -> Vec<Relation> {
    let exes: BTreeSet<String> = services
        .iter()
        .filter_map(|c| c.attrs.get("executable")?.as_str().map(str::to_string))
        .collect();
    // name -> package keys (`name:arch`) of the dpkg packages found this pass.
    let mut by_name: HashMap<&str, Vec<&str>> = HashMap::new();
    for ci in &out.inventory.cis {
        if ci.ci_type == ci_type::PACKAGE && ci.attrs.get("manager").is_some_and(|m| m == "dpkg") {
            if let Some(name) = ci.attrs.get("name").and_then(|n| n.as_str()) {
                by_name.entry(name).or_default().push(&ci.key);
            }
        }
    }
    if exes.is_empty() || by_name.is_empty() {
        return Vec::new();
    }
    let owners = packages::exe_owners(opts, &exes);
    let mut rels = Vec::new();
    for ci in services {
        let Some(exe) = ci.attrs.get("executable").and_then(|x| x.as_str()) else {
            continue;
        };
        let Some(stem) = owners.get(exe) else {
            continue;
        };
        // `name:arch.list` names the package exactly; a plain `name.list` is the only
        // architecture of that name installed.
        let key = match stem.split_once(':') {
            Some((name, _)) => by_name
                .get(name)
                .and_then(|ks| ks.iter().find(|k| **k == stem)),
            None => by_name.get(stem.as_str()).and_then(|ks| ks.first()),
        };
        if let Some(key) = key {
            rels.push(Relation {
                from: ci.id(),
                kind: relation::PROVIDED_BY.to_string(),
                to: CiRef::new(ci_type::PACKAGE, *key),
            });
        }
    }
    rels
}

fn read_table(path: &Path) -> std::io::Result<String> {
    vigil_runtime::fs::read_text_lossy_capped(path, MAX_FILE)
}

#[cfg(test)]
mod tests {
    use super::super::testing::{fixture, opts};
    use super::*;

    fn check_addr(s: &str, v6: bool, expected: Option<(&str, u16)>) {
        let got = parse_addr(s, v6);
        let expected = expected.map(|(ip, port)| (ip.parse::<IpAddr>().expect("ip"), port));
        assert_eq!(got, expected, "{s}");
    }

    #[test]
    fn addresses() {
        check_addr("0100007F:0016", false, Some(("127.0.0.1", 22)));
        check_addr("00000000:0050", false, Some(("0.0.0.0", 80)));
        check_addr("0F02000A:1F90", false, Some(("10.0.2.15", 8080)));
        check_addr(
            "00000000000000000000000001000000:0035",
            true,
            Some(("::1", 53)),
        );
        check_addr(
            "00000000000000000000000000000000:01BB",
            true,
            Some(("::", 443)),
        );
        check_addr(
            "0000000000000000FFFF00000F02000A:0016",
            true,
            Some(("::ffff:10.0.2.15", 22)),
        );
        check_addr(
            "B80D0120000000000000000001000000:0050",
            true,
            Some(("2001:db8::1", 80)),
        );
        check_addr("0100007F:0016", true, None);
        check_addr("0100007F", false, None);
        check_addr("0100007G:0016", false, None);
        check_addr("0100007F:10000", false, None);
        check_addr("é100007F:0016", false, None);
    }

    #[test]
    fn tables_skip_and_count_bad_lines() {
        let text = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
            \x20  0: 0100007F:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1001 1 0000000000000000 100 0 0 10 0\n\
            \x20  1: garbage\n\
            \x20  2: 0100007F:0016 00000000:0000 ZZ 00000000:00000000 00:00000000 00000000     0        0 1002 1\n\n";
        let (rows, bad) = parse_table(Proto::Tcp, text);
        assert_eq!(bad, 2);
        assert_eq!(
            rows,
            vec![SocketEntry {
                proto: Proto::Tcp,
                local_ip: "127.0.0.1".parse().expect("ip"),
                local_port: 22,
                remote_ip: "0.0.0.0".parse().expect("ip"),
                remote_port: 0,
                state: TCP_LISTEN,
                inode: 1001,
            }]
        );
    }

    fn service(key: &str, address: serde_json::Value, process: Option<(&str, &str)>) -> Ci {
        let (proto, port) = key.split_once(':').expect("key");
        let mut ci = Ci::new(ci_type::LISTENING_SERVICE, key, key)
            .attr("protocol", proto)
            .attr("address", address)
            .attr("port", port.parse::<u16>().expect("port"));
        if let Some((p, x)) = process {
            ci = ci.attr("process", p).attr("executable", x);
        }
        ci
    }

    fn conn(proto: &str, ip: &str, port: u16, process: Option<&str>) -> OutboundConnection {
        OutboundConnection {
            proto: proto.into(),
            remote_ip: ip.into(),
            remote_port: port,
            local_service: None,
            process: process.map(str::to_string),
        }
    }

    /// The `sockets-basic` fixture: sshd on tcp/tcp6 22, nginx on 0.0.0.0:80 and 127.0.0.1:8080
    /// (pid 300 master, 301 worker holding the same sockets), a v6 listener of an unknown
    /// process, chronyd on udp 123 (two addresses) and udp6 323, a connected udp socket, curl
    /// with established v4 and v6 connections (one duplicated), inbound connections to 22 and 80.
    #[test]
    fn fixture_sockets_basic() {
        let root = fixture("sockets-basic");
        let mut out = Discovered::default();
        // dpkg-basic's packages, as if packages::discover had run on this root.
        out.inventory.cis.push(
            Ci::new(ci_type::PACKAGE, "openssh-server:amd64", "openssh-server")
                .attr("name", "openssh-server")
                .attr("manager", "dpkg"),
        );
        out.inventory.cis.push(
            Ci::new(ci_type::PACKAGE, "nginx-core:amd64", "nginx-core")
                .attr("name", "nginx-core")
                .attr("manager", "dpkg"),
        );
        discover(&opts(&root), &mut out);
        assert_eq!(out.problems, vec![]);
        let sshd = Some(("sshd", "/usr/sbin/sshd"));
        let nginx = Some(("nginx", "/usr/sbin/nginx"));
        let chrony = Some(("chronyd", "/usr/sbin/chronyd"));
        let expected = [
            service("tcp:22", "0.0.0.0".into(), sshd),
            service("tcp:80", "0.0.0.0".into(), nginx),
            service("tcp:8080", "127.0.0.1".into(), nginx),
            service("tcp6:22", "::".into(), sshd),
            service("tcp6:9100", "::1".into(), None),
            service(
                "udp:123",
                serde_json::json!(["0.0.0.0", "10.0.2.15"]),
                chrony,
            ),
            service("udp6:323", "::1".into(), chrony),
        ];
        let got: Vec<&Ci> = out
            .inventory
            .cis
            .iter()
            .filter(|c| c.ci_type == ci_type::LISTENING_SERVICE)
            .collect();
        assert_eq!(got, expected.iter().collect::<Vec<_>>());
        let rel = |from: CiRef, kind: &str, to: CiRef| Relation {
            from,
            kind: kind.into(),
            to,
        };
        let svc = |k: &str| CiRef::new(ci_type::LISTENING_SERVICE, k);
        let host = || CiRef::new(ci_type::HOST, "host");
        let mut rels = out.inventory.relations.clone();
        rels.sort();
        let mut want = vec![
            rel(
                svc("tcp:22"),
                relation::PROVIDED_BY,
                CiRef::new(ci_type::PACKAGE, "openssh-server:amd64"),
            ),
            rel(
                svc("tcp6:22"),
                relation::PROVIDED_BY,
                CiRef::new(ci_type::PACKAGE, "openssh-server:amd64"),
            ),
            rel(
                svc("tcp:80"),
                relation::PROVIDED_BY,
                CiRef::new(ci_type::PACKAGE, "nginx-core:amd64"),
            ),
            rel(
                svc("tcp:8080"),
                relation::PROVIDED_BY,
                CiRef::new(ci_type::PACKAGE, "nginx-core:amd64"),
            ),
        ];
        for k in [
            "tcp:22",
            "tcp:80",
            "tcp:8080",
            "tcp6:22",
            "tcp6:9100",
            "udp:123",
            "udp6:323",
        ] {
            want.push(rel(host(), relation::RUNS, svc(k)));
        }
        want.sort();
        assert_eq!(rels, want);
        assert_eq!(
            out.inventory.connections,
            vec![
                conn("tcp", "10.0.2.20", 5432, Some("curl")),
                conn("tcp", "127.0.0.1", 8080, Some("curl")),
                conn("tcp6", "10.0.2.21", 443, None),
                conn("tcp6", "2001:db8::1", 443, Some("curl")),
            ]
        );
    }

    #[test]
    fn missing_tables_are_one_problem() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut out = Discovered::default();
        discover(&opts(dir.path()), &mut out);
        assert_eq!(out.problems.len(), 1);
        assert_eq!(out.problems[0].source, SOURCE_NET);
        assert!(
            out.problems[0].message.contains("tcp6"),
            "{:?}",
            out.problems
        );
        assert!(out.inventory.cis.is_empty());
    }

    /// On this host: a listener the test opens shows up as `tcp:<port>` owned by this process.
    #[test]
    fn real_host_sees_this_process_listening() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let mut out = Discovered::default();
        discover(&opts(Path::new("/")), &mut out);
        let key = format!("tcp:{port}");
        let ci = out
            .inventory
            .cis
            .iter()
            .find(|c| c.key == key)
            .unwrap_or_else(|| panic!("{key} not found in {:?}", out.inventory.cis));
        let comm = std::fs::read_to_string("/proc/self/comm").expect("comm");
        let exe = std::env::current_exe().expect("exe");
        assert_eq!(ci.ci_type, ci_type::LISTENING_SERVICE);
        assert_eq!(ci.attrs["protocol"], "tcp");
        assert_eq!(ci.attrs["address"], "127.0.0.1");
        assert_eq!(ci.attrs["port"], port);
        assert_eq!(ci.attrs["process"], comm.trim_end());
        assert_eq!(ci.attrs["executable"], exe.to_str().expect("utf-8 exe"));
        assert!(!ci.attrs.contains_key("pid"));
        drop(listener);
    }
}
