//! What central stores: tenants' sites, devices, rollups and alerts, and the
//! credentials of people and sites. Values are encoded with the proto codec
//! by the RocksDB backend; a PostgreSQL backend maps each struct to a table.

use std::borrow::Cow;

use outpost_storage::model::{DeviceStatus, Rollup};
use serde::{Deserialize, Serialize};

use crate::batch::{AlertState, Severity};

/// A site (one appliance) of a customer of a tenant (MSP).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SiteRecord {
    pub tenant: String,
    pub customer: String,
    pub site_id: String,
    pub name: String,
    pub created_ms: u64,
    /// When the appliance joined (0 = token not used yet).
    pub joined_ms: u64,
    /// Every batch with `seq <= applied_up_to` is applied.
    pub applied_up_to: u64,
    /// Applied batches above `applied_up_to` (arrived out of order).
    pub applied_above: Vec<u64>,
    /// Arrival time and creation time (appliance clock) of the newest batch.
    pub last_batch_ms: u64,
    pub last_batch_created_ms: u64,
    pub batches_applied: u64,
    pub duplicates: u64,
    /// The appliance's compaction interval (from its Hello).
    pub interval_ms: u64,
    /// Rollups the appliance reported dropped because its outbox was full.
    pub dropped_rollups: u64,
}

impl SiteRecord {
    pub fn is_applied(&self, seq: u64) -> bool {
        seq <= self.applied_up_to || self.applied_above.contains(&seq)
    }

    /// Marks `seq` applied, folding contiguous numbers into `applied_up_to`.
    pub fn mark_applied(&mut self, seq: u64) {
        if self.is_applied(seq) {
            return;
        }
        self.applied_above.push(seq);
        self.applied_above.sort_unstable();
        while let Some(pos) = self
            .applied_above
            .iter()
            .position(|s| *s == self.applied_up_to + 1)
        {
            self.applied_above.remove(pos);
            self.applied_up_to += 1;
        }
    }
}

/// A device as central knows it (latest snapshot wins).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceRow {
    pub tenant: String,
    pub site_id: String,
    /// The appliance's device id (hex).
    pub device: String,
    pub customer: String,
    pub hostname: String,
    pub os: String,
    pub agent_version: String,
    pub enrolled_at_ms: u64,
    pub revoked: bool,
    pub status: DeviceStatus,
    pub status_since_ms: u64,
    pub last_seen_ms: u64,
    pub as_of_ms: u64,
    /// Distinct (series, bucket) rollups stored for this device.
    pub rollups_stored: u64,
    /// Latest bucket seen per series: `name[label]` → (bucket start, rollup).
    pub latest: Vec<LatestRollup>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LatestRollup {
    pub series: String,
    pub label: String,
    pub bucket_start_ms: u64,
    pub rollup: Rollup,
}

/// One stored rollup.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RollupRow {
    pub computed_ms: u64,
    pub rollup: Rollup,
}

/// Every series' rollup of one device and 5-minute bucket, stored as one
/// row: a batch of 100 devices × 28 series writes 100 rows, not 2,800.
/// Names are `Cow`: the apply path stores them borrowed from the batch.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BucketRow<'a> {
    pub series: Vec<BucketSeries<'a>>,
}

/// One series in a [`BucketRow`]; `computed_ms` is per series, so a
/// recomputation of some series of a bucket replaces only those.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BucketSeries<'a> {
    pub name: Cow<'a, str>,
    pub label: Cow<'a, str>,
    pub computed_ms: u64,
    pub rollup: Rollup,
}

impl BucketRow<'_> {
    /// Index of series `name[label]`, trying `hint` first (batches list a
    /// device's series in the same order every bucket).
    pub fn position(&self, name: &str, label: &str, hint: usize) -> Option<usize> {
        let is = |s: &BucketSeries| s.name == name && s.label == label;
        match self.series.get(hint) {
            Some(s) if is(s) => Some(hint),
            _ => self.series.iter().position(is),
        }
    }
}

/// The latest state of one alert instance of a site.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlertRow {
    pub tenant: String,
    pub site_id: String,
    pub customer: String,
    pub alert_id: u64,
    pub device: Option<String>,
    pub rule: String,
    pub severity: Severity,
    pub state: AlertState,
    pub at_ms: u64,
    pub first_ms: u64,
    pub message: String,
    pub value: Option<f64>,
    pub transitions: u32,
    /// Who acknowledged it at central (technician or admin), and when.
    #[serde(default)]
    pub acked_by: Option<String>,
    #[serde(default)]
    pub acked_ms: u64,
}

/// Role of a user or API token within its tenant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Everything in the tenant, including sites, users and tokens.
    Admin,
    /// Reads everything, acknowledges alerts.
    Technician,
    /// Reads.
    Viewer,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Technician => "technician",
            Role::Viewer => "viewer",
        }
    }
}

/// Who a request acts for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Principal {
    pub tenant: String,
    pub role: Role,
    /// Customers this principal is limited to (empty = all of the tenant).
    pub customers: Vec<String>,
    /// User name, or `token:<id>`.
    pub name: String,
}

impl Principal {
    pub fn sees_customer(&self, c: &str) -> bool {
        self.customers.is_empty() || self.customers.iter().any(|x| x == c)
    }
}

/// An API token (stored by SHA-256 of the secret).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApiTokenRecord {
    pub id: String,
    pub principal: Principal,
    pub created_ms: u64,
}

/// A web user.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UserRecord {
    pub tenant: String,
    pub name: String,
    pub role: Role,
    pub customers: Vec<String>,
    /// argon2id PHC string.
    pub password_hash: String,
    pub created_ms: u64,
}

/// A login session (stored by SHA-256 of the cookie value).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionRecord {
    pub principal: Principal,
    pub expires_ms: u64,
}

/// A one-time site join token (stored by SHA-256 of the secret).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JoinTokenRecord {
    pub tenant: String,
    pub site_id: String,
    pub expires_ms: u64,
}
