//! One agent session: authenticate by client certificate, then drive the
//! I/O-free session machine (`outpost_proto::session::appliance`): frames
//! read from each flow's stream go into it; records it hands out go to the
//! writer queue, and the acks the writer publishes go back into it as they
//! become durable; command and file events go to the remote host
//! ([`super::remote`]); what it transmits is written on each flow's own
//! stream, so a flow whose reader is slow holds up only itself.
//!
//! A session reads its records stream only while its records in the writer
//! queue fit its byte budget ([`SessionBudget`]): over it, the session keeps
//! sending acks (and serving its other flows) but reads no records, so QUIC
//! flow control slows that agent alone. If the writer thread fails, the
//! session closes with the reason.
//!
//! This module moves bytes; protocol decisions (ordering, versions,
//! windows) are the machine's.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use outpost_proto::DeviceId;
use outpost_proto::frame::{FrameReader, PendingWrites};
use outpost_proto::messages::{AgentFrame, CloseReason, Flow, Record, RecordBody};
use outpost_proto::pki::{CertIdentity, Principal};
use outpost_proto::session::appliance::{ApplianceConfig, ApplianceEvent, ApplianceSession};
use outpost_storage::ingest::IncomingRecords;
use outpost_storage::registry;
use rustls::pki_types::CertificateDer;
use tokio::sync::watch;
use tracing::{Instrument, debug, info, info_span, warn};

use super::IngestCtx;
use super::remote::{LinkInbox, LinkInput, RemoteLink};
use super::writer::{AckState, SessionBudget, WriterHealth};

/// Deadline for the agent's Hello after the handshake.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// On shutdown, how long a session waits for its last records to be acked.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(3);

fn close(conn: &quinn::Connection, reason: CloseReason, message: &str) {
    conn.close(reason.code().into(), message.as_bytes());
}

/// Reads the device identity from the verified client certificate and
/// checks it against the registry.
fn authenticate(
    conn: &quinn::Connection,
    ctx: &IngestCtx,
) -> Result<DeviceId, (CloseReason, String)> {
    let certs = conn
        .peer_identity()
        .and_then(|any| any.downcast::<Vec<CertificateDer<'static>>>().ok())
        .filter(|c| !c.is_empty())
        .ok_or_else(|| {
            (
                CloseReason::ClientCertificateRequired,
                "sessions require the device's client certificate; enroll first".to_string(),
            )
        })?;
    let ident = CertIdentity::from_der(&certs[0])
        .map_err(|e| (CloseReason::ProtocolViolation, e.to_string()))?;
    let Principal::Device(device) = ident.principal else {
        return Err((
            CloseReason::UnknownDevice,
            "not a device certificate".into(),
        ));
    };
    let record = registry::get(&ctx.store, device)
        .map_err(|e| {
            (
                CloseReason::Internal,
                format!("registry lookup failed: {e}"),
            )
        })?
        .ok_or_else(|| {
            (
                CloseReason::UnknownDevice,
                format!("device {device} is not registered on this appliance"),
            )
        })?;
    if record.revoked_at_ms.is_some() {
        return Err((
            CloseReason::Revoked,
            format!("device {device} has been revoked"),
        ));
    }
    if record.cert_serial != ident.serial_hex || record.tenant != ident.tenant {
        return Err((
            CloseReason::Revoked,
            format!("this certificate of device {device} was replaced by a newer enrollment"),
        ));
    }
    Ok(device)
}

/// Serves one session connection until it ends.
pub async fn serve(conn: quinn::Connection, ctx: Arc<IngestCtx>) {
    let remote = conn.remote_address();
    if ctx.writer.health().failure().is_some() {
        let message = ctx.writer.health().close_message();
        ctx.metrics.reject("writer_failed");
        warn!(%remote, message, "session refused");
        close(&conn, CloseReason::Internal, &message);
        return;
    }
    let device = match authenticate(&conn, &ctx) {
        Ok(d) => d,
        Err((reason, message)) => {
            ctx.metrics.reject(reason.label());
            warn!(%remote, reason = reason.label(), message, "session refused");
            close(&conn, reason, &message);
            return;
        }
    };
    let span = info_span!("session", device = %device, %remote);
    let reg = ctx.live.insert(device, conn.clone());
    match run(&conn, &ctx, device, reg).instrument(span.clone()).await {
        Ok(()) => {}
        Err((reason, message)) => {
            span.in_scope(|| warn!(reason = reason.label(), message, "session closed"));
            if reason != CloseReason::Normal {
                ctx.metrics.reject(reason.label());
            }
            close(&conn, reason, &message);
        }
    }
    ctx.live.remove(device, reg);
}

type SessionResult = Result<(), (CloseReason, String)>;

/// Why a session ends when the writer refused its records or its Hello:
/// a failed writer is the appliance's fault (`Internal`, with the reason the
/// operator sees in the log); a writer that stopped without failing is the
/// appliance shutting down, and the agent should reconnect to the next one.
fn writer_error(health: &WriterHealth, e: anyhow::Error) -> (CloseReason, String) {
    if health.failure().is_some() {
        (CloseReason::Internal, health.close_message())
    } else {
        (CloseReason::ShuttingDown, format!("{e:#}"))
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

/// The receiving half of a further stream of the session: the command or
/// the file flow, named by its first frame.
struct FlowRead {
    flow: Option<Flow>,
    recv: quinn::RecvStream,
    reader: FrameReader,
    /// The agent finished (or reset) its side: nothing more to read.
    done: bool,
}

/// The sending half of a further stream.
struct FlowWrite {
    flow: Option<Flow>,
    send: quinn::SendStream,
    out: PendingWrites,
}

/// Largest chunk taken from a stream at once.
const FLOW_READ_CHUNK_BYTES: usize = 64 * 1024;

/// Reads more of a further stream (pending forever when there is none).
/// Reads QUIC's own chunks: an idle stream holds no read buffer here.
async fn fill(slot: &mut Option<FlowRead>) -> Result<Option<bytes::Bytes>, quinn::ReadError> {
    match slot {
        Some(fr) if !fr.done => fr
            .recv
            .read_chunk(FLOW_READ_CHUNK_BYTES, true)
            .await
            .map(|c| c.map(|c| c.bytes)),
        _ => std::future::pending().await,
    }
}

/// Writes what waits on a further stream (pending forever when nothing does).
async fn drive(slot: &mut Option<FlowWrite>) -> std::io::Result<()> {
    match slot {
        Some(fw) if !fw.out.is_empty() => fw.out.drive(&mut fw.send).await,
        _ => std::future::pending().await,
    }
}

async fn recv_input(
    inputs: &mut Option<tokio::sync::mpsc::UnboundedReceiver<Box<LinkInput>>>,
) -> Option<Box<LinkInput>> {
    match inputs {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

async fn recv_chunk(
    chunks: &mut Option<tokio::sync::mpsc::Receiver<Box<outpost_proto::messages::FileChunk>>>,
) -> Option<Box<outpost_proto::messages::FileChunk>> {
    match chunks {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

type Submit<'a> = Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send + 'a>>;

async fn submitted(slot: &mut Option<(u64, Submit<'_>)>) -> (u64, anyhow::Result<()>) {
    match slot {
        Some((max, fut)) => (*max, fut.await),
        None => std::future::pending().await,
    }
}

fn closed(s: &ApplianceSession) -> SessionResult {
    match s.close_reason() {
        Some((reason, message)) => Err((reason, message.to_string())),
        None => Ok(()),
    }
}

/// Moves what the machine transmits into each flow's pending writes.
fn route(s: &mut ApplianceSession, out: &mut PendingWrites, writes: &mut [Option<FlowWrite>; 2]) {
    while let Some(t) = s.poll_transmit() {
        if t.flow == Flow::Records {
            out.push(&t.data);
        } else if let Some(fw) = writes
            .iter_mut()
            .flatten()
            .find(|fw| fw.flow == Some(t.flow))
        {
            fw.out.push(&t.data);
        }
    }
}

/// A session past its Hello and Welcome, handed from the set-up phase to
/// the established one in a box: an async fn keeps its arguments, and any
/// local borrowed before an await, in its future for its whole life, so
/// passed by value this state would take its space three times in every
/// connection's task (1.8 KB per connection).
struct Established {
    s: ApplianceSession,
    reader: FrameReader,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    out: PendingWrites,
    last_seq: u64,
    clock: Clock,
}

async fn run(
    conn: &quinn::Connection,
    ctx: &IngestCtx,
    device: DeviceId,
    reg: u64,
) -> SessionResult {
    let est = establish(conn, ctx, device).await?;
    let link = if est.s.has_remote_flows() {
        let (link, inbox) = RemoteLink::new(device);
        ctx.live.set_link(device, reg, link.clone());
        ctx.remote.session_up(device, link.clone());
        Some((link, inbox))
    } else {
        None
    };
    let (link, inbox) = match link {
        Some((l, i)) => (Some(l), Some(i)),
        None => (None, None),
    };
    let r = serve_flows(conn, ctx, device, est, inbox).await;
    if let Some(link) = &link {
        ctx.remote.session_down(device, link);
    }
    r
}

/// Takes the agent's Hello, registers the session with the writer and
/// sends the Welcome.
async fn establish(
    conn: &quinn::Connection,
    ctx: &IngestCtx,
    device: DeviceId,
) -> Result<Box<Established>, (CloseReason, String)> {
    let (mut send, mut recv) = tokio::time::timeout(HELLO_TIMEOUT, conn.accept_bi())
        .await
        .map_err(|_| {
            (
                CloseReason::ProtocolViolation,
                "no session stream opened".to_string(),
            )
        })?
        .map_err(|e| (CloseReason::Normal, format!("connection lost: {e}")))?;
    let clock = Clock(tokio::time::Instant::now());
    let mut s = ApplianceSession::new(
        ApplianceConfig {
            device,
            max_frame_bytes: ctx.max_frame_bytes,
            hello_timeout_ms: HELLO_TIMEOUT.as_millis() as u64,
        },
        clock.now(),
    );
    let mut reader = FrameReader::new(ctx.max_frame_bytes);
    let deadline = s.poll_timeout().unwrap_or(0);
    match tokio::time::timeout_at(clock.at(deadline), reader.next::<AgentFrame, _>(&mut recv)).await
    {
        Err(_) => s.handle_timeout(deadline.max(clock.now())),
        Ok(Err(e)) => s.handle_malformed(Flow::Records, &e),
        Ok(Ok(None)) => return Err((CloseReason::Normal, "stream closed before Hello".into())),
        Ok(Ok(Some(frame))) => s.handle_frame(Flow::Records, frame, clock.now()),
    }
    closed(&s)?;
    let Some(ApplianceEvent::Hello(hello)) = s.poll_event() else {
        return Err((
            CloseReason::Internal,
            "the session machine lost the Hello".into(),
        ));
    };
    let agent_version = hello.agent_version.clone();
    let offered = hello.protocol_version;
    let last_seq = ctx
        .writer
        .session(device, hello)
        .await
        .map_err(|e| writer_error(ctx.writer.health(), e))?;
    s.accept(last_seq);
    closed(&s)?;
    let mut out = PendingWrites::new();
    route(&mut s, &mut out, &mut [None, None]);
    out.drive(&mut send)
        .await
        .map_err(|e| (CloseReason::Normal, format!("connection lost: {e}")))?;
    let protocol = s.protocol_version().unwrap_or(offered);
    info!(last_seq, agent_version, protocol, "session established");
    Ok(Box::new(Established {
        s,
        reader,
        send,
        recv,
        out,
        last_seq,
        clock,
    }))
}

/// The established session: records, acks and the further flows until the
/// session ends.
async fn serve_flows(
    conn: &quinn::Connection,
    ctx: &IngestCtx,
    device: DeviceId,
    mut est: Box<Established>,
    inbox: Option<LinkInbox>,
) -> SessionResult {
    let Established {
        s,
        reader,
        send,
        recv,
        out,
        last_seq,
        clock,
    } = &mut *est;
    let last_seq = *last_seq;
    let m = &ctx.metrics;
    let (ack_tx, mut ack_rx) = watch::channel(AckState::Acked(last_seq));
    let ack_tx = Arc::new(ack_tx);
    let budget = SessionBudget::new(ctx.session_max_bytes);
    let mut submitted_up_to = last_seq;
    let mut delays = AckDelays::default();
    let mut submitting: Option<(u64, Submit<'_>)> = None;
    let mut goodbye = false;
    let mut bytes_seen = reader.bytes_read();
    let mut reads: [Option<FlowRead>; 2] = [None, None];
    let mut writes: [Option<FlowWrite>; 2] = [None, None];
    let (mut inputs, mut chunks) = match inbox {
        Some(i) => (Some(i.rx), Some(i.files)),
        None => (None, None),
    };
    loop {
        let mut read_at: Option<Instant> = None;
        let [read0, read1] = &mut reads;
        let [write0, write1] = &mut writes;
        // Protocol 3: when a Pressure frame may be due (records waiting).
        let pressure_at = s.poll_timeout();
        tokio::select! {
            biased;
            _ = ctx.shutdown.cancelled() => {
                // Ack what becomes durable, then leave.
                let acked = drain_acks(&mut ack_rx, s.acked(), submitted_up_to).await;
                ack(s, acked, ctx, &mut delays);
                route(s, out, &mut writes);
                let _ = tokio::time::timeout(DRAIN_TIMEOUT, out.drive(send)).await;
                return Err((CloseReason::ShuttingDown, "appliance shutting down; reconnect later".into()));
            }
            _ = ctx.writer.health().failed() => {
                return Err((CloseReason::Internal, ctx.writer.health().close_message()));
            }
            changed = ack_rx.changed() => {
                if changed.is_err() {
                    return Err((CloseReason::Internal, "writer stopped".into()));
                }
                let state = ack_rx.borrow_and_update().clone();
                match state {
                    AckState::Acked(n) => ack(s, n, ctx, &mut delays),
                    AckState::Failed(msg) => return Err((CloseReason::Internal, msg)),
                }
            }
            _ = tokio::time::sleep_until(clock.at(pressure_at.unwrap_or(0))), if pressure_at.is_some() => {
                let before = s.pressure_frames_sent();
                s.handle_timeout(clock.now());
                m.admission.pressure_frames.inc_by(s.pressure_frames_sent() - before);
            }
            (max, r) = submitted(&mut submitting) => {
                submitting = None;
                r.map_err(|e| writer_error(ctx.writer.health(), e))?;
                submitted_up_to = submitted_up_to.max(max);
            }
            // Chunks as QUIC delivered them: a session waiting for its next
            // heartbeat (most of them, most of the time) holds no buffer.
            read = recv.read_chunk(FLOW_READ_CHUNK_BYTES, true), if submitting.is_none() => {
                match read {
                    Ok(Some(chunk)) => {
                        read_at = Some(Instant::now());
                        reader.push(&chunk.bytes);
                        reader.fill_ready(recv).await;
                    }
                    Ok(None) => {
                        debug!("agent finished its stream");
                        return Ok(());
                    }
                    Err(e) => {
                        debug!(error = %e, "session stream ended");
                        return Ok(());
                    }
                }
                let now_read = reader.bytes_read();
                m.bytes_received.inc_by(now_read - bytes_seen);
                bytes_seen = now_read;
                let now = clock.now();
                loop {
                    match reader.try_next::<AgentFrame>() {
                        Ok(Some(frame)) => {
                            m.frames_received.inc();
                            if let AgentFrame::Records(rs) = &frame {
                                count_kinds(&ctx.metrics, rs);
                            }
                            s.handle_frame(Flow::Records, frame, now);
                            if s.is_closed() {
                                break;
                            }
                        }
                        Ok(None) => break,
                        Err(e) => {
                            s.handle_malformed(Flow::Records, &e);
                            break;
                        }
                    }
                }
                reader.shrink_if_empty();
            }
            read = fill(read0) => read_flow(s, read0, write0, read, clock.now()),
            read = fill(read1) => read_flow(s, read1, write1, read, clock.now()),
            r = out.drive(send), if !out.is_empty() => {
                if r.is_err() {
                    // The agent's stream is gone: the session is over.
                    return Ok(());
                }
            }
            r = drive(write0) => {
                if let Err(e) = r {
                    debug!(error = %e, "a flow stream ended");
                    *write0 = None;
                }
            }
            r = drive(write1) => {
                if let Err(e) = r {
                    debug!(error = %e, "a flow stream ended");
                    *write1 = None;
                }
            }
            accepted = conn.accept_bi(), if s.has_remote_flows() && (read0.is_none() || read1.is_none()) => {
                match accepted {
                    Ok((send, recv)) => {
                        let (r, w) = if read0.is_none() { (read0, write0) } else { (read1, write1) };
                        *r = Some(FlowRead {
                            flow: None,
                            recv,
                            reader: FrameReader::new(ctx.max_frame_bytes),
                            done: false,
                        });
                        *w = Some(FlowWrite {
                            flow: None,
                            send,
                            out: PendingWrites::new(),
                        });
                    }
                    Err(e) => {
                        debug!(error = %e, "connection ended");
                        return Ok(());
                    }
                }
            }
            input = recv_input(&mut inputs) => {
                match input {
                    Some(input) => apply_input(s, *input, ctx),
                    None => inputs = None,
                }
            }
            chunk = recv_chunk(&mut chunks), if s.file_room() > 0 => {
                match chunk {
                    Some(chunk) => {
                        if let Err(e) = s.send_file_chunk(*chunk) {
                            warn!(error = %e, "file chunk not sent");
                            m.reject("file_chunk_refused");
                        }
                    }
                    None => chunks = None,
                }
            }
        }
        closed(s)?;
        // Act on what the frames said.
        let mut batch: Vec<Record> = Vec::new();
        while let Some(ev) = s.poll_event() {
            match ev {
                ApplianceEvent::Records(rs) => {
                    if batch.is_empty() {
                        batch = rs;
                    } else {
                        batch.extend(rs);
                    }
                }
                ApplianceEvent::Goodbye { reason } => {
                    info!(reason, "agent said goodbye");
                    goodbye = true;
                }
                ApplianceEvent::Hello(_) => {}
                other => ctx.remote.event(device, other),
            }
        }
        if let Some(max) = batch.iter().map(|r| r.seq).max() {
            // Replays of what is already acked get no ack of their own.
            if max > s.acked() {
                delays.submitted(max, read_at.unwrap_or_else(Instant::now));
            }
            // Waits for budget (reading no records meanwhile) while acks
            // and the other flows go on.
            let fut = ctx.writer.submit(
                IncomingRecords {
                    device,
                    records: batch,
                },
                ack_tx.clone(),
                &budget,
            );
            submitting = Some((max, Box::pin(fut)));
        }
        if goodbye && submitting.is_none() {
            // Let the last records become durable and acked.
            let acked = drain_acks(&mut ack_rx, s.acked(), submitted_up_to).await;
            ack(s, acked, ctx, &mut delays);
            route(s, out, &mut writes);
            let _ = out.drive(send).await;
            return Ok(());
        }
        route(s, out, &mut writes);
        if !out.is_empty() && out.write_now(send).await.is_err() {
            return Ok(());
        }
    }
}

/// Hands the writer's ack to the machine (an Ack frame if it moved).
fn ack(s: &mut ApplianceSession, up_to: u64, ctx: &IngestCtx, delays: &mut AckDelays) {
    let before = s.acked();
    s.records_durable(up_to);
    if s.acked() > before {
        ctx.metrics.acks_sent.inc();
        delays.acked(s.acked(), &ctx.metrics.ack_delay_seconds);
    }
}

/// The session's submitted groups awaiting their ack: (highest sequence
/// number, when its frame was read), for `outpost_ack_delay_seconds`.
/// Bounded by the session's byte budget; a burst's buffer is freed once acked.
#[derive(Default)]
struct AckDelays(VecDeque<(u64, Instant)>);

impl AckDelays {
    fn submitted(&mut self, up_to: u64, read_at: Instant) {
        self.0.push_back((up_to, read_at));
    }

    /// Observes the delay of every group `up_to` covers.
    fn acked(&mut self, up_to: u64, delay: &prometheus_client::metrics::histogram::Histogram) {
        let now = Instant::now();
        while let Some(&(seq, read_at)) = self.0.front() {
            if seq > up_to {
                break;
            }
            delay.observe(now.duration_since(read_at).as_secs_f64());
            self.0.pop_front();
        }
        if self.0.is_empty() && self.0.capacity() > 16 {
            self.0 = VecDeque::new();
        }
    }
}

/// Feeds what a further stream delivered to the machine.
fn read_flow(
    s: &mut ApplianceSession,
    slot: &mut Option<FlowRead>,
    write: &mut Option<FlowWrite>,
    read: Result<Option<bytes::Bytes>, quinn::ReadError>,
    now: u64,
) {
    let Some(fr) = slot else { return };
    match read {
        Ok(Some(bytes)) => fr.reader.push(&bytes),
        Ok(None) | Err(_) => {
            fr.done = true;
            return;
        }
    }
    loop {
        match fr.reader.try_next::<AgentFrame>() {
            Ok(Some(frame)) => match (fr.flow, frame) {
                (None, AgentFrame::OpenFlow(flow)) => {
                    s.handle_open_flow(flow, now);
                    fr.flow = Some(flow);
                    if let Some(w) = write {
                        w.flow = Some(flow);
                    }
                }
                (None, _) => s.close(
                    CloseReason::ProtocolViolation,
                    "a further stream must start with OpenFlow",
                ),
                (Some(flow), frame) => s.handle_frame(flow, frame, now),
            },
            Ok(None) => break,
            Err(e) => s.handle_malformed(fr.flow.unwrap_or(Flow::Commands), &e),
        }
        if s.is_closed() {
            break;
        }
    }
    // These streams are idle most of the time: keep no buffer between frames.
    fr.reader.shrink_if_empty();
}

/// Applies what the remote host asked for.
fn apply_input(s: &mut ApplianceSession, input: LinkInput, ctx: &IngestCtx) {
    let r = match input {
        LinkInput::SendCommand(c) => s.send_command(c),
        LinkInput::CancelCommand(id) => s.cancel_command(id).map(|_| ()),
        LinkInput::AckResult(id) => s.ack_result(id),
        LinkInput::AckOutput(id, up_to) => s.ack_output(id, up_to),
        LinkInput::AckFile(t, up_to) => s.ack_file(t, up_to),
        LinkInput::AbortFile(t, reason) => s.abort_file(t, &reason),
    };
    if let Err(e) = r {
        warn!(error = %e, "remote request not sent");
        ctx.metrics.reject("remote_request_refused");
    }
}

/// Waits (bounded) until everything submitted is acked; returns the ack.
async fn drain_acks(ack_rx: &mut watch::Receiver<AckState>, mut acked: u64, submitted: u64) -> u64 {
    let _ = tokio::time::timeout(DRAIN_TIMEOUT, async {
        while acked < submitted {
            if ack_rx.changed().await.is_err() {
                break;
            }
            if let AckState::Acked(n) = *ack_rx.borrow_and_update() {
                acked = n;
            }
        }
    })
    .await;
    acked
}

/// Counts `rs` in `outpost_records_received` by kind: one counter update
/// per kind present, no label lookup.
fn count_kinds(metrics: &crate::metrics::Metrics, rs: &[Record]) {
    let mut counts = [0u64; RecordBody::KINDS.len()];
    for r in rs {
        counts[r.body.kind_index()] += 1;
    }
    for (counter, n) in metrics.records_received_by_kind.iter().zip(counts) {
        if n > 0 {
            counter.inc_by(n);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The size of the future an async fn returns, without calling it.
    fn future_size<F, Fut>(_: F) -> usize
    where
        F: FnOnce(quinn::Connection, Arc<IngestCtx>) -> Fut,
    {
        std::mem::size_of::<Fut>()
    }

    /// Each submitted group is observed once, when an ack covers it, and
    /// not before; a burst's buffer does not outlive it.
    #[test]
    fn ack_delays_are_observed_once_per_group_when_acked() {
        let m = crate::metrics::Metrics::new();
        let h = &m.ack_delay_seconds;
        let count = || {
            let text = m.encode();
            text.lines()
                .find_map(|l| l.strip_prefix("outpost_ack_delay_seconds_count "))
                .and_then(|n| n.trim().parse::<u64>().ok())
                .unwrap_or_else(|| panic!("no ack delay count in {text}"))
        };
        let mut d = AckDelays::default();
        let t = Instant::now();
        d.submitted(10, t);
        d.submitted(20, t);
        d.acked(9, h);
        assert_eq!(
            count(),
            0,
            "an ack below a group's last record covers none of it"
        );
        d.acked(15, h);
        assert_eq!(count(), 1);
        d.acked(20, h);
        d.acked(20, h);
        assert_eq!(count(), 2, "a repeated ack observes nothing again");
        for seq in 21..100 {
            d.submitted(seq, t);
        }
        d.acked(99, h);
        assert_eq!(count(), 81);
        assert_eq!(d.0.capacity(), 0, "the burst's buffer is freed once acked");
    }

    /// Each record is counted under its own kind: package scans and patch
    /// statuses are not inventory (they were, before the kinds had indices).
    #[test]
    fn records_are_counted_by_their_own_kind() {
        use outpost_proto::messages::{
            Heartbeat, Inventory, MetricsSample, PackageScanRecord, PatchStatusRecord,
        };
        let m = crate::metrics::Metrics::new();
        let rec = |body| Record {
            seq: 1,
            ts_ms: 1,
            body,
        };
        let hb = RecordBody::Heartbeat(Heartbeat {
            uptime_s: 1,
            buffered_records: 0,
            dropped_records: 0,
        });
        let mut frame = vec![rec(hb.clone()), rec(hb)];
        frame.push(rec(RecordBody::Metrics(MetricsSample { values: vec![] })));
        frame.push(rec(RecordBody::Inventory(Box::<Inventory>::default())));
        frame.push(rec(RecordBody::PackageScan(PackageScanRecord {
            format: 1,
            full: true,
            part: 0,
            parts: 1,
            payload: vec![],
        })));
        for _ in 0..3 {
            frame.push(rec(RecordBody::PatchStatus(PatchStatusRecord {
                format: 1,
                part: 0,
                parts: 1,
                payload: vec![],
            })));
        }
        count_kinds(&m, &frame);
        count_kinds(&m, &frame[..1]);
        let text = m.encode();
        let count = |kind: &str| {
            let prefix = format!("outpost_records_received_total{{kind=\"{kind}\"}} ");
            text.lines()
                .find_map(|l| l.strip_prefix(prefix.as_str()))
                .and_then(|n| n.trim().parse::<u64>().ok())
                .unwrap_or_else(|| panic!("no {kind} count in {text}"))
        };
        assert_eq!(count("heartbeat"), 3);
        assert_eq!(count("metrics"), 1);
        assert_eq!(count("inventory"), 1);
        assert_eq!(count("package_scan"), 1);
        assert_eq!(count("patch_status"), 3);
    }

    /// A writer that stopped without failing (the appliance shutting down)
    /// closes sessions as `ShuttingDown`, so agents reconnect to the next
    /// appliance without reporting an error; a failed writer is `Internal`,
    /// and the message says why and what to do.
    #[test]
    fn a_stopped_writer_is_a_shutdown_and_a_failed_one_an_internal_error() {
        let health = WriterHealth::default();
        let (reason, msg) = writer_error(&health, anyhow::anyhow!("the writer has stopped"));
        assert_eq!(reason, CloseReason::ShuttingDown);
        assert_eq!(msg, "the writer has stopped");
        health.fail("disk full".into());
        let (reason, msg) = writer_error(&health, anyhow::anyhow!("the writer has failed"));
        assert_eq!(reason, CloseReason::Internal);
        assert!(
            msg.contains("disk full") && msg.contains("restarted"),
            "{msg}"
        );
    }

    /// Every connected device keeps one session future in its task: state
    /// carried by value from the set-up phase into the established one takes
    /// its space two or three times over (4.6 KB per connection before the
    /// set-up state went into one box).
    #[test]
    fn a_session_future_keeps_the_established_state_once() {
        let serve = future_size(serve);
        let est = std::mem::size_of::<Established>();
        assert!(
            serve < est * 3,
            "the session future is {serve} B, the established state {est} B: \
             pass the state in its box, not by value"
        );
        assert!(serve <= 2_400, "the session future grew to {serve} B");
    }
}
