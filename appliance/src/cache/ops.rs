//! Operations on the cache for the admin API and CLI: statistics,
//! prefetch (pre-warm before a maintenance window), re-verification of
//! every stored file, and pins (files an approved patch rollout needs are
//! never evicted). A pin taken for an owner (a deployment,
//! [`Cache::pin_owned`]) is released with its last owner
//! ([`Cache::release_owner`]); a pin an admin took stays until unpinned.

use std::sync::Arc;

use outpost_storage::now_ms;

use super::tables::{CACHE_PIN_OWNERS, CACHE_PINS, CACHE_URLS};
use serde::{Deserialize, Serialize};

use super::Cache;
use super::fetch::Progress;
use super::index::{PinRecord, Sha256, UrlEntry};
use super::url::{FileKind, UpstreamUrl};
use outpost_apt::packages;

/// A cached file and its requests, counted with the file (kept across
/// restarts, gone when the file is evicted).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TopFile {
    pub url: String,
    pub sha256: String,
    pub size: u64,
    /// Requests served from the stored file.
    pub hits: u64,
    /// Requests answered from upstream: the download that stored it and
    /// requests that joined that download.
    #[serde(default)]
    pub misses: u64,
}

/// Requests of one client address since `CacheStats::since_ms`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClientStat {
    pub client: String,
    pub requests: u64,
    pub hits: u64,
    pub bytes: u64,
}

/// `GET /api/v1/cache/stats`. The request and byte counters and `clients`
/// count since `since_ms` (this appliance process's start: they restart
/// with it); `top_files` and the stored figures are the cache's own,
/// kept across restarts.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CacheStats {
    /// Start of the counting period (ms): when the appliance started.
    #[serde(default)]
    pub since_ms: u64,
    /// Seconds since `since_ms`.
    #[serde(default)]
    pub uptime_s: u64,
    pub requests: u64,
    pub hits: u64,
    pub misses: u64,
    pub coalesced: u64,
    pub passthrough: u64,
    /// hits / (hits + misses + coalesced + passthrough).
    pub hit_ratio: f64,
    /// Body bytes sent to clients from complete cached files.
    pub bytes_from_cache: u64,
    /// Body bytes sent to clients while downloading or passing through.
    pub bytes_from_upstream: u64,
    /// Body bytes received from upstream.
    pub upstream_bytes: u64,
    pub upstream_requests: u64,
    pub upstream_errors: u64,
    pub verify_failures: u64,
    pub evictions: u64,
    pub stale_served: u64,
    pub stored_files: u64,
    pub stored_bytes: u64,
    pub max_bytes: u64,
    pub pinned_files: u64,
    pub allowed_hosts: Vec<String>,
    pub top_files: Vec<TopFile>,
    pub clients: Vec<ClientStat>,
}

/// `POST /api/v1/cache/prefetch`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct PrefetchRequest {
    /// Files to fetch (any file a verified index covers, or an InRelease).
    pub urls: Vec<String>,
    /// A `Packages`/`Sources` index: fetch it, then the package files it lists.
    pub index: Option<String>,
    /// With `index`: only these package names.
    pub packages: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PrefetchResult {
    pub url: String,
    /// `cached` (already there), `fetched`, or `error`.
    pub result: String,
    pub size: u64,
    pub error: Option<String>,
}

/// `POST /api/v1/cache/verify`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VerifyReport {
    pub checked: u64,
    pub bytes: u64,
    /// SHA-256 names of files that no longer match (quarantined and dropped).
    pub bad: Vec<String>,
}

/// `POST /api/v1/cache/pins`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PinRequest {
    pub url: String,
    #[serde(default)]
    pub reason: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PinInfo {
    pub url: String,
    pub sha256: String,
    pub size: u64,
    pub reason: String,
    pub since_ms: u64,
    /// Whether the file is currently stored.
    pub cached: bool,
}

/// Bound on the files one `prefetch --index` fetches.
const MAX_PREFETCH_FILES: usize = 10_000;

/// One binary package version a deployment installs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackageWanted {
    pub name: String,
    pub version: String,
    /// `None`: any architecture the indexes list.
    pub arch: Option<String>,
}

/// What [`Cache::prefetch_pin_packages`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackagePrefetch {
    /// Pool URLs pinned (fetched now or already cached).
    pub pinned: Vec<String>,
    /// Bytes fetched from upstream by this call.
    pub fetched_bytes: u64,
    /// Packages no verified index lists (`name=version`).
    pub unknown: Vec<String>,
    /// URLs that failed, with the reason.
    pub errors: Vec<(String, String)>,
}

/// Whether `url` is the pool file of `name` at `version` (the file name
/// `NAME_VERSION_ARCH.deb` Debian's archive tools give every binary, the
/// epoch dropped; `arch` `None` matches any, `all` always matches).
pub fn is_package_file(url: &str, name: &str, version: &str, arch: Option<&str>) -> bool {
    let file = url.rsplit('/').next().unwrap_or("");
    let Some(stem) = file.strip_suffix(".deb") else {
        return false;
    };
    let version = version.split_once(':').map_or(version, |(_, v)| v);
    let Some(rest) = stem
        .strip_prefix(name)
        .and_then(|r| r.strip_prefix('_'))
        .and_then(|r| r.strip_prefix(version))
        .and_then(|r| r.strip_prefix('_'))
    else {
        return false;
    };
    !rest.contains('_') && (rest == "all" || arch.is_none_or(|a| a == rest))
}

impl Cache {
    pub fn stats(&self) -> CacheStats {
        let m = &self.metrics.cache;
        let req = |r: &str| {
            m.requests
                .get_or_create(&crate::metrics::labels::ResultLabel {
                    result: r.to_string(),
                })
                .get()
        };
        let (hits, misses, coalesced, passthrough) = (
            m.hits.get(),
            m.misses.get(),
            m.coalesced.get(),
            req("passthrough"),
        );
        let denom = hits + misses + coalesced + passthrough;
        let requests = [
            "hit",
            "miss",
            "coalesced",
            "passthrough",
            "not_modified",
            "stale",
            "refused",
            "error",
            "head",
        ]
        .iter()
        .map(|r| req(r))
        .sum();
        let (top, files, bytes, pinned) = {
            let ix = self.blobs();
            (
                ix.top(10),
                ix.len() as u64,
                ix.total_bytes(),
                ix.pinned_files() as u64,
            )
        };
        let now = now_ms();
        CacheStats {
            since_ms: self.started_ms,
            uptime_s: now.saturating_sub(self.started_ms) / 1000,
            requests,
            hits,
            misses,
            coalesced,
            passthrough,
            hit_ratio: if denom == 0 {
                0.0
            } else {
                hits as f64 / denom as f64
            },
            bytes_from_cache: m.served_cache_bytes.get(),
            bytes_from_upstream: m.served_upstream_bytes.get(),
            upstream_bytes: m.upstream_bytes.get(),
            upstream_requests: m.upstream_requests.get(),
            upstream_errors: m.upstream_errors.get(),
            verify_failures: m.verify_failures_total(),
            evictions: m.evictions.get(),
            stale_served: m.stale_served.get(),
            stored_files: files,
            stored_bytes: bytes,
            max_bytes: self.cfg.max_bytes,
            pinned_files: pinned,
            allowed_hosts: self.allow.entries().cloned().collect(),
            top_files: top
                .into_iter()
                .map(|f| TopFile {
                    url: f.url,
                    sha256: hex::encode(f.sha256),
                    size: f.size,
                    hits: f.hits,
                    misses: f.misses,
                })
                .collect(),
            clients: self
                .client_counts()
                .into_iter()
                .map(|(ip, c)| ClientStat {
                    client: ip.to_string(),
                    requests: c.requests,
                    hits: c.hits,
                    bytes: c.bytes,
                })
                .collect(),
        }
    }

    /// Makes sure one file is cached. Returns its hash and size.
    pub async fn ensure_cached(
        self: &Arc<Self>,
        url: &UpstreamUrl,
    ) -> Result<(Sha256, u64, bool), String> {
        if !self.allow.allows(url) {
            return Err(format!("upstream host {} is not allowed", url.authority()));
        }
        if url.kind() == FileKind::InRelease {
            let (e, src) = self.release(url).await.map_err(|(_, m)| m)?;
            return Ok((
                e.sha256,
                e.size,
                src == super::suite::ReleaseSource::Fetched,
            ));
        }
        let e = self
            .expected(url)
            .await
            .map_err(|(_, m)| m)?
            .ok_or_else(|| {
                format!(
                    "no verified index covers {url}: only files listed in a verified Packages/Sources \
                     or InRelease can be prefetched (use --index with the suite's Packages file)"
                )
            })?;
        if self.blobs().contains(&e.sha256) {
            let path = self.dir.path(&e.sha256);
            if !e.index_name.is_empty()
                && packages::package_index(&e.index_name).is_some()
                && !self.index_recorded(url, &e.sha256)
            {
                self.record_index_entries(url, &e.index_name, &path, e.sha256)
                    .await
                    .map_err(|x| format!("{x:#}"))?;
            }
            return Ok((e.sha256, e.size, false));
        }
        let (fl, started, _interest) = self
            .join_or_start(url, &e, super::limits::Requester::Background)
            .await
            .map_err(|(_, m)| m)?;
        if started {
            self.metrics.cache.misses.inc();
        } else {
            self.metrics.cache.coalesced.inc();
        }
        let mut rx = fl.progress.subscribe();
        loop {
            match &*rx.borrow_and_update() {
                Progress::Complete => return Ok((e.sha256, e.size, true)),
                Progress::Failed { message, .. } => return Err(message.to_string()),
                Progress::Receiving(_) => {}
            }
            if rx.changed().await.is_err() {
                return Err("download vanished".into());
            }
        }
    }

    pub async fn prefetch(self: &Arc<Self>, req: PrefetchRequest) -> Vec<PrefetchResult> {
        let mut urls: Vec<String> = req.urls.clone();
        let mut out = Vec::new();
        if let Some(index) = &req.index {
            match self.index_files(index, &req.packages).await {
                Ok(list) => urls.extend(list),
                Err(e) => out.push(PrefetchResult {
                    url: index.clone(),
                    result: "error".into(),
                    size: 0,
                    error: Some(e),
                }),
            }
        }
        let sem = Arc::new(tokio::sync::Semaphore::new(4));
        let mut set = tokio::task::JoinSet::new();
        for (i, u) in urls.into_iter().enumerate() {
            let c = self.clone();
            let sem = sem.clone();
            set.spawn(async move {
                let _p = sem.acquire_owned().await;
                let r = match UpstreamUrl::parse_absolute(&u) {
                    Err(e) => Err(e.to_string()),
                    Ok(url) => c.ensure_cached(&url).await,
                };
                (
                    i,
                    match r {
                        Ok((_, size, fetched)) => PrefetchResult {
                            url: u,
                            result: if fetched { "fetched" } else { "cached" }.into(),
                            size,
                            error: None,
                        },
                        Err(e) => PrefetchResult {
                            url: u,
                            result: "error".into(),
                            size: 0,
                            error: Some(e),
                        },
                    },
                )
            });
        }
        let mut results = Vec::new();
        while let Some(r) = set.join_next().await {
            if let Ok(r) = r {
                results.push(r);
            }
        }
        results.sort_by_key(|(i, _)| *i);
        out.extend(results.into_iter().map(|(_, r)| r));
        out
    }

    /// Caches a Packages/Sources index and lists the package URLs it names
    /// (only `packages` if not empty).
    async fn index_files(
        self: &Arc<Self>,
        index: &str,
        packages: &[String],
    ) -> Result<Vec<String>, String> {
        let url = UpstreamUrl::parse_absolute(index).map_err(|e| e.to_string())?;
        let (sha, _, _) = self.ensure_cached(&url).await?;
        let e = self
            .expected(&url)
            .await
            .map_err(|(_, m)| m)?
            .ok_or_else(|| format!("{url} is not covered by a verified InRelease"))?;
        let (kind, comp) = packages::package_index(&e.index_name)
            .ok_or_else(|| format!("{url} is not a Packages or Sources index"))?;
        let root = url
            .archive_root()
            .ok_or_else(|| format!("{url} is not under …/dists/"))?;
        let path = self.dir.path(&sha);
        let packages = packages.to_vec();
        tokio::task::spawn_blocking(move || {
            let f = std::fs::File::open(&path).map_err(|e| e.to_string())?;
            let mut list = Vec::new();
            packages::for_each_package_file(packages::decompress(f, comp), kind, |rel, _| {
                let name = rel.rsplit('/').next().unwrap_or("");
                if (packages.is_empty()
                    || packages.iter().any(|p| name.starts_with(&format!("{p}_"))))
                    && list.len() < MAX_PREFETCH_FILES
                {
                    list.push(root.with_path(format!("{}/{rel}", root.path)).to_string());
                }
            })
            .map_err(|e| e.to_string())?;
            Ok(list)
        })
        .await
        .map_err(|e| e.to_string())?
    }

    /// The pool URLs of `want` that the verified indexes the cache holds
    /// list (`cache_expect`: every file of every `Packages` index whose
    /// InRelease verified).
    pub fn package_urls(&self, want: &PackageWanted) -> Result<Vec<String>, String> {
        let mut out = Vec::new();
        self.store
            .scan_raw(super::tables::CACHE_EXPECT, &[], None, |k, _| {
                let url = String::from_utf8_lossy(k);
                if is_package_file(&url, &want.name, &want.version, want.arch.as_deref()) {
                    out.push(url.into_owned());
                }
                Ok(out.len() < MAX_PREFETCH_FILES)
            })
            .map_err(|e| format!("reading the cache index: {e}"))?;
        Ok(out)
    }

    /// Fetches (through the verifying path) and pins every file of
    /// `packages`, so a deployment's installs never wait on the WAN and
    /// the files stay until unpinned. `reason` is stored with each pin.
    pub async fn prefetch_pin_packages(
        self: &Arc<Self>,
        packages: &[PackageWanted],
        reason: &str,
    ) -> PackagePrefetch {
        let mut out = PackagePrefetch::default();
        for p in packages {
            let urls = match self.package_urls(p) {
                Ok(u) => u,
                Err(e) => {
                    out.errors.push((format!("{}={}", p.name, p.version), e));
                    continue;
                }
            };
            if urls.is_empty() {
                out.unknown.push(format!("{}={}", p.name, p.version));
            }
            for url in urls {
                let fetched = match UpstreamUrl::parse_absolute(&url) {
                    Err(e) => Err(e.to_string()),
                    Ok(u) => self.ensure_cached(&u).await,
                };
                match fetched {
                    Err(e) => out.errors.push((url, e)),
                    Ok((_, size, fetched)) => {
                        if fetched {
                            out.fetched_bytes += size;
                        }
                        match self.pin_owned(&url, reason).await {
                            Ok(_) => out.pinned.push(url),
                            Err(e) => out.errors.push((url, e)),
                        }
                    }
                }
            }
        }
        out
    }

    /// Re-hashes every stored file; bad ones are quarantined and dropped.
    pub async fn verify_all(self: &Arc<Self>) -> VerifyReport {
        let files = self.blobs().all();
        let c = self.clone();
        let r = tokio::task::spawn_blocking(move || {
            let mut rep = VerifyReport {
                checked: 0,
                bytes: 0,
                bad: Vec::new(),
            };
            for (sha, size) in files {
                let path = c.dir.path(&sha);
                rep.checked += 1;
                match super::blobs::hash_file(&path) {
                    Ok((h, n)) if h == sha && n == size => rep.bytes += n,
                    other => {
                        tracing::warn!(sha = %hex::encode(sha), result = ?other.map(|(h, n)| (hex::encode(h), n)), "cached file failed re-verification");
                        if path.exists() {
                            let _ = c.dir.quarantine(&path, &hex::encode(sha));
                        }
                        c.drop_blob(&sha);
                        c.metrics.cache.verify_failure("rehash");
                        rep.bad.push(hex::encode(sha));
                    }
                }
            }
            rep
        })
        .await;
        r.unwrap_or(VerifyReport {
            checked: 0,
            bytes: 0,
            bad: vec!["verification task failed".into()],
        })
    }

    /// Pins a URL's file (fetching it first if needed).
    pub async fn pin(self: &Arc<Self>, req: &PinRequest) -> Result<PinInfo, String> {
        let url = UpstreamUrl::parse_absolute(&req.url).map_err(|e| e.to_string())?;
        let (sha, size, _) = self.ensure_cached(&url).await?;
        let rec = PinRecord {
            sha256: sha,
            size,
            reason: req.reason.clone(),
            since_ms: now_ms(),
        };
        let old: Option<PinRecord> = self
            .store
            .get(CACHE_PINS, &url.key())
            .map_err(|e| e.to_string())?;
        self.store
            .put(CACHE_PINS, &url.key(), &rec)
            .map_err(|e| e.to_string())?;
        {
            let mut ix = self.blobs();
            if let Some(o) = old {
                ix.unpin(&o.sha256);
            }
            ix.pin(sha);
        }
        self.update_gauges();
        Ok(pin_info(url.to_string(), &rec, true))
    }

    pub fn unpin(&self, url: &str) -> Result<bool, String> {
        let url = UpstreamUrl::parse_absolute(url).map_err(|e| e.to_string())?;
        let old: Option<PinRecord> = self
            .store
            .get(CACHE_PINS, &url.key())
            .map_err(|e| e.to_string())?;
        let Some(o) = old else {
            return Ok(false);
        };
        let mut b = self.store.batch();
        b.delete(CACHE_PINS, &url.key())
            .and_then(|()| self.store.write(b))
            .map_err(|e| e.to_string())?;
        self.blobs().unpin(&o.sha256);
        self.update_gauges();
        self.evict_over_cap();
        Ok(true)
    }

    /// Pins a URL's file (fetching it first if needed) for `owner`: the
    /// pin stays while any owner holds it, or for good if an admin pinned
    /// it (its record keeps the admin's reason). Record and owner written
    /// in one batch.
    pub async fn pin_owned(self: &Arc<Self>, url: &str, owner: &str) -> Result<PinInfo, String> {
        let url = UpstreamUrl::parse_absolute(url).map_err(|e| e.to_string())?;
        let (sha, size, _) = self.ensure_cached(&url).await?;
        let old: Option<PinRecord> = self
            .store
            .get(CACHE_PINS, &url.key())
            .map_err(|e| e.to_string())?;
        let key = url.key();
        let mut b = self.store.batch();
        // The index holds one pin per pinned URL: `replaced` is the file
        // of this URL's record before (if any and different).
        let (rec, replaced, new) = match old {
            Some(o) if o.sha256 == sha => (o, None, false),
            other => {
                let replaced = other.as_ref().map(|o| o.sha256);
                let rec = PinRecord {
                    sha256: sha,
                    size,
                    reason: other.map_or_else(|| owner.to_string(), |o| o.reason),
                    since_ms: now_ms(),
                };
                b.put(CACHE_PINS, &key, &rec).map_err(|e| e.to_string())?;
                (rec, replaced, true)
            }
        };
        let (by_owner, by_url) = owner_key(owner, &key);
        b.put_raw(CACHE_PIN_OWNERS, &by_owner, &[])
            .and_then(|()| b.put_raw(CACHE_PIN_OWNERS, &by_url, &[]))
            .and_then(|()| self.store.write(b))
            .map_err(|e| e.to_string())?;
        if new {
            let mut ix = self.blobs();
            if let Some(o) = replaced {
                ix.unpin(&o);
            }
            ix.pin(sha);
        }
        self.update_gauges();
        Ok(pin_info(url.to_string(), &rec, true))
    }

    pub fn pins(&self) -> Result<Vec<PinInfo>, String> {
        let mut out = Vec::new();
        let ix = self.blobs();
        self.store
            .scan::<PinRecord>(CACHE_PINS, &[], None, |k, r| {
                out.push(pin_info(
                    String::from_utf8_lossy(k).into_owned(),
                    &r,
                    ix.contains(&r.sha256),
                ));
                true
            })
            .map_err(|e| e.to_string())?;
        Ok(out)
    }

    /// The cached entry of a mutable URL (InRelease), if any.
    pub fn url_entry(&self, url: &UpstreamUrl) -> Option<UrlEntry> {
        self.store.get(CACHE_URLS, &url.key()).ok().flatten()
    }
}

/// The two keys of one (owner, URL) in `cache_pin_owners`: `o`, the
/// owner's length (u16 big endian), owner, URL key; and `u`, the URL
/// key's length, URL key, owner.
pub fn owner_key(owner: &str, url_key: &[u8]) -> (Vec<u8>, Vec<u8>) {
    (
        [owner_prefix(owner).as_slice(), url_key].concat(),
        [url_prefix(url_key).as_slice(), owner.as_bytes()].concat(),
    )
}

fn owner_prefix(owner: &str) -> Vec<u8> {
    let len = u16::try_from(owner.len()).unwrap_or(u16::MAX);
    [b"o".as_slice(), &len.to_be_bytes(), owner.as_bytes()].concat()
}

fn url_prefix(url_key: &[u8]) -> Vec<u8> {
    let len = u16::try_from(url_key.len()).unwrap_or(u16::MAX);
    [b"u".as_slice(), &len.to_be_bytes(), url_key].concat()
}

/// What [`Cache::release_owner`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Released {
    /// Pins removed (no owner left, not an admin's).
    pub unpinned: Vec<String>,
    /// Pins kept: another owner holds them, or an admin pinned them.
    pub kept: Vec<String>,
}

impl Cache {
    /// Releases every pin `owner` holds: a URL no other owner holds is
    /// unpinned (unless an admin pinned it: its record names another
    /// reason), then the cache evicts over its cap. Idempotent.
    pub fn release_owner(&self, owner: &str) -> Result<Released, String> {
        let e = |e: outpost_storage::StorageError| e.to_string();
        let prefix = owner_prefix(owner);
        let end = outpost_storage::keys::prefix_successor(&prefix);
        let mut urls: Vec<Vec<u8>> = Vec::new();
        self.store
            .scan_raw(CACHE_PIN_OWNERS, &prefix, end.as_deref(), |k, _| {
                urls.push(k[prefix.len()..].to_vec());
                Ok(true)
            })
            .map_err(e)?;
        let mut out = Released::default();
        for url in urls {
            let (by_owner, by_url) = owner_key(owner, &url);
            let mut b = self.store.batch();
            b.delete(CACHE_PIN_OWNERS, &by_owner).map_err(e)?;
            b.delete(CACHE_PIN_OWNERS, &by_url).map_err(e)?;
            // Other owners of this URL.
            let up = url_prefix(&url);
            let up_end = outpost_storage::keys::prefix_successor(&up);
            let mut others = Vec::new();
            self.store
                .scan_raw(CACHE_PIN_OWNERS, &up, up_end.as_deref(), |k, _| {
                    if k != by_url.as_slice() {
                        others.push(String::from_utf8_lossy(&k[up.len()..]).into_owned());
                    }
                    Ok(others.is_empty())
                })
                .map_err(e)?;
            let name = String::from_utf8_lossy(&url).into_owned();
            let rec: Option<PinRecord> = self.store.get(CACHE_PINS, &url).map_err(e)?;
            let mut unpin = None;
            match rec {
                None => {}
                Some(mut r) if r.reason == owner => {
                    if let Some(next) = others.first() {
                        // Handed to the next owner.
                        r.reason = next.clone();
                        b.put(CACHE_PINS, &url, &r).map_err(e)?;
                        out.kept.push(name);
                    } else {
                        b.delete(CACHE_PINS, &url).map_err(e)?;
                        unpin = Some(r.sha256);
                        out.unpinned.push(name);
                    }
                }
                // An admin's pin, or another owner's record.
                Some(_) => out.kept.push(name),
            }
            self.store.write(b).map_err(e)?;
            if let Some(sha) = unpin {
                self.blobs().unpin(&sha);
            }
        }
        if !out.unpinned.is_empty() {
            self.update_gauges();
            self.evict_over_cap();
        }
        Ok(out)
    }
}

fn pin_info(url: String, r: &PinRecord, cached: bool) -> PinInfo {
    PinInfo {
        url,
        sha256: hex::encode(r.sha256),
        size: r.size,
        reason: r.reason.clone(),
        since_ms: r.since_ms,
        cached,
    }
}

#[cfg(test)]
mod tests {
    use super::is_package_file;
    use super::*;
    use crate::cache::index::Expect;
    use crate::cache::tables::CACHE_EXPECT;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A test repository's upstream: serves `files` (path → bytes) over
    /// HTTP/1.1 and counts the GETs per path.
    async fn upstream(
        files: Vec<(&'static str, Vec<u8>)>,
    ) -> (String, Arc<std::sync::Mutex<Vec<String>>>) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let hits = Arc::new(std::sync::Mutex::new(Vec::new()));
        let h = hits.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut c, _)) = l.accept().await else {
                    return;
                };
                let files = files.clone();
                let h = h.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 1024];
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        match c.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let head = String::from_utf8_lossy(&buf).into_owned();
                    let path = head.split_whitespace().nth(1).unwrap_or("").to_string();
                    h.lock().unwrap().push(path.clone());
                    let resp = match files.iter().find(|(p, _)| *p == path) {
                        Some((_, body)) => {
                            let mut r = format!(
                                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nContent-Type: application/octet-stream\r\nConnection: close\r\n\r\n",
                                body.len()
                            )
                            .into_bytes();
                            r.extend_from_slice(body);
                            r
                        }
                        None => b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_vec(),
                    };
                    let _ = c.write_all(&resp).await;
                    let _ = c.shutdown().await;
                });
            }
        });
        (format!("127.0.0.1:{}", addr.port()), hits)
    }

    fn sha(b: &[u8]) -> Sha256 {
        use sha2::Digest;
        sha2::Sha256::digest(b).into()
    }

    /// The real cache over the appliance database, allowed to fetch from
    /// `host`, with the pool files of a test repository recorded as a
    /// verified `Packages` index lists them (`cache_expect`).
    fn cache_with(dir: &std::path::Path, host: &str, files: &[(String, Vec<u8>)]) -> Arc<Cache> {
        let store =
            crate::db::open(&dir.join("db"), &outpost_storage::StoreOptions::default()).unwrap();
        for (url, body) in files {
            let u = UpstreamUrl::parse_absolute(url).unwrap();
            store
                .put(
                    CACHE_EXPECT,
                    &u.key(),
                    &Expect {
                        sha256: sha(body),
                        size: body.len() as u64,
                        index_name: String::new(),
                    },
                )
                .unwrap();
        }
        let cfg = crate::config::CacheConfig {
            allow_hosts: vec![host.to_string()],
            allow_apt_sources: false,
            keyrings: Vec::new(),
            min_free_bytes: 0,
            ..Default::default()
        };
        Cache::open(
            &dir.join("cache"),
            cfg,
            None,
            store,
            Arc::new(crate::metrics::Metrics::new()),
            tokio_util::sync::CancellationToken::new(),
        )
        .unwrap()
    }

    fn wanted(name: &str, version: &str) -> PackageWanted {
        PackageWanted {
            name: name.into(),
            version: version.into(),
            arch: Some("amd64".into()),
        }
    }

    /// Prefetch of a deployment's versions through the real cache: each
    /// file is fetched upstream once and pinned for the deployment; the
    /// version no index lists is reported unknown; a second deployment of
    /// the same file shares the pin, which goes with the last owner; an
    /// admin's pin survives every release.
    #[tokio::test]
    async fn prefetched_packages_are_fetched_once_pinned_per_deployment_and_released_with_the_last()
    {
        let hello = b"hello 1.1-2 deb".repeat(100);
        let lib = b"libhello 1.1-2 deb".repeat(50);
        let (host, hits) = upstream(vec![
            (
                "/debian/pool/main/h/hello/hello_1.1-2_amd64.deb",
                hello.clone(),
            ),
            (
                "/debian/pool/main/h/hello/libhello_1.1-2_all.deb",
                lib.clone(),
            ),
        ])
        .await;
        let hello_url = format!("http://{host}/debian/pool/main/h/hello/hello_1.1-2_amd64.deb");
        let lib_url = format!("http://{host}/debian/pool/main/h/hello/libhello_1.1-2_all.deb");
        let dir = tempfile::tempdir().unwrap();
        let cache = cache_with(
            dir.path(),
            &host,
            &[
                (hello_url.clone(), hello.clone()),
                (lib_url.clone(), lib.clone()),
            ],
        );
        let want = [
            wanted("hello", "1.1-2"),
            wanted("libhello", "1.1-2"),
            wanted("hello", "9.9"),
        ];
        let r = cache.prefetch_pin_packages(&want, "deployment dep-a").await;
        assert_eq!(r.errors, Vec::<(String, String)>::new());
        assert_eq!(
            r.pinned
                .iter()
                .cloned()
                .collect::<std::collections::BTreeSet<_>>(),
            [hello_url.clone(), lib_url.clone()].into_iter().collect()
        );
        assert_eq!(r.fetched_bytes, (hello.len() + lib.len()) as u64);
        assert_eq!(r.unknown, vec!["hello=9.9".to_string()]);
        // A second deployment of hello: cached already, nothing fetched.
        let r2 = cache
            .prefetch_pin_packages(&want[..1], "deployment dep-b")
            .await;
        assert_eq!(r2.pinned, vec![hello_url.clone()]);
        assert_eq!(r2.fetched_bytes, 0);
        assert_eq!(
            hits.lock().unwrap().len(),
            2,
            "each file fetched upstream once"
        );
        let pins = |c: &Cache| {
            c.pins()
                .unwrap()
                .into_iter()
                .map(|p| (p.url, p.reason))
                .collect::<std::collections::BTreeMap<_, _>>()
        };
        assert_eq!(pins(&cache).len(), 2);
        assert_eq!(cache.blobs().pinned_files(), 2);
        // dep-a ends: libhello goes, hello stays (dep-b holds it).
        let rel = cache.release_owner("deployment dep-a").unwrap();
        assert_eq!(rel.unpinned, vec![lib_url.clone()]);
        assert_eq!(rel.kept, vec![hello_url.clone()]);
        assert_eq!(
            pins(&cache),
            [(hello_url.clone(), "deployment dep-b".to_string())]
                .into_iter()
                .collect()
        );
        assert_eq!(cache.blobs().pinned_files(), 1);
        // Released again: nothing held, nothing changes.
        assert_eq!(
            cache.release_owner("deployment dep-a").unwrap(),
            Released::default()
        );
        // An admin pins hello too; dep-b ends: the admin's pin stays.
        cache
            .pin(&PinRequest {
                url: hello_url.clone(),
                reason: "keep for the lab".into(),
            })
            .await
            .unwrap();
        let rel = cache.release_owner("deployment dep-b").unwrap();
        assert!(rel.unpinned.is_empty(), "{rel:?}");
        assert_eq!(
            pins(&cache),
            [(hello_url.clone(), "keep for the lab".to_string())]
                .into_iter()
                .collect()
        );
        assert_eq!(cache.blobs().pinned_files(), 1);
        // The pins as reloaded from the database at the next start agree.
        let store = cache.store.clone();
        drop(cache);
        let owners = {
            let mut n = 0;
            store
                .scan_raw(CACHE_PIN_OWNERS, &[], None, |_, _| {
                    n += 1;
                    Ok(true)
                })
                .unwrap();
            n
        };
        assert_eq!(owners, 0, "no owner left behind");
    }

    #[test]
    fn a_pool_file_is_matched_by_name_version_without_epoch_and_architecture() {
        let u = "http://deb.example/debian/pool/main/o/openssl/openssl_3.0.2-1_amd64.deb";
        assert!(is_package_file(u, "openssl", "3.0.2-1", None));
        assert!(is_package_file(u, "openssl", "3.0.2-1", Some("amd64")));
        assert!(is_package_file(u, "openssl", "1:3.0.2-1", Some("amd64")));
        assert!(!is_package_file(u, "openssl", "3.0.2-1", Some("arm64")));
        assert!(!is_package_file(u, "openssl", "3.0.2", None));
        assert!(!is_package_file(u, "openss", "l_3.0.2-1", None));
        assert!(!is_package_file(u, "libssl3", "3.0.2-1", None));
        let all = "http://h/debian/pool/main/hello-outpost_1.1-1_all.deb";
        assert!(is_package_file(
            all,
            "hello-outpost",
            "1.1-1",
            Some("amd64")
        ));
        assert!(!is_package_file(
            "http://h/debian/dists/stable/InRelease",
            "InRelease",
            "1",
            None
        ));
        assert!(!is_package_file(
            "http://h/pool/a_1_amd64.dsc",
            "a",
            "1",
            None
        ));
    }
}
