//! Remote commands on the agent: the ledger of command ids
//! ([`ledger`], sled), running one command's process tree ([`exec`]), and
//! the executor that implements [`crate::remote::RemoteHost`] ([`host`]).
//!
//! Exactly once: an id is recorded (flushed) before it is acknowledged,
//! and marked running (flushed) before its process starts; a known id is
//! never started again, and one found running after a restart is reported
//! `interrupted`. This module must not touch the session protocol
//! (`outpost_proto::session`) or the records buffer.

pub mod exec;
pub mod host;
pub mod ledger;
pub mod reboot;

pub use host::{Executor, Policy};
