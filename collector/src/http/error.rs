//! The one error type of the JSON API and the extractors that produce it.
//!
//! Every API failure answers `{"error": "...", "code": "..."}` with a fitting status. An internal
//! failure is logged here with its detail and answered as a bare "internal error": a response
//! must never carry SQL, paths or other internals.

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::de::DeserializeOwned;

use crate::store::{Role, StoreError};

/// An API failure. `code` strings are part of the API: clients may match on them.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400: the request cannot be parsed.
    #[error("{0}")]
    BadRequest(String),
    /// 401: no usable bearer token.
    #[error("{0}")]
    Unauthorized(&'static str),
    /// 403: the token's role is too weak.
    #[error("this needs the {needed} role")]
    Forbidden { needed: Role },
    /// 403: a request made with a session cookie that changes state, without the session's
    /// CSRF token (or from another origin).
    #[error("missing or wrong CSRF token: send the session's token in X-CSRF-Token")]
    Csrf,
    /// 404
    #[error("{0}")]
    NotFound(String),
    /// 405
    #[error("method not allowed")]
    MethodNotAllowed,
    /// 409: the request conflicts with the current state (e.g. resolving a closed incident).
    #[error("{0}")]
    Conflict(String),
    /// 409: an incident action its state does not allow; the answer lists the allowed ones.
    #[error("{message}")]
    IllegalTransition {
        message: String,
        state: &'static str,
        allowed: Vec<&'static str>,
    },
    /// 413
    #[error("{0}")]
    PayloadTooLarge(String),
    /// 422: well-formed but semantically invalid.
    #[error("{0}")]
    Unprocessable(String),
    /// 429: too many requests of this kind are running; retry later (`Retry-After`).
    #[error("{0}")]
    TooManyRequests(String),
    /// 503: the store cannot take writes for now (disk full); retry once it can.
    #[error("{0}")]
    Unavailable(String),
    /// 500: the detail is logged, never sent.
    #[error("internal error")]
    Internal(String),
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden { .. } | ApiError::Csrf => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Conflict(_) | ApiError::IllegalTransition { .. } => StatusCode::CONFLICT,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::TooManyRequests(_) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            ApiError::BadRequest(_) => "bad_request",
            ApiError::Unauthorized(_) => "unauthorized",
            ApiError::Forbidden { .. } => "forbidden",
            ApiError::Csrf => "csrf",
            ApiError::NotFound(_) => "not_found",
            ApiError::MethodNotAllowed => "method_not_allowed",
            ApiError::Conflict(_) => "conflict",
            ApiError::IllegalTransition { .. } => "illegal_transition",
            ApiError::PayloadTooLarge(_) => "payload_too_large",
            ApiError::Unprocessable(_) => "unprocessable",
            ApiError::TooManyRequests(_) => "too_many_requests",
            ApiError::Unavailable(_) => "unavailable",
            ApiError::Internal(_) => "internal",
        }
    }

    /// 500 with `detail` logged; `detail` is never sent to the client.
    pub fn internal(detail: impl std::fmt::Display) -> ApiError {
        ApiError::Internal(detail.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let ApiError::Internal(detail) = &self {
            tracing::error!(error = %detail, "API request failed");
        }
        let mut body = serde_json::json!({ "error": self.to_string(), "code": self.code() });
        if let ApiError::IllegalTransition { state, allowed, .. } = &self {
            body["state"] = serde_json::json!(state);
            body["allowed"] = serde_json::json!(allowed);
        }
        let mut res = (self.status(), Json(body)).into_response();
        if matches!(self, ApiError::Unauthorized(_)) {
            res.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if matches!(
            self,
            ApiError::TooManyRequests(_) | ApiError::Unavailable(_)
        ) {
            res.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        res
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        if e.is_unavailable() {
            tracing::warn!(error = %e, "API request refused: the store cannot take writes");
            return ApiError::Unavailable(
                "the store cannot take writes for now (is the disk full?); retry later".into(),
            );
        }
        ApiError::internal(e)
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        match r.status() {
            StatusCode::PAYLOAD_TOO_LARGE => ApiError::PayloadTooLarge(r.body_text()),
            StatusCode::UNPROCESSABLE_ENTITY => ApiError::Unprocessable(r.body_text()),
            s if s.is_server_error() => ApiError::internal(r.body_text()),
            _ => ApiError::BadRequest(r.body_text()),
        }
    }
}

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> Self {
        ApiError::BadRequest(r.body_text())
    }
}

impl From<PathRejection> for ApiError {
    fn from(r: PathRejection) -> Self {
        if r.status().is_server_error() {
            ApiError::internal(r.body_text())
        } else {
            ApiError::BadRequest(r.body_text())
        }
    }
}

/// `axum::Json` whose rejections are [`ApiError`]s (JSON bodies, 400/413/422).
#[derive(Debug, Clone, Copy, Default)]
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;
    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let Json(v) = Json::<T>::from_request(req, state).await?;
        Ok(ApiJson(v))
    }
}

/// `axum::extract::Query` whose rejections are [`ApiError`]s.
#[derive(Debug, Clone, Copy, Default)]
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let axum::extract::Query(v) =
            axum::extract::Query::<T>::from_request_parts(parts, state).await?;
        Ok(ApiQuery(v))
    }
}

/// `axum::extract::Path` whose rejections are [`ApiError`]s.
#[derive(Debug, Clone, Copy, Default)]
pub struct ApiPath<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let axum::extract::Path(v) =
            axum::extract::Path::<T>::from_request_parts(parts, state).await?;
        Ok(ApiPath(v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    async fn check(err: ApiError, status: u16, code: &str, message: &str) {
        let res = err.into_response();
        assert_eq!(res.status().as_u16(), status);
        let body = res.into_body().collect().await.expect("body").to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(v, serde_json::json!({ "error": message, "code": code }));
    }

    #[tokio::test]
    async fn error_shapes() {
        check(
            ApiError::BadRequest("bad".into()),
            400,
            "bad_request",
            "bad",
        )
        .await;
        check(
            ApiError::Unauthorized("no token"),
            401,
            "unauthorized",
            "no token",
        )
        .await;
        let needed = Role::Admin;
        check(
            ApiError::Forbidden { needed },
            403,
            "forbidden",
            "this needs the admin role",
        )
        .await;
        check(ApiError::NotFound("nope".into()), 404, "not_found", "nope").await;
        check(
            ApiError::Conflict("closed".into()),
            409,
            "conflict",
            "closed",
        )
        .await;
        check(
            ApiError::PayloadTooLarge("big".into()),
            413,
            "payload_too_large",
            "big",
        )
        .await;
        check(
            ApiError::Unprocessable("x".into()),
            422,
            "unprocessable",
            "x",
        )
        .await;
        // Internals never leak.
        let secret = ApiError::internal("sqlite: no such table: /var/lib/vigil/vigil.db");
        check(secret, 500, "internal", "internal error").await;
        let store = ApiError::from(StoreError::WriterGone);
        check(store, 500, "internal", "internal error").await;
    }

    #[test]
    fn unauthorized_asks_for_bearer() {
        let res = ApiError::Unauthorized("x").into_response();
        assert_eq!(
            res.headers().get(header::WWW_AUTHENTICATE),
            Some(&HeaderValue::from_static("Bearer"))
        );
    }
}
