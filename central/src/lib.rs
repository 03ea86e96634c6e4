//! `outpost-central`: the MSP's aggregator of many sites.
//!
//! Receives site batches over QUIC with mutual TLS ([`receiver`]; site and
//! tenant come from the certificate), applies each (site, sequence) exactly
//! once into a [`store::CentralStore`] (RocksDB by default, [`rocks`]), and
//! serves the MSP's JSON API ([`api`]) and server-rendered web view ([`web`])
//! with tenants, users, roles and tokens ([`ops`], [`model`]).
//!
//! What the appliance also speaks (wire frames, the batch format and its
//! codec) lives in `outpost-uplink`; the HTTP pieces shared with the
//! appliance's admin API in `outpost-web`. The appliance never links this
//! crate: nothing here may be needed by `outpost`.

pub mod api;
#[cfg(test)]
mod api_tests;
pub mod apply;
pub mod dir;
pub mod metrics;
pub mod model;
pub mod ops;
pub mod receiver;
pub mod rocks;
pub mod store;
#[cfg(test)]
pub(crate) mod testing;
pub mod web;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use outpost_proto::{SiteId, TenantId};

use anyhow::Context;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::info;

use dir::{CentralDir, CentralKeys};
use metrics::CentralMetrics;
use store::CentralStore;

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    outpost_storage::now_ms()
}

/// Shared state of a running central.
pub struct Central {
    pub store: Arc<dyn CentralStore>,
    pub keys: CentralKeys,
    pub metrics: CentralMetrics,
    pub shutdown: CancellationToken,
    /// Open uplink connections per (tenant, site).
    links: Mutex<HashMap<(TenantId, SiteId), u32>>,
}

impl std::fmt::Debug for Central {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Central").finish_non_exhaustive()
    }
}

impl Central {
    pub fn new(
        store: Arc<dyn CentralStore>,
        keys: CentralKeys,
        shutdown: CancellationToken,
    ) -> Central {
        Central {
            store,
            keys,
            metrics: CentralMetrics::new(),
            shutdown,
            links: Mutex::new(HashMap::new()),
        }
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

/// Where `serve` listens.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub listen: SocketAddr,
    pub http_listen: SocketAddr,
}

/// Runs central until `shutdown`.
pub async fn serve(
    dir: CentralDir,
    opts: ServeOptions,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let keys = dir.init_or_load()?;
    let fingerprint = keys.ca.fingerprint();
    let store = rocks::RocksCentralStore::open(&dir.db()).with_context(|| {
        format!(
            "opening the database in {} (is another outpost-central running on it?)",
            dir.db().display()
        )
    })?;
    let central = Arc::new(Central::new(Arc::new(store), keys, shutdown.clone()));
    let endpoint = receiver::bind(&central, opts.listen)?;
    let http = tokio::net::TcpListener::bind(opts.http_listen)
        .await
        .with_context(|| format!("binding the HTTP listener on {}", opts.http_listen))?;
    let http_addr = http.local_addr()?;
    std::fs::write(dir.http_addr(), format!("{http_addr}\n")).context("writing http.addr")?;
    println!("{fingerprint}");
    info!(quic = %endpoint.local_addr()?, http = %http_addr, %fingerprint, "central ready");
    let tracker = TaskTracker::new();
    let conns = TaskTracker::new();
    tracker.spawn(receiver::accept_loop(
        endpoint.clone(),
        central.clone(),
        conns.clone(),
    ));
    {
        let sd = shutdown.clone();
        let router = api::router(central.clone());
        tracker.spawn(async move {
            if let Err(e) = axum::serve(http, router)
                .with_graceful_shutdown(async move { sd.cancelled().await })
                .await
            {
                tracing::error!(error = %e, "HTTP API stopped");
            }
        });
    }
    shutdown.cancelled().await;
    info!("central shutting down");
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
