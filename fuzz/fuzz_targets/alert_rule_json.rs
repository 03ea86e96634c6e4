//! The alerting JSON parsers (`outpost_alerting::model`): arbitrary text
//! as an alert rule (conditions, comparisons, humantime durations,
//! scopes), a notification channel, an escalation policy, and the alert,
//! alert event and notification records the appliance stores as JSON.
//!
//! Properties: no panic (parsing, validation, the rule accessors); what
//! parses serializes, and that JSON parses back to an equal value and
//! serializes identically (what the API accepted and stored loads again
//! unchanged).

#![no_main]

use libfuzzer_sys::fuzz_target;
use outpost_alerting::model::{
    Alert, AlertEvent, Channel, EscalationPolicy, MaintenanceWindow, Notification, Rule,
};
use outpost_fuzz::check::json_round_trip;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Some(rule) = json_round_trip::<Rule>(text) {
        let _ = rule.validate();
        let _ = (rule.metric(), rule.label_filter());
    }
    if let Some(channel) = json_round_trip::<Channel>(text) {
        let _ = channel.validate();
        let redacted = channel.redacted();
        json_round_trip::<Channel>(&serde_json::to_string(&redacted).expect("serializes"))
            .expect("a redacted channel parses");
    }
    json_round_trip::<EscalationPolicy>(text);
    json_round_trip::<Alert>(text);
    json_round_trip::<AlertEvent>(text);
    json_round_trip::<Notification>(text);
    // Windows have their own target; a rule-shaped input may be one too.
    json_round_trip::<MaintenanceWindow>(text);
});
