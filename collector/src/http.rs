//! The collector's HTTP side: Prometheus `/metrics`, `/healthz`, `/readyz` and the JSON API under
//! `/api/v1` (bearer tokens, roles viewer < operator < admin).
//!
//! Handlers stay thin: authenticate with [`Auth`], read the store through [`DbPool`] (blocking
//! work on tokio's blocking pool), map rows to JSON views. Every API failure is an [`ApiError`].
//!
//! This module must never: answer an API request with anything but JSON, leak internal error
//! detail (it is logged instead), echo or log a token, or block the runtime on SQLite.

mod alertmanager;
pub mod audit;
mod auth;
mod cmdb;
mod console;
mod error;
mod incidents;
mod maintenance;
mod rules;
pub mod serve;
pub mod session;
mod slas;

use std::path::PathBuf;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;

pub use auth::Auth;
pub use error::{ApiError, ApiJson, ApiPath, ApiQuery};

use crate::store::{AgentRow, ApiTokenRow, DbPool, Role, StoreError};

/// `Content-Type` of the Prometheus text exposition format.
pub const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";
/// Idle store connections kept for HTTP handlers.
const POOL_IDLE: usize = 4;

/// What the handlers share.
#[derive(Clone)]
pub struct HttpState {
    pub db: DbPool,
    /// Renders the Prometheus text (called on a blocking thread for each scrape).
    pub metrics_text: Arc<dyn Fn() -> String + Send + Sync>,
    /// `/readyz` answers 200 once everything started and while nothing died.
    pub supervisor: crate::supervise::Supervisor,
    /// Live liveness of the agents (`state` in `GET /api/v1/agents`); without it the stored
    /// state is shown.
    pub presence: Option<Arc<crate::presence::Presence>>,
    /// What the incident endpoints need besides the store.
    pub incidents: Arc<IncidentsApi>,
    /// The listener's metrics (429s are counted here too).
    pub http_metrics: serve::HttpMetrics,
    /// Permits for CMDB exports streaming at once (`[http] max_exports`).
    pub exports: Arc<tokio::sync::Semaphore>,
    /// Console logins: session policy, login limits, their counter.
    pub console: Arc<session::Console>,
}

/// What the incident endpoints need besides the store: the webhooks to notify, a way to wake
/// the notifier, the MTTA/MTTR histograms and the rules in force.
#[derive(Clone)]
pub struct IncidentsApi {
    pub webhooks: Arc<Vec<crate::notify::Webhook>>,
    pub wake: Arc<dyn Fn() + Send + Sync>,
    pub metrics: Option<crate::incidents::IncidentMetrics>,
    pub rules: Arc<Vec<crate::incidents::rule::Rule>>,
    /// `[incidents] reopen_within`, for incidents opened through the API (Alertmanager).
    pub reopen_within_ms: i64,
    /// Told when API rules change.
    pub engine: Option<crate::incidents::engine::EngineHandle>,
    /// Flapping of Alertmanager fingerprints across requests.
    pub flaps: Arc<crate::incidents::alert_flaps::AlertFlaps>,
    /// The SLAs in force (`/api/v1/slas`): the configuration's and the API's.
    pub slas: Arc<crate::sla::api::SlaSet>,
}

impl Default for IncidentsApi {
    fn default() -> Self {
        IncidentsApi {
            webhooks: Arc::new(Vec::new()),
            wake: Arc::new(|| {}),
            metrics: None,
            rules: Arc::new(Vec::new()),
            reopen_within_ms: 3_600_000,
            engine: None,
            flaps: Default::default(),
            slas: Default::default(),
        }
    }
}

impl HttpState {
    /// Opens a small connection pool on `<data_dir>/vigil.db`.
    pub fn new(
        data_dir: PathBuf,
        metrics_text: Arc<dyn Fn() -> String + Send + Sync>,
        supervisor: crate::supervise::Supervisor,
    ) -> Result<HttpState, StoreError> {
        Ok(HttpState {
            db: DbPool::open(&data_dir, POOL_IDLE)?,
            metrics_text,
            supervisor,
            presence: None,
            incidents: Arc::new(IncidentsApi::default()),
            http_metrics: serve::HttpMetrics::unregistered(),
            exports: Arc::new(tokio::sync::Semaphore::new(
                serve::HttpLimits::default().max_exports,
            )),
            console: Arc::new(session::Console::default()),
        })
    }
}

pub(crate) use vigil_runtime::clock::now_ms;
use vigil_shared::time::format_rfc3339_ms;

impl HttpState {
    /// Tells the incident engine, if there is one (a dead engine is the supervisor's to
    /// report; the send only logs).
    pub(crate) async fn tell_engine(&self, input: crate::incidents::engine::Input) {
        if let Some(engine) = &self.incidents.engine {
            let _ = engine.send(input).await;
        }
    }
}

/// Longest name (assignee, window name) an API body may give.
const MAX_NAME: usize = 200;

/// A required text field of a body: trimmed, not empty, at most `max` characters (a 422
/// otherwise).
fn text_field(field: &str, v: &str, max: usize) -> Result<String, ApiError> {
    let t = v.trim();
    if t.is_empty() {
        return Err(ApiError::Unprocessable(format!(
            "`{field}` must not be empty"
        )));
    }
    if t.chars().count() > max {
        return Err(ApiError::Unprocessable(format!(
            "`{field}` is longer than {max} characters"
        )));
    }
    Ok(t.to_string())
}

/// The whole HTTP surface.
pub fn router(state: HttpState) -> Router {
    let api = Router::new()
        .route("/agents", get(list_agents))
        .route("/tokens", get(list_tokens))
        .merge(cmdb::routes())
        .merge(incidents::routes())
        .merge(rules::routes())
        .merge(maintenance::routes())
        .merge(slas::routes())
        .merge(alertmanager::routes())
        .route("/audit", get(audit::list))
        .route("/users", get(session::users))
        .route("/session", get(session::current))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            audit::audit,
        ));
    let console = Router::new()
        .route("/login", get(session::login_page).post(session::login))
        .route("/logout", axum::routing::post(session::logout))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            audit::audit_console,
        ));
    Router::new()
        .merge(console)
        .merge(console::routes())
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .nest("/api/v1", api)
        .fallback(fallback)
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .with_state(state)
}

/// [`serve::serve`] with the default limits (the handlers' unit tests).
#[cfg(test)]
pub(crate) async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve::serve(
        listener,
        router,
        serve::HttpLimits::default(),
        serve::HttpMetrics::unregistered(),
        shutdown,
    )
    .await
}

async fn metrics(State(state): State<HttpState>) -> Response {
    let render = state.metrics_text.clone();
    match tokio::task::spawn_blocking(move || render()).await {
        Ok(body) => ([(header::CONTENT_TYPE, METRICS_CONTENT_TYPE)], body).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "rendering metrics failed");
            (StatusCode::INTERNAL_SERVER_ERROR, "internal error\n").into_response()
        }
    }
}

async fn readyz(State(state): State<HttpState>) -> (StatusCode, String) {
    match state.supervisor.readiness() {
        Ok(()) => (StatusCode::OK, "ready\n".into()),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")),
    }
}

async fn fallback(uri: Uri) -> Response {
    let path = uri.path();
    if path == "/api" || path.starts_with("/api/") {
        ApiError::NotFound(format!("no such endpoint: {path}")).into_response()
    } else {
        (StatusCode::NOT_FOUND, "not found\n").into_response()
    }
}

/// An agent as the API shows it.
#[derive(Debug, Serialize)]
pub struct AgentView {
    pub id: String,
    pub hostname: String,
    pub version: String,
    /// Last known peer address.
    pub address: Option<String>,
    pub connected: bool,
    /// `up`, `stopped` (it said goodbye and the shutdown grace is not over), `down`; `revoked`
    /// for a revoked agent.
    pub state: &'static str,
    /// When it last stopped cleanly (said goodbye), unless it connected since.
    pub stopped_at_ms: Option<i64>,
    pub stopped_at: Option<String>,
    pub last_seen_ms: Option<i64>,
    pub last_seen: Option<String>,
    pub last_seq: Option<u64>,
    /// Its sampling interval, milliseconds, as of its last hello.
    pub interval_ms: Option<u64>,
    pub enrolled_at_ms: i64,
    pub enrolled_at: Option<String>,
    pub revoked: bool,
    pub revoked_at: Option<String>,
}

impl AgentView {
    /// `a` as stored, its connection and state from `presence` when the collector knows it.
    fn new(a: AgentRow, live: Option<crate::presence::AgentStatus>) -> AgentView {
        use crate::presence::{Health, Link};
        let (connected, state, stopped_at_ms) = match (&live, a.is_revoked()) {
            (_, true) => (false, "revoked", a.stopped_ms),
            (Some(s), false) => (
                s.connected(),
                s.health.as_str(),
                match s.observed.link {
                    Link::Stopped { at_ms } => Some(at_ms),
                    _ => None,
                },
            ),
            (None, false) => (
                a.connected,
                if a.connected {
                    Health::Up
                } else {
                    Health::Down
                }
                .as_str(),
                a.stopped_ms,
            ),
        };
        AgentView {
            revoked: a.is_revoked(),
            revoked_at: a.revoked_at_ms.and_then(format_rfc3339_ms),
            last_seen: a.last_seen_ms.and_then(format_rfc3339_ms),
            enrolled_at: format_rfc3339_ms(a.enrolled_at_ms),
            stopped_at: stopped_at_ms.and_then(format_rfc3339_ms),
            stopped_at_ms,
            state,
            connected,
            id: a.id,
            hostname: a.hostname,
            version: a.version,
            address: a.last_addr,
            last_seen_ms: a.last_seen_ms,
            last_seq: a.last_seq,
            interval_ms: a.interval_ms,
            enrolled_at_ms: a.enrolled_at_ms,
        }
    }
}

/// An API token as the API shows it: never the secret nor its hash.
#[derive(Debug, Serialize)]
pub struct TokenView {
    pub id: String,
    pub name: String,
    pub role: Role,
    pub created_at_ms: i64,
    pub created_at: Option<String>,
    pub last_used_ms: Option<i64>,
    pub last_used: Option<String>,
    pub revoked: bool,
    pub revoked_at: Option<String>,
}

impl From<ApiTokenRow> for TokenView {
    fn from(t: ApiTokenRow) -> Self {
        TokenView {
            created_at: format_rfc3339_ms(t.created_at_ms),
            last_used: t.last_used_ms.and_then(format_rfc3339_ms),
            revoked: t.revoked_at_ms.is_some(),
            revoked_at: t.revoked_at_ms.and_then(format_rfc3339_ms),
            id: t.id,
            name: t.name,
            role: t.role,
            created_at_ms: t.created_at_ms,
            last_used_ms: t.last_used_ms,
        }
    }
}

async fn list_agents(
    auth: Auth,
    State(state): State<HttpState>,
) -> Result<Json<Vec<AgentView>>, ApiError> {
    auth.require(Role::Viewer)?;
    let rows = state.db.run(|db| db.list_agents()).await?;
    let now = now_ms();
    Ok(Json(
        rows.into_iter()
            .map(|a| {
                let live = state.presence.as_ref().and_then(|p| p.status(&a.id, now));
                AgentView::new(a, live)
            })
            .collect(),
    ))
}

async fn list_tokens(
    auth: Auth,
    State(state): State<HttpState>,
) -> Result<Json<Vec<TokenView>>, ApiError> {
    auth.require(Role::Admin)?;
    let rows = state.db.run(|db| db.list_api_tokens()).await?;
    Ok(Json(rows.into_iter().map(TokenView::from).collect()))
}

#[cfg(test)]
pub(crate) mod tests;
