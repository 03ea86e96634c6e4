//! Stored deployments, one record per device (a device's status costs one
//! device record and the small state record, never the whole deployment):
//!
//! - `deployments` (deployment id → JSON [`Header`]): how the deployment
//!   was created and the rollout core's `Deployment` without its devices
//!   (spec, stage plan, phase, forced gates). Rewritten only when the
//!   phase, the forced gates or the patches change.
//! - `deployment_devices` (id, device → JSON [`DeviceEntry`]): the core's
//!   record of the device, what its install changed (its rollback needs
//!   it) and its alert mark.
//! - `deployment_state` (id → [`DeploymentState`]): the time of the last
//!   step and the orders from central the deployment applied (written in
//!   the same batch as the step they caused: a redelivery is recognised).
//!
//! A record of the old layout (the whole deployment in `deployments`,
//! no `layout` field) is read as it is and rewritten in the new layout by
//! the orchestrator's next write of it ([`Loaded::legacy`]).
//!
//! Owns these tables. Must not step the state machine or call devices
//! (the orchestrator does).

use std::collections::{BTreeMap, BTreeSet};

use outpost_patch::install::wire::DeviceStatus;
use outpost_patch::install::{KeptDeb, PackageChange};
use outpost_patch::rollout::{Deployment, DeploymentSpec, DeviceRecord, Phase};
use outpost_patch::window::InstallWindow;
use outpost_storage::{Batch, Codec, StorageError, Store, Table};
use serde::{Deserialize, Serialize};

/// Deployment id → [`Header`] (or, written by older builds, the whole
/// [`StoredDeployment`]).
pub const DEPLOYMENTS: Table = Table::new("deployments").codec(Codec::Json);

/// (deployment id, device) → [`DeviceEntry`] ([`device_key`]). JSON, not
/// the bincode of new tables: the entry holds the rollout core's and the
/// installer's types (other crates), which grow with `serde(default)`
/// fields and carry internally tagged enums (`DebSource`), neither of
/// which bincode can decode; `deployments` stored the same values as
/// JSON before.
pub const DEPLOYMENT_DEVICES: Table = Table::new("deployment_devices").codec(Codec::Json);

/// Deployment id → [`DeploymentState`] (bincode; this module's own type).
pub const DEPLOYMENT_STATE: Table = Table::new("deployment_state");

/// The tables of this module, for `Store::open`.
pub const TABLES: &[Table] = &[DEPLOYMENTS, DEPLOYMENT_DEVICES, DEPLOYMENT_STATE];

/// Most deployments read by a listing.
pub const MAX_LISTED: usize = 10_000;

/// The `layout` of a header whose devices are in [`DEPLOYMENT_DEVICES`].
pub const LAYOUT_SPLIT: u32 = 2;

/// Orders from central remembered per deployment (a redelivery follows
/// its loss within seconds; central's own record answers after that).
pub const MAX_ORDERS_KEPT: usize = 64;

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
    /// What the device's earlier attempts changed and kept (combined): a
    /// rollback undoes them too.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub earlier_changes: Vec<PackageChange>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub earlier_kept: Vec<KeptDeb>,
}

impl InstallRecord {
    /// Records a device's install status. A status of a later attempt
    /// moves what the previous one changed to `earlier_*`; a late status
    /// of an earlier attempt adds its changes there and nothing else.
    pub fn report(&mut self, status: &DeviceStatus) {
        use outpost_patch::install::{combine_changes, combine_kept};
        if status.attempt < self.attempt {
            self.earlier_changes =
                combine_changes([self.earlier_changes.as_slice(), status.changes.as_slice()]);
            self.earlier_kept =
                combine_kept([self.earlier_kept.as_slice(), status.kept.as_slice()]);
            return;
        }
        if status.attempt > self.attempt {
            self.earlier_changes =
                combine_changes([self.earlier_changes.as_slice(), self.changes.as_slice()]);
            self.earlier_kept = combine_kept([self.earlier_kept.as_slice(), self.kept.as_slice()]);
        }
        self.attempt = status.attempt;
        self.phase = status.phase.as_str().to_string();
        self.reason = status.reason.clone();
        self.changes = status.changes.clone();
        self.kept = status.kept.clone();
        self.skipped = status.skipped.clone();
        self.snapshot = status.snapshot.clone();
        self.log_tail = status.log_tail.clone();
        self.at_ms = status.at_ms;
    }

    /// What every attempt changed: what a rollback undoes.
    pub fn all_changes(&self) -> Vec<PackageChange> {
        outpost_patch::install::combine_changes([
            self.earlier_changes.as_slice(),
            self.changes.as_slice(),
        ])
    }

    /// The `.deb` files every attempt kept.
    pub fn all_kept(&self) -> Vec<KeptDeb> {
        outpost_patch::install::combine_kept([self.earlier_kept.as_slice(), self.kept.as_slice()])
    }
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

/// One deployment as the orchestrator and the API see it (assembled from
/// its header, device entries and state; the JSON of the API).
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

/// The rollout core's deployment without its devices, as written
/// (field names of `Deployment`, `devices` empty).
#[derive(Serialize)]
struct DeploymentRef<'a> {
    spec: &'a DeploymentSpec,
    stages: &'a Vec<Vec<String>>,
    phase: &'a Phase,
    devices: BTreeMap<String, DeviceRecord>,
    forced: &'a BTreeSet<u32>,
}

#[derive(Serialize)]
struct HeaderRef<'a> {
    deployment: DeploymentRef<'a>,
    target: &'a DeployTarget,
    created_at_ms: u64,
    created_by: &'a str,
    window: &'a Option<InstallWindow>,
    #[serde(skip_serializing_if = "Option::is_none")]
    options: &'a Option<super::options::StoredOptions>,
    updated_at_ms: u64,
    layout: u32,
}

/// A `deployments` value: the header of the split layout, or (no
/// `layout`) a whole deployment written by an older build.
#[derive(Debug, Clone, Deserialize)]
pub struct Header {
    pub deployment: Deployment,
    pub target: DeployTarget,
    pub created_at_ms: u64,
    pub created_by: String,
    #[serde(default)]
    pub window: Option<InstallWindow>,
    #[serde(default)]
    pub installs: BTreeMap<String, InstallRecord>,
    #[serde(default)]
    pub alert_marks: BTreeMap<String, AlertMark>,
    pub updated_at_ms: u64,
    /// Per-deployment install options (absent: `[deploy]`'s defaults).
    #[serde(default)]
    pub options: Option<super::options::StoredOptions>,
    /// 0 (absent): the old layout, everything in this record.
    #[serde(default)]
    pub layout: u32,
}

/// One device of a deployment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceEntry {
    pub record: DeviceRecord,
    #[serde(default)]
    pub install: Option<InstallRecord>,
    #[serde(default)]
    pub alert: Option<AlertMark>,
}

/// An order from central applied to a deployment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderMark {
    pub order: String,
    /// Why the state machine refused it (`None`: applied).
    pub refused: Option<String>,
}

/// The small record every step writes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeploymentState {
    pub updated_at_ms: u64,
    /// How many alert marks the deployment holds (an ended deployment
    /// without any is not read by the orchestrator's tick).
    pub marks: u32,
    /// The last [`MAX_ORDERS_KEPT`] orders from central applied, oldest
    /// first.
    pub orders: Vec<OrderMark>,
}

impl DeploymentState {
    pub fn order(&self, order: &str) -> Option<&OrderMark> {
        self.orders.iter().find(|o| o.order == order)
    }

    pub fn remember(&mut self, mark: OrderMark) {
        self.orders.retain(|o| o.order != mark.order);
        self.orders.push(mark);
        let over = self.orders.len().saturating_sub(MAX_ORDERS_KEPT);
        self.orders.drain(..over);
    }
}

/// A deployment as read.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub sd: StoredDeployment,
    pub state: DeploymentState,
    /// Read from the old layout: the next write must write it whole.
    pub legacy: bool,
}

/// The key prefix of a deployment's devices: its id's length (u16, big
/// endian) and the id, so no id is a prefix of another's keys.
pub fn device_prefix(id: &str) -> Vec<u8> {
    let len = u16::try_from(id.len()).unwrap_or(u16::MAX);
    let mut k = Vec::with_capacity(2 + id.len());
    k.extend_from_slice(&len.to_be_bytes());
    k.extend_from_slice(id.as_bytes());
    k
}

/// The key of one device of a deployment.
pub fn device_key(id: &str, device: &str) -> Vec<u8> {
    let mut k = device_prefix(id);
    k.extend_from_slice(device.as_bytes());
    k
}

fn entry_of(sd: &StoredDeployment, device: &str) -> Option<DeviceEntry> {
    Some(DeviceEntry {
        record: sd.deployment.devices.get(device)?.clone(),
        install: sd.installs.get(device).cloned(),
        alert: sd.alert_marks.get(device).copied(),
    })
}

fn put_header(b: &mut Batch, sd: &StoredDeployment) -> Result<(), StorageError> {
    let d = &sd.deployment;
    let h = HeaderRef {
        deployment: DeploymentRef {
            spec: &d.spec,
            stages: &d.stages,
            phase: &d.phase,
            devices: BTreeMap::new(),
            forced: &d.forced,
        },
        target: &sd.target,
        created_at_ms: sd.created_at_ms,
        created_by: &sd.created_by,
        window: &sd.window,
        options: &sd.options,
        updated_at_ms: sd.updated_at_ms,
        layout: LAYOUT_SPLIT,
    };
    b.put(DEPLOYMENTS, sd.id().as_bytes(), &h)
}

/// What one write of a deployment covers.
#[derive(Debug, Default)]
pub struct Dirty {
    /// Write the header (phase, forced gates or patches changed).
    pub header: bool,
    /// The devices whose entry changed.
    pub devices: BTreeSet<String>,
}

/// Writes what `dirty` names of `sd`, and `state`, in one batch (synced
/// per the store's durability: the orchestrator applies actions only
/// after this returns); returns the batch's size in bytes.
pub fn write(
    store: &Store,
    sd: &StoredDeployment,
    state: &DeploymentState,
    dirty: &Dirty,
) -> Result<usize, StorageError> {
    let mut b = store.batch();
    if dirty.header {
        put_header(&mut b, sd)?;
    }
    let id = sd.id();
    for dev in &dirty.devices {
        if let Some(e) = entry_of(sd, dev) {
            b.put(DEPLOYMENT_DEVICES, &device_key(id, dev), &e)?;
        }
    }
    b.put(DEPLOYMENT_STATE, id.as_bytes(), state)?;
    let bytes = b.size_in_bytes();
    store.write(b)?;
    Ok(bytes)
}

/// Writes the whole deployment in the split layout (creation, and the
/// migration of an old record).
pub fn put(
    store: &Store,
    sd: &StoredDeployment,
    state: &DeploymentState,
) -> Result<(), StorageError> {
    let dirty = Dirty {
        header: true,
        devices: sd.deployment.devices.keys().cloned().collect(),
    };
    write(store, sd, state, &dirty).map(|_| ())
}

fn assemble(store: &Store, id: &str, h: Header) -> Result<Loaded, StorageError> {
    let state: Option<DeploymentState> = store.get(DEPLOYMENT_STATE, id.as_bytes())?;
    let mut sd = StoredDeployment {
        deployment: h.deployment,
        target: h.target,
        created_at_ms: h.created_at_ms,
        created_by: h.created_by,
        window: h.window,
        installs: h.installs,
        alert_marks: h.alert_marks,
        updated_at_ms: h.updated_at_ms,
        options: h.options,
    };
    if h.layout < LAYOUT_SPLIT {
        return Ok(Loaded {
            state: DeploymentState {
                updated_at_ms: sd.updated_at_ms,
                marks: sd.alert_marks.len() as u32,
                orders: Vec::new(),
            },
            sd,
            legacy: true,
        });
    }
    let prefix = device_prefix(id);
    let end = outpost_storage::keys::prefix_successor(&prefix);
    let mut bad: Option<StorageError> = None;
    store.scan::<DeviceEntry>(DEPLOYMENT_DEVICES, &prefix, end.as_deref(), |k, e| {
        let Ok(dev) = std::str::from_utf8(&k[prefix.len()..]) else {
            bad = Some(StorageError::Invalid(format!(
                "deployment {id}: a device key is not UTF-8"
            )));
            return false;
        };
        if let Some(i) = e.install {
            sd.installs.insert(dev.to_string(), i);
        }
        if let Some(a) = e.alert {
            sd.alert_marks.insert(dev.to_string(), a);
        }
        sd.deployment.devices.insert(dev.to_string(), e.record);
        true
    })?;
    if let Some(e) = bad {
        return Err(e);
    }
    let state = state.unwrap_or_default();
    sd.updated_at_ms = sd.updated_at_ms.max(state.updated_at_ms);
    Ok(Loaded {
        sd,
        state,
        legacy: false,
    })
}

/// A deployment with its devices and state.
pub fn load(store: &Store, id: &str) -> Result<Option<Loaded>, StorageError> {
    let Some(h) = store.get::<Header>(DEPLOYMENTS, id.as_bytes())? else {
        return Ok(None);
    };
    Ok(Some(assemble(store, id, h)?))
}

pub fn get(store: &Store, id: &str) -> Result<Option<StoredDeployment>, StorageError> {
    Ok(load(store, id)?.map(|l| l.sd))
}

/// Whether a deployment of this id is stored.
pub fn exists(store: &Store, id: &str) -> Result<bool, StorageError> {
    Ok(store.get_raw(DEPLOYMENTS, id.as_bytes())?.is_some())
}

/// A phase no input leaves (but a late report).
pub fn ended(phase: &Phase) -> bool {
    matches!(
        phase,
        Phase::Completed | Phase::Aborted { .. } | Phase::RolledBack
    )
}

/// Every deployment's id, phase and state record (`None`: an old-layout
/// record), at most [`MAX_LISTED`]: headers only, no device is read.
#[allow(clippy::type_complexity)]
pub fn summaries(
    store: &Store,
) -> Result<Vec<(String, Phase, Option<DeploymentState>)>, StorageError> {
    let mut heads = Vec::new();
    store.scan::<Header>(DEPLOYMENTS, &[], None, |k, h| {
        let split = h.layout >= LAYOUT_SPLIT;
        heads.push((
            String::from_utf8_lossy(k).into_owned(),
            h.deployment.phase,
            split,
        ));
        heads.len() < MAX_LISTED
    })?;
    heads
        .into_iter()
        .map(|(id, phase, split)| {
            let state = if split {
                Some(
                    store
                        .get::<DeploymentState>(DEPLOYMENT_STATE, id.as_bytes())?
                        .unwrap_or_default(),
                )
            } else {
                None
            };
            Ok((id, phase, state))
        })
        .collect()
}

/// Every deployment (at most [`MAX_LISTED`]), by id.
pub fn list(store: &Store) -> Result<Vec<StoredDeployment>, StorageError> {
    Ok(list_loaded(store)?.into_iter().map(|l| l.sd).collect())
}

/// Every deployment as read (at most [`MAX_LISTED`]), by id.
pub fn list_loaded(store: &Store) -> Result<Vec<Loaded>, StorageError> {
    let mut headers = Vec::new();
    store.scan::<Header>(DEPLOYMENTS, &[], None, |k, h| {
        headers.push((String::from_utf8_lossy(k).into_owned(), h));
        headers.len() < MAX_LISTED
    })?;
    headers
        .into_iter()
        .map(|(id, h)| assemble(store, &id, h))
        .collect()
}

/// Writes `sd` in the layout of older builds (the whole deployment in one
/// `deployments` record): tests of the migration.
#[cfg(test)]
pub fn put_legacy(store: &Store, sd: &StoredDeployment) -> Result<(), StorageError> {
    store.put(DEPLOYMENTS, sd.id().as_bytes(), sd)
}
