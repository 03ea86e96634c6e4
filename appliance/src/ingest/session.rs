//! One agent session: authenticate by client certificate, Hello/Welcome,
//! then read record frames into the writer queue and send cumulative acks as
//! the writer makes records durable.
//!
//! A session reads its stream only while its records in the writer queue
//! fit its byte budget ([`SessionBudget`]): over it, the session keeps
//! sending acks but reads nothing, so QUIC flow control slows that agent
//! alone. If the writer thread fails, the session closes with the reason.

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use outpost_proto::frame::{FrameError, FrameReader, write_frame};
use outpost_proto::messages::{Ack, AgentFrame, ApplianceFrame, CloseReason, Record, Welcome};
use outpost_proto::pki::{CertIdentity, Principal};
use outpost_proto::{DeviceId, PROTOCOL_VERSION};
use outpost_storage::ingest::IncomingRecords;
use outpost_storage::registry;
use rustls::pki_types::CertificateDer;
use tokio::sync::watch;
use tracing::{Instrument, debug, info, info_span, warn};

use super::IngestCtx;
use super::writer::{AckState, SessionBudget};
use crate::metrics::labels::KindLabel;

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
    match run(&conn, &ctx, device).instrument(span.clone()).await {
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

/// Why a session ends when the writer refused its records.
fn writer_error(ctx: &IngestCtx, e: anyhow::Error) -> (CloseReason, String) {
    if ctx.writer.health().failure().is_some() {
        (CloseReason::Internal, ctx.writer.health().close_message())
    } else {
        (CloseReason::ShuttingDown, format!("{e:#}"))
    }
}

/// What to do after the writer published a new ack state.
enum AckStep {
    Continue,
    /// The agent's stream is gone: the session is over.
    StreamGone,
}

/// Forwards the ack the writer published, if it moved past `acked`.
async fn on_ack_changed(
    changed: Result<(), watch::error::RecvError>,
    ack_rx: &mut watch::Receiver<AckState>,
    acked: &mut u64,
    send: &mut quinn::SendStream,
    out: &mut BytesMut,
    ctx: &IngestCtx,
) -> Result<AckStep, (CloseReason, String)> {
    if changed.is_err() {
        return Err((CloseReason::Internal, "writer stopped".into()));
    }
    let state = ack_rx.borrow_and_update().clone();
    match state {
        AckState::Acked(n) if n > *acked => {
            *acked = n;
            if !send_ack(send, out, *acked, ctx).await {
                return Ok(AckStep::StreamGone);
            }
            Ok(AckStep::Continue)
        }
        AckState::Acked(_) => Ok(AckStep::Continue),
        AckState::Failed(msg) => Err((CloseReason::Internal, msg)),
    }
}

fn frame_error(e: FrameError) -> (CloseReason, String) {
    let reason = match &e {
        FrameError::Oversize { .. } => CloseReason::OversizeFrame,
        _ => CloseReason::MalformedFrame,
    };
    (reason, e.to_string())
}

async fn run(conn: &quinn::Connection, ctx: &IngestCtx, device: DeviceId) -> SessionResult {
    let m = &ctx.metrics;
    let (mut send, mut recv) = tokio::time::timeout(HELLO_TIMEOUT, conn.accept_bi())
        .await
        .map_err(|_| {
            (
                CloseReason::ProtocolViolation,
                "no session stream opened".to_string(),
            )
        })?
        .map_err(|e| (CloseReason::Normal, format!("connection lost: {e}")))?;
    let mut reader = FrameReader::new(ctx.max_frame_bytes);
    let hello =
        match tokio::time::timeout(HELLO_TIMEOUT, reader.next::<AgentFrame, _>(&mut recv)).await {
            Err(_) => return Err((CloseReason::ProtocolViolation, "no Hello received".into())),
            Ok(Err(e)) => return Err(frame_error(e)),
            Ok(Ok(None)) => return Err((CloseReason::Normal, "stream closed before Hello".into())),
            Ok(Ok(Some(AgentFrame::Hello(h)))) => h,
            Ok(Ok(Some(_))) => {
                return Err((
                    CloseReason::ProtocolViolation,
                    "first frame must be Hello".into(),
                ));
            }
        };
    if hello.protocol_version != PROTOCOL_VERSION {
        return Err((
            CloseReason::UnsupportedVersion,
            format!(
                "agent speaks protocol {}, this appliance speaks {PROTOCOL_VERSION}",
                hello.protocol_version
            ),
        ));
    }
    let agent_version = hello.agent_version.clone();
    let last_seq = ctx.writer.session(device, hello).await.map_err(|e| {
        if ctx.writer.health().failure().is_some() {
            (CloseReason::Internal, ctx.writer.health().close_message())
        } else {
            (CloseReason::Internal, format!("{e:#}"))
        }
    })?;
    let mut out = BytesMut::new();
    let welcome = ApplianceFrame::Welcome(Welcome {
        protocol_version: PROTOCOL_VERSION,
        device_id: device,
        last_stored_seq: last_seq,
        max_frame_bytes: ctx.max_frame_bytes as u32,
    });
    write_frame(&welcome, &mut out, ctx.max_frame_bytes).map_err(frame_error)?;
    send.write_all(&out)
        .await
        .map_err(|e| (CloseReason::Normal, format!("connection lost: {e}")))?;
    info!(last_seq, agent_version, "session established");

    let (ack_tx, mut ack_rx) = watch::channel(AckState::Acked(last_seq));
    let ack_tx = Arc::new(ack_tx);
    let budget = SessionBudget::new(ctx.session_max_bytes);
    let mut acked = last_seq;
    let mut submitted = last_seq;
    let mut bytes_seen = reader.bytes_read();
    loop {
        tokio::select! {
            biased;
            _ = ctx.shutdown.cancelled() => {
                // Ack what becomes durable, then leave.
                acked = drain_acks(&mut ack_rx, acked, submitted).await;
                send_ack(&mut send, &mut out, acked, ctx).await;
                return Err((CloseReason::ShuttingDown, "appliance shutting down; reconnect later".into()));
            }
            _ = ctx.writer.health().failed() => {
                return Err((CloseReason::Internal, ctx.writer.health().close_message()));
            }
            changed = ack_rx.changed() => {
                match on_ack_changed(changed, &mut ack_rx, &mut acked, &mut send, &mut out, ctx).await? {
                    AckStep::Continue => {}
                    AckStep::StreamGone => return Ok(()),
                }
            }
            read = reader.fill(&mut recv) => {
                match read {
                    Ok(true) => {}
                    Ok(false) => {
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
                let mut records: Vec<Record> = Vec::new();
                let mut goodbye = false;
                loop {
                    match reader.try_next::<AgentFrame>() {
                        Ok(Some(AgentFrame::Records(rs))) => {
                            m.frames_received.inc();
                            count_kinds(ctx, &rs);
                            if records.is_empty() { records = rs; } else { records.extend(rs); }
                        }
                        Ok(Some(AgentFrame::Goodbye { reason })) => {
                            m.frames_received.inc();
                            info!(reason, "agent said goodbye");
                            goodbye = true;
                        }
                        Ok(Some(AgentFrame::Hello(_))) => {
                            return Err((CloseReason::ProtocolViolation, "second Hello".into()));
                        }
                        Ok(None) => break,
                        Err(e) => return Err(frame_error(e)),
                    }
                }
                if let Some(max) = records.iter().map(|r| r.seq).max() {
                    // Waits for budget (reading nothing meanwhile) but keeps
                    // forwarding acks: a slow queue must not starve them.
                    let submit = ctx.writer.submit(
                        IncomingRecords { device, records },
                        ack_tx.clone(),
                        &budget,
                    );
                    tokio::pin!(submit);
                    loop {
                        tokio::select! {
                            biased;
                            r = &mut submit => {
                                r.map_err(|e| writer_error(ctx, e))?;
                                break;
                            }
                            _ = ctx.shutdown.cancelled() => {
                                acked = drain_acks(&mut ack_rx, acked, submitted).await;
                                send_ack(&mut send, &mut out, acked, ctx).await;
                                return Err((CloseReason::ShuttingDown, "appliance shutting down; reconnect later".into()));
                            }
                            _ = ctx.writer.health().failed() => {
                                return Err((CloseReason::Internal, ctx.writer.health().close_message()));
                            }
                            changed = ack_rx.changed() => {
                                match on_ack_changed(changed, &mut ack_rx, &mut acked, &mut send, &mut out, ctx).await? {
                                    AckStep::Continue => {}
                                    AckStep::StreamGone => return Ok(()),
                                }
                            }
                        }
                    }
                    submitted = submitted.max(max);
                }
                if goodbye {
                    // Let the last records become durable and acked.
                    acked = drain_acks(&mut ack_rx, acked, submitted).await;
                    send_ack(&mut send, &mut out, acked, ctx).await;
                    return Ok(());
                }
            }
        }
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

fn count_kinds(ctx: &IngestCtx, rs: &[Record]) {
    // Count per kind without a label lookup per record.
    let mut counts = [0u64; 3];
    for r in rs {
        let i = match r.body.kind() {
            "heartbeat" => 0,
            "metrics" => 1,
            _ => 2,
        };
        counts[i] += 1;
    }
    for (kind, n) in ["heartbeat", "metrics", "inventory"].iter().zip(counts) {
        if n > 0 {
            ctx.metrics
                .records_received
                .get_or_create(&KindLabel {
                    kind: (*kind).to_string(),
                })
                .inc_by(n);
        }
    }
}

/// Sends a cumulative ack. Returns false if the stream is gone.
async fn send_ack(
    send: &mut quinn::SendStream,
    out: &mut BytesMut,
    up_to: u64,
    ctx: &IngestCtx,
) -> bool {
    out.clear();
    if write_frame(
        &ApplianceFrame::Ack(Ack { up_to_seq: up_to }),
        out,
        ctx.max_frame_bytes,
    )
    .is_err()
    {
        return false;
    }
    match send.write_all(out).await {
        Ok(()) => {
            ctx.metrics.acks_sent.inc();
            true
        }
        Err(_) => false,
    }
}
