//! Who a request on the admin listener is, and what it may do.
//!
//! * Authentication ([`Auth::authenticate`]): `Authorization: Bearer
//!   <DATA/admin.token>` is an admin (every existing caller: the CLI,
//!   scripts); otherwise the session cookie [`SESSION_COOKIE`] is that
//!   user with the role stored for the user *now* (a role change or a
//!   removal applies to open sessions at once).
//! * Authorisation ([`required_role`]): one table from (method, route) to
//!   the least role, applied by the [`authorize`] middleware to every
//!   route under `/api/v1/` (the patch cache's included); a route not in
//!   the table needs admin when it changes anything, viewer when it only
//!   reads. A cookie-authenticated request that changes something must
//!   also come from the listener's own origin ([`same_origin`]).
//! * Logins ([`Auth::login`]): a local user's name and password, or the
//!   user name [`ADMIN_TOKEN_ACTOR`] with the admin token as password (an
//!   admin session for browsers, which cannot send a bearer token; the
//!   name is reserved). Failed attempts limited per user name and per
//!   address ([`outpost_web::login::LoginLimiter`]), argon2 on a
//!   bounded pool with the same work for unknown users
//!   ([`outpost_web::login::Passwords`]), counted at
//!   `outpost_logins_total{result}`; the first refusal of a burst is
//!   audited (`login.throttled`).
//! * User management ([`Auth::add_user`], [`Auth::set_password`],
//!   [`Auth::remove_user`]): checked, serialised, audited; a password
//!   change or a removal ends the user's sessions.
//!
//! Stores nothing itself: the tables are [`super::store`]'s, the audit
//! log `outpost_storage::registry`'s.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use axum::extract::{ConnectInfo, FromRequestParts, MatchedPath, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use outpost_storage::Store;
use outpost_storage::model::AuditEntry;
use outpost_storage::registry;
use outpost_web::ApiError;
use outpost_web::login::{self, LimiterConfig, LoginLimiter, Passwords, Role};
use serde::{Deserialize, Serialize};

use super::store::{self, AddRefused, SessionRecord, UserRecord};
use crate::metrics::{Metrics, ResultLabel};

/// The session cookie of the appliance's admin listener (not central's
/// `outpost_session`: cookies do not separate ports, and a central and an
/// appliance on one host must not overwrite each other's).
pub const SESSION_COOKIE: &str = "outpost_site_session";

/// How long a session lasts (from the login; not extended by use).
pub const SESSION_TTL_MS: u64 = 12 * 3600 * 1000;

/// The actor of requests made with the admin token (audit log), and the
/// user name that signs in with the admin token as its password (no local
/// user may take it).
pub const ADMIN_TOKEN_ACTOR: &str = "admin-token";

/// How a request authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Credential {
    /// `Authorization: Bearer <DATA/admin.token>`: an admin.
    AdminToken,
    /// A local user's session cookie.
    Session,
}

/// Who a request acts for (`GET /api/v1/me`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Caller {
    /// The user name, or `admin-token`.
    pub user: String,
    pub role: Role,
    pub credential: Credential,
}

impl Caller {
    /// The caller of a request bearing the admin token.
    pub fn admin_token() -> Caller {
        Caller {
            user: ADMIN_TOKEN_ACTOR.into(),
            role: Role::Admin,
            credential: Credential::AdminToken,
        }
    }

    /// The actor written in the audit log: a session's user name; for the
    /// admin token the `X-Outpost-User` header when given (the CLI's
    /// `--by`), else `admin-token`. A session cannot claim another name.
    pub fn actor(&self, headers: &HeaderMap) -> String {
        match self.credential {
            Credential::Session => self.user.clone(),
            Credential::AdminToken => headers
                .get("x-outpost-user")
                .and_then(|v| v.to_str().ok())
                .filter(|s| !s.is_empty() && s.len() <= 100)
                .unwrap_or(ADMIN_TOKEN_ACTOR)
                .to_string(),
        }
    }

    /// `Ok` when this caller's role is at least `min`; 403 saying which
    /// role is needed otherwise.
    pub fn require(&self, min: Role) -> Result<(), ApiError> {
        if self.role.allows(min) {
            Ok(())
        } else {
            Err(ApiError::Forbidden(format!(
                "role {} may not do this (needs {})",
                self.role, min
            )))
        }
    }
}

/// The least role a route needs (`route` is the matched route pattern,
/// e.g. `/api/v1/alerts/{id}/ack`). The README's roles table is this
/// function. Reads need viewer, except the users, the audit log and the
/// notification channels (webhook URLs are secrets), and the content of a
/// pulled file (technician: reading it is pulling it); acknowledging alerts
/// and setting device tags need technician; every other change needs
/// admin (tokens, revocation, rules and channels, uplink join, the patch
/// cache, users). The routes anyone authenticated may use (`/me`, a
/// password change, decided by its handler: the user itself or an admin)
/// need viewer.
pub fn required_role(method: &Method, route: &str) -> Role {
    let reads = *method == Method::GET || *method == Method::HEAD;
    match route {
        "/api/v1/me" | "/api/v1/users/{name}/password" => Role::Viewer,
        "/api/v1/users" | "/api/v1/users/{name}" | "/api/v1/audit" => Role::Admin,
        "/api/v1/channels" | "/api/v1/channels/{id}" => Role::Admin,
        // Importing advisories replaces the catalog every assessment uses.
        "/api/v1/advisories/import" => Role::Admin,
        "/api/v1/alerts/{id}/ack" | "/api/v1/devices/{id}/tags" => Role::Technician,
        // A file from a customer's machine (configuration, logs: secrets):
        // who may not pull it may not read it either.
        "/api/v1/files/{id}/content" => Role::Technician,
        "/api/v1/commands"
        | "/api/v1/commands/{id}/cancel"
        | "/api/v1/commands/bulk"
        | "/api/v1/commands/bulk/{id}/cancel"
        | "/api/v1/scripts"
        | "/api/v1/scripts/{name}"
        | "/api/v1/scripts/{name}/run"
        | "/api/v1/files/push"
        | "/api/v1/files/pull"
        | "/api/v1/files/{id}/cancel"
        | "/api/v1/patches/devices/{id}/scan"
        | "/api/v1/deployments/{id}/pause"
        | "/api/v1/deployments/{id}/resume"
        | "/api/v1/deployments/{id}/rollback"
            if !reads =>
        {
            Role::Technician
        }
        _ if reads => Role::Viewer,
        _ => Role::Admin,
    }
}

/// Whether a state-changing request may be trusted not to be forged by
/// another site: no `Origin` (not a browser: the CLI, curl) or an `Origin`
/// equal to `http(s)://<Host>`, and no `Sec-Fetch-Site` other than
/// `same-origin` or `none`. Browsers send `Origin` with every request that
/// is not a GET, so a form or script on another origin is refused even
/// where `SameSite=Strict` would not apply (another port of the same host
/// is the same site).
pub fn same_origin(headers: &HeaderMap) -> bool {
    if let Some(site) = headers.get("sec-fetch-site") {
        let ok = matches!(site.to_str(), Ok("same-origin" | "none"));
        if !ok {
            return false;
        }
    }
    let Some(origin) = headers.get(header::ORIGIN) else {
        return true;
    };
    let (Ok(origin), Some(Ok(host))) = (
        origin.to_str(),
        headers.get(header::HOST).map(|h| h.to_str()),
    ) else {
        return false;
    };
    origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"))
        .is_some_and(|o| o.eq_ignore_ascii_case(host))
}

/// The session cookie's value, if the request carries one.
pub fn session_cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == SESSION_COOKIE)
        .map(|(_, v)| v.trim().to_string())
}

/// The bearer token of the request, if any.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
}

/// Constant-time comparison of secrets.
fn secrets_equal(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn sha256(s: &str) -> [u8; 32] {
    outpost_proto::pki::sha256(s.as_bytes())
}

/// What a request's credentials say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Authenticated {
    Caller(Caller),
    /// Neither a bearer token nor a session cookie.
    Missing,
    /// A bearer token that is not the admin token.
    BadToken,
    /// A session cookie of no valid session (expired, logged out, its user
    /// removed or its password changed).
    BadSession,
}

impl Authenticated {
    /// The 401 answer of a request without a valid credential, counted at
    /// `outpost_rejects_total{reason}` (`api_missing_token`,
    /// `api_bad_token`, `api_bad_session`); `None` for a caller.
    pub fn refusal(&self, metrics: &Metrics) -> Option<Response> {
        let (reason, message) = match self {
            Authenticated::Caller(_) => return None,
            Authenticated::Missing => (
                "api_missing_token",
                "missing bearer token: send `Authorization: Bearer <DATA/admin.token>` or log in (POST /api/v1/login)",
            ),
            Authenticated::BadToken => ("api_bad_token", "invalid bearer token"),
            Authenticated::BadSession => (
                "api_bad_session",
                "the session has ended (expired, logged out, or its user changed): log in again",
            ),
        };
        metrics.reject(reason);
        Some(ApiError::Unauthorized(message.into()).into_response())
    }
}

/// Settings of [`Auth`].
#[derive(Debug, Clone)]
pub struct AuthOptions {
    pub login: LimiterConfig,
    pub session_ttl_ms: u64,
    /// Mark the cookie `Secure` (the listener speaks TLS). The admin
    /// listener speaks plain HTTP, so it is off; a request that arrived
    /// through a TLS proxy (`X-Forwarded-Proto: https`) gets it anyway.
    pub secure_cookie: bool,
}

impl Default for AuthOptions {
    fn default() -> Self {
        AuthOptions {
            login: LimiterConfig::default(),
            session_ttl_ms: SESSION_TTL_MS,
            secure_cookie: false,
        }
    }
}

/// Authentication, logins and user management of the admin listener (see
/// the module docs). One per appliance, shared by the API and the console.
pub struct Auth {
    store: Store,
    metrics: Arc<Metrics>,
    /// The bearer token that is an admin.
    admin_token: String,
    /// argon2 on a bounded pool (logins, new users, password changes).
    passwords: Passwords,
    /// Failed logins per user name and per address.
    limiter: Mutex<LoginLimiter>,
    /// The attempts of one user name take turns (concurrent guesses are
    /// counted one after the other).
    turns: login::AttemptTurns,
    /// Serialises the user writes that read first (add, password, remove).
    writes: tokio::sync::Mutex<()>,
    opts: AuthOptions,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth").finish_non_exhaustive()
    }
}

/// Why a login did not open a session.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LoginError {
    #[error("wrong user name or password")]
    Unauthorized,
    #[error("too many failed logins for this user or address; retry in {retry_after_secs} s")]
    Throttled { retry_after_secs: u64 },
    #[error("password checks are busy; retry in a second")]
    Busy,
    #[error("{0}")]
    Internal(String),
}

impl IntoResponse for LoginError {
    fn into_response(self) -> Response {
        let retry = match &self {
            LoginError::Throttled { retry_after_secs } => Some(*retry_after_secs),
            LoginError::Busy => Some(1),
            _ => None,
        };
        let status = match &self {
            LoginError::Unauthorized => StatusCode::UNAUTHORIZED,
            LoginError::Throttled { .. } => StatusCode::TOO_MANY_REQUESTS,
            LoginError::Busy => StatusCode::SERVICE_UNAVAILABLE,
            LoginError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        let body = axum::Json(serde_json::json!({ "error": self.to_string() }));
        match retry {
            Some(s) => (status, [(header::RETRY_AFTER, s.to_string())], body).into_response(),
            None => (status, body).into_response(),
        }
    }
}

/// A successful login: the caller and the session secret (the cookie's
/// value; see [`Auth::session_set_cookie`]).
#[derive(Debug, Clone)]
pub struct LoginOk {
    pub caller: Caller,
    pub secret: String,
    pub expires_ms: u64,
}

/// A user as the API shows it (no hash).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserOut {
    pub name: String,
    pub role: Role,
    pub created_ms: u64,
    pub password_changed_ms: u64,
    /// Open sessions.
    pub sessions: usize,
}

impl UserOut {
    fn of(u: &UserRecord, sessions: usize) -> UserOut {
        UserOut {
            name: u.name.clone(),
            role: u.role,
            created_ms: u.created_ms,
            password_changed_ms: u.password_changed_ms,
            sessions,
        }
    }
}

/// The answer of a password change or a removal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionsEnded {
    pub user: String,
    pub sessions_ended: usize,
}

async fn blocking<T: Send + 'static>(
    store: &Store,
    f: impl FnOnce(&Store) -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    let store = store.clone();
    tokio::task::spawn_blocking(move || f(&store))
        .await
        .map_err(|e| ApiError::Internal(format!("storage task failed: {e}")))?
}

impl Auth {
    pub fn new(
        store: Store,
        metrics: Arc<Metrics>,
        admin_token: String,
        opts: AuthOptions,
    ) -> Auth {
        Auth {
            store,
            metrics,
            admin_token,
            passwords: Passwords::per_core(),
            limiter: Mutex::new(LoginLimiter::new(&opts.login)),
            turns: Default::default(),
            writes: tokio::sync::Mutex::new(()),
            opts,
        }
    }

    /// Who the request with `headers` is: the admin token (checked first),
    /// else the session cookie; never an error for bad credentials (see
    /// [`Authenticated`]), only for a storage failure.
    pub async fn authenticate(&self, headers: &HeaderMap) -> Result<Authenticated, ApiError> {
        if let Some(t) = bearer(headers) {
            return Ok(
                if secrets_equal(t.as_bytes(), self.admin_token.as_bytes()) {
                    Authenticated::Caller(Caller::admin_token())
                } else {
                    Authenticated::BadToken
                },
            );
        }
        let Some(secret) = session_cookie(headers) else {
            return Ok(Authenticated::Missing);
        };
        let key = sha256(&secret);
        let now = outpost_storage::now_ms();
        let found = blocking(&self.store, move |s| {
            let Some(session) = store::session(s, &key)? else {
                return Ok(None);
            };
            if session.user == ADMIN_TOKEN_ACTOR {
                return Ok(Some((session, None)));
            }
            Ok(store::session_user(s, &key, now)?.map(|(s, u)| (s, Some(u))))
        })
        .await?;
        Ok(match found {
            Some((_, Some(user))) => Authenticated::Caller(Caller {
                user: user.name,
                role: user.role,
                credential: Credential::Session,
            }),
            // A session opened with the admin token: valid while it has
            // not expired and the token is the one it was opened with.
            Some((s, None))
                if now < s.expires_ms && secrets_equal(&s.credential, &self.token_credential()) =>
            {
                Authenticated::Caller(Caller {
                    user: ADMIN_TOKEN_ACTOR.into(),
                    role: Role::Admin,
                    credential: Credential::Session,
                })
            }
            _ => Authenticated::BadSession,
        })
    }

    /// What a session opened with the admin token records of it (its
    /// SHA-256: a new token ends those sessions).
    fn token_credential(&self) -> [u8; 32] {
        sha256(&self.admin_token)
    }

    /// [`Auth::authenticate`], as an option: `None` for every request
    /// without a valid credential.
    pub async fn caller(&self, headers: &HeaderMap) -> Result<Option<Caller>, ApiError> {
        Ok(match self.authenticate(headers).await? {
            Authenticated::Caller(c) => Some(c),
            _ => None,
        })
    }

    fn count_login(&self, result: &str) {
        self.metrics
            .logins
            .get_or_create(&ResultLabel {
                result: result.into(),
            })
            .inc();
    }

    fn limiter(&self) -> std::sync::MutexGuard<'_, LoginLimiter> {
        self.limiter.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn audit(&self, actor: &str, action: &str, target: &str, detail: String) {
        let entry = AuditEntry {
            at_ms: outpost_storage::now_ms(),
            actor: actor.to_string(),
            action: action.to_string(),
            target: target.to_string(),
            detail,
        };
        if let Err(e) = registry::audit(&self.store, &entry) {
            tracing::warn!(error = %e, action, target, "writing the audit entry failed");
        }
    }

    /// Records a failed attempt for `user` (a possible name) or only the
    /// address; audits the failure that starts a refusal.
    fn failed_attempt(&self, user: Option<&str>, addr: Option<IpAddr>, now_ms: u64) {
        self.count_login("failed");
        let throttled = {
            let mut l = self.limiter();
            let before = l.check(user.unwrap_or(""), addr, now_ms).is_ok();
            match user {
                Some(u) => l.failed(u, addr, now_ms),
                None => l.failed_address(addr, now_ms),
            }
            let after = l.check(user.unwrap_or(""), addr, now_ms);
            match after {
                Err(wait) if before => Some(wait),
                _ => None,
            }
        };
        if let Some(wait) = throttled {
            let who = user.unwrap_or("-");
            tracing::warn!(user = who, addr = ?addr, retry_after_s = wait.secs(), "failed logins: further attempts refused for a while");
            // The actor is whoever tried: the address.
            let from = addr.map_or_else(|| "unknown-address".into(), |a| a.to_string());
            self.audit(
                &from,
                "login.throttled",
                who,
                format!("retry_after_s={}", wait.secs()),
            );
        }
    }

    /// Checks `user`'s `password` and opens a session (see the module
    /// docs); `addr` is the client's address, for the limits.
    pub async fn login(
        &self,
        user: &str,
        password: String,
        addr: Option<IpAddr>,
        now_ms: u64,
    ) -> Result<LoginOk, LoginError> {
        // Until its failure is recorded, no other attempt for this name is
        // checked: concurrent guesses cannot all pass the check at once.
        let _turn = self.turns.turn(user).await;
        if let Err(wait) = self.limiter().check(user, addr, now_ms) {
            self.count_login("throttled");
            return Err(LoginError::Throttled {
                retry_after_secs: wait.secs(),
            });
        }
        // A name no user can have: no lookup, no hash, nothing kept for it.
        if store::check_user_name(user).is_err() || password.len() > login::MAX_PASSWORD_BYTES {
            self.failed_attempt(None, addr, now_ms);
            return Err(LoginError::Unauthorized);
        }
        if user == ADMIN_TOKEN_ACTOR {
            return self.login_with_token(password, addr, now_ms).await;
        }
        let name = user.to_string();
        let found = blocking(&self.store, move |s| Ok(store::get_user(s, &name)?))
            .await
            .map_err(|e| LoginError::Internal(e.to_string()))?;
        // The same argon2 work whether the user exists or not.
        let checked = self
            .passwords
            .verify(password, found.as_ref().map(|u| u.password_hash.clone()))
            .await;
        let found = match checked {
            Err(_) => {
                self.count_login("busy");
                return Err(LoginError::Busy);
            }
            Ok(true) => found,
            Ok(false) => None,
        };
        let Some(found) = found else {
            self.failed_attempt(Some(user), addr, now_ms);
            return Err(LoginError::Unauthorized);
        };
        self.limiter().succeeded(user);
        let credential = found.credential();
        let caller = Caller {
            user: found.name,
            role: found.role,
            credential: Credential::Session,
        };
        self.open_session(caller, credential, now_ms).await
    }

    /// The sign-in of [`ADMIN_TOKEN_ACTOR`]: the admin token as password
    /// (compared in constant time, limited like every login) opens an
    /// admin session.
    async fn login_with_token(
        &self,
        token: String,
        addr: Option<IpAddr>,
        now_ms: u64,
    ) -> Result<LoginOk, LoginError> {
        let user = ADMIN_TOKEN_ACTOR;
        if !secrets_equal(token.trim().as_bytes(), self.admin_token.as_bytes()) {
            self.failed_attempt(Some(user), addr, now_ms);
            return Err(LoginError::Unauthorized);
        }
        self.limiter().succeeded(user);
        let caller = Caller {
            user: user.into(),
            role: Role::Admin,
            credential: Credential::Session,
        };
        self.open_session(caller, self.token_credential(), now_ms)
            .await
    }

    /// Stores a new session of `caller` (its secret only as a hash) and
    /// counts the login.
    async fn open_session(
        &self,
        caller: Caller,
        credential: [u8; 32],
        now_ms: u64,
    ) -> Result<LoginOk, LoginError> {
        let secret = format!(
            "{:032x}{:032x}",
            rand::random::<u128>(),
            rand::random::<u128>()
        );
        let session = SessionRecord {
            user: caller.user.clone(),
            created_ms: now_ms,
            expires_ms: now_ms.saturating_add(self.opts.session_ttl_ms),
            credential,
        };
        let key = sha256(&secret);
        let s2 = session.clone();
        blocking(&self.store, move |s| {
            Ok(store::open_session(s, &key, &s2, now_ms)?)
        })
        .await
        .map_err(|e| LoginError::Internal(e.to_string()))?;
        self.count_login("ok");
        tracing::info!(user = %caller.user, role = %caller.role, "login");
        Ok(LoginOk {
            caller,
            secret,
            expires_ms: session.expires_ms,
        })
    }

    /// Ends the session the request's cookie names, if any.
    pub async fn logout(&self, headers: &HeaderMap) -> Result<bool, ApiError> {
        let Some(secret) = session_cookie(headers) else {
            return Ok(false);
        };
        let key = sha256(&secret);
        blocking(&self.store, move |s| Ok(store::close_session(s, &key)?)).await
    }

    fn secure(&self, headers: &HeaderMap) -> bool {
        self.opts.secure_cookie
            || headers
                .get("x-forwarded-proto")
                .and_then(|v| v.to_str().ok())
                .is_some_and(|p| p.eq_ignore_ascii_case("https"))
    }

    /// The `Set-Cookie` value that gives the browser a session:
    /// `HttpOnly; SameSite=Strict; Path=/`, `Secure` over TLS
    /// ([`AuthOptions::secure_cookie`], or `X-Forwarded-Proto: https` on
    /// the request `headers`).
    pub fn session_set_cookie(&self, login: &LoginOk, headers: &HeaderMap) -> String {
        format!(
            "{SESSION_COOKIE}={}; Path=/;{} HttpOnly; SameSite=Strict; Max-Age={}",
            login.secret,
            if self.secure(headers) { " Secure;" } else { "" },
            self.opts.session_ttl_ms / 1000
        )
    }

    /// The `Set-Cookie` value that removes the session cookie.
    pub fn clear_set_cookie(&self, headers: &HeaderMap) -> String {
        format!(
            "{SESSION_COOKIE}=; Path=/;{} HttpOnly; SameSite=Strict; Max-Age=0",
            if self.secure(headers) { " Secure;" } else { "" },
        )
    }

    /// Every user with its open sessions.
    pub async fn list_users(&self) -> Result<Vec<UserOut>, ApiError> {
        blocking(&self.store, |s| {
            let open = store::open_sessions(s, outpost_storage::now_ms())?;
            Ok(store::list_users(s)?
                .iter()
                .map(|u| UserOut::of(u, open.get(&u.name).copied().unwrap_or(0)))
                .collect())
        })
        .await
    }

    /// Adds a user (409 if the name is taken), audited as `user.add`.
    pub async fn add_user(
        &self,
        by: &str,
        name: &str,
        role: Role,
        password: String,
    ) -> Result<UserOut, ApiError> {
        store::check_user_name(name).map_err(|e| ApiError::BadRequest(e.to_string()))?;
        if name == ADMIN_TOKEN_ACTOR {
            return Err(ApiError::BadRequest(format!(
                "the user name {ADMIN_TOKEN_ACTOR} is reserved: it signs in with the admin token"
            )));
        }
        login::check_password(&password).map_err(|e| ApiError::BadRequest(e.to_string()))?;
        let exists = |name: &str| {
            ApiError::Conflict(format!(
                "user {name} exists; its password changes with `outpost users passwd {name}` (PUT /api/v1/users/{name}/password)"
            ))
        };
        let _w = self.writes.lock().await;
        let n = name.to_string();
        if blocking(&self.store, move |s| Ok(store::get_user(s, &n)?))
            .await?
            .is_some()
        {
            return Err(exists(name));
        }
        let hash = self
            .passwords
            .hash(password)
            .await
            .map_err(|e| ApiError::Internal(e.to_string()))?;
        let now = outpost_storage::now_ms();
        let rec = UserRecord {
            name: name.to_string(),
            role,
            password_hash: hash,
            created_ms: now,
            password_changed_ms: now,
        };
        let r2 = rec.clone();
        match blocking(&self.store, move |s| Ok(store::add_user(s, &r2)?)).await? {
            Ok(()) => {}
            Err(AddRefused::Exists) => return Err(exists(name)),
            Err(AddRefused::TooMany) => {
                return Err(ApiError::BadRequest(format!(
                    "the appliance keeps at most {} users; remove one first",
                    store::MAX_USERS
                )));
            }
        }
        self.audit(by, "user.add", name, format!("role={role}"));
        tracing::info!(user = name, %role, by, "user added");
        Ok(UserOut::of(&rec, 0))
    }

    /// Changes `name`'s password and ends its sessions, audited as
    /// `user.password`. `caller` must be the user itself (giving its
    /// `current` password) or an admin.
    pub async fn set_password(
        &self,
        caller: &Caller,
        actor: &str,
        name: &str,
        password: String,
        current: Option<String>,
        addr: Option<IpAddr>,
    ) -> Result<SessionsEnded, ApiError> {
        let itself = caller.credential == Credential::Session && caller.user == name;
        if !itself && caller.role != Role::Admin {
            return Err(ApiError::Forbidden(
                "only the user itself or an admin may change a password".into(),
            ));
        }
        login::check_password(&password).map_err(|e| ApiError::BadRequest(e.to_string()))?;
        if itself {
            let current = current.ok_or_else(|| {
                ApiError::BadRequest("`current_password` is required to change your own".into())
            })?;
            // A wrong current password is a failed login: limited alike.
            let now = outpost_storage::now_ms();
            if let Err(wait) = self.limiter().check(name, addr, now) {
                self.count_login("throttled");
                return Err(ApiError::Forbidden(format!(
                    "too many failed password checks; retry in {} s",
                    wait.secs()
                )));
            }
            let n = name.to_string();
            let user = blocking(&self.store, move |s| Ok(store::get_user(s, &n)?)).await?;
            let ok = self
                .passwords
                .verify(current, user.map(|u| u.password_hash))
                .await
                .map_err(|e| ApiError::Internal(e.to_string()))?;
            if !ok {
                self.failed_attempt(Some(name), addr, now);
                return Err(ApiError::Forbidden("the current password is wrong".into()));
            }
        }
        let hash = self
            .passwords
            .hash(password)
            .await
            .map_err(|e| ApiError::Internal(e.to_string()))?;
        let _w = self.writes.lock().await;
        let n = name.to_string();
        let ended = blocking(&self.store, move |s| {
            Ok(store::set_password(
                s,
                &n,
                &hash,
                outpost_storage::now_ms(),
            )?)
        })
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no user {name}")))?;
        self.audit(
            actor,
            "user.password",
            name,
            format!("sessions_ended={ended}"),
        );
        tracing::info!(
            user = name,
            by = actor,
            sessions_ended = ended,
            "password changed"
        );
        Ok(SessionsEnded {
            user: name.to_string(),
            sessions_ended: ended,
        })
    }

    /// Removes `name` and ends its sessions, audited as `user.remove`.
    pub async fn remove_user(&self, actor: &str, name: &str) -> Result<SessionsEnded, ApiError> {
        let _w = self.writes.lock().await;
        let n = name.to_string();
        let (gone, ended) = blocking(&self.store, move |s| Ok(store::remove_user(s, &n)?))
            .await?
            .ok_or_else(|| ApiError::NotFound(format!("no user {name}")))?;
        self.audit(
            actor,
            "user.remove",
            name,
            format!("role={} sessions_ended={ended}", gone.role),
        );
        tracing::info!(
            user = name,
            by = actor,
            sessions_ended = ended,
            "user removed"
        );
        Ok(SessionsEnded {
            user: name.to_string(),
            sessions_ended: ended,
        })
    }
}

/// The client's address: the peer of the connection (the admin listener
/// trusts no proxy header for it). `None` without a connection (router
/// tests).
#[derive(Debug, Clone, Copy)]
pub struct PeerAddr(pub Option<IpAddr>);

impl<S: Send + Sync> FromRequestParts<S> for PeerAddr {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(PeerAddr(
            parts
                .extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map(|ci| ci.0.ip()),
        ))
    }
}

/// The middleware of every authenticated route: authenticates the request
/// ([`Auth::authenticate`]; 401 without a valid credential), checks the
/// route's role ([`required_role`]; 403) and, for a session changing
/// something, the origin ([`same_origin`]; 403), then runs the handler
/// with the [`Caller`] in the request's extensions.
pub async fn authorize(State(auth): State<Arc<Auth>>, mut req: Request, next: Next) -> Response {
    let caller = match auth.authenticate(req.headers()).await {
        Ok(Authenticated::Caller(c)) => c,
        Ok(other) => {
            return other
                .refusal(&auth.metrics)
                .unwrap_or_else(|| StatusCode::UNAUTHORIZED.into_response());
        }
        Err(e) => return e.into_response(),
    };
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_string())
        .unwrap_or_else(|| req.uri().path().to_string());
    let needed = required_role(req.method(), &route);
    if let Err(e) = caller.require(needed) {
        auth.metrics.reject("api_forbidden_role");
        return e.into_response();
    }
    let changes = !matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS);
    if changes && caller.credential == Credential::Session && !same_origin(req.headers()) {
        auth.metrics.reject("api_cross_origin");
        return ApiError::Forbidden(
            "cross-origin request refused: a session may change things only from the appliance's own pages".into(),
        )
        .into_response();
    }
    req.extensions_mut().insert(caller);
    next.run(req).await
}

#[cfg(test)]
mod tests;
