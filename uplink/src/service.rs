//! The uplink as an appliance subsystem: owns the outbox, the compaction
//! timer and the sender, joins a central on request, and reports status.
//! `outpost serve` creates one [`Uplink`] and starts it with the appliance's
//! cancellation token and task tracker.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use outpost_proto::{CustomerId, SiteId, TenantId};

use outpost_storage::Store;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::join::{self, JoinParams};
use crate::metrics::UplinkMetrics;
use crate::outbox::{Outbox, OutboxConfig};
use crate::site_files::{JoinedSite, SiteIdentity, UplinkDir};

/// Settings of the uplink (the appliance's `[uplink]` section).
#[derive(Debug, Clone)]
pub struct UplinkOptions {
    pub outbox: OutboxConfig,
    pub reconnect_base: Duration,
    pub reconnect_max: Duration,
    /// Batches sent and not yet acknowledged.
    pub max_in_flight_batches: usize,
}

impl Default for UplinkOptions {
    fn default() -> Self {
        UplinkOptions {
            outbox: OutboxConfig::default(),
            reconnect_base: Duration::from_secs(1),
            reconnect_max: Duration::from_secs(60),
            max_in_flight_batches: 16,
        }
    }
}

/// State of the link to central.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LinkState {
    NotJoined,
    Connecting,
    Connected,
    Disconnected,
}

impl LinkState {
    pub fn as_str(self) -> &'static str {
        match self {
            LinkState::NotJoined => "not_joined",
            LinkState::Connecting => "connecting",
            LinkState::Connected => "connected",
            LinkState::Disconnected => "disconnected",
        }
    }
}

/// What `outpost uplink status` shows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UplinkStatus {
    pub joined: bool,
    pub link: LinkState,
    pub central: Option<String>,
    pub site_id: Option<SiteId>,
    pub site_name: Option<String>,
    pub tenant: Option<TenantId>,
    pub customer: Option<CustomerId>,
    pub interval_ms: u64,
    pub last_acked_seq: u64,
    pub next_seq: u64,
    pub backlog_batches: u64,
    pub backlog_bytes: u64,
    pub oldest_backlog_ms: Option<u64>,
    pub dropped_rollups_total: u64,
    pub connected_since_ms: Option<u64>,
    pub last_ack_ms: Option<u64>,
    pub last_error: Option<String>,
}

#[derive(Debug)]
struct Link {
    state: LinkState,
    since_ms: Option<u64>,
    last_ack_ms: Option<u64>,
    last_error: Option<String>,
    site: Option<JoinedSite>,
}

/// The uplink subsystem (see the module docs).
pub struct Uplink {
    store: Store,
    dir: UplinkDir,
    opts: UplinkOptions,
    metrics: UplinkMetrics,
    outbox: Arc<Outbox>,
    link: Mutex<Link>,
    /// Appliance shutdown.
    shutdown: CancellationToken,
    tracker: TaskTracker,
    /// Cancels the compactor and sender of the current identity (a re-join
    /// replaces them).
    running: Mutex<Option<CancellationToken>>,
    /// Serialises joins.
    join_lock: tokio::sync::Mutex<()>,
    /// Asks the compactor for a batch now (after a reconnect).
    pub compact_now: tokio::sync::Notify,
}

impl std::fmt::Debug for Uplink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Uplink").finish_non_exhaustive()
    }
}

impl Uplink {
    /// Opens the outbox; call [`Uplink::start`] to begin syncing if joined.
    pub fn new(
        store: Store,
        data_dir: &Path,
        opts: UplinkOptions,
        metrics: UplinkMetrics,
        shutdown: CancellationToken,
        tracker: TaskTracker,
    ) -> anyhow::Result<Arc<Uplink>> {
        let outbox = Arc::new(Outbox::open(
            store.clone(),
            opts.outbox.clone(),
            metrics.clone(),
        )?);
        Ok(Arc::new(Uplink {
            store,
            dir: UplinkDir::new(data_dir),
            opts,
            metrics,
            outbox,
            link: Mutex::new(Link {
                state: LinkState::NotJoined,
                since_ms: None,
                last_ack_ms: None,
                last_error: None,
                site: None,
            }),
            shutdown,
            tracker,
            running: Mutex::new(None),
            join_lock: tokio::sync::Mutex::new(()),
            compact_now: tokio::sync::Notify::new(),
        }))
    }

    pub fn options(&self) -> &UplinkOptions {
        &self.opts
    }
    pub fn metrics(&self) -> &UplinkMetrics {
        &self.metrics
    }
    pub fn outbox(&self) -> &Arc<Outbox> {
        &self.outbox
    }

    fn link(&self) -> std::sync::MutexGuard<'_, Link> {
        self.link.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn set_link(&self, state: LinkState, error: Option<String>) {
        let mut l = self.link();
        if l.state != state {
            l.since_ms = Some(crate::now_ms());
        }
        l.state = state;
        if error.is_some() {
            l.last_error = error;
        }
    }

    pub(crate) fn note_acked(&self, _seq: u64) {
        self.link().last_ack_ms = Some(crate::now_ms());
    }

    /// Starts syncing if the site is joined (no-op otherwise).
    pub fn start(self: &Arc<Self>) -> anyhow::Result<()> {
        let Some(ident) = self.dir.load()? else {
            self.store.set_uplink_tracking(false);
            return Ok(());
        };
        self.launch(ident);
        Ok(())
    }

    fn launch(self: &Arc<Self>, ident: SiteIdentity) {
        self.store.set_uplink_tracking(true);
        let cancel = self.shutdown.child_token();
        if let Some(old) = self
            .running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .replace(cancel.clone())
        {
            old.cancel();
        }
        {
            let mut l = self.link();
            l.site = Some(ident.site.clone());
            l.state = LinkState::Connecting;
            l.last_error = None;
        }
        info!(site = %ident.site.site_id, central = %ident.site.central, "uplink starting");
        let ident = Arc::new(ident);
        self.tracker
            .spawn(compactor(self.clone(), ident.clone(), cancel.clone()));
        self.tracker
            .spawn(crate::sender::run(self.clone(), ident, cancel));
    }

    /// Joins a central (replacing any previous site identity) and starts
    /// syncing.
    pub async fn join(self: &Arc<Self>, params: &JoinParams) -> anyhow::Result<JoinedSite> {
        let _g = self.join_lock.lock().await;
        let previous = self.dir.load().ok().flatten().map(|i| i.site.site_id);
        let site = join::join(&self.dir, params, env!("CARGO_PKG_VERSION")).await?;
        if previous.as_deref() != Some(site.site_id.as_str()) {
            self.outbox.reset_for_new_site()?;
        }
        let ident = self
            .dir
            .load()?
            .ok_or_else(|| anyhow::anyhow!("the site identity vanished right after joining"))?;
        self.launch(ident);
        Ok(site)
    }

    pub fn status(&self) -> UplinkStatus {
        let s = self.outbox.stats();
        let l = self.link();
        let site = l.site.as_ref();
        UplinkStatus {
            joined: site.is_some(),
            link: l.state,
            central: site.map(|s| s.central.clone()),
            site_id: site.map(|s| s.site_id.clone()),
            site_name: site.map(|s| s.site_name.clone()),
            tenant: site.map(|s| s.tenant.clone()),
            customer: site.map(|s| s.customer.clone()),
            interval_ms: site.map(|s| s.interval.as_millis() as u64).unwrap_or(0),
            last_acked_seq: s.last_acked_seq,
            next_seq: s.next_seq,
            backlog_batches: s.backlog_batches,
            backlog_bytes: s.backlog_bytes,
            oldest_backlog_ms: s.oldest_backlog_ms,
            dropped_rollups_total: s.dropped_rollups_total,
            connected_since_ms: (l.state == LinkState::Connected)
                .then_some(l.since_ms)
                .flatten(),
            last_ack_ms: l.last_ack_ms,
            last_error: l.last_error.clone(),
        }
    }
}

/// Compacts a batch every interval (and on request) until cancelled.
async fn compactor(uplink: Arc<Uplink>, ident: Arc<SiteIdentity>, cancel: CancellationToken) {
    let interval = ident.site.interval.max(Duration::from_millis(100));
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = uplink.compact_now.notified() => {}
            _ = cancel.cancelled() => return,
        }
        let ob = uplink.outbox.clone();
        let (site, tenant) = (ident.site.site_id.clone(), ident.site.tenant.clone());
        let r =
            tokio::task::spawn_blocking(move || ob.compact(&site, &tenant, crate::now_ms())).await;
        match r {
            Ok(Ok(e)) => tracing::debug!(
                seq = e.seq,
                bytes = e.bytes,
                rollups = e.rollups,
                "uplink batch compacted"
            ),
            Ok(Err(e)) => {
                uplink.metrics.compaction_errors.inc();
                warn!(error = %e, "uplink compaction failed");
            }
            Err(e) => {
                uplink.metrics.compaction_errors.inc();
                warn!(error = %e, "uplink compaction task failed");
            }
        }
    }
}
