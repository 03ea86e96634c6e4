//! Outpost's alerting model, apart from the appliance that runs it.
//!
//! * [`model`]: alert rules, channels, escalation policies, maintenance
//!   windows, alerts, events and notifications: their JSON shapes (stored
//!   on disk and the admin API's bodies) and validation;
//! * [`windows`]: maintenance window schedules (RFC 3339 instants, weekly
//!   `HH:MM` starts on weekdays in IANA time zones): validation and "is
//!   this window active at this instant".
//!
//! Pure values and functions: no storage, no I/O, no clock (time is a
//! parameter). The alert engine, its decision core, persistence and
//! notifications live in the appliance (`outpost-appliance`, module
//! `alerts`), which re-exports these modules. This crate links no RocksDB,
//! so the fuzz targets (`fuzz/`) build it quickly; it must stay so.

pub mod model;
pub mod windows;
