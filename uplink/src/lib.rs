//! Outpost's uplink: the link from a site appliance to `outpost-central`.
//!
//! What both ends share: the wire frames of the link ([`wire`]) and the
//! batch format with its codec ([`batch`]). The appliance side (linked
//! into `outpost`): [`outbox`] records what changed and compacts it into
//! numbered batches in RocksDB; [`sender`] streams them to central over
//! QUIC with mutual TLS and deletes each one only after central
//! acknowledged it as durable; [`join`] enrolls the appliance as a site;
//! [`service`] runs all of it inside the appliance.
//!
//! Central itself (receiver, store, API, web view) is the `outpost-central`
//! crate, which depends on this one; nothing here may depend on it.

pub mod batch;
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
