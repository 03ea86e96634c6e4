//! Central's end of the command downlink: which sites are connected and
//! speak it ([`Registry`]), what goes down a site's uplink stream
//! ([`SiteDownlink`], driven by [`crate::receiver`]), and the expiry sweep
//! ([`sweep`]).
//!
//! This module owns the per-connection downlink state (a [`DownQueue`])
//! and the registry. Command records and their rules are
//! [`crate::commands`]; the stream itself (framing, batches) is
//! [`crate::receiver`]'s.
//!
//! Delivery: a command created while its site is connected is pushed at
//! once ([`Registry::push`]); after every `Welcome` all of the site's open
//! commands go down again (the site dedupes by id), and one not
//! acknowledged within [`crate::commands::RESEND_AFTER_MS`] is sent again.
//! A site offline keeps them queued here until they expire.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use outpost_proto::ids::CommandId;
use outpost_proto::{DeviceId, SiteId, TenantId};
use outpost_uplink::downlink::{CommandAck, CommandUpdate, DownCommand, UpdateAck};
use outpost_uplink::wire::{COMMANDS_PROTOCOL_VERSION, CentralFrame};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::Central;
use crate::commands::{CentralCommand, Change, DownQueue};

/// What the API asks a connected site's stream to send.
#[derive(Debug, Clone, PartialEq)]
pub enum Down {
    Command(CommandId),
    Cancel {
        id: CommandId,
        by: String,
    },
    /// A deployment order (protocol 5, [`crate::deploy_link`]).
    DeployOrder(String),
    /// Send the site all of its open work again, as after a `Welcome`
    /// (the cross-instance notice listener reconnected: notices sent
    /// meanwhile were lost; [`Registry::reopen_all`]).
    Reopen,
}

#[derive(Debug)]
struct Link {
    conn: u64,
    version: u16,
    tx: Option<mpsc::UnboundedSender<Down>>,
}

/// Hands downlink work for a site not connected here to the instance
/// that holds it (PostgreSQL NOTIFY, [`crate::pg::bus`]).
pub type Remote = Box<dyn Fn(&TenantId, &SiteId, &Down) + Send + Sync>;

/// The connected sites and the protocol version each speaks.
#[derive(Default)]
pub struct Registry {
    links: Mutex<HashMap<(TenantId, SiteId), Link>>,
    next: AtomicU64,
    remote: std::sync::OnceLock<Remote>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("links", &self.links)
            .field("remote", &self.remote.get().is_some())
            .finish_non_exhaustive()
    }
}

impl Registry {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(TenantId, SiteId), Link>> {
        self.links.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A site connected speaking `version`: its connection number and, if
    /// it speaks the downlink, the receiver of what to send it. The newest
    /// connection of a site wins.
    pub fn register(
        &self,
        tenant: &TenantId,
        site: &SiteId,
        version: u16,
    ) -> (u64, Option<mpsc::UnboundedReceiver<Down>>) {
        let conn = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        let (tx, rx) = if version >= COMMANDS_PROTOCOL_VERSION {
            let (tx, rx) = mpsc::unbounded_channel();
            (Some(tx), Some(rx))
        } else {
            (None, None)
        };
        self.lock()
            .insert((tenant.clone(), site.clone()), Link { conn, version, tx });
        (conn, rx)
    }

    /// Connection `conn` of the site ended.
    pub fn unregister(&self, tenant: &TenantId, site: &SiteId, conn: u64) {
        let mut m = self.lock();
        let key = (tenant.clone(), site.clone());
        if m.get(&key).is_some_and(|l| l.conn == conn) {
            m.remove(&key);
        }
    }

    /// The protocol version of the site's current connection, if connected.
    pub fn version(&self, tenant: &TenantId, site: &SiteId) -> Option<u16> {
        self.lock()
            .get(&(tenant.clone(), site.clone()))
            .map(|l| l.version)
    }

    /// Hands `d` to the site's stream; false when it is not connected
    /// here (or does not speak the downlink): the command waits in the
    /// store, and with several instances ([`Registry::set_remote`]) `d` is
    /// also handed to the others, so the one holding the site's
    /// connection sends it at once.
    pub fn push(&self, tenant: &TenantId, site: &SiteId, d: Down) -> bool {
        if self.push_local(tenant, site, d.clone()) {
            return true;
        }
        if let Some(r) = self.remote.get() {
            r(tenant, site, &d);
        }
        false
    }

    /// [`Registry::push`] to this instance's connection only (what a
    /// notice from another instance does).
    pub fn push_local(&self, tenant: &TenantId, site: &SiteId, d: Down) -> bool {
        match self.lock().get(&(tenant.clone(), site.clone())) {
            Some(Link { tx: Some(tx), .. }) => tx.send(d).is_ok(),
            _ => false,
        }
    }

    /// Asks every site stream of this instance to send its open work
    /// again ([`Down::Reopen`]); how many were asked.
    pub fn reopen_all(&self) -> usize {
        self.lock()
            .values()
            .filter_map(|l| l.tx.as_ref())
            .filter(|tx| tx.send(Down::Reopen).is_ok())
            .count()
    }

    /// Sets where work for sites connected elsewhere goes (once; false if
    /// it was set already).
    pub fn set_remote(&self, r: Remote) -> bool {
        self.remote.set(r).is_ok()
    }
}

/// What a site without the downlink is told (API, console).
pub const UNSUPPORTED: &str =
    "site does not support commands (its appliance speaks uplink protocol 1; upgrade it)";

/// The wire form of a command, as sent at `now_ms`.
pub fn down_command(c: &CentralCommand, now_ms: u64) -> Option<DownCommand> {
    let device: DeviceId = match c.device.parse() {
        Ok(d) => d,
        Err(e) => {
            warn!(id = %c.id, device = %c.device, error = %e, "a command names a device id that does not parse");
            return None;
        }
    };
    let spec = match c.spec_to_send(now_ms).encode() {
        Ok(s) => s,
        Err(e) => {
            warn!(id = %c.id, error = %e, "a stored command no longer encodes");
            return None;
        }
    };
    Some(DownCommand {
        id: c.id,
        device,
        spec,
        cancel: c.cancel_requested.clone(),
        output_len: c.output_len,
        transitions: c.site_transitions.len() as u32,
    })
}

/// The downlink of one site connection.
pub struct SiteDownlink<'a> {
    c: &'a Central,
    tenant: TenantId,
    site: SiteId,
    queue: DownQueue,
}

impl<'a> SiteDownlink<'a> {
    pub fn new(c: &'a Central, tenant: &TenantId, site: &SiteId) -> SiteDownlink<'a> {
        SiteDownlink {
            c,
            tenant: tenant.clone(),
            site: site.clone(),
            queue: DownQueue::default(),
        }
    }

    /// Every open command of the site (after `Welcome`).
    pub async fn opening(&mut self, now_ms: u64) -> Vec<CentralFrame> {
        let open = match self
            .c
            .store
            .open_commands(Some((&self.tenant, &self.site)))
            .await
        {
            Ok(v) => v,
            Err(e) => {
                warn!(error = %e, "reading the site's open commands failed; they go down on the next connection");
                return Vec::new();
            }
        };
        // Bulk members held for a slot stay here until released.
        let held: std::collections::HashSet<CommandId> = match self
            .c
            .store
            .held(Some((&self.tenant, &self.site)))
            .await
        {
            Ok(v) => v.into_iter().map(|(_, _, _, id)| id).collect(),
            Err(e) => {
                warn!(error = %e, "reading the site's held commands failed; they go down on the next connection");
                return Vec::new();
            }
        };
        let mut v = Vec::new();
        for c in open.iter().filter(|c| !c.closed && !held.contains(&c.id)) {
            if let Some(d) = down_command(c, now_ms) {
                if !c.delivered() {
                    self.queue.sent(c.id, now_ms);
                }
                v.push(d);
            }
        }
        if !v.is_empty() {
            info!(commands = v.len(), "sending the site its open commands");
            self.c.metrics.commands_sent.inc_by(v.len() as u64);
        }
        // Bounded frames: a few hundred commands per frame.
        v.chunks(256)
            .map(|c| CentralFrame::Commands(c.to_vec()))
            .collect()
    }

    /// What to send for a request of the API.
    pub async fn on_down(&mut self, d: Down, now_ms: u64) -> Option<CentralFrame> {
        match d {
            Down::Cancel { id, by } => Some(CentralFrame::Cancel { id, by }),
            // Handled by the stream's deployment link, and by the stream.
            Down::DeployOrder(_) | Down::Reopen => None,
            Down::Command(id) => {
                let c = self.c.store.command(&self.tenant, id).await.ok()??;
                if c.closed || c.site_id != self.site {
                    return None;
                }
                let dc = down_command(&c, now_ms)?;
                self.queue.sent(id, now_ms);
                self.c.metrics.commands_sent.inc();
                Some(CentralFrame::Commands(vec![dc]))
            }
        }
    }

    /// Commands to send again (not acknowledged in time).
    pub async fn resends(&mut self, now_ms: u64) -> Vec<CentralFrame> {
        let mut v = Vec::new();
        for id in self.queue.due(now_ms) {
            match self.c.store.command(&self.tenant, id).await {
                Ok(Some(c)) if !c.closed && !c.delivered() => {
                    if let Some(d) = down_command(&c, now_ms) {
                        v.push(d);
                    }
                }
                _ => self.queue.forget(id),
            }
        }
        if v.is_empty() {
            return Vec::new();
        }
        self.c.metrics.commands_resent.inc_by(v.len() as u64);
        vec![CentralFrame::Commands(v)]
    }

    /// When [`SiteDownlink::resends`] has something next.
    pub fn next_resend(&self) -> Option<u64> {
        self.queue.next_due()
    }

    /// The site's acknowledgement; what to send back (a cancel that crossed
    /// the delivery).
    pub async fn on_ack(&mut self, a: CommandAck, now_ms: u64) -> Option<CentralFrame> {
        self.queue.acked(a.id);
        let Some(c) = self.mine(a.id).await else {
            self.c.metrics.command_frames_unknown.inc();
            return None;
        };
        let change = match a.refused {
            None => Change::Delivered,
            Some(reason) => Change::Refused { reason },
        };
        match self
            .c
            .store
            .change_command(&self.tenant, c.id, change, now_ms, None)
            .await
        {
            Ok(Some((rec, o))) => {
                if o.state_changed {
                    debug!(id = %rec.id, state = %rec.state, "command acknowledged by the site");
                }
                if o.changed {
                    crate::console::publish_command(&self.c.live, &rec);
                }
                o.send_cancel.then(|| CentralFrame::Cancel {
                    id: rec.id,
                    by: rec.cancel_requested.unwrap_or_default(),
                })
            }
            Ok(None) => None,
            Err(e) => {
                warn!(id = %a.id, error = %e, "storing a site's acknowledgement failed; it comes again");
                None
            }
        }
    }

    /// The site's report; the acknowledgement to send (`None`: not stored,
    /// the site sends it again on the next connection).
    pub async fn on_update(&mut self, u: CommandUpdate, now_ms: u64) -> Option<CentralFrame> {
        let id = u.id;
        self.queue.acked(id);
        let Some(_mine) = self.mine(id).await else {
            // Not ours (or another site's): the site forgets it.
            self.c.metrics.command_frames_unknown.inc();
            return Some(CentralFrame::CommandUpdateAck(UpdateAck {
                id,
                output_len: 0,
                transitions: 0,
                closed: true,
            }));
        };
        let bytes = u.output.bytes.len() as u64;
        match self
            .c
            .store
            .change_command(&self.tenant, id, Change::Update(u), now_ms, None)
            .await
        {
            Ok(Some((rec, o))) => {
                if o.changed {
                    crate::console::publish_command(&self.c.live, &rec);
                }
                self.c.metrics.command_output_bytes.inc_by(bytes);
                if o.dropped > 0 {
                    self.c.metrics.command_output_dropped.inc_by(o.dropped);
                }
                if o.state_changed {
                    self.c
                        .metrics
                        .commands_entered
                        .get_or_create(&crate::metrics::StateLabel {
                            state: rec.state.as_str().into(),
                        })
                        .inc();
                }
                o.ack.map(CentralFrame::CommandUpdateAck)
            }
            Ok(None) => None,
            Err(e) => {
                warn!(%id, error = %e, "storing a site's command report failed; it comes again");
                None
            }
        }
    }

    /// The command `id` if it is this site's.
    async fn mine(&self, id: CommandId) -> Option<CentralCommand> {
        match self.c.store.command(&self.tenant, id).await {
            Ok(Some(c)) if c.site_id == self.site => Some(c),
            _ => None,
        }
    }
}

/// Expires the commands still queued at central past their expiry, then
/// releases held bulk members whose site has a free slot.
pub async fn sweep(c: &Central, now_ms: u64) {
    expire(c, now_ms).await;
    crate::api_bulk::pump_all(c).await;
}

async fn expire(c: &Central, now_ms: u64) {
    let open = match c.store.open_commands(None).await {
        Ok(v) => v,
        Err(e) => {
            warn!(error = %e, "reading open commands for the expiry sweep failed");
            return;
        }
    };
    for cmd in open
        .iter()
        .filter(|x| crate::commands::expire_due(std::slice::from_ref(*x), now_ms).len() == 1)
    {
        match c
            .store
            .change_command(&cmd.tenant, cmd.id, Change::Expire, now_ms, None)
            .await
        {
            Ok(Some((rec, o))) if o.state_changed => {
                crate::console::publish_command(&c.live, &rec);
                c.metrics.commands_expired.inc();
                info!(id = %cmd.id, site = %cmd.site_id, "command expired at central: its site stayed offline");
            }
            Ok(_) => {}
            Err(e) => warn!(id = %cmd.id, error = %e, "expiring a command failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commands::{AuditRow, CentralCommandState};
    use outpost_proto::command::CommandSpec;
    use outpost_uplink::downlink::{OutputChunk, SiteCommandState};

    async fn queued(c: &Central, site: &SiteId) -> CentralCommand {
        let cmd = CentralCommand::new(
            CommandId::random(),
            "msp".into(),
            site.clone(),
            "dental".into(),
            "000000000000002a".into(),
            "web-1".into(),
            CommandSpec::shell("echo hi", "ann@central"),
            "ann".into(),
            1_000,
        );
        let audit = AuditRow {
            at_ms: 1_000,
            tenant: "msp".into(),
            actor: "ann".into(),
            action: "command.run".into(),
            target: String::new(),
            detail: String::new(),
        };
        c.store.create_command(&cmd, &audit).await.unwrap();
        cmd
    }

    fn report(id: CommandId) -> CommandUpdate {
        CommandUpdate {
            id,
            state: SiteCommandState::Completed,
            transitions: vec![
                (SiteCommandState::Queued, 1),
                (SiteCommandState::Completed, 2),
            ],
            exit_code: Some(0),
            signal: None,
            reason: None,
            output_total: Some(2),
            output_truncated: false,
            output: OutputChunk {
                replace: false,
                offset: 0,
                bytes: b"hi".to_vec(),
            },
            last: true,
        }
    }

    /// A site acknowledges and reports only its own commands: another
    /// site's (same tenant) are ignored and counted, and the reporter is
    /// told to forget them; its own open commands go down after
    /// `Welcome`, and a report closes one.
    #[tokio::test]
    async fn a_site_acts_only_on_its_own_commands() {
        let (c, site, _dir) = crate::testing::central_with_site(Default::default()).await;
        let other = crate::ops::add_site(
            c.store.as_ref(),
            &crate::ops::AddSite {
                tenant: "msp".into(),
                customer: "dental".into(),
                site: "other".into(),
            },
            1,
        )
        .await
        .unwrap()
        .site_id;
        let cmd = queued(&c, &site).await;
        let tenant: TenantId = "msp".into();
        let mut intruder = SiteDownlink::new(&c, &tenant, &other);
        assert!(intruder.opening(2_000).await.is_empty());
        assert_eq!(
            intruder.on_ack(CommandAck::accepted(cmd.id), 2_000).await,
            None
        );
        match intruder.on_update(report(cmd.id), 2_000).await {
            Some(CentralFrame::CommandUpdateAck(a)) => assert!(a.closed),
            f => panic!("{f:?}"),
        }
        let now = c.store.command(&tenant, cmd.id).await.unwrap().unwrap();
        assert_eq!(now.state, CentralCommandState::QueuedAtCentral);
        assert!(
            c.metrics
                .encode(false)
                .contains("outpost_central_command_frames_unknown_total 2")
        );
        // The owner gets it after Welcome, acknowledges, reports.
        let mut owner = SiteDownlink::new(&c, &tenant, &site);
        let frames = owner.opening(2_000).await;
        assert!(
            matches!(&frames[..], [CentralFrame::Commands(v)] if v.len() == 1 && v[0].id == cmd.id)
        );
        assert_eq!(
            owner.next_resend(),
            Some(2_000 + crate::commands::RESEND_AFTER_MS)
        );
        assert_eq!(
            owner.on_ack(CommandAck::accepted(cmd.id), 2_001).await,
            None
        );
        assert_eq!(owner.next_resend(), None);
        match owner.on_update(report(cmd.id), 2_002).await {
            Some(CentralFrame::CommandUpdateAck(a)) => {
                assert!(a.closed);
                assert_eq!(a.output_len, 2);
            }
            f => panic!("{f:?}"),
        }
        let done = c.store.command(&tenant, cmd.id).await.unwrap().unwrap();
        assert_eq!(done.state, CentralCommandState::Completed);
        assert_eq!(
            c.store.command_output(&tenant, cmd.id).await.unwrap(),
            b"hi"
        );
        assert!(c.store.open_commands(None).await.unwrap().is_empty());
    }
}
