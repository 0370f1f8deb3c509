//! An incident's page at `/incidents/{id}`: everything the API has on it, and its actions.

use axum::Router;

use crate::http::HttpState;

pub(super) fn routes() -> Router<HttpState> {
    Router::new()
}
