//! Datagrams the kernel dropped on a UDP socket because its receive buffer
//! was full: the `drops` column of `/proc/net/udp{,6}`, found by the
//! socket's inode. A leaf module: it imports nothing from the appliance.

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
