//! Central's `/api/v1/approvals`, `/api/v1/approval-rules` and
//! `/api/v1/deployments`: orders for the sites of a tenant and the
//! progress they report. Admins approve, add rules, create and abort;
//! technicians pause, resume and roll back; every role reads. Customer
//! scopes apply (a site of another customer is 404, an order is seen only
//! by who sees all its sites); another tenant's ids are 404. A connected
//! site below uplink protocol 5 is refused (409, naming it and its
//! version); an offline one gets its orders when it connects.
//!
//! The deployment list is read by page (newest first, a cursor, a
//! total) and a deployment by its id: the store's
//! [`crate::store::DeployStore::deployment_page`],
//! `deployment_orders`, `order_deliveries` and `deployment_progress`,
//! never every order, delivery and report of the tenant per request.
//!
//! This module only translates HTTP; records and rules are
//! [`crate::deploy`], storage [`crate::store::DeployStore`], delivery
//! [`crate::deploy_link`]. Bodies of the site's own API (a rule, a
//! deployment's options, an action's body) are forwarded as JSON: the
//! site checks them and refuses with the reason, shown per site.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use outpost_proto::SiteId;
use outpost_uplink::deploy_link::DeployOrderKind;
use outpost_uplink::wire::DEPLOY_PROTOCOL_VERSION;
use outpost_web::{Json, Path, Query};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::Central;
use crate::api::{ApiError, require};
use crate::commands::AuditRow;
use crate::deploy::{self, Delivery, DeploymentEntry, OrderRecord, SiteDeploymentRecord};
use crate::model::{Principal, Role, SiteRecord};
use crate::store::{CentralStoreError, DeploymentQuery};

fn internal(e: impl std::fmt::Display + 'static) -> ApiError {
    crate::api::internal_error(e)
}

fn refuse(c: &Central, reason: &str, e: ApiError) -> ApiError {
    c.metrics
        .deploy_refusals
        .get_or_create(&crate::metrics::ReasonLabel {
            reason: reason.into(),
        })
        .inc();
    e
}

/// One site's delivery of an order.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeliveryView {
    pub site: SiteId,
    pub state: String,
    #[serde(default)]
    pub reason: Option<String>,
    #[serde(default)]
    pub done_ms: Option<u64>,
}

/// An order with its deliveries.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OrderView {
    pub id: String,
    pub kind: String,
    pub created_ms: u64,
    pub created_by: String,
    #[serde(default)]
    pub deployment: Option<String>,
    /// The order's content (patch/scope/verdict, rule, action...).
    pub detail: Value,
    pub deliveries: Vec<DeliveryView>,
}

fn detail(k: &DeployOrderKind) -> Value {
    let parse = |s: &str| serde_json::from_str::<Value>(s).unwrap_or(Value::String(s.into()));
    match k {
        DeployOrderKind::Verdict {
            patch,
            scope,
            verdict,
        } => serde_json::json!({"patch": patch, "scope": scope, "verdict": verdict}),
        DeployOrderKind::AddRule { rule_json } => serde_json::json!({"rule": parse(rule_json)}),
        DeployOrderKind::RemoveRule { id } => serde_json::json!({"remove_rule": id}),
        DeployOrderKind::CreateDeployment { request_json } => parse(request_json),
        DeployOrderKind::Act {
            action, body_json, ..
        } => serde_json::json!({"action": action, "body": parse(body_json)}),
        DeployOrderKind::SetTags {
            devices,
            add,
            remove,
        } => serde_json::json!({"devices": devices, "add": add, "remove": remove}),
    }
}

pub(crate) fn order_view(o: &OrderRecord, deliveries: &[Delivery]) -> OrderView {
    OrderView {
        id: o.id.clone(),
        kind: o.kind.label().into(),
        created_ms: o.created_ms,
        created_by: o.created_by.clone(),
        deployment: o.deployment.clone(),
        detail: detail(&o.kind),
        deliveries: deliveries
            .iter()
            .filter(|d| d.order == o.id)
            .map(|d| DeliveryView {
                site: d.site.clone(),
                state: d.state.as_str().into(),
                reason: d.reason.clone(),
                done_ms: d.done_ms,
            })
            .collect(),
    }
}

/// The sites an order goes to: the named ones (each must be the
/// caller's: 404 otherwise) or every site the caller sees; each
/// connected one must speak protocol 5 (409).
async fn target_sites(
    c: &Arc<Central>,
    p: &Principal,
    named: Option<&[SiteId]>,
) -> Result<Vec<SiteRecord>, ApiError> {
    let all = c.store.sites(&p.tenant).await.map_err(internal)?;
    let sites: Vec<SiteRecord> = match named {
        Some(names) if !names.is_empty() => {
            let mut v = Vec::new();
            for n in names {
                let s = all
                    .iter()
                    .find(|s| &s.site_id == n && p.sees_customer(&s.customer))
                    .ok_or_else(|| {
                        refuse(
                            c,
                            "unknown_site",
                            ApiError::NotFound(format!("no site {n}")),
                        )
                    })?;
                if !v.iter().any(|x: &SiteRecord| x.site_id == s.site_id) {
                    v.push(s.clone());
                }
            }
            v
        }
        _ => all
            .into_iter()
            .filter(|s| p.sees_customer(&s.customer))
            .collect(),
    };
    if sites.is_empty() {
        return Err(refuse(
            c,
            "no_site",
            ApiError::NotFound("no site to send it to".into()),
        ));
    }
    for s in &sites {
        if let Some(v) = c.downlinks.version(&p.tenant, &s.site_id)
            && v < DEPLOY_PROTOCOL_VERSION
        {
            return Err(refuse(
                c,
                "protocol",
                ApiError::Conflict(format!(
                    "site {} speaks uplink protocol {v}: deployments from central need protocol {DEPLOY_PROTOCOL_VERSION} (upgrade its appliance)",
                    s.site_id
                )),
            ));
        }
    }
    Ok(sites)
}

/// Stores an order for `sites` and pushes it to the connected ones (also
/// [`crate::api_tags`]'s path).
pub(crate) async fn send_order(
    c: &Arc<Central>,
    p: &Principal,
    sites: &[SiteRecord],
    kind: DeployOrderKind,
    deployment: Option<String>,
    action: &str,
) -> Result<OrderView, ApiError> {
    let now = crate::now_ms();
    let mut customers: Vec<_> = sites.iter().map(|s| s.customer.clone()).collect();
    customers.sort();
    customers.dedup();
    let o = OrderRecord {
        tenant: p.tenant.clone(),
        id: deploy::new_order_id(),
        created_ms: now,
        created_by: p.name.clone(),
        deployment,
        sites: sites.iter().map(|s| s.site_id.clone()).collect(),
        customers,
        kind,
    };
    let deliveries: Vec<Delivery> = o.sites.iter().map(|s| Delivery::queued(&o, s)).collect();
    let audit = AuditRow {
        at_ms: now,
        tenant: p.tenant.clone(),
        actor: p.name.clone(),
        action: action.into(),
        target: o.deployment.clone().unwrap_or_else(|| o.id.clone()),
        detail: format!(
            "{} to {}",
            detail(&o.kind),
            o.sites
                .iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>()
                .join(",")
        ),
    };
    c.store
        .create_order(&o, &deliveries, &audit)
        .await
        .map_err(internal)?;
    for s in &o.sites {
        c.downlinks.push(
            &p.tenant,
            s,
            crate::downlink::Down::DeployOrder(o.id.clone()),
        );
    }
    Ok(order_view(&o, &deliveries))
}

pub(crate) async fn visible_orders(
    c: &Arc<Central>,
    p: &Principal,
) -> Result<(Vec<OrderRecord>, Vec<Delivery>), ApiError> {
    let orders = c.store.orders(&p.tenant).await.map_err(internal)?;
    let deliveries = c.store.deliveries(&p.tenant).await.map_err(internal)?;
    Ok((
        orders
            .into_iter()
            .filter(|o| deploy::visible(p, o))
            .collect(),
        deliveries,
    ))
}

// --------------------------------------------------------------- approvals

/// Body of `POST /api/v1/approvals` (the site's plus `sites`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerdictRequest {
    /// `PKG=VERSION`.
    pub patch: String,
    /// `tenant` (default), `customer:C`, `tag:T`, `device:ID`.
    #[serde(default)]
    pub scope: Option<String>,
    /// `approve` or `decline`.
    pub verdict: String,
    /// Default: every site the caller sees.
    #[serde(default)]
    pub sites: Option<Vec<SiteId>>,
}

fn check_patch(s: &str) -> Result<(), ApiError> {
    match s.split_once('=') {
        Some((p, v)) if !p.is_empty() && !v.is_empty() => Ok(()),
        _ => Err(ApiError::BadRequest(format!(
            "patch {s:?} is not PKG=VERSION"
        ))),
    }
}

/// `POST /api/v1/approvals`: approve or decline `PKG=VERSION` at sites.
pub async fn set_verdict(
    State(c): State<Arc<Central>>,
    axum::Extension(p): axum::Extension<Principal>,
    Json(req): Json<VerdictRequest>,
) -> Result<(StatusCode, Json<OrderView>), ApiError> {
    Ok((StatusCode::CREATED, Json(verdict_on(&c, &p, req).await?)))
}

/// Approves or declines at sites (the API's and the console's path).
pub(crate) async fn verdict_on(
    c: &Arc<Central>,
    p: &Principal,
    req: VerdictRequest,
) -> Result<OrderView, ApiError> {
    require(p, Role::Admin).map_err(|e| refuse(c, "forbidden", e))?;
    check_patch(&req.patch)?;
    if !matches!(req.verdict.as_str(), "approve" | "decline") {
        return Err(ApiError::BadRequest(format!(
            "verdict {:?}: approve or decline",
            req.verdict
        )));
    }
    let sites = target_sites(c, p, req.sites.as_deref()).await?;
    let action = format!("approval.{}", req.verdict);
    let kind = DeployOrderKind::Verdict {
        patch: req.patch,
        scope: req.scope.unwrap_or_else(|| "tenant".into()),
        verdict: req.verdict,
    };
    send_order(c, p, &sites, kind, None, &action).await
}

/// `GET /api/v1/approvals`: verdicts sent from central.
pub async fn verdicts(
    State(c): State<Arc<Central>>,
    axum::Extension(p): axum::Extension<Principal>,
) -> Result<Json<Vec<OrderView>>, ApiError> {
    let (orders, deliveries) = visible_orders(&c, &p).await?;
    Ok(Json(
        orders
            .iter()
            .filter(|o| matches!(o.kind, DeployOrderKind::Verdict { .. }))
            .map(|o| order_view(o, &deliveries))
            .collect(),
    ))
}

/// Body of `POST /api/v1/approval-rules`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleRequest {
    /// The site's `ApprovalRule` (`id`, `scope`, `rule`).
    pub rule: Value,
    #[serde(default)]
    pub sites: Option<Vec<SiteId>>,
}

fn rule_id(rule: &Value) -> Result<String, ApiError> {
    rule.get("id")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .ok_or_else(|| ApiError::BadRequest("the rule needs an \"id\"".into()))
}

/// `POST /api/v1/approval-rules`.
pub async fn add_rule(
    State(c): State<Arc<Central>>,
    axum::Extension(p): axum::Extension<Principal>,
    Json(req): Json<RuleRequest>,
) -> Result<(StatusCode, Json<OrderView>), ApiError> {
    Ok((StatusCode::CREATED, Json(add_rule_on(&c, &p, req).await?)))
}

/// Sends a rule to sites (the API's and the console's path).
pub(crate) async fn add_rule_on(
    c: &Arc<Central>,
    p: &Principal,
    req: RuleRequest,
) -> Result<OrderView, ApiError> {
    require(p, Role::Admin).map_err(|e| refuse(c, "forbidden", e))?;
    rule_id(&req.rule)?;
    let sites = target_sites(c, p, req.sites.as_deref()).await?;
    let kind = DeployOrderKind::AddRule {
        rule_json: req.rule.to_string(),
    };
    send_order(c, p, &sites, kind, None, "approval.rule.add").await
}

/// A rule added from central and not removed since, at one site or more
/// the caller sees.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RuleView {
    pub id: String,
    /// As last added to one of `sites`.
    pub rule: Value,
    /// That add (its deliveries: to the sites the caller sees).
    pub added: OrderView,
    /// The sites the caller sees where it is live: sent there by an add
    /// (not refused) and not removed since, by anyone. Adds of one id to
    /// different sites accumulate; a removal ends it only where it went.
    pub sites: Vec<SiteId>,
}

pub(crate) async fn live_rules(c: &Arc<Central>, p: &Principal) -> Result<Vec<RuleView>, ApiError> {
    // Every order of the tenant: a removal by a user who sees more (or
    // other) customers than the caller still ends the rule where it went.
    let orders = c.store.orders(&p.tenant).await.map_err(internal)?;
    let deliveries = c.store.deliveries(&p.tenant).await.map_err(internal)?;
    let seen: std::collections::BTreeSet<SiteId> = c
        .store
        .sites(&p.tenant)
        .await
        .map_err(internal)?
        .into_iter()
        .filter(|s| p.sees_customer(&s.customer))
        .map(|s| s.site_id)
        .collect();
    let refused: std::collections::BTreeSet<(&str, &SiteId)> = deliveries
        .iter()
        .filter(|d| d.state == crate::deploy::DeliveryState::Refused)
        .map(|d| (d.order.as_str(), &d.site))
        .collect();
    // Rule id → site → the add order live there. Orders come oldest first.
    let mut live: BTreeMap<String, BTreeMap<SiteId, usize>> = BTreeMap::new();
    for (i, o) in orders.iter().enumerate() {
        match &o.kind {
            DeployOrderKind::AddRule { rule_json } => {
                let rule: Value = serde_json::from_str(rule_json).unwrap_or(Value::Null);
                let Ok(id) = rule_id(&rule) else { continue };
                let at = live.entry(id).or_default();
                for s in &o.sites {
                    if !refused.contains(&(o.id.as_str(), s)) {
                        at.insert(s.clone(), i);
                    }
                }
            }
            DeployOrderKind::RemoveRule { id } => {
                if let Some(at) = live.get_mut(id) {
                    for s in &o.sites {
                        at.remove(s);
                    }
                }
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    for (id, at) in live {
        let sites: Vec<SiteId> = at.keys().filter(|s| seen.contains(*s)).cloned().collect();
        let Some(last) = at
            .iter()
            .filter(|(s, _)| seen.contains(*s))
            .map(|(_, i)| *i)
            .max()
        else {
            continue;
        };
        let o = &orders[last];
        let DeployOrderKind::AddRule { rule_json } = &o.kind else {
            continue;
        };
        let mut added = order_view(o, &deliveries);
        added.deliveries.retain(|d| seen.contains(&d.site));
        out.push(RuleView {
            id,
            rule: serde_json::from_str(rule_json).unwrap_or(Value::Null),
            added,
            sites,
        });
    }
    Ok(out)
}

/// `GET /api/v1/approval-rules`: the rules added from central.
pub async fn rules(
    State(c): State<Arc<Central>>,
    axum::Extension(p): axum::Extension<Principal>,
) -> Result<Json<Vec<RuleView>>, ApiError> {
    Ok(Json(live_rules(&c, &p).await?))
}

/// `DELETE /api/v1/approval-rules/{id}`: removed at every site where it is
/// live.
pub async fn remove_rule(
    State(c): State<Arc<Central>>,
    axum::Extension(p): axum::Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Json<OrderView>, ApiError> {
    Ok(Json(remove_rule_on(&c, &p, id).await?))
}

/// Removes a rule from central at the sites it was sent to (the API's
/// and the console's path).
pub(crate) async fn remove_rule_on(
    c: &Arc<Central>,
    p: &Principal,
    id: String,
) -> Result<OrderView, ApiError> {
    require(p, Role::Admin).map_err(|e| refuse(c, "forbidden", e))?;
    let rule = live_rules(c, p)
        .await?
        .into_iter()
        .find(|r| r.id == id)
        .ok_or_else(|| ApiError::NotFound(format!("no approval rule {id} from central")))?;
    // Every site where it is live, whichever add sent it there.
    let sites = target_sites(c, p, Some(&rule.sites)).await?;
    let kind = DeployOrderKind::RemoveRule { id };
    send_order(c, p, &sites, kind, None, "approval.rule.remove").await
}

// ------------------------------------------------------------- deployments

/// Body of `POST /api/v1/deployments`: the site's create request
/// (`target`, `patches`, `security_only`, `stages`, `gate`,
/// `auto_rollback_failed_pct`, `install_deadline_ms`, `window`, and the
/// install options `reboot`, `pre_script`, `post_script`, `snapshot`:
/// sites from protocol 8) plus `sites` (default: every site the caller
/// sees).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreateDeployment {
    #[serde(default)]
    pub sites: Option<Vec<SiteId>>,
    #[serde(flatten)]
    pub request: serde_json::Map<String, Value>,
}

/// One site of a deployment: its delivery and the progress it reported.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SiteProgress {
    pub site: SiteId,
    /// Delivery of the creation (`queued`, `delivered`, `refused`).
    pub delivery: String,
    #[serde(default)]
    pub reason: Option<String>,
    /// Site phase (`running`, `paused`, `completed`...), once reported.
    #[serde(default)]
    pub phase: Option<String>,
    #[serde(default)]
    pub stage: Option<u32>,
    #[serde(default)]
    pub stages: Option<u32>,
    #[serde(default)]
    pub devices: Option<u32>,
    #[serde(default)]
    pub succeeded: Option<u32>,
    #[serde(default)]
    pub failed: Option<u32>,
    /// Gate figures and state per stage.
    #[serde(default)]
    pub gates: Value,
    /// Devices that failed, with the reason.
    #[serde(default)]
    pub failures: Vec<Value>,
    /// The install options the site runs it with (reboot, scripts with
    /// their versions, snapshot), once reported (sites from protocol 8).
    #[serde(default)]
    pub options: Value,
    /// Who did what to it at the site (`show` only): create with its
    /// options, pause, resume, abort, rollback, with the actor
    /// (`NAME@central` for central's orders).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audit: Option<Value>,
    /// Every device (`show` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_results: Option<Value>,
    #[serde(default)]
    pub updated_at_ms: Option<u64>,
}

/// One deployment at central: created there (`origin` `central`, over
/// its sites) or mirrored from a site (`site`, read-only).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeploymentView {
    pub id: String,
    pub origin: String,
    #[serde(default)]
    pub created_ms: Option<u64>,
    #[serde(default)]
    pub created_by: Option<String>,
    /// The request as sent (central ones).
    #[serde(default)]
    pub request: Value,
    pub sites: Vec<SiteProgress>,
    /// Actions sent from central (`show` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actions: Option<Vec<OrderView>>,
}

fn progress(
    site: &SiteId,
    delivery: Option<&Delivery>,
    rec: Option<&SiteDeploymentRecord>,
    full: bool,
) -> SiteProgress {
    let view: Value = rec
        .and_then(|r| serde_json::from_str(&r.view_json).ok())
        .unwrap_or(Value::Null);
    let sum = &view["summary"];
    let num = |k: &str| sum[k].as_u64().map(|v| v as u32);
    let devices = view["devices"].as_array().cloned().unwrap_or_default();
    let failures = devices
        .iter()
        .filter(|d| {
            matches!(
                d["state"].as_str(),
                Some("failed" | "rollback_failed" | "rolled_back")
            )
        })
        .cloned()
        .collect();
    SiteProgress {
        site: site.clone(),
        delivery: delivery
            .map(|d| d.state.as_str().to_string())
            .unwrap_or_else(|| "site".into()),
        reason: delivery.and_then(|d| d.reason.clone()),
        phase: sum["phase"].as_str().map(str::to_string),
        stage: num("stage"),
        stages: num("stages"),
        devices: num("devices"),
        succeeded: num("succeeded"),
        failed: num("failed"),
        gates: view["stages"].clone(),
        failures,
        options: sum["options"].clone(),
        audit: full.then(|| view["audit"].clone()).filter(|a| !a.is_null()),
        device_results: full.then_some(Value::Array(devices)),
        updated_at_ms: rec.map(|r| r.updated_at_ms),
    }
}

/// The view of central's deployment `o` creates (`None` for another
/// order), with its sites' deliveries and reports among those given.
fn central_view(
    o: &OrderRecord,
    deliveries: &[Delivery],
    recs: &[SiteDeploymentRecord],
    full: bool,
    actions: Option<Vec<OrderView>>,
) -> Option<DeploymentView> {
    let (DeployOrderKind::CreateDeployment { request_json }, Some(dep)) = (&o.kind, &o.deployment)
    else {
        return None;
    };
    let sites = o
        .sites
        .iter()
        .map(|s| {
            let d = deliveries.iter().find(|d| d.order == o.id && &d.site == s);
            let r = recs.iter().find(|r| &r.site == s && &r.deployment == dep);
            progress(s, d, r, full)
        })
        .collect();
    Some(DeploymentView {
        id: dep.clone(),
        origin: "central".into(),
        created_ms: Some(o.created_ms),
        created_by: Some(o.created_by.clone()),
        request: serde_json::from_str(request_json).unwrap_or(Value::Null),
        sites,
        actions,
    })
}

/// The view of a deployment made at a site, from its report.
fn site_view(r: &SiteDeploymentRecord, full: bool) -> DeploymentView {
    let view: Value = serde_json::from_str(&r.view_json).unwrap_or(Value::Null);
    DeploymentView {
        id: r.deployment.clone(),
        origin: "site".into(),
        created_ms: view["summary"]["created_at_ms"].as_u64(),
        created_by: view["summary"]["created_by"].as_str().map(str::to_string),
        request: Value::Null,
        sites: vec![progress(&r.site, None, Some(r), full)],
        actions: None,
    }
}

/// The views of a page of the list, in its order: the create orders,
/// their deliveries and the deployments' reports in three reads (by id,
/// never the tenant's other orders and reports).
async fn views_of(
    c: &Arc<Central>,
    p: &Principal,
    entries: &[DeploymentEntry],
) -> Result<Vec<DeploymentView>, ApiError> {
    if entries.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<String> = entries.iter().filter_map(|e| e.order.clone()).collect();
    let creates: Vec<OrderRecord> = if ids.is_empty() {
        Vec::new()
    } else {
        c.store
            .orders_by_id(&p.tenant, &ids)
            .await
            .map_err(internal)?
            .into_iter()
            .filter(|o| deploy::visible(p, o))
            .collect()
    };
    let deliveries = if creates.is_empty() {
        Vec::new()
    } else {
        c.store
            .order_deliveries(&p.tenant, &creates)
            .await
            .map_err(internal)?
    };
    let deps: Vec<String> = entries.iter().map(|e| e.id.clone()).collect();
    let recs: Vec<SiteDeploymentRecord> = c
        .store
        .deployment_progress(&p.tenant, &deps)
        .await
        .map_err(internal)?
        .into_iter()
        .filter(|r| p.sees_customer(&r.customer))
        .collect();
    Ok(entries
        .iter()
        .filter_map(|e| match (&e.order, &e.site) {
            (Some(order), _) => creates
                .iter()
                .find(|o| &o.id == order)
                .and_then(|o| central_view(o, &deliveries, &recs, false, None)),
            (None, Some(site)) => recs
                .iter()
                .find(|r| &r.site == site && r.deployment == e.id && !r.from_central)
                .map(|r| site_view(r, false)),
            (None, None) => None,
        })
        .collect())
}

/// Central's deployment `dep` with per-device results and the actions
/// sent (`None` if `p` sees no such deployment of central's): its orders,
/// their deliveries and its reports, read by its id.
pub(crate) async fn central_view_of(
    c: &Arc<Central>,
    p: &Principal,
    dep: &str,
) -> Result<Option<DeploymentView>, ApiError> {
    let orders: Vec<OrderRecord> = c
        .store
        .deployment_orders(&p.tenant, dep)
        .await
        .map_err(internal)?
        .into_iter()
        .filter(|o| deploy::visible(p, o))
        .collect();
    let Some(create) = orders
        .iter()
        .find(|o| matches!(o.kind, DeployOrderKind::CreateDeployment { .. }))
    else {
        return Ok(None);
    };
    let deliveries = c
        .store
        .order_deliveries(&p.tenant, &orders)
        .await
        .map_err(internal)?;
    let recs: Vec<SiteDeploymentRecord> = c
        .store
        .deployment_progress(&p.tenant, &[dep.to_string()])
        .await
        .map_err(internal)?
        .into_iter()
        .filter(|r| p.sees_customer(&r.customer))
        .collect();
    let actions = orders
        .iter()
        .filter(|a| matches!(a.kind, DeployOrderKind::Act { .. }))
        .map(|a| order_view(a, &deliveries))
        .collect();
    Ok(central_view(
        create,
        &deliveries,
        &recs,
        true,
        Some(actions),
    ))
}

/// Deployment `dep` made at a site (at `site` when given; else the
/// first site, by id, reporting one of that id), with per-device
/// results; `None` if `p` sees none.
pub(crate) async fn site_view_of(
    c: &Arc<Central>,
    p: &Principal,
    dep: &str,
    site: Option<&SiteId>,
) -> Result<Option<DeploymentView>, ApiError> {
    Ok(c.store
        .deployment_progress(&p.tenant, &[dep.to_string()])
        .await
        .map_err(internal)?
        .iter()
        .filter(|r| {
            !r.from_central && p.sees_customer(&r.customer) && site.is_none_or(|s| &r.site == s)
        })
        .min_by(|a, b| a.site.cmp(&b.site))
        .map(|r| site_view(r, true)))
}

/// Every deployment `p` sees, in the order this list always had
/// (central's by creation, then the sites' by site and id): the list's
/// pages read one after another (`GET /api/v1/deployments` without
/// `limit` or `after`).
pub(crate) async fn all_views(
    c: &Arc<Central>,
    p: &Principal,
) -> Result<Vec<DeploymentView>, ApiError> {
    let mut entries: Vec<DeploymentEntry> = Vec::new();
    let mut after = None;
    loop {
        let page = c
            .store
            .deployment_page(
                &p.tenant,
                &DeploymentQuery {
                    customers_allowed: p.customers.clone(),
                    after,
                    limit: 1000,
                },
            )
            .await
            .map_err(internal)?;
        entries.extend(page.items);
        match page.next {
            Some(n) => after = Some(n),
            None => break,
        }
    }
    entries.sort_by(|a, b| match (&a.site, &b.site) {
        (None, None) => (a.created_ms, &a.order).cmp(&(b.created_ms, &b.order)),
        (None, Some(_)) => std::cmp::Ordering::Less,
        (Some(_), None) => std::cmp::Ordering::Greater,
        (Some(x), Some(y)) => (x, &a.id).cmp(&(y, &b.id)),
    });
    let mut out = Vec::with_capacity(entries.len());
    for chunk in entries.chunks(500) {
        out.extend(views_of(c, p, chunk).await?);
    }
    Ok(out)
}

/// Query of `GET /api/v1/deployments`: with `limit` or `after`, one page
/// ([`DeploymentList`]); without, the array of every deployment.
#[derive(Debug, Default, Deserialize)]
pub struct ListQuery {
    /// The `next` of the previous page.
    #[serde(default)]
    pub after: Option<String>,
    /// Deployments per page (default 50, at most 500).
    #[serde(default)]
    pub limit: Option<usize>,
}

/// One page of the deployment list, newest first.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeploymentList {
    pub deployments: Vec<DeploymentView>,
    /// Pass as `after` for the next page (`null` on the last one).
    pub next: Option<String>,
    /// Deployments the caller sees (all pages), exact unless `total_more`.
    pub total: u64,
    /// More than `total` (the count stopped at 10,000).
    pub total_more: bool,
    /// The page size used.
    pub limit: usize,
}

/// One page of the deployments `p` sees, newest first (the API's and
/// the console's list).
pub(crate) async fn deployment_list(
    c: &Arc<Central>,
    p: &Principal,
    after: Option<String>,
    limit: Option<usize>,
) -> Result<DeploymentList, ApiError> {
    let limit = outpost_web::limit(limit, 50, 500)?;
    let page = c
        .store
        .deployment_page(
            &p.tenant,
            &DeploymentQuery {
                customers_allowed: p.customers.clone(),
                after,
                limit,
            },
        )
        .await
        .map_err(|e| match e {
            CentralStoreError::InvalidCursor(m) => ApiError::BadRequest(format!("after: {m}")),
            e => internal(e),
        })?;
    Ok(DeploymentList {
        deployments: views_of(c, p, &page.items).await?,
        next: page.next,
        total: page.total,
        total_more: page.total_more,
        limit,
    })
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SiteQuery {
    /// A site's own deployment (mirror): its site.
    #[serde(default)]
    pub site: Option<SiteId>,
}

/// `GET /api/v1/deployments[?limit=N&after=CURSOR]`: with `limit` or
/// `after`, one page newest first ([`DeploymentList`]); without, every
/// deployment across the caller's sites (the array it always answered).
pub async fn list(
    State(c): State<Arc<Central>>,
    axum::Extension(p): axum::Extension<Principal>,
    Query(q): Query<ListQuery>,
) -> Result<axum::response::Response, ApiError> {
    use axum::response::IntoResponse;
    if q.after.is_none() && q.limit.is_none() {
        return Ok(Json(all_views(&c, &p).await?).into_response());
    }
    Ok(Json(deployment_list(&c, &p, q.after, q.limit).await?).into_response())
}

/// `GET /api/v1/deployments/{id}[?site=S]`: with per-device results.
pub async fn show(
    State(c): State<Arc<Central>>,
    axum::Extension(p): axum::Extension<Principal>,
    Path(id): Path<String>,
    Query(q): Query<SiteQuery>,
) -> Result<Json<DeploymentView>, ApiError> {
    let found = match central_view_of(&c, &p, &id).await? {
        // A site's deployment never shadows central's of the same id.
        Some(d) => Some(d).filter(|d| {
            q.site
                .as_ref()
                .is_none_or(|s| d.sites.iter().any(|x| &x.site == s))
        }),
        None => site_view_of(&c, &p, &id, q.site.as_ref()).await?,
    };
    found
        .map(Json)
        .ok_or_else(|| ApiError::NotFound(format!("no deployment {id}")))
}

/// The install options of a create request, checked for their shape
/// (each site checks the scripts against its own library).
fn check_options(req: &serde_json::Map<String, Value>) -> Result<(), ApiError> {
    let bad = |k: &str, want: &str| ApiError::BadRequest(format!("\"{k}\" must be {want}"));
    match req.get("reboot") {
        None | Some(Value::Null) => {}
        Some(Value::String(r)) if ["never", "if_required", "always"].contains(&r.as_str()) => {}
        Some(_) => return Err(bad("reboot", "\"never\", \"if_required\" or \"always\"")),
    }
    for k in ["pre_script", "post_script"] {
        match req.get(k) {
            None | Some(Value::Null) => {}
            Some(Value::String(n)) if !n.trim().is_empty() => {}
            Some(_) => return Err(bad(k, "the name of a script of the sites' libraries")),
        }
    }
    match req.get("snapshot") {
        None | Some(Value::Null | Value::Bool(_)) => Ok(()),
        Some(_) => Err(bad("snapshot", "true or false")),
    }
}

/// `POST /api/v1/deployments`: one deployment over the sites (the same
/// id at each).
pub async fn create(
    State(c): State<Arc<Central>>,
    axum::Extension(p): axum::Extension<Principal>,
    Json(req): Json<CreateDeployment>,
) -> Result<(StatusCode, Json<DeploymentView>), ApiError> {
    Ok((StatusCode::CREATED, Json(create_on(&c, &p, req).await?)))
}

/// Creates a deployment over sites (the API's and the console's path).
pub(crate) async fn create_on(
    c: &Arc<Central>,
    p: &Principal,
    req: CreateDeployment,
) -> Result<DeploymentView, ApiError> {
    require(p, Role::Admin).map_err(|e| refuse(c, "forbidden", e))?;
    if !req.request.contains_key("target") {
        return Err(ApiError::BadRequest(
            "\"target\" is required: {\"type\":\"all\"}, {\"type\":\"customer\",\"customer\":C}, {\"type\":\"tag\",\"tag\":T} or {\"type\":\"devices\",\"devices\":[ID]}".into(),
        ));
    }
    if req.request.contains_key("id") || req.request.contains_key("start") {
        return Err(ApiError::BadRequest(
            "\"id\" and \"start\" are central's to set".into(),
        ));
    }
    check_options(&req.request).map_err(|e| refuse(c, "bad_options", e))?;
    let sites = target_sites(c, p, req.sites.as_deref()).await?;
    let dep = deploy::new_deployment_id();
    let mut body = req.request.clone();
    body.insert("id".into(), Value::String(dep.clone()));
    let kind = DeployOrderKind::CreateDeployment {
        request_json: Value::Object(body).to_string(),
    };
    // A connected site too old for the options is refused now (one that
    // is offline is refused on delivery: `crate::deploy_link`).
    for s in &sites {
        if let Some(v) = c.downlinks.version(&p.tenant, &s.site_id)
            && let Some(why) = deploy::too_old(&kind, &s.site_id, v)
        {
            return Err(refuse(c, "protocol", ApiError::Conflict(why)));
        }
    }
    send_order(c, p, &sites, kind, Some(dep.clone()), "deployment.create").await?;
    central_view_of(c, p, &dep)
        .await?
        .ok_or_else(|| internal("the deployment just stored is missing"))
}

/// `POST /api/v1/deployments/{id}/{action}` (pause, resume, abort,
/// rollback; the site's body of that action).
pub async fn act(
    State(c): State<Arc<Central>>,
    axum::Extension(p): axum::Extension<Principal>,
    Path((id, action)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> Result<Json<OrderView>, ApiError> {
    Ok(Json(act_on(&c, &p, id, action, &body).await?))
}

/// Sends an action on a central deployment to its sites (the API's and
/// the console's path).
pub(crate) async fn act_on(
    c: &Arc<Central>,
    p: &Principal,
    id: String,
    action: String,
    body: &[u8],
) -> Result<OrderView, ApiError> {
    let min = match action.as_str() {
        "pause" | "resume" | "rollback" => Role::Technician,
        "abort" => Role::Admin,
        _ => return Err(ApiError::NotFound(format!("no action {action}"))),
    };
    require(p, min).map_err(|e| refuse(c, "forbidden", e))?;
    let orders: Vec<OrderRecord> = c
        .store
        .deployment_orders(&p.tenant, &id)
        .await
        .map_err(internal)?
        .into_iter()
        .filter(|o| deploy::visible(p, o))
        .collect();
    let Some(created) = orders
        .iter()
        .find(|o| matches!(o.kind, DeployOrderKind::CreateDeployment { .. }))
    else {
        let mirrored = c
            .store
            .deployment_progress(&p.tenant, std::slice::from_ref(&id))
            .await
            .map_err(internal)?
            .iter()
            .any(|r| r.deployment == id && p.sees_customer(&r.customer));
        return Err(if mirrored {
            ApiError::Conflict(format!(
                "deployment {id} was created at its site: act on it there"
            ))
        } else {
            ApiError::NotFound(format!("no deployment {id}"))
        });
    };
    let body: Value = if body.iter().all(u8::is_ascii_whitespace) {
        Value::Object(Default::default())
    } else {
        serde_json::from_slice(body)
            .map_err(|e| ApiError::BadRequest(format!("the body is not JSON: {e}")))?
    };
    if !body.is_object() {
        return Err(ApiError::BadRequest(
            "the body must be a JSON object".into(),
        ));
    }
    if action == "rollback" && body.get("scope").is_none() {
        return Err(ApiError::BadRequest(
            "rollback needs {\"scope\":\"deployment\"}, {\"scope\":\"stage\",\"stage\":N} or {\"scope\":\"device\",\"device\":ID}".into(),
        ));
    }
    let sites = target_sites(c, p, Some(&created.sites)).await?;
    let kind = DeployOrderKind::Act {
        deployment: id.clone(),
        action: action.clone(),
        body_json: body.to_string(),
    };
    send_order(
        c,
        p,
        &sites,
        kind,
        Some(id),
        &format!("deployment.{action}"),
    )
    .await
}
