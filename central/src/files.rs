//! Files pushed to and pulled from devices from central (issue 13,
//! uplink protocol 7: `outpost_uplink::files`).
//!
//! This module owns the transfer records ([`CentralFile`], one per
//! transfer beside its command: [`crate::store::FileStore`]), central's
//! content store (`DATA/files`, `outpost_storage::blobs`, the appliance's
//! layout), the per-connection file flow of a site's uplink stream
//! ([`SiteFiles`], driven by [`crate::receiver`]) and the blob collector
//! ([`collect`]). It must not touch the command records' rules
//! (`crate::commands`): a transfer *is* a command (`PushFile` /
//! `PullFile`), queued, delivered, cancelled and expired like any other.
//!
//! * **Push**: the API stores the upload content-addressed (hashed while
//!   it streams, refused over `--files-max-bytes`), then the record and
//!   the command. The site acknowledges the command only once it holds the
//!   content: it answers the command with `FileAck` = what it holds, and
//!   central streams from there under one small window ([`FileFlow`]), one
//!   chunk between other frames. After a reconnect the site acknowledges
//!   again and central resumes from that offset.
//! * **Pull**: the command goes down like any other; when the site's pull
//!   completed (verified at the site), the site streams `size | sha256 |
//!   content` up; central writes each chunk at its offset in
//!   `DATA/files/partial/<transfer>`, `fsync`s before acknowledging, and at
//!   the end hashes the content and keeps it only if the SHA-256 is the
//!   site's. The site holds the command's final state until central
//!   acknowledged the whole stream, so a closed pull has its content here.

use std::collections::HashMap;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use outpost_proto::ids::{CommandId, TransferId};
use outpost_proto::transfer::{self, ChunkPlan, PULL_HEADER_BYTES, PullHeader};
use outpost_proto::{CustomerId, SiteId, TenantId};
use outpost_storage::blobs::Blobs;
use outpost_uplink::files::{
    FILE_CHUNK_BYTES, FILE_WINDOW_BYTES, FileFlow, UpFileAbort, UpFileAck, UpFileChunk,
};
use outpost_uplink::wire::CentralFrame;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};
use tracing::{debug, info, warn};

use crate::Central;
use crate::metrics::ReasonLabel;

/// Default largest file pushed or pulled from central: 256 MiB.
pub const DEFAULT_MAX_BYTES: u64 = 256 * 1024 * 1024;
/// Default time the content of an ended transfer is kept: 7 days.
pub const DEFAULT_RETENTION_MS: u64 = 7 * 24 * 3600 * 1000;
/// A blob younger than this is never collected (an upload is stored
/// before its record).
pub const BLOB_GRACE_MS: u64 = 3600 * 1000;

/// Central's file limits (`serve --files-max-bytes`, `--files-retention`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FilesConfig {
    pub max_bytes: u64,
    pub retention_ms: u64,
}

impl Default for FilesConfig {
    fn default() -> Self {
        FilesConfig {
            max_bytes: DEFAULT_MAX_BYTES,
            retention_ms: DEFAULT_RETENTION_MS,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Push,
    Pull,
}

/// One transfer from central.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CentralFile {
    pub id: TransferId,
    pub tenant: TenantId,
    pub site_id: SiteId,
    pub customer: CustomerId,
    pub device: String,
    pub command: CommandId,
    pub direction: Direction,
    pub path: String,
    /// Push: the upload's; pull: the site's, once known.
    pub size_bytes: Option<u64>,
    /// Lowercase hex SHA-256 (push: the upload's; pull: verified here).
    pub sha256: Option<String>,
    pub mode: Option<u32>,
    pub owner: Option<String>,
    pub max_bytes: u64,
    pub requested_by: String,
    pub created_ms: u64,
    /// Pull: central holds the verified content since.
    pub stored_ms: Option<u64>,
    /// Why the content stream was given up (either side).
    pub failure: Option<String>,
}

impl CentralFile {
    /// The verified content central holds (a push's upload, a stored pull).
    pub fn content_sha(&self) -> Option<[u8; 32]> {
        if self.direction == Direction::Pull && self.stored_ms.is_none() {
            return None;
        }
        transfer::parse_sha(self.sha256.as_deref()?)
    }
}

/// `outpost_central_files_*`.
#[derive(Debug, Clone, Default)]
pub struct FileMetrics {
    /// Transfers queued at central, by direction.
    pub created: Family<ReasonLabel, Counter>,
    /// Transfers refused at central, by reason.
    pub refusals: Family<ReasonLabel, Counter>,
    /// Push bytes sent to sites (re-sends included).
    pub push_bytes_sent: Counter,
    /// Pull bytes written here (re-sends not counted).
    pub pull_bytes_stored: Counter,
    /// Pulled files verified and stored.
    pub pulls_stored: Counter,
    /// Pushes resumed from an offset above zero on a new connection.
    pub resumes: Counter,
    /// Contents whose SHA-256 did not match.
    pub hash_mismatches: Counter,
    /// Streams given up (either side), and file frames naming no transfer
    /// of the site.
    pub aborts: Counter,
    /// Pushes whose content stopped streaming to the site because they
    /// were cancelled at central.
    pub cancelled: Counter,
    /// Blobs deleted by the collector.
    pub blobs_collected: Counter,
    /// Storage or file system failures.
    pub store_errors: Counter,
}

impl FileMetrics {
    pub fn refuse(&self, reason: &str) {
        self.refusals
            .get_or_create(&ReasonLabel {
                reason: reason.into(),
            })
            .inc();
    }

    pub fn register(&self, r: &mut Registry) {
        let r = r.sub_registry_with_prefix("files");
        r.register(
            "created",
            "File transfers queued at central, by direction (reason label)",
            self.created.clone(),
        );
        r.register(
            "refusals",
            "File transfers refused at central, by reason",
            self.refusals.clone(),
        );
        r.register(
            "push_bytes_sent",
            "Bytes of pushed files sent to sites",
            self.push_bytes_sent.clone(),
        );
        r.register(
            "pull_bytes_stored",
            "Bytes of pulled files written at central",
            self.pull_bytes_stored.clone(),
        );
        r.register(
            "pulls_stored",
            "Pulled files verified and stored at central",
            self.pulls_stored.clone(),
        );
        r.register(
            "resumes",
            "Pushes resumed from an offset above zero",
            self.resumes.clone(),
        );
        r.register(
            "hash_mismatches",
            "File contents whose SHA-256 did not match",
            self.hash_mismatches.clone(),
        );
        r.register(
            "aborts",
            "File streams given up, or naming no transfer of the site",
            self.aborts.clone(),
        );
        r.register(
            "cancelled",
            "Pushes stopped while streaming to the site, cancelled at central",
            self.cancelled.clone(),
        );
        r.register(
            "blobs_collected",
            "File blobs deleted because no live transfer names them",
            self.blobs_collected.clone(),
        );
        r.register(
            "store_errors",
            "File storage failures at central",
            self.store_errors.clone(),
        );
    }
}

/// The content store, once `serve` opened it.
pub fn blobs(c: &Central) -> Option<&Arc<Blobs>> {
    c.blobs.get()
}

/// The file side of one site's uplink connection.
pub struct SiteFiles<'a> {
    c: &'a Central,
    tenant: TenantId,
    site: SiteId,
    flow: FileFlow,
    /// Pushes streaming: their content's hash.
    pushes: HashMap<TransferId, [u8; 32]>,
    /// The command of each push streaming (a cancel names the command).
    push_commands: HashMap<CommandId, TransferId>,
}

impl<'a> SiteFiles<'a> {
    pub fn new(c: &'a Central, tenant: &TenantId, site: &SiteId) -> SiteFiles<'a> {
        SiteFiles {
            c,
            tenant: tenant.clone(),
            site: site.clone(),
            flow: FileFlow::new(FILE_WINDOW_BYTES, FILE_CHUNK_BYTES),
            pushes: HashMap::new(),
            push_commands: HashMap::new(),
        }
    }

    fn m(&self) -> &FileMetrics {
        &self.c.metrics.files
    }

    async fn mine(&self, t: TransferId) -> Option<CentralFile> {
        match self.c.store.file(&self.tenant, t).await {
            Ok(Some(f)) if f.site_id == self.site => Some(f),
            Ok(_) => None,
            Err(e) => {
                warn!(transfer = %t, error = %e, "reading a transfer failed");
                self.m().store_errors.inc();
                None
            }
        }
    }

    fn abort(&self, t: TransferId, reason: impl Into<String>) -> CentralFrame {
        self.m().aborts.inc();
        CentralFrame::FileAbort(UpFileAbort {
            transfer: t,
            reason: reason.into(),
        })
    }

    /// The site holds a push's content up to `up_to`.
    pub async fn on_ack(&mut self, a: UpFileAck) -> Vec<CentralFrame> {
        let t = a.transfer;
        if self.flow.get(t).is_some() {
            if self.flow.on_ack(t, a.up_to) == Some(true) {
                self.pushes.remove(&t);
                self.push_commands.retain(|_, x| *x != t);
                debug!(transfer = %t, "the site holds a push's content");
            }
            return Vec::new();
        }
        let Some(f) = self.mine(t).await else {
            return vec![self.abort(t, "central knows no such transfer of this site")];
        };
        if f.direction != Direction::Push {
            return vec![self.abort(t, "not a push")];
        }
        let (Some(sha), Some(size)) = (f.content_sha(), f.size_bytes) else {
            return vec![self.abort(t, "the push has no content")];
        };
        if !blobs(self.c).is_some_and(|b| b.has(&sha)) {
            return vec![self.abort(t, "central no longer holds the content")];
        }
        // Cancelled (or otherwise closed) at central while the content was
        // on its way: the site drops what it holds, nothing more is sent.
        match self.c.store.command(&self.tenant, f.command).await {
            Ok(Some(cmd)) if cmd.closed || cmd.cancel_requested.is_some() => {
                self.m().cancelled.inc();
                let why = cmd
                    .cancel_requested
                    .map(|by| format!("the push was cancelled at central by {by}"))
                    .unwrap_or_else(|| format!("the push's command is {} at central", cmd.state));
                return vec![self.abort(t, why)];
            }
            Ok(_) => {}
            Err(e) => {
                warn!(transfer = %t, error = %e, "reading a push's command failed");
                self.m().store_errors.inc();
            }
        }
        if a.up_to >= size && size > 0 {
            return Vec::new();
        }
        if a.up_to > 0 {
            self.m().resumes.inc();
            info!(transfer = %t, offset = a.up_to, "push resumed");
        }
        self.flow.open(t, size, a.up_to);
        self.pushes.insert(t, sha);
        self.push_commands.insert(f.command, t);
        Vec::new()
    }

    /// Command `cmd` was cancelled at central (the connection's `Down::Cancel`):
    /// a push of it still streaming to the site stops here, and the site is
    /// told to drop the partial content. `None` when no push of it streams.
    pub fn on_cancel(&mut self, cmd: CommandId, by: &str) -> Option<CentralFrame> {
        let t = self.push_commands.remove(&cmd)?;
        // None: its content already reached the site, the command's cancel
        // goes down the normal way.
        self.pushes.remove(&t)?;
        self.flow.close(t);
        self.m().cancelled.inc();
        info!(transfer = %t, command = %cmd, "a push cancelled while its content streamed");
        Some(self.abort(t, format!("the push was cancelled at central by {by}")))
    }

    /// The next chunk of a push, if the window has room.
    pub fn poll_chunk(&mut self) -> Option<CentralFrame> {
        loop {
            let (t, off, len, last) = self.flow.poll_chunk()?;
            let Some(sha) = self.pushes.get(&t).copied() else {
                self.flow.close(t);
                continue;
            };
            let read = blobs(self.c)
                .ok_or_else(|| std::io::Error::other("no content store"))
                .and_then(|b| {
                    let f = std::fs::File::open(b.path(&sha))?;
                    let mut bytes = vec![0u8; len];
                    f.read_exact_at(&mut bytes, off)?;
                    Ok(bytes)
                });
            match read {
                Ok(bytes) => {
                    self.m().push_bytes_sent.inc_by(len as u64);
                    return Some(CentralFrame::FileChunk(UpFileChunk {
                        transfer: t,
                        offset: off,
                        bytes,
                        last,
                    }));
                }
                Err(e) => {
                    self.m().store_errors.inc();
                    self.flow.close(t);
                    self.pushes.remove(&t);
                    return Some(self.abort(t, format!("central cannot read the content: {e}")));
                }
            }
        }
    }

    /// The site gave a stream up.
    pub async fn on_abort(&mut self, a: UpFileAbort) {
        self.m().aborts.inc();
        self.flow.close(a.transfer);
        self.pushes.remove(&a.transfer);
        warn!(transfer = %a.transfer, reason = %a.reason, "the site gave a file stream up");
        if let Some(mut f) = self.mine(a.transfer).await
            && f.stored_ms.is_none()
            && f.failure.is_none()
        {
            f.failure = Some(format!("the site gave the content up: {}", a.reason));
            if let Err(e) = self.c.store.put_file(&f).await {
                warn!(error = %e, "storing a transfer failed");
                self.m().store_errors.inc();
            }
        }
    }

    /// A chunk of a pull's stream from the site: what to answer.
    pub async fn on_chunk(&mut self, ch: UpFileChunk) -> Vec<CentralFrame> {
        let t = ch.transfer;
        let Some(mut f) = self.mine(t).await else {
            return vec![self.abort(t, "central knows no such transfer of this site")];
        };
        if f.direction != Direction::Pull {
            return vec![self.abort(t, "not a pull")];
        }
        if f.stored_ms.is_some() {
            let total = PULL_HEADER_BYTES + f.size_bytes.unwrap_or(0);
            return vec![ack(t, total)];
        }
        if let Some(why) = &f.failure {
            return vec![self.abort(t, why.clone())];
        }
        let Some(b) = blobs(self.c).cloned() else {
            return Vec::new();
        };
        let max = f.max_bytes;
        let written = tokio::task::spawn_blocking(move || write_pull(&b, t, max, &ch))
            .await
            .unwrap_or_else(|e| Err(Failure::Io(format!("writing task: {e}"))));
        match written {
            Ok(Written::Ack(n, len)) => {
                self.m().pull_bytes_stored.inc_by(len);
                vec![ack(t, n)]
            }
            Ok(Written::Complete(h)) => self.finish_pull(&mut f, h).await,
            Err(Failure::Io(e)) => {
                // Not acknowledged: the site sends it again.
                self.m().store_errors.inc();
                warn!(transfer = %t, error = %e, "writing a pulled file failed");
                Vec::new()
            }
            Err(Failure::Refuse(reason)) => {
                self.m().refuse("too_large");
                self.fail(&mut f, reason.clone()).await;
                vec![self.abort(t, reason)]
            }
        }
    }

    async fn fail(&self, f: &mut CentralFile, reason: String) {
        if let Some(b) = blobs(self.c) {
            let _ = std::fs::remove_file(b.partial(f.id));
        }
        f.failure = Some(reason);
        if let Err(e) = self.c.store.put_file(f).await {
            warn!(error = %e, "storing a transfer failed");
            self.m().store_errors.inc();
        }
    }

    async fn finish_pull(&self, f: &mut CentralFile, h: PullHeader) -> Vec<CentralFrame> {
        let t = f.id;
        let Some(b) = blobs(self.c).cloned() else {
            return Vec::new();
        };
        let partial = b.partial(t);
        let stored = {
            let (b, p) = (b.clone(), partial.clone());
            tokio::task::spawn_blocking(move || {
                b.store_from(&p, PULL_HEADER_BYTES, Some(&h.sha256))
            })
            .await
            .map_err(std::io::Error::other)
            .and_then(|r| r)
        };
        match stored {
            Ok(Ok((sha, n))) => {
                f.size_bytes = Some(n);
                f.sha256 = Some(transfer::hex_sha(&sha));
                f.stored_ms = Some(crate::now_ms());
                if let Err(e) = self.c.store.put_file(f).await {
                    // Not acknowledged: the site sends the end again.
                    warn!(error = %e, "storing a transfer failed");
                    self.m().store_errors.inc();
                    return Vec::new();
                }
                let _ = std::fs::remove_file(&partial);
                self.m().pulls_stored.inc();
                info!(transfer = %t, bytes = n, "a pulled file is stored at central");
                vec![ack(t, h.stream_len())]
            }
            Ok(Err(got)) => {
                self.m().hash_mismatches.inc();
                let reason = format!(
                    "sha256 mismatch: central received {}, the site announced {}",
                    transfer::hex_sha(&got),
                    transfer::hex_sha(&h.sha256)
                );
                let mut f2 = f.clone();
                self.fail(&mut f2, reason.clone()).await;
                vec![self.abort(t, reason)]
            }
            Err(e) => {
                self.m().store_errors.inc();
                warn!(transfer = %t, error = %e, "storing a pulled file failed");
                Vec::new()
            }
        }
    }
}

fn ack(t: TransferId, up_to: u64) -> CentralFrame {
    CentralFrame::FileAck(UpFileAck { transfer: t, up_to })
}

enum Written {
    /// Acknowledge up to this offset; bytes newly written.
    Ack(u64, u64),
    Complete(PullHeader),
}

enum Failure {
    Io(String),
    Refuse(String),
}

/// Writes a pull chunk to its partial file (`fsync` before it is
/// acknowledged). Blocking.
fn write_pull(
    b: &Blobs,
    t: TransferId,
    max_bytes: u64,
    c: &UpFileChunk,
) -> Result<Written, Failure> {
    let path = b.partial(t);
    let io = |e: std::io::Error| Failure::Io(format!("{}: {e}", path.display()));
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(io)?;
    let mut durable = f.metadata().map_err(io)?.len();
    let header = |f: &std::fs::File, durable: u64| {
        if durable < PULL_HEADER_BYTES {
            return None;
        }
        let mut h = [0u8; PULL_HEADER_BYTES as usize];
        f.read_exact_at(&mut h, 0).ok()?;
        PullHeader::decode(&h)
    };
    let total = header(&f, durable)
        .map(|h| h.stream_len())
        .unwrap_or(PULL_HEADER_BYTES.saturating_add(max_bytes));
    let len = c.bytes.len() as u64;
    let mut wrote = 0;
    match transfer::plan_chunk(durable, total, c.offset, len) {
        ChunkPlan::Write { skip, at } => {
            f.write_all_at(&c.bytes[skip..], at).map_err(io)?;
            f.sync_data().map_err(io)?;
            durable = c.offset + len;
            wrote = len - skip as u64;
        }
        ChunkPlan::Duplicate | ChunkPlan::Gap => {}
        ChunkPlan::TooLong => {
            return Err(Failure::Refuse(format!(
                "the site sent more than the {} bytes announced or allowed",
                total.saturating_sub(PULL_HEADER_BYTES)
            )));
        }
    }
    if let Some(h) = header(&f, durable) {
        if h.size_bytes > max_bytes {
            return Err(Failure::Refuse(format!(
                "the file is {} bytes; the limit is {max_bytes} bytes",
                h.size_bytes
            )));
        }
        if durable >= h.stream_len() {
            return Ok(Written::Complete(h));
        }
    }
    Ok(Written::Ack(durable, wrote))
}

/// Whether `f`'s content must be kept at `now_ms`: its command is not
/// closed, or ended less than `retention_ms` ago (`ended_ms`: the
/// command's last transition at central, `None` while open).
pub fn is_live(ended_ms: Option<u64>, now_ms: u64, retention_ms: u64) -> bool {
    match ended_ms {
        None => true,
        Some(at) => now_ms.saturating_sub(at) < retention_ms,
    }
}

/// What the collector did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GcReport {
    pub records_deleted: u64,
    pub collected: u64,
    pub kept: u64,
}

/// Deletes the records of transfers ended more than the retention ago,
/// then the blobs (older than [`BLOB_GRACE_MS`]) no remaining transfer
/// names, and partial files of transfers no longer live. Counted.
pub async fn collect(c: &Central, now_ms: u64) -> anyhow::Result<GcReport> {
    let Some(b) = blobs(c).cloned() else {
        return Ok(GcReport::default());
    };
    let retention = c.limits.files.retention_ms;
    let mut report = GcReport::default();
    let mut live: std::collections::HashSet<[u8; 32]> = std::collections::HashSet::new();
    let mut live_partials: std::collections::HashSet<String> = std::collections::HashSet::new();
    for f in c.store.all_files().await? {
        let ended = match c.store.command(&f.tenant, f.command).await? {
            Some(cmd) if cmd.closed => Some(
                cmd.central_transitions
                    .last()
                    .map(|t| t.at_ms)
                    .unwrap_or(cmd.created_ms),
            ),
            Some(_) => None,
            // No command: a record whose command was never stored.
            None => Some(f.created_ms),
        };
        if is_live(ended, now_ms, retention) {
            if let Some(sha) = f.sha256.as_deref().and_then(transfer::parse_sha) {
                live.insert(sha);
            }
            live_partials.insert(f.id.to_string());
        } else {
            c.store.delete_file(&f.tenant, f.id).await?;
            report.records_deleted += 1;
        }
    }
    let r = tokio::task::spawn_blocking(move || -> std::io::Result<GcReport> {
        let mut r = report;
        for (sha, meta) in b.list()? {
            let young = meta
                .modified()
                .ok()
                .and_then(|m| m.duration_since(std::time::UNIX_EPOCH).ok())
                .map(|d| now_ms.saturating_sub(d.as_millis() as u64) < BLOB_GRACE_MS)
                .unwrap_or(true);
            if live.contains(&sha) || young {
                r.kept += 1;
            } else {
                b.remove(&sha)?;
                r.collected += 1;
            }
        }
        if let Some(dir) = b.partial(TransferId([0; 16])).parent()
            && let Ok(rd) = std::fs::read_dir(dir)
        {
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().to_string();
                if !live_partials.contains(&name) {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        Ok(r)
    })
    .await??;
    c.metrics.files.blobs_collected.inc_by(r.collected);
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_is_kept_while_the_command_is_open_and_for_the_retention_after() {
        let day = 24 * 3600 * 1000;
        assert!(is_live(None, 100 * day, day));
        assert!(is_live(Some(10 * day), 10 * day + day - 1, day));
        assert!(!is_live(Some(10 * day), 11 * day, day));
    }
}
