//! Local users of the appliance end to end: `outpost users` over the real
//! admin API, logins over real sockets (the session cookie), what each
//! role may do, failed-login limits, sessions ending with their user or
//! password, and the admin token's callers unchanged. The decisions
//! themselves (role table, origin check, limiter arithmetic) are proven by
//! the appliance's unit tests (`users::auth`, `users::store`); these prove
//! the wiring.

use std::io::Write;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use outpost_tests::{Agent, Appliance, bin, http_raw, scratch, stderr, stdout, wait_for};
use serde_json::{Value, json};

/// `outpost users <args> --password-stdin` with `password` on stdin.
fn users_cli(app: &Appliance, args: &[&str], password: Option<&str>) -> Output {
    let mut cmd = Command::new(bin("outpost"));
    cmd.arg("--data")
        .arg(&app.dir)
        .arg("users")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn outpost users");
    {
        let mut stdin = child.stdin.take().expect("stdin");
        if let Some(pw) = password {
            stdin.write_all(format!("{pw}\n").as_bytes()).unwrap();
        }
    }
    child.wait_with_output().expect("outpost users")
}

fn add_user(app: &Appliance, name: &str, role: &str, password: &str) {
    let o = users_cli(
        app,
        &["add", name, "--role", role, "--password-stdin"],
        Some(password),
    );
    assert!(o.status.success(), "users add {name}: {}", stderr(&o));
    assert_eq!(stdout(&o).trim(), name);
}

/// `POST /api/v1/login`: (status, response head, body).
fn login(app: &Appliance, user: &str, password: &str) -> (u16, String, String) {
    http_raw(
        app.admin,
        "POST",
        "/api/v1/login",
        &[("Content-Type", "application/json")],
        &json!({"user": user, "password": password}).to_string(),
    )
}

/// The `Set-Cookie` line of a response head.
fn set_cookie(head: &str) -> String {
    head.lines()
        .find_map(|l| {
            l.split_once(':')
                .filter(|(k, _)| k.eq_ignore_ascii_case("set-cookie"))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| panic!("no Set-Cookie in {head}"))
}

/// Logs in and returns the `Cookie` header value.
fn session(app: &Appliance, user: &str, password: &str) -> String {
    let (status, head, body) = login(app, user, password);
    assert_eq!(status, 200, "login {user}: {body}");
    set_cookie(&head)
        .split(';')
        .next()
        .unwrap()
        .trim()
        .to_string()
}

/// One request with a session cookie: (status, JSON body).
fn with_cookie(
    app: &Appliance,
    method: &str,
    path: &str,
    cookie: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let text = body.map(|b| b.to_string()).unwrap_or_default();
    let mut h = vec![("Cookie", cookie)];
    if !text.is_empty() {
        h.push(("Content-Type", "application/json"));
    }
    let (status, _, out) = http_raw(app.admin, method, path, &h, &text);
    (
        status,
        serde_json::from_str(&out).unwrap_or(Value::String(out)),
    )
}

#[test]
fn users_log_in_with_a_cookie_and_their_role_decides_what_they_may_do() {
    let tmp = scratch("users-roles");
    let app = Appliance::start(tmp.path());
    add_user(&app, "vera", "viewer", "viewer-pass-1");
    add_user(&app, "tom", "technician", "tech-pass-1");
    add_user(&app, "ada", "admin", "admin-pass-1");
    // An existing name is refused, saying how to change its password.
    let o = users_cli(
        &app,
        &["add", "vera", "--role", "admin", "--password-stdin"],
        Some("whatever-pass"),
    );
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("409") && stderr(&o).contains("users passwd vera"),
        "{}",
        stderr(&o)
    );
    // Without a terminal, the password must come with --password-stdin.
    let o = users_cli(&app, &["add", "zoe", "--role", "viewer"], None);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("--password-stdin"), "{}", stderr(&o));

    // A real alert for the technician: a device that went offline.
    let mut agent = Agent::enroll(tmp.path(), "agent", &app);
    agent.start();
    wait_for(Duration::from_secs(20), "device online", || {
        (app.device(&agent.device_id)["status"] == "online").then_some(())
    });
    agent.stop();
    let alert_id = wait_for(Duration::from_secs(30), "offline alert firing", || {
        let list: Vec<Value> = app.api("/api/v1/alerts?state=firing").ok()?;
        list.iter()
            .find(|a| a["rule_id"] == "builtin-device-offline")
            .map(|a| a["id"].as_u64().unwrap())
    });

    // The login answers who, and the cookie: HttpOnly, SameSite=Strict,
    // Path=/, not Secure (the admin listener speaks plain HTTP).
    let (status, head, body) = login(&app, "vera", "viewer-pass-1");
    assert_eq!(status, 200, "{body}");
    let who: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(who, json!({"user": "vera", "role": "viewer"}));
    let cookie_line = set_cookie(&head);
    for attr in [
        "outpost_site_session=",
        "HttpOnly",
        "SameSite=Strict",
        "Path=/",
    ] {
        assert!(cookie_line.contains(attr), "{attr}: {cookie_line}");
    }
    assert!(!cookie_line.contains("Secure"), "{cookie_line}");
    let vera = cookie_line.split(';').next().unwrap().to_string();

    // A viewer reads ...
    let (s, me) = with_cookie(&app, "GET", "/api/v1/me", &vera, None);
    assert_eq!(s, 200);
    assert_eq!(
        me,
        json!({"user": "vera", "role": "viewer", "credential": "session"})
    );
    let (s, devices) = with_cookie(&app, "GET", "/api/v1/devices", &vera, None);
    assert_eq!(s, 200, "{devices}");
    assert_eq!(devices.as_array().map(Vec::len), Some(1));
    let (s, _) = with_cookie(
        &app,
        "GET",
        &format!("/api/v1/alerts/{alert_id}"),
        &vera,
        None,
    );
    assert_eq!(s, 200);
    // ... and is refused everything else.
    let ack = format!("/api/v1/alerts/{alert_id}/ack");
    for (method, path, body) in [
        ("POST", ack.as_str(), Some(json!({"comment": "mine"}))),
        ("POST", "/api/v1/tokens", Some(json!({"tenant": "acme"}))),
        ("GET", "/api/v1/users", None),
        ("GET", "/api/v1/audit", None),
        ("POST", "/api/v1/cache/verify", None),
    ] {
        let (s, out) = with_cookie(&app, method, path, &vera, body);
        assert_eq!(s, 403, "{method} {path}: {out}");
        assert!(
            out["error"].as_str().unwrap().contains("role viewer"),
            "{out}"
        );
    }

    // A technician acknowledges, as itself whatever the body says ...
    let tom = session(&app, "tom", "tech-pass-1");
    let (s, acked) = with_cookie(
        &app,
        "POST",
        &ack,
        &tom,
        Some(json!({"comment": "on it", "by": "somebody-else"})),
    );
    assert_eq!(s, 200, "{acked}");
    assert_eq!(acked["acknowledged_by"], "tom", "{acked}");
    // ... but creates no enrollment token and removes no user.
    let (s, _) = with_cookie(
        &app,
        "POST",
        "/api/v1/tokens",
        &tom,
        Some(json!({"tenant": "acme"})),
    );
    assert_eq!(s, 403);
    let (s, _) = with_cookie(&app, "DELETE", "/api/v1/users/vera", &tom, None);
    assert_eq!(s, 403);
    // A forged request from another origin with the technician's cookie.
    let (s, _, out) = http_raw(
        app.admin,
        "POST",
        &ack,
        &[
            ("Cookie", &tom),
            ("Origin", "http://attacker.example"),
            ("Content-Type", "application/json"),
        ],
        "{}",
    );
    assert_eq!(s, 403, "{out}");

    // An admin user manages users and tokens; the audit names it.
    let ada = session(&app, "ada", "admin-pass-1");
    let (s, out) = with_cookie(
        &app,
        "POST",
        "/api/v1/users",
        &ada,
        Some(json!({"name": "sam", "role": "viewer", "password": "sam-pass-12"})),
    );
    assert_eq!(s, 201, "{out}");
    let (s, out) = with_cookie(
        &app,
        "POST",
        "/api/v1/users",
        &ada,
        Some(json!({"name": "sam", "role": "viewer", "password": "sam-pass-12"})),
    );
    assert_eq!(s, 409, "{out}");
    let (s, out) = with_cookie(
        &app,
        "POST",
        "/api/v1/tokens",
        &ada,
        Some(json!({"tenant": "acme"})),
    );
    assert_eq!(s, 200, "{out}");
    let audit: Vec<Value> = app.api("/api/v1/audit").unwrap();
    let has = |action: &str, actor: &str, target: &str| {
        audit
            .iter()
            .any(|e| e["action"] == action && e["actor"] == actor && e["target"] == target)
    };
    assert!(has("user.add", "admin-token", "vera"), "{audit:?}");
    assert!(has("user.add", "ada", "sam"), "{audit:?}");
    assert!(has("token.create", "ada", "acme"), "{audit:?}");
    assert!(has("alert.ack", "tom", &alert_id.to_string()), "{audit:?}");

    // `outpost users list`: names, roles and open sessions.
    let list: Vec<Value> = serde_json::from_str(&app.cli_ok(&["users", "list", "--json"])).unwrap();
    let row = |n: &str| list.iter().find(|u| u["name"] == n).cloned().unwrap();
    assert_eq!(row("tom")["role"], "technician");
    assert_eq!(row("tom")["sessions"], 1);
    assert_eq!(row("sam")["sessions"], 0);
    assert!(list.iter().all(|u| u.get("password_hash").is_none()));
    let table = app.cli_ok(&["users", "list"]);
    assert!(
        table.contains("NAME") && table.contains("technician"),
        "{table}"
    );

    // Removing a user ends its sessions; a new password ends the old ones.
    let out = app.cli_ok(&["users", "remove", "tom"]);
    assert!(out.contains("1 session(s) ended"), "{out}");
    let (s, _) = with_cookie(&app, "GET", "/api/v1/devices", &tom, None);
    assert_eq!(s, 401);
    let o = users_cli(
        &app,
        &["passwd", "vera", "--password-stdin"],
        Some("viewer-pass-2"),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let (s, _) = with_cookie(&app, "GET", "/api/v1/devices", &vera, None);
    assert_eq!(s, 401);
    let (s, _, _) = login(&app, "vera", "viewer-pass-1");
    assert_eq!(s, 401, "the old password is gone");
    let vera = session(&app, "vera", "viewer-pass-2");
    // Logging out ends that session.
    let (s, _) = with_cookie(&app, "POST", "/api/v1/logout", &vera, None);
    assert_eq!(s, 200);
    let (s, _) = with_cookie(&app, "GET", "/api/v1/me", &vera, None);
    assert_eq!(s, 401);
    let o = users_cli(&app, &["remove", "nobody"], None);
    assert!(
        !o.status.success() && stderr(&o).contains("404"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn wrong_passwords_get_401_then_429_counted_and_audited() {
    let tmp = scratch("users-limits");
    let app = Appliance::start(tmp.path());
    add_user(&app, "ann", "admin", "right-pass-1");
    // The default burst: 5 failures per user name, then one a minute.
    for i in 0..5 {
        let (s, _, body) = login(&app, "ann", "wrong-pass");
        assert_eq!(s, 401, "attempt {i}: {body}");
    }
    let (s, head, body) = login(&app, "ann", "right-pass-1");
    assert_eq!(s, 429, "even the right password waits: {body}");
    let retry: u64 = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("retry-after:")
                .map(|v| v.trim().to_string())
        })
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no Retry-After in {head}"));
    assert!((1..=60).contains(&retry), "{retry}");
    // Another user is not locked out by ann's failures.
    add_user(&app, "bea", "viewer", "bea-pass-12");
    let (s, _, body) = login(&app, "bea", "bea-pass-12");
    assert_eq!(s, 200, "{body}");
    assert_eq!(app.metric("outpost_logins_total{result=\"failed\"}"), 5.0);
    assert_eq!(
        app.metric("outpost_logins_total{result=\"throttled\"}"),
        1.0
    );
    assert_eq!(app.metric("outpost_logins_total{result=\"ok\"}"), 1.0);
    let audit: Vec<Value> = app.api("/api/v1/audit").unwrap();
    let bursts: Vec<&Value> = audit
        .iter()
        .filter(|e| e["action"] == "login.throttled")
        .collect();
    assert_eq!(bursts.len(), 1, "{audit:?}");
    assert_eq!(bursts[0]["target"], "ann");
    assert_eq!(bursts[0]["actor"], "127.0.0.1");
}

#[test]
fn admin_token_callers_are_unchanged() {
    let tmp = scratch("users-token");
    let app = Appliance::start(tmp.path());
    // The CLI (bearer token from the data directory) works as before ...
    let token = app.token("acme", &[]);
    assert!(token.starts_with("opt_"), "{token}");
    let devices = app.cli_ok(&["devices", "--json"]);
    assert_eq!(devices.trim(), "[]");
    // ... the API answers the token as an admin, and `me` says so ...
    let me: Value = app.api("/api/v1/me").unwrap();
    assert_eq!(
        me,
        json!({"user": "admin-token", "role": "admin", "credential": "admin-token"})
    );
    let (s, out) = app.api_post("/api/v1/cache/verify", &json!({}));
    assert_eq!(s, 200, "{out}");
    // ... audits as before ...
    let audit: Vec<Value> = app.api("/api/v1/audit").unwrap();
    assert!(
        audit
            .iter()
            .any(|e| e["action"] == "token.create" && e["actor"] == "admin-token"),
        "{audit:?}"
    );
    // ... and a missing or wrong token is 401 as before, counted as before.
    let (s, _, _) = http_raw(app.admin, "GET", "/api/v1/devices", &[], "");
    assert_eq!(s, 401);
    let (s, _, _) = http_raw(
        app.admin,
        "GET",
        "/api/v1/cache/stats",
        &[("Authorization", "Bearer wrong")],
        "",
    );
    assert_eq!(s, 401);
    assert_eq!(
        app.metric("outpost_rejects_total{reason=\"api_missing_token\"}"),
        1.0
    );
    assert_eq!(
        app.metric("outpost_rejects_total{reason=\"api_bad_token\"}"),
        1.0
    );
}
