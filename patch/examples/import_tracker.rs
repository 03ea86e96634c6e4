//! Measures the import of a tracker-sized Debian Security Tracker JSON:
//!
//! ```text
//! cargo run --release -p outpost-patch --features testing --example import_tracker -- gen /tmp/tracker.json
//! cargo run --release -p outpost-patch --features testing --example import_tracker -- import /tmp/tracker.json
//! ```
//!
//! `gen` writes a synthetic feed (45,000 CVEs over 30,000 source packages
//! and 4 releases by default, ~80 MB); `import` imports it and prints one
//! `RESULT` line with the time and the process's peak RSS (VmHWM), so run
//! it as its own process.

use std::time::Instant;

use outpost_patch::catalog::ImportOptions;
use outpost_patch::catalog::tracker::import_debian_tracker;
use outpost_patch::testing::write_synthetic_tracker;

fn vm_hwm_kb() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: import_tracker gen|import PATH [CVES PACKAGES RELEASES]";
    let (mode, path) = match (args.get(1), args.get(2)) {
        (Some(m), Some(p)) => (m.as_str(), p.as_str()),
        _ => return Err(usage.into()),
    };
    let num = |i: usize, default: u64| args.get(i).and_then(|a| a.parse().ok()).unwrap_or(default);
    match mode {
        "gen" => {
            let (cves, packages, releases) = (
                num(3, 45_000) as u32,
                num(4, 30_000) as u32,
                num(5, 4) as usize,
            );
            let started = Instant::now();
            let file = std::io::BufWriter::new(std::fs::File::create(path)?);
            let bytes = write_synthetic_tracker(file, cves, packages, releases, 14)?;
            println!(
                "RESULT tracker_gen cves={cves} packages={packages} releases={releases} bytes={bytes} seconds={:.2}",
                started.elapsed().as_secs_f64()
            );
        }
        "import" => {
            let before = vm_hwm_kb().unwrap_or(0);
            let started = Instant::now();
            let file = std::fs::File::open(path)?;
            let bytes = file.metadata()?.len();
            let source =
                import_debian_tracker(file, ImportOptions::new("debian-tracker", path, 0))?;
            let seconds = started.elapsed().as_secs_f64();
            let st = &source.info.stats;
            println!(
                "RESULT tracker_import bytes={bytes} packages={} vulns={} advisories={} not_affected={} seconds={seconds:.2} peak_rss_kb={} start_rss_kb={before}",
                st.entries,
                st.vulns,
                st.advisories,
                st.not_affected,
                vm_hwm_kb().unwrap_or(0),
            );
        }
        _ => return Err(usage.into()),
    }
    Ok(())
}
