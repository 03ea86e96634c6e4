//! The agent's run loop: collectors feed the offline buffer; one session at a
//! time drains it to the appliance over a long-lived QUIC stream and deletes
//! records only when the appliance acknowledges them.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, anyhow};
use bytes::BytesMut;
use outpost_proto::frame::{FrameReader, write_frame};
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
/// frame limit).
const FRAME_RECORDS: usize = 512;
const FRAME_BYTES: usize = 256 * 1024;
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

    let max_frame = (welcome.max_frame_bytes as usize).min(DEFAULT_MAX_FRAME_BYTES);
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
            let batch = {
                let mut b = shared.buffer();
                let in_flight = cursor.saturating_sub(b.acked().saturating_add(1));
                if in_flight >= cfg.max_in_flight_records {
                    Vec::new()
                } else {
                    let from = cursor.max(b.acked() + 1);
                    b.read_from(from, FRAME_RECORDS, FRAME_BYTES)?
                }
            };
            if batch.is_empty() {
                shared.wake.notified().await;
                continue;
            }
            cursor = batch.last().map(|r| r.seq + 1).unwrap_or(cursor);
            if sent_up_to.load(Ordering::Relaxed) <= shared.buffer().acked() {
                // Nothing was in flight: the ack clock starts now.
                last_rx_ms.store(now_ms(), Ordering::Relaxed);
            }
            sent_up_to.store(cursor - 1, Ordering::Relaxed);
            out.clear();
            write_frame(&AgentFrame::Records(batch), &mut out, max_frame)?;
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
