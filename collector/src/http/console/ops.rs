//! The operators' configuration pages: maintenance windows at `/maintenance`, rules at `/rules`.

use axum::Router;

use crate::http::HttpState;

pub(super) fn routes() -> Router<HttpState> {
    Router::new()
}
