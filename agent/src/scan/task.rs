//! The package scanner's loop: polls the package database's stamp, asks
//! the [`Scheduler`] whether to scan, scans off the runtime
//! (`spawn_blocking`), and buffers the report (whole or delta) as a
//! sequenced `PackageScan` record. Requests from the command executor
//! ([`super::request`]) are served between polls: scanned at once, and
//! answered when the record is buffered.

use std::sync::Arc;
use std::time::Duration;

use outpost_patch::scan::{PACKAGE_REPORT_FORMAT, PackageManager, PackageReport, ScanDeferred};
use outpost_proto::codec;
use outpost_proto::messages::{PackageScanRecord, RecordBody};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::busy::BusyBackoff;
use super::request::{ScanDone, ScanRequest};
use super::schedule::{ReportKind, ScanReason, Scheduler};
use super::tools::{self, Collected, PackageTools};
use crate::config::AgentConfig;
use crate::session::{Shared, now_ms};

/// Largest encoded report buffered (it is sent in parts of
/// `PackageScanRecord::MAX_PART_BYTES`). A compressed scan of 1,000
/// packages is ~15 KiB; this bound is ~50,000 packages. Beyond it the
/// scan is refused with a log line (and the status error).
pub const MAX_REPORT_BYTES: usize =
    PackageScanRecord::MAX_PART_BYTES * PackageScanRecord::MAX_PARTS as usize;

/// What the scanner is configured with (from `agent.toml`).
#[derive(Debug, Clone)]
pub struct PackageScanner {
    pub tools: PackageTools,
    /// How often the database's stamp is checked.
    pub poll: Duration,
    pub interval: Duration,
    pub full_interval: Duration,
    /// The back-off while dpkg is busy (its lock held by an install, or
    /// its journal not empty). At its end a scan whose lock is still held
    /// is deferred (reported without an inventory); one with only a
    /// journal left (dpkg was interrupted) is sent with a problem noted.
    pub busy: BusyBackoff,
}

impl PackageScanner {
    pub fn from_config(cfg: &AgentConfig) -> PackageScanner {
        PackageScanner {
            tools: cfg.package_tools.clone(),
            poll: cfg.package_db_poll_interval,
            interval: cfg.package_scan_interval,
            full_interval: cfg.package_scan_full_interval,
            busy: BusyBackoff::default(),
        }
    }
}

/// Starts the scanner unless scanning is off (`package_scan = false`) or
/// this host has no package manager (logged once).
pub fn spawn(
    cfg: &AgentConfig,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
) -> Option<tokio::task::JoinHandle<()>> {
    let requests = shared.scan_requests();
    if !cfg.package_scan {
        requests.set_off(super::request::SCANS_OFF);
        return None;
    }
    let scanner = PackageScanner::from_config(cfg);
    let manager = match scanner.tools.manager() {
        Ok(Some(m)) => m,
        Ok(None) => {
            info!("no package manager found: package scans are off");
            requests.set_off("no package manager (dpkg or rpm) found on this device");
            return None;
        }
        Err(e) => {
            warn!(error = %e, "package scans are off");
            shared.note_error(format!("package scans are off: {e}"));
            requests.set_off(format!("package scans are off: {e}"));
            return None;
        }
    };
    let rx = requests.attach();
    Some(tokio::spawn(run(scanner, manager, shared, rx, shutdown)))
}

async fn run(
    scanner: PackageScanner,
    manager: PackageManager,
    shared: Arc<Shared>,
    mut requests: tokio::sync::mpsc::UnboundedReceiver<ScanRequest>,
    shutdown: CancellationToken,
) {
    let ms = |d: Duration| d.as_millis().min(u128::from(u64::MAX)) as u64;
    let mut sched = Scheduler::new(ms(scanner.interval), ms(scanner.full_interval));
    loop {
        let now = now_ms();
        let stamp = tools::db_stamp(&scanner.tools, manager);
        if let Some(plan) = sched.due(now, stamp) {
            // Failures are logged where they happen; the next poll goes on.
            let _ = scan_and_buffer(
                &scanner,
                manager,
                &mut sched,
                &shared,
                plan.reason,
                &shutdown,
            )
            .await;
        }
        tokio::select! {
            _ = tokio::time::sleep(scanner.poll) => {}
            Some(req) = requests.recv() => {
                let reason = if req.full {
                    ScanReason::Requested
                } else {
                    ScanReason::RequestedDelta
                };
                info!(full = req.full, "package scan requested");
                let r = scan_and_buffer(&scanner, manager, &mut sched, &shared, reason, &shutdown)
                    .await;
                let _ = req.reply.send(r);
            }
            _ = shutdown.cancelled() => return,
        }
    }
}

/// One scan, buffered: what it produced, or why not.
async fn scan_and_buffer(
    scanner: &PackageScanner,
    manager: PackageManager,
    sched: &mut Scheduler,
    shared: &Shared,
    reason: ScanReason,
    shutdown: &CancellationToken,
) -> Result<ScanDone, String> {
    let now = now_ms();
    let stamp = tools::db_stamp(&scanner.tools, manager);
    // The scans of the schedule (and a full one asked for) refresh apt's
    // indexes first; the scans after a database change do not.
    let refresh = matches!(
        reason,
        ScanReason::Start | ScanReason::Interval | ScanReason::Requested
    );
    match scan_with_retries(scanner, refresh, shutdown).await {
        Ok(Attempt::Scanned(c)) => buffer_report(sched, shared, reason, *c),
        Ok(Attempt::Deferred(d)) => defer(sched, shared, stamp, d),
        Err(e) => {
            sched.failed(now, stamp);
            Err(e)
        }
    }
}

/// How the attempts at a scan ended.
#[derive(Debug)]
enum Attempt {
    Scanned(Box<Collected>),
    /// dpkg's lock stayed held through the back-off.
    Deferred(ScanDeferred),
}

/// A deferred scan: counted, noted in the agent's status, and reported
/// to the appliance (the first of a row) instead of an inventory that
/// may be between two states; the caller of a requested scan gets the
/// reason.
fn defer(
    sched: &mut Scheduler,
    shared: &Shared,
    stamp: Option<tools::DbStamp>,
    d: ScanDeferred,
) -> Result<ScanDone, String> {
    let message = format!(
        "package scan deferred: {} through {} attempts over {:.1} s (an install is running); \
         scanning again when the package database changes",
        d.reason,
        d.attempts,
        d.waited_ms as f64 / 1000.0
    );
    let report = sched.deferred(d.at_ms, stamp);
    warn!(
        deferred_total = sched.deferred_total,
        reported = report,
        "{message}"
    );
    shared.note_error(message.clone());
    if report {
        let at = d.at_ms;
        let payload = codec::encode_compressed(&PackageReport::Deferred(Box::new(d)))
            .map_err(|e| format!("encoding the deferred report failed: {e}"))?;
        shared
            .record_at(
                at,
                RecordBody::PackageScan(PackageScanRecord {
                    format: PACKAGE_REPORT_FORMAT,
                    full: false,
                    part: 0,
                    parts: 1,
                    payload,
                }),
            )
            .map_err(|e| format!("could not buffer the deferred report: {e:#}"))?;
    }
    Err(message)
}

/// Scans, waiting out an install (dpkg's lock held, or its journal not
/// empty) with the scanner's bounded back-off. The lock is probed before
/// and after reading the database: a scan that overlapped an install is
/// not used.
async fn scan_with_retries(
    scanner: &PackageScanner,
    refresh: bool,
    shutdown: &CancellationToken,
) -> Result<Attempt, String> {
    let started = now_ms();
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        let t = scanner.tools.clone();
        let result = tokio::task::spawn_blocking(move || {
            if let Some(held) = tools::dpkg_lock_held(&t) {
                return Ok(Err(held));
            }
            let c = tools::collect_with(&t, now_ms(), refresh)?;
            Ok(match tools::dpkg_lock_held(&t) {
                Some(held) => Err(held),
                None => Ok(c),
            })
        })
        .await;
        let outcome = match result {
            Ok(Ok(Ok(c))) if !c.busy => return Ok(Attempt::Scanned(Box::new(c))),
            Ok(Ok(outcome)) => outcome,
            Ok(Err::<_, tools::CollectError>(e)) => {
                warn!(error = %e, "package scan failed");
                return Err(format!("package scan failed: {e}"));
            }
            Err(e) => {
                warn!(error = %e, "package scan task failed");
                return Err(format!("package scan task failed: {e}"));
            }
        };
        let now = now_ms();
        if let Some(delay) = scanner.busy.next_delay_ms(attempt, started, now) {
            match &outcome {
                Err(held) => info!(attempt, delay_ms = delay, "{held}; scanning again shortly"),
                Ok(_) => info!(
                    attempt,
                    delay_ms = delay,
                    "dpkg is in the middle of a transaction; scanning again shortly"
                ),
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(delay)) => continue,
                _ = shutdown.cancelled() => return Err("the agent is stopping".into()),
            }
        }
        return Ok(match outcome {
            Err(held) => Attempt::Deferred(ScanDeferred {
                at_ms: now,
                reason: held.to_string(),
                attempts: attempt,
                waited_ms: now.saturating_sub(started),
            }),
            Ok(mut c) => {
                // Only dpkg's journal is left (an interrupted dpkg, which
                // stays so until `dpkg --configure -a`): send it, noted.
                tools::note_busy(&mut c.scan.problems, attempt);
                warn!(
                    attempts = attempt,
                    "dpkg stayed busy; sending the scan as it is"
                );
                Attempt::Scanned(Box::new(c))
            }
        });
    }
}

/// Encodes the report (whole or delta) and buffers it.
fn buffer_report(
    sched: &mut Scheduler,
    shared: &Shared,
    reason: ScanReason,
    c: Collected,
) -> Result<ScanDone, String> {
    let now = c.scan.scanned_at_ms;
    let dropped = shared.buffer().dropped();
    let kind = sched.report_kind(now, reason, dropped);
    let report = match (kind, sched.last()) {
        (ReportKind::Delta, Some(base)) => PackageReport::Delta(Box::new(base.diff(&c.scan))),
        _ => PackageReport::Full(Box::new(c.scan.clone())),
    };
    let full = report.is_full();
    let payload = match codec::encode_compressed(&report) {
        Ok(p) => p,
        Err(e) => {
            warn!(error = %e, "encoding the package report failed");
            sched.failed(now, c.stamp);
            return Err(format!("encoding the package report failed: {e}"));
        }
    };
    if payload.len() > MAX_REPORT_BYTES {
        let message = format!(
            "package report of {} packages is {} bytes compressed, over the {} byte limit: not sent",
            c.scan.dpkg.len() + c.scan.rpm.len(),
            payload.len(),
            MAX_REPORT_BYTES
        );
        warn!("{message}");
        shared.note_error(message.clone());
        sched.failed(now, c.stamp);
        return Err(message);
    }
    let bytes = payload.len();
    let mut result = Ok(0);
    let mut parts = 0;
    for (part, n, chunk) in outpost_proto::messages::split_parts(&payload) {
        parts = n;
        let body = RecordBody::PackageScan(PackageScanRecord {
            format: PACKAGE_REPORT_FORMAT,
            full,
            part,
            parts: n,
            payload: chunk.to_vec(),
        });
        result = shared.record_at(now, body);
        if result.is_err() {
            break;
        }
    }
    let packages = c.scan.dpkg.len() + c.scan.rpm.len();
    let upgrades = c.scan.upgrades.len();
    match result {
        Ok(seq) => {
            info!(
                seq,
                parts,
                reason = reason.label(),
                full,
                packages = c.scan.dpkg.len() + c.scan.rpm.len(),
                upgrades = c.scan.upgrades.len(),
                bytes,
                tools_ms = c.tools_elapsed.as_millis() as u64,
                own_ms = c.own_elapsed.as_millis() as u64,
                "package scan buffered"
            );
            let kind = if full {
                ReportKind::Full
            } else {
                ReportKind::Delta
            };
            // The count before this append: if the append pushed older
            // records out (the previous report among them), the next
            // report sees a difference and goes whole.
            sched.sent(now, c.scan, c.stamp, kind, dropped);
            Ok(ScanDone {
                seq,
                full,
                packages,
                upgrades,
                bytes,
            })
        }
        Err(e) => {
            warn!(error = %format!("{e:#}"), "could not buffer the package scan");
            sched.failed(now, c.stamp);
            Err(format!("could not buffer the package scan: {e:#}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::buffer::Buffer;
    use crate::scan::tools::tests::{STATUS, admindir, have_dpkg, tools};

    #[tokio::test]
    async fn a_requested_scan_runs_at_once_and_answers_when_its_record_is_buffered() {
        if !have_dpkg() {
            eprintln!("skipped: no dpkg-query");
            return;
        }
        let d = admindir(STATUS);
        std::fs::write(
            d.path().join("os-release"),
            "ID=debian\nVERSION_ID=\"12\"\nVERSION_CODENAME=bookworm\n",
        )
        .unwrap();
        let bdir = tempfile::tempdir().unwrap();
        let shared = Shared::new(Buffer::open(bdir.path(), 1 << 20).unwrap());
        // Polls and intervals far away: only the start scan and the
        // requests scan.
        let scanner = PackageScanner {
            tools: tools(d.path()),
            poll: Duration::from_secs(3600),
            interval: Duration::from_secs(86_400),
            full_interval: Duration::from_secs(7 * 86_400),
            busy: BusyBackoff::default(),
        };
        let requests = shared.scan_requests();
        let rx = requests.attach();
        let stop = CancellationToken::new();
        let h = tokio::spawn(run(
            scanner,
            PackageManager::Dpkg,
            shared.clone(),
            rx,
            stop.clone(),
        ));
        let done = tokio::time::timeout(Duration::from_secs(30), requests.scan(true))
            .await
            .expect("answered")
            .expect("scanned");
        assert!(done.full);
        assert_eq!(done.packages, 2);
        assert!(done.bytes > 0);
        let records = shared.buffer().read_from(0, 100, 1 << 20).unwrap();
        let last = records
            .iter()
            .find(|r| r.seq == done.seq)
            .expect("buffered");
        assert!(
            matches!(&last.body, RecordBody::PackageScan(p) if p.full),
            "{last:?}"
        );
        let starts = records.len();
        // A delta on request: against the report just buffered.
        let delta = tokio::time::timeout(Duration::from_secs(30), requests.scan(false))
            .await
            .unwrap()
            .unwrap();
        assert!(!delta.full, "{delta:?}");
        assert!(delta.seq > done.seq);
        assert!(shared.buffer().read_from(0, 100, 1 << 20).unwrap().len() > starts);
        stop.cancel();
        h.await.unwrap();
    }

    /// Holds `path` with a real process until killed: `flock(1)` (flock
    /// locks) or python's `lockf` (fcntl locks, as apt and dpkg take
    /// them). `None` when the tool is missing.
    pub(crate) fn hold_lock(path: &std::path::Path, fcntl: bool) -> Option<std::process::Child> {
        let mut cmd = if fcntl {
            let mut c = std::process::Command::new("python3");
            c.arg("-c")
                .arg("import fcntl,sys,time\nf=open(sys.argv[1],'a+')\nfcntl.lockf(f,fcntl.LOCK_EX)\ntime.sleep(60)")
                .arg(path);
            c
        } else {
            let mut c = std::process::Command::new("flock");
            c.arg("-x").arg(path).args(["sleep", "60"]);
            c
        };
        // Its own process group: `release` ends the holder and the
        // `sleep` that inherits flock's descriptor together.
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let child = cmd.spawn().ok()?;
        let tools = PackageTools {
            dpkg_admindir: path.parent().unwrap().to_path_buf(),
            ..PackageTools::default()
        };
        let t0 = std::time::Instant::now();
        while tools::dpkg_lock_held(&tools).is_none() {
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "the holder never locked"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(child)
    }

    /// Ends a [`hold_lock`] holder (its whole process group) and waits
    /// for it.
    pub(crate) fn release(mut holder: std::process::Child) {
        if let Some(pid) = rustix::process::Pid::from_raw(holder.id() as i32) {
            let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
        }
        let _ = holder.wait();
    }

    fn reports(shared: &Shared) -> Vec<PackageReport> {
        shared
            .buffer()
            .read_from(0, 100, 1 << 20)
            .unwrap()
            .into_iter()
            .filter_map(|r| match r.body {
                RecordBody::PackageScan(p) => {
                    Some(codec::decode_compressed(&p.payload, 1 << 24).unwrap())
                }
                _ => None,
            })
            .collect()
    }

    /// Fails before the lock probe: the scan read the database while an
    /// install (here a real `flock` holder of dpkg's lock-frontend in a
    /// throwaway admindir) held it, and sent it.
    #[tokio::test]
    async fn a_scan_while_dpkgs_lock_is_held_is_deferred_with_the_reason_reported_once_then_taken_after()
     {
        if !have_dpkg() {
            eprintln!("skipped: no dpkg-query");
            return;
        }
        let d = admindir(STATUS);
        let lock = d.path().join("lock-frontend");
        let Some(holder) = hold_lock(&lock, false) else {
            eprintln!("skipped: flock(1) is not installed");
            return;
        };
        let bdir = tempfile::tempdir().unwrap();
        let shared = Shared::new(Buffer::open(bdir.path(), 1 << 20).unwrap());
        let scanner = PackageScanner {
            tools: tools(d.path()),
            poll: Duration::from_secs(3600),
            interval: Duration::from_secs(86_400),
            full_interval: Duration::from_secs(7 * 86_400),
            busy: BusyBackoff {
                first_delay_ms: 10,
                max_delay_ms: 40,
                give_up_after_ms: 150,
            },
        };
        let mut sched = Scheduler::new(86_400_000, 7 * 86_400_000);
        let stop = CancellationToken::new();
        let e = scan_and_buffer(
            &scanner,
            PackageManager::Dpkg,
            &mut sched,
            &shared,
            ScanReason::Requested,
            &stop,
        )
        .await
        .unwrap_err();
        assert!(
            e.contains("deferred") && e.contains("lock-frontend is held"),
            "{e}"
        );
        let got = reports(&shared);
        assert_eq!(got.len(), 1, "{got:?}");
        let PackageReport::Deferred(def) = &got[0] else {
            panic!("{got:?}")
        };
        assert!(def.attempts >= 2 && def.waited_ms >= 150, "{def:?}");
        assert!(def.reason.contains("lock-frontend"), "{def:?}");
        // Still held: counted, not reported again.
        scan_and_buffer(
            &scanner,
            PackageManager::Dpkg,
            &mut sched,
            &shared,
            ScanReason::Requested,
            &stop,
        )
        .await
        .unwrap_err();
        assert_eq!(reports(&shared).len(), 1);
        assert_eq!(sched.deferred_total, 2);
        release(holder);
        let done = scan_and_buffer(
            &scanner,
            PackageManager::Dpkg,
            &mut sched,
            &shared,
            ScanReason::Requested,
            &stop,
        )
        .await
        .unwrap();
        assert!(done.full && done.packages == 2, "{done:?}");
        assert!(matches!(
            reports(&shared).last(),
            Some(PackageReport::Full(_))
        ));
    }

    /// apt and dpkg lock with fcntl: the probe sees such a holder and
    /// names its pid, without taking the lock.
    #[test]
    fn an_fcntl_holder_of_dpkgs_lock_is_seen_with_its_pid() {
        let d = admindir(STATUS);
        let lock = d.path().join("lock-frontend");
        let t = tools(d.path());
        assert_eq!(tools::dpkg_lock_held(&t), None, "no lock file: free");
        std::fs::write(&lock, b"").unwrap();
        assert_eq!(tools::dpkg_lock_held(&t), None, "unlocked: free");
        let Some(holder) = hold_lock(&lock, true) else {
            eprintln!("skipped: python3 is not available to hold an fcntl lock");
            return;
        };
        let held = tools::dpkg_lock_held(&t);
        let pid = holder.id();
        release(holder);
        let held = held.unwrap();
        assert_eq!(held.pid, Some(pid as i32));
        assert!(
            held.to_string()
                .ends_with(&format!("lock-frontend is held by pid {pid}")),
            "{held}"
        );
        assert_eq!(tools::dpkg_lock_held(&t), None, "released with its holder");
    }
}
