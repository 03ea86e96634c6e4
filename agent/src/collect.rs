//! Host metrics and inventory from the operating system (sysinfo), mapped to
//! the stable names of `outpost_proto::metric_names`.

use std::collections::HashMap;
use std::time::Instant;

use outpost_proto::messages::{
    DeviceFacts, DiskInventory, Inventory, MetricValue, MetricsSample, NicInventory,
};
use outpost_proto::metric_names as m;
use sysinfo::{Disks, Networks, ProcessRefreshKind, ProcessesToUpdate, System};

/// File systems that are not disks worth watching.
const PSEUDO_FS: &[&str] = &[
    "tmpfs",
    "devtmpfs",
    "squashfs",
    "overlay",
    "proc",
    "sysfs",
    "cgroup",
    "cgroup2",
    "autofs",
    "devpts",
    "mqueue",
    "debugfs",
    "tracefs",
    "securityfs",
    "pstore",
    "bpf",
    "fusectl",
    "ramfs",
    "nsfs",
    "configfs",
    "efivarfs",
    "hugetlbfs",
];

pub const AGENT_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Name prefixes of virtual network interfaces made and destroyed by
/// container runtimes, hypervisors and CNI plugins, often under random
/// names (`veth3f2a…`, `br-0c1d…`, `cali…`). Each interface costs the
/// appliance four series kept for good, so they are not reported by
/// default (`include_virtual_interfaces`).
const VIRTUAL_INTERFACE_PREFIXES: &[&str] = &[
    "veth", "docker", "br-", "virbr", "cni", "flannel", "cali", "vxlan", "tun", "tap",
];

/// Where Linux lists network interfaces; a physical one has a `device`
/// link below its entry.
const SYS_CLASS_NET: &str = "/sys/class/net";

/// One reading of an interface's byte counters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetReading {
    pub name: String,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    /// Backed by a device (`/sys/class/net/NAME/device` exists), or `None`
    /// where that cannot be told (no `/sys/class/net`).
    pub has_device: Option<bool>,
}

/// Whether `name` is a virtual interface, not reported by default:
/// loopback, a name of [`VIRTUAL_INTERFACE_PREFIXES`], or (on Linux) no
/// device behind it (bridges, veth pairs, tunnels, bonds, VLANs, VPNs).
pub fn is_virtual_interface(name: &str, has_device: Option<bool>) -> bool {
    name == "lo"
        || VIRTUAL_INTERFACE_PREFIXES
            .iter()
            .any(|p| name.starts_with(p))
        || has_device == Some(false)
}

/// Whether the interface has a device behind it (Linux `sysfs`).
fn has_device(name: &str) -> Option<bool> {
    let class = std::path::Path::new(SYS_CLASS_NET);
    if !class.is_dir() {
        return None;
    }
    Some(class.join(name).join("device").exists())
}

/// Collects metrics; keeps the previous readings needed for rates.
pub struct Collector {
    sys: Option<System>,
    disks: Option<Disks>,
    networks: Option<Networks>,
    /// Previous (rx, tx) byte counters per reported interface and when
    /// they were read; only interfaces present at the last reading.
    last_net: HashMap<String, (u64, u64)>,
    /// Report virtual interfaces too ([`is_virtual_interface`]; agent.toml
    /// `include_virtual_interfaces`).
    include_virtual: bool,
    last_net_at: Option<Instant>,
    /// systemctl is missing (warned once).
    warned_systemctl: bool,
}

impl std::fmt::Debug for Collector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Collector").finish_non_exhaustive()
    }
}

impl Default for Collector {
    fn default() -> Self {
        Self::new()
    }
}

/// Reported precision: percentages, loads and rates carry two decimals (a
/// hundredth of a percent is beyond what monitoring needs, and decimal
/// values compress to a byte or two per sample on the appliance); byte
/// counts and counters are integers already.
fn round2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

fn push(out: &mut Vec<MetricValue>, name: &str, label: &str, value: f64) {
    let value = round2(value);
    if value.is_finite() {
        out.push(MetricValue {
            name: name.to_string(),
            label: label.to_string(),
            value,
        });
    }
}

fn percent(used: u64, total: u64) -> f64 {
    if total == 0 {
        0.0
    } else {
        used as f64 * 100.0 / total as f64
    }
}

impl Collector {
    /// Creates a collector that skips virtual network interfaces.
    /// Platforms where a source is unsupported simply report fewer metrics.
    pub fn new() -> Collector {
        Collector::with_virtual_interfaces(false)
    }

    /// Creates a collector; `include_virtual` reports virtual network
    /// interfaces too.
    pub fn with_virtual_interfaces(include_virtual: bool) -> Collector {
        let mut sys = System::new().ok();
        if let Some(s) = sys.as_mut() {
            // CPU usage needs two readings; take the first now.
            s.refresh_cpu_usage();
        }
        Collector {
            sys,
            disks: Disks::new_with_refreshed_list().ok(),
            networks: Networks::new_with_refreshed_list().ok(),
            last_net: HashMap::new(),
            include_virtual,
            last_net_at: None,
            warned_systemctl: false,
        }
    }

    /// One metrics sample.
    pub fn metrics(&mut self) -> MetricsSample {
        let mut v = Vec::with_capacity(32);
        if let Some(sys) = self.sys.as_mut() {
            sys.refresh_cpu_usage();
            sys.refresh_memory();
            push(&mut v, m::CPU, "", f64::from(sys.global_cpu_usage()));
            push(
                &mut v,
                m::MEMORY,
                "",
                percent(sys.used_memory(), sys.total_memory()),
            );
            push(&mut v, m::MEMORY_USED_BYTES, "", sys.used_memory() as f64);
            push(&mut v, m::MEMORY_TOTAL_BYTES, "", sys.total_memory() as f64);
            push(
                &mut v,
                m::SWAP,
                "",
                percent(sys.used_swap(), sys.total_swap()),
            );
            push(&mut v, m::SWAP_USED_BYTES, "", sys.used_swap() as f64);
            sys.refresh_processes_specifics(
                ProcessesToUpdate::All,
                true,
                ProcessRefreshKind::nothing(),
            );
            push(&mut v, m::PROCESSES, "", sys.processes().len() as f64);
        }
        if let Ok(load) = System::load_average() {
            push(&mut v, m::LOAD1, "", load.one);
            push(&mut v, m::LOAD5, "", load.five);
            push(&mut v, m::LOAD15, "", load.fifteen);
        }
        if let Ok(up) = System::uptime() {
            push(&mut v, m::UPTIME_SECONDS, "", up as f64);
        }
        if let Some(disks) = self.disks.as_mut() {
            disks.refresh(true);
            for d in disks.iter() {
                let fs = d.file_system().to_string_lossy();
                if PSEUDO_FS.contains(&fs.as_ref()) || d.total_space() == 0 {
                    continue;
                }
                let mount = d.mount_point().to_string_lossy();
                let used = d.total_space().saturating_sub(d.available_space());
                push(
                    &mut v,
                    m::DISK_USED_PERCENT,
                    &mount,
                    percent(used, d.total_space()),
                );
                push(&mut v, m::DISK_USED_BYTES, &mount, used as f64);
                push(&mut v, m::DISK_TOTAL_BYTES, &mount, d.total_space() as f64);
            }
        }
        if let Some(nets) = self.networks.as_mut() {
            nets.refresh(true);
            let readings: Vec<NetReading> = nets
                .iter()
                .map(|(name, data)| {
                    let name = name.to_string_lossy().into_owned();
                    NetReading {
                        has_device: has_device(&name),
                        name,
                        rx_bytes: data.total_received(),
                        tx_bytes: data.total_transmitted(),
                    }
                })
                .collect();
            self.net_metrics(readings, Instant::now(), &mut v);
        }
        MetricsSample { values: v }
    }

    /// Network metrics from `readings` taken at `now`: byte counters and,
    /// from the second reading of an interface on, rates. Virtual
    /// interfaces are skipped unless included; the previous readings kept
    /// for rates are those of the interfaces reported now (an interface
    /// that went away is forgotten).
    pub fn net_metrics(
        &mut self,
        readings: Vec<NetReading>,
        now: Instant,
        v: &mut Vec<MetricValue>,
    ) {
        let elapsed = self
            .last_net_at
            .map(|t| now.saturating_duration_since(t).as_secs_f64());
        let mut seen = HashMap::with_capacity(readings.len());
        for r in readings {
            if r.name == "lo"
                || (!self.include_virtual && is_virtual_interface(&r.name, r.has_device))
            {
                continue;
            }
            let name = r.name.as_str();
            let (rx, tx) = (r.rx_bytes, r.tx_bytes);
            push(v, m::NET_RX_BYTES, name, rx as f64);
            push(v, m::NET_TX_BYTES, name, tx as f64);
            if let (Some(secs), Some((prx, ptx))) = (elapsed, self.last_net.get(name))
                && secs > 0.0
            {
                push(
                    v,
                    m::NET_RX_BYTES_PER_SEC,
                    name,
                    rx.saturating_sub(*prx) as f64 / secs,
                );
                push(
                    v,
                    m::NET_TX_BYTES_PER_SEC,
                    name,
                    tx.saturating_sub(*ptx) as f64 / secs,
                );
            }
            seen.insert(r.name, (rx, tx));
        }
        self.last_net = seen;
        self.last_net_at = Some(now);
    }

    /// Watched services and processes: `service_active{unit}` (1/0, via
    /// `systemctl is-active`) and `process_count{name}`.
    pub fn checks(&mut self, services: &[String], processes: &[String]) -> Vec<MetricValue> {
        let mut v = Vec::new();
        for unit in services {
            match std::process::Command::new("systemctl")
                .args(["is-active", "--quiet", unit])
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status()
            {
                Ok(st) => push(
                    &mut v,
                    m::SERVICE_ACTIVE,
                    unit,
                    if st.success() { 1.0 } else { 0.0 },
                ),
                Err(e) => {
                    if !self.warned_systemctl {
                        tracing::warn!(error = %e, "cannot run systemctl: watched services are not reported");
                        self.warned_systemctl = true;
                    }
                }
            }
        }
        if !processes.is_empty()
            && let Some(sys) = self.sys.as_mut()
        {
            sys.refresh_processes_specifics(
                ProcessesToUpdate::All,
                true,
                ProcessRefreshKind::nothing(),
            );
            for name in processes {
                let n = sys
                    .processes()
                    .values()
                    .filter(|p| p.name() == name.as_str())
                    .count();
                push(&mut v, m::PROCESS_COUNT, name, n as f64);
            }
        }
        v
    }

    /// Hardware and software inventory.
    pub fn inventory(&mut self) -> Inventory {
        let facts = facts();
        let (cpu_model, cpu_cores, memory_total_bytes) = match self.sys.as_mut() {
            Some(sys) => {
                sys.refresh_memory();
                (
                    sys.cpus()
                        .first()
                        .map(|c| c.brand().to_string())
                        .unwrap_or_default(),
                    sys.cpus().len() as u32,
                    sys.total_memory(),
                )
            }
            None => (String::new(), 0, 0),
        };
        let disks = self
            .disks
            .as_ref()
            .map(|ds| {
                ds.iter()
                    .filter(|d| !PSEUDO_FS.contains(&d.file_system().to_string_lossy().as_ref()))
                    .map(|d| DiskInventory {
                        mount: d.mount_point().to_string_lossy().into_owned(),
                        filesystem: d.file_system().to_string_lossy().into_owned(),
                        total_bytes: d.total_space(),
                    })
                    .collect()
            })
            .unwrap_or_default();
        let nics = self
            .networks
            .as_ref()
            .map(|ns| {
                let mut v: Vec<NicInventory> = ns
                    .iter()
                    .map(|(name, data)| NicInventory {
                        name: name.to_string_lossy().into_owned(),
                        mac: data.mac_address().to_string(),
                        ips: data
                            .ip_networks()
                            .iter()
                            .map(|n| format!("{}/{}", n.addr, n.prefix))
                            .collect(),
                    })
                    .collect();
                v.sort_by(|a, b| a.name.cmp(&b.name));
                v
            })
            .unwrap_or_default();
        Inventory {
            hostname: facts.hostname,
            os_name: System::name().unwrap_or_default(),
            os_version: System::os_version().unwrap_or_default(),
            kernel: facts.kernel,
            arch: facts.arch,
            cpu_model,
            cpu_cores,
            memory_total_bytes,
            disks,
            nics,
            agent_version: AGENT_VERSION.to_string(),
        }
    }
}

/// Facts sent at enrollment.
pub fn facts() -> DeviceFacts {
    DeviceFacts {
        hostname: System::host_name().unwrap_or_else(|_| "unknown".into()),
        os: System::long_os_version().unwrap_or_else(|_| std::env::consts::OS.to_string()),
        kernel: System::kernel_version().unwrap_or_default(),
        arch: System::cpu_arch(),
        agent_version: AGENT_VERSION.to_string(),
    }
}

/// Seconds since boot (0 if unknown).
pub fn uptime_s() -> u64 {
    System::uptime().unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linux_host_reports_the_documented_metrics() {
        let mut c = Collector::new();
        std::thread::sleep(std::time::Duration::from_millis(200));
        let s = c.metrics();
        let names: Vec<&str> = s.values.iter().map(|v| v.name.as_str()).collect();
        for required in [
            m::CPU,
            m::MEMORY,
            m::SWAP,
            m::LOAD1,
            m::PROCESSES,
            m::UPTIME_SECONDS,
            m::MEMORY_TOTAL_BYTES,
        ] {
            assert!(names.contains(&required), "missing {required} in {names:?}");
        }
        let get = |n: &str| s.values.iter().find(|v| v.name == n).unwrap().value;
        assert!((0.0..=100.0).contains(&get(m::CPU)));
        assert!((0.0..=100.0).contains(&get(m::MEMORY)));
        assert!(get(m::MEMORY_TOTAL_BYTES) > 0.0);
        assert!(get(m::PROCESSES) >= 1.0);
        // Every name is one of the documented ones.
        for n in names {
            assert!(m::ALL.contains(&n), "undocumented metric {n}");
        }
        // Rates appear from the second sample on.
        let s2 = c.metrics();
        let has_iface = s2.values.iter().any(|v| v.name == m::NET_RX_BYTES);
        if has_iface {
            assert!(s2.values.iter().any(|v| v.name == m::NET_RX_BYTES_PER_SEC));
        }
    }

    fn reading(name: &str, bytes: u64, has_device: Option<bool>) -> NetReading {
        NetReading {
            name: name.into(),
            rx_bytes: bytes,
            tx_bytes: bytes / 2,
            has_device,
        }
    }

    /// The interfaces a sample reports, sorted.
    fn reported(v: &[MetricValue]) -> Vec<String> {
        let mut names: Vec<String> = v
            .iter()
            .filter(|x| x.name == m::NET_RX_BYTES)
            .map(|x| x.label.clone())
            .collect();
        names.sort();
        names
    }

    /// A Docker / CI host: interfaces come and go under random names.
    fn docker_host(round: u64) -> Vec<NetReading> {
        vec![
            reading("lo", 1_000, Some(false)),
            reading("eth0", 10_000 * round, Some(true)),
            reading("enp3s0", 20_000 * round, None),
            reading("docker0", 5_000, Some(false)),
            reading(&format!("veth{round:07x}"), 100, Some(false)),
            reading(&format!("br-{round:012x}"), 100, Some(false)),
            reading("virbr0", 100, Some(false)),
            reading("cni0", 100, Some(false)),
            reading("flannel.1", 100, Some(false)),
            reading(&format!("cali{round:011x}"), 100, Some(false)),
            reading("tun0", 100, Some(false)),
            // No device behind it and no telling name: virtual too.
            reading("bond0", 100, Some(false)),
        ]
    }

    #[test]
    fn virtual_interfaces_are_not_reported_by_default() {
        let mut c = Collector::new();
        let t0 = Instant::now();
        for round in 1..=50 {
            let mut v = Vec::new();
            c.net_metrics(
                docker_host(round),
                t0 + std::time::Duration::from_secs(round * 60),
                &mut v,
            );
            assert_eq!(reported(&v), ["enp3s0", "eth0"], "round {round}");
            if round > 1 {
                let rate = v
                    .iter()
                    .find(|x| x.name == m::NET_RX_BYTES_PER_SEC && x.label == "eth0")
                    .unwrap()
                    .value;
                assert_eq!(rate, round2(10_000.0 / 60.0));
            }
        }
        assert_eq!(
            c.last_net.len(),
            2,
            "only reported interfaces are remembered"
        );
    }

    #[test]
    fn virtual_interfaces_are_reported_when_included_and_forgotten_when_gone() {
        let mut c = Collector::with_virtual_interfaces(true);
        let t0 = Instant::now();
        let mut v = Vec::new();
        c.net_metrics(docker_host(1), t0, &mut v);
        let first = reported(&v);
        assert!(first.contains(&"veth0000001".to_string()), "{first:?}");
        assert!(first.contains(&"docker0".to_string()), "{first:?}");
        assert!(!first.contains(&"lo".to_string()), "loopback never");
        assert_eq!(first.len(), 11);
        // The veth, br- and cali interfaces of round 1 are gone in round 2.
        let mut v = Vec::new();
        c.net_metrics(
            docker_host(2),
            t0 + std::time::Duration::from_secs(60),
            &mut v,
        );
        assert_eq!(
            c.last_net.len(),
            11,
            "round 1's short-lived interfaces are forgotten"
        );
        assert!(!c.last_net.contains_key("veth0000001"));
        assert!(c.last_net.contains_key("veth0000002"));
        // A new interface has no rate until its second reading.
        assert!(
            !v.iter()
                .any(|x| x.name == m::NET_RX_BYTES_PER_SEC && x.label == "veth0000002")
        );
    }

    #[test]
    fn interface_names_and_devices_decide_what_is_virtual() {
        for name in [
            "lo",
            "veth1a2b",
            "docker0",
            "br-abc",
            "virbr0",
            "cni0",
            "flannel.1",
            "cali123",
            "tun0",
            "tap0",
            "vxlan.calico",
        ] {
            assert!(is_virtual_interface(name, Some(true)), "{name} by its name");
            assert!(is_virtual_interface(name, None), "{name} without sysfs");
        }
        assert!(!is_virtual_interface("eth0", Some(true)));
        assert!(
            !is_virtual_interface("eth0", None),
            "without sysfs: by name only"
        );
        assert!(
            is_virtual_interface("eth0", Some(false)),
            "no device behind it"
        );
        assert!(!is_virtual_interface("wlp2s0", Some(true)));
    }

    #[test]
    fn inventory_describes_the_host() {
        let inv = Collector::new().inventory();
        assert!(!inv.hostname.is_empty());
        assert!(!inv.kernel.is_empty());
        assert!(inv.cpu_cores >= 1);
        assert!(inv.memory_total_bytes > 0);
        assert_eq!(inv.agent_version, AGENT_VERSION);
    }

    #[test]
    fn watched_processes_are_counted() {
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        let mut c = Collector::new();
        let v = c.checks(&[], &["sleep".into(), "no-such-process-xyz".into()]);
        child.kill().unwrap();
        child.wait().unwrap();
        let get = |l: &str| {
            v.iter()
                .find(|x| x.name == m::PROCESS_COUNT && x.label == l)
                .unwrap()
                .value
        };
        assert!(get("sleep") >= 1.0);
        assert_eq!(get("no-such-process-xyz"), 0.0);
    }
}
