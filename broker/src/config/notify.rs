//! `[[notify]]`: notification sinks, parsed into the notifier's [`SinkSpec`]s.
//!
//! Secrets (a webhook's HMAC key, a Slack URL, a PagerDuty routing key) should not sit in the
//! file: any string value may name environment variables as `${NAME}`, filled in at load.

use std::collections::HashSet;

use serde::Deserialize;
use tollgate_policy::ToolPattern;
use tollgate_policy::glob::Glob;
use toml::Spanned;

use super::Validator;
use crate::notify::{Filter, Kind, SinkSpec, Target, defaults};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawNotify {
    name: Spanned<String>,
    kind: Spanned<String>,
    url: Option<Spanned<String>>,
    secret: Option<Spanned<String>>,
    routing_key: Option<Spanned<String>>,
    command: Option<Spanned<Vec<String>>>,
    events: Option<Spanned<Vec<String>>>,
    #[serde(default)]
    servers: Vec<Spanned<String>>,
    #[serde(default)]
    tools: Vec<Spanned<String>>,
    #[serde(default)]
    rules: Vec<Spanned<String>>,
    #[serde(default)]
    clients: Vec<Spanned<String>>,
    expiring_before: Option<Spanned<String>>,
    coalesce: Option<Spanned<String>>,
    coalesce_max: Option<Spanned<String>>,
    per_minute: Option<Spanned<i64>>,
    timeout: Option<Spanned<String>>,
    retries: Option<Spanned<i64>>,
    queue: Option<Spanned<i64>>,
    link_template: Option<Spanned<String>>,
}

/// `text` with every `${NAME}` replaced by the environment variable's value.
fn expand(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else {
            return Err(format!("{text:?} has \"${{\" without a closing \"}}\""));
        };
        let name = &after[..end];
        match env(name) {
            Some(v) => out.push_str(&v),
            None => return Err(format!("the environment variable {name} is not set")),
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

fn from_env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

impl Validator<'_> {
    /// `v` with its `${NAME}`s filled in; `what` names where it is (`notify "pager"`).
    pub(super) fn expanded(
        &mut self,
        v: &Spanned<String>,
        what: &str,
        key: &str,
    ) -> Option<String> {
        match expand(v.get_ref(), &from_env) {
            Ok(s) => Some(s),
            Err(e) => {
                self.problem(
                    v.span(),
                    format!("{what}: {key}: {e}"),
                    Some("export it in the broker's environment (systemd: Environment= or EnvironmentFile=)"),
                );
                None
            }
        }
    }

    fn globs(&mut self, sink: &str, key: &'static str, raw: Vec<Spanned<String>>) -> Vec<Glob> {
        let mut out = Vec::new();
        for g in raw {
            match Glob::new(g.get_ref(), key, g.get_ref()) {
                Ok(glob) => out.push(glob),
                Err(e) => self.problem(g.span(), format!("notify {sink:?}: {key}: {e}"), None),
            }
        }
        out
    }

    pub(super) fn notify(&mut self, raw: Vec<Spanned<RawNotify>>) -> Vec<SinkSpec> {
        let mut names = HashSet::new();
        let mut out = Vec::new();
        for r in raw {
            let span = r.span();
            let r = r.into_inner();
            let name = r.name.get_ref().clone();
            if !names.insert(name.clone()) {
                self.problem(
                    r.name.span(),
                    format!("notify {name:?} is defined twice"),
                    Some("each [[notify]] needs its own name"),
                );
            }
            let url = |v: &mut Self, default: Option<&str>| -> Option<reqwest::Url> {
                let text = match &r.url {
                    Some(u) => v.expanded(u, &name, "url")?,
                    None => match default {
                        Some(d) => d.to_string(),
                        None => {
                            v.problem(
                                span.clone(),
                                format!("notify {name:?}: kind {:?} needs url", r.kind.get_ref()),
                                None,
                            );
                            return None;
                        }
                    },
                };
                match reqwest::Url::parse(&text) {
                    Ok(u) if matches!(u.scheme(), "http" | "https") => Some(u),
                    _ => {
                        v.problem(
                            r.url.as_ref().map_or(span.clone(), |u| u.span()),
                            format!("notify {name:?}: url is not an http(s) URL"),
                            None,
                        );
                        None
                    }
                }
            };
            let target = match r.kind.get_ref().as_str() {
                "webhook" => url(self, None).map(|url| Target::Webhook {
                    url,
                    secret: r
                        .secret
                        .as_ref()
                        .and_then(|s| self.expanded(s, &format!("notify {name:?}"), "secret")),
                }),
                "slack" => url(self, None).map(|url| Target::Slack { url }),
                "pagerduty" => {
                    let routing_key = match &r.routing_key {
                        Some(k) => self.expanded(k, &format!("notify {name:?}"), "routing_key"),
                        None => {
                            self.problem(
                                span.clone(),
                                format!("notify {name:?}: kind \"pagerduty\" needs routing_key"),
                                Some("the Events API v2 integration key of the PagerDuty service, e.g. routing_key = \"${PAGERDUTY_ROUTING_KEY}\""),
                            );
                            None
                        }
                    };
                    let url = url(self, Some(defaults::PAGERDUTY_URL));
                    url.zip(routing_key)
                        .map(|(url, routing_key)| Target::PagerDuty { url, routing_key })
                }
                "command" => match &r.command {
                    Some(c) if !c.get_ref().is_empty() => {
                        let argv: Vec<String> = c
                            .get_ref()
                            .iter()
                            .map(|a| expand(a, &from_env))
                            .collect::<Result<_, _>>()
                            .map_err(|e| {
                                self.problem(
                                    c.span(),
                                    format!("notify {name:?}: command: {e}"),
                                    None,
                                )
                            })
                            .unwrap_or_default();
                        (!argv.is_empty()).then_some(Target::Command { argv })
                    }
                    _ => {
                        self.problem(
                            span.clone(),
                            format!("notify {name:?}: kind \"command\" needs command = [\"program\", \"arg\", ...]"),
                            None,
                        );
                        None
                    }
                },
                other => {
                    self.problem(
                        r.kind.span(),
                        format!("notify {name:?}: unknown kind {other:?}"),
                        Some("use \"webhook\", \"slack\", \"pagerduty\" or \"command\""),
                    );
                    None
                }
            };
            let events = match &r.events {
                None => vec![Kind::Held, Kind::Expiring, Kind::Decided, Kind::Expired],
                Some(list) => {
                    let mut events = Vec::new();
                    for e in list.get_ref() {
                        match Kind::parse(e) {
                            Some(k) => events.push(k),
                            None => self.problem(
                                list.span(),
                                format!("notify {name:?}: unknown event {e:?}"),
                                Some("events are \"held\", \"escalated\", \"expiring\", \"decided\" and \"expired\""),
                            ),
                        }
                    }
                    events
                }
            };
            let mut tools = Vec::new();
            for t in r.tools {
                match ToolPattern::new(t.get_ref()) {
                    Ok(p) => tools.push(p),
                    Err(e) => self.problem(t.span(), format!("notify {name:?}: tools: {e}"), None),
                }
            }
            let filter = Filter {
                servers: self.globs(&name, "servers", r.servers),
                tools,
                rules: self.globs(&name, "rules", r.rules),
                clients: self.globs(&name, "clients", r.clients),
            };
            let what = |key: &str| format!("notify {name:?}: {key}");
            let per_minute = self
                .count(&format!("notify {name:?}"), "per_minute", r.per_minute)
                .unwrap_or(defaults::PER_MINUTE);
            let queue = self
                .count(&format!("notify {name:?}"), "queue", r.queue)
                .map_or(defaults::QUEUE, |n| n as usize);
            let retries = match r.retries {
                None => defaults::RETRIES,
                Some(v) => u32::try_from(*v.get_ref()).unwrap_or_else(|_| {
                    self.problem(v.span(), what("retries must be 0 or more"), None);
                    defaults::RETRIES
                }),
            };
            let link_template = r
                .link_template
                .as_ref()
                .and_then(|t| self.expanded(t, &format!("notify {name:?}"), "link_template"));
            let spec = SinkSpec {
                expiring_before: self.duration(
                    r.expiring_before,
                    defaults::EXPIRING_BEFORE,
                    &what("expiring_before"),
                ),
                coalesce: self.duration(r.coalesce, defaults::COALESCE, &what("coalesce")),
                coalesce_max: self.duration(
                    r.coalesce_max,
                    defaults::COALESCE_MAX,
                    &what("coalesce_max"),
                ),
                timeout: self.duration(r.timeout, defaults::TIMEOUT, &what("timeout")),
                per_minute,
                retries,
                queue,
                link_template,
                filter,
                events,
                name,
                target: match target {
                    Some(t) => t,
                    None => continue,
                },
            };
            out.push(spec);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn environment_variables_fill_in_and_missing_ones_are_named() {
        let env = |n: &str| (n == "KEY").then(|| "s3cret".to_string());
        assert_eq!(
            expand("a${KEY}b${KEY}", &env).as_deref(),
            Ok("as3cretbs3cret")
        );
        assert_eq!(expand("plain", &env).as_deref(), Ok("plain"));
        assert!(
            expand("${NOPE}", &env)
                .expect_err("an error")
                .contains("NOPE is not set")
        );
        assert!(
            expand("${KEY", &env)
                .expect_err("an error")
                .contains("without a closing")
        );
    }
}
