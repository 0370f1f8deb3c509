//! Waiting for the signals that ask a process to stop: SIGINT (Ctrl-C) and SIGTERM (a
//! supervisor's stop).
//!
//! [`listen`] installs the handlers at once: call it before announcing that the process is up,
//! so a stop requested right after the announcement is not taken by the default action (which
//! kills the process without a clean stop).

use tokio::signal::unix::{signal, Signal, SignalKind};

/// Installed SIGINT and SIGTERM handlers.
pub struct StopSignals {
    interrupt: Signal,
    terminate: Signal,
}

/// Installs the handlers (needs a running tokio runtime).
pub fn listen() -> std::io::Result<StopSignals> {
    Ok(StopSignals {
        interrupt: signal(SignalKind::interrupt())?,
        terminate: signal(SignalKind::terminate())?,
    })
}

impl StopSignals {
    /// Resolves at the next SIGINT or SIGTERM.
    pub async fn recv(&mut self) {
        tokio::select! {
            _ = self.interrupt.recv() => {}
            _ = self.terminate.recv() => {}
        }
    }
}
