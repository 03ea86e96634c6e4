//! The bodies of the console's pages, as pure functions of what the
//! backend answered (no I/O, no clock: `now_ms` is a parameter). Every
//! value goes through maud, which escapes it.

pub mod layout;

use maud::{Markup, html};

use crate::backend::{
    AlertDetail, AlertList, AlertQuery, AlertView, Counts, CustomerHealth, Dashboard, DeviceDetail,
    DeviceList, DeviceQuery, DeviceSort, DeviceView, Facets, MetricSeries, Range, SiteDetail,
    SiteHealth, Viewer,
};
use crate::chart::{self, Chart, ChartSeries};
use crate::format::{self, Unit};
use layout::{alert_href, badge, device_href, enc, query, site_href, time};

/// A number linking to the list it counts (plain text when zero).
fn count_link(n: u64, href: &str, key: &str) -> Markup {
    html! {
        @if n > 0 {
            a href=(href) data-k=(key) { (format::count(n as i64)) }
        } @else {
            span.zero data-k=(key) { "0" }
        }
    }
}

fn devices_href(site: Option<&str>, customer: Option<&str>, status: Option<&str>) -> String {
    format!(
        "/devices{}",
        query(&[("customer", customer), ("site", site), ("status", status)])
    )
}

fn alerts_href(
    state: Option<&str>,
    severity: Option<&str>,
    customer: Option<&str>,
    site: Option<&str>,
) -> String {
    format!(
        "/alerts{}",
        query(&[
            ("state", state),
            ("severity", severity),
            ("customer", customer),
            ("site", site)
        ])
    )
}

/// One tile of the dashboard: a big number linking to its list.
fn tile(label: &str, n: u64, href: &str, key: &str, bad: bool) -> Markup {
    html! {
        a.tile.bad[bad && n > 0] href=(href) data-tile=(key) {
            span.num data-k=(key) { (format::count(n as i64)) }
            span.label { (label) }
        }
    }
}

/// The dashboard: counts first (each a link to the filtered list), then
/// per customer and site.
/// Site rows a customer shows on the dashboard unless expanded: a tenant
/// with thousands of sites gets a page of customers, not of every site.
pub const SITES_PER_CUSTOMER: usize = 8;

/// A site a technician should look at: devices offline or critical,
/// alerts firing, a stale or disconnected uplink.
fn needs_attention(s: &SiteHealth) -> bool {
    s.counts.offline > 0
        || s.counts.critical > 0
        || s.counts.alerts_firing > 0
        || s.stale
        || s.link.as_deref().is_some_and(|l| l != "connected")
}

/// The sites a customer's rows show, those needing attention first (then
/// by name), all of them when `expanded`; and how many are left out.
fn shown_sites(c: &CustomerHealth, expanded: bool) -> (Vec<&SiteHealth>, usize) {
    let mut v: Vec<&SiteHealth> = c.sites.iter().collect();
    v.sort_by(|a, b| {
        needs_attention(b)
            .cmp(&needs_attention(a))
            .then_with(|| a.name.cmp(&b.name))
    });
    if expanded || v.len() <= SITES_PER_CUSTOMER {
        return (v, 0);
    }
    let hidden = v.len() - SITES_PER_CUSTOMER;
    v.truncate(SITES_PER_CUSTOMER);
    (v, hidden)
}

/// `expanded`: the customer whose sites are all listed.
pub fn dashboard(d: &Dashboard, expanded: Option<&str>, now_ms: u64) -> Markup {
    let t = &d.totals;
    let sev = &d.firing_by_severity;
    html! {
        p.lede #totals {
            (format::count(t.devices as i64)) " devices: "
            (t.online) " online, " (t.offline) " offline, " (t.pending) " pending, "
            (t.revoked) " revoked · " (t.critical) " critical · "
            (t.alerts_firing) " firing alerts, " (t.alerts_pending) " pending alerts · "
            (d.stale_sites) " stale sites"
        }
        section.tiles #tiles data-scope="totals" {
            (tile("devices", t.devices, "/devices", "devices", false))
            (tile("online", t.online, &devices_href(None, None, Some("online")), "online", false))
            (tile("offline", t.offline, &devices_href(None, None, Some("offline")), "offline", true))
            (tile("critical devices", t.critical, &devices_href(None, None, Some("critical")), "critical", true))
            (tile("firing alerts", t.alerts_firing, &alerts_href(Some("firing"), None, None, None), "alerts_firing", true))
            (tile("pending alerts", t.alerts_pending, &alerts_href(Some("pending"), None, None, None), "alerts_pending", false))
            (tile("stale sites", d.stale_sites, "#sites", "stale", true))
            @if let Some(p) = d.patch_compliance {
                a.tile href="/patches" { span.num { (format::percent(p)) } span.label { "patch compliance" } }
            }
        }
        section.severity #firing-by-severity {
            h2 { "Firing alerts by severity" }
            ul.sev {
                li { (badge("sev", "critical")) " " (count_link(sev.critical, &alerts_href(Some("firing"), Some("critical"), None, None), "sev_critical")) }
                li { (badge("sev", "warning")) " " (count_link(sev.warning, &alerts_href(Some("firing"), Some("warning"), None, None), "sev_warning")) }
                li { (badge("sev", "info")) " " (count_link(sev.info, &alerts_href(Some("firing"), Some("info"), None, None), "sev_info")) }
            }
        }
        section #sites {
            h2 { "Customers and sites" }
            @if d.customers.is_empty() {
                p.empty { "No sites yet. Add one with " code { "outpost-central site add" } "." }
            } @else {
                table.grid #fleet {
                    thead { tr {
                        th { "Customer / site" } th.n { "Devices" } th.n { "Online" } th.n { "Offline" }
                        th.n { "Revoked" } th.n { "Critical" } th.n { "Firing" } th.n { "Pending" }
                        th { "Uplink" } th { "Lag" }
                    } }
                    @for c in &d.customers {
                        tbody.customer data-customer=(c.customer) {
                            tr.customer-row data-scope=(format!("customer:{}", c.customer)) {
                                th scope="rowgroup" {
                                    a href=(devices_href(None, Some(&c.customer), None)) { (c.customer) }
                                }
                                (count_cells(&c.counts, None, Some(&c.customer)))
                                td {} td {}
                            }
                            @let (shown, hidden) = shown_sites(c, expanded == Some(c.customer.as_str()));
                            @for s in shown {
                                tr.site-row data-scope=(format!("site:{}", s.site_id)) {
                                    td.site {
                                        a href=(site_href(&s.site_id)) { (s.name) }
                                        @for m in &s.marks { " " span.mark { "(" (m) ")" } }
                                    }
                                    (count_cells(&s.counts, Some(&s.site_id), Some(&c.customer)))
                                    td {
                                        @if let Some(l) = &s.link {
                                            (badge("link", l))
                                            @if s.stale { " " span.badge.stale { "stale" } }
                                        }
                                    }
                                    td { @match s.lag_ms { Some(l) => (format::duration_ms(l)), None => span.muted { "–" } } }
                                }
                            }
                            @if hidden > 0 {
                                tr.more-sites {
                                    td colspan="10" {
                                        a href=(format!("/?customer={}#sites", enc(&c.customer))) {
                                            (format::count(hidden as i64)) " more sites of " (c.customer) " — show all"
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
            p.muted.small { "As of " (time(now_ms, false)) "; counts change live." }
        }
    }
}

fn count_cells(c: &Counts, site: Option<&str>, customer: Option<&str>) -> Markup {
    let (site, customer) = if site.is_some() {
        (site, None)
    } else {
        (None, customer)
    };
    html! {
        td.n { (count_link(c.devices, &devices_href(site, customer, None), "devices")) }
        td.n { (count_link(c.online, &devices_href(site, customer, Some("online")), "online")) }
        td.n { (count_link(c.offline, &devices_href(site, customer, Some("offline")), "offline")) }
        td.n { (count_link(c.revoked, &devices_href(site, customer, Some("revoked")), "revoked")) }
        td.n { (count_link(c.critical, &devices_href(site, customer, Some("critical")), "critical")) }
        td.n { (count_link(c.alerts_firing, &alerts_href(Some("firing"), None, customer, site), "alerts_firing")) }
        td.n { (count_link(c.alerts_pending, &alerts_href(Some("pending"), None, customer, site), "alerts_pending")) }
    }
}

fn select(name: &str, label: &str, options: &[(String, String)], cur: Option<&str>) -> Markup {
    html! {
        label {
            span { (label) }
            select name=(name) id=(format!("f-{name}")) {
                option value="" selected[cur.is_none()] { "All" }
                @for (v, text) in options {
                    option value=(v) selected[cur == Some(v.as_str())] { (text) }
                }
            }
        }
    }
}

/// The filters of the device list (a GET form: every state is a URL).
fn device_filters(
    q: &DeviceQuery,
    f: &Facets,
    action: &str,
    with_site: bool,
    tags: bool,
) -> Markup {
    let statuses: Vec<(String, String)> = ["online", "offline", "pending", "revoked", "critical"]
        .iter()
        .map(|s| (s.to_string(), s.to_string()))
        .collect();
    let customers: Vec<(String, String)> =
        f.customers.iter().map(|c| (c.clone(), c.clone())).collect();
    let sites: Vec<(String, String)> = f
        .sites
        .iter()
        .map(|(id, name, cu)| (id.clone(), format!("{name} ({cu})")))
        .collect();
    let sorts: Vec<(String, String)> = DeviceSort::ALL
        .iter()
        .map(|s| (s.as_str().to_string(), s.as_str().replace('_', " ")))
        .collect();
    html! {
        form.filters #device-filters method="get" action=(action) role="search" {
            label.grow {
                span { "Search" }
                input type="search" name="q" id="f-q" value=(q.text) placeholder="hostname, IP, OS or tag" autocomplete="off";
            }
            @if with_site && customers.len() > 1 { (select("customer", "Customer", &customers, q.customer.as_deref())) }
            @if with_site { (select("site", "Site", &sites, q.site.as_deref())) }
            (select("status", "Status", &statuses, q.status.as_deref()))
            @if tags {
                (select("tag", "Tag", &f.tags.iter().map(|t| (t.clone(), t.clone())).collect::<Vec<_>>(), q.tag.as_deref()))
            }
            label {
                span { "Sort" }
                select name="sort" id="f-sort" {
                    @for (v, t) in &sorts { option value=(v) selected[q.sort.as_str() == v] { (t) } }
                }
            }
            label {
                span { "Order" }
                select name="dir" id="f-dir" {
                    option value="asc" selected[!q.descending] { "ascending" }
                    option value="desc" selected[q.descending] { "descending" }
                }
            }
            button type="submit" id="f-apply" { "Apply" }
        }
    }
}

fn pct(v: Option<f64>) -> Markup {
    html! {
        @match v {
            Some(v) => span.meter data-pct=(format!("{:.0}", v.clamp(0.0, 100.0))) { (format::percent(v)) },
            None => span.muted { "–" },
        }
    }
}

/// A device row (also what live updates patch: `data-key`, `data-field`).
fn device_row(d: &DeviceView, now_ms: u64, bulk: bool) -> Markup {
    let key = format!("{}/{}", d.site_id, d.device);
    let name = if d.hostname.is_empty() {
        &d.device
    } else {
        &d.hostname
    };
    let _ = now_ms;
    html! {
        tr data-key=(key) data-status=(d.status) {
            @if bulk { td.sel { input type="checkbox" name="device" form="bulk-form" value=(key) aria-label=(format!("Select {name}")); } }
            td {
                a.host href=(device_href(&d.site_id, &d.device)) { (name) }
                @if d.critical { " " span.badge.sev-critical title="A critical alert is firing" { "critical" } }
                @for t in &d.tags { " " span.tag { (t) } }
                br; span.id.muted { (d.device) @for ip in &d.ips { " · " (ip) } }
            }
            td { (badge("st", &d.status)) }
            td { (d.customer) }
            td { a href=(site_href(&d.site_id)) { (d.site_name) } }
            td { (d.os) }
            td.n { (pct(d.cpu)) }
            td.n { (pct(d.memory)) }
            td.n { (pct(d.disk)) }
            td.n { @if d.open_alerts > 0 { a href=(alerts_href(None, None, None, Some(&d.site_id))) { (d.open_alerts) } } @else { span.muted { "0" } } }
            td data-field="last_seen" { (time(d.last_seen_ms, true)) }
        }
    }
}

/// The link of a sortable column header.
fn sort_link(q: &DeviceQuery, base: &str, key: DeviceSort, text: &str) -> Markup {
    let desc = q.sort == key && !q.descending;
    let href = format!(
        "{base}{}",
        query(&[
            ("q", Some(q.text.as_str())),
            ("customer", q.customer.as_deref()),
            ("site", q.site.as_deref()),
            ("status", q.status.as_deref()),
            ("tag", q.tag.as_deref()),
            ("sort", Some(key.as_str())),
            ("dir", Some(if desc { "desc" } else { "asc" })),
        ])
    );
    let arrow = if q.sort == key {
        if q.descending { " ▾" } else { " ▴" }
    } else {
        ""
    };
    html! { a href=(href) { (text) (arrow) } }
}

/// The device list with its filters, bulk bar and pagination. `base` is
/// the page it is on (`/devices`, or a site's page).
pub fn device_list(
    l: &DeviceList,
    q: &DeviceQuery,
    base: &str,
    with_site: bool,
    tags: bool,
    bar: &crate::bulk_actions::BulkBar,
    now_ms: u64,
) -> Markup {
    let next = l.next.as_ref().map(|n| {
        format!(
            "{base}{}",
            query(&[
                ("q", Some(q.text.as_str())),
                ("customer", q.customer.as_deref()),
                ("site", q.site.as_deref()),
                ("status", q.status.as_deref()),
                ("tag", q.tag.as_deref()),
                ("sort", Some(q.sort.as_str())),
                ("dir", Some(if q.descending { "desc" } else { "asc" })),
                ("after", Some(n.as_str())),
            ])
        )
    });
    let first = format!(
        "{base}{}",
        query(&[
            ("q", Some(q.text.as_str())),
            ("customer", q.customer.as_deref()),
            ("site", q.site.as_deref()),
            ("status", q.status.as_deref()),
            ("tag", q.tag.as_deref()),
            ("sort", Some(q.sort.as_str())),
            ("dir", Some(if q.descending { "desc" } else { "asc" })),
        ])
    );
    html! {
        (device_filters(q, &l.facets, base, with_site, tags))
        p.count #device-count {
            @if l.total_more { "more than " }
            span #match-count { (format::count(l.total as i64)) } " device" @if l.total != 1 || l.total_more { "s" } " match"
            @if q.after.is_some() { " · " a href=(first) { "first page" } }
        }
        (crate::bulk_actions::bar(bar))
        div.scroll {
            table.grid #devices {
                thead { tr {
                    th.sel { input type="checkbox" id="select-all" aria-label="Select all on this page"; }
                    th { (sort_link(q, base, DeviceSort::Hostname, "Device")) }
                    th { (sort_link(q, base, DeviceSort::Status, "Status")) }
                    th { (sort_link(q, base, DeviceSort::Customer, "Customer")) }
                    th { (sort_link(q, base, DeviceSort::Site, "Site")) }
                    th { "OS" }
                    th.n { (sort_link(q, base, DeviceSort::Cpu, "CPU")) }
                    th.n { "Memory" }
                    th.n { "Disk" }
                    th.n { "Alerts" }
                    th { (sort_link(q, base, DeviceSort::LastSeen, "Last seen")) }
                } }
                tbody {
                    @for d in &l.rows { (device_row(d, now_ms, true)) }
                    @if l.rows.is_empty() { tr { td.empty colspan="11" { "No device matches." } } }
                }
            }
        }
        @if let Some(n) = next {
            p.pager { a #next href=(n) { "Next page ›" } }
        }
    }
}

/// A site's page: facts, warnings, refused batches, then its devices.
pub fn site(
    s: &SiteDetail,
    l: &DeviceList,
    q: &DeviceQuery,
    tags: bool,
    bar: &crate::bulk_actions::BulkBar,
    now_ms: u64,
) -> Markup {
    let h = &s.health;
    let c = &h.counts;
    html! {
        @for n in &s.notices { p.notice.bad id=(n.id) { (n.text) } }
        p.facts #site-info {
            "Customer " b { (h.customer) }
            @if let Some(l) = &h.link { " · uplink " (badge("link", l)) @if h.stale { " " span.badge.stale { "stale" } } }
            @if let Some(l) = h.lag_ms { " · lag " (format::duration_ms(l)) }
            @for (k, v) in &s.facts { " · " (k) " " (v) }
            " · " (c.devices) " devices (" (c.online) " online, " (c.offline) " offline, " (c.revoked) " revoked)"
        }
        @if s.dead_lettered > 0 {
            div.notice.bad #dead-letters {
                p { (s.dead_lettered) " batch" @if s.dead_lettered != 1 { "es" } " of this site "
                    @if s.dead_lettered == 1 { "was" } @else { "were" }
                    " refused for good (dead-lettered: what they carried is not shown here)." }
                table.grid { thead { tr { th { "Sequence" } th { "Reason" } th { "Refused" } th { "Message" } } }
                    tbody { @for d in &s.dead_letters { tr {
                        td { (d.seq) @if d.last_seq > d.seq { "–" (d.last_seq) } }
                        td { code { (d.reason) } }
                        td { (time(d.at_ms, true)) }
                        td { (d.message) }
                    } } }
                }
            }
        }
        h2 { "Devices" }
        (device_list(l, q, &site_href(&h.site_id), false, tags, bar, now_ms))
    }
}

/// Chart titles of the device page, by metric name.
fn chart_title(name: &str) -> &'static str {
    use outpost_proto::metric_names as m;
    match name {
        m::CPU => "CPU",
        m::MEMORY => "Memory",
        m::DISK_USED_PERCENT => "Disk usage",
        m::NET_RX_BYTES_PER_SEC | m::NET_TX_BYTES_PER_SEC => "Network",
        m::SWAP => "Swap",
        m::LOAD1 => "Load (1 min)",
        _ => "Metric",
    }
}

/// Groups a device's series into charts: one per metric name, every
/// label a line (disks by mount point; network rx and tx of the busiest
/// interface as two lines).
pub fn charts(series: &[MetricSeries], range: Range, now_ms: u64) -> Vec<Chart> {
    use outpost_proto::metric_names as m;
    let from = now_ms.saturating_sub(range.duration_ms());
    let mut out: Vec<Chart> = Vec::new();
    for s in series {
        let (group, label) = match s.key.name.as_str() {
            m::NET_RX_BYTES_PER_SEC => ("net", format!("{} rx", s.key.label)),
            m::NET_TX_BYTES_PER_SEC => ("net", format!("{} tx", s.key.label)),
            n => (n, s.key.label.clone()),
        };
        let id = format!("chart-{}", group.replace('_', "-"));
        let line = ChartSeries {
            label,
            points: s.points.clone(),
        };
        match out.iter_mut().find(|c| c.id == id) {
            Some(c) => c.series.push(line),
            None => out.push(Chart {
                id,
                title: format!("{} ({})", chart_title(&s.key.name), s.source),
                unit: Unit::of_metric(&s.key.name),
                from_ms: from,
                to_ms: now_ms,
                step_ms: s.step_ms,
                series: vec![line],
            }),
        }
    }
    out
}

/// The device page.
pub fn device(
    d: &DeviceDetail,
    series: &[MetricSeries],
    range: Range,
    v: &Viewer,
    csrf: &str,
    now_ms: u64,
) -> Markup {
    let dv = &d.device;
    let base = device_href(&dv.site_id, &dv.device);
    let key = format!("{}/{}", dv.site_id, dv.device);
    html! {
        section.device-head #device-info data-key=(key) {
            p.facts {
                (badge("st", &dv.status)) " since " (time(dv.status_since_ms, true))
                " · last seen " span data-field="last_seen" { (time(dv.last_seen_ms, true)) }
                " · site " a href=(site_href(&dv.site_id)) { (dv.site_name) }
                " · customer " (dv.customer)
                @if dv.critical { " · " span.badge.sev-critical { "critical alert firing" } }
            }
            dl.inventory #inventory {
                dt { "Hostname" } dd { (dv.hostname) }
                dt { "Device id" } dd { code { (dv.device) } }
                dt { "OS" } dd { (dv.os) }
                dt { "Agent" } dd { (dv.agent_version) }
                @if !dv.ips.is_empty() { dt { "IP addresses" } dd { (dv.ips.join(", ")) } }
                @if !dv.tags.is_empty() { dt { "Tags" } dd { @for t in &dv.tags { span.tag { (t) } " " } } }
                @for (k, val) in &d.inventory { dt { (k) } dd { (val) } }
            }
        }
        section #metrics {
            div.range #range role="group" aria-label="Time range" {
                "Range: "
                @for r in Range::ALL {
                    @if r == range { b.current { (r.as_str()) } } @else { a href=(format!("{base}?range={}", r.as_str())) data-range=(r.as_str()) { (r.as_str()) } }
                    " "
                }
            }
            div.charts {
                @for c in charts(series, range, now_ms) { (chart::render(&c)) }
                @if series.is_empty() { p.empty { "No metrics stored for this device yet." } }
            }
        }
        section #latest-values {
            h2 { "Latest values" }
            @if d.latest.is_empty() { p.empty { "None yet." } } @else {
                table.grid #latest { thead { tr { th { "Metric" } th { "Label" } th.n { "Value" } th { "At" } } }
                    tbody { @for l in &d.latest { tr {
                        td { (l.name) } td { (l.label) }
                        td.n { (Unit::of_metric(&l.name).format(l.value)) }
                        td { (time(l.at_ms, true)) }
                    } } }
                }
            }
        }
        section #device-alerts {
            h2 { "Alerts" }
            (alert_table(&d.alerts, v, csrf, false, now_ms))
        }
        section #transitions {
            h2 { "Status changes" }
            @if d.transitions.is_empty() { p.empty { "No status change recorded." } } @else {
                ol.timeline { @for t in &d.transitions { li { (time(t.at_ms, false)) " " (badge("st", &t.status)) } } }
            }
        }
        @for p in &d.panels {
            section.panel id=(p.id) { h2 { (p.title) } dl { @for (k, val) in &p.rows { dt { (k) } dd { (val) } } } }
        }
    }
}

/// The ack form of one alert (technicians and admins; hidden otherwise).
fn ack_form(a: &AlertView, csrf: &str, compact: bool) -> Markup {
    html! {
        form.ack method="post" action=(format!("{}/ack", alert_href(&a.site_id, a.alert_id))) {
            input type="hidden" name="csrf" value=(csrf);
            @if compact {
                input type="text" name="comment" placeholder="comment" maxlength="1000" aria-label="Comment";
            } @else {
                label { span { "Comment" } textarea name="comment" id="ack-comment" maxlength="1000" rows="3" placeholder="What you found or did" {} }
            }
            button type="submit" class="ack-button" { "Acknowledge" }
        }
    }
}

/// A table of alerts (the inbox, a device's alerts).
pub fn alert_table(
    rows: &[AlertView],
    v: &Viewer,
    csrf: &str,
    with_site: bool,
    _now_ms: u64,
) -> Markup {
    html! {
        @if rows.is_empty() { p.empty { "No alert." } } @else {
            div.scroll { table.grid #alerts {
                thead { tr {
                    th { "Severity" } th { "State" } th { "Alert" } th { "Device" }
                    @if with_site { th { "Site" } th { "Customer" } }
                    th { "Since" } th { "Acknowledged" }
                } }
                tbody { @for a in rows {
                    tr data-alert=(format!("{}/{}", a.site_id, a.alert_id)) data-state=(a.state) {
                        td { (badge("sev", &a.severity)) }
                        td { (badge("state", &a.state)) }
                        td { a href=(alert_href(&a.site_id, a.alert_id)) { b { (a.rule) } } br; span.msg { (a.message) } }
                        td { @match (&a.device, &a.hostname) {
                            (Some(d), h) => a href=(device_href(&a.site_id, d)) { (h.as_deref().filter(|h| !h.is_empty()).unwrap_or(d)) },
                            (None, _) => span.muted { "site" },
                        } }
                        @if with_site { td { a href=(site_href(&a.site_id)) { (a.site_name) } } td { (a.customer) } }
                        td { (time(a.at_ms, true)) }
                        td.ack-cell {
                            @if let Some(by) = &a.acked_by {
                                span.acked { "✓ " (by) } " " (time(a.acked_ms, true))
                                @if let Some(c) = &a.ack_comment { br; span.comment { (c) } }
                            } @else if v.can.ack_alerts && a.is_open() {
                                (ack_form(a, csrf, true))
                            } @else { span.muted { "–" } }
                        }
                    }
                } }
            } }
        }
    }
}

/// The alert inbox.
pub fn alerts(l: &AlertList, q: &AlertQuery, v: &Viewer, csrf: &str, now_ms: u64) -> Markup {
    let states: Vec<(String, String)> = ["open", "firing", "pending", "resolved", "cleared", "all"]
        .iter()
        .map(|s| (s.to_string(), s.to_string()))
        .collect();
    let sevs: Vec<(String, String)> = ["critical", "warning", "info"]
        .iter()
        .map(|s| (s.to_string(), s.to_string()))
        .collect();
    let customers: Vec<(String, String)> = l
        .facets
        .customers
        .iter()
        .map(|c| (c.clone(), c.clone()))
        .collect();
    let sites: Vec<(String, String)> = l
        .facets
        .sites
        .iter()
        .map(|(id, name, cu)| (id.clone(), format!("{name} ({cu})")))
        .collect();
    html! {
        form.filters #alert-filters method="get" action="/alerts" {
            label { span { "State" } select name="state" id="f-state" {
                @for (val, t) in &states { option value=(val) selected[q.state.as_deref().unwrap_or("open") == val] { (t) } }
            } }
            (select("severity", "Severity", &sevs, q.severity.as_deref()))
            @if customers.len() > 1 { (select("customer", "Customer", &customers, q.customer.as_deref())) }
            @if sites.len() > 1 { (select("site", "Site", &sites, q.site.as_deref())) }
            button type="submit" id="f-apply" { "Apply" }
        }
        p.count #alert-count {
            (format::count(l.total as i64)) " alert" @if l.total != 1 { "s" }
            @if (l.rows.len() as u64) < l.total { " (newest " (l.rows.len()) " shown)" }
            span.live-note #new-alerts hidden { " · " a href="" { "new alerts: reload" } }
        }
        (alert_table(&l.rows, v, csrf, true, now_ms))
    }
}

/// One alert: what it is, its history, and the acknowledge form.
pub fn alert(d: &AlertDetail, v: &Viewer, csrf: &str) -> Markup {
    let a = &d.alert;
    html! {
        section #alert-info data-alert=(format!("{}/{}", a.site_id, a.alert_id)) {
            p.facts {
                (badge("sev", &a.severity)) " " (badge("state", &a.state))
                " · since " (time(a.at_ms, true)) " · first " (time(a.first_ms, false))
            }
            p.message { (a.message) @if let Some(val) = a.value { " (value " (format::number(val)) ")" } }
            dl.inventory {
                dt { "Rule" } dd { (a.rule) }
                dt { "Device" } dd { @match &a.device {
                    Some(dev) => a href=(device_href(&a.site_id, dev)) { (a.hostname.as_deref().filter(|h| !h.is_empty()).unwrap_or(dev)) },
                    None => span.muted { "the site" },
                } }
                dt { "Site" } dd { a href=(site_href(&a.site_id)) { (a.site_name) } }
                dt { "Customer" } dd { (a.customer) }
                dt { "Acknowledged" } dd #acked {
                    @match &a.acked_by {
                        Some(by) => { (by) " " (time(a.acked_ms, true)) @if let Some(c) = &a.ack_comment { ": " span.comment { (c) } } },
                        None => "no",
                    }
                }
            }
        }
        @if v.can.ack_alerts {
            section #ack { h2 { "Acknowledge" } (ack_form(a, csrf, false)) }
        }
        section #history {
            h2 { "History" }
            @if d.history.is_empty() { p.empty { "No transition recorded." } } @else {
                ol.timeline { @for e in &d.history { li {
                    (time(e.at_ms, false)) " "
                    @if e.what == "acknowledged" { span.badge.acked { "acknowledged" } } @else { (badge("state", &e.what)) }
                    @if let Some(by) = &e.by { " by " b { (by) } }
                    @if !e.text.is_empty() { " — " (e.text) }
                    @if let Some(val) = e.value { " (" (format::number(val)) ")" }
                } } }
            }
        }
    }
}

/// The sign-in form (`tenant` when the backend needs it).
pub fn login(tenant: bool, message: Option<(&str, &str)>) -> Markup {
    html! {
        @if let Some((id, m)) = message { p.notice.bad id=(id) { (m) } }
        form.login method="post" action="/login" {
            @if tenant { label { span { "Tenant" } input name="tenant" id="tenant" autocomplete="organization" required; } }
            label { span { "User" } input name="username" id="username" autocomplete="username" required; }
            label { span { "Password" } input name="password" id="password" type="password" autocomplete="current-password" required; }
            button type="submit" id="signin" { "Sign in" }
        }
    }
}

/// A page saying what went wrong (and where to go).
pub fn message(text: &str) -> Markup {
    html! { p.notice #message { (text) } p { a href="/" { "Back to the dashboard" } } }
}

/// A page of a later issue.
pub fn not_yet(what: &str) -> Markup {
    html! { p.notice #not-yet { (what) " are not available on this server yet." } }
}

/// Link-encoded helper for the routes (re-exported).
pub fn encode(s: &str) -> String {
    enc(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{Capabilities, CustomerHealth, SiteHealth};
    use crate::chart::ChartPoint;

    fn viewer(ack: bool) -> Viewer {
        Viewer {
            name: "alice".into(),
            tenant: "msp".into(),
            customers: vec![],
            role: "viewer".into(),
            can: Capabilities {
                ack_alerts: ack,
                ..Default::default()
            },
            csrf_subject: vec![],
        }
    }

    fn alert_view() -> AlertView {
        AlertView {
            site_id: "s-1".into(),
            site_name: "Harbour".into(),
            customer: "dental".into(),
            alert_id: 9,
            device: Some("2a".into()),
            hostname: Some("<img src=x onerror=alert(1)>".into()),
            rule: "cpu_high".into(),
            severity: "critical".into(),
            state: "firing".into(),
            at_ms: 1,
            first_ms: 1,
            message: "cpu 97 > 90 <b>".into(),
            ..Default::default()
        }
    }

    #[test]
    fn the_dashboard_links_every_number_to_its_filtered_list() {
        let d = Dashboard {
            totals: Counts {
                devices: 2,
                online: 1,
                revoked: 1,
                alerts_firing: 1,
                ..Default::default()
            },
            customers: vec![CustomerHealth {
                customer: "dental".into(),
                counts: Counts {
                    devices: 2,
                    online: 1,
                    revoked: 1,
                    ..Default::default()
                },
                sites: vec![SiteHealth {
                    site_id: "s-1".into(),
                    name: "Harbour".into(),
                    customer: "dental".into(),
                    marks: vec!["tenant mismatch".into()],
                    link: Some("connected".into()),
                    counts: Counts {
                        devices: 2,
                        online: 1,
                        revoked: 1,
                        ..Default::default()
                    },
                    ..Default::default()
                }],
            }],
            ..Default::default()
        };
        let html = dashboard(&d, None, 1_700_000_000_000).into_string();
        assert!(html.contains("1 revoked"), "{html}");
        assert!(html.contains("(tenant mismatch)"), "{html}");
        assert!(html.contains(r#"href="/devices?status=online""#), "{html}");
        assert!(html.contains(r#"href="/alerts?state=firing""#), "{html}");
        assert!(
            html.contains(r#"href="/devices?site=s-1&amp;status=revoked""#),
            "{html}"
        );
        assert!(
            html.contains(r#"href="/devices?customer=dental""#),
            "{html}"
        );
    }

    #[test]
    fn a_customer_with_many_sites_shows_those_needing_attention_first_and_a_link_to_all() {
        let sites: Vec<SiteHealth> = (0..20)
            .map(|i| SiteHealth {
                site_id: format!("s-{i:02}"),
                name: format!("site {i:02}"),
                customer: "dental".into(),
                link: Some("connected".into()),
                counts: Counts {
                    devices: 3,
                    online: 3,
                    // The last two have a device offline.
                    offline: u64::from(i >= 18),
                    ..Default::default()
                },
                ..Default::default()
            })
            .collect();
        let d = Dashboard {
            customers: vec![CustomerHealth {
                customer: "dental & co".into(),
                sites,
                ..Default::default()
            }],
            ..Default::default()
        };
        let rows = |h: &str| h.matches("class=\"site-row\"").count();
        let html = dashboard(&d, None, 0).into_string();
        assert_eq!(rows(&html), SITES_PER_CUSTOMER, "{html}");
        assert!(
            html.contains("site 18") && html.contains("site 19"),
            "attention first: {html}"
        );
        assert!(!html.contains("site 10"), "{html}");
        assert!(html.contains("12 more sites"), "{html}");
        assert!(
            html.contains(r#"href="/?customer=dental%20%26%20co#sites""#),
            "{html}"
        );
        let all = dashboard(&d, Some("dental & co"), 0).into_string();
        assert_eq!(rows(&all), 20);
        assert!(!all.contains("more sites"));
    }

    #[test]
    fn a_total_the_backend_stopped_counting_reads_more_than() {
        let list = |total, total_more| DeviceList {
            total,
            total_more,
            ..Default::default()
        };
        let q = DeviceQuery::default();
        let bar = crate::bulk_actions::BulkBar::default();
        let html =
            device_list(&list(10_000, true), &q, "/devices", true, false, &bar, 0).into_string();
        assert!(
            html.contains(r#"more than <span id="match-count">10,000</span> devices match"#),
            "{html}"
        );
        let html = device_list(&list(1, false), &q, "/devices", true, false, &bar, 0).into_string();
        assert!(
            html.contains(r#"<span id="match-count">1</span> device match"#)
                && !html.contains("more than"),
            "{html}"
        );
    }

    #[test]
    fn a_viewer_gets_no_ack_buttons_and_agent_text_is_escaped() {
        let rows = vec![alert_view()];
        let html = alert_table(&rows, &viewer(false), "tok", true, 0).into_string();
        assert!(
            !html.contains("ack-button") && !html.contains("<form"),
            "{html}"
        );
        assert!(!html.contains("<img"), "{html}");
        assert!(html.contains("&lt;img src=x onerror=alert(1)&gt;"));
        assert!(html.contains("cpu 97 &gt; 90 &lt;b&gt;"));
        let html = alert_table(&rows, &viewer(true), "tok", true, 0).into_string();
        assert!(
            html.contains(r#"action="/sites/s-1/alerts/9/ack""#),
            "{html}"
        );
        assert!(html.contains(r#"name="csrf" value="tok""#), "{html}");
    }

    #[test]
    fn device_charts_group_series_by_metric_with_a_line_per_label() {
        let s = |name: &str, label: &str| MetricSeries {
            key: crate::backend::MetricKey {
                name: name.into(),
                label: label.into(),
            },
            step_ms: 300_000,
            source: "5-minute rollups".into(),
            points: vec![ChartPoint {
                t_ms: 0,
                avg: 1.0,
                min: 1.0,
                max: 1.0,
            }],
        };
        let c = charts(
            &[
                s("cpu", ""),
                s("disk_used_percent", "/"),
                s("disk_used_percent", "/home"),
                s("net_rx_bytes_per_sec", "eth0"),
                s("net_tx_bytes_per_sec", "eth0"),
            ],
            Range::D1,
            86_400_000,
        );
        let ids: Vec<&str> = c.iter().map(|c| c.id.as_str()).collect();
        assert_eq!(ids, ["chart-cpu", "chart-disk-used-percent", "chart-net"]);
        assert_eq!(c[1].series.len(), 2);
        assert_eq!(c[2].series[1].label, "eth0 tx");
        assert_eq!(c[2].unit, Unit::BytesPerSec);
        assert_eq!(c[0].from_ms, 0);
    }
}
