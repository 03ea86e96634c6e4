//! Datagrams the kernel dropped on a UDP socket because its receive buffer
//! was full: the `drops` column of `/proc/net/udp{,6}`, found by the
//! socket's inode, and the metrics of the QUIC listener's sockets
//! ([`QuicSocketMetrics`]: drops summed over every socket and per socket,
//! connection attempts per socket). A leaf module: it imports nothing from
//! the appliance (the listener registers its sockets, `metrics` exports).

use std::sync::Mutex;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

/// The kernel inode of a socket (`socket:[N]`), which names it in
/// `/proc/net/udp`.
#[cfg(target_os = "linux")]
pub fn socket_inode(socket: &std::net::UdpSocket) -> Option<u64> {
    use std::os::fd::AsRawFd;
    let link = std::fs::read_link(format!("/proc/self/fd/{}", socket.as_raw_fd())).ok()?;
    link.to_str()?
        .strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

#[cfg(not(target_os = "linux"))]
pub fn socket_inode(_socket: &std::net::UdpSocket) -> Option<u64> {
    None
}

/// Datagrams the kernel dropped on the UDP socket `inode` because its
/// receive buffer was full (the `drops` column of `/proc/net/udp{,6}`):
/// the sign that the QUIC endpoint does not read fast enough. `None` where
/// the kernel does not say.
pub fn udp_receive_drops(inode: u64) -> Option<u64> {
    ["/proc/net/udp", "/proc/net/udp6"].iter().find_map(|path| {
        let table = std::fs::read_to_string(path).ok()?;
        drops_in_table(&table, inode)
    })
}

/// The `drops` column of the row of socket `inode` in a `/proc/net/udp`
/// table (header line first), if that row is there and well-formed.
pub fn drops_in_table(table: &str, inode: u64) -> Option<u64> {
    table.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        (f.get(9)?.parse::<u64>().ok()? == inode).then(|| f.get(12)?.parse().ok())?
    })
}

/// Both kernel tables (`/proc/net/udp` then `/proc/net/udp6`), concatenated
/// with their header lines (which parse as no row); empty where the kernel
/// has none.
fn kernel_tables() -> String {
    ["/proc/net/udp", "/proc/net/udp6"]
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .collect::<Vec<_>>()
        .join("\n")
}

/// Sockets other than `ours` bound to exactly the local address (address
/// and port) of the first of `ours` that `table` lists: with SO_REUSEPORT
/// another process of the same user could join the listener's group and
/// take a share of the agents; the listener refuses to start then.
pub fn foreign_sockets_in_table(table: &str, ours: &[u64]) -> usize {
    let rows: Vec<(&str, u64)> = table
        .lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            Some((*f.get(1)?, f.get(9)?.parse::<u64>().ok()?))
        })
        .collect();
    let Some(local) = rows
        .iter()
        .find(|(_, inode)| ours.contains(inode))
        .map(|(l, _)| *l)
    else {
        return 0;
    };
    rows.iter()
        .filter(|(l, inode)| *l == local && !ours.contains(inode))
        .count()
}

/// [`foreign_sockets_in_table`] over the kernel's tables.
pub fn foreign_sockets(ours: &[u64]) -> usize {
    foreign_sockets_in_table(&kernel_tables(), ours)
}

/// Which of the QUIC listener's sockets: its index, `0` to `N-1`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SocketLabel {
    pub socket: String,
}

impl SocketLabel {
    pub fn of(index: usize) -> SocketLabel {
        SocketLabel {
            socket: index.to_string(),
        }
    }
}

/// The QUIC listener's sockets as the kernel and the accept loops see
/// them. The kernel's counts are read at each scrape ([`Self::refresh`]).
#[derive(Debug, Default)]
pub struct QuicSocketMetrics {
    /// `outpost_quic_udp_receive_drops_total`: datagrams the kernel dropped
    /// on any of the listener's sockets (receive buffer full).
    pub drops: Counter,
    /// `outpost_quic_socket_udp_receive_drops_total{socket}`: the same, per
    /// socket.
    pub drops_by_socket: Family<SocketLabel, Counter>,
    /// `outpost_quic_socket_incoming_total{socket}`: connection attempts
    /// each socket's endpoint received (how the kernel spread the agents).
    pub incoming: Family<SocketLabel, Counter>,
    /// The sockets followed, with their drop count at the previous refresh.
    watched: Mutex<Vec<Watched>>,
}

#[derive(Debug)]
struct Watched {
    label: SocketLabel,
    inode: u64,
    seen: u64,
}

impl QuicSocketMetrics {
    pub fn register(&self, r: &mut Registry) {
        r.register(
            "quic_udp_receive_drops",
            "Datagrams the kernel dropped on the QUIC sockets because their receive buffer was full (all sockets)",
            self.drops.clone(),
        );
        r.register(
            "quic_socket_udp_receive_drops",
            "Datagrams the kernel dropped on one QUIC socket because its receive buffer was full",
            self.drops_by_socket.clone(),
        );
        r.register(
            "quic_socket_incoming",
            "Connection attempts received by each QUIC socket's endpoint",
            self.incoming.clone(),
        );
    }

    /// Follows the kernel's drop count of socket `index` (kernel inode
    /// `inode`) from its current value.
    pub fn watch(&self, index: usize, inode: u64) {
        let seen = udp_receive_drops(inode).unwrap_or(0);
        let label = SocketLabel::of(index);
        // Exported at 0 from the start.
        let _ = self.drops_by_socket.get_or_create(&label);
        let mut w = self.watched.lock().unwrap_or_else(|p| p.into_inner());
        w.retain(|x| x.label != label);
        w.push(Watched { label, inode, seen });
    }

    /// Counts a connection attempt on socket `index`.
    pub fn incoming(&self, index: usize) {
        self.incoming.get_or_create(&SocketLabel::of(index)).inc();
    }

    /// Adds what each socket dropped since the previous refresh (the
    /// kernel's tables are read once).
    pub fn refresh(&self) {
        let mut w = self.watched.lock().unwrap_or_else(|p| p.into_inner());
        if w.is_empty() {
            return;
        }
        self.refresh_from(&mut w, &kernel_tables());
    }

    fn refresh_from(&self, watched: &mut [Watched], tables: &str) {
        for s in watched {
            // A second table's header line parses as no row.
            let Some(now) = drops_in_table(tables, s.inode) else {
                continue;
            };
            let new = now.saturating_sub(s.seen);
            s.seen = now;
            self.drops.inc_by(new);
            self.drops_by_socket.get_or_create(&s.label).inc_by(new);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLE: &str = "   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
  120: 00000000:1151 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 41235 2 0000000000000000 17
  347: 0100007F:0035 00000000:0000 07 00000000:00000000 00:00000000 00000000   101        0 18890 2 0000000000000000 0
  348: 0100007F:0036 00000000:0000 07 00000000:00000000 00:00000000 00000000   101        0 777 2 0000000000000000 x
";

    #[test]
    fn the_drops_column_of_the_socket_row_is_read() {
        assert_eq!(drops_in_table(TABLE, 41235), Some(17));
        assert_eq!(drops_in_table(TABLE, 18890), Some(0));
    }

    #[test]
    fn an_absent_socket_or_a_malformed_row_says_nothing() {
        assert_eq!(drops_in_table(TABLE, 4), None, "no such inode");
        assert_eq!(drops_in_table(TABLE, 777), None, "drops not a number");
        assert_eq!(
            drops_in_table(TABLE.lines().next().unwrap_or(""), 41235),
            None,
            "header only"
        );
        assert_eq!(drops_in_table("", 41235), None);
    }

    #[test]
    fn foreign_sockets_are_the_others_bound_to_our_exact_local_address() {
        let t = "   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
  1: 0100007F:1151 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 11 2 0000000000000000 0
  2: 0100007F:1151 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 12 2 0000000000000000 0
  3: 0100007F:1152 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 13 2 0000000000000000 0
  4: 00000000:1151 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 14 2 0000000000000000 0
";
        assert_eq!(foreign_sockets_in_table(t, &[11, 12]), 0, "ours only");
        assert_eq!(foreign_sockets_in_table(t, &[11]), 1, "12 joined our group");
        assert_eq!(foreign_sockets_in_table(t, &[13]), 0, "another port");
        assert_eq!(foreign_sockets_in_table(t, &[99]), 0, "not listed");
        // Two tables concatenated: the second header parses as no row.
        let both = format!("{t}\n{t}");
        assert_eq!(foreign_sockets_in_table(&both, &[11, 12]), 0);
        assert_eq!(foreign_sockets_in_table(&both, &[11]), 2);
    }

    fn tiny_buffer_socket() -> std::net::UdpSocket {
        let sock = socket2::Socket::new(
            socket2::Domain::IPV4,
            socket2::Type::DGRAM,
            Some(socket2::Protocol::UDP),
        )
        .unwrap();
        sock.set_recv_buffer_size(1).unwrap(); // the kernel rounds up to its minimum
        sock.bind(
            &"127.0.0.1:0"
                .parse::<std::net::SocketAddr>()
                .unwrap()
                .into(),
        )
        .unwrap();
        sock.into()
    }

    /// Several listener sockets: the total counts every socket's drops,
    /// each socket has its own series, and a refresh adds only what is new.
    #[cfg(target_os = "linux")]
    #[test]
    fn the_listener_drop_counter_covers_every_socket() {
        let (a, b) = (tiny_buffer_socket(), tiny_buffer_socket());
        let m = QuicSocketMetrics::default();
        let mut r = Registry::with_prefix("outpost");
        m.register(&mut r);
        m.watch(0, socket_inode(&a).unwrap());
        m.watch(1, socket_inode(&b).unwrap());
        m.incoming(1);
        m.refresh();
        assert_eq!(m.drops.get(), 0);
        let tx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        for s in [&a, &b] {
            for _ in 0..500 {
                tx.send_to(&[7u8; 1200], s.local_addr().unwrap()).unwrap();
            }
        }
        m.refresh();
        let per = |i: usize| m.drops_by_socket.get_or_create(&SocketLabel::of(i)).get();
        let (da, db) = (per(0), per(1));
        assert!(da > 0 && db > 0, "both sockets overflowed: {da} {db}");
        assert_eq!(m.drops.get(), da + db);
        assert_eq!(
            udp_receive_drops(socket_inode(&a).unwrap()),
            Some(da),
            "what the kernel says"
        );
        m.refresh();
        assert_eq!(m.drops.get(), da + db, "nothing new, nothing added");
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &r).unwrap();
        for line in [
            format!("outpost_quic_udp_receive_drops_total {}", da + db),
            format!("outpost_quic_socket_udp_receive_drops_total{{socket=\"0\"}} {da}"),
            format!("outpost_quic_socket_udp_receive_drops_total{{socket=\"1\"}} {db}"),
            "outpost_quic_socket_incoming_total{socket=\"1\"} 1".to_string(),
        ] {
            assert!(text.contains(&line), "{line} not in {text}");
        }
    }

    /// A socket nobody reads, with the smallest receive buffer, overflows:
    /// the kernel's drop count for exactly that socket goes up.
    #[cfg(target_os = "linux")]
    #[test]
    fn receive_drops_of_an_unread_socket_are_read_from_the_kernel() {
        let quiet = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let inode = socket_inode(&quiet).expect("inode");
        assert_eq!(udp_receive_drops(inode), Some(0));

        let sock = socket2::Socket::new(
            socket2::Domain::IPV4,
            socket2::Type::DGRAM,
            Some(socket2::Protocol::UDP),
        )
        .unwrap();
        sock.set_recv_buffer_size(1).unwrap(); // the kernel rounds up to its minimum
        sock.bind(
            &"127.0.0.1:0"
                .parse::<std::net::SocketAddr>()
                .unwrap()
                .into(),
        )
        .unwrap();
        let full: std::net::UdpSocket = sock.into();
        let inode_full = socket_inode(&full).expect("inode");
        assert_ne!(inode, inode_full);
        let to = full.local_addr().unwrap();
        let tx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        for _ in 0..500 {
            tx.send_to(&[7u8; 1200], to).unwrap();
        }
        let drops = udp_receive_drops(inode_full).expect("listed");
        assert!(drops > 0, "an unread 1-byte buffer must drop: {drops}");
        assert_eq!(udp_receive_drops(inode), Some(0), "the other socket");
        assert_eq!(udp_receive_drops(u64::MAX), None, "no such socket");
    }
}
