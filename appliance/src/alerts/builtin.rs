//! The rules shipped with the appliance: created enabled on first start,
//! editable (channels, thresholds, enabled) but not deletable.

use std::time::Duration;

use super::model::{Comparison, Condition, Rule, Scope, Severity};

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
