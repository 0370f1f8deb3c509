//! Rules under `/api/v1`: the rules in force (built-in, configured, API-made) for viewers; API
//! rules created and deleted by admins, checked exactly like `[[rule]]`. Deleting an API rule
//! resolves its incidents (`rule_deleted`); the engine hears of every change at once.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{delete, get};
use axum::{Json, Router};
use serde::Serialize;
use serde_json::Value;

use super::{now_ms, ApiError, ApiJson, ApiPath, Auth, HttpState};
use crate::incidents::engine::Input;
use crate::incidents::rule::{Rule, Threshold};
use crate::incidents::scope::ScopeJson;
use crate::store::Role;

pub(super) fn routes() -> Router<HttpState> {
    Router::new()
        .route("/rules", get(rules).post(create_rule))
        .route("/rules/{name}", delete(delete_rule))
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
    body: Result<ApiJson<Value>, ApiError>,
) -> Result<impl IntoResponse, ApiError> {
    // The role first: a viewer gets 403 whatever the body.
    auth.require(Role::Admin)?;
    let ApiJson(body) = body?;
    let rule = crate::incidents::rule::rule_from_json(&body)
        .map_err(|errors| ApiError::Unprocessable(errors.join("; ")))?;
    if state.incidents.rules.iter().any(|r| r.name == rule.name) {
        return Err(ApiError::Conflict(format!(
            "rule {:?} is defined in the configuration",
            rule.name
        )));
    }
    let by = auth.by();
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
    state.tell_engine(Input::RulesChanged).await;
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
    state.tell_engine(Input::RulesChanged).await;
    Ok(StatusCode::NO_CONTENT)
}
