//! The Alertmanager webhook on arbitrary bodies: `incidents::alertmanager::parse` and `map`
//! (the mapping keeps its bounds), then the same body through the real handler
//! (`POST /api/v1/alertmanager` on the collector's router over a seeded store): its status is
//! the one the parse result calls for (200, 400 not JSON, 422 not the payload) and never a 500,
//! and its counts add up.
//!
//! Input: one or two bodies separated by a NUL byte (the second sees what the first did: reopen
//! and resolve). Every iteration starts without incidents.
#![no_main]

use axum::http::Method;
use libfuzzer_sys::fuzz_target;
use vigil_collector::incidents::alertmanager::{
    self as am, PayloadError, DEDUP_PREFIX, MAX_FINGERPRINT_BYTES, MAX_LABELS, MAX_LABEL_BYTES,
    MAX_RULE_CHARS, MAX_TITLE_CHARS,
};
use vigil_fuzz::{lock, API};

const NOW: i64 = 1_800_000_000_000;

fn check_mapping(p: &am::Payload) {
    for a in &p.alerts {
        let m = am::map(a, NOW);
        assert!(!m.fingerprint.is_empty() && m.fingerprint.len() <= MAX_FINGERPRINT_BYTES);
        assert_eq!(m.dedup_key, format!("{DEDUP_PREFIX}{}", m.fingerprint));
        assert!(!m.rule.is_empty() && m.rule.chars().count() <= MAX_RULE_CHARS);
        assert!(m.title.chars().count() <= MAX_TITLE_CHARS);
        assert!(m.labels.len() <= MAX_LABELS);
        for (k, v) in &m.labels {
            assert!(k.len() <= MAX_LABEL_BYTES && v.len() <= MAX_LABEL_BYTES);
        }
        assert!(m.at_ms <= NOW, "a time after now");
        assert!(m.hosts.iter().all(|h| !h.is_empty() && h.trim() == h));
        assert_eq!(m.status, a.status);
    }
}

fn post(body: &[u8]) {
    let parsed = am::parse(body);
    if let Ok(p) = &parsed {
        check_mapping(p);
    }
    let api = &*API;
    let answer = api.request(
        Method::POST,
        "/api/v1/alertmanager",
        &api.operator,
        body.to_vec(),
    );
    let text = String::from_utf8_lossy(&answer.body);
    let json: serde_json::Value = serde_json::from_slice(&answer.body)
        .unwrap_or_else(|e| panic!("the answer is not JSON ({e}): {text}"));
    let want = match &parsed {
        Ok(_) => 200,
        Err(PayloadError::Syntax(_)) => 400,
        Err(_) => 422,
    };
    assert_eq!(answer.status, want, "{parsed:?}: {text}");
    if let Ok(p) = parsed {
        let n = |k: &str| {
            json[k]
                .as_u64()
                .unwrap_or_else(|| panic!("no {k} in {text}"))
        };
        assert_eq!(n("received"), p.alerts.len() as u64);
        assert_eq!(
            n("opened") + n("reopened") + n("resolved") + n("unchanged") + n("flapping"),
            n("received") - n("superseded"),
            "{text}"
        );
        assert!(n("problems") <= n("received"));
    }
}

fuzz_target!(|data: &[u8]| {
    let api = &*API;
    {
        let side = lock(&api.side);
        side.execute_batch(
            "DELETE FROM notifications; DELETE FROM incident_events; DELETE FROM incidents;",
        )
        .expect("wipe the incidents");
    }
    for body in data.splitn(2, |b| *b == 0) {
        post(body);
    }
});
