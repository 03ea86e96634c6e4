//! Webhook notifications: body shapes (Outpost JSON, Slack, Teams) and
//! delivery over HTTP(S).

use std::time::Duration;

use anyhow::{Context, bail};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};

use crate::alerts::model::{Alert, NotifyEvent, WebhookFormat};

/// One line describing the alert, for chat formats and e-mail subjects.
pub fn summary(event: NotifyEvent, a: &Alert) -> String {
    let what = match (&a.comparison, a.threshold) {
        (Some(c), Some(t)) => format!(
            "{}{} {} {} (value {})",
            a.metric,
            if a.label.is_empty() {
                String::new()
            } else {
                format!("[{}]", a.label)
            },
            c.symbol(),
            t,
            a.value
                .map(|v| format!("{v}"))
                .unwrap_or_else(|| "-".into())
        ),
        _ => a.metric.clone(),
    };
    let stale = a
        .stale
        .as_deref()
        .map(|why| format!(" (stale: {why})"))
        .unwrap_or_default();
    format!(
        "[{}][{}] {} on {} ({}): {}{stale}",
        event.as_str().to_uppercase(),
        a.severity.as_str(),
        a.rule_name,
        a.hostname,
        a.device,
        what
    )
}

/// The body sent to a webhook.
pub fn body(format: WebhookFormat, event: NotifyEvent, a: &Alert) -> Value {
    match format {
        WebhookFormat::Json => json!({
            "version": 1,
            "event": event.as_str(),
            "alert": {
                "id": a.id,
                "state": a.state.as_str(),
                "rule_id": a.rule_id,
                "rule": a.rule_name,
                "severity": a.severity.as_str(),
                "device": a.device.to_string(),
                "hostname": a.hostname,
                "tenant": a.tenant,
                "customer": a.customer,
                "metric": a.metric,
                "label": a.label,
                "value": a.value,
                "comparison": a.comparison.map(|c| c.symbol()),
                "threshold": a.threshold,
                "started_ms": a.started_ms,
                "fired_ms": a.fired_ms,
                "resolved_ms": a.resolved_ms,
                "acknowledged_by": a.acknowledged_by,
                "escalation_step": a.escalation_step,
                "stale": a.stale,
            },
            "summary": summary(event, a),
        }),
        WebhookFormat::Slack => json!({ "text": summary(event, a) }),
        WebhookFormat::Teams => json!({
            "@type": "MessageCard",
            "@context": "https://schema.org/extensions",
            "summary": summary(event, a),
            "themeColor": match (event, a.severity) {
                (NotifyEvent::Resolved, _) => "2EB886",
                (_, crate::alerts::model::Severity::Critical) => "D40000",
                (_, crate::alerts::model::Severity::Warning) => "F2C744",
                _ => "439FE0",
            },
            "title": format!("{} — {}", a.rule_name, event.as_str()),
            "text": summary(event, a),
        }),
    }
}

/// HTTP(S) client for webhooks (one per dispatcher).
pub type HttpsClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

pub fn client() -> anyhow::Result<HttpsClient> {
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_provider_and_webpki_roots(outpost_proto::tls::provider())
        .context("building the webhook TLS client")?
        .https_or_http()
        .enable_http1()
        .build();
    Ok(Client::builder(TokioExecutor::new()).build(https))
}

/// POSTs `body` to `url`; a 2xx answer is success.
pub async fn send(
    client: &HttpsClient,
    url: &str,
    body: &Value,
    timeout: Duration,
) -> anyhow::Result<()> {
    let req = hyper::Request::post(url)
        .header("content-type", "application/json")
        .header("user-agent", concat!("outpost/", env!("CARGO_PKG_VERSION")))
        .body(Full::new(Bytes::from(serde_json::to_vec(body)?)))
        .with_context(|| format!("bad webhook url {url:?}"))?;
    let resp = tokio::time::timeout(timeout, client.request(req))
        .await
        .map_err(|_| anyhow::anyhow!("no answer within {timeout:?}"))?
        .with_context(|| format!("connecting to {url}"))?;
    let status = resp.status();
    if !status.is_success() {
        let text = resp
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        bail!(
            "{url} answered {status}: {}",
            String::from_utf8_lossy(&text)
                .chars()
                .take(200)
                .collect::<String>()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alerts::eval::tests::alert;
    use crate::alerts::model::AlertState;

    #[test]
    fn body_shapes() {
        let a = alert(AlertState::Firing, 0, 0);
        let j = body(WebhookFormat::Json, NotifyEvent::Firing, &a);
        assert_eq!(j["event"], "firing");
        assert_eq!(j["alert"]["device"], "0000000000000001");
        assert_eq!(j["alert"]["threshold"], 90.0);
        let s = body(WebhookFormat::Slack, NotifyEvent::Resolved, &a);
        assert!(
            s["text"]
                .as_str()
                .unwrap()
                .starts_with("[RESOLVED][warning] r on h")
        );
        let t = body(WebhookFormat::Teams, NotifyEvent::Firing, &a);
        assert_eq!(t["@type"], "MessageCard");
        assert_eq!(t["themeColor"], "F2C744");
    }

    #[test]
    fn a_stale_resolution_says_so_in_the_body_and_the_summary() {
        let mut a = alert(AlertState::Resolved, 0, 0);
        let j = body(WebhookFormat::Json, NotifyEvent::Resolved, &a);
        assert_eq!(j["alert"]["stale"], serde_json::Value::Null);
        assert!(!summary(NotifyEvent::Resolved, &a).contains("stale"));
        a.stale = Some("no sample for 5m".into());
        let j = body(WebhookFormat::Json, NotifyEvent::Resolved, &a);
        assert_eq!(j["alert"]["stale"], "no sample for 5m");
        assert_eq!(
            j["summary"],
            "[RESOLVED][warning] r on h (0000000000000001): cpu > 90 (value 99) (stale: no sample for 5m)"
        );
    }
}
