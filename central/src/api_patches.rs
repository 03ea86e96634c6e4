//! `GET /api/v1/patches/compliance`: patch compliance per customer and
//! site, from the rows the sites' batches carry (see
//! [`crate::apply`]). Scoped like every view: the caller's tenant only,
//! and only its customers' sites. Reads only; owns nothing stored.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::State;
use outpost_proto::{CustomerId, SiteId};
use outpost_uplink::batch::{ComplianceState, PatchSeverityCounts};
use outpost_web::{Json, Query};
use serde::{Deserialize, Serialize};

use crate::Central;
use crate::api::{ApiError, visible_sites};
use crate::model::{PatchComplianceRow, Principal};

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
        .map_err(|e| ApiError::Internal(e.to_string()))?;
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
