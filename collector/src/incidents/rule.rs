//! Threshold rules: the [`Rule`] model (`[[rule]]`, built-in rules, API rules), its validation
//! from the configuration's raw form or from JSON, and the ITIL priority matrix.
//!
//! One validation for every source: `[[rule]]` in a configuration file and `POST
//! /api/v1/rules` go through [`convert_rule`], so they accept and refuse the same things with the
//! same messages.
//!
//! This module never does I/O.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;
use vigil_shared::config::{self as cfg, Diagnostics, Spanned};
use vigil_shared::metric_names;

use super::scope::{convert_scope, Scope};

/// ITIL impact or urgency.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Level {
    High,
    Medium,
    Low,
}

impl Level {
    pub fn as_str(self) -> &'static str {
        match self {
            Level::High => "high",
            Level::Medium => "medium",
            Level::Low => "low",
        }
    }

    pub fn parse(s: &str) -> Result<Level, String> {
        match s {
            "high" => Ok(Level::High),
            "medium" => Ok(Level::Medium),
            "low" => Ok(Level::Low),
            _ => Err(format!(
                "invalid level {s:?}: expected \"high\", \"medium\" or \"low\""
            )),
        }
    }
}

/// ITIL priority matrix: high=1, medium=2, low=3; priority = impact + urgency - 1 (P1 critical ..
/// P5 planning).
pub fn priority(impact: Level, urgency: Level) -> u8 {
    fn rank(l: Level) -> u8 {
        match l {
            Level::High => 1,
            Level::Medium => 2,
            Level::Low => 3,
        }
    }
    rank(impact) + rank(urgency) - 1
}

/// `P1`..`P5` (or `1`..`5`).
pub fn parse_priority(s: &str) -> Result<u8, String> {
    let digits = s.strip_prefix(['P', 'p']).unwrap_or(s);
    match digits.parse::<u8>() {
        Ok(p @ 1..=5) => Ok(p),
        _ => Err(format!(
            "invalid priority {s:?}: expected P1 (critical) .. P5 (planning)"
        )),
    }
}

/// Which side of the threshold is the bad one.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Threshold {
    Above(f64),
    Below(f64),
}

/// A threshold rule (`[[rule]]`).
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    pub name: String,
    /// Host metric name without the `vigil_host_` prefix, or `check_up` / `check_latency_seconds`.
    pub metric: String,
    pub threshold: Threshold,
    /// Hysteresis: an open incident resolves only once the value is back past this. Always on
    /// the good side of the threshold (equal to it when `clear` was not given).
    pub clear: f64,
    /// The breach must hold this long before an incident opens (`for`).
    pub hold: Duration,
    pub impact: Level,
    pub urgency: Level,
    pub scope: Scope,
    pub labels: BTreeMap<String, String>,
}

impl Rule {
    /// True when `value` is on the bad side of the threshold.
    pub fn breached(&self, value: f64) -> bool {
        match self.threshold {
            Threshold::Above(t) => value > t,
            Threshold::Below(t) => value < t,
        }
    }

    /// True when `value` is back past `clear` (an open incident may resolve).
    pub fn cleared(&self, value: f64) -> bool {
        match self.threshold {
            Threshold::Above(_) => value <= self.clear,
            Threshold::Below(_) => value >= self.clear,
        }
    }
}

/// `[[rule]]` as written (see [`convert_rule`]).
#[derive(Debug, Deserialize)]
pub(crate) struct RawRule {
    name: Option<Spanned<String>>,
    metric: Option<Spanned<String>>,
    above: Option<Spanned<f64>>,
    below: Option<Spanned<f64>>,
    clear: Option<Spanned<f64>>,
    #[serde(rename = "for")]
    hold: Option<Spanned<String>>,
    impact: Option<Spanned<String>>,
    urgency: Option<Spanned<String>>,
    scope: Option<super::scope::RawScope>,
    #[serde(default)]
    // Keys cannot be `Spanned` (serde_ignored reads map keys as plain strings); key errors are
    // reported at the value.
    labels: BTreeMap<String, Spanned<String>>,
}

/// Names a metric a rule may watch.
pub fn known_metric(name: &str) -> bool {
    metric_names::host_metric(name).is_some()
        || [
            metric_names::CHECK_UP,
            metric_names::CHECK_LATENCY_SECONDS,
            super::builtin::UP,
            super::builtin::MEMORY_USED_RATIO,
            super::builtin::INVENTORY_STALE,
        ]
        .contains(&name)
}

fn finite(d: &mut Diagnostics, v: &Spanned<f64>, key: &str) -> Option<f64> {
    d.parse_value(v, |&x| {
        if x.is_finite() {
            Ok(x)
        } else {
            Err(format!("`{key}` must be a finite number"))
        }
    })
}

/// Validates one `[[rule]]`; `unique` registers its name (false when taken, the error recorded).
pub(crate) fn convert_rule(
    raw: &Spanned<RawRule>,
    unique: &mut dyn FnMut(&Spanned<String>, &mut Diagnostics) -> bool,
    d: &mut Diagnostics,
) -> Option<Rule> {
    let (span, r) = (raw.span(), raw.get_ref());
    let mut ok = true;
    let name = cfg::object_name(d, span.clone(), "rule", r.name.as_ref());
    if let Some(n) = &name {
        ok &= unique(n, d);
    }

    let metric = match &r.metric {
        Some(m) if known_metric(m.get_ref()) => Some(m.get_ref().clone()),
        Some(m) => {
            let known: Vec<&str> = metric_names::HOST_METRICS.iter().map(|m| m.name).collect();
            d.error_at(
                m,
                format!(
                    "unknown metric {:?}: expected a host metric name without the vigil_host_ prefix \
                     ({}), check_up, check_latency_seconds, or one the collector derives: up, \
                     memory_used_ratio, inventory_stale",
                    m.get_ref(),
                    known.join(", ")
                ),
            );
            None
        }
        None => {
            d.missing(span.clone(), "metric", "[[rule]] is missing `metric`");
            None
        }
    };

    let threshold = match (&r.above, &r.below) {
        (Some(a), None) => finite(d, a, "above").map(Threshold::Above),
        (None, Some(b)) => finite(d, b, "below").map(Threshold::Below),
        (Some(_), Some(b)) => {
            d.error_at(b, "give either `above` or `below`, not both");
            None
        }
        (None, None) => {
            if !d.mistyped(&span, "above") && !d.mistyped(&span, "below") {
                d.error(
                    span.clone(),
                    "[[rule]] needs a threshold: `above` or `below`",
                );
            }
            None
        }
    };

    let clear = match (&r.clear, threshold) {
        (None, Some(Threshold::Above(t) | Threshold::Below(t))) => Some(t),
        (Some(raw_clear), Some(t)) => finite(d, raw_clear, "clear").and_then(|c| match t {
            Threshold::Above(a) if c >= a => {
                d.error_at(raw_clear, format!("`clear` ({c}) must be below `above` ({a}): it is where the incident resolves"));
                None
            }
            Threshold::Below(b) if c <= b => {
                d.error_at(raw_clear, format!("`clear` ({c}) must be above `below` ({b}): it is where the incident resolves"));
                None
            }
            _ => Some(c),
        }),
        (_, None) => None,
    };

    let hold = d.duration_or(r.hold.as_ref(), Duration::ZERO);
    let impact = level(d, r.impact.as_ref());
    let urgency = level(d, r.urgency.as_ref());
    let scope = convert_scope(d, r.scope.as_ref());
    // A metric belongs to one CI type; a scope naming another could never match.
    if let (Some(m), Some(t)) = (&metric, r.scope.as_ref().and_then(|s| s.ci_type.as_ref())) {
        let natural = super::scope::metric_ci_type(m);
        if t.get_ref() != natural {
            d.error_at(
                t,
                format!(
                    "metric {m:?} belongs to CIs of type \"{natural}\", so a rule scoped to type {:?} would never fire",
                    t.get_ref()
                ),
            );
            ok = false;
        }
    }

    let mut labels = BTreeMap::new();
    for (k, v) in &r.labels {
        if !cfg::is_label_name(k) {
            d.error_at(
                v,
                format!(
                    "invalid label name {k:?}: use [a-zA-Z_][a-zA-Z0-9_]*, not starting with __"
                ),
            );
            ok = false;
        }
        labels.insert(k.clone(), v.get_ref().clone());
    }

    match (name, metric, threshold, clear, impact, urgency, scope) {
        (
            Some(name),
            Some(metric),
            Some(threshold),
            Some(clear),
            Some(impact),
            Some(urgency),
            Some(scope),
        ) if ok => Some(Rule {
            name: name.into_inner(),
            metric,
            threshold,
            clear,
            hold,
            impact,
            urgency,
            scope,
            labels,
        }),
        _ => None,
    }
}

fn level(d: &mut Diagnostics, v: Option<&Spanned<String>>) -> Option<Level> {
    match v {
        Some(v) => d.parse_value(v, |s| Level::parse(s)),
        None => Some(Level::Medium),
    }
}

/// What the JSON form of a rule is wrapped in to be read like a configuration file.
#[derive(Debug, Deserialize)]
struct RuleDocument {
    #[serde(default)]
    rule: Vec<Spanned<RawRule>>,
}

/// Validates one rule given as JSON (the API's body, the same keys as `[[rule]]`) with exactly the
/// checks of the configuration file. Errors come back as messages without positions.
pub fn rule_from_json(v: &serde_json::Value) -> Result<Rule, Vec<String>> {
    let serde_json::Value::Object(_) = v else {
        return Err(vec!["a rule must be a JSON object".into()]);
    };
    let table = toml::Value::try_from(v).map_err(|e| vec![format!("not a valid rule: {e}")])?;
    let doc = toml::Value::Table(toml::map::Map::from_iter([(
        "rule".to_string(),
        toml::Value::Array(vec![table]),
    )]));
    let text = toml::to_string(&doc).map_err(|e| vec![format!("not a valid rule: {e}")])?;
    let messages = |e: cfg::ConfigErrors| e.0.into_iter().map(|e| e.message).collect::<Vec<_>>();
    let (raw, mut d) = cfg::parse::<RuleDocument>("rule", &text).map_err(messages)?;
    let rule = match raw.rule.as_slice() {
        [one] => convert_rule(one, &mut |_, _| true, &mut d),
        _ => return Err(vec!["a rule must be a JSON object".into()]),
    };
    match d.finish(rule).map_err(messages)? {
        Some(rule) => Ok(rule),
        None => Err(vec!["not a valid rule".into()]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn priority_matrix() {
        use Level::*;
        let cells = [
            (High, High, 1),
            (High, Medium, 2),
            (High, Low, 3),
            (Medium, High, 2),
            (Medium, Medium, 3),
            (Medium, Low, 4),
            (Low, High, 3),
            (Low, Medium, 4),
            (Low, Low, 5),
        ];
        for (impact, urgency, p) in cells {
            assert_eq!(priority(impact, urgency), p, "{impact:?}/{urgency:?}");
        }
    }

    #[test]
    fn json_rules_are_checked_like_configured_ones() {
        let ok = rule_from_json(&serde_json::json!({
            "name": "load", "metric": "load1", "above": 4, "for": "1m",
            "scope": {"host": "web-*"}
        }))
        .expect("valid");
        assert_eq!(
            (ok.threshold, ok.hold, ok.clear),
            (Threshold::Above(4.0), Duration::from_secs(60), 4.0)
        );
        let bad = rule_from_json(&serde_json::json!({
            "name": "x", "metric": "nope", "above": "high", "colour": 1
        }))
        .expect_err("invalid");
        assert_eq!(bad.len(), 3, "{bad:?}");
        assert!(
            bad.iter().any(|m| m.contains("unknown key `colour`")),
            "{bad:?}"
        );
        assert!(
            bad.iter().any(|m| m.contains("unknown metric \"nope\"")),
            "{bad:?}"
        );
        assert!(bad.iter().any(|m| m.contains("invalid type")), "{bad:?}");
        assert!(rule_from_json(&serde_json::json!([1])).is_err());
    }
}
