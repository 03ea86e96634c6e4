//! Outpost's storage engine on RocksDB.
//!
//! Owns the column families, their key encodings ([`keys`]), the typed
//! records stored in them ([`model`]), the group-commit ingest path
//! ([`ingest`]), rollups ([`rollup`]) and retention ([`retention`]). It knows
//! nothing about networking: callers hand it decoded records and get back
//! what became durable.
//!
//! Values are encoded with `outpost_proto::codec` (the one bincode
//! configuration); keys are big-endian so byte order is time order.

pub mod chunk;
pub mod error;
pub mod ingest;
pub mod keys;
pub mod model;
pub mod query;
pub mod registry;
pub mod retention;
pub mod rollup;
pub mod samples;
mod store;
pub mod tokens;

pub use error::StorageError;
pub use store::{Cf, Durability, Store, StoreOptions};

pub use rocksdb;

/// Milliseconds since the Unix epoch, from the system clock.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
