//! Error-budget alerts: multi-window, multi-burn-rate (the SRE workbook), scaled to the SLA's
//! window as Sloth does, plus the budget running out. Each alert is an incident of a built-in
//! rule on the SLA (CI type `sla`, key = the SLA's name), opened and resolved by the incident
//! engine from the burn rates the "SLA figures" task computes.
//!
//! | rule | fires when | resolves when | priority |
//! |---|---|---|---|
//! | `sla-burn-page` | burn over 1h and 5m > 14.4 f, or over 6h and 30m > 6 f | both short windows (5m, 30m) are back at or below their thresholds | P2 |
//! | `sla-burn-ticket` | burn over 1d and 2h > 3 f, or over 3d and 6h > 1 f | both short windows (2h, 6h) are back | P4 |
//! | `sla-budget-exhausted` | the window's error budget remaining ≤ 0 | it is above 0 again (a new period, a recomputed past) | P3 |
//!
//! `f` = the SLA's window / 30 days: the workbook's thresholds spend 2 %, 5 %, 10 % and 10 % of
//! a 30-day budget in the long window; for another window the same shares of its own budget.
//! Nothing here reads the clock or the store.

use super::metrics::BURN_WINDOWS;
use crate::incidents::rule::Level;

pub const PAGE: &str = "sla-burn-page";
pub const TICKET: &str = "sla-burn-ticket";
pub const EXHAUSTED: &str = "sla-budget-exhausted";
/// The rule names of the SLA alerts.
pub const NAMES: [&str; 3] = [PAGE, TICKET, EXHAUSTED];
/// The CI type of the SLA alert incidents (their key is the SLA's name).
pub const CI_TYPE: &str = "sla";

/// What the alerts are decided from: one SLA's figures as of now.
#[derive(Debug, Clone, PartialEq)]
pub struct Burn {
    pub sla: String,
    /// Burn rates over [`BURN_WINDOWS`], in that order; `None` when nothing was measured.
    pub rates: [Option<f64>; 7],
    /// The error budget left in the SLA's current window (ratio); `None` without a budget.
    pub budget_remaining: Option<f64>,
    /// The length of the SLA's current window.
    pub window_ms: i64,
}

/// One alert's decision.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub rule: &'static str,
    pub firing: bool,
    /// The value shown: the burn rate of the short window that decides (or the budget left).
    pub value: Option<f64>,
    pub threshold: f64,
    pub impact: Level,
    pub urgency: Level,
    pub title: String,
}

/// (long window, short window, share of the budget) by index into [`BURN_WINDOWS`].
const PAGE_PAIRS: [(usize, usize, f64); 2] = [(2, 0, 0.02), (4, 1, 0.05)];
const TICKET_PAIRS: [(usize, usize, f64); 2] = [(5, 3, 0.10), (6, 4, 0.10)];

/// The burn rate above which `share` of the window's budget goes in `long_secs`.
pub fn threshold(share: f64, window_ms: i64, long_secs: u64) -> f64 {
    share * window_ms as f64 / (long_secs as f64 * 1000.0)
}

/// The three alerts of one SLA; `active` says which are open now ([`NAMES`] order), as an
/// open alert resolves on its short windows alone.
pub fn evaluate(burn: &Burn, active: [bool; 3]) -> [Decision; 3] {
    let pairs = |pairs: &[(usize, usize, f64); 2], active: bool| -> (bool, Option<f64>, f64) {
        let mut firing = false;
        let mut shown = None;
        let mut shown_threshold = threshold(pairs[0].2, burn.window_ms, BURN_WINDOWS[pairs[0].0].1);
        for &(long, short, share) in pairs {
            let t = threshold(share, burn.window_ms, BURN_WINDOWS[long].1);
            let above = |i: usize| burn.rates[i].is_some_and(|r| r > t);
            let fires = if active {
                above(short)
            } else {
                above(long) && above(short)
            };
            if fires && !firing {
                firing = true;
                shown = burn.rates[short];
                shown_threshold = t;
            }
        }
        if !firing {
            shown = burn.rates[pairs[0].1];
        }
        (firing, shown, shown_threshold)
    };
    let (page, page_v, page_t) = pairs(&PAGE_PAIRS, active[0]);
    let (ticket, ticket_v, ticket_t) = pairs(&TICKET_PAIRS, active[1]);
    let exhausted = burn.budget_remaining.is_some_and(|r| r <= 0.0);
    let name = &burn.sla;
    let rate = |v: Option<f64>| v.map_or_else(|| "?".to_string(), |v| format!("{v:.1}"));
    [
        Decision {
            rule: PAGE,
            firing: page,
            value: page_v,
            threshold: page_t,
            impact: Level::High,
            urgency: Level::Medium,
            title: format!(
                "SLA {name}: error budget burning fast ({}x, page above {page_t:.1}x)",
                rate(page_v)
            ),
        },
        Decision {
            rule: TICKET,
            firing: ticket,
            value: ticket_v,
            threshold: ticket_t,
            impact: Level::Medium,
            urgency: Level::Low,
            title: format!(
                "SLA {name}: error budget burning ({}x, ticket above {ticket_t:.2}x)",
                rate(ticket_v)
            ),
        },
        Decision {
            rule: EXHAUSTED,
            firing: exhausted,
            value: burn.budget_remaining,
            threshold: 0.0,
            impact: Level::Medium,
            urgency: Level::Medium,
            title: format!("SLA {name}: error budget exhausted"),
        },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 86_400_000;

    fn burn(rates: [Option<f64>; 7]) -> Burn {
        Burn {
            sla: "web".into(),
            rates,
            budget_remaining: Some(0.5),
            window_ms: 30 * DAY,
        }
    }

    fn firing(d: &[Decision; 3]) -> [bool; 3] {
        [d[0].firing, d[1].firing, d[2].firing]
    }

    #[test]
    fn thresholds_are_the_workbooks_for_30_days_and_scale_with_the_window() {
        let t = |share, window, long| (threshold(share, window, long) * 1000.0).round() / 1000.0;
        assert_eq!(t(0.02, 30 * DAY, 3600), 14.4);
        assert_eq!(t(0.05, 30 * DAY, 21_600), 6.0);
        assert_eq!(t(0.10, 30 * DAY, 86_400), 3.0);
        assert_eq!(t(0.10, 30 * DAY, 259_200), 1.0);
        // A 7-day window: the same shares of its (smaller) budget.
        assert_eq!(t(0.02, 7 * DAY, 3600), 3.36);
        assert_eq!(t(0.10, 7 * DAY, 259_200), 0.233);
    }

    #[test]
    fn a_page_needs_both_windows_and_resolves_on_the_short_one() {
        //                 5m        30m   1h          2h    6h    1d    3d
        let fast = burn([Some(20.0), None, Some(15.0), None, None, None, None]);
        let d = evaluate(&fast, [false; 3]);
        assert_eq!(firing(&d), [true, false, false]);
        assert_eq!((d[0].value, d[0].threshold), (Some(20.0), 14.4));
        assert_eq!(
            d[0].title,
            "SLA web: error budget burning fast (20.0x, page above 14.4x)"
        );
        // A spike in the short window alone does not page, nor a long window alone.
        let spike = burn([Some(50.0), None, Some(2.0), None, None, None, None]);
        assert_eq!(firing(&evaluate(&spike, [false; 3])), [false; 3]);
        let past = burn([Some(0.0), None, Some(30.0), None, None, None, None]);
        assert_eq!(firing(&evaluate(&past, [false; 3])), [false; 3]);
        // Open: it stays while the short window burns, though the long one fell below...
        let open = burn([Some(20.0), None, Some(10.0), None, None, None, None]);
        assert_eq!(
            firing(&evaluate(&open, [true, false, false])),
            [true, false, false]
        );
        // ...and resolves once the short window recovered, though the long one is still high.
        assert_eq!(firing(&evaluate(&past, [true, false, false])), [false; 3]);
        // The second pair: 6h and 30m above 6.
        let slow = burn([Some(0.0), Some(7.0), Some(1.0), None, Some(6.5), None, None]);
        let d = evaluate(&slow, [false; 3]);
        assert_eq!(firing(&d), [true, false, false]);
        assert_eq!((d[0].value, d[0].threshold), (Some(7.0), 6.0));
    }

    #[test]
    fn tickets_and_an_exhausted_budget() {
        let slow = burn([
            Some(0.0),
            Some(0.0),
            Some(0.0),
            Some(3.5),
            Some(0.5),
            Some(3.2),
            Some(0.5),
        ]);
        assert_eq!(firing(&evaluate(&slow, [false; 3])), [false, true, false]);
        let slower = burn([None, None, None, Some(0.0), Some(1.2), Some(0.9), Some(1.1)]);
        assert_eq!(firing(&evaluate(&slower, [false; 3])), [false, true, false]);
        // Open, resolved when both short windows are back.
        let back = burn([None, None, None, Some(0.5), Some(0.5), Some(3.2), Some(1.1)]);
        assert_eq!(firing(&evaluate(&back, [false, true, false])), [false; 3]);
        let mut spent = burn([None; 7]);
        spent.budget_remaining = Some(-0.1);
        assert_eq!(firing(&evaluate(&spent, [false; 3])), [false, false, true]);
        spent.budget_remaining = Some(0.0);
        assert_eq!(firing(&evaluate(&spent, [false; 3])), [false, false, true]);
        spent.budget_remaining = Some(0.01);
        assert_eq!(firing(&evaluate(&spent, [false, false, true])), [false; 3]);
        // Nothing measured: nothing fires.
        let mut none = burn([None; 7]);
        none.budget_remaining = None;
        assert_eq!(firing(&evaluate(&none, [false; 3])), [false; 3]);
    }
}
