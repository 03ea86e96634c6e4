//! Fetching an advisory feed from a URL (HTTP or HTTPS, webpki roots), with
//! a timeout and a size bound. The default public feeds:
//!
//! - Debian Security Tracker: [`DEBIAN_TRACKER_URL`] (`--format debian-tracker`);
//! - OSV: `https://osv-vulnerabilities.storage.googleapis.com/<Ecosystem>/all.zip`
//!   is a zip of one JSON record per file; unpack it and import the records
//!   (one record, an array, or one record per line) with `--format osv`.

use std::time::Duration;

use anyhow::{Context, bail};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;

/// The tracker's whole JSON (~80 MB).
pub const DEBIAN_TRACKER_URL: &str = "https://security-tracker.debian.org/tracker/data/json";

/// GETs `url`, refusing an answer other than 2xx or larger than `limit`.
pub async fn fetch(url: &str, limit: usize, timeout: Duration) -> anyhow::Result<Vec<u8>> {
    let client = crate::alerts::notify::webhook::client()?;
    let req = hyper::Request::get(url)
        .header("user-agent", concat!("outpost/", env!("CARGO_PKG_VERSION")))
        .body(Full::new(Bytes::new()))
        .with_context(|| format!("bad feed url {url:?}"))?;
    let resp = tokio::time::timeout(timeout, client.request(req))
        .await
        .map_err(|_| anyhow::anyhow!("{url}: no answer within {timeout:?}"))?
        .with_context(|| format!("fetching {url}"))?;
    let status = resp.status();
    if !status.is_success() {
        bail!("{url} answered {status}");
    }
    let mut body = resp.into_body();
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let frame = tokio::time::timeout_at(deadline, body.frame())
            .await
            .map_err(|_| anyhow::anyhow!("{url}: body not read within {timeout:?}"))?;
        let Some(frame) = frame else { break };
        let frame = frame.with_context(|| format!("reading {url}"))?;
        if let Ok(d) = frame.into_data() {
            if out.len() + d.len() > limit {
                bail!("{url}: feed larger than {limit} bytes");
            }
            out.extend_from_slice(&d);
        }
    }
    Ok(out)
}
