//! Patch assessment end to end (issue 14): a real agent scans this
//! machine's real dpkg database; catalogs in the Debian tracker format and
//! in OSV, written here from real installed source packages with fixed
//! versions above and below the installed ones, are imported through the
//! CLI; the device's fixable and open CVEs equal what `dpkg
//! --compare-versions` says. A malformed feed is refused with its position
//! and the previous catalog stays in service. A package installed into a
//! throwaway dpkg root is reported within a minute. Two agents refresh
//! apt's indexes (real `apt-get update`) through the appliance's LAN
//! cache: each index is fetched from upstream once per site; an agent
//! whose cache is unreachable reports its indexes stale.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use outpost_tests::{Agent, Appliance, scratch, stderr, wait_for};
use serde_json::{Value, json};

/// Installed source packages of this machine with one source version each.
pub(crate) fn installed_sources() -> BTreeMap<String, String> {
    let o = Command::new("dpkg-query")
        .args([
            "-W",
            "-f",
            "${db:Status-Abbrev}\t${source:Package}\t${source:Version}\n",
        ])
        .output()
        .expect("dpkg-query");
    let mut versions: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for line in String::from_utf8_lossy(&o.stdout).lines() {
        let f: Vec<&str> = line.split('\t').collect();
        if f.len() == 3 && f[0].starts_with("ii") {
            versions
                .entry(f[1].to_string())
                .or_default()
                .insert(f[2].to_string());
        }
    }
    versions
        .into_iter()
        .filter(|(_, v)| v.len() == 1)
        .map(|(s, v)| (s, v.into_iter().next().unwrap_or_default()))
        .collect()
}

/// `dpkg --compare-versions a lt b`.
fn dpkg_lt(a: &str, b: &str) -> bool {
    Command::new("dpkg")
        .args(["--compare-versions", a, "lt", b])
        .status()
        .expect("dpkg --compare-versions")
        .success()
}

/// The device's findings of our test CVEs, by state.
fn findings(app: &Appliance, dev: &str) -> Option<(BTreeSet<String>, BTreeSet<String>)> {
    let v: Value = app.api(&format!("/api/v1/patches/devices/{dev}")).ok()?;
    let a = v.get("assessment")?;
    if a.is_null() || a["status"] != "assessed" {
        return None;
    }
    let mut fixable = BTreeSet::new();
    let mut open = BTreeSet::new();
    for f in a["findings"].as_array()? {
        let id = f["id"].as_str().unwrap_or("").to_string();
        if !id.starts_with("CVE-2099-") {
            continue;
        }
        match f["state"].as_str() {
            Some("fixable") => fixable.insert(id),
            Some("open") => open.insert(id),
            _ => false,
        };
    }
    Some((fixable, open))
}

fn write(path: &Path, v: &Value) {
    std::fs::write(path, serde_json::to_vec_pretty(v).unwrap()).unwrap();
}

#[test]
fn a_real_scan_is_assessed_exactly_as_dpkg_compare_versions_says_and_a_bad_feed_changes_nothing() {
    let sources = installed_sources();
    assert!(sources.len() >= 8, "too few installed source packages");
    // Spread over the alphabet: a deterministic, varied choice.
    let step = sources.len() / 8;
    let chosen: Vec<(String, String)> = sources.into_iter().step_by(step.max(1)).take(8).collect();
    let above = |v: &str| format!("{v}+outpost1");
    let below = "0.0~outpost1".to_string();

    let tmp = scratch("patches-real");
    let app = Appliance::start(tmp.path());

    // The tracker: sources 0..4, a fix above and a fix below each, plus
    // an open CVE for source 0.
    let mut tracker = serde_json::Map::new();
    let mut expected_fixable = BTreeSet::new();
    let mut expected_open = BTreeSet::new();
    let mut n = 1000;
    for (src, installed) in &chosen[..4] {
        let mut cves = serde_json::Map::new();
        for fixed in [above(installed), below.clone()] {
            let id = format!("CVE-2099-{n}");
            n += 1;
            if dpkg_lt(installed, &fixed) {
                expected_fixable.insert(id.clone());
            }
            cves.insert(
                id,
                json!({"description": "e2e", "releases": {"bookworm": {
                    "status": "resolved", "fixed_version": fixed, "urgency": "high"}}}),
            );
        }
        tracker.insert(src.clone(), Value::Object(cves));
    }
    tracker
        .get_mut(&chosen[0].0)
        .and_then(Value::as_object_mut)
        .unwrap()
        .insert(
            "CVE-2099-1999".into(),
            json!({"releases": {"bookworm": {"status": "open", "urgency": "medium"}}}),
        );
    expected_open.insert("CVE-2099-1999".to_string());
    let tracker_path = tmp.path().join("tracker.json");
    write(&tracker_path, &Value::Object(tracker.clone()));

    // OSV: sources 4..8, the same pattern, plus one record with no fix.
    let mut records = Vec::new();
    let mut m = 2000;
    for (src, installed) in &chosen[4..] {
        for fixed in [above(installed), below.clone()] {
            let cve = format!("CVE-2099-{m}");
            m += 1;
            if dpkg_lt(installed, &fixed) {
                expected_fixable.insert(cve.clone());
            }
            records.push(json!({
                "id": format!("DEBIAN-{cve}"), "upstream": [cve], "summary": "e2e",
                "affected": [{"package": {"ecosystem": "Debian:12", "name": src},
                    "ranges": [{"type": "ECOSYSTEM", "events": [{"introduced": "0"}, {"fixed": fixed}]}]}]
            }));
        }
    }
    records.push(json!({
        "id": "DEBIAN-CVE-2099-2999", "upstream": ["CVE-2099-2999"],
        "affected": [{"package": {"ecosystem": "Debian:12", "name": chosen[5].0},
            "ranges": [{"type": "ECOSYSTEM", "events": [{"introduced": "0"}]}]}]
    }));
    expected_open.insert("CVE-2099-2999".to_string());
    let osv_path = tmp.path().join("osv.json");
    write(&osv_path, &Value::Array(records));

    // The tracker before the agent's first scan, OSV after it (a catalog
    // change re-assesses the stored device).
    let out = app.cli_ok(&["advisories", "import", tracker_path.to_str().unwrap()]);
    assert!(out.contains("imported debian-tracker"), "{out}");

    let mut agent = Agent::enroll(tmp.path(), "a1", &app);
    std::fs::write(
        agent.state.join("agent.toml"),
        format!(
            "package_db_poll_interval = \"2s\"\n[package_tools]\napt_pkgcache_dir = \"{}\"\n",
            agent.state.display()
        ),
    )
    .unwrap();
    agent.start();
    let dev = agent.device_id.clone();
    wait_for(Duration::from_secs(90), "the agent's first scan", || {
        findings(&app, &dev)
    });
    let out = app.cli_ok(&[
        "advisories",
        "import",
        osv_path.to_str().unwrap(),
        "--format",
        "osv",
        "--json",
    ]);
    let imported: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(imported["devices_reassessed"], 1, "{out}");

    let (fixable, open) = findings(&app, &dev).expect("assessed");
    assert_eq!(fixable, expected_fixable, "fixable CVEs");
    assert_eq!(open, expected_open, "open CVEs");
    // The scan is this machine's dpkg database.
    let d: Value = app.api(&format!("/api/v1/patches/devices/{dev}")).unwrap();
    let dpkg_count = String::from_utf8_lossy(
        &Command::new("dpkg-query")
            .args(["-W", "-f", "${db:Status-Abbrev}\n"])
            .output()
            .unwrap()
            .stdout,
    )
    .lines()
    .filter(|l| {
        let b = l.as_bytes();
        b.len() > 1 && !matches!(b[1], b'n' | b'c')
    })
    .count();
    assert_eq!(d["packages"].as_u64().unwrap() as usize, dpkg_count);

    // The views answer.
    let cve: Value = app.api("/api/v1/patches/cves/CVE-2099-1999").unwrap();
    assert_eq!(cve["open"], 1);
    let text = app.cli_ok(&["patches", "device", &dev]);
    assert!(text.contains("CVE-2099-1999"), "{text}");
    let summary: Value =
        serde_json::from_str(&app.cli_ok(&["patches", "summary", "--json"])).unwrap();
    assert_eq!(summary["fleet"]["devices"], 1);

    // A truncated tracker: refused with its position, nothing changes.
    let bad = tmp.path().join("bad.json");
    let good_text = serde_json::to_string(&Value::Object(tracker)).unwrap();
    std::fs::write(&bad, &good_text[..good_text.len() * 2 / 3]).unwrap();
    let o = app.cli(&["advisories", "import", bad.to_str().unwrap()]);
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(
        err.contains("line") && err.contains("previous catalog stays"),
        "{err}"
    );
    let status: Value =
        serde_json::from_str(&app.cli_ok(&["advisories", "status", "--json"])).unwrap();
    let tracker_src = status["sources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "debian-tracker")
        .expect("the tracker source is still there");
    assert!(
        tracker_src["location"]
            .as_str()
            .unwrap()
            .ends_with("tracker.json")
    );
    let (fixable2, open2) = findings(&app, &dev).expect("assessed");
    assert_eq!((fixable2, open2), (expected_fixable, expected_open));
    assert_eq!(app.metric("outpost_patches_import_failures_total"), 1.0);
    assert!(app.metric("outpost_patches_scans_received_total{kind=\"full\"}") >= 1.0);
}

#[test]
fn a_package_installed_in_a_throwaway_dpkg_root_is_reported_within_a_minute() {
    let tmp = scratch("patches-root");
    let root = tmp.path().join("root");
    let admin = root.join("var/lib/dpkg");
    std::fs::create_dir_all(admin.join("updates")).unwrap();
    std::fs::create_dir_all(admin.join("info")).unwrap();
    std::fs::write(admin.join("status"), "").unwrap();
    // A tiny package built here.
    let pkg = tmp.path().join("pkg");
    std::fs::create_dir_all(pkg.join("DEBIAN")).unwrap();
    std::fs::create_dir_all(pkg.join("usr/share/doc/outpost-e2e-probe")).unwrap();
    std::fs::write(
        pkg.join("DEBIAN/control"),
        "Package: outpost-e2e-probe\nVersion: 1.0-1\nArchitecture: all\nMaintainer: e2e <e2e@example.invalid>\nDescription: probe\n",
    )
    .unwrap();
    std::fs::write(pkg.join("usr/share/doc/outpost-e2e-probe/x"), "x").unwrap();
    let deb = tmp.path().join("probe.deb");
    let o = Command::new("dpkg-deb")
        .arg("--build")
        .arg(&pkg)
        .arg(&deb)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    let app = Appliance::start(tmp.path());
    let mut agent = Agent::enroll(tmp.path(), "a2", &app);
    std::fs::write(
        agent.state.join("agent.toml"),
        format!(
            "package_db_poll_interval = \"2s\"\n[package_tools]\nmanager = \"dpkg\"\ndpkg_admindir = \"{}\"\napt_simulate = false\n",
            admin.display()
        ),
    )
    .unwrap();
    agent.start();
    let dev = agent.device_id.clone();
    let packages = |app: &Appliance| -> Option<u64> {
        let v: Value = app.api(&format!("/api/v1/patches/devices/{dev}")).ok()?;
        v["packages"].as_u64()
    };
    assert_eq!(
        wait_for(Duration::from_secs(60), "the first scan", || packages(&app)),
        0
    );
    let o = Command::new("dpkg")
        .arg(format!("--root={}", root.display()))
        .args(["--force-script-chrootless", "--force-not-root", "-i"])
        .arg(&deb)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let installed_at = std::time::Instant::now();
    wait_for(
        Duration::from_secs(60),
        "the install to be reported",
        || (packages(&app) == Some(1)).then_some(()),
    );
    assert!(installed_at.elapsed() < Duration::from_secs(60));
    assert!(
        app.metric("outpost_patches_scans_received_total{kind=\"delta\"}") >= 1.0,
        "the change came as a delta"
    );
    // Removed again: reported too.
    let o = Command::new("dpkg")
        .arg(format!("--root={}", root.display()))
        .args([
            "--force-script-chrootless",
            "--force-not-root",
            "-r",
            "outpost-e2e-probe",
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    wait_for(
        Duration::from_secs(60),
        "the removal to be reported",
        || (packages(&app) == Some(0)).then_some(()),
    );
}

#[test]
fn patches_scan_wait_completes_when_the_agent_buffered_a_new_full_scan() {
    let tmp = scratch("patches-scan");
    let admin = tmp.path().join("dpkg");
    std::fs::create_dir_all(admin.join("updates")).unwrap();
    std::fs::create_dir_all(admin.join("info")).unwrap();
    std::fs::write(
        admin.join("status"),
        "Package: hello\nStatus: install ok installed\nArchitecture: amd64\nVersion: 2.10-3\n\n",
    )
    .unwrap();
    let app = Appliance::start(tmp.path());
    let mut agent = Agent::enroll(tmp.path(), "a3", &app);
    // Scans only at start and on request (polls and intervals far away).
    std::fs::write(
        agent.state.join("agent.toml"),
        format!(
            "package_db_poll_interval = \"1h\"\npackage_scan_interval = \"24h\"\n[package_tools]\nmanager = \"dpkg\"\ndpkg_admindir = \"{}\"\napt_simulate = false\n",
            admin.display()
        ),
    )
    .unwrap();
    agent.start();
    let dev = agent.device_id.clone();
    let scanned_at = |app: &Appliance| -> Option<u64> {
        let v: Value = app.api(&format!("/api/v1/patches/devices/{dev}")).ok()?;
        v["scanned_at_ms"].as_u64()
    };
    let first = wait_for(Duration::from_secs(60), "the start scan", || {
        scanned_at(&app)
    });
    let fulls = app.metric("outpost_patches_scans_received_total{kind=\"full\"}");
    let out = app.cli_ok(&["patches", "scan", &dev, "--wait"]);
    assert!(
        out.contains("full report") && out.contains("packages=1") && out.contains("bytes="),
        "{out}"
    );
    wait_for(
        Duration::from_secs(30),
        "the requested scan to arrive",
        || scanned_at(&app).filter(|t| *t > first),
    );
    assert!(app.metric("outpost_patches_scans_received_total{kind=\"full\"}") > fulls);
    assert_eq!(app.metric("outpost_patches_full_scan_requests_total"), 1.0);
    // The command shows in the command list as the technician's.
    let cmds: Value = app.api(&format!("/api/v1/commands?device={dev}")).unwrap();
    let scan = cmds
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["command"] == "scan-packages (full)")
        .expect("the scan command is listed");
    assert_eq!(scan["state"], "completed");
}

/// A security upgrade apt offers on this machine: (source package, the
/// candidate version), from `apt-get -s dist-upgrade`.
fn a_security_upgrade() -> Option<(String, String)> {
    let out = Command::new("apt-get")
        .args(["-s", "dist-upgrade"])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let line = text
        .lines()
        .find(|l| l.starts_with("Inst ") && l.contains("-security"))?;
    let mut words = line.split_whitespace();
    let binary = words.nth(1)?.to_string();
    let candidate = line
        .split('(')
        .nth(1)?
        .split_whitespace()
        .next()?
        .to_string();
    let q = Command::new("dpkg-query")
        .args(["-W", "-f", "${source:Package}", &binary])
        .output()
        .ok()?;
    let source = String::from_utf8_lossy(&q.stdout).trim().to_string();
    (!source.is_empty()).then_some((source, candidate))
}

/// Issue 14, central: a real agent's scan, assessed at the site against a
/// test catalog whose high CVE is fixed by a security upgrade apt offers
/// here, makes the device non-compliant (grace 0 days, once re-assessed);
/// the site's uplink batch carries it and central shows it per device and
/// per customer, the missing patch and its CVE too: in the API ("which
/// devices are exposed to CVE-X") and on the console's device and CVE
/// pages in headless Chromium.
#[test]
fn a_non_compliant_device_at_the_site_shows_at_central_with_its_missing_patch_in_the_browser() {
    let Some((source, candidate)) = a_security_upgrade() else {
        eprintln!("no security upgrade offered by apt on this machine: skipped");
        return;
    };
    let tmp = scratch("patches-central");
    let root = tmp.path();
    let central = crate::uplink::Central::start(root);
    let (token, fp) = central.site_add("acme", "dental", "main-office");
    let cfg = root.join("outpost.toml");
    std::fs::write(
        &cfg,
        "[uplink]\nreconnect_base = \"200ms\"\nreconnect_max = \"1s\"\n[patches.policy]\ngrace_days = 0\n",
    )
    .unwrap();
    let app = Appliance::start_with(root, &["--config", cfg.to_str().unwrap()]);
    let o = app.cli(&[
        "uplink",
        "join",
        "--central",
        &central.quic.to_string(),
        "--token",
        &token,
        "--ca-fingerprint",
        &fp,
        "--interval",
        "1s",
    ]);
    assert!(o.status.success(), "uplink join: {}", stderr(&o));
    let site = String::from_utf8_lossy(&o.stdout).trim().to_string();

    let tracker = json!({ source.clone(): {
        "CVE-2099-5000": {"description": "e2e", "releases": {"bookworm": {
            "status": "resolved", "fixed_version": candidate, "urgency": "high"}}}
    }});
    let tracker_path = root.join("tracker.json");
    write(&tracker_path, &tracker);
    app.cli_ok(&["advisories", "import", tracker_path.to_str().unwrap()]);

    let mut agent = Agent::enroll(root, "a1", &app);
    std::fs::write(
        agent.state.join("agent.toml"),
        format!(
            "[package_tools]\napt_pkgcache_dir = \"{}\"\n",
            agent.state.display()
        ),
    )
    .unwrap();
    agent.start();
    let dev = agent.device_id.clone();
    wait_for(Duration::from_secs(90), "the agent's first scan", || {
        findings(&app, &dev)
    });
    // Re-assessed later (the same CVEs under another source name): the
    // missing patch is now older than 0 days.
    std::thread::sleep(Duration::from_millis(5));
    app.cli_ok(&[
        "advisories",
        "import",
        tracker_path.to_str().unwrap(),
        "--name",
        "again",
    ]);
    let d: Value = app.api(&format!("/api/v1/patches/devices/{dev}")).unwrap();
    assert_eq!(
        d["assessment"]["compliance"], "non-compliant",
        "at the site: {d}"
    );

    let viewer = central.api_token("acme", "viewer");
    let row = wait_for(Duration::from_secs(60), "compliance at central", || {
        let v = central.get(&format!("/api/v1/sites/{site}/devices/{dev}"), &viewer);
        (v["patches"]["compliance"] == "non-compliant").then(|| v["patches"].clone())
    });
    assert!(row["missing"].as_u64().unwrap() >= 1, "{row}");
    assert!(
        row["security_patches"]["high"].as_u64().unwrap() >= 1,
        "{row}"
    );
    assert!(row["last_scan_ms"].as_u64().unwrap() > 0, "{row}");
    let all = central.get("/api/v1/patches/compliance", &viewer);
    assert_eq!(all["total"]["non_compliant"], 1, "{all}");
    assert_eq!(all["customers"][0]["customer"], "dental", "{all}");
    assert_eq!(all["sites"][0]["site_id"], site.as_str(), "{all}");

    // The findings travelled too (batch format 5): the missing patch of
    // the device, and the CVE's exposure across the tenant.
    let patches = wait_for(Duration::from_secs(60), "findings at central", || {
        let v = central.get(
            &format!("/api/v1/sites/{site}/devices/{dev}/patches"),
            &viewer,
        );
        v["findings"]["patches"]
            .as_array()
            .filter(|p| p.iter().any(|p| p["source"] == source.as_str()))
            .cloned()
    });
    let p = patches
        .iter()
        .find(|p| p["source"] == source.as_str())
        .unwrap();
    assert_eq!(p["cves"][0], "CVE-2099-5000", "{p}");
    let e = central.get("/api/v1/patches/cves/CVE-2099-5000", &viewer);
    assert_eq!(e["total"]["devices"], 1, "{e}");
    assert_eq!(e["total"]["fixable"], 1, "{e}");
    assert_eq!(e["customers"][0]["customer"], "dental", "{e}");

    // The compliance report as a PDF from both CLIs: its text names the
    // device and its CVE, and the site's names the site.
    let o = app.cli(&["patches", "report", "--format", "pdf"]);
    assert!(o.status.success(), "site report: {}", stderr(&o));
    assert!(o.stdout.starts_with(b"%PDF-"), "raw PDF bytes on stdout");
    let site_doc: Value = app.api("/api/v1/patches/report?format=json").unwrap();
    let name = site_doc["devices"][0]["name"].as_str().unwrap().to_string();
    assert_eq!(site_doc["source"], "main-office", "{site_doc}");
    assert_eq!(
        site_doc["devices"][0]["cves"][0], "CVE-2099-5000",
        "{site_doc}"
    );
    if let Some(text) = pdf_text(root, "site-report.pdf", &o.stdout) {
        assert!(text.contains("Source: main-office"), "{text}");
        assert!(text.contains(&name), "the device {name}: {text}");
        assert!(text.contains("CVEs per device"), "{text}");
        assert!(text.contains("CVE-2099-5000"), "{text}");
    }
    let central_pdf = root.join("central-report.pdf");
    let o = Command::new(outpost_tests::bin("outpost-central"))
        .args([
            "patches",
            "report",
            "--format",
            "pdf",
            "--customer",
            "dental",
        ])
        .args([
            "--api",
            &format!("http://{}", central.http),
            "--token",
            &viewer,
        ])
        .arg("--output")
        .arg(&central_pdf)
        .output()
        .unwrap();
    assert!(o.status.success(), "central report: {}", stderr(&o));
    let bytes = std::fs::read(&central_pdf).unwrap();
    assert!(bytes.starts_with(b"%PDF-"));
    let lines = central.get("/api/v1/patches/report?format=json", &viewer);
    let line = &lines["devices"][0];
    let central_name = match line["hostname"].as_str() {
        Some(h) if !h.is_empty() => h.to_string(),
        _ => line["device"].as_str().unwrap().to_string(),
    };
    assert_eq!(line["cves"][0], "CVE-2099-5000", "{lines}");
    if let Some(text) = pdf_text(root, "central-report-text.pdf", &bytes) {
        assert!(text.contains("Customer: dental"), "{text}");
        assert!(text.contains("Source: central"), "{text}");
        assert!(text.contains(&central_name), "{central_name}: {text}");
        assert!(text.contains("CVEs per device"), "{text}");
        assert!(text.contains("CVE-2099-5000"), "{text}");
    }

    // The console at central, in headless Chromium.
    let (ok, _, err) = central.cli(
        &[
            "user", "add", "--tenant", "acme", "--name", "pat", "--role", "viewer",
        ],
        Some("correct horse battery\n"),
    );
    assert!(ok, "{err}");
    let (mut chromium, ws) = crate::browser::chromium(root);
    let mut b = crate::browser::Browser {
        ws,
        base: format!("http://{}", central.http),
        shots: root.to_path_buf(),
    };
    b.login("pat");
    b.go(&format!("/sites/{site}/devices/{dev}"));
    b.ws.wait_until(&format!(
        "document.querySelector('#missing-patches tr[data-source=\"{source}\"]') !== null"
    ));
    let text = b.text();
    assert!(
        text.contains("CVE-2099-5000") && text.contains(&candidate),
        "the device page lists the missing patch: {text}"
    );
    b.shot("patches-device.png");
    b.go("/patches/cves/CVE-2099-5000");
    b.ws.wait_until(&format!(
        "document.querySelector('#exposed tr[data-device=\"{dev}\"][data-state=\"fixable\"]') !== null"
    ));
    b.go("/patches");
    b.ws.wait_until("document.querySelector('#top-cves tr[data-cve=\"CVE-2099-5000\"]') !== null");
    b.shot("patches-overview.png");
    chromium.kill9();
}

/// The text of a PDF by poppler's `pdftotext -layout` (written to
/// `dir/file` first); `None` (skipped, saying why) without poppler-utils.
fn pdf_text(dir: &Path, file: &str, pdf: &[u8]) -> Option<String> {
    let path = dir.join(file);
    std::fs::write(&path, pdf).unwrap();
    match Command::new("pdftotext")
        .arg("-layout")
        .arg(&path)
        .arg("-")
        .output()
    {
        Ok(o) => {
            assert!(o.status.success(), "pdftotext: {}", stderr(&o));
            Some(String::from_utf8_lossy(&o.stdout).into_owned())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            eprintln!("skipped the PDF text: pdftotext (poppler-utils) is not installed");
            None
        }
        Err(e) => panic!("running pdftotext: {e}"),
    }
}

/// An isolated apt root for an agent's index refresh (sources.list on the
/// test repository, empty dpkg status) and an `apt-get` wrapper that reads
/// only its configuration (`APT_CONFIG`): the machine's own apt setup is
/// not used. Returns (apt-get wrapper, lists dir, dpkg admindir).
fn isolated_apt(
    root: &Path,
    name: &str,
    repo_addr: std::net::SocketAddr,
    keyring: &Path,
) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    let dir = root.join(name);
    for d in [
        "etc/apt/apt.conf.d",
        "etc/apt/preferences.d",
        "etc/apt/sources.list.d",
        "etc/apt/trusted.gpg.d",
        "var/lib/apt/lists/partial",
        "var/cache/apt/archives/partial",
        "var/lib/dpkg",
        "var/log/apt",
    ] {
        std::fs::create_dir_all(dir.join(d)).unwrap();
    }
    std::fs::write(dir.join("var/lib/dpkg/status"), "").unwrap();
    let d = dir.display();
    std::fs::write(
        dir.join("etc/apt/apt.conf"),
        format!(
            "Dir \"{d}/\";\nDir::Etc \"{d}/etc/apt/\";\nDir::State \"{d}/var/lib/apt/\";\n\
             Dir::State::status \"{d}/var/lib/dpkg/status\";\nDir::Cache \"{d}/var/cache/apt/\";\n\
             Dir::Log \"{d}/var/log/apt/\";\nAcquire::Retries \"0\";\nAPT::Sandbox::User \"root\";\n\
             Debug::NoLocking \"1\";\nAcquire::Languages \"none\";\n"
        ),
    )
    .unwrap();
    std::fs::write(
        dir.join("etc/apt/sources.list"),
        format!(
            "deb [signed-by={}] http://{repo_addr}/debian stable main\n",
            keyring.display()
        ),
    )
    .unwrap();
    let wrapper = dir.join("apt-get");
    std::fs::write(
        &wrapper,
        format!("#!/bin/sh\nAPT_CONFIG={d}/etc/apt/apt.conf exec apt-get \"$@\"\n"),
    )
    .unwrap();
    let mut perms = std::fs::metadata(&wrapper).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
    std::fs::set_permissions(&wrapper, perms).unwrap();
    (
        wrapper,
        dir.join("var/lib/apt/lists"),
        dir.join("var/lib/dpkg"),
    )
}

/// Two real agents refresh apt's indexes (a real `apt-get update`)
/// through the appliance's LAN cache: the site fetches each index from
/// upstream once; the appliance shows both devices' indexes fresh. An
/// agent whose cache is unreachable still reports its packages, with its
/// indexes stale and the reason.
#[test]
fn agents_refresh_apt_indexes_through_the_lan_cache_once_per_site_and_report_stale_ones() {
    let tmp = scratch("patches-apt-refresh");
    let (keyring, up, app, cache) =
        crate::cache::cached_repo(tmp.path(), &[("outpost-hello", 10_000)]);
    let index = |dev: &str| -> Option<Value> {
        app.api::<Value>(&format!("/api/v1/patches/devices/{dev}"))
            .ok()
    };
    let config = |name: &str, proxy: &str| {
        let (apt_get, lists, admin) = isolated_apt(tmp.path(), name, up.addr, &keyring);
        format!(
            "package_db_poll_interval = \"2s\"\n[package_tools]\nmanager = \"dpkg\"\n\
             dpkg_admindir = \"{}\"\napt_get = \"{}\"\napt_lists_dir = \"{}\"\n\
             apt_simulate = false\napt_update = true\napt_proxy = \"{proxy}\"\n",
            admin.display(),
            apt_get.display(),
            lists.display()
        )
    };
    let proxy = format!("http://{cache}/");
    let mut agents = Vec::new();
    for name in ["apt-a", "apt-b"] {
        let mut agent = Agent::enroll(tmp.path(), name, &app);
        std::fs::write(
            agent.state.join("agent.toml"),
            config(&format!("{name}-apt"), &proxy),
        )
        .unwrap();
        agent.start();
        let dev = agent.device_id.clone();
        let d = wait_for(Duration::from_secs(90), "a refreshed scan", || {
            index(&dev).filter(|d| d["index_refreshed_at_ms"].is_u64())
        });
        assert!(d["index_error"].is_null(), "{d}\n{}", agent.stderr());
        agents.push(agent);
    }
    let inrelease = "/debian/dists/stable/InRelease";
    assert_eq!(up.hits(inrelease), 1, "InRelease fetched once for the site");
    let arch = String::from_utf8(
        Command::new("dpkg")
            .arg("--print-architecture")
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    let bin = format!("/debian/dists/stable/main/binary-{}", arch.trim());
    let packages_gz = up.hits(&format!("{bin}/Packages.gz")) + up.hits(&format!("{bin}/Packages"));
    assert_eq!(
        packages_gz, 1,
        "the Packages index fetched once for the site"
    );
    assert!(app.metric("outpost_cache_hits_total") >= 1.0);

    // The cache unreachable for the second agent (its proxy points at a
    // closed port): the next refreshed scan still reports, stale.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let b = &mut agents[1];
    b.stop();
    std::fs::write(
        b.state.join("agent.toml"),
        config("apt-b-apt", &format!("http://{closed}/")),
    )
    .unwrap();
    b.start();
    let dev = b.device_id.clone();
    // A full scan asked for refreshes first (the start scan of an
    // unchanged database may send nothing new); queued until the agent is
    // back.
    let out = app.cli_ok(&["patches", "scan", &dev, "--wait"]);
    assert!(!out.is_empty());
    let d = wait_for(Duration::from_secs(60), "stale indexes reported", || {
        index(&dev).filter(|d| d["index_error"].is_string())
    });
    let e = d["index_error"].as_str().unwrap();
    assert!(
        e.contains("refreshing apt's indexes") && e.contains(&closed.to_string()),
        "{e}"
    );
    assert!(
        d["index_refreshed_at_ms"].is_u64(),
        "the last refresh is still known: {d}"
    );
    assert_eq!(d["packages"], 0, "the scan itself went through: {d}");
    let s: Value = app.api("/api/v1/patches/summary").unwrap();
    assert_eq!(s["fleet"]["stale_indexes"], 1, "{s}");
}
