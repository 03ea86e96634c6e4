//! The device registry and the audit log: low-rate administrative writes.

use std::sync::atomic::{AtomicU32, Ordering};

use outpost_proto::DeviceId;
use outpost_proto::messages::Inventory;

use crate::error::Result;
use crate::keys;
use crate::model::{AuditEntry, DeviceRecord};
use crate::{Cf, Store};

/// Adds a newly enrolled device.
pub fn register(store: &Store, record: &DeviceRecord) -> Result<()> {
    store.put(Cf::Devices, &keys::device_key(record.id), record)
}

pub fn get(store: &Store, device: DeviceId) -> Result<Option<DeviceRecord>> {
    store.get(Cf::Devices, &keys::device_key(device))
}

/// Marks a device revoked. Returns the updated record, or `None` if unknown.
pub fn revoke(store: &Store, device: DeviceId, now_ms: u64) -> Result<Option<DeviceRecord>> {
    let Some(mut rec) = get(store, device)? else {
        return Ok(None);
    };
    if rec.revoked_at_ms.is_none() {
        rec.revoked_at_ms = Some(now_ms);
        register(store, &rec)?;
    }
    Ok(Some(rec))
}

pub fn inventory(store: &Store, device: DeviceId) -> Result<Option<Inventory>> {
    store.get(Cf::Inventory, &keys::device_key(device))
}

/// Distinguishes audit entries written in the same millisecond.
static AUDIT_COUNTER: AtomicU32 = AtomicU32::new(0);

/// Appends an entry to the audit log.
pub fn audit(store: &Store, entry: &AuditEntry) -> Result<()> {
    let n = AUDIT_COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut key = [0u8; 12];
    key[..8].copy_from_slice(&entry.at_ms.to_be_bytes());
    key[8..].copy_from_slice(&n.to_be_bytes());
    store.put(Cf::Audit, &key, entry)
}

/// Audit entries in `[from, to)`, oldest first, at most `limit`.
pub fn audit_log(store: &Store, from_ms: u64, to_ms: u64, limit: usize) -> Result<Vec<AuditEntry>> {
    let mut out = Vec::new();
    store.scan::<AuditEntry>(
        Cf::Audit,
        &from_ms.to_be_bytes(),
        Some(&to_ms.to_be_bytes()),
        |_, e| {
            out.push(e);
            out.len() < limit
        },
    )?;
    Ok(out)
}

/// Tags of a device (for alert and window scopes).
pub fn tags(store: &Store, device: DeviceId) -> Result<Vec<String>> {
    Ok(store
        .get_json(Cf::DeviceTags, &keys::device_key(device))?
        .unwrap_or_default())
}

/// Replaces the tags of a device.
pub fn set_tags(store: &Store, device: DeviceId, tags: &[String]) -> Result<()> {
    let mut b = rocksdb::WriteBatch::default();
    store.batch_put_json(&mut b, Cf::DeviceTags, &keys::device_key(device), tags)?;
    store.write(b)
}
