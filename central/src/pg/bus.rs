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
//! delays work (to the next `Welcome` or resend) but never loses it.

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
    };
    Some((n.t, n.s, d))
}

fn count(c: &Central, event: &str) {
    c.metrics
        .downlink_notices
        .get_or_create(&ReasonLabel {
            reason: event.into(),
        })
        .inc();
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
    tokio::spawn(run(
        url,
        Arc::downgrade(central),
        rx,
        listening_tx,
        shutdown,
    ));
    listening
}

async fn listen(
    url: &str,
) -> Result<
    (tokio_postgres::Client, mpsc::UnboundedReceiver<String>),
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
                    if ntx.send(n.payload().to_string()).is_err() {
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
    client.batch_execute(&format!("LISTEN {CHANNEL}")).await?;
    Ok((client, nrx))
}

async fn run(
    url: String,
    central: Weak<Central>,
    mut out: mpsc::UnboundedReceiver<String>,
    listening: watch::Sender<bool>,
    shutdown: CancellationToken,
) {
    loop {
        let r = listen(&url).await;
        listening.send_replace(r.is_ok());
        match r {
            Ok((client, mut notices)) => loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    p = out.recv() => {
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
                        let Some(p) = n else {
                            count(&c, "listen_lost");
                            warn!("lost the downlink notice connection; reconnecting");
                            break;
                        };
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
        ] {
            let p = encode(&t, &s, &d);
            assert_eq!(decode(&p), Some((t.clone(), s.clone(), d)), "{p}");
        }
        assert_eq!(decode("{\"t\":\"msp\"}"), None);
    }
}
