//! The file service: one worker thread owns every change to transfer
//! records after their creation, fed by the command service (session
//! up/down, file flow events, the end of a transfer's command: see
//! [`FileHooks`]) and by the API (attach a queued command). It streams
//! pushed content to agents (one task per transfer and session, from the
//! offset the agent acknowledged) and writes pulled content (fsync before
//! each acknowledgement, verified and stored content-addressed at the end).

use std::collections::HashMap;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc as std_mpsc;
use std::time::{SystemTime, UNIX_EPOCH};

use outpost_proto::DeviceId;
use outpost_proto::command::{BuiltinAction, CommandKind, CommandSpec, DEFAULT_EXPIRY_MS};
use outpost_proto::ids::{CommandId, TransferId};
use outpost_proto::messages::FileChunk;
use outpost_proto::session::MAX_CHUNK_BYTES;
use outpost_proto::session::appliance::ApplianceEvent;
use outpost_proto::transfer::{self, ChunkPlan, PULL_HEADER_BYTES, PullHeader};
use outpost_storage::Store;
use outpost_storage::model::AuditEntry;
use tokio::sync::oneshot;
use tracing::{info, warn};

use super::FileConfig;
use super::blobs::Blobs;
use super::model::{self, Direction, Input, TransferRecord, TransferState};
use super::store;
use crate::commands::model::{CommandRecord, CommandState};
use crate::commands::service::{CancelError, CommandService, CreateError};
use crate::ingest::remote::RemoteLink;
use crate::metrics::Metrics;

/// What the command service tells the file service (called from the
/// command worker: must not block).
pub trait FileHooks: Send + Sync + 'static {
    fn session_up(&self, device: DeviceId, link: RemoteLink);
    fn session_down(&self, device: DeviceId, link_id: u64);
    /// `FileChunk`, `FileAcked` or `FileAborted`.
    fn file_event(&self, device: DeviceId, event: ApplianceEvent);
    /// A command carrying a transfer reached a terminal state.
    fn command_ended(&self, rec: &CommandRecord);
}

/// Why a transfer was not started or changed.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("device {0} is not enrolled here")]
    UnknownDevice(DeviceId),
    #[error("device {0} is revoked: it takes no transfers")]
    RevokedDevice(DeviceId),
    #[error("the file is {size} bytes; the limit is {max} bytes ([files] max_bytes)")]
    TooLarge { size: u64, max: u64 },
    #[error("invalid transfer: {0}")]
    Invalid(String),
    #[error("transfer {0} not found")]
    NotFound(TransferId),
    #[error("transfer {0} already finished ({1})")]
    Finished(TransferId, TransferState),
    #[error("storing the transfer failed: {0}")]
    Store(String),
    #[error("the file service stopped")]
    Stopped,
}

enum Msg {
    Up(DeviceId, RemoteLink),
    Down(DeviceId, u64),
    Event(DeviceId, ApplianceEvent),
    CommandEnded(Box<CommandRecord>),
    Attach {
        transfer: TransferId,
        command: CommandId,
        reply: oneshot::Sender<Option<TransferRecord>>,
    },
    Stop,
}

/// The handle the API and the command service use (cheap to clone).
#[derive(Clone)]
pub struct FileService {
    tx: std_mpsc::Sender<Msg>,
    store: Store,
    blobs: Arc<Blobs>,
    metrics: Arc<Metrics>,
    cfg: FileConfig,
    commands: CommandService,
}

impl std::fmt::Debug for FileService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileService").finish_non_exhaustive()
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The transfer a command carries.
pub fn transfer_of(spec: &CommandSpec) -> Option<TransferId> {
    match &spec.kind {
        CommandKind::Builtin(BuiltinAction::PushFile { transfer, .. })
        | CommandKind::Builtin(BuiltinAction::PullFile { transfer, .. }) => Some(*transfer),
        _ => None,
    }
}

impl FileService {
    /// Opens the content store in `root` (`DATA/files`), starts the worker
    /// and routes the command service's file events here. Needs a tokio
    /// runtime (senders run on it).
    pub fn start(
        store: Store,
        metrics: Arc<Metrics>,
        root: &std::path::Path,
        cfg: FileConfig,
        commands: CommandService,
    ) -> anyhow::Result<(FileService, std::thread::JoinHandle<()>)> {
        let blobs = Arc::new(Blobs::open(root)?);
        let (tx, rx) = std_mpsc::channel();
        let w = Worker {
            store: store.clone(),
            blobs: blobs.clone(),
            metrics: metrics.clone(),
            commands: commands.clone(),
            rt: tokio::runtime::Handle::current(),
            links: HashMap::new(),
            senders: HashMap::new(),
            seen: HashMap::new(),
        };
        let h = std::thread::Builder::new()
            .name("files".into())
            .spawn(move || w.run(rx))?;
        let svc = FileService {
            tx,
            store,
            blobs,
            metrics,
            cfg,
            commands: commands.clone(),
        };
        commands.set_file_hooks(Arc::new(svc.clone()));
        Ok((svc, h))
    }

    pub fn config(&self) -> FileConfig {
        self.cfg
    }

    pub fn blobs(&self) -> &Blobs {
        &self.blobs
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Deletes the blobs no live transfer names at `now_ms` (see
    /// [`super::gc`]); counted. Blocking.
    pub fn collect_blobs(&self, now_ms: u64) -> anyhow::Result<super::gc::GcReport> {
        let retention = u64::try_from(self.cfg.retention.as_millis()).unwrap_or(u64::MAX);
        let r = super::gc::collect(&self.store, &self.blobs, now_ms, retention);
        match &r {
            Ok(r) => {
                self.metrics.files.blobs_collected.inc_by(r.collected);
            }
            Err(_) => {
                self.metrics.files.store_errors.inc();
            }
        }
        r
    }

    pub fn get(&self, id: TransferId) -> outpost_storage::error::Result<Option<TransferRecord>> {
        store::get(&self.store, id)
    }

    pub fn list(
        &self,
        device: Option<DeviceId>,
        state: Option<TransferState>,
        limit: usize,
    ) -> outpost_storage::error::Result<Vec<TransferRecord>> {
        store::list(&self.store, device, state, limit)
    }

    /// The stored content of a completed pull (or of a push).
    pub fn content_path(&self, rec: &TransferRecord) -> Option<PathBuf> {
        let sha = transfer::parse_sha(rec.sha256.as_deref()?)?;
        let p = self.blobs.path(&sha);
        p.is_file().then_some(p)
    }

    /// A command of this id is stored (a read of one key).
    pub fn has_command(&self, id: CommandId) -> bool {
        matches!(self.commands.get(id), Ok(Some(_)))
    }

    /// Refuses a device that is unknown or revoked (counted).
    pub fn check_device(&self, device: DeviceId) -> Result<(), FileError> {
        let dev = outpost_storage::registry::get(&self.store, device)
            .map_err(|e| FileError::Store(e.to_string()))?;
        match dev {
            None => {
                self.metrics.files.refuse("unknown_device");
                Err(FileError::UnknownDevice(device))
            }
            Some(d) if d.revoked_at_ms.is_some() => {
                self.metrics.files.refuse("revoked_device");
                Err(FileError::RevokedDevice(device))
            }
            Some(_) => Ok(()),
        }
    }

    /// Refuses a size over the limit (counted).
    pub fn check_size(&self, size: u64) -> Result<(), FileError> {
        if size > self.cfg.max_bytes {
            self.metrics.files.refuse("too_large");
            return Err(FileError::TooLarge {
                size,
                max: self.cfg.max_bytes,
            });
        }
        Ok(())
    }

    /// Queues a push of the stored blob `sha256` (`size` bytes) to `path`.
    #[allow(clippy::too_many_arguments)]
    pub async fn push(
        &self,
        device: DeviceId,
        path: String,
        sha256: [u8; 32],
        size: u64,
        mode: Option<u32>,
        owner: Option<String>,
        by: String,
    ) -> Result<TransferRecord, FileError> {
        self.check_device(device)?;
        self.check_size(size)?;
        let id = TransferId::random();
        let sha = transfer::hex_sha(&sha256);
        let mut rec = TransferRecord::new(
            id,
            device,
            Direction::Push,
            path.clone(),
            Some(size),
            Some(sha.clone()),
            self.cfg.max_bytes,
            by.clone(),
            now_ms(),
        );
        rec.mode = mode;
        rec.owner = owner.clone();
        let spec = CommandSpec {
            kind: CommandKind::Builtin(BuiltinAction::PushFile {
                transfer: id,
                path,
                size_bytes: size,
                sha256: sha,
                mode,
                owner,
            }),
            ..file_spec(by)
        };
        self.create(rec, spec).await
    }

    /// Queues a pull of `path`.
    pub async fn pull(
        &self,
        device: DeviceId,
        path: String,
        by: String,
    ) -> Result<TransferRecord, FileError> {
        self.check_device(device)?;
        let id = TransferId::random();
        let rec = TransferRecord::new(
            id,
            device,
            Direction::Pull,
            path.clone(),
            None,
            None,
            self.cfg.max_bytes,
            by.clone(),
            now_ms(),
        );
        let spec = CommandSpec {
            kind: CommandKind::Builtin(BuiltinAction::PullFile {
                transfer: id,
                path,
                max_bytes: self.cfg.max_bytes,
            }),
            ..file_spec(by)
        };
        self.create(rec, spec).await
    }

    /// Queues a transfer central sent (its `PushFile` or `PullFile`
    /// command) under central's command id and transfer id, idempotently:
    /// a command of that id is returned as it is. A push's content must be
    /// stored here already (`crate::files::central` received it); a pull's
    /// limit is the smaller of central's and this site's. Returns the
    /// command as stored.
    pub async fn create_from_central(
        &self,
        id: CommandId,
        device: DeviceId,
        spec: CommandSpec,
    ) -> Result<CommandRecord, FileError> {
        if let Ok(Some(c)) = self.commands.get(id) {
            return Ok(c);
        }
        self.check_device(device)?;
        let by = spec.requested_by.clone();
        let mut spec = spec;
        let rec = match &mut spec.kind {
            CommandKind::Builtin(BuiltinAction::PushFile {
                transfer,
                path,
                size_bytes,
                sha256,
                mode,
                owner,
            }) => {
                self.check_size(*size_bytes)?;
                let Some(sha) = transfer::parse_sha(sha256) else {
                    self.metrics.files.refuse("invalid");
                    return Err(FileError::Invalid(format!(
                        "sha256 {sha256:?} is not a hash"
                    )));
                };
                if !self.blobs.has(&sha) {
                    return Err(FileError::Invalid(
                        "the content has not arrived from central".into(),
                    ));
                }
                let mut rec = TransferRecord::new(
                    *transfer,
                    device,
                    Direction::Push,
                    path.clone(),
                    Some(*size_bytes),
                    Some(sha256.clone()),
                    self.cfg.max_bytes,
                    by,
                    now_ms(),
                );
                rec.mode = *mode;
                rec.owner = owner.clone();
                rec
            }
            CommandKind::Builtin(BuiltinAction::PullFile {
                transfer,
                path,
                max_bytes,
            }) => {
                *max_bytes = (*max_bytes).min(self.cfg.max_bytes);
                TransferRecord::new(
                    *transfer,
                    device,
                    Direction::Pull,
                    path.clone(),
                    None,
                    None,
                    *max_bytes,
                    by,
                    now_ms(),
                )
            }
            _ => return Err(FileError::Invalid("not a file transfer".into())),
        };
        self.create_as(rec, spec, Some(id)).await?;
        self.commands
            .get(id)
            .map_err(|e| FileError::Store(e.to_string()))?
            .ok_or(FileError::Stopped)
    }

    async fn create(
        &self,
        rec: TransferRecord,
        spec: CommandSpec,
    ) -> Result<TransferRecord, FileError> {
        self.create_as(rec, spec, None).await
    }

    async fn create_as(
        &self,
        rec: TransferRecord,
        spec: CommandSpec,
        id: Option<CommandId>,
    ) -> Result<TransferRecord, FileError> {
        if let Err(e) = spec.validate() {
            self.metrics.files.refuse("invalid");
            return Err(FileError::Invalid(e.to_string()));
        }
        store::put(&self.store, &rec, true).map_err(|e| FileError::Store(e.to_string()))?;
        let created = match id {
            Some(id) => self.commands.create_with_id(id, rec.device, spec).await,
            None => self.commands.create(rec.device, spec).await,
        };
        let cmd = match created {
            Ok(c) => c,
            Err(e) => {
                let _ = store::delete(&self.store, &rec);
                return Err(match e {
                    CreateError::UnknownDevice(d) => FileError::UnknownDevice(d),
                    CreateError::RevokedDevice(d) => FileError::RevokedDevice(d),
                    CreateError::Invalid(e) => FileError::Invalid(e.to_string()),
                    CreateError::Store(e) => FileError::Store(e),
                    CreateError::Stopped => FileError::Stopped,
                });
            }
        };
        self.metrics.files.entered(TransferState::Queued.as_str());
        let action = match rec.direction {
            Direction::Push => "file.push",
            Direction::Pull => "file.pull",
        };
        audit(
            &self.store,
            &rec.requested_by,
            action,
            rec.device,
            format!(
                "{} {} {}{}",
                rec.id,
                rec.path,
                rec.sha256.as_deref().unwrap_or("-"),
                rec.size_bytes
                    .map(|s| format!(" {s} bytes"))
                    .unwrap_or_default()
            ),
        );
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Msg::Attach {
                transfer: rec.id,
                command: cmd.id,
                reply,
            })
            .map_err(|_| FileError::Stopped)?;
        Ok(rx.await.ok().flatten().unwrap_or(rec))
    }

    /// Cancels a transfer through its command (removed if still queued,
    /// otherwise the agent stops and removes its temporary file).
    pub async fn cancel(&self, id: TransferId, by: &str) -> Result<TransferRecord, FileError> {
        let rec = self
            .get(id)
            .map_err(|e| FileError::Store(e.to_string()))?
            .ok_or(FileError::NotFound(id))?;
        if rec.state.is_terminal() {
            return Err(FileError::Finished(id, rec.state));
        }
        let Some(cmd) = rec.command else {
            return Err(FileError::Invalid("the transfer has no command yet".into()));
        };
        audit(&self.store, by, "file.cancel", rec.device, id.to_string());
        match self.commands.cancel(cmd, by).await {
            Ok(_) | Err(CancelError::Finished(..)) => {}
            Err(CancelError::NotFound(_)) => return Err(FileError::NotFound(id)),
            Err(e) => return Err(FileError::Store(e.to_string())),
        }
        // A queued command is cancelled at once: give the worker a moment
        // to record it, then answer what is stored.
        for _ in 0..20 {
            if let Ok(Some(r)) = self.get(id)
                && r.state.is_terminal()
            {
                return Ok(r);
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        self.get(id)
            .map_err(|e| FileError::Store(e.to_string()))?
            .ok_or(FileError::NotFound(id))
    }

    /// Stops the worker (after the messages already sent).
    pub fn stop(&self) {
        let _ = self.tx.send(Msg::Stop);
    }
}

/// The command fields of a transfer (no process runs: no timeout beyond
/// the longest one, the usual expiry).
fn file_spec(by: String) -> CommandSpec {
    CommandSpec {
        timeout_ms: outpost_proto::command::MAX_TIMEOUT_MS,
        expiry_ms: DEFAULT_EXPIRY_MS,
        ..CommandSpec::shell("-", by)
    }
}

fn audit(store: &Store, actor: &str, action: &str, device: DeviceId, detail: String) {
    let e = AuditEntry {
        at_ms: now_ms(),
        actor: actor.to_string(),
        action: action.to_string(),
        target: device.to_string(),
        detail,
    };
    if let Err(e) = outpost_storage::registry::audit(store, &e) {
        warn!(error = %e, "writing the audit log failed");
    }
}

impl FileHooks for FileService {
    fn session_up(&self, device: DeviceId, link: RemoteLink) {
        let _ = self.tx.send(Msg::Up(device, link));
    }
    fn session_down(&self, device: DeviceId, link_id: u64) {
        let _ = self.tx.send(Msg::Down(device, link_id));
    }
    fn file_event(&self, device: DeviceId, event: ApplianceEvent) {
        let _ = self.tx.send(Msg::Event(device, event));
    }
    fn command_ended(&self, rec: &CommandRecord) {
        let _ = self.tx.send(Msg::CommandEnded(Box::new(rec.clone())));
    }
}

/// A task sending a pushed file's bytes on one session.
struct Sender {
    link_id: u64,
    stop: Arc<AtomicBool>,
}

impl Drop for Sender {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

struct Worker {
    store: Store,
    blobs: Arc<Blobs>,
    metrics: Arc<Metrics>,
    commands: CommandService,
    rt: tokio::runtime::Handle,
    /// The current session of each online device.
    links: HashMap<DeviceId, RemoteLink>,
    /// Push senders by transfer (one per transfer, on the current session).
    senders: HashMap<TransferId, Sender>,
    /// Pulls by the session their chunks last came on (resume detection).
    seen: HashMap<TransferId, u64>,
}

impl Worker {
    fn run(mut self, rx: std_mpsc::Receiver<Msg>) {
        while let Ok(m) = rx.recv() {
            let now = now_ms();
            match m {
                Msg::Stop => return,
                Msg::Up(d, link) => {
                    self.links.insert(d, link);
                }
                Msg::Down(d, link_id) => {
                    if self.links.get(&d).is_some_and(|l| l.id() == link_id) {
                        self.links.remove(&d);
                    }
                    self.senders.retain(|_, s| s.link_id != link_id);
                    self.seen.retain(|_, l| *l != link_id);
                }
                Msg::Event(d, ApplianceEvent::FileAcked { transfer, up_to }) => {
                    self.push_acked(d, transfer, up_to, now)
                }
                Msg::Event(d, ApplianceEvent::FileChunk(c)) => self.pull_chunk(d, c, now),
                Msg::Event(_, ApplianceEvent::FileAborted { transfer, reason }) => {
                    info!(%transfer, %reason, "the agent gave a transfer up");
                    self.senders.remove(&transfer);
                }
                Msg::Event(..) => {}
                Msg::CommandEnded(rec) => self.command_ended(&rec, now),
                Msg::Attach {
                    transfer,
                    command,
                    reply,
                } => {
                    let r = self.update(transfer, |r| {
                        r.command = Some(command);
                        true
                    });
                    let _ = reply.send(r);
                }
            }
        }
    }

    fn abort(&self, device: DeviceId, t: TransferId, reason: &str) {
        if let Some(link) = self.links.get(&device) {
            let _ = link.abort_file(t, reason);
        }
    }

    fn ack(&self, device: DeviceId, t: TransferId, up_to: u64) {
        if let Some(link) = self.links.get(&device) {
            let _ = link.ack_file(t, up_to);
        }
    }

    /// Reads, changes and (if `f` says so) stores a record; counts and
    /// audits a state change. Returns the record as stored.
    fn update(
        &mut self,
        t: TransferId,
        f: impl FnOnce(&mut TransferRecord) -> bool,
    ) -> Option<TransferRecord> {
        let mut rec = match store::get(&self.store, t) {
            Ok(Some(r)) => r,
            Ok(None) => return None,
            Err(e) => {
                warn!(error = %e, transfer = %t, "reading a transfer failed");
                self.metrics.files.store_errors.inc();
                return None;
            }
        };
        let before = rec.state;
        if f(&mut rec) {
            if let Err(e) = store::put(&self.store, &rec, false) {
                warn!(error = %e, transfer = %t, "storing a transfer failed");
                self.metrics.files.store_errors.inc();
                return None;
            }
            if rec.state != before {
                self.entered(&rec);
            }
        }
        Some(rec)
    }

    fn entered(&mut self, rec: &TransferRecord) {
        self.metrics.files.entered(rec.state.as_str());
        if !rec.state.is_terminal() {
            return;
        }
        self.senders.remove(&rec.id);
        self.seen.remove(&rec.id);
        if rec.direction == Direction::Pull {
            let _ = std::fs::remove_file(self.blobs.partial(rec.id));
        }
        if rec
            .reason
            .as_deref()
            .is_some_and(|r| r.starts_with("refused by the agent"))
        {
            self.metrics.files.refuse("agent_policy");
        }
        let mut detail = format!(
            "{} {} {} {}",
            rec.id,
            rec.state,
            rec.path,
            rec.sha256.as_deref().unwrap_or("-")
        );
        if let Some(r) = &rec.reason {
            detail.push_str(&format!(": {r}"));
        }
        info!(transfer = %rec.id, state = %rec.state, "file transfer ended");
        audit(&self.store, "agent", "file.result", rec.device, detail);
    }

    fn fail(&mut self, device: DeviceId, t: TransferId, reason: String, now: u64) {
        self.abort(device, t, &reason);
        self.update(t, |r| {
            model::step(
                r,
                Input::Failed {
                    reason: reason.clone(),
                },
                now,
            )
        });
    }

    fn push_acked(&mut self, device: DeviceId, t: TransferId, up_to: u64, now: u64) {
        let rec = match store::get(&self.store, t) {
            Ok(Some(r)) => r,
            Ok(None) => return self.abort(device, t, "unknown transfer"),
            Err(_) => return,
        };
        if rec.direction != Direction::Push || rec.device != device {
            return self.abort(device, t, "not a push to this device");
        }
        if rec.state.is_terminal() {
            if rec.state != TransferState::Completed {
                self.abort(device, t, &format!("the transfer is {}", rec.state));
            }
            return;
        }
        let size = rec.size_bytes.unwrap_or(0);
        let up_to = up_to.min(size);
        if up_to > rec.bytes_done {
            self.metrics
                .files
                .push_bytes_acked
                .inc_by(up_to - rec.bytes_done);
        }
        let Some(link) = self.links.get(&device).cloned() else {
            return;
        };
        let new_sender = self.senders.get(&t).is_none_or(|s| s.link_id != link.id());
        let resumed = new_sender && up_to > 0 && up_to < size;
        self.update(t, |r| {
            let mut c = model::step(r, Input::Progress { bytes_done: up_to }, now);
            if resumed {
                c |= model::step(r, Input::Resumed, now);
            }
            c
        });
        if !new_sender || up_to >= size {
            return;
        }
        if resumed {
            self.metrics.files.resumes.inc();
            info!(transfer = %t, offset = up_to, "push resumed");
        }
        let Some(sha) = rec.sha256.as_deref().and_then(transfer::parse_sha) else {
            return self.fail(device, t, "the transfer has no content hash".into(), now);
        };
        let path = self.blobs.path(&sha);
        let stop = Arc::new(AtomicBool::new(false));
        self.senders.insert(
            t,
            Sender {
                link_id: link.id(),
                stop: stop.clone(),
            },
        );
        let metrics = self.metrics.clone();
        self.rt.spawn(async move {
            let file = match std::fs::File::open(&path) {
                Ok(f) => f,
                Err(e) => {
                    let _ =
                        link.abort_file(t, &format!("the appliance cannot read the content: {e}"));
                    return;
                }
            };
            let mut from = up_to;
            while let Some((off, len, last)) = transfer::next_chunk(from, size, MAX_CHUNK_BYTES) {
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                let mut bytes = vec![0u8; len];
                if let Err(e) = file.read_exact_at(&mut bytes, off) {
                    let _ =
                        link.abort_file(t, &format!("the appliance cannot read the content: {e}"));
                    return;
                }
                let chunk = FileChunk {
                    transfer: t,
                    offset: off,
                    bytes,
                    last,
                };
                if link.send_file_chunk(chunk).await.is_err() {
                    return;
                }
                metrics.files.push_bytes_sent.inc_by(len as u64);
                from = off + len as u64;
                if last {
                    break;
                }
            }
        });
    }

    fn pull_chunk(&mut self, device: DeviceId, c: FileChunk, now: u64) {
        let t = c.transfer;
        let rec = match store::get(&self.store, t) {
            Ok(Some(r)) => r,
            Ok(None) => return self.abort(device, t, "unknown transfer"),
            Err(_) => return,
        };
        if rec.direction != Direction::Pull || rec.device != device {
            return self.abort(device, t, "not a pull from this device");
        }
        // Verified already (the last acknowledgement was lost): all held.
        if let (Some(_), Some(size)) = (&rec.sha256, rec.size_bytes) {
            return self.ack(device, t, PULL_HEADER_BYTES + size);
        }
        if rec.state.is_terminal() {
            return self.abort(device, t, &format!("the transfer is {}", rec.state));
        }
        let Some(link_id) = self.links.get(&device).map(|l| l.id()) else {
            return;
        };
        let resumed = self.seen.insert(t, link_id) != Some(link_id) && c.offset > 0;
        if resumed {
            self.metrics.files.resumes.inc();
        }
        match self.write_pull(&rec, &c) {
            Ok(Written::Ack(up_to, header)) => {
                self.update(t, |r| {
                    let mut ch = false;
                    if resumed {
                        ch |= model::step(r, Input::Resumed, now);
                    }
                    if let Some(h) = header
                        && r.size_bytes.is_none()
                    {
                        r.size_bytes = Some(h.size_bytes);
                        ch = true;
                    }
                    ch | model::step(
                        r,
                        Input::Progress {
                            bytes_done: up_to.saturating_sub(PULL_HEADER_BYTES),
                        },
                        now,
                    )
                });
                self.ack(device, t, up_to);
            }
            Ok(Written::Complete(header)) => {
                self.finish_pull(device, &rec, header, now);
            }
            Err(reason) => self.fail(device, t, reason, now),
        }
    }

    /// Writes a pull chunk to its partial file (fsync before it is
    /// acknowledged); `Err` gives the transfer up with the reason.
    fn write_pull(&self, rec: &TransferRecord, c: &FileChunk) -> Result<Written, String> {
        let path = self.blobs.partial(rec.id);
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| format!("the appliance cannot write {}: {e}", path.display()))?;
        let io = |e: std::io::Error| format!("the appliance cannot write {}: {e}", path.display());
        let mut durable = f.metadata().map_err(io)?.len();
        let header = |f: &std::fs::File, durable: u64| {
            if durable < PULL_HEADER_BYTES {
                return None;
            }
            let mut b = [0u8; PULL_HEADER_BYTES as usize];
            f.read_exact_at(&mut b, 0).ok()?;
            PullHeader::decode(&b)
        };
        let total = header(&f, durable)
            .map(|h| h.stream_len())
            .unwrap_or(PULL_HEADER_BYTES + rec.max_bytes);
        let len = c.bytes.len() as u64;
        match transfer::plan_chunk(durable, total, c.offset, len) {
            ChunkPlan::Write { skip, at } => {
                f.write_all_at(&c.bytes[skip..], at).map_err(io)?;
                f.sync_data().map_err(io)?;
                durable = c.offset + len;
                let content = (c.offset + len).saturating_sub(PULL_HEADER_BYTES.max(at));
                self.metrics.files.pull_bytes_stored.inc_by(content);
            }
            ChunkPlan::Duplicate => {
                self.metrics.files.pull_bytes_duplicate.inc_by(len);
            }
            ChunkPlan::Gap => {}
            ChunkPlan::TooLong => {
                self.metrics.files.refuse("too_large");
                return Err(format!(
                    "the agent sent more than the {} bytes announced or allowed",
                    total.saturating_sub(PULL_HEADER_BYTES)
                ));
            }
        }
        let h = header(&f, durable);
        if let Some(h) = h {
            if h.size_bytes > rec.max_bytes {
                self.metrics.files.refuse("too_large");
                return Err(format!(
                    "the file is {} bytes; the limit is {} bytes",
                    h.size_bytes, rec.max_bytes
                ));
            }
            if durable >= h.stream_len() {
                return Ok(Written::Complete(h));
            }
        }
        Ok(Written::Ack(durable, h))
    }

    fn finish_pull(&mut self, device: DeviceId, rec: &TransferRecord, h: PullHeader, now: u64) {
        let t = rec.id;
        let partial = self.blobs.partial(t);
        match self
            .blobs
            .store_from(&partial, PULL_HEADER_BYTES, Some(&h.sha256))
        {
            Ok(Ok((sha, n))) => {
                self.update(t, |r| {
                    model::step(
                        r,
                        Input::Verified {
                            size_bytes: n,
                            sha256: transfer::hex_sha(&sha),
                        },
                        now,
                    )
                });
                let _ = std::fs::remove_file(&partial);
                self.ack(device, t, h.stream_len());
            }
            Ok(Err(got)) => {
                self.metrics.files.hash_mismatches.inc();
                let _ = std::fs::remove_file(&partial);
                self.fail(
                    device,
                    t,
                    format!(
                        "sha256 mismatch: received {}, the agent announced {}",
                        transfer::hex_sha(&got),
                        transfer::hex_sha(&h.sha256)
                    ),
                    now,
                );
            }
            Err(e) => {
                self.metrics.files.store_errors.inc();
                self.fail(device, t, format!("storing the content failed: {e}"), now);
            }
        }
    }

    fn command_ended(&mut self, crec: &CommandRecord, now: u64) {
        let Some(t) = transfer_of(&crec.spec) else {
            return;
        };
        let mut reason = crec.reason.clone();
        if reason.is_none() && crec.state != CommandState::Completed {
            // The agent's last line of output says why.
            reason = self.commands.output(crec).ok().and_then(|o| {
                String::from_utf8_lossy(&o)
                    .lines()
                    .rev()
                    .find(|l| !l.trim().is_empty())
                    .map(str::to_string)
            });
        }
        let state = crec.state;
        self.update(t, |r| {
            model::step(r, Input::CommandEnded { state, reason }, now)
        });
    }
}

enum Written {
    /// Acknowledge up to this offset (the header, once it arrived).
    Ack(u64, Option<PullHeader>),
    /// Everything announced arrived.
    Complete(PullHeader),
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use outpost_proto::messages::{CommandOutcome, CommandResult};
    use outpost_proto::{CustomerId, TenantId};
    use outpost_storage::StoreOptions;
    use outpost_storage::model::DeviceRecord;

    use super::*;
    use crate::commands::service::CommandOptions;
    use crate::ingest::remote::{LinkInbox, LinkInput, RemoteHost};

    fn device(store: &Store, id: u64) -> DeviceId {
        let d = DeviceId(id);
        outpost_storage::registry::register(
            store,
            &DeviceRecord {
                id: d,
                tenant: TenantId::new("acme"),
                customer: CustomerId::new("dental"),
                hostname: "h".into(),
                os: "linux".into(),
                kernel: "6".into(),
                arch: "x86_64".into(),
                agent_version: "0".into(),
                enrolled_at_ms: 1,
                cert_serial: "00".into(),
                revoked_at_ms: None,
            },
        )
        .unwrap();
        d
    }

    /// The next file answer on the link (skipping command traffic).
    async fn file_answer(inbox: &mut LinkInbox) -> LinkInput {
        loop {
            let i = tokio::time::timeout(Duration::from_secs(5), inbox.rx.recv())
                .await
                .expect("a link input")
                .expect("open");
            if matches!(*i, LinkInput::AckFile(..) | LinkInput::AbortFile(..)) {
                return *i;
            }
        }
    }

    fn stream(content: &[u8], announced: &[u8]) -> Vec<u8> {
        let h = PullHeader {
            size_bytes: content.len() as u64,
            sha256: Sha256Of::of(announced),
        };
        let mut s = h.encode().to_vec();
        s.extend_from_slice(content);
        s
    }

    struct Sha256Of;
    impl Sha256Of {
        fn of(b: &[u8]) -> [u8; 32] {
            use sha2::Digest;
            sha2::Sha256::digest(b).into()
        }
    }

    fn chunk(t: TransferId, offset: u64, bytes: &[u8], last: bool) -> ApplianceEvent {
        ApplianceEvent::FileChunk(FileChunk {
            transfer: t,
            offset,
            bytes: bytes.to_vec(),
            last,
        })
    }

    async fn wait_state(svc: &FileService, t: TransferId, s: TransferState) -> TransferRecord {
        for _ in 0..200 {
            let r = svc.get(t).unwrap().unwrap();
            if r.state == s {
                return r;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("transfer {t} never reached {s}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_pull_is_kept_only_when_its_hash_matches_and_resent_bytes_are_acknowledged_again() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::db::open(&dir.path().join("db"), &StoreOptions::default()).unwrap();
        let metrics = Arc::new(Metrics::new());
        let (commands, ch) =
            CommandService::start(store.clone(), metrics.clone(), CommandOptions::default())
                .unwrap();
        let (svc, fh) = FileService::start(
            store.clone(),
            metrics.clone(),
            &dir.path().join("files"),
            FileConfig {
                max_bytes: 1000,
                ..FileConfig::default()
            },
            commands.clone(),
        )
        .unwrap();
        let dev = device(&store, 7);
        let (link, mut inbox) = RemoteLink::new(dev);
        commands.session_up(dev, link);

        // A good pull, in two chunks with a resend in between.
        let rec = svc
            .pull(dev, "/var/log/x".into(), "alice".into())
            .await
            .unwrap();
        assert_eq!(rec.state, TransferState::Queued);
        assert!(rec.command.is_some());
        let body = b"hello pulled world".to_vec();
        let s = stream(&body, &body);
        commands.event(dev, chunk(rec.id, 0, &s[..30], false));
        assert!(matches!(
            file_answer(&mut inbox).await,
            LinkInput::AckFile(_, 30)
        ));
        commands.event(dev, chunk(rec.id, 0, &s[..30], false));
        assert!(matches!(
            file_answer(&mut inbox).await,
            LinkInput::AckFile(_, 30)
        ));
        assert_eq!(metrics.files.pull_bytes_duplicate.get(), 30);
        commands.event(dev, chunk(rec.id, 30, &s[30..], true));
        let total = s.len() as u64;
        assert!(matches!(file_answer(&mut inbox).await, LinkInput::AckFile(_, n) if n == total));
        let r = svc.get(rec.id).unwrap().unwrap();
        assert_eq!(
            r.sha256.as_deref(),
            Some(transfer::hex_sha(&Sha256Of::of(&body)).as_str())
        );
        assert_eq!(std::fs::read(svc.content_path(&r).unwrap()).unwrap(), body);
        // The agent's result completes it.
        commands.event(
            dev,
            ApplianceEvent::Result(CommandResult {
                id: r.command.unwrap(),
                outcome: CommandOutcome::Exited { code: 0 },
                output_bytes: 0,
                finished_ms: 1,
            }),
        );
        let done = wait_state(&svc, rec.id, TransferState::Completed).await;
        assert_eq!(done.bytes_done, body.len() as u64);

        // A pull whose content does not match its header: aborted, failed,
        // counted, nothing kept.
        let bad = svc
            .pull(dev, "/var/log/y".into(), "alice".into())
            .await
            .unwrap();
        let s = stream(b"tampered", b"original");
        commands.event(dev, chunk(bad.id, 0, &s, true));
        match file_answer(&mut inbox).await {
            LinkInput::AbortFile(t, reason) => {
                assert_eq!(t, bad.id);
                assert!(reason.contains("sha256 mismatch"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
        let r = wait_state(&svc, bad.id, TransferState::Failed).await;
        assert!(r.reason.unwrap().contains("sha256 mismatch"));
        assert_eq!(metrics.files.hash_mismatches.get(), 1);
        assert!(!svc.blobs().has(&Sha256Of::of(b"tampered")));

        // A header announcing more than the limit: refused.
        let big = svc
            .pull(dev, "/var/log/z".into(), "alice".into())
            .await
            .unwrap();
        let h = PullHeader {
            size_bytes: 5000,
            sha256: [0; 32],
        };
        commands.event(dev, chunk(big.id, 0, &h.encode(), false));
        assert!(matches!(
            file_answer(&mut inbox).await,
            LinkInput::AbortFile(..)
        ));
        wait_state(&svc, big.id, TransferState::Failed).await;

        // A chunk of a transfer nobody asked for is aborted.
        commands.event(dev, chunk(TransferId([9; 16]), 0, b"x", true));
        assert!(
            matches!(file_answer(&mut inbox).await, LinkInput::AbortFile(t, _) if t == TransferId([9; 16]))
        );
        svc.stop();
        commands.stop();
        fh.join().unwrap();
        ch.join().unwrap();
    }
}
