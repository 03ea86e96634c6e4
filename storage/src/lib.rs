//! Outpost's storage engine on RocksDB.
//!
//! Two things live here. The engine: opening the database with the tables
//! each subsystem declares ([`Table`], [`Store::open`]), typed reads, scans
//! and atomic write batches ([`Batch`]) with the table's codec (the one
//! bincode configuration of `outpost_proto::codec` for every new table).
//! And the device data the appliance ingests, with its own tables
//! ([`TABLES`]): the registry ([`registry`]), the group-commit ingest path
//! ([`ingest`]), heartbeats ([`heartbeats`]), samples ([`samples`], [`chunk`]), rollups ([`rollup`]),
//! retention ([`retention`]), enrollment tokens ([`tokens`]), their key
//! encodings ([`keys`]) and records ([`model`]).
//!
//! Other subsystems (alerts, the patch cache, the uplink outbox) declare
//! their tables in their own crates; nothing here lists them. This crate
//! knows nothing about networking: callers hand it decoded records and get
//! back what became durable. Keys are big-endian so byte order is time order.

pub mod blobs;
pub mod chunk;
pub mod dirty;
pub mod error;
pub mod head;
pub mod heartbeats;
pub mod ingest;
pub mod keys;
pub mod model;
pub mod query;
pub mod registry;
pub mod retention;
pub mod rollup;
pub mod samples;
mod store;
mod table;
pub mod tokens;

pub use error::StorageError;
pub use store::{Batch, Durability, META, MIN_ROLLUP_BUCKET_MS, ScanStep, Store, StoreOptions};
pub use table::{Codec, Layout, Table};

/// The tables of the device data this crate stores (registry, ingest,
/// samples, rollups, tokens, and the uplink's change markers that the ingest
/// writer records). A binary running the ingest engine passes these to
/// [`Store::open`] with its other subsystems' tables.
pub const TABLES: &[Table] = &[
    registry::DEVICES,
    registry::INVENTORY,
    registry::AUDIT,
    registry::DEVICE_TAGS,
    ingest::DEVICE_STATE,
    ingest::STATUS_LOG,
    heartbeats::BLOCKS,
    heartbeats::LEGACY,
    ingest::PACKAGE_SCANS_IN,
    ingest::PATCH_STATUS_IN,
    samples::SERIES,
    head::BLOCKS,
    head::LEGACY,
    samples::CHUNKS,
    samples::CHUNK_DIRTY,
    rollup::ROLLUPS,
    rollup::ROLLUP_DIRTY,
    rollup::UPLINK_PENDING,
    tokens::TOKENS,
];

pub use rocksdb;

/// A store of [`TABLES`] in a fresh temporary directory (tests).
#[cfg(test)]
pub(crate) fn temp_store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let store = Store::open(dir.path(), &StoreOptions::default(), TABLES).expect("open store");
    (dir, store)
}

/// Milliseconds since the Unix epoch, from the system clock.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
