//! The cache's bounds as plain state, decided without I/O (time and free
//! disk space are parameters): per-URL locks that do not outlive their
//! users, the negative cache of failing InRelease fetches, upstream
//! download slots (global and per client), and the space a new download
//! may take (`max_bytes` counting files still in `tmp/`, and a free-disk
//! reserve for RocksDB). The async code in `suite`, `fetch` and `server`
//! only applies what these return.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use super::lock;

/// One async mutex per key (one InRelease revalidation per URL at a
/// time); an entry lives only while someone holds or waits for it.
#[derive(Debug, Default)]
pub struct KeyedLocks {
    map: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// Holds a [`KeyedLocks`] entry; dropping it unlocks and prunes.
pub struct KeyedGuard<'a> {
    locks: &'a KeyedLocks,
    key: String,
    entry: Arc<tokio::sync::Mutex<()>>,
    guard: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl KeyedLocks {
    pub async fn lock(&self, key: &str) -> KeyedGuard<'_> {
        let entry = lock(&self.map).entry(key.to_string()).or_default().clone();
        let guard = entry.clone().lock_owned().await;
        KeyedGuard {
            locks: self,
            key: key.to_string(),
            entry,
            guard: Some(guard),
        }
    }

    /// Keys with a holder or a waiter.
    pub fn len(&self) -> usize {
        lock(&self.map).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Drop for KeyedGuard<'_> {
    fn drop(&mut self) {
        self.guard.take();
        let mut map = lock(&self.locks.map);
        // The map's reference and ours: nobody else holds or waits (a new
        // locker clones under the map lock, which is held here).
        if Arc::strong_count(&self.entry) == 2 {
            map.remove(&self.key);
        }
    }
}

/// A failed InRelease fetch remembered for a short time, so that a
/// failing upstream is not asked again by every client (`release_failure_ttl`).
#[derive(Debug, Default)]
pub struct NegativeCache {
    /// URL → (until ms, status, message).
    entries: HashMap<String, (u64, u16, String)>,
}

/// Bound on remembered failures (then the expired go, then new ones are
/// not remembered).
const MAX_NEGATIVE: usize = 4096;

impl NegativeCache {
    /// The remembered failure of `key`, if still fresh at `now_ms`.
    pub fn get(&mut self, key: &str, now_ms: u64) -> Option<(u16, String)> {
        match self.entries.get(key) {
            Some((until, status, msg)) if *until > now_ms => Some((*status, msg.clone())),
            Some(_) => {
                self.entries.remove(key);
                None
            }
            None => None,
        }
    }

    /// Remembers a failure until `until_ms`. False if the cache is full.
    pub fn put(&mut self, key: &str, until_ms: u64, now_ms: u64, status: u16, msg: &str) -> bool {
        if self.entries.len() >= MAX_NEGATIVE && !self.entries.contains_key(key) {
            self.entries.retain(|_, (until, _, _)| *until > now_ms);
            if self.entries.len() >= MAX_NEGATIVE {
                return false;
            }
        }
        self.entries
            .insert(key.to_string(), (until_ms, status, msg.to_string()));
        true
    }

    pub fn remove(&mut self, key: &str) {
        self.entries.remove(key);
    }

    /// Forgets every entry whose key starts with `prefix`.
    pub fn remove_prefix(&mut self, prefix: &str) {
        self.entries.retain(|k, _| !k.starts_with(prefix));
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Who wants a download: a LAN client, or the cache itself (prefetch,
/// pin), whose downloads run to the end even when nobody streams them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Requester {
    Client(IpAddr),
    Background,
}

/// Why no new upstream download may start now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Busy {
    /// `max_downloads` are running.
    Global,
    /// This client already started `max_downloads_per_client`.
    Client,
}

impl Busy {
    pub fn reason(self) -> &'static str {
        match self {
            Busy::Global => "downloads_busy",
            Busy::Client => "client_downloads",
        }
    }
}

/// Upstream downloads running, in all and per client that started them.
#[derive(Debug)]
pub struct DownloadSlots {
    max: usize,
    max_per_client: usize,
    active: usize,
    by_client: HashMap<IpAddr, usize>,
}

impl DownloadSlots {
    pub fn new(max: usize, max_per_client: usize) -> DownloadSlots {
        DownloadSlots {
            max,
            max_per_client,
            active: 0,
            by_client: HashMap::new(),
        }
    }

    /// Takes a slot for `who`, or says why not.
    pub fn try_take(&mut self, who: Requester) -> Result<(), Busy> {
        if self.active >= self.max {
            return Err(Busy::Global);
        }
        if let Requester::Client(ip) = who {
            let n = self.by_client.entry(ip).or_default();
            if *n >= self.max_per_client {
                if *n == 0 {
                    self.by_client.remove(&ip);
                }
                return Err(Busy::Client);
            }
            *n += 1;
        }
        self.active += 1;
        Ok(())
    }

    pub fn give_back(&mut self, who: Requester) {
        self.active = self.active.saturating_sub(1);
        if let Requester::Client(ip) = who
            && let Some(n) = self.by_client.get_mut(&ip)
        {
            *n -= 1;
            if *n == 0 {
                self.by_client.remove(&ip);
            }
        }
    }

    pub fn active(&self) -> usize {
        self.active
    }
}

/// The disk as a new download finds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpaceView {
    /// Complete cached files.
    pub stored_bytes: u64,
    /// Sizes of the downloads in flight (their files in `tmp/` grow to it).
    pub reserved_bytes: u64,
    /// Of those, bytes not written yet (they will still take disk space).
    pub unwritten_bytes: u64,
    /// Stored bytes that eviction may remove (unpinned).
    pub evictable_bytes: u64,
    /// Free space of the cache's filesystem, if known.
    pub free_disk_bytes: Option<u64>,
    pub max_bytes: u64,
    /// Free space kept for RocksDB and the rest of the appliance.
    pub min_free_bytes: u64,
}

/// Why a download may not start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoSpace {
    /// Larger than `max_bytes` itself.
    TooLarge,
    /// Within `max_bytes` only by evicting pinned files or downloads in flight.
    CacheFull,
    /// It would bring the filesystem's free space under `min_free_bytes`.
    DiskReserve,
}

impl NoSpace {
    pub fn reason(self) -> &'static str {
        match self {
            NoSpace::TooLarge => "too_large_for_cache",
            NoSpace::CacheFull => "cache_full",
            NoSpace::DiskReserve => "disk_reserve",
        }
    }
}

/// Whether a download of `size` bytes may start, and how many stored
/// bytes must be evicted first (least recently used, unpinned).
pub fn admit(v: &SpaceView, size: u64) -> Result<u64, NoSpace> {
    if size > v.max_bytes {
        return Err(NoSpace::TooLarge);
    }
    let for_cap = v
        .stored_bytes
        .saturating_add(v.reserved_bytes)
        .saturating_add(size)
        .saturating_sub(v.max_bytes);
    if for_cap > v.evictable_bytes {
        return Err(NoSpace::CacheFull);
    }
    let for_disk = match v.free_disk_bytes {
        Some(free) => v
            .min_free_bytes
            .saturating_add(v.unwritten_bytes)
            .saturating_add(size)
            .saturating_sub(free),
        None => 0,
    };
    if for_disk > v.evictable_bytes {
        return Err(NoSpace::DiskReserve);
    }
    Ok(for_cap.max(for_disk))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_lock_map_keeps_no_entry_once_nobody_holds_it() {
        let locks = KeyedLocks::default();
        for i in 0..1000 {
            let _g = locks.lock(&format!("http://h/dists/s{i}/InRelease")).await;
        }
        assert!(locks.is_empty(), "{} entries left", locks.len());
        // A waiter keeps the entry until it is done too.
        let locks = Arc::new(locks);
        let g = locks.lock("k").await;
        let l2 = locks.clone();
        let waiter = tokio::spawn(async move {
            let _g = l2.lock("k").await;
        });
        tokio::task::yield_now().await;
        assert_eq!(locks.len(), 1);
        drop(g);
        assert_eq!(locks.len(), 1, "the waiter still needs it");
        waiter.await.unwrap();
        assert!(locks.is_empty());
    }

    #[test]
    fn a_failure_is_remembered_until_its_deadline_only() {
        let mut n = NegativeCache::default();
        assert!(n.put("u", 1_000, 0, 502, "down"));
        assert_eq!(n.get("u", 999), Some((502, "down".into())));
        assert_eq!(n.get("u", 1_000), None);
        assert!(n.is_empty(), "expired entries go when read");
        for i in 0..MAX_NEGATIVE {
            assert!(n.put(&format!("u{i}"), 10, 0, 502, "x"));
        }
        assert!(!n.put("more", 10, 5, 502, "x"), "full: not remembered");
        assert!(n.put("more", 20, 10, 502, "x"), "the expired make room");
        assert_eq!(n.len(), 1);
        n.remove_prefix("mo");
        assert!(n.is_empty());
    }

    #[test]
    fn download_slots_cap_all_downloads_and_each_client() {
        let a = Requester::Client("10.0.0.1".parse().unwrap());
        let b = Requester::Client("10.0.0.2".parse().unwrap());
        let mut s = DownloadSlots::new(3, 2);
        assert_eq!(s.try_take(a), Ok(()));
        assert_eq!(s.try_take(a), Ok(()));
        assert_eq!(s.try_take(a), Err(Busy::Client));
        assert_eq!(s.try_take(b), Ok(()));
        assert_eq!(s.try_take(Requester::Background), Err(Busy::Global));
        s.give_back(a);
        assert_eq!(s.try_take(Requester::Background), Ok(()));
        assert_eq!(s.active(), 3);
        for w in [a, b, Requester::Background] {
            s.give_back(w);
        }
        assert_eq!(s.active(), 0);
        assert!(s.by_client.is_empty(), "no entry left per client");
    }

    fn view() -> SpaceView {
        SpaceView {
            stored_bytes: 600,
            reserved_bytes: 300,
            unwritten_bytes: 100,
            evictable_bytes: 500,
            free_disk_bytes: None,
            max_bytes: 1_000,
            min_free_bytes: 0,
        }
    }

    #[test]
    fn downloads_in_flight_count_against_max_bytes() {
        // 600 stored + 300 in tmp/ + 100 new = the cap: nothing to evict.
        assert_eq!(admit(&view(), 100), Ok(0));
        // 200 new: 100 over the cap, evicted first (the old code counted
        // only complete files and let tmp/ grow past the cap).
        assert_eq!(admit(&view(), 200), Ok(100));
        assert_eq!(admit(&view(), 1_001), Err(NoSpace::TooLarge));
        let pinned = SpaceView {
            evictable_bytes: 50,
            ..view()
        };
        assert_eq!(admit(&pinned, 200), Err(NoSpace::CacheFull));
    }

    #[test]
    fn the_free_disk_reserve_evicts_or_refuses() {
        let disk = SpaceView {
            free_disk_bytes: Some(1_000),
            min_free_bytes: 800,
            ..view()
        };
        // 800 reserve + 100 still to be written + 100 new = the free space.
        assert_eq!(admit(&disk, 100), Ok(0));
        assert_eq!(admit(&disk, 150), Ok(50));
        let tight = SpaceView {
            free_disk_bytes: Some(500),
            ..disk
        };
        assert_eq!(admit(&tight, 100), Ok(500));
        assert_eq!(admit(&tight, 101), Err(NoSpace::DiskReserve));
        assert_eq!(
            admit(
                &SpaceView {
                    free_disk_bytes: Some(0),
                    min_free_bytes: u64::MAX,
                    ..view()
                },
                1
            ),
            Err(NoSpace::DiskReserve)
        );
    }
}
