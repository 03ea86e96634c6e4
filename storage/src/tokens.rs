//! Enrollment tokens: created by an operator, stored hashed, consumed by
//! enrollment with expiry and use count enforced atomically.

use std::sync::Mutex;

use outpost_proto::pki::sha256;

use crate::error::Result;
use crate::model::EnrollToken;
use crate::{Store, Table};

/// `sha256(token)` → `EnrollToken`.
pub const TOKENS: Table = Table::new("tokens");

/// Why a token was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenRejection {
    #[error("unknown enrollment token")]
    Unknown,
    #[error("enrollment token expired")]
    Expired,
    #[error("enrollment token has no uses left")]
    UsedUp,
}

/// Serialises token consumption (read-check-write) across enrollments.
static CONSUME_LOCK: Mutex<()> = Mutex::new(());

/// Creates a token: returns the secret to hand to installers. Only its hash is stored.
pub fn create(store: &Store, token: &EnrollToken) -> Result<String> {
    let secret = format!("opt_{}", hex::encode(rand::random::<[u8; 20]>()));
    store.put(TOKENS, &sha256(secret.as_bytes()), token)?;
    Ok(secret)
}

/// How the audit log names a token without revealing it: `token:` and
/// the first 12 hex digits of its SHA-256 (the key it is stored under).
pub fn reference(secret: &str) -> String {
    let h = sha256(secret.as_bytes());
    format!("token:{}", hex::encode(&h[..6]))
}

/// Whether `secret` is a stored token (whatever its expiry and uses).
pub fn exists(store: &Store, secret: &str) -> Result<bool> {
    Ok(store
        .get::<EnrollToken>(TOKENS, &sha256(secret.as_bytes()))?
        .is_some())
}

/// Validates `secret` and consumes one use of it.
pub fn consume(
    store: &Store,
    secret: &str,
    now_ms: u64,
) -> Result<std::result::Result<EnrollToken, TokenRejection>> {
    let key = sha256(secret.as_bytes());
    let _guard = CONSUME_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let Some(mut token) = store.get::<EnrollToken>(TOKENS, &key)? else {
        return Ok(Err(TokenRejection::Unknown));
    };
    if now_ms >= token.expires_at_ms {
        return Ok(Err(TokenRejection::Expired));
    }
    if token.uses >= token.uses_allowed {
        return Ok(Err(TokenRejection::UsedUp));
    }
    token.uses += 1;
    store.put(TOKENS, &key, &token)?;
    Ok(Ok(token))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::StoreOptions;

    fn token(expires: u64, uses: u32) -> EnrollToken {
        EnrollToken {
            tenant: "acme".into(),
            customer: "c".into(),
            created_at_ms: 0,
            expires_at_ms: expires,
            uses_allowed: uses,
            uses: 0,
        }
    }

    #[test]
    fn token_lifecycle() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path(), &StoreOptions::default(), crate::TABLES).unwrap();
        let secret = create(&s, &token(1000, 2)).unwrap();
        assert!(secret.starts_with("opt_"));
        // Stored hashed: the secret itself is nowhere in the table.
        let mut found_plain = false;
        s.scan_raw(TOKENS, &[], None, |k, _| {
            found_plain |= k == secret.as_bytes();
            Ok(true)
        })
        .unwrap();
        assert!(!found_plain);

        assert_eq!(
            consume(&s, "nope", 10).unwrap(),
            Err(TokenRejection::Unknown)
        );
        assert!(consume(&s, &secret, 10).unwrap().is_ok());
        assert!(consume(&s, &secret, 10).unwrap().is_ok());
        assert_eq!(
            consume(&s, &secret, 10).unwrap(),
            Err(TokenRejection::UsedUp)
        );

        // The audit reference: stable, short, not the secret.
        let r = reference(&secret);
        assert!(r.starts_with("token:") && r.len() == 18, "{r}");
        assert_eq!(r, reference(&secret));
        assert!(!r.contains(&secret[4..]));
        assert!(exists(&s, &secret).unwrap());
        assert!(!exists(&s, "nope").unwrap());

        let s2 = create(&s, &token(1000, 5)).unwrap();
        assert_eq!(
            consume(&s, &s2, 1000).unwrap(),
            Err(TokenRejection::Expired)
        );
    }
}
