//! Maintenance windows under `/api/v1`: listed for viewers (deleted ones with `?deleted=true`,
//! kept for SLA history); created and deleted by operators. The engine hears of every change at
//! once, so a deleted window stops suppressing its incidents.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{delete, get};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use vigil_shared::time::{check_ms, format_rfc3339_ms, parse_time_ms};

use super::{now_ms, text_field, ApiError, ApiJson, ApiPath, ApiQuery, Auth, HttpState, MAX_NAME};
use crate::incidents::engine::Input;
use crate::incidents::maintenance::{self, Recurrence, Window};
use crate::incidents::scope::ScopeJson;
use crate::store::{Role, StoreError};

pub(super) fn routes() -> Router<HttpState> {
    Router::new()
        .route("/maintenance", get(list_windows).post(create_window))
        .route("/maintenance/{id}", delete(delete_window))
}

/// The longest maintenance window (one year): longer is not maintenance.
const MAX_WINDOW: std::time::Duration = std::time::Duration::from_secs(366 * 86_400);

#[derive(Debug, Serialize)]
struct WindowView {
    id: i64,
    name: String,
    scope: ScopeJson,
    start: Option<String>,
    start_ms: i64,
    duration: String,
    duration_ms: i64,
    every: Option<&'static str>,
    origin: String,
    active_now: bool,
    deleted_ms: Option<i64>,
}

impl WindowView {
    fn new(w: Window, now: i64) -> WindowView {
        WindowView {
            active_now: w.covers(now),
            id: w.id,
            scope: ScopeJson::from_scope(&w.scope),
            start: format_rfc3339_ms(w.start_ms),
            start_ms: w.start_ms,
            duration: humantime::format_duration(std::time::Duration::from_millis(
                w.duration_ms.max(0) as u64,
            ))
            .to_string(),
            duration_ms: w.duration_ms,
            every: w.every.map(|r| match r {
                Recurrence::Daily => "day",
                Recurrence::Weekly => "week",
            }),
            origin: w.origin,
            deleted_ms: w.deleted_ms,
            name: w.name,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WindowsQuery {
    deleted: Option<bool>,
}

async fn list_windows(
    auth: Auth,
    State(state): State<HttpState>,
    ApiQuery(q): ApiQuery<WindowsQuery>,
) -> Result<Json<Vec<WindowView>>, ApiError> {
    auth.require(Role::Viewer)?;
    let with_deleted = q.deleted.unwrap_or(false);
    let rows = state
        .db
        .run(move |db| Ok(maintenance::load(db.conn(), with_deleted)?))
        .await?;
    let now = now_ms();
    Ok(Json(
        rows.into_iter().map(|w| WindowView::new(w, now)).collect(),
    ))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewWindow {
    name: String,
    #[serde(default)]
    scope: ScopeJson,
    /// RFC 3339 or Unix ms.
    start: Value,
    /// e.g. "2h".
    duration: String,
    every: Option<String>,
}

async fn create_window(
    auth: Auth,
    State(state): State<HttpState>,
    body: Result<ApiJson<NewWindow>, ApiError>,
) -> Result<impl IntoResponse, ApiError> {
    // The role first: a viewer gets 403 whatever the body.
    auth.require(Role::Operator)?;
    let ApiJson(b) = body?;
    let unprocessable = ApiError::Unprocessable;
    let name = text_field("name", &b.name, MAX_NAME)?;
    let scope = b.scope.to_scope().map_err(unprocessable)?;
    let start_ms = match &b.start {
        Value::Number(n) => n.as_i64().map(check_ms),
        Value::String(s) => Some(parse_time_ms(s)),
        _ => None,
    }
    .ok_or_else(|| unprocessable("`start` must be Unix milliseconds or RFC 3339".into()))?
    .map_err(|e| unprocessable(format!("invalid `start`: {e}")))?;
    let duration = vigil_shared::config::parse_duration(&b.duration)
        .map_err(|e| unprocessable(format!("invalid `duration`: {e}")))?;
    let every = match b.every.as_deref() {
        None => None,
        Some("day") => Some(Recurrence::Daily),
        Some("week") => Some(Recurrence::Weekly),
        Some(other) => {
            return Err(unprocessable(format!(
                "invalid `every` {other:?}: expected \"day\" or \"week\""
            )))
        }
    };
    if duration.is_zero() || every.is_some_and(|r| duration >= r.period()) {
        return Err(unprocessable(
            "`duration` must be positive and shorter than the repeat period".into(),
        ));
    }
    if duration > MAX_WINDOW {
        return Err(unprocessable(format!(
            "`duration` must be at most {}",
            humantime::format_duration(MAX_WINDOW)
        )));
    }
    let duration_ms = i64::try_from(duration.as_millis()).unwrap_or(i64::MAX);
    let now = now_ms();
    let created = state
        .db
        .run(move |db| {
            let c = db.conn();
            let taken: bool = c.query_row(
                "SELECT EXISTS(SELECT 1 FROM maintenance_windows WHERE name = ?1 AND deleted_ms IS NULL)",
                [&name],
                |r| r.get(0),
            )?;
            if taken {
                return Ok(None);
            }
            let id = maintenance::create(c, &name, &scope, start_ms, duration_ms, every, now)?;
            Ok::<_, StoreError>(
                maintenance::load(c, false)?
                    .into_iter()
                    .find(|w| w.id == id),
            )
        })
        .await?;
    if created.is_some() {
        state.tell_engine(Input::WindowsChanged).await;
    }
    match created {
        Some(w) => Ok((StatusCode::CREATED, Json(WindowView::new(w, now)))),
        None => Err(ApiError::Conflict(
            "a maintenance window with this name exists".into(),
        )),
    }
}

async fn delete_window(
    auth: Auth,
    State(state): State<HttpState>,
    ApiPath(id): ApiPath<i64>,
) -> Result<Json<WindowView>, ApiError> {
    auth.require(Role::Operator)?;
    let now = now_ms();
    let res = state
        .db
        .run(move |db| {
            let c = db.conn();
            let existing = maintenance::load(c, true)?.into_iter().find(|w| w.id == id);
            match existing {
                None => Ok(Err(ApiError::NotFound(format!(
                    "maintenance window {id} not found"
                )))),
                Some(w) if w.origin != "api" => Ok(Err(ApiError::Conflict(
                    "this window comes from the configuration; remove it there".into(),
                ))),
                Some(w) if w.deleted_ms.is_some() => Ok(Err(ApiError::Conflict(
                    "this window is already deleted".into(),
                ))),
                Some(mut w) => {
                    maintenance::delete(c, id, now)?;
                    w.deleted_ms = Some(now);
                    Ok::<_, StoreError>(Ok(w))
                }
            }
        })
        .await??;
    state.tell_engine(Input::WindowsChanged).await;
    Ok(Json(WindowView::new(res, now)))
}
