//! The appliance's outbox: compacted, numbered batches waiting for central.
//!
//! * **Pending changes** ([`UPLINK_PENDING`]): the ingest writer records a
//!   marker per (device, bucket) in the same RocksDB batch as every rollup it
//!   (re)computes while the site is joined; the alert engine records alert
//!   transitions ([`push_alert_transition`]). Device status is a snapshot,
//!   compared with what was last sent.
//! * **Compaction** ([`Outbox::compact`], every interval): turns pending
//!   changes into one [`SiteBatch`] with the next sequence number, encodes it
//!   and writes it to [`UPLINK_OUTBOX`] *in the same write batch* that
//!   deletes the consumed markers and advances the sequence: a change is
//!   either still pending or in exactly one stored batch.
//! * **Acknowledgement** ([`Outbox::ack`]): a batch is deleted only when
//!   central acknowledged its sequence as durable.
//! * **Bound** ([`Outbox::enforce_bound`]): above `max_bytes`, the oldest
//!   batches lose their rollups first (counted); device status and alert
//!   transitions are never dropped.
//!
//! Must not touch the network: [`crate::sender`] moves the bytes.

pub(crate) mod compactor;
#[cfg(test)]
mod model_test;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use outpost_proto::{DeviceId, SiteId, TenantId};
use outpost_storage::keys::time_counter_key;
use outpost_storage::rollup::UPLINK_PENDING;
use outpost_storage::{Batch, META, StorageError, Store, Table};
use serde::{Deserialize, Serialize};

use crate::batch::{self, AlertTransition, BatchError, PatchCompliance, PatchFindings, SiteBatch};
use crate::metrics::UplinkMetrics;

/// `seq` (u64 BE) → [`OutboxRecord`]: compacted, compressed batches
/// waiting for central's acknowledgement.
pub const UPLINK_OUTBOX: Table = Table::new("uplink_outbox");

/// The outbox's tables, for `Store::open` (its pending changes live in the
/// storage crate's [`UPLINK_PENDING`], written by the ingest writer; its
/// sequence state in [`META`] under `uplink.outbox`).
pub const TABLES: &[Table] = &[UPLINK_OUTBOX];

/// First byte of alert-transition keys in [`UPLINK_PENDING`].
pub const ALERT_PREFIX: u8 = b'a';
/// First byte of patch-compliance keys in [`UPLINK_PENDING`]: `'p' |
/// device (8, BE)` → [`PatchCompliance`], the device's latest (a newer
/// assessment replaces one not sent yet).
pub const PATCH_PREFIX: u8 = b'p';
/// First byte of patch-findings keys in [`UPLINK_PENDING`]: `'f' | device
/// (8, BE)` → [`PatchFindings`], the device's latest (format 5).
pub const FINDINGS_PREFIX: u8 = b'f';
const META_KEY: &[u8] = b"uplink.outbox";

#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    #[error("outbox storage: {0}")]
    Storage(#[from] StorageError),
    #[error("outbox batch: {0}")]
    Batch(#[from] BatchError),
    #[error("outbox batch {seq} is corrupt (checksum mismatch); delete DATA/db or re-join")]
    Checksum { seq: u64 },
}

pub type Result<T, E = OutboxError> = std::result::Result<T, E>;

/// Limits of the outbox.
#[derive(Debug, Clone)]
pub struct OutboxConfig {
    /// Bound of the stored batches' compressed bytes.
    pub max_bytes: u64,
    /// (device, bucket) rollup sets per batch (the rest waits for the next).
    pub max_rollup_buckets_per_batch: usize,
    /// Alert transitions per batch.
    pub max_alerts_per_batch: usize,
    pub zstd_level: i32,
    /// A device snapshot whose only change is its last-seen time is sent
    /// again once last-seen moved by this much (see
    /// [`compactor::snapshot_due`]).
    pub last_seen_resend_ms: u64,
}

impl Default for OutboxConfig {
    fn default() -> Self {
        OutboxConfig {
            max_bytes: 256 * 1024 * 1024,
            max_rollup_buckets_per_batch: 20_000,
            max_alerts_per_batch: 10_000,
            zstd_level: batch::DEFAULT_ZSTD_LEVEL,
            last_seen_resend_ms: 5 * 60_000,
        }
    }
}

/// A stored batch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutboxRecord {
    pub seq: u64,
    pub created_ms: u64,
    /// CRC-32 of `payload`.
    pub crc32: u32,
    pub rollups: u32,
    pub devices: u32,
    pub alerts: u32,
    /// `batch::encode` output.
    pub payload: Vec<u8>,
}

impl OutboxRecord {
    fn new(b: &SiteBatch, payload: Vec<u8>) -> OutboxRecord {
        OutboxRecord {
            seq: b.seq,
            created_ms: b.created_ms,
            crc32: crc32fast::hash(&payload),
            rollups: b.rollup_count() as u32,
            devices: b.devices.len() as u32,
            alerts: b.alerts.len() as u32,
            payload,
        }
    }

    fn check(&self) -> Result<()> {
        if crc32fast::hash(&self.payload) != self.crc32 {
            return Err(OutboxError::Checksum { seq: self.seq });
        }
        Ok(())
    }
}

/// Persistent counters of the outbox.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct OutboxMeta {
    /// Sequence number of the next batch (from 1).
    next_seq: u64,
    /// Highest sequence acknowledged by central.
    acked_up_to: u64,
    dropped_rollups_total: u64,
}

/// In-memory index entry of a stored batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    pub seq: u64,
    pub bytes: u64,
    pub rollups: u32,
    pub created_ms: u64,
}

/// What [`Outbox::raise_above`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Renumbered {
    /// `next_seq` before: at or below central's mark.
    pub from_next_seq: u64,
    /// `next_seq` now: above central's mark and every renumbered batch.
    pub next_seq: u64,
    /// Stored batches given new numbers (all of them).
    pub batches: u64,
    /// Of those, batches whose payload did not open (moved as they are).
    pub unreadable: u64,
}

/// A summary for status displays.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct OutboxStats {
    pub backlog_batches: u64,
    pub backlog_bytes: u64,
    pub next_seq: u64,
    pub last_acked_seq: u64,
    pub oldest_backlog_ms: Option<u64>,
    pub dropped_rollups_total: u64,
}

struct Inner {
    meta: OutboxMeta,
    entries: BTreeMap<u64, Entry>,
    total_bytes: u64,
    /// The last device snapshot put into a batch, per device. Not
    /// persisted: after a restart every device is sent once more (central
    /// applies snapshots idempotently).
    sent_snapshots: HashMap<DeviceId, compactor::SentSnapshot>,
}

/// The outbox (see the module docs).
pub struct Outbox {
    store: Store,
    cfg: OutboxConfig,
    inner: Mutex<Inner>,
    metrics: UplinkMetrics,
    /// Wakes the sender when a batch was stored.
    pub added: tokio::sync::Notify,
}

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbox").finish_non_exhaustive()
    }
}

fn seq_key(seq: u64) -> [u8; 8] {
    seq.to_be_bytes()
}

impl Outbox {
    /// Opens the outbox, indexing the stored batches.
    pub fn open(store: Store, cfg: OutboxConfig, metrics: UplinkMetrics) -> Result<Outbox> {
        let mut meta: OutboxMeta = store.get(META, META_KEY)?.unwrap_or_default();
        if meta.next_seq == 0 {
            meta.next_seq = 1;
        }
        let mut entries = BTreeMap::new();
        let mut total = 0u64;
        store.scan::<OutboxRecord>(UPLINK_OUTBOX, &[], None, |_, r| {
            let bytes = r.payload.len() as u64;
            total += bytes;
            entries.insert(
                r.seq,
                Entry {
                    seq: r.seq,
                    bytes,
                    rollups: r.rollups,
                    created_ms: r.created_ms,
                },
            );
            true
        })?;
        if let Some(max) = entries.keys().next_back() {
            meta.next_seq = meta.next_seq.max(max + 1);
        }
        let ob = Outbox {
            store,
            cfg,
            inner: Mutex::new(Inner {
                meta,
                entries,
                total_bytes: total,
                sent_snapshots: HashMap::new(),
            }),
            metrics,
            added: tokio::sync::Notify::new(),
        };
        ob.publish();
        Ok(ob)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves consistent data (every
        // mutation is applied after its write succeeded): keep going.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn publish(&self) {
        let g = self.lock();
        self.metrics.backlog_batches.set(g.entries.len() as i64);
        self.metrics.backlog_bytes.set(g.total_bytes as i64);
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The zstd level batches are compressed at (the sender re-encodes
    /// with it for an older central).
    pub fn zstd_level(&self) -> i32 {
        self.cfg.zstd_level
    }

    /// Compacts pending changes into the next batch and stores it. Returns
    /// the stored entry.
    pub fn compact(&self, site: &SiteId, tenant: &TenantId, now_ms: u64) -> Result<Entry> {
        let mut g = self.lock();
        let seq = g.meta.next_seq;
        let (devices, foreign_tenants) = compactor::device_changes(
            &self.store,
            &g.sent_snapshots,
            self.cfg.last_seen_resend_ms,
            tenant,
            now_ms,
        )?;
        let pending =
            compactor::pending_rollups(&self.store, self.cfg.max_rollup_buckets_per_batch)?;
        let (rollups, rollup_keys) = (pending.entries, pending.keys);
        let (alerts, alert_keys) =
            compactor::pending_alerts(&self.store, self.cfg.max_alerts_per_batch)?;
        let (patch_compliance, patch_keys) = compactor::pending_patch_compliance(&self.store)?;
        let (patch_findings, findings_keys) = compactor::pending_patch_findings(&self.store)?;
        let b = SiteBatch {
            seq,
            site: site.clone(),
            tenant: tenant.clone(),
            created_ms: now_ms,
            devices: devices.iter().map(|(u, _, _)| u.clone()).collect(),
            rollups,
            alerts,
            patch_compliance,
            commands: Vec::new(),
            dropped_rollups: pending.dropped_series,
            foreign_tenants,
            patch_findings,
            device_facts: devices
                .iter()
                .map(|(_, f, _)| f.clone())
                .filter(|f| !f.ips.is_empty() || !f.tags.is_empty())
                .collect(),
        };
        let payload = batch::encode(&b, self.cfg.zstd_level)?;
        let rec = OutboxRecord::new(&b, payload);
        let mut meta = g.meta.clone();
        meta.next_seq = seq + 1;
        meta.dropped_rollups_total += pending.dropped_series;
        let mut wb = self.store.batch();
        wb.put(UPLINK_OUTBOX, &seq_key(seq), &rec)?;
        for k in rollup_keys
            .iter()
            .chain(alert_keys.iter())
            .chain(patch_keys.iter())
            .chain(findings_keys.iter())
        {
            wb.delete(UPLINK_PENDING, k)?;
        }
        wb.put(META, META_KEY, &meta)?;
        self.store.write(wb)?;
        // Durable: now update memory.
        g.meta = meta;
        for (u, _, h) in &devices {
            g.sent_snapshots.insert(
                u.device,
                compactor::SentSnapshot {
                    hash: *h,
                    last_seen_ms: u.last_seen_ms,
                },
            );
        }
        let entry = Entry {
            seq,
            bytes: rec.payload.len() as u64,
            rollups: rec.rollups,
            created_ms: now_ms,
        };
        g.entries.insert(seq, entry);
        g.total_bytes += entry.bytes;
        let m = &self.metrics;
        m.batches_created.inc();
        m.batch_bytes_created.inc_by(entry.bytes);
        m.rollups_enqueued.inc_by(u64::from(rec.rollups));
        m.device_updates_enqueued.inc_by(u64::from(rec.devices));
        m.alert_transitions_enqueued.inc_by(u64::from(rec.alerts));
        if pending.dropped_series > 0 {
            m.rollups_dropped.inc_by(pending.dropped_series);
            tracing::warn!(
                seq,
                series = pending.dropped_series,
                "series above the batch limits left out of the uplink"
            );
        }
        drop(g);
        self.enforce_bound()?;
        self.publish();
        self.added.notify_one();
        Ok(entry)
    }

    /// Drops rollups from the oldest batches until the outbox fits its bound.
    /// Returns the number of rollups dropped.
    pub fn enforce_bound(&self) -> Result<u64> {
        let mut dropped = 0u64;
        loop {
            let mut g = self.lock();
            if g.total_bytes <= self.cfg.max_bytes {
                break;
            }
            let Some(victim) = g.entries.values().find(|e| e.rollups > 0).copied() else {
                self.metrics.outbox_over_limit.inc();
                tracing::warn!(
                    bytes = g.total_bytes,
                    max = self.cfg.max_bytes,
                    "uplink outbox above its bound with only device status and alert transitions left; keeping them"
                );
                break;
            };
            let Some(rec) = self
                .store
                .get::<OutboxRecord>(UPLINK_OUTBOX, &seq_key(victim.seq))?
            else {
                g.total_bytes -= victim.bytes;
                g.entries.remove(&victim.seq);
                continue;
            };
            rec.check()?;
            let mut b = batch::decode(&rec.payload)?;
            let n = b.rollup_count() as u64;
            b.rollups.clear();
            b.dropped_rollups += n;
            let payload = batch::encode(&b, self.cfg.zstd_level)?;
            let new = OutboxRecord::new(&b, payload);
            let mut meta = g.meta.clone();
            meta.dropped_rollups_total += n;
            let mut wb = self.store.batch();
            wb.put(UPLINK_OUTBOX, &seq_key(new.seq), &new)?;
            wb.put(META, META_KEY, &meta)?;
            self.store.write(wb)?;
            g.meta = meta;
            g.total_bytes = g.total_bytes - victim.bytes + new.payload.len() as u64;
            g.entries.insert(
                victim.seq,
                Entry {
                    bytes: new.payload.len() as u64,
                    rollups: 0,
                    ..victim
                },
            );
            dropped += n;
            self.metrics.rollups_dropped.inc_by(n);
            tracing::warn!(
                seq = victim.seq,
                rollups = n,
                "uplink outbox full: dropped the rollups of the oldest batch"
            );
        }
        Ok(dropped)
    }

    /// A stored batch, checksum-verified.
    pub fn get(&self, seq: u64) -> Result<Option<OutboxRecord>> {
        let rec = self
            .store
            .get::<OutboxRecord>(UPLINK_OUTBOX, &seq_key(seq))?;
        if let Some(r) = &rec {
            r.check()?;
        }
        Ok(rec)
    }

    /// Deletes batch `seq` (central has it). Returns whether it was stored.
    pub fn ack(&self, seq: u64) -> Result<bool> {
        let mut g = self.lock();
        let Some(e) = g.entries.get(&seq).copied() else {
            return Ok(false);
        };
        let mut meta = g.meta.clone();
        meta.acked_up_to = meta.acked_up_to.max(seq);
        let mut wb = self.store.batch();
        wb.delete(UPLINK_OUTBOX, &seq_key(seq))?;
        wb.put(META, META_KEY, &meta)?;
        self.store.write(wb)?;
        g.meta = meta;
        g.entries.remove(&seq);
        g.total_bytes -= e.bytes;
        drop(g);
        self.metrics.batches_acked.inc();
        self.publish();
        Ok(true)
    }

    /// Deletes every batch with `seq <= up_to`.
    pub fn ack_up_to(&self, up_to: u64) -> Result<u64> {
        let seqs: Vec<u64> = self
            .lock()
            .entries
            .range(..=up_to)
            .map(|(s, _)| *s)
            .collect();
        let mut n = 0;
        for s in seqs {
            n += u64::from(self.ack(s)?);
        }
        Ok(n)
    }

    /// Central has applied sequence numbers up to `mark` although this
    /// outbox never handed out `mark` (`mark >= next_seq`): the appliance's
    /// data was restored from a backup or VM snapshot older than what
    /// central applied. Central's numbers up to `mark` belong to batches
    /// this outbox no longer knows, so its own batches must not be acked
    /// by them (they would be deleted unsent) nor sent under them (central
    /// would answer them as duplicates). Raises `next_seq` to `mark + 1`
    /// and gives every stored batch a new number from there, oldest first
    /// (the payload is re-encoded: its header carries the number), in one
    /// write: a crash leaves either the old numbering or the new one.
    /// Counted (`sequence_raised`, `batches_renumbered`). `None` (nothing
    /// written) in the normal case, `mark < next_seq`.
    ///
    /// A stored batch whose payload does not open keeps its payload under
    /// its new number: central refuses it for good (its header names
    /// another number), dead-letters it and the refusal is counted, rather
    /// than it being acked away here unseen.
    pub fn raise_above(&self, mark: u64) -> Result<Option<Renumbered>> {
        let mut g = self.lock();
        if mark < g.meta.next_seq {
            return Ok(None);
        }
        let from_next_seq = g.meta.next_seq;
        let mut wb = self.store.batch();
        let mut entries = BTreeMap::new();
        let mut total = 0u64;
        let mut next = mark + 1;
        let mut unreadable = 0u64;
        for old in g.entries.values() {
            let Some(rec) = self
                .store
                .get::<OutboxRecord>(UPLINK_OUTBOX, &seq_key(old.seq))?
            else {
                continue;
            };
            let seq = next;
            next += 1;
            let reencoded = rec.check().and_then(|()| {
                let mut b = batch::decode(&rec.payload)?;
                b.seq = seq;
                let payload = batch::encode(&b, self.cfg.zstd_level)?;
                Ok(OutboxRecord::new(&b, payload))
            });
            let new = match reencoded {
                Ok(r) => r,
                Err(e) => {
                    unreadable += 1;
                    tracing::error!(old_seq = old.seq, seq, error = %e,
                        "a stored uplink batch does not open; renumbered as it is (central will refuse it)");
                    OutboxRecord { seq, ..rec }
                }
            };
            wb.delete(UPLINK_OUTBOX, &seq_key(old.seq))?;
            wb.put(UPLINK_OUTBOX, &seq_key(seq), &new)?;
            let bytes = new.payload.len() as u64;
            total += bytes;
            entries.insert(
                seq,
                Entry {
                    seq,
                    bytes,
                    rollups: new.rollups,
                    created_ms: new.created_ms,
                },
            );
        }
        let mut meta = g.meta.clone();
        meta.next_seq = next;
        wb.put(META, META_KEY, &meta)?;
        self.store.write(wb)?;
        g.meta = meta;
        g.entries = entries;
        g.total_bytes = total;
        let r = Renumbered {
            from_next_seq,
            next_seq: next,
            batches: g.entries.len() as u64,
            unreadable,
        };
        drop(g);
        self.metrics.sequence_raised.inc();
        self.metrics.batches_renumbered.inc_by(r.batches);
        self.publish();
        Ok(Some(r))
    }

    /// Sequence numbers of stored batches, oldest first.
    pub fn seqs(&self) -> Vec<u64> {
        self.lock().entries.keys().copied().collect()
    }

    pub fn stats(&self) -> OutboxStats {
        let g = self.lock();
        OutboxStats {
            backlog_batches: g.entries.len() as u64,
            backlog_bytes: g.total_bytes,
            next_seq: g.meta.next_seq,
            last_acked_seq: g.meta.acked_up_to,
            oldest_backlog_ms: g.entries.values().next().map(|e| e.created_ms),
            dropped_rollups_total: g.meta.dropped_rollups_total,
        }
    }

    /// Forgets stored batches and restarts numbering at 1 (after joining a
    /// different site: the old site's batches mean nothing to the new one).
    /// Pending changes stay pending.
    pub fn reset_for_new_site(&self) -> Result<()> {
        let mut g = self.lock();
        let mut wb = self.store.batch();
        for s in g.entries.keys() {
            wb.delete(UPLINK_OUTBOX, &seq_key(*s))?;
        }
        let meta = OutboxMeta {
            next_seq: 1,
            acked_up_to: 0,
            dropped_rollups_total: g.meta.dropped_rollups_total,
        };
        wb.put(META, META_KEY, &meta)?;
        self.store.write(wb)?;
        g.meta = meta;
        g.entries.clear();
        g.total_bytes = 0;
        g.sent_snapshots.clear();
        drop(g);
        self.publish();
        Ok(())
    }
}

/// `'a' | at | n`: time-ordered, unique within a millisecond.
fn alert_key(t: &AlertTransition) -> Vec<u8> {
    time_counter_key::<4>(&[ALERT_PREFIX], t.at_ms)
}

/// Adds an alert transition for the uplink to `batch` (the alert engine's
/// own write batch, so the transition is pending exactly when the alert
/// state it describes is durable). Returns `false` (and adds nothing) when
/// the site is not joined to a central.
pub fn alert_transition_into(
    store: &Store,
    batch: &mut Batch,
    t: &AlertTransition,
) -> Result<bool> {
    if !store.uplink_tracking() {
        return Ok(false);
    }
    batch.put(UPLINK_PENDING, &alert_key(t), t)?;
    Ok(true)
}

/// Adds a device's patch compliance for the uplink to `batch` (the patch
/// subsystem's own write batch, beside the assessment it summarises); it
/// replaces the device's entry not sent yet. Returns `false` (and adds
/// nothing) when the site is not joined to a central.
pub fn patch_compliance_into(
    store: &Store,
    batch: &mut Batch,
    p: &PatchCompliance,
) -> Result<bool> {
    if !store.uplink_tracking() {
        return Ok(false);
    }
    batch.put(UPLINK_PENDING, &patch_key(p.device), p)?;
    Ok(true)
}

/// Adds a device's missing patches and CVEs for the uplink to `batch`,
/// beside its [`patch_compliance_into`]; it replaces the device's findings
/// not sent yet. Returns `false` when the site is not joined.
pub fn patch_findings_into(store: &Store, batch: &mut Batch, f: &PatchFindings) -> Result<bool> {
    if !store.uplink_tracking() {
        return Ok(false);
    }
    batch.put(UPLINK_PENDING, &device_key(FINDINGS_PREFIX, f.device), f)?;
    Ok(true)
}

fn patch_key(device: DeviceId) -> [u8; 9] {
    device_key(PATCH_PREFIX, device)
}

fn device_key(prefix: u8, device: DeviceId) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = prefix;
    k[1..].copy_from_slice(&device.0.to_be_bytes());
    k
}

/// Records an alert transition for the uplink, durably (one write). Returns
/// `false` when the site is not joined to a central.
pub fn push_alert_transition(store: &Store, t: &AlertTransition) -> Result<bool> {
    let mut wb = store.batch();
    if !alert_transition_into(store, &mut wb, t)? {
        return Ok(false);
    }
    store.write(wb)?;
    Ok(true)
}
