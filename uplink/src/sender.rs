//! The appliance's sender: one QUIC connection to central with mutual TLS,
//! one long-lived stream, batches sent in order with a bounded window, each
//! deleted from the outbox only when central acknowledges it.
//!
//! Order: after a (re)connect with a backlog, the newest batch goes first
//! (so central shows current status at once), then the backlog oldest
//! first at full speed; a batch compacted meanwhile jumps the queue again
//! ([`pick_next`]). Central applies batches idempotently and in any order.
//! Reconnects use exponential backoff with full jitter.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use bytes::BytesMut;
use outpost_proto::frame::{FrameReader, write_frame};
use outpost_proto::tls;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::downlink::{DownEvent, DownlinkPort};
use crate::failover::Failover;
use crate::join::{client_endpoint, quic_client_config, resolve};
use crate::metrics::ReasonLabel;
use crate::service::{LinkState, Uplink};
use crate::site_files::SiteIdentity;
use crate::wire::{
    ALPN_UPLINK, CENTRAL_SERVER_NAME, COMMANDS_PROTOCOL_VERSION, CentralFrame,
    MAX_UPLINK_FRAME_BYTES, SiteFrame, SiteHello, WireBatch,
};
use outpost_proto::backoff::Backoff;
use std::sync::atomic::Ordering;

/// Chooses the next batch to send: the newest stored batch if it is newer
/// than everything sent on this connection, else the oldest unsent one.
/// `stored` is ascending.
pub fn pick_next(stored: &[u64], in_flight: &BTreeSet<u64>, sent_max: u64) -> Option<u64> {
    let newest = stored.iter().rev().find(|s| !in_flight.contains(s))?;
    if *newest > sent_max {
        return Some(*newest);
    }
    stored.iter().find(|s| !in_flight.contains(s)).copied()
}

/// Brings the outbox in line with what central's `Welcome` says it applied
/// (`applied_up_to` and the numbers above it), before anything is sent.
///
/// Normally that acks (deletes) the stored batches central already has.
/// But when central applied a number this outbox never handed out (at or
/// above its `next_seq`), the appliance was restored from an older backup
/// or snapshot: central's numbers belong to batches lost with the newer
/// state, and the stored ones, sharing their numbers, were never applied.
/// Acking them by number would delete them unsent and sending them would
/// get them answered as duplicates; instead the numbering is first raised
/// above central's mark, the stored batches renumbered (durably), warned
/// about and counted, and then nothing is left to ack.
pub fn settle_welcome(
    outbox: &crate::outbox::Outbox,
    applied_up_to: u64,
    applied_above: &[u64],
) -> Result<(), crate::outbox::OutboxError> {
    let mark = applied_above.iter().copied().fold(applied_up_to, u64::max);
    if let Some(r) = outbox.raise_above(mark)? {
        warn!(
            applied_up_to,
            central_mark = mark,
            next_seq_was = r.from_next_seq,
            next_seq = r.next_seq,
            renumbered = r.batches,
            unreadable = r.unreadable,
            "central applied batch numbers this appliance never handed out \
             (its data was restored from an older backup or snapshot): \
             numbering raised above them, stored batches renumbered and sent"
        );
    }
    // What central already applied needs no resend.
    outbox.ack_up_to(applied_up_to)?;
    for s in applied_above {
        outbox.ack(*s)?;
    }
    Ok(())
}

/// The version to say from now on after central closed the connection
/// before its `Welcome` with `close_code`, having said `said`: one version
/// lower when central refused the version as unsupported (an older
/// central: 3 → 2 keeps the downlink of commands, 2 → 1 the batches),
/// else no change.
pub fn fallback_version(close_code: Option<u32>, said: u16) -> Option<u16> {
    (close_code == Some(crate::wire::close::UNSUPPORTED_VERSION) && said > 1).then(|| said - 1)
}

/// The payload of a stored batch as it goes to a central that reads batch
/// formats up to `max_format`: as stored, or re-encoded without what that
/// central does not read (counted). A payload that does not open is sent
/// as it is (central dead-letters it, as before).
fn payload_for(
    payload: Vec<u8>,
    max_format: u16,
    level: i32,
    metrics: &crate::metrics::UplinkMetrics,
    resend: &crate::resend::FindingsResend,
) -> Vec<u8> {
    match crate::batch::reencode_noting_findings(&payload, max_format, level) {
        Ok(Some((p, findings_dropped))) => {
            metrics.batches_downgraded.inc();
            if findings_dropped && let Err(e) = resend.note_dropped() {
                warn!(error = %e, "recording that patch findings are owed to central failed");
            }
            p
        }
        Ok(None) => payload,
        Err(e) => {
            warn!(error = %e, "a stored batch does not decode; sending it as stored");
            payload
        }
    }
}

/// Runs until `cancel`: connect, stream, reconnect with backoff.
pub async fn run(uplink: Arc<Uplink>, ident: Arc<SiteIdentity>, cancel: CancellationToken) {
    let opts = uplink.options().clone();
    let mut backoff = Backoff::new(opts.reconnect_base, opts.reconnect_max);
    let mut centrals = Failover::new(
        &opts.centrals,
        &ident.site.central,
        opts.fail_back_after.as_millis() as u64,
    );
    loop {
        if cancel.is_cancelled() {
            return;
        }
        uplink.metrics().connect_attempts.inc();
        uplink.set_link(LinkState::Connecting, None);
        let r = session(&uplink, &ident, &cancel, &mut backoff, &mut centrals).await;
        uplink.metrics().connected.set(0);
        match r {
            Ok(Ended::Cancelled) => {
                uplink.set_link(LinkState::Disconnected, None);
                return;
            }
            Ok(Ended::FailBack) => {
                info!(
                    central = centrals.addrs()[0].as_str(),
                    "returning to the first central address"
                );
                centrals.fail_back();
                uplink.set_link(LinkState::Disconnected, None);
                continue;
            }
            Err(e) => {
                uplink.metrics().connect_failures.inc();
                let msg = format!("{e:#}");
                let from = centrals.current().to_string();
                centrals.failed();
                warn!(error = %msg, central = from.as_str(), next = centrals.current(),
                    "uplink to central lost; reconnecting with backoff");
                uplink.set_link(LinkState::Disconnected, Some(msg));
            }
        }
        let delay = backoff.next_delay();
        debug!(?delay, "uplink reconnect delay");
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = cancel.cancelled() => return,
        }
    }
}

/// How a session ended without an error.
enum Ended {
    Cancelled,
    /// On another address long enough: back to the first.
    FailBack,
}

async fn session(
    uplink: &Arc<Uplink>,
    ident: &SiteIdentity,
    cancel: &CancellationToken,
    backoff: &mut Backoff,
    centrals: &mut Failover,
) -> anyhow::Result<Ended> {
    let addr = resolve(centrals.current()).await?;
    let cfg = quic_client_config(tls::mtls_client_config(
        ident.central_ca.clone(),
        vec![ident.cert.clone()],
        ident.key.clone_key(),
        ALPN_UPLINK,
    )?)?;
    let ep = client_endpoint(addr)?;
    let connecting = ep
        .connect_with(cfg, addr, CENTRAL_SERVER_NAME)
        .context("starting the QUIC handshake")?;
    let conn = tokio::select! {
        r = tokio::time::timeout(Duration::from_secs(10), connecting) => r
            .map_err(|_| anyhow!("central at {addr} did not answer within 10s"))?
            .with_context(|| format!("connecting to central at {addr}"))?,
        _ = cancel.cancelled() => return Ok(Ended::Cancelled),
    };
    // Away from the first address: end the session (dropping the stream;
    // unacknowledged batches stay in the outbox) when it is time to fail
    // back. The clock starts once connected.
    let r = {
        let connected = std::sync::atomic::AtomicBool::new(false);
        let s = stream(uplink, ident, cancel, backoff, &conn, &connected);
        tokio::pin!(s);
        let mut fail_back: Option<tokio::time::Instant> = None;
        loop {
            let at = fail_back;
            tokio::select! {
                r = &mut s => break r.map(|()| Ended::Cancelled),
                _ = async { match at {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => tokio::time::sleep(Duration::from_millis(200)).await,
                } } => {
                    if at.is_some() {
                        break Ok(Ended::FailBack);
                    }
                    if fail_back.is_none() && connected.load(Ordering::Relaxed) {
                        let now = crate::now_ms();
                        centrals.connected(now);
                        match centrals.fail_back_at_ms() {
                            Some(t) => fail_back = Some(tokio::time::Instant::now()
                                + Duration::from_millis(t.saturating_sub(now))),
                            // On the first address: nothing to watch.
                            None => break s.await.map(|()| Ended::Cancelled),
                        }
                    }
                }
            }
        }
    };
    let (code, why): (u32, &[u8]) = match &r {
        Ok(Ended::Cancelled) => (
            crate::wire::close::SHUTTING_DOWN,
            b"appliance shutting down",
        ),
        Ok(Ended::FailBack) => (
            crate::wire::close::SHUTTING_DOWN,
            b"returning to the first central address",
        ),
        Err(_) => (crate::wire::close::PROTOCOL, b"uplink error"),
    };
    conn.close(code.into(), why);
    let _ = tokio::time::timeout(Duration::from_secs(2), ep.wait_idle()).await;
    r
}

async fn stream(
    uplink: &Arc<Uplink>,
    ident: &SiteIdentity,
    cancel: &CancellationToken,
    backoff: &mut Backoff,
    conn: &quinn::Connection,
    connected: &std::sync::atomic::AtomicBool,
) -> anyhow::Result<()> {
    let outbox = uplink.outbox().clone();
    let metrics = uplink.metrics().clone();
    let (mut send, mut recv) = conn.open_bi().await.context("opening the uplink stream")?;
    let mut out = BytesMut::new();
    let downlink = uplink.downlink();
    // Without a downlink adapter this appliance takes no commands: it
    // says version 1, and central sends it none.
    let hello_version = if downlink.is_some() {
        uplink.hello_version.load(Ordering::Relaxed)
    } else {
        1
    };
    let hello = SiteFrame::Hello(SiteHello {
        protocol_version: hello_version,
        appliance_version: env!("CARGO_PKG_VERSION").to_string(),
        interval_ms: ident.site.interval.as_millis() as u64,
        backlog_batches: outbox.seqs().len() as u64,
    });
    write_frame(&hello, &mut out, MAX_UPLINK_FRAME_BYTES)?;
    send.write_all(&out).await.context("sending Hello")?;
    out.clear();
    let mut reader = FrameReader::new(MAX_UPLINK_FRAME_BYTES);
    let welcome = match tokio::time::timeout(
        Duration::from_secs(10),
        reader.next::<CentralFrame, _>(&mut recv),
    )
    .await
    {
        Err(_) => bail!("central sent no Welcome within 10s"),
        Ok(Err(e)) => {
            let code = match conn.close_reason() {
                Some(quinn::ConnectionError::ApplicationClosed(c)) => {
                    u32::try_from(c.error_code.into_inner()).ok()
                }
                _ => None,
            };
            if let Some(v) = fallback_version(code, hello_version) {
                // An older central: speak version 1 (no downlink) from now on.
                uplink.hello_version.store(v, Ordering::Relaxed);
                warn!(
                    version = hello_version,
                    fallback = v,
                    "central does not speak this uplink protocol version; \
                     falling back to an older one (patch findings need protocol 3, \
                     central's commands protocol 2)"
                );
            }
            return Err(anyhow::Error::new(e).context("reading Welcome"));
        }
        Ok(Ok(r)) => match r {
            Some(CentralFrame::Welcome(w)) => w,
            Some(other) => bail!("central answered Hello with {other:?}"),
            None => bail!("central closed the stream before Welcome"),
        },
    };
    if welcome.site_id != ident.site.site_id {
        bail!(
            "central knows this certificate as site {} but uplink.json says {}",
            welcome.site_id,
            ident.site.site_id
        );
    }
    settle_welcome(&outbox, welcome.applied_up_to, &welcome.applied_above)?;
    backoff.reset();
    connected.store(true, Ordering::Relaxed);
    metrics.connected.set(1);
    uplink.set_link(LinkState::Connected, None);
    uplink.note_acked(welcome.applied_up_to);
    info!(
        site = %ident.site.site_id,
        applied_up_to = welcome.applied_up_to,
        backlog = outbox.seqs().len(),
        "uplink connected"
    );
    // Fresh state first: compact now rather than at the next tick.
    uplink.compact_now.notify_one();
    let downlink_on = downlink.is_some()
        && welcome.protocol_version >= COMMANDS_PROTOCOL_VERSION
        && hello_version >= COMMANDS_PROTOCOL_VERSION;
    let mut frames_up = match (&downlink, downlink_on) {
        (Some(d), true) => {
            let _ = d.events.send(DownEvent::Connected {
                protocol_version: welcome.protocol_version,
            });
            Some(d.frames.lock().await)
        }
        _ => None,
    };
    let max_format = crate::wire::max_batch_format(welcome.protocol_version.min(hello_version));
    uplink.findings_resend().connected(max_format);
    let r = stream_loop(
        uplink,
        max_format,
        &mut send,
        &mut recv,
        &mut reader,
        cancel,
        downlink.as_deref().filter(|_| downlink_on),
        frames_up.as_deref_mut(),
    )
    .await;
    if let (Some(d), true) = (&downlink, downlink_on) {
        let _ = d.events.send(DownEvent::Disconnected);
    }
    r
}

#[allow(clippy::too_many_arguments)]
async fn stream_loop(
    uplink: &Arc<Uplink>,
    max_format: u16,
    send: &mut quinn::SendStream,
    recv: &mut quinn::RecvStream,
    reader: &mut FrameReader,
    cancel: &CancellationToken,
    downlink: Option<&DownlinkPort>,
    mut frames_up: Option<&mut tokio::sync::mpsc::Receiver<SiteFrame>>,
) -> anyhow::Result<()> {
    let outbox = uplink.outbox().clone();
    let metrics = uplink.metrics().clone();
    let max_in_flight = uplink.options().max_in_flight_batches.max(1);
    let mut out = BytesMut::new();
    let down = |e: DownEvent| {
        if let Some(d) = downlink {
            let _ = d.events.send(e);
        }
    };

    let mut in_flight: BTreeSet<u64> = BTreeSet::new();
    let mut sent_max = 0u64;
    loop {
        while in_flight.len() < max_in_flight {
            let stored = outbox.seqs();
            let Some(seq) = pick_next(&stored, &in_flight, sent_max) else {
                break;
            };
            let Some(rec) = outbox.get(seq)? else {
                continue;
            };
            let payload = payload_for(
                rec.payload,
                max_format,
                uplink.outbox().zstd_level(),
                &metrics,
                &uplink.findings_resend(),
            );
            let n = payload.len() as u64;
            write_frame(
                &SiteFrame::Batch(WireBatch { seq, payload }),
                &mut out,
                MAX_UPLINK_FRAME_BYTES,
            )?;
            send.write_all(&out).await.context("sending a batch")?;
            out.clear();
            metrics.batches_sent.inc();
            metrics.bytes_sent.inc_by(n);
            in_flight.insert(seq);
            sent_max = sent_max.max(seq);
        }
        tokio::select! {
            biased;
            _ = cancel.cancelled() => {
                let _ = send.finish();
                return Ok(());
            }
            f = async {
                match frames_up.as_mut() {
                    Some(rx) => rx.recv().await,
                    None => std::future::pending().await,
                }
            } => {
                let Some(f) = f else { bail!("the downlink adapter stopped") };
                write_frame(&f, &mut out, MAX_UPLINK_FRAME_BYTES)?;
                send.write_all(&out).await.context("sending a downlink report")?;
                out.clear();
            }
            frame = reader.next::<CentralFrame, _>(recv) => {
                match frame.context("reading from central")? {
                    Some(CentralFrame::Ack { seq }) => {
                        outbox.ack(seq)?;
                        in_flight.remove(&seq);
                        uplink.note_acked(seq);
                    }
                    Some(CentralFrame::Reject { seq, reason, message }) => {
                        metrics.rejects.get_or_create(&ReasonLabel { reason: reason.label().into() }).inc();
                        in_flight.remove(&seq);
                        if reason.is_permanent() {
                            // It can never be applied: keeping it would block the
                            // outbox forever. Loud, counted, dropped.
                            tracing::error!(seq, reason = reason.label(), message, "central permanently refused a batch; dropping it");
                            outbox.ack(seq)?;
                        } else {
                            bail!("central could not store batch {seq}: {message}");
                        }
                    }
                    Some(CentralFrame::Welcome(_)) => bail!("unexpected second Welcome"),
                    Some(CentralFrame::Commands(v)) => down(DownEvent::Commands(v)),
                    Some(CentralFrame::Cancel { id, by }) => down(DownEvent::Cancel { id, by }),
                    Some(CentralFrame::CommandUpdateAck(a)) => down(DownEvent::UpdateAck(a)),
                    Some(CentralFrame::FileChunk(c)) => down(DownEvent::FileChunk(c)),
                    Some(CentralFrame::FileAck(a)) => down(DownEvent::FileAck(a)),
                    Some(CentralFrame::FileAbort(a)) => down(DownEvent::FileAbort(a)),
                    Some(CentralFrame::DeployOrders(v)) => down(DownEvent::DeployOrders(v)),
                    Some(CentralFrame::DeployProgressAck(a)) => down(DownEvent::DeployProgressAck(a)),
                    None => bail!("central closed the uplink stream"),
                }
            }
            _ = outbox.added.notified() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::{self, PatchDetail};
    use crate::wire::{PATCH_FINDINGS_PROTOCOL_VERSION, max_batch_format};

    /// A batch holding patch details (format 4) and findings (format 5)
    /// goes to a central that announced protocol 2 (or 1) re-encoded in
    /// format 3, which such a central reads, with the counts every format
    /// carries; a central of protocol 3 gets it as stored. Before the
    /// gate, format 4 went to every central and an older one
    /// dead-lettered it.
    #[test]
    fn batches_go_to_an_older_central_in_a_format_it_reads() {
        let mut b = batch::tests::sample_batch(4);
        b.patch_compliance.push(batch::PatchCompliance {
            device: outpost_proto::DeviceId(42),
            missing: 5,
            missing_critical: 1,
            installed_pending_reboot: 0,
            as_of_ms: 9,
            detail: Some(PatchDetail {
                compliance: batch::ComplianceState::NonCompliant,
                security_patches: Default::default(),
                fixable_cves: 3,
                open_cves: 1,
                risk: Some(40),
                scanned_at_ms: 8,
                reboot_required: false,
            }),
        });
        b.patch_findings = vec![batch::findings::tests::typical_device(42, 3, 4, 0)];
        let stored = batch::encode(&b, 3).unwrap();
        let m = crate::metrics::UplinkMetrics::default();
        let dir = tempfile::tempdir().unwrap();
        let owed = crate::resend::FindingsResend::open(dir.path());
        for v in [1, 2] {
            let max = max_batch_format(v);
            assert_eq!(max, 3);
            let sent = payload_for(stored.clone(), max, 3, &m, &owed);
            let opened = batch::open(&sent).unwrap();
            assert!(opened.header().format <= 3, "{}", opened.header().format);
            let back = opened.decode().unwrap();
            assert!(back.patch_findings.is_empty());
            assert_eq!(back.patch_compliance[0].missing, 5);
            assert_eq!(back.patch_compliance[0].detail, None);
            assert_eq!((back.seq, &back.devices), (b.seq, &b.devices));
        }
        assert_eq!(m.batches_downgraded.get(), 2);
        assert!(owed.pending(), "the findings left out are owed to central");
        let max = max_batch_format(PATCH_FINDINGS_PROTOCOL_VERSION);
        assert_eq!(payload_for(stored.clone(), max, 3, &m, &owed), stored);
        assert_eq!(batch::decode(&stored).unwrap(), b);
        assert_eq!(m.batches_downgraded.get(), 2);
        // A batch with details but no findings owes nothing.
        let clean_dir = tempfile::tempdir().unwrap();
        let clean = crate::resend::FindingsResend::open(clean_dir.path());
        b.patch_findings.clear();
        let details_only = batch::encode(&b, 3).unwrap();
        payload_for(details_only, 3, 3, &m, &clean);
        assert_eq!(m.batches_downgraded.get(), 3);
        assert!(!clean.pending());
    }

    /// Central's side of a batch, as its receiver decides it: the frame's
    /// number must be the batch header's (else refused for good), a
    /// number already in the applied set is answered as a duplicate, any
    /// other is applied. The applied set is its contiguous prefix and the
    /// numbers above it.
    struct CentralModel {
        applied_up_to: u64,
        applied_above: BTreeSet<u64>,
        applied: Vec<batch::SiteBatch>,
        duplicates: u64,
    }

    impl CentralModel {
        fn receive(&mut self, seq: u64, payload: &[u8]) {
            let b = batch::decode(payload).unwrap();
            assert_eq!(
                b.seq, seq,
                "central refuses a batch whose header names another number"
            );
            if seq <= self.applied_up_to || !self.applied_above.insert(seq) {
                self.duplicates += 1;
                return;
            }
            while self.applied_above.remove(&(self.applied_up_to + 1)) {
                self.applied_up_to += 1;
            }
            self.applied.push(b);
        }
    }

    fn outbox_store(dir: &std::path::Path) -> outpost_storage::Store {
        let store = outpost_storage::Store::open(
            dir,
            &outpost_storage::StoreOptions {
                durability: outpost_storage::Durability::Buffered,
                block_cache_bytes: 1 << 20,
                write_buffer_bytes: 1 << 20,
                ..Default::default()
            },
            &[outpost_storage::TABLES, crate::outbox::TABLES].concat(),
        )
        .unwrap();
        store.set_uplink_tracking(true);
        store
    }

    fn resolved(alert_id: u64, at_ms: u64) -> batch::AlertTransition {
        batch::AlertTransition {
            alert_id,
            device: Some(outpost_proto::DeviceId(7)),
            rule: "disk_full".into(),
            severity: batch::Severity::Critical,
            state: batch::AlertState::Resolved,
            at_ms,
            message: "disk 80 <= 90".into(),
            value: Some(80.0),
        }
    }

    /// Sends every stored batch, oldest first, to `central` and acks what
    /// it answered, as the stream loop does.
    fn drain(ob: &crate::outbox::Outbox, central: &mut CentralModel) {
        for seq in ob.seqs() {
            let rec = ob.get(seq).unwrap().unwrap();
            central.receive(seq, &rec.payload);
            ob.ack(seq).unwrap();
        }
    }

    /// The appliance restored from a snapshot: its outbox had acked up to
    /// 10 and holds 11 and 12 (12 carries an alert's resolution), next 13;
    /// central had applied up to 28 from the lost, newer state. Before,
    /// the Welcome acked (deleted) 11 and 12 unsent and the next batches,
    /// 13..=28, were answered as duplicates: the resolution never reached
    /// central and nothing counted it. Now numbering is raised above 28
    /// durably, 11 and 12 go as 29 and 30 and are applied, the next batch
    /// is 31, and the renumbering is counted.
    #[test]
    fn after_a_restore_the_outbox_is_renumbered_above_centrals_mark_not_acked_away() {
        let dir = tempfile::tempdir().unwrap();
        let store = outbox_store(dir.path());
        let metrics = crate::metrics::UplinkMetrics::default();
        let open = || {
            crate::outbox::Outbox::open(store.clone(), Default::default(), metrics.clone()).unwrap()
        };
        let (site, tenant) = ("site-1".into(), "msp".into());
        let ob = open();
        for i in 1..=12u64 {
            if i == 12 {
                crate::outbox::push_alert_transition(&store, &resolved(5, 1_000 + i)).unwrap();
            }
            assert_eq!(ob.compact(&site, &tenant, 1_000 + i).unwrap().seq, i);
        }
        ob.ack_up_to(10).unwrap();
        assert_eq!((ob.stats().next_seq, ob.seqs()), (13, vec![11, 12]));
        let mut central = CentralModel {
            applied_up_to: 28,
            applied_above: BTreeSet::new(),
            applied: Vec::new(),
            duplicates: 0,
        };

        settle_welcome(&ob, 28, &[]).unwrap();
        assert_eq!(
            ob.seqs(),
            vec![29, 30],
            "renumbered above central's mark, not deleted"
        );
        assert_eq!(ob.stats().next_seq, 31);
        assert_eq!(metrics.sequence_raised.get(), 1);
        assert_eq!(metrics.batches_renumbered.get(), 2);
        drain(&ob, &mut central);
        assert_eq!(central.duplicates, 0);
        assert_eq!(
            central.applied.iter().map(|b| b.seq).collect::<Vec<_>>(),
            vec![29, 30]
        );
        assert_eq!(
            central.applied[0].created_ms, 1_011,
            "the old batch 11, in order"
        );
        assert_eq!(central.applied[1].alerts, vec![resolved(5, 1_012)]);
        // The next batch follows, and the raised numbering is durable.
        assert_eq!(ob.compact(&site, &tenant, 2_000).unwrap().seq, 31);
        drop(ob);
        let ob = open();
        assert_eq!(ob.stats().next_seq, 32);
        assert_eq!(ob.seqs(), vec![31]);
        // The next Welcome is the normal case again.
        settle_welcome(&ob, central.applied_up_to, &[]).unwrap();
        assert_eq!(ob.seqs(), vec![31]);
        drain(&ob, &mut central);
        assert_eq!((central.applied_up_to, central.duplicates), (31, 0));
        assert_eq!(metrics.sequence_raised.get(), 1);
    }

    /// A number above central's prefix counts too: with 40 applied out of
    /// order the stored batches go from 41.
    #[test]
    fn a_number_central_applied_out_of_order_above_next_seq_also_raises_the_numbering() {
        let dir = tempfile::tempdir().unwrap();
        let store = outbox_store(dir.path());
        let metrics = crate::metrics::UplinkMetrics::default();
        let ob = crate::outbox::Outbox::open(store, Default::default(), metrics.clone()).unwrap();
        for i in 1..=3u64 {
            ob.compact(&"site-1".into(), &"msp".into(), i).unwrap();
        }
        settle_welcome(&ob, 1, &[40]).unwrap();
        assert_eq!(ob.seqs(), vec![41, 42, 43]);
        assert_eq!(ob.stats().next_seq, 44);
        for s in ob.seqs() {
            assert_eq!(
                batch::decode(&ob.get(s).unwrap().unwrap().payload)
                    .unwrap()
                    .seq,
                s
            );
        }
        assert_eq!(metrics.batches_renumbered.get(), 3);
    }

    /// The normal case is unchanged: batches central applied before their
    /// acks were lost are acked at the Welcome, the rest kept as they are.
    #[test]
    fn batches_central_already_applied_are_acked_at_welcome() {
        let dir = tempfile::tempdir().unwrap();
        let store = outbox_store(dir.path());
        let metrics = crate::metrics::UplinkMetrics::default();
        let ob = crate::outbox::Outbox::open(store, Default::default(), metrics.clone()).unwrap();
        for i in 1..=5u64 {
            ob.compact(&"site-1".into(), &"msp".into(), i).unwrap();
        }
        settle_welcome(&ob, 2, &[4]).unwrap();
        assert_eq!(ob.seqs(), vec![3, 5]);
        assert_eq!(ob.stats().next_seq, 6);
        assert_eq!(metrics.sequence_raised.get(), 0);
        assert_eq!(metrics.batches_renumbered.get(), 0);
    }

    #[test]
    fn an_older_central_refusing_the_version_makes_the_site_step_down_one_version() {
        use crate::wire::close;
        assert_eq!(
            fallback_version(Some(close::UNSUPPORTED_VERSION), 3),
            Some(2),
            "a central of version 2 still takes commands"
        );
        assert_eq!(
            fallback_version(Some(close::UNSUPPORTED_VERSION), 2),
            Some(1)
        );
        assert_eq!(fallback_version(Some(close::UNSUPPORTED_VERSION), 1), None);
        assert_eq!(fallback_version(Some(close::PROTOCOL), 2), None);
        assert_eq!(fallback_version(None, 2), None);
    }

    #[test]
    fn newest_first_after_reconnect_then_oldest_first_and_fresh_batches_jump_ahead() {
        let none = BTreeSet::new();
        // Backlog 1..=5 at connect: newest first.
        assert_eq!(pick_next(&[1, 2, 3, 4, 5], &none, 0), Some(5));
        let f: BTreeSet<u64> = [5].into();
        assert_eq!(pick_next(&[1, 2, 3, 4, 5], &f, 5), Some(1));
        let f: BTreeSet<u64> = [5, 1].into();
        assert_eq!(pick_next(&[1, 2, 3, 4, 5], &f, 5), Some(2));
        // Batch 6 compacted during the drain jumps ahead of 3 and 4.
        let f: BTreeSet<u64> = [5, 1, 2].into();
        assert_eq!(pick_next(&[1, 2, 3, 4, 5, 6], &f, 5), Some(6));
        let f: BTreeSet<u64> = [5, 1, 2, 6].into();
        assert_eq!(pick_next(&[1, 2, 3, 4, 5, 6], &f, 6), Some(3));
        // Nothing left.
        let all: BTreeSet<u64> = [1, 2].into();
        assert_eq!(pick_next(&[1, 2], &all, 2), None);
        assert_eq!(pick_next(&[], &none, 0), None);
    }
}
