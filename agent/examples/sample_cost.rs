//! CPU cost of one `Sampler::sample()` call (one agent collection cycle, checks excluded).
//! Run: `cargo run --release -p vigil-agent --example sample_cost` (bench/run.sh does).
//! Sleeps past sysinfo's 200 ms minimum between cycles so each one really re-reads /proc/stat.

use vigil_agent::sampler::Sampler;

/// CPU time of this thread (clock_gettime(CLOCK_THREAD_CPUTIME_ID)), in ns. Unlike getrusage or
/// /proc schedstat, it counts the current time slice too.
#[allow(unsafe_code)]
fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec and the clock id is a Linux constant.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime");
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn main() {
    let mut sampler = Sampler::new().expect("sampler");
    let mut cpu = Vec::new();
    let mut count = 0;
    for i in 0..50 {
        std::thread::sleep(std::time::Duration::from_millis(250));
        let c0 = thread_cpu_ns();
        count = sampler.sample(i).len();
        cpu.push(thread_cpu_ns().saturating_sub(c0));
    }
    cpu.sort_unstable();
    let us = |q: usize| cpu[cpu.len() * q / 100] as f64 / 1000.0;
    println!("sample(): {count} samples per cycle; CPU per cycle median {:.0} us, p90 {:.0} us (50 cycles)", us(50), us(90));
}
