//! Two `outpost-central` processes over one PostgreSQL (issue 16): a site
//! listing both fails over from one to the other mid-stream and every
//! rollup arrives once.

use std::time::Duration;

use outpost_tests::*;

use crate::uplink::{Central, appliance_rollups, fast_config, join, uplink_status};

/// Once the agents stopped: waits until the appliance closed the last
/// rollup bucket holding their samples (after the newest `last_seen_ms`
/// of their devices: the 2 s bucket, its 500 ms settle time and a 1 s
/// uplink interval of [`fast_config`]), then until every batch sealed
/// since is acknowledged.
pub(crate) fn wait_for_last_rollups(app: &Appliance, agents: &[Agent]) {
    let last_seen = agents
        .iter()
        .filter_map(|g| app.device(&g.device_id)["last_seen_ms"].as_u64())
        .max()
        .unwrap_or(0);
    let sealed_by = (last_seen / 2_000 + 1) * 2_000 + 500 + 2 * 1_000;
    wait_for(Duration::from_secs(30), "the last buckets closed", || {
        (outpost_central::now_ms() > sealed_by).then_some(())
    });
    wait_for(
        Duration::from_secs(60),
        "every sealed batch acknowledged",
        || {
            let st = uplink_status(app);
            (st["backlog_batches"] == 0
                && st["next_seq"].as_u64()? == st["last_acked_seq"].as_u64()? + 1)
                .then_some(())
        },
    );
}

/// After [`wait_for_last_rollups`]: stops the appliance, then checks that
/// every rollup it holds is at central once (read through `central`, any
/// instance) and that central applied each batch the site sent exactly
/// once: the site row's `batches_applied` and `applied_up_to` are the
/// site's last acknowledged sequence number.
pub(crate) fn stop_and_check_every_batch_applied_once(
    central: &Central,
    app: &mut Appliance,
    site: &str,
    agents: &[Agent],
    token: &str,
) {
    let acked = uplink_status(app)["last_acked_seq"]
        .as_u64()
        .expect("last_acked_seq");
    assert!(acked >= 5, "enough batches to mean something: {acked}");
    app.stop();
    let local = appliance_rollups(&app.dir);
    let devs = central.get(&format!("/api/v1/devices?site={site}"), token);
    for g in agents {
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
    let s = central.get(&format!("/api/v1/sites/{site}"), token);
    // `acked` was read before the stop: a batch the site sealed after that
    // (its uplink sends one per interval) can have been applied at central
    // with its acknowledgement still on the way when the site stopped. The
    // site sends it again after a restart and central skips it.
    let applied = s["applied_up_to"].as_u64().expect("applied_up_to");
    assert!(applied >= acked, "every acknowledged batch applied: {s}");
    assert_eq!(
        s["batches_applied"].as_u64(),
        Some(applied),
        "every batch the site sent applied once, none skipped: {s}"
    );
    assert_eq!(s["dead_lettered"].as_u64().unwrap_or(0), 0, "{s}");
}

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
    wait_for_last_rollups(&app, &agents);
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

/// PostgreSQL is killed (`pg_ctl stop -m immediate`) while a site streams
/// batches through a real `outpost-central` process, and started again a
/// while later: central answers 503 meanwhile (`/healthz` with the
/// reason, the API with a JSON message), refuses the batches instead of
/// acknowledging them (the site keeps them in its outbox), recovers by
/// itself when the database is back, and every rollup the site holds is
/// at central once.
#[test]
fn postgresql_killed_and_restarted_under_load_loses_no_acknowledged_batch_and_central_recovers_by_itself()
 {
    use outpost_central::pg::cluster::TestCluster;
    let Some(pg) = TestCluster::own_or_skip("central-pg-killed") else {
        return;
    };
    let db = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(pg.create_database());
    let url = pg.postgres_url(&db);
    let tmp = scratch("central-pg-killed");
    let root = tmp.path();
    let central = Central::start_with(
        root,
        &[
            "--store",
            &url,
            "--store-pool-wait-ms",
            "500",
            "--store-statement-timeout-ms",
            "5000",
        ],
    );
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
    let healthz = || http_request(central.http, "GET", "/healthz", None, None).ok();
    assert_eq!(healthz().map(|h| h.0), Some(200));

    pg.stop_immediately();
    let (st, reason) = wait_for(Duration::from_secs(15), "healthz 503", || {
        healthz().filter(|(st, _)| *st == 503)
    });
    assert_eq!(st, 503);
    assert!(reason.contains("central storage unavailable"), "{reason}");
    let started = std::time::Instant::now();
    let (st, body) = http_request(central.http, "GET", &devices, Some(&viewer), None).unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the API did not hang"
    );
    assert_eq!(st, 503, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("a JSON error");
    assert!(
        v["error"]
            .as_str()
            .unwrap_or_default()
            .starts_with("central storage unavailable"),
        "{v}"
    );
    // The site goes on sealing batches; none is acknowledged meanwhile.
    wait_for(
        Duration::from_secs(60),
        "batches waiting in the outbox",
        || (uplink_status(&app)["backlog_batches"].as_u64()? >= 2).then_some(()),
    );
    let applied_while_down = central.metric("outpost_central_batches_applied_total");
    assert!(central.metric("outpost_central_store_errors_total{reason=\"unavailable\"}") > 0.0);

    pg.restart();
    wait_for(Duration::from_secs(30), "healthz 200 again", || {
        healthz().filter(|(st, _)| *st == 200)
    });
    wait_for(Duration::from_secs(30), "the API answering again", || {
        http_request(central.http, "GET", &devices, Some(&viewer), None)
            .ok()
            .filter(|(st, _)| *st == 200)
    });
    wait_for(Duration::from_secs(60), "batches applied again", || {
        (central.metric("outpost_central_batches_applied_total") > applied_while_down).then_some(())
    });
    for g in &mut agents {
        g.stop();
    }
    wait_for_last_rollups(&app, &agents);
    app.stop();
    let local = appliance_rollups(&app.dir);
    let devs = central.get(&devices, &viewer);
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
    assert_eq!(
        central.metric("outpost_central_rollups_replaced_total"),
        0.0
    );
}

/// Two `outpost-central` processes over one PostgreSQL, the site
/// streaming to B: a web session made on A works on B, and a command
/// created through A's API is delivered through B (NOTIFY) and runs.
#[test]
fn a_session_made_on_one_process_works_on_the_other_and_a_command_created_on_a_is_delivered_through_b()
 {
    use outpost_central::pg::cluster::TestCluster;
    use serde_json::json;
    let Some(pg) = TestCluster::shared_or_skip("central-pg-two-processes") else {
        return;
    };
    let db = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(pg.create_database());
    let url = pg.postgres_url(&db);
    let tmp = scratch("central-pg-two");
    let root = tmp.path();
    let (ra, rb) = (root.join("a"), root.join("b"));
    std::fs::create_dir_all(&ra).unwrap();
    let a = Central::start_with(&ra, &["--store", &url]);
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

    // A session made on A works on B.
    let admin = a.api_token("acme", "admin");
    let (st, v) = http_request(
        a.http,
        "POST",
        "/api/v1/users",
        Some(&admin),
        Some(
            &json!({"name": "alice", "role": "technician", "password": "correct horse"})
                .to_string(),
        ),
    )
    .unwrap();
    assert_eq!(st, 201, "{v}");
    let (st, head, body) = http_raw(
        a.http,
        "POST",
        "/api/v1/login",
        &[("Content-Type", "application/json")],
        &json!({"tenant": "acme", "username": "alice", "password": "correct horse"}).to_string(),
    );
    assert_eq!(st, 200, "{body}");
    let cookie = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("set-cookie")
                .then(|| v.trim().split(';').next().unwrap_or("").to_string())
        })
        .expect("a session cookie");
    let (st, _, me) = http_raw(b.http, "GET", "/api/v1/me", &[("Cookie", &cookie)], "");
    assert_eq!(st, 200, "{me}");
    assert!(me.contains("alice"), "{me}");

    // The site joins through A and streams to B.
    let (token, fp) = a.site_add("acme", "dental", "branch");
    let cfg = fast_config(root, &format!("central = [\"{}\"]\n", b.quic));
    let app = Appliance::start_with(root, &["--config", cfg.to_str().unwrap()]);
    let site = join(&app, &a, &token, &fp);
    let mut agent = Agent::enroll(root, "agent-a", &app);
    std::fs::write(
        agent.state.join("agent.toml"),
        "command_kill_grace = \"500ms\"\npackage_scan = false\n",
    )
    .unwrap();
    agent.start();
    wait_for(
        Duration::from_secs(60),
        "the device online through B",
        || {
            let v = b.get(&format!("/api/v1/devices?site={site}"), &admin);
            v["devices"]
                .as_array()?
                .iter()
                .any(|d| d["device"] == agent.device_id.as_str() && d["status"] == "online")
                .then_some(())
        },
    );
    assert!(b.metric("outpost_central_batches_applied_total") > 0.0);

    // A command created through A's API runs through B.
    let (st, v) = http_request(
        a.http,
        "POST",
        "/api/v1/commands",
        Some(&admin),
        Some(
            &json!({"site": site, "device": agent.device_id, "command": "echo via-b"}).to_string(),
        ),
    )
    .unwrap();
    assert_eq!(st, 201, "{v}");
    let id = serde_json::from_str::<serde_json::Value>(&v).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let done = wait_for(Duration::from_secs(60), "the command completed", || {
        let v = a.get(&format!("/api/v1/commands/{id}"), &admin);
        (v["closed"] == true).then_some(v)
    });
    assert_eq!(done["state"], "completed", "{done}");
    assert!(
        done["output"].as_str().unwrap_or("").contains("via-b"),
        "{done}"
    );
    assert!(
        b.metric("outpost_central_downlink_notices_total{reason=\"received\"}") >= 1.0,
        "B got the work by notice"
    );
}

/// Two processes A and B over one database, B with A's CA and keys
/// (README: copy them), in `root/a` and `root/b`.
fn two_centrals(root: &std::path::Path, url: &str) -> (Central, Central) {
    let (ra, rb) = (root.join("a"), root.join("b"));
    std::fs::create_dir_all(&ra).unwrap();
    let a = Central::start_with(&ra, &["--store", url]);
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
    let b = Central::start_with(&rb, &["--store", url]);
    (a, b)
}

/// The site lists A then B: A stops → the site goes on with B; A starts
/// again → after `central_fail_back` the site returns to A by itself; a
/// command created through B's API while the site is on A is delivered
/// (through A, by notice) and runs; every batch is applied once.
#[test]
fn a_site_fails_over_to_b_and_returns_to_a_after_central_fail_back_applying_every_batch_once() {
    use outpost_central::pg::cluster::TestCluster;
    use serde_json::json;
    let Some(pg) = TestCluster::shared_or_skip("central-pg-fail-back") else {
        return;
    };
    let db = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(pg.create_database());
    let url = pg.postgres_url(&db);
    let tmp = scratch("central-pg-fail-back");
    let root = tmp.path();
    let (mut a, b) = two_centrals(root, &url);
    let (token, fp) = a.site_add("acme", "dental", "branch");
    let cfg = fast_config(
        root,
        &format!(
            "central = [\"{}\", \"{}\"]\ncentral_fail_back = \"3s\"\n",
            a.quic, b.quic
        ),
    );
    let mut app = Appliance::start_with(root, &["--config", cfg.to_str().unwrap()]);
    let site = join(&app, &a, &token, &fp);
    let mut agents: Vec<Agent> = (0..2)
        .map(|i| Agent::enroll(root, &format!("agent-{i}"), &app))
        .collect();
    std::fs::write(
        agents[0].state.join("agent.toml"),
        "command_kill_grace = \"500ms\"\npackage_scan = false\n",
    )
    .unwrap();
    for g in &mut agents {
        g.start();
    }
    let admin = a.api_token("acme", "admin");
    let on = |c: &Central| c.metric("outpost_central_connections_active") == 1.0;
    wait_for(Duration::from_secs(60), "first rollups through A", || {
        let v = a.get(&format!("/api/v1/devices?site={site}"), &admin);
        (on(&a)
            && v["devices"]
                .as_array()?
                .iter()
                .filter(|d| d["rollups_stored"].as_u64().unwrap_or(0) > 0)
                .count()
                == 2)
            .then_some(())
    });

    // A stops: the site goes on with B.
    a.stop();
    wait_for(Duration::from_secs(30), "batches applied by B", || {
        (on(&b) && b.metric("outpost_central_batches_applied_total") > 0.0).then_some(())
    });
    // A is back: after 3 s on B the site returns to A.
    a.restart();
    wait_for(Duration::from_secs(60), "the site back on A", || {
        (on(&a) && !on(&b) && a.metric("outpost_central_batches_applied_total") > 0.0).then_some(())
    });

    // A command created through B while the site is on A; a console
    // page open on B sees it finish (the events A publishes reach B).
    let live_b = LiveStream::open(b.http, &admin);
    let (st, v) = http_request(
        b.http,
        "POST",
        "/api/v1/commands",
        Some(&admin),
        Some(
            &json!({"site": site, "device": agents[0].device_id, "command": "echo from-b"})
                .to_string(),
        ),
    )
    .unwrap();
    assert_eq!(st, 201, "{v}");
    let id = serde_json::from_str::<serde_json::Value>(&v).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let done = wait_for(Duration::from_secs(60), "the command completed", || {
        let v = b.get(&format!("/api/v1/commands/{id}"), &admin);
        (v["closed"] == true).then_some(v)
    });
    assert_eq!(done["state"], "completed", "{done}");
    assert!(
        done["output"].as_str().unwrap_or("").contains("from-b"),
        "{done}"
    );
    assert!(
        a.metric("outpost_central_downlink_notices_total{reason=\"received\"}") >= 1.0,
        "A got the work by notice"
    );
    assert!(on(&a), "still on A");
    wait_for(
        Duration::from_secs(30),
        "B's console stream shows the command finished",
        || {
            live_b
                .text()
                .lines()
                .any(|l| {
                    l.starts_with("data: ")
                        && l.contains(&format!("\"id\":\"{id}\""))
                        && l.contains("\"finished\":true")
                })
                .then_some(())
        },
    );
    assert!(
        b.metric("outpost_central_downlink_notices_total{reason=\"live_received\"}") >= 1.0,
        "B got the command's events from A"
    );
    drop(live_b);

    for g in &mut agents {
        g.stop();
    }
    wait_for_last_rollups(&app, &agents);
    stop_and_check_every_batch_applied_once(&a, &mut app, &site, &agents, &admin);
    assert_eq!(a.metric("outpost_central_rollups_replaced_total"), 0.0);
    assert_eq!(b.metric("outpost_central_rollups_replaced_total"), 0.0);
}

/// The console's event stream (`GET /console/live`) of one instance, read
/// by a thread into a buffer until dropped.
struct LiveStream {
    text: std::sync::Arc<std::sync::Mutex<String>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl LiveStream {
    fn open(addr: std::net::SocketAddr, token: &str) -> LiveStream {
        use std::io::{Read, Write};
        use std::sync::atomic::Ordering;
        let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        write!(
            s,
            "GET /console/live HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\r\n"
        )
        .unwrap();
        let text = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (t, st) = (text.clone(), stop.clone());
        let reader = std::thread::spawn(move || {
            let mut buf = [0u8; 8192];
            while !st.load(Ordering::Relaxed) {
                match s.read(&mut buf) {
                    Ok(0) => return,
                    Ok(n) => t
                        .lock()
                        .unwrap()
                        .push_str(&String::from_utf8_lossy(&buf[..n])),
                    Err(e)
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ) => {}
                    Err(_) => return,
                }
            }
        });
        let live = LiveStream {
            text,
            stop,
            reader: Some(reader),
        };
        wait_for(Duration::from_secs(10), "the event stream open", || {
            live.text().contains("text/event-stream").then_some(())
        });
        live
    }

    fn text(&self) -> String {
        self.text.lock().unwrap().clone()
    }
}

impl Drop for LiveStream {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }
}
