//! `outpost-central patches report --format csv|json|pdf [--customer C]
//! [--site S] [--output FILE]`: the compliance report over the running
//! central's API (`GET /api/v1/patches/report`), with an API token like
//! `outpost-central commands`. The report's bytes go to stdout (or FILE)
//! unchanged; errors to stderr, exit code 0 only on success.
//!
//! Owns the CLI's arguments and its download only; the report is the API's.

use std::io::Write;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use clap::Subcommand;
use http_body_util::{BodyExt, Empty};
use hyper::Request;
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::cli::Conn;

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
            let body = get_raw(
                &conn,
                &report_path(&format, customer.as_deref(), site.as_deref()),
            )
            .await?;
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

/// The answer's bytes of a GET (an error for a non-success status).
async fn get_raw(c: &Conn, path: &str) -> anyhow::Result<Bytes> {
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let url = format!("{}{}", c.api.trim_end_matches('/'), path);
    let req = Request::builder()
        .method("GET")
        .uri(&url)
        .header("authorization", format!("Bearer {}", c.token))
        .body(Empty::new())
        .with_context(|| format!("building a request to {url}"))?;
    let resp = tokio::time::timeout(Duration::from_secs(120), client.request(req))
        .await
        .map_err(|_| anyhow!("{url}: no answer within 120 s"))?
        .with_context(|| format!("cannot reach central's API at {url} (is it running? --api)"))?;
    let status = resp.status();
    let bytes = resp
        .into_body()
        .collect()
        .await
        .with_context(|| format!("reading the answer from {url}"))?
        .to_bytes();
    if !status.is_success() {
        let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
        let msg = v
            .get("error")
            .and_then(|e| e.as_str())
            .map(str::to_string)
            .unwrap_or_else(|| String::from_utf8_lossy(&bytes).into_owned());
        bail!("{status}: {msg}");
    }
    Ok(bytes)
}

/// Percent-encodes a query value.
fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
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
