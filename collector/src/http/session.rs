//! Console logins: `GET /login` (the form), `POST /login`, `POST /logout` and
//! `GET /api/v1/session` (who the cookie is, and its CSRF token for scripts).
//!
//! - The session cookie [`COOKIE`] is HttpOnly, SameSite=Strict, Path=/, `Secure` when the
//!   listener serves TLS, and lasts no longer than the session's absolute maximum.
//! - A request made with the cookie that changes state (POST, PUT, PATCH, DELETE) must carry
//!   the session's CSRF token (header `X-CSRF-Token`, or the form field `_csrf` of the
//!   console's forms), and an `Origin` header, if it has one, must be this host: else 403.
//!   Bearer-token requests need neither (no browser sends a bearer token by itself).
//! - Failed logins are limited per user name and per client address (a fixed window of
//!   [`LoginLimits::window`]): past the limit a login is refused with 429 and `Retry-After`
//!   before any password is checked. Every attempt is counted on `/metrics`
//!   (`vigil_http_logins_total{outcome}`) and written to the audit log.
//! - A wrong user name and a wrong password get the same answer in the same time.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::Json;
use prometheus::{IntCounterVec, Opts, Registry};
use serde::{Deserialize, Serialize};

use super::audit::{Actor, Peer};
use super::{now_ms, ApiError, Auth, HttpState};
use crate::store::users::{LoginRefusal, Session, SessionPolicy, MAX_PASSWORD, MAX_USER_NAME};

/// The session cookie's name.
pub const COOKIE: &str = "vigil_session";
/// The header a script sends the session's CSRF token in.
pub const CSRF_HEADER: &str = "x-csrf-token";
pub const HTTP_LOGINS_TOTAL: &str = "vigil_http_logins_total";
/// The largest login body read (a user name and a password, form or JSON).
const MAX_LOGIN_BODY: usize = 4096;

/// The outcomes of `vigil_http_logins_total`.
pub mod outcome {
    pub const SUCCESS: &str = "success";
    pub const BAD_CREDENTIALS: &str = "bad_credentials";
    pub const DISABLED: &str = "disabled";
    pub const LIMITED_USER: &str = "rate_limited_user";
    pub const LIMITED_ADDRESS: &str = "rate_limited_address";
    pub const MALFORMED: &str = "malformed";
    pub const ALL: [&str; 6] = [
        SUCCESS,
        BAD_CREDENTIALS,
        DISABLED,
        LIMITED_USER,
        LIMITED_ADDRESS,
        MALFORMED,
    ];
}

/// How many failed logins are allowed, per what, per how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoginLimits {
    pub per_user: u32,
    pub per_address: u32,
    pub window: Duration,
}

impl Default for LoginLimits {
    fn default() -> LoginLimits {
        LoginLimits {
            per_user: 5,
            per_address: 20,
            window: Duration::from_secs(15 * 60),
        }
    }
}

/// The most user names and addresses whose failures are remembered; past it the oldest
/// windows are forgotten (an attacker with many names only forgets its own failures sooner).
const MAX_TRACKED: usize = 10_000;

/// Failed logins per key in fixed windows: `key -> (window start, failures)`.
#[derive(Default)]
struct Failures(HashMap<String, (i64, u32)>);

impl Failures {
    /// Whether `key` is over `limit` now; the time left in its window if so.
    fn blocked(&self, key: &str, limit: u32, window_ms: i64, now_ms: i64) -> Option<i64> {
        let &(start, n) = self.0.get(key)?;
        let left = start.saturating_add(window_ms).saturating_sub(now_ms);
        (left > 0 && n >= limit).then_some(left)
    }

    fn fail(&mut self, key: &str, window_ms: i64, now_ms: i64) {
        if self.0.len() >= MAX_TRACKED && !self.0.contains_key(key) {
            self.0
                .retain(|_, (start, _)| start.saturating_add(window_ms) > now_ms);
            if self.0.len() >= MAX_TRACKED {
                if let Some(oldest) = self
                    .0
                    .iter()
                    .min_by_key(|(_, (start, _))| *start)
                    .map(|(k, _)| k.clone())
                {
                    self.0.remove(&oldest);
                }
            }
        }
        let e = self.0.entry(key.to_owned()).or_insert((now_ms, 0));
        if e.0.saturating_add(window_ms) <= now_ms {
            *e = (now_ms, 0);
        }
        e.1 = e.1.saturating_add(1);
    }
}

/// What the login endpoints share: the policy, the limiter and the counter.
pub struct Console {
    pub policy: SessionPolicy,
    pub limits: LoginLimits,
    /// The listener serves TLS: cookies get `Secure`.
    pub secure: bool,
    logins: IntCounterVec,
    users: Mutex<Failures>,
    addresses: Mutex<Failures>,
}

impl Console {
    pub fn new(
        registry: Option<&Registry>,
        policy: SessionPolicy,
        limits: LoginLimits,
        secure: bool,
    ) -> Result<Console, prometheus::Error> {
        let logins = IntCounterVec::new(
            Opts::new(
                HTTP_LOGINS_TOTAL,
                "Console login attempts by outcome (rate_limited_*: refused before any \
                 password was checked).",
            ),
            &["outcome"],
        )?;
        for o in outcome::ALL {
            logins.with_label_values(&[o]);
        }
        if let Some(r) = registry {
            r.register(Box::new(logins.clone()))?;
        }
        Ok(Console {
            policy,
            limits,
            secure,
            logins,
            users: Mutex::default(),
            addresses: Mutex::default(),
        })
    }

    fn count(&self, outcome: &str) {
        self.logins.with_label_values(&[outcome]).inc();
    }

    /// `Set-Cookie` for a new session.
    fn cookie(&self, value: &str) -> String {
        format!(
            "{COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{}",
            self.policy.max.as_secs(),
            if self.secure { "; Secure" } else { "" }
        )
    }

    /// `Set-Cookie` that removes the cookie.
    fn cleared(&self) -> String {
        format!(
            "{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0{}",
            if self.secure { "; Secure" } else { "" }
        )
    }
}

impl Default for Console {
    fn default() -> Console {
        // No registry: nothing can fail.
        Console::new(
            None,
            SessionPolicy::default(),
            LoginLimits::default(),
            false,
        )
        .unwrap_or_else(|e| unreachable!("an unregistered counter: {e}"))
    }
}

/// The value of the session cookie in a request's `Cookie` headers.
pub fn session_cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (name, value) = pair.trim().split_once('=')?;
            (name == COOKIE).then_some(value.trim())
        })
}

/// Whether a state-changing request made with a cookie may proceed: its `Origin`, if any, is
/// the host it was sent to, and it carries the session's CSRF token (`X-CSRF-Token`, or `form`
/// from the console's form field).
pub fn csrf_ok(headers: &HeaderMap, csrf: &str, form: Option<&str>) -> bool {
    if !same_origin(headers) {
        return false;
    }
    let sent = headers
        .get(CSRF_HEADER)
        .and_then(|v| v.to_str().ok())
        .or(form);
    sent.is_some_and(|t| vigil_shared::identity::constant_time_eq(t, csrf))
}

/// Whether the request's `Origin`, if it has one, is the host it was sent to.
fn same_origin(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return true;
    };
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    let origin_host = origin
        .to_str()
        .ok()
        .and_then(|o| o.split_once("://"))
        .map(|(_, rest)| rest.trim_end_matches('/'));
    host.is_some() && origin_host == host
}

/// A login: a user and password, or a pasted API token (`vgl_…`).
#[derive(Debug, Default, Deserialize)]
struct LoginBody {
    #[serde(default)]
    user: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    token: Option<String>,
}

impl LoginBody {
    /// The token of a token login (the form's empty field is none).
    fn token(&self) -> Option<&str> {
        self.token
            .as_deref()
            .map(str::trim)
            .filter(|t| !t.is_empty())
    }

    fn complete(self) -> Option<LoginBody> {
        (self.token().is_some() || !self.user.trim().is_empty()).then_some(self)
    }
}

/// `GET /login`: the form (the console's pages come with their own look later).
pub(super) async fn login_page() -> Response {
    let page = format!(
        concat!(
            "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">",
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">",
            "<title>Vigil: log in</title></head><body>\n<main>\n<h1>Vigil</h1>\n",
            "<form method=\"post\" action=\"/login\">\n",
            "<p><label for=\"user\">User</label> ",
            "<input id=\"user\" name=\"user\" autocomplete=\"username\" required maxlength=\"{}\"></p>\n",
            "<p><label for=\"password\">Password</label> ",
            "<input id=\"password\" name=\"password\" type=\"password\" ",
            "autocomplete=\"current-password\" required maxlength=\"{}\"></p>\n",
            "<p><button type=\"submit\">Log in</button></p>\n</form>\n",
            "<h2>Or with an API token</h2>\n",
            "<form method=\"post\" action=\"/login\">\n",
            "<p><label for=\"token\">API token</label> ",
            "<input id=\"token\" name=\"token\" type=\"password\" autocomplete=\"off\" ",
            "required maxlength=\"{}\" placeholder=\"vgl_…\"></p>\n",
            "<p><button type=\"submit\">Log in with the token</button></p>\n</form>\n",
            "</main>\n</body></html>\n"
        ),
        MAX_USER_NAME, MAX_PASSWORD, MAX_PASSWORD
    );
    (
        [
            (header::CACHE_CONTROL, "no-store"),
            (header::X_FRAME_OPTIONS, "DENY"),
        ],
        Html(page),
    )
        .into_response()
}

#[derive(Debug, Serialize)]
struct SessionView {
    user: String,
    role: String,
    csrf: String,
}

/// `POST /login` with a form (`user`, `password`: a redirect to the console, or the form
/// again with 401) or JSON (`{"user", "password"}`: the session as JSON, or a JSON error).
pub(super) async fn login(State(state): State<HttpState>, req: Request) -> Response {
    let console = state.console.clone();
    let json = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    let address: Option<IpAddr> = req.extensions().get::<Peer>().map(|p| p.0.ip());
    let actor = req.extensions().get::<Actor>().cloned();
    // No session yet, so no token: a login from another site's page is refused by origin.
    let origin_ok = same_origin(req.headers());
    let bytes = match axum::body::to_bytes(req.into_body(), MAX_LOGIN_BODY).await {
        Ok(b) => b,
        Err(_) => {
            console.count(outcome::MALFORMED);
            return ApiError::PayloadTooLarge(format!("a login is at most {MAX_LOGIN_BODY} bytes"))
                .into_response();
        }
    };
    let body: Option<LoginBody> = if json {
        serde_json::from_slice::<LoginBody>(&bytes)
            .ok()
            .and_then(LoginBody::complete)
    } else {
        login_form(&bytes)
    };
    let Some(body) = body.filter(|_| origin_ok) else {
        console.count(outcome::MALFORMED);
        return ApiError::BadRequest(
            "expected user and password (a form or JSON), from this origin".into(),
        )
        .into_response();
    };
    let token = body.token().map(str::to_owned);
    // A token login has no user to limit (its secret cannot be guessed); its address is.
    let user = if token.is_some() {
        String::new()
    } else {
        body.user.trim().to_owned()
    };
    if let Some(a) = &actor {
        if token.is_none() && user.len() <= MAX_USER_NAME {
            a.set_user(&user, None);
        }
    }
    let now = now_ms();
    let window_ms = i64::try_from(console.limits.window.as_millis()).unwrap_or(i64::MAX);
    let address_key = address.map(|a| a.to_string()).unwrap_or_default();
    let blocked = {
        let users = console.users.lock().unwrap_or_else(|p| p.into_inner());
        let addresses = console.addresses.lock().unwrap_or_else(|p| p.into_inner());
        let by_user = token.is_none();
        by_user
            .then(|| users.blocked(&user, console.limits.per_user, window_ms, now))
            .flatten()
            .map(|left| (outcome::LIMITED_USER, left))
            .or_else(|| {
                addresses
                    .blocked(&address_key, console.limits.per_address, window_ms, now)
                    .map(|left| (outcome::LIMITED_ADDRESS, left))
            })
    };
    if let Some((what, left_ms)) = blocked {
        console.count(what);
        let secs = (left_ms + 999) / 1000;
        let mut res =
            ApiError::TooManyRequests(format!("too many failed logins; try again in {secs} s"))
                .into_response();
        if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
            res.headers_mut().insert(header::RETRY_AFTER, v);
        }
        return res;
    }
    let (name, password) = (user.clone(), body.password);
    let remote = address.map(|a| a.to_string());
    let checked = state
        .db
        .run(move |db| {
            if let Some(token) = token {
                return match db.authenticate_api_token(&token, now_ms())? {
                    Some((id, role)) => db
                        .create_token_session(&id, role, remote.as_deref(), now_ms())
                        .map(Ok),
                    None => Ok(Err(LoginRefusal::BadCredentials)),
                };
            }
            match db.check_password(&name, &password)? {
                Ok(role) => db
                    .create_session(&name, role, remote.as_deref(), now_ms())
                    .map(Ok),
                Err(refusal) => Ok(Err(refusal)),
            }
        })
        .await;
    match checked {
        Err(e) => ApiError::from(e).into_response(),
        Ok(Err(refusal)) => {
            console.count(match refusal {
                LoginRefusal::BadCredentials => outcome::BAD_CREDENTIALS,
                LoginRefusal::Disabled => outcome::DISABLED,
            });
            if !user.is_empty() {
                console
                    .users
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .fail(&user, window_ms, now);
            }
            console
                .addresses
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .fail(&address_key, window_ms, now);
            // The same words whatever the reason.
            let err = ApiError::Unauthorized(
                "unknown user, wrong password, disabled user, or an unknown or revoked token",
            );
            if json {
                err.into_response()
            } else {
                let mut res = login_page().await;
                *res.status_mut() = StatusCode::UNAUTHORIZED;
                res
            }
        }
        Ok(Ok((session, cookie))) => {
            console.count(outcome::SUCCESS);
            if let Some(a) = &actor {
                if session.token_id.is_some() {
                    a.set_session(&session);
                } else {
                    a.set_user(&session.user, Some(session.role));
                }
            }
            let set = console.cookie(&cookie);
            let mut res = if json {
                Json(SessionView {
                    user: session.user,
                    role: session.role.to_string(),
                    csrf: session.csrf,
                })
                .into_response()
            } else {
                Redirect::to("/").into_response()
            };
            if let Ok(v) = HeaderValue::from_str(&set) {
                res.headers_mut().insert(header::SET_COOKIE, v);
            }
            res.headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            res
        }
    }
}

/// `user=..&password=..` (or `token=..`) of a form body.
fn login_form(bytes: &[u8]) -> Option<LoginBody> {
    let mut body = LoginBody::default();
    for (k, v) in form_urlencoded(bytes) {
        match k.as_str() {
            "user" => body.user = v,
            "password" => body.password = v,
            "token" => body.token = Some(v),
            _ => {}
        }
    }
    body.complete()
}

/// The pairs of an `application/x-www-form-urlencoded` body (`+` is a space, `%XX` a byte).
pub(super) fn form_urlencoded(bytes: &[u8]) -> Vec<(String, String)> {
    fn decode(s: &[u8]) -> String {
        let mut out = Vec::with_capacity(s.len());
        let mut i = 0;
        while i < s.len() {
            match s[i] {
                b'+' => out.push(b' '),
                b'%' if i + 2 < s.len() => {
                    let hex = std::str::from_utf8(&s[i + 1..i + 3]).ok();
                    match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                        Some(b) => {
                            out.push(b);
                            i += 2;
                        }
                        None => out.push(b'%'),
                    }
                }
                b => out.push(b),
            }
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    }
    bytes
        .split(|&b| b == b'&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.iter().position(|&b| b == b'=') {
            Some(eq) => (decode(&p[..eq]), decode(&p[eq + 1..])),
            None => (decode(p), String::new()),
        })
        .collect()
}

/// `POST /logout`: ends the cookie's session (with its CSRF token, as every state-changing
/// request made with a cookie) and clears the cookie.
pub(super) async fn logout(State(state): State<HttpState>, req: Request) -> Response {
    let headers = req.headers().clone();
    let actor = req.extensions().get::<Actor>().cloned();
    let bytes = axum::body::to_bytes(req.into_body(), MAX_LOGIN_BODY)
        .await
        .unwrap_or_default();
    let form = form_urlencoded(&bytes)
        .into_iter()
        .find(|(k, _)| k == "_csrf")
        .map(|(_, v)| v);
    let to_login = || {
        let mut res = Redirect::to("/login").into_response();
        if let Ok(v) = HeaderValue::from_str(&state.console.cleared()) {
            res.headers_mut().insert(header::SET_COOKIE, v);
        }
        res
    };
    let session = match from_cookie(&state, &headers).await {
        Ok(Some(s)) => s,
        Ok(None) => return to_login(),
        Err(e) => return e.into_response(),
    };
    if let Some(a) = &actor {
        a.set_session(&session);
    }
    if !csrf_ok(&headers, &session.csrf, form.as_deref()) {
        return ApiError::Csrf.into_response();
    }
    let id = session.id.clone();
    if let Err(e) = state.db.run(move |db| db.end_session(&id, now_ms())).await {
        return ApiError::from(e).into_response();
    }
    to_login()
}

/// The live session a request's cookie names: `None` without a cookie, or when its session
/// ended (logout, idle, maximum, password change, user disabled).
pub(super) async fn from_cookie(
    state: &HttpState,
    headers: &HeaderMap,
) -> Result<Option<Session>, ApiError> {
    let Some(cookie) = session_cookie(headers).map(str::to_owned) else {
        return Ok(None);
    };
    let policy = state.console.policy;
    Ok(state
        .db
        .run(move |db| db.authenticate_session(&cookie, policy, now_ms()))
        .await?)
}

/// `GET /api/v1/session`: who the caller is; for a session, its CSRF token (scripts of the
/// console send it back in `X-CSRF-Token`).
pub(super) async fn current(auth: Auth) -> Json<serde_json::Value> {
    Json(serde_json::json!({
        "user": auth.user,
        "token_id": if auth.user.is_none() { Some(auth.token_id.clone()) } else { None },
        "role": auth.role.as_str(),
        "csrf": auth.csrf,
    }))
}

#[derive(Debug, Serialize)]
pub(super) struct UserView {
    name: String,
    role: String,
    created: Option<String>,
    updated: Option<String>,
    disabled: Option<String>,
    last_login: Option<String>,
}

/// `GET /api/v1/users` (admin): the console users, never their hashes.
pub(super) async fn users(
    auth: Auth,
    State(state): State<HttpState>,
) -> Result<Json<Vec<UserView>>, ApiError> {
    auth.require(crate::store::Role::Admin)?;
    let rows = state.db.run(|db| db.list_users()).await?;
    let t = |ms: Option<i64>| ms.and_then(vigil_shared::time::format_rfc3339_ms);
    Ok(Json(
        rows.into_iter()
            .map(|u| UserView {
                name: u.name,
                role: u.role.to_string(),
                created: t(Some(u.created_ms)),
                updated: t(Some(u.updated_ms)),
                disabled: t(u.disabled_ms),
                last_login: t(u.last_login_ms),
            })
            .collect(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_block_past_the_limit_until_the_window_ends() {
        let mut f = Failures::default();
        let w = 60_000;
        for i in 0..3 {
            assert_eq!(f.blocked("u", 3, w, 1_000 + i), None);
            f.fail("u", w, 1_000 + i);
        }
        assert_eq!(f.blocked("u", 3, w, 2_000), Some(59_000));
        assert_eq!(f.blocked("other", 3, w, 2_000), None);
        assert_eq!(f.blocked("u", 3, w, 61_000), None, "the window ended");
        f.fail("u", w, 61_000);
        assert_eq!(f.blocked("u", 3, w, 61_001), None, "a new window");
        // Bounded: past MAX_TRACKED keys the oldest is forgotten.
        for i in 0..MAX_TRACKED + 5 {
            f.fail(&format!("k{i}"), w, 70_000 + i as i64);
        }
        assert!(f.0.len() <= MAX_TRACKED);
    }

    #[test]
    fn cookies_and_forms_are_parsed() {
        let mut h = HeaderMap::new();
        h.append(
            header::COOKIE,
            HeaderValue::from_static("a=1; vigil_session=vs1_x_y"),
        );
        assert_eq!(session_cookie(&h), Some("vs1_x_y"));
        assert_eq!(session_cookie(&HeaderMap::new()), None);
        let pairs = form_urlencoded(b"user=al%20ice&password=a+b%26c&x&bad=%zz%4");
        assert_eq!(
            pairs,
            vec![
                ("user".into(), "al ice".into()),
                ("password".into(), "a b&c".into()),
                ("x".into(), String::new()),
                ("bad".into(), "%zz%4".into()),
            ]
        );
    }

    #[test]
    fn csrf_needs_the_token_and_this_origin() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("127.0.0.1:8080"));
        assert!(!csrf_ok(&h, "tok", None));
        assert!(csrf_ok(&h, "tok", Some("tok")));
        assert!(!csrf_ok(&h, "tok", Some("tOk")));
        h.insert(CSRF_HEADER, HeaderValue::from_static("tok"));
        assert!(csrf_ok(&h, "tok", None));
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://127.0.0.1:8080"),
        );
        assert!(csrf_ok(&h, "tok", None));
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://evil.example"),
        );
        assert!(!csrf_ok(&h, "tok", None));
    }
}
