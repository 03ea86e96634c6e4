//! The package scanner's loop: polls the package database's stamp, asks
//! the [`Scheduler`] whether to scan, scans off the runtime
//! (`spawn_blocking`), and buffers the report (whole or delta) as a
//! sequenced `PackageScan` record. Requests from the command executor
//! ([`super::request`]) are served between polls: scanned at once, and
//! answered when the record is buffered.

use std::sync::Arc;
use std::time::Duration;

use outpost_patch::scan::{PACKAGE_REPORT_FORMAT, PackageManager, PackageReport};
use outpost_proto::codec;
use outpost_proto::messages::{PackageScanRecord, RecordBody};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

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
    /// Attempts while dpkg is in the middle of a transaction, and the pause
    /// between them; after the last the scan is sent with a problem noted.
    pub busy_attempts: u32,
    pub busy_retry_delay: Duration,
}

impl PackageScanner {
    pub fn from_config(cfg: &AgentConfig) -> PackageScanner {
        PackageScanner {
            tools: cfg.package_tools.clone(),
            poll: cfg.package_db_poll_interval,
            interval: cfg.package_scan_interval,
            full_interval: cfg.package_scan_full_interval,
            busy_attempts: 3,
            busy_retry_delay: Duration::from_secs(5),
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
        Ok(c) => buffer_report(sched, shared, reason, c),
        Err(e) => {
            sched.failed(now, stamp);
            Err(e)
        }
    }
}

/// Scans, waiting out a dpkg transaction for a few attempts.
async fn scan_with_retries(
    scanner: &PackageScanner,
    refresh: bool,
    shutdown: &CancellationToken,
) -> Result<Collected, String> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let t = scanner.tools.clone();
        let result =
            tokio::task::spawn_blocking(move || tools::collect_with(&t, now_ms(), refresh)).await;
        match result {
            Ok(Ok(mut c)) => {
                if c.busy && attempt < scanner.busy_attempts {
                    info!(
                        attempt,
                        "dpkg is in the middle of a transaction; scanning again shortly"
                    );
                    tokio::select! {
                        _ = tokio::time::sleep(scanner.busy_retry_delay) => continue,
                        _ = shutdown.cancelled() => return Err("the agent is stopping".into()),
                    }
                }
                if c.busy {
                    tools::note_busy(&mut c.scan.problems, attempt);
                    warn!(
                        attempts = attempt,
                        "dpkg stayed busy; sending the scan as it is"
                    );
                }
                return Ok(c);
            }
            Ok(Err(e)) => {
                warn!(error = %e, "package scan failed");
                return Err(format!("package scan failed: {e}"));
            }
            Err(e) => {
                warn!(error = %e, "package scan task failed");
                return Err(format!("package scan task failed: {e}"));
            }
        }
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
            busy_attempts: 1,
            busy_retry_delay: Duration::ZERO,
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
}
