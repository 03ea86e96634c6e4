//! The MSP web view, rendered on the server (no front-end build, no
//! JavaScript): login form, fleet overview, site page (paginated devices),
//! device page (SVG chart of rollup history), alert list. Same session
//! cookie and tenant filtering as the JSON API.

use outpost_proto::SiteId;
use std::fmt::Write as _;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::get;
use outpost_web::{Form, Path, Query};
use serde::Deserialize;

use crate::Central;
use crate::api::{self, AlertsQuery, ApiError, DevicesQuery, HistoryQuery, Login};
use crate::model::Principal;

pub fn routes() -> Router<Arc<Central>> {
    Router::new()
        .route("/", get(overview))
        .route("/login", get(login_form).post(login_submit))
        .route("/sites/{site}", get(site_page))
        .route("/sites/{site}/devices/{device}", get(device_page))
        .route("/alerts", get(alerts_page))
}

fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '&' => o.push_str("&amp;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

fn url(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn page(title: &str, who: Option<&Principal>, body: &str) -> Html<String> {
    let nav = match who {
        Some(p) => format!(
            "<nav><a href=\"/\">Fleet</a> · <a href=\"/alerts\">Alerts</a> <span class=\"who\">{} @ {} ({})</span></nav>",
            esc(&p.name),
            esc(&p.tenant),
            p.role.as_str()
        ),
        None => String::new(),
    };
    Html(format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>{t} · Outpost</title><style>\
body{{font-family:sans-serif;margin:1.5em;color:#222}}table{{border-collapse:collapse;margin:.5em 0}}\
td,th{{border:1px solid #ccc;padding:.25em .6em;text-align:left}}th{{background:#eee}}\
.bad{{color:#b00;font-weight:bold}}.ok{{color:#070}}.who{{float:right;color:#666}}nav{{margin-bottom:1em}}\
</style></head><body>{nav}<h1>{t}</h1>{body}</body></html>",
        t = esc(title)
    ))
}

fn ago(ms: Option<u64>) -> String {
    match ms {
        None => "never".into(),
        Some(ms) => format!("{}s", ms / 1000),
    }
}

async fn who(c: &Arc<Central>, h: &HeaderMap) -> Result<Principal, Response> {
    match api::principal_of(c, h).await {
        Ok(Some(p)) => Ok(p),
        Ok(None) => Err(Redirect::to("/login").into_response()),
        Err(e) => Err(e.into_response()),
    }
}

fn err_page(p: &Principal, e: ApiError) -> Response {
    let status = match &e {
        ApiError::NotFound(_) => StatusCode::NOT_FOUND,
        ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    (
        status,
        page(
            "Not available",
            Some(p),
            &format!("<p>{}</p>", esc(&e.to_string())),
        ),
    )
        .into_response()
}

async fn login_form() -> Html<String> {
    page(
        "Sign in",
        None,
        "<form method=\"post\" action=\"/login\">\
<p><label>Tenant <input name=\"tenant\" id=\"tenant\"></label></p>\
<p><label>User <input name=\"username\" id=\"username\"></label></p>\
<p><label>Password <input name=\"password\" id=\"password\" type=\"password\"></label></p>\
<p><button type=\"submit\" id=\"signin\">Sign in</button></p></form>",
    )
}

async fn login_submit(
    State(c): State<Arc<Central>>,
    api::ClientAddr(addr): api::ClientAddr,
    Form(l): Form<Login>,
) -> Response {
    let r = api::login_response(&c, l, addr).await;
    let status = r.status();
    if status == StatusCode::TOO_MANY_REQUESTS || status == StatusCode::SERVICE_UNAVAILABLE {
        let wait = r
            .headers()
            .get(header::RETRY_AFTER)
            .cloned()
            .unwrap_or(header::HeaderValue::from_static("1"));
        let secs = wait.to_str().unwrap_or("1").to_string();
        let why = if status == StatusCode::TOO_MANY_REQUESTS {
            "Too many failed sign-ins for this user or address."
        } else {
            "Sign-in is busy."
        };
        return (
            status,
            [(header::RETRY_AFTER, wait)],
            page(
                "Sign in",
                None,
                &format!(
                    "<p class=\"bad\" id=\"throttled\">{why} Try again in {} s.</p><p><a href=\"/login\">Sign in</a></p>",
                    esc(&secs)
                ),
            ),
        )
            .into_response();
    }
    if status != StatusCode::OK {
        return (StatusCode::UNAUTHORIZED, page("Sign in", None, "<p class=\"bad\">Wrong tenant, user name or password.</p><p><a href=\"/login\">Try again</a></p>"))
            .into_response();
    }
    let mut resp = Redirect::to("/").into_response();
    if let Some(v) = r.headers().get(header::SET_COOKIE) {
        resp.headers_mut().insert(header::SET_COOKIE, v.clone());
    }
    resp
}

async fn overview(State(c): State<Arc<Central>>, h: HeaderMap) -> Response {
    let p = match who(&c, &h).await {
        Ok(p) => p,
        Err(r) => return r,
    };
    let f = match api::fleet_summary(&c, &p).await {
        Ok(f) => f,
        Err(e) => return err_page(&p, e),
    };
    page("Fleet overview", Some(&p), &fleet_html(&f)).into_response()
}

/// The overview's body: totals, then one row per site. Firing and pending
/// alerts are counted apart (a pending alert was not announced yet).
fn fleet_html(f: &api::FleetSummary) -> String {
    let mut b = String::new();
    let t = &f.totals;
    let _ = write!(
        b,
        "<p id=\"totals\">{} devices: {} online, <span class=\"{}\">{} offline</span>, {} pending, {} revoked, {} critical; {} firing alerts, {} pending alerts; <span class=\"{}\">{} stale sites</span></p>",
        t.devices,
        t.online,
        if t.offline > 0 { "bad" } else { "ok" },
        t.offline,
        t.pending,
        t.revoked,
        t.critical,
        t.alerts_firing,
        t.alerts_pending,
        if f.stale_sites > 0 { "bad" } else { "ok" },
        f.stale_sites
    );
    b.push_str("<table id=\"fleet\"><tr><th>Customer</th><th>Site</th><th>Devices</th><th>Online</th><th>Offline</th><th>Revoked</th><th>Critical</th><th>Firing alerts</th><th>Pending alerts</th><th>Uplink</th><th>Lag</th></tr>");
    for cu in &f.customers {
        for s in &cu.sites {
            let _ = write!(
                b,
                "<tr><td>{}</td><td><a href=\"/sites/{}\">{}</a>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"{}\">{}{}</td><td>{}</td></tr>",
                esc(&cu.customer),
                url(&s.site.site_id),
                esc(&s.site.name),
                if s.site.tenant_mismatch.is_empty() {
                    ""
                } else {
                    " <span class=\"bad\">(tenant mismatch)</span>"
                },
                s.counts.devices,
                s.counts.online,
                s.counts.offline,
                s.counts.revoked,
                s.counts.critical,
                s.counts.alerts_firing,
                s.counts.alerts_pending,
                if s.site.stale { "bad" } else { "ok" },
                esc(&s.site.link),
                if s.site.stale { " (stale)" } else { "" },
                ago(s.site.lag_ms)
            );
        }
    }
    b.push_str("</table>");
    b
}

#[derive(Debug, Deserialize)]
struct PageQuery {
    after: Option<String>,
}

async fn site_page(
    State(c): State<Arc<Central>>,
    h: HeaderMap,
    Path(site): Path<SiteId>,
    Query(q): Query<PageQuery>,
) -> Response {
    let p = match who(&c, &h).await {
        Ok(p) => p,
        Err(r) => return r,
    };
    let dq = DevicesQuery {
        site: Some(site.clone()),
        after: q.after,
        limit: Some(100),
        ..Default::default()
    };
    let devs = match api::device_page(&c, &p, dq).await {
        Ok(d) => d,
        Err(e) => return err_page(&p, e),
    };
    let s = match api::fleet_summary(&c, &p).await {
        Ok(f) => f
            .customers
            .into_iter()
            .flat_map(|c| c.sites)
            .find(|s| s.site.site_id == site),
        Err(e) => return err_page(&p, e),
    };
    let Some(s) = s else {
        return err_page(&p, ApiError::NotFound(format!("no site {site}")));
    };
    let mut b = tenant_mismatch(&p.tenant, &s.site);
    b.push_str(&dead_letters(&s.site));
    let _ = write!(
        b,
        "<p id=\"site-info\">Customer {} · uplink {} · lag {} · last sequence {} · {} devices ({} online, {} offline, {} revoked)</p>",
        esc(&s.site.customer),
        esc(&s.site.link),
        ago(s.site.lag_ms),
        s.site.applied_up_to,
        s.counts.devices,
        s.counts.online,
        s.counts.offline,
        s.counts.revoked
    );
    b.push_str("<table id=\"devices\"><tr><th>Device</th><th>Status</th><th>OS</th><th>CPU (last 5 min avg)</th></tr>");
    for d in &devs.devices {
        let cpu = d
            .latest
            .iter()
            .find(|l| l.series == "cpu")
            .map(|l| {
                format!(
                    "{:.1}",
                    if l.rollup.count > 0 {
                        l.rollup.sum / l.rollup.count as f64
                    } else {
                        0.0
                    }
                )
            })
            .unwrap_or_else(|| "-".into());
        let _ = write!(
            b,
            "<tr><td><a href=\"/sites/{}/devices/{}\">{}</a></td><td>{}</td><td>{}</td><td>{}</td></tr>",
            url(&site),
            url(&d.device),
            esc(if d.hostname.is_empty() {
                &d.device
            } else {
                &d.hostname
            }),
            d.status.as_str(),
            esc(&d.os),
            cpu
        );
    }
    b.push_str("</table>");
    if let Some(n) = devs.next {
        let _ = write!(
            b,
            "<p><a id=\"next\" href=\"/sites/{}?after={}\">Next page</a></p>",
            url(&site),
            url(&n)
        );
    }
    page(&format!("Site {}", s.site.name), Some(&p), &b).into_response()
}

/// The warning of a site whose devices were enrolled under another tenant.
fn tenant_mismatch(tenant: &str, s: &api::SiteOut) -> String {
    if s.tenant_mismatch.is_empty() {
        return String::new();
    }
    let n: u64 = s.tenant_mismatch.iter().map(|t| t.devices).sum();
    let which: Vec<String> = s
        .tenant_mismatch
        .iter()
        .map(|t| format!("{} ({})", esc(&t.tenant), t.devices))
        .collect();
    format!(
        "<p id=\"tenant-mismatch\" class=\"bad\">Tenant mismatch: {n} device{} of this site {} enrolled under tenant {}, not {}. They are listed here, under {}; re-enroll them at the site with a token for {} (or join the appliance to a site of the right tenant).</p>",
        if n == 1 { "" } else { "s" },
        if n == 1 { "was" } else { "were" },
        which.join(", "),
        esc(tenant),
        esc(tenant),
        esc(tenant),
    )
}

/// The batches of a site refused for good (newest last).
fn dead_letters(s: &api::SiteOut) -> String {
    if s.dead_lettered == 0 {
        return String::new();
    }
    let mut b = format!(
        "<div id=\"dead-letters\"><p class=\"bad\">{} batch{} of this site {} refused for good (dead-lettered: what {} carried is not shown here).</p>\
<table><tr><th>Sequence</th><th>Reason</th><th>Refused</th><th>Message</th></tr>",
        s.dead_lettered,
        if s.dead_lettered == 1 { "" } else { "es" },
        if s.dead_lettered == 1 { "was" } else { "were" },
        if s.dead_lettered == 1 { "it" } else { "they" },
    );
    for d in &s.dead_letters {
        let _ = write!(
            b,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            d.seq,
            esc(&d.reason),
            ago(Some(crate::now_ms().saturating_sub(d.at_ms))) + " ago",
            esc(&d.message)
        );
    }
    b.push_str("</table></div>");
    b
}

/// An SVG line chart of (x, y) points.
fn chart(points: &[(u64, f64)]) -> String {
    if points.is_empty() {
        return "<p>No rollups yet.</p>".into();
    }
    let (w, hgt) = (600.0, 160.0);
    let x0 = points[0].0 as f64;
    let x1 = (points[points.len() - 1].0 as f64).max(x0 + 1.0);
    let ymax = points.iter().map(|p| p.1).fold(1.0_f64, f64::max);
    let pts: Vec<String> = points
        .iter()
        .map(|(x, y)| {
            format!(
                "{:.1},{:.1}",
                (*x as f64 - x0) / (x1 - x0) * w,
                hgt - y / ymax * hgt
            )
        })
        .collect();
    format!(
        "<svg id=\"chart\" width=\"{w}\" height=\"{hgt}\" style=\"border:1px solid #ccc\"><polyline fill=\"none\" stroke=\"#06c\" stroke-width=\"2\" points=\"{}\"/></svg><p>max {ymax:.1}</p>",
        pts.join(" ")
    )
}

async fn device_page(
    State(c): State<Arc<Central>>,
    h: HeaderMap,
    Path((site, device)): Path<(SiteId, String)>,
) -> Response {
    let p = match who(&c, &h).await {
        Ok(p) => p,
        Err(r) => return r,
    };
    let d = match api::device_detail(&c, &p, &site, &device).await {
        Ok(d) => d,
        Err(e) => return err_page(&p, e),
    };
    let hist = match api::history(
        &c,
        &p,
        &site,
        &device,
        HistoryQuery {
            series: Some("cpu".into()),
            label: String::new(),
            from: None,
            to: None,
            limit: Some(2000),
        },
    )
    .await
    {
        Ok(h) => h,
        Err(e) => return err_page(&p, e),
    };
    let dv = &d.device;
    let mut b = String::new();
    let _ = write!(
        b,
        "<p id=\"device-info\">Site <a href=\"/sites/{}\">{}</a> · status <b>{}</b> · last seen {} · {} · agent {} · {} rollups</p>",
        url(&site),
        esc(&d.site.name),
        dv.status.as_str(),
        if dv.last_seen_ms > 0 {
            format!(
                "{} ago",
                ago(Some(crate::now_ms().saturating_sub(dv.last_seen_ms)))
            )
        } else {
            "never".into()
        },
        esc(&dv.os),
        esc(&dv.agent_version),
        dv.rollups_stored
    );
    b.push_str("<h2>CPU % (5-minute averages)</h2>");
    let pts: Vec<(u64, f64)> = hist
        .points
        .iter()
        .map(|p| (p.bucket_start_ms, p.avg))
        .collect();
    b.push_str(&chart(&pts));
    b.push_str("<h2>Latest rollups</h2><table id=\"latest\"><tr><th>Series</th><th>Min</th><th>Max</th><th>Avg</th><th>Last</th></tr>");
    for l in &dv.latest {
        let r = &l.rollup;
        let name = if l.label.is_empty() {
            l.series.clone()
        } else {
            format!("{}[{}]", l.series, l.label)
        };
        let _ = write!(
            b,
            "<tr><td>{}</td><td>{:.2}</td><td>{:.2}</td><td>{:.2}</td><td>{:.2}</td></tr>",
            esc(&name),
            r.min,
            r.max,
            if r.count > 0 {
                r.sum / r.count as f64
            } else {
                0.0
            },
            r.last
        );
    }
    b.push_str("</table>");
    b.push_str(&alert_table(&d.alerts));
    let title = if dv.hostname.is_empty() {
        dv.device.clone()
    } else {
        dv.hostname.clone()
    };
    page(&format!("Device {title}"), Some(&p), &b).into_response()
}

fn alert_table(a: &[crate::model::AlertRow]) -> String {
    let mut b = String::from(
        "<h2>Alerts</h2><table id=\"alerts\"><tr><th>Site</th><th>Device</th><th>Rule</th><th>Severity</th><th>State</th><th>Message</th></tr>",
    );
    for x in a.iter().take(500) {
        let _ = write!(
            b,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&x.site_id),
            esc(x.device.as_deref().unwrap_or("-")),
            esc(&x.rule),
            x.severity.as_str(),
            x.state.as_str(),
            esc(&x.message)
        );
    }
    b.push_str("</table>");
    b
}

async fn alerts_page(State(c): State<Arc<Central>>, h: HeaderMap) -> Response {
    let p = match who(&c, &h).await {
        Ok(p) => p,
        Err(r) => return r,
    };
    match api::alert_list(
        &c,
        &p,
        AlertsQuery {
            site: None,
            active: false,
        },
    )
    .await
    {
        Ok(a) => page("Alerts", Some(&p), &alert_table(&a)).into_response(),
        Err(e) => err_page(&p, e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_overview_counts_firing_and_pending_alerts_apart() {
        let f = api::FleetSummary {
            totals: api::Counts {
                devices: 3,
                alerts_firing: 1,
                alerts_pending: 3,
                ..Default::default()
            },
            stale_sites: 0,
            customers: Vec::new(),
        };
        let html = fleet_html(&f);
        assert!(html.contains("1 firing alerts, 3 pending alerts"), "{html}");
        assert!(!html.contains("active alerts"), "{html}");
        assert!(html.contains("<th>Firing alerts</th><th>Pending alerts</th>"));
    }
}
