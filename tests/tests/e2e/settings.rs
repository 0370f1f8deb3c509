//! Settings the collector pushes: `[agents] interval` overrides the agent's own interval.

use std::time::{Duration, Instant};

use crate::harness::*;

#[test]
fn collector_pushes_the_sampling_interval() {
    let dir = tempfile::tempdir().expect("tempdir");
    let any = "127.0.0.1:0".parse().expect("addr");
    let collector = spawn_collector_with(
        &dir.path().join("c"),
        any,
        any,
        "[agents]\ninterval = \"1s\"\n",
    );
    let token = enroll_token(&collector.data_dir, &[]);
    let agent_dir = dir.path().join("a");
    // The agent asks for 60 s; the collector's 1 s must win.
    let _agent = spawn_agent(collector.quic, Some(&token), &agent_dir, "60s");
    let id = wait_until(Duration::from_secs(20), "enrollment", || {
        agent_id(&agent_dir)
    });
    let store = open_store(&collector.data_dir);
    let count = || -> i64 {
        store
            .query_row(
                "SELECT COUNT(*) FROM batches WHERE agent_id = ?1",
                [&id],
                |r| r.get(0),
            )
            .unwrap_or(0)
    };
    wait_until(Duration::from_secs(20), "first batch", || {
        (count() >= 1).then_some(())
    });
    let start = Instant::now();
    wait_until(
        Duration::from_secs(20),
        "four more batches at the pushed 1 s interval",
        || (count() >= 5).then_some(()),
    );
    assert!(
        start.elapsed() < Duration::from_secs(15),
        "batches came every {:?}",
        start.elapsed() / 4
    );
}
