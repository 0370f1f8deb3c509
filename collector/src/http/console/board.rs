//! The incident board at `/`.

use askama::Template;
use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use super::{bounded, due_text, enc, html, query_pairs, session, span_text, Nav};
use crate::http::{now_ms, HttpState};
use crate::incidents::records::{self, Filter, Incident, State as IncState};
use crate::store::Role;

/// Incidents per page of the board.
const PAGE: u32 = 100;

pub(super) fn routes() -> Router<HttpState> {
    Router::new().route("/", get(board))
}

#[derive(Debug, Default)]
struct BoardQuery {
    state: Option<String>,
    priority: Option<String>,
    host: Option<String>,
    rule: Option<String>,
    q: Option<String>,
    page: Option<u32>,
}

impl BoardQuery {
    /// The board's parameters of a query string; others, and values that do not parse, are
    /// left out (a page falls back to its defaults rather than failing).
    fn parse(raw: Option<&str>) -> BoardQuery {
        let mut q = BoardQuery::default();
        let pairs = query_pairs(raw);
        for (k, v) in pairs {
            match k.as_str() {
                "state" => q.state = Some(v),
                "priority" => q.priority = Some(v),
                "host" => q.host = Some(v),
                "rule" => q.rule = Some(v),
                "q" => q.q = Some(v),
                "page" => q.page = v.parse().ok(),
                _ => {}
            }
        }
        q
    }
}

/// One incident of the board.
struct Row {
    id: i64,
    priority: u8,
    title: String,
    rule: String,
    state: &'static str,
    ci: String,
    host: String,
    started: String,
    age: String,
    flapping: bool,
    suppressed: Option<String>,
    assignee: Option<String>,
    response_due: String,
    response_breached: bool,
    resolution_due: String,
    resolution_breached: bool,
}

#[derive(Template)]
#[template(path = "board.html")]
struct Board {
    nav: Nav,
    rows: Vec<Row>,
    states: [(&'static str, &'static str); 6],
    state: String,
    priorities: [&'static str; 5],
    priority: String,
    host: String,
    rule: String,
    q: String,
    total: u64,
    hot: u64,
    can_act: bool,
    first: u64,
    last: u64,
    prev_url: Option<String>,
    next_url: Option<String>,
    live_url: String,
}

#[derive(Template)]
#[template(path = "board_rows.html")]
struct BoardRows {
    rows: Vec<Row>,
    can_act: bool,
}

fn row(i: Incident, now: i64) -> Row {
    let responded = i.acknowledged_ms.is_some() || !i.state.is_active();
    let resolved = !i.state.is_active();
    Row {
        id: i.id,
        priority: i.priority,
        title: i.title,
        rule: i.rule,
        state: i.state.as_str(),
        ci: format!("{}:{}", i.ci_type, i.ci_key),
        host: i.hostname.or(i.agent_id).unwrap_or_else(|| "-".into()),
        started: vigil_shared::time::format_rfc3339_ms(i.started_ms).unwrap_or_default(),
        age: span_text(now - i.started_ms),
        flapping: i.flapping,
        suppressed: i.suppressed.map(|reason| {
            match (reason.as_str(), i.parent_id, i.maintenance) {
                (_, _, Some(m)) => format!("maintenance: {m}"),
                (_, Some(p), None) => format!("suppressed under #{p}"),
                _ => "suppressed".into(),
            }
        }),
        assignee: i.assignee,
        response_due: due_text(i.response_due_ms, responded, now),
        response_breached: i.response_level >= 100,
        resolution_due: due_text(i.resolution_due_ms, resolved, now),
        resolution_breached: i.resolution_level >= 100,
    }
}

const STATES: [(&str, &str); 6] = [
    ("active", "open or acknowledged"),
    ("open", "open"),
    ("acknowledged", "acknowledged"),
    ("resolved", "resolved"),
    ("closed", "closed"),
    ("all", "any"),
];
const PRIORITIES: [&str; 5] = ["P1", "P2", "P3", "P4", "P5"];

/// `GET /`: the incident board. Filters are the URL's (`state`, `priority`, `host`, `rule`,
/// `q`, `page`), so that a view can be shared; unknown values fall back to the defaults
/// rather than failing the page.
async fn board(
    State(state): State<HttpState>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    let s = match session(&state, &headers).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let q = BoardQuery::parse(query.as_deref());
    let st = bounded(q.state);
    let st = if STATES.iter().any(|(v, _)| *v == st) {
        st
    } else {
        "active".to_owned()
    };
    let priority = bounded(q.priority).to_ascii_uppercase();
    let priority = if PRIORITIES.contains(&priority.as_str()) {
        priority
    } else {
        String::new()
    };
    let (host, rule, text) = (bounded(q.host), bounded(q.rule), bounded(q.q));
    let page = q.page.unwrap_or(0).min(10_000);
    let states = match st.as_str() {
        "active" => vec![IncState::Open, IncState::Acknowledged],
        "all" => Vec::new(),
        other => IncState::parse(other).into_iter().collect(),
    };
    let filter = Filter {
        states,
        priorities: priority
            .strip_prefix('P')
            .and_then(|p| p.parse::<u8>().ok())
            .into_iter()
            .collect(),
        host: (!host.is_empty()).then(|| host.clone()),
        rule: (!rule.is_empty()).then(|| rule.clone()),
        text: (!text.is_empty()).then(|| text.clone()),
        by_priority: true,
        limit: PAGE,
        offset: page.saturating_mul(PAGE),
        ..Filter::default()
    };
    let fetched = state
        .db
        .run(move |db| {
            let (items, total) = records::list(db.conn(), &filter)?;
            let hot = Filter {
                states: vec![IncState::Open],
                priorities: vec![1, 2],
                limit: 1,
                ..Filter::default()
            };
            let (_, hot) = records::list(db.conn(), &hot)?;
            Ok((items, total, hot))
        })
        .await;
    let (items, total, hot) = match fetched {
        Ok(x) => x,
        Err(e) => return crate::http::ApiError::from(e).into_response(),
    };
    let now = now_ms();
    let rows: Vec<Row> = items.into_iter().map(|i| row(i, now)).collect();
    let can_act = s.role >= Role::Operator;
    if headers
        .get("x-vigil-fragment")
        .is_some_and(|v| v.as_bytes() == b"rows")
    {
        let mut res = html(BoardRows { rows, can_act }.render());
        for (name, v) in [("x-vigil-hot", hot), ("x-vigil-total", total)] {
            if let Ok(v) = HeaderValue::from_str(&v.to_string()) {
                res.headers_mut().insert(name, v);
            }
        }
        return res;
    }
    let url = |page: u32| {
        let mut parts = vec![format!("state={}", enc(&st))];
        for (k, v) in [
            ("priority", &priority),
            ("host", &host),
            ("rule", &rule),
            ("q", &text),
        ] {
            if !v.is_empty() {
                parts.push(format!("{k}={}", enc(v)));
            }
        }
        if page > 0 {
            parts.push(format!("page={page}"));
        }
        format!("/?{}", parts.join("&"))
    };
    let first = u64::from(page) * u64::from(PAGE);
    let last = first + rows.len() as u64;
    let page_view = Board {
        nav: Nav::new(&s, "incidents"),
        states: STATES,
        priorities: PRIORITIES,
        prev_url: (page > 0).then(|| url(page - 1)),
        next_url: (last < total).then(|| url(page + 1)),
        live_url: url(page),
        first: if rows.is_empty() { 0 } else { first + 1 },
        last,
        rows,
        state: st.clone(),
        priority: priority.clone(),
        host: host.clone(),
        rule: rule.clone(),
        q: text.clone(),
        total,
        hot,
        can_act,
    };
    let mut res = html(page_view.render());
    if res.status() == StatusCode::OK {
        res.headers_mut()
            .insert(header::VARY, HeaderValue::from_static("X-Vigil-Fragment"));
    }
    res
}
