//! The CMDB reads other components make about one agent's host, so that none of them writes
//! CMDB SQL of its own: the incident engine (a CI's id for an incident, a host's CI and tags for
//! rule scopes, the `depends_on` targets of a host for probable causes, stale inventories) and
//! the Alertmanager receiver (which agent an alert's host name or address names).
//!
//! This module never writes to the store.

use std::collections::BTreeMap;
use std::net::IpAddr;

use rusqlite::{params, Connection, OptionalExtension};
use vigil_shared::inventory::{ci_type, relation};

/// One enrolled (not revoked) agent's host as rule scopes see it.
#[derive(Debug, Clone, PartialEq)]
pub struct HostRow {
    pub agent_id: String,
    pub hostname: String,
    /// Its host CI, once an inventory arrived.
    pub ci_id: Option<i64>,
    /// The host CI's effective tags.
    pub tags: BTreeMap<String, String>,
}

/// The effective tags of a host CI: discovered `attrs.tags`, overridden by manual
/// `manual_attrs.tags`.
pub fn host_tags(attrs: &str, manual_attrs: Option<&str>) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for text in std::iter::once(attrs).chain(manual_attrs) {
        let Ok(serde_json::Value::Object(obj)) = serde_json::from_str::<serde_json::Value>(text)
        else {
            continue;
        };
        if let Some(serde_json::Value::Object(tags)) = obj.get("tags") {
            for (k, v) in tags {
                let v = match v {
                    serde_json::Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                out.insert(k.clone(), v);
            }
        }
    }
    out
}

fn host_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<HostRow> {
    let attrs: Option<String> = r.get(3)?;
    let manual: Option<String> = r.get(4)?;
    Ok(HostRow {
        agent_id: r.get(0)?,
        hostname: r.get(1)?,
        ci_id: r.get(2)?,
        tags: attrs
            .as_deref()
            .map(|a| host_tags(a, manual.as_deref()))
            .unwrap_or_default(),
    })
}

const HOST_SQL: &str = "SELECT a.id, a.hostname, c.id, c.attrs, c.manual_attrs
     FROM agents a LEFT JOIN cis c ON c.agent_id = a.id AND c.type = 'host' AND c.key = 'host'";

/// Every enrolled, not revoked agent's host.
pub fn hosts(conn: &Connection) -> rusqlite::Result<Vec<HostRow>> {
    conn.prepare_cached(&format!("{HOST_SQL} WHERE a.revoked_at_ms IS NULL"))?
        .query_map([], host_row)?
        .collect()
}

/// One agent's host (revoked or not).
pub fn host(conn: &Connection, agent: &str) -> rusqlite::Result<Option<HostRow>> {
    conn.prepare_cached(&format!("{HOST_SQL} WHERE a.id = ?1"))?
        .query_row([agent], host_row)
        .optional()
}

/// The id of the agent's CI `(ci_type, key)`, if the CMDB has it.
pub fn ci_id(
    conn: &Connection,
    agent: &str,
    ci_type: &str,
    key: &str,
) -> rusqlite::Result<Option<i64>> {
    conn.prepare_cached("SELECT id FROM cis WHERE agent_id = ?1 AND type = ?2 AND key = ?3")?
        .query_row(params![agent, ci_type, key], |r| r.get(0))
        .optional()
}

/// What the agent's host `depends_on` on other hosts: `(their agent, the CI depended on)`.
pub fn dependencies(conn: &Connection, agent: &str) -> rusqlite::Result<Vec<(String, i64)>> {
    conn.prepare_cached(
        "SELECT DISTINCT t.agent_id, t.id FROM relations r
            JOIN cis f ON f.id = r.from_ci
            JOIN cis t ON t.id = r.to_ci
         WHERE r.kind = ?2 AND f.agent_id = ?1 AND t.agent_id IS NOT NULL AND t.agent_id != ?1
         ORDER BY t.agent_id, t.id",
    )?
    .query_map(params![agent, relation::DEPENDS_ON], |r| {
        Ok((r.get(0)?, r.get(1)?))
    })?
    .collect()
}

/// Whether each agent's inventory is stale (`store.stale_after`).
pub fn stale_inventories(conn: &Connection) -> rusqlite::Result<Vec<(String, bool)>> {
    conn.prepare_cached("SELECT agent_id, stale FROM inventory_state")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect()
}

/// The first of `names` that names an enrolled agent: by host name (case-insensitively, also as
/// short name vs FQDN), or for an IP address the one agent that reported it (`ip_address` CI;
/// loopback and link-local never match, nor an address two hosts claim).
pub fn agent_named(conn: &Connection, names: &[String]) -> rusqlite::Result<Option<HostRow>> {
    for name in names {
        let agent = match name.parse::<IpAddr>() {
            Ok(ip) => agent_by_ip(conn, ip)?,
            Err(_) => agent_by_name(conn, name)?,
        };
        if let Some(agent_id) = agent {
            return host(conn, &agent_id);
        }
    }
    Ok(None)
}

/// The one agent `name` names: the agent of that exact host name (case-insensitively), else
/// the one agent whose name is its short name or FQDN. Two candidates are no answer: an alert
/// is never attached (or suppressed) on a guess between hosts.
fn agent_by_name(c: &Connection, name: &str) -> rusqlite::Result<Option<String>> {
    let short = name.split('.').next().unwrap_or(name);
    let candidates: Vec<(String, bool)> = c
        .prepare_cached(
            "SELECT id, lower(hostname) = lower(?1) FROM agents
             WHERE revoked_at_ms IS NULL AND (
                lower(hostname) = lower(?1)
                OR lower(hostname) = lower(?2)
                OR substr(lower(hostname), 1, length(?1) + 1) = lower(?1) || '.')
             LIMIT 16",
        )?
        .query_map(params![name, short], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<_>>()?;
    let exact: Vec<&String> = candidates.iter().filter(|c| c.1).map(|c| &c.0).collect();
    let pick = match (exact.as_slice(), candidates.as_slice()) {
        ([one], _) => Some((*one).clone()),
        ([], [(one, _)]) => Some(one.clone()),
        _ => None,
    };
    if pick.is_none() && candidates.len() > 1 {
        tracing::warn!(
            name,
            candidates = candidates.len(),
            "a host name names several agents: not attached to any"
        );
    }
    Ok(pick)
}

fn agent_by_ip(c: &Connection, ip: IpAddr) -> rusqlite::Result<Option<String>> {
    let local = match ip {
        IpAddr::V4(v4) => v4.is_loopback() || v4.is_link_local() || v4.is_unspecified(),
        IpAddr::V6(v6) => {
            v6.is_loopback() || v6.is_unspecified() || (v6.segments()[0] & 0xffc0) == 0xfe80
        }
    };
    if local {
        return Ok(None);
    }
    let ip = ip.to_string();
    let agents: Vec<String> = c
        .prepare_cached(
            "SELECT DISTINCT c.agent_id FROM cis c JOIN agents a ON a.id = c.agent_id
             WHERE c.type = ?2 AND c.state = 'active' AND a.revoked_at_ms IS NULL
                AND substr(c.key, 1, length(?1) + 1) = ?1 || '/'
             LIMIT 2",
        )?
        .query_map(params![&ip, ci_type::IP_ADDRESS], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    // An address two hosts claim (NAT, a private range reused) names neither.
    Ok(match agents.as_slice() {
        [one] => Some(one.clone()),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_tags_override_discovered_ones() {
        let tags = host_tags(
            r#"{"tags": {"role": "web", "env": "prod"}}"#,
            Some(r#"{"tags": {"env": "staging"}}"#),
        );
        assert_eq!(tags.get("role").map(String::as_str), Some("web"));
        assert_eq!(tags.get("env").map(String::as_str), Some("staging"));
        assert!(host_tags("not json", None).is_empty());
    }
}

/// The CIs of a business service: those related to its CI (either way, any relation kind), and
/// when one is a host, everything on that host (its CIs and checks).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ServiceMembers {
    pub cis: std::collections::HashSet<i64>,
    /// Agents whose host CI is related to the service.
    pub hosts: std::collections::HashSet<String>,
}

impl ServiceMembers {
    /// Whether a CI (or a check, `ci_id` `None`) of `agent` belongs to the service.
    pub fn contains(&self, agent: Option<&str>, ci_id: Option<i64>) -> bool {
        ci_id.is_some_and(|id| self.cis.contains(&id))
            || agent.is_some_and(|a| self.hosts.contains(a))
    }
}

/// Every business service of the CMDB (by name) with its members; retired ones left out.
pub fn services(conn: &Connection) -> rusqlite::Result<BTreeMap<String, ServiceMembers>> {
    let mut out: BTreeMap<String, ServiceMembers> = BTreeMap::new();
    let mut stmt = conn.prepare_cached(
        "SELECT s.name, c.id, c.agent_id, c.type
         FROM cis s
         JOIN relations r ON r.from_ci = s.id OR r.to_ci = s.id
         JOIN cis c ON c.id = CASE WHEN r.from_ci = s.id THEN r.to_ci ELSE r.from_ci END
         WHERE s.type = 'business_service' AND s.state != 'retired'",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, i64>(1)?,
            r.get::<_, Option<String>>(2)?,
            r.get::<_, String>(3)?,
        ))
    })?;
    for row in rows {
        let (name, ci, agent, ty) = row?;
        let m = out.entry(name).or_default();
        m.cis.insert(ci);
        if ty == ci_type::HOST {
            if let Some(a) = agent {
                m.hosts.insert(a);
            }
        }
    }
    // Services with no relation yet are services all the same.
    let mut stmt = conn.prepare_cached(
        "SELECT name FROM cis WHERE type = 'business_service' AND state != 'retired'",
    )?;
    for name in stmt.query_map([], |r| r.get::<_, String>(0))? {
        out.entry(name?).or_default();
    }
    Ok(out)
}
