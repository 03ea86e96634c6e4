//! Persistence of the patch subsystem in the appliance database:
//!
//! * `patch_scans`: device (8, BE) → [`DeviceScan`] (the current scan,
//!   with deltas applied, and its receipt state);
//! * `patch_assessments`: device (8, BE) → `DeviceAssessment`;
//! * `patch_sources`: source name → [`SourceRecord`] (the imported feed's
//!   identity; the feed itself is a file under `DATA/advisories/`);
//! * `patch_compliance_daily`: UTC day start (ms, 8, BE) →
//!   [`DailyCompliance`] (the day's last fleet summary).
//!
//! The inbox the ingest writer fills (`package_scans_in`) belongs to
//! `outpost-storage`; this subsystem only reads and deletes it.

use outpost_patch::assess::fleet::FleetSummary;
use outpost_patch::catalog::{FeedFormat, SourceInfo};
use outpost_patch::scan::Scan;
use outpost_storage::Table;
use serde::{Deserialize, Serialize};

pub const PATCH_SCANS: Table = Table::new("patch_scans");
pub const PATCH_ASSESSMENTS: Table = Table::new("patch_assessments");
pub const PATCH_SOURCES: Table = Table::new("patch_sources");
pub const PATCH_COMPLIANCE_DAILY: Table = Table::new("patch_compliance_daily");

/// Every table of the patch subsystem, for `Store::open`.
pub const TABLES: &[Table] = &[
    PATCH_SCANS,
    PATCH_ASSESSMENTS,
    PATCH_SOURCES,
    PATCH_COMPLIANCE_DAILY,
];

/// A device's current scan and how its reports went.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DeviceScan {
    /// `None` until a full scan arrived (or after a report that could not
    /// be applied left no usable scan).
    pub scan: Option<Scan>,
    /// Sequence number of the last report applied or refused.
    pub last_seq: u64,
    /// When it was received (appliance clock).
    pub received_at_ms: u64,
    pub full_reports: u64,
    pub delta_reports: u64,
    /// The stored scan is behind the device's: the next full scan repairs
    /// it (the agent sends one at start, weekly, and on request).
    pub needs_full: bool,
    /// Deltas that did not apply to the stored scan.
    pub base_misses: u64,
    /// Why the last report was refused.
    pub last_error: Option<String>,
    /// Since when (the device's scan time) it waits for a reboot.
    pub reboot_since_ms: Option<u64>,
}

/// An imported feed, re-imported from its file when the appliance starts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceRecord {
    pub info: SourceInfo,
    pub format: FeedFormat,
    /// The feed's file name under `DATA/advisories/`.
    pub file: String,
    pub size_bytes: u64,
}

/// The fleet's compliance at the end of a day (or now, for today).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DailyCompliance {
    pub day_start_ms: u64,
    pub at_ms: u64,
    pub summary: FleetSummary,
}
