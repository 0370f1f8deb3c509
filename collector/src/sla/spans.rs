//! Half-open time spans `[start, end)` in Unix milliseconds, and sets of them.
//!
//! Every figure of service level management is a length of time: up, down, unknown, excluded.
//! They are computed with these sets, never by counting samples.

/// `[start, end)` in Unix milliseconds; empty when `end <= start`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Span {
    pub start: i64,
    pub end: i64,
}

impl Span {
    pub const fn new(start: i64, end: i64) -> Span {
        Span { start, end }
    }

    pub fn is_empty(&self) -> bool {
        self.end <= self.start
    }

    /// Length in milliseconds (0 when empty).
    pub fn len(&self) -> i64 {
        self.end.saturating_sub(self.start).max(0)
    }

    /// The overlap of two spans (possibly empty).
    pub fn intersect(&self, other: Span) -> Span {
        Span::new(self.start.max(other.start), self.end.min(other.end))
    }

    pub fn overlaps(&self, other: Span) -> bool {
        !self.intersect(other).is_empty()
    }
}

/// Disjoint, non-adjacent, non-empty spans in ascending order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Spans(Vec<Span>);

impl Spans {
    pub fn new() -> Spans {
        Spans(Vec::new())
    }

    /// The union of any spans, in any order, overlapping or not.
    pub fn from_unsorted(mut spans: Vec<Span>) -> Spans {
        spans.retain(|s| !s.is_empty());
        spans.sort_unstable();
        let mut out: Vec<Span> = Vec::with_capacity(spans.len());
        for s in spans {
            match out.last_mut() {
                Some(last) if s.start <= last.end => last.end = last.end.max(s.end),
                _ => out.push(s),
            }
        }
        Spans(out)
    }

    pub fn one(span: Span) -> Spans {
        Spans::from_unsorted(vec![span])
    }

    pub fn iter(&self) -> impl Iterator<Item = &Span> {
        self.0.iter()
    }

    pub fn as_slice(&self) -> &[Span] {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Total length in milliseconds.
    pub fn total(&self) -> i64 {
        self.0.iter().map(Span::len).sum()
    }

    pub fn union(&self, other: &Spans) -> Spans {
        let mut all = self.0.clone();
        all.extend_from_slice(&other.0);
        Spans::from_unsorted(all)
    }

    /// What both cover (a linear merge).
    pub fn intersect(&self, other: &Spans) -> Spans {
        let (a, b) = (&self.0, &other.0);
        let (mut i, mut j) = (0, 0);
        let mut out = Vec::new();
        while i < a.len() && j < b.len() {
            let s = a[i].intersect(b[j]);
            if !s.is_empty() {
                out.push(s);
            }
            if a[i].end <= b[j].end {
                i += 1;
            } else {
                j += 1;
            }
        }
        Spans(out)
    }

    /// What this covers and `other` does not.
    pub fn subtract(&self, other: &Spans) -> Spans {
        let mut out = Vec::new();
        let b = &other.0;
        let mut j = 0;
        for &a in &self.0 {
            let mut cur = a.start;
            while j < b.len() && b[j].end <= cur {
                j += 1;
            }
            let mut k = j;
            while k < b.len() && b[k].start < a.end {
                if b[k].start > cur {
                    out.push(Span::new(cur, b[k].start));
                }
                cur = cur.max(b[k].end);
                k += 1;
            }
            if cur < a.end {
                out.push(Span::new(cur, a.end));
            }
        }
        Spans(out)
    }

    /// The part within `span`.
    pub fn clip(&self, span: Span) -> Spans {
        Spans(self.within(span).collect())
    }

    /// The length of the part within `span` ([`Spans::clip`] without building it).
    pub fn clip_total(&self, span: Span) -> i64 {
        self.within(span).map(|s| s.len()).sum()
    }

    /// The non-empty parts within `span`, found by binary search.
    pub fn within(&self, span: Span) -> impl Iterator<Item = Span> + '_ {
        let first = self.0.partition_point(|s| s.end <= span.start);
        self.0[first..]
            .iter()
            .take_while(move |s| s.start < span.end)
            .map(move |s| s.intersect(span))
            .filter(|s| !s.is_empty())
    }

    /// Whether `t` is covered (binary search).
    pub fn contains(&self, t: i64) -> bool {
        let i = self.0.partition_point(|s| s.end <= t);
        self.0.get(i).is_some_and(|s| s.start <= t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spans(v: &[(i64, i64)]) -> Spans {
        Spans::from_unsorted(v.iter().map(|&(a, b)| Span::new(a, b)).collect())
    }

    #[test]
    fn union_merges_overlapping_and_adjacent_spans_and_drops_empty_ones() {
        let s = spans(&[(10, 20), (0, 5), (5, 7), (15, 30), (40, 40), (50, 45)]);
        assert_eq!(s, Spans(vec![Span::new(0, 7), Span::new(10, 30)]));
        assert_eq!(s.total(), 27);
    }

    #[test]
    fn intersect_and_subtract_agree_with_a_pointwise_model() {
        let a = spans(&[(0, 10), (20, 35), (40, 41), (50, 90)]);
        let b = spans(&[(5, 25), (30, 45), (60, 70), (80, 100)]);
        let i = a.intersect(&b);
        let d = a.subtract(&b);
        for t in -5..105 {
            assert_eq!(
                i.contains(t),
                a.contains(t) && b.contains(t),
                "intersect at {t}"
            );
            assert_eq!(
                d.contains(t),
                a.contains(t) && !b.contains(t),
                "subtract at {t}"
            );
            assert_eq!(
                a.union(&b).contains(t),
                a.contains(t) || b.contains(t),
                "union at {t}"
            );
        }
        assert_eq!(i.total() + d.total(), a.total());
    }

    #[test]
    fn the_extremes_of_i64_do_not_overflow() {
        let s = spans(&[(i64::MIN, i64::MAX)]);
        assert_eq!(s.total(), i64::MAX, "saturates");
        assert_eq!(s.clip(Span::new(0, 10)).total(), 10);
    }
}
