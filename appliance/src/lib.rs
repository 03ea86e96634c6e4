//! The Outpost site appliance (`outpost`).
//!
//! Owns the agent-facing QUIC service ([`ingest`]), the alert engine
//! ([`alerts`]), the admin API ([`api`]), the data directory and its key
//! material ([`site`]), configuration ([`config`]), the database's tables
//! ([`db`]), metrics ([`metrics`]) and the kernel's socket counters they
//! read ([`net`]), background jobs ([`jobs`]), the LAN patch cache
//! ([`cache`]), local users and their sessions ([`users`]), the admin CLI
//! ([`cli`], one module per subsystem), the site console ([`console`]) and its
//! HTTP client ([`client`]), patch assessment ([`patches`]). [`serve`] wires
//! them together.

pub mod alerts;
pub mod api;
pub mod cache;
pub mod cli;
pub mod client;
pub mod commands;
pub mod config;
pub mod console;
pub mod db;
pub mod deploy;
pub mod downlink;
pub mod files;
pub mod format;
pub mod ingest;
pub mod installer;
pub mod jobs;
pub mod metrics;
pub mod net;
pub mod patches;
pub mod serve;
pub mod site;
pub mod users;
