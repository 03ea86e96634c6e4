//! Central's QUIC listener: site joins (one-time token + CSR, pinned TLS)
//! and uplink streams (mutual TLS; site and tenant from the certificate).
//!
//! Bounded: at most [`CentralLimits::max_connections`] connections (more
//! are refused at once, counted), at most
//! [`CentralLimits::max_connections_per_site`] uplinks per site, at most
//! [`CentralLimits::max_concurrent_batches`] batches decoded and applied at
//! once. Per batch, the cheap checks come first: a sequence number already
//! closed is answered without decompressing anything; the header (who the
//! batch claims to be) is read and checked before the body is decoded; the
//! body is decoded within `outpost_uplink::batch::limits`. A batch refused
//! for good is dead-lettered on its site (its number closes).
//!
//! [`CentralLimits::max_connections`]: crate::CentralLimits::max_connections
//! [`CentralLimits::max_connections_per_site`]: crate::CentralLimits::max_connections_per_site
//! [`CentralLimits::max_concurrent_batches`]: crate::CentralLimits::max_concurrent_batches

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::BytesMut;
use outpost_proto::frame::{FrameReader, write_frame};
use outpost_proto::pki::{CertIdentity, ClientSubject, Principal};
use outpost_proto::tls;
use outpost_proto::{SiteId, TenantId};
use quinn::crypto::rustls::QuicServerConfig;
use rustls::pki_types::CertificateDer;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::Central;
use crate::metrics::SiteLabel;
use crate::model::DeadLetter;
use crate::store::{ApplyOutcome, DeadLetterOutcome};
use outpost_uplink::batch::{self, BatchError};
use outpost_uplink::wire::{
    ALPN_UPLINK, ALPN_UPLINK_JOIN, COMMANDS_PROTOCOL_VERSION, CentralFrame, CentralWelcome,
    DEPLOY_PROTOCOL_VERSION, JoinRequest, JoinResponse, MAX_UPLINK_FRAME_BYTES,
    MIN_UPLINK_PROTOCOL_VERSION, RejectReason, SiteFrame, UPLINK_PROTOCOL_VERSION, close,
};

/// Validity of site certificates.
pub const SITE_CERT_VALIDITY: Duration = Duration::from_secs(5 * 365 * 24 * 3600);

/// Binds the QUIC endpoint.
pub fn bind(central: &Central, addr: SocketAddr) -> anyhow::Result<quinn::Endpoint> {
    bind_keys(&central.keys, addr)
}

/// Binds the QUIC endpoint with central's keys (before the store is open:
/// `serve` refuses connections until it is).
pub fn bind_keys(
    keys: &crate::dir::CentralKeys,
    addr: SocketAddr,
) -> anyhow::Result<quinn::Endpoint> {
    let tls = tls::server_config(
        keys.server_chain.clone(),
        keys.server_key.clone_key(),
        keys.ca.cert_der().clone(),
        &[ALPN_UPLINK, ALPN_UPLINK_JOIN],
    )?;
    let crypto =
        QuicServerConfig::try_from(tls).context("TLS configuration is not usable for QUIC")?;
    let mut cfg = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport.max_concurrent_bidi_streams(2u32.into());
    transport.max_concurrent_uni_streams(0u32.into());
    transport.max_idle_timeout(Some(
        Duration::from_secs(30).try_into().context("idle timeout")?,
    ));
    cfg.transport_config(Arc::new(transport));
    quinn::Endpoint::server(cfg, addr).with_context(|| format!("starting QUIC on {addr}"))
}

pub async fn accept_loop(endpoint: quinn::Endpoint, central: Arc<Central>, tracker: TaskTracker) {
    loop {
        let incoming = tokio::select! {
            i = endpoint.accept() => i,
            _ = central.shutdown.cancelled() => break,
        };
        let Some(incoming) = incoming else { break };
        let Ok(slot) = central.connection_slots.clone().try_acquire_owned() else {
            central.metrics.conn_reject("connection_limit");
            debug!(remote = %incoming.remote_address(), "connection refused: at the connection limit");
            incoming.refuse();
            continue;
        };
        let c = central.clone();
        tracker.spawn(async move {
            let _slot = slot;
            let conn = match incoming.await {
                Ok(conn) => conn,
                Err(e) => {
                    c.metrics.conn_reject("handshake_failed");
                    debug!(error = %e, "uplink handshake failed");
                    return;
                }
            };
            let alpn = conn
                .handshake_data()
                .and_then(|h| h.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
                .and_then(|h| h.protocol);
            match alpn.as_deref() {
                Some(p) if p == ALPN_UPLINK_JOIN => serve_join(conn, c).await,
                Some(p) if p == ALPN_UPLINK => {
                    c.metrics.connections_active.inc();
                    serve_uplink(conn, c.clone()).await;
                    c.metrics.connections_active.dec();
                }
                _ => {
                    c.metrics.conn_reject("unknown_alpn");
                    conn.close(close::PROTOCOL.into(), b"unknown protocol");
                }
            }
        });
    }
}

/// How long a join connection is kept after the answer was written, for
/// the appliance to read it and close (see `serve_join`): longer than the
/// appliance waits for it.
const JOIN_ANSWER_LINGER: Duration =
    Duration::from_secs(outpost_uplink::join::JOIN_ANSWER_WAIT.as_secs() + 15);

async fn serve_join(conn: quinn::Connection, c: Arc<Central>) {
    let r = async {
        let (mut send, mut recv) = conn
            .accept_bi()
            .await
            .context("accepting the join stream")?;
        let mut reader = FrameReader::new(64 * 1024);
        let req: JoinRequest =
            tokio::time::timeout(Duration::from_secs(15), reader.next(&mut recv))
                .await
                .context("join request timed out")??
                .context("join stream closed early")?;
        let resp = match join(&c, &req).await {
            Ok(r) => r,
            Err(e) => {
                c.metrics.conn_reject("join_refused");
                warn!(error = %e, "site join refused");
                JoinResponse::Rejected {
                    message: e.to_string(),
                }
            }
        };
        let mut out = BytesMut::new();
        write_frame(&resp, &mut out, MAX_UPLINK_FRAME_BYTES)?;
        send.write_all(&out).await?;
        let _ = send.finish();
        // Dropping the connection closes it and discards whatever of the
        // answer is still unacknowledged, so keep it until the appliance
        // closes it after reading. Over a lossy WAN the answer's packets
        // may take several retransmissions (each timeout doubling); the
        // bound is above the appliance's own wait for the answer.
        let _ = tokio::time::timeout(JOIN_ANSWER_LINGER, conn.closed()).await;
        anyhow::Ok(())
    }
    .await;
    if let Err(e) = r {
        debug!(error = %e, "join connection failed");
    }
}

async fn join(c: &Arc<Central>, req: &JoinRequest) -> anyhow::Result<JoinResponse> {
    // A malformed CSR must not burn the one-time token.
    outpost_proto::pki::verify_csr(&req.csr_der)
        .map_err(|e| anyhow::anyhow!("the certificate request is invalid: {e}"))?;
    let hash = crate::ops::sha256(&req.token);
    let tok = c.store.take_join_token(&hash).await?.ok_or_else(|| {
        anyhow::anyhow!(
            "unknown or already used site token; run `outpost-central site add` for a new one"
        )
    })?;
    if tok.expires_ms < crate::now_ms() {
        anyhow::bail!("the site token expired; run `outpost-central site add` for a new one");
    }
    let mut site = c
        .store
        .site(&tok.tenant, &tok.site_id)
        .await?
        .ok_or_else(|| anyhow::anyhow!("the site of this token no longer exists"))?;
    let cert = c.keys.ca.sign_client_csr(
        &req.csr_der,
        &ClientSubject {
            principal: Principal::Site(site.site_id.clone()),
            tenant: site.tenant.clone(),
            customer: site.customer.clone(),
        },
        SITE_CERT_VALIDITY,
    )?;
    site.joined_ms = crate::now_ms();
    c.store.update_site(&site).await?;
    c.metrics.joins.inc();
    info!(tenant = %site.tenant, site = %site.site_id, name = %site.name, "site joined");
    Ok(JoinResponse::Accepted {
        site_id: site.site_id,
        site_name: site.name,
        tenant: site.tenant,
        customer: site.customer,
        cert_der: cert.to_vec(),
        ca_cert_der: c.keys.ca.cert_der().to_vec(),
    })
}

/// Site and tenant from the verified client certificate.
fn identity(conn: &quinn::Connection) -> Option<(TenantId, SiteId)> {
    let certs = conn
        .peer_identity()
        .and_then(|a| a.downcast::<Vec<CertificateDer<'static>>>().ok())?;
    let id = CertIdentity::from_der(certs.first()?).ok()?;
    match id.principal {
        Principal::Site(s) => Some((id.tenant, s)),
        Principal::Device(_) => None,
    }
}

async fn serve_uplink(conn: quinn::Connection, c: Arc<Central>) {
    let Some((tenant, site_id)) = identity(&conn) else {
        c.metrics.conn_reject("no_site_certificate");
        conn.close(
            close::UNKNOWN_SITE.into(),
            b"uplink requires a site certificate",
        );
        return;
    };
    let Some(_counted) = c.site_connection(&tenant, &site_id) else {
        c.metrics.conn_reject("site_connection_limit");
        warn!(%tenant, site = %site_id, "uplink refused: the site has too many connections open");
        conn.close(close::PROTOCOL.into(), b"too many connections of this site");
        return;
    };
    let span = info_span!("uplink", %tenant, site = %site_id);
    let r = uplink_stream(&conn, &c, &tenant, &site_id)
        .instrument(span)
        .await;
    c.set_link(&tenant, &site_id, false);
    match r {
        Ok(()) => conn.close(close::NORMAL.into(), b"bye"),
        Err(e) => {
            debug!(error = %format!("{e:#}"), %site_id, "uplink stream ended");
            conn.close(close::PROTOCOL.into(), b"uplink error");
        }
    }
}

async fn uplink_stream(
    conn: &quinn::Connection,
    c: &Arc<Central>,
    tenant: &TenantId,
    site_id: &SiteId,
) -> anyhow::Result<()> {
    let Some(mut site) = c.store.site(tenant, site_id).await? else {
        c.metrics.conn_reject("unknown_site");
        conn.close(close::UNKNOWN_SITE.into(), b"unknown site");
        anyhow::bail!("unknown site");
    };
    let (mut send, mut recv) = tokio::select! {
        r = conn.accept_bi() => r.context("accepting the uplink stream")?,
        _ = c.shutdown.cancelled() => return Ok(()),
    };
    let mut reader = FrameReader::new(MAX_UPLINK_FRAME_BYTES);
    let hello = match reader.next::<SiteFrame, _>(&mut recv).await? {
        Some(SiteFrame::Hello(h)) => h,
        _ => anyhow::bail!("expected Hello"),
    };
    if !(MIN_UPLINK_PROTOCOL_VERSION..=UPLINK_PROTOCOL_VERSION).contains(&hello.protocol_version) {
        conn.close(
            close::UNSUPPORTED_VERSION.into(),
            b"unsupported uplink protocol version",
        );
        anyhow::bail!("unsupported protocol version {}", hello.protocol_version);
    }
    let version = hello.protocol_version.min(UPLINK_PROTOCOL_VERSION);
    if site.interval_ms != hello.interval_ms {
        site.interval_ms = hello.interval_ms;
        c.store.update_site(&site).await?;
    }
    c.set_link(tenant, site_id, true);
    let (conn_no, down_rx) = c.downlinks.register(tenant, site_id, version);
    let r = serve_stream(
        c,
        tenant,
        site_id,
        &site,
        version,
        &hello,
        &mut send,
        &mut recv,
        &mut reader,
        down_rx,
    )
    .await;
    c.downlinks.unregister(tenant, site_id, conn_no);
    r
}

#[allow(clippy::too_many_arguments)]
async fn serve_stream(
    c: &Arc<Central>,
    tenant: &TenantId,
    site_id: &SiteId,
    site: &crate::model::SiteRecord,
    version: u16,
    hello: &outpost_uplink::wire::SiteHello,
    send: &mut quinn::SendStream,
    recv: &mut quinn::RecvStream,
    reader: &mut FrameReader,
    mut down_rx: Option<tokio::sync::mpsc::UnboundedReceiver<crate::downlink::Down>>,
) -> anyhow::Result<()> {
    let mut out = BytesMut::new();
    write_frame(
        &CentralFrame::Welcome(CentralWelcome {
            protocol_version: version,
            site_id: site_id.clone(),
            applied_up_to: site.applied_up_to,
            applied_above: site.applied_above.clone(),
        }),
        &mut out,
        MAX_UPLINK_FRAME_BYTES,
    )?;
    send.write_all(&out).await?;
    info!(
        backlog = hello.backlog_batches,
        applied_up_to = site.applied_up_to,
        protocol_version = version,
        "site connected"
    );
    let mut down = crate::downlink::SiteDownlink::new(c, tenant, site_id);
    let mut deploy =
        crate::deploy_link::SiteDeployLink::new(c, tenant, site_id, &site.customer, version);
    // Files from central (protocol 7): pushes stream from what the site
    // acknowledges, one chunk between other frames.
    let mut files = crate::files::SiteFiles::new(c, tenant, site_id);
    let files_on = version >= outpost_uplink::wire::FILES_PROTOCOL_VERSION;
    if down_rx.is_some() {
        let mut opening = down.opening(crate::now_ms()).await;
        opening.extend(deploy.opening(crate::now_ms()).await);
        for f in opening {
            out.clear();
            write_frame(&f, &mut out, MAX_UPLINK_FRAME_BYTES)?;
            send.write_all(&out).await?;
        }
    }
    loop {
        let next_resend = match (down.next_resend(), deploy.next_resend()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let resend_in = next_resend
            .map(|at| Duration::from_millis(at.saturating_sub(crate::now_ms())))
            .unwrap_or(Duration::from_secs(3600));
        let mut answers: Vec<CentralFrame> = Vec::new();
        let chunk = if files_on { files.poll_chunk() } else { None };
        tokio::select! {
            f = reader.next::<SiteFrame, _>(recv) => {
                match f? {
                    None => return Ok(()),
                    Some(SiteFrame::Hello(_)) => anyhow::bail!("second Hello"),
                    Some(SiteFrame::Batch(wb)) => {
                        answers.push(answer_batch(c, tenant, site_id, wb.seq, wb.payload).await);
                    }
                    Some(SiteFrame::CommandAck(a)) => {
                        if version < COMMANDS_PROTOCOL_VERSION {
                            anyhow::bail!("a command acknowledgement on a protocol-{version} stream");
                        }
                        answers.extend(down.on_ack(a, crate::now_ms()).await);
                    }
                    Some(SiteFrame::CommandUpdate(u)) => {
                        if version < COMMANDS_PROTOCOL_VERSION {
                            anyhow::bail!("a command report on a protocol-{version} stream");
                        }
                        answers.extend(down.on_update(u, crate::now_ms()).await);
                    }
                    Some(SiteFrame::FileChunk(_) | SiteFrame::FileAck(_) | SiteFrame::FileAbort(_))
                        if !files_on =>
                    {
                        anyhow::bail!("a file frame on a protocol-{version} stream");
                    }
                    Some(SiteFrame::FileChunk(ch)) => answers.extend(files.on_chunk(ch).await),
                    Some(SiteFrame::FileAck(a)) => answers.extend(files.on_ack(a).await),
                    Some(SiteFrame::FileAbort(a)) => files.on_abort(a).await,
                    Some(SiteFrame::DeployAck(a)) => {
                        if version < DEPLOY_PROTOCOL_VERSION {
                            anyhow::bail!("a deployment acknowledgement on a protocol-{version} stream");
                        }
                        deploy.on_ack(a, crate::now_ms()).await;
                    }
                    Some(SiteFrame::DeployProgress(p)) => {
                        if version < DEPLOY_PROTOCOL_VERSION {
                            anyhow::bail!("a deployment report on a protocol-{version} stream");
                        }
                        answers.extend(deploy.on_progress(p, crate::now_ms()).await);
                    }
                    Some(SiteFrame::ApprovalDecisions(v)) => {
                        if version < outpost_uplink::wire::TAGS_PROTOCOL_VERSION {
                            anyhow::bail!("approval decisions on a protocol-{version} stream");
                        }
                        deploy.on_decisions(v, crate::now_ms()).await;
                    }
                }
            }
            d = async {
                match down_rx.as_mut() {
                    Some(rx) => rx.recv().await,
                    None => std::future::pending().await,
                }
            } => {
                // The registry dropped this connection's sender: a newer
                // connection of the site took over.
                let Some(d) = d else { return Ok(()) };
                match d {
                    crate::downlink::Down::DeployOrder(id) => {
                        answers.extend(deploy.on_order(&id, crate::now_ms()).await);
                    }
                    crate::downlink::Down::Reopen => {
                        answers.extend(down.opening(crate::now_ms()).await);
                        answers.extend(deploy.opening(crate::now_ms()).await);
                    }
                    d => {
                        if let crate::downlink::Down::Cancel { id, by } = &d {
                            answers.extend(files.on_cancel(*id, by));
                        }
                        answers.extend(down.on_down(d, crate::now_ms()).await);
                    }
                }
            }
            _ = tokio::time::sleep(resend_in) => {
                answers.extend(down.resends(crate::now_ms()).await);
                answers.extend(deploy.resends(crate::now_ms()).await);
            }
            _ = std::future::ready(()), if chunk.is_some() => {}
            _ = c.shutdown.cancelled() => return Ok(()),
        }
        answers.extend(chunk);
        for a in answers {
            out.clear();
            write_frame(&a, &mut out, MAX_UPLINK_FRAME_BYTES)?;
            send.write_all(&out).await?;
        }
    }
}

/// Why a batch was refused: the wire reason the site is told, the label
/// central counts it under (`outpost_central_batch_rejects_total{reason}`),
/// and a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub reason: RejectReason,
    pub label: &'static str,
    pub message: String,
}

impl Refusal {
    fn new(reason: RejectReason, message: impl Into<String>) -> Refusal {
        Refusal {
            reason,
            label: reason.label(),
            message: message.into(),
        }
    }

    /// The refusal recorded in `d`, told again to a site that resends it.
    fn of_dead_letter(d: &DeadLetter) -> Refusal {
        let (reason, label) = match d.reason.as_str() {
            "identity_mismatch" => (RejectReason::IdentityMismatch, "identity_mismatch"),
            "sequence_mismatch" => (RejectReason::SequenceMismatch, "sequence_mismatch"),
            "over_limit" => (RejectReason::Malformed, "over_limit"),
            crate::model::GAP_EXPIRED => (RejectReason::Malformed, "gap_expired"),
            _ => (RejectReason::Malformed, "malformed_batch"),
        };
        Refusal {
            reason,
            label,
            message: format!("batch {} was refused for good: {}", d.seq, d.message),
        }
    }
}

/// Label of batches over the decoder's limits (told `Malformed` on the wire:
/// older appliances know no other permanent reason).
pub const OVER_LIMIT: &str = "over_limit";

/// Checks a batch (frame sequence `seq`, still compressed) of the site of
/// the certificate, before and while decoding it: the header first, then
/// the body within the batch limits.
pub fn check_batch(
    tenant: &TenantId,
    site_id: &SiteId,
    seq: u64,
    payload: &[u8],
) -> Result<batch::SiteBatch, Refusal> {
    let malformed = |e: BatchError| match e {
        BatchError::OverLimit(o) => Refusal {
            reason: RejectReason::Malformed,
            label: OVER_LIMIT,
            message: o.to_string(),
        },
        e => Refusal::new(RejectReason::Malformed, e.to_string()),
    };
    let opened = batch::open(payload).map_err(malformed)?;
    let h = opened.header();
    if h.site != *site_id || h.tenant != *tenant {
        return Err(Refusal::new(
            RejectReason::IdentityMismatch,
            format!(
                "batch claims site {} of tenant {} but the certificate is site {site_id} of tenant {tenant}",
                h.site, h.tenant
            ),
        ));
    }
    if h.seq != seq {
        return Err(Refusal::new(
            RejectReason::SequenceMismatch,
            format!("frame seq {seq} != batch seq {}", h.seq),
        ));
    }
    opened.decode().map_err(malformed)
}

/// The answer to one batch frame: `Ack` once durable (or already
/// applied), else `Reject`, counted by reason.
pub(crate) async fn answer_batch(
    c: &Arc<Central>,
    tenant: &TenantId,
    site_id: &SiteId,
    seq: u64,
    payload: Vec<u8>,
) -> CentralFrame {
    c.metrics.batches_received.inc();
    match receive_batch(c, tenant, site_id, seq, payload).await {
        Ok(()) => CentralFrame::Ack { seq },
        Err(r) => {
            c.metrics.reject(r.label);
            warn!(seq, reason = r.label, message = %r.message, "batch refused");
            CentralFrame::Reject {
                seq,
                reason: r.reason,
                message: r.message,
            }
        }
    }
}

/// Decodes, checks and applies one batch; `Ok` means durable (or already
/// applied). A permanent refusal is dead-lettered first.
async fn receive_batch(
    c: &Arc<Central>,
    tenant: &TenantId,
    site_id: &SiteId,
    seq: u64,
    payload: Vec<u8>,
) -> Result<(), Refusal> {
    let internal = |e: &dyn std::fmt::Display| Refusal::new(RejectReason::Internal, e.to_string());
    // A number already closed costs no decoding: a replay is acknowledged,
    // a resent dead letter refused again.
    let site = c
        .store
        .site(tenant, site_id)
        .await
        .map_err(|e| internal(&e))?
        .ok_or_else(|| internal(&"unknown site"))?;
    if site.is_applied(seq) {
        return match site.dead_letters.find(seq) {
            Some(d) => Err(Refusal::of_dead_letter(d)),
            None => {
                c.metrics.batches_duplicate.inc();
                Ok(())
            }
        };
    }
    let _slot = c
        .batch_slots
        .clone()
        .acquire_owned()
        .await
        .map_err(|e| internal(&e))?;
    let started = Instant::now();
    // Decoding is CPU work (zstd, bincode): on the blocking pool.
    let (t, s) = (tenant.clone(), site_id.clone());
    let checked = tokio::task::spawn_blocking(move || check_batch(&t, &s, seq, &payload))
        .await
        .map_err(|e| internal(&e))?;
    let b = match checked {
        Ok(b) => b,
        Err(refusal) => return Err(dead_letter(c, tenant, site_id, seq, refusal).await),
    };
    let created_ms = b.created_ms;
    let (outcome, delta) = c
        .store
        .apply_batch_delta(tenant, site_id, b, crate::now_ms())
        .await
        .map_err(|e| internal(&e))?;
    // Durable: viewers may see it now (one event per change, no polling).
    crate::console::publish_delta(&c.live, tenant, site_id, &delta);
    match outcome {
        ApplyOutcome::Duplicate => {
            c.metrics.batches_duplicate.inc();
        }
        ApplyOutcome::Applied {
            rollups_new,
            rollups_replaced,
            tenant_mismatches_new,
            customer_mismatches,
            device_facts_ignored,
            gaps_expired,
        } => {
            gaps_expired_note(c, gaps_expired);
            c.metrics.batches_applied.inc();
            c.metrics.rollups_applied.inc_by(rollups_new);
            c.metrics.rollups_replaced.inc_by(rollups_replaced);
            if tenant_mismatches_new > 0 {
                c.metrics.tenant_mismatches.inc_by(tenant_mismatches_new);
                warn!(
                    devices = tenant_mismatches_new,
                    "site reports devices enrolled under another tenant; they are listed under the site's tenant"
                );
            }
            if customer_mismatches > 0 {
                c.metrics.customer_mismatches.inc_by(customer_mismatches);
                debug!(
                    devices = customer_mismatches,
                    "device snapshots claim a customer other than the site's; the site's is kept"
                );
            }
            if device_facts_ignored > 0 {
                c.metrics.device_facts_ignored.inc_by(device_facts_ignored);
                debug!(
                    devices = device_facts_ignored,
                    "IPs and tags of devices without a snapshot in the batch; ignored"
                );
            }
            c.metrics
                .apply_seconds
                .observe(started.elapsed().as_secs_f64());
            let lag = crate::now_ms().saturating_sub(created_ms) as i64 / 1000;
            c.metrics
                .site_lag_seconds
                .get_or_create(&SiteLabel {
                    tenant: tenant.to_string(),
                    site: site_id.to_string(),
                })
                .set(lag);
        }
    }
    Ok(())
}

/// Counts and logs gaps of a site's applied set that expired.
fn gaps_expired_note(c: &Central, gaps: u64) {
    if gaps > 0 {
        c.metrics.sequence_gaps_expired.inc_by(gaps);
        warn!(
            gaps,
            "batches missing while many later ones were applied now count as lost (dead-lettered as gap_expired)"
        );
    }
}

/// Records a permanent refusal on the site (so its number closes) and
/// returns what to tell the site.
async fn dead_letter(
    c: &Arc<Central>,
    tenant: &TenantId,
    site_id: &SiteId,
    seq: u64,
    refusal: Refusal,
) -> Refusal {
    let letter = DeadLetter::new(seq, refusal.label, &refusal.message, crate::now_ms());
    match c.store.dead_letter(tenant, site_id, letter).await {
        Ok(DeadLetterOutcome::Recorded { gaps_expired }) => {
            c.metrics.batches_dead_lettered.inc();
            gaps_expired_note(c, gaps_expired);
            warn!(
                seq,
                reason = refusal.label,
                "batch dead-lettered: refused for good, its number closes"
            );
            refusal
        }
        // Closed meanwhile (by another connection of the site): say so.
        Ok(DeadLetterOutcome::AlreadyClosed) => refusal,
        Err(e) => Refusal::new(
            RejectReason::Internal,
            format!("recording the refusal of batch {seq} failed: {e}"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{batch_of, central_with_site};
    use outpost_uplink::batch::{DEFAULT_ZSTD_LEVEL, encode};

    fn tenant() -> TenantId {
        "msp".into()
    }

    /// Sends one batch frame: `Ok` for an `Ack`, else the refusal.
    async fn send(
        c: &Arc<Central>,
        site: &SiteId,
        seq: u64,
        payload: Vec<u8>,
    ) -> Result<(), Refusal> {
        match answer_batch(c, &tenant(), site, seq, payload).await {
            CentralFrame::Ack { seq: s } if s == seq => Ok(()),
            CentralFrame::Reject {
                seq: s,
                reason,
                message,
            } if s == seq => Err(Refusal {
                reason,
                label: "",
                message,
            }),
            other => panic!("unexpected answer {other:?}"),
        }
    }

    fn good(site: &SiteId, seq: u64) -> Vec<u8> {
        encode(&batch_of(site, seq), DEFAULT_ZSTD_LEVEL).unwrap()
    }

    fn metric(c: &Central, line: &str) -> bool {
        c.metrics.encode(false).lines().any(|l| l == line)
    }

    /// Batch 2 can never be applied (it does not decode): it is recorded
    /// on the site with its reason and time, its number closes, and
    /// batches 3 and 4 still fold into the contiguous prefix instead of
    /// piling up above a gap forever.
    #[tokio::test]
    async fn a_permanently_refused_batch_is_dead_lettered_and_later_ones_fold_into_the_prefix() {
        let (c, site, _dir) = central_with_site(Default::default()).await;
        send(&c, &site, 1, good(&site, 1)).await.unwrap();
        let r = send(&c, &site, 2, b"not a batch".to_vec())
            .await
            .unwrap_err();
        assert_eq!(r.reason, RejectReason::Malformed);
        assert!(metric(
            &c,
            "outpost_central_batch_rejects_total{reason=\"malformed_batch\"} 1"
        ));
        for seq in [3, 4] {
            send(&c, &site, seq, good(&site, seq)).await.unwrap();
        }
        let s = c.store.site(&tenant(), &site).await.unwrap().unwrap();
        assert_eq!((s.applied_up_to, s.applied_above.clone()), (4, vec![]));
        assert_eq!(s.batches_applied, 3);
        assert_eq!(s.dead_letters.total, 1);
        let d = &s.dead_letters.recent[0];
        assert_eq!((d.seq, d.reason.as_str()), (2, "malformed_batch"));
        assert!(d.at_ms > 0 && !d.message.is_empty(), "{d:?}");
        assert!(metric(&c, "outpost_central_batches_dead_lettered_total 1"));
        // The site sends batch 2 again (it missed the answer): refused
        // again, with the recorded reason, not applied, not recorded twice.
        let r = send(&c, &site, 2, b"still not".to_vec()).await.unwrap_err();
        assert_eq!(r.reason, RejectReason::Malformed);
        assert!(r.message.contains("refused for good"), "{}", r.message);
        let s = c.store.site(&tenant(), &site).await.unwrap().unwrap();
        assert_eq!(s.dead_letters.total, 1);
        assert!(metric(&c, "outpost_central_batches_received_total 5"));
    }

    /// A batch over the decoder's limits is refused permanently (malformed
    /// on the wire, which every appliance version reads), counted as
    /// `over_limit`, and dead-lettered.
    #[tokio::test]
    async fn an_over_limit_batch_is_refused_counted_and_dead_lettered() {
        let (c, site, _dir) = central_with_site(Default::default()).await;
        let mut b = batch_of(&site, 1);
        let d = b.devices[0].clone();
        b.devices = (0..batch::limits::MAX_DEVICE_UPDATES as u64 + 1)
            .map(|i| batch::DeviceUpdate {
                device: outpost_proto::DeviceId(i),
                ..d.clone()
            })
            .collect();
        let r = send(&c, &site, 1, encode(&b, 1).unwrap())
            .await
            .unwrap_err();
        assert_eq!(r.reason, RejectReason::Malformed);
        assert!(r.message.contains("device_updates"), "{}", r.message);
        assert!(metric(
            &c,
            "outpost_central_batch_rejects_total{reason=\"over_limit\"} 1"
        ));
        let s = c.store.site(&tenant(), &site).await.unwrap().unwrap();
        assert_eq!(s.applied_up_to, 1);
        assert_eq!(s.dead_letters.recent[0].reason, OVER_LIMIT);
        assert_eq!(s.batches_applied, 0);
    }

    /// Who a batch claims to be is read from its header before its body is
    /// decoded: a batch of another site with a body of garbage is an
    /// identity mismatch, not a malformed batch.
    #[tokio::test]
    async fn the_identity_is_checked_from_the_header_before_the_body() {
        let (c, site, _dir) = central_with_site(Default::default()).await;
        let mut raw = outpost_proto::codec::encode(&(2u16, 1u64, "s-other", "msp", 7u64)).unwrap();
        raw.extend_from_slice(&[0xFF; 64]);
        let payload = zstd_compress(&raw);
        let r = send(&c, &site, 1, payload).await.unwrap_err();
        assert_eq!(r.reason, RejectReason::IdentityMismatch, "{}", r.message);
        // The frame's number and the batch's must agree.
        let r = send(&c, &site, 2, good(&site, 3)).await.unwrap_err();
        assert_eq!(r.reason, RejectReason::SequenceMismatch);
        let s = c.store.site(&tenant(), &site).await.unwrap().unwrap();
        assert_eq!(s.dead_letters.total, 2, "both are closed");
        assert_eq!(s.applied_up_to, 2);
    }

    fn zstd_compress(raw: &[u8]) -> Vec<u8> {
        zstd::bulk::compress(raw, 1).unwrap()
    }

    /// A number already applied costs no decoding: a replay is
    /// acknowledged whatever its payload.
    #[tokio::test]
    async fn a_replayed_number_is_acknowledged_without_decoding() {
        let (c, site, _dir) = central_with_site(Default::default()).await;
        send(&c, &site, 1, good(&site, 1)).await.unwrap();
        send(&c, &site, 1, b"garbage".to_vec()).await.unwrap();
        assert!(metric(&c, "outpost_central_batches_duplicate_total 1"));
    }

    /// The applied set holds at most MAX_APPLIED_ABOVE numbers above its
    /// prefix: a batch that would add one more expires the oldest gap
    /// (dead-lettered as gap_expired, counted) and applies; the site makes
    /// progress whatever order its batches come in, and a batch of the
    /// expired gap sent later is refused for good.
    #[tokio::test]
    async fn a_full_applied_set_expires_its_oldest_gap() {
        use crate::model::MAX_APPLIED_ABOVE;
        let (c, site, _dir) = central_with_site(Default::default()).await;
        let mut s = c.store.site(&tenant(), &site).await.unwrap().unwrap();
        s.applied_above = (3..3 + MAX_APPLIED_ABOVE as u64).collect();
        c.store.update_site(&s).await.unwrap();
        let far = 10_000_000;
        send(&c, &site, far, good(&site, far)).await.unwrap();
        let s = c.store.site(&tenant(), &site).await.unwrap().unwrap();
        assert_eq!(s.applied_up_to, 2 + MAX_APPLIED_ABOVE as u64);
        assert_eq!(s.applied_above, vec![far]);
        assert_eq!(s.dead_letters.recent[0].reason, "gap_expired");
        assert!(metric(&c, "outpost_central_sequence_gaps_expired_total 1"));
        let r = send(&c, &site, 2, good(&site, 2)).await.unwrap_err();
        assert_eq!(r.reason, RejectReason::Malformed);
        assert!(r.message.contains("refused for good"), "{}", r.message);
        assert!(metric(
            &c,
            "outpost_central_batch_rejects_total{reason=\"gap_expired\"} 1"
        ));
    }
}
