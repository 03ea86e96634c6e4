//! The agent's run loop: collectors feed the offline buffer; one session at a
//! time drains it to the appliance over a long-lived QUIC stream and deletes
//! records only when the appliance acknowledges them.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, anyhow};
use bytes::BytesMut;
use outpost_proto::frame::{FrameError, FrameReader, write_frame};
use outpost_proto::messages::{
    AgentFrame, ApplianceFrame, Close, CloseReason, Heartbeat, Hello, RecordBody,
};
use outpost_proto::{
    ALPN_SESSION, APPLIANCE_SERVER_NAME, DEFAULT_MAX_FRAME_BYTES, PROTOCOL_VERSION, tls,
};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::backoff::{Backoff, jittered};
use crate::buffer::Buffer;
use crate::collect::{self, AGENT_VERSION, Collector};
use crate::config::AgentConfig;
use crate::identity::Identity;
use crate::net;
use crate::status::{Connection, LinkState};

/// Records per `Records` frame, and payload bytes per frame (well under the
/// default frame limit; a smaller limit announced in the appliance's
/// `Welcome` lowers it).
const FRAME_RECORDS: usize = 512;
const FRAME_BYTES: usize = 256 * 1024;
/// The smallest frame limit the agent accepts from an appliance (the
/// appliance refuses a configuration below it). Below it, records that fit
/// any sane limit would be dropped as undeliverable: a broken or hostile
/// appliance must not make the agent empty its buffer.
const MIN_FRAME_BYTES: usize = 1024;
/// How long the appliance has to answer Hello.
const WELCOME_TIMEOUT: Duration = Duration::from_secs(15);

/// Shared between collectors, the session and the status writer.
pub struct Shared {
    buffer: Mutex<Buffer>,
    /// Wakes the sender: a new record was buffered or an ack freed the window.
    wake: Notify,
    /// Connection state, last ack and last error, for `status.json`.
    link: Mutex<LinkState>,
}

impl Shared {
    pub fn new(buffer: Buffer) -> Arc<Shared> {
        Arc::new(Shared {
            buffer: Mutex::new(buffer),
            wake: Notify::new(),
            link: Mutex::new(LinkState::new(now_ms())),
        })
    }

    pub fn buffer(&self) -> MutexGuard<'_, Buffer> {
        self.buffer.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn link(&self) -> MutexGuard<'_, LinkState> {
        self.link.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn set_connection(&self, c: Connection) {
        self.link().set(c, now_ms());
    }

    /// Records why the agent could not (or can no longer) talk to the appliance.
    pub fn note_error(&self, message: String) {
        self.link().error(message, now_ms());
    }

    /// Buffers a record and wakes the sender.
    pub fn record(&self, body: RecordBody) -> anyhow::Result<u64> {
        self.record_at(now_ms(), body)
    }

    /// Buffers a record collected at `ts_ms` and wakes the sender.
    pub fn record_at(&self, ts_ms: u64, body: RecordBody) -> anyhow::Result<u64> {
        let seq = self.buffer().append(ts_ms, body)?;
        self.wake.notify_one();
        Ok(seq)
    }
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Why a session ended.
#[derive(Debug)]
pub enum SessionEnd {
    /// Shutdown requested locally.
    Shutdown,
    /// The appliance closed the session; retry unless permanent.
    Closed(Close),
}

/// Runs the agent until shutdown or a permanent refusal (revoked certificate).
pub async fn run(
    ident: Identity,
    cfg: AgentConfig,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let addr = net::resolve(&ident.appliance).await?;
    let endpoint = net::client_endpoint(addr)?;
    let tls = tls::mtls_client_config(
        ident.ca.clone(),
        vec![ident.cert.clone()],
        ident.key.clone_key(),
        ALPN_SESSION,
    )?;
    let client_cfg = net::quic_client_config(tls)?;

    let collectors = spawn_collectors(&cfg, shared.clone(), shutdown.clone());
    let mut backoff = Backoff::new(cfg.reconnect_base, cfg.reconnect_max);
    let span = info_span!("agent", device = %ident.device_id, appliance = %addr);
    let result = async {
        loop {
            if shutdown.is_cancelled() {
                return Ok(());
            }
            shared.set_connection(Connection::Connecting);
            let end = connect_and_stream(&endpoint, &client_cfg, addr, &cfg, &shared, &shutdown, &mut backoff).await;
            if !matches!(end, Ok(SessionEnd::Shutdown)) {
                shared.set_connection(Connection::Disconnected);
            }
            match end {
                Ok(SessionEnd::Shutdown) => return Ok(()),
                Ok(SessionEnd::Closed(c)) if c.reason.is_permanent() => {
                    let e = anyhow!(
                        "the appliance refused this device permanently ({}): {}. \
                         Re-enroll with a new token if this is unexpected.",
                        c.reason.label(),
                        c.message
                    );
                    shared.note_error(format!("{e:#}"));
                    return Err(e);
                }
                Ok(SessionEnd::Closed(c)) => {
                    warn!(reason = c.reason.label(), message = %c.message, "session closed by appliance");
                    shared.note_error(format!("session closed by the appliance ({}): {}", c.reason.label(), c.message));
                }
                Err(e) => {
                    warn!(error = %format!("{e:#}"), attempt = backoff.attempt(), "session failed");
                    shared.note_error(format!("{e:#}"));
                }
            }
            let delay = backoff.next_delay();
            debug!(?delay, "reconnecting after backoff");
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = shutdown.cancelled() => return Ok(()),
            }
        }
    }
    .instrument(span)
    .await;
    shutdown.cancel();
    for c in collectors {
        let _ = c.await;
    }
    shared.buffer().flush()?;
    endpoint.close(0u32.into(), b"agent stopping");
    endpoint.wait_idle().await;
    result
}

async fn connect_and_stream(
    endpoint: &quinn::Endpoint,
    client_cfg: &quinn::ClientConfig,
    addr: SocketAddr,
    cfg: &AgentConfig,
    shared: &Arc<Shared>,
    shutdown: &CancellationToken,
    backoff: &mut Backoff,
) -> anyhow::Result<SessionEnd> {
    let conn = endpoint
        .connect_with(client_cfg.clone(), addr, APPLIANCE_SERVER_NAME)
        .context("starting connection")?
        .await
        .map_err(|e| close_reason_error(&e).unwrap_or_else(|| anyhow!(e)))
        .context("connecting")?;
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| conn_err(&conn, e))?;
    let mut out = BytesMut::new();
    let hello = AgentFrame::Hello(Hello {
        protocol_version: PROTOCOL_VERSION,
        agent_version: AGENT_VERSION.to_string(),
        heartbeat_interval_ms: cfg.heartbeat_interval.as_millis().min(u32::MAX as u128) as u32,
        metrics_interval_ms: cfg.metrics_interval.as_millis().min(u32::MAX as u128) as u32,
    });
    write_frame(&hello, &mut out, DEFAULT_MAX_FRAME_BYTES)?;
    send.write_all(&out).await.map_err(|e| anyhow!(e))?;
    let mut reader = FrameReader::new(DEFAULT_MAX_FRAME_BYTES);
    let welcome =
        tokio::time::timeout(WELCOME_TIMEOUT, reader.next::<ApplianceFrame, _>(&mut recv))
            .await
            .map_err(|_| anyhow!("no Welcome within {WELCOME_TIMEOUT:?}"))?;
    let welcome = match welcome {
        Ok(Some(ApplianceFrame::Welcome(w))) => w,
        Ok(Some(ApplianceFrame::Close(c))) => return Ok(SessionEnd::Closed(c)),
        Ok(Some(other)) => return Err(anyhow!("expected Welcome, got {other:?}")),
        Ok(None) | Err(_) => {
            if let Some(c) = closed_by_appliance(&conn) {
                return Ok(SessionEnd::Closed(c));
            }
            return Err(anyhow!("session stream ended before Welcome"));
        }
    };
    {
        let mut b = shared.buffer();
        b.ack(welcome.last_stored_seq)?;
        b.ensure_next_seq_above(welcome.last_stored_seq)?;
    }
    backoff.reset();
    shared.set_connection(Connection::Connected);
    info!(
        last_stored_seq = welcome.last_stored_seq,
        buffered = shared.buffer().len(),
        "session established"
    );

    let max_frame = welcome.max_frame_bytes as usize;
    if max_frame < MIN_FRAME_BYTES {
        return Err(anyhow!(
            "the appliance announced a frame limit of {max_frame} bytes, below the \
             {MIN_FRAME_BYTES} bytes every appliance accepts; not sending (check its max_frame_bytes)"
        ));
    }
    let max_frame = max_frame.min(DEFAULT_MAX_FRAME_BYTES);
    // Liveness: with records in flight, silence from the appliance for
    // `ack_timeout` means the connection is dead (appliance crashed, network
    // gone); reconnecting beats waiting for QUIC's backed-off probes.
    let last_rx_ms = AtomicU64::new(now_ms());
    let sent_up_to = AtomicU64::new(welcome.last_stored_seq);
    let watchdog = async {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            let acked = shared.buffer().acked();
            let silent_ms = now_ms().saturating_sub(last_rx_ms.load(Ordering::Relaxed));
            if sent_up_to.load(Ordering::Relaxed) > acked
                && silent_ms > cfg.ack_timeout.as_millis() as u64
            {
                return Err(anyhow!(
                    "no acknowledgement for {:.1}s with records in flight; reconnecting",
                    silent_ms as f64 / 1000.0
                ));
            }
        }
    };
    let receiver = async {
        loop {
            let frame = reader.next::<ApplianceFrame, _>(&mut recv).await;
            last_rx_ms.store(now_ms(), Ordering::Relaxed);
            match frame {
                Ok(Some(ApplianceFrame::Ack(a))) => {
                    shared.buffer().ack(a.up_to_seq)?;
                    shared.link().last_ack_ms = Some(now_ms());
                    shared.wake.notify_one();
                }
                Ok(Some(ApplianceFrame::Close(c))) => return Ok(SessionEnd::Closed(c)),
                Ok(Some(ApplianceFrame::Welcome(_))) => {
                    return Err(anyhow!("protocol violation: second Welcome"));
                }
                Ok(None) | Err(_) => {
                    if let Some(c) = closed_by_appliance(&conn) {
                        return Ok(SessionEnd::Closed(c));
                    }
                    return Err(anyhow!("session stream ended"));
                }
            }
        }
    };
    let sender = async {
        let mut cursor = shared.buffer().first_seq()?.unwrap_or(0);
        loop {
            let last = {
                let mut b = shared.buffer();
                let in_flight = cursor.saturating_sub(b.acked().saturating_add(1));
                if in_flight >= cfg.max_in_flight_records {
                    None
                } else {
                    let from = cursor.max(b.acked().saturating_add(1));
                    next_frame(&mut b, from, max_frame, &mut out)?
                }
            };
            let Some(last) = last else {
                shared.wake.notified().await;
                continue;
            };
            cursor = last.saturating_add(1);
            if sent_up_to.load(Ordering::Relaxed) <= shared.buffer().acked() {
                // Nothing was in flight: the ack clock starts now.
                last_rx_ms.store(now_ms(), Ordering::Relaxed);
            }
            sent_up_to.store(last, Ordering::Relaxed);
            send.write_all(&out).await.map_err(|e| anyhow!(e))?;
        }
        #[allow(unreachable_code)]
        Ok::<SessionEnd, anyhow::Error>(SessionEnd::Shutdown)
    };
    let end = tokio::select! {
        r = receiver => r,
        r = sender => r,
        r = watchdog => r,
        _ = shutdown.cancelled() => Ok(SessionEnd::Shutdown),
    };
    if matches!(end, Ok(SessionEnd::Shutdown)) {
        // Best effort: tell the appliance why we leave.
        let mut bye = BytesMut::new();
        write_frame(
            &AgentFrame::Goodbye {
                reason: "agent stopping".into(),
            },
            &mut bye,
            max_frame,
        )?;
        let _ = tokio::time::timeout(Duration::from_secs(1), send.write_all(&bye)).await;
        let _ = send.finish();
        conn.close(CloseReason::Normal.code().into(), b"agent stopping");
    }
    end
}

/// Encodes into `out` the next `Records` frame: the buffered records from
/// `from` on, as many as fit in `max_frame` bytes (the limit the appliance
/// announced in its `Welcome`), at most [`FRAME_RECORDS`] and
/// [`FRAME_BYTES`]. Returns the last sequence number in the frame, or `None`
/// when there is nothing to send.
///
/// A record that alone exceeds `max_frame` can never be delivered to this
/// appliance: it is dropped from the buffer, counted in `dropped` (reported
/// in heartbeats) and logged, so the backlog behind it drains.
pub fn next_frame(
    b: &mut Buffer,
    mut from: u64,
    max_frame: usize,
    out: &mut BytesMut,
) -> anyhow::Result<Option<u64>> {
    loop {
        let batch = b.read_from(from, FRAME_RECORDS, FRAME_BYTES.min(max_frame))?;
        let Some(first) = batch.first().map(|r| r.seq) else {
            return Ok(None);
        };
        let mut records = batch;
        loop {
            out.clear();
            let n = records.len();
            let last = records.last().map(|r| r.seq).unwrap_or(first);
            let frame = AgentFrame::Records(records);
            match write_frame(&frame, out, max_frame) {
                Ok(()) => return Ok(Some(last)),
                // The stored sizes bound the frame, so this is not expected;
                // halving keeps the sender going if the encoding ever differs.
                Err(FrameError::Oversize { .. }) if n > 1 => {
                    let AgentFrame::Records(mut r) = frame else {
                        return Err(anyhow!("internal error: a Records frame changed kind"));
                    };
                    r.truncate(n / 2);
                    records = r;
                }
                Err(FrameError::Oversize { len, max }) => {
                    warn!(
                        seq = first,
                        len,
                        max,
                        "dropping a record larger than the appliance's frame limit (max_frame_bytes)"
                    );
                    b.drop_undeliverable(first)?;
                    from = first.saturating_add(1);
                    break;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
}

/// The appliance's close reason, if it closed the connection.
fn closed_by_appliance(conn: &quinn::Connection) -> Option<Close> {
    match conn.close_reason()? {
        quinn::ConnectionError::ApplicationClosed(a) => {
            let reason = CloseReason::from_code(a.error_code.into_inner())?;
            Some(Close {
                reason,
                message: String::from_utf8_lossy(&a.reason).into_owned(),
            })
        }
        _ => None,
    }
}

fn close_reason_error(e: &quinn::ConnectionError) -> Option<anyhow::Error> {
    match e {
        quinn::ConnectionError::TransportError(t) => Some(anyhow!("handshake refused: {t}")),
        _ => None,
    }
}

fn conn_err(conn: &quinn::Connection, e: quinn::ConnectionError) -> anyhow::Error {
    match closed_by_appliance(conn) {
        Some(c) => anyhow!(
            "appliance closed the connection ({}): {}",
            c.reason.label(),
            c.message
        ),
        None => anyhow!(e),
    }
}

fn spawn_collectors(
    cfg: &AgentConfig,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
) -> Vec<tokio::task::JoinHandle<()>> {
    let collector = Arc::new(Mutex::new(Collector::new()));
    let mut tasks = Vec::new();

    // Heartbeats, ±10% jitter.
    {
        let (shared, shutdown, interval) =
            (shared.clone(), shutdown.clone(), cfg.heartbeat_interval);
        tasks.push(tokio::spawn(async move {
            loop {
                let (buffered, dropped) = {
                    let b = shared.buffer();
                    (b.len().min(u64::from(u32::MAX)) as u32, b.dropped())
                };
                let hb = Heartbeat {
                    uptime_s: collect::uptime_s(),
                    buffered_records: buffered,
                    dropped_records: dropped,
                };
                if let Err(e) = shared.record(RecordBody::Heartbeat(hb)) {
                    warn!(error = %format!("{e:#}"), "could not buffer heartbeat");
                }
                tokio::select! {
                    _ = tokio::time::sleep(jittered(interval, 0.1, rand::random())) => {}
                    _ = shutdown.cancelled() => return,
                }
            }
        }));
    }
    // Metrics and inventory.
    let watch = Arc::new((cfg.services.clone(), cfg.processes.clone()));
    for (kind, interval) in [
        ("metrics", cfg.metrics_interval),
        ("inventory", cfg.inventory_interval),
    ] {
        let (shared, shutdown, collector, watch) = (
            shared.clone(),
            shutdown.clone(),
            collector.clone(),
            watch.clone(),
        );
        tasks.push(tokio::spawn(async move {
            // A fixed schedule (not sleep-after-work): samples are evenly
            // spaced, which the appliance's chunk encoding stores in about a
            // byte per timestamp.
            let mut ticks = tokio::time::interval(interval);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = ticks.tick() => {}
                    _ = shutdown.cancelled() => return,
                }
                let collected_at = now_ms();
                let c = collector.clone();
                let w = watch.clone();
                let body = tokio::task::spawn_blocking(move || {
                    let mut c = c.lock().unwrap_or_else(|p| p.into_inner());
                    if kind == "metrics" {
                        let mut sample = c.metrics();
                        sample.values.extend(c.checks(&w.0, &w.1));
                        RecordBody::Metrics(sample)
                    } else {
                        RecordBody::Inventory(Box::new(c.inventory()))
                    }
                })
                .await;
                match body {
                    Ok(body) => {
                        if let Err(e) = shared.record_at(collected_at, body) {
                            warn!(error = %format!("{e:#}"), kind, "could not buffer record");
                        }
                    }
                    Err(e) => warn!(error = %e, kind, "collector failed"),
                }
            }
        }));
    }
    tasks
}

#[cfg(test)]
mod tests {
    use outpost_proto::frame::{decode_payload, split_frame};
    use outpost_proto::messages::{Inventory, MetricValue, MetricsSample, Record};

    use super::*;

    fn metrics(n: usize) -> RecordBody {
        RecordBody::Metrics(MetricsSample {
            values: (0..n)
                .map(|i| MetricValue {
                    name: format!("metric_{i}"),
                    label: "/var/lib/something".into(),
                    value: i as f64,
                })
                .collect(),
        })
    }

    /// Drains the buffer the way the sender does: frame after frame from
    /// the first record, each acked at once. Returns the frames' records.
    fn drain(b: &mut Buffer, max_frame: usize) -> Vec<Vec<Record>> {
        let mut frames = Vec::new();
        let mut out = BytesMut::new();
        let mut from = b.first_seq().unwrap().unwrap_or(0);
        while let Some(last) = next_frame(b, from, max_frame, &mut out).unwrap() {
            let mut buf = out.clone();
            let payload = split_frame(&mut buf, max_frame)
                .expect("within the appliance's limit")
                .expect("one whole frame");
            assert!(buf.is_empty());
            let AgentFrame::Records(records) = decode_payload(&payload).unwrap() else {
                panic!("not a Records frame");
            };
            assert_eq!(records.last().unwrap().seq, last);
            frames.push(records);
            b.ack(last).unwrap();
            from = last + 1;
        }
        frames
    }

    #[test]
    fn a_backlog_drains_in_frames_within_the_appliances_limit() {
        for max_frame in [MIN_FRAME_BYTES, 4096, 100_000, DEFAULT_MAX_FRAME_BYTES] {
            let dir = tempfile::tempdir().unwrap();
            let mut b = Buffer::open(dir.path(), 64 << 20).unwrap();
            for i in 0..150 {
                b.append(i, metrics(1 + (i as usize % 12))).unwrap();
            }
            let frames = drain(&mut b, max_frame);
            let seqs: Vec<u64> = frames.iter().flatten().map(|r| r.seq).collect();
            assert_eq!(seqs, (1..=150).collect::<Vec<_>>(), "max_frame {max_frame}");
            assert!(b.is_empty());
            assert_eq!(b.dropped(), 0, "max_frame {max_frame}");
            if max_frame == 4096 {
                assert!(frames.len() >= 5, "{} frames", frames.len());
            }
        }
    }

    #[test]
    fn a_record_larger_than_the_appliances_limit_is_dropped_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        let mut b = Buffer::open(dir.path(), 64 << 20).unwrap();
        b.append(1, metrics(3)).unwrap();
        b.append(
            2,
            RecordBody::Inventory(Box::new(Inventory {
                hostname: "h".repeat(5_000),
                ..Inventory::default()
            })),
        )
        .unwrap();
        for i in 3..=20 {
            b.append(i, metrics(3)).unwrap();
        }
        let frames = drain(&mut b, 4096);
        let seqs: Vec<u64> = frames.iter().flatten().map(|r| r.seq).collect();
        let want: Vec<u64> = (1..=20).filter(|s| *s != 2).collect();
        assert_eq!(seqs, want, "the backlog behind it drains");
        assert_eq!(b.dropped(), 1);
        assert!(b.is_empty());
    }
}
