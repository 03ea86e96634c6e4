//! What an agent sends about its packages: a whole scan or a delta against
//! the scan it sent before ([`PackageReport`]), and the number of that
//! encoding ([`PACKAGE_REPORT_FORMAT`]).
//!
//! The session carries the report as opaque bytes
//! (`outpost_proto::messages::PackageScanRecord`); the agent and the
//! appliance encode and decode it with the proto codec
//! (`encode_compressed` / `decode_compressed`). This module owns only the
//! shape; it runs nothing and encodes nothing itself.

use crate::scan::delta::ScanDelta;
use crate::scan::model::Scan;

/// The encoding of [`PackageReport`] in a package-scan record: bincode of
/// this enum, zstd-compressed. A change of [`Scan`] or [`ScanDelta`]'s
/// fields is a new format number.
///
/// - 1: the first shape (`crate::scan::legacy::PackageReportV1`);
/// - 2: every upgrade carries its candidate's download size
///   (`AptUpgrade::size_bytes`), and a scan can be reported deferred
///   ([`PackageReport::Deferred`]).
///
/// An appliance reads every format up to its own ([`REPORT_FORMATS`]); an
/// agent sends the newest it knows (upgrade the appliance first).
pub const PACKAGE_REPORT_FORMAT: u16 = 2;

/// The formats this build reads, oldest first.
pub const REPORT_FORMATS: &[u16] = &[1, 2];

/// Largest decompressed report the appliance accepts: 16 MiB, about
/// 200,000 packages.
pub const MAX_REPORT_PLAIN_BYTES: usize = 16 * 1024 * 1024;

/// One package report of one device.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum PackageReport {
    /// The whole scan: replaces what the appliance holds.
    Full(Box<Scan>),
    /// The change since the previous report of the device.
    Delta(Box<ScanDelta>),
    /// No scan: dpkg's lock stayed held (an install was running) through
    /// the agent's back-off, so the inventory could have been read between
    /// two states. The appliance keeps the device's scan and assessment,
    /// shows the reason and counts it; the agent scans again once the
    /// database changes.
    Deferred(Box<ScanDeferred>),
}

/// Why a scan was deferred.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ScanDeferred {
    /// When the agent gave up (Unix ms, the agent's clock).
    pub at_ms: u64,
    /// `dpkg's lock /var/lib/dpkg/lock-frontend is held by pid 4242`.
    pub reason: String,
    pub attempts: u32,
    /// From the first attempt to giving up.
    pub waited_ms: u64,
}

impl PackageReport {
    pub fn is_full(&self) -> bool {
        matches!(self, PackageReport::Full(_))
    }

    /// When the scan was taken (Unix ms, the agent's clock).
    pub fn scanned_at_ms(&self) -> u64 {
        match self {
            PackageReport::Full(s) => s.scanned_at_ms,
            PackageReport::Delta(d) => d.scanned_at_ms,
            PackageReport::Deferred(d) => d.at_ms,
        }
    }
}
