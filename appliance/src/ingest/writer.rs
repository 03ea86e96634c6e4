//! The writer thread: the single owner of `IngestWriter`, fed by every
//! connection through one bounded queue, group-committing what it drains.
//!
//! Each session owns an [`AckSlot`]; after a batch is durable the writer
//! publishes the new cumulative ack into the slots of the sessions that had
//! records in it. A failed write publishes an error instead and acks nothing.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context;
use outpost_proto::DeviceId;
use outpost_proto::messages::{Hello, MetricValue, RecordBody};
use outpost_storage::ingest::{GroupOutcome, IncomingRecords, IngestWriter};
use outpost_storage::model::StatusTransition;
use outpost_storage::{Store, now_ms};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, error, info, warn};

use crate::metrics::{KindLabel, Metrics};

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
    /// Records from one session read.
    Records {
        group: IncomingRecords,
        ack: Arc<AckSlot>,
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

/// Handle to the writer thread.
#[derive(Clone)]
pub struct WriterHandle {
    tx: mpsc::Sender<WriterMsg>,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for WriterHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriterHandle").finish_non_exhaustive()
    }
}

impl WriterHandle {
    /// Queues records; waits while the queue is full (backpressure).
    pub async fn submit(&self, group: IncomingRecords, ack: Arc<AckSlot>) -> anyhow::Result<()> {
        self.metrics.writer_queue_depth.inc();
        let r = self
            .tx
            .send(WriterMsg::Records { group, ack })
            .await
            .map_err(|_| anyhow::anyhow!("the writer has stopped"));
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
            .map_err(|_| anyhow::anyhow!("the writer has stopped"))?;
        rx.await.context("the writer dropped the session request")?
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
    pub offline_grace: Duration,
    pub rollup_settle: Duration,
}

/// Starts the writer thread. It exits when every handle is dropped, after
/// committing what was queued.
pub fn spawn(
    store: Store,
    opts: WriterOptions,
    metrics: Arc<Metrics>,
    sinks: Sinks,
) -> anyhow::Result<(WriterHandle, JoinHandle<()>)> {
    let (tx, rx) = mpsc::channel(opts.queue_groups);
    let writer =
        IngestWriter::new(store, now_ms()).context("loading device state for the writer")?;
    let m = metrics.clone();
    let join = std::thread::Builder::new()
        .name("outpost-writer".into())
        .spawn(move || run(writer, rx, opts, m, sinks))
        .context("spawning the writer thread")?;
    Ok((WriterHandle { tx, metrics }, join))
}

fn run(
    mut writer: IngestWriter,
    mut rx: mpsc::Receiver<WriterMsg>,
    opts: WriterOptions,
    metrics: Arc<Metrics>,
    sinks: Sinks,
) {
    let mut groups: Vec<IncomingRecords> = Vec::new();
    let mut slots: Vec<Arc<AckSlot>> = Vec::new();
    let mut controls: Vec<WriterMsg> = Vec::new();
    publish_counts(&writer, &metrics);
    while let Some(first) = rx.blocking_recv() {
        // Drain what is queued, up to the batch bound: the batch grows by
        // itself while the previous write (and its fsync) was in progress.
        let mut records = 0usize;
        let mut next = Some(first);
        while let Some(msg) = next.take() {
            match msg {
                WriterMsg::Records { group, ack } => {
                    metrics.writer_queue_depth.dec();
                    records += group.records.len();
                    groups.push(group);
                    slots.push(ack);
                }
                other => controls.push(other),
            }
            if records >= opts.max_batch_records {
                break;
            }
            next = rx.try_recv().ok();
        }
        if !groups.is_empty() {
            commit(&mut writer, &mut groups, &mut slots, &metrics, &sinks);
        }
        for msg in controls.drain(..) {
            control(&mut writer, msg, &opts, &metrics, &sinks);
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
            outcomes = out.groups.clone();
            for (slot, g) in slots.iter().zip(out.groups.iter()) {
                slot.send_if_modified(|cur| match cur {
                    AckState::Acked(n) if *n < g.ack_up_to => {
                        *n = g.ack_up_to;
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
) {
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
        WriterMsg::RollUp => {
            match writer.roll_up(now_ms(), opts.rollup_settle.as_millis() as u64, 20_000) {
                Ok(done) => {
                    if !done.is_empty() {
                        debug!(rollups = done.len(), "rollups computed");
                    }
                    metrics.rollups_computed.inc_by(done.len() as u64);
                }
                Err(e) => warn!(error = %e, "rollup computation failed"),
            }
        }
        WriterMsg::Seal => {
            match writer.seal_chunks(now_ms(), opts.rollup_settle.as_millis() as u64, 5_000) {
                Ok(n) => {
                    metrics.chunks_sealed.inc_by(n as u64);
                }
                Err(e) => {
                    metrics.write_errors.inc();
                    warn!(error = %e, "sealing sample chunks failed");
                }
            }
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
