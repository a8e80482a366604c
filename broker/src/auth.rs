//! Client authentication: bearer tokens compared by SHA-256 digest in constant time.
//!
//! Only digests are kept in memory and config, so a leaked config does not leak tokens, and
//! every configured digest is compared on every attempt so timing says nothing about which
//! client (if any) nearly matched.

use axum::http::HeaderMap;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::Auth;

/// The identity used when the config explicitly disables authentication.
pub const LOCAL_IDENTITY: &str = "local";

/// SHA-256 of a token.
pub fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Lowercase hex of a digest.
pub fn hex(d: &[u8; 32]) -> String {
    tollgate_shared::hex(d)
}

/// Why a request was not authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No `Authorization: Bearer ...` header.
    #[error("missing bearer token: send `Authorization: Bearer <token>`")]
    Missing,
    /// A token that matches no configured client.
    #[error("invalid bearer token")]
    Invalid,
}

/// The bearer token of a request.
pub fn bearer(headers: &HeaderMap) -> Result<&str, AuthError> {
    headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or(AuthError::Missing)
}

/// Identify the caller of an MCP request: a `[[client]]` of the config, or an identity from
/// the token file (whose calls then carry its name, so it cannot approve them itself).
pub fn authenticate(
    auth: &Auth,
    registry: Option<&crate::tokens::Registry>,
    headers: &HeaderMap,
) -> Result<String, AuthError> {
    let clients = match auth {
        Auth::None => return Ok(LOCAL_IDENTITY.to_string()),
        Auth::Tokens(c) => c,
    };
    let token = bearer(headers)?;
    let d = digest(token);
    let mut found = None;
    for c in clients {
        if bool::from(c.token_sha256.ct_eq(&d)) {
            found = Some(c.name.clone());
        }
    }
    if found.is_none()
        && let Some(who) = registry.and_then(|r| r.lookup(token))
    {
        found = Some(who.name);
    }
    found.ok_or(AuthError::Invalid)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ClientIdentity;

    #[test]
    fn bearer_tokens_map_to_client_names() {
        let auth = Auth::Tokens(vec![
            ClientIdentity {
                name: "a".into(),
                token_sha256: digest("ta"),
            },
            ClientIdentity {
                name: "b".into(),
                token_sha256: digest("tb"),
            },
        ]);
        let mut h = HeaderMap::new();
        assert_eq!(authenticate(&auth, None, &h), Err(AuthError::Missing));
        h.insert("authorization", "Bearer tb".parse().expect("header"));
        assert_eq!(authenticate(&auth, None, &h).as_deref(), Ok("b"));
        h.insert("authorization", "Bearer nope".parse().expect("header"));
        assert_eq!(authenticate(&auth, None, &h), Err(AuthError::Invalid));
        assert_eq!(
            authenticate(&Auth::None, None, &HeaderMap::new()).as_deref(),
            Ok(LOCAL_IDENTITY)
        );
    }

    #[test]
    fn hex_digest_is_lowercase_sha256() {
        assert_eq!(
            hex(&digest("abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
