//! Stored deployments: `deployments` (deployment id → JSON
//! [`StoredDeployment`]: the rollout core's `Deployment` state, how it was
//! created, and what each device's install changed, which its rollback
//! needs).
//!
//! Owns the `deployments` table. Must not step the state machine or call
//! devices (the orchestrator does).

use std::collections::BTreeMap;

use outpost_patch::install::{KeptDeb, PackageChange};
use outpost_patch::rollout::Deployment;
use outpost_patch::window::InstallWindow;
use outpost_storage::{Codec, Store, Table};
use serde::{Deserialize, Serialize};

/// Deployment id → [`StoredDeployment`].
pub const DEPLOYMENTS: Table = Table::new("deployments").codec(Codec::Json);

/// The tables of this module, for `Store::open`.
pub const TABLES: &[Table] = &[DEPLOYMENTS];

/// Most deployments read by a listing.
pub const MAX_LISTED: usize = 10_000;

/// What a deployment targets, as asked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum DeployTarget {
    Devices { devices: Vec<String> },
    Tag { tag: String },
    Customer { customer: String },
    All,
}

impl std::fmt::Display for DeployTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeployTarget::Devices { devices } => write!(f, "devices {}", devices.join(",")),
            DeployTarget::Tag { tag } => write!(f, "tag {tag}"),
            DeployTarget::Customer { customer } => write!(f, "customer {customer}"),
            DeployTarget::All => write!(f, "all devices"),
        }
    }
}

/// What one device's install reported (kept for its rollback and shown).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstallRecord {
    pub attempt: u32,
    /// The last phase reported (`succeeded`, `failed`, …).
    pub phase: String,
    pub reason: Option<String>,
    pub changes: Vec<PackageChange>,
    pub kept: Vec<KeptDeb>,
    pub skipped: Vec<String>,
    pub snapshot: Option<String>,
    /// The tail of the apt/dpkg log on failure.
    pub log_tail: String,
    pub at_ms: u64,
}

/// The alert level of one device for one deployment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlertMark {
    pub raised: bool,
    pub since_ms: u64,
}

/// How long a lowered mark is still sent (so the alert resolves even
/// after a lost sample), before it is dropped.
pub const LOWERED_MARK_MS: u64 = 3_600_000;

/// One stored deployment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredDeployment {
    pub deployment: Deployment,
    pub target: DeployTarget,
    pub created_at_ms: u64,
    pub created_by: String,
    /// The install window of every target device (`None`: any time).
    #[serde(default)]
    pub window: Option<InstallWindow>,
    /// Per device: its install's last report.
    #[serde(default)]
    pub installs: BTreeMap<String, InstallRecord>,
    /// Per device: the level of its `deploy_gate_failed` alert sample
    /// (raised when a gate failed on it, lowered when the deployment
    /// resumed or ended), re-sent to the alert engine on every tick.
    #[serde(default)]
    pub alert_marks: BTreeMap<String, AlertMark>,
    pub updated_at_ms: u64,
    /// Reboot policy, scripts and snapshot of its installs (`None`: stored
    /// before per-deployment options; runs with `[deploy]`'s defaults).
    #[serde(default)]
    pub options: Option<super::options::StoredOptions>,
}

impl StoredDeployment {
    pub fn id(&self) -> &str {
        &self.deployment.spec.id
    }
}

pub fn get(
    store: &Store,
    id: &str,
) -> Result<Option<StoredDeployment>, outpost_storage::StorageError> {
    store.get(DEPLOYMENTS, id.as_bytes())
}

/// Writes the deployment (synced per the store's durability: the
/// orchestrator applies actions only after this returns).
pub fn put(store: &Store, d: &StoredDeployment) -> Result<(), outpost_storage::StorageError> {
    store.put(DEPLOYMENTS, d.id().as_bytes(), d)
}

/// Every deployment (at most [`MAX_LISTED`]), by id.
pub fn list(store: &Store) -> Result<Vec<StoredDeployment>, outpost_storage::StorageError> {
    let mut out = Vec::new();
    store.scan::<StoredDeployment>(DEPLOYMENTS, &[], None, |_, d| {
        out.push(d);
        out.len() < MAX_LISTED
    })?;
    Ok(out)
}
