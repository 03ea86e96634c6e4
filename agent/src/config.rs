//! Agent configuration: `STATE/agent.toml` if present, overridden by flags.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

/// Everything the agent's run loop can be tuned with. Defaults work as is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AgentConfig {
    /// Heartbeat period (±10% jitter). At least 1 s.
    #[serde(with = "humantime_serde")]
    pub heartbeat_interval: Duration,
    /// Metrics collection period. At least 1 s.
    #[serde(with = "humantime_serde")]
    pub metrics_interval: Duration,
    /// Inventory is sent at start and then with this period. At least 1 s.
    #[serde(with = "humantime_serde")]
    pub inventory_interval: Duration,
    /// Bound of the offline buffer on disk; oldest records are dropped (and
    /// counted) beyond it.
    pub buffer_max_bytes: u64,
    /// Reconnect backoff: first ceiling (positive) and maximum (at least
    /// the first ceiling).
    #[serde(with = "humantime_serde")]
    pub reconnect_base: Duration,
    #[serde(with = "humantime_serde")]
    pub reconnect_max: Duration,
    /// Records sent but not yet acknowledged before the agent waits.
    pub max_in_flight_records: u64,
    /// With records in flight and nothing heard from the appliance for this
    /// long, the agent drops the connection and reconnects.
    #[serde(with = "humantime_serde")]
    pub ack_timeout: Duration,
    /// An appliance that says it is slow (session protocol 3: a `Pressure`
    /// frame with a suggested ack timeout) is waited for up to this long
    /// instead of `ack_timeout`; at least `ack_timeout`.
    #[serde(with = "humantime_serde")]
    pub ack_timeout_max: Duration,
    /// systemd units reported as `service_active{unit}` with every metrics sample.
    pub services: Vec<String>,
    /// Process names reported as `process_count{name}` with every metrics sample.
    pub processes: Vec<String>,
    /// Report the counters of virtual network interfaces too (veth, bridges,
    /// docker, CNI, tunnels: any without a device behind it). Off by
    /// default: container hosts make and destroy them under random names,
    /// and each costs the appliance four series kept for good.
    pub include_virtual_interfaces: bool,
    /// Run remote commands pushed by the appliance. On by default (running
    /// commands is what an RMM agent is for; the appliance is reached over
    /// mutual TLS pinned to its CA, and only its technicians and admins may
    /// queue commands). `false` refuses every command with the reason.
    pub remote_commands: bool,
    /// Users a command may run as besides the agent's own user (which needs
    /// no switch). Empty by default: `--run-as` anyone else is refused.
    pub allowed_run_as: Vec<String>,
    /// On timeout or cancel: SIGTERM to the command's process group, then
    /// SIGKILL after this grace.
    #[serde(with = "humantime_serde")]
    pub command_kill_grace: Duration,
    /// Directories the appliance may push files into and pull files from
    /// (with everything below them; symbolic links are resolved first, so
    /// a link may not lead outside). Empty by default: every file transfer
    /// is refused with the reason.
    pub file_roots: Vec<std::path::PathBuf>,
    /// A file transfer that makes no progress for this long while the
    /// appliance is connected fails with that reason (0 s: never).
    #[serde(with = "humantime_serde")]
    pub file_idle_timeout: Duration,
    /// The reboot action's command, run with `sh -c` (`OUTPOST_REBOOT_DELAY_S`
    /// and `OUTPOST_AGENT_PID` in its environment). Default: `shutdown -r
    /// +MINUTES` with a delay, `systemctl reboot` without.
    pub reboot_command: String,
    /// Cancels a scheduled reboot (run with `sh -c` when a reboot command
    /// is cancelled before it is due). Default `shutdown -c`.
    pub reboot_cancel_command: String,
    /// A reboot is refused while another process holds this fcntl lock
    /// (dpkg and apt hold it during package installs).
    pub dpkg_lock: std::path::PathBuf,
    /// Where the kernel's boot id is read (new at every boot).
    pub boot_id_path: std::path::PathBuf,
    /// Scan installed packages (dpkg/apt or rpm) at start, every
    /// `package_scan_interval`, and soon after the package database
    /// changes; `false` turns package scans off.
    pub package_scan: bool,
    /// Period of the scheduled package scan.
    #[serde(with = "humantime_serde")]
    pub package_scan_interval: Duration,
    /// How often the package database's modification time is checked: an
    /// install made outside Outpost is scanned within this period.
    #[serde(with = "humantime_serde")]
    pub package_db_poll_interval: Duration,
    /// A whole scan is sent at least this often (deltas otherwise).
    #[serde(with = "humantime_serde")]
    pub package_scan_full_interval: Duration,
    /// Where the package tools and files are (`[package_tools]`).
    pub package_tools: crate::scan::PackageTools,
    /// Patch installs and rollbacks (`[patch_install]`).
    pub patch_install: crate::install::InstallTools,
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            heartbeat_interval: Duration::from_secs(30),
            metrics_interval: Duration::from_secs(60),
            inventory_interval: Duration::from_secs(24 * 3600),
            buffer_max_bytes: 64 * 1024 * 1024,
            reconnect_base: Duration::from_millis(500),
            reconnect_max: outpost_proto::backoff::AGENT_RECONNECT_MAX,
            max_in_flight_records: 4096,
            ack_timeout: Duration::from_secs(10),
            ack_timeout_max: Duration::from_secs(120),
            services: Vec::new(),
            processes: Vec::new(),
            include_virtual_interfaces: false,
            remote_commands: true,
            allowed_run_as: Vec::new(),
            command_kill_grace: Duration::from_secs(5),
            file_roots: Vec::new(),
            file_idle_timeout: Duration::from_millis(crate::files::idle::DEFAULT_IDLE_TIMEOUT_MS),
            reboot_command: crate::commands::reboot::DEFAULT_REBOOT_COMMAND.into(),
            reboot_cancel_command: crate::commands::reboot::DEFAULT_REBOOT_CANCEL_COMMAND.into(),
            dpkg_lock: crate::commands::reboot::DEFAULT_DPKG_LOCK.into(),
            boot_id_path: crate::commands::reboot::DEFAULT_BOOT_ID_PATH.into(),
            package_scan: true,
            package_scan_interval: Duration::from_secs(24 * 3600),
            package_db_poll_interval: Duration::from_secs(10),
            package_scan_full_interval: Duration::from_secs(7 * 24 * 3600),
            package_tools: crate::scan::PackageTools::default(),
            patch_install: crate::install::InstallTools::default(),
        }
    }
}

impl AgentConfig {
    /// Loads `path` if it exists, else defaults.
    pub fn load(path: &Path) -> anyhow::Result<AgentConfig> {
        if !path.exists() {
            return Ok(AgentConfig::default());
        }
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading agent config {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("parsing agent config {}", path.display()))
    }

    /// What remote commands may do on this agent.
    pub fn command_policy(&self) -> crate::commands::Policy {
        crate::commands::Policy {
            enabled: self.remote_commands,
            allowed_run_as: self.allowed_run_as.clone(),
            kill_grace: self.command_kill_grace,
            reboot: crate::commands::reboot::RebootConfig {
                command: self.reboot_command.clone(),
                dpkg_lock: self.dpkg_lock.clone(),
                boot_id_path: self.boot_id_path.clone(),
            },
        }
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        if self.heartbeat_interval < Duration::from_secs(1) {
            bail!(
                "heartbeat interval must be at least 1s (got {:?})",
                self.heartbeat_interval
            );
        }
        if self.metrics_interval < Duration::from_secs(1) {
            bail!(
                "metrics interval must be at least 1s (got {:?})",
                self.metrics_interval
            );
        }
        if self.inventory_interval < Duration::from_secs(1) {
            bail!(
                "inventory_interval must be at least 1s (got {:?})",
                self.inventory_interval
            );
        }
        if self.reconnect_base.is_zero() {
            bail!(
                "reconnect_base must be positive (e.g. \"500ms\"): 0 would reconnect in a tight loop"
            );
        }
        if self.reconnect_max < self.reconnect_base {
            bail!(
                "reconnect_max ({:?}) must be at least reconnect_base ({:?})",
                self.reconnect_max,
                self.reconnect_base
            );
        }
        if self.buffer_max_bytes < 64 * 1024 {
            bail!("buffer_max_bytes must be at least 64 KiB");
        }
        if self.ack_timeout < Duration::from_secs(1) {
            bail!("ack_timeout must be at least 1s");
        }
        if self.ack_timeout_max < self.ack_timeout {
            bail!(
                "ack_timeout_max ({:?}) must be at least ack_timeout ({:?})",
                self.ack_timeout_max,
                self.ack_timeout
            );
        }
        if self.max_in_flight_records == 0 {
            bail!("max_in_flight_records must be positive");
        }
        if self.package_db_poll_interval < Duration::from_secs(1) {
            bail!("package_db_poll_interval must be at least 1s");
        }
        if self.package_scan_interval < Duration::from_secs(60) {
            bail!("package_scan_interval must be at least 1m");
        }
        self.package_tools
            .manager()
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_file_keeps_defaults_and_unknown_keys_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("agent.toml");
        std::fs::write(&p, "heartbeat_interval = \"5s\"\n").unwrap();
        let c = AgentConfig::load(&p).unwrap();
        assert_eq!(c.heartbeat_interval, Duration::from_secs(5));
        assert_eq!(c.metrics_interval, Duration::from_secs(60));
        std::fs::write(&p, "heartbeat_intervall = \"5s\"\n").unwrap();
        assert!(AgentConfig::load(&p).is_err());
    }

    #[test]
    fn sub_second_heartbeat_is_refused() {
        let c = AgentConfig {
            heartbeat_interval: Duration::from_millis(500),
            ..AgentConfig::default()
        };
        assert!(c.validate().is_err());
        assert!(AgentConfig::default().validate().is_ok());
    }

    /// Each of these would panic a task (`tokio::time::interval` with a
    /// zero period) or reconnect in a tight loop; each is refused by name.
    #[test]
    fn zero_intervals_and_an_inverted_backoff_are_refused_with_the_key() {
        let cases = [
            (
                "inventory_interval = \"0s\"",
                "inventory_interval must be at least 1s",
            ),
            (
                "inventory_interval = \"500ms\"",
                "inventory_interval must be at least 1s",
            ),
            ("reconnect_base = \"0s\"", "reconnect_base must be positive"),
            (
                "reconnect_base = \"0s\"\nreconnect_max = \"0s\"",
                "reconnect_base must be positive",
            ),
            (
                "reconnect_max = \"0s\"",
                "reconnect_max (0ns) must be at least reconnect_base (500ms)",
            ),
            (
                "reconnect_base = \"10s\"\nreconnect_max = \"5s\"",
                "reconnect_max (5s) must be at least reconnect_base (10s)",
            ),
        ];
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("agent.toml");
        for (toml, want) in cases {
            std::fs::write(&p, toml).unwrap();
            let c = AgentConfig::load(&p).unwrap();
            let e = c.validate().expect_err(toml).to_string();
            assert!(e.contains(want), "{toml}: {e}");
        }
        std::fs::write(
            &p,
            "inventory_interval = \"1s\"\nreconnect_base = \"1ms\"\nreconnect_max = \"1ms\"",
        )
        .unwrap();
        AgentConfig::load(&p).unwrap().validate().unwrap();
    }
}
