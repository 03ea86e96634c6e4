//! When to scan, and what to send: pure decisions over an explicit clock
//! (`now_ms`), driven by [`super::task`].
//!
//! - At start: a scan, sent whole (the appliance may hold any older state).
//! - Every `interval_ms` after the last scan.
//! - When the package database's stamp differs from the one the last scan
//!   saw (polled every few seconds by the task): within one poll of an
//!   install made outside Outpost.
//! - On request: whole.
//!
//! A report is a delta against the previous report this process buffered:
//! the records buffer delivers in order and exactly once, so the appliance
//! holds that scan when the delta arrives. It is sent whole instead when
//! there is none, on request, when the buffer dropped records since (the
//! previous report may be among them), and every `full_interval_ms` (a
//! self-heal for an appliance that lost its copy).

use outpost_patch::scan::Scan;

use super::tools::DbStamp;

/// Why a scan is taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScanReason {
    Start,
    Interval,
    DatabaseChanged,
    Requested,
    /// Requested as a delta (`ScanPackages { full: false }`): whole only
    /// when a delta would be (no base, dropped records, weekly).
    RequestedDelta,
}

impl ScanReason {
    pub fn label(self) -> &'static str {
        match self {
            ScanReason::Start => "start",
            ScanReason::Interval => "interval",
            ScanReason::DatabaseChanged => "database_changed",
            ScanReason::Requested => "requested",
            ScanReason::RequestedDelta => "requested_delta",
        }
    }
}

/// Whole scan or delta.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReportKind {
    Full,
    Delta,
}

/// What the scheduler decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScanPlan {
    pub reason: ScanReason,
}

/// The scheduler's state: what the last scan saw and when.
#[derive(Debug, Clone)]
pub struct Scheduler {
    pub interval_ms: u64,
    pub full_interval_ms: u64,
    /// The last scan buffered: the base of the next delta.
    last: Option<Scan>,
    last_scan_ms: Option<u64>,
    last_full_ms: Option<u64>,
    last_stamp: Option<DbStamp>,
    /// The buffer's dropped-records count when the last report was buffered.
    dropped_at_last: u64,
    requested: bool,
    /// The last attempt was deferred (dpkg's lock held): further
    /// deferrals in a row are counted, not reported again.
    deferred_in_row: bool,
    /// Scans deferred since the agent started.
    pub deferred_total: u64,
}

impl Scheduler {
    pub fn new(interval_ms: u64, full_interval_ms: u64) -> Scheduler {
        Scheduler {
            interval_ms,
            full_interval_ms,
            last: None,
            last_scan_ms: None,
            last_full_ms: None,
            last_stamp: None,
            dropped_at_last: 0,
            requested: false,
            deferred_in_row: false,
            deferred_total: 0,
        }
    }

    /// The appliance (or an operator) asked for a whole scan.
    pub fn request(&mut self) {
        self.requested = true;
    }

    /// Whether to scan now, given the database's current stamp.
    pub fn due(&self, now_ms: u64, stamp: Option<DbStamp>) -> Option<ScanPlan> {
        let reason = if self.requested {
            ScanReason::Requested
        } else {
            match self.last_scan_ms {
                None => ScanReason::Start,
                Some(t) if now_ms.saturating_sub(t) >= self.interval_ms => ScanReason::Interval,
                Some(_) if stamp.is_some() && stamp != self.last_stamp => {
                    ScanReason::DatabaseChanged
                }
                Some(_) => return None,
            }
        };
        Some(ScanPlan { reason })
    }

    /// Whole or delta for a scan taken for `reason`, with the buffer's
    /// current dropped count.
    pub fn report_kind(&self, now_ms: u64, reason: ScanReason, dropped_now: u64) -> ReportKind {
        let full = reason == ScanReason::Requested
            || reason == ScanReason::Start
            || self.last.is_none()
            || dropped_now != self.dropped_at_last
            || self
                .last_full_ms
                .is_none_or(|t| now_ms.saturating_sub(t) >= self.full_interval_ms);
        if full {
            ReportKind::Full
        } else {
            ReportKind::Delta
        }
    }

    /// The base of a delta.
    pub fn last(&self) -> Option<&Scan> {
        self.last.as_ref()
    }

    /// A scan was taken and its report buffered (`kind`), with the buffer's
    /// dropped count read after buffering it.
    pub fn sent(
        &mut self,
        now_ms: u64,
        scan: Scan,
        stamp: Option<DbStamp>,
        kind: ReportKind,
        dropped_now: u64,
    ) {
        self.last = Some(scan);
        self.last_scan_ms = Some(now_ms);
        self.last_stamp = stamp;
        self.dropped_at_last = dropped_now;
        self.deferred_in_row = false;
        if kind == ReportKind::Full {
            self.last_full_ms = Some(now_ms);
            self.requested = false;
        }
    }

    /// A scan failed: try again at the next interval or database change,
    /// not at every poll.
    pub fn failed(&mut self, now_ms: u64, stamp: Option<DbStamp>) {
        self.last_scan_ms = Some(now_ms);
        self.last_stamp = stamp;
    }

    /// A scan was deferred (dpkg's lock stayed held): like [`failed`]
    /// (the scan after the install follows from the database's change),
    /// counted; true when it is the first of a row, the one to report.
    ///
    /// [`failed`]: Scheduler::failed
    pub fn deferred(&mut self, now_ms: u64, stamp: Option<DbStamp>) -> bool {
        self.failed(now_ms, stamp);
        self.deferred_total += 1;
        !std::mem::replace(&mut self.deferred_in_row, true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use outpost_patch::scan::{OsInfo, Scan};

    const DAY: u64 = 24 * 3600 * 1000;

    fn stamp(n: u128) -> Option<DbStamp> {
        Some(DbStamp {
            mtime_ns: n,
            size: 10,
        })
    }

    fn scan(at: u64) -> Scan {
        Scan::new_dpkg(at, OsInfo::default())
    }

    #[test]
    fn the_first_scan_is_at_start_and_whole() {
        let s = Scheduler::new(DAY, 7 * DAY);
        let plan = s.due(1_000, stamp(1)).unwrap();
        assert_eq!(plan.reason, ScanReason::Start);
        assert_eq!(s.report_kind(1_000, plan.reason, 0), ReportKind::Full);
    }

    #[test]
    fn an_unchanged_database_is_scanned_again_after_the_interval_as_a_delta() {
        let mut s = Scheduler::new(DAY, 7 * DAY);
        s.sent(0, scan(0), stamp(1), ReportKind::Full, 0);
        assert_eq!(s.due(DAY - 1, stamp(1)), None);
        let plan = s.due(DAY, stamp(1)).unwrap();
        assert_eq!(plan.reason, ScanReason::Interval);
        assert_eq!(s.report_kind(DAY, plan.reason, 0), ReportKind::Delta);
    }

    #[test]
    fn a_database_change_is_scanned_at_the_next_poll() {
        let mut s = Scheduler::new(DAY, 7 * DAY);
        s.sent(0, scan(0), stamp(1), ReportKind::Full, 0);
        assert_eq!(s.due(10_000, stamp(1)), None);
        assert_eq!(
            s.due(20_000, stamp(2)).unwrap().reason,
            ScanReason::DatabaseChanged
        );
        assert_eq!(
            s.due(20_000, None),
            None,
            "an unreadable stamp is not a change"
        );
        s.sent(20_000, scan(20_000), stamp(2), ReportKind::Delta, 0);
        assert_eq!(s.due(30_000, stamp(2)), None);
    }

    #[test]
    fn dropped_records_or_a_week_without_a_whole_scan_make_the_next_report_whole() {
        let mut s = Scheduler::new(DAY, 7 * DAY);
        s.sent(0, scan(0), stamp(1), ReportKind::Full, 3);
        assert_eq!(
            s.report_kind(DAY, ScanReason::Interval, 3),
            ReportKind::Delta
        );
        assert_eq!(
            s.report_kind(DAY, ScanReason::Interval, 4),
            ReportKind::Full,
            "the buffer dropped a record since the last report"
        );
        assert_eq!(
            s.report_kind(7 * DAY, ScanReason::Interval, 3),
            ReportKind::Full
        );
    }

    #[test]
    fn a_request_scans_at_once_and_whole_until_a_whole_scan_is_sent() {
        let mut s = Scheduler::new(DAY, 7 * DAY);
        s.sent(0, scan(0), stamp(1), ReportKind::Full, 0);
        s.request();
        let plan = s.due(5, stamp(1)).unwrap();
        assert_eq!(plan.reason, ScanReason::Requested);
        assert_eq!(s.report_kind(5, plan.reason, 0), ReportKind::Full);
        s.sent(5, scan(5), stamp(1), ReportKind::Full, 0);
        assert_eq!(s.due(10, stamp(1)), None);
    }

    #[test]
    fn a_failed_scan_waits_for_the_next_interval_or_change() {
        let mut s = Scheduler::new(DAY, 7 * DAY);
        s.failed(0, stamp(1));
        assert_eq!(s.due(10_000, stamp(1)), None);
        assert_eq!(
            s.due(10_000, stamp(2)).unwrap().reason,
            ScanReason::DatabaseChanged
        );
        assert_eq!(
            s.report_kind(10_000, ScanReason::DatabaseChanged, 0),
            ReportKind::Full,
            "nothing sent yet"
        );
    }

    #[test]
    fn a_deferred_scan_is_reported_once_per_row_and_retried_on_the_next_database_change() {
        let mut s = Scheduler::new(DAY, 7 * DAY);
        assert!(s.deferred(1_000, stamp(1)), "the first is reported");
        assert!(!s.deferred(2_000, stamp(2)), "the next in a row is not");
        assert_eq!(s.deferred_total, 2);
        assert_eq!(s.due(3_000, stamp(2)).map(|p| p.reason), None);
        assert_eq!(
            s.due(3_000, stamp(3)).map(|p| p.reason),
            Some(ScanReason::DatabaseChanged)
        );
        assert_eq!(
            s.report_kind(3_000, ScanReason::DatabaseChanged, 0),
            ReportKind::Full
        );
        s.sent(3_000, scan(3_000), stamp(3), ReportKind::Full, 0);
        assert!(s.deferred(4_000, stamp(4)), "a new row after a scan");
    }
}
