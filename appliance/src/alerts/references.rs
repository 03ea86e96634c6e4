//! Whether what a rule refers to can ever work: its notification channels
//! and escalation policy (and the channels of that policy's steps) must
//! exist, and its metric should be one that agents report.
//!
//! * An unknown channel or escalation policy is an error: the admin API
//!   refuses the rule (400 naming them), since its notifications would
//!   only dead-letter at fire time.
//! * An unknown metric name is only a warning: an agent may report it
//!   later (custom metrics). The API saves the rule and answers with
//!   `warnings`; `outpost alerts rules --check` lists, for every rule,
//!   references that do not resolve and metrics no device reports.
//!
//! Pure functions over what the caller read from the store (the API
//! handlers and [`super::store::reported_series`]); nothing here touches
//! the store or the engine.

use std::collections::{BTreeSet, HashMap, HashSet};

use outpost_proto::metric_names;
use serde::{Deserialize, Serialize};

use super::model::{EscalationPolicy, Rule};

/// Why a rule's references do not resolve (`None`: they all do). Names
/// every unknown channel and the unknown policy.
pub fn unresolved(
    rule: &Rule,
    channels: &BTreeSet<String>,
    policies: &HashMap<String, EscalationPolicy>,
) -> Option<String> {
    let mut problems = Vec::new();
    let unknown: Vec<&str> = unknown_channels(&rule.channels, channels);
    if !unknown.is_empty() {
        problems.push(format!(
            "unknown channel{} {} (create {} with POST /api/v1/channels)",
            plural(unknown.len()),
            unknown.join(", "),
            if unknown.len() == 1 { "it" } else { "them" }
        ));
    }
    if let Some(p) = &rule.escalation_policy {
        match policies.get(p) {
            None => problems.push(format!(
                "unknown escalation policy {p} (create it with POST /api/v1/escalation-policies)"
            )),
            Some(policy) => {
                if let Some(why) = policy_unresolved(policy, channels) {
                    problems.push(format!("escalation policy {p}: {why}"));
                }
            }
        }
    }
    (!problems.is_empty()).then(|| problems.join("; "))
}

/// Why an escalation policy's steps name channels that do not exist.
pub fn policy_unresolved(policy: &EscalationPolicy, channels: &BTreeSet<String>) -> Option<String> {
    let mut named: Vec<String> = policy
        .steps
        .iter()
        .flat_map(|s| s.channels.iter().cloned())
        .collect();
    named.sort();
    named.dedup();
    let unknown = unknown_channels(&named, channels);
    (!unknown.is_empty()).then(|| {
        format!(
            "unknown channel{} {}",
            plural(unknown.len()),
            unknown.join(", ")
        )
    })
}

fn unknown_channels<'a>(named: &'a [String], channels: &BTreeSet<String>) -> Vec<&'a str> {
    let mut out: Vec<&str> = Vec::new();
    for c in named {
        if !channels.contains(c) && !out.contains(&c.as_str()) {
            out.push(c);
        }
    }
    out
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

/// Whether `name` is a metric the agent reports (README § Metric names).
pub fn is_known_metric(name: &str) -> bool {
    metric_names::ALL.contains(&name) || crate::patches::alerts::METRICS.contains(&name)
}

/// The warnings of a rule saved through the API: its metric is neither a
/// known agent metric nor reported by any device (`reported` answers the
/// latter; it is only asked for unknown names).
pub fn metric_warnings(rule: &Rule, reported: impl FnOnce(&str) -> bool) -> Vec<String> {
    let Some(metric) = rule.metric() else {
        return Vec::new();
    };
    if is_known_metric(metric) || reported(metric) {
        return Vec::new();
    }
    vec![format!(
        "metric {metric:?} is not a metric the agent reports and no device has reported it (yet){}; the rule is saved and will evaluate it if a device reports it",
        suggestion(metric)
    )]
}

/// ` (did you mean "cpu"?)` for a name close to a known one.
fn suggestion(name: &str) -> String {
    metric_names::ALL
        .iter()
        .map(|k| (edit_distance(name, k), *k))
        .filter(|(d, _)| *d <= 2)
        .min()
        .map(|(_, k)| format!(" (did you mean {k:?}?)"))
        .unwrap_or_default()
}

/// Levenshtein distance (names are short).
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diag = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let up = row[j + 1];
            row[j + 1] = (diag + usize::from(ca != *cb)).min(up + 1).min(row[j] + 1);
            diag = up;
        }
    }
    row[b.len()]
}

/// The series devices have reported: metric names, and (name, label)
/// pairs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reported {
    pub names: HashSet<String>,
    pub series: HashSet<(String, String)>,
}

impl Reported {
    pub fn add(&mut self, name: &str, label: &str) {
        if !self.names.contains(name) {
            self.names.insert(name.to_string());
        }
        self.series.insert((name.to_string(), label.to_string()));
    }
}

/// The problems of one rule, as `GET /api/v1/alert-rule-check` and
/// `outpost alerts rules --check` show them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleProblems {
    pub rule: String,
    pub name: String,
    pub enabled: bool,
    pub problems: Vec<String>,
}

/// Every rule with a problem (rules without one are left out): references
/// that do not resolve, and a metric (with its label filter) that no
/// device reports.
pub fn check(
    rules: &[Rule],
    channels: &BTreeSet<String>,
    policies: &HashMap<String, EscalationPolicy>,
    reported: &Reported,
) -> Vec<RuleProblems> {
    let mut out: Vec<RuleProblems> = rules
        .iter()
        .filter_map(|r| {
            let mut problems: Vec<String> = unresolved(r, channels, policies).into_iter().collect();
            if let Some(metric) = r.metric() {
                let known = if is_known_metric(metric) {
                    String::new()
                } else {
                    format!(
                        ", and it is not a metric the agent reports{}",
                        suggestion(metric)
                    )
                };
                match r.label_filter() {
                    // A metric every agent reports is not a problem before
                    // the first device reports it (a fresh appliance's
                    // built-in rules); an unknown one is.
                    _ if !reported.names.contains(metric) && !is_known_metric(metric) => {
                        problems.push(format!("no device reports metric {metric:?}{known}"));
                    }
                    _ if !reported.names.contains(metric) => {}
                    Some(label)
                        if !reported
                            .series
                            .contains(&(metric.to_string(), label.to_string())) =>
                    {
                        problems.push(format!(
                            "no device reports metric {metric:?} with label {label:?}"
                        ));
                    }
                    _ => {}
                }
            }
            (!problems.is_empty()).then(|| RuleProblems {
                rule: r.id.clone(),
                name: r.name.clone(),
                enabled: r.enabled,
                problems,
            })
        })
        .collect();
    out.sort_by(|a, b| a.rule.cmp(&b.rule));
    out
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::alerts::lifecycle::tests::{cpu_over_90_for, rule};
    use crate::alerts::model::{Condition, EscalationStep};

    fn set(v: &[&str]) -> BTreeSet<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    fn policy(id: &str, channels: &[&str]) -> (String, EscalationPolicy) {
        (
            id.to_string(),
            EscalationPolicy {
                id: id.into(),
                name: id.into(),
                steps: vec![EscalationStep {
                    after: Duration::ZERO,
                    channels: channels.iter().map(|c| c.to_string()).collect(),
                }],
            },
        )
    }

    fn metric_rule(metric: &str, label: Option<&str>) -> Rule {
        let mut r = rule(cpu_over_90_for(60), &[]);
        if let Condition::Threshold {
            metric: m,
            label: l,
            ..
        } = &mut r.condition
        {
            *m = metric.into();
            *l = label.map(str::to_string);
        }
        r
    }

    #[test]
    fn unknown_channels_and_policies_are_named() {
        let channels = set(&["ops"]);
        let policies = HashMap::from([policy("oncall", &["ops"]), policy("broken", &["gone"])]);
        let ok = rule(cpu_over_90_for(60), &["ops"]);
        assert_eq!(unresolved(&ok, &channels, &policies), None);
        let bad = rule(cpu_over_90_for(60), &["ops", "nope", "nada"]);
        assert_eq!(
            unresolved(&bad, &channels, &policies).unwrap(),
            "unknown channels nope, nada (create them with POST /api/v1/channels)"
        );
        let mut p = rule(cpu_over_90_for(60), &["nope"]);
        p.escalation_policy = Some("missing".into());
        let why = unresolved(&p, &channels, &policies).unwrap();
        assert!(why.contains("unknown channel nope (create it"), "{why}");
        assert!(why.contains("unknown escalation policy missing"), "{why}");
        p.channels.clear();
        p.escalation_policy = Some("oncall".into());
        assert_eq!(unresolved(&p, &channels, &policies), None);
        p.escalation_policy = Some("broken".into());
        assert_eq!(
            unresolved(&p, &channels, &policies).unwrap(),
            "escalation policy broken: unknown channel gone"
        );
    }

    #[test]
    fn an_unknown_metric_is_a_warning_with_a_suggestion_a_known_or_reported_one_is_not() {
        let w = metric_warnings(&metric_rule("cpuu", None), |_| false);
        assert_eq!(w.len(), 1);
        assert!(
            w[0].contains("metric \"cpuu\" is not a metric the agent reports"),
            "{}",
            w[0]
        );
        assert!(w[0].contains("(did you mean \"cpu\"?)"), "{}", w[0]);
        assert!(metric_warnings(&metric_rule("cpu", None), |_| panic!("not asked")).is_empty());
        assert!(metric_warnings(&metric_rule("gpu_temp", None), |m| m == "gpu_temp").is_empty());
        let far = metric_warnings(&metric_rule("gpu_temp", None), |_| false);
        assert!(!far[0].contains("did you mean"), "{}", far[0]);
        assert!(metric_warnings(&rule(Condition::DeviceOffline, &[]), |_| false).is_empty());
    }

    #[test]
    fn the_check_lists_each_rule_with_every_problem() {
        let channels = set(&["ops"]);
        let policies = HashMap::new();
        let mut reported = Reported::default();
        reported.add("cpu", "");
        reported.add("process_count", "nginx");
        let named = |id: &str, mut r: Rule| {
            r.id = id.into();
            r
        };
        let rules = vec![
            named("fine", metric_rule("cpu", None)),
            named("typo", metric_rule("cpuu", None)),
            named("label", metric_rule("process_count", Some("ngnix"))),
            named("unreported", metric_rule("memory", None)),
            named("channel", {
                let mut r = metric_rule("cpu", None);
                r.channels = vec!["nope".into()];
                r.enabled = false;
                r
            }),
            named("offline", rule(Condition::DeviceOffline, &["ops"])),
        ];
        let got = check(&rules, &channels, &policies, &reported);
        let ids: Vec<&str> = got.iter().map(|p| p.rule.as_str()).collect();
        // `memory` is reported by every agent: not a problem before the
        // first device reports it.
        assert_eq!(ids, vec!["channel", "label", "typo"]);
        let by = |id: &str| got.iter().find(|p| p.rule == id).unwrap();
        assert_eq!(
            by("typo").problems,
            vec![
                "no device reports metric \"cpuu\", and it is not a metric the agent reports (did you mean \"cpu\"?)"
            ]
        );
        assert_eq!(
            by("label").problems,
            vec!["no device reports metric \"process_count\" with label \"ngnix\""]
        );
        // A fresh appliance (no device yet) finds nothing wrong with rules
        // on agent metrics.
        let fresh = check(
            &[named(
                "builtin",
                metric_rule("disk_used_percent", Some("/")),
            )],
            &channels,
            &policies,
            &Reported::default(),
        );
        assert!(fresh.is_empty(), "{fresh:?}");
        assert!(!by("channel").enabled);
        assert_eq!(
            by("channel").problems,
            vec!["unknown channel nope (create it with POST /api/v1/channels)"]
        );
    }

    #[test]
    fn edit_distance_counts_single_character_edits() {
        assert_eq!(edit_distance("cpu", "cpu"), 0);
        assert_eq!(edit_distance("cpuu", "cpu"), 1);
        assert_eq!(edit_distance("memroy", "memory"), 2);
        assert_eq!(edit_distance("", "abc"), 3);
    }
}
