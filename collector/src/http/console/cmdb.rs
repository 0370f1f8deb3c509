//! The CMDB pages: search at `/cmdb`, a CI at `/cmdb/{id}` with its dependency graph.

use axum::Router;

use crate::http::HttpState;

pub(super) fn routes() -> Router<HttpState> {
    Router::new()
}
