//! `outpost-central`: the MSP's aggregator (see the `outpost_central` library).

use std::io::BufRead;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use outpost_central::dir::CentralDir;
use outpost_central::model::Role;
use outpost_central::ops;
use outpost_central::rocks::RocksCentralStore;
use outpost_central::{self as central, ServeOptions};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

/// The man-page sections of `outpost-central --help`.
const AFTER_LONG_HELP: &str = "\
Files:
  /var/lib/outpost-central/       data directory (packaged): central CA, keys (0600), database
  /etc/default/outpost-central    OUTPOST_CENTRAL_OPTS: the flags outpost-central.service passes to `serve`

Environment:
  OUTPOST_LOG (or RUST_LOG)       log filter (e.g. debug); logs go to stderr
  NO_COLOR                        no colours in logs even on a terminal

Exit status: 0 on success, 1 on an error (the reason on stderr), 2 on a usage error.
Under systemd: outpost-central.service (Type=notify, user outpost-central).
See /usr/share/doc/outpost-central/README.md.";

#[derive(Parser)]
#[command(
    name = "outpost-central",
    version,
    about = "Outpost central: MSP rollup view of many sites",
    after_long_help = AFTER_LONG_HELP
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Runs central: QUIC uplink listener, HTTP API and web view.
    Serve {
        #[arg(long)]
        data: PathBuf,
        /// QUIC listener for site joins and uplinks.
        #[arg(long, default_value = "0.0.0.0:4434")]
        listen: SocketAddr,
        /// HTTP listener for the API, the web view and /metrics.
        #[arg(long, default_value = "127.0.0.1:8090")]
        http_listen: SocketAddr,
        /// QUIC connections open at once (joins and uplinks); more are
        /// refused and counted.
        #[arg(long, default_value_t = 4096)]
        max_connections: usize,
        /// Uplink connections of one site at once.
        #[arg(long, default_value_t = 4)]
        max_connections_per_site: usize,
        /// Batches decoded and applied at once (default: the number of cores).
        #[arg(long)]
        max_concurrent_batches: Option<usize>,
        /// A reverse proxy in front of the HTTP listener whose
        /// X-Forwarded-For is believed for the login limits (repeatable).
        #[arg(long = "trusted-proxy")]
        trusted_proxies: Vec<std::net::IpAddr>,
        /// Where rows live: `rocksdb:DIR` (default: DATA/db) or
        /// `postgres://USER@HOST/DB` (see README "Central on PostgreSQL").
        #[arg(long)]
        store: Option<String>,
        /// PostgreSQL: connections in the pool at most.
        #[arg(long, default_value_t = 16)]
        store_pool_size: usize,
        /// PostgreSQL: statement and lock timeout (milliseconds; kept
        /// within 100..=600000).
        #[arg(long, default_value_t = 30_000)]
        store_statement_timeout_ms: u64,
        /// PostgreSQL: how long a request waits for a connection before it
        /// is answered 503 / the batch is not acknowledged (milliseconds;
        /// kept within 50..=60000).
        #[arg(long, default_value_t = central::pg::DEFAULT_POOL_WAIT_MS)]
        store_pool_wait_ms: u64,
        /// PostgreSQL: how often maintenance runs (rollup partitions made
        /// ahead and dropped past the retention, applied_batches pruned);
        /// 1m to 24h.
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        store_maintenance_interval: std::time::Duration,
        /// PostgreSQL: rollups older than this are dropped a whole week
        /// (partition) at a time; at least 14d.
        #[arg(long, default_value = "400d", value_parser = humantime::parse_duration)]
        rollup_retention: std::time::Duration,
        /// Largest file pushed to or pulled from a device through central
        /// (bytes); a larger upload is refused with 413.
        #[arg(long, default_value_t = central::files::DEFAULT_MAX_BYTES)]
        files_max_bytes: u64,
        /// How long the content of an ended transfer is kept (a pulled
        /// file stays downloadable), e.g. `7d`.
        #[arg(long, default_value = "7d", value_parser = humantime::parse_duration)]
        files_retention: std::time::Duration,
    },
    /// Prints central's CA fingerprint (`sha256:HEX`).
    CaFingerprint {
        #[arg(long)]
        data: PathBuf,
    },
    /// Sites.
    Site {
        #[command(subcommand)]
        cmd: SiteCmd,
    },
    /// API tokens.
    Token {
        #[command(subcommand)]
        cmd: TokenCmd,
    },
    /// Web users.
    User {
        #[command(subcommand)]
        cmd: UserCmd,
    },
    /// Commands from central, over the running central's API (an API token:
    /// `--token` or OUTPOST_CENTRAL_TOKEN).
    Commands {
        #[command(subcommand)]
        cmd: outpost_central::cli::CommandsCmd,
    },
    /// Files pushed to and pulled from devices of sites, over the running
    /// central's API.
    Files {
        #[command(subcommand)]
        cmd: outpost_central::cli_files::FilesCmd,
    },
    /// Patch deployments at sites, over the running central's API.
    Deployments {
        #[command(subcommand)]
        cmd: outpost_central::cli_deploy::DeploymentsCmd,
    },
    /// Approve or decline a patch version at sites, or a compliance
    /// report, over the API.
    Patches {
        #[command(subcommand)]
        cmd: outpost_central::cli_deploy::PatchesCmd,
    },
    /// Approval rules at sites, over the API.
    ApprovalRules {
        #[command(subcommand)]
        cmd: outpost_central::cli_deploy::ApprovalRulesCmd,
    },
    /// Copies a stopped central's RocksDB store into PostgreSQL: idempotent
    /// (a second run copies nothing), resumable (a killed run continues
    /// where it stopped), verified (per-table counts; exit 1 when they
    /// differ). Copy the data directory's keys and files separately (README
    /// "Central on PostgreSQL").
    Migrate {
        /// `rocksdb:DIR`: the store to copy (central's `--store`; by
        /// default DATA/db). Refused while a central has it open.
        #[arg(long)]
        from: String,
        /// `postgres://USER@HOST/DB`: the target (schema created or
        /// upgraded first).
        #[arg(long)]
        to: String,
        /// Source rows per transaction (and per progress mark).
        #[arg(long, default_value_t = 500)]
        chunk_rows: usize,
    },
    /// Devices of sites: set their tags, over the API.
    Devices {
        #[command(subcommand)]
        cmd: outpost_central::cli_tags::DevicesCmd,
    },
}

#[derive(Subcommand)]
enum SiteCmd {
    /// Adds a site; prints its one-time join token, then the CA fingerprint.
    Add {
        #[arg(long)]
        data: PathBuf,
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        customer: String,
        #[arg(long)]
        site: String,
    },
}

#[derive(Subcommand)]
enum TokenCmd {
    /// Creates an API token of a tenant; prints it.
    Create {
        #[arg(long)]
        data: PathBuf,
        #[arg(long)]
        tenant: String,
        #[arg(long, value_enum)]
        role: Role,
        /// Limit the token to these customers (repeatable).
        #[arg(long = "customer")]
        customers: Vec<String>,
        /// Refused after this long (seconds or e.g. `90d`, 1m to 365d);
        /// default: no expiry.
        #[arg(long)]
        ttl: Option<String>,
    },
    /// Lists the tenant's tokens (never a secret): ID ROLE CUSTOMERS
    /// CREATED CREATED_BY EXPIRES STATE per line.
    List {
        #[arg(long)]
        data: PathBuf,
        #[arg(long)]
        tenant: String,
        /// The JSON array instead of lines.
        #[arg(long)]
        json: bool,
    },
    /// Revokes a token (`token:ID` or `ID`, as `token list` shows it): it
    /// is refused from now on.
    Revoke {
        #[arg(long)]
        data: PathBuf,
        #[arg(long)]
        tenant: String,
        id: String,
    },
}

#[derive(Subcommand)]
enum UserCmd {
    /// Adds (or replaces) a web user; reads the password from stdin. A
    /// replaced user's sessions end.
    Add {
        #[arg(long)]
        data: PathBuf,
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        name: String,
        #[arg(long, value_enum)]
        role: Role,
        #[arg(long = "customer")]
        customers: Vec<String>,
    },
    /// Removes a web user: it can no longer log in and its sessions end
    /// (API tokens it created stay: `token list` shows who created each).
    Remove {
        #[arg(long)]
        data: PathBuf,
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        name: String,
    },
}

/// Logs carry colour codes only on a terminal (and not with `NO_COLOR`):
/// redirected to a file or a journal they stay plain text.
fn log_in_colour() -> bool {
    use std::io::IsTerminal;
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            // OUTPOST_LOG like every other Outpost binary; RUST_LOG still
            // works for those who set it before.
            tracing_subscriber::EnvFilter::try_from_env("OUTPOST_LOG")
                .or_else(|_| tracing_subscriber::EnvFilter::try_from_default_env())
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(log_in_colour())
        .init();
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let client = match cli.cmd {
        Cmd::Commands { cmd } => rt.block_on(outpost_central::cli::run(cmd)),
        Cmd::Files { cmd } => rt.block_on(outpost_central::cli_files::run(cmd)),
        Cmd::Deployments { cmd } => rt.block_on(outpost_central::cli_deploy::run_deployments(cmd)),
        Cmd::Patches { cmd } => rt.block_on(outpost_central::cli_deploy::run_patches(cmd)),
        Cmd::ApprovalRules { cmd } => rt.block_on(outpost_central::cli_deploy::run_rules(cmd)),
        Cmd::Devices { cmd } => rt.block_on(outpost_central::cli_tags::run(cmd)),
        cmd => return serve_or_operate(&rt, Cli { cmd }),
    };
    match client {
        Ok(code) => std::process::ExitCode::from(code.clamp(0, 255) as u8),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn serve_or_operate(rt: &tokio::runtime::Runtime, cli: Cli) -> std::process::ExitCode {
    match rt.block_on(run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Runs `f` on the database directly, or, when a running central holds it,
/// posts `body` to its operator endpoint `path`.
async fn operate<B: Serialize, R: DeserializeOwned>(
    dir: &CentralDir,
    path: &str,
    body: &B,
    f: impl AsyncFnOnce(&RocksCentralStore) -> anyhow::Result<R>,
) -> anyhow::Result<R> {
    let keys = dir.init_or_load()?;
    if dir.uses_postgres() {
        // Central runs on PostgreSQL: go through the running central.
        let addr = std::fs::read_to_string(dir.http_addr()).map_err(|_| {
            anyhow::anyhow!(
                "central runs on PostgreSQL ({}): start `outpost-central serve`, \
                 the CLI goes through its API (DATA/http.addr is written once it is \
                 ready: its store open)",
                dir.store_kind().display()
            )
        })?;
        return post(addr.trim(), path, &keys.admin_token, body).await;
    }
    match RocksCentralStore::open(&dir.db()) {
        Ok(store) => f(&store).await,
        Err(open_err) => {
            let addr = std::fs::read_to_string(dir.http_addr())
                .map_err(|_| anyhow::anyhow!("cannot open {}: {open_err}", dir.db().display()))?;
            post(addr.trim(), path, &keys.admin_token, body).await
        }
    }
}

async fn post<B: Serialize, R: DeserializeOwned>(
    addr: &str,
    path: &str,
    token: &str,
    body: &B,
) -> anyhow::Result<R> {
    let body = serde_json::to_vec(body)?;
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to the running central at {addr}"))?;
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await?;
    s.write_all(&body).await?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp)
        .await
        .context("reading central's answer")?;
    let text = String::from_utf8_lossy(&resp);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    if !(200..300).contains(&status) {
        bail!("central answered {status}: {}", body.trim());
    }
    let body = if body.trim().is_empty() { "null" } else { body };
    serde_json::from_str(body).with_context(|| format!("parsing central's answer {body:?}"))
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.cmd {
        Cmd::Serve {
            data,
            listen,
            http_listen,
            max_connections,
            max_connections_per_site,
            max_concurrent_batches,
            trusted_proxies,
            store,
            store_pool_size,
            store_statement_timeout_ms,
            store_pool_wait_ms,
            store_maintenance_interval,
            rollup_retention,
            files_max_bytes,
            files_retention,
        } => {
            let dir = CentralDir(data);
            let store = match store {
                Some(s) => {
                    central::StoreLocation::parse(&s, store_pool_size, store_statement_timeout_ms)?
                        .with_pool_wait_ms(store_pool_wait_ms)
                }
                None => central::StoreLocation::Rocks(dir.db()),
            };
            let defaults = central::CentralLimits::default();
            let limits = central::CentralLimits {
                max_connections,
                max_connections_per_site,
                max_concurrent_batches: max_concurrent_batches
                    .unwrap_or(defaults.max_concurrent_batches),
                trusted_proxies,
                files: central::files::FilesConfig {
                    max_bytes: files_max_bytes,
                    retention_ms: u64::try_from(files_retention.as_millis()).unwrap_or(u64::MAX),
                },
                pg_maintenance: central::pg::maintenance::MaintenanceConfig {
                    interval_ms: u64::try_from(store_maintenance_interval.as_millis())
                        .unwrap_or(u64::MAX),
                    rollup_retention_ms: u64::try_from(rollup_retention.as_millis())
                        .unwrap_or(u64::MAX),
                    ..Default::default()
                },
                ..defaults
            };
            let shutdown = CancellationToken::new();
            let sd = shutdown.clone();
            tokio::spawn(async move {
                let mut term =
                    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    {
                        Ok(t) => t,
                        Err(_) => return,
                    };
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
                sd.cancel();
            });
            central::serve_on(
                dir,
                store,
                ServeOptions {
                    listen,
                    http_listen,
                    limits,
                },
                shutdown,
            )
            .await
        }
        Cmd::Migrate {
            from,
            to,
            chunk_rows,
        } => {
            let Some(dir) = from.strip_prefix("rocksdb:").filter(|d| !d.is_empty()) else {
                bail!("--from takes rocksdb:DIR, not {from:?}");
            };
            if !(to.starts_with("postgres://") || to.starts_with("postgresql://")) {
                bail!("--to takes postgres://USER@HOST/DB");
            }
            let opts = central::migrate::MigrateOptions {
                chunk_rows: chunk_rows.clamp(1, 100_000),
                stop_after_chunks: None,
            };
            let report = central::migrate::migrate(std::path::Path::new(dir), &to, &opts).await?;
            println!("{report}");
            if !report.mismatches().is_empty() {
                bail!("the copy is incomplete: counts differ (see the table above)");
            }
            Ok(())
        }
        Cmd::CaFingerprint { data } => {
            println!("{}", CentralDir(data).init_or_load()?.ca.fingerprint());
            Ok(())
        }
        Cmd::Site {
            cmd:
                SiteCmd::Add {
                    data,
                    tenant,
                    customer,
                    site,
                },
        } => {
            let dir = CentralDir(data);
            let req = ops::AddSite {
                tenant: tenant.into(),
                customer: customer.into(),
                site,
            };
            #[derive(serde::Deserialize)]
            struct Created {
                token: String,
            }
            let r2 = req.clone();
            let c: Created = operate(&dir, "/api/v1/admin/sites", &req, async move |s| {
                Ok(Created {
                    token: ops::add_site(s, &r2, outpost_central::now_ms())
                        .await?
                        .token,
                })
            })
            .await?;
            println!("{}", c.token);
            println!("{}", dir.init_or_load()?.ca.fingerprint());
            Ok(())
        }
        Cmd::Token {
            cmd:
                TokenCmd::Create {
                    data,
                    tenant,
                    role,
                    customers,
                    ttl,
                },
        } => {
            let dir = CentralDir(data);
            if let Some(t) = &ttl {
                ops::parse_token_ttl(t)?;
            }
            let req = ops::CreateToken {
                tenant: tenant.into(),
                role,
                customers: customers.into_iter().map(Into::into).collect(),
                ttl,
            };
            #[derive(serde::Deserialize)]
            struct Created {
                token: String,
            }
            let r2 = req.clone();
            let c: Created = operate(&dir, "/api/v1/admin/tokens", &req, async move |s| {
                Ok(Created {
                    token: ops::create_token(s, &r2, outpost_central::now_ms()).await?,
                })
            })
            .await?;
            println!("{}", c.token);
            Ok(())
        }
        Cmd::Token {
            cmd: TokenCmd::List { data, tenant, json },
        } => {
            let dir = CentralDir(data);
            let req = ops::ListTokens {
                tenant: tenant.into(),
            };
            let t2 = req.tenant.clone();
            let v: Vec<ops::TokenInfo> =
                operate(&dir, "/api/v1/admin/tokens/list", &req, async move |s| {
                    ops::list_tokens(s, &t2, outpost_central::now_ms()).await
                })
                .await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                for t in &v {
                    println!("{}", token_line(t));
                }
            }
            Ok(())
        }
        Cmd::Token {
            cmd: TokenCmd::Revoke { data, tenant, id },
        } => {
            let dir = CentralDir(data);
            let req = ops::RevokeToken {
                tenant: tenant.into(),
                id,
            };
            let r2 = req.clone();
            let r: ops::TokenRevoked =
                operate(&dir, "/api/v1/admin/tokens/revoke", &req, async move |s| {
                    let id = ops::token_id(&r2.id)?;
                    ops::revoke_token(s, &r2.tenant, id, ops::OPERATOR, outpost_central::now_ms())
                        .await?
                        .ok_or_else(|| {
                            anyhow::anyhow!("tenant {} has no token token:{id}", r2.tenant)
                        })
                })
                .await?;
            match r.revoked_now {
                true => println!("revoked {}", r.token.id),
                false => println!("{} was revoked already", r.token.id),
            }
            Ok(())
        }
        Cmd::User {
            cmd: UserCmd::Remove { data, tenant, name },
        } => {
            let dir = CentralDir(data);
            let req = ops::RemoveUser {
                tenant: tenant.into(),
                name,
            };
            let r2 = req.clone();
            let r: ops::UserRemoved =
                operate(&dir, "/api/v1/admin/users/remove", &req, async move |s| {
                    ops::remove_user(
                        s,
                        &r2.tenant,
                        &r2.name,
                        ops::OPERATOR,
                        outpost_central::now_ms(),
                    )
                    .await?
                    .ok_or_else(|| anyhow::anyhow!("tenant {} has no user {}", r2.tenant, r2.name))
                })
                .await?;
            println!("removed {} ({} sessions ended)", r.user, r.sessions_ended);
            Ok(())
        }
        Cmd::User {
            cmd:
                UserCmd::Add {
                    data,
                    tenant,
                    name,
                    role,
                    customers,
                },
        } => {
            let mut password = String::new();
            std::io::stdin()
                .lock()
                .read_line(&mut password)
                .context("reading the password from stdin")?;
            let password = password.trim_end_matches(['\r', '\n']).to_string();
            let dir = CentralDir(data);
            let req = ops::AddUser {
                tenant: tenant.into(),
                name,
                role,
                customers: customers.into_iter().map(Into::into).collect(),
                password,
            };
            let r2 = req.clone();
            let _: () = operate(&dir, "/api/v1/admin/users", &req, async move |s| {
                let passwords = outpost_central::login::Passwords::per_core();
                ops::add_user(s, &r2, outpost_central::now_ms(), &passwords).await?;
                Ok(())
            })
            .await?;
            Ok(())
        }
        // Run in `main` (its exit code is the command's).
        Cmd::Commands { .. }
        | Cmd::Files { .. }
        | Cmd::Deployments { .. }
        | Cmd::Patches { .. }
        | Cmd::ApprovalRules { .. }
        | Cmd::Devices { .. } => bail!("API clients are run by main"),
    }
}

/// One line of `token list`: ID ROLE CUSTOMERS CREATED CREATED_BY EXPIRES
/// STATE (`*`: every customer; `-`: unknown or none).
fn token_line(t: &ops::TokenInfo) -> String {
    let time = |ms: u64| {
        humantime::format_rfc3339_seconds(
            std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms),
        )
        .to_string()
    };
    let customers = match t.customers.is_empty() {
        true => "*".to_string(),
        false => t
            .customers
            .iter()
            .map(|c| c.to_string())
            .collect::<Vec<_>>()
            .join(","),
    };
    format!(
        "{} {} {} {} {} {} {}",
        t.id,
        t.role.as_str(),
        customers,
        time(t.created_ms),
        t.created_by.as_deref().unwrap_or("-"),
        t.expires_ms.map(time).unwrap_or_else(|| "-".into()),
        t.state
    )
}
