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

mod admin;
mod board;
mod cmdb;
mod incident;
mod ops;
mod sla;

use axum::http::{header, HeaderMap};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::Router;

use super::HttpState;
use crate::store::users::Session;

const CSS: &str = include_str!("../../../assets/console.css");
const JS: &str = include_str!("../../../assets/console.js");
/// The longest filter value kept from a URL.
const MAX_FILTER: usize = 200;

/// Every page and asset of the console. Each area keeps its routes, templates
/// (`collector/templates/<area>_*.html`) and any assets of its own
/// (`collector/assets/<area>.{css,js}`) to itself.
pub(super) fn routes() -> Router<HttpState> {
    Router::new()
        .route("/assets/console.css", get(|| asset(CSS, "text/css")))
        .route("/assets/console.js", get(|| asset(JS, "text/javascript")))
        .merge(board::routes())
        .merge(incident::routes())
        .merge(cmdb::routes())
        .merge(sla::routes())
        .merge(ops::routes())
        .merge(admin::routes())
}

/// The key/value pairs of a page's query string (`form_urlencoded`); none for no query.
fn query_pairs(raw: Option<&str>) -> Vec<(String, String)> {
    raw.map_or_else(Vec::new, |r| super::session::form_urlencoded(r.as_bytes()))
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

fn bounded(v: Option<String>) -> String {
    let v = v.unwrap_or_default();
    let t = v.trim();
    t.chars().take(MAX_FILTER).collect()
}

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
