//! `inventory_state` of one reconciliation: the version, report time and host identity an agent
//! had before this message, what the message leaves, and the cloned-host check (a machine-id
//! an earlier active host of another agent already has).

use super::*;

/// What `inventory_state` holds for an agent before this message.
#[derive(Debug, Clone)]
pub(in crate::cmdb) struct PrevState {
    pub version: u64,
    pub ts_ms: i64,
    pub machine_id: Option<String>,
    pub dmi_uuid: Option<String>,
    pub duplicate_of: Option<String>,
    pub stale: bool,
}

pub(in crate::cmdb) fn read_state(
    conn: &Connection,
    agent: &str,
) -> Result<Option<PrevState>, StoreError> {
    let row = conn
        .prepare_cached(
            "SELECT version, ts_ms, machine_id, dmi_uuid, duplicate_of, stale
             FROM inventory_state WHERE agent_id = ?1",
        )?
        .query_row([agent], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                PrevState {
                    version: 0,
                    ts_ms: r.get(1)?,
                    machine_id: r.get(2)?,
                    dmi_uuid: r.get(3)?,
                    duplicate_of: r.get(4)?,
                    stale: r.get(5)?,
                },
            ))
        })
        .optional()?;
    row.map(|(v, mut s)| {
        s.version = u64::try_from(v).map_err(|_| StoreError::Corrupt {
            column: "inventory_state.version",
            value: v.to_string(),
        })?;
        Ok(s)
    })
    .transpose()
}

/// A newly detected duplicate host, for the caller to log after the commit.
#[derive(Debug)]
pub(in crate::cmdb) struct DuplicateNote {
    pub other_agent: String,
    pub machine_id: String,
}

impl Reconciliation<'_> {
    /// Records version, report time and identity; flags a duplicate machine-id.
    pub(super) fn write_state(
        &mut self,
        version: i64,
        reported_ms: i64,
        machine_id: Option<String>,
        dmi_uuid: Option<String>,
        prev: Option<&PrevState>,
    ) -> Result<(), StoreError> {
        let duplicate_of = match &machine_id {
            Some(m) => self.find_duplicate(m)?,
            None => None,
        };
        if let (Some(other), Some(m)) = (&duplicate_of, &machine_id) {
            if prev.and_then(|p| p.duplicate_of.as_ref()) != Some(other) {
                self.duplicate_note = Some(DuplicateNote {
                    other_agent: other.clone(),
                    machine_id: m.clone(),
                });
            }
        }
        if let Some(p) = prev {
            if (&p.machine_id, &p.dmi_uuid, &p.duplicate_of)
                == (&machine_id, &dmi_uuid, &duplicate_of)
            {
                // The usual delta: only the version and times change. Naming the identity
                // columns would rewrite their index entries (a page per message) for nothing.
                self.conn
                    .prepare_cached(
                        "UPDATE inventory_state SET version = ?2, ts_ms = ?3, reported_ms = ?4,
                             stale = 0
                         WHERE agent_id = ?1",
                    )?
                    .execute(params![self.agent, version, self.now, reported_ms])?;
                return Ok(());
            }
        }
        self.conn
            .prepare_cached(
                "INSERT INTO inventory_state
                     (agent_id, version, ts_ms, reported_ms, machine_id, dmi_uuid, duplicate_of,
                      stale)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 0)
                 ON CONFLICT (agent_id) DO UPDATE SET
                     version = excluded.version, ts_ms = excluded.ts_ms,
                     reported_ms = excluded.reported_ms, machine_id = excluded.machine_id,
                     dmi_uuid = excluded.dmi_uuid, duplicate_of = excluded.duplicate_of,
                     stale = 0",
            )?
            .execute(params![
                self.agent,
                version,
                self.now,
                reported_ms,
                machine_id,
                dmi_uuid,
                duplicate_of
            ])?;
        Ok(())
    }

    /// The agent that had `machine_id` first (earlier active host CI, not revoked), if another.
    pub(super) fn find_duplicate(&self, machine_id: &str) -> Result<Option<String>, StoreError> {
        let first_seen: Option<i64> = self
            .conn
            .prepare_cached(
                "SELECT first_seen_ms FROM cis WHERE agent_id = ?1 AND type = 'host' AND key = 'host'",
            )?
            .query_row([self.agent], |r| r.get(0))
            .optional()?;
        let first_seen = first_seen.unwrap_or(self.now);
        Ok(self
            .conn
            .prepare_cached(
                // CROSS JOIN keeps this order: the few agents with this machine-id first (the
                // planner would otherwise walk every host CI through `cis_type_state`).
                "SELECT s.agent_id FROM inventory_state s
                 CROSS JOIN cis c ON c.agent_id = s.agent_id AND c.type = 'host' AND c.key = 'host'
                 CROSS JOIN agents a ON a.id = s.agent_id
                 WHERE s.machine_id = ?1 AND s.agent_id != ?2 AND c.state = 'active'
                   AND a.revoked_at_ms IS NULL
                   AND (c.first_seen_ms < ?3 OR (c.first_seen_ms = ?3 AND s.agent_id < ?2))
                 ORDER BY c.first_seen_ms, s.agent_id LIMIT 1",
            )?
            .query_row(params![machine_id, self.agent, first_seen], |r| r.get(0))
            .optional()?)
    }
}
