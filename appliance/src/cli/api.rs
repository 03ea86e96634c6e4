//! `outpost api METHOD PATH [-b BODY|@FILE]`: any admin API call, the
//! answer printed as it came.

use anyhow::Context;
use clap::Args;

use crate::client::AdminClient;

// No doc comment: clap would take it as the sub-command's help, which the
// `Command::Api` variant gives.
#[derive(Args, Debug)]
pub struct ApiArgs {
    /// GET, POST, PUT or DELETE.
    pub method: String,
    /// Path under the API, e.g. /api/v1/alerts.
    pub path: String,
    /// JSON body, or @FILE to read it from a file. (Not `--data`: that
    /// global flag names the data directory.)
    #[arg(long, short = 'b')]
    pub body: Option<String>,
}

/// Runs `outpost api`. The body file is read before the admin API is
/// located (`client`), so a missing file is the error reported first.
pub async fn run(
    args: ApiArgs,
    client: impl FnOnce() -> anyhow::Result<AdminClient>,
) -> anyhow::Result<()> {
    let ApiArgs { method, path, body } = args;
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
