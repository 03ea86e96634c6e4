//! `outpost-bench`: load scenarios against a real appliance. Each scenario
//! prints a human summary on stderr and one `RESULT <scenario> key=value ...`
//! line on stdout.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use outpost_bench::alert_latency::{self, AlertRun};
use outpost_bench::chaos::{self, ChaosRun};
use outpost_bench::commands::{self, CommandsRun};
use outpost_bench::ingest::{self, IngestRun};
use outpost_bench::peers;
use outpost_bench::reconnect::{self, ReconnectRun};
use outpost_bench::sim::Mix;
use outpost_bench::spawn::{self, Spawned};
use outpost_bench::storage_eff::{self, StorageRun};
use outpost_bench::storm::{self, StormRun};
use outpost_proto::tls::CaFingerprint;

#[derive(Parser, Debug)]
#[command(name = "outpost-bench", version, about = "Outpost load harness")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// N simulated agents streaming to an appliance; durable-acked records/s and ack latency.
    Ingest(IngestArgs),
    /// On-disk bytes per stored metric sample after a synthetic day and a compaction.
    Storage(StorageArgs),
    /// Kill -9 and restart a (spawned) appliance under N agents; time to reconnect and drain.
    Reconnect(ReconnectArgs),
    /// N agents streaming while M others reconnect in a loop: the
    /// established sessions' ack latency, handshakes/s, refusals.
    Storm(StormArgs),
    /// Sample-to-webhook alert latency (optionally under background ingest),
    /// or ingest throughput while every notification fails (--webhook-down).
    Alerts(AlertArgs),
    /// Uplink bytes per device per hour vs raw received, and central's batch apply rate.
    Uplink(UplinkArgs),
    /// The console at central with a big fleet: page times (dashboard,
    /// device list: first page, search, filter, sort, deep page; device
    /// page) and the cost of N live-update subscribers.
    Console(ConsoleArgs),
    /// Kill -9 and restart a (spawned) appliance N times under streaming
    /// agents, then prove from its database that every acknowledged record
    /// is stored exactly once (exit 1 otherwise).
    Chaos(ChaosArgs),
    /// N connected simulated agents that answer commands: dispatch latency
    /// (API call to the agent receiving the command) and one bulk command to
    /// all N devices until every result is stored.
    Commands(CommandsArgs),
    /// Side by side (benches/ingest-side-by-side.sh): the `ingest --mix
    /// metrics` sample stream sent to VictoriaMetrics or a Zabbix proxy.
    Peer(PeerArgs),
    /// SQL declaring the side-by-side stream's hosts and trapper items in a
    /// Zabbix proxy's SQLite database (pipe into `sqlite3 DB`).
    ZabbixSeed(ZabbixSeedArgs),
    /// Bytes on disk per sample of a stopped appliance's database after
    /// sealing every sample window and a full compaction.
    OutpostDisk(OutpostDiskArgs),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum PeerKind {
    VictoriaMetrics,
    Zabbix,
}

#[derive(Args, Debug)]
struct PeerArgs {
    #[arg(long, value_enum)]
    target: PeerKind,
    /// The peer's address: VictoriaMetrics' HTTP listener or the proxy's trapper port.
    #[arg(long)]
    addr: SocketAddr,
    #[arg(long, default_value_t = 1000)]
    devices: usize,
    /// Samples per device per second (each sample = 28 values).
    #[arg(long, default_value_t = 1.0)]
    rate: f64,
    /// Connections the stream is spread over.
    #[arg(long, default_value_t = 8)]
    senders: usize,
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    duration: Duration,
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    warmup: Duration,
    /// The peer's pid (CPU per million samples, peak RSS).
    #[arg(long)]
    pid: Option<u32>,
    #[arg(long)]
    json: Option<PathBuf>,
    #[arg(long)]
    quiet: bool,
}

#[derive(Args, Debug)]
struct ZabbixSeedArgs {
    #[arg(long, default_value_t = 1000)]
    devices: usize,
}

#[derive(Args, Debug)]
struct OutpostDiskArgs {
    /// The appliance's database directory (`DATA/db`), appliance stopped.
    #[arg(long)]
    db: PathBuf,
    /// Samples (values) the appliance acknowledged.
    #[arg(long)]
    samples: u64,
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Args, Debug)]
struct CommandsArgs {
    #[arg(long, default_value_t = 10_000)]
    agents: usize,
    /// Single commands timed one at a time (dispatch latency).
    #[arg(long, default_value_t = 1000)]
    singles: usize,
    /// Skip the bulk run.
    #[arg(long)]
    no_bulk: bool,
    /// Where enrolled identities are cached (with --appliance-data, reused across runs).
    #[arg(long)]
    state: PathBuf,
    /// Data directory of the spawned appliance (default: temporary).
    #[arg(long)]
    appliance_data: Option<PathBuf>,
    #[arg(long)]
    outpost: Option<PathBuf>,
    #[arg(long)]
    json: Option<PathBuf>,
    #[arg(long)]
    quiet: bool,
}

#[derive(Args, Debug)]
struct ChaosArgs {
    #[arg(long, default_value_t = 1000)]
    agents: usize,
    /// Records per second per agent.
    #[arg(long, default_value_t = 2.0)]
    rate: f64,
    /// Kill -9 / restart cycles.
    #[arg(long, default_value_t = 20)]
    kills: usize,
    /// Shortest and longest time up between kills.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    min_up: Duration,
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    max_up: Duration,
    /// Shortest and longest time down after a kill.
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    min_down: Duration,
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    max_down: Duration,
    /// Seed of the kill schedule (default: random, printed in the result).
    #[arg(long)]
    seed: Option<u64>,
    /// Where enrolled identities are cached (with --appliance-data, reused across runs).
    #[arg(long)]
    state: PathBuf,
    /// Data directory of the spawned appliance (default: temporary).
    #[arg(long)]
    appliance_data: Option<PathBuf>,
    #[arg(long)]
    outpost: Option<PathBuf>,
    #[arg(long)]
    json: Option<PathBuf>,
    #[arg(long)]
    quiet: bool,
}

#[derive(Args, Debug)]
struct ConsoleArgs {
    #[arg(long, default_value_t = 1000)]
    sites: u64,
    /// Devices per site.
    #[arg(long, default_value_t = 100)]
    devices: u64,
    /// Requests per page scenario.
    #[arg(long, default_value_t = 200)]
    requests: usize,
    /// Live-update streams open during the fan-out.
    #[arg(long, default_value_t = 500)]
    subscribers: usize,
    /// Device status changes fanned out to them (one batch).
    #[arg(long, default_value_t = 100)]
    events: u64,
    /// Central data directory (default: a temporary one).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Writes every scenario's figures as a JSON array.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Args, Debug)]
struct UplinkArgs {
    /// Devices per site.
    #[arg(long, default_value_t = 100)]
    devices: u64,
    /// Sites receiving batches in the apply run.
    #[arg(long, default_value_t = 1000)]
    sites: u64,
    /// Batches applied (each: every device of a site, one closed bucket).
    #[arg(long, default_value_t = 3000)]
    batches: u64,
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// One batch in N carries a closed bucket of every device (1 = all:
    /// worst case; 5 = 60 s batches with 5-minute buckets).
    #[arg(long, default_value_t = 1)]
    full_every: u64,
    /// Central database directory (default: a temporary one).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Stores to measure the apply rate of, in one run: `rocksdb`,
    /// `postgres` (one central instance, two instances, and two instances
    /// racing the same batches, on a private server the bench starts).
    #[arg(long, value_delimiter = ',', default_value = "rocksdb")]
    store: Vec<UplinkStore>,
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum UplinkStore {
    Rocksdb,
    Postgres,
}

#[derive(Args, Debug)]
struct AlertArgs {
    /// Background agents streaming while the probe measures (0 = probe alone).
    #[arg(long, default_value_t = 0)]
    agents: usize,
    /// Background records per agent per second; omit for as fast as acks allow.
    #[arg(long)]
    rate: Option<f64>,
    #[arg(long, value_enum, default_value_t = Mix::Realistic)]
    mix: Mix,
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    duration: Duration,
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    warmup: Duration,
    /// Pause between probe samples (each flips the alert: firing, resolved).
    #[arg(long, default_value = "50ms", value_parser = humantime::parse_duration)]
    interval: Duration,
    /// Point the webhook at a closed port: every notification fails and retries.
    #[arg(long)]
    webhook_down: bool,
    /// Where enrolled identities are cached (with --appliance-data, reused across runs).
    #[arg(long)]
    state: PathBuf,
    /// Data directory of the spawned appliance (default: temporary).
    #[arg(long)]
    appliance_data: Option<PathBuf>,
    #[arg(long)]
    outpost: Option<PathBuf>,
    #[arg(long)]
    json: Option<PathBuf>,
    #[arg(long)]
    quiet: bool,
}

#[derive(Args, Debug)]
struct IngestArgs {
    /// Appliance QUIC address (omit with --spawn).
    #[arg(long, required_unless_present = "spawn")]
    appliance: Option<String>,
    /// Multi-use enrollment token (omit with --spawn).
    #[arg(long, required_unless_present = "spawn")]
    token: Option<String>,
    #[arg(long, required_unless_present = "spawn")]
    ca_fingerprint: Option<CaFingerprint>,
    /// Start an appliance (the `outpost` binary next to this one, or --outpost) in a temporary directory.
    #[arg(long)]
    spawn: bool,
    #[arg(long)]
    outpost: Option<PathBuf>,
    /// Data directory of the spawned appliance; reusing it (with the same
    /// --state) reuses the enrolled fleet across runs. Default: temporary.
    #[arg(long)]
    appliance_data: Option<PathBuf>,
    /// Extra `outpost serve` flags for --spawn, e.g. "--durability buffered".
    #[arg(long, allow_hyphen_values = true)]
    serve_args: Option<String>,
    #[arg(long, default_value_t = 1000)]
    agents: usize,
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    duration: Duration,
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    warmup: Duration,
    /// Where enrolled identities are cached (reused across runs).
    #[arg(long)]
    state: PathBuf,
    /// Records per second per agent; omit for as fast as acks allow.
    #[arg(long)]
    rate: Option<f64>,
    /// Max unacked records per agent (max-rate mode).
    #[arg(long, default_value_t = 256)]
    window: usize,
    /// Records per frame.
    #[arg(long, default_value_t = 64)]
    batch: usize,
    #[arg(long, value_enum, default_value_t = Mix::Heartbeat)]
    mix: Mix,
    /// Scenario name in the RESULT line.
    #[arg(long, default_value = "ingest")]
    scenario: String,
    /// Appliance pid for CPU/RSS (default: the process owning the QUIC port).
    #[arg(long)]
    appliance_pid: Option<u32>,
    /// Client UDP sockets to spread agents over.
    #[arg(long, default_value_t = 8)]
    endpoints: usize,
    /// Concurrent handshakes while connecting.
    #[arg(long, default_value_t = 256)]
    connect_concurrency: usize,
    /// Also write the result as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
    #[arg(long)]
    quiet: bool,
}

#[derive(Args, Debug)]
struct StorageArgs {
    #[arg(long, default_value_t = 100)]
    devices: u64,
    #[arg(long, default_value_t = 60)]
    interval_s: u64,
    #[arg(long, default_value_t = 24)]
    hours: u64,
    /// How the synthetic values move: `agent` (derived as the agent derives
    /// them) or `legacy` (the generator before issue 18).
    #[arg(long, value_enum, default_value_t = storage_eff::ValueModel::Agent)]
    values: storage_eff::ValueModel,
    /// Database directory (default: a temporary one).
    #[arg(long)]
    data: Option<PathBuf>,
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Args, Debug)]
struct ReconnectArgs {
    #[arg(long, default_value_t = 1000)]
    agents: usize,
    #[arg(long, default_value_t = 1.0)]
    rate: f64,
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    down: Duration,
    /// Where enrolled identities are cached (with --appliance-data, reused across runs).
    #[arg(long)]
    state: PathBuf,
    /// Data directory of the spawned appliance (default: temporary).
    #[arg(long)]
    appliance_data: Option<PathBuf>,
    #[arg(long)]
    outpost: Option<PathBuf>,
    #[arg(long)]
    json: Option<PathBuf>,
    #[arg(long)]
    quiet: bool,
}

#[derive(Args, Debug)]
struct StormArgs {
    /// Established agents streaming through the storm.
    #[arg(long, default_value_t = 1000)]
    agents: usize,
    /// Agents reconnecting in a loop.
    #[arg(long, default_value_t = 200)]
    churn: usize,
    /// Records per second per established agent.
    #[arg(long, default_value_t = 1.0)]
    rate: f64,
    /// Sessions per churning agent (0: until the run ends).
    #[arg(long, default_value_t = 0)]
    churn_sessions: u64,
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    duration: Duration,
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    warmup: Duration,
    /// Where enrolled identities are cached (with --appliance-data, reused across runs).
    #[arg(long)]
    state: PathBuf,
    /// Data directory of the spawned appliance (default: temporary; an
    /// `outpost.toml` in it configures the appliance).
    #[arg(long)]
    appliance_data: Option<PathBuf>,
    #[arg(long)]
    outpost: Option<PathBuf>,
    #[arg(long)]
    json: Option<PathBuf>,
    #[arg(long)]
    quiet: bool,
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
                .unwrap_or_else(|_| "warn".into()),
        )
        .init();
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: {e}");
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

/// Starts the appliance of a spawned scenario and picks its fleet state
/// directory: with `--appliance-data` the enrolled fleet in `--state` is
/// reused across runs; a fresh appliance (temporary directory, new CA) gets
/// a fresh fleet.
fn spawn_for(
    tmp: &tempfile::TempDir,
    outpost: &Option<PathBuf>,
    appliance_data: &Option<PathBuf>,
    state: &std::path::Path,
) -> anyhow::Result<(Spawned, PathBuf)> {
    let bin = match outpost {
        Some(p) => p.clone(),
        None => spawn::sibling_outpost()?,
    };
    let (data, state) = match appliance_data {
        Some(d) => (d.clone(), state.to_path_buf()),
        None => (tmp.path().join("appliance"), tmp.path().join("fleet")),
    };
    Ok((Spawned::start(&bin, &data, &[])?, state))
}

async fn real_main(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Ingest(a) => {
            let tmp = tempfile::tempdir()?;
            let mut spawned = None;
            let (addr, token, pin) = if a.spawn {
                let bin = match &a.outpost {
                    Some(p) => p.clone(),
                    None => spawn::sibling_outpost()?,
                };
                let extra: Vec<String> = a
                    .serve_args
                    .as_deref()
                    .unwrap_or("")
                    .split_whitespace()
                    .map(String::from)
                    .collect();
                let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
                let data = a
                    .appliance_data
                    .clone()
                    .unwrap_or_else(|| tmp.path().join("appliance"));
                let s = Spawned::start(&bin, &data, &extra)?;
                let t = (s.quic, s.token(a.agents)?, s.fingerprint()?);
                spawned = Some(s);
                t
            } else {
                let addr: SocketAddr =
                    outpost_agent::net::resolve(a.appliance.as_deref().unwrap_or_default()).await?;
                (
                    addr,
                    a.token.clone().unwrap_or_default(),
                    a.ca_fingerprint.context("--ca-fingerprint")?,
                )
            };
            // A spawned appliance with a fresh CA gets a fresh fleet.
            let state = if a.spawn && a.appliance_data.is_none() {
                tmp.path().join("fleet")
            } else {
                a.state.clone()
            };
            let run = IngestRun {
                scenario: a.scenario.clone(),
                addr,
                token,
                pin,
                agents: a.agents,
                duration: a.duration,
                warmup: a.warmup,
                state,
                rate: a.rate,
                window: a.window,
                batch: a.batch,
                mix: a.mix,
                appliance_pid: a
                    .appliance_pid
                    .or_else(|| spawned.as_ref().and_then(Spawned::pid)),
                endpoints: a.endpoints,
                connect_concurrency: a.connect_concurrency,
                quiet: a.quiet,
                window_signals: None,
            };
            let out = ingest::run(&run).await?;
            out.report.emit(a.json.as_deref())?;
            drop(spawned);
            Ok(())
        }
        Command::Console(a) => {
            let tmp = tempfile::tempdir()?;
            let dir = a.data.clone().unwrap_or_else(|| tmp.path().join("central"));
            std::fs::create_dir_all(&dir)?;
            let run = outpost_bench::console::ConsoleRun {
                sites: a.sites,
                devices_per_site: a.devices,
                requests: a.requests,
                subscribers: a.subscribers,
                events: a.events,
            };
            let reports = outpost_bench::console::run(&run, &dir).await?;
            for r in &reports {
                r.emit(None)?;
            }
            if let Some(p) = &a.json {
                let all: Vec<serde_json::Value> = reports.iter().map(|r| r.json()).collect();
                std::fs::write(p, serde_json::to_string_pretty(&all)? + "\n")?;
            }
            Ok(())
        }
        Command::Uplink(a) => {
            let size = outpost_bench::uplink::size(a.devices)?;
            eprintln!(
                "uplink: {} raw bytes vs {} uplink bytes per device per hour ({}x smaller)",
                size.get("raw_bytes_per_device_hour").unwrap_or("?"),
                size.get("uplink_bytes_per_device_hour").unwrap_or("?"),
                size.get("reduction").unwrap_or("?"),
            );
            size.emit(None)?;
            let tmp = tempfile::tempdir()?;
            let dir = a
                .data
                .clone()
                .unwrap_or_else(|| tmp.path().join("central-db"));
            let run = outpost_bench::uplink::UplinkRun {
                devices: a.devices,
                sites: a.sites,
                batches: a.batches,
                threads: a.threads,
                full_every: a.full_every,
            };
            let mut reports = Vec::new();
            for store in &a.store {
                match store {
                    UplinkStore::Rocksdb => {
                        let (run, dir) = (run.clone(), dir.clone());
                        reports.push(
                            tokio::task::spawn_blocking(move || {
                                outpost_bench::uplink::apply(&run, &dir)
                            })
                            .await??,
                        );
                    }
                    UplinkStore::Postgres => {
                        for instances in [1, 2] {
                            reports.push(
                                outpost_bench::uplink::apply_postgres(&run, instances).await?,
                            );
                        }
                        let race = outpost_bench::uplink::race_postgres(&run).await?;
                        eprintln!(
                            "postgres, two instances racing {} batches: {} applied, {} duplicates",
                            race.get("batches").unwrap_or("?"),
                            race.get("applied").unwrap_or("?"),
                            race.get("duplicates").unwrap_or("?"),
                        );
                        reports.push(race);
                    }
                }
            }
            for rep in reports.iter().filter(|r| r.get("batches_per_s").is_some()) {
                eprintln!(
                    "central apply ({}{}): {} batches/s = {} sites x {} devices per minute",
                    rep.get("store").unwrap_or("?"),
                    rep.get("instances")
                        .map(|n| format!(", {n} instance(s)"))
                        .unwrap_or_default(),
                    rep.get("batches_per_s").unwrap_or("?"),
                    rep.get("sites_per_minute").unwrap_or("?"),
                    a.devices,
                );
            }
            if let [rep] = reports.as_slice() {
                return rep.emit(a.json.as_deref());
            }
            for rep in &reports {
                rep.emit(None)?;
            }
            if let Some(p) = &a.json {
                let all: Vec<serde_json::Value> = reports.iter().map(|r| r.json()).collect();
                std::fs::write(p, serde_json::to_string_pretty(&all)? + "\n")?;
            }
            Ok(())
        }
        Command::Peer(a) => {
            let target = match a.target {
                PeerKind::VictoriaMetrics => peers::Target::VictoriaMetrics { addr: a.addr },
                PeerKind::Zabbix => peers::Target::Zabbix { addr: a.addr },
            };
            let rep = peers::run(&peers::PeerRun {
                target,
                devices: a.devices,
                rate: a.rate,
                duration: a.duration,
                warmup: a.warmup,
                senders: a.senders,
                pid: a.pid,
                quiet: a.quiet,
            })
            .await?;
            rep.emit(a.json.as_deref())
        }
        Command::ZabbixSeed(a) => {
            print!("{}", peers::zabbix_seed_sql(a.devices));
            Ok(())
        }
        Command::OutpostDisk(a) => {
            let rep = tokio::task::spawn_blocking(move || peers::outpost_disk(&a.db, a.samples))
                .await??;
            rep.emit(a.json.as_deref())
        }
        Command::Storage(a) => {
            let tmp = tempfile::tempdir()?;
            let dir = a.data.clone().unwrap_or_else(|| tmp.path().join("db"));
            let rep = tokio::task::spawn_blocking(move || {
                storage_eff::run(
                    &StorageRun {
                        devices: a.devices,
                        interval_s: a.interval_s,
                        hours: a.hours,
                        values: a.values,
                    },
                    &dir,
                )
            })
            .await??;
            eprintln!(
                "storage: {} samples, {} bytes on disk (SST + WAL), {} bytes/sample ({} in the sample table)",
                rep.get("samples").unwrap_or("?"),
                rep.get("bytes_on_disk").unwrap_or("?"),
                rep.get("bytes_per_sample").unwrap_or("?"),
                rep.get("sample_table_bytes_per_sample").unwrap_or("?"),
            );
            rep.emit(a.json.as_deref())
        }
        Command::Alerts(a) => {
            let tmp = tempfile::tempdir()?;
            let (app, state) = spawn_for(&tmp, &a.outpost, &a.appliance_data, &a.state)?;
            let rep = alert_latency::run(
                &AlertRun {
                    agents: a.agents,
                    rate: a.rate,
                    mix: a.mix,
                    duration: a.duration,
                    warmup: a.warmup,
                    state,
                    interval: a.interval,
                    webhook_down: a.webhook_down,
                    quiet: a.quiet,
                },
                &app,
            )
            .await?;
            eprintln!("{}", rep.line());
            rep.emit(a.json.as_deref())
        }
        Command::Chaos(a) => {
            let tmp = tempfile::tempdir()?;
            let (mut app, state) = spawn_for(&tmp, &a.outpost, &a.appliance_data, &a.state)?;
            let seed = a.seed.unwrap_or_else(rand::random);
            let mut rep = chaos::run(
                &ChaosRun {
                    agents: a.agents,
                    rate: a.rate,
                    kills: a.kills,
                    up: (a.min_up, a.max_up),
                    down: (a.min_down, a.max_down),
                    state,
                    seed,
                    quiet: a.quiet,
                },
                &mut app,
            )
            .await?;
            rep.int("seed", seed);
            eprintln!("{}", rep.line());
            rep.emit(a.json.as_deref())?;
            let bad = ["lost", "duplicated", "gaps"]
                .iter()
                .any(|k| rep.get(k).is_some_and(|v| v != "0"));
            anyhow::ensure!(
                !bad,
                "chaos: acknowledged records lost, duplicated or out of order (see the RESULT line)"
            );
            Ok(())
        }
        Command::Commands(a) => {
            let tmp = tempfile::tempdir()?;
            let (app, state) = spawn_for(&tmp, &a.outpost, &a.appliance_data, &a.state)?;
            let rep = commands::run(
                &CommandsRun {
                    agents: a.agents,
                    singles: a.singles,
                    no_bulk: a.no_bulk,
                    state,
                    quiet: a.quiet,
                },
                &app,
            )
            .await?;
            eprintln!("{}", rep.line());
            rep.emit(a.json.as_deref())
        }
        Command::Storm(a) => {
            let tmp = tempfile::tempdir()?;
            let (app, state) = spawn_for(&tmp, &a.outpost, &a.appliance_data, &a.state)?;
            let out = storm::run(
                &StormRun {
                    agents: a.agents,
                    churn: a.churn,
                    rate: a.rate,
                    churn_sessions: a.churn_sessions,
                    duration: a.duration,
                    warmup: a.warmup,
                    state,
                    quiet: a.quiet,
                },
                &app,
            )
            .await?;
            out.report.emit(a.json.as_deref())
        }
        Command::Reconnect(a) => {
            let tmp = tempfile::tempdir()?;
            let (mut app, state) = spawn_for(&tmp, &a.outpost, &a.appliance_data, &a.state)?;
            let rep = reconnect::run(
                &ReconnectRun {
                    agents: a.agents,
                    rate: a.rate,
                    down: a.down,
                    state,
                    quiet: a.quiet,
                },
                &mut app,
            )
            .await?;
            eprintln!("{}", rep.line());
            rep.emit(a.json.as_deref())
        }
    }
}
