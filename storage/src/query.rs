//! Read paths for the admin API: device listings, latest values, metric
//! history (raw or rolled up), heartbeats and status transitions.

use outpost_proto::DeviceId;
use serde::Serialize;

use crate::Store;
use crate::error::Result;
use crate::ingest::{DEVICE_STATE, STATUS_LOG};
use crate::keys;
use crate::model::{DeviceRecord, DeviceState, Rollup, StatusTransition};
use crate::registry::DEVICES;
use crate::rollup;

/// A device with its current state.
#[derive(Debug, Clone, Serialize)]
pub struct DeviceView {
    #[serde(flatten)]
    pub record: DeviceRecord,
    pub state: Option<DeviceState>,
}

/// Every device in the registry, with state.
pub fn list_devices(store: &Store) -> Result<Vec<DeviceView>> {
    let mut records = Vec::new();
    store.scan::<DeviceRecord>(DEVICES, &[], None, |_, r| {
        records.push(r);
        true
    })?;
    records
        .into_iter()
        .map(|record| {
            let state = store.get(DEVICE_STATE, &keys::device_key(record.id))?;
            Ok(DeviceView { record, state })
        })
        .collect()
}

pub fn device_view(store: &Store, device: DeviceId) -> Result<Option<DeviceView>> {
    let Some(record) = crate::registry::get(store, device)? else {
        return Ok(None);
    };
    let state = store.get(DEVICE_STATE, &keys::device_key(device))?;
    Ok(Some(DeviceView { record, state }))
}

/// The latest value of a series.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct LatestValue {
    pub name: String,
    pub label: String,
    pub ts_ms: u64,
    pub value: f64,
}

/// The latest stored value of every series of a device.
pub fn latest_values(store: &Store, device: DeviceId) -> Result<Vec<LatestValue>> {
    let mut out = Vec::new();
    for rollup::SeriesInfo {
        name,
        label,
        id: sid,
    } in rollup::device_series(store, device)?
    {
        if let Some((ts, value)) = crate::samples::latest(store, device, sid)? {
            out.push(LatestValue {
                name,
                label,
                ts_ms: ts,
                value,
            });
        }
    }
    out.sort_by(|a, b| (&a.name, &a.label).cmp(&(&b.name, &b.label)));
    Ok(out)
}

/// One point of a metric history answer.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Point {
    /// Start of the step (or the sample time for raw points).
    pub ts_ms: u64,
    pub min: f64,
    pub max: f64,
    pub avg: f64,
    pub last: f64,
    pub count: u64,
}

impl Point {
    fn from_rollup(ts_ms: u64, r: &Rollup) -> Point {
        Point {
            ts_ms,
            min: r.min,
            max: r.max,
            avg: r.mean(),
            last: r.last,
            count: r.count,
        }
    }
}

/// Where a history answer came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Resolution {
    Raw,
    Rollup,
}

/// A metric history request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryQuery {
    pub name: String,
    pub label: String,
    pub from_ms: u64,
    pub to_ms: u64,
    /// 0: raw samples; below 5 minutes: raw samples aggregated per step;
    /// 5 minutes or more: stored 5-minute rollups (which outlive raw
    /// samples) merged per step.
    pub step_ms: u64,
    /// Most points returned.
    pub limit: usize,
}

/// Metric history of one series in `[from, to)`. Returns `None` if the
/// series does not exist.
pub fn history(
    store: &Store,
    device: DeviceId,
    q: &HistoryQuery,
) -> Result<Option<(Resolution, Vec<Point>)>> {
    let HistoryQuery {
        from_ms,
        to_ms,
        step_ms,
        limit,
        ..
    } = *q;
    let Some(sid) = rollup::device_series(store, device)?
        .into_iter()
        .find(|s| s.name == q.name && s.label == q.label)
        .map(|s| s.id)
    else {
        return Ok(None);
    };
    if step_ms >= store.rollup_bucket_ms() {
        let rollups = rollup::rollups_in(store, device, sid, from_ms, to_ms)?;
        let mut points: Vec<(u64, Rollup)> = Vec::new();
        for (ts, r) in rollups {
            let step_start = ts - ts % step_ms;
            match points.last_mut() {
                Some((s, acc)) if *s == step_start => merge(acc, &r),
                _ => points.push((step_start, r)),
            }
            if points.len() > limit {
                points.pop();
                break;
            }
        }
        return Ok(Some((
            Resolution::Rollup,
            points
                .iter()
                .map(|(ts, r)| Point::from_rollup(*ts, r))
                .collect(),
        )));
    }
    let mut points: Vec<(u64, Rollup)> = Vec::new();
    crate::samples::samples_in(store, device, sid, from_ms, to_ms, |ts, v| {
        let step_start = if step_ms == 0 { ts } else { ts - ts % step_ms };
        match points.last_mut() {
            Some((s, acc)) if *s == step_start => acc.add(ts, v),
            _ => {
                if points.len() == limit {
                    return false;
                }
                points.push((step_start, Rollup::of(ts, v)));
            }
        }
        true
    })?;
    Ok(Some((
        Resolution::Raw,
        points
            .iter()
            .map(|(ts, r)| Point::from_rollup(*ts, r))
            .collect(),
    )))
}

fn merge(acc: &mut Rollup, r: &Rollup) {
    acc.min = acc.min.min(r.min);
    acc.max = acc.max.max(r.max);
    acc.sum += r.sum;
    acc.count += r.count;
    if r.last_ts_ms >= acc.last_ts_ms {
        acc.last = r.last;
        acc.last_ts_ms = r.last_ts_ms;
    }
}

pub use crate::heartbeats::{HeartbeatEntry, read as heartbeats};

/// Status transitions of a device in `[from, to)`.
pub fn status_log(
    store: &Store,
    device: DeviceId,
    from_ms: u64,
    to_ms: u64,
    limit: usize,
) -> Result<Vec<StatusTransition>> {
    let mut out = Vec::new();
    store.scan::<StatusTransition>(
        STATUS_LOG,
        &keys::device_time_key(device, from_ms),
        Some(&keys::device_time_key(device, to_ms)),
        |_, t| {
            out.push(t);
            out.len() < limit
        },
    )?;
    Ok(out)
}
