//! A simulated agent: one QUIC connection with its own client certificate,
//! the real session protocol (Hello/Welcome of protocol 3, the command and
//! file streams opened and left idle, sequenced records, cumulative acks,
//! the appliance's `Pressure` frames), records shaped like the real
//! agent's, the real agent's ack-timeout rule
//! ([`outpost_proto::session::pressure::AckClock`], shorter timeouts),
//! reconnect with full-jitter backoff, and replay of unacknowledged records
//! after reconnecting.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow};
use bytes::BytesMut;
use hdrhistogram::Histogram;
use outpost_agent::backoff::Backoff;
use outpost_proto::frame::{FrameReader, write_frame};
use outpost_proto::messages::Flow;
use outpost_proto::messages::{
    AgentFrame, ApplianceFrame, CloseReason, Heartbeat, Hello, MetricValue, MetricsSample, Record,
    RecordBody,
};
use outpost_proto::session::pressure::AckClock;
use outpost_proto::{APPLIANCE_SERVER_NAME, DEFAULT_MAX_FRAME_BYTES, SESSION_PROTOCOL_VERSION};
use tokio_util::sync::CancellationToken;

/// Which records the simulated agents send.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mix {
    /// Heartbeats only (the heartbeats/s figure).
    Heartbeat,
    /// The real agent's default proportions: two heartbeats per metrics
    /// sample of ~30 values (30 s heartbeats, 60 s metrics).
    Realistic,
    /// Metrics samples only (the side-by-side stream of
    /// `benches/ingest-side-by-side.sh`: every record is one sample of
    /// [`METRICS_VALUES`] values, the stream the peers get too).
    Metrics,
}

impl Mix {
    /// The name used in RESULT lines.
    pub fn label(self) -> &'static str {
        match self {
            Mix::Heartbeat => "heartbeat",
            Mix::Realistic => "realistic",
            Mix::Metrics => "metrics",
        }
    }
}

/// Values in one simulated metrics sample.
pub const METRICS_VALUES: usize = 28;

/// Shared counters and histograms of a run.
pub struct RunStats {
    /// Records generated (each counted once, however often it is resent).
    pub sent: AtomicU64,
    pub acked: AtomicU64,
    pub connected: AtomicU64,
    pub sessions: AtomicU64,
    /// `Pressure` frames received (the appliance said it was slow).
    pub pressure: AtomicU64,
    pub errors: std::sync::Mutex<std::collections::BTreeMap<String, u64>>,
    /// Ack latency in microseconds, sharded to avoid contention.
    pub latency: Vec<std::sync::Mutex<Histogram<u64>>>,
}

impl RunStats {
    pub fn new(shards: usize) -> Arc<RunStats> {
        Arc::new(RunStats {
            sent: AtomicU64::new(0),
            acked: AtomicU64::new(0),
            connected: AtomicU64::new(0),
            sessions: AtomicU64::new(0),
            pressure: AtomicU64::new(0),
            errors: Default::default(),
            latency: (0..shards.max(1))
                .map(|_| {
                    std::sync::Mutex::new(
                        Histogram::new_with_bounds(1, 600_000_000, 3).expect("histogram bounds"),
                    )
                })
                .collect(),
        })
    }

    pub fn error(&self, kind: &str) {
        *self
            .errors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(kind.to_string())
            .or_default() += 1;
    }

    /// All latency shards merged.
    pub fn merged_latency(&self) -> Histogram<u64> {
        let mut h = Histogram::new_with_bounds(1, 600_000_000, 3).expect("histogram bounds");
        for s in &self.latency {
            let _ = h.add(&*s.lock().unwrap_or_else(|p| p.into_inner()));
        }
        h
    }

    pub fn reset_latency(&self) {
        for s in &self.latency {
            s.lock().unwrap_or_else(|p| p.into_inner()).reset();
        }
    }
}

/// How one simulated agent behaves.
#[derive(Debug, Clone)]
pub struct SimOptions {
    pub addr: SocketAddr,
    /// Records per second; `None` = as fast as acks allow (window-bound).
    pub rate: Option<f64>,
    /// Records in flight (sent, unacked) at most.
    pub window: usize,
    /// Records per frame in max-rate mode.
    pub batch: usize,
    pub mix: Mix,
    /// The heartbeat interval announced in Hello (offline detection).
    pub announced_interval: Duration,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A metrics sample shaped like the Linux agent's (~30 values).
pub fn metrics_sample(n: u64) -> MetricsSample {
    // Two decimals, as the real agent reports (`collect.rs`, `round2`).
    let v = |name: &str, label: &str, value: f64| MetricValue {
        name: name.to_string(),
        label: label.to_string(),
        value: (value * 100.0).round() / 100.0,
    };
    let x = (n % 100) as f64;
    MetricsSample {
        values: vec![
            v("cpu", "", x * 0.7),
            v("load1", "", x / 50.0),
            v("load5", "", x / 60.0),
            v("load15", "", x / 70.0),
            v("memory", "", 40.0 + x / 10.0),
            v("memory_used_bytes", "", 3.2e9 + x * 1e6),
            v("memory_total_bytes", "", 8.0e9),
            v("swap", "", 0.0),
            v("swap_used_bytes", "", 0.0),
            v("uptime_seconds", "", 86_400.0 + n as f64),
            v("processes", "", 180.0 + (n % 7) as f64),
            v("disk_used_percent", "/", 61.5),
            v("disk_used_bytes", "/", 6.1e10),
            v("disk_total_bytes", "/", 1.0e11),
            v("disk_used_percent", "/boot", 22.0),
            v("disk_used_bytes", "/boot", 1.1e8),
            v("disk_total_bytes", "/boot", 5.0e8),
            v("disk_used_percent", "/var", 48.0),
            v("disk_used_bytes", "/var", 4.8e10),
            v("disk_total_bytes", "/var", 1.0e11),
            v("net_rx_bytes", "eth0", 1.0e9 + n as f64 * 1500.0),
            v("net_tx_bytes", "eth0", 2.0e8 + n as f64 * 900.0),
            v("net_rx_bytes_per_sec", "eth0", 1500.0),
            v("net_tx_bytes_per_sec", "eth0", 900.0),
            v("net_rx_bytes", "eth1", 5.0e6),
            v("net_tx_bytes", "eth1", 1.0e6),
            v("net_rx_bytes_per_sec", "eth1", 12.0),
            v("net_tx_bytes_per_sec", "eth1", 4.0),
        ],
    }
}

/// The body of the `n`-th record of an agent.
pub fn record_body(mix: Mix, n: u64) -> RecordBody {
    match mix {
        Mix::Realistic if n % 3 == 2 => RecordBody::Metrics(metrics_sample(n)),
        Mix::Metrics => RecordBody::Metrics(metrics_sample(n)),
        _ => RecordBody::Heartbeat(Heartbeat {
            uptime_s: 86_400 + n,
            buffered_records: 0,
            dropped_records: 0,
        }),
    }
}

/// Classifies why a session ended: `refused: <reason>` for permanent
/// refusals, `closed: <reason>` otherwise.
fn closed_error(conn: &quinn::Connection) -> anyhow::Error {
    match conn.close_reason() {
        Some(quinn::ConnectionError::ApplicationClosed(a)) => {
            match CloseReason::from_code(a.error_code.into_inner()) {
                Some(r) if r.is_permanent() => anyhow!("refused: {}", r.label()),
                Some(r) => anyhow!("closed: {}", r.label()),
                None => anyhow!("closed: code {}", a.error_code),
            }
        }
        Some(other) => anyhow!("closed: {other}"),
        None => anyhow!("closed: stream ended"),
    }
}

/// Silence with records in flight after which a simulated agent reconnects.
const SIM_ACK_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest an appliance's `Pressure` frames make it wait instead (the
/// real agent's `ack_timeout_max`, shortened like its `ack_timeout`).
const SIM_ACK_TIMEOUT_MAX: Duration = Duration::from_secs(60);

/// Longest generation tick in rate mode: the records due within it leave as
/// one frame, as a real agent's sender drains whatever its buffer holds.
const TICK_S: f64 = 0.100;

/// One agent's unacknowledged records.
struct Pending {
    /// (record, when it was last sent)
    queue: VecDeque<(Record, Option<Instant>)>,
    next_seq: u64,
    /// Index in `queue` of the first record not sent on this session.
    unsent: usize,
    generated: u64,
    /// Counted as connected (first session established).
    announced: bool,
    /// Highest sequence number the appliance acknowledged (an `Ack` or a
    /// `Welcome`'s `last_stored_seq`): everything up to it must be stored.
    acked_up_to: u64,
    /// Timestamp of the last record generated: the next one is later by at
    /// least 1 ms, as a real agent's are (its samples are seconds apart), so
    /// a burst in max mode does not store one value per series and
    /// millisecond in place of several.
    last_ts_ms: u64,
}

impl Pending {
    /// Appends `n` records, reading the clock once: a frame's records are
    /// generated together, as a real agent's buffer fills between sends.
    fn generate(&mut self, n: usize, mix: Mix, stats: &RunStats) {
        if n == 0 {
            return;
        }
        stats.sent.fetch_add(n as u64, Ordering::Relaxed);
        let now = now_ms();
        for _ in 0..n {
            let body = record_body(mix, self.generated);
            // Heartbeats are keyed by sequence number too and may share one.
            self.last_ts_ms = match body {
                RecordBody::Metrics(_) => now.max(self.last_ts_ms + 1),
                _ => now,
            };
            let rec = Record {
                seq: self.next_seq,
                ts_ms: self.last_ts_ms,
                body,
            };
            self.next_seq += 1;
            self.generated += 1;
            self.queue.push_back((rec, None));
        }
    }

    fn ack(&mut self, up_to: u64, stats: &RunStats, shard: usize) -> u64 {
        self.acked_up_to = self.acked_up_to.max(up_to);
        let mut n = 0;
        let now = Instant::now();
        let mut h = stats.latency[shard]
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        // The records of one frame share their send time: one histogram
        // update per run of equal times, not one per record.
        let mut run: Option<(Instant, u64)> = None;
        let mut flush = |run: Option<(Instant, u64)>| {
            if let Some((t, count)) = run {
                let us = now.duration_since(t).as_micros().max(1) as u64;
                let _ = h.record_n(us, count);
            }
        };
        while let Some((r, sent)) = self.queue.front() {
            if r.seq > up_to {
                break;
            }
            if let Some(t) = *sent {
                match run {
                    Some((rt, ref mut count)) if rt == t => *count += 1,
                    _ => {
                        flush(run);
                        run = Some((t, 1));
                    }
                }
            }
            self.queue.pop_front();
            self.unsent = self.unsent.saturating_sub(1);
            n += 1;
        }
        flush(run);
        n
    }
}

/// How the runner steers its agents.
#[derive(Clone)]
pub struct Control {
    /// Cancelled when the measured phase starts (agents connect, then wait).
    pub start: CancellationToken,
    /// Cancelled when agents must stop generating and drain their acks.
    pub stop: CancellationToken,
    /// Bounds concurrent handshakes (a permit is held from connect to Welcome).
    pub gate: Arc<tokio::sync::Semaphore>,
    /// Longest wait for outstanding acks after `stop`.
    pub drain: Duration,
}

/// What one simulated agent saw, for checks after a run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AgentOutcome {
    /// Highest sequence number the appliance acknowledged as stored.
    pub acked_up_to: u64,
    /// Highest sequence number generated (sent or still buffered).
    pub generated_up_to: u64,
}

/// Runs one simulated agent until `stop`, then drains its acks (bounded by
/// `drain`). Reconnects with backoff on any failure.
pub async fn run_agent(
    endpoint: quinn::Endpoint,
    cfg: quinn::ClientConfig,
    opts: Arc<SimOptions>,
    stats: Arc<RunStats>,
    shard: usize,
    ctl: Control,
) -> AgentOutcome {
    let mut pending = Pending {
        queue: VecDeque::new(),
        next_seq: 1,
        unsent: 0,
        generated: 0,
        announced: false,
        acked_up_to: 0,
        last_ts_ms: 0,
    };
    let outcome = |p: &Pending| AgentOutcome {
        acked_up_to: p.acked_up_to,
        generated_up_to: p.next_seq - 1,
    };
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    loop {
        match session(
            &endpoint,
            &cfg,
            &opts,
            &stats,
            shard,
            &mut pending,
            &ctl,
            &mut backoff,
        )
        .await
        {
            Ok(()) => return outcome(&pending),
            Err(e) => {
                let msg = e.to_string();
                let kind = msg.split(':').next().unwrap_or("error").to_string();
                // "closed: ack timeout" -> "closed_ack_timeout" (two levels
                // keep the map small: messages' tails carry addresses).
                let detail: Vec<&str> = msg.splitn(3, ':').take(2).map(str::trim).collect();
                stats.error(&detail.join("_").replace(char::is_whitespace, "_"));
                // A refused device (revoked, unknown) must not retry forever.
                if ctl.stop.is_cancelled() || kind == "refused" {
                    return outcome(&pending);
                }
            }
        }
        tokio::time::sleep(backoff.next_delay()).await;
    }
}

#[allow(clippy::too_many_arguments)]
async fn session(
    endpoint: &quinn::Endpoint,
    cfg: &quinn::ClientConfig,
    opts: &SimOptions,
    stats: &RunStats,
    shard: usize,
    pending: &mut Pending,
    ctl: &Control,
    backoff: &mut Backoff,
) -> anyhow::Result<()> {
    let (stop, drain) = (&ctl.stop, ctl.drain);
    let permit = ctl
        .gate
        .clone()
        .acquire_owned()
        .await
        .map_err(|_| anyhow!("gate: closed"))?;
    let conn = endpoint
        .connect_with(cfg.clone(), opts.addr, APPLIANCE_SERVER_NAME)
        .map_err(|e| anyhow!("connect: {e}"))?
        .await
        .map_err(|e| anyhow!("connect: {e}"))?;
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| anyhow!("stream: {e}"))?;
    let mut out = BytesMut::new();
    write_frame(
        &AgentFrame::Hello(Hello {
            protocol_version: SESSION_PROTOCOL_VERSION,
            agent_version: "bench".into(),
            heartbeat_interval_ms: opts.announced_interval.as_millis() as u32,
            metrics_interval_ms: opts.announced_interval.as_millis() as u32,
        }),
        &mut out,
        DEFAULT_MAX_FRAME_BYTES,
    )?;
    send.write_all(&out)
        .await
        .map_err(|e| anyhow!("write: {e}"))?;
    let mut reader = FrameReader::new(DEFAULT_MAX_FRAME_BYTES);
    let welcome = tokio::time::timeout(
        Duration::from_secs(30),
        reader.next::<ApplianceFrame, _>(&mut recv),
    )
    .await
    .map_err(|_| anyhow!("welcome: timeout"))?
    .map_err(|_| closed_error(&conn))?;
    let Some(ApplianceFrame::Welcome(w)) = welcome else {
        return Err(anyhow!("welcome: got {welcome:?}"));
    };
    // Like a real agent of protocol 2, open the command and file flows'
    // streams (kept idle: the appliance serves them beside the records).
    let mut _flows = Vec::new();
    if w.protocol_version >= 2 {
        for flow in [Flow::Commands, Flow::Files] {
            let (mut fs, fr) = conn.open_bi().await.map_err(|e| anyhow!("stream: {e}"))?;
            let open = outpost_proto::frame::encode_frame(
                &AgentFrame::OpenFlow(flow),
                DEFAULT_MAX_FRAME_BYTES,
            )?;
            fs.write_all(&open)
                .await
                .map_err(|e| anyhow!("write: {e}"))?;
            _flows.push((fs, fr));
        }
    }
    // Records the appliance already stored (acks lost in a crash).
    let stored = pending.ack(w.last_stored_seq, stats, shard);
    stats.acked.fetch_add(stored, Ordering::Relaxed);
    pending.next_seq = pending.next_seq.max(w.last_stored_seq + 1);
    pending.unsent = 0;
    drop(permit);
    // Like the real agent: a session resets the reconnect back-off.
    backoff.reset();
    stats.sessions.fetch_add(1, Ordering::Relaxed);
    if !pending.announced {
        pending.announced = true;
        stats.connected.fetch_add(1, Ordering::Relaxed);
        // Max-rate agents wait for the whole fleet so that the connect phase
        // is not measured as ingest. Rate-mode agents start at once, like
        // real agents (a silent connected agent would be declared offline
        // while a 50,000-agent fleet connects, and its alerts would fire).
        if opts.rate.is_none() {
            ctl.start.cancelled().await;
        }
    }

    // Rate mode: records are generated on a tick of at most 100 ms (several
    // per tick at high rates, fractional rates carried over), like an agent
    // whose collectors feed a buffer that the sender drains.
    let tick_every = opts
        .rate
        .map(|r| Duration::from_secs_f64((1.0 / r.max(1e-6)).max(TICK_S)));
    let per_tick = opts
        .rate
        .map(|r| r * tick_every.map(|d| d.as_secs_f64()).unwrap_or(1.0));
    let mut carry = 0.0f64;
    let mut tick = tick_every.map(|d| {
        let mut i = tokio::time::interval_at(
            tokio::time::Instant::now() + d.mul_f64(rand::random::<f64>()),
            d,
        );
        i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        i
    });
    let mut drain_deadline: Option<tokio::time::Instant> = None;
    // Same liveness rule as the real agent (its ack clock, with shorter
    // timeouts): silence ends the session, Pressure frames extend patience.
    let t0 = Instant::now();
    let ms = move || t0.elapsed().as_millis() as u64;
    let mut ack_clock = AckClock::new(
        SIM_ACK_TIMEOUT.as_millis() as u64,
        SIM_ACK_TIMEOUT_MAX.as_millis() as u64,
        ms(),
    );
    let pressure_allowed = w.protocol_version >= 3;
    let mut watchdog = tokio::time::interval(Duration::from_secs(1));
    loop {
        // Keep the window full (max-rate mode) and send what is unsent.
        if opts.rate.is_none() && drain_deadline.is_none() {
            let room = opts.window.saturating_sub(pending.queue.len());
            pending.generate(room, opts.mix, stats);
        }
        while pending.unsent < pending.queue.len() {
            if pending.unsent == 0 {
                ack_clock.started_waiting(ms());
            }
            let end = (pending.unsent + opts.batch).min(pending.queue.len());
            let now = Instant::now();
            let records: Vec<Record> = pending
                .queue
                .range_mut(pending.unsent..end)
                .map(|(r, t)| {
                    *t = Some(now);
                    r.clone()
                })
                .collect();
            out.clear();
            write_frame(
                &AgentFrame::Records(records),
                &mut out,
                DEFAULT_MAX_FRAME_BYTES,
            )?;
            send.write_all(&out)
                .await
                .map_err(|e| anyhow!("write: {e}"))?;
            pending.unsent = end;
        }
        if drain_deadline.is_some() && pending.queue.is_empty() {
            let _ = send.finish();
            conn.close(0u32.into(), b"bench done");
            return Ok(());
        }
        tokio::select! {
            _ = stop.cancelled(), if drain_deadline.is_none() => {
                drain_deadline = Some(tokio::time::Instant::now() + drain);
            }
            _ = async { tokio::time::sleep_until(drain_deadline.unwrap_or_else(tokio::time::Instant::now)).await }, if drain_deadline.is_some() => {
                stats.error("drain_timeout");
                conn.close(0u32.into(), b"bench done");
                return Ok(());
            }
            _ = async { match tick.as_mut() { Some(t) => { t.tick().await; } None => std::future::pending::<()>().await } }, if tick.is_some() && drain_deadline.is_none() => {
                carry += per_tick.unwrap_or(1.0);
                let due = carry.floor();
                carry -= due;
                pending.generate(due as usize, opts.mix, stats);
            }
            _ = watchdog.tick() => {
                if pending.unsent > 0 && ack_clock.expired(ms()) {
                    conn.close(0u32.into(), b"ack timeout");
                    return Err(anyhow!("closed: ack timeout"));
                }
            }
            r = reader.fill(&mut recv) => {
                ack_clock.heard(ms());
                match r {
                    Ok(true) => {}
                    Ok(false) => return Err(closed_error(&conn)),
                    Err(_) => return Err(closed_error(&conn)),
                }
                loop {
                    match reader.try_next::<ApplianceFrame>() {
                        Ok(Some(ApplianceFrame::Ack(a))) => {
                            let n = pending.ack(a.up_to_seq, stats, shard);
                            stats.acked.fetch_add(n, Ordering::Relaxed);
                        }
                        Ok(Some(ApplianceFrame::Pressure(p))) if pressure_allowed => {
                            stats.pressure.fetch_add(1, Ordering::Relaxed);
                            ack_clock.pressure(u64::from(p.ack_timeout_hint_ms), ms());
                        }
                        Ok(Some(ApplianceFrame::Close(c))) => return Err(anyhow!("closed: {}", c.reason.label())),
                        Ok(Some(other)) => return Err(anyhow!("protocol: unexpected {other:?}")),
                        Ok(None) => break,
                        Err(e) => return Err(e).context("protocol"),
                    }
                }
            }
        }
    }
}
