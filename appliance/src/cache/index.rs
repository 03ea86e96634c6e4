//! What the cache knows, durably (RocksDB column families `cache_*`) and in
//! memory (the LRU of complete files). The records are plain data; the
//! eviction choice is a pure function of the in-memory index, so it is
//! tested without files or sockets.

use std::collections::{BTreeSet, HashMap, HashSet};

use serde::{Deserialize, Serialize};

/// A SHA-256 digest: the name of a cached file.
pub type Sha256 = [u8; 32];

/// `cache_urls`: an upstream URL whose current content is cached.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UrlEntry {
    pub sha256: Sha256,
    pub size: u64,
    /// When the content was downloaded (ms).
    pub fetched_ms: u64,
    /// When upstream last confirmed it (download or 304), for revalidation.
    pub checked_ms: u64,
    pub etag: Option<String>,
    pub last_modified: Option<String>,
}

/// `cache_blobs`: a complete, verified file on disk. (Its misses live in
/// `cache_misses`: this record's encoding is fixed on disk.)
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobMeta {
    pub size: u64,
    pub last_access_ms: u64,
    /// Requests served from the complete cached file.
    pub hits: u64,
    /// The URL it was last requested as (for `cache stats`).
    pub url: String,
}

/// `cache_expect`: the size and hash a verified index states for a URL.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Expect {
    pub sha256: Sha256,
    pub size: u64,
    /// Path relative to the suite for index files (`main/binary-amd64/Packages.xz`),
    /// empty for package files.
    pub index_name: String,
}

/// `cache_suites`: the last accepted `InRelease` of a suite.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SuiteState {
    pub date_ms: u64,
    pub valid_until_ms: Option<u64>,
    pub sha256: Sha256,
    pub accepted_ms: u64,
}

/// `cache_pins`: a URL pinned against eviction (by a patch rollout or an admin).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PinRecord {
    pub sha256: Sha256,
    pub size: u64,
    pub reason: String,
    pub since_ms: u64,
}

#[derive(Debug, Clone)]
struct BlobInfo {
    size: u64,
    /// Position in LRU order (larger = more recent).
    tick: u64,
    last_access_ms: u64,
    hits: u64,
    /// Requests answered from upstream: the download that stored the file
    /// and the requests that joined it.
    misses: u64,
    url: String,
}

/// One line of `cache stats`' top files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileCounts {
    pub sha256: Sha256,
    pub size: u64,
    pub hits: u64,
    pub misses: u64,
    pub url: String,
}

/// Bound on misses counted for downloads still in flight (one entry per
/// download; beyond it a miss is not counted per file).
const MAX_PENDING_MISSES: usize = 4096;

/// In-memory index of complete files: sizes, recency and pins.
#[derive(Debug, Default)]
pub struct BlobIndex {
    blobs: HashMap<Sha256, BlobInfo>,
    lru: BTreeSet<(u64, Sha256)>,
    tick: u64,
    total_bytes: u64,
    /// Pin count per file (several URLs may pin one file).
    pins: HashMap<Sha256, u32>,
    /// Files whose access metadata changed since the last flush.
    dirty: HashSet<Sha256>,
    /// Misses of files still downloading (not yet in `blobs`); taken over
    /// by [`BlobIndex::insert`], dropped by [`BlobIndex::forget_pending`].
    pending_misses: HashMap<Sha256, u64>,
}

impl BlobIndex {
    /// Adds (or replaces) a file with its stored hit and miss counts, plus
    /// the misses of its download. Files loaded at start are added in
    /// last-access order so recency survives restarts. Re-adding a file
    /// (the same content fetched again) keeps its counts.
    pub fn insert(&mut self, sha: Sha256, meta: &BlobMeta, misses: u64) {
        let (old_hits, old_misses) = self
            .blobs
            .get(&sha)
            .map(|b| (b.hits, b.misses))
            .unwrap_or((0, 0));
        self.remove(&sha);
        let pending = self.pending_misses.remove(&sha).unwrap_or(0);
        let hits = meta.hits.max(old_hits);
        let total_misses = misses.max(old_misses) + pending;
        if hits != meta.hits || total_misses != misses {
            // The caller stored `meta` and `misses`: persist the difference.
            self.dirty.insert(sha);
        }
        self.tick += 1;
        self.lru.insert((self.tick, sha));
        self.total_bytes += meta.size;
        self.blobs.insert(
            sha,
            BlobInfo {
                size: meta.size,
                tick: self.tick,
                last_access_ms: meta.last_access_ms,
                hits,
                misses: total_misses,
                url: meta.url.clone(),
            },
        );
    }

    pub fn remove(&mut self, sha: &Sha256) -> Option<u64> {
        let info = self.blobs.remove(sha)?;
        self.lru.remove(&(info.tick, *sha));
        self.total_bytes -= info.size;
        self.dirty.remove(sha);
        Some(info.size)
    }

    pub fn contains(&self, sha: &Sha256) -> bool {
        self.blobs.contains_key(sha)
    }

    pub fn size_of(&self, sha: &Sha256) -> Option<u64> {
        self.blobs.get(sha).map(|b| b.size)
    }

    /// Counts a request answered from upstream for the content `sha`: on
    /// the file if it is stored, else held until its download stores it.
    pub fn note_miss(&mut self, sha: &Sha256) {
        if let Some(info) = self.blobs.get_mut(sha) {
            info.misses += 1;
            self.dirty.insert(*sha);
        } else if self.pending_misses.len() < MAX_PENDING_MISSES
            || self.pending_misses.contains_key(sha)
        {
            *self.pending_misses.entry(*sha).or_default() += 1;
        }
    }

    /// Drops the misses of a download that failed.
    pub fn forget_pending(&mut self, sha: &Sha256) {
        self.pending_misses.remove(sha);
    }

    /// Marks a hit: most recently used now. False if the file is unknown.
    pub fn touch(&mut self, sha: &Sha256, now_ms: u64, url: &str) -> bool {
        let Some(info) = self.blobs.get_mut(sha) else {
            return false;
        };
        self.lru.remove(&(info.tick, *sha));
        self.tick += 1;
        info.tick = self.tick;
        info.last_access_ms = now_ms;
        info.hits += 1;
        if info.url != url {
            info.url = url.to_string();
        }
        self.lru.insert((self.tick, *sha));
        self.dirty.insert(*sha);
        true
    }

    pub fn pin(&mut self, sha: Sha256) {
        *self.pins.entry(sha).or_default() += 1;
    }

    pub fn unpin(&mut self, sha: &Sha256) {
        if let Some(n) = self.pins.get_mut(sha) {
            *n -= 1;
            if *n == 0 {
                self.pins.remove(sha);
            }
        }
    }

    pub fn is_pinned(&self, sha: &Sha256) -> bool {
        self.pins.contains_key(sha)
    }

    pub fn pinned_files(&self) -> usize {
        self.pins
            .keys()
            .filter(|s| self.blobs.contains_key(*s))
            .count()
    }

    pub fn total_bytes(&self) -> u64 {
        self.total_bytes
    }

    pub fn len(&self) -> usize {
        self.blobs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.blobs.is_empty()
    }

    /// Least recently used unpinned files to remove so the total fits in
    /// `max_bytes` (all unpinned ones if pins alone exceed it). Pure: the
    /// caller removes them.
    pub fn eviction_victims(&self, max_bytes: u64) -> Vec<(Sha256, u64)> {
        let mut over = self.total_bytes.saturating_sub(max_bytes);
        let mut out = Vec::new();
        for (_, sha) in &self.lru {
            if over == 0 {
                break;
            }
            if self.pins.contains_key(sha) {
                continue;
            }
            let size = self.blobs[sha].size;
            out.push((*sha, size));
            over = over.saturating_sub(size);
        }
        out
    }

    /// Bytes of unpinned files (what eviction could free).
    pub fn evictable_bytes(&self) -> u64 {
        self.blobs
            .iter()
            .filter(|(s, _)| !self.pins.contains_key(*s))
            .map(|(_, b)| b.size)
            .sum()
    }

    /// Least recently used unpinned files that free at least `bytes`
    /// (all unpinned ones if they cannot). Pure: the caller removes them.
    pub fn victims_for(&self, bytes: u64) -> Vec<(Sha256, u64)> {
        self.eviction_victims(self.total_bytes.saturating_sub(bytes))
    }

    /// Takes the files whose access metadata must be persisted, with their misses.
    pub fn take_dirty(&mut self) -> Vec<(Sha256, BlobMeta, u64)> {
        let dirty: Vec<Sha256> = self.dirty.drain().collect();
        dirty
            .into_iter()
            .filter_map(|sha| {
                self.blobs.get(&sha).map(|b| {
                    (
                        sha,
                        BlobMeta {
                            size: b.size,
                            last_access_ms: b.last_access_ms,
                            hits: b.hits,
                            url: b.url.clone(),
                        },
                        b.misses,
                    )
                })
            })
            .collect()
    }

    /// The `n` most requested files (hits + misses), most hits first among equals.
    pub fn top(&self, n: usize) -> Vec<FileCounts> {
        let mut v: Vec<FileCounts> = self
            .blobs
            .iter()
            .filter(|(_, b)| b.hits + b.misses > 0)
            .map(|(s, b)| FileCounts {
                sha256: *s,
                size: b.size,
                hits: b.hits,
                misses: b.misses,
                url: b.url.clone(),
            })
            .collect();
        v.sort_by(|a, b| {
            (b.hits + b.misses)
                .cmp(&(a.hits + a.misses))
                .then_with(|| b.hits.cmp(&a.hits))
                .then_with(|| a.url.cmp(&b.url))
        });
        v.truncate(n);
        v
    }

    /// Every file (sha, size).
    pub fn all(&self) -> Vec<(Sha256, u64)> {
        self.blobs.iter().map(|(s, b)| (*s, b.size)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(size: u64) -> BlobMeta {
        BlobMeta {
            size,
            last_access_ms: 0,
            hits: 0,
            url: String::new(),
        }
    }

    #[test]
    fn eviction_takes_least_recently_used_and_skips_pinned() {
        let mut ix = BlobIndex::default();
        for i in 1..=4u8 {
            ix.insert([i; 32], &meta(100), 0);
        }
        assert_eq!(ix.total_bytes(), 400);
        ix.touch(&[1; 32], 1, "u1");
        ix.pin([2; 32]);
        // LRU order now: 2 (pinned), 3, 4, 1.
        let v: Vec<u8> = ix.eviction_victims(250).iter().map(|(s, _)| s[0]).collect();
        assert_eq!(v, [3, 4]);
        assert!(ix.eviction_victims(400).is_empty());
        // Pins alone over the cap: every unpinned file goes, the pinned one stays.
        let v: Vec<u8> = ix.eviction_victims(0).iter().map(|(s, _)| s[0]).collect();
        assert_eq!(v, [3, 4, 1]);
        ix.unpin(&[2; 32]);
        assert_eq!(ix.eviction_victims(300)[0].0, [2; 32]);
        assert_eq!(ix.remove(&[2; 32]), Some(100));
        assert_eq!(ix.total_bytes(), 300);
    }

    #[test]
    fn hits_are_counted_and_flushed_once() {
        let mut ix = BlobIndex::default();
        ix.insert([7; 32], &meta(10), 0);
        assert!(ix.touch(&[7; 32], 5, "http://h/a.deb"));
        assert!(ix.touch(&[7; 32], 6, "http://h/a.deb"));
        assert!(!ix.touch(&[8; 32], 6, "x"));
        let d = ix.take_dirty();
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].1.hits, 2);
        assert_eq!(d[0].1.last_access_ms, 6);
        assert!(ix.take_dirty().is_empty());
        assert_eq!(ix.top(5)[0].url, "http://h/a.deb");
    }

    #[test]
    fn a_downloaded_file_counts_misses_not_hits() {
        let mut ix = BlobIndex::default();
        let sha = [9; 32];
        // The download and one request that joined it, before the file is stored.
        ix.note_miss(&sha);
        ix.note_miss(&sha);
        let mut m = meta(10);
        m.url = "http://h/dists/x/InRelease".into();
        ix.insert(sha, &m, 0);
        let top = ix.top(5);
        assert_eq!((top[0].hits, top[0].misses), (0, 2), "{top:?}");
        // A request arriving after it was stored but counted as a miss
        // (it joined the download just before the end).
        ix.note_miss(&sha);
        ix.touch(&sha, 7, "http://h/dists/x/InRelease");
        let top = ix.top(5);
        assert_eq!((top[0].hits, top[0].misses), (1, 3));
        let d = ix.take_dirty();
        assert_eq!((d[0].1.hits, d[0].2), (1, 3), "both persisted");
        // Reloaded (restart): the stored counts come back.
        let mut again = BlobIndex::default();
        again.insert(sha, &d[0].1, d[0].2);
        assert_eq!((again.top(1)[0].hits, again.top(1)[0].misses), (1, 3));
    }

    #[test]
    fn misses_of_a_failed_download_are_forgotten() {
        let mut ix = BlobIndex::default();
        ix.note_miss(&[3; 32]);
        ix.forget_pending(&[3; 32]);
        ix.insert([3; 32], &meta(10), 0);
        assert!(ix.top(5).is_empty(), "never requested since stored");
    }

    #[test]
    fn top_files_rank_by_requests() {
        let mut ix = BlobIndex::default();
        ix.insert([1; 32], &meta(10), 5);
        ix.insert([2; 32], &meta(10), 1);
        ix.touch(&[2; 32], 1, "b");
        ix.touch(&[2; 32], 2, "b");
        ix.insert([3; 32], &meta(10), 0);
        let order: Vec<u8> = ix.top(5).iter().map(|f| f.sha256[0]).collect();
        assert_eq!(order, [1, 2], "the never-requested file is not listed");
    }
}
