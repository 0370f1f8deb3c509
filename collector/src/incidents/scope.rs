//! Which CI a sample belongs to, and whether a rule's or window's scope covers it.
//!
//! A host metric belongs to the host CI (key `host`) unless its labels name a child: `mountpoint`
//! -> `filesystem`, `interface` -> `network_interface`, `device` -> `disk`, `check` -> `check` (a
//! check is not a CMDB item; its incidents carry the check name as key and no CI id).

use std::collections::BTreeMap;

use vigil_shared::inventory::ci_type;

use crate::config::Scope;

/// The pseudo CI type of a local check.
pub const CHECK: &str = "check";

/// `(ci type, ci key)` of a sample with these labels.
pub fn ci_of(labels: &[(String, String)]) -> (&'static str, &str) {
    // A filesystem sample carries its device too: the mountpoint names the CI.
    let mut device = None;
    for (name, value) in labels {
        match name.as_str() {
            "mountpoint" => return (ci_type::FILESYSTEM, value),
            "interface" => return (ci_type::NETWORK_INTERFACE, value),
            "check" => return (CHECK, value),
            "device" => device = Some(value.as_str()),
            _ => {}
        }
    }
    match device {
        Some(d) => (ci_type::DISK, d),
        None => (ci_type::HOST, ci_type::HOST),
    }
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

/// Every given criterion of `scope` matches `t` (an empty scope matches everything).
pub fn matches(scope: &Scope, t: &Target<'_>) -> bool {
    host_matches(scope, t.hostname, t.tags)
        && scope
            .ci_type
            .as_deref()
            .is_none_or(|want| want == t.ci_type)
        && scope
            .ci
            .as_deref()
            .is_none_or(|want| t.ci_id.is_some_and(|id| want == id.to_string()))
}

/// The effective tags of a host CI: discovered `attrs.tags`, overridden by manual
/// `manual_attrs.tags`.
pub fn host_tags(attrs: &str, manual_attrs: Option<&str>) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for text in std::iter::once(attrs).chain(manual_attrs) {
        let Ok(serde_json::Value::Object(obj)) = serde_json::from_str::<serde_json::Value>(text)
        else {
            continue;
        };
        if let Some(serde_json::Value::Object(tags)) = obj.get("tags") {
            for (k, v) in tags {
                let v = match v {
                    serde_json::Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                out.insert(k.clone(), v);
            }
        }
    }
    out
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

    #[test]
    fn manual_tags_override_discovered_ones() {
        let tags = host_tags(
            r#"{"tags": {"role": "web", "env": "prod"}}"#,
            Some(r#"{"tags": {"env": "staging"}}"#),
        );
        assert_eq!(tags.get("role").map(String::as_str), Some("web"));
        assert_eq!(tags.get("env").map(String::as_str), Some("staging"));
        assert!(host_tags("not json", None).is_empty());
    }
}
