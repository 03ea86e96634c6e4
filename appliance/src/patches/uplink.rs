//! A device's assessment as the uplink batch carries it
//! ([`outpost_uplink::batch::PatchCompliance`]), and queueing it for the
//! next batch when it changed. Owns only that conversion; the pending
//! entries belong to the uplink outbox (`uplink_pending`).

use outpost_patch::assess::{Compliance, DeviceAssessment, SeverityCounts};
use outpost_proto::DeviceId;
use outpost_storage::{Batch, Store};
use outpost_uplink::batch::{ComplianceState, PatchCompliance, PatchDetail, PatchSeverityCounts};

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

/// Adds `a`'s summary to `batch` for the uplink when it differs from
/// `previous`'s (or there is none), and the site is joined. Returns
/// whether it was added.
pub fn queue_if_changed(
    store: &Store,
    batch: &mut Batch,
    device: DeviceId,
    a: &DeviceAssessment,
    previous: Option<&DeviceAssessment>,
) -> anyhow::Result<bool> {
    let now = compliance_of(device, a);
    if previous.is_some_and(|p| same(&compliance_of(device, p), &now)) {
        return Ok(false);
    }
    Ok(outpost_uplink::outbox::patch_compliance_into(
        store, batch, &now,
    )?)
}
