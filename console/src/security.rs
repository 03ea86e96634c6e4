//! The console's browser security: CSRF tokens (an HMAC of the viewer's
//! credential id under a server key, checked in constant time), the
//! same-origin check of state-changing requests (`Sec-Fetch-Site`,
//! `Origin` against `Host`), and the response headers every page carries
//! (CSP without inline script or style, `nosniff`, a referrer only to
//! the console itself, no framing).
//!
//! The referrer policy is `same-origin`, not `no-referrer`: under
//! `no-referrer` browsers send `Origin: null` even with same-origin form
//! posts, which the same-origin check must refuse.
//!
//! RBAC is not here: the backend decides what a viewer may do
//! ([`crate::backend::Capabilities`]) and refuses the action itself too.

use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::middleware::Next;
use axum::response::Response;
use ring::hmac;

/// The Content-Security-Policy of every console response.
pub const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

/// Key of the CSRF tokens. Random per process by default: a restart
/// invalidates open forms (the page reloads with a fresh token), never a
/// session.
#[derive(Clone)]
pub struct CsrfKey(hmac::Key);

impl std::fmt::Debug for CsrfKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CsrfKey(..)")
    }
}

/// Domain separation of the HMAC input.
const CSRF_CONTEXT: &[u8] = b"outpost-console-csrf\0";

impl CsrfKey {
    /// A fresh random key.
    pub fn random() -> CsrfKey {
        CsrfKey::from_bytes(&rand::random::<[u8; 32]>())
    }

    pub fn from_bytes(key: &[u8]) -> CsrfKey {
        CsrfKey(hmac::Key::new(hmac::HMAC_SHA256, key))
    }

    fn tag(&self, subject: &[u8]) -> hmac::Tag {
        let mut ctx = hmac::Context::with_key(&self.0);
        ctx.update(CSRF_CONTEXT);
        ctx.update(subject);
        ctx.sign()
    }

    /// The token of `subject` (the viewer's credential id: a session's
    /// hash), hex.
    pub fn token(&self, subject: &[u8]) -> String {
        hex::encode(self.tag(subject).as_ref())
    }

    /// Whether `token` is the token of `subject` (constant time).
    pub fn verify(&self, subject: &[u8], token: &str) -> bool {
        let Ok(raw) = hex::decode(token.trim()) else {
            return false;
        };
        let mut msg = CSRF_CONTEXT.to_vec();
        msg.extend_from_slice(subject);
        hmac::verify(&self.0, &msg, &raw).is_ok()
    }
}

/// Why a state-changing request is refused before its CSRF token is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrossOrigin {
    /// `Sec-Fetch-Site` says another site (or a sibling) sent it.
    FetchSite,
    /// `Origin` names another origin (or `null`).
    Origin,
}

impl CrossOrigin {
    pub fn as_str(self) -> &'static str {
        match self {
            CrossOrigin::FetchSite => "cross_site",
            CrossOrigin::Origin => "origin_mismatch",
        }
    }
}

/// The same-origin check of a state-changing request. Browsers send
/// `Sec-Fetch-Site` and `Origin` with every form post; a client that
/// sends neither (curl, a script) is not a browser another site could
/// drive, and still needs the CSRF token.
pub fn same_origin(h: &HeaderMap) -> Result<(), CrossOrigin> {
    if let Some(site) = h.get("sec-fetch-site") {
        let ok = matches!(site.to_str(), Ok("same-origin") | Ok("none"));
        if !ok {
            return Err(CrossOrigin::FetchSite);
        }
    }
    if let Some(origin) = h.get(header::ORIGIN) {
        let host = h.get(header::HOST).and_then(|v| v.to_str().ok());
        let authority = origin.to_str().ok().and_then(|o| {
            o.strip_prefix("https://")
                .or_else(|| o.strip_prefix("http://"))
        });
        match (authority, host) {
            (Some(a), Some(host)) if a.eq_ignore_ascii_case(host) => {}
            _ => return Err(CrossOrigin::Origin),
        }
    }
    Ok(())
}

/// Middleware: the security headers of every console response (pages,
/// assets, the event stream, errors).
pub async fn headers(req: Request, next: Next) -> Response {
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_csrf_token_is_valid_for_its_subject_only() {
        let k = CsrfKey::from_bytes(b"server key");
        let t = k.token(b"session-a");
        assert_eq!(t.len(), 64);
        assert!(k.verify(b"session-a", &t));
        assert!(!k.verify(b"session-b", &t), "another session");
        assert!(!k.verify(b"session-a", ""), "none");
        assert!(!k.verify(b"session-a", "zz"), "not hex");
        assert!(!k.verify(b"session-a", &t[..62]), "cut");
        let other = CsrfKey::from_bytes(b"other key");
        assert!(!other.verify(b"session-a", &t), "another server key");
        assert_eq!(t, k.token(b"session-a"), "stable per session");
    }

    fn hm(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(
                axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    #[test]
    fn cross_origin_posts_are_refused_and_same_origin_ones_pass() {
        let host = ("host", "console.example:8090");
        assert_eq!(same_origin(&hm(&[host])), Ok(()), "no browser headers");
        assert_eq!(
            same_origin(&hm(&[
                host,
                ("origin", "http://console.example:8090"),
                ("sec-fetch-site", "same-origin")
            ])),
            Ok(())
        );
        assert_eq!(
            same_origin(&hm(&[host, ("sec-fetch-site", "cross-site")])),
            Err(CrossOrigin::FetchSite)
        );
        assert_eq!(
            same_origin(&hm(&[host, ("sec-fetch-site", "same-site")])),
            Err(CrossOrigin::FetchSite),
            "a sibling subdomain is another origin"
        );
        assert_eq!(
            same_origin(&hm(&[host, ("origin", "http://evil.example")])),
            Err(CrossOrigin::Origin)
        );
        assert_eq!(
            same_origin(&hm(&[host, ("origin", "null")])),
            Err(CrossOrigin::Origin)
        );
        assert_eq!(
            same_origin(&hm(&[("origin", "http://console.example:8090")])),
            Err(CrossOrigin::Origin),
            "no Host to compare with"
        );
    }
}
