//! Role table, origin check, logins and the middleware over a real store
//! (a router of stub handlers behind [`authorize`], no socket).

use std::net::Ipv4Addr;

use axum::Router;
use axum::body::Body;
use axum::http::Request as HttpRequest;
use axum::routing::{get, post, put};
use outpost_storage::StoreOptions;
use tower::ServiceExt;

use super::*;

const TOKEN: &str = "the-admin-token-0123456789";
const ADDR: Option<IpAddr> = Some(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 9)));

fn auth() -> (tempfile::TempDir, Arc<Auth>, Arc<Metrics>) {
    let dir = tempfile::tempdir().unwrap();
    let store = crate::db::open(dir.path(), &StoreOptions::default()).unwrap();
    let metrics = Arc::new(Metrics::new());
    let auth = Auth::new(
        store,
        metrics.clone(),
        TOKEN.into(),
        AuthOptions {
            login: LimiterConfig {
                per_user: login::Rate {
                    burst: 3,
                    interval_ms: 60_000,
                },
                ..LimiterConfig::default()
            },
            ..AuthOptions::default()
        },
    );
    (dir, Arc::new(auth), metrics)
}

#[test]
fn viewers_read_technicians_ack_and_tag_admins_do_everything_else() {
    use Role::*;
    let get = Method::GET;
    let post = Method::POST;
    let put = Method::PUT;
    let delete = Method::DELETE;
    let table = [
        (&get, "/api/v1/devices", Viewer),
        (&get, "/api/v1/devices/{id}/metrics", Viewer),
        (&get, "/api/v1/alerts", Viewer),
        (&get, "/api/v1/alert-rules", Viewer),
        (&get, "/api/v1/uplink/status", Viewer),
        (&get, "/api/v1/cache/stats", Viewer),
        (&get, "/api/v1/me", Viewer),
        (&put, "/api/v1/users/{name}/password", Viewer),
        (&post, "/api/v1/alerts/{id}/ack", Technician),
        (&put, "/api/v1/devices/{id}/tags", Technician),
        (&post, "/api/v1/files/push", Technician),
        (&post, "/api/v1/files/pull", Technician),
        (&post, "/api/v1/files/{id}/cancel", Technician),
        (&get, "/api/v1/files", Viewer),
        (&get, "/api/v1/files/{id}/content", Technician),
        (&post, "/api/v1/commands/bulk", Technician),
        (&post, "/api/v1/commands/bulk/{id}/cancel", Technician),
        (&get, "/api/v1/commands/bulk/{id}", Viewer),
        (&get, "/api/v1/audit", Admin),
        (&get, "/api/v1/users", Admin),
        (&post, "/api/v1/users", Admin),
        (&delete, "/api/v1/users/{name}", Admin),
        (&get, "/api/v1/channels", Admin),
        (&get, "/api/v1/channels/{id}", Admin),
        (&post, "/api/v1/tokens", Admin),
        (&post, "/api/v1/devices/{id}/revoke", Admin),
        (&post, "/api/v1/alert-rules", Admin),
        (&put, "/api/v1/alert-rules/{id}", Admin),
        (&delete, "/api/v1/maintenance-windows/{id}", Admin),
        (&post, "/api/v1/uplink/join", Admin),
        (&post, "/api/v1/cache/prefetch", Admin),
        (&post, "/api/v1/cache/pins", Admin),
        // A route nobody listed: admin if it changes anything.
        (&post, "/api/v1/some-future-route", Admin),
        (&get, "/api/v1/some-future-route", Viewer),
    ];
    for (m, route, role) in table {
        assert_eq!(required_role(m, route), role, "{m} {route}");
    }
}

fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.append(
            axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    h
}

#[test]
fn only_the_listeners_own_origin_or_no_origin_may_change_things() {
    let host = ("host", "10.0.0.5:8080");
    assert!(same_origin(&headers(&[host])), "no Origin: not a browser");
    assert!(same_origin(&headers(&[
        host,
        ("origin", "http://10.0.0.5:8080")
    ])));
    assert!(same_origin(&headers(&[
        host,
        ("origin", "https://10.0.0.5:8080"),
        ("sec-fetch-site", "same-origin")
    ])));
    assert!(!same_origin(&headers(&[
        host,
        ("origin", "http://10.0.0.5:9999")
    ])));
    assert!(!same_origin(&headers(&[host, ("origin", "null")])));
    assert!(!same_origin(&headers(&[
        host,
        ("origin", "http://evil.example")
    ])));
    assert!(!same_origin(&headers(&[
        host,
        ("sec-fetch-site", "same-site")
    ])));
    assert!(
        !same_origin(&headers(&[("origin", "http://10.0.0.5:8080")])),
        "no Host"
    );
}

#[test]
fn a_session_acts_as_its_user_and_the_admin_token_as_its_header_or_itself() {
    let h = headers(&[("x-outpost-user", "mallory")]);
    let session = Caller {
        user: "bob".into(),
        role: Role::Technician,
        credential: Credential::Session,
    };
    assert_eq!(session.actor(&h), "bob");
    assert_eq!(Caller::admin_token().actor(&h), "mallory");
    assert_eq!(
        Caller::admin_token().actor(&HeaderMap::new()),
        "admin-token"
    );
    assert!(session.require(Role::Technician).is_ok());
    let e = session.require(Role::Admin).unwrap_err();
    assert_eq!(e.status(), StatusCode::FORBIDDEN);
    assert!(e.to_string().contains("needs admin"), "{e}");
}

/// Logs `user` in and returns the `Cookie` header value.
async fn cookie_of(auth: &Auth, user: &str, pw: &str) -> String {
    let ok = auth
        .login(user, pw.into(), ADDR, outpost_storage::now_ms())
        .await
        .expect("login");
    let set = auth.session_set_cookie(&ok, &HeaderMap::new());
    assert!(
        set.contains("HttpOnly") && set.contains("SameSite=Strict") && set.contains("Path=/"),
        "{set}"
    );
    assert!(!set.contains("Secure"), "plain HTTP listener: {set}");
    set.split(';').next().unwrap().to_string()
}

fn stub_router(auth: Arc<Auth>) -> Router {
    async fn ok(Extension(c): Extension<Caller>) -> axum::Json<Caller> {
        axum::Json(c)
    }
    use axum::Extension;
    // Shaped like the admin router: the API nested under `/api/v1`, the
    // cache's routes merged beside it with the layer of their own.
    let api = Router::new()
        .route("/devices", get(ok))
        .route("/devices/{id}/revoke", post(ok))
        .route("/alerts/{id}/ack", post(ok))
        .route("/users/{name}/password", put(ok))
        .route_layer(axum::middleware::from_fn_with_state(
            auth.clone(),
            authorize,
        ));
    let cache = Router::new()
        .route("/api/v1/cache/stats", get(ok))
        .route_layer(axum::middleware::from_fn_with_state(auth, authorize));
    Router::new().nest("/api/v1", api).merge(cache)
}

async fn call(r: &Router, method: &str, path: &str, h: &[(&str, &str)]) -> (StatusCode, String) {
    let mut req = HttpRequest::builder().method(method).uri(path);
    for (k, v) in h {
        req = req.header(*k, *v);
    }
    let resp = r
        .clone()
        .oneshot(req.body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    let body = axum::body::to_bytes(resp.into_body(), 1 << 16)
        .await
        .unwrap();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_middleware_authenticates_token_or_cookie_and_enforces_roles_and_origin() {
    let (_d, auth, metrics) = auth();
    auth.add_user("test", "vera", Role::Viewer, "viewer-password".into())
        .await
        .unwrap();
    auth.add_user("test", "tom", Role::Technician, "tech-password".into())
        .await
        .unwrap();
    let r = stub_router(auth.clone());
    let bearer = format!("Bearer {TOKEN}");

    // No credential, a wrong token, a made-up cookie: 401, each counted.
    let (st, body) = call(&r, "GET", "/api/v1/devices", &[]).await;
    assert_eq!(st, StatusCode::UNAUTHORIZED, "{body}");
    assert!(body.contains("log in"), "{body}");
    let (st, _) = call(
        &r,
        "GET",
        "/api/v1/devices",
        &[("authorization", "Bearer nope")],
    )
    .await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    let forged = format!("{SESSION_COOKIE}=deadbeef");
    let (st, _) = call(&r, "GET", "/api/v1/devices", &[("cookie", &forged)]).await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    let text = metrics.encode();
    for reason in ["api_missing_token", "api_bad_token", "api_bad_session"] {
        assert!(
            text.contains(&format!("outpost_rejects_total{{reason=\"{reason}\"}} 1")),
            "{reason}: {text}"
        );
    }

    // The admin token: an admin, everywhere, whatever the origin.
    let (st, body) = call(
        &r,
        "POST",
        "/api/v1/devices/1/revoke",
        &[("authorization", &bearer), ("origin", "http://elsewhere")],
    )
    .await;
    assert_eq!(st, StatusCode::OK, "{body}");
    assert!(body.contains("\"credential\":\"admin-token\""), "{body}");

    // A viewer reads, and is refused what changes things.
    let vera = cookie_of(&auth, "vera", "viewer-password").await;
    let (st, body) = call(&r, "GET", "/api/v1/devices", &[("cookie", &vera)]).await;
    assert_eq!(st, StatusCode::OK, "{body}");
    assert!(
        body.contains("\"user\":\"vera\"") && body.contains("\"role\":\"viewer\""),
        "{body}"
    );
    let (st, _) = call(&r, "GET", "/api/v1/cache/stats", &[("cookie", &vera)]).await;
    assert_eq!(st, StatusCode::OK);
    for path in ["/api/v1/alerts/1/ack", "/api/v1/devices/1/revoke"] {
        let (st, body) = call(&r, "POST", path, &[("cookie", &vera)]).await;
        assert_eq!(st, StatusCode::FORBIDDEN, "{path}: {body}");
    }
    // A technician acknowledges, does not revoke.
    let tom = cookie_of(&auth, "tom", "tech-password").await;
    let (st, _) = call(&r, "POST", "/api/v1/alerts/1/ack", &[("cookie", &tom)]).await;
    assert_eq!(st, StatusCode::OK);
    let (st, _) = call(&r, "POST", "/api/v1/devices/1/revoke", &[("cookie", &tom)]).await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    // ... and not from another origin (a forged form on another port).
    let (st, body) = call(
        &r,
        "POST",
        "/api/v1/alerts/1/ack",
        &[
            ("cookie", &tom),
            ("host", "10.0.0.5:8080"),
            ("origin", "http://10.0.0.5:8081"),
        ],
    )
    .await;
    assert_eq!(st, StatusCode::FORBIDDEN, "{body}");
    assert!(body.contains("cross-origin"), "{body}");
    let text = metrics.encode();
    assert!(
        text.contains("outpost_rejects_total{reason=\"api_forbidden_role\"} 3"),
        "{text}"
    );
    assert!(
        text.contains("outpost_rejects_total{reason=\"api_cross_origin\"} 1"),
        "{text}"
    );

    // Removing a user ends its sessions at once; logging out ends one.
    auth.remove_user("test", "tom").await.unwrap();
    let (st, _) = call(&r, "GET", "/api/v1/devices", &[("cookie", &tom)]).await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    assert!(auth.logout(&headers(&[("cookie", &vera)])).await.unwrap());
    let (st, _) = call(&r, "GET", "/api/v1/devices", &[("cookie", &vera)]).await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_logins_are_limited_counted_and_the_burst_is_audited_once() {
    let (_d, auth, metrics) = auth();
    auth.add_user("test", "ann", Role::Admin, "right-password".into())
        .await
        .unwrap();
    let t0 = 5_000_000;
    for i in 0..3 {
        let e = auth
            .login("ann", "wrong".into(), ADDR, t0 + i)
            .await
            .unwrap_err();
        assert_eq!(e, LoginError::Unauthorized, "attempt {i}");
    }
    // The burst (3 here) is spent: even the right password waits.
    let e = auth
        .login("ann", "right-password".into(), ADDR, t0 + 10)
        .await
        .unwrap_err();
    let LoginError::Throttled { retry_after_secs } = e else {
        panic!("{e:?}")
    };
    assert_eq!(retry_after_secs, 60);
    let resp = LoginError::Throttled { retry_after_secs }.into_response();
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(resp.headers()[header::RETRY_AFTER], "60");
    // An unknown user and a name no user can have fail alike.
    assert_eq!(
        auth.login("nobody", "x".into(), ADDR, t0)
            .await
            .unwrap_err(),
        LoginError::Unauthorized
    );
    assert_eq!(
        auth.login("../etc", "x".into(), ADDR, t0)
            .await
            .unwrap_err(),
        LoginError::Unauthorized
    );
    // One interval later one attempt is allowed again, and the right
    // password opens a session.
    let ok = auth
        .login("ann", "right-password".into(), ADDR, t0 + 60_001)
        .await
        .unwrap();
    assert_eq!(
        (ok.caller.user.as_str(), ok.caller.role),
        ("ann", Role::Admin)
    );
    assert_eq!(ok.secret.len(), 64);
    let text = metrics.encode();
    for (result, n) in [("failed", 5), ("throttled", 1), ("ok", 1)] {
        assert!(
            text.contains(&format!("outpost_logins_total{{result=\"{result}\"}} {n}")),
            "{result}: {text}"
        );
    }
    let audit = registry::audit_log(&auth.store, 0, u64::MAX, 100).unwrap();
    let throttled: Vec<_> = audit
        .iter()
        .filter(|e| e.action == "login.throttled")
        .collect();
    assert_eq!(throttled.len(), 1, "{audit:?}");
    assert_eq!(throttled[0].target, "ann");
    assert_eq!(throttled[0].actor, "192.0.2.9");
    assert!(
        audit
            .iter()
            .any(|e| e.action == "user.add" && e.target == "ann")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_wrong_passwords_are_counted_one_after_the_other() {
    let (_d, auth, metrics) = auth();
    auth.add_user("test", "ann", Role::Admin, "right-password".into())
        .await
        .unwrap();
    // Burst 3 here: of 12 guesses sent at once, 3 are checked.
    let t0 = 5_000_000;
    let mut tasks = Vec::new();
    for _ in 0..12 {
        let auth = auth.clone();
        tasks.push(tokio::spawn(async move {
            auth.login("ann", "wrong".into(), ADDR, t0)
                .await
                .unwrap_err()
        }));
    }
    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await.unwrap());
    }
    let checked = results
        .iter()
        .filter(|e| **e == LoginError::Unauthorized)
        .count();
    assert_eq!(checked, 3, "{results:?}");
    let text = metrics.encode();
    assert!(
        text.contains("outpost_logins_total{result=\"throttled\"} 9"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_change_their_own_password_with_the_current_one_and_admins_any() {
    let (_d, auth, _m) = auth();
    auth.add_user("test", "bob", Role::Viewer, "bob-password-1".into())
        .await
        .unwrap();
    auth.add_user("test", "eve", Role::Technician, "eve-password-1".into())
        .await
        .unwrap();
    let conflict = auth
        .add_user("test", "bob", Role::Admin, "another-password".into())
        .await
        .unwrap_err();
    assert_eq!(conflict.status(), StatusCode::CONFLICT);
    let weak = auth
        .add_user("test", "carl", Role::Viewer, "short".into())
        .await
        .unwrap_err();
    assert_eq!(weak.status(), StatusCode::BAD_REQUEST);

    let bob = Caller {
        user: "bob".into(),
        role: Role::Viewer,
        credential: Credential::Session,
    };
    let eve = Caller {
        user: "eve".into(),
        role: Role::Technician,
        credential: Credential::Session,
    };
    let now = outpost_storage::now_ms();
    let _s1 = auth
        .login("bob", "bob-password-1".into(), ADDR, now)
        .await
        .unwrap();
    // Not someone else's, without being an admin.
    let e = auth
        .set_password(&eve, "eve", "bob", "hijacked-pw".into(), None, ADDR)
        .await
        .unwrap_err();
    assert_eq!(e.status(), StatusCode::FORBIDDEN);
    // One's own: the current password is required and checked.
    let e = auth
        .set_password(&bob, "bob", "bob", "bob-password-2".into(), None, ADDR)
        .await
        .unwrap_err();
    assert_eq!(e.status(), StatusCode::BAD_REQUEST);
    let e = auth
        .set_password(
            &bob,
            "bob",
            "bob",
            "bob-password-2".into(),
            Some("nope".into()),
            ADDR,
        )
        .await
        .unwrap_err();
    assert_eq!(e.status(), StatusCode::FORBIDDEN);
    let done = auth
        .set_password(
            &bob,
            "bob",
            "bob",
            "bob-password-2".into(),
            Some("bob-password-1".into()),
            ADDR,
        )
        .await
        .unwrap();
    assert_eq!(done.sessions_ended, 1);
    // The admin token changes anyone's, without the current one.
    let done = auth
        .set_password(
            &Caller::admin_token(),
            "admin-token",
            "eve",
            "eve-password-2".into(),
            None,
            None,
        )
        .await
        .unwrap();
    assert_eq!(done.sessions_ended, 0);
    assert!(
        auth.login("eve", "eve-password-2".into(), ADDR, now)
            .await
            .is_ok()
    );
    let missing = auth
        .set_password(
            &Caller::admin_token(),
            "admin-token",
            "zed",
            "zed-password".into(),
            None,
            None,
        )
        .await
        .unwrap_err();
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    let audit = registry::audit_log(&auth.store, 0, u64::MAX, 100).unwrap();
    let changes: Vec<(&str, &str)> = audit
        .iter()
        .filter(|e| e.action == "user.password")
        .map(|e| (e.actor.as_str(), e.target.as_str()))
        .collect();
    assert_eq!(changes, [("bob", "bob"), ("admin-token", "eve")]);
    let users = auth.list_users().await.unwrap();
    let eve_row = users.iter().find(|u| u.name == "eve").unwrap();
    assert_eq!((eve_row.role, eve_row.sessions), (Role::Technician, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_token_signs_in_as_admin_token_and_its_session_ends_with_the_token() {
    let (dir, auth, _m) = auth();
    let r = stub_router(auth.clone());
    // The reserved name: no local user may take it.
    let e = auth
        .add_user(
            "test",
            ADMIN_TOKEN_ACTOR,
            Role::Viewer,
            "some-password".into(),
        )
        .await
        .unwrap_err();
    assert_eq!(e.status(), StatusCode::BAD_REQUEST);
    assert!(e.to_string().contains("reserved"), "{e}");
    // A wrong token is a failed login like any other.
    let now = outpost_storage::now_ms();
    assert_eq!(
        auth.login(ADMIN_TOKEN_ACTOR, "not-the-token".into(), ADDR, now)
            .await
            .unwrap_err(),
        LoginError::Unauthorized
    );
    let cookie = cookie_of(&auth, ADMIN_TOKEN_ACTOR, TOKEN).await;
    let (st, body) = call(
        &r,
        "POST",
        "/api/v1/devices/1/revoke",
        &[("cookie", &cookie)],
    )
    .await;
    assert_eq!(st, StatusCode::OK, "an admin: {body}");
    assert!(
        body.contains("\"user\":\"admin-token\"") && body.contains("\"credential\":\"session\""),
        "{body}"
    );
    // A cookie session: the origin check applies to it.
    let (st, _) = call(
        &r,
        "POST",
        "/api/v1/devices/1/revoke",
        &[
            ("cookie", &cookie),
            ("host", "a:1"),
            ("origin", "http://b:2"),
        ],
    )
    .await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    // Another admin token (a new data directory's) does not accept it.
    let store = auth.store.clone();
    let other = Auth::new(
        store,
        Arc::new(Metrics::new()),
        "another-token-0123456789".into(),
        AuthOptions::default(),
    );
    let r2 = stub_router(Arc::new(other));
    let (st, _) = call(&r2, "GET", "/api/v1/devices", &[("cookie", &cookie)]).await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    drop(dir);
}
