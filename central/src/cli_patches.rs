//! `outpost-central patches report --format csv|json|pdf [--customer C]
//! [--site S] [--output FILE]`: the compliance report over the running
//! central's API (`GET /api/v1/patches/report`), with an API token like
//! `outpost-central commands`. The report's bytes go to stdout (or FILE)
//! unchanged; errors to stderr, exit code 0 only on success.
//!
//! Owns the CLI's arguments and its download only; the report is the API's.

use std::io::Write;
use std::time::Duration;

use anyhow::Context;
use clap::Subcommand;

use crate::cli::{Conn, call_raw, enc};

#[derive(Debug, Subcommand)]
pub enum PatchesCmd {
    /// The patch compliance report of the token's scope (one customer's
    /// with --customer): per device, with the top missing patches and
    /// open CVEs in the PDF.
    Report {
        #[command(flatten)]
        conn: Conn,
        /// `csv`, `json` or `pdf`.
        #[arg(long, default_value = "csv")]
        format: String,
        #[arg(long)]
        customer: Option<String>,
        #[arg(long)]
        site: Option<String>,
        /// Write the report to this file instead of stdout.
        #[arg(long)]
        output: Option<std::path::PathBuf>,
    },
}

/// The report's path and query.
pub fn report_path(format: &str, customer: Option<&str>, site: Option<&str>) -> String {
    let mut path = format!("/api/v1/patches/report?format={}", enc(format));
    for (k, v) in [("customer", customer), ("site", site)] {
        if let Some(v) = v {
            path.push_str(&format!("&{k}={}", enc(v)));
        }
    }
    path
}

/// Runs a `patches` subcommand.
pub async fn run(cmd: PatchesCmd) -> anyhow::Result<()> {
    match cmd {
        PatchesCmd::Report {
            conn,
            format,
            customer,
            site,
            output,
        } => {
            let path = report_path(&format, customer.as_deref(), site.as_deref());
            let body = call_raw(&conn, "GET", &path, None, Duration::from_secs(120)).await?;
            match output {
                Some(path) => std::fs::write(&path, &body)
                    .with_context(|| format!("writing the report to {}", path.display())),
                None => {
                    let mut out = std::io::stdout().lock();
                    out.write_all(&body)
                        .and_then(|()| out.flush())
                        .context("writing the report to stdout")
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_report_path_carries_the_format_and_an_escaped_customer() {
        assert_eq!(
            report_path("pdf", Some("acme & co"), None),
            "/api/v1/patches/report?format=pdf&customer=acme%20%26%20co"
        );
        assert_eq!(
            report_path("csv", None, Some("s1")),
            "/api/v1/patches/report?format=csv&site=s1"
        );
    }
}
