//! The agent's command executor: the [`RemoteHost`] that records each
//! command id in the ledger before acknowledging it, applies the agent's
//! policy, runs commands ([`super::exec`]), stores their output and
//! results, and re-sends what the appliance has not acknowledged on every
//! session.
//!
//! One worker task applies every change to the ledger in order (the
//! session's calls only queue messages: they never block); one pump task
//! per session sends stored output and results through its link.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use outpost_proto::command::{BuiltinAction, CommandKind, CommandSpec, Interpreter};
use outpost_proto::ids::CommandId;
use outpost_proto::messages::{Command, CommandOutcome, CommandOutput, CommandResult};
use outpost_proto::session::agent::AgentEvent;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::exec::{self, End, Launch};
use super::ledger::{Entry, Ledger, Phase};
use super::reboot::{self, RebootConfig};
use crate::remote::{RemoteHost, RemoteLink};
use crate::session::now_ms;

/// Output kept from the start of a command whatever happens (the rest of
/// what is not yet acknowledged is bounded by [`MAX_UNACKED_TAIL_BYTES`]).
const KEEP_HEAD_BYTES: u64 = 512 * 1024;
/// Unacknowledged output beyond the head kept per command while the
/// appliance is unreachable; older bytes are dropped (the appliance sees
/// the gap and marks the output truncated).
const MAX_UNACKED_TAIL_BYTES: u64 = 1024 * 1024;

/// What the agent's configuration allows (`agent.toml`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// `remote_commands`: run commands at all.
    pub enabled: bool,
    /// `allowed_run_as`: users a command may run as (besides the agent's
    /// own, which needs no switch).
    pub allowed_run_as: Vec<String>,
    /// SIGTERM → SIGKILL grace on timeout and cancel.
    pub kill_grace: Duration,
    /// The reboot action: its command, the dpkg lock it respects, where
    /// the boot id is read.
    pub reboot: RebootConfig,
}

/// Reason given when `remote_commands = false`.
pub const DISABLED: &str =
    "remote commands are disabled on this device (remote_commands = false in agent.toml)";

enum Msg {
    Event(AgentEvent),
    Output(CommandId, Vec<u8>),
    Started(CommandId, u64),
    Finished(CommandId, CommandOutcome),
    /// The reboot command exited 0: the reboot is scheduled; the command
    /// stays running until the agent starts on a new boot id.
    RebootScheduled(CommandId),
    /// `reboot_cancel_command` ended: `Ok(line)` (exit 0: the reboot is
    /// cancelled) or `Err(reason)` (it still runs).
    RebootCancel(CommandId, Result<String, String>),
}

struct Inner {
    ledger: Ledger,
    policy: Policy,
    link: Mutex<Option<RemoteLink>>,
    tx: mpsc::UnboundedSender<Msg>,
    /// Bumped whenever there may be something new to send.
    wake: watch::Sender<u64>,
    /// Commands with output or a result not yet acknowledged.
    pending: Mutex<HashSet<CommandId>>,
    /// Cancel handles of running commands.
    running: Mutex<HashMap<CommandId, CancellationToken>>,
    /// File push and pull (`crate::files`): file actions and file flow
    /// events go there; without it they are refused.
    files: Option<crate::files::FileAgent>,
    /// Package scans on request (`ScanPackages`, `crate::scan`): without
    /// it the action is refused.
    scanner: Option<crate::scan::ScanRequests>,
    /// Patch installs and rollbacks (`InstallPatches`, `RollbackPatches`,
    /// `crate::install`): without it they are refused.
    installer: Option<crate::install::PatchInstaller>,
    /// `reboot_cancel_command` (run with `sh -c`).
    reboot_cancel: Mutex<String>,
}

/// How the file module reports the end of a transfer's command.
struct FileReporter(mpsc::UnboundedSender<Msg>);

impl crate::files::Reporter for FileReporter {
    fn output(&self, id: CommandId, bytes: Vec<u8>) {
        let _ = self.0.send(Msg::Output(id, bytes));
    }
    fn finished(&self, id: CommandId, outcome: CommandOutcome) {
        let _ = self.0.send(Msg::Finished(id, outcome));
    }
}

/// The executor (cheap to clone).
#[derive(Clone)]
pub struct Executor {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Executor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Executor").finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Executor {
    /// Opens the ledger in `dir`, reports commands cut short by the last
    /// stop as `interrupted`, and starts the worker.
    pub fn start(dir: &Path, policy: Policy) -> anyhow::Result<Executor> {
        Self::start_with_files(dir, policy, None)
    }

    /// As [`Executor::start`], with file transfers: their commands stay
    /// running across a restart (they resume) instead of `interrupted`.
    pub fn start_with_files(
        dir: &Path,
        policy: Policy,
        files: Option<crate::files::FileAgent>,
    ) -> anyhow::Result<Executor> {
        Self::start_with(dir, policy, files, None)
    }

    /// As [`Executor::start_with_files`], with package scans on request
    /// (`ScanPackages`) served by the scanner behind `scanner`.
    pub fn start_with(
        dir: &Path,
        policy: Policy,
        files: Option<crate::files::FileAgent>,
        scanner: Option<crate::scan::ScanRequests>,
    ) -> anyhow::Result<Executor> {
        Self::start_full(dir, policy, files, scanner, None)
    }

    /// As [`Executor::start_with`], with patch installs and rollbacks
    /// served by `installer`.
    pub fn start_full(
        dir: &Path,
        policy: Policy,
        files: Option<crate::files::FileAgent>,
        scanner: Option<crate::scan::ScanRequests>,
        installer: Option<crate::install::PatchInstaller>,
    ) -> anyhow::Result<Executor> {
        let ledger = Ledger::open(dir)?;
        let resumable: HashSet<CommandId> = files
            .as_ref()
            .map(|f| f.live_commands().into_iter().collect())
            .unwrap_or_default();
        let boot = reboot::boot_id(&policy.reboot)
            .map_err(
                |e| warn!(error = %e, "the boot id is unreadable: pending reboots stay running"),
            )
            .ok();
        let interrupted = ledger.recover_except(now_ms(), boot.as_deref(), &resumable)?;
        for id in &interrupted {
            warn!(%id, "a command was running when the agent stopped: reported interrupted, not re-run");
        }
        let mut pending = HashSet::new();
        let mut to_start = Vec::new();
        for (id, e) in ledger.entries()? {
            match &e.phase {
                Phase::Finished(_) if !e.result_acked || e.output_acked < e.output_len => {
                    pending.insert(id);
                }
                // Recorded, never started (the agent stopped between the
                // two writes): it never ran, so it may start now.
                Phase::Recorded => to_start.push(id),
                _ => {}
            }
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let (wake, _) = watch::channel(0);
        let mut running = HashMap::new();
        if let Some(f) = &files {
            for id in &resumable {
                // A transfer whose command is not running here is over.
                if !matches!(
                    ledger.get(*id)?,
                    Some(Entry {
                        phase: Phase::Running { .. },
                        ..
                    })
                ) {
                    f.forget(*id);
                }
            }
            running.extend(f.attach(Arc::new(FileReporter(tx.clone()))));
        }
        let inner = Arc::new(Inner {
            ledger,
            policy,
            link: Mutex::new(None),
            tx,
            wake,
            pending: Mutex::new(pending),
            running: Mutex::new(running),
            files,
            scanner,
            installer,
            reboot_cancel: Mutex::new(reboot::DEFAULT_REBOOT_CANCEL_COMMAND.into()),
        });
        let ex = Executor { inner };
        tokio::spawn(ex.clone().worker(rx, to_start));
        Ok(ex)
    }

    /// Sets `reboot_cancel_command` (agent.toml; default `shutdown -c`).
    pub fn set_reboot_cancel_command(&self, command: String) {
        *lock(&self.inner.reboot_cancel) = command;
    }

    fn wake(&self) {
        self.inner.wake.send_modify(|n| *n += 1);
    }

    /// A cancel of a scheduled reboot (running, its scheduling command
    /// done): too late once due (a line says so, it stays running); else
    /// `reboot_cancel_command` runs and, if it exits 0, the command ends
    /// `cancelled`.
    fn cancel_reboot(&self, id: CommandId, now_ms: u64) -> anyhow::Result<()> {
        let due = self.inner.ledger.reboot_due(id)?;
        if let Err(reason) = reboot::cancel_verdict(due, now_ms) {
            info!(%id, %reason, "reboot cancel refused");
            let _ = self
                .inner
                .tx
                .send(Msg::Output(id, format!("{reason}\n").into_bytes()));
            return Ok(());
        }
        let command = lock(&self.inner.reboot_cancel).clone();
        let tx = self.inner.tx.clone();
        tokio::spawn(async move {
            let run = tokio::process::Command::new("sh")
                .arg("-c")
                .arg(&command)
                .arg("outpost-reboot-cancel")
                .env("OUTPOST_AGENT_PID", std::process::id().to_string())
                .stdin(std::process::Stdio::null())
                .kill_on_drop(true)
                .output();
            let r = match tokio::time::timeout(Duration::from_secs(60), run).await {
                Err(_) => Err(format!("{command:?} did not end within 60 s")),
                Ok(Err(e)) => Err(format!("{command:?} could not start: {e}")),
                Ok(Ok(o)) if o.status.success() => {
                    Ok(format!("reboot cancelled ({command} exited 0)\n"))
                }
                Ok(Ok(o)) => Err(format!(
                    "{command:?} failed ({}): {}",
                    o.status,
                    String::from_utf8_lossy(&o.stderr).trim()
                )),
            };
            let _ = tx.send(Msg::RebootCancel(id, r));
        });
        Ok(())
    }

    fn link(&self) -> Option<RemoteLink> {
        lock(&self.inner.link).clone()
    }

    async fn worker(self, mut rx: mpsc::UnboundedReceiver<Msg>, to_start: Vec<CommandId>) {
        for id in to_start {
            // The spec is not kept in the ledger: a recorded, unstarted
            // command is reported interrupted (it never ran).
            self.finish(id, CommandOutcome::Interrupted).await;
        }
        while let Some(m) = rx.recv().await {
            if let Err(e) = self.handle(m).await {
                warn!(error = %e, "command ledger update failed");
            }
        }
    }

    async fn handle(&self, m: Msg) -> anyhow::Result<()> {
        let l = &self.inner.ledger;
        match m {
            Msg::Event(AgentEvent::Command(cmd)) => self.command(cmd).await?,
            Msg::Event(AgentEvent::CancelCommand { id }) => {
                let token = lock(&self.inner.running).get(&id).cloned();
                if let Some(t) = token {
                    t.cancel();
                    if l.reboot_boot_id(id)?.is_some() {
                        // Its scheduling command was still running: it
                        // may have scheduled the reboot already.
                        self.cancel_reboot(id, now_ms())?;
                    }
                } else {
                    match l.get(id)? {
                        // A scheduled reboot (see `cancel_reboot`).
                        Some(Entry {
                            phase: Phase::Running { .. },
                            ..
                        }) if l.reboot_boot_id(id)?.is_some() => {
                            self.cancel_reboot(id, now_ms())?
                        }
                        // Never started here (or not yet received): the id
                        // is recorded cancelled, so a later delivery never
                        // runs it.
                        None
                        | Some(Entry {
                            phase: Phase::Recorded,
                            ..
                        }) => {
                            self.finish(id, CommandOutcome::Cancelled).await;
                        }
                        _ => {}
                    }
                }
            }
            Msg::Event(AgentEvent::ResultAcked { id }) => {
                if let Some(mut e) = l.get(id)? {
                    e.result_acked = true;
                    l.put(id, &e)?;
                    self.settle(id, &e);
                }
            }
            Msg::Event(AgentEvent::OutputAcked { id, up_to }) => {
                if let Some(mut e) = l.get(id)?
                    && up_to > e.output_acked
                {
                    e.output_acked = up_to.min(e.output_len);
                    l.drop_output_below(id, e.output_acked)?;
                    l.put(id, &e)?;
                    self.settle(id, &e);
                    self.wake();
                }
            }
            Msg::Event(
                e @ (AgentEvent::FileChunk(_)
                | AgentEvent::FileAcked { .. }
                | AgentEvent::FileAborted { .. }),
            ) if self.inner.files.is_some() => {
                if let Some(f) = &self.inner.files {
                    f.event(e);
                }
            }
            Msg::Event(AgentEvent::FileChunk(c)) => {
                if let Some(link) = self.link() {
                    let _ = link.abort_file(
                        c.transfer,
                        "file transfers are not supported by this agent yet",
                    );
                }
            }
            Msg::Event(_) => {}
            Msg::Output(id, bytes) => self.append_output(id, &bytes)?,
            Msg::Started(id, ms) => {
                if let Some(link) = self.link() {
                    let _ = link.command_started(id, ms);
                }
            }
            Msg::Finished(id, outcome) => {
                lock(&self.inner.running).remove(&id);
                self.finish(id, outcome).await;
            }
            Msg::RebootCancel(id, r) => {
                let running = matches!(
                    l.get(id)?,
                    Some(Entry {
                        phase: Phase::Running { .. },
                        ..
                    })
                );
                match r {
                    Ok(line) if running => {
                        info!(%id, "scheduled reboot cancelled");
                        l.remove_reboot(id)?;
                        self.append_output(id, line.as_bytes())?;
                        self.finish(id, CommandOutcome::Cancelled).await;
                    }
                    Ok(_) => {}
                    Err(reason) => {
                        warn!(%id, %reason, "cancelling a scheduled reboot failed");
                        let line = format!("cancelling the reboot failed: {reason}\n");
                        self.append_output(id, line.as_bytes())?;
                    }
                }
            }
            Msg::RebootScheduled(id) => {
                lock(&self.inner.running).remove(&id);
                info!(%id, "reboot scheduled: the command completes when the agent starts on a new boot id");
            }
        }
        Ok(())
    }

    /// Appends output to a command (bounded, sent by the pump).
    fn append_output(&self, id: CommandId, bytes: &[u8]) -> anyhow::Result<()> {
        let l = &self.inner.ledger;
        if let Some(mut e) = l.get(id)? {
            l.put_output(id, e.output_len, bytes)?;
            e.output_len += bytes.len() as u64;
            self.bound_output(id, &e)?;
            l.put(id, &e)?;
            lock(&self.inner.pending).insert(id);
            self.wake();
        }
        Ok(())
    }

    /// Drops the oldest unacknowledged output beyond the head while what
    /// is *stored* beyond it exceeds [`MAX_UNACKED_TAIL_BYTES`]: the head
    /// and the newest tail stay. What is stored counts, not what was
    /// produced (`output_len` also counts bytes dropped before).
    fn bound_output(&self, id: CommandId, e: &Entry) -> anyhow::Result<()> {
        let l = &self.inner.ledger;
        let tail_from = e.output_acked.max(KEEP_HEAD_BYTES);
        if e.output_len.saturating_sub(tail_from) <= MAX_UNACKED_TAIL_BYTES {
            return Ok(());
        }
        // The stored tail is contiguous from its oldest chunk to
        // `output_len` (appends go at the end, drops and acks take from
        // the front), so its size is `output_len - that chunk's offset`.
        while let Some((off, len)) = l.first_output_chunk_from(id, tail_from)? {
            let newest = off + len as u64 >= e.output_len;
            if newest || e.output_len - off <= MAX_UNACKED_TAIL_BYTES {
                break;
            }
            l.remove_output_chunk(id, off)?;
        }
        Ok(())
    }

    /// Forgets a command's pending state once everything is acknowledged.
    fn settle(&self, id: CommandId, e: &Entry) {
        if e.result_acked && e.output_acked >= e.output_len {
            lock(&self.inner.pending).remove(&id);
        }
    }

    /// Records the end of a command (durably) and lets the pump send it.
    async fn finish(&self, id: CommandId, outcome: CommandOutcome) {
        let l = &self.inner.ledger;
        let r: anyhow::Result<()> = async {
            let mut e = l.get(id)?.unwrap_or_else(|| Entry::new(now_ms()));
            if matches!(e.phase, Phase::Finished(_)) {
                return Ok(());
            }
            e.phase = Phase::Finished(CommandResult {
                id,
                outcome,
                output_bytes: e.output_len,
                finished_ms: now_ms(),
            });
            l.put(id, &e)?;
            l.flush().await?;
            Ok(())
        }
        .await;
        if let Err(e) = r {
            warn!(error = %e, %id, "recording a command's result failed");
        }
        lock(&self.inner.pending).insert(id);
        self.wake();
    }

    async fn command(&self, cmd: Command) -> anyhow::Result<()> {
        let l = &self.inner.ledger;
        let id = cmd.id;
        if l.get(id)?.is_some() {
            // Known: never started again. Its result goes out (again) by
            // the pump until acknowledged.
            if let Some(link) = self.link() {
                let _ = link.ack_command(id);
            }
            lock(&self.inner.pending).insert(id);
            self.wake();
            return Ok(());
        }
        l.put(id, &Entry::new(now_ms()))?;
        l.flush().await?;
        if let Some(link) = self.link() {
            let _ = link.ack_command(id);
        }
        if let Some(files) = &self.inner.files
            && let Some(spec) = crate::files::file_action(&cmd.spec)
        {
            if !self.inner.policy.enabled {
                self.finish(
                    id,
                    CommandOutcome::Refused {
                        reason: DISABLED.into(),
                    },
                )
                .await;
                return Ok(());
            }
            // Running (durably) before the transfer starts: a restart
            // resumes it (see `start_with_files`), never starts it twice.
            let mut e = l.get(id)?.unwrap_or_else(|| Entry::new(now_ms()));
            let started_ms = now_ms();
            e.phase = Phase::Running { started_ms };
            l.put(id, &e)?;
            l.flush().await?;
            let cancel = CancellationToken::new();
            lock(&self.inner.running).insert(id, cancel.clone());
            if let Some(link) = self.link() {
                let _ = link.command_started(id, started_ms);
            }
            files.start(id, spec, cancel);
            return Ok(());
        }
        if let Some((full, timeout)) = scan_action(&cmd.spec) {
            return self.scan_packages(id, full, timeout).await;
        }
        if let Some(action) = patch_action(&cmd.spec) {
            return self.patch(id, action).await;
        }
        let (launch, is_reboot) = match self.prepare(&cmd.spec) {
            Ok(l) => l,
            Err(outcome) => {
                info!(%id, ?outcome, "command not run");
                self.finish(id, outcome).await;
                return Ok(());
            }
        };
        // A reboot: refused during a package install; the boot id is
        // recorded with the running mark (see `super::reboot`).
        let boot_before = if is_reboot {
            let pol = &self.inner.policy.reboot;
            match reboot::guard(pol).and_then(|_| reboot::boot_id(pol)) {
                Ok(b) => Some(b),
                Err(reason) => {
                    info!(%id, %reason, "reboot refused");
                    self.finish(id, CommandOutcome::Refused { reason }).await;
                    return Ok(());
                }
            }
        } else {
            None
        };
        // Marked running (durably) before the process exists: after a
        // crash it is reported interrupted, never started again.
        let mut e = l.get(id)?.unwrap_or_else(|| Entry::new(now_ms()));
        let started_ms = now_ms();
        e.phase = Phase::Running { started_ms };
        if let Some(b) = &boot_before {
            // Durable with the running mark: the reboot may kill the agent
            // before a later write is flushed.
            let delay = launch
                .env
                .iter()
                .find(|(k, _)| k == "OUTPOST_REBOOT_DELAY_S")
                .map(|(_, v)| v.clone())
                .unwrap_or_default();
            // Due when the command schedules it (the default rounds up
            // to whole minutes): a cancel is taken until then.
            let delay_s: u64 = delay.parse().unwrap_or(0);
            let due_s = reboot::scheduled_delay_s(&self.inner.policy.reboot.command, delay_s);
            let line = format!("rebooting in {due_s} s (boot id {b})\n");
            l.put_output(id, e.output_len, line.as_bytes())?;
            e.output_len += line.len() as u64;
            l.put_reboot(id, b)?;
            l.put_reboot_due(id, started_ms.saturating_add(due_s.saturating_mul(1000)))?;
            lock(&self.inner.pending).insert(id);
        }
        l.put(id, &e)?;
        l.flush().await?;
        if boot_before.is_some() {
            self.wake();
        }
        let cancel = CancellationToken::new();
        lock(&self.inner.running).insert(id, cancel.clone());
        let tx = self.inner.tx.clone();
        tokio::spawn(async move {
            let (otx, mut orx) = mpsc::channel::<Vec<u8>>(16);
            let fwd_tx = tx.clone();
            let fwd = tokio::spawn(async move {
                while let Some(b) = orx.recv().await {
                    let _ = fwd_tx.send(Msg::Output(id, b));
                }
            });
            let stx = tx.clone();
            let r = exec::run(launch, otx, cancel, move |_pid| {
                let _ = stx.send(Msg::Started(id, started_ms));
            })
            .await;
            let _ = fwd.await;
            if is_reboot && matches!(r, Ok(End::Exited(0))) {
                let _ = tx.send(Msg::RebootScheduled(id));
                return;
            }
            let outcome = match r {
                Ok(End::Exited(code)) => CommandOutcome::Exited { code },
                Ok(End::Signaled(signal)) => CommandOutcome::Signaled { signal },
                Ok(End::TimedOut) => CommandOutcome::TimedOut,
                Ok(End::Cancelled) => CommandOutcome::Cancelled,
                Err(message) => CommandOutcome::FailedToStart { message },
            };
            let _ = tx.send(Msg::Finished(id, outcome));
        });
        Ok(())
    }

    /// `ScanPackages`: refused when commands or scans are off; else
    /// running (durably) until the scanner has buffered the scan's record.
    async fn scan_packages(
        &self,
        id: CommandId,
        full: bool,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        let refusal = if !self.inner.policy.enabled {
            Some(DISABLED.to_string())
        } else {
            match &self.inner.scanner {
                None => Some(crate::scan::SCANS_OFF.to_string()),
                Some(s) => s.available().err(),
            }
        };
        let (Some(scanner), None) = (self.inner.scanner.clone(), refusal.clone()) else {
            let reason = refusal.unwrap_or_else(|| crate::scan::SCANS_OFF.to_string());
            info!(%id, %reason, "package scan refused");
            self.finish(id, CommandOutcome::Refused { reason }).await;
            return Ok(());
        };
        let l = &self.inner.ledger;
        let mut e = l.get(id)?.unwrap_or_else(|| Entry::new(now_ms()));
        let started_ms = now_ms();
        e.phase = Phase::Running { started_ms };
        l.put(id, &e)?;
        l.flush().await?;
        let cancel = CancellationToken::new();
        lock(&self.inner.running).insert(id, cancel.clone());
        let tx = self.inner.tx.clone();
        let _ = tx.send(Msg::Started(id, started_ms));
        tokio::spawn(async move {
            let outcome = tokio::select! {
                r = tokio::time::timeout(timeout, scanner.scan(full)) => match r {
                    Ok(Ok(done)) => {
                        let _ = tx.send(Msg::Output(id, done.line().into_bytes()));
                        CommandOutcome::Exited { code: 0 }
                    }
                    Ok(Err(reason)) => {
                        let _ = tx.send(Msg::Output(id, format!("{reason}\n").into_bytes()));
                        CommandOutcome::Exited { code: 1 }
                    }
                    Err(_) => CommandOutcome::TimedOut,
                },
                _ = cancel.cancelled() => CommandOutcome::Cancelled,
            };
            let _ = tx.send(Msg::Finished(id, outcome));
        });
        Ok(())
    }

    /// `InstallPatches` / `RollbackPatches`: refused when commands or
    /// installs are off; else running (durably) while the installer works
    /// (`crate::install`), its log streamed as the output.
    async fn patch(&self, id: CommandId, action: BuiltinAction) -> anyhow::Result<()> {
        let refusal = if !self.inner.policy.enabled {
            Some(DISABLED.to_string())
        } else if self.inner.installer.is_none() {
            Some(crate::install::INSTALLS_OFF.to_string())
        } else {
            None
        };
        let (Some(installer), None) = (self.inner.installer.clone(), refusal.clone()) else {
            let reason = refusal.unwrap_or_else(|| crate::install::INSTALLS_OFF.to_string());
            info!(%id, %reason, "patch command refused");
            self.finish(id, CommandOutcome::Refused { reason }).await;
            return Ok(());
        };
        let l = &self.inner.ledger;
        let mut e = l.get(id)?.unwrap_or_else(|| Entry::new(now_ms()));
        let started_ms = now_ms();
        e.phase = Phase::Running { started_ms };
        l.put(id, &e)?;
        l.flush().await?;
        let cancel = CancellationToken::new();
        lock(&self.inner.running).insert(id, cancel.clone());
        let tx = self.inner.tx.clone();
        let _ = tx.send(Msg::Started(id, started_ms));
        let otx = tx.clone();
        let output: crate::install::tools::OutputFn = Arc::new(move |b: Vec<u8>| {
            let _ = otx.send(Msg::Output(id, b));
        });
        tokio::spawn(async move {
            let outcome = match action {
                BuiltinAction::InstallPatches { format, request } => {
                    installer
                        .install(id, format, &request, output, cancel)
                        .await
                }
                BuiltinAction::RollbackPatches { format, request } => {
                    installer
                        .rollback(id, format, &request, output, cancel)
                        .await
                }
                _ => CommandOutcome::Refused {
                    reason: "not a patch action".into(),
                },
            };
            let _ = tx.send(Msg::Finished(id, outcome));
        });
        Ok(())
    }

    /// The spec as a process to start (and whether it is the reboot
    /// action), or why not.
    fn prepare(&self, spec: &[u8]) -> Result<(Launch, bool), CommandOutcome> {
        let refuse = |reason: String| CommandOutcome::Refused { reason };
        if !self.inner.policy.enabled {
            return Err(refuse(DISABLED.into()));
        }
        let spec = CommandSpec::decode(spec).map_err(|e| refuse(e.to_string()))?;
        spec.validate().map_err(|e| refuse(e.to_string()))?;
        let passwd = || std::fs::read_to_string("/etc/passwd").unwrap_or_default();
        let is_reboot = matches!(
            spec.kind,
            CommandKind::Builtin(BuiltinAction::Reboot { .. })
        );
        launch_of(&spec, &self.inner.policy, &current_user(), passwd)
            .map(|l| (l, is_reboot))
            .map_err(refuse)
    }
}

/// `(full, timeout)` when the spec is a valid `ScanPackages` action (an
/// invalid spec goes the usual way and is refused with its reason).
fn scan_action(spec: &[u8]) -> Option<(bool, Duration)> {
    let spec = CommandSpec::decode(spec).ok()?;
    spec.validate().ok()?;
    match spec.kind {
        CommandKind::Builtin(BuiltinAction::ScanPackages { full }) => {
            Some((full, Duration::from_millis(spec.timeout_ms)))
        }
        _ => None,
    }
}

/// The action when the spec is a valid `InstallPatches` or
/// `RollbackPatches` (an invalid spec goes the usual way and is refused
/// with its reason).
fn patch_action(spec: &[u8]) -> Option<BuiltinAction> {
    let spec = CommandSpec::decode(spec).ok()?;
    spec.validate().ok()?;
    match spec.kind {
        CommandKind::Builtin(
            a @ (BuiltinAction::InstallPatches { .. } | BuiltinAction::RollbackPatches { .. }),
        ) => Some(a),
        _ => None,
    }
}

fn current_user() -> String {
    let uid = rustix::process::getuid().as_raw();
    std::fs::read_to_string("/etc/passwd")
        .ok()
        .and_then(|p| {
            p.lines().find_map(|l| {
                let f: Vec<&str> = l.split(':').collect();
                (f.len() >= 3 && f[2] == uid.to_string()).then(|| f[0].to_string())
            })
        })
        .unwrap_or_else(|| uid.to_string())
}

/// How a spec runs on this agent (pure: the policy, the agent's user and
/// the passwd text are inputs).
pub fn launch_of(
    spec: &CommandSpec,
    policy: &Policy,
    agent_user: &str,
    passwd: impl FnOnce() -> String,
) -> Result<Launch, String> {
    let program = match spec.interpreter {
        Interpreter::Powershell => {
            return Err("the powershell interpreter is reserved for Windows agents".into());
        }
        i => i.as_str().to_string(),
    };
    let mut args: Vec<String> = match &spec.kind {
        CommandKind::Shell { line } => vec!["-c".into(), line.clone()],
        CommandKind::Script { body, .. } => vec!["-c".into(), body.clone()],
        CommandKind::Builtin(BuiltinAction::RestartService { unit }) => {
            if spec.interpreter != Interpreter::Sh {
                return Err("built-in actions run with sh".into());
            }
            return Ok(Launch {
                program: "sh".into(),
                args: vec![
                    "-c".into(),
                    "systemctl restart -- \"$1\"; rc=$?; echo \"$1: $(systemctl is-active -- \"$1\")\"; exit $rc".into(),
                    "sh".into(),
                    unit.clone(),
                ],
                env: spec.env.clone(),
                cwd: "/".into(),
                user: None,
                timeout: Duration::from_millis(spec.timeout_ms),
                kill_grace: policy.kill_grace,
            });
        }
        CommandKind::Builtin(BuiltinAction::Reboot { delay_ms }) => {
            if spec.interpreter != Interpreter::Sh {
                return Err("built-in actions run with sh".into());
            }
            let mut env = spec.env.clone();
            env.push((
                "OUTPOST_REBOOT_DELAY_S".into(),
                delay_ms.div_ceil(1000).to_string(),
            ));
            env.push(("OUTPOST_AGENT_PID".into(), std::process::id().to_string()));
            return Ok(Launch {
                program: "sh".into(),
                args: vec![
                    "-c".into(),
                    policy.reboot.command.clone(),
                    "outpost-reboot".into(),
                ],
                env,
                cwd: "/".into(),
                user: None,
                timeout: Duration::from_millis(spec.timeout_ms),
                kill_grace: policy.kill_grace,
            });
        }
        CommandKind::Builtin(BuiltinAction::PushFile { .. } | BuiltinAction::PullFile { .. }) => {
            return Err("file transfers are not supported by this agent".into());
        }
        CommandKind::Builtin(BuiltinAction::ScanPackages { .. }) => {
            return Err("package scans run in the agent's scanner, not as a process".into());
        }
        CommandKind::Builtin(
            BuiltinAction::InstallPatches { .. } | BuiltinAction::RollbackPatches { .. },
        ) => {
            return Err("patch installs run in the agent's installer, not as a process".into());
        }
    };
    // `sh -c LINE NAME ARGS...`: NAME is $0. python3 takes the args as
    // sys.argv[1:] directly.
    if spec.interpreter != Interpreter::Python3 {
        args.push(program.clone());
    }
    args.extend(spec.args.iter().cloned());
    let mut env = spec.env.clone();
    let user = match &spec.run_as {
        None => None,
        Some(u) if u == agent_user => None,
        Some(u) => {
            if !policy.allowed_run_as.iter().any(|a| a == u) {
                return Err(format!(
                    "run-as user {u:?} is not allowed on this device (allowed_run_as in agent.toml)"
                ));
            }
            let (uid, gid, home) = exec::lookup_user(&passwd(), u)
                .ok_or_else(|| format!("run-as user {u:?} does not exist on this device"))?;
            env.push(("HOME".into(), home));
            env.push(("USER".into(), u.clone()));
            env.push(("LOGNAME".into(), u.clone()));
            Some((uid, gid))
        }
    };
    Ok(Launch {
        program,
        args,
        env,
        cwd: spec.cwd.clone().unwrap_or_else(|| "/".into()),
        user,
        timeout: Duration::from_millis(spec.timeout_ms),
        kill_grace: policy.kill_grace,
    })
}

impl RemoteHost for Executor {
    fn session_up(&self, link: RemoteLink) {
        *lock(&self.inner.link) = Some(link.clone());
        if let Some(f) = &self.inner.files {
            f.session_up(link.clone());
        }
        tokio::spawn(self.clone().pump(link));
    }

    fn event(&self, event: AgentEvent) {
        let _ = self.inner.tx.send(Msg::Event(event));
    }

    fn session_down(&self) {
        *lock(&self.inner.link) = None;
        if let Some(f) = &self.inner.files {
            f.session_down();
        }
    }
}

impl Executor {
    /// Sends, on one session, stored output from the acknowledged offset
    /// and then results whose output is all acknowledged, until the
    /// session ends.
    async fn pump(self, link: RemoteLink) {
        let mut wake = self.inner.wake.subscribe();
        let mut sent_to: HashMap<CommandId, u64> = HashMap::new();
        let mut sent_results: HashSet<CommandId> = HashSet::new();
        let max = link.max_chunk_bytes().max(1);
        while link.is_open() {
            wake.borrow_and_update();
            let ids: Vec<CommandId> = lock(&self.inner.pending).iter().copied().collect();
            for id in ids {
                let Ok(Some(e)) = self.inner.ledger.get(id) else {
                    continue;
                };
                let from = sent_to.get(&id).copied().unwrap_or(0).max(e.output_acked);
                if from < e.output_len {
                    let chunks = self
                        .inner
                        .ledger
                        .output_from(id, from, 16)
                        .unwrap_or_default();
                    match output_step(from, e.output_acked, e.output_len, &chunks) {
                        OutputStep::AwaitAck => {
                            // The ack wakes this loop (or the next tick).
                        }
                        OutputStep::GapToEnd => {
                            // Nothing stored from `from` on: an empty piece
                            // at the end tells the appliance the gap (it
                            // counts it dropped) and lets it acknowledge
                            // everything, so the result can follow.
                            let o = CommandOutput {
                                id,
                                offset: e.output_len,
                                bytes: Vec::new(),
                            };
                            if link.send_output(o).await.is_err() {
                                return;
                            }
                            sent_to.insert(id, e.output_len);
                        }
                        OutputStep::Send => {
                            let mut to = from;
                            for (off, bytes) in chunks {
                                let skip = from.saturating_sub(off) as usize;
                                let mut at = off + skip as u64;
                                for piece in bytes[skip.min(bytes.len())..].chunks(max) {
                                    let o = CommandOutput {
                                        id,
                                        offset: at,
                                        bytes: piece.to_vec(),
                                    };
                                    if link.send_output(o).await.is_err() {
                                        return;
                                    }
                                    at += piece.len() as u64;
                                }
                                to = at;
                            }
                            sent_to.insert(id, to.max(from));
                            if to > from {
                                // More may be stored: look again at once.
                                self.wake();
                            }
                        }
                    }
                }
                if let Some(r) = e.result()
                    && !e.result_acked
                    && e.output_acked >= e.output_len
                    && !sent_results.contains(&id)
                {
                    if link.send_result(r.clone()).is_err() {
                        return;
                    }
                    sent_results.insert(id);
                }
            }
            tokio::select! {
                r = wake.changed() => if r.is_err() { return },
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }
}

/// What the pump does next for a command's output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OutputStep {
    /// Send the stored chunks found from the next offset (after a gap, the
    /// appliance counts the missing bytes dropped).
    Send,
    /// Nothing stored from the next offset to the end (dropped while the
    /// appliance was unreachable): send an empty piece at the end.
    GapToEnd,
    /// A gap comes next and bytes before it are not acknowledged yet:
    /// wait. The appliance's flow window would count the gap's bytes as
    /// in flight; once all before it is acknowledged, its window for the
    /// command is empty and the gap costs nothing.
    AwaitAck,
}

/// The pump's decision for one command (pure): `from` is the next offset
/// to send, `chunks` the stored chunks from there (see
/// [`Ledger::output_from`]).
fn output_step(from: u64, acked: u64, len: u64, chunks: &[(u64, Vec<u8>)]) -> OutputStep {
    let gap = match chunks.first() {
        None => from < len,
        Some((off, _)) => *off > from,
    };
    match (gap, from > acked, chunks.is_empty()) {
        (false, _, _) => OutputStep::Send,
        (true, true, _) => OutputStep::AwaitAck,
        (true, false, true) => OutputStep::GapToEnd,
        (true, false, false) => OutputStep::Send,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::remote::{LinkInbox, LinkInput};

    async fn next_result(inbox: &mut LinkInbox) -> CommandResult {
        loop {
            let i = tokio::time::timeout(Duration::from_secs(10), inbox.rx.recv())
                .await
                .expect("a link input")
                .expect("open");
            if let LinkInput::Result(r) = i {
                return r;
            }
        }
    }

    #[tokio::test]
    async fn a_redelivered_command_is_never_started_twice_and_its_result_is_sent_again() {
        let dir = tempfile::tempdir().unwrap();
        let count = dir.path().join("count");
        let ex = Executor::start(&dir.path().join("ledger"), policy()).unwrap();
        let (link, mut inbox) = RemoteLink::new(64 * 1024);
        ex.session_up(link);
        let cmd = Command {
            id: CommandId([9; 16]),
            spec: CommandSpec::shell(format!("echo ran >> {}", count.display()), "t")
                .encode()
                .unwrap(),
        };
        ex.event(AgentEvent::Command(cmd.clone()));
        let first = tokio::time::timeout(Duration::from_secs(10), inbox.rx.recv())
            .await
            .unwrap()
            .unwrap();
        assert!(
            matches!(first, LinkInput::AckCommand(i) if i == cmd.id),
            "acked first"
        );
        // No output: the result goes at once.
        let r = next_result(&mut inbox).await;
        assert_eq!(r.outcome, CommandOutcome::Exited { code: 0 });
        // Delivered again (the ack was lost): acked, not run.
        ex.event(AgentEvent::Command(cmd.clone()));
        // A new session: the unacknowledged result is sent again.
        ex.session_down();
        drop(inbox);
        let (link, mut inbox) = RemoteLink::new(64 * 1024);
        ex.session_up(link);
        ex.event(AgentEvent::Command(cmd.clone()));
        let again = next_result(&mut inbox).await;
        assert_eq!(again, r);
        ex.event(AgentEvent::ResultAcked { id: cmd.id });
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(std::fs::read_to_string(&count).unwrap(), "ran\n");
    }

    fn policy() -> Policy {
        Policy {
            enabled: true,
            allowed_run_as: vec!["nobody".into()],
            kill_grace: Duration::from_secs(1),
            reboot: RebootConfig::default(),
        }
    }

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/bash\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n";

    #[tokio::test]
    async fn with_remote_commands_off_a_command_is_recorded_and_refused_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let mut p = policy();
        p.enabled = false;
        let ex = Executor::start(dir.path(), p).unwrap();
        let (link, mut inbox) = RemoteLink::new(64 * 1024);
        ex.session_up(link);
        let id = CommandId([4; 16]);
        ex.event(AgentEvent::Command(Command {
            id,
            spec: CommandSpec::shell("true", "t").encode().unwrap(),
        }));
        let r = next_result(&mut inbox).await;
        assert_eq!(
            r.outcome,
            CommandOutcome::Refused {
                reason: DISABLED.into()
            }
        );
    }

    fn scan_spec(full: bool) -> Vec<u8> {
        CommandSpec {
            kind: CommandKind::Builtin(BuiltinAction::ScanPackages { full }),
            ..CommandSpec::shell("-", "t")
        }
        .encode()
        .unwrap()
    }

    #[tokio::test]
    async fn scan_packages_asks_the_scanner_and_completes_when_the_scan_is_buffered() {
        let dir = tempfile::tempdir().unwrap();
        let scanner = crate::scan::ScanRequests::new();
        let mut requests = scanner.attach();
        let ex = Executor::start_with(dir.path(), policy(), None, Some(scanner)).unwrap();
        let (link, mut inbox) = RemoteLink::new(64 * 1024);
        ex.session_up(link);
        let id = CommandId([6; 16]);
        ex.event(AgentEvent::Command(Command {
            id,
            spec: scan_spec(true),
        }));
        let req = tokio::time::timeout(Duration::from_secs(10), requests.recv())
            .await
            .unwrap()
            .unwrap();
        assert!(req.full, "a full scan was asked for");
        let done = crate::scan::ScanDone {
            seq: 42,
            full: true,
            packages: 852,
            upgrades: 3,
            bytes: 13707,
        };
        req.reply.send(Ok(done.clone())).unwrap();
        let o = tokio::time::timeout(Duration::from_secs(10), inbox.output.recv())
            .await
            .unwrap()
            .unwrap();
        let line = String::from_utf8(o.bytes).unwrap();
        assert_eq!(line, done.line());
        assert!(
            line.contains("packages=852") && line.contains("bytes=13707"),
            "{line}"
        );
        ex.event(AgentEvent::OutputAcked {
            id,
            up_to: line.len() as u64,
        });
        let r = next_result(&mut inbox).await;
        assert_eq!(r.outcome, CommandOutcome::Exited { code: 0 });
    }

    #[tokio::test]
    async fn scan_packages_is_refused_with_the_reason_when_scans_are_off() {
        let dir = tempfile::tempdir().unwrap();
        // package_scan = false: the scanner never attaches.
        let scanner = crate::scan::ScanRequests::new();
        let ex = Executor::start_with(dir.path(), policy(), None, Some(scanner)).unwrap();
        let (link, mut inbox) = RemoteLink::new(64 * 1024);
        ex.session_up(link);
        ex.event(AgentEvent::Command(Command {
            id: CommandId([7; 16]),
            spec: scan_spec(false),
        }));
        let r = next_result(&mut inbox).await;
        assert_eq!(
            r.outcome,
            CommandOutcome::Refused {
                reason: crate::scan::SCANS_OFF.into()
            }
        );
        // And with remote commands off, that reason comes first.
        let dir = tempfile::tempdir().unwrap();
        let mut p = policy();
        p.enabled = false;
        let scanner = crate::scan::ScanRequests::new();
        let _rx = scanner.attach();
        let ex = Executor::start_with(dir.path(), p, None, Some(scanner)).unwrap();
        let (link, mut inbox) = RemoteLink::new(64 * 1024);
        ex.session_up(link);
        ex.event(AgentEvent::Command(Command {
            id: CommandId([8; 16]),
            spec: scan_spec(true),
        }));
        let r = next_result(&mut inbox).await;
        assert_eq!(
            r.outcome,
            CommandOutcome::Refused {
                reason: DISABLED.into()
            }
        );
    }

    #[tokio::test]
    async fn patch_actions_are_refused_with_the_reason_without_an_installer() {
        let dir = tempfile::tempdir().unwrap();
        let ex = Executor::start(dir.path(), policy()).unwrap();
        let (link, mut inbox) = RemoteLink::new(64 * 1024);
        ex.session_up(link);
        ex.event(AgentEvent::Command(Command {
            id: CommandId([11; 16]),
            spec: CommandSpec {
                kind: CommandKind::Builtin(BuiltinAction::InstallPatches {
                    format: 1,
                    request: vec![1, 2, 3],
                }),
                ..CommandSpec::shell("-", "t")
            }
            .encode()
            .unwrap(),
        }));
        let r = next_result(&mut inbox).await;
        assert_eq!(
            r.outcome,
            CommandOutcome::Refused {
                reason: crate::install::INSTALLS_OFF.into()
            }
        );
    }

    struct NoStatuses;
    impl crate::install::StatusWriter for NoStatuses {
        fn write(&self, _: &outpost_patch::install::wire::DeviceStatus) -> Result<(), String> {
            Ok(())
        }
    }

    #[tokio::test]
    async fn patch_actions_go_to_the_installer_which_refuses_an_unknown_request_format() {
        let dir = tempfile::tempdir().unwrap();
        let installer = crate::install::PatchInstaller::new(
            crate::install::InstallTools::default(),
            crate::scan::PackageTools::default(),
            RebootConfig::default(),
            Duration::from_secs(1),
            dir.path().join("install"),
            Arc::new(NoStatuses),
        );
        let ex = Executor::start_full(
            &dir.path().join("ledger"),
            policy(),
            None,
            None,
            Some(installer),
        )
        .unwrap();
        let (link, mut inbox) = RemoteLink::new(64 * 1024);
        ex.session_up(link);
        ex.event(AgentEvent::Command(Command {
            id: CommandId([12; 16]),
            spec: CommandSpec {
                kind: CommandKind::Builtin(BuiltinAction::RollbackPatches {
                    format: 77,
                    request: vec![1, 2, 3],
                }),
                ..CommandSpec::shell("-", "t")
            }
            .encode()
            .unwrap(),
        }));
        let r = next_result(&mut inbox).await;
        match r.outcome {
            CommandOutcome::Refused { reason } => {
                assert!(reason.contains("format 77"), "{reason}")
            }
            o => panic!("expected a refusal, got {o:?}"),
        }
    }

    #[tokio::test]
    async fn output_is_streamed_and_the_result_waits_until_the_output_is_acknowledged() {
        let dir = tempfile::tempdir().unwrap();
        let ex = Executor::start(dir.path(), policy()).unwrap();
        let (link, mut inbox) = RemoteLink::new(64 * 1024);
        ex.session_up(link);
        let id = CommandId([5; 16]);
        ex.event(AgentEvent::Command(Command {
            id,
            spec: CommandSpec::shell("echo one; echo two", "t")
                .encode()
                .unwrap(),
        }));
        let mut got = Vec::new();
        while got.len() < 8 {
            let o = tokio::time::timeout(Duration::from_secs(10), inbox.output.recv())
                .await
                .unwrap()
                .unwrap();
            assert_eq!(o.offset as usize, got.len());
            got.extend(o.bytes);
        }
        assert_eq!(got, b"one\ntwo\n");
        tokio::time::sleep(Duration::from_millis(300)).await;
        while let Ok(i) = inbox.rx.try_recv() {
            assert!(
                !matches!(i, LinkInput::Result(_)),
                "result before the output's ack"
            );
        }
        ex.event(AgentEvent::OutputAcked { id, up_to: 8 });
        let r = next_result(&mut inbox).await;
        assert_eq!(r.outcome, CommandOutcome::Exited { code: 0 });
        assert_eq!(r.output_bytes, 8);
    }

    /// Plays the appliance for `id` on `inbox` until its result: output
    /// pieces are taken at their offsets (a gap is dropped bytes, as the
    /// appliance counts it) and acknowledged up to the end received.
    /// Returns the pieces received and the result.
    async fn appliance_until_result(
        ex: &Executor,
        inbox: &mut LinkInbox,
        id: CommandId,
    ) -> (Vec<(u64, Vec<u8>)>, CommandResult) {
        let mut received = 0u64;
        let mut pieces = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            tokio::select! {
                o = inbox.output.recv() => {
                    let o = o.expect("open");
                    assert_eq!(o.id, id);
                    let end = o.offset + o.bytes.len() as u64;
                    assert!(o.offset >= received, "a re-send at {} below {received}", o.offset);
                    received = end;
                    pieces.push((o.offset, o.bytes));
                    ex.event(AgentEvent::OutputAcked { id, up_to: received });
                }
                i = inbox.rx.recv() => {
                    if let Some(LinkInput::Result(r)) = i {
                        return (pieces, r);
                    }
                }
                _ = tokio::time::sleep_until(deadline) => {
                    panic!("no result within 20 s; received up to {received}")
                }
            }
        }
    }

    /// Chunk `i` of the output tests: 16 KiB of one byte value.
    fn out_chunk(i: usize) -> Vec<u8> {
        vec![(i % 251) as u8; 16 * 1024]
    }

    #[tokio::test]
    async fn output_over_the_bound_while_unacknowledged_keeps_the_head_and_newest_tail_and_the_result_goes()
     {
        let dir = tempfile::tempdir().unwrap();
        let ex = Executor::start(dir.path(), policy()).unwrap();
        let id = CommandId([21; 16]);
        let mut e = Entry::new(1);
        e.phase = Phase::Running { started_ms: 1 };
        ex.inner.ledger.put(id, &e).unwrap();
        // No session: nothing is acknowledged while 3.2 MiB are printed.
        for i in 0..200 {
            ex.append_output(id, &out_chunk(i)).unwrap();
        }
        let chunk = 16 * 1024u64;
        let stored = ex.inner.ledger.output_chunks(id).unwrap();
        let bytes_in = |head: bool| -> u64 {
            stored
                .iter()
                .filter(|(o, _)| (*o < KEEP_HEAD_BYTES) == head)
                .map(|(_, l)| *l as u64)
                .sum()
        };
        assert_eq!(bytes_in(true), KEEP_HEAD_BYTES, "the head is whole");
        assert_eq!(bytes_in(false), MAX_UNACKED_TAIL_BYTES, "the tail is 1 MiB");
        assert_eq!(
            stored.last(),
            Some(&(199 * chunk, chunk as usize)),
            "the newest chunk stays"
        );
        assert_eq!(
            stored
                .iter()
                .find(|(o, _)| *o >= KEEP_HEAD_BYTES)
                .map(|c| c.0),
            Some(200 * chunk - MAX_UNACKED_TAIL_BYTES),
            "the tail is the last 1 MiB"
        );
        ex.finish(id, CommandOutcome::Exited { code: 0 }).await;
        // The appliance is back: head, then the tail after a gap, then the
        // result; the pump does not spin.
        let wakes_before = *ex.inner.wake.borrow();
        let (link, mut inbox) = RemoteLink::new(64 * 1024);
        ex.session_up(link);
        let (pieces, r) = appliance_until_result(&ex, &mut inbox, id).await;
        assert_eq!(r.outcome, CommandOutcome::Exited { code: 0 });
        assert_eq!(r.output_bytes, 200 * chunk);
        let mut want = Vec::new();
        for i in (0..32).chain(136..200) {
            want.push((i as u64 * chunk, out_chunk(i)));
        }
        assert_eq!(pieces, want);
        let wakes = *ex.inner.wake.borrow() - wakes_before;
        assert!(wakes < 400, "{wakes} wakes for 96 chunks: the pump spins");
        // Settled: nothing more to send, no more wakes (bounded wait).
        ex.event(AgentEvent::ResultAcked { id });
        let settled = *ex.inner.wake.borrow();
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(*ex.inner.wake.borrow() - settled < 5, "the pump spins");
    }

    #[tokio::test]
    async fn a_result_goes_even_when_no_output_is_stored_from_the_acknowledged_offset() {
        // What an agent with the old unbounded drop left in its ledger:
        // 3 MiB produced, only the head stored.
        let dir = tempfile::tempdir().unwrap();
        let id = CommandId([22; 16]);
        let chunk = 16 * 1024u64;
        {
            let l = Ledger::open(dir.path()).unwrap();
            let mut e = Entry::new(1);
            for i in 0..32 {
                l.put_output(id, i as u64 * chunk, &out_chunk(i)).unwrap();
            }
            e.output_len = 3 * 1024 * 1024;
            e.phase = Phase::Finished(CommandResult {
                id,
                outcome: CommandOutcome::Exited { code: 0 },
                output_bytes: e.output_len,
                finished_ms: 2,
            });
            l.put(id, &e).unwrap();
            l.flush().await.unwrap();
        }
        let ex = crate::reopen_sled(|| Executor::start(dir.path(), policy()));
        let wakes_before = *ex.inner.wake.borrow();
        let (link, mut inbox) = RemoteLink::new(64 * 1024);
        ex.session_up(link);
        let (pieces, r) = appliance_until_result(&ex, &mut inbox, id).await;
        assert_eq!(r.output_bytes, 3 * 1024 * 1024);
        assert_eq!(pieces.len(), 33, "the head, then the end");
        assert_eq!(pieces.last(), Some(&(3 * 1024 * 1024, Vec::new())));
        let wakes = *ex.inner.wake.borrow() - wakes_before;
        assert!(wakes < 200, "{wakes} wakes: the pump spins");
    }

    #[test]
    fn the_pump_crosses_a_gap_only_once_all_before_it_is_acknowledged() {
        let c = |off: u64| vec![(off, vec![0u8; 10])];
        assert_eq!(output_step(0, 0, 100, &c(0)), OutputStep::Send);
        assert_eq!(
            output_step(5, 0, 100, &c(0)),
            OutputStep::Send,
            "inside a chunk"
        );
        assert_eq!(
            output_step(10, 10, 100, &c(50)),
            OutputStep::Send,
            "gap, all acked"
        );
        assert_eq!(output_step(10, 5, 100, &c(50)), OutputStep::AwaitAck);
        assert_eq!(output_step(10, 10, 100, &[]), OutputStep::GapToEnd);
        assert_eq!(output_step(10, 0, 100, &[]), OutputStep::AwaitAck);
    }

    #[tokio::test]
    async fn a_command_leaving_a_background_child_on_its_output_ends_with_its_exit() {
        let dir = tempfile::tempdir().unwrap();
        let ex = Executor::start(&dir.path().join("ledger"), policy()).unwrap();
        let (link, mut inbox) = RemoteLink::new(64 * 1024);
        ex.session_up(link);
        let id = CommandId([23; 16]);
        let mut spec = CommandSpec::shell("sleep 30 & echo x", "t");
        spec.timeout_ms = 1000;
        let t = std::time::Instant::now();
        ex.event(AgentEvent::Command(Command {
            id,
            spec: spec.encode().unwrap(),
        }));
        let (pieces, r) = appliance_until_result(&ex, &mut inbox, id).await;
        assert_eq!(r.outcome, CommandOutcome::Exited { code: 0 });
        let out: Vec<u8> = pieces.into_iter().flat_map(|(_, b)| b).collect();
        assert_eq!(out, b"x\n");
        assert!(
            t.elapsed() < Duration::from_secs(4),
            "held by its background child: {:?}",
            t.elapsed()
        );
    }

    #[tokio::test]
    async fn with_the_default_reboot_command_a_cancel_is_taken_until_the_whole_minute_shutdown_schedules()
     {
        let dir = tempfile::tempdir().unwrap();
        let boot = dir.path().join("boot_id");
        std::fs::write(&boot, "boot-1\n").unwrap();
        // A stand-in for shutdown(8) on PATH: records its arguments.
        let bin = dir.path().join("bin");
        std::fs::create_dir(&bin).unwrap();
        let args = dir.path().join("shutdown-args");
        let fake = bin.join("shutdown");
        std::fs::write(
            &fake,
            format!("#!/bin/sh\necho \"$@\" >> {}\n", args.display()),
        )
        .unwrap();
        std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let undone = dir.path().join("undone");
        let mut p = policy();
        p.reboot = RebootConfig {
            dpkg_lock: dir.path().join("lock-frontend"),
            boot_id_path: boot,
            ..RebootConfig::default()
        };
        assert_eq!(p.reboot.command, reboot::DEFAULT_REBOOT_COMMAND);
        let ex = Executor::start(&dir.path().join("ledger"), p).unwrap();
        ex.set_reboot_cancel_command(format!("echo cancelled >> {}", undone.display()));
        let (link, mut inbox) = RemoteLink::new(64 * 1024);
        ex.session_up(link);
        let id = CommandId([24; 16]);
        let mut spec = CommandSpec {
            kind: CommandKind::Builtin(BuiltinAction::Reboot { delay_ms: 90_000 }),
            ..CommandSpec::shell("x", "t")
        };
        spec.env = vec![("PATH".into(), format!("{}:/usr/bin:/bin", bin.display()))];
        ex.event(AgentEvent::Command(Command {
            id,
            spec: spec.encode().unwrap(),
        }));
        // Scheduled (its command ended): shutdown was asked for 2 minutes.
        let t0 = std::time::Instant::now();
        while (!args.exists() || lock(&ex.inner.running).contains_key(&id))
            && t0.elapsed() < Duration::from_secs(10)
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(std::fs::read_to_string(&args).unwrap(), "-r +2\n");
        let Some(Entry {
            phase: Phase::Running { started_ms },
            ..
        }) = ex.inner.ledger.get(id).unwrap()
        else {
            panic!("the reboot is running");
        };
        let due = ex.inner.ledger.reboot_due(id).unwrap();
        assert_eq!(due, Some(started_ms + 120_000), "due when shutdown reboots");
        output_until(&ex, &mut inbox, id, "rebooting in 120 s").await;
        // 100 s in: past the 90 s asked, before the 120 s scheduled.
        ex.cancel_reboot(id, started_ms + 100_000).unwrap();
        output_until(&ex, &mut inbox, id, "reboot cancelled").await;
        let r = next_result(&mut inbox).await;
        assert_eq!((r.id, r.outcome), (id, CommandOutcome::Cancelled));
        assert_eq!(std::fs::read_to_string(&undone).unwrap(), "cancelled\n");
    }

    #[test]
    fn a_shell_line_runs_with_its_interpreter_and_positional_args() {
        let mut s = CommandSpec::shell("echo \"$1\"", "t");
        s.args = vec!["a b".into()];
        let l = launch_of(&s, &policy(), "root", || PASSWD.into()).unwrap();
        assert_eq!(l.program, "sh");
        assert_eq!(l.args, vec!["-c", "echo \"$1\"", "sh", "a b"]);
        assert_eq!(l.cwd, "/");
        assert_eq!(l.timeout, Duration::from_secs(300));
        s.interpreter = Interpreter::Python3;
        let l = launch_of(&s, &policy(), "root", || PASSWD.into()).unwrap();
        assert_eq!(l.args, vec!["-c", "echo \"$1\"", "a b"]);
    }

    #[test]
    fn run_as_is_refused_unless_allowed_and_existing() {
        let mut s = CommandSpec::shell("id", "t");
        s.run_as = Some("nobody".into());
        let l = launch_of(&s, &policy(), "root", || PASSWD.into()).unwrap();
        assert_eq!(l.user, Some((65534, 65534)));
        s.run_as = Some("root".into());
        assert!(
            launch_of(&s, &policy(), "root", || PASSWD.into())
                .unwrap()
                .user
                .is_none()
        );
        s.run_as = Some("postgres".into());
        let e = launch_of(&s, &policy(), "root", || PASSWD.into()).unwrap_err();
        assert!(e.contains("not allowed"), "{e}");
        let mut p = policy();
        p.allowed_run_as.push("ghost".into());
        s.run_as = Some("ghost".into());
        let e = launch_of(&s, &p, "root", || PASSWD.into()).unwrap_err();
        assert!(e.contains("does not exist"), "{e}");
    }

    #[test]
    fn powershell_is_refused_with_a_reason_and_reboot_runs_the_configured_command() {
        let mut s = CommandSpec::shell("x", "t");
        s.interpreter = Interpreter::Powershell;
        assert!(
            launch_of(&s, &policy(), "root", String::new)
                .unwrap_err()
                .contains("Windows")
        );
        let s = CommandSpec {
            kind: CommandKind::Builtin(BuiltinAction::Reboot { delay_ms: 61_000 }),
            ..CommandSpec::shell("x", "t")
        };
        let mut p = policy();
        p.reboot.command = "echo fake reboot".into();
        let l = launch_of(&s, &p, "root", String::new).unwrap();
        assert_eq!(l.args[1], "echo fake reboot");
        assert!(
            l.env
                .contains(&("OUTPOST_REBOOT_DELAY_S".into(), "61".into()))
        );
    }

    #[tokio::test]
    async fn a_reboot_is_refused_while_the_dpkg_lock_is_held_and_otherwise_stays_running() {
        let dir = tempfile::tempdir().unwrap();
        let boot = dir.path().join("boot_id");
        std::fs::write(&boot, "boot-1\n").unwrap();
        let ran = dir.path().join("ran");
        let mut p = policy();
        p.reboot = RebootConfig {
            command: format!("echo \"$OUTPOST_REBOOT_DELAY_S\" > {}", ran.display()),
            dpkg_lock: dir.path().join("lock-frontend"),
            boot_id_path: boot.clone(),
        };
        let ex = Executor::start(&dir.path().join("ledger"), p.clone()).unwrap();
        let (link, mut inbox) = RemoteLink::new(64 * 1024);
        ex.session_up(link);
        let reboot = |n: u8| Command {
            id: CommandId([n; 16]),
            spec: CommandSpec {
                kind: CommandKind::Builtin(BuiltinAction::Reboot { delay_ms: 2000 }),
                ..CommandSpec::shell("x", "t")
            }
            .encode()
            .unwrap(),
        };
        // No package install: scheduled, stays running (no result).
        ex.event(AgentEvent::Command(reboot(1)));
        let t0 = std::time::Instant::now();
        while !ran.exists() && t0.elapsed() < Duration::from_secs(10) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(std::fs::read_to_string(&ran).unwrap(), "2\n");
        tokio::time::sleep(Duration::from_millis(300)).await;
        while let Ok(i) = inbox.rx.try_recv() {
            assert!(
                !matches!(i, LinkInput::Result(_)),
                "a scheduled reboot has no result yet"
            );
        }
        // A package install holds the dpkg lock (fcntl, as dpkg): refused
        // with the reason, the reboot command does not run.
        if std::process::Command::new("python3")
            .arg("-c")
            .arg("1")
            .status()
            .is_err()
        {
            eprintln!("skipped the lock half: python3 is not available to hold an fcntl lock");
            return;
        }
        std::fs::remove_file(&ran).unwrap();
        let ready = dir.path().join("ready");
        let mut holder = std::process::Command::new("python3")
            .arg("-c")
            .arg("import fcntl,sys,time\nf=open(sys.argv[1],'w')\nfcntl.lockf(f,fcntl.LOCK_EX)\nopen(sys.argv[2],'w').close()\ntime.sleep(30)")
            .arg(&p.reboot.dpkg_lock)
            .arg(&ready)
            .spawn()
            .unwrap();
        let t0 = std::time::Instant::now();
        while !ready.exists() && t0.elapsed() < Duration::from_secs(10) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        ex.event(AgentEvent::Command(reboot(2)));
        let r = next_result(&mut inbox).await;
        holder.kill().unwrap();
        holder.wait().unwrap();
        assert_eq!(r.id, CommandId([2; 16]));
        match r.outcome {
            CommandOutcome::Refused { reason } => {
                assert!(reason.contains("package install is running"), "{reason}")
            }
            o => panic!("expected a refusal, got {o:?}"),
        }
        assert!(!ran.exists(), "the reboot command ran during an install");
    }

    /// Output of `id` until it contains `what` (or panics after 10 s),
    /// acknowledged.
    async fn output_until(
        ex: &Executor,
        inbox: &mut LinkInbox,
        id: CommandId,
        what: &str,
    ) -> String {
        let mut got = String::new();
        while !got.contains(what) {
            let o = tokio::time::timeout(Duration::from_secs(10), inbox.output.recv())
                .await
                .unwrap_or_else(|_| panic!("no {what:?} in the output: {got:?}"))
                .unwrap();
            if o.id == id {
                got.push_str(&String::from_utf8_lossy(&o.bytes));
                let up_to = o.offset + o.bytes.len() as u64;
                ex.event(AgentEvent::OutputAcked { id, up_to });
            }
        }
        got
    }

    #[tokio::test]
    async fn cancelling_a_scheduled_reboot_before_it_is_due_runs_the_cancel_command_and_ends_cancelled()
     {
        let dir = tempfile::tempdir().unwrap();
        let boot = dir.path().join("boot_id");
        std::fs::write(&boot, "boot-1\n").unwrap();
        let ran = dir.path().join("ran");
        let undone = dir.path().join("undone");
        let mut p = policy();
        p.reboot = RebootConfig {
            command: format!("echo \"$OUTPOST_REBOOT_DELAY_S\" >> {}", ran.display()),
            dpkg_lock: dir.path().join("lock-frontend"),
            boot_id_path: boot.clone(),
        };
        let ex = Executor::start(&dir.path().join("ledger"), p).unwrap();
        ex.set_reboot_cancel_command(format!("echo cancelled >> {}", undone.display()));
        let (link, mut inbox) = RemoteLink::new(64 * 1024);
        ex.session_up(link);
        let reboot = |n: u8, delay_ms: u64| Command {
            id: CommandId([n; 16]),
            spec: CommandSpec {
                kind: CommandKind::Builtin(BuiltinAction::Reboot { delay_ms }),
                ..CommandSpec::shell("x", "t")
            }
            .encode()
            .unwrap(),
        };
        let scheduled = |n: usize| {
            let ran = ran.clone();
            async move {
                let t0 = std::time::Instant::now();
                while std::fs::read_to_string(&ran)
                    .unwrap_or_default()
                    .lines()
                    .count()
                    < n
                    && t0.elapsed() < Duration::from_secs(10)
                {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                // Its scheduling command has ended (the command stays running).
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        };
        // Due in 10 minutes: the cancel stops it.
        let id = CommandId([1; 16]);
        ex.event(AgentEvent::Command(reboot(1, 600_000)));
        scheduled(1).await;
        ex.event(AgentEvent::CancelCommand { id });
        output_until(&ex, &mut inbox, id, "reboot cancelled").await;
        let r = next_result(&mut inbox).await;
        assert_eq!((r.id, r.outcome), (id, CommandOutcome::Cancelled));
        assert_eq!(std::fs::read_to_string(&undone).unwrap(), "cancelled\n");
        assert_eq!(ex.inner.ledger.reboot_boot_id(id).unwrap(), None);
        assert_eq!(ex.inner.ledger.reboot_due(id).unwrap(), None);
        // Without a delay it is due at once: too late, refused with the
        // reason, the cancel command does not run, it stays running.
        let id = CommandId([2; 16]);
        ex.event(AgentEvent::Command(reboot(2, 0)));
        scheduled(2).await;
        ex.event(AgentEvent::CancelCommand { id });
        output_until(&ex, &mut inbox, id, "too late to cancel").await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        while let Ok(i) = inbox.rx.try_recv() {
            assert!(
                !matches!(i, LinkInput::Result(ref r) if r.id == id),
                "a reboot past its due time has no result: {i:?}"
            );
        }
        assert_eq!(std::fs::read_to_string(&undone).unwrap(), "cancelled\n");
        assert!(ex.inner.ledger.reboot_boot_id(id).unwrap().is_some());
    }
}
