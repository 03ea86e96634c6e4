//! Alert vocabulary every end shares: the appliance's alert rules and
//! engine, the uplink batch and central's stored alerts use this one
//! [`Severity`]. Values only; the alert engine lives in the appliance.

use serde::{Deserialize, Serialize};

/// Severity of an alert.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    Warning,
    Critical,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        }
    }
}
