//! Coalesced, verified downloads. The first request for content that is
//! not cached starts one download (keyed by the SHA-256 the verified index
//! states, so two URLs of one file share it too); later requests join it.
//! The download writes a temporary file that every waiting client reads as
//! bytes arrive; the last byte of the body is only released once the whole
//! file matched the expected size and SHA-256, so a file that fails
//! verification is never served complete (clients of a small file get a
//! clear error, clients already streaming a large one get a truncated body,
//! which apt rejects).

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use sha2::Digest;
use tokio::sync::watch;
use tracing::Instrument;

use super::index::{Expect, Sha256};
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
}

impl Cache {
    /// Joins the download of `expect.sha256` or starts one. Returns the
    /// download and whether this call started it. Either way the request is
    /// a miss of that file: counted on it (once stored) under the
    /// `inflight` lock, so a failed download's misses are forgotten after
    /// the last request that could join it.
    pub fn join_or_start(
        self: &Arc<Self>,
        url: &UpstreamUrl,
        expect: &Expect,
    ) -> Result<(Arc<InFlight>, bool), std::io::Error> {
        let mut map = lock(&self.inflight);
        if let Some(f) = map.get(&expect.sha256) {
            self.blobs().note_miss(&expect.sha256);
            return Ok((f.clone(), false));
        }
        let (path, file) = self.dir.temp_file()?;
        let (tx, _) = watch::channel(Progress::Receiving(0));
        let fl = Arc::new(InFlight {
            url: url.clone(),
            expect: expect.clone(),
            file: Arc::new(file),
            progress: tx,
        });
        map.insert(expect.sha256, fl.clone());
        self.blobs().note_miss(&expect.sha256);
        drop(map);
        let cache = self.clone();
        let f2 = fl.clone();
        let span = tracing::info_span!("cache_download", url = %url);
        self.tasks.spawn(
            async move {
                let outcome = tokio::select! {
                    r = cache.download(&f2, &path) => r,
                    _ = cache.shutdown.cancelled() => Err((503, "the appliance is shutting down".to_string())),
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
                lock(&cache.inflight).remove(&f2.expect.sha256);
                if failed {
                    // No request can join it any more: its misses go.
                    cache.blobs().forget_pending(&f2.expect.sha256);
                }
            }
            .instrument(span),
        );
        Ok((fl, true))
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
            _ => 502,
        };
        (status, e.to_string())
    }
}
