//! The Outpost site appliance (`outpost`).
//!
//! Owns the agent-facing QUIC service ([`ingest`]), the admin API
//! ([`api`]), the data directory and its key material ([`site`]),
//! configuration ([`config`]), metrics ([`metrics`]), background jobs
//! ([`jobs`]), the LAN patch cache ([`cache`]), the database's tables
//! ([`db`]) and the admin CLI's HTTP client ([`client`]). [`serve`] wires
//! them together.

pub mod alerts;
pub mod api;
pub mod cache;
pub mod client;
pub mod config;
pub mod db;
pub mod ingest;
pub mod jobs;
pub mod metrics;
pub mod serve;
pub mod site;
