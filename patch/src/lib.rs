//! Patch assessment core, pure and RocksDB-free: what every device has,
//! what it misses, which CVEs that leaves open, and how compliant it is.
//!
//! - [`version`]: dpkg and rpm version order, exact to the tools.
//!
//! Owns no storage, no sockets and no clock: callers pass `now` (Unix
//! milliseconds). The agent, the appliance and central link it; it must
//! never depend on `outpost-storage`, RocksDB or tokio.

pub mod version;
