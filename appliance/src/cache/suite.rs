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

use anyhow::Context;
use outpost_storage::now_ms;

use super::tables::{CACHE_EXPECT, CACHE_SUITES, CACHE_URLS};

use super::blobs::sha256;
use super::index::{Expect, SuiteState, UrlEntry};
use super::upstream::Validators;
use super::url::{Suite, UpstreamUrl};
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
    /// The current verified `InRelease` of `url` (…/dists/SUITE/InRelease),
    /// revalidating upstream when due.
    pub async fn release(
        &self,
        url: &UpstreamUrl,
    ) -> Result<(UrlEntry, ReleaseSource), ClientError> {
        let Some(suite) = url.release_suite() else {
            return Err((404, format!("{url} is not under …/dists/SUITE/")));
        };
        let url_s = url.to_string();
        let _guard = self.release_locks.lock(&url_s).await;
        let now = now_ms();
        let cached: Option<UrlEntry> = self
            .store
            .get::<UrlEntry>(CACHE_URLS, &url.key())
            .ok()
            .flatten()
            .filter(|e| self.blobs().contains(&e.sha256));
        let state: Option<SuiteState> = self
            .store
            .get::<SuiteState>(CACHE_SUITES, &suite.url.key())
            .ok()
            .flatten();
        let m = &self.metrics.cache;
        if let Some(c) = &cached
            && now.saturating_sub(c.checked_ms) < self.cfg.release_refresh.as_millis() as u64
        {
            return self.confirmed(url, c.clone(), state.as_ref(), now);
        }
        // Upstream failed a moment ago: do not ask it again yet.
        let remembered = lock(&self.negative).get(&url_s, now);
        if let Some((status, msg)) = remembered {
            m.release_negative_hits.inc();
            return self.fallback(url, cached, state.as_ref(), status, msg);
        }
        let remember = |status: u16, msg: &str| {
            let until = now.saturating_add(self.cfg.release_failure_ttl.as_millis() as u64);
            lock(&self.negative).put(&url_s, until, now, status, msg);
        };
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
                remember(status, &msg);
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
                return self.confirmed(url, c, state.as_ref(), now);
            }
            200 => {}
            404 => {
                m.upstream_errors.inc();
                let msg = format!("upstream has no {url} (404)");
                remember(404, &msg);
                return Err((404, msg));
            }
            s => {
                m.upstream_errors.inc();
                let msg = format!("upstream {url} answered {s}");
                remember(502, &msg);
                return self.fallback(url, cached, state.as_ref(), 502, msg);
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
                remember(status, &msg);
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
            return self.confirmed(url, c, state.as_ref(), now);
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
        if let Err(rej) = release::judge_release(
            &info,
            suite.expected_dist(),
            state.as_ref().map(|s| s.date_ms),
            now,
            self.cfg.release_max_future.as_millis() as u64,
        ) {
            m.verify_failure(rej.reason());
            if !matches!(rej, release::Rejection::Expired { .. }) {
                self.quarantine_bytes(&body, url);
            }
            return self.fallback(
                url,
                cached,
                state.as_ref(),
                502,
                format!("{url} rejected: {rej}"),
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
                b.put(CACHE_EXPECT, &suite.file(path).key(), &e)?;
                if info.by_hash {
                    let dir = path.rsplit_once('/').map(|(d, _)| d).unwrap_or("");
                    let bh = suite.file(&format!("{dir}/by-hash/SHA256/{}", hex::encode(c.sha256)));
                    b.put(CACHE_EXPECT, &bh.key(), &e)?;
                }
            }
            b.put(CACHE_SUITES, &suite.url.key(), &new_state)?;
            b.put(CACHE_URLS, &url.key(), &entry)?;
            self.store.write(b)?;
            self.add_blob(sha, entry.size, &url_s)?;
            Ok(())
        })();
        res.map_err(|e| (500, format!("recording {url}: {e:#}")))?;
        tracing::info!(%url, suite = %suite.name, files = info.files.len(), date = %fmt_ms(info.date_ms), "accepted InRelease");
        Ok((entry, ReleaseSource::Fetched))
    }

    /// The cached copy, confirmed (fresh, a 304, or the same bytes again):
    /// trusted only until the Valid-Until of the InRelease accepted.
    fn confirmed(
        &self,
        url: &UpstreamUrl,
        c: UrlEntry,
        state: Option<&SuiteState>,
        now: u64,
    ) -> Result<(UrlEntry, ReleaseSource), ClientError> {
        if let Some(s) = state
            && s.sha256 == c.sha256
            && let Err(rej) = release::check_valid_until(s.valid_until_ms, now)
        {
            self.metrics.cache.verify_failure(rej.reason());
            return Err((
                502,
                format!("{url} rejected: {rej}, though upstream still serves it; not served"),
            ));
        }
        Ok((c, ReleaseSource::Cached))
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
        // The suites that may list it (`…/dists/A`, `…/dists/A/B`): if one
        // is known, its InRelease does not list this file.
        let candidates = url.suite_candidates();
        let known = |s: &Suite| {
            self.store
                .get::<SuiteState>(CACHE_SUITES, &s.url.key())
                .ok()
                .flatten()
                .is_some()
        };
        if candidates.iter().any(|(s, _)| known(s)) {
            return Ok(None);
        }
        // None known: fetch the InRelease of the first that has one
        // (`buster` has none when the suite is `buster/updates`).
        let mut first_err = None;
        for (s, _) in &candidates {
            match self.release(&s.inrelease()).await {
                Ok(_) => return get(),
                Err((404, msg)) => {
                    first_err.get_or_insert((404, msg));
                }
                Err(e) => return Err(e),
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(None),
        }
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

/// `POST /api/v1/cache/reset-suite`: what an operator's reset forgot.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ResetSuiteReport {
    /// The suite URL (`http://host/…/dists/NAME`).
    pub suite: String,
    /// Whether an accepted InRelease was recorded (its Date no longer
    /// bounds the next one).
    pub had_state: bool,
    /// Index entries of the suite forgotten (they come back with the next
    /// InRelease accepted).
    pub index_entries: u64,
}

impl Cache {
    /// Forgets what the cache trusts about a suite: its last accepted
    /// InRelease (so the rollback check starts afresh: for a suite frozen
    /// by an InRelease dated in the future, or a repository rebuilt with
    /// older dates), the index entries it listed and a remembered upstream
    /// failure. Cached files stay (by hash); the next request fetches and
    /// verifies the InRelease again. `url` is the suite URL or its InRelease.
    pub fn reset_suite(&self, url: &str) -> Result<ResetSuiteReport, String> {
        let u = UpstreamUrl::parse_absolute(url).map_err(|e| e.to_string())?;
        let suite = match u.release_suite() {
            Some(s) => s,
            None => {
                let i = u.path.find("/dists/").ok_or_else(|| {
                    format!("{u} is not a suite: give …/dists/SUITE or …/dists/SUITE/InRelease")
                })?;
                let name = u.path[i + "/dists/".len()..].to_string();
                if name.is_empty() {
                    return Err(format!("{u} names no suite after /dists/"));
                }
                Suite {
                    url: u.clone(),
                    name,
                }
            }
        };
        let suite_key = suite.url.key();
        let had_state = self
            .store
            .get::<SuiteState>(CACHE_SUITES, &suite_key)
            .map_err(|e| e.to_string())?
            .is_some();
        // Deeper suites (`…/dists/buster/updates` under `…/dists/buster`)
        // keep their entries.
        let mut prefix = suite_key.clone();
        prefix.push(b'/');
        let mut end = suite_key.clone();
        end.push(b'/' + 1);
        let mut deeper: Vec<Vec<u8>> = Vec::new();
        self.store
            .scan::<SuiteState>(CACHE_SUITES, &prefix, Some(&end), |k, _| {
                let mut d = k.to_vec();
                d.push(b'/');
                deeper.push(d);
                true
            })
            .map_err(|e| e.to_string())?;
        let mut keys = Vec::new();
        self.store
            .scan_raw(CACHE_EXPECT, &prefix, Some(&end), |k, _| {
                if !deeper.iter().any(|d| k.starts_with(d)) {
                    keys.push(k.to_vec());
                }
                Ok(true)
            })
            .map_err(|e| e.to_string())?;
        let mut b = self.store.batch();
        let res = (|| {
            for k in &keys {
                b.delete(CACHE_EXPECT, k)?;
            }
            b.delete(CACHE_SUITES, &suite_key)?;
            for f in ["InRelease", "Release"] {
                b.delete(CACHE_URLS, &suite.file(f).key())?;
            }
            self.store.write(b)
        })();
        res.map_err(|e| e.to_string())?;
        lock(&self.negative).remove_prefix(&format!("{}/", suite.url));
        tracing::warn!(suite = %suite.url, had_state, index_entries = keys.len(), "suite state reset by an operator");
        Ok(ResetSuiteReport {
            suite: suite.url.to_string(),
            had_state,
            index_entries: keys.len() as u64,
        })
    }
}

/// RFC 3339 for messages.
pub use outpost_apt::release::fmt_ms;
