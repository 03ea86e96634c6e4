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

/// Collects metrics; keeps the previous readings needed for rates.
pub struct Collector {
    sys: Option<System>,
    disks: Option<Disks>,
    networks: Option<Networks>,
    /// Previous (rx, tx) byte counters per interface and when they were read.
    last_net: HashMap<String, (u64, u64)>,
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
    /// Creates a collector. Platforms where a source is unsupported simply
    /// report fewer metrics.
    pub fn new() -> Collector {
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
            let now = Instant::now();
            let elapsed = self
                .last_net_at
                .map(|t| now.duration_since(t).as_secs_f64());
            for (name, data) in nets.iter() {
                let name = name.to_string_lossy();
                let name = name.as_ref();
                if name == "lo" {
                    continue;
                }
                let (rx, tx) = (data.total_received(), data.total_transmitted());
                push(&mut v, m::NET_RX_BYTES, name, rx as f64);
                push(&mut v, m::NET_TX_BYTES, name, tx as f64);
                if let (Some(secs), Some((prx, ptx))) = (elapsed, self.last_net.get(name))
                    && secs > 0.0
                {
                    push(
                        &mut v,
                        m::NET_RX_BYTES_PER_SEC,
                        name,
                        rx.saturating_sub(*prx) as f64 / secs,
                    );
                    push(
                        &mut v,
                        m::NET_TX_BYTES_PER_SEC,
                        name,
                        tx.saturating_sub(*ptx) as f64 / secs,
                    );
                }
                self.last_net.insert(name.to_string(), (rx, tx));
            }
            self.last_net_at = Some(now);
        }
        MetricsSample { values: v }
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
