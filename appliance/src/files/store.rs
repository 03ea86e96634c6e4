//! Persistence of transfer records in the appliance database:
//!
//! * `file_transfers`: transfer id (16 bytes) → [`TransferRecord`];
//! * `file_transfers_by_time`: `!created_ms (8, BE) | id` → empty
//!   (newest first for lists).
//!
//! A new record and its index entry are written in one batch.

use outpost_proto::ids::TransferId;
use outpost_storage::error::Result;
use outpost_storage::{Codec, Store, Table};

use super::model::{TransferRecord, TransferState};

pub const FILE_TRANSFERS: Table = Table::new("file_transfers");
pub const FILE_TRANSFERS_BY_TIME: Table = Table::new("file_transfers_by_time").codec(Codec::Raw);

/// Every table of the file subsystem, for `Store::open`.
pub const TABLES: &[Table] = &[FILE_TRANSFERS, FILE_TRANSFERS_BY_TIME];

fn by_time_key(created_ms: u64, id: TransferId) -> [u8; 24] {
    let mut k = [0u8; 24];
    k[..8].copy_from_slice(&(u64::MAX - created_ms).to_be_bytes());
    k[8..].copy_from_slice(&id.0);
    k
}

/// Writes a record (`new`: with its index entry), durably.
pub fn put(store: &Store, rec: &TransferRecord, new: bool) -> Result<()> {
    let mut b = store.batch();
    b.put(FILE_TRANSFERS, &rec.id.0, rec)?;
    if new {
        b.put_raw(
            FILE_TRANSFERS_BY_TIME,
            &by_time_key(rec.created_ms, rec.id),
            &[],
        )?;
    }
    store.write(b)
}

/// Removes a record that never got its command.
pub fn delete(store: &Store, rec: &TransferRecord) -> Result<()> {
    let mut b = store.batch();
    b.delete(FILE_TRANSFERS, &rec.id.0)?;
    b.delete(FILE_TRANSFERS_BY_TIME, &by_time_key(rec.created_ms, rec.id))?;
    store.write(b)
}

pub fn get(store: &Store, id: TransferId) -> Result<Option<TransferRecord>> {
    store.get(FILE_TRANSFERS, &id.0)
}

/// Transfers newest first, optionally of one device and state.
pub fn list(
    store: &Store,
    device: Option<outpost_proto::DeviceId>,
    state: Option<TransferState>,
    limit: usize,
) -> Result<Vec<TransferRecord>> {
    let mut ids = Vec::new();
    store.scan_raw(FILE_TRANSFERS_BY_TIME, &[], None, |k, _| {
        if let Some(Ok(id)) = k.get(8..).map(<[u8; 16]>::try_from) {
            ids.push(TransferId(id));
        }
        Ok(true)
    })?;
    let mut out = Vec::new();
    for id in ids {
        if out.len() >= limit {
            break;
        }
        if let Some(r) = get(store, id)?
            && device.is_none_or(|d| d == r.device)
            && state.is_none_or(|s| s == r.state)
        {
            out.push(r);
        }
    }
    Ok(out)
}

/// Transfers not yet terminal (loaded at start).
/// Calls `f` with every transfer record.
pub fn scan_all(store: &Store, mut f: impl FnMut(&TransferRecord)) -> Result<()> {
    store.scan::<TransferRecord>(FILE_TRANSFERS, &[], None, |_, r| {
        f(&r);
        true
    })
}

pub fn open_transfers(store: &Store) -> Result<Vec<TransferRecord>> {
    let mut out = Vec::new();
    store.scan::<TransferRecord>(FILE_TRANSFERS, &[], None, |_, r| {
        if !r.state.is_terminal() {
            out.push(r);
        }
        true
    })?;
    Ok(out)
}
