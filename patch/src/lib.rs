//! Patch assessment core, pure and RocksDB-free: what every device has,
//! what it misses, which CVEs that leaves open, and how compliant it is.
//!
//! - [`version`]: dpkg and rpm version order, exact to the tools.
//! - [`release`]: which distribution release a device runs or an advisory
//!   speaks of.
//! - [`approval`]: approval rules per scope and the decision for a patch
//!   on a device (which rule decided).
//! - [`assess`]: the pure assessment of a device (findings, missing
//!   patches, risk, compliance) and views over many devices.
//! - [`install`]: the device-side install and rollback plans (apt command
//!   line, pre-checks, previous versions) and the parsers of apt/dpkg output.
//! - [`catalog`]: vulnerability catalogs (Debian tracker JSON, OSV),
//!   indexed by (release, source package), and their change sets.
//! - [`report`]: the compliance report of a customer as a document (JSON)
//!   and, with the `pdf` feature, as a PDF.
//! - [`rollout`]: staged deployments: the stage plan and the state machine
//!   (gates, windows, rollbacks) the orchestrator applies.
//! - [`severity`]: one severity scale for every source.
//! - `testing` (feature `testing`): synthetic catalogs and scans for
//!   benchmarks.
//! - [`window`]: weekly install windows in IANA time zones, combined with
//!   the maintenance windows that pause patch installs.
//! - [`scan`]: parsers of the package tools' output, the scan model and
//!   scan deltas.
//!
//! Owns no storage, no sockets and no clock: callers pass `now` (Unix
//! milliseconds). The agent, the appliance and central link it; it must
//! never depend on `outpost-storage`, RocksDB or tokio.

pub mod approval;
pub mod assess;
pub mod catalog;
pub mod install;
pub mod release;
pub mod report;
pub mod rollout;
pub mod scan;
pub mod severity;
pub mod smallstr;
#[cfg(feature = "testing")]
pub mod testing;
pub mod version;
pub mod window;
