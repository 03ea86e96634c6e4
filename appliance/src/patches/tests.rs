use std::sync::Arc;
use std::time::Duration;

use outpost_patch::assess::{Compliance, FindingState};
use outpost_patch::catalog::FeedFormat;
use outpost_patch::scan::{
    PACKAGE_REPORT_FORMAT, PackageReport, Scan, parse_dpkg_query, parse_os_release,
};
use outpost_proto::DeviceId;
use outpost_proto::codec;
use outpost_proto::messages::PackageScanRecord;
use outpost_storage::ingest::PACKAGE_SCANS_IN;
use outpost_storage::{Store, StoreOptions};

use super::*;
use crate::metrics::Metrics;

struct Rig {
    _dir: tempfile::TempDir,
    store: Store,
    metrics: Arc<Metrics>,
    service: PatchService,
}

fn rig() -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let store = crate::db::open(&dir.path().join("db"), &StoreOptions::default()).unwrap();
    let metrics = Arc::new(Metrics::new());
    let service = PatchService::open(
        store.clone(),
        dir.path(),
        metrics.clone(),
        Policy::default(),
    )
    .unwrap();
    Rig {
        _dir: dir,
        store,
        metrics,
        service,
    }
}

pub(crate) fn scan(lines: &str, at: u64) -> Scan {
    let mut s = Scan::new_dpkg(
        at,
        parse_os_release("ID=debian\nVERSION_ID=\"12\"\nVERSION_CODENAME=bookworm\n"),
    );
    s.dpkg = parse_dpkg_query(lines).packages;
    s.normalize();
    s
}

pub(crate) const V1: &str = "ii \tlibssl3\tamd64\t3.0.11-1~deb12u2\topenssl\t3.0.11-1~deb12u2\nii \tbash\tamd64\t5.2.15-2+b2\tbash\t5.2.15-2\n";
const V2: &str = "ii \tlibssl3\tamd64\t3.0.15-1~deb12u1\topenssl\t3.0.15-1~deb12u1\nii \tbash\tamd64\t5.2.15-2+b2\tbash\t5.2.15-2\n";

pub(crate) const TRACKER: &str = r#"{
 "openssl": {
  "CVE-2024-0001": {"description": "fixed in u1", "releases": {"bookworm": {"status": "resolved", "fixed_version": "3.0.13-1~deb12u1", "urgency": "high"}}},
  "CVE-2024-0002": {"description": "not fixed", "releases": {"bookworm": {"status": "open", "urgency": "medium"}}}
 },
 "bash": {
  "CVE-2024-0003": {"releases": {"bookworm": {"status": "resolved", "fixed_version": "5.2.15-1", "urgency": "low"}}}
 }
}"#;

pub(crate) fn put_report(
    store: &Store,
    dev: DeviceId,
    seq: u64,
    report: &PackageReport,
    format: u16,
) {
    let rec = PackageScanRecord {
        format,
        full: report.is_full(),
        part: 0,
        parts: 1,
        payload: codec::encode_compressed(report).unwrap(),
    };
    store
        .put(
            PACKAGE_SCANS_IN,
            &outpost_storage::keys::device_time_key(dev, seq),
            &rec,
        )
        .unwrap();
}

fn ids(a: &DeviceAssessment, state: FindingState) -> Vec<String> {
    a.all_findings()
        .filter(|(_, f)| f.state == state)
        .map(|(_, f)| f.id.to_string())
        .collect()
}

#[test]
fn a_full_scan_then_a_delta_are_applied_and_assessed_against_the_imported_catalog() {
    let r = rig();
    r.service
        .import(FeedFormat::DebianTracker, None, "test", TRACKER.as_bytes())
        .unwrap();
    let dev = DeviceId(7);
    let s1 = scan(V1, 1_000);
    put_report(
        &r.store,
        dev,
        1,
        &PackageReport::Full(Box::new(s1.clone())),
        PACKAGE_REPORT_FORMAT,
    );
    assert_eq!(r.service.process_reports(5_000).unwrap(), 1);
    let d = r.service.device(dev).unwrap().unwrap();
    let a = d.assessment.unwrap();
    assert_eq!(ids(&a, FindingState::Fixable), ["CVE-2024-0001"]);
    assert_eq!(ids(&a, FindingState::Open), ["CVE-2024-0002"]);
    assert_eq!(d.packages, 2);

    let s2 = scan(V2, 2_000);
    put_report(
        &r.store,
        dev,
        2,
        &PackageReport::Delta(Box::new(s1.diff(&s2))),
        PACKAGE_REPORT_FORMAT,
    );
    r.service.process_reports(6_000).unwrap();
    let a = r.service.device(dev).unwrap().unwrap().assessment.unwrap();
    assert!(
        ids(&a, FindingState::Fixable).is_empty(),
        "upgraded past the fix"
    );
    assert_eq!(a.scanned_at_ms, 2_000);
    let mut inbox = 0;
    r.store
        .scan_raw(PACKAGE_SCANS_IN, &[], None, |_, _| {
            inbox += 1;
            Ok(true)
        })
        .unwrap();
    assert_eq!(inbox, 0, "applied reports leave the inbox");
    let cve = r.service.cve("CVE-2024-0002");
    assert_eq!(cve.devices.len(), 1);
    assert_eq!(cve.open, 1);
}

#[test]
fn a_delta_against_an_unknown_base_is_counted_and_waits_for_a_full_scan() {
    let r = rig();
    let dev = DeviceId(9);
    let delta = scan(V1, 1).diff(&scan(V2, 2));
    put_report(
        &r.store,
        dev,
        1,
        &PackageReport::Delta(Box::new(delta.clone())),
        PACKAGE_REPORT_FORMAT,
    );
    r.service.process_reports(10).unwrap();
    let d = r.service.device(dev).unwrap().unwrap();
    assert!(d.needs_full_scan);
    assert_eq!(d.base_misses, 1);
    assert_eq!(r.metrics.patches.delta_base_misses.get(), 1);
    // A stored scan of another state: the delta does not apply either.
    put_report(
        &r.store,
        dev,
        2,
        &PackageReport::Full(Box::new(scan(V2, 3))),
        PACKAGE_REPORT_FORMAT,
    );
    put_report(
        &r.store,
        dev,
        3,
        &PackageReport::Delta(Box::new(delta)),
        PACKAGE_REPORT_FORMAT,
    );
    r.service.process_reports(20).unwrap();
    let d = r.service.device(dev).unwrap().unwrap();
    assert!(d.needs_full_scan);
    assert_eq!(d.base_misses, 2);
    assert!(d.last_error.unwrap().contains("full scan"));
    assert_eq!(d.packages, 2, "the stored scan is kept");
}

#[test]
fn a_report_of_an_unknown_format_or_malformed_is_refused_with_a_reason() {
    let r = rig();
    let dev = DeviceId(3);
    put_report(
        &r.store,
        dev,
        1,
        &PackageReport::Full(Box::new(scan(V1, 1))),
        PACKAGE_REPORT_FORMAT + 1,
    );
    r.service.process_reports(10).unwrap();
    let d = r.service.device(dev).unwrap().unwrap();
    assert!(d.last_error.unwrap().contains("format"));
    assert!(d.assessment.is_none());
    r.store
        .put(
            PACKAGE_SCANS_IN,
            &outpost_storage::keys::device_time_key(dev, 2),
            &PackageScanRecord {
                format: PACKAGE_REPORT_FORMAT,
                full: true,
                part: 0,
                parts: 1,
                payload: vec![1, 2, 3],
            },
        )
        .unwrap();
    r.service.process_reports(20).unwrap();
    let d = r.service.device(dev).unwrap().unwrap();
    assert!(d.last_error.unwrap().contains("malformed"));
}

#[test]
fn a_malformed_feed_is_refused_with_its_position_and_the_previous_catalog_stays() {
    let r = rig();
    r.service
        .import(FeedFormat::DebianTracker, None, "good", TRACKER.as_bytes())
        .unwrap();
    let dev = DeviceId(1);
    put_report(
        &r.store,
        dev,
        1,
        &PackageReport::Full(Box::new(scan(V1, 1))),
        PACKAGE_REPORT_FORMAT,
    );
    r.service.process_reports(10).unwrap();
    let bad = &TRACKER[..TRACKER.len() / 2];
    let e = r
        .service
        .import(FeedFormat::DebianTracker, None, "bad", bad.as_bytes())
        .unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("line"), "{msg}");
    assert_eq!(r.metrics.patches.import_failures.get(), 1);
    let st = r.service.advisories_status(100).unwrap();
    assert_eq!(st.sources.len(), 1);
    assert_eq!(st.sources[0].location, "good");
    assert_eq!(st.advisories, 3);
    let a = r.service.device(dev).unwrap().unwrap().assessment.unwrap();
    assert_eq!(ids(&a, FindingState::Fixable), ["CVE-2024-0001"]);
}

#[test]
fn an_import_reassesses_devices_and_the_catalog_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let dev = DeviceId(5);
    {
        let store = crate::db::open(&dir.path().join("db"), &StoreOptions::default()).unwrap();
        let m = Arc::new(Metrics::new());
        let s = PatchService::open(store.clone(), dir.path(), m, Policy::default()).unwrap();
        put_report(
            &store,
            dev,
            1,
            &PackageReport::Full(Box::new(scan(V1, 1))),
            PACKAGE_REPORT_FORMAT,
        );
        s.process_reports(10).unwrap();
        let a = s.device(dev).unwrap().unwrap().assessment.unwrap();
        assert_eq!(a.compliance, Compliance::NoCatalog);
        let out = s
            .import(FeedFormat::DebianTracker, None, "t", TRACKER.as_bytes())
            .unwrap();
        assert_eq!(out.devices_reassessed, 1);
        let a = s.device(dev).unwrap().unwrap().assessment.unwrap();
        assert_eq!(ids(&a, FindingState::Fixable), ["CVE-2024-0001"]);
        s.record_compliance(DAY_MS + 5).unwrap();
    }
    let store = crate::db::open(&dir.path().join("db"), &StoreOptions::default()).unwrap();
    let s = PatchService::open(
        store,
        dir.path(),
        Arc::new(Metrics::new()),
        Policy::default(),
    )
    .unwrap();
    let st = s.advisories_status(100).unwrap();
    assert!(st.sources[0].loaded);
    assert_eq!(st.advisories, 3);
    let sum = s.summary(DAY_MS + 10).unwrap();
    assert_eq!(sum.fleet.devices, 1);
    assert_eq!(sum.history.len(), 1);
    assert_eq!(sum.top_cves.len(), 2);
}

#[test]
fn a_source_name_that_is_not_a_file_name_is_refused() {
    let r = rig();
    let e = r
        .service
        .import(FeedFormat::Osv, Some("../etc/passwd"), "x", b"[]")
        .unwrap_err();
    assert!(matches!(e, ImportFailure::Invalid(_)), "{e}");
}

/// Serves `body` with `status` to every request on 127.0.0.1.
async fn serve_once(status: &'static str, body: &'static str) -> std::net::SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let mut buf = vec![0u8; 4096];
            let _ = s.read(&mut buf).await;
            let head = format!(
                "HTTP/1.1 {status}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                body.len()
            );
            let _ = s.write_all(head.as_bytes()).await;
            let _ = s.write_all(body.as_bytes()).await;
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scheduled_fetch_imports_the_feed_and_an_unreachable_or_failing_one_changes_nothing() {
    let r = rig();
    let ok = serve_once("200 OK", TRACKER).await;
    let feed = super::super::config::FeedConfig {
        name: "debian-tracker".into(),
        format: "debian-tracker".into(),
        url: format!("http://{ok}/tracker/data/json"),
    };
    let out = super::super::feed::fetch_and_import(&r.service, &feed, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(out.advisories, 3);
    let imported = r.service.imported_at("debian-tracker").unwrap();

    let failing = serve_once("503 Service Unavailable", "down").await;
    let bad = super::super::config::FeedConfig {
        url: format!("http://{failing}/json"),
        ..feed.clone()
    };
    let e = super::super::feed::fetch_and_import(&r.service, &bad, Duration::from_secs(10))
        .await
        .unwrap_err();
    assert!(format!("{e:#}").contains("503"), "{e:#}");
    let truncated = serve_once("200 OK", "{\"openssl\": {").await;
    let bad = super::super::config::FeedConfig {
        url: format!("http://{truncated}/json"),
        ..feed.clone()
    };
    assert!(
        super::super::feed::fetch_and_import(&r.service, &bad, Duration::from_secs(10))
            .await
            .is_err()
    );
    assert_eq!(r.metrics.patches.import_failures.get(), 2);
    assert_eq!(r.service.imported_at("debian-tracker"), Some(imported));
    assert_eq!(r.service.advisories_status(0).unwrap().advisories, 3);
}

#[test]
fn a_feed_is_due_when_never_imported_or_older_than_the_interval() {
    use super::super::feed::due;
    assert!(due(None, 0, 10));
    assert!(!due(Some(100), 109, 10));
    assert!(due(Some(100), 110, 10));
}

#[test]
fn the_default_patches_config_fetches_the_tracker_and_a_bad_feed_is_refused() {
    let c = super::super::PatchesConfig::default();
    c.validate().unwrap();
    assert_eq!(c.feeds[0].url, super::super::feed::DEBIAN_TRACKER_URL);
    let mut bad = c.clone();
    bad.feeds[0].format = "oval".into();
    assert!(bad.validate().is_err());
    let parsed: crate::config::Config = toml::from_str(
        "[patches]\nfetch_interval = \"1h\"\nfeeds = []\n[patches.policy]\ngrace_days = 3\n",
    )
    .unwrap();
    assert_eq!(parsed.patches.policy.grace_days, 3);
    assert!(parsed.patches.feeds.is_empty());
}

#[test]
fn the_csv_report_lists_each_devices_missing_patches_and_filters_by_customer() {
    use outpost_patch::scan::AptUpgrade;
    use outpost_patch::version::DebVersion;
    let r = rig();
    r.service
        .import(FeedFormat::DebianTracker, None, "t", TRACKER.as_bytes())
        .unwrap();
    let dev = DeviceId(11);
    outpost_storage::registry::register(
        &r.store,
        &outpost_storage::model::DeviceRecord {
            id: dev,
            tenant: "acme".into(),
            customer: "dental".into(),
            hostname: "web, 1".into(),
            os: String::new(),
            kernel: String::new(),
            arch: String::new(),
            agent_version: String::new(),
            enrolled_at_ms: 0,
            cert_serial: String::new(),
            revoked_at_ms: None,
        },
    )
    .unwrap();
    let mut s = scan(V1, 1);
    s.upgrades.push(AptUpgrade {
        name: "libssl3".into(),
        arch: Some("amd64".into()),
        from: Some(DebVersion::parse("3.0.11-1~deb12u2").unwrap()),
        to: DebVersion::parse("3.0.15-1~deb12u1").unwrap(),
        origins: vec!["Debian-Security:12/stable-security".into()],
        security: true,
        size_bytes: None,
    });
    s.normalize();
    put_report(
        &r.store,
        dev,
        1,
        &PackageReport::Full(Box::new(s)),
        PACKAGE_REPORT_FORMAT,
    );
    r.service.process_reports(10).unwrap();
    let csv = r.service.report_csv(None).unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 2, "{csv}");
    assert!(lines[0].starts_with("device,hostname,customer,"));
    assert!(lines[1].contains(",\"web, 1\",dental,"), "{}", lines[1]);
    assert!(
        lines[1].contains(",openssl,3.0.11-1~deb12u2,3.0.15-1~deb12u1,true,high,CVE-2024-0001,"),
        "{}",
        lines[1]
    );
    assert_eq!(
        r.service.report_csv(Some("other")).unwrap().lines().count(),
        1
    );
    assert_eq!(
        r.service
            .report_csv(Some("dental"))
            .unwrap()
            .lines()
            .count(),
        2
    );
}

/// A site with two assessed devices of two customers: `web-1` (dental,
/// missing the openssl security update) and `db-1` (vet, up to date).
fn two_customer_rig() -> Rig {
    let r = rig();
    assess_two_customers(&r.store, &r.service);
    r
}

/// Registers and assesses the two devices of [`two_customer_rig`] in
/// `store` through `service`.
pub(crate) fn assess_two_customers(store: &Store, service: &PatchService) {
    use outpost_patch::scan::AptUpgrade;
    use outpost_patch::version::DebVersion;
    service
        .import(FeedFormat::DebianTracker, None, "t", TRACKER.as_bytes())
        .unwrap();
    for (n, host, customer, lines, upgrade) in [
        (11, "web-1", "dental", V1, true),
        (12, "db-1", "vet", V2, false),
    ] {
        let dev = DeviceId(n);
        outpost_storage::registry::register(
            store,
            &outpost_storage::model::DeviceRecord {
                id: dev,
                tenant: "acme".into(),
                customer: customer.into(),
                hostname: host.into(),
                os: String::new(),
                kernel: String::new(),
                arch: String::new(),
                agent_version: String::new(),
                enrolled_at_ms: 0,
                cert_serial: String::new(),
                revoked_at_ms: None,
            },
        )
        .unwrap();
        let mut s = scan(lines, 1);
        if upgrade {
            s.upgrades.push(AptUpgrade {
                name: "libssl3".into(),
                arch: Some("amd64".into()),
                from: Some(DebVersion::parse("3.0.11-1~deb12u2").unwrap()),
                to: DebVersion::parse("3.0.15-1~deb12u1").unwrap(),
                origins: vec!["Debian-Security:12/stable-security".into()],
                security: true,
                size_bytes: None,
            });
            s.normalize();
        }
        put_report(
            store,
            dev,
            1,
            &PackageReport::Full(Box::new(s)),
            PACKAGE_REPORT_FORMAT,
        );
    }
    service.process_reports(10).unwrap();
}

/// The text of a PDF by poppler's `pdftotext -layout`; `None` (the
/// caller skips, saying why) when poppler-utils is not installed.
pub(crate) fn pdftotext(pdf: &[u8]) -> Option<String> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("report.pdf");
    std::fs::write(&path, pdf).unwrap();
    let out = match std::process::Command::new("pdftotext")
        .arg("-layout")
        .arg(&path)
        .arg("-")
        .output()
    {
        Ok(o) => o,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            eprintln!(
                "skipped: pdftotext (poppler-utils) is not installed; scripts/deps.sh --test installs it"
            );
            return None;
        }
        Err(e) => panic!("running pdftotext: {e}"),
    };
    assert!(
        out.status.success(),
        "pdftotext refused the report: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(String::from_utf8(out.stdout).unwrap())
}

#[test]
fn the_sites_pdf_report_of_a_customer_shows_the_figures_of_its_json_document() {
    let r = two_customer_rig();
    let all = r.service.report_document(None, 1_764_460_500_000).unwrap();
    // web-1's missing patch is within the policy's grace days: compliant.
    assert_eq!((all.devices_total, all.compliant), (2, 2), "{all:?}");
    assert_eq!(all.compliance_percent, Some(100.0));
    assert_eq!(all.missing_patches, 1);
    let doc = r
        .service
        .report_document(Some("dental"), 1_764_460_500_000)
        .unwrap();
    assert_eq!(doc.devices_total, 1, "{doc:?}");
    assert_eq!(doc.compliant, 1);
    assert_eq!(doc.compliance_percent, Some(100.0));
    assert_eq!(doc.devices[0].name, "web-1");
    assert_eq!(doc.devices[0].missing_patches, 1);
    assert_eq!(doc.devices[0].security.high, 1);
    assert_eq!(doc.top_patches.len(), 1, "{doc:?}");
    assert_eq!(doc.top_patches[0].source, "openssl");
    assert_eq!(doc.top_patches[0].candidate, "3.0.15-1~deb12u1");
    let ids: Vec<&str> = doc.top_cves.iter().map(|c| c.id.as_str()).collect();
    assert_eq!(ids, ["CVE-2024-0001", "CVE-2024-0002"], "{doc:?}");
    assert_eq!(
        doc.devices[0].cves, ids,
        "the device's own CVE ids, as the CSV has them"
    );
    assert_eq!(doc.source, "site", "not wired: the word site");
    r.service
        .set_site_name(Box::new(|| "Dental HQ".to_string()));
    let doc = r
        .service
        .report_document(Some("dental"), 1_764_460_500_000)
        .unwrap();
    assert_eq!(doc.source, "Dental HQ");

    let pdf = outpost_patch::report::pdf::render(&doc);
    let Some(text) = pdftotext(&pdf) else {
        return;
    };
    assert!(text.contains("Source: Dental HQ"), "{text}");
    assert!(text.contains("CVEs per device"), "{text}");
    assert!(text.contains("web-1 (2 CVEs)"), "{text}");
    assert!(text.contains("CVE-2024-0001, CVE-2024-0002"), "{text}");
    assert!(text.contains("Customer: dental"), "{text}");
    assert!(text.contains("Generated: 2025-11-29 23:55 UTC"), "{text}");
    assert!(
        text.contains("Compliance: 100.0 % (1 of 1 devices compliant)"),
        "{text}"
    );
    assert!(!text.contains("db-1"), "another customer's device: {text}");
    let row = |first: &str| -> Vec<String> {
        text.lines()
            .map(|l| l.split_whitespace().map(str::to_string).collect::<Vec<_>>())
            .find(|w| w.first().map(String::as_str) == Some(first))
            .unwrap_or_else(|| panic!("no row {first:?} in:\n{text}"))
    };
    let d = &doc.devices[0];
    assert_eq!(
        row("web-1"),
        [
            "web-1".to_string(),
            d.compliance.clone(),
            d.missing_patches.to_string(),
            d.security.critical.to_string(),
            d.security.high.to_string(),
            d.security.medium.to_string(),
            d.security.low.to_string(),
            d.fixable_cves.to_string(),
            d.open_cves.to_string(),
            d.risk.map_or("-".into(), |r| r.to_string()),
        ]
    );
    let p = &doc.top_patches[0];
    assert_eq!(
        row("openssl"),
        [
            "openssl".to_string(),
            p.candidate.clone(),
            p.severity.clone(),
            "yes".into(),
            p.devices.to_string(),
            p.cves.to_string(),
        ]
    );
    for c in &doc.top_cves {
        assert_eq!(
            row(&c.id),
            [
                c.id.clone(),
                c.severity.clone(),
                c.devices.to_string(),
                c.fixable.to_string(),
                c.fix_not_in_repositories.to_string(),
                c.open.to_string(),
            ]
        );
    }
}

#[test]
fn the_alert_engine_receives_each_devices_patch_values_with_the_reboot_wait() {
    let r = rig();
    type Samples = Vec<(DeviceId, Vec<outpost_proto::messages::MetricValue>)>;
    let got: Arc<std::sync::Mutex<Samples>> = Arc::default();
    {
        let got = got.clone();
        r.service
            .set_alert_sink(Box::new(move |b| got.lock().unwrap().extend(b)));
    }
    let dev = DeviceId(4);
    let mut s = scan(V1, DAY_MS);
    s.reboot.required = true;
    put_report(
        &r.store,
        dev,
        1,
        &PackageReport::Full(Box::new(s.clone())),
        PACKAGE_REPORT_FORMAT,
    );
    r.service.process_reports(DAY_MS).unwrap();
    // Still waiting one day later: the wait counts from the first scan.
    let mut later = s.clone();
    later.scanned_at_ms = 2 * DAY_MS;
    put_report(
        &r.store,
        dev,
        2,
        &PackageReport::Delta(Box::new(s.diff(&later))),
        PACKAGE_REPORT_FORMAT,
    );
    r.service.process_reports(2 * DAY_MS).unwrap();
    r.service.send_alert_samples(4 * DAY_MS);
    let got = got.lock().unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].0, dev);
    let v = |n: &str| got[0].1.iter().find(|v| v.name == n).unwrap().value;
    assert_eq!(v(super::super::alerts::REBOOT_REQUIRED_DAYS), 3.0);
    assert_eq!(v(super::super::alerts::SCAN_AGE_DAYS), 2.0);
}

/// Stores `report` in parts of `size` bytes at seqs `first..`, skipping
/// the part indexes in `lose`.
fn put_parts(
    store: &Store,
    dev: DeviceId,
    first: u64,
    report: &PackageReport,
    size: usize,
    lose: &[usize],
) -> u64 {
    let payload = codec::encode_compressed(report).unwrap();
    let chunks: Vec<&[u8]> = payload.chunks(size).collect();
    let mut seq = first;
    for (i, c) in chunks.iter().enumerate() {
        if !lose.contains(&i) {
            store
                .put(
                    PACKAGE_SCANS_IN,
                    &outpost_storage::keys::device_time_key(dev, seq),
                    &PackageScanRecord {
                        format: PACKAGE_REPORT_FORMAT,
                        full: report.is_full(),
                        part: i as u32,
                        parts: chunks.len() as u32,
                        payload: c.to_vec(),
                    },
                )
                .unwrap();
        }
        // Another record kind between parts (a heartbeat) takes a seq.
        seq += 2;
    }
    seq
}

#[test]
fn a_report_in_parts_is_applied_once_all_parts_arrived_and_a_lost_part_waits_for_a_full_scan() {
    let r = rig();
    let dev = DeviceId(21);
    let report = PackageReport::Full(Box::new(scan(V1, 1)));
    let payload_len = codec::encode_compressed(&report).unwrap().len();
    assert!(payload_len > 100);
    // Only the first parts: nothing applied yet, nothing consumed.
    let payload = codec::encode_compressed(&report).unwrap();
    let n = payload.chunks(40).count();
    let lose_tail: Vec<usize> = (n - 1..n).collect();
    let next = put_parts(&r.store, dev, 1, &report, 40, &lose_tail);
    assert_eq!(r.service.process_reports(10).unwrap(), 0);
    assert!(r.service.device(dev).unwrap().is_none());
    // The last part arrives: applied.
    let last = payload.chunks(40).last().unwrap().to_vec();
    r.store
        .put(
            PACKAGE_SCANS_IN,
            &outpost_storage::keys::device_time_key(dev, next - 2),
            &PackageScanRecord {
                format: PACKAGE_REPORT_FORMAT,
                full: true,
                part: (n - 1) as u32,
                parts: n as u32,
                payload: last,
            },
        )
        .unwrap();
    assert_eq!(r.service.process_reports(20).unwrap(), n);
    let d = r.service.device(dev).unwrap().unwrap();
    assert_eq!(d.packages, 2);
    assert!(!d.needs_full_scan);
    // A delta with a part lost in the middle, then another report: the
    // broken one is discarded and counted, the device waits for a full scan.
    let delta = PackageReport::Delta(Box::new(scan(V1, 1).diff(&scan(V2, 2))));
    let after = put_parts(&r.store, dev, 1000, &delta, 8, &[1]);
    put_parts(
        &r.store,
        dev,
        after,
        &PackageReport::Delta(Box::new(scan(V2, 2).diff(&scan(V2, 3)))),
        8,
        &[],
    );
    r.service.process_reports(30).unwrap();
    let d = r.service.device(dev).unwrap().unwrap();
    assert!(d.needs_full_scan, "{d:?}");
    assert!(
        r.metrics
            .patches
            .reports_rejected
            .get_or_create(&crate::metrics::ReasonLabel {
                reason: "incomplete".into()
            })
            .get()
            >= 1
    );
    let mut left = 0;
    r.store
        .scan_raw(PACKAGE_SCANS_IN, &[], None, |_, _| {
            left += 1;
            Ok(true)
        })
        .unwrap();
    assert_eq!(left, 0, "everything consumed");
}

fn enrolled(store: &Store, id: u64) -> DeviceId {
    let d = DeviceId(id);
    outpost_storage::registry::register(
        store,
        &outpost_storage::model::DeviceRecord {
            id: d,
            tenant: outpost_proto::TenantId::new("acme"),
            customer: outpost_proto::CustomerId::new("dental"),
            hostname: "h".into(),
            os: "linux".into(),
            kernel: "6".into(),
            arch: "x86_64".into(),
            agent_version: "0".into(),
            enrolled_at_ms: 1,
            cert_serial: "00".into(),
            revoked_at_ms: None,
        },
    )
    .unwrap();
    d
}

async fn scan_commands(
    commands: &crate::commands::service::CommandService,
    dev: DeviceId,
    want: usize,
) -> Vec<crate::commands::model::CommandRecord> {
    let f = crate::commands::store::ListFilter {
        device: Some(dev),
        state: None,
        before_ms: None,
        before_id: None,
        limit: 100,
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let l = commands.list(&f).unwrap();
        if l.len() >= want || std::time::Instant::now() > deadline {
            // Settle: a second queued command would show up by now.
            tokio::time::sleep(Duration::from_millis(300)).await;
            return commands.list(&f).unwrap();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_base_miss_queues_one_full_scan_command_not_one_per_delta() {
    use outpost_proto::command::{BuiltinAction, CommandKind};
    let r = rig();
    let (commands, _thread) = crate::commands::service::CommandService::start(
        r.store.clone(),
        r.metrics.clone(),
        crate::commands::service::CommandOptions::default(),
    )
    .unwrap();
    r.service.set_scan_requester(
        Arc::new(crate::patches::full_scan::FullScanRequester::new(
            commands.clone(),
            r.metrics.clone(),
        )),
        tokio::runtime::Handle::current(),
    );
    let dev = enrolled(&r.store, 9);
    let delta = PackageReport::Delta(Box::new(scan(V1, 1).diff(&scan(V2, 2))));
    // Two deltas without a base, applied in two passes: two misses.
    put_report(&r.store, dev, 1, &delta, PACKAGE_REPORT_FORMAT);
    r.service.process_reports(10).unwrap();
    put_report(&r.store, dev, 2, &delta, PACKAGE_REPORT_FORMAT);
    r.service.process_reports(20).unwrap();
    assert_eq!(r.service.device(dev).unwrap().unwrap().base_misses, 2);
    let cmds = scan_commands(&commands, dev, 1).await;
    assert_eq!(cmds.len(), 1, "one open scan command per device: {cmds:?}");
    assert_eq!(
        cmds[0].spec.kind,
        CommandKind::Builtin(BuiltinAction::ScanPackages { full: true })
    );
    assert_eq!(
        cmds[0].spec.requested_by,
        crate::patches::full_scan::REQUESTED_BY
    );
    assert_eq!(r.metrics.patches.full_scan_requests.get(), 1);
    // Once that command is over, the next miss asks again.
    commands.cancel(cmds[0].id, "t").await.unwrap();
    put_report(&r.store, dev, 3, &delta, PACKAGE_REPORT_FORMAT);
    r.service.process_reports(30).unwrap();
    let cmds = scan_commands(&commands, dev, 2).await;
    assert_eq!(cmds.len(), 2, "{cmds:?}");
    assert_eq!(r.metrics.patches.full_scan_requests.get(), 2);
    commands.stop();
}

fn pending_compliance(store: &Store) -> Vec<outpost_uplink::batch::PatchCompliance> {
    let mut v = Vec::new();
    store
        .scan_raw(
            outpost_storage::rollup::UPLINK_PENDING,
            &[outpost_uplink::outbox::PATCH_PREFIX],
            Some(&[outpost_uplink::outbox::PATCH_PREFIX + 1]),
            |_, val| {
                v.push(codec::decode(val).unwrap());
                Ok(true)
            },
        )
        .unwrap();
    v
}

fn pending_findings(store: &Store) -> Vec<outpost_uplink::batch::PatchFindings> {
    let mut v = Vec::new();
    store
        .scan_raw(
            outpost_storage::rollup::UPLINK_PENDING,
            &[outpost_uplink::outbox::FINDINGS_PREFIX],
            Some(&[outpost_uplink::outbox::FINDINGS_PREFIX + 1]),
            |_, val| {
                v.push(codec::decode(val).unwrap());
                Ok(true)
            },
        )
        .unwrap();
    v
}

/// V1 (openssl 3.0.11) against the tracker: the fixable high CVE with its
/// fixed version and whether an upgrade reaches it, the open medium one
/// apart, the unimportant-free low one of bash fixed below the installed
/// version (not a finding at all).
#[test]
fn findings_carry_fixable_and_open_cves_grouped_by_package_fix_and_severity() {
    let r = rig();
    r.service
        .import(FeedFormat::DebianTracker, None, "test", TRACKER.as_bytes())
        .unwrap();
    let dev = DeviceId(9);
    put_report(
        &r.store,
        dev,
        1,
        &PackageReport::Full(Box::new(scan(V1, 1_000))),
        PACKAGE_REPORT_FORMAT,
    );
    r.service.process_reports(5_000).unwrap();
    let a = r.service.device(dev).unwrap().unwrap().assessment.unwrap();
    let f = crate::patches::uplink::findings_of(dev, &a);
    assert_eq!(f.as_of_ms, a.assessed_at_ms);
    let got: Vec<_> = f
        .vulns
        .iter()
        .map(|v| {
            (
                v.source.as_str(),
                v.fixed.as_deref(),
                v.severity,
                v.cves.join(" "),
            )
        })
        .collect();
    use outpost_uplink::batch::FindingSeverity as S;
    assert_eq!(
        got,
        vec![
            ("openssl", None, S::Medium, "CVE-2024-0002".to_string()),
            (
                "openssl",
                Some("3.0.13-1~deb12u1"),
                S::High,
                "CVE-2024-0001".to_string()
            ),
        ],
        "{f:?}"
    );
    assert_eq!(f.patches.len(), a.patches.len());
}

/// The site console's device panel from an assessment: the fixable CVE
/// with its fixed version (no upgrade offered: not in the repositories),
/// the open one after it.
#[test]
fn the_site_consoles_device_panel_lists_fixable_then_open_cves() {
    let r = rig();
    r.service
        .import(FeedFormat::DebianTracker, None, "test", TRACKER.as_bytes())
        .unwrap();
    let dev = DeviceId(11);
    put_report(
        &r.store,
        dev,
        1,
        &PackageReport::Full(Box::new(scan(V1, 1_000))),
        PACKAGE_REPORT_FORMAT,
    );
    r.service.process_reports(5_000).unwrap();
    let a = r.service.device(dev).unwrap().unwrap().assessment.unwrap();
    let v = crate::console::patches::device_view(&a);
    let got: Vec<_> = v
        .cves
        .iter()
        .map(|c| (c.cve.as_str(), c.state.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            ("CVE-2024-0001", "fix-not-in-repositories"),
            ("CVE-2024-0002", "open")
        ]
    );
    assert_eq!(v.last_scan_ms, 1_000);
    assert_eq!((v.fixable_cves, v.open_cves), (1, 1));
}

fn clear_pending(store: &Store) {
    let mut b = store.batch();
    let mut keys = Vec::new();
    store
        .scan_raw(
            outpost_storage::rollup::UPLINK_PENDING,
            &[],
            None,
            |k, _| {
                keys.push(k.to_vec());
                Ok(true)
            },
        )
        .unwrap();
    for k in keys {
        b.delete(outpost_storage::rollup::UPLINK_PENDING, &k)
            .unwrap();
    }
    store.write(b).unwrap();
}

#[test]
fn a_changed_assessment_is_queued_for_the_uplink_only_while_the_site_is_joined() {
    let r = rig();
    r.service
        .import(FeedFormat::DebianTracker, None, "test", TRACKER.as_bytes())
        .unwrap();
    let dev = DeviceId(7);
    let s1 = scan(V1, 1_000);
    put_report(
        &r.store,
        dev,
        1,
        &PackageReport::Full(Box::new(s1.clone())),
        PACKAGE_REPORT_FORMAT,
    );
    r.service.process_reports(5_000).unwrap();
    assert!(pending_compliance(&r.store).is_empty(), "not joined");

    r.store.set_uplink_tracking(true);
    let s2 = scan(V2, 2_000);
    put_report(
        &r.store,
        dev,
        2,
        &PackageReport::Delta(Box::new(s1.diff(&s2))),
        PACKAGE_REPORT_FORMAT,
    );
    r.service.process_reports(6_000).unwrap();
    let p = pending_compliance(&r.store);
    assert_eq!(p.len(), 1, "{p:?}");
    assert_eq!(p[0].device, dev);
    let d = p[0].detail.clone().unwrap();
    assert_eq!((d.fixable_cves, d.open_cves), (0, 1), "{d:?}");
    assert_eq!(d.scanned_at_ms, 2_000);
    let a = r.service.device(dev).unwrap().unwrap().assessment.unwrap();
    assert_eq!(p[0], crate::patches::uplink::compliance_of(dev, &a));
    // The findings travel beside it: V2 has openssl 3.0.15, so only the
    // open CVE is left (V1's fixable one is gone).
    let f = pending_findings(&r.store);
    assert_eq!(f.len(), 1, "{f:?}");
    assert_eq!(f[0], crate::patches::uplink::findings_of(dev, &a));
    assert_eq!(f[0].vulns.len(), 1, "{f:?}");
    let v = &f[0].vulns[0];
    assert_eq!(
        (v.source.as_str(), v.fixed.as_deref(), v.cves.as_slice()),
        ("openssl", None, &["CVE-2024-0002".to_string()][..])
    );
    assert_eq!(v.severity, outpost_uplink::batch::FindingSeverity::Medium);

    // Joining (or starting joined) queues every device again.
    clear_pending(&r.store);
    assert_eq!(r.service.queue_all_for_uplink().unwrap(), 1);
    assert_eq!(pending_compliance(&r.store).len(), 1);
    r.store.set_uplink_tracking(false);
    clear_pending(&r.store);
    assert_eq!(r.service.queue_all_for_uplink().unwrap(), 0);
}

/// Findings left out of batches for an older central are queued again,
/// once, when a central that reads them welcomes the site (not before,
/// not while the site is not joined); before, they came back only when a
/// device's assessment changed or the appliance restarted.
#[test]
fn findings_an_older_central_did_not_take_are_queued_again_once_central_reads_them() {
    let r = rig();
    r.service
        .import(FeedFormat::DebianTracker, None, "test", TRACKER.as_bytes())
        .unwrap();
    let dev = DeviceId(7);
    put_report(
        &r.store,
        dev,
        1,
        &PackageReport::Full(Box::new(scan(V1, 1_000))),
        PACKAGE_REPORT_FORMAT,
    );
    r.store.set_uplink_tracking(true);
    r.service.process_reports(5_000).unwrap();
    clear_pending(&r.store);
    let dir = tempfile::tempdir().unwrap();
    let owed = Arc::new(outpost_uplink::resend::FindingsResend::open(dir.path()));
    r.service.set_findings_resend(owed.clone());
    assert_eq!(
        r.service.resend_findings_if_due().unwrap(),
        None,
        "nothing owed"
    );

    // The sender left the findings out for a central of format 3.
    owed.connected(3);
    owed.note_dropped().unwrap();
    assert_eq!(r.service.resend_findings_if_due().unwrap(), None);
    assert!(pending_findings(&r.store).is_empty());
    // Central upgraded: its Welcome says format 5.
    owed.connected(5);
    r.store.set_uplink_tracking(false);
    assert_eq!(
        r.service.resend_findings_if_due().unwrap(),
        None,
        "not joined"
    );
    r.store.set_uplink_tracking(true);
    assert_eq!(r.service.resend_findings_if_due().unwrap(), Some(1));
    let f = pending_findings(&r.store);
    assert_eq!(f.len(), 1, "{f:?}");
    assert_eq!(f[0].device, dev);
    assert!(!owed.pending());
    clear_pending(&r.store);
    assert_eq!(r.service.resend_findings_if_due().unwrap(), None, "once");
    assert!(pending_findings(&r.store).is_empty());
}

#[test]
fn an_unchanged_assessment_is_not_queued_again() {
    let mut a = outpost_patch::assess::assess_device(
        &scan(V1, 1_000),
        &outpost_patch::catalog::Catalog::new(),
        &Policy::default(),
        None,
        5_000,
    );
    let r = rig();
    r.store.set_uplink_tracking(true);
    let prev = a.clone();
    a.assessed_at_ms = 9_000;
    let mut b = r.store.batch();
    assert!(
        !crate::patches::uplink::queue_if_changed(&r.store, &mut b, DeviceId(1), &a, Some(&prev))
            .unwrap()
    );
    a.reboot_required = !a.reboot_required;
    assert!(
        crate::patches::uplink::queue_if_changed(&r.store, &mut b, DeviceId(1), &a, Some(&prev))
            .unwrap()
    );
}

/// A scan whose openssl and bash have candidates, with or without sizes.
fn scan_with_upgrades(at: u64, sizes: bool) -> Scan {
    use outpost_patch::scan::AptUpgrade;
    use outpost_patch::version::DebVersion;
    let mut s = scan(V1, at);
    for (name, from, to, size) in [
        ("bash", "5.2.15-2+b2", "5.2.15-2+b3", 2_048u64),
        ("libssl3", "3.0.11-1~deb12u2", "3.0.15-1~deb12u1", 1_500_000),
    ] {
        s.upgrades.push(AptUpgrade {
            name: name.into(),
            arch: Some("amd64".into()),
            from: Some(DebVersion::parse(from).unwrap()),
            to: DebVersion::parse(to).unwrap(),
            origins: vec!["Debian-Security:12/stable-security".into()],
            security: true,
            size_bytes: sizes.then_some(size),
        });
    }
    s.normalize();
    s
}

/// The report of an older agent (format 1: no sizes).
fn format_1(report: &PackageReport) -> PackageReport {
    // Encoded as the old shape, then read back the way the appliance does.
    let old = outpost_patch::scan::legacy::PackageReportV1::from_current(report).unwrap();
    let bytes = codec::encode_compressed(&old).unwrap();
    let back: outpost_patch::scan::legacy::PackageReportV1 =
        codec::decode_compressed(&bytes, 1 << 20).unwrap();
    PackageReport::from(back)
}

fn put_v1_report(store: &Store, dev: DeviceId, seq: u64, report: &PackageReport) {
    let old = outpost_patch::scan::legacy::PackageReportV1::from_current(report).unwrap();
    let rec = PackageScanRecord {
        format: 1,
        full: report.is_full(),
        part: 0,
        parts: 1,
        payload: codec::encode_compressed(&old).unwrap(),
    };
    store
        .put(
            PACKAGE_SCANS_IN,
            &outpost_storage::keys::device_time_key(dev, seq),
            &rec,
        )
        .unwrap();
}

/// Fails before download sizes: `size_bytes`/`download_bytes` did not
/// exist and a format-1 report was the only one read.
#[test]
fn download_sizes_of_a_new_agent_reach_the_device_the_patch_list_and_the_summary_and_an_older_agents_show_unknown()
 {
    let r = rig();
    r.service
        .import(FeedFormat::DebianTracker, None, "test", TRACKER.as_bytes())
        .unwrap();
    let (new, old) = (DeviceId(1), DeviceId(2));
    put_report(
        &r.store,
        new,
        1,
        &PackageReport::Full(Box::new(scan_with_upgrades(1_000, true))),
        PACKAGE_REPORT_FORMAT,
    );
    let s_old = scan_with_upgrades(1_000, false);
    put_v1_report(
        &r.store,
        old,
        1,
        &PackageReport::Full(Box::new(s_old.clone())),
    );
    assert_eq!(r.service.process_reports(5_000).unwrap(), 2);
    let a = r.service.device(new).unwrap().unwrap().assessment.unwrap();
    let sizes: Vec<(String, Option<u64>)> = a
        .patches
        .iter()
        .map(|p| (p.source.to_string(), p.download_bytes))
        .collect();
    assert_eq!(
        sizes,
        [
            ("bash".to_string(), Some(2_048)),
            ("openssl".to_string(), Some(1_500_000))
        ]
    );
    assert_eq!(a.download_size().display(), "1.4 MiB");
    let d = r.service.device(old).unwrap().unwrap();
    assert_eq!(d.last_error, None, "format 1 is read");
    let a_old = d.assessment.unwrap();
    assert_eq!(a_old.patches.len(), 2);
    assert!(a_old.patches.iter().all(|p| p.download_bytes.is_none()));
    assert_eq!(a_old.download_size().display(), "unknown");

    let s = r.service.summary(6_000).unwrap();
    let line = |d: DeviceId| s.devices.iter().find(|l| l.device == d).unwrap().download;
    assert_eq!(line(new).bytes, 1_502_048);
    assert_eq!((line(old).bytes, line(old).unknown), (0, 2));
    assert_eq!(
        (s.download.bytes, s.download.unknown, s.download.patches),
        (1_502_048, 2, 4)
    );
    assert_eq!(s.download.display(), "at least 1.4 MiB (2 sizes unknown)");
    let json = serde_json::to_value(&s).unwrap();
    assert_eq!(json["download"]["bytes"], 1_502_048);
    let list = r.service.patches();
    let openssl = list.iter().find(|p| p.source == "openssl").unwrap();
    assert_eq!(
        (
            openssl.download.bytes,
            openssl.download.unknown,
            openssl.devices
        ),
        (1_500_000, 1, 2)
    );
    let csv = r.service.report_csv(None).unwrap();
    assert!(
        csv.lines().next().unwrap().ends_with(",download_bytes"),
        "{csv}"
    );
    assert!(
        csv.lines()
            .any(|l| l.starts_with(&new.to_string()) && l.ends_with(",1500000")),
        "{csv}"
    );

    // An older agent's delta (format 1, digests without sizes) applies to
    // the scan stored from its format-1 report.
    let mut s2 = scan(V2, 2_000);
    s2.upgrades = s_old.upgrades.clone();
    s2.upgrades.retain(|u| u.name == "bash");
    put_v1_report(
        &r.store,
        old,
        2,
        &PackageReport::Delta(Box::new(s_old.diff(&s2))),
    );
    r.service.process_reports(7_000).unwrap();
    let d = r.service.device(old).unwrap().unwrap();
    assert_eq!(d.last_error, None);
    assert!(!d.needs_full_scan);
    assert_eq!(d.assessment.unwrap().patches.len(), 1);
    assert_eq!(
        format_1(&PackageReport::Full(Box::new(s2.clone()))),
        PackageReport::Full(Box::new(s2))
    );
}

/// Fails before the versioned values: the older shape of `patch_scans`
/// and `patch_assessments` (no sizes) must still load after an upgrade,
/// with the patches' first-seen times, and the next write is versioned.
#[test]
fn stored_scans_and_assessments_of_the_older_shape_load_after_an_upgrade() {
    use super::super::store::{
        ASSESSMENT_VERSION, DeviceScanV1, PATCH_ASSESSMENTS, PATCH_SCANS, STORED_VERSION, VERSIONED,
    };
    use outpost_patch::assess::legacy::DeviceAssessmentV1;
    use outpost_patch::scan::legacy::ScanV1;
    let r = rig();
    r.service
        .import(FeedFormat::DebianTracker, None, "test", TRACKER.as_bytes())
        .unwrap();
    let dev = DeviceId(9);
    put_report(
        &r.store,
        dev,
        1,
        &PackageReport::Full(Box::new(scan_with_upgrades(1_000, false))),
        PACKAGE_REPORT_FORMAT,
    );
    r.service.process_reports(5_000).unwrap();
    let key = dev.to_be_bytes();
    let raw = r.store.get_raw(PATCH_SCANS, &key).unwrap().unwrap();
    assert_eq!(&raw[..2], &[VERSIONED, STORED_VERSION]);
    // Rewrite both values as an older build stored them.
    let ds = super::super::store::get_scan(&r.store, &key)
        .unwrap()
        .unwrap();
    let old_ds = DeviceScanV1 {
        scan: ds.scan.as_ref().map(ScanV1::from),
        last_seq: ds.last_seq,
        received_at_ms: ds.received_at_ms,
        full_reports: ds.full_reports,
        delta_reports: ds.delta_reports,
        needs_full: ds.needs_full,
        base_misses: ds.base_misses,
        last_error: ds.last_error.clone(),
        reboot_since_ms: ds.reboot_since_ms,
    };
    let a = r.service.device(dev).unwrap().unwrap().assessment.unwrap();
    r.store.put(PATCH_SCANS, &key, &old_ds).unwrap();
    r.store
        .put(PATCH_ASSESSMENTS, &key, &DeviceAssessmentV1::from(&a))
        .unwrap();
    let reopened = PatchService::open(
        r.store.clone(),
        r._dir.path(),
        r.metrics.clone(),
        Policy::default(),
    )
    .unwrap();
    let d = reopened.device(dev).unwrap().unwrap();
    assert_eq!(d.upgrades, 2);
    let loaded = d.assessment.unwrap();
    assert_eq!(loaded, a, "every field, first-seen times included");
    // A later scan (same packages, now with sizes) keeps the first-seen
    // time and is written versioned.
    put_report(
        &r.store,
        dev,
        2,
        &PackageReport::Full(Box::new(scan_with_upgrades(9_000, true))),
        PACKAGE_REPORT_FORMAT,
    );
    reopened.process_reports(10_000).unwrap();
    let a2 = reopened.device(dev).unwrap().unwrap().assessment.unwrap();
    assert_eq!(a2.patches[1].first_seen_ms, a.patches[1].first_seen_ms);
    assert_eq!(a2.patches[1].download_bytes, Some(1_500_000));
    let raw = r.store.get_raw(PATCH_SCANS, &key).unwrap().unwrap();
    assert_eq!(&raw[..2], &[VERSIONED, STORED_VERSION]);
    let raw = r.store.get_raw(PATCH_ASSESSMENTS, &key).unwrap().unwrap();
    assert_eq!(&raw[..2], &[VERSIONED, ASSESSMENT_VERSION]);
}

/// An assessment stored by the build before `candidate_first_seen_ms`
/// (shape 2) loads with the source's first-seen time as the candidate's
/// (what approval delays counted from then), and the next write is shape 3.
#[test]
fn stored_assessments_of_shape_2_load_after_an_upgrade() {
    use super::super::store::{ASSESSMENT_VERSION, PATCH_ASSESSMENTS, VERSIONED};
    use outpost_patch::assess::legacy::DeviceAssessmentV2;
    let r = rig();
    r.service
        .import(FeedFormat::DebianTracker, None, "test", TRACKER.as_bytes())
        .unwrap();
    let dev = DeviceId(11);
    put_report(
        &r.store,
        dev,
        1,
        &PackageReport::Full(Box::new(scan_with_upgrades(1_000, true))),
        PACKAGE_REPORT_FORMAT,
    );
    r.service.process_reports(5_000).unwrap();
    let key = dev.to_be_bytes();
    let mut a = r.service.device(dev).unwrap().unwrap().assessment.unwrap();
    assert!(!a.patches.is_empty());
    // As the older build stored it: an earlier source first-seen time.
    for p in &mut a.patches {
        p.first_seen_ms = 1_234;
    }
    let mut old = vec![VERSIONED, 2];
    outpost_proto::codec::encode_into(&DeviceAssessmentV2::from(&a), &mut old).unwrap();
    let mut b = r.store.batch();
    b.put_raw(PATCH_ASSESSMENTS, &key, &old).unwrap();
    r.store.write(b).unwrap();
    let reopened = PatchService::open(
        r.store.clone(),
        r._dir.path(),
        r.metrics.clone(),
        Policy::default(),
    )
    .unwrap();
    let loaded = reopened.device(dev).unwrap().unwrap().assessment.unwrap();
    for p in &loaded.patches {
        assert_eq!((p.first_seen_ms, p.candidate_first_seen_ms), (1_234, 1_234));
    }
    // The next scan (same candidates) keeps both and writes shape 3.
    put_report(
        &r.store,
        dev,
        2,
        &PackageReport::Full(Box::new(scan_with_upgrades(9_000, true))),
        PACKAGE_REPORT_FORMAT,
    );
    reopened.process_reports(10_000).unwrap();
    let a2 = reopened.device(dev).unwrap().unwrap().assessment.unwrap();
    assert_eq!(a2.patches[0].candidate_first_seen_ms, 1_234);
    let raw = r.store.get_raw(PATCH_ASSESSMENTS, &key).unwrap().unwrap();
    assert_eq!(&raw[..2], &[VERSIONED, ASSESSMENT_VERSION]);
}

/// A deferred scan (dpkg's lock held on the device) keeps the stored scan
/// and assessment, shows the reason on the device and is counted; the
/// next scan clears it.
#[test]
fn a_deferred_scan_keeps_the_last_assessment_shows_why_and_is_counted() {
    use outpost_patch::scan::ScanDeferred;
    let r = rig();
    r.service
        .import(FeedFormat::DebianTracker, None, "test", TRACKER.as_bytes())
        .unwrap();
    let dev = DeviceId(4);
    put_report(
        &r.store,
        dev,
        1,
        &PackageReport::Full(Box::new(scan_with_upgrades(1_000, true))),
        PACKAGE_REPORT_FORMAT,
    );
    r.service.process_reports(2_000).unwrap();
    let before = r.service.device(dev).unwrap().unwrap().assessment.unwrap();
    put_report(
        &r.store,
        dev,
        2,
        &PackageReport::Deferred(Box::new(ScanDeferred {
            at_ms: 3_000,
            reason: "dpkg's lock /var/lib/dpkg/lock-frontend is held by pid 4242".into(),
            attempts: 7,
            waited_ms: 60_000,
        })),
        PACKAGE_REPORT_FORMAT,
    );
    r.service.process_reports(4_000).unwrap();
    let d = r.service.device(dev).unwrap().unwrap();
    let why = d.deferred.clone().unwrap();
    assert!(
        why.contains("pid 4242") && why.contains("7 attempts over 60.0 s"),
        "{why}"
    );
    assert_eq!(d.deferred_reports, 1);
    assert_eq!(d.last_error, None);
    assert!(!d.needs_full_scan);
    assert_eq!(d.assessment.unwrap(), before, "nothing assessed is lost");
    let text = r.metrics.encode();
    assert!(
        text.contains("outpost_patches_scans_received_total{kind=\"deferred\"} 1"),
        "{text}"
    );
    put_report(
        &r.store,
        dev,
        3,
        &PackageReport::Full(Box::new(scan_with_upgrades(5_000, true))),
        PACKAGE_REPORT_FORMAT,
    );
    r.service.process_reports(6_000).unwrap();
    let d = r.service.device(dev).unwrap().unwrap();
    assert_eq!(d.deferred, None);
    assert_eq!(d.deferred_reports, 1);
}

fn register(store: &Store, dev: DeviceId, customer: &str) {
    outpost_storage::registry::register(
        store,
        &outpost_storage::model::DeviceRecord {
            id: dev,
            tenant: "acme".into(),
            customer: customer.into(),
            hostname: format!("host-{}", dev.0),
            os: String::new(),
            kernel: String::new(),
            arch: String::new(),
            agent_version: String::new(),
            enrolled_at_ms: 0,
            cert_serial: String::new(),
            revoked_at_ms: None,
        },
    )
    .unwrap();
}

/// Fails before the breakdown: the site's summary had no per-customer
/// lines and no customer filter (central had both).
#[tokio::test]
async fn the_site_summary_breaks_compliance_down_per_customer_and_narrows_to_one() {
    use tower::ServiceExt;
    let r = rig();
    r.service
        .import(FeedFormat::DebianTracker, None, "test", TRACKER.as_bytes())
        .unwrap();
    // dental: one device missing openssl's fix (non-compliant once overdue),
    // one up to date; vet: one up to date.
    for (dev, customer, lines) in [(1, "dental", V1), (2, "dental", V2), (3, "vet", V2)] {
        let dev = DeviceId(dev);
        register(&r.store, dev, customer);
        let s = if lines == V1 {
            scan_with_upgrades(1_000, true)
        } else {
            scan(V2, 1_000)
        };
        put_report(
            &r.store,
            dev,
            1,
            &PackageReport::Full(Box::new(s)),
            PACKAGE_REPORT_FORMAT,
        );
    }
    r.service.process_reports(2_000).unwrap();
    let late = 2_000 + 30 * DAY_MS;
    // Device 1 scanned again a month later: its patch is overdue.
    put_report(
        &r.store,
        DeviceId(1),
        2,
        &PackageReport::Full(Box::new(scan_with_upgrades(late, true))),
        PACKAGE_REPORT_FORMAT,
    );
    r.service.process_reports(late).unwrap();
    let s = r.service.summary_for(late, None).unwrap();
    let by: Vec<(String, u32, u32, u64)> = s
        .customers
        .iter()
        .map(|c| {
            (
                c.customer.clone(),
                c.summary.devices,
                c.summary.compliant,
                c.download.bytes,
            )
        })
        .collect();
    assert_eq!(
        by,
        [
            ("dental".to_string(), 2, 1, 1_502_048),
            ("vet".to_string(), 1, 1, 0)
        ]
    );
    assert_eq!(s.fleet.devices, 3);
    assert!(s.devices.iter().all(|d| !d.customer.is_empty()));
    let dental = r.service.summary_for(late, Some("dental")).unwrap();
    assert_eq!(dental.customer.as_deref(), Some("dental"));
    assert_eq!(dental.fleet.devices, 2);
    assert_eq!(dental.fleet.compliance_percent, Some(50.0));
    assert_eq!(dental.customers.len(), 1);
    assert_eq!(dental.devices.len(), 2);
    assert!(
        r.service
            .summary_for(late, Some("nobody"))
            .unwrap()
            .devices
            .is_empty()
    );

    // The API takes ?customer=C.
    let app = super::super::api::router(r.service.clone());
    let res = app
        .oneshot(
            axum::http::Request::get("/api/v1/patches/summary?customer=vet")
                .body(axum::body::Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let body = axum::body::to_bytes(res.into_body(), 1 << 20)
        .await
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["customer"], "vet");
    assert_eq!(v["fleet"]["devices"], 1);
    assert_eq!(v["customers"][0]["customer"], "vet");
    assert_eq!(v["devices"][0]["customer"], "vet");
}
