//! One severity scale for every source: the Debian tracker's urgency,
//! Ubuntu's priority, and CVSS base scores map onto [`Severity`].
//!
//! Order (lowest first): `unimportant` < `unknown` < `low` < `medium` <
//! `high` < `critical`. `unknown` is the tracker's "not yet assigned" (and
//! any value this build does not know): below `low` when picking a patch's
//! highest severity, weighted like `medium` in the risk score (see
//! `assess::risk`).

use std::fmt;

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Debian `unimportant`, Ubuntu `negligible`, CVSS 0.0: shown apart,
    /// never counted in risk or compliance.
    Unimportant,
    /// Debian `not yet assigned`, Ubuntu `untriaged`, or no rating at all.
    Unknown,
    Low,
    Medium,
    High,
    /// Ubuntu `critical`, CVSS ≥ 9.0 (Debian's scale stops at `high`).
    Critical,
}

impl Severity {
    pub const ALL: [Severity; 6] = [
        Severity::Unimportant,
        Severity::Unknown,
        Severity::Low,
        Severity::Medium,
        Severity::High,
        Severity::Critical,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Unimportant => "unimportant",
            Severity::Unknown => "unknown",
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
            Severity::Critical => "critical",
        }
    }

    /// Parses what [`Severity::as_str`] prints (for policies and CLI flags).
    pub fn parse(s: &str) -> Option<Severity> {
        Severity::ALL.into_iter().find(|v| v.as_str() == s)
    }
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A Debian tracker urgency (also used by Debian's OSV records in
/// `ecosystem_specific.urgency`). Returns the severity and whether the
/// release no longer supports the package (`end-of-life`); `None` for a
/// value this build does not know. The tracker marks some urgencies with
/// a trailing `*`/`**` (set from another source): ignored.
pub fn debian_urgency(urgency: &str) -> Option<(Severity, bool)> {
    let u = urgency.trim().trim_end_matches('*').trim();
    Some(match u {
        "unimportant" => (Severity::Unimportant, false),
        "low" => (Severity::Low, false),
        "medium" => (Severity::Medium, false),
        "high" => (Severity::High, false),
        "not yet assigned" | "" => (Severity::Unknown, false),
        "end-of-life" => (Severity::Unknown, true),
        _ => return None,
    })
}

/// An Ubuntu priority (OSV severity of type `Ubuntu`).
pub fn ubuntu_priority(priority: &str) -> Option<Severity> {
    Some(match priority.trim().to_ascii_lowercase().as_str() {
        "negligible" => Severity::Unimportant,
        "untriaged" => Severity::Unknown,
        "low" => Severity::Low,
        "medium" => Severity::Medium,
        "high" => Severity::High,
        "critical" => Severity::Critical,
        _ => return None,
    })
}

/// CVSS v3 qualitative rating of a base score (v2 scores use the same
/// bands; v2 has no `critical`, a v2 score ≥ 9.0 is reported `high`).
pub fn cvss_band(score: f64, v2: bool) -> Severity {
    if score <= 0.0 {
        Severity::Unimportant
    } else if score < 4.0 {
        Severity::Low
    } else if score < 7.0 {
        Severity::Medium
    } else if score < 9.0 || v2 {
        Severity::High
    } else {
        Severity::Critical
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debian_urgencies_map_with_end_of_life_and_starred_values() {
        assert_eq!(debian_urgency("high"), Some((Severity::High, false)));
        assert_eq!(debian_urgency("low**"), Some((Severity::Low, false)));
        assert_eq!(
            debian_urgency("not yet assigned"),
            Some((Severity::Unknown, false))
        );
        assert_eq!(
            debian_urgency("end-of-life"),
            Some((Severity::Unknown, true))
        );
        assert_eq!(debian_urgency("catastrophic"), None);
    }

    #[test]
    fn severities_order_from_unimportant_to_critical() {
        assert!(Severity::Unimportant < Severity::Unknown);
        assert!(Severity::Unknown < Severity::Low);
        assert!(Severity::High < Severity::Critical);
        for s in Severity::ALL {
            assert_eq!(Severity::parse(s.as_str()), Some(s));
        }
    }

    #[test]
    fn cvss_scores_fall_in_their_bands() {
        assert_eq!(cvss_band(9.8, false), Severity::Critical);
        assert_eq!(cvss_band(9.8, true), Severity::High);
        assert_eq!(cvss_band(7.0, false), Severity::High);
        assert_eq!(cvss_band(5.3, false), Severity::Medium);
        assert_eq!(cvss_band(0.1, false), Severity::Low);
        assert_eq!(cvss_band(0.0, false), Severity::Unimportant);
    }
}
