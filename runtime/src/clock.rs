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

/// CPU time the calling thread has used (`CLOCK_THREAD_CPUTIME_ID`): what a piece of work
/// costs, whatever else runs on the machine. Zero where the clock cannot be read.
#[allow(unsafe_code)]
pub fn thread_cpu() -> std::time::Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec and the clock id is a Linux constant.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return std::time::Duration::ZERO;
    }
    std::time::Duration::new(
        u64::try_from(ts.tv_sec).unwrap_or(0),
        u32::try_from(ts.tv_nsec).unwrap_or(0),
    )
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

    #[test]
    fn thread_cpu_grows_with_work_done() {
        let a = thread_cpu();
        let mut x = 0u64;
        let t = std::time::Instant::now();
        while t.elapsed() < std::time::Duration::from_millis(20) {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
        }
        let b = thread_cpu();
        assert!(b > a, "{a:?} then {b:?}");
    }
}
