//! `outpost alerts [--state S] [--severity S] [--device D] [--json]`,
//! `outpost alerts show ID` and `outpost alerts ack ID`. Formatting only:
//! the alert engine and its types live in [`crate::alerts`].

use clap::{Args, Subcommand};

use super::table::{ago, fmt_value, print_table};
use crate::alerts::model::Alert;
use crate::api::alerts_types::{AckBody, AlertDetail};
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
    /// Acknowledge: stops reminders and escalation.
    Ack {
        id: u64,
        #[arg(long, default_value = "")]
        comment: String,
        /// Who acknowledges (default: $USER).
        #[arg(long, env = "USER")]
        by: Option<String>,
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
