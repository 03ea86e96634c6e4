//! Patch deployment at the site (issue 15): approvals, deployments and
//! their orchestrator (which steps `outpost_patch::rollout` and applies
//! its actions), and the device link (which turns an install or rollback
//! into a built-in command for the agent and the agent's `PatchStatus`
//! records back into device reports).
//!
//! This file holds only the seam between the two halves: the
//! orchestrator talks to devices through [`Installer`] and hears from
//! them through [`StatusSink`]; [`command_id`] maps the rollout's command
//! keys (`DEPLOYMENT/DEVICE/install/ATTEMPT`) to command ids, so queueing
//! the same key twice queues one command.

pub mod api;
pub mod approvals;
pub mod central;
pub mod device;
pub mod metrics;
pub mod options;
pub mod orchestrator;
pub mod schedules;
pub mod store;

use outpost_patch::install::wire::{DeviceStatus, InstallRequest, RollbackRequest};
use outpost_proto::ids::{CommandId, DeviceId};
use sha2::{Digest, Sha256};
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

/// `[deploy]` of `outpost.toml`: how often the orchestrator steps the
/// running deployments (install windows, soak times, deadlines), the
/// proxy the installs go through, and the install options a deployment
/// takes when its creation does not name them (and that deployments
/// stored before per-deployment options run with).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DeployConfig {
    /// Time between two ticks of the orchestrator (a gate's soak time is
    /// noticed at the first tick after it ends). Default 15 s.
    #[serde(with = "humantime_serde")]
    pub tick_interval: Duration,
    /// apt's proxy in every install and rollback request
    /// (`http://HOST:PORT`). Default: none in the request, so each agent
    /// uses its own `[package_tools] apt_proxy` (the site's LAN cache,
    /// `http://APPLIANCE:3142/` by default).
    pub proxy: Option<String>,
    /// Default reboot policy: `never`, `if_required` (default), `always`.
    pub reboot: outpost_patch::install::wire::RebootPolicy,
    /// Default for the snapshot before patching. Default true.
    pub snapshot: bool,
}

impl Default for DeployConfig {
    fn default() -> Self {
        DeployConfig {
            tick_interval: Duration::from_secs(15),
            proxy: None,
            reboot: Default::default(),
            snapshot: true,
        }
    }
}

/// The future an [`Installer`] method returns (boxed: the orchestrator
/// holds a `dyn Installer`).
pub type LinkFuture<'a> = Pin<Box<dyn Future<Output = Result<(), LinkError>> + Send + 'a>>;

/// The command id of a rollout command key: the first 16 bytes of its
/// SHA-256. Deterministic, so a restart that re-applies an action queues
/// nothing new (`CommandService::create_with_id` returns the existing
/// command).
pub fn command_id(key: &str) -> CommandId {
    let digest = Sha256::digest(key.as_bytes());
    let mut id = [0u8; 16];
    id.copy_from_slice(&digest[..16]);
    CommandId(id)
}

/// Why the device link could not queue or cancel.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("unknown device {0}")]
    UnknownDevice(DeviceId),
    #[error("the request cannot be encoded: {0}")]
    Encode(String),
    #[error("the command service refused it: {0}")]
    Refused(String),
    #[error("the command service is stopped")]
    Stopped,
}

/// How the orchestrator reaches devices. Every method is idempotent on
/// the command key (the orchestrator persists its state before applying
/// actions and re-applies them after a crash).
pub trait Installer: Send + Sync {
    /// Queue an install on `device` under `key` (`DEP/DEVICE/install/N`).
    fn install<'a>(
        &'a self,
        device: DeviceId,
        key: &'a str,
        request: &'a InstallRequest,
        requested_by: &'a str,
    ) -> LinkFuture<'a>;
    /// Queue a rollback on `device` under `key` (`DEP/DEVICE/rollback/N`).
    fn rollback<'a>(
        &'a self,
        device: DeviceId,
        key: &'a str,
        request: &'a RollbackRequest,
        requested_by: &'a str,
    ) -> LinkFuture<'a>;
    /// Withdraw the command of `key` if the agent has not started it.
    fn cancel<'a>(&'a self, key: &'a str, requested_by: &'a str) -> LinkFuture<'a>;
}

/// Where device statuses go: every `PatchStatus` an agent sends, and a
/// synthesized final status (phase `failed`, with the reason) when an
/// install or rollback command ends without one (refused, expired,
/// timed out, interrupted, failed to start, cancelled). Called from a
/// blocking thread before the status leaves the link's durable inbox: an
/// implementation may block (back-pressure) but must not drop it.
pub trait StatusSink: Send + Sync {
    fn status(&self, device: DeviceId, status: &DeviceStatus);
}

/// An installer that refuses every install with "device link not
/// available" (tests of what the orchestrator does when the link refuses:
/// the device is reported failed with that reason). `outpost serve` wires
/// the real [`device::DeviceLink`].
#[cfg(test)]
pub struct NoDeviceLink;

#[cfg(test)]
impl Installer for NoDeviceLink {
    fn install<'a>(
        &'a self,
        _: DeviceId,
        _: &'a str,
        _: &'a InstallRequest,
        _: &'a str,
    ) -> LinkFuture<'a> {
        Box::pin(async { Err(LinkError::Refused("device link not available".into())) })
    }
    fn rollback<'a>(
        &'a self,
        _: DeviceId,
        _: &'a str,
        _: &'a RollbackRequest,
        _: &'a str,
    ) -> LinkFuture<'a> {
        Box::pin(async { Err(LinkError::Refused("device link not available".into())) })
    }
    fn cancel<'a>(&'a self, _: &'a str, _: &'a str) -> LinkFuture<'a> {
        Box::pin(async { Err(LinkError::Refused("device link not available".into())) })
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn command_keys_map_to_stable_distinct_ids() {
        let a = super::command_id("dep-1/dev-a/install/1");
        assert_eq!(a, super::command_id("dep-1/dev-a/install/1"));
        assert_ne!(a, super::command_id("dep-1/dev-a/install/2"));
    }
}
