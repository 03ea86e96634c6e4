//! `/api/v1/tokens` (enrollment tokens) and `/api/v1/audit`.

use std::sync::Arc;

use outpost_proto::{CustomerId, TenantId};

use axum::extract::State;
use outpost_storage::model::{AuditEntry, EnrollToken};
use outpost_storage::{now_ms, registry, tokens};
use outpost_web::{Json, Query};
use serde::{Deserialize, Serialize};

use super::devices::{RangeQuery, blocking};
use super::timeparse::{parse_duration, parse_time};
use super::{ApiError, ApiState};

#[derive(Debug, Deserialize, Serialize)]
pub struct CreateToken {
    pub tenant: String,
    #[serde(default)]
    pub customer: String,
    /// Lifetime, e.g. `24h` (default) or seconds.
    pub ttl: Option<String>,
    /// Number of enrollments allowed (default 1).
    pub uses: Option<u32>,
}

#[derive(Debug, Deserialize, Serialize)]
pub struct TokenCreated {
    pub token: String,
    pub tenant: TenantId,
    pub customer: CustomerId,
    pub expires_at_ms: u64,
    pub uses: u32,
}

/// Longest token lifetime accepted.
const MAX_TTL_SECS: u64 = 365 * 86_400;

fn valid_name(what: &str, s: &str, required: bool) -> Result<(), ApiError> {
    if required && s.trim().is_empty() {
        return Err(ApiError::BadRequest(format!("{what} must not be empty")));
    }
    if s.len() > 128 || s.chars().any(|c| c.is_control()) {
        return Err(ApiError::BadRequest(format!(
            "{what} must be at most 128 characters without control characters"
        )));
    }
    Ok(())
}

pub async fn create(
    State(st): State<Arc<ApiState>>,
    axum::Extension(caller): axum::Extension<crate::users::auth::Caller>,
    Json(req): Json<CreateToken>,
) -> Result<Json<TokenCreated>, ApiError> {
    valid_name("tenant", &req.tenant, true)?;
    valid_name("customer", &req.customer, false)?;
    let ttl = req
        .ttl
        .as_deref()
        .map(|t| parse_duration("ttl", t))
        .transpose()
        .map_err(ApiError::BadRequest)?
        .unwrap_or(std::time::Duration::from_secs(86_400));
    if ttl.is_zero() || ttl.as_secs() > MAX_TTL_SECS {
        return Err(ApiError::BadRequest(
            "ttl must be between 1s and 365d".into(),
        ));
    }
    let uses = req.uses.unwrap_or(1);
    if uses == 0 {
        return Err(ApiError::BadRequest("uses must be at least 1".into()));
    }
    let now = now_ms();
    let token = EnrollToken {
        tenant: req.tenant.trim().into(),
        customer: req.customer.trim().into(),
        created_at_ms: now,
        expires_at_ms: now + ttl.as_millis() as u64,
        uses_allowed: uses,
        uses: 0,
    };
    let t2 = token.clone();
    let secret = blocking(&st.store, move |s| {
        let secret = tokens::create(s, &t2)?;
        registry::audit(
            s,
            &AuditEntry {
                at_ms: now,
                actor: caller.user,
                action: "token.create".into(),
                target: t2.tenant.to_string(),
                detail: format!(
                    "customer={} uses={} expires_at_ms={} {}",
                    t2.customer,
                    t2.uses_allowed,
                    t2.expires_at_ms,
                    tokens::reference(&secret)
                ),
            },
        )?;
        Ok(secret)
    })
    .await?;
    Ok(Json(TokenCreated {
        token: secret,
        tenant: token.tenant,
        customer: token.customer,
        expires_at_ms: token.expires_at_ms,
        uses,
    }))
}

pub async fn audit(
    State(st): State<Arc<ApiState>>,
    Query(q): Query<RangeQuery>,
) -> Result<Json<Vec<AuditEntry>>, ApiError> {
    let now = now_ms();
    let from = q
        .from
        .as_deref()
        .map(|t| parse_time(t, now))
        .transpose()
        .map_err(ApiError::BadRequest)?
        .unwrap_or(0);
    let to =
        q.to.as_deref()
            .map(|t| parse_time(t, now))
            .transpose()
            .map_err(ApiError::BadRequest)?
            .unwrap_or(u64::MAX);
    let limit = outpost_web::limit(q.limit, 1000, 100_000)?;
    Ok(Json(
        blocking(&st.store, move |s| {
            Ok(registry::audit_log(s, from, to, limit)?)
        })
        .await?,
    ))
}
