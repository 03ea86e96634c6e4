//! Central's Deployments and Approvals pages of the console: the mapping
//! from [`crate::api_deploy`] (the same orders, deliveries, progress,
//! scope checks and roles as the JSON API) to the console's deployment
//! types. A deployment created at central spans sites (one row, each
//! site's delivery and reported progress beside it); one created at a
//! site is shown read-only under `ID@SITE` (its actions are the site's).
//!
//! Owns no data and no rule: every action goes through the API's order
//! path (`act_on`, `create_on`, `verdict_on`, `add_rule_on`,
//! `remove_rule_on`). It must not touch the deployment store or the
//! site stream.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use outpost_console::deployments::{
    ActionLine, ApprovalsView, DeploymentAction, DeploymentDetail, DeploymentDevice, DeploymentRow,
    NewDeployment, NewRule, RuleRow, SiteLine, StageView, VerdictRequest,
};
use outpost_patch::approval::{ApprovalRule, ApprovalScope, AutoRule, RuleKind, Verdict};
use outpost_proto::SiteId;
use serde_json::{Value, json};

use crate::Central;
use crate::api::{self, ApiError};
use crate::api_deploy::{self, DeploymentView, OrderView, SiteProgress};
use crate::model::Principal;

/// What the Approvals page says where central has no per-device
/// decisions.
pub const DECISIONS_NOTE: &str = "Each site decides per device with the rules it holds: see a device's patch panel, or the site's own console, for which rule decided.";

/// Devices offered by the Approvals page's picker at central (any other
/// one by `?device=SITE/DEVICE`).
pub const DECISION_PICKER_DEVICES: usize = 500;

/// Said when central holds no decisions of the chosen device (yet).
pub const NO_DECISIONS_NOTE: &str = "Central holds no decisions of this device yet: its site sends them once it runs uplink protocol 9 (within seconds of a change).";

/// Adds the picker (`SITE/DEVICE`, label) and `device`'s decisions as its
/// site last sent them (protocol 9) to the Approvals page. A device of a
/// site `p` does not see is 404.
pub async fn with_decisions(
    c: &Arc<Central>,
    p: &Principal,
    a: &mut ApprovalsView,
    picker: Vec<(String, String)>,
    device: Option<&str>,
) -> Result<(), ApiError> {
    a.devices = picker;
    let Some(key) = device.filter(|d| !d.is_empty()) else {
        return Ok(());
    };
    let (site, dev) = key
        .split_once('/')
        .ok_or_else(|| ApiError::BadRequest(format!("{key:?}: name a device as SITE/DEVICE")))?;
    let site_id: outpost_proto::SiteId = site.into();
    crate::api::one_site(c, p, &site_id).await?;
    let row = c
        .store
        .device(&p.tenant, &site_id, dev)
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?
        .ok_or_else(|| ApiError::NotFound(format!("no device {dev} at site {site}")))?;
    let held = c
        .store
        .decisions(&p.tenant, &site_id, dev)
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let mut d = outpost_console::deployments::DeviceDecisions {
        site_id: site.to_string(),
        device: key.to_string(),
        hostname: row.hostname.clone(),
        ..Default::default()
    };
    match held {
        Some(r) => {
            d.assessed = r.decisions.assessed;
            d.rows = r
                .decisions
                .rows
                .iter()
                .map(|x| outpost_console::deployments::DecisionRow {
                    patch: x.patch.clone(),
                    outcome: x.outcome.clone(),
                    rule: x.rule.clone(),
                    explanation: x.explanation.clone(),
                })
                .collect();
            d.unnamed = r.decisions.unnamed.clone();
            a.decisions_note = None;
        }
        None => a.decisions_note = Some(NO_DECISIONS_NOTE.into()),
    }
    if !a.devices.iter().any(|(k, _)| k == key) {
        a.devices.push((key.to_string(), row.hostname));
    }
    a.device = Some(d);
    Ok(())
}

/// Names of the sites `p` sees: id → (name, customer).
async fn names(
    c: &Arc<Central>,
    p: &Principal,
) -> Result<HashMap<SiteId, (String, String)>, ApiError> {
    Ok(api::visible_sites(c, p)
        .await?
        .into_iter()
        .map(|s| (s.site_id.clone(), (s.name.clone(), s.customer.to_string())))
        .collect())
}

fn u(v: &Value) -> u32 {
    v.as_u64().unwrap_or(0) as u32
}

/// `PKG=VERSION` of a patch as JSON (`{"package","version"}` or a string).
fn patch_str(v: &Value) -> String {
    match (v["package"].as_str(), v["version"].as_str()) {
        (Some(p), Some(ver)) => format!("{p}={ver}"),
        _ => v
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| v.to_string()),
    }
}

/// The target of a central request in words.
fn target_label(t: &Value) -> String {
    match t["type"].as_str() {
        Some("all") => "all devices".into(),
        Some("customer") => format!("customer {}", t["customer"].as_str().unwrap_or("?")),
        Some("tag") => format!("tag {}", t["tag"].as_str().unwrap_or("?")),
        Some("devices") => {
            let d: Vec<&str> = t["devices"]
                .as_array()
                .map(|a| a.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            format!("devices {}", d.join(", "))
        }
        _ => t.to_string(),
    }
}

/// The state a deployment over several sites shows: the one of the
/// least advanced site (a site still queued or running keeps it open),
/// in this order. Pure.
pub fn combined_phase(states: &[&str]) -> String {
    const ORDER: [&str; 9] = [
        "rolling_back",
        "running",
        "paused",
        "pending",
        "queued",
        "refused",
        "completed",
        "rolled_back",
        "aborted",
    ];
    if states.is_empty() {
        return "pending".into();
    }
    let best = ORDER
        .iter()
        .find(|o| states.contains(o))
        .copied()
        .unwrap_or(states[0]);
    if best == "queued" {
        "pending".into()
    } else {
        best.into()
    }
}

fn site_line(s: &SiteProgress, names: &HashMap<SiteId, (String, String)>) -> SiteLine {
    let (name, customer) = names
        .get(&s.site)
        .cloned()
        .unwrap_or_else(|| (s.site.to_string(), String::new()));
    SiteLine {
        site_id: s.site.to_string(),
        site_name: name,
        customer,
        delivery: s.delivery.clone(),
        reason: s.reason.clone(),
        phase: s.phase.clone(),
        stage: s.stage,
        stages: s.stages.unwrap_or(0),
        devices: s.devices.unwrap_or(0),
        succeeded: s.succeeded.unwrap_or(0),
        failed: s.failed.unwrap_or(0),
        updated_ms: s.updated_at_ms,
    }
}

/// Stage figures summed over the sites; gates per site when several.
fn stages_of(d: &DeploymentView, names: &HashMap<SiteId, (String, String)>) -> Vec<StageView> {
    let n = d
        .sites
        .iter()
        .filter_map(|s| s.gates.as_array().map(Vec::len))
        .max()
        .unwrap_or(0);
    let many = d.sites.len() > 1;
    (0..n)
        .map(|k| {
            let mut v = StageView {
                stage: k as u32,
                ..Default::default()
            };
            let mut gates = Vec::new();
            for s in &d.sites {
                let g = &s.gates[k];
                if g.is_null() {
                    continue;
                }
                let f = &g["figures"];
                v.devices += u(&f["devices"]);
                v.counted += u(&f["counted"]);
                v.succeeded += u(&f["succeeded"]);
                v.failed += u(&f["failed"]);
                v.in_flight += u(&f["in_flight"]);
                v.waiting += u(&f["waiting"]);
                let gate = g["gate"].as_str().unwrap_or_default();
                gates.push(if many {
                    let name = names
                        .get(&s.site)
                        .map(|x| x.0.clone())
                        .unwrap_or_else(|| s.site.to_string());
                    format!("{name}: {gate}")
                } else {
                    gate.to_string()
                });
            }
            v.gate = gates.join("; ");
            v
        })
        .collect()
}

/// The console's id of a deployment: central's id, or `ID@SITE` for one
/// created at its site.
fn console_id(d: &DeploymentView) -> String {
    match (d.origin.as_str(), d.sites.first()) {
        ("site", Some(s)) => format!("{}@{}", d.id, s.site),
        _ => d.id.clone(),
    }
}

fn row_of(d: &DeploymentView, names: &HashMap<SiteId, (String, String)>) -> DeploymentRow {
    let sites: Vec<SiteLine> = d.sites.iter().map(|s| site_line(s, names)).collect();
    let states: Vec<&str> = sites.iter().map(SiteLine::state).collect();
    let phase = combined_phase(&states);
    let stage = d.sites.iter().filter_map(|s| s.stage).min();
    let stages = stages_of(d, names);
    let target = if d.origin == "site" {
        String::new()
    } else {
        target_label(&d.request["target"])
    };
    let patches: Vec<String> = d.request["patches"]
        .as_array()
        .map(|a| a.iter().map(patch_str).collect())
        .unwrap_or_default();
    let read_only = (d.origin == "site").then(|| {
        let site = sites
            .first()
            .map(|s| s.site_name.clone())
            .unwrap_or_default();
        format!(
            "Created at site {site}: act on it there (its console, or `outpost deployments` on the appliance)."
        )
    });
    DeploymentRow {
        id: console_id(d),
        phase,
        stage,
        stages: sites.iter().map(|s| s.stages).max().unwrap_or(0),
        target,
        patches,
        devices: sites.iter().map(|s| s.devices).sum(),
        succeeded: sites.iter().map(|s| s.succeeded).sum(),
        failed: sites.iter().map(|s| s.failed).sum(),
        current: stage.and_then(|k| stages.get(k as usize).cloned()),
        created_ms: d.created_ms.unwrap_or(0),
        created_by: d.created_by.clone().unwrap_or_default(),
        updated_ms: sites
            .iter()
            .filter_map(|s| s.updated_ms)
            .max()
            .or(d.created_ms)
            .unwrap_or(0),
        sites,
        read_only,
    }
}

/// `delivered 1/2 · queued 1/2`.
fn delivery_summary(o: &OrderView) -> String {
    let mut by: BTreeMap<&str, usize> = BTreeMap::new();
    for d in &o.deliveries {
        *by.entry(d.state.as_str()).or_default() += 1;
    }
    let n = o.deliveries.len();
    by.into_iter()
        .map(|(s, k)| format!("{s} {k}/{n}"))
        .collect::<Vec<_>>()
        .join(" · ")
}

fn action_line(o: &OrderView) -> ActionLine {
    let body = &o.detail["body"];
    let detail = body
        .as_object()
        .map(|m| {
            m.iter()
                .filter(|(_, v)| !v.is_null() && v.as_str() != Some("") && **v != json!(false))
                .map(|(k, v)| match v.as_str() {
                    Some(s) => format!("{k}: {s}"),
                    None => format!("{k}: {v}"),
                })
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default();
    ActionLine {
        action: o.detail["action"].as_str().unwrap_or(&o.kind).to_string(),
        by: o.created_by.clone(),
        at_ms: o.created_ms,
        detail,
        delivery: delivery_summary(o),
    }
}

/// Deployments the console's list shows: the newest (one page of the
/// API's list, not every deployment of the tenant).
pub const CONSOLE_DEPLOYMENTS: usize = 200;

/// The newest [`CONSOLE_DEPLOYMENTS`] deployments `p` sees, newest first.
pub async fn rows(c: &Arc<Central>, p: &Principal) -> Result<Vec<DeploymentRow>, ApiError> {
    let names = names(c, p).await?;
    let mut v: Vec<DeploymentRow> =
        api_deploy::deployment_list(c, p, None, Some(CONSOLE_DEPLOYMENTS))
            .await?
            .deployments
            .iter()
            .map(|d| row_of(d, &names))
            .collect();
    v.sort_by(|a, b| (b.created_ms, &b.id).cmp(&(a.created_ms, &a.id)));
    Ok(v)
}

/// One deployment (`ID` or `ID@SITE`) with its sites, stages, devices
/// and the actions sent from central.
pub async fn detail(
    c: &Arc<Central>,
    p: &Principal,
    id: &str,
) -> Result<DeploymentDetail, ApiError> {
    let (dep, site) = match id.rsplit_once('@') {
        Some((d, s)) => (d, Some(s)),
        None => (id, None),
    };
    let names = names(c, p).await?;
    let d = match site {
        Some(s) => api_deploy::site_view_of(c, p, dep, Some(&SiteId::from(s))).await?,
        None => api_deploy::central_view_of(c, p, dep).await?,
    }
    .ok_or_else(|| ApiError::NotFound(format!("no deployment {id}")))?;
    let row = row_of(&d, &names);
    let mut devices = Vec::new();
    let mut keys = Vec::new();
    for s in &d.sites {
        for r in s
            .device_results
            .as_ref()
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let device = r["device"].as_str().unwrap_or_default().to_string();
            keys.push((s.site.clone(), device.clone()));
            devices.push(DeploymentDevice {
                site_id: s.site.to_string(),
                device,
                hostname: String::new(),
                stage: u(&r["stage"]),
                state: r["state"].as_str().unwrap_or("unknown").to_string(),
                attempt: u(&r["attempt"]),
                reason: r["reason"].as_str().map(str::to_string),
                at_ms: s.updated_at_ms.unwrap_or(0),
            });
        }
    }
    if !keys.is_empty()
        && let Ok(hosts) = c.store.hostnames(&p.tenant, &keys).await
    {
        for (m, h) in devices.iter_mut().zip(hosts) {
            m.hostname = h.unwrap_or_default();
        }
    }
    let actions: Vec<ActionLine> = d.actions.iter().flatten().map(action_line).collect();
    let note = actions
        .last()
        .filter(|a| a.action == "pause" && row.phase == "paused")
        .map(|a| match a.detail.is_empty() {
            true => format!("paused from central by {}", a.by),
            false => format!("paused from central by {} ({})", a.by, a.detail),
        });
    Ok(DeploymentDetail {
        stages: stages_of(&d, &names),
        row,
        note,
        devices,
        actions,
    })
}

/// The site's body of an action.
pub fn action_body(a: &DeploymentAction) -> Value {
    match a {
        DeploymentAction::Pause { note } | DeploymentAction::Abort { note } => {
            json!({ "note": note })
        }
        DeploymentAction::Resume {
            retry_failed,
            force,
            patches,
        } => {
            let mut b = json!({ "retry_failed": retry_failed, "force": force });
            if !patches.is_empty() {
                b["patches"] = patches
                    .iter()
                    .map(|p| outpost_console::deploy_form::patch_json(p))
                    .collect();
            }
            b
        }
        DeploymentAction::Rollback { scope } => scope.json(),
    }
}

/// Pauses, resumes, aborts or rolls back a central deployment through
/// the API's order path (which checks the role and the scope).
pub async fn act(
    c: &Arc<Central>,
    p: &Principal,
    id: &str,
    a: &DeploymentAction,
) -> Result<(), ApiError> {
    if id.contains('@') {
        return Err(ApiError::Conflict(format!(
            "deployment {id} was created at its site: act on it there"
        )));
    }
    let body = action_body(a).to_string();
    api_deploy::act_on(c, p, id.to_string(), a.name().to_string(), body.as_bytes()).await?;
    Ok(())
}

/// The site's create request of the console's form, and the sites it
/// goes to (`None`: every site the caller sees).
pub fn create_request(
    req: &NewDeployment,
    names: &HashMap<SiteId, (String, String)>,
) -> Result<(Value, Option<Vec<SiteId>>), ApiError> {
    let bad = || {
        ApiError::BadRequest(format!(
            "target {:?}: all, customer:C or tag:T (a device is deployed to from its site)",
            req.target
        ))
    };
    let (target, sites) = match req.target.split_once(':') {
        None if req.target.is_empty() || req.target == "all" => (json!({"type": "all"}), None),
        Some(("customer", cu)) if !cu.trim().is_empty() => {
            let cu = cu.trim();
            let mut sites: Vec<SiteId> = names
                .iter()
                .filter(|(_, (_, c))| c == cu)
                .map(|(id, _)| id.clone())
                .collect();
            sites.sort();
            if sites.is_empty() {
                return Err(ApiError::NotFound(format!("no customer {cu}")));
            }
            (json!({"type": "customer", "customer": cu}), Some(sites))
        }
        Some(("tag", t)) if !t.trim().is_empty() => (json!({"type": "tag", "tag": t.trim()}), None),
        _ => return Err(bad()),
    };
    let mut body = json!({ "target": target, "security_only": req.security_only });
    if !req.patches.is_empty() {
        let mut v = Vec::new();
        for p in &req.patches {
            match p.split_once('=') {
                Some((pkg, ver)) if !pkg.is_empty() && !ver.is_empty() => {
                    v.push(json!({"package": pkg, "version": ver}))
                }
                _ => {
                    return Err(ApiError::BadRequest(format!(
                        "patch {p:?} is not PKG=VERSION"
                    )));
                }
            }
        }
        body["patches"] = Value::Array(v);
    }
    if let Value::Object(m) = &mut body {
        m.extend(req.options.json());
    }
    Ok((body, sites))
}

/// Creates a deployment from the console's form (the API's path).
pub async fn create(
    c: &Arc<Central>,
    p: &Principal,
    req: &NewDeployment,
) -> Result<String, ApiError> {
    let names = names(c, p).await?;
    let (body, sites) = create_request(req, &names)?;
    let Value::Object(request) = body else {
        return Err(ApiError::Internal("the request is not an object".into()));
    };
    let v = api_deploy::create_on(c, p, api_deploy::CreateDeployment { sites, request }).await?;
    Ok(v.id)
}

fn scope_of(s: &str, tenant: &str) -> Result<ApprovalScope, ApiError> {
    let s = s.trim();
    let (kind, value) = s.split_once(':').unwrap_or((s, ""));
    let value = value.trim().to_string();
    let need = |v: String| {
        if v.is_empty() {
            Err(ApiError::BadRequest(format!("scope {s:?} needs a value")))
        } else {
            Ok(v)
        }
    };
    match kind {
        "" | "tenant" => Ok(ApprovalScope::Tenant {
            tenant: tenant.to_string(),
        }),
        "customer" => Ok(ApprovalScope::Customer {
            customer: need(value)?,
        }),
        "tag" => Ok(ApprovalScope::Tag { tag: need(value)? }),
        "device" => Ok(ApprovalScope::Device {
            device: need(value)?,
        }),
        _ => Err(ApiError::BadRequest(format!(
            "unknown scope {s:?}: tenant, customer:C, tag:T or device:ID"
        ))),
    }
}

/// The site's rule of the console's form (checked here before it goes
/// to any site).
pub fn rule_of(r: &NewRule, tenant: &str) -> Result<ApprovalRule, ApiError> {
    let min_severity = match r.min_severity.as_deref() {
        None => None,
        Some(s) => Some(
            serde_json::from_value(Value::String(s.to_string()))
                .map_err(|_| ApiError::BadRequest(format!("unknown severity {s:?}")))?,
        ),
    };
    let rule = ApprovalRule {
        id: r.id.trim().to_string(),
        scope: scope_of(&r.scope, tenant)?,
        rule: RuleKind::Auto(AutoRule {
            min_severity,
            security_only: r.security_only,
            delay_days: r.delay_days,
            allow: r.allow.clone(),
            deny: r.deny.clone(),
        }),
    };
    rule.validate()
        .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    Ok(rule)
}

fn rule_row(id: &str, rule: &Value, sent: &OrderView) -> RuleRow {
    let parsed: Option<ApprovalRule> = serde_json::from_value(rule.clone()).ok();
    let sent = format!("by {} · {}", sent.created_by, delivery_summary(sent));
    match parsed {
        Some(ApprovalRule {
            scope,
            rule: RuleKind::Manual { patch, verdict },
            ..
        }) => RuleRow {
            id: id.to_string(),
            scope: scope.to_string(),
            kind: match verdict {
                Verdict::Approve => "approve",
                Verdict::Decline => "decline",
            }
            .into(),
            patch: Some(format!("{}={}", patch.package, patch.version)),
            detail: sent,
        },
        Some(ApprovalRule {
            scope,
            rule: RuleKind::Auto(a),
            ..
        }) => {
            let mut parts = vec![match a.min_severity {
                Some(s) => format!(
                    "severity ≥ {}",
                    serde_json::to_value(s)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_string))
                        .unwrap_or_default()
                ),
                None => "any severity".into(),
            }];
            if a.security_only {
                parts.push("security updates only".into());
            }
            if a.delay_days > 0 {
                parts.push(format!("after {} days", a.delay_days));
            }
            if !a.allow.is_empty() {
                parts.push(format!("only {}", a.allow.join(", ")));
            }
            if !a.deny.is_empty() {
                parts.push(format!("never {}", a.deny.join(", ")));
            }
            parts.push(sent);
            RuleRow {
                id: id.to_string(),
                scope: scope.to_string(),
                kind: "auto".into(),
                patch: None,
                detail: parts.join("; "),
            }
        }
        None => RuleRow {
            id: id.to_string(),
            scope: rule["scope"].to_string(),
            kind: "auto".into(),
            patch: None,
            detail: format!("{rule}; {sent}"),
        },
    }
}

/// The Approvals page: verdicts and rules sent from central (every
/// role reads; admins edit), and the create form's targets.
pub async fn approvals(
    c: &Arc<Central>,
    p: &Principal,
    tags: &[String],
    editable: bool,
) -> Result<ApprovalsView, ApiError> {
    let names = names(c, p).await?;
    let (orders, deliveries) = api_deploy::visible_orders(c, p).await?;
    let mut rules: Vec<RuleRow> = Vec::new();
    for o in &orders {
        if let outpost_uplink::deploy_link::DeployOrderKind::Verdict {
            patch,
            scope,
            verdict,
        } = &o.kind
        {
            let v = api_deploy::order_view(o, &deliveries);
            rules.push(RuleRow {
                id: o.id.clone(),
                scope: scope.clone(),
                kind: verdict.clone(),
                patch: Some(patch.clone()),
                detail: format!("by {} · {}", v.created_by, delivery_summary(&v)),
            });
        }
    }
    let live = api_deploy::live_rules(c, p).await?;
    let removable = live.iter().map(|r| r.id.clone()).collect();
    rules.extend(live.iter().map(|r| rule_row(&r.id, &r.rule, &r.added)));
    let mut customers: Vec<String> = names.values().map(|(_, c)| c.clone()).collect();
    customers.sort();
    customers.dedup();
    let mut targets = vec![("all".to_string(), "all devices".to_string())];
    targets.extend(
        customers
            .iter()
            .map(|c| (format!("customer:{c}"), format!("customer {c}"))),
    );
    targets.extend(
        tags.iter()
            .map(|t| (format!("tag:{t}"), format!("tag {t}"))),
    );
    Ok(ApprovalsView {
        rules,
        devices: vec![],
        device: None,
        targets,
        editable,
        removable,
        decisions_note: Some(DECISIONS_NOTE.into()),
    })
}

/// Approves or declines a patch at every site `p` sees (the API's path).
pub async fn verdict(c: &Arc<Central>, p: &Principal, r: &VerdictRequest) -> Result<(), ApiError> {
    let scope = if r.scope.trim().is_empty() {
        "tenant".to_string()
    } else {
        r.scope.trim().to_string()
    };
    api_deploy::verdict_on(
        c,
        p,
        api_deploy::VerdictRequest {
            patch: r.patch.clone(),
            scope: Some(scope),
            verdict: r.verdict.clone(),
            sites: None,
        },
    )
    .await?;
    Ok(())
}

/// Adds a rule at every site `p` sees (the API's path).
pub async fn add_rule(c: &Arc<Central>, p: &Principal, r: &NewRule) -> Result<(), ApiError> {
    api::require(p, crate::model::Role::Admin)?;
    let rule = rule_of(r, p.tenant.as_str())?;
    let rule = serde_json::to_value(&rule).map_err(|e| ApiError::Internal(e.to_string()))?;
    api_deploy::add_rule_on(c, p, api_deploy::RuleRequest { rule, sites: None }).await?;
    Ok(())
}

/// Removes a rule sent from central (the API's path).
pub async fn remove_rule(c: &Arc<Central>, p: &Principal, id: &str) -> Result<(), ApiError> {
    api_deploy::remove_rule_on(c, p, id.to_string()).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_deployment_over_sites_shows_its_least_advanced_sites_state() {
        assert_eq!(combined_phase(&[]), "pending");
        assert_eq!(combined_phase(&["completed", "running"]), "running");
        assert_eq!(combined_phase(&["completed", "queued"]), "pending");
        assert_eq!(combined_phase(&["paused", "completed"]), "paused");
        assert_eq!(combined_phase(&["paused", "running"]), "running");
        assert_eq!(combined_phase(&["refused"]), "refused");
        assert_eq!(combined_phase(&["aborted", "completed"]), "completed");
    }

    #[test]
    fn the_create_form_becomes_the_sites_request_and_a_customer_target_only_its_sites() {
        let mut names = HashMap::new();
        names.insert(
            SiteId::from("s-1"),
            ("main".to_string(), "dental".to_string()),
        );
        names.insert(SiteId::from("s-2"), ("vet".to_string(), "vet".to_string()));
        let (b, sites) = create_request(
            &NewDeployment {
                target: "customer:dental".into(),
                patches: vec!["openssl=3.0.2-1".into()],
                security_only: true,
                ..Default::default()
            },
            &names,
        )
        .unwrap();
        assert_eq!(sites, Some(vec![SiteId::from("s-1")]));
        assert_eq!(
            b["target"],
            json!({"type": "customer", "customer": "dental"})
        );
        assert_eq!(
            b["patches"],
            json!([{"package": "openssl", "version": "3.0.2-1"}])
        );
        assert_eq!(b["security_only"], true);
        let (b, sites) = create_request(
            &NewDeployment {
                target: "tag:web".into(),
                ..Default::default()
            },
            &names,
        )
        .unwrap();
        assert_eq!((b["target"]["tag"].as_str(), sites), (Some("web"), None));
        assert!(b.get("patches").is_none());
        assert!(
            b.get("stages").is_none() && b.get("window").is_none(),
            "no option set: the sites' defaults: {b}"
        );
        for bad in ["device:2a", "nope:x", "customer:law"] {
            assert!(
                create_request(
                    &NewDeployment {
                        target: bad.into(),
                        ..Default::default()
                    },
                    &names
                )
                .is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn the_create_forms_options_go_to_the_sites_request_as_the_api_takes_them() {
        let names = HashMap::new();
        let (b, _) = create_request(
            &NewDeployment {
                target: "all".into(),
                options: outpost_console::deployments::DeploymentOptions {
                    stages: Some(vec![10, 100]),
                    min_success_pct: Some(80),
                    auto_rollback_failed_pct: Some(50),
                    install_deadline_minutes: Some(30),
                    reboot: Some("never".into()),
                    pre_script: Some("stop-app".into()),
                    snapshot: Some(false),
                    ..Default::default()
                },
                ..Default::default()
            },
            &names,
        )
        .unwrap();
        assert_eq!(b["stages"], json!([10, 100]));
        assert_eq!(b["gate"], json!({"min_success_pct": 80}));
        assert_eq!(b["auto_rollback_failed_pct"], 50);
        assert_eq!(b["install_deadline_ms"], 1_800_000);
        assert_eq!(
            (&b["reboot"], &b["pre_script"], &b["snapshot"]),
            (&json!("never"), &json!("stop-app"), &json!(false))
        );
        assert_eq!(
            action_body(&DeploymentAction::Rollback {
                scope: outpost_console::deployments::RollbackTarget::Stage(1)
            }),
            json!({"scope": "stage", "stage": 1})
        );
        assert_eq!(
            action_body(&DeploymentAction::Resume {
                retry_failed: false,
                force: true,
                patches: vec!["openssl=3.0.2-2".into()],
            }),
            json!({"retry_failed": false, "force": true, "patches": [{"package": "openssl", "version": "3.0.2-2"}]})
        );
    }

    #[test]
    fn a_rule_from_the_form_is_checked_before_it_goes_to_any_site() {
        let r = rule_of(
            &NewRule {
                id: "crit".into(),
                scope: "tag:web".into(),
                min_severity: Some("high".into()),
                security_only: true,
                delay_days: 3,
                allow: vec!["openssl".into()],
                deny: vec![],
            },
            "msp",
        )
        .unwrap();
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["scope"], json!({"type": "tag", "tag": "web"}));
        assert_eq!(v["rule"]["kind"], "auto");
        assert_eq!(v["rule"]["min_severity"], "high");
        assert!(
            rule_of(
                &NewRule {
                    id: "x".into(),
                    min_severity: Some("apocalyptic".into()),
                    ..Default::default()
                },
                "msp"
            )
            .is_err()
        );
        assert!(rule_of(&NewRule::default(), "msp").is_err(), "empty id");
        assert!(
            rule_of(
                &NewRule {
                    id: "x".into(),
                    scope: "customer:".into(),
                    ..Default::default()
                },
                "msp"
            )
            .is_err()
        );
    }
}
