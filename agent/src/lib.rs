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

/// Whose process the agent runs in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Process {
    /// Its own (`vigil-agent run`): it tunes the allocator, handing freed memory back to the
    /// kernel after each discovery pass.
    Own,
    /// Another program's (the collector's quickstart, through [`embedded`]), whose
    /// allocator it leaves alone.
    Embedded,
}
