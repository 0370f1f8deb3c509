//! The I/O-free core of an agent session, in the manner of quinn-proto under quinn: what the
//! collector decides for each message an authenticated agent sends (hello, batch, inventory),
//! with every limit and clamp applied where the message is decoded. The tokio shell
//! (`server/mod.rs`) moves bytes and acts on the decisions.
//!
//! Nothing an agent sends is trusted:
//! - **hello**: the interval is clamped to [`Limits::min_interval_ms`] ..
//!   [`Limits::max_interval_ms`] (an interval of 0 means "none given": 10 s); host name, version
//!   and capabilities are cut to bounded lengths and counts;
//! - **batch**: the sequence number must be 1 ..= `i64::MAX` (what the store keeps); the number
//!   of samples is bounded; a sample timestamped before 2000 or more than
//!   [`Limits::max_future_ms`] ahead of the collector's clock, or with an oversized name or
//!   label set, is dropped (the rest of the batch is kept and acknowledged, so one bad sample
//!   cannot wedge an agent's spool);
//! - **inventory**: the numbers of CIs (per agent: `[agents] max_cis`), relations and
//!   connections are bounded; a CI with an oversized type, key or name is dropped, and so is an
//!   attribute with an oversized name or value, or past a CI's attribute count.
//!
//! Every clamp, drop and refusal is counted under `vigil_ingest_rejected_total{reason}` with one
//! of [`reason::ALL`].
//!
//! This module never does I/O, never reads the clock (callers pass `now_ms`) and never panics on
//! what it is given.

use vigil_shared::inventory::{Ci, Inventory, InventoryDelta};
use vigil_shared::proto::{codes, Batch, Hello, Sample};

/// Reasons this module counts (`vigil_ingest_rejected_total{reason}`).
pub mod reason {
    /// A hello's interval outside 1 s .. 1 h (clamped).
    pub const BAD_INTERVAL: &str = "bad_interval";
    /// A hello field longer or larger than allowed (cut).
    pub const BAD_HELLO: &str = "bad_hello";
    /// A batch sequence number of 0 or past `i64::MAX` (the batch is refused).
    pub const BAD_SEQUENCE: &str = "bad_sequence";
    /// A batch with more samples than allowed (refused).
    pub const TOO_MANY_SAMPLES: &str = "too_many_samples";
    /// A sample timestamped before 2000 or too far in the future (dropped).
    pub const BAD_TIMESTAMP: &str = "bad_timestamp";
    /// A sample with an oversized name or label set (dropped).
    pub const BAD_SAMPLE: &str = "bad_sample";
    /// An inventory with more CIs, relations or connections than allowed (refused), or a CI
    /// with an oversized field (dropped).
    pub const BAD_INVENTORY: &str = "bad_inventory";
    /// A hello claiming a host name another enrolled agent already uses (renamed, never merged).
    pub const HOSTNAME_CLASH: &str = "hostname_clash";
    /// A sample that would start a series past the agent's `[agents] max_series` (dropped).
    pub const SERIES_LIMIT: &str = "series_limit";
    /// A sample that would start a check past the agent's `[agents] max_checks` (dropped).
    pub const CHECK_LIMIT: &str = "check_limit";
    /// An inventory that would give the agent more than `[agents] max_cis` CIs (refused), or a
    /// CI attribute past its bounds (dropped).
    pub const CI_LIMIT: &str = "ci_limit";
    /// A frame with no room in the memory budgets for frames in flight (the stream is refused
    /// with `BUSY`; the agent retries).
    pub const MEMORY_BUDGET: &str = "memory_budget";
    /// A frame whose body did not arrive in time once its room was reserved.
    pub const FRAME_TIMEOUT: &str = "frame_timeout";

    pub const ALL: &[&str] = &[
        BAD_INTERVAL,
        BAD_HELLO,
        BAD_SEQUENCE,
        TOO_MANY_SAMPLES,
        BAD_TIMESTAMP,
        BAD_SAMPLE,
        BAD_INVENTORY,
        HOSTNAME_CLASH,
        SERIES_LIMIT,
        CHECK_LIMIT,
        CI_LIMIT,
        MEMORY_BUDGET,
        FRAME_TIMEOUT,
    ];
}

/// Default of `[agents] max_cis`.
pub const DEFAULT_MAX_CIS: usize = 100_000;

/// The bounds applied to what agents send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub min_interval_ms: u64,
    pub max_interval_ms: u64,
    /// The interval of an agent that names none.
    pub default_interval_ms: u64,
    /// How far ahead of the collector's clock a sample may be timestamped.
    pub max_future_ms: i64,
    /// Samples timestamped before this are dropped (2000-01-01).
    pub min_ts_ms: i64,
    pub max_samples: usize,
    pub max_name_bytes: usize,
    pub max_labels: usize,
    pub max_label_name_bytes: usize,
    pub max_label_value_bytes: usize,
    pub max_hostname_chars: usize,
    pub max_version_chars: usize,
    pub max_capabilities: usize,
    pub max_capability_chars: usize,
    /// CIs an agent may have (`[agents] max_cis`); also bounds one message.
    pub max_cis: usize,
    pub max_relations: usize,
    pub max_connections: usize,
    pub max_ci_field_bytes: usize,
    /// Attributes one CI may have.
    pub max_ci_attrs: usize,
    pub max_attr_name_bytes: usize,
    /// Longest attribute value, as JSON.
    pub max_attr_value_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            min_interval_ms: 1_000,
            max_interval_ms: 3_600_000,
            default_interval_ms: 10_000,
            max_future_ms: 10 * 60_000,
            min_ts_ms: 946_684_800_000,
            max_samples: 100_000,
            max_name_bytes: 128,
            max_labels: 16,
            max_label_name_bytes: 128,
            max_label_value_bytes: 1024,
            max_hostname_chars: 255,
            max_version_chars: 64,
            max_capabilities: 64,
            max_capability_chars: 64,
            max_cis: DEFAULT_MAX_CIS,
            max_relations: 1_000_000,
            max_connections: 100_000,
            max_ci_field_bytes: 4096,
            max_ci_attrs: 256,
            max_attr_name_bytes: 128,
            max_attr_value_bytes: 64 * 1024,
        }
    }
}

/// A hello as the collector takes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcceptedHello {
    pub hostname: String,
    pub version: String,
    pub capabilities: Vec<String>,
    /// The interval in force: the collector's pushed one, else the agent's, clamped.
    pub interval_ms: u64,
    /// What was clamped or cut, to count.
    pub problems: Vec<&'static str>,
}

/// Takes a hello: `pushed_interval_ms` (the collector's `[agents] interval`, validated by the
/// configuration) wins over the agent's own.
pub fn accept_hello(hello: Hello, pushed_interval_ms: Option<u64>, l: &Limits) -> AcceptedHello {
    let mut problems = Vec::new();
    let mut cut = |s: String, max: usize| -> String {
        if s.chars().count() > max {
            problems.push(reason::BAD_HELLO);
            s.chars().take(max).collect()
        } else {
            s
        }
    };
    let hostname = cut(hello.hostname, l.max_hostname_chars);
    let version = cut(hello.version, l.max_version_chars);
    let capabilities: Vec<String> = hello
        .capabilities
        .into_iter()
        .take(l.max_capabilities)
        .map(|c| cut(c, l.max_capability_chars))
        .collect();
    let own = match hello.interval_ms {
        0 => l.default_interval_ms,
        ms if ms < l.min_interval_ms || ms > l.max_interval_ms => {
            problems.push(reason::BAD_INTERVAL);
            ms.clamp(l.min_interval_ms, l.max_interval_ms)
        }
        ms => ms,
    };
    AcceptedHello {
        hostname,
        version,
        capabilities,
        interval_ms: pushed_interval_ms
            .map_or(own, |p| p.clamp(l.min_interval_ms, l.max_interval_ms)),
        problems,
    }
}

/// A batch as the collector takes it.
#[derive(Debug, Clone, PartialEq)]
pub struct AcceptedBatch {
    pub seq: u64,
    pub samples: Vec<Sample>,
    /// Oldest and newest sample time (the receive time when there is none).
    pub first_ts_ms: i64,
    pub last_ts_ms: i64,
    /// Samples dropped, one reason each, to count.
    pub dropped: Vec<&'static str>,
}

/// Why a batch is refused as a whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    pub reason: &'static str,
    /// The QUIC code the stream is stopped with.
    pub code: u32,
}

/// Takes a batch received at `now_ms`.
pub fn accept_batch(batch: Batch, now_ms: i64, l: &Limits) -> Result<AcceptedBatch, Refusal> {
    if batch.seq == 0 || i64::try_from(batch.seq).is_err() {
        return Err(Refusal {
            reason: reason::BAD_SEQUENCE,
            code: codes::MALFORMED,
        });
    }
    if batch.samples.len() > l.max_samples {
        return Err(Refusal {
            reason: reason::TOO_MANY_SAMPLES,
            code: codes::MALFORMED,
        });
    }
    let latest = now_ms.saturating_add(l.max_future_ms);
    let mut dropped = Vec::new();
    let mut samples = batch.samples;
    samples.retain(|s| {
        let problem = if s.ts_ms < l.min_ts_ms || s.ts_ms > latest {
            Some(reason::BAD_TIMESTAMP)
        } else if s.name.len() > l.max_name_bytes
            || s.labels.len() > l.max_labels
            || s.labels
                .iter()
                .any(|(k, v)| k.len() > l.max_label_name_bytes || v.len() > l.max_label_value_bytes)
        {
            Some(reason::BAD_SAMPLE)
        } else {
            None
        };
        if let Some(p) = problem {
            dropped.push(p);
        }
        problem.is_none()
    });
    let (first, last) = samples.iter().fold((i64::MAX, i64::MIN), |(lo, hi), s| {
        (lo.min(s.ts_ms), hi.max(s.ts_ms))
    });
    let (first_ts_ms, last_ts_ms) = if samples.is_empty() {
        (now_ms, now_ms)
    } else {
        (first, last)
    };
    Ok(AcceptedBatch {
        seq: batch.seq,
        samples,
        first_ts_ms,
        last_ts_ms,
        dropped,
    })
}

/// Bounds an inventory snapshot: refused when it holds more CIs than the agent may have
/// (`[agents] max_cis`), or too many relations or connections; a CI with an oversized type, key
/// or name is dropped, and so is an attribute past its bounds (counted, one reason each).
pub fn accept_inventory(inv: &mut Inventory, l: &Limits) -> Result<Vec<&'static str>, Refusal> {
    if inv.cis.len() > l.max_cis {
        return Err(Refusal {
            reason: reason::CI_LIMIT,
            code: codes::LIMIT,
        });
    }
    if inv.relations.len() > l.max_relations || inv.connections.len() > l.max_connections {
        return Err(Refusal {
            reason: reason::BAD_INVENTORY,
            code: codes::MALFORMED,
        });
    }
    let mut problems = Vec::new();
    bound_cis(&mut inv.cis, l, &mut problems);
    Ok(problems)
}

/// Bounds an inventory delta as [`accept_inventory`] bounds a snapshot: refused when it names
/// more CIs or relations than allowed; the CIs it adds or changes are bounded field by field.
/// (The CIs the agent would have after it are counted where it is applied.)
pub fn accept_delta(delta: &mut InventoryDelta, l: &Limits) -> Result<Vec<&'static str>, Refusal> {
    let cis = delta.added.len() + delta.changed.len() + delta.removed.len();
    let relations = delta.relations_added.len() + delta.relations_removed.len();
    let connections = delta.connections.as_ref().map_or(0, Vec::len);
    if cis > l.max_cis {
        return Err(Refusal {
            reason: reason::CI_LIMIT,
            code: codes::LIMIT,
        });
    }
    if relations > l.max_relations || connections > l.max_connections {
        return Err(Refusal {
            reason: reason::BAD_INVENTORY,
            code: codes::MALFORMED,
        });
    }
    let mut problems = Vec::new();
    bound_cis(&mut delta.added, l, &mut problems);
    bound_cis(&mut delta.changed, l, &mut problems);
    let max = l.max_ci_field_bytes;
    let before = delta.removed.len();
    delta
        .removed
        .retain(|r| r.ci_type.len() <= max && r.key.len() <= max);
    problems.extend(std::iter::repeat_n(
        reason::BAD_INVENTORY,
        before - delta.removed.len(),
    ));
    Ok(problems)
}

/// Drops CIs with an oversized type, key or name (`bad_inventory` each) and, of the others,
/// attributes past [`Limits::max_ci_attrs`], [`Limits::max_attr_name_bytes`] or
/// [`Limits::max_attr_value_bytes`] (`ci_limit` each).
fn bound_cis(cis: &mut Vec<Ci>, l: &Limits, problems: &mut Vec<&'static str>) {
    let max = l.max_ci_field_bytes;
    cis.retain_mut(|c| {
        if c.ci_type.len() > max || c.key.len() > max || c.name.len() > max {
            problems.push(reason::BAD_INVENTORY);
            return false;
        }
        while c.attrs.len() > l.max_ci_attrs {
            c.attrs.pop_last();
            problems.push(reason::CI_LIMIT);
        }
        c.attrs.retain(|k, v| {
            let ok = k.len() <= l.max_attr_name_bytes && fits_json(v, l.max_attr_value_bytes);
            if !ok {
                problems.push(reason::CI_LIMIT);
            }
            ok
        });
        true
    });
}

/// Whether `v` takes at most `max` bytes as JSON (what the CMDB stores); stops counting past it.
fn fits_json(v: &serde_json::Value, max: usize) -> bool {
    struct Upto(usize);
    impl std::io::Write for Upto {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 = self
                .0
                .checked_sub(buf.len())
                .ok_or_else(|| std::io::Error::other("too long"))?;
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    serde_json::to_writer(Upto(max), v).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use vigil_shared::inventory::Ci;

    const NOW: i64 = 1_800_000_000_000;

    fn hello(interval_ms: u64) -> Hello {
        Hello {
            agent_id: "a1".into(),
            hostname: "web-1".into(),
            version: "0.1.0".into(),
            capabilities: vec!["metrics.v1".into()],
            interval_ms,
        }
    }

    #[test]
    fn hello_intervals_are_clamped_and_counted() {
        let l = Limits::default();
        for (given, pushed, want, counted) in [
            (10_000, None, 10_000, false),
            (0, None, 10_000, false),
            (1, None, 1_000, true),
            (999, None, 1_000, true),
            (3_600_001, None, 3_600_000, true),
            (1 << 62, None, 3_600_000, true),
            (u64::MAX, None, 3_600_000, true),
            (u64::MAX, Some(5_000), 5_000, true),
            (10_000, Some(2_000), 2_000, false),
        ] {
            let h = accept_hello(hello(given), pushed, &l);
            assert_eq!(h.interval_ms, want, "{given} pushed {pushed:?}");
            assert_eq!(
                h.problems.contains(&reason::BAD_INTERVAL),
                counted,
                "{given}"
            );
        }
    }

    #[test]
    fn hello_strings_are_cut() {
        let l = Limits::default();
        let mut h = hello(10_000);
        h.hostname = "é".repeat(300);
        h.version = "v".repeat(65);
        h.capabilities = (0..100).map(|i| format!("cap{i}")).collect();
        let a = accept_hello(h, None, &l);
        assert_eq!(a.hostname.chars().count(), 255);
        assert_eq!(a.version.len(), 64);
        assert_eq!(a.capabilities.len(), 64);
        assert_eq!(a.problems, [reason::BAD_HELLO, reason::BAD_HELLO]);
    }

    fn sample(ts_ms: i64, name: &str, labels: &[(&str, &str)]) -> Sample {
        Sample {
            ts_ms,
            name: name.into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            value: 1.0,
        }
    }

    #[test]
    fn batches_keep_good_samples_and_count_the_rest() {
        let l = Limits::default();
        let long = "x".repeat(1025);
        let many: Vec<(&str, &str)> = (0..17).map(|_| ("a", "b")).collect();
        let b = Batch {
            seq: 7,
            samples: vec![
                sample(NOW - 1_000, "load1", &[]),
                sample(NOW + 600_000, "load1", &[]),
                sample(NOW + 600_001, "load1", &[]),
                sample(253_402_300_800_000, "load1", &[]), // year 10000
                sample(-1, "load1", &[]),
                sample(NOW, &"n".repeat(129), &[]),
                sample(NOW, "check_up", &[("check", &long)]),
                sample(NOW, "check_up", &many),
            ],
        };
        let a = accept_batch(b, NOW, &l).expect("accepted");
        assert_eq!(a.seq, 7);
        assert_eq!(a.samples.len(), 2);
        assert_eq!((a.first_ts_ms, a.last_ts_ms), (NOW - 1_000, NOW + 600_000));
        assert_eq!(
            a.dropped,
            [
                reason::BAD_TIMESTAMP,
                reason::BAD_TIMESTAMP,
                reason::BAD_TIMESTAMP,
                reason::BAD_SAMPLE,
                reason::BAD_SAMPLE,
                reason::BAD_SAMPLE
            ]
        );
        // An empty batch is fine; its times are the receive time.
        let empty = accept_batch(
            Batch {
                seq: 1,
                samples: vec![],
            },
            NOW,
            &l,
        )
        .expect("ok");
        assert_eq!((empty.first_ts_ms, empty.last_ts_ms), (NOW, NOW));
    }

    #[test]
    fn batches_with_impossible_sequence_numbers_or_sizes_are_refused() {
        let l = Limits::default();
        for seq in [0, i64::MAX as u64 + 1, u64::MAX] {
            let r = accept_batch(
                Batch {
                    seq,
                    samples: vec![],
                },
                NOW,
                &l,
            );
            assert_eq!(
                r.map(|_| ()).expect_err("refused").reason,
                reason::BAD_SEQUENCE,
                "{seq}"
            );
        }
        assert!(accept_batch(
            Batch {
                seq: i64::MAX as u64,
                samples: vec![]
            },
            NOW,
            &l
        )
        .is_ok());
        let small = Limits {
            max_samples: 2,
            ..l
        };
        let three = Batch {
            seq: 1,
            samples: vec![sample(NOW, "load1", &[]); 3],
        };
        assert_eq!(
            accept_batch(three, NOW, &small)
                .map(|_| ())
                .expect_err("refused")
                .reason,
            reason::TOO_MANY_SAMPLES
        );
    }

    #[test]
    fn inventories_are_bounded() {
        let l = Limits {
            max_cis: 3,
            ..Limits::default()
        };
        let mut inv = Inventory {
            cis: vec![
                Ci::new("host", "host", "h"),
                Ci::new("package", "k".repeat(5000), "p"),
                Ci::new("package", "ok", "p"),
            ],
            ..Inventory::default()
        };
        assert_eq!(
            accept_inventory(&mut inv, &l),
            Ok(vec![reason::BAD_INVENTORY])
        );
        assert_eq!(inv.cis.len(), 2);
        inv.cis
            .extend((0..3).map(|i| Ci::new("package", format!("p{i}"), "p")));
        let refusal = accept_inventory(&mut inv, &l).expect_err("refused");
        assert_eq!(
            (refusal.reason, refusal.code),
            (reason::CI_LIMIT, codes::LIMIT)
        );
    }

    #[test]
    fn ci_attributes_are_bounded_in_snapshots_and_deltas() {
        let l = Limits {
            max_ci_attrs: 3,
            max_attr_name_bytes: 8,
            max_attr_value_bytes: 20,
            ..Limits::default()
        };
        let ci = || {
            Ci::new("package", "p", "p")
                .attr("a", "fine")
                .attr("long-name-here", "x")
                .attr("b", "y".repeat(19)) // 21 bytes as JSON, with its quotes
                .attr("c", serde_json::json!({"nested": [1, 2, 3, 4, 5]})) // 22 bytes
                .attr("d", 1)
                .attr("e", 2)
        };
        let mut inv = Inventory {
            cis: vec![ci()],
            ..Inventory::default()
        };
        let problems = accept_inventory(&mut inv, &l).expect("kept");
        // Past three attributes the last ones go (long-name-here, e, d), then the long values
        // (b, c).
        assert_eq!(problems, vec![reason::CI_LIMIT; 5]);
        let kept: Vec<&str> = inv.cis[0].attrs.keys().map(String::as_str).collect();
        assert_eq!(kept, ["a"]);

        let mut delta = InventoryDelta {
            added: vec![ci()],
            changed: vec![ci(), Ci::new("package", "k".repeat(5000), "p")],
            removed: vec![vigil_shared::inventory::CiRef {
                ci_type: "package".into(),
                key: "k".repeat(5000),
            }],
            ..InventoryDelta::default()
        };
        let problems = accept_delta(&mut delta, &l).expect("kept");
        assert_eq!(
            problems.iter().filter(|p| **p == reason::CI_LIMIT).count(),
            10
        );
        assert_eq!(
            problems
                .iter()
                .filter(|p| **p == reason::BAD_INVENTORY)
                .count(),
            2
        );
        assert_eq!((delta.added.len(), delta.changed.len()), (1, 1));
        assert!(delta.removed.is_empty());
        assert_eq!(delta.changed[0].attrs.len(), 1);

        let small = Limits { max_cis: 2, ..l };
        let mut big = InventoryDelta {
            added: vec![ci(), ci(), ci()],
            ..InventoryDelta::default()
        };
        assert_eq!(
            accept_delta(&mut big, &small)
                .map(|_| ())
                .expect_err("refused")
                .reason,
            reason::CI_LIMIT
        );
    }
}
