//! One test per assessment rule, on catalogs written in the tracker and
//! OSV formats and scans written as the tools print them.

use super::*;
use crate::catalog::tracker::import_debian_tracker;
use crate::catalog::{ImportOptions, osv::import_osv};
use crate::scan::{parse_apt_simulation, parse_dpkg_query, parse_os_release};

const NOW: u64 = 1_700_000_000_000;

fn tracker(json: &str) -> Catalog {
    Catalog::new().with_source(
        import_debian_tracker(
            json.as_bytes(),
            ImportOptions::new("debian-tracker", "t", 0),
        )
        .unwrap(),
    )
}

fn scan(dpkg: &str, apt: &str) -> Scan {
    let mut s = Scan::new_dpkg(
        NOW - 1000,
        parse_os_release("ID=debian\nVERSION_ID=\"12\"\nVERSION_CODENAME=bookworm\n"),
    );
    let out = parse_dpkg_query(dpkg);
    assert!(out.problems.is_empty(), "{:?}", out.problems);
    s.dpkg = out.packages;
    let plan = parse_apt_simulation(apt);
    assert!(plan.problems.is_empty(), "{:?}", plan.problems);
    s.upgrades = plan.upgrades;
    s.normalize();
    s
}

fn ids<'a>(it: impl Iterator<Item = (&'a PackageFindings, &'a Finding)>) -> Vec<String> {
    let mut out: Vec<String> = it.map(|(p, f)| format!("{}:{}", p.source, f.id)).collect();
    out.sort();
    out
}

fn rel(status: &str, fixed: Option<&str>, urgency: &str) -> String {
    match fixed {
        Some(f) => {
            format!(r#"{{"status": "{status}", "fixed_version": "{f}", "urgency": "{urgency}"}}"#)
        }
        None => format!(r#"{{"status": "{status}", "urgency": "{urgency}"}}"#),
    }
}

/// openssl: CVE-A fixed in 3.0.13 (high), CVE-B fixed in 3.0.15 (medium),
/// CVE-C fixed in 3.0.17 (low), CVE-D open (high, no DSA), CVE-E
/// undetermined, CVE-F unimportant and open, CVE-G fixed long ago.
fn openssl_catalog() -> Catalog {
    let json = format!(
        r#"{{"openssl": {{
            "CVE-2024-000A": {{"releases": {{"bookworm": {a}}}}},
            "CVE-2024-000B": {{"releases": {{"bookworm": {b}}}}},
            "CVE-2024-000C": {{"releases": {{"bookworm": {c}}}}},
            "CVE-2024-000D": {{"releases": {{"bookworm": {{"status": "open", "urgency": "high", "nodsa": "Minor issue"}}}}}},
            "CVE-2024-000E": {{"releases": {{"bookworm": {e}}}}},
            "CVE-2024-000F": {{"releases": {{"bookworm": {f}}}}},
            "CVE-2024-000G": {{"releases": {{"bookworm": {g}}}}}
        }}}}"#,
        a = rel("resolved", Some("3.0.13-1~deb12u1"), "high"),
        b = rel("resolved", Some("3.0.15-1~deb12u1"), "medium"),
        c = rel("resolved", Some("3.0.17-1~deb12u1"), "low"),
        e = rel("undetermined", None, "not yet assigned"),
        f = rel("open", None, "unimportant"),
        g = rel("resolved", Some("3.0.9-1"), "high"),
    );
    tracker(&json)
}

const OPENSSL_INSTALLED: &str = "ii \topenssl\tamd64\t3.0.11-1~deb12u2\topenssl\t3.0.11-1~deb12u2\n\
                                 ii \tlibssl3\tamd64\t3.0.11-1~deb12u2\topenssl\t3.0.11-1~deb12u2\n\
                                 ii \tbash\tamd64\t5.2.15-2+b8\tbash\t5.2.15-2\n";

const OPENSSL_UPGRADE: &str = "Inst libssl3 [3.0.11-1~deb12u2] (3.0.15-1~deb12u1 Debian-Security:12/stable-security [amd64])\n\
                               Inst openssl [3.0.11-1~deb12u2] (3.0.15-1~deb12u1 Debian-Security:12/stable-security [amd64])\n";

#[test]
fn findings_are_split_into_fixable_open_undetermined_and_unimportant() {
    let a = assess_device(
        &scan(OPENSSL_INSTALLED, ""),
        &openssl_catalog(),
        &Policy::default(),
        None,
        NOW,
    );
    assert_eq!(a.status, AssessmentStatus::Assessed);
    assert_eq!(
        ids(a.fixable()),
        vec![
            "openssl:CVE-2024-000A",
            "openssl:CVE-2024-000B",
            "openssl:CVE-2024-000C"
        ]
    );
    assert_eq!(ids(a.open()), vec!["openssl:CVE-2024-000D"]);
    assert_eq!(ids(a.undetermined()), vec!["openssl:CVE-2024-000E"]);
    assert_eq!(ids(a.unimportant()), vec!["openssl:CVE-2024-000F"]);
    let (_, fa) = a.finding("CVE-2024-000A").next().unwrap();
    assert_eq!(
        fa.fixed.as_ref().map(DebVersion::as_str),
        Some("3.0.13-1~deb12u1")
    );
    assert_eq!(fa.severity, Severity::High);
    let (_, fd) = a.finding("CVE-2024-000D").next().unwrap();
    assert!(fd.no_dsa && fd.fixed.is_none());
    assert_eq!(
        a.finding("CVE-2024-000G").count(),
        0,
        "fixed below the installed version"
    );
    assert_eq!(a.counts.fixable.high, 1);
    assert_eq!(a.counts.open.high, 1);
    assert_eq!((a.counts.undetermined, a.counts.unimportant), (1, 1));
    assert_eq!(a.packages.len(), 1, "one source package for two binaries");
}

#[test]
fn a_candidate_closes_every_fix_at_or_below_its_version_and_names_the_fixes_beyond_it() {
    let a = assess_device(
        &scan(OPENSSL_INSTALLED, OPENSSL_UPGRADE),
        &openssl_catalog(),
        &Policy::default(),
        None,
        NOW,
    );
    assert_eq!(
        a.patches.len(),
        1,
        "libssl3 and openssl are one patch of source openssl"
    );
    let p = &a.patches[0];
    assert_eq!(p.id(), "openssl/3.0.15-1~deb12u1");
    assert_eq!(p.binaries.len(), 2);
    assert!(p.security);
    let cves: Vec<&str> = p.cves.iter().map(|c| &**c).collect();
    assert_eq!(cves, vec!["CVE-2024-000A", "CVE-2024-000B"]);
    assert_eq!(p.severity, Some(Severity::High), "the highest of its CVEs");
    let beyond: Vec<&str> = p.fix_not_in_repositories.iter().map(|c| &**c).collect();
    assert_eq!(beyond, vec!["CVE-2024-000C"]);
    let (_, a_) = a.finding("CVE-2024-000A").next().unwrap();
    assert!(a_.fix_available && !a_.fix_not_in_repositories());
    let (_, c) = a.finding("CVE-2024-000C").next().unwrap();
    assert!(!c.fix_available && c.fix_not_in_repositories());
    assert_eq!(a.counts.fix_not_in_repositories, 1);
}

#[test]
fn without_any_candidate_a_fixable_finding_is_not_in_the_repositories() {
    let a = assess_device(
        &scan(OPENSSL_INSTALLED, ""),
        &openssl_catalog(),
        &Policy::default(),
        None,
        NOW,
    );
    assert!(a.fixable().all(|(_, f)| f.fix_not_in_repositories()));
    assert_eq!(a.counts.fix_not_in_repositories, 3);
}

#[test]
fn the_installed_source_version_is_compared_not_the_binary_version() {
    let json = format!(
        r#"{{"src": {{"CVE-2024-1": {{"releases": {{"bookworm": {}}}}}}}}}"#,
        rel("resolved", Some("1.0-2"), "medium")
    );
    // The binary has its own version (epoch 2) but comes from source 1.0-1.
    let s = scan("ii \tbin\tamd64\t2:5.0-1\tsrc\t1.0-1\n", "");
    let a = assess_device(&s, &tracker(&json), &Policy::default(), None, NOW);
    assert_eq!(ids(a.fixable()), vec!["src:CVE-2024-1"]);
    assert_eq!(a.packages[0].installed.as_str(), "1.0-1");
}

#[test]
fn a_binnmu_candidate_maps_to_its_source_version() {
    let json = format!(
        r#"{{"bash": {{"CVE-2024-1": {{"releases": {{"bookworm": {}}}}}}}}}"#,
        rel("resolved", Some("5.2.15-3"), "medium")
    );
    let s = scan(
        "ii \tbash\tamd64\t5.2.15-2+b8\tbash\t5.2.15-2\n",
        "Inst bash [5.2.15-2+b8] (5.2.15-3+b1 Debian:12.8/stable [amd64])\n",
    );
    let a = assess_device(&s, &tracker(&json), &Policy::default(), None, NOW);
    let p = &a.patches[0];
    assert_eq!(
        p.candidate.as_ref().map(DebVersion::as_str),
        Some("5.2.15-3")
    );
    assert_eq!(p.cves.len(), 1);
    assert!(!p.security);
    assert!(
        p.is_security(),
        "not from the security pocket but fixes a CVE"
    );
}

#[test]
fn binaries_versioned_apart_from_their_source_give_a_patch_with_unknown_cves() {
    let s = scan(
        "ii \tcpp\tamd64\t4:12.2.0-3\tgcc-defaults\t1.203\n",
        "Inst cpp [4:12.2.0-3] (4:12.2.0-4 Debian:12.8/stable [amd64])\n",
    );
    let a = assess_device(&s, &openssl_catalog(), &Policy::default(), None, NOW);
    assert_eq!(a.patches[0].candidate, None);
    assert_eq!(a.patches[0].id(), "gcc-defaults/?cpp");
}

#[test]
fn new_packages_pulled_in_are_counted_not_listed_as_patches() {
    let s = scan(
        OPENSSL_INSTALLED,
        "Inst newdep (1.0-1 Debian:12.8/stable [amd64])\n",
    );
    let a = assess_device(&s, &openssl_catalog(), &Policy::default(), None, NOW);
    assert!(a.patches.is_empty());
    assert_eq!(a.counts.new_packages, 1);
}

#[test]
fn kernel_and_libc_patches_expect_a_reboot_and_held_binaries_are_flagged() {
    let s = scan(
        "ii \tlinux-image-6.1.0-18-amd64\tamd64\t6.1.76-1\tlinux-signed-amd64\t6.1.76+1\n\
         hi \tlibc6\tamd64\t2.36-9+deb12u4\tglibc\t2.36-9+deb12u4\n\
         ii \tcurl\tamd64\t7.88.1-10+deb12u5\tcurl\t7.88.1-10+deb12u5\n",
        "Inst linux-image-6.1.0-18-amd64 [6.1.76-1] (6.1.90-1 Debian-Security:12/stable-security [amd64])\n\
         Inst libc6 [2.36-9+deb12u4] (2.36-9+deb12u7 Debian:12.8/stable [amd64])\n\
         Inst curl [7.88.1-10+deb12u5] (7.88.1-10+deb12u6 Debian:12.8/stable [amd64])\n",
    );
    let a = assess_device(&s, &openssl_catalog(), &Policy::default(), None, NOW);
    let by: HashMap<&str, &MissingPatch> = a.patches.iter().map(|p| (&*p.source, p)).collect();
    assert!(by["linux-signed-amd64"].reboot_expected);
    assert!(by["glibc"].reboot_expected);
    assert!(by["glibc"].binaries[0].held);
    assert!(!by["curl"].reboot_expected);
    assert_eq!(
        by["linux-signed-amd64"].effective_severity(),
        Some(Severity::Unknown),
        "security pocket, no CVE known"
    );
    assert_eq!(by["curl"].effective_severity(), None);
}

#[test]
fn a_high_security_patch_missing_longer_than_the_grace_period_makes_the_device_non_compliant() {
    let catalog = openssl_catalog();
    let s = scan(OPENSSL_INSTALLED, OPENSSL_UPGRADE);
    let policy = Policy::default();
    let first = assess_device(&s, &catalog, &policy, None, NOW);
    assert_eq!(first.compliance, Compliance::Compliant, "just appeared");
    assert_eq!(first.patches[0].first_seen_ms, NOW);
    // Still missing 15 days later: the age is carried from the previous assessment.
    let later = NOW + 15 * DAY_MS;
    let second = assess_device(&s, &catalog, &policy, Some(&first), later);
    assert_eq!(second.patches[0].first_seen_ms, NOW);
    assert_eq!(second.compliance, Compliance::NonCompliant);
    assert_eq!(second.overdue, vec!["openssl/3.0.15-1~deb12u1"]);
    // Exactly at the grace period it is still compliant.
    let edge = assess_device(&s, &catalog, &policy, Some(&first), NOW + 14 * DAY_MS);
    assert_eq!(edge.compliance, Compliance::Compliant);
    // A policy that only counts critical patches.
    let lenient = Policy {
        min_severity: Severity::Critical,
        ..Policy::default()
    };
    assert_eq!(
        assess_device(&s, &catalog, &lenient, Some(&first), later).compliance,
        Compliance::Compliant
    );
}

#[test]
fn a_newer_candidate_is_first_seen_when_it_appears_while_the_source_keeps_its_age() {
    let catalog = openssl_catalog();
    let policy = Policy::default();
    let first = assess_device(
        &scan(OPENSSL_INSTALLED, OPENSSL_UPGRADE),
        &catalog,
        &policy,
        None,
        NOW,
    );
    assert_eq!(first.patches[0].candidate_first_seen_ms, NOW);
    // 30 days behind; today 3.0.16 replaces 3.0.15 in the repositories.
    let newer = OPENSSL_UPGRADE.replace("3.0.15-1~deb12u1", "3.0.16-1~deb12u1");
    let today = NOW + 30 * DAY_MS;
    let a = assess_device(
        &scan(OPENSSL_INSTALLED, &newer),
        &catalog,
        &policy,
        Some(&first),
        today,
    );
    let p = &a.patches[0];
    assert_eq!(
        p.candidate.as_ref().map(|c| c.as_str()),
        Some("3.0.16-1~deb12u1")
    );
    assert_eq!(
        p.first_seen_ms, NOW,
        "the device has been behind for 30 days"
    );
    assert_eq!(
        p.candidate_first_seen_ms, today,
        "3.0.16 was first offered today"
    );
    // An auto-approval with a 7-day delay waits for 3.0.16's own 7 days.
    let facts = crate::approval::PatchFacts::from_missing(p).unwrap();
    assert_eq!(facts.published_ms, Some(today));
    // The same candidate a day later keeps its first sighting.
    let b = assess_device(
        &scan(OPENSSL_INSTALLED, &newer),
        &catalog,
        &policy,
        Some(&a),
        today + DAY_MS,
    );
    assert_eq!(b.patches[0].candidate_first_seen_ms, today);
    assert_eq!(b.patches[0].first_seen_ms, NOW);
}

#[test]
fn a_patch_age_restarts_when_the_source_had_no_pending_patch_before() {
    let catalog = openssl_catalog();
    let before = assess_device(
        &scan(OPENSSL_INSTALLED, ""),
        &catalog,
        &Policy::default(),
        None,
        NOW,
    );
    let a = assess_device(
        &scan(OPENSSL_INSTALLED, OPENSSL_UPGRADE),
        &catalog,
        &Policy::default(),
        Some(&before),
        NOW + DAY_MS,
    );
    assert_eq!(a.patches[0].first_seen_ms, NOW + DAY_MS);
}

#[test]
fn risk_follows_the_documented_formulas() {
    let catalog = openssl_catalog();
    let s = scan(OPENSSL_INSTALLED, OPENSSL_UPGRADE);
    let a = assess_device(&s, &catalog, &Policy::default(), None, NOW);
    // high (+3) + 2 CVEs (+2) - no reboot (-1) = 4
    assert_eq!(a.patches[0].risk, 4);
    // device: 4 + 2 × 1 open high (CVE-D) = 6
    assert_eq!(a.risk, Some(6));
    let mut rebooting = s.clone();
    rebooting.reboot.required = true;
    assert_eq!(
        assess_device(&rebooting, &catalog, &Policy::default(), None, NOW).risk,
        Some(11)
    );
    let old = assess_device(&s, &catalog, &Policy::default(), Some(&a), NOW + 8 * DAY_MS);
    assert_eq!(old.patches[0].risk, 6, "+2 after 7 days");
}

#[test]
fn an_unknown_release_is_unsupported_and_never_compliant() {
    let mut s = scan(OPENSSL_INSTALLED, OPENSSL_UPGRADE);
    s.os = parse_os_release("ID=arch\n");
    let a = assess_device(&s, &openssl_catalog(), &Policy::default(), None, NOW);
    assert_eq!(a.status, AssessmentStatus::UnsupportedRelease);
    assert_eq!(a.compliance, Compliance::UnsupportedRelease);
    assert_eq!(a.risk, None);
    assert!(a.packages.is_empty());
    assert_eq!(a.patches.len(), 1, "apt's upgrades are still listed");
    assert!(a.status_reason.as_deref().unwrap().contains("arch"));

    s.os = parse_os_release("ID=debian\nVERSION_CODENAME=duke\n");
    let a = assess_device(&s, &openssl_catalog(), &Policy::default(), None, NOW);
    assert_eq!(a.compliance, Compliance::UnsupportedRelease);
    assert!(a.status_reason.as_deref().unwrap().contains("debian/duke"));

    s.manager = PackageManager::Rpm;
    assert_eq!(
        assess_device(&s, &openssl_catalog(), &Policy::default(), None, NOW).compliance,
        Compliance::UnsupportedRelease
    );
}

#[test]
fn an_empty_catalog_is_no_catalog_not_compliant() {
    let a = assess_device(
        &scan(OPENSSL_INSTALLED, ""),
        &Catalog::new(),
        &Policy::default(),
        None,
        NOW,
    );
    assert_eq!(
        (a.status, a.compliance),
        (AssessmentStatus::NoCatalog, Compliance::NoCatalog)
    );
}

#[test]
fn tracker_and_osv_advisories_for_one_cve_merge() {
    let t = import_debian_tracker(
        format!(
            r#"{{"openssl": {{"CVE-2024-000A": {{"releases": {{"bookworm": {}}}}}}}}}"#,
            rel("resolved", Some("3.0.13-1~deb12u1"), "not yet assigned")
        )
        .as_bytes(),
        ImportOptions::new("debian-tracker", "t", 0),
    )
    .unwrap();
    let o = import_osv(
        r#"{"id": "DSA-5555-1", "related": ["CVE-2024-000A"],
            "severity": [{"type": "CVSS_V3", "score": "CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H"}],
            "affected": [{"package": {"ecosystem": "Debian:12", "name": "openssl"},
              "ranges": [{"type": "ECOSYSTEM", "events": [{"introduced": "0"}, {"fixed": "3.0.14-1~deb12u1"}]}]}]}"#
            .as_bytes(),
        ImportOptions::new("osv", "o", 0),
    )
    .unwrap();
    let catalog = Catalog::new().with_source(t).with_source(o);
    let a = assess_device(
        &scan(OPENSSL_INSTALLED, OPENSSL_UPGRADE),
        &catalog,
        &Policy::default(),
        None,
        NOW,
    );
    let found: Vec<_> = a.finding("CVE-2024-000A").collect();
    assert_eq!(found.len(), 1);
    let f = found[0].1;
    assert_eq!(
        f.fixed.as_ref().map(DebVersion::as_str),
        Some("3.0.14-1~deb12u1"),
        "the highest fixed version"
    );
    assert_eq!(f.severity, Severity::Critical, "the highest known severity");
    assert_eq!(f.via.as_deref().map(SmallStr::as_str), Some("DSA-5555-1"));
    assert!(f.fix_available, "3.0.15 closes both");
}

#[test]
fn assessment_round_trips_through_json() {
    let a = assess_device(
        &scan(OPENSSL_INSTALLED, OPENSSL_UPGRADE),
        &openssl_catalog(),
        &Policy::default(),
        None,
        NOW,
    );
    let text = serde_json::to_string(&a).unwrap();
    let back: DeviceAssessment = serde_json::from_str(&text).unwrap();
    assert_eq!(back, a);
}

#[test]
fn reassessing_only_the_changed_packages_gives_the_full_assessment() {
    let old = openssl_catalog();
    let json = format!(
        r#"{{"openssl": {{"CVE-2024-000A": {{"releases": {{"bookworm": {a}}}}},
                          "CVE-2024-0NEW": {{"releases": {{"bookworm": {n}}}}}}},
             "bash": {{"CVE-2024-0BSH": {{"releases": {{"bookworm": {b}}}}}}}}}"#,
        a = rel("resolved", Some("3.0.13-1~deb12u1"), "high"),
        n = rel("resolved", Some("3.0.14-1~deb12u1"), "critical"),
        b = rel("resolved", Some("5.2.15-2+deb12u1"), "medium"),
    );
    let new = old.with_source(
        import_debian_tracker(
            json.as_bytes(),
            ImportOptions::new("debian-tracker", "t", 0),
        )
        .unwrap(),
    );
    let changes = new.changes_since(&old);
    assert_eq!(changes.len(), 2, "openssl and bash changed: {changes:?}");
    let s = scan(OPENSSL_INSTALLED, OPENSSL_UPGRADE);
    let policy = Policy::default();
    let before = assess_device(&s, &old, &policy, None, NOW);
    let later = NOW + 20 * DAY_MS;
    let full = assess_device(&s, &new, &policy, Some(&before), later);
    let incremental = reassess_device(&before, &s, &new, &changes, &policy, later);
    assert_eq!(incremental, full);
    assert_eq!(
        ids(incremental.fixable()),
        vec![
            "bash:CVE-2024-0BSH",
            "openssl:CVE-2024-000A",
            "openssl:CVE-2024-0NEW"
        ]
    );
    assert_eq!(
        incremental.compliance,
        Compliance::NonCompliant,
        "ages are re-judged at the new time"
    );

    // Made from another scan: a full assessment.
    let other = scan(OPENSSL_INSTALLED, "");
    let fallback = reassess_device(&before, &other, &new, &changes, &policy, later);
    assert_eq!(
        fallback,
        assess_device(&other, &new, &policy, Some(&before), later)
    );
}
