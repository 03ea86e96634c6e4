//! Stable metric names reported by the agent.
//!
//! These names are an interface: alert rules, API queries and dashboards use
//! them. Percentages are 0–100. Labelled metrics carry the mount point
//! (`disk_*`) or the interface name (`net_*`) as their label.

/// Total CPU utilisation across all cores, percent.
pub const CPU: &str = "cpu";
/// Load averages.
pub const LOAD1: &str = "load1";
pub const LOAD5: &str = "load5";
pub const LOAD15: &str = "load15";
/// Used memory, percent of total.
pub const MEMORY: &str = "memory";
pub const MEMORY_USED_BYTES: &str = "memory_used_bytes";
pub const MEMORY_TOTAL_BYTES: &str = "memory_total_bytes";
/// Used swap, percent of total (0 when there is no swap).
pub const SWAP: &str = "swap";
pub const SWAP_USED_BYTES: &str = "swap_used_bytes";
pub const UPTIME_SECONDS: &str = "uptime_seconds";
/// Number of processes.
pub const PROCESSES: &str = "processes";
/// Per mount point (label = mount point).
pub const DISK_USED_PERCENT: &str = "disk_used_percent";
pub const DISK_USED_BYTES: &str = "disk_used_bytes";
pub const DISK_TOTAL_BYTES: &str = "disk_total_bytes";
/// Per interface (label = interface name): cumulative byte counters and the
/// rate over the last collection interval.
pub const NET_RX_BYTES: &str = "net_rx_bytes";
pub const NET_TX_BYTES: &str = "net_tx_bytes";
pub const NET_RX_BYTES_PER_SEC: &str = "net_rx_bytes_per_sec";
pub const NET_TX_BYTES_PER_SEC: &str = "net_tx_bytes_per_sec";

/// Watched services (label = unit name): 1 when active, 0 otherwise.
pub const SERVICE_ACTIVE: &str = "service_active";
/// Watched processes (label = process name): how many are running.
pub const PROCESS_COUNT: &str = "process_count";

/// Every name the Linux agent reports, for documentation and validation.
pub const ALL: &[&str] = &[
    CPU,
    LOAD1,
    LOAD5,
    LOAD15,
    MEMORY,
    MEMORY_USED_BYTES,
    MEMORY_TOTAL_BYTES,
    SWAP,
    SWAP_USED_BYTES,
    UPTIME_SECONDS,
    PROCESSES,
    DISK_USED_PERCENT,
    DISK_USED_BYTES,
    DISK_TOTAL_BYTES,
    NET_RX_BYTES,
    NET_TX_BYTES,
    NET_RX_BYTES_PER_SEC,
    NET_TX_BYTES_PER_SEC,
    SERVICE_ACTIVE,
    PROCESS_COUNT,
];

/// Longest metric name or label accepted by the appliance.
pub const MAX_NAME_BYTES: usize = 128;
