//! `outpost`: the site appliance binary. Parses the command line
//! ([`outpost_appliance::cli`], one module per subsystem), starts the async
//! runtime and dispatches; errors go to stderr with exit code 1.

use std::process::ExitCode;

use outpost_appliance::cli::{self, Cli, Command};
use outpost_appliance::client::AdminClient;
use outpost_appliance::site::DataDir;

/// mimalloc, not the system allocator: ingest allocates per metric value
/// on the tokio workers (names and labels, decoded per frame) and frees on
/// the writer thread; glibc's malloc spent 43 % of the workers' CPU on it
/// at the realistic mix (`benches/RESULTS.md`, "the head of raw samples in
/// blocks").
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    let cli = Cli::parse_args();
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
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let data = DataDir(cli.data.clone());
    let client = || AdminClient::locate(&data, cli.api.clone(), cli.token.clone());
    match cli.command {
        Command::Serve(args) => cli::serve::run(data, args).await,
        Command::CaFingerprint => cli::serve::ca_fingerprint(&data),
        Command::Token(cmd) => cli::tokens::run(cmd, client()?).await,
        Command::Devices(args) => cli::devices::list(args, client()?).await,
        Command::Device(cmd) => cli::devices::run(cmd, client()?).await,
        Command::Cache(cmd) => cli::cache::run(cmd, client()?).await,
        Command::Alerts(args) => cli::alerts::run(args, client()?).await,
        Command::Api(args) => cli::api::run(args, client).await,
        Command::Uplink(cmd) => cli::uplink::run(cmd, client()?).await,
        Command::Users(cmd) => cli::users::run(cmd, client()?).await,
        Command::Commands(cmd) => cli::commands::run(cmd, client()?).await,
        Command::Scripts(cmd) => cli::scripts::run(cmd, client()?).await,
        Command::Files(cmd) => cli::files::run(cmd, client()?).await,
        Command::AgentInstaller(args) => cli::installer::run(args, &data, client()?).await,
        Command::Advisories(cmd) => cli::patches::run_advisories(cmd, client()?).await,
        Command::Patches(cmd) => cli::patches::run_patches(cmd, client()?).await,
        Command::ApprovalRules(cmd) => cli::deploy::run_rules(cmd, client()?).await,
        Command::Deployments(cmd) => cli::deploy::run_deployments(cmd, client()?).await,
    }
}
