//! Central's patch pages of the console: the mapping from
//! [`crate::api_patches`] (the same scope checks as the JSON API) to the
//! console's patch types. Owns no data and no rule.

use std::sync::Arc;

use outpost_console::patches::{
    ComplianceLine, CustomerExposure, CveDevice, CveLine, CvePage, DeviceCve, DevicePatchView,
    MissingRow, PatchOverview, RISKY_DEVICES, RiskyDevice, TOP_CVES,
};
use outpost_proto::SiteId;

use crate::Central;
use crate::api::ApiError;
use crate::api_patches::{
    self, ComplianceQuery, ComplianceSummary, CvesQuery, ExposureCounts, ReportQuery,
};
use crate::model::{CveHit, Principal};

fn line(
    label: String,
    customer: String,
    site_id: Option<String>,
    s: &ComplianceSummary,
) -> ComplianceLine {
    ComplianceLine {
        label,
        customer,
        site_id,
        devices: s.devices,
        compliant: s.compliant,
        non_compliant: s.non_compliant,
        unsupported: s.unsupported,
        not_assessed: s.not_assessed,
        percent: s.compliance_percent,
        security_critical: s.security_patches.critical,
        security_high: s.security_patches.high,
        reboot_required: s.reboot_required,
        // The uplink carries no download sizes.
        download: None,
    }
}

fn exposure(customer: String, c: &ExposureCounts) -> CustomerExposure {
    CustomerExposure {
        customer,
        devices: c.devices,
        fixable: c.fixable,
        fix_not_in_repositories: c.fix_not_in_repositories,
        open: c.open,
    }
}

pub async fn overview(c: &Arc<Central>, p: &Principal) -> Result<PatchOverview, ApiError> {
    let report = api_patches::compliance_report(c, p, &ComplianceQuery::default()).await?;
    let lines = api_patches::report_lines(c, p, &ReportQuery::default(), crate::now_ms()).await?;
    let mut risky: Vec<RiskyDevice> = lines
        .devices
        .iter()
        .map(|l| RiskyDevice {
            site_id: l.site_id.to_string(),
            site_name: l.site_name.clone(),
            customer: l.customer.to_string(),
            device: l.device.clone(),
            hostname: l.hostname.clone(),
            compliance: l.compliance.clone(),
            risk: l.risk,
            missing: l.missing_patches,
            security_critical: l.security_critical,
            security_high: l.security_high,
            last_scan_ms: l.last_scan_ms,
            reboot_required: l.reboot_required,
            download: None,
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
    let cves = api_patches::top_cves(
        c,
        p,
        &CvesQuery {
            limit: Some(TOP_CVES),
            ..Default::default()
        },
    )
    .await?;
    Ok(PatchOverview {
        total: line("All".into(), String::new(), None, &report.total),
        customers: report
            .customers
            .iter()
            .map(|cu| {
                line(
                    cu.customer.to_string(),
                    cu.customer.to_string(),
                    None,
                    &cu.summary,
                )
            })
            .collect(),
        sites: report
            .sites
            .iter()
            .map(|s| {
                line(
                    s.name.clone(),
                    s.customer.to_string(),
                    Some(s.site_id.to_string()),
                    &s.summary,
                )
            })
            .collect(),
        risky,
        top_cves: cves
            .into_iter()
            .map(|c| CveLine {
                cve: c.cve,
                severity: c.severity.as_str().to_string(),
                devices: c.counts.devices,
                fixable: c.counts.fixable,
                fix_not_in_repositories: c.counts.fix_not_in_repositories,
                open: c.counts.open,
                customers: c.customers,
            })
            .collect(),
        report_customers: report
            .customers
            .iter()
            .map(|c| c.customer.to_string())
            .collect(),
        patches: None,
        patches_total: 0,
    })
}

pub async fn cve(c: &Arc<Central>, p: &Principal, cve: &str) -> Result<CvePage, ApiError> {
    let r = api_patches::cve_exposure_report(c, p, cve, &ComplianceQuery::default()).await?;
    Ok(CvePage {
        cve: r.cve,
        severity: r.severity.map(|s| s.as_str().to_string()),
        total: exposure(String::new(), &r.total),
        customers: r
            .customers
            .iter()
            .map(|e| exposure(e.customer.to_string(), &e.counts))
            .collect(),
        devices: r
            .devices
            .into_iter()
            .map(|d| CveDevice {
                customer: d.customer.to_string(),
                site_id: d.site_id.to_string(),
                site_name: d.site_name,
                device: d.device,
                hostname: d.hostname,
                state: d.state,
                source: d.source,
                installed: d.installed,
                fixed: d.fixed,
                severity: d.severity.as_str().to_string(),
            })
            .collect(),
    })
}

pub async fn device(
    c: &Arc<Central>,
    p: &Principal,
    site: &str,
    device: &str,
) -> Result<Option<DevicePatchView>, ApiError> {
    let d = api_patches::device_patches(c, p, &SiteId::from(site), device).await?;
    let Some(comp) = &d.compliance else {
        return Ok(None);
    };
    let mut view = DevicePatchView {
        compliance: comp
            .compliance
            .map_or("not-assessed", |c| c.as_str())
            .to_string(),
        risk: comp.risk,
        last_scan_ms: comp.last_scan_ms,
        reboot_required: comp.reboot_required,
        counts_only: d.findings.is_none(),
        missing_count: comp.missing,
        fixable_cves: comp.fixable_cves,
        open_cves: comp.open_cves,
        ..Default::default()
    };
    if let Some(f) = &d.findings {
        view.missing = f
            .patches
            .iter()
            .map(|m| MissingRow {
                source: m.source.clone(),
                installed: m.installed.clone(),
                candidate: m.candidate.clone(),
                security: m.security,
                severity: m.severity.map(|s| s.as_str().to_string()),
                cves: m.cves.clone(),
                reboot_expected: m.reboot_expected,
                first_seen_ms: m.first_seen_ms,
                download: None,
            })
            .collect();
        let mut cves: Vec<(u8, std::cmp::Reverse<_>, DeviceCve)> = f
            .cve_hits()
            .into_iter()
            .flat_map(|(cve, hits)| {
                hits.into_iter().map(move |h: CveHit| {
                    let rank = match h.state() {
                        "fixable" => 0,
                        "fix-not-in-repositories" => 1,
                        _ => 2,
                    };
                    (
                        rank,
                        std::cmp::Reverse(h.severity),
                        DeviceCve {
                            cve: cve.to_string(),
                            state: h.state().to_string(),
                            severity: h.severity.as_str().to_string(),
                            source: h.source,
                            installed: h.installed,
                            fixed: h.fixed,
                        },
                    )
                })
            })
            .collect();
        cves.sort_by(|a, b| (a.0, a.1, &a.2.cve).cmp(&(b.0, b.1, &b.2.cve)));
        view.cves = cves.into_iter().map(|(_, _, c)| c).collect();
    }
    Ok(Some(view))
}

pub async fn report_csv(
    c: &Arc<Central>,
    p: &Principal,
    customer: Option<&str>,
) -> Result<String, ApiError> {
    let q = ReportQuery {
        customer: customer.map(Into::into),
        ..Default::default()
    };
    let lines = api_patches::report_lines(c, p, &q, crate::now_ms()).await?;
    Ok(api_patches::report_csv(&lines))
}

pub async fn report_pdf(
    c: &Arc<Central>,
    p: &Principal,
    customer: Option<&str>,
) -> Result<Vec<u8>, ApiError> {
    let q = ReportQuery {
        customer: customer.map(Into::into),
        ..Default::default()
    };
    let lines = api_patches::report_lines(c, p, &q, crate::now_ms()).await?;
    api_patches::report_pdf(&lines).await
}
