//! What travels between the appliance and an agent for one device's part
//! of a deployment: the install and rollback requests (inside the
//! built-in command actions `InstallPatches` / `RollbackPatches`) and the
//! device's status reports (inside `PatchStatus` records), with the
//! numbers of their encodings.
//!
//! The session carries these as opaque bytes; the agent and the appliance
//! encode and decode them with the proto codec (`encode_compressed` /
//! `decode_compressed`, bincode + zstd). This module owns only the shapes:
//! it runs nothing and encodes nothing itself. bincode cannot read
//! internally tagged enums, so nothing here uses `#[serde(tag)]`.

use super::{BinaryTarget, KeptDeb, PackageChange};

/// The encoding of [`InstallRequest`] and [`RollbackRequest`] in a
/// command spec. A change of their fields is a new number; an agent that
/// does not know a format refuses the command with a reason.
pub const REQUEST_FORMAT: u16 = 1;

/// The encoding of [`DeviceStatus`] in a patch-status record.
pub const STATUS_FORMAT: u16 = 1;

/// Largest decoded request or status either side accepts: 1 MiB.
pub const MAX_PLAIN_BYTES: usize = 1024 * 1024;

/// Bytes of the apt/dpkg log a failed status carries (its tail; the whole
/// log is the command's output).
pub const MAX_LOG_TAIL_BYTES: usize = 4096;

/// The start of a `failed` status's reason when the install was withdrawn
/// before it changed anything (cancelled before apt ran, or never
/// started): the orchestrator reads it as a cancellation, not a failure.
pub const CANCELLED_REASON_PREFIX: &str = "cancelled";

/// When the device reboots after an install.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RebootPolicy {
    Never,
    /// When the install leaves `/var/run/reboot-required` (or a newer
    /// kernel than the running one).
    #[default]
    IfRequired,
    Always,
}

/// A library script run before or after the install, under the same
/// rules as a script command (its body travels with the request).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ScriptStep {
    pub name: String,
    pub version: u32,
    /// `sh`, `bash`, `python3`.
    pub interpreter: String,
    pub body: String,
    pub timeout_ms: u64,
}

/// Install exact versions on one device (action `InstallPatches`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct InstallRequest {
    pub deployment: String,
    /// The install attempt (the command id's last part).
    pub attempt: u32,
    pub targets: Vec<BinaryTarget>,
    /// The site cache as apt's HTTP proxy (`http://HOST:PORT`), if any.
    pub proxy: Option<String>,
    pub reboot: RebootPolicy,
    /// Free space the root file system needs before starting.
    pub min_free_root_bytes: u64,
    /// Keep the `.deb` of every version the install replaces (for a
    /// rollback with the uplink down or the version gone from the index).
    pub keep_previous_debs: bool,
    pub pre_script: Option<ScriptStep>,
    pub post_script: Option<ScriptStep>,
    /// Take a file-system snapshot first where the root allows it.
    pub snapshot: bool,
}

/// Undo an install on one device (action `RollbackPatches`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RollbackRequest {
    pub deployment: String,
    /// The install attempt being rolled back.
    pub attempt: u32,
    /// The install's command id (the agent looks up what it recorded).
    pub install_command: String,
    /// What the install changed, as the device reported it (used when the
    /// agent lost its own record).
    pub changes: Vec<PackageChange>,
    /// The `.deb` files the device kept, as it reported them.
    pub kept: Vec<KeptDeb>,
    pub proxy: Option<String>,
}

/// Where one device's install or rollback stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Downloading,
    Installing,
    RebootPending,
    Succeeded,
    Failed,
    RolledBack,
    RollbackFailed,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Downloading => "downloading",
            Phase::Installing => "installing",
            Phase::RebootPending => "reboot_pending",
            Phase::Succeeded => "succeeded",
            Phase::Failed => "failed",
            Phase::RolledBack => "rolled_back",
            Phase::RollbackFailed => "rollback_failed",
        }
    }

    /// No later status follows for the same command.
    pub fn is_final(self) -> bool {
        !matches!(
            self,
            Phase::Downloading | Phase::Installing | Phase::RebootPending
        )
    }
}

/// One status report of one device about one install or rollback
/// command. Reports of one command arrive in order (the agent's record
/// sequence); the appliance keeps the last.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DeviceStatus {
    /// The install or rollback command this is about.
    pub command: String,
    pub deployment: String,
    pub attempt: u32,
    /// About a rollback (else an install).
    pub rollback: bool,
    pub phase: Phase,
    /// Why it failed, in one line.
    pub reason: Option<String>,
    /// Packages changed so far (from the scans before and after).
    pub changes: Vec<PackageChange>,
    /// `.deb` files kept for a rollback.
    pub kept: Vec<KeptDeb>,
    /// Targets left out, one line each (`nginx: held at 1.22.1-9`).
    pub skipped: Vec<String>,
    /// The snapshot taken before the install, if any (`btrfs:/.snapshots/…`).
    pub snapshot: Option<String>,
    /// The boot id when this was reported (a reboot completes when it
    /// changes).
    pub boot_id: Option<String>,
    /// The install left a reboot required.
    pub reboot_required: bool,
    /// The last [`MAX_LOG_TAIL_BYTES`] of the apt/dpkg log on failure.
    pub log_tail: String,
    /// Agent clock, Unix ms.
    pub at_ms: u64,
}
