//! What the CMDB endpoints answer: JSON views of the store's records (times as RFC 3339 and
//! Unix ms side by side), pages with a cursor, and the export writer.
//!
//! Views only reshape: no store access, no validation.

use serde::Serialize;
use serde_json::Value;

use crate::cmdb::query::{CiRecord, CiSummary, ExportRow, HistoryRecord, Manual};
use crate::store::StoreError;
use vigil_shared::time::format_rfc3339_ms;

/// A CI as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct CiView {
    pub id: i64,
    #[serde(rename = "type")]
    pub ci_type: String,
    pub key: String,
    pub name: String,
    /// Hostname of the owning agent (null for business services).
    pub host: Option<String>,
    pub agent_id: Option<String>,
    pub attrs: Value,
    pub manual: Manual,
    pub source: String,
    pub state: &'static str,
    pub first_seen: Option<String>,
    pub first_seen_ms: i64,
    pub last_seen: Option<String>,
    pub last_seen_ms: i64,
    pub retired_at: Option<String>,
    pub retired_at_ms: Option<i64>,
    pub duplicate_of: Option<String>,
}

impl From<CiRecord> for CiView {
    fn from(c: CiRecord) -> Self {
        CiView {
            id: c.id,
            ci_type: c.ci_type,
            key: c.key,
            name: c.name,
            host: c.host,
            agent_id: c.agent_id,
            attrs: c.attrs,
            manual: c.manual,
            source: c.source,
            state: c.state.as_str(),
            first_seen: format_rfc3339_ms(c.first_seen_ms),
            first_seen_ms: c.first_seen_ms,
            last_seen: format_rfc3339_ms(c.last_seen_ms),
            last_seen_ms: c.last_seen_ms,
            retired_at: c.retired_at_ms.and_then(format_rfc3339_ms),
            retired_at_ms: c.retired_at_ms,
            duplicate_of: c.duplicate_of,
        }
    }
}

#[derive(Debug, Serialize)]
pub(super) struct CiList {
    pub(super) items: Vec<CiView>,
    pub(super) total: u64,
    pub(super) limit: u32,
    pub(super) offset: u64,
    /// The `after` cursor of the request (keyset paging), if any.
    pub(super) after: Option<i64>,
    /// The id to pass as `after` for the next page; null on the last page.
    pub(super) next_after: Option<i64>,
}

#[derive(Debug, Serialize)]
pub(super) struct RelationCounts {
    pub(super) out: u64,
    #[serde(rename = "in")]
    pub(super) incoming: u64,
}

#[derive(Debug, Serialize)]
pub(super) struct CiDetail {
    #[serde(flatten)]
    pub(super) ci: CiView,
    pub(super) relations: RelationCounts,
}

/// A CI named by a relation or a change.
#[derive(Debug, Serialize)]
pub(super) struct SummaryView {
    pub(super) id: i64,
    #[serde(rename = "type")]
    pub(super) ci_type: String,
    pub(super) key: String,
    pub(super) name: String,
    pub(super) host: Option<String>,
    pub(super) agent_id: Option<String>,
    pub(super) state: &'static str,
}

impl From<CiSummary> for SummaryView {
    fn from(c: CiSummary) -> Self {
        SummaryView {
            id: c.id,
            ci_type: c.ci_type,
            key: c.key,
            name: c.name,
            host: c.host,
            agent_id: c.agent_id,
            state: c.state.as_str(),
        }
    }
}

#[derive(Debug, Serialize)]
pub(super) struct EdgeView {
    pub(super) from: i64,
    pub(super) kind: String,
    pub(super) to: i64,
    pub(super) depth: u32,
    pub(super) source: String,
}

#[derive(Debug, Serialize)]
pub(super) struct GraphView {
    pub(super) root: i64,
    pub(super) direction: &'static str,
    pub(super) depth: u32,
    pub(super) edges: Vec<EdgeView>,
    pub(super) cis: Vec<SummaryView>,
    pub(super) truncated: bool,
}

#[derive(Debug, Serialize)]
pub(super) struct HistoryView {
    pub(super) id: i64,
    pub(super) ts: Option<String>,
    pub(super) ts_ms: i64,
    pub(super) attribute: String,
    pub(super) change: String,
    pub(super) old_value: Option<Value>,
    pub(super) new_value: Option<Value>,
    pub(super) source: String,
}

impl From<HistoryRecord> for HistoryView {
    fn from(h: HistoryRecord) -> Self {
        HistoryView {
            id: h.id,
            ts: format_rfc3339_ms(h.ts_ms),
            ts_ms: h.ts_ms,
            attribute: h.attribute,
            change: h.change,
            old_value: h.old_value,
            new_value: h.new_value,
            source: h.source,
        }
    }
}

#[derive(Debug, Serialize)]
pub(super) struct ChangeView {
    #[serde(flatten)]
    pub(super) change: HistoryView,
    pub(super) ci: SummaryView,
}

/// A newest-first page; `next_before` is the cursor of the next (older) page, if any.
#[derive(Debug, Serialize)]
pub(super) struct Page<T> {
    pub(super) items: Vec<T>,
    pub(super) limit: u32,
    pub(super) next_before: Option<i64>,
}

/// Cuts the one-extra row the store returned and sets the cursor.
pub(super) fn page<R, T>(
    mut rows: Vec<R>,
    limit: u32,
    id: impl Fn(&R) -> i64,
    view: impl Fn(R) -> T,
) -> Page<T> {
    let more = rows.len() > limit as usize;
    rows.truncate(limit as usize);
    let next_before = if more { rows.last().map(&id) } else { None };
    Page {
        items: rows.into_iter().map(view).collect(),
        limit,
        next_before,
    }
}

#[derive(Debug, Serialize)]
pub(super) struct RelationView {
    pub(super) from: i64,
    pub(super) kind: String,
    pub(super) to: i64,
    pub(super) created: bool,
}

#[derive(Debug, Serialize)]
pub(super) struct RelationDeleted {
    pub(super) from: i64,
    pub(super) kind: String,
    pub(super) to: i64,
    pub(super) deleted: bool,
}

/// Serializes an export as rows arrive (no intermediate values per row) into a buffer that the
/// caller empties with [`ExportWriter::take`] whenever it has grown past a chunk.
pub(super) struct ExportWriter {
    pub(super) buf: Vec<u8>,
    pub(super) in_relations: bool,
    pub(super) first: bool,
}

fn ser_err(e: serde_json::Error) -> StoreError {
    StoreError::Task(format!("serializing the export: {e}"))
}

impl ExportWriter {
    pub(super) fn new(now: i64) -> Result<ExportWriter, StoreError> {
        let mut buf = Vec::with_capacity(64 * 1024);
        buf.extend_from_slice(b"{\"exported_at\":");
        serde_json::to_writer(&mut buf, &format_rfc3339_ms(now)).map_err(ser_err)?;
        buf.extend_from_slice(format!(",\"exported_at_ms\":{now},\"cis\":[").as_bytes());
        Ok(ExportWriter {
            buf,
            in_relations: false,
            first: true,
        })
    }

    pub(super) fn row(&mut self, row: ExportRow<'_>) -> Result<(), StoreError> {
        if matches!(row, ExportRow::Relation(_)) && !self.in_relations {
            self.start_relations();
        }
        if !self.first {
            self.buf.push(b',');
        }
        self.first = false;
        match row {
            ExportRow::Ci(ci) => serde_json::to_writer(&mut self.buf, &CiView::from(ci.clone())),
            ExportRow::Relation(r) => serde_json::to_writer(
                &mut self.buf,
                &serde_json::json!({
                    "from": r.from,
                    "kind": r.kind,
                    "to": r.to,
                    "source": r.source,
                    "first_seen": format_rfc3339_ms(r.first_seen_ms),
                    "first_seen_ms": r.first_seen_ms,
                }),
            ),
        }
        .map_err(ser_err)
    }

    /// The JSON written since the last call, if there is at least `min` bytes of it.
    pub(super) fn take(&mut self, min: usize) -> Option<Vec<u8>> {
        (self.buf.len() >= min).then(|| {
            let cap = self.buf.capacity();
            std::mem::replace(&mut self.buf, Vec::with_capacity(cap))
        })
    }

    fn start_relations(&mut self) {
        self.buf.extend_from_slice(b"],\"relations\":[");
        self.in_relations = true;
        self.first = true;
    }

    /// The rest of the JSON: whatever [`ExportWriter::take`] has not returned, and the end.
    pub(super) fn finish(mut self) -> Vec<u8> {
        if !self.in_relations {
            self.start_relations();
        }
        self.buf.extend_from_slice(b"]}");
        self.buf
    }
}
