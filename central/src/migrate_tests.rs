//! `outpost-central migrate`: a RocksDB central filled through the real
//! apply path and the API is copied into the test PostgreSQL server; the
//! API then answers the same on both stores; a second run copies nothing;
//! a run killed after any chunk resumes and copies every row once; a
//! source held by a running central, or another source, is refused.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, header};
use outpost_proto::{DeviceId, SiteId, TenantId};
use outpost_uplink::batch;
use outpost_uplink::downlink::{CommandUpdate, OutputChunk, SiteCommandState};
use serde_json::{Value, json};
use tower::ServiceExt;

use super::{MigrateError, MigrateOptions, NOT_COPIED, STEPS, migrate};
use crate::Central;
use crate::model::{Principal, Role, SessionRecord};
use crate::store::{ApplyOutcome, FleetStore};
use crate::testing::batch_of;

async fn call(
    c: &Arc<Central>,
    token: &str,
    method: &str,
    uri: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut req = Request::builder()
        .method(method)
        .uri(uri)
        .header(header::AUTHORIZATION, format!("Bearer {token}"));
    let body = match body {
        Some(b) => {
            req = req.header(header::CONTENT_TYPE, "application/json");
            Body::from(b.to_string())
        }
        None => Body::empty(),
    };
    let resp = crate::api::router(c.clone())
        .oneshot(req.body(body).unwrap())
        .await
        .unwrap();
    let st = resp.status().as_u16();
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 22)
        .await
        .unwrap();
    (st, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

/// A central on RocksDB in `dir` (`dir/db`, keys in `dir/central`).
fn central_on(dir: &std::path::Path, store: Arc<dyn crate::store::CentralStore>) -> Arc<Central> {
    let keys = crate::dir::CentralDir(dir.join("central"))
        .init_or_load()
        .unwrap();
    Arc::new(Central::with_limits(
        store,
        keys,
        tokio_util::sync::CancellationToken::new(),
        Default::default(),
    ))
}

/// `v` without the fields computed from the wall clock at the request.
fn timeless(mut v: Value) -> Value {
    fn strip(v: &mut Value) {
        match v {
            Value::Object(m) => {
                m.remove("lag_ms");
                m.values_mut().for_each(strip);
            }
            Value::Array(a) => a.iter_mut().for_each(strip),
            _ => {}
        }
    }
    strip(&mut v);
    v
}

const DEVICE: &str = "000000000000002a";
const SESSION_HASH: [u8; 32] = [7; 32];

/// What a filled source is asked afterwards.
struct Source {
    dir: tempfile::TempDir,
    site: SiteId,
    zeta_site: SiteId,
    admin: String,
    zeta_admin: String,
    command: String,
    bulk: String,
}

fn findings(device: u64) -> batch::PatchFindings {
    batch::PatchFindings {
        device: DeviceId(device),
        as_of_ms: 50,
        patches: vec![batch::MissingPatchEntry {
            source: "openssl".into(),
            installed: "3.0.11-1~deb12u1".into(),
            candidate: Some("3.0.15-1~deb12u1".into()),
            binaries: 2,
            security: true,
            severity: Some(batch::FindingSeverity::High),
            cves: vec!["CVE-2026-0001".into()],
            reboot_expected: false,
            first_seen_ms: 5,
        }],
        vulns: vec![batch::VulnGroup {
            source: "openssl".into(),
            installed: "3.0.11-1~deb12u1".into(),
            fixed: Some("3.0.15-1~deb12u1".into()),
            fix_available: true,
            severity: batch::FindingSeverity::High,
            cves: vec!["CVE-2026-0001".into()],
        }],
    }
}

/// A RocksDB central with two tenants, three sites, devices, rollups,
/// alerts (one acknowledged), patch rows, tags, a command with output, a
/// script, a bulk run with held members, a deployment, users, a session
/// and tokens; every row written by the serving code paths. Closed on
/// return.
async fn filled_source() -> Source {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn crate::store::CentralStore> =
        Arc::new(crate::rocks::RocksCentralStore::open(&dir.path().join("db")).unwrap());
    let c = central_on(dir.path(), store);
    let add = |tenant: &str, customer: &str, name: &str| crate::ops::AddSite {
        tenant: tenant.into(),
        customer: customer.into(),
        site: name.into(),
    };
    let st = c.store.as_ref();
    let site = crate::ops::add_site(st, &add("msp", "dental", "main"), 1)
        .await
        .unwrap()
        .site_id;
    let vet = crate::ops::add_site(st, &add("msp", "vet", "vet"), 1)
        .await
        .unwrap()
        .site_id;
    let zeta_site = crate::ops::add_site(st, &add("zeta", "acme", "hq"), 1)
        .await
        .unwrap()
        .site_id;
    let msp: TenantId = "msp".into();
    // Batches 1, 2 and 4 (3 missing: the applied set has a gap).
    let mut b1 = batch_of(&site, 1);
    b1.patch_findings = vec![findings(42)];
    b1.patch_compliance = vec![batch::PatchCompliance {
        device: DeviceId(42),
        missing: 3,
        missing_critical: 1,
        installed_pending_reboot: 1,
        as_of_ms: 100,
        detail: None,
    }];
    let mut second = b1.devices[0].clone();
    second.device = DeviceId(43);
    second.hostname = "web-2".into();
    b1.devices.push(second);
    let mut b2 = batch_of(&site, 2);
    b2.device_facts = vec![batch::DeviceIpsTags {
        device: DeviceId(42),
        ips: vec!["10.0.0.42".into()],
        tags: vec!["db".into(), "EU".into()],
    }];
    b2.rollups[0].bucket_start_ms += 300_000;
    b2.alerts[0].state = batch::AlertState::Resolved;
    b2.alerts[0].at_ms = 6;
    b2.devices[0].as_of_ms = 10;
    b2.devices[0].status = batch::DeviceStatus::Offline;
    b2.devices[0].status_since_ms = 9;
    let mut b4 = batch_of(&site, 4);
    b4.rollups[0].bucket_start_ms += 600_000;
    b4.alerts[0].alert_id = 10;
    for b in [b1, b2, b4] {
        let o = c
            .store
            .apply_batch(&msp, &site, b, 1_700_000_200_000)
            .await
            .unwrap();
        assert!(matches!(o, ApplyOutcome::Applied { .. }), "{o:?}");
    }
    let mut bv = batch_of(&vet, 1);
    bv.devices[0].device = DeviceId(78);
    bv.devices[0].hostname = "vet-pc".into();
    bv.rollups[0].device = DeviceId(78);
    bv.alerts.clear();
    c.store
        .apply_batch(&msp, &vet, bv, 1_700_000_200_000)
        .await
        .unwrap();
    let mut bz = batch_of(&zeta_site, 1);
    bz.tenant = "zeta".into();
    c.store
        .apply_batch(&"zeta".into(), &zeta_site, bz, 1_700_000_200_000)
        .await
        .unwrap();

    let admin = crate::testing::token(&c, "msp", Role::Admin, &[]).await;
    let tech = crate::testing::token(&c, "msp", Role::Technician, &[]).await;
    let zeta_admin = crate::testing::token(&c, "zeta", Role::Admin, &[]).await;
    crate::ops::add_user(
        st,
        &crate::ops::AddUser {
            tenant: "msp".into(),
            name: "ann".into(),
            role: Role::Admin,
            customers: vec![],
            password: "correct horse battery".into(),
        },
        5,
        &c.passwords,
    )
    .await
    .unwrap();
    let principal = Principal {
        tenant: "msp".into(),
        role: Role::Admin,
        customers: vec![],
        name: "ann".into(),
    };
    st.put_session(
        &SESSION_HASH,
        &SessionRecord {
            principal,
            expires_ms: u64::MAX / 2,
        },
    )
    .await
    .unwrap();

    // Through the API: an acknowledgement, a command, a script, a bulk
    // run (one member held per site), a deployment.
    let (s, v) = call(
        &c,
        &tech,
        "POST",
        &format!("/api/v1/sites/{site}/alerts/10/ack"),
        Some(json!({"comment": "on it"})),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = call(
        &c,
        &tech,
        "POST",
        "/api/v1/commands",
        Some(json!({"site": site, "device": DEVICE, "command": "echo hi", "timeout_ms": 60000})),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    let command = v["id"].as_str().unwrap().to_string();
    let id: outpost_proto::ids::CommandId = command.parse().unwrap();
    // The site reports output (the uplink's path into the store).
    let report = CommandUpdate {
        id,
        state: SiteCommandState::Completed,
        transitions: vec![
            (SiteCommandState::Queued, 1),
            (SiteCommandState::Completed, 2),
        ],
        exit_code: Some(0),
        signal: None,
        reason: None,
        output_total: Some(3),
        output_truncated: false,
        output: OutputChunk {
            replace: false,
            offset: 0,
            bytes: b"hi\n".to_vec(),
        },
        last: true,
    };
    st.change_command(
        &msp,
        id,
        crate::commands::Change::Update(report),
        3_000,
        None,
    )
    .await
    .unwrap();
    let (s, v) = call(
        &c,
        &admin,
        "POST",
        "/api/v1/scripts",
        Some(json!({"name": "cleanup", "interpreter": "bash", "body": "echo v1"})),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    let (s, v) = call(
        &c,
        &tech,
        "POST",
        "/api/v1/commands/bulk",
        Some(json!({"target": "all", "command": "uptime", "concurrency": 1, "expiry_ms": 60000})),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    let bulk = v["id"].as_str().unwrap().to_string();
    let (s, v) = call(
        &c,
        &admin,
        "POST",
        "/api/v1/deployments",
        Some(json!({"target": {"type": "all"}, "stages": [50, 100]})),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    let (s, v) = call(
        &c,
        &tech,
        "POST",
        "/api/v1/files/pull",
        Some(json!({"site": site, "device": DEVICE, "path": "/var/log/syslog"})),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    // A site's progress report (the receiver's path into the store).
    st.put_site_deployment(&crate::deploy::SiteDeploymentRecord {
        tenant: msp.clone(),
        site: site.clone(),
        customer: "dental".into(),
        deployment: "dep-1".into(),
        from_central: false,
        updated_at_ms: 7,
        received_ms: 8,
        view_json: "{}".into(),
    })
    .await
    .unwrap();
    // A device's approval decisions (uplink protocol 9).
    st.put_decisions(&[crate::deploy::DecisionsRecord {
        tenant: msp.clone(),
        site: site.clone(),
        customer: "dental".into(),
        received_ms: 9,
        decisions: outpost_uplink::deploy_link::DeviceDecisions {
            device: DEVICE.into(),
            computed_ms: 11,
            assessed: true,
            rows: vec![outpost_uplink::deploy_link::DecisionUp {
                patch: "openssl=3.0.2-1".into(),
                outcome: "approved".into(),
                rule: Some("r-web (tag:web)".into()),
                explanation: "approved by the web rule".into(),
            }],
            unnamed: vec![],
            truncated: 0,
        },
    }])
    .await
    .unwrap();
    drop(c);
    Source {
        dir,
        site,
        zeta_site,
        admin,
        zeta_admin,
        command,
        bulk,
    }
}

/// The test server's fresh database URL, `None` when PostgreSQL is not
/// installed.
async fn target(test: &'static str) -> Option<String> {
    let c =
        tokio::task::spawn_blocking(move || crate::pg::cluster::TestCluster::shared_or_skip(test))
            .await
            .unwrap()?;
    Some(c.fresh_database().await)
}

#[test]
fn every_column_family_is_copied_by_a_step_or_listed_as_not_copied() {
    for cf in crate::rocks::CFS {
        let copied = STEPS.iter().any(|s| s.cf() == cf);
        assert!(
            copied ^ NOT_COPIED.contains(&cf),
            "column family {cf}: copied {copied}, listed as not copied {}",
            NOT_COPIED.contains(&cf)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_migrated_central_answers_the_api_as_the_rocksdb_one_and_a_second_run_copies_nothing() {
    let Some(url) = target("migrate_same_answers").await else {
        return;
    };
    let src = filled_source().await;
    let db = src.dir.path().join("db");
    let report = migrate(&db, &url, &MigrateOptions::default())
        .await
        .unwrap();
    assert!(report.mismatches().is_empty(), "{report}");
    for t in &report.tables {
        assert!(t.source > 0, "the fixture fills {}: {report}", t.table);
        assert_eq!(t.copied, t.source, "{report}");
    }
    let again = migrate(&db, &url, &MigrateOptions::default())
        .await
        .unwrap();
    assert_eq!(again.copied(), 0, "{again}");
    assert!(again.mismatches().is_empty(), "{again}");
    assert!(again.to_string().contains("nothing new to copy"), "{again}");

    let rocks: Arc<dyn crate::store::CentralStore> =
        Arc::new(crate::rocks::RocksCentralStore::open(&db).unwrap());
    let pg: Arc<dyn crate::store::CentralStore> = Arc::new(
        crate::pg::PgCentralStore::connect(&url, Default::default())
            .await
            .unwrap(),
    );
    let a = central_on(src.dir.path(), rocks);
    let b = central_on(src.dir.path(), pg);
    let (site, zeta) = (&src.site, &src.zeta_site);
    let reads = [
        "/api/v1/me".to_string(),
        "/api/v1/summary".into(),
        "/api/v1/customers".into(),
        "/api/v1/sites".into(),
        format!("/api/v1/sites/{site}"),
        "/api/v1/devices".into(),
        "/api/v1/devices?tag=db".into(),
        "/api/v1/devices?customer=dental".into(),
        "/api/v1/devices?status=offline".into(),
        format!("/api/v1/sites/{site}/devices/{DEVICE}"),
        format!("/api/v1/sites/{site}/devices/{DEVICE}/metrics?series=cpu"),
        format!("/api/v1/sites/{site}/devices/{DEVICE}/patches"),
        "/api/v1/alerts".into(),
        "/api/v1/alerts?active=true".into(),
        "/api/v1/patches/compliance".into(),
        "/api/v1/patches/cves".into(),
        "/api/v1/patches/cves/CVE-2026-0001".into(),
        "/api/v1/commands".into(),
        format!("/api/v1/commands/{}", src.command),
        "/api/v1/commands/bulk".into(),
        format!("/api/v1/commands/bulk/{}", src.bulk),
        "/api/v1/scripts".into(),
        "/api/v1/scripts/cleanup".into(),
        "/api/v1/audit".into(),
        "/api/v1/deployments".into(),
        "/api/v1/files".into(),
    ];
    for uri in &reads {
        let (sa, va) = call(&a, &src.admin, "GET", uri, None).await;
        let (sb, vb) = call(&b, &src.admin, "GET", uri, None).await;
        let (va, vb) = (timeless(va), timeless(vb));
        assert_eq!(sa, 200, "{uri}: {va}");
        assert_eq!((sa, &va), (sb, &vb), "{uri}: RocksDB then PostgreSQL");
    }
    // The other tenant sees its own rows, on both.
    for uri in [
        "/api/v1/devices".to_string(),
        format!("/api/v1/sites/{zeta}"),
        "/api/v1/alerts".into(),
    ] {
        let (sa, va) = call(&a, &src.zeta_admin, "GET", &uri, None).await;
        let (sb, vb) = call(&b, &src.zeta_admin, "GET", &uri, None).await;
        let (va, vb) = (timeless(va), timeless(vb));
        assert_eq!(sa, 200, "{uri}: {va}");
        assert_eq!((sa, &va), (sb, &vb), "{uri}");
    }
    // The console's search (SQL on PostgreSQL, the fleet index on
    // RocksDB), tags and counts.
    let msp: TenantId = "msp".into();
    for words in [vec![], vec!["web".to_string()], vec!["10.0.0".to_string()]] {
        let q = crate::store::DeviceSearch {
            words,
            limit: 50,
            ..Default::default()
        };
        let (ra, rb) = (
            a.store.search_devices(&msp, &q).await.unwrap(),
            b.store.search_devices(&msp, &q).await.unwrap(),
        );
        assert_eq!(format!("{ra:?}"), format!("{rb:?}"), "{q:?}");
    }
    assert_eq!(
        a.store.device_tags(&msp, &[]).await.unwrap(),
        b.store.device_tags(&msp, &[]).await.unwrap()
    );
    assert_eq!(
        format!("{:?}", a.store.fleet_counts(&msp, &[]).await.unwrap()),
        format!("{:?}", b.store.fleet_counts(&msp, &[]).await.unwrap())
    );
    // Users, sessions and the output of commands came along.
    let (ua, ub) = (
        a.store.user(&"msp".into(), "ann").await.unwrap(),
        b.store.user(&"msp".into(), "ann").await.unwrap(),
    );
    assert!(ua.is_some());
    assert_eq!(format!("{ua:?}"), format!("{ub:?}"));
    let (sa, sb) = (
        a.store.session(&SESSION_HASH).await.unwrap(),
        b.store.session(&SESSION_HASH).await.unwrap(),
    );
    assert!(sa.is_some());
    assert_eq!(format!("{sa:?}"), format!("{sb:?}"));
    let id = src.command.parse().unwrap();
    assert_eq!(
        b.store.command_output(&msp, id).await.unwrap(),
        a.store.command_output(&msp, id).await.unwrap()
    );
    // Exactly once holds across the move: applied batches stay
    // duplicates on PostgreSQL, the missing one applies.
    for seq in [1, 2, 4] {
        assert_eq!(
            b.store
                .apply_batch(&msp, site, batch_of(site, seq), 1_700_000_300_000)
                .await
                .unwrap(),
            ApplyOutcome::Duplicate,
            "seq {seq}"
        );
    }
    let o = b
        .store
        .apply_batch(&msp, site, batch_of(site, 3), 1_700_000_300_000)
        .await
        .map_err(|e| e.to_string());
    assert!(matches!(o, Ok(ApplyOutcome::Applied { .. })), "{o:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_migration_killed_after_any_chunk_resumes_and_copies_every_row_once() {
    let Some(url) = target("migrate_resumes").await else {
        return;
    };
    let src = filled_source().await;
    let db = src.dir.path().join("db");
    let kill_each = MigrateOptions {
        chunk_rows: 3,
        stop_after_chunks: Some(2),
    };
    let mut runs = 0;
    let report = loop {
        runs += 1;
        assert!(runs < 200, "no progress");
        match migrate(&db, &url, &kill_each).await {
            Err(MigrateError::Interrupted(2)) => continue,
            Err(e) => panic!("{e}"),
            Ok(r) => break r,
        }
    };
    assert!(runs > 3, "the fixture spans several killed runs ({runs})");
    assert!(report.mismatches().is_empty(), "{report}");
    // The fleet counts (site_counts) are those of every copied device,
    // not of the devices copied when a killed run's site first appeared.
    let rocks = crate::rocks::RocksCentralStore::open(&db).unwrap();
    let pg = crate::pg::PgCentralStore::connect(&url, Default::default())
        .await
        .unwrap();
    for tenant in ["msp", "zeta"] {
        let t: TenantId = tenant.into();
        assert_eq!(
            format!(
                "{:?}",
                FleetStore::fleet_counts(&pg, &t, &[]).await.unwrap()
            ),
            format!(
                "{:?}",
                FleetStore::fleet_counts(&rocks, &t, &[]).await.unwrap()
            ),
            "tenant {tenant}: PostgreSQL then RocksDB"
        );
    }
    drop(rocks);
    // Audit rows have no natural key: only the progress rows keep them
    // from being copied twice.
    let audit = report.tables.iter().find(|t| t.table == "audit").unwrap();
    assert!(
        audit.source >= 3 && audit.target == audit.source,
        "{report}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_open_in_a_running_central_or_another_source_or_no_store_is_refused() {
    let Some(url) = target("migrate_refuses").await else {
        return;
    };
    let src = filled_source().await;
    let db = src.dir.path().join("db");
    {
        let _running = crate::rocks::RocksCentralStore::open(&db).unwrap();
        let e = migrate(&db, &url, &MigrateOptions::default())
            .await
            .unwrap_err();
        assert!(matches!(e, MigrateError::SourceInUse(..)), "{e}");
        assert!(e.to_string().contains("stop it before migrating"), "{e}");
    }
    let e = migrate(
        &src.dir.path().join("nope"),
        &url,
        &MigrateOptions::default(),
    )
    .await
    .unwrap_err();
    assert!(matches!(e, MigrateError::NotAStore(..)), "{e}");
    migrate(&db, &url, &MigrateOptions::default())
        .await
        .unwrap();
    let other = tempfile::tempdir().unwrap();
    drop(crate::rocks::RocksCentralStore::open(other.path()).unwrap());
    let e = migrate(other.path(), &url, &MigrateOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(e, MigrateError::OtherSource { .. }), "{e}");
}
