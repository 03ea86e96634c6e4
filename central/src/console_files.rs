//! Central's file-transfer pages' data: the transfers of
//! [`outpost_console::files`] read through the API's own store reads
//! ([`crate::api_files::list_files`], [`crate::api_files::visible`]) with
//! site names and hostnames added, and the cancel through the API's path
//! ([`crate::api_files::cancel_on`]: technicians and admins, customer
//! scopes, 404 for another tenant's transfer).
//!
//! This module only maps; it must not touch the transfer records, their
//! content or the stream to the sites (`crate::files`).

use std::collections::HashMap;
use std::sync::Arc;

use outpost_console::files::{FileRow, MAX_FILES};
use outpost_proto::SiteId;

use crate::Central;
use crate::api::{self, ApiError};
use crate::api_files::{self, FileView, ListQuery};
use crate::model::Principal;

fn row(v: &FileView, names: &HashMap<SiteId, String>) -> FileRow {
    FileRow {
        id: v.id.clone(),
        site_id: v.site.to_string(),
        site_name: names.get(&v.site).cloned().unwrap_or_default(),
        customer: v.customer.to_string(),
        device: v.device.clone(),
        hostname: String::new(),
        direction: match v.direction {
            crate::files::Direction::Push => "push".into(),
            crate::files::Direction::Pull => "pull".into(),
        },
        path: v.path.clone(),
        size_bytes: v.size_bytes,
        sha256: v.sha256.clone(),
        mode: v.mode.clone(),
        owner: v.owner.clone(),
        requested_by: v.requested_by.clone(),
        created_ms: v.created_ms,
        command: v.command.clone(),
        state: v.state.map(|s| s.as_str().to_string()).unwrap_or_default(),
        reason: v.reason.clone(),
        failure: v.failure.clone(),
        content_available: v.content_available,
    }
}

/// Site names and hostnames of `views`, as rows.
async fn rows_of(
    c: &Arc<Central>,
    p: &Principal,
    views: &[FileView],
) -> Result<Vec<FileRow>, ApiError> {
    let names: HashMap<SiteId, String> = api::visible_sites(c, p)
        .await?
        .into_iter()
        .map(|s| (s.site_id.clone(), s.name.clone()))
        .collect();
    let mut rows: Vec<FileRow> = views.iter().map(|v| row(v, &names)).collect();
    let keys: Vec<(SiteId, String)> = views
        .iter()
        .map(|v| (v.site.clone(), v.device.clone()))
        .collect();
    if !keys.is_empty()
        && let Ok(hosts) = c.store.hostnames(&p.tenant, &keys).await
    {
        for (r, h) in rows.iter_mut().zip(hosts) {
            r.hostname = h.unwrap_or_default();
        }
    }
    Ok(rows)
}

/// The caller's transfers, newest first, of one command state when given.
pub async fn list(
    c: &Arc<Central>,
    p: &Principal,
    state: Option<&str>,
) -> Result<Vec<FileRow>, ApiError> {
    let views = api_files::list_files(
        c,
        p,
        ListQuery {
            state: state.map(str::to_string),
            limit: Some(MAX_FILES),
            ..Default::default()
        },
    )
    .await?;
    rows_of(c, p, &views).await
}

/// One transfer the caller sees (404 otherwise).
pub async fn one(c: &Arc<Central>, p: &Principal, id: &str) -> Result<FileRow, ApiError> {
    let f = api_files::visible(c, p, id).await?;
    let cmd = c
        .store
        .command(&p.tenant, f.command)
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let v = FileView::of(&f, cmd.as_ref(), c);
    Ok(rows_of(c, p, std::slice::from_ref(&v))
        .await?
        .pop()
        .unwrap_or_else(|| row(&v, &HashMap::new())))
}

/// Cancels a transfer through the API's path.
pub async fn cancel(c: &Arc<Central>, p: &Principal, id: &str) -> Result<(), ApiError> {
    api_files::cancel_on(c, p, id).await.map(|_| ())
}
