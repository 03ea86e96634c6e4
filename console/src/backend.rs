//! What the console asks of the system it runs in: [`ConsoleBackend`].
//! `outpost-central` implements it for a whole tenant (customers → sites →
//! devices, rollup history, replicated alerts); the appliance implements it
//! for its own site (its devices, raw samples and rollups, its alerts, its
//! local users).
//!
//! The console never decides who may see or do what: the backend answers
//! every read within the viewer's tenant and customers, says what the
//! viewer may do ([`Capabilities`]: the console hides the buttons) and
//! refuses a forbidden action itself ([`ConsoleError::Forbidden`]).
//!
//! Methods return boxed futures ([`ConsoleFuture`]) so the trait is usable
//! as `Arc<dyn ConsoleBackend>` without a macro crate (the style of
//! central's `StoreFuture`).
//!
//! What the appliance's backend maps each method to (its scope is one
//! site: [`ScopeKind::Site`], `login_tenant: false`, one "customer" per
//! enrollment customer, one site whose id is the appliance's own):
//!
//! * `viewer`: the admin bearer token (role admin) or a local user's
//!   session cookie; `csrf_subject` = SHA-256 of the session secret (or of
//!   the token). `login`/`logout`: the local users' sign-in with its rate
//!   limits (`outpost_web::login` once the app-users branch lands).
//! * `dashboard`, `site`: counts from its device registry (online/offline
//!   from the offline sweep) and its alert store; `link` = `None`.
//! * `devices`: its registry with inventory (hostname, IPs from the NIC
//!   inventory, OS, tags once they exist); `device`: inventory, latest
//!   values, its status log (`/status-log`) as `transitions`.
//! * `series`: raw samples for 1 h (and 24 h, aggregated per step), its
//!   own 5-minute rollups beyond, as `GET /api/v1/devices/{id}/metrics`
//!   already chooses.
//! * `alerts`, `alert`, `ack_alert`: its alert store, transitions and acks
//!   (`POST /api/v1/alerts/{id}/ack` with its comment).
//! * `live`: a [`LiveHub`] fed by the group-commit writer (status changes
//!   of the offline sweep and of session starts) and the alert engine's
//!   transitions.

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;

use axum::http::{HeaderMap, HeaderValue};

use crate::chart::ChartPoint;
use crate::live::{LiveHub, Scope};

/// What a backend's failure means for the page.
#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Internal(String),
    /// The backend's storage cannot serve for now (central's database is
    /// down or failing over; retrying later can succeed): a 503 page that
    /// says so, asks to retry after [`UNAVAILABLE_RETRY_SECS`] and
    /// reloads by itself.
    #[error("{0}")]
    Unavailable(String),
}

/// Seconds a 503 page asks the browser to wait before it reloads
/// (`Retry-After`, `Refresh`).
pub const UNAVAILABLE_RETRY_SECS: u64 = outpost_web::UNAVAILABLE_RETRY_AFTER_SECS;

/// What a backend method returns: a boxed future (object-safe trait).
pub type ConsoleFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, ConsoleError>> + Send + 'a>>;

/// Which scope the console shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScopeKind {
    /// A tenant: customers, their sites and devices (central).
    Tenant,
    /// One site and its devices (the appliance).
    Site,
}

/// Pages of later issues a backend may support: the navigation shows
/// them disabled until it does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Features {
    pub commands: bool,
    pub scripts: bool,
    pub patches: bool,
    pub deployments: bool,
    /// Device tags: shown, searched and a filter of the device list.
    pub tags: bool,
    /// Tags can be set here (the "Tag…" bulk action): at the site, where
    /// tags live; central shows the tags its sites send.
    pub tag_devices: bool,
    /// A bulk run can target every device with a tag (the device list
    /// filtered by a tag offers "Run on every device tagged T").
    pub bulk_by_tag: bool,
    /// Approvals and approval rules can be changed from the Approvals
    /// page (central: sent to its sites as orders).
    pub edit_approvals: bool,
    /// File transfers (pushes and pulls) have their pages (`/files`).
    pub files: bool,
}

/// What the console shows of the backend itself.
#[derive(Debug, Clone)]
pub struct BackendInfo {
    /// Shown beside the brand: "central", or the site's name.
    pub product: String,
    pub scope: ScopeKind,
    /// The login form asks for a tenant (central) or not (appliance).
    pub login_tenant: bool,
    pub features: Features,
}

/// What a viewer may do (computed by the backend from its roles).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Capabilities {
    pub ack_alerts: bool,
    pub run_commands: bool,
    pub approve_patches: bool,
    /// Users, tokens, sites.
    pub administer: bool,
    /// Pause, resume and roll back deployments.
    pub manage_deployments: bool,
    /// Create and abort deployments.
    pub create_deployments: bool,
}

/// The person (or token) a request acts for.
#[derive(Debug, Clone, PartialEq)]
pub struct Viewer {
    pub name: String,
    pub tenant: String,
    /// Customers the viewer is limited to (empty = all of the tenant).
    pub customers: Vec<String>,
    /// Role label shown in the header (`viewer`, `technician`, `admin`).
    pub role: String,
    pub can: Capabilities,
    /// What the CSRF token is bound to: an id of the viewer's credential
    /// (the SHA-256 of its session secret), never the secret itself.
    pub csrf_subject: Vec<u8>,
}

impl Viewer {
    /// The live-update scope of this viewer.
    pub fn scope(&self) -> Scope {
        Scope {
            tenant: self.tenant.clone(),
            customers: self.customers.clone(),
        }
    }
}

/// The login form.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct LoginForm {
    /// Central asks for it; the appliance has one tenant.
    #[serde(default)]
    pub tenant: Option<String>,
    pub username: String,
    pub password: String,
}

/// What a login attempt did.
#[derive(Debug, Clone)]
pub enum LoginOutcome {
    /// Signed in: set this cookie.
    Success { set_cookie: HeaderValue },
    /// Wrong tenant, user name or password.
    Refused,
    /// Too many failures for the user or address.
    Throttled { retry_after_secs: u64 },
    /// Password checks busy.
    Busy { retry_after_secs: u64 },
}

/// Device counts (of a site, a customer, the scope).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub devices: u64,
    pub online: u64,
    pub offline: u64,
    pub pending: u64,
    pub revoked: u64,
    /// Devices with a firing critical alert.
    pub critical: u64,
    pub alerts_firing: u64,
    pub alerts_pending: u64,
}

/// Firing alerts per severity.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SeverityCounts {
    pub critical: u64,
    pub warning: u64,
    pub info: u64,
}

/// A site's health line.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SiteHealth {
    pub site_id: String,
    pub name: String,
    pub customer: String,
    pub counts: Counts,
    /// Uplink state (`connected`, `disconnected`, `never`); `None` where
    /// the console runs on the site itself.
    pub link: Option<String>,
    pub stale: bool,
    pub lag_ms: Option<u64>,
    /// Short marks shown beside the name (e.g. `tenant mismatch`).
    pub marks: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct CustomerHealth {
    pub customer: String,
    pub counts: Counts,
    pub sites: Vec<SiteHealth>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Dashboard {
    pub totals: Counts,
    pub firing_by_severity: SeverityCounts,
    pub stale_sites: u64,
    pub customers: Vec<CustomerHealth>,
    /// Percent of devices fully patched, once patch management exists.
    pub patch_compliance: Option<f64>,
}

/// A warning shown at the top of a page (`id` for tests and links).
#[derive(Debug, Clone, PartialEq)]
pub struct Notice {
    pub id: String,
    pub text: String,
}

/// A batch central refused for good (central only).
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetterView {
    pub seq: u64,
    pub last_seq: u64,
    pub reason: String,
    pub message: String,
    pub at_ms: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SiteDetail {
    pub health: SiteHealth,
    /// Facts shown under the title (label, value).
    pub facts: Vec<(String, String)>,
    pub notices: Vec<Notice>,
    pub dead_lettered: u64,
    pub dead_letters: Vec<DeadLetterView>,
}

/// Sort keys of the device list.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DeviceSort {
    #[default]
    Hostname,
    Status,
    LastSeen,
    Site,
    Customer,
    Cpu,
}

impl DeviceSort {
    pub const ALL: [DeviceSort; 6] = [
        DeviceSort::Hostname,
        DeviceSort::Status,
        DeviceSort::LastSeen,
        DeviceSort::Site,
        DeviceSort::Customer,
        DeviceSort::Cpu,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DeviceSort::Hostname => "hostname",
            DeviceSort::Status => "status",
            DeviceSort::LastSeen => "last_seen",
            DeviceSort::Site => "site",
            DeviceSort::Customer => "customer",
            DeviceSort::Cpu => "cpu",
        }
    }
}

/// One page of the device list.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DeviceQuery {
    /// Words matched (case-insensitively, each) against hostname, IP
    /// addresses, OS and tags.
    pub text: String,
    pub customer: Option<String>,
    pub site: Option<String>,
    /// `online`, `offline`, `pending`, `revoked`, or `critical`.
    pub status: Option<String>,
    pub tag: Option<String>,
    pub sort: DeviceSort,
    pub descending: bool,
    /// Cursor of the next page (from [`DeviceList::next`]).
    pub after: Option<String>,
    pub limit: usize,
}

/// A device as lists show it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DeviceView {
    pub site_id: String,
    pub site_name: String,
    pub customer: String,
    pub device: String,
    pub hostname: String,
    pub os: String,
    pub agent_version: String,
    pub status: String,
    pub status_since_ms: u64,
    pub last_seen_ms: u64,
    pub cpu: Option<f64>,
    pub memory: Option<f64>,
    /// The fullest disk, percent.
    pub disk: Option<f64>,
    pub open_alerts: u32,
    pub critical: bool,
    pub ips: Vec<String>,
    pub tags: Vec<String>,
}

/// Values the filters offer.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Facets {
    pub customers: Vec<String>,
    /// (site id, name, customer).
    pub sites: Vec<(String, String, String)>,
    pub tags: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct DeviceList {
    pub rows: Vec<DeviceView>,
    /// Devices matching the query (every page), exact unless `total_more`.
    pub total: u64,
    /// More than `total` devices match (the backend stopped counting).
    pub total_more: bool,
    pub next: Option<String>,
    pub facets: Facets,
}

/// The latest value of one series.
#[derive(Debug, Clone, PartialEq)]
pub struct LatestValue {
    pub name: String,
    pub label: String,
    pub value: f64,
    pub at_ms: u64,
}

/// A status change of a device.
#[derive(Debug, Clone, PartialEq)]
pub struct StatusChange {
    pub at_ms: u64,
    pub status: String,
}

/// A panel of a later issue on the device page (commands, patches):
/// rows of label and value, rendered by the console.
#[derive(Debug, Clone, PartialEq)]
pub struct Panel {
    pub id: String,
    pub title: String,
    pub rows: Vec<(String, String)>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct DeviceDetail {
    pub device: DeviceView,
    /// Inventory facts (label, value).
    pub inventory: Vec<(String, String)>,
    pub latest: Vec<LatestValue>,
    /// Newest first.
    pub transitions: Vec<StatusChange>,
    /// Its alerts, open first.
    pub alerts: Vec<AlertView>,
    pub panels: Vec<Panel>,
}

/// Time ranges of the charts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Range {
    H1,
    #[default]
    D1,
    D7,
    D30,
}

impl Range {
    pub const ALL: [Range; 4] = [Range::H1, Range::D1, Range::D7, Range::D30];

    pub fn as_str(self) -> &'static str {
        match self {
            Range::H1 => "1h",
            Range::D1 => "24h",
            Range::D7 => "7d",
            Range::D30 => "30d",
        }
    }

    pub fn parse(s: &str) -> Option<Range> {
        Range::ALL.into_iter().find(|r| r.as_str() == s)
    }

    pub fn duration_ms(self) -> u64 {
        const H: u64 = 3_600_000;
        match self {
            Range::H1 => H,
            Range::D1 => 24 * H,
            Range::D7 => 7 * 24 * H,
            Range::D30 => 30 * 24 * H,
        }
    }
}

/// A series by name and label (`disk_used_percent` + `/`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MetricKey {
    pub name: String,
    pub label: String,
}

/// The points of one series over a range, as the backend chose to read
/// them (raw samples or rollups).
#[derive(Debug, Clone, PartialEq)]
pub struct MetricSeries {
    pub key: MetricKey,
    /// Spacing of the points.
    pub step_ms: u64,
    /// Where they come from, for the page (`5-minute rollups`).
    pub source: String,
    pub points: Vec<ChartPoint>,
}

/// The alert inbox's filters.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AlertQuery {
    /// `critical`, `warning`, `info`.
    pub severity: Option<String>,
    /// `open` (pending and firing; the default), `firing`, `pending`,
    /// `resolved`, `cleared`, `all`.
    pub state: Option<String>,
    pub customer: Option<String>,
    pub site: Option<String>,
    pub limit: usize,
}

/// An alert as the inbox shows it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AlertView {
    pub site_id: String,
    pub site_name: String,
    pub customer: String,
    pub alert_id: u64,
    pub device: Option<String>,
    pub hostname: Option<String>,
    pub rule: String,
    pub severity: String,
    pub state: String,
    pub at_ms: u64,
    pub first_ms: u64,
    pub message: String,
    pub value: Option<f64>,
    pub acked_by: Option<String>,
    pub acked_ms: u64,
    pub ack_comment: Option<String>,
}

impl AlertView {
    pub fn is_open(&self) -> bool {
        matches!(self.state.as_str(), "pending" | "firing")
    }
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct AlertList {
    pub rows: Vec<AlertView>,
    /// Alerts matching (the rows are the newest `limit`).
    pub total: u64,
    pub facets: Facets,
}

/// One line of an alert's history.
#[derive(Debug, Clone, PartialEq)]
pub struct AlertEvent {
    pub at_ms: u64,
    /// A state (`firing`...) or `acknowledged`.
    pub what: String,
    /// Who acknowledged.
    pub by: Option<String>,
    /// The transition's message, or the acknowledgement's comment.
    pub text: String,
    pub value: Option<f64>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct AlertDetail {
    pub alert: AlertView,
    /// Oldest first.
    pub history: Vec<AlertEvent>,
}

/// Longest acknowledgement comment (characters).
pub const MAX_COMMENT_CHARS: usize = 1000;

/// The console's backend (see the module docs). Every read is within the
/// viewer's tenant and customers; an object outside them is `NotFound`.
pub trait ConsoleBackend: Send + Sync + 'static {
    fn info(&self) -> BackendInfo;
    /// The fan-out the backend publishes its changes to.
    fn live(&self) -> &LiveHub;

    /// The viewer of a request (session cookie, or a bearer token), if any.
    fn viewer<'a>(&'a self, headers: &'a HeaderMap) -> ConsoleFuture<'a, Option<Viewer>>;
    /// [`ConsoleBackend::viewer`] with the time its credential ends, if
    /// fixed (milliseconds since the epoch: a session's expiry, a token's
    /// expiry). The live stream asks it when it opens and again at every
    /// keep-alive interval, and ends at that time at the latest. By
    /// default no fixed end: the periodic checks end the stream.
    fn viewer_until<'a>(
        &'a self,
        headers: &'a HeaderMap,
    ) -> ConsoleFuture<'a, Option<(Viewer, Option<u64>)>> {
        Box::pin(async move { Ok(self.viewer(headers).await?.map(|v| (v, None))) })
    }
    /// Checks a login (rate limits included) and opens a session.
    fn login<'a>(
        &'a self,
        form: LoginForm,
        peer: Option<IpAddr>,
        headers: &'a HeaderMap,
    ) -> ConsoleFuture<'a, LoginOutcome>;
    /// Ends the request's session; the cookie that clears it.
    fn logout<'a>(&'a self, headers: &'a HeaderMap) -> ConsoleFuture<'a, Option<HeaderValue>>;

    fn dashboard<'a>(&'a self, viewer: &'a Viewer) -> ConsoleFuture<'a, Dashboard>;
    fn site<'a>(&'a self, viewer: &'a Viewer, site: &'a str) -> ConsoleFuture<'a, SiteDetail>;
    fn devices<'a>(
        &'a self,
        viewer: &'a Viewer,
        q: &'a DeviceQuery,
    ) -> ConsoleFuture<'a, DeviceList>;
    fn device<'a>(
        &'a self,
        viewer: &'a Viewer,
        site: &'a str,
        device: &'a str,
    ) -> ConsoleFuture<'a, DeviceDetail>;
    /// The series `keys` of a device over `range` ending at `now_ms`
    /// (the backend picks raw samples or rollups), in the order asked.
    fn series<'a>(
        &'a self,
        viewer: &'a Viewer,
        site: &'a str,
        device: &'a str,
        keys: &'a [MetricKey],
        range: Range,
        now_ms: u64,
    ) -> ConsoleFuture<'a, Vec<MetricSeries>>;

    fn alerts<'a>(&'a self, viewer: &'a Viewer, q: &'a AlertQuery) -> ConsoleFuture<'a, AlertList>;
    fn alert<'a>(
        &'a self,
        viewer: &'a Viewer,
        site: &'a str,
        alert_id: u64,
    ) -> ConsoleFuture<'a, AlertDetail>;
    /// Acknowledges an alert with a comment (the backend checks the role).
    fn ack_alert<'a>(
        &'a self,
        viewer: &'a Viewer,
        site: &'a str,
        alert_id: u64,
        comment: &'a str,
    ) -> ConsoleFuture<'a, ()>;

    /// Commands the viewer sees, newest first (backends with
    /// [`Features::commands`]; the default has none).
    fn commands<'a>(
        &'a self,
        _viewer: &'a Viewer,
        _q: &'a crate::commands::CommandQuery,
    ) -> ConsoleFuture<'a, Vec<crate::commands::CommandRow>> {
        Box::pin(async { Err(no_commands()) })
    }
    /// One command with its output.
    fn command<'a>(
        &'a self,
        _viewer: &'a Viewer,
        _id: &'a str,
    ) -> ConsoleFuture<'a, crate::commands::CommandDetail> {
        Box::pin(async { Err(no_commands()) })
    }
    /// Queues a command for a device (the backend checks the role);
    /// answers the command's id.
    fn run_command<'a>(
        &'a self,
        _viewer: &'a Viewer,
        _site: &'a str,
        _device: &'a str,
        _req: &'a crate::commands::RunCommand,
    ) -> ConsoleFuture<'a, String> {
        Box::pin(async { Err(no_commands()) })
    }
    /// Cancels a command (the backend checks the role).
    fn cancel_command<'a>(&'a self, _viewer: &'a Viewer, _id: &'a str) -> ConsoleFuture<'a, ()> {
        Box::pin(async { Err(no_commands()) })
    }

    /// The newest version of each script the viewer sees (backends with
    /// [`Features::scripts`]).
    fn scripts<'a>(
        &'a self,
        _viewer: &'a Viewer,
    ) -> ConsoleFuture<'a, Vec<crate::scripts::ScriptRow>> {
        Box::pin(async { Err(no_commands()) })
    }
    /// Version `version` (the newest with `None`) of a script.
    fn script<'a>(
        &'a self,
        _viewer: &'a Viewer,
        _name: &'a str,
        _version: Option<u32>,
    ) -> ConsoleFuture<'a, crate::scripts::ScriptDetail> {
        Box::pin(async { Err(no_commands()) })
    }
    /// Queues a run of a script's newest version on a device (the backend
    /// checks the role); answers the command's id.
    fn run_script<'a>(
        &'a self,
        _viewer: &'a Viewer,
        _site: &'a str,
        _device: &'a str,
        _name: &'a str,
        _args: &'a [String],
    ) -> ConsoleFuture<'a, String> {
        Box::pin(async { Err(no_commands()) })
    }
    /// Bulk runs the viewer sees, newest first.
    fn bulks<'a>(&'a self, _viewer: &'a Viewer) -> ConsoleFuture<'a, Vec<crate::scripts::BulkRow>> {
        Box::pin(async { Err(no_commands()) })
    }
    /// One bulk run with its devices.
    fn bulk<'a>(
        &'a self,
        _viewer: &'a Viewer,
        _id: &'a str,
    ) -> ConsoleFuture<'a, crate::scripts::BulkDetail> {
        Box::pin(async { Err(no_commands()) })
    }
    /// Cancels a bulk run (the backend checks the role): nothing more
    /// starts, queued members are cancelled, running ones told to stop.
    fn cancel_bulk<'a>(&'a self, _viewer: &'a Viewer, _id: &'a str) -> ConsoleFuture<'a, ()> {
        Box::pin(async { Err(no_commands()) })
    }
    /// File transfers the viewer sees, newest first (at most
    /// [`crate::files::MAX_FILES`]), of one command state when given
    /// (backends with [`Features::files`]).
    fn files<'a>(
        &'a self,
        _viewer: &'a Viewer,
        _state: Option<&'a str>,
    ) -> ConsoleFuture<'a, Vec<crate::files::FileRow>> {
        Box::pin(async { Err(no_commands()) })
    }
    /// One file transfer.
    fn file<'a>(
        &'a self,
        _viewer: &'a Viewer,
        _id: &'a str,
    ) -> ConsoleFuture<'a, crate::files::FileRow> {
        Box::pin(async { Err(no_commands()) })
    }
    /// Cancels a file transfer (the backend checks the role).
    fn cancel_file<'a>(&'a self, _viewer: &'a Viewer, _id: &'a str) -> ConsoleFuture<'a, ()> {
        Box::pin(async { Err(no_commands()) })
    }
    /// The Patches overview of the viewer's scope (backends with
    /// [`Features::patches`]; the default has none).
    fn patch_overview<'a>(
        &'a self,
        _viewer: &'a Viewer,
    ) -> ConsoleFuture<'a, crate::patches::PatchOverview> {
        Box::pin(async { Err(no_patches()) })
    }
    /// Which devices of the viewer's scope are exposed to a CVE.
    fn patch_cve<'a>(
        &'a self,
        _viewer: &'a Viewer,
        _cve: &'a str,
    ) -> ConsoleFuture<'a, crate::patches::CvePage> {
        Box::pin(async { Err(no_patches()) })
    }
    /// A device's patch panel; `None` when it has no assessment.
    fn device_patches<'a>(
        &'a self,
        _viewer: &'a Viewer,
        _site: &'a str,
        _device: &'a str,
    ) -> ConsoleFuture<'a, Option<crate::patches::DevicePatchView>> {
        Box::pin(async { Err(no_patches()) })
    }
    /// The compliance report (CSV) of the viewer's scope, of one customer
    /// when given (one out of scope is `NotFound`).
    fn patch_report_csv<'a>(
        &'a self,
        _viewer: &'a Viewer,
        _customer: Option<&'a str>,
    ) -> ConsoleFuture<'a, String> {
        Box::pin(async { Err(no_patches()) })
    }

    /// Deployments the viewer sees, newest first (backends with
    /// [`Features::deployments`]; the default has none).
    fn deployments<'a>(
        &'a self,
        _viewer: &'a Viewer,
    ) -> ConsoleFuture<'a, Vec<crate::deployments::DeploymentRow>> {
        Box::pin(async { Err(no_deployments()) })
    }
    /// One deployment with its stages and devices.
    fn deployment<'a>(
        &'a self,
        _viewer: &'a Viewer,
        _id: &'a str,
    ) -> ConsoleFuture<'a, crate::deployments::DeploymentDetail> {
        Box::pin(async { Err(no_deployments()) })
    }
    /// Pauses, resumes, aborts or rolls back (the backend checks the role).
    fn deployment_action<'a>(
        &'a self,
        _viewer: &'a Viewer,
        _id: &'a str,
        _action: &'a crate::deployments::DeploymentAction,
    ) -> ConsoleFuture<'a, ()> {
        Box::pin(async { Err(no_deployments()) })
    }
    /// Creates and starts a deployment (the backend checks the role);
    /// answers its id.
    fn create_deployment<'a>(
        &'a self,
        _viewer: &'a Viewer,
        _req: &'a crate::deployments::NewDeployment,
    ) -> ConsoleFuture<'a, String> {
        Box::pin(async { Err(no_deployments()) })
    }
    /// Runs one script or command line on the selected devices as one
    /// bulk run (the backend checks the role and that each device is in
    /// the viewer's scope); answers the run's id.
    fn bulk_run<'a>(
        &'a self,
        _viewer: &'a Viewer,
        _devices: &'a [crate::bulk_actions::DeviceKey],
        _req: &'a crate::bulk_actions::BulkRunRequest,
    ) -> ConsoleFuture<'a, String> {
        Box::pin(async { Err(no_commands()) })
    }
    /// Runs one script or command line on every device of the viewer's
    /// scope with `tag` as one bulk run (backends with
    /// [`Features::bulk_by_tag`]; the backend resolves the tag within the
    /// viewer's customers and checks the role); answers the run's id.
    fn bulk_run_tag<'a>(
        &'a self,
        _viewer: &'a Viewer,
        _tag: &'a str,
        _req: &'a crate::bulk_actions::BulkRunRequest,
    ) -> ConsoleFuture<'a, String> {
        Box::pin(async { Err(no_commands()) })
    }
    /// Adds `tags` to each selected device (backends with
    /// [`Features::tags`]; the backend checks the role).
    fn tag_devices<'a>(
        &'a self,
        _viewer: &'a Viewer,
        _devices: &'a [crate::bulk_actions::DeviceKey],
        _tags: &'a [String],
    ) -> ConsoleFuture<'a, ()> {
        Box::pin(async {
            Err(ConsoleError::NotFound(
                "Tags are not available on this server.".into(),
            ))
        })
    }
    /// Approval rules, and `device`'s decisions when given.
    fn approvals<'a>(
        &'a self,
        _viewer: &'a Viewer,
        _device: Option<&'a str>,
    ) -> ConsoleFuture<'a, crate::deployments::ApprovalsView> {
        Box::pin(async { Err(no_deployments()) })
    }
    /// Approves or declines a patch (backends with
    /// [`Features::edit_approvals`]; the backend checks the role).
    fn set_verdict<'a>(
        &'a self,
        _viewer: &'a Viewer,
        _req: &'a crate::deployments::VerdictRequest,
    ) -> ConsoleFuture<'a, ()> {
        Box::pin(async { Err(no_deployments()) })
    }
    /// Adds an approval rule (the backend checks the role).
    fn add_approval_rule<'a>(
        &'a self,
        _viewer: &'a Viewer,
        _rule: &'a crate::deployments::NewRule,
    ) -> ConsoleFuture<'a, ()> {
        Box::pin(async { Err(no_deployments()) })
    }
    /// Removes an approval rule (the backend checks the role).
    fn remove_approval_rule<'a>(
        &'a self,
        _viewer: &'a Viewer,
        _id: &'a str,
    ) -> ConsoleFuture<'a, ()> {
        Box::pin(async { Err(no_deployments()) })
    }
    /// The compliance report as a PDF, same scope rules as the CSV.
    fn patch_report_pdf<'a>(
        &'a self,
        _viewer: &'a Viewer,
        _customer: Option<&'a str>,
    ) -> ConsoleFuture<'a, Vec<u8>> {
        Box::pin(async { Err(no_patches()) })
    }
}

fn no_deployments() -> ConsoleError {
    ConsoleError::NotFound("Deployments are not available on this server.".into())
}

fn no_patches() -> ConsoleError {
    ConsoleError::NotFound("Patches are not available on this server.".into())
}

fn no_commands() -> ConsoleError {
    ConsoleError::NotFound("Commands are not available on this server.".into())
}
