//! Central's `POST /api/v1/devices/tags` and `GET /api/v1/devices/tags/{order}`:
//! add and remove tags on devices of the tenant's sites, from central.
//!
//! Tags live at the site (its registry; alert rules, windows and approvals
//! read them there). Central never writes a device's tags itself: a
//! request becomes one tag order per site
//! (`outpost_uplink::deploy_link::DeployOrderKind::SetTags`, uplink
//! protocol 9), delivered exactly once like the deployment orders
//! ([`crate::deploy_link`]: stored with its queued delivery and its audit
//! entry in one write, sent again until the site acknowledges it; the
//! site writes the order's id with the tags). The new tags come back with
//! the devices' next snapshots, so central's device list shows them after
//! the site's next batch.
//!
//! Rules: technicians and admins (viewers get 403); only sites of the
//! caller's customers (another one is reported per device as unknown, as
//! is a device central has never heard of: nothing is sent for it); tag
//! syntax is the site's (`outpost_uplink::deploy_link::check_tag`, 400);
//! a connected site older than protocol 9 is refused (409 naming it, and
//! nothing is stored for any site). This module only translates HTTP; it
//! must not touch the order records but through [`crate::api_deploy`].

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::State;
use outpost_proto::SiteId;
use outpost_uplink::deploy_link::{
    DeployOrderKind, MAX_TAG_ORDER_DEVICES, MAX_TAGS_PER_DEVICE, check_tag,
};
use outpost_web::{Json, Path};
use serde::{Deserialize, Serialize};

use crate::Central;
use crate::api::{ApiError, require};
use crate::api_deploy::OrderView;
use crate::bulk::DeviceRef;
use crate::model::{Principal, Role, SiteRecord};

fn internal(e: impl std::fmt::Display) -> ApiError {
    ApiError::Internal(e.to_string())
}

fn refuse(c: &Central, reason: &str, e: ApiError) -> ApiError {
    c.metrics
        .tag_refusals
        .get_or_create(&crate::metrics::ReasonLabel {
            reason: reason.into(),
        })
        .inc();
    e
}

/// Body of `POST /api/v1/devices/tags`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TagRequest {
    /// `[{"site": S, "device": D}, ...]` (any sites of the caller's).
    pub devices: Vec<DeviceRef>,
    #[serde(default)]
    pub add: Vec<String>,
    #[serde(default)]
    pub remove: Vec<String>,
}

/// What became of one device of a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TagDeviceResult {
    pub site: SiteId,
    pub device: String,
    /// `queued` (in the order `order`), `unknown device` or `unknown site`.
    pub result: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order: Option<String>,
}

/// Answer of `POST /api/v1/devices/tags`: the orders stored (one per
/// site) and each device's result.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TagResponse {
    pub orders: Vec<OrderView>,
    pub devices: Vec<TagDeviceResult>,
}

/// Checks a request's shape and tags (400 with the reason). Pure.
pub fn check_request(req: &TagRequest) -> Result<(), String> {
    if req.devices.is_empty() {
        return Err("\"devices\" is empty: name at least one {\"site\": S, \"device\": D}".into());
    }
    if req.devices.len() > MAX_TAG_ORDER_DEVICES {
        return Err(format!(
            "at most {MAX_TAG_ORDER_DEVICES} devices in one request ({} given)",
            req.devices.len()
        ));
    }
    if req.add.is_empty() && req.remove.is_empty() {
        return Err("nothing to do: give tags to \"add\" and/or \"remove\"".into());
    }
    if req.add.len() > MAX_TAGS_PER_DEVICE || req.remove.len() > MAX_TAGS_PER_DEVICE {
        return Err(format!(
            "at most {MAX_TAGS_PER_DEVICE} tags to add and {MAX_TAGS_PER_DEVICE} to remove"
        ));
    }
    for t in req.add.iter().chain(&req.remove) {
        check_tag(t)?;
    }
    for d in &req.devices {
        if d.device.len() != 16 || !d.device.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!(
                "device {:?} of site {}: a device id is 16 hex digits",
                d.device, d.site
            ));
        }
    }
    Ok(())
}

/// `POST /api/v1/devices/tags`.
pub async fn tag(
    State(c): State<Arc<Central>>,
    axum::Extension(p): axum::Extension<Principal>,
    Json(req): Json<TagRequest>,
) -> Result<Json<TagResponse>, ApiError> {
    Ok(Json(tag_on(&c, &p, req).await?))
}

/// Sends a tag request's orders (the API's, the CLI's and the console's
/// path).
#[tracing::instrument(skip_all, fields(tenant = %p.tenant, user = %p.name))]
pub(crate) async fn tag_on(
    c: &Arc<Central>,
    p: &Principal,
    req: TagRequest,
) -> Result<TagResponse, ApiError> {
    require(p, Role::Technician).map_err(|e| refuse(c, "forbidden", e))?;
    check_request(&req).map_err(|e| refuse(c, "bad_request", ApiError::BadRequest(e)))?;
    let sites = c.store.sites(&p.tenant).await.map_err(internal)?;
    let mut results: Vec<TagDeviceResult> = Vec::with_capacity(req.devices.len());
    // Known devices per visible site, in the request's order.
    let mut per_site: BTreeMap<SiteId, (SiteRecord, Vec<String>)> = BTreeMap::new();
    for d in &req.devices {
        let device = d.device.to_ascii_lowercase();
        let site = sites
            .iter()
            .find(|s| s.site_id == d.site && p.sees_customer(&s.customer));
        let result = match site {
            None => "unknown site",
            Some(s) => match c
                .store
                .device(&p.tenant, &s.site_id, &device)
                .await
                .map_err(internal)?
            {
                None => "unknown device",
                Some(_) => {
                    let e = per_site
                        .entry(s.site_id.clone())
                        .or_insert_with(|| (s.clone(), Vec::new()));
                    if !e.1.contains(&device) {
                        e.1.push(device.clone());
                    }
                    "queued"
                }
            },
        };
        if !results
            .iter()
            .any(|r| r.site == d.site && r.device == device)
        {
            results.push(TagDeviceResult {
                site: d.site.clone(),
                device,
                result: result.into(),
                order: None,
            });
        }
    }
    // A connected site too old is refused before anything is stored (one
    // that is offline is refused on delivery: `crate::deploy_link`).
    for site in per_site.keys() {
        let kind = DeployOrderKind::SetTags {
            devices: Vec::new(),
            add: Vec::new(),
            remove: Vec::new(),
        };
        if let Some(v) = c.downlinks.version(&p.tenant, site)
            && let Some(why) = crate::deploy::too_old(&kind, site, v)
        {
            return Err(refuse(c, "protocol", ApiError::Conflict(why)));
        }
    }
    let mut orders = Vec::with_capacity(per_site.len());
    for (site_id, (site, devices)) in per_site {
        let kind = DeployOrderKind::SetTags {
            devices,
            add: req.add.clone(),
            remove: req.remove.clone(),
        };
        let o = crate::api_deploy::send_order(c, p, &[site], kind, None, "device.tags").await?;
        c.metrics.tag_orders.inc();
        for r in results
            .iter_mut()
            .filter(|r| r.site == site_id && r.result == "queued")
        {
            r.order = Some(o.id.clone());
        }
        orders.push(o);
    }
    Ok(TagResponse {
        orders,
        devices: results,
    })
}

/// The console's "Tag…" on central's device list: adds `tags` to the
/// selected `(site, device)`s. Every device must be queued; otherwise a
/// 400 names the ones that were not (the others' orders are sent).
pub(crate) async fn add_from_console(
    c: &Arc<Central>,
    p: &Principal,
    devices: &[(String, String)],
    tags: &[String],
) -> Result<(), ApiError> {
    let req = TagRequest {
        devices: devices
            .iter()
            .map(|(site, device)| DeviceRef {
                site: site.as_str().into(),
                device: device.clone(),
            })
            .collect(),
        add: tags.to_vec(),
        remove: Vec::new(),
    };
    let r = tag_on(c, p, req).await?;
    let missed: Vec<String> = r
        .devices
        .iter()
        .filter(|d| d.order.is_none())
        .map(|d| format!("{}/{}: {}", d.site, d.device, d.result))
        .collect();
    if missed.is_empty() {
        Ok(())
    } else {
        Err(ApiError::BadRequest(format!(
            "Not tagged: {} (the tags of the others are on their way to their sites).",
            missed.join(", ")
        )))
    }
}

/// `GET /api/v1/devices/tags/{order}`: a tag order and its delivery (a
/// refusal names each device the site could not tag).
pub async fn show(
    State(c): State<Arc<Central>>,
    axum::Extension(p): axum::Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Json<OrderView>, ApiError> {
    let o = c
        .store
        .order(&p.tenant, &id)
        .await
        .map_err(internal)?
        .filter(|o| {
            matches!(o.kind, DeployOrderKind::SetTags { .. }) && crate::deploy::visible(&p, o)
        })
        .ok_or_else(|| ApiError::NotFound(format!("no tag order {id}")))?;
    let deliveries = c
        .store
        .order_deliveries(&p.tenant, std::slice::from_ref(&o))
        .await
        .map_err(internal)?;
    Ok(Json(crate::api_deploy::order_view(&o, &deliveries)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(devices: &[(&str, &str)], add: &[&str], remove: &[&str]) -> TagRequest {
        TagRequest {
            devices: devices
                .iter()
                .map(|(s, d)| DeviceRef {
                    site: (*s).into(),
                    device: (*d).into(),
                })
                .collect(),
            add: add.iter().map(|s| s.to_string()).collect(),
            remove: remove.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn a_tag_request_is_refused_with_the_reason_for_bad_tags_ids_or_nothing_to_do() {
        let ok = req(&[("s-1", "00000000000000aa")], &["web"], &[]);
        assert_eq!(check_request(&ok), Ok(()));
        let e = check_request(&req(&[], &["web"], &[])).unwrap_err();
        assert!(e.contains("\"devices\" is empty"), "{e}");
        let e = check_request(&req(&[("s-1", "00000000000000aa")], &[], &[])).unwrap_err();
        assert!(e.contains("nothing to do"), "{e}");
        let e = check_request(&req(&[("s-1", "00000000000000aa")], &["a,b"], &[])).unwrap_err();
        assert!(e.contains("no commas"), "{e}");
        let e = check_request(&req(&[("s-1", "00000000000000aa")], &[], &[""])).unwrap_err();
        assert!(e.contains("1 to 64 bytes"), "{e}");
        let e = check_request(&req(&[("s-1", "xyz")], &["web"], &[])).unwrap_err();
        assert!(e.contains("16 hex digits"), "{e}");
    }
}
