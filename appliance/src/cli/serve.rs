//! `outpost serve` (run the appliance until SIGTERM or Ctrl-C) and
//! `outpost ca-fingerprint` (what installers pin). The only commands that
//! work on the data directory itself rather than through the admin API.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use outpost_storage::Durability;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::site::{self, DataDir};

// No doc comment: clap would take it as the sub-command's help, which the
// `Command::Serve` variant gives.
#[derive(Args, Debug)]
pub struct ServeArgs {
    /// TOML configuration file (default: DATA/outpost.toml if present).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// QUIC listener for agents [default: 0.0.0.0:4433].
    #[arg(long)]
    pub quic_listen: Option<SocketAddr>,
    /// QUIC endpoints (UDP sockets) on the QUIC address; 0: one per core [default: 0].
    #[arg(long)]
    pub quic_endpoints: Option<usize>,
    /// Admin API listener [default: 127.0.0.1:8080].
    #[arg(long)]
    pub admin_listen: Option<SocketAddr>,
    /// LAN patch cache listener [default: 0.0.0.0:3142].
    #[arg(long)]
    pub cache_listen: Option<SocketAddr>,
    /// `sync` (default) or `buffered`.
    #[arg(long, value_parser = parse_durability)]
    pub durability: Option<Durability>,
    /// Grace beyond two missed heartbeats before a device is offline [default: 10s].
    #[arg(long, value_parser = humantime::parse_duration)]
    pub offline_grace: Option<Duration>,
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

/// `outpost serve`: loads the configuration (`--config`, else
/// `DATA/outpost.toml` if present, else defaults), applies the flags, and
/// runs the appliance until SIGTERM or Ctrl-C.
pub async fn run(data: DataDir, args: ServeArgs) -> anyhow::Result<()> {
    let mut cfg = match &args.config {
        Some(p) => Config::load(p)?,
        None if data.config().exists() => Config::load(&data.config())?,
        None => Config::default(),
    };
    if let Some(v) = args.quic_listen {
        cfg.quic_listen = v;
    }
    if let Some(v) = args.quic_endpoints {
        cfg.quic_endpoints = v;
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
    crate::serve::run(data, cfg, shutdown).await
}

/// `outpost ca-fingerprint`: prints `sha256:<64 hex>`.
pub fn ca_fingerprint(data: &DataDir) -> anyhow::Result<()> {
    println!("{}", site::ca_fingerprint(data)?);
    Ok(())
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
