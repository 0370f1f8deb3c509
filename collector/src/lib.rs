//! vigil-collector: QUIC ingest with mutual TLS, SQLite store, latest-value table, HTTP API and
//! Prometheus /metrics.

pub mod admin;
pub mod app;
pub mod ca;
pub mod cmdb;
pub mod config;
pub mod http;
pub mod incidents;
pub mod latest;
pub mod metrics;
pub mod notify;
pub mod presence;
pub mod quickstart;
pub mod server;
pub mod sla;
pub mod store;
pub mod supervise;
