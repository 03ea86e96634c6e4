//! The patch state as alert-engine samples, so that the existing rules
//! (metric + comparison + threshold + duration + scope) express the patch
//! alert conditions:
//!
//! | metric | value per device |
//! |---|---|
//! | `patches_missing_critical_days` | days the oldest missing security patch of severity critical has been missing (0: none) |
//! | `patches_missing_high_days` | the same, severity ≥ high |
//! | `patches_missing_medium_days` | the same, severity ≥ medium |
//! | `patches_missing_any_days` | the same, any security patch |
//! | `patches_reboot_required_days` | days the device has been waiting for a reboot (0: not waiting) |
//! | `patches_scan_age_days` | days since the device's last package scan |
//!
//! e.g. `patches_missing_high_days > 7` is "a missing security patch of
//! severity ≥ high older than 7 days". The worker sends them every few
//! minutes and after every scan; nothing here is stored as a series.

use outpost_patch::assess::{DAY_MS, DeviceAssessment};
use outpost_patch::severity::Severity;
use outpost_proto::messages::MetricValue;

pub const MISSING_CRITICAL_DAYS: &str = "patches_missing_critical_days";
pub const MISSING_HIGH_DAYS: &str = "patches_missing_high_days";
pub const MISSING_MEDIUM_DAYS: &str = "patches_missing_medium_days";
pub const MISSING_ANY_DAYS: &str = "patches_missing_any_days";
pub const REBOOT_REQUIRED_DAYS: &str = "patches_reboot_required_days";
pub const SCAN_AGE_DAYS: &str = "patches_scan_age_days";

/// Every metric name this module sends (alert rules may use them).
pub const METRICS: &[&str] = &[
    MISSING_CRITICAL_DAYS,
    MISSING_HIGH_DAYS,
    MISSING_MEDIUM_DAYS,
    MISSING_ANY_DAYS,
    REBOOT_REQUIRED_DAYS,
    SCAN_AGE_DAYS,
];

fn days(from_ms: u64, now_ms: u64) -> f64 {
    now_ms.saturating_sub(from_ms) as f64 / DAY_MS as f64
}

/// The values of one device at `now_ms`. `reboot_since_ms`: when the
/// device was first seen waiting for a reboot (`None`: not waiting).
pub fn device_values(
    a: &DeviceAssessment,
    reboot_since_ms: Option<u64>,
    now_ms: u64,
) -> Vec<MetricValue> {
    let oldest = |min: Option<Severity>| -> f64 {
        a.patches
            .iter()
            .filter(|p| p.is_security())
            .filter(|p| min.is_none_or(|m| p.effective_severity().is_some_and(|s| s >= m)))
            .map(|p| days(p.first_seen_ms, now_ms))
            .fold(0.0, f64::max)
    };
    let v = |name: &str, value: f64| MetricValue {
        name: name.to_string(),
        label: String::new(),
        value,
    };
    vec![
        v(MISSING_CRITICAL_DAYS, oldest(Some(Severity::Critical))),
        v(MISSING_HIGH_DAYS, oldest(Some(Severity::High))),
        v(MISSING_MEDIUM_DAYS, oldest(Some(Severity::Medium))),
        v(MISSING_ANY_DAYS, oldest(None)),
        v(
            REBOOT_REQUIRED_DAYS,
            match (a.reboot_required, reboot_since_ms) {
                (true, Some(t)) => days(t, now_ms),
                (true, None) => days(a.scanned_at_ms, now_ms),
                _ => 0.0,
            },
        ),
        v(SCAN_AGE_DAYS, days(a.scanned_at_ms, now_ms)),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alerts::builtin::builtin_patch_rules;
    use crate::alerts::model::{Condition, Rule};

    /// Whether `rule` (a threshold on one of these values) holds for `vs`.
    fn fires(rule: &Rule, vs: &[MetricValue]) -> bool {
        let Condition::Threshold {
            metric,
            comparison,
            threshold,
            ..
        } = &rule.condition
        else {
            panic!("{rule:?}");
        };
        comparison.holds(value(vs, metric), *threshold)
    }

    /// The shipped patch rules against the values of one device, on an
    /// explicit clock: a high security patch first seen at day 1 fires the
    /// overdue rule after day 15, not at day 14; a reboot pending since day
    /// 2 fires after day 9; a scan taken at day 0 is stale after day 3.
    #[test]
    fn the_builtin_patch_rules_fire_after_their_days_and_not_before() {
        let mut s = Scan::new_dpkg(
            0,
            parse_os_release("ID=debian\nVERSION_ID=\"12\"\nVERSION_CODENAME=bookworm\n"),
        );
        s.dpkg = parse_dpkg_query("ii \tlibssl3\tamd64\t3.0.11-1\topenssl\t3.0.11-1\n").packages;
        s.upgrades.push(AptUpgrade {
            name: "libssl3".into(),
            arch: Some("amd64".into()),
            from: Some(DebVersion::parse("3.0.11-1").unwrap()),
            to: DebVersion::parse("3.0.11-2").unwrap(),
            origins: vec!["Debian-Security:12/stable-security".into()],
            security: true,
            size_bytes: None,
        });
        s.reboot.required = true;
        s.normalize();
        let catalog = outpost_patch::catalog::Catalog::new();
        let mut a = assess_device(&s, &catalog, &Policy::default(), None, DAY_MS);
        a.patches[0].severity = Some(Severity::High);
        let rules = builtin_patch_rules();
        let rule = |id: &str| rules.iter().find(|r| r.id == id).unwrap();
        assert!(
            rules.iter().all(|r| r.enabled
                && r.builtin
                && r.metric().is_some_and(|m| METRICS.contains(&m)))
        );
        let at = |day: u64| device_values(&a, Some(2 * DAY_MS), day * DAY_MS);
        let overdue = rule("builtin-patch-high-overdue");
        assert!(!fires(overdue, &at(15)), "14 days: not yet");
        assert!(fires(overdue, &at(16)), "15 days");
        let reboot = rule("builtin-patch-reboot-pending");
        assert!(!fires(reboot, &at(9)));
        assert!(fires(reboot, &at(10)));
        let stale = rule("builtin-patch-scan-stale");
        assert!(!fires(stale, &at(3)));
        assert!(fires(stale, &at(4)));
        // A medium patch never fires the high rule.
        a.patches[0].severity = Some(Severity::Medium);
        assert!(!fires(overdue, &device_values(&a, None, 100 * DAY_MS)));
    }
    use outpost_patch::assess::{Policy, assess_device};
    use outpost_patch::scan::{AptUpgrade, Scan, parse_dpkg_query, parse_os_release};
    use outpost_patch::version::DebVersion;

    fn value(vs: &[MetricValue], name: &str) -> f64 {
        vs.iter().find(|v| v.name == name).unwrap().value
    }

    #[test]
    fn the_oldest_missing_security_patch_reboot_wait_and_scan_age_are_days_at_now() {
        let mut s = Scan::new_dpkg(
            0,
            parse_os_release("ID=debian\nVERSION_ID=\"12\"\nVERSION_CODENAME=bookworm\n"),
        );
        s.dpkg = parse_dpkg_query("ii \tlibssl3\tamd64\t3.0.11-1\topenssl\t3.0.11-1\n").packages;
        s.upgrades.push(AptUpgrade {
            name: "libssl3".into(),
            arch: Some("amd64".into()),
            from: Some(DebVersion::parse("3.0.11-1").unwrap()),
            to: DebVersion::parse("3.0.11-2").unwrap(),
            origins: vec!["Debian-Security:12/stable-security".into()],
            security: true,
            size_bytes: None,
        });
        s.reboot.required = true;
        s.normalize();
        let catalog = outpost_patch::catalog::Catalog::new();
        // First seen at day 1, scanned at day 0, evaluated at day 4.
        let a = assess_device(&s, &catalog, &Policy::default(), None, DAY_MS);
        let now = 4 * DAY_MS;
        let vs = device_values(&a, Some(2 * DAY_MS), now);
        assert_eq!(value(&vs, MISSING_ANY_DAYS), 3.0);
        // A security-pocket update without known CVEs is `unknown`: below medium.
        assert_eq!(value(&vs, MISSING_MEDIUM_DAYS), 0.0);
        assert_eq!(value(&vs, MISSING_HIGH_DAYS), 0.0);
        assert_eq!(value(&vs, REBOOT_REQUIRED_DAYS), 2.0);
        assert_eq!(value(&vs, SCAN_AGE_DAYS), 4.0);
        let mut a2 = a.clone();
        a2.reboot_required = false;
        a2.patches.clear();
        let vs = device_values(&a2, None, now);
        assert_eq!(value(&vs, REBOOT_REQUIRED_DAYS), 0.0);
        assert_eq!(value(&vs, MISSING_ANY_DAYS), 0.0);
    }
}
