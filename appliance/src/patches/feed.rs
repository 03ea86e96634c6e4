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

/// Wait after start before the first scheduled fetch.
const FIRST_FETCH_DELAY: Duration = Duration::from_secs(30);

/// When a feed is due: never imported, or imported `interval` ago.
pub fn due(imported_at_ms: Option<u64>, now_ms: u64, interval_ms: u64) -> bool {
    imported_at_ms.is_none_or(|t| now_ms.saturating_sub(t) >= interval_ms)
}

/// Fetches one feed and imports it.
pub async fn fetch_and_import(
    service: &super::PatchService,
    feed: &super::config::FeedConfig,
    timeout: Duration,
) -> anyhow::Result<super::service::ImportOutcome> {
    let format = outpost_patch::catalog::FeedFormat::parse(&feed.format)
        .ok_or_else(|| anyhow::anyhow!("unknown feed format {:?}", feed.format))?;
    let body = match fetch(&feed.url, super::api::MAX_FEED_BYTES, timeout).await {
        Ok(b) => b,
        Err(e) => {
            service.note_import_failure();
            return Err(e);
        }
    };
    let s = service.clone();
    let (name, url) = (feed.name.clone(), feed.url.clone());
    let outcome =
        tokio::task::spawn_blocking(move || s.import(format, Some(&name), &url, &body)).await??;
    Ok(outcome)
}

/// Fetches the configured feeds on their schedule until shutdown.
pub async fn fetch_loop(
    service: super::PatchService,
    cfg: super::config::PatchesConfig,
    shutdown: tokio_util::sync::CancellationToken,
) {
    if cfg.feeds.is_empty() {
        return;
    }
    let interval_ms = cfg.fetch_interval.as_millis() as u64;
    let check = cfg.fetch_interval.min(Duration::from_secs(600));
    // Not in the first seconds of a start: the appliance is busy loading,
    // and a short-lived appliance (tests, a restart loop) fetches nothing.
    tokio::select! {
        _ = tokio::time::sleep(FIRST_FETCH_DELAY) => {}
        _ = shutdown.cancelled() => return,
    }
    loop {
        let now = outpost_storage::now_ms();
        for feed in &cfg.feeds {
            let imported = service.imported_at(&feed.name);
            if !due(imported, now, interval_ms) {
                continue;
            }
            match fetch_and_import(&service, feed, Duration::from_secs(300)).await {
                Ok(o) => {
                    tracing::info!(source = %o.source, advisories = o.advisories, "scheduled advisory fetch imported")
                }
                Err(e) => {
                    tracing::warn!(source = %feed.name, url = %feed.url, error = %format!("{e:#}"),
                    "scheduled advisory fetch failed; the catalog in service stays")
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(check) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}
