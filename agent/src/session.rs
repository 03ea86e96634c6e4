//! The agent's run loop: collectors feed the offline buffer; one session at a
//! time drains it to the appliance and deletes records only when the
//! appliance acknowledges them.
//!
//! A session is the I/O-free machine `outpost_proto::session::agent` in a
//! thin async shell: frames read from each flow's QUIC stream go into it,
//! records it asks for come from the buffer, its events become buffer acks,
//! status updates and remote-management events ([`crate::remote`]), and
//! what it transmits is written on each flow's own stream.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, anyhow};
use bytes::BytesMut;
use outpost_proto::frame::{FrameError, FrameReader, PendingWrites};
#[cfg(test)]
use outpost_proto::messages::AgentFrame;
use outpost_proto::messages::{ApplianceFrame, Close, CloseReason, Flow, Heartbeat, RecordBody};
use outpost_proto::session::agent::{
    AgentConfig as SessionConfig, AgentEvent, AgentSession, EncodedRecords, Ended, encode_records,
};
use outpost_proto::{
    ALPN_SESSION, APPLIANCE_SERVER_NAME, DEFAULT_MAX_FRAME_BYTES, MIN_SESSION_PROTOCOL_VERSION,
    SESSION_PROTOCOL_VERSION, tls,
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
use crate::remote::{LinkInbox, LinkInput, RefuseRemote, RemoteHost, RemoteLink};
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
#[cfg_attr(not(test), allow(dead_code))]
const MIN_FRAME_BYTES: usize = outpost_proto::session::MIN_FRAME_BYTES;
/// How long the appliance has to answer Hello.
const WELCOME_TIMEOUT: Duration = Duration::from_secs(15);
/// Back-off between attempts to reopen the offline buffer after a sled
/// error closed it (a full disk frees up on its own time): full jitter
/// from the first ceiling, doubling up to the second.
pub const BUFFER_REOPEN_BASE: Duration = Duration::from_secs(1);
pub const BUFFER_REOPEN_MAX: Duration = Duration::from_secs(60);
/// How often the buffer repair task looks at the buffer without being
/// woken (a failure seen by a path that does not wake it).
const BUFFER_CHECK_EVERY: Duration = Duration::from_secs(1);

/// Shared between collectors, the session and the status writer.
pub struct Shared {
    buffer: Mutex<Buffer>,
    /// Wakes the sender: a new record was buffered or an ack freed the window.
    wake: Notify,
    /// Wakes the buffer repair task ([`repair_buffer`]): a write failed.
    buffer_failed: Notify,
    /// Connection state, last ack and last error, for `status.json`.
    link: Mutex<LinkState>,
    /// Scans on request (`ScanPackages`): the scanner attaches to it, the
    /// command executor asks through it.
    scan_requests: crate::scan::ScanRequests,
}

impl Shared {
    pub fn new(buffer: Buffer) -> Arc<Shared> {
        Arc::new(Shared {
            buffer: Mutex::new(buffer),
            wake: Notify::new(),
            buffer_failed: Notify::new(),
            link: Mutex::new(LinkState::new(now_ms())),
            scan_requests: crate::scan::ScanRequests::new(),
        })
    }

    /// The handle the command executor asks package scans through.
    pub fn scan_requests(&self) -> crate::scan::ScanRequests {
        self.scan_requests.clone()
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

    /// Buffers a record collected at `ts_ms` and wakes the sender. A
    /// failure is recorded in the status; one that closed the buffer wakes
    /// [`repair_buffer`].
    pub fn record_at(&self, ts_ms: u64, body: RecordBody) -> anyhow::Result<u64> {
        let appended = {
            let mut b = self.buffer();
            b.append(ts_ms, body).map_err(|e| (e, b.is_closed()))
        };
        match appended {
            Ok(seq) => {
                self.wake.notify_one();
                Ok(seq)
            }
            Err((e, closed)) => {
                self.note_error(format!("buffering a record: {e}"));
                let e = anyhow::Error::new(e).context("buffering a record");
                if closed {
                    self.buffer_failed.notify_one();
                }
                Err(e)
            }
        }
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

/// The appliance refused this device for good (its certificate was
/// revoked, the device is unknown, or no session protocol is common):
/// reconnecting cannot help. `outpost-agent run` then exits with
/// [`EXIT_PERMANENT_REFUSAL`].
#[derive(Debug, thiserror::Error)]
#[error(
    "the appliance refused this device permanently ({}): {}. \
     Re-enroll with a new token if this is unexpected.",
    .reason.label(),
    .message
)]
pub struct PermanentRefusal {
    pub reason: CloseReason,
    pub message: String,
}

/// Exit status of `outpost-agent run` after a [`PermanentRefusal`]. The
/// systemd unit (`packaging/agent/outpost-agent.service`) names it in
/// `RestartPreventExitStatus=`, so a revoked device is not restarted every
/// few seconds forever.
pub const EXIT_PERMANENT_REFUSAL: u8 = 3;

/// The process exit status for an error of the agent: 3 for a
/// [`PermanentRefusal`], 1 for anything else.
pub fn exit_status(e: &anyhow::Error) -> u8 {
    if e.chain().any(|c| c.is::<PermanentRefusal>()) {
        EXIT_PERMANENT_REFUSAL
    } else {
        1
    }
}

/// Runs the agent until shutdown or a permanent refusal (revoked
/// certificate), refusing remote commands ([`RefuseRemote`]).
pub async fn run(
    ident: Identity,
    cfg: AgentConfig,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    run_with(
        ident,
        cfg,
        shared,
        shutdown,
        Arc::new(RefuseRemote::default()),
    )
    .await
}

/// Runs the agent with `remote` handling commands and file transfers.
pub async fn run_with(
    ident: Identity,
    cfg: AgentConfig,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
    remote: Arc<dyn RemoteHost>,
) -> anyhow::Result<()> {
    run_resolving(ident, cfg, shared, shutdown, remote, net::dns_resolver()).await
}

/// [`run_with`], looking the appliance up with `resolve` on every connect
/// attempt (a lookup that fails is a failed attempt: back off, retry).
pub async fn run_resolving(
    ident: Identity,
    cfg: AgentConfig,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
    remote: Arc<dyn RemoteHost>,
    resolve: net::Resolver,
) -> anyhow::Result<()> {
    let mut cfg = cfg;
    if cfg.package_tools.apt_update && cfg.package_tools.apt_proxy.is_none() {
        // apt's index refresh goes through the site's LAN cache.
        cfg.package_tools.apt_proxy = crate::scan::tools::default_apt_proxy(&ident.appliance);
    }
    let tls = tls::mtls_client_config(
        ident.ca.clone(),
        vec![ident.cert.clone()],
        ident.key.clone_key(),
        ALPN_SESSION,
    )?;
    let client_cfg = net::quic_client_config(tls)?;

    // Collect and buffer from the start, whether or not the appliance can
    // be reached (or even looked up) yet.
    let mut collectors = spawn_collectors(&cfg, shared.clone(), shutdown.clone());
    collectors.push(tokio::spawn(repair_buffer(
        shared.clone(),
        BUFFER_REOPEN_BASE,
        BUFFER_REOPEN_MAX,
        shutdown.clone(),
    )));
    let mut backoff = Backoff::new(cfg.reconnect_base, cfg.reconnect_max);
    let mut endpoints = net::ClientEndpoints::default();
    let span = info_span!("agent", device = %ident.device_id, appliance = %ident.appliance);
    let result = async {
        // The session protocol offered: the newest, unless the appliance
        // just refused it (an older appliance), then 1 for one attempt.
        let mut offer = SESSION_PROTOCOL_VERSION;
        loop {
            if shutdown.is_cancelled() {
                return Ok(());
            }
            shared.set_connection(Connection::Connecting);
            let looked_up = tokio::select! {
                r = resolve(&ident.appliance) => r,
                _ = shutdown.cancelled() => return Ok(()),
            };
            let end = match looked_up {
                Ok(addr) => match endpoints.for_target(addr) {
                    Ok(endpoint) => {
                        debug!(%addr, "connecting");
                        connect_and_stream(endpoint, &client_cfg, addr, &cfg, &shared, &shutdown, &mut backoff, &remote, offer).await
                    }
                    Err(e) => Err(e),
                },
                Err(e) => Err(e),
            };
            if !matches!(end, Ok(SessionEnd::Shutdown)) {
                shared.set_connection(Connection::Disconnected);
            }
            let offered = offer;
            offer = SESSION_PROTOCOL_VERSION;
            let fallback = match &end {
                Ok(SessionEnd::Closed(c)) => older_offer(offered, c),
                _ => None,
            };
            if let (Some(older), Ok(SessionEnd::Closed(c))) = (fallback, &end) {
                warn!(
                    offered,
                    message = %c.message,
                    "the appliance speaks an older session protocol; reconnecting with protocol {older} (records only, no remote commands)"
                );
                offer = older;
                continue;
            }
            match end {
                Ok(SessionEnd::Shutdown) => return Ok(()),
                Ok(SessionEnd::Closed(c)) if c.reason.is_permanent() => {
                    let e = PermanentRefusal {
                        reason: c.reason,
                        message: c.message,
                    };
                    shared.note_error(e.to_string());
                    return Err(anyhow::Error::new(e));
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
    let flushed = shared.buffer().flush();
    endpoints.close(b"agent stopping").await;
    result?;
    flushed.context("flushing the offline buffer at stop")?;
    Ok(())
}

/// Reopens the offline buffer whenever a sled error closed it (sled keeps
/// its first I/O error for the life of the open database, so without a
/// reopen a disk that filled up once would fail every write until the agent
/// restarts). Attempts follow a full-jitter back-off from `base` to `max`;
/// each failure is recorded in the status. Runs until `shutdown`.
pub async fn repair_buffer(
    shared: Arc<Shared>,
    base: Duration,
    max: Duration,
    shutdown: CancellationToken,
) {
    let mut backoff = Backoff::new(base, max);
    loop {
        if !shared.buffer().is_closed() {
            backoff.reset();
            tokio::select! {
                _ = shared.buffer_failed.notified() => {}
                _ = tokio::time::sleep(BUFFER_CHECK_EVERY) => {}
                _ = shutdown.cancelled() => return,
            }
            continue;
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff.next_delay()) => {}
            _ = shutdown.cancelled() => return,
        }
        let s = shared.clone();
        let reopened = tokio::task::spawn_blocking(move || s.buffer().reopen()).await;
        match reopened {
            Ok(Ok(())) => {
                info!(
                    buffered = shared.buffer().len(),
                    "offline buffer reopened after a write failure"
                );
                shared.wake.notify_one();
            }
            Ok(Err(e)) => {
                warn!(error = %e, attempt = backoff.attempt(), "offline buffer: reopening failed; trying again");
                shared.note_error(format!(
                    "reopening the offline buffer after a write failure: {e}"
                ));
            }
            Err(e) => warn!(error = %e, "offline buffer: the reopen task failed"),
        }
    }
}

/// The session machine's clock: milliseconds since the session started.
struct Clock(tokio::time::Instant);

impl Clock {
    fn now(&self) -> u64 {
        self.0.elapsed().as_millis() as u64
    }

    fn at(&self, ms: u64) -> tokio::time::Instant {
        self.0 + Duration::from_millis(ms)
    }
}

/// The receiving half of a flow's stream.
struct FlowRead {
    recv: quinn::RecvStream,
    reader: FrameReader,
}

/// The sending half of a flow's stream, and what waits to be written.
struct FlowWrite {
    send: quinn::SendStream,
    out: PendingWrites,
}

async fn fill(slot: &mut Option<FlowRead>) -> Result<bool, FrameError> {
    match slot {
        Some(r) => r.reader.fill(&mut r.recv).await,
        None => std::future::pending().await,
    }
}

async fn drive(slot: &mut Option<FlowWrite>) -> std::io::Result<()> {
    match slot {
        Some(w) if !w.out.is_empty() => w.out.drive(&mut w.send).await,
        _ => std::future::pending().await,
    }
}

async fn recv_opt<T>(rx: &mut Option<tokio::sync::mpsc::Receiver<T>>) -> Option<T> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

async fn recv_input(
    rx: &mut Option<tokio::sync::mpsc::UnboundedReceiver<LinkInput>>,
) -> Option<LinkInput> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// Tells remote management the session ended, however it ends.
struct SessionDown<'a> {
    remote: &'a Arc<dyn RemoteHost>,
    up: bool,
}

impl Drop for SessionDown<'_> {
    fn drop(&mut self) {
        if self.up {
            self.remote.session_down();
        }
    }
}

/// A stream failed: the appliance's close reason if it closed the
/// connection, otherwise the stream's end.
fn on_stream_error(s: &mut AgentSession, conn: &quinn::Connection, flow: Flow, detail: &str) {
    match closed_by_appliance(conn) {
        Some(c) => s.handle_peer_close(c),
        None => s.handle_stream_end(flow, detail),
    }
}

fn flow_slot(flow: Flow) -> usize {
    match flow {
        Flow::Commands => 0,
        _ => 1,
    }
}

/// The older protocol to offer at once when the appliance refused the
/// offered one as unsupported (an appliance older than this agent), if
/// there is one left to try.
fn older_offer(offered: u16, close: &Close) -> Option<u16> {
    (close.reason == CloseReason::UnsupportedVersion && offered > MIN_SESSION_PROTOCOL_VERSION)
        .then_some(MIN_SESSION_PROTOCOL_VERSION)
}

#[allow(clippy::too_many_arguments)]
async fn connect_and_stream(
    endpoint: &quinn::Endpoint,
    client_cfg: &quinn::ClientConfig,
    addr: SocketAddr,
    cfg: &AgentConfig,
    shared: &Arc<Shared>,
    shutdown: &CancellationToken,
    backoff: &mut Backoff,
    remote: &Arc<dyn RemoteHost>,
    offer: u16,
) -> anyhow::Result<SessionEnd> {
    let conn = endpoint
        .connect_with(client_cfg.clone(), addr, APPLIANCE_SERVER_NAME)
        .context("starting connection")?
        .await
        .map_err(|e| close_reason_error(&e).unwrap_or_else(|| anyhow!(e)))
        .context("connecting")?;
    let (send, recv) = match conn.open_bi().await {
        Ok(stream) => stream,
        // Closed before the stream could be opened (a refusal right after
        // the handshake): the appliance's reason decides, as on any close.
        Err(e) => {
            return match closed_by_appliance(&conn) {
                Some(c) => Ok(SessionEnd::Closed(c)),
                None => Err(anyhow!(e).context("opening the session stream")),
            };
        }
    };
    let clock = Clock(tokio::time::Instant::now());
    let mut s = AgentSession::new(
        SessionConfig {
            protocol_version: offer,
            agent_version: AGENT_VERSION.to_string(),
            heartbeat_interval_ms: cfg.heartbeat_interval.as_millis().min(u32::MAX as u128) as u32,
            metrics_interval_ms: cfg.metrics_interval.as_millis().min(u32::MAX as u128) as u32,
            max_in_flight_records: cfg.max_in_flight_records,
            ack_timeout_ms: cfg.ack_timeout.as_millis().min(u64::MAX as u128) as u64,
            max_ack_timeout_ms: cfg.ack_timeout_max.as_millis().min(u64::MAX as u128) as u64,
            welcome_timeout_ms: WELCOME_TIMEOUT.as_millis() as u64,
        },
        clock.now(),
    );
    let mut main = FlowWrite {
        send,
        out: PendingWrites::new(),
    };
    let mut main_read = FlowRead {
        recv,
        reader: FrameReader::new(DEFAULT_MAX_FRAME_BYTES),
    };
    let mut reads: [Option<FlowRead>; 2] = [None, None];
    let mut writes: [Option<FlowWrite>; 2] = [None, None];
    let mut down = SessionDown { remote, up: false };
    let (mut inputs, mut outputs, mut chunks) = (None, None, None);
    let end = loop {
        // Act on what the machine decided, then give it records to send.
        feed_records(
            &mut s,
            shared,
            backoff,
            &mut down,
            &mut inputs,
            &mut outputs,
            &mut chunks,
            clock.now(),
        )?;
        // Write what it transmits, each flow on its own stream.
        while let Some(t) = s.poll_transmit() {
            if t.flow == Flow::Records {
                main.out.push(&t.data);
                continue;
            }
            let i = flow_slot(t.flow);
            if writes[i].is_none() {
                match conn.open_bi().await {
                    Ok((send, recv)) => {
                        writes[i] = Some(FlowWrite {
                            send,
                            out: PendingWrites::new(),
                        });
                        reads[i] = Some(FlowRead {
                            recv,
                            reader: FrameReader::new(DEFAULT_MAX_FRAME_BYTES),
                        });
                    }
                    Err(e) => {
                        on_stream_error(&mut s, &conn, t.flow, &e.to_string());
                        break;
                    }
                }
            }
            if let Some(w) = &mut writes[i] {
                w.out.push(&t.data);
            }
        }
        if let Some(end) = s.ended() {
            break end.clone();
        }
        if !main.out.is_empty()
            && let Err(e) = main.out.write_now(&mut main.send).await
        {
            on_stream_error(&mut s, &conn, Flow::Records, &e.to_string());
            continue;
        }
        for (i, w) in writes.iter_mut().enumerate() {
            if let Some(w) = w
                && !w.out.is_empty()
                && let Err(e) = w.out.write_now(&mut w.send).await
            {
                let flow = if i == 0 { Flow::Commands } else { Flow::Files };
                on_stream_error(&mut s, &conn, flow, &e.to_string());
            }
        }
        if s.ended().is_some() {
            continue;
        }
        let deadline = s.poll_timeout();
        let [read0, read1] = &mut reads;
        let [write0, write1] = &mut writes;
        tokio::select! {
            _ = shutdown.cancelled() => {
                s.goodbye("agent stopping");
                while let Some(t) = s.poll_transmit_flow(Flow::Records) {
                    main.out.push(&t.data);
                }
                break Ended::Shutdown;
            }
            read = main_read.reader.fill(&mut main_read.recv) => {
                on_read(&mut s, &conn, Flow::Records, &mut main_read.reader, read, clock.now());
            }
            read = fill(read0) => {
                if let Some(r) = read0 {
                    on_read(&mut s, &conn, Flow::Commands, &mut r.reader, read, clock.now());
                }
            }
            read = fill(read1) => {
                if let Some(r) = read1 {
                    on_read(&mut s, &conn, Flow::Files, &mut r.reader, read, clock.now());
                }
            }
            r = main.out.drive(&mut main.send), if !main.out.is_empty() => {
                if let Err(e) = r {
                    on_stream_error(&mut s, &conn, Flow::Records, &e.to_string());
                }
            }
            r = drive(write0) => {
                if let Err(e) = r {
                    on_stream_error(&mut s, &conn, Flow::Commands, &e.to_string());
                }
            }
            r = drive(write1) => {
                if let Err(e) = r {
                    on_stream_error(&mut s, &conn, Flow::Files, &e.to_string());
                }
            }
            _ = tokio::time::sleep_until(clock.at(deadline.unwrap_or(0))), if deadline.is_some() => {
                s.handle_timeout(clock.now());
            }
            _ = shared.wake.notified() => {}
            input = recv_input(&mut inputs) => match input {
                Some(input) => apply_input(&mut s, input),
                None => inputs = None,
            },
            out = recv_opt(&mut outputs), if s.output_room() > 0 => match out {
                Some(o) => {
                    if let Err(e) = s.send_output(o.id, o.offset, o.bytes) {
                        warn!(error = %e, "command output not sent");
                    }
                }
                None => outputs = None,
            },
            chunk = recv_opt(&mut chunks), if s.file_room() > 0 => match chunk {
                Some(c) => {
                    if let Err(e) = s.send_file_chunk(c) {
                        warn!(error = %e, "file chunk not sent");
                    }
                }
                None => chunks = None,
            },
        }
    };
    drop(down);
    match end {
        Ended::Shutdown => {
            // Best effort: tell the appliance why we leave.
            let _ =
                tokio::time::timeout(Duration::from_secs(1), main.out.drive(&mut main.send)).await;
            let _ = main.send.finish();
            conn.close(CloseReason::Normal.code().into(), b"agent stopping");
            Ok(SessionEnd::Shutdown)
        }
        Ended::Closed(c) => Ok(SessionEnd::Closed(c)),
        Ended::Failed(message) => Err(anyhow!(message)),
    }
}

/// Feeds what a flow's stream delivered to the machine; a stream that
/// ended tells whether the appliance closed the connection.
fn on_read(
    s: &mut AgentSession,
    conn: &quinn::Connection,
    flow: Flow,
    reader: &mut FrameReader,
    read: Result<bool, FrameError>,
    now: u64,
) {
    let ended = match read {
        Ok(true) => None,
        Ok(false) => Some(String::new()),
        Err(FrameError::Io(e)) => Some(e.to_string()),
        Err(e) => return s.handle_malformed(flow, &e),
    };
    if let Some(detail) = ended {
        return on_stream_error(s, conn, flow, &detail);
    }
    loop {
        match reader.try_next::<ApplianceFrame>() {
            Ok(Some(frame)) => s.handle_frame(flow, frame, now),
            Ok(None) => break,
            Err(e) => {
                s.handle_malformed(flow, &e);
                break;
            }
        }
        if s.ended().is_some() {
            break;
        }
    }
}

/// Acts on the machine's events, then gives it the buffered records it
/// asks for (acting on the events each batch causes), until its window is
/// full or the buffer has nothing more.
#[allow(clippy::too_many_arguments)]
fn feed_records(
    s: &mut AgentSession,
    shared: &Shared,
    backoff: &mut Backoff,
    down: &mut SessionDown<'_>,
    inputs: &mut Option<tokio::sync::mpsc::UnboundedReceiver<LinkInput>>,
    outputs: &mut Option<tokio::sync::mpsc::Receiver<outpost_proto::messages::CommandOutput>>,
    chunks: &mut Option<tokio::sync::mpsc::Receiver<outpost_proto::messages::FileChunk>>,
    now: u64,
) -> anyhow::Result<()> {
    drain_events(s, shared, backoff, down, inputs, outputs, chunks)?;
    while let Some(from) = s.records_wanted() {
        let batch =
            shared
                .buffer()
                .read_from(from, FRAME_RECORDS, FRAME_BYTES.min(s.max_frame_bytes()))?;
        if batch.is_empty() {
            break;
        }
        s.send_records(batch, now);
        drain_events(s, shared, backoff, down, inputs, outputs, chunks)?;
    }
    Ok(())
}

/// Acts on the machine's events: buffer acks, status, remote management.
#[allow(clippy::too_many_arguments)]
fn drain_events(
    s: &mut AgentSession,
    shared: &Shared,
    backoff: &mut Backoff,
    down: &mut SessionDown<'_>,
    inputs: &mut Option<tokio::sync::mpsc::UnboundedReceiver<LinkInput>>,
    outputs: &mut Option<tokio::sync::mpsc::Receiver<outpost_proto::messages::CommandOutput>>,
    chunks: &mut Option<tokio::sync::mpsc::Receiver<outpost_proto::messages::FileChunk>>,
) -> anyhow::Result<()> {
    while let Some(ev) = s.poll_event() {
        match ev {
            AgentEvent::Established {
                protocol_version,
                last_stored_seq,
                ..
            } => {
                {
                    let mut b = shared.buffer();
                    // The appliance stored numbers this buffer never gave
                    // out: the buffer was reset, and its records (numbered
                    // from 1 again) were never sent. Acking up to the
                    // appliance's mark would delete them unsent.
                    if last_stored_seq >= b.next_seq() {
                        let renumbered = b.renumber_above(last_stored_seq)?;
                        if renumbered > 0 {
                            warn!(
                                renumbered,
                                last_stored_seq,
                                "the appliance has stored more of this device's records than this \
                                 buffer ever numbered (was its directory reset?): the buffered \
                                 records are sent under new numbers above its mark"
                            );
                        }
                    }
                    b.ack(last_stored_seq)?;
                    b.ensure_next_seq_above(last_stored_seq)?;
                }
                backoff.reset();
                shared.set_connection(Connection::Connected);
                info!(
                    last_stored_seq,
                    protocol = protocol_version,
                    buffered = shared.buffer().len(),
                    "session established"
                );
                if s.has_remote_flows() {
                    let (l, LinkInbox { rx, output, files }) = RemoteLink::new(s.max_chunk_bytes());
                    *inputs = Some(rx);
                    *outputs = Some(output);
                    *chunks = Some(files);
                    down.up = true;
                    down.remote.session_up(l);
                }
            }
            AgentEvent::RecordsAcked { up_to } => {
                shared.buffer().ack(up_to)?;
                shared.link().last_ack_ms = Some(now_ms());
            }
            AgentEvent::RecordUndeliverable { seq, len, max } => {
                warn!(
                    seq,
                    len,
                    max,
                    "dropping a record larger than the appliance's frame limit (max_frame_bytes)"
                );
                shared.buffer().drop_undeliverable(seq)?;
            }
            AgentEvent::Pressure {
                queue_delay_ms,
                patience_ms,
            } => {
                // The appliance is slow, not gone: keep the connection.
                debug!(
                    queue_delay_ms,
                    patience_ms, "the appliance is slow; waiting longer for acknowledgements"
                );
            }
            other => down.remote.event(other),
        }
    }
    Ok(())
}

/// Applies what remote management asked for.
fn apply_input(s: &mut AgentSession, input: LinkInput) {
    let r = match input {
        LinkInput::AckCommand(id) => s.ack_command(id),
        LinkInput::Started(id, ms) => s.command_started(id, ms),
        LinkInput::Result(r) => s.send_result(r),
        LinkInput::AckFile(t, up_to) => s.ack_file(t, up_to),
        LinkInput::AbortFile(t, reason) => s.abort_file(t, &reason),
    };
    if let Err(e) = r {
        warn!(error = %e, "remote answer not sent");
    }
}

/// Encodes into `out` the next `Records` frame: the buffered records from
/// `from` on, as many as fit in `max_frame` bytes (the limit the appliance
/// announced in its `Welcome`), at most [`FRAME_RECORDS`] and
/// [`FRAME_BYTES`]. Returns the last sequence number in the frame, or `None`
/// when there is nothing to send.
///
/// A record that alone exceeds `max_frame` can never be delivered to this
/// appliance: it is dropped from the buffer, counted in `dropped` (reported
/// in heartbeats) and logged, so the backlog behind it drains. (The session
/// does the same through its machine; this is the same decision on a
/// buffer, for tools and tests.)
pub fn next_frame(
    b: &mut Buffer,
    mut from: u64,
    max_frame: usize,
    out: &mut BytesMut,
) -> anyhow::Result<Option<u64>> {
    loop {
        let batch = b.read_from(from, FRAME_RECORDS, FRAME_BYTES.min(max_frame))?;
        out.clear();
        match encode_records(batch, max_frame, out)? {
            None => return Ok(None),
            Some(EncodedRecords::Frame { last_seq, .. }) => return Ok(Some(last_seq)),
            Some(EncodedRecords::Undeliverable { seq, len, max }) => {
                warn!(
                    seq,
                    len,
                    max,
                    "dropping a record larger than the appliance's frame limit (max_frame_bytes)"
                );
                b.drop_undeliverable(seq)?;
                from = seq.saturating_add(1);
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

fn spawn_collectors(
    cfg: &AgentConfig,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
) -> Vec<tokio::task::JoinHandle<()>> {
    let collector = Arc::new(Mutex::new(Collector::with_virtual_interfaces(
        cfg.include_virtual_interfaces,
    )));
    let mut tasks = Vec::new();
    // Package scans (issue 14).
    tasks.extend(crate::scan::spawn(cfg, shared.clone(), shutdown.clone()));

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
    /// A device identity issued by `ca`, for an appliance at `appliance`.
    fn test_identity(ca: &outpost_proto::pki::CertAuthority, appliance: &str) -> Identity {
        use outpost_proto::pki::{ClientSubject, Principal, generate_csr};
        use outpost_proto::{CustomerId, DeviceId, TenantId};
        let device_id = DeviceId(0xa9e);
        let (key_pem, csr) = generate_csr("device").unwrap();
        let subject = ClientSubject {
            principal: Principal::Device(device_id),
            tenant: TenantId::from("test-msp"),
            customer: CustomerId::from("test-customer"),
        };
        let cert = ca
            .sign_client_csr(&csr, &subject, Duration::from_secs(3600))
            .unwrap();
        Identity {
            device_id,
            appliance: appliance.to_string(),
            tenant: subject.tenant,
            customer: subject.customer,
            ca: ca.cert_der().clone(),
            cert,
            key: tls::key_from_pem(&key_pem, "device.key").unwrap(),
        }
    }

    /// A stand-in appliance on loopback: a real QUIC server with the
    /// session ALPN that reads each agent's Hello and closes the connection
    /// with `reason`. Counts the sessions it saw.
    struct FakeAppliance {
        addr: SocketAddr,
        sessions: Arc<std::sync::atomic::AtomicUsize>,
        _endpoint: quinn::Endpoint,
    }

    impl FakeAppliance {
        fn start(ca: &outpost_proto::pki::CertAuthority, reason: CloseReason) -> FakeAppliance {
            let issued = ca.issue_server_cert(&[APPLIANCE_SERVER_NAME]).unwrap();
            let key = tls::key_from_pem(&issued.key_pem, "server key").unwrap();
            let cfg = tls::server_config(
                vec![issued.cert_der.clone(), ca.cert_der().clone()],
                key,
                ca.cert_der().clone(),
                &[ALPN_SESSION],
            )
            .unwrap();
            let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(cfg).unwrap();
            let server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
            let endpoint = quinn::Endpoint::server(server, "127.0.0.1:0".parse().unwrap()).unwrap();
            let sessions = Arc::new(std::sync::atomic::AtomicUsize::new(0));
            let (ep, count) = (endpoint.clone(), sessions.clone());
            tokio::spawn(async move {
                while let Some(incoming) = ep.accept().await {
                    let count = count.clone();
                    tokio::spawn(async move {
                        let Ok(conn) = incoming.await else { return };
                        if let Ok((_send, mut recv)) = conn.accept_bi().await {
                            let mut hello = [0u8; 4];
                            let _ = recv.read_exact(&mut hello).await;
                        }
                        count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        conn.close(reason.code().into(), reason.label().as_bytes());
                    });
                }
            });
            FakeAppliance {
                addr: endpoint.local_addr().unwrap(),
                sessions,
                _endpoint: endpoint,
            }
        }

        fn sessions(&self) -> usize {
            self.sessions.load(std::sync::atomic::Ordering::SeqCst)
        }
    }

    /// Fast intervals and back-off, no package scans: for run-loop tests.
    fn quick_config() -> AgentConfig {
        AgentConfig {
            heartbeat_interval: Duration::from_secs(1),
            metrics_interval: Duration::from_secs(3600),
            inventory_interval: Duration::from_secs(3600),
            reconnect_base: Duration::from_millis(20),
            reconnect_max: Duration::from_millis(100),
            package_scan: false,
            ..AgentConfig::default()
        }
    }

    async fn wait_until(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
        let deadline = tokio::time::Instant::now() + limit;
        while !done() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "not within {limit:?}: {what}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_unresolvable_appliance_still_buffers_and_keeps_retrying() {
        let ca = outpost_proto::pki::CertAuthority::generate("test ca").unwrap();
        let ident = test_identity(&ca, "appliance.invalid:4433");
        let dir = tempfile::tempdir().unwrap();
        let shared = Shared::new(Buffer::open(dir.path(), 1 << 20).unwrap());
        let lookups = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let dns = net::dns_resolver();
        let counted = lookups.clone();
        let resolve: net::Resolver = Arc::new(move |addr: &str| {
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            dns(addr)
        });
        let shutdown = CancellationToken::new();
        let run = tokio::spawn(run_resolving(
            ident,
            quick_config(),
            shared.clone(),
            shutdown.clone(),
            Arc::new(RefuseRemote::default()),
            resolve,
        ));
        wait_until(
            "records buffered and three lookups",
            Duration::from_secs(10),
            || shared.buffer().len() >= 2 && lookups.load(std::sync::atomic::Ordering::SeqCst) >= 3,
        )
        .await;
        assert!(!run.is_finished(), "the agent keeps running");
        let link = shared.link().clone();
        assert_ne!(link.connection, Connection::Connected);
        let error = link.last_error.unwrap_or_default();
        assert!(error.contains("appliance.invalid:4433"), "{error}");
        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(10), run)
            .await
            .expect("stops when asked")
            .unwrap()
            .expect("a clean stop");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn each_connect_attempt_looks_the_appliance_up_again() {
        let ca = outpost_proto::pki::CertAuthority::generate("test ca").unwrap();
        let old = FakeAppliance::start(&ca, CloseReason::ShuttingDown);
        let new = FakeAppliance::start(&ca, CloseReason::ShuttingDown);
        let dir = tempfile::tempdir().unwrap();
        let shared = Shared::new(Buffer::open(dir.path(), 1 << 20).unwrap());
        let lookups = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (counted, a, b) = (lookups.clone(), old.addr, new.addr);
        let resolve: net::Resolver = Arc::new(move |_: &str| {
            let n = counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Box::pin(async move { Ok(if n == 0 { a } else { b }) })
        });
        let shutdown = CancellationToken::new();
        let run = tokio::spawn(run_resolving(
            test_identity(&ca, "appliance.example:4433"),
            quick_config(),
            shared.clone(),
            shutdown.clone(),
            Arc::new(RefuseRemote::default()),
            resolve,
        ));
        wait_until(
            "a session at the new address",
            Duration::from_secs(10),
            || new.sessions() >= 1,
        )
        .await;
        assert_eq!(
            old.sessions(),
            1,
            "the first attempt went to the old address"
        );
        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(10), run)
            .await
            .expect("stops when asked")
            .unwrap()
            .expect("a clean stop");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_permanent_refusal_ends_the_run_with_its_exit_status() {
        for reason in [
            CloseReason::Revoked,
            CloseReason::UnknownDevice,
            CloseReason::UnsupportedVersion,
        ] {
            let ca = outpost_proto::pki::CertAuthority::generate("test ca").unwrap();
            let appliance = FakeAppliance::start(&ca, reason);
            let dir = tempfile::tempdir().unwrap();
            let shared = Shared::new(Buffer::open(dir.path(), 1 << 20).unwrap());
            let addr = appliance.addr;
            let resolve: net::Resolver = Arc::new(move |_: &str| Box::pin(async move { Ok(addr) }));
            let run = run_resolving(
                test_identity(&ca, "appliance.example:4433"),
                quick_config(),
                shared.clone(),
                CancellationToken::new(),
                Arc::new(RefuseRemote::default()),
                resolve,
            );
            let e = tokio::time::timeout(Duration::from_secs(10), run)
                .await
                .expect("the run ends by itself")
                .expect_err("a permanent refusal is an error");
            assert_eq!(exit_status(&e), EXIT_PERMANENT_REFUSAL, "{reason:?}: {e:#}");
            assert!(format!("{e:#}").contains(reason.label()), "{e:#}");
            let noted = shared.link().last_error.clone().unwrap_or_default();
            assert!(noted.contains(reason.label()), "{noted}");
            // Not retried (an unsupported version gets one retry with protocol 1).
            let want = if reason == CloseReason::UnsupportedVersion {
                2
            } else {
                1
            };
            assert_eq!(appliance.sessions(), want, "{reason:?}");
        }
        assert_eq!(exit_status(&anyhow!("connecting: timed out")), 1);
    }

    /// systemd must not restart an agent the appliance refused for good.
    #[test]
    fn the_unit_does_not_restart_a_permanently_refused_agent() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../packaging/agent/outpost-agent.service"
        );
        let unit = std::fs::read_to_string(path).unwrap();
        let prevent: Vec<&str> = unit
            .lines()
            .filter_map(|l| l.trim().strip_prefix("RestartPreventExitStatus="))
            .flat_map(|v| v.split_whitespace())
            .collect();
        assert!(
            prevent.contains(&EXIT_PERMANENT_REFUSAL.to_string().as_str()),
            "{path}: RestartPreventExitStatus= must name {EXIT_PERMANENT_REFUSAL}, has {prevent:?}"
        );
        assert!(unit.contains("\nRestart=on-failure\n"), "{path}");
    }

    /// The Records frames `s` transmits, as their records' numbers.
    fn sent_seqs(s: &mut AgentSession) -> Vec<u64> {
        let mut seqs = Vec::new();
        while let Some(t) = s.poll_transmit_flow(Flow::Records) {
            let mut buf = BytesMut::from(&t.data[..]);
            while let Some(payload) = split_frame(&mut buf, DEFAULT_MAX_FRAME_BYTES).unwrap() {
                if let AgentFrame::Records(records) = decode_payload(&payload).unwrap() {
                    seqs.extend(records.iter().map(|r| r.seq));
                }
            }
        }
        seqs
    }

    #[test]
    fn a_reset_buffer_is_sent_above_the_appliances_mark_not_acked() {
        let dir = tempfile::tempdir().unwrap();
        let shared = Shared::new(Buffer::open(dir.path(), 1 << 20).unwrap());
        for i in 1..=5 {
            assert_eq!(shared.record_at(i, metrics(2)).unwrap(), i);
        }
        let mut s = AgentSession::new(SessionConfig::new(AGENT_VERSION), 0);
        s.handle_frame(
            Flow::Records,
            ApplianceFrame::Welcome(outpost_proto::messages::Welcome {
                protocol_version: SESSION_PROTOCOL_VERSION,
                device_id: outpost_proto::DeviceId(0xa9e),
                last_stored_seq: 1000,
                max_frame_bytes: DEFAULT_MAX_FRAME_BYTES as u32,
            }),
            0,
        );
        let remote: Arc<dyn RemoteHost> = Arc::new(RefuseRemote::default());
        let mut down = SessionDown {
            remote: &remote,
            up: false,
        };
        let mut backoff = Backoff::new(Duration::from_millis(10), Duration::from_millis(10));
        let (mut inputs, mut outputs, mut chunks) = (None, None, None);
        feed_records(
            &mut s,
            &shared,
            &mut backoff,
            &mut down,
            &mut inputs,
            &mut outputs,
            &mut chunks,
            0,
        )
        .unwrap();
        assert_eq!(sent_seqs(&mut s), (1001..=1005).collect::<Vec<_>>());
        let b = shared.buffer();
        assert_eq!(
            (b.len(), b.dropped(), b.renumbered()),
            (5, 0, 5),
            "none dropped"
        );
        assert_eq!(b.next_seq(), 1006);
        assert_eq!(b.acked(), 1000);
    }

    #[test]
    fn records_the_appliance_already_stored_are_acked_at_welcome() {
        let dir = tempfile::tempdir().unwrap();
        let shared = Shared::new(Buffer::open(dir.path(), 1 << 20).unwrap());
        for i in 1..=5 {
            shared.record_at(i, metrics(2)).unwrap();
        }
        let mut s = AgentSession::new(SessionConfig::new(AGENT_VERSION), 0);
        s.handle_frame(
            Flow::Records,
            ApplianceFrame::Welcome(outpost_proto::messages::Welcome {
                protocol_version: SESSION_PROTOCOL_VERSION,
                device_id: outpost_proto::DeviceId(0xa9e),
                last_stored_seq: 3,
                max_frame_bytes: DEFAULT_MAX_FRAME_BYTES as u32,
            }),
            0,
        );
        let remote: Arc<dyn RemoteHost> = Arc::new(RefuseRemote::default());
        let mut down = SessionDown {
            remote: &remote,
            up: false,
        };
        let mut backoff = Backoff::new(Duration::from_millis(10), Duration::from_millis(10));
        let (mut inputs, mut outputs, mut chunks) = (None, None, None);
        feed_records(
            &mut s,
            &shared,
            &mut backoff,
            &mut down,
            &mut inputs,
            &mut outputs,
            &mut chunks,
            0,
        )
        .unwrap();
        assert_eq!(
            sent_seqs(&mut s),
            [4, 5],
            "stored before its ack was lost: not resent"
        );
        let b = shared.buffer();
        assert_eq!((b.len(), b.renumbered()), (2, 0));
    }

    /// Set (to a scratch directory) in the child process of
    /// `a_full_disk_is_recovered_from_without_a_restart`.
    const DISK_FULL_CHILD: &str = "OUTPOST_TEST_DISK_FULL_CHILD";

    /// The agent's buffer recovers from sled's sticky write error without a
    /// restart. The file size limit (`RLIMIT_FSIZE`, with `SIGXFSZ`
    /// ignored) is process-wide, so the scenario runs in a child process:
    /// this test binary again, running `disk_full_child` alone.
    #[test]
    fn a_full_disk_is_recovered_from_without_a_restart() {
        // This very binary, even if a rebuild replaced the file meanwhile.
        let exe = format!("/proc/{}/exe", std::process::id());
        let dir = tempfile::tempdir().unwrap();
        let mut child = std::process::Command::new("sh");
        child
            .args(["-c", "trap '' XFSZ; exec \"$@\"", "sh"])
            .arg(&exe)
            .args([
                "session::tests::disk_full_child",
                "--exact",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(DISK_FULL_CHILD, dir.path());
        let out = child.output().unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "{text}");
        assert!(text.contains("disk_full_child: recovered"), "{text}");
    }

    fn set_file_size_limit(bytes: Option<u64>) {
        use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
        let hard = getrlimit(Resource::Fsize).maximum;
        let current = bytes.or(hard);
        setrlimit(
            Resource::Fsize,
            Rlimit {
                current,
                maximum: hard,
            },
        )
        .unwrap();
    }

    /// The child of `a_full_disk_is_recovered_from_without_a_restart`
    /// (does nothing when run on its own).
    #[test]
    #[ignore = "the child process of a_full_disk_is_recovered_from_without_a_restart"]
    fn disk_full_child() {
        let Some(dir) = std::env::var_os(DISK_FULL_CHILD) else {
            return;
        };
        let dir = std::path::PathBuf::from(dir).join("buffer");
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let shared = Shared::new(Buffer::open(&dir, 64 << 20).unwrap());
            let mut last_ok = 0;
            for _ in 0..20 {
                last_ok = shared.record(metrics(40)).unwrap();
            }
            let shutdown = CancellationToken::new();
            let repair = tokio::spawn(repair_buffer(
                shared.clone(),
                Duration::from_millis(50),
                Duration::from_millis(200),
                shutdown.clone(),
            ));

            // The disk fills up: no file may grow any more.
            let db_len = std::fs::metadata(dir.join("db")).unwrap().len();
            set_file_size_limit(Some(db_len));
            let mut failed = None;
            for _ in 0..20_000 {
                match shared.record(metrics(40)) {
                    Ok(seq) => last_ok = seq,
                    Err(e) => {
                        failed = Some(format!("{e:#}"));
                        break;
                    }
                }
            }
            let failed = failed.expect("appends fail once the file cannot grow");
            assert!(failed.contains("offline buffer"), "{failed}");
            let noted = shared.link().last_error.clone().unwrap_or_default();
            assert!(noted.contains("offline buffer"), "status: {noted}");
            // While the disk is full, appends keep failing (and the repair
            // task's reopen attempts are refused or fail again).
            tokio::time::sleep(Duration::from_millis(300)).await;

            // Space again: appends succeed within bounded time.
            set_file_size_limit(None);
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            let seq = loop {
                match shared.record(metrics(40)) {
                    Ok(seq) => break seq,
                    Err(e) => assert!(
                        tokio::time::Instant::now() < deadline,
                        "appends still fail 10 s after the disk has space again: {e:#}"
                    ),
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            };
            assert!(
                seq > last_ok,
                "sequence numbers are not reused: {seq} after {last_ok}"
            );
            {
                let mut b = shared.buffer();
                assert!(b.write_failures() >= 1);
                let kept = b.read_from(1, 100, usize::MAX).unwrap();
                assert_eq!(
                    kept.iter().take(20).map(|r| r.seq).collect::<Vec<_>>(),
                    (1..=20).collect::<Vec<_>>(),
                    "what was durable before the disk filled is still there"
                );
            }
            let status = crate::status::snapshot(&shared, "appliance:4433", 0, now_ms());
            assert!(status.buffer_write_failures >= 1);
            assert!(
                status
                    .last_error
                    .as_deref()
                    .unwrap_or("")
                    .contains("offline buffer"),
                "{status:?}"
            );
            shutdown.cancel();
            repair.await.unwrap();
            println!(
                "disk_full_child: recovered (seq {seq} after {last_ok}; first failure: {failed})"
            );
        });
    }

    #[test]
    fn an_appliance_refusing_protocol_2_gets_one_retry_with_protocol_1() {
        let refusal = |reason| Close {
            reason,
            message: "agent speaks protocol 2, this appliance speaks 1".into(),
        };
        assert_eq!(
            older_offer(
                SESSION_PROTOCOL_VERSION,
                &refusal(CloseReason::UnsupportedVersion)
            ),
            Some(1)
        );
        assert_eq!(
            older_offer(1, &refusal(CloseReason::UnsupportedVersion)),
            None,
            "refused at 1 too: permanent, as before"
        );
        assert_eq!(
            older_offer(SESSION_PROTOCOL_VERSION, &refusal(CloseReason::Revoked)),
            None
        );
        assert!(
            refusal(CloseReason::UnsupportedVersion)
                .reason
                .is_permanent()
        );
    }
}
