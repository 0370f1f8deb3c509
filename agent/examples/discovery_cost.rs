//! Cost of the agent's discovery pass on this host: CPU time per pass, and memory after the first
//! passes and after the last (the targets: <= 50 ms of CPU, no RSS growth after discovery).
//!
//! `cargo run --release -p vigil-agent --example discovery_cost [-- [--no-trim] [--changing]
//! [PASSES [ROOT]]]` (`--changing`: a host tag changes every pass, so every pass yields a new
//! inventory to keep, the worst case for fragmentation)
//! (bench/run.sh runs it; default 30 passes over `/`).
//!
//! Runs passes exactly as the agent does: `inventory_sync::discovery_pass` (which drops an
//! unchanged inventory, compacts a changed one and hands freed memory back with glibc's
//! `malloc_trim(0)`), the agent's allocator setting (one malloc arena), each pass on a fresh
//! thread (tokio's blocking pool), and the kept inventory alive while the next pass runs.
//! `--no-trim` runs the bare `discovery::discover` instead and keeps every new result, to show
//! what the trimming saves: there glibc keeps what a pass freed (parse buffers, the 640 kB dpkg
//! status text) in its heap, and after the first large free raises its mmap threshold, so RSS
//! grows by ~2 MiB over the first passes.
//!
//! Prints one line per figure and a last summary line that bench/run.sh parses. Reads only;
//! contacts nothing.

use std::path::PathBuf;
use std::time::Duration;

use std::sync::Arc;

use vigil_agent::discovery::{self, Options};
use vigil_agent::inventory_sync;
use vigil_agent::Process;
use vigil_shared::inventory::Inventory;

/// CPU time of the calling thread (CLOCK_THREAD_CPUTIME_ID), in ns.
#[allow(unsafe_code)]
fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec and the clock id is a Linux constant.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime");
    u64::try_from(ts.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(ts.tv_nsec).unwrap_or(0)
}

/// The agent's malloc setting (see `limit_malloc_arenas` in the agent's main.rs).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn one_malloc_arena() {
    // SAFETY: mallopt only sets an allocator parameter; called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn one_malloc_arena() {}

/// `(VmRSS, VmHWM, RssAnon)` of this process in kB, from /proc/self/status.
fn memory_kb() -> (u64, u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"), field("RssAnon:"))
}

/// What a pass left: the new inventory if it changed, and its problems.
struct PassResult {
    changed: Option<Inventory>,
    problems: usize,
}

/// One pass on a fresh thread; returns its result and the CPU time it took.
fn pass(opts: &Options, previous: Option<Arc<Inventory>>, as_agent: bool) -> (PassResult, u64) {
    let opts = opts.clone();
    std::thread::spawn(move || {
        let c0 = thread_cpu_ns();
        let r = if as_agent {
            let p = inventory_sync::discovery_pass(&opts, previous.as_deref(), Process::Own);
            PassResult {
                changed: p.changed,
                problems: p.problems.len(),
            }
        } else {
            let found = discovery::discover(&opts);
            PassResult {
                changed: Some(found.inventory),
                problems: found.problems.len(),
            }
        };
        (r, thread_cpu_ns().saturating_sub(c0))
    })
    .join()
    .expect("discovery thread")
}

fn main() {
    one_malloc_arena();
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let mut flag = |name: &str| match args.iter().position(|a| a == name) {
        Some(i) => {
            args.remove(i);
            true
        }
        None => false,
    };
    let as_agent = !flag("--no-trim");
    let changing = flag("--changing");
    let passes: usize = args
        .first()
        .map(|a| a.parse().expect("PASSES must be a number"))
        .unwrap_or(30)
        .max(2);
    let root = args
        .get(1)
        .map_or_else(|| PathBuf::from("/"), PathBuf::from);
    let mut opts = Options {
        root: root.clone(),
        tags: [("role".to_owned(), "bench".to_owned())].into(),
        hostname: None,
    };
    let before = memory_kb();
    let mut cpu = Vec::with_capacity(passes);
    let mut kept: Option<Arc<Inventory>> = None;
    let mut after_first = (0, 0, 0);
    let mut after_second = (0, 0, 0);
    let mut problems = 0;
    let mut changed = 0usize;
    for i in 0..passes {
        if changing {
            opts.tags.insert("pass".to_owned(), i.to_string());
        }
        let (r, ns) = pass(&opts, kept.clone(), as_agent);
        cpu.push(ns);
        problems = r.problems;
        if let Some(inventory) = r.changed {
            changed += 1;
            kept = Some(Arc::new(inventory));
        }
        if i == 0 {
            after_first = memory_kb();
        }
        // From the second pass on, a pass runs while the kept inventory is alive and compares
        // against it: the working set. Growth after that would be a leak.
        if i == 1 {
            after_second = memory_kb();
        }
        // Let the kernel's /proc tables and the page cache settle as between real intervals.
        std::thread::sleep(Duration::from_millis(20));
    }
    let after_last = memory_kb();
    let cis = kept.as_ref().map_or(0, |k| k.cis.len());
    drop(kept);
    let first_ms = cpu[0] as f64 / 1e6;
    let mut sorted = cpu.clone();
    sorted.sort_unstable();
    let ms = |q: usize| sorted[(sorted.len() - 1) * q / 100] as f64 / 1e6;
    println!(
        "root {}: {cis} CIs, {problems} problems, inventory changed in {changed} of {passes} passes; {}",
        root.display(),
        if as_agent {
            "as the agent runs it (discovery_pass: compact, malloc_trim)"
        } else {
            "bare discover(), every result kept, no malloc_trim"
        }
    );
    println!(
        "CPU per pass: first {first_ms:.1} ms; median {:.1} ms, p90 {:.1} ms, max {:.1} ms ({passes} passes)",
        ms(50),
        ms(90),
        ms(100)
    );
    println!(
        "memory (kB): before VmRSS {} RssAnon {}; after pass 1 VmRSS {} RssAnon {}; after pass 2 VmRSS {} RssAnon {}; after pass {passes} VmRSS {} RssAnon {}; VmHWM {}",
        before.0, before.2, after_first.0, after_first.2, after_second.0, after_second.2, after_last.0, after_last.2, after_last.1
    );
    println!(
        "discovery_cost: cis {cis} changed {changed} median_ms {:.2} p90_ms {:.2} rss_first_kb {} rss_second_kb {} rss_last_kb {} growth_kb {} steady_growth_kb {} hwm_kb {}",
        ms(50),
        ms(90),
        after_first.0,
        after_second.0,
        after_last.0,
        i128::from(after_last.0) - i128::from(after_first.0),
        i128::from(after_last.0) - i128::from(after_second.0),
        after_last.1
    );
}
