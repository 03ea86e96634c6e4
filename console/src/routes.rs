//! The console's HTTP routes: each handler authenticates through the
//! backend, asks it for data, and renders a page ([`crate::pages`]).
//! State-changing routes (`POST`) check the same-origin headers first,
//! then the viewer, then the CSRF token, then the viewer's capability;
//! the backend checks the role again when it acts.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::Router;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use maud::Markup;
use outpost_web::{Form, Path, Query};
use serde::Deserialize;

use crate::Console;
use crate::backend::{
    AlertQuery, ConsoleError, DeviceQuery, DeviceSort, LatestValue, LoginForm, LoginOutcome,
    MAX_COMMENT_CHARS, MetricKey, Range, UNAVAILABLE_RETRY_SECS, Viewer,
};
use crate::pages::{self, layout};
use crate::security;

/// Rows per page of the device list.
pub const DEVICE_PAGE: usize = 100;
/// Alerts the inbox shows at once (the newest).
pub const ALERT_PAGE: usize = 500;

/// The console's routes, for a host router of any state `S`.
pub fn router<S: Clone + Send + Sync + 'static>(c: Arc<Console>) -> Router<S> {
    Router::new()
        .route("/", get(dashboard))
        .route("/login", get(login_form).post(login_submit))
        .route("/logout", post(logout))
        .route("/devices", get(devices))
        .route("/devices/bulk", post(crate::bulk_actions::submit))
        .route("/sites/{site}", get(site_page))
        .route("/sites/{site}/devices/{device}", get(device_page))
        .route("/alerts", get(alerts_page))
        .route("/sites/{site}/alerts/{alert}", get(alert_page))
        .route("/sites/{site}/alerts/{alert}/ack", post(ack))
        .route("/commands", get(crate::commands::list))
        .route("/commands/{id}", get(crate::commands::show))
        .route("/commands/{id}/cancel", post(crate::commands::cancel))
        .route("/sites/{site}/commands", get(crate::commands::site_list))
        .route(
            "/sites/{site}/devices/{device}/commands",
            post(crate::commands::run),
        )
        .route("/scripts", get(crate::scripts::list))
        .route("/scripts/{name}", get(crate::scripts::show))
        .route("/commands/bulk", get(crate::scripts::bulk_runs))
        .route("/commands/bulk/{id}", get(crate::scripts::bulk_run))
        .route("/files", get(crate::files::list))
        .route("/files/{id}", get(crate::files::show))
        .route("/files/{id}/cancel", post(crate::files::cancel))
        .route(
            "/commands/bulk/{id}/cancel",
            post(crate::scripts::cancel_bulk),
        )
        .route(
            "/sites/{site}/devices/{device}/scripts",
            post(crate::scripts::run),
        )
        .route("/patches", get(crate::patches::overview))
        .route("/patches/cves/{cve}", get(crate::patches::cve))
        .route("/patches/report.csv", get(crate::patches::report_csv))
        .route("/patches/report.pdf", get(crate::patches::report_pdf))
        .route(
            "/deployments",
            get(crate::deployments::list).post(crate::deployments::create),
        )
        .route("/deployments/{id}", get(crate::deployments::show))
        .route("/deployments/{id}/{action}", post(crate::deployments::act))
        .route(
            "/approvals",
            get(crate::deployments::approvals).post(crate::deployments::verdict),
        )
        .route("/approval-rules", post(crate::deployments::add_rule))
        .route(
            "/approval-rules/{id}/delete",
            post(crate::deployments::remove_rule),
        )
        .route("/console/live", get(live))
        .route("/console/console.js", get(js))
        .route("/console/console.css", get(css))
        .layer(middleware::from_fn(security::headers))
        .layer(middleware::from_fn(no_store))
        .with_state(c)
}

/// Pages carry names and counts: never cached by a shared cache.
async fn no_store(req: Request, next: Next) -> Response {
    let asset = req.uri().path().starts_with("/console/console.");
    let mut resp = next.run(req).await;
    if !asset {
        resp.headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    resp
}

type C = State<Arc<Console>>;

pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

pub(crate) fn html(status: StatusCode, m: Markup) -> Response {
    (status, Html(m.into_string())).into_response()
}

/// A page in the shell.
pub(crate) fn render(
    c: &Console,
    v: Option<&Viewer>,
    section: layout::Section,
    title: &str,
    crumbs: Vec<layout::Crumb>,
    body: Markup,
) -> Markup {
    let info = c.backend.info();
    let csrf = v.map(|v| c.csrf.token(&v.csrf_subject));
    layout::page(
        &layout::Shell {
            info: &info,
            viewer: v,
            csrf: csrf.as_deref(),
            section,
            title,
            crumbs,
        },
        body,
    )
}

/// An error page of the right status.
pub(crate) fn error_page(c: &Console, v: Option<&Viewer>, e: ConsoleError) -> Response {
    let (status, title) = match &e {
        ConsoleError::NotFound(_) => (StatusCode::NOT_FOUND, "Not found"),
        ConsoleError::Forbidden(_) => (StatusCode::FORBIDDEN, "Not allowed"),
        ConsoleError::BadRequest(_) => (StatusCode::BAD_REQUEST, "Bad request"),
        ConsoleError::Internal(m) => {
            tracing::error!(error = %m, "console backend failed");
            (StatusCode::INTERNAL_SERVER_ERROR, "Something failed")
        }
        ConsoleError::Unavailable(m) => {
            tracing::warn!(error = %m, "console page answered 503");
            (StatusCode::SERVICE_UNAVAILABLE, "Temporarily unavailable")
        }
    };
    let text = match &e {
        ConsoleError::Unavailable(m) => {
            format!("{m}. This page tries again by itself every {UNAVAILABLE_RETRY_SECS} seconds.")
        }
        e => e.to_string(),
    };
    let m = render(
        c,
        v,
        layout::Section::None,
        title,
        vec![],
        pages::message(&text),
    );
    let mut resp = html(status, m);
    if matches!(e, ConsoleError::Unavailable(_)) {
        let secs = HeaderValue::from(UNAVAILABLE_RETRY_SECS);
        resp.headers_mut().insert(header::RETRY_AFTER, secs.clone());
        // Reloads the page (no script: the CSP forbids inline ones).
        resp.headers_mut().insert(header::REFRESH, secs);
    }
    resp
}

/// The viewer, or the sign-in page (303) / an error page.
pub(crate) async fn viewer(c: &Console, h: &HeaderMap) -> Result<Viewer, Response> {
    match c.backend.viewer(h).await {
        Ok(Some(v)) => Ok(v),
        Ok(None) => Err(Redirect::to("/login").into_response()),
        Err(e) => Err(error_page(c, None, e)),
    }
}

/// Refuses a state-changing request (403 page, counted by reason).
pub(crate) fn refuse(c: &Console, v: Option<&Viewer>, reason: &str, text: &str) -> Response {
    c.metrics.refused(reason);
    let m = render(
        c,
        v,
        layout::Section::None,
        "Not allowed",
        vec![],
        pages::message(text),
    );
    html(StatusCode::FORBIDDEN, m)
}

pub(crate) fn cross_origin(c: &Console, h: &HeaderMap) -> Option<Response> {
    security::same_origin(h).err().map(|why| {
        refuse(
            c,
            None,
            why.as_str(),
            "This request came from another site and was refused. Use the console's own forms.",
        )
    })
}

/// The body of a form that carries only its CSRF token (cancel, delete).
#[derive(Debug, Default, Deserialize)]
pub struct CsrfOnly {
    #[serde(default)]
    pub csrf: String,
}

/// A cancel button's post (command, bulk run, file transfer): the form
/// checks, then those who may run commands call `cancel` (the backend checks
/// the role again) and go `back`; a refusal of the backend is shown as such.
pub(crate) async fn cancel_form(
    c: &Console,
    h: &HeaderMap,
    csrf: &str,
    what: &str,
    back: String,
    cancel: impl AsyncFnOnce(&Viewer) -> Result<(), ConsoleError>,
) -> Response {
    let v = match form_viewer(c, h, csrf).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    if !v.can.run_commands {
        return refuse(
            c,
            Some(&v),
            "forbidden",
            &format!("Role {} may not cancel {what}.", v.role),
        );
    }
    match cancel(&v).await {
        Ok(()) => Redirect::to(&back).into_response(),
        Err(ConsoleError::Forbidden(m)) => refuse(c, Some(&v), "forbidden", &m),
        Err(e) => error_page(c, Some(&v), e),
    }
}

/// The checks every console form post makes before its own: same origin,
/// a signed-in viewer, and the form's CSRF token. The viewer, or the
/// response refusing the post.
pub(crate) async fn form_viewer(
    c: &Console,
    h: &HeaderMap,
    csrf: &str,
) -> Result<Viewer, Response> {
    if let Some(r) = cross_origin(c, h) {
        return Err(r);
    }
    let v = viewer(c, h).await?;
    if !c.csrf.verify(&v.csrf_subject, csrf) {
        return Err(refuse(
            c,
            Some(&v),
            "csrf_token",
            "The form's token is missing or stale: reload the page and try again.",
        ));
    }
    Ok(v)
}

fn opt(s: Option<String>) -> Option<String> {
    s.map(|s| s.trim().to_string()).filter(|s| !s.is_empty())
}

// ---- sign-in ----

async fn login_form(State(c): C, h: HeaderMap) -> Response {
    if let Ok(Some(_)) = c.backend.viewer(&h).await {
        return Redirect::to("/").into_response();
    }
    let tenant = c.backend.info().login_tenant;
    let m = render(
        &c,
        None,
        layout::Section::None,
        "Sign in",
        vec![],
        pages::login(tenant, None),
    );
    html(StatusCode::OK, m)
}

async fn login_submit(
    State(c): C,
    Peer(peer): Peer,
    h: HeaderMap,
    Form(f): Form<LoginForm>,
) -> Response {
    if let Some(r) = cross_origin(&c, &h) {
        return r;
    }
    let tenant = c.backend.info().login_tenant;
    let page = |status: StatusCode, id: &str, text: &str| {
        let m = render(
            &c,
            None,
            layout::Section::None,
            "Sign in",
            vec![],
            pages::login(tenant, Some((id, text))),
        );
        html(status, m)
    };
    match c.backend.login(f, peer, &h).await {
        Ok(LoginOutcome::Success { set_cookie }) => {
            let mut r = Redirect::to("/").into_response();
            r.headers_mut().insert(header::SET_COOKIE, set_cookie);
            r
        }
        Ok(LoginOutcome::Refused) => page(
            StatusCode::UNAUTHORIZED,
            "refused",
            "Wrong tenant, user name or password.",
        ),
        Ok(LoginOutcome::Throttled { retry_after_secs }) => {
            let mut r = page(
                StatusCode::TOO_MANY_REQUESTS,
                "throttled",
                &format!(
                    "Too many failed sign-ins for this user or address. Try again in {retry_after_secs} s."
                ),
            );
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
            r
        }
        Ok(LoginOutcome::Busy { retry_after_secs }) => {
            let mut r = page(
                StatusCode::SERVICE_UNAVAILABLE,
                "busy",
                &format!("Sign-in is busy. Try again in {retry_after_secs} s."),
            );
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
            r
        }
        Err(e) => error_page(&c, None, e),
    }
}

/// The peer address of the connection, when the server records it.
struct Peer(Option<IpAddr>);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Peer {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Self, Self::Rejection> {
        Ok(Peer(
            parts
                .extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map(|ci| ci.0.ip()),
        ))
    }
}

#[derive(Debug, Deserialize)]
struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

async fn logout(State(c): C, h: HeaderMap, Form(f): Form<CsrfForm>) -> Response {
    let v = match form_viewer(&c, &h, &f.csrf).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    match c.backend.logout(&h).await {
        Ok(cookie) => {
            let mut r = Redirect::to("/login").into_response();
            if let Some(v) = cookie {
                r.headers_mut().insert(header::SET_COOKIE, v);
            }
            r
        }
        Err(e) => error_page(&c, Some(&v), e),
    }
}

// ---- pages ----

/// The dashboard's query string: `customer` lists all of that customer's
/// sites (else each customer shows its first [`pages::SITES_PER_CUSTOMER`],
/// those needing attention first).
#[derive(Debug, Default, Deserialize)]
struct DashboardParams {
    customer: Option<String>,
}

async fn dashboard(State(c): C, h: HeaderMap, Query(p): Query<DashboardParams>) -> Response {
    let v = match viewer(&c, &h).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    match c.backend.dashboard(&v).await {
        Ok(d) => {
            let m = render(
                &c,
                Some(&v),
                layout::Section::Dashboard,
                "Dashboard",
                vec![],
                pages::dashboard(&d, opt(p.customer).as_deref(), now_ms()),
            );
            html(StatusCode::OK, m)
        }
        Err(e) => error_page(&c, Some(&v), e),
    }
}

/// The device list's query string.
#[derive(Debug, Default, Deserialize)]
pub struct DeviceParams {
    pub q: Option<String>,
    pub customer: Option<String>,
    pub site: Option<String>,
    pub status: Option<String>,
    pub tag: Option<String>,
    pub sort: Option<String>,
    pub dir: Option<String>,
    pub after: Option<String>,
}

impl DeviceParams {
    pub fn query(self) -> DeviceQuery {
        let sort = self
            .sort
            .as_deref()
            .and_then(|s| DeviceSort::ALL.into_iter().find(|k| k.as_str() == s))
            .unwrap_or_default();
        DeviceQuery {
            text: self.q.unwrap_or_default().trim().to_string(),
            customer: opt(self.customer),
            site: opt(self.site),
            status: opt(self.status),
            tag: opt(self.tag),
            sort,
            descending: self.dir.as_deref() == Some("desc"),
            after: opt(self.after),
            limit: DEVICE_PAGE,
        }
    }
}

async fn devices(State(c): C, h: HeaderMap, Query(p): Query<DeviceParams>) -> Response {
    let v = match viewer(&c, &h).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let q = p.query();
    match c.backend.devices(&v, &q).await {
        Ok(l) => {
            let tags = c.backend.info().features.tags;
            let (csrf, scripts) = bar_parts(&c, &v).await;
            let mut bar = bulk_bar(&c, &v, &csrf, &scripts);
            if bar.run && c.backend.info().features.bulk_by_tag {
                bar.by_tag = q.tag.as_deref();
            }
            let m = render(
                &c,
                Some(&v),
                layout::Section::Devices,
                "Devices",
                vec![layout::crumb("Dashboard", "/"), layout::here("Devices")],
                pages::device_list(&l, &q, "/devices", true, tags, &bar, now_ms()),
            );
            html(StatusCode::OK, m)
        }
        Err(e) => error_page(&c, Some(&v), e),
    }
}

async fn site_page(
    State(c): C,
    h: HeaderMap,
    Path(site): Path<String>,
    Query(p): Query<DeviceParams>,
) -> Response {
    let v = match viewer(&c, &h).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let mut q = p.query();
    q.site = Some(site.clone());
    q.customer = None;
    let s = match c.backend.site(&v, &site).await {
        Ok(s) => s,
        Err(e) => return error_page(&c, Some(&v), e),
    };
    match c.backend.devices(&v, &q).await {
        Ok(l) => {
            let tags = c.backend.info().features.tags;
            let (csrf, scripts) = bar_parts(&c, &v).await;
            let bar = bulk_bar(&c, &v, &csrf, &scripts);
            let title = format!("Site {}", s.health.name);
            let m = render(
                &c,
                Some(&v),
                layout::Section::Devices,
                &title,
                vec![
                    layout::crumb("Dashboard", "/"),
                    layout::crumb(
                        s.health.customer.clone(),
                        format!("/devices?customer={}", layout::enc(&s.health.customer)),
                    ),
                    layout::here(s.health.name.clone()),
                ],
                pages::site(&s, &l, &q, tags, &bar, now_ms()),
            );
            html(StatusCode::OK, m)
        }
        Err(e) => error_page(&c, Some(&v), e),
    }
}

/// The bulk bar's CSRF token and the script names it offers (the
/// library's, when the backend has one and the viewer runs commands).
async fn bar_parts(c: &Console, v: &Viewer) -> (String, Vec<String>) {
    let csrf = c.csrf.token(&v.csrf_subject);
    let scripts = if c.backend.info().features.scripts && v.can.run_commands {
        c.backend
            .scripts(v)
            .await
            .map(|s| s.into_iter().map(|r| r.name).collect())
            .unwrap_or_default()
    } else {
        Vec::new()
    };
    (csrf, scripts)
}

/// What the bulk bar offers `v`.
fn bulk_bar<'a>(
    c: &Console,
    v: &Viewer,
    csrf: &'a str,
    scripts: &'a [String],
) -> crate::bulk_actions::BulkBar<'a> {
    let f = c.backend.info().features;
    crate::bulk_actions::BulkBar {
        csrf,
        run: f.commands && v.can.run_commands,
        tag: f.tag_devices && v.can.run_commands,
        scripts,
        by_tag: None,
    }
}

/// The series a device page charts: CPU, memory, every disk, and the
/// busiest network interface (rx and tx).
pub fn chart_keys(latest: &[LatestValue]) -> Vec<MetricKey> {
    use outpost_proto::metric_names as m;
    let key = |name: &str, label: &str| MetricKey {
        name: name.into(),
        label: label.into(),
    };
    let has = |name: &str| latest.iter().any(|l| l.name == name);
    let mut keys = Vec::new();
    for name in [m::CPU, m::MEMORY] {
        if has(name) {
            keys.push(key(name, ""));
        }
    }
    let mut disks: Vec<&str> = latest
        .iter()
        .filter(|l| l.name == m::DISK_USED_PERCENT)
        .map(|l| l.label.as_str())
        .collect();
    disks.sort_unstable();
    disks.dedup();
    for d in disks.into_iter().take(8) {
        keys.push(key(m::DISK_USED_PERCENT, d));
    }
    let busiest = latest
        .iter()
        .filter(|l| l.name == m::NET_RX_BYTES_PER_SEC || l.name == m::NET_TX_BYTES_PER_SEC)
        .max_by(|a, b| a.value.total_cmp(&b.value))
        .map(|l| l.label.clone());
    if let Some(iface) = busiest {
        keys.push(key(m::NET_RX_BYTES_PER_SEC, &iface));
        keys.push(key(m::NET_TX_BYTES_PER_SEC, &iface));
    }
    keys
}

#[derive(Debug, Default, Deserialize)]
struct RangeParam {
    range: Option<String>,
}

async fn device_page(
    State(c): C,
    h: HeaderMap,
    Path((site, device)): Path<(String, String)>,
    Query(p): Query<RangeParam>,
) -> Response {
    let v = match viewer(&c, &h).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let range = p
        .range
        .as_deref()
        .and_then(Range::parse)
        .unwrap_or_default();
    let d = match c.backend.device(&v, &site, &device).await {
        Ok(d) => d,
        Err(e) => return error_page(&c, Some(&v), e),
    };
    let keys = chart_keys(&d.latest);
    let now = now_ms();
    let series = match c
        .backend
        .series(&v, &site, &device, &keys, range, now)
        .await
    {
        Ok(s) => s,
        Err(e) => return error_page(&c, Some(&v), e),
    };
    let dv = &d.device;
    let name = if dv.hostname.is_empty() {
        dv.device.clone()
    } else {
        dv.hostname.clone()
    };
    let title = format!("Device {name}");
    // The run-script form lists the library (none if it cannot be read).
    let scripts = if c.backend.info().features.scripts && v.can.run_commands {
        c.backend.scripts(&v).await.unwrap_or_default()
    } else {
        Vec::new()
    };
    let csrf = c.csrf.token(&v.csrf_subject);
    let patch_panel = if c.backend.info().features.patches {
        crate::patches::device_panel(&c, &v, &dv.site_id, &dv.device).await
    } else {
        maud::html! {}
    };
    let m = render(
        &c,
        Some(&v),
        layout::Section::Devices,
        &title,
        vec![
            layout::crumb("Dashboard", "/"),
            layout::crumb(
                dv.customer.clone(),
                format!("/devices?customer={}", layout::enc(&dv.customer)),
            ),
            layout::crumb(dv.site_name.clone(), layout::site_href(&dv.site_id)),
            layout::here(name),
        ],
        maud::html! {
            (pages::device(&d, &series, range, &v, &csrf, now))
            @if c.backend.info().features.patches {
                (patch_panel)
            }
            @if c.backend.info().features.commands {
                (crate::commands::device_section(&dv.site_id, &dv.device, &v, &csrf))
            }
            @if c.backend.info().features.scripts {
                (crate::scripts::device_section(&dv.site_id, &dv.device, &scripts, &v, &csrf))
            }
        },
    );
    html(StatusCode::OK, m)
}

#[derive(Debug, Default, Deserialize)]
struct AlertParams {
    severity: Option<String>,
    state: Option<String>,
    customer: Option<String>,
    site: Option<String>,
}

async fn alerts_page(State(c): C, h: HeaderMap, Query(p): Query<AlertParams>) -> Response {
    let v = match viewer(&c, &h).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let q = AlertQuery {
        severity: opt(p.severity),
        state: opt(p.state),
        customer: opt(p.customer),
        site: opt(p.site),
        limit: ALERT_PAGE,
    };
    match c.backend.alerts(&v, &q).await {
        Ok(l) => {
            let csrf = c.csrf.token(&v.csrf_subject);
            let m = render(
                &c,
                Some(&v),
                layout::Section::Alerts,
                "Alerts",
                vec![layout::crumb("Dashboard", "/"), layout::here("Alerts")],
                pages::alerts(&l, &q, &v, &csrf, now_ms()),
            );
            html(StatusCode::OK, m)
        }
        Err(e) => error_page(&c, Some(&v), e),
    }
}

async fn alert_page(State(c): C, h: HeaderMap, Path((site, id)): Path<(String, u64)>) -> Response {
    let v = match viewer(&c, &h).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    match c.backend.alert(&v, &site, id).await {
        Ok(d) => {
            let csrf = c.csrf.token(&v.csrf_subject);
            let a = &d.alert;
            let title = format!("Alert {}", a.rule);
            let m = render(
                &c,
                Some(&v),
                layout::Section::Alerts,
                &title,
                vec![
                    layout::crumb("Dashboard", "/"),
                    layout::crumb("Alerts", "/alerts"),
                    layout::crumb(a.site_name.clone(), layout::site_href(&a.site_id)),
                    layout::here(format!("{} #{}", a.rule, a.alert_id)),
                ],
                pages::alert(&d, &v, &csrf),
            );
            html(StatusCode::OK, m)
        }
        Err(e) => error_page(&c, Some(&v), e),
    }
}

#[derive(Debug, Deserialize)]
struct AckForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    comment: String,
}

async fn ack(
    State(c): C,
    h: HeaderMap,
    Path((site, id)): Path<(String, u64)>,
    Form(f): Form<AckForm>,
) -> Response {
    let v = match form_viewer(&c, &h, &f.csrf).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    if !v.can.ack_alerts {
        return refuse(
            &c,
            Some(&v),
            "forbidden",
            &format!("Role {} may not acknowledge alerts.", v.role),
        );
    }
    let comment = f.comment.trim();
    if comment.chars().count() > MAX_COMMENT_CHARS {
        return error_page(
            &c,
            Some(&v),
            ConsoleError::BadRequest(format!(
                "The comment is longer than {MAX_COMMENT_CHARS} characters."
            )),
        );
    }
    match c.backend.ack_alert(&v, &site, id, comment).await {
        Ok(()) => Redirect::to(&layout::alert_href(&site, id)).into_response(),
        Err(ConsoleError::Forbidden(m)) => refuse(&c, Some(&v), "forbidden", &m),
        Err(e) => error_page(&c, Some(&v), e),
    }
}

// ---- live and assets ----

/// The live stream of the request's viewer. Its credential is checked
/// again at every keep-alive interval through the backend, with the
/// request's own headers (the stream ends when it no longer holds with the
/// same scope), and the stream ends at the credential's expiry at the
/// latest (see [`crate::live`]).
async fn live(State(c): C, h: HeaderMap) -> Response {
    let (v, until_ms) = match c.backend.viewer_until(&h).await {
        Ok(Some(v)) => v,
        Ok(None) => return (StatusCode::UNAUTHORIZED, Html("sign in first")).into_response(),
        Err(e) => return error_page(&c, None, e),
    };
    let hub = c.backend.live();
    // Weak: an open stream does not keep the backend (and its hub) alive.
    let backend = Arc::downgrade(&c.backend);
    let check = move || -> crate::live::CheckFuture {
        let (backend, h) = (backend.upgrade(), h.clone());
        Box::pin(async move {
            let backend = backend?;
            match backend.viewer_until(&h).await {
                Ok(Some((v, _))) => Some(v.scope()),
                // Signed out, expired, revoked, removed; or not checkable
                // now (fail closed: the page reloads and asks again).
                Ok(None) | Err(_) => None,
            }
        })
    };
    let revalidation = crate::live::Revalidation {
        check: Box::new(check),
        every: hub.config.keep_alive,
        ends_in: until_ms.map(|t| std::time::Duration::from_millis(t.saturating_sub(now_ms()))),
    };
    match hub.subscribe_checked(v.scope(), Some(revalidation)) {
        Ok(sub) => sub.into_response(hub.config.keep_alive),
        Err(full) => (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, HeaderValue::from_static("30"))],
            Html(full.to_string()),
        )
            .into_response(),
    }
}

const JS: &str = include_str!("../assets/console.js");
const CSS: &str = include_str!("../assets/console.css");

async fn js() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=300"),
        ],
        JS,
    )
        .into_response()
}

async fn css() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=300"),
        ],
        CSS,
    )
        .into_response()
}
