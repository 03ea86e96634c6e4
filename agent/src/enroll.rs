//! Enrollment: prove possession of a token, get a client certificate.
//!
//! The appliance is authenticated by the CA fingerprint the installer was
//! given; a server whose chain carries no CA with that fingerprint is refused
//! before the token is sent. The private key is generated here and never
//! leaves the endpoint: only a CSR is sent.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use bytes::BytesMut;
use outpost_proto::frame::{FrameReader, write_frame};
use outpost_proto::messages::{DeviceFacts, EnrollRequest, EnrollResponse};
use outpost_proto::pki::{CertIdentity, Principal, generate_csr};
use outpost_proto::tls::{self, CaFingerprint, PinnedCaVerifier};
use outpost_proto::{
    ALPN_ENROLL, APPLIANCE_SERVER_NAME, DEFAULT_MAX_FRAME_BYTES, PROTOCOL_VERSION,
};

use crate::backoff::Backoff;
use crate::identity::Enrolled;
use crate::net;

/// How long one enrollment attempt may take end to end.
pub const ENROLL_TIMEOUT: Duration = Duration::from_secs(20);

/// How long enrollment keeps retrying an appliance that refuses new
/// handshakes (its admission control during a reconnect storm, or a whole
/// site enrolling at once): every refusal means "come back later", so the
/// installer waits, with jittered back-off, rather than failing.
pub const ENROLL_REFUSED_FOR: Duration = Duration::from_secs(120);

/// Back-off between refused attempts: full jitter up to 0.25 s, doubling
/// to 5 s, so a thousand enrolling devices spread over the appliance's
/// handshake rate instead of returning together.
const REFUSED_BACKOFF: (Duration, Duration) = (Duration::from_millis(250), Duration::from_secs(5));

/// One attempt's failure when the appliance said "later" (QUIC
/// `CONNECTION_REFUSED`); any other failure is final.
#[derive(Debug)]
struct HandshakeRefused(quinn::ConnectionError);

impl std::fmt::Display for HandshakeRefused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for HandshakeRefused {}

/// Enrolls against the appliance at `addr` using `endpoint`. A refused
/// handshake is retried with back-off for up to [`ENROLL_REFUSED_FOR`];
/// any other failure ends enrollment at once.
pub async fn enroll(
    endpoint: &quinn::Endpoint,
    addr: SocketAddr,
    token: &str,
    pin: CaFingerprint,
    facts: DeviceFacts,
) -> anyhow::Result<Enrolled> {
    let started = tokio::time::Instant::now();
    let mut backoff = Backoff::new(REFUSED_BACKOFF.0, REFUSED_BACKOFF.1);
    loop {
        let attempt = tokio::time::timeout(
            ENROLL_TIMEOUT,
            enroll_once(endpoint, addr, token, pin, facts.clone()),
        )
        .await
        .map_err(|_| anyhow!("enrollment with {addr} timed out after {ENROLL_TIMEOUT:?}"))?;
        let e = match attempt {
            Ok(enrolled) => return Ok(enrolled),
            Err(e) => e.downcast::<HandshakeRefused>()?,
        };
        let delay = backoff.next_delay();
        if started.elapsed() + delay > ENROLL_REFUSED_FOR {
            bail!(
                "the appliance at {addr} refused the handshake {} times over {:?} ({e}): \
                 it is admitting new connections slowly (a reconnect storm, or its \
                 [admission] limits); try again later",
                backoff.attempt(),
                started.elapsed()
            );
        }
        tracing::info!(%addr, refusals = backoff.attempt(), ?delay,
            "the appliance refused the handshake (busy admitting connections); retrying");
        tokio::time::sleep(delay).await;
    }
}

async fn enroll_once(
    endpoint: &quinn::Endpoint,
    addr: SocketAddr,
    token: &str,
    pin: CaFingerprint,
    facts: DeviceFacts,
) -> anyhow::Result<Enrolled> {
    let verifier = PinnedCaVerifier::new(pin);
    let cfg = net::quic_client_config(tls::pinned_client_config(verifier.clone(), ALPN_ENROLL)?)?;
    let connecting = endpoint
        .connect_with(cfg, addr, APPLIANCE_SERVER_NAME)
        .with_context(|| format!("connecting to {addr}"))?;
    let conn = match connecting.await {
        Ok(c) => c,
        Err(e) => {
            if let Some(seen) = verifier.mismatch() {
                let seen: Vec<String> = seen.iter().map(ToString::to_string).collect();
                bail!(
                    "refusing to enroll: the appliance at {addr} presented CA {}, but --ca-fingerprint is {pin}. \
                     Check the fingerprint with `outpost ca-fingerprint` on the appliance.",
                    if seen.is_empty() {
                        "(none)".to_string()
                    } else {
                        seen.join(", ")
                    }
                );
            }
            if net::refused_by_server(&e) {
                return Err(HandshakeRefused(e).into());
            }
            return Err(e).with_context(|| format!("TLS/QUIC handshake with {addr} failed"));
        }
    };
    let (key_pem, csr_der) = generate_csr("outpost-agent").context("generating the device key")?;
    let (mut send, mut recv) = conn
        .open_bi()
        .await
        .context("opening the enrollment stream")?;
    let req = EnrollRequest {
        protocol_version: PROTOCOL_VERSION,
        token: token.to_string(),
        csr_der,
        facts,
    };
    let mut buf = BytesMut::new();
    write_frame(&req, &mut buf, DEFAULT_MAX_FRAME_BYTES)?;
    send.write_all(&buf)
        .await
        .context("sending the enrollment request")?;
    send.finish().ok();
    let mut reader = FrameReader::new(DEFAULT_MAX_FRAME_BYTES);
    let resp: EnrollResponse = reader
        .next(&mut recv)
        .await
        .context("reading the enrollment response")?
        .ok_or_else(|| anyhow!("the appliance closed the enrollment stream without answering"))?;
    conn.close(0u32.into(), b"enrolled");
    match resp {
        EnrollResponse::Accepted {
            device_id,
            tenant,
            customer,
            cert_der,
            ca_cert_der,
        } => {
            if CaFingerprint::of(&ca_cert_der) != pin {
                bail!("the appliance returned a CA certificate that does not match {pin}");
            }
            let ident =
                CertIdentity::from_der(&cert_der).context("parsing the issued certificate")?;
            if ident.principal != Principal::Device(device_id) {
                bail!(
                    "the issued certificate names {:?}, not device {device_id}",
                    ident.principal
                );
            }
            Ok(Enrolled {
                device_id,
                tenant,
                customer,
                cert_der,
                ca_der: ca_cert_der,
                key_pem,
            })
        }
        EnrollResponse::Rejected { reason, message } => {
            bail!("enrollment refused ({}): {message}", reason.label())
        }
    }
}
