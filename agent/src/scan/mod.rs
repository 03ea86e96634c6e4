//! The package scan: what is installed on this endpoint, what apt would
//! upgrade, whether it waits for a reboot (issue 14).
//!
//! - [`tools`]: runs the package tools (`dpkg-query`, `apt-get -s`,
//!   `rpm -qa`), reads `/etc/os-release`, the reboot files and the
//!   running kernel, and builds an `outpost_patch::scan::Scan` with the
//!   pure parsers of `outpost-patch`. Every path is configurable
//!   (`[package_tools]` in `agent.toml`), so tests point dpkg at a
//!   throwaway `--admindir`.
//! - [`schedule`]: the pure decision of when to scan (at start, every
//!   `package_scan_interval`, soon after the package database changes)
//!   and whether to send a whole scan or a delta.
//! - [`busy`]: the bounded back-off while dpkg is busy (its lock held by
//!   an install), after which a scan is deferred (reported without an
//!   inventory) rather than read between two states.
//! - [`request`]: scans on request (the command action `ScanPackages`):
//!   the executor's handle and the channel the loop serves.
//! - [`task`]: the async loop that polls the database's stamp, scans off
//!   the runtime, and buffers the report as a sequenced record.
//!
//! Owns nothing on disk: the report rides the records buffer (same
//! durability and sequence rules as every record). It must not touch the
//! session protocol or the command ledger.

pub mod busy;
pub mod request;
pub mod schedule;
pub mod task;
pub mod tools;

pub use request::{SCANS_OFF, ScanDone, ScanRequest, ScanRequests};
pub use schedule::{ReportKind, ScanPlan, ScanReason, Scheduler};
pub use task::{PackageScanner, spawn};
pub use tools::{
    CollectError, Collected, DbStamp, LockHeld, PackageTools, collect, db_stamp, dpkg_lock_held,
};
