//! Patch assessment at the site (issue 14): the package scans agents
//! report, the advisory catalog (Debian Security Tracker JSON, OSV), and
//! every device's assessment (fixable and open CVEs, missing patches,
//! risk, compliance), with the fleet views and the daily compliance
//! history.
//!
//! - [`store`] — this subsystem's tables.
//! - [`service`] — applies reports, imports feeds, assesses, answers views.
//! - [`alerts`] — the patch state as alert-engine samples.
//! - [`full_scan`] — `ScanPackages` commands on a base miss or on request.
//! - [`config`] — `[patches]`: policy and scheduled feeds.
//! - [`feed`] — fetching a feed from a URL, and the schedule.
//! - [`api`] — `/api/v1/advisories` and `/api/v1/patches/...`.
//! - [`metrics`] — `outpost_patches_*`.
//! - [`uplink`] — a device's compliance for the uplink batch.
//!
//! The pure work (parsing, version order, assessment) is `outpost-patch`.
//! This module must not touch the ingest writer's tables beyond reading
//! and deleting `package_scans_in`, and runs no assessment on the writer
//! thread.

pub mod alerts;
pub mod api;
pub mod config;
pub mod feed;
pub mod full_scan;
pub mod metrics;
pub mod service;
pub mod store;
pub mod uplink;

pub use config::PatchesConfig;
pub use service::PatchService;
