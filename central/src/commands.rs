//! Commands from central: the record central keeps of a command it queued
//! for a device of one of its sites, and the pure rules that move it
//! ([`apply`]), expire it ([`expire_due`]) and re-send it ([`DownQueue`]).
//! Time is a parameter everywhere; nothing here does I/O.
//!
//! This module owns the record's shape and rules. Storage is the
//! [`crate::store::CommandStore`] part of the store (RocksDB today,
//! PostgreSQL later, both calling [`apply`]); the downlink on the uplink
//! stream is [`crate::downlink`]; HTTP is [`crate::api_commands`]. It must
//! not touch batches or the fleet rows.
//!
//! States: `queued_at_central` (stored here, the site not yet told or not
//! yet answered), `delivered_to_site` (the site acknowledged: durable
//! there, it will run at most once), then the site's own states as it
//! reports them (`queued`, `sent`, `running`, `completed`, `failed`,
//! `timed_out`, `cancelled`, `expired`, `interrupted`). Central decides a
//! terminal state alone only before delivery: `expired` (the site stayed
//! offline past the expiry), `cancelled` (cancelled while queued here) and
//! `failed` (the site refused it: unknown or revoked device). A command is
//! `closed` when central will never send it again nor expect news: the
//! site reported a terminal state with all of its output, or central
//! decided a terminal state before delivery.

use std::collections::BTreeMap;

use outpost_proto::command::CommandSpec;
use outpost_proto::ids::CommandId;
use outpost_proto::{CustomerId, SiteId, TenantId};
use outpost_uplink::downlink::{CommandUpdate, SiteCommandState, UpdateAck};
use serde::{Deserialize, Serialize};

/// Most output bytes central keeps per command (the site caps at 1 MiB,
/// head and tail, plus its marker); beyond it output is dropped, counted
/// and marked.
pub const MAX_OUTPUT_BYTES: u64 = 2 * 1024 * 1024;

/// A command sent down and not acknowledged is sent again after this
/// (the site dedupes by id; a reconnect re-sends at once anyway).
pub const RESEND_AFTER_MS: u64 = 30_000;

/// Where a command of central's stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CentralCommandState {
    QueuedAtCentral,
    DeliveredToSite,
    Queued,
    Sent,
    Running,
    Completed,
    Failed,
    TimedOut,
    Cancelled,
    Expired,
    Interrupted,
}

impl CentralCommandState {
    pub const ALL: [CentralCommandState; 11] = [
        CentralCommandState::QueuedAtCentral,
        CentralCommandState::DeliveredToSite,
        CentralCommandState::Queued,
        CentralCommandState::Sent,
        CentralCommandState::Running,
        CentralCommandState::Completed,
        CentralCommandState::Failed,
        CentralCommandState::TimedOut,
        CentralCommandState::Cancelled,
        CentralCommandState::Expired,
        CentralCommandState::Interrupted,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            CentralCommandState::QueuedAtCentral => "queued_at_central",
            CentralCommandState::DeliveredToSite => "delivered_to_site",
            CentralCommandState::Queued => "queued",
            CentralCommandState::Sent => "sent",
            CentralCommandState::Running => "running",
            CentralCommandState::Completed => "completed",
            CentralCommandState::Failed => "failed",
            CentralCommandState::TimedOut => "timed_out",
            CentralCommandState::Cancelled => "cancelled",
            CentralCommandState::Expired => "expired",
            CentralCommandState::Interrupted => "interrupted",
        }
    }

    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            CentralCommandState::Completed
                | CentralCommandState::Failed
                | CentralCommandState::TimedOut
                | CentralCommandState::Cancelled
                | CentralCommandState::Expired
                | CentralCommandState::Interrupted
        )
    }

    pub fn of_site(s: SiteCommandState) -> CentralCommandState {
        match s {
            SiteCommandState::Queued => CentralCommandState::Queued,
            SiteCommandState::Sent => CentralCommandState::Sent,
            SiteCommandState::Running => CentralCommandState::Running,
            SiteCommandState::Completed => CentralCommandState::Completed,
            SiteCommandState::Failed => CentralCommandState::Failed,
            SiteCommandState::TimedOut => CentralCommandState::TimedOut,
            SiteCommandState::Cancelled => CentralCommandState::Cancelled,
            SiteCommandState::Expired => CentralCommandState::Expired,
            SiteCommandState::Interrupted => CentralCommandState::Interrupted,
        }
    }
}

impl std::fmt::Display for CentralCommandState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for CentralCommandState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|x| x.as_str() == s)
            .ok_or_else(|| {
                format!(
                    "unknown command state {s:?}: expected one of {}",
                    Self::ALL.map(|x| x.as_str()).join(", ")
                )
            })
    }
}

/// One state change: central's clock for central's states, the site's for
/// the site's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandTransition {
    pub state: CentralCommandState,
    pub at_ms: u64,
}

/// A command of central's, as central stores it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CentralCommand {
    /// The idempotency key: the site's and the agent's command id too.
    pub id: CommandId,
    pub tenant: TenantId,
    pub site_id: SiteId,
    /// The site's customer when queued (for customer scopes).
    pub customer: CustomerId,
    /// The appliance's device id (hex).
    pub device: String,
    pub hostname: String,
    /// What to run (`requested_by` is `user@central`).
    pub spec: CommandSpec,
    /// The central user or token that asked.
    pub requested_by: String,
    pub created_ms: u64,
    /// Still queued at central at this time: expired.
    pub expires_ms: u64,
    pub state: CentralCommandState,
    /// Central's own transitions (queued_at_central, delivered_to_site,
    /// and a terminal state central decided).
    pub central_transitions: Vec<CommandTransition>,
    /// The site's transitions as it last reported them (site clock).
    pub site_transitions: Vec<CommandTransition>,
    /// A cancel asked for at central (by whom); told to the site until the
    /// command closes.
    pub cancel_requested: Option<String>,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub reason: Option<String>,
    /// Output bytes the command produced, as the site reported.
    pub output_total: Option<u64>,
    /// The output central holds lost bytes (at the site or here).
    pub output_truncated: bool,
    /// Output bytes central holds.
    pub output_len: u64,
    /// Output bytes dropped at central's own cap.
    pub output_dropped: u64,
    /// No more sends, no more news (see the module docs).
    pub closed: bool,
    /// When it closed (central clock).
    pub closed_ms: Option<u64>,
}

impl CentralCommand {
    /// A new command queued at central at `now_ms`; the caller sets the
    /// spec's `requested_by`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        id: CommandId,
        tenant: TenantId,
        site_id: SiteId,
        customer: CustomerId,
        device: String,
        hostname: String,
        spec: CommandSpec,
        requested_by: String,
        now_ms: u64,
    ) -> CentralCommand {
        CentralCommand {
            id,
            tenant,
            site_id,
            customer,
            device,
            hostname,
            expires_ms: now_ms.saturating_add(spec.expiry_ms),
            spec,
            requested_by,
            created_ms: now_ms,
            state: CentralCommandState::QueuedAtCentral,
            central_transitions: vec![CommandTransition {
                state: CentralCommandState::QueuedAtCentral,
                at_ms: now_ms,
            }],
            site_transitions: Vec::new(),
            cancel_requested: None,
            exit_code: None,
            signal: None,
            reason: None,
            output_total: None,
            output_truncated: false,
            output_len: 0,
            output_dropped: 0,
            closed: false,
            closed_ms: None,
        }
    }

    fn enter(&mut self, state: CentralCommandState, now_ms: u64) {
        self.state = state;
        self.central_transitions.push(CommandTransition {
            state,
            at_ms: now_ms,
        });
    }

    fn close(&mut self, now_ms: u64) {
        self.closed = true;
        self.closed_ms = Some(now_ms);
    }

    /// The site acknowledged it (it is durable there).
    pub fn delivered(&self) -> bool {
        self.central_transitions
            .iter()
            .any(|t| t.state == CentralCommandState::DeliveredToSite)
            || !self.site_transitions.is_empty()
    }

    /// The spec to send down now: its expiry is what is left of central's
    /// (at least one second), so a command never waits longer in total
    /// than it was given.
    pub fn spec_to_send(&self, now_ms: u64) -> CommandSpec {
        let mut s = self.spec.clone();
        s.expiry_ms = self.expires_ms.saturating_sub(now_ms).max(1_000);
        s
    }
}

/// What changes a command.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// The site acknowledged it as durable.
    Delivered,
    /// The site refused it for good.
    Refused { reason: String },
    /// A technician cancelled it.
    Cancel { by: String },
    /// The expiry sweep found it still queued at central.
    Expire,
    /// The site reported.
    Update(CommandUpdate),
}

/// What to do with the stored output.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum OutputOp {
    #[default]
    Keep,
    /// Append at `output_len` before the change.
    Append(Vec<u8>),
    /// Replace everything.
    Replace(Vec<u8>),
}

/// What [`apply`] decided.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Outcome {
    /// The record changed: store it.
    pub changed: bool,
    pub output: OutputOp,
    /// Output bytes dropped at central's cap by this change.
    pub dropped: u64,
    /// The answer to an update.
    pub ack: Option<UpdateAck>,
    /// Tell the site to stop it (a cancel of a delivered command, or a
    /// delivery of one cancelled meanwhile).
    pub send_cancel: bool,
    /// The state changed (for the audit and live viewers).
    pub state_changed: bool,
}

/// Applies `change` to `rec` at `now_ms`. Pure.
pub fn apply(rec: &mut CentralCommand, change: Change, now_ms: u64) -> Outcome {
    let before = rec.state;
    let mut o = Outcome::default();
    match change {
        Change::Delivered => {
            if !rec.delivered() {
                // Expired or cancelled here while the delivery was on its
                // way: the site has it all the same, and its word wins.
                rec.enter(CentralCommandState::DeliveredToSite, now_ms);
                if rec.closed && rec.site_transitions.is_empty() {
                    rec.closed = false;
                    rec.closed_ms = None;
                }
                o.changed = true;
            }
            o.send_cancel = rec.cancel_requested.is_some();
        }
        Change::Refused { reason } => {
            if !rec.delivered() && rec.state != CentralCommandState::Failed {
                rec.reason = Some(format!("refused by the site: {reason}"));
                rec.enter(CentralCommandState::Failed, now_ms);
                rec.close(now_ms);
                o.changed = true;
            }
        }
        Change::Cancel { by } => {
            if rec.closed {
                return o;
            }
            if rec.cancel_requested.is_none() {
                rec.cancel_requested = Some(by.clone());
                o.changed = true;
            }
            if rec.delivered() {
                o.send_cancel = true;
            } else {
                // Never reached the site (as far as central knows): done
                // here; the site is told too in case a delivery crossed.
                rec.reason = Some(format!("cancelled at central by {by}"));
                rec.enter(CentralCommandState::Cancelled, now_ms);
                rec.close(now_ms);
                o.send_cancel = true;
                o.changed = true;
            }
        }
        Change::Expire => {
            if !rec.closed
                && rec.state == CentralCommandState::QueuedAtCentral
                && rec.expires_ms <= now_ms
            {
                rec.reason = Some("the site stayed offline past the expiry".into());
                rec.enter(CentralCommandState::Expired, now_ms);
                rec.close(now_ms);
                o.changed = true;
            }
        }
        Change::Update(u) => {
            apply_update(rec, u, now_ms, &mut o);
        }
    }
    o.state_changed = rec.state != before;
    o
}

fn apply_update(rec: &mut CentralCommand, u: CommandUpdate, now_ms: u64, o: &mut Outcome) {
    let n = u.transitions.len();
    // A report is the site's whole state: keep the longer history (a stale
    // report from an older connection never moves a command back).
    if !rec.closed && n >= rec.site_transitions.len() && n > 0 {
        let newer = n > rec.site_transitions.len() || rec.exit_code != u.exit_code;
        if newer || rec.state != CentralCommandState::of_site(u.state) {
            if !rec.delivered() {
                rec.central_transitions.push(CommandTransition {
                    state: CentralCommandState::DeliveredToSite,
                    at_ms: now_ms,
                });
            }
            rec.site_transitions = u
                .transitions
                .iter()
                .map(|(s, at)| CommandTransition {
                    state: CentralCommandState::of_site(*s),
                    at_ms: *at,
                })
                .collect();
            rec.state = CentralCommandState::of_site(u.state);
            rec.exit_code = u.exit_code;
            rec.signal = u.signal;
            if u.reason.is_some() {
                rec.reason = u.reason.clone();
            }
            rec.output_total = u.output_total;
            o.changed = true;
        }
    }
    if !rec.closed {
        if u.output_truncated && !rec.output_truncated {
            rec.output_truncated = true;
            o.changed = true;
        }
        let chunk = u.output;
        if chunk.replace {
            let (keep, dropped) = capped(&chunk.bytes, 0);
            rec.output_len = keep.len() as u64;
            o.dropped = dropped;
            o.output = OutputOp::Replace(keep);
            o.changed = true;
        } else if !chunk.bytes.is_empty() && chunk.offset == rec.output_len {
            let (keep, dropped) = capped(&chunk.bytes, rec.output_len);
            rec.output_len += keep.len() as u64;
            o.dropped = dropped;
            if !keep.is_empty() {
                o.output = OutputOp::Append(keep);
            }
            o.changed = true;
        }
        if o.dropped > 0 {
            rec.output_dropped += o.dropped;
            rec.output_truncated = true;
        }
        // Closed once terminal with all of its output here.
        let all_output = chunk.replace || chunk.offset + chunk.bytes.len() as u64 >= rec.output_len;
        if u.last && rec.state.is_terminal() && all_output && rec.output_len >= chunk.offset {
            rec.close(now_ms);
            o.changed = true;
        }
    }
    o.ack = Some(UpdateAck {
        id: rec.id,
        output_len: rec.output_len,
        transitions: rec.site_transitions.len() as u32,
        closed: rec.closed,
    });
}

/// The part of `bytes` (to be stored at `at`) within [`MAX_OUTPUT_BYTES`],
/// and how many bytes are dropped.
fn capped(bytes: &[u8], at: u64) -> (Vec<u8>, u64) {
    let room = MAX_OUTPUT_BYTES.saturating_sub(at) as usize;
    let keep = bytes.len().min(room);
    (bytes[..keep].to_vec(), (bytes.len() - keep) as u64)
}

/// The audit entry of a change that ended a command (`command.result`).
pub fn result_audit(rec: &CentralCommand, o: &Outcome, now_ms: u64) -> Option<AuditRow> {
    if !(o.state_changed && rec.state.is_terminal()) {
        return None;
    }
    let mut detail = format!("{} {}", rec.id, rec.state);
    if let Some(c) = rec.exit_code {
        detail.push_str(&format!(" exit {c}"));
    }
    if let Some(s) = rec.signal {
        detail.push_str(&format!(" signal {s}"));
    }
    if let Some(r) = &rec.reason {
        detail.push_str(&format!(": {r}"));
    }
    Some(AuditRow {
        at_ms: now_ms,
        tenant: rec.tenant.clone(),
        actor: format!("site:{}", rec.site_id),
        action: "command.result".into(),
        target: format!("{}/{}", rec.site_id, rec.device),
        detail,
    })
}

/// Ids of `open` commands still queued at central whose expiry passed.
pub fn expire_due(open: &[CentralCommand], now_ms: u64) -> Vec<CommandId> {
    open.iter()
        .filter(|c| {
            !c.closed && c.state == CentralCommandState::QueuedAtCentral && c.expires_ms <= now_ms
        })
        .map(|c| c.id)
        .collect()
}

/// Central's downlink queue of one site connection: what was sent and not
/// yet acknowledged, and when to send it again. Pure (time as a
/// parameter).
#[derive(Debug, Default, Clone)]
pub struct DownQueue {
    sent: BTreeMap<CommandId, u64>,
}

impl DownQueue {
    /// `id` went down at `now_ms`.
    pub fn sent(&mut self, id: CommandId, now_ms: u64) {
        self.sent.insert(id, now_ms);
    }

    /// The site acknowledged `id` (accepted or refused).
    pub fn acked(&mut self, id: CommandId) {
        self.sent.remove(&id);
    }

    /// Central stopped waiting for `id` (it closed).
    pub fn forget(&mut self, id: CommandId) {
        self.sent.remove(&id);
    }

    pub fn unacked(&self) -> usize {
        self.sent.len()
    }

    /// Ids sent more than [`RESEND_AFTER_MS`] ago and not acknowledged;
    /// each is marked sent again at `now_ms`.
    pub fn due(&mut self, now_ms: u64) -> Vec<CommandId> {
        let due: Vec<CommandId> = self
            .sent
            .iter()
            .filter(|(_, at)| now_ms.saturating_sub(**at) >= RESEND_AFTER_MS)
            .map(|(id, _)| *id)
            .collect();
        for id in &due {
            self.sent.insert(*id, now_ms);
        }
        due
    }

    /// When the next resend is due, if any.
    pub fn next_due(&self) -> Option<u64> {
        self.sent.values().min().map(|at| at + RESEND_AFTER_MS)
    }
}

/// Audit entry at central.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRow {
    pub at_ms: u64,
    pub tenant: TenantId,
    pub actor: String,
    pub action: String,
    /// `site/device` or a site.
    pub target: String,
    pub detail: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use outpost_uplink::downlink::OutputChunk;

    fn cmd(now: u64) -> CentralCommand {
        let mut spec = CommandSpec::shell("echo hi", "ann@central");
        spec.expiry_ms = 60_000;
        CentralCommand::new(
            CommandId([1; 16]),
            "msp".into(),
            "s-1".into(),
            "acme".into(),
            "00000000000000aa".into(),
            "web-1".into(),
            spec,
            "ann".into(),
            now,
        )
    }

    fn update(
        state: SiteCommandState,
        states: &[SiteCommandState],
        offset: u64,
        bytes: &[u8],
        last: bool,
    ) -> CommandUpdate {
        CommandUpdate {
            id: CommandId([1; 16]),
            state,
            transitions: states
                .iter()
                .enumerate()
                .map(|(i, s)| (*s, i as u64))
                .collect(),
            exit_code: state
                .is_terminal()
                .then_some(0)
                .filter(|_| state == SiteCommandState::Completed),
            signal: None,
            reason: None,
            output_total: None,
            output_truncated: false,
            output: OutputChunk {
                replace: false,
                offset,
                bytes: bytes.to_vec(),
            },
            last,
        }
    }

    use SiteCommandState as S;

    #[test]
    fn a_new_command_is_queued_at_central_until_the_site_acknowledges_it() {
        let mut c = cmd(1_000);
        assert_eq!(c.state, CentralCommandState::QueuedAtCentral);
        let o = apply(&mut c, Change::Delivered, 2_000);
        assert!(o.changed && o.state_changed && !o.send_cancel);
        assert_eq!(c.state, CentralCommandState::DeliveredToSite);
        // A second acknowledgement (a resend crossed it) changes nothing.
        let o = apply(&mut c, Change::Delivered, 3_000);
        assert!(!o.changed);
        assert_eq!(c.central_transitions.len(), 2);
    }

    #[test]
    fn site_reports_move_the_state_and_append_output_at_centrals_length() {
        let mut c = cmd(0);
        apply(&mut c, Change::Delivered, 1);
        let o = apply(
            &mut c,
            Change::Update(update(
                S::Running,
                &[S::Queued, S::Sent, S::Running],
                0,
                b"ab",
                false,
            )),
            2,
        );
        assert_eq!(c.state, CentralCommandState::Running);
        assert_eq!(o.output, OutputOp::Append(b"ab".to_vec()));
        assert_eq!(o.ack.unwrap().output_len, 2);
        // Bytes at the wrong offset (a duplicate) are not appended; the ack
        // says what central holds so the site resends from there.
        let o = apply(
            &mut c,
            Change::Update(update(
                S::Running,
                &[S::Queued, S::Sent, S::Running],
                0,
                b"ab",
                false,
            )),
            3,
        );
        assert_eq!(o.output, OutputOp::Keep);
        assert_eq!(o.ack.unwrap().output_len, 2);
        let o = apply(
            &mut c,
            Change::Update(update(
                S::Completed,
                &[S::Queued, S::Sent, S::Running, S::Completed],
                2,
                b"c",
                true,
            )),
            4,
        );
        assert_eq!(c.state, CentralCommandState::Completed);
        assert_eq!(c.exit_code, Some(0));
        assert!(c.closed && o.ack.unwrap().closed);
        assert_eq!(c.output_len, 3);
    }

    #[test]
    fn a_stale_report_never_moves_a_command_back() {
        let mut c = cmd(0);
        apply(
            &mut c,
            Change::Update(update(
                S::Running,
                &[S::Queued, S::Sent, S::Running],
                0,
                b"",
                false,
            )),
            2,
        );
        let o = apply(
            &mut c,
            Change::Update(update(S::Sent, &[S::Queued, S::Sent], 0, b"", false)),
            3,
        );
        assert!(!o.state_changed);
        assert_eq!(c.state, CentralCommandState::Running);
        assert!(c.delivered(), "a report implies delivery");
    }

    #[test]
    fn a_command_still_queued_at_central_expires_at_its_expiry_and_not_before() {
        let mut c = cmd(1_000);
        assert!(expire_due(std::slice::from_ref(&c), 60_999).is_empty());
        assert_eq!(expire_due(std::slice::from_ref(&c), 61_000), vec![c.id]);
        let o = apply(&mut c, Change::Expire, 61_000);
        assert!(o.changed);
        assert_eq!(c.state, CentralCommandState::Expired);
        assert!(c.closed);
        // Delivered commands never expire at central (the site owns them).
        let mut d = cmd(1_000);
        apply(&mut d, Change::Delivered, 2_000);
        assert!(expire_due(std::slice::from_ref(&d), 100_000).is_empty());
        assert!(!apply(&mut d, Change::Expire, 100_000).changed);
    }

    #[test]
    fn a_delivery_that_crossed_the_expiry_reopens_the_command() {
        let mut c = cmd(0);
        apply(&mut c, Change::Expire, 60_000);
        apply(&mut c, Change::Delivered, 60_001);
        assert_eq!(c.state, CentralCommandState::DeliveredToSite);
        assert!(!c.closed);
    }

    #[test]
    fn cancelling_a_command_queued_at_central_closes_it_and_a_delivered_one_tells_the_site() {
        let mut c = cmd(0);
        let o = apply(&mut c, Change::Cancel { by: "ann".into() }, 5);
        assert!(o.send_cancel && c.closed);
        assert_eq!(c.state, CentralCommandState::Cancelled);
        let mut d = cmd(0);
        apply(&mut d, Change::Delivered, 1);
        let o = apply(&mut d, Change::Cancel { by: "ann".into() }, 5);
        assert!(o.send_cancel && !d.closed);
        assert_eq!(d.state, CentralCommandState::DeliveredToSite);
        assert_eq!(d.cancel_requested.as_deref(), Some("ann"));
        // Delivered after a cancel crossed it: the site is told to stop.
        let mut e = cmd(0);
        apply(&mut e, Change::Cancel { by: "ann".into() }, 5);
        let o = apply(&mut e, Change::Delivered, 6);
        assert!(o.send_cancel);
    }

    #[test]
    fn a_refusal_fails_the_command_with_the_sites_reason() {
        let mut c = cmd(0);
        apply(
            &mut c,
            Change::Refused {
                reason: "device 00000000000000aa is not enrolled here".into(),
            },
            3,
        );
        assert_eq!(c.state, CentralCommandState::Failed);
        assert!(c.closed);
        assert!(c.reason.as_deref().unwrap().contains("refused by the site"));
    }

    #[test]
    fn output_beyond_centrals_cap_is_dropped_counted_and_marked() {
        let mut c = cmd(0);
        c.output_len = MAX_OUTPUT_BYTES - 1;
        let o = apply(
            &mut c,
            Change::Update(update(
                S::Running,
                &[S::Queued, S::Sent, S::Running],
                MAX_OUTPUT_BYTES - 1,
                b"xyz",
                false,
            )),
            1,
        );
        assert_eq!(o.output, OutputOp::Append(b"x".to_vec()));
        assert_eq!(o.dropped, 2);
        assert!(c.output_truncated);
        assert_eq!(c.output_len, MAX_OUTPUT_BYTES);
    }

    #[test]
    fn the_down_queue_resends_unacknowledged_commands_after_the_resend_interval() {
        let mut q = DownQueue::default();
        let (a, b) = (CommandId([1; 16]), CommandId([2; 16]));
        q.sent(a, 1_000);
        q.sent(b, 5_000);
        assert_eq!(q.next_due(), Some(1_000 + RESEND_AFTER_MS));
        assert!(q.due(1_000 + RESEND_AFTER_MS - 1).is_empty());
        assert_eq!(q.due(1_000 + RESEND_AFTER_MS), vec![a]);
        // Marked sent again: not due at once.
        assert!(q.due(1_000 + RESEND_AFTER_MS).is_empty());
        q.acked(b);
        assert_eq!(q.unacked(), 1);
        assert_eq!(q.due(1_000 + 2 * RESEND_AFTER_MS), vec![a]);
    }

    #[test]
    fn the_spec_sent_down_carries_what_is_left_of_centrals_expiry() {
        let c = cmd(1_000);
        assert_eq!(c.spec_to_send(31_000).expiry_ms, 30_000);
        assert_eq!(c.spec_to_send(100_000).expiry_ms, 1_000);
    }
}
