//! Central's side of the MSP console: [`CentralConsole`] implements
//! `outpost_console::ConsoleBackend` for a tenant (customers → sites →
//! devices) on top of the JSON API's own checks ([`crate::api`]: the same
//! principal, tenant filter, customer scope and roles), and
//! [`publish_delta`] turns what a batch changed into live events.
//!
//! It owns no data and no rule: reads go through [`crate::store`] and the
//! API's functions, the role checks through [`crate::api::require`].

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use outpost_console::backend::{
    AlertDetail, AlertEvent, AlertList, AlertQuery, AlertView, BackendInfo, Capabilities,
    ConsoleBackend, ConsoleError, ConsoleFuture, Counts as ViewCounts, CustomerHealth, Dashboard,
    DeadLetterView, DeviceDetail, DeviceList, DeviceQuery, DeviceSort, DeviceView, Facets,
    Features, LatestValue, LoginForm, LoginOutcome, MetricKey, MetricSeries, Notice, Range,
    ScopeKind, SeverityCounts, SiteDetail, SiteHealth, StatusChange, Viewer,
};
use outpost_console::chart::ChartPoint;
use outpost_console::live::{AlertChange, DeviceChange, LiveEvent, LiveHub};
use outpost_console::{format, pages::layout};
use outpost_proto::{CustomerId, SiteId, TenantId};

use crate::Central;
use crate::api::{self, ApiError, Counts, FleetSummary, SiteOut};
use crate::model::{AlertRow, AlertState, DeviceStatus, Principal, Role, Severity};
use crate::ops;
use crate::store::{
    AlertFilter, AlertHistoryEntry, AlertStates, CentralStoreError, DeviceBrief, DeviceSearch,
    DeviceSortKey, FleetDelta, SeriesQuery,
};

/// The console's backend at central.
pub struct CentralConsole {
    pub central: Arc<Central>,
}

/// A command as the console's lists show it.
fn command_row(
    c: &crate::commands::CentralCommand,
    names: &HashMap<SiteId, (String, String)>,
) -> outpost_console::commands::CommandRow {
    outpost_console::commands::CommandRow {
        id: c.id.to_string(),
        site_id: c.site_id.to_string(),
        site_name: names
            .get(&c.site_id)
            .map(|(n, _)| n.clone())
            .unwrap_or_else(|| c.site_id.to_string()),
        device: c.device.clone(),
        hostname: c.hostname.clone(),
        state: c.state.as_str().into(),
        command: c.spec.summary(),
        requested_by: c.requested_by.clone(),
        created_ms: c.created_ms,
        exit_code: c.exit_code,
        finished: c.closed,
    }
}

fn err(e: ApiError) -> ConsoleError {
    match e {
        ApiError::NotFound(m) => ConsoleError::NotFound(m),
        ApiError::Forbidden(m) => ConsoleError::Forbidden(m),
        ApiError::BadRequest(m) | ApiError::Conflict(m) => ConsoleError::BadRequest(m),
        // The store is down (PostgreSQL): 503, the page retries.
        ApiError::Unavailable(m) => ConsoleError::Unavailable(m),
        e => ConsoleError::Internal(e.to_string()),
    }
}

fn store_err(e: CentralStoreError) -> ConsoleError {
    match e {
        CentralStoreError::InvalidCursor(m) => ConsoleError::BadRequest(m),
        e if e.is_unavailable() => ConsoleError::Unavailable(e.to_string()),
        e => ConsoleError::Internal(e.to_string()),
    }
}

/// The principal a viewer stands for (built from it by [`viewer_of`]).
fn principal(v: &Viewer) -> Principal {
    let role = match v.role.as_str() {
        "admin" => Role::Admin,
        "technician" => Role::Technician,
        _ => Role::Viewer,
    };
    Principal {
        tenant: v.tenant.as_str().into(),
        role,
        customers: v.customers.iter().map(|c| c.as_str().into()).collect(),
        name: v.name.clone(),
    }
}

/// The viewer of a principal; `subject` is the credential's hash.
fn viewer_of(p: Principal, subject: [u8; 32]) -> Viewer {
    let at_least = |r: Role| p.role.rank() >= r.rank();
    Viewer {
        name: p.name.clone(),
        tenant: p.tenant.to_string(),
        customers: p.customers.iter().map(|c| c.to_string()).collect(),
        role: p.role.as_str().to_string(),
        can: Capabilities {
            ack_alerts: at_least(Role::Technician),
            run_commands: at_least(Role::Technician),
            // Approvals, rules, creating and aborting deployments: admins;
            // pausing, resuming, rolling back: technicians (the API's roles).
            approve_patches: at_least(Role::Admin),
            administer: at_least(Role::Admin),
            manage_deployments: at_least(Role::Technician),
            create_deployments: at_least(Role::Admin),
        },
        csrf_subject: subject.to_vec(),
    }
}

fn counts(c: &Counts) -> ViewCounts {
    ViewCounts {
        devices: c.devices,
        online: c.online,
        offline: c.offline,
        pending: c.pending,
        revoked: c.revoked,
        critical: c.critical,
        alerts_firing: c.alerts_firing,
        alerts_pending: c.alerts_pending,
    }
}

fn health(s: &SiteOut, c: &Counts) -> SiteHealth {
    let mut marks = Vec::new();
    if !s.tenant_mismatch.is_empty() {
        marks.push("tenant mismatch".to_string());
    }
    if s.dead_lettered > 0 {
        marks.push("refused batches".to_string());
    }
    SiteHealth {
        site_id: s.site_id.to_string(),
        name: s.name.clone(),
        customer: s.customer.to_string(),
        counts: counts(c),
        link: Some(s.link.clone()),
        stale: s.stale && s.joined,
        lag_ms: s.lag_ms,
        marks,
    }
}

/// The warning of a site whose devices were enrolled under another tenant.
fn tenant_mismatch(tenant: &str, s: &SiteOut) -> Option<Notice> {
    if s.tenant_mismatch.is_empty() {
        return None;
    }
    let n: u64 = s.tenant_mismatch.iter().map(|t| t.devices).sum();
    let which: Vec<String> = s
        .tenant_mismatch
        .iter()
        .map(|t| format!("{} ({})", t.tenant, t.devices))
        .collect();
    Some(Notice {
        id: "tenant-mismatch".into(),
        text: format!(
            "Tenant mismatch: {n} device{} of this site {} enrolled under tenant {}, not {tenant}. They are listed here, under {tenant}; re-enroll them at the site with a token for {tenant} (or join the appliance to a site of the right tenant).",
            if n == 1 { "" } else { "s" },
            if n == 1 { "was" } else { "were" },
            which.join(", "),
        ),
    })
}

fn brief_view(d: DeviceBrief) -> DeviceView {
    DeviceView {
        site_id: d.site_id.to_string(),
        site_name: d.site_name,
        customer: d.customer.to_string(),
        device: d.device,
        hostname: d.hostname,
        os: d.os,
        agent_version: d.agent_version,
        status: d.status.as_str().to_string(),
        status_since_ms: d.status_since_ms,
        last_seen_ms: d.last_seen_ms,
        cpu: d.cpu,
        memory: d.memory,
        disk: d.disk,
        open_alerts: d.open_alerts,
        critical: d.critical,
        ips: d.ips,
        tags: d.tags,
    }
}

fn alert_view(a: &AlertRow, site_name: &str, hostname: Option<String>) -> AlertView {
    AlertView {
        site_id: a.site_id.to_string(),
        site_name: site_name.to_string(),
        customer: a.customer.to_string(),
        alert_id: a.alert_id,
        device: a.device.clone(),
        hostname,
        rule: a.rule.clone(),
        severity: a.severity.as_str().to_string(),
        state: a.state.as_str().to_string(),
        at_ms: a.at_ms,
        first_ms: a.first_ms,
        message: a.message.clone(),
        value: a.value,
        acked_by: a.acked_by.clone(),
        acked_ms: a.acked_ms,
        ack_comment: None,
    }
}

/// Points of a range: 5-minute rollups as stored for 1 h and 24 h;
/// merged into wider buckets beyond (at most ~360 points per chart).
fn bucket_for(range: Range) -> u64 {
    const MIN: u64 = 60_000;
    match range {
        Range::H1 | Range::D1 => 5 * MIN,
        Range::D7 => 30 * MIN,
        Range::D30 => 120 * MIN,
    }
}

/// Merges 5-minute rollups into buckets of `step` (sum/count averages,
/// min of mins, max of maxes), oldest first.
pub fn merge_rollups(rows: &[(u64, crate::model::Rollup)], step: u64) -> Vec<ChartPoint> {
    let mut out: Vec<(u64, f64, u64, f64, f64)> = Vec::new();
    for (t, r) in rows {
        let b = t - t % step.max(1);
        match out.last_mut() {
            Some(last) if last.0 == b => {
                last.1 += r.sum;
                last.2 += r.count;
                last.3 = last.3.min(r.min);
                last.4 = last.4.max(r.max);
            }
            _ => out.push((b, r.sum, r.count, r.min, r.max)),
        }
    }
    out.into_iter()
        .map(|(t, sum, count, min, max)| ChartPoint {
            t_ms: t,
            avg: if count > 0 {
                sum / count as f64
            } else {
                f64::NAN
            },
            min,
            max,
        })
        .collect()
}

fn alert_change(
    tenant: &str,
    a: &AlertRow,
    before: Option<AlertState>,
    site_name: &str,
    hostname: Option<String>,
) -> LiveEvent {
    LiveEvent::alert(
        tenant,
        &AlertChange {
            site_id: a.site_id.to_string(),
            site_name: site_name.to_string(),
            customer: a.customer.to_string(),
            alert_id: a.alert_id,
            device: a.device.clone(),
            hostname,
            rule: a.rule.clone(),
            severity: a.severity.as_str().to_string(),
            old_state: before.map(|s| s.as_str().to_string()),
            state: a.state.as_str().to_string(),
            at_ms: a.at_ms,
            message: a.message.clone(),
            acked_by: a.acked_by.clone(),
        },
    )
}

/// Publishes that command `c` changed (state or output) to the live hub:
/// open command pages and lists of its customer read themselves again.
pub fn publish_command(hub: &LiveHub, c: &crate::commands::CentralCommand) {
    hub.publish(LiveEvent::command(
        &c.tenant,
        &outpost_console::live::CommandChange {
            id: c.id.to_string(),
            site_id: c.site_id.to_string(),
            customer: c.customer.to_string(),
            state: c.state.as_str().to_string(),
            finished: c.closed,
        },
    ));
}

/// Publishes that many commands of `customer` changed at once (a bulk
/// run created or cancelled): one event without an id.
pub fn publish_commands(hub: &LiveHub, tenant: &TenantId, customer: &outpost_proto::CustomerId) {
    hub.publish(LiveEvent::command(
        tenant,
        &outpost_console::live::CommandChange {
            id: String::new(),
            site_id: String::new(),
            customer: customer.to_string(),
            state: String::new(),
            finished: false,
        },
    ));
}

/// One bulk run of the console's request over `target`, through the
/// API's path (role, scope and the target's resolution are its).
async fn run_bulk(
    c: &Arc<Central>,
    v: &Viewer,
    target: crate::bulk::BulkTarget,
    req: &outpost_console::bulk_actions::BulkRunRequest,
) -> Result<String, ConsoleError> {
    let p = principal(v);
    let body = crate::api_bulk::BulkRequestBody {
        target,
        command: req.command.clone(),
        script: req
            .script
            .as_ref()
            .map(|name| crate::api_scripts::ScriptRef {
                name: name.clone(),
                version: None,
            }),
        action: None,
        concurrency: None,
        interpreter: None,
        args: req.args.clone(),
        env: Vec::new(),
        cwd: None,
        run_as: None,
        timeout_ms: None,
        expiry_ms: None,
    };
    let run = crate::api_bulk::create_bulk(c, &p, body)
        .await
        .map_err(|e| match e {
            ApiError::Conflict(m) => ConsoleError::BadRequest(m),
            e => err(e),
        })?;
    Ok(run.id.to_string())
}

/// Publishes what a batch changed (devices whose status changed, alerts
/// it moved) to the console's live hub: one event per change, whatever
/// the number of viewers.
pub fn publish_delta(hub: &LiveHub, tenant: &TenantId, site_id: &SiteId, d: &FleetDelta) {
    for (row, before) in &d.devices {
        hub.publish(LiveEvent::device(
            tenant,
            &DeviceChange {
                site_id: site_id.to_string(),
                site_name: d.site_name.clone(),
                customer: row.customer.to_string(),
                device: row.device.clone(),
                hostname: row.hostname.clone(),
                old_status: before.map(|s| s.as_str().to_string()),
                status: row.status.as_str().to_string(),
                status_since_ms: row.status_since_ms,
                last_seen_ms: row.last_seen_ms,
            },
        ));
    }
    for (a, before, host) in &d.alerts {
        hub.publish(alert_change(tenant, a, *before, &d.site_name, host.clone()));
    }
}

/// Acknowledges an alert for `p` (technician or admin), with `comment`;
/// what the JSON API and the console both call. Publishes the change.
pub async fn acknowledge(
    c: &Arc<Central>,
    p: &Principal,
    site: &SiteId,
    alert: u64,
    comment: &str,
) -> Result<AlertRow, ApiError> {
    api::require(p, Role::Technician)?;
    let s = api::one_site(c, p, site).await?;
    let a = c
        .store
        .ack_alert(&p.tenant, site, alert, &p.name, comment, crate::now_ms())
        .await
        .map_err(crate::api::internal_error)?
        .ok_or_else(|| ApiError::NotFound(format!("no alert {alert} at site {site}")))?;
    let host = match &a.device {
        Some(d) => c
            .store
            .hostnames(&p.tenant, &[(site.clone(), d.clone())])
            .await
            .ok()
            .and_then(|h| h.into_iter().next().flatten()),
        None => None,
    };
    c.live
        .publish(alert_change(&p.tenant, &a, Some(a.state), &s.name, host));
    Ok(a)
}

impl CentralConsole {
    async fn summary(
        &self,
        p: &Principal,
    ) -> Result<(FleetSummary, Vec<(Severity, u64)>), ConsoleError> {
        api::fleet_overview(&self.central, p).await.map_err(err)
    }

    /// Names of the sites `p` sees: id → (name, customer).
    async fn site_names(
        &self,
        p: &Principal,
    ) -> Result<HashMap<SiteId, (String, String)>, ConsoleError> {
        Ok(api::visible_sites(&self.central, p)
            .await
            .map_err(err)?
            .into_iter()
            .map(|s| (s.site_id.clone(), (s.name.clone(), s.customer.to_string())))
            .collect())
    }

    fn facets(names: &HashMap<SiteId, (String, String)>) -> Facets {
        let mut sites: Vec<(String, String, String)> = names
            .iter()
            .map(|(id, (n, c))| (id.to_string(), n.clone(), c.clone()))
            .collect();
        sites.sort_by(|a, b| (&a.2, &a.1).cmp(&(&b.2, &b.1)));
        let mut customers: Vec<String> = sites.iter().map(|s| s.2.clone()).collect();
        customers.dedup();
        Facets {
            customers,
            sites,
            tags: vec![],
        }
    }
}

impl ConsoleBackend for CentralConsole {
    #[allow(clippy::needless_update)]
    fn info(&self) -> BackendInfo {
        BackendInfo {
            product: "central".into(),
            scope: ScopeKind::Tenant,
            login_tenant: true,
            features: Features {
                commands: true,
                scripts: true,
                patches: true,
                // Search and filter by tag; tags are set at the site.
                tags: true,
                tag_devices: true,
                deployments: true,
                edit_approvals: true,
                bulk_by_tag: true,
                files: true,
                // Features added later stay off until central has them.
                ..Features::default()
            },
        }
    }

    fn live(&self) -> &LiveHub {
        &self.central.live
    }

    fn viewer<'a>(&'a self, h: &'a HeaderMap) -> ConsoleFuture<'a, Option<Viewer>> {
        Box::pin(async move { Ok(self.viewer_until(h).await?.map(|(v, _)| v)) })
    }

    /// The viewer with its session's (or token's) expiry: the live stream
    /// ends then at the latest, and checks the credential again through
    /// this at every keep-alive (a logout, a password change, a removed
    /// user, a revoked token end it).
    fn viewer_until<'a>(
        &'a self,
        h: &'a HeaderMap,
    ) -> ConsoleFuture<'a, Option<(Viewer, Option<u64>)>> {
        Box::pin(async move {
            let subject = match (api::bearer(h), api::session_cookie(h)) {
                (Some(t), _) => ops::sha256(t),
                (None, Some(s)) => ops::sha256(&s),
                (None, None) => return Ok(None),
            };
            let p = match api::credential_until(&self.central, h).await {
                Ok(p) => p,
                // A revoked or expired token: no viewer (sign in).
                Err(ApiError::Unauthorized(_)) => None,
                Err(e) => return Err(err(e)),
            };
            Ok(p.map(|(p, _, until)| (viewer_of(p, subject), until)))
        })
    }

    fn login<'a>(
        &'a self,
        f: LoginForm,
        peer: Option<IpAddr>,
        h: &'a HeaderMap,
    ) -> ConsoleFuture<'a, LoginOutcome> {
        Box::pin(async move {
            let Some(tenant) = f.tenant.filter(|t| !t.is_empty()) else {
                return Ok(LoginOutcome::Refused);
            };
            let addr = api::client_addr(peer, h, &self.central.limits.trusted_proxies);
            let login = api::Login {
                tenant: tenant.as_str().into(),
                username: f.username,
                password: f.password,
            };
            let r = api::login_response(&self.central, login, addr).await;
            let retry = || {
                r.headers()
                    .get(header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(1)
            };
            Ok(match r.status() {
                StatusCode::OK => match r.headers().get(header::SET_COOKIE) {
                    Some(v) => LoginOutcome::Success {
                        set_cookie: v.clone(),
                    },
                    None => return Err(ConsoleError::Internal("login answered no cookie".into())),
                },
                StatusCode::TOO_MANY_REQUESTS => LoginOutcome::Throttled {
                    retry_after_secs: retry(),
                },
                StatusCode::SERVICE_UNAVAILABLE => LoginOutcome::Busy {
                    retry_after_secs: retry(),
                },
                StatusCode::INTERNAL_SERVER_ERROR => {
                    return Err(ConsoleError::Internal("login failed".into()));
                }
                _ => LoginOutcome::Refused,
            })
        })
    }

    fn logout<'a>(&'a self, h: &'a HeaderMap) -> ConsoleFuture<'a, Option<HeaderValue>> {
        Box::pin(async move {
            if let Some(v) = api::session_cookie(h) {
                self.central
                    .store
                    .delete_session(&ops::sha256(&v))
                    .await
                    .map_err(store_err)?;
            }
            Ok(Some(HeaderValue::from_static(api::CLEAR_SESSION_COOKIE)))
        })
    }

    fn dashboard<'a>(&'a self, v: &'a Viewer) -> ConsoleFuture<'a, Dashboard> {
        Box::pin(async move {
            let p = principal(v);
            let (f, sev) = self.summary(&p).await?;
            let mut by = SeverityCounts::default();
            for (s, n) in sev {
                match s {
                    Severity::Critical => by.critical = n,
                    Severity::Warning => by.warning = n,
                    Severity::Info => by.info = n,
                }
            }
            Ok(Dashboard {
                totals: counts(&f.totals),
                firing_by_severity: by,
                stale_sites: f.stale_sites,
                customers: f
                    .customers
                    .iter()
                    .map(|cu| CustomerHealth {
                        customer: cu.customer.to_string(),
                        counts: counts(&cu.counts),
                        sites: cu
                            .sites
                            .iter()
                            .map(|s| health(&s.site, &s.counts))
                            .collect(),
                    })
                    .collect(),
                patch_compliance: crate::api_patches::compliance_report(
                    &self.central,
                    &p,
                    &Default::default(),
                )
                .await
                .map_err(err)?
                .total
                .compliance_percent,
            })
        })
    }

    fn site<'a>(&'a self, v: &'a Viewer, site: &'a str) -> ConsoleFuture<'a, SiteDetail> {
        Box::pin(async move {
            let p = principal(v);
            let id = SiteId::from(site);
            api::one_site(&self.central, &p, &id).await.map_err(err)?;
            let (f, _) = self.summary(&p).await?;
            let s = f
                .customers
                .iter()
                .flat_map(|c| c.sites.iter())
                .find(|s| s.site.site_id == id)
                .ok_or_else(|| ConsoleError::NotFound(format!("no site {site}")))?;
            Ok(SiteDetail {
                health: health(&s.site, &s.counts),
                facts: vec![
                    ("last sequence".into(), s.site.applied_up_to.to_string()),
                    (
                        "last batch".into(),
                        s.site
                            .last_batch_ms
                            .map_or_else(|| "never".into(), format::utc),
                    ),
                ],
                notices: tenant_mismatch(&v.tenant, &s.site).into_iter().collect(),
                dead_lettered: s.site.dead_lettered,
                dead_letters: s
                    .site
                    .dead_letters
                    .iter()
                    .map(|d| DeadLetterView {
                        seq: d.seq,
                        last_seq: d.last_seq,
                        reason: d.reason.clone(),
                        message: d.message.clone(),
                        at_ms: d.at_ms,
                    })
                    .collect(),
            })
        })
    }

    fn devices<'a>(&'a self, v: &'a Viewer, q: &'a DeviceQuery) -> ConsoleFuture<'a, DeviceList> {
        Box::pin(async move {
            let p = principal(v);
            let names = self.site_names(&p).await?;
            let facets = Self::facets(&names);
            if let Some(s) = &q.site
                && !names.contains_key(&SiteId::from(s.as_str()))
            {
                return Err(ConsoleError::NotFound(format!("no site {s}")));
            }
            let (status, critical) = match q.status.as_deref() {
                None => (None, false),
                Some("critical") => (None, true),
                Some(s) => match DeviceStatus::ALL.iter().find(|d| d.as_str() == s) {
                    Some(d) => (Some(*d), false),
                    None => {
                        return Err(ConsoleError::BadRequest(format!(
                            "status {s:?}: use online, offline, pending, revoked or critical"
                        )));
                    }
                },
            };
            let mut facets = facets;
            facets.tags = self
                .central
                .store
                .device_tags(&p.tenant, &p.customers)
                .await
                .map_err(store_err)?;
            let search = DeviceSearch {
                words: q
                    .text
                    .to_lowercase()
                    .split_whitespace()
                    .map(str::to_string)
                    .collect(),
                site_id: q.site.as_deref().map(SiteId::from),
                customer: q.customer.as_deref().map(Into::into),
                customers_allowed: p.customers.clone(),
                status,
                critical,
                tag: q.tag.clone().filter(|t| !t.is_empty()),
                sort: match q.sort {
                    DeviceSort::Hostname => DeviceSortKey::Hostname,
                    DeviceSort::Status => DeviceSortKey::Status,
                    DeviceSort::LastSeen => DeviceSortKey::LastSeen,
                    DeviceSort::Site => DeviceSortKey::Site,
                    DeviceSort::Customer => DeviceSortKey::Customer,
                    DeviceSort::Cpu => DeviceSortKey::Cpu,
                },
                descending: q.descending,
                after: q.after.clone(),
                limit: q.limit.clamp(1, 1000),
            };
            let page = self
                .central
                .store
                .search_devices(&p.tenant, &search)
                .await
                .map_err(store_err)?;
            Ok(DeviceList {
                rows: page.items.into_iter().map(brief_view).collect(),
                total: page.total,
                total_more: page.total_more,
                next: page.next,
                facets,
            })
        })
    }

    fn device<'a>(
        &'a self,
        v: &'a Viewer,
        site: &'a str,
        device: &'a str,
    ) -> ConsoleFuture<'a, DeviceDetail> {
        Box::pin(async move {
            let p = principal(v);
            let id = SiteId::from(site);
            let d = api::device_detail(&self.central, &p, &id, device)
                .await
                .map_err(err)?;
            let transitions = self
                .central
                .store
                .status_history(&p.tenant, &id, device, 50)
                .await
                .map_err(store_err)?;
            // `device_detail` read its IPs and tags already.
            let dv = &d.device;
            // The list's figures from the row itself (no search needed).
            let avg = |name: &str| {
                dv.latest
                    .iter()
                    .filter(|l| l.series == name)
                    .map(|l| {
                        if l.rollup.count > 0 {
                            l.rollup.sum / l.rollup.count as f64
                        } else {
                            l.rollup.last
                        }
                    })
                    .reduce(f64::max)
            };
            let view = DeviceView {
                site_id: id.to_string(),
                site_name: d.site.name.clone(),
                customer: dv.customer.to_string(),
                device: dv.device.clone(),
                hostname: dv.hostname.clone(),
                os: dv.os.clone(),
                agent_version: dv.agent_version.clone(),
                status: dv.status.as_str().to_string(),
                status_since_ms: dv.status_since_ms,
                last_seen_ms: dv.last_seen_ms,
                cpu: avg(outpost_proto::metric_names::CPU),
                memory: avg(outpost_proto::metric_names::MEMORY),
                disk: avg(outpost_proto::metric_names::DISK_USED_PERCENT),
                open_alerts: d.alerts.iter().filter(|a| a.state.is_open()).count() as u32,
                critical: d
                    .alerts
                    .iter()
                    .any(|a| a.state == AlertState::Firing && a.severity == Severity::Critical),
                ips: dv.ips.clone(),
                tags: dv.tags.clone(),
            };
            let mut alerts: Vec<AlertView> = d
                .alerts
                .iter()
                .map(|a| alert_view(a, &d.site.name, Some(dv.hostname.clone())))
                .collect();
            alerts.sort_by_key(|a| (!a.is_open(), std::cmp::Reverse(a.at_ms)));
            Ok(DeviceDetail {
                inventory: vec![
                    ("Enrolled".into(), format::utc(dv.enrolled_at_ms)),
                    (
                        "Rollups stored".into(),
                        format::count(dv.rollups_stored as i64),
                    ),
                    ("Snapshot as of".into(), format::utc(dv.as_of_ms)),
                ],
                latest: dv
                    .latest
                    .iter()
                    .map(|l| LatestValue {
                        name: l.series.clone(),
                        label: l.label.clone(),
                        value: if l.rollup.count > 0 {
                            l.rollup.sum / l.rollup.count as f64
                        } else {
                            l.rollup.last
                        },
                        at_ms: l.bucket_start_ms,
                    })
                    .collect(),
                transitions: transitions
                    .into_iter()
                    .map(|(at_ms, s)| StatusChange {
                        at_ms,
                        status: s.as_str().to_string(),
                    })
                    .collect(),
                alerts,
                panels: vec![],
                device: view,
            })
        })
    }

    fn series<'a>(
        &'a self,
        v: &'a Viewer,
        site: &'a str,
        device: &'a str,
        keys: &'a [MetricKey],
        range: Range,
        now_ms: u64,
    ) -> ConsoleFuture<'a, Vec<MetricSeries>> {
        Box::pin(async move {
            let p = principal(v);
            let id = SiteId::from(site);
            api::one_site(&self.central, &p, &id).await.map_err(err)?;
            let step = bucket_for(range);
            let from = now_ms.saturating_sub(range.duration_ms());
            let q = SeriesQuery {
                site_id: id,
                device: device.to_string(),
                series: keys
                    .iter()
                    .map(|k| (k.name.clone(), k.label.clone()))
                    .collect(),
                from_ms: from - from % step,
                to_ms: now_ms,
            };
            let rows = self
                .central
                .store
                .series_rollups(&p.tenant, &q)
                .await
                .map_err(store_err)?;
            let source = if step == 300_000 {
                "5-minute rollups".to_string()
            } else {
                format!("{} averages of 5-minute rollups", format::duration_ms(step))
            };
            Ok(keys
                .iter()
                .zip(rows)
                .map(|(k, rows)| MetricSeries {
                    key: k.clone(),
                    step_ms: step,
                    source: source.clone(),
                    points: merge_rollups(&rows, step),
                })
                .collect())
        })
    }

    fn alerts<'a>(&'a self, v: &'a Viewer, q: &'a AlertQuery) -> ConsoleFuture<'a, AlertList> {
        Box::pin(async move {
            let p = principal(v);
            let names = self.site_names(&p).await?;
            let site = q.site.as_deref().map(SiteId::from);
            if let Some(s) = &site
                && !names.contains_key(s)
            {
                return Err(ConsoleError::NotFound(format!("no site {s}")));
            }
            let states = match q.state.as_deref().unwrap_or("open") {
                "open" => AlertStates::Open,
                "all" => AlertStates::All,
                "pending" => AlertStates::Only(AlertState::Pending),
                "firing" => AlertStates::Only(AlertState::Firing),
                "resolved" => AlertStates::Only(AlertState::Resolved),
                "cleared" => AlertStates::Only(AlertState::Cleared),
                other => {
                    return Err(ConsoleError::BadRequest(format!(
                        "unknown alert state {other:?}: open, all, pending, firing, resolved or cleared"
                    )));
                }
            };
            let severity = match q.severity.as_deref() {
                None => None,
                Some("critical") => Some(Severity::Critical),
                Some("warning") => Some(Severity::Warning),
                Some("info") => Some(Severity::Info),
                Some(s) => {
                    return Err(ConsoleError::BadRequest(format!(
                        "unknown severity {s:?}: critical, warning or info"
                    )));
                }
            };
            let filter = AlertFilter {
                site,
                customers_allowed: p.customers.clone(),
                customer: q.customer.as_deref().map(CustomerId::from),
                severity,
                states,
                limit: q.limit.max(1),
            };
            let page = self
                .central
                .store
                .alert_page(&p.tenant, &filter)
                .await
                .map_err(store_err)?;
            let (rows, total) = (page.rows, page.total);
            let keys: Vec<(SiteId, String)> = rows
                .iter()
                .filter_map(|a| a.device.clone().map(|d| (a.site_id.clone(), d)))
                .collect();
            let hosts = self
                .central
                .store
                .hostnames(&p.tenant, &keys)
                .await
                .map_err(store_err)?;
            let host: HashMap<(SiteId, String), Option<String>> =
                keys.into_iter().zip(hosts).collect();
            let views =
                rows.iter()
                    .map(|a| {
                        let name = names
                            .get(&a.site_id)
                            .map_or(a.site_id.as_str(), |n| n.0.as_str());
                        let h = a.device.as_ref().and_then(|d| {
                            host.get(&(a.site_id.clone(), d.clone())).cloned().flatten()
                        });
                        alert_view(a, name, h)
                    })
                    .collect();
            Ok(AlertList {
                rows: views,
                total,
                facets: Self::facets(&names),
            })
        })
    }

    fn alert<'a>(
        &'a self,
        v: &'a Viewer,
        site: &'a str,
        alert_id: u64,
    ) -> ConsoleFuture<'a, AlertDetail> {
        Box::pin(async move {
            let p = principal(v);
            let id = SiteId::from(site);
            let s = api::one_site(&self.central, &p, &id).await.map_err(err)?;
            let a = self
                .central
                .store
                .alerts(&p.tenant, Some(&id))
                .await
                .map_err(store_err)?
                .into_iter()
                .find(|a| a.alert_id == alert_id)
                .ok_or_else(|| {
                    ConsoleError::NotFound(format!("no alert {alert_id} at site {site}"))
                })?;
            let host = match &a.device {
                Some(d) => self
                    .central
                    .store
                    .hostnames(&p.tenant, &[(id.clone(), d.clone())])
                    .await
                    .map_err(store_err)?
                    .into_iter()
                    .next()
                    .flatten(),
                None => None,
            };
            let history = self
                .central
                .store
                .alert_history(&p.tenant, &id, alert_id)
                .await
                .map_err(store_err)?;
            let mut view = alert_view(&a, &s.name, host);
            view.ack_comment = history.iter().rev().find_map(|e| match e {
                AlertHistoryEntry::Ack { comment, .. } if !comment.is_empty() => {
                    Some(comment.clone())
                }
                _ => None,
            });
            Ok(AlertDetail {
                alert: view,
                history: history
                    .into_iter()
                    .map(|e| match e {
                        AlertHistoryEntry::Transition {
                            at_ms,
                            state,
                            message,
                            value,
                        } => AlertEvent {
                            at_ms,
                            what: state.as_str().to_string(),
                            by: None,
                            text: message,
                            value,
                        },
                        AlertHistoryEntry::Ack { at_ms, by, comment } => AlertEvent {
                            at_ms,
                            what: "acknowledged".into(),
                            by: Some(by),
                            text: comment,
                            value: None,
                        },
                    })
                    .collect(),
            })
        })
    }

    fn ack_alert<'a>(
        &'a self,
        v: &'a Viewer,
        site: &'a str,
        alert_id: u64,
        comment: &'a str,
    ) -> ConsoleFuture<'a, ()> {
        Box::pin(async move {
            let p = principal(v);
            acknowledge(&self.central, &p, &SiteId::from(site), alert_id, comment)
                .await
                .map(|_| ())
                .map_err(err)
        })
    }

    fn commands<'a>(
        &'a self,
        v: &'a Viewer,
        q: &'a outpost_console::commands::CommandQuery,
    ) -> ConsoleFuture<'a, Vec<outpost_console::commands::CommandRow>> {
        Box::pin(async move {
            let p = principal(v);
            let lq = crate::api_commands::ListQuery {
                site: q.site.as_deref().map(Into::into),
                device: q.device.clone(),
                state: q.state.clone(),
                before_ms: q.before_ms,
                before_id: q.before_id.clone(),
                limit: Some(q.limit),
            };
            let rows = crate::api_commands::list_commands(&self.central, &p, lq)
                .await
                .map_err(err)?;
            let names = self.site_names(&p).await?;
            Ok(rows.iter().map(|c| command_row(c, &names)).collect())
        })
    }

    fn command<'a>(
        &'a self,
        v: &'a Viewer,
        id: &'a str,
    ) -> ConsoleFuture<'a, outpost_console::commands::CommandDetail> {
        Box::pin(async move {
            let p = principal(v);
            let c = crate::api_commands::visible_command(&self.central, &p, id)
                .await
                .map_err(err)?;
            let out = self
                .central
                .store
                .command_output(&p.tenant, c.id)
                .await
                .map_err(store_err)?;
            let names = self.site_names(&p).await?;
            let view = crate::api_commands::CommandView::of(&c, &self.central);
            let mut steps: Vec<outpost_console::commands::CommandStep> =
                c.central_transitions
                    .iter()
                    .map(|t| outpost_console::commands::CommandStep {
                        state: t.state.as_str().into(),
                        at_ms: t.at_ms,
                        source: "central".into(),
                    })
                    .chain(c.site_transitions.iter().map(|t| {
                        outpost_console::commands::CommandStep {
                            state: t.state.as_str().into(),
                            at_ms: t.at_ms,
                            source: "site".into(),
                        }
                    }))
                    .collect();
            steps.sort_by_key(|s| s.at_ms);
            Ok(outpost_console::commands::CommandDetail {
                row: command_row(&c, &names),
                steps,
                signal: c.signal,
                reason: c.reason.clone(),
                timeout_ms: c.spec.timeout_ms,
                run_as: c.spec.run_as.clone(),
                interpreter: c.spec.interpreter.as_str().into(),
                cancel_requested: c.cancel_requested.is_some(),
                note: view.note,
                output: String::from_utf8_lossy(&out).into_owned(),
                output_truncated: c.output_truncated,
            })
        })
    }

    fn run_command<'a>(
        &'a self,
        v: &'a Viewer,
        site: &'a str,
        device: &'a str,
        req: &'a outpost_console::commands::RunCommand,
    ) -> ConsoleFuture<'a, String> {
        Box::pin(async move {
            let p = principal(v);
            let interpreter = req.interpreter.parse().map_err(ConsoleError::BadRequest)?;
            let r = crate::api_commands::RunRequest {
                site: site.into(),
                device: device.to_string(),
                command: Some(req.command.clone()),
                interpreter: Some(interpreter),
                run_as: req.run_as.clone(),
                timeout_ms: Some(req.timeout_secs.saturating_mul(1000)),
                ..Default::default()
            };
            let c = crate::api_commands::run_command(&self.central, &p, r)
                .await
                .map_err(|e| match e {
                    ApiError::Conflict(m) => ConsoleError::BadRequest(m),
                    e => err(e),
                })?;
            Ok(c.id.to_string())
        })
    }

    fn patch_overview<'a>(
        &'a self,
        v: &'a Viewer,
    ) -> ConsoleFuture<'a, outpost_console::patches::PatchOverview> {
        Box::pin(async move {
            crate::console_patches::overview(&self.central, &principal(v))
                .await
                .map_err(err)
        })
    }

    fn patch_cve<'a>(
        &'a self,
        v: &'a Viewer,
        cve: &'a str,
    ) -> ConsoleFuture<'a, outpost_console::patches::CvePage> {
        Box::pin(async move {
            crate::console_patches::cve(&self.central, &principal(v), cve)
                .await
                .map_err(err)
        })
    }

    fn device_patches<'a>(
        &'a self,
        v: &'a Viewer,
        site: &'a str,
        device: &'a str,
    ) -> ConsoleFuture<'a, Option<outpost_console::patches::DevicePatchView>> {
        Box::pin(async move {
            crate::console_patches::device(&self.central, &principal(v), site, device)
                .await
                .map_err(err)
        })
    }

    fn patch_report_csv<'a>(
        &'a self,
        v: &'a Viewer,
        customer: Option<&'a str>,
    ) -> ConsoleFuture<'a, String> {
        Box::pin(async move {
            crate::console_patches::report_csv(&self.central, &principal(v), customer)
                .await
                .map_err(err)
        })
    }

    fn patch_report_pdf<'a>(
        &'a self,
        v: &'a Viewer,
        customer: Option<&'a str>,
    ) -> ConsoleFuture<'a, Vec<u8>> {
        Box::pin(async move {
            crate::console_patches::report_pdf(&self.central, &principal(v), customer)
                .await
                .map_err(err)
        })
    }

    fn deployments<'a>(
        &'a self,
        v: &'a Viewer,
    ) -> ConsoleFuture<'a, Vec<outpost_console::deployments::DeploymentRow>> {
        Box::pin(async move {
            crate::console_deploy::rows(&self.central, &principal(v))
                .await
                .map_err(err)
        })
    }

    fn deployment<'a>(
        &'a self,
        v: &'a Viewer,
        id: &'a str,
    ) -> ConsoleFuture<'a, outpost_console::deployments::DeploymentDetail> {
        Box::pin(async move {
            crate::console_deploy::detail(&self.central, &principal(v), id)
                .await
                .map_err(err)
        })
    }

    fn deployment_action<'a>(
        &'a self,
        v: &'a Viewer,
        id: &'a str,
        a: &'a outpost_console::deployments::DeploymentAction,
    ) -> ConsoleFuture<'a, ()> {
        Box::pin(async move {
            crate::console_deploy::act(&self.central, &principal(v), id, a)
                .await
                .map_err(err)
        })
    }

    fn create_deployment<'a>(
        &'a self,
        v: &'a Viewer,
        req: &'a outpost_console::deployments::NewDeployment,
    ) -> ConsoleFuture<'a, String> {
        Box::pin(async move {
            crate::console_deploy::create(&self.central, &principal(v), req)
                .await
                .map_err(err)
        })
    }

    fn approvals<'a>(
        &'a self,
        v: &'a Viewer,
        device: Option<&'a str>,
    ) -> ConsoleFuture<'a, outpost_console::deployments::ApprovalsView> {
        Box::pin(async move {
            // The picker: the first devices of the list (any other by
            // `?device=SITE/DEVICE`), and the tags for the forms.
            let list = self
                .devices(
                    v,
                    &DeviceQuery {
                        limit: crate::console_deploy::DECISION_PICKER_DEVICES,
                        ..Default::default()
                    },
                )
                .await?;
            let picker = list
                .rows
                .iter()
                .map(|d| {
                    (
                        format!("{}/{}", d.site_id, d.device),
                        format!("{} · {}", d.hostname, d.site_name),
                    )
                })
                .collect();
            let mut a = crate::console_deploy::approvals(
                &self.central,
                &principal(v),
                &list.facets.tags,
                v.can.approve_patches,
            )
            .await
            .map_err(err)?;
            crate::console_deploy::with_decisions(
                &self.central,
                &principal(v),
                &mut a,
                picker,
                device,
            )
            .await
            .map_err(err)?;
            Ok(a)
        })
    }

    fn set_verdict<'a>(
        &'a self,
        v: &'a Viewer,
        req: &'a outpost_console::deployments::VerdictRequest,
    ) -> ConsoleFuture<'a, ()> {
        Box::pin(async move {
            crate::console_deploy::verdict(&self.central, &principal(v), req)
                .await
                .map_err(err)
        })
    }

    fn add_approval_rule<'a>(
        &'a self,
        v: &'a Viewer,
        rule: &'a outpost_console::deployments::NewRule,
    ) -> ConsoleFuture<'a, ()> {
        Box::pin(async move {
            crate::console_deploy::add_rule(&self.central, &principal(v), rule)
                .await
                .map_err(err)
        })
    }

    fn remove_approval_rule<'a>(&'a self, v: &'a Viewer, id: &'a str) -> ConsoleFuture<'a, ()> {
        Box::pin(async move {
            crate::console_deploy::remove_rule(&self.central, &principal(v), id)
                .await
                .map_err(err)
        })
    }

    fn cancel_command<'a>(&'a self, v: &'a Viewer, id: &'a str) -> ConsoleFuture<'a, ()> {
        Box::pin(async move {
            let p = principal(v);
            crate::api_commands::cancel_command(&self.central, &p, id)
                .await
                .map_err(|e| match e {
                    ApiError::Conflict(m) => ConsoleError::BadRequest(m),
                    e => err(e),
                })?;
            Ok(())
        })
    }

    fn scripts<'a>(
        &'a self,
        v: &'a Viewer,
    ) -> ConsoleFuture<'a, Vec<outpost_console::scripts::ScriptRow>> {
        Box::pin(async move {
            let p = principal(v);
            let v = crate::api_scripts::list_scripts(&self.central, &p)
                .await
                .map_err(err)?;
            Ok(v.iter().map(script_row).collect())
        })
    }

    fn script<'a>(
        &'a self,
        v: &'a Viewer,
        name: &'a str,
        version: Option<u32>,
    ) -> ConsoleFuture<'a, outpost_console::scripts::ScriptDetail> {
        Box::pin(async move {
            let p = principal(v);
            let s = crate::api_scripts::visible_script(&self.central, &p, name, version)
                .await
                .map_err(err)?;
            Ok(outpost_console::scripts::ScriptDetail {
                row: script_row(&s),
                body: s.body,
            })
        })
    }

    fn run_script<'a>(
        &'a self,
        v: &'a Viewer,
        site: &'a str,
        device: &'a str,
        name: &'a str,
        args: &'a [String],
    ) -> ConsoleFuture<'a, String> {
        Box::pin(async move {
            let p = principal(v);
            let r = crate::api_commands::RunRequest {
                site: site.into(),
                device: device.to_string(),
                script: Some(crate::api_scripts::ScriptRef {
                    name: name.to_string(),
                    version: None,
                }),
                args: args.to_vec(),
                ..Default::default()
            };
            let c = crate::api_commands::run_command(&self.central, &p, r)
                .await
                .map_err(|e| match e {
                    ApiError::Conflict(m) => ConsoleError::BadRequest(m),
                    e => err(e),
                })?;
            Ok(c.id.to_string())
        })
    }

    fn bulk_run<'a>(
        &'a self,
        v: &'a Viewer,
        devices: &'a [outpost_console::bulk_actions::DeviceKey],
        req: &'a outpost_console::bulk_actions::BulkRunRequest,
    ) -> ConsoleFuture<'a, String> {
        let target = crate::bulk::BulkTarget::Devices(
            devices
                .iter()
                .map(|(site, device)| crate::bulk::DeviceRef {
                    site: site.as_str().into(),
                    device: device.clone(),
                })
                .collect(),
        );
        Box::pin(async move { run_bulk(&self.central, v, target, req).await })
    }

    fn bulk_run_tag<'a>(
        &'a self,
        v: &'a Viewer,
        tag: &'a str,
        req: &'a outpost_console::bulk_actions::BulkRunRequest,
    ) -> ConsoleFuture<'a, String> {
        let target = crate::bulk::BulkTarget::Tag(tag.to_string());
        Box::pin(async move { run_bulk(&self.central, v, target, req).await })
    }

    fn tag_devices<'a>(
        &'a self,
        v: &'a Viewer,
        devices: &'a [outpost_console::bulk_actions::DeviceKey],
        tags: &'a [String],
    ) -> ConsoleFuture<'a, ()> {
        Box::pin(async move {
            crate::api_tags::add_from_console(&self.central, &principal(v), devices, tags)
                .await
                .map_err(err)
        })
    }

    fn bulks<'a>(
        &'a self,
        v: &'a Viewer,
    ) -> ConsoleFuture<'a, Vec<outpost_console::scripts::BulkRow>> {
        Box::pin(async move {
            let p = principal(v);
            let runs = crate::api_bulk::list_bulks(&self.central, &p, 50)
                .await
                .map_err(err)?;
            let mut out = Vec::with_capacity(runs.len());
            for r in &runs {
                let view = crate::api_bulk::bulk_view(&self.central, r, false)
                    .await
                    .map_err(err)?;
                out.push(bulk_row(&view));
            }
            Ok(out)
        })
    }

    fn files<'a>(
        &'a self,
        v: &'a Viewer,
        state: Option<&'a str>,
    ) -> ConsoleFuture<'a, Vec<outpost_console::files::FileRow>> {
        Box::pin(async move {
            crate::console_files::list(&self.central, &principal(v), state)
                .await
                .map_err(err)
        })
    }

    fn file<'a>(
        &'a self,
        v: &'a Viewer,
        id: &'a str,
    ) -> ConsoleFuture<'a, outpost_console::files::FileRow> {
        Box::pin(async move {
            crate::console_files::one(&self.central, &principal(v), id)
                .await
                .map_err(err)
        })
    }

    fn cancel_file<'a>(&'a self, v: &'a Viewer, id: &'a str) -> ConsoleFuture<'a, ()> {
        Box::pin(async move {
            crate::console_files::cancel(&self.central, &principal(v), id)
                .await
                .map_err(err)
        })
    }

    fn cancel_bulk<'a>(&'a self, v: &'a Viewer, id: &'a str) -> ConsoleFuture<'a, ()> {
        Box::pin(async move {
            let p = principal(v);
            crate::api_bulk::cancel_bulk(&self.central, &p, id)
                .await
                .map(|_| ())
                .map_err(err)
        })
    }

    fn bulk<'a>(
        &'a self,
        v: &'a Viewer,
        id: &'a str,
    ) -> ConsoleFuture<'a, outpost_console::scripts::BulkDetail> {
        Box::pin(async move {
            let p = principal(v);
            let run = crate::api_bulk::visible_bulk(&self.central, &p, id)
                .await
                .map_err(err)?;
            let view = crate::api_bulk::bulk_view(&self.central, &run, true)
                .await
                .map_err(err)?;
            Ok(outpost_console::scripts::BulkDetail {
                row: bulk_row(&view),
                members: view
                    .devices
                    .iter()
                    .map(|m| outpost_console::scripts::BulkMemberRow {
                        site_id: m.site.to_string(),
                        device: m.device.clone(),
                        hostname: m.hostname.clone(),
                        command: m.command.clone(),
                        state: m.state.as_str().into(),
                        held: m.held,
                        exit_code: m.exit_code,
                    })
                    .collect(),
            })
        })
    }
}

fn script_row(s: &crate::scripts::CentralScript) -> outpost_console::scripts::ScriptRow {
    outpost_console::scripts::ScriptRow {
        name: s.name.clone(),
        version: s.version,
        interpreter: s.interpreter.as_str().into(),
        customer: s.customer.as_ref().map(|c| c.to_string()),
        parameters: s.parameters.clone(),
        default_timeout_ms: s.default_timeout_ms,
        created_ms: s.created_ms,
        created_by: s.created_by.clone(),
    }
}

fn bulk_row(v: &crate::api_bulk::BulkView) -> outpost_console::scripts::BulkRow {
    let s = &v.summary;
    outpost_console::scripts::BulkRow {
        id: v.id.clone(),
        command: v.command.clone(),
        concurrency: v.concurrency,
        sites: v.sites.len(),
        created_ms: v.created_ms,
        created_by: v.created_by.clone(),
        cancelled_by: v.cancelled_by.clone(),
        counts: outpost_console::scripts::BulkCounts {
            total: s.total,
            held: s.held,
            pending: s.pending,
            running: s.running,
            done: s.done,
            failed: s.failed,
            cancelled: s.cancelled,
            expired: s.expired,
            finished: s.finished,
        },
    }
}

/// Links of a device (used by tests and the bench).
pub fn device_path(site: &str, device: &str) -> String {
    layout::device_href(site, device)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Rollup;

    fn r(v: f64) -> Rollup {
        Rollup {
            min: v - 1.0,
            max: v + 1.0,
            sum: v * 2.0,
            count: 2,
            last: v,
            last_ts_ms: 0,
        }
    }

    #[test]
    fn wider_buckets_average_by_sample_count_and_keep_extremes() {
        let rows: Vec<(u64, Rollup)> = (0..12).map(|i| (i * 300_000, r(i as f64))).collect();
        let p = merge_rollups(&rows, 1_800_000);
        assert_eq!(p.len(), 2);
        assert_eq!(p[0].t_ms, 0);
        assert_eq!(p[0].avg, 2.5, "mean of 0..=5");
        assert_eq!((p[0].min, p[0].max), (-1.0, 6.0));
        assert_eq!(p[1].t_ms, 1_800_000);
        let same = merge_rollups(&rows, 300_000);
        assert_eq!(same.len(), 12);
        assert_eq!(same[3].avg, 3.0);
    }

    #[test]
    fn a_viewers_capabilities_follow_its_role() {
        let p = |role| Principal {
            tenant: "msp".into(),
            role,
            customers: vec!["dental".into()],
            name: "a".into(),
        };
        let v = viewer_of(p(Role::Viewer), [1; 32]);
        assert!(!v.can.ack_alerts && !v.can.administer);
        assert_eq!(principal(&v), p(Role::Viewer), "round trip");
        assert!(!v.can.manage_deployments && !v.can.create_deployments && !v.can.approve_patches);
        let t = viewer_of(p(Role::Technician), [1; 32]);
        assert!(t.can.ack_alerts && !t.can.administer);
        assert!(t.can.manage_deployments && !t.can.create_deployments && !t.can.approve_patches);
        let a = viewer_of(p(Role::Admin), [1; 32]);
        assert!(a.can.ack_alerts && a.can.administer);
        assert!(a.can.manage_deployments && a.can.create_deployments && a.can.approve_patches);
        assert_eq!(a.customers, vec!["dental".to_string()]);
    }
}
