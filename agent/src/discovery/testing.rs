//! What the discovery sources' unit tests share: fixture roots, options, CIs written as JSON,
//! and one way to run a source and read back what it found.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use vigil_shared::inventory::{Ci, CiRef, Relation};

use super::{Discovered, Options};

/// Root of this crate's test fixtures (`agent/tests/fixtures/<name>`).
pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// Options that read the host under `root`, without tags or a host name override.
pub fn opts(root: &Path) -> Options {
    Options {
        root: root.to_path_buf(),
        tags: BTreeMap::new(),
        hostname: None,
    }
}

/// A CI of type `t` with `key` and `name`, its attributes given as a JSON object.
pub fn ci(t: &str, key: &str, name: &str, attrs: serde_json::Value) -> Ci {
    let mut c = Ci::new(t, key, name);
    if let serde_json::Value::Object(m) = attrs {
        c.attrs = m.into_iter().collect();
    }
    c
}

/// Runs one source on `opts` and canonicalizes what it found, as a whole pass does.
pub fn run(source: fn(&Options, &mut Discovered), opts: &Options) -> Discovered {
    let mut got = Discovered::default();
    source(opts, &mut got);
    got.inventory.canonicalize();
    got
}

/// The problems reported, as (source, message).
pub fn problems(got: &Discovered) -> Vec<(&str, &str)> {
    got.problems
        .iter()
        .map(|p| (p.source, p.message.as_str()))
        .collect()
}

/// Runs `source` on fixture `root` and checks that it finds exactly `expected` (in any order),
/// each related to the host by `kind`, and exactly `problems`.
pub fn check_host_children(
    source: fn(&Options, &mut Discovered),
    root: &str,
    kind: &str,
    expected: &[Ci],
    want_problems: &[(&str, &str)],
) {
    let got = run(source, &opts(&fixture(root)));
    let mut want = expected.to_vec();
    want.sort_by_key(Ci::id);
    assert_eq!(got.inventory.cis, want, "{root}");
    let mut rels: Vec<Relation> = want
        .iter()
        .map(|c| Relation {
            from: CiRef::new("host", "host"),
            kind: kind.into(),
            to: c.id(),
        })
        .collect();
    rels.sort();
    assert_eq!(got.inventory.relations, rels, "{root}");
    assert_eq!(problems(&got), want_problems, "{root}");
}
