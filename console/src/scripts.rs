//! The console's script library and bulk-run pages (backends with
//! [`crate::backend::Features::scripts`]; central today): `/scripts` (the
//! newest version of each script), `/scripts/{name}` (a version's body),
//! a "Run script" form on the device page (`POST
//! /sites/{site}/devices/{device}/scripts`, then the command's page), and
//! `/commands/bulk` and `/commands/bulk/{id}` (a bulk run's summary and
//! devices, following the live stream like the command pages; those
//! who may run commands cancel an unfinished run there: `POST
//! /commands/bulk/{id}/cancel`).
//!
//! This module owns those pages and routes only; the backend reads, checks
//! roles and scopes and queues (`ConsoleBackend::scripts`, `script`,
//! `run_script`, `bulks`, `bulk`, `cancel_bulk`). POSTs go through the same origin check
//! and CSRF token as every console form.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use maud::{Markup, html};
use outpost_web::{Form, Path, Query};
use serde::Deserialize;

use crate::Console;
use crate::backend::{ConsoleError, Viewer};
use crate::commands::command_href;
use crate::pages::layout::{self, badge, device_href, enc, site_href, time};
use crate::routes::{
    CsrfOnly, cancel_form, error_page, form_viewer, html as page, refuse, render, viewer,
};

/// A script as lists show it (its newest version).
#[derive(Debug, Clone, PartialEq)]
pub struct ScriptRow {
    pub name: String,
    pub version: u32,
    pub interpreter: String,
    /// `None`: the whole tenant's.
    pub customer: Option<String>,
    pub parameters: Vec<String>,
    pub default_timeout_ms: u64,
    pub created_ms: u64,
    pub created_by: String,
}

/// One version with its body.
#[derive(Debug, Clone, PartialEq)]
pub struct ScriptDetail {
    pub row: ScriptRow,
    pub body: String,
}

/// A bulk run's counts.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BulkCounts {
    pub total: u64,
    pub held: u64,
    pub pending: u64,
    pub running: u64,
    pub done: u64,
    pub failed: u64,
    pub cancelled: u64,
    pub expired: u64,
    pub finished: bool,
}

/// A bulk run as lists show it.
#[derive(Debug, Clone, PartialEq)]
pub struct BulkRow {
    pub id: String,
    pub command: String,
    pub concurrency: u32,
    pub sites: usize,
    pub created_ms: u64,
    pub created_by: String,
    pub cancelled_by: Option<String>,
    pub counts: BulkCounts,
}

/// One device of a run.
#[derive(Debug, Clone, PartialEq)]
pub struct BulkMemberRow {
    pub site_id: String,
    pub device: String,
    pub hostname: String,
    pub command: String,
    pub state: String,
    pub held: bool,
    pub exit_code: Option<i32>,
}

/// A run with its devices.
#[derive(Debug, Clone, PartialEq)]
pub struct BulkDetail {
    pub row: BulkRow,
    pub members: Vec<BulkMemberRow>,
}

/// The page of a script.
pub fn script_href(name: &str) -> String {
    format!("/scripts/{}", enc(name))
}

/// The page of a bulk run.
pub fn bulk_href(id: &str) -> String {
    format!("/commands/bulk/{}", enc(id))
}

fn scope_of(customer: &Option<String>) -> Markup {
    html! { @match customer { Some(c) => (c), None => span.muted { "all customers" } } }
}

/// The list of scripts.
pub fn script_list(rows: &[ScriptRow]) -> Markup {
    html! {
        @if rows.is_empty() { p.empty { "No script yet (admins add them with POST /api/v1/scripts)." } } @else {
            div.scroll { table.grid #scripts {
                thead { tr { th { "Script" } th { "Version" } th { "Interpreter" } th { "Customer" } th { "Parameters" } th { "Edited by" } th { "Edited" } } }
                tbody { @for r in rows {
                    tr data-script=(r.name) {
                        td { a href=(script_href(&r.name)) { code { (r.name) } } }
                        td.n { (r.version) }
                        td { (r.interpreter) }
                        td { (scope_of(&r.customer)) }
                        td { (r.parameters.join(", ")) }
                        td { (r.created_by) }
                        td { (time(r.created_ms, true)) }
                    }
                } }
            } }
        }
    }
}

/// The page of one script version.
pub fn script_page(d: &ScriptDetail) -> Markup {
    let r = &d.row;
    html! {
        section #script data-script=(r.name) data-version=(r.version) {
            dl.inventory {
                dt { "Version" } dd #script-version { (r.version) }
                @if r.version > 1 {
                    dt { "Older" } dd { @for v in (1..r.version).rev() { a href=(format!("{}?version={v}", script_href(&r.name))) { "v" (v) } " " } }
                }
                dt { "Interpreter" } dd { (r.interpreter) }
                dt { "Customer" } dd { (scope_of(&r.customer)) }
                dt { "Default timeout" } dd { (r.default_timeout_ms / 1000) " s" }
                @if !r.parameters.is_empty() { dt { "Parameters" } dd { (r.parameters.join(", ")) } }
                dt { "Edited by" } dd { (r.created_by) " · " (time(r.created_ms, false)) }
            }
            h2 { "Body" }
            pre #script-body { (d.body) }
        }
    }
}

/// The "Run script" form of a device page (runners only, when the
/// library has scripts).
pub fn device_section(
    site: &str,
    device: &str,
    scripts: &[ScriptRow],
    v: &Viewer,
    csrf: &str,
) -> Markup {
    html! {
        @if v.can.run_commands && !scripts.is_empty() {
            section #run-script {
                form.run method="post" action=(format!("{}/scripts", device_href(site, device))) {
                    input type="hidden" name="csrf" value=(csrf);
                    label { span { "Script" }
                        select name="script" id="run-script-name" {
                            @for s in scripts { option value=(s.name) { (s.name) " (v" (s.version) ")" } }
                        }
                    }
                    label { span { "Arguments" } input type="text" name="args" id="run-script-args" placeholder="space-separated"; }
                    button type="submit" id="run-script-submit" { "Run script" }
                }
            }
        }
    }
}

fn counts(c: &BulkCounts) -> Markup {
    html! {
        span.counts {
            (c.done) " done · " (c.failed) " failed · " (c.running) " running · " (c.pending) " pending"
            @if c.held > 0 { " (" (c.held) " held)" }
            @if c.cancelled > 0 { " · " (c.cancelled) " cancelled" }
            @if c.expired > 0 { " · " (c.expired) " expired" }
            " · " (c.total) " in all"
        }
    }
}

/// The list of bulk runs.
pub fn bulk_list(rows: &[BulkRow]) -> Markup {
    html! {
        div #bulk-list data-live-commands {
            @if rows.is_empty() { p.empty { "No bulk run yet (POST /api/v1/commands/bulk)." } } @else {
                div.scroll { table.grid #bulk-runs {
                    thead { tr { th { "Run" } th { "Command" } th { "Progress" } th { "Sites" } th { "Asked by" } th { "Started" } } }
                    tbody { @for r in rows {
                        tr data-bulk=(r.id) data-finished=(r.counts.finished) {
                            td { a href=(bulk_href(&r.id)) { code { (r.id.get(..8).unwrap_or(&r.id)) } } }
                            td { code { (r.command) } }
                            td { (counts(&r.counts)) }
                            td.n { (r.sites) }
                            td { (r.created_by) }
                            td { (time(r.created_ms, true)) }
                        }
                    } }
                } }
            }
        }
    }
}

/// The page of one bulk run; `cancel`: the CSRF token of the cancel
/// form, for those who may cancel (shown while the run is unfinished).
pub fn bulk_page(d: &BulkDetail, cancel: Option<&str>) -> Markup {
    let r = &d.row;
    html! {
        section #bulk data-bulk=(r.id) data-finished=(r.counts.finished) data-live-commands {
            p.facts #bulk-summary {
                (counts(&r.counts))
                @if r.counts.finished { " · " b { "finished" } }
                @if let Some(by) = &r.cancelled_by { " · " span #bulk-cancelled-by { "cancelled by " (by) } }
            }
            @if let Some(csrf) = cancel && !r.counts.finished && r.cancelled_by.is_none() {
                form.cancel #bulk-cancel-form method="post" action=(format!("{}/cancel", bulk_href(&r.id))) {
                    input type="hidden" name="csrf" value=(csrf);
                    button type="submit" id="cancel-bulk" { "Cancel the run" }
                }
            }
            dl.inventory {
                dt { "Command" } dd { code { (r.command) } }
                dt { "Per-site concurrency" } dd { (r.concurrency) }
                dt { "Asked by" } dd { (r.created_by) " · " (time(r.created_ms, false)) }
            }
            div.scroll { table.grid #bulk-members {
                thead { tr { th { "State" } th { "Device" } th { "Site" } th { "Exit" } th { "Command" } } }
                tbody { @for m in &d.members {
                    tr data-command=(m.command) data-state=(m.state) {
                        td { (badge("cmd", &m.state)) @if m.held { " " span.muted { "held" } } }
                        td { a href=(device_href(&m.site_id, &m.device)) { (if m.hostname.is_empty() { &m.device } else { &m.hostname }) } }
                        td { a href=(site_href(&m.site_id)) { (m.site_id) } }
                        td.n { @if let Some(c) = m.exit_code { (c) } }
                        td { a href=(command_href(&m.command)) { "output" } }
                    }
                } }
            } }
        }
    }
}

// ---- routes ----

type C = State<Arc<Console>>;

fn unavailable() -> ConsoleError {
    ConsoleError::NotFound("Scripts and bulk runs are not available on this server.".into())
}

/// `GET /scripts`.
pub async fn list(State(c): C, h: HeaderMap) -> Response {
    let v = match viewer(&c, &h).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    if !c.backend.info().features.scripts {
        return error_page(&c, Some(&v), unavailable());
    }
    match c.backend.scripts(&v).await {
        Ok(rows) => page(
            StatusCode::OK,
            render(
                &c,
                Some(&v),
                layout::Section::Scripts,
                "Scripts",
                vec![layout::crumb("Dashboard", "/"), layout::here("Scripts")],
                script_list(&rows),
            ),
        ),
        Err(e) => error_page(&c, Some(&v), e),
    }
}

#[derive(Debug, Default, Deserialize)]
pub struct VersionParams {
    pub version: Option<u32>,
}

/// `GET /scripts/{name}[?version=N]`.
pub async fn show(
    State(c): C,
    h: HeaderMap,
    Path(name): Path<String>,
    Query(q): Query<VersionParams>,
) -> Response {
    let v = match viewer(&c, &h).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    if !c.backend.info().features.scripts {
        return error_page(&c, Some(&v), unavailable());
    }
    match c.backend.script(&v, &name, q.version).await {
        Ok(d) => page(
            StatusCode::OK,
            render(
                &c,
                Some(&v),
                layout::Section::Scripts,
                &format!("Script {name}"),
                vec![
                    layout::crumb("Dashboard", "/"),
                    layout::crumb("Scripts", "/scripts"),
                    layout::here(name.clone()),
                ],
                script_page(&d),
            ),
        ),
        Err(e) => error_page(&c, Some(&v), e),
    }
}

/// The run form's fields.
#[derive(Debug, Default, Deserialize)]
pub struct RunScriptFields {
    #[serde(default)]
    pub csrf: String,
    #[serde(default)]
    pub script: String,
    #[serde(default)]
    pub args: String,
}

/// `POST /sites/{site}/devices/{device}/scripts`: queues a run of the
/// script's newest version, then shows the command's page.
pub async fn run(
    State(c): C,
    h: HeaderMap,
    Path((site, device)): Path<(String, String)>,
    Form(f): Form<RunScriptFields>,
) -> Response {
    let v = match form_viewer(&c, &h, &f.csrf).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    if !v.can.run_commands {
        return refuse(
            &c,
            Some(&v),
            "forbidden",
            &format!("Role {} may not run scripts.", v.role),
        );
    }
    if !c.backend.info().features.scripts {
        return error_page(&c, Some(&v), unavailable());
    }
    let name = f.script.trim();
    if name.is_empty() {
        return error_page(
            &c,
            Some(&v),
            ConsoleError::BadRequest("Choose a script.".into()),
        );
    }
    let args: Vec<String> = f.args.split_whitespace().map(str::to_string).collect();
    match c.backend.run_script(&v, &site, &device, name, &args).await {
        Ok(id) => Redirect::to(&command_href(&id)).into_response(),
        Err(ConsoleError::Forbidden(m)) => refuse(&c, Some(&v), "forbidden", &m),
        Err(e) => error_page(&c, Some(&v), e),
    }
}

/// `GET /commands/bulk`.
pub async fn bulk_runs(State(c): C, h: HeaderMap) -> Response {
    let v = match viewer(&c, &h).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    if !c.backend.info().features.scripts {
        return error_page(&c, Some(&v), unavailable());
    }
    match c.backend.bulks(&v).await {
        Ok(rows) => page(
            StatusCode::OK,
            render(
                &c,
                Some(&v),
                layout::Section::Commands,
                "Bulk runs",
                vec![
                    layout::crumb("Dashboard", "/"),
                    layout::crumb("Commands", "/commands"),
                    layout::here("Bulk runs"),
                ],
                bulk_list(&rows),
            ),
        ),
        Err(e) => error_page(&c, Some(&v), e),
    }
}

/// `GET /commands/bulk/{id}`.
pub async fn bulk_run(State(c): C, h: HeaderMap, Path(id): Path<String>) -> Response {
    let v = match viewer(&c, &h).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    if !c.backend.info().features.scripts {
        return error_page(&c, Some(&v), unavailable());
    }
    let csrf = v.can.run_commands.then(|| c.csrf.token(&v.csrf_subject));
    match c.backend.bulk(&v, &id).await {
        Ok(d) => page(
            StatusCode::OK,
            render(
                &c,
                Some(&v),
                layout::Section::Commands,
                "Bulk run",
                vec![
                    layout::crumb("Dashboard", "/"),
                    layout::crumb("Bulk runs", "/commands/bulk"),
                    layout::here(d.row.id.get(..8).unwrap_or(&d.row.id).to_string()),
                ],
                bulk_page(&d, csrf.as_deref()),
            ),
        ),
        Err(e) => error_page(&c, Some(&v), e),
    }
}

/// `POST /commands/bulk/{id}/cancel`: nothing more of the run starts, what
/// is queued is cancelled, what runs is told to stop (those who may run
/// commands; the backend checks the role again).
pub async fn cancel_bulk(
    State(c): C,
    h: HeaderMap,
    Path(id): Path<String>,
    Form(f): Form<CsrfOnly>,
) -> Response {
    cancel_form(&c, &h, &f.csrf, "bulk runs", bulk_href(&id), async |v| {
        c.backend.cancel_bulk(v, &id).await
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(name: &str) -> ScriptRow {
        ScriptRow {
            name: name.into(),
            version: 2,
            interpreter: "bash".into(),
            customer: None,
            parameters: vec!["path".into()],
            default_timeout_ms: 60_000,
            created_ms: 1,
            created_by: "ada".into(),
        }
    }

    fn viewer(run: bool) -> Viewer {
        Viewer {
            name: "ann".into(),
            tenant: "msp".into(),
            customers: vec![],
            role: if run { "technician" } else { "viewer" }.into(),
            can: crate::backend::Capabilities {
                run_commands: run,
                ..Default::default()
            },
            csrf_subject: vec![],
        }
    }

    #[test]
    fn the_run_script_form_shows_for_runners_when_the_library_has_scripts() {
        let h =
            device_section("s-1", "00aa", &[row("clean<up>")], &viewer(true), "tok").into_string();
        assert!(
            h.contains(r#"action="/sites/s-1/devices/00aa/scripts""#),
            "{h}"
        );
        assert!(
            h.contains("clean&lt;up&gt; (v2)") && h.contains(r#"value="tok""#),
            "{h}"
        );
        assert!(
            device_section("s-1", "00aa", &[row("a")], &viewer(false), "tok")
                .into_string()
                .is_empty()
        );
        assert!(
            device_section("s-1", "00aa", &[], &viewer(true), "tok")
                .into_string()
                .is_empty()
        );
    }

    #[test]
    fn a_bulk_page_shows_counts_and_follows_the_live_stream() {
        let d = BulkDetail {
            row: BulkRow {
                id: "0123456789abcdef".into(),
                command: "uptime".into(),
                concurrency: 5,
                sites: 2,
                created_ms: 1,
                created_by: "tess".into(),
                cancelled_by: None,
                counts: BulkCounts {
                    total: 3,
                    held: 1,
                    pending: 2,
                    done: 1,
                    ..Default::default()
                },
            },
            members: vec![BulkMemberRow {
                site_id: "s-1".into(),
                device: "00aa".into(),
                hostname: "web-1".into(),
                command: "c1".into(),
                state: "queued_at_central".into(),
                held: true,
                exit_code: None,
            }],
        };
        let h = bulk_page(&d, None).into_string();
        assert!(
            h.contains("data-live-commands") && h.contains("1 done") && h.contains("(1 held)"),
            "{h}"
        );
        assert!(h.contains(r#"href="/commands/c1""#), "{h}");
        assert!(!h.contains("cancel-bulk"), "no token, no button: {h}");
        let mut d = d;
        let h = bulk_page(&d, Some("tok")).into_string();
        assert!(
            h.contains(r#"action="/commands/bulk/0123456789abcdef/cancel""#)
                && h.contains(r#"id="cancel-bulk""#),
            "{h}"
        );
        d.row.cancelled_by = Some("tess".into());
        let h = bulk_page(&d, Some("tok")).into_string();
        assert!(
            !h.contains("cancel-bulk") && h.contains("cancelled by tess"),
            "{h}"
        );
        d.row.cancelled_by = None;
        d.row.counts.finished = true;
        assert!(
            !bulk_page(&d, Some("tok"))
                .into_string()
                .contains("cancel-bulk")
        );
    }
}
