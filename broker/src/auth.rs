//! Identifying the caller of a request: its bearer token, matched against the config's
//! `[[client]]` digests and then the token file's identities (see `tollgate_policy::identity`
//! for how tokens are compared).

use axum::http::HeaderMap;
use tollgate_policy::identity::{self, Client};
use tollgate_store::tokens::Registry;

/// How MCP clients authenticate (`[broker] auth` and the `[[client]]` tables).
#[derive(Debug, Clone)]
pub enum Auth {
    /// No authentication; every caller is the identity `local`. Only when the config says so.
    None,
    /// Bearer tokens: the configured clients, then the identities of the token file.
    Tokens(Vec<Client>),
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
    registry: Option<&Registry>,
    headers: &HeaderMap,
) -> Result<String, AuthError> {
    let clients = match auth {
        Auth::None => return Ok(identity::LOCAL.to_string()),
        Auth::Tokens(c) => c,
    };
    let token = bearer(headers)?;
    identity::find(clients.iter().map(|c| (&c.token_sha256, &c.name)), token)
        .cloned()
        .or_else(|| registry.and_then(|r| r.lookup(token)).map(|who| who.name))
        .ok_or(AuthError::Invalid)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tollgate_policy::identity::digest;

    #[test]
    fn bearer_tokens_map_to_client_names() {
        let auth = Auth::Tokens(vec![
            Client {
                name: "a".into(),
                token_sha256: digest("ta"),
            },
            Client {
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
            Ok(identity::LOCAL)
        );
    }
}
