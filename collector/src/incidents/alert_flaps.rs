//! Flap detection for Alertmanager fingerprints across requests, as the engine detects it for
//! a series: each firing/resolved status of a fingerprint is one evaluation of the same
//! Nagios-style state machine ([`eval::Series`], `[incidents] flap_*`). While a fingerprint
//! flaps, a resolved status does not resolve its incident (the incident is marked flapping and
//! stays open, so no resolve/reopen notification pair goes out per alternation); once it stops
//! flapping on a resolved status, the incident resolves.
//!
//! Kept in memory for at most [`MAX_TRACKED`] fingerprints: a new one past that evicts one that
//! is not flapping, or is not tracked when every tracked one flaps. A collector restart starts
//! every history afresh.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use super::eval::{Condition, FlapParams, Series};
use super::rule::Threshold;

/// Fingerprints tracked at most.
pub const MAX_TRACKED: usize = 10_000;

/// Firing is 1, resolved 0: "breached" is firing.
const FIRING: Condition = Condition {
    threshold: Threshold::Above(0.5),
    clear: 0.5,
    hold_ms: 0,
};

/// What one status means for its fingerprint's flapping.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Flap {
    /// Flapping after this status.
    pub flapping: bool,
    /// It started (`Some(percent)`) or stopped with this status.
    pub started: Option<f64>,
    pub stopped: Option<f64>,
}

struct Tracked {
    series: Series,
    /// The last evaluation's time (kept increasing: statuses of one time still count).
    last_ms: i64,
}

/// The flap state of every tracked fingerprint.
pub struct AlertFlaps {
    params: FlapParams,
    tracked: Mutex<HashMap<String, Tracked>>,
}

impl AlertFlaps {
    pub fn new(params: FlapParams) -> AlertFlaps {
        AlertFlaps {
            params,
            tracked: Mutex::new(HashMap::new()),
        }
    }

    /// Evaluates one status of the fingerprint `key` at `at_ms`.
    pub fn observe(&self, key: &str, firing: bool, at_ms: i64) -> Flap {
        let mut tracked = self.tracked.lock().unwrap_or_else(PoisonError::into_inner);
        if !tracked.contains_key(key) && tracked.len() >= MAX_TRACKED {
            let calm = tracked
                .iter()
                .find(|(_, t)| !t.series.is_flapping())
                .map(|(k, _)| k.clone());
            match calm {
                Some(k) => {
                    tracked.remove(&k);
                }
                None => {
                    return Flap {
                        flapping: false,
                        started: None,
                        stopped: None,
                    }
                }
            }
        }
        let t = tracked.entry(key.to_owned()).or_insert_with(|| Tracked {
            series: Series::new(),
            last_ms: i64::MIN,
        });
        let at = at_ms.max(t.last_ms.saturating_add(1));
        t.last_ms = at;
        let mut events = Vec::new();
        let value = if firing { 1.0 } else { 0.0 };
        t.series
            .observe(&FIRING, &self.params, at, value, &mut events);
        let mut flap = Flap {
            flapping: t.series.is_flapping(),
            started: None,
            stopped: None,
        };
        for e in events {
            match e {
                super::eval::Event::FlappingStarted { percent, .. } => flap.started = Some(percent),
                super::eval::Event::FlappingStopped { percent, .. } => flap.stopped = Some(percent),
                _ => {}
            }
        }
        flap
    }

    /// Fingerprints tracked now.
    pub fn len(&self) -> usize {
        self.tracked
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Default for AlertFlaps {
    fn default() -> Self {
        AlertFlaps::new(FlapParams::default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alternating_statuses_start_flapping_and_steady_ones_stop_it() {
        let f = AlertFlaps::default();
        // Alternations at one timestamp still count, one evaluation each.
        let mut started = None;
        for i in 0..10 {
            let flap = f.observe("fp", i % 2 == 0, 1_000);
            if flap.started.is_some() {
                started = Some(i);
            }
        }
        let at = started.expect("flapping started");
        assert!(at <= 5, "started after {at} alternations");
        assert!(f.observe("fp", false, 2_000).flapping);
        // A steady status for a full window stops it.
        let stopped = (0..30).find_map(|i| f.observe("fp", false, 3_000 + i).stopped.map(|_| i));
        assert!(stopped.is_some());
        assert!(!f.observe("fp", false, 10_000).flapping);
        // Another fingerprint has a history of its own.
        assert!(!f.observe("other", true, 1_000).flapping);
    }

    #[test]
    fn tracking_is_bounded_and_keeps_flapping_fingerprints() {
        let f = AlertFlaps::default();
        for i in 0..10 {
            f.observe("flapper", i % 2 == 0, i);
        }
        for i in 0..MAX_TRACKED + 10 {
            f.observe(&format!("fp{i}"), true, 0);
        }
        assert_eq!(f.len(), MAX_TRACKED);
        assert!(f.observe("flapper", true, 100).flapping, "kept");
    }
}
