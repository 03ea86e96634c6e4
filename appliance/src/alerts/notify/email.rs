//! E-mail notifications over SMTP (lettre): plain, STARTTLS or implicit TLS,
//! optional authentication.

use std::time::Duration;

use anyhow::Context;
use lettre::message::header::ContentType;
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

use super::webhook::summary;
use crate::alerts::model::{Alert, ChannelKind, NotifyEvent, SmtpTls};

fn text(event: NotifyEvent, a: &Alert) -> String {
    let mut t = format!("{}\n\n", summary(event, a));
    t.push_str(&format!(
        "alert     {}\nstate     {}\nrule      {} ({})\nseverity  {}\n",
        a.id,
        a.state.as_str(),
        a.rule_name,
        a.rule_id,
        a.severity.as_str()
    ));
    t.push_str(&format!(
        "device    {} ({})\ntenant    {} / {}\n",
        a.hostname, a.device, a.tenant, a.customer
    ));
    if let Some(v) = a.value {
        t.push_str(&format!("value     {v}\n"));
    }
    if let Some(ack) = &a.acknowledged_by {
        t.push_str(&format!("acked by  {ack}\n"));
    }
    t.push_str("\nAcknowledge with: outpost alerts ack ");
    t.push_str(&a.id.to_string());
    t.push('\n');
    t
}

/// Sends one notification e-mail through the channel's SMTP server.
pub async fn send(
    kind: &ChannelKind,
    event: NotifyEvent,
    a: &Alert,
    timeout: Duration,
) -> anyhow::Result<()> {
    let ChannelKind::Email {
        smtp_host,
        smtp_port,
        tls,
        username,
        password,
        from,
        to,
    } = kind
    else {
        anyhow::bail!("not an e-mail channel");
    };
    let mut msg = Message::builder()
        .from(
            from.parse()
                .with_context(|| format!("bad from address {from:?}"))?,
        )
        .subject(summary(event, a))
        .header(ContentType::TEXT_PLAIN);
    for r in to {
        msg = msg.to(r.parse().with_context(|| format!("bad recipient {r:?}"))?);
    }
    let msg = msg.body(text(event, a)).context("building the e-mail")?;
    let builder = match tls {
        SmtpTls::None => AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(smtp_host),
        SmtpTls::Starttls => AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(smtp_host)
            .with_context(|| format!("STARTTLS to {smtp_host}"))?,
        SmtpTls::Tls => AsyncSmtpTransport::<Tokio1Executor>::relay(smtp_host)
            .with_context(|| format!("TLS to {smtp_host}"))?,
    };
    let mut builder = builder.port(*smtp_port).timeout(Some(timeout));
    if let (Some(u), Some(p)) = (username, password) {
        builder = builder.credentials(Credentials::new(u.clone(), p.clone()));
    }
    builder
        .build()
        .send(msg)
        .await
        .with_context(|| format!("sending through {smtp_host}:{smtp_port}"))?;
    Ok(())
}
