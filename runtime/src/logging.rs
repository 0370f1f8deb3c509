//! The `tracing` subscriber both binaries install: human-readable lines or JSON lines on stderr,
//! filtered by `VIGIL_LOG` (default `info,quinn=warn`). Colours only when stderr is a terminal,
//! so a log file or a journal never gets escape codes; control characters in text lines are
//! escaped ([`EscapedLine`]), whoever chose them.

use std::io::{IsTerminal, Write};
use std::time::Duration;

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
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    let _ = match format {
        LogFormat::Text => {
            let ansi = std::io::stderr().is_terminal();
            builder
                .with_ansi(ansi)
                .with_writer(move || EscapedLine::new(ansi))
                .try_init()
        }
        // JSON escapes control characters itself.
        LogFormat::Json => builder.with_writer(std::io::stderr).json().try_init(),
    };
}

/// One text log line, written to stderr when dropped with its control characters escaped
/// (`\x1b`, `\x0a`, ...), so that a name or label an agent or a request chose can neither
/// forge log lines nor send escape sequences to a terminal. The line's own final newline
/// stays; with colours on (a terminal), ESC stays too (the colours are ours).
pub struct EscapedLine {
    buf: Vec<u8>,
    ansi: bool,
}

impl EscapedLine {
    pub fn new(ansi: bool) -> EscapedLine {
        EscapedLine {
            buf: Vec::with_capacity(256),
            ansi,
        }
    }

    /// The bytes as they go out.
    pub fn escaped(&self) -> Vec<u8> {
        let (body, end) = match self.buf.strip_suffix(b"\n") {
            Some(body) => (body, &b"\n"[..]),
            None => (&self.buf[..], &b""[..]),
        };
        let mut out = Vec::with_capacity(self.buf.len() + 8);
        for &b in body {
            let keep = b == b'\t' || (b == 0x1b && self.ansi) || (b >= 0x20 && b != 0x7f);
            if keep {
                out.push(b);
            } else {
                out.extend_from_slice(format!("\\x{b:02x}").as_bytes());
            }
        }
        out.extend_from_slice(end);
        out
    }
}

impl Write for EscapedLine {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for EscapedLine {
    fn drop(&mut self) {
        if !self.buf.is_empty() {
            let _ = std::io::stderr().write_all(&self.escaped());
        }
    }
}

/// Lets a repeated log line through at most once per `every`, counting what it held back.
pub struct LogEvery {
    every: Duration,
    last: Option<std::time::Instant>,
    skipped: u64,
}

impl LogEvery {
    pub fn new(every: Duration) -> LogEvery {
        LogEvery {
            every,
            last: None,
            skipped: 0,
        }
    }

    /// `Some(lines held back since the last one)` when this one may be logged.
    pub fn ready(&mut self) -> Option<u64> {
        let now = std::time::Instant::now();
        if self
            .last
            .is_some_and(|t| now.duration_since(t) < self.every)
        {
            self.skipped += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.skipped))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_in_a_line_are_escaped() {
        let mut line = EscapedLine::new(false);
        line.write_all(b"host=\"web\nWARN forged\x1b[31m\x07\" ok\ttab\n")
            .expect("write");
        assert_eq!(
            String::from_utf8(line.escaped()).expect("utf8"),
            "host=\"web\\x0aWARN forged\\x1b[31m\\x07\" ok\ttab\n"
        );
        line.buf.clear(); // nothing goes to stderr
        let mut coloured = EscapedLine::new(true);
        coloured
            .write_all(b"\x1b[2mtime\x1b[0m \r\n")
            .expect("write");
        assert_eq!(coloured.escaped(), b"\x1b[2mtime\x1b[0m \\x0d\n");
        coloured.buf.clear();
    }

    #[test]
    fn repeated_log_lines_are_let_through_once_per_period() {
        let mut every = LogEvery::new(Duration::from_secs(3600));
        assert_eq!(every.ready(), Some(0));
        assert_eq!(every.ready(), None);
        assert_eq!(every.ready(), None);
        let mut now = LogEvery::new(Duration::ZERO);
        assert_eq!(now.ready(), Some(0));
        assert_eq!(now.ready(), Some(0));
    }
}
