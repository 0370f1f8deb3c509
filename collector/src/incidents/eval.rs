//! Threshold rule evaluation for one series: one `(rule, CI)` pair, fed its samples in the order
//! they arrive. [`Series::observe`] turns each sample into 0..n [`Event`]s (open, breach,
//! resolve, flapping start/stop) that the incident engine applies to the store.
//!
//! This module is a pure state machine: it never does I/O, never reads a clock (time is the
//! sample's own timestamp), never allocates per sample (the caller owns the event `Vec`) and never
//! panics, whatever the values. A [`Series`] stays a few machine words: its flap history is a
//! `u64` bitmask.
//!
//! Rules, in short:
//! - a sample not newer than the last evaluated one is [`Observed::Late`] and a non-finite value
//!   is [`Observed::Invalid`]; neither changes anything, so replayed or reordered samples can
//!   never reopen a resolved incident behind its back;
//! - a breach must hold for `hold_ms` (the rule's `for`) before the incident opens, both by the
//!   samples' own timestamps and by the collector's clock when they arrived (less
//!   [`ARRIVAL_JITTER_MS`]): an agent cannot make a breach old by dating its samples back, and a
//!   breach replayed from a spool opens only once it has held on arrival too; one good sample
//!   cancels the wait;
//! - an open incident resolves only once the value is back past `clear` (hysteresis);
//! - Nagios-style flap detection: while a series flaps its incident never resolves.

use super::rule::{Rule, Threshold};

/// What evaluation needs from a rule (built-in rules build it directly).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Condition {
    pub threshold: Threshold,
    /// Hysteresis: an open incident resolves once the value is back past this.
    pub clear: f64,
    /// How long a breach must hold before an incident opens (`for`), in milliseconds. Zero or
    /// negative opens on the first breached sample.
    pub hold_ms: i64,
}

impl Condition {
    /// The evaluation part of a configured rule; `hold` saturates at `i64::MAX` milliseconds.
    pub fn from_rule(rule: &Rule) -> Condition {
        Condition {
            threshold: rule.threshold,
            clear: rule.clear,
            hold_ms: i64::try_from(rule.hold.as_millis()).unwrap_or(i64::MAX),
        }
    }

    /// True when `v` is strictly past the threshold (Above: `v > t`; Below: `v < t`).
    pub fn breached(&self, v: f64) -> bool {
        match self.threshold {
            Threshold::Above(t) => v > t,
            Threshold::Below(t) => v < t,
        }
    }

    /// True when `v` is back past `clear` (Above: `v <= clear`; Below: `v >= clear`).
    pub fn cleared(&self, v: f64) -> bool {
        match self.threshold {
            Threshold::Above(_) => v <= self.clear,
            Threshold::Below(_) => v >= self.clear,
        }
    }

    /// The threshold itself, whichever its side.
    pub fn threshold_value(&self) -> f64 {
        match self.threshold {
            Threshold::Above(t) | Threshold::Below(t) => t,
        }
    }

    /// The worse of two values: the larger for Above, the smaller for Below. A NaN operand is
    /// ignored (`f64::max`/`min` semantics).
    fn worse(&self, a: f64, b: f64) -> f64 {
        match self.threshold {
            Threshold::Above(_) => a.max(b),
            Threshold::Below(_) => a.min(b),
        }
    }
}

/// Nagios-style flap detection (defaults: 21 evaluations, start at 20 %, stop below 5 %).
///
/// `window` is clamped to `2..=64` (the history is a `u64`). `high` and `low` are fractions
/// (0.0..=1.0); a NaN never starts (or never stops) flapping.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FlapParams {
    /// Number of evaluations kept in the history (so `window - 1` state transitions).
    pub window: usize,
    /// Flapping starts when the percent state change reaches this.
    pub high: f64,
    /// Flapping stops when the percent state change falls below this.
    pub low: f64,
}

impl Default for FlapParams {
    fn default() -> FlapParams {
        FlapParams {
            window: 21,
            high: 0.20,
            low: 0.05,
        }
    }
}

impl FlapParams {
    /// `window` clamped to `2..=64`.
    fn clamped_window(&self) -> usize {
        self.window.clamp(2, MAX_WINDOW)
    }
}

/// How much shorter than `for` the span of arrival times of a breach may be (network and
/// batching jitter between an agent's samples).
pub const ARRIVAL_JITTER_MS: i64 = 2_000;

/// The history is a `u64`: at most 64 evaluations.
const MAX_WINDOW: usize = 64;

/// What one sample means for the incident of its series.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// The breach held for `hold_ms`: open (or reopen) the incident. `peak` is the worst value
    /// since `first_breach_ms`; `flapping` is the series' flapping state after this sample.
    Opened {
        first_breach_ms: i64,
        at_ms: i64,
        value: f64,
        peak: f64,
        flapping: bool,
    },
    /// Still on the bad side while open (engine updates last breach time / peak).
    Breach { at_ms: i64, value: f64, peak: f64 },
    /// Back past `clear` (never emitted while flapping).
    Resolved { at_ms: i64, value: f64 },
    /// The percent state change reached `FlapParams::high`.
    FlappingStarted { at_ms: i64, percent: f64 },
    /// The percent state change fell below `FlapParams::low`.
    FlappingStopped { at_ms: i64, percent: f64 },
}

/// What [`Series::observe`] did with a sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Observed {
    /// The sample was evaluated (it may still have produced no event).
    Evaluated,
    /// Not newer than the last evaluated sample (duplicate or out of order): ignored.
    Late,
    /// NaN or infinite value: ignored.
    Invalid,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum Phase {
    /// No incident and no breach being held.
    #[default]
    Idle,
    /// Breached since `since_ms`, waiting for `hold_ms` to pass.
    Pending,
    /// Incident open, first breached at `since_ms`.
    Open,
}

/// The evaluation state of one `(rule, CI)` series.
///
/// Flap history: bit 0 of `history` is the newest evaluation (1 = "problem"), `recorded` counts
/// evaluations up to 64. A "problem" is a breached sample, or a sample in the hysteresis band
/// (not breached, not cleared) while the incident is open.
#[derive(Debug, Clone)]
pub struct Series {
    phase: Phase,
    flapping: bool,
    recorded: u8,
    history: u64,
    /// Pending since / first breach of the open incident (meaningless when idle).
    since_ms: i64,
    /// When the pending breach's first sample arrived (the collector's clock).
    since_arrival_ms: i64,
    /// Worst value since `since_ms`.
    peak: f64,
    /// The last evaluated timestamp; [`NONE_YET`] before the first (an `Option` would not fit
    /// the series in 48 bytes).
    last_ts_ms: i64,
}

/// `last_ts_ms` of a series that has evaluated nothing.
const NONE_YET: i64 = i64::MIN;

impl Default for Series {
    fn default() -> Self {
        Series::new()
    }
}

impl Series {
    /// A fresh series: idle, no history.
    pub fn new() -> Series {
        Series {
            phase: Phase::Idle,
            flapping: false,
            recorded: 0,
            history: 0,
            since_ms: 0,
            since_arrival_ms: 0,
            peak: 0.0,
            last_ts_ms: NONE_YET,
        }
    }

    /// A series whose incident is open in the store (collector restart): open, with its first
    /// breach, last evaluated timestamp, peak and flapping flag.
    ///
    /// The flap history is not persisted and starts empty. So that a restored flapping series
    /// does not stop flapping (and resolve) on its first sample just because its history is
    /// empty, `FlappingStopped` is only ever decided on a full history (`window` evaluations);
    /// see [`Series::observe`].
    pub fn restore_open(
        first_breach_ms: i64,
        last_ts_ms: i64,
        peak: f64,
        flapping: bool,
    ) -> Series {
        Series {
            phase: Phase::Open,
            flapping,
            recorded: 0,
            history: 0,
            since_ms: first_breach_ms,
            since_arrival_ms: first_breach_ms,
            peak,
            last_ts_ms,
        }
    }

    /// Evaluates one sample; pushes 0..n events to `out` (the caller clears it).
    ///
    /// Order of checks: a non-finite `value` is [`Observed::Invalid`], then a `ts_ms` not greater
    /// than the last evaluated one is [`Observed::Late`]; both leave the series untouched.
    ///
    /// Otherwise the sample's state ("problem" or "ok") enters the flap history and the new
    /// flapping state is computed first, then events are pushed in this fixed order:
    /// 1. at most one of `Opened` / `Breach` / `Resolved`. `Resolved` is withheld when the series
    ///    was flapping before this sample or is flapping after it;
    /// 2. `FlappingStarted` or `FlappingStopped`;
    /// 3. after `FlappingStopped` only: `Resolved` if the incident is open and this sample is
    ///    cleared.
    ///
    /// Flapping starts when the percent state change is `>= high` (on any history length) and
    /// stops when it is `< low`, the latter only on a full history of `window` evaluations.
    ///
    /// A sample both breached and cleared (possible only with a `clear` on the bad side of the
    /// threshold) counts as breached.
    pub fn observe(
        &mut self,
        cond: &Condition,
        flap: &FlapParams,
        ts_ms: i64,
        value: f64,
        out: &mut Vec<Event>,
    ) -> Observed {
        self.observe_arrived(cond, flap, ts_ms, ts_ms, value, out)
    }

    /// [`observe`](Self::observe) of a sample that arrived at `arrived_ms` (the collector's
    /// clock): a pending breach opens only once it has held for `hold_ms` by the samples'
    /// timestamps and, less [`ARRIVAL_JITTER_MS`], by their arrival.
    pub fn observe_arrived(
        &mut self,
        cond: &Condition,
        flap: &FlapParams,
        ts_ms: i64,
        arrived_ms: i64,
        value: f64,
        out: &mut Vec<Event>,
    ) -> Observed {
        if !value.is_finite() {
            return Observed::Invalid;
        }
        if self.last_ts_ms != NONE_YET && ts_ms <= self.last_ts_ms {
            return Observed::Late;
        }
        self.last_ts_ms = ts_ms;

        let breached = cond.breached(value);
        let cleared = !breached && cond.cleared(value);
        let was_open = self.phase == Phase::Open;
        let problem = breached || (was_open && !cleared);

        // Flap history and the flapping state after this sample.
        self.history = (self.history << 1) | u64::from(problem);
        self.recorded = self.recorded.saturating_add(1).min(MAX_WINDOW as u8);
        let percent = self.flap_percent(flap);
        let was_flapping = self.flapping;
        let history_full = usize::from(self.recorded) >= flap.clamped_window();
        let now_flapping = if was_flapping {
            !(history_full && percent < flap.low)
        } else {
            percent >= flap.high
        };
        self.flapping = now_flapping;

        // 1. Open / breach / resolve.
        match self.phase {
            Phase::Idle | Phase::Pending if breached => {
                if self.phase == Phase::Idle {
                    self.phase = Phase::Pending;
                    self.since_ms = ts_ms;
                    self.since_arrival_ms = arrived_ms;
                    self.peak = value;
                } else {
                    self.peak = cond.worse(self.peak, value);
                }
                let held = ts_ms.saturating_sub(self.since_ms) >= cond.hold_ms;
                let held_on_arrival = arrived_ms
                    .saturating_sub(self.since_arrival_ms)
                    .saturating_add(ARRIVAL_JITTER_MS)
                    >= cond.hold_ms;
                if held && held_on_arrival {
                    self.phase = Phase::Open;
                    out.push(Event::Opened {
                        first_breach_ms: self.since_ms,
                        at_ms: ts_ms,
                        value,
                        peak: self.peak,
                        flapping: now_flapping,
                    });
                }
            }
            Phase::Idle | Phase::Pending => self.phase = Phase::Idle,
            Phase::Open if breached => {
                self.peak = cond.worse(self.peak, value);
                out.push(Event::Breach {
                    at_ms: ts_ms,
                    value,
                    peak: self.peak,
                });
            }
            Phase::Open if cleared && !was_flapping && !now_flapping => {
                self.phase = Phase::Idle;
                out.push(Event::Resolved {
                    at_ms: ts_ms,
                    value,
                });
            }
            // In the hysteresis band, or cleared while flapping: stays open.
            Phase::Open => {}
        }

        // 2. Flapping transitions, 3. the resolve withheld while flapping.
        if now_flapping && !was_flapping {
            out.push(Event::FlappingStarted {
                at_ms: ts_ms,
                percent,
            });
        } else if was_flapping && !now_flapping {
            out.push(Event::FlappingStopped {
                at_ms: ts_ms,
                percent,
            });
            if self.phase == Phase::Open && cleared {
                self.phase = Phase::Idle;
                out.push(Event::Resolved {
                    at_ms: ts_ms,
                    value,
                });
            }
        }
        Observed::Evaluated
    }

    /// The series' incident was resolved by someone else (an operator) while the series was
    /// open: the series goes back to idle, keeping its flap history and last timestamp, so that
    /// a breach that goes on opens again after a full `for` from its next sample.
    pub fn resolved_elsewhere(&mut self) {
        if self.phase == Phase::Open {
            self.phase = Phase::Idle;
        }
        self.flapping = false;
    }

    /// True while an incident is open for this series.
    pub fn is_open(&self) -> bool {
        self.phase == Phase::Open
    }

    /// True while a breach is being held (waiting for `hold_ms`).
    pub fn is_pending(&self) -> bool {
        self.phase == Phase::Pending
    }

    /// True while the series is flapping.
    pub fn is_flapping(&self) -> bool {
        self.flapping
    }

    /// Timestamp of the last evaluated sample.
    pub fn last_ts_ms(&self) -> Option<i64> {
        (self.last_ts_ms != NONE_YET).then_some(self.last_ts_ms)
    }

    /// First breach of the pending breach or of the open incident; `None` when idle.
    pub fn first_breach_ms(&self) -> Option<i64> {
        match self.phase {
            Phase::Idle => None,
            Phase::Pending | Phase::Open => Some(self.since_ms),
        }
    }

    /// Percent state change over the last `window` evaluations, `0.0..=1.0`.
    ///
    /// The `window - 1` transitions of a full history are weighted linearly from 0.8 (oldest) to
    /// 1.2 (newest), so they average 1.0; the weights of the transitions that changed state are
    /// summed and divided by `window - 1`. A shorter history keeps the same weights for its
    /// newest transitions and the same divisor. With `window == 2` the single transition weighs
    /// 1.0.
    pub fn flap_percent(&self, flap: &FlapParams) -> f64 {
        let window = flap.clamped_window();
        let evaluations = usize::from(self.recorded).min(window);
        if evaluations < 2 {
            return 0.0;
        }
        let transitions = evaluations - 1; // <= 63
        let mask = (1u64 << transitions) - 1;
        // Bit j set: evaluation j (0 = newest) differs from evaluation j + 1.
        let mut changes = (self.history ^ (self.history >> 1)) & mask;
        if window == 2 {
            return if changes != 0 { 1.0 } else { 0.0 };
        }
        // Weight of transition j (0 = newest) with d = window - 2:
        // 0.8 + 0.4 * (d - j) / d = (6d - 2j) / 5d. Summing integer numerators and dividing
        // once keeps the result exact for round fractions.
        let d = (window - 2) as u64;
        let mut numerator = 0u64;
        while changes != 0 {
            let j = u64::from(changes.trailing_zeros());
            numerator += 6 * d - 2 * j;
            changes &= changes - 1;
        }
        let denominator = 5 * d * (window as u64 - 1);
        (numerator as f64 / denominator as f64).min(1.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::incidents::rule::Level;
    use std::collections::BTreeMap;
    use std::time::Duration;

    const ABOVE: Condition = Condition {
        threshold: Threshold::Above(90.0),
        clear: 80.0,
        hold_ms: 0,
    };
    const BELOW: Condition = Condition {
        threshold: Threshold::Below(10.0),
        clear: 20.0,
        hold_ms: 0,
    };

    fn hold(cond: Condition, hold_ms: i64) -> Condition {
        Condition { hold_ms, ..cond }
    }

    /// Samples every `step_ms` from `start_ms`.
    fn every(start_ms: i64, step_ms: i64, values: &[f64]) -> Vec<(i64, f64)> {
        (0i64..)
            .zip(values)
            .map(|(i, v)| (start_ms + i * step_ms, *v))
            .collect()
    }

    fn run_on(
        series: &mut Series,
        cond: Condition,
        flap: FlapParams,
        samples: &[(i64, f64)],
    ) -> Vec<Event> {
        let mut out = Vec::new();
        for &(ts, v) in samples {
            series.observe(&cond, &flap, ts, v, &mut out);
        }
        out
    }

    fn run(cond: Condition, samples: &[(i64, f64)]) -> Vec<Event> {
        run_on(&mut Series::new(), cond, FlapParams::default(), samples)
    }

    fn check(cond: Condition, samples: &[(i64, f64)], expected: &[Event]) {
        assert_eq!(run(cond, samples), expected, "samples {samples:?}");
    }

    fn opened(first: i64, at: i64, value: f64, peak: f64, flapping: bool) -> Event {
        Event::Opened {
            first_breach_ms: first,
            at_ms: at,
            value,
            peak,
            flapping,
        }
    }

    fn breach(at: i64, value: f64, peak: f64) -> Event {
        Event::Breach {
            at_ms: at,
            value,
            peak,
        }
    }

    fn resolved(at: i64, value: f64) -> Event {
        Event::Resolved { at_ms: at, value }
    }

    #[test]
    fn condition_from_rule_and_boundaries() {
        let rule = Rule {
            name: "cpu".into(),
            metric: "cpu_usage_ratio".into(),
            threshold: Threshold::Above(0.9),
            clear: 0.8,
            hold: Duration::from_secs(300),
            impact: Level::High,
            urgency: Level::Low,
            scope: Default::default(),
            labels: BTreeMap::new(),
        };
        let c = Condition::from_rule(&rule);
        assert_eq!(
            c,
            Condition {
                threshold: Threshold::Above(0.9),
                clear: 0.8,
                hold_ms: 300_000
            }
        );
        assert_eq!(c.threshold_value(), 0.9);
        let huge = Rule {
            hold: Duration::MAX,
            ..rule
        };
        assert_eq!(Condition::from_rule(&huge).hold_ms, i64::MAX);

        // (condition, value, breached, cleared)
        let cases = [
            (ABOVE, 90.0, false, false),
            (ABOVE, 90.5, true, false),
            (ABOVE, 85.0, false, false),
            (ABOVE, 80.0, false, true),
            (BELOW, 10.0, false, false),
            (BELOW, 9.5, true, false),
            (BELOW, 15.0, false, false),
            (BELOW, 20.0, false, true),
        ];
        for (c, v, b, cl) in cases {
            assert_eq!((c.breached(v), c.cleared(v)), (b, cl), "{c:?} {v}");
        }
        assert_eq!(BELOW.threshold_value(), 10.0);
    }

    #[test]
    fn hold_opens_exactly_at_hold() {
        check(
            hold(ABOVE, 60_000),
            &every(0, 10_000, &[95.0, 97.0, 93.0, 95.0, 95.0, 95.0, 96.0, 99.0]),
            &[
                opened(0, 60_000, 96.0, 97.0, false),
                breach(70_000, 99.0, 99.0),
            ],
        );
        // Irregular spacing: 59 999 ms is not enough, 60 000 is.
        check(
            hold(ABOVE, 60_000),
            &[(1_000, 95.0), (60_999, 95.0), (61_000, 95.0)],
            &[opened(1_000, 61_000, 95.0, 95.0, false)],
        );
    }

    /// `for` is judged on arrival too: samples dated back (a flood with timestamps of the
    /// agent's choosing, or a spool replay) open nothing until the breach has held on the
    /// collector's clock, less the jitter allowance.
    #[test]
    fn hold_must_also_pass_on_arrival() {
        let cond = hold(ABOVE, 60_000);
        let flap = FlapParams::default();
        let mut s = Series::new();
        let mut out = Vec::new();
        // Ten minutes of breach, dated back, all arriving within 10 ms.
        for i in 0..60 {
            let ts = 1_000_000 + i * 10_000;
            s.observe_arrived(&cond, &flap, ts, 2_000_000 + i / 10, 95.0, &mut out);
        }
        assert!(out.is_empty(), "{out:?}");
        assert!(s.is_pending());
        // It goes on breaching live: it opens once 60 s (less the jitter) have passed on
        // arrival since the first breached sample arrived.
        let first_arrival = 2_000_000;
        s.observe_arrived(
            &cond,
            &flap,
            1_600_000,
            first_arrival + 57_999,
            95.0,
            &mut out,
        );
        assert!(out.is_empty(), "{out:?}");
        s.observe_arrived(
            &cond,
            &flap,
            1_610_000,
            first_arrival + 58_000,
            96.0,
            &mut out,
        );
        assert_eq!(out, [opened(1_000_000, 1_610_000, 96.0, 96.0, false)]);

        // Timestamps that pass too slowly hold it back as well: arrival alone is not enough.
        let mut s = Series::new();
        out.clear();
        s.observe_arrived(&cond, &flap, 10, 0, 95.0, &mut out);
        s.observe_arrived(&cond, &flap, 20, 120_000, 95.0, &mut out);
        assert!(out.is_empty());
        // A hold of zero opens at once, whenever the sample arrives.
        let mut s = Series::new();
        s.observe_arrived(&hold(ABOVE, 0), &flap, 10, 0, 95.0, &mut out);
        assert_eq!(out.len(), 1);
    }

    #[test]
    fn hold_cancelled_by_one_good_sample() {
        let cond = hold(ABOVE, 30_000);
        // A clear sample cancels; the hold restarts at the next breach.
        check(
            cond,
            &every(0, 10_000, &[95.0, 95.0, 50.0, 95.0, 95.0, 95.0, 95.0]),
            &[opened(30_000, 60_000, 95.0, 95.0, false)],
        );
        // So does a sample in the band (not breached, not cleared).
        check(
            cond,
            &every(0, 10_000, &[95.0, 85.0, 95.0, 95.0, 95.0, 95.0]),
            &[opened(20_000, 50_000, 95.0, 95.0, false)],
        );
        let mut s = Series::new();
        run_on(&mut s, cond, FlapParams::default(), &[(0, 95.0)]);
        assert!(s.is_pending() && !s.is_open());
        assert_eq!(s.first_breach_ms(), Some(0));
        run_on(&mut s, cond, FlapParams::default(), &[(10_000, 85.0)]);
        assert!(!s.is_pending() && !s.is_open());
        assert_eq!(s.first_breach_ms(), None);
    }

    #[test]
    fn hold_zero_opens_on_first_breach() {
        check(
            ABOVE,
            &every(0, 10_000, &[50.0, 91.0, 95.0, 92.0]),
            &[
                opened(10_000, 10_000, 91.0, 91.0, false),
                breach(20_000, 95.0, 95.0),
                breach(30_000, 92.0, 95.0),
            ],
        );
    }

    #[test]
    fn hysteresis_above() {
        check(
            ABOVE,
            &every(0, 10_000, &[95.0, 85.0, 81.0, 90.0, 80.0, 85.0, 91.0]),
            &[
                opened(0, 0, 95.0, 95.0, false),
                // 85, 81, 90 are in the band (90 is not strictly above): still open.
                resolved(40_000, 80.0),
                // 85 after the resolve changes nothing; 91 is a new breach.
                opened(60_000, 60_000, 91.0, 91.0, false),
            ],
        );
    }

    #[test]
    fn hysteresis_below() {
        check(
            BELOW,
            &every(0, 10_000, &[50.0, 5.0, 2.0, 15.0, 10.0, 19.9, 20.0, 9.0]),
            &[
                opened(10_000, 10_000, 5.0, 5.0, false),
                breach(20_000, 2.0, 2.0),
                resolved(60_000, 20.0),
                opened(70_000, 70_000, 9.0, 9.0, false),
            ],
        );
    }

    #[test]
    fn new_incident_needs_the_hold_again() {
        check(
            hold(BELOW, 20_000),
            &every(0, 10_000, &[5.0, 1.0, 3.0, 30.0, 5.0, 5.0, 4.0]),
            &[
                opened(0, 20_000, 3.0, 1.0, false),
                resolved(30_000, 30.0),
                opened(40_000, 60_000, 4.0, 4.0, false),
            ],
        );
    }

    /// `n` copies of `v`.
    fn steady(v: f64, n: usize) -> Vec<f64> {
        vec![v; n]
    }

    #[test]
    fn flapping_enter_and_leave() {
        // 8 samples oscillating across the threshold, then steady and clear.
        let mut values = vec![95.0, 50.0, 95.0, 50.0, 95.0, 50.0, 97.0, 50.0];
        values.extend(steady(50.0, 19));
        let t = |i: i64| i * 10_000; // timestamp of sample i (0-based)
        check(
            ABOVE,
            &every(0, 10_000, &values),
            &[
                opened(t(0), t(0), 95.0, 95.0, false),
                resolved(t(1), 50.0), // 1 change: 1.2/20 = 6 %
                opened(t(2), t(2), 95.0, 95.0, false),
                resolved(t(3), 50.0), // 3 changes: 17.7 %
                // 4 changes: (1.2 + 1.179 + 1.158 + 1.137) / 20 = 23.4 %: starts flapping and
                // the incident opened on this sample says so.
                opened(t(4), t(4), 95.0, 95.0, true),
                Event::FlappingStarted {
                    at_ms: t(4),
                    percent: 444.0 / 1900.0,
                },
                // t(5): cleared but flapping: no Resolved. t(6): still a breach.
                breach(t(6), 97.0, 97.0),
                // No Resolved for t(7)..t(25). At t(26) the only transition left in the window
                // is the oldest one (t(6) -> t(7)): 0.8 / 20 = 4 % < 5 %.
                Event::FlappingStopped {
                    at_ms: t(26),
                    percent: 0.04,
                },
                resolved(t(26), 50.0),
            ],
        );
    }

    #[test]
    fn flapping_stop_in_the_band_keeps_it_open() {
        // Oscillation, then the value stays in the band (a "problem" while open), then clears.
        let mut values = vec![95.0, 50.0, 95.0, 50.0, 95.0, 50.0, 95.0, 50.0];
        values.extend(steady(85.0, 20));
        values.push(50.0);
        let t = |i: i64| i * 10_000;
        let mut s = Series::new();
        let events = run_on(
            &mut s,
            ABOVE,
            FlapParams::default(),
            &every(0, 10_000, &values),
        );
        assert_eq!(
            events,
            [
                opened(t(0), t(0), 95.0, 95.0, false),
                resolved(t(1), 50.0),
                opened(t(2), t(2), 95.0, 95.0, false),
                resolved(t(3), 50.0),
                opened(t(4), t(4), 95.0, 95.0, true),
                Event::FlappingStarted {
                    at_ms: t(4),
                    percent: 444.0 / 1900.0,
                },
                breach(t(6), 95.0, 95.0),
                // The last change is t(7) (clear) -> t(8) (band while open); at t(27) it is the
                // only one left: 4 %. The sample is in the band, so no Resolved yet.
                Event::FlappingStopped {
                    at_ms: t(27),
                    percent: 0.04,
                },
                resolved(t(28), 50.0),
            ]
        );
        assert!(!s.is_open() && !s.is_flapping());
    }

    #[test]
    fn flapping_start_on_a_clear_sample_keeps_it_open() {
        // The sample that crosses `high` is a clear one while open: flapping starts and the
        // incident is not resolved.
        let flap = FlapParams {
            high: 0.15,
            ..FlapParams::default()
        };
        let mut s = Series::new();
        let events = run_on(
            &mut s,
            ABOVE,
            flap,
            &every(0, 10_000, &[95.0, 50.0, 95.0, 85.0, 50.0]),
        );
        assert_eq!(
            events,
            [
                opened(0, 0, 95.0, 95.0, false),
                resolved(10_000, 50.0),
                opened(20_000, 20_000, 95.0, 95.0, false), // 2 changes: 11.9 %
                // 30 s: in the band while open, no change. 40 s: (1.2 + 1.158 + 1.137) / 20.
                Event::FlappingStarted {
                    at_ms: 40_000,
                    percent: 332.0 / 1900.0,
                },
            ]
        );
        assert!(s.is_open() && s.is_flapping());
    }

    #[test]
    fn flap_weights() {
        let flap = FlapParams::default();
        let percent = |cond: Condition, values: &[f64], flap: FlapParams| {
            let mut s = Series::new();
            run_on(&mut s, cond, flap, &every(0, 1_000, values));
            s.flap_percent(&flap)
        };
        let close = |a: f64, b: f64| (a - b).abs() < 1e-12;

        // One change at the newest position of a full window: 1.2 / 20.
        let mut newest = steady(50.0, 20);
        newest.push(95.0);
        let p = percent(ABOVE, &newest, flap);
        assert!(close(p, 1.2 / 20.0) && p == 0.06, "{p}");
        // One change at the oldest position: 0.8 / 20.
        let mut oldest = vec![50.0];
        oldest.extend(steady(95.0, 20));
        let p = percent(ABOVE, &oldest, flap);
        assert!(close(p, 0.8 / 20.0) && p == 0.04, "{p}");
        // One more sample pushes it out of the window.
        oldest.push(95.0);
        assert_eq!(percent(ABOVE, &oldest, flap), 0.0);
        // A short history keeps the newest weights and the same divisor.
        assert_eq!(percent(ABOVE, &[50.0, 95.0], flap), 0.06);
        assert_eq!(percent(ABOVE, &[95.0], flap), 0.0);
        assert_eq!(Series::new().flap_percent(&flap), 0.0);
        // Every transition changed: exactly 100 %.
        let alternating: Vec<f64> = (0..70)
            .map(|i| if i % 2 == 0 { 95.0 } else { 50.0 })
            .collect();
        assert_eq!(percent(ABOVE, &alternating, flap), 1.0);

        // Window clamped to 2..=64; window 2 has a single transition weighing 1.0.
        let w = |window| FlapParams { window, ..flap };
        assert_eq!(percent(ABOVE, &[95.0, 50.0], w(0)), 1.0);
        assert_eq!(percent(ABOVE, &[95.0, 50.0, 50.0], w(2)), 0.0);
        assert_eq!(percent(ABOVE, &alternating, w(1_000)), 1.0);
        let mut long = vec![50.0];
        long.extend(steady(95.0, 63));
        assert!(close(percent(ABOVE, &long, w(64)), 0.8 / 63.0));
        assert!(close(percent(ABOVE, &long, w(1_000)), 0.8 / 63.0));
        long.push(95.0);
        assert_eq!(percent(ABOVE, &long, w(1_000)), 0.0);
    }

    #[test]
    fn late_replay_after_a_gap_opens_in_the_past() {
        // The last live sample was at t=0; after an outage the agent replays its spool, older
        // than "now" but newer than t=0: evaluated on sample time, the incident starts at 10 s.
        check(
            hold(ABOVE, 60_000),
            &every(0, 10_000, &[50.0, 95.0, 96.0, 95.0, 95.0, 95.0, 95.0, 95.0]),
            &[opened(10_000, 70_000, 95.0, 96.0, false)],
        );
    }

    #[test]
    fn late_out_of_order_is_ignored() {
        // Resolved at 30 s; a breach stamped 20 s (or a duplicate of 30 s) arrives afterwards.
        check(
            ABOVE,
            &[
                (10_000, 95.0),
                (30_000, 50.0),
                (20_000, 99.0),
                (30_000, 99.0),
                (40_000, 50.0),
            ],
            &[
                opened(10_000, 10_000, 95.0, 95.0, false),
                resolved(30_000, 50.0),
            ],
        );
        // Observed values, and no state change.
        let mut s = Series::new();
        let mut out = Vec::new();
        let f = FlapParams::default();
        assert_eq!(
            s.observe(&ABOVE, &f, 10, 95.0, &mut out),
            Observed::Evaluated
        );
        assert_eq!(s.observe(&ABOVE, &f, 10, 50.0, &mut out), Observed::Late);
        assert_eq!(s.observe(&ABOVE, &f, 5, 50.0, &mut out), Observed::Late);
        assert_eq!(out.len(), 1);
        assert!(s.is_open());
        assert_eq!(s.last_ts_ms(), Some(10));
    }

    #[test]
    fn non_finite_values_are_invalid() {
        check(
            ABOVE,
            &[
                (0, 95.0),
                (1, f64::NAN),
                (2, f64::NEG_INFINITY),
                (3, 85.0),
                (4, f64::INFINITY),
            ],
            &[opened(0, 0, 95.0, 95.0, false)],
        );
        let mut s = Series::new();
        let mut out = Vec::new();
        let f = FlapParams::default();
        assert_eq!(
            s.observe(&BELOW, &f, 7, f64::NAN, &mut out),
            Observed::Invalid
        );
        assert_eq!(
            s.observe(&BELOW, &f, 7, f64::INFINITY, &mut out),
            Observed::Invalid
        );
        assert_eq!(s.last_ts_ms(), None);
        assert_eq!(s.flap_percent(&f), 0.0);
        // The NaN did not advance the clock: a sample at the same ts is still evaluated.
        assert_eq!(s.observe(&BELOW, &f, 7, 5.0, &mut out), Observed::Evaluated);
        assert_eq!(out, [opened(7, 7, 5.0, 5.0, false)]);
    }

    #[test]
    fn restore_open() {
        let mut s = Series::restore_open(1_000, 5_000, 97.0, false);
        assert!(s.is_open() && !s.is_pending() && !s.is_flapping());
        assert_eq!(s.last_ts_ms(), Some(5_000));
        assert_eq!(s.first_breach_ms(), Some(1_000));
        let events = run_on(
            &mut s,
            ABOVE,
            FlapParams::default(),
            &[
                (4_000, 50.0),
                (5_000, 50.0),
                (6_000, 95.0),
                (7_000, 99.0),
                (8_000, 85.0),
                (9_000, 50.0),
            ],
        );
        assert_eq!(
            events,
            [
                breach(6_000, 95.0, 97.0),
                breach(7_000, 99.0, 99.0),
                resolved(9_000, 50.0)
            ]
        );
        assert!(!s.is_open());
    }

    #[test]
    fn restore_open_flapping_waits_for_a_full_history() {
        // The history is not persisted: a restored flapping series stays flapping (and open)
        // until a full window of steady samples says otherwise.
        let mut s = Series::restore_open(0, 0, 95.0, true);
        let events = run_on(
            &mut s,
            ABOVE,
            FlapParams::default(),
            &every(1_000, 1_000, &steady(50.0, 21)),
        );
        assert_eq!(
            events,
            [
                Event::FlappingStopped {
                    at_ms: 21_000,
                    percent: 0.0,
                },
                resolved(21_000, 50.0),
            ]
        );
    }

    #[test]
    fn series_stays_small() {
        assert!(
            std::mem::size_of::<Series>() <= 48,
            "{}",
            std::mem::size_of::<Series>()
        );
    }
}
