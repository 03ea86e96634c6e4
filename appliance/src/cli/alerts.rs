//! `outpost alerts [--state S] [--severity S] [--device D] [--json]`,
//! `outpost alerts show ID`, `outpost alerts ack ID`, `outpost alerts
//! rules [--check] [--json]`, `outpost alerts dead-letters [--json]` and
//! `outpost alerts resend (ID... | --all)`. Formatting only: the alert engine and its
//! types live in [`crate::alerts`], the rule check in
//! [`crate::alerts::references`] (run by the appliance).

use clap::{Args, Subcommand};

use super::table::{ago, fmt_value, print_table};
use crate::alerts::model::{Alert, Condition, Notification, Rule};
use crate::api::alerts_types::{AckBody, AlertDetail, ResendBody, Resent, RuleProblems};
use crate::client::AdminClient;

// No doc comment: clap would take it as the sub-command's help, which the
// `Command::Alerts` variant gives.
#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct AlertsArgs {
    #[command(subcommand)]
    pub cmd: Option<AlertsCmd>,
    #[arg(long)]
    pub json: bool,
    /// pending, firing, resolved, cleared, open (default), or all.
    #[arg(long, default_value = "open")]
    pub state: String,
    #[arg(long)]
    pub severity: Option<String>,
    #[arg(long)]
    pub device: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum AlertsCmd {
    /// One alert with its transitions.
    Show {
        id: u64,
        #[arg(long)]
        json: bool,
    },
    /// Alert rules; `--check` lists references that do not resolve and
    /// metrics no device reports (exit code 1 if any).
    Rules {
        /// Check every rule instead of listing them.
        #[arg(long)]
        check: bool,
        #[arg(long)]
        json: bool,
    },
    /// Acknowledge (again: keeps the first acknowledgement; a new comment
    /// replaces the comment): stops reminders and escalation.
    Ack {
        id: u64,
        #[arg(long, default_value = "")]
        comment: String,
        /// Who acknowledges (default: $USER).
        #[arg(long, env = "USER")]
        by: Option<String>,
    },
    /// Notifications that failed for the whole retry period
    /// (`notify_retry_for`).
    DeadLetters {
        #[arg(long)]
        json: bool,
    },
    /// Queue dead letters again (admin), each for a new retry period,
    /// delivered in their original order.
    Resend {
        /// Dead letters' ids (see `outpost alerts dead-letters`).
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        ids: Vec<u64>,
        /// Every dead letter.
        #[arg(long)]
        all: bool,
    },
}

/// Runs one `outpost alerts` command.
pub async fn run(a: AlertsArgs, c: AdminClient) -> anyhow::Result<()> {
    match a.cmd {
        Some(AlertsCmd::Show { id, json }) => {
            let path = format!("/api/v1/alerts/{id}");
            if json {
                println!("{}", String::from_utf8_lossy(&c.get_raw(&path).await?));
                return Ok(());
            }
            let d: AlertDetail = c.get(&path).await?;
            let x = &d.alert;
            println!("alert       {} ({})", x.id, x.state.as_str());
            println!(
                "rule        {} ({}), {}",
                x.rule_name,
                x.rule_id,
                x.severity.as_str()
            );
            println!("device      {} ({})", x.hostname, x.device);
            let label = if x.label.is_empty() {
                String::new()
            } else {
                format!(" [{}]", x.label)
            };
            println!("metric      {}{label}", x.metric);
            if let Some(v) = x.value {
                println!("value       {}", fmt_value(v));
            }
            if let Some(by) = &x.acknowledged_by {
                println!(
                    "acked by    {by}: {}",
                    x.ack_comment.clone().unwrap_or_default()
                );
            }
            if let Some(w) = &x.silenced_by {
                println!("silenced by {w}");
            }
            println!();
            let rows: Vec<Vec<String>> = d
                .events
                .iter()
                .map(|e| {
                    vec![
                        ago(e.at_ms),
                        e.event.to_string(),
                        e.value.map(fmt_value).unwrap_or_default(),
                        e.detail.clone(),
                    ]
                })
                .collect();
            print_table(&["WHEN", "EVENT", "VALUE", "DETAIL"], &rows);
            Ok(())
        }
        Some(AlertsCmd::Rules { check: false, json }) => {
            let path = "/api/v1/alert-rules";
            if json {
                println!("{}", String::from_utf8_lossy(&c.get_raw(path).await?));
                return Ok(());
            }
            let rules: Vec<Rule> = c.get(path).await?;
            print_table(
                &["ID", "ENABLED", "SEVERITY", "CONDITION", "NOTIFY", "NAME"],
                &rule_rows(&rules),
            );
            Ok(())
        }
        Some(AlertsCmd::Rules { check: true, json }) => {
            let problems: Vec<RuleProblems> = c.get("/api/v1/alert-rule-check").await?;
            if json {
                println!("{}", serde_json::to_string(&problems)?);
            } else if problems.is_empty() {
                println!("every rule checks out");
            } else {
                print_table(&["RULE", "ENABLED", "PROBLEM"], &problem_rows(&problems));
            }
            if !problems.is_empty() {
                anyhow::bail!(
                    "{} rule{} with problems",
                    problems.len(),
                    if problems.len() == 1 { "" } else { "s" }
                );
            }
            Ok(())
        }
        Some(AlertsCmd::Ack { id, comment, by }) => {
            let x: Alert = c
                .post(
                    &format!("/api/v1/alerts/{id}/ack"),
                    &AckBody { comment, by },
                )
                .await?;
            println!("{}", x.id);
            Ok(())
        }
        Some(AlertsCmd::DeadLetters { json }) => {
            let path = "/api/v1/notifications/dead-letters";
            if json {
                println!("{}", String::from_utf8_lossy(&c.get_raw(path).await?));
                return Ok(());
            }
            let dead: Vec<Notification> = c.get(path).await?;
            print_table(
                &[
                    "ID",
                    "ALERT",
                    "EVENT",
                    "CHANNEL",
                    "CREATED",
                    "ATTEMPTS",
                    "LAST ERROR",
                ],
                &dead_letter_rows(&dead),
            );
            Ok(())
        }
        Some(AlertsCmd::Resend { ids, all }) => {
            let r: Resent = c
                .post(
                    "/api/v1/notifications/dead-letters/resend",
                    &ResendBody { ids, all },
                )
                .await?;
            println!(
                "re-sent {}{}",
                r.resent.len(),
                if r.resent.is_empty() {
                    String::new()
                } else {
                    format!(
                        ": {}",
                        r.resent
                            .iter()
                            .map(u64::to_string)
                            .collect::<Vec<_>>()
                            .join(" ")
                    )
                }
            );
            for s in &r.skipped {
                println!("skipped {}: {}", s.id, s.reason);
            }
            if !r.not_found.is_empty() {
                anyhow::bail!(
                    "not dead letters: {}",
                    r.not_found
                        .iter()
                        .map(u64::to_string)
                        .collect::<Vec<_>>()
                        .join(" ")
                );
            }
            Ok(())
        }
        None => {
            let mut path = String::from("/api/v1/alerts?limit=1000");
            if a.state != "all" {
                path.push_str(&format!("&state={}", a.state));
            }
            if let Some(s) = &a.severity {
                path.push_str(&format!("&severity={s}"));
            }
            if let Some(d) = &a.device {
                path.push_str(&format!("&device={d}"));
            }
            if a.json {
                println!("{}", String::from_utf8_lossy(&c.get_raw(&path).await?));
                return Ok(());
            }
            let alerts: Vec<Alert> = c.get(&path).await?;
            let rows: Vec<Vec<String>> = alerts
                .iter()
                .map(|x| {
                    vec![
                        x.id.to_string(),
                        x.state.as_str().to_string(),
                        x.severity.as_str().to_string(),
                        x.rule_name.clone(),
                        x.hostname.clone(),
                        x.label.clone(),
                        x.value.map(fmt_value).unwrap_or_default(),
                        ago(x.fired_ms.unwrap_or(x.started_ms)),
                        match (&x.acknowledged_by, &x.silenced_by) {
                            (Some(b), _) => format!("acked by {b}"),
                            (None, Some(w)) => format!("silenced ({w})"),
                            _ => String::new(),
                        },
                    ]
                })
                .collect();
            print_table(
                &[
                    "ID", "STATE", "SEVERITY", "RULE", "HOST", "LABEL", "VALUE", "SINCE", "NOTE",
                ],
                &rows,
            );
            Ok(())
        }
    }
}

/// One line per dead letter.
fn dead_letter_rows(dead: &[Notification]) -> Vec<Vec<String>> {
    dead.iter()
        .map(|n| {
            vec![
                n.id.to_string(),
                n.alert.id.to_string(),
                n.event.as_str().to_string(),
                n.channel_id.clone(),
                ago(n.created_ms),
                n.attempts.to_string(),
                n.last_error
                    .as_deref()
                    .unwrap_or("")
                    .chars()
                    .take(120)
                    .collect(),
            ]
        })
        .collect()
}

/// One line per rule: id, enabled, severity, condition, who is notified, name.
fn rule_rows(rules: &[Rule]) -> Vec<Vec<String>> {
    rules
        .iter()
        .map(|r| {
            vec![
                r.id.clone(),
                if r.enabled { "yes" } else { "no" }.to_string(),
                r.severity.as_str().to_string(),
                condition(&r.condition),
                match &r.escalation_policy {
                    Some(p) => format!("policy {p}"),
                    None if r.channels.is_empty() => "-".to_string(),
                    None => r.channels.join(","),
                },
                r.name.clone(),
            ]
        })
        .collect()
}

/// `cpu > 95 for 15m`, `device offline`, `no cpu for 5m`.
fn condition(c: &Condition) -> String {
    let series = |metric: &str, label: &Option<String>| match label {
        Some(l) => format!("{metric}[{l}]"),
        None => metric.to_string(),
    };
    match c {
        Condition::Threshold {
            metric,
            label,
            comparison,
            threshold,
            for_,
            ..
        } => format!(
            "{} {} {}{}",
            series(metric, label),
            comparison.symbol(),
            fmt_value(*threshold),
            if for_.is_zero() {
                String::new()
            } else {
                format!(" for {}", humantime::format_duration(*for_))
            }
        ),
        Condition::DeviceOffline => "device offline".to_string(),
        Condition::NoData {
            metric,
            label,
            for_,
        } => format!(
            "no {} for {}",
            series(metric, label),
            humantime::format_duration(*for_)
        ),
    }
}

/// One line per problem: rule id, enabled, problem.
fn problem_rows(problems: &[RuleProblems]) -> Vec<Vec<String>> {
    problems
        .iter()
        .flat_map(|p| {
            p.problems.iter().map(|why| {
                vec![
                    p.rule.clone(),
                    if p.enabled { "yes" } else { "no" }.to_string(),
                    why.clone(),
                ]
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alerts::builtin::builtin_rules;
    use crate::cli::table::format_table;

    #[test]
    fn rules_are_listed_one_line_each_with_their_condition() {
        let mut rules = builtin_rules();
        rules[1].channels = vec!["ops".into(), "mail".into()];
        rules[2].escalation_policy = Some("oncall".into());
        rules[3].enabled = false;
        let out = format_table(
            &["ID", "ENABLED", "SEVERITY", "CONDITION", "NOTIFY", "NAME"],
            &rule_rows(&rules),
        );
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 6, "{out}");
        assert!(lines[1].starts_with("builtin-device-offline  yes"), "{out}");
        assert!(lines[1].contains("device offline"), "{out}");
        assert!(lines[2].contains("disk_used_percent > 90 for 5m"), "{out}");
        assert!(lines[2].contains("ops,mail"), "{out}");
        assert!(lines[3].contains("policy oncall"), "{out}");
        assert!(lines[4].contains("builtin-cpu-high        no"), "{out}");
    }

    #[test]
    fn each_problem_of_each_rule_is_one_line() {
        let p = vec![RuleProblems {
            rule: "cpu".into(),
            name: "cpu".into(),
            enabled: true,
            problems: vec!["a".into(), "b".into()],
        }];
        assert_eq!(
            problem_rows(&p),
            vec![
                vec!["cpu".to_string(), "yes".into(), "a".into()],
                vec!["cpu".to_string(), "yes".into(), "b".into()]
            ]
        );
    }
}
