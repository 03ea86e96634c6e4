//! `outpost-agent`: the endpoint agent binary.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use outpost_agent::buffer::Buffer;
use outpost_agent::config::AgentConfig;
use outpost_agent::identity::{self, StateDir};
use outpost_agent::{collect, enroll, net, session, status};
use outpost_proto::tls::CaFingerprint;
use tokio_util::sync::CancellationToken;

/// The man-page sections of `outpost-agent --help`.
fn after_long_help() -> String {
    format!(
        "\
Files:
  /var/lib/outpost-agent/     state directory (packaged): identity, device key (0600), offline buffer,
                              command ledger, status.json; agent.toml there is read by `run`
  /etc/outpost/agent.toml     the packaged agent.toml (commented defaults; linked from the state directory)

Environment:
  OUTPOST_TOKEN               default of `enroll --token`
  OUTPOST_LOG                 log filter (e.g. debug); logs go to stderr
  NO_COLOR                    no colours in logs even on a terminal

Exit status: 0 on success, 1 on an error (the reason on stderr), 2 on a usage error,
  {refused} when `run` was refused for good by the appliance (revoked, unknown device, no common
  protocol): the unit does not restart it (RestartPreventExitStatus={refused}); re-enroll.
Under systemd: outpost-agent.service (Type=notify, runs as root: it installs packages and runs
commands as other users). See /usr/share/doc/outpost-agent/README.md.",
        refused = session::EXIT_PERMANENT_REFUSAL
    )
}

#[derive(Parser, Debug)]
#[command(
    name = "outpost-agent",
    version,
    about = "Outpost endpoint agent",
    after_long_help = after_long_help()
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Enroll this endpoint with a site appliance.
    Enroll {
        /// Appliance QUIC address, HOST:PORT.
        #[arg(long)]
        appliance: String,
        /// Enrollment token from `outpost token create`.
        #[arg(long, env = "OUTPOST_TOKEN")]
        token: String,
        /// The appliance CA fingerprint (`outpost ca-fingerprint`), sha256:HEX.
        #[arg(long)]
        ca_fingerprint: CaFingerprint,
        /// State directory (identity, buffer).
        #[arg(long)]
        state: PathBuf,
        /// Replace an existing enrollment in the state directory.
        #[arg(long)]
        force: bool,
    },
    /// Run the agent: collect, buffer and stream to the appliance.
    Run {
        #[arg(long)]
        state: PathBuf,
        /// Heartbeat interval (e.g. 30s, 1s). Overrides agent.toml.
        #[arg(long, value_parser = humantime::parse_duration)]
        heartbeat_interval: Option<Duration>,
        /// Metrics interval (e.g. 60s). Overrides agent.toml.
        #[arg(long, value_parser = humantime::parse_duration)]
        metrics_interval: Option<Duration>,
        /// Offline buffer bound in bytes. Overrides agent.toml.
        #[arg(long)]
        buffer_max_bytes: Option<u64>,
    },
    /// Print this agent's identity, whether it runs, and its connection
    /// and buffer state (live from status.json while it runs).
    Status {
        #[arg(long)]
        state: PathBuf,
        #[arg(long)]
        json: bool,
    },
}

/// Logs carry colour codes only on a terminal (and not with `NO_COLOR`):
/// redirected to a file or a journal they stay plain text.
fn log_in_colour() -> bool {
    use std::io::IsTerminal;
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(log_in_colour())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("OUTPOST_LOG")
                .unwrap_or_else(|_| "info,quinn=warn,rustls=warn".into()),
        )
        .init();
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
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
            ExitCode::from(session::exit_status(&e))
        }
    }
}

async fn real_main(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Enroll {
            appliance,
            token,
            ca_fingerprint,
            state,
            force,
        } => {
            let dir = StateDir(state);
            if dir.is_enrolled() && !force {
                anyhow::bail!(
                    "{} already holds an enrollment; pass --force to replace it",
                    dir.0.display()
                );
            }
            let addr = net::resolve(&appliance).await?;
            let endpoint = net::client_endpoint(addr)?;
            let enrolled =
                enroll::enroll(&endpoint, addr, &token, ca_fingerprint, collect::facts()).await?;
            identity::save(&dir, &appliance, &enrolled)?;
            endpoint.wait_idle().await;
            println!("{}", enrolled.device_id);
            Ok(())
        }
        Command::Run {
            state,
            heartbeat_interval,
            metrics_interval,
            buffer_max_bytes,
        } => {
            let dir = StateDir(state);
            let mut cfg = AgentConfig::load(&dir.config())?;
            if let Some(v) = heartbeat_interval {
                cfg.heartbeat_interval = v;
            }
            if let Some(v) = metrics_interval {
                cfg.metrics_interval = v;
            }
            if let Some(v) = buffer_max_bytes {
                cfg.buffer_max_bytes = v;
            }
            cfg.validate()?;
            let ident = identity::load(&dir)?;
            // Signals first: a SIGTERM during start-up stops the agent
            // cleanly instead of killing it before its final status write.
            let shutdown = CancellationToken::new();
            let signals = Signals::install().context("installing signal handlers")?;
            let s = shutdown.clone();
            tokio::spawn(async move {
                signals.wait().await;
                s.cancel();
            });
            let buffer = open_buffer_waiting(&dir, cfg.buffer_max_bytes)?;
            let shared = session::Shared::new(buffer);
            tracing::info!(device = %ident.device_id, appliance = %ident.appliance, "agent starting");
            let writer_stop = CancellationToken::new();
            let writer = tokio::spawn(status::run_writer(
                dir.status(),
                shared.clone(),
                ident.appliance.clone(),
                session::now_ms(),
                writer_stop.clone(),
            ));
            let files_dir = dir.0.join("files");
            let files = outpost_agent::files::FileAgent::open(&files_dir, cfg.file_roots.clone())
                .with_context(|| {
                format!("opening the file transfer store {}", files_dir.display())
            })?;
            files.set_idle_timeout(cfg.file_idle_timeout);
            let installer =
                outpost_agent::install::PatchInstaller::from_config(&cfg, &dir.0, shared.clone());
            if let Some(i) = installer.clone() {
                // Interrupted installs and completed reboots are reported
                // (statuses go to the buffer; the session sends them).
                tokio::spawn(async move { i.recover().await });
            }
            let executor = outpost_agent::commands::Executor::start_full(
                &dir.commands(),
                cfg.command_policy(),
                Some(files),
                Some(shared.scan_requests()),
                installer,
            )
            .with_context(|| format!("opening the command ledger {}", dir.commands().display()))?;
            executor.set_reboot_cancel_command(cfg.reboot_cancel_command.clone());
            // systemd (Type=notify): identity loaded, buffer and ledger
            // open. The agent is useful offline (it buffers), so this does
            // not wait for the appliance. A no-op when not under systemd.
            if let Err(e) = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]) {
                tracing::warn!(error = %e, "telling systemd the agent is ready");
            }
            let result =
                session::run_with(ident, cfg, shared.clone(), shutdown, Arc::new(executor)).await;
            if let Err(e) = &result {
                shared.note_error(format!("{e:#}"));
            }
            writer_stop.cancel();
            let _ = writer.await;
            result
        }
        Command::Status { state, json } => {
            let dir = StateDir(state);
            let ident = identity::load(&dir)?;
            let cfg = AgentConfig::load(&dir.config())?;
            let locked = status::buffer_in_use(&dir.buffer()).with_context(|| {
                format!("checking whether an agent uses {}", dir.buffer().display())
            })?;
            let live = status::read(&dir.status()).unwrap_or_else(|e| {
                eprintln!("warning: {e:#}");
                None
            });
            let alive = live.as_ref().is_some_and(|s| status::pid_alive(s.pid));
            let mut liveness = status::assess(locked, live.as_ref(), alive);
            // Only a stopped agent's buffer is opened (sled locks it).
            let db = if liveness.is_running() {
                None
            } else {
                match Buffer::open(&dir.buffer(), cfg.buffer_max_bytes) {
                    Ok(b) => Some(status::BufferFigures {
                        records: b.len(),
                        bytes: b.size_bytes(),
                        dropped: b.dropped(),
                        acked_seq: b.acked(),
                    }),
                    // An agent started between the probe and the open: it
                    // holds the buffer now, so it is running.
                    Err(_) if status::buffer_in_use(&dir.buffer()).unwrap_or(false) => {
                        let live = status::read(&dir.status()).ok().flatten();
                        let alive = live.as_ref().is_some_and(|s| status::pid_alive(s.pid));
                        liveness = status::assess(true, live.as_ref(), alive);
                        None
                    }
                    Err(e) => {
                        return Err(e).with_context(|| {
                            format!("opening the offline buffer in {}", dir.buffer().display())
                        });
                    }
                }
            };
            let report = status::Report::build(
                status::Who {
                    device_id: ident.device_id.to_string(),
                    appliance: ident.appliance,
                    tenant: ident.tenant.to_string(),
                    customer: ident.customer.to_string(),
                },
                liveness,
                live.as_ref(),
                db,
            );
            if json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                print!("{}", report.text(session::now_ms()));
            }
            Ok(())
        }
    }
}

/// SIGTERM and Ctrl-C, registered at once (a handler registered inside a
/// task that has not run yet would miss an early signal).
struct Signals {
    #[cfg(unix)]
    term: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    fn install() -> std::io::Result<Signals> {
        Ok(Signals {
            #[cfg(unix)]
            term: Some(tokio::signal::unix::signal(
                tokio::signal::unix::SignalKind::terminate(),
            )?),
        })
    }

    async fn wait(mut self) {
        #[cfg(unix)]
        if let Some(term) = self.term.as_mut() {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Opens the offline buffer. `outpost-agent status` on a stopped agent
/// holds it for milliseconds, so a held lock is waited out for a few
/// seconds; a running agent holds it for good, and is named in the error.
fn open_buffer_waiting(dir: &StateDir, max_bytes: u64) -> anyhow::Result<Buffer> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        match Buffer::open(&dir.buffer(), max_bytes) {
            Ok(b) => return Ok(b),
            Err(e) if status::buffer_in_use(&dir.buffer()).unwrap_or(false) => {
                if std::time::Instant::now() < deadline {
                    std::thread::sleep(std::time::Duration::from_millis(100));
                    continue;
                }
                let pid = status::read(&dir.status())
                    .ok()
                    .flatten()
                    .map(|s| s.pid)
                    .filter(|p| status::pid_alive(*p));
                return Err(anyhow::Error::new(e).context(format!(
                    "an agent is already running with state directory {}{} \
                     (`outpost-agent status --state {}` shows it)",
                    dir.0.display(),
                    pid.map(|p| format!(" (pid {p})")).unwrap_or_default(),
                    dir.0.display()
                )));
            }
            Err(e) => {
                return Err(anyhow::Error::new(e).context(format!(
                    "opening the offline buffer in {}",
                    dir.buffer().display()
                )));
            }
        }
    }
}
