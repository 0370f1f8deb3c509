//! The query strings of the CMDB and incident list endpoints, through the collector's real
//! router (the handlers' own deserialisation and validation, then the store query) over a
//! seeded store: every answer is JSON, a 200 or a 400 (a 404 only for a CI id that does not
//! exist), never a 500; a page holds at most `limit` items.
//!
//! Input: `[endpoint][CI selector][query string...]`. Bytes a URI cannot carry are
//! percent-encoded, so the handlers see every byte, valid UTF-8 or not.
#![no_main]

use axum::http::Method;
use libfuzzer_sys::fuzz_target;
use vigil_fuzz::API;

/// Bytes that stand as they are in a query (the rest is percent-encoded). `%` stays, so broken
/// escapes reach the parser too.
fn plain(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/?%".contains(&b)
}

fuzz_target!(|data: &[u8]| {
    let [endpoint, ci, query @ ..] = data else {
        return;
    };
    let api = &*API;
    // An existing CI mostly, sometimes one that does not exist.
    let id = api
        .ci_ids
        .get(usize::from(*ci) % (api.ci_ids.len() + 1))
        .copied()
        .unwrap_or(1_000_000);
    let path = match endpoint % 5 {
        0 => "/api/v1/cis".to_owned(),
        1 => format!("/api/v1/cis/{id}/relations"),
        2 => format!("/api/v1/cis/{id}/history"),
        3 => "/api/v1/changes".to_owned(),
        _ => "/api/v1/incidents".to_owned(),
    };
    let mut uri = path.clone();
    uri.push('?');
    for &b in query {
        if plain(b) {
            uri.push(char::from(b));
        } else {
            uri.push_str(&format!("%{b:02X}"));
        }
    }
    let answer = api.request(Method::GET, &uri, &api.viewer, Vec::new());
    let text = String::from_utf8_lossy(&answer.body);
    let json: serde_json::Value = serde_json::from_slice(&answer.body)
        .unwrap_or_else(|e| panic!("GET {uri}: the answer is not JSON ({e}): {text}"));
    let exists = api.ci_ids.contains(&id) || !path.contains("/cis/");
    match answer.status {
        200 => {
            if let Some(items) = json.get("items").and_then(|v| v.as_array()) {
                let limit = json["limit"].as_u64().expect("a page names its limit");
                assert!(
                    items.len() as u64 <= limit,
                    "GET {uri}: {} items, limit {limit}",
                    items.len()
                );
            }
        }
        400 => assert_eq!(json["code"], "bad_request", "GET {uri}: {text}"),
        404 if !exists => {}
        s => panic!("GET {uri}: status {s}: {text}"),
    }
});
