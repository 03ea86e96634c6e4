//! Two `outpost-central` processes over one PostgreSQL (issue 16): a site
//! listing both fails over from one to the other mid-stream and every
//! rollup arrives once.

use std::time::Duration;

use outpost_tests::*;

use crate::uplink::{Central, appliance_rollups, fast_config, join, uplink_status};

/// Instance A is stopped while the site streams to it: the site goes on
/// with B (its second address), nothing is lost, nothing applied twice.
#[test]
fn a_site_switches_to_the_second_instance_when_the_first_stops_and_every_rollup_arrives_once() {
    use outpost_central::pg::cluster::TestCluster;
    let Some(pg) = TestCluster::shared_or_skip("central-pg-failover") else {
        return;
    };
    let db = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(pg.create_database());
    let url = pg.postgres_url(&db);
    let tmp = scratch("central-pg-failover");
    let root = tmp.path();
    let (ra, rb) = (root.join("a"), root.join("b"));
    std::fs::create_dir_all(&ra).unwrap();
    let mut a = Central::start_with(&ra, &["--store", &url]);
    // B serves the same CA and keys (README: copy them).
    std::fs::create_dir_all(rb.join("central")).unwrap();
    for f in [
        "ca.crt",
        "ca.key",
        "server.crt",
        "server.key",
        "admin.token",
    ] {
        std::fs::copy(a.dir.join(f), rb.join("central").join(f)).unwrap();
    }
    let b = Central::start_with(&rb, &["--store", &url]);
    let (token, fp) = a.site_add("acme", "dental", "branch");
    let cfg = fast_config(
        root,
        &format!(
            "central = [\"{}\", \"{}\"]\ncentral_fail_back = \"10m\"\n",
            a.quic, b.quic
        ),
    );
    let mut app = Appliance::start_with(root, &["--config", cfg.to_str().unwrap()]);
    let site = join(&app, &a, &token, &fp);
    let mut agents: Vec<Agent> = (0..2)
        .map(|i| Agent::enroll(root, &format!("agent-{i}"), &app))
        .collect();
    for g in &mut agents {
        g.start();
    }
    let viewer = a.api_token("acme", "viewer");
    wait_for(Duration::from_secs(60), "first rollups through A", || {
        let v = a.get(&format!("/api/v1/devices?site={site}"), &viewer);
        (v["devices"]
            .as_array()?
            .iter()
            .filter(|d| d["rollups_stored"].as_u64().unwrap_or(0) > 0)
            .count()
            == 2)
            .then_some(())
    });
    assert!(a.metric("outpost_central_batches_applied_total") > 0.0);
    // A stops mid-stream; the site reconnects to B.
    a.stop();
    let applied_b = |b: &Central| b.metric("outpost_central_batches_applied_total");
    wait_for(Duration::from_secs(30), "batches applied by B", || {
        (applied_b(&b) > 0.0 && uplink_status(&app)["link"] == "connected").then_some(())
    });
    std::thread::sleep(Duration::from_secs(4));
    for g in &mut agents {
        g.stop();
    }
    std::thread::sleep(Duration::from_secs(5));
    wait_for(Duration::from_secs(30), "outbox drained", || {
        (uplink_status(&app)["backlog_batches"] == 0).then_some(())
    });
    app.stop();
    let local = appliance_rollups(&app.dir);
    let devs = b.get(&format!("/api/v1/devices?site={site}"), &viewer);
    for g in &agents {
        let d = devs["devices"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["device"] == g.device_id.as_str())
            .expect("device at central");
        let at_central = d["rollups_stored"].as_u64().unwrap();
        let at_site = local.get(&g.device_id).copied().unwrap_or(0);
        assert!(at_site >= 5, "enough rollups to mean something: {at_site}");
        assert_eq!(
            at_central, at_site,
            "device {}: central {at_central} vs appliance {at_site}",
            g.device_id
        );
    }
    assert_eq!(b.metric("outpost_central_rollups_replaced_total"), 0.0);
}
