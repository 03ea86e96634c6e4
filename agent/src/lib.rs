//! The Outpost endpoint agent.
//!
//! Enrolls against a site appliance ([`enroll`]), keeps its identity in a
//! state directory ([`identity`]), collects host metrics and inventory
//! ([`collect`]), buffers every record on disk until the appliance
//! acknowledges it ([`buffer`]) and streams records over one long-lived QUIC
//! session with reconnect backoff ([`session`]), hands command and file
//! events to remote management ([`remote`]), scans installed packages
//! ([`scan`]), installs and rolls back patches ([`install`]), and while running keeps its
//! live state in `status.json` for `outpost-agent status` ([`status`]).

pub mod backoff;
pub mod buffer;
pub mod collect;
pub mod commands;
pub mod config;
pub mod enroll;
pub mod files;
pub mod identity;
pub mod install;
pub mod net;
pub mod remote;
pub mod scan;
pub mod session;
pub mod status;
