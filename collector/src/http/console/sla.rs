//! The service-level pages: `/slas`, an SLA at `/slas/{name}`, its printable report, the KPIs.

use axum::Router;

use crate::http::HttpState;

pub(super) fn routes() -> Router<HttpState> {
    Router::new()
}
