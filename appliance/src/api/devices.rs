//! `/api/v1/devices...`: registry, state, latest values, history, revocation.

use std::sync::Arc;

use axum::extract::State;
use outpost_proto::DeviceId;
use outpost_proto::messages::{CloseReason, Heartbeat, Inventory};
use outpost_proto::{CustomerId, TenantId};
use outpost_storage::model::{AuditEntry, DeviceStatus};
use outpost_storage::query::{
    self, DeviceView, HeartbeatEntry, HistoryQuery, LatestValue, Point, Resolution,
};
use outpost_storage::{Store, now_ms, registry};
use outpost_web::{Json, Path, Query};
use serde::{Deserialize, Serialize};

use super::timeparse::{parse_step, parse_time};
use super::{ApiError, ApiState};
use crate::ingest::writer::WriterMsg;

/// Runs a storage read off the async workers.
pub(super) async fn blocking<T: Send + 'static>(
    store: &Store,
    f: impl FnOnce(&Store) -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    let store = store.clone();
    tokio::task::spawn_blocking(move || f(&store))
        .await
        .map_err(|e| ApiError::Internal(format!("storage task failed: {e}")))?
}

fn parse_id(id: &str) -> Result<DeviceId, ApiError> {
    id.parse()
        .map_err(|e: outpost_proto::ParseIdError| ApiError::BadRequest(e.to_string()))
}

/// One row of `GET /api/v1/devices`.
#[derive(Debug, Serialize, Deserialize, Clone, PartialEq)]
pub struct DeviceSummary {
    pub id: String,
    pub hostname: String,
    pub tenant: TenantId,
    pub customer: CustomerId,
    pub os: String,
    pub kernel: String,
    pub arch: String,
    pub agent_version: String,
    pub enrolled_at_ms: u64,
    pub revoked: bool,
    pub revoked_at_ms: Option<u64>,
    /// `pending` (enrolled, never connected), `online`, `offline`.
    pub status: String,
    pub status_since_ms: u64,
    pub last_seen_ms: u64,
    /// Highest stored record sequence number.
    pub last_seq: u64,
    pub records_stored: u64,
    pub heartbeat_interval_ms: u32,
    /// Whether a session is open right now.
    pub connected: bool,
}

fn summary(v: &DeviceView, connected: bool) -> DeviceSummary {
    let r = &v.record;
    let (status, since, seen, last_seq, stored, hb) = match &v.state {
        Some(s) => (
            s.status,
            s.status_since_ms,
            s.last_seen_ms,
            s.last_seq,
            s.records_stored,
            s.heartbeat_interval_ms,
        ),
        None => (DeviceStatus::Pending, r.enrolled_at_ms, 0, 0, 0, 0),
    };
    DeviceSummary {
        id: r.id.to_string(),
        hostname: r.hostname.clone(),
        tenant: r.tenant.clone(),
        customer: r.customer.clone(),
        os: r.os.clone(),
        kernel: r.kernel.clone(),
        arch: r.arch.clone(),
        agent_version: r.agent_version.clone(),
        enrolled_at_ms: r.enrolled_at_ms,
        revoked: r.revoked_at_ms.is_some(),
        revoked_at_ms: r.revoked_at_ms,
        status: status.as_str().to_string(),
        status_since_ms: since,
        last_seen_ms: seen,
        last_seq,
        records_stored: stored,
        heartbeat_interval_ms: hb,
        connected,
    }
}

pub async fn list(State(st): State<Arc<ApiState>>) -> Result<Json<Vec<DeviceSummary>>, ApiError> {
    let views = blocking(&st.store, |s| Ok(query::list_devices(s)?)).await?;
    Ok(Json(
        views
            .iter()
            .map(|v| summary(v, st.live.is_connected(v.record.id)))
            .collect(),
    ))
}

/// `GET /api/v1/devices/{id}`.
#[derive(Debug, Serialize, Deserialize)]
pub struct DeviceDetail {
    #[serde(flatten)]
    pub summary: DeviceSummary,
    pub last_heartbeat: Option<Heartbeat>,
    pub last_heartbeat_ts_ms: u64,
    pub inventory: Option<Inventory>,
    /// Latest value of every series.
    pub metrics: Vec<LatestValue>,
}

pub async fn show(
    State(st): State<Arc<ApiState>>,
    Path(id): Path<String>,
) -> Result<Json<DeviceDetail>, ApiError> {
    let id = parse_id(&id)?;
    let (view, inventory, latest) = blocking(&st.store, move |s| {
        let view = query::device_view(s, id)?
            .ok_or_else(|| ApiError::NotFound(format!("no device {id}")))?;
        Ok((
            view,
            registry::inventory(s, id)?,
            query::latest_values(s, id)?,
        ))
    })
    .await?;
    Ok(Json(DeviceDetail {
        summary: summary(&view, st.live.is_connected(id)),
        last_heartbeat: view.state.as_ref().and_then(|s| s.last_heartbeat),
        last_heartbeat_ts_ms: view
            .state
            .as_ref()
            .map(|s| s.last_heartbeat_ts_ms)
            .unwrap_or(0),
        inventory,
        metrics: latest,
    }))
}

#[derive(Debug, Deserialize)]
pub struct MetricsQuery {
    pub name: Option<String>,
    #[serde(default)]
    pub label: String,
    pub from: Option<String>,
    pub to: Option<String>,
    pub step: Option<String>,
    pub limit: Option<usize>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct MetricsAnswer {
    pub device: String,
    pub name: String,
    pub label: String,
    pub from_ms: u64,
    pub to_ms: u64,
    pub step_ms: u64,
    /// `raw` (stored samples, aggregated per step if a step is given) or
    /// `rollup` (5-minute rollups, merged per step).
    pub resolution: String,
    pub points: Vec<PointOut>,
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub struct PointOut {
    pub ts_ms: u64,
    pub min: f64,
    pub max: f64,
    pub avg: f64,
    pub last: f64,
    pub count: u64,
}

impl From<Point> for PointOut {
    fn from(p: Point) -> Self {
        PointOut {
            ts_ms: p.ts_ms,
            min: p.min,
            max: p.max,
            avg: p.avg,
            last: p.last,
            count: p.count,
        }
    }
}

/// Most points one history request may return.
const MAX_POINTS: usize = 100_000;

pub async fn metrics(
    State(st): State<Arc<ApiState>>,
    Path(id): Path<String>,
    Query(q): Query<MetricsQuery>,
) -> Result<Json<MetricsAnswer>, ApiError> {
    let id = parse_id(&id)?;
    let name = q.name.clone().filter(|n| !n.is_empty()).ok_or_else(|| {
        ApiError::BadRequest("query parameter `name` is required (e.g. name=cpu)".into())
    })?;
    let now = now_ms();
    let to =
        q.to.as_deref()
            .map(|t| parse_time(t, now))
            .transpose()
            .map_err(ApiError::BadRequest)?
            .unwrap_or(now);
    let from = q
        .from
        .as_deref()
        .map(|t| parse_time(t, now))
        .transpose()
        .map_err(ApiError::BadRequest)?
        .unwrap_or(to.saturating_sub(3_600_000));
    if from > to {
        return Err(ApiError::BadRequest(format!(
            "from ({from}) is after to ({to})"
        )));
    }
    let step_ms = q
        .step
        .as_deref()
        .map(parse_step)
        .transpose()
        .map_err(ApiError::BadRequest)?
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let limit = outpost_web::limit(q.limit, 10_000, MAX_POINTS)?;
    let label = q.label.clone();
    let (n2, l2) = (name.clone(), label.clone());
    let answer = blocking(&st.store, move |s| {
        if registry::get(s, id)?.is_none() {
            return Err(ApiError::NotFound(format!("no device {id}")));
        }
        let q = HistoryQuery {
            name: n2.clone(),
            label: l2.clone(),
            from_ms: from,
            to_ms: to,
            step_ms,
            limit,
        };
        match query::history(s, id, &q)? {
            Some(h) => Ok(h),
            None => {
                let mut have: Vec<String> = outpost_storage::rollup::device_series(s, id)?
                    .into_iter()
                    .map(|s| {
                        if s.label.is_empty() {
                            s.name
                        } else {
                            format!("{}[label={}]", s.name, s.label)
                        }
                    })
                    .collect();
                have.sort();
                Err(ApiError::NotFound(format!(
                    "device {id} has no series {n2:?} with label {l2:?}; it has: {}",
                    have.join(", ")
                )))
            }
        }
    })
    .await?;
    let (resolution, points) = answer;
    Ok(Json(MetricsAnswer {
        device: id.to_string(),
        name,
        label,
        from_ms: from,
        to_ms: to,
        step_ms,
        resolution: match resolution {
            Resolution::Raw => "raw",
            Resolution::Rollup => "rollup",
        }
        .into(),
        points: points.into_iter().map(PointOut::from).collect(),
    }))
}

#[derive(Debug, Deserialize)]
pub struct RangeQuery {
    pub from: Option<String>,
    pub to: Option<String>,
    pub limit: Option<usize>,
}

fn range(q: &RangeQuery, default_span_ms: u64) -> Result<(u64, u64, usize), ApiError> {
    let now = now_ms();
    let to =
        q.to.as_deref()
            .map(|t| parse_time(t, now))
            .transpose()
            .map_err(ApiError::BadRequest)?
            .unwrap_or(u64::MAX);
    let from = q
        .from
        .as_deref()
        .map(|t| parse_time(t, now))
        .transpose()
        .map_err(ApiError::BadRequest)?
        .unwrap_or(now.saturating_sub(default_span_ms));
    Ok((from, to, outpost_web::limit(q.limit, 10_000, MAX_POINTS)?))
}

pub async fn heartbeats(
    State(st): State<Arc<ApiState>>,
    Path(id): Path<String>,
    Query(q): Query<RangeQuery>,
) -> Result<Json<Vec<HeartbeatEntry>>, ApiError> {
    let id = parse_id(&id)?;
    let (from, to, limit) = range(&q, 3_600_000)?;
    let v = blocking(&st.store, move |s| {
        if registry::get(s, id)?.is_none() {
            return Err(ApiError::NotFound(format!("no device {id}")));
        }
        Ok(query::heartbeats(s, id, from, to, limit)?)
    })
    .await?;
    Ok(Json(v))
}

pub async fn status_log(
    State(st): State<Arc<ApiState>>,
    Path(id): Path<String>,
    Query(q): Query<RangeQuery>,
) -> Result<Json<Vec<outpost_storage::model::StatusTransition>>, ApiError> {
    let id = parse_id(&id)?;
    let (from, to, limit) = range(&q, 30 * 86_400_000)?;
    let v = blocking(&st.store, move |s| {
        if registry::get(s, id)?.is_none() {
            return Err(ApiError::NotFound(format!("no device {id}")));
        }
        Ok(query::status_log(s, id, from, to, limit)?)
    })
    .await?;
    Ok(Json(v))
}

#[derive(Debug, Serialize, Deserialize)]
pub struct RevokeAnswer {
    pub id: String,
    pub revoked_at_ms: u64,
    /// Whether an open session was closed.
    pub session_closed: bool,
}

pub async fn revoke(
    State(st): State<Arc<ApiState>>,
    axum::Extension(caller): axum::Extension<crate::users::auth::Caller>,
    Path(id): Path<String>,
) -> Result<Json<RevokeAnswer>, ApiError> {
    let id = parse_id(&id)?;
    let now = now_ms();
    let rec = blocking(&st.store, move |s| {
        let rec = registry::revoke(s, id, now)?
            .ok_or_else(|| ApiError::NotFound(format!("no device {id}")))?;
        registry::audit(
            s,
            &AuditEntry {
                at_ms: now,
                actor: caller.user,
                action: "device.revoke".into(),
                target: id.to_string(),
                detail: format!("hostname={}", rec.hostname),
            },
        )?;
        Ok(rec)
    })
    .await?;
    let closed = st.live.close(
        id,
        CloseReason::Revoked,
        "this device's certificate was revoked",
    );
    // The engine first: the offline transition the writer's retirement
    // causes must find the device retired (no "device offline" alert for a
    // revoked device), through the same ordered control channel.
    st.alerts.retired(id);
    st.writer.control(WriterMsg::Retire(id));
    tracing::info!(device = %id, session_closed = closed, "device revoked");
    Ok(Json(RevokeAnswer {
        id: id.to_string(),
        revoked_at_ms: rec.revoked_at_ms.unwrap_or(now),
        session_closed: closed,
    }))
}
