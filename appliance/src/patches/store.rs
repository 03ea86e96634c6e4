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
//!
//! **Stored shapes.** `patch_scans` and `patch_assessments` hold bincode,
//! which encodes struct fields in order: when download sizes were added
//! (`AptUpgrade::size_bytes`, `MissingPatch::download_bytes`) the values
//! became versioned. A value written since starts with [`VERSIONED`] and a
//! version byte ([`STORED_VERSION`] for scans, [`ASSESSMENT_VERSION`] for
//! assessments: 3 since each patch carries `candidate_first_seen_ms`, 2
//! before, read as `DeviceAssessmentV2`); one without it is the oldest
//! shape (`DeviceScanV1`, `DeviceAssessmentV1`) and is read as such, sizes
//! unknown. Either is rewritten in the current shape by the next write. 0xFF never
//! starts an old value (an `Option` tag, or a varint `u64`, whose first
//! byte is at most 253). Always go through [`put_scan`], [`get_scan`],
//! [`put_assessment`] and the `scan_*` functions here.

use outpost_patch::assess::DeviceAssessment;
use outpost_patch::assess::fleet::FleetSummary;
use outpost_patch::assess::legacy::{DeviceAssessmentV1, DeviceAssessmentV2};
use outpost_patch::catalog::{FeedFormat, SourceInfo};
use outpost_patch::scan::Scan;
use outpost_patch::scan::legacy::ScanV1;
use outpost_proto::codec::{self, CodecError};
use outpost_storage::{Batch, StorageError, Store, Table};
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
    /// Why the agent's last scan was deferred (dpkg's lock held); cleared
    /// by the next scan applied.
    pub deferred: Option<String>,
    /// Deferred scans received.
    pub deferred_reports: u64,
}

/// [`DeviceScan`] as stored before download sizes.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DeviceScanV1 {
    pub scan: Option<ScanV1>,
    pub last_seq: u64,
    pub received_at_ms: u64,
    pub full_reports: u64,
    pub delta_reports: u64,
    pub needs_full: bool,
    pub base_misses: u64,
    pub last_error: Option<String>,
    pub reboot_since_ms: Option<u64>,
}

impl From<DeviceScanV1> for DeviceScan {
    fn from(d: DeviceScanV1) -> DeviceScan {
        DeviceScan {
            scan: d.scan.map(Scan::from),
            last_seq: d.last_seq,
            received_at_ms: d.received_at_ms,
            full_reports: d.full_reports,
            delta_reports: d.delta_reports,
            needs_full: d.needs_full,
            base_misses: d.base_misses,
            last_error: d.last_error,
            reboot_since_ms: d.reboot_since_ms,
            deferred: None,
            deferred_reports: 0,
        }
    }
}

/// First byte of a versioned value of `patch_scans` / `patch_assessments`.
pub const VERSIONED: u8 = 0xFF;
/// The shape of `patch_scans` written now: 2, with download sizes.
pub const STORED_VERSION: u8 = 2;
/// The shape of `patch_assessments` written now: 3, with each patch's
/// `candidate_first_seen_ms` (2: with download sizes, read as
/// `DeviceAssessmentV2`).
pub const ASSESSMENT_VERSION: u8 = 3;

fn encode_versioned<T: Serialize>(
    table: Table,
    version: u8,
    value: &T,
) -> Result<Vec<u8>, StorageError> {
    let mut out = vec![VERSIONED, version];
    codec::encode_into(value, &mut out).map_err(|source| StorageError::Encode {
        cf: table.name,
        source,
    })?;
    Ok(out)
}

/// Decodes a value of any shape: versioned `version` (the current type),
/// versioned 2 (`V2`, converted; the current shape itself when `version`
/// is 2) or unversioned (the oldest, `Old`, converted).
fn decode_versioned<T, V2, Old>(table: Table, version: u8, bytes: &[u8]) -> Result<T, StorageError>
where
    T: serde::de::DeserializeOwned,
    V2: serde::de::DeserializeOwned + Into<T>,
    Old: serde::de::DeserializeOwned + Into<T>,
{
    let corrupt = |source: CodecError| StorageError::Corrupt {
        cf: table.name,
        source,
    };
    match bytes {
        [VERSIONED, v, rest @ ..] if *v == version => codec::decode(rest).map_err(corrupt),
        [VERSIONED, 2, rest @ ..] => codec::decode::<V2>(rest).map(Into::into).map_err(corrupt),
        [VERSIONED, v, ..] => Err(StorageError::Invalid(format!(
            "{}: stored shape {v} is newer than this build reads ({version}); upgrade the appliance",
            table.name
        ))),
        _ => codec::decode::<Old>(bytes).map(Into::into).map_err(corrupt),
    }
}

/// A stored assessment of any shape.
fn decode_assessment(bytes: &[u8]) -> Result<DeviceAssessment, StorageError> {
    decode_versioned::<DeviceAssessment, DeviceAssessmentV2, DeviceAssessmentV1>(
        PATCH_ASSESSMENTS,
        ASSESSMENT_VERSION,
        bytes,
    )
}

/// A stored scan state of either shape.
fn decode_scan(bytes: &[u8]) -> Result<DeviceScan, StorageError> {
    decode_versioned::<DeviceScan, DeviceScan, DeviceScanV1>(PATCH_SCANS, STORED_VERSION, bytes)
}

/// Adds a put of a device's scan state to `b`.
pub fn put_scan(b: &mut Batch, key: &[u8], ds: &DeviceScan) -> Result<(), StorageError> {
    b.put_raw(
        PATCH_SCANS,
        key,
        &encode_versioned(PATCH_SCANS, STORED_VERSION, ds)?,
    )
}

/// A device's scan state, either shape.
pub fn get_scan(store: &Store, key: &[u8]) -> Result<Option<DeviceScan>, StorageError> {
    store
        .get_raw(PATCH_SCANS, key)?
        .map(|v| decode_scan(&v))
        .transpose()
}

/// Every device's scan state, in key order.
pub fn scan_scans(store: &Store, mut f: impl FnMut(&[u8], DeviceScan)) -> Result<(), StorageError> {
    store.scan_raw(PATCH_SCANS, &[], None, |k, v| {
        f(k, decode_scan(v)?);
        Ok(true)
    })
}

/// Adds a put of a device's assessment to `b`.
pub fn put_assessment(b: &mut Batch, key: &[u8], a: &DeviceAssessment) -> Result<(), StorageError> {
    b.put_raw(
        PATCH_ASSESSMENTS,
        key,
        &encode_versioned(PATCH_ASSESSMENTS, ASSESSMENT_VERSION, a)?,
    )
}

/// Every stored assessment, either shape, in key order.
pub fn scan_assessments(
    store: &Store,
    mut f: impl FnMut(&[u8], DeviceAssessment),
) -> Result<(), StorageError> {
    store.scan_raw(PATCH_ASSESSMENTS, &[], None, |k, v| {
        f(k, decode_assessment(v)?);
        Ok(true)
    })
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
