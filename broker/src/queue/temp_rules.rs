//! Temporary rules installed by decisions: "reject this pattern and refuse it for 15 minutes",
//! "approve this call and the next 5 identical ones within 10 minutes".
//!
//! Block rules match a call's exact or shape fingerprint and refuse it before any other guard
//! runs. Allow rules match an exact fingerprint only, and only stand in for a person when the
//! call would otherwise be held under terms their author could satisfy alone (quorum 1, no
//! named approvers other than them, not their own call, no withheld secrets); each use
//! counts down. Rules expire, can be revoked, and are kept in `<data_dir>/temp_rules.json`
//! (replaced atomically and synced on every change), so a restart keeps them, or, when brokers
//! share a PostgreSQL store, in the store ([`RuleStore`]): every broker keeps a copy it reads
//! again whenever another broker changes them, and an allowance is taken in the store.

use std::path::PathBuf;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tollgate_shared::Fingerprint;
use tollgate_shared::console::{RuleKind, TempRule};
use tollgate_shared::sync::RwLock;
use tollgate_store::{RuleStore, StoreError};

/// Longest a temporary rule may last.
pub const MAX_RULE_MS: u64 = 24 * 3_600_000;
/// Most calls an allow rule may let through.
pub const MAX_ALLOW_COUNT: u32 = 1_000;

/// Why temporary rules could not be read, saved or changed.
#[derive(Debug, thiserror::Error)]
pub enum TempRuleError {
    /// The rules file is there but cannot be read.
    #[error("cannot read {}: {cause}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        cause: std::io::Error,
    },
    /// The rules file does not parse.
    #[error(
        "{} is not a temporary rules file; move it away to start without temporary rules: {cause}",
        path.display()
    )]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// Why it does not parse.
        cause: serde_json::Error,
    },
    /// A change could not be saved, so it was not made.
    #[error("cannot save temporary rules to {}: {cause}", path.display())]
    Save {
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        cause: std::io::Error,
    },
    /// The shared store failed, so nothing changed.
    #[error("cannot change the temporary rules in the shared store: {0}")]
    Store(#[from] StoreError),
    /// No active rule has that id.
    #[error("no active temporary rule {0:?} (it may have expired)")]
    NotFound(String),
    /// An approver revoking a rule outside their servers that someone else made.
    #[error(
        "{who} may not revoke rule {id} (made by {by} for server {server}, outside their servers)"
    )]
    OutOfScope {
        /// Who tried.
        who: String,
        /// The rule.
        id: String,
        /// Who made it.
        by: String,
        /// Its server.
        server: String,
    },
    /// Viewers do not change rules.
    #[error("{who} is a viewer; revoking rules needs the approver or admin role")]
    Viewer {
        /// Who tried.
        who: String,
    },
}

#[derive(Serialize, Deserialize, Default)]
struct File {
    rules: Vec<TempRule>,
}

/// Where the rules are kept.
enum Keep {
    /// Nowhere (tests, `check-disk`).
    Memory,
    /// In a file of this broker's data directory.
    File(PathBuf),
    /// In the store every broker shares: `rules` is this broker's copy, read again whenever
    /// another broker changes them.
    Shared(Arc<dyn RuleStore>),
}

/// The temporary rules.
pub struct TempRules {
    keep: Keep,
    rules: RwLock<Vec<TempRule>>,
}

impl TempRules {
    /// Rules kept only in memory (tests, `check-disk`).
    pub fn in_memory() -> TempRules {
        TempRules {
            keep: Keep::Memory,
            rules: RwLock::new(Vec::new()),
        }
    }

    /// Load the rules saved in `path` (none if it does not exist), dropping expired ones.
    pub fn load(path: PathBuf, now_ms: u64) -> Result<TempRules, TempRuleError> {
        let mut rules = match std::fs::read(&path) {
            Ok(bytes) => match serde_json::from_slice::<File>(&bytes) {
                Ok(f) => f.rules,
                Err(cause) => return Err(TempRuleError::Corrupt { path, cause }),
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(cause) => return Err(TempRuleError::Read { path, cause }),
        };
        rules.retain(|r| r.until_ms > now_ms);
        Ok(TempRules {
            keep: Keep::File(path),
            rules: RwLock::new(rules),
        })
    }

    /// The rules kept in a store several brokers share, as they are now.
    pub async fn shared(
        store: Arc<dyn RuleStore>,
        now_ms: u64,
    ) -> Result<TempRules, TempRuleError> {
        let rules = store.list(now_ms).await?;
        Ok(TempRules {
            keep: Keep::Shared(store),
            rules: RwLock::new(rules),
        })
    }

    /// Whether other brokers change these rules too (so they must be read again).
    pub fn is_shared(&self) -> bool {
        matches!(self.keep, Keep::Shared(_))
    }

    /// Read shared rules again; whether they changed. Local rules have nothing to read.
    pub async fn refresh(&self, now_ms: u64) -> Result<bool, TempRuleError> {
        let Keep::Shared(store) = &self.keep else {
            return Ok(false);
        };
        let now = store.list(now_ms).await?;
        let mut rules = self.rules.write();
        rules.retain(|r| r.until_ms > now_ms);
        let changed = *rules != now;
        *rules = now;
        Ok(changed)
    }

    fn save(&self, rules: &[TempRule]) -> Result<(), TempRuleError> {
        let Keep::File(path) = &self.keep else {
            return Ok(());
        };
        // Plain strings and numbers always serialise.
        let text = serde_json::to_vec_pretty(&File {
            rules: rules.to_vec(),
        })
        .unwrap_or_default();
        tollgate_shared::fs::write_atomic(path, &text).map_err(|cause| TempRuleError::Save {
            path: path.clone(),
            cause,
        })
    }

    /// Save `next` without the rules expired by `now_ms`, then make it the rules. Nothing
    /// changes when saving fails.
    fn replace(
        &self,
        rules: &mut Vec<TempRule>,
        mut next: Vec<TempRule>,
        now_ms: u64,
    ) -> Result<(), TempRuleError> {
        next.retain(|r| r.until_ms > now_ms);
        self.save(&next)?;
        *rules = next;
        Ok(())
    }

    /// Active rules, oldest first.
    pub fn list(&self, now_ms: u64) -> Vec<TempRule> {
        let rules = self.rules.read();
        rules
            .iter()
            .filter(|r| r.until_ms > now_ms)
            .cloned()
            .collect()
    }

    /// Install a rule (saved before it takes effect).
    pub async fn add(&self, rule: TempRule, now_ms: u64) -> Result<(), TempRuleError> {
        if let Keep::Shared(store) = &self.keep {
            store.add(&rule).await?;
            let mut rules = self.rules.write();
            rules.retain(|r| r.until_ms > now_ms && r.id != rule.id);
            rules.push(rule);
            return Ok(());
        }
        let mut rules = self.rules.write();
        let mut next = rules.clone();
        next.push(rule);
        self.replace(&mut rules, next, now_ms)
    }

    /// The rule in force with this id.
    fn find(&self, id: &str, now_ms: u64) -> Option<TempRule> {
        self.rules
            .read()
            .iter()
            .find(|r| r.id == id && r.until_ms > now_ms)
            .cloned()
    }

    /// Remove a rule; `may` says whether the caller may remove this one (or why not).
    pub async fn revoke(
        &self,
        id: &str,
        now_ms: u64,
        may: impl FnOnce(&TempRule) -> Result<(), TempRuleError>,
    ) -> Result<TempRule, TempRuleError> {
        let Keep::Shared(store) = &self.keep else {
            let mut rules = self.rules.write();
            let Some(pos) = rules.iter().position(|r| r.id == id && r.until_ms > now_ms) else {
                return Err(TempRuleError::NotFound(id.to_string()));
            };
            may(&rules[pos])?;
            let mut next = rules.clone();
            let gone = next.remove(pos);
            self.replace(&mut rules, next, now_ms)?;
            return Ok(gone);
        };
        // A rule another broker made a moment ago may not have been read here yet.
        let rule = match self.find(id, now_ms) {
            Some(rule) => rule,
            None => {
                self.refresh(now_ms).await?;
                self.find(id, now_ms)
                    .ok_or_else(|| TempRuleError::NotFound(id.to_string()))?
            }
        };
        // Who made a rule and for which server never changes, so the copy here answers `may`.
        may(&rule)?;
        let gone = store.remove(id, now_ms).await?;
        self.rules.write().retain(|r| r.id != id);
        gone.ok_or_else(|| TempRuleError::NotFound(id.to_string()))
    }

    /// The block rule refusing a call with these fingerprints, if any (counted as a hit).
    pub fn blocking(
        &self,
        fingerprint: &Fingerprint,
        shape: &Fingerprint,
        now_ms: u64,
    ) -> Option<TempRule> {
        let blocks = |r: &TempRule| {
            r.kind == RuleKind::Block
                && r.until_ms > now_ms
                && (fingerprint.is(&r.fingerprint) || shape.is(&r.fingerprint))
        };
        // Every call looks here: take the write lock only when a rule matches.
        if !self.rules.read().iter().any(blocks) {
            return None;
        }
        let mut rules = self.rules.write();
        let rule = rules.iter_mut().find(|r| blocks(r))?;
        rule.hits += 1;
        if let Keep::Shared(store) = &self.keep
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            // The count is for people reading the rules: it may lag, the refusal does not wait.
            let (store, id) = (store.clone(), rule.id.clone());
            runtime.spawn(async move {
                if let Err(e) = store.hit(&id).await {
                    tracing::debug!(rule = %id, error = %e, "cannot count a block rule's hit");
                }
            });
        }
        Some(rule.clone())
    }

    /// Use one allowance of an allow rule for this exact fingerprint, if `usable` accepts its
    /// author. The count is saved before the call is let through (in a shared store, taken
    /// there, so brokers together let through no more than the rule's count); the rule goes
    /// when used up.
    pub async fn take_allowance(
        &self,
        fingerprint: &Fingerprint,
        now_ms: u64,
        usable: impl Fn(&TempRule) -> bool,
    ) -> Option<TempRule> {
        let allows = |r: &TempRule| {
            r.kind == RuleKind::Allow
                && r.until_ms > now_ms
                && fingerprint.is(&r.fingerprint)
                && r.remaining.unwrap_or(0) > 0
                && usable(r)
        };
        {
            let rules = self.rules.read();
            if !rules.iter().any(|r| r.kind == RuleKind::Allow) {
                return None;
            }
        }
        let Keep::Shared(store) = &self.keep else {
            let mut rules = self.rules.write();
            let pos = rules.iter().position(allows)?;
            let mut next = rules.clone();
            let rule = &mut next[pos];
            rule.remaining = Some(rule.remaining.unwrap_or(1) - 1);
            rule.hits += 1;
            let used = rule.clone();
            if used.remaining == Some(0) {
                next.remove(pos);
            }
            if let Err(e) = self.replace(&mut rules, next, now_ms) {
                tracing::error!(error = %e, "cannot save an allow rule's count: the call is held instead");
                return None;
            }
            return Some(used);
        };
        // Each candidate that turns out used up elsewhere leaves this copy, so this ends.
        loop {
            let id = self.rules.read().iter().find(|r| allows(r))?.id.clone();
            match store.take(&id, now_ms).await {
                Ok(Some(used)) => {
                    let mut rules = self.rules.write();
                    rules.retain(|r| r.id != id);
                    if used.remaining != Some(0) {
                        rules.push(used.clone());
                        rules.sort_by(|a, b| (a.created_ms, &a.id).cmp(&(b.created_ms, &b.id)));
                    }
                    return Some(used);
                }
                Ok(None) => self.rules.write().retain(|r| r.id != id),
                Err(e) => {
                    tracing::error!(rule = %id, error = %e, "cannot use an allow rule's count in the store: the call is held instead");
                    return None;
                }
            }
        }
    }
}

/// A new rule id.
pub fn new_id() -> String {
    format!("t-{}", &uuid::Uuid::new_v4().simple().to_string()[..8])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(kind: RuleKind, fingerprint: &str, until_ms: u64, remaining: Option<u32>) -> TempRule {
        TempRule {
            id: new_id(),
            kind,
            fingerprint: fingerprint.into(),
            server: "db".into(),
            tool: "query".into(),
            by: "alice".into(),
            created_ms: 0,
            until_ms,
            reason: Some("loop".into()),
            remaining,
            hits: 0,
        }
    }

    #[tokio::test]
    async fn block_rules_match_either_fingerprint_until_they_expire() {
        let rules = TempRules::in_memory();
        rules
            .add(rule(RuleKind::Block, "shape1", 1_000, None), 0)
            .await
            .expect("add");
        assert!(
            rules
                .blocking(&"exact1".into(), &"shape1".into(), 10)
                .is_some()
        );
        assert!(
            rules
                .blocking(&"shape1".into(), &"other".into(), 10)
                .is_some()
        );
        assert!(
            rules
                .blocking(&"exact1".into(), &"shape2".into(), 10)
                .is_none()
        );
        assert_eq!(rules.list(10)[0].hits, 2);
        assert!(
            rules
                .blocking(&"exact1".into(), &"shape1".into(), 1_000)
                .is_none(),
            "expired"
        );
        assert!(rules.list(1_000).is_empty());
    }

    #[tokio::test]
    async fn allow_rules_count_down_and_respect_their_guard() {
        let rules = TempRules::in_memory();
        rules
            .add(rule(RuleKind::Allow, "exact1", 1_000, Some(2)), 0)
            .await
            .expect("add");
        assert!(
            rules
                .take_allowance(&"exact1".into(), 1, |_| false)
                .await
                .is_none()
        );
        assert_eq!(
            rules
                .take_allowance(&"exact1".into(), 1, |_| true)
                .await
                .and_then(|r| r.remaining),
            Some(1)
        );
        assert!(
            rules
                .take_allowance(&"exact1".into(), 2, |_| true)
                .await
                .is_some()
        );
        assert!(
            rules
                .take_allowance(&"exact1".into(), 3, |_| true)
                .await
                .is_none(),
            "used up"
        );
        assert!(rules.list(3).is_empty(), "a used-up rule is gone");
    }

    #[tokio::test]
    async fn rules_survive_a_reload_and_revocation_is_checked() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("temp_rules.json");
        let rules = TempRules::load(path.clone(), 0).expect("load");
        let r = rule(RuleKind::Block, "f", 10_000, None);
        let id = r.id.clone();
        rules.add(r, 0).await.expect("add");
        rules
            .add(rule(RuleKind::Block, "old", 5, None), 0)
            .await
            .expect("add");
        let again = TempRules::load(path.clone(), 100).expect("reload");
        assert_eq!(again.list(100).len(), 1, "the expired rule is dropped");
        let refused = again
            .revoke(&id, 100, |_| {
                Err(TempRuleError::Viewer { who: "vic".into() })
            })
            .await;
        assert!(
            matches!(refused, Err(TempRuleError::Viewer { .. })),
            "{refused:?}"
        );
        assert!(again.revoke(&id, 100, |_| Ok(())).await.is_ok());
        assert!(again.revoke(&id, 100, |_| Ok(())).await.is_err());
        assert!(
            TempRules::load(path, 100)
                .expect("reload")
                .list(100)
                .is_empty()
        );
    }

    /// A store two brokers share, in memory: what PostgreSQL's table does, minus SQL.
    #[derive(Default)]
    struct SharedStore(tollgate_shared::sync::Mutex<Vec<TempRule>>);

    impl RuleStore for SharedStore {
        fn list(
            &self,
            now_ms: u64,
        ) -> tollgate_store::BoxFuture<'_, Result<Vec<TempRule>, StoreError>> {
            let rules = self
                .0
                .lock()
                .iter()
                .filter(|r| r.until_ms > now_ms)
                .cloned()
                .collect();
            Box::pin(async move { Ok(rules) })
        }
        fn add<'a>(
            &'a self,
            rule: &'a TempRule,
        ) -> tollgate_store::BoxFuture<'a, Result<(), StoreError>> {
            self.0.lock().push(rule.clone());
            Box::pin(async { Ok(()) })
        }
        fn remove<'a>(
            &'a self,
            id: &'a str,
            _: u64,
        ) -> tollgate_store::BoxFuture<'a, Result<Option<TempRule>, StoreError>> {
            let mut rules = self.0.lock();
            let gone = rules
                .iter()
                .position(|r| r.id == id)
                .map(|i| rules.remove(i));
            Box::pin(async move { Ok(gone) })
        }
        fn take<'a>(
            &'a self,
            id: &'a str,
            _: u64,
        ) -> tollgate_store::BoxFuture<'a, Result<Option<TempRule>, StoreError>> {
            let mut rules = self.0.lock();
            let used = match rules
                .iter_mut()
                .find(|r| r.id == id && r.remaining > Some(0))
            {
                Some(r) => {
                    r.remaining = r.remaining.map(|n| n - 1);
                    r.hits += 1;
                    Some(r.clone())
                }
                None => None,
            };
            rules.retain(|r| r.remaining != Some(0));
            Box::pin(async move { Ok(used) })
        }
        fn hit<'a>(&'a self, id: &'a str) -> tollgate_store::BoxFuture<'a, Result<(), StoreError>> {
            if let Some(r) = self.0.lock().iter_mut().find(|r| r.id == id) {
                r.hits += 1;
            }
            Box::pin(async { Ok(()) })
        }
    }

    #[tokio::test]
    async fn brokers_sharing_a_store_use_an_allowance_once_between_them() {
        let store = Arc::new(SharedStore::default());
        let a = TempRules::shared(store.clone(), 0).await.expect("a");
        let b = TempRules::shared(store.clone(), 0).await.expect("b");
        a.add(rule(RuleKind::Allow, "exact1", 1_000, Some(2)), 0)
            .await
            .expect("add");
        assert!(b.list(1).is_empty(), "b has not read the rules again yet");
        assert!(b.refresh(1).await.expect("refresh"), "b sees a change");
        assert_eq!(b.list(1)[0].remaining, Some(2));
        // Both copies say two are left; the store lets two calls through in all.
        let used = [
            a.take_allowance(&"exact1".into(), 2, |_| true).await,
            b.take_allowance(&"exact1".into(), 2, |_| true).await,
            a.take_allowance(&"exact1".into(), 2, |_| true).await,
            b.take_allowance(&"exact1".into(), 2, |_| true).await,
        ];
        assert_eq!(used.iter().filter(|u| u.is_some()).count(), 2, "{used:?}");
        assert!(
            a.list(3).is_empty() && b.list(3).is_empty(),
            "used up on both"
        );
        // A block rule made on b refuses on a once a has read the rules again, and a revokes it.
        let block = rule(RuleKind::Block, "shape1", 1_000, None);
        let id = block.id.clone();
        b.add(block, 3).await.expect("add");
        assert!(a.blocking(&"x".into(), &"shape1".into(), 4).is_none());
        a.refresh(4).await.expect("refresh");
        assert!(a.blocking(&"x".into(), &"shape1".into(), 4).is_some());
        a.revoke(&id, 5, |_| Ok(())).await.expect("revoke");
        assert!(
            b.revoke(&id, 5, |_| Ok(())).await.is_err(),
            "gone for b too"
        );
        b.refresh(6).await.expect("refresh");
        assert!(b.blocking(&"x".into(), &"shape1".into(), 6).is_none());
    }
}
