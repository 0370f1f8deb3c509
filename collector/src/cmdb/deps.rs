//! Cross-host dependencies from the wire: each agent's last reported outbound connections
//! (`connections`) and the `depends_on` relations derived from them (rule in the module docs of
//! `cmdb`).
//!
//! Runs inside the caller's transaction; never contacts an address it reads (addresses are only
//! compared), never touches relations other than `depends_on` rows of source `wire:<agent>`.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::IpAddr;

use rusqlite::{params, Connection, OptionalExtension};
use vigil_shared::inventory::{ci_type, relation, Attrs, OutboundConnection};

use super::wire_source;
use crate::store::StoreError;

/// At most this many connections are kept per agent (a frame could carry more).
pub const MAX_CONNECTIONS: usize = 10_000;

/// An address as the CMDB compares it: canonical text, IPv4-mapped IPv6 as IPv4.
pub(super) fn normalize_ip(s: &str) -> String {
    let s = s.trim();
    let s = s
        .strip_prefix('[')
        .and_then(|x| x.strip_suffix(']'))
        .unwrap_or(s);
    match s.parse::<IpAddr>() {
        Ok(IpAddr::V6(v6)) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => v6.to_string(),
        },
        Ok(ip) => ip.to_string(),
        Err(_) => s.to_owned(),
    }
}

fn is_loopback(ip: &str) -> bool {
    ip.parse::<IpAddr>().is_ok_and(|a| a.is_loopback())
}

fn is_wildcard(addr: &str) -> bool {
    matches!(addr.trim(), "" | "*" | "0.0.0.0" | "::" | "[::]")
}

/// Whether a listening service with `attrs` accepts connections to `ip` (normalized): its
/// `address` (a string or a list) is a wildcard or `ip`; no address attribute means any.
fn binds(attrs: &str, ip: &str) -> bool {
    let attrs: Attrs = serde_json::from_str(attrs).unwrap_or_default();
    let matches = |a: &str| is_wildcard(a) || normalize_ip(a) == ip;
    match attrs.get("address") {
        None => true,
        Some(serde_json::Value::String(a)) => matches(a),
        Some(serde_json::Value::Array(list)) => {
            list.iter().any(|v| v.as_str().is_some_and(&matches))
        }
        Some(_) => false,
    }
}

/// Replaces the agent's stored connections.
pub(super) fn store_connections(
    conn: &Connection,
    agent: &str,
    conns: &[OutboundConnection],
) -> Result<(), StoreError> {
    conn.prepare_cached("DELETE FROM connections WHERE agent_id = ?1")?
        .execute([agent])?;
    if conns.len() > MAX_CONNECTIONS {
        tracing::warn!(
            agent,
            reported = conns.len(),
            kept = MAX_CONNECTIONS,
            "too many outbound connections reported; the rest are ignored"
        );
    }
    let mut stmt = conn.prepare_cached(
        "INSERT INTO connections (agent_id, proto, remote_ip, remote_port, local_service, process)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?;
    for c in conns.iter().take(MAX_CONNECTIONS) {
        stmt.execute(params![
            agent,
            c.proto,
            normalize_ip(&c.remote_ip),
            c.remote_port,
            c.local_service,
            c.process
        ])?;
    }
    Ok(())
}

fn machine_id(conn: &Connection, agent: &str) -> Result<Option<String>, StoreError> {
    Ok(conn
        .prepare_cached("SELECT machine_id FROM inventory_state WHERE agent_id = ?1")?
        .query_row([agent], |r| r.get(0))
        .optional()?
        .flatten())
}

fn strings(
    conn: &Connection,
    sql: &str,
    p: impl rusqlite::Params,
) -> Result<Vec<String>, StoreError> {
    let mut stmt = conn.prepare_cached(sql)?;
    let rows = stmt.query_map(p, |r| r.get(0))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Recomputes the `depends_on` relations of `agent` (when `self_too`) and, when `around`, of
/// every agent whose connections may reach `agent` (it depends on it now, or it connects to one
/// of its addresses, or to loopback on its machine).
pub(super) fn recompute_around(
    conn: &Connection,
    agent: &str,
    now: i64,
    self_too: bool,
    around: bool,
) -> Result<(), StoreError> {
    let mut clients: BTreeSet<String> = BTreeSet::new();
    if self_too {
        clients.insert(agent.to_owned());
    }
    if around {
        let sources = strings(
            conn,
            "SELECT DISTINCT r.source FROM cis c JOIN relations r ON r.to_ci = c.id
             WHERE c.agent_id = ?1 AND c.type = 'listening_service' AND r.kind = 'depends_on'",
            [agent],
        )?;
        clients.extend(
            sources
                .iter()
                .filter_map(|s| s.strip_prefix("wire:"))
                .map(str::to_owned),
        );
        for addr in addresses(conn, agent)? {
            clients.extend(strings(
                conn,
                "SELECT DISTINCT agent_id FROM connections WHERE remote_ip = ?1",
                [addr],
            )?);
        }
        if let Some(m) = machine_id(conn, agent)? {
            clients.extend(strings(
                conn,
                "SELECT DISTINCT c.agent_id FROM inventory_state s
                 JOIN connections c ON c.agent_id = s.agent_id
                 WHERE s.machine_id = ?1 AND (c.remote_ip LIKE '127.%' OR c.remote_ip = '::1')",
                [m],
            )?);
        }
    }
    for client in &clients {
        recompute(conn, client, now)?;
    }
    Ok(())
}

/// The addresses of the agent's non-retired `ip_address` CIs (key `address/prefix`).
fn addresses(conn: &Connection, agent: &str) -> Result<Vec<String>, StoreError> {
    let keys = strings(
        conn,
        "SELECT key FROM cis WHERE agent_id = ?1 AND type = 'ip_address' AND state != 'retired'",
        [agent],
    )?;
    Ok(keys
        .iter()
        .map(|k| normalize_ip(k.split('/').next().unwrap_or(k)))
        .collect())
}

fn ci_id(conn: &Connection, agent: &str, ty: &str, key: &str) -> Result<Option<i64>, StoreError> {
    Ok(conn
        .prepare_cached(
            "SELECT id FROM cis
             WHERE agent_id = ?1 AND type = ?2 AND key = ?3 AND state != 'retired'",
        )?
        .query_row(params![agent, ty, key], |r| r.get(0))
        .optional()?)
}

/// Whether `agent` has a non-retired `ip_address` CI of address `ip`.
fn has_address(conn: &Connection, agent: &str, ip: &str) -> Result<bool, StoreError> {
    Ok(conn
        .prepare_cached(
            "SELECT 1 FROM cis
             WHERE agent_id = ?1 AND type = 'ip_address' AND key >= ?2 AND key < ?3
               AND state != 'retired'",
        )?
        .exists(params![agent, format!("{ip}/"), format!("{ip}0")])?)
}

/// The agents a connection to `ip` (normalized) may reach.
fn targets(
    conn: &Connection,
    client: &str,
    client_machine: Option<&str>,
    ip: &str,
) -> Result<Vec<String>, StoreError> {
    // Loopback, or an address the client has itself (a docker bridge that every host has):
    // the same machine only.
    if is_loopback(ip) || has_address(conn, client, ip)? {
        return match client_machine {
            Some(m) => strings(
                conn,
                "SELECT agent_id FROM inventory_state WHERE machine_id = ?1",
                [m],
            ),
            None => Ok(vec![client.to_owned()]),
        };
    }
    // Keys are `address/prefix`: the range [addr + "/", addr + "0") holds exactly those.
    strings(
        conn,
        "SELECT DISTINCT agent_id FROM cis INDEXED BY cis_ip_address
         WHERE type = 'ip_address' AND key >= ?1 AND key < ?2
           AND state != 'retired' AND agent_id IS NOT NULL",
        params![format!("{ip}/"), format!("{ip}0")],
    )
}

/// Makes `client`'s `depends_on` relations match its stored connections.
fn recompute(conn: &Connection, client: &str, now: i64) -> Result<(), StoreError> {
    let source = wire_source(client);
    let conns: Vec<(String, u16, Option<String>)> = {
        let mut stmt = conn.prepare_cached(
            "SELECT remote_ip, remote_port, local_service FROM connections WHERE agent_id = ?1",
        )?;
        let rows = stmt.query_map([client], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
        rows.collect::<rusqlite::Result<_>>()?
    };
    let have: HashSet<(i64, i64)> = {
        let mut stmt = conn.prepare_cached(
            "SELECT from_ci, to_ci FROM relations WHERE source = ?1 AND kind = 'depends_on'",
        )?;
        let rows = stmt.query_map([&source], |r| Ok((r.get(0)?, r.get(1)?)))?;
        rows.collect::<rusqlite::Result<_>>()?
    };
    if conns.is_empty() && have.is_empty() {
        return Ok(());
    }
    let host = ci_id(conn, client, ci_type::HOST, ci_type::HOST)?;
    let machine = machine_id(conn, client)?;
    let mut reach: HashMap<String, Vec<String>> = HashMap::new();
    let mut want: HashSet<(i64, i64)> = HashSet::new();
    let mut listener = conn.prepare_cached(
        "SELECT id, attrs FROM cis
         WHERE agent_id = ?1 AND type = 'listening_service' AND key = ?2 AND state != 'retired'",
    )?;
    for (ip, port, local) in &conns {
        let from = match local {
            Some(k) => ci_id(conn, client, ci_type::LISTENING_SERVICE, k)?.or(host),
            None => host,
        };
        let Some(from) = from else { continue };
        if !reach.contains_key(ip) {
            let t = targets(conn, client, machine.as_deref(), ip)?;
            reach.insert(ip.clone(), t);
        }
        for target in reach.get(ip).into_iter().flatten() {
            for key in [format!("tcp:{port}"), format!("tcp6:{port}")] {
                let found: Option<(i64, String)> = listener
                    .query_row(params![target, key], |r| Ok((r.get(0)?, r.get(1)?)))
                    .optional()?;
                if let Some((to, attrs)) = found {
                    if to != from && binds(&attrs, ip) {
                        want.insert((from, to));
                    }
                }
            }
        }
    }
    for (from, to) in have.difference(&want) {
        conn.prepare_cached(
            "DELETE FROM relations
             WHERE from_ci = ?1 AND kind = 'depends_on' AND to_ci = ?2 AND source = ?3",
        )?
        .execute(params![from, to, source])?;
    }
    for (from, to) in want.difference(&have) {
        conn.prepare_cached(
            "INSERT OR IGNORE INTO relations (from_ci, kind, to_ci, source, first_seen_ms)
             VALUES (?1, ?2, ?3, ?4, ?5)",
        )?
        .execute(params![from, relation::DEPENDS_ON, to, source, now])?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_normalize() {
        let check =
            |input: &str, expected: &str| assert_eq!(normalize_ip(input), expected, "{input}");
        check("10.0.0.2", "10.0.0.2");
        check(" ::ffff:10.0.0.2 ", "10.0.0.2");
        check("[2001:DB8::1]", "2001:db8::1");
        check("2001:0db8:0000::0001", "2001:db8::1");
        check("not-an-ip", "not-an-ip");
    }

    #[test]
    fn bound_address_matching() {
        let check = |attrs: &str, ip: &str, expected: bool| {
            assert_eq!(binds(attrs, ip), expected, "{attrs} / {ip}");
        };
        check(r#"{"address":"0.0.0.0"}"#, "192.0.2.7", true);
        check(r#"{"address":"::"}"#, "192.0.2.7", true);
        check(r#"{"address":"192.0.2.7"}"#, "192.0.2.7", true);
        check(r#"{"address":"192.0.2.8"}"#, "192.0.2.7", false);
        check(
            r#"{"address":["127.0.0.1","192.0.2.7"]}"#,
            "192.0.2.7",
            true,
        );
        check(r#"{"address":["127.0.0.1"]}"#, "192.0.2.7", false);
        check(r#"{"port":5432}"#, "192.0.2.7", true);
        check(r#"{"address":5}"#, "192.0.2.7", false);
        check("not json", "192.0.2.7", true);
        assert!(is_loopback("127.0.0.53") && is_loopback("::1") && !is_loopback("10.0.0.1"));
    }
}
