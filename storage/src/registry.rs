//! The device registry and the audit log: low-rate administrative writes.

use outpost_proto::DeviceId;
use outpost_proto::messages::Inventory;

use crate::error::Result;
use crate::keys;
use crate::model::{AuditEntry, DeviceRecord};
use crate::{Codec, Store, Table};

/// `device` → `DeviceRecord` (registry: identity, facts, revocation).
pub const DEVICES: Table = Table::new("devices");
/// `device` → latest `Inventory`.
pub const INVENTORY: Table = Table::new("inventory");
/// `ts | n` ([`keys::time_counter_key`]) → `AuditEntry`.
pub const AUDIT: Table = Table::new("audit");
/// `device` → tags (a JSON list): scopes of alert rules and windows. JSON
/// since before tables declared their codec (kept: stored data).
pub const DEVICE_TAGS: Table = Table::new("device_tags").codec(Codec::Json);

/// Adds a newly enrolled device.
pub fn register(store: &Store, record: &DeviceRecord) -> Result<()> {
    store.put(DEVICES, &keys::device_key(record.id), record)
}

pub fn get(store: &Store, device: DeviceId) -> Result<Option<DeviceRecord>> {
    store.get(DEVICES, &keys::device_key(device))
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
    store.get(INVENTORY, &keys::device_key(device))
}

/// Appends an entry to the audit log.
pub fn audit(store: &Store, entry: &AuditEntry) -> Result<()> {
    let key = keys::time_counter_key::<4>(&[], entry.at_ms);
    store.put(AUDIT, &key, entry)
}

/// Audit entries in `[from, to)`, oldest first, at most `limit`.
pub fn audit_log(store: &Store, from_ms: u64, to_ms: u64, limit: usize) -> Result<Vec<AuditEntry>> {
    let mut out = Vec::new();
    store.scan::<AuditEntry>(
        AUDIT,
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
        .get(DEVICE_TAGS, &keys::device_key(device))?
        .unwrap_or_default())
}

/// Replaces the tags of a device.
pub fn set_tags(store: &Store, device: DeviceId, tags: &[String]) -> Result<()> {
    store.put(DEVICE_TAGS, &keys::device_key(device), tags)
}
