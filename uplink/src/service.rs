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
    /// Central's addresses in order of preference (instances over one
    /// PostgreSQL); empty: the address the site joined
    /// ([`crate::failover`]).
    pub centrals: Vec<String>,
    /// A session on an address other than the first ends after this, to
    /// return to the first.
    pub fail_back_after: Duration,
}

impl Default for UplinkOptions {
    fn default() -> Self {
        UplinkOptions {
            outbox: OutboxConfig::default(),
            reconnect_base: Duration::from_secs(1),
            reconnect_max: Duration::from_secs(60),
            max_in_flight_batches: 16,
            centrals: Vec::new(),
            fail_back_after: Duration::from_secs(300),
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
    /// Devices (not revoked) enrolled under a tenant other than the one
    /// this site joined central as, per tenant: central lists them under
    /// its own tenant (`tenant`) and shows the mismatch on the site.
    #[serde(default)]
    pub foreign_tenants: Vec<crate::batch::ForeignTenant>,
}

impl UplinkStatus {
    /// The warning `outpost uplink status` prints when devices were
    /// enrolled under another tenant than the joined one, if any.
    pub fn tenant_warning(&self) -> Option<String> {
        let joined = self.tenant.as_ref()?;
        if self.foreign_tenants.is_empty() {
            return None;
        }
        let n: u64 = self
            .foreign_tenants
            .iter()
            .map(|f| u64::from(f.devices))
            .sum();
        let which: Vec<String> = self
            .foreign_tenants
            .iter()
            .map(|f| {
                format!(
                    "{} ({} device{})",
                    f.tenant,
                    f.devices,
                    if f.devices == 1 { "" } else { "s" }
                )
            })
            .collect();
        Some(format!(
            "{n} device{} enrolled under tenant{} {} but this site joined central as tenant {joined}: \
             central lists {} under {joined}. Re-enroll {} with a token for tenant {joined} \
             (and revoke the old enrollment), or join a site of the right tenant.",
            if n == 1 { " is" } else { "s are" },
            if which.len() == 1 { "" } else { "s" },
            which.join(", "),
            if n == 1 { "it" } else { "them" },
            if n == 1 { "it" } else { "them" },
        ))
    }
}

#[derive(Debug)]
struct Link {
    state: LinkState,
    since_ms: Option<u64>,
    last_ack_ms: Option<u64>,
    last_error: Option<String>,
    site: Option<JoinedSite>,
}

/// The tasks syncing one site identity.
#[derive(Debug)]
struct Running {
    /// Stops both tasks.
    cancel: CancellationToken,
    compactor: tokio::task::JoinHandle<()>,
    sender: tokio::task::JoinHandle<()>,
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
    /// The compactor and sender of the current identity. A re-join stops
    /// them and waits for them to end before it touches the outbox or
    /// starts their successors ([`Uplink::stop_running`]): an old sender
    /// still closing its connection would otherwise report the link
    /// `disconnected` (and `outpost_uplink_connected 0`) after the new one
    /// connected, or acknowledge the old site's numbers in the new outbox.
    running: Mutex<Option<Running>>,
    /// Serialises joins.
    join_lock: tokio::sync::Mutex<()>,
    /// Asks the compactor for a batch now (after a reconnect).
    pub compact_now: tokio::sync::Notify,
    /// The downlink adapter's port, once the appliance attached one
    /// ([`Uplink::attach_downlink`]); without it central's commands are
    /// not taken (the `Hello` then says protocol version 1).
    downlink: Mutex<Option<Arc<crate::downlink::DownlinkPort>>>,
    /// The protocol version the next `Hello` says: this build's, or 1
    /// after a central closed the link as not speaking it (an older
    /// central), until the process restarts.
    pub(crate) hello_version: std::sync::atomic::AtomicU16,
    /// Findings left out of batches for an older central, owed to it
    /// once it reads them ([`crate::resend`]).
    findings_resend: Arc<crate::resend::FindingsResend>,
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
            downlink: Mutex::new(None),
            hello_version: std::sync::atomic::AtomicU16::new(crate::wire::UPLINK_PROTOCOL_VERSION),
            findings_resend: Arc::new(crate::resend::FindingsResend::open(
                &UplinkDir::new(data_dir).0,
            )),
        }))
    }

    /// Attaches the downlink adapter (before [`Uplink::start`]): central's
    /// commands go to it, its frames go up the uplink stream.
    pub fn attach_downlink(&self, port: crate::downlink::DownlinkPort) {
        *self.downlink.lock().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(port));
    }

    pub(crate) fn downlink(&self) -> Option<Arc<crate::downlink::DownlinkPort>> {
        self.downlink
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Whether patch findings are owed to central (the patch service
    /// re-queues them once central reads them).
    pub fn findings_resend(&self) -> Arc<crate::resend::FindingsResend> {
        self.findings_resend.clone()
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

    fn running(&self) -> std::sync::MutexGuard<'_, Option<Running>> {
        self.running.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Stops the compactor and sender of the current identity, if any, and
    /// returns once both ended: nothing they do can land after this.
    async fn stop_running(&self) {
        let Some(old) = self.running().take() else {
            return;
        };
        old.cancel.cancel();
        for (what, task) in [("compactor", old.compactor), ("sender", old.sender)] {
            if let Err(e) = task.await {
                warn!(error = %e, "the previous uplink {what} task failed");
            }
        }
    }

    /// Starts the compactor and sender of `ident`. The caller stopped the
    /// previous ones ([`Uplink::stop_running`]).
    fn launch(self: &Arc<Self>, ident: SiteIdentity) {
        self.store.set_uplink_tracking(true);
        let cancel = self.shutdown.child_token();
        {
            let mut l = self.link();
            l.site = Some(ident.site.clone());
            l.state = LinkState::Connecting;
            l.last_error = None;
        }
        info!(site = %ident.site.site_id, central = %ident.site.central, "uplink starting");
        let ident = Arc::new(ident);
        let compactor = self
            .tracker
            .spawn(compactor(self.clone(), ident.clone(), cancel.clone()));
        let sender = self
            .tracker
            .spawn(crate::sender::run(self.clone(), ident, cancel.clone()));
        let previous = self.running().replace(Running {
            cancel,
            compactor,
            sender,
        });
        if let Some(old) = previous {
            // Not expected (callers stop it first); never leave it running.
            old.cancel.cancel();
        }
    }

    /// Joins a central (replacing any previous site identity) and starts
    /// syncing.
    pub async fn join(self: &Arc<Self>, params: &JoinParams) -> anyhow::Result<JoinedSite> {
        let _g = self.join_lock.lock().await;
        let previous = self.dir.load().ok().flatten().map(|i| i.site.site_id);
        let site = join::join(&self.dir, params, env!("CARGO_PKG_VERSION")).await?;
        // The old identity's tasks end before the outbox changes hands.
        self.stop_running().await;
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

    /// The site this appliance joined as, if it did (no I/O: for pages
    /// that ask at every request).
    pub fn joined(&self) -> Option<JoinedSite> {
        self.link().site.clone()
    }

    /// The link's state, since when (ms), and its last error (no I/O).
    pub fn link_state(&self) -> (LinkState, Option<u64>, Option<String>) {
        let l = self.link();
        (l.state, l.since_ms, l.last_error.clone())
    }

    /// The link's status. Reads the device registry (for
    /// `foreign_tenants`): call it off the async threads.
    pub fn status(&self) -> UplinkStatus {
        let s = self.outbox.stats();
        let joined_tenant = self.link().site.as_ref().map(|s| s.tenant.clone());
        let foreign_tenants = match &joined_tenant {
            None => Vec::new(),
            Some(t) => match crate::outbox::compactor::device_records(&self.store) {
                Ok(records) => crate::outbox::compactor::foreign_tenants(&records, t),
                Err(e) => {
                    warn!(error = %e, "reading the device registry for the uplink status");
                    Vec::new()
                }
            },
        };
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
            foreign_tenants,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::ForeignTenant;

    fn status(tenant: Option<&str>, foreign: &[(&str, u32)]) -> UplinkStatus {
        UplinkStatus {
            joined: tenant.is_some(),
            link: LinkState::Connected,
            central: None,
            site_id: None,
            site_name: None,
            tenant: tenant.map(Into::into),
            customer: None,
            interval_ms: 0,
            last_acked_seq: 0,
            next_seq: 1,
            backlog_batches: 0,
            backlog_bytes: 0,
            oldest_backlog_ms: None,
            dropped_rollups_total: 0,
            connected_since_ms: None,
            last_ack_ms: None,
            last_error: None,
            foreign_tenants: foreign
                .iter()
                .map(|(t, n)| ForeignTenant {
                    tenant: (*t).into(),
                    devices: *n,
                })
                .collect(),
        }
    }

    #[test]
    fn the_status_warns_of_devices_enrolled_under_another_tenant() {
        assert_eq!(status(Some("typo-msp"), &[]).tenant_warning(), None);
        assert_eq!(status(None, &[("acme-msp", 1)]).tenant_warning(), None);
        let w = status(Some("typo-msp"), &[("acme-msp", 1)])
            .tenant_warning()
            .expect("a warning");
        assert!(
            w.starts_with("1 device is enrolled under tenant acme-msp (1 device) but this site joined central as tenant typo-msp"),
            "{w}"
        );
        assert!(w.contains("central lists it under typo-msp"), "{w}");
        let w = status(Some("typo-msp"), &[("acme-msp", 2), ("zeta", 1)])
            .tenant_warning()
            .expect("a warning");
        assert!(
            w.starts_with(
                "3 devices are enrolled under tenants acme-msp (2 devices), zeta (1 device)"
            ),
            "{w}"
        );
    }

    /// Status JSON written before `foreign_tenants` existed still parses.
    #[test]
    fn status_json_without_foreign_tenants_parses() {
        let mut v = serde_json::to_value(status(Some("t"), &[])).unwrap();
        v.as_object_mut().unwrap().remove("foreign_tenants");
        let s: UplinkStatus = serde_json::from_value(v).unwrap();
        assert!(s.foreign_tenants.is_empty());
    }
}
