//! Assessment of one device, a pure function of (scan, catalog, policy,
//! previous assessment, now):
//!
//! - **findings**, per installed source package and version (debsecan's
//!   way: the installed *source* version against each advisory of the
//!   device's release): `fixable` (the release has a fixed version newer
//!   than the installed one), `open` (affected, no fix in the release yet),
//!   `undetermined` (the tracker has not decided), and `unimportant`
//!   (urgency unimportant, whatever the state) shown apart and never
//!   counted in risk or compliance. Several advisories for one CVE (tracker
//!   and OSV) merge: fixable wins over open over undetermined, the highest
//!   fixed version, the highest known severity.
//! - **missing patches**: apt's candidate upgrades grouped by source
//!   package and candidate source version, with the CVEs the candidate
//!   fixes (supersedence: a candidate closes every fix at or below its
//!   version), their highest severity, the reboot heuristic, "fix not in
//!   configured repositories" (CVEs whose fixed version is newer than the
//!   candidate; a fixable finding no candidate reaches), risk and age
//!   (first seen, carried from the previous assessment per source
//!   package).
//! - **risk** and **compliance** as documented in [`policy`].
//!
//! An unknown release, an RPM system, or a release the catalog has no
//! advisories for gives `unsupported-release` (never compliant); an empty
//! catalog gives `no-catalog`.

pub mod fleet;
pub mod legacy;
pub mod policy;

use crate::smallstr::{FxBuild, SmallStr};
use std::collections::{BTreeSet, HashMap};

use crate::catalog::{Advisory, Catalog, ChangeSet, Exposure, ReleaseHandle, SourceCatalog};
use crate::release::ReleaseKey;
use crate::scan::model::{DpkgPackage, PackageManager, Scan};
use crate::severity::Severity;
use crate::version::DebVersion;

pub use policy::{DAY_MS, Policy, device_risk, patch_risk, reboot_expected};

/// Whether a finding can be fixed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FindingState {
    /// The release has a fixed version newer than the installed one.
    Fixable,
    /// Affected; no fix in the release yet.
    Open,
    /// Not known yet whether the release is affected.
    Undetermined,
}

/// One vulnerability of one installed source package.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Finding {
    /// The CVE id (or the advisory's own id when it names no CVE).
    pub id: SmallStr,
    pub state: FindingState,
    pub severity: Severity,
    /// The release's fixed version (fixable findings).
    pub fixed: Option<DebVersion>,
    /// A candidate upgrade on this device closes it.
    pub fix_available: bool,
    /// The advisory that reported it when it is not the CVE itself
    /// (`DSA-5555-1`, `USN-6000-1`, `DEBIAN-CVE-…`).
    pub via: Option<Box<SmallStr>>,
    /// The tracker marks it "no DSA" (minor issue, postponed, ignored) or
    /// scheduled for a point release.
    pub no_dsa: bool,
    /// The release no longer supports the package.
    pub end_of_life: bool,
}

impl Finding {
    /// Fixable, but no candidate upgrade of this device reaches the fix:
    /// the fix is not in the device's configured repositories (or its
    /// indexes are stale).
    pub fn fix_not_in_repositories(&self) -> bool {
        self.state == FindingState::Fixable && !self.fix_available
    }
}

/// An installed source package version with findings; its findings are
/// `DeviceAssessment::findings[first..first + count]`, sorted by id (one
/// vector per device rather than one per package: an assessment is a
/// handful of allocations).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PackageFindings {
    pub source: SmallStr,
    /// Installed source version.
    pub installed: DebVersion,
    pub first: u32,
    pub count: u32,
}

/// One binary package of a missing patch.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PatchBinary {
    pub name: String,
    pub arch: Option<String>,
    pub from: DebVersion,
    pub to: DebVersion,
    /// Held (`apt-mark hold`): apt will not install it by itself.
    pub held: bool,
}

/// An upgrade apt offers for an installed source package.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct MissingPatch {
    pub source: SmallStr,
    /// Installed source version.
    pub installed: DebVersion,
    /// The candidate's source version; `None` when the binaries are
    /// versioned apart from their source (then its CVEs are not known).
    pub candidate: Option<DebVersion>,
    pub binaries: Vec<PatchBinary>,
    /// Offered by a security pocket.
    pub security: bool,
    /// CVEs the candidate fixes (sorted), unimportant ones apart.
    pub cves: Vec<SmallStr>,
    pub unimportant_cves: Vec<SmallStr>,
    /// Highest severity of those CVEs (`unimportant` when it fixes only
    /// unimportant ones, `None` without CVEs).
    pub severity: Option<Severity>,
    /// CVEs whose fixed version is newer than this candidate: the fix is
    /// not in the configured repositories.
    pub fix_not_in_repositories: Vec<SmallStr>,
    pub reboot_expected: bool,
    /// When this device was first seen missing an update of this source
    /// package (Unix ms).
    pub first_seen_ms: u64,
    /// 1–10, see [`policy`].
    pub risk: u32,
    /// Bytes to download: the sum of its binaries' candidate sizes, `None`
    /// when one of them is unknown (a report of format 1, or apt could not
    /// tell).
    pub download_bytes: Option<u64>,
    /// When this device was first seen offered this candidate (Unix ms):
    /// what an approval rule's delay counts from. `first_seen_ms` is the
    /// source's (how long the device has been behind, for compliance); a
    /// newer candidate of the same source starts here afresh.
    pub candidate_first_seen_ms: u64,
}

impl MissingPatch {
    /// `source/candidate` (or `source/?binary` when the candidate's source
    /// version is unknown): the patch's identity across devices.
    pub fn id(&self) -> String {
        match &self.candidate {
            Some(c) => format!("{}/{}", self.source, c),
            None => format!(
                "{}/?{}",
                self.source,
                self.binaries.first().map_or("", |b| b.name.as_str())
            ),
        }
    }

    /// A security update: from a security pocket, or fixing a CVE above
    /// `unimportant`.
    pub fn is_security(&self) -> bool {
        self.security || self.severity.is_some_and(|s| s > Severity::Unimportant)
    }

    /// The severity compliance judges: the CVEs', or `unknown` for a
    /// security-pocket update without known CVEs.
    pub fn effective_severity(&self) -> Option<Severity> {
        self.severity.or(self.security.then_some(Severity::Unknown))
    }
}

/// Why a device was (not) assessed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AssessmentStatus {
    Assessed,
    /// Not a Debian/Ubuntu release this build and catalog know (or RPM).
    UnsupportedRelease,
    /// No advisories imported yet.
    NoCatalog,
}

/// A device's compliance (see [`policy`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Compliance {
    Compliant,
    NonCompliant,
    UnsupportedRelease,
    NoCatalog,
}

/// Counts by severity.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SeverityCounts {
    pub unimportant: u32,
    pub unknown: u32,
    pub low: u32,
    pub medium: u32,
    pub high: u32,
    pub critical: u32,
}

impl SeverityCounts {
    pub fn add(&mut self, s: Severity) {
        let slot = match s {
            Severity::Unimportant => &mut self.unimportant,
            Severity::Unknown => &mut self.unknown,
            Severity::Low => &mut self.low,
            Severity::Medium => &mut self.medium,
            Severity::High => &mut self.high,
            Severity::Critical => &mut self.critical,
        };
        *slot = slot.saturating_add(1);
    }

    pub fn merge(&mut self, o: &SeverityCounts) {
        self.unimportant += o.unimportant;
        self.unknown += o.unknown;
        self.low += o.low;
        self.medium += o.medium;
        self.high += o.high;
        self.critical += o.critical;
    }

    pub fn total(&self) -> u32 {
        self.unimportant + self.unknown + self.low + self.medium + self.high + self.critical
    }

    pub fn at_least(&self, s: Severity) -> u32 {
        Severity::ALL
            .iter()
            .filter(|x| **x >= s)
            .map(|x| self.get(*x))
            .sum()
    }

    pub fn get(&self, s: Severity) -> u32 {
        match s {
            Severity::Unimportant => self.unimportant,
            Severity::Unknown => self.unknown,
            Severity::Low => self.low,
            Severity::Medium => self.medium,
            Severity::High => self.high,
            Severity::Critical => self.critical,
        }
    }
}

/// The counts an overview (and central's uplink summary) shows.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AssessmentCounts {
    /// Fixable CVE findings by severity (unimportant ones apart).
    pub fixable: SeverityCounts,
    /// Open (unfixable) CVE findings by severity.
    pub open: SeverityCounts,
    pub undetermined: u32,
    pub unimportant: u32,
    /// Fixable findings no candidate reaches.
    pub fix_not_in_repositories: u32,
    pub patches: u32,
    /// Missing security patches by (effective) severity.
    pub security_patches: SeverityCounts,
    /// Packages apt would newly install (dependencies of the upgrades).
    pub new_packages: u32,
}

/// The assessment of one device.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DeviceAssessment {
    pub assessed_at_ms: u64,
    pub scanned_at_ms: u64,
    /// [`Scan::digest`] of the scan assessed.
    pub scan_digest: u64,
    pub release: Option<ReleaseKey>,
    pub status: AssessmentStatus,
    /// Why the device is not assessed (for unsupported/no-catalog).
    pub status_reason: Option<String>,
    /// Packages with findings, sorted by source name.
    pub packages: Vec<PackageFindings>,
    /// Every finding, grouped by package (see [`PackageFindings`]).
    pub findings: Vec<Finding>,
    /// Sorted by source name.
    pub patches: Vec<MissingPatch>,
    pub counts: AssessmentCounts,
    /// 0–100; `None` when not assessed.
    pub risk: Option<u32>,
    pub compliance: Compliance,
    /// Ids of the patches that make it non-compliant.
    pub overdue: Vec<String>,
    pub reboot_required: bool,
    /// The last apt index refresh failed: upgrades may be missing.
    pub indexes_stale: bool,
}

/// What a set of missing patches costs to download: the bytes of those
/// whose size is known, and how many are of unknown size (shown as "at
/// least", or "unknown" when none is known).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DownloadSize {
    pub bytes: u64,
    /// Patches whose size is unknown (not counted in `bytes`).
    pub unknown: u32,
    /// Patches counted.
    pub patches: u32,
}

impl DownloadSize {
    pub fn add(&mut self, p: &MissingPatch) {
        self.patches = self.patches.saturating_add(1);
        match p.download_bytes {
            Some(n) => self.bytes = self.bytes.saturating_add(n),
            None => self.unknown = self.unknown.saturating_add(1),
        }
    }

    pub fn merge(&mut self, o: &DownloadSize) {
        self.bytes = self.bytes.saturating_add(o.bytes);
        self.unknown = self.unknown.saturating_add(o.unknown);
        self.patches = self.patches.saturating_add(o.patches);
    }

    /// `12.3 MiB`, `at least 12.3 MiB (2 sizes unknown)`, `unknown`, or
    /// `0 B` for nothing to download.
    pub fn display(&self) -> String {
        if self.patches > 0 && self.unknown == self.patches {
            return "unknown".into();
        }
        let b = human_bytes(self.bytes);
        match self.unknown {
            0 => b,
            1 => format!("at least {b} (1 size unknown)"),
            n => format!("at least {b} ({n} sizes unknown)"),
        }
    }
}

/// Bytes in binary units with one decimal (`512 B`, `1.5 KiB`, `12.3 MiB`).
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = UNITS[0];
    for u in &UNITS[1..] {
        if v < 1024.0 {
            break;
        }
        v /= 1024.0;
        unit = u;
    }
    format!("{v:.1} {unit}")
}

impl DeviceAssessment {
    /// What the device's missing patches cost to download.
    pub fn download_size(&self) -> DownloadSize {
        let mut d = DownloadSize::default();
        for p in &self.patches {
            d.add(p);
        }
        d
    }

    /// The findings of one of this assessment's packages.
    pub fn findings_of(&self, p: &PackageFindings) -> &[Finding] {
        let start = p.first as usize;
        self.findings
            .get(start..start + p.count as usize)
            .unwrap_or(&[])
    }

    /// Every finding with its package.
    pub fn all_findings(&self) -> impl Iterator<Item = (&PackageFindings, &Finding)> {
        self.packages
            .iter()
            .flat_map(move |p| self.findings_of(p).iter().map(move |x| (p, x)))
    }

    fn findings_where(
        &self,
        f: impl Fn(&Finding) -> bool,
    ) -> impl Iterator<Item = (&PackageFindings, &Finding)> {
        self.all_findings().filter(move |(_, x)| f(x))
    }

    /// Vulnerable and fixable (not unimportant).
    pub fn fixable(&self) -> impl Iterator<Item = (&PackageFindings, &Finding)> {
        self.findings_where(|f| {
            f.state == FindingState::Fixable && f.severity != Severity::Unimportant
        })
    }

    /// Vulnerable without a fix yet (not unimportant).
    pub fn open(&self) -> impl Iterator<Item = (&PackageFindings, &Finding)> {
        self.findings_where(|f| {
            f.state == FindingState::Open && f.severity != Severity::Unimportant
        })
    }

    pub fn undetermined(&self) -> impl Iterator<Item = (&PackageFindings, &Finding)> {
        self.findings_where(|f| {
            f.state == FindingState::Undetermined && f.severity != Severity::Unimportant
        })
    }

    /// Urgency `unimportant`, whatever the state.
    pub fn unimportant(&self) -> impl Iterator<Item = (&PackageFindings, &Finding)> {
        self.findings_where(|f| f.severity == Severity::Unimportant)
    }

    /// The findings for one CVE (or advisory id).
    pub fn finding(&self, id: &str) -> impl Iterator<Item = (&PackageFindings, &Finding)> {
        self.packages.iter().filter_map(move |p| {
            let findings = self.findings_of(p);
            let i = findings.binary_search_by(|f| (*f.id).cmp(id)).ok()?;
            Some((p, &findings[i]))
        })
    }
}

/// One advisory's contribution to a finding, before merging.
struct Contribution<'a> {
    key: &'a SmallStr,
    exposure: Exposure<'a>,
    severity: Severity,
    via: Option<&'a SmallStr>,
    no_dsa: bool,
    end_of_life: bool,
    /// Bit i: candidate i of this source package is not affected.
    closed_by: u64,
}

/// Assesses one device. `previous` (the device's last assessment) carries
/// the first-seen times of its missing patches; `now_ms` is the caller's
/// clock.
pub fn assess_device(
    scan: &Scan,
    catalog: &Catalog,
    policy: &Policy,
    previous: Option<&DeviceAssessment>,
    now_ms: u64,
) -> DeviceAssessment {
    let release = scan.release();
    let mut out = DeviceAssessment {
        assessed_at_ms: now_ms,
        scanned_at_ms: scan.scanned_at_ms,
        scan_digest: scan.digest(),
        release: release.clone(),
        status: AssessmentStatus::Assessed,
        status_reason: None,
        packages: Vec::new(),
        findings: Vec::new(),
        patches: Vec::new(),
        counts: AssessmentCounts::default(),
        risk: None,
        compliance: Compliance::Compliant,
        overdue: Vec::new(),
        reboot_required: scan.reboot.required,
        indexes_stale: scan.indexes.error.is_some(),
    };
    let handle = match (scan.manager, &release) {
        (PackageManager::Rpm, _) => {
            out.status = AssessmentStatus::UnsupportedRelease;
            out.status_reason = Some("RPM systems are inventoried but not assessed yet".into());
            None
        }
        (_, None) => {
            out.status = AssessmentStatus::UnsupportedRelease;
            out.status_reason = Some(format!(
                "os-release (ID={:?}, codename {:?}) names no Debian or Ubuntu release this build knows",
                scan.os.id, scan.os.codename
            ));
            None
        }
        (_, Some(_)) if catalog.is_empty() => {
            out.status = AssessmentStatus::NoCatalog;
            out.status_reason =
                Some("no advisories imported yet (outpost advisories import)".into());
            None
        }
        (_, Some(r)) => match catalog.release(r) {
            Some(h) => Some(h),
            None => {
                out.status = AssessmentStatus::UnsupportedRelease;
                out.status_reason = Some(format!("the catalog has no advisories for release {r}"));
                None
            }
        },
    };

    build_patches(scan, previous, now_ms, &mut out);
    if let Some(handle) = &handle {
        build_findings(scan, catalog, handle, None, &mut out);
    }
    finish(policy, now_ms, &mut out);
    out
}

/// Re-assesses a device after a catalog update, recomputing only the
/// source packages `changes` (from [`Catalog::changes_since`]) names for
/// the device's release; everything else is taken from `previous`. Falls
/// back to [`assess_device`] when `previous` was not made from this scan
/// (digest), was not `assessed`, or is of another release. The result is
/// the same as a full assessment's (tested).
pub fn reassess_device(
    previous: &DeviceAssessment,
    scan: &Scan,
    catalog: &Catalog,
    changes: &ChangeSet,
    policy: &Policy,
    now_ms: u64,
) -> DeviceAssessment {
    let release = scan.release();
    let usable = previous.status == AssessmentStatus::Assessed
        && previous.release == release
        && scan.manager == PackageManager::Dpkg
        && previous.scan_digest == scan.digest();
    let handle = match (&release, usable) {
        (Some(r), true) => catalog.release(r),
        _ => None,
    };
    let (Some(release), Some(handle)) = (release, handle) else {
        return assess_device(scan, catalog, policy, Some(previous), now_ms);
    };
    // Everything but the two large vectors, which are rebuilt below.
    let mut out = DeviceAssessment {
        assessed_at_ms: now_ms,
        scanned_at_ms: previous.scanned_at_ms,
        scan_digest: previous.scan_digest,
        release: previous.release.clone(),
        status: previous.status,
        status_reason: previous.status_reason.clone(),
        packages: Vec::new(),
        findings: Vec::new(),
        patches: previous.patches.clone(),
        counts: AssessmentCounts {
            new_packages: previous.counts.new_packages,
            ..AssessmentCounts::default()
        },
        risk: None,
        compliance: previous.compliance,
        overdue: Vec::new(),
        reboot_required: previous.reboot_required,
        indexes_stale: previous.indexes_stale,
    };
    match changes.changed.get(&release) {
        None => {
            out.packages = previous.packages.clone();
            out.findings = previous.findings.clone();
        }
        Some(changed) => {
            for patch in out
                .patches
                .iter_mut()
                .filter(|p| changed.contains(&*p.source))
            {
                patch.cves.clear();
                patch.unimportant_cves.clear();
                patch.fix_not_in_repositories.clear();
                patch.severity = None;
            }
            build_findings(scan, catalog, &handle, Some(changed), &mut out);
            // Merge the kept packages (previous) with the recomputed ones
            // (out), both sorted by (source, installed), into one vector.
            let fresh = std::mem::take(&mut out.packages);
            let fresh_findings = std::mem::take(&mut out.findings);
            let kept: Vec<&PackageFindings> = previous
                .packages
                .iter()
                .filter(|p| !changed.contains(&*p.source))
                .collect();
            out.packages.reserve(kept.len() + fresh.len());
            out.findings
                .reserve(previous.findings.len() + fresh_findings.len());
            let order = |a: &PackageFindings, b: &PackageFindings| {
                a.source
                    .cmp(&b.source)
                    .then_with(|| a.installed.as_str().cmp(b.installed.as_str()))
            };
            let (mut i, mut j) = (0, 0);
            while i < kept.len() || j < fresh.len() {
                let take_kept = j >= fresh.len()
                    || (i < kept.len() && order(kept[i], &fresh[j]) != std::cmp::Ordering::Greater);
                let (p, from) = if take_kept {
                    i += 1;
                    (kept[i - 1], &previous.findings)
                } else {
                    j += 1;
                    (&fresh[j - 1], &fresh_findings)
                };
                let start = p.first as usize;
                let slice = from.get(start..start + p.count as usize).unwrap_or(&[]);
                out.packages.push(PackageFindings {
                    source: p.source.clone(),
                    installed: p.installed.clone(),
                    first: out.findings.len() as u32,
                    count: slice.len() as u32,
                });
                out.findings.extend_from_slice(slice);
            }
        }
    }
    finish(policy, now_ms, &mut out);
    out
}

/// Groups apt's upgrades into patches by (source, candidate source version).
fn build_patches(
    scan: &Scan,
    previous: Option<&DeviceAssessment>,
    now_ms: u64,
    out: &mut DeviceAssessment,
) {
    for upgrade in &scan.upgrades {
        let Some(from) = &upgrade.from else {
            out.counts.new_packages += 1;
            continue;
        };
        let installed = find_installed(&scan.dpkg, &upgrade.name, upgrade.arch.as_deref());
        let (source, installed_source): (&str, &DebVersion) = match installed {
            Some(p) => (p.source_name(), p.source_version()),
            None => (&upgrade.name, from),
        };
        let candidate = match installed {
            Some(p) => match &p.source_version {
                None => Some(upgrade.to.without_binnmu()),
                Some(sv) if p.version.without_binnmu().as_str() == sv.as_str() => {
                    Some(upgrade.to.without_binnmu())
                }
                Some(_) => None,
            },
            None => Some(upgrade.to.without_binnmu()),
        };
        let binary = PatchBinary {
            name: upgrade.name.clone(),
            arch: upgrade.arch.clone(),
            from: from.clone(),
            to: upgrade.to.clone(),
            held: installed.is_some_and(|p| p.held),
        };
        let existing = out.patches.iter_mut().find(|p| {
            &*p.source == source
                && match (&p.candidate, &candidate) {
                    (Some(a), Some(b)) => a.as_str() == b.as_str(),
                    (None, None) => p.binaries.first().is_some_and(|b| b.name == upgrade.name),
                    _ => false,
                }
        });
        match existing {
            Some(p) => {
                p.security |= upgrade.security;
                p.download_bytes = p
                    .download_bytes
                    .zip(upgrade.size_bytes)
                    .map(|(a, b)| a.saturating_add(b));
                p.binaries.push(binary);
            }
            None => {
                let first_seen_ms = previous
                    .and_then(|prev| prev.patches.iter().find(|p| &*p.source == source))
                    .map_or(now_ms, |p| p.first_seen_ms.min(now_ms));
                let candidate_first_seen_ms = previous
                    .and_then(|prev| {
                        prev.patches.iter().find(|p| {
                            &*p.source == source
                                && p.candidate.as_ref().map(DebVersion::as_str)
                                    == candidate.as_ref().map(DebVersion::as_str)
                        })
                    })
                    .map_or(now_ms, |p| p.candidate_first_seen_ms.min(now_ms));
                out.patches.push(MissingPatch {
                    source: source.into(),
                    installed: installed_source.clone(),
                    candidate,
                    binaries: vec![binary],
                    security: upgrade.security,
                    cves: Vec::new(),
                    unimportant_cves: Vec::new(),
                    severity: None,
                    fix_not_in_repositories: Vec::new(),
                    reboot_expected: false,
                    first_seen_ms,
                    risk: 0,
                    download_bytes: upgrade.size_bytes,
                    candidate_first_seen_ms,
                });
            }
        }
    }
    out.patches.sort_by(|a, b| {
        a.source
            .cmp(&b.source)
            .then_with(|| patch_order(a).cmp(&patch_order(b)))
    });
}

/// Orders the patches of one source like their ids, without formatting.
fn patch_order(p: &MissingPatch) -> (bool, &str) {
    match &p.candidate {
        Some(c) => (false, c.as_str()),
        None => (true, p.binaries.first().map_or("", |b| b.name.as_str())),
    }
}

/// The installed package an upgrade line speaks of (dpkg list is sorted by
/// name, arch).
fn find_installed<'a>(
    dpkg: &'a [DpkgPackage],
    name: &str,
    arch: Option<&str>,
) -> Option<&'a DpkgPackage> {
    let start = dpkg.partition_point(|p| p.name.as_str() < name);
    let same: &[DpkgPackage] =
        &dpkg[start..dpkg[start..].partition_point(|p| p.name == name) + start];
    arch.and_then(|a| same.iter().find(|p| p.arch == a))
        .or_else(|| same.first())
}

/// Findings of the installed source packages (only those in `only` when
/// given), and the CVE lists of their patches.
fn build_findings(
    scan: &Scan,
    catalog: &Catalog,
    handle: &ReleaseHandle,
    only: Option<&BTreeSet<String>>,
    out: &mut DeviceAssessment,
) {
    let wanted = |source: &str| only.is_none_or(|set| set.contains(source));
    // Distinct (source, source version) pairs.
    let mut groups: Vec<(&str, &DebVersion)> = scan
        .dpkg
        .iter()
        .map(|p| (p.source_name(), p.source_version()))
        .filter(|(s, _)| wanted(s))
        .collect();
    groups.sort_by(|a, b| a.0.cmp(b.0).then_with(|| a.1.as_str().cmp(b.1.as_str())));
    groups.dedup_by(|a, b| a.0 == b.0 && a.1.as_str() == b.1.as_str());

    out.packages.reserve(groups.len());
    // Patches by source name, for candidate evaluation.
    let mut patches_of: HashMap<&str, Vec<usize>, FxBuild> = HashMap::default();
    for (i, p) in out.patches.iter().enumerate() {
        patches_of.entry(&*p.source).or_default().push(i);
    }
    let mut patch_cves: Vec<Vec<(SmallStr, Severity)>> = vec![Vec::new(); out.patches.len()];
    let mut patch_beyond: Vec<Vec<SmallStr>> = vec![Vec::new(); out.patches.len()];

    let mut contributions: Vec<Contribution<'_>> = Vec::new();
    for (source, installed) in groups {
        let Some((name, advisories)) = catalog.package_entries(handle, source) else {
            continue;
        };
        // Candidates (source versions) of this package's patches.
        let candidates: Vec<(usize, &DebVersion)> = patches_of
            .get(source)
            .map(|ids| {
                ids.iter()
                    .filter(|i| out.patches[**i].installed.as_str() == installed.as_str())
                    .filter_map(|i| Some((*i, out.patches[*i].candidate.as_ref()?)))
                    .take(64)
                    .collect()
            })
            .unwrap_or_default();
        contributions.clear();
        for a in advisories {
            contribute(a.0, a.1, installed, &candidates, &mut contributions);
        }
        if contributions.is_empty() {
            continue;
        }
        contributions.sort_by(|a, b| a.key.cmp(b.key));
        let first = out.findings.len();
        let mut i = 0;
        while i < contributions.len() {
            let mut j = i + 1;
            while j < contributions.len() && contributions[j].key == contributions[i].key {
                j += 1;
            }
            let (finding, closed_by) = merge(&contributions[i..j]);
            for (bit, (patch, _)) in candidates.iter().enumerate() {
                let closes = closed_by & (1u64 << bit) != 0;
                if closes && finding.state != FindingState::Undetermined {
                    patch_cves[*patch].push((finding.id.clone(), finding.severity));
                } else if !closes && finding.state == FindingState::Fixable {
                    patch_beyond[*patch].push(finding.id.clone());
                }
            }
            out.findings.push(finding);
            i = j;
        }
        out.packages.push(PackageFindings {
            source: name.clone(),
            installed: installed.clone(),
            first: first as u32,
            count: (out.findings.len() - first) as u32,
        });
    }
    for (i, patch) in out.patches.iter_mut().enumerate() {
        if !wanted(&patch.source) {
            continue;
        }
        let mut cves = std::mem::take(&mut patch_cves[i]);
        cves.sort_by(|a, b| a.0.cmp(&b.0));
        cves.dedup_by(|a, b| a.0 == b.0);
        patch.severity = cves.iter().map(|(_, s)| *s).max();
        let (unimportant, important): (Vec<_>, Vec<_>) = cves
            .into_iter()
            .partition(|(_, s)| *s == Severity::Unimportant);
        patch.cves = important.into_iter().map(|(id, _)| id).collect();
        patch.unimportant_cves = unimportant.into_iter().map(|(id, _)| id).collect();
        let mut beyond = std::mem::take(&mut patch_beyond[i]);
        beyond.sort();
        beyond.dedup();
        patch.fix_not_in_repositories = beyond;
    }
}

fn contribute<'a>(
    source: &'a SourceCatalog,
    advisory: &'a Advisory,
    installed: &DebVersion,
    candidates: &[(usize, &DebVersion)],
    out: &mut Vec<Contribution<'a>>,
) {
    let exposure = advisory.affected.exposure(installed);
    if exposure == Exposure::NotAffected {
        return;
    }
    let mut closed_by = 0u64;
    if exposure.is_affected() {
        for (bit, (_, candidate)) in candidates.iter().enumerate() {
            if advisory.affected.exposure(candidate) == Exposure::NotAffected {
                closed_by |= 1 << bit;
            }
        }
    }
    let mut push = |key: &'a SmallStr, via: Option<&'a SmallStr>| {
        out.push(Contribution {
            key,
            exposure,
            severity: advisory.severity,
            via,
            no_dsa: advisory.no_dsa.is_some(),
            end_of_life: advisory.end_of_life,
            closed_by,
        });
    };
    if advisory.single_key {
        // A tracker CVE: its key is its id; no trip to the vuln table.
        push(&advisory.key, None);
        return;
    }
    if let Some(vuln) = source.vuln(advisory.vuln) {
        for key in vuln.keys() {
            push(key, (vuln.id != *key).then_some(&vuln.id));
        }
    }
}

/// Merges the contributions of one id: fixable > open > undetermined, the
/// highest fixed version, the highest known severity; a candidate closes
/// the finding when it closes every affected contribution.
fn merge(cs: &[Contribution<'_>]) -> (Finding, u64) {
    let mut fixed: Option<&DebVersion> = None;
    let mut open = false;
    let mut closed_by = u64::MAX;
    let mut any_affected = false;
    let mut severity: Option<Severity> = None;
    let mut via = None;
    let (mut no_dsa, mut end_of_life) = (false, false);
    for c in cs {
        match c.exposure {
            Exposure::Fixable(f) => fixed = Some(fixed.map_or(f, |x| x.max(f))),
            Exposure::Unfixed => open = true,
            _ => {}
        }
        if c.exposure.is_affected() {
            any_affected = true;
            closed_by &= c.closed_by;
        }
        if c.severity != Severity::Unknown {
            severity = Some(severity.map_or(c.severity, |s| s.max(c.severity)));
        }
        if via.is_none() {
            via = c.via;
        }
        no_dsa |= c.no_dsa;
        end_of_life |= c.end_of_life;
    }
    let state = if fixed.is_some() {
        FindingState::Fixable
    } else if open {
        FindingState::Open
    } else {
        FindingState::Undetermined
    };
    if !any_affected {
        closed_by = 0;
    }
    let finding = Finding {
        id: cs[0].key.clone(),
        state,
        severity: severity.unwrap_or(Severity::Unknown),
        fixed: fixed.cloned(),
        fix_available: closed_by != 0,
        via: via.map(|v| Box::new(v.clone())),
        no_dsa,
        end_of_life,
    };
    (finding, closed_by)
}

fn finish(policy: &Policy, now_ms: u64, out: &mut DeviceAssessment) {
    let assessed = out.status == AssessmentStatus::Assessed;
    let mut open_high = 0;
    for f in &out.findings {
        if f.severity == Severity::Unimportant {
            out.counts.unimportant += 1;
            continue;
        }
        match f.state {
            FindingState::Fixable => {
                out.counts.fixable.add(f.severity);
                if !f.fix_available {
                    out.counts.fix_not_in_repositories += 1;
                }
            }
            FindingState::Open => {
                out.counts.open.add(f.severity);
                if f.severity >= Severity::High {
                    open_high += 1;
                }
            }
            FindingState::Undetermined => out.counts.undetermined += 1,
        }
    }
    let grace_ms = u64::from(policy.grace_days) * DAY_MS;
    for patch in &mut out.patches {
        patch.reboot_expected = reboot_expected(
            &patch.source,
            patch.binaries.iter().map(|b| b.name.as_str()),
        );
        let counted = patch.cves.len();
        let age = now_ms.saturating_sub(patch.first_seen_ms);
        patch.risk = patch_risk(
            patch.severity,
            patch.security,
            counted,
            patch.reboot_expected,
            age,
        );
        out.counts.patches += 1;
        if patch.is_security()
            && let Some(s) = patch.effective_severity()
        {
            out.counts.security_patches.add(s);
            if assessed && s >= policy.min_severity && age > grace_ms {
                out.overdue.push(patch.id());
            }
        }
    }
    match out.status {
        AssessmentStatus::Assessed => {
            out.risk = Some(device_risk(
                out.patches
                    .iter()
                    .filter(|p| p.is_security())
                    .map(|p| p.risk),
                open_high,
                out.reboot_required,
            ));
            out.compliance = if out.overdue.is_empty() {
                Compliance::Compliant
            } else {
                Compliance::NonCompliant
            };
        }
        AssessmentStatus::UnsupportedRelease => out.compliance = Compliance::UnsupportedRelease,
        AssessmentStatus::NoCatalog => out.compliance = Compliance::NoCatalog,
    }
}

#[cfg(test)]
mod tests;
