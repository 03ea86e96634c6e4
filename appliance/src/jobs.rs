//! Timers: the only periodic work of the appliance. Offline detection
//! (absence needs a clock), rollups of closed buckets, and retention. None
//! of them polls the ingest path.

use std::sync::Arc;
use std::time::Duration;

use outpost_storage::retention::{self, RetentionPolicy};
use outpost_storage::{Store, now_ms};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::ingest::writer::{WriterHandle, WriterMsg};
use crate::metrics::{Metrics, ResultLabel};

/// How often silent devices are checked.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(1);
/// How often closed buckets are rolled up.
pub const ROLLUP_INTERVAL: Duration = Duration::from_secs(30);

/// Sends periodic control messages to the writer until shutdown.
pub async fn writer_ticks(writer: WriterHandle, shutdown: CancellationToken) {
    let mut sweep = tokio::time::interval(SWEEP_INTERVAL);
    let mut rollup = tokio::time::interval(ROLLUP_INTERVAL);
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    rollup.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = sweep.tick() => writer.control(WriterMsg::Sweep),
            _ = rollup.tick() => {
                writer.control(WriterMsg::RollUp);
                writer.control(WriterMsg::Seal);
            }
            _ = shutdown.cancelled() => return,
        }
    }
}

/// Enforces retention every `interval` until shutdown.
pub async fn retention_loop(
    store: Store,
    policy: RetentionPolicy,
    interval: Duration,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.cancelled() => return,
        }
        let s = store.clone();
        let r =
            tokio::task::spawn_blocking(move || retention::enforce(&s, now_ms(), &policy)).await;
        let result = match r {
            Ok(Ok(report)) => {
                info!(
                    devices = report.devices,
                    ranges = report.ranges_deleted,
                    "retention pass done"
                );
                "ok"
            }
            Ok(Err(e)) => {
                warn!(error = %e, "retention pass failed");
                "error"
            }
            Err(e) => {
                warn!(error = %e, "retention task failed");
                "error"
            }
        };
        metrics
            .retention_runs
            .get_or_create(&ResultLabel {
                result: result.into(),
            })
            .inc();
    }
}
