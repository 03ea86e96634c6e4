//! The writer thread: the single owner of `IngestWriter`, fed by every
//! connection through one bounded queue, group-committing what it drains.
//!
//! Each session owns an [`AckSlot`]; after a batch is durable the writer
//! publishes the new cumulative ack into the slots of the sessions that had
//! records in it, once per session per commit however many of its groups
//! the commit held ([`acks_per_session`]). A failed write publishes an
//! error instead and acks nothing.
//!
//! Group commits start at least `commit_window` apart unless a batch is
//! full ([`commit_wait_us`]): under a steady stream of small groups (many
//! agents each sending a frame every 100 ms) the writer gathers them for up
//! to the window instead of paying a write and an fsync per arrival, and
//! each session then gets at most one ack per window. An idle writer
//! commits the first arrival at once, so a lone record is not delayed.
//!
//! The queue is bounded by group count (`queue_groups`) and by the memory
//! the queued records hold: per session ([`SessionBudget`]) and for all
//! sessions together. [`WriterHandle::submit`] reserves both before it
//! queues a group, and the writer releases the [`Reservation`] once the
//! group is committed, so a session over its budget waits — and, waiting,
//! does not read its stream — while every other session keeps going.
//!
//! The thread is supervised ([`WriterHealth`]): if it panics, the failure
//! is recorded (log, `outpost_writer_failures_total`) before its queue
//! closes; sessions then close with that reason, new ones are refused and
//! `/healthz` answers 503 with it, instead of the appliance hanging.
//!
//! This module does not touch the network or the sessions' streams.

use std::panic::AssertUnwindSafe;
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context;
use outpost_proto::DeviceId;
use outpost_proto::messages::{Hello, MetricValue, RecordBody};
use outpost_storage::ingest::{
    FaultInjector, GroupOutcome, IncomingRecords, IngestLimits, IngestWriter,
};
use outpost_storage::model::StatusTransition;
use outpost_storage::{Store, now_ms};
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, TryAcquireError, mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::metrics::{BudgetLabel, KindLabel, Metrics};

/// What a session learns from the writer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AckState {
    /// Everything up to this sequence number is durable.
    Acked(u64),
    /// Storage failed; nothing further will be acknowledged on this session.
    Failed(String),
}

/// The writer side of a session's ack channel.
pub type AckSlot = watch::Sender<AckState>;

/// Messages to the writer.
pub enum WriterMsg {
    /// Records from one session read, with the budget they hold until
    /// they are committed.
    Records {
        group: IncomingRecords,
        ack: Arc<AckSlot>,
        reservation: Reservation,
    },
    /// A session started; answer with the device's stored high-water mark.
    Session {
        device: DeviceId,
        hello: Hello,
        reply: oneshot::Sender<anyhow::Result<u64>>,
    },
    /// Declare silent devices offline.
    Sweep,
    /// Compute rollups of closed buckets.
    RollUp,
    /// Seal closed 2-hour windows of raw samples into compressed chunks.
    Seal,
    /// A device was revoked: mark it offline and drop its cached state.
    Retire(DeviceId),
}

/// Online/offline transitions of a commit or sweep.
pub type Transitions<'a> = &'a [(DeviceId, StatusTransition)];
/// Metric values newly stored by a commit, per device.
pub type StoredSamples = Vec<(DeviceId, Vec<MetricValue>)>;

/// Where the writer sends what it made durable (the alert engine).
pub struct Sinks {
    /// Online/offline transitions.
    pub transitions: Box<dyn Fn(Transitions<'_>) + Send>,
    /// Metric values newly stored by a commit (replays excluded).
    pub samples: Box<dyn Fn(StoredSamples) + Send>,
}

impl Sinks {
    /// Sinks that discard everything (tests, tools).
    pub fn none() -> Sinks {
        Sinks {
            transitions: Box::new(|_| {}),
            samples: Box::new(|_| {}),
        }
    }
}

/// Whether the writer thread is alive. Set once, when it dies; shared by the
/// handle, the sessions, the accept path and `/healthz`.
#[derive(Debug, Default)]
pub struct WriterHealth {
    /// Why the writer stopped (set once).
    failure: OnceLock<String>,
    /// Cancelled when it stopped, to wake the sessions waiting on it.
    failed: CancellationToken,
}

impl WriterHealth {
    /// Why the writer stopped, if it did.
    pub fn failure(&self) -> Option<&str> {
        self.failure.get().map(String::as_str)
    }

    /// Resolves once the writer has failed.
    pub async fn failed(&self) {
        self.failed.cancelled().await
    }

    /// Records the failure (the first reason wins) and wakes every waiter.
    pub fn fail(&self, reason: String) {
        let _ = self.failure.set(reason);
        self.failed.cancel();
    }

    /// What a session is told when it is closed or refused for it.
    pub fn close_message(&self) -> String {
        format!(
            "the appliance cannot store records: {}; it accepts no sessions until it is restarted (see its log)",
            self.failure().unwrap_or("the writer stopped")
        )
    }
}

/// One session's byte budget: memory of its records queued for the writer
/// and not yet committed.
#[derive(Debug)]
pub struct SessionBudget {
    permits: Arc<Semaphore>,
    /// The budget; a group larger than it reserves all of it (so it still
    /// goes through, alone).
    max_bytes: usize,
}

impl SessionBudget {
    pub fn new(max_bytes: u64) -> SessionBudget {
        let max_bytes = usize::try_from(max_bytes)
            .unwrap_or(usize::MAX)
            .clamp(1, u32::MAX as usize);
        SessionBudget {
            permits: Arc::new(Semaphore::new(max_bytes)),
            max_bytes,
        }
    }

    /// Bytes of budget not reserved right now.
    pub fn available(&self) -> usize {
        self.permits.available_permits()
    }
}

/// Budget held by one queued group: released when the writer drops it,
/// after the group's commit.
#[derive(Debug)]
pub struct Reservation {
    _session: OwnedSemaphorePermit,
    _queue: OwnedSemaphorePermit,
    /// Bytes counted in `writer_queue_bytes`.
    bytes: i64,
    queue_bytes: Gauge,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.queue_bytes.dec_by(self.bytes);
    }
}

/// Handle to the writer thread.
#[derive(Clone)]
pub struct WriterHandle {
    tx: mpsc::Sender<WriterMsg>,
    metrics: Arc<Metrics>,
    /// Bytes of records all sessions may have queued.
    queue_budget: Arc<Semaphore>,
    queue_max_bytes: usize,
    health: Arc<WriterHealth>,
}

impl std::fmt::Debug for WriterHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriterHandle").finish_non_exhaustive()
    }
}

/// Takes `n` permits, counting a wait under `budget` if they are not free.
async fn reserve_permits(
    sem: &Arc<Semaphore>,
    n: usize,
    metrics: &Metrics,
    budget: &str,
) -> anyhow::Result<OwnedSemaphorePermit> {
    let n = u32::try_from(n).unwrap_or(u32::MAX);
    match sem.clone().try_acquire_many_owned(n) {
        Ok(p) => Ok(p),
        Err(TryAcquireError::NoPermits) => {
            metrics
                .ingest_budget_waits
                .get_or_create(&BudgetLabel {
                    budget: budget.to_string(),
                })
                .inc();
            sem.clone()
                .acquire_many_owned(n)
                .await
                .map_err(|_| anyhow::anyhow!("the {budget} budget was closed"))
        }
        Err(TryAcquireError::Closed) => Err(anyhow::anyhow!("the {budget} budget was closed")),
    }
}

impl WriterHandle {
    /// The writer thread's health.
    pub fn health(&self) -> &Arc<WriterHealth> {
        &self.health
    }

    fn stopped(&self) -> anyhow::Error {
        match self.health.failure() {
            Some(why) => anyhow::anyhow!("the writer has failed: {why}"),
            None => anyhow::anyhow!("the writer has stopped"),
        }
    }

    /// Queues records once `session`'s budget and the queue's budget have
    /// room for the memory they hold; waits until then (backpressure: the
    /// caller reads nothing meanwhile), and while the queue is full.
    pub async fn submit(
        &self,
        group: IncomingRecords,
        ack: Arc<AckSlot>,
        session: &SessionBudget,
    ) -> anyhow::Result<()> {
        let bytes = group.held_bytes();
        let own = reserve_permits(
            &session.permits,
            bytes.min(session.max_bytes),
            &self.metrics,
            "session",
        )
        .await?;
        let shared = reserve_permits(
            &self.queue_budget,
            bytes.min(self.queue_max_bytes),
            &self.metrics,
            "queue",
        )
        .await?;
        let bytes = i64::try_from(bytes).unwrap_or(i64::MAX);
        self.metrics.writer_queue_bytes.inc_by(bytes);
        let reservation = Reservation {
            _session: own,
            _queue: shared,
            bytes,
            queue_bytes: self.metrics.writer_queue_bytes.clone(),
        };
        self.metrics.writer_queue_depth.inc();
        let r = self
            .tx
            .send(WriterMsg::Records {
                group,
                ack,
                reservation,
            })
            .await
            .map_err(|_| self.stopped());
        if r.is_err() {
            self.metrics.writer_queue_depth.dec();
        }
        r
    }

    /// Registers a session start; returns the device's stored high-water mark.
    pub async fn session(&self, device: DeviceId, hello: Hello) -> anyhow::Result<u64> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(WriterMsg::Session {
                device,
                hello,
                reply,
            })
            .await
            .map_err(|_| self.stopped())?;
        match rx.await {
            Ok(answer) => answer,
            Err(_) => Err(self.stopped()).context("the writer dropped the session request"),
        }
    }

    /// Sends a control message without waiting for queue space.
    pub fn control(&self, msg: WriterMsg) {
        if let Err(mpsc::error::TrySendError::Full(msg)) = self.tx.try_send(msg) {
            // Control messages are periodic: if the queue is full the next
            // tick will do; only Retire must not be lost.
            if let WriterMsg::Retire(_) = msg {
                let tx = self.tx.clone();
                tokio::spawn(async move {
                    let _ = tx.send(msg).await;
                });
            }
        }
    }
}

/// Options of the writer thread.
#[derive(Debug, Clone)]
pub struct WriterOptions {
    pub max_batch_records: usize,
    pub queue_groups: usize,
    /// Memory all queued records may hold (see [`SessionBudget`] for one
    /// session's share).
    pub queue_max_bytes: u64,
    pub offline_grace: Duration,
    pub rollup_settle: Duration,
    /// Bounds on what devices send (series per device, future timestamps).
    pub limits: IngestLimits,
    /// Test seam: failure injection into the writer's storage steps
    /// (`None` in production).
    pub faults: Option<Arc<dyn FaultInjector>>,
    /// Least time between the starts of two group commits unless a batch is
    /// full (see [`commit_wait_us`]); zero commits whatever is queued as
    /// soon as the previous commit ends.
    pub commit_window: Duration,
    /// Niceness the writer thread sets for itself (`None`: the process's).
    pub nice: Option<i32>,
    /// New handshakes per second the appliance admits (`[admission]
    /// handshake_rate`): how fast the devices online before a restart can
    /// come back, hence how long they get before any is declared offline
    /// (see [`restart_grace`]; `None`: no more than the usual deadline).
    pub handshake_rate: Option<u32>,
    /// The agents' longest back-off (`[admission] agent_reconnect_max`),
    /// the other part of [`restart_grace`].
    pub agent_reconnect_max: Duration,
}

impl WriterOptions {
    /// Options for tests and tools: small bounds, no faults.
    pub fn for_tests() -> WriterOptions {
        WriterOptions {
            max_batch_records: 1024,
            queue_groups: 64,
            queue_max_bytes: 64 * 1024 * 1024,
            offline_grace: Duration::from_secs(10),
            rollup_settle: Duration::from_secs(120),
            limits: IngestLimits::DEFAULT,
            faults: None,
            commit_window: Duration::ZERO,
            nice: None,
            handshake_rate: None,
            agent_reconnect_max: outpost_proto::backoff::AGENT_RECONNECT_MAX,
        }
    }
}

/// How long, after a start, the devices that were online before it get to
/// reconnect before the offline sweep's usual deadline starts to count:
/// `online` devices readmitted at `handshake_rate` a second, plus the
/// longest an agent refused a handshake sleeps before trying again
/// (`reconnect_max`).
pub fn restart_grace(online: u64, handshake_rate: u32, reconnect_max: Duration) -> Duration {
    Duration::from_secs_f64(online as f64 / f64::from(handshake_rate.max(1))) + reconnect_max
}

/// How many more microseconds the writer waits for records before
/// committing a batch of `records` at `now_us`, when the previous commit
/// started at `last_commit_us` (`None`: none yet): commits start at least
/// `window_us` apart, unless the batch already holds `max_records` (or
/// holds no records: control messages do not wait). 0: commit now.
pub fn commit_wait_us(
    window_us: u64,
    max_records: usize,
    last_commit_us: Option<u64>,
    records: usize,
    now_us: u64,
) -> u64 {
    if records == 0 || records >= max_records {
        return 0;
    }
    match last_commit_us {
        Some(t) => t.saturating_add(window_us).saturating_sub(now_us),
        None => 0,
    }
}

/// The ack to publish to each session after a commit: one per session (the
/// highest of its groups' acks), in the order the sessions first appear.
/// `slots[i]` is the session of `acks[i]`.
pub fn acks_per_session(slots: &[Arc<AckSlot>], acks: &[u64]) -> Vec<(Arc<AckSlot>, u64)> {
    let mut out: Vec<(Arc<AckSlot>, u64)> = Vec::with_capacity(slots.len());
    let mut index: std::collections::HashMap<*const AckSlot, usize> =
        std::collections::HashMap::with_capacity(slots.len());
    for (slot, ack) in slots.iter().zip(acks) {
        match index.entry(Arc::as_ptr(slot)) {
            std::collections::hash_map::Entry::Occupied(e) => {
                let n = &mut out[*e.get()].1;
                *n = (*n).max(*ack);
            }
            std::collections::hash_map::Entry::Vacant(e) => {
                e.insert(out.len());
                out.push((slot.clone(), *ack));
            }
        }
    }
    out
}

/// Starts the writer thread. It exits when every handle is dropped, after
/// committing what was queued, or when it fails (see [`WriterHealth`]).
pub fn spawn(
    store: Store,
    opts: WriterOptions,
    metrics: Arc<Metrics>,
    sinks: Sinks,
) -> anyhow::Result<(WriterHandle, JoinHandle<()>)> {
    let (tx, rx) = mpsc::channel(opts.queue_groups);
    let mut writer = IngestWriter::with_limits(store, now_ms(), opts.limits)
        .context("loading device state for the writer")?;
    if let Some(f) = &opts.faults {
        writer.set_fault_injector(f.clone());
    }
    let online = writer.online_count();
    if let Some(rate) = opts.handshake_rate
        && online > 0
    {
        let grace = restart_grace(online, rate, opts.agent_reconnect_max);
        writer.set_restart_grace(grace.as_millis() as u64);
        metrics
            .restart_grace_seconds
            .set(i64::try_from(grace.as_secs()).unwrap_or(i64::MAX));
        info!(
            online,
            handshake_rate = rate,
            grace_secs = grace.as_secs(),
            "devices online before this start may take this long to be readmitted; \
             the silence of one not heard from since counts from then (two heartbeat \
             intervals and offline_grace later it is declared offline)"
        );
    }
    let queue_max_bytes = usize::try_from(opts.queue_max_bytes)
        .unwrap_or(usize::MAX)
        .clamp(1, u32::MAX as usize);
    let health = Arc::new(WriterHealth::default());
    let (m, h) = (metrics.clone(), health.clone());
    let join = std::thread::Builder::new()
        .name("outpost-writer".into())
        .spawn(move || {
            if let Some(nice) = opts.nice {
                set_thread_nice(nice, &m);
            }
            supervise(writer, rx, opts, m, sinks, h)
        })
        .context("spawning the writer thread")?;
    Ok((
        WriterHandle {
            tx,
            metrics,
            queue_budget: Arc::new(Semaphore::new(queue_max_bytes)),
            queue_max_bytes,
            health,
        },
        join,
    ))
}

/// Sets the calling thread's niceness (Linux niceness is per thread) and
/// publishes what it runs at in `outpost_writer_nice`. A refusal (no
/// CAP_SYS_NICE, RLIMIT_NICE too low) leaves the priority as it was.
fn set_thread_nice(nice: i32, metrics: &Metrics) {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: plain system calls on the calling thread's own id.
        let tid = unsafe { libc::gettid() } as libc::id_t;
        let set = unsafe { libc::setpriority(libc::PRIO_PROCESS, tid, nice) };
        let err = std::io::Error::last_os_error();
        // getpriority returns the niceness itself (-1 is also a value).
        let now = unsafe { libc::getpriority(libc::PRIO_PROCESS, tid) };
        metrics.writer_nice.set(i64::from(now));
        if set == 0 {
            info!(nice = now, "writer thread priority set");
        } else {
            warn!(
                asked = nice,
                runs_at = now,
                error = %err,
                "the writer thread keeps the process's priority: lowering niceness needs \
                 CAP_SYS_NICE or RLIMIT_NICE (systemd: LimitNICE={nice}); acks wait longer \
                 when the cores are busy"
            );
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (nice, metrics);
    }
}

/// Runs the writer; if it panics, records why before the queue closes.
fn supervise(
    writer: IngestWriter,
    mut rx: mpsc::Receiver<WriterMsg>,
    opts: WriterOptions,
    metrics: Arc<Metrics>,
    sinks: Sinks,
    health: Arc<WriterHealth>,
) {
    let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| {
        run(writer, &mut rx, &opts, &metrics, &sinks)
    }));
    if let Err(panic) = outcome {
        let what = panic_message(panic.as_ref());
        metrics.writer_failures.inc();
        error!(
            panic = %what,
            "the writer thread failed: open sessions are closed and new ones refused until the appliance is restarted"
        );
        health.fail(format!("the writer thread panicked: {what}"));
        // Only now does the queue close: whoever finds it closed can learn why.
        rx.close();
        while let Ok(msg) = rx.try_recv() {
            if let WriterMsg::Records { .. } = msg {
                metrics.writer_queue_depth.dec();
            }
        }
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic".to_string()
    }
}

fn run(
    mut writer: IngestWriter,
    rx: &mut mpsc::Receiver<WriterMsg>,
    opts: &WriterOptions,
    metrics: &Metrics,
    sinks: &Sinks,
) {
    let mut groups: Vec<IncomingRecords> = Vec::new();
    let mut slots: Vec<Arc<AckSlot>> = Vec::new();
    let mut reservations: Vec<Reservation> = Vec::new();
    let mut controls: Vec<WriterMsg> = Vec::new();
    publish_counts(&writer, metrics);
    let window_us = opts.commit_window.as_micros() as u64;
    let epoch = Instant::now();
    let clock_us = || epoch.elapsed().as_micros() as u64;
    let mut last_commit_us: Option<u64> = None;
    let mut upkeep = Upkeep::default();
    loop {
        // A roll-up or sealing pass in progress runs in slices while the
        // queue is empty, and one slice after each commit otherwise.
        let first = if upkeep.active() {
            match rx.try_recv() {
                Ok(msg) => msg,
                Err(mpsc::error::TryRecvError::Empty) => {
                    upkeep.slice(&mut writer, opts, metrics);
                    continue;
                }
                Err(mpsc::error::TryRecvError::Disconnected) => break,
            }
        } else {
            match rx.blocking_recv() {
                Some(msg) => msg,
                None => break,
            }
        };
        // Drain what is queued, up to the batch bound: the batch grows by
        // itself while the previous write (and its fsync) was in progress,
        // and for the rest of the commit window.
        let mut records = 0usize;
        let mut next = Some(first);
        loop {
            while let Some(msg) = next.take() {
                match msg {
                    WriterMsg::Records {
                        group,
                        ack,
                        reservation,
                    } => {
                        metrics.writer_queue_depth.dec();
                        records += group.records.len();
                        groups.push(group);
                        slots.push(ack);
                        reservations.push(reservation);
                    }
                    other => controls.push(other),
                }
                if records >= opts.max_batch_records {
                    break;
                }
                next = rx.try_recv().ok();
            }
            let wait = commit_wait_us(
                window_us,
                opts.max_batch_records,
                last_commit_us,
                records,
                clock_us(),
            );
            if wait == 0 {
                break;
            }
            std::thread::sleep(Duration::from_micros(wait));
            next = rx.try_recv().ok();
        }
        last_commit_us = Some(clock_us());
        if !groups.is_empty() {
            commit(&mut writer, &mut groups, &mut slots, metrics, sinks);
        }
        // The committed groups' memory is free: their sessions may read on.
        reservations.clear();
        for msg in controls.drain(..) {
            control(&mut writer, msg, opts, metrics, sinks, &mut upkeep);
        }
        if upkeep.active() {
            upkeep.slice(&mut writer, opts, metrics);
        }
    }
    info!("writer stopped: queue closed and drained");
}

fn commit(
    writer: &mut IngestWriter,
    groups: &mut Vec<IncomingRecords>,
    slots: &mut Vec<Arc<AckSlot>>,
    metrics: &Metrics,
    sinks: &Sinks,
) {
    let started = Instant::now();
    let result = writer.apply(groups, now_ms());
    let mut outcomes = Vec::new();
    metrics
        .write_latency_seconds
        .observe(started.elapsed().as_secs_f64());
    match result {
        Ok(out) => {
            metrics.write_batch_records.observe(out.records as f64);
            metrics.records_stored.inc_by(out.stored);
            metrics.samples_stored.inc_by(out.samples);
            metrics.duplicates_dropped.inc_by(out.duplicates);
            metrics.values_rejected.inc_by(out.rejected_values);
            metrics.reject_n("series_cap", out.series_rejected);
            metrics.reject_n("bad_timestamp", out.bad_timestamps);
            outcomes = out.groups.clone();
            let acks: Vec<u64> = out.groups.iter().map(|g| g.ack_up_to).collect();
            for (slot, up_to) in acks_per_session(slots, &acks) {
                slot.send_if_modified(|cur| match cur {
                    AckState::Acked(n) if *n < up_to => {
                        *n = up_to;
                        true
                    }
                    _ => false,
                });
            }
            if !out.transitions.is_empty() {
                note_transitions(&out.transitions, metrics);
                (sinks.transitions)(&out.transitions);
                publish_counts(writer, metrics);
            }
        }
        Err(e) => {
            metrics.write_errors.inc();
            error!(error = %e, groups = groups.len(), "group commit failed; nothing acknowledged");
            let msg = format!("storage write failed: {e}");
            for slot in slots.iter() {
                slot.send_replace(AckState::Failed(msg.clone()));
            }
        }
    }
    slots.clear();
    forward_samples(groups, &outcomes, sinks);
}

/// Hands the metric values a commit stored (not replays) to the sink.
fn forward_samples(groups: &mut Vec<IncomingRecords>, outcomes: &[GroupOutcome], sinks: &Sinks) {
    let mut batch = Vec::new();
    for (g, o) in groups.drain(..).zip(outcomes.iter()) {
        let mut hwm = o.prev_seq;
        for r in g.records {
            if r.seq <= hwm {
                continue;
            }
            hwm = r.seq;
            if let RecordBody::Metrics(m) = r.body {
                batch.push((g.device, m.values));
            }
        }
    }
    // A failed commit left no outcomes: drop what it held.
    groups.clear();
    if !batch.is_empty() {
        (sinks.samples)(batch);
    }
}

fn control(
    writer: &mut IngestWriter,
    msg: WriterMsg,
    opts: &WriterOptions,
    metrics: &Metrics,
    sinks: &Sinks,
    upkeep: &mut Upkeep,
) {
    // Timed as writer tasks; passes are timed by their slices instead.
    let kind = match &msg {
        WriterMsg::Session { .. } => Some("session"),
        WriterMsg::Sweep => Some("sweep"),
        WriterMsg::Retire(_) => Some("retire"),
        WriterMsg::Records { .. } | WriterMsg::RollUp | WriterMsg::Seal => None,
    };
    let started = Instant::now();
    match msg {
        WriterMsg::Records { .. } => {}
        WriterMsg::Session {
            device,
            hello,
            reply,
        } => {
            let r = writer.session_started(device, &hello, now_ms());
            let answer = match r {
                Ok((last_seq, t)) => {
                    if let Some(t) = t {
                        let ts = [(device, t)];
                        note_transitions(&ts, metrics);
                        (sinks.transitions)(&ts);
                        publish_counts(writer, metrics);
                    }
                    Ok(last_seq)
                }
                Err(e) => {
                    metrics.write_errors.inc();
                    Err(anyhow::anyhow!("recording the session start: {e}"))
                }
            };
            let _ = reply.send(answer);
        }
        WriterMsg::Sweep => {
            match writer.sweep_offline(now_ms(), opts.offline_grace.as_millis() as u64) {
                Ok(ts) if !ts.is_empty() => {
                    for (d, t) in &ts {
                        info!(device = %d, last_seen_ms = t.last_seen_ms, "device offline");
                    }
                    note_transitions(&ts, metrics);
                    (sinks.transitions)(&ts);
                    publish_counts(writer, metrics);
                }
                Ok(_) => {}
                Err(e) => {
                    metrics.write_errors.inc();
                    warn!(error = %e, "offline sweep failed");
                }
            }
        }
        // Passes run in slices between commits (see [`Upkeep`]).
        // A pass in progress goes on; markers behind it wait for the next.
        WriterMsg::RollUp => {
            upkeep.rollup.get_or_insert_with(Vec::new);
        }
        WriterMsg::Seal => {
            upkeep.seal.get_or_insert_with(Vec::new);
        }
        WriterMsg::Retire(d) => match writer.retire(d, now_ms()) {
            Ok(Some(t)) => {
                let ts = [(d, t)];
                note_transitions(&ts, metrics);
                (sinks.transitions)(&ts);
                publish_counts(writer, metrics);
            }
            Ok(None) => {}
            Err(e) => {
                metrics.write_errors.inc();
                warn!(error = %e, device = %d, "retiring a revoked device failed");
            }
        },
    }
    if let Some(kind) = kind {
        observe_task(metrics, kind, started.elapsed());
    }
}

fn observe_task(metrics: &Metrics, kind: &str, took: Duration) {
    metrics
        .writer_task_seconds
        .get_or_create(&KindLabel {
            kind: kind.to_string(),
        })
        .observe(took.as_secs_f64());
}

/// What a slice of upkeep should take: the writer commits nothing meanwhile,
/// so this bounds what a pass adds to an ack.
const UPKEEP_SLICE: Duration = Duration::from_millis(2);
/// Markers per slice, at least and at most (see [`next_slice_items`]).
const SLICE_ITEMS_MIN: usize = 1;
const SLICE_ITEMS_MAX: usize = 4096;

/// The roll-up and sealing passes, run in slices of about [`UPKEEP_SLICE`]
/// between group commits. At 50,000 devices a pass has 50,000 buckets to
/// roll up (each one read per series); run whole, as it once was, it held
/// every ack for seconds every few minutes.
#[derive(Debug)]
struct Upkeep {
    /// The passes in progress and where each resumes (`Some(empty)`: from
    /// the first marker).
    rollup: Option<Vec<u8>>,
    seal: Option<Vec<u8>>,
    /// Markers per slice, for each pass, adapted to the time slices take.
    rollup_items: usize,
    seal_items: usize,
}

impl Default for Upkeep {
    fn default() -> Upkeep {
        Upkeep {
            rollup: None,
            seal: None,
            rollup_items: 16,
            seal_items: 16,
        }
    }
}

impl Upkeep {
    fn active(&self) -> bool {
        self.rollup.is_some() || self.seal.is_some()
    }

    /// Runs one slice of the roll-up pass if one is in progress, else of the
    /// sealing pass. A failed slice ends its pass (the markers stay; the
    /// next tick tries again).
    fn slice(&mut self, writer: &mut IngestWriter, opts: &WriterOptions, metrics: &Metrics) {
        let settle = opts.rollup_settle.as_millis() as u64;
        let started = Instant::now();
        if let Some(from) = self.rollup.take() {
            match writer.roll_up_slice(&from, now_ms(), settle, self.rollup_items) {
                Ok(pass) => {
                    if !pass.rolled.is_empty() {
                        debug!(rollups = pass.rolled.len(), "rollups computed");
                    }
                    metrics.rollups_computed.inc_by(pass.rolled.len() as u64);
                    self.rollup = pass.resume;
                }
                Err(e) => {
                    metrics.write_errors.inc();
                    warn!(error = %e, "rollup computation failed");
                }
            }
            let took = started.elapsed();
            self.rollup_items = next_slice_items(self.rollup_items, took, UPKEEP_SLICE);
            observe_task(metrics, "rollup", took);
        } else if let Some(from) = self.seal.take() {
            match writer.seal_chunks_slice(&from, now_ms(), settle, self.seal_items) {
                Ok((n, resume)) => {
                    metrics.chunks_sealed.inc_by(n as u64);
                    self.seal = resume;
                }
                Err(e) => {
                    metrics.write_errors.inc();
                    warn!(error = %e, "sealing sample chunks failed");
                }
            }
            let took = started.elapsed();
            self.seal_items = next_slice_items(self.seal_items, took, UPKEEP_SLICE);
            observe_task(metrics, "seal", took);
        }
    }
}

/// Markers for the next slice, given the last slice's size and time:
/// doubled while slices take under half the target, halved while they take
/// over it, within [`SLICE_ITEMS_MIN`]..=[`SLICE_ITEMS_MAX`].
fn next_slice_items(items: usize, took: Duration, target: Duration) -> usize {
    let next = if took > target {
        items / 2
    } else if took < target / 2 {
        items.saturating_mul(2)
    } else {
        items
    };
    next.clamp(SLICE_ITEMS_MIN, SLICE_ITEMS_MAX)
}

fn note_transitions(ts: &[(DeviceId, StatusTransition)], metrics: &Metrics) {
    for (_, t) in ts {
        metrics
            .status_transitions
            .get_or_create(&KindLabel {
                kind: t.to.as_str().to_string(),
            })
            .inc();
    }
}

fn publish_counts(writer: &IngestWriter, metrics: &Metrics) {
    metrics.devices_online.set(writer.online_count() as i64);
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::pin::Pin;
    use std::sync::{Condvar, Mutex};
    use std::task::{Context as TaskContext, Poll, Waker};

    use outpost_proto::messages::{Heartbeat, MetricValue, MetricsSample, Record};
    use outpost_storage::ingest::FaultPoint;
    use outpost_storage::{Durability, StoreOptions};

    use super::*;

    const WAIT: Duration = Duration::from_secs(20);

    fn open() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let opts = StoreOptions {
            durability: Durability::Buffered,
            ..StoreOptions::default()
        };
        let s = Store::open(dir.path(), &opts, outpost_storage::TABLES).unwrap();
        (dir, s)
    }

    fn heartbeats(device: u64, first_seq: u64, n: u64, ts_ms: u64) -> IncomingRecords {
        IncomingRecords {
            device: DeviceId(device),
            records: (first_seq..first_seq + n)
                .map(|seq| Record {
                    seq,
                    ts_ms,
                    body: RecordBody::Heartbeat(Heartbeat {
                        uptime_s: seq,
                        buffered_records: 0,
                        dropped_records: 0,
                    }),
                })
                .collect(),
        }
    }

    fn slot() -> (Arc<AckSlot>, watch::Receiver<AckState>) {
        let (tx, rx) = watch::channel(AckState::Acked(0));
        (Arc::new(tx), rx)
    }

    async fn acked(rx: &mut watch::Receiver<AckState>, up_to: u64) {
        tokio::time::timeout(WAIT, async {
            loop {
                match &*rx.borrow_and_update() {
                    AckState::Acked(n) if *n >= up_to => return,
                    AckState::Failed(e) => panic!("write failed: {e}"),
                    AckState::Acked(_) => {}
                }
                rx.changed().await.expect("writer alive");
            }
        })
        .await
        .unwrap_or_else(|_| panic!("no ack up to {up_to}"));
    }

    fn poll_once<F: Future>(f: Pin<&mut F>) -> Poll<F::Output> {
        f.poll(&mut TaskContext::from_waker(Waker::noop()))
    }

    fn budget_waits(m: &Metrics, budget: &str) -> u64 {
        m.ingest_budget_waits
            .get_or_create(&BudgetLabel {
                budget: budget.into(),
            })
            .get()
    }

    /// Holds every write until opened.
    #[derive(Debug, Default)]
    struct Gate {
        open: Mutex<bool>,
        cv: Condvar,
    }

    impl Gate {
        fn open(&self) {
            *self.open.lock().unwrap() = true;
            self.cv.notify_all();
        }
    }

    impl FaultInjector for Gate {
        fn check(&self, point: FaultPoint) -> outpost_storage::error::Result<()> {
            if point == FaultPoint::Write {
                let mut open = self.open.lock().unwrap();
                while !*open {
                    open = self.cv.wait(open).unwrap();
                }
            }
            Ok(())
        }
    }

    #[derive(Debug)]
    struct PanicOnWrite;

    impl FaultInjector for PanicOnWrite {
        fn check(&self, point: FaultPoint) -> outpost_storage::error::Result<()> {
            if point == FaultPoint::Write {
                panic!("injected writer panic");
            }
            Ok(())
        }
    }

    #[tokio::test]
    async fn a_session_over_its_byte_budget_waits_while_other_sessions_go_on() {
        let (_d, store) = open();
        let gate = Arc::new(Gate::default());
        let metrics = Arc::new(Metrics::new());
        let opts = WriterOptions {
            faults: Some(gate.clone()),
            ..WriterOptions::for_tests()
        };
        let (writer, thread) = spawn(store, opts, metrics.clone(), Sinks::none()).unwrap();
        let a1 = heartbeats(1, 1, 100, 1_000);
        let group_bytes = a1.held_bytes();
        let budget_a = SessionBudget::new((group_bytes + group_bytes / 2) as u64);
        {
            let (ack_a, mut rx_a) = slot();
            // The writer takes A's first group and is held writing it.
            writer.submit(a1, ack_a.clone(), &budget_a).await.unwrap();
            assert_eq!(metrics.writer_queue_bytes.get(), group_bytes as i64);
            // A's second group does not fit A's budget: A waits (and, in a
            // session, reads nothing meanwhile) instead of the queue growing.
            let a2 = writer.submit(heartbeats(1, 101, 100, 1_000), ack_a.clone(), &budget_a);
            tokio::pin!(a2);
            assert!(poll_once(a2.as_mut()).is_pending(), "A is over its budget");
            assert_eq!(budget_waits(&metrics, "session"), 1);
            assert_eq!(metrics.writer_queue_bytes.get(), group_bytes as i64);
            // B is not held back by A.
            let budget_b = SessionBudget::new((group_bytes + group_bytes / 2) as u64);
            let (ack_b, mut rx_b) = slot();
            let b = writer.submit(heartbeats(2, 1, 10, 1_000), ack_b, &budget_b);
            tokio::pin!(b);
            assert!(matches!(poll_once(b.as_mut()), Poll::Ready(Ok(()))));
            assert_eq!(budget_waits(&metrics, "queue"), 0);
            // The writer catches up: A's first group is committed, its budget
            // released, its second group queued; everything is acknowledged.
            gate.open();
            tokio::time::timeout(WAIT, a2).await.unwrap().unwrap();
            acked(&mut rx_a, 200).await;
            acked(&mut rx_b, 10).await;
        }
        drop(writer);
        thread.join().unwrap();
        assert_eq!(metrics.writer_queue_bytes.get(), 0, "every budget released");
        assert_eq!(budget_a.available(), group_bytes + group_bytes / 2);
    }

    #[test]
    fn an_idle_writer_commits_at_once_and_a_busy_one_waits_out_the_commit_window() {
        let (w, max) = (1_000, 100);
        // Nothing committed yet: the first arrival goes at once.
        assert_eq!(commit_wait_us(w, max, None, 1, 5_000), 0);
        // Idle for longer than the window: at once (a lone record is not
        // delayed).
        assert_eq!(commit_wait_us(w, max, Some(1_000), 1, 2_000), 0);
        assert_eq!(commit_wait_us(w, max, Some(1_000), 1, 9_000), 0);
        // The previous commit started 300 µs ago: wait the other 700 µs.
        assert_eq!(commit_wait_us(w, max, Some(1_000), 10, 1_300), 700);
        // A full batch, or one holding only control messages, never waits.
        assert_eq!(commit_wait_us(w, max, Some(1_000), max, 1_300), 0);
        assert_eq!(commit_wait_us(w, max, Some(1_000), 0, 1_300), 0);
        // No window: never waits.
        assert_eq!(commit_wait_us(0, max, Some(1_000), 10, 1_000), 0);
        // Saturating, whatever the clock says.
        assert_eq!(
            commit_wait_us(u64::MAX, max, Some(u64::MAX), 1, 0),
            u64::MAX
        );
    }

    #[test]
    fn a_session_with_several_groups_in_a_commit_gets_one_ack_with_the_highest() {
        let (a, _ra) = slot();
        let (b, _rb) = slot();
        let slots = [a.clone(), b.clone(), a.clone(), a.clone()];
        let acks = acks_per_session(&slots, &[64, 30, 128, 192]);
        assert_eq!(acks.len(), 2);
        assert!(Arc::ptr_eq(&acks[0].0, &a) && acks[0].1 == 192);
        assert!(Arc::ptr_eq(&acks[1].0, &b) && acks[1].1 == 30);
    }

    fn commits(m: &Metrics) -> u64 {
        let text = m.encode();
        text.lines()
            .find_map(|l| l.strip_prefix("outpost_write_batch_records_count "))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or_else(|| panic!("no batch count in {text}"))
    }

    #[tokio::test]
    async fn groups_arriving_within_the_commit_window_share_one_commit_and_are_acked_once_durable()
    {
        let (_d, store) = open();
        let metrics = Arc::new(Metrics::new());
        let window = Duration::from_millis(400);
        let opts = WriterOptions {
            commit_window: window,
            ..WriterOptions::for_tests()
        };
        let (writer, thread) = spawn(store.clone(), opts, metrics.clone(), Sinks::none()).unwrap();
        let budget = SessionBudget::new(1 << 20);
        let (a, mut ra) = slot();
        let (b, mut rb) = slot();
        // An idle writer commits the first arrival at once.
        let t0 = Instant::now();
        writer
            .submit(heartbeats(1, 1, 5, 1_000), a.clone(), &budget)
            .await
            .unwrap();
        acked(&mut ra, 5).await;
        assert_eq!(commits(&metrics), 1);
        // Three more groups right after: they wait out the window and go
        // in one commit, each session acked once it is durable.
        writer
            .submit(heartbeats(1, 6, 5, 1_000), a.clone(), &budget)
            .await
            .unwrap();
        writer
            .submit(heartbeats(2, 1, 5, 1_000), b.clone(), &budget)
            .await
            .unwrap();
        writer
            .submit(heartbeats(1, 11, 5, 1_000), a.clone(), &budget)
            .await
            .unwrap();
        acked(&mut ra, 15).await;
        acked(&mut rb, 5).await;
        assert!(
            t0.elapsed() >= window,
            "the second commit waited out the window"
        );
        assert_eq!(commits(&metrics), 2);
        drop(writer);
        thread.join().unwrap();
        // What was acked is stored.
        let mut w = IngestWriter::new(store, now_ms()).unwrap();
        assert_eq!(w.last_seq(DeviceId(1)).unwrap(), 15);
        assert_eq!(w.last_seq(DeviceId(2)).unwrap(), 5);
    }

    fn task_slices(m: &Metrics, kind: &str) -> u64 {
        let text = m.encode();
        let prefix = format!("outpost_writer_task_seconds_count{{kind=\"{kind}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(prefix.as_str()))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0)
    }

    #[tokio::test]
    async fn a_roll_up_pass_runs_in_slices_and_a_message_queued_behind_it_waits_for_none() {
        let (_d, store) = open();
        // 300 devices, each with a closed bucket of two series to roll up.
        let devices = 300u64;
        {
            let mut w = IngestWriter::new(store.clone(), now_ms()).unwrap();
            let groups: Vec<IncomingRecords> = (1..=devices)
                .map(|d| IncomingRecords {
                    device: DeviceId(d),
                    records: vec![Record {
                        seq: 1,
                        ts_ms: 1_000,
                        body: RecordBody::Metrics(MetricsSample {
                            values: ["cpu", "mem"]
                                .iter()
                                .map(|n| MetricValue {
                                    name: (*n).into(),
                                    label: String::new(),
                                    value: d as f64,
                                })
                                .collect(),
                        }),
                    }],
                })
                .collect();
            w.apply(&groups, now_ms()).unwrap();
        }
        let gate = Arc::new(Gate::default());
        let metrics = Arc::new(Metrics::new());
        // What the roll-up counter said when the writer handled the session
        // start (on the writer thread, between whatever it ran before).
        let seen: Arc<Mutex<Vec<u64>>> = Arc::default();
        let sinks = Sinks {
            transitions: Box::new({
                let (m, seen) = (metrics.clone(), seen.clone());
                move |_| seen.lock().unwrap().push(m.rollups_computed.get())
            }),
            samples: Box::new(|_| {}),
        };
        let opts = WriterOptions {
            faults: Some(gate.clone()),
            ..WriterOptions::for_tests()
        };
        let (writer, thread) = spawn(store, opts, metrics.clone(), sinks).unwrap();
        let budget = SessionBudget::new(1 << 20);
        let (ack, mut rx) = slot();
        // The writer is held writing a group; meanwhile a roll-up tick and
        // a session start queue up behind it.
        writer
            .submit(heartbeats(devices + 1, 1, 1, now_ms()), ack, &budget)
            .await
            .unwrap();
        writer.control(WriterMsg::RollUp);
        let hello = Hello {
            protocol_version: 1,
            agent_version: "t".into(),
            heartbeat_interval_ms: 1_000,
            metrics_interval_ms: 1_000,
        };
        {
            let session = writer.session(DeviceId(devices + 2), hello);
            tokio::pin!(session);
            assert!(poll_once(session.as_mut()).is_pending(), "queued");
            gate.open();
            acked(&mut rx, 1).await;
            tokio::time::timeout(WAIT, session).await.unwrap().unwrap();
        }
        // The held group's device came online, then the session's: the
        // session start did not wait for the pass, no slice ran before it (a
        // whole pass used to run first).
        assert_eq!(*seen.lock().unwrap(), vec![0, 0]);
        // The pass then ran to the end, in slices.
        let want = 2 * devices;
        tokio::time::timeout(WAIT, async {
            while metrics.rollups_computed.get() < want {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{} of {want} rollups", metrics.rollups_computed.get()));
        assert_eq!(metrics.rollups_computed.get(), want);
        assert!(task_slices(&metrics, "rollup") >= 3, "{}", metrics.encode());
        assert_eq!(task_slices(&metrics, "session"), 1);
        drop(writer);
        thread.join().unwrap();
    }

    /// 50,000 agents at the default 200 handshakes a second take 250 s to
    /// come back, and a refused agent may sleep its `reconnect_max` more
    /// (30 s by default).
    #[test]
    fn the_restart_grace_is_the_fleets_readmission_time_plus_an_agents_longest_back_off() {
        let default = outpost_proto::backoff::AGENT_RECONNECT_MAX;
        assert_eq!(
            restart_grace(50_000, 200, default),
            Duration::from_secs(280)
        );
        assert_eq!(restart_grace(1_000, 200, default), Duration::from_secs(35));
        assert_eq!(restart_grace(0, 200, default), Duration::from_secs(30));
        assert_eq!(
            restart_grace(10, 0, default),
            Duration::from_secs(40),
            "a zero rate (refused by the configuration) counts as one a second"
        );
        assert_eq!(
            restart_grace(50_000, 200, Duration::from_secs(300)),
            Duration::from_secs(550),
            "agents configured to back off up to 5 minutes get those 5 minutes"
        );
    }

    #[test]
    fn slices_grow_while_fast_and_shrink_while_slow_within_bounds() {
        let t = Duration::from_millis(2);
        assert_eq!(next_slice_items(16, Duration::from_micros(100), t), 32);
        assert_eq!(next_slice_items(16, Duration::from_micros(1_500), t), 16);
        assert_eq!(next_slice_items(16, Duration::from_millis(30), t), 8);
        assert_eq!(
            next_slice_items(1, Duration::from_secs(1), t),
            SLICE_ITEMS_MIN
        );
        assert_eq!(
            next_slice_items(SLICE_ITEMS_MAX, Duration::ZERO, t),
            SLICE_ITEMS_MAX
        );
        assert_eq!(
            next_slice_items(usize::MAX, Duration::ZERO, t),
            SLICE_ITEMS_MAX
        );
    }

    #[tokio::test]
    async fn a_group_larger_than_the_session_budget_still_goes_through_alone() {
        let (_d, store) = open();
        let gate = Arc::new(Gate::default());
        let metrics = Arc::new(Metrics::new());
        let opts = WriterOptions {
            faults: Some(gate.clone()),
            queue_max_bytes: 64 * 1024,
            ..WriterOptions::for_tests()
        };
        let (writer, thread) = spawn(store, opts, metrics.clone(), Sinks::none()).unwrap();
        let big = heartbeats(1, 1, 5_000, 1_000);
        assert!(big.held_bytes() > 64 * 1024);
        let budget = SessionBudget::new(64 * 1024);
        let (ack, mut rx) = slot();
        {
            writer.submit(big, ack.clone(), &budget).await.unwrap();
            let next = writer.submit(heartbeats(1, 5_001, 1, 1_000), ack.clone(), &budget);
            tokio::pin!(next);
            assert!(poll_once(next.as_mut()).is_pending());
            gate.open();
            tokio::time::timeout(WAIT, next).await.unwrap().unwrap();
            acked(&mut rx, 5_001).await;
        }
        drop(writer);
        thread.join().unwrap();
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn the_writer_thread_runs_at_the_niceness_asked_for_and_shows_it() {
        let (_d, store) = open();
        let metrics = Arc::new(Metrics::new());
        // Raising niceness is always allowed; lowering it needs a privilege
        // the test may not have (the refusal leaves it and warns).
        let opts = WriterOptions {
            nice: Some(7),
            ..WriterOptions::for_tests()
        };
        let (writer, thread) = spawn(store, opts, metrics.clone(), Sinks::none()).unwrap();
        let budget = SessionBudget::new(1 << 20);
        let (ack, mut rx) = slot();
        writer
            .submit(heartbeats(1, 1, 5, 1_000), ack, &budget)
            .await
            .unwrap();
        acked(&mut rx, 5).await;
        assert_eq!(metrics.writer_nice.get(), 7);
        assert!(metrics.encode().contains("outpost_writer_nice 7"));
        // The kernel's view: a thread named outpost-writer at niceness 7
        // (field 19 of /proc/self/task/TID/stat, after the command name).
        let at_7 = std::fs::read_dir("/proc/self/task")
            .unwrap()
            .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("stat")).ok())
            .filter(|stat| stat.contains("(outpost-writer)"))
            .any(|stat| {
                let after_comm = stat.rsplit_once(") ").map(|(_, r)| r).unwrap_or("");
                after_comm.split(' ').nth(16) == Some("7")
            });
        assert!(at_7, "no writer thread at niceness 7");
        drop(writer);
        thread.join().unwrap();
    }

    #[tokio::test]
    async fn a_writer_panic_is_counted_and_every_caller_learns_why() {
        let (_d, store) = open();
        let metrics = Arc::new(Metrics::new());
        let opts = WriterOptions {
            faults: Some(Arc::new(PanicOnWrite)),
            ..WriterOptions::for_tests()
        };
        let (writer, thread) = spawn(store, opts, metrics.clone(), Sinks::none()).unwrap();
        assert!(writer.health().failure().is_none());
        let budget = SessionBudget::new(1 << 20);
        let (ack, _rx) = slot();
        writer
            .submit(heartbeats(1, 1, 5, 1_000), ack.clone(), &budget)
            .await
            .unwrap();
        tokio::time::timeout(WAIT, writer.health().failed())
            .await
            .expect("the failure is reported");
        let why = writer.health().failure().unwrap().to_string();
        assert!(why.contains("injected writer panic"), "{why}");
        assert!(writer.health().close_message().contains(&why));
        assert_eq!(metrics.writer_failures.get(), 1);
        // The thread ended (the panic did not escape it) and closed the
        // queue: callers are refused with the reason, not left hanging.
        thread.join().expect("the panic is caught");
        let err = writer
            .submit(heartbeats(1, 6, 1, 1_000), ack, &budget)
            .await
            .unwrap_err();
        assert!(
            format!("{err:#}").contains("injected writer panic"),
            "{err:#}"
        );
        let hello = Hello {
            protocol_version: 1,
            agent_version: "t".into(),
            heartbeat_interval_ms: 1_000,
            metrics_interval_ms: 1_000,
        };
        let err = writer.session(DeviceId(1), hello).await.unwrap_err();
        assert!(
            format!("{err:#}").contains("injected writer panic"),
            "{err:#}"
        );
        assert_eq!(metrics.writer_queue_bytes.get(), 0);
        assert_eq!(budget.available(), 1 << 20);
        let text = metrics.encode();
        assert!(text.contains("outpost_writer_failures_total 1"), "{text}");
    }

    #[tokio::test]
    async fn extreme_timestamps_never_stop_the_writer() {
        for limits in [IngestLimits::DEFAULT, IngestLimits::NONE] {
            let (_d, store) = open();
            let metrics = Arc::new(Metrics::new());
            let opts = WriterOptions {
                limits,
                ..WriterOptions::for_tests()
            };
            let (writer, thread) = spawn(store, opts, metrics.clone(), Sinks::none()).unwrap();
            let budget = SessionBudget::new(1 << 20);
            let (ack, mut rx) = slot();
            let now = now_ms();
            let stamps = [
                u64::MAX,
                u64::MAX - 1,
                u64::MAX - 299_999,
                0,
                now,
                now + 2 * 86_400_000,
            ];
            let records = stamps
                .iter()
                .enumerate()
                .flat_map(|(i, ts)| {
                    let seq = 2 * i as u64 + 1;
                    [
                        Record {
                            seq,
                            ts_ms: *ts,
                            body: RecordBody::Heartbeat(Heartbeat {
                                uptime_s: 1,
                                buffered_records: 0,
                                dropped_records: 0,
                            }),
                        },
                        Record {
                            seq: seq + 1,
                            ts_ms: *ts,
                            body: RecordBody::Metrics(MetricsSample {
                                values: vec![MetricValue {
                                    name: "cpu".into(),
                                    label: String::new(),
                                    value: 1.0,
                                }],
                            }),
                        },
                    ]
                })
                .collect();
            let group = IncomingRecords {
                device: DeviceId(9),
                records,
            };
            writer.submit(group, ack.clone(), &budget).await.unwrap();
            acked(&mut rx, 12).await;
            writer.control(WriterMsg::RollUp);
            writer.control(WriterMsg::Seal);
            writer.control(WriterMsg::Sweep);
            writer.control(WriterMsg::Retire(DeviceId(9)));
            writer
                .submit(heartbeats(9, 13, 1, now), ack.clone(), &budget)
                .await
                .unwrap();
            acked(&mut rx, 13).await;
            assert!(writer.health().failure().is_none(), "{limits:?}");
            let text = metrics.encode();
            if limits == IngestLimits::DEFAULT {
                assert!(
                    text.contains("outpost_rejects_total{reason=\"bad_timestamp\"} 8"),
                    "{text}"
                );
            }
            drop(writer);
            thread.join().unwrap();
        }
    }
}
