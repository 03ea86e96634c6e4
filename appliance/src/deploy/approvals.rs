//! Approvals at the site: approval rules and manual approve/decline of
//! one exact patch per scope, stored in `approval_rules` (rule id → JSON
//! [`ApprovalRule`]), validated with `outpost_patch::approval`, audited
//! (actor, scope, patch, rule) in the registry's audit log, and the
//! per-device decisions (`outpost patches approvals --device ID`) from the
//! device's missing patches and its scopes (tenant, customer, tags).
//!
//! Owns the `approval_rules` table. Must not decide anything itself
//! (`outpost_patch::approval::decide` does) nor touch deployments.

use outpost_patch::approval::{
    ApprovalRule, ApprovalScope, Decision, DeviceScopes, PatchFacts, PatchKey, RuleKind, Verdict,
    decide,
};
use outpost_patch::assess::MissingPatch;
use outpost_proto::DeviceId;
use outpost_storage::model::{AuditEntry, DeviceRecord};
use outpost_storage::{Codec, Store, Table, registry};
use serde::{Deserialize, Serialize};

/// Rule id → [`ApprovalRule`] (JSON: the shape central sends down).
pub const APPROVAL_RULES: Table = Table::new("approval_rules").codec(Codec::Json);

/// The tables of this module, for `Store::open`.
pub const TABLES: &[Table] = &[APPROVAL_RULES];

/// Most rules stored (manual verdicts included).
pub const MAX_RULES: usize = 100_000;

/// Why an approval change or query failed.
#[derive(Debug, thiserror::Error)]
pub enum ApprovalError {
    #[error("unknown device {0}")]
    UnknownDevice(String),
    #[error("unknown patch {0}: no device of this site is missing it")]
    UnknownPatch(String),
    #[error("unknown approval rule {0:?}")]
    UnknownRule(String),
    #[error("approval rule {0:?} exists already; remove it first")]
    DuplicateRule(String),
    #[error("{0}")]
    Invalid(String),
    #[error("the approval store failed: {0}")]
    Store(#[from] outpost_storage::StorageError),
}

/// What the approvals read about patches: each device's missing patches
/// (the patch service's assessments; a test double in tests).
pub trait MissingPatches: Send + Sync {
    /// The device's missing patches; `None` when it has no assessment.
    fn missing(&self, device: DeviceId) -> Option<Vec<MissingPatch>>;
    /// Whether some device of the site is missing this exact patch.
    fn knows(&self, patch: &PatchKey) -> bool;
}

impl MissingPatches for crate::patches::PatchService {
    fn missing(&self, device: DeviceId) -> Option<Vec<MissingPatch>> {
        self.view()
            .assessments
            .get(&device)
            .map(|a| a.patches.clone())
    }
    fn knows(&self, patch: &PatchKey) -> bool {
        self.view().assessments.values().any(|a| {
            a.patches.iter().any(|p| {
                p.source.as_str() == patch.package
                    && p.candidate.as_ref().map(|c| c.as_str()) == Some(patch.version.as_str())
            })
        })
    }
}

/// One patch's decision on one device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PatchDecision {
    pub patch: PatchKey,
    pub decision: Decision,
}

/// `GET /api/v1/approvals/devices/{id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceApprovals {
    pub device: String,
    pub scopes: DeviceScopes,
    /// The device has an assessment (else `decisions` is empty).
    pub assessed: bool,
    pub decisions: Vec<PatchDecision>,
    /// Missing patches that cannot be named exactly (unknown candidate
    /// source version): never approvable, listed by id.
    pub unnamed: Vec<String>,
}

impl DeviceApprovals {
    /// The exact patches approved on this device.
    pub fn approved(&self) -> Vec<PatchKey> {
        self.decisions
            .iter()
            .filter(|d| d.decision.approved)
            .map(|d| d.patch.clone())
            .collect()
    }
}

/// Every stored rule, ordered by id.
pub fn list(store: &Store) -> Result<Vec<ApprovalRule>, ApprovalError> {
    let mut out = Vec::new();
    store.scan::<ApprovalRule>(APPROVAL_RULES, &[], None, |_, r| {
        out.push(r);
        out.len() < MAX_RULES
    })?;
    Ok(out)
}

fn audit(store: &Store, actor: &str, action: &str, rule: &ApprovalRule, now_ms: u64) {
    let patch = match &rule.rule {
        RuleKind::Manual { patch, .. } => patch.to_string(),
        RuleKind::Auto(_) => "*".to_string(),
    };
    let e = AuditEntry {
        at_ms: now_ms,
        actor: actor.to_string(),
        action: action.to_string(),
        target: rule.scope.to_string(),
        detail: format!("patch {patch} rule {}", rule.id),
    };
    if let Err(e) = registry::audit(store, &e) {
        tracing::warn!(error = %e, "writing the audit log failed");
    }
}

/// Checks that a device scope names an enrolled device.
fn check_scope(store: &Store, scope: &ApprovalScope) -> Result<(), ApprovalError> {
    if let ApprovalScope::Device { device } = scope {
        let known = match device.parse::<DeviceId>() {
            Ok(id) => registry::get(store, id)?.is_some(),
            Err(_) => false,
        };
        if !known {
            return Err(ApprovalError::UnknownDevice(device.clone()));
        }
    }
    Ok(())
}

/// Adds a rule (auto or manual) under its id; a duplicate id is refused.
pub fn add_rule(
    store: &Store,
    rule: &ApprovalRule,
    actor: &str,
    now_ms: u64,
) -> Result<(), ApprovalError> {
    rule.validate()
        .map_err(|e| ApprovalError::Invalid(e.to_string()))?;
    check_scope(store, &rule.scope)?;
    if store
        .get::<ApprovalRule>(APPROVAL_RULES, rule.id.as_bytes())?
        .is_some()
    {
        return Err(ApprovalError::DuplicateRule(rule.id.clone()));
    }
    store.put(APPROVAL_RULES, rule.id.as_bytes(), rule)?;
    audit(store, actor, "approval.rule.add", rule, now_ms);
    Ok(())
}

/// Removes a rule; returns it.
pub fn remove_rule(
    store: &Store,
    id: &str,
    actor: &str,
    now_ms: u64,
) -> Result<ApprovalRule, ApprovalError> {
    let Some(rule) = store.get::<ApprovalRule>(APPROVAL_RULES, id.as_bytes())? else {
        return Err(ApprovalError::UnknownRule(id.to_string()));
    };
    let mut b = store.batch();
    b.delete(APPROVAL_RULES, id.as_bytes())?;
    store.write(b)?;
    audit(store, actor, "approval.rule.remove", &rule, now_ms);
    Ok(rule)
}

/// The id of the manual verdict on `patch` for `scope`: one per (scope,
/// patch), so approving after a decline replaces the decline.
pub fn manual_rule_id(scope: &ApprovalScope, patch: &PatchKey) -> String {
    let s = match scope {
        ApprovalScope::Tenant { tenant } => format!("tenant:{tenant}"),
        ApprovalScope::Customer { customer } => format!("customer:{customer}"),
        ApprovalScope::Tag { tag } => format!("tag:{tag}"),
        ApprovalScope::Device { device } => format!("device:{device}"),
    };
    format!("manual/{s}/{patch}")
}

/// Approves or declines one exact patch for a scope (replacing an earlier
/// verdict on it there). An unknown device or a patch no device misses is
/// refused.
pub fn set_manual(
    store: &Store,
    patches: &dyn MissingPatches,
    patch: PatchKey,
    scope: ApprovalScope,
    verdict: Verdict,
    actor: &str,
    now_ms: u64,
) -> Result<ApprovalRule, ApprovalError> {
    check_scope(store, &scope)?;
    if !patches.knows(&patch) {
        return Err(ApprovalError::UnknownPatch(patch.to_string()));
    }
    let rule = ApprovalRule {
        id: manual_rule_id(&scope, &patch),
        scope,
        rule: RuleKind::Manual { patch, verdict },
    };
    rule.validate()
        .map_err(|e| ApprovalError::Invalid(e.to_string()))?;
    store.put(APPROVAL_RULES, rule.id.as_bytes(), &rule)?;
    let action = match verdict {
        Verdict::Approve => "approval.approve",
        Verdict::Decline => "approval.decline",
    };
    audit(store, actor, action, &rule, now_ms);
    Ok(rule)
}

/// A device's scopes from the registry (tenant, customer, tags).
pub fn device_scopes(store: &Store, device: DeviceId) -> Result<DeviceScopes, ApprovalError> {
    let Some(rec) = registry::get(store, device)? else {
        return Err(ApprovalError::UnknownDevice(device.to_string()));
    };
    Ok(scopes_of(&rec, registry::tags(store, device)?))
}

fn scopes_of(rec: &DeviceRecord, tags: Vec<String>) -> DeviceScopes {
    DeviceScopes {
        tenant: rec.tenant.as_str().to_string(),
        customer: rec.customer.as_str().to_string(),
        tags,
        device: rec.id.to_string(),
    }
}

/// Every missing patch of the device with its decision at `now_ms`.
pub fn device_decisions(
    store: &Store,
    patches: &dyn MissingPatches,
    device: DeviceId,
    now_ms: u64,
) -> Result<DeviceApprovals, ApprovalError> {
    let rules = list(store)?;
    decisions_with(store, patches, &rules, device, now_ms)
}

/// [`device_decisions`] with the rules already read (deployments resolve
/// many devices).
pub fn decisions_with(
    store: &Store,
    patches: &dyn MissingPatches,
    rules: &[ApprovalRule],
    device: DeviceId,
    now_ms: u64,
) -> Result<DeviceApprovals, ApprovalError> {
    let scopes = device_scopes(store, device)?;
    let missing = patches.missing(device);
    let mut out = DeviceApprovals {
        device: device.to_string(),
        scopes,
        assessed: missing.is_some(),
        decisions: Vec::new(),
        unnamed: Vec::new(),
    };
    for p in missing.unwrap_or_default() {
        match PatchFacts::from_missing(&p) {
            Some(facts) => {
                let decision = decide(&facts, &out.scopes, rules, now_ms);
                out.decisions.push(PatchDecision {
                    patch: facts.key,
                    decision,
                });
            }
            None => out.unnamed.push(p.id()),
        }
    }
    Ok(out)
}

/// Parses `device:ID`, `tag:T`, `customer:C`, `tenant:T` (or `tenant`
/// alone: `default_tenant`).
pub fn parse_scope(s: &str, default_tenant: Option<&str>) -> Result<ApprovalScope, String> {
    let (kind, value) = s.split_once(':').unwrap_or((s, ""));
    let value = value.trim().to_string();
    let need = |v: String| {
        if v.is_empty() {
            Err(format!("scope {s:?} needs a value (e.g. {kind}:NAME)"))
        } else {
            Ok(v)
        }
    };
    match kind {
        "device" => Ok(ApprovalScope::Device {
            device: need(value)?,
        }),
        "tag" => Ok(ApprovalScope::Tag { tag: need(value)? }),
        "customer" => Ok(ApprovalScope::Customer {
            customer: need(value)?,
        }),
        "tenant" if value.is_empty() => match default_tenant {
            Some(t) => Ok(ApprovalScope::Tenant {
                tenant: t.to_string(),
            }),
            None => Err("scope tenant needs a name (tenant:NAME)".into()),
        },
        "tenant" => Ok(ApprovalScope::Tenant { tenant: value }),
        _ => Err(format!(
            "unknown scope {s:?}: expected device:ID, tag:T, customer:C or tenant[:T]"
        )),
    }
}

/// Parses `PKG=VERSION`.
pub fn parse_patch(s: &str) -> Result<PatchKey, String> {
    match s.split_once('=') {
        Some((p, v)) if !p.trim().is_empty() && !v.trim().is_empty() => {
            Ok(PatchKey::new(p.trim(), v.trim()))
        }
        _ => Err(format!("{s:?} is not PKG=VERSION")),
    }
}

/// The tenant of the site's devices (the first enrolled device's), for a
/// bare `tenant` scope.
pub fn site_tenant(store: &Store) -> Result<Option<String>, ApprovalError> {
    let mut t = None;
    store.scan::<DeviceRecord>(registry::DEVICES, &[], None, |_, r| {
        t = Some(r.tenant.as_str().to_string());
        false
    })?;
    Ok(t)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use outpost_patch::approval::{AutoRule, Outcome};
    use outpost_patch::severity::Severity;
    use std::collections::BTreeMap;
    use std::sync::Mutex;

    /// Missing patches set by the test.
    #[derive(Default)]
    pub struct FakePatches(pub Mutex<BTreeMap<DeviceId, Vec<MissingPatch>>>);

    impl MissingPatches for FakePatches {
        fn missing(&self, device: DeviceId) -> Option<Vec<MissingPatch>> {
            self.0.lock().unwrap().get(&device).cloned()
        }
        fn knows(&self, patch: &PatchKey) -> bool {
            self.0.lock().unwrap().values().flatten().any(|p| {
                p.source.as_str() == patch.package
                    && p.candidate.as_ref().map(|c| c.as_str()) == Some(patch.version.as_str())
            })
        }
    }

    pub fn missing(source: &str, from: &str, to: &str, security: bool) -> MissingPatch {
        let v = |s: &str| outpost_patch::version::DebVersion::parse(s).unwrap();
        MissingPatch {
            source: source.into(),
            installed: v(from),
            candidate: Some(v(to)),
            binaries: vec![outpost_patch::assess::PatchBinary {
                name: source.into(),
                arch: None,
                from: v(from),
                to: v(to),
                held: false,
            }],
            security,
            cves: vec![],
            unimportant_cves: vec![],
            severity: security.then_some(Severity::High),
            fix_not_in_repositories: vec![],
            reboot_expected: false,
            first_seen_ms: 0,
            risk: 5,
            download_bytes: None,
            candidate_first_seen_ms: 0,
        }
    }

    pub fn enroll(store: &Store, n: u64, customer: &str, tags: &[&str]) -> DeviceId {
        let id = DeviceId(n);
        registry::register(
            store,
            &DeviceRecord {
                id,
                tenant: "msp".into(),
                customer: customer.into(),
                hostname: format!("h{n}"),
                os: "debian".into(),
                kernel: "6".into(),
                arch: "amd64".into(),
                agent_version: "1".into(),
                enrolled_at_ms: 0,
                cert_serial: String::new(),
                revoked_at_ms: None,
            },
        )
        .unwrap();
        let tags: Vec<String> = tags.iter().map(|t| t.to_string()).collect();
        registry::set_tags(store, id, &tags).unwrap();
        id
    }

    pub fn open_store(dir: &std::path::Path) -> Store {
        crate::db::open(dir, &outpost_storage::StoreOptions::default()).unwrap()
    }

    #[test]
    fn a_device_decline_beats_a_tag_approval_and_the_audit_names_actor_scope_patch_rule() {
        let dir = tempfile::tempdir().unwrap();
        let store = open_store(dir.path());
        let d = enroll(&store, 1, "dental", &["servers"]);
        let patches = FakePatches::default();
        patches
            .0
            .lock()
            .unwrap()
            .insert(d, vec![missing("openssl", "3.0.1-1", "3.0.2-1", true)]);
        let key = PatchKey::new("openssl", "3.0.2-1");
        set_manual(
            &store,
            &patches,
            key.clone(),
            ApprovalScope::Tag {
                tag: "servers".into(),
            },
            Verdict::Approve,
            "alice",
            10,
        )
        .unwrap();
        let a = device_decisions(&store, &patches, d, 20).unwrap();
        assert!(a.decisions[0].decision.approved, "{a:?}");
        assert_eq!(a.approved(), vec![key.clone()]);
        set_manual(
            &store,
            &patches,
            key.clone(),
            ApprovalScope::Device {
                device: d.to_string(),
            },
            Verdict::Decline,
            "bob",
            30,
        )
        .unwrap();
        let a = device_decisions(&store, &patches, d, 40).unwrap();
        let dec = &a.decisions[0].decision;
        assert_eq!(dec.outcome, Outcome::Declined);
        assert!(dec.explanation.contains("declined by hand"), "{dec:?}");
        let log = registry::audit_log(&store, 0, u64::MAX, 10).unwrap();
        assert_eq!(log.len(), 2);
        assert_eq!(log[1].actor, "bob");
        assert_eq!(log[1].action, "approval.decline");
        assert_eq!(log[1].target, format!("device {d}"));
        assert!(log[1].detail.contains("openssl=3.0.2-1"), "{:?}", log[1]);
        assert!(
            log[1].detail.contains("rule manual/device:"),
            "{:?}",
            log[1]
        );
    }

    #[test]
    fn approving_an_unknown_patch_or_for_an_unknown_device_is_refused_with_its_name() {
        let dir = tempfile::tempdir().unwrap();
        let store = open_store(dir.path());
        let d = enroll(&store, 1, "dental", &[]);
        let patches = FakePatches::default();
        patches
            .0
            .lock()
            .unwrap()
            .insert(d, vec![missing("openssl", "3.0.1-1", "3.0.2-1", true)]);
        let e = set_manual(
            &store,
            &patches,
            PatchKey::new("nginx", "1.2-1"),
            ApprovalScope::Tenant {
                tenant: "msp".into(),
            },
            Verdict::Approve,
            "a",
            1,
        )
        .unwrap_err();
        assert!(matches!(e, ApprovalError::UnknownPatch(ref p) if p == "nginx=1.2-1"));
        let e = set_manual(
            &store,
            &patches,
            PatchKey::new("openssl", "3.0.2-1"),
            ApprovalScope::Device {
                device: "00000000000000ff".into(),
            },
            Verdict::Approve,
            "a",
            1,
        )
        .unwrap_err();
        assert!(e.to_string().contains("00000000000000ff"), "{e}");
        assert!(list(&store).unwrap().is_empty());
    }

    #[test]
    fn auto_rules_are_validated_stored_listed_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let store = open_store(dir.path());
        let bad = ApprovalRule {
            id: "r1".into(),
            scope: ApprovalScope::Tenant {
                tenant: "msp".into(),
            },
            rule: RuleKind::Auto(AutoRule {
                allow: vec!["a".into()],
                deny: vec!["a".into()],
                ..Default::default()
            }),
        };
        assert!(matches!(
            add_rule(&store, &bad, "a", 1),
            Err(ApprovalError::Invalid(_))
        ));
        let good = ApprovalRule {
            rule: RuleKind::Auto(AutoRule {
                security_only: true,
                ..Default::default()
            }),
            ..bad
        };
        add_rule(&store, &good, "a", 1).unwrap();
        assert!(matches!(
            add_rule(&store, &good, "a", 1),
            Err(ApprovalError::DuplicateRule(_))
        ));
        assert_eq!(list(&store).unwrap(), vec![good.clone()]);
        remove_rule(&store, "r1", "a", 2).unwrap();
        assert!(list(&store).unwrap().is_empty());
        assert!(matches!(
            remove_rule(&store, "r1", "a", 2),
            Err(ApprovalError::UnknownRule(_))
        ));
    }

    #[test]
    fn scopes_and_patches_parse_from_the_command_line() {
        assert_eq!(
            parse_scope("tag:servers", None).unwrap(),
            ApprovalScope::Tag {
                tag: "servers".into()
            }
        );
        assert_eq!(
            parse_scope("tenant", Some("msp")).unwrap(),
            ApprovalScope::Tenant {
                tenant: "msp".into()
            }
        );
        assert!(parse_scope("tag:", None).is_err());
        assert!(parse_scope("site:x", None).is_err());
        assert_eq!(
            parse_patch("openssl=3.0.2-1").unwrap(),
            PatchKey::new("openssl", "3.0.2-1")
        );
        assert!(parse_patch("openssl").is_err());
    }
}
