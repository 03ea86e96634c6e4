//! Appliance side of joining a central: generate a key, send the one-time
//! site token and a CSR over TLS pinned to central's CA fingerprint, store
//! the returned site certificate.

use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use outpost_proto::frame::{FrameReader, encode_frame};
use outpost_proto::pki::generate_csr;
use outpost_proto::tls::{self, CaFingerprint, PinnedCaVerifier};

use crate::site_files::{JoinedSite, UplinkDir};
use crate::wire::{
    ALPN_UPLINK_JOIN, CENTRAL_SERVER_NAME, JoinRequest, JoinResponse, MAX_UPLINK_FRAME_BYTES,
    UPLINK_PROTOCOL_VERSION,
};

/// What the operator passes to `outpost uplink join`.
#[derive(Debug, Clone)]
pub struct JoinParams {
    pub central: String,
    pub token: String,
    pub fingerprint: CaFingerprint,
    pub interval: Duration,
}

/// Resolves `HOST:PORT` (IPv4 preferred).
pub async fn resolve(addr: &str) -> anyhow::Result<std::net::SocketAddr> {
    let addrs: Vec<std::net::SocketAddr> = tokio::net::lookup_host(addr)
        .await
        .with_context(|| format!("resolving central address {addr:?} (expected HOST:PORT)"))?
        .collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or_else(|| addrs.first())
        .copied()
        .ok_or_else(|| anyhow!("central address {addr:?} resolved to nothing"))
}

/// A QUIC client endpoint for `target`'s address family.
pub fn client_endpoint(target: std::net::SocketAddr) -> anyhow::Result<quinn::Endpoint> {
    let bind: std::net::SocketAddr = if target.is_ipv4() {
        "0.0.0.0:0".parse()?
    } else {
        "[::]:0".parse()?
    };
    quinn::Endpoint::client(bind).context("starting a QUIC client endpoint")
}

/// Wraps a rustls client config for QUIC with the uplink's transport settings.
pub fn quic_client_config(tls: rustls::ClientConfig) -> anyhow::Result<quinn::ClientConfig> {
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
        .context("TLS configuration is not usable for QUIC")?;
    let mut cfg = quinn::ClientConfig::new(std::sync::Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport.keep_alive_interval(Some(Duration::from_secs(5)));
    transport.max_idle_timeout(Some(
        Duration::from_secs(20).try_into().context("idle timeout")?,
    ));
    cfg.transport_config(std::sync::Arc::new(transport));
    Ok(cfg)
}

/// How long the appliance waits for the QUIC handshake with central.
pub const JOIN_HANDSHAKE_WAIT: Duration = Duration::from_secs(15);
/// How long the appliance waits for central's answer to a join request.
pub const JOIN_ANSWER_WAIT: Duration = Duration::from_secs(30);
/// The longest a join can take before it fails on its own (callers of the
/// join API wait at least this long).
pub const JOIN_WAIT_MAX: Duration =
    Duration::from_secs(JOIN_HANDSHAKE_WAIT.as_secs() + JOIN_ANSWER_WAIT.as_secs());

/// Joins central and stores the identity in `dir`.
pub async fn join(
    dir: &UplinkDir,
    params: &JoinParams,
    appliance_version: &str,
) -> anyhow::Result<JoinedSite> {
    let addr = resolve(&params.central).await?;
    let verifier = PinnedCaVerifier::new(params.fingerprint);
    let cfg = quic_client_config(tls::pinned_client_config(
        verifier.clone(),
        ALPN_UPLINK_JOIN,
    )?)?;
    let ep = client_endpoint(addr)?;
    let connecting = ep
        .connect_with(cfg, addr, CENTRAL_SERVER_NAME)
        .context("starting the QUIC handshake with central")?;
    let conn = match tokio::time::timeout(JOIN_HANDSHAKE_WAIT, connecting).await {
        Err(_) => bail!(
            "central at {addr} did not answer within {}s",
            JOIN_HANDSHAKE_WAIT.as_secs()
        ),
        Ok(Err(e)) => {
            if let Some(seen) = verifier.mismatch() {
                let seen: Vec<String> = seen.iter().map(|f| f.to_string()).collect();
                bail!(
                    "central at {addr} presented CA {} which does not match --ca-fingerprint {}; \
                     check the fingerprint printed by `outpost-central site add`",
                    seen.join(", "),
                    params.fingerprint
                );
            }
            return Err(e).with_context(|| format!("connecting to central at {addr}"));
        }
        Ok(Ok(c)) => c,
    };
    let (key_pem, csr_der) = generate_csr("outpost site").context("generating the site key")?;
    let hostname = std::env::var("HOSTNAME").unwrap_or_default();
    let req = JoinRequest {
        protocol_version: UPLINK_PROTOCOL_VERSION,
        token: params.token.clone(),
        csr_der,
        appliance_version: appliance_version.to_string(),
        hostname,
    };
    let (mut send, mut recv) = conn.open_bi().await.context("opening the join stream")?;
    send.write_all(&encode_frame(&req, MAX_UPLINK_FRAME_BYTES)?)
        .await
        .context("sending the join request")?;
    let _ = send.finish();
    let mut reader = FrameReader::new(MAX_UPLINK_FRAME_BYTES);
    // Generous: over a lossy WAN the answer (two certificates) may need
    // several retransmissions, and the token is spent once central answers.
    let resp = tokio::time::timeout(JOIN_ANSWER_WAIT, reader.next::<JoinResponse, _>(&mut recv))
        .await
        .map_err(|_| {
            anyhow!(
                "central did not answer the join request within {}s",
                JOIN_ANSWER_WAIT.as_secs()
            )
        })?
        .context("reading central's answer")?
        .ok_or_else(|| anyhow!("central closed the join stream without answering"))?;
    conn.close(0u32.into(), b"joined");
    ep.wait_idle().await;
    match resp {
        JoinResponse::Rejected { message } => bail!("central refused the join: {message}"),
        JoinResponse::Accepted {
            site_id,
            site_name,
            tenant,
            customer,
            cert_der,
            ca_cert_der,
        } => {
            if CaFingerprint::of(&ca_cert_der) != params.fingerprint {
                bail!("central returned a CA that does not match the pinned fingerprint");
            }
            let site = JoinedSite {
                central: params.central.clone(),
                site_id,
                site_name,
                tenant,
                customer,
                interval: params.interval,
                joined_at_ms: crate::now_ms(),
            };
            dir.store(&site, &key_pem, &cert_der, &ca_cert_der)?;
            Ok(site)
        }
    }
}
