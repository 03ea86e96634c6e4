//! Against outputs captured from the real apt 2.6 and dpkg 1.21 installing
//! real `.deb` files into an isolated root (`patch/tests/data/install/
//! capture.sh` regenerates them).

use super::*;
use crate::scan::dpkg_query::parse_dpkg_query;
use crate::scan::os_release::OsInfo;

macro_rules! capture {
    ($name:literal) => {
        include_str!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/data/install/",
            $name
        ))
    };
}

fn scan_of(query: &str) -> Scan {
    let mut s = Scan::new_dpkg(0, OsInfo::default());
    let q = parse_dpkg_query(query);
    assert!(q.problems.is_empty(), "{:?}", q.problems);
    s.dpkg = q.packages;
    s.normalize();
    s
}

fn target(name: &str, version: &str) -> BinaryTarget {
    BinaryTarget {
        name: name.into(),
        arch: None,
        version: version.into(),
    }
}

fn change(name: &str, from: Option<&str>, to: Option<&str>, configured: bool) -> PackageChange {
    PackageChange {
        name: name.into(),
        arch: None,
        from: from.map(String::from),
        to: to.map(String::from),
        configured,
    }
}

// ---- plans ----

#[test]
fn install_plan_pins_exact_versions_with_the_documented_conffile_policy() {
    let before = scan_of(capture!("query-before.txt"));
    let opts = PlanOptions {
        proxy: Some("http://10.0.0.2:3142".into()),
        ..Default::default()
    };
    let plan = plan_install(&[target("hello-outpost", "1.1-1")], &before, &opts);
    assert_eq!(
        plan.argv,
        [
            "apt-get",
            "install",
            "-y",
            "--no-install-recommends",
            "-o",
            "Dpkg::Options::=--force-confdef",
            "-o",
            "Dpkg::Options::=--force-confold",
            "-o",
            "Dpkg::Use-Pty=0",
            "-o",
            "Acquire::http::Proxy=http://10.0.0.2:3142",
            "hello-outpost=1.1-1"
        ]
    );
    assert!(
        plan.env
            .contains(&("DEBIAN_FRONTEND".into(), "noninteractive".into()))
    );
    assert_eq!(
        plan.previous,
        vec![PreviousVersion {
            name: "hello-outpost".into(),
            arch: "all".into(),
            version: Some("1.0-1".into())
        }]
    );
    assert!(plan.prechecks.contains(&PreCheck::DpkgLockFree));
    assert!(plan.prechecks.contains(&PreCheck::DpkgAuditClean));
    assert!(
        plan.prechecks
            .iter()
            .any(|c| matches!(c, PreCheck::FreeSpace { path, .. } if path == "/"))
    );
    // What the real apt then installed.
    let after = scan_of(capture!("query-after.txt"));
    assert!(unmet_targets(&plan, &after).is_empty());
    assert_eq!(
        unmet_targets(&plan, &before),
        vec!["hello-outpost=1.1-1".to_string()]
    );
}

#[test]
fn held_packages_are_reported_not_forced_and_other_targets_skip_with_reasons() {
    let mut scan = scan_of(capture!("query-before.txt"));
    scan.dpkg
        .iter_mut()
        .find(|p| p.name == "hello-outpost")
        .unwrap()
        .held = true;
    let plan = plan_install(
        &[
            target("hello-outpost", "1.1-1"),
            target("broken-outpost", "1.0-1"),
            target("broken-outpost", "0.9-1"),
            target("absent", "1.0"),
            target("broken-outpost", "not a version!"),
        ],
        &scan,
        &PlanOptions::default(),
    );
    assert!(plan.argv.is_empty(), "nothing to install: {:?}", plan.argv);
    assert!(plan.prechecks.is_empty());
    let why: Vec<&Skip> = plan.skipped.iter().map(|s| &s.why).collect();
    assert_eq!(
        why[0],
        &Skip::Held {
            installed: "1.0-1".into()
        }
    );
    assert_eq!(why[1], &Skip::AlreadyInstalled);
    assert_eq!(
        why[2],
        &Skip::NewerInstalled {
            installed: "1.0-1".into()
        }
    );
    assert_eq!(why[3], &Skip::NotInstalled);
    assert!(matches!(why[4], Skip::BadVersion { .. }));
    assert_eq!(plan.held().count(), 1);
    // The real apt refuses a held package under -y: the plan never asks.
    let refused = parse_apt_output(capture!("cap-apt-held.txt"));
    assert!(refused.held_refused);
    assert!(!refused.succeeded());
}

#[test]
fn several_architectures_need_a_qualified_target() {
    let mut scan = scan_of(capture!("query-before.txt"));
    let mut other = scan.dpkg[1].clone();
    other.arch = "i386".into();
    scan.dpkg.push(other);
    scan.normalize();
    let plan = plan_install(
        &[target("hello-outpost", "1.1-1")],
        &scan,
        &PlanOptions::default(),
    );
    assert_eq!(plan.skipped[0].why, Skip::AmbiguousArch);
    let mut t = target("hello-outpost", "1.1-1");
    t.arch = Some("i386".into());
    let plan = plan_install(&[t], &scan, &PlanOptions::default());
    assert_eq!(plan.argv.last().unwrap(), "hello-outpost:i386=1.1-1");
}

#[test]
fn rollback_downgrades_from_the_kept_deb_and_removes_new_packages() {
    let before = scan_of(capture!("query-before.txt"));
    let after = scan_of(capture!("query-after.txt"));
    let changes = changes_between(&before, &after);
    assert_eq!(changes.len(), 2);
    let kept = [KeptDeb {
        name: "hello-outpost".into(),
        arch: "all".into(),
        version: "1.0-1".into(),
        path: "/var/lib/outpost-agent/keep/hello-outpost_1.0-1_all.deb".into(),
        sha256: "cb59ff42".into(),
    }];
    let plan = plan_rollback(&changes, &kept, None);
    assert!(plan.argv.contains(&"--allow-downgrades".to_string()));
    assert!(
        plan.argv
            .contains(&"Dpkg::Options::=--force-confold".to_string())
    );
    let tail: Vec<&str> = plan.argv[plan.argv.len() - 2..]
        .iter()
        .map(String::as_str)
        .collect();
    assert_eq!(
        tail,
        [
            "/var/lib/outpost-agent/keep/hello-outpost_1.0-1_all.deb",
            "newdep-outpost:all-"
        ]
    );
    assert!(plan.from_repository.is_empty());
    assert!(plan.prechecks.contains(&PreCheck::VerifyDeb {
        path: kept[0].path.clone(),
        sha256: "cb59ff42".into()
    }));
    assert_eq!(
        plan.steps[1],
        RollbackStep::Remove {
            name: "newdep-outpost".into(),
            arch: "all".into()
        }
    );
    // The real rollback (old version gone from the index, kept .deb) put
    // the previous versions back and removed the new dependency.
    let rolled = scan_of(capture!("query-rolled-back.txt"));
    assert!(changes_between(&before, &rolled).is_empty());
    let out = parse_apt_output(capture!("cap-apt-rollback.txt"));
    assert!(out.succeeded(), "{out:?}");
    assert_eq!(
        out.changes,
        vec![
            change("hello-outpost", Some("1.1-1"), Some("1.0-1"), true),
            change("newdep-outpost", Some("1.0-1"), None, true),
        ]
    );
}

#[test]
fn rollback_without_a_kept_deb_names_the_repository_versions() {
    let changes = [
        change("libfoo", Some("1.0"), Some("1.1"), true),
        change("gone", Some("2.0"), None, true),
        change("same", Some("3.0"), Some("3.0"), true),
    ];
    let plan = plan_rollback(&changes, &[], Some("http://cache:3142"));
    assert_eq!(
        plan.from_repository,
        vec!["libfoo=1.0".to_string(), "gone=2.0".to_string()]
    );
    assert_eq!(plan.steps.len(), 2, "an unchanged package needs nothing");
    assert!(
        plan.argv
            .ends_with(&["libfoo=1.0".to_string(), "gone=2.0".to_string()])
    );
    assert!(
        plan.argv
            .contains(&"Acquire::http::Proxy=http://cache:3142".to_string())
    );
    assert!(plan_rollback(&[], &[], None).argv.is_empty());
}

#[test]
fn free_space_check_reports_what_is_missing() {
    let c = PreCheck::FreeSpace {
        path: "/".into(),
        min_bytes: 200 << 20,
    };
    assert!(free_space_ok(&c, 200 << 20).is_ok());
    let e = free_space_ok(&c, 10 << 20).unwrap_err();
    assert_eq!(e, "/: 10 MiB free, 200 MiB needed");
    assert!(free_space_ok(&PreCheck::DpkgLockFree, 0).is_ok());
}

#[test]
fn targets_come_from_a_missing_patch() {
    use crate::assess::PatchBinary;
    use crate::version::DebVersion;
    let m = MissingPatch {
        source: "openssl".into(),
        installed: DebVersion::parse("3.0.11-1").unwrap(),
        candidate: Some(DebVersion::parse("3.0.15-1").unwrap()),
        binaries: vec![PatchBinary {
            name: "libssl3".into(),
            arch: Some("amd64".into()),
            from: DebVersion::parse("3.0.11-1").unwrap(),
            to: DebVersion::parse("3.0.15-1").unwrap(),
            held: false,
        }],
        security: true,
        cves: vec![],
        unimportant_cves: vec![],
        severity: None,
        fix_not_in_repositories: vec![],
        reboot_expected: false,
        first_seen_ms: 0,
        risk: 1,
        download_bytes: None,
        candidate_first_seen_ms: 0,
    };
    let t = BinaryTarget::from_missing(&m);
    assert_eq!(t[0].apt_arg(), "libssl3:amd64=3.0.15-1");
}

// ---- parsers over real outputs ----

#[test]
fn real_apt_upgrade_output_gives_the_changes_and_the_kept_conffile() {
    let out = parse_apt_output(capture!("cap-apt-install.txt"));
    assert!(out.succeeded(), "{out:?}");
    assert_eq!(
        out.changes,
        vec![
            change("newdep-outpost", None, Some("1.0-1"), true),
            change("hello-outpost", Some("1.0-1"), Some("1.1-1"), true),
        ]
    );
    assert_eq!(out.conffiles_kept.len(), 1);
    assert!(out.conffiles_kept[0].ends_with("/etc/hello-outpost/hello-outpost.conf"));
}

#[test]
fn real_dpkg_install_output_gives_new_packages() {
    let out = parse_apt_output(capture!("cap-install.txt"));
    assert!(out.succeeded());
    assert_eq!(
        out.changes,
        vec![
            change("hello-outpost", None, Some("1.0-1"), true),
            change("broken-outpost", None, Some("1.0-1"), true),
        ]
    );
}

#[test]
fn real_failing_preinst_is_a_failure_of_its_package_with_the_reason() {
    let out = parse_apt_output(capture!("cap-apt-fail.txt"));
    assert!(!out.succeeded());
    assert!(out.changes.is_empty(), "nothing was unpacked");
    assert_eq!(out.failures.len(), 1);
    let f = &out.failures[0];
    assert_eq!(
        (f.package.as_str(), f.stage.as_str()),
        ("broken-outpost", "--unpack")
    );
    assert_eq!(
        f.reason,
        "new broken-outpost package pre-installation script subprocess returned error exit status 1"
    );
    assert_eq!(
        out.errors,
        vec!["Sub-process /usr/bin/dpkg returned an error code (1)".to_string()]
    );
}

#[test]
fn real_failing_postinst_leaves_the_package_unconfigured_and_dpkg_audit_unclean() {
    let out = parse_apt_output(capture!("cap-apt-postinst-fail.txt"));
    assert!(!out.succeeded());
    assert_eq!(out.failures[0].package, "badpost-outpost");
    assert_eq!(out.failures[0].stage, "--configure");
    // "Setting up" was printed, then the script failed: not configured.
    assert_eq!(
        out.changes,
        vec![change("badpost-outpost", None, Some("1.0-1"), false)]
    );
    let audit = parse_dpkg_audit(capture!("cap-audit-unclean.txt"));
    assert_eq!(audit.len(), 1);
    assert_eq!(audit[0].package, "badpost-outpost");
    assert!(
        audit[0]
            .problem
            .starts_with("The following packages are only half configured")
    );
    assert!(parse_dpkg_audit(capture!("cap-audit-clean.txt")).is_empty());
}

#[test]
fn real_lock_errors_name_the_holder() {
    let apt = parse_apt_output(capture!("cap-apt-lock.txt"));
    let lock = apt.lock.clone().expect("apt lock");
    assert!(lock.pid.is_some());
    assert_eq!(lock.process.as_deref(), Some("python3"));
    assert!(!apt.succeeded());
    let dpkg = parse_apt_output(capture!("cap-dpkg-lock.txt"));
    assert!(dpkg.lock.unwrap().pid.is_some());
}

#[test]
fn arch_qualified_names_and_garbage_lines() {
    let text = "Unpacking libssl3:amd64 (3.0.15-1~deb12u1) over (3.0.11-1~deb12u2) ...\n\
                Setting up libssl3:amd64 (3.0.15-1~deb12u1) ...\n\
                Unpacking (broken) ...\nUnpacking x (1.0\nSetting up \n\
                dpkg: error processing package\n";
    let out = parse_apt_output(text);
    assert_eq!(out.changes.len(), 1);
    assert_eq!(out.changes[0].arch.as_deref(), Some("amd64"));
    assert_eq!(out.changes[0].from.as_deref(), Some("3.0.11-1~deb12u2"));
    assert!(out.changes[0].configured);
    assert_eq!(out.failures.len(), 1);
}

#[test]
fn simulation_of_the_install_matches_the_real_run() {
    // apt's own simulation (the scan's parser) agrees with what happened.
    let plan = crate::scan::apt_sim::parse_apt_simulation(capture!("cap-apt-sim.txt"));
    let real = parse_apt_output(capture!("cap-apt-install.txt"));
    let sim: Vec<(String, Option<String>, String)> = plan
        .upgrades
        .iter()
        .map(|u| {
            (
                u.name.clone(),
                u.from.as_ref().map(|v| v.as_str().to_string()),
                u.to.as_str().to_string(),
            )
        })
        .collect();
    let got: Vec<(String, Option<String>, String)> = real
        .changes
        .iter()
        .map(|c| (c.name.clone(), c.from.clone(), c.to.clone().unwrap()))
        .collect();
    assert_eq!(sim, got);
}

#[test]
fn plans_round_trip_through_json() {
    let before = scan_of(capture!("query-before.txt"));
    let plan = plan_install(
        &[target("hello-outpost", "1.1-1")],
        &before,
        &PlanOptions::default(),
    );
    let back: InstallPlan = serde_json::from_str(&serde_json::to_string(&plan).unwrap()).unwrap();
    assert_eq!(back, plan);
}

mod props {
    use super::*;
    use proptest::prelude::*;

    /// Lines made of the tokens the parser looks for, in any order and
    /// truncated anywhere.
    fn line() -> impl Strategy<Value = String> {
        let head = prop_oneof![
            Just("Unpacking "),
            Just("Setting up "),
            Just("Removing "),
            Just("dpkg: error processing archive "),
            Just("dpkg: error processing package "),
            Just("E: Could not get lock /l. It is held by process "),
            Just("dpkg: error: dpkg frontend lock was locked by another process with pid "),
            Just("Configuration file '"),
            Just(" ==> Keeping old config file as default."),
            Just("Installing new version of config file "),
            Just(" "),
            Just(""),
        ];
        let tail = prop::collection::vec(
            prop_oneof![
                Just("a:b".to_string()),
                Just(" (".to_string()),
                Just(")".to_string()),
                Just(" over (".to_string()),
                Just(" ...".to_string()),
                Just("'".to_string()),
                Just(":".to_string()),
                "[a-z0-9.+~-]{0,6}".prop_map(String::from),
                "\\PC{0,3}".prop_map(String::from),
            ],
            0..8,
        );
        (head, tail).prop_map(|(h, t)| format!("{h}{}", t.concat()))
    }

    proptest! {
        #[test]
        fn apt_output_parsers_are_total_and_rollbacks_name_each_change_once(
            lines in prop::collection::vec(line(), 0..40)
        ) {
            let text = lines.join("\n");
            let out = parse_apt_output(&text);
            prop_assert!(out.changes.iter().all(|c| !c.name.is_empty()));
            if out.lock.is_some() || !out.failures.is_empty() {
                prop_assert!(!out.succeeded());
            }
            let mut seen = std::collections::BTreeSet::new();
            for c in &out.changes {
                prop_assert!(seen.insert((c.name.clone(), c.arch.clone())), "{} twice", c.name);
            }
            let plan = plan_rollback(&out.changes, &[], None);
            prop_assert!(plan.steps.len() <= out.changes.len());
            let _ = parse_dpkg_audit(&text);
        }
    }
}

#[test]
fn combined_attempts_undo_to_the_versions_before_the_first() {
    // Attempt 1 upgraded libssl3 and failed on openssl; attempt 2
    // upgraded openssl; attempt 3 took libssl3 one further and added a
    // new dependency.
    let a1 = vec![
        change("libssl3", Some("3.0.11-1"), Some("3.0.13-1"), true),
        change("openssl", Some("3.0.11-1"), Some("3.0.11-1"), false),
    ];
    let a2 = vec![change("openssl", Some("3.0.11-1"), Some("3.0.13-1"), true)];
    let a3 = vec![
        change("libssl3", Some("3.0.13-1"), Some("3.0.14-1"), true),
        change("newdep", None, Some("1.0-1"), true),
    ];
    let want = vec![
        change("libssl3", Some("3.0.11-1"), Some("3.0.14-1"), true),
        change("newdep", None, Some("1.0-1"), true),
        change("openssl", Some("3.0.11-1"), Some("3.0.13-1"), true),
    ];
    // Whatever order the reports arrived in.
    for order in [[&a1, &a2, &a3], [&a3, &a1, &a2], [&a2, &a3, &a1]] {
        let got = combine_changes(order.iter().map(|a| a.as_slice()));
        assert_eq!(got, want, "{order:?}");
    }
    // The same report twice changes nothing; a package changed back to
    // where it started is not rolled back.
    assert_eq!(combine_changes([a2.as_slice(), a2.as_slice()]), a2);
    let back = vec![change("libssl3", Some("3.0.14-1"), Some("3.0.11-1"), true)];
    let got = combine_changes([a1.as_slice(), a3.as_slice(), back.as_slice()]);
    assert!(got.iter().all(|c| c.name != "libssl3"), "{got:?}");
    // The rollback of the combination restores both packages' first versions.
    let plan = plan_rollback(&want, &[], None);
    assert!(
        plan.argv.contains(&"libssl3=3.0.11-1".to_string()),
        "{:?}",
        plan.argv
    );
    assert!(
        plan.argv.contains(&"openssl=3.0.11-1".to_string()),
        "{:?}",
        plan.argv
    );
    assert!(
        plan.argv.contains(&"newdep-".to_string()),
        "{:?}",
        plan.argv
    );
}

#[test]
fn combined_kept_debs_name_each_path_once() {
    let k = |name: &str, version: &str| KeptDeb {
        name: name.into(),
        arch: "amd64".into(),
        version: version.into(),
        path: format!("/var/lib/outpost-agent/debs/{name}_{version}_amd64.deb"),
        sha256: "0".repeat(64),
    };
    let a1 = vec![k("libssl3", "3.0.11-1")];
    let a2 = vec![k("openssl", "3.0.11-1"), k("libssl3", "3.0.11-1")];
    let got = combine_kept([a1.as_slice(), a2.as_slice()]);
    assert_eq!(got.len(), 2, "{got:?}");
    assert!(got.iter().any(|d| d.name == "openssl"));
}
