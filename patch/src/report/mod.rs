//! The patch compliance report of one customer (or of every device in a
//! scope) as a document: what the site (`outpost patches report`) and
//! central (`outpost-central patches report`, `GET /api/v1/patches/report`)
//! both print, as JSON and, with the `pdf` feature, as a PDF
//! ([`pdf::render`]).
//!
//! Owns the document's shape and its rendering only: the callers fill it
//! from their own stores (the site from its assessments, central from the
//! rows the uplink carries). No clock: the caller stamps `generated_ms`.

#[cfg(feature = "pdf")]
pub mod pdf;

use serde::{Deserialize, Serialize};

/// Devices listed in a report at most (the summary counts them all).
pub const MAX_REPORT_DEVICES: usize = 10_000;
/// Missing patches and CVEs listed at most (most severe and widespread first).
pub const MAX_REPORT_TOP: usize = 25;

/// Counts of missing security patches by severity.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeverityFigures {
    pub critical: u64,
    pub high: u64,
    pub medium: u64,
    pub low: u64,
}

/// One device's line.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ReportDevice {
    /// Hostname (the device id when the hostname is unknown).
    pub name: String,
    /// The site's name (empty at the site itself).
    pub site: String,
    /// `compliant`, `non-compliant`, `unsupported-release`, `no-catalog`
    /// or `not-assessed`.
    pub compliance: String,
    pub missing_patches: u64,
    /// Missing security patches by severity.
    pub security: SeverityFigures,
    pub fixable_cves: u64,
    pub open_cves: u64,
    pub risk: Option<u32>,
    pub reboot_required: bool,
    /// The CVE ids the device is exposed to: fixable by a candidate
    /// first, then fixed in the release but not in its repositories, then
    /// without a fix yet; each group sorted. Empty when unknown (central
    /// without the site's findings).
    #[serde(default)]
    pub cves: Vec<String>,
}

/// CVE ids listed per device in the PDF at most (the CSV has them all).
pub const MAX_REPORT_DEVICE_CVES: usize = 100;

/// One missing patch across the report's devices.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ReportPatch {
    /// Source package.
    pub source: String,
    /// Newest candidate version offered (empty when unknown).
    pub candidate: String,
    /// Highest severity of the CVEs it fixes (empty without CVEs).
    pub severity: String,
    pub security: bool,
    /// Devices missing it.
    pub devices: u32,
    /// CVEs it fixes.
    pub cves: u32,
}

/// One CVE the report's devices are exposed to.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ReportCve {
    pub id: String,
    pub severity: String,
    pub devices: u32,
    /// An upgrade the devices' repositories offer closes it.
    pub fixable: u32,
    /// The release has a fix the devices' repositories do not offer.
    pub fix_not_in_repositories: u32,
    /// No fix in the release yet.
    pub open: u32,
}

/// The compliance report.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ComplianceDocument {
    /// The customer the report covers (`None`: every device in scope).
    pub customer: Option<String>,
    /// Where it was made: `central` or the site's name.
    pub source: String,
    /// Unix ms.
    pub generated_ms: u64,
    pub devices_total: u32,
    pub compliant: u32,
    pub non_compliant: u32,
    pub unsupported_release: u32,
    pub not_assessed: u32,
    /// Compliant devices in percent of `devices_total` (`None` without devices).
    pub compliance_percent: Option<f64>,
    pub missing_patches: u64,
    /// Missing security patches by severity, all devices together.
    pub security_patches: SeverityFigures,
    pub reboot_required: u32,
    /// Least compliant first (non-compliant, by risk), at most
    /// [`MAX_REPORT_DEVICES`].
    pub devices: Vec<ReportDevice>,
    /// Devices left out of `devices` by the limit.
    pub devices_left_out: u32,
    /// At most [`MAX_REPORT_TOP`].
    pub top_patches: Vec<ReportPatch>,
    /// At most [`MAX_REPORT_TOP`].
    pub top_cves: Vec<ReportCve>,
}

impl ComplianceDocument {
    /// The compliance figure as printed: `66.7 %`, or `-` without devices.
    pub fn percent_text(&self) -> String {
        percent_text(self.compliance_percent)
    }

    /// Orders the devices (non-compliant and riskiest first, then by
    /// name) and applies [`MAX_REPORT_DEVICES`].
    pub fn finish_devices(&mut self) {
        let rank = |c: &str| match c {
            "non-compliant" => 0,
            "unsupported-release" => 1,
            "not-assessed" | "no-catalog" => 2,
            _ => 3,
        };
        self.devices.sort_by(|a, b| {
            (
                rank(&a.compliance),
                std::cmp::Reverse(a.risk),
                &a.site,
                &a.name,
            )
                .cmp(&(
                    rank(&b.compliance),
                    std::cmp::Reverse(b.risk),
                    &b.site,
                    &b.name,
                ))
        });
        if self.devices.len() > MAX_REPORT_DEVICES {
            self.devices_left_out = (self.devices.len() - MAX_REPORT_DEVICES) as u32;
            self.devices.truncate(MAX_REPORT_DEVICES);
        }
    }
}

/// `66.7 %`, or `-` for `None`.
pub fn percent_text(p: Option<f64>) -> String {
    p.map_or_else(|| "-".to_string(), |p| format!("{p:.1} %"))
}

/// A Unix ms instant as `2026-11-29 23:55 UTC`.
pub fn time_text(ms: u64) -> String {
    match i64::try_from(ms)
        .ok()
        .and_then(|ms| jiff::Timestamp::from_millisecond(ms).ok())
    {
        Some(t) => t.strftime("%Y-%m-%d %H:%M UTC").to_string(),
        None => "-".to_string(),
    }
}

/// Rank of a severity name for ordering (higher is worse).
pub fn severity_rank(s: &str) -> u8 {
    match s {
        "critical" => 5,
        "high" => 4,
        "medium" => 3,
        "low" => 2,
        "unknown" => 1,
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_are_ordered_least_compliant_first_and_capped() {
        let d = |name: &str, c: &str, risk| ReportDevice {
            name: name.into(),
            compliance: c.into(),
            risk,
            ..Default::default()
        };
        let mut doc = ComplianceDocument {
            devices: vec![
                d("a", "compliant", Some(0)),
                d("b", "non-compliant", Some(10)),
                d("c", "non-compliant", Some(50)),
                d("d", "unsupported-release", None),
            ],
            ..Default::default()
        };
        doc.finish_devices();
        let names: Vec<_> = doc.devices.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names, ["c", "b", "d", "a"]);
        assert_eq!(doc.devices_left_out, 0);
        let mut big = ComplianceDocument {
            devices: vec![ReportDevice::default(); MAX_REPORT_DEVICES + 3],
            ..Default::default()
        };
        big.finish_devices();
        assert_eq!(big.devices.len(), MAX_REPORT_DEVICES);
        assert_eq!(big.devices_left_out, 3);
    }

    #[test]
    fn figures_print_as_the_report_shows_them() {
        assert_eq!(percent_text(Some(200.0 / 3.0)), "66.7 %");
        assert_eq!(percent_text(None), "-");
        assert_eq!(time_text(0), "1970-01-01 00:00 UTC");
        assert_eq!(time_text(1_764_460_500_000), "2025-11-29 23:55 UTC");
    }
}
