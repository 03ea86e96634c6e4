//! LAN patch cache: an apt-compatible caching HTTP proxy on `cache_listen`
//! that fetches each package once per site, verifies it against signed
//! indexes before it is served, and serves LAN peers from disk with
//! `sendfile`.
//!
//! Owns: the cache directory (`DATA/cache/`), the `cache_*` column
//! families, the `outpost_cache_*` metrics, and the `/api/v1/cache/*`
//! routes. It touches no other table and no agent-facing state.
//!
//! The pure parsers live in the `outpost-apt` crate (no RocksDB, fuzzed):
//! request targets → upstream URLs ([`url`], re-exported), request heads
//! and `Range`, InRelease fields and Packages / Sources indexes.
//!
//! Files: [`allow`]
//! (upstream allow-list from apt sources), [`http`] (client HTTP/1.1 and
//! sendfile), [`upstream`] (hyper client), [`gpg`] (InRelease signatures via
//! gpgv), [`blobs`]
//! (content-addressed files), [`index`] (database records and the LRU),
//! [`fetch`] (coalesced downloads), [`suite`] (InRelease revalidation and
//! the verified-index table), [`server`] (accept loop and request
//! handling), [`ops`] (stats, prefetch, verify, pins) and [`api`]; its
//! admin CLI (`outpost cache …`) is [`crate::cli::cache`].

pub mod allow;
pub mod api;
pub mod blobs;
pub mod fetch;
pub mod gpg;
pub mod http;
pub mod index;
pub mod limits;
pub mod metrics;
pub mod ops;
pub mod server;
pub mod suite;
pub mod tables;
pub mod upstream;

/// Upstream URLs (parsing, normalisation, suites, kinds): pure, in
/// `outpost-apt` so that they can be fuzzed without RocksDB.
pub use outpost_apt::url;

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::Context;
use outpost_storage::Store;
use tables::{CACHE_BLOBS, CACHE_MISSES, CACHE_PINS};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::CacheConfig;
use crate::metrics::Metrics;
use allow::AllowList;
use blobs::BlobDir;
use fetch::InFlight;
use gpg::Keyrings;
use index::{BlobIndex, BlobMeta, PinRecord, Sha256};
use upstream::Upstream;

/// Requests and bytes per client address (for `cache stats`).
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct ClientCounts {
    pub requests: u64,
    pub hits: u64,
    pub bytes: u64,
}

/// At most this many client addresses are tracked (then new ones are not).
const MAX_TRACKED_CLIENTS: usize = 4096;

/// The cache service, shared by every connection, download and API call.
pub struct Cache {
    /// Configuration (`[cache]`).
    pub cfg: CacheConfig,
    /// The appliance database (only the `cache_*` column families are used).
    pub store: Store,
    /// Files on disk.
    pub dir: BlobDir,
    /// Complete files: sizes, recency, pins. Locked briefly, never across await.
    blobs: Mutex<BlobIndex>,
    /// Downloads in progress, by the SHA-256 they must have: a second
    /// request for the same content joins instead of fetching again.
    pub(crate) inflight: Mutex<HashMap<Sha256, Arc<InFlight>>>,
    /// One InRelease revalidation at a time per URL (pruned when unused).
    pub(crate) release_locks: limits::KeyedLocks,
    /// InRelease URLs whose upstream failed a moment ago.
    pub(crate) negative: Mutex<limits::NegativeCache>,
    /// Upstream downloads running, in all and per client.
    pub(crate) slots: Mutex<limits::DownloadSlots>,
    /// Woken when a download slot is given back (prefetch and pins wait).
    pub(crate) slot_freed: tokio::sync::Notify,
    /// Sizes of the downloads in flight: their `tmp/` files count against
    /// `max_bytes`. Taken before `blobs` when both are needed.
    pub(crate) reserved_bytes: Mutex<u64>,
    /// Bytes already written to `tmp/` by downloads in flight.
    pub(crate) tmp_written: std::sync::atomic::AtomicU64,
    /// Allowed upstream hosts.
    pub allow: AllowList,
    /// Keyrings that sign InRelease files.
    pub keyrings: Keyrings,
    pub upstream: Upstream,
    pub metrics: Arc<Metrics>,
    /// Per-client counters, bounded by [`MAX_TRACKED_CLIENTS`].
    clients: Mutex<HashMap<IpAddr, ClientCounts>>,
    /// Downloads run here so that a client disconnecting does not stop a
    /// download other clients (or the cache) are waiting for.
    pub tasks: TaskTracker,
    pub shutdown: CancellationToken,
    /// When this process opened the cache: the request counters (metrics
    /// and per-client counts) count from here; `cache stats` says so.
    pub started_ms: u64,
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

/// Locks a std mutex, recovering from poisoning (the data are counters and
/// indexes that stay consistent across a panicking holder).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Cache {
    /// Opens the cache in `root` (created if needed): removes partial
    /// downloads, reconciles the database with the files on disk.
    pub fn open(
        root: &Path,
        cfg: CacheConfig,
        apt_dir: Option<&Path>,
        store: Store,
        metrics: Arc<Metrics>,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Arc<Cache>> {
        let (dir, partials) = BlobDir::open(root)
            .with_context(|| format!("creating the cache directory {}", root.display()))?;
        if partials > 0 {
            tracing::info!(partials, "removed interrupted downloads");
        }
        let allow = AllowList::build(
            &cfg.allow_hosts,
            if cfg.allow_apt_sources { apt_dir } else { None },
        );
        let keyrings = Keyrings::expand(&cfg.keyrings);
        if keyrings.files.is_empty() {
            tracing::warn!(
                "no cache keyring found: InRelease files cannot be verified and nothing will be cached"
            );
        }
        let slots = limits::DownloadSlots::new(
            cfg.max_downloads.max(1),
            cfg.max_downloads_per_client.max(1),
        );
        let cache = Cache {
            upstream: Upstream::new(cfg.upstream_timeout, allow.clone()),
            cfg,
            store,
            dir,
            blobs: Mutex::new(BlobIndex::default()),
            inflight: Mutex::new(HashMap::new()),
            release_locks: limits::KeyedLocks::default(),
            negative: Mutex::new(limits::NegativeCache::default()),
            slots: Mutex::new(slots),
            slot_freed: tokio::sync::Notify::new(),
            reserved_bytes: Mutex::new(0),
            tmp_written: std::sync::atomic::AtomicU64::new(0),
            allow,
            keyrings,
            metrics,
            clients: Mutex::new(HashMap::new()),
            tasks: TaskTracker::new(),
            shutdown,
            started_ms: outpost_storage::now_ms(),
        };
        cache.load().context("loading the cache index")?;
        Ok(Arc::new(cache))
    }

    /// Rebuilds the in-memory index from the database and the disk.
    fn load(&self) -> anyhow::Result<()> {
        let on_disk: HashMap<Sha256, u64> = self.dir.list()?.into_iter().collect();
        let mut metas: Vec<(Sha256, BlobMeta)> = Vec::new();
        let mut stale = Vec::new();
        self.store
            .scan::<BlobMeta>(CACHE_BLOBS, &[], None, |k, v| {
                match <Sha256>::try_from(k) {
                    Ok(sha) if on_disk.get(&sha) == Some(&v.size) => metas.push((sha, v)),
                    _ => stale.push(k.to_vec()),
                }
                true
            })?;
        // Verified files renamed into place just before a crash, before their
        // metadata was written: adopt them (a file is only renamed there
        // after its hash was checked).
        let known: std::collections::HashSet<Sha256> = metas.iter().map(|(s, _)| *s).collect();
        for (sha, size) in &on_disk {
            if !known.contains(sha) {
                metas.push((
                    *sha,
                    BlobMeta {
                        size: *size,
                        last_access_ms: 0,
                        hits: 0,
                        url: String::new(),
                    },
                ));
            }
        }
        let mut misses: HashMap<Sha256, u64> = HashMap::new();
        self.store.scan::<u64>(CACHE_MISSES, &[], None, |k, v| {
            match <Sha256>::try_from(k) {
                Ok(sha) if known.contains(&sha) => {
                    misses.insert(sha, v);
                }
                _ => stale.push(k.to_vec()),
            }
            true
        })?;
        metas.sort_by_key(|(_, m)| m.last_access_ms);
        let mut ix = lock(&self.blobs);
        for (sha, m) in &metas {
            ix.insert(*sha, m, misses.get(sha).copied().unwrap_or(0));
        }
        let mut pins = 0;
        self.store
            .scan::<PinRecord>(CACHE_PINS, &[], None, |_, p| {
                ix.pin(p.sha256);
                pins += 1;
                true
            })?;
        drop(ix);
        if !stale.is_empty() {
            let mut b = self.store.batch();
            for k in &stale {
                b.delete(CACHE_BLOBS, k)?;
                b.delete(CACHE_MISSES, k)?;
            }
            self.store.write(b)?;
        }
        self.update_gauges();
        tracing::info!(
            files = metas.len(),
            pins,
            dropped_records = stale.len(),
            "cache index loaded"
        );
        Ok(())
    }

    pub(crate) fn blobs(&self) -> MutexGuard<'_, BlobIndex> {
        lock(&self.blobs)
    }

    pub(crate) fn update_gauges(&self) {
        let ix = self.blobs();
        let m = &self.metrics.cache;
        m.stored_bytes.set(ix.total_bytes() as i64);
        m.stored_files.set(ix.len() as i64);
        m.pinned_files.set(ix.pinned_files() as i64);
    }

    /// Records a newly completed file (already renamed into place) and evicts
    /// beyond the size cap.
    pub(crate) fn add_blob(&self, sha: Sha256, size: u64, url: &str) -> anyhow::Result<()> {
        let meta = BlobMeta {
            size,
            last_access_ms: outpost_storage::now_ms(),
            hits: 0,
            url: url.to_string(),
        };
        self.store.put(CACHE_BLOBS, &sha, &meta)?;
        // Misses counted while it downloaded join it here (persisted by
        // the next `flush_access`).
        self.blobs().insert(sha, &meta, 0);
        self.evict_over_cap();
        self.update_gauges();
        Ok(())
    }

    /// Removes least recently used unpinned files beyond `max_bytes`
    /// (less the downloads in flight, whose files will need the room).
    pub(crate) fn evict_over_cap(&self) {
        let reserved = *lock(&self.reserved_bytes);
        let victims = {
            let mut ix = self.blobs();
            let v = ix.eviction_victims(self.cfg.max_bytes.saturating_sub(reserved));
            for (sha, _) in &v {
                ix.remove(sha);
            }
            v
        };
        self.remove_victims(&victims);
        let ix = self.blobs();
        if ix.total_bytes() > self.cfg.max_bytes {
            tracing::warn!(
                stored = ix.total_bytes(),
                max = self.cfg.max_bytes,
                "cache over its size cap: every remaining file is pinned"
            );
        }
    }

    /// Deletes evicted files (already out of the index) and their records.
    fn remove_victims(&self, victims: &[(Sha256, u64)]) {
        if victims.is_empty() {
            return;
        }
        let mut b = self.store.batch();
        for (sha, size) in victims {
            if let Err(e) = self.dir.remove(sha) {
                tracing::warn!(sha = %hex::encode(sha), error = %e, "removing an evicted file");
            }
            if let Err(e) = b
                .delete(CACHE_BLOBS, sha)
                .and_then(|()| b.delete(CACHE_MISSES, sha))
            {
                tracing::warn!(error = %e, "recording an eviction");
            }
            self.metrics.cache.evictions.inc();
            self.metrics.cache.evicted_bytes.inc_by(*size);
            tracing::debug!(sha = %hex::encode(sha), size, "evicted");
        }
        if let Err(e) = self.store.write(b) {
            tracing::warn!(error = %e, "recording evictions");
        }
    }

    /// Makes room for a download of `size` bytes and reserves it: within
    /// `max_bytes` counting the downloads in flight, and above the
    /// `min_free_bytes` reserve of the filesystem (evicting least recently
    /// used files if needed). The reservation ends with the guard.
    pub(crate) fn reserve_space(
        self: &Arc<Self>,
        size: u64,
    ) -> Result<SpaceReservation, limits::NoSpace> {
        let free_disk_bytes = match rustix::fs::statvfs(self.dir.root()) {
            Ok(st) => Some(st.f_bavail.saturating_mul(st.f_frsize)),
            Err(e) => {
                tracing::warn!(error = %e, "reading the cache filesystem's free space");
                None
            }
        };
        let mut reserved = lock(&self.reserved_bytes);
        let written = self.tmp_written.load(std::sync::atomic::Ordering::Relaxed);
        let victims = {
            let mut ix = self.blobs();
            let view = limits::SpaceView {
                stored_bytes: ix.total_bytes(),
                reserved_bytes: *reserved,
                unwritten_bytes: reserved.saturating_sub(written),
                evictable_bytes: ix.evictable_bytes(),
                free_disk_bytes,
                max_bytes: self.cfg.max_bytes,
                min_free_bytes: self.cfg.min_free_bytes,
            };
            let evict = limits::admit(&view, size)?;
            let v = ix.victims_for(evict);
            for (sha, _) in &v {
                ix.remove(sha);
            }
            v
        };
        *reserved += size;
        self.metrics.cache.reserved_bytes.set(*reserved as i64);
        drop(reserved);
        if !victims.is_empty() {
            self.remove_victims(&victims);
            self.update_gauges();
        }
        Ok(SpaceReservation {
            cache: self.clone(),
            size,
        })
    }

    /// Drops a file found bad (quarantined by the caller).
    pub(crate) fn drop_blob(&self, sha: &Sha256) {
        self.blobs().remove(sha);
        let mut b = self.store.batch();
        if let Err(e) = b
            .delete(CACHE_BLOBS, sha)
            .and_then(|()| b.delete(CACHE_MISSES, sha))
            .and_then(|()| self.store.write(b))
        {
            tracing::warn!(sha = %hex::encode(sha), error = %e, "forgetting a dropped file");
        }
        self.update_gauges();
    }

    /// Persists hit and miss counts and access times (unsynced: losing
    /// some on a crash only makes LRU order slightly older and the counts
    /// slightly lower).
    pub fn flush_access(&self) {
        let dirty = self.blobs().take_dirty();
        if dirty.is_empty() {
            return;
        }
        let mut b = self.store.batch();
        for (sha, meta, misses) in &dirty {
            if let Err(e) = b
                .put(CACHE_BLOBS, sha, meta)
                .and_then(|()| b.put(CACHE_MISSES, sha, misses))
            {
                tracing::warn!(error = %e, "encoding cache access times");
            }
        }
        if let Err(e) = self.store.write_unsynced(b) {
            tracing::warn!(error = %e, "persisting cache access times");
        }
    }

    /// Counts a request of `client`.
    pub(crate) fn count_client(&self, client: IpAddr, hit: bool, bytes: u64) {
        let mut c = lock(&self.clients);
        if c.len() >= MAX_TRACKED_CLIENTS && !c.contains_key(&client) {
            return;
        }
        let e = c.entry(client).or_default();
        e.requests += 1;
        e.hits += u64::from(hit);
        e.bytes += bytes;
    }

    pub(crate) fn client_counts(&self) -> Vec<(IpAddr, ClientCounts)> {
        let mut v: Vec<_> = lock(&self.clients)
            .iter()
            .map(|(k, v)| (*k, v.clone()))
            .collect();
        v.sort_by_key(|e| std::cmp::Reverse(e.1.bytes));
        v
    }
}

/// Room reserved for a download in flight (its `tmp/` file counts
/// against `max_bytes` until it is stored or dropped).
pub(crate) struct SpaceReservation {
    cache: Arc<Cache>,
    size: u64,
}

impl Drop for SpaceReservation {
    fn drop(&mut self) {
        let mut r = lock(&self.cache.reserved_bytes);
        *r = r.saturating_sub(self.size);
        self.cache.metrics.cache.reserved_bytes.set(*r as i64);
    }
}

/// Starts the cache: binds `cfg.cache_listen`, serves until `shutdown`.
/// Returns the cache handle (for the admin API) and the bound address.
pub async fn start(
    data_dir: &Path,
    cfg: &crate::config::Config,
    store: Store,
    metrics: Arc<Metrics>,
    tracker: &TaskTracker,
    shutdown: CancellationToken,
) -> anyhow::Result<(Arc<Cache>, std::net::SocketAddr)> {
    let cache = Cache::open(
        &data_dir.join("cache"),
        cfg.cache.clone(),
        Some(Path::new("/etc/apt")),
        store,
        metrics,
        shutdown.clone(),
    )?;
    let listener = tokio::net::TcpListener::bind(cfg.cache_listen)
        .await
        .with_context(|| format!("binding the patch cache on {}", cfg.cache_listen))?;
    let addr = listener.local_addr()?;
    tracing::info!(
        %addr,
        allowed = ?cache.allow.entries().collect::<Vec<_>>(),
        keyrings = cache.keyrings.files.len(),
        "patch cache listening"
    );
    tracker.spawn(server::accept_loop(listener, cache.clone()));
    {
        let c = cache.clone();
        tracker.spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            loop {
                tokio::select! {
                    _ = c.shutdown.cancelled() => break,
                    _ = tick.tick() => c.flush_access(),
                }
            }
            c.tasks.close();
            let _ = tokio::time::timeout(Duration::from_secs(5), c.tasks.wait()).await;
            c.flush_access();
        });
    }
    Ok((cache, addr))
}
