//! A device's assessment as the uplink batch carries it
//! ([`outpost_uplink::batch::PatchCompliance`], and its missing patches
//! and CVEs as [`PatchFindings`]), and queueing both for the next batch
//! when they changed. Owns only that conversion; the pending entries
//! belong to the uplink outbox (`uplink_pending`).

use std::collections::BTreeMap;

use outpost_patch::assess::{Compliance, DeviceAssessment, FindingState, SeverityCounts};
use outpost_patch::severity::Severity;
use outpost_proto::DeviceId;
use outpost_storage::{Batch, Store};
use outpost_uplink::batch::{
    ComplianceState, FindingSeverity, MissingPatchEntry, PatchCompliance, PatchDetail,
    PatchFindings, PatchSeverityCounts, VulnGroup,
};

/// The uplink summary of `a` (its `as_of_ms` is the assessment time).
pub fn compliance_of(device: DeviceId, a: &DeviceAssessment) -> PatchCompliance {
    let sec = &a.counts.security_patches;
    PatchCompliance {
        device,
        missing: a.counts.patches,
        missing_critical: sec.critical,
        installed_pending_reboot: u32::from(a.reboot_required),
        as_of_ms: a.assessed_at_ms,
        detail: Some(PatchDetail {
            compliance: match a.compliance {
                Compliance::Compliant => ComplianceState::Compliant,
                Compliance::NonCompliant => ComplianceState::NonCompliant,
                Compliance::UnsupportedRelease => ComplianceState::UnsupportedRelease,
                Compliance::NoCatalog => ComplianceState::NoCatalog,
            },
            security_patches: severity_counts(sec),
            fixable_cves: total(&a.counts.fixable),
            open_cves: total(&a.counts.open),
            risk: a.risk,
            scanned_at_ms: a.scanned_at_ms,
            reboot_required: a.reboot_required,
        }),
    }
}

fn finding_severity(s: Severity) -> FindingSeverity {
    match s {
        Severity::Unimportant => FindingSeverity::Unimportant,
        Severity::Unknown => FindingSeverity::Unknown,
        Severity::Low => FindingSeverity::Low,
        Severity::Medium => FindingSeverity::Medium,
        Severity::High => FindingSeverity::High,
        Severity::Critical => FindingSeverity::Critical,
    }
}

/// The missing patches and vulnerable CVEs (fixable and open, not
/// unimportant: those the site counts) of `a`, as the batch carries them.
/// CVEs are grouped by (source package, installed version, fixed version,
/// fix available, severity), in the assessment's order.
pub fn findings_of(device: DeviceId, a: &DeviceAssessment) -> PatchFindings {
    let patches = a
        .patches
        .iter()
        .map(|p| MissingPatchEntry {
            source: p.source.to_string(),
            installed: p.installed.to_string(),
            candidate: p.candidate.as_ref().map(|c| c.to_string()),
            binaries: p.binaries.len() as u32,
            security: p.security,
            severity: p.severity.map(finding_severity),
            cves: p.cves.iter().map(|c| c.to_string()).collect(),
            reboot_expected: p.reboot_expected,
            first_seen_ms: p.first_seen_ms,
        })
        .collect();
    type Key = (String, String, Option<String>, bool, FindingSeverity);
    let mut groups: BTreeMap<Key, Vec<String>> = BTreeMap::new();
    for (p, f) in a.all_findings() {
        if f.severity == Severity::Unimportant
            || !matches!(f.state, FindingState::Fixable | FindingState::Open)
        {
            continue;
        }
        let fixed = match f.state {
            FindingState::Fixable => f.fixed.as_ref().map(|v| v.to_string()),
            _ => None,
        };
        // A fixable finding always names its fixed version; without one
        // it is shown open rather than lost.
        let fix_available = fixed.is_some() && f.fix_available;
        groups
            .entry((
                p.source.to_string(),
                p.installed.to_string(),
                fixed,
                fix_available,
                finding_severity(f.severity),
            ))
            .or_default()
            .push(f.id.to_string());
    }
    PatchFindings {
        device,
        as_of_ms: a.assessed_at_ms,
        patches,
        vulns: groups
            .into_iter()
            .map(
                |((source, installed, fixed, fix_available, severity), cves)| VulnGroup {
                    source,
                    installed,
                    fixed,
                    fix_available,
                    severity,
                    cves,
                },
            )
            .collect(),
    }
}

fn severity_counts(s: &SeverityCounts) -> PatchSeverityCounts {
    PatchSeverityCounts {
        critical: s.critical,
        high: s.high,
        medium: s.medium,
        low: s.low,
        unknown: s.unknown,
    }
}

/// Not unimportant ones (the assessment keeps them apart).
fn total(s: &SeverityCounts) -> u32 {
    s.critical + s.high + s.medium + s.low + s.unknown
}

/// Whether two summaries say the same (ignoring when they were taken).
fn same(a: &PatchCompliance, b: &PatchCompliance) -> bool {
    PatchCompliance {
        as_of_ms: 0,
        ..a.clone()
    } == PatchCompliance {
        as_of_ms: 0,
        ..b.clone()
    }
}

/// Whether two findings say the same (ignoring when they were taken).
fn same_findings(a: &PatchFindings, b: &PatchFindings) -> bool {
    a.patches == b.patches && a.vulns == b.vulns
}

/// Adds `a`'s summary, and its findings, to `batch` for the uplink, each
/// when it differs from `previous`'s (or there is none), and the site is
/// joined. Returns whether anything was added.
pub fn queue_if_changed(
    store: &Store,
    batch: &mut Batch,
    device: DeviceId,
    a: &DeviceAssessment,
    previous: Option<&DeviceAssessment>,
) -> anyhow::Result<bool> {
    let mut added = false;
    let now = compliance_of(device, a);
    if !previous.is_some_and(|p| same(&compliance_of(device, p), &now)) {
        added |= outpost_uplink::outbox::patch_compliance_into(store, batch, &now)?;
    }
    let findings = findings_of(device, a);
    if !previous.is_some_and(|p| same_findings(&findings_of(device, p), &findings)) {
        added |= outpost_uplink::outbox::patch_findings_into(store, batch, &findings)?;
    }
    Ok(added)
}
