//! The administrators' pages: agents and enrollment at `/agents`, API tokens, users, the audit log.

use axum::Router;

use crate::http::HttpState;

pub(super) fn routes() -> Router<HttpState> {
    Router::new()
}
