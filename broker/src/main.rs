//! `tollgate-broker`: a transparent MCP gateway that applies policy to every `tools/call`.
//!
//! Subcommands: `serve` runs the gateway, `check` validates a config, `audit` lists recorded
//! calls, `connect` bridges a stdio MCP client to a running broker, and `hash-token` prints the
//! digest to put in a `[[client]]` table.

mod auth;
mod bridge;
mod config;
mod frontend;
mod gateway;
mod jsonrpc;
mod policy;
mod serve;
mod sse;
mod store;
mod upstream;

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Tollgate's broker: a transparent MCP gateway with policy, between MCP clients and servers.
///
/// Clients connect to http://<listen>/mcp/<server> (Streamable HTTP) instead of the server
/// itself. Every tools/call is checked against the [[rule]]s of the config: allowed calls are
/// forwarded, denied ones get a tool error that names the rule, and every decision is recorded
/// in the embedded store.
#[derive(Parser, Debug)]
#[command(name = "tollgate-broker", version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the gateway.
    Serve {
        /// The TOML configuration file.
        #[arg(long, short, env = "TOLLGATE_CONFIG", default_value = "tollgate.toml")]
        config: PathBuf,
        /// Log format on stderr. Filter with RUST_LOG (default: info).
        #[arg(long, value_enum, default_value = "text")]
        log_format: serve::LogFormat,
    },
    /// Validate a configuration file and report every problem with its line and column.
    Check {
        /// The TOML configuration file.
        #[arg(long, short, env = "TOLLGATE_CONFIG", default_value = "tollgate.toml")]
        config: PathBuf,
    },
    /// List recorded tools/call decisions from the store (the broker must be stopped, or use a
    /// copy of its data_dir).
    Audit {
        /// The TOML configuration file (its data_dir locates the store).
        #[arg(long, short, env = "TOLLGATE_CONFIG", default_value = "tollgate.toml")]
        config: PathBuf,
        /// How many of the newest records to show.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Bridge stdio to a running broker, for MCP clients that only launch stdio servers.
    ///
    /// Reads JSON-RPC messages from stdin, one per line, sends them to the broker's Streamable
    /// HTTP endpoint and writes everything the broker sends back to stdout, one per line.
    Connect {
        /// The MCP endpoint, e.g. http://127.0.0.1:8080/mcp/fs
        url: String,
        /// Bearer token for the broker.
        #[arg(long, env = "TOLLGATE_TOKEN", hide_env_values = true)]
        token: Option<String>,
    },
    /// Read a token on stdin and print the token_sha256 value for a [[client]] table.
    HashToken,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve { config, log_format } => serve::run(&config, log_format),
        Command::Check { config } => match config::load(&config) {
            Ok(c) => {
                println!(
                    "{}: OK ({} server{}, {} rule{}, default action {})",
                    config.display(),
                    c.servers.len(),
                    if c.servers.len() == 1 { "" } else { "s" },
                    c.policy.rules.len(),
                    if c.policy.rules.len() == 1 { "" } else { "s" },
                    c.policy.default.as_str()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprint!("{e}");
                ExitCode::from(2)
            }
        },
        Command::Audit {
            config,
            limit,
            json,
        } => match audit(&config, limit, json) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("tollgate-broker audit: {e:#}");
                ExitCode::from(1)
            }
        },
        Command::Connect { url, token } => bridge::run(&url, token),
        Command::HashToken => {
            let mut token = String::new();
            if let Err(e) = std::io::stdin().read_to_string(&mut token) {
                eprintln!("tollgate-broker hash-token: cannot read stdin: {e}");
                return ExitCode::from(1);
            }
            let token = token.trim_end_matches(['\n', '\r']);
            if token.is_empty() {
                eprintln!(
                    "tollgate-broker hash-token: no token on stdin (try: printf %s \"$TOKEN\" | tollgate-broker hash-token)"
                );
                return ExitCode::from(2);
            }
            println!("{}", auth::hex(&auth::digest(token)));
            ExitCode::SUCCESS
        }
    }
}

fn audit(config: &std::path::Path, limit: usize, json: bool) -> anyhow::Result<()> {
    let cfg = config::load(config).map_err(|e| anyhow::anyhow!("{e}"))?;
    let store = store::Store::open(&cfg.broker.data_dir)?;
    let records = store.recent(limit)?;
    let mut out = std::io::stdout().lock();
    use std::io::Write;
    if json {
        for r in &records {
            writeln!(out, "{}", serde_json::to_string(r)?)?;
        }
        return Ok(());
    }
    writeln!(
        out,
        "{:<24} {:<12} {:<12} {:<28} {:<16} RULE",
        "TIME (UTC)", "OUTCOME", "CLIENT", "SERVER/TOOL", "REQUEST"
    )?;
    if records.is_empty() {
        writeln!(
            out,
            "(no calls recorded yet in {})",
            cfg.broker.data_dir.display()
        )?;
    }
    for r in &records {
        let t = humantime::format_rfc3339_millis(
            std::time::UNIX_EPOCH + std::time::Duration::from_millis(r.timings.received_ms),
        );
        writeln!(
            out,
            "{:<24} {:<12} {:<12} {:<28} {:<16} {}",
            t.to_string(),
            r.outcome.as_str(),
            r.client,
            format!("{}/{}", r.server, r.tool),
            r.request_id.to_string(),
            r.rule.name
        )?;
    }
    Ok(())
}
