//! `outpost commands run|show|list|cancel|bulk|bulk-show|bulk-cancel`:
//! remote commands and bulk runs through the admin API
//! (`/api/v1/commands`, `/api/v1/commands/bulk`).

use std::io::Write;
use std::time::Duration;

use anyhow::Context;
use clap::Subcommand;
use outpost_proto::command::Interpreter;

use super::table::{ago, print_table};
use crate::api::commands::{
    ActionRequest, BulkRequestBody, BulkView, CommandView, RunRequest, ScriptRef,
};
use crate::client::AdminClient;
use crate::commands::bulk::BulkTarget;
use crate::commands::model::CommandState;

#[derive(Subcommand, Debug)]
pub enum CommandsCmd {
    /// Queue a command for a device (pushed at once if it is online) and
    /// print its id; with --wait, print its output and exit with its exit
    /// code.
    Run {
        #[arg(long)]
        device: String,
        /// Kill the command after this long (default 5m).
        #[arg(long, value_parser = humantime::parse_duration)]
        timeout: Option<Duration>,
        /// Give up if the device does not connect within this long (default 24h).
        #[arg(long, value_parser = humantime::parse_duration)]
        expiry: Option<Duration>,
        /// Run as this user (the agent must allow it in allowed_run_as).
        #[arg(long)]
        run_as: Option<String>,
        /// sh (default), bash or python3.
        #[arg(long)]
        interpreter: Option<Interpreter>,
        /// Working directory on the device (default /).
        #[arg(long)]
        cwd: Option<String>,
        /// Environment variable NAME=VALUE (repeatable).
        #[arg(long = "env", value_name = "NAME=VALUE")]
        env: Vec<String>,
        /// Wait for the end, print the output, exit with the command's code.
        #[arg(long)]
        wait: bool,
        /// The command line: one word is taken as it is (`-- 'a; b'`),
        /// several are quoted and joined (`-- ls -l /tmp`).
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Show one command: state, transitions, output.
    Show {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// List commands, newest first.
    List {
        #[arg(long)]
        device: Option<String>,
        /// queued, sent, running, completed, failed, timed_out, cancelled,
        /// expired or interrupted.
        #[arg(long)]
        state: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: usize,
        #[arg(long)]
        json: bool,
    },
    /// Cancel a command: removed if still queued, stopped if running.
    Cancel { id: String },
    /// Run one command (or script) on many devices under one run id and
    /// print the run id; with --wait, print the summary when every device
    /// is finished and exit 0 only if all completed.
    Bulk {
        /// A target device (repeatable).
        #[arg(long = "device", conflicts_with_all = ["tag", "customer", "all"])]
        devices: Vec<String>,
        /// Every device with this tag.
        #[arg(long, conflicts_with_all = ["customer", "all"])]
        tag: Option<String>,
        /// Every device of this customer.
        #[arg(long, conflicts_with = "all")]
        customer: Option<String>,
        /// Every enrolled, non-revoked device.
        #[arg(long)]
        all: bool,
        /// At most this many devices running the command at once (default 50).
        #[arg(long)]
        concurrency: Option<u32>,
        /// Run this script of the library instead of a command line.
        #[arg(long)]
        script: Option<String>,
        /// The script's version (the newest by default).
        #[arg(long, requires = "script")]
        script_version: Option<u32>,
        /// Kill each command after this long (default 5m, or the script's).
        #[arg(long, value_parser = humantime::parse_duration)]
        timeout: Option<Duration>,
        /// Give up on an offline device after this long (default 24h).
        #[arg(long, value_parser = humantime::parse_duration)]
        expiry: Option<Duration>,
        #[arg(long)]
        run_as: Option<String>,
        #[arg(long)]
        interpreter: Option<Interpreter>,
        #[arg(long)]
        cwd: Option<String>,
        #[arg(long = "env", value_name = "NAME=VALUE")]
        env: Vec<String>,
        /// Wait until every device is finished, print the summary.
        #[arg(long)]
        wait: bool,
        /// The command line (as for `run`); with --script, its arguments.
        #[arg(last = true)]
        command: Vec<String>,
    },
    /// Show a bulk run: summary and every device's command.
    BulkShow {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// List bulk runs, newest first, with their summaries.
    BulkList {
        #[arg(long, default_value_t = 50)]
        limit: usize,
        #[arg(long)]
        json: bool,
    },
    /// Cancel a bulk run: queued commands are cancelled, running ones
    /// stopped.
    BulkCancel { id: String },
}

fn parse_env(env: &[String]) -> anyhow::Result<Vec<(String, String)>> {
    env.iter()
        .map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .with_context(|| format!("--env {kv:?}: expected NAME=VALUE"))
        })
        .collect()
}

fn summary_line(v: &BulkView) -> String {
    let s = &v.summary;
    format!(
        "total {} done {} failed {} running {} pending {} cancelled {} expired {}",
        s.total, s.done, s.failed, s.running, s.pending, s.cancelled, s.expired
    )
}

fn print_bulk(v: &BulkView) {
    println!("id:          {}", v.id);
    println!("target:      {}", v.target);
    println!("command:     {}", v.command);
    println!("by:          {}", v.created_by);
    println!("concurrency: {}", v.concurrency);
    if let Some(by) = &v.cancelled_by {
        println!("cancelled:   by {by}");
    }
    println!("summary:     {}", summary_line(v));
    let rows: Vec<Vec<String>> = v
        .devices
        .iter()
        .map(|m| {
            let mut st = m.state.as_str().to_string();
            if let Some(c) = m.exit_code {
                st.push_str(&format!(" ({c})"));
            }
            vec![
                m.device.clone(),
                m.command.clone(),
                st,
                m.reason.clone().unwrap_or_default(),
            ]
        })
        .collect();
    print_table(&["DEVICE", "COMMAND", "STATE", "REASON"], &rows);
}

/// `outpost device restart-service ID UNIT`: restarts a systemd unit on
/// the device, waits, prints the unit's state and exits with systemctl's
/// code.
pub async fn restart_service(
    device: String,
    unit: String,
    timeout: Option<Duration>,
    c: AdminClient,
) -> anyhow::Result<()> {
    let req = RunRequest {
        device: device.clone(),
        command: None,
        action: Some(ActionRequest::RestartService { unit }),
        interpreter: None,
        args: Vec::new(),
        env: Vec::new(),
        cwd: None,
        run_as: None,
        timeout_ms: timeout.map(|d| d.as_millis() as u64),
        expiry_ms: None,
    };
    let v: CommandView = c
        .post("/api/v1/commands", &req)
        .await
        .with_context(|| format!("queueing restart-service for device {device}"))?;
    finish_waiting(&c, &v.id).await
}

/// `outpost device reboot ID --confirm [--delay 1m]`: reboots the device
/// (refused by the agent while a package install runs), waits until it
/// is back with a new boot id (completed) or the deadline passes (failed),
/// prints the command's output and exits 0 only if it came back; with
/// `--no-wait`, prints the command id.
pub async fn reboot(
    device: String,
    delay: Option<Duration>,
    confirm: bool,
    no_wait: bool,
    c: AdminClient,
) -> anyhow::Result<()> {
    if !confirm {
        anyhow::bail!("a reboot needs --confirm");
    }
    let req = RunRequest {
        device: device.clone(),
        command: None,
        action: Some(ActionRequest::Reboot {
            delay_s: 0,
            delay_ms: Some(delay.map(|d| d.as_millis() as u64).unwrap_or(0)),
            confirm,
        }),
        interpreter: None,
        args: Vec::new(),
        env: Vec::new(),
        cwd: None,
        run_as: None,
        timeout_ms: None,
        expiry_ms: None,
    };
    let v: CommandView = c
        .post("/api/v1/commands", &req)
        .await
        .with_context(|| format!("queueing a reboot of device {device}"))?;
    if no_wait {
        println!("{}", v.id);
        return Ok(());
    }
    finish_waiting(&c, &v.id).await
}

/// Polls a command until it ends, prints its output, exits with its code.
pub async fn finish_waiting(c: &AdminClient, id: &str) -> anyhow::Result<()> {
    let path = format!("/api/v1/commands/{id}");
    let mut delay = Duration::from_millis(50);
    let done = loop {
        let v: CommandView = c.get(&path).await?;
        if v.state.is_terminal() {
            break v;
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(1));
    };
    let mut out = std::io::stdout().lock();
    out.write_all(done.output.as_deref().unwrap_or("").as_bytes())?;
    out.flush()?;
    let code = exit_code(&done);
    if done.state != CommandState::Completed {
        eprintln!("command {} {}", done.id, describe(&done));
    }
    if code != 0 {
        std::process::exit(code);
    }
    Ok(())
}

pub async fn run(cmd: CommandsCmd, c: AdminClient) -> anyhow::Result<()> {
    match cmd {
        CommandsCmd::Run {
            device,
            timeout,
            expiry,
            run_as,
            interpreter,
            cwd,
            env,
            wait,
            command,
        } => {
            let env = parse_env(&env)?;
            let req = RunRequest {
                device: device.clone(),
                command: Some(outpost_proto::command::shell_join(&command)),
                action: None,
                interpreter,
                args: Vec::new(),
                env,
                cwd,
                run_as,
                timeout_ms: timeout.map(|d| d.as_millis() as u64),
                expiry_ms: expiry.map(|d| d.as_millis() as u64),
            };
            let v: CommandView = c
                .post("/api/v1/commands", &req)
                .await
                .with_context(|| format!("queueing a command for device {device}"))?;
            if !wait {
                println!("{}", v.id);
                return Ok(());
            }
            finish_waiting(&c, &v.id).await
        }
        CommandsCmd::Show { id, json } => {
            let path = format!("/api/v1/commands/{id}");
            if json {
                println!("{}", String::from_utf8_lossy(&c.get_raw(&path).await?));
                return Ok(());
            }
            let v: CommandView = c.get(&path).await?;
            println!("id:        {}", v.id);
            println!("device:    {}", v.device);
            println!("command:   {}", v.command);
            println!("by:        {}", v.requested_by);
            println!("state:     {}", describe(&v));
            for t in &v.transitions {
                println!("  {:<12} {}", t.state.as_str(), ago(t.at_ms));
            }
            if v.output_truncated {
                println!("output:    {} bytes (truncated)", v.output_bytes);
            }
            println!("---");
            print!("{}", v.output.as_deref().unwrap_or(""));
            Ok(())
        }
        CommandsCmd::List {
            device,
            state,
            limit,
            json,
        } => {
            let mut path = format!("/api/v1/commands?limit={limit}");
            if let Some(d) = device {
                path.push_str(&format!("&device={d}"));
            }
            if let Some(s) = state {
                path.push_str(&format!("&state={s}"));
            }
            if json {
                println!("{}", String::from_utf8_lossy(&c.get_raw(&path).await?));
                return Ok(());
            }
            let rows: Vec<CommandView> = c.get(&path).await?;
            let rows: Vec<Vec<String>> = rows
                .iter()
                .map(|v| {
                    vec![
                        v.id.clone(),
                        v.device.clone(),
                        v.state.as_str().to_string(),
                        v.exit_code.map(|c| c.to_string()).unwrap_or_default(),
                        ago(v.created_ms),
                        v.requested_by.clone(),
                        v.command.chars().take(60).collect(),
                    ]
                })
                .collect();
            print_table(
                &["ID", "DEVICE", "STATE", "EXIT", "CREATED", "BY", "COMMAND"],
                &rows,
            );
            Ok(())
        }
        CommandsCmd::Bulk {
            devices,
            tag,
            customer,
            all,
            concurrency,
            script,
            script_version,
            timeout,
            expiry,
            run_as,
            interpreter,
            cwd,
            env,
            wait,
            command,
        } => {
            let target = match (devices.is_empty(), tag, customer, all) {
                (false, None, None, false) => BulkTarget::Devices(devices),
                (true, Some(t), None, false) => BulkTarget::Tag(t),
                (true, None, Some(c), false) => BulkTarget::Customer(c),
                (true, None, None, true) => BulkTarget::All,
                _ => {
                    anyhow::bail!("give one target: --device ID..., --tag T, --customer C or --all")
                }
            };
            let (line, script, args) = match script {
                Some(name) => (
                    None,
                    Some(ScriptRef {
                        name,
                        version: script_version,
                    }),
                    command,
                ),
                None if command.is_empty() => {
                    anyhow::bail!("give the command after `--` (or --script NAME)")
                }
                None => (
                    Some(outpost_proto::command::shell_join(&command)),
                    None,
                    Vec::new(),
                ),
            };
            let req = BulkRequestBody {
                target,
                command: line,
                script,
                action: None,
                concurrency,
                interpreter,
                args,
                env: parse_env(&env)?,
                cwd,
                run_as,
                timeout_ms: timeout.map(|d| d.as_millis() as u64),
                expiry_ms: expiry.map(|d| d.as_millis() as u64),
            };
            let v: BulkView = c
                .post("/api/v1/commands/bulk", &req)
                .await
                .context("creating the bulk run")?;
            if !wait {
                println!("{}", v.id);
                return Ok(());
            }
            let path = format!("/api/v1/commands/bulk/{}", v.id);
            let mut delay = Duration::from_millis(100);
            let done = loop {
                let v: BulkView = c.get(&path).await?;
                if v.summary.finished {
                    break v;
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            };
            print_bulk(&done);
            if done.summary.done != done.summary.total {
                std::process::exit(1);
            }
            Ok(())
        }
        CommandsCmd::BulkShow { id, json } => {
            let path = format!("/api/v1/commands/bulk/{id}");
            if json {
                println!("{}", String::from_utf8_lossy(&c.get_raw(&path).await?));
                return Ok(());
            }
            let v: BulkView = c.get(&path).await?;
            print_bulk(&v);
            Ok(())
        }
        CommandsCmd::BulkList { limit, json } => {
            let path = format!("/api/v1/commands/bulk?limit={limit}");
            if json {
                println!("{}", String::from_utf8_lossy(&c.get_raw(&path).await?));
                return Ok(());
            }
            let rows: Vec<BulkView> = c.get(&path).await?;
            let rows: Vec<Vec<String>> = rows
                .iter()
                .map(|v| {
                    vec![
                        v.id.clone(),
                        ago(v.created_ms),
                        v.created_by.clone(),
                        v.target.to_string(),
                        summary_line(v),
                        v.command.chars().take(40).collect(),
                    ]
                })
                .collect();
            print_table(
                &["ID", "CREATED", "BY", "TARGET", "SUMMARY", "COMMAND"],
                &rows,
            );
            Ok(())
        }
        CommandsCmd::BulkCancel { id } => {
            let v: BulkView = c
                .post(
                    &format!("/api/v1/commands/bulk/{id}/cancel"),
                    &serde_json::json!({}),
                )
                .await
                .with_context(|| format!("cancelling bulk run {id}"))?;
            println!("{} {}", v.id, summary_line(&v));
            Ok(())
        }
        CommandsCmd::Cancel { id } => {
            let v: CommandView = c
                .post(
                    &format!("/api/v1/commands/{id}/cancel"),
                    &serde_json::json!({}),
                )
                .await
                .with_context(|| format!("cancelling command {id}"))?;
            println!("{} {}", v.id, v.state.as_str());
            Ok(())
        }
    }
}

/// The state in words, with the exit code, signal or reason.
fn describe(v: &CommandView) -> String {
    let mut s = v.state.as_str().to_string();
    if let Some(c) = v.exit_code {
        s.push_str(&format!(" (exit code {c})"));
    }
    if let Some(sig) = v.signal {
        s.push_str(&format!(" (signal {sig})"));
    }
    if let Some(r) = &v.reason {
        s.push_str(&format!(": {r}"));
    }
    s
}

/// `--wait`'s exit code: the command's own; 128+N for a signal; 124 for a
/// timeout (as timeout(1)); 130 for a cancel; 1 otherwise.
pub fn exit_code(v: &CommandView) -> i32 {
    match v.state {
        CommandState::Completed => 0,
        CommandState::TimedOut => 124,
        CommandState::Cancelled => 130,
        _ => match (v.exit_code, v.signal) {
            (Some(c), _) if c != 0 => c,
            (_, Some(s)) => 128 + s,
            _ => 1,
        },
    }
}
