//! Webhook notifications: body shapes (Outpost JSON, Slack, Teams) and
//! delivery over HTTP(S). Text that agents control (hostnames, labels)
//! is escaped for each chat format, so an agent cannot mention `@channel`,
//! forge links or inject markup in an MSP's chat.

use std::time::Duration;

use anyhow::{Context, bail};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};

use crate::alerts::model::{Alert, NotifyEvent, WebhookFormat};

/// One line describing the alert, for e-mail subjects and the JSON
/// format's `summary` (plain text: consumers escape it themselves).
pub fn summary(event: NotifyEvent, a: &Alert) -> String {
    summary_with(event, a, &|s| s.to_string())
}

/// The summary line with every interpolated text passed through `esc`:
/// hostnames and labels come from agents, and a chat format must not let
/// them reach its markup.
fn summary_with(event: NotifyEvent, a: &Alert, esc: &dyn Fn(&str) -> String) -> String {
    let what = match (&a.comparison, a.threshold) {
        (Some(c), Some(t)) => format!(
            "{}{} {} {} (value {})",
            esc(&a.metric),
            if a.label.is_empty() {
                String::new()
            } else {
                format!("[{}]", esc(&a.label))
            },
            c.symbol(),
            t,
            a.value
                .map(|v| format!("{v}"))
                .unwrap_or_else(|| "-".into())
        ),
        _ => esc(&a.metric),
    };
    let stale = a
        .stale
        .as_deref()
        .map(|why| format!(" (stale: {})", esc(why)))
        .unwrap_or_default();
    format!(
        "[{}][{}] {} on {} ({}): {}{stale}",
        event.as_str().to_uppercase(),
        a.severity.as_str(),
        esc(&a.rule_name),
        esc(&a.hostname),
        a.device,
        what
    )
}

/// Control characters (a newline would forge a second line) and
/// bidirectional overrides (they reorder what the reader sees) are
/// replaced before any chat-specific escaping.
fn visible(c: char) -> Option<char> {
    if c.is_control() {
        Some(' ')
    } else if matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' | '\u{200E}' | '\u{200F}')
    {
        Some('\u{FFFD}')
    } else {
        None
    }
}

/// Text for Slack's `text` (sent with `"mrkdwn": false`, so `*_~` and
/// backticks stay literal): `&`, `<`, `>` as Slack's three entities, so
/// `<!channel>`, `<!here>`, `<@U123>` and `<http://x|y>` links are shown as
/// typed instead of notifying or linking; `@` followed by a zero-width
/// space so `@channel`/`@here` never mention anyone.
pub fn slack_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if let Some(v) = visible(c) {
            out.push(v);
            continue;
        }
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '@' => out.push_str("@\u{200B}"),
            c => out.push(c),
        }
    }
    out
}

/// Text for a Teams MessageCard (rendered as markdown with some HTML):
/// every character that starts markdown or HTML markup (`* _ ` ~ # [ ] ( )
/// < > & | \ !`) and `@` as a numeric character reference, which renders
/// as the character itself but is never parsed as markup: no links, no
/// emphasis, no headings, no mentions.
pub fn teams_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if let Some(v) = visible(c) {
            out.push(v);
            continue;
        }
        match c {
            '*' | '_' | '`' | '~' | '#' | '[' | ']' | '(' | ')' | '<' | '>' | '&' | '|' | '\\'
            | '!' | '@' => {
                out.push_str(&format!("&#{};", c as u32));
            }
            c => out.push(c),
        }
    }
    out
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
        WebhookFormat::Slack => json!({
            "text": summary_with(event, a, &slack_escape),
            "mrkdwn": false,
        }),
        WebhookFormat::Teams => json!({
            "@type": "MessageCard",
            "@context": "https://schema.org/extensions",
            "summary": summary_with(event, a, &teams_escape),
            "themeColor": match (event, a.severity) {
                (NotifyEvent::Resolved, _) => "2EB886",
                (_, crate::alerts::model::Severity::Critical) => "D40000",
                (_, crate::alerts::model::Severity::Warning) => "F2C744",
                _ => "439FE0",
            },
            "title": format!("{} — {}", teams_escape(&a.rule_name), event.as_str()),
            "text": summary_with(event, a, &teams_escape),
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

    /// What a hostile agent can put in its hostname and a label.
    fn hostile() -> Alert {
        let mut a = alert(AlertState::Firing, 0, 0);
        a.hostname =
            "<!channel> @here *urgent* <http://evil.example/login|Reset your password>".into();
        a.label =
            "<@U024BE7LH> [click](http://evil.example) _x_ `y` ~z~ # h\n[RESOLVED] fake".into();
        a
    }

    #[test]
    fn slack_payloads_carry_no_mentions_links_or_markdown_from_agents() {
        let s = body(WebhookFormat::Slack, NotifyEvent::Firing, &hostile());
        let text = s["text"].as_str().unwrap();
        assert_eq!(s["mrkdwn"], false, "markdown off: *_~` stay literal");
        // No `<`: Slack parses mentions and links only inside `<…>`.
        for bad in ["<", "@here", "@channel", "\n"] {
            assert!(!text.contains(bad), "{bad:?} reached Slack: {text}");
        }
        assert!(text.contains("&lt;!channel&gt;"), "{text}");
        assert!(text.contains("@\u{200B}here"), "{text}");
        assert!(text.starts_with("[FIRING][warning] r on "), "{text}");
    }

    #[test]
    fn teams_payloads_carry_no_links_mentions_or_markdown_from_agents() {
        let t = body(WebhookFormat::Teams, NotifyEvent::Firing, &hostile());
        for field in ["text", "summary"] {
            let text = t[field].as_str().unwrap();
            for bad in [
                "<", "[click]", "](", "*urgent*", "_x_", "`y`", "~z~", "@", "\n", "# h",
            ] {
                assert!(!text.contains(bad), "{bad:?} reached Teams {field}: {text}");
            }
            assert!(text.contains("&#91;click&#93;&#40;http:"), "{text}");
        }
        assert!(
            t["text"]
                .as_str()
                .unwrap()
                .starts_with("[FIRING][warning] r on "),
            "our own brackets are not escaped: {}",
            t["text"]
        );
    }

    #[test]
    fn plain_hostnames_read_the_same_in_every_format() {
        let mut a = alert(AlertState::Firing, 0, 0);
        a.hostname = "web-01.example.com".into();
        let plain = summary(NotifyEvent::Firing, &a);
        let s = body(WebhookFormat::Slack, NotifyEvent::Firing, &a);
        assert_eq!(s["text"], plain.as_str());
        let t = body(WebhookFormat::Teams, NotifyEvent::Firing, &a);
        assert_eq!(t["text"], plain.as_str());
    }
}
