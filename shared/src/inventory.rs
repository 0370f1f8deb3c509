//! Configuration items (CIs) as an agent discovers them, and the snapshot/delta bookkeeping that
//! keeps the transport small: an agent sends a full [`Inventory`] on connect and afterwards only
//! an [`InventoryDelta`] when something changed (a host with 3,000 packages does not resend them).
//!
//! Identity: a CI is identified within its host by `(type, key)` (see [`CiRef`]); keys per type
//! are documented on [`ci_type`]. The collector adds the host's identity (certificate, machine-id,
//! DMI UUID) on top. Canonical order (sorted by type, then key) makes snapshots comparable.
//!
//! No I/O here: discovery lives in the agent, reconciliation in the collector.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

/// Attribute values are JSON-like (strings, numbers, booleans, lists) so the collector can store
/// and diff them without knowing every type.
pub type Attrs = BTreeMap<String, serde_json::Value>;

/// CI types and the key that identifies each within its host.
pub mod ci_type {
    /// The host itself; key `host`.
    pub const HOST: &str = "host";
    /// Operating system; key `os`.
    pub const OS: &str = "os";
    /// Processor package; key `cpu`.
    pub const CPU: &str = "cpu";
    /// Physical memory; key `memory`.
    pub const MEMORY: &str = "memory";
    /// Block device; key: device name (`sda`, `nvme0n1`).
    pub const DISK: &str = "disk";
    /// Mounted filesystem; key: mountpoint.
    pub const FILESYSTEM: &str = "filesystem";
    /// Network interface; key: interface name.
    pub const NETWORK_INTERFACE: &str = "network_interface";
    /// IP address on an interface; key: `address/prefix`.
    pub const IP_ADDRESS: &str = "ip_address";
    /// Listening socket; key: `proto:port` (`tcp:22`, `udp6:53`); bound address in attributes.
    pub const LISTENING_SERVICE: &str = "listening_service";
    /// Installed package; key: `name:arch`.
    pub const PACKAGE: &str = "package";
    /// systemd unit; key: unit name.
    pub const SYSTEMD_UNIT: &str = "systemd_unit";
    /// Business service entered through the API (not discovered); key: its name.
    pub const BUSINESS_SERVICE: &str = "business_service";

    /// Every discovered type, in report order.
    pub const DISCOVERED: &[&str] = &[
        HOST,
        OS,
        CPU,
        MEMORY,
        DISK,
        FILESYSTEM,
        NETWORK_INTERFACE,
        IP_ADDRESS,
        LISTENING_SERVICE,
        PACKAGE,
        SYSTEMD_UNIT,
    ];
}

/// Relation kinds (directed: `from kind to`).
pub mod relation {
    /// host runs os / listening_service / systemd_unit.
    pub const RUNS: &str = "runs";
    /// host has cpu / memory / disk / filesystem / network_interface; interface has ip_address.
    pub const HAS: &str = "has";
    /// listening_service provided_by package (the executable belongs to it).
    pub const PROVIDED_BY: &str = "provided_by";
    /// listening_service depends_on listening_service (cross-host, derived by the collector).
    pub const DEPENDS_ON: &str = "depends_on";
}

/// A reference to a CI within one host.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct CiRef {
    #[serde(rename = "type")]
    pub ci_type: String,
    pub key: String,
}

impl CiRef {
    pub fn new(ci_type: &str, key: impl Into<String>) -> CiRef {
        CiRef {
            ci_type: ci_type.to_string(),
            key: key.into(),
        }
    }
}

/// One configuration item.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ci {
    #[serde(rename = "type")]
    pub ci_type: String,
    pub key: String,
    /// Display name.
    pub name: String,
    #[serde(default)]
    pub attrs: Attrs,
}

impl Ci {
    pub fn new(ci_type: &str, key: impl Into<String>, name: impl Into<String>) -> Ci {
        Ci {
            ci_type: ci_type.to_string(),
            key: key.into(),
            name: name.into(),
            attrs: Attrs::new(),
        }
    }

    /// Sets an attribute (builder style); `None`-like empty values are the caller's choice.
    pub fn attr(mut self, name: &str, value: impl Into<serde_json::Value>) -> Ci {
        self.attrs.insert(name.to_string(), value.into());
        self
    }

    pub fn id(&self) -> CiRef {
        CiRef {
            ci_type: self.ci_type.clone(),
            key: self.key.clone(),
        }
    }
}

/// A directed, typed relation between two CIs of the same host.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Relation {
    pub from: CiRef,
    pub kind: String,
    pub to: CiRef,
}

/// An established outbound TCP connection from a local process (not a CI: ephemeral client ports
/// are not configuration). The collector turns a connection to another enrolled host's listening
/// service into a cross-host `depends_on` relation.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct OutboundConnection {
    /// `tcp` or `tcp6`.
    pub proto: String,
    pub remote_ip: String,
    pub remote_port: u16,
    /// The local listening service this connection serves from, if the process also listens
    /// (`tcp:8080`), so the dependency can be drawn service to service.
    #[serde(default)]
    pub local_service: Option<String>,
    #[serde(default)]
    pub process: Option<String>,
}

/// Everything one host reports, in canonical order.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Inventory {
    pub cis: Vec<Ci>,
    #[serde(default)]
    pub relations: Vec<Relation>,
    #[serde(default)]
    pub connections: Vec<OutboundConnection>,
}

impl Inventory {
    /// Sorts and deduplicates (by CI identity, relation, connection) so two discoveries of the
    /// same state are equal. For duplicate CI identities the last one wins.
    pub fn canonicalize(&mut self) {
        let mut by_id: BTreeMap<CiRef, Ci> = BTreeMap::new();
        for ci in self.cis.drain(..) {
            by_id.insert(ci.id(), ci);
        }
        self.cis = by_id.into_values().collect();
        let rels: BTreeSet<Relation> = self.relations.drain(..).collect();
        self.relations = rels.into_iter().collect();
        let conns: BTreeSet<OutboundConnection> = self.connections.drain(..).collect();
        self.connections = conns.into_iter().collect();
    }

    pub fn get(&self, id: &CiRef) -> Option<&Ci> {
        self.cis
            .binary_search_by(|c| {
                (c.ci_type.as_str(), c.key.as_str()).cmp(&(id.ci_type.as_str(), id.key.as_str()))
            })
            .ok()
            .map(|i| &self.cis[i])
    }
}

/// What changed between two canonical inventories.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct InventoryDelta {
    #[serde(default)]
    pub added: Vec<Ci>,
    /// Full new state of each changed CI.
    #[serde(default)]
    pub changed: Vec<Ci>,
    #[serde(default)]
    pub removed: Vec<CiRef>,
    #[serde(default)]
    pub relations_added: Vec<Relation>,
    #[serde(default)]
    pub relations_removed: Vec<Relation>,
    /// The full connection list when it changed (it is small and churns as a whole).
    #[serde(default)]
    pub connections: Option<Vec<OutboundConnection>>,
}

impl InventoryDelta {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty()
            && self.changed.is_empty()
            && self.removed.is_empty()
            && self.relations_added.is_empty()
            && self.relations_removed.is_empty()
            && self.connections.is_none()
    }

    /// Applies this delta to `base` (canonical), leaving it canonical.
    pub fn apply(&self, base: &mut Inventory) {
        let removed: BTreeSet<&CiRef> = self.removed.iter().collect();
        base.cis.retain(|c| !removed.contains(&c.id()));
        base.cis.extend(self.added.iter().cloned());
        base.cis.extend(self.changed.iter().cloned());
        let rel_removed: BTreeSet<&Relation> = self.relations_removed.iter().collect();
        base.relations.retain(|r| !rel_removed.contains(r));
        base.relations.extend(self.relations_added.iter().cloned());
        if let Some(conns) = &self.connections {
            base.connections = conns.clone();
        }
        base.canonicalize();
    }
}

/// The delta that turns `old` into `new` (both canonical).
pub fn diff(old: &Inventory, new: &Inventory) -> InventoryDelta {
    let mut delta = InventoryDelta::default();
    let old_by_id: BTreeMap<CiRef, &Ci> = old.cis.iter().map(|c| (c.id(), c)).collect();
    let new_ids: BTreeSet<CiRef> = new.cis.iter().map(Ci::id).collect();
    for ci in &new.cis {
        match old_by_id.get(&ci.id()) {
            None => delta.added.push(ci.clone()),
            Some(prev) if *prev != ci => delta.changed.push(ci.clone()),
            Some(_) => {}
        }
    }
    delta.removed = old_by_id
        .keys()
        .filter(|id| !new_ids.contains(*id))
        .cloned()
        .collect();
    let old_rels: BTreeSet<&Relation> = old.relations.iter().collect();
    let new_rels: BTreeSet<&Relation> = new.relations.iter().collect();
    delta.relations_added = new_rels
        .difference(&old_rels)
        .map(|r| (*r).clone())
        .collect();
    delta.relations_removed = old_rels
        .difference(&new_rels)
        .map(|r| (*r).clone())
        .collect();
    if old.connections != new.connections {
        delta.connections = Some(new.connections.clone());
    }
    delta
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inv(cis: &[(&str, &str, &str)], rels: &[(&str, &str, &str, &str, &str)]) -> Inventory {
        let mut i = Inventory {
            cis: cis
                .iter()
                .map(|(t, k, v)| Ci::new(t, *k, *k).attr("v", *v))
                .collect(),
            relations: rels
                .iter()
                .map(|(ft, fk, kind, tt, tk)| Relation {
                    from: CiRef::new(ft, *fk),
                    kind: kind.to_string(),
                    to: CiRef::new(tt, *tk),
                })
                .collect(),
            connections: vec![],
        };
        i.canonicalize();
        i
    }

    #[test]
    fn diff_then_apply_reaches_the_new_state() {
        let old = inv(
            &[
                ("host", "host", "1"),
                ("package", "openssl:amd64", "3.0.1"),
                ("package", "curl:amd64", "7.88"),
            ],
            &[("host", "host", "runs", "os", "os")],
        );
        let new = inv(
            &[
                ("host", "host", "1"),
                ("package", "openssl:amd64", "3.0.2"),
                ("filesystem", "/", "ext4"),
            ],
            &[("host", "host", "has", "filesystem", "/")],
        );
        let d = diff(&old, &new);
        assert_eq!(
            d.added.iter().map(|c| c.key.as_str()).collect::<Vec<_>>(),
            ["/"]
        );
        assert_eq!(
            d.changed.iter().map(|c| c.key.as_str()).collect::<Vec<_>>(),
            ["openssl:amd64"]
        );
        assert_eq!(d.removed, vec![CiRef::new("package", "curl:amd64")]);
        assert_eq!(d.relations_added.len(), 1);
        assert_eq!(d.relations_removed.len(), 1);
        let mut applied = old.clone();
        d.apply(&mut applied);
        assert_eq!(applied, new);
    }

    #[test]
    fn unchanged_inventory_has_an_empty_delta() {
        let a = inv(&[("host", "host", "1"), ("package", "a:amd64", "1")], &[]);
        let mut b = inv(&[("package", "a:amd64", "1"), ("host", "host", "1")], &[]);
        b.canonicalize();
        assert!(diff(&a, &b).is_empty());
        assert!(a.get(&CiRef::new("package", "a:amd64")).is_some());
        assert!(a.get(&CiRef::new("package", "b:amd64")).is_none());
    }

    #[test]
    fn connections_travel_whole_when_changed() {
        let a = Inventory::default();
        let mut b = Inventory::default();
        b.connections.push(OutboundConnection {
            proto: "tcp".into(),
            remote_ip: "127.0.0.2".into(),
            remote_port: 5432,
            local_service: None,
            process: Some("app".into()),
        });
        let d = diff(&a, &b);
        assert_eq!(d.connections.as_ref().map(Vec::len), Some(1));
        assert!(diff(&b, &b).is_empty());
    }
}
