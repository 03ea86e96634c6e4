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

#[cfg(test)]
mod tests {
    use outpost_proto::DeviceId;
    use outpost_proto::command::CommandSpec;
    use outpost_storage::StoreOptions;
    use outpost_storage::model::DeviceRecord;
    use outpost_uplink::downlink::{CommandAck, DownEvent, DownlinkPort};
    use sha2::Digest;
    use tokio_util::sync::CancellationToken;

    use super::*;

    const DEV: DeviceId = DeviceId(0x2a);

    async fn next(frames: &mut tokio::sync::mpsc::Receiver<SiteFrame>) -> SiteFrame {
        loop {
            let f = tokio::time::timeout(std::time::Duration::from_secs(5), frames.recv())
                .await
                .expect("a frame in time")
                .expect("the adapter runs");
            if !matches!(f, SiteFrame::CommandUpdate(_)) {
                return f;
            }
        }
    }

    /// Central's push is not queued (nor acknowledged) before its content
    /// is here: the site answers with what it holds, also after a
    /// reconnect (resume from the durable partial file), and queues it
    /// under central's command and transfer ids once the SHA-256 matches.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_push_from_central_is_queued_once_its_verified_content_arrived_resuming_after_a_reconnect()
     {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::db::open(&dir.path().join("db"), &StoreOptions::default()).unwrap();
        outpost_storage::registry::register(
            &store,
            &DeviceRecord {
                id: DEV,
                tenant: "msp".into(),
                customer: "dental".into(),
                hostname: "web-1".into(),
                os: "Debian 12".into(),
                kernel: "6.1".into(),
                arch: "x86_64".into(),
                agent_version: "0.1.0".into(),
                enrolled_at_ms: 1,
                cert_serial: String::new(),
                revoked_at_ms: None,
            },
        )
        .unwrap();
        let metrics = std::sync::Arc::new(crate::metrics::Metrics::new());
        let (svc, _t) = crate::commands::service::CommandService::start(
            store.clone(),
            metrics.clone(),
            Default::default(),
        )
        .unwrap();
        let (files, _ft) = FileService::start(
            store,
            metrics.clone(),
            &dir.path().join("files"),
            Default::default(),
            svc.clone(),
        )
        .unwrap();
        let (port, end) = DownlinkPort::pair(64);
        let shutdown = CancellationToken::new();
        tokio::spawn(crate::downlink::run_with_files(
            svc.clone(),
            Some(files.clone()),
            Default::default(),
            end,
            None,
            shutdown.clone(),
        ));
        let mut frames = port.frames.lock().await;
        let content = b"worker_processes 4;\n".to_vec();
        let sha = hex::encode(sha2::Sha256::digest(&content));
        let t = TransferId([5; 16]);
        let id = CommandId([6; 16]);
        let spec = CommandSpec {
            kind: CommandKind::Builtin(BuiltinAction::PushFile {
                transfer: t,
                path: "/etc/nginx/nginx.conf".into(),
                size_bytes: content.len() as u64,
                sha256: sha.clone(),
                mode: Some(0o644),
                owner: None,
            }),
            ..CommandSpec::shell("-", "ann@central")
        };
        let dc = DownCommand {
            id,
            device: DEV,
            spec: spec.encode().unwrap(),
            cancel: None,
            output_len: 0,
            transitions: 0,
        };
        let ack = |up_to| SiteFrame::FileAck(UpFileAck { transfer: t, up_to });
        let chunk = |from: usize, to: usize| {
            DownEvent::FileChunk(UpFileChunk {
                transfer: t,
                offset: from as u64,
                bytes: content[from..to].to_vec(),
                last: to == content.len(),
            })
        };
        port.events
            .send(DownEvent::Connected {
                protocol_version: 7,
            })
            .unwrap();
        port.events
            .send(DownEvent::Commands(vec![dc.clone()]))
            .unwrap();
        assert_eq!(next(&mut frames).await, ack(0));
        port.events.send(chunk(0, 8)).unwrap();
        assert_eq!(next(&mut frames).await, ack(8));
        assert!(
            svc.get(id).unwrap().is_none(),
            "not queued before the content"
        );
        // The uplink is cut; central sends the command again: the site
        // answers what it holds.
        port.events.send(DownEvent::Disconnected).unwrap();
        port.events
            .send(DownEvent::Connected {
                protocol_version: 7,
            })
            .unwrap();
        port.events
            .send(DownEvent::Commands(vec![dc.clone()]))
            .unwrap();
        assert_eq!(next(&mut frames).await, ack(8));
        // A re-sent chunk below what is held changes nothing.
        port.events.send(chunk(0, 8)).unwrap();
        assert_eq!(next(&mut frames).await, ack(8));
        port.events.send(chunk(8, content.len())).unwrap();
        assert_eq!(next(&mut frames).await, ack(content.len() as u64));
        assert_eq!(
            next(&mut frames).await,
            SiteFrame::CommandAck(CommandAck::accepted(id))
        );
        let rec = svc.get(id).unwrap().expect("queued under central's id");
        assert_eq!(crate::files::service::transfer_of(&rec.spec), Some(t));
        let tr = files.get(t).unwrap().expect("the site's transfer record");
        assert_eq!(tr.sha256.as_deref(), Some(sha.as_str()));
        assert_eq!(
            std::fs::read(files.content_path(&tr).unwrap()).unwrap(),
            content
        );
        assert_eq!(
            metrics.files.central_bytes_received.get(),
            content.len() as u64,
            "each byte written once"
        );
        // Delivered again: acknowledged from the stored command, no bytes asked.
        port.events.send(DownEvent::Commands(vec![dc])).unwrap();
        assert_eq!(
            next(&mut frames).await,
            SiteFrame::CommandAck(CommandAck::accepted(id))
        );
        shutdown.cancel();
        files.stop();
        svc.stop();
    }
}
