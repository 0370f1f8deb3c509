//! vigil-runtime: the runtime helpers both binaries use, written once. `vigil-shared` stays free
//! of I/O and clock reads; what touches the operating system and is needed by the agent and the
//! collector alike lives here.
//!
//! - [`clock`]: the wall clock in Unix milliseconds, and an injectable [`clock::Clock`].
//! - [`fs`]: size-capped reads of text files, atomic writes with a file mode (0600 keys),
//!   private directories.
//! - [`logging`]: the `tracing` subscriber both binaries install (`--log-format`, `VIGIL_LOG`),
//!   and [`logging::LogEvery`] to rate-limit a repeated log line.
//! - [`signal`]: waiting for SIGINT or SIGTERM.
//! - [`failpoint`]: named faults that tests switch on in debug builds (`VIGIL_FAILPOINTS`).
//!
//! What it must never do: hold state beyond a process-wide `OnceLock`, or depend on either
//! binary's crate.

pub mod clock;
pub mod failpoint;
pub mod fs;
pub mod logging;
pub mod signal;
