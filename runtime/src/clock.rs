//! The wall clock, in milliseconds since the Unix epoch. Code that decides by time takes a
//! [`Clock`] (or a `now_ms` argument) so tests can move time themselves.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch, as some clock sees it.
pub type Clock = Arc<dyn Fn() -> i64 + Send + Sync>;

/// Now, in milliseconds since the Unix epoch: 0 before 1970, `i64::MAX` past year 292 million.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// The wall clock as a [`Clock`] (tests pass their own).
pub fn system_clock() -> Clock {
    Arc::new(now_ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_clock_is_after_2020_and_monotonic_enough() {
        let a = now_ms();
        let b = system_clock()();
        assert!(a > 1_577_836_800_000, "{a}");
        assert!(b >= a);
    }
}
