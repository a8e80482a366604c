//! `token`: add, list and revoke identities: in a data directory's token file (the broker
//! re-reads it when it changes), or in the PostgreSQL database the config's `[store]` names,
//! which every broker sharing it reads each second.

use std::io::Write;

use anyhow::Context;
use tollgate_shared::console::Role;
use tollgate_shared::signing::{Signing, SigningKey};
use tollgate_shared::sshsig::PublicKey;
use tollgate_store::postgres::identities;
use tollgate_store::tokens::{self, TokenEntry};

use super::audit::{DataDir, Source, entries, with_pool};

/// SSH public keys given on the command line.
#[derive(clap::Args, Debug, Default)]
pub struct KeyArgs {
    /// An SSH public key line (`ssh-ed25519 AAAA… alice@laptop`; also ecdsa-sha2-nistp256 and
    /// the sk- FIDO keys) whose signatures count as this identity's decisions. Repeatable.
    #[arg(long = "ssh-key", value_name = "LINE")]
    lines: Vec<String>,
    /// A public key file (`~/.ssh/id_ed25519.pub`): each key line in it. Repeatable.
    #[arg(long = "ssh-key-file", value_name = "FILE")]
    files: Vec<std::path::PathBuf>,
}

impl KeyArgs {
    /// The keys, checked, stamped with now.
    fn keys(&self) -> anyhow::Result<Vec<SigningKey>> {
        let mut lines: Vec<(String, String)> = self
            .lines
            .iter()
            .map(|l| ("--ssh-key".to_string(), l.clone()))
            .collect();
        for f in &self.files {
            let text = std::fs::read_to_string(f)
                .with_context(|| format!("cannot read {}", f.display()))?;
            lines.extend(
                text.lines()
                    .filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
                    .map(|l| (f.display().to_string(), l.to_string())),
            );
        }
        let now = tollgate_shared::clock::now_ms();
        lines
            .into_iter()
            .map(|(from, line)| {
                let key =
                    PublicKey::parse(&line).with_context(|| format!("{from}: {line:.40}…"))?;
                Ok(SigningKey {
                    key: line.trim().to_string(),
                    fingerprint: key.fingerprint(),
                    added_ms: now,
                    revoked_ms: None,
                })
            })
            .collect()
    }
}

/// Change identity `name` with `change`; whether there was one.
fn update(dir: &DataDir, name: &str, change: impl FnOnce(&mut TokenEntry)) -> anyhow::Result<bool> {
    Ok(match dir.source()? {
        Source::Sled(dir) => tokens::update(&dir, name, change)?,
        Source::Postgres(settings) => with_pool(*settings, async |pool| {
            Ok(identities::update(pool, name, change).await?)
        })?,
    })
}

/// `token key add`.
pub fn add_keys(
    dir: &DataDir,
    name: &str,
    keys: &KeyArgs,
    require_signature: bool,
) -> anyhow::Result<()> {
    let keys = keys.keys()?;
    if keys.is_empty() && !require_signature {
        anyhow::bail!("give --ssh-key LINE or --ssh-key-file FILE");
    }
    let mut added = Vec::new();
    let found = update(dir, name, |entry| {
        for k in keys {
            if !entry
                .signing
                .keys
                .iter()
                .any(|e| e.fingerprint == k.fingerprint && e.revoked_ms.is_none())
            {
                added.push(k.fingerprint.clone());
                entry.signing.keys.push(k);
            }
        }
        entry.signing.require_signature |= require_signature;
    })?;
    if !found {
        anyhow::bail!("no identity named {name:?} (see `tollgate-broker token list`)");
    }
    for fp in added {
        println!("added key {fp} to {name}");
    }
    if require_signature {
        println!("{name}'s decisions must now be signed");
    }
    Ok(())
}

/// `token key revoke`.
pub fn revoke_key(dir: &DataDir, name: &str, fingerprint: &str) -> anyhow::Result<()> {
    let now = tollgate_shared::clock::now_ms();
    let mut revoked = false;
    let found = update(dir, name, |entry| {
        for k in &mut entry.signing.keys {
            if k.fingerprint == fingerprint && k.revoked_ms.is_none() {
                k.revoked_ms = Some(now);
                revoked = true;
            }
        }
    })?;
    if !found {
        anyhow::bail!("no identity named {name:?} (see `tollgate-broker token list`)");
    }
    if !revoked {
        anyhow::bail!(
            "{name} has no key {fingerprint} in force (see `tollgate-broker token list`)"
        );
    }
    println!(
        "revoked key {fingerprint} of {name}: its signatures from now on are refused; older ones still verify"
    );
    Ok(())
}

/// `token add`.
pub fn add(
    dir: &DataDir,
    name: &str,
    role: Role,
    servers: Option<Vec<String>>,
    keys: &KeyArgs,
    require_signature: bool,
) -> anyhow::Result<()> {
    let signing = Signing {
        keys: keys.keys()?,
        require_signature,
    };
    let token = match dir.source()? {
        Source::Sled(dir) => tokens::add(&dir, name, role, servers.clone(), signing)
            .with_context(|| format!("cannot add identity {name:?}"))?,
        Source::Postgres(settings) => with_pool(*settings, async |pool| {
            identities::add(pool, name, role, servers.clone(), signing.clone())
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

/// `token list`.
pub fn list(dir: &DataDir, json: bool) -> anyhow::Result<()> {
    let list = entries(dir)?;
    let mut out = std::io::stdout().lock();
    if json {
        for t in &list {
            let v = serde_json::json!({"name": t.name, "role": t.role, "servers": t.servers, "created_ms": t.created_ms, "keys": t.signing.keys, "require_signature": t.signing.require_signature});
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
            "{:<20} {:<9} {:<20} {}{}",
            t.name,
            t.role.as_str(),
            t.servers.as_ref().map_or("(all)".into(), |s| s.join(",")),
            tollgate_shared::clock::rfc3339_seconds(t.created_ms),
            if t.signing.require_signature {
                "  (decisions must be signed)"
            } else {
                ""
            }
        )?;
        for k in &t.signing.keys {
            let comment = PublicKey::parse(&k.key)
                .map(|p| p.comment().to_string())
                .unwrap_or_default();
            writeln!(
                out,
                "    key {} {} added {}{}",
                k.fingerprint,
                comment,
                tollgate_shared::clock::rfc3339_seconds(k.added_ms),
                k.revoked_ms.map_or(String::new(), |r| format!(
                    ", revoked {}",
                    tollgate_shared::clock::rfc3339_seconds(r)
                ))
            )?;
        }
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
