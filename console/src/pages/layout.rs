//! The page shell every console page shares: head (assets, no inline
//! script or style), persistent navigation (with the pages of later issues
//! disabled until the backend supports them), breadcrumbs, the viewer and
//! sign-out form, and small pieces: status badges, times, links.

use maud::{DOCTYPE, Markup, PreEscaped, html};

use crate::backend::{BackendInfo, Viewer};
use crate::format;

/// Where a crumb points (the last one is the page itself).
pub struct Crumb {
    pub text: String,
    pub href: Option<String>,
}

pub fn crumb(text: impl Into<String>, href: impl Into<String>) -> Crumb {
    Crumb {
        text: text.into(),
        href: Some(href.into()),
    }
}

pub fn here(text: impl Into<String>) -> Crumb {
    Crumb {
        text: text.into(),
        href: None,
    }
}

/// Which navigation entry is current.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Section {
    Dashboard,
    Devices,
    Alerts,
    Commands,
    /// File transfers (pushes and pulls).
    Files,
    Scripts,
    Patches,
    Deployments,
    None,
}

/// Everything a page needs besides its body.
pub struct Shell<'a> {
    pub info: &'a BackendInfo,
    pub viewer: Option<&'a Viewer>,
    /// The viewer's CSRF token (for the sign-out form).
    pub csrf: Option<&'a str>,
    pub section: Section,
    pub title: &'a str,
    pub crumbs: Vec<Crumb>,
}

/// Percent-encodes a path segment or query value.
pub fn enc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `?k=v&...` of the non-empty pairs.
pub fn query(pairs: &[(&str, Option<&str>)]) -> String {
    let q: Vec<String> = pairs
        .iter()
        .filter_map(|(k, v)| {
            v.filter(|v| !v.is_empty())
                .map(|v| format!("{k}={}", enc(v)))
        })
        .collect();
    if q.is_empty() {
        String::new()
    } else {
        format!("?{}", q.join("&"))
    }
}

pub fn site_href(site: &str) -> String {
    format!("/sites/{}", enc(site))
}

pub fn device_href(site: &str, device: &str) -> String {
    format!("/sites/{}/devices/{}", enc(site), enc(device))
}

pub fn alert_href(site: &str, alert: u64) -> String {
    format!("/sites/{}/alerts/{alert}", enc(site))
}

/// A time: UTC text, localised by `console.js` (`rel`: "5 min ago" with
/// the local time as tooltip; `abs`: the local date and time).
pub fn time(ms: u64, relative: bool) -> Markup {
    if ms == 0 {
        return html! { span.muted { "never" } };
    }
    html! {
        time class=(if relative { "rel" } else { "abs" }) datetime=(format::rfc3339(ms)) title=(format::utc(ms)) {
            (format::utc(ms))
        }
    }
}

/// A status badge (device status, alert state, severity).
pub fn badge(kind: &str, value: &str) -> Markup {
    html! { span class=(format!("badge {kind}-{value}")) data-field=(kind) { (value) } }
}

fn nav_entry(cur: Section, me: Section, href: &str, text: &str, enabled: bool) -> Markup {
    html! {
        @if enabled {
            a href=(href) class=(if cur == me { "current" } else { "" }) { (text) }
        } @else {
            span.soon title="Not available on this server yet" aria-disabled="true" { (text) }
        }
    }
}

/// The whole page.
pub fn page(s: &Shell, body: Markup) -> Markup {
    let f = s.info.features;
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (s.title) " · Outpost" }
                link rel="stylesheet" href="/console/console.css";
                script src="/console/console.js" defer {}
            }
            body data-live=(if s.viewer.is_some() { "/console/live" } else { "" }) {
                header.top {
                    a.brand href="/" { "Outpost" }
                    span.product { (s.info.product) }
                    @if let Some(v) = s.viewer {
                        nav.main aria-label="Main" {
                            (nav_entry(s.section, Section::Dashboard, "/", "Dashboard", true))
                            (nav_entry(s.section, Section::Devices, "/devices", "Devices", true))
                            (nav_entry(s.section, Section::Alerts, "/alerts", "Alerts", true))
                            (nav_entry(s.section, Section::Commands, "/commands", "Commands", f.commands))
                            (nav_entry(s.section, Section::Files, "/files", "File transfers", f.files))
                            (nav_entry(s.section, Section::Scripts, "/scripts", "Scripts", f.scripts))
                            (nav_entry(s.section, Section::Patches, "/patches", "Patches", f.patches))
                            (nav_entry(s.section, Section::Deployments, "/deployments", "Deployments", f.deployments))
                        }
                        div.who {
                            span.live-off #live-status title="Live updates" { "●" }
                            span.user { (v.name) }
                            " "
                            span.role { (v.role) }
                            @if !v.customers.is_empty() {
                                " "
                                span.scope title="Customers you can see" { (v.customers.join(", ")) }
                            }
                            @if let Some(t) = s.csrf {
                                form.inline method="post" action="/logout" {
                                    input type="hidden" name="csrf" value=(t);
                                    button.link type="submit" id="signout" { "Sign out" }
                                }
                            }
                        }
                    }
                }
                main {
                    @if !s.crumbs.is_empty() {
                        nav.crumbs aria-label="Breadcrumbs" {
                            @for (i, c) in s.crumbs.iter().enumerate() {
                                @if i > 0 { span.sep { (PreEscaped("&rsaquo;")) } }
                                @match &c.href {
                                    Some(h) => a href=(h) { (c.text) },
                                    None => span aria-current="page" { (c.text) },
                                }
                            }
                        }
                    }
                    h1 { (s.title) }
                    (body)
                }
                footer {
                    "Times are shown in your timezone (UTC without JavaScript). "
                    span #live-note {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{Capabilities, Features, ScopeKind};

    fn info(features: Features) -> BackendInfo {
        BackendInfo {
            product: "central".into(),
            scope: ScopeKind::Tenant,
            login_tenant: true,
            features,
        }
    }

    fn viewer() -> Viewer {
        Viewer {
            name: "<alice>".into(),
            tenant: "msp".into(),
            customers: vec![],
            role: "viewer".into(),
            can: Capabilities::default(),
            csrf_subject: vec![1],
        }
    }

    #[test]
    fn the_navigation_shows_later_pages_disabled_until_the_backend_has_them() {
        let v = viewer();
        let i = info(Features::default());
        let s = Shell {
            info: &i,
            viewer: Some(&v),
            csrf: Some("t"),
            section: Section::Devices,
            title: "Devices",
            crumbs: vec![crumb("Dashboard", "/"), here("Devices")],
        };
        let html = page(&s, html! {}).into_string();
        assert!(
            html.contains(r#"<a href="/devices" class="current">Devices</a>"#),
            "{html}"
        );
        assert!(
            html.contains(r#"aria-disabled="true">Commands</span>"#),
            "{html}"
        );
        assert!(!html.contains("href=\"/patches\""));
        assert!(html.contains("&lt;alice&gt;"), "escaped");
        assert!(
            !html.contains("<style") && !html.contains("<script>"),
            "no inline code"
        );
        let i = info(Features {
            patches: true,
            ..Default::default()
        });
        let s = Shell { info: &i, ..s };
        assert!(
            page(&s, html! {})
                .into_string()
                .contains("href=\"/patches\"")
        );
    }

    #[test]
    fn file_transfers_have_their_own_navigation_entry_where_the_backend_has_them() {
        let v = viewer();
        let without = info(Features::default());
        let s = Shell {
            info: &without,
            viewer: Some(&v),
            csrf: None,
            section: Section::Files,
            title: "File transfers",
            crumbs: vec![],
        };
        let html = page(&s, html! {}).into_string();
        assert!(
            html.contains(r#"aria-disabled="true">File transfers</span>"#),
            "{html}"
        );
        let with = info(Features {
            files: true,
            ..Default::default()
        });
        let s = Shell { info: &with, ..s };
        let html = page(&s, html! {}).into_string();
        assert!(
            html.contains(r#"<a href="/files" class="current">File transfers</a>"#),
            "{html}"
        );
    }

    #[test]
    fn links_are_percent_encoded_and_queries_skip_empty_values() {
        assert_eq!(site_href("s-1"), "/sites/s-1");
        assert_eq!(device_href("a b", "x/y"), "/sites/a%20b/devices/x%2Fy");
        assert_eq!(
            query(&[("q", Some("web 1")), ("site", None), ("status", Some(""))]),
            "?q=web%201"
        );
        assert_eq!(query(&[]), "");
    }
}
