//! `outpost devices` (list) and `outpost device show|revoke ID`.

use anyhow::Context;
use clap::{Args, Subcommand};

use super::table::{ago, fmt_value, print_table};
use crate::api::devices_types::{DeviceDetail, DeviceSummary, RevokeAnswer};
use crate::client::AdminClient;

// No doc comment: clap would take it as the sub-command's help, which the
// `Command::Devices` variant gives.
#[derive(Args, Debug)]
pub struct DevicesArgs {
    #[arg(long)]
    pub json: bool,
}

#[derive(Subcommand, Debug)]
pub enum DeviceCmd {
    /// Show one device (inventory, status, latest metrics).
    Show {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Revoke a device: refuse its certificate from now on and close its session.
    Revoke { id: String },
    /// Restart a systemd unit on the device and print its state after
    /// (a remote command: see `outpost commands`).
    RestartService {
        id: String,
        unit: String,
        #[arg(long, value_parser = humantime::parse_duration)]
        timeout: Option<std::time::Duration>,
    },
    /// Reboot the device (needs --confirm; refused while a package install
    /// runs); waits until it is back with a new boot id unless --no-wait.
    Reboot {
        id: String,
        /// Required: a reboot is never asked for by accident.
        #[arg(long)]
        confirm: bool,
        /// Reboot after this long (rounded up to minutes by shutdown -r).
        #[arg(long, value_parser = humantime::parse_duration)]
        delay: Option<std::time::Duration>,
        /// Print the command id and return at once.
        #[arg(long)]
        no_wait: bool,
    },
}

/// `outpost devices`: a table, or the API's JSON with `--json`.
pub async fn list(args: DevicesArgs, c: AdminClient) -> anyhow::Result<()> {
    if args.json {
        let raw = c.get_raw("/api/v1/devices").await?;
        println!("{}", String::from_utf8_lossy(&raw));
        return Ok(());
    }
    let devices: Vec<DeviceSummary> = c.get("/api/v1/devices").await?;
    print_devices(&devices);
    Ok(())
}

/// Runs one `outpost device` command.
pub async fn run(cmd: DeviceCmd, c: AdminClient) -> anyhow::Result<()> {
    match cmd {
        DeviceCmd::Show { id, json } => {
            let path = format!("/api/v1/devices/{id}");
            if json {
                println!("{}", String::from_utf8_lossy(&c.get_raw(&path).await?));
                return Ok(());
            }
            let d: DeviceDetail = c.get(&path).await?;
            print_device(&d);
            Ok(())
        }
        DeviceCmd::RestartService { id, unit, timeout } => {
            super::commands::restart_service(id, unit, timeout, c).await
        }
        DeviceCmd::Reboot {
            id,
            confirm,
            delay,
            no_wait,
        } => super::commands::reboot(id, delay, confirm, no_wait, c).await,
        DeviceCmd::Revoke { id } => {
            let r: RevokeAnswer = c
                .post(
                    &format!("/api/v1/devices/{id}/revoke"),
                    &serde_json::json!({}),
                )
                .await
                .with_context(|| format!("revoking device {id}"))?;
            println!("{}", r.id);
            Ok(())
        }
    }
}

fn print_devices(devices: &[DeviceSummary]) {
    let rows: Vec<Vec<String>> = devices
        .iter()
        .map(|d| {
            vec![
                d.id.clone(),
                d.hostname.clone(),
                d.tenant.to_string(),
                d.customer.to_string(),
                if d.revoked {
                    "revoked".into()
                } else {
                    d.status.clone()
                },
                ago(d.last_seen_ms),
                d.os.clone(),
                d.agent_version.clone(),
            ]
        })
        .collect();
    print_table(
        &[
            "ID",
            "HOSTNAME",
            "TENANT",
            "CUSTOMER",
            "STATUS",
            "LAST SEEN",
            "OS",
            "AGENT",
        ],
        &rows,
    );
}

fn print_device(d: &DeviceDetail) {
    let s = &d.summary;
    println!("id          {}", s.id);
    println!("hostname    {}", s.hostname);
    println!("tenant      {}  customer {}", s.tenant, s.customer);
    println!(
        "status      {} (since {}){}",
        s.status,
        ago(s.status_since_ms),
        if s.revoked { ", REVOKED" } else { "" }
    );
    println!("last seen   {}", ago(s.last_seen_ms));
    println!("os          {}  kernel {}  arch {}", s.os, s.kernel, s.arch);
    println!("agent       {}", s.agent_version);
    if let Some(inv) = &d.inventory {
        println!("cpu         {} ({} cores)", inv.cpu_model, inv.cpu_cores);
        println!("memory      {} MiB", inv.memory_total_bytes / (1024 * 1024));
    }
    if !d.metrics.is_empty() {
        println!();
        let rows: Vec<Vec<String>> = d
            .metrics
            .iter()
            .map(|m| {
                vec![
                    m.name.clone(),
                    m.label.clone(),
                    fmt_value(m.value),
                    ago(m.ts_ms),
                ]
            })
            .collect();
        print_table(&["METRIC", "LABEL", "VALUE", "AT"], &rows);
    }
}
