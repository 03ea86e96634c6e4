//! The command service: one worker thread owns every change to command
//! state. The device sessions (through [`RemoteHost`]) and the API (through
//! [`CommandService`]'s methods) send it messages and never block; the
//! worker applies the pure state machine ([`super::machine`]), writes the
//! record durably, and only then sends, cancels or acknowledges on the
//! device's link.
//!
//! Group commit: the worker handles the messages already waiting (up to
//! [`GROUP_MAX`]) as one group; their writes (records, output, audit
//! entries) go into one batch, one WAL sync, and the group's link actions
//! and API answers wait until it is written. It also keeps the deadlines
//! ([`super::machine::deadline_ms`]) and the dispatch slots of bulk runs
//! ([`super::bulk::RunSlots`]).
//!
//! Reads (show, list, output) go to the store directly.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::mpsc as std_mpsc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use outpost_proto::DeviceId;
use outpost_proto::command::{CommandSpec, SpecError};
use outpost_proto::ids::CommandId;
use outpost_proto::messages::{Command, CommandOutcome};
use outpost_proto::session::appliance::ApplianceEvent;
use outpost_storage::Store;
use outpost_storage::model::AuditEntry;
use tokio::sync::oneshot;
use tracing::{debug, warn};

use super::bulk::{self, BulkRun, BulkTarget, RunId, RunSlots};
use super::machine::{self, Input};
use super::model::{CommandRecord, CommandState};
use super::output::{self, OutputCap};
use super::store;
use crate::ingest::remote::{RemoteHost, RemoteLink};
use crate::metrics::Metrics;

/// How often queued commands are checked for expiry.
const TICK: Duration = Duration::from_secs(1);

/// Why a command was not queued.
#[derive(Debug, thiserror::Error)]
pub enum CreateError {
    #[error("device {0} is not enrolled here")]
    UnknownDevice(DeviceId),
    #[error("device {0} is revoked: it takes no commands")]
    RevokedDevice(DeviceId),
    #[error("invalid command: {0}")]
    Invalid(#[from] SpecError),
    #[error("storing the command failed: {0}")]
    Store(String),
    #[error("the command service stopped")]
    Stopped,
}

/// Why a cancel was not taken.
#[derive(Debug, thiserror::Error)]
pub enum CancelError {
    #[error("command {0} not found")]
    NotFound(CommandId),
    #[error("command {0} already finished ({1})")]
    Finished(CommandId, CommandState),
    #[error("storing the cancel failed: {0}")]
    Store(String),
    #[error("the command service stopped")]
    Stopped,
}

/// Why a bulk run was not created.
#[derive(Debug, thiserror::Error)]
pub enum BulkError {
    #[error("device {0} is not enrolled here")]
    UnknownDevice(String),
    #[error("device {0} is revoked: it takes no commands")]
    RevokedDevice(DeviceId),
    #[error("no enrolled, non-revoked device matches {0}")]
    NoDevice(BulkTarget),
    #[error("invalid bulk run: {0}")]
    Invalid(String),
    #[error("storing the run failed: {0}")]
    Store(String),
    #[error("the command service stopped")]
    Stopped,
}

impl From<SpecError> for BulkError {
    fn from(e: SpecError) -> Self {
        BulkError::Invalid(e.to_string())
    }
}

/// Why a bulk run's cancel was not taken.
#[derive(Debug, thiserror::Error)]
pub enum CancelRunError {
    #[error("bulk run {0} not found")]
    NotFound(RunId),
    #[error("storing the cancel failed: {0}")]
    Store(String),
    #[error("the command service stopped")]
    Stopped,
}

/// What a bulk run asks for.
#[derive(Debug, Clone)]
pub struct BulkRequest {
    pub target: BulkTarget,
    /// The spec every member runs (`requested_by` names the actor).
    pub spec: CommandSpec,
    /// At most this many of the run's commands sent or running at once.
    pub concurrency: u32,
}

enum Msg {
    Up(DeviceId, RemoteLink),
    Down(DeviceId, u64),
    Event(DeviceId, ApplianceEvent),
    Create {
        device: DeviceId,
        spec: CommandSpec,
        /// A caller-given id (central's): an existing command of that id
        /// is answered as it is, never queued twice.
        id: Option<CommandId>,
        reply: oneshot::Sender<Result<CommandRecord, CreateError>>,
    },
    Cancel {
        id: CommandId,
        by: String,
        reply: oneshot::Sender<Result<CommandRecord, CancelError>>,
    },
    /// Route file events and transfer commands' ends to the file service.
    FileHooks(Arc<dyn crate::files::service::FileHooks>),
    CreateBulk {
        req: BulkRequest,
        reply: oneshot::Sender<Result<BulkRun, BulkError>>,
    },
    CancelRun {
        id: RunId,
        by: String,
        reply: oneshot::Sender<Result<BulkRun, CancelRunError>>,
    },
    Stop,
}

/// Settings of the command service.
#[derive(Debug, Clone, Copy, Default)]
pub struct CommandOptions {
    pub output_cap: OutputCap,
}

/// The handle the API and the sessions use (cheap to clone).
#[derive(Clone)]
pub struct CommandService {
    tx: std_mpsc::Sender<Msg>,
    store: Store,
    opts: CommandOptions,
    /// Serialises script edits (read the latest version, write the next).
    scripts: Arc<std::sync::Mutex<()>>,
    /// Bumped after every stored change of a command ([`CommandService::subscribe`]).
    changes: tokio::sync::watch::Receiver<u64>,
}

impl std::fmt::Debug for CommandService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CommandService").finish_non_exhaustive()
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl CommandService {
    /// Loads the open commands and starts the worker thread.
    pub fn start(
        store: Store,
        metrics: Arc<Metrics>,
        opts: CommandOptions,
    ) -> anyhow::Result<(CommandService, std::thread::JoinHandle<()>)> {
        let (changes_tx, changes) = tokio::sync::watch::channel(0u64);
        let mut w = Worker::new(store.clone(), metrics, opts, changes_tx);
        w.load()?;
        let (tx, rx) = std_mpsc::channel();
        let h = std::thread::Builder::new()
            .name("commands".into())
            .spawn(move || w.run(rx))?;
        Ok((
            CommandService {
                tx,
                store,
                opts,
                scripts: Arc::default(),
                changes,
            },
            h,
        ))
    }

    /// Queues a command for `device` (pushed at once if it is online).
    pub async fn create(
        &self,
        device: DeviceId,
        spec: CommandSpec,
    ) -> Result<CommandRecord, CreateError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Msg::Create {
                device,
                spec,
                id: None,
                reply,
            })
            .map_err(|_| CreateError::Stopped)?;
        rx.await.map_err(|_| CreateError::Stopped)?
    }

    /// Queues a command under a caller-given id (central's idempotency
    /// key): if a command of that id exists it is returned as it is and
    /// nothing is queued. Durable when it returns.
    pub async fn create_with_id(
        &self,
        id: CommandId,
        device: DeviceId,
        spec: CommandSpec,
    ) -> Result<CommandRecord, CreateError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Msg::Create {
                device,
                spec,
                id: Some(id),
                reply,
            })
            .map_err(|_| CreateError::Stopped)?;
        rx.await.map_err(|_| CreateError::Stopped)?
    }

    /// A counter bumped after every stored change of any command (state
    /// or output): wake on it, then read what changed.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.clone()
    }

    /// Cancels a command: removed if still queued, otherwise the agent is
    /// told to stop it (the state changes when it reports).
    pub async fn cancel(&self, id: CommandId, by: &str) -> Result<CommandRecord, CancelError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Msg::Cancel {
                id,
                by: by.to_string(),
                reply,
            })
            .map_err(|_| CancelError::Stopped)?;
        rx.await.map_err(|_| CancelError::Stopped)?
    }

    /// Creates a bulk run: one queued command per target device, stored
    /// with the run in one batch; at most `concurrency` of them are sent
    /// or running at once (see [`super::bulk`]).
    pub async fn create_bulk(&self, req: BulkRequest) -> Result<BulkRun, BulkError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Msg::CreateBulk { req, reply })
            .map_err(|_| BulkError::Stopped)?;
        rx.await.map_err(|_| BulkError::Stopped)?
    }

    /// Cancels a bulk run: its queued commands are cancelled, its running
    /// ones are told to stop (their states change when the agents report).
    pub async fn cancel_run(&self, id: RunId, by: &str) -> Result<BulkRun, CancelRunError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Msg::CancelRun {
                id,
                by: by.to_string(),
                reply,
            })
            .map_err(|_| CancelRunError::Stopped)?;
        rx.await.map_err(|_| CancelRunError::Stopped)?
    }

    pub fn get_run(&self, id: RunId) -> outpost_storage::error::Result<Option<BulkRun>> {
        bulk::get_run(&self.store, id)
    }

    pub fn list_runs(&self, limit: usize) -> outpost_storage::error::Result<Vec<BulkRun>> {
        bulk::list_runs(&self.store, limit)
    }

    pub fn get(&self, id: CommandId) -> outpost_storage::error::Result<Option<CommandRecord>> {
        store::get(&self.store, id)
    }

    pub fn list(
        &self,
        f: &store::ListFilter,
    ) -> outpost_storage::error::Result<Vec<CommandRecord>> {
        store::list(&self.store, f)
    }

    pub fn output(&self, rec: &CommandRecord) -> outpost_storage::error::Result<Vec<u8>> {
        store::read_output(&self.store, rec, self.opts.output_cap)
    }

    /// Stores the next version of a script (see
    /// [`super::scripts::put_next`]); edits are serialised. Blocking.
    pub fn put_script(
        &self,
        v: super::scripts::ScriptVersion,
        expect_new: bool,
    ) -> outpost_storage::error::Result<
        Result<super::scripts::ScriptVersion, Option<super::scripts::ScriptVersion>>,
    > {
        let _g = self.scripts.lock().unwrap_or_else(|p| p.into_inner());
        let r = super::scripts::put_next(&self.store, v, expect_new)?;
        if let Ok(v) = &r {
            let e = AuditEntry {
                at_ms: v.created_ms,
                actor: v.created_by.clone(),
                action: if v.version == 1 {
                    "script.add"
                } else {
                    "script.edit"
                }
                .into(),
                target: v.name.clone(),
                detail: format!("version {}", v.version),
            };
            outpost_storage::registry::audit(&self.store, &e)?;
        }
        Ok(r)
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Routes file flow events, session changes and the end of transfer
    /// commands to the file service (`crate::files`); until then a file
    /// chunk is aborted with a reason.
    pub fn set_file_hooks(&self, hooks: Arc<dyn crate::files::service::FileHooks>) {
        let _ = self.tx.send(Msg::FileHooks(hooks));
    }

    /// Stops the worker (after the messages already sent).
    pub fn stop(&self) {
        let _ = self.tx.send(Msg::Stop);
    }
}

impl RemoteHost for CommandService {
    fn session_up(&self, device: DeviceId, link: RemoteLink) {
        let _ = self.tx.send(Msg::Up(device, link));
    }

    fn event(&self, device: DeviceId, event: ApplianceEvent) {
        let _ = self.tx.send(Msg::Event(device, event));
    }

    fn session_down(&self, device: DeviceId, link: &RemoteLink) {
        let _ = self.tx.send(Msg::Down(device, link.id()));
    }
}

/// The worker's state.
struct Worker {
    store: Store,
    metrics: Arc<Metrics>,
    opts: CommandOptions,
    /// Bumped after every durable change ([`CommandService::subscribe`]).
    changes: tokio::sync::watch::Sender<u64>,
    /// The current session of each online device that carries commands.
    links: HashMap<DeviceId, RemoteLink>,
    /// Commands not yet terminal, by device.
    open: HashMap<DeviceId, BTreeSet<CommandId>>,
    /// Queued commands by expiry time.
    queued: BTreeSet<(u64, CommandId)>,
    /// The file service, told about sessions, file events and transfer
    /// commands' ends.
    files: Option<Arc<dyn crate::files::service::FileHooks>>,
    /// `sent`/`running` commands by no-report deadline
    /// ([`machine::deadline_ms`]), with their device.
    /// (deadline, id, device, applies even while the device is online:
    /// reboots).
    deadlines: BTreeSet<(u64, CommandId, DeviceId, bool)>,
    deadline_of: HashMap<CommandId, (u64, bool)>,
    /// Bulk runs with open commands: their dispatch slots.
    runs: HashMap<RunId, RunSlots>,
    /// The run of each open command that belongs to one.
    run_of: HashMap<CommandId, RunId>,
    /// Runs where a slot may have freed: dispatch their next members.
    refill: Vec<RunId>,
    /// The group of messages being handled: their writes go into one batch
    /// (one WAL sync), their link actions wait until it is durable.
    group: Option<Group>,
}

/// Most messages handled in one group (one write, one sync).
const GROUP_MAX: usize = 1024;

/// Group commit: the writes of a group of messages in one batch, the
/// records as they will be once it is written, and what to do on the
/// links after.
struct Group {
    batch: outpost_storage::Batch,
    dirty: bool,
    recs: HashMap<CommandId, CommandRecord>,
    after: Vec<LinkAction>,
    /// Transfer commands that ended in this group: told to the file
    /// service after the write.
    ended: Vec<CommandRecord>,
    /// Answers to the API (sent once the group is durable; given the
    /// write's error if it failed).
    replies: Vec<Reply>,
}

type Reply = Box<dyn FnOnce(Result<(), String>) + Send>;

/// Sends `r` once the group is durable (an error if its write failed).
fn reply_later<T: Send + 'static, E: Send + 'static>(
    tx: oneshot::Sender<Result<T, E>>,
    r: Result<T, E>,
    store_err: fn(String) -> E,
) -> Reply {
    Box::new(move |w: Result<(), String>| {
        let _ = tx.send(match w {
            Ok(()) => r,
            Err(e) => Err(store_err(e)),
        });
    })
}

/// A link action that waits for the group's write.
enum LinkAction {
    Send(DeviceId, Command),
    Cancel(DeviceId, CommandId),
    AckResult(DeviceId, CommandId),
    AckOutput(DeviceId, CommandId, u64),
}

impl Worker {
    fn new(
        store: Store,
        metrics: Arc<Metrics>,
        opts: CommandOptions,
        changes: tokio::sync::watch::Sender<u64>,
    ) -> Worker {
        Worker {
            changes,
            store,
            metrics,
            opts,
            links: HashMap::new(),
            open: HashMap::new(),
            queued: BTreeSet::new(),
            deadlines: BTreeSet::new(),
            deadline_of: HashMap::new(),
            runs: HashMap::new(),
            run_of: HashMap::new(),
            refill: Vec::new(),
            group: None,
            files: None,
        }
    }

    /// Starts a group: writes go into one batch until [`Worker::commit`].
    fn begin(&mut self) {
        if self.group.is_none() {
            self.group = Some(Group {
                batch: self.store.batch(),
                dirty: false,
                recs: HashMap::new(),
                after: Vec::new(),
                ended: Vec::new(),
                replies: Vec::new(),
            });
        }
    }

    /// Writes the group's batch (one sync), then does its link actions. A
    /// failed write does none of them and reloads the in-memory state
    /// from the store (the peers re-send what was not acknowledged).
    fn commit(&mut self) {
        let Some(g) = self.group.take() else {
            return;
        };
        if g.dirty
            && let Err(e) = self.store.write(g.batch)
        {
            warn!(error = %e, "storing a group of command changes failed");
            self.metrics.commands.store_errors.inc();
            self.open.clear();
            self.queued.clear();
            self.deadlines.clear();
            self.deadline_of.clear();
            self.runs.clear();
            self.run_of.clear();
            self.refill.clear();
            if let Err(e) = self.load() {
                warn!(error = %e, "reloading open commands failed");
            }
            for r in g.replies {
                r(Err(e.to_string()));
            }
            return;
        }
        for r in g.replies {
            r(Ok(()));
        }
        if g.dirty {
            // Subscribers (central's downlink) read what changed: only now
            // is it durable.
            self.changes.send_modify(|n| *n = n.wrapping_add(1));
        }
        if let Some(f) = &self.files {
            for rec in &g.ended {
                f.command_ended(rec);
            }
        }
        for a in g.after {
            self.link_now(a);
        }
    }

    fn link_now(&self, a: LinkAction) {
        let dev = match &a {
            LinkAction::Send(d, _)
            | LinkAction::Cancel(d, _)
            | LinkAction::AckResult(d, _)
            | LinkAction::AckOutput(d, _, _) => *d,
        };
        let Some(link) = self.links.get(&dev) else {
            return;
        };
        match a {
            LinkAction::Send(_, c) => {
                let id = c.id;
                if let Err(e) = link.send_command(c) {
                    debug!(error = %e, %id, "command not sent (sent again on reconnect)");
                }
            }
            LinkAction::Cancel(_, id) => {
                let _ = link.cancel_command(id);
            }
            LinkAction::AckResult(_, id) => {
                let _ = link.ack_result(id);
            }
            LinkAction::AckOutput(_, id, up_to) => {
                let _ = link.ack_output(id, up_to);
            }
        }
    }

    /// Answers the API once what it changed is durable (at once outside a
    /// group).
    fn answer(&mut self, r: Reply) {
        match &mut self.group {
            Some(g) => g.replies.push(r),
            None => r(Ok(())),
        }
    }

    /// A link action: at once, or after the group's write.
    fn link(&mut self, a: LinkAction) {
        match &mut self.group {
            Some(g) => g.after.push(a),
            None => self.link_now(a),
        }
    }

    /// A record as it stands (including the group's unwritten changes).
    fn read(&self, id: CommandId) -> outpost_storage::error::Result<Option<CommandRecord>> {
        if let Some(r) = self.group.as_ref().and_then(|g| g.recs.get(&id)) {
            return Ok(Some(r.clone()));
        }
        store::get(&self.store, id)
    }

    /// Stores a record (and `extra` writes) in the group's batch, or at
    /// once outside a group.
    fn persist(
        &mut self,
        rec: &CommandRecord,
        extra: impl FnOnce(&mut outpost_storage::Batch) -> outpost_storage::error::Result<()>,
    ) -> outpost_storage::error::Result<()> {
        match &mut self.group {
            Some(g) => {
                extra(&mut g.batch)?;
                store::put(&mut g.batch, rec, false)?;
                g.dirty = true;
                g.recs.insert(rec.id, rec.clone());
                Ok(())
            }
            None => {
                let mut b = self.store.batch();
                extra(&mut b)?;
                store::put(&mut b, rec, false)?;
                self.store.write(b)
            }
        }
    }

    fn load(&mut self) -> anyhow::Result<()> {
        let mut positions: HashMap<RunId, HashMap<CommandId, u32>> = HashMap::new();
        for (_device, id) in store::open_commands(&self.store)? {
            if let Some(rec) = store::get(&self.store, id)? {
                if let Some(run) = bulk::run_of(&self.store, id)? {
                    if let std::collections::hash_map::Entry::Vacant(slot) = positions.entry(run) {
                        let Some(r) = bulk::get_run(&self.store, run)? else {
                            warn!(%run, %id, "a command names a bulk run that is not stored");
                            self.index(&rec);
                            continue;
                        };
                        slot.insert(
                            r.members
                                .iter()
                                .enumerate()
                                .map(|(i, (_, c))| (*c, i as u32))
                                .collect(),
                        );
                        self.runs.insert(run, RunSlots::new(r.concurrency));
                    }
                    let pos = positions
                        .get(&run)
                        .and_then(|p| p.get(&id))
                        .copied()
                        .unwrap_or(u32::MAX);
                    if let Some(sl) = self.runs.get_mut(&run) {
                        sl.update(pos, id, rec.device, rec.state);
                        self.run_of.insert(id, run);
                    }
                }
                self.index(&rec);
            }
        }
        self.update_gauge();
        Ok(())
    }

    /// Whether a bulk run's slot limit holds this command back.
    fn held(&self, id: CommandId) -> bool {
        self.run_of
            .get(&id)
            .and_then(|r| self.runs.get(r))
            .is_some_and(|sl| !sl.may_dispatch(id))
    }

    /// Dispatches the next members of the runs where a slot freed.
    fn refill_runs(&mut self, now: u64) {
        while let Some(run) = self.refill.pop() {
            // A member may expire instead of going out: look again (a few
            // rounds at most, in case a write keeps failing).
            for _ in 0..8 {
                let next = match self.runs.get(&run) {
                    Some(sl) => sl.next(|d| self.links.contains_key(&d)),
                    None => break,
                };
                if next.is_empty() {
                    break;
                }
                for id in next {
                    self.apply(id, Input::Dispatch, now);
                }
            }
        }
    }

    fn update_gauge(&self) {
        let n: usize = self.open.values().map(BTreeSet::len).sum();
        self.metrics.commands.open.set(n as i64);
    }

    /// Keeps the in-memory indexes in step with a record.
    fn index(&mut self, rec: &CommandRecord) {
        if rec.state.is_terminal() {
            if let Some(s) = self.open.get_mut(&rec.device) {
                s.remove(&rec.id);
                if s.is_empty() {
                    self.open.remove(&rec.device);
                }
            }
        } else {
            self.open.entry(rec.device).or_default().insert(rec.id);
        }
        if rec.state == CommandState::Queued {
            self.queued.insert((rec.expires_ms, rec.id));
        } else {
            self.queued.remove(&(rec.expires_ms, rec.id));
        }
        if let Some((old, any)) = self.deadline_of.remove(&rec.id) {
            self.deadlines.remove(&(old, rec.id, rec.device, any));
        }
        if let Some(d) = machine::deadline_ms(rec) {
            let any = machine::reboot_delay_ms(rec).is_some();
            self.deadline_of.insert(rec.id, (d, any));
            self.deadlines.insert((d, rec.id, rec.device, any));
        }
    }

    fn run(mut self, rx: std_mpsc::Receiver<Msg>) {
        let mut next_tick = std::time::Instant::now() + TICK;
        loop {
            let wait = next_tick.saturating_duration_since(std::time::Instant::now());
            match rx.recv_timeout(wait) {
                Ok(Msg::Stop) | Err(std_mpsc::RecvTimeoutError::Disconnected) => return,
                Ok(m) => {
                    // Group commit: what is already waiting is handled with
                    // it, written in one batch, then sent.
                    self.begin();
                    self.handle(m);
                    let mut stop = false;
                    for _ in 1..GROUP_MAX {
                        match rx.try_recv() {
                            Ok(Msg::Stop) => {
                                stop = true;
                                break;
                            }
                            Ok(m) => self.handle(m),
                            Err(_) => break,
                        }
                    }
                    self.commit();
                    if stop {
                        return;
                    }
                }
                Err(std_mpsc::RecvTimeoutError::Timeout) => {}
            }
            if std::time::Instant::now() >= next_tick {
                self.begin();
                self.tick(now_ms());
                self.commit();
                next_tick = std::time::Instant::now() + TICK;
            }
        }
    }

    fn handle(&mut self, m: Msg) {
        let now = now_ms();
        match m {
            Msg::Up(device, link) => {
                if let Some(f) = &self.files {
                    f.session_up(device, link.clone());
                }
                self.links.insert(device, link);
                let ids: Vec<CommandId> = self
                    .open
                    .get(&device)
                    .map(|s| s.iter().copied().collect())
                    .unwrap_or_default();
                for id in ids {
                    if !self.held(id) {
                        self.apply(id, Input::Dispatch, now);
                    }
                }
            }
            Msg::Down(device, link_id) => {
                if let Some(f) = &self.files {
                    f.session_down(device, link_id);
                }
                if self.links.get(&device).is_some_and(|l| l.id() == link_id) {
                    self.links.remove(&device);
                }
            }
            Msg::Event(device, e) => self.event(device, e, now),
            Msg::Create {
                device,
                spec,
                id,
                reply,
            } => {
                let r = self.create(device, spec, id, now);
                self.answer(reply_later(reply, r, CreateError::Store));
            }
            Msg::Cancel { id, by, reply } => {
                let r = self.cancel(id, &by, now);
                self.answer(reply_later(reply, r, CancelError::Store));
            }
            Msg::CreateBulk { req, reply } => {
                let r = self.create_bulk(req, now);
                self.answer(reply_later(reply, r, BulkError::Store));
            }
            Msg::CancelRun { id, by, reply } => {
                let r = self.cancel_run(id, &by, now);
                self.answer(reply_later(reply, r, CancelRunError::Store));
            }
            Msg::FileHooks(h) => self.files = Some(h),
            Msg::Stop => {}
        }
        self.refill_runs(now);
        self.update_gauge();
    }

    /// The devices a bulk target names, in order (deduplicated).
    fn resolve(&self, target: &BulkTarget) -> Result<Vec<DeviceId>, BulkError> {
        let st = |e: outpost_storage::error::StorageError| BulkError::Store(e.to_string());
        let mut out = Vec::new();
        match target {
            BulkTarget::Devices(names) => {
                let mut seen = std::collections::HashSet::new();
                for n in names {
                    let d: DeviceId = n
                        .parse()
                        .map_err(|e| BulkError::Invalid(format!("device {n:?}: {e}")))?;
                    let Some(rec) = outpost_storage::registry::get(&self.store, d).map_err(st)?
                    else {
                        self.refuse("unknown_device");
                        return Err(BulkError::UnknownDevice(n.clone()));
                    };
                    if rec.revoked_at_ms.is_some() {
                        self.refuse("revoked_device");
                        return Err(BulkError::RevokedDevice(d));
                    }
                    if seen.insert(d) {
                        out.push(d);
                    }
                }
            }
            BulkTarget::Tag(_) | BulkTarget::Customer(_) | BulkTarget::All => {
                let mut all = Vec::new();
                self.store
                    .scan::<outpost_storage::model::DeviceRecord>(
                        outpost_storage::registry::DEVICES,
                        &[],
                        None,
                        |_, r| {
                            all.push(r);
                            true
                        },
                    )
                    .map_err(st)?;
                for r in all {
                    if r.revoked_at_ms.is_some() {
                        continue;
                    }
                    let take = match target {
                        BulkTarget::Tag(t) => outpost_storage::registry::tags(&self.store, r.id)
                            .map_err(st)?
                            .iter()
                            .any(|x| x == t),
                        BulkTarget::Customer(c) => r.customer.as_str() == c,
                        _ => true,
                    };
                    if take {
                        out.push(r.id);
                    }
                }
            }
        }
        if out.is_empty() {
            return Err(BulkError::NoDevice(target.clone()));
        }
        Ok(out)
    }

    fn create_bulk(&mut self, req: BulkRequest, now: u64) -> Result<BulkRun, BulkError> {
        if req.concurrency == 0 || req.concurrency > bulk::MAX_CONCURRENCY {
            self.refuse("invalid_spec");
            return Err(BulkError::Invalid(format!(
                "concurrency {} is not within 1..={}",
                req.concurrency,
                bulk::MAX_CONCURRENCY
            )));
        }
        if let Err(e) = req
            .spec
            .validate()
            .and_then(|_| req.spec.encode().map(|_| ()))
        {
            self.refuse("invalid_spec");
            return Err(e.into());
        }
        let devices = self.resolve(&req.target)?;
        let recs: Vec<CommandRecord> = devices
            .iter()
            .map(|d| CommandRecord::new(CommandId::random(), *d, req.spec.clone(), now))
            .collect();
        let run = BulkRun {
            id: CommandId::random(),
            target: req.target.clone(),
            command: req.spec.summary(),
            concurrency: req.concurrency,
            created_ms: now,
            created_by: req.spec.requested_by.clone(),
            cancelled: None,
            members: recs.iter().map(|r| (r.device, r.id)).collect(),
        };
        let mut b = self.store.batch();
        let st = |e: outpost_storage::error::StorageError| BulkError::Store(e.to_string());
        for r in &recs {
            store::put(&mut b, r, true).map_err(st)?;
        }
        bulk::put_run(&mut b, &run, true).map_err(st)?;
        self.store.write(b).map_err(st)?;
        for _ in &recs {
            self.metrics.commands.entered(CommandState::Queued.as_str());
        }
        self.metrics.commands.bulk_runs.inc();
        self.audit_target(
            &run.created_by,
            "command.bulk",
            &run.target.to_string(),
            format!(
                "run {} on {} devices, concurrency {}: {}",
                run.id,
                recs.len(),
                run.concurrency,
                run.command
            ),
            now,
        );
        let mut slots = RunSlots::new(run.concurrency);
        for (i, r) in recs.iter().enumerate() {
            slots.update(i as u32, r.id, r.device, r.state);
            self.run_of.insert(r.id, run.id);
            self.index(r);
        }
        self.runs.insert(run.id, slots);
        self.refill.push(run.id);
        Ok(run)
    }

    fn cancel_run(&mut self, id: RunId, by: &str, now: u64) -> Result<BulkRun, CancelRunError> {
        let st = |e: outpost_storage::error::StorageError| CancelRunError::Store(e.to_string());
        let mut run = bulk::get_run(&self.store, id)
            .map_err(st)?
            .ok_or(CancelRunError::NotFound(id))?;
        if run.cancelled.is_none() {
            run.cancelled = Some((now, by.to_string()));
            let mut b = self.store.batch();
            bulk::put_run(&mut b, &run, false).map_err(st)?;
            self.store.write(b).map_err(st)?;
        }
        self.audit_target(
            by,
            "command.bulk_cancel",
            &run.target.to_string(),
            format!("run {id}"),
            now,
        );
        // Queued members first (those without a no-report deadline: not
        // sent yet), so that no freed slot sends one of them.
        let open: Vec<CommandId> = run
            .members
            .iter()
            .map(|(_, c)| *c)
            .filter(|c| self.run_of.contains_key(c))
            .collect();
        let (waiting, in_flight): (Vec<CommandId>, Vec<CommandId>) = open
            .into_iter()
            .partition(|c| !self.deadline_of.contains_key(c));
        for c in waiting.into_iter().chain(in_flight) {
            self.apply(c, Input::Cancel { by: by.into() }, now);
        }
        Ok(run)
    }

    fn refuse(&self, reason: &str) {
        self.metrics.commands.refuse(reason);
    }

    fn create(
        &mut self,
        device: DeviceId,
        spec: CommandSpec,
        id: Option<CommandId>,
        now: u64,
    ) -> Result<CommandRecord, CreateError> {
        if let Some(id) = id
            && let Some(rec) = self
                .read(id)
                .map_err(|e| CreateError::Store(e.to_string()))?
        {
            return Ok(rec);
        }
        let dev = outpost_storage::registry::get(&self.store, device)
            .map_err(|e| CreateError::Store(e.to_string()))?;
        let Some(dev) = dev else {
            self.refuse("unknown_device");
            return Err(CreateError::UnknownDevice(device));
        };
        if dev.revoked_at_ms.is_some() {
            self.refuse("revoked_device");
            return Err(CreateError::RevokedDevice(device));
        }
        if let Err(e) = spec.validate().and_then(|_| spec.encode().map(|_| ())) {
            self.refuse("invalid_spec");
            return Err(e.into());
        }
        let rec = CommandRecord::new(id.unwrap_or_else(CommandId::random), device, spec, now);
        match &mut self.group {
            Some(g) => {
                store::put(&mut g.batch, &rec, true)
                    .map_err(|e| CreateError::Store(e.to_string()))?;
                g.dirty = true;
                g.recs.insert(rec.id, rec.clone());
            }
            None => {
                let mut b = self.store.batch();
                store::put(&mut b, &rec, true).map_err(|e| CreateError::Store(e.to_string()))?;
                self.store
                    .write(b)
                    .map_err(|e| CreateError::Store(e.to_string()))?;
            }
        }
        self.metrics.commands.entered(CommandState::Queued.as_str());
        self.audit(
            &rec.spec.requested_by,
            "command.run",
            device,
            format!("{} {}", rec.id, rec.spec.summary()),
            now,
        );
        self.index(&rec);
        // Online: out at once.
        if self.links.contains_key(&device) {
            self.apply(rec.id, Input::Dispatch, now);
        }
        self.read(rec.id).ok().flatten().map(Ok).unwrap_or(Ok(rec))
    }

    fn cancel(&mut self, id: CommandId, by: &str, now: u64) -> Result<CommandRecord, CancelError> {
        let rec = self
            .read(id)
            .map_err(|e| CancelError::Store(e.to_string()))?
            .ok_or(CancelError::NotFound(id))?;
        if rec.state.is_terminal() {
            return Err(CancelError::Finished(id, rec.state));
        }
        self.audit(by, "command.cancel", rec.device, id.to_string(), now);
        match self.apply(id, Input::Cancel { by: by.into() }, now) {
            Some((rec, _)) => Ok(rec),
            None => Err(CancelError::Store("see the logs".into())),
        }
    }

    fn tick(&mut self, now: u64) {
        let due: Vec<CommandId> = self
            .queued
            .iter()
            .take_while(|(at, _)| *at <= now)
            .map(|(_, id)| *id)
            .collect();
        for id in due {
            self.apply(id, Input::Tick, now);
        }
        // Devices still online enforce their commands' timeouts themselves
        // (a reboot's deadline holds online or not).
        let overdue: Vec<(CommandId, bool)> = self
            .deadlines
            .iter()
            .take_while(|(at, _, _, _)| *at <= now)
            .map(|(_, id, dev, any)| (*id, *any, self.links.contains_key(dev)))
            .filter(|(_, any, online)| *any || !online)
            .map(|(id, _, online)| (id, online))
            .collect();
        for (id, online) in overdue {
            if let Some((rec, _)) = self.apply(id, Input::NoReportCheck { online }, now)
                && machine::ended_by_deadline(&rec)
            {
                self.metrics.commands.no_report_deadlines.inc();
            }
        }
        self.refill_runs(now);
        self.update_gauge();
    }

    fn audit(&mut self, actor: &str, action: &str, device: DeviceId, detail: String, now: u64) {
        self.audit_target(actor, action, &device.to_string(), detail, now)
    }

    fn audit_target(&mut self, actor: &str, action: &str, target: &str, detail: String, now: u64) {
        let e = AuditEntry {
            at_ms: now,
            actor: actor.to_string(),
            action: action.to_string(),
            target: target.to_string(),
            detail,
        };
        let r = match &mut self.group {
            Some(g) => {
                g.dirty = true;
                g.batch.put(
                    outpost_storage::registry::AUDIT,
                    &outpost_storage::keys::time_counter_key::<4>(&[], now),
                    &e,
                )
            }
            None => outpost_storage::registry::audit(&self.store, &e),
        };
        if let Err(e) = r {
            warn!(error = %e, "writing the audit log failed");
        }
    }

    /// Runs one input through the machine, stores the record if it
    /// changed, then does what the step says. `None` when the command is
    /// unknown or the write failed (then nothing is sent or acked).
    fn apply(
        &mut self,
        id: CommandId,
        input: Input,
        now: u64,
    ) -> Option<(CommandRecord, machine::Step)> {
        let mut rec = match self.read(id) {
            Ok(Some(r)) => r,
            Ok(None) => {
                self.metrics.commands.unknown_events.inc();
                return None;
            }
            Err(e) => {
                warn!(error = %e, %id, "reading a command failed");
                self.metrics.commands.store_errors.inc();
                return None;
            }
        };
        let before = rec.state;
        let was_started = matches!(input, Input::Started { .. });
        let s = machine::step(&mut rec, input, now);
        if s.changed
            && let Err(e) = self.persist(&rec, |_| Ok(()))
        {
            warn!(error = %e, %id, "storing a command transition failed");
            self.metrics.commands.store_errors.inc();
            return None;
        }
        if rec.state != before {
            self.entered(&rec, now);
            if was_started {
                let secs = now.saturating_sub(rec.created_ms) as f64 / 1000.0;
                self.metrics.commands.dispatch_latency_seconds.observe(secs);
            }
        }
        if s.duplicate && matches!(rec.state, st if st.is_terminal()) && s.ack_result {
            self.metrics.commands.duplicate_results.inc();
        }
        if self.links.contains_key(&rec.device) {
            if s.send {
                match rec.spec.encode() {
                    Ok(spec) => self.link(LinkAction::Send(rec.device, Command { id, spec })),
                    Err(e) => warn!(error = %e, %id, "a stored command no longer encodes"),
                }
            }
            if s.send_cancel {
                self.link(LinkAction::Cancel(rec.device, id));
            }
            if s.ack_result {
                self.link(LinkAction::AckResult(rec.device, id));
            }
        }
        Some((rec, s))
    }

    /// Counts and audits a state change.
    fn entered(&mut self, rec: &CommandRecord, now: u64) {
        self.metrics.commands.entered(rec.state.as_str());
        self.index(rec);
        if let Some(run) = self.run_of.get(&rec.id).copied() {
            if let Some(sl) = self.runs.get_mut(&run) {
                let before = sl.in_flight();
                sl.changed(rec.id, rec.state);
                if sl.in_flight() < before {
                    self.refill.push(run);
                }
                if sl.is_finished() {
                    self.runs.remove(&run);
                }
            }
            if rec.state.is_terminal() {
                self.run_of.remove(&rec.id);
            }
        }
        match rec.state {
            CommandState::Expired => {
                self.metrics.commands.expiries.inc();
            }
            CommandState::Failed => {
                if let Some(r) = &rec.reason {
                    if r.starts_with("refused") {
                        self.refuse("agent_policy");
                    } else if r.starts_with("could not start") {
                        self.refuse("agent_failed_to_start");
                    }
                }
            }
            _ => {}
        }
        if rec.state.is_terminal()
            && self.files.is_some()
            && crate::files::service::transfer_of(&rec.spec).is_some()
        {
            // The file service reads the command's output: tell it once
            // the group holding the end (and the output) is written.
            match &mut self.group {
                Some(g) => g.ended.push(rec.clone()),
                None => {
                    if let Some(f) = &self.files {
                        f.command_ended(rec);
                    }
                }
            }
        }
        if rec.state.is_terminal() {
            let mut detail = format!("{} {}", rec.id, rec.state);
            if let Some(c) = rec.exit_code {
                detail.push_str(&format!(" exit {c}"));
            }
            if let Some(sig) = rec.signal {
                detail.push_str(&format!(" signal {sig}"));
            }
            if let Some(r) = &rec.reason {
                detail.push_str(&format!(": {r}"));
            }
            self.audit("agent", "command.result", rec.device, detail, now);
        }
    }

    fn event(&mut self, device: DeviceId, e: ApplianceEvent, now: u64) {
        match e {
            ApplianceEvent::CommandAcked { id } => {
                self.apply(id, Input::Acked, now);
            }
            ApplianceEvent::CommandStarted { id, started_ms } => {
                self.apply(
                    id,
                    Input::Started {
                        agent_ms: started_ms,
                    },
                    now,
                );
            }
            ApplianceEvent::CommandWithdrawn { id } => {
                self.apply(id, Input::Withdrawn, now);
            }
            ApplianceEvent::Result(r) => {
                let id = r.id;
                let known = self
                    .apply(
                        id,
                        Input::Result {
                            outcome: r.outcome,
                            output_bytes: r.output_bytes,
                            agent_ms: r.finished_ms,
                        },
                        now,
                    )
                    .is_some();
                if !known && matches!(self.read(id), Ok(None)) {
                    // Not ours (an older database?): ack so the agent forgets it.
                    self.link(LinkAction::AckResult(device, id));
                }
            }
            ApplianceEvent::Output(o) => self.output(device, o, now),
            e @ (ApplianceEvent::FileChunk(_)
            | ApplianceEvent::FileAcked { .. }
            | ApplianceEvent::FileAborted { .. })
                if self.files.is_some() =>
            {
                if let Some(f) = &self.files {
                    f.file_event(device, e);
                }
            }
            ApplianceEvent::FileChunk(c) => {
                if let Some(link) = self.links.get(&device) {
                    let _ = link.abort_file(c.transfer, "file transfers are not supported yet");
                }
            }
            _ => {}
        }
    }

    fn output(&mut self, device: DeviceId, o: outpost_proto::messages::CommandOutput, now: u64) {
        let id = o.id;
        let mut rec = match self.read(id) {
            Ok(Some(r)) => r,
            Ok(None) => {
                self.metrics.commands.unknown_events.inc();
                self.link(LinkAction::AckOutput(
                    device,
                    id,
                    o.offset + o.bytes.len() as u64,
                ));
                return;
            }
            Err(e) => {
                warn!(error = %e, %id, "reading a command failed");
                self.metrics.commands.store_errors.inc();
                return;
            }
        };
        let was_truncated = rec.output.truncated();
        // A reboot's cancel that came too late: stop asking, say so.
        let too_late = super::machine::is_cancel_too_late(&rec, &o.bytes)
            && super::machine::step(&mut rec, super::machine::Input::CancelTooLate, now).changed;
        let p = output::plan(
            &mut rec.output,
            self.opts.output_cap,
            o.offset,
            o.bytes.len(),
        );
        let m = self.metrics.clone();
        let m = &m.commands;
        m.output_bytes_received.inc_by(o.bytes.len() as u64);
        m.output_bytes_duplicate.inc_by(p.duplicate_bytes);
        if too_late || !p.store.is_empty() || !p.delete.is_empty() || p.newly_dropped > 0 {
            let mut stored = 0;
            for (_, range) in &p.store {
                stored += range.len() as u64;
            }
            let r = self.persist(&rec, |b| {
                for (off, range) in &p.store {
                    b.put_raw(
                        store::COMMAND_OUTPUT,
                        &store::output_key(id, *off),
                        &o.bytes[range.clone()],
                    )?;
                }
                for off in &p.delete {
                    b.delete(store::COMMAND_OUTPUT, &store::output_key(id, *off))?;
                }
                Ok(())
            });
            if let Err(e) = r {
                warn!(error = %e, %id, "storing command output failed");
                m.store_errors.inc();
                return;
            }
            m.output_bytes_stored.inc_by(stored);
            if !was_truncated && rec.output.truncated() {
                m.truncations.inc();
            }
        }
        self.link(LinkAction::AckOutput(device, id, p.ack_to));
    }
}

/// The outcome as `completed`-style words for people (CLI, README).
pub fn describe_outcome(o: &CommandOutcome) -> String {
    match o {
        CommandOutcome::Exited { code } => format!("exited with code {code}"),
        CommandOutcome::Signaled { signal } => format!("killed by signal {signal}"),
        CommandOutcome::TimedOut => "timed out".into(),
        CommandOutcome::Cancelled => "cancelled".into(),
        CommandOutcome::Interrupted => "interrupted".into(),
        CommandOutcome::Refused { reason } => format!("refused: {reason}"),
        CommandOutcome::FailedToStart { message } => format!("failed to start: {message}"),
    }
}

#[cfg(test)]
mod tests {
    use outpost_proto::messages::CommandResult;
    use outpost_proto::{CustomerId, TenantId};
    use outpost_storage::StoreOptions;
    use outpost_storage::model::DeviceRecord;

    use super::*;
    use crate::ingest::remote::LinkInput;

    fn device(store: &Store, id: u64, revoked: bool) -> DeviceId {
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
                revoked_at_ms: revoked.then_some(2),
            },
        )
        .unwrap();
        d
    }

    async fn next(inbox: &mut crate::ingest::remote::LinkInbox) -> LinkInput {
        tokio::time::timeout(Duration::from_secs(5), inbox.rx.recv())
            .await
            .expect("a link input")
            .map(|i| *i)
            .expect("link open")
    }

    #[tokio::test]
    async fn a_result_is_stored_before_it_is_acked_and_a_repeat_is_acked_but_not_stored() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::db::open(dir.path(), &StoreOptions::default()).unwrap();
        let metrics = Arc::new(Metrics::new());
        let (svc, h) =
            CommandService::start(store.clone(), metrics.clone(), CommandOptions::default())
                .unwrap();
        let dev = device(&store, 7, false);
        let (link, mut inbox) = RemoteLink::new(dev);
        svc.session_up(dev, link.clone());
        let rec = svc
            .create(dev, CommandSpec::shell("uptime", "alice"))
            .await
            .unwrap();
        // Online: pushed at once, and stored as sent before that.
        let LinkInput::SendCommand(c) = next(&mut inbox).await else {
            panic!("expected the command")
        };
        assert_eq!(c.id, rec.id);
        assert_eq!(CommandSpec::decode(&c.spec).unwrap().summary(), "uptime");
        assert_eq!(svc.get(rec.id).unwrap().unwrap().state, CommandState::Sent);

        let result = |code| {
            ApplianceEvent::Result(CommandResult {
                id: rec.id,
                outcome: CommandOutcome::Exited { code },
                output_bytes: 0,
                finished_ms: 9,
            })
        };
        svc.event(dev, result(0));
        assert!(matches!(next(&mut inbox).await, LinkInput::AckResult(i) if i == rec.id));
        // By the time the ack is out, the result is durable.
        let stored = svc.get(rec.id).unwrap().unwrap();
        assert_eq!(stored.state, CommandState::Completed);
        svc.event(dev, result(1));
        assert!(matches!(next(&mut inbox).await, LinkInput::AckResult(i) if i == rec.id));
        assert_eq!(svc.get(rec.id).unwrap().unwrap(), stored, "stored once");

        // Unknown and revoked devices are refused with their reason.
        assert!(matches!(
            svc.create(DeviceId(99), CommandSpec::shell("x", "a")).await,
            Err(CreateError::UnknownDevice(DeviceId(99)))
        ));
        let revoked = device(&store, 8, true);
        assert!(matches!(
            svc.create(revoked, CommandSpec::shell("x", "a")).await,
            Err(CreateError::RevokedDevice(_))
        ));
        svc.stop();
        h.join().unwrap();
    }

    #[tokio::test]
    async fn a_queued_command_is_sent_when_its_device_connects_even_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::db::open(dir.path(), &StoreOptions::default()).unwrap();
        let metrics = Arc::new(Metrics::new());
        let dev = device(&store, 7, false);
        let id = {
            let (svc, h) =
                CommandService::start(store.clone(), metrics.clone(), CommandOptions::default())
                    .unwrap();
            let rec = svc
                .create(dev, CommandSpec::shell("true", "a"))
                .await
                .unwrap();
            assert_eq!(rec.state, CommandState::Queued);
            svc.stop();
            h.join().unwrap();
            rec.id
        };
        let (svc, h) =
            CommandService::start(store.clone(), metrics, CommandOptions::default()).unwrap();
        let (link, mut inbox) = RemoteLink::new(dev);
        svc.session_up(dev, link);
        assert!(matches!(next(&mut inbox).await, LinkInput::SendCommand(c) if c.id == id));
        // A reconnect before the ack sends it again (the agent dedupes).
        let (link2, mut inbox2) = RemoteLink::new(dev);
        svc.session_up(dev, link2);
        assert!(matches!(next(&mut inbox2).await, LinkInput::SendCommand(c) if c.id == id));
        svc.event(dev, ApplianceEvent::CommandAcked { id });
        let (link3, mut inbox3) = RemoteLink::new(dev);
        svc.session_up(dev, link3);
        svc.stop();
        h.join().unwrap();
        assert!(inbox3.rx.try_recv().is_err(), "acked: not sent again");
    }

    async fn bulk(svc: &CommandService, target: BulkTarget, conc: u32) -> BulkRun {
        svc.create_bulk(BulkRequest {
            target,
            spec: CommandSpec::shell("uptime", "alice"),
            concurrency: conc,
        })
        .await
        .unwrap()
    }

    fn exited(id: CommandId) -> ApplianceEvent {
        ApplianceEvent::Result(CommandResult {
            id,
            outcome: CommandOutcome::Exited { code: 0 },
            output_bytes: 0,
            finished_ms: 9,
        })
    }

    #[tokio::test]
    async fn a_bulk_run_sends_no_more_than_its_concurrency_and_the_next_when_one_ends() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::db::open(dir.path(), &StoreOptions::default()).unwrap();
        let metrics = Arc::new(Metrics::new());
        let (svc, h) =
            CommandService::start(store.clone(), metrics, CommandOptions::default()).unwrap();
        let devs: Vec<DeviceId> = (1..=3).map(|i| device(&store, i, false)).collect();
        let mut inboxes = Vec::new();
        for d in &devs {
            let (link, inbox) = RemoteLink::new(*d);
            svc.session_up(*d, link);
            inboxes.push(inbox);
        }
        let run = bulk(&svc, BulkTarget::All, 2).await;
        assert_eq!(run.members.len(), 3);
        // The first two in target order go out; the third waits.
        for (i, inbox) in inboxes.iter_mut().enumerate().take(2) {
            assert!(
                matches!(next(inbox).await, LinkInput::SendCommand(c) if c.id == run.members[i].1)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(inboxes[2].rx.try_recv().is_err(), "held by the limit");
        let third = run.members[2].1;
        assert_eq!(svc.get(third).unwrap().unwrap().state, CommandState::Queued);
        // One ends: the third goes.
        svc.event(devs[0], exited(run.members[0].1));
        assert!(matches!(next(&mut inboxes[2]).await, LinkInput::SendCommand(c) if c.id == third));
        svc.stop();
        h.join().unwrap();
    }

    #[tokio::test]
    async fn a_bulk_run_keeps_its_limit_across_a_restart_and_a_cancel_removes_the_queued() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::db::open(dir.path(), &StoreOptions::default()).unwrap();
        let metrics = Arc::new(Metrics::new());
        let devs: Vec<DeviceId> = (1..=3).map(|i| device(&store, i, false)).collect();
        outpost_storage::registry::set_tags(&store, devs[0], &["web".into()]).unwrap();
        outpost_storage::registry::set_tags(&store, devs[2], &["web".into()]).unwrap();
        let run = {
            let (svc, h) =
                CommandService::start(store.clone(), metrics.clone(), CommandOptions::default())
                    .unwrap();
            // Unknown tag, unknown device: refused with the name.
            let e = svc
                .create_bulk(BulkRequest {
                    target: BulkTarget::Tag("db".into()),
                    spec: CommandSpec::shell("x", "a"),
                    concurrency: 1,
                })
                .await
                .unwrap_err();
            assert!(matches!(e, BulkError::NoDevice(_)), "{e}");
            let e = svc
                .create_bulk(BulkRequest {
                    target: BulkTarget::Devices(vec![DeviceId(99).to_string()]),
                    spec: CommandSpec::shell("x", "a"),
                    concurrency: 1,
                })
                .await
                .unwrap_err();
            assert!(e.to_string().contains(&DeviceId(99).to_string()), "{e}");
            let run = bulk(&svc, BulkTarget::Tag("web".into()), 1).await;
            let members: Vec<DeviceId> = run.members.iter().map(|m| m.0).collect();
            assert_eq!(members, vec![devs[0], devs[2]]);
            svc.stop();
            h.join().unwrap();
            run
        };
        let (svc, h) =
            CommandService::start(store.clone(), metrics, CommandOptions::default()).unwrap();
        // Both devices connect: only one command goes (concurrency 1).
        let (l0, mut i0) = RemoteLink::new(devs[0]);
        let (l2, mut i2) = RemoteLink::new(devs[2]);
        svc.session_up(devs[2], l2);
        svc.session_up(devs[0], l0);
        assert!(
            matches!(next(&mut i2).await, LinkInput::SendCommand(c) if c.id == run.members[1].1)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(i0.rx.try_recv().is_err(), "held by the limit");
        // Cancel the run: the queued one is cancelled, the sent one is told.
        let r = svc.cancel_run(run.id, "bob").await.unwrap();
        assert_eq!(r.cancelled.as_ref().map(|c| c.1.as_str()), Some("bob"));
        assert!(
            matches!(next(&mut i2).await, LinkInput::CancelCommand(c) if c == run.members[1].1)
        );
        assert_eq!(
            svc.get(run.members[0].1).unwrap().unwrap().state,
            CommandState::Cancelled
        );
        svc.event(
            devs[2],
            ApplianceEvent::Result(CommandResult {
                id: run.members[1].1,
                outcome: CommandOutcome::Cancelled,
                output_bytes: 0,
                finished_ms: 9,
            }),
        );
        assert!(matches!(next(&mut i2).await, LinkInput::AckResult(_)));
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(
            i0.rx.try_recv().is_err(),
            "a cancelled run sends nothing more"
        );
        svc.stop();
        h.join().unwrap();
    }

    #[test]
    fn the_worker_interrupts_a_running_command_of_an_offline_device_at_its_deadline() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::db::open(dir.path(), &StoreOptions::default()).unwrap();
        let metrics = Arc::new(Metrics::new());
        let mut w = Worker::new(
            store.clone(),
            metrics.clone(),
            CommandOptions::default(),
            tokio::sync::watch::channel(0).0,
        );
        let dev = device(&store, 7, false);
        let (link, _inbox) = RemoteLink::new(dev);
        let t0 = 1_000_000;
        w.links.insert(dev, link.clone());
        let rec = w
            .create(dev, CommandSpec::shell("sleep 1000", "a"), None, t0)
            .unwrap();
        w.apply(rec.id, Input::Started { agent_ms: 1 }, t0 + 10);
        let d = t0 + 10 + rec.spec.timeout_ms + machine::NO_REPORT_MARGIN_MS;
        // Online: nothing happens, even long after.
        w.tick(d + 1);
        assert_eq!(
            store::get(&store, rec.id).unwrap().unwrap().state,
            CommandState::Running
        );
        // Offline: just before the deadline nothing, at it interrupted.
        w.links.remove(&dev);
        w.tick(d - 1);
        assert_eq!(
            store::get(&store, rec.id).unwrap().unwrap().state,
            CommandState::Running
        );
        w.tick(d);
        let r = store::get(&store, rec.id).unwrap().unwrap();
        assert_eq!(r.state, CommandState::Interrupted);
        assert!(machine::ended_by_deadline(&r));
        assert_eq!(metrics.commands.no_report_deadlines.get(), 1);
        assert!(w.deadlines.is_empty() && w.open.is_empty());
    }

    #[test]
    fn in_a_group_nothing_is_sent_or_answered_before_the_groups_write() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::db::open(dir.path(), &StoreOptions::default()).unwrap();
        let metrics = Arc::new(Metrics::new());
        let mut w = Worker::new(
            store.clone(),
            metrics,
            CommandOptions::default(),
            tokio::sync::watch::channel(0).0,
        );
        let dev = device(&store, 7, false);
        let (link, mut inbox) = RemoteLink::new(dev);
        w.links.insert(dev, link);
        w.begin();
        let (reply, mut answer) = oneshot::channel();
        w.handle(Msg::Create {
            device: dev,
            spec: CommandSpec::shell("uptime", "alice"),
            id: None,
            reply,
        });
        assert!(inbox.rx.try_recv().is_err(), "sent before it is durable");
        assert!(answer.try_recv().is_err(), "answered before it is durable");
        assert_eq!(
            store::list(
                &store,
                &store::ListFilter {
                    limit: 10,
                    ..Default::default()
                }
            )
            .unwrap()
            .len(),
            0
        );
        w.commit();
        let rec = answer.try_recv().unwrap().unwrap();
        assert_eq!(
            store::get(&store, rec.id).unwrap().unwrap().state,
            CommandState::Sent
        );
        assert!(
            matches!(inbox.rx.try_recv().map(|i| *i), Ok(LinkInput::SendCommand(c)) if c.id == rec.id)
        );
        // The agent's ack, start and result in one group: one record write
        // with all three, then the result's ack.
        w.begin();
        w.handle(Msg::Event(dev, ApplianceEvent::CommandAcked { id: rec.id }));
        w.handle(Msg::Event(
            dev,
            ApplianceEvent::CommandStarted {
                id: rec.id,
                started_ms: 5,
            },
        ));
        w.handle(Msg::Event(dev, exited(rec.id)));
        assert!(inbox.rx.try_recv().is_err());
        assert_eq!(
            store::get(&store, rec.id).unwrap().unwrap().state,
            CommandState::Sent
        );
        w.commit();
        let r = store::get(&store, rec.id).unwrap().unwrap();
        assert_eq!(r.state, CommandState::Completed);
        assert_eq!(r.started_agent_ms, Some(5));
        assert!(
            matches!(inbox.rx.try_recv().map(|i| *i), Ok(LinkInput::AckResult(i)) if i == rec.id)
        );
    }

    /// Records what the command worker tells the file service.
    #[derive(Default)]
    struct Ended(std::sync::Mutex<Vec<CommandId>>);

    impl crate::files::service::FileHooks for Ended {
        fn session_up(&self, _device: DeviceId, _link: RemoteLink) {}
        fn session_down(&self, _device: DeviceId, _link_id: u64) {}
        fn file_event(&self, _device: DeviceId, _event: ApplianceEvent) {}
        fn command_ended(&self, rec: &CommandRecord) {
            self.0.lock().unwrap().push(rec.id);
        }
    }

    #[test]
    fn the_file_service_hears_of_a_transfers_end_only_once_its_group_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::db::open(dir.path(), &StoreOptions::default()).unwrap();
        let mut w = Worker::new(
            store.clone(),
            Arc::new(Metrics::new()),
            CommandOptions::default(),
            tokio::sync::watch::channel(0).0,
        );
        let hooks = Arc::new(Ended::default());
        w.files = Some(hooks.clone());
        let dev = device(&store, 7, false);
        let (link, _inbox) = RemoteLink::new(dev);
        w.links.insert(dev, link);
        let mut spec = CommandSpec::shell("x", "alice");
        spec.kind = outpost_proto::command::CommandKind::Builtin(
            outpost_proto::command::BuiltinAction::PullFile {
                transfer: outpost_proto::ids::TransferId::random(),
                path: "/var/log/syslog".into(),
                max_bytes: 1 << 20,
            },
        );
        let rec = w.create(dev, spec, None, 1_000).unwrap();
        w.begin();
        w.handle(Msg::Event(dev, ApplianceEvent::CommandAcked { id: rec.id }));
        w.handle(Msg::Event(dev, exited(rec.id)));
        assert!(
            hooks.0.lock().unwrap().is_empty(),
            "told before the end (and its output) is stored"
        );
        w.commit();
        assert_eq!(*hooks.0.lock().unwrap(), vec![rec.id]);
        assert_eq!(
            store::get(&store, rec.id).unwrap().unwrap().state,
            CommandState::Completed
        );
    }
}
