//! Coalesced, verified downloads. The first request for content that is
//! not cached starts one download (keyed by the SHA-256 the verified index
//! states, so two URLs of one file share it too); later requests join it.
//! The download writes a temporary file that every waiting client reads as
//! bytes arrive; the last byte of the body is only released once the whole
//! file matched the expected size and SHA-256, so a file that fails
//! verification is never served complete (clients of a small file get a
//! clear error, clients already streaming a large one get a truncated body,
//! which apt rejects).
//!
//! Bounded: a new download needs a slot (`max_downloads`, and
//! `max_downloads_per_client` for the client that starts it) and room
//! (its stated size is reserved against `max_bytes` and the free-disk
//! reserve before the first byte). A download that no client streams any
//! more is cancelled, unless a prefetch or a pin wants it.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use sha2::Digest;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::index::{Expect, Sha256};
use super::limits::{Busy, Requester};
use super::upstream::{UpstreamError, Validators};
use super::url::UpstreamUrl;
use super::{Cache, lock};

/// State of a download, broadcast to its readers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// This many bytes are in the temporary file.
    Receiving(u64),
    /// Verified and stored; the whole body may be sent.
    Complete,
    /// Failed: the HTTP status to answer with and why. Nothing more is sent.
    Failed { status: u16, message: Arc<str> },
}

/// One download in progress.
#[derive(Debug)]
pub struct InFlight {
    /// The URL it was first requested as.
    pub url: UpstreamUrl,
    /// Size and hash it must have.
    pub expect: Expect,
    /// The temporary file, shared by readers (positional reads only).
    pub file: Arc<File>,
    pub progress: watch::Sender<Progress>,
    /// Clients streaming it (changed under the `inflight` lock).
    watchers: AtomicUsize,
    /// Wanted by a prefetch or a pin: runs to the end without watchers.
    keep: AtomicBool,
    /// Stops the download (no watcher left).
    cancel: CancellationToken,
}

/// A client's interest in a download; when the last one goes (the client
/// disconnected or stopped reading) and no prefetch or pin wants the file,
/// the download is cancelled.
pub struct Interest {
    cache: Arc<Cache>,
    fl: Arc<InFlight>,
    counted: bool,
}

impl Drop for Interest {
    fn drop(&mut self) {
        if !self.counted {
            return;
        }
        let mut map = lock(&self.cache.inflight);
        let left = self.fl.watchers.fetch_sub(1, Ordering::SeqCst) - 1;
        if left == 0
            && !self.fl.keep.load(Ordering::SeqCst)
            // Not once every byte is in: it is being stored.
            && matches!(*self.fl.progress.borrow(), Progress::Receiving(n) if n < self.fl.expect.size)
        {
            self.fl.cancel.cancel();
            // Nobody can join it any more: a new request starts afresh.
            if map
                .get(&self.fl.expect.sha256)
                .is_some_and(|f| Arc::ptr_eq(f, &self.fl))
            {
                map.remove(&self.fl.expect.sha256);
            }
        }
    }
}

/// Why a download could not start: the status, message and refusal reason.
pub type StartError = (u16, String);

/// A download slot, given back when the download ends.
pub(crate) struct Slot {
    cache: Arc<Cache>,
    who: Requester,
}

impl Drop for Slot {
    fn drop(&mut self) {
        lock(&self.cache.slots).give_back(self.who);
        self.cache.metrics.cache.downloads_active.dec();
        self.cache.slot_freed.notify_waiters();
    }
}

impl Cache {
    /// Joins the download of `expect.sha256` or starts one, for `who`.
    /// Returns the download, whether this call started it, and `who`'s
    /// interest in it (drop it when done streaming). Either way the
    /// request is a miss of that file: counted on it (once stored) under
    /// the `inflight` lock, so a failed download's misses are forgotten
    /// after the last request that could join it.
    pub async fn join_or_start(
        self: &Arc<Self>,
        url: &UpstreamUrl,
        expect: &Expect,
        who: Requester,
    ) -> Result<(Arc<InFlight>, bool, Interest), StartError> {
        if let Some(joined) = self.join(expect, who) {
            return Ok(joined);
        }
        let slot = self.download_slot(who).await?;
        let space = self.reserve_space(expect.size).map_err(|e| {
            self.metrics.cache.refuse(e.reason());
            (
                503,
                match e {
                    super::limits::NoSpace::TooLarge => format!(
                        "{url} ({} bytes) is larger than this cache ([cache] max_bytes = {})",
                        expect.size, self.cfg.max_bytes
                    ),
                    super::limits::NoSpace::CacheFull => format!(
                        "no room for {url} ({} bytes): the cache is full of pinned files and downloads in flight",
                        expect.size
                    ),
                    super::limits::NoSpace::DiskReserve => format!(
                        "no room for {url} ({} bytes): the disk would go below [cache] min_free_bytes ({})",
                        expect.size, self.cfg.min_free_bytes
                    ),
                },
            )
        })?;
        let mut map = lock(&self.inflight);
        // Started by someone else while this call waited for a slot.
        if map.contains_key(&expect.sha256) {
            drop(map);
            if let Some(joined) = self.join(expect, who) {
                return Ok(joined);
            }
            map = lock(&self.inflight);
        }
        let (path, file) = self
            .dir
            .temp_file()
            .map_err(|e| (500, format!("cannot create a cache file: {e}")))?;
        let (tx, _) = watch::channel(Progress::Receiving(0));
        let fl = Arc::new(InFlight {
            url: url.clone(),
            expect: expect.clone(),
            file: Arc::new(file),
            progress: tx,
            watchers: AtomicUsize::new(0),
            keep: AtomicBool::new(false),
            cancel: CancellationToken::new(),
        });
        let interest = self.interest(&fl, who);
        map.insert(expect.sha256, fl.clone());
        self.blobs().note_miss(&expect.sha256);
        drop(map);
        let cache = self.clone();
        let f2 = fl.clone();
        let span = tracing::info_span!("cache_download", url = %url);
        self.tasks.spawn(
            async move {
                let _slot = slot;
                let _space = space;
                let outcome = tokio::select! {
                    r = cache.download(&f2, &path) => r,
                    _ = cache.shutdown.cancelled() => Err((503, "the appliance is shutting down".to_string())),
                    _ = f2.cancel.cancelled() => {
                        cache.metrics.cache.downloads_cancelled.inc();
                        Err((503, "download cancelled: no client wanted it any more".to_string()))
                    }
                };
                // Whatever the download wrote to tmp/ is stored or removed now.
                let written = match &*f2.progress.borrow() {
                    Progress::Receiving(n) => *n,
                    _ => 0,
                };
                let failed = outcome.is_err();
                match outcome {
                    Ok(()) => {
                        f2.progress.send_replace(Progress::Complete);
                    }
                    Err((status, message)) => {
                        tracing::warn!(%message, "download failed");
                        let _ = std::fs::remove_file(&path);
                        f2.progress.send_replace(Progress::Failed {
                            status,
                            message: message.into(),
                        });
                    }
                }
                cache.tmp_written.fetch_sub(written, Ordering::SeqCst);
                {
                    let mut map = lock(&cache.inflight);
                    if map
                        .get(&f2.expect.sha256)
                        .is_some_and(|f| Arc::ptr_eq(f, &f2))
                    {
                        map.remove(&f2.expect.sha256);
                    }
                }
                if failed {
                    // No request can join it any more: its misses go.
                    cache.blobs().forget_pending(&f2.expect.sha256);
                }
            }
            .instrument(span),
        );
        Ok((fl, true, interest))
    }

    /// Joins a download in flight (under the `inflight` lock).
    fn join(
        self: &Arc<Self>,
        expect: &Expect,
        who: Requester,
    ) -> Option<(Arc<InFlight>, bool, Interest)> {
        let map = lock(&self.inflight);
        let f = map.get(&expect.sha256)?.clone();
        self.blobs().note_miss(&expect.sha256);
        let interest = self.interest(&f, who);
        drop(map);
        Some((f, false, interest))
    }

    /// Records `who`'s interest (call under the `inflight` lock).
    fn interest(self: &Arc<Self>, fl: &Arc<InFlight>, who: Requester) -> Interest {
        let counted = match who {
            Requester::Client(_) => {
                fl.watchers.fetch_add(1, Ordering::SeqCst);
                true
            }
            Requester::Background => {
                fl.keep.store(true, Ordering::SeqCst);
                false
            }
        };
        Interest {
            cache: self.clone(),
            fl: fl.clone(),
            counted,
        }
    }

    /// A download slot for `who`: refused at once for a client (503,
    /// counted), awaited for the cache's own prefetches and pins.
    pub(crate) async fn download_slot(
        self: &Arc<Self>,
        who: Requester,
    ) -> Result<Slot, StartError> {
        loop {
            let notified = self.slot_freed.notified();
            let r = lock(&self.slots).try_take(who);
            match (r, who) {
                (Ok(()), _) => {
                    self.metrics.cache.downloads_active.inc();
                    return Ok(Slot {
                        cache: self.clone(),
                        who,
                    });
                }
                (Err(busy), Requester::Client(_)) => {
                    self.metrics.cache.refuse(busy.reason());
                    return Err((
                        503,
                        match busy {
                            Busy::Global => format!(
                                "the patch cache is running its maximum of {} upstream downloads; retry shortly",
                                self.cfg.max_downloads
                            ),
                            Busy::Client => format!(
                                "this client already has {} downloads in progress ([cache] max_downloads_per_client); retry shortly",
                                self.cfg.max_downloads_per_client
                            ),
                        },
                    ));
                }
                (Err(_), Requester::Background) => {
                    tokio::select! {
                        _ = notified => {}
                        _ = self.shutdown.cancelled() => {
                            return Err((503, "the appliance is shutting down".into()));
                        }
                        // Notify wakes only current waiters: poll as a backstop.
                        _ = tokio::time::sleep(std::time::Duration::from_millis(500)) => {}
                    }
                }
            }
        }
    }

    /// Downloads, verifies and stores one file. Errors carry the status for clients.
    async fn download(&self, fl: &InFlight, tmp: &Path) -> Result<(), (u16, String)> {
        let url = &fl.url;
        let want = fl.expect.size;
        let m = &self.metrics.cache;
        m.upstream_requests.inc();
        let resp = self
            .upstream
            .request("GET", url, &Validators::default(), None)
            .await
            .map_err(|e| self.upstream_failure(e))?;
        let status = resp.status().as_u16();
        if status != 200 {
            m.upstream_errors.inc();
            return Err((
                if status == 404 { 404 } else { 502 },
                UpstreamError::Status {
                    url: url.to_string(),
                    status,
                }
                .to_string(),
            ));
        }
        let mut body = resp.into_body();
        let mut hasher = sha2::Sha256::new();
        let mut written = 0u64;
        while let Some(chunk) = self
            .upstream
            .next_chunk(url, &mut body)
            .await
            .map_err(|e| self.upstream_failure(e))?
        {
            m.upstream_bytes.inc_by(chunk.len() as u64);
            if written + chunk.len() as u64 > want {
                m.verify_failure("size_cap");
                return Err((
                    502,
                    UpstreamError::TooLarge {
                        url: url.to_string(),
                        limit: want,
                        why: "its verified index states; download aborted",
                    }
                    .to_string(),
                ));
            }
            hasher.update(&chunk);
            fl.file
                .write_all_at(&chunk, written)
                .map_err(|e| (500, format!("writing the cache file: {e}")))?;
            written += chunk.len() as u64;
            self.tmp_written
                .fetch_add(chunk.len() as u64, Ordering::SeqCst);
            fl.progress.send_replace(Progress::Receiving(written));
        }
        if written != want {
            m.upstream_errors.inc();
            return Err((
                502,
                UpstreamError::Short {
                    url: url.to_string(),
                    got: written,
                    want,
                }
                .to_string(),
            ));
        }
        let sha: Sha256 = hasher.finalize().into();
        let is_index = !fl.expect.index_name.is_empty();
        if sha != fl.expect.sha256 {
            m.verify_failure(if is_index {
                "index_hash"
            } else {
                "package_hash"
            });
            let q = self.dir.quarantine(tmp, &url.to_string());
            return Err((
                502,
                format!(
                    "integrity check failed for {url}: upstream sent SHA-256 {} but the verified {} states {}; \
                     the file was quarantined ({}) and is not served",
                    hex::encode(sha),
                    if is_index {
                        "InRelease"
                    } else {
                        "package index"
                    },
                    hex::encode(fl.expect.sha256),
                    q.map(|p| p.display().to_string())
                        .unwrap_or_else(|e| e.to_string()),
                ),
            ));
        }
        let file = fl.file.clone();
        let tmp2 = tmp.to_path_buf();
        let dir = self.dir.clone();
        let path = tokio::task::spawn_blocking(move || {
            file.sync_all()?;
            dir.commit(&tmp2, &sha)
        })
        .await
        .map_err(|e| (500, format!("storing the cache file: {e}")))?
        .map_err(|e| (500, format!("storing the cache file: {e}")))?;
        if is_index {
            // Package entries must be known before any client sees the index
            // complete, or its next request (a .deb) would find nothing.
            if let Err(e) = self
                .record_index_entries(url, &fl.expect.index_name, &path, sha)
                .await
            {
                m.verify_failure("parse");
                let _ = self.dir.quarantine(&path, &url.to_string());
                return Err((502, format!("reading index {url}: {e:#}")));
            }
        }
        self.add_blob(sha, want, &url.to_string())
            .map_err(|e| (500, format!("recording the cache file: {e:#}")))?;
        tracing::info!(size = want, "stored verified file");
        Ok(())
    }

    pub(crate) fn upstream_failure(&self, e: UpstreamError) -> (u16, String) {
        self.metrics.cache.upstream_errors.inc();
        let status = match e {
            UpstreamError::Timeout(..) => 504,
            UpstreamError::RedirectNotAllowed { .. } => 403,
            _ => 502,
        };
        (status, e.to_string())
    }
}
