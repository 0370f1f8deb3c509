//! The audit log: every state-changing request to `/api/v1` and to the console's own routes
//! (login, logout; POST, PUT, PATCH, DELETE) — who (the API token or console user, its role), what (method and path), when, from where (the client's address)
//! and the outcome (the status) — kept in the store's `audit_log` and listed by
//! `GET /api/v1/audit` (admin). Request bodies are not kept: they may hold secrets (a webhook's
//! token, a new API token's name is in the answer, not the request).
//!
//! The row is written after the handler answered and before the answer leaves, so a request the
//! log does not hold was not answered with its own status (the client got an error instead). A refused request (401, 403, 422) is logged like one that
//! succeeded; incidents keep their own timeline as well.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::extract::{Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use rusqlite::{params, Connection};
use serde::{Deserialize, Serialize};
use vigil_runtime::clock::now_ms;
use vigil_shared::time::{format_rfc3339_ms, parse_time_ms};

use super::{ApiError, ApiQuery, Auth, HttpState};
use crate::store::Role;

/// The client's address, put on each request by the listener (`serve::serve`).
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub SocketAddr);

/// Who made an audited request, as far as it is known.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Who {
    /// The API token's id, or the console session's.
    pub token_id: Option<String>,
    pub role: Option<Role>,
    /// The console user (for a login, the name it tried).
    pub user: Option<String>,
}

/// Filled in by [`Auth`] (or the login) when it authenticates a request that is being audited.
#[derive(Debug, Clone, Default)]
pub(super) struct Actor(Arc<Mutex<Who>>);

impl Actor {
    pub(super) fn set(&self, token_id: &str, role: Role) {
        let mut w = self.0.lock().unwrap_or_else(|p| p.into_inner());
        w.token_id = Some(token_id.to_owned());
        w.role = Some(role);
    }

    pub(super) fn set_session(&self, s: &crate::store::users::Session) {
        // A session opened with a pasted API token is that token's doing.
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = match &s.token_id {
            Some(t) => Who {
                token_id: Some(t.clone()),
                role: Some(s.role),
                user: None,
            },
            None => Who {
                token_id: Some(s.id.clone()),
                role: Some(s.role),
                user: Some(s.user.clone()),
            },
        };
    }

    pub(super) fn set_user(&self, user: &str, role: Option<Role>) {
        let mut w = self.0.lock().unwrap_or_else(|p| p.into_inner());
        w.user = Some(user.to_owned());
        w.role = role;
    }

    fn get(&self) -> Who {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// Longest path kept (a longer one is cut, on a character boundary).
const MAX_PATH: usize = 512;
/// How long rows are kept (pruned with the rest of the housekeeping).
pub const KEEP_MS: i64 = 400 * 86_400_000;

/// The middleware on `/api/v1`.
pub(super) async fn audit(State(state): State<HttpState>, req: Request, next: Next) -> Response {
    audit_under(state, "/api/v1", req, next).await
}

/// The middleware on the console's own routes (login, logout, its forms).
pub(super) async fn audit_console(
    State(state): State<HttpState>,
    req: Request,
    next: Next,
) -> Response {
    audit_under(state, "", req, next).await
}

/// Audits a request to a router nested at `prefix` (which sees paths without it).
async fn audit_under(state: HttpState, prefix: &str, mut req: Request, next: Next) -> Response {
    if !matches!(
        *req.method(),
        Method::POST | Method::PUT | Method::PATCH | Method::DELETE
    ) {
        return next.run(req).await;
    }
    let actor = Actor::default();
    req.extensions_mut().insert(actor.clone());
    let method = req.method().as_str().to_owned();
    let mut path = format!("{prefix}{}", req.uri().path());
    if path.len() > MAX_PATH {
        let mut end = MAX_PATH;
        while !path.is_char_boundary(end) {
            end -= 1;
        }
        path.truncate(end);
    }
    let remote = req.extensions().get::<Peer>().map(|p| p.0.ip().to_string());
    let response = next.run(req).await;
    let status = response.status().as_u16();
    let who = actor.get();
    let row = move |db: &crate::store::Db| {
        record(
            db.conn(),
            now_ms(),
            &who,
            &method,
            &path,
            status,
            remote.as_deref(),
        )
        .map_err(crate::store::StoreError::from)
    };
    match state.db.run(row).await {
        Ok(()) => response,
        // The answer is not given without its row: an error instead (503 while the disk is
        // full, as for any write), logged, though the action itself may have been done.
        Err(e) => {
            tracing::error!(error = %e, status, "audit log row not written");
            ApiError::from(e).into_response()
        }
    }
}

/// Writes one row.
pub fn record(
    c: &Connection,
    at_ms: i64,
    who: &Who,
    method: &str,
    path: &str,
    status: u16,
    remote: Option<&str>,
) -> rusqlite::Result<()> {
    c.prepare_cached(
        "INSERT INTO audit_log (ts_ms, token_id, role, user_name, method, path, status, remote)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?
    .execute(params![
        at_ms,
        who.token_id,
        who.role.map(Role::as_str),
        who.user,
        method,
        path,
        status,
        remote
    ])?;
    Ok(())
}

/// Deletes rows older than [`KEEP_MS`] before `now_ms`.
pub fn prune(c: &Connection, now_ms: i64) -> rusqlite::Result<usize> {
    c.execute(
        "DELETE FROM audit_log WHERE ts_ms < ?1",
        [now_ms.saturating_sub(KEEP_MS)],
    )
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct AuditQuery {
    from: Option<String>,
    to: Option<String>,
    token_id: Option<String>,
    user: Option<String>,
    limit: Option<u32>,
}

#[derive(Debug, Serialize)]
pub(super) struct AuditRow {
    id: i64,
    at: Option<String>,
    at_ms: i64,
    /// The API token, or the console session; `null`: the request was not authenticated (it
    /// got a 401).
    token_id: Option<String>,
    role: Option<String>,
    /// The console user (for a login, the name given, whether it succeeded or not).
    user: Option<String>,
    method: String,
    path: String,
    status: u16,
    remote: Option<String>,
}

/// The most rows one answer holds.
const MAX_LIMIT: u32 = 1_000;

/// `GET /api/v1/audit?from=&to=&token_id=&user=&limit=`: newest first.
pub(super) async fn list(
    auth: Auth,
    State(state): State<HttpState>,
    ApiQuery(q): ApiQuery<AuditQuery>,
) -> Result<Json<Vec<AuditRow>>, ApiError> {
    auth.require(Role::Admin)?;
    let bad = ApiError::BadRequest;
    let from = q
        .from
        .as_deref()
        .map(parse_time_ms)
        .transpose()
        .map_err(bad)?;
    let to =
        q.to.as_deref()
            .map(parse_time_ms)
            .transpose()
            .map_err(bad)?;
    let limit = match q.limit {
        None => 100,
        Some(n @ 1..=MAX_LIMIT) => n,
        Some(n) => {
            return Err(ApiError::BadRequest(format!(
                "invalid limit {n}: expected 1 to {MAX_LIMIT}"
            )))
        }
    };
    let (token, user) = (q.token_id, q.user);
    let rows = state
        .db
        .run(move |db| {
            let mut stmt = db.conn().prepare_cached(
                "SELECT id, ts_ms, token_id, role, method, path, status, remote, user_name
                 FROM audit_log
                 WHERE ts_ms >= ?1 AND ts_ms < ?2 AND (?3 IS NULL OR token_id = ?3)
                   AND (?5 IS NULL OR user_name = ?5)
                 ORDER BY id DESC LIMIT ?4",
            )?;
            let rows = stmt
                .query_map(
                    params![
                        from.unwrap_or(0),
                        to.unwrap_or(i64::MAX),
                        token,
                        i64::from(limit),
                        user
                    ],
                    |r| {
                        let at_ms: i64 = r.get(1)?;
                        Ok(AuditRow {
                            id: r.get(0)?,
                            at: format_rfc3339_ms(at_ms),
                            at_ms,
                            token_id: r.get(2)?,
                            role: r.get(3)?,
                            method: r.get(4)?,
                            path: r.get(5)?,
                            status: r.get(6)?,
                            remote: r.get(7)?,
                            user: r.get(8)?,
                        })
                    },
                )?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(rows)
        })
        .await?;
    Ok(Json(rows))
}
