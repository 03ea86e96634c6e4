//! The appliance's end of central's command downlink: takes the commands
//! central sends down the uplink stream, queues each in the command
//! service under central's id (durable before the site acknowledges it),
//! and reports their states and output back up as they change.
//!
//! This module owns the adapter task only. It must not touch the command
//! tables or the state machine (`crate::commands` owns them: it goes
//! through [`CommandService::create_with_id`], `cancel`, `get`, `output`
//! and `subscribe`) nor the uplink stream (`outpost_uplink::sender` owns
//! it; frames pass through [`outpost_uplink::downlink::SiteEnd`]).
//!
//! Exactly once: central's [`CommandId`] is the command's id here, so a
//! command delivered again (after a reconnect, or a restart of either
//! side) is found and answered as it is, never queued twice; the agent
//! dedupes on the same id. The adapter keeps no state of its own across
//! restarts: after each `Welcome` central sends every command it has not
//! closed, with what it holds of each, and the adapter reports from there
//! (see `outpost_uplink::downlink`).

use std::collections::HashMap;

use outpost_proto::command::CommandSpec;
use outpost_proto::ids::CommandId;
use outpost_uplink::downlink::{
    CentralHolds, CommandAck, CommandUpdate, DownCommand, DownEvent, OutputChunk, SiteCommandState,
    SiteEnd, SiteView, plan_update,
};
use outpost_uplink::metrics::{ReasonLabel, UplinkMetrics};
use outpost_uplink::wire::SiteFrame;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::commands::model::{CommandRecord, CommandState};
use crate::commands::service::{CommandService, CreateError};
use crate::files::central::{CentralFiles, Prepared};
use crate::files::service::{FileError, FileService};

/// What the adapter knows of one of central's commands on the current
/// uplink stream.
#[derive(Debug, Clone, Copy, Default)]
struct Track {
    holds: CentralHolds,
    /// An update is on its way and not yet acknowledged.
    in_flight: bool,
}

/// Maps the command service's state to the wire's.
pub fn site_state(s: CommandState) -> SiteCommandState {
    match s {
        CommandState::Queued => SiteCommandState::Queued,
        CommandState::Sent => SiteCommandState::Sent,
        CommandState::Running => SiteCommandState::Running,
        CommandState::Completed => SiteCommandState::Completed,
        CommandState::Failed => SiteCommandState::Failed,
        CommandState::TimedOut => SiteCommandState::TimedOut,
        CommandState::Cancelled => SiteCommandState::Cancelled,
        CommandState::Expired => SiteCommandState::Expired,
        CommandState::Interrupted => SiteCommandState::Interrupted,
    }
}

/// The site's view of a command (full state, stored output).
pub fn view_of(rec: &CommandRecord, output: Vec<u8>) -> SiteView {
    SiteView {
        state: CommandUpdate {
            id: rec.id,
            state: site_state(rec.state),
            transitions: rec
                .transitions
                .iter()
                .map(|t| (site_state(t.state), t.at_ms))
                .collect(),
            exit_code: rec.exit_code,
            signal: rec.signal,
            reason: rec.reason.clone(),
            output_total: rec.output_total,
            output_truncated: rec.output.truncated(),
            output: OutputChunk::default(),
            last: false,
        },
        output,
    }
}

fn refused(m: &UplinkMetrics, reason: &str) {
    m.downlink_refusals
        .get_or_create(&ReasonLabel {
            reason: reason.into(),
        })
        .inc();
}

/// Runs the adapter until `shutdown`.
pub async fn run(
    svc: CommandService,
    metrics: UplinkMetrics,
    end: SiteEnd,
    shutdown: CancellationToken,
) {
    run_with_deploy(svc, metrics, end, None, shutdown).await
}

/// [`run`], handing deployment events (orders, progress
/// acknowledgements, and every connect and disconnect) to `deploy`
/// (`crate::deploy::central::run`).
pub async fn run_with_deploy(
    svc: CommandService,
    metrics: UplinkMetrics,
    end: SiteEnd,
    deploy: Option<tokio::sync::mpsc::UnboundedSender<DownEvent>>,
    shutdown: CancellationToken,
) {
    run_with_files(svc, None, metrics, end, deploy, shutdown).await
}

/// [`run_with_deploy`], taking central's file transfers through `files`
/// (`crate::files::central`; without it they are refused).
pub async fn run_with_files(
    svc: CommandService,
    files: Option<FileService>,
    metrics: UplinkMetrics,
    mut end: SiteEnd,
    deploy: Option<tokio::sync::mpsc::UnboundedSender<DownEvent>>,
    shutdown: CancellationToken,
) {
    let mut files = files.map(CentralFiles::new);
    let to_deploy = |e: DownEvent| {
        if let Some(d) = &deploy {
            let _ = d.send(e);
        }
    };
    let mut changes = svc.subscribe();
    let mut tracked: HashMap<CommandId, Track> = HashMap::new();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            ev = end.events.recv() => {
                let Some(ev) = ev else { return };
                match ev {
                    DownEvent::Connected { protocol_version } => {
                        debug!(protocol_version, "downlink: central connected");
                        tracked.clear();
                        files.iter_mut().for_each(CentralFiles::reset);
                        to_deploy(DownEvent::Connected { protocol_version });
                    }
                    DownEvent::Disconnected => {
                        tracked.clear();
                        files.iter_mut().for_each(CentralFiles::reset);
                        to_deploy(DownEvent::Disconnected);
                    }
                    e @ (DownEvent::DeployOrders(_) | DownEvent::DeployProgressAck(_)) => {
                        to_deploy(e);
                    }
                    DownEvent::Commands(v) => {
                        for dc in v {
                            metrics.downlink_commands.inc();
                            if let Some(ack) = take(&svc, files.as_mut(), &metrics, &dc, &mut tracked).await
                                && end.frames.send(SiteFrame::CommandAck(ack)).await.is_err()
                            {
                                return;
                            }
                        }
                    }
                    DownEvent::FileChunk(c) => match files.as_mut() {
                        Some(f) => f.on_chunk(c),
                        None => debug!("downlink: file frame ignored (no file service)"),
                    },
                    DownEvent::FileAck(a) => {
                        if let Some(f) = files.as_mut() {
                            f.on_ack(a);
                        }
                    }
                    DownEvent::FileAbort(a) => {
                        if let Some(f) = files.as_mut() {
                            f.on_abort(a);
                        }
                    }
                    DownEvent::Cancel { id, by } => {
                        if let Err(e) = svc.cancel(id, &by).await {
                            debug!(%id, error = %e, "central's cancel not taken");
                        }
                    }
                    DownEvent::UpdateAck(a) => {
                        if a.closed {
                            tracked.remove(&a.id);
                            if let Some(f) = files.as_mut() {
                                f.forget(a.id);
                            }
                        } else if let Some(t) = tracked.get_mut(&a.id) {
                            t.holds = CentralHolds {
                                output_len: a.output_len,
                                transitions: a.transitions,
                            };
                            t.in_flight = false;
                        }
                    }
                }
            }
            r = changes.changed() => {
                if r.is_err() {
                    return;
                }
            }
        }
        if let Some(f) = files.as_mut()
            && files_step(&svc, f, &metrics, &mut tracked, &end.frames)
                .await
                .is_err()
        {
            return;
        }
        if pump(&svc, files.as_mut(), &metrics, &mut tracked, &end.frames)
            .await
            .is_err()
        {
            return;
        }
        if let Some(f) = files.as_mut() {
            while let Some(c) = f.poll_chunk() {
                if end.frames.send(c).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// Sends the file frames due and queues the pushes whose content arrived.
async fn files_step(
    svc: &CommandService,
    f: &mut CentralFiles,
    metrics: &UplinkMetrics,
    tracked: &mut HashMap<CommandId, Track>,
    frames: &tokio::sync::mpsc::Sender<SiteFrame>,
) -> Result<(), ()> {
    loop {
        // Acknowledgements of the content first, then the commands.
        for fr in f.take_frames() {
            frames.send(fr).await.map_err(|_| ())?;
        }
        let ready = f.take_ready();
        if ready.is_empty() {
            return Ok(());
        }
        for dc in &ready {
            if let Some(ack) = take(svc, Some(&mut *f), metrics, dc, tracked).await {
                frames
                    .send(SiteFrame::CommandAck(ack))
                    .await
                    .map_err(|_| ())?;
            }
        }
    }
}

/// Queues one of central's commands (idempotently) and answers what to
/// acknowledge: `None` when it could not be stored now (central sends it
/// again on the next connection).
async fn take(
    svc: &CommandService,
    files: Option<&mut CentralFiles>,
    metrics: &UplinkMetrics,
    dc: &DownCommand,
    tracked: &mut HashMap<CommandId, Track>,
) -> Option<CommandAck> {
    let spec = match CommandSpec::decode(&dc.spec) {
        Ok(s) => s,
        Err(e) => {
            warn!(id = %dc.id, error = %e, "central sent a command this appliance cannot read");
            refused(metrics, "unreadable_spec");
            return Some(CommandAck {
                id: dc.id,
                refused: Some(format!("the site cannot read the command: {e}")),
            });
        }
    };
    let created = if crate::files::service::transfer_of(&spec).is_some() {
        // A transfer's content and limits live in the file service: a
        // bare file action would run with no content behind it.
        let Some(f) = files else {
            warn!(id = %dc.id, "central sent a file transfer: refused");
            refused(metrics, "file_transfer");
            return Some(CommandAck {
                id: dc.id,
                refused: Some("file transfers from central are not supported by this site".into()),
            });
        };
        match f.prepare(dc, &spec) {
            Prepared::Wait => return None,
            Prepared::Refuse(reason) => {
                refused(metrics, "file_transfer");
                return Some(CommandAck {
                    id: dc.id,
                    refused: Some(reason),
                });
            }
            Prepared::Ready => match f
                .service()
                .create_from_central(dc.id, dc.device, spec)
                .await
            {
                Ok(rec) => Ok(rec),
                Err(FileError::UnknownDevice(d)) => Err(CreateError::UnknownDevice(d)),
                Err(FileError::RevokedDevice(d)) => Err(CreateError::RevokedDevice(d)),
                Err(e @ (FileError::Store(_) | FileError::Stopped)) => {
                    Err(CreateError::Store(e.to_string()))
                }
                Err(e) => {
                    refused(metrics, "file_transfer");
                    return Some(CommandAck {
                        id: dc.id,
                        refused: Some(e.to_string()),
                    });
                }
            },
        }
    } else {
        svc.create_with_id(dc.id, dc.device, spec).await
    };
    match created {
        Ok(rec) => {
            info!(id = %dc.id, device = %dc.device, state = %rec.state, "command from central queued");
            tracked.insert(
                dc.id,
                Track {
                    holds: CentralHolds {
                        output_len: dc.output_len,
                        transitions: dc.transitions,
                    },
                    in_flight: false,
                },
            );
            if let Some(by) = &dc.cancel
                && !rec.state.is_terminal()
                && !rec.cancel_requested
                && let Err(e) = svc.cancel(dc.id, by).await
            {
                debug!(id = %dc.id, error = %e, "central's cancel not taken");
            }
            Some(CommandAck::accepted(dc.id))
        }
        Err(
            e @ (CreateError::UnknownDevice(_)
            | CreateError::RevokedDevice(_)
            | CreateError::Invalid(_)),
        ) => {
            refused(
                metrics,
                match e {
                    CreateError::UnknownDevice(_) => "unknown_device",
                    CreateError::RevokedDevice(_) => "revoked_device",
                    _ => "invalid_spec",
                },
            );
            Some(CommandAck {
                id: dc.id,
                refused: Some(e.to_string()),
            })
        }
        Err(e @ (CreateError::Store(_) | CreateError::Stopped)) => {
            metrics.downlink_store_failures.inc();
            warn!(id = %dc.id, error = %e, "could not queue a command from central; central sends it again");
            None
        }
    }
}

/// Sends the next update of every tracked command that has news and none
/// in flight.
async fn pump(
    svc: &CommandService,
    files: Option<&mut CentralFiles>,
    metrics: &UplinkMetrics,
    tracked: &mut HashMap<CommandId, Track>,
    frames: &tokio::sync::mpsc::Sender<SiteFrame>,
) -> Result<(), ()> {
    let ids: Vec<(CommandId, CentralHolds)> = tracked
        .iter()
        .filter(|(_, t)| !t.in_flight)
        .map(|(id, t)| (*id, t.holds))
        .collect();
    if ids.is_empty() {
        return Ok(());
    }
    let s = svc.clone();
    let released = files.as_deref().map(|f| f.released());
    let planned = tokio::task::spawn_blocking(move || {
        let mut out = Vec::new();
        let mut pulls = Vec::new();
        for (id, holds) in ids {
            let rec = match s.get(id) {
                Ok(Some(r)) => r,
                Ok(None) => continue,
                Err(e) => {
                    warn!(%id, error = %e, "reading a command for central failed");
                    continue;
                }
            };
            let output = match s.output(&rec) {
                Ok(o) => o,
                Err(e) => {
                    warn!(%id, error = %e, "reading a command's output for central failed");
                    continue;
                }
            };
            if let Some(released) = &released
                && crate::files::central::holds_final_update(&rec)
                && !released.contains(&rec.id)
            {
                // A pull's content goes up before its final state.
                pulls.push(rec);
                continue;
            }
            if let Some(u) = plan_update(&view_of(&rec, output), holds) {
                out.push(u);
            }
        }
        (out, pulls)
    })
    .await
    .unwrap_or_default();
    let (planned, pulls) = planned;
    if let Some(f) = files {
        for rec in &pulls {
            f.pull_completed(rec);
        }
    }
    for u in planned {
        if let Some(t) = tracked.get_mut(&u.id) {
            t.in_flight = true;
        }
        metrics.downlink_updates_sent.inc();
        metrics
            .downlink_output_bytes_sent
            .inc_by(u.output.bytes.len() as u64);
        frames
            .send(SiteFrame::CommandUpdate(u))
            .await
            .map_err(|_| ())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use outpost_proto::DeviceId;
    use outpost_storage::StoreOptions;
    use outpost_storage::model::DeviceRecord;
    use outpost_uplink::downlink::DownlinkPort;

    const DEV: DeviceId = DeviceId(0x2a);

    fn service() -> (CommandService, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::db::open(&dir.path().join("db"), &StoreOptions::default()).unwrap();
        outpost_storage::registry::register(
            &store,
            &DeviceRecord {
                id: DEV,
                tenant: "msp".into(),
                customer: "dental".into(),
                hostname: "web-1".into(),
                os: "Debian 12".into(),
                kernel: "6.1".into(),
                arch: "x86_64".into(),
                agent_version: "0.1.0".into(),
                enrolled_at_ms: 1,
                cert_serial: String::new(),
                revoked_at_ms: None,
            },
        )
        .unwrap();
        let (svc, _thread) = CommandService::start(
            store,
            std::sync::Arc::new(crate::metrics::Metrics::new()),
            Default::default(),
        )
        .unwrap();
        (svc, dir)
    }

    fn down(id: CommandId, device: DeviceId) -> DownCommand {
        DownCommand {
            id,
            device,
            spec: CommandSpec::shell("echo hi", "ann@central")
                .encode()
                .unwrap(),
            cancel: None,
            output_len: 0,
            transitions: 0,
        }
    }

    async fn next_frame(end: &mut tokio::sync::mpsc::Receiver<SiteFrame>) -> SiteFrame {
        tokio::time::timeout(std::time::Duration::from_secs(5), end.recv())
            .await
            .expect("a frame in time")
            .expect("the adapter runs")
    }

    /// Central's command is queued under central's id and acknowledged;
    /// delivered again (a reconnect, a restart of central) it is answered
    /// from the stored record, never queued twice; its state goes up at
    /// once; a command for a device the site does not know is refused
    /// with the reason.
    #[tokio::test]
    async fn a_command_delivered_twice_is_queued_once_and_its_state_goes_up() {
        let (svc, _dir) = service();
        let (port, end) = DownlinkPort::pair(16);
        let shutdown = CancellationToken::new();
        let metrics = UplinkMetrics::default();
        tokio::spawn(run(svc.clone(), metrics.clone(), end, shutdown.clone()));
        let mut frames = port.frames.lock().await;
        let id = CommandId([9; 16]);
        port.events
            .send(DownEvent::Connected {
                protocol_version: 2,
            })
            .unwrap();
        port.events
            .send(DownEvent::Commands(vec![down(id, DEV)]))
            .unwrap();
        assert_eq!(
            next_frame(&mut frames).await,
            SiteFrame::CommandAck(CommandAck::accepted(id))
        );
        let rec = svc.get(id).unwrap().expect("stored under central's id");
        assert_eq!(rec.spec.requested_by, "ann@central");
        match next_frame(&mut frames).await {
            SiteFrame::CommandUpdate(u) => {
                assert_eq!((u.id, u.state), (id, SiteCommandState::Queued));
                assert!(!u.last);
            }
            f => panic!("expected an update, got {f:?}"),
        }
        // Delivered again on a new stream: the same record answers.
        port.events.send(DownEvent::Disconnected).unwrap();
        port.events
            .send(DownEvent::Connected {
                protocol_version: 2,
            })
            .unwrap();
        port.events
            .send(DownEvent::Commands(vec![down(id, DEV)]))
            .unwrap();
        assert_eq!(
            next_frame(&mut frames).await,
            SiteFrame::CommandAck(CommandAck::accepted(id))
        );
        let all = svc
            .list(&crate::commands::store::ListFilter {
                device: None,
                state: None,
                before_ms: None,
                before_id: None,
                limit: 100,
            })
            .unwrap();
        assert_eq!(all.len(), 1, "queued once");
        assert_eq!(svc.get(id).unwrap().unwrap().created_ms, rec.created_ms);
        // An unknown device: refused with the reason, nothing stored.
        let other = CommandId([8; 16]);
        port.events
            .send(DownEvent::Commands(vec![down(other, DeviceId(0xff))]))
            .unwrap();
        loop {
            match next_frame(&mut frames).await {
                SiteFrame::CommandAck(a) if a.id == other => {
                    assert!(a.refused.unwrap().contains("not enrolled"));
                    break;
                }
                _ => continue,
            }
        }
        assert!(svc.get(other).unwrap().is_none());
        // A file action from central: refused, nothing queued.
        let file = CommandId([7; 16]);
        let mut spec = CommandSpec::shell("x", "ann@central");
        spec.kind = outpost_proto::command::CommandKind::Builtin(
            outpost_proto::command::BuiltinAction::PullFile {
                transfer: outpost_proto::ids::TransferId::random(),
                path: "/etc/passwd".into(),
                max_bytes: 1 << 20,
            },
        );
        port.events
            .send(DownEvent::Commands(vec![DownCommand {
                spec: spec.encode().unwrap(),
                ..down(file, DEV)
            }]))
            .unwrap();
        loop {
            match next_frame(&mut frames).await {
                SiteFrame::CommandAck(a) if a.id == file => {
                    assert!(a.refused.unwrap().contains("file transfers"));
                    break;
                }
                _ => continue,
            }
        }
        assert!(svc.get(file).unwrap().is_none());
        assert_eq!(metrics.downlink_commands.get(), 4);
        assert_eq!(
            metrics
                .downlink_refusals
                .get_or_create(&ReasonLabel {
                    reason: "unknown_device".into()
                })
                .get(),
            1
        );
        assert_eq!(
            metrics
                .downlink_refusals
                .get_or_create(&ReasonLabel {
                    reason: "file_transfer".into()
                })
                .get(),
            1
        );
        shutdown.cancel();
        svc.stop();
    }
}
