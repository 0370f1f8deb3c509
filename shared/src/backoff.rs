//! Reconnect backoff: exponential growth with "full jitter" (AWS architecture blog, "Exponential
//! Backoff And Jitter"), so that a fleet of agents cut off together does not reconnect in lockstep.
//!
//! Pure state machine: it never reads the clock, never sleeps and never draws random numbers
//! itself. The caller supplies the random `unit` (uniform in `[0, 1)` in production, fixed values
//! in tests) and does the waiting.

use std::time::Duration;

/// Exponential backoff with full jitter.
///
/// The `n`-th delay after a [`reset`](Backoff::reset) (counting from 0) is
/// `unit * min(cap, base * 2^n)`, but **never less than `base / 2`**: a floor keeps a reconnect
/// loop from spinning when the random unit happens to be close to 0.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    attempt: u32,
}

impl Backoff {
    /// The agent's default first ceiling.
    pub const DEFAULT_BASE: Duration = Duration::from_millis(500);
    /// The agent's default largest ceiling.
    pub const DEFAULT_CAP: Duration = Duration::from_secs(30);

    /// A backoff starting at `base` and growing to at most `cap`. A `cap` below `base` is raised to
    /// `base`, so the delays stay within `[base / 2, max(base, cap)]`.
    pub fn new(base: Duration, cap: Duration) -> Self {
        Self {
            base,
            cap: cap.max(base),
            attempt: 0,
        }
    }

    /// The delay to wait before the next attempt; advances the attempt counter.
    ///
    /// `unit` should be uniform in `[0, 1)`. Values outside `[0, 1]` are clamped and NaN counts
    /// as 0, so a bad random source can never produce a panic or an unbounded delay.
    pub fn next_delay(&mut self, unit: f64) -> Duration {
        let unit = if unit.is_nan() {
            0.0
        } else {
            unit.clamp(0.0, 1.0)
        };
        let ceiling = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        ceiling.mul_f64(unit).max(self.base / 2)
    }

    /// Back to the first delay; call once a connection has been established and has worked.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// How many delays were handed out since the last reset.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// `min(cap, base * 2^attempt)` without overflow.
    fn ceiling(&self) -> Duration {
        let factor = 1u32.checked_shl(self.attempt).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.cap)
    }
}

impl Default for Backoff {
    /// 500 ms base, 30 s cap.
    fn default() -> Self {
        Self::new(Self::DEFAULT_BASE, Self::DEFAULT_CAP)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: fn(u64) -> Duration = Duration::from_millis;

    /// Feeds `units` to a fresh default backoff and compares the delays.
    fn check(units: &[f64], expected_ms: &[u64]) {
        let mut b = Backoff::default();
        let got: Vec<Duration> = units.iter().map(|u| b.next_delay(*u)).collect();
        let want: Vec<Duration> = expected_ms.iter().map(|ms| MS(*ms)).collect();
        assert_eq!(got, want, "units {units:?}");
    }

    #[test]
    fn grows_exponentially() {
        // Ceilings 500, 1000, 2000, 4000, 8000, 16000 ms.
        check(&[0.5; 6], &[250, 500, 1000, 2000, 4000, 8000]);
        check(&[0.75, 0.75, 1.0, 1.0], &[375, 750, 2000, 4000]);
    }

    #[test]
    fn floor_is_half_the_base() {
        check(&[0.0, 0.0, 0.1, 0.0], &[250, 250, 250, 250]);
        check(&[f64::NAN, -3.0], &[250, 250]);
    }

    #[test]
    fn capped() {
        // After 7 attempts the ceiling (64 s) is past the 30 s cap.
        check(
            &[0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.5, 7.0],
            &[250, 250, 250, 250, 250, 250, 250, 30_000, 15_000, 30_000],
        );
    }

    #[test]
    fn reset_starts_over() {
        let mut b = Backoff::default();
        for _ in 0..10 {
            b.next_delay(0.5);
        }
        assert_eq!(b.next_delay(1.0), MS(30_000));
        b.reset();
        assert_eq!(b.attempt(), 0);
        assert_eq!(b.next_delay(1.0), MS(500));
        assert_eq!(b.next_delay(1.0), MS(1000));
    }

    #[test]
    fn no_overflow_after_many_attempts() {
        let mut b = Backoff::new(Duration::from_secs(u64::MAX / 2), Duration::MAX);
        let mut d = Backoff::default();
        for _ in 0..1000 {
            assert!(b.next_delay(0.99) <= Duration::MAX);
            assert!(d.next_delay(0.99) <= MS(30_000));
        }
        assert_eq!(d.next_delay(1.0), MS(30_000));
        assert_eq!(d.attempt(), 1001);
    }

    #[test]
    fn cap_below_base_is_raised() {
        let mut b = Backoff::new(MS(1000), MS(10));
        assert_eq!(b.next_delay(1.0), MS(1000));
        assert_eq!(b.next_delay(1.0), MS(1000));
        assert_eq!(b.next_delay(0.0), MS(500));
    }
}
