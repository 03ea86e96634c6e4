//! Central's end of the deployment downlink on one site's uplink stream
//! (protocol 5): the site's open orders after `Welcome`, orders pushed by
//! the API, resends, and the site's acknowledgements and progress.
//!
//! Owns only the per-connection state ([`crate::deploy::SentOrders`]);
//! records and rules are [`crate::deploy`], the stream is
//! [`crate::receiver`]'s. A site below protocol 5 gets nothing from here.

use outpost_proto::{CustomerId, SiteId, TenantId};
use outpost_uplink::deploy_link::{DeployAck, DeployProgress, DeployProgressAck};
use outpost_uplink::wire::{CentralFrame, DEPLOY_PROTOCOL_VERSION};
use tracing::{info, warn};

use crate::Central;
use crate::deploy::{OrderRecord, SentOrders, SiteDeploymentRecord};

/// Most orders in one frame.
const ORDERS_PER_FRAME: usize = 64;

/// The deployment downlink of one site connection.
pub struct SiteDeployLink<'a> {
    c: &'a Central,
    tenant: TenantId,
    site: SiteId,
    customer: CustomerId,
    /// Whether the site speaks protocol 5 on this stream.
    on: bool,
    /// The stream's protocol (orders needing a newer one are refused
    /// here, [`crate::deploy::too_old`]).
    version: u16,
    sent: SentOrders,
}

impl<'a> SiteDeployLink<'a> {
    pub fn new(
        c: &'a Central,
        tenant: &TenantId,
        site: &SiteId,
        customer: &CustomerId,
        version: u16,
    ) -> SiteDeployLink<'a> {
        SiteDeployLink {
            c,
            tenant: tenant.clone(),
            site: site.clone(),
            customer: customer.clone(),
            on: version >= DEPLOY_PROTOCOL_VERSION,
            version,
            sent: SentOrders::default(),
        }
    }

    /// Every order the site has not acknowledged, oldest first.
    pub async fn opening(&mut self, now_ms: u64) -> Vec<CentralFrame> {
        if !self.on {
            return Vec::new();
        }
        let open = match self.c.store.open_orders(&self.tenant, &self.site).await {
            Ok(v) => self.too_old(v, now_ms).await,
            Err(e) => {
                warn!(error = %e, "reading the site's open deployment orders failed; they go down on the next connection");
                return Vec::new();
            }
        };
        if !open.is_empty() {
            info!(
                orders = open.len(),
                "sending the site its open deployment orders"
            );
            self.c.metrics.deploy_orders_sent.inc_by(open.len() as u64);
        }
        for o in &open {
            self.sent.sent(&o.id, now_ms);
        }
        open.chunks(ORDERS_PER_FRAME)
            .map(|c| CentralFrame::DeployOrders(c.iter().map(|o| o.wire()).collect()))
            .collect()
    }

    /// An order the API just stored for this site.
    pub async fn on_order(&mut self, id: &str, now_ms: u64) -> Option<CentralFrame> {
        if !self.on {
            return None;
        }
        let o = self.c.store.order(&self.tenant, id).await.ok()??;
        if !o.sites.contains(&self.site) {
            return None;
        }
        let o = self.too_old(vec![o], now_ms).await.pop()?;
        self.sent.sent(id, now_ms);
        self.c.metrics.deploy_orders_sent.inc();
        Some(CentralFrame::DeployOrders(vec![o.wire()]))
    }

    /// Orders sent and not acknowledged in time (still open).
    pub async fn resends(&mut self, now_ms: u64) -> Vec<CentralFrame> {
        let due = self.sent.due(now_ms);
        if due.is_empty() {
            return Vec::new();
        }
        let open = match self.c.store.open_orders(&self.tenant, &self.site).await {
            Ok(v) => v,
            Err(_) => return Vec::new(),
        };
        let v: Vec<_> = open
            .into_iter()
            .filter(|o| due.contains(&o.id))
            .map(|o| o.wire())
            .collect();
        for id in due.iter().filter(|id| !v.iter().any(|o| &o.id == *id)) {
            self.sent.acked(id);
        }
        if v.is_empty() {
            return Vec::new();
        }
        self.c.metrics.deploy_orders_resent.inc_by(v.len() as u64);
        vec![CentralFrame::DeployOrders(v)]
    }

    /// `orders` without those the site's protocol is too old for: each
    /// of those is recorded refused for this site, with the reason (the
    /// site would drop their options silently).
    async fn too_old(&mut self, orders: Vec<OrderRecord>, now_ms: u64) -> Vec<OrderRecord> {
        let mut keep = Vec::with_capacity(orders.len());
        for o in orders {
            match crate::deploy::too_old(&o.kind, &self.site, self.version) {
                None => keep.push(o),
                Some(why) => {
                    info!(order = %o.id, reason = %why, "a deployment order is refused for an older site");
                    self.on_ack(
                        DeployAck {
                            id: o.id.clone(),
                            refused: Some(why),
                        },
                        now_ms,
                    )
                    .await;
                }
            }
        }
        keep
    }

    pub fn next_resend(&self) -> Option<u64> {
        self.sent.next_due()
    }

    /// The site applied (or refused) an order.
    pub async fn on_ack(&mut self, a: DeployAck, now_ms: u64) {
        self.sent.acked(&a.id);
        match self
            .c
            .store
            .acknowledge_order(&self.tenant, &self.site, &a, now_ms)
            .await
        {
            Ok(Some(d)) => {
                match &d.reason {
                    None => {
                        self.c.metrics.deploy_orders_acked.inc();
                    }
                    Some(r) => {
                        self.c.metrics.deploy_orders_site_refused.inc();
                        info!(order = %d.order, reason = %r, "the site refused a deployment order");
                    }
                };
            }
            Ok(None) => {}
            Err(e) => {
                warn!(order = %a.id, error = %e, "storing a site's deployment acknowledgement failed; the order goes down again")
            }
        }
    }

    /// A site's devices' approval decisions (protocol 9; no answer: the
    /// site sends them again on its next stream). Stored newest first
    /// wins; a device id that is not 16 hex digits is dropped, counted.
    pub async fn on_decisions(
        &mut self,
        v: Vec<outpost_uplink::deploy_link::DeviceDecisions>,
        now_ms: u64,
    ) {
        let (ok, bad): (Vec<_>, Vec<_>) = v
            .into_iter()
            .partition(|d| d.device.len() == 16 && d.device.bytes().all(|b| b.is_ascii_hexdigit()));
        if !bad.is_empty() {
            self.c.metrics.decisions_ignored.inc_by(bad.len() as u64);
        }
        let recs: Vec<crate::deploy::DecisionsRecord> = ok
            .into_iter()
            .map(|d| crate::deploy::DecisionsRecord {
                tenant: self.tenant.clone(),
                site: self.site.clone(),
                customer: self.customer.clone(),
                received_ms: now_ms,
                decisions: d,
            })
            .collect();
        match self.c.store.put_decisions(&recs).await {
            Ok(n) => {
                self.c.metrics.decisions_stored.inc_by(n as u64);
                self.c
                    .metrics
                    .decisions_ignored
                    .inc_by((recs.len() - n) as u64);
            }
            Err(e) => {
                warn!(devices = recs.len(), error = %e, "storing a site's approval decisions failed; they come again on its next stream")
            }
        }
    }

    /// A site's progress report; the acknowledgement (`None`: not stored,
    /// the site reports again).
    pub async fn on_progress(&mut self, p: DeployProgress, now_ms: u64) -> Option<CentralFrame> {
        let rec = SiteDeploymentRecord::of(&self.tenant, &self.site, &self.customer, &p, now_ms);
        match self.c.store.put_site_deployment(&rec).await {
            Ok(stored) => {
                if stored {
                    self.c.metrics.deploy_progress_stored.inc();
                    // Open deployment pages of its customer read themselves again.
                    crate::console::publish_commands(&self.c.live, &self.tenant, &self.customer);
                } else {
                    self.c.metrics.deploy_progress_ignored.inc();
                }
                Some(CentralFrame::DeployProgressAck(DeployProgressAck {
                    deployment: p.deployment,
                    updated_at_ms: p.updated_at_ms,
                }))
            }
            Err(e) => {
                warn!(deployment = %p.deployment, error = %e, "storing a site's deployment progress failed; it comes again");
                None
            }
        }
    }
}
