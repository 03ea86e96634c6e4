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
    AlertRow, ApiTokenRecord, DeadLetter, DeviceRow, JoinTokenRecord, RollupRow, SessionRecord,
    SiteRecord, UserRecord,
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

/// What a store method returns: a boxed future (object-safe traits).
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T>> + Send + 'a>>;

/// Central's storage (see the module docs).
pub trait CentralStore: BatchStore + FleetStore + AuthStore {}

impl<T: BatchStore + FleetStore + AuthStore> CentralStore for T {}

/// Applying site batches.
pub trait BatchStore: Send + Sync + 'static {
    /// Applies `batch` of `site` exactly once, durably before the future
    /// resolves: reads the rows [`crate::apply::Touched::of`] names, writes
    /// what [`crate::apply::plan`] returns, atomically with the site's
    /// applied set. The caller checked the identity.
    fn apply_batch<'a>(
        &'a self,
        tenant: &'a TenantId,
        site_id: &'a SiteId,
        batch: SiteBatch,
        received_ms: u64,
    ) -> StoreFuture<'a, ApplyOutcome>;

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
    /// Marks an alert acknowledged; `false` if the tenant has no such alert.
    fn ack_alert<'a>(
        &'a self,
        tenant: &'a TenantId,
        site_id: &'a SiteId,
        alert_id: u64,
        by: &'a str,
        now_ms: u64,
    ) -> StoreFuture<'a, bool>;
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
    fn api_token<'a>(&'a self, hash: &'a [u8; 32]) -> StoreFuture<'a, Option<ApiTokenRecord>>;
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
    fn put_session<'a>(&'a self, hash: &'a [u8; 32], s: &'a SessionRecord) -> StoreFuture<'a, ()>;
    fn session<'a>(&'a self, hash: &'a [u8; 32]) -> StoreFuture<'a, Option<SessionRecord>>;
    fn delete_session<'a>(&'a self, hash: &'a [u8; 32]) -> StoreFuture<'a, ()>;
}
