//! End-to-end tests of Outpost: real `outpost` and `outpost-agent`
//! processes, real QUIC sockets on 127.0.0.1, real RocksDB.
//!
//! One test binary (RocksDB links once); one module per area.

mod admission;
mod alerts;
mod bench_smoke;
mod browser;
mod browser_central_deploy;
mod browser_central_pages;
mod browser_deploy;
mod cache;
mod central_commands;
mod central_deploy;
mod central_files;
mod central_migrate;
mod central_pg;
mod central_pg_start;
mod commands;
mod demo;
mod deploy;
mod deploy_device;
mod deploy_fleet;
mod durability;
mod files;
mod foundation;
mod frames;
mod fuzz_seeds;
mod layout;
mod packaging;
mod patches;
mod refusals;
mod remote;
mod uplink;
mod users;
