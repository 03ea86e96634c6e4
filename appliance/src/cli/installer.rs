//! `outpost agent-installer`: creates an enrollment token and prints the one
//! line a technician pastes on an endpoint (see [`crate::installer`] for the
//! line and its trust model). Runs on the appliance: the CA fingerprint and
//! the listeners' ports come from the data directory, the package's hash
//! and a fresh token from the running appliance's admin API.

use std::net::{IpAddr, SocketAddr};

use anyhow::Context;
use clap::Args;

use crate::api::tokens_types::{CreateToken, TokenCreated};
use crate::client::AdminClient;
use crate::installer::{self, AgentPackages, LineParts, PackageKind};
use crate::site::{self, DataDir};

// No doc comment: clap would take it as the sub-command's help, which the
// `Command::AgentInstaller` variant gives.
#[derive(Args, Debug)]
pub struct AgentInstallerArgs {
    /// Tenant the endpoints enroll into.
    #[arg(long)]
    pub tenant: String,
    /// Customer the endpoints enroll into.
    #[arg(long, default_value = "")]
    pub customer: String,
    /// How many endpoints may enroll with the line's token.
    #[arg(long, default_value_t = 1)]
    pub uses: u32,
    /// Lifetime of the line's token, e.g. 24h.
    #[arg(long, default_value = "24h")]
    pub ttl: String,
    /// Name or address endpoints reach this appliance at [default: the
    /// cache listener's address if it is a specific one, else this host's
    /// primary IP address].
    #[arg(long)]
    pub host: Option<String>,
    /// For Linux hosts without dpkg: the line fetches the agent's tarball
    /// and runs its install.sh (binary in /usr/local/bin) instead.
    #[arg(long)]
    pub tarball: bool,
}

fn read_addr(data: &DataDir, file: &str) -> anyhow::Result<SocketAddr> {
    let p = data.0.join(file);
    let text = std::fs::read_to_string(&p).with_context(|| {
        format!(
            "reading {} (is `outpost serve --data {}` running?)",
            p.display(),
            data.0.display()
        )
    })?;
    text.trim()
        .parse()
        .with_context(|| format!("parsing {}", p.display()))
}

/// The address a LAN host most likely reaches this one at: the source
/// address of a route to a public address (no packet is sent).
fn primary_ip() -> Option<IpAddr> {
    let s = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    s.connect("192.0.2.1:9").ok()?;
    s.local_addr().ok().map(|a| a.ip())
}

/// Runs `outpost agent-installer`.
pub async fn run(
    args: AgentInstallerArgs,
    data: &DataDir,
    client: AdminClient,
) -> anyhow::Result<()> {
    let fingerprint = site::ca_fingerprint(data)?.to_string();
    let cache_addr = read_addr(data, "cache.addr")
        .context("the agent package is served on the patch cache's port ([cache] enabled)")?;
    let quic_addr = read_addr(data, installer::QUIC_ADDR_FILE)?;
    let host = match args.host {
        Some(h) => h,
        None if !cache_addr.ip().is_unspecified() => cache_addr.ip().to_string(),
        None => primary_ip()
            .filter(|ip| !ip.is_unspecified())
            .context("cannot tell this host's address: pass --host NAME-OR-IP")?
            .to_string(),
    };
    let packages: AgentPackages = client.get("/api/v1/agent-package").await?;
    let (kind, package) = if args.tarball {
        (PackageKind::Tarball, packages.tarball)
    } else {
        (PackageKind::Deb, packages.deb)
    };
    let package = package.with_context(|| {
        format!(
            "the appliance serves no agent {} (scripts/package.sh builds both; \
             [cache] agent_package_dir says where they are)",
            if args.tarball {
                "tarball"
            } else {
                "Debian package"
            }
        )
    })?;
    let created: TokenCreated = client
        .post(
            "/api/v1/tokens",
            &CreateToken {
                tenant: args.tenant,
                customer: args.customer,
                ttl: Some(args.ttl),
                uses: Some(args.uses),
            },
        )
        .await?;
    let line = installer::line(
        &LineParts {
            host: &host,
            cache_port: cache_addr.port(),
            quic_port: quic_addr.port(),
            package: &package,
            token: &created.token,
            ca_fingerprint: &fingerprint,
        },
        kind,
    )?;
    println!("{line}");
    Ok(())
}
