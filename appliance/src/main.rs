//! `outpost`: the site appliance binary and its admin CLI.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use outpost_appliance::api::devices_types::{DeviceDetail, DeviceSummary, RevokeAnswer};
use outpost_appliance::api::tokens_types::{CreateToken, TokenCreated};
use outpost_appliance::api::uplink_types::{JoinRequest, UplinkStatus};
use outpost_appliance::client::AdminClient;
use outpost_appliance::config::Config;
use outpost_appliance::site::{self, DataDir};
use outpost_storage::Durability;
use tokio_util::sync::CancellationToken;

#[derive(Parser, Debug)]
#[command(
    name = "outpost",
    version,
    about = "Outpost site appliance: ingest, alerts, patches, admin"
)]
struct Cli {
    /// Data directory (CA, admin token, database).
    #[arg(
        long,
        global = true,
        env = "OUTPOST_DATA",
        default_value = "/var/lib/outpost"
    )]
    data: PathBuf,
    /// Admin API base URL (default: read DATA/admin.addr).
    #[arg(long, global = true, env = "OUTPOST_API")]
    api: Option<String>,
    /// Admin API token (default: read DATA/admin.token).
    #[arg(long, global = true, env = "OUTPOST_ADMIN_TOKEN")]
    token: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the appliance.
    Serve(ServeArgs),
    /// Print the site CA fingerprint (sha256:HEX) that installers pin.
    CaFingerprint,
    /// Enrollment tokens.
    #[command(subcommand)]
    Token(TokenCmd),
    /// List devices.
    Devices {
        #[arg(long)]
        json: bool,
    },
    /// One device.
    #[command(subcommand)]
    Device(DeviceCmd),
    /// LAN patch cache: stats, prefetch, verify, pins.
    #[command(subcommand)]
    Cache(outpost_appliance::cache::cli::CacheCmd),
    /// List alerts (default: open ones), show or acknowledge one.
    Alerts(AlertsArgs),
    /// Call the admin API: `outpost api GET /api/v1/alert-rules`,
    /// `outpost api POST /api/v1/channels --data @channel.json`.
    Api {
        /// GET, POST, PUT or DELETE.
        method: String,
        /// Path under the API, e.g. /api/v1/alerts.
        path: String,
        /// JSON body, or @FILE to read it from a file. (Not `--data`: that
        /// global flag names the data directory.)
        #[arg(long, short = 'b')]
        body: Option<String>,
    },
    /// Sync to outpost-central.
    #[command(subcommand)]
    Uplink(UplinkCmd),
}

#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
struct AlertsArgs {
    #[command(subcommand)]
    cmd: Option<AlertsCmd>,
    #[arg(long)]
    json: bool,
    /// pending, firing, resolved, cleared, open (default), or all.
    #[arg(long, default_value = "open")]
    state: String,
    #[arg(long)]
    severity: Option<String>,
    #[arg(long)]
    device: Option<String>,
}

#[derive(Subcommand, Debug)]
enum AlertsCmd {
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

#[derive(Subcommand, Debug)]
enum UplinkCmd {
    /// Join a central with the token and fingerprint printed by
    /// `outpost-central site add`; the running appliance starts syncing.
    Join {
        /// HOST:PORT of central's QUIC listener.
        #[arg(long)]
        central: String,
        /// The one-time site token (`--token` is accepted here too; the
        /// admin API token then comes from DATA/admin.token or
        /// OUTPOST_ADMIN_TOKEN).
        #[arg(long = "join-token")]
        join_token: String,
        #[arg(long)]
        ca_fingerprint: String,
        /// How often a batch is compacted.
        #[arg(long, default_value = "60s")]
        interval: String,
    },
    /// Link state, last acknowledged sequence, backlog.
    Status {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args, Debug)]
struct ServeArgs {
    /// TOML configuration file (default: DATA/outpost.toml if present).
    #[arg(long)]
    config: Option<PathBuf>,
    /// QUIC listener for agents [default: 0.0.0.0:4433].
    #[arg(long)]
    quic_listen: Option<SocketAddr>,
    /// Admin API listener [default: 127.0.0.1:8080].
    #[arg(long)]
    admin_listen: Option<SocketAddr>,
    /// LAN patch cache listener [default: 0.0.0.0:3142].
    #[arg(long)]
    cache_listen: Option<SocketAddr>,
    /// `sync` (default) or `buffered`.
    #[arg(long, value_parser = parse_durability)]
    durability: Option<Durability>,
    /// Grace beyond two missed heartbeats before a device is offline [default: 10s].
    #[arg(long, value_parser = humantime::parse_duration)]
    offline_grace: Option<Duration>,
}

fn parse_durability(s: &str) -> Result<Durability, String> {
    match s {
        "sync" => Ok(Durability::Sync),
        "buffered" => Ok(Durability::Buffered),
        _ => Err(format!(
            "durability must be `sync` or `buffered`, not {s:?}"
        )),
    }
}

#[derive(Subcommand, Debug)]
enum TokenCmd {
    /// Create an enrollment token; prints the token alone.
    Create {
        #[arg(long)]
        tenant: String,
        #[arg(long, default_value = "")]
        customer: String,
        /// Lifetime, e.g. 24h.
        #[arg(long, default_value = "24h")]
        ttl: String,
        /// How many devices may enroll with it.
        #[arg(long, default_value_t = 1)]
        uses: u32,
    },
}

#[derive(Subcommand, Debug)]
enum DeviceCmd {
    /// Show one device (inventory, status, latest metrics).
    Show {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Revoke a device: refuse its certificate from now on and close its session.
    Revoke { id: String },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("OUTPOST_LOG")
                .unwrap_or_else(|_| "info,quinn=warn,rustls=warn".into()),
        )
        .init();
    let cli = Cli::parse_from(uplink_join_args(std::env::args_os().collect()));
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(real_main(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// In `outpost uplink join`, `--token` is the site token of the documented
/// interface, not the global admin API token: rename it before parsing.
fn uplink_join_args(mut args: Vec<std::ffi::OsString>) -> Vec<std::ffi::OsString> {
    let pos = |w: &str, from: usize| {
        args.iter()
            .skip(from)
            .position(|a| a == w)
            .map(|p| p + from)
    };
    let Some(u) = pos("uplink", 1) else {
        return args;
    };
    let Some(j) = pos("join", u + 1).filter(|j| *j == u + 1) else {
        return args;
    };
    for a in args.iter_mut().skip(j + 1) {
        if a == "--token" {
            *a = "--join-token".into();
        } else if let Some(v) = a.to_str().and_then(|s| s.strip_prefix("--token=")) {
            *a = format!("--join-token={v}").into();
        }
    }
    args
}

async fn real_main(cli: Cli) -> anyhow::Result<()> {
    let data = DataDir(cli.data.clone());
    let client = || AdminClient::locate(&data, cli.api.clone(), cli.token.clone());
    match cli.command {
        Command::Serve(args) => {
            let mut cfg = match &args.config {
                Some(p) => Config::load(p)?,
                None if data.config().exists() => Config::load(&data.config())?,
                None => Config::default(),
            };
            if let Some(v) = args.quic_listen {
                cfg.quic_listen = v;
            }
            if let Some(v) = args.admin_listen {
                cfg.admin_listen = v;
            }
            if let Some(v) = args.cache_listen {
                cfg.cache_listen = v;
            }
            if let Some(v) = args.durability {
                cfg.storage.durability = v;
            }
            if let Some(v) = args.offline_grace {
                cfg.offline_grace = v;
            }
            let shutdown = CancellationToken::new();
            let s = shutdown.clone();
            tokio::spawn(async move {
                wait_for_signal().await;
                s.cancel();
            });
            outpost_appliance::serve::run(data, cfg, shutdown).await
        }
        Command::Cache(cmd) => outpost_appliance::cache::cli::run(cmd, client()?).await,
        Command::CaFingerprint => {
            println!("{}", site::ca_fingerprint(&data)?);
            Ok(())
        }
        Command::Token(TokenCmd::Create {
            tenant,
            customer,
            ttl,
            uses,
        }) => {
            let created: TokenCreated = client()?
                .post(
                    "/api/v1/tokens",
                    &CreateToken {
                        tenant,
                        customer,
                        ttl: Some(ttl),
                        uses: Some(uses),
                    },
                )
                .await?;
            println!("{}", created.token);
            Ok(())
        }
        Command::Devices { json } => {
            let c = client()?;
            if json {
                let raw = c.get_raw("/api/v1/devices").await?;
                println!("{}", String::from_utf8_lossy(&raw));
                return Ok(());
            }
            let devices: Vec<DeviceSummary> = c.get("/api/v1/devices").await?;
            print_devices(&devices);
            Ok(())
        }
        Command::Device(DeviceCmd::Show { id, json }) => {
            let c = client()?;
            let path = format!("/api/v1/devices/{id}");
            if json {
                println!("{}", String::from_utf8_lossy(&c.get_raw(&path).await?));
                return Ok(());
            }
            let d: DeviceDetail = c.get(&path).await?;
            print_device(&d);
            Ok(())
        }
        Command::Alerts(a) => alerts_cmd(client()?, a).await,
        Command::Api { method, path, body } => {
            let body = match body {
                Some(d) if d.starts_with('@') => {
                    Some(std::fs::read(&d[1..]).with_context(|| format!("reading {}", &d[1..]))?)
                }
                Some(d) => Some(d.into_bytes()),
                None => None,
            };
            let out = client()?
                .request(&method.to_uppercase(), &path, body)
                .await?;
            println!("{}", String::from_utf8_lossy(&out));
            Ok(())
        }
        Command::Uplink(UplinkCmd::Join {
            central,
            join_token,
            ca_fingerprint,
            interval,
        }) => {
            let s: UplinkStatus = client()?
                .post(
                    "/api/v1/uplink/join",
                    &JoinRequest {
                        central,
                        token: join_token,
                        ca_fingerprint,
                        interval: Some(interval),
                    },
                )
                .await
                .context("joining central")?;
            println!("{}", s.site_id.unwrap_or_default());
            Ok(())
        }
        Command::Uplink(UplinkCmd::Status { json }) => {
            let c = client()?;
            if json {
                let raw = c.get_raw("/api/v1/uplink/status").await?;
                println!("{}", String::from_utf8_lossy(&raw));
                return Ok(());
            }
            let s: UplinkStatus = c.get("/api/v1/uplink/status").await?;
            let opt = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
            println!("joined          {}", s.joined);
            println!("link            {}", s.link.as_str());
            println!("central         {}", opt(&s.central));
            println!(
                "site            {} ({})",
                opt(&s.site_id),
                opt(&s.site_name)
            );
            println!(
                "tenant          {} / customer {}",
                opt(&s.tenant),
                opt(&s.customer)
            );
            println!("interval        {}ms", s.interval_ms);
            println!("last acked seq  {}", s.last_acked_seq);
            println!("next seq        {}", s.next_seq);
            println!(
                "backlog         {} batches, {} bytes",
                s.backlog_batches, s.backlog_bytes
            );
            println!("dropped rollups {}", s.dropped_rollups_total);
            if let Some(e) = &s.last_error {
                println!("last error      {e}");
            }
            Ok(())
        }
        Command::Device(DeviceCmd::Revoke { id }) => {
            let r: RevokeAnswer = client()?
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

async fn alerts_cmd(c: AdminClient, a: AlertsArgs) -> anyhow::Result<()> {
    use outpost_appliance::alerts::model::Alert;
    use outpost_appliance::api::alerts_types::{AckBody, AlertDetail};
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

fn ago(ts_ms: u64) -> String {
    if ts_ms == 0 {
        return "never".into();
    }
    let now = outpost_storage::now_ms();
    let secs = now.saturating_sub(ts_ms) / 1000;
    match secs {
        0..=59 => format!("{secs}s ago"),
        60..=3599 => format!("{}m ago", secs / 60),
        3600..=86_399 => format!("{}h ago", secs / 3600),
        _ => format!("{}d ago", secs / 86_400),
    }
}

fn print_table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let parts: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths[i]))
            .collect();
        println!("{}", parts.join("  ").trim_end());
    };
    line(header.iter().map(|h| h.to_string()).collect());
    for r in rows {
        line(r.clone());
    }
}

fn print_devices(devices: &[DeviceSummary]) {
    let rows: Vec<Vec<String>> = devices
        .iter()
        .map(|d| {
            vec![
                d.id.clone(),
                d.hostname.clone(),
                d.tenant.clone(),
                d.customer.clone(),
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

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

fn fmt_value(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}
