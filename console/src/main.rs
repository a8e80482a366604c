//! `tollgate`, the approver's console: a terminal UI, and scriptable commands for the same
//! console API.
//!
//! Without a subcommand it opens the TUI. Where the broker is and how to authenticate comes
//! from `--url`/`--token`, else `TOLLGATE_URL`/`TOLLGATE_TOKEN`, else the config file
//! (`$XDG_CONFIG_HOME/tollgate/console.toml`, or `~/.config/tollgate/console.toml`), which can
//! also remap keys.

use tollgate_console::{cli, client, keys, tui};
use tollgate_shared::clock::now_ms;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use serde::Deserialize;
use tollgate_shared::audit::AuditFilter;
use tollgate_shared::console::{AllowNext, Target};
use tollgate_shared::{Outcome, Verdict};

use client::Settings;

/// The approver's console for Tollgate.
///
/// Without a command, opens the terminal UI: the live queue of calls the broker holds for
/// approval, their details and diffs, repeated-call groups, and keyboard decisions (press ? for
/// every key). The commands do the same from scripts; add --json for machine-readable output.
///
/// Exit codes: 0 success, 1 error (connection, authentication), 2 usage, 3 call not found,
/// 4 call already decided (or expired, cancelled), 5 not allowed to decide it.
#[derive(Parser, Debug)]
#[command(name = "tollgate", version, about, long_about)]
struct Cli {
    /// The broker's console API, e.g. ws://127.0.0.1:8081/v1/console.
    #[arg(long, global = true, env = "TOLLGATE_URL")]
    url: Option<String>,
    /// Your token (from `tollgate-broker token add`).
    #[arg(long, global = true, env = "TOLLGATE_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// For a wss:// broker: the CA certificate (PEM) that signed its certificate, trusted
    /// instead of the system's CAs.
    #[arg(long, global = true, env = "TOLLGATE_CA", value_name = "FILE")]
    ca: Option<PathBuf>,
    /// A client certificate (PEM), for a broker that requires one (mutual TLS).
    #[arg(long, global = true, env = "TOLLGATE_CERT", value_name = "FILE")]
    cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(long, global = true, env = "TOLLGATE_KEY", value_name = "FILE")]
    key: Option<PathBuf>,
    /// How the TUI tells you calls arrived while you were away: bell, osc (a desktop
    /// notification through the terminal), command (notify_command in console.toml) or off.
    /// A non-empty TOLLGATE_NO_NOTIFY turns it off.
    #[arg(long, global = true, value_name = "HOW")]
    notify: Option<String>,
    /// Sign every decision with your SSH key: `agent` (the ssh-agent at SSH_AUTH_SOCK, its
    /// first ed25519 or ECDSA key; hardware keys and passphrases stay in the agent),
    /// `agent:KEY.pub` (that key of the agent), or an unencrypted ed25519 private key file.
    /// Brokers refuse unsigned decisions where `require_signature` is set.
    #[arg(long, global = true, env = "TOLLGATE_SIGN", value_name = "HOW")]
    sign: Option<String>,
    /// Config file (default: $XDG_CONFIG_HOME/tollgate/console.toml).
    #[arg(long, global = true, env = "TOLLGATE_CONSOLE_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Cmd>,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions {
        /// The shell.
        shell: tollgate_shared::cli::Shell,
    },
    /// Write man pages (tollgate.1 and one per command) into a directory.
    Man {
        /// Where to write them.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
    },
    /// List the calls waiting for approval.
    List {
        /// JSON array of call records.
        #[arg(long)]
        json: bool,
    },
    /// Show one call in full (pending, or its audit trail if it is no longer pending).
    Show {
        /// The call id.
        id: String,
        /// JSON.
        #[arg(long)]
        json: bool,
    },
    /// Approve calls by id (or every pending call with a fingerprint).
    Approve {
        /// Call ids.
        #[arg(required_unless_present = "fingerprint")]
        ids: Vec<String>,
        /// Decide every pending call with this fingerprint instead.
        #[arg(long, conflicts_with = "ids")]
        fingerprint: Option<String>,
        /// Why (kept in the audit trail).
        #[arg(long)]
        reason: Option<String>,
        /// Also let the next N identical calls (same fingerprint) through without asking, for
        /// --for (1 to 1000 calls; needs --fingerprint; installs a temporary allow rule).
        #[arg(long, requires = "fingerprint", value_parser = clap::value_parser!(u32).range(1..=1000))]
        allow_next: Option<u32>,
        /// How long --allow-next lasts (at most 24h).
        #[arg(long = "for", requires = "allow_next", default_value = "10m", value_parser = rule_lifetime)]
        for_: Duration,
        /// JSON results.
        #[arg(long)]
        json: bool,
    },
    /// Reject calls by id (or every pending call with a fingerprint); the agent sees the reason.
    Reject {
        /// Call ids.
        #[arg(required_unless_present = "fingerprint")]
        ids: Vec<String>,
        /// Decide every pending call with this fingerprint instead.
        #[arg(long, conflicts_with = "ids")]
        fingerprint: Option<String>,
        /// Why: shown to the agent and kept in the audit trail.
        #[arg(long)]
        reason: String,
        /// Also refuse new calls with this fingerprint at once for this long, e.g. 15m (at most
        /// 24h; needs --fingerprint; installs a temporary block rule).
        #[arg(long, requires = "fingerprint", value_parser = rule_lifetime)]
        block_for: Option<Duration>,
        /// JSON results.
        #[arg(long)]
        json: bool,
    },
    /// List temporary rules (installed by `reject --block-for` and `approve --allow-next`), or
    /// revoke one.
    Rules {
        #[command(subcommand)]
        action: Option<RulesCmd>,
        /// JSON array.
        #[arg(long)]
        json: bool,
    },
    /// Print queue events as they happen, until interrupted.
    Watch {
        /// One JSON message per line.
        #[arg(long)]
        json: bool,
        /// Run this shell command for every new pending call, with its call_pending message as
        /// JSON on stdin and TOLLGATE_CALL_ID, TOLLGATE_SERVER, TOLLGATE_TOOL and
        /// TOLLGATE_CLIENT set (e.g. --exec 'notify-send "Tollgate" "$TOLLGATE_TOOL"').
        #[arg(long, value_name = "CMD")]
        exec: Option<String>,
    },
    /// Search the audit trail of the running broker.
    Audit {
        /// Only this status (allowed, blocked, pending, approved, rejected, expired, cancelled,
        /// abandoned, rate_limited, escalated).
        #[arg(long, value_parser = |s: &str| s.parse::<Outcome>())]
        status: Option<Outcome>,
        /// Only this server.
        #[arg(long)]
        server: Option<String>,
        /// Only this tool.
        #[arg(long)]
        tool: Option<String>,
        /// Only this client.
        #[arg(long)]
        client: Option<String>,
        /// Only decisions by this approver.
        #[arg(long)]
        approver: Option<String>,
        /// Only entries newer than this (15m, 1h, 7d).
        #[arg(long, value_parser = humantime::parse_duration)]
        since: Option<Duration>,
        /// At most this many (newest).
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// JSON array.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
enum RulesCmd {
    /// Remove a temporary rule now.
    Revoke {
        /// The rule id (t-...).
        id: String,
    },
}

/// The console's config file.
#[derive(Deserialize, Default, Debug)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    url: Option<String>,
    token: Option<String>,
    /// CA certificate file for a wss:// broker (relative to the config file).
    ca: Option<PathBuf>,
    /// Client certificate and key files, for mutual TLS.
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    /// bell, osc, command or off.
    notify: Option<String>,
    /// The program notify = "command" runs.
    notify_command: Option<Vec<String>>,
    /// How long without a key before the console counts as away ("30s").
    notify_idle: Option<String>,
    /// How long `x` blocks a pattern ("15m").
    block_for: Option<String>,
    #[serde(default)]
    keys: BTreeMap<String, String>,
}

fn config_path(explicit: Option<PathBuf>) -> Option<PathBuf> {
    explicit.or_else(|| {
        let base = std::env::var_os("XDG_CONFIG_HOME")
            .map(PathBuf::from)
            .filter(|p| p.is_absolute())
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
        Some(base.join("tollgate").join("console.toml"))
    })
}

fn load_config(path: Option<&PathBuf>, explicit: bool) -> Result<FileConfig> {
    let Some(path) = path else {
        return Ok(FileConfig::default());
    };
    match std::fs::read_to_string(path) {
        Ok(text) => toml::from_str(&text)
            .with_context(|| format!("{} is not a valid console config", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => {
            Ok(FileConfig::default())
        }
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

async fn run(cli: Cli) -> Result<ExitCode> {
    let explicit = cli.config.is_some();
    let path = config_path(cli.config);
    let file = load_config(path.as_ref(), explicit)?;
    let url = cli
        .url
        .or(file.url)
        .unwrap_or_else(|| "ws://127.0.0.1:8081/v1/console".into());
    let token = cli.token.or(file.token).context(
        "no token: pass --token, set TOLLGATE_TOKEN, or put token = \"...\" in the config file (tokens come from `tollgate-broker token add`)",
    )?;
    let near = |p: PathBuf| match path.as_ref().and_then(|c| c.parent()) {
        Some(dir) if p.is_relative() => dir.join(p),
        _ => p,
    };
    let tls = tollgate_shared::tls::ClientTls {
        ca: cli.ca.or(file.ca.map(near)),
        cert: cli.cert.or(file.cert.map(near)),
        key: cli.key.or(file.key.map(near)),
    };
    let sign = cli
        .sign
        .as_deref()
        .map(tollgate_console::signing::SignWith::parse)
        .transpose()?;
    let s = Settings {
        url,
        token,
        tls,
        sign,
    };
    let target = |ids: Vec<String>, fingerprint: Option<String>| match fingerprint {
        Some(fingerprint) => Target::Fingerprint { fingerprint },
        None => Target::Ids { ids },
    };
    match cli.command {
        None => {
            let keys = keys::KeyMap::with(&file.keys)?;
            let block_for = match &file.block_for {
                None => tollgate_console::app::DEFAULT_BLOCK_MS,
                Some(text) => humantime::parse_duration(text)
                    .ok()
                    .filter(|d| !d.is_zero() && *d <= Duration::from_secs(86_400))
                    .with_context(|| {
                        format!("block_for = {text:?} in the console config: write a duration up to 24h, like \"15m\"")
                    })?
                    .as_millis() as u64,
            };
            let off = std::env::var_os("TOLLGATE_NO_NOTIFY").is_some_and(|v| !v.is_empty());
            let how = cli.notify.or(file.notify).unwrap_or_else(|| "bell".into());
            let mode = if off {
                tollgate_console::alert::Mode::Off
            } else {
                tollgate_console::alert::Mode::parse(&how, file.notify_command)
                    .map_err(|e| anyhow::anyhow!(e))?
            };
            let idle = match &file.notify_idle {
                None => tollgate_console::alert::IDLE_AFTER,
                Some(text) => humantime::parse_duration(text).with_context(|| {
                    format!("notify_idle = {text:?} in the console config: write a duration like \"30s\"")
                })?,
            };
            let alerter = tollgate_console::alert::Alerter::new(mode, idle, now_ms());
            tui::run(s, keys, block_for, alerter).await?;
            Ok(ExitCode::SUCCESS)
        }
        Some(Cmd::List { json }) => cli::list(&s, json).await,
        Some(Cmd::Show { id, json }) => cli::show(&s, &id, json).await,
        Some(Cmd::Approve {
            ids,
            fingerprint,
            reason,
            allow_next,
            for_,
            json,
        }) => {
            let follow = cli::Follow {
                block_for_ms: None,
                allow_next: allow_next.map(|count| AllowNext {
                    count,
                    for_ms: for_.as_millis() as u64,
                }),
            };
            let target = target(ids, fingerprint);
            cli::decide(&s, target, Verdict::Approve, reason, follow, json).await
        }
        Some(Cmd::Reject {
            ids,
            fingerprint,
            reason,
            block_for,
            json,
        }) => {
            let follow = cli::Follow {
                block_for_ms: block_for.map(|d| d.as_millis() as u64),
                allow_next: None,
            };
            let target = target(ids, fingerprint);
            cli::decide(&s, target, Verdict::Reject, Some(reason), follow, json).await
        }
        Some(Cmd::Rules { action, json }) => match action {
            None => cli::rules(&s, None, json).await,
            Some(RulesCmd::Revoke { id }) => cli::rules(&s, Some(id), json).await,
        },
        Some(Cmd::Watch { json, exec }) => cli::watch(&s, json, exec.as_deref()).await,
        // Handled in main, before anything needs a broker.
        Some(Cmd::Completions { .. } | Cmd::Man { .. }) => Ok(ExitCode::SUCCESS),
        Some(Cmd::Audit {
            status,
            server,
            tool,
            client,
            approver,
            since,
            limit,
            json,
        }) => {
            let filter = AuditFilter {
                status,
                server,
                tool,
                client,
                approver,
                call_id: None,
                since_ms: since.map(|d| now_ms().saturating_sub(d.as_millis() as u64)),
                limit: Some(limit),
            };
            cli::audit(&s, filter, json).await
        }
    }
}

/// A temporary rule's lifetime: a duration from 1 ms to 24 h, checked here so the error names
/// the flag rather than the protocol field.
fn rule_lifetime(text: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(text).map_err(|e| e.to_string())?;
    if d.is_zero() || d > Duration::from_secs(24 * 3600) {
        return Err(format!("{text} is not between 1ms and 24h"));
    }
    Ok(d)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // These need no broker, token or config.
    match &cli.command {
        Some(Cmd::Completions { shell }) => {
            use clap::CommandFactory;
            tollgate_shared::cli::completions(Cli::command(), *shell, &mut std::io::stdout());
            return ExitCode::SUCCESS;
        }
        Some(Cmd::Man { dir }) => {
            use clap::CommandFactory;
            return match tollgate_shared::cli::man_pages(Cli::command(), dir) {
                Ok(files) => {
                    for f in files {
                        println!("{}", f.display());
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("tollgate man: cannot write into {}: {e}", dir.display());
                    ExitCode::from(1)
                }
            };
        }
        _ => {}
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("tollgate: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("tollgate: {e:#}");
            ExitCode::from(1)
        }
    }
}
