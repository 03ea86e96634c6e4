//! The command service: one worker thread owns every change to command
//! state. The device sessions (through [`RemoteHost`]) and the API (through
//! [`CommandService`]'s methods) send it messages and never block; the
//! worker applies the pure state machine ([`super::machine`]), writes the
//! record durably, and only then sends, cancels or acknowledges on the
//! device's link.
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
        let mut w = Worker {
            store: store.clone(),
            metrics,
            opts,
            links: HashMap::new(),
            open: HashMap::new(),
            queued: BTreeSet::new(),
            changes: changes_tx,
        };
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
    /// The current session of each online device that carries commands.
    links: HashMap<DeviceId, RemoteLink>,
    /// Commands not yet terminal, by device.
    open: HashMap<DeviceId, BTreeSet<CommandId>>,
    /// Queued commands by expiry time.
    queued: BTreeSet<(u64, CommandId)>,
    changes: tokio::sync::watch::Sender<u64>,
}

impl Worker {
    fn load(&mut self) -> anyhow::Result<()> {
        for (_device, id) in store::open_commands(&self.store)? {
            if let Some(rec) = store::get(&self.store, id)? {
                self.index(&rec);
            }
        }
        self.update_gauge();
        Ok(())
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
    }

    fn run(mut self, rx: std_mpsc::Receiver<Msg>) {
        let mut next_tick = std::time::Instant::now() + TICK;
        loop {
            let wait = next_tick.saturating_duration_since(std::time::Instant::now());
            match rx.recv_timeout(wait) {
                Ok(Msg::Stop) | Err(std_mpsc::RecvTimeoutError::Disconnected) => return,
                Ok(m) => self.handle(m),
                Err(std_mpsc::RecvTimeoutError::Timeout) => {}
            }
            if std::time::Instant::now() >= next_tick {
                self.tick(now_ms());
                next_tick = std::time::Instant::now() + TICK;
            }
        }
    }

    fn handle(&mut self, m: Msg) {
        let now = now_ms();
        match m {
            Msg::Up(device, link) => {
                self.links.insert(device, link);
                let ids: Vec<CommandId> = self
                    .open
                    .get(&device)
                    .map(|s| s.iter().copied().collect())
                    .unwrap_or_default();
                for id in ids {
                    self.apply(id, Input::Dispatch, now);
                }
            }
            Msg::Down(device, link_id) => {
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
                let _ = reply.send(self.create(device, spec, id, now));
            }
            Msg::Cancel { id, by, reply } => {
                let _ = reply.send(self.cancel(id, &by, now));
            }
            Msg::Stop => {}
        }
        self.update_gauge();
        self.changes.send_modify(|n| *n = n.wrapping_add(1));
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
            && let Some(rec) =
                store::get(&self.store, id).map_err(|e| CreateError::Store(e.to_string()))?
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
        let mut b = self.store.batch();
        store::put(&mut b, &rec, true).map_err(|e| CreateError::Store(e.to_string()))?;
        self.store
            .write(b)
            .map_err(|e| CreateError::Store(e.to_string()))?;
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
        store::get(&self.store, rec.id)
            .ok()
            .flatten()
            .map(Ok)
            .unwrap_or(Ok(rec))
    }

    fn cancel(&mut self, id: CommandId, by: &str, now: u64) -> Result<CommandRecord, CancelError> {
        let rec = store::get(&self.store, id)
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
        let any = !due.is_empty();
        for id in due {
            self.apply(id, Input::Tick, now);
        }
        self.update_gauge();
        if any {
            self.changes.send_modify(|n| *n = n.wrapping_add(1));
        }
    }

    fn audit(&self, actor: &str, action: &str, device: DeviceId, detail: String, now: u64) {
        let e = AuditEntry {
            at_ms: now,
            actor: actor.to_string(),
            action: action.to_string(),
            target: device.to_string(),
            detail,
        };
        if let Err(e) = outpost_storage::registry::audit(&self.store, &e) {
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
        let mut rec = match store::get(&self.store, id) {
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
        if s.changed {
            let mut b = self.store.batch();
            let written = store::put(&mut b, &rec, false).and_then(|_| self.store.write(b));
            if let Err(e) = written {
                warn!(error = %e, %id, "storing a command transition failed");
                self.metrics.commands.store_errors.inc();
                return None;
            }
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
        if let Some(link) = self.links.get(&rec.device) {
            if s.send {
                match rec.spec.encode() {
                    Ok(spec) => {
                        if let Err(e) = link.send_command(Command { id, spec }) {
                            debug!(error = %e, %id, "command not sent (sent again on reconnect)");
                        }
                    }
                    Err(e) => warn!(error = %e, %id, "a stored command no longer encodes"),
                }
            }
            if s.send_cancel {
                let _ = link.cancel_command(id);
            }
            if s.ack_result {
                let _ = link.ack_result(id);
            }
        }
        Some((rec, s))
    }

    /// Counts and audits a state change.
    fn entered(&mut self, rec: &CommandRecord, now: u64) {
        self.metrics.commands.entered(rec.state.as_str());
        self.index(rec);
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
                if !known
                    && matches!(store::get(&self.store, id), Ok(None))
                    && let Some(link) = self.links.get(&device)
                {
                    // Not ours (an older database?): ack so the agent forgets it.
                    let _ = link.ack_result(id);
                }
            }
            ApplianceEvent::Output(o) => self.output(device, o, now),
            ApplianceEvent::FileChunk(c) => {
                if let Some(link) = self.links.get(&device) {
                    let _ = link.abort_file(c.transfer, "file transfers are not supported yet");
                }
            }
            _ => {}
        }
    }

    fn output(&mut self, device: DeviceId, o: outpost_proto::messages::CommandOutput, _now: u64) {
        let id = o.id;
        let mut rec = match store::get(&self.store, id) {
            Ok(Some(r)) => r,
            Ok(None) => {
                self.metrics.commands.unknown_events.inc();
                if let Some(link) = self.links.get(&device) {
                    let _ = link.ack_output(id, o.offset + o.bytes.len() as u64);
                }
                return;
            }
            Err(e) => {
                warn!(error = %e, %id, "reading a command failed");
                self.metrics.commands.store_errors.inc();
                return;
            }
        };
        let was_truncated = rec.output.truncated();
        let p = output::plan(
            &mut rec.output,
            self.opts.output_cap,
            o.offset,
            o.bytes.len(),
        );
        let m = &self.metrics.commands;
        m.output_bytes_received.inc_by(o.bytes.len() as u64);
        m.output_bytes_duplicate.inc_by(p.duplicate_bytes);
        if !p.store.is_empty() || !p.delete.is_empty() || p.newly_dropped > 0 {
            let mut b = self.store.batch();
            let mut stored = 0;
            let mut r = Ok(());
            for (off, range) in &p.store {
                stored += range.len() as u64;
                r = r.and_then(|_| {
                    b.put_raw(
                        store::COMMAND_OUTPUT,
                        &store::output_key(id, *off),
                        &o.bytes[range.clone()],
                    )
                });
            }
            for off in &p.delete {
                r = r.and_then(|_| b.delete(store::COMMAND_OUTPUT, &store::output_key(id, *off)));
            }
            let r = r
                .and_then(|_| store::put(&mut b, &rec, false))
                .and_then(|_| self.store.write(b));
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
        if let Some(link) = self.links.get(&device) {
            let _ = link.ack_output(id, p.ack_to);
        }
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
}
