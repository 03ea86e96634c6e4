//! The site's patch pages of the console (site scope): the mapping from
//! the patch service's views ([`crate::patches::PatchService`]) to the
//! console's patch types, names from the device registry. Owns no data
//! and no rule; works with the uplink down. The figures are the site
//! API's (`/api/v1/patches/summary`, `/api/v1/patches`,
//! `/api/v1/patches/devices/{id}`): the same service calls, download
//! sizes shown as [`DownloadSize::display`] does. Every read runs on the
//! blocking pool ([`on_pool`]): the views walk every assessment and the
//! registry in RocksDB.

use std::collections::HashMap;

use outpost_console::backend::ConsoleError;
use outpost_console::patches::{
    ComplianceLine, CustomerExposure, CveDevice, CveLine, CvePage, DeviceCve, DevicePatchView,
    MissingRow, PatchLine, PatchOverview, RISKY_DEVICES, RiskyDevice, TOP_CVES, TOP_PATCHES,
};
use outpost_patch::assess::fleet::FleetSummary;
use outpost_patch::assess::{Compliance, DeviceAssessment, DownloadSize, FindingState};
use outpost_proto::DeviceId;
use outpost_storage::Store;

use super::{Site, SiteConsole, internal};
use crate::patches::PatchService;

/// What the patch pages read, taken off the console so that the reads
/// can run on the blocking pool.
pub(super) struct PatchPages {
    svc: PatchService,
    store: Store,
    site: std::sync::Arc<Site>,
}

/// Runs a patch page's reads on the blocking pool (the other pages' way,
/// see `blocking`); not available without a patch service.
pub(super) async fn on_pool<T: Send + 'static>(
    c: &SiteConsole,
    f: impl FnOnce(&PatchPages) -> Result<T, ConsoleError> + Send + 'static,
) -> Result<T, ConsoleError> {
    let pages = PatchPages {
        svc: patches(c)?.clone(),
        store: c.store().clone(),
        site: c.site.clone(),
    };
    tokio::task::spawn_blocking(move || f(&pages))
        .await
        .map_err(|e| internal(format!("patch page task failed: {e}")))?
}

fn compliance_str(c: Compliance) -> &'static str {
    match c {
        Compliance::Compliant => "compliant",
        Compliance::NonCompliant => "non-compliant",
        Compliance::UnsupportedRelease => "unsupported-release",
        Compliance::NoCatalog => "no-catalog",
    }
}

fn state_str(state: FindingState, fix_available: bool) -> &'static str {
    match (state, fix_available) {
        (FindingState::Fixable, true) => "fixable",
        (FindingState::Fixable, false) => "fix-not-in-repositories",
        (FindingState::Open, _) => "open",
        (FindingState::Undetermined, _) => "undetermined",
    }
}

/// Hostname and customer of each device the registry knows.
fn names(
    store: &Store,
    devices: impl IntoIterator<Item = DeviceId>,
) -> Result<HashMap<DeviceId, (String, String)>, ConsoleError> {
    let mut out = HashMap::new();
    for d in devices {
        if let Some(r) = outpost_storage::registry::get(store, d).map_err(internal)? {
            out.insert(d, (r.hostname.clone(), r.customer.to_string()));
        }
    }
    Ok(out)
}

fn patches(c: &SiteConsole) -> Result<&PatchService, ConsoleError> {
    c.patches
        .as_ref()
        .ok_or_else(|| ConsoleError::NotFound("Patches are not available on this server.".into()))
}

/// The site's patch compliance (percent of assessed devices fully
/// patched), for the dashboard's tile.
pub(super) fn compliance_percent(c: &PatchPages, now: u64) -> Result<Option<f64>, ConsoleError> {
    Ok(c.svc
        .summary(now)
        .map_err(internal)?
        .fleet
        .compliance_percent)
}

/// A compliance line of a fleet summary.
fn compliance_line(
    label: String,
    customer: String,
    site_id: Option<String>,
    f: &FleetSummary,
    download: &DownloadSize,
) -> ComplianceLine {
    ComplianceLine {
        label,
        customer,
        site_id,
        devices: f.devices,
        compliant: f.compliant,
        non_compliant: f.non_compliant,
        unsupported: f.unsupported_release,
        not_assessed: f.no_catalog,
        percent: f.compliance_percent,
        security_critical: u64::from(f.security_patches.critical),
        security_high: u64::from(f.security_patches.high),
        reboot_required: f.reboot_required,
        download: Some(download.display()),
    }
}

/// One missing patch's download (`12.3 MiB`, `unknown`).
fn patch_download(p: &outpost_patch::assess::MissingPatch) -> String {
    let mut d = DownloadSize::default();
    d.add(p);
    d.display()
}

pub(super) fn overview(c: &PatchPages, now: u64) -> Result<PatchOverview, ConsoleError> {
    let svc = &c.svc;
    let s = svc.summary_for(now, None).map_err(internal)?;
    let site = c.site.identity();
    let names = names(&c.store, s.devices.iter().map(|d| d.device))?;
    let line = compliance_line(
        site.name.clone(),
        String::new(),
        Some(site.id.clone()),
        &s.fleet,
        &s.download,
    );
    let customer_lines = s
        .customers
        .iter()
        .map(|cu| {
            let label = if cu.customer.is_empty() {
                "(no customer)".to_string()
            } else {
                cu.customer.clone()
            };
            compliance_line(label, cu.customer.clone(), None, &cu.summary, &cu.download)
        })
        .collect();
    let all_patches = svc.patches();
    let patches_total = all_patches.len();
    let patch_lines = all_patches
        .into_iter()
        .take(TOP_PATCHES)
        .map(|p| PatchLine {
            source: p.source,
            candidates: p.candidates.into_iter().collect(),
            devices: p.devices,
            cves: p.cves,
            severity: p.severity.map(|s| s.as_str().to_string()),
            security: p.security,
            reboot_expected: p.reboot_expected,
            max_risk: p.max_risk,
            download: Some(p.download.display()),
        })
        .collect();
    let view = svc.view();
    let mut risky: Vec<RiskyDevice> = s
        .devices
        .iter()
        .map(|d| {
            let (hostname, customer) = names.get(&d.device).cloned().unwrap_or_default();
            let sec = view
                .assessments
                .get(&d.device)
                .map(|a| {
                    (
                        a.counts.security_patches.critical,
                        a.counts.security_patches.high,
                    )
                })
                .unwrap_or_default();
            RiskyDevice {
                site_id: site.id.clone(),
                site_name: site.name.clone(),
                customer,
                device: d.device.to_string(),
                hostname,
                compliance: compliance_str(d.compliance).into(),
                risk: d.risk,
                missing: d.patches,
                security_critical: sec.0,
                security_high: sec.1,
                last_scan_ms: d.scanned_at_ms,
                reboot_required: d.reboot_required,
                download: Some(d.download.display()),
            }
        })
        .collect();
    risky.sort_by(|a, b| {
        (
            std::cmp::Reverse(a.risk),
            std::cmp::Reverse(a.security_critical),
            &a.hostname,
        )
            .cmp(&(
                std::cmp::Reverse(b.risk),
                std::cmp::Reverse(b.security_critical),
                &b.hostname,
            ))
    });
    risky.truncate(RISKY_DEVICES);
    let mut customers: Vec<String> = names.values().map(|(_, c)| c.clone()).collect();
    customers.sort();
    customers.dedup();
    Ok(PatchOverview {
        total: line.clone(),
        customers: customer_lines,
        sites: vec![line],
        risky,
        top_cves: s
            .top_cves
            .iter()
            .take(TOP_CVES)
            .map(|c| CveLine {
                cve: c.id.to_string(),
                severity: c.severity.as_str().into(),
                devices: c.devices,
                fixable: c.fixable_now,
                fix_not_in_repositories: c.fix_not_in_repositories,
                open: c.open,
                customers: 0,
            })
            .collect(),
        report_customers: customers,
        patches: Some(patch_lines),
        patches_total,
    })
}

pub(super) fn cve(c: &PatchPages, id: &str) -> Result<CvePage, ConsoleError> {
    let svc = &c.svc;
    let v = svc.cve(id);
    let site = c.site.identity();
    let names = names(&c.store, v.devices.iter().map(|d| d.device))?;
    let mut total = CustomerExposure::default();
    let mut devices: Vec<CveDevice> = Vec::new();
    for d in &v.devices {
        let state = state_str(d.state, d.fix_available);
        if state == "undetermined" {
            continue;
        }
        total.devices += 1;
        match state {
            "fixable" => total.fixable += 1,
            "open" => total.open += 1,
            _ => total.fix_not_in_repositories += 1,
        }
        let (hostname, customer) = names.get(&d.device).cloned().unwrap_or_default();
        devices.push(CveDevice {
            customer,
            site_id: site.id.clone(),
            site_name: site.name.clone(),
            device: d.device.to_string(),
            hostname,
            state: state.into(),
            source: d.source.to_string(),
            installed: d.installed.to_string(),
            fixed: d.fixed.as_ref().map(|f| f.to_string()),
            severity: d.severity.as_str().into(),
        });
    }
    Ok(CvePage {
        cve: v.id,
        severity: v.severity.map(|s| s.as_str().into()),
        total,
        customers: Vec::new(),
        devices,
    })
}

/// The panel of one device from its assessment.
pub fn device_view(a: &DeviceAssessment) -> DevicePatchView {
    let mut cves: Vec<DeviceCve> = a
        .fixable()
        .chain(a.open())
        .map(|(p, f)| DeviceCve {
            cve: f.id.to_string(),
            source: p.source.to_string(),
            installed: p.installed.to_string(),
            fixed: f.fixed.as_ref().map(|v| v.to_string()),
            state: state_str(f.state, f.fix_available).into(),
            severity: f.severity.as_str().into(),
        })
        .collect();
    let rank = |s: &str| match s {
        "fixable" => 0,
        "fix-not-in-repositories" => 1,
        _ => 2,
    };
    cves.sort_by(|x, y| {
        (
            rank(&x.state),
            std::cmp::Reverse(outpost_patch::severity::Severity::parse(&x.severity)),
            &x.cve,
        )
            .cmp(&(
                rank(&y.state),
                std::cmp::Reverse(outpost_patch::severity::Severity::parse(&y.severity)),
                &y.cve,
            ))
    });
    DevicePatchView {
        compliance: compliance_str(a.compliance).into(),
        risk: a.risk,
        last_scan_ms: a.scanned_at_ms,
        reboot_required: a.reboot_required,
        missing: a
            .patches
            .iter()
            .map(|p| MissingRow {
                source: p.source.to_string(),
                installed: p.installed.to_string(),
                candidate: p.candidate.as_ref().map(|c| c.to_string()),
                security: p.security,
                severity: p.severity.map(|s| s.as_str().into()),
                cves: p.cves.iter().map(|c| c.to_string()).collect(),
                reboot_expected: p.reboot_expected,
                first_seen_ms: p.first_seen_ms,
                download: Some(patch_download(p)),
            })
            .collect(),
        counts_only: false,
        missing_count: a.counts.patches,
        fixable_cves: a.counts.fixable.total() - a.counts.fixable.unimportant,
        open_cves: a.counts.open.total() - a.counts.open.unimportant,
        cves,
        download: Some(a.download_size().display()),
        deferred: None,
        reported_ms: 0,
        unassessed: false,
    }
}

pub(super) fn device(
    c: &PatchPages,
    site: &str,
    device: &str,
) -> Result<Option<DevicePatchView>, ConsoleError> {
    c.site.check(site)?;
    let svc = &c.svc;
    let id: DeviceId = device
        .parse()
        .map_err(|_| ConsoleError::NotFound(format!("no device {device}")))?;
    let Some(d) = svc.device(id).map_err(internal)? else {
        return Ok(None);
    };
    let mut view = match &d.assessment {
        Some(a) => device_view(a),
        None if d.deferred.is_some() => DevicePatchView {
            compliance: "not-assessed".into(),
            unassessed: true,
            ..Default::default()
        },
        None => return Ok(None),
    };
    view.deferred = d.deferred;
    view.reported_ms = d.received_at_ms;
    Ok(Some(view))
}

pub(super) fn report_csv(c: &PatchPages, customer: Option<&str>) -> Result<String, ConsoleError> {
    c.svc.report_csv(customer).map_err(internal)
}

pub(super) fn report_pdf(c: &PatchPages, customer: Option<&str>) -> Result<Vec<u8>, ConsoleError> {
    let doc = c
        .svc
        .report_document(customer, outpost_storage::now_ms())
        .map_err(internal)?;
    Ok(outpost_patch::report::pdf::render(&doc))
}
