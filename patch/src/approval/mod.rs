//! Patch approvals, pure: approval rules per scope (tenant, customer, tag,
//! device), manual approvals and declines, and [`decide`], which says
//! whether a patch is approved for a device and which rule decided.
//!
//! Owns the rule model (stored as JSON by the appliance and central, sent
//! down the uplink) and the resolution. Must not touch storage, the
//! clock (`now` is a parameter, Unix ms) or the audit trail (the caller
//! audits every change it stores).
//!
//! Resolution:
//!
//! 1. Every rule whose scope covers the device is evaluated against the
//!    patch; it either does not apply, or gives a verdict: **decline**
//!    (a manual decline, or the package is on an auto rule's deny list),
//!    **approve** (a manual approval, or an auto rule whose criteria hold
//!    and whose delay has elapsed), or **deferred** (an auto rule whose
//!    criteria hold but whose delay has not elapsed yet at `now`).
//! 2. The most specific level that has a verdict decides: device > tag >
//!    customer > tenant. All of a device's tags are one level.
//! 3. Within that level, decline beats approve beats deferred; among
//!    equal verdicts the rule with the smallest id is named.
//! 4. No verdict at any level: not approved ("approve it by hand").
//!
//! A deferral at a more specific level holds the patch back even when a
//! broader level would approve it now: the more specific rule governs.

#[cfg(test)]
mod tests;

use crate::assess::MissingPatch;
use crate::severity::Severity;

/// Milliseconds in a day (the unit of [`AutoRule::delay_days`]).
pub const DAY_MS: u64 = 86_400_000;

/// A patch's identity across devices: the source package and the exact
/// candidate version (`MissingPatch::source` / `candidate`).
#[derive(
    Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct PatchKey {
    pub package: String,
    pub version: String,
}

impl PatchKey {
    pub fn new(package: &str, version: &str) -> PatchKey {
        PatchKey {
            package: package.to_string(),
            version: version.to_string(),
        }
    }
}

impl std::fmt::Display for PatchKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}={}", self.package, self.version)
    }
}

/// What the rules look at in a patch.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PatchFacts {
    pub key: PatchKey,
    /// Highest severity of the CVEs it fixes; `None` when it fixes none
    /// known (a feature or bug-fix update, or a security-pocket update
    /// whose CVEs are not in the catalog).
    pub severity: Option<Severity>,
    /// A security update (security pocket, or fixes a CVE above
    /// `unimportant`).
    pub security: bool,
    /// When the fix was published (Unix ms); `None` when unknown (then a
    /// rule with a delay never auto-approves it).
    pub published_ms: Option<u64>,
}

impl PatchFacts {
    /// The facts of a missing patch; `None` when its candidate's source
    /// version is unknown (such a patch cannot be named exactly, so it
    /// cannot be approved). Publication is taken as the first time the
    /// device saw this candidate offered (`candidate_first_seen_ms`): the
    /// earliest it can know of it. Not the source's `first_seen_ms`: a
    /// device long behind on a package would otherwise take a release of
    /// today as published weeks ago.
    pub fn from_missing(p: &MissingPatch) -> Option<PatchFacts> {
        let candidate = p.candidate.as_ref()?;
        Some(PatchFacts {
            key: PatchKey::new(p.source.as_str(), candidate.as_str()),
            severity: p.severity,
            security: p.is_security(),
            published_ms: Some(p.candidate_first_seen_ms),
        })
    }
}

/// Where a rule applies.
#[derive(
    Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ApprovalScope {
    Tenant { tenant: String },
    Customer { customer: String },
    Tag { tag: String },
    Device { device: String },
}

/// Precedence levels, lowest first.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Level {
    Tenant,
    Customer,
    Tag,
    Device,
}

impl Level {
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Tenant => "tenant",
            Level::Customer => "customer",
            Level::Tag => "tag",
            Level::Device => "device",
        }
    }
}

impl ApprovalScope {
    pub fn level(&self) -> Level {
        match self {
            ApprovalScope::Tenant { .. } => Level::Tenant,
            ApprovalScope::Customer { .. } => Level::Customer,
            ApprovalScope::Tag { .. } => Level::Tag,
            ApprovalScope::Device { .. } => Level::Device,
        }
    }

    /// Whether this scope covers the device.
    pub fn covers(&self, d: &DeviceScopes) -> bool {
        match self {
            ApprovalScope::Tenant { tenant } => *tenant == d.tenant,
            ApprovalScope::Customer { customer } => *customer == d.customer,
            ApprovalScope::Tag { tag } => d.tags.iter().any(|t| t == tag),
            ApprovalScope::Device { device } => *device == d.device,
        }
    }
}

impl std::fmt::Display for ApprovalScope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ApprovalScope::Tenant { tenant } => write!(f, "tenant {tenant}"),
            ApprovalScope::Customer { customer } => write!(f, "customer {customer}"),
            ApprovalScope::Tag { tag } => write!(f, "tag {tag}"),
            ApprovalScope::Device { device } => write!(f, "device {device}"),
        }
    }
}

/// What a device belongs to (from the device registry).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DeviceScopes {
    pub tenant: String,
    pub customer: String,
    pub tags: Vec<String>,
    pub device: String,
}

/// A rule-based approval: every criterion set must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct AutoRule {
    /// Approve only patches whose severity is at least this; a patch with
    /// no severity never meets a threshold. `None`: any severity (and
    /// none).
    pub min_severity: Option<Severity>,
    /// Approve only security updates.
    pub security_only: bool,
    /// Approve only once the fix has been published this many days.
    pub delay_days: u32,
    /// When not empty, the rule applies only to these source packages.
    pub allow: Vec<String>,
    /// These source packages are declined by this rule (whatever the
    /// other criteria say).
    pub deny: Vec<String>,
}

/// A manual verdict on one exact patch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Approve,
    Decline,
}

/// What a rule does.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum RuleKind {
    Auto(AutoRule),
    Manual { patch: PatchKey, verdict: Verdict },
}

/// One stored approval rule.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ApprovalRule {
    /// Unique among the rules (the appliance's or central's id).
    pub id: String,
    pub scope: ApprovalScope,
    pub rule: RuleKind,
}

/// Why a rule cannot be stored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuleError {
    #[error("rule id must not be empty")]
    EmptyId,
    #[error("the {0} of a scope must not be empty")]
    EmptyScope(&'static str),
    #[error("a manual approval names a package and an exact version; got {0:?}")]
    BadPatch(String),
    #[error("package {0:?} is on both the allow and the deny list")]
    AllowedAndDenied(String),
    #[error("delay of {0} days is more than {max} days", max = MAX_DELAY_DAYS)]
    DelayTooLong(u32),
    #[error("a package list holds {0} names, more than {max}", max = MAX_LIST)]
    ListTooLong(usize),
}

/// Bounds of a rule.
pub const MAX_DELAY_DAYS: u32 = 3650;
pub const MAX_LIST: usize = 10_000;

impl ApprovalRule {
    /// Checks a rule before it is stored.
    pub fn validate(&self) -> Result<(), RuleError> {
        if self.id.trim().is_empty() {
            return Err(RuleError::EmptyId);
        }
        let empty = match &self.scope {
            ApprovalScope::Tenant { tenant } => tenant.is_empty().then_some("tenant"),
            ApprovalScope::Customer { customer } => customer.is_empty().then_some("customer"),
            ApprovalScope::Tag { tag } => tag.is_empty().then_some("tag"),
            ApprovalScope::Device { device } => device.is_empty().then_some("device"),
        };
        if let Some(what) = empty {
            return Err(RuleError::EmptyScope(what));
        }
        match &self.rule {
            RuleKind::Manual { patch, .. } => {
                if patch.package.trim().is_empty()
                    || crate::version::DebVersion::parse(&patch.version).is_err()
                {
                    return Err(RuleError::BadPatch(patch.to_string()));
                }
            }
            RuleKind::Auto(a) => {
                if a.delay_days > MAX_DELAY_DAYS {
                    return Err(RuleError::DelayTooLong(a.delay_days));
                }
                for list in [&a.allow, &a.deny] {
                    if list.len() > MAX_LIST {
                        return Err(RuleError::ListTooLong(list.len()));
                    }
                }
                if let Some(p) = a.allow.iter().find(|p| a.deny.contains(p)) {
                    return Err(RuleError::AllowedAndDenied(p.clone()));
                }
            }
        }
        Ok(())
    }
}

/// The rule that decided, as `outpost patches approvals --device` names it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RuleRef {
    pub id: String,
    pub scope: ApprovalScope,
    pub level: Level,
    /// A manual approval or decline (not an auto rule).
    pub manual: bool,
}

impl RuleRef {
    fn of(rule: &ApprovalRule) -> RuleRef {
        RuleRef {
            id: rule.id.clone(),
            scope: rule.scope.clone(),
            level: rule.scope.level(),
            manual: matches!(rule.rule, RuleKind::Manual { .. }),
        }
    }
}

/// The outcome for one patch on one device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    Approved,
    Declined,
    /// An auto rule will approve it at `at_ms` (unless rules change).
    Deferred {
        at_ms: u64,
    },
    /// No rule has a verdict.
    Unapproved,
}

/// [`decide`]'s answer.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Decision {
    pub approved: bool,
    pub outcome: Outcome,
    /// The deciding rule; `None` when no rule had a verdict.
    pub rule: Option<RuleRef>,
    /// One line for a technician.
    pub explanation: String,
}

/// A rule's verdict, ordered by strength within a level.
#[derive(Debug, Clone, PartialEq, Eq)]
enum RuleVerdict {
    Deferred { at_ms: u64, why: String },
    Approve(String),
    Decline(String),
}

impl RuleVerdict {
    fn rank(&self) -> u8 {
        match self {
            RuleVerdict::Deferred { .. } => 0,
            RuleVerdict::Approve(_) => 1,
            RuleVerdict::Decline(_) => 2,
        }
    }
}

/// One rule against one patch: `None` when it does not apply.
fn evaluate(rule: &ApprovalRule, patch: &PatchFacts, now_ms: u64) -> Option<RuleVerdict> {
    match &rule.rule {
        RuleKind::Manual { patch: p, verdict } => {
            if *p != patch.key {
                return None;
            }
            Some(match verdict {
                Verdict::Approve => {
                    RuleVerdict::Approve(format!("approved by hand for {}", rule.scope))
                }
                Verdict::Decline => {
                    RuleVerdict::Decline(format!("declined by hand for {}", rule.scope))
                }
            })
        }
        RuleKind::Auto(a) => {
            let pkg = &patch.key.package;
            if a.deny.iter().any(|d| d == pkg) {
                return Some(RuleVerdict::Decline(format!(
                    "package {pkg} is on the deny list of rule {} ({})",
                    rule.id, rule.scope
                )));
            }
            if !a.allow.is_empty() && !a.allow.iter().any(|d| d == pkg) {
                return None;
            }
            if a.security_only && !patch.security {
                return None;
            }
            if let Some(min) = a.min_severity {
                match patch.severity {
                    Some(s) if s >= min => {}
                    _ => return None,
                }
            }
            let mut why = format!("auto rule {} ({})", rule.id, rule.scope);
            if let Some(min) = a.min_severity {
                why.push_str(&format!(
                    ": severity {} ≥ {min}",
                    patch.severity.map_or("none", Severity::as_str)
                ));
            }
            if a.security_only {
                why.push_str(", security update");
            }
            if a.delay_days > 0 {
                let Some(published) = patch.published_ms else {
                    // Unknown publication: the delay can never be proven.
                    return None;
                };
                let at_ms =
                    published.saturating_add(u64::from(a.delay_days).saturating_mul(DAY_MS));
                if now_ms < at_ms {
                    why.push_str(&format!(
                        ", {} days after publication not reached yet",
                        a.delay_days
                    ));
                    return Some(RuleVerdict::Deferred { at_ms, why });
                }
                why.push_str(&format!(", published more than {} days ago", a.delay_days));
            }
            Some(RuleVerdict::Approve(why))
        }
    }
}

/// Whether `patch` is approved for the device at `now_ms`, and which rule
/// decided (see the module documentation for the precedence).
pub fn decide(
    patch: &PatchFacts,
    device: &DeviceScopes,
    rules: &[ApprovalRule],
    now_ms: u64,
) -> Decision {
    // The strongest verdict at the most specific level.
    let mut best: Option<(Level, u8, &ApprovalRule, RuleVerdict)> = None;
    for rule in rules.iter().filter(|r| r.scope.covers(device)) {
        let Some(v) = evaluate(rule, patch, now_ms) else {
            continue;
        };
        let key = (rule.scope.level(), v.rank());
        let better = match &best {
            None => true,
            Some((level, rank, r, _)) => {
                key > (*level, *rank) || (key == (*level, *rank) && rule.id < r.id)
            }
        };
        if better {
            best = Some((key.0, key.1, rule, v));
        }
    }
    match best {
        None => Decision {
            approved: false,
            outcome: Outcome::Unapproved,
            rule: None,
            explanation: format!("no rule approves {}; approve it by hand", patch.key),
        },
        Some((_, _, rule, verdict)) => {
            let rule_ref = RuleRef::of(rule);
            match verdict {
                RuleVerdict::Approve(why) => Decision {
                    approved: true,
                    outcome: Outcome::Approved,
                    rule: Some(rule_ref),
                    explanation: why,
                },
                RuleVerdict::Decline(why) => Decision {
                    approved: false,
                    outcome: Outcome::Declined,
                    rule: Some(rule_ref),
                    explanation: why,
                },
                RuleVerdict::Deferred { at_ms, why } => Decision {
                    approved: false,
                    outcome: Outcome::Deferred { at_ms },
                    rule: Some(rule_ref),
                    explanation: why,
                },
            }
        }
    }
}
