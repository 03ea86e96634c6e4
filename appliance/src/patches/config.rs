//! `[patches]` in the appliance's configuration: the compliance policy and
//! the advisory feeds fetched on a schedule.

use std::time::Duration;

use outpost_patch::assess::Policy;
use serde::{Deserialize, Serialize};

/// `[patches]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PatchesConfig {
    /// Compliance: missing security patches at or above `min_severity`
    /// (default `high`) count once missing for more than `grace_days`
    /// (default 14).
    pub policy: Policy,
    /// How often each feed is fetched again (default 6 h). A failed fetch
    /// is retried at the next check (every `min(fetch_interval, 10 min)`);
    /// the catalog in service stays meanwhile.
    #[serde(with = "humantime_serde")]
    pub fetch_interval: Duration,
    /// The feeds fetched on the schedule. Default: the Debian Security
    /// Tracker's JSON. An empty list turns scheduled fetches off (imports
    /// by `outpost advisories import` only).
    pub feeds: Vec<FeedConfig>,
}

/// One feed fetched on the schedule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeedConfig {
    /// The source's name in the catalog.
    pub name: String,
    /// `debian-tracker` or `osv`.
    pub format: String,
    /// HTTP or HTTPS URL.
    pub url: String,
}

impl Default for PatchesConfig {
    fn default() -> Self {
        PatchesConfig {
            policy: Policy::default(),
            fetch_interval: Duration::from_secs(6 * 3600),
            feeds: vec![FeedConfig {
                name: "debian-tracker".into(),
                format: "debian-tracker".into(),
                url: super::feed::DEBIAN_TRACKER_URL.into(),
            }],
        }
    }
}

impl PatchesConfig {
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.fetch_interval < Duration::from_secs(60) {
            anyhow::bail!("patches.fetch_interval must be at least 1m");
        }
        for f in &self.feeds {
            if outpost_patch::catalog::FeedFormat::parse(&f.format).is_none() {
                anyhow::bail!(
                    "patches.feeds {:?}: format {:?} is not debian-tracker or osv",
                    f.name,
                    f.format
                );
            }
            if !(f.url.starts_with("http://") || f.url.starts_with("https://")) {
                anyhow::bail!("patches.feeds {:?}: url must be http(s)://", f.name);
            }
        }
        Ok(())
    }
}
