//! `audit`: search, export and verify the audit trail of a stopped broker's store.
//!
//! `audit` opens the sled store, which one process at a time may hold, so it reads a stopped
//! broker's store (or a copy); a running broker answers the same queries on the console API
//! (`tollgate audit`).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tollgate_shared::Outcome;
use tollgate_shared::audit::{AuditEntry, AuditFilter};
use tollgate_store::sled_engine::SledEngine;
use tollgate_store::{Engine, chain};

use crate::config;

/// Where the data directory is: from `--data-dir`, else from the config's `data_dir`.
#[derive(clap::Args, Debug)]
pub struct DataDir {
    /// The TOML configuration file (its [store], or else its [broker] data_dir, locates the
    /// store).
    #[arg(long, short, env = "TOLLGATE_CONFIG", default_value = "tollgate.toml")]
    config: PathBuf,
    /// The data directory, instead of reading it from the config.
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

/// Where the audit trail and the identities are.
pub(super) enum Source {
    Sled(PathBuf),
    Postgres(Box<tollgate_store::postgres::Settings>),
}

impl DataDir {
    pub(super) fn source(&self) -> anyhow::Result<Source> {
        if let Some(d) = &self.data_dir {
            return Ok(Source::Sled(d.clone()));
        }
        let cfg = config::load(&self.config).map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok(match cfg.store {
            config::StoreSpec::Postgres(s) => Source::Postgres(s),
            config::StoreSpec::Sled => Source::Sled(cfg.broker.data_dir),
        })
    }
}

/// Output formats of `audit`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// A table for people.
    Table,
    /// One JSON object per line.
    Json,
    /// Comma-separated values with a header.
    Csv,
}

/// Filters and output of an audit search.
#[derive(clap::Args, Debug)]
pub struct Search {
    /// Only this status: allowed, blocked, pending, approved, rejected, expired, cancelled,
    /// abandoned, rate_limited, escalated.
    #[arg(long, value_parser = |s: &str| s.parse::<Outcome>())]
    status: Option<Outcome>,
    /// Only calls to this server.
    #[arg(long)]
    server: Option<String>,
    /// Only this tool.
    #[arg(long)]
    tool: Option<String>,
    /// Only calls made by this client identity.
    #[arg(long)]
    client: Option<String>,
    /// Only entries decided (in part) by this approver.
    #[arg(long)]
    approver: Option<String>,
    /// Only the entries of one call id.
    #[arg(long)]
    call: Option<String>,
    /// Only entries newer than this, e.g. 15m, 1h, 7d.
    #[arg(long, value_parser = humantime::parse_duration)]
    since: Option<Duration>,
    /// At most this many entries (the newest).
    #[arg(long, default_value_t = 100)]
    limit: usize,
    /// Output format.
    #[arg(long, value_enum, default_value = "table")]
    format: Format,
    /// Shorthand for --format json.
    #[arg(long, conflicts_with = "format")]
    json: bool,
    /// Shorthand for --format csv.
    #[arg(long, conflicts_with_all = ["format", "json"])]
    csv: bool,
    /// Keep printing new entries as the running broker writes them (from its admin
    /// listener, so the broker keeps running), until interrupted. For log shippers: add
    /// --json, and --after with the last sequence number seen to resume without gaps.
    #[arg(long, conflicts_with_all = ["status", "server", "tool", "client", "approver", "call", "since", "csv"])]
    follow: bool,
    /// With --follow: start after this sequence number (default: the newest entry).
    #[arg(long, requires = "follow")]
    after: Option<u64>,
    /// With --follow: the admin listener's URL (default: from the config's admin_listen).
    #[arg(long, requires = "follow")]
    url: Option<String>,
    /// With --follow: a token of any role (from `tollgate-broker token add`).
    #[arg(long, env = "TOLLGATE_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// With --follow over https://: the CA certificate (PEM) that signed the broker's.
    #[arg(long, env = "TOLLGATE_CA", value_name = "FILE")]
    ca: Option<PathBuf>,
}

fn open(dir: &Path) -> anyhow::Result<SledEngine> {
    if !dir.exists() {
        anyhow::bail!(
            "no store at {}: the broker has not run with this data_dir yet",
            dir.display()
        );
    }
    Ok(SledEngine::open(dir)?)
}

/// `audit --follow`: print entries as the running broker writes them, until interrupted.
pub fn follow(dir: &DataDir, s: &Search) -> anyhow::Result<()> {
    let url = super::admin_url(&dir.config, s.url.as_deref()).map_err(|e| anyhow::anyhow!(e))?;
    let token = s.token.clone().ok_or_else(|| {
        anyhow::anyhow!("--follow needs a token (--token or TOLLGATE_TOKEN; any role), from `tollgate-broker token add`")
    })?;
    let http = super::admin_client(&url, s.ca.clone(), Duration::from_secs(90))
        .map_err(|e| anyhow::anyhow!(e))?;
    let format = if s.json { Format::Json } else { s.format };
    if format == Format::Csv {
        anyhow::bail!("--follow writes JSON lines (--json) or a table");
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let get = |query: String| {
            http.get(format!("{url}/v1/audit?{query}"))
                .bearer_auth(&token)
                .send()
        };
        // Without --after: from the newest entry on.
        let mut after = match s.after {
            Some(a) => a,
            None => {
                let resp = get("tail=1".into()).await.map_err(|e| {
                    anyhow::anyhow!(
                        "cannot reach the broker's admin listener at {url}: {}",
                        tollgate_shared::report::chain(&e.without_url())
                    )
                })?;
                if resp.status() == reqwest::StatusCode::UNAUTHORIZED {
                    anyhow::bail!("the broker refused the token (HTTP 401)");
                }
                newest(&resp.text().await?)
            }
        };
        let mut header = format == Format::Table;
        let mut wait_s = 1;
        loop {
            let resp = match get(format!("after={after}&wait=25&limit=1000")).await {
                Ok(r) => r,
                Err(e) => {
                    eprintln!(
                        "tollgate-broker audit: cannot reach {url}: {}; retrying in {wait_s} s",
                        tollgate_shared::tls::describe(&e)
                            .unwrap_or_else(|| tollgate_shared::report::chain(&e.without_url()))
                    );
                    tokio::time::sleep(Duration::from_secs(wait_s)).await;
                    wait_s = (wait_s * 2).min(10);
                    continue;
                }
            };
            wait_s = 1;
            if resp.status() == reqwest::StatusCode::UNAUTHORIZED {
                anyhow::bail!("the broker refused the token (HTTP 401)");
            }
            if !resp.status().is_success() {
                eprintln!(
                    "tollgate-broker audit: {url} answered {}: {}",
                    resp.status(),
                    resp.text().await.unwrap_or_default().trim()
                );
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            let body = resp.text().await?;
            let mut batch = Vec::new();
            for line in body.lines().filter(|l| !l.trim().is_empty()) {
                let e: AuditEntry = serde_json::from_str(line)?;
                // Entries come in order without gaps; anything else waits for the next read.
                if e.seq != after + 1 {
                    break;
                }
                after = e.seq;
                batch.push(e);
            }
            if batch.is_empty() {
                continue;
            }
            let mut out = std::io::stdout().lock();
            match format {
                Format::Table => {
                    let text = tollgate_shared::audit::table(&batch);
                    let skip = if std::mem::take(&mut header) { 0 } else { 1 };
                    for line in text.lines().skip(skip) {
                        writeln!(out, "{line}")?;
                    }
                }
                _ => write_entries(&mut out, &batch, Format::Json)?,
            }
            out.flush()?;
        }
    })
}

/// The newest sequence number in a `/v1/audit?tail=1` answer (0 when the trail is empty).
fn newest(body: &str) -> u64 {
    body.lines()
        .filter_map(|l| serde_json::from_str::<AuditEntry>(l).ok())
        .map(|e| e.seq)
        .max()
        .unwrap_or(0)
}

/// `audit`: search the trail.
pub fn audit(dir: &DataDir, s: &Search) -> anyhow::Result<()> {
    if s.follow {
        return follow(dir, s);
    }
    let source = dir.source()?;
    let filter = AuditFilter {
        status: s.status,
        server: s.server.clone(),
        tool: s.tool.clone(),
        client: s.client.clone(),
        approver: s.approver.clone(),
        call_id: s.call.clone(),
        since_ms: s
            .since
            .map(|d| tollgate_shared::clock::now_ms().saturating_sub(d.as_millis() as u64)),
        limit: Some(s.limit),
    };
    let entries = match source {
        Source::Sled(dir) => open(&dir)?.audit_query(&filter)?,
        Source::Postgres(settings) => with_pool(*settings, async |pool| {
            Ok(tollgate_store::postgres::query(pool, &filter).await?)
        })?,
    };
    let format = if s.json {
        Format::Json
    } else if s.csv {
        Format::Csv
    } else {
        s.format
    };
    let mut out = std::io::stdout().lock();
    write_entries(&mut out, &entries, format)?;
    out.flush()?;
    Ok(())
}

fn write_entries(
    out: &mut impl Write,
    entries: &[AuditEntry],
    format: Format,
) -> anyhow::Result<()> {
    match format {
        Format::Json => {
            for e in entries {
                writeln!(out, "{}", serde_json::to_string(e)?)?;
            }
        }
        Format::Csv => out.write_all(tollgate_shared::audit::csv(entries).as_bytes())?,
        Format::Table => out.write_all(tollgate_shared::audit::table(entries).as_bytes())?,
    }
    Ok(())
}

/// `audit verify`: check the hash chain (and an anchor from an earlier run, if given).
pub fn verify(dir: &DataDir, anchor: Option<&str>) -> anyhow::Result<()> {
    let anchor = anchor
        .map(|a| {
            a.split_once(':')
                .and_then(|(seq, hash)| Some((seq.parse::<u64>().ok()?, hash)))
                .ok_or_else(|| {
                    anyhow::anyhow!(
                        "--anchor must be SEQ:HASH, as printed by an earlier `audit verify`"
                    )
                })
        })
        .transpose()?;
    // Signatures are checked against the identities' keys, revoked ones included.
    let signers: std::collections::HashMap<_, _> = entries(dir)?
        .into_iter()
        .map(|t| (t.name, t.signing))
        .collect();
    let (v, place) = match dir.source()? {
        Source::Sled(dir) => (
            chain::verify(&open(&dir)?, anchor, Some(signers))?,
            dir.display().to_string(),
        ),
        Source::Postgres(settings) => {
            let v = with_pool(*settings, async |pool| {
                Ok(tollgate_store::postgres::verify(pool, anchor, Some(signers)).await?)
            })?;
            (v, "PostgreSQL".to_string())
        }
    };
    println!(
        "audit chain OK: {} entries in {place}; anchor for later checks: {}:{}",
        v.entries, v.entries, v.head
    );
    let Some(s) = v
        .signatures
        .filter(|s| s.signed + s.unsigned > 0 || !s.problems.is_empty())
    else {
        return Ok(());
    };
    // On stderr: stdout keeps the one line scripts read the anchor from.
    eprintln!(
        "signed decisions: {} verified against their approvers' SSH keys{}",
        s.signed,
        if s.unsigned > 0 {
            format!(
                "; {} decisions by approvers with keys were not signed (nothing required it)",
                s.unsigned
            )
        } else {
            String::new()
        }
    );
    if !s.problems.is_empty() {
        for p in &s.problems {
            eprintln!("  {p}");
        }
        anyhow::bail!(
            "{} audit entries claim a decision their signatures do not prove (listed above): the trail was written by something other than the approvers' consoles",
            s.problems.len()
        );
    }
    Ok(())
}

/// Every audit entry, oldest first, to `visit`.
fn scan(dir: &DataDir, visit: &mut dyn FnMut(AuditEntry)) -> anyhow::Result<()> {
    match dir.source()? {
        Source::Sled(dir) => open(&dir)?.audit_scan(&mut |e| {
            visit(e);
            true
        })?,
        Source::Postgres(settings) => with_pool(*settings, async |pool| {
            Ok(tollgate_store::postgres::scan(pool, &mut |e| {
                visit(e);
                true
            })
            .await?)
        })?,
    }
    Ok(())
}

/// `ssh-keygen`'s time format, for `allowed_signers` and `-O verify-time`.
fn ssh_time(ms: u64) -> String {
    // 2026-11-30T21:50:21Z -> 20261130215021Z
    tollgate_shared::clock::rfc3339_seconds(ms)
        .chars()
        .filter(|c| c.is_ascii_digit() || *c == 'Z')
        .collect()
}

/// `audit export --signed DIR`: every signed decision's statement and signature, and the
/// approvers' public keys, so anyone can check them with `ssh-keygen -Y verify`.
pub fn export_signed(dir: &DataDir, out: &Path) -> anyhow::Result<()> {
    use std::fmt::Write as _;

    use anyhow::Context as _;
    let identities = entries(dir)?;
    std::fs::create_dir_all(out.join("decisions"))
        .with_context(|| format!("cannot create {}", out.display()))?;
    // allowed_signers: each key, limited to our namespace and to when it was valid.
    let mut signers = String::new();
    for t in &identities {
        for k in &t.signing.keys {
            let before = k.revoked_ms.map_or(String::new(), |r| {
                format!(",valid-before=\"{}\"", ssh_time(r))
            });
            let _ = writeln!(
                signers,
                "{} namespaces=\"{}\",valid-after=\"{}\"{before} {}",
                t.name,
                tollgate_shared::signing::NAMESPACE,
                ssh_time(k.added_ms),
                k.key
            );
        }
    }
    std::fs::write(out.join("allowed_signers"), signers)?;
    let mut index = String::new();
    let mut script = String::from(
        "#!/bin/sh\n# Check every exported decision with OpenSSH alone: sh verify.sh (from this directory).\nset -e\n",
    );
    let mut seen = std::collections::HashSet::new();
    let mut count = 0u64;
    let mut failed: Option<anyhow::Error> = None;
    scan(dir, &mut |e| {
        if failed.is_some() {
            return;
        }
        for s in &e.signatures {
            let (Some(text), Some(sig)) = (&s.statement, &s.signature) else {
                continue;
            };
            if !seen.insert(s.statement_sha256.clone()) {
                continue;
            }
            let statement = match tollgate_shared::signing::Statement::parse(text) {
                Ok(st) => st,
                Err(why) => {
                    failed = Some(anyhow::anyhow!("entry {}: {why}", e.seq));
                    return;
                }
            };
            let name = format!("{:08}-{}", e.seq, &s.statement_sha256[..12]);
            let written = std::fs::write(out.join(format!("decisions/{name}.statement")), text)
                .and_then(|()| std::fs::write(out.join(format!("decisions/{name}.sig")), sig));
            if let Err(why) = written {
                failed = Some(anyhow::anyhow!("cannot write {name}: {why}"));
                return;
            }
            let _ = writeln!(
                index,
                "{}",
                serde_json::json!({
                    "file": format!("decisions/{name}"),
                    "seq": e.seq,
                    "approver": statement.approver,
                    "decision": statement.decision,
                    "calls": statement.calls.len(),
                    "key": s.key,
                    "statement_sha256": s.statement_sha256,
                    "signed_at": tollgate_shared::clock::rfc3339_seconds(statement.at_ms),
                })
            );
            let _ = writeln!(
                script,
                "ssh-keygen -Y verify -f allowed_signers -I '{}' -n {} -s decisions/{name}.sig -O verify-time={} < decisions/{name}.statement",
                statement.approver.replace('\'', ""),
                tollgate_shared::signing::NAMESPACE,
                ssh_time(statement.at_ms)
            );
            count += 1;
        }
    })?;
    if let Some(e) = failed {
        return Err(e);
    }
    std::fs::write(out.join("index.jsonl"), index)?;
    std::fs::write(out.join("verify.sh"), script)?;
    println!(
        "exported {count} signed decisions to {} (check them with: cd {} && sh verify.sh)",
        out.display(),
        out.display()
    );
    Ok(())
}

/// Run `f` against the database's pool, after checking its schema.
pub(super) fn with_pool<T>(
    settings: tollgate_store::postgres::Settings,
    f: impl AsyncFnOnce(&tollgate_store::postgres::Pool) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    super::pg::runtime()?.block_on(async {
        let pool = tollgate_store::postgres::Pool::new(settings);
        tollgate_store::postgres::schema::check(&*pool.get().await?).await?;
        f(&pool).await
    })
}

/// Every identity, from the token file or the database.
pub(super) fn entries(dir: &DataDir) -> anyhow::Result<Vec<tollgate_store::tokens::TokenEntry>> {
    Ok(match dir.source()? {
        Source::Sled(dir) => tollgate_store::tokens::list(&dir)?,
        Source::Postgres(settings) => with_pool(*settings, async |pool| {
            Ok(tollgate_store::postgres::identities::list(pool).await?)
        })?,
    })
}
