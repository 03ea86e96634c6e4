//! Central's HTTP API: JSON under `/api/v1/` (bearer API token or session
//! cookie, every query filtered by the caller's tenant and customers; an
//! object of another tenant answers 404), operator endpoints under
//! `/api/v1/admin/` (bearer `DATA/admin.token`), `/metrics` (per-site
//! series only with the operator token), `/healthz` and the web view at
//! `/`.
//!
//! Credentials: a caller grants only a subset of its own scope and never a
//! higher role ([`Principal::may_grant`]); creating an existing user is a
//! conflict, a password changes on its own route (the user itself, or a
//! tenant-wide admin) and ends the user's sessions; failed logins are
//! limited per user and per address ([`crate::login`]).

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use outpost_proto::{CustomerId, SiteId, TenantId};

use axum::Router;
use axum::extract::{ConnectInfo, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use outpost_web::{Json, Path, Query};
use serde::{Deserialize, Serialize};
use tracing::info_span;

use crate::Central;
use crate::model::{
    AlertRow, DeadLetter, DeviceRow, DeviceStatus, ForeignTenantRow, PatchComplianceRow, Principal,
    Role, SessionRecord, Severity, SiteRecord,
};
use crate::ops;
use crate::store::{CentralStoreError, DeviceFilter};

pub const SESSION_COOKIE: &str = "outpost_session";
/// The `Set-Cookie` value that ends the session cookie.
pub const CLEAR_SESSION_COOKIE: &str =
    "outpost_session=; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age=0";
const SESSION_TTL_MS: u64 = 12 * 3600 * 1000;

pub use outpost_web::ApiError;

type ApiResult<T> = Result<Json<T>, ApiError>;

fn internal(e: impl std::fmt::Display + 'static) -> ApiError {
    internal_error(e)
}

/// A failure to serve: 503 with the reason when the store is
/// unavailable for now ([`CentralStoreError::Unavailable`]: the database
/// is down, failing over or timed out), else 500.
pub(crate) fn internal_error<E: std::fmt::Display + 'static>(e: E) -> ApiError {
    let any: &dyn std::any::Any = &e;
    match any.downcast_ref::<CentralStoreError>() {
        Some(s @ CentralStoreError::Unavailable(_)) => ApiError::Unavailable(s.to_string()),
        _ => ApiError::Internal(e.to_string()),
    }
}

pub fn router(c: Arc<Central>) -> Router {
    let api = Router::new()
        .route("/me", get(me))
        .route("/logout", post(logout))
        .route("/summary", get(summary))
        .route("/customers", get(customers))
        .route("/sites", get(sites).post(create_site))
        .route("/sites/{site}", get(site))
        .route("/sites/{site}/devices/{device}", get(device))
        .route(
            "/sites/{site}/devices/{device}/metrics",
            get(metrics_history),
        )
        .route("/devices", get(devices))
        .route("/devices/tags", post(crate::api_tags::tag))
        .route("/devices/tags/{order}", get(crate::api_tags::show))
        .route("/alerts", get(alerts))
        .route("/patches/compliance", get(crate::api_patches::compliance))
        .route("/patches/cves", get(crate::api_patches::cves))
        .route("/patches/cves/{cve}", get(crate::api_patches::cve))
        .route("/patches/report", get(crate::api_patches::report))
        .route(
            "/sites/{site}/devices/{device}/patches",
            get(crate::api_patches::device),
        )
        .route("/sites/{site}/alerts/{alert}/ack", post(ack_alert))
        .route(
            "/commands",
            get(crate::api_commands::list).post(crate::api_commands::run),
        )
        .route(
            "/commands/bulk",
            get(crate::api_bulk::list).post(crate::api_bulk::create),
        )
        .route("/commands/bulk/{id}", get(crate::api_bulk::show))
        .route("/commands/bulk/{id}/cancel", post(crate::api_bulk::cancel))
        .route("/commands/{id}", get(crate::api_commands::show))
        .route("/commands/{id}/cancel", post(crate::api_commands::cancel))
        .route("/audit", get(crate::api_commands::audit))
        .route("/files", get(crate::api_files::list))
        .route("/files/push", post(crate::api_files::push))
        .route("/files/pull", post(crate::api_files::pull))
        .route("/files/{id}", get(crate::api_files::show))
        .route("/files/{id}/content", get(crate::api_files::content))
        .route("/files/{id}/cancel", post(crate::api_files::cancel))
        .route(
            "/scripts",
            get(crate::api_scripts::list).post(crate::api_scripts::add),
        )
        .route(
            "/scripts/{name}",
            get(crate::api_scripts::show).put(crate::api_scripts::edit),
        )
        .route("/scripts/{name}/run", post(crate::api_scripts::run))
        .route(
            "/approvals",
            get(crate::api_deploy::verdicts).post(crate::api_deploy::set_verdict),
        )
        .route(
            "/approval-rules",
            get(crate::api_deploy::rules).post(crate::api_deploy::add_rule),
        )
        .route(
            "/approval-rules/{id}",
            axum::routing::delete(crate::api_deploy::remove_rule),
        )
        .route(
            "/deployments",
            get(crate::api_deploy::list).post(crate::api_deploy::create),
        )
        .route("/deployments/{id}", get(crate::api_deploy::show))
        .route("/deployments/{id}/{action}", post(crate::api_deploy::act))
        .route(
            "/tokens",
            get(crate::api_credentials::list).post(create_token),
        )
        .route("/tokens/{id}/revoke", post(crate::api_credentials::revoke))
        .route("/users", post(create_user))
        .route(
            "/users/{name}",
            axum::routing::delete(crate::api_credentials::remove_user),
        )
        .route("/users/{name}/password", put(change_password))
        .route_layer(middleware::from_fn_with_state(c.clone(), authenticate));
    let admin = Router::new()
        .route("/sites", post(admin_site))
        .route("/tokens", post(admin_token))
        .route("/tokens/list", post(crate::api_credentials::admin_list))
        .route("/tokens/revoke", post(crate::api_credentials::admin_revoke))
        .route("/users", post(admin_user))
        .route(
            "/users/remove",
            post(crate::api_credentials::admin_remove_user),
        )
        .route_layer(middleware::from_fn_with_state(c.clone(), operator));
    Router::new()
        .nest("/api/v1/admin", admin)
        .route("/api/v1/login", post(login))
        .nest("/api/v1", api)
        .route("/metrics", get(prometheus))
        .route("/healthz", get(healthz).with_state(c.clone()))
        .merge(outpost_console::router(std::sync::Arc::new(
            outpost_console::Console {
                backend: std::sync::Arc::new(crate::console::CentralConsole { central: c.clone() }),
                csrf: c.csrf.clone(),
                metrics: c.console_metrics.clone(),
            },
        )))
        .fallback(outpost_web::not_found)
        .layer(middleware::from_fn_with_state(c.clone(), observe))
        .layer(middleware::from_fn(outpost_web::json_errors))
        .with_state(c)
}

fn secrets_equal(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

pub fn bearer(h: &HeaderMap) -> Option<&str> {
    h.get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
}

pub fn session_cookie(h: &HeaderMap) -> Option<String> {
    h.get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == SESSION_COOKIE)
        .map(|(_, v)| v.to_string())
}

/// How a request authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Credential {
    /// An API token (its principal is named `token:<id>`).
    Token,
    /// A user's login session.
    Session,
}

/// The principal of a request (API token or session), if any.
pub async fn principal_of(c: &Arc<Central>, h: &HeaderMap) -> Result<Option<Principal>, ApiError> {
    Ok(credential_of(c, h).await?.map(|(p, _)| p))
}

/// The principal of a request and how it authenticated.
async fn credential_of(
    c: &Arc<Central>,
    h: &HeaderMap,
) -> Result<Option<(Principal, Credential)>, ApiError> {
    Ok(credential_until(c, h).await?.map(|(p, cred, _)| (p, cred)))
}

/// [`credential_of`] with the time the credential ends, if fixed (a
/// session's expiry, a token's `ttl`): the console's live stream ends then
/// at the latest.
pub async fn credential_until(
    c: &Arc<Central>,
    h: &HeaderMap,
) -> Result<Option<(Principal, Credential, Option<u64>)>, ApiError> {
    if let Some(t) = bearer(h) {
        let hash = ops::sha256(t);
        let Some(r) = c.store.api_token(&hash).await.map_err(internal)? else {
            return Ok(None);
        };
        // Revoked or expired: 401 naming why (not "invalid"), counted.
        if let Some(why) = r.refusal(crate::now_ms()) {
            return Err(crate::api_credentials::refused(c, &r, &why));
        }
        return Ok(Some((r.principal, Credential::Token, r.life.expires_ms)));
    }
    if let Some(v) = session_cookie(h) {
        let hash = ops::sha256(&v);
        let now = crate::now_ms();
        return Ok(c
            .store
            .session(&hash)
            .await
            .map_err(internal)?
            .filter(|r| r.expires_ms > now)
            .map(|r| (r.principal, Credential::Session, Some(r.expires_ms))));
    }
    Ok(None)
}

async fn authenticate(State(c): State<Arc<Central>>, mut req: Request, next: Next) -> Response {
    match credential_of(&c, req.headers()).await {
        // A browser sends the session cookie with a request another origin
        // forges (a sibling subdomain, another port of the host: the same
        // *site*, so `SameSite=Strict` lets it through): a state-changing
        // request under a session must come from this origin, as the
        // console's forms and the appliance's API require.
        Ok(Some((_, Credential::Session)))
            if !matches!(*req.method(), Method::GET | Method::HEAD)
                && outpost_console::security::same_origin(req.headers()).is_err() =>
        {
            c.metrics
                .api_rejects
                .get_or_create(&crate::metrics::ReasonLabel {
                    reason: "api_cross_origin".into(),
                })
                .inc();
            ApiError::Forbidden(
                "cross-origin request refused: a request under a login session must come from this console's origin (scripts use `Authorization: Bearer <token>`)".into(),
            )
            .into_response()
        }
        Ok(Some((p, cred))) => {
            req.extensions_mut().insert(p);
            req.extensions_mut().insert(cred);
            next.run(req).await
        }
        Ok(None) => ApiError::Unauthorized(
            "missing or invalid credentials: send `Authorization: Bearer <token>` (outpost-central token create) or log in".into(),
        )
        .into_response(),
        Err(e) => e.into_response(),
    }
}

/// How long `/healthz` waits for the store's answer.
pub const HEALTH_CHECK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

/// `GET /healthz`: 200 `ok` when the store answers (always with
/// RocksDB), else 503 with the reason (PostgreSQL down, failing over,
/// timed out), so a load balancer sends requests to another instance.
async fn healthz(State(c): State<Arc<Central>>) -> Response {
    let reason = match tokio::time::timeout(HEALTH_CHECK_TIMEOUT, c.store.check()).await {
        Ok(Ok(())) => return "ok\n".into_response(),
        Ok(Err(e)) => e.to_string(),
        Err(_) => format!(
            "central storage unavailable: no answer within {} s",
            HEALTH_CHECK_TIMEOUT.as_secs()
        ),
    };
    tracing::warn!(reason = %reason, "health check failed");
    (StatusCode::SERVICE_UNAVAILABLE, format!("{reason}\n")).into_response()
}

/// Whether the request bears the operator token (`DATA/admin.token`).
fn is_operator(c: &Central, h: &HeaderMap) -> bool {
    bearer(h).is_some_and(|t| secrets_equal(t.as_bytes(), c.keys.admin_token.as_bytes()))
}

async fn operator(State(c): State<Arc<Central>>, req: Request, next: Next) -> Response {
    match is_operator(&c, req.headers()) {
        true => next.run(req).await,
        false => ApiError::Unauthorized(
            "operator endpoints need `Authorization: Bearer <DATA/admin.token>`".into(),
        )
        .into_response(),
    }
}

async fn observe(State(c): State<Arc<Central>>, req: Request, next: Next) -> Response {
    let span = |method: &str, route: &str| info_span!("http", %method, %route);
    outpost_web::observe(&c.metrics.api_requests, span, req, next).await
}

/// `/metrics`: no credentials needed, no tenant or site named; with the
/// operator token, the per-site series too.
async fn prometheus(State(c): State<Arc<Central>>, h: HeaderMap) -> Response {
    outpost_web::prometheus_response(c.metrics.encode(is_operator(&c, &h)))
}

pub fn require(p: &Principal, min: Role) -> Result<(), ApiError> {
    let ok = match min {
        Role::Viewer => true,
        Role::Technician => matches!(p.role, Role::Admin | Role::Technician),
        Role::Admin => p.role == Role::Admin,
    };
    if ok {
        Ok(())
    } else {
        Err(ApiError::Forbidden(format!(
            "role {} may not do this (needs {})",
            p.role.as_str(),
            min.as_str()
        )))
    }
}

// ---- login ----

#[derive(Debug, Deserialize, Serialize)]
pub struct Login {
    pub tenant: TenantId,
    pub username: String,
    pub password: String,
}

/// The client address of a request, for the login limits: the peer, or
/// behind a trusted proxy the last `X-Forwarded-For` address that is not a
/// trusted proxy. `None` without a connection (router tests).
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub Option<IpAddr>);

impl FromRequestParts<Arc<Central>> for ClientAddr {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        c: &Arc<Central>,
    ) -> Result<Self, Self::Rejection> {
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ci| ci.0.ip());
        Ok(ClientAddr(client_addr(
            peer,
            &parts.headers,
            &c.limits.trusted_proxies,
        )))
    }
}

/// See [`ClientAddr`].
pub fn client_addr(peer: Option<IpAddr>, h: &HeaderMap, trusted: &[IpAddr]) -> Option<IpAddr> {
    let peer = peer?;
    if !trusted.contains(&peer) {
        return Some(peer);
    }
    let forwarded: Vec<IpAddr> = h
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|a| a.trim().parse().ok())
        .collect();
    Some(
        forwarded
            .into_iter()
            .rev()
            .find(|a| !trusted.contains(a))
            .unwrap_or(peer),
    )
}

async fn login(
    State(c): State<Arc<Central>>,
    ClientAddr(addr): ClientAddr,
    Json(l): Json<Login>,
) -> Response {
    login_response(&c, l, addr).await
}

/// An error answer with `Retry-After`.
fn retry_after(status: StatusCode, secs: u64, message: String) -> Response {
    (
        status,
        [(header::RETRY_AFTER, secs.to_string())],
        Json(serde_json::json!({ "error": message })),
    )
        .into_response()
}

/// Checks a login and answers with the session cookie, 401, 429 (too many
/// failures for the user name or the address, with `Retry-After`) or 503
/// (password checks busy).
pub async fn login_response(c: &Arc<Central>, l: Login, addr: Option<IpAddr>) -> Response {
    // Neither a tenant nor a user name holds a `/` (`ops::check_name`).
    let key = format!("{}/{}", l.tenant, l.username);
    // Until its failure is recorded, no other attempt for this user is
    // checked: concurrent guesses cannot all pass the check at once.
    let _turn = c.login_turns.turn(&key).await;
    let now = crate::now_ms();
    let limited = match c.login_check(&key, addr, now).await.map_err(internal) {
        Ok(l) => l,
        Err(e) => return e.into_response(),
    };
    if let Err(wait) = limited {
        c.metrics.logins_throttled.inc();
        return retry_after(
            StatusCode::TOO_MANY_REQUESTS,
            wait.secs(),
            format!(
                "too many failed logins for this user or address; retry in {} s",
                wait.secs()
            ),
        );
    }
    let unauthorized =
        || ApiError::Unauthorized("wrong tenant, user name or password".into()).into_response();
    // A name no user can have: no lookup, no hash, nothing kept for it.
    if ops::check_name("tenant", &l.tenant).is_err()
        || ops::check_name("user name", &l.username).is_err()
    {
        c.metrics.logins_failed.inc();
        c.login_failed(None, addr, now).await;
        return unauthorized();
    }
    let user = match c.store.user(&l.tenant, &l.username).await.map_err(internal) {
        Ok(u) => u,
        Err(e) => return e.into_response(),
    };
    // The same argon2 work whether the user exists or not.
    let checked = c
        .passwords
        .verify(
            l.password.clone(),
            user.as_ref().map(|u| u.password_hash.clone()),
        )
        .await;
    let user = match checked {
        Err(busy) => {
            c.metrics.password_checks_busy.inc();
            return retry_after(StatusCode::SERVICE_UNAVAILABLE, 1, busy.to_string());
        }
        Ok(true) => user,
        Ok(false) => None,
    };
    let Some(user) = user else {
        c.metrics.logins_failed.inc();
        c.login_failed(Some(&key), addr, crate::now_ms()).await;
        return unauthorized();
    };
    c.login_succeeded(&key).await;
    let secret = hex::encode(rand::random::<[u8; 32]>());
    let rec = SessionRecord {
        principal: Principal {
            tenant: user.tenant.clone(),
            role: user.role,
            customers: user.customers.clone(),
            name: user.name.clone(),
        },
        expires_ms: crate::now_ms() + SESSION_TTL_MS,
    };
    let hash = ops::sha256(&secret);
    if let Err(e) = c.store.put_session(&hash, &rec).await.map_err(internal) {
        return e.into_response();
    }
    // A password changed while this one was checked ends this session too.
    match c.store.user(&user.tenant, &user.name).await {
        Ok(Some(now_user)) if now_user.password_hash == user.password_hash => {}
        _ => {
            let _ = c.store.delete_session(&hash).await;
            return unauthorized();
        }
    }
    let cookie = format!(
        "{SESSION_COOKIE}={secret}; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age={}",
        SESSION_TTL_MS / 1000
    );
    (
        StatusCode::OK,
        [(header::SET_COOKIE, cookie)],
        Json(serde_json::json!({"tenant": user.tenant, "user": user.name, "role": user.role})),
    )
        .into_response()
}

async fn logout(State(c): State<Arc<Central>>, headers: HeaderMap) -> Response {
    if let Some(v) = session_cookie(&headers) {
        let hash = ops::sha256(&v);
        if let Err(e) = c.store.delete_session(&hash).await.map_err(internal) {
            return e.into_response();
        }
    }
    (
        StatusCode::OK,
        [(header::SET_COOKIE, CLEAR_SESSION_COOKIE)],
        Json(serde_json::json!({"ok": true})),
    )
        .into_response()
}

async fn me(axum::Extension(p): axum::Extension<Principal>) -> Json<Principal> {
    Json(p)
}

// ---- views ----

/// A site as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SiteOut {
    pub site_id: SiteId,
    pub name: String,
    pub customer: CustomerId,
    pub joined: bool,
    /// `connected`, `disconnected` or `never`.
    pub link: String,
    /// True when no batch arrived for 3 intervals (or never).
    pub stale: bool,
    pub last_batch_ms: Option<u64>,
    /// Now minus the appliance time of the newest applied batch.
    pub lag_ms: Option<u64>,
    pub applied_up_to: u64,
    pub batches_applied: u64,
    pub interval_ms: u64,
    pub dropped_rollups: u64,
    /// Devices the site reports enrolled under a tenant other than this
    /// one (a mistyped `--tenant` at enrollment, or a site created for the
    /// wrong tenant), per tenant; empty when none. They are listed under
    /// this site's tenant all the same.
    pub tenant_mismatch: Vec<ForeignTenantRow>,
    /// Batches of this site refused for good, ever (their numbers count as
    /// applied in `applied_up_to`: the sequence closes over them).
    #[serde(default)]
    pub dead_lettered: u64,
    /// The newest of them (seq, reason, message, at_ms), oldest first.
    #[serde(default)]
    pub dead_letters: Vec<DeadLetter>,
}

pub fn site_out(c: &Central, s: &SiteRecord, now: u64) -> SiteOut {
    let connected = c.is_connected(&s.tenant, &s.site_id);
    let lag = (s.last_batch_created_ms > 0).then(|| now.saturating_sub(s.last_batch_created_ms));
    let stale = match lag {
        None => true,
        Some(l) => l > 3 * s.interval_ms.max(1_000),
    };
    SiteOut {
        site_id: s.site_id.clone(),
        name: s.name.clone(),
        customer: s.customer.clone(),
        joined: s.joined_ms > 0,
        link: if connected {
            "connected".into()
        } else if s.joined_ms > 0 {
            "disconnected".into()
        } else {
            "never".into()
        },
        stale,
        last_batch_ms: (s.last_batch_ms > 0).then_some(s.last_batch_ms),
        lag_ms: lag,
        applied_up_to: s.applied_up_to,
        batches_applied: s.batches_applied,
        interval_ms: s.interval_ms,
        dropped_rollups: s.dropped_rollups,
        tenant_mismatch: s.tenant_mismatch.tenants.clone(),
        dead_lettered: s.dead_letters.total,
        dead_letters: s.dead_letters.recent.clone(),
    }
}

pub async fn visible_sites(c: &Arc<Central>, p: &Principal) -> Result<Vec<SiteRecord>, ApiError> {
    Ok(c.store
        .sites(&p.tenant)
        .await
        .map_err(internal)?
        .into_iter()
        .filter(|s| p.sees_customer(&s.customer))
        .collect())
}

pub async fn one_site(
    c: &Arc<Central>,
    p: &Principal,
    site: &SiteId,
) -> Result<SiteRecord, ApiError> {
    c.store
        .site(&p.tenant, site)
        .await
        .map_err(internal)?
        .filter(|s| p.sees_customer(&s.customer))
        .ok_or_else(|| ApiError::NotFound(format!("no site {site}")))
}

async fn sites(
    State(c): State<Arc<Central>>,
    axum::Extension(p): axum::Extension<Principal>,
) -> ApiResult<Vec<SiteOut>> {
    let now = crate::now_ms();
    Ok(Json(
        visible_sites(&c, &p)
            .await?
            .iter()
            .map(|s| site_out(&c, s, now))
            .collect(),
    ))
}

async fn site(
    State(c): State<Arc<Central>>,
    axum::Extension(p): axum::Extension<Principal>,
    Path(site): Path<SiteId>,
) -> ApiResult<SiteOut> {
    let s = one_site(&c, &p, &site).await?;
    Ok(Json(site_out(&c, &s, crate::now_ms())))
}

#[derive(Debug, Deserialize)]
pub struct CreateSite {
    pub customer: CustomerId,
    pub site: String,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct SiteCreated {
    pub site_id: SiteId,
    pub token: String,
    pub ca_fingerprint: String,
}

async fn create_site(
    State(c): State<Arc<Central>>,
    axum::Extension(p): axum::Extension<Principal>,
    Json(r): Json<CreateSite>,
) -> Result<(StatusCode, Json<SiteCreated>), ApiError> {
    require(&p, Role::Admin)?;
    if !p.sees_customer(&r.customer) {
        return Err(ApiError::Forbidden(format!(
            "not allowed for customer {}",
            r.customer
        )));
    }
    let req = ops::AddSite {
        tenant: p.tenant.clone(),
        customer: r.customer,
        site: r.site,
    };
    let added = ops::add_site(c.store.as_ref(), &req, crate::now_ms()).await?;
    Ok((
        StatusCode::CREATED,
        Json(SiteCreated {
            site_id: added.site_id,
            token: added.token,
            ca_fingerprint: c.keys.ca.fingerprint().to_string(),
        }),
    ))
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct Counts {
    pub devices: u64,
    pub online: u64,
    pub offline: u64,
    pub pending: u64,
    /// Devices whose certificate was revoked (not counted offline).
    #[serde(default)]
    pub revoked: u64,
    /// Devices with a firing critical alert.
    pub critical: u64,
    /// Firing alerts (pending ones are not: nobody was told of them yet).
    pub alerts_firing: u64,
    /// Pending alerts: the condition holds, waiting for the rule's `for`.
    #[serde(default)]
    pub alerts_pending: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SiteSummary {
    pub site: SiteOut,
    pub counts: Counts,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CustomerSummary {
    pub customer: CustomerId,
    pub counts: Counts,
    pub sites: Vec<SiteSummary>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FleetSummary {
    pub totals: Counts,
    pub stale_sites: u64,
    pub customers: Vec<CustomerSummary>,
}

/// Aggregates the fleet server-side from the store's per-site counts
/// (the RocksDB backend keeps them in its fleet index: no scan of the
/// devices per request), and the firing alerts per severity.
pub async fn fleet_overview(
    c: &Arc<Central>,
    p: &Principal,
) -> Result<(FleetSummary, Vec<(Severity, u64)>), ApiError> {
    let sites = visible_sites(c, p).await?;
    let fc = c
        .store
        .fleet_counts(&p.tenant, &p.customers)
        .await
        .map_err(internal)?;
    let now = crate::now_ms();
    let mut customers: BTreeMap<CustomerId, CustomerSummary> = BTreeMap::new();
    let mut totals = Counts::default();
    let mut stale = 0;
    for s in &sites {
        let so = site_out(c, s, now);
        if so.stale && so.joined {
            stale += 1;
        }
        let counts = fc
            .per_site
            .get(&s.site_id)
            .map(|x| Counts {
                devices: x.devices,
                online: x.online,
                offline: x.offline,
                pending: x.pending,
                revoked: x.revoked,
                critical: x.critical,
                alerts_firing: x.alerts_firing,
                alerts_pending: x.alerts_pending,
            })
            .unwrap_or_default();
        let cs = customers
            .entry(s.customer.clone())
            .or_insert_with(|| CustomerSummary {
                customer: s.customer.clone(),
                counts: Counts::default(),
                sites: Vec::new(),
            });
        for (acc, x) in [(&mut cs.counts, &counts), (&mut totals, &counts)] {
            acc.devices += x.devices;
            acc.online += x.online;
            acc.offline += x.offline;
            acc.pending += x.pending;
            acc.revoked += x.revoked;
            acc.critical += x.critical;
            acc.alerts_firing += x.alerts_firing;
            acc.alerts_pending += x.alerts_pending;
        }
        cs.sites.push(SiteSummary { site: so, counts });
    }
    Ok((
        FleetSummary {
            totals,
            stale_sites: stale,
            customers: customers.into_values().collect(),
        },
        fc.firing_by_severity,
    ))
}

/// The fleet summary of `/api/v1/summary` ([`fleet_overview`]).
pub async fn fleet_summary(c: &Arc<Central>, p: &Principal) -> Result<FleetSummary, ApiError> {
    Ok(fleet_overview(c, p).await?.0)
}

async fn summary(
    State(c): State<Arc<Central>>,
    axum::Extension(p): axum::Extension<Principal>,
) -> ApiResult<FleetSummary> {
    Ok(Json(fleet_summary(&c, &p).await?))
}

async fn customers(
    State(c): State<Arc<Central>>,
    axum::Extension(p): axum::Extension<Principal>,
) -> ApiResult<Vec<CustomerSummary>> {
    Ok(Json(fleet_summary(&c, &p).await?.customers))
}

#[derive(Debug, Deserialize, Default)]
pub struct DevicesQuery {
    pub site: Option<SiteId>,
    pub customer: Option<CustomerId>,
    pub status: Option<String>,
    /// Only devices with this tag (exact), as their site last sent it.
    pub tag: Option<String>,
    pub after: Option<String>,
    pub limit: Option<usize>,
}

/// A device as the API shows it: the stored row and, beside its fields,
/// the IPs and tags its site last sent (empty when none).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceJson {
    #[serde(flatten)]
    pub row: DeviceRow,
    #[serde(default)]
    pub ips: Vec<String>,
    #[serde(default)]
    pub tags: Vec<String>,
}

impl std::ops::Deref for DeviceJson {
    type Target = DeviceRow;
    fn deref(&self) -> &DeviceRow {
        &self.row
    }
}

/// Rows with their IPs and tags, read for the whole page at once
/// ([`crate::store::FleetStore::device_facts_many`]: a page is at most
/// 1,000 devices).
async fn with_facts(
    c: &Arc<Central>,
    tenant: &TenantId,
    rows: Vec<DeviceRow>,
) -> Result<Vec<DeviceJson>, ApiError> {
    let keys: Vec<(SiteId, String)> = rows
        .iter()
        .map(|r| (r.site_id.clone(), r.device.clone()))
        .collect();
    let facts = c
        .store
        .device_facts_many(tenant, &keys)
        .await
        .map_err(internal)?;
    if facts.len() != rows.len() {
        return Err(internal(
            "the store answered facts for fewer devices than asked",
        ));
    }
    Ok(rows
        .into_iter()
        .zip(facts)
        .map(|(row, f)| DeviceJson {
            row,
            ips: f.ips,
            tags: f.tags,
        })
        .collect())
}

#[derive(Debug, Serialize, Deserialize)]
pub struct DevicePage {
    pub devices: Vec<DeviceJson>,
    /// Pass as `after` for the next page.
    pub next: Option<String>,
}

pub async fn device_page(
    c: &Arc<Central>,
    p: &Principal,
    q: DevicesQuery,
) -> Result<DevicePage, ApiError> {
    let limit = outpost_web::limit(q.limit, 100, 1000)?;
    if let Some(s) = &q.status
        && !DeviceStatus::ALL.iter().any(|d| d.as_str() == s)
    {
        let all: Vec<&str> = DeviceStatus::ALL.iter().map(|d| d.as_str()).collect();
        return Err(ApiError::BadRequest(format!(
            "status {s:?}: use one of {}",
            all.join(", ")
        )));
    }
    if let Some(s) = &q.site {
        one_site(c, p, s).await?;
    }
    let f = DeviceFilter {
        site_id: q.site,
        customer: q.customer,
        customers_allowed: p.customers.clone(),
        status: q.status,
        tag: q.tag.filter(|t| !t.is_empty()),
        after: q.after,
        limit,
    };
    let page = c.store.devices(&p.tenant, &f).await.map_err(|e| match e {
        CentralStoreError::InvalidCursor(m) => ApiError::BadRequest(format!("after: {m}")),
        e => internal(e),
    })?;
    Ok(DevicePage {
        devices: with_facts(c, &p.tenant, page.items).await?,
        next: page.next,
    })
}

async fn devices(
    State(c): State<Arc<Central>>,
    axum::Extension(p): axum::Extension<Principal>,
    Query(q): Query<DevicesQuery>,
) -> ApiResult<DevicePage> {
    Ok(Json(device_page(&c, &p, q).await?))
}

#[derive(Debug, Serialize, Deserialize)]
pub struct DeviceDetail {
    pub device: DeviceJson,
    pub site: SiteOut,
    pub alerts: Vec<AlertRow>,
    /// The device's patch compliance as its site last reported it (`null`
    /// when the site sent none).
    #[serde(default)]
    pub patches: Option<PatchComplianceRow>,
}

pub async fn device_detail(
    c: &Arc<Central>,
    p: &Principal,
    site: &SiteId,
    device: &str,
) -> Result<DeviceDetail, ApiError> {
    let s = one_site(c, p, site).await?;
    let d = c
        .store
        .device(&p.tenant, site, device)
        .await
        .map_err(internal)?;
    let alerts: Vec<AlertRow> = c
        .store
        .alerts(&p.tenant, Some(site))
        .await
        .map_err(internal)?
        .into_iter()
        .filter(|a| a.device.as_deref() == Some(device))
        .collect();
    let d = d.ok_or_else(|| ApiError::NotFound(format!("no device {device} at site {site}")))?;
    let patches = c
        .store
        .device_patch_compliance(&p.tenant, site, device)
        .await
        .map_err(internal)?;
    let device = with_facts(c, &p.tenant, vec![d])
        .await?
        .pop()
        .ok_or_else(|| internal("the device just read is missing"))?;
    Ok(DeviceDetail {
        device,
        site: site_out(c, &s, crate::now_ms()),
        alerts,
        patches,
    })
}

async fn device(
    State(c): State<Arc<Central>>,
    axum::Extension(p): axum::Extension<Principal>,
    Path((site, device)): Path<(SiteId, String)>,
) -> ApiResult<DeviceDetail> {
    Ok(Json(device_detail(&c, &p, &site, &device).await?))
}

#[derive(Debug, Deserialize)]
pub struct HistoryQuery {
    pub series: Option<String>,
    #[serde(default)]
    pub label: String,
    pub from: Option<u64>,
    pub to: Option<u64>,
    pub limit: Option<usize>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct RollupPoint {
    pub bucket_start_ms: u64,
    pub min: f64,
    pub max: f64,
    pub avg: f64,
    pub count: u64,
    pub last: f64,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct History {
    pub series: String,
    pub label: String,
    pub points: Vec<RollupPoint>,
}

pub async fn history(
    c: &Arc<Central>,
    p: &Principal,
    site: &SiteId,
    device: &str,
    q: HistoryQuery,
) -> Result<History, ApiError> {
    let limit = outpost_web::limit(q.limit, 10_000, 100_000)?;
    one_site(c, p, site).await?;
    let series = q.series.filter(|s| !s.is_empty()).ok_or_else(|| {
        ApiError::BadRequest("query parameter `series` is required (e.g. series=cpu)".into())
    })?;
    if c.store
        .device(&p.tenant, site, device)
        .await
        .map_err(internal)?
        .is_none()
    {
        return Err(ApiError::NotFound(format!(
            "no device {device} at site {site}"
        )));
    }
    let query = crate::store::RollupQuery {
        site_id: site.clone(),
        device: device.to_string(),
        series: series.clone(),
        label: q.label.clone(),
        from_ms: q.from.unwrap_or(0),
        to_ms: q.to.unwrap_or(u64::MAX),
        limit,
    };
    let rows = c.store.rollups(&p.tenant, &query).await.map_err(internal)?;
    Ok(History {
        series,
        label: q.label,
        points: rows
            .into_iter()
            .map(|(b, r)| RollupPoint {
                bucket_start_ms: b,
                min: r.rollup.min,
                max: r.rollup.max,
                avg: if r.rollup.count > 0 {
                    r.rollup.sum / r.rollup.count as f64
                } else {
                    0.0
                },
                count: r.rollup.count,
                last: r.rollup.last,
            })
            .collect(),
    })
}

async fn metrics_history(
    State(c): State<Arc<Central>>,
    axum::Extension(p): axum::Extension<Principal>,
    Path((site, device)): Path<(SiteId, String)>,
    Query(q): Query<HistoryQuery>,
) -> ApiResult<History> {
    Ok(Json(history(&c, &p, &site, &device, q).await?))
}

#[derive(Debug, Deserialize)]
pub struct AlertsQuery {
    pub site: Option<SiteId>,
    /// Only open alerts: firing and pending (not resolved nor cleared).
    #[serde(default)]
    pub active: bool,
    /// The newest this many (default and maximum [`MAX_ALERTS`]).
    pub limit: Option<usize>,
}

/// Alerts one `GET /api/v1/alerts` returns at most (newest first).
pub const MAX_ALERTS: usize = 5000;

pub async fn alert_list(
    c: &Arc<Central>,
    p: &Principal,
    q: AlertsQuery,
) -> Result<Vec<AlertRow>, ApiError> {
    if let Some(s) = &q.site {
        one_site(c, p, s).await?;
    }
    let filter = crate::store::AlertFilter {
        site: q.site.clone(),
        customers_allowed: p.customers.clone(),
        states: if q.active {
            crate::store::AlertStates::Open
        } else {
            crate::store::AlertStates::All
        },
        limit: q.limit.unwrap_or(MAX_ALERTS).clamp(1, MAX_ALERTS),
        ..Default::default()
    };
    let page = c
        .store
        .alert_page(&p.tenant, &filter)
        .await
        .map_err(internal)?;
    Ok(page.rows)
}

async fn alerts(
    State(c): State<Arc<Central>>,
    axum::Extension(p): axum::Extension<Principal>,
    Query(q): Query<AlertsQuery>,
) -> ApiResult<Vec<AlertRow>> {
    Ok(Json(alert_list(&c, &p, q).await?))
}

/// The optional body of an acknowledgement.
#[derive(Debug, Default, Deserialize)]
pub struct AckBody {
    #[serde(default)]
    pub comment: String,
}

/// Acknowledges an alert (technician or admin), with an optional
/// `{"comment": "..."}` kept in the alert's history.
async fn ack_alert(
    State(c): State<Arc<Central>>,
    axum::Extension(p): axum::Extension<Principal>,
    Path((site, alert)): Path<(SiteId, u64)>,
    body: Option<Json<AckBody>>,
) -> ApiResult<serde_json::Value> {
    let comment = body.map(|Json(b)| b.comment).unwrap_or_default();
    let comment = comment.trim();
    if comment.chars().count() > outpost_console::backend::MAX_COMMENT_CHARS {
        return Err(ApiError::BadRequest(format!(
            "comment: at most {} characters",
            outpost_console::backend::MAX_COMMENT_CHARS
        )));
    }
    crate::console::acknowledge(&c, &p, &site, alert, comment).await?;
    Ok(Json(
        serde_json::json!({ "acked": true, "alert_id": alert, "by": p.name }),
    ))
}

#[derive(Debug, Deserialize)]
pub struct TenantToken {
    pub role: Role,
    #[serde(default)]
    pub customers: Vec<CustomerId>,
    /// Lifetime (see [`ops::CreateToken::ttl`]); none: no expiry.
    #[serde(default)]
    pub ttl: Option<String>,
}

/// `p` may grant `role` over `customers` ([`Principal::may_grant`]), else 403.
fn check_grant(p: &Principal, role: Role, customers: &[CustomerId]) -> Result<(), ApiError> {
    p.may_grant(role, customers).map_err(ApiError::Forbidden)
}

async fn create_token(
    State(c): State<Arc<Central>>,
    axum::Extension(p): axum::Extension<Principal>,
    Json(r): Json<TenantToken>,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    require(&p, Role::Admin)?;
    check_grant(&p, r.role, &r.customers)?;
    let req = ops::CreateToken {
        tenant: p.tenant.clone(),
        role: r.role,
        customers: r.customers,
        ttl: r.ttl,
    };
    let t = ops::create_token_by(c.store.as_ref(), &req, &p.name, crate::now_ms()).await?;
    Ok((StatusCode::CREATED, Json(serde_json::json!(t))))
}

#[derive(Debug, Deserialize)]
pub struct TenantUser {
    pub name: String,
    pub role: Role,
    #[serde(default)]
    pub customers: Vec<CustomerId>,
    pub password: String,
}

/// Creates a user (admin, within its own scope); an existing name is 409.
async fn create_user(
    State(c): State<Arc<Central>>,
    axum::Extension(p): axum::Extension<Principal>,
    Json(r): Json<TenantUser>,
) -> Result<StatusCode, ApiError> {
    require(&p, Role::Admin)?;
    check_grant(&p, r.role, &r.customers)?;
    let req = ops::AddUser {
        tenant: p.tenant.clone(),
        name: r.name,
        role: r.role,
        customers: r.customers,
        password: r.password,
    };
    if c.store
        .user(&req.tenant, &req.name)
        .await
        .map_err(internal)?
        .is_some()
    {
        return Err(user_exists(&req.name));
    }
    let rec = ops::user_record(&req, crate::now_ms(), &c.passwords).await?;
    c.store.create_user(&rec).await.map_err(|e| match e {
        CentralStoreError::Conflict(_) => user_exists(&req.name),
        e => internal(e),
    })?;
    Ok(StatusCode::CREATED)
}

fn user_exists(name: &str) -> ApiError {
    ApiError::Conflict(format!(
        "user {name} exists; its password changes with PUT /api/v1/users/{name}/password"
    ))
}

#[derive(Debug, Deserialize)]
pub struct NewPassword {
    pub password: String,
    /// The password now: required when users change their own.
    #[serde(default)]
    pub current_password: Option<String>,
}

/// Changes a user's password: the user itself (logged in, giving the
/// current password) or a tenant-wide admin. Every session of the user
/// ends.
async fn change_password(
    State(c): State<Arc<Central>>,
    axum::Extension(p): axum::Extension<Principal>,
    axum::Extension(cred): axum::Extension<Credential>,
    Path(name): Path<String>,
    Json(r): Json<NewPassword>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let itself = cred == Credential::Session && p.name == name;
    let tenant_admin = p.role == Role::Admin && p.is_tenant_wide();
    if !itself && !tenant_admin {
        return Err(ApiError::Forbidden(
            "only the user itself or an admin of the whole tenant may change a password".into(),
        ));
    }
    ops::check_password(&r.password)?;
    if itself {
        let current = r.current_password.ok_or_else(|| {
            ApiError::BadRequest("`current_password` is required to change your own".into())
        })?;
        let user = c.store.user(&p.tenant, &name).await.map_err(internal)?;
        let ok = c
            .passwords
            .verify(current, user.map(|u| u.password_hash))
            .await
            .map_err(|e| ApiError::Internal(e.to_string()))?;
        if !ok {
            return Err(ApiError::Forbidden("the current password is wrong".into()));
        }
    }
    let hash = c
        .passwords
        .hash(r.password)
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let ended = c
        .store
        .set_password(&p.tenant, &name, &hash)
        .await
        .map_err(internal)?
        .ok_or_else(|| ApiError::NotFound(format!("no user {name}")))?;
    tracing::info!(tenant = %p.tenant, user = %name, by = %p.name, sessions_ended = ended, "password changed");
    Ok(Json(
        serde_json::json!({ "user": name, "sessions_ended": ended }),
    ))
}

// ---- operator ----

async fn admin_site(
    State(c): State<Arc<Central>>,
    Json(r): Json<ops::AddSite>,
) -> Result<(StatusCode, Json<SiteCreated>), ApiError> {
    let added = ops::add_site(c.store.as_ref(), &r, crate::now_ms()).await?;
    Ok((
        StatusCode::CREATED,
        Json(SiteCreated {
            site_id: added.site_id,
            token: added.token,
            ca_fingerprint: c.keys.ca.fingerprint().to_string(),
        }),
    ))
}

async fn admin_token(
    State(c): State<Arc<Central>>,
    Json(r): Json<ops::CreateToken>,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    let t = ops::create_token_by(c.store.as_ref(), &r, ops::OPERATOR, crate::now_ms()).await?;
    Ok((StatusCode::CREATED, Json(serde_json::json!(t))))
}

/// The operator adds a user or replaces one (its sessions end).
async fn admin_user(
    State(c): State<Arc<Central>>,
    Json(r): Json<ops::AddUser>,
) -> Result<StatusCode, ApiError> {
    ops::add_user(c.store.as_ref(), &r, crate::now_ms(), &c.passwords).await?;
    Ok(StatusCode::CREATED)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::AlertState;

    fn row(site: &str, id: u64, state: AlertState, severity: Severity, customer: &str) -> AlertRow {
        AlertRow {
            tenant: "msp".into(),
            site_id: site.into(),
            customer: customer.into(),
            alert_id: id,
            device: Some(format!("{id:016x}")),
            rule: "cpu_high".into(),
            severity,
            state,
            at_ms: 1,
            first_ms: 1,
            message: String::new(),
            value: None,
            transitions: 1,
            acked_by: None,
            acked_ms: 0,
        }
    }

    #[test]
    fn the_client_address_is_the_peer_unless_it_is_a_trusted_proxy() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", "203.0.113.9, 10.0.0.2".parse().unwrap());
        let proxy = [ip("127.0.0.1"), ip("10.0.0.2")];
        // An untrusted peer's header is ignored.
        assert_eq!(
            client_addr(Some(ip("198.51.100.1")), &h, &proxy),
            Some(ip("198.51.100.1"))
        );
        // Behind trusted proxies: the last address that is not one of them.
        assert_eq!(
            client_addr(Some(ip("127.0.0.1")), &h, &proxy),
            Some(ip("203.0.113.9"))
        );
        // No header: the proxy itself.
        let none = HeaderMap::new();
        assert_eq!(
            client_addr(Some(ip("127.0.0.1")), &none, &proxy),
            Some(ip("127.0.0.1"))
        );
        assert_eq!(client_addr(None, &h, &proxy), None);
        assert_eq!(
            client_addr(Some(ip("127.0.0.1")), &h, &[]),
            Some(ip("127.0.0.1"))
        );
    }

    #[test]
    fn fleet_counts_keep_pending_alerts_apart_from_firing_ones() {
        use AlertState::*;
        let crit = Severity::Critical;
        let alerts = [
            row("s-1", 1, Firing, crit, "dental"),
            row("s-1", 2, Pending, crit, "dental"),
            row("s-1", 3, Pending, Severity::Warning, "dental"),
            row("s-1", 4, Cleared, crit, "dental"),
            row("s-1", 5, Resolved, crit, "dental"),
            row("s-2", 6, Pending, crit, "dental"),
            row("s-3", 7, Firing, crit, "vet"),
        ];
        let p = Principal {
            tenant: "msp".into(),
            role: Role::Viewer,
            customers: vec!["dental".into()],
            name: "alice".into(),
        };
        let mut ix = crate::fleet_index::FleetIndex::default();
        for a in &alerts {
            ix.upsert_alert(a);
        }
        let mut with_device = |site: &str, id: u64, customer: &str| {
            ix.upsert_device(&DeviceRow {
                tenant: "msp".into(),
                site_id: site.into(),
                device: format!("{id:016x}"),
                customer: customer.into(),
                hostname: String::new(),
                os: String::new(),
                agent_version: String::new(),
                enrolled_at_ms: 0,
                revoked: false,
                status: DeviceStatus::Online,
                status_since_ms: 0,
                last_seen_ms: 0,
                as_of_ms: 0,
                rollups_stored: 0,
                latest: vec![],
            })
        };
        for (site, id, customer) in [
            ("s-1", 1, "dental"),
            ("s-1", 2, "dental"),
            ("s-1", 3, "dental"),
            ("s-2", 6, "dental"),
            ("s-3", 7, "vet"),
        ] {
            with_device(site, id, customer);
        }
        for (id, customer) in [("s-1", "dental"), ("s-2", "dental"), ("s-3", "vet")] {
            ix.upsert_site(&SiteRecord::new(
                "msp".into(),
                customer.into(),
                id.into(),
                id.into(),
                0,
            ));
        }
        let counts = ix.counts(&p.tenant, &p.customers);
        let open: Vec<(SiteId, (u64, u64))> = counts
            .per_site
            .iter()
            .filter(|(_, c)| c.alerts_firing + c.alerts_pending > 0)
            .map(|(s, c)| (s.clone(), (c.alerts_firing, c.alerts_pending)))
            .collect();
        assert_eq!(
            open,
            vec![("s-1".into(), (1, 2)), ("s-2".into(), (0, 1))],
            "one firing and two pending at s-1; cleared, resolved and other customers' not counted"
        );
        let critical: Vec<(SiteId, u64)> = counts
            .per_site
            .iter()
            .filter(|(_, c)| c.critical > 0)
            .map(|(s, c)| (s.clone(), c.critical))
            .collect();
        assert_eq!(
            critical,
            vec![("s-1".into(), 1)],
            "a pending critical alert does not make its device critical (device 1 only)"
        );
    }
}
