//! Reading what changed: device snapshots that differ from what was last
//! sent, pending rollup markers and alert transitions. Reads only; the
//! caller deletes the returned keys in the batch that stores the outbox
//! entry.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::{DefaultHasher, Hash, Hasher};

use outpost_proto::{DeviceId, TenantId};
use outpost_storage::Store;
use outpost_storage::ingest::DEVICE_STATE;
use outpost_storage::keys;
use outpost_storage::model::{DeviceRecord, DeviceState, DeviceStatus, Rollup};
use outpost_storage::registry::DEVICES;
use outpost_storage::rollup::{self, ROLLUPS, SeriesInfo, UPLINK_PENDING};

use super::{ALERT_PREFIX, FINDINGS_PREFIX, PATCH_PREFIX, Result};
use crate::batch::limits::{self, RollupBudget};
use crate::batch::{
    self, AlertTransition, DeviceIpsTags, DeviceRollups, DeviceUpdate, ForeignTenant,
    PatchCompliance, PatchFindings, SeriesRollup,
};

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

/// What identifies a device snapshot worth sending at once: registry facts
/// and status, not `last_seen` (which moves with every heartbeat; it is
/// sent at a bounded rate, see [`snapshot_due`]).
fn snapshot_hash(u: &DeviceUpdate, facts: &DeviceIpsTags) -> u64 {
    let mut h = DefaultHasher::new();
    (&facts.ips, &facts.tags).hash(&mut h);
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

/// What was last sent of a device's snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct SentSnapshot {
    /// [`snapshot_hash`] of it.
    pub hash: u64,
    pub last_seen_ms: u64,
}

/// Whether a device's snapshot (of hash `hash`, last seen at
/// `last_seen_ms`) goes into the next batch, given what was last sent of
/// it: when it was never sent, when its registry facts or status changed,
/// or when its last-seen time moved by `last_seen_bound_ms` or more. So an
/// online device is resent about once per bound, not once per heartbeat,
/// and central's `last_seen_ms` lags by at most the bound plus an interval.
pub(super) fn snapshot_due(
    sent: Option<&SentSnapshot>,
    hash: u64,
    last_seen_ms: u64,
    last_seen_bound_ms: u64,
) -> bool {
    match sent {
        None => true,
        Some(s) => {
            s.hash != hash || last_seen_ms.saturating_sub(s.last_seen_ms) >= last_seen_bound_ms
        }
    }
}

/// The devices of `records` (not revoked) enrolled under a tenant other
/// than `joined`, counted per tenant, in tenant order.
pub fn foreign_tenants<'a>(
    records: impl IntoIterator<Item = &'a DeviceRecord>,
    joined: &TenantId,
) -> Vec<ForeignTenant> {
    let mut per: BTreeMap<&TenantId, u32> = BTreeMap::new();
    for r in records {
        if r.revoked_at_ms.is_none() && r.tenant != *joined {
            *per.entry(&r.tenant).or_default() += 1;
        }
    }
    // A report of a mistake: beyond the batch limit, the tenants with the
    // fewest devices are left out.
    let mut v: Vec<ForeignTenant> = per
        .into_iter()
        .map(|(tenant, devices)| ForeignTenant {
            tenant: tenant.clone(),
            devices,
        })
        .collect();
    if v.len() > limits::MAX_FOREIGN_TENANTS {
        v.sort_by(|a, b| {
            b.devices
                .cmp(&a.devices)
                .then_with(|| a.tenant.cmp(&b.tenant))
        });
        v.truncate(limits::MAX_FOREIGN_TENANTS);
        v.sort_by(|a, b| a.tenant.cmp(&b.tenant));
    }
    v
}

/// Every device record of the registry.
pub(crate) fn device_records(store: &Store) -> Result<Vec<DeviceRecord>> {
    let mut records = Vec::new();
    store.scan::<DeviceRecord>(DEVICES, &[], None, |_, r| {
        records.push(r);
        true
    })?;
    Ok(records)
}

/// Device snapshots due, each with its IP addresses and tags and its
/// [`snapshot_hash`].
pub(super) type DueSnapshots = Vec<(DeviceUpdate, DeviceIpsTags, u64)>;

/// The addresses of a device's interfaces as the batch carries them
/// (loopback and IPv6 link-local left out, prefix lengths dropped; what
/// the site console shows).
pub fn inventory_ips(inv: &outpost_proto::messages::Inventory) -> Vec<String> {
    let mut out: Vec<String> = inv
        .nics
        .iter()
        .flat_map(|n| n.ips.iter())
        .map(|ip| ip.split('/').next().unwrap_or(ip).to_string())
        .filter(|ip| !ip.starts_with("127.") && ip != "::1" && !ip.starts_with("fe80:"))
        .filter(|ip| ip.len() <= batch::MAX_FACT_BYTES)
        .collect();
    out.sort();
    out.dedup();
    out.truncate(16);
    out
}

/// A device's facts for the batch: its addresses and tags.
fn device_facts(store: &Store, device: DeviceId) -> Result<DeviceIpsTags> {
    let ips = outpost_storage::registry::inventory(store, device)?
        .map(|inv| inventory_ips(&inv))
        .unwrap_or_default();
    let mut tags = outpost_storage::registry::tags(store, device)?;
    tags.retain(|t| t.len() <= batch::MAX_FACT_BYTES);
    tags.truncate(batch::MAX_DEVICE_FACTS);
    Ok(DeviceIpsTags { device, ips, tags })
}

/// Devices whose snapshot is due ([`snapshot_due`]) given `sent`, with
/// their new hash; and the devices enrolled under a tenant other than
/// `joined` ([`foreign_tenants`]).
pub(super) fn device_changes(
    store: &Store,
    sent: &HashMap<DeviceId, SentSnapshot>,
    last_seen_bound_ms: u64,
    joined: &TenantId,
    now_ms: u64,
) -> Result<(DueSnapshots, Vec<ForeignTenant>)> {
    let records = device_records(store)?;
    let foreign = foreign_tenants(&records, joined);
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
        let facts = device_facts(store, u.device)?;
        let h = snapshot_hash(&u, &facts);
        if snapshot_due(sent.get(&u.device), h, u.last_seen_ms, last_seen_bound_ms) {
            out.push((u, facts, h));
            if out.len() == limits::MAX_DEVICE_UPDATES {
                // The others stay due: the next batches carry them.
                break;
            }
        }
    }
    Ok((out, foreign))
}

/// What [`pending_rollups`] takes for the next batch.
#[derive(Debug, Default)]
pub(super) struct PendingRollups {
    pub entries: Vec<DeviceRollups>,
    /// Every marker key consumed by `entries` (and unreadable ones).
    pub keys: Vec<Vec<u8>>,
    /// Series left out of an entry above [`limits::MAX_SERIES_PER_ENTRY`].
    pub dropped_series: u64,
}

/// Up to `max_buckets` (device, bucket) rollup sets with pending markers,
/// within the batch [`limits`] (a set that would exceed them waits for the
/// next batch), and every marker key consumed (several generations of one
/// bucket collapse into one entry carrying the newest generation).
pub(super) fn pending_rollups(store: &Store, max_buckets: usize) -> Result<PendingRollups> {
    let max_buckets = max_buckets.min(limits::MAX_ROLLUP_ENTRIES);
    // (device, bucket, newest generation, its marker keys)
    let mut marks: Vec<(DeviceId, u64, u64, Vec<Vec<u8>>)> = Vec::new();
    let mut out = PendingRollups::default();
    let from = [rollup::UPLINK_ROLLUP_PREFIX];
    let to = [rollup::UPLINK_ROLLUP_PREFIX + 1];
    store.scan_raw(UPLINK_PENDING, &from, Some(&to), |k, _| {
        let Some((d, bucket, generation)) = rollup::parse_uplink_rollup_marker(k) else {
            out.keys.push(k.to_vec());
            return Ok(true);
        };
        match marks.last_mut() {
            Some(last) if last.0 == d && last.1 == bucket => {
                last.2 = last.2.max(generation);
                last.3.push(k.to_vec());
            }
            _ => {
                if marks.len() >= max_buckets {
                    return Ok(false);
                }
                marks.push((d, bucket, generation, vec![k.to_vec()]));
            }
        }
        Ok(true)
    })?;
    let mut budget = RollupBudget::default();
    // Series names already in the batch: name → labels.
    let mut names: HashMap<String, HashSet<String>> = HashMap::new();
    let mut series_of: Option<DeviceId> = None;
    let mut series: Vec<SeriesInfo> = Vec::new();
    for (device, bucket, generation, keys) in marks {
        if series_of != Some(device) {
            series = rollup::device_series(store, device)?;
            series_of = Some(device);
        }
        let mut ss = Vec::with_capacity(series.len().min(limits::MAX_SERIES_PER_ENTRY));
        // Series of this entry left out (counted once the entry is taken).
        let mut dropped = 0;
        for s in &series {
            if limits::check_name(&s.name).is_err() || limits::check_name(&s.label).is_err() {
                // The ingest writer refuses such names; never sent.
                dropped += 1;
                continue;
            }
            if let Some(r) =
                store.get::<Rollup>(ROLLUPS, &keys::series_time_key(device, s.id, bucket))?
            {
                if ss.len() == limits::MAX_SERIES_PER_ENTRY {
                    dropped += 1;
                    continue;
                }
                ss.push(SeriesRollup {
                    name: s.name.clone(),
                    label: s.label.clone(),
                    rollup: batch_rollup(&r),
                });
            }
        }
        if ss.is_empty() {
            out.dropped_series += dropped;
            out.keys.extend(keys);
            continue;
        }
        let entry = DeviceRollups {
            device,
            bucket_start_ms: bucket,
            computed_ms: generation,
            series: ss,
        };
        let new_names = entry
            .series
            .iter()
            .filter(|s| names.get(&s.name).is_none_or(|ls| !ls.contains(&s.label)))
            .map(|s| (s.name.as_str(), s.label.as_str()))
            .collect::<HashSet<_>>();
        // One entry always fits an empty budget (see `limits`): a batch
        // never stalls on one.
        match budget.with_entry(&entry, new_names.len() as u64) {
            Ok(b) => budget = b,
            Err(_) => break,
        }
        for (n, l) in new_names {
            names
                .entry(n.to_string())
                .or_default()
                .insert(l.to_string());
        }
        out.dropped_series += dropped;
        out.keys.extend(keys);
        out.entries.push(entry);
    }
    Ok(out)
}

/// Up to `max` pending alert transitions, oldest first, and their keys.
pub(super) fn pending_alerts(
    store: &Store,
    max: usize,
) -> Result<(Vec<AlertTransition>, Vec<Vec<u8>>)> {
    let max = max.min(limits::MAX_ALERT_TRANSITIONS);
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

/// Pending patch compliance entries (one per device, its latest), at most
/// the batch limit (the rest waits for the next batch), with their keys;
/// corrupt entries are dropped (their keys returned too).
pub(super) fn pending_patch_compliance(
    store: &Store,
) -> Result<(Vec<PatchCompliance>, Vec<Vec<u8>>)> {
    let max = limits::MAX_PATCH_COMPLIANCE;
    let mut out = Vec::new();
    let mut ks = Vec::new();
    let mut corrupt = Vec::new();
    store.scan_raw(
        UPLINK_PENDING,
        &[PATCH_PREFIX],
        Some(&[PATCH_PREFIX + 1]),
        |k, v| {
            match outpost_proto::codec::decode::<PatchCompliance>(v) {
                Ok(p) => {
                    out.push(p);
                    ks.push(k.to_vec());
                }
                Err(e) => {
                    tracing::error!(error = %e, "dropping a corrupt pending patch compliance");
                    corrupt.push(k.to_vec());
                }
            }
            Ok(out.len() < max)
        },
    )?;
    ks.extend(corrupt);
    Ok((out, ks))
}

/// Pending patch findings (one per device, its latest) while they fit the
/// batch's [`limits::MAX_EXPANDED_FINDING_BYTES`] and
/// [`limits::MAX_PATCH_FINDINGS`] (the rest waits for the next batch; one
/// device always goes), with their keys; corrupt entries and devices over
/// the per-device limits are dropped (counted in the log, keys returned).
pub(super) fn pending_patch_findings(store: &Store) -> Result<(Vec<PatchFindings>, Vec<Vec<u8>>)> {
    let mut out: Vec<PatchFindings> = Vec::new();
    let mut ks = Vec::new();
    let mut dropped = Vec::new();
    let mut bytes = 0u64;
    store.scan_raw(
        UPLINK_PENDING,
        &[FINDINGS_PREFIX],
        Some(&[FINDINGS_PREFIX + 1]),
        |k, v| match outpost_proto::codec::decode::<PatchFindings>(v) {
            Ok(f) => {
                if let Err(e) = f.check_limits() {
                    tracing::warn!(device = %f.device, error = %e, "patch findings over the batch limits left out of the uplink");
                    dropped.push(k.to_vec());
                    return Ok(true);
                }
                let b = f.expanded_bytes();
                if !out.is_empty()
                    && (bytes + b > limits::MAX_EXPANDED_FINDING_BYTES as u64
                        || out.len() >= limits::MAX_PATCH_FINDINGS)
                {
                    return Ok(false);
                }
                if b > limits::MAX_EXPANDED_FINDING_BYTES as u64 {
                    tracing::warn!(device = %f.device, bytes = b, "patch findings over the batch limits left out of the uplink");
                    dropped.push(k.to_vec());
                    return Ok(true);
                }
                bytes += b;
                out.push(f);
                ks.push(k.to_vec());
                Ok(true)
            }
            Err(e) => {
                tracing::error!(error = %e, "dropping corrupt pending patch findings");
                dropped.push(k.to_vec());
                Ok(true)
            }
        },
    )?;
    ks.extend(dropped);
    Ok((out, ks))
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOUND: u64 = 300_000;

    #[test]
    fn a_snapshot_is_due_when_new_changed_or_last_seen_moved_by_the_bound() {
        let sent = SentSnapshot {
            hash: 7,
            last_seen_ms: 1_000_000,
        };
        assert!(snapshot_due(None, 7, 1_000_000, BOUND), "never sent");
        assert!(
            snapshot_due(Some(&sent), 8, 1_000_000, BOUND),
            "status changed"
        );
        // Heartbeats move last-seen: not resent for each one...
        for seen in [1_000_000, 1_030_000, 1_000_000 + BOUND - 1] {
            assert!(!snapshot_due(Some(&sent), 7, seen, BOUND), "seen {seen}");
        }
        // ... but once it moved by the bound.
        assert!(snapshot_due(Some(&sent), 7, 1_000_000 + BOUND, BOUND));
        // A clock going back does not resend (nor panic).
        assert!(!snapshot_due(Some(&sent), 7, 5, BOUND));
    }

    fn record(id: u64, tenant: &str, revoked: bool) -> DeviceRecord {
        DeviceRecord {
            id: DeviceId(id),
            tenant: tenant.into(),
            customer: "c".into(),
            hostname: format!("h{id}"),
            os: String::new(),
            kernel: String::new(),
            arch: String::new(),
            agent_version: String::new(),
            enrolled_at_ms: 1,
            cert_serial: String::new(),
            revoked_at_ms: revoked.then_some(2),
        }
    }

    #[test]
    fn devices_of_other_tenants_are_counted_per_tenant_revoked_ones_not() {
        let records = [
            record(1, "typo-msp", false),
            record(2, "acme-msp", false),
            record(3, "acme-msp", false),
            record(4, "beta", true),
            record(5, "zeta", false),
            record(6, "acme-msp", true),
        ];
        let got = foreign_tenants(&records, &"typo-msp".into());
        let want = vec![
            ForeignTenant {
                tenant: "acme-msp".into(),
                devices: 2,
            },
            ForeignTenant {
                tenant: "zeta".into(),
                devices: 1,
            },
        ];
        assert_eq!(got, want);
        assert!(foreign_tenants(&records[..1], &"typo-msp".into()).is_empty());
    }
}
