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
//! The appliance side is the default cargo feature `appliance`; without it
//! (`default-features = false`) only [`wire`] and [`batch`] remain, with no
//! RocksDB and no QUIC stack linked (the fuzz targets build it so).
//!
//! Central itself (receiver, store, API, web view) is the `outpost-central`
//! crate, which depends on this one; nothing here may depend on it.

pub mod batch;
pub mod deploy_link;
pub mod downlink;
#[cfg(feature = "appliance")]
pub mod failover;
pub mod files;
#[cfg(feature = "appliance")]
pub mod join;
#[cfg(feature = "appliance")]
pub mod metrics;
#[cfg(feature = "appliance")]
pub mod outbox;
#[cfg(feature = "appliance")]
pub mod resend;
#[cfg(feature = "appliance")]
pub mod sender;
#[cfg(feature = "appliance")]
pub mod service;
#[cfg(feature = "appliance")]
pub mod site_files;
pub mod wire;

/// Milliseconds since the Unix epoch.
#[cfg(feature = "appliance")]
pub fn now_ms() -> u64 {
    outpost_storage::now_ms()
}
