//! Who talks to the broker: identities, their roles, and how a bearer token finds one.
//!
//! Tokens are never kept, only their SHA-256 digests (in the config's `[[client]]` tables and
//! in the token file), so a leaked config or data directory does not leak tokens. A token is
//! compared with *every* known digest in constant time, so the time an attempt takes says
//! nothing about which identity, if any, nearly matched.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tollgate_shared::console::Role;

/// The identity every caller has when the config turns authentication off (`auth = "none"`).
pub const LOCAL: &str = "local";

/// The SHA-256 of a bearer token.
pub type TokenDigest = [u8; 32];

/// SHA-256 of a token.
pub fn digest(token: &str) -> TokenDigest {
    Sha256::digest(token.as_bytes()).into()
}

/// The value of the first of `known` whose digest is the token's. Every digest is compared,
/// in constant time, whether or not one matched earlier.
pub fn find<'a, T: 'a>(
    known: impl IntoIterator<Item = (&'a TokenDigest, T)>,
    token: &str,
) -> Option<T> {
    find_digest(known, &digest(token))
}

/// [`find`], for a token already digested.
pub fn find_digest<'a, T: 'a>(
    known: impl IntoIterator<Item = (&'a TokenDigest, T)>,
    wanted: &TokenDigest,
) -> Option<T> {
    let mut found = None;
    for (digest, value) in known {
        if bool::from(digest.ct_eq(wanted)) && found.is_none() {
            found = Some(value);
        }
    }
    found
}

/// Someone who talks to the broker: a person at a console or an agent making calls.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// Unique name, shown as the approver or client in the audit trail.
    pub name: String,
    /// What they may do on the console API.
    pub role: Role,
    /// For approvers: the only servers they may decide for (`None`: all).
    pub servers: Option<Vec<String>>,
    /// Its SSH signing keys, and whether its decisions must be signed.
    pub signing: tollgate_shared::signing::Signing,
}

/// An MCP client the config lets call through the gateway (`[[client]]`).
#[derive(Debug, Clone)]
pub struct Client {
    /// Name used in the audit trail and policy.
    pub name: String,
    /// SHA-256 of its bearer token.
    pub token_sha256: TokenDigest,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_digest_is_lowercase_sha256() {
        assert_eq!(
            tollgate_shared::hex(&digest("abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn a_token_finds_its_identity_and_only_the_first_of_duplicates() {
        let known = [
            (digest("ta"), "a"),
            (digest("tb"), "b"),
            (digest("tb"), "b2"),
        ];
        let lookup = |t| find(known.iter().map(|(d, n)| (d, *n)), t);
        assert_eq!(lookup("tb"), Some("b"));
        assert_eq!(lookup("ta"), Some("a"));
        assert_eq!(lookup("nope"), None);
        assert_eq!(lookup(""), None);
    }
}
