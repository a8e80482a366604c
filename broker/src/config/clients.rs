//! `[broker] auth` and `[[client]]`: who may call through the gateway.

use std::collections::HashSet;

use serde::Deserialize;
use tollgate_policy::identity::Client;
use toml::Spanned;

use super::Validator;
use crate::auth::Auth;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawClient {
    pub(super) name: Spanned<String>,
    pub(super) token_sha256: Option<Spanned<String>>,
    pub(super) token_env: Option<Spanned<String>>,
}

/// `[broker] auth`.
pub(super) enum AuthMode {
    None,
    Tokens,
}

impl Validator<'_> {
    pub(super) fn auth_mode(&mut self, auth: Option<Spanned<String>>) -> AuthMode {
        match auth {
            None => AuthMode::Tokens,
            Some(a) => match a.get_ref().as_str() {
                "token" => AuthMode::Tokens,
                "none" => AuthMode::None,
                other => {
                    self.problem(a.span(), format!("unknown auth mode {other:?}"), Some("use \"token\" (bearer tokens, the default) or \"none\" (local use only)"));
                    AuthMode::Tokens
                }
            },
        }
    }

    pub(super) fn auth(&mut self, mode: AuthMode, raw: Vec<Spanned<RawClient>>) -> Auth {
        let mut clients = Vec::new();
        let mut names = HashSet::new();
        let mut digests = HashSet::new();
        for c in raw {
            let c = c.into_inner();
            let name = c.name.get_ref().clone();
            if name.is_empty() || name == "local" {
                self.problem(
                    c.name.span(),
                    format!("client name {name:?} is reserved or empty"),
                    None,
                );
            } else if !names.insert(name.clone()) {
                self.problem(
                    c.name.span(),
                    format!("duplicate client name {name:?}"),
                    None,
                );
            }
            let digest = match (c.token_sha256, c.token_env) {
                (Some(h), None) => {
                    match tollgate_shared::unhex::<32>(h.get_ref()) {
                        Some(d) => Some(d),
                        None => {
                            self.problem(
                            h.span(),
                            format!("client {name:?}: token_sha256 is not 64 hex digits"),
                            Some("print one with: printf %s \"$TOKEN\" | tollgate-broker hash-token"),
                        );
                            None
                        }
                    }
                }
                (None, Some(var)) => match std::env::var(var.get_ref()) {
                    Ok(t) if !t.is_empty() => Some(tollgate_policy::identity::digest(&t)),
                    _ => {
                        self.problem(
                            var.span(),
                            format!(
                                "client {name:?}: environment variable {:?} is not set",
                                var.get_ref()
                            ),
                            Some("export it before starting the broker, or use token_sha256"),
                        );
                        None
                    }
                },
                _ => {
                    self.problem(
                        c.name.span(),
                        format!("client {name:?} needs exactly one of token_sha256 or token_env"),
                        None,
                    );
                    None
                }
            };
            if let Some(d) = digest {
                if !digests.insert(d) {
                    self.problem(
                        c.name.span(),
                        format!("client {name:?} shares its token with another client"),
                        Some("give every client its own token"),
                    );
                }
                clients.push(Client {
                    name,
                    token_sha256: d,
                });
            }
        }
        match mode {
            AuthMode::None => Auth::None,
            // Without [[client]] tables, callers authenticate with identities from the token
            // file (`tollgate-broker token add`).
            AuthMode::Tokens => Auth::Tokens(clients),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::check;

    #[test]
    fn token_auth_takes_clients_from_config_or_the_token_file() {
        let none = check("[[server]]\nname = \"a\"\ncommand = [\"x\"]\n").expect("valid");
        assert!(matches!(none.auth, Auth::Tokens(ref c) if c.is_empty()));
        let hash = "a".repeat(64);
        let ok = check(&format!(
            "[[server]]\nname = \"a\"\ncommand = [\"x\"]\n[[client]]\nname = \"bot\"\ntoken_sha256 = \"{hash}\"\n"
        ))
        .expect("valid");
        assert!(matches!(ok.auth, Auth::Tokens(ref c) if c.len() == 1 && c[0].name == "bot"));
    }
}
