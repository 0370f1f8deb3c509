//! Service levels under `/api/v1` (viewer):
//!
//! | GET | `/slas` | every SLA with its figures over its own window, as of now |
//! | GET | `/slas/{name}` | one SLA: its own window and the rolling 1d, 7d, 30d |
//! | GET | `/slas/{name}/report?from=&to=&format=` | a period: both views, the error budget, the outages with their incidents and a daily series; `format=csv` (or `Accept: text/csv`) gives the daily series as CSV |
//! | GET | `/kpis?from=&to=&by=` | ITSM KPIs of the incidents of a period (`crate::sla::kpis`) |
//!
//! Every figure is computed from the store on each request (`crate::sla::report`): nothing is
//! cached, so late data, later resolutions and maintenance windows added afterwards show at once.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use vigil_shared::config::SlaWindow;
use vigil_shared::time::{format_rfc3339_ms, parse_time_ms};

use super::{now_ms, ApiError, ApiJson, ApiPath, ApiQuery, Auth, HttpState};
use crate::sla::{self, Day, Figures, Report, Sla, Span};
use crate::store::Role;
use axum::http::StatusCode;

pub(super) fn routes() -> Router<HttpState> {
    Router::new()
        .route("/slas", get(list).post(create))
        .route("/slas/{name}", get(one).put(change).delete(remove))
        .route("/slas/{name}/report", get(report))
        .route("/kpis", get(kpis))
}

/// The rolling windows `GET /slas/{name}` shows besides the SLA's own.
const EXTRA_WINDOWS: [u64; 3] = [86_400, 7 * 86_400, 30 * 86_400];

#[derive(Debug, Serialize)]
struct FiguresView {
    /// `up / (up + down)`, full precision; `null` when nothing was measured.
    availability: Option<f64>,
    /// Measured share of the time owed; `null` when none was owed.
    coverage: Option<f64>,
    scheduled_seconds: f64,
    up_seconds: f64,
    down_seconds: f64,
    degraded_seconds: f64,
    unknown_seconds: f64,
    excluded_seconds: f64,
    outages: usize,
    longest_outage_seconds: f64,
    mtbf_seconds: Option<f64>,
}

fn secs(ms: f64) -> f64 {
    ms / 1000.0
}

impl FiguresView {
    fn new(f: &Figures) -> FiguresView {
        FiguresView {
            availability: f.availability,
            coverage: f.coverage,
            scheduled_seconds: secs(f.scheduled_ms as f64),
            up_seconds: secs(f.up_ms),
            down_seconds: secs(f.down_ms),
            degraded_seconds: secs(f.degraded_ms),
            unknown_seconds: secs(f.unknown_ms as f64),
            excluded_seconds: secs(f.excluded_ms as f64),
            outages: f.outages.len(),
            longest_outage_seconds: secs(f.longest_outage_ms() as f64),
            mtbf_seconds: f.mtbf_ms().map(secs),
        }
    }
}

#[derive(Debug, Serialize)]
struct BudgetView {
    allowed_seconds: f64,
    consumed_seconds: f64,
    remaining_seconds: f64,
    /// 1 untouched, 0 spent, below 0 overspent.
    remaining_ratio: Option<f64>,
}

#[derive(Debug, Serialize)]
struct PeriodView {
    window: String,
    from: Option<String>,
    from_ms: i64,
    to: Option<String>,
    to_ms: i64,
    /// Measured up to here (now, inside a calendar period).
    measured_to_ms: i64,
    contractual: FiguresView,
    experienced: FiguresView,
    error_budget: BudgetView,
    /// Check executions (`sla::occurrences`): the share that passed, next to the time-based figures.
    occurrences: OccurrencesView,
}

#[derive(Debug, Serialize)]
struct OccurrencesView {
    ok: u64,
    total: u64,
    ratio: Option<f64>,
    /// The whole UTC days counted.
    from: Option<String>,
    from_ms: i64,
    to: Option<String>,
    to_ms: i64,
}

impl PeriodView {
    fn new(window: String, r: &Report) -> PeriodView {
        PeriodView {
            window,
            from: format_rfc3339_ms(r.period.start),
            from_ms: r.period.start,
            to: format_rfc3339_ms(r.period.end),
            to_ms: r.period.end,
            measured_to_ms: r.measured.end,
            contractual: FiguresView::new(&r.contractual),
            experienced: FiguresView::new(&r.experienced),
            error_budget: BudgetView {
                allowed_seconds: secs(r.budget_ms),
                consumed_seconds: secs(r.contractual.down_ms),
                remaining_seconds: secs(r.budget_remaining_ms),
                remaining_ratio: r.budget_remaining_ratio(),
            },
            occurrences: OccurrencesView {
                ok: r.occurrences.ok,
                total: r.occurrences.total,
                ratio: r.occurrences.ratio(),
                from: format_rfc3339_ms(r.occurrences.days.start),
                from_ms: r.occurrences.days.start,
                to: format_rfc3339_ms(r.occurrences.days.end),
                to_ms: r.occurrences.days.end,
            },
        }
    }
}

#[derive(Debug, Serialize)]
struct SlaView {
    name: String,
    target: f64,
    window: String,
    timezone: String,
    down_when: Vec<String>,
    degraded_when: Vec<serde_json::Value>,
    quorum: Option<u32>,
    schedule: Option<serde_json::Value>,
    scope: crate::incidents::scope::ScopeJson,
    service: Option<String>,
    alerts: bool,
    /// `{P1: {response_seconds, resolution_seconds}, …}` when the SLA sets incident targets.
    incident_targets: Option<serde_json::Value>,
    /// `config` or `api`.
    origin: &'static str,
    current: PeriodView,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    windows: Vec<PeriodView>,
}

fn describe(
    sla: &Sla,
    origin: &'static str,
    current: PeriodView,
    windows: Vec<PeriodView>,
) -> SlaView {
    const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];
    let hhmm = |m: u16| format!("{:02}:{:02}", m / 60, m % 60);
    SlaView {
        name: sla.name.clone(),
        target: sla.target,
        window: sla.window.to_string(),
        timezone: sla.timezone.iana_name().unwrap_or("UTC").to_string(),
        down_when: sla.down_when.iter().map(ToString::to_string).collect(),
        degraded_when: sla
            .degraded_when
            .iter()
            .map(|(c, w)| serde_json::json!({"when": c.to_string(), "weight": w}))
            .collect(),
        quorum: match sla.combine {
            sla::Combine::All => None,
            sla::Combine::Quorum(n) => Some(n),
        },
        schedule: sla.schedule.as_ref().map(|s| {
            serde_json::json!({
                "days": DAYS.iter().zip(s.days).filter(|(_, on)| *on).map(|(d, _)| *d).collect::<Vec<_>>(),
                "hours": format!("{}-{}", hhmm(s.start_min), hhmm(s.end_min)),
                "holidays": s.holidays.iter().map(ToString::to_string).collect::<Vec<_>>(),
            })
        }),
        scope: crate::incidents::scope::ScopeJson::from_scope(&sla.scope),
        service: sla.service.clone(),
        alerts: sla.alerts,
        incident_targets: sla.incident_targets.map(|t| {
            serde_json::Value::Object(
                (0..5)
                    .map(|p| {
                        (
                            format!("P{}", p + 1),
                            serde_json::json!({
                                "response_seconds": t.response_ms[p] / 1000,
                                "resolution_seconds": t.resolution_ms[p] / 1000,
                            }),
                        )
                    })
                    .collect(),
            )
        }),
        origin,
        current,
        windows,
    }
}

fn origin(state: &HttpState, name: &str) -> &'static str {
    if state.incidents.slas.is_configured(name) {
        "config"
    } else {
        "api"
    }
}

fn find(state: &HttpState, name: &str) -> Result<Sla, ApiError> {
    state
        .incidents
        .slas
        .all()
        .iter()
        .find(|s| s.name == name)
        .cloned()
        .ok_or_else(|| ApiError::NotFound(format!("no SLA named {name:?}")))
}

fn window_span(window: SlaWindow, sla: &Sla, now: i64) -> Result<Span, ApiError> {
    sla::calendar::period(window, now, &sla.timezone)
        .ok_or_else(|| ApiError::BadRequest("the window is out of the representable range".into()))
}

async fn list(auth: Auth, State(state): State<HttpState>) -> Result<Json<Vec<SlaView>>, ApiError> {
    auth.require(Role::Viewer)?;
    let slas: Arc<Vec<Sla>> = state.incidents.slas.all();
    let origins: Vec<&'static str> = slas.iter().map(|s| origin(&state, &s.name)).collect();
    let now = now_ms();
    let views = state
        .db
        .run(move |db| {
            let mut out = Vec::with_capacity(slas.len());
            for (s, origin) in slas.iter().zip(origins) {
                let Some(span) = sla::calendar::period(s.window, now, &s.timezone) else {
                    continue;
                };
                let r = sla::report(db.conn(), s, span, now)?;
                out.push(describe(
                    s,
                    origin,
                    PeriodView::new(s.window.to_string(), &r),
                    Vec::new(),
                ));
            }
            Ok(out)
        })
        .await?;
    Ok(Json(views))
}

async fn one(
    auth: Auth,
    State(state): State<HttpState>,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<SlaView>, ApiError> {
    auth.require(Role::Viewer)?;
    let s = find(&state, &name)?;
    let from = origin(&state, &name);
    let now = now_ms();
    let own = window_span(s.window, &s, now)?;
    let extra: Vec<(String, Span)> = EXTRA_WINDOWS
        .iter()
        .map(|&secs| {
            let w = SlaWindow::Rolling(Duration::from_secs(secs));
            window_span(w, &s, now).map(|span| (w.to_string(), span))
        })
        .collect::<Result<_, _>>()?;
    let view = state
        .db
        .run(move |db| {
            // One read of the store for the SLA's window and the extra ones.
            let mut periods = vec![own];
            periods.extend(extra.iter().map(|(_, span)| *span));
            let mut all = sla::reports(db.conn(), &s, &periods, now)?.into_iter();
            let current = PeriodView::new(
                s.window.to_string(),
                &all.next().expect("one report per period"),
            );
            let windows = extra
                .into_iter()
                .zip(all)
                .map(|((label, _), r)| PeriodView::new(label, &r))
                .collect();
            Ok(describe(&s, from, current, windows))
        })
        .await?;
    Ok(Json(view))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReportQuery {
    from: Option<String>,
    to: Option<String>,
    format: Option<String>,
}

#[derive(Debug, Serialize)]
struct OutageView {
    start: Option<String>,
    start_ms: i64,
    end: Option<String>,
    end_ms: i64,
    duration_seconds: f64,
    incidents: Vec<i64>,
}

#[derive(Debug, Serialize)]
struct DayView {
    date: String,
    contractual: Option<f64>,
    experienced: Option<f64>,
    contractual_down_seconds: f64,
    experienced_down_seconds: f64,
    unknown_seconds: f64,
    coverage: Option<f64>,
}

#[derive(Debug, Serialize)]
struct ReportView {
    sla: String,
    target: f64,
    #[serde(flatten)]
    period: PeriodView,
    /// Contractual outages (within the schedule, maintenance excluded).
    outages: Vec<OutageView>,
    /// Every outage as the customer saw it.
    experienced_outages: Vec<OutageView>,
    daily: Vec<DayView>,
}

fn outages(f: &Figures) -> Vec<OutageView> {
    f.outages
        .iter()
        .map(|o| OutageView {
            start: format_rfc3339_ms(o.span.start),
            start_ms: o.span.start,
            end: format_rfc3339_ms(o.span.end),
            end_ms: o.span.end,
            duration_seconds: secs(o.span.len() as f64),
            incidents: o.incidents.clone(),
        })
        .collect()
}

fn day_view(d: &Day) -> DayView {
    DayView {
        date: d.date.to_string(),
        contractual: d.contractual.availability,
        experienced: d.experienced.availability,
        contractual_down_seconds: secs(d.contractual.down_ms),
        experienced_down_seconds: secs(d.experienced.down_ms),
        unknown_seconds: secs(d.experienced.unknown_ms as f64),
        coverage: d.contractual.coverage,
    }
}

async fn report(
    auth: Auth,
    State(state): State<HttpState>,
    ApiPath(name): ApiPath<String>,
    headers: HeaderMap,
    ApiQuery(q): ApiQuery<ReportQuery>,
) -> Result<Response, ApiError> {
    auth.require(Role::Viewer)?;
    let s = find(&state, &name)?;
    let now = now_ms();
    let csv = match q.format.as_deref() {
        Some("csv") => true,
        Some("json") => false,
        Some(other) => {
            return Err(ApiError::BadRequest(format!(
                "invalid format {other:?}: expected \"json\" or \"csv\""
            )))
        }
        None => headers
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|a| a.contains("text/csv")),
    };
    let bad = ApiError::BadRequest;
    let own = window_span(s.window, &s, now)?;
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
    let period = Span::new(from.unwrap_or(own.start), to.unwrap_or(own.end));
    if period.is_empty() {
        return Err(ApiError::BadRequest("`from` must be before `to`".into()));
    }
    let max_ms = sla::MAX_DAYS as i64 * 86_400_000;
    if period.len() > max_ms {
        return Err(ApiError::BadRequest(format!(
            "a report covers at most {} days",
            sla::MAX_DAYS
        )));
    }
    let label = match (from, to) {
        (None, None) => s.window.to_string(),
        _ => "custom".to_string(),
    };
    let (r, days) = state
        .db
        .run({
            let s = s.clone();
            move |db| Ok(sla::report_with_days(db.conn(), &s, period, now)?)
        })
        .await?;
    let daily: Vec<DayView> = days.iter().map(day_view).collect();
    if csv {
        let mut out = String::from(
            "date,contractual_availability,experienced_availability,contractual_down_seconds,\
             experienced_down_seconds,unknown_seconds,coverage\n",
        );
        let opt = |v: Option<f64>| v.map(|x| x.to_string()).unwrap_or_default();
        for d in &daily {
            out.push_str(&format!(
                "{},{},{},{},{},{},{}\n",
                d.date,
                opt(d.contractual),
                opt(d.experienced),
                d.contractual_down_seconds,
                d.experienced_down_seconds,
                d.unknown_seconds,
                opt(d.coverage)
            ));
        }
        return Ok(([(header::CONTENT_TYPE, "text/csv; charset=utf-8")], out).into_response());
    }
    Ok(Json(ReportView {
        sla: s.name.clone(),
        target: s.target,
        outages: outages(&r.contractual),
        experienced_outages: outages(&r.experienced),
        period: PeriodView::new(label, &r),
        daily,
    })
    .into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct KpiQuery {
    from: Option<String>,
    to: Option<String>,
    by: Option<String>,
}

#[derive(Debug, Serialize)]
struct KpiView {
    key: String,
    incidents: u64,
    acknowledged: u64,
    resolved: u64,
    reopened: u64,
    mtta_seconds: Option<f64>,
    mttr_seconds: Option<f64>,
    mtbf_seconds: Option<f64>,
    responded_within_target: Option<f64>,
    resolved_within_target: Option<f64>,
    response_breaches: u64,
    resolution_breaches: u64,
    reopened_ratio: Option<f64>,
    backlog: std::collections::BTreeMap<&'static str, u64>,
}

#[derive(Debug, Serialize)]
struct KpisView {
    from: Option<String>,
    from_ms: i64,
    to: Option<String>,
    to_ms: i64,
    by: String,
    groups: Vec<KpiView>,
}

/// Default period of `GET /kpis`: the last 30 days.
const KPI_DEFAULT_MS: i64 = 30 * 86_400_000;

async fn kpis(
    auth: Auth,
    State(state): State<HttpState>,
    ApiQuery(q): ApiQuery<KpiQuery>,
) -> Result<Json<KpisView>, ApiError> {
    auth.require(Role::Viewer)?;
    let bad = ApiError::BadRequest;
    let by_label = q.by.clone().unwrap_or_else(|| "all".into());
    let by = sla::kpis::By::parse(&by_label).map_err(bad)?;
    let now = now_ms();
    let to =
        q.to.as_deref()
            .map(parse_time_ms)
            .transpose()
            .map_err(bad)?;
    let from = q
        .from
        .as_deref()
        .map(parse_time_ms)
        .transpose()
        .map_err(bad)?;
    let to = to.unwrap_or(now);
    let from = from.unwrap_or(to.saturating_sub(KPI_DEFAULT_MS));
    let period = Span::new(from, to);
    if period.is_empty() {
        return Err(bad("`from` must be before `to`".into()));
    }
    if period.len() > sla::MAX_DAYS as i64 * 86_400_000 {
        return Err(bad(format!("KPIs cover at most {} days", sla::MAX_DAYS)));
    }
    let slas = state.incidents.slas.all();
    let groups = state
        .db
        .run(move |db| Ok(sla::kpis::kpis(db.conn(), period, by, &slas)?))
        .await?;
    let s = |ms: Option<f64>| ms.map(|v| v / 1000.0);
    Ok(Json(KpisView {
        from: format_rfc3339_ms(from),
        from_ms: from,
        to: format_rfc3339_ms(to),
        to_ms: to,
        by: by_label,
        groups: groups
            .into_iter()
            .map(|k| KpiView {
                backlog: sla::kpis::BACKLOG_BUCKETS
                    .iter()
                    .zip(k.backlog)
                    .map(|(&(name, _), n)| (name, n))
                    .collect(),
                key: k.key,
                incidents: k.incidents,
                acknowledged: k.acknowledged,
                resolved: k.resolved,
                reopened: k.reopened,
                mtta_seconds: s(k.mtta_ms),
                mttr_seconds: s(k.mttr_ms),
                mtbf_seconds: s(k.mtbf_ms),
                responded_within_target: k.responded_within_target,
                resolved_within_target: k.resolved_within_target,
                response_breaches: k.response_breaches,
                resolution_breaches: k.resolution_breaches,
                reopened_ratio: k.reopened_ratio,
            })
            .collect(),
    }))
}

/// Checks an SLA body as the configuration checks `[[sla]]` (422 with its messages).
fn checked(body: &serde_json::Value) -> Result<Sla, ApiError> {
    sla::api::sla_from_json(body).map_err(|errors| ApiError::Unprocessable(errors.join("; ")))
}

/// Reloads the SLAs in force and tells the engine (due times, alerts of deleted SLAs).
async fn reload(state: &HttpState) -> Result<(), ApiError> {
    let set = state.incidents.slas.clone();
    let all = state.db.run(move |db| Ok(set.reload(db.conn())?)).await?;
    state
        .tell_engine(crate::incidents::engine::Input::SlasChanged(all))
        .await;
    Ok(())
}

async fn one_view(state: &HttpState, name: &str) -> Result<SlaView, ApiError> {
    let s = find(state, name)?;
    let from = origin(state, name);
    let now = now_ms();
    let span = window_span(s.window, &s, now)?;
    let view = state
        .db
        .run(move |db| {
            let r = sla::report(db.conn(), &s, span, now)?;
            Ok(describe(
                &s,
                from,
                PeriodView::new(s.window.to_string(), &r),
                Vec::new(),
            ))
        })
        .await?;
    Ok(view)
}

async fn create(
    auth: Auth,
    State(state): State<HttpState>,
    body: Result<ApiJson<serde_json::Value>, ApiError>,
) -> Result<Response, ApiError> {
    auth.require(Role::Admin)?;
    let ApiJson(body) = body?;
    let s = checked(&body)?;
    let name = s.name.clone();
    if state.incidents.slas.is_configured(&name) {
        return Err(ApiError::Conflict(format!(
            "SLA {name:?} is defined in the configuration"
        )));
    }
    let by = auth.by();
    let now = now_ms();
    let created = state
        .db
        .run(move |db| Ok(sla::api::create(db.conn(), &s, &body, &by, now)?))
        .await?;
    if !created {
        return Err(ApiError::Conflict(format!("SLA {name:?} exists")));
    }
    reload(&state).await?;
    let view = one_view(&state, &name).await?;
    Ok((StatusCode::CREATED, Json(view)).into_response())
}

async fn change(
    auth: Auth,
    State(state): State<HttpState>,
    ApiPath(name): ApiPath<String>,
    body: Result<ApiJson<serde_json::Value>, ApiError>,
) -> Result<Json<SlaView>, ApiError> {
    auth.require(Role::Admin)?;
    let ApiJson(body) = body?;
    if state.incidents.slas.is_configured(&name) {
        return Err(ApiError::Conflict(format!(
            "SLA {name:?} is defined in the configuration; change it there"
        )));
    }
    let s = checked(&body)?;
    if s.name != name {
        return Err(ApiError::Unprocessable(format!(
            "the body's name {:?} is not the SLA's {name:?} (an SLA is renamed by deleting it and creating another)",
            s.name
        )));
    }
    let by = auth.by();
    let now = now_ms();
    let n = name.clone();
    let replaced = state
        .db
        .run(move |db| Ok(sla::api::replace(db.conn(), &n, &body, &by, now)?))
        .await?;
    if !replaced {
        return Err(ApiError::NotFound(format!("no SLA named {name:?}")));
    }
    reload(&state).await?;
    Ok(Json(one_view(&state, &name).await?))
}

async fn remove(
    auth: Auth,
    State(state): State<HttpState>,
    ApiPath(name): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    auth.require(Role::Admin)?;
    if state.incidents.slas.is_configured(&name) {
        return Err(ApiError::Conflict(format!(
            "SLA {name:?} is defined in the configuration; remove it there"
        )));
    }
    let n = name.clone();
    let deleted = state
        .db
        .run(move |db| Ok(sla::api::delete(db.conn(), &n)?))
        .await?;
    if !deleted {
        return Err(ApiError::NotFound(format!("no SLA named {name:?}")));
    }
    reload(&state).await?;
    Ok(StatusCode::NO_CONTENT)
}
