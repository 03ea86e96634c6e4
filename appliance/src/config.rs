//! Appliance configuration: one TOML file (`--config FILE`, else
//! `DATA/outpost.toml` if present), overridden by command-line flags. Every
//! default works out of the box.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};
use outpost_storage::Durability;
use outpost_storage::retention::RetentionPolicy;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// QUIC listener for agents (enrollment and sessions).
    pub quic_listen: SocketAddr,
    /// Admin JSON API and `/metrics`. Loopback by default.
    pub admin_listen: SocketAddr,
    /// LAN patch cache (HTTP).
    pub cache_listen: SocketAddr,
    /// Concurrent QUIC connections; beyond it new ones are refused and counted.
    pub max_connections: usize,
    /// Kernel receive/send buffer of each QUIC UDP socket (capped by
    /// net.core.rmem_max / wmem_max; a warning says so).
    pub udp_buffer_bytes: usize,
    /// QUIC endpoints on `quic_listen`, each with its own UDP socket and
    /// reader (`SO_REUSEPORT`; the kernel spreads agents over them by
    /// address and port). 0: one per available core; 1: a single socket.
    pub quic_endpoints: usize,
    /// UDP segmentation offload (GSO) on the QUIC sockets: one send call
    /// for several datagrams of a connection. quinn then keeps a send
    /// buffer for ten datagrams per connection, for good. Off by default:
    /// the appliance's sends are mostly acks, and with 50,000 agents GSO
    /// cost 5 KB of RSS per connection for no CPU saving (measured:
    /// `benches/RESULTS.md`, "GSO"); turn it on for faster bulk sends (file
    /// pushes to agents) at a site with few agents.
    pub quic_segmentation_offload: bool,
    /// Largest frame accepted from an agent.
    pub max_frame_bytes: usize,
    /// Extra time beyond two missed heartbeats before a device is offline.
    #[serde(with = "humantime_serde")]
    pub offline_grace: Duration,
    pub storage: StorageConfig,
    pub ingest: IngestConfig,
    /// `[admission]`: new QUIC handshakes at once and per second.
    pub admission: crate::ingest::admission::AdmissionConfig,
    pub cache: CacheConfig,
    pub alerts: crate::alerts::AlertsConfig,
    pub uplink: UplinkConfig,
    pub console: ConsoleConfig,
    /// `[files]`: file push and pull (size limit).
    pub files: crate::files::FileConfig,
    /// `[patches]`: compliance policy, scheduled advisory feeds.
    pub patches: crate::patches::PatchesConfig,
    /// `[deploy]`: the deployment orchestrator's tick and install proxy.
    pub deploy: crate::deploy::DeployConfig,
}

/// `[console]`: the site console on the admin listener.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConsoleConfig {
    /// The site's name in the console until the appliance joins central
    /// (then central's name for the site); default: the hostname.
    pub site_name: Option<String>,
    /// Live-update streams open at once (one per open page); one more is
    /// refused (503, counted) and its page works without live updates.
    pub max_live_subscribers: usize,
}

impl Default for ConsoleConfig {
    fn default() -> Self {
        ConsoleConfig {
            site_name: None,
            max_live_subscribers: 200,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    /// `sync` (default: an acknowledged record survives power loss) or
    /// `buffered` (survives a process crash only).
    pub durability: Durability,
    /// How long raw samples and heartbeats are kept.
    #[serde(with = "humantime_serde")]
    pub raw_retention: Duration,
    /// How long 5-minute rollups and status transitions are kept.
    #[serde(with = "humantime_serde")]
    pub rollup_retention: Duration,
    /// How often the retention job runs.
    #[serde(with = "humantime_serde")]
    pub retention_interval: Duration,
    pub block_cache_bytes: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IngestConfig {
    /// Upper bound of records in one group commit.
    pub max_batch_records: usize,
    /// Queue between connections and the writer, in groups; a full queue
    /// slows readers down (QUIC flow control then slows agents).
    pub queue_groups: usize,
    /// How long a closed 5-minute bucket waits for late samples before its
    /// rollup is computed (late samples after that recompute it).
    #[serde(with = "humantime_serde")]
    pub rollup_settle: Duration,
    /// Width of a rollup bucket: 5 minutes. Only tests change it (to see
    /// buckets close in seconds).
    #[serde(with = "humantime_serde")]
    pub rollup_bucket: Duration,
    /// Memory of the records one session read and the writer has not
    /// committed yet; a session over it stops reading its stream (QUIC flow
    /// control then slows that agent alone) until the writer catches up.
    pub session_max_bytes: u64,
    /// The same bound for every session together (the writer queue).
    pub queue_max_bytes: u64,
    /// Series one device may have; a value of a new series beyond it is
    /// rejected and counted (`outpost_rejects_total{reason="series_cap"}`),
    /// the existing series keep working.
    pub max_series_per_device: u32,
    /// Records stamped further ahead of the appliance clock are acknowledged
    /// but not stored, and counted (`outpost_rejects_total{reason="bad_timestamp"}`).
    #[serde(with = "humantime_serde")]
    pub max_future_skew: Duration,
    /// Least time between the starts of two group commits unless a batch is
    /// full: under many small arrivals the writer gathers them this long
    /// instead of writing and fsyncing each (an idle writer commits at
    /// once). Adds at most this to an ack's latency; 0 turns it off.
    #[serde(with = "humantime_serde")]
    pub commit_window: Duration,
    /// Niceness the writer thread asks for (-20..=19; Linux). Every ack
    /// waits for the writer's commits, so by default it runs ahead of the
    /// session and RocksDB background threads (-10). Going below the
    /// process's niceness needs CAP_SYS_NICE or RLIMIT_NICE (the packaged
    /// unit sets `LimitNICE=-10`); where refused the writer keeps the
    /// process's priority and logs a warning; `outpost_writer_nice` shows
    /// what it runs at.
    pub writer_nice: i32,
}

impl IngestConfig {
    /// The writer's bounds on what devices send.
    pub fn limits(&self) -> outpost_storage::ingest::IngestLimits {
        outpost_storage::ingest::IngestLimits {
            max_series_per_device: self.max_series_per_device as usize,
            max_future_ms: self.max_future_skew.as_millis() as u64,
        }
    }
}

/// Sync to `outpost-central` (active once `outpost uplink join` ran).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UplinkConfig {
    /// Bound of the outbox (compressed batches waiting for central); when
    /// full the oldest batches lose their rollups first (counted in
    /// `outpost_uplink_rollups_dropped_total`).
    pub outbox_max_bytes: u64,
    /// First reconnect delay; doubles (with full jitter) up to `reconnect_max`.
    #[serde(with = "humantime_serde")]
    pub reconnect_base: Duration,
    #[serde(with = "humantime_serde")]
    pub reconnect_max: Duration,
    /// Batches sent and not yet acknowledged.
    pub max_in_flight_batches: usize,
    /// zstd level of batches (1-19).
    pub zstd_level: i32,
    /// A device's snapshot is sent again when its last-seen time moved by
    /// this much since the last one sent (status changes go at once), so
    /// central's `last_seen_ms` lags by at most this plus an interval.
    #[serde(with = "humantime_serde")]
    pub last_seen_resend: Duration,
    /// Central's addresses (`HOST:PORT`), one or a list in order of
    /// preference (several instances over PostgreSQL): the next on a
    /// failure, back to the first after `central_fail_back`. Unset: the
    /// address the site joined (`uplink.json`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub central: Option<CentralAddrs>,
    #[serde(with = "humantime_serde")]
    pub central_fail_back: Duration,
}

/// `central = "host:port"` or `central = ["a:port", "b:port"]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum CentralAddrs {
    One(String),
    Many(Vec<String>),
}

impl UplinkConfig {
    /// Central's addresses (empty: the joined address).
    pub fn centrals(&self) -> Vec<String> {
        match &self.central {
            None => Vec::new(),
            Some(CentralAddrs::One(a)) => vec![a.clone()],
            Some(CentralAddrs::Many(v)) => v.clone(),
        }
    }
}

impl Default for UplinkConfig {
    fn default() -> Self {
        let o = outpost_uplink::service::UplinkOptions::default();
        UplinkConfig {
            outbox_max_bytes: o.outbox.max_bytes,
            reconnect_base: o.reconnect_base,
            reconnect_max: o.reconnect_max,
            max_in_flight_batches: o.max_in_flight_batches,
            zstd_level: o.outbox.zstd_level,
            last_seen_resend: Duration::from_millis(o.outbox.last_seen_resend_ms),
            central: None,
            central_fail_back: o.fail_back_after,
        }
    }
}

impl UplinkConfig {
    pub fn options(&self) -> outpost_uplink::service::UplinkOptions {
        let mut o = outpost_uplink::service::UplinkOptions::default();
        o.outbox.max_bytes = self.outbox_max_bytes;
        o.outbox.zstd_level = self.zstd_level;
        o.outbox.last_seen_resend_ms = self.last_seen_resend.as_millis() as u64;
        o.reconnect_base = self.reconnect_base;
        o.reconnect_max = self.reconnect_max;
        o.max_in_flight_batches = self.max_in_flight_batches;
        o.centrals = self.centrals();
        o.fail_back_after = self.central_fail_back;
        o
    }
}

/// What the LAN patch cache does with a file that no verified index covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Unverified {
    /// Stream it from upstream to the client without caching it (capped at
    /// `max_unverified_bytes`).
    Pass,
    /// Refuse it (403).
    Refuse,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CacheConfig {
    /// Serve the cache on `cache_listen`.
    pub enabled: bool,
    /// Size cap of cached files; least recently used unpinned files are
    /// evicted beyond it.
    pub max_bytes: u64,
    /// Upstream hosts (`host` or `host:port`) allowed besides those of the
    /// appliance host's apt sources.
    pub allow_hosts: Vec<String>,
    /// Also allow the hosts named in `/etc/apt/sources.list` and
    /// `/etc/apt/sources.list.d/*.{list,sources}`.
    pub allow_apt_sources: bool,
    /// Keyrings (binary OpenPGP files, or directories of `*.gpg`) that sign
    /// `InRelease` files. `*removed*` keyrings in a directory are skipped.
    pub keyrings: Vec<std::path::PathBuf>,
    /// How often an `InRelease` is revalidated upstream (conditional request).
    #[serde(with = "humantime_serde")]
    pub release_refresh: Duration,
    /// Files no verified index covers: `pass` (uncached) or `refuse`.
    pub unverified: Unverified,
    /// Cap on an unverified pass-through download.
    pub max_unverified_bytes: u64,
    /// Cap on an `InRelease` download (its size is not stated anywhere).
    pub max_release_bytes: u64,
    /// Connect and first-byte timeout towards upstream.
    #[serde(with = "humantime_serde")]
    pub upstream_timeout: Duration,
    /// Concurrent client connections; beyond it new ones wait.
    pub max_connections: usize,
    /// A client that accepts no bytes for this long is disconnected (its
    /// connection slot and its interest in a download are freed).
    #[serde(with = "humantime_serde")]
    pub client_write_timeout: Duration,
    /// Upstream downloads running at once (beyond it clients get 503,
    /// prefetches and pins wait).
    pub max_downloads: usize,
    /// Upstream downloads one client address may have started at once.
    pub max_downloads_per_client: usize,
    /// Free space kept on the cache's filesystem (RocksDB shares it): a
    /// download that would go below it evicts first, or is refused.
    pub min_free_bytes: u64,
    /// An InRelease dated further ahead of the appliance's clock is refused.
    #[serde(with = "humantime_serde")]
    pub release_max_future: Duration,
    /// An InRelease whose upstream failed is not asked for again for this long.
    #[serde(with = "humantime_serde")]
    pub release_failure_ttl: Duration,
    /// Directory holding the `outpost-agent_*.deb` that
    /// `outpost agent-installer` points endpoints at, served on this port
    /// under `/outpost/agent/` (the `outpost` package installs it there).
    pub agent_package_dir: std::path::PathBuf,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            enabled: true,
            max_bytes: 10 * 1024 * 1024 * 1024,
            allow_hosts: Vec::new(),
            allow_apt_sources: true,
            keyrings: vec!["/usr/share/keyrings".into()],
            release_refresh: Duration::from_secs(60),
            unverified: Unverified::Pass,
            max_unverified_bytes: 1024 * 1024 * 1024,
            max_release_bytes: 16 * 1024 * 1024,
            upstream_timeout: Duration::from_secs(30),
            max_connections: 4096,
            client_write_timeout: Duration::from_secs(60),
            max_downloads: 64,
            max_downloads_per_client: 8,
            min_free_bytes: 1024 * 1024 * 1024,
            release_max_future: Duration::from_secs(600),
            release_failure_ttl: Duration::from_secs(10),
            agent_package_dir: crate::installer::DEFAULT_PACKAGE_DIR.into(),
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            quic_listen: SocketAddr::from(([0, 0, 0, 0], 4433)),
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            cache_listen: SocketAddr::from(([0, 0, 0, 0], 3142)),
            max_connections: 100_000,
            udp_buffer_bytes: 4 * 1024 * 1024,
            quic_endpoints: 0,
            quic_segmentation_offload: false,
            max_frame_bytes: outpost_proto::DEFAULT_MAX_FRAME_BYTES,
            offline_grace: Duration::from_secs(10),
            storage: StorageConfig::default(),
            ingest: IngestConfig::default(),
            admission: Default::default(),
            cache: CacheConfig::default(),
            alerts: crate::alerts::AlertsConfig::default(),
            uplink: UplinkConfig::default(),
            console: ConsoleConfig::default(),
            files: crate::files::FileConfig::default(),
            patches: crate::patches::PatchesConfig::default(),
            deploy: crate::deploy::DeployConfig::default(),
        }
    }
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            durability: Durability::Sync,
            raw_retention: RetentionPolicy::default().raw,
            rollup_retention: RetentionPolicy::default().rollups,
            retention_interval: Duration::from_secs(3600),
            block_cache_bytes: 64 * 1024 * 1024,
        }
    }
}

impl Default for IngestConfig {
    fn default() -> Self {
        IngestConfig {
            max_batch_records: 16_384,
            queue_groups: 4096,
            rollup_settle: Duration::from_secs(120),
            rollup_bucket: Duration::from_secs(300),
            session_max_bytes: 4 * 1024 * 1024,
            queue_max_bytes: 128 * 1024 * 1024,
            max_series_per_device: 10_000,
            max_future_skew: Duration::from_secs(24 * 3600),
            commit_window: DEFAULT_COMMIT_WINDOW,
            writer_nice: DEFAULT_WRITER_NICE,
        }
    }
}

/// See [`IngestConfig::commit_window`].
pub const DEFAULT_COMMIT_WINDOW: Duration = Duration::from_millis(1);
/// See [`IngestConfig::writer_nice`].
pub const DEFAULT_WRITER_NICE: i32 = -10;

impl StorageConfig {
    pub fn retention(&self) -> RetentionPolicy {
        RetentionPolicy {
            raw: self.raw_retention,
            rollups: self.rollup_retention,
        }
    }
}

impl Config {
    /// Loads `path` (must exist if given explicitly), else defaults.
    pub fn load(path: &Path) -> anyhow::Result<Config> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading config {}", path.display()))?;
        let cfg: Config =
            toml::from_str(&text).with_context(|| format!("parsing config {}", path.display()))?;
        Ok(cfg)
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        self.patches.validate()?;
        if self.max_frame_bytes < 1024 || self.max_frame_bytes > 16 * 1024 * 1024 {
            bail!("max_frame_bytes must be between 1 KiB and 16 MiB");
        }
        if self.max_connections == 0 {
            bail!("max_connections must be positive");
        }
        self.admission.validate()?;
        if self.quic_endpoints > 64 {
            bail!("quic_endpoints must be at most 64 (0: one per core)");
        }
        if self.ingest.max_batch_records == 0 || self.ingest.queue_groups == 0 {
            bail!("ingest.max_batch_records and ingest.queue_groups must be positive");
        }
        let i = &self.ingest;
        if !(-20..=19).contains(&i.writer_nice) {
            bail!("ingest.writer_nice must be between -20 and 19");
        }
        if i.session_max_bytes < 64 * 1024
            || i.queue_max_bytes < i.session_max_bytes
            || i.queue_max_bytes > u64::from(u32::MAX)
        {
            bail!(
                "ingest.session_max_bytes must be at least 64 KiB, and ingest.queue_max_bytes \
                 at least ingest.session_max_bytes and below 4 GiB"
            );
        }
        if i.max_series_per_device == 0 {
            bail!("ingest.max_series_per_device must be positive");
        }
        if i.max_future_skew < Duration::from_secs(60)
            || i.max_future_skew > Duration::from_secs(3650 * 86400)
        {
            bail!("ingest.max_future_skew must be between 1m and 3650days");
        }
        if self.cache.max_bytes == 0 || self.cache.max_connections == 0 {
            bail!("cache.max_bytes and cache.max_connections must be positive");
        }
        if self.ingest.rollup_bucket < Duration::from_secs(1)
            || self.ingest.rollup_bucket > Duration::from_secs(3600)
        {
            bail!("ingest.rollup_bucket must be between 1s and 1h (production: 5m)");
        }
        if !(1..=19).contains(&self.uplink.zstd_level) || self.uplink.max_in_flight_batches == 0 {
            bail!("uplink.zstd_level must be 1-19 and uplink.max_in_flight_batches positive");
        }
        if self.uplink.centrals().iter().any(|a| {
            a.rsplit_once(':')
                .is_none_or(|(h, p)| h.is_empty() || p.parse::<u16>().is_err())
        }) {
            bail!("uplink.central takes HOST:PORT addresses (one, or a list)");
        }
        if self.uplink.central_fail_back < Duration::from_secs(1) {
            bail!("uplink.central_fail_back must be at least 1s");
        }
        if self.uplink.last_seen_resend < Duration::from_secs(1) {
            bail!("uplink.last_seen_resend must be at least 1s");
        }
        self.alerts.validate().map_err(anyhow::Error::msg)?;
        if self.storage.raw_retention > self.storage.rollup_retention {
            bail!("raw retention must not exceed rollup retention");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_documented_interfaces() {
        let c = Config::default();
        assert_eq!(c.quic_listen.to_string(), "0.0.0.0:4433");
        assert_eq!(c.admin_listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.cache_listen.to_string(), "0.0.0.0:3142");
        assert_eq!(c.storage.durability, Durability::Sync);
        assert_eq!(c.storage.retention().raw, Duration::from_secs(30 * 86400));
        c.validate().unwrap();
    }

    #[test]
    fn toml_overrides_and_rejects_typos() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(
            &p,
            "offline_grace = \"2s\"\n[storage]\ndurability = \"buffered\"\nraw_retention = \"7d\"\n",
        )
        .unwrap();
        let c = Config::load(&p).unwrap();
        assert_eq!(c.offline_grace, Duration::from_secs(2));
        assert_eq!(c.storage.durability, Durability::Buffered);
        assert_eq!(c.storage.retention().raw, Duration::from_secs(7 * 86400));
        std::fs::write(&p, "ofline_grace = \"2s\"\n").unwrap();
        assert!(Config::load(&p).is_err());
    }

    #[test]
    fn uplink_central_takes_one_address_or_a_list_and_refuses_a_bad_one() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        assert!(Config::default().uplink.options().centrals.is_empty());
        std::fs::write(&p, "[uplink]\ncentral = \"a.example:4433\"\n").unwrap();
        let c = Config::load(&p).unwrap();
        assert_eq!(c.uplink.options().centrals, ["a.example:4433"]);
        std::fs::write(
            &p,
            "[uplink]\ncentral = [\"a:4433\", \"10.0.0.2:4433\"]\ncentral_fail_back = \"2m\"\n",
        )
        .unwrap();
        let o = Config::load(&p).unwrap().uplink.options();
        assert_eq!(o.centrals, ["a:4433", "10.0.0.2:4433"]);
        assert_eq!(o.fail_back_after, Duration::from_secs(120));
        std::fs::write(&p, "[uplink]\ncentral = [\"a:4433\", \"nope\"]\n").unwrap();
        assert!(Config::load(&p).unwrap().validate().is_err());
    }
}

#[cfg(test)]
mod ingest_bounds {
    use super::*;

    #[test]
    fn ingest_budgets_and_bounds_are_validated_and_passed_to_the_writer() {
        let ok = Config::default();
        ok.validate().unwrap();
        assert_eq!(
            ok.ingest.limits(),
            outpost_storage::ingest::IngestLimits::DEFAULT
        );
        let bad = |f: &dyn Fn(&mut IngestConfig)| {
            let mut c = Config::default();
            f(&mut c.ingest);
            c.validate().unwrap_err().to_string()
        };
        assert!(bad(&|i| i.session_max_bytes = 1024).contains("session_max_bytes"));
        assert!(bad(&|i| i.queue_max_bytes = i.session_max_bytes - 1).contains("queue_max_bytes"));
        assert!(bad(&|i| i.queue_max_bytes = 1 << 33).contains("4 GiB"));
        assert!(bad(&|i| i.max_series_per_device = 0).contains("max_series_per_device"));
        assert!(bad(&|i| i.max_future_skew = Duration::from_secs(1)).contains("max_future_skew"));
        assert!(bad(&|i| i.writer_nice = -21).contains("writer_nice"));
        assert!(bad(&|i| i.writer_nice = 20).contains("writer_nice"));
        assert_eq!(ok.ingest.writer_nice, -10);
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(
            &p,
            "[ingest]\nsession_max_bytes = 65536\nmax_series_per_device = 50\nmax_future_skew = \"10m\"\nwriter_nice = 0\n",
        )
        .unwrap();
        let c = Config::load(&p).unwrap();
        c.validate().unwrap();
        assert_eq!(c.ingest.session_max_bytes, 65536);
        assert_eq!(c.ingest.limits().max_series_per_device, 50);
        assert_eq!(c.ingest.limits().max_future_ms, 600_000);
        assert_eq!(c.ingest.writer_nice, 0);
    }
}

#[cfg(test)]
mod readme {
    use super::*;

    /// The configuration example in README.md is valid and shows the defaults.
    #[test]
    fn readme_example_is_the_default_configuration() {
        let readme = include_str!("../../README.md");
        let section = readme.split("### Configuration").nth(1).expect("section");
        let block = section
            .split("```toml")
            .nth(1)
            .and_then(|b| b.split("```").next())
            .expect("toml block");
        let parsed: Config = toml::from_str(block).expect("README example parses");
        assert_eq!(parsed, Config::default());
    }
}
