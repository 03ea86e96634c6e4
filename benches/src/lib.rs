//! Outpost's load harness: simulated agent fleets over real QUIC against a
//! real appliance ([`ingest`], [`reconnect`], [`storm`]: a reconnect
//! storm beside established sessions, [`chaos`]: kill -9 loops
//! with an exactly-once check of the appliance's database; [`commands`]:
//! dispatch latency and a bulk run over agents that answer commands), the storage-efficiency
//! scenario on a real RocksDB ([`storage_eff`]), `/proc` measurements
//! ([`procstat`]), the side-by-side peers' stream ([`peers`]: VictoriaMetrics,
//! Zabbix proxy) and the `RESULT` line format ([`report`]).

pub mod alert_latency;
pub mod chaos;
pub mod commands;
pub mod console;
pub mod fleet;
pub mod ingest;
pub mod netem;
pub mod peers;
pub mod procstat;
pub mod reconnect;
pub mod report;
pub mod sim;
pub mod spawn;
pub mod storage_eff;
pub mod storm;
pub mod uplink;
