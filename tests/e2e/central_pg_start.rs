//! `outpost-central serve` started while its PostgreSQL is down (issue
//! 16, start-up): the process stays up, answers `/healthz` and the API
//! 503 with the reason while it retries, refuses the site's uplink (the
//! site keeps its batches), and once the server is back becomes ready by
//! itself and applies every batch once. Credentials PostgreSQL refuses
//! end `serve` at once with a clear message.

use std::process::Command;
use std::time::Duration;

use outpost_tests::*;

use crate::central_pg::{stop_and_check_every_batch_applied_once, wait_for_last_rollups};
use crate::uplink::{Central, fast_config, join, uplink_status};

#[test]
fn central_started_while_postgresql_is_down_answers_503_until_it_is_up_then_applies_the_sites_batches_once()
 {
    use outpost_central::pg::cluster::TestCluster;
    let Some(pg) = TestCluster::own_or_skip("central-pg-start") else {
        return;
    };
    let db = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(pg.create_database());
    let url = pg.postgres_url(&db);
    let tmp = scratch("central-pg-start");
    let root = tmp.path();

    // What retrying cannot fix ends `serve` at once, saying why.
    let stranger = url.replace(&format!("user={}", pg.user), "user=nobody_here");
    assert_ne!(stranger, url);
    let mut cmd = Command::new(bin("outpost-central"));
    cmd.arg("serve")
        .arg("--data")
        .arg(root.join("refused"))
        .args(["--listen", &format!("127.0.0.1:{}", free_port())])
        .args(["--http-listen", &format!("127.0.0.1:{}", free_port())])
        .args(["--store", &stranger]);
    let mut refused = Proc::spawn("central-refused", &mut cmd, root).unwrap();
    let st = wait_for(Duration::from_secs(30), "serve to exit", || {
        refused.try_exit()
    });
    assert!(!st.success(), "{st}");
    let err = refused.stderr();
    assert!(
        err.contains("error: opening the store: PostgreSQL refused the credentials"),
        "{err}"
    );

    let args = ["--store", &url, "--store-pool-wait-ms", "500"];
    let mut central = Central::start_with(root, &args);
    let (token, fp) = central.site_add("acme", "dental", "branch");
    let cfg = fast_config(root, "");
    let mut app = Appliance::start_with(root, &["--config", cfg.to_str().unwrap()]);
    let site = join(&app, &central, &token, &fp);
    let mut agents: Vec<Agent> = (0..2)
        .map(|i| Agent::enroll(root, &format!("agent-{i}"), &app))
        .collect();
    for g in &mut agents {
        g.start();
    }
    let viewer = central.api_token("acme", "viewer");
    let devices = format!("/api/v1/devices?site={site}");
    wait_for(Duration::from_secs(60), "first rollups at central", || {
        let v = central.get(&devices, &viewer);
        (v["devices"]
            .as_array()?
            .iter()
            .filter(|d| d["rollups_stored"].as_u64().unwrap_or(0) > 0)
            .count()
            == 2)
            .then_some(())
    });

    // Central stops; its database goes down; central starts before it.
    central.stop();
    pg.stop_immediately();
    central.spawn();
    let healthz = || http_request(central.http, "GET", "/healthz", None, None).ok();
    // Live but not ready: 503 with the reason, after a second attempt.
    let (_, reason) = wait_for(
        Duration::from_secs(30),
        "healthz 503 while the store does not open",
        || {
            healthz().filter(|(st, body)| {
                *st == 503
                    && body.contains("starting: attempt ")
                    && !body.contains("starting: attempt 1 ")
            })
        },
    );
    assert!(
        reason.starts_with("central storage unavailable: starting: attempt ")
            && reason.contains(" to open the store failed: postgresql: ")
            && reason.contains("next attempt in "),
        "{reason}"
    );
    let (st, head, body) = http_raw(
        central.http,
        "GET",
        &devices,
        &[("Authorization", &format!("Bearer {viewer}"))],
        "",
    );
    assert_eq!(st, 503, "{body}");
    assert!(
        head.to_ascii_lowercase().contains("retry-after: 5"),
        "{head}"
    );
    let v: serde_json::Value = serde_json::from_str(&body).expect("a JSON error");
    assert!(
        v["error"]
            .as_str()
            .unwrap_or_default()
            .starts_with("central storage unavailable: starting"),
        "{v}"
    );
    assert!(
        !central.dir.join("http.addr").exists(),
        "http.addr is written once central is ready"
    );
    // The site's uplink is refused; it keeps sealing batches.
    wait_for(
        Duration::from_secs(60),
        "uplink refused and batches waiting in the outbox",
        || {
            let st = uplink_status(&app);
            (central.metric("outpost_central_starting_refusals_total{reason=\"uplink\"}") >= 1.0
                && st["link"] != "connected"
                && st["backlog_batches"].as_u64()? >= 2)
                .then_some(())
        },
    );
    assert!(central.metric("outpost_central_store_open_attempts_total{reason=\"retry\"}") >= 2.0);
    let log = central.proc.as_ref().unwrap().stderr();
    assert!(
        log.contains("the store did not open") && log.contains("attempt=2"),
        "each attempt logged with its reason:\n{log}"
    );
    assert!(central.proc.as_mut().unwrap().try_exit().is_none());

    // The database is back: central becomes ready by itself.
    pg.restart();
    central.wait_ready(Duration::from_secs(60));
    assert_eq!(
        central.metric("outpost_central_store_open_attempts_total{reason=\"opened\"}"),
        1.0
    );
    wait_for(Duration::from_secs(60), "batches applied again", || {
        (central.metric("outpost_central_batches_applied_total") > 0.0).then_some(())
    });
    for g in &mut agents {
        g.stop();
    }
    wait_for_last_rollups(&app, &agents);
    stop_and_check_every_batch_applied_once(&central, &mut app, &site, &agents, &viewer);
}

/// Maintenance is started by `serve` on PostgreSQL (its first run at
/// start): a rollup partition whose whole week is past
/// `--rollup-retention` is dropped and counted.
#[test]
fn serve_on_postgresql_starts_maintenance_which_drops_an_expired_rollup_partition() {
    use outpost_central::pg::cluster::TestCluster;
    use outpost_central::pg::{PARTITION_MS, PgCentralStore};
    let Some(pg) = TestCluster::shared_or_skip("central-pg-maintenance") else {
        return;
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let db = rt.block_on(pg.create_database());
    let url = pg.postgres_url(&db);
    // A partition of a week 60 days ago (made as a late batch would).
    let week = (outpost_central::now_ms() - 60 * 24 * 3_600_000) / PARTITION_MS;
    let name = format!("rollups_w{week}");
    let exists = |name: &str| -> bool {
        let (conn_url, name) = (pg.url(&db), name.to_string());
        rt.block_on(async move {
            let (c, conn) = tokio_postgres::connect(&conn_url, tokio_postgres::NoTls)
                .await
                .unwrap();
            let t = tokio::spawn(conn);
            let n: i64 = c
                .query_one("SELECT count(*) FROM pg_class WHERE relname = $1", &[&name])
                .await
                .unwrap()
                .get(0);
            drop(c);
            let _ = t.await;
            n == 1
        })
    };
    rt.block_on(async {
        let store = PgCentralStore::connect(&url, Default::default())
            .await
            .unwrap();
        store
            .ensure_partitions([week * PARTITION_MS + 1])
            .await
            .unwrap();
    });
    assert!(exists(&name), "{name} made");

    let tmp = scratch("central-pg-maintenance");
    let central = Central::start_with(
        tmp.path(),
        &[
            "--store",
            &url,
            "--rollup-retention",
            "30d",
            "--store-maintenance-interval",
            "1m",
        ],
    );
    wait_for(
        Duration::from_secs(60),
        "the expired partition dropped",
        || {
            (central.metric("outpost_central_pg_maintenance_partitions_dropped_total") >= 1.0)
                .then_some(())
        },
    );
    assert!(!exists(&name), "{name} dropped");
    assert!(central.metric("outpost_central_pg_maintenance_runs_total") >= 1.0);
    let this_week = format!("rollups_w{}", outpost_central::now_ms() / PARTITION_MS);
    assert!(exists(&this_week), "the current week kept");
}
