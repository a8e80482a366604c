//! The broker's TOML configuration: parsing, validation and error reporting.
//!
//! Loading is two steps. First serde reads the text into `Raw*` structs that keep the source
//! span of every value that can be wrong. Then [`validate`] turns them into a [`Config`],
//! collecting *every* problem it finds (not just the first) with its line, column and a hint,
//! so `tollgate-broker check` can report a whole broken file in one go.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use regex::Regex;
use serde::Deserialize;
use serde_json::Value;
use tollgate_shared::RuleRef;
use toml::Spanned;

pub use crate::auth::Auth;
use crate::upstream::{Command, Remote, ServerSpec, Transport};
use tollgate_policy::identity::Client;

use tollgate_policy::{
    Action, Cmp, Condition, HoldTerms, Policy, Rule, Subject, Test, ToolPattern,
};

/// A validated configuration, ready to serve.
#[derive(Debug, Clone)]
pub struct Config {
    /// `[broker]` settings.
    pub broker: BrokerSettings,
    /// Configured upstreams, in file order.
    pub servers: Vec<ServerSpec>,
    /// Who may call through the gateway.
    pub auth: Auth,
    /// The rules.
    pub policy: Policy,
    /// The DLP guard's settings.
    pub dlp: DlpSettings,
    /// Rate limits (`[[limit]]`).
    pub limits: Vec<tollgate_policy::guards::limits::Limit>,
    /// Budgets (`[[budget]]`).
    pub budgets: Vec<tollgate_policy::guards::budget::Budget>,
    /// Loop detection (`[loops]`).
    pub loops: tollgate_policy::guards::loops::LoopConfig,
}

/// `[dlp]`: secret scanning of arguments.
#[derive(Debug, Clone)]
pub struct DlpSettings {
    /// Scan at all (default true).
    pub enabled: bool,
    /// Default action on findings.
    pub action: tollgate_policy::guards::DlpAction,
    /// The high-entropy detector, `None` when turned off.
    pub entropy: Option<tollgate_policy::guards::dlp::Entropy>,
    /// Custom detectors: name and regex.
    pub detectors: Vec<(String, Regex)>,
}

/// `[broker]`: listeners, storage and limits.
#[derive(Debug, Clone)]
pub struct BrokerSettings {
    /// Address of the MCP frontends (`/mcp/<server>`).
    pub listen: SocketAddr,
    /// Directory of the sled store.
    pub data_dir: PathBuf,
    /// Largest request body accepted, in bytes.
    pub max_body: usize,
    /// Memory the store may use to cache its pages, in bytes.
    pub store_cache: usize,
    /// How long an upstream may stay silent on a request before the client gets an error.
    pub upstream_timeout: Duration,
    /// How long an idle MCP session (and its stdio child) is kept.
    pub session_idle: Duration,
    /// Browser origins allowed besides loopback ones.
    pub allowed_origins: Vec<String>,
    /// Address of the console WebSocket API (`/v1/console`).
    pub console_listen: SocketAddr,
    /// How long a held call waits for a decision unless its rule says otherwise.
    pub default_expiry: Duration,
    /// Interval of keep-alives (progress notifications, SSE comments) on held calls.
    pub keepalive: Duration,
    /// How long an approved retry-mode call may be repeated (once) to run.
    pub retry_ttl: Duration,
    /// After a restart, how long a recovered held call waits for its client to resume its
    /// stream before it is abandoned.
    pub resume_grace: Duration,
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
    broker: RawBroker,
    #[serde(default)]
    policy: RawPolicy,
    #[serde(default)]
    client: Vec<Spanned<RawClient>>,
    #[serde(default)]
    server: Vec<Spanned<RawServer>>,
    #[serde(default)]
    rule: Vec<Spanned<RawRule>>,
    #[serde(default)]
    dlp: RawDlp,
    #[serde(default)]
    limit: Vec<Spanned<RawLimit>>,
    #[serde(default)]
    budget: Vec<Spanned<RawBudget>>,
    #[serde(default)]
    loops: RawLoops,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBudget {
    name: Option<String>,
    #[serde(default)]
    tools: Option<Vec<Spanned<String>>>,
    max_pending: Option<Spanned<i64>>,
    max_approved: Option<Spanned<i64>>,
    window: Option<Spanned<String>>,
    daily: Option<Spanned<f64>>,
    #[serde(default)]
    costs: Vec<RawCost>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCost {
    tools: Vec<Spanned<String>>,
    weight: Spanned<f64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLoops {
    threshold: Option<Spanned<i64>>,
    window: Option<Spanned<String>>,
    action: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimit {
    name: Option<String>,
    tools: Spanned<Vec<Spanned<String>>>,
    per_client: Option<Spanned<String>>,
    per_server: Option<Spanned<String>>,
    per_tool: Option<Spanned<String>>,
    global: Option<Spanned<String>>,
    burst: Option<Spanned<i64>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawDlp {
    enabled: Option<bool>,
    action: Option<Spanned<String>>,
    entropy: Option<Spanned<toml::Value>>,
    #[serde(default)]
    detector: Vec<RawDetector>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDetector {
    name: String,
    regex: Spanned<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawBroker {
    listen: Option<Spanned<String>>,
    data_dir: Option<String>,
    auth: Option<Spanned<String>>,
    max_body: Option<Spanned<toml::Value>>,
    store_cache: Option<Spanned<toml::Value>>,
    upstream_timeout: Option<Spanned<String>>,
    session_idle: Option<Spanned<String>>,
    #[serde(default)]
    allowed_origins: Vec<String>,
    console_listen: Option<Spanned<String>>,
    default_expiry: Option<Spanned<String>>,
    keepalive: Option<Spanned<String>>,
    retry_ttl: Option<Spanned<String>>,
    resume_grace: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    default: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawClient {
    name: Spanned<String>,
    token_sha256: Option<Spanned<String>>,
    token_env: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    name: Spanned<String>,
    command: Option<Spanned<Vec<String>>>,
    url: Option<Spanned<String>>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    cwd: Option<String>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    timeout: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    name: Option<String>,
    tools: Spanned<Vec<Spanned<String>>>,
    when: Option<Spanned<toml::Value>>,
    action: Spanned<String>,
    reason: Option<String>,
    expiry: Option<Spanned<String>>,
    hold: Option<Spanned<String>>,
    quorum: Option<Spanned<i64>>,
    #[serde(default)]
    approvers: Vec<String>,
    dlp: Option<Spanned<String>>,
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
    };
    let mut config = v.config(path, raw);
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
}

impl Validator<'_> {
    fn problem(&mut self, span: Range<usize>, message: String, hint: Option<&str>) {
        let (line, column) = line_col(self.text, span.start);
        self.problems.push(Problem {
            line,
            column,
            message,
            hint: hint.map(str::to_string),
        });
    }

    fn duration(
        &mut self,
        value: Option<Spanned<String>>,
        default: Duration,
        what: &str,
    ) -> Duration {
        let Some(v) = value else { return default };
        match humantime::parse_duration(v.get_ref()) {
            Ok(d) if !d.is_zero() => d,
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
        let broker = self.broker(base, raw.broker);
        let servers = self.servers(raw.server, broker.upstream_timeout);
        let auth = self.auth(mode, raw.client);
        let policy = self.policy(raw.policy, raw.rule, &servers);
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
        }
    }

    fn patterns(&mut self, name: &str, raw: Vec<Spanned<String>>) -> Vec<ToolPattern> {
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

    fn count(&mut self, name: &str, key: &str, v: Option<Spanned<i64>>) -> Option<u32> {
        let v = v?;
        match u32::try_from(*v.get_ref()) {
            Ok(n) if n >= 1 => Some(n),
            _ => {
                self.problem(v.span(), format!("{name}: {key} must be 1 or more"), None);
                None
            }
        }
    }

    fn budgets(
        &mut self,
        raw: Vec<Spanned<RawBudget>>,
    ) -> Vec<tollgate_policy::guards::budget::Budget> {
        use tollgate_policy::guards::budget::{Budget, Cost};
        let mut out = Vec::new();
        for (i, b) in raw.into_iter().enumerate() {
            let span = b.span();
            let b = b.into_inner();
            let name = b.name.unwrap_or_else(|| format!("budget {}", i + 1));
            let tools = match b.tools {
                Some(t) => self.patterns(&name, t),
                None => vec![ToolPattern::new("*/*").expect("the catch-all pattern")],
            };
            let max_pending = self.count(&name, "max_pending", b.max_pending);
            let max_approved = self.count(&name, "max_approved", b.max_approved);
            let window = self.duration(
                b.window,
                Duration::from_secs(3600),
                &format!("{name}: window"),
            );
            let mut positive = |v: Spanned<f64>, what: &str| {
                if *v.get_ref() > 0.0 && v.get_ref().is_finite() {
                    Some(*v.get_ref())
                } else {
                    self.problem(
                        v.span(),
                        format!("{name}: {what} must be a number above zero"),
                        None,
                    );
                    None
                }
            };
            let daily = b.daily.and_then(|d| positive(d, "daily"));
            let mut costs = Vec::new();
            for c in b.costs {
                if let Some(weight) = positive(c.weight, "a cost weight") {
                    costs.push((c.tools, weight));
                }
            }
            let costs = costs
                .into_iter()
                .map(|(t, weight)| Cost {
                    tools: self.patterns(&name, t),
                    weight,
                })
                .collect();
            if max_pending.is_none() && max_approved.is_none() && daily.is_none() {
                self.problem(
                    span,
                    format!("{name} sets no cap"),
                    Some("add max_pending, max_approved (with window) or daily"),
                );
            }
            out.push(Budget {
                name,
                tools,
                max_pending,
                max_approved,
                window_ms: window.as_millis() as u64,
                daily,
                costs,
            });
        }
        out
    }

    fn loops(&mut self, raw: RawLoops) -> tollgate_policy::guards::loops::LoopConfig {
        use tollgate_policy::guards::loops::{LoopAction, LoopConfig};
        let d = LoopConfig::default();
        let threshold = self
            .count("[loops]", "threshold", raw.threshold)
            .unwrap_or(d.threshold);
        let window = self.duration(
            raw.window,
            Duration::from_millis(d.window_ms),
            "[loops] window",
        );
        let action = match raw.action {
            None => d.action,
            Some(a) => LoopAction::parse(a.get_ref()).unwrap_or_else(|| {
                self.problem(
                    a.span(),
                    format!("[loops] action: unknown action {:?}", a.get_ref()),
                    Some("use \"flag\" (mark the calls), \"approve\" (hold them for a person) or \"deny\""),
                );
                d.action
            }),
        };
        LoopConfig {
            threshold,
            window_ms: window.as_millis() as u64,
            action,
        }
    }

    fn address(&mut self, value: Option<Spanned<String>>, port: u16, what: &str) -> SocketAddr {
        let default = SocketAddr::from(([127, 0, 0, 1], port));
        match value {
            None => default,
            Some(l) => l.get_ref().parse().unwrap_or_else(|_| {
                self.problem(
                    l.span(),
                    format!("{what} address {:?} is not host:port", l.get_ref()),
                    Some("for example \"127.0.0.1:8080\"; use an IP address, not a host name"),
                );
                default
            }),
        }
    }

    fn broker(&mut self, base: &Path, raw: RawBroker) -> BrokerSettings {
        let listen = self.address(raw.listen, 8080, "listen");
        let console_listen = self.address(raw.console_listen, 8081, "console_listen");
        let max_body = match raw.max_body {
            None => 4 << 20,
            Some(v) => parse_size(v.get_ref()).unwrap_or_else(|| {
                self.problem(
                    v.span(),
                    "max_body is not a size".into(),
                    Some("write a byte count (1048576) or a size like \"4MiB\" or \"512KiB\""),
                );
                4 << 20
            }),
        };
        let store_cache = match raw.store_cache {
            None => tollgate_store::DEFAULT_CACHE,
            Some(v) => parse_size(v.get_ref()).unwrap_or_else(|| {
                self.problem(
                    v.span(),
                    "store_cache is not a size".into(),
                    Some("write a byte count or a size like \"64MiB\""),
                );
                tollgate_store::DEFAULT_CACHE
            }),
        };
        let data_dir = base.join(raw.data_dir.unwrap_or_else(|| "tollgate-data".into()));
        BrokerSettings {
            listen,
            data_dir,
            max_body,
            store_cache,
            upstream_timeout: self.duration(
                raw.upstream_timeout,
                Duration::from_secs(300),
                "upstream_timeout",
            ),
            session_idle: self.duration(
                raw.session_idle,
                Duration::from_secs(1800),
                "session_idle",
            ),
            allowed_origins: raw.allowed_origins,
            console_listen,
            default_expiry: self.duration(
                raw.default_expiry,
                Duration::from_secs(600),
                "default_expiry",
            ),
            keepalive: self.duration(raw.keepalive, Duration::from_secs(15), "keepalive"),
            retry_ttl: self.duration(raw.retry_ttl, Duration::from_secs(600), "retry_ttl"),
            resume_grace: self.duration(raw.resume_grace, Duration::from_secs(60), "resume_grace"),
        }
    }

    fn auth_mode(&mut self, auth: Option<Spanned<String>>) -> AuthMode {
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

    fn servers(
        &mut self,
        raw: Vec<Spanned<RawServer>>,
        default_timeout: Duration,
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
                            Err(var) => self.problem(
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

    fn auth(&mut self, mode: AuthMode, raw: Vec<Spanned<RawClient>>) -> Auth {
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

    fn policy(
        &mut self,
        raw: RawPolicy,
        rules: Vec<Spanned<RawRule>>,
        servers: &[ServerSpec],
    ) -> Policy {
        let default = match raw.default {
            None => Action::Approve,
            Some(d) => Action::parse(d.get_ref()).unwrap_or_else(|| {
                self.problem(
                    d.span(),
                    format!("unknown default action {:?}", d.get_ref()),
                    Some("use \"allow\", \"deny\" or \"approve\""),
                );
                Action::Approve
            }),
        };
        let known: Vec<&str> = servers.iter().map(|s| s.name.as_str()).collect();
        let mut names = HashSet::new();
        let mut out = Vec::new();
        for (i, r) in rules.into_iter().enumerate() {
            let index = i + 1;
            let span = r.span();
            let r = r.into_inner();
            let name = r.name.clone().unwrap_or_else(|| format!("rule {index}"));
            if r.name.is_some() && !names.insert(name.clone()) {
                self.problem(
                    span.clone(),
                    format!("duplicate rule name {name:?}"),
                    Some("rule names appear in refusals and the audit trail, so keep them unique"),
                );
            }
            let action = Action::parse(r.action.get_ref()).unwrap_or_else(|| {
                self.problem(
                    r.action.span(),
                    format!("rule {index}: unknown action {:?}", r.action.get_ref()),
                    Some("use \"allow\", \"deny\" or \"approve\""),
                );
                Action::Deny
            });
            if r.tools.get_ref().is_empty() {
                self.problem(
                    r.tools.span(),
                    format!("rule {index}: tools is empty, so the rule can never match"),
                    Some("tools = [\"server/tool\"], globs allowed: \"*/list_*\""),
                );
            }
            let mut tools = Vec::new();
            for t in r.tools.into_inner() {
                match ToolPattern::new(t.get_ref()) {
                    Ok(p) => {
                        let sg = p.server_glob();
                        if !known.iter().any(|s| sg.matches(s)) {
                            let what = if sg.is_literal() {
                                "uses unknown server"
                            } else {
                                "has a server pattern that matches no server"
                            };
                            self.problem(
                                t.span(),
                                format!("rule {index} {what} {:?} (known: {})", sg.as_str(), known.join(", ")),
                                Some("rule patterns are \"server/tool\"; the server part must name a [[server]]"),
                            );
                        }
                        tools.push(p);
                    }
                    Err(e) => self.problem(
                        t.span(),
                        format!("rule {index}: {e}"),
                        Some("patterns are \"server/tool\" with * and ? wildcards"),
                    ),
                }
            }
            let when = match r.when {
                None => Vec::new(),
                Some(w) => self.conditions(index, w),
            };
            let hold = self.hold_terms(index, action, r.expiry, r.hold, r.quorum, r.approvers);
            let dlp = r
                .dlp
                .and_then(|d| self.dlp_action(d, &format!("rule {index}")));
            out.push(Rule {
                id: RuleRef {
                    index,
                    name: name.into(),
                },
                tools,
                when,
                action,
                reason: r.reason,
                hold,
                dlp,
            });
        }
        Policy {
            rules: out,
            default,
            version: Default::default(),
        }
    }

    fn limits(
        &mut self,
        raw: Vec<Spanned<RawLimit>>,
    ) -> Vec<tollgate_policy::guards::limits::Limit> {
        use tollgate_policy::guards::limits::{Limit, Scope, parse_rate};
        let mut out = Vec::new();
        for (i, l) in raw.into_iter().enumerate() {
            let span = l.span();
            let l = l.into_inner();
            let name = l.name.unwrap_or_else(|| format!("limit {}", i + 1));
            let tools = self.patterns(&name, l.tools.into_inner());
            let burst = self.count(&name, "burst", l.burst);
            let scopes = [
                (Scope::Client, l.per_client),
                (Scope::Server, l.per_server),
                (Scope::Tool, l.per_tool),
                (Scope::Global, l.global),
            ];
            let mut any = false;
            for (scope, rate) in scopes {
                let Some(rate) = rate else { continue };
                any = true;
                match parse_rate(rate.get_ref()) {
                    Some((count, per_ms)) => out.push(Limit {
                        name: name.clone(),
                        tools: tools.clone(),
                        scope,
                        count,
                        per_ms,
                        burst: burst.unwrap_or(count),
                        text: rate.get_ref().clone(),
                    }),
                    None => self.problem(
                        rate.span(),
                        format!("{name}: {:?} is not a rate", rate.get_ref()),
                        Some("write rates like \"60/min\", \"10/s\", \"1000/h\" or \"5/d\""),
                    ),
                }
            }
            if !any {
                self.problem(
                    span,
                    format!("{name} sets no rate"),
                    Some("add per_client, per_server, per_tool or global, e.g. per_client = \"60/min\""),
                );
            }
        }
        out
    }

    fn dlp_action(
        &mut self,
        v: Spanned<String>,
        what: &str,
    ) -> Option<tollgate_policy::guards::DlpAction> {
        let parsed = tollgate_policy::guards::DlpAction::parse(v.get_ref());
        if parsed.is_none() {
            self.problem(
                v.span(),
                format!("{what}: unknown DLP action {:?}", v.get_ref()),
                Some("use \"deny\", \"approve\" (a person sees the findings, masked) or \"redact\" (forward with secrets replaced)"),
            );
        }
        parsed
    }

    fn dlp(&mut self, raw: RawDlp) -> DlpSettings {
        let action = raw
            .action
            .and_then(|a| self.dlp_action(a, "[dlp] action"))
            .unwrap_or(tollgate_policy::guards::DlpAction::Approve);
        let entropy = match raw.entropy {
            None => Some(tollgate_policy::guards::dlp::Entropy::default()),
            Some(v) => match v.get_ref() {
                toml::Value::Boolean(false) => None,
                toml::Value::Boolean(true) => {
                    Some(tollgate_policy::guards::dlp::Entropy::default())
                }
                toml::Value::Table(t) => {
                    let d = tollgate_policy::guards::dlp::Entropy::default();
                    let min_length = t.get("min_length").and_then(toml::Value::as_integer);
                    let bits = t
                        .get("bits")
                        .and_then(|b| b.as_float().or(b.as_integer().map(|i| i as f64)));
                    let unknown = t.keys().any(|k| k != "min_length" && k != "bits");
                    if unknown || min_length.is_some_and(|m| m < 8) {
                        self.problem(
                            v.span(),
                            "[dlp] entropy takes min_length (8 or more) and bits".into(),
                            Some("entropy = { min_length = 40, bits = 4.5 }, or entropy = false"),
                        );
                    }
                    Some(tollgate_policy::guards::dlp::Entropy {
                        min_length: min_length.map_or(d.min_length, |m| m.max(8) as usize),
                        bits: bits.unwrap_or(d.bits),
                    })
                }
                _ => {
                    self.problem(
                        v.span(),
                        "[dlp] entropy must be a table or false".into(),
                        Some("entropy = { min_length = 40, bits = 4.5 }, or entropy = false"),
                    );
                    None
                }
            },
        };
        let mut detectors = Vec::new();
        for d in raw.detector {
            match Regex::new(d.regex.get_ref()) {
                Ok(r) => detectors.push((d.name, r)),
                Err(e) => self.problem(
                    d.regex.span(),
                    format!("[[dlp.detector]] {:?}: bad regex: {e}", d.name),
                    Some("regexes use Rust regex syntax; escape backslashes in TOML strings or use '...' literal strings"),
                ),
            }
        }
        DlpSettings {
            enabled: raw.enabled.unwrap_or(true),
            action,
            entropy,
            detectors,
        }
    }

    fn hold_terms(
        &mut self,
        index: usize,
        action: Action,
        expiry: Option<Spanned<String>>,
        hold: Option<Spanned<String>>,
        quorum: Option<Spanned<i64>>,
        approvers: Vec<String>,
    ) -> HoldTerms {
        if action != Action::Approve {
            let stray = [
                expiry.as_ref().map(|e| (e.span(), "expiry")),
                hold.as_ref().map(|h| (h.span(), "hold")),
                quorum.as_ref().map(|q| (q.span(), "quorum")),
            ];
            for (span, key) in stray.into_iter().flatten() {
                self.problem(
                    span,
                    format!("rule {index}: {key} only applies to action = \"approve\""),
                    Some("remove it, or make the rule hold calls for approval"),
                );
            }
        }
        let expiry = expiry.map(|e| self.duration(Some(e), Duration::from_secs(600), "expiry"));
        let retry = match hold {
            None => false,
            Some(h) => match h.get_ref().as_str() {
                "stream" => false,
                "retry" => true,
                other => {
                    self.problem(
                        h.span(),
                        format!("rule {index}: unknown hold mode {other:?}"),
                        Some("use \"stream\" (the request waits, the default) or \"retry\" (answer at once; the identical call runs once after approval)"),
                    );
                    false
                }
            },
        };
        let quorum = match quorum {
            None => 1,
            Some(q) => match u32::try_from(*q.get_ref()) {
                Ok(n) if n >= 1 => n,
                _ => {
                    self.problem(
                        q.span(),
                        format!("rule {index}: quorum must be 1 or more"),
                        Some("quorum is the number of distinct approvers a call needs"),
                    );
                    1
                }
            },
        };
        HoldTerms {
            expiry,
            retry,
            quorum,
            approvers,
        }
    }

    fn conditions(&mut self, index: usize, when: Spanned<toml::Value>) -> Vec<Condition> {
        let span = when.span();
        let tables: Vec<toml::Table> = match when.into_inner() {
            toml::Value::Table(t) => vec![t],
            toml::Value::Array(a) if a.iter().all(|v| v.is_table()) => a
                .into_iter()
                .filter_map(|v| {
                    if let toml::Value::Table(t) = v {
                        Some(t)
                    } else {
                        None
                    }
                })
                .collect(),
            _ => {
                self.problem(
                    span,
                    format!("rule {index}: when must be a table or an array of tables"),
                    Some("when = { arg = \"/path\", equals = \"x\" }"),
                );
                return Vec::new();
            }
        };
        let mut out = Vec::new();
        for t in tables {
            match condition(t) {
                Ok(c) => out.push(c),
                Err((msg, hint)) => {
                    self.problem(span.clone(), format!("rule {index}: {msg}"), Some(hint))
                }
            }
        }
        out
    }
}

const COND_HINT: &str = "a condition is { arg = \"/json/pointer\" | annotation = \"readOnlyHint\", and one of equals, matches, exists, gt, ge, lt, le }";

fn condition(mut t: toml::Table) -> Result<Condition, (String, &'static str)> {
    let subject = match (t.remove("arg"), t.remove("annotation")) {
        (Some(toml::Value::String(p)), None) => {
            if !p.is_empty() && !p.starts_with('/') {
                return Err((
                    format!("arg {p:?} is not a JSON pointer"),
                    "JSON pointers start with '/': \"/query\", \"/options/0/name\"",
                ));
            }
            Subject::Arg(p)
        }
        (None, Some(toml::Value::String(a))) if !a.is_empty() => Subject::Annotation(a),
        _ => {
            return Err((
                "a condition needs exactly one of arg or annotation (a string)".into(),
                COND_HINT,
            ));
        }
    };
    let mut tests = Vec::new();
    for key in ["equals", "matches", "exists", "gt", "ge", "lt", "le"] {
        if let Some(v) = t.remove(key) {
            tests.push((key, v));
        }
    }
    if let Some(k) = t.keys().next() {
        return Err((format!("unknown condition key {k:?}"), COND_HINT));
    }
    if tests.len() != 1 {
        return Err(("a condition needs exactly one test".into(), COND_HINT));
    }
    let (key, v) = tests.remove(0);
    let test = match (key, v) {
        ("equals", v) => Test::Equals(toml_to_json(v)),
        ("matches", toml::Value::String(re)) => match Regex::new(&re) {
            Ok(r) => Test::Matches(r),
            Err(e) => {
                let first = e
                    .to_string()
                    .lines()
                    .last()
                    .unwrap_or("invalid")
                    .trim()
                    .to_string();
                return Err((
                    format!("bad regex {re:?}: {first}"),
                    "regexes use Rust regex syntax; escape backslashes in TOML strings or use '...' literal strings",
                ));
            }
        },
        ("exists", toml::Value::Boolean(b)) => Test::Exists(b),
        (op, v) if ["gt", "ge", "lt", "le"].contains(&op) => {
            let n = match v {
                toml::Value::Integer(i) => i as f64,
                toml::Value::Float(f) => f,
                _ => return Err((format!("{op} needs a number"), COND_HINT)),
            };
            let cmp = match op {
                "gt" => Cmp::Gt,
                "ge" => Cmp::Ge,
                "lt" => Cmp::Lt,
                _ => Cmp::Le,
            };
            Test::Compare(cmp, n)
        }
        (k, _) => {
            return Err((
                format!("{k} has the wrong type"),
                "matches takes a string, exists a boolean",
            ));
        }
    };
    Ok(Condition { subject, test })
}

fn toml_to_json(v: toml::Value) -> Value {
    match v {
        toml::Value::String(s) => Value::String(s),
        toml::Value::Integer(i) => Value::from(i),
        toml::Value::Float(f) => Value::from(f),
        toml::Value::Boolean(b) => Value::Bool(b),
        toml::Value::Datetime(d) => Value::String(d.to_string()),
        toml::Value::Array(a) => Value::Array(a.into_iter().map(toml_to_json).collect()),
        toml::Value::Table(t) => {
            Value::Object(t.into_iter().map(|(k, v)| (k, toml_to_json(v))).collect())
        }
    }
}

enum AuthMode {
    None,
    Tokens,
}

/// Parse a byte size: an integer, or a string like `4MiB`, `512KiB`, `1MB`, `100`.
fn parse_size(v: &toml::Value) -> Option<usize> {
    match v {
        toml::Value::Integer(i) if *i > 0 => usize::try_from(*i).ok(),
        toml::Value::String(s) => {
            let s = s.trim();
            let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
            let (num, unit) = s.split_at(split);
            let n: usize = num.parse().ok()?;
            let mult = match unit.trim().to_ascii_lowercase().as_str() {
                "" | "b" => 1,
                "kb" => 1000,
                "kib" | "k" => 1 << 10,
                "mb" => 1_000_000,
                "mib" | "m" => 1 << 20,
                "gb" => 1_000_000_000,
                "gib" | "g" => 1 << 30,
                _ => return None,
            };
            n.checked_mul(mult).filter(|n| *n > 0)
        }
        _ => None,
    }
}

/// Expand `${VAR}` from the environment; returns the name of the first unset variable.
fn expand_env(s: &str) -> Result<String, String> {
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
        out.push_str(&std::env::var(var).map_err(|_| var.to_string())?);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str) -> Result<Config, ConfigError> {
        parse(Path::new("t.toml"), text)
    }

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

    #[test]
    fn limits_and_dlp_settings_are_checked() {
        let base = "[broker]\nauth = \"none\"\n[[server]]\nname = \"a\"\ncommand = [\"x\"]\n";
        let ok = check(&format!(
            "{base}[[limit]]\ntools = [\"a/*\"]\nper_client = \"60/min\"\nglobal = \"10/s\"\n[dlp]\naction = \"redact\"\nentropy = false\n"
        ))
        .expect("valid");
        assert_eq!(ok.limits.len(), 2);
        assert!(ok.dlp.entropy.is_none());
        let err = check(&format!(
            "{base}[[limit]]\ntools = [\"a/*\"]\nper_client = \"lots\"\n[[limit]]\nname = \"empty\"\ntools = [\"*\"]\n[dlp]\naction = \"shred\"\n[[dlp.detector]]\nname = \"x\"\nregex = \"(\"\n"
        ))
        .expect_err("invalid")
        .to_string();
        for want in [
            "\"lots\" is not a rate",
            "empty sets no rate",
            "unknown DLP action \"shred\"",
            "bad regex",
        ] {
            assert!(err.contains(want), "{want}: {err}");
        }
    }

    #[test]
    fn budgets_and_loops_are_checked() {
        let base = "[broker]\nauth = \"none\"\n[[server]]\nname = \"a\"\ncommand = [\"x\"]\n";
        let ok = check(&format!(
            "{base}[[budget]]\nname = \"agents\"\nmax_pending = 20\nmax_approved = 100\nwindow = \"1h\"\ndaily = 500\ncosts = [{{ tools = [\"a/drop*\"], weight = 25 }}]\n[loops]\nthreshold = 50\nwindow = \"30s\"\naction = \"approve\"\n"
        ))
        .expect("valid");
        let b = &ok.budgets[0];
        assert_eq!(
            (b.max_pending, b.max_approved, b.window_ms, b.daily),
            (Some(20), Some(100), 3_600_000, Some(500.0))
        );
        assert_eq!(b.costs[0].weight, 25.0);
        assert!(b.tools[0].matches("any", "tool"), "all tools by default");
        assert_eq!(ok.loops.threshold, 50);
        assert_eq!(ok.loops.window_ms, 30_000);
        assert_eq!(
            ok.loops.action,
            tollgate_policy::guards::loops::LoopAction::Approve
        );
        let defaults = check(base).expect("valid");
        assert_eq!(defaults.loops.threshold, 20);
        assert_eq!(
            defaults.loops.action,
            tollgate_policy::guards::loops::LoopAction::Flag
        );
        let err = check(&format!(
            "{base}[[budget]]\nname = \"none\"\n[[budget]]\nmax_pending = 0\ndaily = -3\n[loops]\naction = \"panic\"\nthreshold = 0\n"
        ))
        .expect_err("invalid")
        .to_string();
        for want in [
            "none sets no cap",
            "budget 2: max_pending must be 1 or more",
            "budget 2: daily must be a number above zero",
            "[loops] action: unknown action \"panic\"",
            "[loops]: threshold must be 1 or more",
        ] {
            assert!(err.contains(want), "{want}: {err}");
        }
    }

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

    #[test]
    fn sizes_and_durations_parse() {
        assert_eq!(
            parse_size(&toml::Value::String("4MiB".into())),
            Some(4 << 20)
        );
        assert_eq!(
            parse_size(&toml::Value::String("512 KiB".into())),
            Some(512 << 10)
        );
        assert_eq!(parse_size(&toml::Value::Integer(100)), Some(100));
        assert_eq!(parse_size(&toml::Value::String("lots".into())), None);
        let err = check("[broker]\nauth=\"none\"\nupstream_timeout = \"soon\"\n[[server]]\nname=\"a\"\ncommand=[\"x\"]\n")
            .expect_err("bad duration");
        assert_eq!(err.problems[0].line, 3);
    }

    #[test]
    fn env_expansion_reports_missing_variables() {
        assert_eq!(expand_env("plain").as_deref(), Ok("plain"));
        assert_eq!(
            expand_env("Bearer ${TOLLGATE_SURELY_UNSET_VAR}"),
            Err("TOLLGATE_SURELY_UNSET_VAR".into())
        );
    }
}
