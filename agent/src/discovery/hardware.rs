//! Processor and memory discovery: the `cpu` CI from `/proc/cpuinfo` and the `memory` CI from
//! `/proc/meminfo`, each related `host has ...`.
//!
//! Reads only under the configured root and never fails: an unreadable file drops its CI and
//! records one problem. Frequencies and other fast-changing values are never reported (a CI
//! attribute that moves every pass would flood the change history).
//!
//! Attributes of `cpu`: `model` (absent when cpuinfo has no model line, as on many ARM
//! kernels), `vendor` (when present), `sockets`, `cores` (distinct (physical id, core id) pairs;
//! equal to `threads` when cpuinfo has no topology), `threads` (processor entries).
//! Attributes of `memory`: `total_bytes`, `swap_total_bytes` (when present).

use std::collections::BTreeSet;

use vigil_shared::inventory::{ci_type, relation, Ci, CiRef, Relation};

use super::{read_existing, Discovered, Options};

/// Adds `cpu` and `memory` and `host has` each.
pub fn discover(opts: &Options, out: &mut Discovered) {
    match read_existing(opts, "/proc/cpuinfo").map(|t| t.map(|t| parse_cpuinfo(&t))) {
        Ok(Some(Some(cpu))) => push_with_host_has(out, cpu.into_ci()),
        Ok(Some(None)) => out.problem("cpuinfo", "/proc/cpuinfo lists no processor"),
        Ok(None) => out.problem("cpuinfo", "/proc/cpuinfo does not exist"),
        Err(e) => out.unreadable(
            &[ci_type::CPU],
            "cpuinfo",
            format!("/proc/cpuinfo is not readable: {e}"),
        ),
    }
    match read_existing(opts, "/proc/meminfo").map(|t| t.map(|t| parse_meminfo(&t))) {
        Ok(Some(Some(mem))) => push_with_host_has(out, mem.into_ci()),
        Ok(Some(None)) => out.problem("meminfo", "/proc/meminfo has no MemTotal"),
        Ok(None) => out.problem("meminfo", "/proc/meminfo does not exist"),
        Err(e) => out.unreadable(
            &[ci_type::MEMORY],
            "meminfo",
            format!("/proc/meminfo is not readable: {e}"),
        ),
    }
}

fn push_with_host_has(out: &mut Discovered, ci: Ci) {
    out.inventory.relations.push(Relation {
        from: CiRef::new(ci_type::HOST, ci_type::HOST),
        kind: relation::HAS.to_string(),
        to: ci.id(),
    });
    out.inventory.cis.push(ci);
}

/// What `/proc/cpuinfo` says about the processors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpuInfo {
    pub model: Option<String>,
    pub vendor: Option<String>,
    pub sockets: u64,
    pub cores: u64,
    pub threads: u64,
}

impl CpuInfo {
    fn into_ci(self) -> Ci {
        let name = self.model.clone().unwrap_or_else(|| "cpu".to_string());
        let mut ci = Ci::new(ci_type::CPU, ci_type::CPU, name);
        if let Some(m) = self.model {
            ci = ci.attr("model", m);
        }
        if let Some(v) = self.vendor {
            ci = ci.attr("vendor", v);
        }
        ci.attr("sockets", self.sockets)
            .attr("cores", self.cores)
            .attr("threads", self.threads)
    }
}

/// Parses `/proc/cpuinfo`: blank-line separated `key : value` blocks, one per logical CPU.
/// `None` when no `processor` entry is found.
pub fn parse_cpuinfo(text: &str) -> Option<CpuInfo> {
    let mut threads = 0u64;
    let mut model = None;
    let mut vendor = None;
    let mut sockets = BTreeSet::new();
    let mut cores = BTreeSet::new();
    // Topology of the current block: physical id, core id.
    let mut block: (Option<&str>, Option<&str>) = (None, None);
    let mut in_block = false;
    let mut finish = |block: &mut (Option<&str>, Option<&str>), in_block: &mut bool| {
        if *in_block {
            if let Some(p) = block.0 {
                sockets.insert(p.to_string());
                if let Some(c) = block.1 {
                    cores.insert((p.to_string(), c.to_string()));
                }
            }
        }
        *block = (None, None);
        *in_block = false;
    };
    for line in text.lines() {
        if line.trim().is_empty() {
            finish(&mut block, &mut in_block);
            continue;
        }
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let (key, value) = (key.trim(), value.trim());
        match key {
            "processor" if value.parse::<u64>().is_ok() => {
                finish(&mut block, &mut in_block);
                threads += 1;
                in_block = true;
            }
            // x86 `model name`; MIPS `cpu model`; old ARM `Processor`.
            "model name" | "cpu model" | "Processor" if model.is_none() && !value.is_empty() => {
                model = Some(value.to_string());
            }
            "vendor_id" if vendor.is_none() && !value.is_empty() => {
                vendor = Some(value.to_string());
            }
            "physical id" => block.0 = Some(value),
            "core id" => block.1 = Some(value),
            _ => {}
        }
    }
    finish(&mut block, &mut in_block);
    if threads == 0 {
        return None;
    }
    let sockets_n = (sockets.len() as u64).max(1);
    let cores_n = if cores.is_empty() {
        threads
    } else {
        cores.len() as u64
    };
    Some(CpuInfo {
        model,
        vendor,
        sockets: sockets_n,
        cores: cores_n,
        threads,
    })
}

/// Memory sizes from `/proc/meminfo`, bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemInfo {
    pub total_bytes: u64,
    pub swap_total_bytes: Option<u64>,
}

impl MemInfo {
    fn into_ci(self) -> Ci {
        let mut ci = Ci::new(ci_type::MEMORY, ci_type::MEMORY, "memory")
            .attr("total_bytes", self.total_bytes);
        if let Some(s) = self.swap_total_bytes {
            ci = ci.attr("swap_total_bytes", s);
        }
        ci
    }
}

/// `MemTotal` (and `SwapTotal`) of `/proc/meminfo`, given in kB (KiB); `None` without MemTotal.
pub fn parse_meminfo(text: &str) -> Option<MemInfo> {
    let kib = |name: &str| -> Option<u64> {
        text.lines().find_map(|l| {
            let rest = l.strip_prefix(name)?.strip_prefix(':')?;
            let mut f = rest.split_whitespace();
            let n: u64 = f.next()?.parse().ok()?;
            match f.next() {
                Some("kB") | None => n.checked_mul(1024),
                Some(_) => None,
            }
        })
    };
    Some(MemInfo {
        total_bytes: kib("MemTotal")?,
        swap_total_bytes: kib("SwapTotal"),
    })
}

#[cfg(test)]
mod tests {
    use super::super::testing;
    use super::*;
    use serde_json::json;

    /// A CI whose key is its type (`cpu`, `memory`).
    fn ci(t: &str, name: &str, attrs: serde_json::Value) -> Ci {
        testing::ci(t, t, name, attrs)
    }

    fn check(root: &str, expected: &[Ci], problems: &[(&str, &str)]) {
        testing::check_host_children(discover, root, "has", expected, problems);
    }

    #[test]
    fn two_socket_server_with_hyperthreads() {
        check(
            "hardware-2socket",
            &[
                ci(
                    "cpu",
                    "Intel(R) Xeon(R) Gold 6130 CPU @ 2.10GHz",
                    json!({"model": "Intel(R) Xeon(R) Gold 6130 CPU @ 2.10GHz",
                           "vendor": "GenuineIntel", "sockets": 2, "cores": 4, "threads": 8}),
                ),
                ci(
                    "memory",
                    "memory",
                    json!({"total_bytes": 201_326_592u64 * 1024, "swap_total_bytes": 8_388_604u64 * 1024}),
                ),
            ],
            &[],
        );
    }

    #[test]
    fn arm_board_without_model_or_topology_and_no_meminfo() {
        check(
            "hardware-arm",
            &[ci(
                "cpu",
                "cpu",
                json!({"sockets": 1, "cores": 4, "threads": 4}),
            )],
            &[("meminfo", "/proc/meminfo does not exist")],
        );
    }

    #[test]
    fn cpuinfo_parsing() {
        fn check(text: &str, expected: Option<(Option<&str>, u64, u64, u64)>) {
            let got = parse_cpuinfo(text).map(|c| (c.model, c.sockets, c.cores, c.threads));
            let expected = expected.map(|(m, s, c, t)| (m.map(String::from), s, c, t));
            assert_eq!(got, expected, "{text:?}");
        }
        check("", None);
        check("garbage\n\n:\n", None);
        check(
            "processor\t: 0\nmodel name\t: X\n",
            Some((Some("X"), 1, 1, 1)),
        );
        // A VM that exposes one core id per socket.
        check(
            "processor : 0\nphysical id : 0\ncore id : 0\n\nprocessor : 1\nphysical id : 1\ncore id : 0\n",
            Some((None, 2, 2, 2)),
        );
        // Physical id without core id: sockets counted, cores fall back to threads.
        check(
            "processor : 0\nphysical id : 0\n\nprocessor : 1\nphysical id : 0\n",
            Some((None, 1, 2, 2)),
        );
        // No trailing blank line, `processor` of the old ARM format is not a number.
        check(
            "Processor : ARMv7 rev 4 (v7l)\nprocessor : 0\n\nprocessor : 1",
            Some((Some("ARMv7 rev 4 (v7l)"), 1, 2, 2)),
        );
    }

    #[test]
    fn meminfo_parsing() {
        fn check(text: &str, expected: Option<(u64, Option<u64>)>) {
            let got = parse_meminfo(text).map(|m| (m.total_bytes, m.swap_total_bytes));
            assert_eq!(got, expected, "{text:?}");
        }
        check(
            "MemTotal:       1024 kB\nSwapTotal: 0 kB\n",
            Some((1 << 20, Some(0))),
        );
        check("MemFree: 5 kB\nMemTotal: 2 kB\n", Some((2048, None)));
        check("MemTotal: x kB\n", None);
        check("MemTotal: 5 MB\n", None);
        check("MemTotalX: 5 kB\n", None);
        check("MemTotal: 99999999999999999999 kB\n", None);
        check("", None);
    }
}
