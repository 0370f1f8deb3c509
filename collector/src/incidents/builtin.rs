//! The built-in rules, on by default: host unreachable, check down, filesystem almost full,
//! memory almost full, inventory stale. Each is an ordinary [`Rule`] evaluated like any other; a
//! `[[rule]]` with the same name replaces it and `[incidents] disable = [...]` (or
//! `builtin_rules = false`) switches them off.
//!
//! Three metrics are derived by the collector rather than sent by agents: [`UP`] (1 while the
//! agent is connected and heard from within `down_after_intervals` intervals, 0 once it is silent
//! or its connection was lost without a goodbye), [`MEMORY_USED_RATIO`] (used / total memory of
//! the same batch) and [`INVENTORY_STALE`] (1 once the host's CIs went stale, 0 when it reports
//! again).

use std::collections::BTreeMap;
use std::time::Duration;

use super::rule::{Level, Rule, Threshold};
use super::scope::Scope;

pub const UP: &str = "up";
pub const MEMORY_USED_RATIO: &str = "memory_used_ratio";
pub const INVENTORY_STALE: &str = "inventory_stale";

pub const HOST_UNREACHABLE: &str = "host-unreachable";
pub const CHECK_DOWN: &str = "check-down";
pub const FILESYSTEM_FULL: &str = "filesystem-full";
pub const MEMORY_FULL: &str = "memory-full";
pub const INVENTORY_STALE_RULE: &str = "inventory-stale";

/// Names of the built-in rules.
pub const NAMES: &[&str] = &[
    HOST_UNREACHABLE,
    CHECK_DOWN,
    FILESYSTEM_FULL,
    MEMORY_FULL,
    INVENTORY_STALE_RULE,
];

fn rule(
    name: &str,
    metric: &str,
    threshold: Threshold,
    clear: f64,
    hold: Duration,
    (impact, urgency): (Level, Level),
    ci_type: &str,
) -> Rule {
    Rule {
        name: name.to_string(),
        metric: metric.to_string(),
        threshold,
        clear,
        hold,
        impact,
        urgency,
        scope: Scope {
            ci_type: Some(ci_type.to_string()),
            ..Scope::default()
        },
        labels: BTreeMap::from([("builtin".to_string(), "true".to_string())]),
    }
}

/// Every built-in rule with its defaults.
pub fn rules() -> Vec<Rule> {
    use Level::{High, Low, Medium};
    let min = |m: u64| Duration::from_secs(60 * m);
    vec![
        rule(
            HOST_UNREACHABLE,
            UP,
            Threshold::Below(1.0),
            1.0,
            Duration::ZERO,
            (High, High),
            "host",
        ),
        rule(
            CHECK_DOWN,
            vigil_shared::metric_names::CHECK_UP,
            Threshold::Below(1.0),
            1.0,
            Duration::from_secs(30),
            (Medium, High),
            "check",
        ),
        rule(
            FILESYSTEM_FULL,
            vigil_shared::metric_names::FILESYSTEM_USED_RATIO,
            Threshold::Above(0.90),
            0.85,
            min(5),
            (Medium, Medium),
            "filesystem",
        ),
        rule(
            MEMORY_FULL,
            MEMORY_USED_RATIO,
            Threshold::Above(0.95),
            0.90,
            min(5),
            (Medium, Medium),
            "host",
        ),
        rule(
            INVENTORY_STALE_RULE,
            INVENTORY_STALE,
            Threshold::Above(0.5),
            0.5,
            Duration::ZERO,
            (Low, Medium),
            "host",
        ),
    ]
}

/// The rules in force: the built-in ones (when `builtin_on`) not disabled nor replaced by an own
/// rule of the same name, then every own rule (`[[rule]]`).
pub fn effective(own: &[Rule], builtin_on: bool, disable: &[String]) -> Vec<Rule> {
    let mut out = Vec::new();
    if builtin_on {
        for r in rules() {
            let replaced = own.iter().any(|o| o.name == r.name);
            if !replaced && !disable.contains(&r.name) {
                out.push(r);
            }
        }
    }
    out.extend(own.iter().cloned());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(own: &[Rule], on: bool, disable: &[&str]) -> Vec<String> {
        let disable: Vec<String> = disable.iter().map(|s| s.to_string()).collect();
        effective(own, on, &disable)
            .into_iter()
            .map(|r| r.name)
            .collect()
    }

    #[test]
    fn builtins_can_be_replaced_disabled_or_switched_off() {
        assert_eq!(names(&[], true, &[]), NAMES);
        let mut own = rules().remove(1);
        own.hold = Duration::from_secs(1);
        let own = [own];
        assert_eq!(
            names(&own, true, &[MEMORY_FULL]),
            [
                HOST_UNREACHABLE,
                FILESYSTEM_FULL,
                INVENTORY_STALE_RULE,
                CHECK_DOWN
            ]
        );
        assert_eq!(effective(&own, true, &[])[4].hold, Duration::from_secs(1));
        assert_eq!(names(&own, false, &[]), [CHECK_DOWN]);
    }

    #[test]
    fn builtin_clear_is_on_the_good_side() {
        for r in rules() {
            match r.threshold {
                Threshold::Above(t) => assert!(r.clear <= t, "{}", r.name),
                Threshold::Below(t) => assert!(r.clear >= t, "{}", r.name),
            }
        }
    }
}
