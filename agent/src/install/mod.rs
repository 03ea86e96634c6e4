//! Patch installs and rollbacks on the device (issue 15): the built-in
//! command actions `InstallPatches` and `RollbackPatches`.
//!
//! An install: decode the request (an unknown format is refused with the
//! reason); scan before (the scanner's tools, [`crate::scan::collect`]);
//! `outpost_patch::install::plan_install`; pre-checks (dpkg lock and its
//! holder, `dpkg --audit` clean, free space; held packages are reported
//! in `skipped`, never forced); optional pre-script; snapshot when asked
//! (btrfs, ZFS; else "not available"); keep the `.deb` of every version
//! replaced when asked (`apt-get download` through the proxy, else
//! `dpkg-repack`; SHA-256 recorded); apt download (`downloading`) then
//! install (`installing`), the apt/dpkg log streamed as the command's
//! output; scan after (changes, unmet targets); post-script; final
//! `succeeded`, `failed` (reason, log tail) or `reboot_pending` (reboot
//! policy; the pending reboot is kept on disk and completed, or failed,
//! when the agent starts on a new boot id).
//!
//! A rollback: the install's own record (else what the appliance sends),
//! `plan_rollback` with the kept `.deb` files (their SHA-256 checked
//! first: a mismatch refuses the rollback), one apt transaction, verified
//! by a scan: `rolled_back` or `rollback_failed`.
//!
//! Statuses are `PatchStatus` records in the agent's records buffer
//! (durable, sequenced, split in parts like package scans), through
//! [`StatusWriter`]. A command cut short by a stop of the agent is
//! reported `failed` ("interrupted", with `dpkg --audit`'s findings) at
//! the next start ([`PatchInstaller::recover`]); the command ledger never
//! runs it again.
//!
//! Owns `[patch_install]` of `agent.toml` and the installer's state
//! directory ([`state`]). Must not touch the command ledger or the
//! session: the executor ([`crate::commands::host`]) calls it.

pub mod run;
pub mod state;
#[cfg(test)]
mod tests;
pub mod tools;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use outpost_patch::install::wire::{DeviceStatus, STATUS_FORMAT};
use outpost_proto::codec;
use outpost_proto::messages::{PackageScanRecord, PatchStatusRecord, RecordBody, split_parts};
use serde::{Deserialize, Serialize};

use crate::commands::reboot::RebootConfig;
use crate::scan::PackageTools;

/// Where the installer's tools are (`[patch_install]` in `agent.toml`).
/// The defaults are a stock Debian/Ubuntu host; tests point every path
/// and option at an isolated root (dpkg `--root`, apt `Dir` options).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct InstallTools {
    /// Serve `InstallPatches` / `RollbackPatches` at all.
    pub enabled: bool,
    pub apt_get: PathBuf,
    /// Added to every `apt-get` run (install, download) right after the
    /// program (`-o Dir=/srv/root ...`).
    pub apt_extra_args: Vec<String>,
    pub dpkg: PathBuf,
    /// Added to every `dpkg` run (`--root=/srv/root --force-not-root`).
    pub dpkg_extra_args: Vec<String>,
    pub dpkg_repack: PathBuf,
    pub dpkg_repack_args: Vec<String>,
    pub btrfs: PathBuf,
    pub zfs: PathBuf,
    /// The device's root: free-space paths (`/`, `/var/cache/apt/archives`)
    /// and the snapshot's file system are taken under it.
    pub root: PathBuf,
    /// The installer's state (kept `.deb` files, pending reboots,
    /// in-flight markers); default `STATE/install`.
    pub state_dir: Option<PathBuf>,
    /// Longest apt run (download, install or rollback).
    #[serde(with = "humantime_serde")]
    pub apt_timeout: Duration,
    /// apt's bound on a stalled HTTP connection (`Acquire::http::Timeout`,
    /// whole seconds): when the site cache restarts under a download, apt
    /// drops the dead connection and retries after this long instead of
    /// apt's default 120 s.
    #[serde(with = "humantime_serde")]
    pub apt_http_timeout: Duration,
    /// apt's retries of a failed download (`Acquire::Retries`), so that a
    /// download cut by the cache's restart resumes.
    pub apt_retries: u32,
    /// Delay given to the reboot command after an install.
    #[serde(with = "humantime_serde")]
    pub reboot_delay: Duration,
}

impl Default for InstallTools {
    fn default() -> Self {
        InstallTools {
            enabled: true,
            apt_get: "apt-get".into(),
            apt_extra_args: Vec::new(),
            dpkg: "dpkg".into(),
            dpkg_extra_args: Vec::new(),
            dpkg_repack: "dpkg-repack".into(),
            dpkg_repack_args: Vec::new(),
            btrfs: "btrfs".into(),
            zfs: "zfs".into(),
            root: "/".into(),
            state_dir: None,
            apt_timeout: Duration::from_secs(3600),
            apt_http_timeout: Duration::from_secs(30),
            apt_retries: 3,
            reboot_delay: Duration::from_secs(60),
        }
    }
}

impl InstallTools {
    /// The options of every `apt-get` run (update, download, install,
    /// rollback), after the program: the acquire bounds, then
    /// `apt_extra_args` (which may override them: apt keeps the last `-o`).
    pub fn apt_args(&self) -> Vec<String> {
        let secs = self.apt_http_timeout.as_secs_f64().ceil().max(1.0) as u64;
        let mut args = vec![
            "-o".to_string(),
            format!("Acquire::http::Timeout={secs}"),
            "-o".to_string(),
            format!("Acquire::Retries={}", self.apt_retries),
        ];
        args.extend(self.apt_extra_args.iter().cloned());
        args
    }
}

/// Reason given when `[patch_install] enabled = false`.
pub const INSTALLS_OFF: &str =
    "patch installs are disabled on this device ([patch_install] enabled = false in agent.toml)";

/// Where device statuses go.
pub trait StatusWriter: Send + Sync {
    /// Buffers `status` durably (or says why not).
    fn write(&self, status: &DeviceStatus) -> Result<(), String>;
}

/// The agent's records buffer: a status becomes `PatchStatus` records
/// (parts of [`PackageScanRecord::MAX_PART_BYTES`]).
impl StatusWriter for crate::session::Shared {
    fn write(&self, status: &DeviceStatus) -> Result<(), String> {
        for body in status_records(status)? {
            self.record(body).map_err(|e| format!("buffering: {e:#}"))?;
        }
        Ok(())
    }
}

/// A status as the records that carry it.
pub fn status_records(status: &DeviceStatus) -> Result<Vec<RecordBody>, String> {
    let payload =
        codec::encode_compressed(status).map_err(|e| format!("encoding the status: {e}"))?;
    let max = PackageScanRecord::MAX_PART_BYTES;
    if payload.len() > max * PackageScanRecord::MAX_PARTS as usize {
        return Err(format!(
            "the status is {} bytes compressed: over the limit",
            payload.len()
        ));
    }
    Ok(split_parts(&payload)
        .map(|(part, parts, c)| {
            RecordBody::PatchStatus(PatchStatusRecord {
                format: STATUS_FORMAT,
                part,
                parts,
                payload: c.to_vec(),
            })
        })
        .collect())
}

/// Everything an install needs (cheap to clone).
#[derive(Clone)]
pub struct PatchInstaller {
    pub(crate) inner: Arc<Setup>,
}

pub(crate) struct Setup {
    pub tools: InstallTools,
    /// The scanner's tools (scans before and after).
    pub scan: PackageTools,
    /// The reboot command, the dpkg lock, the boot id's source.
    pub reboot: RebootConfig,
    pub kill_grace: Duration,
    pub state: state::StateDir,
    pub statuses: Arc<dyn StatusWriter>,
}

impl std::fmt::Debug for PatchInstaller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PatchInstaller")
            .field("state", &self.inner.state.0)
            .finish_non_exhaustive()
    }
}

impl PatchInstaller {
    pub fn new(
        tools: InstallTools,
        scan: PackageTools,
        reboot: RebootConfig,
        kill_grace: Duration,
        state_dir: PathBuf,
        statuses: Arc<dyn StatusWriter>,
    ) -> PatchInstaller {
        let dir = tools.state_dir.clone().unwrap_or(state_dir);
        PatchInstaller {
            inner: Arc::new(Setup {
                tools,
                scan,
                reboot,
                kill_grace,
                state: state::StateDir(dir),
                statuses,
            }),
        }
    }

    /// From the agent's configuration; state under `agent_state/install`.
    pub fn from_config(
        cfg: &crate::config::AgentConfig,
        agent_state: &std::path::Path,
        statuses: Arc<dyn StatusWriter>,
    ) -> Option<PatchInstaller> {
        if !cfg.patch_install.enabled {
            return None;
        }
        let policy = cfg.command_policy();
        Some(PatchInstaller::new(
            cfg.patch_install.clone(),
            cfg.package_tools.clone(),
            policy.reboot,
            policy.kill_grace,
            agent_state.join("install"),
            statuses,
        ))
    }
}
