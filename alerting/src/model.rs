//! Alerting data model: rules, channels, escalation policies, maintenance
//! windows, alert records and their transitions, notifications.
//!
//! These are stored as JSON (configuration-like, evolving shapes) and are
//! also the admin API's request and answer bodies.

use std::time::Duration;

use outpost_proto::DeviceId;
use outpost_proto::{CustomerId, TenantId};
use serde::{Deserialize, Serialize};

/// Comparison of a sample against a threshold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Comparison {
    #[serde(rename = ">")]
    Gt,
    #[serde(rename = ">=")]
    Ge,
    #[serde(rename = "<")]
    Lt,
    #[serde(rename = "<=")]
    Le,
    #[serde(rename = "==")]
    Eq,
    #[serde(rename = "!=")]
    Ne,
}

impl Comparison {
    pub fn holds(self, value: f64, threshold: f64) -> bool {
        match self {
            Comparison::Gt => value > threshold,
            Comparison::Ge => value >= threshold,
            Comparison::Lt => value < threshold,
            Comparison::Le => value <= threshold,
            Comparison::Eq => value == threshold,
            Comparison::Ne => value != threshold,
        }
    }

    pub fn symbol(self) -> &'static str {
        match self {
            Comparison::Gt => ">",
            Comparison::Ge => ">=",
            Comparison::Lt => "<",
            Comparison::Le => "<=",
            Comparison::Eq => "==",
            Comparison::Ne => "!=",
        }
    }
}

/// Alert severity: the uplink's type, so a transition goes up unchanged.
pub use outpost_proto::alert::Severity;

/// Which devices a rule or window applies to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Scope {
    #[default]
    All,
    Tenant {
        tenant: TenantId,
    },
    Customer {
        tenant: TenantId,
        customer: CustomerId,
    },
    Tag {
        tag: String,
    },
    Device {
        device: DeviceId,
    },
}

/// What the engine knows about a device to match scopes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceScope {
    pub tenant: TenantId,
    pub customer: CustomerId,
    pub tags: Vec<String>,
    pub hostname: String,
}

impl Scope {
    pub fn matches(&self, device: DeviceId, d: &DeviceScope) -> bool {
        match self {
            Scope::All => true,
            Scope::Tenant { tenant } => &d.tenant == tenant,
            Scope::Customer { tenant, customer } => &d.tenant == tenant && &d.customer == customer,
            Scope::Tag { tag } => d.tags.iter().any(|t| t == tag),
            Scope::Device { device: id } => *id == device,
        }
    }
}

/// The condition of a rule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Condition {
    /// `metric{label} <comparison> threshold`, held for `for`.
    Threshold {
        metric: String,
        /// Only this label (mount, interface, service); any label if absent.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        label: Option<String>,
        comparison: Comparison,
        threshold: f64,
        /// How long the condition must hold before the alert fires.
        #[serde(default, rename = "for", with = "humantime_serde")]
        for_: Duration,
        /// How long the alert keeps firing after the condition stops
        /// holding (suppresses flapping).
        #[serde(default, with = "humantime_serde")]
        keep_firing_for: Duration,
        /// How long the series may be silent before an open alert stops
        /// trusting its last value and closes `stale` (default
        /// [`DEFAULT_STALE_AFTER`]; see the appliance's `alerts::eval`).
        #[serde(
            default,
            with = "humantime_serde",
            skip_serializing_if = "Option::is_none"
        )]
        stale_after: Option<Duration>,
    },
    /// The device went offline (two missed heartbeats plus grace).
    DeviceOffline,
    /// `metric{label}` not reported for `for` (by devices that reported it before).
    NoData {
        metric: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        label: Option<String>,
        #[serde(rename = "for", with = "humantime_serde")]
        for_: Duration,
    },
}

/// How long a threshold rule's series may be silent before its open
/// alert closes `stale`, unless the rule sets `stale_after`: five missed
/// samples at the agent's default 60 s interval, and well beyond the
/// offline detection of a dead device (two missed 30 s heartbeats plus
/// grace).
pub const DEFAULT_STALE_AFTER: Duration = Duration::from_secs(300);

fn default_true() -> bool {
    true
}

/// An alert rule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rule {
    #[serde(default)]
    pub id: String,
    pub name: String,
    pub condition: Condition,
    pub severity: Severity,
    #[serde(default)]
    pub scope: Scope,
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Channels notified when the alert fires (used when no escalation policy).
    #[serde(default)]
    pub channels: Vec<String>,
    /// Escalation policy (its steps decide who is notified and when).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub escalation_policy: Option<String>,
    /// Re-notify an unacknowledged firing alert this often (0 = never).
    #[serde(default, with = "humantime_serde")]
    pub renotify_interval: Duration,
    /// Shipped with the appliance (editable, not deletable).
    #[serde(default)]
    pub builtin: bool,
}

impl Rule {
    /// The metric this rule reads, if any.
    pub fn metric(&self) -> Option<&str> {
        match &self.condition {
            Condition::Threshold { metric, .. } | Condition::NoData { metric, .. } => Some(metric),
            Condition::DeviceOffline => None,
        }
    }

    pub fn label_filter(&self) -> Option<&str> {
        match &self.condition {
            Condition::Threshold { label, .. } | Condition::NoData { label, .. } => {
                label.as_deref()
            }
            Condition::DeviceOffline => None,
        }
    }

    /// Checks a rule before it is stored.
    pub fn validate(&self) -> Result<(), String> {
        if self.name.trim().is_empty() || self.name.len() > 200 {
            return Err("rule name must be 1 to 200 characters".into());
        }
        match &self.condition {
            Condition::Threshold {
                metric,
                threshold,
                stale_after,
                ..
            } => {
                if metric.is_empty() {
                    return Err("threshold rules need a metric".into());
                }
                if !threshold.is_finite() {
                    return Err("threshold must be a finite number".into());
                }
                if stale_after.is_some_and(|d| d.is_zero()) {
                    return Err("stale_after must be longer than 0s".into());
                }
            }
            Condition::NoData { metric, for_, .. } => {
                if metric.is_empty() || for_.is_zero() {
                    return Err("no_data rules need a metric and a non-zero `for`".into());
                }
            }
            Condition::DeviceOffline => {}
        }
        Ok(())
    }
}

/// How a webhook body is shaped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum WebhookFormat {
    /// Outpost's own JSON document (see README).
    #[default]
    Json,
    /// Slack incoming webhook (`{"text": ...}`).
    Slack,
    /// Microsoft Teams incoming webhook (MessageCard).
    Teams,
}

/// SMTP transport security.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum SmtpTls {
    /// Plain SMTP (a relay on the LAN or localhost).
    None,
    /// STARTTLS upgrade (port 587).
    #[default]
    Starttls,
    /// Implicit TLS (port 465).
    Tls,
}

/// Where notifications go.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ChannelKind {
    Webhook {
        url: String,
        #[serde(default)]
        format: WebhookFormat,
    },
    Email {
        smtp_host: String,
        #[serde(default = "default_smtp_port")]
        smtp_port: u16,
        #[serde(default)]
        tls: SmtpTls,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        username: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        password: Option<String>,
        from: String,
        to: Vec<String>,
    },
}

fn default_smtp_port() -> u16 {
    587
}

/// A notification channel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Channel {
    #[serde(default)]
    pub id: String,
    pub name: String,
    #[serde(flatten)]
    pub kind: ChannelKind,
}

impl Channel {
    /// The channel as shown by the API: secrets redacted.
    pub fn redacted(&self) -> Channel {
        let mut c = self.clone();
        if let ChannelKind::Email {
            password: Some(p), ..
        } = &mut c.kind
        {
            *p = "********".into();
        }
        c
    }

    pub fn validate(&self) -> Result<(), String> {
        match &self.kind {
            ChannelKind::Webhook { url, .. } => {
                if !(url.starts_with("http://") || url.starts_with("https://")) {
                    return Err("webhook url must start with http:// or https://".into());
                }
            }
            ChannelKind::Email {
                smtp_host,
                from,
                to,
                ..
            } => {
                if smtp_host.is_empty() || from.is_empty() || to.is_empty() {
                    return Err(
                        "email channels need smtp_host, from and at least one recipient".into(),
                    );
                }
            }
        }
        Ok(())
    }
}

/// One step of an escalation policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EscalationStep {
    /// Time after the alert fired (unacknowledged) before this step notifies.
    #[serde(with = "humantime_serde")]
    pub after: Duration,
    pub channels: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EscalationPolicy {
    #[serde(default)]
    pub id: String,
    pub name: String,
    pub steps: Vec<EscalationStep>,
}

/// When a maintenance window is active.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Schedule {
    /// From `start` to `end` (RFC 3339).
    OneOff { start: String, end: String },
    /// Every week on `days` (mon..sun) at `start` ("HH:MM") local time in
    /// `timezone` (IANA, e.g. "Europe/Berlin"), for `duration`.
    Weekly {
        days: Vec<String>,
        start: String,
        #[serde(with = "humantime_serde")]
        duration: Duration,
        timezone: String,
    },
}

/// What a window pauses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WindowEffect {
    /// Alerts are recorded but not notified.
    SuppressNotifications,
    /// Patch installs wait (used by patch rollouts).
    PausePatchInstalls,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MaintenanceWindow {
    #[serde(default)]
    pub id: String,
    pub name: String,
    #[serde(default)]
    pub scope: Scope,
    pub schedule: Schedule,
    #[serde(default = "default_effects")]
    pub effects: Vec<WindowEffect>,
}

fn default_effects() -> Vec<WindowEffect> {
    vec![WindowEffect::SuppressNotifications]
}

/// Lifecycle state of an alert.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AlertState {
    /// Condition holds, waiting for `for`.
    Pending,
    Firing,
    Resolved,
    /// Condition stopped holding before `for` elapsed (never fired).
    Cleared,
}

impl AlertState {
    pub fn as_str(self) -> &'static str {
        match self {
            AlertState::Pending => "pending",
            AlertState::Firing => "firing",
            AlertState::Resolved => "resolved",
            AlertState::Cleared => "cleared",
        }
    }

    pub fn is_open(self) -> bool {
        matches!(self, AlertState::Pending | AlertState::Firing)
    }
}

/// An alert: one per (rule, device, label) while open.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    pub id: u64,
    pub rule_id: String,
    pub rule_name: String,
    pub severity: Severity,
    pub device: DeviceId,
    pub hostname: String,
    pub tenant: TenantId,
    pub customer: CustomerId,
    pub metric: String,
    pub label: String,
    pub state: AlertState,
    /// When the condition started holding (appliance clock, ms).
    pub started_ms: u64,
    /// When the alert fires (or fired) if the condition keeps holding.
    pub due_ms: u64,
    pub fired_ms: Option<u64>,
    pub resolved_ms: Option<u64>,
    /// The value that triggered the last transition.
    pub value: Option<f64>,
    pub threshold: Option<f64>,
    pub comparison: Option<Comparison>,
    /// keep_firing_for: when the condition stopped holding while firing.
    pub clearing_since_ms: Option<u64>,
    /// Threshold alerts: when their series was last heard from (appliance
    /// clock): its last sample, or the appliance's start if later (silence
    /// counts only while the appliance listens). Saved with the alert's
    /// transitions, not with every sample. `None` in alerts stored before
    /// it existed: counted from `started_ms`.
    #[serde(default)]
    pub heard_ms: Option<u64>,
    /// Why the alert closed without its condition stopping (`device
    /// offline`, `no sample for 5m`): its series stopped reporting, so its
    /// last value was no longer trusted.
    #[serde(default)]
    pub stale: Option<String>,
    pub acknowledged_by: Option<String>,
    pub ack_comment: Option<String>,
    pub acknowledged_ms: Option<u64>,
    /// The maintenance window that silenced it, if any.
    pub silenced_by: Option<String>,
    /// Whether a firing notification was sent (so a resolved one follows).
    pub notified: bool,
    pub last_notified_ms: Option<u64>,
    /// When notifications started (firing, or the end of the silencing
    /// window): escalation steps count from here.
    pub notify_since_ms: Option<u64>,
    /// Escalation steps already notified.
    pub escalation_step: usize,
    pub notifications_sent: u64,
}

/// What happened to an alert, as recorded in its history (`alert_events`)
/// and shown by the API and `outpost alerts show`. The serialized names are
/// stored on disk: never rename one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A new alert starts waiting for `for`.
    Pending,
    /// pending → firing, or a new alert firing at once.
    Firing,
    /// firing → resolved.
    Resolved,
    /// pending → cleared (the condition stopped before `for`).
    Cleared,
    /// firing: the condition stopped; resolution waits for `keep_firing_for`.
    Clearing,
    /// firing: the condition holds again within `keep_firing_for`.
    FlapSuppressed,
    /// Somebody acknowledged the alert.
    Acknowledged,
    /// It fired inside a maintenance window: recorded, not notified.
    Silenced,
    /// The silencing window ended while it still fires: announced now.
    Unsilenced,
    /// The first escalation step notified (after a delay).
    Notified,
    /// A later escalation step notified.
    Escalated,
    /// An acknowledged alert got a new comment (who acknowledged it, and
    /// when, stay the first acknowledgement's).
    Commented,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Pending => "pending",
            EventKind::Firing => "firing",
            EventKind::Resolved => "resolved",
            EventKind::Cleared => "cleared",
            EventKind::Clearing => "clearing",
            EventKind::FlapSuppressed => "flap_suppressed",
            EventKind::Acknowledged => "acknowledged",
            EventKind::Silenced => "silenced",
            EventKind::Unsilenced => "unsilenced",
            EventKind::Notified => "notified",
            EventKind::Escalated => "escalated",
            EventKind::Commented => "commented",
        }
    }
}

impl std::fmt::Display for EventKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A transition of an alert, persisted with its time and triggering value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlertEvent {
    pub alert_id: u64,
    pub at_ms: u64,
    pub event: EventKind,
    pub value: Option<f64>,
    pub detail: String,
}

/// Why a notification is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NotifyEvent {
    Firing,
    Resolved,
    Reminder,
    Escalation,
}

impl NotifyEvent {
    pub fn as_str(self) -> &'static str {
        match self {
            NotifyEvent::Firing => "firing",
            NotifyEvent::Resolved => "resolved",
            NotifyEvent::Reminder => "reminder",
            NotifyEvent::Escalation => "escalation",
        }
    }
}

/// A notification waiting for delivery (or dead).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Notification {
    pub id: u64,
    pub channel_id: String,
    pub event: NotifyEvent,
    pub alert: Alert,
    pub created_ms: u64,
    pub attempts: u32,
    pub next_attempt_ms: u64,
    pub last_error: Option<String>,
    /// When the current delivery period began: the notification's creation,
    /// or the re-send of its dead letter (0 in notifications stored before
    /// the field existed: their creation). It is retried until
    /// `notify_retry_for` after this, then becomes a dead letter.
    #[serde(default)]
    pub retry_since_ms: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The event names are stored in `alert_events` and returned by the API:
    /// these exact strings, nothing else.
    #[test]
    fn event_kinds_keep_their_stored_and_api_names() {
        let names = [
            (EventKind::Pending, "pending"),
            (EventKind::Firing, "firing"),
            (EventKind::Resolved, "resolved"),
            (EventKind::Cleared, "cleared"),
            (EventKind::Clearing, "clearing"),
            (EventKind::FlapSuppressed, "flap_suppressed"),
            (EventKind::Acknowledged, "acknowledged"),
            (EventKind::Silenced, "silenced"),
            (EventKind::Unsilenced, "unsilenced"),
            (EventKind::Notified, "notified"),
            (EventKind::Escalated, "escalated"),
            (EventKind::Commented, "commented"),
        ];
        for (kind, name) in names {
            assert_eq!(kind.as_str(), name);
            assert_eq!(kind.to_string(), name);
            assert_eq!(serde_json::to_string(&kind).unwrap(), format!("\"{name}\""));
            let back: EventKind = serde_json::from_str(&format!("\"{name}\"")).unwrap();
            assert_eq!(back, kind);
        }
    }

    #[test]
    fn an_alert_event_serializes_byte_for_byte_as_before_the_enum() {
        let e = AlertEvent {
            alert_id: 7,
            at_ms: 1_700_000_000_000,
            event: EventKind::FlapSuppressed,
            value: Some(95.5),
            detail: "cpu high value=95.5".into(),
        };
        let json = r#"{"alert_id":7,"at_ms":1700000000000,"event":"flap_suppressed","value":95.5,"detail":"cpu high value=95.5"}"#;
        assert_eq!(serde_json::to_string(&e).unwrap(), json);
        assert_eq!(serde_json::from_str::<AlertEvent>(json).unwrap(), e);
    }

    #[test]
    fn notify_events_keep_their_names() {
        for (e, name) in [
            (NotifyEvent::Firing, "firing"),
            (NotifyEvent::Resolved, "resolved"),
            (NotifyEvent::Reminder, "reminder"),
            (NotifyEvent::Escalation, "escalation"),
        ] {
            assert_eq!(e.as_str(), name);
            assert_eq!(serde_json::to_string(&e).unwrap(), format!("\"{name}\""));
        }
    }
}
