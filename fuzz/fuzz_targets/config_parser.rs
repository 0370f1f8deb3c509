//! The agent's and the collector's config parsers on arbitrary TOML text: never a panic; a
//! refusal lists at least one error, each naming a file that was read and a position inside it.
//!
//! Input: `[selector][text...]`. Selector bit 0: agent (0) or collector (1). For the collector
//! the text may hold a NUL: what follows is an included file (`rules.d/a.toml`, in memory).
#![no_main]

use std::collections::BTreeMap;
use std::path::PathBuf;

use libfuzzer_sys::fuzz_target;
use vigil_shared::config::ConfigErrors;

const MAIN: &str = "/etc/vigil/collector.toml";
const INCLUDED: &str = "/etc/vigil/rules.d/a.toml";

fn check_errors(e: &ConfigErrors, files: &[(&str, &str)]) {
    assert!(!e.0.is_empty(), "a refusal without an error");
    let _ = e.to_string();
    for err in &e.0 {
        let (_, text) = files
            .iter()
            .find(|(name, _)| *name == err.file)
            .unwrap_or_else(|| panic!("an error names a file that was not read: {err}"));
        let lines = text.split('\n').count();
        assert!(
            err.line <= lines,
            "{err}: line past the end of the file ({lines} lines)"
        );
        assert!(
            err.message.len() < 64 * 1024 + text.len(),
            "an unbounded message"
        );
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    if selector & 1 == 0 {
        let name = "/etc/vigil/agent.toml";
        match vigil_agent::config::from_str(name, text) {
            Ok(c) => {
                let _ = format!("{c:?}");
            }
            Err(e) => check_errors(&e, &[(name, text)]),
        }
        return;
    }
    let (main, included) = text.split_once('\0').unwrap_or((text, ""));
    let files = vigil_collector::config::MemFiles(BTreeMap::from([(
        PathBuf::from(INCLUDED),
        included.to_owned(),
    )]));
    match vigil_collector::config::parse(MAIN, main, &files) {
        Ok(c) => {
            let _ = format!("{c:?}");
        }
        Err(e) => check_errors(&e, &[(MAIN, main), (INCLUDED, included)]),
    }
});
