//! The chain of trust: an `InRelease` is accepted only with a valid
//! signature from a configured keyring and a `Date` not older than the last
//! one accepted for its suite (rollback/freeze defence), and not past its
//! `Valid-Until`. Its SHA-256 list becomes the expected content of every
//! index file of the suite (`cache_expect`); a verified `Packages`/`Sources`
//! index in turn states the expected content of every package file.
//! `InRelease` is revalidated upstream at most every `release_refresh`
//! (conditional request) and served stale, within its `Valid-Until`, while
//! upstream is unreachable.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use outpost_storage::now_ms;

use super::tables::{CACHE_EXPECT, CACHE_SUITES, CACHE_URLS};

use super::blobs::sha256;
use super::index::{Expect, SuiteState, UrlEntry};
use super::upstream::Validators;
use super::url::UpstreamUrl;
use super::{Cache, lock};
use outpost_apt::packages;
use outpost_apt::release::{self, Checksum};

/// How an InRelease answer was obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReleaseSource {
    /// Cached and fresh (within `release_refresh`) or revalidated (304 / same bytes).
    Cached,
    /// Newly downloaded and verified.
    Fetched,
    /// Cached copy served because upstream failed or sent something rejected.
    Stale,
}

/// An error for the client: HTTP status and message.
pub type ClientError = (u16, String);

impl Cache {
    fn release_lock(&self, url: &UpstreamUrl) -> Arc<tokio::sync::Mutex<()>> {
        lock(&self.release_locks)
            .entry(url.to_string())
            .or_default()
            .clone()
    }

    /// The current verified `InRelease` of `url` (…/dists/SUITE/InRelease),
    /// revalidating upstream when due.
    pub async fn release(
        &self,
        url: &UpstreamUrl,
    ) -> Result<(UrlEntry, ReleaseSource), ClientError> {
        let Some((suite, _)) = url.suite() else {
            return Err((404, format!("{url} is not under …/dists/SUITE/")));
        };
        let l = self.release_lock(url);
        let _guard = l.lock().await;
        let now = now_ms();
        let cached: Option<UrlEntry> = self
            .store
            .get::<UrlEntry>(CACHE_URLS, &url.key())
            .ok()
            .flatten()
            .filter(|e| self.blobs().contains(&e.sha256));
        let state: Option<SuiteState> = self
            .store
            .get::<SuiteState>(CACHE_SUITES, &suite.key())
            .ok()
            .flatten();
        if let Some(c) = &cached
            && now.saturating_sub(c.checked_ms) < self.cfg.release_refresh.as_millis() as u64
        {
            return Ok((c.clone(), ReleaseSource::Cached));
        }
        let m = &self.metrics.cache;
        let validators = cached
            .as_ref()
            .map(|c| Validators {
                etag: c.etag.clone(),
                last_modified: c.last_modified.clone(),
            })
            .unwrap_or_default();
        m.upstream_requests.inc();
        let resp = match self.upstream.request("GET", url, &validators, None).await {
            Ok(r) => r,
            Err(e) => {
                let (status, msg) = self.upstream_failure(e);
                return self.fallback(url, cached, state.as_ref(), status, msg);
            }
        };
        let status = resp.status().as_u16();
        let header = |n: &str| {
            resp.headers()
                .get(n)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let etag = header("etag");
        let last_modified = header("last-modified");
        match status {
            304 if cached.is_some() => {
                let mut c = cached.unwrap_or_else(|| unreachable!());
                c.checked_ms = now;
                self.put_url(url, &c);
                return Ok((c, ReleaseSource::Cached));
            }
            200 => {}
            404 => {
                m.upstream_errors.inc();
                return Err((404, format!("upstream has no {url} (404)")));
            }
            s => {
                m.upstream_errors.inc();
                return self.fallback(
                    url,
                    cached,
                    state.as_ref(),
                    502,
                    format!("upstream {url} answered {s}"),
                );
            }
        }
        let body = match self
            .upstream
            .read_body(url, resp.into_body(), self.cfg.max_release_bytes)
            .await
        {
            Ok(b) => b,
            Err(e) => {
                if matches!(e, super::upstream::UpstreamError::TooLarge { .. }) {
                    m.verify_failure("size_cap");
                }
                let (status, msg) = self.upstream_failure(e);
                return self.fallback(url, cached, state.as_ref(), status, msg);
            }
        };
        m.upstream_bytes.inc_by(body.len() as u64);
        let sha = sha256(&body);
        if let Some(c) = &cached
            && c.sha256 == sha
        {
            let mut c = c.clone();
            c.checked_ms = now;
            c.etag = etag;
            c.last_modified = last_modified;
            self.put_url(url, &c);
            return Ok((c, ReleaseSource::Cached));
        }
        // Verify the new InRelease.
        let signed = match self
            .keyrings
            .verify_clearsigned(&body, &self.dir.tmp_dir())
            .await
        {
            Ok(s) => s,
            Err(e) => {
                m.verify_failure("signature");
                self.quarantine_bytes(&body, url);
                return self.fallback(
                    url,
                    cached,
                    state.as_ref(),
                    502,
                    format!("{url} rejected: signature verification failed: {e}; not served"),
                );
            }
        };
        let info = match release::parse_release(&String::from_utf8_lossy(&signed)) {
            Ok(i) => i,
            Err(e) => {
                m.verify_failure("parse");
                self.quarantine_bytes(&body, url);
                return self.fallback(
                    url,
                    cached,
                    state.as_ref(),
                    502,
                    format!("{url} rejected: {e}"),
                );
            }
        };
        if let Some(prev) = &state
            && info.date_ms < prev.date_ms
        {
            m.verify_failure("rollback");
            self.quarantine_bytes(&body, url);
            return self.fallback(
                url,
                cached,
                state.as_ref(),
                502,
                format!(
                    "{url} rejected: its Date ({}) is older than the InRelease already accepted for this suite ({}): \
                     possible rollback or freeze attack",
                    fmt_ms(info.date_ms),
                    fmt_ms(prev.date_ms)
                ),
            );
        }
        if let Some(vu) = info.valid_until_ms
            && vu < now
        {
            m.verify_failure("expired");
            return self.fallback(
                url,
                cached,
                state.as_ref(),
                502,
                format!("{url} rejected: expired (Valid-Until {})", fmt_ms(vu)),
            );
        }
        // Accept: store the file, then its index in one batch.
        let dir = self.dir.clone();
        let body2 = body.clone();
        tokio::task::spawn_blocking(move || dir.store_bytes(&body2, &sha))
            .await
            .map_err(|e| (500, format!("storing {url}: {e}")))?
            .map_err(|e| (500, format!("storing {url}: {e}")))?;
        let entry = UrlEntry {
            sha256: sha,
            size: body.len() as u64,
            fetched_ms: now,
            checked_ms: now,
            etag,
            last_modified,
        };
        let new_state = SuiteState {
            date_ms: info.date_ms,
            valid_until_ms: info.valid_until_ms,
            sha256: sha,
            accepted_ms: now,
        };
        let res: anyhow::Result<()> = (|| {
            let mut b = self.store.batch();
            for (path, c) in &info.files {
                let e = Expect {
                    sha256: c.sha256,
                    size: c.size,
                    index_name: path.clone(),
                };
                let file_url = suite.with_path(format!("{}/{path}", suite.path));
                b.put(CACHE_EXPECT, &file_url.key(), &e)?;
                if info.by_hash {
                    let dir = path.rsplit_once('/').map(|(d, _)| d).unwrap_or("");
                    let bh = suite.with_path(format!(
                        "{}/{dir}/by-hash/SHA256/{}",
                        suite.path,
                        hex::encode(c.sha256)
                    ));
                    b.put(CACHE_EXPECT, &bh.key(), &e)?;
                }
            }
            b.put(CACHE_SUITES, &suite.key(), &new_state)?;
            b.put(CACHE_URLS, &url.key(), &entry)?;
            self.store.write(b)?;
            self.add_blob(sha, entry.size, &url.to_string())?;
            Ok(())
        })();
        res.map_err(|e| (500, format!("recording {url}: {e:#}")))?;
        tracing::info!(%url, files = info.files.len(), date = %fmt_ms(info.date_ms), "accepted InRelease");
        Ok((entry, ReleaseSource::Fetched))
    }

    /// Serves the cached InRelease when it is still valid, else the error.
    fn fallback(
        &self,
        url: &UpstreamUrl,
        cached: Option<UrlEntry>,
        state: Option<&SuiteState>,
        status: u16,
        msg: String,
    ) -> Result<(UrlEntry, ReleaseSource), ClientError> {
        let now = now_ms();
        match (cached, state) {
            (Some(c), Some(s))
                if s.valid_until_ms.is_none_or(|vu| vu > now) && s.sha256 == c.sha256 =>
            {
                tracing::warn!(%url, reason = %msg, "serving the last accepted InRelease");
                self.metrics.cache.stale_served.inc();
                Ok((c, ReleaseSource::Stale))
            }
            (Some(_), Some(s)) => Err((
                status,
                format!(
                    "{msg}; the cached copy expired (Valid-Until {})",
                    fmt_ms(s.valid_until_ms.unwrap_or(0))
                ),
            )),
            _ => Err((status, msg)),
        }
    }

    fn put_url(&self, url: &UpstreamUrl, e: &UrlEntry) {
        if let Err(err) = self.store.put(CACHE_URLS, &url.key(), e) {
            tracing::warn!(%url, error = %err, "recording a cache entry");
        }
    }

    fn quarantine_bytes(&self, body: &[u8], url: &UpstreamUrl) {
        let r = self
            .dir
            .temp_file()
            .and_then(|(p, _)| std::fs::write(&p, body).map(|_| p))
            .and_then(|p| self.dir.quarantine(&p, &url.to_string()));
        if let Err(e) = r {
            tracing::warn!(%url, error = %e, "quarantining a rejected file");
        }
    }

    /// The size and hash a verified index states for `url`. For an index
    /// file whose suite's InRelease is not known yet, fetches it first.
    pub async fn expected(&self, url: &UpstreamUrl) -> Result<Option<Expect>, ClientError> {
        let get = || {
            self.store
                .get::<Expect>(CACHE_EXPECT, &url.key())
                .map_err(|e| (500, format!("reading the cache index: {e}")))
        };
        if let Some(e) = get()? {
            return Ok(Some(e));
        }
        if let Some((suite, _)) = url.suite() {
            let inrelease = suite.with_path(format!("{}/InRelease", suite.path));
            let known = self
                .store
                .get::<SuiteState>(CACHE_SUITES, &suite.key())
                .ok()
                .flatten()
                .is_some();
            if !known {
                self.release(&inrelease).await?;
                return get();
            }
        }
        Ok(None)
    }

    /// Records the package files a verified `Packages`/`Sources` index
    /// lists (relative to the archive root of `url`), and notes the URL as
    /// recorded for this content.
    pub async fn record_index_entries(
        &self,
        url: &UpstreamUrl,
        index_name: &str,
        path: &Path,
        sha: super::index::Sha256,
    ) -> anyhow::Result<u64> {
        let Some((kind, comp)) = packages::package_index(index_name) else {
            self.note_recorded(url, sha, path)?;
            return Ok(0);
        };
        let Some(root) = url.archive_root() else {
            return Ok(0);
        };
        let store = self.store.clone();
        let p = path.to_path_buf();
        let n = tokio::task::spawn_blocking(move || -> anyhow::Result<u64> {
            let f = std::fs::File::open(&p).context("opening the index")?;
            let mut b = store.batch();
            let mut err = None;
            let n = packages::for_each_package_file(
                packages::decompress(f, comp),
                kind,
                |rel, Checksum { sha256, size }| {
                    let u =
                        root.with_path(format!("{}/{}", root.path, rel.trim_start_matches('/')));
                    let e = Expect {
                        sha256,
                        size,
                        index_name: String::new(),
                    };
                    if let Err(x) = b.put(CACHE_EXPECT, &u.key(), &e) {
                        err = Some(x);
                    }
                    if b.len() >= 10_000 {
                        let full = std::mem::replace(&mut b, store.batch());
                        if let Err(x) = store.write(full) {
                            err = Some(x);
                        }
                    }
                },
            )?;
            if let Some(e) = err {
                return Err(e.into());
            }
            store.write(b)?;
            Ok(n)
        })
        .await
        .context("index parser task")??;
        self.note_recorded(url, sha, path)?;
        tracing::debug!(%url, packages = n, "recorded package entries");
        Ok(n)
    }

    fn note_recorded(
        &self,
        url: &UpstreamUrl,
        sha: super::index::Sha256,
        path: &Path,
    ) -> anyhow::Result<()> {
        let size = std::fs::metadata(path)?.len();
        let now = now_ms();
        self.store.put(
            CACHE_URLS,
            &url.key(),
            &UrlEntry {
                sha256: sha,
                size,
                fetched_ms: now,
                checked_ms: now,
                etag: None,
                last_modified: None,
            },
        )?;
        Ok(())
    }

    /// Whether the package entries of a cached index were recorded for this URL.
    pub(crate) fn index_recorded(&self, url: &UpstreamUrl, sha: &super::index::Sha256) -> bool {
        self.store
            .get::<UrlEntry>(CACHE_URLS, &url.key())
            .ok()
            .flatten()
            .is_some_and(|e| &e.sha256 == sha)
    }
}

/// RFC 3339 for messages.
pub fn fmt_ms(ms: u64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| ms.to_string())
}
