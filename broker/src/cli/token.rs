//! `token`: add, list and revoke the identities of a data directory's token file (works while
//! the broker runs: it re-reads the file when it changes).

use std::io::Write;

use anyhow::Context;
use tollgate_shared::console::Role;
use tollgate_store::tokens;

use super::audit::DataDir;

/// `token add`.
pub fn add(
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
pub fn list(dir: &DataDir, json: bool) -> anyhow::Result<()> {
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
pub fn revoke(dir: &DataDir, name: &str) -> anyhow::Result<()> {
    if tokens::revoke(&dir.resolve()?, name)? {
        println!(
            "revoked {name}; its token stops working at once, and its open consoles are closed"
        );
        Ok(())
    } else {
        anyhow::bail!("no identity named {name:?} (see `tollgate-broker token list`)")
    }
}
