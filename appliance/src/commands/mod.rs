//! Remote commands on the appliance: the queue of commands per device,
//! their states with the time of each transition, capped output, and the
//! [`crate::ingest::remote::RemoteHost`] that pushes them to connected
//! agents and stores what the agents report.
//!
//! * [`model`]: the stored record and its states;
//! * [`machine`]: the pure state machine (time as a parameter);
//! * [`output`]: the pure plan for capped output (head and tail kept);
//! * [`store`]: the tables; [`metrics`]: `outpost_commands_*`;
//! * [`service`]: the worker that owns state changes and implements
//!   `RemoteHost`;
//! * [`scripts`]: the versioned script library;
//! * [`bulk`]: bulk runs (one spec, many devices, a concurrency limit);
//!
//! This module owns the `commands*` tables, `scripts`, `bulk_runs` and
//! `command_runs`. It must not touch the device
//! session's protocol (`outpost_proto::session`) or the ingest path: it
//! talks to sessions only through `RemoteLink`.

pub mod bulk;
pub mod machine;
pub mod metrics;
pub mod model;
pub mod output;
pub mod scripts;
pub mod service;
pub mod store;
