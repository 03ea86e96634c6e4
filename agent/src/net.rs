//! QUIC client plumbing shared by enrollment and sessions.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, anyhow};
use quinn::crypto::rustls::QuicClientConfig;

/// Resolves `HOST:PORT` to one socket address (IPv4 preferred).
pub async fn resolve(addr: &str) -> anyhow::Result<SocketAddr> {
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host(addr)
        .await
        .with_context(|| format!("resolving appliance address {addr:?} (expected HOST:PORT)"))?
        .collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or_else(|| addrs.first())
        .copied()
        .ok_or_else(|| anyhow!("appliance address {addr:?} resolved to nothing"))
}

/// Looks up the appliance's `HOST:PORT`. The session calls it on every
/// connect attempt: a name that does not resolve yet (DNS down at boot) is
/// a failed attempt to retry, and an appliance whose address changes is
/// followed. Injectable for tests.
pub type Resolver = Arc<
    dyn Fn(&str) -> Pin<Box<dyn Future<Output = anyhow::Result<SocketAddr>> + Send>> + Send + Sync,
>;

/// The system resolver ([`resolve`]).
pub fn dns_resolver() -> Resolver {
    Arc::new(|addr: &str| {
        let addr = addr.to_string();
        Box::pin(async move { resolve(&addr).await })
    })
}

/// Client endpoints, one per address family, each made when first needed
/// (the appliance's address may move from IPv4 to IPv6 between attempts).
#[derive(Debug, Default)]
pub struct ClientEndpoints {
    v4: Option<quinn::Endpoint>,
    v6: Option<quinn::Endpoint>,
}

impl ClientEndpoints {
    /// The endpoint to reach `target` from.
    pub fn for_target(&mut self, target: SocketAddr) -> anyhow::Result<&quinn::Endpoint> {
        let slot = if target.is_ipv4() {
            &mut self.v4
        } else {
            &mut self.v6
        };
        if slot.is_none() {
            *slot = Some(client_endpoint(target)?);
        }
        slot.as_ref()
            .ok_or_else(|| anyhow!("no QUIC client endpoint for {target}"))
    }

    /// Closes every endpoint and waits until their connections are gone.
    pub async fn close(self, reason: &[u8]) {
        for ep in [self.v4, self.v6].into_iter().flatten() {
            ep.close(0u32.into(), reason);
            ep.wait_idle().await;
        }
    }
}

/// Kernel buffers of the client socket (a load generator multiplexes many
/// simulated agents over one socket; a real agent barely uses them).
const CLIENT_UDP_BUFFER_BYTES: usize = 2 * 1024 * 1024;

/// A client endpoint bound to an ephemeral port of the right address family.
pub fn client_endpoint(target: SocketAddr) -> anyhow::Result<quinn::Endpoint> {
    use socket2::{Domain, Protocol, Socket, Type};
    let bind: SocketAddr = if target.is_ipv4() {
        "0.0.0.0:0".parse()?
    } else {
        "[::]:0".parse()?
    };
    let socket = Socket::new(Domain::for_address(bind), Type::DGRAM, Some(Protocol::UDP))
        .context("creating a UDP socket for QUIC")?;
    let _ = socket.set_recv_buffer_size(CLIENT_UDP_BUFFER_BYTES);
    let _ = socket.set_send_buffer_size(CLIENT_UDP_BUFFER_BYTES);
    socket
        .bind(&bind.into())
        .context("binding a UDP socket for QUIC")?;
    let runtime = quinn::default_runtime().context("no async runtime for QUIC")?;
    quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        None,
        socket.into(),
        runtime,
    )
    .context("starting the QUIC client endpoint")
}

/// Wraps a rustls client config for quinn with the agent's transport settings.
pub fn quic_client_config(tls: rustls::ClientConfig) -> anyhow::Result<quinn::ClientConfig> {
    let crypto =
        QuicClientConfig::try_from(tls).context("TLS configuration is not usable for QUIC")?;
    let mut cfg = quinn::ClientConfig::new(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport.keep_alive_interval(Some(Duration::from_secs(10)));
    transport.max_idle_timeout(Some(
        Duration::from_secs(30).try_into().context("idle timeout")?,
    ));
    cfg.transport_config(Arc::new(transport));
    Ok(cfg)
}

/// Whether the server turned the handshake away with QUIC's
/// `CONNECTION_REFUSED`: the appliance's admission control saying "come
/// back later" (over its handshake rate or concurrency), not a failure.
pub fn refused_by_server(e: &quinn::ConnectionError) -> bool {
    matches!(
        e,
        quinn::ConnectionError::ConnectionClosed(c)
            if c.error_code == quinn::TransportErrorCode::CONNECTION_REFUSED
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn closed(code: quinn::TransportErrorCode) -> quinn::ConnectionError {
        quinn::ConnectionError::ConnectionClosed(quinn::ConnectionClose {
            error_code: code,
            frame_type: None,
            reason: bytes::Bytes::new(),
        })
    }

    #[test]
    fn only_connection_refused_counts_as_a_refusal() {
        assert!(refused_by_server(&closed(
            quinn::TransportErrorCode::CONNECTION_REFUSED
        )));
        assert!(!refused_by_server(&closed(
            quinn::TransportErrorCode::PROTOCOL_VIOLATION
        )));
        assert!(!refused_by_server(&quinn::ConnectionError::TimedOut));
        assert!(!refused_by_server(&quinn::ConnectionError::Reset));
    }
}
