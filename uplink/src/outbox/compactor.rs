//! Reading what changed: device snapshots that differ from what was last
//! sent, pending rollup markers and alert transitions. Reads only; the
//! caller deletes the returned keys in the batch that stores the outbox
//! entry.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};

use outpost_proto::DeviceId;
use outpost_storage::Store;
use outpost_storage::ingest::DEVICE_STATE;
use outpost_storage::keys;
use outpost_storage::model::{DeviceRecord, DeviceState, DeviceStatus, Rollup};
use outpost_storage::registry::DEVICES;
use outpost_storage::rollup::{self, ROLLUPS, SeriesInfo, UPLINK_PENDING};

use super::{ALERT_PREFIX, Result};
use crate::batch::{self, AlertTransition, DeviceRollups, DeviceUpdate, SeriesRollup};

/// The batch's copy of a device status (the batch has its own types, so a
/// change in the appliance's tables cannot change the batch format).
pub(super) fn batch_status(s: DeviceStatus) -> batch::DeviceStatus {
    match s {
        DeviceStatus::Pending => batch::DeviceStatus::Pending,
        DeviceStatus::Online => batch::DeviceStatus::Online,
        DeviceStatus::Offline => batch::DeviceStatus::Offline,
    }
}

/// The batch's copy of a stored rollup.
pub(super) fn batch_rollup(r: &Rollup) -> batch::Rollup {
    batch::Rollup {
        min: r.min,
        max: r.max,
        sum: r.sum,
        count: r.count,
        last: r.last,
        last_ts_ms: r.last_ts_ms,
    }
}

/// What identifies a device snapshot worth sending: registry facts and
/// status, not `last_seen` (which moves with every heartbeat; central learns
/// liveness from the status and the batch time).
fn snapshot_hash(u: &DeviceUpdate) -> u64 {
    let mut h = DefaultHasher::new();
    (
        &u.customer,
        &u.hostname,
        &u.os,
        &u.agent_version,
        u.enrolled_at_ms,
        u.revoked,
        u.status.as_str(),
        u.status_since_ms,
    )
        .hash(&mut h);
    h.finish()
}

/// Devices whose snapshot differs from `sent`, with their new hash.
pub(super) fn device_changes(
    store: &Store,
    sent: &HashMap<DeviceId, u64>,
    now_ms: u64,
) -> Result<Vec<(DeviceUpdate, u64)>> {
    let mut records = Vec::new();
    store.scan::<DeviceRecord>(DEVICES, &[], None, |_, r| {
        records.push(r);
        true
    })?;
    let mut out = Vec::new();
    for r in records {
        let st: Option<DeviceState> = store.get(DEVICE_STATE, &keys::device_key(r.id))?;
        let (status, since, seen) = match &st {
            Some(s) => (s.status, s.status_since_ms, s.last_seen_ms),
            None => (DeviceStatus::Pending, r.enrolled_at_ms, 0),
        };
        let u = DeviceUpdate {
            device: r.id,
            customer: r.customer,
            hostname: r.hostname,
            os: r.os,
            agent_version: r.agent_version,
            enrolled_at_ms: r.enrolled_at_ms,
            revoked: r.revoked_at_ms.is_some(),
            status: batch_status(status),
            status_since_ms: since,
            last_seen_ms: seen,
            as_of_ms: now_ms,
        };
        let h = snapshot_hash(&u);
        if sent.get(&u.device) != Some(&h) {
            out.push((u, h));
        }
    }
    Ok(out)
}

/// Up to `max_buckets` (device, bucket) rollup sets with pending markers,
/// and every marker key consumed (several generations of one bucket
/// collapse into one entry carrying the newest generation).
pub(super) fn pending_rollups(
    store: &Store,
    max_buckets: usize,
) -> Result<(Vec<DeviceRollups>, Vec<Vec<u8>>)> {
    let mut marks: Vec<(DeviceId, u64, u64)> = Vec::new();
    let mut keys_out: Vec<Vec<u8>> = Vec::new();
    let from = [rollup::UPLINK_ROLLUP_PREFIX];
    let to = [rollup::UPLINK_ROLLUP_PREFIX + 1];
    store.scan_raw(UPLINK_PENDING, &from, Some(&to), |k, _| {
        let Some((d, bucket, generation)) = rollup::parse_uplink_rollup_marker(k) else {
            keys_out.push(k.to_vec());
            return Ok(true);
        };
        match marks.last_mut() {
            Some(last) if last.0 == d && last.1 == bucket => last.2 = last.2.max(generation),
            _ => {
                if marks.len() >= max_buckets {
                    return Ok(false);
                }
                marks.push((d, bucket, generation));
            }
        }
        keys_out.push(k.to_vec());
        Ok(true)
    })?;
    let mut out = Vec::with_capacity(marks.len());
    let mut series_of: Option<DeviceId> = None;
    let mut series: Vec<SeriesInfo> = Vec::new();
    for (device, bucket, generation) in marks {
        if series_of != Some(device) {
            series = rollup::device_series(store, device)?;
            series_of = Some(device);
        }
        let mut ss = Vec::with_capacity(series.len());
        for s in &series {
            if let Some(r) =
                store.get::<Rollup>(ROLLUPS, &keys::series_time_key(device, s.id, bucket))?
            {
                ss.push(SeriesRollup {
                    name: s.name.clone(),
                    label: s.label.clone(),
                    rollup: batch_rollup(&r),
                });
            }
        }
        if !ss.is_empty() {
            out.push(DeviceRollups {
                device,
                bucket_start_ms: bucket,
                computed_ms: generation,
                series: ss,
            });
        }
    }
    Ok((out, keys_out))
}

/// Up to `max` pending alert transitions, oldest first, and their keys.
pub(super) fn pending_alerts(
    store: &Store,
    max: usize,
) -> Result<(Vec<AlertTransition>, Vec<Vec<u8>>)> {
    let mut out = Vec::new();
    let mut ks = Vec::new();
    let mut corrupt = Vec::new();
    store.scan_raw(
        UPLINK_PENDING,
        &[ALERT_PREFIX],
        Some(&[ALERT_PREFIX + 1]),
        |k, v| {
            match outpost_proto::codec::decode::<AlertTransition>(v) {
                Ok(t) => {
                    out.push(t);
                    ks.push(k.to_vec());
                }
                Err(e) => {
                    tracing::error!(error = %e, "dropping a corrupt pending alert transition");
                    corrupt.push(k.to_vec());
                }
            }
            Ok(out.len() < max)
        },
    )?;
    ks.extend(corrupt);
    Ok((out, ks))
}
