//! Pure helpers of the CMDB queries and manual-data validation.

use std::collections::BTreeMap;

use super::manual::{valid_tag_key, Manual, ManualPatch, WriteError};
use super::*;

#[test]
fn like_patterns_escape_wildcards() {
    fn check(input: &str, expected: &str) {
        assert_eq!(like_pattern(input), expected, "{input}");
    }
    check("nginx", "%nginx%");
    check("50%", "%50\\%%");
    check("a_b", "%a\\_b%");
    check("c:\\x", "%c:\\\\x%");
    check("", "%%");
}

#[test]
fn tag_keys() {
    fn check(key: &str, ok: bool) {
        assert_eq!(valid_tag_key(key), ok, "{key:?}");
    }
    check("role", true);
    check("app.kubernetes.io/name", true);
    check("", false);
    check("a=b", false);
    check("a\"b", false);
    check("a,b", false);
    check("a\\b", false);
    check("tab\there", false);
    check(&"k".repeat(64), true);
    check(&"k".repeat(65), false);
    assert_eq!(tag_path("role"), "$.tags.\"role\"");
}

#[test]
fn directions() {
    for d in [Direction::Out, Direction::In, Direction::Both] {
        assert_eq!(Direction::parse(d.as_str()), Some(d));
    }
    assert_eq!(Direction::parse("up"), None);
    assert_eq!(Direction::parse("OUT"), None);
}

fn patch(json: serde_json::Value) -> ManualPatch {
    serde_json::from_value(json).expect("patch parses")
}

fn base() -> Manual {
    Manual {
        owner: Some("team-web".into()),
        criticality: Some(3),
        tags: BTreeMap::from([("tier".to_owned(), "gold".to_owned())]),
        vendor: None,
    }
}

#[test]
fn manual_patches_set_clear_and_keep() {
    fn check(json: serde_json::Value, expected: Result<Manual, &str>) {
        let got = patch(json.clone()).apply(&base());
        match (got, expected) {
            (Ok(m), Ok(e)) => assert_eq!(m, e, "{json}"),
            (Err(WriteError::Invalid(m)), Err(e)) => assert!(m.contains(e), "{json}: {m}"),
            (got, expected) => panic!("{json}: got {got:?}, expected {expected:?}"),
        }
    }
    check(serde_json::json!({}), Ok(base()));
    check(
        serde_json::json!({"owner": null, "vendor": " ACME ", "criticality": 1}),
        Ok(Manual {
            owner: None,
            criticality: Some(1),
            vendor: Some("ACME".into()),
            ..base()
        }),
    );
    check(
        serde_json::json!({"tags": {"env": "prod"}}),
        Ok(Manual {
            tags: BTreeMap::from([("env".to_owned(), "prod".to_owned())]),
            ..base()
        }),
    );
    check(
        serde_json::json!({"tags": null, "criticality": null}),
        Ok(Manual {
            tags: BTreeMap::new(),
            criticality: None,
            ..base()
        }),
    );
    check(serde_json::json!({"criticality": 0}), Err("from 1 to 5"));
    check(serde_json::json!({"criticality": 6}), Err("from 1 to 5"));
    check(serde_json::json!({"criticality": -1}), Err("from 1 to 5"));
    check(
        serde_json::json!({"owner": "  "}),
        Err("owner must not be empty"),
    );
    check(
        serde_json::json!({"vendor": "a\nb"}),
        Err("control characters"),
    );
    check(
        serde_json::json!({"owner": "x".repeat(201)}),
        Err("longer than 200"),
    );
    check(
        serde_json::json!({"tags": {"a=b": "x"}}),
        Err("invalid tag key"),
    );
    check(
        serde_json::json!({"tags": {"k": "v".repeat(257)}}),
        Err("invalid value of tag"),
    );
}

#[test]
fn manual_patch_shape_is_strict() {
    fn check(json: serde_json::Value) {
        assert!(
            serde_json::from_value::<ManualPatch>(json.clone()).is_err(),
            "{json} should not parse"
        );
    }
    check(serde_json::json!({"color": "red"}));
    check(serde_json::json!({"criticality": "high"}));
    check(serde_json::json!({"criticality": 2.5}));
    check(serde_json::json!({"tags": {"k": 1}}));
    check(serde_json::json!({"owner": 5}));
}

#[test]
fn manual_attributes_read_back_with_every_key() {
    let m: Manual = serde_json::from_str(r#"{"owner":"x"}"#).expect("parse");
    assert_eq!(
        serde_json::to_value(&m).expect("json"),
        serde_json::json!({"owner": "x", "criticality": null, "tags": {}, "vendor": null})
    );
}
