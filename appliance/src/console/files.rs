//! The site console's file-transfer pages' data (`outpost_console::files`:
//! `/files`, `/files/{id}`, the cancel button): the transfers of the
//! site's [`FileService`] as the console's rows, hostnames and customers
//! from the index, the cancel through the service (as `POST
//! /api/v1/files/{id}/cancel`: technicians and admins, audited).
//!
//! The console filters by the states of central's list (a transfer is a
//! command there); a site transfer's states map onto them:
//! `transferring` shows as `running`, the others keep their names
//! ([`console_state`], [`site_state`]). This module only maps; it must
//! not touch the transfer records or their content (`crate::files`).

use axum::http::Method;
use outpost_console::backend::{ConsoleError, Viewer};
use outpost_console::files::{FileRow, MAX_FILES};
use outpost_proto::ids::TransferId;

use super::{SiteConsole, caller_of, internal};
use crate::files::api::TransferView;
use crate::files::model::{Direction, TransferRecord, TransferState};
use crate::files::service::{FileError, FileService};
use crate::users::auth::required_role;

/// The route whose role cancelling a transfer needs.
pub const CANCEL_ROUTE: &str = "/api/v1/files/{id}/cancel";

/// A site transfer's state in the console's (command) vocabulary.
pub fn console_state(s: TransferState) -> &'static str {
    match s {
        TransferState::Transferring => "running",
        other => other.as_str(),
    }
}

/// The site state a console state filter means; `None`: no transfer of
/// this site can be in it (`sent`, `timed_out`, central's own states).
pub fn site_state(s: &str) -> Option<TransferState> {
    match s {
        "running" => Some(TransferState::Transferring),
        "queued" => Some(TransferState::Queued),
        "completed" => Some(TransferState::Completed),
        "failed" => Some(TransferState::Failed),
        "cancelled" => Some(TransferState::Cancelled),
        "expired" => Some(TransferState::Expired),
        _ => None,
    }
}

fn not_found(id: &str) -> ConsoleError {
    ConsoleError::NotFound(format!("no file transfer {id}"))
}

impl SiteConsole {
    fn file_service(&self) -> Result<&FileService, ConsoleError> {
        self.files.as_ref().ok_or_else(|| {
            ConsoleError::NotFound("File transfers are not available on this server.".into())
        })
    }

    /// A transfer as a console row (names from the index).
    fn file_row(&self, r: &TransferRecord, svc: &FileService) -> FileRow {
        let site = self.site.identity();
        let v = TransferView::of(r, svc);
        let row = self.site.index.row(r.device);
        FileRow {
            id: v.id,
            site_id: site.id,
            site_name: site.name,
            customer: row.as_ref().map(|r| r.customer.clone()).unwrap_or_default(),
            device: v.device,
            hostname: row.map(|r| r.hostname).unwrap_or_default(),
            direction: match r.direction {
                Direction::Push => "push".into(),
                Direction::Pull => "pull".into(),
            },
            path: v.path,
            size_bytes: v.size_bytes,
            sha256: v.sha256,
            mode: v.mode,
            owner: v.owner,
            requested_by: v.requested_by,
            created_ms: v.created_ms,
            command: v.command.unwrap_or_default(),
            state: console_state(r.state).to_string(),
            reason: v.reason,
            failure: None,
            content_available: v.content_available,
        }
    }

    /// The site's transfers, newest first (as `GET /api/v1/files`).
    pub(super) async fn files_of(&self, state: Option<&str>) -> Result<Vec<FileRow>, ConsoleError> {
        let svc = self.file_service()?.clone();
        let want = match state {
            Some(s) => match site_state(s) {
                Some(t) => Some(t),
                None => return Ok(Vec::new()),
            },
            None => None,
        };
        let s2 = svc.clone();
        let recs = tokio::task::spawn_blocking(move || s2.list(None, want, MAX_FILES))
            .await
            .map_err(|e| internal(format!("storage task failed: {e}")))?
            .map_err(|e| internal(format!("reading transfers failed: {e}")))?;
        Ok(recs.iter().map(|r| self.file_row(r, &svc)).collect())
    }

    pub(super) async fn file_of(&self, id: &str) -> Result<FileRow, ConsoleError> {
        let svc = self.file_service()?.clone();
        let tid: TransferId = id.parse().map_err(|_| not_found(id))?;
        let s2 = svc.clone();
        let rec = tokio::task::spawn_blocking(move || s2.get(tid))
            .await
            .map_err(|e| internal(format!("storage task failed: {e}")))?
            .map_err(|e| internal(format!("reading transfers failed: {e}")))?
            .ok_or_else(|| not_found(id))?;
        Ok(self.file_row(&rec, &svc))
    }

    /// Cancels a transfer (technicians and admins, as the API route).
    pub(super) async fn cancel_file_of(&self, v: &Viewer, id: &str) -> Result<(), ConsoleError> {
        let need = required_role(&Method::POST, CANCEL_ROUTE);
        if !caller_of(v).role.allows(need) {
            return Err(ConsoleError::Forbidden(format!(
                "Role {} may not cancel file transfers (needs {}).",
                v.role,
                need.as_str()
            )));
        }
        let svc = self.file_service()?;
        let tid: TransferId = id.parse().map_err(|_| not_found(id))?;
        match svc.cancel(tid, &v.name).await {
            Ok(_) => Ok(()),
            Err(FileError::NotFound(_) | FileError::UnknownDevice(_)) => Err(not_found(id)),
            Err(e @ (FileError::Finished(..) | FileError::Invalid(_))) => {
                Err(ConsoleError::BadRequest(e.to_string()))
            }
            Err(e) => Err(internal(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_site_state_maps_onto_a_console_state_and_back() {
        for s in TransferState::ALL {
            let c = console_state(s);
            assert!(
                outpost_console::files::STATES.contains(&c),
                "{c} is a state the console filters by"
            );
            assert_eq!(site_state(c), Some(s));
        }
        assert_eq!(site_state("timed_out"), None);
        assert_eq!(site_state("queued_at_central"), None);
    }
}
