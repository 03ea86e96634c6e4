//! Central's patch views, from the rows the sites' batches carry (see
//! [`crate::apply`]): `GET /api/v1/patches/compliance` (per customer and
//! site), `/patches/cves` (the CVEs the fleet is exposed to),
//! `/patches/cves/{cve}` (which customers and devices are exposed to it,
//! fixable or open), `/patches/report?format=json|csv|pdf[&customer=C]`
//! (one line per device; the PDF with the top missing patches and CVEs)
//! and `/sites/{site}/devices/{device}/patches` (a device's missing
//! patches and CVEs). Scoped like every view: the
//! caller's tenant only, and only its customers' sites. Reads only; owns
//! nothing stored.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use axum::extract::State;
use outpost_patch::report::{ComplianceDocument, MAX_REPORT_TOP, ReportPatch};
use outpost_proto::{CustomerId, SiteId};
use outpost_uplink::batch::{ComplianceState, FindingSeverity, PatchSeverityCounts};
use outpost_web::{Json, Path, Query};
use serde::{Deserialize, Serialize};

use crate::Central;
use crate::api::{ApiError, visible_sites};
use crate::model::{
    CveHit, CveSiteExposure, PatchComplianceRow, PatchFindingsRow, Principal, SiteRecord,
};

/// Compliance counts of a set of devices.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ComplianceSummary {
    /// Devices with a patch compliance report.
    pub devices: u32,
    pub compliant: u32,
    pub non_compliant: u32,
    /// On a release the site's catalog does not know: never compliant.
    pub unsupported: u32,
    /// The site has no advisories imported, or sent no detail.
    pub not_assessed: u32,
    /// Compliant devices in percent of `devices` (`None` without devices).
    pub compliance_percent: Option<f64>,
    /// Missing patches, all devices together.
    pub missing_patches: u64,
    /// Missing security patches by severity, all devices together.
    pub security_patches: SeverityTotals,
    pub reboot_required: u32,
}

/// Counts by severity, summed over devices.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeverityTotals {
    pub critical: u64,
    pub high: u64,
    pub medium: u64,
    pub low: u64,
    pub unknown: u64,
}

impl SeverityTotals {
    fn add(&mut self, c: &PatchSeverityCounts) {
        self.critical += u64::from(c.critical);
        self.high += u64::from(c.high);
        self.medium += u64::from(c.medium);
        self.low += u64::from(c.low);
        self.unknown += u64::from(c.unknown);
    }
}

impl ComplianceSummary {
    pub fn add(&mut self, r: &PatchComplianceRow) {
        self.devices += 1;
        match r.compliance {
            Some(ComplianceState::Compliant) => self.compliant += 1,
            Some(ComplianceState::NonCompliant) => self.non_compliant += 1,
            Some(ComplianceState::UnsupportedRelease) => self.unsupported += 1,
            Some(ComplianceState::NoCatalog) | None => self.not_assessed += 1,
        }
        self.missing_patches += u64::from(r.missing);
        self.security_patches.add(&r.security_patches);
        self.reboot_required += u32::from(r.reboot_required);
        self.compliance_percent =
            Some(f64::from(self.compliant) * 100.0 / f64::from(self.devices.max(1)));
    }

    pub fn of<'a>(rows: impl IntoIterator<Item = &'a PatchComplianceRow>) -> Self {
        let mut s = ComplianceSummary::default();
        for r in rows {
            s.add(r);
        }
        s
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SiteCompliance {
    pub site_id: SiteId,
    pub name: String,
    pub customer: CustomerId,
    pub summary: ComplianceSummary,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CustomerCompliance {
    pub customer: CustomerId,
    pub summary: ComplianceSummary,
}

/// The answer of `GET /api/v1/patches/compliance`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ComplianceReport {
    /// Every visible device with a report.
    pub total: ComplianceSummary,
    pub customers: Vec<CustomerCompliance>,
    /// Every visible site (sites without reports show zero devices).
    pub sites: Vec<SiteCompliance>,
}

#[derive(Debug, Default, Deserialize)]
pub struct ComplianceQuery {
    pub customer: Option<CustomerId>,
    pub site: Option<SiteId>,
}

/// The compliance report `p` may see, narrowed by `q`.
pub async fn compliance_report(
    c: &Arc<Central>,
    p: &Principal,
    q: &ComplianceQuery,
) -> Result<ComplianceReport, ApiError> {
    let sites: Vec<_> = visible_sites(c, p)
        .await?
        .into_iter()
        .filter(|s| q.customer.as_ref().is_none_or(|c| &s.customer == c))
        .filter(|s| q.site.as_ref().is_none_or(|id| &s.site_id == id))
        .collect();
    let rows = c
        .store
        .patch_compliance(&p.tenant, q.site.as_ref())
        .await
        .map_err(crate::api::internal_error)?;
    let mut per_site: BTreeMap<&SiteId, Vec<&PatchComplianceRow>> = BTreeMap::new();
    for r in &rows {
        per_site.entry(&r.site_id).or_default().push(r);
    }
    let mut total = ComplianceSummary::default();
    let mut customers: BTreeMap<CustomerId, ComplianceSummary> = BTreeMap::new();
    let mut out_sites = Vec::with_capacity(sites.len());
    for s in &sites {
        let site_rows = per_site.get(&s.site_id).map_or(&[][..], |v| v.as_slice());
        let cs = customers.entry(s.customer.clone()).or_default();
        for r in site_rows {
            total.add(r);
            cs.add(r);
        }
        out_sites.push(SiteCompliance {
            site_id: s.site_id.clone(),
            name: s.name.clone(),
            customer: s.customer.clone(),
            summary: ComplianceSummary::of(site_rows.iter().copied()),
        });
    }
    Ok(ComplianceReport {
        total,
        customers: customers
            .into_iter()
            .map(|(customer, summary)| CustomerCompliance { customer, summary })
            .collect(),
        sites: out_sites,
    })
}

pub(crate) async fn compliance(
    State(c): State<Arc<Central>>,
    axum::Extension(p): axum::Extension<Principal>,
    Query(q): Query<ComplianceQuery>,
) -> Result<Json<ComplianceReport>, ApiError> {
    Ok(Json(compliance_report(&c, &p, &q).await?))
}

// ---------------------------------------------------------------------------
// Findings: per-CVE exposure, a device's missing patches, reports.

/// Longest CVE (or advisory) id a query takes.
const MAX_CVE_ID_BYTES: usize = 64;
/// Devices listed for one CVE at most (the counts cover them all).
const MAX_EXPOSED_LISTED: usize = 100_000;

/// One device exposed to a CVE, with names.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExposedDevice {
    pub customer: CustomerId,
    pub site_id: SiteId,
    pub site_name: String,
    pub device: String,
    pub hostname: String,
    /// `fixable`, `fix-not-in-repositories` or `open` (the best of its
    /// source packages' when several carry the CVE).
    pub state: String,
    pub source: String,
    pub installed: String,
    pub fixed: Option<String>,
    pub severity: FindingSeverity,
}

/// Exposure counts (devices).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExposureCounts {
    pub devices: u32,
    /// An upgrade the device's repositories offer closes it.
    pub fixable: u32,
    /// The release has a fix the device's repositories do not offer.
    pub fix_not_in_repositories: u32,
    /// No fix in the release yet.
    pub open: u32,
}

impl ExposureCounts {
    fn add(&mut self, state: &str) {
        self.devices += 1;
        match state {
            "fixable" => self.fixable += 1,
            "open" => self.open += 1,
            _ => self.fix_not_in_repositories += 1,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CustomerExposure {
    pub customer: CustomerId,
    pub counts: ExposureCounts,
}

/// The answer of `GET /api/v1/patches/cves/{cve}`: which customers and
/// devices of the caller's scope are exposed to the CVE.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CveExposureReport {
    pub cve: String,
    /// Highest severity any exposed device's site gives it (`None`: no
    /// device is exposed).
    pub severity: Option<FindingSeverity>,
    pub total: ExposureCounts,
    pub customers: Vec<CustomerExposure>,
    /// Fixable first, then by customer, site and hostname.
    pub devices: Vec<ExposedDevice>,
}

/// Hostnames of the devices `p` may see, by (site, device).
async fn hostnames(
    c: &Arc<Central>,
    p: &Principal,
    site: Option<&SiteId>,
) -> Result<HashMap<(SiteId, String), String>, ApiError> {
    let mut out = HashMap::new();
    let mut filter = crate::store::DeviceFilter {
        site_id: site.cloned(),
        customers_allowed: p.customers.clone(),
        limit: 1_000,
        ..Default::default()
    };
    loop {
        let page = c
            .store
            .devices(&p.tenant, &filter)
            .await
            .map_err(crate::api::internal_error)?;
        for d in page.items {
            out.insert((d.site_id, d.device), d.hostname);
        }
        match page.next {
            Some(n) => filter.after = Some(n),
            None => return Ok(out),
        }
    }
}

fn check_cve_id(cve: &str) -> Result<(), ApiError> {
    let ok = !cve.is_empty()
        && cve.len() <= MAX_CVE_ID_BYTES
        && cve
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(ApiError::BadRequest(format!(
            "not a CVE or advisory id: {:?}",
            cve.chars().take(MAX_CVE_ID_BYTES).collect::<String>()
        )))
    }
}

/// The CVE's state on a device from its hits: the best one.
fn best_hit(hits: &[CveHit]) -> Option<&CveHit> {
    CveHit::best(hits)
}

/// Which devices (and customers) in `p`'s scope are exposed to `cve`.
/// Another tenant's devices are never read (the index is keyed by the
/// caller's tenant); devices of customers out of `p`'s scope are left out.
pub async fn cve_exposure_report(
    c: &Arc<Central>,
    p: &Principal,
    cve: &str,
    q: &ComplianceQuery,
) -> Result<CveExposureReport, ApiError> {
    check_cve_id(cve)?;
    let sites: HashMap<SiteId, SiteRecord> = visible_sites(c, p)
        .await?
        .into_iter()
        .filter(|s| q.customer.as_ref().is_none_or(|c| &s.customer == c))
        .filter(|s| q.site.as_ref().is_none_or(|id| &s.site_id == id))
        .map(|s| (s.site_id.clone(), s))
        .collect();
    let rows = c
        .store
        .cve_exposure(&p.tenant, cve, MAX_EXPOSED_LISTED)
        .await
        .map_err(crate::api::internal_error)?;
    let names = if rows.is_empty() {
        HashMap::new()
    } else {
        hostnames(c, p, q.site.as_ref()).await?
    };
    let mut total = ExposureCounts::default();
    let mut customers: BTreeMap<CustomerId, ExposureCounts> = BTreeMap::new();
    let mut devices = Vec::new();
    let mut severity = None;
    for r in rows {
        let Some(site) = sites.get(&r.site_id) else {
            continue;
        };
        let Some(h) = best_hit(&r.hits) else {
            continue;
        };
        let top = r.hits.iter().map(|h| h.severity).max();
        severity = severity.max(top);
        total.add(h.state());
        customers
            .entry(site.customer.clone())
            .or_default()
            .add(h.state());
        devices.push(ExposedDevice {
            customer: site.customer.clone(),
            site_id: site.site_id.clone(),
            site_name: site.name.clone(),
            hostname: names
                .get(&(site.site_id.clone(), r.device.clone()))
                .cloned()
                .unwrap_or_default(),
            device: r.device,
            state: h.state().to_string(),
            source: h.source.clone(),
            installed: h.installed.clone(),
            fixed: h.fixed.clone(),
            severity: h.severity,
        });
    }
    let rank = |s: &str| match s {
        "fixable" => 0,
        "fix-not-in-repositories" => 1,
        _ => 2,
    };
    devices.sort_by(|a, b| {
        (rank(&a.state), &a.customer, &a.site_name, &a.hostname).cmp(&(
            rank(&b.state),
            &b.customer,
            &b.site_name,
            &b.hostname,
        ))
    });
    Ok(CveExposureReport {
        cve: cve.to_string(),
        severity,
        total,
        customers: customers
            .into_iter()
            .map(|(customer, counts)| CustomerExposure { customer, counts })
            .collect(),
        devices,
    })
}

pub(crate) async fn cve(
    State(c): State<Arc<Central>>,
    axum::Extension(p): axum::Extension<Principal>,
    Path(cve): Path<String>,
    Query(q): Query<ComplianceQuery>,
) -> Result<Json<CveExposureReport>, ApiError> {
    Ok(Json(cve_exposure_report(&c, &p, &cve, &q).await?))
}

/// One CVE across the caller's scope (a line of the top-CVE list).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CveSummary {
    pub cve: String,
    pub severity: FindingSeverity,
    pub counts: ExposureCounts,
    /// Customers with an exposed device.
    pub customers: u32,
}

#[derive(Debug, Default, Deserialize)]
pub struct CvesQuery {
    pub customer: Option<CustomerId>,
    pub site: Option<SiteId>,
    /// At most this many (default 50, at most 1,000).
    pub limit: Option<usize>,
}

/// The CVEs devices in `p`'s scope are exposed to, most severe and most
/// widespread first, from central's CVE index (per CVE and site counts;
/// no findings row is read).
pub async fn top_cves(
    c: &Arc<Central>,
    p: &Principal,
    q: &CvesQuery,
) -> Result<Vec<CveSummary>, ApiError> {
    let limit = q.limit.unwrap_or(50).clamp(1, 1_000);
    let sites: HashMap<SiteId, CustomerId> = visible_sites(c, p)
        .await?
        .into_iter()
        .filter(|s| q.customer.as_ref().is_none_or(|c| &s.customer == c))
        .filter(|s| q.site.as_ref().is_none_or(|id| &s.site_id == id))
        .map(|s| (s.site_id, s.customer))
        .collect();
    let lines = c
        .store
        .cve_site_exposure(&p.tenant, q.site.as_ref())
        .await
        .map_err(crate::api::internal_error)?;
    let mut out = cves_of_index(&lines, &sites);
    out.truncate(limit);
    Ok(out)
}

/// The CVE list from the index's (CVE, site) lines of the given sites
/// (site → customer), most severe and widespread first.
fn cves_of_index(
    lines: &[CveSiteExposure],
    sites: &HashMap<SiteId, CustomerId>,
) -> Vec<CveSummary> {
    let mut by_cve: HashMap<&str, (FindingSeverity, ExposureCounts, BTreeSet<&CustomerId>)> =
        HashMap::new();
    for l in lines {
        let Some(customer) = sites.get(&l.site_id) else {
            continue;
        };
        let e = by_cve
            .entry(l.cve.as_str())
            .or_insert_with(|| (l.severity, ExposureCounts::default(), BTreeSet::new()));
        e.0 = e.0.max(l.severity);
        e.1.devices += l.devices;
        e.1.fixable += l.fixable;
        e.1.fix_not_in_repositories += l.fix_not_in_repositories;
        e.1.open += l.open;
        e.2.insert(customer);
    }
    let mut out: Vec<CveSummary> = by_cve
        .into_iter()
        .map(|(cve, (severity, counts, customers))| CveSummary {
            cve: cve.to_string(),
            severity,
            counts,
            customers: customers.len() as u32,
        })
        .collect();
    sort_cves(&mut out);
    out
}

/// Most severe, then most widespread, then by id.
fn sort_cves(out: &mut [CveSummary]) {
    out.sort_by(|a, b| {
        (
            std::cmp::Reverse(a.severity),
            std::cmp::Reverse(a.counts.devices),
            &a.cve,
        )
            .cmp(&(
                std::cmp::Reverse(b.severity),
                std::cmp::Reverse(b.counts.devices),
                &b.cve,
            ))
    });
}

/// The CVEs of findings rows of the given sites (site → customer), most
/// severe and widespread first (the report's, whose findings are read
/// anyway; the same figures as [`cves_of_index`] gives).
pub(crate) fn cves_of_findings(
    rows: &[PatchFindingsRow],
    sites: &HashMap<SiteId, CustomerId>,
) -> Vec<CveSummary> {
    let mut by_cve: HashMap<String, (FindingSeverity, ExposureCounts, BTreeSet<CustomerId>)> =
        HashMap::new();
    for r in rows {
        let Some(customer) = sites.get(&r.site_id) else {
            continue;
        };
        for (cve, hits) in r.cve_hits() {
            let (Some(h), Some(top)) = (best_hit(&hits), hits.iter().map(|h| h.severity).max())
            else {
                continue;
            };
            let e = by_cve
                .entry(cve.to_string())
                .or_insert_with(|| (top, ExposureCounts::default(), BTreeSet::new()));
            e.0 = e.0.max(top);
            e.1.add(h.state());
            e.2.insert(customer.clone());
        }
    }
    let mut out: Vec<CveSummary> = by_cve
        .into_iter()
        .map(|(cve, (severity, counts, customers))| CveSummary {
            cve,
            severity,
            counts,
            customers: customers.len() as u32,
        })
        .collect();
    sort_cves(&mut out);
    out
}

pub(crate) async fn cves(
    State(c): State<Arc<Central>>,
    axum::Extension(p): axum::Extension<Principal>,
    Query(q): Query<CvesQuery>,
) -> Result<Json<Vec<CveSummary>>, ApiError> {
    Ok(Json(top_cves(&c, &p, &q).await?))
}

/// The answer of `GET /api/v1/sites/{site}/devices/{device}/patches`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DevicePatches {
    pub site_id: SiteId,
    pub device: String,
    /// `null` when the site sent no compliance for it.
    pub compliance: Option<PatchComplianceRow>,
    /// Missing patches and CVEs; `null` when the site sent none (a site
    /// on an older version, or before its first assessment).
    pub findings: Option<PatchFindingsRow>,
}

/// A device's patch state at central; 404 for a site out of `p`'s scope
/// (or another tenant's).
pub async fn device_patches(
    c: &Arc<Central>,
    p: &Principal,
    site: &SiteId,
    device: &str,
) -> Result<DevicePatches, ApiError> {
    crate::api::one_site(c, p, site).await?;
    let internal = crate::api::internal_error::<crate::store::CentralStoreError>;
    let compliance = c
        .store
        .device_patch_compliance(&p.tenant, site, device)
        .await
        .map_err(internal)?;
    let findings = c
        .store
        .device_patch_findings(&p.tenant, site, device)
        .await
        .map_err(internal)?;
    if compliance.is_none()
        && findings.is_none()
        && c.store
            .device(&p.tenant, site, device)
            .await
            .map_err(internal)?
            .is_none()
    {
        return Err(ApiError::NotFound(format!(
            "no device {device} at site {site}"
        )));
    }
    Ok(DevicePatches {
        site_id: site.clone(),
        device: device.to_string(),
        compliance,
        findings,
    })
}

pub(crate) async fn device(
    State(c): State<Arc<Central>>,
    axum::Extension(p): axum::Extension<Principal>,
    Path((site, device)): Path<(SiteId, String)>,
) -> Result<Json<DevicePatches>, ApiError> {
    Ok(Json(device_patches(&c, &p, &site, &device).await?))
}

/// One line of the compliance report.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReportLine {
    pub customer: CustomerId,
    pub site_id: SiteId,
    pub site_name: String,
    pub device: String,
    pub hostname: String,
    /// `compliant`, `non-compliant`, `unsupported-release`, `no-catalog`,
    /// or `not-assessed` (the site sent only counts).
    pub compliance: String,
    pub missing_patches: u32,
    pub security_critical: u32,
    pub security_high: u32,
    pub security_medium: u32,
    pub security_low: u32,
    pub fixable_cves: u32,
    pub open_cves: u32,
    pub risk: Option<u32>,
    /// Unix ms, 0 when unknown.
    pub last_scan_ms: u64,
    pub reboot_required: bool,
    /// CVE ids the device is exposed to (fixable first), when the site
    /// sent findings.
    pub cves: Vec<String>,
}

/// The answer of `GET /api/v1/patches/report` (JSON).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ComplianceReportLines {
    pub generated_ms: u64,
    pub customer: Option<CustomerId>,
    pub summary: ComplianceSummary,
    pub devices: Vec<ReportLine>,
    /// Missing patches of the report's devices, most severe and
    /// widespread first (at most 25; from the sites' findings).
    #[serde(default)]
    pub top_patches: Vec<ReportPatch>,
    /// CVEs the report's devices are exposed to, most severe and
    /// widespread first (at most 25).
    #[serde(default)]
    pub top_cves: Vec<CveSummary>,
}

#[derive(Debug, Default, Deserialize)]
pub struct ReportQuery {
    pub customer: Option<CustomerId>,
    pub site: Option<SiteId>,
    /// `json` (default), `csv` or `pdf`.
    pub format: Option<String>,
}

/// The per-device compliance report of `p`'s scope, of one customer when
/// asked: a customer `p` may not see (or that has no site) is 404.
pub async fn report_lines(
    c: &Arc<Central>,
    p: &Principal,
    q: &ReportQuery,
    now_ms: u64,
) -> Result<ComplianceReportLines, ApiError> {
    let sites: HashMap<SiteId, SiteRecord> = visible_sites(c, p)
        .await?
        .into_iter()
        .filter(|s| q.customer.as_ref().is_none_or(|c| &s.customer == c))
        .filter(|s| q.site.as_ref().is_none_or(|id| &s.site_id == id))
        .map(|s| (s.site_id.clone(), s))
        .collect();
    if sites.is_empty() {
        if let Some(cu) = &q.customer {
            return Err(ApiError::NotFound(format!("no customer {cu}")));
        }
        if let Some(s) = &q.site {
            return Err(ApiError::NotFound(format!("no site {s}")));
        }
    }
    let internal = crate::api::internal_error::<crate::store::CentralStoreError>;
    let rows = c
        .store
        .patch_compliance(&p.tenant, q.site.as_ref())
        .await
        .map_err(internal)?;
    let findings: HashMap<(SiteId, String), PatchFindingsRow> = c
        .store
        .patch_findings(&p.tenant, q.site.as_ref())
        .await
        .map_err(internal)?
        .into_iter()
        .map(|f| ((f.site_id.clone(), f.device.clone()), f))
        .collect();
    let names = hostnames(c, p, q.site.as_ref()).await?;
    let mut summary = ComplianceSummary::default();
    let mut devices = Vec::new();
    for r in &rows {
        let Some(site) = sites.get(&r.site_id) else {
            continue;
        };
        summary.add(r);
        let k = (r.site_id.clone(), r.device.clone());
        let cves = findings.get(&k).map_or_else(Vec::new, |f| {
            let mut hits: Vec<(&str, u8)> = f
                .cve_hits()
                .into_iter()
                .filter_map(|(cve, hits)| {
                    best_hit(&hits).map(|h| {
                        (
                            cve,
                            match h.state() {
                                "fixable" => 0,
                                "fix-not-in-repositories" => 1,
                                _ => 2,
                            },
                        )
                    })
                })
                .collect();
            hits.sort_by_key(|(cve, rank)| (*rank, *cve));
            hits.into_iter().map(|(c, _)| c.to_string()).collect()
        });
        devices.push(ReportLine {
            customer: site.customer.clone(),
            site_id: site.site_id.clone(),
            site_name: site.name.clone(),
            hostname: names.get(&k).cloned().unwrap_or_default(),
            device: r.device.clone(),
            compliance: r
                .compliance
                .map_or("not-assessed", |c| c.as_str())
                .to_string(),
            missing_patches: r.missing,
            security_critical: r.security_patches.critical,
            security_high: r.security_patches.high,
            security_medium: r.security_patches.medium,
            security_low: r.security_patches.low,
            fixable_cves: r.fixable_cves,
            open_cves: r.open_cves,
            risk: r.risk,
            last_scan_ms: r.last_scan_ms,
            reboot_required: r.reboot_required,
            cves,
        });
    }
    devices.sort_by(|a, b| {
        (&a.customer, &a.site_name, &a.hostname, &a.device).cmp(&(
            &b.customer,
            &b.site_name,
            &b.hostname,
            &b.device,
        ))
    });
    let customers: HashMap<SiteId, CustomerId> = sites
        .values()
        .map(|s| (s.site_id.clone(), s.customer.clone()))
        .collect();
    let in_scope: Vec<PatchFindingsRow> = findings
        .into_values()
        .filter(|f| customers.contains_key(&f.site_id))
        .collect();
    let mut top_cves = cves_of_findings(&in_scope, &customers);
    top_cves.truncate(MAX_REPORT_TOP);
    Ok(ComplianceReportLines {
        generated_ms: now_ms,
        customer: q.customer.clone(),
        summary,
        devices,
        top_patches: patches_of_findings(&in_scope),
        top_cves,
    })
}

/// The missing patches of findings rows by source package: devices
/// missing it, the newest candidate (dpkg order), the highest severity
/// and the CVEs fixed; most severe and widespread first, at most
/// [`MAX_REPORT_TOP`].
fn patches_of_findings(rows: &[PatchFindingsRow]) -> Vec<ReportPatch> {
    let mut by_source: BTreeMap<&str, (ReportPatch, Option<FindingSeverity>, BTreeSet<&str>)> =
        BTreeMap::new();
    for r in rows {
        for m in &r.patches {
            let (p, sev, cves) = by_source.entry(m.source.as_str()).or_insert_with(|| {
                (
                    ReportPatch {
                        source: m.source.clone(),
                        ..Default::default()
                    },
                    None,
                    BTreeSet::new(),
                )
            });
            p.devices += 1;
            p.security |= m.security;
            *sev = (*sev).max(m.severity);
            cves.extend(m.cves.iter().map(String::as_str));
            if let Some(cand) = &m.candidate {
                let newer = p.candidate.is_empty()
                    || outpost_patch::version::dpkg::compare_versions(cand, &p.candidate)
                        .is_ok_and(|o| o.is_gt());
                if newer {
                    p.candidate = cand.clone();
                }
            }
        }
    }
    let mut out: Vec<(ReportPatch, Option<FindingSeverity>)> = by_source
        .into_values()
        .map(|(mut p, sev, cves)| {
            p.cves = cves.len() as u32;
            p.severity = sev.map(|s| s.as_str().to_string()).unwrap_or_default();
            (p, sev)
        })
        .collect();
    out.sort_by(|(a, sa), (b, sb)| {
        (
            std::cmp::Reverse(*sa),
            std::cmp::Reverse(a.devices),
            &a.source,
        )
            .cmp(&(
                std::cmp::Reverse(*sb),
                std::cmp::Reverse(b.devices),
                &b.source,
            ))
    });
    out.truncate(MAX_REPORT_TOP);
    out.into_iter().map(|(p, _)| p).collect()
}

/// The report as the document both PDFs print (central's and the site's).
pub fn report_document(r: &ComplianceReportLines) -> ComplianceDocument {
    use outpost_patch::report::{ReportCve, ReportDevice, SeverityFigures};
    let s = &r.summary;
    let mut doc = ComplianceDocument {
        customer: r.customer.as_ref().map(|c| c.to_string()),
        source: "central".to_string(),
        generated_ms: r.generated_ms,
        devices_total: s.devices,
        compliant: s.compliant,
        non_compliant: s.non_compliant,
        unsupported_release: s.unsupported,
        not_assessed: s.not_assessed,
        compliance_percent: s.compliance_percent,
        missing_patches: s.missing_patches,
        security_patches: SeverityFigures {
            critical: s.security_patches.critical,
            high: s.security_patches.high,
            medium: s.security_patches.medium,
            low: s.security_patches.low,
        },
        reboot_required: s.reboot_required,
        devices: r
            .devices
            .iter()
            .map(|l| ReportDevice {
                name: if l.hostname.is_empty() {
                    l.device.clone()
                } else {
                    l.hostname.clone()
                },
                site: l.site_name.clone(),
                compliance: l.compliance.clone(),
                missing_patches: u64::from(l.missing_patches),
                security: SeverityFigures {
                    critical: u64::from(l.security_critical),
                    high: u64::from(l.security_high),
                    medium: u64::from(l.security_medium),
                    low: u64::from(l.security_low),
                },
                fixable_cves: u64::from(l.fixable_cves),
                open_cves: u64::from(l.open_cves),
                risk: l.risk,
                reboot_required: l.reboot_required,
                cves: l.cves.clone(),
            })
            .collect(),
        devices_left_out: 0,
        top_patches: r.top_patches.clone(),
        top_cves: r
            .top_cves
            .iter()
            .map(|c| ReportCve {
                id: c.cve.clone(),
                severity: c.severity.as_str().to_string(),
                devices: c.counts.devices,
                fixable: c.counts.fixable,
                fix_not_in_repositories: c.counts.fix_not_in_repositories,
                open: c.counts.open,
            })
            .collect(),
    };
    doc.finish_devices();
    doc
}

/// The report as a PDF (rendered on the blocking pool: a big report is
/// milliseconds of CPU).
pub async fn report_pdf(r: &ComplianceReportLines) -> Result<Vec<u8>, ApiError> {
    let doc = report_document(r);
    tokio::task::spawn_blocking(move || outpost_patch::report::pdf::render(&doc))
        .await
        .map_err(|e| ApiError::Internal(format!("rendering the PDF report: {e}")))
}

/// `patch-compliance-CUSTOMER.EXT` (characters unsafe in a file name as `_`).
pub fn report_file_name(customer: Option<&str>, ext: &str) -> String {
    format!(
        "patch-compliance-{}.{ext}",
        customer
            .unwrap_or("all")
            .replace(|ch: char| !ch.is_ascii_alphanumeric() && ch != '-', "_")
    )
}

/// A CSV field: quoted when it holds a separator, a quote or a line
/// break; a leading `=`, `+`, `-` or `@` is prefixed with `'` so a
/// spreadsheet does not run agent-supplied text as a formula.
pub fn csv_field(s: &str) -> String {
    let s = if s.starts_with(['=', '+', '-', '@']) {
        format!("'{s}")
    } else {
        s.to_string()
    };
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s
    }
}

/// The report as CSV: a header line, then one line per device.
pub fn report_csv(r: &ComplianceReportLines) -> String {
    let mut out = String::from(
        "customer,site,site_id,hostname,device,compliance,missing_patches,\
         security_critical,security_high,security_medium,security_low,\
         fixable_cves,open_cves,risk,last_scan,reboot_required,cves\n",
    );
    for l in &r.devices {
        let scan = if l.last_scan_ms == 0 {
            String::new()
        } else {
            outpost_console::format::rfc3339(l.last_scan_ms)
        };
        let fields = [
            csv_field(l.customer.as_str()),
            csv_field(&l.site_name),
            csv_field(l.site_id.as_str()),
            csv_field(&l.hostname),
            csv_field(&l.device),
            l.compliance.clone(),
            l.missing_patches.to_string(),
            l.security_critical.to_string(),
            l.security_high.to_string(),
            l.security_medium.to_string(),
            l.security_low.to_string(),
            l.fixable_cves.to_string(),
            l.open_cves.to_string(),
            l.risk.map(|r| r.to_string()).unwrap_or_default(),
            scan,
            l.reboot_required.to_string(),
            csv_field(&l.cves.join(" ")),
        ];
        out.push_str(&fields.join(","));
        out.push('\n');
    }
    out
}

pub(crate) async fn report(
    State(c): State<Arc<Central>>,
    axum::Extension(p): axum::Extension<Principal>,
    Query(q): Query<ReportQuery>,
) -> Result<axum::response::Response, ApiError> {
    use axum::response::IntoResponse;
    let lines = report_lines(&c, &p, &q, crate::now_ms()).await?;
    match q.format.as_deref().unwrap_or("json") {
        "json" => Ok(Json(lines).into_response()),
        "csv" => {
            let name = report_file_name(q.customer.as_ref().map(|c| c.as_str()), "csv");
            Ok((
                [
                    (
                        axum::http::header::CONTENT_TYPE,
                        "text/csv; charset=utf-8".to_string(),
                    ),
                    (
                        axum::http::header::CONTENT_DISPOSITION,
                        format!("attachment; filename=\"{name}\""),
                    ),
                ],
                report_csv(&lines),
            )
                .into_response())
        }
        "pdf" => {
            let name = report_file_name(q.customer.as_ref().map(|c| c.as_str()), "pdf");
            Ok((
                [
                    (
                        axum::http::header::CONTENT_TYPE,
                        "application/pdf".to_string(),
                    ),
                    (
                        axum::http::header::CONTENT_DISPOSITION,
                        format!("attachment; filename=\"{name}\""),
                    ),
                ],
                report_pdf(&lines).await?,
            )
                .into_response())
        }
        other => Err(ApiError::BadRequest(format!(
            "unknown report format {other:?} (json, csv or pdf)"
        ))),
    }
}
