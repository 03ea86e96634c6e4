//! The console's patch pages, for both scopes: the Patches overview
//! (`/patches`: compliance per customer and site, devices by risk, the
//! CVEs the fleet is exposed to, the CSV report), a CVE's page
//! (`/patches/cves/{cve}`: which customers and devices are exposed, fixable
//! or open), the compliance report download (`/patches/report.csv`), and
//! the patch panel of a device page (missing patches, open CVEs, last scan
//! age, reboot required, download size, a deferred scan's reason, and
//! a link to the Approvals page's "which rule decided" for the device).
//!
//! Download sizes are shown where the backend knows them (the site: its
//! agents report apt's sizes); `None` hides the column (central).
//!
//! This module owns those pages, their types and routes only. Whether a
//! backend has patches is [`crate::backend::Features::patches`]; what a
//! viewer may see is the backend's decision (an object out of scope is
//! `NotFound`). Read-only pages: no form, no CSRF token needed.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use maud::{Markup, html};
use outpost_web::{Path, Query};
use serde::Deserialize;

use crate::Console;
use crate::backend::{ConsoleError, Viewer};
use crate::format;
use crate::pages::layout::{self, badge, device_href, enc, site_href, time};
use crate::routes::{error_page, html as page, now_ms, render, viewer};

/// Devices listed by risk on the overview.
pub const RISKY_DEVICES: usize = 25;
/// CVEs listed on the overview.
pub const TOP_CVES: usize = 25;
/// Missing patches listed on the overview (the site's list order).
pub const TOP_PATCHES: usize = 25;

/// Compliance of a set of devices (the scope, a customer, a site).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ComplianceLine {
    /// Customer name, or site name.
    pub label: String,
    pub customer: String,
    /// Set for a site's line.
    pub site_id: Option<String>,
    pub devices: u32,
    pub compliant: u32,
    pub non_compliant: u32,
    pub unsupported: u32,
    pub not_assessed: u32,
    pub percent: Option<f64>,
    pub security_critical: u64,
    pub security_high: u64,
    pub reboot_required: u32,
    /// What its devices' missing patches download (`12.3 MiB`, `at least
    /// 1.0 MiB (2 sizes unknown)`); `None` where the backend does not know.
    pub download: Option<String>,
}

/// A device on the overview's risk list.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RiskyDevice {
    pub site_id: String,
    pub site_name: String,
    pub customer: String,
    pub device: String,
    pub hostname: String,
    pub compliance: String,
    pub risk: Option<u32>,
    pub missing: u32,
    pub security_critical: u32,
    pub security_high: u32,
    pub last_scan_ms: u64,
    pub reboot_required: bool,
    /// What its missing patches download (`None`: not known here).
    pub download: Option<String>,
}

/// A missing patch across the devices (one source package).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PatchLine {
    pub source: String,
    /// Candidate versions offered across devices.
    pub candidates: Vec<String>,
    pub devices: u32,
    pub cves: u32,
    pub severity: Option<String>,
    pub security: bool,
    pub reboot_expected: bool,
    pub max_risk: u32,
    /// What the devices missing it download in all.
    pub download: Option<String>,
}

/// A CVE on the overview.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CveLine {
    pub cve: String,
    pub severity: String,
    pub devices: u32,
    pub fixable: u32,
    pub fix_not_in_repositories: u32,
    pub open: u32,
    pub customers: u32,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct PatchOverview {
    pub total: ComplianceLine,
    /// Per customer (central); empty on a site.
    pub customers: Vec<ComplianceLine>,
    pub sites: Vec<ComplianceLine>,
    /// Highest risk first.
    pub risky: Vec<RiskyDevice>,
    pub top_cves: Vec<CveLine>,
    /// Customers the report can be narrowed to.
    pub report_customers: Vec<String>,
    /// The missing patches by source package, in the backend's order (at
    /// most [`TOP_PATCHES`]); `None` where the backend has no such list.
    pub patches: Option<Vec<PatchLine>>,
    /// Missing patches in all (the list may be cut).
    pub patches_total: usize,
}

/// A device exposed to a CVE.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CveDevice {
    pub customer: String,
    pub site_id: String,
    pub site_name: String,
    pub device: String,
    pub hostname: String,
    /// `fixable`, `fix-not-in-repositories`, `open`.
    pub state: String,
    pub source: String,
    pub installed: String,
    pub fixed: Option<String>,
    pub severity: String,
}

/// Exposure of one customer.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CustomerExposure {
    pub customer: String,
    pub devices: u32,
    pub fixable: u32,
    pub fix_not_in_repositories: u32,
    pub open: u32,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct CvePage {
    pub cve: String,
    pub severity: Option<String>,
    pub total: CustomerExposure,
    pub customers: Vec<CustomerExposure>,
    pub devices: Vec<CveDevice>,
}

/// A missing patch on a device page.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MissingRow {
    pub source: String,
    pub installed: String,
    pub candidate: Option<String>,
    pub security: bool,
    pub severity: Option<String>,
    pub cves: Vec<String>,
    pub reboot_expected: bool,
    pub first_seen_ms: u64,
    /// Its download (`12.3 MiB`, `unknown`); `None`: not known here.
    pub download: Option<String>,
}

/// A CVE a device is exposed to.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DeviceCve {
    pub cve: String,
    pub source: String,
    pub installed: String,
    pub fixed: Option<String>,
    pub state: String,
    pub severity: String,
}

/// The patch panel of a device page.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DevicePatchView {
    /// `compliant`, `non-compliant`, `unsupported-release`, `no-catalog`,
    /// `not-assessed`.
    pub compliance: String,
    pub risk: Option<u32>,
    /// When the device's packages were scanned (0: unknown).
    pub last_scan_ms: u64,
    pub reboot_required: bool,
    pub missing: Vec<MissingRow>,
    /// Fixable first, then by severity.
    pub cves: Vec<DeviceCve>,
    /// Missing patches and CVEs are not known (the site sent counts only).
    pub counts_only: bool,
    pub missing_count: u32,
    pub fixable_cves: u32,
    pub open_cves: u32,
    /// What its missing patches download; `None`: not known here.
    pub download: Option<String>,
    /// Why its last scan was deferred (dpkg's lock held), if it was.
    pub deferred: Option<String>,
    /// When the device's last package report arrived (0: unknown).
    pub reported_ms: u64,
    /// No assessment yet: only [`DevicePatchView::deferred`] is known.
    pub unassessed: bool,
}

pub fn cve_href(cve: &str) -> String {
    format!("/patches/cves/{}", enc(cve))
}

fn percent(p: Option<f64>) -> String {
    p.map_or_else(|| "–".to_string(), format::percent)
}

fn name_of(hostname: &str, device: &str) -> String {
    if hostname.is_empty() {
        device.to_string()
    } else {
        hostname.to_string()
    }
}

fn compliance_table(id: &str, first: &str, lines: &[ComplianceLine]) -> Markup {
    let sizes = lines.iter().any(|l| l.download.is_some());
    html! {
        div.scroll { table.grid id=(id) {
            thead { tr {
                th { (first) } th.n { "Compliant" } th.n { "Devices" } th.n { "Non-compliant" }
                th.n { "Unsupported" } th.n { "Not assessed" } th.n { "Critical patches" }
                th.n { "High patches" } th.n { "Reboot required" }
                @if sizes { th.n { "Download" } }
            } }
            tbody { @for l in lines {
                tr data-customer=(l.customer) {
                    td { @match &l.site_id {
                        Some(s) => { a href=(site_href(s)) { (l.label) } " " span.muted { (l.customer) } }
                        None => { a href=(format!("/devices?customer={}", enc(&l.customer))) { (l.label) } }
                    } }
                    td.n.compliance { (percent(l.percent)) }
                    td.n { (l.devices) }
                    td.n { (l.non_compliant) }
                    td.n { (l.unsupported) }
                    td.n { (l.not_assessed) }
                    td.n { (l.security_critical) }
                    td.n { (l.security_high) }
                    td.n { (l.reboot_required) }
                    @if sizes { td.n.download { (l.download.as_deref().unwrap_or("–")) } }
                }
            } }
        } }
    }
}

/// The Patches overview.
pub fn overview_page(o: &PatchOverview, tenant_scope: bool, now: u64) -> Markup {
    let t = &o.total;
    html! {
        section #patch-summary {
            p.facts {
                b #fleet-compliance { (percent(t.percent)) } " compliant · "
                (t.devices) " devices assessed · "
                (t.non_compliant) " non-compliant · "
                (t.security_critical) " critical and " (t.security_high) " high security patches missing · "
                (t.reboot_required) " waiting for a reboot"
                @if let Some(d) = &t.download { " · " b #fleet-download { (d) } " to download" }
            }
            form.filters method="get" action="/patches/report.csv" #report-form {
                @if tenant_scope && !o.report_customers.is_empty() {
                    label { span { "Customer" }
                        select name="customer" id="report-customer" {
                            option value="" { "All customers" }
                            @for c in &o.report_customers { option value=(c) { (c) } }
                        }
                    }
                }
                button type="submit" { "Download compliance report (CSV)" }
                " "
                button type="submit" formaction="/patches/report.pdf" #report-pdf-button { "Download compliance report (PDF)" }
            }
            p {
                a href="/patches/report.csv" #report-csv { "Compliance report, every device (CSV)" }
                " · "
                a href="/patches/report.pdf" #report-pdf { "(PDF)" }
            }
        }
        @if tenant_scope || !o.customers.is_empty() {
            section #patch-customers {
                h2 { "Compliance per customer" }
                (compliance_table("compliance-customers", "Customer", &o.customers))
            }
        }
        section #patch-sites {
            h2 { "Compliance per site" }
            (compliance_table("compliance-sites", "Site", &o.sites))
        }
        section #patch-risky {
            h2 { "Devices by risk" }
            @let sizes = o.risky.iter().any(|d| d.download.is_some());
            @if o.risky.is_empty() { p.empty { "No device has a patch assessment yet." } } @else {
                div.scroll { table.grid #risky-devices {
                    thead { tr {
                        th { "Device" } th { "Site" } th.n { "Risk" } th { "Compliance" }
                        th.n { "Missing" } th.n { "Critical" } th.n { "High" } th { "Last scan" } th { "Reboot" }
                        @if sizes { th.n { "Download" } }
                    } }
                    tbody { @for d in &o.risky {
                        tr data-device=(d.device) {
                            td { a href=(device_href(&d.site_id, &d.device)) { (name_of(&d.hostname, &d.device)) } }
                            td { a href=(site_href(&d.site_id)) { (d.site_name) } " " span.muted { (d.customer) } }
                            td.n { @if let Some(r) = d.risk { (r) } @else { "–" } }
                            td { (badge("compliance", &d.compliance)) }
                            td.n { (d.missing) }
                            td.n { (d.security_critical) }
                            td.n { (d.security_high) }
                            td { @if d.last_scan_ms > 0 { (format::ago(d.last_scan_ms, now)) } @else { "never" } }
                            td { @if d.reboot_required { (badge("reboot", "required")) } }
                            @if sizes { td.n.download { (d.download.as_deref().unwrap_or("–")) } }
                        }
                    } }
                } }
            }
        }
        @if let Some(list) = &o.patches { (patch_table(list, o.patches_total)) }
        section #patch-cves {
            h2 { "CVEs the fleet is exposed to" }
            @if o.top_cves.is_empty() { p.empty { "No exposed CVE known (or the sites have not sent their findings yet)." } } @else {
                div.scroll { table.grid #top-cves {
                    thead { tr {
                        th { "CVE" } th { "Severity" } th.n { "Devices" } th.n { "Fixable now" }
                        th.n { "Fix not in repositories" } th.n { "No fix yet" }
                        @if tenant_scope { th.n { "Customers" } }
                    } }
                    tbody { @for c in &o.top_cves {
                        tr data-cve=(c.cve) {
                            td { a href=(cve_href(&c.cve)) { (c.cve) } }
                            td { (badge("sev", &c.severity)) }
                            td.n { (c.devices) }
                            td.n { (c.fixable) }
                            td.n { (c.fix_not_in_repositories) }
                            td.n { (c.open) }
                            @if tenant_scope { td.n { (c.customers) } }
                        }
                    } }
                } }
            }
        }
    }
}

/// The missing patches by source package (the overview's section).
fn patch_table(list: &[PatchLine], total: usize) -> Markup {
    html! {
        section #patch-list {
            h2 { "Missing patches" }
            @if list.is_empty() { p.empty #no-missing { "No device misses a patch." } } @else {
                @if total > list.len() { p.muted { "The " (list.len()) " riskiest of " (total) " missing patches." } }
                div.scroll { table.grid #missing-across {
                    thead { tr {
                        th { "Package" } th { "Candidate" } th { "Severity" } th.n { "Devices" } th.n { "CVEs" }
                        th.n { "Max risk" } th { "Reboot" } th.n { "Download" }
                    } }
                    tbody { @for l in list {
                        tr data-source=(l.source) {
                            td { code { (l.source) } @if l.security { " " (badge("patch", "security")) } }
                            td { @for (i, c) in l.candidates.iter().enumerate() { @if i > 0 { ", " } code { (c) } } }
                            td { @if let Some(s) = &l.severity { (badge("sev", s)) } }
                            td.n.devices { (l.devices) }
                            td.n { (l.cves) }
                            td.n { (l.max_risk) }
                            td { @if l.reboot_expected { "expected" } }
                            td.n.download { (l.download.as_deref().unwrap_or("–")) }
                        }
                    } }
                } }
            }
        }
    }
}

/// A CVE's page.
pub fn cve_page(p: &CvePage, tenant_scope: bool) -> Markup {
    let t = &p.total;
    html! {
        section #cve data-cve=(p.cve) {
            p.facts {
                @if let Some(s) = &p.severity { (badge("sev", s)) " · " }
                b #exposed-devices { (t.devices) } " devices exposed · "
                (t.fixable) " fixable now · "
                (t.fix_not_in_repositories) " fix not in their repositories · "
                (t.open) " without a fix yet"
            }
            @if t.devices == 0 { p.empty #not-exposed { "No device in your scope is exposed to " (p.cve) "." } }
        }
        @if tenant_scope && !p.customers.is_empty() {
            section #cve-customers {
                h2 { "Customers exposed" }
                table.grid #exposed-customers {
                    thead { tr { th { "Customer" } th.n { "Devices" } th.n { "Fixable now" } th.n { "Fix not in repositories" } th.n { "No fix yet" } } }
                    tbody { @for c in &p.customers {
                        tr data-customer=(c.customer) {
                            td { a href=(format!("/devices?customer={}", enc(&c.customer))) { (c.customer) } }
                            td.n { (c.devices) } td.n { (c.fixable) } td.n { (c.fix_not_in_repositories) } td.n { (c.open) }
                        }
                    } }
                }
            }
        }
        @if !p.devices.is_empty() {
            section #cve-devices {
                h2 { "Devices exposed" }
                div.scroll { table.grid #exposed {
                    thead { tr {
                        th { "Device" } th { "Site" } @if tenant_scope { th { "Customer" } }
                        th { "State" } th { "Package" } th { "Installed" } th { "Fixed in" } th { "Severity" }
                    } }
                    tbody { @for d in &p.devices {
                        tr data-device=(d.device) data-state=(d.state) {
                            td { a href=(device_href(&d.site_id, &d.device)) { (name_of(&d.hostname, &d.device)) } }
                            td { a href=(site_href(&d.site_id)) { (d.site_name) } }
                            @if tenant_scope { td { (d.customer) } }
                            td { (badge("finding", &d.state)) }
                            td { code { (d.source) } }
                            td { code { (d.installed) } }
                            td { @if let Some(f) = &d.fixed { code { (f) } } @else { span.muted { "no fix yet" } } }
                            td { (badge("sev", &d.severity)) }
                        }
                    } }
                } }
            }
        }
    }
}

/// The patch panel of a device page; `decided`: where the Approvals page
/// shows which rule decided each of its patches (backends with
/// deployments).
pub fn device_section(p: Option<&DevicePatchView>, decided: Option<&str>, now: u64) -> Markup {
    html! {
        section #device-patches {
            h2 { "Patches" }
            @if let Some(d) = p.and_then(|p| p.deferred.as_ref()) {
                p.notice #scan-deferred {
                    (d)
                    @if let Some(p) = p.filter(|p| p.reported_ms > 0) { " · reported " (format::ago(p.reported_ms, now)) }
                }
            }
            @match p.filter(|p| !p.unassessed) {
                None => { p.empty { "No patch assessment of this device yet." } }
                Some(p) => {
                    p.facts {
                        (badge("compliance", &p.compliance))
                        @if let Some(r) = p.risk { " · risk " b #device-risk { (r) } }
                        " · last scan "
                        @if p.last_scan_ms > 0 { span #last-scan { (format::ago(p.last_scan_ms, now)) } " (" (time(p.last_scan_ms, false)) ")" } @else { "never" }
                        @if p.reboot_required { " · " (badge("reboot", "required")) }
                        " · " (p.missing_count) " missing patches, "
                        (p.fixable_cves) " fixable and " (p.open_cves) " open CVEs"
                        @if let Some(d) = &p.download { " · " b #device-download { (d) } " to download" }
                    }
                    @if let Some(href) = decided {
                        p { a href=(href) #which-rule { "Which rule decided each patch" } }
                    }
                    @if p.counts_only {
                        p.muted { "The site sent counts only (an older appliance): the lists are not available here." }
                    }
                    @if !p.missing.is_empty() {
                        h3 { "Missing patches" }
                        div.scroll { table.grid #missing-patches {
                            thead { tr {
                                th { "Package" } th { "Installed" } th { "Candidate" } th { "Severity" }
                                th { "CVEs" } th { "Missing since" } th { "Reboot" }
                                @if p.download.is_some() { th.n { "Download" } }
                            } }
                            tbody { @for m in &p.missing {
                                tr data-source=(m.source) {
                                    td { code { (m.source) } @if m.security { " " (badge("patch", "security")) } }
                                    td { code { (m.installed) } }
                                    td { @if let Some(c) = &m.candidate { code { (c) } } }
                                    td { @if let Some(s) = &m.severity { (badge("sev", s)) } }
                                    td { @for (i, c) in m.cves.iter().enumerate() {
                                        @if i > 0 { " " } a href=(cve_href(c)) { (c) }
                                    } }
                                    td { @if m.first_seen_ms > 0 { (format::ago(m.first_seen_ms, now)) } }
                                    td { @if m.reboot_expected { "expected" } }
                                    @if p.download.is_some() { td.n.download { (m.download.as_deref().unwrap_or("–")) } }
                                }
                            } }
                        } }
                    }
                    @if !p.cves.is_empty() {
                        h3 { "CVEs" }
                        div.scroll { table.grid #device-cves {
                            thead { tr { th { "CVE" } th { "State" } th { "Severity" } th { "Package" } th { "Installed" } th { "Fixed in" } } }
                            tbody { @for c in &p.cves {
                                tr data-cve=(c.cve) data-state=(c.state) {
                                    td { a href=(cve_href(&c.cve)) { (c.cve) } }
                                    td { (badge("finding", &c.state)) }
                                    td { (badge("sev", &c.severity)) }
                                    td { code { (c.source) } }
                                    td { code { (c.installed) } }
                                    td { @if let Some(f) = &c.fixed { code { (f) } } @else { span.muted { "no fix yet" } } }
                                }
                            } }
                        } }
                    }
                }
            }
        }
    }
}

// ---- routes ----

type C = State<Arc<Console>>;

fn unavailable() -> ConsoleError {
    ConsoleError::NotFound("Patches are not available on this server.".into())
}

/// `GET /patches`.
pub async fn overview(State(c): C, h: HeaderMap) -> Response {
    let v = match viewer(&c, &h).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    if !c.backend.info().features.patches {
        return error_page(&c, Some(&v), unavailable());
    }
    match c.backend.patch_overview(&v).await {
        Ok(o) => {
            let tenant = c.backend.info().scope == crate::backend::ScopeKind::Tenant;
            let m = render(
                &c,
                Some(&v),
                layout::Section::Patches,
                "Patches",
                vec![layout::crumb("Dashboard", "/"), layout::here("Patches")],
                overview_page(&o, tenant, now_ms()),
            );
            page(StatusCode::OK, m)
        }
        Err(e) => error_page(&c, Some(&v), e),
    }
}

/// `GET /patches/cves/{cve}`.
pub async fn cve(State(c): C, h: HeaderMap, Path(cve): Path<String>) -> Response {
    let v = match viewer(&c, &h).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    if !c.backend.info().features.patches {
        return error_page(&c, Some(&v), unavailable());
    }
    match c.backend.patch_cve(&v, &cve).await {
        Ok(p) => {
            let tenant = c.backend.info().scope == crate::backend::ScopeKind::Tenant;
            let m = render(
                &c,
                Some(&v),
                layout::Section::Patches,
                &p.cve,
                vec![
                    layout::crumb("Dashboard", "/"),
                    layout::crumb("Patches", "/patches"),
                    layout::here(p.cve.clone()),
                ],
                cve_page(&p, tenant),
            );
            page(StatusCode::OK, m)
        }
        Err(e) => error_page(&c, Some(&v), e),
    }
}

#[derive(Debug, Default, Deserialize)]
pub struct ReportParams {
    pub customer: Option<String>,
}

/// `GET /patches/report.csv[?customer=C]`: one line per device.
pub async fn report_csv(c: State<Arc<Console>>, h: HeaderMap, p: Query<ReportParams>) -> Response {
    report(c, h, p, ReportFormat::Csv).await
}

/// `GET /patches/report.pdf[?customer=C]`: the same report as a PDF, with
/// the top missing patches and open CVEs.
pub async fn report_pdf(c: State<Arc<Console>>, h: HeaderMap, p: Query<ReportParams>) -> Response {
    report(c, h, p, ReportFormat::Pdf).await
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum ReportFormat {
    Csv,
    Pdf,
}

async fn report(
    State(c): State<Arc<Console>>,
    h: HeaderMap,
    Query(p): Query<ReportParams>,
    format: ReportFormat,
) -> Response {
    let v = match viewer(&c, &h).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    if !c.backend.info().features.patches {
        return error_page(&c, Some(&v), unavailable());
    }
    let customer = p
        .customer
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty());
    let (body, content_type, ext) = match format {
        ReportFormat::Csv => (
            c.backend
                .patch_report_csv(&v, customer.as_deref())
                .await
                .map(String::into_bytes),
            "text/csv; charset=utf-8",
            "csv",
        ),
        ReportFormat::Pdf => (
            c.backend.patch_report_pdf(&v, customer.as_deref()).await,
            "application/pdf",
            "pdf",
        ),
    };
    match body {
        Ok(body) => {
            let name = format!(
                "patch-compliance-{}.{ext}",
                customer
                    .as_deref()
                    .unwrap_or("all")
                    .replace(|ch: char| !ch.is_ascii_alphanumeric() && ch != '-', "_")
            );
            let mut r = (StatusCode::OK, body).into_response();
            r.headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
            if let Ok(d) = HeaderValue::from_str(&format!("attachment; filename=\"{name}\"")) {
                r.headers_mut().insert(header::CONTENT_DISPOSITION, d);
            }
            r
        }
        Err(e) => error_page(&c, Some(&v), e),
    }
}

/// Where the Approvals page shows which rule decided a device's patches:
/// `?device=SITE/DEVICE` at central, `?device=DEVICE` on a site.
pub fn decided_href(tenant_scope: bool, site: &str, device: &str) -> String {
    if tenant_scope {
        format!("/approvals?device={}", enc(&format!("{site}/{device}")))
    } else {
        format!("/approvals?device={}", enc(device))
    }
}

/// The device page's panel (backends with patches).
pub async fn device_panel(c: &Console, v: &Viewer, site: &str, device: &str) -> Markup {
    let info = c.backend.info();
    let decided = info.features.deployments.then(|| {
        decided_href(
            info.scope == crate::backend::ScopeKind::Tenant,
            site,
            device,
        )
    });
    match c.backend.device_patches(v, site, device).await {
        Ok(p) => device_section(p.as_ref(), decided.as_deref(), now_ms()),
        Err(e) => {
            html! { section #device-patches { h2 { "Patches" } p.notice { (e.to_string()) } } }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_device_panel_escapes_and_links_cves() {
        let p = DevicePatchView {
            compliance: "non-compliant".into(),
            risk: Some(40),
            last_scan_ms: 1_000,
            reboot_required: true,
            missing: vec![MissingRow {
                source: "openssl<script>".into(),
                installed: "1".into(),
                candidate: Some("2".into()),
                security: true,
                severity: Some("high".into()),
                cves: vec!["CVE-2026-0001".into()],
                reboot_expected: false,
                first_seen_ms: 500,
                download: Some("12.3 MiB".into()),
            }],
            cves: vec![],
            counts_only: false,
            missing_count: 1,
            fixable_cves: 1,
            open_cves: 0,
            download: Some("at least 12.3 MiB (1 size unknown)".into()),
            deferred: Some("scan deferred: dpkg <lock>".into()),
            reported_ms: 1_000,
            unassessed: false,
        };
        let s = device_section(Some(&p), Some("/approvals?device=s%2Fd"), 3_600_000).into_string();
        assert!(s.contains("openssl&lt;script&gt;"), "{s}");
        assert!(s.contains("href=\"/patches/cves/CVE-2026-0001\""), "{s}");
        assert!(s.contains("1 missing patches"), "{s}");
        assert!(
            s.contains(r#"id="device-download">at least 12.3 MiB (1 size unknown)</b>"#),
            "{s}"
        );
        assert!(s.contains(r#"<td class="n download">12.3 MiB</td>"#), "{s}");
        assert!(
            s.contains(r#"id="scan-deferred">scan deferred: dpkg &lt;lock&gt;"#),
            "{s}"
        );
        assert!(
            s.contains(r#"id="which-rule""#) && s.contains(r#"href="/approvals?device=s%2Fd""#),
            "{s}"
        );
        let none = device_section(None, None, 0).into_string();
        assert!(none.contains("No patch assessment"), "{none}");
        // Only a deferred scan known: the reason, and no figures.
        let only = DevicePatchView {
            deferred: Some("scan deferred: locked".into()),
            unassessed: true,
            ..Default::default()
        };
        let s = device_section(Some(&only), None, 0).into_string();
        assert!(
            s.contains("scan deferred: locked") && s.contains("No patch assessment"),
            "{s}"
        );
        assert!(!s.contains("missing patches"), "{s}");
    }

    #[test]
    fn the_decided_link_names_site_and_device_at_central_and_the_device_on_a_site() {
        assert_eq!(
            decided_href(true, "s-1", "00aa"),
            "/approvals?device=s-1%2F00aa"
        );
        assert_eq!(
            decided_href(false, "local", "00aa"),
            "/approvals?device=00aa"
        );
    }

    #[test]
    fn the_overview_shows_sizes_customers_and_the_missing_patches_where_known() {
        let line = |label: &str, download: Option<&str>| ComplianceLine {
            label: label.into(),
            customer: label.into(),
            download: download.map(str::to_string),
            ..Default::default()
        };
        let mut o = PatchOverview {
            total: line("All", Some("1.5 KiB")),
            customers: vec![line("dental", Some("1.5 KiB"))],
            patches: Some(vec![PatchLine {
                source: "openssl".into(),
                candidates: vec!["3.0.15-1".into()],
                devices: 2,
                download: Some("at least 1.5 KiB (1 size unknown)".into()),
                ..Default::default()
            }]),
            patches_total: 1,
            ..Default::default()
        };
        // A site (not tenant scope) shows its customers when it has them.
        let s = overview_page(&o, false, 0).into_string();
        assert!(s.contains(r#"id="fleet-download">1.5 KiB</b>"#), "{s}");
        assert!(s.contains(r#"id="compliance-customers""#), "{s}");
        assert!(
            s.contains(r#"<td class="n download">at least 1.5 KiB (1 size unknown)</td>"#),
            "{s}"
        );
        // Central: no sizes, no list.
        o.total.download = None;
        o.customers[0].download = None;
        o.patches = None;
        let s = overview_page(&o, true, 0).into_string();
        assert!(
            !s.contains("Download</th>")
                && !s.contains("fleet-download")
                && !s.contains("missing-across"),
            "{s}"
        );
    }

    #[test]
    fn a_cve_page_without_exposure_says_so() {
        let p = CvePage {
            cve: "CVE-2026-1".into(),
            ..Default::default()
        };
        let s = cve_page(&p, true).into_string();
        assert!(s.contains("No device in your scope is exposed"), "{s}");
    }
}
