//! Manual data: what the API (admin) writes into the CMDB. Business services as CIs, relations
//! from a business service to hosts or listening services, and the manual attributes of any CI
//! (owner, criticality 1-5, tags, vendor).
//!
//! Lifecycle: a business service is retired through the API ([`retire_ci`]: history `removed`,
//! its relations removed, each with its history row); created again under the same name, the
//! same CI is active again (history `added`, old value `"retired"`), as a discovered CI that
//! reappears. Discovered CIs are retired by discovery only (a retire is a [`WriteError::Conflict`]).
//!
//! Ownership: discovered attributes (`attrs`, `name`, `key`, `type` of a `discovery` CI) belong
//! to discovery and a write to them is a [`WriteError::Conflict`]; manual attributes
//! (`cis.manual_attrs`) belong to the API. A business service's own `attrs`/`name` belong to the
//! API too. Every change is a `ci_history` row with source `api:<token id>` ([`api_source`]) or `user:<name>`:
//! manual attributes as `manual.<name>`, the display name as `_name`, relations as
//! `relation.<kind>` on the business service (old/new value: the other end's CI id).
//!
//! Each write is one `BEGIN IMMEDIATE` transaction; metrics are updated after the commit.
//! This module must never: change a discovered attribute, create a CI of a discovered type,
//! touch a relation that does not start at a business service, or panic on caller input.

use std::collections::BTreeMap;

use rusqlite::{params, Connection, OptionalExtension, Transaction, TransactionBehavior};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};
use vigil_shared::inventory::ci_type;

use crate::cmdb::{metrics_for, ALL_ATTRIBUTES, NAME_ATTRIBUTE};
use crate::metrics::cmdb_types;
use crate::store::{Db, StoreError};

/// Relation kinds the API may create (from a business service).
pub const API_RELATION_KINDS: &[&str] = &["depends_on", "runs_on", "uses", "contains"];
/// CI types a business service may relate to.
pub const API_RELATION_TARGETS: &[&str] = &[ci_type::HOST, ci_type::LISTENING_SERVICE];
/// Longest owner, vendor or business service name (characters).
pub const MAX_TEXT: usize = 200;
/// Most tags on one CI.
pub const MAX_TAGS: usize = 64;
/// Longest tag key / value (characters).
pub const MAX_TAG_KEY: usize = 64;
pub const MAX_TAG_VALUE: usize = 256;

/// The `ci_history.source` of a write by API token `token_id`.
pub fn api_source(token_id: &str) -> String {
    format!("api:{token_id}")
}

/// Why a write was refused.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// A CI or relation named by the request does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The request conflicts with what is stored (a name taken, an attribute owned by discovery).
    #[error("{0}")]
    Conflict(String),
    /// The request is well-formed but not acceptable (bad criticality, wrong type...).
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<rusqlite::Error> for WriteError {
    fn from(e: rusqlite::Error) -> Self {
        WriteError::Store(e.into())
    }
}

/// The API-owned attributes of a CI (`cis.manual_attrs`); every key is always present.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Manual {
    pub owner: Option<String>,
    /// 1 (most critical) to 5.
    pub criticality: Option<u8>,
    pub tags: BTreeMap<String, String>,
    pub vendor: Option<String>,
}

/// Deserializes a present field (even `null`) as `Some`, so `Option<Option<T>>` tells absent
/// (`None`), cleared (`Some(None)`) and set (`Some(Some(v))`) apart.
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<T>, D::Error> {
    T::deserialize(d).map(Some)
}

/// A change of manual attributes: an absent field stays, `null` clears, a value sets (`tags`
/// replaces the whole tag map).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManualPatch {
    #[serde(default, deserialize_with = "present")]
    pub owner: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    pub criticality: Option<Option<i64>>,
    #[serde(default, deserialize_with = "present")]
    pub tags: Option<Option<BTreeMap<String, String>>>,
    #[serde(default, deserialize_with = "present")]
    pub vendor: Option<Option<String>>,
}

/// Body of `POST /cis`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewCi {
    #[serde(rename = "type")]
    pub ci_type: String,
    pub name: String,
    #[serde(default)]
    pub manual: Option<ManualPatch>,
    #[serde(default)]
    pub attrs: Option<Map<String, Value>>,
}

/// Body of `PATCH /cis/{id}`. `attrs`, `name`, `key` and `type` are only here to be refused on
/// discovered CIs (409) or checked on business services.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CiPatch {
    #[serde(default)]
    pub manual: Option<ManualPatch>,
    #[serde(default, deserialize_with = "present")]
    pub attrs: Option<Option<Value>>,
    #[serde(default, deserialize_with = "present")]
    pub name: Option<Option<Value>>,
    #[serde(default, deserialize_with = "present")]
    pub key: Option<Option<Value>>,
    #[serde(default, rename = "type", deserialize_with = "present")]
    pub ci_type: Option<Option<Value>>,
}

/// Body of `POST /relations` and `DELETE /relations`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelationSpec {
    pub from: i64,
    pub kind: String,
    pub to: i64,
}

fn invalid(msg: impl Into<String>) -> WriteError {
    WriteError::Invalid(msg.into())
}

/// A trimmed, non-empty, bounded text without control characters.
fn text(field: &str, s: &str) -> Result<String, WriteError> {
    let t = s.trim();
    if t.is_empty() {
        return Err(invalid(format!(
            "{field} must not be empty (null clears it)"
        )));
    }
    if t.chars().count() > MAX_TEXT {
        return Err(invalid(format!(
            "{field} is longer than {MAX_TEXT} characters"
        )));
    }
    if t.chars().any(char::is_control) {
        return Err(invalid(format!("{field} contains control characters")));
    }
    Ok(t.to_owned())
}

/// Whether `k` can be a tag key: 1-64 characters, none of `"`, `=`, `\`, `,` or controls (so it
/// reads back in a `tag=k=v` filter and in a JSON path).
pub fn valid_tag_key(k: &str) -> bool {
    !k.is_empty()
        && k.chars().count() <= MAX_TAG_KEY
        && !k
            .chars()
            .any(|c| matches!(c, '"' | '=' | '\\' | ',') || c.is_control())
}

impl ManualPatch {
    /// `base` with this patch applied, or why the patch is not acceptable.
    pub fn apply(&self, base: &Manual) -> Result<Manual, WriteError> {
        let mut m = base.clone();
        if let Some(owner) = &self.owner {
            m.owner = owner.as_deref().map(|s| text("owner", s)).transpose()?;
        }
        if let Some(vendor) = &self.vendor {
            m.vendor = vendor.as_deref().map(|s| text("vendor", s)).transpose()?;
        }
        if let Some(c) = self.criticality {
            m.criticality = match c {
                None => None,
                Some(c @ 1..=5) => u8::try_from(c).ok(),
                Some(c) => {
                    return Err(invalid(format!(
                        "criticality must be an integer from 1 to 5, got {c}"
                    )))
                }
            };
        }
        if let Some(tags) = &self.tags {
            let tags = tags.clone().unwrap_or_default();
            if tags.len() > MAX_TAGS {
                return Err(invalid(format!("at most {MAX_TAGS} tags")));
            }
            for (k, v) in &tags {
                if !valid_tag_key(k) {
                    return Err(invalid(format!(
                        "invalid tag key {k:?}: 1-{MAX_TAG_KEY} characters, without '\"', '=', \
                         '\\', ',' or control characters"
                    )));
                }
                if v.chars().count() > MAX_TAG_VALUE || v.chars().any(char::is_control) {
                    return Err(invalid(format!(
                        "invalid value of tag {k:?}: at most {MAX_TAG_VALUE} characters, \
                         without control characters"
                    )));
                }
            }
            m.tags = tags;
        }
        Ok(m)
    }
}

impl Manual {
    /// `(attribute, old, new)` of each manual attribute that differs (values as JSON).
    fn changes(&self, new: &Manual) -> Vec<(&'static str, Option<Value>, Option<Value>)> {
        let mut out = Vec::new();
        let mut field = |name, old: Option<Value>, new: Option<Value>| {
            if old != new {
                out.push((name, old, new));
            }
        };
        field(
            "manual.owner",
            self.owner.clone().map(Value::from),
            new.owner.clone().map(Value::from),
        );
        field(
            "manual.criticality",
            self.criticality.map(Value::from),
            new.criticality.map(Value::from),
        );
        let tags = |t: &BTreeMap<String, String>| {
            (!t.is_empty()).then(|| {
                Value::Object(
                    t.iter()
                        .map(|(k, v)| (k.clone(), v.clone().into()))
                        .collect(),
                )
            })
        };
        field("manual.tags", tags(&self.tags), tags(&new.tags));
        field(
            "manual.vendor",
            self.vendor.clone().map(Value::from),
            new.vendor.clone().map(Value::from),
        );
        out
    }

    /// The stored form: NULL when nothing is set.
    fn to_sql(&self) -> Result<Option<String>, WriteError> {
        if *self == Manual::default() {
            return Ok(None);
        }
        serde_json::to_string(self)
            .map(Some)
            .map_err(|e| WriteError::Store(StoreError::Task(e.to_string())))
    }
}

fn json_text(v: &Value) -> String {
    // Serializing a `Value` cannot fail (string keys only).
    serde_json::to_string(v).unwrap_or_default()
}

fn begin(db: &Db) -> Result<Transaction<'_>, WriteError> {
    Ok(Transaction::new_unchecked(
        db.conn(),
        TransactionBehavior::Immediate,
    )?)
}

/// Writes one history row.
fn history(
    conn: &Connection,
    ci: i64,
    now: i64,
    attribute: &str,
    change: &str,
    (old, new): (Option<&Value>, Option<&Value>),
    source: &str,
) -> Result<(), WriteError> {
    let (old, new) = (old.map(json_text), new.map(json_text));
    crate::cmdb::history::append(
        conn,
        ci,
        now,
        attribute,
        change,
        old.as_deref(),
        new.as_deref(),
        source,
    )?;
    Ok(())
}

/// The metrics' label for a stored type (unknown types are not counted).
fn label(ty: &str) -> Option<&'static str> {
    cmdb_types().find(|t| *t == ty)
}

/// Counts `items` / `changes` on the metrics of `db`'s file (after the commit).
fn publish(db: &Db, ty: &str, items: i64, changes: u64) -> Result<(), WriteError> {
    if let Some(t) = label(ty) {
        metrics_for(db)?.record(t, items, changes);
    }
    Ok(())
}

fn business_service_name(name: &str) -> Result<String, WriteError> {
    text("name", name)
}

/// The business service called `name`, if one exists (other than `except`).
fn service_named(conn: &Connection, name: &str, except: i64) -> Result<Option<i64>, WriteError> {
    Ok(conn
        .prepare_cached(
            "SELECT id FROM cis WHERE agent_id IS NULL AND type = ?1 AND key = ?2 AND id != ?3",
        )?
        .query_row(params![ci_type::BUSINESS_SERVICE, name, except], |r| {
            r.get(0)
        })
        .optional()?)
}

/// Creates a business service (the only CI type the API may create); returns its id. A retired
/// one of the same name is made active again, with the given attributes.
pub fn create_business_service(
    db: &Db,
    new: &NewCi,
    source: &str,
    now: i64,
) -> Result<i64, WriteError> {
    if new.ci_type != ci_type::BUSINESS_SERVICE {
        return Err(invalid(format!(
            "only {} CIs can be created through the API; {:?} CIs come from discovery",
            ci_type::BUSINESS_SERVICE,
            new.ci_type
        )));
    }
    let name = business_service_name(&new.name)?;
    let manual = match &new.manual {
        Some(p) => p.apply(&Manual::default())?,
        None => Manual::default(),
    };
    let attrs = json_text(&Value::Object(new.attrs.clone().unwrap_or_default()));
    // Loads the metrics before the write, so their first load does not count it twice.
    metrics_for(db)?;
    let tx = begin(db)?;
    if let Some(id) = service_named(&tx, &name, 0)? {
        let (_, state) = type_and_state(&tx, id)?;
        if state != "retired" {
            return Err(WriteError::Conflict(format!(
                "a business service named {name:?} already exists (CI {id})"
            )));
        }
        tx.prepare_cached(
            "UPDATE cis SET attrs = ?2, manual_attrs = ?3, state = 'active', retired_at_ms = NULL,
                 last_seen_ms = ?4
             WHERE id = ?1",
        )?
        .execute(params![id, attrs, manual.to_sql()?, now])?;
        let old = Value::from("retired");
        history(
            &tx,
            id,
            now,
            ALL_ATTRIBUTES,
            "added",
            (Some(&old), None),
            source,
        )?;
        tx.commit()?;
        publish(db, ci_type::BUSINESS_SERVICE, 1, 1)?;
        return Ok(id);
    }
    tx.prepare_cached(
        "INSERT INTO cis (agent_id, type, key, name, attrs, manual_attrs, source, state,
                          first_seen_ms, last_seen_ms)
         VALUES (NULL, ?1, ?2, ?2, ?3, ?4, 'api', 'active', ?5, ?5)",
    )?
    .execute(params![
        ci_type::BUSINESS_SERVICE,
        name,
        attrs,
        manual.to_sql()?,
        now
    ])?;
    let id = tx.last_insert_rowid();
    history(&tx, id, now, ALL_ATTRIBUTES, "added", (None, None), source)?;
    tx.commit()?;
    publish(db, ci_type::BUSINESS_SERVICE, 1, 1)?;
    Ok(id)
}

/// What `patch_ci` reads of the CI first.
struct Current {
    ci_type: String,
    key: String,
    name: String,
    attrs: String,
    manual: Option<String>,
    source: String,
}

/// Refuses any write to a discovery-owned field of a discovered CI.
fn check_ownership(id: i64, cur: &Current, patch: &CiPatch) -> Result<(), WriteError> {
    if cur.source != "discovery" {
        return Ok(());
    }
    let touched = [
        ("attrs", patch.attrs.is_some()),
        ("name", patch.name.is_some()),
        ("key", patch.key.is_some()),
        ("type", patch.ci_type.is_some()),
    ];
    match touched.iter().find(|(_, t)| *t) {
        Some((field, _)) => Err(WriteError::Conflict(format!(
            "the attribute {field:?} of CI {} ({} {:?}) is owned by discovery; the API may only \
             write manual attributes (manual: owner, criticality, tags, vendor)",
            id, cur.ci_type, cur.key
        ))),
        None => Ok(()),
    }
}

/// Updates a CI's manual attributes (any CI) and, for business services, its name and `attrs`.
pub fn patch_ci(
    db: &Db,
    id: i64,
    patch: &CiPatch,
    source: &str,
    now: i64,
) -> Result<(), WriteError> {
    // Validate what needs no store first.
    if let Some(m) = &patch.manual {
        m.apply(&Manual::default())?;
    }
    metrics_for(db)?;
    let tx = begin(db)?;
    let cur = tx
        .prepare_cached(
            "SELECT type, key, name, attrs, manual_attrs, source FROM cis WHERE id = ?1",
        )?
        .query_row([id], |r| {
            Ok(Current {
                ci_type: r.get(0)?,
                key: r.get(1)?,
                name: r.get(2)?,
                attrs: r.get(3)?,
                manual: r.get(4)?,
                source: r.get(5)?,
            })
        })
        .optional()?
        .ok_or_else(|| WriteError::NotFound(format!("no CI with id {id}")))?;
    check_ownership(id, &cur, patch)?;

    let corrupt = |column: &'static str, e: serde_json::Error| {
        WriteError::Store(StoreError::Corrupt {
            column,
            value: e.to_string(),
        })
    };
    let old_manual: Manual = match &cur.manual {
        Some(t) => serde_json::from_str(t).map_err(|e| corrupt("cis.manual_attrs", e))?,
        None => Manual::default(),
    };
    let new_manual = match &patch.manual {
        Some(p) => p.apply(&old_manual)?,
        None => old_manual.clone(),
    };

    // Only API-owned CIs get here with attrs/name/key/type.
    if let Some(t) = &patch.ci_type {
        if t.as_ref().and_then(Value::as_str) != Some(cur.ci_type.as_str()) {
            return Err(invalid("the type of a CI cannot change"));
        }
    }
    let new_name = match &patch.name {
        None => cur.name.clone(),
        Some(Some(Value::String(s))) => business_service_name(s)?,
        Some(_) => return Err(invalid("name must be a string")),
    };
    if let Some(k) = &patch.key {
        let k = k.as_ref().and_then(Value::as_str);
        if k != Some(new_name.as_str()) {
            return Err(invalid(
                "the key of a business service is its name: change \"name\" instead",
            ));
        }
    }
    let old_attrs: Map<String, Value> =
        serde_json::from_str(&cur.attrs).map_err(|e| corrupt("cis.attrs", e))?;
    let new_attrs = match &patch.attrs {
        None => old_attrs.clone(),
        Some(None) => Map::new(),
        Some(Some(Value::Object(m))) => m.clone(),
        Some(Some(_)) => return Err(invalid("attrs must be an object")),
    };
    if new_name != cur.name {
        if let Some(other) = service_named(&tx, &new_name, id)? {
            return Err(WriteError::Conflict(format!(
                "a business service named {new_name:?} already exists (CI {other})"
            )));
        }
    }

    let mut rows = 0u64;
    if new_name != cur.name {
        let (old, new) = (Value::from(cur.name.clone()), Value::from(new_name.clone()));
        history(
            &tx,
            id,
            now,
            NAME_ATTRIBUTE,
            "changed",
            (Some(&old), Some(&new)),
            source,
        )?;
        rows += 1;
    }
    let names: std::collections::BTreeSet<&String> =
        old_attrs.keys().chain(new_attrs.keys()).collect();
    for name in names {
        let (old, new) = (old_attrs.get(name), new_attrs.get(name));
        if old != new {
            history(&tx, id, now, name, "changed", (old, new), source)?;
            rows += 1;
        }
    }
    for (attr, old, new) in old_manual.changes(&new_manual) {
        history(
            &tx,
            id,
            now,
            attr,
            "changed",
            (old.as_ref(), new.as_ref()),
            source,
        )?;
        rows += 1;
    }
    if rows == 0 {
        return Ok(());
    }
    let key = if cur.source == "discovery" {
        cur.key.clone()
    } else {
        new_name.clone()
    };
    tx.prepare_cached(
        "UPDATE cis SET name = ?2, key = ?3, attrs = ?4, manual_attrs = ?5,
             last_seen_ms = CASE WHEN source = 'api' THEN ?6 ELSE last_seen_ms END
         WHERE id = ?1",
    )?
    .execute(params![
        id,
        new_name,
        key,
        json_text(&Value::Object(new_attrs)),
        new_manual.to_sql()?,
        now
    ])?;
    tx.commit()?;
    publish(db, &cur.ci_type, 0, rows)?;
    Ok(())
}

/// Retires a business service (any CI made through the API): state `retired` with the time,
/// history `removed`, and every relation it has removed, each with a `relation.<kind>` history
/// row on it (old value: the other end). Returns `false` when it was already retired (nothing
/// written). A discovered CI is a [`WriteError::Conflict`]: discovery retires those.
pub fn retire_ci(db: &Db, id: i64, source: &str, now: i64) -> Result<bool, WriteError> {
    metrics_for(db)?;
    let tx = begin(db)?;
    let (ci_type, key, ci_source, state): (String, String, String, String) = tx
        .prepare_cached("SELECT type, key, source, state FROM cis WHERE id = ?1")?
        .query_row([id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .optional()?
        .ok_or_else(|| WriteError::NotFound(format!("no CI with id {id}")))?;
    if ci_source != "api" {
        return Err(WriteError::Conflict(format!(
            "CI {id} ({ci_type} {key:?}) comes from discovery: it is retired when its agent no \
             longer reports it; only CIs made through the API can be retired through the API"
        )));
    }
    if state == "retired" {
        return Ok(false);
    }
    let mut removed: Vec<(i64, String, i64)> = {
        let mut stmt = tx.prepare_cached(
            "DELETE FROM relations WHERE from_ci = ?1 OR to_ci = ?1 RETURNING from_ci, kind, to_ci",
        )?;
        let rows = stmt.query_map([id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
        rows.collect::<rusqlite::Result<_>>()?
    };
    removed.sort();
    for (from, kind, to) in &removed {
        let other = Value::from(if *from == id { *to } else { *from });
        let attr = format!("relation.{kind}");
        history(&tx, id, now, &attr, "changed", (Some(&other), None), source)?;
    }
    tx.prepare_cached(
        "UPDATE cis SET state = 'retired', retired_at_ms = ?2, last_seen_ms = ?2 WHERE id = ?1",
    )?
    .execute(params![id, now])?;
    history(
        &tx,
        id,
        now,
        ALL_ATTRIBUTES,
        "removed",
        (None, None),
        source,
    )?;
    tx.commit()?;
    let changes = u64::try_from(removed.len())
        .unwrap_or(u64::MAX)
        .saturating_add(1);
    publish(db, &ci_type, -1, changes)?;
    Ok(true)
}

/// `(type, state)` of CI `id`.
fn type_and_state(conn: &Connection, id: i64) -> Result<(String, String), WriteError> {
    conn.prepare_cached("SELECT type, state FROM cis WHERE id = ?1")?
        .query_row([id], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?
        .ok_or_else(|| WriteError::NotFound(format!("no CI with id {id}")))
}

fn check_kind(kind: &str) -> Result<(), WriteError> {
    if API_RELATION_KINDS.contains(&kind) {
        Ok(())
    } else {
        Err(invalid(format!(
            "unknown relation kind {kind:?} (expected one of {})",
            API_RELATION_KINDS.join(", ")
        )))
    }
}

fn check_from(id: i64, ty: &str) -> Result<(), WriteError> {
    if ty == ci_type::BUSINESS_SERVICE {
        Ok(())
    } else {
        Err(invalid(format!(
            "relations written through the API start at a business service; CI {id} is a {ty} \
             (its relations come from discovery)"
        )))
    }
}

/// Relates a business service to a host or listening service. Returns `false` when the relation
/// already existed (nothing written).
pub fn add_relation(
    db: &Db,
    rel: &RelationSpec,
    source: &str,
    now: i64,
) -> Result<bool, WriteError> {
    check_kind(&rel.kind)?;
    metrics_for(db)?;
    let tx = begin(db)?;
    let (from_type, from_state) = type_and_state(&tx, rel.from)?;
    check_from(rel.from, &from_type)?;
    if from_state == "retired" {
        return Err(invalid(format!("CI {} is retired", rel.from)));
    }
    let (to_type, to_state) = type_and_state(&tx, rel.to)?;
    if !API_RELATION_TARGETS.contains(&to_type.as_str()) {
        return Err(invalid(format!(
            "a business service relates to a {}; CI {} is a {to_type}",
            API_RELATION_TARGETS.join(" or a "),
            rel.to
        )));
    }
    if to_state == "retired" {
        return Err(invalid(format!("CI {} is retired", rel.to)));
    }
    let n = tx
        .prepare_cached(
            "INSERT OR IGNORE INTO relations (from_ci, kind, to_ci, source, first_seen_ms)
             VALUES (?1, ?2, ?3, ?4, ?5)",
        )?
        .execute(params![rel.from, rel.kind, rel.to, source, now])?;
    if n == 0 {
        return Ok(false);
    }
    let to = Value::from(rel.to);
    let attr = format!("relation.{}", rel.kind);
    history(
        &tx,
        rel.from,
        now,
        &attr,
        "changed",
        (None, Some(&to)),
        source,
    )?;
    tx.commit()?;
    publish(db, &from_type, 0, 1)?;
    Ok(true)
}

/// Removes a relation written through the API.
pub fn remove_relation(
    db: &Db,
    rel: &RelationSpec,
    source: &str,
    now: i64,
) -> Result<(), WriteError> {
    check_kind(&rel.kind)?;
    metrics_for(db)?;
    let tx = begin(db)?;
    let (from_type, _) = type_and_state(&tx, rel.from)?;
    check_from(rel.from, &from_type)?;
    type_and_state(&tx, rel.to)?;
    let n = tx
        .prepare_cached("DELETE FROM relations WHERE from_ci = ?1 AND kind = ?2 AND to_ci = ?3")?
        .execute(params![rel.from, rel.kind, rel.to])?;
    if n == 0 {
        return Err(WriteError::NotFound(format!(
            "no relation {} {} {}",
            rel.from, rel.kind, rel.to
        )));
    }
    let to = Value::from(rel.to);
    let attr = format!("relation.{}", rel.kind);
    history(
        &tx,
        rel.from,
        now,
        &attr,
        "changed",
        (Some(&to), None),
        source,
    )?;
    tx.commit()?;
    publish(db, &from_type, 0, 1)?;
    Ok(())
}
