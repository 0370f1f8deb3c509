//! Incidents, rules and maintenance windows under `/api/v1`.
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
//! | GET | `/rules` | viewer | the rules in force |
//! | GET | `/maintenance?deleted=true` | viewer | windows |
//! | POST | `/maintenance` `{name, scope, start, duration, every?}` | operator | 201 + the window |
//! | DELETE | `/maintenance/{id}` | operator | the window (API-made ones only) |
//!
//! An action the incident's state does not allow is a 409 `illegal_transition` whose body lists
//! `state` and `allowed`; an unknown incident a 404; a body that is not JSON a 400; a body with a
//! missing or unknown field or a bad value a 422. `state` and `priority` take comma lists
//! (`priority=P1,P2`); `since` (RFC 3339 or Unix ms) filters on the incident's start.
//!
//! This module must never: run SQLite on the runtime, let a viewer change an incident, or notify
//! for a suppressed or not yet announced incident.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use vigil_shared::time::{format_rfc3339_ms, parse_time_ms};

use super::{now_ms, ApiError, ApiJson, ApiPath, ApiQuery, Auth, HttpState};
use crate::incidents::engine::Input;
use crate::incidents::lifecycle::Lifecycle;
use crate::incidents::maintenance::Recurrence;
use crate::incidents::maintenance::{self, Window};
use crate::incidents::records::{
    self, Filter, Incident, Request, State as IncState, TransitionError,
};
use crate::incidents::rule::{parse_priority, Rule, Threshold};
use crate::incidents::scope::ScopeJson;
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
const MAX_NAME: usize = 200;

pub(super) fn routes() -> Router<HttpState> {
    Router::new()
        .route("/incidents", get(list))
        .route("/incidents/{id}", get(detail))
        .route("/incidents/{id}/acknowledge", post(acknowledge))
        .route("/incidents/{id}/assign", post(assign))
        .route("/incidents/{id}/comment", post(comment))
        .route("/incidents/{id}/resolve", post(resolve))
        .route("/incidents/{id}/close", post(close))
        .route("/rules", get(rules).post(create_rule))
        .route("/rules/{name}", delete(delete_rule))
        .route("/maintenance", get(list_windows).post(create_window))
        .route("/maintenance/{id}", delete(delete_window))
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

/// Tells the engine, if there is one (a dead engine is the supervisor's to report).
async fn tell_engine(state: &HttpState, input: Input) {
    if let Some(engine) = &state.incidents.engine {
        let _ = engine.send(input).await;
    }
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

fn json_text(v: Option<String>) -> Option<Value> {
    v.map(|t| serde_json::from_str(&t).unwrap_or(Value::String(t)))
}

async fn detail(
    auth: Auth,
    State(state): State<HttpState>,
    ApiPath(id): ApiPath<i64>,
) -> Result<Json<DetailView>, ApiError> {
    auth.require(Role::Viewer)?;
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
                    last_error: o.last_error,
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

fn text(field: &str, v: &str, max: usize) -> Result<String, ApiError> {
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
    v.map(|n| text("note", &n, MAX_TEXT)).transpose()
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
    ApiJson(b): ApiJson<AssignBody>,
) -> Result<Json<IncidentView>, ApiError> {
    let assignee = text("assignee", &b.assignee, MAX_NAME)?;
    act(auth, state, id, Request::Assign { assignee }).await
}

async fn comment(
    auth: Auth,
    state: State<HttpState>,
    ApiPath(id): ApiPath<i64>,
    ApiJson(b): ApiJson<CommentBody>,
) -> Result<Json<IncidentView>, ApiError> {
    let text = text("text", &b.text, MAX_TEXT)?;
    act(auth, state, id, Request::Comment { text }).await
}

async fn resolve(
    auth: Auth,
    state: State<HttpState>,
    ApiPath(id): ApiPath<i64>,
    ApiJson(b): ApiJson<ResolveBody>,
) -> Result<Json<IncidentView>, ApiError> {
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
    let actor = format!("api:{}", auth.token_id);
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
        tell_engine(&state, Input::IncidentChanged { id }).await;
    }
    if let Some(m) = &state.incidents.metrics {
        let since_start = |at: i64| ((at - t.incident.started_ms).max(0) as f64) / 1000.0;
        match (t.before, t.incident.state) {
            (IncState::Open, IncState::Acknowledged) => {
                m.acknowledge_seconds.observe(since_start(now));
            }
            (IncState::Open | IncState::Acknowledged, IncState::Resolved) => {
                m.resolve_seconds.observe(since_start(now));
            }
            _ => {}
        }
    }
    Ok(Json(t.incident.into()))
}

#[derive(Debug, Serialize)]
struct RuleView {
    name: String,
    metric: String,
    above: Option<f64>,
    below: Option<f64>,
    clear: f64,
    #[serde(rename = "for")]
    hold: String,
    impact: &'static str,
    urgency: &'static str,
    priority: String,
    scope: ScopeJson,
    labels: std::collections::BTreeMap<String, String>,
    /// `builtin`, `config` or `api`.
    origin: &'static str,
}

fn rule_view(r: &Rule, origin: &'static str) -> RuleView {
    RuleView {
        name: r.name.clone(),
        metric: r.metric.clone(),
        above: match r.threshold {
            Threshold::Above(t) => Some(t),
            Threshold::Below(_) => None,
        },
        below: match r.threshold {
            Threshold::Below(t) => Some(t),
            Threshold::Above(_) => None,
        },
        clear: r.clear,
        hold: humantime::format_duration(r.hold).to_string(),
        impact: r.impact.as_str(),
        urgency: r.urgency.as_str(),
        priority: format!("P{}", crate::incidents::rule::priority(r.impact, r.urgency)),
        scope: ScopeJson::from_scope(&r.scope),
        labels: r.labels.clone(),
        origin,
    }
}

fn base_origin(r: &Rule) -> &'static str {
    if crate::incidents::builtin::NAMES.contains(&r.name.as_str())
        && r.labels.get("builtin").is_some_and(|v| v == "true")
    {
        "builtin"
    } else {
        "config"
    }
}

async fn rules(
    auth: Auth,
    State(state): State<HttpState>,
) -> Result<Json<Vec<RuleView>>, ApiError> {
    auth.require(Role::Viewer)?;
    let api = state
        .db
        .run(|db| Ok(crate::incidents::api_rules::load(db.conn())?))
        .await?;
    let mut out: Vec<RuleView> = state
        .incidents
        .rules
        .iter()
        .map(|r| rule_view(r, base_origin(r)))
        .collect();
    out.extend(api.iter().map(|r| rule_view(&r.rule, "api")));
    Ok(Json(out))
}

/// `POST /rules` (admin): a rule with the keys of `[[rule]]`, checked like the configuration.
async fn create_rule(
    auth: Auth,
    State(state): State<HttpState>,
    ApiJson(body): ApiJson<Value>,
) -> Result<impl IntoResponse, ApiError> {
    auth.require(Role::Admin)?;
    let rule = crate::incidents::rule::rule_from_json(&body)
        .map_err(|errors| ApiError::Unprocessable(errors.join("; ")))?;
    if state.incidents.rules.iter().any(|r| r.name == rule.name) {
        return Err(ApiError::Conflict(format!(
            "rule {:?} is defined in the configuration",
            rule.name
        )));
    }
    let by = format!("api:{}", auth.token_id);
    let now = now_ms();
    let stored = rule.clone();
    let created = state
        .db
        .run(move |db| {
            Ok(crate::incidents::api_rules::create(
                db.conn(),
                &stored,
                &body,
                &by,
                now,
            )?)
        })
        .await?;
    if !created {
        return Err(ApiError::Conflict(format!("rule {:?} exists", rule.name)));
    }
    tell_engine(&state, Input::RulesChanged).await;
    Ok((StatusCode::CREATED, Json(rule_view(&rule, "api"))))
}

/// `DELETE /rules/{name}` (admin): API rules only; their open incidents resolve.
async fn delete_rule(
    auth: Auth,
    State(state): State<HttpState>,
    ApiPath(name): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    auth.require(Role::Admin)?;
    if state.incidents.rules.iter().any(|r| r.name == name) {
        return Err(ApiError::Conflict(format!(
            "rule {name:?} is defined in the configuration; remove it there"
        )));
    }
    let n = name.clone();
    let deleted = state
        .db
        .run(move |db| Ok(crate::incidents::api_rules::delete(db.conn(), &n)?))
        .await?;
    if !deleted {
        return Err(ApiError::NotFound(format!("rule {name:?} not found")));
    }
    tell_engine(&state, Input::RulesChanged).await;
    Ok(StatusCode::NO_CONTENT)
}

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
    ApiJson(b): ApiJson<NewWindow>,
) -> Result<impl IntoResponse, ApiError> {
    auth.require(Role::Operator)?;
    let unprocessable = ApiError::Unprocessable;
    let name = text("name", &b.name, MAX_NAME)?;
    let scope = b.scope.to_scope().map_err(unprocessable)?;
    let start_ms = match &b.start {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => parse_time_ms(s).ok(),
        _ => None,
    }
    .ok_or_else(|| unprocessable("`start` must be Unix milliseconds or RFC 3339".into()))?;
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
        tell_engine(&state, Input::WindowsChanged).await;
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
    tell_engine(&state, Input::WindowsChanged).await;
    Ok(Json(WindowView::new(res, now)))
}
