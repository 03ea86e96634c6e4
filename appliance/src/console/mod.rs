//! The MSP console for this site, served on the admin listener beside
//! `/api/v1` (`outpost-console`'s pages; central serves the same console
//! for a whole tenant). Everything it shows and does works with the
//! uplink down: it reads only this appliance's database.
//!
//! * [`Site`]: the site's identity (the uplink's site id and name once
//!   joined, else [`LOCAL_SITE_ID`] and the configured name), its
//!   [`LiveHub`] and its in-memory [`index::DeviceIndex`]. The ingest
//!   writer and the alert engine call its hooks ([`Site::on_transitions`],
//!   [`Site::on_samples`], [`Site::on_alert`]): each change updates the
//!   index and is published once to the hub, whatever the number of open
//!   pages (no page polls the database).
//! * [`SiteConsole`]: `outpost_console::ConsoleBackend` over the site, the
//!   local users' [`Auth`] (a session cookie, the admin token as a bearer,
//!   or the sign-in of `admin-token` with the token as password), the
//!   role table ([`required_role`]) and the alert engine's
//!   acknowledgement path.
//!
//! Owns no table and no rule: reads go through the storage crate's and
//! the alert store's functions, decisions through [`Auth`] and the engine.

pub(crate) mod bulk;
pub(crate) mod commands;
pub(crate) mod deployments;
pub(crate) mod files;
pub mod index;
pub(crate) mod patches;
pub(crate) mod scripts;

use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, HeaderValue, Method};
use outpost_console::backend::{
    AlertDetail, AlertEvent, AlertList, AlertQuery, AlertView, BackendInfo, Capabilities,
    ConsoleBackend, ConsoleError, ConsoleFuture, CustomerHealth, Dashboard, DeviceDetail,
    DeviceList, DeviceQuery, Facets, Features, LatestValue, LoginForm, LoginOutcome, MetricKey,
    MetricSeries, Notice, Range, ScopeKind, SiteDetail, SiteHealth, StatusChange, Viewer,
};
use outpost_console::chart::ChartPoint;
use outpost_console::format;
use outpost_console::live::{AlertChange, DeviceChange, LiveEvent, LiveHub};
use outpost_proto::DeviceId;
use outpost_proto::messages::MetricValue;
use outpost_storage::model::StatusTransition;
use outpost_storage::query::{self, HistoryQuery, Resolution};
use outpost_storage::{Store, registry};
use outpost_uplink::service::{LinkState, Uplink};
use outpost_web::login::Role;

use crate::alerts::engine::EngineHandle;
use crate::alerts::model::{Alert, AlertState, EventKind};
use crate::alerts::store as alert_store;
use crate::ingest::live::LiveSessions;
use crate::users::auth::{
    self, Auth, Authenticated, Caller, Credential, LoginError, required_role,
};
use index::{DeviceIndex, Row, SiteRef, Snapshot};

/// The tenant of every live event and viewer scope: the appliance shows
/// one site, whole, to everybody signed in.
pub const LIVE_TENANT: &str = "site";

/// The site id in links before the appliance joined central (and always
/// accepted as another name of this site).
pub const LOCAL_SITE_ID: &str = "local";

/// The route whose role acknowledging alerts needs.
const ACK_ROUTE: &str = "/api/v1/alerts/{id}/ack";
/// The route whose role administering (users) needs.
const USERS_ROUTE: &str = "/api/v1/users";

/// How stale the index may be before a page merges the database again
/// (last-seen times of heartbeats, new devices, tags, revocations), and
/// how stale its IP addresses.
#[derive(Debug, Clone, Copy)]
pub struct Freshness {
    pub state: Duration,
    pub ips: Duration,
}

impl Default for Freshness {
    fn default() -> Self {
        Freshness {
            state: Duration::from_secs(2),
            ips: Duration::from_secs(60),
        }
    }
}

/// When the index last merged the database.
#[derive(Debug, Default)]
struct Merged {
    at: Option<Instant>,
    ips_at: Option<Instant>,
}

/// The site the console shows (see the module docs).
pub struct Site {
    store: Store,
    uplink: Arc<Uplink>,
    /// The name shown until the appliance joins central.
    name: String,
    pub hub: LiveHub,
    pub index: DeviceIndex,
    freshness: Freshness,
    merged: Mutex<Merged>,
    /// One merge at a time (the others wait for it, then use it).
    merging: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for Site {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Site")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// The machine's hostname, or `site`.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "site".into())
}

impl Site {
    /// Loads the index (every device, its latest values, the open alerts):
    /// call before the writer and the alert engine start, so no change
    /// is missed between the load and the hooks.
    pub fn load(
        store: Store,
        uplink: Arc<Uplink>,
        name: String,
        hub: LiveHub,
        freshness: Freshness,
    ) -> outpost_storage::error::Result<Arc<Site>> {
        let index = DeviceIndex::default();
        index.load_alerts(&alert_store::load_open(&store)?);
        index.merge(Snapshot::read(&store, &Default::default(), true)?);
        let now = Instant::now();
        Ok(Arc::new(Site {
            store,
            uplink,
            name,
            hub,
            index,
            freshness,
            merged: Mutex::new(Merged {
                at: Some(now),
                ips_at: Some(now),
            }),
            merging: tokio::sync::Mutex::new(()),
        }))
    }

    /// The site's id and name now.
    pub fn identity(&self) -> SiteRef {
        match self.uplink.joined() {
            Some(j) => SiteRef {
                id: j.site_id.to_string(),
                name: j.site_name,
            },
            None => SiteRef {
                id: LOCAL_SITE_ID.into(),
                name: self.name.clone(),
            },
        }
    }

    /// This site, if `site` names it; else 404.
    fn check(&self, site: &str) -> Result<SiteRef, ConsoleError> {
        let me = self.identity();
        if site == me.id || site == LOCAL_SITE_ID {
            Ok(me)
        } else {
            Err(ConsoleError::NotFound(format!(
                "no site {site}: this appliance is site {} ({})",
                me.name, me.id
            )))
        }
    }

    /// Status transitions the writer made durable: the index, then one
    /// live event each. A device the index does not know yet (just
    /// enrolled) is read from the registry once.
    pub fn on_transitions(&self, ts: &[(DeviceId, StatusTransition)]) {
        let site = self.identity();
        for (d, t) in ts {
            let (before, after) = match self.index.on_transition(*d, t) {
                Some((b, a)) => (Some(b), a),
                None => {
                    match registry::get(&self.store, *d) {
                        Ok(Some(r)) => self.index.insert(Row::of_record(&r)),
                        Ok(None) => continue,
                        Err(e) => {
                            tracing::warn!(device = %d, error = %e, "console: reading a new device");
                            continue;
                        }
                    }
                    match self.index.on_transition(*d, t) {
                        Some((_, a)) => (None, a),
                        None => continue,
                    }
                }
            };
            self.hub.publish(LiveEvent::device(
                LIVE_TENANT,
                &DeviceChange {
                    site_id: site.id.clone(),
                    site_name: site.name.clone(),
                    customer: after.customer.clone(),
                    device: d.to_string(),
                    hostname: after.hostname.clone(),
                    old_status: before.map(|b| b.status_str().to_string()),
                    status: after.status_str().to_string(),
                    status_since_ms: after.status_since_ms,
                    last_seen_ms: after.last_seen_ms,
                },
            ));
        }
    }

    /// Values a group commit stored (the list's CPU, memory, disk).
    pub fn on_samples(&self, batch: &[(DeviceId, Vec<MetricValue>)], now_ms: u64) {
        self.index.on_samples(batch, now_ms);
    }

    /// An alert change the engine wrote: the counts, then one live event.
    pub fn on_alert(&self, a: &Alert, before: Option<AlertState>) {
        self.index.on_alert(a);
        let site = self.identity();
        self.hub.publish(LiveEvent::alert(
            LIVE_TENANT,
            &AlertChange {
                site_id: site.id,
                site_name: site.name,
                customer: a.customer.to_string(),
                alert_id: a.id,
                device: Some(a.device.to_string()),
                hostname: Some(a.hostname.clone()),
                rule: a.rule_name.clone(),
                severity: a.severity.as_str().to_string(),
                old_state: before.map(|s| s.as_str().to_string()),
                state: a.state.as_str().to_string(),
                at_ms: alert_at(a),
                message: alert_message(a),
                acked_by: a.acknowledged_by.clone(),
            },
        ));
    }

    /// Tags the API just stored for `device` (`PUT
    /// /api/v1/devices/{id}/tags`): the index takes them at once, so a
    /// search right after finds them (a device the index does not know
    /// yet comes with the next merge).
    pub fn on_tags(&self, device: DeviceId, tags: &[String]) {
        if !self.index.set_tags(device, tags) {
            self.mark_stale();
        }
    }

    /// The database changed behind the hooks (tags set from central):
    /// the next page merges it, however recent the last merge.
    pub fn mark_stale(&self) {
        self.merged().at = None;
    }

    /// Merges the database into the index if it is older than
    /// [`Freshness`] allows (one merge at a time, off the async threads).
    pub async fn fresh(self: &Arc<Self>) -> Result<(), ConsoleError> {
        let due = |m: &Merged| {
            let old = |at: Option<Instant>, max: Duration| at.is_none_or(|t| t.elapsed() >= max);
            (
                old(m.at, self.freshness.state),
                old(m.ips_at, self.freshness.ips),
            )
        };
        if !due(&self.merged()).0 {
            return Ok(());
        }
        let _one = self.merging.lock().await;
        let (state, ips) = due(&self.merged());
        if !state {
            return Ok(());
        }
        let site = self.clone();
        tokio::task::spawn_blocking(move || site.merge_now(ips))
            .await
            .map_err(|e| ConsoleError::Internal(format!("index merge task failed: {e}")))?
            .map_err(|e| ConsoleError::Internal(format!("reading the devices: {e}")))
    }

    fn merged(&self) -> std::sync::MutexGuard<'_, Merged> {
        self.merged.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reads the database and merges it into the index now.
    pub fn merge_now(&self, with_ips: bool) -> outpost_storage::error::Result<()> {
        let started = Instant::now();
        let snapshot = Snapshot::read(&self.store, &self.index.known(), with_ips)?;
        self.index.merge(snapshot);
        let mut m = self.merged();
        m.at = Some(Instant::now());
        if with_ips {
            m.ips_at = m.at;
        }
        tracing::debug!(
            devices = self.index.len(),
            with_ips,
            ms = started.elapsed().as_millis() as u64,
            "console index merged"
        );
        Ok(())
    }
}

/// When an alert last changed state.
fn alert_at(a: &Alert) -> u64 {
    a.resolved_ms.or(a.fired_ms).unwrap_or(a.started_ms)
}

/// What an alert says, in one line: `cpu high on web-1 (/): 97.2 > 90`.
pub fn alert_message(a: &Alert) -> String {
    let mut m = format!("{} on {}", a.rule_name, a.hostname);
    if !a.label.is_empty() {
        m.push_str(&format!(" ({})", a.label));
    }
    match (a.value, a.comparison, a.threshold) {
        (Some(v), Some(c), Some(t)) => m.push_str(&format!(
            ": {} {} {}",
            format::number(v),
            c.symbol(),
            format::number(t)
        )),
        (Some(v), _, _) => m.push_str(&format!(": {}", format::number(v))),
        _ => {}
    }
    if let Some(s) = &a.stale {
        m.push_str(&format!(" ({s})"));
    }
    m
}

/// An alert as the console shows it.
pub fn alert_view(a: &Alert, site: &SiteRef) -> AlertView {
    AlertView {
        site_id: site.id.clone(),
        site_name: site.name.clone(),
        customer: a.customer.to_string(),
        alert_id: a.id,
        device: Some(a.device.to_string()),
        hostname: Some(a.hostname.clone()),
        rule: a.rule_name.clone(),
        severity: a.severity.as_str().to_string(),
        state: a.state.as_str().to_string(),
        at_ms: alert_at(a),
        first_ms: a.started_ms,
        message: alert_message(a),
        value: a.value,
        acked_by: a.acknowledged_by.clone(),
        acked_ms: a.acknowledged_ms.unwrap_or(0),
        ack_comment: a.ack_comment.clone().filter(|c| !c.is_empty()),
    }
}

/// One line of an alert's history: transitions by state name;
/// acknowledgements and comments with who and what.
pub fn history_event(e: &crate::alerts::model::AlertEvent) -> AlertEvent {
    match e.event {
        EventKind::Acknowledged | EventKind::Commented => {
            // Recorded as `by NAME: COMMENT`.
            let rest = e.detail.strip_prefix("by ").unwrap_or(&e.detail);
            let (by, text) = rest.split_once(": ").unwrap_or((rest, ""));
            AlertEvent {
                at_ms: e.at_ms,
                what: if e.event == EventKind::Acknowledged {
                    "acknowledged".into()
                } else {
                    "commented".into()
                },
                by: Some(by.trim_end_matches(':').to_string()),
                text: text.to_string(),
                value: None,
            }
        }
        kind => AlertEvent {
            at_ms: e.at_ms,
            what: kind.as_str().to_string(),
            by: None,
            text: e.detail.clone(),
            value: e.value,
        },
    }
}

/// The role a viewer's label names.
fn role_of(label: &str) -> Role {
    match label {
        "admin" => Role::Admin,
        "technician" => Role::Technician,
        _ => Role::Viewer,
    }
}

/// The viewer of an authenticated caller; `subject` is the SHA-256 of its
/// credential (session secret or token). What it may do is the role
/// table's answer for the routes the console's actions stand for.
pub fn viewer_of(c: &Caller, subject: [u8; 32]) -> Viewer {
    Viewer {
        name: c.user.clone(),
        tenant: LIVE_TENANT.into(),
        customers: Vec::new(),
        role: c.role.as_str().to_string(),
        can: Capabilities {
            ack_alerts: c.role.allows(required_role(&Method::POST, ACK_ROUTE)),
            run_commands: c
                .role
                .allows(required_role(&Method::POST, commands::COMMANDS_ROUTE)),
            approve_patches: false,
            administer: c.role.allows(required_role(&Method::POST, USERS_ROUTE)),
            manage_deployments: c
                .role
                .allows(required_role(&Method::POST, deployments::MANAGE_ROUTE)),
            create_deployments: c
                .role
                .allows(required_role(&Method::POST, deployments::CREATE_ROUTE))
                && c.role
                    .allows(required_role(&Method::POST, deployments::ABORT_ROUTE)),
        },
        csrf_subject: subject.to_vec(),
    }
}

/// The caller a viewer stands for (role as read at this request).
fn caller_of(v: &Viewer) -> Caller {
    Caller {
        user: v.name.clone(),
        role: role_of(&v.role),
        credential: Credential::Session,
    }
}

fn api_err(e: outpost_web::ApiError) -> ConsoleError {
    use outpost_web::ApiError as A;
    match e {
        A::NotFound(m) => ConsoleError::NotFound(m),
        A::Forbidden(m) => ConsoleError::Forbidden(m),
        A::BadRequest(m) => ConsoleError::BadRequest(m),
        e => ConsoleError::Internal(e.to_string()),
    }
}

fn internal(e: impl std::fmt::Display) -> ConsoleError {
    ConsoleError::Internal(e.to_string())
}

/// Runs a storage read off the async threads.
async fn blocking<T: Send + 'static>(
    store: &Store,
    f: impl FnOnce(&Store) -> Result<T, ConsoleError> + Send + 'static,
) -> Result<T, ConsoleError> {
    let store = store.clone();
    tokio::task::spawn_blocking(move || f(&store))
        .await
        .map_err(|e| internal(format!("storage task failed: {e}")))?
}

/// Spacing of the points of a chart: for rollups the step asked; for raw
/// samples the median gap between them (so a line breaks only where
/// samples are missing).
pub fn point_step(points: &[ChartPoint], asked_ms: u64) -> u64 {
    if asked_ms > 0 {
        return asked_ms;
    }
    let mut gaps: Vec<u64> = points
        .windows(2)
        .map(|w| w[1].t_ms.saturating_sub(w[0].t_ms))
        .filter(|g| *g > 0)
        .collect();
    if gaps.is_empty() {
        return 60_000;
    }
    gaps.sort_unstable();
    gaps[gaps.len() / 2].max(1_000)
}

/// How a range is read: the step asked of the history (0: every raw
/// sample); below the rollup width it aggregates raw samples, from it on
/// it merges the stored 5-minute rollups.
pub fn range_step(range: Range) -> u64 {
    const MIN: u64 = 60_000;
    match range {
        Range::H1 => 0,
        Range::D1 => 4 * MIN,
        Range::D7 => 30 * MIN,
        Range::D30 => 120 * MIN,
    }
}

/// Most points read for one chart.
const MAX_CHART_POINTS: usize = 10_000;

/// The console's backend on the appliance (see the module docs).
pub struct SiteConsole {
    pub site: Arc<Site>,
    pub auth: Arc<Auth>,
    /// Acknowledgements go through the engine (history, audit, uplink).
    pub alerts: EngineHandle,
    /// Whether a device's session is open now (device page).
    pub sessions: Arc<LiveSessions>,
    /// Remote commands (the command pages); `None`: the pages say they
    /// are not available.
    pub commands: Option<crate::commands::service::CommandService>,
    /// Patch assessment (the patch pages); `None`: the pages say they are
    /// not available.
    pub patches: Option<crate::patches::PatchService>,
    /// Approvals and deployments (the deployment pages); `None`: the
    /// pages say they are not available.
    pub deployments: Option<crate::deploy::api::DeployApi>,
    /// File transfers (the File transfers pages); `None`: the pages say
    /// they are not available.
    pub files: Option<crate::files::service::FileService>,
}

impl SiteConsole {
    fn store(&self) -> &Store {
        &self.site.store
    }

    /// Facets of the lists: the site's customers, this site, its tags.
    fn facets(&self, site: &SiteRef) -> Facets {
        let (customers, tags) = self.site.index.facets();
        Facets {
            sites: vec![(site.id.clone(), site.name.clone(), customers.join(", "))],
            customers,
            tags,
        }
    }

    fn site_health(
        &self,
        site: &SiteRef,
        customer: String,
        c: outpost_console::backend::Counts,
    ) -> SiteHealth {
        SiteHealth {
            site_id: site.id.clone(),
            name: site.name.clone(),
            customer,
            counts: c,
            link: None,
            stale: false,
            lag_ms: None,
            marks: Vec::new(),
        }
    }

    /// The uplink's facts and, when central is out of reach, the notice
    /// that says what still works.
    fn uplink_facts(&self) -> (Vec<(String, String)>, Vec<Notice>) {
        let up = &self.site.uplink;
        let (state, since, error) = up.link_state();
        let mut facts = vec![("uplink".to_string(), state.as_str().replace('_', " "))];
        let mut notices = Vec::new();
        if let Some(j) = up.joined() {
            facts.push(("central".into(), j.central.clone()));
            let s = up.outbox().stats();
            facts.push((
                "waiting for central".into(),
                format!(
                    "{} batch{} ({})",
                    s.backlog_batches,
                    if s.backlog_batches == 1 { "" } else { "es" },
                    format::bytes(s.backlog_bytes as f64)
                ),
            ));
            if state != LinkState::Connected {
                let when = since.map_or_else(String::new, |t| format!(" since {}", format::utc(t)));
                let why = error.map_or_else(String::new, |e| format!(" ({e})"));
                notices.push(Notice {
                    id: "uplink-down".into(),
                    text: format!(
                        "Central is out of reach{when}{why}. Everything here works on site: devices, charts, alerts and acknowledgements; central catches up when the link returns."
                    ),
                });
            }
        }
        (facts, notices)
    }
}

impl ConsoleBackend for SiteConsole {
    fn info(&self) -> BackendInfo {
        BackendInfo {
            product: format!("site {}", self.site.identity().name),
            scope: ScopeKind::Site,
            login_tenant: false,
            features: Features {
                tags: true,
                tag_devices: true,
                commands: self.commands.is_some(),
                scripts: self.commands.is_some(),
                patches: self.patches.is_some(),
                deployments: self.deployments.is_some(),
                files: self.files.is_some(),
                ..Features::default()
            },
        }
    }

    fn live(&self) -> &LiveHub {
        &self.site.hub
    }

    fn viewer<'a>(&'a self, h: &'a HeaderMap) -> ConsoleFuture<'a, Option<Viewer>> {
        Box::pin(async move {
            let subject = match (auth::bearer(h), auth::session_cookie(h)) {
                (Some(t), _) => outpost_proto::pki::sha256(t.as_bytes()),
                (None, Some(s)) => outpost_proto::pki::sha256(s.as_bytes()),
                (None, None) => return Ok(None),
            };
            match self.auth.authenticate(h).await.map_err(api_err)? {
                Authenticated::Caller(c) => Ok(Some(viewer_of(&c, subject))),
                _ => Ok(None),
            }
        })
    }

    fn login<'a>(
        &'a self,
        f: LoginForm,
        peer: Option<IpAddr>,
        h: &'a HeaderMap,
    ) -> ConsoleFuture<'a, LoginOutcome> {
        Box::pin(async move {
            let now = outpost_storage::now_ms();
            match self
                .auth
                .login(f.username.trim(), f.password, peer, now)
                .await
            {
                Ok(ok) => {
                    let cookie = self.auth.session_set_cookie(&ok, h);
                    Ok(LoginOutcome::Success {
                        set_cookie: HeaderValue::from_str(&cookie).map_err(internal)?,
                    })
                }
                Err(LoginError::Unauthorized) => Ok(LoginOutcome::Refused),
                Err(LoginError::Throttled { retry_after_secs }) => {
                    Ok(LoginOutcome::Throttled { retry_after_secs })
                }
                Err(LoginError::Busy) => Ok(LoginOutcome::Busy {
                    retry_after_secs: 1,
                }),
                Err(LoginError::Internal(m)) => Err(ConsoleError::Internal(m)),
            }
        })
    }

    fn logout<'a>(&'a self, h: &'a HeaderMap) -> ConsoleFuture<'a, Option<HeaderValue>> {
        Box::pin(async move {
            self.auth.logout(h).await.map_err(api_err)?;
            Ok(Some(
                HeaderValue::from_str(&self.auth.clear_set_cookie(h)).map_err(internal)?,
            ))
        })
    }

    fn dashboard<'a>(&'a self, _v: &'a Viewer) -> ConsoleFuture<'a, Dashboard> {
        Box::pin(async move {
            self.site.fresh().await?;
            let site = self.site.identity();
            let c = self.site.index.counts();
            let mut customers: Vec<CustomerHealth> = c
                .by_customer
                .iter()
                .map(|(cu, n)| CustomerHealth {
                    customer: cu.clone(),
                    counts: *n,
                    sites: vec![self.site_health(&site, cu.clone(), *n)],
                })
                .collect();
            if customers.is_empty() {
                // No device yet: the site itself, with its customer at
                // central if joined.
                let cu = self
                    .site
                    .uplink
                    .joined()
                    .map_or_else(|| "no devices yet".to_string(), |j| j.customer.to_string());
                customers.push(CustomerHealth {
                    customer: cu.clone(),
                    counts: c.totals,
                    sites: vec![self.site_health(&site, cu, c.totals)],
                });
            }
            // The patch compliance tile, as central's, once patches exist.
            let patch_compliance = if self.patches.is_some() {
                let now = outpost_storage::now_ms();
                patches::on_pool(self, move |p| patches::compliance_percent(p, now)).await?
            } else {
                None
            };
            Ok(Dashboard {
                totals: c.totals,
                firing_by_severity: c.firing_by_severity,
                stale_sites: 0,
                customers,
                patch_compliance,
            })
        })
    }

    fn site<'a>(&'a self, _v: &'a Viewer, site: &'a str) -> ConsoleFuture<'a, SiteDetail> {
        Box::pin(async move {
            let me = self.site.check(site)?;
            self.site.fresh().await?;
            let c = self.site.index.counts();
            let (customers, _) = self.site.index.facets();
            let (facts, notices) = self.uplink_facts();
            Ok(SiteDetail {
                health: self.site_health(&me, customers.join(", "), c.totals),
                facts,
                notices,
                dead_lettered: 0,
                dead_letters: Vec::new(),
            })
        })
    }

    fn devices<'a>(&'a self, _v: &'a Viewer, q: &'a DeviceQuery) -> ConsoleFuture<'a, DeviceList> {
        Box::pin(async move {
            let me = match &q.site {
                Some(s) => self.site.check(s)?,
                None => self.site.identity(),
            };
            self.site.fresh().await?;
            let page = self
                .site
                .index
                .query(q, &me)
                .map_err(|e| ConsoleError::BadRequest(e.to_string()))?;
            Ok(DeviceList {
                rows: page.rows,
                total: page.total,
                total_more: false,
                next: page.next,
                facets: self.facets(&me),
            })
        })
    }

    fn device<'a>(
        &'a self,
        _v: &'a Viewer,
        site: &'a str,
        device: &'a str,
    ) -> ConsoleFuture<'a, DeviceDetail> {
        Box::pin(async move {
            let me = self.site.check(site)?;
            let id: DeviceId = device
                .parse()
                .map_err(|_| ConsoleError::NotFound(format!("no device {device}")))?;
            let connected = self.sessions.is_connected(id);
            let d = blocking(self.store(), move |s| {
                let v = query::device_view(s, id)
                    .map_err(internal)?
                    .ok_or_else(|| ConsoleError::NotFound(format!("no device {id}")))?;
                let inv = registry::inventory(s, id).map_err(internal)?;
                let latest = query::latest_values(s, id).map_err(internal)?;
                let log = query::status_log(s, id, 0, u64::MAX, 100_000).map_err(internal)?;
                let tags = registry::tags(s, id).map_err(internal)?;
                let alerts =
                    alert_store::list_alerts(s, |a| a.device == id, 200).map_err(internal)?;
                Ok((v, inv, latest, log, tags, alerts))
            })
            .await?;
            let (v, inv, latest, log, tags, alerts) = d;
            let r = &v.record;
            let mut row = Row::of_record(r);
            if let Some(st) = &v.state {
                row.status = st.status;
                row.status_since_ms = st.status_since_ms;
                row.last_seen_ms = st.last_seen_ms;
            }
            let values: Vec<MetricValue> = latest
                .iter()
                .map(|l| MetricValue {
                    name: l.name.clone(),
                    label: l.label.clone(),
                    value: l.value,
                })
                .collect();
            let mut view = index::view(&row, &me, (0, false));
            let latest_of = |name: &str| {
                values
                    .iter()
                    .filter(|v| v.name == name)
                    .map(|v| v.value)
                    .reduce(f64::max)
            };
            view.cpu = latest_of(outpost_proto::metric_names::CPU);
            view.memory = latest_of(outpost_proto::metric_names::MEMORY);
            view.disk = latest_of(outpost_proto::metric_names::DISK_USED_PERCENT);
            view.tags = tags;
            view.ips = inv.as_ref().map(index::inventory_ips).unwrap_or_default();
            view.open_alerts = alerts.iter().filter(|a| a.state.is_open()).count() as u32;
            view.critical = alerts.iter().any(|a| {
                a.state == AlertState::Firing
                    && a.severity == crate::alerts::model::Severity::Critical
            });
            let mut facts: Vec<(String, String)> = vec![
                ("Enrolled".into(), format::utc(r.enrolled_at_ms)),
                ("Kernel".into(), r.kernel.clone()),
                ("Architecture".into(), r.arch.clone()),
            ];
            if let Some(at) = r.revoked_at_ms {
                facts.push(("Revoked".into(), format::utc(at)));
            }
            if let Some(inv) = &inv {
                if !inv.cpu_model.is_empty() {
                    facts.push((
                        "CPU".into(),
                        format!("{} · {} cores", inv.cpu_model, inv.cpu_cores),
                    ));
                }
                if inv.memory_total_bytes > 0 {
                    facts.push((
                        "Memory".into(),
                        format::bytes(inv.memory_total_bytes as f64),
                    ));
                }
                let disks: Vec<String> = inv
                    .disks
                    .iter()
                    .map(|d| {
                        format!(
                            "{} {} ({})",
                            d.mount,
                            format::bytes(d.total_bytes as f64),
                            d.filesystem
                        )
                    })
                    .collect();
                if !disks.is_empty() {
                    facts.push(("Disks".into(), disks.join(", ")));
                }
                let nics: Vec<String> = inv
                    .nics
                    .iter()
                    .map(|n| format!("{} {}", n.name, n.mac))
                    .collect();
                if !nics.is_empty() {
                    facts.push(("Interfaces".into(), nics.join(", ")));
                }
            }
            if let Some(st) = &v.state {
                facts.push((
                    "Heartbeat every".into(),
                    format::duration_ms(u64::from(st.heartbeat_interval_ms)),
                ));
                facts.push((
                    "Records stored".into(),
                    format::count(st.records_stored as i64),
                ));
            }
            facts.push((
                "Session".into(),
                if connected { "open" } else { "closed" }.into(),
            ));
            let mut alert_views: Vec<AlertView> =
                alerts.iter().map(|a| alert_view(a, &me)).collect();
            alert_views.sort_by_key(|a| (!a.is_open(), std::cmp::Reverse(a.at_ms)));
            Ok(DeviceDetail {
                device: view,
                inventory: facts,
                latest: latest
                    .into_iter()
                    .map(|l| LatestValue {
                        name: l.name,
                        label: l.label,
                        value: l.value,
                        at_ms: l.ts_ms,
                    })
                    .collect(),
                transitions: log
                    .iter()
                    .rev()
                    .take(50)
                    .map(|t| StatusChange {
                        at_ms: t.at_ms,
                        status: t.to.as_str().to_string(),
                    })
                    .collect(),
                alerts: alert_views,
                panels: Vec::new(),
            })
        })
    }

    fn series<'a>(
        &'a self,
        _v: &'a Viewer,
        site: &'a str,
        device: &'a str,
        keys: &'a [MetricKey],
        range: Range,
        now_ms: u64,
    ) -> ConsoleFuture<'a, Vec<MetricSeries>> {
        Box::pin(async move {
            self.site.check(site)?;
            let id: DeviceId = device
                .parse()
                .map_err(|_| ConsoleError::NotFound(format!("no device {device}")))?;
            let step = range_step(range);
            let from = now_ms.saturating_sub(range.duration_ms());
            let keys = keys.to_vec();
            blocking(self.store(), move |s| {
                let bucket = s.rollup_bucket_ms();
                let mut out = Vec::with_capacity(keys.len());
                for k in keys {
                    let q = HistoryQuery {
                        name: k.name.clone(),
                        label: k.label.clone(),
                        from_ms: if step > 0 { from - from % step } else { from },
                        to_ms: now_ms.saturating_add(1),
                        step_ms: step,
                        limit: MAX_CHART_POINTS,
                    };
                    let (res, points) = query::history(s, id, &q)
                        .map_err(internal)?
                        .unwrap_or((Resolution::Raw, Vec::new()));
                    let points: Vec<ChartPoint> = points
                        .into_iter()
                        .map(|p| ChartPoint {
                            t_ms: p.ts_ms,
                            avg: p.avg,
                            min: p.min,
                            max: p.max,
                        })
                        .collect();
                    let source = match (res, step) {
                        (Resolution::Raw, 0) => "raw samples".to_string(),
                        (Resolution::Raw, st) => {
                            format!("{} averages of raw samples", format::duration_ms(st))
                        }
                        (Resolution::Rollup, st) if st == bucket => {
                            format!("{} rollups", format::duration_ms(bucket))
                        }
                        (Resolution::Rollup, st) => format!(
                            "{} averages of {} rollups",
                            format::duration_ms(st),
                            format::duration_ms(bucket)
                        ),
                    };
                    out.push(MetricSeries {
                        step_ms: point_step(&points, step),
                        key: k,
                        source,
                        points,
                    });
                }
                Ok(out)
            })
            .await
        })
    }

    fn alerts<'a>(&'a self, _v: &'a Viewer, q: &'a AlertQuery) -> ConsoleFuture<'a, AlertList> {
        Box::pin(async move {
            let me = match &q.site {
                Some(s) => self.site.check(s)?,
                None => self.site.identity(),
            };
            let state = q.state.clone().unwrap_or_else(|| "open".into());
            if !["open", "firing", "pending", "resolved", "cleared", "all"]
                .contains(&state.as_str())
            {
                return Err(ConsoleError::BadRequest(format!(
                    "state {state:?}: use open, firing, pending, resolved, cleared or all"
                )));
            }
            let (customer, severity) = (q.customer.clone(), q.severity.clone());
            let keep = move |a: &Alert| {
                customer.as_deref().is_none_or(|c| a.customer.as_str() == c)
                    && severity.as_deref().is_none_or(|s| a.severity.as_str() == s)
                    && match state.as_str() {
                        "open" => a.state.is_open(),
                        "all" => true,
                        s => a.state.as_str() == s,
                    }
            };
            let open_only = q.state.as_deref().unwrap_or("open") == "open"
                || matches!(q.state.as_deref(), Some("firing" | "pending"));
            let mut rows = blocking(self.store(), move |s| {
                if open_only {
                    // The open index: no scan of every alert ever raised.
                    Ok(alert_store::load_open(s)
                        .map_err(internal)?
                        .into_iter()
                        .filter(|a| keep(a))
                        .collect::<Vec<_>>())
                } else {
                    alert_store::list_alerts(s, keep, usize::MAX).map_err(internal)
                }
            })
            .await?;
            rows.sort_by_key(|a| std::cmp::Reverse((alert_at(a), a.id)));
            let total = rows.len() as u64;
            rows.truncate(q.limit.max(1));
            Ok(AlertList {
                rows: rows.iter().map(|a| alert_view(a, &me)).collect(),
                total,
                facets: self.facets(&me),
            })
        })
    }

    fn alert<'a>(
        &'a self,
        _v: &'a Viewer,
        site: &'a str,
        alert_id: u64,
    ) -> ConsoleFuture<'a, AlertDetail> {
        Box::pin(async move {
            let me = self.site.check(site)?;
            let (a, events) = blocking(self.store(), move |s| {
                let a = alert_store::get_alert(s, alert_id)
                    .map_err(internal)?
                    .ok_or_else(|| ConsoleError::NotFound(format!("no alert {alert_id}")))?;
                Ok((a, alert_store::events(s, alert_id).map_err(internal)?))
            })
            .await?;
            Ok(AlertDetail {
                alert: alert_view(&a, &me),
                history: events.iter().map(history_event).collect(),
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
            self.site.check(site)?;
            let caller = caller_of(v);
            caller
                .require(required_role(&Method::POST, ACK_ROUTE))
                .map_err(api_err)?;
            self.alerts
                .ack(alert_id, caller.user, comment.to_string())
                .await
                .map(|_| ())
                .map_err(|e| {
                    if e.starts_with("no alert") {
                        ConsoleError::NotFound(e)
                    } else {
                        ConsoleError::BadRequest(e)
                    }
                })
        })
    }

    fn commands<'a>(
        &'a self,
        _v: &'a Viewer,
        q: &'a outpost_console::commands::CommandQuery,
    ) -> ConsoleFuture<'a, Vec<outpost_console::commands::CommandRow>> {
        Box::pin(self.command_rows(q))
    }

    fn command<'a>(
        &'a self,
        _v: &'a Viewer,
        id: &'a str,
    ) -> ConsoleFuture<'a, outpost_console::commands::CommandDetail> {
        Box::pin(self.command_detail(id))
    }

    fn run_command<'a>(
        &'a self,
        v: &'a Viewer,
        site: &'a str,
        device: &'a str,
        req: &'a outpost_console::commands::RunCommand,
    ) -> ConsoleFuture<'a, String> {
        Box::pin(self.command_run(v, site, device, req))
    }

    fn cancel_command<'a>(&'a self, v: &'a Viewer, id: &'a str) -> ConsoleFuture<'a, ()> {
        Box::pin(self.command_cancel(v, id))
    }

    fn scripts<'a>(
        &'a self,
        _v: &'a Viewer,
    ) -> ConsoleFuture<'a, Vec<outpost_console::scripts::ScriptRow>> {
        Box::pin(self.script_rows())
    }

    fn script<'a>(
        &'a self,
        _v: &'a Viewer,
        name: &'a str,
        version: Option<u32>,
    ) -> ConsoleFuture<'a, outpost_console::scripts::ScriptDetail> {
        Box::pin(self.script_detail(name, version))
    }

    fn run_script<'a>(
        &'a self,
        v: &'a Viewer,
        site: &'a str,
        device: &'a str,
        name: &'a str,
        args: &'a [String],
    ) -> ConsoleFuture<'a, String> {
        Box::pin(self.script_run(v, site, device, name, args))
    }

    fn bulks<'a>(
        &'a self,
        _v: &'a Viewer,
    ) -> ConsoleFuture<'a, Vec<outpost_console::scripts::BulkRow>> {
        Box::pin(self.bulk_rows())
    }

    fn bulk<'a>(
        &'a self,
        _v: &'a Viewer,
        id: &'a str,
    ) -> ConsoleFuture<'a, outpost_console::scripts::BulkDetail> {
        Box::pin(self.bulk_of(id))
    }

    fn cancel_bulk<'a>(&'a self, v: &'a Viewer, id: &'a str) -> ConsoleFuture<'a, ()> {
        Box::pin(self.bulk_cancel(v, id))
    }

    // The patch pages read the patch service's in-memory view and a few
    // registry rows: short reads, done inline.
    fn patch_overview<'a>(
        &'a self,
        _v: &'a Viewer,
    ) -> ConsoleFuture<'a, outpost_console::patches::PatchOverview> {
        Box::pin(async move {
            let now = outpost_storage::now_ms();
            patches::on_pool(self, move |p| patches::overview(p, now)).await
        })
    }

    fn patch_cve<'a>(
        &'a self,
        _v: &'a Viewer,
        cve: &'a str,
    ) -> ConsoleFuture<'a, outpost_console::patches::CvePage> {
        Box::pin(async move {
            let cve = cve.to_string();
            patches::on_pool(self, move |p| patches::cve(p, &cve)).await
        })
    }

    fn device_patches<'a>(
        &'a self,
        _v: &'a Viewer,
        site: &'a str,
        device: &'a str,
    ) -> ConsoleFuture<'a, Option<outpost_console::patches::DevicePatchView>> {
        Box::pin(async move {
            let (site, device) = (site.to_string(), device.to_string());
            patches::on_pool(self, move |p| patches::device(p, &site, &device)).await
        })
    }

    fn patch_report_csv<'a>(
        &'a self,
        _v: &'a Viewer,
        customer: Option<&'a str>,
    ) -> ConsoleFuture<'a, String> {
        Box::pin(async move {
            let customer = customer.map(str::to_string);
            patches::on_pool(self, move |p| patches::report_csv(p, customer.as_deref())).await
        })
    }

    fn patch_report_pdf<'a>(
        &'a self,
        _v: &'a Viewer,
        customer: Option<&'a str>,
    ) -> ConsoleFuture<'a, Vec<u8>> {
        Box::pin(async move {
            let customer = customer.map(str::to_string);
            patches::on_pool(self, move |p| patches::report_pdf(p, customer.as_deref())).await
        })
    }

    fn deployments<'a>(
        &'a self,
        _v: &'a Viewer,
    ) -> ConsoleFuture<'a, Vec<outpost_console::deployments::DeploymentRow>> {
        Box::pin(self.deployment_rows())
    }

    fn deployment<'a>(
        &'a self,
        _v: &'a Viewer,
        id: &'a str,
    ) -> ConsoleFuture<'a, outpost_console::deployments::DeploymentDetail> {
        Box::pin(self.deployment_detail(id))
    }

    fn deployment_action<'a>(
        &'a self,
        v: &'a Viewer,
        id: &'a str,
        a: &'a outpost_console::deployments::DeploymentAction,
    ) -> ConsoleFuture<'a, ()> {
        Box::pin(self.deployment_act(v, id, a))
    }

    fn create_deployment<'a>(
        &'a self,
        v: &'a Viewer,
        req: &'a outpost_console::deployments::NewDeployment,
    ) -> ConsoleFuture<'a, String> {
        Box::pin(self.deployment_create(v, req))
    }

    fn bulk_run<'a>(
        &'a self,
        v: &'a Viewer,
        devices: &'a [outpost_console::bulk_actions::DeviceKey],
        req: &'a outpost_console::bulk_actions::BulkRunRequest,
    ) -> ConsoleFuture<'a, String> {
        Box::pin(self.bulk_run_of(v, devices, req))
    }

    fn tag_devices<'a>(
        &'a self,
        v: &'a Viewer,
        devices: &'a [outpost_console::bulk_actions::DeviceKey],
        tags: &'a [String],
    ) -> ConsoleFuture<'a, ()> {
        Box::pin(self.tag_devices_of(v, devices, tags))
    }

    fn approvals<'a>(
        &'a self,
        _v: &'a Viewer,
        device: Option<&'a str>,
    ) -> ConsoleFuture<'a, outpost_console::deployments::ApprovalsView> {
        Box::pin(self.approvals_view(device))
    }

    fn files<'a>(
        &'a self,
        _v: &'a Viewer,
        state: Option<&'a str>,
    ) -> ConsoleFuture<'a, Vec<outpost_console::files::FileRow>> {
        Box::pin(self.files_of(state))
    }

    fn file<'a>(
        &'a self,
        _v: &'a Viewer,
        id: &'a str,
    ) -> ConsoleFuture<'a, outpost_console::files::FileRow> {
        Box::pin(self.file_of(id))
    }

    fn cancel_file<'a>(&'a self, v: &'a Viewer, id: &'a str) -> ConsoleFuture<'a, ()> {
        Box::pin(self.cancel_file_of(v, id))
    }
}

#[cfg(test)]
mod tests;
