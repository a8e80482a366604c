//! The broker's TOML configuration: parsing, validation and error reporting.
//!
//! Loading is two steps. First serde reads the text into `Raw*` structs that keep the source
//! span of every value that can be wrong. Then a validator turns them into a [`Config`],
//! collecting *every* problem it finds (not just the first) with its line, column and a hint,
//! so `tollgate-broker check` can report a whole broken file in one go. Each section is parsed
//! into the type of the layer that uses it: servers into the transports' [`ServerSpec`], rules
//! into `tollgate_policy`'s [`Policy`], guards into the guards' settings, clients into
//! [`Auth`]. One file per section: [`broker`] (`[broker]`), [`servers`], [`clients`],
//! [`rules`] (`[policy]` and `[[rule]]`) and [`guards`] (`[dlp]`, `[[limit]]`, `[[budget]]`,
//! `[loops]`).

mod broker;
mod clients;
mod guards;
mod notify;
mod rules;
mod servers;
mod store;

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use tollgate_policy::guards::DlpSettings;
use tollgate_policy::guards::budget::Budget;
use tollgate_policy::guards::limits::Limit;
use tollgate_policy::guards::loops::LoopConfig;
use tollgate_policy::{Policy, ToolPattern};
use toml::Spanned;

pub use crate::auth::Auth;
pub use crate::upstream::ServerSpec;
pub use broker::{BrokerSettings, defaults};
pub use store::StoreSpec;

/// A validated configuration, ready to serve.
#[derive(Debug, Clone)]
pub struct Config {
    /// `[broker]` settings.
    pub broker: BrokerSettings,
    /// Configured upstreams, in file order.
    pub servers: Vec<ServerSpec>,
    /// Who may call through the gateway.
    pub auth: Auth,
    /// `[policy]` and the `[[rule]]`s.
    pub policy: Policy,
    /// The DLP guard's settings.
    pub dlp: DlpSettings,
    /// Rate limits (`[[limit]]`).
    pub limits: Vec<Limit>,
    /// Budgets (`[[budget]]`).
    pub budgets: Vec<Budget>,
    /// Loop detection (`[loops]`).
    pub loops: LoopConfig,
    /// Notification sinks (`[[notify]]`).
    pub notify: Vec<crate::notify::SinkSpec>,
    /// `[store]`: where the state lives.
    pub store: StoreSpec,
    /// Things that work but are likely not what was meant (`check` prints them, `serve` logs
    /// them).
    pub warnings: Vec<Problem>,
}

impl Config {
    /// The rules' escalations, by rule index, for the notifier.
    pub fn escalations(&self) -> std::collections::HashMap<usize, crate::notify::Escalation> {
        self.policy
            .rules
            .iter()
            .filter_map(|r| {
                let after = r.hold.escalate_after?;
                Some((
                    r.id.index,
                    crate::notify::Escalation {
                        after,
                        to: r.hold.escalate_to.clone(),
                    },
                ))
            })
            .collect()
    }
}

/// One problem found in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// 1-based line, 0 when the problem has no location.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
    /// What is wrong.
    pub message: String,
    /// What to do about it.
    pub hint: Option<String>,
}

/// Every problem found in a config file.
#[derive(Debug, Clone)]
pub struct ConfigError {
    /// The file.
    pub path: PathBuf,
    /// What is wrong with it, in file order.
    pub problems: Vec<Problem>,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.problems.len();
        writeln!(
            f,
            "{}: {n} problem{} in the configuration",
            self.path.display(),
            if n == 1 { "" } else { "s" }
        )?;
        for p in &self.problems {
            if p.line > 0 {
                write!(
                    f,
                    "  {}:{}:{}: {}",
                    self.path.display(),
                    p.line,
                    p.column,
                    p.message
                )?;
            } else {
                write!(f, "  {}: {}", self.path.display(), p.message)?;
            }
            if let Some(h) = &p.hint {
                write!(f, "\n    hint: {h}")?;
            }
            writeln!(f)?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    broker: broker::RawBroker,
    #[serde(default)]
    policy: rules::RawPolicy,
    #[serde(default)]
    client: Vec<Spanned<clients::RawClient>>,
    #[serde(default)]
    server: Vec<Spanned<servers::RawServer>>,
    #[serde(default)]
    rule: Vec<Spanned<rules::RawRule>>,
    #[serde(default)]
    dlp: guards::RawDlp,
    #[serde(default)]
    limit: Vec<Spanned<guards::RawLimit>>,
    #[serde(default)]
    budget: Vec<Spanned<guards::RawBudget>>,
    #[serde(default)]
    loops: guards::RawLoops,
    #[serde(default)]
    notify: Vec<Spanned<notify::RawNotify>>,
    #[serde(default)]
    store: store::RawStore,
}

/// Read and validate a config file.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        path: path.to_path_buf(),
        problems: vec![Problem {
            line: 0,
            column: 0,
            message: format!("cannot read the file: {e}"),
            hint: Some("pass the path of a TOML file with --config".into()),
        }],
    })?;
    parse(path, &text)
}

/// Parse and validate config text; `path` is used for messages and relative paths.
pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
    let fail = |problems| ConfigError {
        path: path.to_path_buf(),
        problems,
    };
    let raw: RawConfig = toml::from_str(text).map_err(|e| {
        let (line, column) = e.span().map(|s| line_col(text, s.start)).unwrap_or((0, 0));
        fail(vec![Problem {
            line,
            column,
            message: e.message().trim().to_string(),
            hint: None,
        }])
    })?;
    let mut v = Validator {
        text,
        problems: Vec::new(),
        warnings: Vec::new(),
    };
    let mut config = v.config(path, raw);
    config.warnings = std::mem::take(&mut v.warnings);
    config.policy.version = tollgate_policy::fingerprint::sha256_hex(text.as_bytes())[..12].into();
    if v.problems.is_empty() {
        Ok(config)
    } else {
        v.problems.sort_by_key(|p| (p.line, p.column));
        Err(fail(v.problems))
    }
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

struct Validator<'a> {
    text: &'a str,
    problems: Vec<Problem>,
    warnings: Vec<Problem>,
}

impl Validator<'_> {
    pub(super) fn warning(&mut self, span: Range<usize>, message: String, hint: Option<&str>) {
        let (line, column) = line_col(self.text, span.start);
        self.warnings.push(Problem {
            line,
            column,
            message,
            hint: hint.map(str::to_string),
        });
    }

    pub(super) fn problem(&mut self, span: Range<usize>, message: String, hint: Option<&str>) {
        let (line, column) = line_col(self.text, span.start);
        self.problems.push(Problem {
            line,
            column,
            message,
            hint: hint.map(str::to_string),
        });
    }

    pub(super) fn duration(
        &mut self,
        value: Option<Spanned<String>>,
        default: Duration,
        what: &str,
    ) -> Duration {
        self.duration_up_to(value, default, what, None)
    }

    /// [`Validator::duration`], or with `max` (the bound and why it is there) zero is allowed
    /// and a longer duration is a problem.
    pub(super) fn duration_up_to(
        &mut self,
        value: Option<Spanned<String>>,
        default: Duration,
        what: &str,
        max: Option<(Duration, &str)>,
    ) -> Duration {
        let Some(v) = value else { return default };
        match humantime::parse_duration(v.get_ref()) {
            Ok(d) if max.is_some_and(|(m, _)| d > m) => {
                let (m, why) = max.unwrap_or_default();
                self.problem(
                    v.span(),
                    format!(
                        "{what} {:?} is longer than {}",
                        v.get_ref(),
                        humantime::format_duration(m)
                    ),
                    Some(why),
                );
                default
            }
            Ok(d) if max.is_some() || !d.is_zero() => d,
            Ok(_) => {
                self.problem(v.span(), format!("{what} must be longer than zero"), None);
                default
            }
            Err(e) => {
                self.problem(
                    v.span(),
                    format!("{what} {:?} is not a duration: {e}", v.get_ref()),
                    Some("write durations like \"30s\", \"5m\" or \"1h 30m\""),
                );
                default
            }
        }
    }

    fn config(&mut self, path: &Path, raw: RawConfig) -> Config {
        let base = path.parent().unwrap_or(Path::new("."));
        let mode = self.auth_mode(raw.broker.auth.clone());
        let default_server = raw.broker.default_server.clone();
        let broker = self.broker(base, raw.broker);
        let store = self.store(base, raw.store, broker.listen.port());
        let servers = self.servers(
            raw.server,
            broker.upstream_timeout,
            crate::upstream::SessionLimits {
                per_client: broker.max_sessions_per_client,
                total: broker.max_sessions_per_server,
            },
        );
        if let Some(d) = &default_server
            && !servers.iter().any(|s| s.name == *d.get_ref())
        {
            self.problem(
                d.span(),
                format!(
                    "default_server {:?} is not a configured server",
                    d.get_ref()
                ),
                Some("name one of the [[server]] entries; /mcp serves it"),
            );
        }
        let auth = self.auth(mode, raw.client);
        let notify = self.notify(raw.notify);
        let sinks: Vec<&str> = notify.iter().map(|s| s.name.as_str()).collect();
        let policy = self.policy(raw.policy, raw.rule, &servers, &sinks);
        let dlp = self.dlp(raw.dlp);
        let limits = self.limits(raw.limit);
        let budgets = self.budgets(raw.budget);
        let loops = self.loops(raw.loops);
        Config {
            broker,
            servers,
            auth,
            policy,
            dlp,
            limits,
            budgets,
            loops,
            notify,
            store,
            warnings: Vec::new(),
        }
    }

    pub(super) fn patterns(&mut self, name: &str, raw: Vec<Spanned<String>>) -> Vec<ToolPattern> {
        let mut tools = Vec::new();
        for t in raw {
            match ToolPattern::new(t.get_ref()) {
                Ok(p) => tools.push(p),
                Err(e) => self.problem(
                    t.span(),
                    format!("{name}: {e}"),
                    Some("patterns are \"server/tool\" with * and ? wildcards"),
                ),
            }
        }
        tools
    }

    pub(super) fn count(&mut self, name: &str, key: &str, v: Option<Spanned<i64>>) -> Option<u32> {
        let v = v?;
        match u32::try_from(*v.get_ref()) {
            Ok(n) if n >= 1 => Some(n),
            _ => {
                self.problem(v.span(), format!("{name}: {key} must be 1 or more"), None);
                None
            }
        }
    }
}

/// Parse config text as `t.toml` (for tests).
#[cfg(test)]
pub(crate) fn check(text: &str) -> Result<Config, ConfigError> {
    parse(Path::new("t.toml"), text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tollgate_policy::Action;

    const OK: &str = r#"
[broker]
auth = "none"
[[server]]
name = "fs"
command = ["true"]
[[server]]
name = "github"
url = "https://example.com/mcp"
[[rule]]
name = "reads"
tools = ["fs/read_*", "*/list_*"]
action = "allow"
[[rule]]
tools = ["github/*"]
when = [{ arg = "/q", matches = "(?i)drop" }, { annotation = "destructiveHint", equals = true }]
action = "deny"
reason = "no"
"#;

    #[test]
    fn valid_config_loads_with_defaults() {
        let c = check(OK).expect("valid");
        assert_eq!(c.broker.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.broker.max_body, 4 << 20);
        assert_eq!(c.servers.len(), 2);
        assert!(matches!(c.auth, Auth::None));
        assert_eq!(c.policy.default, Action::Approve);
        assert_eq!(&*c.policy.rules[1].id.name, "rule 2");
        assert_eq!(c.policy.rules[1].when.len(), 2);
    }

    #[test]
    fn sync_linger_defaults_to_5ms_may_be_zero_and_is_bounded() {
        let c = check(OK).expect("valid");
        assert_eq!(c.broker.sync_linger, Duration::from_millis(5));
        assert!(!c.broker.sync_before_forward);
        let text = OK.replace(
            "auth = \"none\"",
            "auth = \"none\"\nsync_linger = \"0ms\"\nsync_before_forward = true",
        );
        let c = check(&text).expect("valid");
        assert_eq!(c.broker.sync_linger, Duration::ZERO);
        assert!(c.broker.sync_before_forward);
        for (value, says) in [("\"2s\"", "longer than 1s"), ("\"soon\"", "not a duration")] {
            let text = OK.replace(
                "auth = \"none\"",
                &format!("auth = \"none\"\nsync_linger = {value}"),
            );
            let err = check(&text).expect_err("invalid");
            assert!(
                err.problems[0].message.contains(says),
                "{}",
                err.problems[0].message
            );
        }
    }

    #[test]
    fn every_problem_is_reported_with_line_and_column() {
        let text = r#"[broker]
auth = "none"
[[server]]
name = "github"
command = ["x"]
[[server]]
name = "github"
command = ["y"]
[[rule]]
tools = ["gihub/x"]
action = "allow"
[[rule]]
tools = ["github/[x]"]
action = "maybe"
[[rule]]
tools = ["github/x"]
when = { arg = "/q", matches = "(" }
action = "deny"
"#;
        let err = check(text).expect_err("invalid");
        let msgs: Vec<String> = err
            .problems
            .iter()
            .map(|p| format!("{}:{} {}", p.line, p.column, p.message))
            .collect();
        let joined = msgs.join("\n");
        assert!(
            joined.contains("7:8 duplicate server name \"github\""),
            "{joined}"
        );
        assert!(
            joined.contains("10:10 rule 1 uses unknown server \"gihub\" (known: github, github)"),
            "{joined}"
        );
        assert!(
            joined.contains("13:10 rule 2: pattern \"github/[x]\" contains '['"),
            "{joined}"
        );
        assert!(
            joined.contains("14:10 rule 2: unknown action \"maybe\""),
            "{joined}"
        );
        assert!(joined.contains("17:8 rule 3: bad regex \"(\""), "{joined}");
        assert_eq!(err.problems.len(), 5, "{joined}");
    }

    #[test]
    fn syntax_errors_and_unknown_keys_have_locations() {
        let err = check("[broker]\nlisten = \n").expect_err("syntax");
        assert_eq!(err.problems[0].line, 2, "{err}");
        let err = check("[broker]\nauth = \"none\"\nlisen = \"x\"\n").expect_err("unknown key");
        assert_eq!(err.problems[0].line, 3, "{err}");
        assert!(err.problems[0].message.contains("lisen"), "{err}");
    }
}
