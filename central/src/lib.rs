//! `outpost-central`: the MSP's aggregator of many sites.
//!
//! Receives site batches over QUIC with mutual TLS ([`receiver`]; site and
//! tenant come from the certificate), applies each (site, sequence) exactly
//! once into a [`store::CentralStore`] (RocksDB by default, [`rocks`]), and
//! serves the MSP's JSON API ([`api`]) and the console (`outpost-console`,
//! backed by [`console`])
//! with tenants, users, roles and tokens ([`ops`], [`model`]).
//!
//! What the appliance also speaks (wire frames, the batch format and its
//! codec) lives in `outpost-uplink`; the HTTP pieces shared with the
//! appliance's admin API in `outpost-web`. The appliance never links this
//! crate: nothing here may be needed by `outpost`.

pub mod api;
pub mod api_bulk;
pub mod api_commands;
pub mod api_credentials;
pub mod api_deploy;
#[cfg(test)]
mod api_device_tags_tests;
pub mod api_files;
pub mod api_patches;
pub mod api_scripts;
pub mod api_tags;
#[cfg(test)]
mod api_tests;
pub mod apply;
pub mod bulk;
pub mod cli;
pub mod cli_deploy;
pub mod cli_files;
pub mod cli_patches;
pub mod cli_tags;
pub mod commands;
#[cfg(test)]
mod commands_api_tests;
pub mod console;
pub mod console_deploy;
#[cfg(test)]
mod console_deploy_tests;
pub mod console_files;
#[cfg(test)]
mod console_files_tests;
pub mod console_patches;
#[cfg(test)]
mod console_tests;
pub mod deploy;
#[cfg(test)]
mod deploy_api_tests;
#[cfg(test)]
mod deploy_bench;
pub mod deploy_link;
pub mod dir;
pub mod downlink;
pub mod files;
#[cfg(test)]
mod files_tests;
pub mod fleet_index;
mod login_limits;
/// The login limits, password pool and roles, shared with the appliance.
pub use outpost_web::login;
pub mod metrics;
pub mod migrate;
pub mod model;
pub mod ops;
pub mod pg;
pub mod receiver;
pub mod rocks;
pub mod scripts;
pub mod startup;
pub mod store;
#[cfg(test)]
mod store_tests;
#[cfg(test)]
pub(crate) mod testing;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use outpost_proto::{SiteId, TenantId};

use anyhow::Context;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::info;

use dir::{CentralDir, CentralKeys};
use login::{LimiterConfig, LoginLimiter, Passwords};
use metrics::CentralMetrics;
use store::CentralStore;
use tokio::sync::Semaphore;

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    outpost_storage::now_ms()
}

/// Bounds of a running central (every default works on a laptop).
#[derive(Debug, Clone)]
pub struct CentralLimits {
    /// QUIC connections open at once (site joins and uplinks, handshakes
    /// included); a connection beyond it is refused and counted
    /// (`outpost_central_connection_rejects_total{reason="connection_limit"}`).
    pub max_connections: usize,
    /// Uplink connections of one site at once (a reconnect overlaps the
    /// old connection for a moment); beyond it the new one is refused and
    /// counted (`reason="site_connection_limit"`), so one site cannot take
    /// every slot.
    pub max_connections_per_site: usize,
    /// Batches decoded and applied at once, all sites together. Decoding
    /// one batch holds at most about 400 MiB at the batch limits
    /// (`outpost_uplink::batch::limits`), so this bounds what hostile
    /// batches can take; the others wait.
    pub max_concurrent_batches: usize,
    /// Failed-login limits.
    pub login: LimiterConfig,
    /// Reverse proxies (TLS terminators) in front of the HTTP listener:
    /// for a request from one of them, the client address (for the login
    /// limits) is the last `X-Forwarded-For` address that is not one of
    /// them.
    pub trusted_proxies: Vec<IpAddr>,
    /// The console's live updates (subscribers at once, buffer).
    pub live: outpost_console::LiveConfig,
    /// Files pushed and pulled from central (size limit, retention).
    pub files: files::FilesConfig,
    /// PostgreSQL upkeep: interval, rollup retention, partitions ahead.
    pub pg_maintenance: pg::maintenance::MaintenanceConfig,
}

impl Default for CentralLimits {
    fn default() -> Self {
        CentralLimits {
            max_connections: 4_096,
            max_connections_per_site: 4,
            max_concurrent_batches: login::cores(),
            login: LimiterConfig::default(),
            trusted_proxies: Vec::new(),
            live: outpost_console::LiveConfig::default(),
            files: files::FilesConfig::default(),
            pg_maintenance: pg::maintenance::MaintenanceConfig::default(),
        }
    }
}

/// Shared state of a running central.
pub struct Central {
    pub store: Arc<dyn CentralStore>,
    pub keys: CentralKeys,
    pub metrics: CentralMetrics,
    pub shutdown: CancellationToken,
    pub limits: CentralLimits,
    /// argon2 on a bounded pool (logins, new users, password changes).
    pub passwords: Passwords,
    /// Failed logins per user and per address.
    pub login_limiter: Mutex<LoginLimiter>,
    /// The attempts of one user take turns (concurrent guesses are counted
    /// one after the other).
    pub login_turns: outpost_web::login::AttemptTurns,
    /// Permits to decode and apply a batch ([`CentralLimits::max_concurrent_batches`]).
    pub batch_slots: Arc<Semaphore>,
    /// Permits to hold a QUIC connection ([`CentralLimits::max_connections`]).
    pub connection_slots: Arc<Semaphore>,
    /// Open uplink connections per (tenant, site).
    links: Mutex<HashMap<(TenantId, SiteId), u32>>,
    /// Uplink connections per (tenant, site), counted from the moment the
    /// certificate is read ([`CentralLimits::max_connections_per_site`]).
    site_connections: Mutex<HashMap<(TenantId, SiteId), usize>>,
    /// The console's live fan-out, fed by the batch apply path and
    /// acknowledgements.
    pub live: outpost_console::LiveHub,
    /// Key of the console's CSRF tokens (random per process).
    pub csrf: outpost_console::CsrfKey,
    /// The console's refusal counters.
    pub console_metrics: outpost_console::ConsoleMetrics,
    /// Connected sites and their downlinks of commands.
    pub downlinks: downlink::Registry,
    /// Content of files from central (`DATA/files`), once `serve` opened it.
    pub blobs: std::sync::OnceLock<Arc<outpost_storage::blobs::Blobs>>,
}

impl std::fmt::Debug for Central {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Central").finish_non_exhaustive()
    }
}

/// One uplink connection of a site, counted while it lives.
pub struct SiteConnection<'a> {
    central: &'a Central,
    key: (TenantId, SiteId),
}

impl Drop for SiteConnection<'_> {
    fn drop(&mut self) {
        let mut m = self
            .central
            .site_connections
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(n) = m.get_mut(&self.key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                m.remove(&self.key);
            }
        }
    }
}

impl Central {
    pub fn new(
        store: Arc<dyn CentralStore>,
        keys: CentralKeys,
        shutdown: CancellationToken,
    ) -> Central {
        Central::with_limits(store, keys, shutdown, CentralLimits::default())
    }

    pub fn with_limits(
        store: Arc<dyn CentralStore>,
        keys: CentralKeys,
        shutdown: CancellationToken,
        limits: CentralLimits,
    ) -> Central {
        let live = outpost_console::LiveHub::new(limits.live.clone());
        let console_metrics = outpost_console::ConsoleMetrics::default();
        let mut metrics = CentralMetrics::new();
        metrics.register_console(&console_metrics, &live.metrics);
        Central {
            store,
            keys,
            metrics,
            live,
            csrf: outpost_console::CsrfKey::random(),
            console_metrics,
            shutdown,
            passwords: Passwords::per_core(),
            login_limiter: Mutex::new(LoginLimiter::new(&limits.login)),
            login_turns: Default::default(),
            batch_slots: Arc::new(Semaphore::new(limits.max_concurrent_batches.max(1))),
            connection_slots: Arc::new(Semaphore::new(limits.max_connections.max(1))),
            limits,
            links: Mutex::new(HashMap::new()),
            site_connections: Mutex::new(HashMap::new()),
            downlinks: downlink::Registry::default(),
            blobs: std::sync::OnceLock::new(),
        }
    }

    /// Counts one more uplink connection of `site`, or `None` when the site
    /// already has [`CentralLimits::max_connections_per_site`].
    pub fn site_connection(&self, tenant: &TenantId, site: &SiteId) -> Option<SiteConnection<'_>> {
        let key = (tenant.clone(), site.clone());
        let mut m = self
            .site_connections
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let n = m.entry(key.clone()).or_insert(0);
        if *n >= self.limits.max_connections_per_site.max(1) {
            return None;
        }
        *n += 1;
        Some(SiteConnection { central: self, key })
    }

    pub fn set_link(&self, tenant: &TenantId, site: &SiteId, up: bool) {
        let mut l = self.links.lock().unwrap_or_else(|p| p.into_inner());
        let n = l.entry((tenant.clone(), site.clone())).or_insert(0);
        if up {
            *n += 1;
        } else {
            *n = n.saturating_sub(1);
        }
    }

    pub fn is_connected(&self, tenant: &TenantId, site: &SiteId) -> bool {
        let l = self.links.lock().unwrap_or_else(|p| p.into_inner());
        l.get(&(tenant.clone(), site.clone())).copied().unwrap_or(0) > 0
    }
}

/// Where `serve` listens, and its bounds.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub listen: SocketAddr,
    pub http_listen: SocketAddr,
    pub limits: CentralLimits,
}

/// Where central keeps its rows (`serve --store`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreLocation {
    /// The embedded RocksDB in this directory (the default: `DATA/db`).
    Rocks(std::path::PathBuf),
    /// A PostgreSQL database (`postgres://…` or `postgresql://…`).
    Postgres {
        url: String,
        pool_size: usize,
        statement_timeout_ms: u64,
        /// Wait for a pooled or new connection (`--store-pool-wait-ms`).
        pool_wait_ms: u64,
    },
}

impl StoreLocation {
    /// Parses `rocksdb:DIR` or `postgres://…` (`postgresql://…`); the
    /// pool options apply to PostgreSQL.
    pub fn parse(s: &str, pool_size: usize, statement_timeout_ms: u64) -> anyhow::Result<Self> {
        if let Some(dir) = s.strip_prefix("rocksdb:") {
            anyhow::ensure!(!dir.is_empty(), "--store rocksdb:DIR needs a directory");
            Ok(StoreLocation::Rocks(dir.into()))
        } else if s.starts_with("postgres://") || s.starts_with("postgresql://") {
            Ok(StoreLocation::Postgres {
                url: s.to_string(),
                pool_size,
                statement_timeout_ms,
                pool_wait_ms: pg::DEFAULT_POOL_WAIT_MS,
            })
        } else {
            anyhow::bail!("--store takes rocksdb:DIR or postgres://USER@HOST/DB, not {s:?}")
        }
    }

    /// With `--store-pool-wait-ms` (PostgreSQL; ignored for RocksDB).
    pub fn with_pool_wait_ms(mut self, ms: u64) -> Self {
        if let StoreLocation::Postgres { pool_wait_ms, .. } = &mut self {
            *pool_wait_ms = ms;
        }
        self
    }

    /// Opens the store (PostgreSQL: connects and migrates the schema).
    pub async fn open(&self) -> anyhow::Result<Arc<dyn CentralStore>> {
        Ok(match self {
            StoreLocation::Rocks(dir) => {
                Arc::new(rocks::RocksCentralStore::open(dir).with_context(|| {
                    format!(
                        "opening the database in {} (is another outpost-central running on it?)",
                        dir.display()
                    )
                })?)
            }
            StoreLocation::Postgres {
                url,
                pool_size,
                statement_timeout_ms,
                pool_wait_ms,
            } => Arc::new(
                pg::PgCentralStore::connect(
                    url,
                    pg::PgOptions {
                        pool_size: *pool_size,
                        statement_timeout_ms: *statement_timeout_ms,
                        pool_wait_ms: *pool_wait_ms,
                    },
                )
                .await
                .context("opening the PostgreSQL store")?,
            ),
        })
    }
}

/// Runs central until `shutdown`, on the RocksDB in `DATA/db`.
pub async fn serve(
    dir: CentralDir,
    opts: ServeOptions,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let store = StoreLocation::Rocks(dir.db());
    serve_on(dir, store, opts, shutdown).await
}

/// Runs central until `shutdown` on `store` (keys and CA stay in `dir`).
///
/// RocksDB opens first (a directory another central holds is an error at
/// once). PostgreSQL may not answer yet: the listeners come first, the
/// store is opened with a bounded back-off ([`startup`]) while `/healthz`
/// and the API answer 503 with the reason and uplink connections are
/// refused; only what retrying cannot fix (bad URL, refused credentials,
/// a newer schema) ends `serve` with an error.
pub async fn serve_on(
    dir: CentralDir,
    store: StoreLocation,
    opts: ServeOptions,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let keys = dir.init_or_load()?;
    let fingerprint = keys.ca.fingerprint();
    let kind = match &store {
        StoreLocation::Rocks(_) => "rocksdb",
        StoreLocation::Postgres { .. } => "postgres",
    };
    std::fs::write(dir.store_kind(), format!("{kind}\n")).context("writing DATA/store")?;
    let bus_url = match &store {
        StoreLocation::Postgres { url, .. } => Some(url.clone()),
        StoreLocation::Rocks(_) => None,
    };
    let opened_first = match &store {
        StoreLocation::Rocks(_) => Some(store.open().await?),
        StoreLocation::Postgres { .. } => None,
    };
    // After RocksDB's lock: opening clears DATA/files/tmp.
    let blobs = outpost_storage::blobs::Blobs::open(&dir.path("files"))
        .context("opening the file store DATA/files")?;
    let endpoint = receiver::bind_keys(&keys, opts.listen)?;
    let http = tokio::net::TcpListener::bind(opts.http_listen)
        .await
        .with_context(|| format!("binding the HTTP listener on {}", opts.http_listen))?;
    let http_addr = http.local_addr()?;
    let tracker = TaskTracker::new();
    // The HTTP server runs from here on; until the store is open it
    // answers 503 (`startup::StartGate`).
    let gate = startup::StartGate::new();
    let http_stop = shutdown.child_token();
    {
        let sd = http_stop.clone();
        let router = gate
            .router()
            .into_make_service_with_connect_info::<SocketAddr>();
        tracker.spawn(async move {
            if let Err(e) = axum::serve(http, router)
                .with_graceful_shutdown(async move { sd.cancelled().await })
                .await
            {
                tracing::error!(error = %e, "HTTP API stopped");
            }
        });
    }
    // systemd (Type=notify): with PostgreSQL, ready once the listeners
    // are bound (the store may still be opening: STATUS says why,
    // /healthz answers 503), so TimeoutStartSec does not kill a central
    // waiting for its database. A no-op when not under systemd.
    if opened_first.is_none()
        && let Err(e) = sd_notify::notify(
            false,
            &[
                sd_notify::NotifyState::Ready,
                sd_notify::NotifyState::Status("opening the store"),
            ],
        )
    {
        tracing::warn!(error = %e, "telling systemd central is ready");
    }
    let store = match opened_first {
        Some(s) => Some(s),
        None => {
            let refusing = CancellationToken::new();
            let refuser = tokio::spawn(startup::refuse_uplinks(endpoint.clone(), refusing.clone()));
            let r =
                startup::open_store(&store, &gate, &startup::Backoff::default(), &shutdown).await;
            refusing.cancel();
            let _ = refuser.await;
            match r {
                Ok(s) => s,
                Err(e) => {
                    http_stop.cancel();
                    tracker.close();
                    tracker.wait().await;
                    endpoint.close(
                        outpost_uplink::wire::close::SHUTTING_DOWN.into(),
                        b"central cannot start",
                    );
                    return Err(e);
                }
            }
        }
    };
    let Some(store) = store else {
        // Shut down before the store opened.
        http_stop.cancel();
        tracker.close();
        tracker.wait().await;
        endpoint.close(
            outpost_uplink::wire::close::SHUTTING_DOWN.into(),
            b"central shutting down",
        );
        info!("central stopped before its store opened");
        return Ok(());
    };
    let central = Arc::new(Central::with_limits(
        store,
        keys,
        shutdown.clone(),
        opts.limits.clone(),
    ));
    if let Some(url) = bus_url {
        // Several instances: work for a site connected elsewhere.
        let _listening = pg::bus::start(url.clone(), &central, shutdown.clone());
        let _maintaining = pg::maintenance::start(
            url,
            opts.limits.pg_maintenance,
            central.metrics.pg_maintenance.clone(),
            shutdown.clone(),
        );
    }
    let _ = central.blobs.set(Arc::new(blobs));
    gate.set_ready(api::router(central.clone()));
    std::fs::write(dir.http_addr(), format!("{http_addr}\n")).context("writing http.addr")?;
    println!("{fingerprint}");
    info!(quic = %endpoint.local_addr()?, http = %http_addr, %fingerprint, "central ready");
    // systemd: listeners bound, store open.
    if let Err(e) = sd_notify::notify(
        false,
        &[
            sd_notify::NotifyState::Ready,
            sd_notify::NotifyState::Status("ready"),
        ],
    ) {
        tracing::warn!(error = %e, "telling systemd central is ready");
    }
    let conns = TaskTracker::new();
    tracker.spawn(receiver::accept_loop(
        endpoint.clone(),
        central.clone(),
        conns.clone(),
    ));
    {
        // Commands still queued at central past their expiry.
        let (c, sd) = (central.clone(), shutdown.clone());
        tracker.spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tokio::select! {
                    _ = tick.tick() => downlink::sweep(&c, now_ms()).await,
                    _ = sd.cancelled() => return,
                }
            }
        });
    }
    {
        // Files from central: the blob collector, at start then daily.
        let (c, sd) = (central.clone(), shutdown.clone());
        tracker.spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(24 * 3600));
            loop {
                tokio::select! {
                    _ = tick.tick() => match files::collect(&c, now_ms()).await {
                        Ok(r) => tracing::debug!(?r, "file blobs collected"),
                        Err(e) => {
                            c.metrics.files.store_errors.inc();
                            tracing::warn!(error = %format!("{e:#}"), "collecting file blobs failed");
                        }
                    },
                    _ = sd.cancelled() => return,
                }
            }
        });
    }
    shutdown.cancelled().await;
    info!("central shutting down");
    // Open console pages hold event streams: end them, or the HTTP
    // server's graceful shutdown would wait for every browser tab.
    central.live.close();
    tracker.close();
    tracker.wait().await;
    conns.close();
    let _ = tokio::time::timeout(Duration::from_secs(5), conns.wait()).await;
    endpoint.close(
        outpost_uplink::wire::close::SHUTTING_DOWN.into(),
        b"central shutting down",
    );
    let _ = tokio::time::timeout(Duration::from_secs(2), endpoint.wait_idle()).await;
    let _ = std::fs::remove_file(dir.http_addr());
    info!("central stopped");
    Ok(())
}
