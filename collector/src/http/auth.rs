//! Authentication for the JSON API: a bearer token, or a console session's cookie.
//!
//! Put [`Auth`] in a handler's arguments, then call [`Auth::require`] with the weakest role the
//! endpoint accepts. A missing, malformed, unknown or revoked token (or an ended session) is a
//! 401 before the handler runs; a known token with too weak a role is a 403 from `require`. A
//! state-changing request made with a cookie and without the session's CSRF token is a 403
//! before the handler runs (`super::session`). The token text is never logged.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, Method};

use super::{now_ms, ApiError, HttpState};
use crate::store::Role;

/// An authenticated API caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Auth {
    /// The API token's id, or for a console session the session's id.
    pub token_id: String,
    pub role: Role,
    /// The console user, for a request made with a session cookie.
    pub user: Option<String>,
    /// The session's CSRF token (a session only).
    pub csrf: Option<String>,
}

impl Auth {
    /// A bearer token's caller.
    pub fn token(token_id: impl Into<String>, role: Role) -> Auth {
        Auth {
            token_id: token_id.into(),
            role,
            user: None,
            csrf: None,
        }
    }

    /// Who did it, for timelines and history: `user:<name>` or `api:<token id>`.
    pub fn by(&self) -> String {
        match &self.user {
            Some(u) => format!("user:{u}"),
            None => format!("api:{}", self.token_id),
        }
    }

    /// `Ok` if the caller's role is at least `needed`, else [`ApiError::Forbidden`].
    pub fn require(&self, needed: Role) -> Result<(), ApiError> {
        if self.role >= needed {
            Ok(())
        } else {
            Err(ApiError::Forbidden { needed })
        }
    }
}

const MALFORMED: &str = "malformed Authorization header: expected Bearer <token>";

/// The token in `Authorization: Bearer <token>` (scheme case-insensitive).
fn bearer(headers: &HeaderMap) -> Result<&str, ApiError> {
    let value = headers
        .get(header::AUTHORIZATION)
        .ok_or(ApiError::Unauthorized("missing bearer token"))?;
    let text = value
        .to_str()
        .map_err(|_| ApiError::Unauthorized(MALFORMED))?;
    match text.trim().split_once(' ') {
        Some((scheme, token))
            if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() =>
        {
            Ok(token.trim())
        }
        _ => Err(ApiError::Unauthorized(MALFORMED)),
    }
}

impl FromRequestParts<HttpState> for Auth {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &HttpState,
    ) -> Result<Self, Self::Rejection> {
        if parts.headers.get(header::AUTHORIZATION).is_none()
            && super::session::session_cookie(&parts.headers).is_some()
        {
            return from_session(parts, state).await;
        }
        let token = bearer(&parts.headers)?.to_owned();
        let found = state
            .db
            .run(move |db| db.authenticate_api_token(&token, now_ms()))
            .await?;
        match found {
            Some((token_id, role)) => {
                // A state-changing request: the audit log names who made it.
                if let Some(actor) = parts.extensions.get::<super::audit::Actor>() {
                    actor.set(&token_id, role);
                }
                Ok(Auth::token(token_id, role))
            }
            None => Err(ApiError::Unauthorized("unknown or revoked token")),
        }
    }
}

/// A request made with a session cookie: the session must be live, and a state-changing one
/// must carry its CSRF token in `X-CSRF-Token` (the API's bodies are JSON, so not a form field).
async fn from_session(parts: &Parts, state: &HttpState) -> Result<Auth, ApiError> {
    let session = super::session::from_cookie(state, &parts.headers)
        .await?
        .ok_or(ApiError::Unauthorized("the session ended: log in again"))?;
    let actor = parts.extensions.get::<super::audit::Actor>();
    if let Some(actor) = actor {
        actor.set_session(&session);
    }
    let changes = !matches!(parts.method, Method::GET | Method::HEAD | Method::OPTIONS);
    if changes && !super::session::csrf_ok(&parts.headers, &session.csrf, None) {
        return Err(ApiError::Csrf);
    }
    // A session opened with a pasted API token acts as that token, not as a user.
    let (token_id, user) = match session.token_id {
        Some(t) => (t, None),
        None => (session.id, Some(session.user)),
    };
    Ok(Auth {
        token_id,
        role: session.role,
        user,
        csrf: Some(session.csrf),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn check(header: Option<&str>, expected: Result<&str, &str>) {
        let mut headers = HeaderMap::new();
        if let Some(h) = header {
            headers.insert(
                header::AUTHORIZATION,
                HeaderValue::from_str(h).expect("header"),
            );
        }
        let got = bearer(&headers).map_err(|e| match e {
            ApiError::Unauthorized(m) => m,
            _ => "other",
        });
        let expected = expected.map_err(|m| match m {
            "missing" => "missing bearer token",
            _ => MALFORMED,
        });
        assert_eq!(got, expected, "{header:?}");
    }

    #[test]
    fn bearer_parsing() {
        check(None, Err("missing"));
        check(Some("Bearer vgl_a_b"), Ok("vgl_a_b"));
        check(Some("bearer  vgl_a_b "), Ok("vgl_a_b"));
        check(Some("Basic dXNlcjpwYXNz"), Err("malformed"));
        check(Some("Bearer"), Err("malformed"));
        check(Some("Bearer "), Err("malformed"));
        check(Some("vgl_a_b"), Err("malformed"));
    }

    #[test]
    fn require_orders_roles() {
        let auth = |role| Auth::token("t", role);
        assert!(auth(Role::Viewer).require(Role::Viewer).is_ok());
        assert!(auth(Role::Admin).require(Role::Operator).is_ok());
        assert!(matches!(
            auth(Role::Operator).require(Role::Admin),
            Err(ApiError::Forbidden {
                needed: Role::Admin
            })
        ));
        assert!(auth(Role::Viewer).require(Role::Operator).is_err());
    }
}
