//! File push and pull on the agent: the built-in actions
//! [`BuiltinAction::PushFile`] and [`BuiltinAction::PullFile`], which the
//! command executor ([`crate::commands::host`]) hands here once it recorded
//! the command (exactly once, like any command) and marked it running.
//!
//! * **Push** (appliance → device): the target is checked against
//!   `file_roots` ([`policy`]); the bytes go to a temporary file
//!   `.outpost-push-<transfer>.part` in the target's directory, each chunk
//!   written at its offset and `fsync`ed before it is acknowledged. At the
//!   announced size the file's SHA-256 is checked, the mode (default 0644)
//!   and owner set, the file `fsync`ed and renamed over the target, and
//!   the directory `fsync`ed. A mismatch removes the temporary file and
//!   writes nothing.
//! * **Pull** (device → appliance): the path is checked against
//!   `file_roots` (links resolved), its size against the appliance's
//!   limit (refused before anything is sent), the SHA-256 of exactly its
//!   first `size` bytes computed on the same open file, then the stream
//!   `PullHeader | those bytes` is sent from the offset the appliance
//!   acknowledged (a file that grows meanwhile is pulled as that prefix).
//!
//! Resume: each transfer in progress is an entry in the sled store
//! `STATE/files` (written and flushed before the first byte moves). The
//! bytes of a push that are durable are the temporary file's length; on
//! every session (and after a restart of the agent) the agent acknowledges
//! that length and the appliance sends from there. A pull's acknowledged
//! offset is stored with its entry and the agent resends from it. The
//! executor keeps a transfer's command `running` across a restart (it is
//! not reported `interrupted`) while its entry exists.
//!
//! The command ends `completed` (exit 0, one line of output saying what
//! was written or sent), `failed` with the reason as output (exit 1: hash
//! mismatch, write error, the appliance gave up) or refused by policy
//! (the reason), or `cancelled`. A transfer that makes no progress for
//! `file_idle_timeout` (agent.toml, default 10 min) while a session is up
//! fails with that reason ([`idle`]). This module must not touch the session
//! protocol or the command ledger: it talks through [`RemoteLink`] and
//! reports through [`Reporter`].

pub mod idle;
pub mod policy;
mod store;

use std::collections::HashMap;
use std::os::unix::fs::{FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use outpost_proto::command::{BuiltinAction, CommandKind, CommandSpec};
use outpost_proto::ids::{CommandId, TransferId};
use outpost_proto::messages::{CommandOutcome, FileChunk};
use outpost_proto::session::agent::AgentEvent;
use outpost_proto::transfer::{self, ChunkPlan, PullHeader};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::remote::RemoteLink;
use store::{Entry, FileStore};

/// Where the executor learns how a transfer's command ended.
pub trait Reporter: Send + Sync + 'static {
    /// A line of output for the command (what was written, or why not).
    fn output(&self, id: CommandId, bytes: Vec<u8>);
    /// The command is over (recorded by the executor, then reported).
    fn finished(&self, id: CommandId, outcome: CommandOutcome);
}

/// The spec if it is a file action.
pub fn file_action(spec: &[u8]) -> Option<CommandSpec> {
    let s = CommandSpec::decode(spec).ok()?;
    match &s.kind {
        CommandKind::Builtin(BuiltinAction::PushFile { .. } | BuiltinAction::PullFile { .. }) => {
            Some(s)
        }
        _ => None,
    }
}

enum Msg {
    Start {
        id: CommandId,
        spec: Box<CommandSpec>,
        cancel: CancellationToken,
    },
    Event(AgentEvent),
    Up(RemoteLink),
    Down,
    Cancelled(TransferId),
    PumpFailed(TransferId, String),
}

struct Inner {
    store: FileStore,
    roots: Vec<PathBuf>,
    tx: mpsc::UnboundedSender<Msg>,
    rx: Mutex<Option<mpsc::UnboundedReceiver<Msg>>>,
    reporter: OnceLock<Arc<dyn Reporter>>,
    /// `file_idle_timeout` in ms (0: none).
    idle_timeout_ms: AtomicU64,
}

/// The agent's file transfers (cheap to clone).
#[derive(Clone)]
pub struct FileAgent {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for FileAgent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileAgent").finish_non_exhaustive()
    }
}

/// A transfer in progress.
struct Live {
    entry: Entry,
    /// Push: the temporary file, open for writing.
    file: Option<std::fs::File>,
    /// Push: bytes durable in the temporary file.
    durable: u64,
    /// Pull: the file as opened when its size was read and its prefix
    /// hashed; the sender reads from it (after a restart: reopened).
    source: Option<Arc<std::fs::File>>,
    /// Ends the cancel watcher when the transfer ends.
    done: CancellationToken,
}

impl FileAgent {
    /// Opens the store in `dir` (`STATE/files`). `roots`: `file_roots`.
    pub fn open(dir: &Path, roots: Vec<PathBuf>) -> anyhow::Result<FileAgent> {
        let store = FileStore::open(dir)?;
        let (tx, rx) = mpsc::unbounded_channel();
        Ok(FileAgent {
            inner: Arc::new(Inner {
                store,
                roots,
                tx,
                rx: Mutex::new(Some(rx)),
                reporter: OnceLock::new(),
                idle_timeout_ms: AtomicU64::new(idle::DEFAULT_IDLE_TIMEOUT_MS),
            }),
        })
    }

    /// Sets `file_idle_timeout` (before [`FileAgent::attach`]; zero: none).
    pub fn set_idle_timeout(&self, d: Duration) {
        let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        self.inner.idle_timeout_ms.store(ms, Ordering::Relaxed);
    }

    /// Commands of the transfers in progress (kept `running` by the
    /// executor across a restart).
    pub fn live_commands(&self) -> Vec<CommandId> {
        match self.inner.store.entries() {
            Ok(v) => v.into_iter().map(|(_, e)| e.command()).collect(),
            Err(e) => {
                warn!(error = %e, "reading the file transfer store failed");
                Vec::new()
            }
        }
    }

    /// Drops the transfer of `command` (its command is over): its entry
    /// and its temporary file.
    pub fn forget(&self, command: CommandId) {
        if let Ok(v) = self.inner.store.entries() {
            for (t, e) in v {
                if e.command() == command {
                    if let Entry::Push { temp, .. } = &e {
                        let _ = std::fs::remove_file(temp);
                    }
                    let _ = self.inner.store.remove(t);
                }
            }
        }
    }

    /// Starts the worker with the transfers in progress; returns their
    /// commands' cancel handles for the executor.
    pub fn attach(&self, reporter: Arc<dyn Reporter>) -> Vec<(CommandId, CancellationToken)> {
        let _ = self.inner.reporter.set(reporter);
        let Some(rx) = self
            .inner
            .rx
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        else {
            return Vec::new();
        };
        let mut w = Worker {
            inner: self.inner.clone(),
            live: HashMap::new(),
            link: None,
            idle: idle::IdleClock::new(self.inner.idle_timeout_ms.load(Ordering::Relaxed)),
        };
        let mut tokens = Vec::new();
        for (t, e) in self.inner.store.entries().unwrap_or_default() {
            let cancel = CancellationToken::new();
            let command = e.command();
            match w.resume(t, e, cancel.clone()) {
                Ok(()) => {
                    info!(transfer = %t, "file transfer resumed after a restart");
                    tokens.push((command, cancel));
                }
                Err(e) => {
                    // Its command must end, not stay running forever.
                    warn!(transfer = %t, error = %e, "a file transfer could not resume");
                    let _ = self.inner.store.remove(t);
                    w.finished(
                        command,
                        CommandOutcome::Exited { code: 1 },
                        Some(format!(
                            "the transfer could not resume after a restart: {e}"
                        )),
                    );
                }
            }
        }
        tokio::spawn(w.run(rx));
        tokens
    }

    /// A file action's command was recorded and marked running: start it.
    pub fn start(&self, id: CommandId, spec: CommandSpec, cancel: CancellationToken) {
        let _ = self.inner.tx.send(Msg::Start {
            id,
            spec: Box::new(spec),
            cancel,
        });
    }

    /// A file flow event (`FileChunk`, `FileAcked`, `FileAborted`).
    pub fn event(&self, e: AgentEvent) {
        let _ = self.inner.tx.send(Msg::Event(e));
    }

    pub fn session_up(&self, link: RemoteLink) {
        let _ = self.inner.tx.send(Msg::Up(link));
    }

    pub fn session_down(&self) {
        let _ = self.inner.tx.send(Msg::Down);
    }
}

struct Worker {
    inner: Arc<Inner>,
    live: HashMap<TransferId, Live>,
    link: Option<RemoteLink>,
    idle: idle::IdleClock,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn sha_of_file(path: &Path) -> std::io::Result<[u8; 32]> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h)?;
    Ok(h.finalize().into())
}

impl Worker {
    fn reporter(&self) -> Option<&Arc<dyn Reporter>> {
        self.inner.reporter.get()
    }

    fn finished(&self, id: CommandId, outcome: CommandOutcome, line: Option<String>) {
        if let Some(r) = self.reporter() {
            if let Some(l) = line {
                r.output(id, format!("{l}\n").into_bytes());
            }
            r.finished(id, outcome);
        }
    }

    fn watch_cancel(
        &self,
        transfer: TransferId,
        cancel: CancellationToken,
        done: CancellationToken,
    ) {
        let tx = self.inner.tx.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = cancel.cancelled() => { let _ = tx.send(Msg::Cancelled(transfer)); }
                _ = done.cancelled() => {}
            }
        });
    }

    /// Re-opens a transfer found in the store at start.
    fn resume(&mut self, t: TransferId, e: Entry, cancel: CancellationToken) -> anyhow::Result<()> {
        let (file, durable) = match &e {
            Entry::Push { temp, size, .. } => {
                let f = std::fs::OpenOptions::new()
                    .write(true)
                    .read(true)
                    .open(temp)?;
                let len = f.metadata()?.len().min(*size);
                (Some(f), len)
            }
            Entry::Pull { .. } => (None, 0),
        };
        let done = CancellationToken::new();
        self.watch_cancel(t, cancel, done.clone());
        self.idle.progress(t, now_ms());
        self.live.insert(
            t,
            Live {
                entry: e,
                file,
                durable,
                // A pull reopens its file (its size and hash are stored).
                source: None,
                done,
            },
        );
        Ok(())
    }

    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Msg>) {
        // Checked a few times per timeout (at most every 30 s).
        let every = (self.idle.timeout_ms() / 4).clamp(100, 30_000);
        let mut tick = tokio::time::interval(Duration::from_millis(every));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let m = tokio::select! {
                m = rx.recv() => match m {
                    Some(m) => m,
                    None => break,
                },
                _ = tick.tick() => {
                    self.fail_idle(now_ms()).await;
                    continue;
                }
            };
            match m {
                Msg::Start { id, spec, cancel } => self.start(id, *spec, cancel).await,
                Msg::Event(AgentEvent::FileChunk(c)) => self.chunk(c).await,
                Msg::Event(AgentEvent::FileAcked { transfer, up_to }) => {
                    self.acked(transfer, up_to).await
                }
                Msg::Event(AgentEvent::FileAborted { transfer, reason }) => {
                    self.fail(
                        transfer,
                        format!("the appliance gave the transfer up: {reason}"),
                        false,
                    )
                    .await
                }
                Msg::Event(_) => {}
                Msg::Up(link) => {
                    self.idle.up(now_ms());
                    self.up(link)
                }
                Msg::Down => {
                    self.idle.down();
                    self.link = None
                }
                Msg::Cancelled(t) => {
                    if let Some(l) = self.end(t).await {
                        if let Some(link) = &self.link {
                            let _ = link.abort_file(t, "cancelled");
                        }
                        self.finished(
                            l.entry.command(),
                            CommandOutcome::Cancelled,
                            Some("cancelled".into()),
                        );
                    }
                }
                Msg::PumpFailed(t, reason) => self.fail(t, reason, true).await,
            }
        }
    }

    /// Fails every transfer idle beyond `file_idle_timeout` at `now_ms`.
    async fn fail_idle(&mut self, now_ms: u64) {
        for (t, idle_ms) in self.idle.idle_due(now_ms) {
            let reason = self.idle.reason(idle_ms);
            self.fail(t, reason, true).await;
        }
    }

    fn up(&mut self, link: RemoteLink) {
        for (t, l) in &self.live {
            match &l.entry {
                Entry::Push { .. } => {
                    // The appliance sends from here.
                    let _ = link.ack_file(*t, l.durable);
                }
                Entry::Pull { .. } => self.pump(link.clone(), *t, l),
            }
        }
        self.link = Some(link);
    }

    /// Removes a transfer (entry, temporary file) and returns it.
    async fn end(&mut self, t: TransferId) -> Option<Live> {
        self.idle.forget(t);
        let l = self.live.remove(&t)?;
        l.done.cancel();
        if let Entry::Push { temp, .. } = &l.entry {
            let _ = std::fs::remove_file(temp);
        }
        if let Err(e) = self.inner.store.remove(t) {
            warn!(transfer = %t, error = %e, "removing a file transfer entry failed");
        }
        let _ = self.inner.store.flush().await;
        Some(l)
    }

    /// Ends a transfer as failed: the reason is the command's output.
    async fn fail(&mut self, t: TransferId, reason: String, tell_appliance: bool) {
        let Some(l) = self.end(t).await else {
            return;
        };
        warn!(transfer = %t, %reason, "file transfer failed");
        if tell_appliance && let Some(link) = &self.link {
            let _ = link.abort_file(t, &reason);
        }
        self.finished(
            l.entry.command(),
            CommandOutcome::Exited { code: 1 },
            Some(reason),
        );
    }

    fn refuse(&self, id: CommandId, reason: String) {
        info!(%id, %reason, "file transfer refused");
        self.finished(id, CommandOutcome::Refused { reason }, None);
    }

    async fn start(&mut self, id: CommandId, spec: CommandSpec, cancel: CancellationToken) {
        if let Err(e) = spec.validate() {
            return self.refuse(id, e.to_string());
        }
        let CommandKind::Builtin(action) = spec.kind else {
            return;
        };
        match action {
            BuiltinAction::PushFile {
                transfer,
                path,
                size_bytes,
                sha256,
                mode,
                owner,
            } => {
                let r = self.prepare_push(id, transfer, &path, size_bytes, &sha256, mode, owner);
                match r {
                    Ok(live) => self.begin(transfer, live, cancel).await,
                    Err(reason) => self.refuse(id, reason),
                }
            }
            BuiltinAction::PullFile {
                transfer,
                path,
                max_bytes,
            } => {
                let roots = self.inner.roots.clone();
                let r =
                    tokio::task::spawn_blocking(move || prepare_pull(id, &roots, &path, max_bytes))
                        .await
                        .unwrap_or_else(|e| Err(format!("reading the file failed: {e}")));
                match r {
                    Ok((entry, source)) => {
                        let live = Live {
                            entry,
                            file: None,
                            durable: 0,
                            source: Some(Arc::new(source)),
                            done: CancellationToken::new(),
                        };
                        self.begin(transfer, live, cancel).await
                    }
                    Err(reason) => self.refuse(id, reason),
                }
            }
            _ => {}
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn prepare_push(
        &self,
        id: CommandId,
        transfer: TransferId,
        path: &str,
        size: u64,
        sha256: &str,
        mode: Option<u32>,
        owner: Option<String>,
    ) -> Result<Live, String> {
        let target = policy::resolve_push(&self.inner.roots, path)?;
        let sha = transfer::parse_sha(sha256).ok_or_else(|| format!("bad sha256 {sha256:?}"))?;
        let owner = match owner {
            None => None,
            Some(u) => {
                let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
                let (uid, gid, _) = crate::commands::exec::lookup_user(&passwd, &u)
                    .ok_or_else(|| format!("owner {u:?} does not exist on this device"))?;
                Some((u, uid, gid))
            }
        };
        let temp = target.dir.join(format!(".outpost-push-{transfer}.part"));
        let file = std::fs::OpenOptions::new()
            .write(true)
            .read(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&temp)
            .map_err(|e| format!("cannot create {}: {e}", temp.display()))?;
        Ok(Live {
            entry: Entry::Push {
                command: id,
                target: target.target.to_string_lossy().into_owned(),
                temp: temp.to_string_lossy().into_owned(),
                size,
                sha256: sha,
                mode,
                owner,
            },
            file: Some(file),
            durable: 0,
            source: None,
            done: CancellationToken::new(),
        })
    }

    /// Stores a prepared transfer (flushed) and gets it moving.
    async fn begin(&mut self, t: TransferId, live: Live, cancel: CancellationToken) {
        let id = live.entry.command();
        let stored = match self.inner.store.put(t, &live.entry) {
            Ok(()) => self.inner.store.flush().await,
            Err(e) => Err(e),
        };
        if let Err(e) = stored {
            if let Entry::Push { temp, .. } = &live.entry {
                let _ = std::fs::remove_file(temp);
            }
            return self.finished(
                id,
                CommandOutcome::Exited { code: 1 },
                Some(format!("recording the transfer failed: {e}")),
            );
        }
        self.watch_cancel(t, cancel, live.done.clone());
        self.idle.progress(t, now_ms());
        let push_size = match &live.entry {
            Entry::Push { size, .. } => Some(*size),
            Entry::Pull { .. } => None,
        };
        if let Some(link) = self.link.clone() {
            match push_size {
                Some(_) => {
                    let _ = link.ack_file(t, 0);
                }
                None => self.pump(link, t, &live),
            }
        }
        self.live.insert(t, live);
        if push_size == Some(0) {
            self.finish_push(t).await;
        }
    }

    /// Sends a pull's stream from its acknowledged offset on `link`.
    fn pump(&self, link: RemoteLink, t: TransferId, l: &Live) {
        let Entry::Pull {
            path,
            size,
            sha256,
            acked,
            ..
        } = &l.entry
        else {
            return;
        };
        let header = PullHeader {
            size_bytes: *size,
            sha256: *sha256,
        };
        let path = PathBuf::from(path);
        let from = *acked;
        let source = l.source.clone();
        let tx = self.inner.tx.clone();
        tokio::spawn(async move {
            if let Err(reason) = pump_pull(link, t, path, source, header, from).await {
                let _ = tx.send(Msg::PumpFailed(t, reason));
            }
        });
    }

    async fn chunk(&mut self, c: FileChunk) {
        let t = c.transfer;
        let Some(l) = self.live.get_mut(&t) else {
            if let Some(link) = &self.link {
                let _ = link.abort_file(t, "no push of this transfer is in progress on the agent");
            }
            return;
        };
        let (Entry::Push { size, .. }, Some(file)) = (&l.entry, &l.file) else {
            return;
        };
        let size = *size;
        match transfer::plan_chunk(l.durable, size, c.offset, c.bytes.len() as u64) {
            ChunkPlan::Write { skip, at } => {
                let r = file
                    .write_all_at(&c.bytes[skip..], at)
                    .and_then(|_| file.sync_data());
                if let Err(e) = r {
                    return self
                        .fail(t, format!("writing the temporary file failed: {e}"), true)
                        .await;
                }
                l.durable = c.offset + c.bytes.len() as u64;
                self.idle.progress(t, now_ms());
            }
            ChunkPlan::Duplicate | ChunkPlan::Gap => {}
            ChunkPlan::TooLong => {
                return self
                    .fail(
                        t,
                        format!("the appliance sent bytes beyond the announced {size} bytes"),
                        true,
                    )
                    .await;
            }
        }
        let durable = l.durable;
        if let Some(link) = &self.link {
            let _ = link.ack_file(t, durable);
        }
        if durable == size {
            self.finish_push(t).await;
        }
    }

    /// All bytes are durable: check, set mode and owner, rename.
    async fn finish_push(&mut self, t: TransferId) {
        let Some(l) = self.live.get(&t) else { return };
        let Entry::Push {
            command,
            target,
            temp,
            size,
            sha256,
            mode,
            owner,
        } = l.entry.clone()
        else {
            return;
        };
        let r = tokio::task::spawn_blocking(move || {
            install(&temp, &target, size, &sha256, mode, owner.as_ref())
        })
        .await
        .unwrap_or_else(|e| Err(format!("installing the file failed: {e}")));
        match r {
            Ok(line) => {
                // The temporary file is renamed: ending removes nothing.
                self.idle.forget(t);
                if let Some(l) = self.live.remove(&t) {
                    l.done.cancel();
                }
                let _ = self.inner.store.remove(t);
                let _ = self.inner.store.flush().await;
                info!(transfer = %t, "{line}");
                self.finished(command, CommandOutcome::Exited { code: 0 }, Some(line));
            }
            Err(reason) => self.fail(t, reason, true).await,
        }
    }

    async fn acked(&mut self, t: TransferId, up_to: u64) {
        let Some(l) = self.live.get_mut(&t) else {
            return;
        };
        let Entry::Pull {
            command,
            path,
            size,
            sha256,
            acked,
        } = &mut l.entry
        else {
            return;
        };
        if up_to <= *acked {
            return;
        }
        *acked = up_to;
        self.idle.progress(t, now_ms());
        let header = PullHeader {
            size_bytes: *size,
            sha256: *sha256,
        };
        let done = *acked >= header.stream_len();
        let line = format!(
            "sent {path}: {size} bytes, sha256 {}",
            transfer::hex_sha(sha256)
        );
        let command = *command;
        // Not flushed: after a crash the appliance dedupes what it has.
        let _ = self.inner.store.put(t, &l.entry);
        if done {
            self.idle.forget(t);
            if let Some(l) = self.live.remove(&t) {
                l.done.cancel();
            }
            let _ = self.inner.store.remove(t);
            let _ = self.inner.store.flush().await;
            self.finished(command, CommandOutcome::Exited { code: 0 }, Some(line));
        }
    }
}

/// Checks a pull before anything is sent (blocking: hashes the file).
fn prepare_pull(
    id: CommandId,
    roots: &[PathBuf],
    path: &str,
    max_bytes: u64,
) -> Result<(Entry, std::fs::File), String> {
    prepare_pull_with(id, roots, path, max_bytes, || {})
}

/// As [`prepare_pull`]; `after_stat` runs between reading the size and
/// hashing (a test grows the file there, as a live log grows).
///
/// A pull is a snapshot of the file's first `size` bytes, the size read
/// from the open file: the hash covers exactly those bytes (read from the
/// same open file), and the sender sends exactly those ([`pump_pull`]
/// reads below `size` only), so a file that grows meanwhile (a live log)
/// is pulled as the prefix it had, consistently.
fn prepare_pull_with(
    id: CommandId,
    roots: &[PathBuf],
    path: &str,
    max_bytes: u64,
    after_stat: impl FnOnce(),
) -> Result<(Entry, std::fs::File), String> {
    let real = policy::resolve_pull(roots, path)?;
    let unreadable = |e: std::io::Error| format!("{path:?} cannot be read: {e}");
    let file = std::fs::File::open(&real).map_err(unreadable)?;
    let size = file.metadata().map_err(unreadable)?.len();
    if size > max_bytes {
        return Err(format!(
            "{path:?} is {size} bytes, over the appliance's limit of {max_bytes} bytes"
        ));
    }
    after_stat();
    let sha = sha_of_prefix(&file, size).map_err(|e| match e {
        PrefixError::Io(e) => unreadable(e),
        PrefixError::Shrank(got) => {
            format!("{path:?} shrank while it was read ({got} of {size} bytes): pull it again")
        }
    })?;
    let entry = Entry::Pull {
        command: id,
        path: real.to_string_lossy().into_owned(),
        size,
        sha256: sha,
        acked: 0,
    };
    Ok((entry, file))
}

enum PrefixError {
    Io(std::io::Error),
    /// The file ended after this many bytes.
    Shrank(u64),
}

/// SHA-256 of exactly the first `size` bytes of `file` (bytes appended
/// later are not read).
fn sha_of_prefix(file: &std::fs::File, size: u64) -> Result<[u8; 32], PrefixError> {
    use std::io::Read;
    let mut h = Sha256::new();
    let got = std::io::copy(&mut file.take(size), &mut h).map_err(PrefixError::Io)?;
    if got < size {
        return Err(PrefixError::Shrank(got));
    }
    Ok(h.finalize().into())
}

/// Streams `header | content of path` from `from` until the last chunk is
/// out (or the session ends: `Ok`, the next session resumes). The content
/// is the file's first `header.size_bytes` bytes, read from `source` (the
/// file hashed) when the agent still has it open, else from `path`.
async fn pump_pull(
    link: RemoteLink,
    t: TransferId,
    path: PathBuf,
    source: Option<Arc<std::fs::File>>,
    header: PullHeader,
    mut from: u64,
) -> Result<(), String> {
    let total = header.stream_len();
    let head = header.encode();
    let file = match source {
        Some(f) => f,
        None => Arc::new(
            std::fs::File::open(&path)
                .map_err(|e| format!("{} cannot be read: {e}", path.display()))?,
        ),
    };
    let max = link.max_chunk_bytes().max(1);
    while let Some((off, len, last)) = transfer::next_chunk(from, total, max) {
        let mut bytes = vec![0u8; len];
        let mut filled = 0usize;
        let hl = transfer::PULL_HEADER_BYTES;
        if off < hl {
            let n = ((hl - off) as usize).min(len);
            bytes[..n].copy_from_slice(&head[off as usize..off as usize + n]);
            filled = n;
        }
        if filled < len {
            let at = off + filled as u64 - hl;
            file.read_exact_at(&mut bytes[filled..], at).map_err(|e| {
                format!(
                    "{} changed while it was sent (read at {at}: {e})",
                    path.display()
                )
            })?;
        }
        let chunk = FileChunk {
            transfer: t,
            offset: off,
            bytes,
            last,
        };
        if link.send_file_chunk(chunk).await.is_err() {
            return Ok(());
        }
        from = off + len as u64;
        if last {
            break;
        }
    }
    Ok(())
}

/// Checks the temporary file and puts it in place (blocking). Returns the
/// line reported as the command's output.
fn install(
    temp: &str,
    target: &str,
    size: u64,
    sha: &[u8; 32],
    mode: Option<u32>,
    owner: Option<&(String, u32, u32)>,
) -> Result<String, String> {
    let fail = |what: &str, e: std::io::Error| format!("{what} failed: {e}");
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(temp)
        .map_err(|e| fail("opening the temporary file", e))?;
    let len = f.metadata().map_err(|e| fail("reading its size", e))?.len();
    if len != size {
        return Err(format!(
            "received {len} bytes, expected {size}; nothing was written"
        ));
    }
    let got = sha_of_file(Path::new(temp)).map_err(|e| fail("hashing the received bytes", e))?;
    if &got != sha {
        return Err(format!(
            "sha256 mismatch: received {}, expected {}; nothing was written",
            transfer::hex_sha(&got),
            transfer::hex_sha(sha)
        ));
    }
    let mode = mode.unwrap_or(0o644);
    f.set_permissions(std::fs::Permissions::from_mode(mode))
        .map_err(|e| fail("setting the mode", e))?;
    if let Some((user, uid, gid)) = owner {
        std::os::unix::fs::fchown(&f, Some(*uid), Some(*gid))
            .map_err(|e| fail(&format!("setting the owner to {user}"), e))?;
    }
    f.sync_all().map_err(|e| fail("syncing the file", e))?;
    drop(f);
    std::fs::rename(temp, target).map_err(|e| fail(&format!("renaming over {target}"), e))?;
    if let Some(dir) = Path::new(target).parent()
        && let Ok(d) = std::fs::File::open(dir)
    {
        let _ = d.sync_all();
    }
    let mut line = format!(
        "wrote {target}: {size} bytes, sha256 {}, mode {mode:04o}",
        transfer::hex_sha(sha)
    );
    if let Some((user, _, _)) = owner {
        line.push_str(&format!(", owner {user}"));
    }
    Ok(line)
}

#[cfg(test)]
mod tests;
