//! PostgreSQL-only behaviour: row-level security, the schema version
//! check, rollup partitions, and two instances over one database. The
//! behaviour shared with RocksDB is in `crate::store_tests`.

use std::sync::Arc;

use super::{PARTITION_MS, PgCentralStore};
use crate::pg::cluster::TestCluster;
use crate::store::{ApplyOutcome, CentralStore, RollupQuery};
use crate::store_tests::{add_site, s, t};
use crate::testing::sample_batch;

async fn fresh(test: &str) -> Option<String> {
    let test = test.to_string();
    let c = tokio::task::spawn_blocking(move || TestCluster::shared_or_skip(&test))
        .await
        .unwrap()?;
    Some(c.fresh_database().await)
}

async fn store(url: &str) -> Arc<PgCentralStore> {
    Arc::new(
        PgCentralStore::connect(url, Default::default())
            .await
            .unwrap(),
    )
}

/// A query that forgets its tenant filter still sees only the rows of the
/// tenant its transaction names (row-level security), none without a
/// tenant, and cannot write a row of another tenant.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row_level_security_refuses_a_query_that_forgets_the_tenant_filter() {
    let Some(url) = fresh("row_level_security").await else {
        return;
    };
    let pg = store(&url).await;
    let st: Arc<dyn CentralStore> = pg.clone();
    add_site(&st, "msp", "s-1", 1).await;
    add_site(&st, "other", "s-1", 2).await;
    for tenant in ["msp", "other"] {
        st.apply_batch(&t(tenant), &s("s-1"), sample_batch(1), 1)
            .await
            .unwrap();
    }
    for table in ["sites", "devices", "alerts", "rollups", "alert_history"] {
        let rows = pg
            .query_as_api_role(Some("msp"), &format!("SELECT tenant_id FROM {table}"))
            .await
            .unwrap();
        let tenants: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
        assert!(!tenants.is_empty(), "{table}");
        assert!(tenants.iter().all(|x| x == "msp"), "{table}: {tenants:?}");
        let none = pg
            .query_as_api_role(None, &format!("SELECT tenant_id FROM {table}"))
            .await
            .unwrap();
        assert!(none.is_empty(), "{table} without a tenant: {}", none.len());
    }
    let write = pg
        .query_as_api_role(
            Some("msp"),
            "UPDATE devices SET hostname = 'pwned' WHERE tenant_id = 'other' RETURNING 1",
        )
        .await
        .unwrap();
    assert!(write.is_empty(), "another tenant's rows are not updatable");
    let insert = pg
        .query_as_api_role(
            Some("msp"),
            "INSERT INTO users (tenant_id, name, body) VALUES ('other', 'x', '\\x00') RETURNING 1",
        )
        .await;
    assert!(insert.is_err(), "a row of another tenant is refused");
}

/// The tables of schema version 2 (scripts, bulk runs, held members,
/// patch findings, the CVE index) have the same row-level security: a
/// query without a tenant filter sees only its tenant's rows, none
/// without a tenant.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row_level_security_covers_the_version_2_tables() {
    use crate::bulk::{BulkTarget, CentralBulk};
    use crate::commands::CentralCommand;
    use crate::scripts::CentralScript;
    use crate::store_tests::{audit_row, findings_of};
    use outpost_proto::command::CommandSpec;
    use outpost_proto::ids::CommandId;

    let Some(url) = fresh("row_level_security_v2").await else {
        return;
    };
    let pg = store(&url).await;
    let st: Arc<dyn CentralStore> = pg.clone();
    for (n, tenant) in [(1u8, "msp"), (2, "other")] {
        add_site(&st, tenant, "s-1", n).await;
        let mut b = sample_batch(1);
        b.patch_findings = vec![findings_of(0x2a, 100, &["CVE-A"])];
        st.apply_batch(&t(tenant), &s("s-1"), b, 1).await.unwrap();
        let script = CentralScript {
            name: "fix".into(),
            version: 0,
            interpreter: Default::default(),
            body: "true".into(),
            default_timeout_ms: 1_000,
            parameters: vec![],
            created_ms: 1,
            created_by: "ann".into(),
            customer: None,
        };
        st.put_script(&t(tenant), script, true, audit_row(tenant, 1))
            .await
            .unwrap()
            .unwrap();
        let cmd = CentralCommand::new(
            CommandId([n; 16]),
            tenant.into(),
            "s-1".into(),
            "dental".into(),
            "000000000000002a".into(),
            "web".into(),
            CommandSpec::shell("true", "ann"),
            "ann".into(),
            1,
        );
        let run = CentralBulk {
            id: CommandId([0xa0 + n; 16]),
            tenant: tenant.into(),
            target: BulkTarget::All,
            command: "true".into(),
            concurrency: 1,
            created_ms: 1,
            created_by: "ann".into(),
            cancelled: None,
            members: vec![],
        };
        st.create_bulk(
            &run,
            std::slice::from_ref(&cmd),
            &[cmd.id],
            &audit_row(tenant, 1),
        )
        .await
        .unwrap();
    }
    for table in [
        "scripts",
        "bulks",
        "commands_held",
        "patch_findings",
        "patch_cves",
    ] {
        let rows = pg
            .query_as_api_role(Some("msp"), &format!("SELECT tenant_id FROM {table}"))
            .await
            .unwrap();
        let tenants: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
        assert_eq!(tenants, ["msp"], "{table}");
        let none = pg
            .query_as_api_role(None, &format!("SELECT tenant_id FROM {table}"))
            .await
            .unwrap();
        assert!(none.is_empty(), "{table} without a tenant: {}", none.len());
    }
}

/// A database migrated by a newer central (a schema version this binary
/// does not know) is refused at start, with a message saying why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schema_newer_than_the_binary_knows_is_refused() {
    let Some(url) = fresh("schema_newer").await else {
        return;
    };
    drop(store(&url).await);
    let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    client
        .execute(
            "INSERT INTO outpost_schema_version (version, name, applied_ms) VALUES (99, 'future', 0)",
            &[],
        )
        .await
        .unwrap();
    let e = match PgCentralStore::connect(&url, Default::default()).await {
        Ok(_) => panic!("a newer schema was accepted"),
        Err(e) => e.to_string(),
    };
    assert!(e.contains("newer"), "{e}");
    // The current version opens again once the row is gone (migrations
    // are idempotent at the same version).
    client
        .execute("DELETE FROM outpost_schema_version WHERE version = 99", &[])
        .await
        .unwrap();
    drop(store(&url).await);
}

/// Versions are numbers reserved by branches that merge in any order: a
/// database that has version 7 still gets version 5 when a binary that
/// knows 5 starts; a version the binary does not know, even below its
/// newest, is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_migration_numbered_below_one_applied_is_still_applied_and_an_unknown_one_refused() {
    let Some(url) = fresh("schema_gaps").await else {
        return;
    };
    let (mut client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let first: &[(i32, &str, &str)] = &[
        (1, "one", "CREATE TABLE one (x int)"),
        (7, "seven", "CREATE TABLE seven (x int)"),
    ];
    assert_eq!(super::migrate_with(&mut client, first).await.unwrap(), 7);
    let later: &[(i32, &str, &str)] = &[
        (1, "one", "CREATE TABLE one (x int)"),
        (5, "five", "CREATE TABLE five (x int)"),
        (7, "seven", "CREATE TABLE seven (x int)"),
    ];
    assert_eq!(super::migrate_with(&mut client, later).await.unwrap(), 7);
    let versions: Vec<i32> = client
        .query("SELECT version FROM outpost_schema_version ORDER BY 1", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(versions, [1, 5, 7]);
    client.query("SELECT x FROM five", &[]).await.unwrap();
    // Run again: nothing to do.
    assert_eq!(super::migrate_with(&mut client, later).await.unwrap(), 7);
    // A binary that does not know 5 refuses this database.
    let e = super::migrate_with(&mut client, first).await.unwrap_err();
    assert!(e.to_string().contains("version 5"), "{e}");
}

/// Rows written before schema version 7 (no search keys) are found by
/// the SQL device search once the store has started (it fills them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_from_before_version_7_get_their_search_keys_at_start() {
    let Some(url) = fresh("search_keys_fill").await else {
        return;
    };
    let pg = store(&url).await;
    let st: Arc<dyn CentralStore> = pg.clone();
    add_site(&st, "msp", "s-1", 1).await;
    st.apply_batch(&t("msp"), &s("s-1"), sample_batch(1), 1)
        .await
        .unwrap();
    drop((st, pg));
    let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    client
        .batch_execute(
            "UPDATE devices SET host_lc = NULL, os_lc = NULL, status_rank = NULL, cpu_key = NULL; \
             UPDATE sites SET name = NULL, name_lc = NULL; UPDATE alerts SET device = NULL",
        )
        .await
        .unwrap();
    let st: Arc<dyn CentralStore> = store(&url).await;
    let page = st
        .search_devices(
            &t("msp"),
            &crate::store::DeviceSearch {
                words: vec!["web".into()],
                critical: true,
                limit: 10,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(page.total, 1);
    assert_eq!(page.items[0].hostname, "web-1");
    assert!(page.items[0].critical && page.items[0].open_alerts == 1);
    let counts = st.fleet_counts(&t("msp"), &[]).await.unwrap();
    assert_eq!(counts.per_site[&s("s-1")].critical, 1);
    // LIKE's wildcards in a word are literal characters (no host has them).
    for w in ["%", "_", "\\", "web_1"] {
        let page = st
            .search_devices(
                &t("msp"),
                &crate::store::DeviceSearch {
                    words: vec![w.into()],
                    limit: 10,
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        assert_eq!(page.total, 0, "{w:?}");
    }
}

/// Orders and reports written before schema version 15 (no key columns)
/// are listed and read by deployment id once the store has started (it
/// fills them from their bodies).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployments_from_before_version_15_get_their_key_columns_at_start() {
    use crate::deploy::{Delivery, OrderRecord, SiteDeploymentRecord};
    use crate::store::DeploymentQuery;
    let Some(url) = fresh("deployment_keys_fill").await else {
        return;
    };
    let st: Arc<dyn CentralStore> = store(&url).await;
    let o = OrderRecord {
        tenant: t("msp"),
        id: "ord-1".into(),
        created_ms: 7,
        created_by: "ann".into(),
        deployment: Some("cdep-1".into()),
        sites: vec![s("s-1")],
        customers: vec!["dental".into()],
        kind: outpost_uplink::deploy_link::DeployOrderKind::CreateDeployment {
            request_json: "{}".into(),
        },
    };
    let audit = crate::commands::AuditRow {
        at_ms: 7,
        tenant: t("msp"),
        actor: "ann".into(),
        action: "deployment.create".into(),
        target: "cdep-1".into(),
        detail: String::new(),
    };
    st.create_order(&o, &[Delivery::queued(&o, &s("s-1"))], &audit)
        .await
        .unwrap();
    st.put_site_deployment(&SiteDeploymentRecord {
        tenant: t("msp"),
        site: s("s-2"),
        customer: "vet".into(),
        deployment: "dep-2".into(),
        from_central: false,
        updated_at_ms: 9,
        received_ms: 9,
        view_json: r#"{"summary":{"created_at_ms":8}}"#.into(),
    })
    .await
    .unwrap();
    let q = DeploymentQuery {
        limit: 10,
        ..Default::default()
    };
    let before = st.deployment_page(&t("msp"), &q).await.unwrap();
    assert_eq!(before.total, 2);
    drop(st);
    let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    client
        .batch_execute(
            "UPDATE deploy_orders SET kind = NULL, deployment = NULL, customers = NULL; \
             UPDATE site_deployments SET created_ms = NULL, customer = NULL, from_central = NULL",
        )
        .await
        .unwrap();
    let st: Arc<dyn CentralStore> = store(&url).await;
    assert_eq!(st.deployment_page(&t("msp"), &q).await.unwrap(), before);
    assert_eq!(
        st.deployment_orders(&t("msp"), "cdep-1").await.unwrap(),
        vec![o]
    );
    let vet_only = DeploymentQuery {
        customers_allowed: vec!["vet".into()],
        ..q
    };
    let p = st.deployment_page(&t("msp"), &vet_only).await.unwrap();
    assert_eq!(
        (p.total, p.items[0].id.as_str()),
        (1, "dep-2"),
        "customers filled too"
    );
}

/// A database at schema version 1 (a central of the previous release) is
/// upgraded to the newest version at start: its rows stay, the new tables
/// and columns work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_1_database_is_upgraded_at_start_and_keeps_its_rows() {
    let Some(url) = fresh("schema_upgrade").await else {
        return;
    };
    let (mut client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    // What the previous release ran: version 1 only.
    client
        .batch_execute(
            "CREATE TABLE outpost_schema_version (
                version integer PRIMARY KEY,
                name text NOT NULL,
                applied_ms bigint NOT NULL)",
        )
        .await
        .unwrap();
    let (v1, name, sql) = super::MIGRATIONS[0];
    assert_eq!(v1, 1);
    let tx = client.transaction().await.unwrap();
    tx.batch_execute(sql).await.unwrap();
    tx.execute(
        "INSERT INTO outpost_schema_version (version, name, applied_ms) VALUES ($1, $2, 0)",
        &[&v1, &name],
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    client
        .execute(
            "INSERT INTO users (tenant_id, name, body) VALUES ('msp', 'kept', '\\x00')",
            &[],
        )
        .await
        .unwrap();

    let pg = store(&url).await;
    let versions: Vec<i32> = client
        .query("SELECT version FROM outpost_schema_version ORDER BY 1", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let known: Vec<i32> = super::MIGRATIONS.iter().map(|m| m.0).collect();
    assert_eq!(versions, known);
    let kept = client
        .query("SELECT 1 FROM users WHERE name = 'kept'", &[])
        .await
        .unwrap();
    assert_eq!(kept.len(), 1, "version 1 rows stay");
    let st: Arc<dyn CentralStore> = pg;
    add_site(&st, "msp", "s-1", 1).await;
    let mut b = sample_batch(1);
    b.patch_findings = vec![crate::store_tests::findings_of(0x2a, 1, &["CVE-A"])];
    st.apply_batch(&t("msp"), &s("s-1"), b, 1).await.unwrap();
    assert_eq!(
        st.cve_exposure(&t("msp"), "CVE-A", 10).await.unwrap().len(),
        1
    );
}

/// Rollups of any age land in their week's partition (created on
/// demand); retention drops whole partitions and their rows with them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollup_partitions_are_made_on_demand_and_retention_drops_them() {
    let Some(url) = fresh("rollup_partitions").await else {
        return;
    };
    let pg = store(&url).await;
    let st: Arc<dyn CentralStore> = pg.clone();
    add_site(&st, "msp", "s-1", 1).await;
    let b = sample_batch(1);
    let bucket = b.rollups[0].bucket_start_ms;
    st.apply_batch(&t("msp"), &s("s-1"), b, 1).await.unwrap();
    let q = RollupQuery {
        site_id: "s-1".into(),
        device: "000000000000002a".into(),
        series: "cpu".into(),
        label: String::new(),
        from_ms: 0,
        to_ms: u64::MAX,
        limit: 10,
    };
    assert_eq!(st.rollups(&t("msp"), &q).await.unwrap().len(), 1);
    let week = bucket / PARTITION_MS;
    let kept = pg
        .drop_rollup_partitions_before(week * PARTITION_MS)
        .await
        .unwrap();
    assert!(kept.is_empty(), "{kept:?}");
    let dropped = pg
        .drop_rollup_partitions_before((week + 1) * PARTITION_MS)
        .await
        .unwrap();
    assert_eq!(dropped, vec![format!("rollups_w{week}")]);
    assert!(st.rollups(&t("msp"), &q).await.unwrap().is_empty());
    // A late batch for that week makes the partition again.
    let mut late = sample_batch(2);
    late.created_ms += 1;
    st.apply_batch(&t("msp"), &s("s-1"), late, 2).await.unwrap();
    assert_eq!(st.rollups(&t("msp"), &q).await.unwrap().len(), 1);
}

/// Two central instances (two stores, two pools) over one database apply
/// the same batches at the same time: each batch applies once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_applying_the_same_batches_apply_each_once() {
    let Some(url) = fresh("two_instances").await else {
        return;
    };
    let a: Arc<dyn CentralStore> = store(&url).await;
    let b: Arc<dyn CentralStore> = store(&url).await;
    add_site(&a, "msp", "s-1", 1).await;
    let run = |st: Arc<dyn CentralStore>| {
        tokio::spawn(async move {
            let mut applied = 0;
            for seq in 1..=30 {
                if let ApplyOutcome::Applied { .. } = st
                    .apply_batch(&t("msp"), &s("s-1"), sample_batch(seq), seq)
                    .await
                    .unwrap()
                {
                    applied += 1;
                }
            }
            applied
        })
    };
    let (x, y) = (run(a.clone()), run(b.clone()));
    let total = x.await.unwrap() + y.await.unwrap();
    assert_eq!(total, 30);
    let rec = b.site(&t("msp"), &s("s-1")).await.unwrap().unwrap();
    assert_eq!((rec.applied_up_to, rec.batches_applied), (30, 30));
}

/// `serve --store` takes `postgres://…` (connects and migrates) or
/// `rocksdb:DIR`, and refuses anything else with a message naming both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_flag_opens_postgres_or_rocksdb_and_refuses_anything_else() {
    use crate::StoreLocation;
    let dir = tempfile::tempdir().unwrap();
    let rocks = format!("rocksdb:{}", dir.path().join("db").display());
    assert_eq!(
        StoreLocation::parse(&rocks, 4, 1000).unwrap(),
        StoreLocation::Rocks(dir.path().join("db"))
    );
    StoreLocation::parse(&rocks, 4, 1000)
        .unwrap()
        .open()
        .await
        .unwrap();
    for bad in ["mysql://x", "rocksdb:", "/var/lib/db"] {
        let e = StoreLocation::parse(bad, 4, 1000).unwrap_err().to_string();
        assert!(e.contains("rocksdb:"), "{bad}: {e}");
    }
    let Some(c) = tokio::task::spawn_blocking(|| TestCluster::shared_or_skip("store_flag"))
        .await
        .unwrap()
    else {
        return;
    };
    let db = c.create_database().await;
    let loc = StoreLocation::parse(&c.postgres_url(&db), 4, 1000).unwrap();
    assert!(matches!(
        &loc,
        StoreLocation::Postgres {
            pool_size: 4,
            statement_timeout_ms: 1000,
            ..
        }
    ));
    let st = loc.open().await.unwrap();
    add_site(&st, "msp", "s-1", 1).await;
    assert_eq!(st.sites(&t("msp")).await.unwrap().len(), 1);
}

/// `GET /api/v1/files` on PostgreSQL pages down the tenant's
/// `(tenant_id, created_ms, id)` index: with one row per page, ties in
/// `created_ms` are neither skipped nor repeated, filters on the decoded
/// record (device, customer) still fill the limit, and another tenant's
/// rows never appear.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_files_list_pages_one_tenants_index_newest_first_across_ties() {
    use crate::files::{CentralFile, Direction};
    use crate::store::{FileFilter, FileStore};
    use outpost_proto::ids::{CommandId, TransferId};

    let Some(url) = fresh("files_list_pages").await else {
        return;
    };
    let pg = store(&url).await;
    let rec = |tenant: &str, device: &str, customer: &str, ms: u64| CentralFile {
        id: TransferId::random(),
        tenant: t(tenant),
        site_id: s("s-1"),
        customer: customer.into(),
        device: device.into(),
        command: CommandId::random(),
        direction: Direction::Pull,
        path: "/x".into(),
        size_bytes: None,
        sha256: None,
        mode: None,
        owner: None,
        max_bytes: 10,
        requested_by: "ann".into(),
        created_ms: ms,
        stored_ms: None,
        failure: None,
    };
    let mut mine = Vec::new();
    for (i, ms) in [5u64, 5, 5, 7, 3, 7, 1].into_iter().enumerate() {
        let dev = if i % 2 == 0 { "aa" } else { "bb" };
        let cust = if i == 3 { "bakery" } else { "dental" };
        let r = rec("msp", dev, cust, ms);
        pg.put_file(&r).await.unwrap();
        mine.push(r);
    }
    for ms in [6, 9] {
        pg.put_file(&rec("zeta", "aa", "dental", ms)).await.unwrap();
    }
    // Expected order: created_ms desc, then id desc.
    let mut want = mine.clone();
    want.sort_by(|a, b| {
        b.created_ms
            .cmp(&a.created_ms)
            .then(b.id.to_string().cmp(&a.id.to_string()))
    });
    let ids = |v: &[CentralFile]| v.iter().map(|r| r.id).collect::<Vec<_>>();
    let all = FileFilter {
        limit: 100,
        ..Default::default()
    };
    for page in [1, 2, 3, 500] {
        let got = pg.files_paged("msp", &all, page).await.unwrap();
        assert_eq!(ids(&got), ids(&want), "page size {page}");
    }
    let f = FileFilter {
        device: Some("aa".into()),
        customers_allowed: vec!["dental".into()],
        limit: 2,
        ..Default::default()
    };
    let expect: Vec<_> = want
        .iter()
        .filter(|r| r.device == "aa" && r.customer.as_str() == "dental")
        .take(2)
        .map(|r| r.id)
        .collect();
    assert_eq!(ids(&pg.files_paged("msp", &f, 1).await.unwrap()), expect);
    let before = FileFilter {
        before_ms: Some(5),
        limit: 100,
        ..Default::default()
    };
    let expect: Vec<_> = want
        .iter()
        .filter(|r| r.created_ms < 5)
        .map(|r| r.id)
        .collect();
    assert_eq!(
        ids(&pg.files_paged("msp", &before, 1).await.unwrap()),
        expect
    );
    // Through the trait: the other tenant sees its two only.
    let theirs = pg.files(&t("zeta"), &all).await.unwrap();
    assert_eq!(
        theirs.iter().map(|r| r.created_ms).collect::<Vec<_>>(),
        [9, 6]
    );
}
