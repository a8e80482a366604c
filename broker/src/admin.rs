//! Operator commands that work on a data directory: `audit` (search, export, verify the chain)
//! and `token` (add, list, revoke identities).
//!
//! `audit` opens the sled store, which one process at a time may hold, so it reads a stopped
//! broker's store (or a copy); a running broker answers audit queries on the console API.
//! `token` edits the token file, which works while the broker runs.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use tollgate_shared::Outcome;
use tollgate_shared::audit::{AuditEntry, AuditFilter};
use tollgate_shared::console::Role;

use crate::config;
use tollgate_store::sled_engine::SledEngine;
use tollgate_store::{Backend, Engine, Store, Writes, chain, tokens};

/// Where the data directory is: from `--data-dir`, else from the config's `data_dir`.
#[derive(clap::Args, Debug)]
pub struct DataDir {
    /// The TOML configuration file (its [broker] data_dir locates the store).
    #[arg(long, short, env = "TOLLGATE_CONFIG", default_value = "tollgate.toml")]
    config: PathBuf,
    /// The data directory, instead of reading it from the config.
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

impl DataDir {
    fn resolve(&self) -> anyhow::Result<PathBuf> {
        if let Some(d) = &self.data_dir {
            return Ok(d.clone());
        }
        let cfg = config::load(&self.config).map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok(cfg.broker.data_dir)
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
    /// abandoned, rate_limited.
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

/// `audit`: search the trail.
pub fn audit(dir: &DataDir, s: &Search) -> anyhow::Result<()> {
    let backend = open(&dir.resolve()?)?;
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
    let entries = backend.audit_query(&filter)?;
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
    let dir = dir.resolve()?;
    let backend = open(&dir)?;
    let v = chain::verify(&backend, anchor)?;
    println!(
        "audit chain OK: {} entries in {}; anchor for later checks: {}:{}",
        v.entries,
        dir.display(),
        v.entries,
        v.head
    );
    Ok(())
}

/// `token add`.
pub fn token_add(
    dir: &DataDir,
    name: &str,
    role: Role,
    servers: Option<Vec<String>>,
) -> anyhow::Result<()> {
    let dir = dir.resolve()?;
    let token = tokens::add(&dir, name, role, servers.clone())
        .with_context(|| format!("cannot add identity {name:?}"))?;
    let scope = servers.map_or_else(String::new, |s| format!(" for servers {}", s.join(", ")));
    eprintln!(
        "added {name} ({}{scope}). This is the only time the token is shown; store it now:",
        role.as_str()
    );
    println!("{token}");
    Ok(())
}

/// `token list`.
pub fn token_list(dir: &DataDir, json: bool) -> anyhow::Result<()> {
    let list = tokens::list(&dir.resolve()?)?;
    let mut out = std::io::stdout().lock();
    if json {
        for t in &list {
            let v = serde_json::json!({"name": t.name, "role": t.role, "servers": t.servers, "created_ms": t.created_ms});
            writeln!(out, "{v}")?;
        }
        return Ok(());
    }
    writeln!(
        out,
        "{:<20} {:<9} {:<20} CREATED (UTC)",
        "NAME", "ROLE", "SERVERS"
    )?;
    for t in &list {
        writeln!(
            out,
            "{:<20} {:<9} {:<20} {}",
            t.name,
            t.role.as_str(),
            t.servers.as_ref().map_or("(all)".into(), |s| s.join(",")),
            tollgate_shared::clock::rfc3339_seconds(t.created_ms)
        )?;
    }
    if list.is_empty() {
        writeln!(
            out,
            "(no identities yet: tollgate-broker token add --name NAME --role approver)"
        )?;
    }
    Ok(())
}

/// `token revoke`.
pub fn token_revoke(dir: &DataDir, name: &str) -> anyhow::Result<()> {
    if tokens::revoke(&dir.resolve()?, name)? {
        println!("revoked {name}; its token stops working at its next use");
        Ok(())
    } else {
        anyhow::bail!("no identity named {name:?} (see `tollgate-broker token list`)")
    }
}

/// A scratch directory inside `dir` (created if needed), removed when dropped.
fn scratch_dir(dir: &Path, prefix: &str) -> anyhow::Result<tempfile::TempDir> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in(dir)
        .with_context(|| format!("cannot create a scratch directory in {}", dir.display()))
}

/// `check-disk`: how fast can this disk hold calls durably?
///
/// Measures, in a scratch directory on the disk of `dir`: single-record `fdatasync`s per
/// second (what each hold would cost without group commit), then `records` calls held at once
/// through the real queue, store and journal (no HTTP), reporting holds per second, and one
/// decision rejecting them all until every waiter has its answer.
pub fn check_disk(dir: &Path, records: usize, json: bool) -> anyhow::Result<()> {
    let scratch = scratch_dir(dir, "tollgate-check-disk-")?;
    let syncs = {
        let path = scratch.path().join("probe");
        let mut f = std::fs::File::create(&path)?;
        let start = std::time::Instant::now();
        let mut n = 0u64;
        while start.elapsed() < Duration::from_secs(1) {
            f.write_all(b"0123456789abcdef {\"probe\":true}\n")?;
            f.sync_data()?;
            n += 1;
        }
        n as f64 / start.elapsed().as_secs_f64()
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let (elapsed, reject) = runtime.block_on(async {
        let engine = std::sync::Arc::new(SledEngine::open(&scratch.path().join("store"))?);
        let queue = crate::queue::Queue::new(Store::open(engine).await?, Duration::from_secs(60));
        let start = std::time::Instant::now();
        let holds: Vec<_> = (0..records)
            .map(|i| {
                let q = queue.clone();
                tokio::spawn(async move { q.hold(crate::queue::sample_call(i)).await })
            })
            .collect();
        let mut waiting = Vec::with_capacity(records);
        for h in holds {
            waiting.push(h.await?.map_err(|e| anyhow::anyhow!(e.to_string()))?);
        }
        let elapsed = start.elapsed();
        let start = std::time::Instant::now();
        let ids = waiting.iter().map(|w| w.record.id.to_string()).collect();
        let who = tollgate_policy::identity::Identity {
            name: "check-disk".into(),
            role: tollgate_shared::console::Role::Admin,
            servers: None,
        };
        let target = tollgate_shared::console::Target::Ids { ids };
        let results = queue
            .decide(&who, &target, tollgate_shared::Verdict::Reject, None)
            .await;
        anyhow::ensure!(
            results.iter().all(|r| r.ok),
            "the bulk rejection failed: {:?}",
            results.iter().find(|r| !r.ok)
        );
        for w in waiting {
            w.done.await?;
        }
        anyhow::Ok((elapsed, start.elapsed()))
    })?;
    let holds = records as f64 / elapsed.as_secs_f64();
    let reject_ms = reject.as_secs_f64() * 1e3;
    if json {
        println!(
            "{}",
            serde_json::json!({"fdatasyncs_per_s": syncs, "holds": records, "holds_per_s": holds, "reject_all_ms": reject_ms})
        );
    } else {
        println!("disk under {}:", dir.display());
        println!("  single-record fdatasyncs per second: {syncs:.0}");
        println!(
            "  durable holds per second ({records} at once, group commit): {holds:.0} ({:.1}x)",
            holds / syncs
        );
        println!(
            "  one decision rejecting all {records}, until every waiter knows: {reject_ms:.1} ms"
        );
    }
    Ok(())
}

/// `tollgate-broker check-audit`: fill a scratch store with `records` audit entries (mixed
/// statuses, 20 tools, 50 clients) through the real recorder, then time searches like an
/// operator's: two filters, one filter, none, with the default limit of 100 and with 10000.
pub fn check_audit(dir: &Path, records: usize, json: bool) -> anyhow::Result<()> {
    let scratch = scratch_dir(dir, "tollgate-check-audit-")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let statuses = [
        Outcome::Allowed,
        Outcome::Allowed,
        Outcome::Allowed,
        Outcome::Allowed,
        Outcome::Blocked,
        Outcome::Approved,
        Outcome::Rejected,
        Outcome::RateLimited,
    ];
    let backend = std::sync::Arc::new(SledEngine::open(&scratch.path().join("store"))?);
    let fill = std::time::Instant::now();
    runtime.block_on(async {
        let store = Store::open(backend.clone()).await?;
        for i in 0..records {
            let mut call = crate::queue::sample_call(i);
            call.outcome = statuses[i % statuses.len()];
            call.tool = format!("tool_{}", (i / 8) % 20).into();
            call.client = format!("agent-{}", (i / 3) % 50).into();
            call.hold = None;
            store.write(std::sync::Arc::new(call), Writes::Audit).await;
        }
        store.flush().await;
        anyhow::Ok(())
    })?;
    backend.checkpoint()?;
    let filled = fill.elapsed();
    let queries: Vec<(&str, AuditFilter)> = vec![
        (
            "status + tool, newest 100",
            AuditFilter {
                status: Some(Outcome::Rejected),
                tool: Some("tool_7".into()),
                ..AuditFilter::default()
            },
        ),
        (
            "status + client, newest 100",
            AuditFilter {
                status: Some(Outcome::Blocked),
                client: Some("agent-17".into()),
                ..AuditFilter::default()
            },
        ),
        (
            "status + tool, newest 10000",
            AuditFilter {
                status: Some(Outcome::Rejected),
                tool: Some("tool_7".into()),
                limit: Some(10_000),
                ..AuditFilter::default()
            },
        ),
        (
            "status only, newest 100",
            AuditFilter {
                status: Some(Outcome::Approved),
                ..AuditFilter::default()
            },
        ),
        ("no filter, newest 100", AuditFilter::default()),
    ];
    let mut rows = Vec::new();
    for (name, filter) in &queries {
        let mut times = Vec::new();
        let mut found = 0;
        for _ in 0..11 {
            let t = std::time::Instant::now();
            found = backend.audit_query(filter)?.len();
            times.push(t.elapsed());
        }
        times.sort_unstable();
        rows.push((name, found, times[times.len() / 2]));
    }
    if json {
        let out: Vec<serde_json::Value> = rows
            .iter()
            .map(|(name, found, t)| {
                serde_json::json!({"query": name, "found": found, "ms": t.as_secs_f64() * 1e3})
            })
            .collect();
        println!(
            "{}",
            serde_json::json!({
                "records": records,
                "fill_s": filled.as_secs_f64(),
                "queries": out,
            })
        );
    } else {
        println!(
            "{records} audit entries written in {:.1} s ({:.0}/s)",
            filled.as_secs_f64(),
            records as f64 / filled.as_secs_f64()
        );
        println!("| query | entries returned | median ms |");
        println!("|---|---|---|");
        for (name, found, t) in rows {
            println!("| {name} | {found} | {:.2} |", t.as_secs_f64() * 1e3);
        }
    }
    Ok(())
}
