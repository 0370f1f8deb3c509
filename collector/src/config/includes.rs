//! `include = ["rules.d/*.toml"]`: finding and reading the files a collector config includes,
//! through [`Files`], so that parsing stays pure: [`DiskFiles`] is the file system (what
//! `config::load` uses), [`MemFiles`] a set of texts in memory (tests), [`NoFiles`] nothing
//! (`config::from_str`).
//!
//! Globs are relative to the main file's directory; the files they match are read in sorted
//! order, each once, never the main file itself. A literal name that matches nothing is an
//! error; a glob that matches nothing is not. An included file may hold only `[[rule]]`,
//! `[[sla]]` and `[[maintenance]]`, and includes nothing further. A file ending `.yaml` or
//! `.yml` is OpenSLO: its `kind: SLO` documents are SLAs (`crate::sla::openslo`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use vigil_shared::config::{self as cfg, ConfigErrors, Diagnostics, Spanned};

use super::{RawObjects, MAX_CONFIG_FILE_SIZE};

const INCLUDE_HINT: &str = "an included file may hold only `rule`, `sla` and `maintenance`";

/// Where included files come from.
pub trait Files {
    /// The paths `pattern` (a glob, absolute or relative to the working directory) matches, in
    /// sorted order; an entry that cannot be read is an `Err` with its message.
    fn glob(&self, pattern: &str) -> Result<Vec<Result<PathBuf, String>>, String>;
    /// The text of a file: UTF-8, at most [`MAX_CONFIG_FILE_SIZE`] bytes.
    fn read(&self, path: &Path) -> Result<String, String>;
    /// The canonical form of a path (to read each file once), or the path itself.
    fn canonical(&self, path: &Path) -> PathBuf;
}

/// The file system.
pub struct DiskFiles;

impl Files for DiskFiles {
    fn glob(&self, pattern: &str) -> Result<Vec<Result<PathBuf, String>>, String> {
        let paths = glob::glob(pattern).map_err(|e| e.msg.to_string())?;
        Ok(paths
            .map(|p| p.map_err(|e| format!("cannot read {}: {}", e.path().display(), e.error())))
            .collect())
    }

    fn read(&self, path: &Path) -> Result<String, String> {
        vigil_runtime::fs::read_text_capped(path, MAX_CONFIG_FILE_SIZE).map_err(|e| e.to_string())
    }

    fn canonical(&self, path: &Path) -> PathBuf {
        std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf())
    }
}

/// No files at all.
pub struct NoFiles;

impl Files for NoFiles {
    fn glob(&self, _pattern: &str) -> Result<Vec<Result<PathBuf, String>>, String> {
        Ok(Vec::new())
    }

    fn read(&self, path: &Path) -> Result<String, String> {
        Err(format!(
            "cannot open: {} is not available here",
            path.display()
        ))
    }

    fn canonical(&self, path: &Path) -> PathBuf {
        path.to_path_buf()
    }
}

/// Files held in memory, by path.
#[derive(Debug, Default, Clone)]
pub struct MemFiles(pub BTreeMap<PathBuf, String>);

impl Files for MemFiles {
    fn glob(&self, pattern: &str) -> Result<Vec<Result<PathBuf, String>>, String> {
        let pattern = glob::Pattern::new(pattern).map_err(|e| e.msg.to_string())?;
        Ok(self
            .0
            .keys()
            .filter(|p| pattern.matches_path(p))
            .cloned()
            .map(Ok)
            .collect())
    }

    fn read(&self, path: &Path) -> Result<String, String> {
        self.0
            .get(path)
            .cloned()
            .ok_or_else(|| "cannot open: no such file".to_string())
    }

    fn canonical(&self, path: &Path) -> PathBuf {
        path.to_path_buf()
    }
}

/// Reads every file the `include` globs of `main` match and hands each one's objects to `add`;
/// their errors carry their own file name.
pub(super) fn load(
    main: &Path,
    patterns: &[Spanned<String>],
    files: &dyn Files,
    add: &mut dyn FnMut(&RawObjects, &mut Diagnostics),
    d: &mut Diagnostics,
) {
    let base = main.parent().unwrap_or(Path::new(""));
    let main_canonical = files.canonical(main);
    let mut done: BTreeSet<PathBuf> = BTreeSet::new();
    for pattern in patterns {
        let text = pattern.get_ref();
        if let Err(e) = glob::Pattern::new(text) {
            d.error_at(pattern, format!("invalid include glob {text:?}: {}", e.msg));
            continue;
        }
        let full = if Path::new(text).is_absolute() || base.as_os_str().is_empty() {
            text.clone()
        } else {
            format!("{}/{text}", glob::Pattern::escape(&base.to_string_lossy()))
        };
        let paths = match files.glob(&full) {
            Ok(paths) => paths,
            Err(msg) => {
                d.error_at(pattern, format!("invalid include glob {text:?}: {msg}"));
                continue;
            }
        };
        let mut matched = 0;
        for entry in paths {
            let path = match entry {
                Ok(p) => p,
                Err(msg) => {
                    d.error_at(pattern, msg);
                    continue;
                }
            };
            matched += 1;
            let canonical = files.canonical(&path);
            if canonical == main_canonical || !done.insert(canonical) {
                continue;
            }
            include_file(&path, files, add, d);
        }
        let literal = !text.contains(['*', '?', '[']);
        if matched == 0 && literal {
            d.error_at(pattern, format!("included file {full:?} does not exist"));
        }
    }
}

fn include_file(
    path: &Path,
    files: &dyn Files,
    add: &mut dyn FnMut(&RawObjects, &mut Diagnostics),
    d: &mut Diagnostics,
) {
    let name = path.display().to_string();
    let text = match files.read(path) {
        Ok(t) => t,
        Err(msg) => {
            d.extend(ConfigErrors::whole_file(&name, msg).0);
            return;
        }
    };
    let is_openslo = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("yaml") || e.eq_ignore_ascii_case("yml"));
    if !is_openslo {
        return include_text(&name, &text, add, d);
    }
    // OpenSLO: each SLO becomes the `[[sla]]` it describes, checked as one.
    match crate::sla::openslo::to_toml(&text) {
        Ok(docs) => {
            for (slo, toml_text) in docs {
                include_text(&format!("{name} (SLO {slo:?})"), &toml_text, add, d);
            }
        }
        Err(msg) => d.extend(ConfigErrors::whole_file(&name, msg).0),
    }
}

fn include_text(
    name: &str,
    text: &str,
    add: &mut dyn FnMut(&RawObjects, &mut Diagnostics),
    d: &mut Diagnostics,
) {
    match cfg::parse_with_hint::<RawObjects>(name, text, Some(INCLUDE_HINT)) {
        Ok((raw, mut inner)) => {
            add(&raw, &mut inner);
            d.extend(inner.into_errors());
        }
        Err(errors) => d.extend(errors.0),
    }
}
