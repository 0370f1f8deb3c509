//! Failpoints: named faults a test switches on to prove that a component's failure is loud
//! (logged, reported by `/readyz`, a non-zero exit), or to hold a race window open (`engine-slow`:
//! the incident engine takes 300 ms over each batch). `VIGIL_FAILPOINTS=engine,notifier` turns on
//! the named points for the life of the process.
//!
//! Only debug builds read the variable; in a release build [`hit`] is always false and costs
//! nothing, so no setting can make a production binary fail on purpose.

/// Whether the failpoint `name` is on.
#[cfg(debug_assertions)]
pub fn hit(name: &str) -> bool {
    use std::sync::OnceLock;
    static ON: OnceLock<Vec<String>> = OnceLock::new();
    ON.get_or_init(|| {
        std::env::var(ENV)
            .unwrap_or_default()
            .split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect()
    })
    .iter()
    .any(|n| n == name)
}

/// Whether the failpoint `name` is on: never, in a release build.
#[cfg(not(debug_assertions))]
pub fn hit(_name: &str) -> bool {
    false
}

/// The environment variable that lists the failpoints to switch on.
pub const ENV: &str = "VIGIL_FAILPOINTS";
