//! The scriptable commands: `list`, `show`, `approve`, `reject`, `rules`, `watch`, `audit`.
//!
//! Each opens one connection, does its job and exits. Text output is for people; `--json`
//! prints JSON for scripts (one document, or one object per line for `watch`). Exit codes: 0
//! success, 1 connection or other errors, 2 usage, 3 a call was not found, 4 a call was already
//! decided (or expired, cancelled), 5 the identity may not decide it.

use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Result;
use tollgate_shared::audit::AuditFilter;
use tollgate_shared::console::{
    AllowNext, ClientMsg, Refusal, RuleKind, ServerMsg, Target, TempRule,
};
use tollgate_shared::{CallRecord, Outcome, Verdict};

use crate::client::{Conn, Settings};
use crate::fmt::{args_summary, pretty_sorted, short_duration};
use tollgate_shared::clock::now_ms;
use tollgate_shared::clock::rfc3339_seconds;

/// Exit code when a call was not found.
pub const NOT_FOUND: u8 = 3;
/// Exit code when a call was no longer pending.
pub const ALREADY: u8 = 4;
/// Exit code when the identity may not decide.
pub const NOT_ALLOWED: u8 = 5;

fn print_json(v: &impl serde::Serialize) -> Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, v)?;
    writeln!(out)?;
    Ok(())
}

/// One line per pending call.
pub fn table(calls: &[Arc<CallRecord>]) -> String {
    let now = now_ms();
    let mut s = format!(
        "{:<36}  {:>6}  {:>7}  {:<28}  {:<12}  ARGUMENTS\n",
        "ID", "AGE", "EXPIRES", "SERVER/TOOL", "CLIENT"
    );
    for c in calls {
        let expires = c.hold.as_ref().map_or("-".into(), |h| {
            if h.expires_ms == u64::MAX {
                "never".into()
            } else {
                short_duration(h.expires_ms.saturating_sub(now))
            }
        });
        s.push_str(&format!(
            "{:<36}  {:>6}  {:>7}  {:<28}  {:<12}  {}\n",
            c.id,
            short_duration(now.saturating_sub(c.timings.received_ms)),
            expires,
            format!("{}/{}", c.server, c.tool),
            c.client,
            args_summary(&c.arguments.value(), 60)
        ));
    }
    if calls.is_empty() {
        s.push_str("(no calls are waiting for approval)\n");
    }
    s
}

/// `list`.
pub async fn list(s: &Settings, json: bool) -> Result<ExitCode> {
    let conn = Conn::connect(s).await?;
    if json {
        print_json(&conn.pending)?;
    } else {
        print!("{}", table(&conn.pending));
    }
    Ok(ExitCode::SUCCESS)
}

/// `show ID`.
pub async fn show(s: &Settings, id: &str, json: bool) -> Result<ExitCode> {
    let mut conn = Conn::connect(s).await?;
    if let Some(c) = conn.pending.iter().find(|c| *c.id == *id) {
        if json {
            print_json(c)?;
        } else {
            print!("{}", detail(c));
        }
        return Ok(ExitCode::SUCCESS);
    }
    // Not pending: the audit trail knows what became of it.
    let req = conn.req();
    let filter = AuditFilter {
        call_id: Some(id.to_string()),
        ..AuditFilter::default()
    };
    let entries = match conn
        .request(
            req,
            &ClientMsg::AuditQuery {
                req: Some(req),
                filter,
            },
        )
        .await?
    {
        ServerMsg::AuditResult { entries, .. } => entries,
        _ => Vec::new(),
    };
    if entries.is_empty() {
        eprintln!("tollgate: no call {id} (not pending, not in the audit trail)");
        return Ok(ExitCode::from(NOT_FOUND));
    }
    if json {
        print_json(&entries)?;
    } else {
        println!("call {id} is not pending; its audit trail:");
        for e in &entries {
            println!(
                "  {}  {:<10} {}/{} by {}{}{}",
                rfc3339_seconds(e.at_ms),
                e.outcome.as_str(),
                e.server,
                e.tool,
                e.client,
                if e.approvers.is_empty() {
                    String::new()
                } else {
                    format!(", decided by {}", e.approvers.join(", "))
                },
                e.reason
                    .as_deref()
                    .map(|r| format!(": {r}"))
                    .unwrap_or_default()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// A held call in full, for `show`.
pub fn detail(c: &CallRecord) -> String {
    let mut s = String::new();
    s.push_str(&format!("call     {}\n", c.id));
    s.push_str(&format!("tool     {}/{}\n", c.server, c.tool));
    s.push_str(&format!("client   {}\n", c.client));
    s.push_str(&format!(
        "rule     {} (rule {})\n",
        c.rule.name, c.rule.index
    ));
    if let Some(r) = &c.reason {
        s.push_str(&format!("reason   {r}\n"));
    }
    s.push_str(&format!(
        "received {}\n",
        rfc3339_seconds(c.timings.received_ms)
    ));
    if let Some(h) = &c.hold {
        if h.expires_ms == u64::MAX {
            s.push_str("expires  never\n");
        } else {
            s.push_str(&format!("expires  {}\n", rfc3339_seconds(h.expires_ms)));
        }
        s.push_str(&format!("waits as {:?}, quorum {}\n", h.mode, h.quorum).to_lowercase());
        if !h.approvers.is_empty() {
            s.push_str(&format!("deciders {}\n", h.approvers.join(", ")));
        }
    }
    for d in &c.decisions {
        s.push_str(
            &format!(
                "decision {:?} by {} at {}\n",
                d.verdict,
                d.by,
                rfc3339_seconds(d.at_ms)
            )
            .to_lowercase(),
        );
    }
    s.push_str(&format!("pattern  {}\n", c.fingerprint));
    s.push_str("arguments\n");
    for line in pretty_sorted(&c.arguments.value()).lines() {
        s.push_str(&format!("  {line}\n"));
    }
    s
}

/// A temporary rule to install with a decision.
#[derive(Debug, Clone, Copy, Default)]
pub struct Follow {
    /// `reject --block-for`.
    pub block_for_ms: Option<u64>,
    /// `approve --allow-next`.
    pub allow_next: Option<AllowNext>,
}

/// One line describing a temporary rule.
pub fn rule_line(r: &TempRule) -> String {
    let now = now_ms();
    let what = match r.kind {
        RuleKind::Block => "block".to_string(),
        RuleKind::Allow => format!("allow {} more", r.remaining.unwrap_or(0)),
    };
    format!(
        "{:<10}  {:<14}  {:<16}  {:<24}  {:<10}  {:>7}  {:>5}  {}",
        r.id,
        what,
        r.fingerprint,
        format!("{}/{}", r.server, r.tool),
        r.by,
        short_duration(r.until_ms.saturating_sub(now)),
        r.hits,
        r.reason.as_deref().unwrap_or("")
    )
}

fn rules_table(rules: &[TempRule]) -> String {
    let mut s = format!(
        "{:<10}  {:<14}  {:<16}  {:<24}  {:<10}  {:>7}  {:>5}  REASON\n",
        "ID", "KIND", "FINGERPRINT", "SERVER/TOOL", "BY", "LEFT", "HITS"
    );
    for r in rules {
        s.push_str(&rule_line(r));
        s.push('\n');
    }
    if rules.is_empty() {
        s.push_str("(no temporary rules)\n");
    }
    s
}

/// `rules` and `rules revoke ID`.
pub async fn rules(s: &Settings, revoke: Option<String>, json: bool) -> Result<ExitCode> {
    let mut conn = Conn::connect(s).await?;
    let req = conn.req();
    let msg = match &revoke {
        Some(id) => ClientMsg::RevokeRule {
            req: Some(req),
            id: id.clone(),
        },
        None => ClientMsg::ListRules { req: Some(req) },
    };
    let rules = match conn.ask(req, &msg).await? {
        ServerMsg::Rules { rules, .. } => rules,
        ServerMsg::Error {
            message, refusal, ..
        } => {
            let code = refused_code(refusal);
            if code == NOT_FOUND {
                eprintln!("tollgate: {message}; `tollgate rules` lists the active ones");
            } else {
                eprintln!("tollgate: {message}");
            }
            return Ok(ExitCode::from(code));
        }
        other => anyhow::bail!("unexpected answer from the broker: {other:?}"),
    };
    if let Some(id) = &revoke
        && !json
    {
        println!("revoked {id}");
    }
    if json {
        print_json(&rules)?;
    } else {
        print!("{}", rules_table(&rules));
    }
    Ok(ExitCode::SUCCESS)
}

/// The exit code of a request the broker refused: 5 when refused for who asked (a viewer
/// deciding or installing a rule), 3 when what it names does not exist, else 2 (usage).
fn refused_code(refusal: Option<Refusal>) -> u8 {
    match refusal {
        Some(Refusal::NotAllowed) => NOT_ALLOWED,
        Some(Refusal::NotFound) => NOT_FOUND,
        Some(Refusal::AlreadyClosed) => ALREADY,
        Some(Refusal::StoreFailed) | Some(Refusal::Signature) => 1,
        None => 2,
    }
}

/// `approve` / `reject`.
pub async fn decide(
    s: &Settings,
    target: Target,
    verdict: Verdict,
    reason: Option<String>,
    follow: Follow,
    json: bool,
) -> Result<ExitCode> {
    let mut conn = Conn::connect(s).await?;
    let req = conn.req();
    let mut msg = ClientMsg::Decide {
        req: Some(req),
        target,
        verdict,
        reason,
        block_for_ms: follow.block_for_ms,
        allow_next: follow.allow_next,
        signed: None,
    };
    let pending = conn.pending.clone();
    crate::signing::sign_if(
        s.sign.as_ref(),
        &conn.me.identity,
        &mut msg,
        &|id| pending.iter().find(|c| *c.id == *id).cloned(),
        &|| pending.clone(),
    )?;
    let (results, rule, rule_refused) = match conn.ask(req, &msg).await? {
        ServerMsg::Decided {
            results,
            rule,
            rule_refused,
            ..
        } => (results, rule, rule_refused),
        ServerMsg::Error {
            message, refusal, ..
        } => {
            eprintln!("tollgate: {message}");
            return Ok(ExitCode::from(refused_code(refusal)));
        }
        other => anyhow::bail!("unexpected answer from the broker: {other:?}"),
    };
    let asked_rule = follow.block_for_ms.is_some() || follow.allow_next.is_some();
    if json && asked_rule {
        print_json(&serde_json::json!({
            "results": results,
            "rule": rule,
            "rule_refused": rule_refused,
        }))?;
    } else if json {
        print_json(&results)?;
    } else {
        if let Some(r) = &rule {
            println!(
                "temporary rule {}: {} calls with fingerprint {} for {}",
                r.id,
                match r.kind {
                    RuleKind::Block => "refuse new".to_string(),
                    RuleKind::Allow => format!("let through the next {}", r.remaining.unwrap_or(0)),
                },
                r.fingerprint,
                short_duration(r.until_ms.saturating_sub(r.created_ms))
            );
        }
        if let Some(why) = &rule_refused {
            eprintln!("tollgate: {why}");
        }
    }
    let mut code = 0u8;
    if results.is_empty() {
        eprintln!("tollgate: no pending call matched");
        code = NOT_FOUND;
    }
    for r in &results {
        if !json {
            if r.ok {
                println!("{}  {}", r.id, r.message);
            } else {
                eprintln!("{}  refused: {}", r.id, r.message);
            }
        }
        let c = match r.refusal {
            None => 0,
            Some(Refusal::NotFound) => NOT_FOUND,
            Some(Refusal::AlreadyClosed) => ALREADY,
            Some(Refusal::NotAllowed) => NOT_ALLOWED,
            Some(Refusal::StoreFailed) | Some(Refusal::Signature) => 1,
        };
        code = code.max(c);
    }
    if rule_refused.is_some() {
        code = code.max(1);
    }
    Ok(ExitCode::from(code))
}

/// One line for an event, for `watch`.
pub fn event_line(m: &ServerMsg) -> Option<String> {
    if let ServerMsg::Config {
        policy, refused, ..
    } = m
    {
        return Some(match refused {
            None => format!(
                "{}  config     reloaded: policy {policy}",
                rfc3339_seconds(now_ms())
            ),
            Some(why) => format!(
                "{}  config     refused, policy {policy} stays: {}",
                rfc3339_seconds(now_ms()),
                why.lines().next().unwrap_or_default()
            ),
        });
    }
    let (what, call) = match m {
        ServerMsg::CallPending { call } => ("pending", call),
        ServerMsg::CallApproval { call } => ("approval", call),
        ServerMsg::CallDecided { call } => (call.outcome.as_str(), call),
        ServerMsg::CallExpired { call } => ("expired", call),
        ServerMsg::CallCancelled { call } => ("cancelled", call),
        ServerMsg::CallAbandoned { call } => ("abandoned", call),
        _ => return None,
    };
    let by = call
        .decisions
        .last()
        .filter(|_| {
            matches!(call.outcome, Outcome::Approved | Outcome::Rejected) || what == "approval"
        })
        .map(|d| format!(" by {}", d.by))
        .unwrap_or_default();
    Some(format!(
        "{}  {:<9}  {}/{}  client {}{by}  {}",
        rfc3339_seconds(now_ms()),
        what,
        call.server,
        call.tool,
        call.client,
        call.id
    ))
}

/// Run `--exec`'s command for a new pending call: the message on stdin, the call's names in
/// the environment. Not waited for: a slow command never holds up the watch.
fn exec_for(cmd: &str, m: &ServerMsg) {
    let ServerMsg::CallPending { call } = m else {
        return;
    };
    let json = serde_json::to_string(m).unwrap_or_default();
    let child = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .env("TOLLGATE_CALL_ID", call.id.as_ref())
        .env("TOLLGATE_SERVER", call.server.as_ref())
        .env("TOLLGATE_TOOL", call.tool.as_ref())
        .env("TOLLGATE_CLIENT", call.client.as_ref())
        .stdin(std::process::Stdio::piped())
        .spawn();
    match child {
        Err(e) => eprintln!("tollgate watch: cannot run --exec command: {e}"),
        Ok(mut child) => {
            tokio::spawn(async move {
                use tokio::io::AsyncWriteExt;
                if let Some(mut stdin) = child.stdin.take() {
                    let _ = stdin.write_all(json.as_bytes()).await;
                }
                match child.wait().await {
                    Ok(status) if !status.success() => {
                        eprintln!("tollgate watch: --exec command {status}")
                    }
                    Err(e) => eprintln!("tollgate watch: --exec command: {e}"),
                    _ => {}
                }
            });
        }
    }
}

/// `watch`: stream events until interrupted; with `exec`, run it for every new pending call.
pub async fn watch(s: &Settings, json: bool, exec: Option<&str>) -> Result<ExitCode> {
    let mut conn = Conn::connect(s).await?;
    if !json {
        eprintln!(
            "watching as {} ({}); {} pending. Ctrl-C stops.",
            conn.me.identity,
            conn.me.role.as_str(),
            conn.pending.len()
        );
    }
    loop {
        let m = conn.next().await?;
        if let Some(cmd) = exec {
            exec_for(cmd, &m);
        }
        let mut out = std::io::stdout().lock();
        if json {
            if !matches!(
                m,
                ServerMsg::Snapshot { .. } | ServerMsg::SnapshotPart { .. }
            ) {
                writeln!(out, "{}", serde_json::to_string(&m)?)?;
            }
        } else if let Some(line) = event_line(&m) {
            writeln!(out, "{line}")?;
        }
        out.flush()?;
    }
}

/// `audit`.
pub async fn audit(s: &Settings, filter: AuditFilter, json: bool) -> Result<ExitCode> {
    let mut conn = Conn::connect(s).await?;
    let req = conn.req();
    let entries = match conn
        .request(
            req,
            &ClientMsg::AuditQuery {
                req: Some(req),
                filter,
            },
        )
        .await?
    {
        ServerMsg::AuditResult { entries, .. } => entries,
        other => anyhow::bail!("unexpected answer from the broker: {other:?}"),
    };
    if json {
        print_json(&entries)?;
        return Ok(ExitCode::SUCCESS);
    }
    print!("{}", tollgate_shared::audit::table(&entries));
    Ok(ExitCode::SUCCESS)
}
