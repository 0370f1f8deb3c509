//! The operations console: pages rendered on the server (askama templates in
//! `collector/templates/`, escaped by default) with a little JavaScript on top
//! (`collector/assets/console.js`), every asset embedded in the binary.
//!
//! Pages are for console users: without a live session cookie a page answers 303 to `/login`.
//! A page never changes state; actions go to the JSON API with the session's CSRF token, so
//! one set of handlers, checks and audit rows serves the console and scripts alike.
//!
//! Live updates poll (every 10 s the board asks its own URL for its rows, header
//! `X-Vigil-Fragment: rows`), rather than Server-Sent Events: a poll holds no connection open
//! against the listener's idle timeout and per-address cap, works through any proxy, and costs
//! one indexed query.

use askama::Template;
use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::Router;

use super::{now_ms, HttpState};
use crate::incidents::records::{self, Filter, Incident, State as IncState};
use crate::store::users::Session;
use crate::store::Role;

const CSS: &str = include_str!("../../assets/console.css");
const JS: &str = include_str!("../../assets/console.js");
/// Incidents per page of the board.
const PAGE: u32 = 100;
/// The longest filter value kept from a URL.
const MAX_FILTER: usize = 200;

pub(super) fn routes() -> Router<HttpState> {
    Router::new()
        .route("/", get(board))
        .route("/assets/console.css", get(|| asset(CSS, "text/css")))
        .route("/assets/console.js", get(|| asset(JS, "text/javascript")))
}

async fn asset(body: &'static str, content_type: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            // The URL carries the version: a new build is a new URL.
            (header::CACHE_CONTROL, "public, max-age=86400"),
        ],
        body,
    )
        .into_response()
}

/// What every page's header shows.
struct Nav {
    user: String,
    role: &'static str,
    csrf: String,
    active: &'static str,
    version: &'static str,
}

impl Nav {
    fn new(s: &Session, active: &'static str) -> Nav {
        Nav {
            user: s.user.clone(),
            role: s.role.as_str(),
            csrf: s.csrf.clone(),
            active,
            version: env!("CARGO_PKG_VERSION"),
        }
    }
}

/// The session of a page request, or the redirect to the login form.
async fn session(state: &HttpState, headers: &HeaderMap) -> Result<Session, Response> {
    match super::session::from_cookie(state, headers).await {
        Ok(Some(s)) => Ok(s),
        Ok(None) => Err(Redirect::to("/login").into_response()),
        Err(e) => Err(e.into_response()),
    }
}

fn html(page: Result<String, askama::Error>) -> Response {
    match page {
        Ok(body) => (
            [
                (header::CACHE_CONTROL, "no-store"),
                (header::X_FRAME_OPTIONS, "DENY"),
                (
                    header::CONTENT_SECURITY_POLICY,
                    "default-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
                ),
            ],
            Html(body),
        )
            .into_response(),
        Err(e) => super::ApiError::internal(format!("rendering a page: {e}")).into_response(),
    }
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
        let pairs = raw.map_or_else(Vec::new, |r| super::session::form_urlencoded(r.as_bytes()));
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

/// "3d 4h", "2h 5m", "12m", "40s".
fn span_text(ms: i64) -> String {
    let s = ms.max(0) / 1000;
    let (d, h, m) = (s / 86_400, s % 86_400 / 3600, s % 3600 / 60);
    match (d, h, m) {
        (1.., _, _) => format!("{d}d {h}h"),
        (0, 1.., _) => format!("{h}h {m}m"),
        (0, 0, 1..) => format!("{m}m"),
        _ => format!("{s}s"),
    }
}

/// A due time relative to now: "in 12m", "12m late", or "-" (none, or the clock is done).
fn due_text(due_ms: Option<i64>, done: bool, now: i64) -> String {
    match due_ms {
        Some(d) if !done && d >= now => format!("in {}", span_text(d - now)),
        Some(d) if !done => format!("{} late", span_text(now - d)),
        _ => "-".into(),
    }
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

fn bounded(v: Option<String>) -> String {
    let v = v.unwrap_or_default();
    let t = v.trim();
    t.chars().take(MAX_FILTER).collect()
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

/// A filter value in a URL's query (percent-encoded).
fn enc(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for b in v.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

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
        Err(e) => return super::ApiError::from(e).into_response(),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_read_as_an_operator_says_them() {
        assert_eq!(span_text(40_000), "40s");
        assert_eq!(span_text(12 * 60_000 + 5_000), "12m");
        assert_eq!(span_text(2 * 3_600_000 + 5 * 60_000), "2h 5m");
        assert_eq!(span_text(3 * 86_400_000 + 4 * 3_600_000), "3d 4h");
        assert_eq!(due_text(Some(1_000 + 600_000), false, 1_000), "in 10m");
        assert_eq!(due_text(Some(1_000), false, 1_000 + 120_000), "2m late");
        assert_eq!(due_text(Some(1_000), true, 5_000), "-");
        assert_eq!(due_text(None, false, 5_000), "-");
        assert_eq!(enc("a b&c=d/é"), "a%20b%26c%3Dd%2F%C3%A9");
    }
}
