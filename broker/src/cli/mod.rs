//! The `tollgate-broker` command line: `serve` runs the gateway, `check` validates a config,
//! `audit` searches and verifies the audit trail, `token` manages identities, `check-disk` and
//! `check-audit` measure the machine, `connect` bridges a stdio MCP client to a running broker,
//! and `hash-token` prints the digest to put in a `[[client]]` table.
//!
//! This is the binary's edge: commands report errors with their context (`anyhow`) and exit
//! codes; everything below returns typed errors.

mod audit;
mod pg;
mod token;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::{bridge, config, diagnostics, serve};

/// Tollgate's broker: a transparent MCP gateway with policy, between MCP clients and servers.
///
/// Clients connect to http://<listen>/mcp/<server> (Streamable HTTP) instead of the server
/// itself. Every tools/call is checked against the [[rule]]s of the config: allowed calls are
/// forwarded, denied ones get a tool error that names the rule, and calls that need a person
/// are held until an approver decides on a console (ws://<console_listen>/v1/console). Every
/// outcome goes into a hash-chained audit trail in the embedded store.
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
        /// Log format on stderr (default: [broker] log_format, else text). Filter with
        /// RUST_LOG (default: info). Every line about a call carries its call id, client,
        /// server, tool and rule.
        #[arg(long, value_enum)]
        log_format: Option<serve::LogFormat>,
    },
    /// Validate a configuration file and report every problem with its line and column.
    Check {
        /// The TOML configuration file.
        #[arg(long, short, env = "TOLLGATE_CONFIG", default_value = "tollgate.toml")]
        config: PathBuf,
    },
    /// Ask a running broker whether it is ready: its store commits and every configured
    /// upstream can be reached or started. Prints each check; exits 0 when all pass, 1 when
    /// any fails or the broker does not answer.
    Status {
        /// The TOML configuration file (its [broker] admin_listen locates the broker).
        #[arg(long, short, env = "TOLLGATE_CONFIG", default_value = "tollgate.toml")]
        config: PathBuf,
        /// The admin listener's base URL instead, e.g. https://tollgate.internal:8082
        #[arg(long)]
        url: Option<String>,
        /// For an https:// admin listener: the CA certificate (PEM) that signed its certificate.
        #[arg(long, env = "TOLLGATE_CA", value_name = "FILE")]
        ca: Option<PathBuf>,
    },
    /// Make a running broker re-read its configuration, as SIGHUP does: rules, guards,
    /// clients, servers, notification sinks and certificates change for the calls that arrive
    /// after it; held calls, sessions and consoles stay. A config with problems is refused with
    /// every problem, and the running one stays. Needs an admin's token.
    Reload {
        /// The TOML configuration file (its [broker] admin_listen locates the broker).
        #[arg(long, short, env = "TOLLGATE_CONFIG", default_value = "tollgate.toml")]
        config: PathBuf,
        /// The admin listener's base URL instead.
        #[arg(long)]
        url: Option<String>,
        /// An admin's token.
        #[arg(long, env = "TOLLGATE_TOKEN", hide_env_values = true)]
        token: Option<String>,
        /// For an https:// admin listener: the CA certificate (PEM).
        #[arg(long, env = "TOLLGATE_CA", value_name = "FILE")]
        ca: Option<PathBuf>,
    },
    /// Search the audit trail, or verify its hash chain (`audit verify`).
    ///
    /// Reads the store directly, so the broker must be stopped (or point --data-dir at a copy);
    /// a running broker answers the same queries on the console API (`tollgate audit`).
    /// `--follow` streams new entries from a running broker's admin listener instead.
    #[command(args_conflicts_with_subcommands = true)]
    Audit {
        #[command(subcommand)]
        action: Option<AuditCommand>,
        #[command(flatten)]
        dir: audit::DataDir,
        #[command(flatten)]
        search: Box<audit::Search>,
    },
    /// Manage the identities that may use the console API (and make calls): add, list, revoke.
    Token {
        #[command(subcommand)]
        action: TokenCommand,
    },
    /// Measure how fast the disk of a data directory can hold calls durably (single syncs vs
    /// group commit through the real queue and store), before you deploy on it.
    CheckDisk {
        /// Directory on the disk to test (a scratch directory is made inside and removed).
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// Calls held at once.
        #[arg(long, default_value_t = 10_000)]
        records: usize,
        /// One JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Create or upgrade the tables of a PostgreSQL [store] to this broker's schema version.
    /// Run it once before the first broker starts, and after upgrading the brokers (stop the
    /// old ones first). Safe to run twice, or from two machines at once.
    Migrate {
        /// The TOML configuration file (its [store] names the database).
        #[arg(long, short, env = "TOLLGATE_CONFIG", default_value = "tollgate.toml")]
        config: PathBuf,
    },
    /// Measure the PostgreSQL [store] from this machine: round trips, and durable commits per
    /// second on one connection and on the pool (in a temporary table; nothing is kept).
    CheckStore {
        /// The TOML configuration file (its [store] names the database).
        #[arg(long, short, env = "TOLLGATE_CONFIG", default_value = "tollgate.toml")]
        config: PathBuf,
        /// Commits to time.
        #[arg(long, default_value_t = 1000)]
        commits: usize,
        /// One JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Measure audit searches on this disk: fill a scratch store with many entries through the
    /// real store, then time searches with one and two filters.
    CheckAudit {
        /// Directory on the disk to test (a scratch directory is made inside and removed).
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// Audit entries to write first.
        #[arg(long, default_value_t = 1_000_000)]
        records: usize,
        /// One JSON object instead of text.
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
        /// For an https:// broker: the CA certificate (PEM) that signed its certificate,
        /// trusted instead of the system's CAs.
        #[arg(long, env = "TOLLGATE_CA", value_name = "FILE")]
        ca: Option<std::path::PathBuf>,
        /// A client certificate (PEM) for a broker that requires one (mutual TLS).
        #[arg(long, env = "TOLLGATE_CERT", value_name = "FILE", requires = "key")]
        cert: Option<std::path::PathBuf>,
        /// The client certificate's private key (PEM).
        #[arg(long, env = "TOLLGATE_KEY", value_name = "FILE", requires = "cert")]
        key: Option<std::path::PathBuf>,
    },
    /// Read a token on stdin and print the token_sha256 value for a [[client]] table.
    HashToken,
    /// Notification sinks ([[notify]]).
    #[command(subcommand)]
    Notify(NotifyCommand),
    /// Print a shell completion script: source it, or install it where your shell looks
    /// (bash: /usr/share/bash-completion/completions/tollgate-broker).
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: tollgate_shared::cli::Shell,
    },
    /// Write man pages (tollgate-broker.1 and one per command) into a directory, e.g.
    /// /usr/local/share/man/man1.
    Man {
        /// Where to write them.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
    },
}

#[derive(Subcommand, Debug)]
enum NotifyCommand {
    /// Send a sample "held" event to every sink (or one) and print what each answered.
    ///
    /// Exits 1 when any sink failed. Nothing is retried, coalesced or rate-limited, and no
    /// broker needs to run.
    Test {
        /// The broker's config file.
        #[arg(long)]
        config: PathBuf,
        /// Only this sink.
        #[arg(long)]
        sink: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
enum AuditCommand {
    /// Check that no audit entry was edited, removed or reordered; exits 1 naming the first
    /// broken entry.
    ///
    /// Prints an anchor (SEQ:HASH). Keep it outside the data directory and pass it to a later
    /// run with --anchor to also detect entries cut from the end of the chain.
    Verify {
        /// SEQ:HASH from an earlier verify; that entry must still be in the chain, unchanged.
        #[arg(long)]
        anchor: Option<String>,
        #[command(flatten)]
        dir: audit::DataDir,
    },
    /// Write every signed decision (statement and SSH signature) and the approvers' public keys
    /// (`allowed_signers`) into a directory, with a `verify.sh` that checks each one with
    /// `ssh-keygen -Y verify`: an auditor needs neither Tollgate nor the broker.
    Export {
        /// Export the signed decisions (the only export so far).
        #[arg(long, required = true)]
        signed: bool,
        /// The directory to write (created if missing).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        #[command(flatten)]
        dir: audit::DataDir,
    },
}

#[derive(Subcommand, Debug)]
enum TokenCommand {
    /// Create an identity and print its token once (only its SHA-256 is stored).
    Add {
        /// Unique name, shown as approver or client in the audit trail.
        #[arg(long)]
        name: String,
        /// viewer (sees the queue and audit trail), approver (also decides), admin (everything).
        #[arg(long, value_parser = |s: &str| s.parse::<tollgate_shared::console::Role>())]
        role: tollgate_shared::console::Role,
        /// For approvers: the only servers they may decide for, comma-separated.
        #[arg(long, value_delimiter = ',')]
        servers: Option<Vec<String>>,
        #[command(flatten)]
        keys: token::KeyArgs,
        /// Every decision of this identity must be signed with one of its SSH keys.
        #[arg(long)]
        require_signature: bool,
        #[command(flatten)]
        dir: audit::DataDir,
    },
    /// An identity's SSH keys, which sign its decisions (`tollgate approve --sign`).
    Key {
        #[command(subcommand)]
        action: KeyCommand,
    },
    /// List identities (names, roles, scopes, keys; never tokens).
    List {
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        dir: audit::DataDir,
    },
    /// Remove an identity; its token stops working at once, also on a running broker.
    Revoke {
        /// The identity's name.
        name: String,
        #[command(flatten)]
        dir: audit::DataDir,
    },
}

#[derive(Subcommand, Debug)]
enum KeyCommand {
    /// Add SSH public keys to an identity (its decisions signed by any of them count).
    Add {
        /// The identity's name.
        #[arg(long)]
        name: String,
        #[command(flatten)]
        keys: token::KeyArgs,
        /// Also require every decision of this identity to be signed.
        #[arg(long)]
        require_signature: bool,
        #[command(flatten)]
        dir: audit::DataDir,
    },
    /// Revoke a key: signatures it makes from now on are refused; older ones still verify.
    Revoke {
        /// The identity's name.
        #[arg(long)]
        name: String,
        /// The key's fingerprint (`SHA256:…`, as `token list` and `ssh-keygen -l` print it).
        #[arg(long)]
        key: String,
        #[command(flatten)]
        dir: audit::DataDir,
    },
}

/// The base URL of a running broker's admin listener: `url` if given, else from the config's
/// `admin_listen` (an address for every interface is asked on loopback).
pub(crate) fn admin_url(path: &Path, url: Option<&str>) -> Result<String, String> {
    if let Some(u) = url {
        return Ok(u.trim_end_matches('/').to_string());
    }
    let config = config::load(path).map_err(|e| e.to_string())?;
    match config.broker.admin_listen {
        Some(a) if a.port() != 0 => {
            let host = if a.ip().is_unspecified() {
                "127.0.0.1".to_string()
            } else {
                a.ip().to_string()
            };
            let scheme = if config.broker.tls.is_some() {
                "https"
            } else {
                "http"
            };
            Ok(format!("{scheme}://{host}:{}", a.port()))
        }
        _ => Err(format!(
            "{} has no fixed admin_listen address; set one, or pass --url",
            path.display()
        )),
    }
}

/// An HTTP client for the admin listener at `url`, trusting `ca` for https.
pub(crate) fn admin_client(
    url: &str,
    ca: Option<PathBuf>,
    timeout: std::time::Duration,
) -> Result<reqwest::Client, String> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut http = reqwest::Client::builder().timeout(timeout);
    if url.starts_with("https://") {
        let tls = tollgate_shared::tls::ClientTls {
            ca,
            cert: None,
            key: None,
        };
        http = http.tls_backend_preconfigured(tls.config()?);
    }
    http.build().map_err(|e| e.to_string())
}

fn reload(
    path: &Path,
    url: Option<String>,
    token: Option<String>,
    ca: Option<PathBuf>,
) -> ExitCode {
    let setup = admin_url(path, url.as_deref()).and_then(|url| {
        let token = token.ok_or("reload needs an admin's token (--token or TOLLGATE_TOKEN)")?;
        Ok((
            admin_client(&url, ca, std::time::Duration::from_secs(60))?,
            url,
            token,
        ))
    });
    let (http, url, token) = match setup {
        Ok(s) => s,
        Err(e) => {
            eprintln!("tollgate-broker reload: {e}");
            return ExitCode::from(2);
        }
    };
    match admin_request(
        "reload",
        &url,
        http.post(format!("{url}/v1/reload")).bearer_auth(&token),
    ) {
        Ok((true, body)) => {
            print!("{body}");
            ExitCode::SUCCESS
        }
        Ok((false, body)) => {
            eprint!("tollgate-broker reload: {body}");
            ExitCode::from(1)
        }
        Err(code) => code,
    }
}

/// Send one request to a running broker's admin listener: whether it succeeded and the body,
/// or (having said why on stderr) the exit code.
fn admin_request(
    what: &str,
    url: &str,
    req: reqwest::RequestBuilder,
) -> Result<(bool, String), ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            eprintln!("tollgate-broker {what}: {e}");
            ExitCode::from(1)
        })?;
    runtime
        .block_on(async {
            let resp = req.send().await?;
            let ok = resp.status().is_success();
            Ok::<_, reqwest::Error>((ok, resp.text().await?))
        })
        .map_err(|e| {
            let why = tollgate_shared::tls::describe(&e)
                .unwrap_or_else(|| tollgate_shared::report::chain(&e.without_url()));
            eprintln!(
                "tollgate-broker {what}: no answer from {url}: {why} (is the broker running, and is this its admin_listen?)"
            );
            ExitCode::from(1)
        })
}

fn status(path: &Path, url: Option<String>, ca: Option<PathBuf>) -> ExitCode {
    let setup = admin_url(path, url.as_deref()).and_then(|url| {
        Ok((
            admin_client(&url, ca, std::time::Duration::from_secs(10))?,
            url,
        ))
    });
    let (http, url) = match setup {
        Ok(s) => s,
        Err(e) => {
            eprintln!("tollgate-broker status: {e}");
            return ExitCode::from(2);
        }
    };
    match admin_request("status", &url, http.get(format!("{url}/readyz"))) {
        Ok((ok, body)) => {
            print!("{body}");
            if ok {
                println!("ready");
                ExitCode::SUCCESS
            } else {
                println!("not ready");
                ExitCode::from(1)
            }
        }
        Err(code) => code,
    }
}

fn notify_test(path: &Path, sink: Option<String>) -> ExitCode {
    let config = match config::load(path) {
        Ok(c) => c,
        Err(e) => {
            eprint!("{e}");
            return ExitCode::from(2);
        }
    };
    if config.notify.is_empty() {
        eprintln!(
            "tollgate-broker notify test: {} has no [[notify]] sinks",
            path.display()
        );
        return ExitCode::from(2);
    }
    if let Some(name) = &sink
        && !config.notify.iter().any(|s| &s.name == name)
    {
        let known: Vec<&str> = config.notify.iter().map(|s| s.name.as_str()).collect();
        eprintln!(
            "tollgate-broker notify test: no sink {name:?} (known: {})",
            known.join(", ")
        );
        return ExitCode::from(2);
    }
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("tollgate-broker notify test: {e}");
            return ExitCode::from(1);
        }
    };
    let answers = runtime.block_on(crate::notify::test(&config.notify, sink.as_deref()));
    let mut ok = true;
    for (name, a) in answers {
        println!("{name}: {} {}", if a.ok { "ok" } else { "FAILED" }, a.said);
        ok &= a.ok;
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

fn report(what: &str, r: anyhow::Result<()>) -> ExitCode {
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tollgate-broker {what}: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// Run the command line and return the process's exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve { config, log_format } => serve::run(&config, log_format),
        Command::Notify(NotifyCommand::Test { config, sink }) => notify_test(&config, sink),
        Command::Status { config, url, ca } => status(&config, url, ca),
        Command::Reload {
            config,
            url,
            token,
            ca,
        } => reload(&config, url, token, ca),
        Command::Completions { shell } => {
            use clap::CommandFactory;
            tollgate_shared::cli::completions(Cli::command(), shell, &mut std::io::stdout());
            ExitCode::SUCCESS
        }
        Command::Man { dir } => {
            use clap::CommandFactory;
            match tollgate_shared::cli::man_pages(Cli::command(), &dir) {
                Ok(files) => {
                    for f in files {
                        println!("{}", f.display());
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!(
                        "tollgate-broker man: cannot write into {}: {e}",
                        dir.display()
                    );
                    ExitCode::from(1)
                }
            }
        }
        Command::Check { config } => match config::load(&config) {
            Ok(c) => {
                for w in &c.warnings {
                    eprintln!(
                        "  {}:{}:{}: warning: {}",
                        config.display(),
                        w.line,
                        w.column,
                        w.message
                    );
                    if let Some(h) = &w.hint {
                        eprintln!("    hint: {h}");
                    }
                }
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
            action: Some(AuditCommand::Verify { anchor, dir }),
            ..
        } => report("audit verify", audit::verify(&dir, anchor.as_deref())),
        Command::Audit {
            action:
                Some(AuditCommand::Export {
                    signed: _,
                    out,
                    dir,
                }),
            ..
        } => report("audit export", audit::export_signed(&dir, &out)),
        Command::Audit {
            action: None,
            dir,
            search,
        } => report("audit", audit::audit(&dir, &search)),
        Command::Token { action } => match action {
            TokenCommand::Add {
                name,
                role,
                servers,
                keys,
                require_signature,
                dir,
            } => report(
                "token add",
                token::add(&dir, &name, role, servers, &keys, require_signature),
            ),
            TokenCommand::Key {
                action:
                    KeyCommand::Add {
                        name,
                        keys,
                        require_signature,
                        dir,
                    },
            } => report(
                "token key add",
                token::add_keys(&dir, &name, &keys, require_signature),
            ),
            TokenCommand::Key {
                action: KeyCommand::Revoke { name, key, dir },
            } => report("token key revoke", token::revoke_key(&dir, &name, &key)),
            TokenCommand::List { json, dir } => report("token list", token::list(&dir, json)),
            TokenCommand::Revoke { name, dir } => {
                report("token revoke", token::revoke(&dir, &name))
            }
        },
        Command::CheckDisk { dir, records, json } => {
            report("check-disk", check_disk(&dir, records, json))
        }
        Command::Migrate { config } => report("migrate", pg::migrate(&config)),
        Command::CheckStore {
            config,
            commits,
            json,
        } => report("check-store", pg::check_store(&config, commits, json)),
        Command::CheckAudit { dir, records, json } => {
            report("check-audit", check_audit(&dir, records, json))
        }
        Command::Connect {
            url,
            token,
            ca,
            cert,
            key,
        } => bridge::run(
            &url,
            token,
            tollgate_shared::tls::ClientTls { ca, cert, key },
        ),
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
            println!(
                "{}",
                tollgate_shared::hex(&tollgate_policy::identity::digest(token))
            );
            ExitCode::SUCCESS
        }
    }
}

fn check_disk(dir: &Path, records: usize, json: bool) -> anyhow::Result<()> {
    let c = diagnostics::check_disk(dir, records)?;
    let reject_ms = c.reject_all.as_secs_f64() * 1e3;
    if json {
        println!(
            "{}",
            serde_json::json!({"fdatasyncs_per_s": c.fdatasyncs_per_s, "holds": c.holds, "holds_per_s": c.holds_per_s, "reject_all_ms": reject_ms})
        );
    } else {
        println!("disk under {}:", dir.display());
        println!(
            "  single-record fdatasyncs per second: {:.0}",
            c.fdatasyncs_per_s
        );
        println!(
            "  durable holds per second ({} at once, group commit): {:.0} ({:.1}x)",
            c.holds,
            c.holds_per_s,
            c.holds_per_s / c.fdatasyncs_per_s
        );
        println!(
            "  one decision rejecting all {}, until every waiter knows: {reject_ms:.1} ms",
            c.holds
        );
    }
    Ok(())
}

fn check_audit(dir: &Path, records: usize, json: bool) -> anyhow::Result<()> {
    let c = diagnostics::check_audit(dir, records)?;
    let ms = |d: std::time::Duration| d.as_secs_f64() * 1e3;
    if json {
        let out: Vec<serde_json::Value> = c
            .searches
            .iter()
            .map(|s| serde_json::json!({"query": s.query, "found": s.found, "ms": ms(s.median)}))
            .collect();
        println!(
            "{}",
            serde_json::json!({
                "records": c.records,
                "fill_s": c.fill.as_secs_f64(),
                "queries": out,
            })
        );
    } else {
        println!(
            "{} audit entries written in {:.1} s ({:.0}/s)",
            c.records,
            c.fill.as_secs_f64(),
            c.records as f64 / c.fill.as_secs_f64()
        );
        println!("| query | entries returned | median ms |");
        println!("|---|---|---|");
        for s in &c.searches {
            println!("| {} | {} | {:.2} |", s.query, s.found, ms(s.median));
        }
    }
    Ok(())
}
