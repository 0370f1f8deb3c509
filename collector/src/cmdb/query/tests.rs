//! Pure helpers of the CMDB queries and manual-data validation, and the plans of CI lists.

use std::collections::BTreeMap;

use rusqlite::params_from_iter;
use rusqlite::types::Value as SqlValue;

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

/// The `EXPLAIN QUERY PLAN` details of `sql`, one per line.
fn plan(db: &Db, sql: &str, params: &[SqlValue]) -> String {
    let mut stmt = db
        .conn()
        .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
        .expect("explain");
    let rows = stmt
        .query_map(params_from_iter(params), |r| r.get::<_, String>(3))
        .expect("plan rows");
    rows.collect::<rusqlite::Result<Vec<_>>>()
        .expect("plan")
        .join("\n")
}

/// Type-filtered lists page by id through an index in id order (`cis_type_id`, or
/// `cis_type_state` with a state) instead of sorting every CI of the type, and count through a
/// covering index without the view's joins. Plans, not timings: the planner has no statistics,
/// so an empty store plans as a full one.
#[test]
fn type_filtered_lists_use_an_index_in_id_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = Db::open(dir.path()).expect("open");
    let filter = |types: &[&str], states: &[CiState]| CiFilter {
        types: types.iter().map(|t| (*t).to_owned()).collect(),
        states: states.to_vec(),
        ..CiFilter::default()
    };
    // `page` and `count` must each appear in the plan's lines.
    let check = |filter: CiFilter, paging: Paging, page: &str, count: &str, sorted: bool| {
        let q = list_sql(db.conn(), &filter, 100, paging).expect("sql");
        let page_plan = plan(&db, &q.page, &q.page_params);
        assert!(
            page_plan.contains(page),
            "{filter:?} {paging:?}:\n{page_plan}"
        );
        assert_eq!(
            page_plan.contains("TEMP B-TREE"),
            sorted,
            "{filter:?} {paging:?}:\n{page_plan}"
        );
        let count_plan = plan(&db, &q.count, &q.count_params);
        assert!(count_plan.contains(count), "{filter:?}:\n{count_plan}");
        assert!(!count_plan.contains("inventory_state"), "{count_plan}");
    };
    let package = ["package"];
    check(
        filter(&package, &[]),
        Paging::Offset(0),
        "SEARCH c USING INDEX cis_type_id (type=?)",
        "SEARCH c USING COVERING INDEX cis_type_id (type=?)",
        false,
    );
    check(
        filter(&package, &[]),
        Paging::After(1000),
        "SEARCH c USING INDEX cis_type_id (type=? AND id>?)",
        "SEARCH c USING COVERING INDEX cis_type_id (type=?)",
        false,
    );
    check(
        filter(&package, &[CiState::Active]),
        Paging::After(1000),
        "SEARCH c USING INDEX cis_type_state (type=? AND state=? AND rowid>?)",
        "SEARCH c USING COVERING INDEX cis_type_state (type=? AND state=?)",
        false,
    );
    check(
        filter(&[], &[]),
        Paging::After(1000),
        "SEARCH c USING INTEGER PRIMARY KEY (rowid>?)",
        "SCAN cis USING COVERING INDEX",
        false,
    );
    // Several types: one index range each, merged by a sort.
    check(
        filter(&["package", "host"], &[]),
        Paging::Offset(0),
        "SEARCH c USING INDEX cis_type_id (type=?)",
        "SEARCH c USING COVERING INDEX cis_type_id (type=?)",
        true,
    );
}
