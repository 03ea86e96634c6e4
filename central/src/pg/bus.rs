//! Downlink work handed between central instances over one PostgreSQL
//! (`NOTIFY outpost_downlink`): the API of any instance queues a command,
//! a cancel or a deployment order in the database and pushes it to the
//! site's stream ([`crate::downlink::Registry::push`]); when the site is
//! connected to another instance, the push becomes a notice, and the
//! instance holding the connection sends it at once
//! ([`crate::downlink::Registry::push_local`]) instead of at the site's
//! next `Welcome`.
//!
//! Owns the notice format and one dedicated connection per instance
//! (LISTEN and NOTIFY, outside the pool, reconnected after a second when
//! lost). What a notice names is read again from the store by the
//! receiving stream, so a notice carries ids only, and a lost notice
//! delays work (to the next `Welcome` or resend) but never loses it;
//! when the listener reconnects, every site stream of the instance sends
//! its open work again ([`crate::downlink::Down::Reopen`]), so work
//! noticed while it was not listening waits no longer.
//!
//! The same connection carries the console's live changes
//! (`NOTIFY outpost_live`): every change an instance publishes to its
//! own pages ([`outpost_console::LiveHub::publish`]) also goes to the
//! others, several per notice (at most [`MAX_NOTIFY_BYTES`]), from a
//! bounded queue; each instance publishes what the others sent to its
//! own pages only, and skips its own notices. A change lost on the way
//! (queue full, connection lost) is counted; the page shows it after a
//! reload.

use std::sync::{Arc, Weak};
use std::time::Duration;

use outpost_proto::ids::CommandId;
use outpost_proto::{SiteId, TenantId};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};
use tokio_postgres::AsyncMessage;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::Central;
use crate::downlink::Down;
use crate::metrics::ReasonLabel;

/// The channel every instance listens on.
pub const CHANNEL: &str = "outpost_downlink";

/// The channel of the console's live changes (device status, alerts,
/// commands) between instances: a page open on one instance sees what
/// another applied.
pub const LIVE_CHANNEL: &str = "outpost_live";

/// Largest NOTIFY payload sent (PostgreSQL's limit is 8000 bytes).
pub const MAX_NOTIFY_BYTES: usize = 7_000;

/// Live changes waiting for the listener's connection at most; more are
/// dropped (counted `live_dropped`; a page reloads to be whole again).
const LIVE_QUEUE: usize = 4_096;

/// Live changes of one instance, several per notice.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct LiveNotice {
    /// The sending instance (its own notices come back to it: skipped).
    i: u64,
    e: Vec<LiveWire>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct LiveWire {
    t: String,
    c: String,
    k: String,
    d: String,
}

/// The payloads carrying `events` of `instance`, each at most `max`
/// bytes, in order; events too big for a notice on their own are left
/// out (their count is returned).
pub fn live_payloads(
    instance: u64,
    events: &[outpost_console::live::LiveEvent],
    max: usize,
) -> (Vec<String>, u64) {
    let wire = |e: &outpost_console::live::LiveEvent| LiveWire {
        t: e.tenant.clone(),
        c: e.customer.clone(),
        k: e.kind.to_string(),
        d: e.data.clone(),
    };
    let encode = |e: &[LiveWire]| {
        serde_json::to_string(&LiveNotice {
            i: instance,
            e: e.to_vec(),
        })
        .unwrap_or_default()
    };
    let (mut out, mut skipped) = (Vec::new(), 0);
    let mut batch: Vec<LiveWire> = Vec::new();
    for e in events {
        let w = wire(e);
        if encode(std::slice::from_ref(&w)).len() > max {
            skipped += 1;
            continue;
        }
        batch.push(w);
        if encode(&batch).len() > max {
            let last = batch.pop();
            out.push(encode(&batch));
            batch = last.into_iter().collect();
        }
    }
    if !batch.is_empty() {
        out.push(encode(&batch));
    }
    (out, skipped)
}

/// The live changes of a notice, unless it is `own` instance's or not
/// one; an event of an unknown kind is left out.
pub fn live_decode(own: u64, payload: &str) -> Option<Vec<outpost_console::live::LiveEvent>> {
    let n: LiveNotice = serde_json::from_str(payload).ok()?;
    if n.i == own {
        return Some(Vec::new());
    }
    Some(
        n.e.into_iter()
            .filter_map(|w| {
                let kind = match w.k.as_str() {
                    "device" => "device",
                    "alert" => "alert",
                    "command" => "command",
                    _ => return None,
                };
                Some(outpost_console::live::LiveEvent {
                    tenant: w.t,
                    customer: w.c,
                    kind,
                    data: w.d,
                })
            })
            .collect(),
    )
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Notice {
    t: TenantId,
    s: SiteId,
    #[serde(flatten)]
    d: Wire,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "k")]
enum Wire {
    #[serde(rename = "c")]
    Command { id: CommandId },
    #[serde(rename = "x")]
    Cancel { id: CommandId, by: String },
    #[serde(rename = "d")]
    DeployOrder { order: String },
    #[serde(rename = "r")]
    Reopen,
}

/// The payload of a notice (JSON, well under NOTIFY's 8000 bytes).
pub fn encode(tenant: &TenantId, site: &SiteId, d: &Down) -> String {
    let d = match d {
        Down::Command(id) => Wire::Command { id: *id },
        Down::Cancel { id, by } => Wire::Cancel {
            id: *id,
            by: by.clone(),
        },
        Down::DeployOrder(o) => Wire::DeployOrder { order: o.clone() },
        Down::Reopen => Wire::Reopen,
    };
    serde_json::to_string(&Notice {
        t: tenant.clone(),
        s: site.clone(),
        d,
    })
    .unwrap_or_default()
}

/// A notice's payload, if it is one.
pub fn decode(payload: &str) -> Option<(TenantId, SiteId, Down)> {
    let n: Notice = serde_json::from_str(payload).ok()?;
    let d = match n.d {
        Wire::Command { id } => Down::Command(id),
        Wire::Cancel { id, by } => Down::Cancel { id, by },
        Wire::DeployOrder { order } => Down::DeployOrder(order),
        Wire::Reopen => Down::Reopen,
    };
    Some((n.t, n.s, d))
}

fn count(c: &Central, event: &str) {
    count_by(c, event, 1);
}

fn count_by(c: &Central, event: &str, n: u64) {
    c.metrics
        .downlink_notices
        .get_or_create(&ReasonLabel {
            reason: event.into(),
        })
        .inc_by(n);
}

/// Connects `central`'s downlink registry to the other instances over
/// the database at `url` until `shutdown` (a task; returns at once). The
/// receiver says whether the instance is listening now.
pub fn start(
    url: String,
    central: &Arc<Central>,
    shutdown: CancellationToken,
) -> watch::Receiver<bool> {
    let (listening_tx, listening) = watch::channel(false);
    let (tx, rx) = mpsc::unbounded_channel::<String>();
    let set = central.downlinks.set_remote(Box::new(move |t, s, d| {
        // Only fails once the task ended (shutdown).
        let _ = tx.send(encode(t, s, d));
    }));
    if !set {
        warn!("the downlink registry already hands work elsewhere; not starting the bus");
        return listening;
    }
    let (live_tx, live_rx) = mpsc::channel::<outpost_console::live::LiveEvent>(LIVE_QUEUE);
    let dropped = central
        .metrics
        .downlink_notices
        .get_or_create(&ReasonLabel {
            reason: "live_dropped".into(),
        })
        .clone();
    central
        .live
        .set_forward(outpost_console::live::Forward(Box::new(move |e| {
            if live_tx.try_send(e.clone()).is_err() {
                dropped.inc();
            }
        })));
    tokio::spawn(run(
        url,
        Arc::downgrade(central),
        Outgoing {
            downlink: rx,
            live: live_rx,
        },
        listening_tx,
        shutdown,
    ));
    listening
}

/// What this instance hands to the others.
struct Outgoing {
    downlink: mpsc::UnboundedReceiver<String>,
    live: mpsc::Receiver<outpost_console::live::LiveEvent>,
}

/// Live changes sent in one go at most (then the next batch).
const LIVE_BATCH: usize = 256;

/// A notice: (channel, payload).
type Received = (String, String);

async fn listen(
    url: &str,
) -> Result<
    (tokio_postgres::Client, mpsc::UnboundedReceiver<Received>),
    Box<dyn std::error::Error + Send + Sync>,
> {
    let (mut cfg, tls) = super::tls::configure(url)?;
    cfg.application_name("outpost-central downlink");
    let (client, mut conn) = cfg.connect(tls).await?;
    let (ntx, nrx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            match std::future::poll_fn(|cx| conn.poll_message(cx)).await {
                Some(Ok(AsyncMessage::Notification(n))) => {
                    if ntx
                        .send((n.channel().to_string(), n.payload().to_string()))
                        .is_err()
                    {
                        return;
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    debug!(error = %e, "downlink notice connection ended");
                    return;
                }
                None => return,
            }
        }
    });
    client
        .batch_execute(&format!("LISTEN {CHANNEL}; LISTEN {LIVE_CHANNEL}"))
        .await?;
    Ok((client, nrx))
}

async fn run(
    url: String,
    central: Weak<Central>,
    mut out: Outgoing,
    listening: watch::Sender<bool>,
    shutdown: CancellationToken,
) {
    let instance: u64 = rand::random();
    let mut connected_before = false;
    loop {
        let r = listen(&url).await;
        listening.send_replace(r.is_ok());
        if r.is_ok() {
            // Notices sent while this instance was not listening are
            // lost: its site streams send their open work again.
            if std::mem::replace(&mut connected_before, true)
                && let Some(c) = central.upgrade()
            {
                let streams = c.downlinks.reopen_all();
                c.metrics
                    .downlink_notices
                    .get_or_create(&ReasonLabel {
                        reason: "reopened".into(),
                    })
                    .inc_by(streams as u64);
                debug!(
                    streams,
                    "notice listener back; site streams resend their open work"
                );
            }
        }
        match r {
            Ok((client, mut notices)) => loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    e = out.live.recv() => {
                        let Some(e) = e else { return };
                        let Some(c) = central.upgrade() else { return };
                        let mut events = vec![e];
                        while events.len() < LIVE_BATCH {
                            match out.live.try_recv() {
                                Ok(e) => events.push(e),
                                Err(_) => break,
                            }
                        }
                        let (payloads, too_big) = live_payloads(instance, &events, MAX_NOTIFY_BYTES);
                        count_by(&c, "live_too_big", too_big);
                        let mut failed = false;
                        for p in payloads {
                            match client.execute("SELECT pg_notify($1, $2)", &[&LIVE_CHANNEL, &p]).await {
                                Ok(_) => count(&c, "live_sent"),
                                Err(e) => {
                                    // Pages of other instances miss these
                                    // changes until they reload.
                                    count(&c, "send_failed");
                                    warn!(error = %e, "handing live changes to the other instances");
                                    failed = true;
                                    break;
                                }
                            }
                        }
                        if failed {
                            break;
                        }
                    }
                    p = out.downlink.recv() => {
                        let Some(p) = p else { return };
                        let Some(c) = central.upgrade() else { return };
                        match client.execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &p]).await {
                            Ok(_) => count(&c, "sent"),
                            Err(e) => {
                                // The work stays queued in the store (next
                                // Welcome or resend).
                                count(&c, "send_failed");
                                warn!(error = %e, "handing downlink work to the other instances");
                                break;
                            }
                        }
                    }
                    n = notices.recv() => {
                        let Some(c) = central.upgrade() else { return };
                        let Some((channel, p)) = n else {
                            count(&c, "listen_lost");
                            warn!("lost the downlink notice connection; reconnecting");
                            break;
                        };
                        if channel == LIVE_CHANNEL {
                            match live_decode(instance, &p) {
                                Some(events) => {
                                    if !events.is_empty() {
                                        count(&c, "live_received");
                                    }
                                    for e in events {
                                        c.live.publish_local(e);
                                    }
                                }
                                None => count(&c, "undecodable"),
                            }
                            continue;
                        }
                        match decode(&p) {
                            Some((t, s, d)) => {
                                count(&c, "received");
                                c.downlinks.push_local(&t, &s, d);
                            }
                            None => count(&c, "undecodable"),
                        }
                    }
                }
            },
            Err(e) => warn!(error = %e, "connecting the downlink notice listener"),
        }
        listening.send_replace(false);
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_of_downlink_work_survives_the_notice_round_trip() {
        let (t, s) = (TenantId::from("msp"), SiteId::from("s-1"));
        for d in [
            Down::Command(CommandId([7; 16])),
            Down::Cancel {
                id: CommandId([8; 16]),
                by: "ana@central".into(),
            },
            Down::DeployOrder("o-1".into()),
            Down::Reopen,
        ] {
            let p = encode(&t, &s, &d);
            assert_eq!(decode(&p), Some((t.clone(), s.clone(), d)), "{p}");
        }
        assert_eq!(decode("{\"t\":\"msp\"}"), None);
    }
}
