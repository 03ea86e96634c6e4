//! Patch deployments from central (issue 15, "From central"): the orders
//! central sends sites (approve/decline, approval rules, deployments and
//! the actions on them), their delivery to each site, and the progress
//! each site reports back.
//!
//! This module owns the records and their pure rules (who sees an order,
//! how an acknowledgement moves a delivery, which progress report is
//! newer, what goes down after `Welcome`). Storage is
//! [`crate::store::DeployStore`]; the HTTP mapping is
//! [`crate::api_deploy`]; the site stream's part is
//! [`crate::deploy_link`]. The wire types are
//! `outpost_uplink::deploy_link`. It must not touch commands.
//!
//! An order is addressed to one or more sites of a tenant; each site has
//! its own [`Delivery`] (queued → delivered or refused), moved only by
//! that site's acknowledgement. Central's order id is the site's
//! idempotency key, and a deployment's central id is its id at every
//! site, so a re-delivery never creates a second one.

use std::collections::HashMap;

use outpost_proto::{CustomerId, SiteId, TenantId};
use outpost_uplink::deploy_link::{DeployAck, DeployOrder, DeployOrderKind, DeployProgress};
use serde::{Deserialize, Serialize};

use crate::model::Principal;

/// An unacknowledged order goes down again after this long (the stream
/// may have lost it with a connection that did not close).
pub const RESEND_AFTER_MS: u64 = 30_000;

/// One order of central's, addressed to `sites`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OrderRecord {
    pub tenant: TenantId,
    /// `ord-` + 16 hex digits.
    pub id: String,
    pub created_ms: u64,
    /// The central user or token.
    pub created_by: String,
    /// The central deployment the order creates or acts on.
    pub deployment: Option<String>,
    /// The sites it goes to (their customers decide who sees it).
    pub sites: Vec<SiteId>,
    /// The customers of `sites` when it was created.
    pub customers: Vec<CustomerId>,
    pub kind: DeployOrderKind,
}

impl OrderRecord {
    /// Its wire form.
    pub fn wire(&self) -> DeployOrder {
        DeployOrder {
            id: self.id.clone(),
            actor: format!("{}@central", self.created_by),
            kind: self.kind.clone(),
        }
    }
}

/// Where an order stands at one site.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryState {
    /// Waiting at central (site offline, or sent and not acknowledged).
    Queued,
    /// Applied and recorded at the site.
    Delivered,
    /// The site refused it for good (`reason`).
    Refused,
}

impl DeliveryState {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryState::Queued => "queued",
            DeliveryState::Delivered => "delivered",
            DeliveryState::Refused => "refused",
        }
    }
}

/// An order's delivery to one site.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Delivery {
    pub tenant: TenantId,
    pub order: String,
    pub site: SiteId,
    /// The order's creation time (open deliveries go down oldest first).
    pub created_ms: u64,
    pub state: DeliveryState,
    pub reason: Option<String>,
    /// When it left `queued`.
    pub done_ms: Option<u64>,
}

impl Delivery {
    pub fn queued(o: &OrderRecord, site: &SiteId) -> Delivery {
        Delivery {
            tenant: o.tenant.clone(),
            order: o.id.clone(),
            site: site.clone(),
            created_ms: o.created_ms,
            state: DeliveryState::Queued,
            reason: None,
            done_ms: None,
        }
    }

    pub fn is_open(&self) -> bool {
        self.state == DeliveryState::Queued
    }
}

/// The keys of a site create request that name per-deployment install
/// options (protocol 8, `outpost_uplink::wire::DEPLOY_OPTIONS_PROTOCOL_VERSION`).
pub const OPTION_KEYS: &[&str] = &["reboot", "pre_script", "post_script", "snapshot"];

/// The option keys a create request uses (an empty list: any site of the
/// deployment protocol applies it as asked). Pure.
pub fn option_keys(request: &serde_json::Map<String, serde_json::Value>) -> Vec<&'static str> {
    OPTION_KEYS
        .iter()
        .copied()
        .filter(|k| request.get(*k).is_some_and(|v| !v.is_null()))
        .collect()
}

/// The least site protocol that applies `kind` as asked: a creation
/// naming install options needs
/// `outpost_uplink::wire::DEPLOY_OPTIONS_PROTOCOL_VERSION` (an older site
/// would drop them silently); everything else the deployment protocol.
/// Pure.
pub fn needed_protocol(kind: &DeployOrderKind) -> u16 {
    use outpost_uplink::wire::{
        DEPLOY_OPTIONS_PROTOCOL_VERSION, DEPLOY_PROTOCOL_VERSION, TAGS_PROTOCOL_VERSION,
    };
    if let DeployOrderKind::SetTags { .. } = kind {
        // An older site cannot even decode the order.
        return TAGS_PROTOCOL_VERSION;
    }
    if let DeployOrderKind::CreateDeployment { request_json } = kind
        && let Ok(serde_json::Value::Object(m)) = serde_json::from_str(request_json)
        && !option_keys(&m).is_empty()
    {
        return DEPLOY_OPTIONS_PROTOCOL_VERSION;
    }
    DEPLOY_PROTOCOL_VERSION
}

/// Why `kind` is not sent to `site` speaking `version` (`None`: send it).
pub fn too_old(kind: &DeployOrderKind, site: &SiteId, version: u16) -> Option<String> {
    let need = needed_protocol(kind);
    if let DeployOrderKind::SetTags { .. } = kind {
        return (version < need).then(|| {
            format!(
                "site {site} speaks uplink protocol {version}: setting tags from central needs protocol {need} (upgrade its appliance, or tag its devices on the site)"
            )
        });
    }
    (version < need).then(|| {
        format!(
            "site {site} speaks uplink protocol {version}: deployments with install options (reboot, pre_script, post_script, snapshot) need protocol {need} (upgrade its appliance, or create it without options)"
        )
    })
}

/// The delivery after the site's acknowledgement, or `None` when nothing
/// changes (it was acknowledged before: the first answer stands). Pure.
pub fn acknowledge(d: &Delivery, ack: &DeployAck, now_ms: u64) -> Option<Delivery> {
    if !d.is_open() || d.order != ack.id {
        return None;
    }
    let mut n = d.clone();
    n.state = match ack.refused {
        None => DeliveryState::Delivered,
        Some(_) => DeliveryState::Refused,
    };
    n.reason = ack.refused.clone();
    n.done_ms = Some(now_ms);
    Some(n)
}

/// What central holds of one deployment at one site: the site's newest
/// progress report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SiteDeploymentRecord {
    pub tenant: TenantId,
    pub site: SiteId,
    /// The site's customer (visibility).
    pub customer: CustomerId,
    pub deployment: String,
    pub from_central: bool,
    /// The site's time of the state held.
    pub updated_at_ms: u64,
    /// Central's time it was stored.
    pub received_ms: u64,
    /// The site's progress view (JSON).
    pub view_json: String,
}

impl SiteDeploymentRecord {
    pub fn of(
        tenant: &TenantId,
        site: &SiteId,
        customer: &CustomerId,
        p: &DeployProgress,
        now_ms: u64,
    ) -> SiteDeploymentRecord {
        SiteDeploymentRecord {
            tenant: tenant.clone(),
            site: site.clone(),
            customer: customer.clone(),
            deployment: p.deployment.clone(),
            from_central: p.from_central,
            updated_at_ms: p.updated_at_ms,
            received_ms: now_ms,
            view_json: p.view_json.clone(),
        }
    }
}

/// Whether `incoming` replaces `held` (a stale or repeated report never
/// moves a deployment back). Pure.
pub fn newer(held: Option<&SiteDeploymentRecord>, incoming: &SiteDeploymentRecord) -> bool {
    held.is_none_or(|h| incoming.updated_at_ms > h.updated_at_ms)
}

/// Whether `p` sees an order: every customer of its sites.
pub fn visible(p: &Principal, o: &OrderRecord) -> bool {
    p.tenant == o.tenant && o.customers.iter().all(|c| p.sees_customer(c))
}

/// The site's open orders in the order they go down: oldest first (a
/// deployment's creation before its pause), ties by id.
pub fn opening_order(mut open: Vec<OrderRecord>) -> Vec<OrderRecord> {
    open.sort_by(|a, b| (a.created_ms, &a.id).cmp(&(b.created_ms, &b.id)));
    open
}

/// Orders sent on one stream and not yet acknowledged (resend after
/// [`RESEND_AFTER_MS`]).
#[derive(Debug, Default)]
pub struct SentOrders {
    sent: HashMap<String, u64>,
}

impl SentOrders {
    pub fn sent(&mut self, id: &str, now_ms: u64) {
        self.sent.insert(id.to_string(), now_ms);
    }

    pub fn acked(&mut self, id: &str) {
        self.sent.remove(id);
    }

    /// Ids due for a resend at `now_ms` (their clock restarts).
    pub fn due(&mut self, now_ms: u64) -> Vec<String> {
        let mut v: Vec<String> = self
            .sent
            .iter()
            .filter(|(_, at)| now_ms.saturating_sub(**at) >= RESEND_AFTER_MS)
            .map(|(id, _)| id.clone())
            .collect();
        v.sort();
        for id in &v {
            self.sent.insert(id.clone(), now_ms);
        }
        v
    }

    pub fn next_due(&self) -> Option<u64> {
        self.sent.values().min().map(|at| at + RESEND_AFTER_MS)
    }
}

/// What central holds of one device's approval decisions (protocol 9):
/// the site's newest report (which rule decided each missing patch).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DecisionsRecord {
    pub tenant: TenantId,
    pub site: SiteId,
    /// The site's customer (visibility).
    pub customer: CustomerId,
    /// Central's time it was stored.
    pub received_ms: u64,
    pub decisions: outpost_uplink::deploy_link::DeviceDecisions,
}

/// Whether `new` replaces `held`: only a report computed later. Pure.
pub fn newer_decisions(held: Option<&DecisionsRecord>, new: &DecisionsRecord) -> bool {
    held.is_none_or(|h| h.decisions.computed_ms < new.decisions.computed_ms)
}

/// One line of a tenant's deployment list: a deployment created at
/// central (its create order, over the order's sites) or one created at
/// a site (mirrored from its progress reports). Stored beside the
/// records it is derived from (RocksDB: `tenant\0L\0…`; PostgreSQL: key
/// columns of `deploy_orders` and `site_deployments`, schema 15), so a
/// page is read without the tenant's other orders and reports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeploymentEntry {
    /// The deployment's id (the same at every site).
    pub id: String,
    /// Central's creation time, or the site's for one made there.
    pub created_ms: u64,
    /// The site of a deployment made there (`None`: central's).
    pub site: Option<SiteId>,
    /// Central's create order (central's deployments).
    pub order: Option<String>,
    /// Who sees it sees every one of these customers.
    pub customers: Vec<CustomerId>,
}

impl DeploymentEntry {
    /// The entry of a create order (`None` for other orders).
    pub fn of_order(o: &OrderRecord) -> Option<DeploymentEntry> {
        match (&o.kind, &o.deployment) {
            (DeployOrderKind::CreateDeployment { .. }, Some(dep)) => Some(DeploymentEntry {
                id: dep.clone(),
                created_ms: o.created_ms,
                site: None,
                order: Some(o.id.clone()),
                customers: o.customers.clone(),
            }),
            _ => None,
        }
    }

    /// The entry of a deployment made at a site (`None` for the reports
    /// of central's deployments).
    pub fn of_site(r: &SiteDeploymentRecord) -> Option<DeploymentEntry> {
        (!r.from_central).then(|| DeploymentEntry {
            id: r.deployment.clone(),
            created_ms: site_created_ms(&r.view_json),
            site: Some(r.site.clone()),
            order: None,
            customers: vec![r.customer.clone()],
        })
    }

    /// Whether a reader limited to `allowed` customers (empty: all) sees
    /// it: every customer of it.
    pub fn visible_to(&self, allowed: &[CustomerId]) -> bool {
        allowed.is_empty() || self.customers.iter().all(|c| allowed.contains(c))
    }

    /// Its place in the list: newest first, then by id, then by site
    /// (central's sort before a site's of the same id and time).
    pub fn cursor(&self) -> DeploymentCursor {
        DeploymentCursor {
            created_ms: self.created_ms,
            id: self.id.clone(),
            site: self
                .site
                .as_ref()
                .map(|s| s.to_string())
                .unwrap_or_default(),
        }
    }
}

/// The creation time a site reports of its deployment (`summary.created_at_ms`
/// of its progress view; 0 when it has none: listed last).
pub fn site_created_ms(view_json: &str) -> u64 {
    serde_json::from_str::<serde_json::Value>(view_json)
        .ok()
        .and_then(|v| v["summary"]["created_at_ms"].as_u64())
        .unwrap_or(0)
}

/// A position in the deployment list (the `after` of the next page):
/// `CREATED.HEX(ID).HEX(SITE)`, the same on both stores.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct DeploymentCursor {
    pub created_ms: u64,
    pub id: String,
    /// Empty for central's deployments.
    pub site: String,
}

impl DeploymentCursor {
    pub fn encode(&self) -> String {
        fn hex(s: &str) -> String {
            s.bytes().map(|b| format!("{b:02x}")).collect()
        }
        format!("{}.{}.{}", self.created_ms, hex(&self.id), hex(&self.site))
    }

    /// A cursor [`DeploymentCursor::encode`] made, or why not.
    pub fn decode(s: &str) -> Result<DeploymentCursor, String> {
        fn unhex(h: &str) -> Option<String> {
            if !h.len().is_multiple_of(2) || h.len() > 2 * 256 {
                return None;
            }
            let bytes: Option<Vec<u8>> = (0..h.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(h.get(i..i + 2)?, 16).ok())
                .collect();
            String::from_utf8(bytes?).ok()
        }
        let bad = || format!("{s:?} is not a cursor of the deployment list");
        let mut parts = s.split('.');
        let (Some(at), Some(id), Some(site), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(bad());
        };
        Ok(DeploymentCursor {
            created_ms: at.parse().map_err(|_| bad())?,
            id: unhex(id).filter(|i| !i.is_empty()).ok_or_else(bad)?,
            site: unhex(site).ok_or_else(bad)?,
        })
    }

    /// Whether `e` comes after this position (newest first, then id,
    /// then site).
    pub fn before(&self, e: &DeploymentEntry) -> bool {
        let c = e.cursor();
        (std::cmp::Reverse(self.created_ms), &self.id, &self.site)
            < (std::cmp::Reverse(c.created_ms), &c.id, &c.site)
    }
}

/// Most deployments a list counts exactly (`total_more` beyond).
pub const DEPLOYMENT_TOTAL_CAP: u64 = 10_000;

/// A new order id.
pub fn new_order_id() -> String {
    format!("ord-{:016x}", rand::random::<u64>())
}

/// A new central deployment id (the deployment's id at every site).
pub fn new_deployment_id() -> String {
    format!("cdep-{:08x}", rand::random::<u32>())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order(id: &str, at: u64) -> OrderRecord {
        OrderRecord {
            tenant: "msp".into(),
            id: id.into(),
            created_ms: at,
            created_by: "ann".into(),
            deployment: None,
            sites: vec!["s-1".into()],
            customers: vec!["dental".into()],
            kind: DeployOrderKind::RemoveRule { id: "r".into() },
        }
    }

    #[test]
    fn a_deployment_cursor_round_trips_and_orders_newest_first_then_id_then_site() {
        let e = |at: u64, id: &str, site: Option<&str>| DeploymentEntry {
            id: id.into(),
            created_ms: at,
            site: site.map(SiteId::from),
            order: None,
            customers: vec![],
        };
        let c = e(5, "cdep-b", None).cursor();
        assert_eq!(DeploymentCursor::decode(&c.encode()), Ok(c.clone()));
        let odd = e(7, "dep.1 é", Some("s-1\u{7f}")).cursor();
        assert_eq!(DeploymentCursor::decode(&odd.encode()), Ok(odd));
        // After (5, cdep-b, central): older ones, and same time with a
        // greater id or the same id at a site.
        assert!(c.before(&e(4, "a", None)));
        assert!(c.before(&e(5, "cdep-c", None)));
        assert!(c.before(&e(5, "cdep-b", Some("s-1"))));
        assert!(!c.before(&e(5, "cdep-b", None)));
        assert!(!c.before(&e(5, "cdep-a", Some("s-9"))));
        assert!(!c.before(&e(6, "z", None)));
        for bad in [
            "",
            "5",
            "5.zz.",
            "x.6364.",
            "5..",
            "5.6364.00.1",
            "5.636.",
            "5.ff.",
        ] {
            assert!(DeploymentCursor::decode(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn list_entries_come_from_create_orders_and_site_made_deployments_only() {
        let mut o = order("ord-1", 9);
        assert_eq!(DeploymentEntry::of_order(&o), None, "not a creation");
        o.deployment = Some("cdep-1".into());
        o.kind = DeployOrderKind::CreateDeployment {
            request_json: "{}".into(),
        };
        let e = DeploymentEntry::of_order(&o).unwrap();
        assert_eq!(
            (
                e.id.as_str(),
                e.created_ms,
                e.site.is_none(),
                e.order.as_deref()
            ),
            ("cdep-1", 9, true, Some("ord-1"))
        );
        assert!(e.visible_to(&[]) && e.visible_to(&["dental".into(), "vet".into()]));
        assert!(!e.visible_to(&["vet".into()]));
        let mut r = SiteDeploymentRecord {
            tenant: "msp".into(),
            site: "s-1".into(),
            customer: "vet".into(),
            deployment: "dep-1".into(),
            from_central: true,
            updated_at_ms: 5,
            received_ms: 5,
            view_json: r#"{"summary":{"created_at_ms":42}}"#.into(),
        };
        assert_eq!(
            DeploymentEntry::of_site(&r),
            None,
            "central's: listed by its order"
        );
        r.from_central = false;
        let e = DeploymentEntry::of_site(&r).unwrap();
        assert_eq!((e.created_ms, e.site.as_deref()), (42, Some("s-1")));
        assert_eq!(site_created_ms("not json"), 0);
    }

    #[test]
    fn a_creation_with_install_options_needs_protocol_8_and_names_the_site() {
        let site: SiteId = "site-a".into();
        let create = |json: &str| DeployOrderKind::CreateDeployment {
            request_json: json.into(),
        };
        let plain = create(r#"{"id":"cdep-1","target":{"type":"all"}}"#);
        assert_eq!(needed_protocol(&plain), 5);
        assert_eq!(too_old(&plain, &site, 6), None);
        let with = create(r#"{"id":"cdep-1","target":{"type":"all"},"pre_script":"stop-app"}"#);
        assert_eq!(needed_protocol(&with), 8);
        assert_eq!(too_old(&with, &site, 8), None);
        let why = too_old(&with, &site, 6).unwrap();
        assert!(
            why.contains("site site-a speaks uplink protocol 6"),
            "{why}"
        );
        assert!(why.contains("need protocol 8"), "{why}");
        // An explicit null is no option; actions need no new protocol.
        assert_eq!(
            needed_protocol(&create(r#"{"target":{"type":"all"},"reboot":null}"#)),
            5
        );
        let pause = DeployOrderKind::Act {
            deployment: "cdep-1".into(),
            action: "pause".into(),
            body_json: "{}".into(),
        };
        assert_eq!(too_old(&pause, &site, 5), None);
    }

    #[test]
    fn a_tag_order_needs_protocol_9_and_an_older_site_is_refused_by_name() {
        let site: SiteId = "site-a".into();
        let tags = DeployOrderKind::SetTags {
            devices: vec!["00000000000000aa".into()],
            add: vec!["web".into()],
            remove: vec![],
        };
        assert_eq!(needed_protocol(&tags), 9);
        assert_eq!(too_old(&tags, &site, 9), None);
        let why = too_old(&tags, &site, 8).unwrap();
        assert!(
            why.contains("site site-a speaks uplink protocol 8"),
            "{why}"
        );
        assert!(why.contains("tags from central needs protocol 9"), "{why}");
    }

    #[test]
    fn the_first_acknowledgement_of_a_delivery_stands() {
        let o = order("ord-1", 1);
        let d = Delivery::queued(&o, &"s-1".into());
        let done = acknowledge(
            &d,
            &DeployAck {
                id: "ord-1".into(),
                refused: None,
            },
            5,
        )
        .unwrap();
        assert_eq!(
            (done.state, done.done_ms),
            (DeliveryState::Delivered, Some(5))
        );
        // A re-delivery answered again (or a late refusal) changes nothing.
        assert_eq!(
            acknowledge(
                &done,
                &DeployAck {
                    id: "ord-1".into(),
                    refused: Some("x".into())
                },
                9
            ),
            None
        );
        let refused = acknowledge(
            &d,
            &DeployAck {
                id: "ord-1".into(),
                refused: Some("unknown patch".into()),
            },
            5,
        )
        .unwrap();
        assert_eq!(refused.state, DeliveryState::Refused);
        assert_eq!(refused.reason.as_deref(), Some("unknown patch"));
    }

    #[test]
    fn a_stale_or_repeated_progress_report_never_replaces_a_newer_one() {
        let rec = |at| SiteDeploymentRecord {
            tenant: "msp".into(),
            site: "s-1".into(),
            customer: "dental".into(),
            deployment: "cdep-1".into(),
            from_central: true,
            updated_at_ms: at,
            received_ms: 0,
            view_json: "{}".into(),
        };
        assert!(newer(None, &rec(5)));
        assert!(newer(Some(&rec(5)), &rec(6)));
        assert!(!newer(Some(&rec(6)), &rec(6)));
        assert!(!newer(Some(&rec(6)), &rec(5)));
    }

    #[test]
    fn a_devices_older_or_repeated_decisions_never_replace_newer_ones() {
        let rec = |at| DecisionsRecord {
            tenant: "msp".into(),
            site: "s-1".into(),
            customer: "dental".into(),
            received_ms: 0,
            decisions: outpost_uplink::deploy_link::DeviceDecisions {
                device: "00000000000000aa".into(),
                computed_ms: at,
                assessed: true,
                rows: vec![],
                unnamed: vec![],
                truncated: 0,
            },
        };
        assert!(newer_decisions(None, &rec(5)));
        assert!(newer_decisions(Some(&rec(5)), &rec(6)));
        assert!(!newer_decisions(Some(&rec(6)), &rec(6)));
        assert!(!newer_decisions(Some(&rec(6)), &rec(5)));
    }

    #[test]
    fn open_orders_go_down_oldest_first_and_unacknowledged_ones_again_after_30_s() {
        let v = opening_order(vec![order("b", 2), order("a", 2), order("c", 1)]);
        let ids: Vec<&str> = v.iter().map(|o| o.id.as_str()).collect();
        assert_eq!(ids, ["c", "a", "b"]);
        let mut s = SentOrders::default();
        s.sent("a", 1_000);
        s.sent("b", 2_000);
        assert_eq!(s.next_due(), Some(31_000));
        assert!(s.due(30_999).is_empty());
        s.acked("b");
        assert_eq!(s.due(31_000), vec!["a".to_string()]);
        assert_eq!(s.next_due(), Some(61_000));
    }

    #[test]
    fn an_order_is_visible_only_to_who_sees_every_customer_of_its_sites() {
        let p = |customers: Vec<&str>, tenant: &str| Principal {
            tenant: tenant.into(),
            role: crate::model::Role::Viewer,
            customers: customers.into_iter().map(Into::into).collect(),
            name: "v".into(),
        };
        let o = order("a", 1);
        assert!(visible(&p(vec![], "msp"), &o));
        assert!(visible(&p(vec!["dental"], "msp"), &o));
        assert!(!visible(&p(vec!["law"], "msp"), &o));
        assert!(!visible(&p(vec![], "other"), &o));
    }
}
