//! `token`: add, list and revoke identities: in a data directory's token file (the broker
//! re-reads it when it changes), or in the PostgreSQL database the config's `[store]` names,
//! which every broker sharing it reads each second.

use std::io::Write;

use anyhow::Context;
use tollgate_shared::console::Role;
use tollgate_store::postgres::{Pool, identities, schema};
use tollgate_store::tokens::{self, TokenEntry};

use super::audit::{DataDir, Source};

/// Run `f` against the database's pool, after checking its schema.
fn with_pool<T>(
    settings: tollgate_store::postgres::Settings,
    f: impl AsyncFnOnce(&Pool) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    super::pg::runtime()?.block_on(async {
        let pool = Pool::new(settings);
        schema::check(&*pool.get().await?).await?;
        f(&pool).await
    })
}

/// `token add`.
pub fn add(
    dir: &DataDir,
    name: &str,
    role: Role,
    servers: Option<Vec<String>>,
) -> anyhow::Result<()> {
    let token = match dir.source()? {
        Source::Sled(dir) => tokens::add(&dir, name, role, servers.clone())
            .with_context(|| format!("cannot add identity {name:?}"))?,
        Source::Postgres(settings) => with_pool(*settings, async |pool| {
            identities::add(pool, name, role, servers.clone())
                .await
                .with_context(|| format!("cannot add identity {name:?}"))
        })?,
    };
    let scope = servers.map_or_else(String::new, |s| format!(" for servers {}", s.join(", ")));
    eprintln!(
        "added {name} ({}{scope}). This is the only time the token is shown; store it now:",
        role.as_str()
    );
    println!("{token}");
    Ok(())
}

fn entries(dir: &DataDir) -> anyhow::Result<Vec<TokenEntry>> {
    Ok(match dir.source()? {
        Source::Sled(dir) => tokens::list(&dir)?,
        Source::Postgres(settings) => {
            with_pool(*settings, async |pool| Ok(identities::list(pool).await?))?
        }
    })
}

/// `token list`.
pub fn list(dir: &DataDir, json: bool) -> anyhow::Result<()> {
    let list = entries(dir)?;
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
    let gone = match dir.source()? {
        Source::Sled(dir) => tokens::revoke(&dir, name)?,
        Source::Postgres(settings) => with_pool(*settings, async |pool| {
            Ok(identities::revoke(pool, name).await?)
        })?,
    };
    if gone {
        println!(
            "revoked {name}; its token stops working at once, and its open consoles are closed"
        );
        Ok(())
    } else {
        anyhow::bail!("no identity named {name:?} (see `tollgate-broker token list`)")
    }
}
