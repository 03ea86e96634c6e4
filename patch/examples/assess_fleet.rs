//! Measures assessment at fleet scale, on synthetic data:
//!
//! ```text
//! cargo run --release -p outpost-patch --features testing --example assess_fleet -- [DEVICES] [PACKAGES_PER_DEVICE] [THREADS]
//! ```
//!
//! Defaults: 10,000 devices × 1,500 installed packages against a
//! tracker-sized catalog (45,000 CVEs, 30,000 source packages, 4
//! releases), one thread. Prints `RESULT` lines: catalog build, full
//! assessment (total and per device), fleet views (summary, CVE and patch
//! lists, one CVE's exposure), and a catalog update touching 100 packages
//! (change set, devices touched, incremental re-assessment). Scans are
//! generated outside the timed sections (and regenerated for the update:
//! keeping 10,000 scans would dominate memory).

use std::time::{Duration, Instant};

use outpost_patch::assess::fleet::{cve_list, cve_view, fleet_summary, patch_list};
use outpost_patch::assess::{DeviceAssessment, Policy, assess_device, reassess_device};
use outpost_patch::testing::{synthetic_catalog, synthetic_catalog_update, synthetic_scan};

const CVES: u32 = 45_000;
const PACKAGES: u32 = 30_000;
const RELEASES: usize = 4;
const SEED: u64 = 14;
const NOW: u64 = 1_750_000_000_000;

fn vm_hwm_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("VmHWM:"))?.to_string();
            line.split_whitespace().nth(1)?.parse::<f64>().ok()
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// CPU time of the calling thread (user + system), from
/// /proc/thread-self/stat (clock ticks of 10 ms): on a loaded machine wall
/// time overstates the work.
fn thread_cpu_seconds() -> f64 {
    std::fs::read_to_string("/proc/thread-self/stat")
        .ok()
        .and_then(|s| {
            let after = s.rsplit_once(')')?.1;
            let f: Vec<&str> = after.split_whitespace().collect();
            let utime: f64 = f.get(11)?.parse().ok()?;
            let stime: f64 = f.get(12)?.parse().ok()?;
            Some((utime + stime) / 100.0)
        })
        .unwrap_or(0.0)
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let devices = args.first().copied().unwrap_or(10_000);
    let per_device = args.get(1).copied().unwrap_or(1_500);
    let threads = args.get(2).copied().unwrap_or(1).max(1);
    let policy = Policy::default();

    let t = Instant::now();
    let catalog = synthetic_catalog(CVES, PACKAGES, RELEASES, SEED);
    let stats = &catalog.sources().next().expect("one source").info.stats;
    println!(
        "RESULT catalog_build cves={CVES} packages={PACKAGES} releases={RELEASES} advisories={} seconds={:.2} rss_mb={:.0}",
        stats.advisories,
        t.elapsed().as_secs_f64(),
        vm_hwm_mb()
    );

    // Full assessment. Each thread generates its devices' scans (untimed)
    // and assesses them (timed).
    let chunk = devices.div_ceil(threads);
    let wall = Instant::now();
    let results: Vec<(Vec<DeviceAssessment>, Vec<Duration>, f64)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|th| {
                let catalog = &catalog;
                let policy = &policy;
                s.spawn(move || {
                    let mut assessments = Vec::new();
                    let mut times = Vec::new();
                    let mut cpu = 0.0;
                    for d in (th * chunk)..((th + 1) * chunk).min(devices) {
                        let scan = synthetic_scan(PACKAGES, per_device, d % RELEASES, d as u64);
                        let c = thread_cpu_seconds();
                        let t = Instant::now();
                        let a = assess_device(&scan, catalog, policy, None, NOW);
                        times.push(t.elapsed());
                        cpu += thread_cpu_seconds() - c;
                        assessments.push(a);
                    }
                    (assessments, times, cpu)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("worker"))
            .collect()
    });
    let wall = wall.elapsed();
    let mut assessments = Vec::with_capacity(devices);
    let mut times = Vec::with_capacity(devices);
    let mut assess_cpu = 0.0;
    for (a, t, c) in results {
        assessments.extend(a);
        times.extend(t);
        assess_cpu += c;
    }
    let assess_total: Duration = times.iter().sum();
    times.sort();
    let findings: usize = assessments.iter().map(|a| a.findings.len()).sum();
    let patches: usize = assessments.iter().map(|a| a.patches.len()).sum();
    println!(
        "RESULT assess_full devices={devices} packages_per_device={per_device} threads={threads} assess_seconds={:.2} assess_cpu_seconds={assess_cpu:.2} wall_seconds_incl_scan_generation={:.2} per_device_ms_p50={:.2} p99={:.2} max={:.2} findings_per_device={} patches_per_device={:.1} rss_mb={:.0}",
        assess_total.as_secs_f64(),
        wall.as_secs_f64(),
        percentile(&times, 0.5),
        percentile(&times, 0.99),
        percentile(&times, 1.0),
        findings / devices.max(1),
        patches as f64 / devices.max(1) as f64,
        vm_hwm_mb()
    );

    // Fleet views over all assessments.
    let keys: Vec<usize> = (0..assessments.len()).collect();
    let t = Instant::now();
    let summary = fleet_summary(assessments.iter());
    let summary_ms = t.elapsed().as_secs_f64() * 1000.0;
    let t = Instant::now();
    let cves = cve_list(assessments.iter());
    let cve_list_ms = t.elapsed().as_secs_f64() * 1000.0;
    let widespread = cves
        .iter()
        .max_by_key(|c| c.devices)
        .map(|c| c.id.to_string())
        .unwrap_or_default();
    let t = Instant::now();
    let view = cve_view(&widespread, keys.iter().zip(assessments.iter()));
    let cve_view_ms = t.elapsed().as_secs_f64() * 1000.0;
    let t = Instant::now();
    let plist = patch_list(assessments.iter());
    let patch_list_ms = t.elapsed().as_secs_f64() * 1000.0;
    println!(
        "RESULT fleet_views devices={} compliance_percent={:.1} summary_ms={summary_ms:.1} cve_list_ms={cve_list_ms:.0} distinct_cves={} cve_view_ms={cve_view_ms:.1} cve_view_devices={} patch_list_ms={patch_list_ms:.0} distinct_patch_sources={}",
        summary.devices,
        summary.compliance_percent.unwrap_or(0.0),
        cves.len(),
        view.devices.len(),
        plist.len()
    );

    // A catalog update touching 100 source packages.
    let t = Instant::now();
    let updated = catalog.with_source(
        synthetic_catalog_update(CVES, PACKAGES, RELEASES, SEED, 100)
            .sources()
            .next()
            .expect("one source")
            .clone(),
    );
    let build_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let changes = updated.changes_since(&catalog);
    let diff_ms = t.elapsed().as_secs_f64() * 1000.0;
    let mut touched = 0usize;
    let mut check = Duration::ZERO;
    let mut reassess = Duration::ZERO;
    let mut reassess_cpu = 0.0;
    for (d, slot) in assessments.iter_mut().enumerate() {
        let scan = synthetic_scan(PACKAGES, per_device, d % RELEASES, d as u64);
        let t = Instant::now();
        let hit = changes.touches_scan(&scan);
        check += t.elapsed();
        if hit {
            touched += 1;
            let c = thread_cpu_seconds();
            let t = Instant::now();
            let a = reassess_device(slot, &scan, &updated, &changes, &policy, NOW + 1000);
            reassess += t.elapsed();
            reassess_cpu += thread_cpu_seconds() - c;
            *slot = a;
        }
    }
    println!(
        "RESULT catalog_update touched_packages_per_release={} changed_pairs={} update_build_seconds={build_s:.2} changes_since_ms={diff_ms:.0} touch_check_ms={:.0} devices_touched={touched} reassess_seconds={:.2} reassess_cpu_seconds={reassess_cpu:.2} reassess_per_device_ms={:.3}",
        changes.changed.values().map(|s| s.len()).max().unwrap_or(0),
        changes.len(),
        check.as_secs_f64() * 1000.0,
        reassess.as_secs_f64(),
        reassess.as_secs_f64() * 1000.0 / touched.max(1) as f64
    );
    let json_bytes: usize = assessments
        .iter()
        .take(100)
        .map(|a| serde_json::to_vec(a).map_or(0, |v| v.len()))
        .sum();
    println!(
        "RESULT assessment_size json_bytes_per_device={}",
        json_bytes / 100.min(assessments.len()).max(1)
    );
    println!("RESULT peak rss_mb={:.0}", vm_hwm_mb());
}
