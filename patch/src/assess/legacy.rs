//! The assessment as stored by older builds, and its conversions. Bincode
//! encodes struct fields in order: a stored assessment of an old shape
//! must be decoded with these types. Frozen shapes; never change them.
//!
//! - V1: before download sizes (`MissingPatch` without `download_bytes`;
//!   sizes unknown once converted).
//! - V2: before the candidate's own first sighting (`MissingPatch` without
//!   `candidate_first_seen_ms`; converted as the source's `first_seen_ms`,
//!   the value approval delays counted from then, so an upgrade changes no
//!   approval of a patch already seen; the next candidate starts afresh).

use crate::assess::{
    AssessmentCounts, AssessmentStatus, Compliance, DeviceAssessment, Finding, MissingPatch,
    PackageFindings, PatchBinary,
};
use crate::release::ReleaseKey;
use crate::severity::Severity;
use crate::smallstr::SmallStr;
use crate::version::DebVersion;

/// [`MissingPatch`] before download sizes.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct MissingPatchV1 {
    pub source: SmallStr,
    pub installed: DebVersion,
    pub candidate: Option<DebVersion>,
    pub binaries: Vec<PatchBinary>,
    pub security: bool,
    pub cves: Vec<SmallStr>,
    pub unimportant_cves: Vec<SmallStr>,
    pub severity: Option<Severity>,
    pub fix_not_in_repositories: Vec<SmallStr>,
    pub reboot_expected: bool,
    pub first_seen_ms: u64,
    pub risk: u32,
}

impl From<MissingPatchV1> for MissingPatch {
    fn from(p: MissingPatchV1) -> MissingPatch {
        MissingPatch {
            source: p.source,
            installed: p.installed,
            candidate: p.candidate,
            binaries: p.binaries,
            security: p.security,
            cves: p.cves,
            unimportant_cves: p.unimportant_cves,
            severity: p.severity,
            fix_not_in_repositories: p.fix_not_in_repositories,
            reboot_expected: p.reboot_expected,
            first_seen_ms: p.first_seen_ms,
            risk: p.risk,
            download_bytes: None,
            candidate_first_seen_ms: p.first_seen_ms,
        }
    }
}

impl From<&MissingPatch> for MissingPatchV1 {
    fn from(p: &MissingPatch) -> MissingPatchV1 {
        MissingPatchV1 {
            source: p.source.clone(),
            installed: p.installed.clone(),
            candidate: p.candidate.clone(),
            binaries: p.binaries.clone(),
            security: p.security,
            cves: p.cves.clone(),
            unimportant_cves: p.unimportant_cves.clone(),
            severity: p.severity,
            fix_not_in_repositories: p.fix_not_in_repositories.clone(),
            reboot_expected: p.reboot_expected,
            first_seen_ms: p.first_seen_ms,
            risk: p.risk,
        }
    }
}

/// [`DeviceAssessment`] before download sizes.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DeviceAssessmentV1 {
    pub assessed_at_ms: u64,
    pub scanned_at_ms: u64,
    pub scan_digest: u64,
    pub release: Option<ReleaseKey>,
    pub status: AssessmentStatus,
    pub status_reason: Option<String>,
    pub packages: Vec<PackageFindings>,
    pub findings: Vec<Finding>,
    pub patches: Vec<MissingPatchV1>,
    pub counts: AssessmentCounts,
    pub risk: Option<u32>,
    pub compliance: Compliance,
    pub overdue: Vec<String>,
    pub reboot_required: bool,
    pub indexes_stale: bool,
}

impl From<DeviceAssessmentV1> for DeviceAssessment {
    fn from(a: DeviceAssessmentV1) -> DeviceAssessment {
        DeviceAssessment {
            assessed_at_ms: a.assessed_at_ms,
            scanned_at_ms: a.scanned_at_ms,
            scan_digest: a.scan_digest,
            release: a.release,
            status: a.status,
            status_reason: a.status_reason,
            packages: a.packages,
            findings: a.findings,
            patches: a.patches.into_iter().map(MissingPatch::from).collect(),
            counts: a.counts,
            risk: a.risk,
            compliance: a.compliance,
            overdue: a.overdue,
            reboot_required: a.reboot_required,
            indexes_stale: a.indexes_stale,
        }
    }
}

impl From<&DeviceAssessment> for DeviceAssessmentV1 {
    /// The old stored shape of an assessment (sizes dropped): tests use
    /// it to prove stored values of older builds still load.
    fn from(a: &DeviceAssessment) -> DeviceAssessmentV1 {
        DeviceAssessmentV1 {
            assessed_at_ms: a.assessed_at_ms,
            scanned_at_ms: a.scanned_at_ms,
            scan_digest: a.scan_digest,
            release: a.release.clone(),
            status: a.status,
            status_reason: a.status_reason.clone(),
            packages: a.packages.clone(),
            findings: a.findings.clone(),
            patches: a.patches.iter().map(MissingPatchV1::from).collect(),
            counts: a.counts.clone(),
            risk: a.risk,
            compliance: a.compliance,
            overdue: a.overdue.clone(),
            reboot_required: a.reboot_required,
            indexes_stale: a.indexes_stale,
        }
    }
}

/// [`MissingPatch`] before the candidate's own first sighting.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct MissingPatchV2 {
    pub source: SmallStr,
    pub installed: DebVersion,
    pub candidate: Option<DebVersion>,
    pub binaries: Vec<PatchBinary>,
    pub security: bool,
    pub cves: Vec<SmallStr>,
    pub unimportant_cves: Vec<SmallStr>,
    pub severity: Option<Severity>,
    pub fix_not_in_repositories: Vec<SmallStr>,
    pub reboot_expected: bool,
    pub first_seen_ms: u64,
    pub risk: u32,
    pub download_bytes: Option<u64>,
}

impl From<MissingPatchV2> for MissingPatch {
    fn from(p: MissingPatchV2) -> MissingPatch {
        MissingPatch {
            source: p.source,
            installed: p.installed,
            candidate: p.candidate,
            binaries: p.binaries,
            security: p.security,
            cves: p.cves,
            unimportant_cves: p.unimportant_cves,
            severity: p.severity,
            fix_not_in_repositories: p.fix_not_in_repositories,
            reboot_expected: p.reboot_expected,
            first_seen_ms: p.first_seen_ms,
            risk: p.risk,
            download_bytes: p.download_bytes,
            candidate_first_seen_ms: p.first_seen_ms,
        }
    }
}

impl From<&MissingPatch> for MissingPatchV2 {
    fn from(p: &MissingPatch) -> MissingPatchV2 {
        MissingPatchV2 {
            source: p.source.clone(),
            installed: p.installed.clone(),
            candidate: p.candidate.clone(),
            binaries: p.binaries.clone(),
            security: p.security,
            cves: p.cves.clone(),
            unimportant_cves: p.unimportant_cves.clone(),
            severity: p.severity,
            fix_not_in_repositories: p.fix_not_in_repositories.clone(),
            reboot_expected: p.reboot_expected,
            first_seen_ms: p.first_seen_ms,
            risk: p.risk,
            download_bytes: p.download_bytes,
        }
    }
}

/// [`DeviceAssessment`] before the candidate's own first sighting.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DeviceAssessmentV2 {
    pub assessed_at_ms: u64,
    pub scanned_at_ms: u64,
    pub scan_digest: u64,
    pub release: Option<ReleaseKey>,
    pub status: AssessmentStatus,
    pub status_reason: Option<String>,
    pub packages: Vec<PackageFindings>,
    pub findings: Vec<Finding>,
    pub patches: Vec<MissingPatchV2>,
    pub counts: AssessmentCounts,
    pub risk: Option<u32>,
    pub compliance: Compliance,
    pub overdue: Vec<String>,
    pub reboot_required: bool,
    pub indexes_stale: bool,
}

impl From<DeviceAssessmentV2> for DeviceAssessment {
    fn from(a: DeviceAssessmentV2) -> DeviceAssessment {
        DeviceAssessment {
            assessed_at_ms: a.assessed_at_ms,
            scanned_at_ms: a.scanned_at_ms,
            scan_digest: a.scan_digest,
            release: a.release,
            status: a.status,
            status_reason: a.status_reason,
            packages: a.packages,
            findings: a.findings,
            patches: a.patches.into_iter().map(MissingPatch::from).collect(),
            counts: a.counts,
            risk: a.risk,
            compliance: a.compliance,
            overdue: a.overdue,
            reboot_required: a.reboot_required,
            indexes_stale: a.indexes_stale,
        }
    }
}

impl From<&DeviceAssessment> for DeviceAssessmentV2 {
    /// The shape older builds stored (tests prove it still loads).
    fn from(a: &DeviceAssessment) -> DeviceAssessmentV2 {
        DeviceAssessmentV2 {
            assessed_at_ms: a.assessed_at_ms,
            scanned_at_ms: a.scanned_at_ms,
            scan_digest: a.scan_digest,
            release: a.release.clone(),
            status: a.status,
            status_reason: a.status_reason.clone(),
            packages: a.packages.clone(),
            findings: a.findings.clone(),
            patches: a.patches.iter().map(MissingPatchV2::from).collect(),
            counts: a.counts.clone(),
            risk: a.risk,
            compliance: a.compliance,
            overdue: a.overdue.clone(),
            reboot_required: a.reboot_required,
            indexes_stale: a.indexes_stale,
        }
    }
}
