//! vigil-agent: samples host metrics and local checks, spools batches on disk and streams them
//! to the collector over QUIC with mutual TLS.

pub mod checks;
pub mod client;
pub mod config;
pub mod discovery;
pub mod embedded;
pub mod inventory_sync;
pub mod run;
pub mod sampler;
pub mod simulate;
pub mod spool;
