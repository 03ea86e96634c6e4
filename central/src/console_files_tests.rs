//! The console's file-transfer pages at central, router-level (tower
//! `oneshot`, no socket), on both backends: the list with its state
//! filter and one transfer's page show what `GET /api/v1/files` says (site
//! name, hostname, size, state); a technician cancels from the page
//! through the API's path; a viewer sees no button and its forged POST is
//! refused; another tenant gets 404 and an empty list.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, header};
use serde_json::Value;
use tower::ServiceExt;

use crate::Central;
use crate::model::Role;

crate::testing::on_both_backends!(
    the_files_pages_list_filter_and_show_transfers_and_technicians_cancel_from_the_page_viewers_cannot,
);

const DEVICE: &str = "000000000000002a";

struct F {
    c: Arc<Central>,
    site: outpost_proto::SiteId,
    _dir: tempfile::TempDir,
}

async fn fixture() -> F {
    let (c, site, dir) = crate::testing::central_with_site(Default::default()).await;
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
    F { c, site, _dir: dir }
}

impl F {
    async fn send(
        &self,
        token: &str,
        method: &str,
        uri: &str,
        body: Vec<u8>,
        form: bool,
    ) -> (u16, String) {
        let mut req = Request::builder()
            .method(method)
            .uri(uri)
            .header(header::AUTHORIZATION, format!("Bearer {token}"));
        if form {
            req = req.header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
        }
        let resp = crate::api::router(self.c.clone())
            .oneshot(req.body(Body::from(body)).unwrap())
            .await
            .unwrap();
        let st = resp.status().as_u16();
        let b = axum::body::to_bytes(resp.into_body(), 1 << 22)
            .await
            .unwrap();
        (st, String::from_utf8_lossy(&b).into_owned())
    }

    async fn get(&self, token: &str, uri: &str) -> (u16, String) {
        self.send(token, "GET", uri, vec![], false).await
    }

    async fn api(&self, token: &str, uri: &str) -> Value {
        let (st, b) = self.get(token, uri).await;
        assert_eq!(st, 200, "{b}");
        serde_json::from_str(&b).unwrap()
    }

    async fn push(&self, token: &str, path: &str, body: &[u8]) -> String {
        let uri = format!(
            "/api/v1/files/push?site={}&device={DEVICE}&path={path}",
            self.site
        );
        let (st, b) = self.send(token, "POST", &uri, body.to_vec(), false).await;
        assert_eq!(st, 201, "{b}");
        let v: Value = serde_json::from_str(&b).unwrap();
        v["id"].as_str().unwrap().to_string()
    }
}

fn csrf_in(page: &str) -> String {
    page.split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .unwrap_or_default()
        .to_string()
}

async fn the_files_pages_list_filter_and_show_transfers_and_technicians_cancel_from_the_page_viewers_cannot()
 {
    let f = fixture().await;
    let tech = crate::testing::token(&f.c, "msp", Role::Technician, &[]).await;
    let viewer = crate::testing::token(&f.c, "msp", Role::Viewer, &[]).await;
    let zeta = crate::testing::token(&f.c, "zeta", Role::Admin, &[]).await;
    let a = f.push(&tech, "/etc/a.conf", &[b'a'; 2048]).await;
    let b = f.push(&tech, "/etc/b.conf", b"b\n").await;

    // The list: both, newest first, with the hostname and a human size,
    // as many rows as the API lists.
    let (st, list) = f.get(&viewer, "/files").await;
    assert_eq!(st, 200, "{list}");
    let api = f.api(&viewer, "/api/v1/files").await;
    assert_eq!(
        list.matches("<tr data-file=").count(),
        api.as_array().unwrap().len(),
        "{list}"
    );
    let (pa, pb) = (
        list.find(&format!("data-file=\"{a}\"")).expect("a listed"),
        list.find(&format!("data-file=\"{b}\"")).expect("b listed"),
    );
    assert!(pb < pa, "newest first: {list}");
    assert!(
        list.contains("web-1") && list.contains("2.0 KiB") && list.contains("/etc/a.conf"),
        "{list}"
    );
    assert!(list.contains("data-state=\"queued_at_central\""), "{list}");
    // The state filter: nothing completed; an unknown state is 400.
    let (st, done) = f.get(&viewer, "/files?state=completed").await;
    assert_eq!(st, 200);
    assert!(
        done.contains("id=\"no-files\"") && !done.contains(&a),
        "{done}"
    );
    assert_eq!(f.get(&viewer, "/files?state=bogus").await.0, 400);
    // The commands list links here.
    let (_, cmds) = f.get(&viewer, "/commands").await;
    assert!(cmds.contains("id=\"files-link\""), "{cmds}");

    // One transfer: the viewer sees it without a button; its forged POST
    // (its own valid token) is refused and nothing changes.
    let uri = format!("/files/{a}");
    let (st, page) = f.get(&viewer, &uri).await;
    assert_eq!(st, 200, "{page}");
    assert!(
        page.contains("data-field=\"size\"")
            && page.contains("2.0 KiB")
            && page.contains("/etc/a.conf"),
        "{page}"
    );
    assert!(!page.contains("cancel-file"), "{page}");
    let token = csrf_in(&page);
    let (st, _) = f
        .send(
            &viewer,
            "POST",
            &format!("{uri}/cancel"),
            format!("csrf={token}").into_bytes(),
            true,
        )
        .await;
    assert_eq!(st, 403);
    let v = f.api(&viewer, &format!("/api/v1/files/{a}")).await;
    assert_eq!(v["state"], "queued_at_central", "{v}");

    // The technician: the button, a POST without the token refused, then
    // the cancel through the API's path.
    let (_, page) = f.get(&tech, &uri).await;
    assert!(page.contains("id=\"cancel-file\""), "{page}");
    let (st, _) = f
        .send(&tech, "POST", &format!("{uri}/cancel"), b"".to_vec(), true)
        .await;
    assert_eq!(st, 403, "no csrf token");
    let token = csrf_in(&page);
    let (st, _) = f
        .send(
            &tech,
            "POST",
            &format!("{uri}/cancel"),
            format!("csrf={token}").into_bytes(),
            true,
        )
        .await;
    assert_eq!(st, 303);
    let v = f.api(&viewer, &format!("/api/v1/files/{a}")).await;
    assert_eq!(v["state"], "cancelled", "{v}");
    let (_, page) = f.get(&tech, &uri).await;
    assert!(
        page.contains("data-state=\"cancelled\"") && !page.contains("cancel-file"),
        "{page}"
    );
    let (_, cancelled) = f.get(&viewer, "/files?state=cancelled").await;
    assert!(
        cancelled.contains(&format!("data-file=\"{a}\""))
            && !cancelled.contains(&format!("data-file=\"{b}\"")),
        "{cancelled}"
    );

    // Another tenant: 404 and an empty list.
    assert_eq!(f.get(&zeta, &uri).await.0, 404);
    let (_, zl) = f.get(&zeta, "/files").await;
    assert!(zl.contains("no-files") && !zl.contains(&b), "{zl}");
}
