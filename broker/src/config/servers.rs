//! `[[server]]`: the upstreams, parsed into the transports' own spec.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::{Problem, Validator};
use crate::upstream::{Command, Remote, ServerSpec, SessionLimits, Transport};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawServer {
    pub(super) name: Spanned<String>,
    pub(super) command: Option<Spanned<Vec<String>>>,
    pub(super) url: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) env: BTreeMap<String, String>,
    pub(super) cwd: Option<String>,
    #[serde(default)]
    pub(super) headers: BTreeMap<String, String>,
    pub(super) timeout: Option<Spanned<String>>,
}

impl Validator<'_> {
    pub(super) fn servers(
        &mut self,
        raw: Vec<Spanned<RawServer>>,
        default_timeout: Duration,
        sessions: SessionLimits,
    ) -> Vec<ServerSpec> {
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        for s in raw {
            let span = s.span();
            let s = s.into_inner();
            let name = s.name.get_ref().clone();
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            {
                self.problem(
                    s.name.span(),
                    format!("server name {name:?} is not usable in a URL path"),
                    Some("use letters, digits, '-', '_' and '.'"),
                );
            } else if !seen.insert(name.clone()) {
                self.problem(
                    s.name.span(),
                    format!("duplicate server name {name:?}"),
                    Some("each [[server]] needs its own name"),
                );
            }
            let timeout = self.duration(s.timeout, default_timeout, "timeout");
            let transport = match (s.command, s.url) {
                (Some(cmd), None) => {
                    if cmd.get_ref().is_empty() || cmd.get_ref()[0].is_empty() {
                        self.problem(
                            cmd.span(),
                            format!("server {name:?} has an empty command"),
                            Some("command = [\"program\", \"arg\", ...]"),
                        );
                    }
                    if !s.headers.is_empty() {
                        self.problem(
                            span.clone(),
                            format!("server {name:?}: headers only apply to url upstreams"),
                            None,
                        );
                    }
                    Transport::Command(Command {
                        argv: cmd.into_inner(),
                        env: s.env,
                        cwd: s.cwd.map(PathBuf::from),
                    })
                }
                (None, Some(url)) => {
                    let u = url.get_ref();
                    if reqwest::Url::parse(u)
                        .map(|p| !matches!(p.scheme(), "http" | "https"))
                        .unwrap_or(true)
                    {
                        self.problem(
                            url.span(),
                            format!("server {name:?}: {u:?} is not an http(s) URL"),
                            Some("for example \"https://mcp.example.com/mcp\""),
                        );
                    }
                    if !s.env.is_empty() || s.cwd.is_some() {
                        self.problem(
                            span.clone(),
                            format!("server {name:?}: env and cwd only apply to command upstreams"),
                            None,
                        );
                    }
                    let mut headers = BTreeMap::new();
                    for (k, v) in s.headers {
                        match expand_env(&v) {
                            Ok(v) => {
                                headers.insert(k, v);
                            }
                            Err(Unset(var)) => self.problem(
                                span.clone(),
                                format!("server {name:?}: header {k:?} uses ${{{var}}}, which is not set in the environment"),
                                Some("export the variable before starting the broker"),
                            ),
                        }
                    }
                    Transport::Url(Remote {
                        url: url.into_inner(),
                        headers,
                    })
                }
                (Some(_), Some(_)) | (None, None) => {
                    self.problem(
                        span.clone(),
                        format!("server {name:?} needs exactly one of command or url"),
                        Some("command = [...] launches a stdio server; url = \"...\" reaches a Streamable HTTP one"),
                    );
                    Transport::Command(Command {
                        argv: vec![],
                        env: BTreeMap::new(),
                        cwd: None,
                    })
                }
            };
            out.push(ServerSpec {
                name,
                transport,
                timeout,
                sessions,
            });
        }
        if out.is_empty() {
            self.problems.push(Problem {
                line: 0,
                column: 0,
                message: "no [[server]] is configured, so there is nothing to put a gateway in front of".into(),
                hint: Some("add [[server]] name = \"fs\" command = [\"npx\", \"-y\", \"@modelcontextprotocol/server-filesystem\", \"/srv\"]".into()),
            });
        }
        out
    }
}

/// An environment variable a config value names that is not set.
#[derive(Debug, PartialEq, Eq)]
struct Unset(String);

/// Expand `${VAR}` from the environment, or name the first variable that is not set.
fn expand_env(s: &str) -> Result<String, Unset> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else {
            out.push_str(&rest[start..]);
            return Ok(out);
        };
        let var = &after[..end];
        out.push_str(&std::env::var(var).map_err(|_| Unset(var.to_string()))?);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_expansion_reports_missing_variables() {
        assert_eq!(expand_env("plain").as_deref(), Ok("plain"));
        assert_eq!(
            expand_env("Bearer ${TOLLGATE_SURELY_UNSET_VAR}"),
            Err(Unset("TOLLGATE_SURELY_UNSET_VAR".into()))
        );
    }
}
