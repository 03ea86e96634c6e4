//! Central's storage interface, in the three parts a backend implements:
//! [`BatchStore`] (apply a site batch exactly once), [`FleetStore`] (what
//! the API and web view read: devices, rollups, alerts; alert
//! acknowledgement) and [`AuthStore`] (sites and join tokens, users, API
//! tokens, sessions). [`CentralStore`] is all three; central holds an
//! `Arc<dyn CentralStore>`, so `serve` picks the backend at run time.
//!
//! The embedded RocksDB backend ([`crate::rocks::RocksCentralStore`])
//! implements them; a PostgreSQL backend (a later issue) maps each method to
//! one transaction: `apply_batch` is `INSERT INTO applied_batches (site,
//! seq)` (unique key) plus the rows [`crate::apply::plan`] returns,
//! committed together, so a batch is applied exactly once whatever the
//! number of stateless central instances. The merge rules are in
//! [`crate::apply`], not in the backends.
//!
//! Every read takes the tenant: rows of another tenant are invisible (the
//! RocksDB keys start with the tenant; SQL queries filter on it).
//!
//! Methods are async and return boxed futures ([`StoreFuture`]) so the
//! traits stay usable as `dyn` objects without a macro crate; a backend
//! with blocking I/O (RocksDB) runs it on the blocking pool, never on the
//! async threads.

use std::future::Future;
use std::pin::Pin;

use outpost_proto::{CustomerId, SiteId, TenantId};

use outpost_uplink::batch::SiteBatch;

use crate::model::{
    AlertRow, AlertState, ApiTokenRecord, CveExposureRow, CveSiteExposure, DeadLetter, DeviceFacts,
    DeviceRow, DeviceStatus, JoinTokenRecord, PatchComplianceRow, PatchFindingsRow, Rollup,
    RollupRow, SessionRecord, Severity, SiteRecord, UserRecord,
};

#[derive(Debug, thiserror::Error)]
pub enum CentralStoreError {
    #[error("central storage: {0}")]
    Backend(String),
    #[error("central storage: {0}")]
    Codec(#[from] outpost_proto::codec::CodecError),
    #[error("{0}")]
    Conflict(String),
    /// A page cursor the backend did not hand out (a caller's error).
    #[error("{0}")]
    InvalidCursor(String),
    /// The database cannot be reached or refuses work for now (down,
    /// failing over, pool exhausted past its wait, statement timeout):
    /// retrying later can succeed. The API answers 503, a batch is not
    /// acknowledged, `/healthz` says why.
    #[error("central storage unavailable: {0}")]
    Unavailable(String),
}

impl CentralStoreError {
    /// Whether retrying later can succeed (the database is unavailable).
    pub fn is_unavailable(&self) -> bool {
        matches!(self, CentralStoreError::Unavailable(_))
    }
}

/// Store errors of this process by kind (`unavailable`, `other`),
/// counted where a backend makes them; registered in every
/// [`crate::metrics::CentralMetrics`] as `outpost_central_store_errors_total`.
pub static STORE_ERRORS: std::sync::LazyLock<
    prometheus_client::metrics::family::Family<
        crate::metrics::ReasonLabel,
        prometheus_client::metrics::counter::Counter,
    >,
> = std::sync::LazyLock::new(Default::default);

/// Counts one store error of `kind` (see [`STORE_ERRORS`]).
pub fn count_store_error(kind: &str) {
    STORE_ERRORS
        .get_or_create(&crate::metrics::ReasonLabel {
            reason: kind.to_string(),
        })
        .inc();
}

pub type Result<T, E = CentralStoreError> = std::result::Result<T, E>;

/// What applying a batch did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApplyOutcome {
    /// Newly applied (durable on return).
    Applied {
        rollups_new: u64,
        rollups_replaced: u64,
        /// Devices newly reported enrolled under another tenant than the
        /// site's (counted in `outpost_central_tenant_mismatches_total`).
        tenant_mismatches_new: u64,
        /// Device snapshots claiming a customer other than the site's (not
        /// believed; counted in `outpost_central_customer_mismatches_total`).
        customer_mismatches: u64,
        /// IP and tag entries for devices without a snapshot in the batch
        /// (ignored; counted in `outpost_central_device_facts_ignored_total`).
        device_facts_ignored: u64,
        /// Gaps of the applied set expired to make room (see
        /// [`crate::model::MAX_APPLIED_ABOVE`]).
        gaps_expired: u64,
    },
    /// Already applied earlier; nothing changed.
    Duplicate,
}

/// What recording a dead letter did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeadLetterOutcome {
    /// Recorded (durable on return); the sequence number is closed, and
    /// `gaps_expired` gaps expired to make room.
    Recorded { gaps_expired: u64 },
    /// The number was already closed (applied, or dead-lettered earlier).
    AlreadyClosed,
}

/// A page of results with the cursor of the next page.
#[derive(Debug, Clone, PartialEq)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next: Option<String>,
}

/// Filters of the device list. A device's customer is its site's: both
/// customer filters match the customer of the device's site.
#[derive(Debug, Clone, Default)]
pub struct DeviceFilter {
    pub site_id: Option<SiteId>,
    pub customer: Option<CustomerId>,
    /// Customers the caller may see (empty = all).
    pub customers_allowed: Vec<CustomerId>,
    pub status: Option<String>,
    /// Only devices with this tag (exact).
    pub tag: Option<String>,
    /// Cursor returned by the previous page (one the backend did not hand
    /// out for this listing is [`CentralStoreError::InvalidCursor`]).
    pub after: Option<String>,
    pub limit: usize,
}

/// Which rollups [`CentralStore::rollups`] returns.
#[derive(Debug, Clone, Default)]
pub struct RollupQuery {
    pub site_id: SiteId,
    pub device: String,
    pub series: String,
    pub label: String,
    pub from_ms: u64,
    pub to_ms: u64,
    pub limit: usize,
}

/// What a device search sorts by.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum DeviceSortKey {
    #[default]
    Hostname,
    Status,
    LastSeen,
    Site,
    Customer,
    Cpu,
}

/// The console's device search: words over hostname, OS, device id, tags
/// (substrings) and IP addresses (prefixes), filters (a tag among them),
/// a sort and a cursor. RocksDB answers it from its in-memory
/// [`crate::fleet_index::FleetIndex`], PostgreSQL in SQL over key columns
/// (`crate::pg::search`); same answers, same cursor format.
#[derive(Debug, Clone, Default)]
pub struct DeviceSearch {
    /// Lowercase words, each matched as a substring.
    pub words: Vec<String>,
    pub site_id: Option<SiteId>,
    pub customer: Option<CustomerId>,
    /// Customers the caller may see (empty = all).
    pub customers_allowed: Vec<CustomerId>,
    pub status: Option<DeviceStatus>,
    /// Only devices with a firing critical alert.
    pub critical: bool,
    /// Only devices with this tag (exact).
    pub tag: Option<String>,
    pub sort: DeviceSortKey,
    pub descending: bool,
    /// Cursor returned by the previous page of the same search.
    pub after: Option<String>,
    pub limit: usize,
}

/// A device as lists show it (a search result).
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceBrief {
    pub site_id: SiteId,
    pub site_name: String,
    pub customer: CustomerId,
    pub device: String,
    pub hostname: String,
    pub os: String,
    pub agent_version: String,
    pub status: DeviceStatus,
    pub status_since_ms: u64,
    pub last_seen_ms: u64,
    /// Latest 5-minute averages: CPU, memory, the fullest disk (percent).
    pub cpu: Option<f64>,
    pub memory: Option<f64>,
    pub disk: Option<f64>,
    /// Pending and firing alerts of the device.
    pub open_alerts: u32,
    /// A critical alert of the device is firing.
    pub critical: bool,
    /// Its IP addresses and tags as its site last sent them.
    pub ips: Vec<String>,
    pub tags: Vec<String>,
}

/// Which alerts state an inbox asks for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum AlertStates {
    /// Pending and firing (the inbox's default).
    #[default]
    Open,
    All,
    Only(AlertState),
}

impl AlertStates {
    /// Every state it selects is open: the backend can answer from its
    /// open alerts without reading closed ones.
    pub fn open_only(self) -> bool {
        match self {
            AlertStates::Open => true,
            AlertStates::All => false,
            AlertStates::Only(s) => s.is_open(),
        }
    }

    pub fn matches(self, s: AlertState) -> bool {
        match self {
            AlertStates::Open => s.is_open(),
            AlertStates::All => true,
            AlertStates::Only(o) => o == s,
        }
    }
}

/// One page of an alert inbox: the filter, applied by the backend so a
/// page never loads every alert of the tenant.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AlertFilter {
    pub site: Option<SiteId>,
    /// Customers the reader may see (empty: the whole tenant).
    pub customers_allowed: Vec<CustomerId>,
    pub customer: Option<CustomerId>,
    pub severity: Option<Severity>,
    pub states: AlertStates,
    /// Rows returned at most (newest first); `total` counts them all.
    pub limit: usize,
}

impl AlertFilter {
    pub fn matches(&self, a: &AlertRow) -> bool {
        (self.customers_allowed.is_empty() || self.customers_allowed.contains(&a.customer))
            && self.site.as_ref().is_none_or(|s| *s == a.site_id)
            && self.customer.as_ref().is_none_or(|c| *c == a.customer)
            && self.severity.is_none_or(|s| s == a.severity)
            && self.states.matches(a.state)
    }
}

/// The newest alerts matching a filter, and how many match.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AlertPage {
    pub rows: Vec<AlertRow>,
    pub total: u64,
}

/// Keeps the newest `limit` of what is pushed (memory bounded by the
/// limit, not by the number of alerts read).
#[derive(Debug)]
pub struct NewestAlerts {
    limit: usize,
    rows: Vec<AlertRow>,
    total: u64,
}

impl NewestAlerts {
    pub fn new(limit: usize) -> Self {
        NewestAlerts {
            limit: limit.max(1),
            rows: Vec::new(),
            total: 0,
        }
    }

    pub fn push(&mut self, a: AlertRow) {
        self.total += 1;
        self.rows.push(a);
        if self.rows.len() >= self.limit * 2 {
            self.trim();
        }
    }

    fn trim(&mut self) {
        self.rows.sort_by(|a, b| {
            (b.at_ms, &b.site_id, b.alert_id).cmp(&(a.at_ms, &a.site_id, a.alert_id))
        });
        self.rows.truncate(self.limit);
    }

    pub fn finish(mut self) -> AlertPage {
        self.trim();
        AlertPage {
            rows: self.rows,
            total: self.total,
        }
    }
}

/// A page of a device search.
#[derive(Debug, Clone, PartialEq)]
pub struct SearchPage {
    pub items: Vec<DeviceBrief>,
    /// Devices matching (all pages), exact unless `total_more`.
    pub total: u64,
    /// More than `total` devices match: the backend stopped counting at
    /// `total` (PostgreSQL, a word or tag search matching more than
    /// `pg::search::TOTAL_CAP` devices). Never set by RocksDB.
    pub total_more: bool,
    pub next: Option<String>,
}

/// Device and open-alert counts of one site.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SiteCounts {
    pub devices: u64,
    pub online: u64,
    pub offline: u64,
    pub pending: u64,
    pub revoked: u64,
    /// Devices with a firing critical alert.
    pub critical: u64,
    pub alerts_firing: u64,
    pub alerts_pending: u64,
}

/// The counts of a tenant's sites the caller sees (the dashboard).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FleetCounts {
    pub per_site: std::collections::BTreeMap<SiteId, SiteCounts>,
    /// Firing alerts per severity.
    pub firing_by_severity: Vec<(Severity, u64)>,
}

/// One line of an alert's history: a transition, or an acknowledgement.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum AlertHistoryEntry {
    Transition {
        at_ms: u64,
        state: AlertState,
        message: String,
        value: Option<f64>,
    },
    Ack {
        at_ms: u64,
        by: String,
        comment: String,
    },
}

/// Rollups of several series of one device over `[from, to)`.
#[derive(Debug, Clone, Default)]
pub struct SeriesQuery {
    pub site_id: SiteId,
    pub device: String,
    /// (name, label) of each series.
    pub series: Vec<(String, String)>,
    pub from_ms: u64,
    pub to_ms: u64,
}

/// What a batch changed that viewers watch: devices whose status changed
/// (or that are new), and every alert the batch moved, each with what it
/// was before.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FleetDelta {
    pub site_name: String,
    pub devices: Vec<(DeviceRow, Option<DeviceStatus>)>,
    /// The alert, its state before, and its device's hostname when known.
    pub alerts: Vec<(AlertRow, Option<AlertState>, Option<String>)>,
}

/// What a store method returns: a boxed future (object-safe traits).
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T>> + Send + 'a>>;

/// Central's storage (see the module docs).
pub trait CentralStore:
    BatchStore + FleetStore + AuthStore + CommandStore + DeployStore + FileStore
{
}

impl<T: BatchStore + FleetStore + AuthStore + CommandStore + DeployStore + FileStore> CentralStore
    for T
{
}

/// File transfers from central ([`crate::files`]): one record per
/// transfer, beside its command. The content lives in `DATA/files`.
pub trait FileStore: Send + Sync + 'static {
    /// Stores (or replaces) a transfer's record.
    fn put_file<'a>(&'a self, rec: &'a crate::files::CentralFile) -> StoreFuture<'a, ()>;
    fn file<'a>(
        &'a self,
        tenant: &'a TenantId,
        id: outpost_proto::ids::TransferId,
    ) -> StoreFuture<'a, Option<crate::files::CentralFile>>;
    /// One tenant's transfers matching `f`, newest first (`created_ms`,
    /// then id, descending), at most `f.limit`. Never reads another
    /// tenant's records (RocksDB: the tenant's key prefix; PostgreSQL: the
    /// `(tenant_id, created_ms, id)` index of V8).
    fn files<'a>(
        &'a self,
        tenant: &'a TenantId,
        f: &'a FileFilter,
    ) -> StoreFuture<'a, Vec<crate::files::CentralFile>>;
    /// Every tenant's transfers (the blob collector).
    fn all_files(&self) -> StoreFuture<'_, Vec<crate::files::CentralFile>>;
    /// Deletes a transfer's record (the collector, after its retention).
    fn delete_file<'a>(
        &'a self,
        tenant: &'a TenantId,
        id: outpost_proto::ids::TransferId,
    ) -> StoreFuture<'a, ()>;
}

/// What [`FileStore::files`] lists.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FileFilter {
    pub site_id: Option<SiteId>,
    pub device: Option<String>,
    /// Customers the caller may see (empty = all).
    pub customers_allowed: Vec<CustomerId>,
    /// Only transfers created before this time (paging, newest first).
    pub before_ms: Option<u64>,
    pub limit: usize,
}

impl FileFilter {
    /// Whether `f` passes the filter (the tenant is the caller's business).
    pub fn matches(&self, f: &crate::files::CentralFile) -> bool {
        self.site_id.as_ref().is_none_or(|s| *s == f.site_id)
            && self.device.as_ref().is_none_or(|d| *d == f.device)
            && (self.customers_allowed.is_empty() || self.customers_allowed.contains(&f.customer))
            && self.before_ms.is_none_or(|b| f.created_ms < b)
    }
}

/// Deployment orders from central, their delivery to each site, and the
/// progress sites report ([`crate::deploy`]). Every method is scoped to
/// one tenant.
pub trait DeployStore: Send + Sync + 'static {
    /// Stores a new order with one queued delivery per site and its audit
    /// entry, in one write; `Conflict` if the id exists.
    fn create_order<'a>(
        &'a self,
        order: &'a crate::deploy::OrderRecord,
        deliveries: &'a [crate::deploy::Delivery],
        audit: &'a crate::commands::AuditRow,
    ) -> StoreFuture<'a, ()>;
    fn order<'a>(
        &'a self,
        tenant: &'a TenantId,
        id: &'a str,
    ) -> StoreFuture<'a, Option<crate::deploy::OrderRecord>>;
    /// A tenant's orders, oldest first.
    fn orders<'a>(
        &'a self,
        tenant: &'a TenantId,
    ) -> StoreFuture<'a, Vec<crate::deploy::OrderRecord>>;
    /// A tenant's deliveries (of every order and site).
    fn deliveries<'a>(
        &'a self,
        tenant: &'a TenantId,
    ) -> StoreFuture<'a, Vec<crate::deploy::Delivery>>;
    /// The orders still queued for one site, with their deliveries.
    fn open_orders<'a>(
        &'a self,
        tenant: &'a TenantId,
        site: &'a SiteId,
    ) -> StoreFuture<'a, Vec<crate::deploy::OrderRecord>>;
    /// Applies a site's acknowledgement to its delivery
    /// ([`crate::deploy::acknowledge`], under a lock or in one
    /// transaction): the new delivery, or `None` when it was not open (or
    /// is unknown).
    fn acknowledge_order<'a>(
        &'a self,
        tenant: &'a TenantId,
        site: &'a SiteId,
        ack: &'a outpost_uplink::deploy_link::DeployAck,
        now_ms: u64,
    ) -> StoreFuture<'a, Option<crate::deploy::Delivery>>;
    /// Stores a site's progress report if it is newer than the one held
    /// ([`crate::deploy::newer`]); whether it was stored.
    fn put_site_deployment<'a>(
        &'a self,
        rec: &'a crate::deploy::SiteDeploymentRecord,
    ) -> StoreFuture<'a, bool>;
    /// The progress held of a tenant's deployments at its sites.
    fn site_deployments<'a>(
        &'a self,
        tenant: &'a TenantId,
    ) -> StoreFuture<'a, Vec<crate::deploy::SiteDeploymentRecord>>;
    /// One page of the tenant's deployments `q.customers_allowed` sees
    /// ([`crate::deploy::DeploymentEntry`]), newest first, and how many
    /// there are (exact up to [`crate::deploy::DEPLOYMENT_TOTAL_CAP`]).
    /// Reads the list's own keys, never every order and report; a
    /// cursor it did not hand out is [`CentralStoreError::InvalidCursor`].
    fn deployment_page<'a>(
        &'a self,
        tenant: &'a TenantId,
        q: &'a DeploymentQuery,
    ) -> StoreFuture<'a, DeploymentPage>;
    /// The orders of these ids the tenant has (unknown ones left out).
    fn orders_by_id<'a>(
        &'a self,
        tenant: &'a TenantId,
        ids: &'a [String],
    ) -> StoreFuture<'a, Vec<crate::deploy::OrderRecord>>;
    /// The orders that create or act on `deployment`, oldest first (by
    /// the deployment's own key: RocksDB `tenant\0e\0deployment\0…`,
    /// PostgreSQL an index on `deployment`).
    fn deployment_orders<'a>(
        &'a self,
        tenant: &'a TenantId,
        deployment: &'a str,
    ) -> StoreFuture<'a, Vec<crate::deploy::OrderRecord>>;
    /// The deliveries of these orders (one per order and site).
    fn order_deliveries<'a>(
        &'a self,
        tenant: &'a TenantId,
        orders: &'a [crate::deploy::OrderRecord],
    ) -> StoreFuture<'a, Vec<crate::deploy::Delivery>>;
    /// The progress held of these deployments at every site, by
    /// (deployment, site).
    fn deployment_progress<'a>(
        &'a self,
        tenant: &'a TenantId,
        deployments: &'a [String],
    ) -> StoreFuture<'a, Vec<crate::deploy::SiteDeploymentRecord>>;
    /// Stores devices' approval decisions (protocol 9), each only if
    /// newer than the one held ([`crate::deploy::newer_decisions`]); how
    /// many were stored.
    fn put_decisions<'a>(
        &'a self,
        recs: &'a [crate::deploy::DecisionsRecord],
    ) -> StoreFuture<'a, usize>;
    /// One device's approval decisions, as its site last sent them.
    fn decisions<'a>(
        &'a self,
        tenant: &'a TenantId,
        site: &'a SiteId,
        device: &'a str,
    ) -> StoreFuture<'a, Option<crate::deploy::DecisionsRecord>>;
}

/// Which page of the deployment list [`DeployStore::deployment_page`]
/// reads.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DeploymentQuery {
    /// Customers the reader may see (empty = all): a deployment is listed
    /// when every customer of its sites is among them.
    pub customers_allowed: Vec<CustomerId>,
    /// The `next` of the previous page.
    pub after: Option<String>,
    pub limit: usize,
}

/// A page of the deployment list.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DeploymentPage {
    pub items: Vec<crate::deploy::DeploymentEntry>,
    /// Deployments listed (all pages), exact unless `total_more`.
    pub total: u64,
    /// More than `total` (the count stopped at its cap).
    pub total_more: bool,
    pub next: Option<String>,
}

/// Filters of the command list ([`CommandStore::commands`]).
#[derive(Debug, Clone, Default)]
pub struct CommandFilter {
    pub site_id: Option<SiteId>,
    pub device: Option<String>,
    pub state: Option<crate::commands::CentralCommandState>,
    /// Customers the caller may see (empty = all).
    pub customers_allowed: Vec<CustomerId>,
    /// Only commands created before this time (paging, newest first).
    pub before_ms: Option<u64>,
    /// With `before_ms`: the id of the previous page's last row; the page
    /// goes on after it among the commands of that same millisecond (a
    /// bulk run's members share one) instead of skipping them.
    pub before_id: Option<outpost_proto::ids::CommandId>,
    pub limit: usize,
}

impl CommandFilter {
    /// Whether a command created at `created_ms` with `id` comes after the
    /// page cursor (newest first: by time, then by id, both descending).
    pub fn after_cursor(&self, created_ms: u64, id: &outpost_proto::ids::CommandId) -> bool {
        match (self.before_ms, &self.before_id) {
            (None, _) => true,
            (Some(b), None) => created_ms < b,
            (Some(b), Some(last)) => created_ms < b || (created_ms == b && id.0 < last.0),
        }
    }
}

/// Commands queued at central for devices of its sites, their output, and
/// central's audit log. A backend applies every change through
/// [`crate::commands::apply`] under a lock (RocksDB) or in one
/// transaction (PostgreSQL: `SELECT ... FOR UPDATE`, the plan, `UPDATE`),
/// writing the record, its output and its open-index row together.
pub trait CommandStore: Send + Sync + 'static {
    /// Stores a new command with its audit entry; `Conflict` if the id
    /// exists.
    fn create_command<'a>(
        &'a self,
        cmd: &'a crate::commands::CentralCommand,
        audit: &'a crate::commands::AuditRow,
    ) -> StoreFuture<'a, ()>;
    fn command<'a>(
        &'a self,
        tenant: &'a TenantId,
        id: outpost_proto::ids::CommandId,
    ) -> StoreFuture<'a, Option<crate::commands::CentralCommand>>;
    /// The output central holds of a command (empty if none).
    fn command_output<'a>(
        &'a self,
        tenant: &'a TenantId,
        id: outpost_proto::ids::CommandId,
    ) -> StoreFuture<'a, Vec<u8>>;
    /// A tenant's commands, newest first, filtered, at most `limit`.
    fn commands<'a>(
        &'a self,
        tenant: &'a TenantId,
        f: &'a CommandFilter,
    ) -> StoreFuture<'a, Vec<crate::commands::CentralCommand>>;
    /// Commands not closed: of one site, or (`None`) of every tenant and
    /// site (the expiry sweep).
    fn open_commands<'a>(
        &'a self,
        site: Option<(&'a TenantId, &'a SiteId)>,
    ) -> StoreFuture<'a, Vec<crate::commands::CentralCommand>>;
    /// Applies `change` ([`crate::commands::apply`]) durably, with
    /// `audit` when the state changed; `None` if the tenant has no such
    /// command.
    fn change_command<'a>(
        &'a self,
        tenant: &'a TenantId,
        id: outpost_proto::ids::CommandId,
        change: crate::commands::Change,
        now_ms: u64,
        audit: Option<crate::commands::AuditRow>,
    ) -> StoreFuture<'a, Option<(crate::commands::CentralCommand, crate::commands::Outcome)>>;
    /// Stores `script` as the next version of its name (1 for a new one;
    /// an edit keeps the first version's customer) with `audit`, under the
    /// commands' lock. `expect_new`: `Err(Some(latest))` if the name
    /// exists; otherwise `Err(None)` if it does not.
    fn put_script<'a>(
        &'a self,
        tenant: &'a TenantId,
        script: crate::scripts::CentralScript,
        expect_new: bool,
        audit: crate::commands::AuditRow,
    ) -> StoreFuture<
        'a,
        std::result::Result<crate::scripts::CentralScript, Option<crate::scripts::CentralScript>>,
    >;
    /// Version `version` of script `name` (the newest with `None`).
    fn script<'a>(
        &'a self,
        tenant: &'a TenantId,
        name: &'a str,
        version: Option<u32>,
    ) -> StoreFuture<'a, Option<crate::scripts::CentralScript>>;
    /// The newest version of each of the tenant's scripts, by name.
    fn scripts<'a>(
        &'a self,
        tenant: &'a TenantId,
    ) -> StoreFuture<'a, Vec<crate::scripts::CentralScript>>;
    /// Stores a bulk run, its members' commands, which of them are held
    /// (not sent until released) and its audit entry, in one write.
    fn create_bulk<'a>(
        &'a self,
        run: &'a crate::bulk::CentralBulk,
        cmds: &'a [crate::commands::CentralCommand],
        held: &'a [outpost_proto::ids::CommandId],
        audit: &'a crate::commands::AuditRow,
    ) -> StoreFuture<'a, ()>;
    fn bulk<'a>(
        &'a self,
        tenant: &'a TenantId,
        id: outpost_proto::ids::CommandId,
    ) -> StoreFuture<'a, Option<crate::bulk::CentralBulk>>;
    /// A tenant's runs, newest first, at most `limit`.
    fn bulks<'a>(
        &'a self,
        tenant: &'a TenantId,
        limit: usize,
    ) -> StoreFuture<'a, Vec<crate::bulk::CentralBulk>>;
    /// Marks a run cancelled (the first cancel wins); `None` if unknown.
    fn cancel_bulk<'a>(
        &'a self,
        tenant: &'a TenantId,
        id: outpost_proto::ids::CommandId,
        by: &'a str,
        now_ms: u64,
        audit: crate::commands::AuditRow,
    ) -> StoreFuture<'a, Option<crate::bulk::CentralBulk>>;
    /// Held members: of one site, or (`None`) of every tenant and site:
    /// `(tenant, site, run, command)`.
    fn held<'a>(
        &'a self,
        site: Option<(&'a TenantId, &'a SiteId)>,
    ) -> StoreFuture<
        'a,
        Vec<(
            TenantId,
            SiteId,
            outpost_proto::ids::CommandId,
            outpost_proto::ids::CommandId,
        )>,
    >;
    /// No longer held (released or finished).
    fn unhold<'a>(
        &'a self,
        tenant: &'a TenantId,
        site: &'a SiteId,
        run: outpost_proto::ids::CommandId,
        cmds: &'a [outpost_proto::ids::CommandId],
    ) -> StoreFuture<'a, ()>;
    /// Several commands by id (`None` for unknown ones), in order.
    fn commands_by_id<'a>(
        &'a self,
        tenant: &'a TenantId,
        ids: &'a [outpost_proto::ids::CommandId],
    ) -> StoreFuture<'a, Vec<Option<crate::commands::CentralCommand>>>;
    fn append_audit<'a>(&'a self, row: &'a crate::commands::AuditRow) -> StoreFuture<'a, ()>;
    /// A tenant's audit entries, newest first, at most `limit`.
    fn audit<'a>(
        &'a self,
        tenant: &'a TenantId,
        limit: usize,
    ) -> StoreFuture<'a, Vec<crate::commands::AuditRow>>;
}

/// Applying site batches.
pub trait BatchStore: Send + Sync + 'static {
    /// Whether the store can serve now (`/healthz`): PostgreSQL runs one
    /// trivial query; the embedded RocksDB is always there (default).
    fn check(&self) -> StoreFuture<'_, ()> {
        Box::pin(async { Ok(()) })
    }

    /// Applies `batch` of `site` exactly once, durably before the future
    /// resolves: reads the rows [`crate::apply::Touched::of`] names, writes
    /// what [`crate::apply::plan`] returns, atomically with the site's
    /// applied set, and answers what changed for live viewers
    /// ([`crate::apply::delta`]; empty for a duplicate). The caller
    /// checked the identity.
    fn apply_batch_delta<'a>(
        &'a self,
        tenant: &'a TenantId,
        site_id: &'a SiteId,
        batch: SiteBatch,
        received_ms: u64,
    ) -> StoreFuture<'a, (ApplyOutcome, FleetDelta)>;

    /// [`BatchStore::apply_batch_delta`] without the delta.
    fn apply_batch<'a>(
        &'a self,
        tenant: &'a TenantId,
        site_id: &'a SiteId,
        batch: SiteBatch,
        received_ms: u64,
    ) -> StoreFuture<'a, ApplyOutcome> {
        let f = self.apply_batch_delta(tenant, site_id, batch, received_ms);
        Box::pin(async move { f.await.map(|(o, _)| o) })
    }

    /// Records that batch `letter.seq` of `site` was refused for good, and
    /// closes its number in the applied set, atomically, durably before
    /// the future resolves ([`crate::apply::dead_letter`] decides).
    fn dead_letter<'a>(
        &'a self,
        tenant: &'a TenantId,
        site_id: &'a SiteId,
        letter: DeadLetter,
    ) -> StoreFuture<'a, DeadLetterOutcome>;
}

/// What the API and the web view read, all tenant-scoped, and alert
/// acknowledgement. A device row read here carries its site's customer.
pub trait FleetStore: Send + Sync + 'static {
    /// Patch findings rows (missing patches and CVEs) of the tenant (of one
    /// site when given), each with its site's current customer.
    fn patch_findings<'a>(
        &'a self,
        tenant: &'a TenantId,
        site_id: Option<&'a SiteId>,
    ) -> StoreFuture<'a, Vec<PatchFindingsRow>>;
    /// One device's patch findings, `None` when its site sent none.
    fn device_patch_findings<'a>(
        &'a self,
        tenant: &'a TenantId,
        site_id: &'a SiteId,
        device: &'a str,
    ) -> StoreFuture<'a, Option<PatchFindingsRow>>;
    /// The tenant's devices exposed to `cve` (central's CVE index), at
    /// most `limit`, in (site, device) order. Not scoped by customer: the
    /// caller filters.
    fn cve_exposure<'a>(
        &'a self,
        tenant: &'a TenantId,
        cve: &'a str,
        limit: usize,
    ) -> StoreFuture<'a, Vec<CveExposureRow>>;
    /// Per (CVE, site), the tenant's devices exposed (of one site when
    /// given), from the CVE index alone, in (CVE, site) order. Not scoped
    /// by customer: the caller filters sites.
    fn cve_site_exposure<'a>(
        &'a self,
        tenant: &'a TenantId,
        site_id: Option<&'a SiteId>,
    ) -> StoreFuture<'a, Vec<CveSiteExposure>>;
    /// Patch compliance rows of the tenant (of one site when given), each
    /// with its site's current customer.
    fn patch_compliance<'a>(
        &'a self,
        tenant: &'a TenantId,
        site_id: Option<&'a SiteId>,
    ) -> StoreFuture<'a, Vec<PatchComplianceRow>>;
    /// One device's patch compliance, `None` when its site sent none.
    fn device_patch_compliance<'a>(
        &'a self,
        tenant: &'a TenantId,
        site_id: &'a SiteId,
        device: &'a str,
    ) -> StoreFuture<'a, Option<PatchComplianceRow>>;
    fn devices<'a>(
        &'a self,
        tenant: &'a TenantId,
        filter: &'a DeviceFilter,
    ) -> StoreFuture<'a, Page<DeviceRow>>;
    fn device<'a>(
        &'a self,
        tenant: &'a TenantId,
        site_id: &'a SiteId,
        device: &'a str,
    ) -> StoreFuture<'a, Option<DeviceRow>>;
    /// Rollups of one series in `[from, to)`, oldest first, at most `limit`.
    fn rollups<'a>(
        &'a self,
        tenant: &'a TenantId,
        q: &'a RollupQuery,
    ) -> StoreFuture<'a, Vec<(u64, RollupRow)>>;
    fn alerts<'a>(
        &'a self,
        tenant: &'a TenantId,
        site_id: Option<&'a SiteId>,
    ) -> StoreFuture<'a, Vec<AlertRow>>;
    /// The newest alerts matching `filter`, and their count: what an inbox
    /// page and the alert API read (a backend answers open-only filters
    /// from its open alerts, not by reading every closed one).
    fn alert_page<'a>(
        &'a self,
        tenant: &'a TenantId,
        filter: &'a AlertFilter,
    ) -> StoreFuture<'a, AlertPage>;
    /// Marks an alert acknowledged by `by` with `comment` (kept in the
    /// alert's history); the alert as it is now, `None` if the tenant has
    /// no such alert.
    fn ack_alert<'a>(
        &'a self,
        tenant: &'a TenantId,
        site_id: &'a SiteId,
        alert_id: u64,
        by: &'a str,
        comment: &'a str,
        now_ms: u64,
    ) -> StoreFuture<'a, Option<AlertRow>>;
    /// An alert's transitions and acknowledgements, oldest first.
    fn alert_history<'a>(
        &'a self,
        tenant: &'a TenantId,
        site_id: &'a SiteId,
        alert_id: u64,
    ) -> StoreFuture<'a, Vec<AlertHistoryEntry>>;
    /// A device's status changes (time, status), newest first, at most `limit`.
    fn status_history<'a>(
        &'a self,
        tenant: &'a TenantId,
        site_id: &'a SiteId,
        device: &'a str,
        limit: usize,
    ) -> StoreFuture<'a, Vec<(u64, DeviceStatus)>>;
    /// The console's device search (see [`DeviceSearch`]); a cursor of
    /// another search is [`CentralStoreError::InvalidCursor`].
    fn search_devices<'a>(
        &'a self,
        tenant: &'a TenantId,
        q: &'a DeviceSearch,
    ) -> StoreFuture<'a, SearchPage>;
    /// The distinct tags of the tenant's devices within
    /// `customers_allowed` (empty = all), sorted, at most
    /// [`crate::fleet_index::MAX_TAG_FACETS`].
    fn device_tags<'a>(
        &'a self,
        tenant: &'a TenantId,
        customers_allowed: &'a [CustomerId],
    ) -> StoreFuture<'a, Vec<String>>;
    /// A device's IPs and tags (empty when its site sent none).
    fn device_facts<'a>(
        &'a self,
        tenant: &'a TenantId,
        site_id: &'a SiteId,
        device: &'a str,
    ) -> StoreFuture<'a, DeviceFacts>;
    /// The IPs and tags of several devices in one read (RocksDB: one
    /// multi-get; PostgreSQL: one `= ANY` query), in the order asked:
    /// what [`FleetStore::device_facts`] answers for each.
    fn device_facts_many<'a>(
        &'a self,
        tenant: &'a TenantId,
        devices: &'a [(SiteId, String)],
    ) -> StoreFuture<'a, Vec<DeviceFacts>>;
    /// Device and open-alert counts per site, within `customers_allowed`
    /// (empty = all).
    fn fleet_counts<'a>(
        &'a self,
        tenant: &'a TenantId,
        customers_allowed: &'a [CustomerId],
    ) -> StoreFuture<'a, FleetCounts>;
    /// Hostnames of devices (empty name or unknown device: `None`), in
    /// the order asked.
    fn hostnames<'a>(
        &'a self,
        tenant: &'a TenantId,
        devices: &'a [(SiteId, String)],
    ) -> StoreFuture<'a, Vec<Option<String>>>;
    /// Rollups of several series of one device, oldest first, one list per
    /// series asked (in order), in one read.
    fn series_rollups<'a>(
        &'a self,
        tenant: &'a TenantId,
        q: &'a SeriesQuery,
    ) -> StoreFuture<'a, Vec<Vec<(u64, Rollup)>>>;
}

/// Sites and their join tokens, and the credentials of people and tools:
/// users, API tokens, sessions (secrets are stored by SHA-256).
pub trait AuthStore: Send + Sync + 'static {
    /// Stores a new site with its join token; `Conflict` if it exists.
    fn create_site<'a>(
        &'a self,
        site: &'a SiteRecord,
        join_token_hash: &'a [u8; 32],
        token: &'a JoinTokenRecord,
    ) -> StoreFuture<'a, ()>;
    /// Consumes a join token (one use): returns it if it existed.
    fn take_join_token<'a>(
        &'a self,
        token_hash: &'a [u8; 32],
    ) -> StoreFuture<'a, Option<JoinTokenRecord>>;
    fn site<'a>(
        &'a self,
        tenant: &'a TenantId,
        site_id: &'a SiteId,
    ) -> StoreFuture<'a, Option<SiteRecord>>;
    fn sites<'a>(&'a self, tenant: &'a TenantId) -> StoreFuture<'a, Vec<SiteRecord>>;
    fn update_site<'a>(&'a self, site: &'a SiteRecord) -> StoreFuture<'a, ()>;

    fn put_api_token<'a>(
        &'a self,
        hash: &'a [u8; 32],
        rec: &'a ApiTokenRecord,
    ) -> StoreFuture<'a, ()>;
    /// The token stored under `hash`, whatever its state: the caller
    /// refuses a revoked or expired one ([`ApiTokenRecord::refusal`]).
    fn api_token<'a>(&'a self, hash: &'a [u8; 32]) -> StoreFuture<'a, Option<ApiTokenRecord>>;
    /// Every API token of `tenant`, revoked and expired ones included,
    /// oldest first (by creation time, then id).
    fn api_tokens<'a>(&'a self, tenant: &'a TenantId) -> StoreFuture<'a, Vec<ApiTokenRecord>>;
    /// Marks token `id` of `tenant` revoked at `now_ms` by `by`, and
    /// appends `audit`, in one write. `None` if the tenant has no such
    /// token; `(token, false)` if it was revoked already (left as it was,
    /// no audit entry), else `(token, true)`.
    fn revoke_api_token<'a>(
        &'a self,
        tenant: &'a TenantId,
        id: &'a str,
        by: &'a str,
        now_ms: u64,
        audit: &'a crate::commands::AuditRow,
    ) -> StoreFuture<'a, Option<(ApiTokenRecord, bool)>>;
    /// Stores a user, replacing one of the same tenant and name (the
    /// operator's `user add`); a replaced user's sessions end in the same
    /// write. Returns the number of sessions ended.
    fn put_user<'a>(&'a self, user: &'a UserRecord) -> StoreFuture<'a, u64>;
    /// Stores a new user; `Conflict` if the tenant has one of that name.
    fn create_user<'a>(&'a self, user: &'a UserRecord) -> StoreFuture<'a, ()>;
    fn user<'a>(
        &'a self,
        tenant: &'a TenantId,
        name: &'a str,
    ) -> StoreFuture<'a, Option<UserRecord>>;
    /// Replaces a user's password hash and ends every session of that
    /// user, in one write. `None` if there is no such user, else the
    /// number of sessions ended.
    fn set_password<'a>(
        &'a self,
        tenant: &'a TenantId,
        name: &'a str,
        password_hash: &'a str,
    ) -> StoreFuture<'a, Option<u64>>;
    /// Removes user `name` of `tenant`, ends every session of it and
    /// appends `audit`, in one write. `None` if there is no such user,
    /// else the number of sessions ended.
    fn remove_user<'a>(
        &'a self,
        tenant: &'a TenantId,
        name: &'a str,
        audit: &'a crate::commands::AuditRow,
    ) -> StoreFuture<'a, Option<u64>>;
    fn put_session<'a>(&'a self, hash: &'a [u8; 32], s: &'a SessionRecord) -> StoreFuture<'a, ()>;
    fn session<'a>(&'a self, hash: &'a [u8; 32]) -> StoreFuture<'a, Option<SessionRecord>>;
    fn delete_session<'a>(&'a self, hash: &'a [u8; 32]) -> StoreFuture<'a, ()>;

    /// Whether failed-login limits live in this store, shared by every
    /// instance over it (PostgreSQL). `false` (RocksDB, one instance):
    /// the process keeps them ([`crate::Central::login_limiter`]) and the
    /// three methods below are not called.
    fn shares_login_limits(&self) -> bool {
        false
    }
    /// The theoretical arrival times (generic cell rate algorithm) of
    /// `keys`, in order (`None`: nothing kept).
    fn login_tats<'a>(&'a self, keys: &'a [String]) -> StoreFuture<'a, Vec<Option<u64>>> {
        Box::pin(async move { Ok(vec![None; keys.len()]) })
    }
    /// Records a failure for each (key, interval): its time becomes
    /// `max(time, now) + interval`, atomically (instances race); keys idle
    /// at `now_ms` are forgotten.
    fn login_failed<'a>(&'a self, keys: &'a [(String, u64)], now_ms: u64) -> StoreFuture<'a, ()> {
        let _ = (keys, now_ms);
        Box::pin(async { Ok(()) })
    }
    /// Forgets a key (a successful login).
    fn login_forget<'a>(&'a self, key: &'a str) -> StoreFuture<'a, ()> {
        let _ = key;
        Box::pin(async { Ok(()) })
    }
}
