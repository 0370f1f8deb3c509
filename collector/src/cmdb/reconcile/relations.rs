//! Relations of one reconciliation: each inventory relation resolved to CI ids, and an agent's
//! relations replaced by those of its snapshot.

use super::*;

impl Reconciliation<'_> {
    /// Id of the agent's CI `r` (non-retired unless `retired_too`), from this message's CIs or
    /// the store.
    pub(super) fn resolve(
        &self,
        r: &CiRef,
        ids: &HashMap<(&str, &str), i64>,
        retired_too: bool,
    ) -> Result<Option<i64>, StoreError> {
        if let Some(id) = ids.get(&(r.ci_type.as_str(), r.key.as_str())) {
            return Ok(Some(*id));
        }
        Ok(self
            .conn
            .prepare_cached(
                "SELECT id FROM cis
                 WHERE agent_id = ?1 AND type = ?2 AND key = ?3
                   AND (?4 OR state != 'retired')",
            )?
            .query_row(params![self.agent, r.ci_type, r.key, retired_too], |r| {
                r.get(0)
            })
            .optional()?)
    }

    /// Ids of both ends of `rel`; ends retired by this very delta still resolve for removals.
    pub(super) fn resolve_pair(
        &self,
        rel: &Relation,
        ids: &HashMap<(&str, &str), i64>,
        retired_too: bool,
    ) -> Result<Option<(i64, i64)>, StoreError> {
        let Some(from) = self.resolve(&rel.from, ids, retired_too)? else {
            return Ok(None);
        };
        Ok(self
            .resolve(&rel.to, ids, retired_too)?
            .map(|to| (from, to)))
    }

    pub(super) fn insert_relation(
        &mut self,
        from: i64,
        kind: &str,
        to: i64,
    ) -> Result<(), StoreError> {
        let full = self.new_relations.push([
            Value::Integer(from),
            Value::Text(kind.to_owned()),
            Value::Integer(to),
            Value::Text(self.agent.to_owned()),
            Value::Integer(self.now),
        ]);
        if full {
            self.flush()?;
        }
        Ok(())
    }

    /// Makes the agent's reported relations exactly `rels` (those whose ends are in `ids`).
    pub(super) fn replace_relations(
        &mut self,
        rels: &[Relation],
        ids: &HashMap<(&str, &str), i64>,
    ) -> Result<(), StoreError> {
        let mut want: HashSet<(i64, &str, i64)> = HashSet::with_capacity(rels.len());
        for rel in rels {
            if !AGENT_RELATION_KINDS.contains(&rel.kind.as_str()) {
                continue;
            }
            let from = ids.get(&(rel.from.ci_type.as_str(), rel.from.key.as_str()));
            let to = ids.get(&(rel.to.ci_type.as_str(), rel.to.key.as_str()));
            if let (Some(f), Some(t)) = (from, to) {
                want.insert((*f, rel.kind.as_str(), *t));
            }
        }
        let have: Vec<(i64, String, i64)> = {
            let mut stmt = self
                .conn
                .prepare_cached("SELECT from_ci, kind, to_ci FROM relations WHERE source = ?1")?;
            let rows = stmt.query_map([self.agent], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
            rows.collect::<rusqlite::Result<_>>()?
        };
        for (f, k, t) in &have {
            if !want.remove(&(*f, k.as_str(), *t)) {
                self.conn
                    .prepare_cached(
                        "DELETE FROM relations
                         WHERE from_ci = ?1 AND kind = ?2 AND to_ci = ?3 AND source = ?4",
                    )?
                    .execute(params![f, k, t, self.agent])?;
            }
        }
        for (f, k, t) in want {
            self.insert_relation(f, k, t)?;
        }
        Ok(())
    }
}
