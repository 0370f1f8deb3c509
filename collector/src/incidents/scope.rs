//! Which CI a sample belongs to, and whether a rule's or window's scope covers it.
//!
//! A host metric belongs to the host CI (key `host`) unless its labels name a child: `mountpoint`
//! -> `filesystem`, `interface` -> `network_interface`, `device` -> `disk`, `check` -> `check` (a
//! check is not a CMDB item; its incidents carry the check name as key and no CI id).

use std::collections::BTreeMap;

use vigil_shared::inventory::ci_type;

use serde::{Deserialize, Serialize};
use vigil_shared::config::{Diagnostics, Spanned};

/// Which CIs something applies to. Every given criterion must match; an empty scope matches all.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Scope {
    /// CI type (`host`, `filesystem`, ...).
    pub ci_type: Option<String>,
    /// A tag the CI's host carries, `(key, value)` from `tag = "key=value"`.
    pub tag: Option<(String, String)>,
    /// Host name glob (`db-*`).
    pub host: Option<glob::Pattern>,
    /// One CI by id.
    pub ci: Option<String>,
}

/// A `scope` table as written (rules, SLAs, maintenance windows).
#[derive(Debug, Default, Deserialize)]
pub(crate) struct RawScope {
    #[serde(rename = "type")]
    pub(crate) ci_type: Option<Spanned<String>>,
    tag: Option<Spanned<String>>,
    host: Option<Spanned<String>>,
    ci: Option<Spanned<String>>,
}

/// `None` when a criterion is invalid (errors recorded).
pub(crate) fn convert_scope(d: &mut Diagnostics, raw: Option<&RawScope>) -> Option<Scope> {
    let Some(raw) = raw else {
        return Some(Scope::default());
    };
    let mut ok = true;
    let ci_type = raw.ci_type.as_ref().and_then(|t| {
        let v = d.parse_value(t, |s| {
            if !s.is_empty()
                && s.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
            {
                Ok(s.clone())
            } else {
                Err(format!(
                    "invalid CI type {s:?}: expected a name like \"host\" or \"filesystem\""
                ))
            }
        });
        ok &= v.is_some();
        v
    });
    let tag = raw.tag.as_ref().and_then(|t| {
        let v = d.parse_value(t, |s| match s.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() && !v.trim().is_empty() => {
                Ok((k.trim().to_string(), v.trim().to_string()))
            }
            _ => Err(format!(
                "invalid tag {s:?}: expected \"key=value\", e.g. \"role=web\""
            )),
        });
        ok &= v.is_some();
        v
    });
    let host = raw.host.as_ref().and_then(|h| {
        let v = d.parse_value(h, |s| {
            glob::Pattern::new(s).map_err(|e| format!("invalid host glob {s:?}: {}", e.msg))
        });
        ok &= v.is_some();
        v
    });
    let ci = raw.ci.as_ref().and_then(|c| {
        let v = d.parse_value(c, |s| {
            if s.trim().is_empty() {
                Err("`ci` must not be empty".to_string())
            } else {
                Ok(s.clone())
            }
        });
        ok &= v.is_some();
        v
    });
    ok.then_some(Scope {
        ci_type,
        tag,
        host,
        ci,
    })
}

/// The stored form of a [`Scope`].
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScopeJson {
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub ci_type: Option<String>,
    /// `key=value`
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// Host name glob.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ci: Option<String>,
}

impl ScopeJson {
    pub fn from_scope(s: &Scope) -> ScopeJson {
        ScopeJson {
            ci_type: s.ci_type.clone(),
            tag: s.tag.as_ref().map(|(k, v)| format!("{k}={v}")),
            host: s.host.as_ref().map(|g| g.as_str().to_string()),
            ci: s.ci.clone(),
        }
    }

    /// Validates into a [`Scope`]; the message names the bad field.
    pub fn to_scope(&self) -> Result<Scope, String> {
        let tag = match &self.tag {
            None => None,
            Some(t) => match t.split_once('=') {
                Some((k, v)) if !k.trim().is_empty() && !v.trim().is_empty() => {
                    Some((k.trim().to_string(), v.trim().to_string()))
                }
                _ => return Err(format!("invalid tag {t:?}: expected \"key=value\"")),
            },
        };
        let host = match &self.host {
            None => None,
            Some(h) => Some(
                glob::Pattern::new(h).map_err(|e| format!("invalid host glob {h:?}: {}", e.msg))?,
            ),
        };
        Ok(Scope {
            ci_type: self.ci_type.clone(),
            tag,
            host,
            ci: self.ci.clone(),
        })
    }
}

/// The pseudo CI type of a local check.
pub const CHECK: &str = "check";

/// The labels that name a child CI of the host, in the order they win (a filesystem sample
/// carries its device too: the mountpoint names the CI). The one mapping from metrics to CIs:
/// [`ci_of`] (a sample's CI) and [`metric_ci_type`] (the CI type a metric's samples have) both
/// read it.
pub const CI_LABELS: [(&str, &str); 4] = [
    ("mountpoint", ci_type::FILESYSTEM),
    ("interface", ci_type::NETWORK_INTERFACE),
    ("check", CHECK),
    ("device", ci_type::DISK),
];

/// `(ci type, ci key)` of a sample with these labels.
pub fn ci_of(labels: &[(String, String)]) -> (&'static str, &str) {
    for (label, ty) in CI_LABELS {
        if let Some((_, value)) = labels.iter().find(|(name, _)| name == label) {
            return (ty, value);
        }
    }
    (ci_type::HOST, ci_type::HOST)
}

/// The CI type the samples of `metric` (a rule's metric name) belong to.
pub fn metric_ci_type(metric: &str) -> &'static str {
    let labels: &[&str] = if metric.starts_with("check_") {
        &["check"]
    } else {
        vigil_shared::metric_names::host_metric(metric).map_or(&[][..], |m| m.labels)
    };
    CI_LABELS
        .iter()
        .find(|(label, _)| labels.contains(label))
        .map_or(ci_type::HOST, |(_, ty)| ty)
}

/// The `'static` name of a CI type read back from the store (unknown ones read as `host`).
pub fn static_ci_type(t: &str) -> &'static str {
    ci_type::DISCOVERED
        .iter()
        .copied()
        .chain([CHECK])
        .find(|k| *k == t)
        .unwrap_or(ci_type::HOST)
}

/// What a scope is matched against.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    pub hostname: &'a str,
    pub tags: &'a BTreeMap<String, String>,
    pub ci_type: &'a str,
    pub ci_id: Option<i64>,
}

/// The parts of a scope that depend only on the host (name glob, tag).
pub fn host_matches(scope: &Scope, hostname: &str, tags: &BTreeMap<String, String>) -> bool {
    scope.host.as_ref().is_none_or(|g| g.matches(hostname))
        && scope
            .tag
            .as_ref()
            .is_none_or(|(k, v)| tags.get(k).is_some_and(|have| have == v))
}

/// The parts of a scope that depend only on the CI (type, id).
pub fn ci_matches(scope: &Scope, ci_type: &str, ci_id: Option<i64>) -> bool {
    scope.ci_type.as_deref().is_none_or(|want| want == ci_type)
        && scope
            .ci
            .as_deref()
            .is_none_or(|want| ci_id.is_some_and(|id| want == id.to_string()))
}

/// Every given criterion of `scope` matches `t` (an empty scope matches everything).
pub fn matches(scope: &Scope, t: &Target<'_>) -> bool {
    host_matches(scope, t.hostname, t.tags) && ci_matches(scope, t.ci_type, t.ci_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn sample_labels_name_the_ci() {
        let check = |l: &[(&str, &str)], want: (&str, &str)| {
            let l = labels(l);
            assert_eq!(ci_of(&l), want);
        };
        check(&[], ("host", "host"));
        check(&[("mountpoint", "/var")], ("filesystem", "/var"));
        check(&[("interface", "eth0")], ("network_interface", "eth0"));
        check(&[("check", "nginx")], ("check", "nginx"));
        check(&[("device", "sda")], ("disk", "sda"));
        check(
            &[("device", "/dev/sda1"), ("mountpoint", "/")],
            ("filesystem", "/"),
        );
    }

    #[test]
    fn metrics_belong_to_the_ci_type_their_labels_name() {
        for (metric, want) in [
            ("filesystem_used_ratio", "filesystem"),
            ("network_receive_bytes_total", "network_interface"),
            ("check_up", "check"),
            ("check_latency_seconds", "check"),
            ("load1", "host"),
            ("up", "host"),
            ("memory_used_ratio", "host"),
        ] {
            assert_eq!(metric_ci_type(metric), want, "{metric}");
        }
        assert_eq!(static_ci_type("filesystem"), "filesystem");
        assert_eq!(static_ci_type("check"), "check");
        assert_eq!(static_ci_type("nonsense"), "host");
    }

    #[test]
    fn scopes_match_every_given_criterion() {
        let tags = BTreeMap::from([("role".to_string(), "web".to_string())]);
        let t = Target {
            hostname: "web-1",
            tags: &tags,
            ci_type: "filesystem",
            ci_id: Some(7),
        };
        let scope = |host: Option<&str>, tag: Option<(&str, &str)>, ty: Option<&str>, ci| Scope {
            host: host.map(|h| glob::Pattern::new(h).expect("glob")),
            tag: tag.map(|(k, v)| (k.to_string(), v.to_string())),
            ci_type: ty.map(str::to_string),
            ci,
        };
        assert!(matches(&Scope::default(), &t));
        assert!(matches(
            &scope(
                Some("web-*"),
                Some(("role", "web")),
                Some("filesystem"),
                Some("7".into())
            ),
            &t
        ));
        assert!(!matches(&scope(Some("db-*"), None, None, None), &t));
        assert!(!matches(&scope(None, Some(("role", "db")), None, None), &t));
        assert!(!matches(&scope(None, None, Some("host"), None), &t));
        assert!(!matches(&scope(None, None, None, Some("8".into())), &t));
    }
}
