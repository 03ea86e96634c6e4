//! The console's command pages, for both scopes: "Run command" on a
//! device page (command line, interpreter, timeout, run-as), the command
//! page (state, transitions, output; while the page is open, a `command`
//! event of the live stream ([`crate::live::CommandChange`]) makes the
//! page's script read the page again and swap its sections, so a state
//! change or new output shows within a second; without JavaScript the
//! page says to reload), the list per site (`/sites/{site}/commands`) and
//! fleet-wide (`/commands`, swapped alike), and cancel.
//!
//! This module owns those pages and routes only. Whether a backend has
//! commands is [`crate::backend::Features::commands`]; who may run them is
//! [`crate::backend::Capabilities::run_commands`] (the form is hidden
//! otherwise) and the backend checks the role again when it acts. POSTs
//! go through the same origin check and CSRF token as every console form.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use maud::{Markup, html};
use outpost_web::{Form, Path, Query};
use serde::Deserialize;

use crate::Console;
use crate::backend::{ConsoleError, Viewer};
use crate::pages::layout::{self, badge, device_href, enc, site_href, time};
use crate::routes::{
    CsrfOnly, cancel_form, error_page, form_viewer, html as page, now_ms, refuse, render, viewer,
};

/// Rows of a command list.
pub const COMMAND_PAGE: usize = 200;
/// Interpreters the form offers.
pub const INTERPRETERS: [&str; 3] = ["sh", "bash", "python3"];

/// Which commands a list shows.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CommandQuery {
    pub site: Option<String>,
    pub device: Option<String>,
    pub state: Option<String>,
    /// Only commands queued before this time (paging: the `created_ms` of
    /// the last row of the previous page).
    pub before_ms: Option<u64>,
    /// With `before_ms`: the previous page's last row's id (the commands
    /// of one millisecond — a bulk run's — are paged through, not skipped).
    pub before_id: Option<String>,
    pub limit: usize,
}

/// A command as lists show it.
#[derive(Debug, Clone, PartialEq)]
pub struct CommandRow {
    pub id: String,
    pub site_id: String,
    pub site_name: String,
    pub device: String,
    pub hostname: String,
    /// `queued_at_central`, `delivered_to_site`, `queued`, `sent`,
    /// `running`, `completed`, `failed`, `timed_out`, `cancelled`,
    /// `expired`, `interrupted`.
    pub state: String,
    pub command: String,
    pub requested_by: String,
    pub created_ms: u64,
    pub exit_code: Option<i32>,
    /// Nothing more will change.
    pub finished: bool,
}

/// One state change (`source`: "central" or "site").
#[derive(Debug, Clone, PartialEq)]
pub struct CommandStep {
    pub state: String,
    pub at_ms: u64,
    pub source: String,
}

/// A command with its output.
#[derive(Debug, Clone, PartialEq)]
pub struct CommandDetail {
    pub row: CommandRow,
    pub steps: Vec<CommandStep>,
    pub signal: Option<i32>,
    pub reason: Option<String>,
    pub timeout_ms: u64,
    pub run_as: Option<String>,
    pub interpreter: String,
    pub cancel_requested: bool,
    /// Why it waits, when the backend knows.
    pub note: Option<String>,
    pub output: String,
    pub output_truncated: bool,
}

/// What the run form asks for.
#[derive(Debug, Clone, PartialEq)]
pub struct RunCommand {
    pub command: String,
    pub interpreter: String,
    pub timeout_secs: u64,
    pub run_as: Option<String>,
}

/// The form's fields.
#[derive(Debug, Default, Deserialize)]
pub struct RunFormFields {
    #[serde(default)]
    pub csrf: String,
    #[serde(default)]
    pub command: String,
    #[serde(default)]
    pub interpreter: String,
    #[serde(default)]
    pub timeout_secs: String,
    #[serde(default)]
    pub run_as: String,
}

impl RunFormFields {
    /// The request, or what is wrong with the form.
    pub fn parse(&self) -> Result<RunCommand, String> {
        let command = self.command.trim();
        if command.is_empty() {
            return Err("Enter a command line.".into());
        }
        let interpreter = if self.interpreter.is_empty() {
            "sh"
        } else {
            self.interpreter.as_str()
        };
        if !INTERPRETERS.contains(&interpreter) {
            return Err(format!(
                "Unknown interpreter {interpreter:?}: choose sh, bash or python3."
            ));
        }
        let t = self.timeout_secs.trim();
        let timeout_secs = if t.is_empty() {
            300
        } else {
            t.parse::<u64>()
                .ok()
                .filter(|s| (1..=86_400).contains(s))
                .ok_or_else(|| "The timeout is a number of seconds from 1 to 86400.".to_string())?
        };
        let run_as = Some(self.run_as.trim().to_string()).filter(|s| !s.is_empty());
        Ok(RunCommand {
            command: command.to_string(),
            interpreter: interpreter.to_string(),
            timeout_secs,
            run_as,
        })
    }
}

/// The page of a command.
pub fn command_href(id: &str) -> String {
    format!("/commands/{}", enc(id))
}

fn state_badge(state: &str) -> Markup {
    badge("cmd", state)
}

/// The "Run command" section of a device page (runners only) with a link
/// to the device's commands.
pub fn device_section(site: &str, device: &str, v: &Viewer, csrf: &str) -> Markup {
    let list = format!(
        "/commands{}",
        layout::query(&[("site", Some(site)), ("device", Some(device))])
    );
    html! {
        section #run-command {
            h2 { "Commands" }
            p { a href=(list) #device-commands { "Recent commands of this device" } }
            @if v.can.run_commands {
                form.run method="post" action=(format!("{}/commands", device_href(site, device))) {
                    input type="hidden" name="csrf" value=(csrf);
                    label { span { "Command line" } input type="text" name="command" id="run-command-line" required placeholder="systemctl status nginx"; }
                    label { span { "Interpreter" }
                        select name="interpreter" id="run-interpreter" {
                            @for i in INTERPRETERS { option value=(i) { (i) } }
                        }
                    }
                    label { span { "Timeout (s)" } input type="number" name="timeout_secs" id="run-timeout" min="1" max="86400" value="300"; }
                    label { span { "Run as" } input type="text" name="run_as" id="run-as" placeholder="(the agent's user)"; }
                    button type="submit" id="run-submit" { "Run command" }
                }
            }
        }
    }
}

/// A list of commands (swapped whole by the page's script on a `command`
/// live event).
pub fn command_list(rows: &[CommandRow], with_site: bool) -> Markup {
    html! { div #command-list data-live-commands { (command_table(rows, with_site)) } }
}

fn command_table(rows: &[CommandRow], with_site: bool) -> Markup {
    html! {
        @if rows.is_empty() { p.empty { "No command yet." } } @else {
            div.scroll { table.grid #commands {
                thead { tr {
                    th { "State" } th { "Command" } th { "Device" }
                    @if with_site { th { "Site" } }
                    th { "Exit" } th { "Asked by" } th { "Queued" }
                } }
                tbody { @for r in rows {
                    tr data-command=(r.id) data-state=(r.state) {
                        td { (state_badge(&r.state)) }
                        td { a href=(command_href(&r.id)) { code { (r.command) } } }
                        td { a href=(device_href(&r.site_id, &r.device)) { (if r.hostname.is_empty() { &r.device } else { &r.hostname }) } }
                        @if with_site { td { a href=(site_href(&r.site_id)) { (r.site_name) } } }
                        td.n { @if let Some(c) = r.exit_code { (c) } }
                        td { (r.requested_by) }
                        td { (time(r.created_ms, true)) }
                    }
                } }
            } }
        }
    }
}

/// The page of one command.
pub fn command_page(d: &CommandDetail, v: &Viewer, csrf: &str) -> Markup {
    let r = &d.row;
    html! {
        section #command data-command=(r.id) data-state=(r.state) data-live-commands {
            p.facts {
                (state_badge(&r.state))
                @if let Some(c) = r.exit_code { " · exit code " b #exit-code { (c) } }
                @if let Some(s) = d.signal { " · signal " b { (s) } }
                @if !r.finished { " · " span.muted #command-live { "live" noscript { " (reload to update)" } } }
            }
            @if let Some(n) = &d.note { p.notice #command-note { (n) } }
            @if let Some(reason) = &d.reason { p #command-reason { (reason) } }
            dl.inventory {
                dt { "Command" } dd { code #command-line { (r.command) } }
                dt { "Device" } dd { a href=(device_href(&r.site_id, &r.device)) { (if r.hostname.is_empty() { &r.device } else { &r.hostname }) } }
                dt { "Site" } dd { a href=(site_href(&r.site_id)) { (r.site_name) } }
                dt { "Interpreter" } dd { (d.interpreter) }
                dt { "Timeout" } dd { (d.timeout_ms / 1000) " s" }
                @if let Some(u) = &d.run_as { dt { "Run as" } dd { (u) } }
                dt { "Asked by" } dd { (r.requested_by) }
                dt { "Id" } dd { code { (r.id) } }
            }
            @if !r.finished && !d.cancel_requested && v.can.run_commands {
                form.cancel method="post" action=(format!("{}/cancel", command_href(&r.id))) {
                    input type="hidden" name="csrf" value=(csrf);
                    button type="submit" id="cancel-command" { "Cancel" }
                }
            }
            @if d.cancel_requested && !r.finished { p.muted { "Cancel requested." } }
        }
        section #command-output data-live-commands {
            h2 { "Output" @if d.output_truncated { " " span.muted { "(truncated: head and tail kept)" } } }
            pre #output { (d.output) }
        }
        section #command-steps data-live-commands {
            h2 { "States" }
            ol.timeline { @for s in &d.steps { li { (time(s.at_ms, false)) " " (state_badge(&s.state)) " " span.muted { (s.source) } } } }
        }
    }
}

// ---- routes ----

type C = State<Arc<Console>>;

#[derive(Debug, Default, Deserialize)]
pub struct ListParams {
    pub site: Option<String>,
    pub device: Option<String>,
    pub state: Option<String>,
    /// Paging: commands queued before this time (ms).
    pub before: Option<u64>,
    /// Paging: with `before`, the id of the last row shown.
    pub before_id: Option<String>,
    /// Rows per page (1 to [`COMMAND_PAGE`], the default).
    pub limit: Option<usize>,
}

fn opt(s: Option<String>) -> Option<String> {
    s.map(|s| s.trim().to_string()).filter(|s| !s.is_empty())
}

fn unavailable() -> ConsoleError {
    ConsoleError::NotFound("Commands are not available on this server.".into())
}

/// `GET /commands` (every site) and `GET /sites/{site}/commands`.
pub async fn list(State(c): C, h: HeaderMap, Query(p): Query<ListParams>) -> Response {
    list_page(c, h, p, None).await
}

pub async fn site_list(
    State(c): C,
    h: HeaderMap,
    Path(site): Path<String>,
    Query(p): Query<ListParams>,
) -> Response {
    list_page(c, h, p, Some(site)).await
}

async fn list_page(c: Arc<Console>, h: HeaderMap, p: ListParams, site: Option<String>) -> Response {
    let v = match viewer(&c, &h).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    if !c.backend.info().features.commands {
        return error_page(&c, Some(&v), unavailable());
    }
    let q = CommandQuery {
        site: site.clone().or(opt(p.site)),
        device: opt(p.device),
        state: opt(p.state),
        before_ms: p.before,
        before_id: opt(p.before_id),
        limit: p.limit.unwrap_or(COMMAND_PAGE).clamp(1, COMMAND_PAGE),
    };
    let site_name = match &q.site {
        Some(s) => match c.backend.site(&v, s).await {
            Ok(d) => Some(d.health.name),
            Err(e) => return error_page(&c, Some(&v), e),
        },
        None => None,
    };
    match c.backend.commands(&v, &q).await {
        Ok(rows) => {
            let title = match &site_name {
                Some(n) => format!("Commands of site {n}"),
                None => "Commands".to_string(),
            };
            let mut crumbs = vec![layout::crumb("Dashboard", "/")];
            if let (Some(s), Some(n)) = (&q.site, &site_name) {
                crumbs.push(layout::crumb(n.clone(), site_href(s)));
            }
            crumbs.push(layout::here("Commands"));
            // A full page: there may be older ones.
            let older = (rows.len() >= q.limit)
                .then(|| rows.last())
                .flatten()
                .map(|last| {
                    let base = match (&site, &q.site) {
                        (Some(s), _) => format!("/sites/{}/commands", enc(s)),
                        _ => "/commands".to_string(),
                    };
                    let before = last.created_ms.to_string();
                    let limit = q.limit.to_string();
                    format!(
                        "{base}{}",
                        layout::query(&[
                            ("site", q.site.as_deref().filter(|_| site.is_none())),
                            ("device", q.device.as_deref()),
                            ("state", q.state.as_deref()),
                            ("before", Some(before.as_str())),
                            ("before_id", Some(last.id.as_str())),
                            ("limit", (q.limit != COMMAND_PAGE).then_some(limit.as_str())),
                        ])
                    )
                });
            let m = render(
                &c,
                Some(&v),
                layout::Section::Commands,
                &title,
                crumbs,
                html! {
                    @if c.backend.info().features.scripts { p.paging { a #bulk-runs-link href="/commands/bulk" { "Bulk runs →" } } }
                    @if c.backend.info().features.files { p.paging { a #files-link href="/files" { "File transfers →" } } }
                    (command_list(&rows, q.site.is_none()))
                    @if let Some(h) = &older { p.paging { a #older-commands href=(h) { "Older commands →" } } }
                    @if q.before_ms.is_some() { p.paging { a href=(match &site { Some(s) => format!("/sites/{}/commands", enc(s)), None => "/commands".into() }) { "← Newest" } } }
                },
            );
            page(StatusCode::OK, m)
        }
        Err(e) => error_page(&c, Some(&v), e),
    }
}

/// `GET /commands/{id}`.
pub async fn show(State(c): C, h: HeaderMap, Path(id): Path<String>) -> Response {
    let v = match viewer(&c, &h).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    if !c.backend.info().features.commands {
        return error_page(&c, Some(&v), unavailable());
    }
    match c.backend.command(&v, &id).await {
        Ok(d) => {
            let csrf = c.csrf.token(&v.csrf_subject);
            let r = &d.row;
            let name = if r.hostname.is_empty() {
                r.device.clone()
            } else {
                r.hostname.clone()
            };
            let m = render(
                &c,
                Some(&v),
                layout::Section::Commands,
                &format!("Command on {name}"),
                vec![
                    layout::crumb("Dashboard", "/"),
                    layout::crumb(r.site_name.clone(), site_href(&r.site_id)),
                    layout::crumb(name.clone(), device_href(&r.site_id, &r.device)),
                    layout::here("Command"),
                ],
                command_page(&d, &v, &csrf),
            );
            page(StatusCode::OK, m)
        }
        Err(e) => error_page(&c, Some(&v), e),
    }
}

/// `POST /sites/{site}/devices/{device}/commands`: queues, then shows the
/// command's page.
pub async fn run(
    State(c): C,
    h: HeaderMap,
    Path((site, device)): Path<(String, String)>,
    Form(f): Form<RunFormFields>,
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
            &format!("Role {} may not run commands.", v.role),
        );
    }
    if !c.backend.info().features.commands {
        return error_page(&c, Some(&v), unavailable());
    }
    let req = match f.parse() {
        Ok(r) => r,
        Err(m) => return error_page(&c, Some(&v), ConsoleError::BadRequest(m)),
    };
    match c.backend.run_command(&v, &site, &device, &req).await {
        Ok(id) => Redirect::to(&command_href(&id)).into_response(),
        Err(ConsoleError::Forbidden(m)) => refuse(&c, Some(&v), "forbidden", &m),
        Err(e) => error_page(&c, Some(&v), e),
    }
}

/// `POST /commands/{id}/cancel`.
pub async fn cancel(
    State(c): C,
    h: HeaderMap,
    Path(id): Path<String>,
    Form(f): Form<CsrfOnly>,
) -> Response {
    cancel_form(&c, &h, &f.csrf, "commands", command_href(&id), async |v| {
        c.backend.cancel_command(v, &id).await
    })
    .await
}

/// Milliseconds now (for backends' conversions).
pub fn now() -> u64 {
    now_ms()
}

#[cfg(test)]
mod tests {
    use super::*;

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

    fn detail(state: &str, finished: bool) -> CommandDetail {
        CommandDetail {
            row: CommandRow {
                id: "c1".into(),
                site_id: "s-1".into(),
                site_name: "main".into(),
                device: "00aa".into(),
                hostname: "web-1".into(),
                state: state.into(),
                command: "echo <hi>".into(),
                requested_by: "ann".into(),
                created_ms: 1,
                exit_code: finished.then_some(0),
                finished,
            },
            steps: vec![],
            signal: None,
            reason: None,
            timeout_ms: 60_000,
            run_as: None,
            interpreter: "sh".into(),
            cancel_requested: false,
            note: None,
            output: "<b>out</b>".into(),
            output_truncated: false,
        }
    }

    #[test]
    fn the_run_form_shows_for_runners_only_and_carries_the_csrf_token() {
        let h = device_section("s-1", "00aa", &viewer(true), "tok").into_string();
        assert!(
            h.contains(r#"action="/sites/s-1/devices/00aa/commands""#),
            "{h}"
        );
        assert!(h.contains(r#"name="csrf" value="tok""#), "{h}");
        let h = device_section("s-1", "00aa", &viewer(false), "tok").into_string();
        assert!(!h.contains("<form"), "{h}");
        assert!(h.contains("Recent commands"), "{h}");
    }

    #[test]
    fn a_command_page_escapes_its_output_and_offers_cancel_only_while_open() {
        let h = command_page(&detail("running", false), &viewer(true), "tok").into_string();
        assert!(
            h.contains("&lt;b&gt;out&lt;/b&gt;") && h.contains("echo &lt;hi&gt;"),
            "{h}"
        );
        assert!(h.contains(r#"id="cancel-command""#), "{h}");
        let h = command_page(&detail("completed", true), &viewer(true), "tok").into_string();
        assert!(
            !h.contains("cancel-command") && h.contains(r#"id="exit-code""#),
            "{h}"
        );
        let h = command_page(&detail("running", false), &viewer(false), "tok").into_string();
        assert!(!h.contains("cancel-command"), "{h}");
    }

    #[test]
    fn the_run_form_is_checked() {
        let f = |c: &str, i: &str, t: &str| RunFormFields {
            csrf: String::new(),
            command: c.into(),
            interpreter: i.into(),
            timeout_secs: t.into(),
            run_as: " ".into(),
        };
        let r = f("uptime", "", "").parse().unwrap();
        assert_eq!(
            (r.interpreter.as_str(), r.timeout_secs, r.run_as),
            ("sh", 300, None)
        );
        assert!(f(" ", "sh", "1").parse().is_err());
        assert!(f("x", "perl", "1").parse().unwrap_err().contains("perl"));
        assert!(f("x", "bash", "0").parse().is_err());
        assert!(f("x", "bash", "abc").parse().is_err());
    }
}
