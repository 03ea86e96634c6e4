//! Central's storage interface. The embedded RocksDB backend
//! ([`crate::rocks::RocksCentralStore`]) implements it; a PostgreSQL backend
//! (a later issue) maps each method to one transaction: `apply_batch` is
//! `INSERT INTO applied_batches (site, seq)` (unique key) plus the upserts,
//! committed together, so a batch is applied exactly once whatever the
//! number of stateless central instances.
//!
//! Every read takes the tenant: rows of another tenant are invisible (the
//! RocksDB keys start with the tenant; SQL queries filter on it).
//! Methods are blocking; async callers use `spawn_blocking`.

use outpost_uplink::batch::SiteBatch;

use crate::model::{
    AlertRow, ApiTokenRecord, DeviceRow, JoinTokenRecord, RollupRow, SessionRecord, SiteRecord,
    UserRecord,
};

#[derive(Debug, thiserror::Error)]
pub enum CentralStoreError {
    #[error("central storage: {0}")]
    Backend(String),
    #[error("central storage: {0}")]
    Codec(#[from] outpost_proto::codec::CodecError),
    #[error("{0}")]
    Conflict(String),
}

pub type Result<T, E = CentralStoreError> = std::result::Result<T, E>;

/// What applying a batch did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApplyOutcome {
    /// Newly applied (durable on return).
    Applied {
        rollups_new: u64,
        rollups_replaced: u64,
    },
    /// Already applied earlier; nothing changed.
    Duplicate,
}

/// A page of results with the cursor of the next page.
#[derive(Debug, Clone, PartialEq)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next: Option<String>,
}

/// Filters of the device list.
#[derive(Debug, Clone, Default)]
pub struct DeviceFilter {
    pub site_id: Option<String>,
    pub customer: Option<String>,
    /// Customers the caller may see (empty = all).
    pub customers_allowed: Vec<String>,
    pub status: Option<String>,
    /// Cursor returned by the previous page.
    pub after: Option<String>,
    pub limit: usize,
}

/// Which rollups [`CentralStore::rollups`] returns.
#[derive(Debug, Clone, Default)]
pub struct RollupQuery {
    pub site_id: String,
    pub device: String,
    pub series: String,
    pub label: String,
    pub from_ms: u64,
    pub to_ms: u64,
    pub limit: usize,
}

/// Central's storage (see the module docs).
pub trait CentralStore: Send + Sync + 'static {
    // Sites and joining.
    fn create_site(
        &self,
        site: &SiteRecord,
        join_token_hash: &[u8; 32],
        token: &JoinTokenRecord,
    ) -> Result<()>;
    /// Consumes a join token (one use): returns it if it existed.
    fn take_join_token(&self, token_hash: &[u8; 32]) -> Result<Option<JoinTokenRecord>>;
    fn site(&self, tenant: &str, site_id: &str) -> Result<Option<SiteRecord>>;
    fn sites(&self, tenant: &str) -> Result<Vec<SiteRecord>>;
    fn update_site(&self, site: &SiteRecord) -> Result<()>;

    /// Applies `batch` of `site` exactly once, durably (synced) before
    /// returning. The caller checked the identity.
    fn apply_batch(
        &self,
        tenant: &str,
        site_id: &str,
        batch: &SiteBatch,
        received_ms: u64,
    ) -> Result<ApplyOutcome>;

    // Reads, all tenant-scoped.
    fn devices(&self, tenant: &str, filter: &DeviceFilter) -> Result<Page<DeviceRow>>;
    fn device(&self, tenant: &str, site_id: &str, device: &str) -> Result<Option<DeviceRow>>;
    /// Rollups of one series in `[from, to)`, oldest first, at most `limit`.
    fn rollups(&self, tenant: &str, q: &RollupQuery) -> Result<Vec<(u64, RollupRow)>>;
    fn alerts(&self, tenant: &str, site_id: Option<&str>) -> Result<Vec<AlertRow>>;
    /// Marks an alert acknowledged; `false` if the tenant has no such alert.
    fn ack_alert(
        &self,
        tenant: &str,
        site_id: &str,
        alert_id: u64,
        by: &str,
        now_ms: u64,
    ) -> Result<bool>;

    // Credentials.
    fn put_api_token(&self, hash: &[u8; 32], rec: &ApiTokenRecord) -> Result<()>;
    fn api_token(&self, hash: &[u8; 32]) -> Result<Option<ApiTokenRecord>>;
    fn put_user(&self, user: &UserRecord) -> Result<()>;
    fn user(&self, tenant: &str, name: &str) -> Result<Option<UserRecord>>;
    fn put_session(&self, hash: &[u8; 32], s: &SessionRecord) -> Result<()>;
    fn session(&self, hash: &[u8; 32]) -> Result<Option<SessionRecord>>;
    fn delete_session(&self, hash: &[u8; 32]) -> Result<()>;
}
