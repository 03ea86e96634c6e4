//! Outpost's uplink: appliance → central sync, and `outpost-central`.
//!
//! Appliance side (linked into `outpost`): [`outbox`] records what changed
//! and compacts it into numbered batches ([`batch`]) in RocksDB; [`sender`]
//! streams them to central over QUIC with mutual TLS ([`wire`]) and deletes
//! each one only after central acknowledged it as durable; [`join`]
//! enrolls the appliance as a site.
//!
//! Central side ([`central`], binary `outpost-central`): receives batches,
//! checks the site identity from the certificate, applies each sequence
//! number exactly once into a rollup store behind a trait, and serves the MSP
//! web view and JSON API with tenants, users, roles and tokens.

pub mod batch;
pub mod central;
pub mod http;
pub mod join;
pub mod metrics;
pub mod outbox;
pub mod sender;
pub mod service;
pub mod site_files;
pub mod wire;

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    outpost_storage::now_ms()
}
