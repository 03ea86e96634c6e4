//! The QUIC listener: binds one or several quinn endpoints on the agents'
//! address (`SO_REUSEPORT`: one UDP socket and one endpoint driver each,
//! all sharing the TLS configuration, the stateless-reset key and the
//! connection-id key), accepts connections up to a bound shared by all of
//! them, completes the TLS handshake, and dispatches by ALPN to enrollment
//! or session handlers. New handshakes are admitted at a bounded rate
//! ([`super::admission`]) before any work is spent on them. It does not
//! touch what a session does with its records (`session`, `writer`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use outpost_proto::{ALPN_ENROLL, ALPN_SESSION, tls};
use quinn::Runtime as _;
use quinn::crypto::rustls::QuicServerConfig;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::sync::Semaphore;
use tokio_util::task::TaskTracker;
use tracing::{debug, info};

use super::IngestCtx;
use super::admission::{Admission, Admitted};
use crate::metrics::labels::KindLabel;
use crate::net::udp_drops::{foreign_sockets, socket_inode};

/// How many endpoints `configured` (the `quic_endpoints` setting) means:
/// 0 is one per available core (the tokio runtime has as many workers), on
/// Linux only (elsewhere `SO_REUSEPORT` does not spread datagrams).
pub fn endpoint_count(configured: usize) -> usize {
    match configured {
        0 if cfg!(target_os = "linux") => std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        0 => 1,
        n => n,
    }
}

/// The listener's endpoints, all bound to one address. The kernel hashes a
/// client's address and port to one socket, so a connection stays on the
/// endpoint that accepted it.
#[derive(Debug, Clone)]
pub struct Listener {
    /// One per UDP socket, in the order bound (index = the `socket` label
    /// of the socket metrics).
    pub endpoints: Vec<quinn::Endpoint>,
}

impl Listener {
    /// The address agents connect to (the same for every endpoint).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.endpoints
            .first()
            .ok_or_else(|| std::io::Error::other("a listener without endpoints"))?
            .local_addr()
    }

    /// Closes every endpoint's connections with `code` and `reason`.
    pub fn close(&self, code: quinn::VarInt, reason: &[u8]) {
        for e in &self.endpoints {
            e.close(code, reason);
        }
    }

    /// Waits until every endpoint has sent its close frames.
    pub async fn wait_idle(&self) {
        for e in &self.endpoints {
            e.wait_idle().await;
        }
    }
}

/// The QUIC server configuration every endpoint shares (one TLS config, one
/// retry-token key, one transport config).
pub fn server_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    client_ca: CertificateDer<'static>,
    segmentation_offload: bool,
) -> anyhow::Result<quinn::ServerConfig> {
    let tls = tls::server_config(chain, key, client_ca, &[ALPN_SESSION, ALPN_ENROLL])?;
    let crypto =
        QuicServerConfig::try_from(tls).context("TLS configuration is not usable for QUIC")?;
    let mut cfg = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    // The session stream, the command and file flows' streams (session
    // protocol 2) and one spare per connection; no uni streams.
    transport.max_concurrent_bidi_streams(4u32.into());
    transport.max_concurrent_uni_streams(0u32.into());
    // See `Config::quic_segmentation_offload`.
    transport.enable_segmentation_offload(segmentation_offload);
    transport.max_idle_timeout(Some(
        Duration::from_secs(60).try_into().context("idle timeout")?,
    ));
    cfg.transport_config(Arc::new(transport));
    Ok(cfg)
}

/// The endpoint configuration every endpoint shares.
///
/// `reset_secret` keys stateless resets. It persists across restarts (see
/// `site`), so after a crash the restarted appliance can reset the agents'
/// stale connections at their next packet, whichever of its sockets
/// receives it, and they reconnect at once instead of waiting for an idle
/// timeout.
pub fn endpoint_config(reset_secret: &[u8; 32]) -> quinn::EndpointConfig {
    let reset_key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, reset_secret);
    let mut endpoint_cfg = quinn::EndpointConfig::new(Arc::new(reset_key));
    // Connection ids are validated with a keyed hash; keying it from the same
    // persistent secret lets a restarted appliance (any of its endpoints)
    // recognise its previous life's connection ids and answer them with a
    // stateless reset.
    let cid_key = u64::from_le_bytes(reset_secret[..8].try_into().unwrap_or([0; 8]));
    endpoint_cfg.cid_generator(move || {
        Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key))
    });
    endpoint_cfg
}

/// Binds the QUIC listener: `endpoints` endpoints (see [`endpoint_count`])
/// on `addr`, each socket's kernel drops followed by the metrics.
#[allow(clippy::too_many_arguments)]
pub fn bind(
    addr: SocketAddr,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    client_ca: CertificateDer<'static>,
    reset_secret: &[u8; 32],
    udp_buffer_bytes: usize,
    endpoints: usize,
    segmentation_offload: bool,
    metrics: &crate::metrics::Metrics,
) -> anyhow::Result<Listener> {
    let server = server_config(chain, key, client_ca, segmentation_offload)?;
    let bound = bind_endpoints(
        addr,
        endpoint_count(endpoints),
        udp_buffer_bytes,
        &endpoint_config(reset_secret),
        &server,
    )?;
    for (i, b) in bound.iter().enumerate() {
        if let Some(inode) = b.inode {
            metrics.quic_sockets.watch(i, inode);
        }
    }
    Ok(Listener {
        endpoints: bound.into_iter().map(|b| b.endpoint).collect(),
    })
}

/// One bound endpoint and its socket's kernel inode (if known).
#[derive(Debug)]
pub struct BoundEndpoint {
    pub endpoint: quinn::Endpoint,
    pub inode: Option<u64>,
}

/// Binds `count` endpoints on `addr` (port 0: the port the kernel picks for
/// the first, the others join it), with `SO_REUSEPORT` when more than one,
/// all sharing `endpoint_cfg` and `server_cfg`. Refuses to start when a
/// socket of another process joined the same address (it would take a
/// share of the agents).
pub fn bind_endpoints(
    addr: SocketAddr,
    count: usize,
    udp_buffer_bytes: usize,
    endpoint_cfg: &quinn::EndpointConfig,
    server_cfg: &quinn::ServerConfig,
) -> anyhow::Result<Vec<BoundEndpoint>> {
    let count = count.max(1);
    let reuse_port = count > 1;
    let mut addr = addr;
    let mut out: Vec<BoundEndpoint> = Vec::with_capacity(count);
    for i in 0..count {
        let socket = udp_socket(addr, udp_buffer_bytes, reuse_port)?;
        if i == 0 {
            addr = socket.local_addr().context("the QUIC socket's address")?;
        }
        let inode = socket_inode(&socket);
        let runtime = Arc::new(quinn::TokioRuntime);
        let io = runtime
            .wrap_udp_socket(socket)
            .context("registering the QUIC socket")?;
        if i == 0 {
            // quinn-udp's offloads on this kernel: GSO sends up to this many
            // datagrams per system call, GRO receives as many per buffer.
            info!(
                gso_segments = io.max_transmit_segments(),
                gro_segments = io.max_receive_segments(),
                endpoints = count,
                "QUIC UDP offloads"
            );
        }
        let endpoint = quinn::Endpoint::new_with_abstract_socket(
            endpoint_cfg.clone(),
            Some(server_cfg.clone()),
            io,
            runtime,
        )
        .with_context(|| format!("starting QUIC on {addr}"))?;
        out.push(BoundEndpoint { endpoint, inode });
    }
    if reuse_port {
        let ours: Vec<u64> = out.iter().filter_map(|b| b.inode).collect();
        let foreign = foreign_sockets(&ours);
        if foreign > 0 {
            anyhow::bail!(
                "{foreign} other UDP socket(s) are bound to {addr} with SO_REUSEPORT \
                 (another appliance?); they would take a share of the agents"
            );
        }
    }
    Ok(out)
}

/// Binds one of the listener's UDP sockets with large kernel buffers: one
/// socket carries many agents, and the default (~200 KiB) overflows under
/// bursts, which QUIC then pays for with loss recovery (seconds of ack
/// latency). `reuse_port`: several sockets share the address and the kernel
/// spreads clients over them by a hash of their address and port.
fn udp_socket(
    addr: SocketAddr,
    buffer_bytes: usize,
    reuse_port: bool,
) -> anyhow::Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))
        .context("creating the QUIC UDP socket")?;
    if addr.is_ipv6() {
        let _ = socket.set_only_v6(false);
    }
    if reuse_port {
        #[cfg(unix)]
        socket
            .set_reuse_port(true)
            .context("SO_REUSEPORT on the QUIC UDP socket (several endpoints)")?;
        #[cfg(not(unix))]
        anyhow::bail!("several QUIC endpoints need SO_REUSEPORT (Linux)");
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

/// Starts one accept loop per endpoint of `listener`, all sharing one bound
/// of `max_connections` concurrent connections and feeding the same
/// handlers (tracked by `conns`).
pub fn spawn_accept_loops(
    listener: &Listener,
    ctx: Arc<IngestCtx>,
    admission: Arc<Admission>,
    max_connections: usize,
    conns: TaskTracker,
    tracker: &TaskTracker,
) {
    let limit = Arc::new(Semaphore::new(max_connections));
    info!(
        addr = ?listener.local_addr().ok(),
        endpoints = listener.endpoints.len(),
        max_connections,
        "QUIC listener ready"
    );
    for (i, endpoint) in listener.endpoints.iter().enumerate() {
        tracker.spawn(accept_loop(
            i,
            endpoint.clone(),
            ctx.clone(),
            admission.clone(),
            limit.clone(),
            conns.clone(),
        ));
    }
}

/// Accepts connections on endpoint `index` until shutdown. Handlers are
/// tracked by `tracker`; `limit` bounds the connections of every endpoint
/// together.
pub async fn accept_loop(
    index: usize,
    endpoint: quinn::Endpoint,
    ctx: Arc<IngestCtx>,
    admission: Arc<Admission>,
    limit: Arc<Semaphore>,
    tracker: TaskTracker,
) {
    loop {
        let incoming = tokio::select! {
            i = endpoint.accept() => i,
            _ = ctx.shutdown.cancelled() => break,
        };
        let Some(incoming) = incoming else { break };
        ctx.metrics.quic_sockets.incoming(index);
        handle_incoming(incoming, &admission, &ctx, &limit, &tracker);
    }
    debug!(endpoint = index, "QUIC endpoint stopped accepting");
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

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use outpost_proto::APPLIANCE_SERVER_NAME;
    use outpost_proto::messages::CloseReason;
    use outpost_proto::pki::CertAuthority;

    use super::*;

    struct Pki {
        server: quinn::ServerConfig,
        client: quinn::ClientConfig,
    }

    fn pki() -> Pki {
        let ca = CertAuthority::generate("test ca").unwrap();
        let issued = ca.issue_server_cert(&[APPLIANCE_SERVER_NAME]).unwrap();
        let key = tls::key_from_pem(&issued.key_pem, "server key").unwrap();
        let server = server_config(
            vec![issued.cert_der.clone(), ca.cert_der().clone()],
            key,
            ca.cert_der().clone(),
            true,
        )
        .unwrap();
        let client_tls =
            tls::pinned_client_config(tls::PinnedCaVerifier::new(ca.fingerprint()), ALPN_ENROLL)
                .unwrap();
        let client = quinn::ClientConfig::new(Arc::new(
            quinn::crypto::rustls::QuicClientConfig::try_from(client_tls).unwrap(),
        ));
        Pki { server, client }
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
    }

    fn loopback() -> SocketAddr {
        "127.0.0.1:0".parse().unwrap()
    }

    type Accepted = (Arc<Vec<AtomicUsize>>, Arc<Mutex<Vec<quinn::Connection>>>);

    /// Accepts on every endpoint (on the current runtime): counts
    /// connections per endpoint, keeps them, echoes their streams.
    fn accept_all(eps: &[quinn::Endpoint]) -> Accepted {
        let counts: Arc<Vec<AtomicUsize>> = Arc::new(eps.iter().map(|_| 0.into()).collect());
        let keep = Arc::new(Mutex::new(Vec::new()));
        for (i, ep) in eps.iter().enumerate() {
            let (ep, counts, keep) = (ep.clone(), counts.clone(), keep.clone());
            tokio::spawn(async move {
                while let Some(inc) = ep.accept().await {
                    let Ok(conn) = inc.await else { continue };
                    counts[i].fetch_add(1, Ordering::SeqCst);
                    keep.lock().unwrap().push(conn.clone());
                    tokio::spawn(async move {
                        while let Ok((mut tx, mut rx)) = conn.accept_bi().await {
                            let Ok(data) = rx.read_to_end(4096).await else {
                                return;
                            };
                            let _ = tx.write_all(&data).await;
                            let _ = tx.finish();
                        }
                    });
                }
            });
        }
        (counts, keep)
    }

    /// `n` clients, each from its own UDP socket (its own port, as agents).
    async fn connect(
        n: usize,
        addr: SocketAddr,
        cfg: &quinn::ClientConfig,
    ) -> Vec<(quinn::Endpoint, quinn::Connection)> {
        let mut out = Vec::new();
        for _ in 0..n {
            let ep = quinn::Endpoint::client(loopback()).unwrap();
            let conn = ep
                .connect_with(cfg.clone(), addr, APPLIANCE_SERVER_NAME)
                .unwrap()
                .await
                .unwrap();
            out.push((ep, conn));
        }
        out
    }

    async fn until_accepted(counts: &[AtomicUsize], n: usize) -> usize {
        let total = || {
            counts
                .iter()
                .map(|c| c.load(Ordering::SeqCst))
                .sum::<usize>()
        };
        for _ in 0..500 {
            if total() >= n {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(total(), n, "every connection accepted once");
        counts
            .iter()
            .filter(|c| c.load(Ordering::SeqCst) > 0)
            .count()
    }

    /// UDP sockets bound to local port `port` (either table).
    fn sockets_on_port(port: u16) -> usize {
        ["/proc/net/udp", "/proc/net/udp6"]
            .iter()
            .filter_map(|p| std::fs::read_to_string(p).ok())
            .flat_map(|t| {
                t.lines()
                    .skip(1)
                    .filter_map(|l| {
                        let local = l.split_whitespace().nth(1)?;
                        u16::from_str_radix(local.rsplit_once(':')?.1, 16).ok()
                    })
                    .collect::<Vec<_>>()
            })
            .filter(|p| *p == port)
            .count()
    }

    #[test]
    fn zero_endpoints_means_one_per_core_and_a_number_is_kept() {
        let cores = std::thread::available_parallelism().unwrap().get();
        if cfg!(target_os = "linux") {
            assert_eq!(endpoint_count(0), cores);
        }
        assert_eq!(endpoint_count(1), 1);
        assert_eq!(endpoint_count(6), 6);
    }

    /// Four endpoints, one port, four sockets; 32 clients from 32 ports
    /// land on several of them, stay on the endpoint that accepted them,
    /// and their streams work.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn several_endpoints_share_one_port_and_the_kernel_spreads_clients_over_them() {
        let pki = pki();
        let bound = bind_endpoints(
            loopback(),
            4,
            1 << 20,
            &endpoint_config(&[7; 32]),
            &pki.server,
        )
        .unwrap();
        let addr = bound[0].endpoint.local_addr().unwrap();
        assert_ne!(addr.port(), 0);
        for b in &bound {
            assert_eq!(b.endpoint.local_addr().unwrap(), addr);
        }
        let inodes: HashSet<u64> = bound.iter().filter_map(|b| b.inode).collect();
        if cfg!(target_os = "linux") {
            assert_eq!(inodes.len(), 4, "four distinct sockets");
            assert_eq!(sockets_on_port(addr.port()), 4);
        }
        let eps: Vec<quinn::Endpoint> = bound.iter().map(|b| b.endpoint.clone()).collect();
        let (counts, _keep) = accept_all(&eps);
        let clients = connect(32, addr, &pki.client).await;
        let used = until_accepted(&counts, 32).await;
        assert!(
            used >= 2,
            "32 client ports all hashed to one socket: {counts:?}"
        );
        for (i, ep) in eps.iter().enumerate() {
            assert_eq!(
                ep.open_connections(),
                counts[i].load(Ordering::SeqCst),
                "endpoint {i} holds the connections it accepted"
            );
        }
        for (i, (_, conn)) in clients.iter().enumerate() {
            let (mut tx, mut rx) = conn.open_bi().await.unwrap();
            let msg = format!("ping {i}");
            tx.write_all(msg.as_bytes()).await.unwrap();
            tx.finish().unwrap();
            let back = tokio::time::timeout(Duration::from_secs(10), rx.read_to_end(4096))
                .await
                .unwrap()
                .unwrap();
            assert_eq!(back, msg.as_bytes());
        }
    }

    /// The appliance dies (no close frames) and restarts with the same
    /// secret: its connections were spread over several sockets, and each
    /// client's next packet, whichever new socket receives it, is answered
    /// with a stateless reset the client accepts.
    #[test]
    fn a_restarted_listener_resets_old_connections_whichever_socket_receives_them() {
        let pki = pki();
        let secret = [9u8; 32];
        let (old_rt, clients_rt) = (runtime(), runtime());
        let (bound, (counts, keep)) = old_rt.block_on(async {
            let bound = bind_endpoints(
                loopback(),
                4,
                1 << 20,
                &endpoint_config(&secret),
                &pki.server,
            )
            .unwrap();
            let eps: Vec<quinn::Endpoint> = bound.iter().map(|b| b.endpoint.clone()).collect();
            let accepted = accept_all(&eps);
            (bound, accepted)
        });
        let addr = bound[0].endpoint.local_addr().unwrap();
        let clients = clients_rt.block_on(async {
            let clients = connect(16, addr, &pki.client).await;
            let used = until_accepted(&counts, 16).await;
            assert!(
                used >= 2,
                "16 client ports all hashed to one socket: {counts:?}"
            );
            clients
        });

        // A crash: the runtime stops, nothing more is sent, sockets close.
        old_rt.shutdown_timeout(Duration::from_secs(5));
        drop(keep);
        drop(bound);
        if cfg!(target_os = "linux") {
            let t = std::time::Instant::now();
            while sockets_on_port(addr.port()) > 0 && t.elapsed() < Duration::from_secs(5) {
                std::thread::sleep(Duration::from_millis(20));
            }
            assert_eq!(sockets_on_port(addr.port()), 0, "the old sockets are gone");
        }

        let new_rt = runtime();
        let _restarted = new_rt.block_on(async {
            bind_endpoints(addr, 4, 1 << 20, &endpoint_config(&secret), &pki.server).unwrap()
        });
        clients_rt.block_on(async {
            for (_, conn) in &clients {
                // Large enough for a reset to be smaller than it (a client
                // whose acknowledgements already met the new sockets may be
                // reset before it writes).
                if let Ok((mut tx, _rx)) = conn.open_bi().await {
                    let _ = tx.write_all(&[1u8; 1000]).await;
                }
                // Resets are rate-limited per endpoint (20 ms).
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            for (i, (_, conn)) in clients.iter().enumerate() {
                let why = tokio::time::timeout(Duration::from_secs(20), conn.closed())
                    .await
                    .unwrap_or_else(|_| panic!("client {i} was not reset"));
                assert!(
                    matches!(why, quinn::ConnectionError::Reset),
                    "client {i}: {why:?}"
                );
            }
        });
    }

    /// Closing the listener closes the connections of every endpoint with
    /// the shutting-down code.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn closing_the_listener_closes_the_connections_of_every_endpoint() {
        let pki = pki();
        let bound = bind_endpoints(
            loopback(),
            4,
            1 << 20,
            &endpoint_config(&[3; 32]),
            &pki.server,
        )
        .unwrap();
        let listener = Listener {
            endpoints: bound.into_iter().map(|b| b.endpoint).collect(),
        };
        let addr = listener.local_addr().unwrap();
        let (counts, _keep) = accept_all(&listener.endpoints);
        let clients = connect(16, addr, &pki.client).await;
        let used = until_accepted(&counts, 16).await;
        assert!(used >= 2, "{counts:?}");
        let code = quinn::VarInt::from(CloseReason::ShuttingDown.code());
        listener.close(code, b"appliance shutting down");
        for (i, (_, conn)) in clients.iter().enumerate() {
            let why = tokio::time::timeout(Duration::from_secs(10), conn.closed())
                .await
                .unwrap();
            match why {
                quinn::ConnectionError::ApplicationClosed(c) => {
                    assert_eq!(c.error_code, code, "client {i}")
                }
                other => panic!("client {i}: {other:?}"),
            }
        }
        tokio::time::timeout(Duration::from_secs(5), listener.wait_idle())
            .await
            .unwrap();
        for ep in &listener.endpoints {
            assert_eq!(ep.open_connections(), 0);
        }
    }

    /// With several sockets, a second listener on the same address (it
    /// could join the SO_REUSEPORT group) is refused instead of silently
    /// taking a share of the agents.
    #[cfg(target_os = "linux")]
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_second_listener_on_the_same_address_is_refused() {
        let pki = pki();
        let cfg = endpoint_config(&[5; 32]);
        let first = bind_endpoints(loopback(), 2, 1 << 20, &cfg, &pki.server).unwrap();
        let addr = first[0].endpoint.local_addr().unwrap();
        let err = bind_endpoints(addr, 2, 1 << 20, &cfg, &pki.server).unwrap_err();
        assert!(format!("{err:#}").contains("other UDP socket"), "{err:#}");
        // A single socket (no SO_REUSEPORT) cannot bind at all.
        assert!(bind_endpoints(addr, 1, 1 << 20, &cfg, &pki.server).is_err());
    }
}
