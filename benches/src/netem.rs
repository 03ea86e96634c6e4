//! A bad WAN in user space: a UDP relay that loses, delays and cuts
//! datagrams between QUIC peers (an appliance's uplink and central, say).
//!
//! `tc netem` does this in the kernel, but needs the `sch_netem` module,
//! which not every machine (or container) has; this relay needs nothing
//! but a UDP port. Every client address gets its own upstream socket, so
//! replies find their way back; each datagram, in each direction, is
//! dropped while the link is cut, dropped with the configured probability,
//! or delivered after the configured delay plus a uniform jitter (so
//! jitter reorders, as a real path does).
//!
//! The impairment is live-tunable through [`Impairment`] (a test cuts the
//! link for a while, then restores it); [`RelayStats`] counts what happened.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

/// Largest datagram relayed (QUIC stays far below).
const MAX_DATAGRAM: usize = 65_535;
/// Most client addresses relayed at once (each holds a socket and a task).
const MAX_CLIENTS: usize = 1024;

/// What the relay does to datagrams; every field can change while it runs.
#[derive(Debug, Default)]
pub struct Impairment {
    /// Loss probability in parts per million, each direction independently.
    pub loss_ppm: AtomicU32,
    pub delay_ms: AtomicU32,
    /// Extra delay, uniform in `0..=jitter_ms`.
    pub jitter_ms: AtomicU32,
    /// While set, every datagram is dropped (a cut link).
    pub cut: AtomicBool,
}

impl Impairment {
    /// `loss` in percent (0–100), `delay` one way.
    pub fn new(loss_percent: f64, delay: Duration, jitter: Duration) -> Arc<Impairment> {
        let i = Impairment::default();
        i.set_loss_percent(loss_percent);
        i.delay_ms.store(
            delay.as_millis().min(u32::MAX as u128) as u32,
            Ordering::Relaxed,
        );
        i.jitter_ms.store(
            jitter.as_millis().min(u32::MAX as u128) as u32,
            Ordering::Relaxed,
        );
        Arc::new(i)
    }

    pub fn set_loss_percent(&self, loss_percent: f64) {
        let ppm = (loss_percent.clamp(0.0, 100.0) * 10_000.0).round() as u32;
        self.loss_ppm.store(ppm, Ordering::Relaxed);
    }

    pub fn set_cut(&self, cut: bool) {
        self.cut.store(cut, Ordering::Relaxed);
    }

    /// The fate of one datagram: its delay, or why it is dropped.
    fn decide(&self, draw_ppm: u32, draw_jitter: u32) -> Result<Duration, Dropped> {
        if self.cut.load(Ordering::Relaxed) {
            return Err(Dropped::Cut);
        }
        if draw_ppm < self.loss_ppm.load(Ordering::Relaxed) {
            return Err(Dropped::Loss);
        }
        let jitter = self.jitter_ms.load(Ordering::Relaxed);
        let extra = if jitter == 0 {
            0
        } else {
            draw_jitter % (jitter + 1)
        };
        Ok(Duration::from_millis(u64::from(
            self.delay_ms.load(Ordering::Relaxed) + extra,
        )))
    }
}

/// Why a datagram was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dropped {
    Loss,
    Cut,
}

/// What the relay did, both directions together.
#[derive(Debug, Default)]
pub struct RelayStats {
    pub relayed: AtomicU64,
    pub lost: AtomicU64,
    pub cut: AtomicU64,
    /// Datagrams from a new client while `MAX_CLIENTS` were relayed.
    pub refused_clients: AtomicU64,
}

impl RelayStats {
    fn count(&self, d: Dropped) {
        match d {
            Dropped::Loss => &self.lost,
            Dropped::Cut => &self.cut,
        }
        .fetch_add(1, Ordering::Relaxed);
    }

    pub fn line(&self) -> String {
        format!(
            "relayed={} lost={} cut={} refused_clients={}",
            self.relayed.load(Ordering::Relaxed),
            self.lost.load(Ordering::Relaxed),
            self.cut.load(Ordering::Relaxed),
            self.refused_clients.load(Ordering::Relaxed)
        )
    }
}

/// A running relay; dropping it stops it.
pub struct Relay {
    /// Where clients send (instead of the upstream).
    pub addr: SocketAddr,
    pub impairment: Arc<Impairment>,
    pub stats: Arc<RelayStats>,
    stop: CancellationToken,
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Relay {
    /// Relays datagrams sent to `listen` to `upstream` and back, impaired.
    /// Must be called inside a tokio runtime, which runs the relay.
    pub async fn start(
        listen: SocketAddr,
        upstream: SocketAddr,
        impairment: Arc<Impairment>,
    ) -> std::io::Result<Relay> {
        let front = Arc::new(UdpSocket::bind(listen).await?);
        let addr = front.local_addr()?;
        let stats = Arc::new(RelayStats::default());
        let stop = CancellationToken::new();
        tokio::spawn(front_loop(
            front,
            upstream,
            impairment.clone(),
            stats.clone(),
            stop.clone(),
        ));
        Ok(Relay {
            addr,
            impairment,
            stats,
            stop,
        })
    }
}

/// Sends `buf` on `sock` (to `to`, or to the connected peer) after `delay`,
/// unless the link was cut meanwhile (a cut loses what is in flight too).
fn deliver(
    sock: Arc<UdpSocket>,
    to: Option<SocketAddr>,
    buf: Vec<u8>,
    delay: Duration,
    imp: Arc<Impairment>,
    stats: Arc<RelayStats>,
) {
    tokio::spawn(async move {
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
            if imp.cut.load(Ordering::Relaxed) {
                stats.count(Dropped::Cut);
                return;
            }
        }
        stats.relayed.fetch_add(1, Ordering::Relaxed);
        let _ = match to {
            Some(to) => sock.send_to(&buf, to).await,
            None => sock.send(&buf).await,
        };
    });
}

async fn front_loop(
    front: Arc<UdpSocket>,
    upstream: SocketAddr,
    imp: Arc<Impairment>,
    stats: Arc<RelayStats>,
    stop: CancellationToken,
) {
    let clients: Mutex<HashMap<SocketAddr, Arc<UdpSocket>>> = Mutex::new(HashMap::new());
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        let (n, from) = tokio::select! {
            r = front.recv_from(&mut buf) => match r {
                Ok(x) => x,
                Err(_) => continue,
            },
            _ = stop.cancelled() => return,
        };
        let back = {
            let mut c = clients.lock().await;
            match c.get(&from) {
                Some(s) => s.clone(),
                None => {
                    if c.len() >= MAX_CLIENTS {
                        stats.refused_clients.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    let bind: SocketAddr = if upstream.is_ipv4() {
                        ([127, 0, 0, 1], 0).into()
                    } else {
                        (std::net::Ipv6Addr::LOCALHOST, 0).into()
                    };
                    let Ok(s) = UdpSocket::bind(bind).await else {
                        continue;
                    };
                    if s.connect(upstream).await.is_err() {
                        continue;
                    }
                    let s = Arc::new(s);
                    c.insert(from, s.clone());
                    tokio::spawn(back_loop(
                        s.clone(),
                        front.clone(),
                        from,
                        imp.clone(),
                        stats.clone(),
                        stop.clone(),
                    ));
                    s
                }
            }
        };
        match imp.decide(rand::random::<u32>() % 1_000_000, rand::random()) {
            Ok(delay) => deliver(
                back,
                None,
                buf[..n].to_vec(),
                delay,
                imp.clone(),
                stats.clone(),
            ),
            Err(d) => stats.count(d),
        }
    }
}

/// Upstream → client for one client address.
async fn back_loop(
    sock: Arc<UdpSocket>,
    front: Arc<UdpSocket>,
    client: SocketAddr,
    imp: Arc<Impairment>,
    stats: Arc<RelayStats>,
    stop: CancellationToken,
) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        let n = tokio::select! {
            r = sock.recv(&mut buf) => match r {
                Ok(n) => n,
                // ICMP port unreachable (upstream down) surfaces here.
                Err(_) => continue,
            },
            _ = stop.cancelled() => return,
        };
        match imp.decide(rand::random::<u32>() % 1_000_000, rand::random()) {
            Ok(delay) => deliver(
                front.clone(),
                Some(client),
                buf[..n].to_vec(),
                delay,
                imp.clone(),
                stats.clone(),
            ),
            Err(d) => stats.count(d),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decisions_follow_the_configured_impairment() {
        let i = Impairment::new(10.0, Duration::from_millis(200), Duration::from_millis(20));
        assert_eq!(i.loss_ppm.load(Ordering::Relaxed), 100_000);
        assert_eq!(i.decide(99_999, 0), Err(Dropped::Loss));
        assert_eq!(i.decide(100_000, 0), Ok(Duration::from_millis(200)));
        assert_eq!(i.decide(500_000, 20), Ok(Duration::from_millis(220)));
        assert_eq!(i.decide(500_000, 21), Ok(Duration::from_millis(200)));
        i.set_cut(true);
        assert_eq!(i.decide(999_999, 0), Err(Dropped::Cut));
        i.set_cut(false);
        i.set_loss_percent(0.0);
        assert_eq!(i.decide(0, 0), Ok(Duration::from_millis(200)));
    }

    /// A server socket, a lossless relay delaying `delay` in front of it,
    /// and a client socket.
    async fn relayed(delay: Duration) -> (UdpSocket, Relay, Arc<Impairment>, UdpSocket) {
        let server = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let up = server.local_addr().unwrap();
        let imp = Impairment::new(0.0, delay, Duration::ZERO);
        let relay = Relay::start("127.0.0.1:0".parse().unwrap(), up, imp.clone())
            .await
            .unwrap();
        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        (server, relay, imp, client)
    }

    #[tokio::test]
    async fn the_relay_carries_both_ways_and_drops_everything_while_cut() {
        let (server, relay, imp, client) = relayed(Duration::from_millis(5)).await;
        client.send_to(b"ping", relay.addr).await.unwrap();
        let mut b = [0u8; 16];
        let (n, via) = server.recv_from(&mut b).await.unwrap();
        assert_eq!(&b[..n], b"ping");
        server.send_to(b"pong", via).await.unwrap();
        let (n, from) = client.recv_from(&mut b).await.unwrap();
        assert_eq!((&b[..n], from), (&b"pong"[..], relay.addr));
        imp.set_cut(true);
        client.send_to(b"lost", relay.addr).await.unwrap();
        let r = tokio::time::timeout(Duration::from_millis(200), server.recv_from(&mut b)).await;
        assert!(r.is_err(), "nothing crosses a cut link");
        assert_eq!(relay.stats.cut.load(Ordering::Relaxed), 1);
        assert_eq!(relay.stats.relayed.load(Ordering::Relaxed), 2);
    }

    #[tokio::test]
    async fn a_cut_loses_what_is_in_flight() {
        let (server, relay, imp, client) = relayed(Duration::from_millis(300)).await;
        client.send_to(b"in flight", relay.addr).await.unwrap();
        // The relay has it (sleeping out the delay) before the cut starts.
        tokio::time::sleep(Duration::from_millis(100)).await;
        imp.set_cut(true);
        let mut b = [0u8; 16];
        let r = tokio::time::timeout(Duration::from_millis(500), server.recv_from(&mut b)).await;
        assert!(
            r.is_err(),
            "a datagram in flight is lost when the link is cut"
        );
        assert_eq!(relay.stats.cut.load(Ordering::Relaxed), 1);
        assert_eq!(relay.stats.relayed.load(Ordering::Relaxed), 0);
    }
}
