//! The documented rules around an assessment: the compliance policy, the
//! reboot heuristic and the risk formulas.
//!
//! Risk of a missing patch, an integer 1–10 (from the reference design's
//! patch risk score, turned from "risk of deploying" into "risk of not
//! deploying"):
//!
//! ```text
//!   severity      critical +5, high +3, medium or unknown +1, low/unimportant 0
//!                 (a security-pocket update with no known CVE counts as unknown)
//! + CVE count     +1 per CVE it fixes (unimportant ones not counted), at most +3
//! + reboot        −1 when no reboot is expected (the reference's rule)
//! + age           +2 when it has been missing for more than 7 days (the
//!                 reference adds 2 to *new* patches because deploying them
//!                 fast is risky; for exposure, an old missing fix is worse)
//!   clamped to 1..=10
//! ```
//!
//! Risk of a device, 0–100: the sum of the risks of its missing *security*
//! patches (security pocket, or fixing at least one CVE above
//! `unimportant`), + 2 per open (unfixable) CVE of severity high or
//! critical, + 5 when a reboot is pending (installed fixes not active yet);
//! capped at 100. `None` for a device that could not be assessed.
//!
//! Compliance of a device: compliant when its release is supported, the
//! catalog has advisories for it, and no missing security patch of
//! severity ≥ [`Policy::min_severity`] has been missing for longer than
//! [`Policy::grace_days`]. Unsupported releases (and RPM systems, not
//! assessed yet) are never compliant. Fleet compliance % = compliant
//! devices / all devices (unsupported ones included) × 100.

use crate::severity::Severity;

/// The compliance policy of a site (or customer).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct Policy {
    /// Missing security patches at or above this severity count against
    /// compliance (default `high`).
    pub min_severity: Severity,
    /// …once missing for longer than this many days (default 14).
    pub grace_days: u32,
}

impl Default for Policy {
    fn default() -> Policy {
        Policy {
            min_severity: Severity::High,
            grace_days: 14,
        }
    }
}

pub const DAY_MS: u64 = 86_400_000;

/// Days after which a missing patch's risk grows (+2).
pub const RISK_AGE_DAYS: u64 = 7;

/// Source packages whose update needs a reboot to take effect: kernels,
/// the C library, the init system and bus, CPU microcode, boot firmware.
const REBOOT_SOURCES: &[&str] = &[
    "linux",
    "glibc",
    "systemd",
    "dbus",
    "dbus-broker",
    "intel-microcode",
    "amd64-microcode",
    "linux-firmware",
    "firmware-nonfree",
];

/// Whether updating this source package (with these binaries) is expected
/// to need a reboot: the sources above, Debian's and Ubuntu's kernel
/// source variants (`linux-signed-*`, `linux-meta*`, `linux-hwe*`,
/// `linux-lts-*`), and any `linux-image-*` binary.
pub fn reboot_expected<'a>(source: &str, mut binaries: impl Iterator<Item = &'a str>) -> bool {
    REBOOT_SOURCES.contains(&source)
        || ["linux-signed", "linux-meta", "linux-hwe", "linux-lts-"]
            .iter()
            .any(|p| source.starts_with(p))
        || binaries.any(|b| b.starts_with("linux-image-"))
}

/// A missing patch's risk (see the module documentation).
pub fn patch_risk(
    severity: Option<Severity>,
    security: bool,
    cves: usize,
    reboot: bool,
    age_ms: u64,
) -> u32 {
    let severity = severity.or(security.then_some(Severity::Unknown));
    let mut score: i64 = match severity {
        Some(Severity::Critical) => 5,
        Some(Severity::High) => 3,
        Some(Severity::Medium | Severity::Unknown) => 1,
        _ => 0,
    };
    score += cves.min(3) as i64;
    if !reboot {
        score -= 1;
    }
    if age_ms > RISK_AGE_DAYS * DAY_MS {
        score += 2;
    }
    score.clamp(1, 10) as u32
}

/// A device's risk (see the module documentation).
pub fn device_risk(
    security_patch_risks: impl Iterator<Item = u32>,
    open_high: usize,
    reboot_pending: bool,
) -> u32 {
    let mut total: u64 = security_patch_risks.map(u64::from).sum();
    total += 2 * open_high as u64;
    if reboot_pending {
        total += 5;
    }
    total.min(100) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patch_risk_follows_the_documented_formula() {
        // critical, 3 CVEs, reboot, 8 days: 5 + 3 + 0 + 2 = 10
        assert_eq!(
            patch_risk(Some(Severity::Critical), true, 3, true, 8 * DAY_MS),
            10
        );
        // high, 1 CVE, no reboot, fresh: 3 + 1 - 1 = 3
        assert_eq!(patch_risk(Some(Severity::High), true, 1, false, 0), 3);
        // more than 3 CVEs count as 3
        assert_eq!(patch_risk(Some(Severity::High), true, 40, false, 0), 5);
        // a security update nobody rated: as unknown (+1), no reboot: 1 - 1 → 1
        assert_eq!(patch_risk(None, true, 0, false, 0), 1);
        // a plain update, old: 0 - 1 + 2 = 1; never below 1
        assert_eq!(patch_risk(None, false, 0, false, 30 * DAY_MS), 1);
        assert_eq!(patch_risk(None, false, 0, false, 0), 1);
        assert_eq!(patch_risk(Some(Severity::Low), false, 0, false, 0), 1);
        // exactly 7 days is not older than 7 days
        assert_eq!(
            patch_risk(Some(Severity::Medium), true, 1, true, 7 * DAY_MS),
            2
        );
    }

    #[test]
    fn device_risk_sums_caps_and_counts_open_high_and_reboot() {
        assert_eq!(device_risk([3, 4].into_iter(), 0, false), 7);
        assert_eq!(device_risk([3].into_iter(), 2, true), 3 + 4 + 5);
        assert_eq!(device_risk([10; 20].into_iter(), 0, false), 100);
    }

    #[test]
    fn kernels_libc_and_init_expect_a_reboot() {
        for s in [
            "linux",
            "linux-signed-amd64",
            "linux-meta",
            "linux-hwe-6.5",
            "glibc",
            "systemd",
            "intel-microcode",
        ] {
            assert!(reboot_expected(s, std::iter::empty()), "{s}");
        }
        assert!(reboot_expected(
            "something",
            ["linux-image-6.1.0-18-amd64"].into_iter()
        ));
        for s in ["openssl", "curl", "linux-ftpd", "bash"] {
            assert!(!reboot_expected(s, [s].into_iter()), "{s}");
        }
    }
}
