//! Identities managed with `tollgate-broker token`: people and agents with a role.
//!
//! They live in `<data_dir>/tokens.json`, outside sled, so an operator can add or revoke a
//! token while the broker runs (sled allows one process). Only SHA-256 digests are stored; the
//! token itself is printed once by `token add`. The file is replaced atomically (write, fsync,
//! rename) and the broker re-reads it when its modification time or size changes, so a revoked
//! token stops working at its next use.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};
use tollgate_shared::signing::Signing;

use serde::{Deserialize, Serialize};
use tollgate_shared::console::Role;
use tollgate_shared::sync::Mutex;

use tokio::sync::watch;
use tollgate_policy::identity::{self, Identity, TokenDigest};

/// One stored identity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenEntry {
    /// Unique name (shown as the approver or client in the audit trail).
    pub name: String,
    /// SHA-256 of the token, hex.
    pub sha256: String,
    /// What it may do on the console API.
    pub role: Role,
    /// For approvers: the only servers they may decide for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub servers: Option<Vec<String>>,
    /// When it was created (ms since the epoch).
    pub created_ms: u64,
    /// Its SSH signing keys, and whether its decisions must be signed.
    #[serde(flatten)]
    pub signing: Signing,
}

#[derive(Default, Serialize, Deserialize)]
struct File {
    #[serde(default)]
    tokens: Vec<TokenEntry>,
}

/// Why the token file could not be read or changed.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The file is there but is not a token file.
    #[error("{} is not a valid token file: {cause}", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// Why it does not parse.
        cause: serde_json::Error,
    },
    /// Reading or replacing the file failed.
    #[error("cannot {what} {}: {cause}", path.display())]
    Io {
        /// "read" or "write".
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        cause: std::io::Error,
    },
    /// A name that would not read well in the audit trail.
    #[error("identity names must be non-empty, without spaces or control characters")]
    BadName,
    /// Names are unique.
    #[error(
        "an identity named {0:?} already exists; revoke it first (`tollgate-broker token revoke {0}`) to issue a new token"
    )]
    Exists(String),
}

/// The token file of a data directory.
pub fn path(data_dir: &Path) -> PathBuf {
    data_dir.join("tokens.json")
}

fn read(path: &Path) -> Result<Vec<TokenEntry>, TokenError> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(serde_json::from_slice::<File>(&bytes)
            .map_err(|cause| TokenError::Corrupt {
                path: path.to_path_buf(),
                cause,
            })?
            .tokens),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(cause) => Err(TokenError::Io {
            what: "read",
            path: path.to_path_buf(),
            cause,
        }),
    }
}

fn write(path: &Path, tokens: Vec<TokenEntry>) -> Result<(), TokenError> {
    // A list of plain strings and numbers always serialises.
    let text = serde_json::to_vec_pretty(&File { tokens }).unwrap_or_default();
    tollgate_shared::fs::write_atomic(path, &text).map_err(|cause| TokenError::Io {
        what: "write",
        path: path.to_path_buf(),
        cause,
    })
}

/// All stored identities.
pub fn list(data_dir: &Path) -> Result<Vec<TokenEntry>, TokenError> {
    read(&path(data_dir))
}

/// A new identity's entry and its token (shown once, never stored), whichever store keeps it.
pub fn issue(
    name: &str,
    role: Role,
    servers: Option<Vec<String>>,
    signing: Signing,
) -> Result<(TokenEntry, String), TokenError> {
    if name.is_empty() || name.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(TokenError::BadName);
    }
    let token = format!(
        "tg_{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    );
    let entry = TokenEntry {
        name: name.to_string(),
        sha256: tollgate_shared::hex(&identity::digest(&token)),
        role,
        servers,
        created_ms: tollgate_shared::clock::now_ms(),
        signing,
    };
    Ok((entry, token))
}

/// Create an identity and return its token (shown once, never stored).
pub fn add(
    data_dir: &Path,
    name: &str,
    role: Role,
    servers: Option<Vec<String>>,
    signing: Signing,
) -> Result<String, TokenError> {
    let (entry, token) = issue(name, role, servers, signing)?;
    let file = path(data_dir);
    let mut tokens = read(&file)?;
    if tokens.iter().any(|t| t.name == name) {
        return Err(TokenError::Exists(name.to_string()));
    }
    tokens.push(entry);
    write(&file, tokens)?;
    Ok(token)
}

/// Change an identity in place (its keys); false if there was none by that name.
pub fn update(
    data_dir: &Path,
    name: &str,
    change: impl FnOnce(&mut TokenEntry),
) -> Result<bool, TokenError> {
    let file = path(data_dir);
    let mut tokens = read(&file)?;
    let Some(entry) = tokens.iter_mut().find(|t| t.name == name) else {
        return Ok(false);
    };
    change(entry);
    write(&file, tokens)?;
    Ok(true)
}

/// Remove an identity; false if there was none by that name.
pub fn revoke(data_dir: &Path, name: &str) -> Result<bool, TokenError> {
    let file = path(data_dir);
    let mut tokens = read(&file)?;
    let before = tokens.len();
    tokens.retain(|t| t.name != name);
    if tokens.len() == before {
        return Ok(false);
    }
    write(&file, tokens)?;
    Ok(true)
}

type Stamp = Option<(SystemTime, u64)>;
type Digests = Vec<(TokenDigest, Identity)>;

fn digests(entries: Vec<TokenEntry>) -> Digests {
    entries
        .into_iter()
        .filter_map(|e| {
            let d = tollgate_shared::unhex::<32>(&e.sha256)?;
            Some((
                d,
                Identity {
                    name: e.name,
                    role: e.role,
                    servers: e.servers,
                    signing: e.signing,
                },
            ))
        })
        .collect()
}

/// The broker's live view of the token file.
///
/// Requests look tokens up here (the file is re-read when its modification time or size
/// changed); [`Registry::watch`] also checks the file on a timer and announces every change on
/// [`Registry::changes`], so connections opened before a revocation or a change of role hear of
/// it without waiting for their next request.
pub struct Registry {
    /// The token file; `None` when the identities come from a shared store, which sets them
    /// ([`Registry::set`]).
    path: Option<PathBuf>,
    cache: Mutex<(Stamp, Digests)>,
    changed: watch::Sender<u64>,
}

fn stamp(path: &Path) -> Stamp {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

impl Registry {
    /// Watch the token file of `data_dir`.
    pub fn new(data_dir: &Path) -> Registry {
        Registry {
            path: Some(path(data_dir)),
            cache: Mutex::new((None, Vec::new())),
            changed: watch::channel(0).0,
        }
    }

    /// A registry whose identities a shared store keeps: empty until [`Registry::set`].
    pub fn shared() -> Registry {
        Registry {
            path: None,
            cache: Mutex::new((None, Vec::new())),
            changed: watch::channel(0).0,
        }
    }

    /// Replace the identities (a shared store read them); announce it when they changed.
    pub fn set(&self, entries: Vec<TokenEntry>) {
        let parsed = digests(entries);
        let mut cache = self.cache.lock();
        if parsed != cache.1 {
            cache.1 = parsed;
            self.changed.send_modify(|n| *n += 1);
        }
    }

    /// Re-read the file if it changed since it was last read; announce it when its identities
    /// did.
    fn refresh(&self, cache: &mut (Stamp, Digests)) {
        let Some(path) = &self.path else { return };
        let now = stamp(path);
        if now == cache.0 {
            return;
        }
        match read(path) {
            Ok(entries) => {
                let parsed = digests(entries);
                let differs = parsed != cache.1;
                *cache = (now, parsed);
                if differs {
                    self.changed.send_modify(|n| *n += 1);
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot reload the token file; keeping the previous tokens")
            }
        }
    }

    /// The identity a token belongs to (every stored digest is compared, in constant time).
    pub fn lookup(&self, token: &str) -> Option<Identity> {
        self.lookup_digest(&identity::digest(token))
    }

    /// The identity of a token's digest, as the file says now: what a connection that
    /// authenticated earlier checks before it acts.
    pub fn lookup_digest(&self, digest: &TokenDigest) -> Option<Identity> {
        let mut cache = self.cache.lock();
        self.refresh(&mut cache);
        identity::find_digest(cache.1.iter().map(|(d, who)| (d, who)), digest).cloned()
    }

    /// A receiver that sees a new value whenever the file's identities change.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Check the file every `period` for changes (runs until the registry is dropped).
    pub async fn watch(self: std::sync::Arc<Self>, period: Duration) {
        let registry = std::sync::Arc::downgrade(&self);
        drop(self);
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(r) = registry.upgrade() else { return };
            let mut cache = r.cache.lock();
            r.refresh(&mut cache);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn added_tokens_authenticate_until_revoked() {
        let dir = tempfile::tempdir().expect("tempdir");
        let reg = Registry::new(dir.path());
        let t = add(
            dir.path(),
            "alice",
            Role::Approver,
            Some(vec!["db".into()]),
            Signing::default(),
        )
        .expect("add");
        assert!(t.starts_with("tg_") && t.len() > 60);
        let who = reg.lookup(&t).expect("known");
        assert_eq!((who.name.as_str(), who.role), ("alice", Role::Approver));
        assert!(reg.lookup("tg_wrong").is_none());
        let text = std::fs::read_to_string(path(dir.path())).expect("file");
        assert!(!text.contains(&t), "the token itself must not be stored");
        assert!(add(dir.path(), "alice", Role::Admin, None, Signing::default()).is_err());
        assert!(revoke(dir.path(), "alice").expect("revoke"));
        // The file changed size, so the registry reloads it.
        assert!(reg.lookup(&t).is_none());
        assert!(!revoke(dir.path(), "alice").expect("revoke again"));
    }

    #[test]
    fn a_shared_registry_holds_what_its_store_sets_and_announces_only_changes() {
        let reg = Registry::shared();
        let mut changes = reg.changes();
        let (entry, token) = issue("dana", Role::Viewer, None, Signing::default()).expect("issue");
        assert!(reg.lookup(&token).is_none(), "empty until set");
        reg.set(vec![entry.clone()]);
        assert_eq!(reg.lookup(&token).map(|w| w.name), Some("dana".into()));
        assert!(changes.has_changed().expect("open"));
        changes.mark_unchanged();
        reg.set(vec![entry]);
        assert!(
            !changes.has_changed().expect("open"),
            "the same identities are no news"
        );
        reg.set(Vec::new());
        assert!(reg.lookup(&token).is_none(), "revoked");
        assert!(changes.has_changed().expect("open"));
        assert!(matches!(
            issue("two words", Role::Viewer, None, Signing::default()),
            Err(TokenError::BadName)
        ));
    }

    #[test]
    fn a_change_of_identities_is_announced_and_a_rewrite_of_the_same_ones_is_not() {
        let dir = tempfile::tempdir().expect("tempdir");
        let reg = Registry::new(dir.path());
        let mut changes = reg.changes();
        let t = add(dir.path(), "bob", Role::Approver, None, Signing::default()).expect("add");
        let d = identity::digest(&t);
        assert!(reg.lookup_digest(&d).is_some());
        assert!(changes.has_changed().expect("open"), "bob appeared");
        changes.mark_unchanged();
        // The same identities written again (a new modification time) are no news.
        let same = list(dir.path()).expect("list");
        write(&path(dir.path()), same).expect("rewrite");
        assert!(reg.lookup_digest(&d).is_some());
        assert!(!changes.has_changed().expect("open"));
        assert!(revoke(dir.path(), "bob").expect("revoke"));
        assert!(reg.lookup_digest(&d).is_none());
        assert!(changes.has_changed().expect("open"), "bob is gone");
    }
}
