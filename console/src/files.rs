//! The console's file-transfer pages (backends with
//! [`crate::backend::Features::files`]: central and the appliance; their
//! own navigation entry, *File transfers*): `/files` (the
//! tenant's pushes and pulls, newest first, filtered by state), and
//! `/files/{id}` (one transfer: its device, path, size, checksum, the
//! state of its command, why it failed), with a Cancel button for those
//! who may run commands while the transfer is open (`POST
//! /files/{id}/cancel`). Both pages follow the live stream's `command`
//! events (a transfer is a command) and read themselves again.
//!
//! This module owns those pages and routes only; the backend reads (the
//! API's own store reads), checks roles and scopes and cancels
//! (`ConsoleBackend::files`, `file`, `cancel_file`). POSTs go through the
//! same origin check and CSRF token as every console form.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use maud::{Markup, html};
use outpost_web::{Form, Path, Query};
use serde::Deserialize;

use crate::Console;
use crate::backend::ConsoleError;
use crate::commands::command_href;
use crate::format;
use crate::pages::layout::{self, badge, device_href, enc, site_href, time};
use crate::routes::{CsrfOnly, cancel_form, error_page, html as page, render, viewer};

/// The states the list filters by (the transfer's command's).
pub const STATES: [&str; 11] = [
    "queued_at_central",
    "delivered_to_site",
    "queued",
    "sent",
    "running",
    "completed",
    "failed",
    "timed_out",
    "cancelled",
    "expired",
    "interrupted",
];

/// Most transfers one list page shows.
pub const MAX_FILES: usize = 200;

/// One file transfer.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FileRow {
    pub id: String,
    pub site_id: String,
    pub site_name: String,
    pub customer: String,
    pub device: String,
    pub hostname: String,
    /// `push` or `pull`.
    pub direction: String,
    pub path: String,
    pub size_bytes: Option<u64>,
    pub sha256: Option<String>,
    /// Octal (`0644`).
    pub mode: Option<String>,
    pub owner: Option<String>,
    pub requested_by: String,
    pub created_ms: u64,
    /// The transfer's command id.
    pub command: String,
    /// The command's state (`queued_at_central`, `running`, `completed`, …).
    pub state: String,
    /// Why the command ended as it did.
    pub reason: Option<String>,
    /// Why the content stream was given up.
    pub failure: Option<String>,
    /// Central holds the verified content (`GET /api/v1/files/{id}/content`).
    pub content_available: bool,
}

impl FileRow {
    /// Whether it can still be cancelled.
    pub fn is_open(&self) -> bool {
        matches!(
            self.state.as_str(),
            "queued_at_central" | "delivered_to_site" | "queued" | "sent" | "running" | ""
        )
    }

    fn device_label(&self) -> &str {
        if self.hostname.is_empty() {
            &self.device
        } else {
            &self.hostname
        }
    }
}

/// The page of a transfer.
pub fn file_href(id: &str) -> String {
    format!("/files/{}", enc(id))
}

fn size(b: Option<u64>) -> Markup {
    html! { @match b { Some(b) => (format::bytes(b as f64)), None => span.muted { "–" } } }
}

/// The list of transfers with its state filter.
pub fn file_list(rows: &[FileRow], state: Option<&str>) -> Markup {
    html! {
        form.filters #file-filters method="get" action="/files" {
            label { span { "State" }
                select name="state" id="file-state" {
                    option value="" selected[state.is_none()] { "any" }
                    @for s in STATES { option value=(s) selected[state == Some(s)] { (s) } }
                }
            }
            button type="submit" id="file-filter" { "Filter" }
        }
        div #file-list data-live-commands {
            @if rows.is_empty() { p.empty #no-files { "No file transfer" @if let Some(s) = state { " in state " (s) } "." } } @else {
                div.scroll { table.grid #files {
                    thead { tr { th { "Transfer" } th { "State" } th { "Direction" } th { "Device" } th { "Site" } th { "Path" } th { "Size" } th { "Asked by" } th { "Created" } } }
                    tbody { @for f in rows {
                        tr data-file=(f.id) data-state=(f.state) {
                            td { a href=(file_href(&f.id)) { code { (f.id.get(..8).unwrap_or(&f.id)) } } }
                            td { (badge("cmd", &f.state)) }
                            td { (f.direction) }
                            td { a href=(device_href(&f.site_id, &f.device)) { (f.device_label()) } }
                            td { a href=(site_href(&f.site_id)) { (if f.site_name.is_empty() { &f.site_id } else { &f.site_name }) } }
                            td { code { (f.path) } }
                            td.n { (size(f.size_bytes)) }
                            td { (f.requested_by) }
                            td { (time(f.created_ms, true)) }
                        }
                    } }
                } }
            }
        }
    }
}

/// The page of one transfer; `cancel`: the CSRF token of the cancel form,
/// for those who may cancel (shown while the transfer is open).
pub fn file_page(f: &FileRow, cancel: Option<&str>) -> Markup {
    html! {
        section #file data-file=(f.id) data-state=(f.state) data-live-commands {
            p.facts #file-summary {
                (badge("cmd", &f.state)) " · " (f.direction) " · " code { (f.path) }
                " · " a href=(device_href(&f.site_id, &f.device)) { (f.device_label()) }
            }
            @if let Some(csrf) = cancel && f.is_open() {
                form.cancel #file-cancel-form method="post" action=(format!("{}/cancel", file_href(&f.id))) {
                    input type="hidden" name="csrf" value=(csrf);
                    button type="submit" id="cancel-file" { "Cancel the transfer" }
                }
            }
            dl.inventory {
                dt { "Device" } dd { a href=(device_href(&f.site_id, &f.device)) { (f.device_label()) } " " span.muted { code { (f.device) } } }
                dt { "Site" } dd { a href=(site_href(&f.site_id)) { (if f.site_name.is_empty() { &f.site_id } else { &f.site_name }) } @if !f.customer.is_empty() { " · " (f.customer) } }
                dt { "Direction" } dd { (f.direction) }
                dt { "Path" } dd { code { (f.path) } }
                dt { "Size" } dd data-field="size" { (size(f.size_bytes)) }
                dt { "SHA-256" } dd { @match &f.sha256 { Some(s) => code { (s) }, None => span.muted { "not known yet" } } }
                @if let Some(m) = &f.mode { dt { "Mode" } dd { code { (m) } } }
                @if let Some(o) = &f.owner { dt { "Owner" } dd { (o) } }
                dt { "State" } dd data-field="state" { (badge("cmd", &f.state)) @if let Some(r) = &f.reason { " " span data-field="reason" { (r) } } }
                @if let Some(w) = &f.failure { dt { "Stream" } dd data-field="failure" { (w) } }
                dt { "Content here" } dd data-field="content" { @if f.content_available { "yes (" code { "GET /api/v1/files/" (f.id) "/content" } ")" } @else { span.muted { "no" } } }
                dt { "Command" } dd { a href=(command_href(&f.command)) { code { (f.command) } } }
                dt { "Asked by" } dd { (f.requested_by) " · " (time(f.created_ms, false)) }
            }
        }
    }
}

// ---- routes ----

type C = State<Arc<Console>>;

fn unavailable() -> ConsoleError {
    ConsoleError::NotFound("File transfers are not available on this server.".into())
}

#[derive(Debug, Default, Deserialize)]
pub struct FileParams {
    pub state: Option<String>,
}

/// `GET /files[?state=S]`.
pub async fn list(State(c): C, h: HeaderMap, Query(q): Query<FileParams>) -> Response {
    let v = match viewer(&c, &h).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    if !c.backend.info().features.files {
        return error_page(&c, Some(&v), unavailable());
    }
    let state = q
        .state
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty());
    if let Some(s) = &state
        && !STATES.contains(&s.as_str())
    {
        return error_page(
            &c,
            Some(&v),
            ConsoleError::BadRequest(format!("\"{s}\" is not a transfer state.")),
        );
    }
    match c.backend.files(&v, state.as_deref()).await {
        Ok(rows) => page(
            StatusCode::OK,
            render(
                &c,
                Some(&v),
                layout::Section::Files,
                "File transfers",
                vec![
                    layout::crumb("Dashboard", "/"),
                    layout::here("File transfers"),
                ],
                file_list(&rows, state.as_deref()),
            ),
        ),
        Err(e) => error_page(&c, Some(&v), e),
    }
}

/// `GET /files/{id}`.
pub async fn show(State(c): C, h: HeaderMap, Path(id): Path<String>) -> Response {
    let v = match viewer(&c, &h).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    if !c.backend.info().features.files {
        return error_page(&c, Some(&v), unavailable());
    }
    let csrf = v.can.run_commands.then(|| c.csrf.token(&v.csrf_subject));
    match c.backend.file(&v, &id).await {
        Ok(f) => page(
            StatusCode::OK,
            render(
                &c,
                Some(&v),
                layout::Section::Files,
                "File transfer",
                vec![
                    layout::crumb("Dashboard", "/"),
                    layout::crumb("File transfers", "/files"),
                    layout::here(f.id.get(..8).unwrap_or(&f.id).to_string()),
                ],
                file_page(&f, csrf.as_deref()),
            ),
        ),
        Err(e) => error_page(&c, Some(&v), e),
    }
}

/// `POST /files/{id}/cancel` (those who may run commands; the backend
/// checks the role again).
pub async fn cancel(
    State(c): C,
    h: HeaderMap,
    Path(id): Path<String>,
    Form(f): Form<CsrfOnly>,
) -> Response {
    cancel_form(
        &c,
        &h,
        &f.csrf,
        "file transfers",
        file_href(&id),
        async |v| c.backend.cancel_file(v, &id).await,
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(state: &str) -> FileRow {
        FileRow {
            id: "0123456789abcdef".into(),
            site_id: "s-1".into(),
            site_name: "main <office>".into(),
            device: "000000000000002a".into(),
            hostname: "web-1".into(),
            direction: "push".into(),
            path: "/etc/<app>.conf".into(),
            size_bytes: Some(2048),
            command: "c1".into(),
            state: state.into(),
            reason: Some("agent said <no>".into()),
            ..Default::default()
        }
    }

    #[test]
    fn a_transfer_page_escapes_what_it_shows_and_offers_cancel_only_while_open_to_who_may() {
        let h = file_page(&row("running"), Some("tok")).into_string();
        assert!(
            h.contains(r#"action="/files/0123456789abcdef/cancel""#) && h.contains("cancel-file"),
            "{h}"
        );
        assert!(
            h.contains("/etc/&lt;app&gt;.conf")
                && h.contains("main &lt;office&gt;")
                && h.contains("agent said &lt;no&gt;"),
            "{h}"
        );
        assert!(h.contains("2.0 KiB"), "human size: {h}");
        assert!(
            !file_page(&row("running"), None)
                .into_string()
                .contains("cancel-file")
        );
        assert!(
            !file_page(&row("completed"), Some("tok"))
                .into_string()
                .contains("cancel-file")
        );
    }

    #[test]
    fn the_list_keeps_its_state_filter_and_says_when_nothing_matches() {
        let h = file_list(&[row("failed")], Some("failed")).into_string();
        assert!(h.contains(r#"value="failed" selected"#), "{h}");
        assert!(
            h.contains(r#"data-file="0123456789abcdef" data-state="failed""#),
            "{h}"
        );
        let e = file_list(&[], Some("cancelled")).into_string();
        assert!(
            e.contains("no-files") && e.contains("in state cancelled"),
            "{e}"
        );
    }
}
