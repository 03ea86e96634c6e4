//! Router- and store-level tests of files from central
//! (`/api/v1/files`, [`crate::files`]) on both backends: a push's upload is
//! stored content-addressed with its record and command; the refusals
//! (413, 403, 404, 409); the blob collector over real files.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, header};
use outpost_proto::SiteId;
use serde_json::Value;
use tower::ServiceExt;

use crate::Central;
use crate::model::Role;

crate::testing::on_both_backends!(
    a_push_is_stored_with_its_record_and_command_and_refusals_are_413_403_404_409,
    the_collector_keeps_open_and_recent_transfers_and_deletes_the_rest_with_their_records,
    the_list_shows_the_callers_transfers_newest_first_filtered_and_nobody_elses,
    a_cancelled_push_is_cancelled_and_stops_streaming_and_cancel_is_403_for_viewers_404_elsewhere,
);

/// The device of `testing::sample_batch`.
const DEVICE: &str = "000000000000002a";
const DAY: u64 = 24 * 3600 * 1000;

struct F {
    c: Arc<Central>,
    site: SiteId,
    dir: tempfile::TempDir,
}

async fn fixture() -> F {
    let limits = crate::CentralLimits {
        files: crate::files::FilesConfig {
            max_bytes: 1000,
            retention_ms: DAY,
        },
        ..Default::default()
    };
    let (c, site, dir) = crate::testing::central_with_site(limits).await;
    c.store
        .apply_batch(
            &"msp".into(),
            &site,
            crate::testing::batch_of(&site, 1),
            crate::now_ms(),
        )
        .await
        .unwrap();
    let blobs = outpost_storage::blobs::Blobs::open(&dir.path().join("files")).unwrap();
    let _ = c.blobs.set(Arc::new(blobs));
    F { c, site, dir }
}

impl F {
    async fn token(&self, tenant: &str, role: Role) -> String {
        self.token_for(tenant, role, &[]).await
    }

    async fn token_for(&self, tenant: &str, role: Role, customers: &[&str]) -> String {
        crate::testing::token(&self.c, tenant, role, customers).await
    }

    async fn call(
        &self,
        token: &str,
        method: &str,
        uri: &str,
        body: Option<Vec<u8>>,
        length: Option<u64>,
    ) -> (u16, Value) {
        let mut req = Request::builder()
            .method(method)
            .uri(uri)
            .header(header::AUTHORIZATION, format!("Bearer {token}"));
        if body.is_some() && !uri.contains("/files/push") {
            req = req.header(header::CONTENT_TYPE, "application/json");
        }
        if let Some(n) = length {
            req = req.header(header::CONTENT_LENGTH, n.to_string());
        }
        let body = body.map(Body::from).unwrap_or_else(Body::empty);
        let resp = crate::api::router(self.c.clone())
            .oneshot(req.body(body).unwrap())
            .await
            .unwrap();
        let st = resp.status().as_u16();
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap();
        (st, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
    }

    fn push_uri(&self) -> String {
        format!(
            "/api/v1/files/push?site={}&device={DEVICE}&path=/etc/app.conf&mode=0640",
            self.site
        )
    }

    async fn push(&self, token: &str, body: &[u8]) -> (u16, Value) {
        self.call(token, "POST", &self.push_uri(), Some(body.to_vec()), None)
            .await
    }
}

fn sha(b: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(b))
}

async fn a_push_is_stored_with_its_record_and_command_and_refusals_are_413_403_404_409() {
    let f = fixture().await;
    let tech = f.token("msp", Role::Technician).await;
    let viewer = f.token("msp", Role::Viewer).await;
    let zeta = f.token("zeta", Role::Admin).await;

    let (st, v) = f.push(&tech, b"listen 80;\n").await;
    assert_eq!(st, 201, "{v}");
    assert_eq!(v["direction"], "push");
    assert_eq!(v["mode"], "0640");
    assert_eq!(v["sha256"], sha(b"listen 80;\n"));
    assert_eq!(v["state"], "queued_at_central");
    assert_eq!(v["content_available"], true);
    let id = v["id"].as_str().unwrap().to_string();
    // The content is stored under its hash; the command carries the push.
    let blob =
        f.c.blobs
            .get()
            .unwrap()
            .path(&outpost_proto::transfer::parse_sha(v["sha256"].as_str().unwrap()).unwrap());
    assert_eq!(std::fs::read(&blob).unwrap(), b"listen 80;\n");
    let (st, cmd) = f
        .call(
            &viewer,
            "GET",
            &format!("/api/v1/commands/{}", v["command"].as_str().unwrap()),
            None,
            None,
        )
        .await;
    assert_eq!(st, 200, "{cmd}");
    let spec = &cmd["spec"]["kind"]["builtin"]["push_file"];
    assert_eq!(spec["transfer"], id.as_str(), "{cmd}");
    assert_eq!(spec["size_bytes"], 11, "{cmd}");
    // A viewer reads it; another tenant does not see it.
    let (st, v) = f
        .call(&viewer, "GET", &format!("/api/v1/files/{id}"), None, None)
        .await;
    assert_eq!((st, v["id"].as_str()), (200, Some(id.as_str())));
    let (st, _) = f
        .call(&zeta, "GET", &format!("/api/v1/files/{id}"), None, None)
        .await;
    assert_eq!(st, 404);
    let (st, _) = f
        .call(
            &zeta,
            "GET",
            &format!("/api/v1/files/{id}/content"),
            None,
            None,
        )
        .await;
    assert_eq!(st, 404);
    let (st, _) = f.push(&zeta, b"x").await;
    assert_eq!(st, 404);
    // A viewer may not transfer, nor read what was transferred.
    let (st, _) = f.push(&viewer, b"x").await;
    assert_eq!(st, 403);
    let (st, v) = f
        .call(
            &viewer,
            "GET",
            &format!("/api/v1/files/{id}/content"),
            None,
            None,
        )
        .await;
    assert_eq!(st, 403, "{v}");
    // Over the limit: by Content-Length before the body, or as it streams.
    let (st, v) = f
        .call(&tech, "POST", &f.push_uri(), Some(vec![0; 10]), Some(5000))
        .await;
    assert_eq!(st, 413, "{v}");
    let (st, v) = f.push(&tech, &[7u8; 1001]).await;
    assert_eq!(st, 413, "{v}");
    assert!(!f.c.blobs.get().unwrap().has(&{
        use sha2::Digest;
        sha2::Sha256::digest([7u8; 1001]).into()
    }));
    // A pull's content is not there until the site sent it.
    let body = serde_json::json!({"site": f.site, "device": DEVICE, "path": "/var/log/syslog"});
    let (st, v) = f
        .call(
            &tech,
            "POST",
            "/api/v1/files/pull",
            Some(body.to_string().into_bytes()),
            None,
        )
        .await;
    assert_eq!(st, 201, "{v}");
    assert_eq!(v["content_available"], false);
    let (st, _) = f
        .call(
            &tech,
            "GET",
            &format!("/api/v1/files/{}/content", v["id"].as_str().unwrap()),
            None,
            None,
        )
        .await;
    assert_eq!(st, 409);
    // A connected site below protocol 7: 409 naming it.
    let (_conn, _rx) = f.c.downlinks.register(&"msp".into(), &f.site, 6);
    let (st, v) = f.push(&tech, b"x").await;
    assert_eq!(st, 409, "{v}");
    let msg = v["error"].as_str().unwrap_or_default();
    assert!(
        msg.contains(f.site.as_str()) && msg.contains("protocol 6"),
        "{v}"
    );
}

async fn the_collector_keeps_open_and_recent_transfers_and_deletes_the_rest_with_their_records() {
    let f = fixture().await;
    let tech = f.token("msp", Role::Technician).await;
    let b = f.c.blobs.get().unwrap().clone();
    let (st, open) = f.push(&tech, b"open transfer").await;
    assert_eq!(st, 201);
    let (st, ended) = f.push(&tech, b"ended transfer").await;
    assert_eq!(st, 201);
    // End the second: cancelled while still queued at central (closed).
    let (st, v) = f
        .call(
            &tech,
            "POST",
            &format!(
                "/api/v1/commands/{}/cancel",
                ended["command"].as_str().unwrap()
            ),
            None,
            None,
        )
        .await;
    assert_eq!(st, 200, "{v}");
    // A blob no transfer names (an upload whose record never came).
    let stray = {
        let tmp = f.dir.path().join("stray");
        std::fs::write(&tmp, b"stray").unwrap();
        b.store_from(&tmp, 0, None).unwrap().unwrap().0
    };
    let sha_of =
        |v: &Value| outpost_proto::transfer::parse_sha(v["sha256"].as_str().unwrap()).unwrap();
    let now = crate::now_ms();
    // Now: everything is younger than the grace or within retention.
    let r = crate::files::collect(&f.c, now).await.unwrap();
    assert_eq!((r.collected, r.records_deleted), (0, 0), "{r:?}");
    // Two days on: the ended transfer and the stray blob go; the open one stays.
    let r = crate::files::collect(&f.c, now + 2 * DAY).await.unwrap();
    assert_eq!((r.collected, r.records_deleted), (2, 1), "{r:?}");
    assert!(b.has(&sha_of(&open)));
    assert!(!b.has(&sha_of(&ended)));
    assert!(!b.has(&stray));
    let tid = |v: &Value| v["id"].as_str().unwrap().parse().unwrap();
    let t = outpost_proto::TenantId::from("msp");
    assert!(f.c.store.file(&t, tid(&open)).await.unwrap().is_some());
    assert!(f.c.store.file(&t, tid(&ended)).await.unwrap().is_none());
    assert_eq!(f.c.store.all_files().await.unwrap().len(), 1);
    assert!(f.c.metrics.files.blobs_collected.get() >= 2, "counted");
}

fn ids(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("not a list: {v}"))
        .iter()
        .map(|x| x["id"].as_str().unwrap().to_string())
        .collect()
}

async fn the_list_shows_the_callers_transfers_newest_first_filtered_and_nobody_elses() {
    let f = fixture().await;
    let tech = f.token("msp", Role::Technician).await;
    let viewer = f.token("msp", Role::Viewer).await;
    let dental = f.token_for("msp", Role::Viewer, &["dental"]).await;
    let other_customer = f.token_for("msp", Role::Admin, &["bakery"]).await;
    let zeta = f.token("zeta", Role::Admin).await;

    let (st, a) = f.push(&tech, b"one").await;
    assert_eq!(st, 201, "{a}");
    let body = serde_json::json!({"site": f.site, "device": DEVICE, "path": "/var/log/syslog"});
    let (st, b) = f
        .call(
            &tech,
            "POST",
            "/api/v1/files/pull",
            Some(body.to_string().into_bytes()),
            None,
        )
        .await;
    assert_eq!(st, 201, "{b}");
    let (a, b) = (
        a["id"].as_str().unwrap().to_string(),
        b["id"].as_str().unwrap().to_string(),
    );
    // Records of another tenant, another customer and another device,
    // stored beside them (their commands are not stored: no state).
    let rec = |id: &str| {
        let c = f.c.clone();
        let id: outpost_proto::ids::TransferId = id.parse().unwrap();
        async move { c.store.file(&"msp".into(), id).await.unwrap().unwrap() }
    };
    let mut base = rec(&a).await;
    base.command = outpost_proto::ids::CommandId::random();
    let newer = base.created_ms + 10_000;
    let mut theirs = base.clone();
    theirs.id = outpost_proto::ids::TransferId::random();
    theirs.tenant = "zeta".into();
    theirs.created_ms = newer;
    f.c.store.put_file(&theirs).await.unwrap();
    let mut bakery = base.clone();
    bakery.id = outpost_proto::ids::TransferId::random();
    bakery.customer = "bakery".into();
    bakery.created_ms = newer + 1;
    f.c.store.put_file(&bakery).await.unwrap();
    let mut other_dev = base.clone();
    other_dev.id = outpost_proto::ids::TransferId::random();
    other_dev.device = "00000000000000ff".into();
    other_dev.created_ms = base.created_ms.saturating_sub(10_000);
    f.c.store.put_file(&other_dev).await.unwrap();
    let other_dev = other_dev.id.to_string();

    // A viewer lists the tenant's transfers, newest first (the pull was
    // made after the push); the other tenant's is not there.
    let (st, v) = f.call(&viewer, "GET", "/api/v1/files", None, None).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(
        ids(&v),
        [
            bakery.id.to_string(),
            b.clone(),
            a.clone(),
            other_dev.clone()
        ]
    );
    assert_eq!(v[1]["direction"], "pull");
    assert_eq!(v[1]["state"], "queued_at_central");
    // Customer scope: dental's token does not see bakery's; bakery's sees
    // only bakery's (and its site filter on dental's site is 404).
    let (_, v) = f.call(&dental, "GET", "/api/v1/files", None, None).await;
    assert_eq!(ids(&v), [b.clone(), a.clone(), other_dev.clone()]);
    let (_, v) = f
        .call(&other_customer, "GET", "/api/v1/files", None, None)
        .await;
    assert_eq!(ids(&v), [bakery.id.to_string()]);
    let (st, _) = f
        .call(
            &other_customer,
            "GET",
            &format!("/api/v1/files?site={}", f.site),
            None,
            None,
        )
        .await;
    assert_eq!(st, 404);
    // Another tenant lists its own only; msp's site is 404 to it.
    let (_, v) = f.call(&zeta, "GET", "/api/v1/files", None, None).await;
    assert_eq!(ids(&v), [theirs.id.to_string()]);
    let (st, _) = f
        .call(
            &zeta,
            "GET",
            &format!("/api/v1/files?site={}", f.site),
            None,
            None,
        )
        .await;
    assert_eq!(st, 404);
    // Filters: device, site, state, limit, before_ms.
    let (_, v) = f
        .call(
            &dental,
            "GET",
            &format!("/api/v1/files?site={}&device={DEVICE}", f.site),
            None,
            None,
        )
        .await;
    assert_eq!(ids(&v), [b.clone(), a.clone()]);
    let (_, v) = f
        .call(
            &dental,
            "GET",
            "/api/v1/files?device=00000000000000ff",
            None,
            None,
        )
        .await;
    assert_eq!(ids(&v), vec![other_dev.clone()]);
    let (_, v) = f
        .call(
            &viewer,
            "GET",
            "/api/v1/files?state=queued_at_central&limit=1",
            None,
            None,
        )
        .await;
    assert_eq!(ids(&v), vec![b.clone()], "the newest with a queued command");
    let (_, v) = f
        .call(
            &viewer,
            "GET",
            "/api/v1/files?state=queued_at_central",
            None,
            None,
        )
        .await;
    assert_eq!(ids(&v), [b.clone(), a.clone()]);
    let (_, v) = f
        .call(&viewer, "GET", "/api/v1/files?state=completed", None, None)
        .await;
    assert_eq!(ids(&v), Vec::<String>::new());
    let (_, v) = f
        .call(&viewer, "GET", "/api/v1/files?limit=2", None, None)
        .await;
    assert_eq!(ids(&v), [bakery.id.to_string(), b.clone()]);
    let (_, v) = f
        .call(
            &viewer,
            "GET",
            &format!("/api/v1/files?before_ms={}", base.created_ms),
            None,
            None,
        )
        .await;
    assert_eq!(ids(&v), vec![other_dev.clone()]);
    let (st, _) = f
        .call(&viewer, "GET", "/api/v1/files?state=bogus", None, None)
        .await;
    assert_eq!(st, 400);
}

async fn a_cancelled_push_is_cancelled_and_stops_streaming_and_cancel_is_403_for_viewers_404_elsewhere()
 {
    use outpost_uplink::files::UpFileAck;
    use outpost_uplink::wire::CentralFrame;

    let f = fixture().await;
    let tech = f.token("msp", Role::Technician).await;
    let viewer = f.token("msp", Role::Viewer).await;
    let zeta = f.token("zeta", Role::Admin).await;
    let (st, v) = f.push(&tech, &[5u8; 900]).await;
    assert_eq!(st, 201, "{v}");
    let id = v["id"].as_str().unwrap().to_string();
    let t: outpost_proto::ids::TransferId = id.parse().unwrap();
    let cmd: outpost_proto::ids::CommandId = v["command"].as_str().unwrap().parse().unwrap();
    // The site answered the push's command with what it holds (nothing):
    // central streams the content from there.
    let mut link = crate::files::SiteFiles::new(&f.c, &"msp".into(), &f.site);
    assert!(
        link.on_ack(UpFileAck {
            transfer: t,
            up_to: 0
        })
        .await
        .is_empty()
    );
    // Refusals first: a viewer 403, another tenant (or no such id) 404.
    let cancel = format!("/api/v1/files/{id}/cancel");
    let (st, _) = f.call(&viewer, "POST", &cancel, None, None).await;
    assert_eq!(st, 403);
    let (st, _) = f.call(&zeta, "POST", &cancel, None, None).await;
    assert_eq!(st, 404);
    let (st, _) = f
        .call(&tech, "POST", "/api/v1/files/not-an-id/cancel", None, None)
        .await;
    assert_eq!(st, 404);
    // The technician cancels: the command never reached the site, so it is
    // cancelled at once.
    let (st, v) = f.call(&tech, "POST", &cancel, None, None).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["state"], "cancelled", "{v}");
    let (_, cv) = f
        .call(
            &viewer,
            "GET",
            &format!("/api/v1/commands/{cmd}"),
            None,
            None,
        )
        .await;
    assert_eq!(cv["state"], "cancelled", "{cv}");
    // The connection hears of the cancel: the site is told to drop the
    // partial content and no chunk follows.
    match link.on_cancel(cmd, "tech@central") {
        Some(CentralFrame::FileAbort(a)) => {
            assert_eq!(a.transfer, t);
            assert!(a.reason.contains("cancelled"), "{}", a.reason);
        }
        other => panic!("expected a FileAbort, got {other:?}"),
    }
    assert!(link.poll_chunk().is_none(), "no chunk after the cancel");
    assert!(link.on_cancel(cmd, "tech@central").is_none(), "once");
    // After a reconnect the site acknowledges again: central does not
    // stream a cancelled push, it tells the site to give it up.
    let mut again = crate::files::SiteFiles::new(&f.c, &"msp".into(), &f.site);
    let answers = again
        .on_ack(UpFileAck {
            transfer: t,
            up_to: 100,
        })
        .await;
    assert!(
        matches!(answers.as_slice(), [CentralFrame::FileAbort(a)] if a.transfer == t),
        "{answers:?}"
    );
    assert!(again.poll_chunk().is_none());
    // A second cancel: the command is closed already (409).
    let (st, _) = f.call(&tech, "POST", &cancel, None, None).await;
    assert_eq!(st, 409);
    assert_eq!(f.c.metrics.files.cancelled.get(), 2);
}
