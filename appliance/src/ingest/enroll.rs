//! Enrollment over the `outpost-enroll/1` ALPN: a one-time token and a CSR
//! in, a device id and a client certificate out. Every answered request is
//! audited: `device.enroll` when accepted, `device.enroll_refused` (actor:
//! the peer address; target: the token's reference, or `unknown` for a
//! token that does not exist; detail: the reason) when refused.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, anyhow};
use bytes::BytesMut;
use outpost_proto::frame::{FrameReader, write_frame};
use outpost_proto::messages::{EnrollRejectReason, EnrollRequest, EnrollResponse};
use outpost_proto::pki::{CLIENT_VALIDITY, CertIdentity, ClientSubject, Principal, verify_csr};
use outpost_proto::{DeviceId, PROTOCOL_VERSION};
use outpost_storage::model::{AuditEntry, DeviceRecord};
use outpost_storage::tokens::{self, TokenRejection};
use outpost_storage::{now_ms, registry};
use tracing::{Instrument, info, info_span, warn};

use super::IngestCtx;
use crate::metrics::labels::ResultLabel;

/// Whole-exchange deadline.
const ENROLL_TIMEOUT: Duration = Duration::from_secs(15);
/// An enrollment request is small: a token, a CSR and a few facts.
const MAX_ENROLL_FRAME_BYTES: usize = 64 * 1024;
/// Bound on each self-reported fact.
const MAX_FACT_BYTES: usize = 256;

/// Serves one enrollment connection.
pub async fn serve(conn: quinn::Connection, ctx: Arc<IngestCtx>) {
    let peer = conn.remote_address();
    let span = info_span!("enroll", remote = %peer);
    async {
        let result = tokio::time::timeout(ENROLL_TIMEOUT, exchange(&conn, &ctx))
            .await
            .unwrap_or_else(|_| Err(anyhow!("timed out after {ENROLL_TIMEOUT:?}")));
        let label = match &result {
            Ok((
                EnrollResponse::Accepted {
                    device_id, tenant, ..
                },
                _,
            )) => {
                info!(device = %device_id, %tenant, "device enrolled");
                "accepted".to_string()
            }
            Ok((EnrollResponse::Rejected { reason, message }, token)) => {
                warn!(reason = reason.label(), message, "enrollment refused");
                let entry = refusal_entry(peer, token, *reason, message, now_ms());
                if let Err(e) = registry::audit(&ctx.store, &entry) {
                    warn!(error = %e, "could not audit a refused enrollment");
                }
                reason.label().to_string()
            }
            Err(e) => {
                warn!(error = %format!("{e:#}"), "enrollment failed");
                "error".to_string()
            }
        };
        ctx.metrics
            .enrollments
            .get_or_create(&ResultLabel { result: label })
            .inc();
        // Give the agent time to read the answer before the connection goes.
        let _ = tokio::time::timeout(Duration::from_secs(2), conn.closed()).await;
    }
    .instrument(span)
    .await
}

/// The audit entry of a refused enrollment from `peer`, whose token is
/// `token` (its reference, or `unknown`).
fn refusal_entry(
    peer: std::net::SocketAddr,
    token: &str,
    reason: EnrollRejectReason,
    message: &str,
    now_ms: u64,
) -> AuditEntry {
    AuditEntry {
        at_ms: now_ms,
        actor: peer.to_string(),
        action: "device.enroll_refused".into(),
        target: token.to_string(),
        detail: format!("{}: {message}", reason.label()),
    }
}

/// How the audit log names the token of a request: its reference if such a
/// token exists (expired or used up included), else `unknown`.
fn token_target(ctx: &IngestCtx, secret: &str) -> String {
    match tokens::exists(&ctx.store, secret) {
        Ok(true) => tokens::reference(secret),
        Ok(false) => "unknown".into(),
        Err(e) => {
            warn!(error = %e, "looking up an enrollment token for the audit log");
            "unknown".into()
        }
    }
}

/// Reads the request and answers it; returns the answer and the target
/// the audit log names for its token.
async fn exchange(
    conn: &quinn::Connection,
    ctx: &IngestCtx,
) -> anyhow::Result<(EnrollResponse, String)> {
    let (mut send, mut recv) = conn
        .accept_bi()
        .await
        .context("waiting for the enrollment stream")?;
    let mut reader = FrameReader::new(MAX_ENROLL_FRAME_BYTES);
    let req: EnrollRequest = match reader.next(&mut recv).await {
        Ok(Some(r)) => r,
        Ok(None) => return Err(anyhow!("stream closed before a request")),
        Err(e) => {
            ctx.metrics.reject(e.reason_label());
            return Err(anyhow!(e).context("reading the enrollment request"));
        }
    };
    let token = token_target(ctx, &req.token);
    let resp = decide(ctx, req);
    let mut out = BytesMut::new();
    write_frame(&resp, &mut out, MAX_ENROLL_FRAME_BYTES)?;
    send.write_all(&out)
        .await
        .context("sending the enrollment answer")?;
    let _ = send.finish();
    Ok((resp, token))
}

fn bounded(s: &str) -> String {
    let mut end = s.len().min(MAX_FACT_BYTES);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

fn rejected(reason: EnrollRejectReason, message: impl Into<String>) -> EnrollResponse {
    EnrollResponse::Rejected {
        reason,
        message: message.into(),
    }
}

/// Validates the request, consumes the token, issues the certificate and
/// registers the device.
fn decide(ctx: &IngestCtx, req: EnrollRequest) -> EnrollResponse {
    if req.protocol_version != PROTOCOL_VERSION {
        return rejected(
            EnrollRejectReason::UnsupportedVersion,
            format!(
                "agent speaks protocol {}, this appliance speaks {PROTOCOL_VERSION}: upgrade the older side",
                req.protocol_version
            ),
        );
    }
    // A fresh id that no device holds.
    let mut device = DeviceId::random();
    for _ in 0..8 {
        match registry::get(&ctx.store, device) {
            Ok(None) => break,
            Ok(Some(_)) => device = DeviceId::random(),
            Err(e) => return rejected(EnrollRejectReason::Internal, format!("storage: {e}")),
        }
    }
    // Check the CSR before spending a token use on it.
    if let Err(e) = verify_csr(&req.csr_der) {
        return rejected(EnrollRejectReason::BadCsr, e.to_string());
    }
    let now = now_ms();
    let token = match tokens::consume(&ctx.store, &req.token, now) {
        Ok(Ok(t)) => t,
        Ok(Err(r)) => {
            let reason = match r {
                TokenRejection::Unknown => EnrollRejectReason::UnknownToken,
                TokenRejection::Expired => EnrollRejectReason::ExpiredToken,
                TokenRejection::UsedUp => EnrollRejectReason::TokenUsedUp,
            };
            return rejected(reason, r.to_string());
        }
        Err(e) => return rejected(EnrollRejectReason::Internal, format!("storage: {e}")),
    };
    let subject = ClientSubject {
        principal: Principal::Device(device),
        tenant: token.tenant.clone(),
        customer: token.customer.clone(),
    };
    let cert = match ctx
        .ca
        .sign_client_csr(&req.csr_der, &subject, CLIENT_VALIDITY)
    {
        Ok(c) => c,
        Err(e) => return rejected(EnrollRejectReason::BadCsr, e.to_string()),
    };
    let serial = match CertIdentity::from_der(&cert) {
        Ok(i) => i.serial_hex,
        Err(e) => return rejected(EnrollRejectReason::Internal, e.to_string()),
    };
    let f = &req.facts;
    let record = DeviceRecord {
        id: device,
        tenant: token.tenant.clone(),
        customer: token.customer.clone(),
        hostname: bounded(&f.hostname),
        os: bounded(&f.os),
        kernel: bounded(&f.kernel),
        arch: bounded(&f.arch),
        agent_version: bounded(&f.agent_version),
        enrolled_at_ms: now,
        cert_serial: serial,
        revoked_at_ms: None,
    };
    if let Err(e) = registry::register(&ctx.store, &record) {
        return rejected(EnrollRejectReason::Internal, format!("storage: {e}"));
    }
    let _ = registry::audit(
        &ctx.store,
        &AuditEntry {
            at_ms: now,
            actor: "enrollment".into(),
            action: "device.enroll".into(),
            target: device.to_string(),
            detail: format!(
                "hostname={} tenant={} customer={} {}",
                record.hostname,
                record.tenant,
                record.customer,
                tokens::reference(&req.token)
            ),
        },
    );
    EnrollResponse::Accepted {
        device_id: device,
        tenant: token.tenant,
        customer: token.customer,
        cert_der: cert.to_vec(),
        ca_cert_der: ctx.ca.cert_der().to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_enrollment_is_audited_with_peer_token_and_reason() {
        let peer: std::net::SocketAddr = "192.0.2.7:40001".parse().unwrap();
        let e = refusal_entry(
            peer,
            "token:0123456789ab",
            EnrollRejectReason::TokenUsedUp,
            "enrollment token has no uses left",
            42,
        );
        assert_eq!(e.at_ms, 42);
        assert_eq!(e.actor, "192.0.2.7:40001");
        assert_eq!(e.action, "device.enroll_refused");
        assert_eq!(e.target, "token:0123456789ab");
        assert_eq!(e.detail, "token_used_up: enrollment token has no uses left");
    }
}
