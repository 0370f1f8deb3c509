//! Vigil's shared crate: wire protocol types and codec, configuration helpers, TLS identity
//! helpers and pure state machines (retry backoff, spool bookkeeping).
//!
//! Nothing in this crate opens a socket, a file or reads the clock: callers pass bytes and `now`
//! and act on the returned decisions. That keeps all of it testable without I/O.

pub mod backoff;
pub mod codec;
pub mod config;
pub mod identity;
pub mod inventory;
pub mod metric_names;
pub mod proto;
pub mod time;
