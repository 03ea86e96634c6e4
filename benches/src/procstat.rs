//! Process measurements from `/proc` (Linux): CPU seconds, RSS, and finding
//! the process that owns a UDP port (the appliance, when only its address is
//! known).

use std::path::Path;

/// Clock ticks per second for `/proc/<pid>/stat` times (USER_HZ; 100 on
/// every Linux we run on).
const TICKS_PER_SEC: f64 = 100.0;

/// User + system CPU seconds consumed by `pid` so far.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name; utime and stime are the
    // 14th and 15th fields overall, i.e. the 12th and 13th after ")".
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / TICKS_PER_SEC)
}

/// Resident set size of `pid` in bytes.
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|kb| kb.parse::<u64>().ok())
        .map(|kb| kb * 1024)
}

/// Datagrams the kernel dropped on the UDP sockets bound to `port` (the
/// `drops` column of `/proc/net/udp{,6}`: receive buffer full), summed over
/// every socket (an appliance with several QUIC endpoints has one socket
/// per endpoint on the same port).
pub fn udp_drops(port: u16) -> Option<u64> {
    let per = udp_socket_drops(port);
    (!per.is_empty()).then(|| per.iter().sum())
}

/// The drop count of each UDP socket bound to `port` (empty: none).
pub fn udp_socket_drops(port: u16) -> Vec<u64> {
    let mut out = Vec::new();
    for table in ["/proc/net/udp", "/proc/net/udp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            let Some((_, port_hex)) = cols.get(1).and_then(|l| l.rsplit_once(':')) else {
                continue;
            };
            if u16::from_str_radix(port_hex, 16).ok() == Some(port)
                && let Some(d) = cols.last().and_then(|d| d.parse::<u64>().ok())
            {
                out.push(d);
            }
        }
    }
    out
}

/// The pid of the process with a UDP socket bound to `port`, if visible.
pub fn pid_of_udp_port(port: u16) -> Option<u32> {
    let mut inodes = Vec::new();
    for table in ["/proc/net/udp", "/proc/net/udp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            let Some(local) = cols.get(1) else { continue };
            let Some((_, port_hex)) = local.rsplit_once(':') else {
                continue;
            };
            if u16::from_str_radix(port_hex, 16).ok() == Some(port)
                && let Some(inode) = cols.get(9)
            {
                inodes.push(format!("socket:[{inode}]"));
            }
        }
    }
    if inodes.is_empty() {
        return None;
    }
    let me = std::process::id();
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(fds) = std::fs::read_dir(Path::new("/proc").join(pid.to_string()).join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if let Ok(target) = std::fs::read_link(fd.path())
                && inodes.iter().any(|i| target.to_string_lossy() == *i)
            {
                return Some(pid);
            }
        }
    }
    None
}

/// `pid` and every process descended from it (a multi-process server such
/// as a Zabbix proxy forks its workers).
pub fn process_tree(pid: u32) -> Vec<u32> {
    let mut parent = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for entry in dir.flatten() {
            let Ok(p) = entry.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else {
                continue;
            };
            // The 4th field overall, the 2nd after the command name.
            if let Some(pp) = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                .and_then(|x| x.parse::<u32>().ok())
            {
                parent.push((p, pp));
            }
        }
    }
    let mut tree = vec![pid];
    let mut i = 0;
    while i < tree.len() {
        let p = tree[i];
        tree.extend(parent.iter().filter(|(_, pp)| *pp == p).map(|(c, _)| *c));
        i += 1;
    }
    tree
}

/// CPU seconds of `pid` and its descendants (the living ones: sample while
/// the server runs).
pub fn tree_cpu_seconds(pid: u32) -> Option<f64> {
    let own = cpu_seconds(pid)?;
    Some(
        own + process_tree(pid)
            .into_iter()
            .skip(1)
            .filter_map(cpu_seconds)
            .sum::<f64>(),
    )
}

/// Proportional set size of `pid` and its descendants in bytes: memory
/// shared between a server's processes is counted once.
pub fn tree_pss_bytes(pid: u32) -> Option<u64> {
    let mut total = 0;
    for p in process_tree(pid) {
        let Ok(text) = std::fs::read_to_string(format!("/proc/{p}/smaps_rollup")) else {
            continue;
        };
        total += text
            .lines()
            .find_map(|l| l.strip_prefix("Pss:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|kb| kb.parse::<u64>().ok())
            .unwrap_or(0)
            * 1024;
    }
    (total > 0).then_some(total)
}

/// This process's own CPU seconds.
pub fn self_cpu_seconds() -> f64 {
    cpu_seconds(std::process::id()).unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_tree_includes_children_and_their_memory() {
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .expect("spawn sleep");
        let me = std::process::id();
        let tree = process_tree(me);
        assert_eq!(tree[0], me);
        assert!(tree.contains(&child.id()), "{tree:?} lacks {}", child.id());
        assert!(tree_cpu_seconds(me).unwrap() >= cpu_seconds(me).unwrap());
        assert!(tree_pss_bytes(me).unwrap() > 0);
        let _ = child.kill();
        let _ = child.wait();
    }

    #[test]
    fn reads_the_drop_counter_of_a_bound_udp_socket() {
        let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = sock.local_addr().unwrap().port();
        assert_eq!(udp_drops(port), Some(0));
        assert_eq!(udp_socket_drops(port), vec![0]);
        // A port nobody binds has no counter at all.
        drop(sock);
        assert_eq!(udp_drops(port), None);
        assert!(udp_socket_drops(port).is_empty());
    }

    #[test]
    fn reads_our_own_process() {
        let me = std::process::id();
        assert!(rss_bytes(me).unwrap() > 1024 * 1024);
        let t0 = cpu_seconds(me).unwrap();
        let mut x = 0u64;
        for i in 0..50_000_000u64 {
            x = x.wrapping_add(i * i);
        }
        std::hint::black_box(x);
        assert!(cpu_seconds(me).unwrap() >= t0);
    }

    #[test]
    fn finds_the_owner_of_a_udp_port() {
        // Our own socket is skipped (we look for *another* process), so a
        // child process must own it.
        let port = std::net::UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut child = std::process::Command::new("python3")
            .args(["-c", &format!("import socket,time; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(('127.0.0.1',{port})); print('ok', flush=True); time.sleep(30)")])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        use std::io::BufRead;
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(pid_of_udp_port(port), Some(child.id()));
        child.kill().unwrap();
        child.wait().unwrap();
    }
}
