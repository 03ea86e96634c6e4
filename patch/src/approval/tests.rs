use super::*;

const NOW: u64 = 1_800_000_000_000;

fn device() -> DeviceScopes {
    DeviceScopes {
        tenant: "t1".into(),
        customer: "c1".into(),
        tags: vec!["servers".into(), "web".into()],
        device: "d1".into(),
    }
}

fn patch(pkg: &str, severity: Option<Severity>, security: bool, age_days: u64) -> PatchFacts {
    PatchFacts {
        key: PatchKey::new(pkg, "1.2-3"),
        severity,
        security,
        published_ms: Some(NOW - age_days * DAY_MS),
    }
}

fn tenant() -> ApprovalScope {
    ApprovalScope::Tenant {
        tenant: "t1".into(),
    }
}
fn customer() -> ApprovalScope {
    ApprovalScope::Customer {
        customer: "c1".into(),
    }
}
fn tag(t: &str) -> ApprovalScope {
    ApprovalScope::Tag { tag: t.into() }
}
fn dev() -> ApprovalScope {
    ApprovalScope::Device {
        device: "d1".into(),
    }
}

fn auto(id: &str, scope: ApprovalScope, a: AutoRule) -> ApprovalRule {
    ApprovalRule {
        id: id.into(),
        scope,
        rule: RuleKind::Auto(a),
    }
}

fn manual(id: &str, scope: ApprovalScope, pkg: &str, verdict: Verdict) -> ApprovalRule {
    ApprovalRule {
        id: id.into(),
        scope,
        rule: RuleKind::Manual {
            patch: PatchKey::new(pkg, "1.2-3"),
            verdict,
        },
    }
}

fn critical_after_7_days() -> AutoRule {
    AutoRule {
        min_severity: Some(Severity::Critical),
        security_only: true,
        delay_days: 7,
        ..Default::default()
    }
}

#[test]
fn no_rule_leaves_the_patch_unapproved_with_a_hint() {
    let d = decide(
        &patch("openssl", Some(Severity::High), true, 30),
        &device(),
        &[],
        NOW,
    );
    assert!(!d.approved);
    assert_eq!(d.outcome, Outcome::Unapproved);
    assert!(d.rule.is_none());
    assert!(
        d.explanation.contains("approve it by hand"),
        "{}",
        d.explanation
    );
}

#[test]
fn auto_rule_approves_critical_security_patch_once_its_delay_elapsed() {
    let rules = [auto("r1", tenant(), critical_after_7_days())];
    let d = decide(
        &patch("openssl", Some(Severity::Critical), true, 8),
        &device(),
        &rules,
        NOW,
    );
    assert!(d.approved, "{d:?}");
    assert_eq!(d.rule.as_ref().unwrap().id, "r1");
    assert_eq!(d.rule.as_ref().unwrap().level, Level::Tenant);
    assert!(!d.rule.as_ref().unwrap().manual);
    assert!(d.explanation.contains("r1"));
}

#[test]
fn delay_not_elapsed_at_now_defers_until_publication_plus_delay() {
    let rules = [auto("r1", tenant(), critical_after_7_days())];
    let p = patch("openssl", Some(Severity::Critical), true, 3);
    let d = decide(&p, &device(), &rules, NOW);
    assert!(!d.approved);
    let at = p.published_ms.unwrap() + 7 * DAY_MS;
    assert_eq!(d.outcome, Outcome::Deferred { at_ms: at });
    // One millisecond before and exactly at the boundary.
    assert!(!decide(&p, &device(), &rules, at - 1).approved);
    assert!(decide(&p, &device(), &rules, at).approved);
}

#[test]
fn delay_with_unknown_publication_never_auto_approves() {
    let rules = [auto("r1", tenant(), critical_after_7_days())];
    let mut p = patch("openssl", Some(Severity::Critical), true, 30);
    p.published_ms = None;
    assert_eq!(
        decide(&p, &device(), &rules, NOW).outcome,
        Outcome::Unapproved
    );
    // Without a delay the publication date does not matter.
    let rules = [auto(
        "r2",
        tenant(),
        AutoRule {
            min_severity: Some(Severity::High),
            ..Default::default()
        },
    )];
    assert!(decide(&p, &device(), &rules, NOW).approved);
}

#[test]
fn severity_below_threshold_and_patch_without_severity_do_not_match_a_threshold() {
    let rules = [auto(
        "r1",
        tenant(),
        AutoRule {
            min_severity: Some(Severity::High),
            ..Default::default()
        },
    )];
    assert!(
        decide(
            &patch("a", Some(Severity::Critical), true, 0),
            &device(),
            &rules,
            NOW
        )
        .approved
    );
    assert!(
        decide(
            &patch("a", Some(Severity::High), true, 0),
            &device(),
            &rules,
            NOW
        )
        .approved
    );
    assert_eq!(
        decide(
            &patch("a", Some(Severity::Medium), true, 0),
            &device(),
            &rules,
            NOW
        )
        .outcome,
        Outcome::Unapproved
    );
    assert_eq!(
        decide(&patch("a", None, true, 0), &device(), &rules, NOW).outcome,
        Outcome::Unapproved
    );
}

#[test]
fn rule_without_threshold_approves_patches_without_severity() {
    let rules = [auto("all", tenant(), AutoRule::default())];
    let d = decide(&patch("tzdata", None, false, 0), &device(), &rules, NOW);
    assert!(d.approved);
    assert!(d.explanation.contains("auto rule all"));
}

#[test]
fn security_only_rule_skips_feature_updates() {
    let rules = [auto(
        "sec",
        tenant(),
        AutoRule {
            security_only: true,
            ..Default::default()
        },
    )];
    assert_eq!(
        decide(&patch("vim", None, false, 30), &device(), &rules, NOW).outcome,
        Outcome::Unapproved
    );
    assert!(decide(&patch("vim", None, true, 30), &device(), &rules, NOW).approved);
}

#[test]
fn allow_list_limits_the_rule_and_deny_list_declines() {
    let a = AutoRule {
        allow: vec!["openssl".into()],
        deny: vec!["linux".into()],
        ..Default::default()
    };
    let rules = [auto("r", tenant(), a)];
    assert!(decide(&patch("openssl", None, false, 0), &device(), &rules, NOW).approved);
    assert_eq!(
        decide(&patch("curl", None, false, 0), &device(), &rules, NOW).outcome,
        Outcome::Unapproved
    );
    let d = decide(
        &patch("linux", Some(Severity::Critical), true, 30),
        &device(),
        &rules,
        NOW,
    );
    assert_eq!(d.outcome, Outcome::Declined);
    assert!(d.explanation.contains("deny list"), "{}", d.explanation);
}

#[test]
fn manual_approval_applies_only_to_its_exact_version() {
    let rules = [manual("m", customer(), "openssl", Verdict::Approve)];
    let d = decide(&patch("openssl", None, false, 0), &device(), &rules, NOW);
    assert!(d.approved);
    assert!(d.rule.as_ref().unwrap().manual);
    let mut other = patch("openssl", None, false, 0);
    other.key.version = "1.2-4".into();
    assert_eq!(
        decide(&other, &device(), &rules, NOW).outcome,
        Outcome::Unapproved
    );
}

#[test]
fn device_beats_tag_beats_customer_beats_tenant() {
    let p = patch("openssl", Some(Severity::Critical), true, 30);
    let mut rules = vec![manual("t", tenant(), "openssl", Verdict::Decline)];
    assert_eq!(decide(&p, &device(), &rules, NOW).rule.unwrap().id, "t");
    rules.push(manual("c", customer(), "openssl", Verdict::Approve));
    assert_eq!(decide(&p, &device(), &rules, NOW).rule.unwrap().id, "c");
    rules.push(manual("g", tag("web"), "openssl", Verdict::Decline));
    let d = decide(&p, &device(), &rules, NOW);
    assert_eq!((d.rule.unwrap().id.as_str(), d.approved), ("g", false));
    rules.push(manual("d", dev(), "openssl", Verdict::Approve));
    let d = decide(&p, &device(), &rules, NOW);
    assert_eq!((d.rule.unwrap().id.as_str(), d.approved), ("d", true));
}

#[test]
fn decline_beats_approval_at_the_same_level_whatever_the_order() {
    let p = patch("openssl", Some(Severity::Critical), true, 30);
    let a = manual("a", customer(), "openssl", Verdict::Approve);
    let b = manual("b", customer(), "openssl", Verdict::Decline);
    for rules in [vec![a.clone(), b.clone()], vec![b.clone(), a.clone()]] {
        let d = decide(&p, &device(), &rules, NOW);
        assert_eq!(d.outcome, Outcome::Declined);
        assert_eq!(d.rule.unwrap().id, "b");
    }
    // An auto rule's deny list against a manual approval at the same level.
    let deny = auto(
        "z",
        customer(),
        AutoRule {
            deny: vec!["openssl".into()],
            ..Default::default()
        },
    );
    let d = decide(&p, &device(), &[a, deny], NOW);
    assert_eq!(d.outcome, Outcome::Declined);
}

#[test]
fn several_tags_form_one_level_and_a_decline_on_any_tag_wins() {
    let p = patch("openssl", Some(Severity::High), true, 30);
    let rules = [
        auto("servers-auto", tag("servers"), AutoRule::default()),
        manual("web-no", tag("web"), "openssl", Verdict::Decline),
        manual("other-tag", tag("desktops"), "openssl", Verdict::Approve),
    ];
    let d = decide(&p, &device(), &rules, NOW);
    assert_eq!(d.outcome, Outcome::Declined);
    assert_eq!(d.rule.unwrap().id, "web-no");
    // Without the decline, the servers tag approves; the desktops tag
    // does not cover the device.
    let d = decide(&p, &device(), &rules[..1], NOW);
    assert!(d.approved);
    let d = decide(&p, &device(), &rules[2..], NOW);
    assert_eq!(d.outcome, Outcome::Unapproved);
}

#[test]
fn equal_verdicts_at_one_level_name_the_smallest_rule_id() {
    let p = patch("openssl", None, true, 30);
    let rules = [
        auto("r9", tag("servers"), AutoRule::default()),
        auto("r2", tag("web"), AutoRule::default()),
    ];
    assert_eq!(decide(&p, &device(), &rules, NOW).rule.unwrap().id, "r2");
}

#[test]
fn approval_now_beats_a_deferral_at_the_same_level() {
    let p = patch("openssl", Some(Severity::Critical), true, 3);
    let rules = [
        auto("slow", customer(), critical_after_7_days()),
        auto(
            "fast",
            customer(),
            AutoRule {
                min_severity: Some(Severity::High),
                ..Default::default()
            },
        ),
    ];
    let d = decide(&p, &device(), &rules, NOW);
    assert!(d.approved);
    assert_eq!(d.rule.unwrap().id, "fast");
}

#[test]
fn a_deferral_at_a_more_specific_level_holds_back_a_broader_approval() {
    let p = patch("openssl", Some(Severity::Critical), true, 3);
    let rules = [
        auto("tenant-now", tenant(), AutoRule::default()),
        auto("device-later", dev(), critical_after_7_days()),
    ];
    let d = decide(&p, &device(), &rules, NOW);
    assert!(matches!(d.outcome, Outcome::Deferred { .. }));
    assert_eq!(d.rule.unwrap().id, "device-later");
}

#[test]
fn rules_of_other_scopes_are_ignored() {
    let p = patch("openssl", None, true, 30);
    let rules = [
        auto(
            "t2",
            ApprovalScope::Tenant {
                tenant: "t2".into(),
            },
            AutoRule::default(),
        ),
        auto(
            "c2",
            ApprovalScope::Customer {
                customer: "c2".into(),
            },
            AutoRule::default(),
        ),
        auto(
            "d2",
            ApprovalScope::Device {
                device: "d2".into(),
            },
            AutoRule::default(),
        ),
    ];
    assert_eq!(
        decide(&p, &device(), &rules, NOW).outcome,
        Outcome::Unapproved
    );
}

#[test]
fn facts_come_from_a_missing_patch_and_need_its_candidate() {
    use crate::version::DebVersion;
    let mut m = MissingPatch {
        source: "openssl".into(),
        installed: DebVersion::parse("3.0.11-1").unwrap(),
        candidate: Some(DebVersion::parse("3.0.15-1").unwrap()),
        binaries: vec![],
        security: true,
        cves: vec![],
        unimportant_cves: vec![],
        severity: None,
        fix_not_in_repositories: vec![],
        reboot_expected: false,
        first_seen_ms: 42,
        risk: 1,
        download_bytes: None,
        candidate_first_seen_ms: 77,
    };
    let f = PatchFacts::from_missing(&m).unwrap();
    assert_eq!(f.key, PatchKey::new("openssl", "3.0.15-1"));
    assert!(f.security);
    assert_eq!(
        f.published_ms,
        Some(77),
        "the candidate's own first sighting, not the source's"
    );
    m.candidate = None;
    assert!(PatchFacts::from_missing(&m).is_none());
}

#[test]
fn rules_are_validated_before_storage() {
    assert_eq!(
        auto("", tenant(), AutoRule::default()).validate(),
        Err(RuleError::EmptyId)
    );
    assert_eq!(
        auto(
            "r",
            ApprovalScope::Tag { tag: String::new() },
            AutoRule::default()
        )
        .validate(),
        Err(RuleError::EmptyScope("tag"))
    );
    let both = AutoRule {
        allow: vec!["a".into()],
        deny: vec!["a".into()],
        ..Default::default()
    };
    assert_eq!(
        auto("r", tenant(), both).validate(),
        Err(RuleError::AllowedAndDenied("a".into()))
    );
    let long = AutoRule {
        delay_days: MAX_DELAY_DAYS + 1,
        ..Default::default()
    };
    assert!(matches!(
        auto("r", tenant(), long).validate(),
        Err(RuleError::DelayTooLong(_))
    ));
    let mut bad = manual("m", dev(), "openssl", Verdict::Approve);
    if let RuleKind::Manual { patch, .. } = &mut bad.rule {
        patch.version = "not a version".into();
    }
    assert!(matches!(bad.validate(), Err(RuleError::BadPatch(_))));
    assert_eq!(
        manual("m", dev(), "openssl", Verdict::Decline).validate(),
        Ok(())
    );
    assert_eq!(
        auto("r", tenant(), critical_after_7_days()).validate(),
        Ok(())
    );
}

#[test]
fn rules_and_decisions_round_trip_through_json() {
    let rules = vec![
        auto("r1", tag("servers"), critical_after_7_days()),
        manual("m1", dev(), "openssl", Verdict::Decline),
    ];
    let json = serde_json::to_string(&rules).unwrap();
    assert!(json.contains(r#""type":"tag""#), "{json}");
    assert!(json.contains(r#""kind":"manual""#), "{json}");
    let back: Vec<ApprovalRule> = serde_json::from_str(&json).unwrap();
    assert_eq!(back, rules);
    // Omitted auto-rule fields take their defaults.
    let r: ApprovalRule = serde_json::from_str(
        r#"{"id":"x","scope":{"type":"tenant","tenant":"t1"},"rule":{"kind":"auto","security_only":true}}"#,
    )
    .unwrap();
    assert_eq!(
        r.rule,
        RuleKind::Auto(AutoRule {
            security_only: true,
            ..Default::default()
        })
    );
    let d = decide(&patch("openssl", None, true, 0), &device(), &back, NOW);
    let dj: Decision = serde_json::from_str(&serde_json::to_string(&d).unwrap()).unwrap();
    assert_eq!(dj, d);
}
