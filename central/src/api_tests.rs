//! Router-level tests of central's HTTP API and web view (tower's
//! `oneshot`, no socket): every class of error answers `{"error": ...}`
//! naming what is wrong, page limits and cursors are checked, revoked
//! devices and tenant mismatches show. Each test runs on both store
//! backends (`rocks_backend::NAME`, `pg_backend::NAME`, see
//! [`crate::testing::Backend`]).

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, header};
use outpost_proto::{DeviceId, SiteId};
use outpost_uplink::batch::{self, ForeignTenant};
use serde_json::Value;
use tower::ServiceExt;

use crate::Central;
use crate::model::Role;
use crate::ops;
use crate::testing::sample_batch;

struct Fixture {
    central: Arc<Central>,
    /// An admin API token of tenant `msp`.
    token: String,
    site: SiteId,
    _dir: tempfile::TempDir,
}

crate::testing::on_both_backends!(
    every_error_of_login_and_the_login_form_is_json_naming_the_field,
    limits_out_of_range_bad_cursors_and_statuses_are_bad_requests,
    revoked_devices_and_tenant_mismatches_show_in_the_api_and_the_web_view,
    a_customer_scoped_admin_grants_only_within_its_own_customers,
    an_existing_user_is_a_conflict_and_passwords_change_on_their_own_route,
    failed_logins_are_limited_per_user_and_per_address,
    a_session_write_from_another_origin_is_refused_and_tokens_are_not_affected,
    a_device_claimed_for_another_customer_stays_out_of_that_customers_view,
    dead_letters_show_on_the_site_in_the_api_and_the_web_view,
    per_site_metrics_need_the_operator_token,
    patch_compliance_shows_per_customer_site_and_device_within_the_callers_scope,
    cve_exposure_device_patches_and_reports_stay_within_the_callers_scope,
    the_pdf_report_shows_the_figures_of_the_json_report,
    the_top_cve_list_from_the_index_equals_the_one_from_the_findings_rows,
    the_device_list_filters_by_a_tag_its_site_sent,
    a_revoked_or_expired_token_is_refused_naming_why_and_counted,
    a_scoped_admin_lists_and_revokes_only_tokens_within_its_customers,
    removing_a_user_ends_its_sessions_and_its_login,
);

/// A central with tenant `msp`, one site (customer `dental`) and an admin
/// API token.
async fn fixture() -> Fixture {
    fixture_with(Default::default()).await
}

async fn fixture_with(limits: crate::CentralLimits) -> Fixture {
    let (central, site, dir) = crate::testing::central_with_site(limits).await;
    let token = ops::create_token(
        central.store.as_ref(),
        &ops::CreateToken {
            tenant: "msp".into(),
            role: Role::Admin,
            customers: vec![],
            ttl: None,
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

/// One request with any headers (and a peer address, as the HTTP server
/// sets it): (status, headers, body).
async fn request(
    f: &Fixture,
    method: &str,
    uri: &str,
    headers: &[(&str, &str)],
    body: &str,
    peer: Option<&str>,
) -> (u16, axum::http::HeaderMap, String) {
    let mut req = Request::builder().method(method).uri(uri);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let mut req = req.body(Body::from(body.to_string())).unwrap();
    if let Some(p) = peer {
        req.extensions_mut()
            .insert(axum::extract::ConnectInfo::<std::net::SocketAddr>(
                p.parse().unwrap(),
            ));
    }
    let resp = crate::api::router(f.central.clone())
        .oneshot(req)
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .unwrap();
    (
        status,
        headers,
        String::from_utf8_lossy(&bytes).into_owned(),
    )
}

fn bearer(t: &str) -> String {
    format!("Bearer {t}")
}

async fn token(f: &Fixture, role: Role, customers: &[&str]) -> String {
    ops::create_token(
        f.central.store.as_ref(),
        &ops::CreateToken {
            tenant: "msp".into(),
            role,
            customers: customers.iter().map(|c| (*c).into()).collect(),
            ttl: None,
        },
        1,
    )
    .await
    .unwrap()
}

async fn post_json(f: &Fixture, uri: &str, token: &str, body: &str) -> (u16, String) {
    let auth = bearer(token);
    let (st, _, body) = request(
        f,
        "POST",
        uri,
        &[
            ("authorization", &auth),
            ("content-type", "application/json"),
        ],
        body,
        None,
    )
    .await;
    (st, body)
}

/// Item 2: an admin limited to some customers grants only a subset of
/// them (an empty list means every customer: not for it), never a higher
/// role; a tenant-wide admin grants anything in the tenant.
async fn a_customer_scoped_admin_grants_only_within_its_own_customers() {
    let f = fixture().await;
    let scoped = token(&f, Role::Admin, &["dental"]).await;
    for body in [
        r#"{"role":"viewer"}"#,
        r#"{"role":"viewer","customers":[]}"#,
        r#"{"role":"admin","customers":["vet"]}"#,
        r#"{"role":"technician","customers":["dental","vet"]}"#,
    ] {
        let (st, resp) = post_json(&f, "/api/v1/tokens", &scoped, body).await;
        assert_eq!(st, 403, "token {body}: {resp}");
        let user = body.replacen('{', r#"{"name":"eve","password":"hunter22hunter","#, 1);
        let (st, resp) = post_json(&f, "/api/v1/users", &scoped, &user).await;
        assert_eq!(st, 403, "user {user}: {resp}");
    }
    let (st, resp) = post_json(
        &f,
        "/api/v1/tokens",
        &scoped,
        r#"{"role":"admin","customers":["dental"]}"#,
    )
    .await;
    assert_eq!(st, 201, "{resp}");
    // The token it made is as limited as it is.
    let minted: Value = serde_json::from_str(&resp).unwrap();
    let (_, _, me) = request(
        &f,
        "GET",
        "/api/v1/me",
        &[("authorization", &bearer(minted["token"].as_str().unwrap()))],
        "",
        None,
    )
    .await;
    assert!(me.contains(r#""customers":["dental"]"#), "{me}");
    let (st, resp) = post_json(
        &f,
        "/api/v1/users",
        &scoped,
        r#"{"name":"eve","role":"viewer","customers":["dental"],"password":"hunter22hunter"}"#,
    )
    .await;
    assert_eq!(st, 201, "{resp}");
    // A user named like a token's principal would pass for it in the
    // audit log and `created_by`.
    let tokenish = r#"{"name":"token:3508ce6a1799","role":"viewer","customers":["dental"],"password":"hunter22hunter"}"#;
    let (st, resp) = post_json(&f, "/api/v1/users", &scoped, tokenish).await;
    assert_eq!(st, 400, "{resp}");
    assert!(resp.contains("token:ID"), "{resp}");
    let (st, resp) = post_json(&f, "/api/v1/tokens", &f.token, r#"{"role":"admin"}"#).await;
    assert_eq!(st, 201, "a tenant-wide admin: {resp}");
    // A site of another customer: refused as before.
    let (st, _) = post_json(
        &f,
        "/api/v1/sites",
        &scoped,
        r#"{"customer":"vet","site":"x"}"#,
    )
    .await;
    assert_eq!(st, 403);
}

async fn login(
    f: &Fixture,
    user: &str,
    password: &str,
    peer: Option<&str>,
) -> (u16, axum::http::HeaderMap, String) {
    request(
        f,
        "POST",
        "/api/v1/login",
        &[("content-type", "application/json")],
        &format!(r#"{{"tenant":"msp","username":"{user}","password":"{password}"}}"#),
        peer,
    )
    .await
}

fn cookie_of(h: &axum::http::HeaderMap) -> String {
    h.get(header::SET_COOKIE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .expect("a session cookie")
        .to_string()
}

/// Item 3: creating an existing user is a 409 (it replaced the user and
/// its password); a password changes on its own route, by the user itself
/// (giving the current one) or a tenant-wide admin, and every session of
/// the user ends.
async fn an_existing_user_is_a_conflict_and_passwords_change_on_their_own_route() {
    let f = fixture().await;
    let alice = r#"{"name":"alice","role":"admin","password":"correct horse"}"#;
    assert_eq!(post_json(&f, "/api/v1/users", &f.token, alice).await.0, 201);
    let scoped = token(&f, Role::Admin, &["dental"]).await;
    let takeover =
        r#"{"name":"alice","role":"admin","customers":["dental"],"password":"mine now!"}"#;
    let (st, resp) = post_json(&f, "/api/v1/users", &scoped, takeover).await;
    assert_eq!(st, 409, "{resp}");
    assert!(resp.contains("/api/v1/users/alice/password"), "{resp}");
    let (st, resp) = post_json(&f, "/api/v1/users", &f.token, alice).await;
    assert_eq!(st, 409, "{resp}");
    assert_eq!(login(&f, "alice", "mine now!", None).await.0, 401);
    let (st, h, _) = login(&f, "alice", "correct horse", None).await;
    assert_eq!(st, 200);
    let session = cookie_of(&h);
    let (_, h2, _) = login(&f, "alice", "correct horse", None).await;
    let other_session = cookie_of(&h2);

    let put = |who: (&'static str, String), name: &str, body: &str| {
        let (k, v) = who;
        let uri = format!("/api/v1/users/{name}/password");
        let body = body.to_string();
        let f = &f;
        async move {
            let (st, _, resp) = request(
                f,
                "PUT",
                &uri,
                &[(k, &v), ("content-type", "application/json")],
                &body,
                None,
            )
            .await;
            (st, resp)
        }
    };
    let as_cookie = |c: &str| ("cookie", c.to_string());
    let as_token = |t: &str| ("authorization", bearer(t));
    // Not the user, not tenant-wide: 403 (even for an admin).
    let (st, _) = put(as_token(&scoped), "alice", r#"{"password":"mine now!"}"#).await;
    assert_eq!(st, 403);
    // The user itself: the current password is required, and checked.
    let (st, resp) = put(
        as_cookie(&session),
        "alice",
        r#"{"password":"new horse 1"}"#,
    )
    .await;
    assert_eq!(st, 400, "{resp}");
    let (st, _) = put(
        as_cookie(&session),
        "alice",
        r#"{"password":"new horse 1","current_password":"wrong"}"#,
    )
    .await;
    assert_eq!(st, 403);
    let (st, resp) = put(
        as_cookie(&session),
        "alice",
        r#"{"password":"new horse 1","current_password":"correct horse"}"#,
    )
    .await;
    assert_eq!(st, 200, "{resp}");
    assert!(resp.contains(r#""sessions_ended":2"#), "{resp}");
    for c in [&session, &other_session] {
        let (st, _, _) = request(&f, "GET", "/api/v1/me", &[("cookie", c)], "", None).await;
        assert_eq!(st, 401, "sessions of alice ended");
    }
    assert_eq!(login(&f, "alice", "correct horse", None).await.0, 401);
    assert_eq!(login(&f, "alice", "new horse 1", None).await.0, 200);
    // A tenant-wide admin: no current password needed; unknown users 404.
    let (st, _) = put(as_token(&f.token), "alice", r#"{"password":"new horse 2"}"#).await;
    assert_eq!(st, 200);
    assert_eq!(login(&f, "alice", "new horse 2", None).await.0, 200);
    let (st, _) = put(
        as_token(&f.token),
        "nobody",
        r#"{"password":"new horse 2"}"#,
    )
    .await;
    assert_eq!(st, 404);
    let (st, _) = put(as_token(&f.token), "alice", r#"{"password":"short"}"#).await;
    assert_eq!(st, 400);
}

/// A page of another origin (a sibling subdomain, another port of the
/// host: the same site, so the `SameSite=Strict` cookie goes along) cannot
/// make a logged-in technician's browser act: a write under a session
/// must come from this origin; reads, tokens and the CLI are unaffected.
async fn a_session_write_from_another_origin_is_refused_and_tokens_are_not_affected() {
    let f = fixture().await;
    let tom = r#"{"name":"tom","role":"technician","password":"correct horse"}"#;
    assert_eq!(post_json(&f, "/api/v1/users", &f.token, tom).await.0, 201);
    let (st, h, _) = login(&f, "tom", "correct horse", None).await;
    assert_eq!(st, 200);
    let session = cookie_of(&h);
    let logout = |extra: &'static [(&'static str, &'static str)]| {
        let session = session.clone();
        let f = &f;
        async move {
            let mut headers: Vec<(&str, &str)> =
                vec![("cookie", &session), ("host", "central.example.com")];
            headers.extend_from_slice(extra);
            request(f, "POST", "/api/v1/logout", &headers, "", None).await
        }
    };
    for forged in [
        &[("origin", "http://tools.example.com")][..],
        &[("origin", "https://central.example.com:8443")][..],
        &[("sec-fetch-site", "same-site")][..],
        &[
            ("sec-fetch-site", "cross-site"),
            ("origin", "https://central.example.com"),
        ][..],
    ] {
        let (st, _, body) = logout(forged).await;
        assert_eq!(st, 403, "{forged:?}: {body}");
        assert!(body.contains("cross-origin"), "{body}");
    }
    // The session is still there: nothing was done.
    let (st, _, _) = request(
        &f,
        "GET",
        "/api/v1/me",
        &[("cookie", &session), ("origin", "http://tools.example.com")],
        "",
        None,
    )
    .await;
    assert_eq!(st, 200, "a read is not refused");
    let metrics = f.central.metrics.encode(false);
    assert!(
        metrics.contains(r#"outpost_central_api_rejects_total{reason="api_cross_origin"} 4"#),
        "{metrics}"
    );
    // A token is not sent by browsers on their own: any origin will do.
    let (st, _, body) = request(
        &f,
        "POST",
        "/api/v1/tokens",
        &[
            ("authorization", &bearer(&f.token)),
            ("origin", "http://tools.example.com"),
            ("content-type", "application/json"),
        ],
        r#"{"role":"viewer"}"#,
        None,
    )
    .await;
    assert_eq!(st, 201, "{body}");
    // The console's own origin, and no Origin at all (the CLI, curl).
    let (st, _, body) = logout(&[
        ("origin", "https://central.example.com"),
        ("sec-fetch-site", "same-origin"),
    ])
    .await;
    assert_eq!(st, 200, "{body}");
    let (st, h, _) = login(&f, "tom", "correct horse", None).await;
    assert_eq!(st, 200);
    let again = cookie_of(&h);
    let (st, _, body) = request(
        &f,
        "POST",
        "/api/v1/logout",
        &[("cookie", &again)],
        "",
        None,
    )
    .await;
    assert_eq!(st, 200, "{body}");
}

/// Item 4: failed logins are limited per user name (known or not) and per
/// address: 429 with `Retry-After`, counted; while limited, even the
/// right password is not checked.
async fn failed_logins_are_limited_per_user_and_per_address() {
    let mut limits = crate::CentralLimits::default();
    limits.login.per_user.burst = 3;
    limits.login.per_address.burst = 6;
    let f = fixture_with(limits).await;
    let alice = r#"{"name":"alice","role":"viewer","password":"correct horse"}"#;
    assert_eq!(post_json(&f, "/api/v1/users", &f.token, alice).await.0, 201);
    for _ in 0..3 {
        assert_eq!(login(&f, "alice", "wrong", None).await.0, 401);
    }
    let (st, h, body) = login(&f, "alice", "correct horse", None).await;
    assert_eq!(st, 429, "{body}");
    let wait: u64 = h[header::RETRY_AFTER].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&wait), "{wait}");
    assert!(body.contains("too many failed logins"), "{body}");
    // An unknown user is limited the same way (no user-name oracle).
    for _ in 0..3 {
        assert_eq!(login(&f, "mallory", "x", None).await.0, 401);
    }
    assert_eq!(login(&f, "mallory", "x", None).await.0, 429);
    // One address trying many names.
    let peer = Some("192.0.2.9:5555");
    for i in 0..6 {
        assert_eq!(login(&f, &format!("u{i}"), "x", peer).await.0, 401);
    }
    assert_eq!(login(&f, "u99", "x", peer).await.0, 429, "the address");
    assert_eq!(
        login(&f, "u99", "x", Some("192.0.2.10:1")).await.0,
        401,
        "another one"
    );
    let m = f.central.metrics.encode(false);
    assert!(
        m.contains("outpost_central_logins_throttled_total 3"),
        "{m}"
    );
    // The web form answers 429 too, with Retry-After.
    let (st, h, page) = request(
        &f,
        "POST",
        "/login",
        &[("content-type", "application/x-www-form-urlencoded")],
        "tenant=msp&username=alice&password=correct+horse",
        None,
    )
    .await;
    assert_eq!(st, 429, "{page}");
    assert!(h.contains_key(header::RETRY_AFTER) && page.contains("id=\"throttled\""));

    // Guesses sent at once are counted one after the other: of 10 for a
    // user with a fresh limit (burst 3), 3 are checked, 7 refused.
    let bob = r#"{"name":"bob","role":"viewer","password":"correct horse"}"#;
    assert_eq!(post_json(&f, "/api/v1/users", &f.token, bob).await.0, 201);
    let f = std::sync::Arc::new(f);
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let f = f.clone();
        tasks.push(tokio::spawn(async move {
            login(&f, "bob", "wrong", None).await.0
        }));
    }
    let mut codes = Vec::new();
    for t in tasks {
        codes.push(t.await.unwrap());
    }
    codes.sort();
    assert_eq!(codes, [401, 401, 401, 429, 429, 429, 429, 429, 429, 429]);
}

/// Item 5: a device's customer is its site's. A batch claiming another
/// customer for a device does not put it in that customer's view, by any
/// route or query parameter.
async fn a_device_claimed_for_another_customer_stays_out_of_that_customers_view() {
    let f = fixture().await;
    let mut b = sample_batch(1);
    (b.site, b.tenant) = (f.site.clone(), "msp".into());
    b.devices[0].customer = "vet".into();
    f.central
        .store
        .apply_batch(&"msp".into(), &f.site, b, 10)
        .await
        .unwrap();
    let vet = token(&f, Role::Viewer, &["vet"]).await;
    let dental = token(&f, Role::Viewer, &["dental"]).await;
    let get = |t: String, uri: String| {
        let f = &f;
        async move {
            let (st, _, body) =
                request(f, "GET", &uri, &[("authorization", &bearer(&t))], "", None).await;
            (st, body)
        }
    };
    let dev = format!("/api/v1/sites/{}/devices/000000000000002a", f.site);
    for uri in [
        "/api/v1/devices".to_string(),
        "/api/v1/devices?customer=vet".to_string(),
        "/api/v1/summary".to_string(),
        "/api/v1/alerts".to_string(),
    ] {
        let (st, body) = get(vet.clone(), uri.clone()).await;
        assert_eq!(st, 200, "{uri}: {body}");
        assert!(
            !body.contains("000000000000002a") && !body.contains("web-1"),
            "{uri}: {body}"
        );
    }
    for uri in [
        dev.clone(),
        format!("{dev}/metrics?series=cpu"),
        format!("/api/v1/devices?site={}", f.site),
        format!("/sites/{}/devices/000000000000002a", f.site),
    ] {
        let (st, body) = get(vet.clone(), uri.clone()).await;
        assert_eq!(st, 404, "{uri}: {body}");
    }
    let (st, body) = get(dental.clone(), "/api/v1/devices".into()).await;
    assert_eq!(st, 200);
    let page: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(page["devices"][0]["customer"], "dental", "{page}");
    let (st, _) = get(dental, dev).await;
    assert_eq!(st, 200);
    let m = f.central.metrics.encode(false);
    assert!(!m.contains("vet"), "{m}");
}

/// Item 6: a dead-lettered batch shows on its site, in the JSON and the
/// web view.
async fn dead_letters_show_on_the_site_in_the_api_and_the_web_view() {
    let f = fixture().await;
    crate::receiver::answer_batch(
        &f.central,
        &"msp".into(),
        &f.site,
        1,
        b"not a batch".to_vec(),
    )
    .await;
    let site = f.get_json(&format!("/api/v1/sites/{}", f.site)).await;
    assert_eq!(site["applied_up_to"], 1, "{site}");
    assert_eq!(site["batches_applied"], 0, "{site}");
    assert_eq!(site["dead_lettered"], 1, "{site}");
    assert_eq!(site["dead_letters"][0]["seq"], 1, "{site}");
    assert_eq!(
        site["dead_letters"][0]["reason"], "malformed_batch",
        "{site}"
    );
    assert!(site["dead_letters"][0]["at_ms"].as_u64().unwrap() > 0);
    let (st, _, page) = f
        .send("GET", &format!("/sites/{}", f.site), None, "", true)
        .await;
    assert_eq!(st, 200);
    assert!(page.contains("id=\"dead-letters\""), "{page}");
    assert!(page.contains("malformed_batch"), "{page}");
}

/// Item 7: `/metrics` without credentials names no tenant and no site;
/// with the operator token it has the per-site series too.
async fn per_site_metrics_need_the_operator_token() {
    let f = fixture().await;
    let mut b = sample_batch(1);
    (b.site, b.tenant) = (f.site.clone(), "msp".into());
    let payload = outpost_uplink::batch::encode(&b, 1).unwrap();
    let answer =
        crate::receiver::answer_batch(&f.central, &"msp".into(), &f.site, 1, payload).await;
    assert!(
        matches!(answer, outpost_uplink::wire::CentralFrame::Ack { seq: 1 }),
        "{answer:?}"
    );
    let (st, _, open) = request(&f, "GET", "/metrics", &[], "", None).await;
    assert_eq!(st, 200);
    assert!(
        open.contains("outpost_central_batches_applied_total 1"),
        "{open}"
    );
    assert!(
        !open.contains(f.site.as_str()) && !open.contains("msp"),
        "{open}"
    );
    assert!(!open.contains("site_lag_seconds"), "{open}");
    let tenant_admin = bearer(&f.token);
    let (_, _, t) = request(
        &f,
        "GET",
        "/metrics",
        &[("authorization", &tenant_admin)],
        "",
        None,
    )
    .await;
    assert!(
        !t.contains("site_lag_seconds"),
        "a tenant token is not the operator's"
    );
    let op = bearer(&f.central.keys.admin_token);
    let (st, _, all) = request(&f, "GET", "/metrics", &[("authorization", &op)], "", None).await;
    assert_eq!(st, 200);
    assert!(
        all.contains(&format!(
            "outpost_central_site_lag_seconds{{tenant=\"msp\",site=\"{}\"}}",
            f.site
        )),
        "{all}"
    );
    assert!(all.contains("outpost_central_batches_applied_total 1"));
    assert_eq!(all.matches("# EOF").count(), 1, "{all}");
}

fn compliance(device: u64, state: batch::ComplianceState, critical: u32) -> batch::PatchCompliance {
    batch::PatchCompliance {
        device: DeviceId(device),
        missing: critical + 2,
        missing_critical: critical,
        installed_pending_reboot: 1,
        as_of_ms: 100,
        detail: Some(batch::PatchDetail {
            compliance: state,
            security_patches: batch::PatchSeverityCounts {
                critical,
                high: 1,
                ..Default::default()
            },
            fixable_cves: 3,
            open_cves: 1,
            risk: Some(55),
            scanned_at_ms: 90,
            reboot_required: true,
        }),
    }
}

/// Patch compliance per customer and site, and per device, scoped like
/// every view: a customer-scoped caller sees only its customers' sites,
/// another tenant sees nothing of this one (its device is a 404).
async fn patch_compliance_shows_per_customer_site_and_device_within_the_callers_scope() {
    let f = fixture().await;
    let vet_site = ops::add_site(
        f.central.store.as_ref(),
        &ops::AddSite {
            tenant: "msp".into(),
            customer: "vet".into(),
            site: "clinic".into(),
        },
        1,
    )
    .await
    .unwrap()
    .site_id;
    let mut b = crate::testing::batch_of(&f.site, 1);
    b.patch_compliance = vec![
        compliance(0x2a, batch::ComplianceState::NonCompliant, 2),
        compliance(0x2b, batch::ComplianceState::UnsupportedRelease, 0),
    ];
    f.central
        .store
        .apply_batch(&"msp".into(), &f.site, b, 10)
        .await
        .unwrap();
    let mut b = crate::testing::batch_of(&vet_site, 1);
    b.devices[0].device = DeviceId(0x3c);
    b.rollups.clear();
    b.alerts.clear();
    b.patch_compliance = vec![compliance(0x3c, batch::ComplianceState::Compliant, 0)];
    f.central
        .store
        .apply_batch(&"msp".into(), &vet_site, b, 10)
        .await
        .unwrap();
    ops::add_site(
        f.central.store.as_ref(),
        &ops::AddSite {
            tenant: "other".into(),
            customer: "dental".into(),
            site: "main".into(),
        },
        1,
    )
    .await
    .unwrap();
    let other = ops::create_token(
        f.central.store.as_ref(),
        &ops::CreateToken {
            tenant: "other".into(),
            role: Role::Admin,
            customers: vec![],
            ttl: None,
        },
        1,
    )
    .await
    .unwrap();
    let vet = token(&f, Role::Viewer, &["vet"]).await;
    let get = |t: String, uri: String| {
        let f = &f;
        async move {
            let (st, _, body) =
                request(f, "GET", &uri, &[("authorization", &bearer(&t))], "", None).await;
            (st, body)
        }
    };

    let all = f.get_json("/api/v1/patches/compliance").await;
    let total = &all["total"];
    assert_eq!(
        (
            &total["devices"],
            &total["compliant"],
            &total["non_compliant"],
            &total["unsupported"],
            &total["reboot_required"],
        ),
        (&3.into(), &1.into(), &1.into(), &1.into(), &3.into()),
        "{all}"
    );
    assert_eq!(total["security_patches"]["critical"], 2, "{all}");
    assert_eq!(total["security_patches"]["high"], 3, "{all}");
    let customers = all["customers"].as_array().unwrap();
    assert_eq!(customers.len(), 2, "{all}");
    assert_eq!(customers[0]["customer"], "dental");
    assert_eq!(customers[0]["summary"]["devices"], 2);
    assert_eq!(customers[1]["customer"], "vet");
    assert_eq!(customers[1]["summary"]["compliance_percent"], 100.0);
    assert_eq!(all["sites"].as_array().unwrap().len(), 2, "{all}");
    let dental = f
        .get_json("/api/v1/patches/compliance?customer=dental")
        .await;
    assert_eq!(dental["total"]["devices"], 2, "{dental}");
    let one = f
        .get_json(&format!("/api/v1/patches/compliance?site={vet_site}"))
        .await;
    assert_eq!(one["total"]["devices"], 1, "{one}");

    // Customer scope: the vet viewer sees only vet.
    let (st, body) = get(vet.clone(), "/api/v1/patches/compliance".into()).await;
    assert_eq!(st, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["total"]["devices"], 1, "{v}");
    assert!(
        !body.contains(f.site.as_str()) && !body.contains("dental"),
        "{body}"
    );
    let (st, body) = get(
        vet.clone(),
        format!("/api/v1/patches/compliance?site={}", f.site),
    )
    .await;
    assert_eq!(st, 200);
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["total"]["devices"], 0, "{v}");

    // Another tenant sees none of it.
    let (st, body) = get(other.clone(), "/api/v1/patches/compliance".into()).await;
    assert_eq!(st, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["total"]["devices"], 0, "{v}");
    let dev = format!("/api/v1/sites/{}/devices/000000000000002a", f.site);
    let (st, _) = get(other, dev.clone()).await;
    assert_eq!(st, 404);
    let (st, _) = get(vet, dev.clone()).await;
    assert_eq!(st, 404);

    // Per device, in the device API.
    let d = f.get_json(&dev).await;
    let p = &d["patches"];
    assert_eq!(p["compliance"], "non-compliant", "{d}");
    assert_eq!(p["missing"], 4);
    assert_eq!(p["security_patches"]["critical"], 2);
    assert_eq!((&p["risk"], &p["last_scan_ms"]), (&55.into(), &90.into()));
    assert_eq!(p["reboot_required"], true);
    assert_eq!(p["customer"], "dental");
}

/// Findings of one device: `cves` fixable through `pkg` (an upgrade is
/// offered), and CVE-2026-9999 open in `libfoo`.
fn findings(device: u64, as_of_ms: u64, cves: &[&str]) -> batch::PatchFindings {
    batch::PatchFindings {
        device: DeviceId(device),
        as_of_ms,
        patches: vec![batch::MissingPatchEntry {
            source: "openssl".into(),
            installed: "3.0.11-1~deb12u1".into(),
            candidate: Some("3.0.15-1~deb12u1".into()),
            binaries: 2,
            security: true,
            severity: Some(batch::FindingSeverity::High),
            cves: cves.iter().map(|c| c.to_string()).collect(),
            reboot_expected: false,
            first_seen_ms: 5,
        }],
        vulns: vec![
            batch::VulnGroup {
                source: "openssl".into(),
                installed: "3.0.11-1~deb12u1".into(),
                fixed: Some("3.0.15-1~deb12u1".into()),
                fix_available: true,
                severity: batch::FindingSeverity::High,
                cves: cves.iter().map(|c| c.to_string()).collect(),
            },
            batch::VulnGroup {
                source: "libfoo".into(),
                installed: "1.0-1".into(),
                fixed: None,
                fix_available: false,
                severity: batch::FindingSeverity::Medium,
                cves: vec!["CVE-2026-9999".into()],
            },
        ],
    }
}

/// "Which of my customers are exposed to CVE-X": across the tenant's
/// customers and sites, fixable vs open, with names; a customer-scoped
/// caller sees only its customers; another tenant's query for the same
/// CVE returns only its own devices; a device's missing patches; the
/// per-customer report as JSON and CSV (out-of-scope customer 404).
async fn cve_exposure_device_patches_and_reports_stay_within_the_callers_scope() {
    let f = fixture().await;
    let add = |tenant: &str, customer: &str, site: &str| ops::AddSite {
        tenant: tenant.into(),
        customer: customer.into(),
        site: site.into(),
    };
    let vet_site = ops::add_site(f.central.store.as_ref(), &add("msp", "vet", "clinic"), 1)
        .await
        .unwrap()
        .site_id;
    let other_site = ops::add_site(f.central.store.as_ref(), &add("other", "dental", "main"), 1)
        .await
        .unwrap()
        .site_id;
    let apply = |tenant: &'static str,
                 site: SiteId,
                 seq: u64,
                 dev: u64,
                 b_findings: batch::PatchFindings| {
        let f = &f;
        async move {
            let mut b = crate::testing::batch_of(&site, seq);
            b.tenant = tenant.into();
            b.devices[0].device = DeviceId(dev);
            b.devices[0].hostname = format!("host-{dev:x}");
            b.rollups.clear();
            b.alerts.clear();
            b.patch_compliance = vec![compliance(dev, batch::ComplianceState::NonCompliant, 1)];
            b.patch_findings = vec![b_findings];
            f.central
                .store
                .apply_batch(&tenant.into(), &site, b, 10)
                .await
                .unwrap();
        }
    };
    apply(
        "msp",
        f.site.clone(),
        1,
        0x2a,
        findings(0x2a, 100, &["CVE-2026-0001", "CVE-2026-0002"]),
    )
    .await;
    apply(
        "msp",
        vet_site.clone(),
        1,
        0x3c,
        findings(0x3c, 100, &["CVE-2026-0001"]),
    )
    .await;
    apply(
        "other",
        other_site.clone(),
        1,
        0x4d,
        findings(0x4d, 100, &["CVE-2026-0001"]),
    )
    .await;
    // A newer assessment of 0x2a no longer has CVE-2026-0002: the index follows.
    apply(
        "msp",
        f.site.clone(),
        2,
        0x2a,
        findings(0x2a, 200, &["CVE-2026-0001"]),
    )
    .await;

    let e = f.get_json("/api/v1/patches/cves/CVE-2026-0001").await;
    assert_eq!(e["total"]["devices"], 2, "{e}");
    assert_eq!(e["total"]["fixable"], 2, "{e}");
    assert_eq!(e["severity"], "high");
    let customers: Vec<&str> = e["customers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["customer"].as_str().unwrap())
        .collect();
    assert_eq!(customers, ["dental", "vet"], "{e}");
    let d0 = &e["devices"][0];
    assert_eq!(
        (&d0["hostname"], &d0["state"], &d0["fixed"], &d0["customer"]),
        (
            &"host-2a".into(),
            &"fixable".into(),
            &"3.0.15-1~deb12u1".into(),
            &"dental".into()
        ),
        "{e}"
    );
    let open = f.get_json("/api/v1/patches/cves/CVE-2026-9999").await;
    assert_eq!(
        (&open["total"]["devices"], &open["total"]["open"]),
        (&2.into(), &2.into()),
        "{open}"
    );
    let gone = f.get_json("/api/v1/patches/cves/CVE-2026-0002").await;
    assert_eq!(
        gone["total"]["devices"], 0,
        "replaced findings leave the index: {gone}"
    );
    let top = f.get_json("/api/v1/patches/cves").await;
    assert_eq!(top[0]["cve"], "CVE-2026-0001", "high before medium: {top}");
    assert_eq!(top[0]["customers"], 2);
    assert_eq!(top.as_array().unwrap().len(), 2, "{top}");

    let vet = token(&f, Role::Viewer, &["vet"]).await;
    let other = ops::create_token(
        f.central.store.as_ref(),
        &ops::CreateToken {
            tenant: "other".into(),
            role: Role::Admin,
            customers: vec![],
            ttl: None,
        },
        1,
    )
    .await
    .unwrap();
    let get = |t: String, uri: String| {
        let f = &f;
        async move {
            let (st, h, body) =
                request(f, "GET", &uri, &[("authorization", &bearer(&t))], "", None).await;
            (st, h, body)
        }
    };
    let (st, _, body) = get(vet.clone(), "/api/v1/patches/cves/CVE-2026-0001".into()).await;
    assert_eq!(st, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["total"]["devices"], 1, "{v}");
    assert!(
        !body.contains("dental") && !body.contains("host-2a"),
        "{body}"
    );
    // The other tenant's query for the same CVE: its own device only.
    let (st, _, body) = get(other.clone(), "/api/v1/patches/cves/CVE-2026-0001".into()).await;
    assert_eq!(st, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["total"]["devices"], 1, "{v}");
    assert_eq!(v["devices"][0]["site_id"], other_site.as_str(), "{v}");
    assert!(!body.contains(f.site.as_str()), "{body}");
    let (st, _, _) = get(vet.clone(), "/api/v1/patches/cves/not%20a%20cve".into()).await;
    assert_eq!(st, 400);

    // A device's missing patches and CVEs.
    let dev = format!("/api/v1/sites/{}/devices/000000000000002a/patches", f.site);
    let d = f.get_json(&dev).await;
    assert_eq!(d["findings"]["patches"][0]["source"], "openssl", "{d}");
    assert_eq!(d["findings"]["patches"][0]["candidate"], "3.0.15-1~deb12u1");
    assert_eq!(d["findings"]["vulns"].as_array().unwrap().len(), 2, "{d}");
    assert_eq!(d["compliance"]["compliance"], "non-compliant");
    let (st, _, _) = get(vet.clone(), dev.clone()).await;
    assert_eq!(st, 404, "out of the viewer's customers");
    let (st, _, _) = get(other.clone(), dev).await;
    assert_eq!(st, 404, "another tenant");

    // Reports: JSON and CSV per customer; a customer out of scope is 404.
    let r = f.get_json("/api/v1/patches/report?customer=vet").await;
    assert_eq!(r["devices"].as_array().unwrap().len(), 1, "{r}");
    assert_eq!(r["devices"][0]["hostname"], "host-3c");
    assert_eq!(r["devices"][0]["cves"][0], "CVE-2026-0001");
    let (st, h, csv) = get(
        vet.clone(),
        "/api/v1/patches/report?customer=vet&format=csv".into(),
    )
    .await;
    assert_eq!(st, 200, "{csv}");
    assert!(h["content-type"].to_str().unwrap().starts_with("text/csv"));
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 2, "{csv}");
    assert!(lines[0].starts_with("customer,site,site_id,hostname,device,compliance"));
    assert!(
        lines[1].starts_with("vet,clinic,")
            && lines[1].contains(",host-3c,000000000000003c,non-compliant,"),
        "{csv}"
    );
    assert!(
        lines[1].ends_with("CVE-2026-0001 CVE-2026-9999"),
        "fixable first: {csv}"
    );
    let (st, _, _) = get(
        vet.clone(),
        "/api/v1/patches/report?customer=dental&format=csv".into(),
    )
    .await;
    assert_eq!(st, 404);
    let (st, _, _) = get(other, "/api/v1/patches/report?customer=vet".into()).await;
    assert_eq!(st, 404, "another tenant's customer");
    let (st, _, _) = get(vet, "/api/v1/patches/report?format=xml".into()).await;
    assert_eq!(st, 400);
}

/// The text of a PDF by poppler's `pdftotext -layout`; `None` (the
/// caller skips, saying why) when poppler-utils is not installed.
fn pdftotext(pdf: &[u8]) -> Option<String> {
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
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => panic!("running pdftotext: {e}"),
    };
    assert!(
        out.status.success(),
        "pdftotext refused the report: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(String::from_utf8(out.stdout).unwrap())
}

/// The words of the PDF's line that starts with `first` (a table row).
fn pdf_row<'a>(text: &'a str, first: &str) -> Vec<&'a str> {
    text.lines()
        .map(str::split_whitespace)
        .map(Iterator::collect::<Vec<_>>)
        .find(|w| w.first() == Some(&first))
        .unwrap_or_else(|| panic!("no line starting with {first:?} in:\n{text}"))
}

/// `GET /api/v1/patches/report?format=pdf&customer=C` is a PDF whose
/// text (extracted by pdftotext) shows the customer, the compliance
/// figure, each device's counts, the top missing patches and the open
/// CVEs exactly as the JSON report of the same customer gives them.
async fn the_pdf_report_shows_the_figures_of_the_json_report() {
    let f = fixture().await;
    let mut b = crate::testing::batch_of(&f.site, 1);
    b.rollups.clear();
    b.alerts.clear();
    let mut second = b.devices[0].clone();
    b.devices[0].device = DeviceId(0x2a);
    b.devices[0].hostname = "web-1".into();
    second.device = DeviceId(0x2b);
    second.hostname = "db-1".into();
    b.devices.push(second);
    b.patch_compliance = vec![
        compliance(0x2a, batch::ComplianceState::NonCompliant, 2),
        compliance(0x2b, batch::ComplianceState::Compliant, 0),
    ];
    b.patch_findings = vec![
        findings(0x2a, 100, &["CVE-2026-0001", "CVE-2026-0002"]),
        findings(0x2b, 100, &["CVE-2026-0001"]),
    ];
    f.central
        .store
        .apply_batch(&"msp".into(), &f.site, b, 10)
        .await
        .unwrap();

    let json = f.get_json("/api/v1/patches/report?customer=dental").await;
    let uri = "/api/v1/patches/report?customer=dental&format=pdf";
    let req = Request::builder()
        .uri(uri)
        .header("authorization", bearer(&f.token))
        .body(Body::empty())
        .unwrap();
    let resp = crate::api::router(f.central.clone())
        .oneshot(req)
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()[header::CONTENT_TYPE], "application/pdf");
    assert_eq!(
        resp.headers()[header::CONTENT_DISPOSITION],
        "attachment; filename=\"patch-compliance-dental.pdf\""
    );
    let pdf = axum::body::to_bytes(resp.into_body(), 1 << 24)
        .await
        .unwrap();
    assert!(pdf.starts_with(b"%PDF-"));
    let Some(text) = pdftotext(&pdf) else {
        eprintln!(
            "skipped: pdftotext (poppler-utils) is not installed; scripts/deps.sh --test installs it"
        );
        return;
    };

    let s = &json["summary"];
    assert!(text.contains("Customer: dental"), "{text}");
    let pct = s["compliance_percent"].as_f64().unwrap();
    assert_eq!(pct, 50.0, "{json}");
    let want = format!(
        "Compliance: {pct:.1} % ({} of {} devices compliant)",
        s["compliant"], s["devices"]
    );
    assert!(text.contains(&want), "{want:?} not in:\n{text}");
    let sp = &s["security_patches"];
    let want = format!(
        "Missing patches: {}   Missing security patches: critical {}   high {}   medium {}   low {}",
        s["missing_patches"], sp["critical"], sp["high"], sp["medium"], sp["low"]
    );
    let squeeze = |t: &str| t.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(
        squeeze(&text).contains(&squeeze(&want)),
        "{want:?} not in:\n{text}"
    );
    let generated = outpost_patch::report::time_text(json["generated_ms"].as_u64().unwrap());
    let next_minute =
        outpost_patch::report::time_text(json["generated_ms"].as_u64().unwrap() + 60_000);
    assert!(
        text.contains(&format!("Generated: {generated}"))
            || text.contains(&format!("Generated: {next_minute}")),
        "{text}"
    );

    let devices = json["devices"].as_array().unwrap();
    assert_eq!(devices.len(), 2, "{json}");
    for d in devices {
        let row = pdf_row(&text, d["hostname"].as_str().unwrap());
        let at = row
            .iter()
            .position(|w| *w == d["compliance"].as_str().unwrap())
            .unwrap_or_else(|| panic!("{row:?}"));
        let figures: Vec<String> = [
            "missing_patches",
            "security_critical",
            "security_high",
            "security_medium",
            "security_low",
            "fixable_cves",
            "open_cves",
            "risk",
        ]
        .iter()
        .map(|k| d[*k].to_string())
        .collect();
        assert_eq!(row[at + 1..], figures, "{row:?} vs {d}");
    }

    let patches = json["top_patches"].as_array().unwrap();
    assert_eq!(patches.len(), 1, "{json}");
    for p in patches {
        let row = pdf_row(&text, p["source"].as_str().unwrap());
        let want = [
            p["source"].as_str().unwrap().to_string(),
            p["candidate"].as_str().unwrap().to_string(),
            p["severity"].as_str().unwrap().to_string(),
            if p["security"] == true { "yes" } else { "no" }.to_string(),
            p["devices"].to_string(),
            p["cves"].to_string(),
        ];
        assert_eq!(row, want, "{p}");
    }
    assert_eq!(patches[0]["devices"], 2);
    assert_eq!(patches[0]["cves"], 2, "CVE-2026-0001 and -0002: {json}");

    let cves = json["top_cves"].as_array().unwrap();
    assert_eq!(cves.len(), 3, "{json}");
    for c in cves {
        let row = pdf_row(&text, c["cve"].as_str().unwrap());
        let n = &c["counts"];
        let want = [
            c["cve"].as_str().unwrap().to_string(),
            c["severity"].as_str().unwrap().to_string(),
            n["devices"].to_string(),
            n["fixable"].to_string(),
            n["fix_not_in_repositories"].to_string(),
            n["open"].to_string(),
        ];
        assert_eq!(row, want, "{c}");
    }
    assert_eq!(
        cves[0]["cve"], "CVE-2026-0001",
        "most widespread high first"
    );
    assert_eq!(cves[0]["counts"]["devices"], 2);
}

#[test]
fn csv_fields_are_quoted_and_formulas_defused() {
    use crate::api_patches::csv_field;
    assert_eq!(csv_field("web-1"), "web-1");
    assert_eq!(csv_field("a,b"), "\"a,b\"");
    assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
    assert_eq!(csv_field("=cmd()"), "'=cmd()");
    assert_eq!(csv_field("-1,2"), "\"'-1,2\"");
}

/// `GET /api/v1/patches/cves` counts from the CVE index (no findings row
/// read); its answer is exactly what the findings rows give (the former
/// computation), for the whole tenant and for one customer.
async fn the_top_cve_list_from_the_index_equals_the_one_from_the_findings_rows() {
    let f = fixture().await;
    let vet_site = ops::add_site(
        f.central.store.as_ref(),
        &ops::AddSite {
            tenant: "msp".into(),
            customer: "vet".into(),
            site: "clinic".into(),
        },
        1,
    )
    .await
    .unwrap()
    .site_id;
    let mut not_in_repos = findings(0x2c, 100, &["CVE-2026-0003"]);
    not_in_repos.vulns[0].fix_available = false;
    for (site, list) in [
        (
            f.site.clone(),
            vec![
                findings(0x2a, 100, &["CVE-2026-0001", "CVE-2026-0002"]),
                findings(0x2b, 100, &["CVE-2026-0001"]),
                not_in_repos,
            ],
        ),
        (
            vet_site.clone(),
            vec![
                findings(0x3a, 100, &["CVE-2026-0001", "CVE-2026-0003"]),
                findings(0x3b, 100, &["CVE-2026-0004"]),
            ],
        ),
    ] {
        let mut b = crate::testing::batch_of(&site, 1);
        b.rollups.clear();
        b.alerts.clear();
        b.patch_findings = list;
        f.central
            .store
            .apply_batch(&"msp".into(), &site, b, 10)
            .await
            .unwrap();
    }
    let rows = f
        .central
        .store
        .patch_findings(&"msp".into(), None)
        .await
        .unwrap();
    for (query, sites) in [
        (
            "",
            vec![(f.site.clone(), "dental"), (vet_site.clone(), "vet")],
        ),
        ("&customer=vet", vec![(vet_site.clone(), "vet")]),
    ] {
        let sites: std::collections::HashMap<SiteId, outpost_proto::CustomerId> =
            sites.into_iter().map(|(s, c)| (s, c.into())).collect();
        let want = crate::api_patches::cves_of_findings(&rows, &sites);
        let got = f
            .get_json(&format!("/api/v1/patches/cves?limit=1000{query}"))
            .await;
        assert_eq!(got, serde_json::to_value(&want).unwrap(), "{query}");
        assert!(!want.is_empty());
    }
    let all = f.get_json("/api/v1/patches/cves").await;
    assert_eq!(all[0]["cve"], "CVE-2026-0001", "{all}");
    assert_eq!(all[0]["counts"]["devices"], 3, "{all}");
    assert_eq!(all[0]["customers"], 2, "{all}");
}

/// `GET /api/v1/devices?tag=T` lists the devices whose site sent tag `T`
/// (exact), page by page.
async fn the_device_list_filters_by_a_tag_its_site_sent() {
    let f = fixture().await;
    let mut b = sample_batch(1);
    (b.site, b.tenant) = (f.site.clone(), "msp".into());
    for d in [43, 44] {
        let mut more = b.devices[0].clone();
        more.device = DeviceId(d);
        b.devices.push(more);
    }
    let tagged = |d: u64, tags: &[&str]| batch::DeviceIpsTags {
        device: DeviceId(d),
        ips: vec![format!("10.0.0.{d}")],
        tags: tags.iter().map(|t| t.to_string()).collect(),
    };
    b.device_facts = vec![
        tagged(42, &["web"]),
        tagged(43, &["db", "eu"]),
        tagged(44, &["db"]),
    ];
    f.central
        .store
        .apply_batch(&"msp".into(), &f.site, b, 10)
        .await
        .unwrap();
    let ids = |page: &serde_json::Value| -> Vec<String> {
        page["devices"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["device"].as_str().unwrap().to_string())
            .collect()
    };
    let page = f.get_json("/api/v1/devices?tag=db&limit=1").await;
    assert_eq!(ids(&page), ["000000000000002b"], "{page}");
    let next = page["next"].as_str().expect("a next cursor").to_string();
    let page = f
        .get_json(&format!("/api/v1/devices?tag=db&limit=1&after={next}"))
        .await;
    assert_eq!(ids(&page), ["000000000000002c"], "{page}");
    assert!(page["next"].is_null(), "{page}");
    let page = f.get_json("/api/v1/devices?tag=eu").await;
    assert_eq!(ids(&page), ["000000000000002b"]);
    let page = f.get_json("/api/v1/devices?tag=DB").await;
    assert!(ids(&page).is_empty(), "exact: {page}");
    let page = f.get_json("/api/v1/devices").await;
    assert_eq!(ids(&page).len(), 3, "no tag: every device");
}

async fn get_as(f: &Fixture, uri: &str, token: &str) -> (u16, String) {
    let auth = bearer(token);
    let (st, _, body) = request(f, "GET", uri, &[("authorization", &auth)], "", None).await;
    (st, body)
}

/// The id (`token:ID`) under which a listing shows the token whose
/// principal `GET /api/v1/me` names.
async fn id_of(f: &Fixture, token: &str) -> String {
    let (st, me) = get_as(f, "/api/v1/me", token).await;
    assert_eq!(st, 200, "{me}");
    let me: Value = serde_json::from_str(&me).unwrap();
    me["name"].as_str().unwrap().to_string()
}

fn error_of(body: &str) -> String {
    let v: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"));
    v["error"]
        .as_str()
        .unwrap_or_else(|| panic!("{v}"))
        .to_string()
}

/// A revoked token and an expired one (made with an explicit clock: an
/// hour-long token created at 1 ms) answer 401 naming the token and why,
/// counted by reason; the listing shows their states and never a secret;
/// the revocation is audited; a `ttl` out of bounds is a 400.
async fn a_revoked_or_expired_token_is_refused_naming_why_and_counted() {
    let f = fixture().await;
    let admin_id = id_of(&f, &f.token).await;
    let tech = token(&f, Role::Technician, &["dental"]).await;
    let tech_id = id_of(&f, &tech).await;
    let old = ops::create_token_by(
        f.central.store.as_ref(),
        &ops::CreateToken {
            tenant: "msp".into(),
            role: Role::Viewer,
            customers: vec![],
            ttl: Some("1h".into()),
        },
        "alice",
        1,
    )
    .await
    .unwrap();
    assert_eq!(old.expires_ms, Some(3_600_001));

    let (st, body) = get_as(&f, "/api/v1/tokens", &f.token).await;
    assert_eq!(st, 200, "{body}");
    for secret in [&f.token, &tech, &old.token] {
        assert!(!body.contains(secret.as_str()), "{body}");
    }
    assert!(!body.contains("oct_"), "{body}");
    let list: Value = serde_json::from_str(&body).unwrap();
    let row = |id: &str| {
        list.as_array()
            .unwrap()
            .iter()
            .find(|r| r["id"] == id)
            .unwrap_or_else(|| panic!("{id} in {list}"))
            .clone()
    };
    assert_eq!(row(&tech_id)["state"], "active");
    assert_eq!(row(&tech_id)["role"], "technician");
    assert_eq!(row(&tech_id)["customers"], serde_json::json!(["dental"]));
    assert_eq!(row(&old.id)["state"], "expired");
    assert_eq!(row(&old.id)["created_by"], "alice");
    assert_eq!(row(&old.id)["expires_ms"], 3_600_001);

    let (st, _) = get_as(&f, "/api/v1/me", &tech).await;
    assert_eq!(st, 200);
    let uri = format!("/api/v1/tokens/{tech_id}/revoke");
    let (st, body) = post_json(&f, &uri, &f.token, "").await;
    assert_eq!(st, 200, "{body}");
    let r: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(r["revoked_now"], true);
    assert_eq!(r["token"]["state"], "revoked");
    assert_eq!(r["token"]["revoked_by"], admin_id.as_str());
    let (st, body) = get_as(&f, "/api/v1/me", &tech).await;
    assert_eq!(st, 401, "{body}");
    let m = error_of(&body);
    assert!(
        m.contains(&format!("API token {tech_id} was revoked at"))
            && m.contains(&format!("by {admin_id}")),
        "{m}"
    );
    let (st, body) = get_as(&f, "/api/v1/devices", &old.token).await;
    assert_eq!(st, 401, "{body}");
    let m = error_of(&body);
    assert!(
        m.contains(&format!(
            "API token {} expired at 1970-01-01T01:00:00Z",
            old.id
        )),
        "{m}"
    );
    // Revoking again changes nothing.
    let (st, body) = post_json(&f, &uri, &f.token, "").await;
    assert_eq!(st, 200, "{body}");
    assert!(body.contains(r#""revoked_now":false"#), "{body}");

    let metrics = f.central.metrics.encode(false);
    for reason in ["token_revoked", "token_expired"] {
        assert!(
            metrics.contains(&format!(
                r#"outpost_central_api_rejects_total{{reason="{reason}"}} 1"#
            )),
            "{reason}: {metrics}"
        );
    }
    let (st, audit) = get_as(&f, "/api/v1/audit", &f.token).await;
    assert_eq!(st, 200);
    let audit: Value = serde_json::from_str(&audit).unwrap();
    let revokes: Vec<&Value> = audit
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["action"] == "token.revoke")
        .collect();
    assert_eq!(revokes.len(), 1, "{audit}");
    assert_eq!(revokes[0]["actor"], admin_id.as_str());
    assert_eq!(revokes[0]["target"], tech_id.as_str());

    // `ttl` at creation: bounded, answered with the expiry.
    for bad in [r#""10s""#, r#""400d""#, r#""soon""#] {
        let body = format!(r#"{{"role":"viewer","ttl":{bad}}}"#);
        let (st, resp) = post_json(&f, "/api/v1/tokens", &f.token, &body).await;
        assert_eq!(st, 400, "{body}: {resp}");
        assert!(error_of(&resp).contains("ttl"), "{resp}");
    }
    let (st, resp) = post_json(
        &f,
        "/api/v1/tokens",
        &f.token,
        r#"{"role":"viewer","ttl":"30d"}"#,
    )
    .await;
    assert_eq!(st, 201, "{resp}");
    let made: Value = serde_json::from_str(&resp).unwrap();
    assert!(made["expires_ms"].as_u64().unwrap() > crate::now_ms());
    let (st, _) = get_as(&f, "/api/v1/me", made["token"].as_str().unwrap()).await;
    assert_eq!(st, 200, "not expired yet");
}

/// An admin limited to `dental` lists only the tokens it could have
/// granted, and revoking another customer's or a tenant-wide token is a
/// 403 (the token keeps working); within its scope it revokes.
async fn a_scoped_admin_lists_and_revokes_only_tokens_within_its_customers() {
    let f = fixture().await;
    let scoped = token(&f, Role::Admin, &["dental"]).await;
    let vet = token(&f, Role::Viewer, &["vet"]).await;
    let wide = token(&f, Role::Viewer, &[]).await;
    let dental = token(&f, Role::Viewer, &["dental"]).await;
    let (vet_id, wide_id, dental_id) = (
        id_of(&f, &vet).await,
        id_of(&f, &wide).await,
        id_of(&f, &dental).await,
    );
    let (st, body) = get_as(&f, "/api/v1/tokens", &scoped).await;
    assert_eq!(st, 200, "{body}");
    assert!(body.contains(&dental_id), "{body}");
    assert!(
        !body.contains(&vet_id) && !body.contains(&wide_id) && !body.contains("vet"),
        "{body}"
    );
    for id in [&vet_id, &wide_id] {
        let (st, body) = post_json(&f, &format!("/api/v1/tokens/{id}/revoke"), &scoped, "").await;
        assert_eq!(st, 403, "{id}: {body}");
        assert!(error_of(&body).contains("outside your scope"), "{body}");
    }
    assert_eq!(get_as(&f, "/api/v1/me", &vet).await.0, 200, "not revoked");
    assert_eq!(get_as(&f, "/api/v1/me", &wide).await.0, 200, "not revoked");
    let (st, body) = post_json(
        &f,
        &format!("/api/v1/tokens/{dental_id}/revoke"),
        &scoped,
        "",
    )
    .await;
    assert_eq!(st, 200, "{body}");
    assert_eq!(get_as(&f, "/api/v1/me", &dental).await.0, 401);
    let (st, _) = post_json(&f, "/api/v1/tokens/token:0123456789ab/revoke", &scoped, "").await;
    assert_eq!(st, 404);
    let (st, _) = post_json(&f, "/api/v1/tokens/not-an-id/revoke", &scoped, "").await;
    assert_eq!(st, 400);
    // Listing and revoking are an admin's.
    assert_eq!(get_as(&f, "/api/v1/tokens", &vet).await.0, 403);
    // Another tenant's token is not found.
    let other = ops::create_token(
        f.central.store.as_ref(),
        &ops::CreateToken {
            tenant: "other".into(),
            role: Role::Admin,
            customers: vec![],
            ttl: None,
        },
        1,
    )
    .await
    .unwrap();
    let other_id = id_of(&f, &other).await;
    let (st, _) = post_json(
        &f,
        &format!("/api/v1/tokens/{other_id}/revoke"),
        &f.token,
        "",
    )
    .await;
    assert_eq!(st, 404);
    assert_eq!(get_as(&f, "/api/v1/me", &other).await.0, 200);
    // The operator revokes any tenant's token.
    let op = f.central.keys.admin_token.clone();
    let (st, body) = post_json(
        &f,
        "/api/v1/admin/tokens/list",
        &op,
        r#"{"tenant":"other"}"#,
    )
    .await;
    assert_eq!(st, 200, "{body}");
    assert!(body.contains(&other_id) && !body.contains(&other), "{body}");
    let (st, body) = post_json(
        &f,
        "/api/v1/admin/tokens/revoke",
        &op,
        &format!(r#"{{"tenant":"other","id":"{other_id}"}}"#),
    )
    .await;
    assert_eq!(st, 200, "{body}");
    assert!(body.contains(r#""revoked_by":"operator""#), "{body}");
    assert_eq!(get_as(&f, "/api/v1/me", &other).await.0, 401);
}

/// Removing a user (an admin within its scope, or the operator) ends its
/// open sessions and its login, audited; a scoped admin cannot remove a
/// tenant-wide user.
async fn removing_a_user_ends_its_sessions_and_its_login() {
    let f = fixture().await;
    let alice = r#"{"name":"alice","role":"technician","password":"correct horse"}"#;
    assert_eq!(post_json(&f, "/api/v1/users", &f.token, alice).await.0, 201);
    let bob = r#"{"name":"bob","role":"viewer","customers":["dental"],"password":"correct horse"}"#;
    assert_eq!(post_json(&f, "/api/v1/users", &f.token, bob).await.0, 201);
    let (st, h, _) = login(&f, "alice", "correct horse", None).await;
    assert_eq!(st, 200);
    let session = cookie_of(&h);
    let me = |cookie: String| {
        let f = &f;
        async move {
            request(f, "GET", "/api/v1/me", &[("cookie", &cookie)], "", None)
                .await
                .0
        }
    };
    assert_eq!(me(session.clone()).await, 200);

    let scoped = token(&f, Role::Admin, &["dental"]).await;
    let del = |who: String, name: &'static str| {
        let f = &f;
        async move {
            let auth = bearer(&who);
            let (st, _, body) = request(
                f,
                "DELETE",
                &format!("/api/v1/users/{name}"),
                &[("authorization", &auth)],
                "",
                None,
            )
            .await;
            (st, body)
        }
    };
    let (st, body) = del(scoped.clone(), "alice").await;
    assert_eq!(st, 403, "{body}");
    assert_eq!(me(session.clone()).await, 200, "still signed in");

    let (st, body) = del(f.token.clone(), "alice").await;
    assert_eq!(st, 200, "{body}");
    let r: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (r["user"].as_str(), r["sessions_ended"].as_u64()),
        (Some("alice"), Some(1))
    );
    assert_eq!(me(session).await, 401, "the open session ended");
    assert_eq!(login(&f, "alice", "correct horse", None).await.0, 401);
    assert_eq!(del(f.token.clone(), "alice").await.0, 404);
    // Within its scope a scoped admin removes; the operator removes any.
    let (st, h, _) = login(&f, "bob", "correct horse", None).await;
    assert_eq!(st, 200);
    let bob_session = cookie_of(&h);
    assert_eq!(del(scoped.clone(), "bob").await.0, 200);
    assert_eq!(me(bob_session).await, 401);
    let carol = r#"{"name":"carol","role":"viewer","password":"correct horse"}"#;
    assert_eq!(post_json(&f, "/api/v1/users", &f.token, carol).await.0, 201);
    let op = f.central.keys.admin_token.clone();
    let (st, body) = post_json(
        &f,
        "/api/v1/admin/users/remove",
        &op,
        r#"{"tenant":"msp","name":"carol"}"#,
    )
    .await;
    assert_eq!(st, 200, "{body}");
    assert_eq!(login(&f, "carol", "correct horse", None).await.0, 401);

    let (_, audit) = get_as(&f, "/api/v1/audit", &f.token).await;
    let audit: Value = serde_json::from_str(&audit).unwrap();
    let removals: Vec<(String, String)> = audit
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["action"] == "user.remove")
        .map(|r| {
            (
                r["actor"].as_str().unwrap().to_string(),
                r["target"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let scoped_id = id_of(&f, &scoped).await;
    let admin_id = id_of(&f, &f.token).await;
    assert_eq!(
        removals,
        [
            ("operator".to_string(), "carol".to_string()),
            (scoped_id, "bob".to_string()),
            (admin_id, "alice".to_string()),
        ],
        "newest first"
    );
}
