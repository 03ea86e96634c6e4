//! The rules shipped with the appliance: created enabled on first start
//! (a rule added by an upgrade on the first start after it), editable
//! (channels, thresholds, enabled) but not deletable.
//!
//! The patch rules ([`builtin_patch_rules`]) read the values the patch
//! subsystem sends per device (`crate::patches::alerts`, in days) and are
//! shipped **enabled**, without channels (like every built-in rule: they
//! show in the console and the API, and notify no one until a channel is
//! set). Days count from when the site first saw the patch missing (or
//! the reboot pending), so a site joining with an old fleet does not fire
//! on day one. Defaults: a security patch of severity ≥ high missing for
//! more than 14 days, a reboot pending for more than 7 days, no package
//! scan for more than 3 days (the agent scans daily).

use std::time::Duration;

use super::model::{Comparison, Condition, Rule, Scope, Severity};

/// Patch values arrive every few minutes (and after every scan): an open
/// patch alert closes `stale` only after this much silence.
pub const PATCH_STALE_AFTER: Duration = Duration::from_secs(30 * 60);

/// The built-in patch rules (see the module docs).
pub fn builtin_patch_rules() -> Vec<Rule> {
    use crate::patches::alerts::{MISSING_HIGH_DAYS, REBOOT_REQUIRED_DAYS, SCAN_AGE_DAYS};
    let days = |id: &str, name: &str, metric: &str, threshold: f64| Rule {
        id: id.into(),
        name: name.into(),
        condition: Condition::Threshold {
            metric: metric.into(),
            label: None,
            comparison: Comparison::Gt,
            threshold,
            for_: Duration::ZERO,
            keep_firing_for: Duration::ZERO,
            stale_after: Some(PATCH_STALE_AFTER),
        },
        severity: Severity::Warning,
        scope: Scope::All,
        enabled: true,
        channels: Vec::new(),
        escalation_policy: None,
        renotify_interval: Duration::ZERO,
        builtin: true,
    };
    vec![
        days(
            "builtin-patch-high-overdue",
            "Security patch of severity high or critical missing for more than 14 days",
            MISSING_HIGH_DAYS,
            14.0,
        ),
        days(
            "builtin-patch-reboot-pending",
            "Reboot pending for more than 7 days",
            REBOOT_REQUIRED_DAYS,
            7.0,
        ),
        days(
            "builtin-patch-scan-stale",
            "No package scan for more than 3 days",
            SCAN_AGE_DAYS,
            3.0,
        ),
    ]
}

/// The built-in rules, as created on first start.
pub fn builtin_rules() -> Vec<Rule> {
    let threshold = |metric: &str, t: f64, for_s: u64| Condition::Threshold {
        metric: metric.into(),
        label: None,
        comparison: Comparison::Gt,
        threshold: t,
        for_: Duration::from_secs(for_s),
        keep_firing_for: Duration::ZERO,
        stale_after: None,
    };
    let rule = |id: &str, name: &str, condition: Condition, severity: Severity| Rule {
        id: id.into(),
        name: name.into(),
        condition,
        severity,
        scope: Scope::All,
        enabled: true,
        channels: Vec::new(),
        escalation_policy: None,
        renotify_interval: Duration::ZERO,
        builtin: true,
    };
    vec![
        rule(
            "builtin-device-offline",
            "Device offline",
            Condition::DeviceOffline,
            Severity::Critical,
        ),
        rule(
            "builtin-disk-full",
            "Disk over 90% for 5 minutes",
            threshold("disk_used_percent", 90.0, 300),
            Severity::Warning,
        ),
        rule(
            "builtin-memory-high",
            "Memory over 95% for 10 minutes",
            threshold("memory", 95.0, 600),
            Severity::Warning,
        ),
        rule(
            "builtin-cpu-high",
            "CPU over 95% for 15 minutes",
            threshold("cpu", 95.0, 900),
            Severity::Warning,
        ),
        // Raised by the deployment orchestrator on the devices whose
        // failures failed a stage's gate (label: the deployment id).
        rule(
            "builtin-deploy-gate",
            "Patch deployment paused: stage gate failed",
            threshold("deploy_gate_failed", 0.0, 0),
            Severity::Warning,
        ),
    ]
}
