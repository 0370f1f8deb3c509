//! Cost of the agent's discovery pass on this host: CPU time per pass, and memory after the first
//! pass and after the last (the targets: <= 50 ms of CPU, no RSS growth after discovery).
//!
//! `cargo run --release -p vigil-agent --example discovery_cost [-- [--trim] [PASSES [ROOT]]]`
//! (bench/run.sh runs it; default 30 passes over `/`).
//!
//! Why RSS grows from pass 1 to pass 2-5 and then stays flat: glibc keeps what a pass freed
//! (parse buffers, the dpkg status text, the replaced inventory) in its heap instead of returning
//! it, and after the first large buffer is freed it raises its mmap threshold, so the next
//! pass's dpkg status text (640 kB on a Debian host) is carved from the heap too. Nothing leaks:
//! the growth stops after a few passes. `--trim` calls glibc's `malloc_trim(0)` after each pass,
//! which gives the free pages back, to show what the agent would save by doing the same.
//!
//! Runs passes the way the agent does: the same allocator setting as `vigil-agent` (one malloc
//! arena), each pass on a fresh thread (tokio's blocking pool), and the previous result kept
//! alive while the next pass runs (the agent holds the latest inventory and the acknowledged
//! one). Prints one line per figure and a last summary line that bench/run.sh parses. Reads
//! only; contacts nothing.

use std::path::PathBuf;
use std::time::Duration;

use vigil_agent::discovery::{self, Discovered, Options};

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

/// One pass on a fresh thread; returns its result and the CPU time it took.
fn pass(opts: &Options) -> (Discovered, u64) {
    let opts = opts.clone();
    std::thread::spawn(move || {
        let c0 = thread_cpu_ns();
        let found = discovery::discover(&opts);
        (found, thread_cpu_ns().saturating_sub(c0))
    })
    .join()
    .expect("discovery thread")
}

/// Gives the allocator's free pages back to the kernel (glibc), as `--trim` asks.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn trim() {
    // SAFETY: malloc_trim only releases free memory of the allocator; no pointer is involved.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim() {}

fn main() {
    one_malloc_arena();
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let trim_after_pass = args.first().is_some_and(|a| a == "--trim");
    if trim_after_pass {
        args.remove(0);
    }
    let passes: usize = args
        .first()
        .map(|a| a.parse().expect("PASSES must be a number"))
        .unwrap_or(30)
        .max(2);
    let root = args
        .get(1)
        .map_or_else(|| PathBuf::from("/"), PathBuf::from);
    let opts = Options {
        root: root.clone(),
        tags: [("role".to_owned(), "bench".to_owned())].into(),
        hostname: None,
    };
    let before = memory_kb();
    let mut cpu = Vec::with_capacity(passes);
    let mut kept: Option<Discovered> = None;
    let mut after_first = (0, 0, 0);
    let mut after_second = (0, 0, 0);
    let mut cis = 0;
    let mut problems = 0;
    for i in 0..passes {
        let (found, ns) = pass(&opts);
        cpu.push(ns);
        cis = found.inventory.cis.len();
        problems = found.problems.len();
        // The agent replaces its latest inventory only when it changed; keeping the newest is
        // the same memory either way.
        kept = Some(found);
        if trim_after_pass {
            trim();
        }
        if i == 0 {
            after_first = memory_kb();
        }
        // From the second pass on two inventories are alive at once (the agent keeps the last
        // one to diff against): the working set. Growth after that would be a leak.
        if i == 1 {
            after_second = memory_kb();
        }
        // Let the kernel's /proc tables and the page cache settle as between real intervals.
        std::thread::sleep(Duration::from_millis(20));
    }
    let after_last = memory_kb();
    drop(kept);
    let first_ms = cpu[0] as f64 / 1e6;
    let mut sorted = cpu.clone();
    sorted.sort_unstable();
    let ms = |q: usize| sorted[(sorted.len() - 1) * q / 100] as f64 / 1e6;
    println!(
        "root {}: {cis} CIs, {problems} problems{}",
        root.display(),
        if trim_after_pass {
            "; malloc_trim(0) after each pass"
        } else {
            ""
        }
    );
    println!(
        "CPU per pass: first {first_ms:.1} ms; median {:.1} ms, p90 {:.1} ms, max {:.1} ms ({passes} passes)",
        ms(50),
        ms(90),
        ms(100)
    );
    println!(
        "memory (kB): before VmRSS {} RssAnon {}; after pass 1 VmRSS {} RssAnon {}; after pass {passes} VmRSS {} RssAnon {}; VmHWM {}",
        before.0, before.2, after_first.0, after_first.2, after_last.0, after_last.2, after_last.1
    );
    println!(
        "discovery_cost: cis {cis} median_ms {:.2} p90_ms {:.2} rss_first_kb {} rss_second_kb {} rss_last_kb {} growth_kb {} steady_growth_kb {} hwm_kb {}",
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
