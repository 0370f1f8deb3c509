//! Network discovery: `network_interface` CIs from `/sys/class/net` and `ip_address` CIs with
//! their prefixes; relations `host has network_interface`, `network_interface has ip_address`.
//!
//! Addresses come from procfs text only (no netlink socket, no ioctl, no unsafe code), so they
//! can be read under a fixture root:
//! - IPv6: `/proc/net/if_inet6` gives address, prefix length, scope, flags and interface name.
//!   Temporary (privacy) addresses are skipped: they rotate daily and would churn the CMDB.
//! - IPv4: `/proc/net/fib_trie` lists every local address as a `/32 host LOCAL` leaf (the
//!   kernel's local routing table), but not its interface or prefix. Those come from
//!   `/proc/net/route`: the address belongs to the interface of the longest-prefix directly
//!   connected route (no gateway) that contains it, lowest metric first on ties, and that
//!   route's mask is its prefix. An address in 127/8 without such a route is the loopback's,
//!   prefix 8. An address with no connected route (a `/32` alias, `noprefixroute`) is reported
//!   with prefix 32 and no interface. Limit of the method: one subnet configured on two
//!   interfaces maps to the one with the lower metric.
//!   `/proc/net/route` prints addresses as native-endian hex of the network-order value.
//!
//! Reads only under the configured root; never fails (an unreadable source records one problem
//! and is skipped); never opens a socket.
//!
//! Attributes of `network_interface`: `mac` (when the interface has one), `mtu`, `operstate`,
//! `type` (`loopback` | `ethernet` | `bridge` | `bond` | `wireless` | `tunnel` | `infiniband` |
//! `ppp` | `other`), `virtual` (no backing device), `addresses` (sorted `address/prefix` list).
//! Attributes of `ip_address` (key `address/prefix`): `address`, `prefix`, `family` (`ipv4` |
//! `ipv6`), `scope` (`host` | `link` | `site` | `global`), `interface` (when known).

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use vigil_shared::inventory::{ci_type, relation, Ci, CiRef, Relation};

use super::{read, Discovered, Options};

/// `IFF_LOOPBACK` in `/sys/class/net/<if>/flags`.
const IFF_LOOPBACK: u64 = 0x8;
/// `IFA_F_TEMPORARY` in the flags column of `/proc/net/if_inet6`.
const IFA_F_TEMPORARY: u32 = 0x01;
/// `IFA_F_DADFAILED`: a duplicate, never usable.
const IFA_F_DADFAILED: u32 = 0x08;
/// `RTF_UP` and `RTF_GATEWAY` in `/proc/net/route`.
const RTF_UP: u32 = 0x1;
const RTF_GATEWAY: u32 = 0x2;

/// Adds interfaces and addresses and their relations.
pub fn discover(opts: &Options, out: &mut Discovered) {
    let interfaces = interfaces(opts, out);
    let loopback = interfaces
        .iter()
        .find(|i| i.kind == "loopback")
        .map_or("lo", |i| i.name.as_str())
        .to_string();
    let mut addrs = ipv4_addresses(opts, out, &loopback);
    addrs.extend(ipv6_addresses(opts, out));

    let mut by_iface: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
    for a in &addrs {
        if let Some(i) = &a.interface {
            by_iface.entry(i).or_default().insert(a.key());
        }
    }
    let host = CiRef::new(ci_type::HOST, ci_type::HOST);
    let known: BTreeSet<&str> = interfaces.iter().map(|i| i.name.as_str()).collect();
    for iface in &interfaces {
        let list: Vec<&String> = by_iface
            .get(iface.name.as_str())
            .map(|s| s.iter().collect())
            .unwrap_or_default();
        let ci = iface.to_ci().attr("addresses", serde_json::json!(list));
        out.inventory.relations.push(Relation {
            from: host.clone(),
            kind: relation::HAS.to_string(),
            to: ci.id(),
        });
        out.inventory.cis.push(ci);
    }
    for a in &addrs {
        let ci = a.to_ci();
        if let Some(i) = a.interface.as_deref().filter(|i| known.contains(i)) {
            out.inventory.relations.push(Relation {
                from: CiRef::new(ci_type::NETWORK_INTERFACE, i),
                kind: relation::HAS.to_string(),
                to: ci.id(),
            });
        }
        out.inventory.cis.push(ci);
    }
}

/// One interface as `/sys/class/net/<name>` describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Interface {
    name: String,
    mac: Option<String>,
    mtu: Option<u64>,
    operstate: Option<String>,
    kind: &'static str,
    is_virtual: bool,
}

impl Interface {
    fn to_ci(&self) -> Ci {
        let mut ci = Ci::new(
            ci_type::NETWORK_INTERFACE,
            self.name.as_str(),
            self.name.as_str(),
        );
        if let Some(m) = &self.mac {
            ci = ci.attr("mac", m.as_str());
        }
        if let Some(m) = self.mtu {
            ci = ci.attr("mtu", m);
        }
        if let Some(s) = &self.operstate {
            ci = ci.attr("operstate", s.as_str());
        }
        ci.attr("type", self.kind).attr("virtual", self.is_virtual)
    }
}

fn interfaces(opts: &Options, out: &mut Discovered) -> Vec<Interface> {
    let dir = opts.path("/sys/class/net");
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if super::is_absent(&e) => {
            out.problem("sysfs-net", format!("/sys/class/net is not readable: {e}"));
            return Vec::new();
        }
        Err(e) => {
            out.unreadable(
                &[ci_type::NETWORK_INTERFACE, ci_type::IP_ADDRESS],
                "sysfs-net",
                format!("/sys/class/net is not readable: {e}"),
            );
            return Vec::new();
        }
    };
    // Entries are symlinks to the device directories; plain files (`bonding_masters`) are not
    // interfaces.
    let mut names: Vec<String> = entries
        .filter_map(|e| {
            let e = e.ok()?;
            e.path().is_dir().then_some(())?;
            e.file_name().into_string().ok()
        })
        .collect();
    names.sort();
    names
        .into_iter()
        .map(|name| {
            let base = dir.join(&name);
            let file = |f: &str| {
                vigil_runtime::fs::read_text_lossy_capped(&base.join(f), 4096)
                    .ok()
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty())
            };
            let flags = file("flags")
                .and_then(|f| u64::from_str_radix(f.trim_start_matches("0x"), 16).ok())
                .unwrap_or(0);
            let arphrd = file("type").and_then(|t| t.parse::<u32>().ok());
            let kind = if flags & IFF_LOOPBACK != 0 || name == "lo" || arphrd == Some(772) {
                "loopback"
            } else if base.join("bridge").is_dir() {
                "bridge"
            } else if base.join("bonding").is_dir() {
                "bond"
            } else if base.join("wireless").is_dir() || base.join("phy80211").exists() {
                "wireless"
            } else {
                match arphrd {
                    Some(1) => "ethernet",
                    Some(32) => "infiniband",
                    Some(512) => "ppp",
                    Some(768 | 769 | 776 | 778 | 823 | 65534) => "tunnel",
                    _ => "other",
                }
            };
            Interface {
                mac: file("address"),
                mtu: file("mtu").and_then(|m| m.parse().ok()),
                operstate: file("operstate"),
                kind,
                is_virtual: !base.join("device").exists(),
                name,
            }
        })
        .collect()
}

/// One address of this host.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Address {
    pub address: IpAddr,
    pub prefix: u8,
    pub interface: Option<String>,
    pub scope: &'static str,
}

impl Address {
    fn key(&self) -> String {
        format!("{}/{}", self.address, self.prefix)
    }

    fn to_ci(&self) -> Ci {
        let key = self.key();
        let family = if self.address.is_ipv4() {
            "ipv4"
        } else {
            "ipv6"
        };
        let mut ci = Ci::new(ci_type::IP_ADDRESS, key.as_str(), key.as_str())
            .attr("address", self.address.to_string())
            .attr("prefix", self.prefix)
            .attr("family", family)
            .attr("scope", self.scope);
        if let Some(i) = &self.interface {
            ci = ci.attr("interface", i.as_str());
        }
        ci
    }
}

fn ipv4_addresses(opts: &Options, out: &mut Discovered, loopback: &str) -> Vec<Address> {
    let Some(trie) = read(opts, "/proc/net/fib_trie") else {
        out.problem(
            "fib_trie",
            "/proc/net/fib_trie is not readable: no IPv4 addresses",
        );
        return Vec::new();
    };
    let routes = match read(opts, "/proc/net/route") {
        Some(r) => parse_routes(&r),
        None => {
            out.problem(
                "route",
                "/proc/net/route is not readable: IPv4 prefixes and interfaces unknown",
            );
            Vec::new()
        }
    };
    local_ipv4(&trie)
        .into_iter()
        .map(|ip| assign_ipv4(ip, &routes, loopback))
        .collect()
}

/// Local addresses of `/proc/net/fib_trie`: leaves (`|-- a.b.c.d`) followed by a
/// `/32 host LOCAL` line, deduplicated (the file repeats them per routing table).
pub fn local_ipv4(trie: &str) -> BTreeSet<Ipv4Addr> {
    let mut found = BTreeSet::new();
    let mut leaf: Option<Ipv4Addr> = None;
    for line in trie.lines() {
        let t = line.trim();
        if let Some(ip) = t.strip_prefix("|-- ") {
            leaf = ip.trim().parse().ok();
        } else if t.starts_with('/') {
            let mut f = t.split_ascii_whitespace();
            if (f.next(), f.next(), f.next()) == (Some("/32"), Some("host"), Some("LOCAL")) {
                if let Some(ip) = leaf {
                    found.insert(ip);
                }
            }
        } else {
            // `+-- prefix` nodes and table headers end the current leaf.
            leaf = None;
        }
    }
    found
}

/// A directly connected IPv4 route of `/proc/net/route`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub iface: String,
    pub destination: Ipv4Addr,
    pub mask: Ipv4Addr,
    pub metric: u32,
}

/// Up, gateway-less routes of `/proc/net/route` (`Iface Destination Gateway Flags RefCnt Use
/// Metric Mask ...`, addresses as native-endian hex). Header and malformed lines are skipped.
pub fn parse_routes(text: &str) -> Vec<Route> {
    let hex_ip = |s: &str| {
        u32::from_str_radix(s, 16)
            .ok()
            .map(|v| Ipv4Addr::from(v.to_ne_bytes()))
    };
    text.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split_ascii_whitespace().collect();
            if f.len() < 8 {
                return None;
            }
            let flags = u32::from_str_radix(f[3], 16).ok()?;
            if flags & RTF_UP == 0 || flags & RTF_GATEWAY != 0 {
                return None;
            }
            Some(Route {
                iface: f[0].to_string(),
                destination: hex_ip(f[1])?,
                mask: hex_ip(f[7])?,
                metric: f[6].parse().ok()?,
            })
        })
        .collect()
}

/// Interface and prefix of a local IPv4 address (see the module docs for the rule).
pub fn assign_ipv4(ip: Ipv4Addr, routes: &[Route], loopback: &str) -> Address {
    let scope = if ip.is_loopback() {
        "host"
    } else if ip.is_link_local() {
        "link"
    } else {
        "global"
    };
    let ip_bits = u32::from(ip);
    let best = routes
        .iter()
        .filter(|r| {
            let mask = u32::from(r.mask);
            // A non-contiguous mask is not a prefix: ignore the route.
            mask.leading_ones() + mask.trailing_zeros() == 32
                && ip_bits & mask == u32::from(r.destination) & mask
        })
        .min_by_key(|r| {
            (
                std::cmp::Reverse(u32::from(r.mask).leading_ones()),
                r.metric,
            )
        });
    let (prefix, interface) = match best {
        Some(r) => (
            u32::from(r.mask).leading_ones() as u8,
            Some(r.iface.clone()),
        ),
        None if ip.is_loopback() => (8, Some(loopback.to_string())),
        None => (32, None),
    };
    Address {
        address: IpAddr::V4(ip),
        prefix,
        interface,
        scope,
    }
}

fn ipv6_addresses(opts: &Options, out: &mut Discovered) -> Vec<Address> {
    match read(opts, "/proc/net/if_inet6") {
        Some(t) => parse_if_inet6(&t),
        None => {
            out.problem(
                "if_inet6",
                "/proc/net/if_inet6 is not readable (IPv6 disabled?): no IPv6 addresses",
            );
            Vec::new()
        }
    }
}

/// `/proc/net/if_inet6`: `address(32 hex) ifindex prefix scope flags name`, numbers in hex.
/// Temporary and duplicate (DAD failed) addresses are skipped, as are malformed lines.
pub fn parse_if_inet6(text: &str) -> Vec<Address> {
    text.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split_ascii_whitespace().collect();
            if f.len() < 6 || f[0].len() != 32 {
                return None;
            }
            let bits = u128::from_str_radix(f[0], 16).ok()?;
            let prefix = u8::from_str_radix(f[2], 16).ok().filter(|p| *p <= 128)?;
            let scope = match u32::from_str_radix(f[3], 16).ok()? {
                0x10 => "host",
                0x20 => "link",
                0x40 => "site",
                _ => "global",
            };
            let flags = u32::from_str_radix(f[4], 16).ok()?;
            if flags & (IFA_F_TEMPORARY | IFA_F_DADFAILED) != 0 {
                return None;
            }
            Some(Address {
                address: IpAddr::V6(Ipv6Addr::from(bits)),
                prefix,
                interface: Some(f[5].to_string()),
                scope,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::super::testing::{self, fixture};
    use super::*;
    use serde_json::json;

    /// A CI named by its key.
    fn ci(t: &str, key: &str, attrs: serde_json::Value) -> Ci {
        testing::ci(t, key, key, attrs)
    }

    fn run(root: std::path::PathBuf) -> Discovered {
        testing::run(discover, &testing::opts(&root))
    }

    fn iface(name: &str, attrs: serde_json::Value) -> Ci {
        ci("network_interface", name, attrs)
    }

    fn addr(key: &str, family: &str, scope: &str, iface: Option<&str>) -> Ci {
        let (a, p) = key.split_once('/').expect("key");
        let mut attrs = json!({"address": a, "prefix": p.parse::<u8>().expect("prefix"),
                               "family": family, "scope": scope});
        if let Some(i) = iface {
            attrs["interface"] = json!(i);
        }
        ci("ip_address", key, attrs)
    }

    #[test]
    fn workstation_with_bridge_wifi_and_wireguard() {
        let got = run(fixture("network-basic"));
        let mut want = vec![
            iface(
                "docker0",
                json!({"mac": "02:42:ac:11:aa:01", "mtu": 1500, "operstate": "up",
                "type": "bridge", "virtual": true,
                "addresses": ["172.17.0.1/16", "fe80::42:acff:fe11:aa01/64"]}),
            ),
            iface(
                "eth0",
                json!({"mac": "00:1b:21:3c:4d:5e", "mtu": 1500, "operstate": "up",
                "type": "ethernet", "virtual": false,
                "addresses": ["192.168.1.23/24", "2001:67c:1220:80c::5/64", "fe80::21b:21ff:fe3c:4d5e/64"]}),
            ),
            iface(
                "lo",
                json!({"mac": "00:00:00:00:00:00", "mtu": 65536, "operstate": "unknown",
                "type": "loopback", "virtual": true, "addresses": ["127.0.0.1/8", "::1/128"]}),
            ),
            iface(
                "veth1a2b3c",
                json!({"mac": "aa:bb:cc:dd:00:11", "mtu": 1500, "operstate": "up",
                "type": "ethernet", "virtual": true, "addresses": ["fe80::a8bb:ccff:fedd:11/64"]}),
            ),
            iface(
                "wg0",
                json!({"mtu": 1420, "operstate": "unknown", "type": "tunnel",
                "virtual": true, "addresses": ["10.200.0.2/24"]}),
            ),
            iface(
                "wlan0",
                json!({"mac": "f4:8c:50:12:34:56", "mtu": 1500, "operstate": "up",
                "type": "wireless", "virtual": false, "addresses": ["10.10.0.57/22"]}),
            ),
            addr("10.10.0.57/22", "ipv4", "global", Some("wlan0")),
            addr("10.200.0.2/24", "ipv4", "global", Some("wg0")),
            addr("127.0.0.1/8", "ipv4", "host", Some("lo")),
            addr("172.17.0.1/16", "ipv4", "global", Some("docker0")),
            addr("192.168.1.23/24", "ipv4", "global", Some("eth0")),
            addr("198.51.100.7/32", "ipv4", "global", None),
            addr("::1/128", "ipv6", "host", Some("lo")),
            addr("2001:67c:1220:80c::5/64", "ipv6", "global", Some("eth0")),
            addr("fe80::21b:21ff:fe3c:4d5e/64", "ipv6", "link", Some("eth0")),
            addr(
                "fe80::42:acff:fe11:aa01/64",
                "ipv6",
                "link",
                Some("docker0"),
            ),
            addr(
                "fe80::a8bb:ccff:fedd:11/64",
                "ipv6",
                "link",
                Some("veth1a2b3c"),
            ),
        ];
        want.sort_by_key(Ci::id);
        assert_eq!(got.inventory.cis, want);
        assert!(got.problems.is_empty(), "{:?}", got.problems);

        let rel = |ft: &str, fk: &str, tt: &str, tk: &str| Relation {
            from: CiRef::new(ft, fk),
            kind: "has".into(),
            to: CiRef::new(tt, tk),
        };
        let mut rels: Vec<Relation> = want
            .iter()
            .filter_map(|c| match c.ci_type.as_str() {
                "network_interface" => Some(rel("host", "host", &c.ci_type, &c.key)),
                _ => c
                    .attrs
                    .get("interface")
                    .and_then(|i| i.as_str())
                    .map(|i| rel("network_interface", i, &c.ci_type, &c.key)),
            })
            .collect();
        rels.sort();
        assert_eq!(got.inventory.relations, rels);
    }

    #[test]
    fn missing_sources_are_problems_not_failures() {
        let dir = tempfile::tempdir().expect("tempdir");
        let got = run(dir.path().to_path_buf());
        assert!(got.inventory.cis.is_empty());
        let sources: Vec<&str> = got.problems.iter().map(|p| p.source).collect();
        assert_eq!(sources, ["sysfs-net", "fib_trie", "if_inet6"]);

        // fib_trie without route: loopback still mapped, others get /32 and no interface.
        std::fs::create_dir_all(dir.path().join("proc/net")).expect("mkdir");
        std::fs::write(
            dir.path().join("proc/net/fib_trie"),
            "Local:\n  +-- 0.0.0.0/0 3 0 5\n     |-- 127.0.0.1\n        /32 host LOCAL\n     |-- 10.1.2.3\n        /32 host LOCAL\n",
        )
        .expect("write");
        let got = run(dir.path().to_path_buf());
        assert_eq!(
            got.inventory.cis,
            vec![
                addr("10.1.2.3/32", "ipv4", "global", None),
                addr("127.0.0.1/8", "ipv4", "host", Some("lo")),
            ]
        );
        assert!(got.inventory.relations.is_empty());
        let sources: Vec<&str> = got.problems.iter().map(|p| p.source).collect();
        assert_eq!(sources, ["sysfs-net", "route", "if_inet6"]);
    }

    #[test]
    fn fib_trie_local_entries() {
        fn check(text: &str, expected: &[&str]) {
            let got: Vec<String> = local_ipv4(text).iter().map(|i| i.to_string()).collect();
            assert_eq!(got, expected, "{text:?}");
        }
        check("", &[]);
        check(
            "Main:\n  +-- 0.0.0.0/0 3 0 5\n     |-- 10.0.0.0\n        /24 link UNICAST\n     \
             |-- 10.0.0.5\n        /32 host LOCAL\n     |-- 10.0.0.255\n        /32 link BROADCAST\n\
             Local:\n     |-- 10.0.0.5\n        /32 host LOCAL\n",
            &["10.0.0.5"],
        );
        // The 127/8 network entry is `/8 host LOCAL`, not an address.
        check(
            "     |-- 127.0.0.0\n        /8 host LOCAL\n     |-- 127.0.0.1\n        /32 host LOCAL\n",
            &["127.0.0.1"],
        );
        // A LOCAL line after a node line belongs to no leaf; garbage leaves are ignored.
        check(
            "     |-- 10.0.0.9\n  +-- 10.0.0.0/8 2 0 2\n        /32 host LOCAL\n     |-- nope\n        /32 host LOCAL\n",
            &[],
        );
    }

    #[test]
    fn ipv4_assignment() {
        let routes = parse_routes(
            "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
             eth0\t00000000\t0101A8C0\t0003\t0\t0\t100\t00000000\t0\t0\t0\n\
             eth0\t0000000A\t00000000\t0001\t0\t0\t100\t000000FF\t0\t0\t0\n\
             eth1\t0000010A\t00000000\t0001\t0\t0\t0\t0000FFFF\t0\t0\t0\n\
             eth2\t0001A8C0\t00000000\t0001\t0\t0\t600\t00FFFFFF\t0\t0\t0\n\
             eth3\t0001A8C0\t00000000\t0001\t0\t0\t100\t00FFFFFF\t0\t0\t0\n\
             eth4\t0002A8C0\t00000000\t0000\t0\t0\t0\t00FFFFFF\t0\t0\t0\n\
             eth5\t0003A8C0\t00000000\t0001\t0\t0\t0\t00FF00FF\t0\t0\t0\n\
             bad line\n",
        );
        assert_eq!(routes.len(), 5, "{routes:?}");
        fn check(routes: &[Route], ip: &str, expected: (u8, Option<&str>)) {
            let a = assign_ipv4(ip.parse().expect("ip"), routes, "lo0");
            assert_eq!((a.prefix, a.interface.as_deref()), expected, "{ip}");
        }
        check(&routes, "10.9.8.7", (8, Some("eth0")));
        check(&routes, "10.1.2.3", (16, Some("eth1")));
        check(&routes, "192.168.1.5", (24, Some("eth3")));
        check(&routes, "192.168.2.5", (32, None));
        check(&routes, "192.168.3.5", (32, None));
        check(&routes, "127.0.0.53", (8, Some("lo0")));
        check(&[], "8.8.8.8", (32, None));
    }

    #[test]
    fn if_inet6_lines() {
        fn check(text: &str, expected: &[(&str, u8, &str, &str)]) {
            let got = parse_if_inet6(text);
            let got: Vec<(String, u8, &str, String)> = got
                .into_iter()
                .map(|a| {
                    (
                        a.address.to_string(),
                        a.prefix,
                        a.scope,
                        a.interface.unwrap_or_default(),
                    )
                })
                .collect();
            let want: Vec<(String, u8, &str, String)> = expected
                .iter()
                .map(|(a, p, s, i)| (a.to_string(), *p, *s, i.to_string()))
                .collect();
            assert_eq!(got, want, "{text:?}");
        }
        check(
            "fd000000000000000000000000000002 04 40 00 82     eth0\n",
            &[("fd00::2", 64, "global", "eth0")],
        );
        check(
            "fec00000000000000000000000000001 02 30 40 80 eth1\n",
            &[("fec0::1", 48, "site", "eth1")],
        );
        // Temporary, DAD-failed, short, over-long prefix and non-hex lines are skipped.
        check(
            "20010db8000000000000000000000001 02 40 00 01 eth0\n\
             20010db8000000000000000000000002 02 40 00 08 eth0\n\
             20010db8000000000000000000000003 02 40 00\n\
             20010db8000000000000000000000004 02 81 00 80 eth0\n\
             2001zdb8000000000000000000000005 02 40 00 80 eth0\n\
             20010db800000000000000000000006 02 40 00 80 eth0\n",
            &[],
        );
    }
}
