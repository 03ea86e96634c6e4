//! Operator actions shared by the CLI (database opened directly) and the
//! operator endpoints of a running central: add a site, create, list and
//! revoke API tokens, add and remove web users; and the credential helpers. The operator may
//! grant anything; what a tenant's own admins may grant is
//! [`Principal::may_grant`], checked by the API before it calls these.

use anyhow::{Context, bail};
use outpost_proto::{CustomerId, SiteId, TenantId};
use serde::{Deserialize, Serialize};

use crate::commands::AuditRow;
use crate::login::Passwords;
use crate::model::{
    ApiTokenRecord, JoinTokenRecord, Principal, Role, SiteRecord, TokenLife, TokenRefusal,
    UserRecord,
};
use crate::store::AuthStore;

/// How long a site join token stays valid.
pub const JOIN_TOKEN_TTL_MS: u64 = 7 * 24 * 3600 * 1000;

pub fn sha256(s: &str) -> [u8; 32] {
    outpost_proto::pki::sha256(s.as_bytes())
}

/// Tenant, customer and site names: 1-64 printable characters, no `/` or NUL.
pub fn check_name(what: &str, v: &str) -> anyhow::Result<()> {
    if v.is_empty() || v.len() > 64 || v.chars().any(|c| c.is_control() || c == '/') {
        bail!("{what} {v:?} must be 1-64 printable characters without '/'");
    }
    Ok(())
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AddSite {
    pub tenant: TenantId,
    pub customer: CustomerId,
    pub site: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SiteAdded {
    pub site_id: SiteId,
    pub token: String,
}

pub async fn add_site(
    store: &dyn AuthStore,
    req: &AddSite,
    now_ms: u64,
) -> anyhow::Result<SiteAdded> {
    check_name("tenant", &req.tenant)?;
    check_name("customer", &req.customer)?;
    check_name("site", &req.site)?;
    let site_id = SiteId::from(format!("s-{}", hex::encode(rand::random::<[u8; 8]>())));
    let token = format!("ost_{}", hex::encode(rand::random::<[u8; 24]>()));
    let rec = SiteRecord::new(
        req.tenant.clone(),
        req.customer.clone(),
        site_id.clone(),
        req.site.clone(),
        now_ms,
    );
    let jt = JoinTokenRecord {
        tenant: req.tenant.clone(),
        site_id: site_id.clone(),
        expires_ms: now_ms + JOIN_TOKEN_TTL_MS,
    };
    store
        .create_site(&rec, &sha256(&token), &jt)
        .await
        .context("storing the site")?;
    Ok(SiteAdded { site_id, token })
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreateToken {
    pub tenant: TenantId,
    pub role: Role,
    #[serde(default)]
    pub customers: Vec<CustomerId>,
    /// Lifetime: seconds or a duration (`90m`, `24h`, `30d`), within
    /// [`MIN_TOKEN_TTL_MS`] and [`MAX_TOKEN_TTL_MS`]; `None`: no expiry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<String>,
}

/// Shortest lifetime of an API token (`ttl`).
pub const MIN_TOKEN_TTL_MS: u64 = 60 * 1000;
/// Longest lifetime of an API token (`ttl`).
pub const MAX_TOKEN_TTL_MS: u64 = 365 * 24 * 3600 * 1000;

/// Parses a token's `ttl` (seconds or a duration) into milliseconds,
/// within [`MIN_TOKEN_TTL_MS`]..=[`MAX_TOKEN_TTL_MS`].
pub fn parse_token_ttl(s: &str) -> anyhow::Result<u64> {
    let t = s.trim();
    let ms = match t.parse::<u64>() {
        Ok(secs) => secs.saturating_mul(1000),
        Err(_) => {
            let d = humantime::parse_duration(t).map_err(|e| {
                anyhow::anyhow!(
                    "ttl {s:?} is not a duration: use seconds (3600) or a number with a unit, e.g. 90m, 24h, 30d ({e})"
                )
            })?;
            u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
        }
    };
    if !(MIN_TOKEN_TTL_MS..=MAX_TOKEN_TTL_MS).contains(&ms) {
        bail!("ttl {s:?} must be between 1m and 365d (without ttl the token does not expire)");
    }
    Ok(ms)
}

/// A token just created: the secret (shown once) and what lists show.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenCreated {
    pub token: String,
    /// `token:ID`, as listings, the audit log and `created_by` name it.
    pub id: String,
    pub expires_ms: Option<u64>,
}

/// Creates a token as the operator (`created_by` `operator`); returns the
/// secret.
pub async fn create_token(
    store: &dyn AuthStore,
    req: &CreateToken,
    now_ms: u64,
) -> anyhow::Result<String> {
    Ok(create_token_by(store, req, OPERATOR, now_ms).await?.token)
}

/// The actor of the operator's actions (CLI, `/api/v1/admin/*`) in the
/// audit log and `created_by`.
pub const OPERATOR: &str = "operator";

/// Creates a token on behalf of `by` (a principal name, or [`OPERATOR`]).
pub async fn create_token_by(
    store: &dyn AuthStore,
    req: &CreateToken,
    by: &str,
    now_ms: u64,
) -> anyhow::Result<TokenCreated> {
    check_name("tenant", &req.tenant)?;
    for c in &req.customers {
        check_name("customer", c)?;
    }
    let expires_ms = req
        .ttl
        .as_deref()
        .map(parse_token_ttl)
        .transpose()?
        .map(|ttl| now_ms.saturating_add(ttl));
    let id = hex::encode(rand::random::<[u8; 6]>());
    let token = format!("oct_{}", hex::encode(rand::random::<[u8; 24]>()));
    let rec = ApiTokenRecord {
        id: id.clone(),
        principal: Principal {
            tenant: req.tenant.clone(),
            role: req.role,
            customers: req.customers.clone(),
            name: format!("token:{id}"),
        },
        created_ms: now_ms,
        life: TokenLife {
            expires_ms,
            created_by: Some(by.to_string()),
            revoked_ms: None,
            revoked_by: None,
        },
    };
    store
        .put_api_token(&sha256(&token), &rec)
        .await
        .context("storing the token")?;
    Ok(TokenCreated {
        token,
        id: rec.name(),
        expires_ms,
    })
}

/// A token as listings show it: never its secret (central does not have
/// it: only its SHA-256).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenInfo {
    /// `token:ID`: its name in the audit log and `created_by`.
    pub id: String,
    pub role: Role,
    /// Empty: every customer of the tenant.
    pub customers: Vec<CustomerId>,
    pub created_ms: u64,
    /// `None` for a token created before central recorded its creator.
    pub created_by: Option<String>,
    pub expires_ms: Option<u64>,
    pub revoked_ms: Option<u64>,
    pub revoked_by: Option<String>,
    /// `active`, `expired` or `revoked`.
    pub state: String,
}

impl TokenInfo {
    pub fn of(t: &ApiTokenRecord, now_ms: u64) -> TokenInfo {
        TokenInfo {
            id: t.name(),
            role: t.principal.role,
            customers: t.principal.customers.clone(),
            created_ms: t.created_ms,
            created_by: t.life.created_by.clone(),
            expires_ms: t.life.expires_ms,
            revoked_ms: t.life.revoked_ms,
            revoked_by: t.life.revoked_by.clone(),
            state: match t.refusal(now_ms) {
                None => "active",
                Some(TokenRefusal::Expired { .. }) => "expired",
                Some(TokenRefusal::Revoked { .. }) => "revoked",
            }
            .to_string(),
        }
    }
}

/// The tokens of a tenant (the operator's `token list`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ListTokens {
    pub tenant: TenantId,
}

pub async fn list_tokens(
    store: &dyn AuthStore,
    tenant: &TenantId,
    now_ms: u64,
) -> anyhow::Result<Vec<TokenInfo>> {
    check_name("tenant", tenant)?;
    let v = store
        .api_tokens(tenant)
        .await
        .context("reading the tokens")?;
    Ok(v.iter().map(|t| TokenInfo::of(t, now_ms)).collect())
}

/// The id of a token as given (`token:ID` or `ID`), checked: hex digits.
pub fn token_id(given: &str) -> anyhow::Result<&str> {
    let id = given.trim();
    let id = id.strip_prefix("token:").unwrap_or(id);
    if id.is_empty() || id.len() > 64 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        bail!("{given:?} is not a token id: give `token:ID` or `ID` as `token list` shows it");
    }
    Ok(id)
}

/// A revocation by the operator (`token revoke`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RevokeToken {
    pub tenant: TenantId,
    /// `token:ID` or `ID`.
    pub id: String,
}

/// What a revocation did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenRevoked {
    pub token: TokenInfo,
    /// False if it was revoked before (nothing changed).
    pub revoked_now: bool,
}

/// Revokes token `id` (already checked by [`token_id`]) of `tenant` on
/// behalf of `by` at `now_ms`, audited (`token.revoke`) in the same
/// write. `None` if the tenant has no such token.
pub async fn revoke_token(
    store: &dyn AuthStore,
    tenant: &TenantId,
    id: &str,
    by: &str,
    now_ms: u64,
) -> Result<Option<TokenRevoked>, crate::store::CentralStoreError> {
    let audit = AuditRow {
        at_ms: now_ms,
        tenant: tenant.clone(),
        actor: by.to_string(),
        action: "token.revoke".into(),
        target: format!("token:{id}"),
        detail: String::new(),
    };
    Ok(store
        .revoke_api_token(tenant, id, by, now_ms, &audit)
        .await?
        .map(|(t, revoked_now)| TokenRevoked {
            token: TokenInfo::of(&t, now_ms),
            revoked_now,
        }))
}

/// A user removal by the operator (`user remove`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RemoveUser {
    pub tenant: TenantId,
    pub name: String,
}

/// What removing a user did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UserRemoved {
    pub user: String,
    pub sessions_ended: u64,
}

/// Removes user `name` of `tenant` on behalf of `by`: its sessions end,
/// audited (`user.remove`) in the same write. `None` if there is no such
/// user. API tokens are not tied to users: one the user created stays
/// valid (`created_by` names it; revoke it apart).
pub async fn remove_user(
    store: &dyn AuthStore,
    tenant: &TenantId,
    name: &str,
    by: &str,
    now_ms: u64,
) -> Result<Option<UserRemoved>, crate::store::CentralStoreError> {
    let audit = AuditRow {
        at_ms: now_ms,
        tenant: tenant.clone(),
        actor: by.to_string(),
        action: "user.remove".into(),
        target: name.to_string(),
        detail: String::new(),
    };
    Ok(store
        .remove_user(tenant, name, &audit)
        .await?
        .map(|ended| UserRemoved {
            user: name.to_string(),
            sessions_ended: ended,
        }))
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AddUser {
    pub tenant: TenantId,
    pub name: String,
    pub role: Role,
    #[serde(default)]
    pub customers: Vec<CustomerId>,
    pub password: String,
}

pub use outpost_web::login::{MIN_PASSWORD_CHARS, hash_password, verify_password};

pub fn check_password(pw: &str) -> anyhow::Result<()> {
    Ok(outpost_web::login::check_password(pw)?)
}

/// The record of a new user: names and password checked, the password
/// hashed on `passwords`' bounded pool.
pub async fn user_record(
    req: &AddUser,
    now_ms: u64,
    passwords: &Passwords,
) -> anyhow::Result<UserRecord> {
    check_name("tenant", &req.tenant)?;
    check_name("user name", &req.name)?;
    // `token:ID` names a token's actions (audit, `created_by`): a user
    // so named would pass for one.
    if req.name.contains(':') {
        bail!(
            "user name {:?} contains ':' (reserved: actions of tokens are recorded as token:ID)",
            req.name
        );
    }
    for c in &req.customers {
        check_name("customer", c)?;
    }
    check_password(&req.password)?;
    Ok(UserRecord {
        tenant: req.tenant.clone(),
        name: req.name.clone(),
        role: req.role,
        customers: req.customers.clone(),
        password_hash: passwords
            .hash(req.password.clone())
            .await
            .context("hashing the password")?,
        created_ms: now_ms,
    })
}

/// Adds a user, or replaces one of the same name (the operator's `user
/// add`; a replaced user's sessions end). Returns the sessions ended.
pub async fn add_user(
    store: &dyn AuthStore,
    req: &AddUser,
    now_ms: u64,
    passwords: &Passwords,
) -> anyhow::Result<u64> {
    let rec = user_record(req, now_ms, passwords).await?;
    store.put_user(&rec).await.context("storing the user")
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_token_ttl_is_seconds_or_a_duration_between_a_minute_and_a_year() {
        assert_eq!(super::parse_token_ttl("3600").unwrap(), 3_600_000);
        assert_eq!(super::parse_token_ttl("90d").unwrap(), 90 * 86_400_000);
        assert_eq!(
            super::parse_token_ttl("1m").unwrap(),
            super::MIN_TOKEN_TTL_MS
        );
        assert_eq!(
            super::parse_token_ttl("365d").unwrap(),
            super::MAX_TOKEN_TTL_MS
        );
        for bad in ["0", "59s", "366d", "forever", "", "99999999999999999999d"] {
            let e = super::parse_token_ttl(bad).unwrap_err().to_string();
            assert!(e.starts_with("ttl "), "{bad}: {e}");
        }
        assert!(super::token_id("token:3508ce6a1799").is_ok());
        assert_eq!(super::token_id("3508ce6a1799").unwrap(), "3508ce6a1799");
        assert!(super::token_id("token:").is_err());
        assert!(super::token_id("../x").is_err());
    }

    #[test]
    fn passwords_verify_only_with_the_right_secret() {
        let h = super::hash_password("correct horse").unwrap();
        assert!(h.starts_with("$argon2id$"));
        assert!(super::verify_password("correct horse", &h));
        assert!(!super::verify_password("wrong horse", &h));
        assert!(!super::verify_password("x", "not a hash"));
    }
}
