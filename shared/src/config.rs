//! Configuration plumbing shared by the agent and the collector: TOML text -> raw serde structs
//! plus a [`Diagnostics`] collector, so that the typed conversion in each crate can report
//! **every** problem at once as `file:line:col: message`, before anything binds.
//!
//! The two layers:
//! 1. [`parse`] deserializes the text into a *raw* struct whose leaf values are
//!    [`Spanned`] (`Spanned<String>` for durations, sizes, addresses...), collecting every
//!    unknown key on the way;
//! 2. the crate's typed conversion reads the raw struct, parses the values with the helpers here
//!    ([`Diagnostics::duration`], ...), pushes an error with its position for each bad one and
//!    finishes with [`Diagnostics::finish`], which returns all errors sorted by position.
//!
//! Raw structs do **not** use `#[serde(deny_unknown_fields)]`: that attribute stops
//! deserialization at the first unknown key. Instead [`parse`] runs serde through
//! `serde_ignored`, which calls back for every key no struct field took; each one becomes an
//! `unknown key` error at the key's own line and column, and deserialization goes on.
//! A type error (a string where a number belongs) stops serde; [`parse`] records it, removes the
//! offending key from the parsed document and deserializes again, so that every type error is
//! reported together with the unknown keys and the value errors of the typed conversion (which
//! then sees the key as absent: [`Diagnostics::missing`] does not also call it missing). Only
//! syntax errors end the parse early.
//!
//! This module never does I/O (callers read files and pass `(file_name, text)`) and never reads
//! the clock.

use std::fmt;
use std::ops::Range;
use std::time::Duration;

use serde::de::DeserializeOwned;
use toml::de::{DeTable, DeValue};

/// A value with its byte range in the source text. Raw config structs wrap their leaves in it.
pub use toml::Spanned;

/// One configuration problem. `line` and `col` are 1-based (col counts characters); `line == 0`
/// means the problem has no position inside the file (the file cannot be read, for instance).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: String,
    pub line: usize,
    pub col: usize,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}: {}", self.file, self.message)
        } else {
            write!(
                f,
                "{}:{}:{}: {}",
                self.file, self.line, self.col, self.message
            )
        }
    }
}

impl std::error::Error for ConfigError {}

/// Every problem found in a configuration (never empty when returned as an error), one per line
/// when displayed.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl ConfigErrors {
    /// A single error without a position, e.g. "cannot read file".
    pub fn whole_file(file: &str, message: impl Into<String>) -> Self {
        ConfigErrors(vec![ConfigError {
            file: file.to_string(),
            line: 0,
            col: 0,
            message: message.into(),
        }])
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Collects errors for one source file while a raw config is turned into a typed one.
/// Errors of other files (included files) may be added with [`Diagnostics::extend`].
#[derive(Debug, Clone)]
pub struct Diagnostics {
    file: String,
    text: String,
    /// Byte offset of the start of each line.
    line_starts: Vec<usize>,
    errors: Vec<ConfigError>,
    /// Keys dropped because their value had the wrong type: (key, span of the table holding it).
    mistyped: Vec<(String, Range<usize>)>,
    /// Span of the whole document (the table top-level keys are in).
    root: Range<usize>,
}

impl Diagnostics {
    pub fn new(file: &str, text: &str) -> Self {
        let mut line_starts = vec![0];
        line_starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        Diagnostics {
            file: file.to_string(),
            text: text.to_string(),
            line_starts,
            errors: Vec::new(),
            mistyped: Vec::new(),
            root: 0..text.len(),
        }
    }

    /// The file name errors are reported under.
    pub fn file(&self) -> &str {
        &self.file
    }

    /// 1-based line and column (in characters) of a byte offset; offsets past the end clamp.
    pub fn position(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let line = self.line_starts.partition_point(|&s| s <= offset).max(1);
        let start = self.line_starts[line - 1];
        let col = self
            .text
            .get(start..offset)
            .map_or(offset - start, |s| s.chars().count());
        (line, col + 1)
    }

    /// `file:line:col` of the start of a span, for messages such as "first defined at ...".
    pub fn location(&self, span: Range<usize>) -> String {
        let (line, col) = self.position(span.start);
        format!("{}:{line}:{col}", self.file)
    }

    /// Records an error at the start of `span`.
    pub fn error(&mut self, span: Range<usize>, message: impl Into<String>) {
        let (line, col) = self.position(span.start);
        self.errors.push(ConfigError {
            file: self.file.clone(),
            line,
            col,
            message: message.into(),
        });
    }

    /// Records that the table at `table` lacks `key`, unless `key` was there with a value of the
    /// wrong type (that error is reported already; "missing" would only confuse).
    pub fn missing(&mut self, table: Range<usize>, key: &str, message: impl Into<String>) {
        if !self.mistyped(&table, key) {
            self.error(table, message);
        }
    }

    /// [`Diagnostics::missing`] for a top-level key: the error has no position.
    pub fn missing_top_level(&mut self, key: &str, message: impl Into<String>) {
        if !self.mistyped(&self.root.clone(), key) {
            self.file_error(message);
        }
    }

    /// Whether `key` of the table at `table` was dropped for a value of the wrong type.
    pub fn mistyped(&self, table: &Range<usize>, key: &str) -> bool {
        self.mistyped
            .iter()
            .any(|(k, span)| k == key && span == table)
    }

    /// Records an error at a spanned value.
    pub fn error_at<T>(&mut self, value: &Spanned<T>, message: impl Into<String>) {
        self.error(value.span(), message);
    }

    /// Records an error without a position in this file.
    pub fn file_error(&mut self, message: impl Into<String>) {
        self.errors.push(ConfigError {
            file: self.file.clone(),
            line: 0,
            col: 0,
            message: message.into(),
        });
    }

    /// Adds errors found elsewhere (an included file's, which carry their own file name).
    pub fn extend(&mut self, errors: impl IntoIterator<Item = ConfigError>) {
        self.errors.extend(errors);
    }

    pub fn has_errors(&self) -> bool {
        !self.errors.is_empty()
    }

    /// All errors recorded so far, sorted: this file first by position, then other files in the
    /// order they were first reported, each by position.
    pub fn into_errors(self) -> Vec<ConfigError> {
        let mut files: Vec<&str> = vec![&self.file];
        for e in &self.errors {
            if !files.contains(&e.file.as_str()) {
                files.push(&e.file);
            }
        }
        let rank = |file: &str| files.iter().position(|f| *f == file).unwrap_or(usize::MAX);
        let mut keyed: Vec<(usize, ConfigError)> = self
            .errors
            .iter()
            .map(|e| (rank(&e.file), e.clone()))
            .collect();
        keyed.sort_by_key(|(rank, e)| (*rank, e.line, e.col));
        keyed.into_iter().map(|(_, e)| e).collect()
    }

    /// `Ok(value)` when nothing was recorded, else every error, sorted.
    pub fn finish<T>(self, value: T) -> Result<T, ConfigErrors> {
        if self.errors.is_empty() {
            Ok(value)
        } else {
            Err(ConfigErrors(self.into_errors()))
        }
    }

    /// Runs `parser` on a spanned value; on failure records its message at the value.
    pub fn parse_value<T, U>(
        &mut self,
        value: &Spanned<T>,
        parser: impl FnOnce(&T) -> Result<U, String>,
    ) -> Option<U> {
        match parser(value.get_ref()) {
            Ok(v) => Some(v),
            Err(msg) => {
                self.error(value.span(), msg);
                None
            }
        }
    }

    /// A duration such as `"10s"` or `"5m"`.
    pub fn duration(&mut self, value: &Spanned<String>) -> Option<Duration> {
        self.parse_value(value, |s| parse_duration(s))
    }

    /// An optional duration with a default (also used after an error, which is recorded).
    pub fn duration_or(&mut self, value: Option<&Spanned<String>>, default: Duration) -> Duration {
        value.and_then(|v| self.duration(v)).unwrap_or(default)
    }

    /// A byte size such as `"64MiB"`.
    pub fn byte_size(&mut self, value: &Spanned<String>) -> Option<u64> {
        self.parse_value(value, |s| parse_byte_size(s))
    }

    /// An optional byte size with a default.
    pub fn byte_size_or(&mut self, value: Option<&Spanned<String>>, default: u64) -> u64 {
        value.and_then(|v| self.byte_size(v)).unwrap_or(default)
    }

    /// A socket address `ip:port` (names are not resolved here).
    pub fn socket_addr(&mut self, value: &Spanned<String>) -> Option<std::net::SocketAddr> {
        self.parse_value(value, |s| {
            s.trim().parse().map_err(|_| {
                format!("invalid address {s:?}: expected IP:PORT, e.g. \"127.0.0.1:8080\"")
            })
        })
    }

    /// An optional socket address with a default.
    pub fn socket_addr_or(
        &mut self,
        value: Option<&Spanned<String>>,
        default: std::net::SocketAddr,
    ) -> std::net::SocketAddr {
        value.and_then(|v| self.socket_addr(v)).unwrap_or(default)
    }

    /// Maps a TOML syntax or type error to this file's position.
    fn toml_error(&mut self, err: &toml::de::Error) {
        let message = err.message().trim().to_string();
        match err.span() {
            Some(span) => self.error(span, message),
            None => self.file_error(message),
        }
    }
}

/// Parses `text` (named `file` in messages) into the raw struct `T`, collecting every unknown
/// key. On success the returned [`Diagnostics`] may already hold unknown-key errors: keep
/// converting, then call [`Diagnostics::finish`]. Syntax and type errors end the parse and come
/// back as `Err` together with the unknown keys seen so far.
pub fn parse<T: DeserializeOwned>(
    file: &str,
    text: &str,
) -> Result<(T, Diagnostics), ConfigErrors> {
    parse_with_hint(file, text, None)
}

/// [`parse`], appending `unknown_key_hint` to every unknown-key message (e.g. "an included file
/// may hold only `rule`, `sla` and `maintenance`").
pub fn parse_with_hint<T: DeserializeOwned>(
    file: &str,
    text: &str,
    unknown_key_hint: Option<&str>,
) -> Result<(T, Diagnostics), ConfigErrors> {
    let mut diag = Diagnostics::new(file, text);
    let (table, syntax_errors) = DeTable::parse_recoverable(text);
    if !syntax_errors.is_empty() {
        for e in &syntax_errors {
            diag.toml_error(e);
        }
        return Err(ConfigErrors(diag.into_errors()));
    }

    let mut table = table;
    diag.root = table.span();
    let mut type_errors = Vec::new();
    loop {
        let mut unknown: Vec<Vec<Segment>> = Vec::new();
        let result: Result<T, toml::de::Error> =
            serde_ignored::deserialize(toml::Deserializer::from(table.clone()), |path| {
                unknown.push(segments(&path))
            });
        let removed = match &result {
            Err(e) if type_errors.len() < MAX_TYPE_ERRORS => e.span().and_then(|at| {
                let whole = table.span();
                remove_value_at(table.get_mut(), whole, &at)
            }),
            _ => None,
        };
        if let (Err(e), Some(removed)) = (&result, removed) {
            // Deserialize again without the offending key, to find the next problem.
            type_errors.push(e.clone());
            diag.mistyped.push(removed);
            continue;
        }
        for e in &type_errors {
            diag.toml_error(e);
        }
        for path in &unknown {
            let (span, message) = describe_unknown(&table, path);
            let message = match unknown_key_hint {
                Some(hint) => format!("{message} ({hint})"),
                None => message,
            };
            diag.error(span, message);
        }
        return match result {
            Ok(value) => Ok((value, diag)),
            Err(e) => {
                diag.toml_error(&e);
                Err(ConfigErrors(diag.into_errors()))
            }
        };
    }
}

/// Type errors reported from one file at most (each costs one more deserialization).
const MAX_TYPE_ERRORS: usize = 64;

/// Removes from `table` (whose own span is `table_span`) the key whose value lies at `at`, the
/// span of a type error, looking into tables and arrays of tables (a table's span is its
/// header's, not its keys', so the whole tree is searched). Returns the key and the span of the
/// table that held it, or `None` when no value of the document lies there.
fn remove_value_at(
    table: &mut DeTable<'_>,
    table_span: Range<usize>,
    at: &Range<usize>,
) -> Option<(String, Range<usize>)> {
    let hit = table
        .iter()
        .find(|(k, v)| v.span() == *at || k.span() == *at)
        .map(|(k, _)| k.clone());
    if let Some(key) = hit {
        table.remove(&key);
        return Some((key.get_ref().to_string(), table_span));
    }
    let mut whole_key = None;
    for (key, value) in table.iter_mut() {
        let span = value.span();
        let found = match value.get_mut() {
            DeValue::Table(t) => remove_value_at(t, span, at),
            DeValue::Array(items) => {
                if items.iter().any(|item| item.span() == *at) {
                    // An element of the wrong type: the array goes as a whole.
                    whole_key = Some(key.clone());
                    break;
                }
                items.iter_mut().find_map(|item| {
                    let span = item.span();
                    match item.get_mut() {
                        DeValue::Table(t) => remove_value_at(t, span, at),
                        _ => None,
                    }
                })
            }
            _ => None,
        };
        if found.is_some() {
            return found;
        }
    }
    let key = whole_key?;
    table.remove(&key);
    Some((key.get_ref().to_string(), table_span))
}

/// One step of a path to an ignored key.
#[derive(Debug, Clone, PartialEq)]
enum Segment {
    Key(String),
    Index(usize),
}

/// Flattens a `serde_ignored` path, dropping the steps that do not appear in the TOML text
/// (`Option`, newtypes, and the private field names `Spanned` deserializes through).
fn segments(path: &serde_ignored::Path<'_>) -> Vec<Segment> {
    use serde_ignored::Path;
    let mut out = match path {
        Path::Root => return Vec::new(),
        Path::Seq { parent, .. }
        | Path::Map { parent, .. }
        | Path::Some { parent }
        | Path::NewtypeStruct { parent }
        | Path::NewtypeVariant { parent } => segments(parent),
    };
    match path {
        Path::Seq { index, .. } => out.push(Segment::Index(*index)),
        Path::Map { key, .. } if !key.starts_with("$__serde_spanned_private") => {
            out.push(Segment::Key(key.clone()))
        }
        _ => {}
    }
    out
}

/// Finds the span of the ignored key in the parsed document and words the message, e.g.
/// "unknown key `intervall` in `metrics`".
fn describe_unknown(root: &Spanned<DeTable<'_>>, path: &[Segment]) -> (Range<usize>, String) {
    let mut span = root.span().start..root.span().start;
    let mut value: Option<&DeValue<'_>> = None;
    let mut table: Option<&DeTable<'_>> = Some(root.get_ref());
    for seg in path {
        match seg {
            Segment::Key(k) => {
                let found = table.and_then(|t| t.iter().find(|(key, _)| key.get_ref() == k));
                match found {
                    Some((key, v)) => {
                        span = key.span();
                        value = Some(v.get_ref());
                    }
                    None => break,
                }
            }
            Segment::Index(i) => match value.and_then(|v| v.as_array()).and_then(|a| a.get(*i)) {
                // The span stays the array's key until a key inside the element is found.
                Some(v) => value = Some(v.get_ref()),
                None => break,
            },
        }
        table = value.and_then(|v| v.as_table());
    }

    let mut name = String::new();
    let mut parent = String::new();
    for (i, seg) in path.iter().enumerate() {
        let is_last = i + 1 == path.len();
        match seg {
            Segment::Key(k) if is_last => name = k.clone(),
            Segment::Key(k) => {
                if !parent.is_empty() {
                    parent.push('.');
                }
                parent.push_str(k);
            }
            Segment::Index(idx) if is_last => name = format!("[{idx}]"),
            Segment::Index(idx) => parent.push_str(&format!("[{idx}]")),
        }
    }
    let message = if parent.is_empty() {
        format!("unknown key `{name}`")
    } else {
        format!("unknown key `{name}` in `{parent}`")
    };
    (span, message)
}

/// Longest name of a configuration object (rule, SLA, window, webhook): it ends up in metric
/// labels, URLs and log lines.
pub const MAX_OBJECT_NAME: usize = 64;

/// A required name of a `[[what]]` table: present, `[A-Za-z0-9_.-]+` (it appears in URLs and
/// label values).
pub fn object_name(
    d: &mut Diagnostics,
    table: std::ops::Range<usize>,
    what: &str,
    name: Option<&Spanned<String>>,
) -> Option<Spanned<String>> {
    let Some(name) = name else {
        d.missing(table, "name", format!("[[{what}]] is missing `name`"));
        return None;
    };
    let s = name.get_ref();
    if s.is_empty()
        || s.len() > MAX_OBJECT_NAME
        || !s
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
    {
        d.error_at(
            name,
            format!(
                "invalid {what} name {s:?}: use 1 to {MAX_OBJECT_NAME} letters, digits, '_', '-' or '.'"
            ),
        );
        return None;
    }
    Some(name.clone())
}

/// A Prometheus label name: `[a-zA-Z_][a-zA-Z0-9_]*`, not starting with `__` (reserved).
pub fn is_label_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !s.starts_with("__")
}

/// A duration in humantime syntax: `"10s"`, `"5m"`, `"2h"`, `"30d"`, `"1h 30m"`, `"500ms"`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim()).map_err(|e| match e {
        humantime::DurationError::UnknownUnit { unit, .. } => format!(
            "invalid duration {s:?}: unknown unit {unit:?} (use ms, s, m, h, d, e.g. \"10s\", \"5m\", \"2h\", \"30d\")"
        ),
        _ => format!("invalid duration {s:?} (expected e.g. \"10s\", \"5m\", \"2h\", \"30d\")"),
    })
}

/// A byte size: `"64MiB"`, `"1GB"`, `"512 KiB"`, or a plain number of bytes.
pub fn parse_byte_size(s: &str) -> Result<u64, String> {
    s.trim()
        .parse::<bytesize::ByteSize>()
        .map(|b| b.as_u64())
        .map_err(|_| {
            format!("invalid size {s:?} (expected e.g. \"64MiB\", \"1GB\" or a number of bytes)")
        })
}

/// `host:port` where host is a name, an IPv4 address or a bracketed IPv6 address (`[::1]:4433`).
/// Returns the host (without brackets) and the port. Nothing is resolved.
pub fn parse_host_port(s: &str) -> Result<(String, u16), String> {
    let bad = |why: &str| format!("invalid address {s:?}: {why} (expected HOST:PORT)");
    let (host, port) = s.rsplit_once(':').ok_or_else(|| bad("missing :PORT"))?;
    let port: u16 = port
        .parse()
        .map_err(|_| bad("port is not a number 0-65535"))?;
    let host = if let Some(inner) = host.strip_prefix('[') {
        let inner = inner.strip_suffix(']').ok_or_else(|| bad("unclosed '['"))?;
        inner
            .parse::<std::net::Ipv6Addr>()
            .map_err(|_| bad("bad IPv6 address"))?;
        inner
    } else {
        if host.contains(':') {
            return Err(bad("IPv6 addresses need brackets, e.g. [::1]:4433"));
        }
        host
    };
    let valid_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':');
    if host.is_empty() || !host.chars().all(valid_char) {
        return Err(bad("bad host name"));
    }
    if port == 0 {
        return Err(bad("port 0"));
    }
    Ok((host.to_string(), port))
}

/// The window an SLA is measured over: a rolling duration or the current calendar period (in the
/// SLA's time zone).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SlaWindow {
    /// The last `d` up to now.
    Rolling(Duration),
    /// The current calendar week (Monday 00:00 to Monday 00:00 in the SLA's time zone).
    CalendarWeek,
    /// The current calendar month.
    CalendarMonth,
    /// The current quarter (January, April, July, October).
    CalendarQuarter,
    /// The current calendar year.
    CalendarYear,
}

impl SlaWindow {
    /// `"week"`, `"month"`, `"quarter"`, `"year"`, or a duration from one minute to 400 days.
    pub fn parse(s: &str) -> Result<SlaWindow, String> {
        match s.trim() {
            "week" => return Ok(SlaWindow::CalendarWeek),
            "month" => return Ok(SlaWindow::CalendarMonth),
            "quarter" => return Ok(SlaWindow::CalendarQuarter),
            "year" => return Ok(SlaWindow::CalendarYear),
            _ => {}
        }
        let d = parse_duration(s).map_err(|_| {
            format!(
                "invalid SLA window {s:?}: expected a duration such as \"30d\" (rolling), or \
                 \"week\", \"month\", \"quarter\", \"year\" (calendar)"
            )
        })?;
        if d < Duration::from_secs(60) {
            return Err(format!("SLA window {s:?} is too short (at least 1m)"));
        }
        if d > Duration::from_secs(400 * 86_400) {
            return Err(format!("SLA window {s:?} is too long (at most 400d)"));
        }
        Ok(SlaWindow::Rolling(d))
    }

    /// Whether the window is a calendar period (resets at its boundary) rather than rolling.
    pub fn is_calendar(&self) -> bool {
        !matches!(self, SlaWindow::Rolling(_))
    }
}

/// Compact form used as the `window` label: `"30d"`, `"12h"`, `"90m"`, `"45s"`, or `"week"`,
/// `"month"`, `"quarter"`, `"year"`.
impl fmt::Display for SlaWindow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SlaWindow::CalendarWeek => f.write_str("week"),
            SlaWindow::CalendarMonth => f.write_str("month"),
            SlaWindow::CalendarQuarter => f.write_str("quarter"),
            SlaWindow::CalendarYear => f.write_str("year"),
            SlaWindow::Rolling(d) => {
                let s = d.as_secs();
                if s > 0 && s % 86_400 == 0 {
                    write!(f, "{}d", s / 86_400)
                } else if s > 0 && s % 3600 == 0 {
                    write!(f, "{}h", s / 3600)
                } else if s > 0 && s % 60 == 0 {
                    write!(f, "{}m", s / 60)
                } else {
                    write!(f, "{s}s")
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;
    use std::collections::BTreeMap;

    #[derive(Debug, Deserialize)]
    #[allow(dead_code)] // some fields are only there to be parsed
    struct Raw {
        name: Option<Spanned<String>>,
        interval: Option<Spanned<String>>,
        size: Option<Spanned<String>>,
        count: Option<Spanned<i64>>,
        section: Option<RawSection>,
        #[serde(default)]
        item: Vec<RawItem>,
        #[serde(default)]
        tags: BTreeMap<String, String>,
    }

    #[derive(Debug, Deserialize)]
    struct RawSection {
        listen: Option<Spanned<String>>,
        window: Option<Spanned<String>>,
    }

    #[derive(Debug, Deserialize)]
    #[allow(dead_code)]
    struct RawItem {
        name: Spanned<String>,
        timeout: Option<Spanned<String>>,
    }

    /// Parses and converts `text` as file `t.toml`; returns the error lines (empty when valid).
    fn errors_of(text: &str) -> Vec<String> {
        let (raw, mut d) = match parse::<Raw>("t.toml", text) {
            Ok(ok) => ok,
            Err(e) => return e.0.iter().map(ToString::to_string).collect(),
        };
        d.duration_or(raw.interval.as_ref(), Duration::from_secs(10));
        d.byte_size_or(raw.size.as_ref(), 1);
        if let Some(s) = &raw.section {
            d.socket_addr_or(s.listen.as_ref(), ([127, 0, 0, 1], 1).into());
            if let Some(w) = &s.window {
                d.parse_value(w, |w| SlaWindow::parse(w));
            }
        }
        for item in &raw.item {
            d.duration_or(item.timeout.as_ref(), Duration::from_secs(5));
        }
        match d.finish(()) {
            Ok(()) => Vec::new(),
            Err(e) => e.0.iter().map(ToString::to_string).collect(),
        }
    }

    #[track_caller]
    fn check(text: &str, expected: &[&str]) {
        assert_eq!(errors_of(text), expected, "config:\n{text}");
    }

    #[test]
    fn valid_configs_have_no_errors() {
        check("", &[]);
        check(
            "name = \"x\"\ninterval = \"5m\"\nsize = \"64MiB\"\ncount = 3\ntags = { a = \"b\" }\n\
             [section]\nlisten = \"0.0.0.0:80\"\nwindow = \"month\"\n\
             [[item]]\nname = \"a\"\ntimeout = \"2s\"\n",
            &[],
        );
    }

    #[test]
    fn unknown_key_and_bad_duration_are_both_reported() {
        check(
            "name = \"x\"\nbogus = 1\ninterval = \"ten seconds\"\n",
            &[
                "t.toml:2:1: unknown key `bogus`",
                "t.toml:3:12: invalid duration \"ten seconds\" (expected e.g. \"10s\", \"5m\", \"2h\", \"30d\")",
            ],
        );
    }

    #[test]
    fn every_unknown_key_is_reported_at_its_position() {
        check(
            "colour = 1\n[section]\nlisten = \"127.0.0.1:1\"\n  lisen = \"x\"\n\
             [[item]]\nname = \"a\"\n[[item]]\nname = \"b\"\ntimout = \"1s\"\n[extra]\nk = 1\n",
            &[
                "t.toml:1:1: unknown key `colour`",
                "t.toml:4:3: unknown key `lisen` in `section`",
                "t.toml:9:1: unknown key `timout` in `item[1]`",
                "t.toml:10:2: unknown key `extra`",
            ],
        );
    }

    #[test]
    fn unknown_keys_in_inline_and_dotted_tables() {
        check(
            "section = { listen = \"127.0.0.1:1\", x = 2 }\n",
            &["t.toml:1:37: unknown key `x` in `section`"],
        );
        check(
            "section.nope = 2\n",
            &["t.toml:1:9: unknown key `nope` in `section`"],
        );
    }

    #[test]
    fn syntax_errors_carry_their_position() {
        check(
            "name = \"x\"\ninterval = \"10s\n",
            &["t.toml:2:16: invalid basic string, expected `\"`"],
        );
        let errs = errors_of("name = \"x\"\n[section\n");
        assert!(
            !errs.is_empty() && errs.iter().all(|e| e.starts_with("t.toml:2:")),
            "{errs:?}"
        );
    }

    #[test]
    fn type_errors_carry_their_position_and_earlier_unknown_keys() {
        let errs = errors_of("aaa = 1\ncount = \"three\"\n");
        assert_eq!(errs.len(), 2, "{errs:?}");
        assert_eq!(errs[0], "t.toml:1:1: unknown key `aaa`");
        assert!(errs[1].starts_with("t.toml:2:9: invalid type"), "{errs:?}");
        let errs = errors_of("[[item]]\ntimeout = \"1s\"\n");
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(errs[0].contains("missing field `name`"), "{errs:?}");
        assert!(errs[0].starts_with("t.toml:1:"), "{errs:?}");
    }

    #[test]
    fn type_errors_do_not_hide_the_other_errors() {
        // A type error at the top, one in a table, one in an array of tables, an unknown key
        // after all of them and a value error: every one, in order.
        check(
            "count = \"three\"\n\
             interval = \"ten seconds\"\n\
             [section]\n\
             listen = 5\n\
             window = \"30d\"\n\
             [[item]]\n\
             name = \"a\"\n\
             timeout = [1]\n\
             [[item]]\n\
             name = \"b\"\n\
             timeout = \"1x\"\n\
             zz = 1\n",
            &[
                "t.toml:1:9: invalid type: string \"three\", expected i64",
                "t.toml:2:12: invalid duration \"ten seconds\" (expected e.g. \"10s\", \"5m\", \"2h\", \"30d\")",
                "t.toml:4:10: invalid type: integer `5`, expected a string",
                "t.toml:8:11: invalid type: sequence, expected a string",
                "t.toml:11:11: invalid duration \"1x\": unknown unit \"x\" (use ms, s, m, h, d, e.g. \"10s\", \"5m\", \"2h\", \"30d\")",
                "t.toml:12:1: unknown key `zz` in `item[1]`",
            ],
        );
    }

    #[test]
    fn a_mistyped_key_is_not_also_missing() {
        let text = "[[item]]\nname = 7\n[[item]]\ntimeout = \"1s\"\n";
        let (raw, mut d) = parse::<Lenient>("t.toml", text).expect("parses");
        for (i, item) in raw.item.iter().enumerate() {
            if item.get_ref().name.is_none() {
                d.missing(item.span(), "name", format!("item {i} is missing `name`"));
            }
        }
        let errs: Vec<String> = d.into_errors().iter().map(ToString::to_string).collect();
        assert_eq!(
            errs,
            [
                "t.toml:2:8: invalid type: integer `7`, expected a string",
                "t.toml:3:1: item 1 is missing `name`",
            ]
        );
    }

    #[derive(Debug, Deserialize)]
    struct Lenient {
        #[serde(default)]
        item: Vec<Spanned<LenientItem>>,
    }

    #[derive(Debug, Deserialize)]
    #[allow(dead_code)]
    struct LenientItem {
        name: Option<Spanned<String>>,
        timeout: Option<Spanned<String>>,
    }

    #[test]
    fn value_errors_are_all_collected_and_sorted() {
        check(
            "[[item]]\nname = \"a\"\ntimeout = \"1x\"\n[section]\nlisten = \"nope\"\n\
             window = \"10s\"\n",
            &[
                "t.toml:3:11: invalid duration \"1x\": unknown unit \"x\" (use ms, s, m, h, d, \
                 e.g. \"10s\", \"5m\", \"2h\", \"30d\")",
                "t.toml:5:10: invalid address \"nope\": expected IP:PORT, e.g. \"127.0.0.1:8080\"",
                "t.toml:6:10: SLA window \"10s\" is too short (at least 1m)",
            ],
        );
    }

    #[test]
    fn columns_count_characters_not_bytes() {
        check(
            "section = { listen = \"é\", zz = 1 }\n",
            &[
                "t.toml:1:22: invalid address \"é\": expected IP:PORT, e.g. \"127.0.0.1:8080\"",
                "t.toml:1:27: unknown key `zz` in `section`",
            ],
        );
    }

    #[test]
    fn durations() {
        for (text, want) in [
            ("10s", Some(10)),
            ("5m", Some(300)),
            ("2h", Some(7200)),
            ("30d", Some(30 * 86_400)),
            (" 1h 30m ", Some(5400)),
            ("10", None),
            ("", None),
            ("-5s", None),
        ] {
            assert_eq!(
                parse_duration(text).ok().map(|d| d.as_secs()),
                want,
                "{text:?}"
            );
        }
    }

    #[test]
    fn byte_sizes() {
        for (text, want) in [
            ("64MiB", Some(64 << 20)),
            ("1GB", Some(1_000_000_000)),
            ("512 KiB", Some(512 << 10)),
            ("4096", Some(4096)),
            ("lots", None),
            ("12 parsecs", None),
        ] {
            assert_eq!(parse_byte_size(text).ok(), want, "{text:?}");
        }
    }

    #[test]
    fn host_ports() {
        for (text, want) in [
            (
                "collector.example.org:4433",
                Some(("collector.example.org", 4433)),
            ),
            ("127.0.0.1:80", Some(("127.0.0.1", 80))),
            ("[::1]:4433", Some(("::1", 4433))),
            ("::1:4433", None),
            ("host", None),
            (":80", None),
            ("host:0", None),
            ("host:99999", None),
            ("ho st:80", None),
            ("[zz]:80", None),
        ] {
            let got = parse_host_port(text).ok();
            let got = got.as_ref().map(|(h, p)| (h.as_str(), *p));
            assert_eq!(got, want, "{text:?}");
        }
    }

    #[test]
    fn sla_windows() {
        for (text, want) in [
            ("month", Some("month")),
            ("week", Some("week")),
            ("quarter", Some("quarter")),
            (" year ", Some("year")),
            ("30d", Some("30d")),
            ("400d", Some("400d")),
            ("401d", None),
            ("12h", Some("12h")),
            ("90m", Some("90m")),
            ("1week", Some("7d")),
            ("30s", None),
            ("monthly", None),
        ] {
            let got = SlaWindow::parse(text).ok().map(|w| w.to_string());
            assert_eq!(got.as_deref(), want, "{text:?}");
        }
    }

    #[test]
    fn display_formats() {
        let e = ConfigErrors(vec![
            ConfigError {
                file: "a.toml".into(),
                line: 3,
                col: 7,
                message: "bad".into(),
            },
            ConfigError {
                file: "b.toml".into(),
                line: 0,
                col: 0,
                message: "unreadable".into(),
            },
        ]);
        assert_eq!(e.to_string(), "a.toml:3:7: bad\nb.toml: unreadable");
    }

    #[test]
    fn other_files_sort_after_this_one() {
        let mut d = Diagnostics::new("main.toml", "a = 1\nb = 2\n");
        d.extend(ConfigErrors::whole_file("inc.toml", "x").0);
        d.error(6..7, "second");
        d.error(0..1, "first");
        let got: Vec<String> = d.into_errors().iter().map(ToString::to_string).collect();
        assert_eq!(
            got,
            [
                "main.toml:1:1: first",
                "main.toml:2:1: second",
                "inc.toml: x"
            ]
        );
    }
}

/// A point in time as written in a config file: an RFC 3339 string (`"2026-12-01T02:00:00Z"`)
/// or a bare TOML datetime (`2026-12-01T02:00:00Z`); both end up as text for
/// [`crate::time::parse_rfc3339_ms`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawTime(pub String);

impl<'de> serde::Deserialize<'de> for RawTime {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        match <toml::Value as serde::Deserialize>::deserialize(deserializer)? {
            toml::Value::String(s) => Ok(RawTime(s)),
            toml::Value::Datetime(d) => Ok(RawTime(d.to_string())),
            other => Err(serde::de::Error::custom(format!(
                "invalid type: {}, expected an RFC 3339 time such as \"2026-12-01T02:00:00Z\"",
                other.type_str()
            ))),
        }
    }
}
