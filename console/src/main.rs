//! `tollgate`, the approver's console: a terminal UI, and scriptable commands for the same
//! console API.
//!
//! Without a subcommand it opens the TUI. Where the broker is and how to authenticate comes
//! from `--url`/`--token`, else `TOLLGATE_URL`/`TOLLGATE_TOKEN`, else the config file
//! (`$XDG_CONFIG_HOME/tollgate/console.toml`, or `~/.config/tollgate/console.toml`), which can
//! also remap keys.

use tollgate_console::fmt::now_ms;
use tollgate_console::{cli, client, keys, tui};

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use serde::Deserialize;
use tollgate_shared::audit::AuditFilter;
use tollgate_shared::console::Target;
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
    /// Config file (default: $XDG_CONFIG_HOME/tollgate/console.toml).
    #[arg(long, global = true, env = "TOLLGATE_CONSOLE_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Cmd>,
}

#[derive(Subcommand, Debug)]
enum Cmd {
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
        /// JSON results.
        #[arg(long)]
        json: bool,
    },
    /// Print queue events as they happen, until interrupted.
    Watch {
        /// One JSON message per line.
        #[arg(long)]
        json: bool,
    },
    /// Search the audit trail of the running broker.
    Audit {
        /// Only this status (allowed, blocked, pending, approved, rejected, expired, cancelled,
        /// abandoned, rate_limited).
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

/// The console's config file.
#[derive(Deserialize, Default, Debug)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    url: Option<String>,
    token: Option<String>,
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
    let s = Settings { url, token };
    let target = |ids: Vec<String>, fingerprint: Option<String>| match fingerprint {
        Some(fingerprint) => Target::Fingerprint { fingerprint },
        None => Target::Ids { ids },
    };
    match cli.command {
        None => {
            let keys = keys::KeyMap::with(&file.keys).map_err(|e| anyhow::anyhow!(e))?;
            tui::run(s, keys).await?;
            Ok(ExitCode::SUCCESS)
        }
        Some(Cmd::List { json }) => cli::list(&s, json).await,
        Some(Cmd::Show { id, json }) => cli::show(&s, &id, json).await,
        Some(Cmd::Approve {
            ids,
            fingerprint,
            reason,
            json,
        }) => cli::decide(&s, target(ids, fingerprint), Verdict::Approve, reason, json).await,
        Some(Cmd::Reject {
            ids,
            fingerprint,
            reason,
            json,
        }) => {
            cli::decide(
                &s,
                target(ids, fingerprint),
                Verdict::Reject,
                Some(reason),
                json,
            )
            .await
        }
        Some(Cmd::Watch { json }) => cli::watch(&s, json).await,
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

fn main() -> ExitCode {
    let cli = Cli::parse();
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
