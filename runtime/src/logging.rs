//! The `tracing` subscriber both binaries install: human-readable lines or JSON lines on stderr,
//! filtered by `VIGIL_LOG` (default `info,quinn=warn`). Colours only when stderr is a terminal,
//! so a log file or a journal never gets escape codes.

use std::io::IsTerminal;

/// `--log-format`: how log lines are written to stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// One human-readable line per event.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// The environment variable holding the log filter.
pub const FILTER_ENV: &str = "VIGIL_LOG";
/// The filter when `VIGIL_LOG` is not set.
pub const DEFAULT_FILTER: &str = "info,quinn=warn";

/// Installs the global subscriber (once per process; later calls do nothing).
pub fn init(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env(FILTER_ENV)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_FILTER));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}
