//! The site's end of central's file transfers (uplink protocol 7,
//! `outpost_uplink::files`): receives a push's content from central before
//! the push is queued here, and sends a pull's verified content up before
//! the pull's final state goes up.
//!
//! This module owns the per-connection file state of the downlink adapter
//! (`crate::downlink`, which drives it): the pushes being received and the
//! pulls being sent. It must not touch the transfer records or the command
//! tables (it goes through [`FileService`]) nor the uplink stream (it
//! returns frames for the adapter to send).
//!
//! * **Push**: central's `PushFile` command is not acknowledged until its
//!   content is here. The site answers it with [`UpFileAck`] = the length
//!   of `DATA/files/partial/<transfer>` (what it holds durably, also after
//!   a restart); central streams from there; each chunk is written at its
//!   offset and `fsync`ed before it is acknowledged. At the announced size
//!   the content is hashed and stored content-addressed only if its
//!   SHA-256 is the announced one, then the push is queued under central's
//!   command id and transfer id ([`FileService::create_from_central`]) and
//!   acknowledged. Content already stored is not asked for again.
//! * **Pull**: queued like any command; when it completed here (its
//!   content verified and stored), its stream `size | sha256 | content`
//!   (`outpost_proto::transfer::PullHeader`) goes up under one
//!   [`FileFlow`]; the command's final update is held until central
//!   acknowledged the whole stream (or gave it up), so central never closes
//!   a pull whose content it lacks. After a reconnect the stream starts
//!   again and central's acknowledgement moves it to what central holds.

use std::collections::{HashMap, HashSet};
use std::os::unix::fs::FileExt;

use outpost_proto::command::{BuiltinAction, CommandKind, CommandSpec};
use outpost_proto::ids::{CommandId, TransferId};
use outpost_proto::transfer::{self, ChunkPlan, PULL_HEADER_BYTES, PullHeader};
use outpost_uplink::downlink::DownCommand;
use outpost_uplink::files::{
    FILE_CHUNK_BYTES, FILE_WINDOW_BYTES, FileFlow, StreamReceiver, UpFileAbort, UpFileAck,
    UpFileChunk,
};
use outpost_uplink::wire::SiteFrame;
use tracing::{debug, info, warn};

use super::service::FileService;
use crate::commands::model::{CommandRecord, CommandState};

/// What to do with one of central's transfer commands now.
#[derive(Debug, PartialEq, Eq)]
pub enum Prepared {
    /// Queue it (its content, if any, is here).
    Ready,
    /// Its content is on its way: no acknowledgement yet.
    Wait,
    /// Refuse it for good, with the reason.
    Refuse(String),
}

/// A push whose content is being received.
struct PushIn {
    cmd: DownCommand,
    sha: [u8; 32],
    rx: StreamReceiver,
}

/// A pull whose content goes up.
struct PullUp {
    command: CommandId,
    sha: [u8; 32],
    size: u64,
}

/// The file state of one uplink connection.
pub struct CentralFiles {
    files: FileService,
    pushes: HashMap<TransferId, PushIn>,
    flow: FileFlow,
    pulls: HashMap<TransferId, PullUp>,
    /// Pulls whose content central holds (or gave up) on this connection:
    /// their final update may go.
    released: HashSet<CommandId>,
    /// Frames to send (acks, aborts).
    out: Vec<SiteFrame>,
    /// Pushes whose content is complete: to queue now.
    ready: Vec<DownCommand>,
}

/// A pull's final update waits for its content at central.
pub fn holds_final_update(rec: &CommandRecord) -> bool {
    rec.state == CommandState::Completed
        && matches!(
            rec.spec.kind,
            CommandKind::Builtin(BuiltinAction::PullFile { .. })
        )
}

impl CentralFiles {
    pub fn new(files: FileService) -> CentralFiles {
        CentralFiles {
            files,
            pushes: HashMap::new(),
            flow: FileFlow::new(FILE_WINDOW_BYTES, FILE_CHUNK_BYTES),
            pulls: HashMap::new(),
            released: HashSet::new(),
            out: Vec::new(),
            ready: Vec::new(),
        }
    }

    pub fn service(&self) -> &FileService {
        &self.files
    }

    /// A new connection (or none): everything is learned again.
    pub fn reset(&mut self) {
        self.pushes.clear();
        self.flow = FileFlow::new(FILE_WINDOW_BYTES, FILE_CHUNK_BYTES);
        self.pulls.clear();
        self.released.clear();
        self.out.clear();
        self.ready.clear();
    }

    /// Frames to send now.
    pub fn take_frames(&mut self) -> Vec<SiteFrame> {
        std::mem::take(&mut self.out)
    }

    /// Pushes whose content arrived: the adapter queues them now.
    pub fn take_ready(&mut self) -> Vec<DownCommand> {
        std::mem::take(&mut self.ready)
    }

    /// The pulls whose final update may go up.
    pub fn released(&self) -> HashSet<CommandId> {
        self.released.clone()
    }

    /// A command of central's is closed there: forget it.
    pub fn forget(&mut self, id: CommandId) {
        self.released.remove(&id);
    }

    /// What to do with central's transfer command `dc` (`spec` decoded).
    pub fn prepare(&mut self, dc: &DownCommand, spec: &CommandSpec) -> Prepared {
        let CommandKind::Builtin(BuiltinAction::PushFile {
            transfer,
            size_bytes,
            sha256,
            ..
        }) = &spec.kind
        else {
            return Prepared::Ready;
        };
        // Known already (queued earlier): answered as it is.
        if self.files.has_command(dc.id) {
            return Prepared::Ready;
        }
        if let Err(e) = self.files.check_size(*size_bytes) {
            return Prepared::Refuse(e.to_string());
        }
        let Some(sha) = transfer::parse_sha(sha256) else {
            return Prepared::Refuse(format!("sha256 {sha256:?} is not a hash"));
        };
        if self.files.blobs().has(&sha) {
            return Prepared::Ready;
        }
        let t = *transfer;
        let partial = self.files.blobs().partial(t);
        let held = std::fs::metadata(&partial).map(|m| m.len()).unwrap_or(0);
        let rx = StreamReceiver::new(*size_bytes, held);
        debug!(transfer = %t, held, "receiving a push's content from central");
        self.out.push(SiteFrame::FileAck(UpFileAck {
            transfer: t,
            up_to: rx.durable,
        }));
        self.pushes.insert(
            t,
            PushIn {
                cmd: dc.clone(),
                sha,
                rx,
            },
        );
        if rx.complete() {
            self.finish_push(t);
        }
        Prepared::Wait
    }

    /// A chunk of a push's content from central.
    pub fn on_chunk(&mut self, c: UpFileChunk) {
        let t = c.transfer;
        let Some(p) = self.pushes.get_mut(&t) else {
            // Complete already (its command acknowledged), or from before
            // the site learned of it on this connection.
            debug!(transfer = %t, "a file chunk for no push being received: ignored");
            return;
        };
        let len = c.bytes.len() as u64;
        match p.rx.plan(c.offset, len) {
            ChunkPlan::Write { skip, at } => {
                let path = self.files.blobs().partial(t);
                let w = (|| -> std::io::Result<()> {
                    if let Some(dir) = path.parent() {
                        std::fs::create_dir_all(dir)?;
                    }
                    let f = std::fs::OpenOptions::new()
                        .write(true)
                        .create(true)
                        .truncate(false)
                        .open(&path)?;
                    f.write_all_at(&c.bytes[skip..], at)?;
                    f.sync_data()
                })();
                if let Err(e) = w {
                    self.files.metrics().files.store_errors.inc();
                    warn!(transfer = %t, error = %e, "writing central's push failed; central sends it again");
                    return;
                }
                p.rx.wrote(c.offset, len);
                self.files
                    .metrics()
                    .files
                    .central_bytes_received
                    .inc_by(len - skip as u64);
            }
            ChunkPlan::Duplicate | ChunkPlan::Gap => {}
            ChunkPlan::TooLong => {
                self.files.metrics().files.refuse("too_large");
                let reason = format!("central sent more than the {} bytes announced", p.rx.total);
                self.drop_push(t, &reason);
                return;
            }
        }
        self.out.push(SiteFrame::FileAck(UpFileAck {
            transfer: t,
            up_to: p.rx.durable,
        }));
        if p.rx.complete() {
            self.finish_push(t);
        }
    }

    /// The content is complete: verified and stored, then queued.
    fn finish_push(&mut self, t: TransferId) {
        let Some(p) = self.pushes.remove(&t) else {
            return;
        };
        let partial = self.files.blobs().partial(t);
        let r = if p.rx.total == 0 {
            // No chunk wrote a file: store the empty content.
            std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .open(&partial)
                .and_then(|_| self.files.blobs().store_from(&partial, 0, Some(&p.sha)))
        } else {
            self.files.blobs().store_from(&partial, 0, Some(&p.sha))
        };
        let _ = std::fs::remove_file(&partial);
        match r {
            Ok(Ok(_)) => {
                info!(transfer = %t, bytes = p.rx.total, "a push's content arrived from central");
                self.ready.push(p.cmd);
            }
            Ok(Err(got)) => {
                self.files.metrics().files.hash_mismatches.inc();
                let reason = format!(
                    "sha256 mismatch: received {}, central announced {}",
                    transfer::hex_sha(&got),
                    transfer::hex_sha(&p.sha)
                );
                warn!(transfer = %t, %reason, "central's push is corrupt; received again");
                self.out.push(SiteFrame::FileAbort(UpFileAbort {
                    transfer: t,
                    reason,
                }));
            }
            Err(e) => {
                self.files.metrics().files.store_errors.inc();
                warn!(transfer = %t, error = %e, "storing central's push failed; received again on the next connection");
            }
        }
    }

    fn drop_push(&mut self, t: TransferId, reason: &str) {
        self.pushes.remove(&t);
        let _ = std::fs::remove_file(self.files.blobs().partial(t));
        self.out.push(SiteFrame::FileAbort(UpFileAbort {
            transfer: t,
            reason: reason.to_string(),
        }));
    }

    /// Central holds a pull's stream up to `up_to`.
    pub fn on_ack(&mut self, a: UpFileAck) {
        if self.flow.on_ack(a.transfer, a.up_to) == Some(true)
            && let Some(p) = self.pulls.remove(&a.transfer)
        {
            info!(transfer = %a.transfer, "central holds a pulled file");
            self.released.insert(p.command);
        }
    }

    /// Central gave a stream up.
    pub fn on_abort(&mut self, a: UpFileAbort) {
        if self.pushes.contains_key(&a.transfer) {
            warn!(transfer = %a.transfer, reason = %a.reason, "central gave a push up");
            self.pushes.remove(&a.transfer);
            let _ = std::fs::remove_file(self.files.blobs().partial(a.transfer));
        }
        self.flow.close(a.transfer);
        if let Some(p) = self.pulls.remove(&a.transfer) {
            warn!(transfer = %a.transfer, reason = %a.reason, "central gave a pulled file up");
            self.released.insert(p.command);
        }
    }

    /// A pull of central's completed here: its content goes up (once per
    /// connection).
    pub fn pull_completed(&mut self, rec: &CommandRecord) {
        let CommandKind::Builtin(BuiltinAction::PullFile { transfer, .. }) = &rec.spec.kind else {
            return;
        };
        let t = *transfer;
        if self.pulls.contains_key(&t) || self.released.contains(&rec.id) {
            return;
        }
        let tr = match self.files.get(t) {
            Ok(Some(tr)) => tr,
            _ => {
                // No record of the transfer: nothing to send.
                self.released.insert(rec.id);
                return;
            }
        };
        let (Some(size), Some(sha)) = (
            tr.size_bytes,
            tr.sha256.as_deref().and_then(transfer::parse_sha),
        ) else {
            self.released.insert(rec.id);
            return;
        };
        if !self.files.blobs().has(&sha) {
            warn!(transfer = %t, "a pulled file's content is gone: central is told");
            self.out.push(SiteFrame::FileAbort(UpFileAbort {
                transfer: t,
                reason: "the site no longer holds the content".into(),
            }));
            self.released.insert(rec.id);
            return;
        }
        self.flow.open(t, PULL_HEADER_BYTES + size, 0);
        self.pulls.insert(
            t,
            PullUp {
                command: rec.id,
                sha,
                size,
            },
        );
    }

    /// The next chunk of a pull's stream, if the window has room.
    pub fn poll_chunk(&mut self) -> Option<SiteFrame> {
        loop {
            let (t, off, len, last) = self.flow.poll_chunk()?;
            let Some(p) = self.pulls.get(&t) else {
                self.flow.close(t);
                continue;
            };
            match read_stream(&self.files, p, off, len) {
                Ok(bytes) => {
                    self.files
                        .metrics()
                        .files
                        .central_bytes_sent
                        .inc_by(len as u64);
                    return Some(SiteFrame::FileChunk(UpFileChunk {
                        transfer: t,
                        offset: off,
                        bytes,
                        last,
                    }));
                }
                Err(e) => {
                    self.files.metrics().files.store_errors.inc();
                    warn!(transfer = %t, error = %e, "reading a pulled file for central failed");
                    let command = p.command;
                    self.flow.close(t);
                    self.pulls.remove(&t);
                    self.released.insert(command);
                    return Some(SiteFrame::FileAbort(UpFileAbort {
                        transfer: t,
                        reason: format!("the site cannot read the content: {e}"),
                    }));
                }
            }
        }
    }
}

/// Bytes `off..off+len` of a pull's stream `size | sha256 | content`.
fn read_stream(files: &FileService, p: &PullUp, off: u64, len: usize) -> std::io::Result<Vec<u8>> {
    let header = PullHeader {
        size_bytes: p.size,
        sha256: p.sha,
    }
    .encode();
    let mut out = Vec::with_capacity(len);
    let end = off + len as u64;
    if off < PULL_HEADER_BYTES {
        let to = end.min(PULL_HEADER_BYTES);
        out.extend_from_slice(&header[off as usize..to as usize]);
    }
    if end > PULL_HEADER_BYTES {
        let from = off.max(PULL_HEADER_BYTES) - PULL_HEADER_BYTES;
        let n = (end - PULL_HEADER_BYTES - from) as usize;
        let f = std::fs::File::open(files.blobs().path(&p.sha))?;
        let mut buf = vec![0u8; n];
        f.read_exact_at(&mut buf, from)?;
        out.extend_from_slice(&buf);
    }
    Ok(out)
}
