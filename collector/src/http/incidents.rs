//! Incidents under `/api/v1` (rules: `rules.rs`; maintenance windows: `maintenance.rs`).
//!
//! | method | path | role | answer |
//! |---|---|---|---|
//! | GET | `/incidents?state=&priority=&ci=&host=&rule=&since=&suppressed=&limit=&offset=` | viewer | `{items, total, limit, offset}` |
//! | GET | `/incidents/{id}` | viewer | the incident + `timeline`, `children`, `recent_changes`, `notifications` |
//! | POST | `/incidents/{id}/acknowledge` `{note?}` | operator | the incident |
//! | POST | `/incidents/{id}/assign` `{assignee}` | operator | the incident |
//! | POST | `/incidents/{id}/comment` `{text}` | operator | the incident |
//! | POST | `/incidents/{id}/resolve` `{code, note?}` | operator | the incident |
//! | POST | `/incidents/{id}/close` `{note?}` | operator | the incident |
//!
//! An action the incident's state does not allow is a 409 `illegal_transition` whose body lists
//! `state` and `allowed`; an unknown incident a 404; a body that is not JSON a 400; a body with a
//! missing or unknown field or a bad value a 422. `state` and `priority` take comma lists
//! (`priority=P1,P2`); `since` (RFC 3339 or Unix ms) filters on the incident's start.
//!
//! This module must never: run SQLite on the runtime, let a viewer change an incident, or write
//! incident rows itself (every change goes through `crate::incidents::lifecycle`, which also
//! decides what is notified).

use axum::extract::State;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use vigil_shared::time::{format_rfc3339_ms, parse_time_ms};

use super::{now_ms, text_field, ApiError, ApiJson, ApiPath, ApiQuery, Auth, HttpState, MAX_NAME};
use crate::incidents::engine::Input;
use crate::incidents::lifecycle::Lifecycle;
use crate::incidents::records::{
    self, Filter, Incident, Request, State as IncState, TransitionError,
};
use crate::incidents::rule::parse_priority;
use crate::store::{in_tx, Role, StoreError};

/// Largest page.
const MAX_LIMIT: u32 = 500;
const DEFAULT_LIMIT: u32 = 100;
/// Resolution codes an operator may give.
pub const RESOLUTION_CODES: &[&str] = &[
    "solved",
    "workaround",
    "not_reproducible",
    "duplicate",
    "false_positive",
    "cancelled",
    "other",
];
const MAX_TEXT: usize = 10_000;

pub(super) fn routes() -> Router<HttpState> {
    Router::new()
        .route("/incidents", get(list))
        .route("/incidents/{id}", get(detail))
        .route("/incidents/{id}/acknowledge", post(acknowledge))
        .route("/incidents/{id}/assign", post(assign))
        .route("/incidents/{id}/comment", post(comment))
        .route("/incidents/{id}/resolve", post(resolve))
        .route("/incidents/{id}/close", post(close))
}

/// An incident as the API shows it.
#[derive(Debug, Serialize)]
pub struct IncidentView {
    pub id: i64,
    pub title: String,
    pub rule: String,
    pub origin: String,
    pub state: &'static str,
    /// `P1` (critical) .. `P5` (planning).
    pub priority: String,
    pub impact: String,
    pub urgency: String,
    pub host: Option<HostRef>,
    pub ci: CiRef,
    pub metric: Option<String>,
    pub op: Option<String>,
    pub threshold: Option<f64>,
    pub trigger_value: Option<f64>,
    pub peak_value: Option<f64>,
    pub last_value: Option<f64>,
    pub started: Option<String>,
    pub started_ms: i64,
    pub first_breach_ms: i64,
    pub last_breach_ms: i64,
    pub created_ms: i64,
    pub acknowledged_ms: Option<i64>,
    pub resolved_ms: Option<i64>,
    pub closed_ms: Option<i64>,
    pub assignee: Option<String>,
    pub resolution: Option<Resolution>,
    pub flapping: bool,
    pub suppressed: Option<SuppressedView>,
    pub probable_cause_id: Option<i64>,
    pub reopen_count: i64,
    pub labels: std::collections::BTreeMap<String, String>,
    /// Response and resolution targets (due times, levels reached).
    pub service_level: ServiceLevelView,
}

/// An incident's response and resolution clocks (`docs/reference.md`, incident service levels).
#[derive(Debug, Serialize)]
pub struct ServiceLevelView {
    /// The SLA whose targets apply; `null`: the defaults.
    pub sla: Option<String>,
    pub response: ClockView,
    pub resolution: ClockView,
}

#[derive(Debug, Serialize)]
pub struct ClockView {
    /// When the target falls (or fell) due; `null` until the clockwork first saw the incident
    /// (within 5 s of its opening).
    pub due_ms: Option<i64>,
    pub due: Option<String>,
    /// The highest share of the target spent that was reported: 0, 50, 75 or 100 (%).
    pub level: u8,
    /// The target was missed.
    pub breached: bool,
}

impl ClockView {
    fn new(due_ms: Option<i64>, level: u8) -> ClockView {
        ClockView {
            due_ms,
            due: due_ms.and_then(format_rfc3339_ms),
            level,
            breached: level >= 100,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct HostRef {
    pub agent_id: String,
    pub hostname: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct CiRef {
    pub id: Option<i64>,
    #[serde(rename = "type")]
    pub ci_type: String,
    pub key: String,
}

#[derive(Debug, Serialize)]
pub struct Resolution {
    pub code: Option<String>,
    pub note: Option<String>,
    pub by: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct SuppressedView {
    /// `parent` or `maintenance`.
    pub reason: String,
    pub parent_id: Option<i64>,
    pub maintenance: Option<String>,
}

impl From<Incident> for IncidentView {
    fn from(i: Incident) -> Self {
        IncidentView {
            id: i.id,
            title: i.title,
            rule: i.rule,
            origin: i.origin,
            state: i.state.as_str(),
            priority: format!("P{}", i.priority),
            impact: i.impact,
            urgency: i.urgency,
            host: i.agent_id.map(|agent_id| HostRef {
                agent_id,
                hostname: i.hostname,
            }),
            ci: CiRef {
                id: i.ci_id,
                ci_type: i.ci_type,
                key: i.ci_key,
            },
            metric: i.metric,
            op: i.op,
            threshold: i.threshold,
            trigger_value: i.trigger_value,
            peak_value: i.peak_value,
            last_value: i.last_value,
            started: format_rfc3339_ms(i.started_ms),
            started_ms: i.started_ms,
            first_breach_ms: i.first_breach_ms,
            last_breach_ms: i.last_breach_ms,
            created_ms: i.created_ms,
            acknowledged_ms: i.acknowledged_ms,
            resolved_ms: i.resolved_ms,
            closed_ms: i.closed_ms,
            assignee: i.assignee,
            resolution: i.resolved_ms.map(|_| Resolution {
                code: i.resolution_code,
                note: i.resolution_note,
                by: i.resolved_by,
            }),
            flapping: i.flapping,
            suppressed: i.suppressed.map(|reason| SuppressedView {
                reason,
                parent_id: i.parent_id,
                maintenance: i.maintenance,
            }),
            probable_cause_id: i.probable_cause_id,
            reopen_count: i.reopen_count,
            labels: i.labels,
            service_level: ServiceLevelView {
                sla: i.targets_sla,
                response: ClockView::new(i.response_due_ms, i.response_level),
                resolution: ClockView::new(i.resolution_due_ms, i.resolution_level),
            },
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    state: Option<String>,
    priority: Option<String>,
    ci: Option<i64>,
    host: Option<String>,
    rule: Option<String>,
    since: Option<String>,
    suppressed: Option<bool>,
    limit: Option<u32>,
    offset: Option<u32>,
}

fn bad(msg: impl Into<String>) -> ApiError {
    ApiError::BadRequest(msg.into())
}

/// RFC 3339 (any offset) or Unix milliseconds, as a 400.
fn parse_time(s: &str) -> Result<i64, ApiError> {
    parse_time_ms(s).map_err(bad)
}

fn filter(q: ListQuery) -> Result<Filter, ApiError> {
    let mut f = Filter {
        limit: q.limit.unwrap_or(DEFAULT_LIMIT),
        offset: q.offset.unwrap_or(0),
        ci_id: q.ci,
        host: q.host,
        rule: q.rule,
        suppressed: q.suppressed,
        ..Filter::default()
    };
    if f.limit == 0 || f.limit > MAX_LIMIT {
        return Err(bad(format!("limit must be between 1 and {MAX_LIMIT}")));
    }
    for s in q.state.iter().flat_map(|s| s.split(',')) {
        f.states.push(IncState::parse(s.trim()).ok_or_else(|| {
            bad(format!(
                "invalid state {s:?}: expected open, acknowledged, resolved or closed"
            ))
        })?);
    }
    for p in q.priority.iter().flat_map(|s| s.split(',')) {
        f.priorities.push(parse_priority(p.trim()).map_err(bad)?);
    }
    f.since_ms = q.since.as_deref().map(parse_time).transpose()?;
    Ok(f)
}

#[derive(Debug, Serialize)]
struct ListView {
    items: Vec<IncidentView>,
    total: u64,
    limit: u32,
    offset: u32,
}

async fn list(
    auth: Auth,
    State(state): State<HttpState>,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Json<ListView>, ApiError> {
    auth.require(Role::Viewer)?;
    let f = filter(q)?;
    let (limit, offset) = (f.limit, f.offset);
    let (items, total) = state
        .db
        .run(move |db| Ok(records::list(db.conn(), &f)?))
        .await?;
    Ok(Json(ListView {
        items: items.into_iter().map(IncidentView::from).collect(),
        total,
        limit,
        offset,
    }))
}

#[derive(Debug, Serialize)]
struct TimelineView {
    at: Option<String>,
    at_ms: i64,
    kind: String,
    actor: String,
    detail: Value,
}

#[derive(Debug, Serialize)]
struct ChildView {
    id: i64,
    title: String,
    state: &'static str,
    suppressed: bool,
}

#[derive(Debug, Serialize)]
struct ChangeView {
    at: Option<String>,
    at_ms: i64,
    ci_id: i64,
    ci_type: String,
    ci_name: String,
    attribute: String,
    change: String,
    old_value: Option<Value>,
    new_value: Option<Value>,
    source: String,
}

#[derive(Debug, Serialize)]
struct NotificationView {
    webhook: String,
    event: String,
    attempts: i64,
    delivered_ms: Option<i64>,
    failed_ms: Option<i64>,
    last_error: Option<String>,
}

#[derive(Debug, Serialize)]
struct DetailView {
    #[serde(flatten)]
    incident: IncidentView,
    timeline: Vec<TimelineView>,
    children: Vec<ChildView>,
    recent_changes: Vec<ChangeView>,
    notifications: Vec<NotificationView>,
}

/// A delivery error without the receiver's response body (`HTTP 400: <body>` -> `HTTP 400`).
fn receiver_text_removed(e: String) -> String {
    match e.split_once(": ") {
        Some((status, _)) if status.starts_with("HTTP ") => status.to_owned(),
        _ => e,
    }
}

fn json_text(v: Option<String>) -> Option<Value> {
    v.map(|t| serde_json::from_str(&t).unwrap_or(Value::String(t)))
}

async fn detail(
    auth: Auth,
    State(state): State<HttpState>,
    ApiPath(id): ApiPath<i64>,
) -> Result<Json<DetailView>, ApiError> {
    auth.require(Role::Viewer)?;
    // What a webhook receiver answered is its own text: operators see it, viewers the status.
    let full_errors = auth.role >= Role::Operator;
    let found = state
        .db
        .run(move |db| {
            let c = db.conn();
            let Some(inc) = records::get(c, id)? else {
                return Ok(None);
            };
            let timeline = records::timeline(c, id)?;
            let children = records::children(c, id)?;
            let changes = records::recent_changes(c, &inc)?;
            let notifications: Vec<NotificationView> = crate::notify::list_for_incident(c, id)?
                .into_iter()
                .map(|o| NotificationView {
                    webhook: o.webhook,
                    event: o.event,
                    attempts: o.attempts,
                    delivered_ms: o.delivered_ms,
                    failed_ms: o.failed_ms,
                    last_error: o.last_error.map(|e| {
                        if full_errors {
                            e
                        } else {
                            receiver_text_removed(e)
                        }
                    }),
                })
                .collect();
            Ok::<_, StoreError>(Some((inc, timeline, children, changes, notifications)))
        })
        .await?;
    let Some((inc, timeline, children, changes, notifications)) = found else {
        return Err(ApiError::NotFound(format!("incident {id} not found")));
    };
    Ok(Json(DetailView {
        incident: inc.into(),
        timeline: timeline
            .into_iter()
            .map(|e| TimelineView {
                at: format_rfc3339_ms(e.ts_ms),
                at_ms: e.ts_ms,
                kind: e.kind,
                actor: e.actor,
                detail: e.detail,
            })
            .collect(),
        children: children
            .into_iter()
            .map(|c| ChildView {
                suppressed: c.is_suppressed(),
                id: c.id,
                title: c.title,
                state: c.state.as_str(),
            })
            .collect(),
        recent_changes: changes
            .into_iter()
            .map(|c| ChangeView {
                at: format_rfc3339_ms(c.ts_ms),
                at_ms: c.ts_ms,
                ci_id: c.ci_id,
                ci_type: c.ci_type,
                ci_name: c.ci_name,
                attribute: c.attribute,
                change: c.change,
                old_value: json_text(c.old_value),
                new_value: json_text(c.new_value),
                source: c.source,
            })
            .collect(),
        notifications,
    }))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct NoteBody {
    note: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AssignBody {
    assignee: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CommentBody {
    text: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ResolveBody {
    code: String,
    note: Option<String>,
}

/// An optional JSON body: empty is the default; not JSON is a 400, the wrong shape a 422.
fn optional_body<T: serde::de::DeserializeOwned + Default>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(bytes).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => ApiError::Unprocessable(e.to_string()),
        _ => ApiError::BadRequest(format!("the body is not valid JSON: {e}")),
    })
}

fn note(v: Option<String>) -> Result<Option<String>, ApiError> {
    v.map(|n| text_field("note", &n, MAX_TEXT)).transpose()
}

async fn acknowledge(
    auth: Auth,
    state: State<HttpState>,
    ApiPath(id): ApiPath<i64>,
    body: axum::body::Bytes,
) -> Result<Json<IncidentView>, ApiError> {
    let note = note(optional_body::<NoteBody>(&body)?.note)?;
    act(auth, state, id, Request::Acknowledge { note }).await
}

async fn assign(
    auth: Auth,
    state: State<HttpState>,
    ApiPath(id): ApiPath<i64>,
    body: Result<ApiJson<AssignBody>, ApiError>,
) -> Result<Json<IncidentView>, ApiError> {
    // The role first: a viewer gets 403 whatever the body.
    auth.require(Role::Operator)?;
    let ApiJson(b) = body?;
    let assignee = text_field("assignee", &b.assignee, MAX_NAME)?;
    act(auth, state, id, Request::Assign { assignee }).await
}

async fn comment(
    auth: Auth,
    state: State<HttpState>,
    ApiPath(id): ApiPath<i64>,
    body: Result<ApiJson<CommentBody>, ApiError>,
) -> Result<Json<IncidentView>, ApiError> {
    // The role first: a viewer gets 403 whatever the body.
    auth.require(Role::Operator)?;
    let ApiJson(b) = body?;
    let text = text_field("text", &b.text, MAX_TEXT)?;
    act(auth, state, id, Request::Comment { text }).await
}

async fn resolve(
    auth: Auth,
    state: State<HttpState>,
    ApiPath(id): ApiPath<i64>,
    body: Result<ApiJson<ResolveBody>, ApiError>,
) -> Result<Json<IncidentView>, ApiError> {
    // The role first: a viewer gets 403 whatever the body.
    auth.require(Role::Operator)?;
    let ApiJson(b) = body?;
    if !RESOLUTION_CODES.contains(&b.code.as_str()) {
        return Err(ApiError::Unprocessable(format!(
            "invalid resolution code {:?}: expected one of {}",
            b.code,
            RESOLUTION_CODES.join(", ")
        )));
    }
    let note = note(b.note)?;
    act(auth, state, id, Request::Resolve { code: b.code, note }).await
}

async fn close(
    auth: Auth,
    state: State<HttpState>,
    ApiPath(id): ApiPath<i64>,
    body: axum::body::Bytes,
) -> Result<Json<IncidentView>, ApiError> {
    let note = note(optional_body::<NoteBody>(&body)?.note)?;
    act(auth, state, id, Request::Close { note }).await
}

/// Applies an operator's request in one transaction with its notification, then wakes the
/// notifier and records MTTA / MTTR.
async fn act(
    auth: Auth,
    State(state): State<HttpState>,
    id: i64,
    req: Request,
) -> Result<Json<IncidentView>, ApiError> {
    auth.require(Role::Operator)?;
    let actor = auth.by();
    let hooks = state.incidents.webhooks.clone();
    let now = now_ms();
    let result = state
        .db
        .run(move |db| {
            let res = in_tx(db.conn(), |c| {
                match Lifecycle::new(c, &hooks, now).by(&actor).operator(id, &req) {
                    Ok(t) => Ok(Ok(t)),
                    Err(TransitionError::Sql(e)) => Err(e),
                    Err(other) => Ok(Err(other)),
                }
            })?;
            let counts = records::open_counts(db.conn())?;
            Ok::<_, StoreError>(res.map(|t| (t, counts)))
        })
        .await?;
    let t = match result {
        Ok((t, counts)) => {
            if let Some(m) = &state.incidents.metrics {
                m.set_open(counts);
            }
            t
        }
        Err(TransitionError::NotFound(id)) => {
            return Err(ApiError::NotFound(format!("incident {id} not found")))
        }
        Err(TransitionError::Illegal {
            action,
            state: st,
            allowed,
        }) => {
            return Err(ApiError::IllegalTransition {
                message: format!("cannot {action} an incident that is {st}"),
                state: st.as_str(),
                allowed: allowed.iter().map(|a| a.as_str()).collect(),
            })
        }
        Err(TransitionError::Sql(e)) => return Err(ApiError::internal(e)),
    };
    (state.incidents.wake)();
    if !t.incident.state.is_active() {
        // Its series goes back to idle in the engine: a breach that goes on opens again.
        state.tell_engine(Input::IncidentChanged { id }).await;
    }
    if let Some(m) = &state.incidents.metrics {
        let (priority, since_start) = (t.incident.priority, now - t.incident.started_ms);
        match (t.before, t.incident.state) {
            (IncState::Open, IncState::Acknowledged) => m.acknowledged(priority, since_start),
            (IncState::Open | IncState::Acknowledged, IncState::Resolved) => {
                m.resolved(priority, since_start)
            }
            _ => {}
        }
    }
    Ok(Json(t.incident.into()))
}
