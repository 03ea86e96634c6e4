//! Router-level tests of central's HTTP API and web view (tower's
//! `oneshot`, no socket): every class of error answers `{"error": ...}`
//! naming what is wrong, page limits and cursors are checked, revoked
//! devices and tenant mismatches show.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, header};
use outpost_proto::{DeviceId, SiteId};
use outpost_uplink::batch::{self, ForeignTenant};
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use crate::Central;
use crate::dir::CentralDir;
use crate::model::Role;
use crate::ops;
use crate::rocks::RocksCentralStore;
use crate::testing::sample_batch;

struct Fixture {
    central: Arc<Central>,
    /// An admin API token of tenant `msp`.
    token: String,
    site: SiteId,
    _dir: tempfile::TempDir,
}

/// A central with tenant `msp`, one site (customer `dental`) and an admin
/// API token.
async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let keys = CentralDir(dir.path().join("central"))
        .init_or_load()
        .unwrap();
    let store = RocksCentralStore::open(&dir.path().join("db")).unwrap();
    let central = Arc::new(Central::new(
        Arc::new(store),
        keys,
        CancellationToken::new(),
    ));
    let site = ops::add_site(
        central.store.as_ref(),
        &ops::AddSite {
            tenant: "msp".into(),
            customer: "dental".into(),
            site: "main".into(),
        },
        1,
    )
    .await
    .unwrap()
    .site_id;
    let token = ops::create_token(
        central.store.as_ref(),
        &ops::CreateToken {
            tenant: "msp".into(),
            role: Role::Admin,
            customers: vec![],
        },
        1,
    )
    .await
    .unwrap();
    Fixture {
        central,
        token,
        site,
        _dir: dir,
    }
}

impl Fixture {
    /// One request: (status, content type, body).
    async fn send(
        &self,
        method: &str,
        uri: &str,
        content_type: Option<&str>,
        body: &str,
        auth: bool,
    ) -> (u16, String, String) {
        let mut req = Request::builder().method(method).uri(uri);
        if let Some(ct) = content_type {
            req = req.header(header::CONTENT_TYPE, ct);
        }
        if auth {
            req = req.header(header::AUTHORIZATION, format!("Bearer {}", self.token));
        }
        let req = req.body(Body::from(body.to_string())).unwrap();
        let resp = crate::api::router(self.central.clone())
            .oneshot(req)
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let ct = resp
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap();
        (status, ct, String::from_utf8_lossy(&bytes).into_owned())
    }

    /// A request expected to fail: (status, the `error` message).
    async fn error(
        &self,
        method: &str,
        uri: &str,
        content_type: Option<&str>,
        body: &str,
        auth: bool,
    ) -> (u16, String) {
        let (status, ct, body) = self.send(method, uri, content_type, body, auth).await;
        assert_eq!(ct, "application/json", "{method} {uri}: {status} {body}");
        let v: Value = serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("{method} {uri}: {status} not JSON ({e}): {body}"));
        assert_eq!(v.as_object().map(|o| o.len()), Some(1), "{v}");
        let m = v["error"]
            .as_str()
            .unwrap_or_else(|| panic!("{method} {uri}: {v}"))
            .to_string();
        (status, m)
    }

    async fn get_json(&self, uri: &str) -> Value {
        let (status, _, body) = self.send("GET", uri, None, "", true).await;
        assert_eq!(status, 200, "{uri}: {body}");
        serde_json::from_str(&body).unwrap()
    }
}

const JSON: Option<&str> = Some("application/json");
const FORM: Option<&str> = Some("application/x-www-form-urlencoded");

#[tokio::test]
async fn every_error_of_login_and_the_login_form_is_json_naming_the_field() {
    let f = fixture().await;
    for path in ["/api/v1/login", "/login"] {
        let ct = if path == "/login" { FORM } else { JSON };
        // A missing field.
        let body = if path == "/login" {
            "tenant=msp&username=ops"
        } else {
            r#"{"tenant":"msp","username":"ops"}"#
        };
        let (st, m) = f.error("POST", path, ct, body, false).await;
        assert_eq!(st, 400, "{path}: {m}");
        assert!(m.contains("missing field `password`"), "{path}: {m}");
        // No Content-Type.
        let (st, m) = f.error("POST", path, None, body, false).await;
        assert_eq!(st, 415, "{path}: {m}");
        assert!(m.contains("Content-Type"), "{path}: {m}");
    }
    // Malformed JSON, a wrong type.
    let (st, m) = f.error("POST", "/api/v1/login", JSON, "{nope", false).await;
    assert_eq!(st, 400, "{m}");
    assert!(m.starts_with("malformed JSON body"), "{m}");
    let (st, m) = f
        .error(
            "POST",
            "/api/v1/login",
            JSON,
            r#"{"tenant":"msp","username":7,"password":"x"}"#,
            false,
        )
        .await;
    assert_eq!(st, 400, "{m}");
    assert!(m.contains("username: invalid type"), "{m}");
    // A wrong method.
    let (st, m) = f.error("GET", "/api/v1/login", None, "", false).await;
    assert_eq!(st, 405, "{m}");
    assert!(m.contains("GET is not allowed on /api/v1/login"), "{m}");
    let (st, _) = f.error("DELETE", "/login", None, "", false).await;
    assert_eq!(st, 405);
    // An unknown route.
    let (st, m) = f.error("GET", "/api/v1/nope", None, "", true).await;
    assert_eq!((st, m.as_str()), (404, "no such route: /api/v1/nope"));
    // Unauthenticated.
    let (st, _) = f.error("GET", "/api/v1/devices", None, "", false).await;
    assert_eq!(st, 401);
    // A body of the wrong shape on an authenticated route; a bad path
    // parameter.
    let (st, m) = f
        .error(
            "POST",
            "/api/v1/sites",
            JSON,
            r#"{"customer":"dental"}"#,
            true,
        )
        .await;
    assert_eq!(st, 400, "{m}");
    assert!(m.contains("missing field `site`"), "{m}");
    let (st, m) = f
        .error(
            "POST",
            &format!("/api/v1/sites/{}/alerts/abc/ack", f.site),
            None,
            "",
            true,
        )
        .await;
    assert_eq!(st, 400, "{m}");
    assert!(m.starts_with("invalid path parameter"), "{m}");
}

#[tokio::test]
async fn limits_out_of_range_bad_cursors_and_statuses_are_bad_requests() {
    let f = fixture().await;
    for q in ["limit=0", "limit=1001"] {
        let (st, m) = f
            .error("GET", &format!("/api/v1/devices?{q}"), None, "", true)
            .await;
        assert_eq!(st, 400, "{q}: {m}");
        assert!(m.contains("between 1 and 1000"), "{q}: {m}");
    }
    let (st, m) = f
        .error("GET", "/api/v1/devices?limit=many", None, "", true)
        .await;
    assert_eq!(st, 400, "{m}");
    assert!(m.starts_with("invalid query string: limit"), "{m}");
    // Not hex, and hex of a key outside the listing.
    for after in ["zz", "00ff", &hex::encode(b"other\0s-1\0dev")] {
        let (st, m) = f
            .error(
                "GET",
                &format!("/api/v1/devices?after={after}"),
                None,
                "",
                true,
            )
            .await;
        assert_eq!(st, 400, "{after}: {m}");
        assert!(m.starts_with("after: cursor"), "{after}: {m}");
    }
    let (st, m) = f
        .error("GET", "/api/v1/devices?status=asleep", None, "", true)
        .await;
    assert_eq!(st, 400, "{m}");
    assert!(m.contains("revoked"), "{m}");
    let (st, m) = f
        .error(
            "GET",
            &format!(
                "/api/v1/sites/{}/devices/000000000000002a/metrics?series=cpu&limit=0",
                f.site
            ),
            None,
            "",
            true,
        )
        .await;
    assert_eq!(st, 400, "{m}");
    assert!(m.contains("between 1 and 100000"), "{m}");
    // A cursor handed out by a page is accepted.
    let mut b = sample_batch(1);
    (b.site, b.tenant) = (f.site.clone(), "msp".into());
    let mut second = b.devices[0].clone();
    second.device = DeviceId(43);
    b.devices.push(second);
    f.central
        .store
        .apply_batch(&"msp".into(), &f.site, b, 10)
        .await
        .unwrap();
    let page = f.get_json("/api/v1/devices?limit=1").await;
    let next = page["next"].as_str().expect("a next cursor").to_string();
    let page = f
        .get_json(&format!("/api/v1/devices?limit=1&after={next}"))
        .await;
    assert_eq!(page["devices"].as_array().unwrap().len(), 1, "{page}");
    assert_eq!(page["devices"][0]["device"], "000000000000002b");
}

#[tokio::test]
async fn revoked_devices_and_tenant_mismatches_show_in_the_api_and_the_web_view() {
    let f = fixture().await;
    let mut b = sample_batch(1);
    (b.site, b.tenant) = (f.site.clone(), "msp".into());
    let mut revoked = b.devices[0].clone();
    revoked.device = DeviceId(43);
    (revoked.revoked, revoked.status) = (true, batch::DeviceStatus::Offline);
    b.devices.push(revoked);
    b.foreign_tenants = vec![ForeignTenant {
        tenant: "acme-msp".into(),
        devices: 1,
    }];
    f.central
        .store
        .apply_batch(&"msp".into(), &f.site, b, 10)
        .await
        .unwrap();

    let d = f
        .get_json(&format!(
            "/api/v1/sites/{}/devices/000000000000002b",
            f.site
        ))
        .await;
    assert_eq!(d["device"]["status"], "revoked", "{d}");
    let page = f.get_json("/api/v1/devices?status=revoked").await;
    assert_eq!(page["devices"].as_array().unwrap().len(), 1, "{page}");
    let s = f.get_json("/api/v1/summary").await;
    let t = &s["totals"];
    assert_eq!(
        (&t["devices"], &t["online"], &t["offline"], &t["revoked"]),
        (&2.into(), &1.into(), &0.into(), &1.into()),
        "{s}"
    );

    let site = f.get_json(&format!("/api/v1/sites/{}", f.site)).await;
    assert_eq!(
        site["tenant_mismatch"],
        serde_json::json!([{"tenant": "acme-msp", "devices": 1}]),
        "{site}"
    );
    let (st, ct, page) = f
        .send("GET", &format!("/sites/{}", f.site), None, "", true)
        .await;
    assert_eq!(
        (st, ct.as_str()),
        (200, "text/html; charset=utf-8"),
        "{page}"
    );
    assert!(page.contains("id=\"tenant-mismatch\""), "{page}");
    assert!(
        page.contains("enrolled under tenant acme-msp (1), not msp"),
        "{page}"
    );
    assert!(page.contains("1 revoked"), "{page}");
    let (_, _, overview) = f.send("GET", "/", None, "", true).await;
    assert!(overview.contains("1 revoked"), "{overview}");
    assert!(overview.contains("(tenant mismatch)"), "{overview}");
}
