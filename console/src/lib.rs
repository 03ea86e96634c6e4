//! `outpost-console`: the MSP console, one crate for both scopes.
//! `outpost-central` serves it for a whole tenant, the appliance for its
//! own site; each implements [`backend::ConsoleBackend`] and mounts
//! [`router`] on its HTTP listener.
//!
//! Server-rendered pages ([`pages`], maud templates: every value escaped),
//! charts drawn as SVG on the server ([`chart`]), human units
//! ([`format`]), a small script of our own (`assets/console.js`: live
//! updates over server-sent events, local times, the range selector, bulk
//! selection; served from the binary, no inline script) and a stylesheet
//! with light and dark modes (`assets/console.css`). Live updates fan out
//! through one [`live::LiveHub`]; CSRF tokens, the same-origin check and
//! the security headers are in [`security`].
//!
//! It knows no storage and links neither central nor the appliance (it
//! must stay RocksDB-free): what it shows comes from the backend, and who
//! may see or do what is the backend's decision.

pub mod backend;
pub mod bulk_actions;
pub mod chart;
pub mod commands;
pub mod deploy_form;
pub mod deployments;
pub mod files;
pub mod format;
pub mod live;
pub mod pages;
pub mod patches;
pub mod routes;
pub mod scripts;
pub mod security;

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

pub use backend::ConsoleBackend;
pub use live::{LiveConfig, LiveHub};
pub use routes::router;
pub use security::CsrfKey;

/// Label of refused console requests.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: String,
}

/// The console's own counters (besides the hub's).
#[derive(Debug, Clone, Default)]
pub struct ConsoleMetrics {
    /// State-changing requests refused: `csrf_token`, `cross_site`,
    /// `origin_mismatch`, `forbidden`.
    pub refused: Family<ReasonLabel, Counter>,
}

impl ConsoleMetrics {
    pub fn refused(&self, reason: &str) {
        self.refused
            .get_or_create(&ReasonLabel {
                reason: reason.to_string(),
            })
            .inc();
    }
}

/// A console: its backend, the CSRF key, its counters.
pub struct Console {
    pub backend: Arc<dyn ConsoleBackend>,
    pub csrf: CsrfKey,
    pub metrics: ConsoleMetrics,
}

impl std::fmt::Debug for Console {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Console").finish_non_exhaustive()
    }
}

impl Console {
    /// A console with a random CSRF key.
    pub fn new(backend: Arc<dyn ConsoleBackend>) -> Console {
        Console {
            backend,
            csrf: CsrfKey::random(),
            metrics: ConsoleMetrics::default(),
        }
    }

    /// Registers the console's and its hub's counters (names
    /// `console_refused`, `console_live_*` under the registry's prefix).
    pub fn register_metrics(&self, r: &mut Registry) {
        r.register(
            "console_refused",
            "Console requests refused (bad CSRF token, cross-origin, role), by reason",
            self.metrics.refused.clone(),
        );
        self.backend.live().metrics.register(r);
    }
}

#[cfg(test)]
mod tests;
