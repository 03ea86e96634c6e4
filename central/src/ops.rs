//! Operator actions shared by the CLI (database opened directly) and the
//! operator endpoints of a running central: add a site, create an API
//! token, add a web user; and the credential helpers. The operator may
//! grant anything; what a tenant's own admins may grant is
//! [`Principal::may_grant`], checked by the API before it calls these.

use anyhow::{Context, bail};
use outpost_proto::{CustomerId, SiteId, TenantId};
use serde::{Deserialize, Serialize};

use crate::login::Passwords;
use crate::model::{ApiTokenRecord, JoinTokenRecord, Principal, Role, SiteRecord, UserRecord};
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
}

pub async fn create_token(
    store: &dyn AuthStore,
    req: &CreateToken,
    now_ms: u64,
) -> anyhow::Result<String> {
    check_name("tenant", &req.tenant)?;
    for c in &req.customers {
        check_name("customer", c)?;
    }
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
    };
    store
        .put_api_token(&sha256(&token), &rec)
        .await
        .context("storing the token")?;
    Ok(token)
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
    fn passwords_verify_only_with_the_right_secret() {
        let h = super::hash_password("correct horse").unwrap();
        assert!(h.starts_with("$argon2id$"));
        assert!(super::verify_password("correct horse", &h));
        assert!(!super::verify_password("wrong horse", &h));
        assert!(!super::verify_password("x", "not a hash"));
    }
}
