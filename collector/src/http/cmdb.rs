//! The CMDB under `/api/v1`: CI lists and detail, relation graphs, history, the changes feed,
//! export (every role: viewer and up) and manual data (admin): business services, manual
//! attributes of any CI, relations from a business service.
//!
//! | method | path | role | answer |
//! |---|---|---|---|
//! | GET | `/cis?type=&tag=k=v&host=&state=&q=&limit=&offset=\|after=` | viewer | `{items, total, limit, offset, after, next_after}` |
//! | GET | `/cis/{id}` | viewer | a CI + `relations: {out, in}` |
//! | GET | `/cis/{id}/relations?depth=1..5&direction=out\|in\|both` | viewer | `{root, direction, depth, edges, cis, truncated}` |
//! | GET | `/cis/{id}/history?limit=&since=&before=` | viewer | `{items, limit, next_before}` |
//! | GET | `/changes?since=&type=&host=&limit=&before=` | viewer | `{items, limit, next_before}` |
//! | GET | `/cmdb/export` | viewer | `{exported_at, exported_at_ms, cis, relations}`, streamed |
//! | POST | `/cis` | admin | 201 + the business service |
//! | PATCH | `/cis/{id}` | admin | the updated CI |
//! | DELETE | `/cis/{id}` | admin | the retired business service (409 for a discovered CI) |
//! | POST / DELETE | `/relations` | admin | the relation (201 new, 200 existing / deleted) |
//!
//! Query parameters are checked strictly: an unknown name, a repeated single-valued one or a
//! bad value is a 400. `type` and `state` take comma lists or repeats, `tag` repeats (all must
//! match), `since` is RFC 3339 (`Z` or `±HH:MM`) or Unix milliseconds, `before` is the
//! `next_before` cursor of the previous page. `GET /cis` pages by `offset` or by `after` (the
//! `next_after` of the previous page: every page costs the same however deep).
//!
//! The export is streamed in pages: a task reads [`EXPORT_PAGE`] rows at a time, each page in its
//! own short read transaction on the blocking pool, and hands the JSON over in
//! [`EXPORT_CHUNK`]-byte chunks through a bounded channel. Memory stays at a few chunks whatever
//! the size of the CMDB; a client that reads slowly or not at all holds neither a blocking
//! thread nor a read transaction (WAL checkpoints go on), and the listener's idle timeout ends
//! it; a client that goes away stops the reads. At most `[http] max_exports` run at once (429
//! past it).
//!
//! This module must never: run SQLite on the runtime (everything goes through `DbPool::run`),
//! let a viewer write, or answer with anything but JSON.

mod params;
mod views;

use std::pin::Pin;
use std::task::{Context, Poll};

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use hyper::body::Frame;
use tokio::sync::mpsc;

use super::{now_ms, ApiError, ApiJson, ApiPath, ApiQuery, Auth, HttpState};
use crate::cmdb::query::manual::{self, CiPatch, NewCi, RelationSpec, WriteError};
use crate::cmdb::query::{self, CiRecord, Direction, Paging, MAX_DEPTH};
use crate::store::{Db, DbPool, Role, StoreError};
use params::{bad, ci_filter, Params};
use views::page;
use views::{
    ChangeView, CiDetail, CiList, CiView, EdgeView, ExportWriter, GraphView, HistoryView, Page,
    RelationCounts, RelationDeleted, RelationView, SummaryView,
};

/// The CMDB routes, relative to `/api/v1`.
pub(super) fn routes() -> Router<HttpState> {
    Router::new()
        .route("/cis", get(list_cis).post(create_ci))
        .route("/cis/{id}", get(get_ci).patch(patch_ci).delete(delete_ci))
        .route("/cis/{id}/relations", get(ci_relations))
        .route("/cis/{id}/history", get(ci_history))
        .route("/changes", get(changes))
        .route("/cmdb/export", get(export))
        .route("/relations", post(add_relation).delete(remove_relation))
}

impl From<WriteError> for ApiError {
    fn from(e: WriteError) -> Self {
        match e {
            WriteError::NotFound(m) => ApiError::NotFound(m),
            WriteError::Conflict(m) => ApiError::Conflict(m),
            WriteError::Invalid(m) => ApiError::Unprocessable(m),
            WriteError::Store(e) => ApiError::internal(e),
        }
    }
}

fn no_ci(id: i64) -> ApiError {
    ApiError::NotFound(format!("no CI with id {id}"))
}

/// Runs a write on a pooled connection: store failures are 500s, refusals 404/409/422.
async fn write<T: Send + 'static>(
    state: &HttpState,
    f: impl FnOnce(&Db) -> Result<T, WriteError> + Send + 'static,
) -> Result<T, ApiError> {
    Ok(state.db.run(move |db| Ok(f(db))).await??)
}

/// The CI after a write (it exists: the write just saw it).
fn reread(db: &Db, id: i64) -> Result<CiRecord, WriteError> {
    query::get_ci(db, id)?.ok_or_else(|| WriteError::NotFound(format!("no CI with id {id}")))
}

async fn list_cis(
    auth: Auth,
    State(state): State<HttpState>,
    ApiQuery(q): ApiQuery<Vec<(String, String)>>,
) -> Result<Json<CiList>, ApiError> {
    auth.require(Role::Viewer)?;
    let p = Params::new(
        q,
        &[
            "type", "tag", "host", "state", "q", "limit", "offset", "after",
        ],
        &["type", "tag", "state"],
    )?;
    let filter = ci_filter(&p)?;
    let limit = p.limit()?;
    let offset = p.number("offset", 0u64, 0..=u64::from(u32::MAX))?;
    let after = p
        .one("after")
        .map(|_| p.number("after", 0i64, 0..=i64::MAX))
        .transpose()?;
    let paging = match (after, p.one("offset")) {
        (Some(_), Some(_)) => return Err(bad("give offset or after, not both")),
        (Some(a), None) => Paging::After(a),
        (None, _) => Paging::Offset(offset),
    };
    // One more than the page, to know whether another follows.
    let (mut items, total) = state
        .db
        .run(move |db| query::list_cis(db, &filter, limit + 1, paging))
        .await?;
    let more = items.len() > limit as usize;
    items.truncate(limit as usize);
    let next_after = if more {
        items.last().map(|c| c.id)
    } else {
        None
    };
    Ok(Json(CiList {
        items: items.into_iter().map(CiView::from).collect(),
        total,
        limit,
        offset,
        after,
        next_after,
    }))
}

async fn get_ci(
    auth: Auth,
    State(state): State<HttpState>,
    ApiPath(id): ApiPath<i64>,
) -> Result<Json<CiDetail>, ApiError> {
    auth.require(Role::Viewer)?;
    let found = state
        .db
        .run(move |db| {
            let Some(ci) = query::get_ci(db, id)? else {
                return Ok(None);
            };
            Ok(Some((ci, query::relation_counts(db, id)?)))
        })
        .await?;
    let (ci, (out, incoming)) = found.ok_or_else(|| no_ci(id))?;
    Ok(Json(CiDetail {
        ci: ci.into(),
        relations: RelationCounts { out, incoming },
    }))
}

async fn ci_relations(
    auth: Auth,
    State(state): State<HttpState>,
    ApiPath(id): ApiPath<i64>,
    ApiQuery(q): ApiQuery<Vec<(String, String)>>,
) -> Result<Json<GraphView>, ApiError> {
    auth.require(Role::Viewer)?;
    let p = Params::new(q, &["depth", "direction"], &[])?;
    let depth = p.number("depth", 1u32, 1..=MAX_DEPTH)?;
    let direction = match p.one("direction") {
        None => Direction::Both,
        Some(d) => Direction::parse(d)
            .ok_or_else(|| bad(format!("direction must be out, in or both, got {d:?}")))?,
    };
    let graph = state
        .db
        .run(move |db| {
            if !query::ci_exists(db, id)? {
                return Ok(None);
            }
            query::relation_graph(db, id, depth, direction).map(Some)
        })
        .await?
        .ok_or_else(|| no_ci(id))?;
    Ok(Json(GraphView {
        root: id,
        direction: direction.as_str(),
        depth,
        edges: graph
            .edges
            .into_iter()
            .map(|e| EdgeView {
                from: e.from,
                kind: e.kind,
                to: e.to,
                depth: e.depth,
                source: e.source,
            })
            .collect(),
        cis: graph.cis.into_iter().map(SummaryView::from).collect(),
        truncated: graph.truncated,
    }))
}

async fn ci_history(
    auth: Auth,
    State(state): State<HttpState>,
    ApiPath(id): ApiPath<i64>,
    ApiQuery(q): ApiQuery<Vec<(String, String)>>,
) -> Result<Json<Page<HistoryView>>, ApiError> {
    auth.require(Role::Viewer)?;
    let p = Params::new(q, &["limit", "since", "before"], &[])?;
    let hp = p.history_page()?;
    let rows = state
        .db
        .run(move |db| {
            if !query::ci_exists(db, id)? {
                return Ok(None);
            }
            query::history(db, id, &hp).map(Some)
        })
        .await?
        .ok_or_else(|| no_ci(id))?;
    Ok(Json(page(rows, hp.limit, |h| h.id, HistoryView::from)))
}

async fn changes(
    auth: Auth,
    State(state): State<HttpState>,
    ApiQuery(q): ApiQuery<Vec<(String, String)>>,
) -> Result<Json<Page<ChangeView>>, ApiError> {
    auth.require(Role::Viewer)?;
    let p = Params::new(q, &["since", "type", "host", "limit", "before"], &["type"])?;
    let hp = p.history_page()?;
    let types = p.types()?;
    let host = p.host()?;
    let rows = state
        .db
        .run(move |db| query::changes(db, &types, host.as_ref(), &hp))
        .await?;
    Ok(Json(page(
        rows,
        hp.limit,
        |(h, _)| h.id,
        |(h, c)| ChangeView {
            change: h.into(),
            ci: c.into(),
        },
    )))
}

/// Bytes of JSON per chunk of the export body.
pub(super) const EXPORT_CHUNK: usize = 64 * 1024;
/// Rows per page of the export: each page is one short read transaction.
const EXPORT_PAGE: usize = 500;
/// Chunks the export's reader may be ahead of the client: its memory bound.
const EXPORT_AHEAD: usize = 4;

/// Why an export stopped after its first chunk (the client sees a truncated body).
#[derive(Debug, thiserror::Error)]
#[error("export aborted: {0}")]
struct ExportAborted(String);

/// The export's body: the chunks of the reader task, as they come.
struct ExportBody {
    first: Option<Bytes>,
    rx: mpsc::Receiver<Result<Bytes, ExportAborted>>,
}

impl HttpBody for ExportBody {
    type Data = Bytes;
    type Error = ExportAborted;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ExportAborted>>> {
        if let Some(first) = self.first.take() {
            return Poll::Ready(Some(Ok(Frame::data(first))));
        }
        self.rx
            .poll_recv(cx)
            .map(|chunk| chunk.map(|c| c.map(Frame::data)))
    }
}

/// Reads an export a chunk at a time, pages of [`EXPORT_PAGE`] rows on the blocking pool.
struct ExportPager {
    db: DbPool,
    cursor: query::ExportCursor,
    writer: Option<ExportWriter>,
    /// Chunks of the last page not handed out yet.
    ready: std::collections::VecDeque<Bytes>,
}

impl ExportPager {
    fn new(db: DbPool, now_ms: i64) -> Result<ExportPager, StoreError> {
        Ok(ExportPager {
            db,
            cursor: query::ExportCursor::START,
            writer: Some(ExportWriter::new(now_ms)?),
            ready: Default::default(),
        })
    }

    /// The next chunk of JSON (each cut after the row that took it past [`EXPORT_CHUNK`]);
    /// `None` once the export has been sent.
    async fn next(&mut self) -> Result<Option<Bytes>, StoreError> {
        while self.ready.is_empty() {
            let Some(mut w) = self.writer.take() else {
                return Ok(None);
            };
            let mut cursor = self.cursor.clone();
            let (w, cursor, chunks) = self
                .db
                .run(move |db| {
                    let mut chunks = Vec::new();
                    while cursor != query::ExportCursor::Done && chunks.is_empty() {
                        cursor = query::export_page(db, &cursor, EXPORT_PAGE, |row| {
                            w.row(row)?;
                            chunks.extend(w.take(EXPORT_CHUNK).map(Bytes::from));
                            Ok(())
                        })?;
                    }
                    Ok((w, cursor, chunks))
                })
                .await?;
            self.ready.extend(chunks);
            if cursor == query::ExportCursor::Done {
                self.ready.push_back(Bytes::from(w.finish()));
            } else {
                self.writer = Some(w);
                self.cursor = cursor;
            }
        }
        Ok(self.ready.pop_front())
    }
}

async fn export(auth: Auth, State(state): State<HttpState>) -> Result<Response, ApiError> {
    auth.require(Role::Viewer)?;
    let Ok(permit) = state.exports.clone().try_acquire_owned() else {
        state.http_metrics.limited("cmdb_export");
        return Err(ApiError::TooManyRequests(
            "too many CMDB exports are running; retry in a moment".into(),
        ));
    };
    let mut pager = ExportPager::new(state.db.clone(), now_ms())?;
    // The first chunk decides the status: a store that cannot be read is still a JSON 500.
    let first = pager.next().await?.unwrap_or_default();
    let (tx, rx) = mpsc::channel(EXPORT_AHEAD);
    // Ends by itself: when the export is sent, or at its next chunk once the body is dropped
    // (the client went away, or the listener closed a client that stopped reading).
    tokio::spawn(async move {
        let _permit = permit;
        loop {
            match pager.next().await {
                Ok(Some(chunk)) => {
                    if tx.send(Ok(chunk)).await.is_err() {
                        tracing::debug!("export stopped: the client went away");
                        return;
                    }
                }
                Ok(None) => return,
                Err(e) => {
                    tracing::warn!(error = %e, "CMDB export failed");
                    let _ = tx.send(Err(ExportAborted(e.to_string()))).await;
                    return;
                }
            }
        }
    });
    let body = Body::new(ExportBody {
        first: Some(first),
        rx,
    });
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}

async fn create_ci(
    auth: Auth,
    State(state): State<HttpState>,
    body: Result<ApiJson<NewCi>, ApiError>,
) -> Result<(StatusCode, Json<CiView>), ApiError> {
    auth.require(Role::Admin)?;
    let ApiJson(new) = body?;
    let source = auth.by();
    let ci = write(&state, move |db| {
        let id = manual::create_business_service(db, &new, &source, now_ms())?;
        reread(db, id)
    })
    .await?;
    Ok((StatusCode::CREATED, Json(ci.into())))
}

async fn patch_ci(
    auth: Auth,
    State(state): State<HttpState>,
    ApiPath(id): ApiPath<i64>,
    body: Result<ApiJson<CiPatch>, ApiError>,
) -> Result<Json<CiView>, ApiError> {
    auth.require(Role::Admin)?;
    let ApiJson(patch) = body?;
    let source = auth.by();
    let ci = write(&state, move |db| {
        manual::patch_ci(db, id, &patch, &source, now_ms())?;
        reread(db, id)
    })
    .await?;
    Ok(Json(ci.into()))
}

async fn delete_ci(
    auth: Auth,
    State(state): State<HttpState>,
    ApiPath(id): ApiPath<i64>,
) -> Result<Json<CiView>, ApiError> {
    auth.require(Role::Admin)?;
    let source = auth.by();
    let ci = write(&state, move |db| {
        manual::retire_ci(db, id, &source, now_ms())?;
        reread(db, id)
    })
    .await?;
    Ok(Json(ci.into()))
}

async fn add_relation(
    auth: Auth,
    State(state): State<HttpState>,
    body: Result<ApiJson<RelationSpec>, ApiError>,
) -> Result<(StatusCode, Json<RelationView>), ApiError> {
    auth.require(Role::Admin)?;
    let ApiJson(rel) = body?;
    let source = auth.by();
    let (rel, created) = write(&state, move |db| {
        let created = manual::add_relation(db, &rel, &source, now_ms())?;
        Ok((rel, created))
    })
    .await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((
        status,
        Json(RelationView {
            from: rel.from,
            kind: rel.kind,
            to: rel.to,
            created,
        }),
    ))
}

async fn remove_relation(
    auth: Auth,
    State(state): State<HttpState>,
    body: Result<ApiJson<RelationSpec>, ApiError>,
) -> Result<Json<RelationDeleted>, ApiError> {
    auth.require(Role::Admin)?;
    let ApiJson(rel) = body?;
    let source = auth.by();
    let rel = write(&state, move |db| {
        manual::remove_relation(db, &rel, &source, now_ms())?;
        Ok(rel)
    })
    .await?;
    Ok(Json(RelationDeleted {
        from: rel.from,
        kind: rel.kind,
        to: rel.to,
        deleted: true,
    }))
}

#[cfg(test)]
mod tests;
