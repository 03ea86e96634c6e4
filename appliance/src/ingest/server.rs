//! The QUIC listener: accepts connections up to a bound, admits new
//! handshakes at a bounded rate ([`super::admission`]), completes the TLS
//! handshake, and dispatches by ALPN to enrollment or session handlers.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use outpost_proto::{ALPN_ENROLL, ALPN_SESSION, tls};
use quinn::crypto::rustls::QuicServerConfig;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::sync::Semaphore;
use tokio_util::task::TaskTracker;
use tracing::{debug, info};

use super::IngestCtx;
use super::admission::{Admission, Admitted};
use crate::metrics::labels::KindLabel;
use crate::net::udp_drops::socket_inode;

/// Binds the QUIC endpoint.
///
/// `reset_secret` keys stateless resets. It persists across restarts (see
/// `site`), so after a crash the restarted appliance can reset the agents'
/// stale connections at their next packet and they reconnect at once instead
/// of waiting for an idle timeout.
pub fn bind(
    addr: SocketAddr,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    client_ca: CertificateDer<'static>,
    reset_secret: &[u8; 32],
    udp_buffer_bytes: usize,
    metrics: &crate::metrics::Metrics,
) -> anyhow::Result<quinn::Endpoint> {
    let tls = tls::server_config(chain, key, client_ca, &[ALPN_SESSION, ALPN_ENROLL])?;
    let crypto =
        QuicServerConfig::try_from(tls).context("TLS configuration is not usable for QUIC")?;
    let mut cfg = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    // The session stream, the command and file flows' streams (session
    // protocol 2) and one spare per connection; no uni streams.
    transport.max_concurrent_bidi_streams(4u32.into());
    transport.max_concurrent_uni_streams(0u32.into());
    transport.max_idle_timeout(Some(
        Duration::from_secs(60).try_into().context("idle timeout")?,
    ));
    cfg.transport_config(Arc::new(transport));
    let reset_key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, reset_secret);
    let mut endpoint_cfg = quinn::EndpointConfig::new(Arc::new(reset_key));
    // Connection ids are validated with a keyed hash; keying it from the same
    // persistent secret lets a restarted appliance recognise its previous
    // life's connection ids and answer them with a stateless reset.
    let cid_key = u64::from_le_bytes(reset_secret[..8].try_into().unwrap_or([0; 8]));
    endpoint_cfg.cid_generator(move || {
        Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key))
    });
    let socket = udp_socket(addr, udp_buffer_bytes)?;
    if let Some(inode) = socket_inode(&socket) {
        metrics.watch_quic_socket(inode);
    }
    quinn::Endpoint::new(
        endpoint_cfg,
        Some(cfg),
        socket,
        Arc::new(quinn::TokioRuntime),
    )
    .with_context(|| format!("starting QUIC on {addr}"))
}

/// Binds the listener's UDP socket with large kernel buffers: one socket
/// carries every agent, and the default (~200 KiB) overflows under bursts,
/// which QUIC then pays for with loss recovery (seconds of ack latency).
fn udp_socket(addr: SocketAddr, buffer_bytes: usize) -> anyhow::Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))
        .context("creating the QUIC UDP socket")?;
    if addr.is_ipv6() {
        let _ = socket.set_only_v6(false);
    }
    let _ = socket.set_recv_buffer_size(buffer_bytes);
    let _ = socket.set_send_buffer_size(buffer_bytes);
    // Linux reports twice the usable size.
    let recv = socket.recv_buffer_size().unwrap_or(0) / 2;
    let send = socket.send_buffer_size().unwrap_or(0) / 2;
    if recv < buffer_bytes / 2 || send < buffer_bytes / 2 {
        tracing::warn!(
            requested = buffer_bytes,
            recv,
            send,
            "UDP buffers capped by the kernel; raise net.core.rmem_max and wmem_max for large fleets"
        );
    }
    socket
        .bind(&addr.into())
        .with_context(|| format!("binding QUIC listener on {addr}"))?;
    Ok(socket.into())
}

/// Accepts connections until shutdown. Handlers are tracked by `tracker`;
/// each attempt goes through [`handle_incoming`].
pub async fn accept_loop(
    endpoint: quinn::Endpoint,
    ctx: Arc<IngestCtx>,
    admission: Arc<Admission>,
    max_connections: usize,
    tracker: TaskTracker,
) {
    let limit = Arc::new(Semaphore::new(max_connections));
    info!(addr = ?endpoint.local_addr().ok(), max_connections, "QUIC listener ready");
    loop {
        let incoming = tokio::select! {
            i = endpoint.accept() => i,
            _ = ctx.shutdown.cancelled() => break,
        };
        let Some(incoming) = incoming else { break };
        handle_incoming(incoming, &admission, &ctx, &limit, &tracker);
    }
    info!("QUIC listener stopped accepting");
}

/// One connection attempt: the connection bound, then admission (accepted,
/// retried or refused: [`Admission::admit`]); an accepted attempt gets a
/// task that completes the handshake (holding its handshake permit until
/// then) and dispatches by ALPN.
pub fn handle_incoming(
    incoming: quinn::Incoming,
    admission: &Admission,
    ctx: &Arc<IngestCtx>,
    limit: &Arc<Semaphore>,
    tracker: &TaskTracker,
) {
    let Ok(permit) = limit.clone().try_acquire_owned() else {
        ctx.metrics.reject("too_many_connections");
        ctx.metrics.admission.outcome("refused");
        incoming.refuse();
        return;
    };
    let Admitted::Handshake(connecting, handshake) = admission.admit(incoming) else {
        return;
    };
    let ctx = ctx.clone();
    tracker.spawn(async move {
        let _permit = permit;
        let conn = match connecting.await {
            Ok(c) => c,
            Err(e) => {
                // Includes client certificates from a foreign CA.
                ctx.metrics.reject("handshake_failed");
                debug!(error = %e, "QUIC handshake failed");
                return;
            }
        };
        drop(handshake);
        ctx.metrics.connections_active.inc();
        let alpn = conn
            .handshake_data()
            .and_then(|h| h.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
            .and_then(|h| h.protocol);
        match alpn.as_deref() {
            Some(p) if p == ALPN_SESSION => {
                ctx.metrics
                    .connections
                    .get_or_create(&KindLabel {
                        kind: "session".into(),
                    })
                    .inc();
                super::session::serve(conn, ctx.clone()).await;
            }
            Some(p) if p == ALPN_ENROLL => {
                ctx.metrics
                    .connections
                    .get_or_create(&KindLabel {
                        kind: "enroll".into(),
                    })
                    .inc();
                super::enroll::serve(conn, ctx.clone()).await;
            }
            _ => {
                ctx.metrics.reject("unknown_alpn");
                conn.close(0u32.into(), b"unknown protocol");
            }
        }
        ctx.metrics.connections_active.dec();
    });
}
