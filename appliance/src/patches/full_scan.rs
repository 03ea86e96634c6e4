//! Package scans on request: queues the built-in command
//! `ScanPackages` for a device through the [`CommandService`], at most one
//! open per device. Used by the patch worker when a delta's base does not
//! match the stored scan (the device needs a whole scan) and by
//! `POST /api/v1/patches/devices/{id}/scan`.
//!
//! Owns only the "which scan command is open for which device" map (in
//! memory: after a restart the first request queues a new one). It must
//! not touch command state (the command service's) or the patch tables.

use std::collections::HashMap;
use std::sync::Arc;

use outpost_proto::DeviceId;
use outpost_proto::command::{BuiltinAction, CommandKind, CommandSpec};
use outpost_proto::ids::CommandId;
use tracing::{info, warn};

use crate::commands::model::CommandRecord;
use crate::commands::service::{CommandService, CreateError};
use crate::metrics::Metrics;

/// Who the appliance's own scan requests are from (the audit log's
/// `requested_by`).
pub const REQUESTED_BY: &str = "patches";

/// Queues scan commands, one open per device.
pub struct FullScanRequester {
    commands: CommandService,
    metrics: Arc<Metrics>,
    open: tokio::sync::Mutex<HashMap<DeviceId, CommandId>>,
}

/// The spec of a scan request.
pub fn scan_spec(full: bool, requested_by: &str) -> CommandSpec {
    CommandSpec {
        kind: CommandKind::Builtin(BuiltinAction::ScanPackages { full }),
        ..CommandSpec::shell("-", requested_by)
    }
}

impl FullScanRequester {
    pub fn new(commands: CommandService, metrics: Arc<Metrics>) -> FullScanRequester {
        FullScanRequester {
            commands,
            metrics,
            open: tokio::sync::Mutex::new(HashMap::new()),
        }
    }

    /// The device's open scan command, or a new one (`true` when queued
    /// now). Serialised: two requests for a device never queue two.
    pub async fn request(
        &self,
        dev: DeviceId,
        full: bool,
        requested_by: &str,
    ) -> Result<(CommandRecord, bool), CreateError> {
        let mut open = self.open.lock().await;
        if let Some(id) = open.get(&dev).copied() {
            match self.commands.get(id) {
                Ok(Some(rec)) if !rec.state.is_terminal() => return Ok((rec, false)),
                Ok(_) => {}
                Err(e) => warn!(%dev, error = %e, "reading the open scan command"),
            }
        }
        let rec = self
            .commands
            .create(dev, scan_spec(full, requested_by))
            .await?;
        self.metrics.patches.full_scan_requests.inc();
        info!(%dev, command = %rec.id, full, by = requested_by, "package scan requested");
        open.insert(dev, rec.id);
        Ok((rec, true))
    }

    /// A sink for the patch worker: each device that needs a whole scan
    /// gets one requested (on `rt`, the worker being a plain thread).
    pub fn sink(self: Arc<Self>, rt: tokio::runtime::Handle) -> super::service::FullScanSink {
        Box::new(move |dev| {
            let me = self.clone();
            rt.spawn(async move {
                if let Err(e) = me.request(dev, true, REQUESTED_BY).await {
                    warn!(%dev, error = %e, "could not queue a full package scan");
                }
            });
        })
    }
}
