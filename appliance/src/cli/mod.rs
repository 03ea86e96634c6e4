//! The `outpost` command line: the arguments of every sub-command and what
//! each one runs, one module per subsystem ([`serve`] for `serve` and
//! `ca-fingerprint`, [`tokens`], [`devices`], [`alerts`], [`uplink`],
//! [`cache`], [`users`], [`api`]), with the shared table and time formatting in
//! [`table`]. `main.rs` only parses and dispatches.
//!
//! Contract (DESIGN.md § Interfaces): plain values on stdout, `--json` for
//! machine use, errors on stderr, exit code 0 only on success. Admin
//! commands talk to the running appliance's admin API through
//! [`crate::client::AdminClient`]; nothing here opens the database or holds
//! a subsystem's logic.

pub mod alerts;
pub mod api;
pub mod cache;
pub mod commands;
pub mod deploy;
pub mod devices;
pub mod files;
pub mod installer;
pub mod patches;
pub mod scripts;
pub mod serve;
pub mod table;
pub mod tokens;
pub mod uplink;
pub mod users;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// The man-page sections of `outpost --help`.
const AFTER_LONG_HELP: &str = "\
Files:
  /etc/outpost/outpost.toml   configuration of `outpost serve` (packaged: commented defaults)
  /var/lib/outpost/           data directory: site CA, keys (0600), admin token, database, patch cache
  /usr/share/outpost/agent/   the outpost-agent package `outpost agent-installer` points endpoints at

Environment:
  OUTPOST_DATA, OUTPOST_API, OUTPOST_ADMIN_TOKEN   defaults of --data, --api, --token
  OUTPOST_LOG                 log filter (e.g. debug, info,outpost_appliance=debug); logs go to stderr
  NO_COLOR                    no colours in logs even on a terminal

Exit status: 0 on success, 1 on an error (the reason on stderr), 2 on a usage error.
Under systemd: outpost.service (Type=notify, user outpost). See /usr/share/doc/outpost/README.md.";

#[derive(Parser, Debug)]
#[command(
    name = "outpost",
    version,
    about = "Outpost site appliance: ingest, alerts, patches, admin",
    after_long_help = AFTER_LONG_HELP
)]
pub struct Cli {
    /// Data directory (CA, admin token, database).
    #[arg(
        long,
        global = true,
        env = "OUTPOST_DATA",
        default_value = "/var/lib/outpost"
    )]
    pub data: PathBuf,
    /// Admin API base URL (default: read DATA/admin.addr).
    #[arg(long, global = true, env = "OUTPOST_API")]
    pub api: Option<String>,
    /// Admin API token (default: read DATA/admin.token).
    #[arg(long, global = true, env = "OUTPOST_ADMIN_TOKEN")]
    pub token: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

impl Cli {
    /// Parses the process arguments (see [`uplink::join_token_args`] for
    /// the one rewrite done before parsing).
    pub fn parse_args() -> Cli {
        Cli::parse_from(uplink::join_token_args(std::env::args_os().collect()))
    }
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the appliance.
    Serve(serve::ServeArgs),
    /// Print the site CA fingerprint (sha256:HEX) that installers pin.
    CaFingerprint,
    /// Enrollment tokens.
    #[command(subcommand)]
    Token(tokens::TokenCmd),
    /// List devices.
    Devices(devices::DevicesArgs),
    /// One device.
    #[command(subcommand)]
    Device(devices::DeviceCmd),
    /// LAN patch cache: stats, prefetch, verify, pins.
    #[command(subcommand)]
    Cache(cache::CacheCmd),
    /// List alerts (default: open ones), show or acknowledge one.
    Alerts(alerts::AlertsArgs),
    /// Call the admin API: `outpost api GET /api/v1/alert-rules`,
    /// `outpost api POST /api/v1/channels --body @channel.json`.
    Api(api::ApiArgs),
    /// Sync to outpost-central.
    #[command(subcommand)]
    Uplink(uplink::UplinkCmd),
    /// Local users of the admin API and console: add, list, passwd, remove.
    #[command(subcommand)]
    Users(users::UsersCmd),
    /// Remote commands: run, show, list, cancel.
    #[command(subcommand)]
    Commands(commands::CommandsCmd),
    /// The versioned script library: add, edit, list, show, run.
    #[command(subcommand)]
    Scripts(scripts::ScriptsCmd),
    /// File transfer: push, pull, list, show, download, cancel.
    #[command(subcommand)]
    Files(files::FilesCmd),
    /// Print the one command line that installs and enrolls an agent.
    ///
    /// Creates an enrollment token and prints the one command line that
    /// installs, enrolls and starts the agent on a Linux endpoint (run it
    /// there as root): it downloads the outpost-agent package from this
    /// appliance's cache port, checks its SHA-256 against the value in the
    /// line (a package that differs is deleted before anything is
    /// installed), installs it, enrolls pinned to this site's CA fingerprint
    /// (also in the line) and starts outpost-agent.service.
    AgentInstaller(installer::AgentInstallerArgs),
    /// The advisory catalog: import a feed, show what is imported.
    #[command(subcommand)]
    Advisories(patches::AdvisoriesCmd),
    /// Patch assessment: per device, per patch, per CVE, fleet summary.
    #[command(subcommand)]
    Patches(patches::PatchesCmd),
    /// Approval rules: add, list, remove (manual verdicts: `patches approve|decline`).
    #[command(subcommand)]
    ApprovalRules(deploy::ApprovalRulesCmd),
    /// Patch deployments: create, list, show, pause, resume, abort, rollback.
    #[command(subcommand)]
    Deployments(deploy::DeploymentsCmd),
}
