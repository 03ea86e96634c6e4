//! Times a full package scan of this machine with the agent's own code
//! (`outpost_agent::scan::collect`): the tools' time, the agent's own
//! time (reading files, parsing, building the scan), the agent process's
//! CPU time (from /proc/self/stat, excluding the tools), and the encoded
//! report's size, whole and as an (empty) delta.
//!
//! `cargo run -p outpost-agent --example scan_bench -- [ITERATIONS] [--no-apt] [--apt-cache DIR]`

use std::time::Instant;

use outpost_agent::scan::{PackageTools, collect};
use outpost_patch::scan::PackageReport;
use outpost_proto::codec;

/// (own user+sys, children's user+sys) CPU seconds of this process.
fn cpu_seconds() -> (f64, f64) {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit_once(") ").map(|(_, r)| r).unwrap_or("");
    let f: Vec<f64> = after
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0.0))
        .collect();
    // Fields 14-17 of stat(5), counted after the command name (field 3 is index 0).
    let tick = 100.0;
    let get = |i: usize| f.get(i).copied().unwrap_or(0.0) / tick;
    (get(11) + get(12), get(13) + get(14))
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let iterations: usize = args.iter().find_map(|a| a.parse().ok()).unwrap_or(10);
    let mut tools = PackageTools::default();
    if args.iter().any(|a| a == "--no-apt") {
        tools.apt_simulate = false;
    }
    if let Some(i) = args.iter().position(|a| a == "--apt-cache") {
        tools.apt_pkgcache_dir = args.get(i + 1).map(Into::into);
    }
    // Warm-up (and apt's binary cache, when it has one to write).
    let first = collect(&tools, 0).expect("scan");
    let (cpu0, child0) = cpu_seconds();
    let started = Instant::now();
    let (mut tools_s, mut own_s) = (0.0, 0.0);
    let mut last = first.scan.clone();
    for i in 0..iterations {
        let c = collect(&tools, i as u64).expect("scan");
        tools_s += c.tools_elapsed.as_secs_f64();
        own_s += c.own_elapsed.as_secs_f64();
        last = c.scan;
    }
    let wall = started.elapsed().as_secs_f64() / iterations as f64;
    let (cpu1, child1) = cpu_seconds();
    let n = iterations as f64;
    let encode_started = Instant::now();
    let full = codec::encode_compressed(&PackageReport::Full(Box::new(last.clone()))).unwrap();
    let delta =
        codec::encode_compressed(&PackageReport::Delta(Box::new(first.scan.diff(&last)))).unwrap();
    let encode_ms = encode_started.elapsed().as_secs_f64() * 1000.0;
    println!(
        "RESULT agent_package_scan packages={} upgrades={} apt={} iterations={} wall_ms={:.1} tools_ms={:.1} own_ms={:.2} agent_cpu_ms={:.1} tools_cpu_ms={:.1} full_report_bytes={} empty_delta_bytes={} encode_ms={:.2} problems={}",
        last.dpkg.len() + last.rpm.len(),
        last.upgrades.len(),
        tools.apt_simulate,
        iterations,
        wall * 1000.0,
        tools_s / n * 1000.0,
        own_s / n * 1000.0,
        (cpu1 - cpu0) / n * 1000.0,
        (child1 - child0) / n * 1000.0,
        full.len(),
        delta.len(),
        encode_ms,
        last.problems.total,
    );
}
