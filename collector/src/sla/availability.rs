//! Availability of a service from the time its CIs were down, degraded, in maintenance or
//! without data: one sweep over the state changes of every scoped CI.
//!
//! Per CI, at every instant, one state wins: in maintenance (contractual view only) > down >
//! degraded (the largest weight of its degrading incidents) > absent (the CI did not exist
//! yet, or no longer: not part of the service then) > up while it has data > unknown.
//! The service is, by default, down while any CI is down; with a quorum N, up while at least N
//! CIs are up (a degraded CI counts as up, a CI in maintenance as up in the contractual view),
//! down when even the unknown ones could not reach N, else unknown. Time outside the schedule,
//! and time when every CI is in maintenance, is excluded: it counts neither way.
//!
//! availability = up / (up + down), where a degraded second counts `weight` down and the rest
//! up. Unknown time is left out of both and reported as the coverage ratio.

use std::sync::Arc;

use super::spans::{Span, Spans};

/// What one CI went through, as time spans (any order, may overlap).
#[derive(Debug, Clone, Default)]
pub struct CiTimeline {
    /// When the CI existed (first seen to retired); `None`: all along.
    pub exists: Option<Spans>,
    /// When the collector had data for the CI (or decided its state); shared by the units of
    /// one host and by every SLA of a refresh.
    pub known: Arc<Spans>,
    /// Incidents that make it down: `(span from first breach to resolution, incident id)`.
    pub down: Vec<(Span, i64)>,
    /// Incidents that degrade it: `(span, weight in (0, 1), incident id)`.
    pub degraded: Vec<(Span, f64, i64)>,
    /// Maintenance windows over it (shared like `known`).
    pub maintenance: Arc<Spans>,
}

/// Which view of the same history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Maintenance excluded, schedule applied: the contract's view.
    Contractual,
    /// Everything counts, all hours: the customer's view.
    Experienced,
}

/// How the service's state follows its CIs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Combine {
    /// Down while any CI is down.
    All,
    /// Up while at least this many CIs are up.
    Quorum(u32),
}

/// One outage: contiguous service downtime, and the incidents behind it.
#[derive(Debug, Clone, PartialEq)]
pub struct Outage {
    pub span: Span,
    pub incidents: Vec<i64>,
}

/// The figures of one period.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Figures {
    /// The period, clipped to the schedule: what the service owes.
    pub scheduled_ms: i64,
    /// Up, as a weighted length (a degraded second counts `1 - weight`).
    pub up_ms: f64,
    /// Down, as a weighted length (a degraded second counts `weight`).
    pub down_ms: f64,
    /// Of `down_ms`, what came from degradation.
    pub degraded_ms: f64,
    pub unknown_ms: i64,
    /// Scheduled time when every CI was in maintenance (contractual view only).
    pub excluded_ms: i64,
    /// `up / (up + down)`; `None` when nothing was measured.
    pub availability: Option<f64>,
    /// Measured (up or down) over scheduled-and-not-excluded time; `None` when that is zero.
    pub coverage: Option<f64>,
    pub outages: Vec<Outage>,
}

impl Figures {
    pub fn longest_outage_ms(&self) -> i64 {
        self.outages.iter().map(|o| o.span.len()).max().unwrap_or(0)
    }

    /// Mean time between failures: up time per outage (`None` without an outage).
    pub fn mtbf_ms(&self) -> Option<f64> {
        (!self.outages.is_empty()).then(|| self.up_ms / self.outages.len() as f64)
    }
}

/// A CI's state on one piece of time.
#[derive(Debug, Clone, Copy, PartialEq)]
enum CiState {
    Absent,
    Unknown,
    Up,
    Degraded(f64),
    Down,
    Maintenance,
}

/// The service's state on one piece of time.
#[derive(Debug, Clone, Copy, PartialEq)]
enum ServiceState {
    Unknown,
    Up,
    Degraded(f64),
    Down,
    Excluded,
}

/// Buffers [`pieces`] reuses from one CI to the next (a sweep cuts thousands).
#[derive(Default)]
struct Scratch {
    down: Vec<Span>,
    degraded: Vec<(Span, f64)>,
    cuts: Vec<i64>,
}

/// Membership of instants asked in increasing order in disjoint spans in order: one pass over
/// the spans for all the instants of a CI, not a binary search per instant.
struct Cursor<'a> {
    spans: &'a [Span],
    next: usize,
}

impl<'a> Cursor<'a> {
    fn new(spans: &'a [Span]) -> Cursor<'a> {
        Cursor { spans, next: 0 }
    }

    /// Whether `t` is within one of the spans; `t` is no earlier than the last one asked.
    fn contains(&mut self, t: i64) -> bool {
        while self.spans.get(self.next).is_some_and(|s| s.end <= t) {
            self.next += 1;
        }
        self.spans.get(self.next).is_some_and(|s| s.start <= t)
    }
}

/// Cuts one CI's history within `period` into pieces of constant state, into `out`.
fn pieces(
    ci: &CiTimeline,
    period: Span,
    kind: Kind,
    scratch: &mut Scratch,
    out: &mut Vec<(Span, CiState)>,
) {
    out.clear();
    let Scratch {
        down,
        degraded,
        cuts,
    } = scratch;
    // The union of the down spans within the period, in order.
    down.clear();
    down.extend(
        ci.down
            .iter()
            .map(|d| d.0.intersect(period))
            .filter(|s| !s.is_empty()),
    );
    down.sort_unstable();
    let mut merged = 0;
    for i in 0..down.len() {
        let s = down[i];
        if merged > 0 && s.start <= down[merged - 1].end {
            down[merged - 1].end = down[merged - 1].end.max(s.end);
        } else {
            down[merged] = s;
            merged += 1;
        }
    }
    down.truncate(merged);
    // Membership of an instant within the period is the same clipped or not.
    let maint = match kind {
        Kind::Contractual => Some(&ci.maintenance),
        Kind::Experienced => None,
    };
    cuts.clear();
    cuts.extend([period.start, period.end]);
    for s in down.iter().copied() {
        cuts.extend([s.start, s.end]);
    }
    let lifetime = ci.exists.iter().flat_map(|e| e.within(period));
    for s in maint
        .into_iter()
        .flat_map(|m| m.within(period))
        .chain(ci.known.within(period))
        .chain(lifetime)
    {
        cuts.extend([s.start, s.end]);
    }
    degraded.clear();
    degraded.extend(
        ci.degraded
            .iter()
            .map(|&(s, w, _)| (s.intersect(period), w.clamp(0.0, 1.0)))
            .filter(|(s, _)| !s.is_empty()),
    );
    for (s, _) in degraded.iter() {
        cuts.extend([s.start, s.end]);
    }
    cuts.sort_unstable();
    cuts.dedup();
    // The cuts are in order: each membership is a cursor moving forward.
    let mut in_maint = maint.map(|m| Cursor::new(m.as_slice()));
    let mut in_down = Cursor::new(down);
    let mut in_life = ci.exists.as_ref().map(|e| Cursor::new(e.as_slice()));
    let mut in_known = Cursor::new(ci.known.as_slice());
    for w in cuts.windows(2) {
        let piece = Span::new(w[0], w[1]);
        let t = piece.start;
        let (maintained, is_down) = (
            in_maint.as_mut().is_some_and(|m| m.contains(t)),
            in_down.contains(t),
        );
        let (alive, known) = (
            in_life.as_mut().is_none_or(|e| e.contains(t)),
            in_known.contains(t),
        );
        let state = if maintained {
            CiState::Maintenance
        } else if is_down {
            CiState::Down
        } else if let Some(weight) = degraded
            .iter()
            .filter(|(s, _)| s.start <= t && t < s.end)
            .map(|&(_, w)| w)
            .reduce(f64::max)
        {
            CiState::Degraded(weight)
        } else if !alive {
            CiState::Absent
        } else if known {
            CiState::Up
        } else {
            CiState::Unknown
        };
        match out.last_mut() {
            Some((s, st)) if *st == state && s.end == piece.start => s.end = piece.end,
            _ => out.push((piece, state)),
        }
    }
}

/// The number of fixed CI state codes (`Counts::code`); degraded weights come after them.
const FIXED_CODES: usize = 5;

/// Counts of CIs per state while sweeping. A state is a small code (the sweep's events are
/// `(time, from, to)` of 16 bytes, sorted once): the five fixed states, then one code per
/// distinct degraded weight (the weights of an SLA's `degraded_when`: a handful).
struct Counts {
    by_code: Vec<u32>,
    weights: Vec<f64>,
}

impl Counts {
    fn new(unknown: u32) -> Counts {
        let mut by_code = vec![0; FIXED_CODES];
        by_code[Counts::code_fixed(CiState::Unknown)] = unknown;
        Counts {
            by_code,
            weights: Vec::new(),
        }
    }

    fn code_fixed(s: CiState) -> usize {
        match s {
            CiState::Absent => 0,
            CiState::Unknown => 1,
            CiState::Up => 2,
            CiState::Down => 3,
            CiState::Maintenance => 4,
            CiState::Degraded(_) => unreachable!("degraded states have a code per weight"),
        }
    }

    /// The code of `s`, adding one for a weight not seen yet.
    fn code(&mut self, s: CiState) -> u16 {
        let code = match s {
            CiState::Degraded(w) => {
                let k = match self
                    .weights
                    .iter()
                    .position(|&x| x.to_bits() == w.to_bits())
                {
                    Some(k) => k,
                    None => {
                        self.weights.push(w);
                        self.by_code.push(0);
                        self.weights.len() - 1
                    }
                };
                FIXED_CODES + k
            }
            s => Counts::code_fixed(s),
        };
        u16::try_from(code).unwrap_or(u16::MAX)
    }

    fn add(&mut self, code: u16, delta: i32) {
        if let Some(c) = self.by_code.get_mut(usize::from(code)) {
            *c = c.saturating_add_signed(delta);
        }
    }

    fn service(&self, combine: Combine, cis: u32) -> ServiceState {
        let [absent, unknown, up, down, maintenance] = [0, 1, 2, 3, 4].map(|i| self.by_code[i]);
        let present = cis.saturating_sub(absent);
        if present == 0 {
            return ServiceState::Unknown;
        }
        if maintenance == present {
            return ServiceState::Excluded;
        }
        let degraded = &self.by_code[FIXED_CODES..];
        let degraded_n: u32 = degraded.iter().sum();
        let worst_degraded = degraded
            .iter()
            .zip(&self.weights)
            .filter(|(&n, _)| n > 0)
            .map(|(_, &w)| w)
            .reduce(f64::max);
        match combine {
            Combine::All => {
                if down > 0 {
                    ServiceState::Down
                } else if let Some(w) = worst_degraded {
                    ServiceState::Degraded(w)
                } else if unknown > 0 {
                    ServiceState::Unknown
                } else {
                    ServiceState::Up
                }
            }
            Combine::Quorum(n) => {
                let up_n = up + maintenance + degraded_n;
                if up_n >= n {
                    // Up; a degraded CI the quorum needs degrades the service.
                    match worst_degraded {
                        Some(w) if up + maintenance < n => ServiceState::Degraded(w),
                        _ => ServiceState::Up,
                    }
                } else if up_n + unknown < n {
                    ServiceState::Down
                } else {
                    ServiceState::Unknown
                }
            }
        }
    }
}

/// The figures of `period` for a service of `cis`, in one view, within `schedule` (the service
/// time of the period; pass the whole period for the experienced view).
pub fn compute(
    cis: &[CiTimeline],
    period: Span,
    schedule: &Spans,
    kind: Kind,
    combine: Combine,
) -> Figures {
    States::sweep(cis, period, kind, combine).figures(cis, period, schedule, true)
}

/// The service's state over a period, piece by piece: one sweep over the state changes of
/// every CI. The figures of any part of the period are read from it without sweeping again
/// (a report's daily series sweeps once, not once a day).
#[derive(Debug, Clone)]
pub struct States {
    period: Span,
    /// Contiguous, in time order, covering `period`.
    pieces: Vec<(Span, ServiceState)>,
}

impl States {
    pub fn sweep(cis: &[CiTimeline], period: Span, kind: Kind, combine: Combine) -> States {
        let mut service: Vec<(Span, ServiceState)> = Vec::new();
        if period.is_empty() {
            return States {
                period,
                pieces: service,
            };
        }
        // Every CI starts unknown at the period's start; events move it between states. All
        // events at one instant are applied before the state is read: their order is free.
        let n = u32::try_from(cis.len()).unwrap_or(u32::MAX);
        let mut counts = Counts::new(n);
        let unknown = counts.code(CiState::Unknown);
        // Each CI's first piece starts at the period's start: counted here, not an event.
        let bound: usize = cis
            .iter()
            .map(|c| {
                let maint = c.maintenance.as_slice().len();
                let exists = c.exists.as_ref().map_or(0, |e| e.as_slice().len());
                2 * (c.down.len() + c.degraded.len() + maint + c.known.as_slice().len() + exists)
            })
            .sum();
        let mut events: Vec<(i64, u16, u16)> = Vec::with_capacity(bound);
        let mut scratch = Scratch::default();
        let mut cut = Vec::new();
        for ci in cis {
            pieces(ci, period, kind, &mut scratch, &mut cut);
            let mut prev = unknown;
            for &(span, state) in &cut {
                let code = counts.code(state);
                if span.start <= period.start {
                    counts.add(prev, -1);
                    counts.add(code, 1);
                } else {
                    events.push((span.start, prev, code));
                }
                prev = code;
            }
        }
        events.sort_unstable_by_key(|e| e.0);
        let mut i = 0;
        let mut t = period.start;
        while t < period.end {
            while i < events.len() && events[i].0 <= t {
                let (_, from, to) = events[i];
                counts.add(from, -1);
                counts.add(to, 1);
                i += 1;
            }
            let next = events.get(i).map_or(period.end, |e| e.0.min(period.end));
            let state = counts.service(combine, n);
            match service.last_mut() {
                Some((s, st)) if *st == state => s.end = next,
                _ => service.push((Span::new(t, next), state)),
            }
            t = next;
        }
        States {
            period,
            pieces: service,
        }
    }

    /// The figures of `period` (within the swept one; what lies outside is not measured),
    /// within `schedule`; with the outages and their incidents when `outages`.
    pub fn figures(
        &self,
        cis: &[CiTimeline],
        period: Span,
        schedule: &Spans,
        outages: bool,
    ) -> Figures {
        let period = period.intersect(self.period);
        let scheduled = schedule.clip(period);
        let mut fig = Figures {
            scheduled_ms: scheduled.total(),
            ..Figures::default()
        };
        if period.is_empty() {
            return fig;
        }
        // Measure each piece within the period and the schedule.
        let first = self.pieces.partition_point(|(s, _)| s.end <= period.start);
        let mut measured = 0i64;
        let mut down_spans = Vec::new();
        for (span, state) in &self.pieces[first..] {
            if span.start >= period.end {
                break;
            }
            let span = span.intersect(period);
            let len = scheduled.clip_total(span);
            if len == 0 {
                continue;
            }
            match *state {
                ServiceState::Up => fig.up_ms += len as f64,
                ServiceState::Down => {
                    fig.down_ms += len as f64;
                    down_spans.push(span);
                }
                ServiceState::Degraded(w) => {
                    fig.down_ms += w * len as f64;
                    fig.degraded_ms += w * len as f64;
                    fig.up_ms += (1.0 - w) * len as f64;
                }
                ServiceState::Unknown => fig.unknown_ms += len,
                ServiceState::Excluded => fig.excluded_ms += len,
            }
            if matches!(
                state,
                ServiceState::Up | ServiceState::Down | ServiceState::Degraded(_)
            ) {
                measured += len;
            }
        }
        let total = fig.up_ms + fig.down_ms;
        fig.availability = (total > 0.0).then(|| fig.up_ms / total);
        let owed = fig.scheduled_ms - fig.excluded_ms;
        fig.coverage = (owed > 0).then(|| measured as f64 / owed as f64);
        if outages {
            // Service downtime within the schedule, with the incidents that overlap it.
            let downtime = Spans::from_unsorted(down_spans).intersect(&scheduled);
            fig.outages = attribute(cis, &downtime);
        }
        fig
    }
}

/// Each span of `downtime` as an outage, with the down incidents of `cis` that overlap it
/// (each incident found by binary search among the disjoint, ordered spans).
fn attribute(cis: &[CiTimeline], downtime: &Spans) -> Vec<Outage> {
    let spans = downtime.as_slice();
    let mut incidents: Vec<Vec<i64>> = vec![Vec::new(); spans.len()];
    for &(s, id) in cis.iter().flat_map(|ci| ci.down.iter()) {
        let mut i = spans.partition_point(|o| o.end <= s.start);
        while i < spans.len() && spans[i].start < s.end {
            if s.overlaps(spans[i]) {
                incidents[i].push(id);
            }
            i += 1;
        }
    }
    spans
        .iter()
        .zip(incidents)
        .map(|(&span, mut incidents)| {
            incidents.sort_unstable();
            incidents.dedup();
            Outage { span, incidents }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: i64 = 3_600_000;

    fn sp(a: i64, b: i64) -> Span {
        Span::new(a * H, b * H)
    }

    fn known(a: i64, b: i64) -> Spans {
        Spans::one(sp(a, b))
    }

    fn ci(down: &[(i64, i64, i64)]) -> CiTimeline {
        CiTimeline {
            known: known(0, 100).into(),
            down: down.iter().map(|&(a, b, id)| (sp(a, b), id)).collect(),
            ..CiTimeline::default()
        }
    }

    fn all(period: Span) -> Spans {
        Spans::one(period)
    }

    #[test]
    fn overlapping_incidents_on_one_ci_count_their_union_once() {
        let c = ci(&[(10, 14, 1), (12, 16, 2), (30, 31, 3)]);
        let p = sp(0, 100);
        let f = compute(&[c], p, &all(p), Kind::Experienced, Combine::All);
        assert_eq!(f.down_ms, (7 * H) as f64);
        assert_eq!(f.up_ms, (93 * H) as f64);
        assert_eq!(f.availability, Some(0.93));
        assert_eq!(f.outages.len(), 2);
        assert_eq!(
            f.outages[0],
            Outage {
                span: sp(10, 16),
                incidents: vec![1, 2]
            }
        );
        assert_eq!(f.longest_outage_ms(), 6 * H);
        assert_eq!(f.mtbf_ms(), Some((93 * H) as f64 / 2.0));
        assert_eq!(f.coverage, Some(1.0));
    }

    #[test]
    fn maintenance_is_excluded_from_the_contractual_view_only() {
        let mut c = ci(&[(10, 20, 1)]);
        c.maintenance = Spans::one(sp(8, 15)).into();
        let p = sp(0, 100);
        let exp = compute(
            std::slice::from_ref(&c),
            p,
            &all(p),
            Kind::Experienced,
            Combine::All,
        );
        let con = compute(&[c], p, &all(p), Kind::Contractual, Combine::All);
        assert_eq!(exp.down_ms, (10 * H) as f64);
        assert_eq!(
            con.down_ms,
            (5 * H) as f64,
            "only 15..20 is contractual downtime"
        );
        assert_eq!(
            con.excluded_ms,
            7 * H,
            "the only CI was in maintenance 8..15"
        );
        assert_eq!(con.up_ms, (88 * H) as f64);
        assert_eq!(con.availability, Some(88.0 / 93.0));
    }

    #[test]
    fn time_outside_the_schedule_counts_neither_way() {
        let c = ci(&[(5, 15, 1)]);
        let p = sp(0, 24);
        let schedule = Spans::one(sp(8, 18));
        let f = compute(&[c], p, &schedule, Kind::Contractual, Combine::All);
        assert_eq!(f.scheduled_ms, 10 * H);
        assert_eq!(f.down_ms, (7 * H) as f64);
        assert_eq!(f.up_ms, (3 * H) as f64);
        assert_eq!(
            f.outages,
            vec![Outage {
                span: sp(8, 15),
                incidents: vec![1]
            }]
        );
    }

    #[test]
    fn time_without_data_is_unknown_never_up() {
        let c = CiTimeline {
            known: known(50, 100).into(),
            down: vec![(sp(40, 55), 9)],
            ..CiTimeline::default()
        };
        let p = sp(0, 100);
        let f = compute(&[c], p, &all(p), Kind::Experienced, Combine::All);
        // 40..55 down (an incident decides, with or without data), 0..40 unknown, 55..100 up.
        assert_eq!(f.unknown_ms, 40 * H);
        assert_eq!(f.down_ms, (15 * H) as f64);
        assert_eq!(f.up_ms, (45 * H) as f64);
        assert_eq!(f.coverage, Some(0.6));
        assert_eq!(f.availability, Some(0.75));
    }

    #[test]
    fn a_quorum_tolerates_a_minority_down() {
        let a = ci(&[(10, 20, 1)]);
        let b = ci(&[(15, 25, 2)]);
        let c = ci(&[]);
        let p = sp(0, 100);
        let cis = [a, b, c];
        let any = compute(&cis, p, &all(p), Kind::Experienced, Combine::All);
        assert_eq!(
            any.down_ms,
            (15 * H) as f64,
            "down while any is down: 10..25"
        );
        let two = compute(&cis, p, &all(p), Kind::Experienced, Combine::Quorum(2));
        assert_eq!(
            two.down_ms,
            (5 * H) as f64,
            "below 2 up only while both are down: 15..20"
        );
        assert_eq!(
            two.outages,
            vec![Outage {
                span: sp(15, 20),
                incidents: vec![1, 2]
            }]
        );
        let one = compute(&cis, p, &all(p), Kind::Experienced, Combine::Quorum(1));
        assert_eq!(one.down_ms, 0.0);
    }

    #[test]
    fn a_quorum_is_unknown_while_unknown_cis_could_still_reach_it() {
        let a = ci(&[(10, 20, 1)]);
        let silent = CiTimeline::default();
        let p = sp(0, 100);
        let f = compute(
            &[a, silent],
            p,
            &all(p),
            Kind::Experienced,
            Combine::Quorum(1),
        );
        assert_eq!(
            f.unknown_ms,
            10 * H,
            "a down and the other unknown: could be up"
        );
        assert_eq!(f.up_ms, (90 * H) as f64);
        let g = compute(
            &[ci(&[(10, 20, 1)]), CiTimeline::default()],
            p,
            &all(p),
            Kind::Experienced,
            Combine::Quorum(2),
        );
        assert_eq!(g.down_ms, (10 * H) as f64, "a down: 2 cannot be reached");
    }

    #[test]
    fn degraded_time_counts_by_its_weight_and_down_wins_over_it() {
        let mut c = ci(&[(30, 40, 1)]);
        c.degraded = vec![(sp(10, 20), 0.5, 2), (sp(15, 35), 0.25, 3)];
        let p = sp(0, 100);
        let f = compute(&[c], p, &all(p), Kind::Experienced, Combine::All);
        // 10..20 at 0.5, 20..30 at 0.25, 30..40 down.
        let want_down = 5.0 * H as f64 + 2.5 * H as f64 + 10.0 * H as f64;
        assert!((f.down_ms - want_down).abs() < 1e-6, "{}", f.down_ms);
        assert!((f.degraded_ms - 7.5 * H as f64).abs() < 1e-6);
        assert!((f.up_ms + f.down_ms - (100 * H) as f64).abs() < 1e-6);
        assert_eq!(f.outages.len(), 1, "degradation is not an outage");
    }

    #[test]
    fn precision_is_kept_and_window_edges_clip() {
        // 0.005 % of 100 h down = 18 s: 99.995 %, never rounded to 100 %.
        let c = CiTimeline {
            known: Spans::one(Span::new(-10 * H, 200 * H)).into(),
            down: vec![(Span::new(-H, 18_000), 1)],
            ..CiTimeline::default()
        };
        let p = sp(0, 100);
        let f = compute(&[c], p, &all(p), Kind::Experienced, Combine::All);
        assert_eq!(f.availability, Some(0.99995));
        assert_eq!(
            f.outages[0].span,
            Span::new(0, 18_000),
            "clipped to the window"
        );
    }

    #[test]
    fn a_ci_that_did_not_exist_yet_is_not_part_of_the_service() {
        let old = ci(&[]);
        let young = CiTimeline {
            exists: Some(Spans::one(sp(50, 100))),
            down: vec![(sp(60, 61), 4)],
            ..ci(&[])
        };
        let p = sp(0, 100);
        let cis = [old, young];
        let f = compute(&cis, p, &all(p), Kind::Experienced, Combine::All);
        assert_eq!(
            f.unknown_ms, 0,
            "absent before it was first seen, not unknown"
        );
        assert_eq!(f.down_ms, H as f64);
        assert_eq!(f.coverage, Some(1.0));
        let q = compute(&cis, p, &all(p), Kind::Experienced, Combine::Quorum(2));
        assert_eq!(
            q.down_ms,
            (51 * H) as f64,
            "two up are needed: only one exists until 50"
        );
        let alone = CiTimeline {
            exists: Some(Spans::one(sp(50, 100))),
            ..ci(&[])
        };
        let g = compute(&[alone], p, &all(p), Kind::Experienced, Combine::All);
        assert_eq!(g.unknown_ms, 50 * H, "a service with no CI yet is unknown");
    }

    #[test]
    fn every_ci_in_maintenance_excludes_the_time_for_the_service() {
        let mut a = ci(&[]);
        let mut b = ci(&[(0, 100, 7)]);
        a.maintenance = Spans::one(sp(0, 10)).into();
        b.maintenance = Spans::one(sp(0, 10)).into();
        let p = sp(0, 100);
        let f = compute(&[a, b], p, &all(p), Kind::Contractual, Combine::All);
        assert_eq!(f.excluded_ms, 10 * H);
        assert_eq!(f.down_ms, (90 * H) as f64);
        assert_eq!(f.coverage, Some(1.0));
    }

    /// Figures read from one sweep of a long stretch equal those of a sweep of each part
    /// (the daily series and the burn windows are read that way): many CIs with overlapping
    /// down, degraded, maintenance, data and lifetime spans, both views, both combinations,
    /// parts that cut through every kind of span, with and without a schedule.
    #[test]
    fn one_sweep_gives_the_figures_of_every_part() {
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = |n: i64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % n as u64) as i64
        };
        let minute = 60_000;
        let len = 10 * 24 * H;
        let mut cis = Vec::new();
        for id in 0..40 {
            let mut spans = |count: usize, max: i64| -> Vec<Span> {
                (0..count)
                    .map(|_| {
                        let a = next(len);
                        Span::new(a, a + 1 + next(max))
                    })
                    .collect()
            };
            let down = spans(6, 4 * H);
            let degraded = spans(4, 6 * H);
            let maintenance = spans(2, 3 * H);
            let known = spans(5, 3 * 24 * H);
            let exists = (id % 4 == 0).then(|| Spans::from_unsorted(spans(1, 8 * 24 * H)));
            cis.push(CiTimeline {
                exists,
                known: Spans::from_unsorted(known).into(),
                down: down.into_iter().map(|s| (s, id)).collect(),
                degraded: degraded.into_iter().map(|s| (s, 0.25, 100 + id)).collect(),
                maintenance: Spans::from_unsorted(maintenance).into(),
            });
        }
        let whole = Span::new(0, len);
        let office = Spans::from_unsorted(
            (0..10)
                .map(|d| Span::new(d * 24 * H + 8 * H, d * 24 * H + 18 * H))
                .collect(),
        );
        for combine in [Combine::All, Combine::Quorum(30)] {
            for kind in [Kind::Contractual, Kind::Experienced] {
                let states = States::sweep(&cis, whole, kind, combine);
                for _ in 0..30 {
                    let a = next(len);
                    let part = Span::new(a, (a + 1 + next(3 * 24 * H)).min(len));
                    let part = Span::new(part.start / minute * minute + next(minute), part.end);
                    for schedule in [Spans::one(part), office.clip(part)] {
                        let alone = compute(&cis, part, &schedule, kind, combine);
                        let read = states.figures(&cis, part, &schedule, true);
                        assert_eq!(read, alone, "{kind:?} {combine:?} {part:?}");
                    }
                }
            }
        }
    }
}
