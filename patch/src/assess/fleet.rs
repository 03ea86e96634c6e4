//! Views over many devices' assessments: per CVE ("which devices are
//! exposed to CVE-X, and can they be fixed now?"), per patch (which devices
//! need it), the list of missing patches, and the fleet summary (counts by
//! severity, compliance %). Generic over the caller's device key.
//!
//! Each view is one pass over the assessments it is given; the caller
//! chooses the set (a site, a customer, a tenant).

use crate::smallstr::{FxBuild, SmallStr};
use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::{
    AssessmentStatus, Compliance, DeviceAssessment, DownloadSize, FindingState, SeverityCounts,
};
use crate::severity::Severity;
use crate::version::DebVersion;

/// One device's exposure to a CVE.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CveDevice<K> {
    pub device: K,
    pub source: SmallStr,
    pub installed: DebVersion,
    pub state: FindingState,
    pub severity: Severity,
    pub fixed: Option<DebVersion>,
    /// A candidate upgrade on the device closes it now.
    pub fix_available: bool,
}

/// Exposure of the fleet to one CVE (or advisory id).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CveView<K> {
    pub id: String,
    /// Highest severity any device's finding carries.
    pub severity: Option<Severity>,
    pub devices: Vec<CveDevice<K>>,
    /// Devices that can fix it now (a candidate reaches the fix).
    pub fixable_now: u32,
    /// Fixable in the release, but not from the devices' repositories.
    pub fix_not_in_repositories: u32,
    /// No fix in the release yet.
    pub open: u32,
    pub undetermined: u32,
}

/// Which devices are exposed to `id`, and can they be fixed now?
pub fn cve_view<'a, K: Clone + 'a>(
    id: &str,
    devices: impl IntoIterator<Item = (&'a K, &'a DeviceAssessment)>,
) -> CveView<K> {
    let mut view = CveView {
        id: id.to_string(),
        severity: None,
        devices: Vec::new(),
        fixable_now: 0,
        fix_not_in_repositories: 0,
        open: 0,
        undetermined: 0,
    };
    for (key, a) in devices {
        for (p, f) in a.finding(id) {
            match f.state {
                FindingState::Fixable if f.fix_available => view.fixable_now += 1,
                FindingState::Fixable => view.fix_not_in_repositories += 1,
                FindingState::Open => view.open += 1,
                FindingState::Undetermined => view.undetermined += 1,
            }
            view.severity = Some(view.severity.map_or(f.severity, |s| s.max(f.severity)));
            view.devices.push(CveDevice {
                device: key.clone(),
                source: p.source.clone(),
                installed: p.installed.clone(),
                state: f.state,
                severity: f.severity,
                fixed: f.fixed.clone(),
                fix_available: f.fix_available,
            });
        }
    }
    view
}

/// One device that misses an update of a source package.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PatchDevice<K> {
    pub device: K,
    pub installed: DebVersion,
    pub candidate: Option<DebVersion>,
    pub first_seen_ms: u64,
    pub risk: u32,
    pub held: bool,
}

/// The devices missing an update of one source package.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PatchView<K> {
    pub source: String,
    pub devices: Vec<PatchDevice<K>>,
    /// Union of the CVEs the devices' candidates fix.
    pub cves: BTreeSet<SmallStr>,
    pub severity: Option<Severity>,
    pub security: bool,
    pub reboot_expected: bool,
}

/// Which devices need an update of source package `source`?
pub fn patch_view<'a, K: Clone + 'a>(
    source: &str,
    devices: impl IntoIterator<Item = (&'a K, &'a DeviceAssessment)>,
) -> PatchView<K> {
    let mut view = PatchView {
        source: source.to_string(),
        devices: Vec::new(),
        cves: BTreeSet::new(),
        severity: None,
        security: false,
        reboot_expected: false,
    };
    for (key, a) in devices {
        let start = a.patches.partition_point(|p| &*p.source < source);
        for p in a.patches[start..]
            .iter()
            .take_while(|p| &*p.source == source)
        {
            view.cves.extend(p.cves.iter().cloned());
            view.severity = view.severity.max(p.severity);
            view.security |= p.security;
            view.reboot_expected |= p.reboot_expected;
            view.devices.push(PatchDevice {
                device: key.clone(),
                installed: p.installed.clone(),
                candidate: p.candidate.clone(),
                first_seen_ms: p.first_seen_ms,
                risk: p.risk,
                held: p.binaries.iter().any(|b| b.held),
            });
        }
    }
    view
}

/// One line of the fleet's missing-patch list.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PatchSummary {
    pub source: String,
    /// Candidate source versions offered across devices.
    pub candidates: BTreeSet<String>,
    pub devices: u32,
    pub cves: u32,
    pub severity: Option<Severity>,
    pub security: bool,
    pub reboot_expected: bool,
    pub max_risk: u32,
    pub oldest_first_seen_ms: u64,
    /// What the devices missing it download in all (each from the site's
    /// LAN cache; the cache fetches each package once).
    #[serde(default)]
    pub download: DownloadSize,
}

/// Every missing patch across the devices, by source package.
pub fn patch_list<'a>(
    devices: impl IntoIterator<Item = &'a DeviceAssessment>,
) -> Vec<PatchSummary> {
    let mut by_source: BTreeMap<SmallStr, (PatchSummary, BTreeSet<SmallStr>)> = BTreeMap::new();
    for a in devices {
        for p in &a.patches {
            let (s, cves) = by_source.entry(p.source.clone()).or_insert_with(|| {
                (
                    PatchSummary {
                        source: p.source.to_string(),
                        candidates: BTreeSet::new(),
                        devices: 0,
                        cves: 0,
                        severity: None,
                        security: false,
                        reboot_expected: false,
                        max_risk: 0,
                        oldest_first_seen_ms: u64::MAX,
                        download: DownloadSize::default(),
                    },
                    BTreeSet::new(),
                )
            });
            s.candidates.insert(
                p.candidate
                    .as_ref()
                    .map_or_else(|| "?".to_string(), |c| c.to_string()),
            );
            s.devices += 1;
            cves.extend(p.cves.iter().cloned());
            s.severity = s.severity.max(p.severity);
            s.security |= p.security;
            s.reboot_expected |= p.reboot_expected;
            s.max_risk = s.max_risk.max(p.risk);
            s.oldest_first_seen_ms = s.oldest_first_seen_ms.min(p.first_seen_ms);
            s.download.add(p);
        }
    }
    by_source
        .into_values()
        .map(|(mut s, cves)| {
            s.cves = cves.len() as u32;
            s
        })
        .collect()
}

/// One CVE across the fleet.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CveSummary {
    pub id: SmallStr,
    pub severity: Severity,
    pub devices: u32,
    pub fixable_now: u32,
    pub fix_not_in_repositories: u32,
    pub open: u32,
}

/// Every CVE (not unimportant, not undetermined) the devices are exposed
/// to, most severe and widespread first.
pub fn cve_list<'a>(devices: impl IntoIterator<Item = &'a DeviceAssessment>) -> Vec<CveSummary> {
    // The summary, and the last device counted (a CVE can hit two source
    // packages of one device: one device).
    let mut by_id: HashMap<SmallStr, (CveSummary, usize), FxBuild> = HashMap::default();
    for (device, a) in devices.into_iter().enumerate() {
        for f in &a.findings {
            if f.severity == Severity::Unimportant || f.state == FindingState::Undetermined {
                continue;
            }
            let (s, last) = by_id.entry(f.id.clone()).or_insert_with(|| {
                let s = CveSummary {
                    id: f.id.clone(),
                    severity: f.severity,
                    devices: 0,
                    fixable_now: 0,
                    fix_not_in_repositories: 0,
                    open: 0,
                };
                (s, usize::MAX)
            });
            if *last == device {
                continue;
            }
            *last = device;
            s.severity = s.severity.max(f.severity);
            s.devices += 1;
            match f.state {
                FindingState::Fixable if f.fix_available => s.fixable_now += 1,
                FindingState::Fixable => s.fix_not_in_repositories += 1,
                _ => s.open += 1,
            }
        }
    }
    let mut out: Vec<CveSummary> = by_id.into_values().map(|(s, _)| s).collect();
    out.sort_by(|a, b| {
        b.severity
            .cmp(&a.severity)
            .then(b.devices.cmp(&a.devices))
            .then(a.id.cmp(&b.id))
    });
    out
}

/// Fleet (site, customer, tenant) summary.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct FleetSummary {
    pub devices: u32,
    pub compliant: u32,
    pub non_compliant: u32,
    pub unsupported_release: u32,
    pub no_catalog: u32,
    /// compliant / devices × 100 (unsupported devices count as not
    /// compliant); `None` without devices.
    pub compliance_percent: Option<f64>,
    /// Missing security patches by severity, summed over devices.
    pub security_patches: SeverityCounts,
    /// Devices missing at least one security patch of severity ≥ high.
    pub devices_missing_high: u32,
    /// Fixable and open CVE findings by severity, summed over devices.
    pub fixable: SeverityCounts,
    pub open: SeverityCounts,
    pub reboot_required: u32,
    pub stale_indexes: u32,
    /// Sum and maximum of the devices' risk.
    pub risk_total: u64,
    pub risk_max: u32,
}

/// Summarises a set of assessments.
pub fn fleet_summary<'a>(devices: impl IntoIterator<Item = &'a DeviceAssessment>) -> FleetSummary {
    let mut s = FleetSummary::default();
    for a in devices {
        s.devices += 1;
        match a.compliance {
            Compliance::Compliant => s.compliant += 1,
            Compliance::NonCompliant => s.non_compliant += 1,
            Compliance::UnsupportedRelease => s.unsupported_release += 1,
            Compliance::NoCatalog => s.no_catalog += 1,
        }
        s.security_patches.merge(&a.counts.security_patches);
        if a.counts.security_patches.at_least(Severity::High) > 0 {
            s.devices_missing_high += 1;
        }
        s.fixable.merge(&a.counts.fixable);
        s.open.merge(&a.counts.open);
        s.reboot_required += u32::from(a.reboot_required);
        s.stale_indexes += u32::from(a.indexes_stale);
        if a.status == AssessmentStatus::Assessed
            && let Some(r) = a.risk
        {
            s.risk_total += u64::from(r);
            s.risk_max = s.risk_max.max(r);
        }
    }
    s.compliance_percent =
        (s.devices > 0).then(|| f64::from(s.compliant) * 100.0 / f64::from(s.devices));
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::assess::{Policy, assess_device};
    use crate::catalog::tracker::import_debian_tracker;
    use crate::catalog::{Catalog, ImportOptions};
    use crate::scan::{Scan, parse_apt_simulation, parse_dpkg_query, parse_os_release};

    const NOW: u64 = 1_700_000_000_000;

    fn catalog() -> Catalog {
        let json = r#"{"openssl": {
            "CVE-2024-1": {"releases": {"bookworm": {"status": "resolved", "fixed_version": "3.0.13-1", "urgency": "high"},
                                         "jammy": {"status": "open", "urgency": "high"}}},
            "CVE-2024-2": {"releases": {"bookworm": {"status": "resolved", "fixed_version": "3.0.20-1", "urgency": "medium"}}}}}"#;
        Catalog::new().with_source(
            import_debian_tracker(json.as_bytes(), ImportOptions::new("t", "t", 0)).unwrap(),
        )
    }

    fn device(os: &str, version: &str, upgrade_to: Option<&str>) -> DeviceAssessment {
        let mut s = Scan::new_dpkg(NOW, parse_os_release(os));
        s.dpkg = parse_dpkg_query(&format!(
            "ii \tlibssl3\tamd64\t{version}\topenssl\t{version}\n"
        ))
        .packages;
        if let Some(to) = upgrade_to {
            s.upgrades = parse_apt_simulation(&format!(
                "Inst libssl3 [{version}] ({to} Debian-Security:12/stable-security [amd64])\n"
            ))
            .upgrades;
        }
        s.normalize();
        assess_device(&s, &catalog(), &Policy::default(), None, NOW)
    }

    const BOOKWORM: &str = "ID=debian\nVERSION_CODENAME=bookworm\n";

    fn fleet() -> Vec<(String, DeviceAssessment)> {
        vec![
            (
                "fixable-now".into(),
                device(BOOKWORM, "3.0.11-1", Some("3.0.13-1")),
            ),
            ("not-in-repos".into(), device(BOOKWORM, "3.0.11-1", None)),
            ("patched".into(), device(BOOKWORM, "3.0.13-1", None)),
            (
                "unsupported".into(),
                device("ID=gentoo\n", "3.0.11-1", None),
            ),
        ]
    }

    #[test]
    fn the_cve_view_says_which_devices_are_exposed_and_which_can_be_fixed_now() {
        let f = fleet();
        let view = cve_view("CVE-2024-1", f.iter().map(|(k, a)| (k, a)));
        let names: Vec<&str> = view.devices.iter().map(|d| d.device.as_str()).collect();
        assert_eq!(names, vec!["fixable-now", "not-in-repos"]);
        assert_eq!(
            (view.fixable_now, view.fix_not_in_repositories, view.open),
            (1, 1, 0)
        );
        assert_eq!(view.severity, Some(Severity::High));
        assert!(view.devices[0].fix_available && !view.devices[1].fix_available);
    }

    #[test]
    fn the_patch_view_and_list_name_the_devices_missing_an_update() {
        let f = fleet();
        let view = patch_view("openssl", f.iter().map(|(k, a)| (k, a)));
        assert_eq!(view.devices.len(), 1);
        assert_eq!(view.devices[0].device, "fixable-now");
        assert_eq!(
            view.cves.iter().map(|c| &**c).collect::<Vec<_>>(),
            vec!["CVE-2024-1"]
        );
        assert!(view.security);
        let list = patch_list(f.iter().map(|(_, a)| a));
        assert_eq!(list.len(), 1);
        assert_eq!((list[0].devices, list[0].cves), (1, 1));
        assert!(list[0].candidates.contains("3.0.13-1"));
    }

    #[test]
    fn the_cve_list_orders_by_severity_and_spread() {
        let f = fleet();
        let list = cve_list(f.iter().map(|(_, a)| a));
        let ids: Vec<&str> = list.iter().map(|c| &*c.id).collect();
        assert_eq!(ids, vec!["CVE-2024-1", "CVE-2024-2"]);
        assert_eq!(list[0].devices, 2);
        assert_eq!(list[1].devices, 3);
    }

    #[test]
    fn fleet_compliance_counts_unsupported_devices_as_not_compliant() {
        let f = fleet();
        let s = fleet_summary(f.iter().map(|(_, a)| a));
        assert_eq!((s.devices, s.compliant, s.unsupported_release), (4, 3, 1));
        assert_eq!(s.compliance_percent, Some(75.0));
        assert_eq!(s.devices_missing_high, 1);
        assert_eq!(s.fixable.high, 2);
        assert_eq!(fleet_summary(std::iter::empty()).compliance_percent, None);
    }
}
