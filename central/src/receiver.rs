//! Central's QUIC listener: site joins (one-time token + CSR, pinned TLS)
//! and uplink streams (mutual TLS; site and tenant from the certificate).

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
use crate::store::ApplyOutcome;
use outpost_uplink::batch;
use outpost_uplink::wire::{
    ALPN_UPLINK, ALPN_UPLINK_JOIN, CentralFrame, CentralWelcome, JoinRequest, JoinResponse,
    MAX_UPLINK_FRAME_BYTES, RejectReason, SiteFrame, UPLINK_PROTOCOL_VERSION, close,
};

/// Validity of site certificates.
pub const SITE_CERT_VALIDITY: Duration = Duration::from_secs(5 * 365 * 24 * 3600);

/// Binds the QUIC endpoint.
pub fn bind(central: &Central, addr: SocketAddr) -> anyhow::Result<quinn::Endpoint> {
    let keys = &central.keys;
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
        let c = central.clone();
        tracker.spawn(async move {
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
        let _ = tokio::time::timeout(Duration::from_secs(5), conn.closed()).await;
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
    if hello.protocol_version != UPLINK_PROTOCOL_VERSION {
        conn.close(
            close::UNSUPPORTED_VERSION.into(),
            b"unsupported uplink protocol version",
        );
        anyhow::bail!("unsupported protocol version {}", hello.protocol_version);
    }
    if site.interval_ms != hello.interval_ms {
        site.interval_ms = hello.interval_ms;
        c.store.update_site(&site).await?;
    }
    c.set_link(tenant, site_id, true);
    let mut out = BytesMut::new();
    write_frame(
        &CentralFrame::Welcome(CentralWelcome {
            protocol_version: UPLINK_PROTOCOL_VERSION,
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
        "site connected"
    );
    loop {
        let frame = tokio::select! {
            f = reader.next::<SiteFrame, _>(&mut recv) => f?,
            _ = c.shutdown.cancelled() => return Ok(()),
        };
        let wb = match frame {
            None => return Ok(()),
            Some(SiteFrame::Hello(_)) => anyhow::bail!("second Hello"),
            Some(SiteFrame::Batch(b)) => b,
        };
        c.metrics.batches_received.inc();
        let answer = match receive_batch(c, tenant, site_id, wb.seq, wb.payload).await {
            Ok(()) => CentralFrame::Ack { seq: wb.seq },
            Err((reason, message)) => {
                c.metrics.reject(reason.label());
                warn!(seq = wb.seq, reason = reason.label(), %message, "batch refused");
                CentralFrame::Reject {
                    seq: wb.seq,
                    reason,
                    message,
                }
            }
        };
        out.clear();
        write_frame(&answer, &mut out, MAX_UPLINK_FRAME_BYTES)?;
        send.write_all(&out).await?;
    }
}

/// Decodes, checks and applies one batch; `Ok` means durable (or already applied).
async fn receive_batch(
    c: &Arc<Central>,
    tenant: &TenantId,
    site_id: &SiteId,
    seq: u64,
    payload: Vec<u8>,
) -> Result<(), (RejectReason, String)> {
    let (t, s) = (tenant.to_string(), site_id.to_string());
    let started = Instant::now();
    // Decoding is CPU work (zstd, bincode): on the blocking pool.
    let b = tokio::task::spawn_blocking(move || {
        let b = batch::decode(&payload).map_err(|e| (RejectReason::Malformed, e.to_string()))?;
        if b.site != s || b.tenant != t {
            return Err((
                RejectReason::IdentityMismatch,
                format!(
                    "batch claims site {} of tenant {} but the certificate is site {s} of tenant {t}",
                    b.site, b.tenant
                ),
            ));
        }
        if b.seq != seq {
            return Err((RejectReason::SequenceMismatch, format!("frame seq {seq} != batch seq {}", b.seq)));
        }
        Ok(b)
    })
    .await
    .map_err(|e| (RejectReason::Internal, e.to_string()))??;
    let created_ms = b.created_ms;
    let outcome = c
        .store
        .apply_batch(tenant, site_id, b, crate::now_ms())
        .await
        .map_err(|e| (RejectReason::Internal, e.to_string()))?;
    match outcome {
        ApplyOutcome::Duplicate => {
            c.metrics.batches_duplicate.inc();
        }
        ApplyOutcome::Applied {
            rollups_new,
            rollups_replaced,
            tenant_mismatches_new,
        } => {
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
